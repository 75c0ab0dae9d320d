"""limit_conn_zone and limit_conn: sessions one client address may hold
open at once, across the workers.

Clients connect from chosen loopback addresses (127.0.0.2 and up) or
behind a PROXY header, with raw sockets and smtplib, and hold their
sessions open while others try.  Checked: the limit per key with two
workers, other keys unaffected, the count given back by every way a
session ends (QUIT after a relayed message, a timeout, a client that
vanishes, a refused AUTH, a session refused by another rule), counts
kept across a reload, the counts of a worker that dies (kill -9, of
the current generation and of an older one) or that
worker_shutdown_timeout ends taken back while the other workers' counts
stay, the 421 and the close, implicit TLS closed before
any handshake, `limited` in the access log and the status counters,
the log line and its level, and configuration errors.  Zones keyed by
the login ($auth_user, $auth_method, at=login) count each session from
its login: 454 to the login over the limit (451 for an anonymous one).
"""

import json
import os
import smtplib
import subprocess
import time

import pytest

from lib import gate as gatelib
from lib import net
from lib import pki as pkilib
from lib.smtp import RawSmtp
from lib.users import password

from test_config import assert_failed, conf_test, line_of, make  # noqa: F401

ZONE = "    limit_conn_zone $remote_addr zone=addr:1m;\n"


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def conf(backend, limit=2, mail="", **kw):
    return gatelib.conf(backend=backend,
                        mail=ZONE + f"    limit_conn addr {limit};\n" + mail,
                        **kw)


def hold(g, source, n, port=None):
    out = []
    for _ in range(n):
        c = g.connect(source=source, port=port)
        assert c.greeting().code == 220
        out.append(c)
    return out


def refused(g, source, port=None):
    with g.connect(source=source, port=port) as c:
        r = c.greeting()
        assert r.code == 421, r
        assert r.last == "4.7.0 mx.test Too many sessions, try again later"
        c.expect_closed()


def release(held):
    for c in held:
        assert c.cmd("QUIT").code == 221
        c.close()


def test_limit_per_address_across_workers(smtpgate, backend):
    g = smtpgate(conf(backend, limit=3, workers=2))
    held = hold(g, "127.0.0.2", 3)
    refused(g, "127.0.0.2")
    others = hold(g, "127.0.0.3", 3)
    g.wait_log(r'\[error\] .*limiting sessions by zone "addr", key '
               r'"127\.0\.0\.2": the key holds that many sessions already '
               r"\(limit_conn 3 at .*smtpgate\.conf:\d+\), client: "
               r"127\.0\.0\.2")
    release(held[:1])
    net.wait_until(lambda: try_once(g, "127.0.0.2"), 10,
                   what="the count given back")
    release(held[1:] + others)


def try_once(g, source):
    with g.connect(source=source) as c:
        code = c.greeting().code
        if code == 220:
            c.cmd("QUIT")
        return code == 220


def connect_when_free(g, source):
    """A session from source once the count lets one in (a close the
    worker has not seen yet still holds its count)."""
    box = []

    def attempt():
        c = g.connect(source=source)
        if c.greeting().code == 220:
            box.append(c)
            return True
        c.close()
        return False
    net.wait_until(attempt, 10, what=f"a session from {source}")
    return box[0]


def test_every_end_gives_the_count_back(smtpgate, backend):
    g = smtpgate(conf(backend, limit=1, timeout="1s"))
    src = "127.0.0.4"
    # A relayed message, then QUIT.
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30,
                      source_address=(src, 0)) as c:
        c.login("alice", password("alice"))
        c.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    # A refused AUTH, then the client vanishes.
    c = connect_when_free(g, src)
    c.ehlo()
    assert c.auth_plain("alice", "wrong").code == 535
    c.close()
    # A silent client, timed out.
    c = connect_when_free(g, src)
    assert c.reply().code == 421
    c.close()
    # Refused by the limit itself: gives back nothing it did not take.
    held = connect_when_free(g, src)
    refused(g, src)
    held.cmd("QUIT")
    held.close()
    # Each gave its count back: the limit of 1 still lets one in.
    c = connect_when_free(g, src)
    c.cmd("QUIT")
    c.close()


def test_reload_keeps_the_counts(smtpgate, backend):
    g = smtpgate(conf(backend, limit=1))
    (held,) = hold(g, "127.0.0.5", 1)
    old = g.workers()
    g.reload()
    g.wait_workers(1, exclude=old)
    refused(g, "127.0.0.5")             # counted in the kept zone
    release([held])
    g.wait_old_workers_gone(old)
    assert try_once(g, "127.0.0.5")


def eventually_refused(g, source):
    """Wait until a session from source is refused.  Right after a dead
    worker's counts are taken out, the live workers count theirs again
    within a second; a session let in meanwhile is ended at once."""
    def attempt():
        with g.connect(source=source) as c:
            r = c.greeting()
            if r.code == 421:
                return True
            assert r.code == 220, r
            c.cmd("QUIT")
            return False
    net.wait_until(attempt, 10, what=f"a session from {source} refused")


def dead_worker_log(worker, n=1):
    return (r'\[notice\] .*limit_conn_zone "addr": '
            rf"{n} sessions? of worker {worker}, which exited without "
            r"ending them, no longer counted; the live workers count "
            r"theirs again")


def test_dead_worker_counts_taken_back(smtpgate, backend):
    """A worker killed (kill -9) while it holds a key's sessions cannot
    give their counts back: the worker started in its place takes them
    out, and the other worker's session of the key stays counted."""
    src = "127.0.0.10"
    g = smtpgate(conf(backend, limit=2, workers=2,
                      listen=("127.0.0.1:@PORT@ reuseport",)))
    g.allow(r"worker process \d+ exited on signal 9")
    first = g.session(source=src)
    doomed = g.worker_of(first)
    for _ in range(60):
        second = connect_when_free(g, src)
        if g.worker_of(second) != doomed:
            break
        second.cmd("QUIT")
        second.close()
    else:
        raise AssertionError("all sessions went to one worker")
    assert g.worker_of(second) not in (doomed, None)
    os.kill(doomed, 9)
    first.expect_closed()
    first.close()
    g.wait_workers(2, exclude=(doomed,))
    g.wait_log(dead_worker_log(doomed))
    # The live worker's session still counts: one more, not two.
    third = connect_when_free(g, src)
    eventually_refused(g, src)
    refused(g, src)
    release([second, third])
    # Both given back: two at once again.
    held = [connect_when_free(g, src), connect_when_free(g, src)]
    release(held)


def test_dead_old_worker_counts_taken_back(smtpgate, backend):
    """A worker of an older generation, draining after a reload, is not
    replaced when it dies: the new workers find its slot on their
    tick."""
    src = "127.0.0.11"
    g = smtpgate(conf(backend, limit=1))
    g.allow(r"worker process \d+ exited on signal 9")
    (held,) = hold(g, src, 1)
    (old,) = g.workers()
    g.reload()
    g.wait_workers(1, exclude=(old,))
    refused(g, src)                     # the kept zone counts it
    os.kill(old, 9)
    held.expect_closed()
    held.close()
    g.wait_log(dead_worker_log(old))
    c = connect_when_free(g, src)
    refused(g, src)
    release([c])


def test_worker_shutdown_timeout_gives_the_counts_back(smtpgate, backend):
    """A worker that worker_shutdown_timeout ends with a relayed session
    still open gives its count back as it exits; the new workers share
    the zone.  (A session between commands is told 421 as the drain
    starts and gives its count back as it ends.)"""
    src = "127.0.0.12"
    g = smtpgate(conf(backend, limit=1,
                      top="worker_shutdown_timeout 300ms;"))
    (held,) = hold(g, src, 1)
    held.ehlo()
    assert held.auth_plain("alice", password("alice")).code == 235
    old = g.workers()
    g.reload()
    g.wait_old_workers_gone(old)
    held.expect_closed()
    held.close()
    assert "which exited without ending them" not in g.error_log()
    (c,) = hold(g, src, 1)
    refused(g, src)
    release([c])


def test_nginx_key_binary_remote_addr(smtpgate, backend):
    """nginx's usual key, $binary_remote_addr, works the same."""
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    limit_conn_zone $binary_remote_addr zone=bin:1m;\n"
             "    limit_conn bin 1;"))
    (held,) = hold(g, "127.0.0.8", 1)
    refused(g, "127.0.0.8")
    assert try_once(g, "127.0.0.9")
    release([held])


def test_remote_net_counts_an_ipv6_64(smtpgate, backend):
    """$remote_net: the addresses of one /64 share a count; another /64
    and IPv4 clients have their own."""
    g = smtpgate(gatelib.conf(
        backend=backend, listen=("127.0.0.1:@PORT@",
                                 "127.0.0.1:@PORTP@ proxy_protocol"),
        mail="    set_real_ip_from 127.0.0.1;\n"
             "    limit_conn_zone $remote_net zone=net:1m;\n"
             "    limit_conn net 1;\n"
             "    access_log logs/access.log flush=50ms;\n"
             "    log_format net '$remote_addr $remote_net';\n"
             "    access_log logs/net.log net flush=50ms;"))
    port = g.ports["PORTP"]

    def proxied(src):
        c = RawSmtp("127.0.0.1", port)
        c.send(f"PROXY TCP6 {src} ::1 5555 {port}\r\n")
        return c
    a = proxied("2001:db8:1:2::7")
    assert a.greeting().code == 220
    for src, code in (("2001:db8:1:2:aaaa::1", 421),
                      ("2001:db8:1:3::7", 220)):
        with proxied(src) as c:
            assert c.greeting().code == code, src
            if code == 220:
                c.cmd("QUIT")
    a.cmd("QUIT")
    a.close()

    def lines():
        try:
            with open(os.path.join(g.logdir, "net.log")) as f:
                got = [l.split() for l in f]
        except FileNotFoundError:
            return None
        return got if len([l for l in got if ":" in l[0]]) == 3 else None
    got = net.wait_until(lines, 30, what="three IPv6 lines")
    nets = {addr: n for addr, n in got}
    assert nets["2001:db8:1:2::7"] == "2001:db8:1:2::/64"
    assert nets["2001:db8:1:2:aaaa::1"] == "2001:db8:1:2::/64"
    assert nets["2001:db8:1:3::7"] == "2001:db8:1:3::/64"
    assert nets["127.0.0.1"] == "127.0.0.1"


def test_proxy_protocol_key(smtpgate, backend):
    g = smtpgate(conf(backend, limit=1, listen=(
        "127.0.0.1:@PORT@", "127.0.0.1:@PORTP@ proxy_protocol"),
        mail="    set_real_ip_from 127.0.0.1;"))
    port = g.ports["PORTP"]
    a = RawSmtp("127.0.0.1", port)
    a.send(f"PROXY TCP6 2001:db8::7 ::1 5555 {port}\r\n")
    assert a.greeting().code == 220
    with RawSmtp("127.0.0.1", port) as b:
        b.send(f"PROXY TCP6 2001:db8::7 ::1 5556 {port}\r\n")
        assert b.greeting().code == 421
    with RawSmtp("127.0.0.1", port) as b:
        b.send(f"PROXY TCP6 2001:db8::8 ::1 5556 {port}\r\n")
        assert b.greeting().code == 220
        b.cmd("QUIT")
    a.cmd("QUIT")
    a.close()


def test_implicit_tls_closed_before_the_handshake(smtpgate, backend, pki):
    g = smtpgate(pkilib.tls_conf(pki, backend, mail=ZONE +
                                 "    limit_conn addr 1;"))
    port = g.ports["PORTS"]
    ctx = pki.client_context()
    first = pkilib.TlsSmtp.implicit("127.0.0.1", port, ctx, "mx.test")
    assert first.greeting().code == 220
    r = subprocess.run(["openssl", "s_client", "-connect",
                        f"127.0.0.1:{port}", "-servername", "mx.test",
                        "-brief"], input=b"", capture_output=True,
                       timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert "CONNECTION ESTABLISHED" not in out, out
    first.cmd("QUIT")
    first.close()


def test_limited_in_access_log_and_status(smtpgate, backend):
    g = smtpgate(conf(backend, limit=1, mail=(
        "    access_log logs/access.log flush=50ms;\n"
        "    status_listen 127.0.0.1:@PORTS@;\n"
        "    limit_conn_log_level notice;")))
    (held,) = hold(g, "127.0.0.6", 1)
    refused(g, "127.0.0.6")
    release([held])
    g.wait_log(r"\[notice\] .*limiting sessions by zone")

    def lines():
        try:
            with open(os.path.join(g.logdir, "access.log")) as f:
                # a line still being written is not whole yet
                d = [json.loads(l) for l in f.read().split("\n")[:-1]]
        except FileNotFoundError:
            return None
        d = [x for x in d if x["client"] == "127.0.0.6"]
        return d if len(d) == 2 else None
    d = net.wait_until(lines, 30, what="two lines")
    assert sorted(x["status"] for x in d) == ["limited", "quit"]
    out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:"
                          f"{g.ports['PORTS']}/metrics"],
                         capture_output=True, text=True, check=True).stdout
    assert 'smtpgate_sessions_total{server="mx.test",status="limited"} 1' \
        in out


def test_server_rules_replace_mail_rules(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend, mail=ZONE + "    limit_conn addr 1;",
        servers=["        listen 127.0.0.1:@PORTB@;\n"
                 "        limit_conn addr 3;"]))
    held = hold(g, "127.0.0.7", 3, port=g.ports["PORTB"])
    refused(g, "127.0.0.7", port=g.ports["PORTB"])
    refused(g, "127.0.0.7")             # the same count, a lower limit
    release(held)


@pytest.mark.parametrize("mail,message", [
    ("limit_conn_zone $remote_addr zone=a;", 'invalid value "zone=a" in '
     '"limit_conn_zone" directive, zone=NAME:SIZE'),
    ("limit_conn_zone $remote_addr zone=a:1k;", 'invalid value "zone=a:1k" '
     'in "limit_conn_zone" directive, SIZE from 16k to 1g'),
    ("limit_conn_zone $remote_addr size=1m;", 'invalid value "size=1m"'),
    ("limit_conn_zone client zone=a:1m;", 'limit_conn_zone "a": the key '
     '"client" has no variable'),
    ("limit_conn_zone $nosuch zone=a:1m;", 'unknown variable "$nosuch"'),
    ("limit_conn_zone $remote_addr zone=a:1m; "
     "limit_conn_zone $remote_addr zone=a:1m;",
     'limit_conn_zone "a" is already defined at '),
    ("limit_conn nosuch 1;", 'limit_conn: no limit_conn_zone "nosuch"'),
    ("limit_conn_zone $remote_addr zone=a:1m; limit_conn a 0;",
     'invalid value "0" in "limit_conn" directive, a number of sessions'),
    ("limit_conn_zone $remote_addr zone=a:1m; limit_conn a 1; "
     "limit_conn a 2;", 'limit_conn "a" is given twice in this block'),
    ("limit_conn_log_level debug;", 'invalid value "debug"'),
])
def test_config_errors(conf_test, mail, message):
    text = make(mail="    " + mail)
    g, r = conf_test(text)
    assert_failed(g, r, message, line_of(text, mail))


# --------------------------------------------------------------------------
# by login


def logged_in(g, user, source="127.0.0.2"):
    """A session logged in as user (its AUTH reply checked by the
    caller): (client, AUTH reply)."""
    c = g.connect(source=source)
    assert c.greeting().code == 220
    c.ehlo("client.test")
    return c, c.auth_plain(user, password(user))


def test_limit_by_login(smtpgate, backend):
    """A zone keyed by $auth_user counts each session as its login
    succeeds, whatever address it comes from: the login over the limit is
    answered 454 4.7.0 (a temporary failure: the client tries later) and
    the session goes on unauthenticated; other users are not touched; a
    session that ends gives its count back; a login refused for its
    password is not counted."""
    g = smtpgate(gatelib.conf(backend=backend, workers=2, mail=(
        "    limit_conn_zone ${auth_user} zone=users:64k;\n"
        "    limit_conn users 2;\n"
        "    smtp_auth_fail_delay 0;\n")))
    held = []
    for source in ("127.0.0.2", "127.0.0.3"):
        c, r = logged_in(g, "alice", source)
        assert r.code == 235, r
        held.append(c)
    c, r = logged_in(g, "alice", "127.0.0.4")
    assert (r.code, r.last) == (454, "4.7.0 Too many sessions for this "
                                     "login, try again later"), r
    g.wait_log(r'\[error\] .*limiting logins by zone "users", key "alice": '
               r"the key holds that many sessions already \(limit_conn 2 "
               r"at .*smtpgate\.conf:\d+\), client: 127\.0\.0\.4")
    # not logged in: no mail goes
    assert c.cmd("MAIL FROM:<a@example.org>").code == 530
    assert c.cmd("QUIT").code == 221
    c.close()
    # another user is not limited, nor a wrong password counted
    c, r = logged_in(g, "bob", "127.0.0.4")
    assert r.code == 235, r
    held.append(c)
    bad = g.connect(source="127.0.0.5")
    assert bad.greeting().code == 220
    bad.ehlo("client.test")
    assert bad.auth_plain("alice", "wrong").code == 535
    bad.cmd("QUIT")
    bad.close()
    # a session of alice's ends: she may log in again, and send
    assert held[0].mail("a@example.org", ["b@example.org"],
                        b"Subject: x\r\n\r\nx\r\n").code == 250
    release(held[:1])

    def again():
        c, r = logged_in(g, "alice", "127.0.0.6")
        if r.code == 235:
            return c
        c.close()
        return None
    c = net.wait_until(again, 20, what="alice's count given back")
    assert c.mail("a@example.org", ["b@example.org"],
                  b"Subject: y\r\n\r\ny\r\n").code == 250
    release([c] + held[1:])
    backend.wait_messages(2)


@pytest.mark.parametrize("maps,at", [
    ("    map $auth_user $team { alice red; bob red; default blue; }\n", ""),
    ("    map $auth_user $team { alice red; bob red; default blue; }\n",
     " at=login"),
    # two maps deep, the second defined after the zone
    ("    map $user_team $team { ~(.+) t-$1; }\n", ""),
], ids=["map", "at=login", "two maps"])
def test_limit_by_a_key_derived_from_the_login(smtpgate, backend, maps, at):
    """A key that a map derives from the login counts at the login too
    (found through the maps, or said with at=login): alice and bob share
    the "red" team's one session."""
    second = ("    map $auth_user $user_team { alice red; bob red; "
              "default blue; }\n" if "user_team" in maps else "")
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        maps + f"    limit_conn_zone $team zone=teams:64k{at};\n"
        "    limit_conn teams 1;\n" + second)))
    a, r = logged_in(g, "alice")
    assert r.code == 235, r
    b, r = logged_in(g, "bob")
    assert r.code == 454, r
    d, r = logged_in(g, "dave")
    assert r.code == 235, r
    g.wait_log(r'limiting logins by zone "teams", key "(t-)?red"')
    release([a, b, d])


def test_limit_at_connect_keeps_the_start(smtpgate, backend):
    """at=connect: the key is evaluated as the session starts, where
    $auth_user is still empty, so no session is counted (as nginx)."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    limit_conn_zone $auth_user zone=users:64k at=connect;\n"
        "    limit_conn users 1;\n")))
    a, r = logged_in(g, "alice")
    assert r.code == 235, r
    b, r = logged_in(g, "alice", "127.0.0.3")
    assert r.code == 235, r
    release([a, b])


def test_limit_by_login_config_errors(conf_test):
    text = make(mail="    limit_conn_zone $auth_user zone=u:64k at=auth;")
    g, r = conf_test(text)
    assert_failed(g, r, 'invalid value "at=auth" in "limit_conn_zone" '
                  'directive, at=login or at=connect',
                  line_of(text, "limit_conn_zone"))


def test_limit_anonymous_sessions_by_method(smtpgate, backend):
    """$auth_method is "none" for an anonymous session (smtp_auth none):
    over the limit, its first RCPT is answered 451 4.7.0 and nothing is
    relayed; the first anonymous session goes on."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    smtp_auth none plain;\n"
        "    limit_conn_zone $auth_method zone=methods:64k;\n"
        "    limit_conn methods 1;\n")))
    first = g.connect(source="127.0.0.2")
    assert first.greeting().code == 220
    first.ehlo("client.test")
    assert first.cmd("MAIL FROM:<anon@example.org>").code == 250
    assert first.cmd("RCPT TO:<r@example.net>").code == 250
    with g.connect(source="127.0.0.3") as c:
        assert c.greeting().code == 220
        c.ehlo("client.test")
        assert c.cmd("MAIL FROM:<anon@example.org>").code == 250
        r = c.cmd("RCPT TO:<r@example.net>")
        assert (r.code, r.last) == (451, "4.7.0 Too many sessions, try "
                                         "again later"), r
        assert c.cmd("QUIT").code == 221
    g.wait_log(r'limiting logins by zone "methods", key "none"')
    assert first.cmd("DATA").code == 354
    first.send(b"Subject: a\r\n\r\na\r\n.\r\n")
    assert first.reply().code == 250
    release([first])
    assert [m.mail_from for m in backend.wait_messages(1)] == \
        ["anon@example.org"]
