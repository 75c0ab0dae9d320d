"""TLS from smtpgate to its backends: proxy_ssl on (implicit TLS) and
starttls, certificate verification against the test CA, SNI, the client
certificate, the configuration errors, and TLS on both sides at once.

The backends are aiosmtpd servers presenting the test PKI's
backend.test certificate (SAN DNS:backend.test, IP:127.0.0.1, IP:::1),
recording the TLS version, mode and SNI name of each connection, and a
real Postfix offering STARTTLS (its Received header names the TLS
version).  What is checked is what an operator sees: the message at the
backend over TLS, the "ready over TLS" log line, the 451 4.4.1 and the
"certificate verify failed: ... (the name checked was ...)" line when a
backend does not verify, and file:line errors for missing files.
"""

import smtplib
import ssl

import pytest

from lib import backends
from lib import gate as gatelib
from lib import net
from lib import pki as pkilib
from lib import postfix as postfixlib
from lib.authsvc import AuthService, ok_to
from lib.checks import assert_same_bytes, backend_view
from lib.messages import make_message
from lib.users import password

MSG = b"Subject: over TLS\r\n\r\nhello\r\n"
NO_BACKEND = (451, "4.4.1 No backend available, try again later")

pytestmark = pytest.mark.skipif(not pkilib.tls_built(),
                                reason="built without the ssl module")


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


@pytest.fixture(scope="session")
def wrong_name(pki):
    """A certificate of the test CA for another name only."""
    pki.add_server("wrong.test", "DNS:wrong.test")
    return "wrong.test"


def tls_gate_conf(proxy_pass, *directives, **kw):
    mail = "\n".join(f"    {d}" for d in directives)
    return gatelib.conf(proxy_pass=proxy_pass, mail=mail, **kw)


def upstream(name, peers):
    return (f"upstream {name} {{ "
            + " ".join(f"server {p};" for p in peers) + " }")


def send(port, msg=MSG):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        assert c.sendmail("a@example.org", ["b@example.org"], msg) == {}


def auth_reply(g):
    with g.session() as c:
        c.ehlo()
        return c.auth_plain("alice", password("alice"))


# --------------------------------------------------------------------------
# TLS without verification (the default)


def test_proxy_ssl_on_to_an_implicit_tls_backend(smtpgate, make_backend):
    b = make_backend(tls="implicit")
    g = smtpgate(tls_gate_conf(b.address, "proxy_ssl on;"))
    mark = g.log_mark()
    send(g.port)
    (m,) = b.wait_messages(1)
    assert m.content.endswith(b"hello\r\n")
    assert m.tls in ("TLSv1.2", "TLSv1.3")
    assert m.conn.tls_mode == "implicit"
    # An IP address is not sent as SNI.
    assert m.sni is None
    g.wait_log(rf"backend {b.address} ready over TLS", since=mark)


def test_proxy_ssl_starttls_to_aiosmtpd(smtpgate, make_backend):
    b = make_backend(tls="starttls", require_starttls=True)
    g = smtpgate(tls_gate_conf(b.address, "proxy_ssl starttls;"))
    mark = g.log_mark()
    send(g.port)
    (m,) = b.wait_messages(1)
    assert m.conn.tls_mode == "starttls" and m.tls in ("TLSv1.2", "TLSv1.3")
    verbs = [v for v, _ in m.conn.commands]
    assert verbs[:3] == ["EHLO", "STARTTLS", "EHLO"], verbs
    g.wait_log(rf"backend {b.address} ready over TLS", since=mark)


def test_proxy_ssl_starttls_to_postfix(smtpgate, make_postfix):
    pf = make_postfix(tls="starttls")
    g = smtpgate(tls_gate_conf(pf.address, "proxy_ssl starttls;"))
    mark = g.log_mark()
    send(g.port)
    (raw,) = pf.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert "(using TLSv1." in received, received
    assert postfixlib.body(raw) == b"hello\n"
    g.wait_log(rf"backend {pf.address} ready over TLS", since=mark)
    pf.wait_log(r"Anonymous TLS connection established from "
                r"unknown\[127\.0\.0\.1\]")


def test_starttls_required_but_not_offered(smtpgate, make_backend):
    """A peer without STARTTLS fails the attempt with the documented
    line; the next peer (with STARTTLS) takes the session; alone it
    means 451."""
    plain = make_backend()
    tls = make_backend(tls="starttls")
    g = smtpgate(tls_gate_conf("pool", "proxy_ssl starttls;",
                               upstream("pool", [plain.address,
                                                 tls.address])))
    mark = g.log_mark()
    send(g.port)
    (m,) = tls.wait_messages(1)
    assert m.conn.tls_mode == "starttls"
    assert plain.messages == [] and plain.seen("STARTTLS") == []
    g.wait_log(rf"backend {plain.address} failed: the backend does not "
               r"offer STARTTLS, and proxy_ssl is starttls", since=mark)

    g2 = smtpgate(tls_gate_conf(plain.address, "proxy_ssl starttls;"))
    mark = g2.log_mark()
    assert (lambda r: (r.code, r.last))(auth_reply(g2)) == NO_BACKEND
    g2.wait_log(rf"backend {plain.address} failed: the backend does not "
                r"offer STARTTLS", since=mark)
    g2.wait_log(r"no backend available for proxy_pass after 1 attempt",
                since=mark)


# --------------------------------------------------------------------------
# verification


@pytest.mark.parametrize("mode", ["on", "starttls"])
def test_verify_with_proxy_ssl_name(smtpgate, make_backend, pki, mode):
    b = make_backend(tls="implicit" if mode == "on" else "starttls")
    g = smtpgate(tls_gate_conf(
        b.address, f"proxy_ssl {mode};", "proxy_ssl_verify on;",
        f"proxy_ssl_trusted_certificate {pki.ca};",
        "proxy_ssl_name backend.test;"))
    mark = g.log_mark()
    send(g.port)
    (m,) = b.wait_messages(1)
    assert m.sni == "backend.test"
    g.wait_log(rf"backend {b.address} ready over TLS", since=mark)


@pytest.mark.parametrize("host", [
    net.IPV4, pytest.param(net.IPV6, marks=pytest.mark.skipif(
        not net.ipv6_available(), reason="no IPv6 loopback"))])
def test_verify_against_the_ip_address_by_default(smtpgate, make_backend,
                                                  pki, host):
    """Without proxy_ssl_name the name checked is the host of proxy_pass,
    here 127.0.0.1 or ::1, which the certificate lists as IP
    addresses."""
    b = make_backend(tls="starttls", host=host)
    g = smtpgate(tls_gate_conf(
        b.address, "proxy_ssl starttls;", "proxy_ssl_verify on;",
        f"proxy_ssl_trusted_certificate {pki.ca};"))
    send(g.port)
    (m,) = b.wait_messages(1)
    assert m.tls and m.sni is None


def test_verify_the_host_name_of_the_server_line(smtpgate, make_backend,
                                                pki):
    """"server localhost:PORT": the name sent as SNI and checked is
    "localhost", as written, for each address it resolves to."""
    pki.add_server("localhost", "DNS:localhost")
    b = make_backend(tls="starttls", cert="localhost")
    g = smtpgate(tls_gate_conf(
        "pool", "proxy_ssl starttls;", "proxy_ssl_verify on;",
        f"proxy_ssl_trusted_certificate {pki.ca};",
        f"upstream pool {{ server localhost:{b.port}; }}"))
    send(g.port)
    (m,) = b.wait_messages(1)
    assert m.sni == "localhost"


@pytest.mark.parametrize("case", ["wrong CA", "system CAs", "wrong name",
                                  "wrong cert"])
def test_verify_failure_is_451(smtpgate, make_backend, pki, wrong_name,
                               case):
    cert = wrong_name if case == "wrong cert" else None
    b = make_backend(tls="starttls", cert=cert)
    extra = {"wrong CA": [f"proxy_ssl_trusted_certificate "
                          f"{pki.path('other-ca.pem')};"],
             "system CAs": [],
             "wrong name": [f"proxy_ssl_trusted_certificate {pki.ca};",
                            "proxy_ssl_name other.test;"],
             "wrong cert": [f"proxy_ssl_trusted_certificate {pki.ca};"],
             }[case]
    g = smtpgate(tls_gate_conf(
        b.address, "proxy_ssl starttls;", "proxy_ssl_verify on;", *extra))
    mark = g.log_mark()
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND
    why, name = {
        "wrong CA": ("unable to get local issuer certificate", "127.0.0.1"),
        "system CAs": ("unable to get local issuer certificate",
                       "127.0.0.1"),
        "wrong name": ("hostname mismatch", "other.test"),
        "wrong cert": ("IP address mismatch", "127.0.0.1"),
    }[case]
    g.wait_log(rf'backend {b.address} failed: certificate verify failed: '
               rf'{why} \(the name checked was "{name}"; check '
               r'proxy_ssl_name and proxy_ssl_trusted_certificate\)',
               since=mark)
    assert b.messages == []


def test_first_peer_fails_verification_second_is_used(smtpgate, make_backend,
                                                      pki, wrong_name):
    bad = make_backend(tls="starttls", cert=wrong_name)
    good = make_backend(tls="starttls")
    g = smtpgate(tls_gate_conf(
        "pool", "proxy_ssl starttls;", "proxy_ssl_verify on;",
        f"proxy_ssl_trusted_certificate {pki.ca};",
        upstream("pool", [f"{bad.address} max_fails=0", good.address])))
    mark = g.log_mark()
    for _ in range(3):
        send(g.port)
    assert len(good.wait_messages(3)) == 3
    assert bad.messages == []
    g.wait_log(rf"backend {bad.address} failed: certificate verify failed: "
               r"IP address mismatch", since=mark)


def test_verify_a_backend_named_by_the_auth_service(smtpgate, make_backend,
                                                    pki, wrong_name):
    """Auth-Server names a backend at run time: its IP address is the
    name checked, so a certificate for another name does not pass."""
    bad = make_backend(tls="starttls", cert=wrong_name)
    good = make_backend(tls="starttls")
    svc = AuthService().start()
    try:
        g = smtpgate(gatelib.conf(auth_file=None, mail="\n".join([
            f"    auth_http {svc.url};",
            "    proxy_ssl starttls;", "    proxy_ssl_verify on;",
            f"    proxy_ssl_trusted_certificate {pki.ca};"])))
        mark = g.log_mark()
        svc.default = ok_to(bad)
        r = auth_reply(g)
        assert (r.code, r.last) == NO_BACKEND
        g.wait_log(rf'backend {bad.address} failed: certificate verify '
                   r'failed: IP address mismatch \(the name checked was '
                   r'"127\.0\.0\.1"', since=mark)
        svc.default = ok_to(good)
        send(g.port)
        good.wait_messages(1)
    finally:
        svc.stop()
    assert bad.messages == []


# --------------------------------------------------------------------------
# the client certificate


def test_client_certificate_is_presented(smtpgate, make_backend, pki):
    b = make_backend(tls="starttls", client_ca=pki.ca)
    g = smtpgate(tls_gate_conf(
        b.address, "proxy_ssl starttls;",
        f"proxy_ssl_certificate {pki.cert('alice')};",
        f"proxy_ssl_certificate_key {pki.key('alice')};"))
    send(g.port)
    (m,) = b.wait_messages(1)
    assert pkilib.common_name(m.conn.client_cert) == "alice"


def test_no_client_certificate_by_default(smtpgate, make_backend, pki):
    b = make_backend(tls="implicit", client_ca=pki.ca)
    g = smtpgate(tls_gate_conf(b.address, "proxy_ssl on;"))
    send(g.port)
    (m,) = b.wait_messages(1)
    assert m.conn.client_cert is None


# --------------------------------------------------------------------------
# configuration errors


@pytest.mark.parametrize("lines,line,error", [
    (["proxy_ssl_verify on;",
      "proxy_ssl_trusted_certificate /nonexistent/ca.pem;"], 2,
     'proxy_ssl_trusted_certificate: cannot load trusted certificates from '
     '"/nonexistent/ca.pem"'),
    (["proxy_ssl_certificate /nonexistent/c.pem;",
      "proxy_ssl_certificate_key {key};"], 1,
     'cannot load the client certificate "/nonexistent/c.pem" '
     '(proxy_ssl_certificate)'),
    (["proxy_ssl_certificate {cert};",
      "proxy_ssl_certificate_key /nonexistent/k.pem;"], 2,
     'cannot load the key "/nonexistent/k.pem" or it does not match the '
     'certificate (proxy_ssl_certificate_key)'),
    (["proxy_ssl_certificate {cert};",
      "proxy_ssl_certificate_key {other_key};"], 2,
     'or it does not match the certificate (proxy_ssl_certificate_key)'),
    (["proxy_ssl_certificate {cert};"], 1,
     '"proxy_ssl_certificate" is set but "proxy_ssl_certificate_key" is '
     'not'),
    (["proxy_ssl_certificate_key {key};"], 1,
     '"proxy_ssl_certificate_key" is set but "proxy_ssl_certificate" is '
     'not'),
])
def test_config_errors_name_the_line(smtpgate, pki, lines, line, error):
    """Every file is loaded when the configuration is, and an error
    names the line of the directive, even when other servers follow."""
    lines = [l.format(cert=pki.cert("alice"), key=pki.key("alice"),
                      other_key=pki.key("mx.test")) for l in lines]
    body = "\n".join(["        proxy_ssl starttls;"]
                     + [f"        {l}" for l in lines])
    conf = gatelib.conf(proxy_pass="127.0.0.1:25", server=body,
                        servers=["        listen 127.0.0.1:@PORT2@;"])
    g = smtpgate(conf, start=False)
    conf_lines = g.conf_text.splitlines()
    first = conf_lines.index(f"        {lines[0]}") + 1
    r = g.ctl("-t")
    assert r.returncode != 0
    (emerg,) = [l for l in r.stderr.splitlines() if "[emerg]" in l]
    assert f" {g.conf_path}:{first + line - 1}: " in emerg, emerg
    assert emerg.endswith(error), emerg


# --------------------------------------------------------------------------
# TLS on both sides


@pytest.mark.time_limit(300)
def test_starttls_both_sides_5mb_byte_exact(smtpgate, make_backend, pki):
    """The client runs STARTTLS to smtpgate, smtpgate runs STARTTLS to
    the backend (verifying it), and 5 MB arrive byte for byte."""
    b = make_backend(tls="starttls", require_starttls=True)
    g = smtpgate(pkilib.tls_conf(
        pki, None, proxy_pass=b.address,
        listen=(pkilib.STARTTLS_LISTEN,),
        extra="\n".join(["proxy_ssl starttls;", "proxy_ssl_verify on;",
                         f"proxy_ssl_trusted_certificate {pki.ca};",
                         "proxy_ssl_name backend.test;"])))
    mark = g.log_mark()
    msg = make_message(5 * 1024 * 1024, seed=55)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=120) as c:
        c.ehlo("client.test")
        c.starttls(context=pki.client_context())
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        assert c.sendmail("a@example.org", ["b@example.org"], msg) == {}
    (m,) = b.wait_messages(1, timeout=120)
    assert m.conn.tls_mode == "starttls" and m.sni == "backend.test"
    assert_same_bytes(m.content, backend_view(b, msg))
    g.wait_log(rf"backend {b.address} ready over TLS", since=mark)


@pytest.mark.time_limit(300)
@pytest.mark.parametrize("compact", ["on", "off"])
@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
@pytest.mark.parametrize("mode", ["on", "starttls"])
def test_backend_compact_state(smtpgate, make_backend, pki, mode, version,
                               compact):
    """proxy_ssl_compact_state: after the handshake with a backend the
    records are smtpgate's (or OpenSSL's, off).  The backend sends three
    TLS 1.3 session tickets, which smtpgate reads and drops; 1 MB goes
    through byte for byte both times, and the debug log says which."""
    ctx = backends.AiosmtpdBackend._tls_context(
        pki, None, None, None, getattr(ssl.TLSVersion, version))
    ctx.num_tickets = 3
    b = make_backend(tls="implicit" if mode == "on" else "starttls",
                     tls_context=ctx)
    g = smtpgate(tls_gate_conf(b.address, f"proxy_ssl {mode};",
                               f"proxy_ssl_compact_state {compact};",
                               level="debug"))
    mark = g.log_mark()
    msg = make_message(1024 * 1024, seed=77)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=120) as c:
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        assert c.sendmail("a@example.org", ["b@example.org"], msg) == {}
        assert c.noop()[0] == 250
    (m,) = b.wait_messages(1, timeout=120)
    assert m.conn.tls == version.replace("_", "."), m.conn
    assert_same_bytes(m.content, backend_view(b, msg))
    line = g.wait_log(rf"TLS with backend {b.address}: [^\n]*",
                      since=mark).group(0)
    assert version.replace("_", ".") in line, line
    assert (", compact state" in line) == (compact == "on"), line
    g.wait_log(r"session closed", since=mark)


# --------------------------------------------------------------------------
# health checks of TLS backends


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
def test_health_check_probes_over_tls(smtpgate, make_backend, mode):
    """health_check ssl probes implicit-TLS backends (proxy_ssl on) and
    health_check starttls STARTTLS ones: the probes run TLS, the peer
    stays up and sessions reach it."""
    b = make_backend(tls="implicit" if mode == "ssl" else "starttls",
                     require_starttls=mode == "starttls")
    proxy_ssl = "on" if mode == "ssl" else "starttls"
    g = smtpgate(tls_gate_conf(
        "pool", f"proxy_ssl {proxy_ssl};",
        f"upstream pool {{ server {b.address}; "
        f"health_check interval=200ms timeout=2s {mode}; }}"))
    net.wait_until(lambda: sum(1 for c in b.sessions
                               if c.tls and c.messages == 0) >= 3, 10,
                   what="three probes over TLS")
    send(g.port)
    (m,) = b.wait_messages(1)
    assert m.conn.tls_mode == ("implicit" if mode == "ssl" else "starttls")
    assert "health check" not in g.error_log()


def test_health_check_without_ssl_marks_a_tls_backend_down(smtpgate,
                                                           make_backend):
    b = make_backend(tls="implicit")
    g = smtpgate(tls_gate_conf(
        "pool", "proxy_ssl on;",
        f"upstream pool {{ server {b.address}; "
        f"health_check interval=200ms timeout=300ms; }}"))
    g.wait_log(rf"upstream pool: server {b.address} is down: health check "
               r"failed: timed out during greeting")


def test_quit_goes_inside_tls(smtpgate, make_backend):
    """The client's QUIT, answered by smtpgate, reaches a TLS backend
    inside TLS."""
    b = make_backend(tls="implicit")
    g = smtpgate(tls_gate_conf(b.address, "proxy_ssl on;"))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    b.wait_command("QUIT")
    assert b.sessions[-1].tls in ("TLSv1.2", "TLSv1.3")
