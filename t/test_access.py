"""allow and deny: which client addresses a server serves.

Clients connect from chosen loopback addresses (127.0.0.2 and up, ::1)
with raw sockets, smtplib and openssl s_client; the refused ones must
see a 554 greeting and then 503 for everything but QUIT (RFC 5321,
3.1), or, on an implicit-TLS address, a close before any handshake.
Checked: first match wins, a server's own rules replace the mail
block's, `all`, IPv6, the address a trusted PROXY header carries, the
access log and the status counters of refused sessions, max_errors
still ending a refused client that will not QUIT, and configuration
errors.
"""

import json
import os
import subprocess

import pytest

from lib import gate as gatelib
from lib import net
from lib import pki as pkilib
from lib.pki import cert_directives, indent
from lib.smtp import RawSmtp
from lib.users import password

from test_config import assert_failed, conf_test, line_of, make  # noqa: F401


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def greet(g, source, port=None):
    with g.connect(source=source, port=port) as c:
        r = c.greeting()
        c.cmd("QUIT")
    return r


def test_first_match_wins(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="""
    allow 127.0.0.1;
    allow 127.0.0.2;
    deny  127.0.0.0/24;
    allow 127.0.0.0/8;
    deny  all;"""))
    assert greet(g, "127.0.0.2").code == 220
    r = greet(g, "127.0.0.3")
    assert r.code == 554, r
    assert r.last == "5.7.1 mx.test Access denied"
    assert greet(g, "127.0.1.1").code == 220
    g.wait_log(r"access denied by the rule at .*smtpgate\.conf:\d+, "
               r"client: 127\.0\.0\.3")


def test_refused_client_gets_503_until_quit(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="    deny 127.0.0.5;\n"
                              "    max_errors 4;"))
    with g.connect(source="127.0.0.5") as c:
        assert c.greeting().code == 554
        for line in ("EHLO client.test", "AUTH PLAIN AGFsaWNlAHg=",
                     "MAIL FROM:<a@example.org>"):
            r = c.cmd(line)
            assert r.code == 503, r
            assert r.last.startswith("5.5.1 Bad sequence of commands")
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    # One that never says QUIT is ended by max_errors.
    with g.connect(source="127.0.0.5") as c:
        assert c.greeting().code == 554
        codes = [c.cmd("NOOP").code for _ in range(4)]
        assert codes == [503, 503, 503, 503]
        assert [r.code for r in c.read_until_closed()] == [421]
    assert not backend.sessions


def test_server_rules_replace_mail_rules(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend, mail="    deny 127.0.0.6;",
        servers=["        listen 127.0.0.1:@PORTB@;\n"
                 "        allow 127.0.0.1;\n        allow 127.0.0.6;\n"
                 "        deny all;"]))
    assert greet(g, "127.0.0.6").code == 554
    assert greet(g, "127.0.0.7").code == 220
    assert greet(g, "127.0.0.6", port=g.ports["PORTB"]).code == 220
    assert greet(g, "127.0.0.7", port=g.ports["PORTB"]).code == 554


def test_allowed_client_is_served(smtpgate, backend):
    import smtplib
    g = smtpgate(gatelib.conf(backend=backend, mail="    allow 127.0.0.1;\n"
                              "    deny all;"))
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
        c.login("alice", password("alice"))
        c.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    backend.wait_messages(1)


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6(smtpgate, backend):
    """IPv6 rules, for clients on ::1 and behind a PROXY header (the
    harness's own probes come from ::1 and must be let in)."""
    g = smtpgate(gatelib.conf(
        backend=backend,
        listen=("[::1]:@PORT6@", "[::1]:@PORTP6@ proxy_protocol"),
        mail="    set_real_ip_from ::1;\n    deny 2001:db8::/32;\n"
             "    allow ::1;\n    deny all;"))
    with RawSmtp("::1", g.ports["PORT6"]) as c:
        assert c.greeting().code == 220
    port = g.ports["PORTP6"]
    for src, code in (("2001:db8::7", 554), ("2001:db9::7", 554),
                      ("::1", 220)):
        with RawSmtp("::1", port) as c:
            c.send(f"PROXY TCP6 {src} ::1 5555 {port}\r\n")
            assert c.greeting().code == code, src


def test_implicit_tls_refused_before_the_handshake(smtpgate, backend, pki):
    g = smtpgate(pkilib.tls_conf(pki, backend, mail="    deny 127.0.0.9;"))
    port = g.ports["PORTS"]
    r = subprocess.run(["openssl", "s_client", "-connect",
                        f"127.0.0.1:{port}", "-bind", "127.0.0.9:0",
                        "-servername", "mx.test", "-brief"],
                       input=b"", capture_output=True, timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert "CONNECTION ESTABLISHED" not in out, out
    assert "Protocol version" not in out
    # the allowed get TLS and the greeting
    r = subprocess.run(["openssl", "s_client", "-connect",
                        f"127.0.0.1:{port}", "-bind", "127.0.0.10:0",
                        "-servername", "mx.test", "-quiet"],
                       input=b"QUIT\r\n", capture_output=True, timeout=30)
    assert b"220 " in r.stdout, r.stdout + r.stderr
    g.wait_log(r"access denied by the rule at .*, client: 127\.0\.0\.9")


def test_proxy_protocol_address_counts(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend,
        listen=("127.0.0.1:@PORT@", "127.0.0.1:@PORTP@ proxy_protocol"),
        mail="    set_real_ip_from 127.0.0.1;\n    deny 192.0.2.0/24;"))
    port = g.ports["PORTP"]
    for src, code in (("192.0.2.7", 554), ("198.51.100.7", 220)):
        with RawSmtp("127.0.0.1", port) as c:
            c.send(f"PROXY TCP4 {src} 127.0.0.1 5555 {port}\r\n")
            assert c.greeting().code == code


def test_refused_in_access_log_and_status(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend, mail="    deny 127.0.0.11;\n"
        "    access_log logs/access.log flush=50ms;\n"
        "    status_listen 127.0.0.1:@PORTS@;"))
    with g.connect(source="127.0.0.11") as c:
        assert c.greeting().code == 554
        assert c.cmd("QUIT").code == 221

    def line():
        try:
            with open(os.path.join(g.logdir, "access.log")) as f:
                # a line still being written is not whole yet
                for l in f.read().split("\n")[:-1]:
                    d = json.loads(l)
                    if d["client"] == "127.0.0.11":
                        return d
        except FileNotFoundError:
            pass
        return None
    d = net.wait_until(line, 30, what="the refused session's line")
    assert d["status"] == "denied"
    out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:"
                          f"{g.ports['PORTS']}/metrics"],
                         capture_output=True, text=True, check=True).stdout
    assert 'smtpgate_sessions_total{server="mx.test",status="denied"} 1' \
        in out


@pytest.mark.parametrize("mail,message", [
    ("allow 10.0.0.0/33;", 'invalid value "10.0.0.0/33"'),
    ("deny nonsense;", 'invalid value "nonsense"'),
    ("allow;", 'invalid number of arguments in "allow" directive'),
    ("deny 1.2.3.4 5.6.7.8;",
     'invalid number of arguments in "deny" directive'),
])
def test_config_errors(conf_test, mail, message):
    text = make(mail="    " + mail)
    g, r = conf_test(text)
    assert_failed(g, r, message, line_of(text, mail))
