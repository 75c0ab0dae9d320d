"""What the client sees, and what the log says, when the backend is down
or misbehaves: at AUTH time a 451 and a closed connection; in the relay,
a 421 and a closed connection (or the close alone, where a 421 would land
inside a reply)."""

import re

import pytest

from lib import gate as gatelib
from lib import net, pki as pkilib
from lib.smtp import plain_token
from lib.users import password

NO_BACKEND = b"451 4.4.1 No backend available, try again later\r\n"
LOST = (b"421 4.4.2 mx.test Connection to the backend lost, try again "
        b"later\r\n")


def _auth_until_closed(g):
    """EHLO, AUTH with a good password; every reply until the close."""
    with g.session(timeout=90) as c:
        c.ehlo()
        c.send(b"AUTH PLAIN "
               + plain_token("alice", password("alice")).encode() + b"\r\n")
        return c.read_until_closed()


def _mail_until_closed(c):
    """Log in on c and send MAIL: every reply from then to the close."""
    c.ehlo()
    assert c.auth_plain("alice", password("alice")).code == 235
    c.send(b"MAIL FROM:<a@example.org>\r\n")
    return c.read_until_closed()


def _auth_gets_451(g):
    rest = _auth_until_closed(g)
    assert [r.raw for r in rest] == [NO_BACKEND], rest


def test_backend_connection_refused(smtpgate):
    port = net.free_port()          # nothing listens there
    g = smtpgate(gatelib.conf(proxy_pass=f"127.0.0.1:{port}"))
    mark = g.log_mark()
    _auth_gets_451(g)
    g.wait_log(rf"127\.0\.0\.1:{port}", since=mark)
    log = g.log_since(mark)
    assert re.search(rf"(?m)^.*127\.0\.0\.1:{port}.*Connection refused"
                     rf"|^.*Connection refused.*127\.0\.0\.1:{port}", log), log


@pytest.mark.time_limit(120)
def test_backend_never_greets(smtpgate, scripted):
    b = scripted("silent")
    g = smtpgate(gatelib.conf(backend=b, proxy_timeout="3s",
                              proxy_connect_timeout="3s"))
    mark = g.log_mark()
    _auth_gets_451(g)
    assert b.connections == 1
    g.wait_log(re.escape(b.address), since=mark)
    assert re.search(r"(?i)timed? ?out", g.log_since(mark)), \
        g.log_since(mark)


@pytest.mark.parametrize("behaviour", ["greet_close", "garbage",
                                       "refuse_greeting", "ehlo_garbage"])
def test_backend_bad_handshake(smtpgate, scripted, behaviour):
    b = scripted(behaviour)
    g = smtpgate(gatelib.conf(backend=b, proxy_timeout="5s",
                              proxy_connect_timeout="5s"))
    mark = g.log_mark()
    _auth_gets_451(g)
    assert b.connections == 1
    g.wait_log(re.escape(b.address), since=mark)


@pytest.mark.parametrize("behaviour,reply", [
    ("refuse_greeting", b"554 5.3.2 scripted.test go away\r\n"),
    ("greet_close", NO_BACKEND)])
def test_proxy_pass_error_message(smtpgate, scripted, behaviour, reply):
    """With proxy_pass_error_message on (nginx's directive), a backend
    that refuses the handshake is heard by the client in its own words;
    a backend that says nothing still gives the 451."""
    b = scripted(behaviour)
    g = smtpgate(gatelib.conf(backend=b, proxy_connect_timeout="5s",
                              mail="    proxy_pass_error_message on;"))
    mark = g.log_mark()
    rest = _auth_until_closed(g)
    assert [r.raw for r in rest] == [reply], rest
    if reply != NO_BACKEND:
        g.wait_log(r"answering with the backend's reply "
                   r"\(proxy_pass_error_message\)", since=mark)


def test_backend_unresolvable_hostname_is_a_config_error(tmp_path, users):
    g = gatelib.Smtpgate(tmp_path, gatelib.conf(
        proxy_pass="no-such-host.invalid:25"), users_text=users[1])
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    assert "no-such-host.invalid" in r.stderr


def test_backend_closes_mid_session(smtpgate, scripted):
    b = scripted("close_after_mail")
    g = smtpgate(gatelib.conf(backend=b))
    mark = g.log_mark()
    with g.session() as c:
        rest = _mail_until_closed(c)
    assert [r.raw for r in rest] == [LOST], rest
    assert b"MAIL FROM:<a@example.org>" in b.received[0]
    g.wait_log(r"\[info\] .*backend " + re.escape(b.address)
               + r" closed the connection", since=mark)


def test_backend_closes_mid_session_over_tls(smtpgate, scripted):
    """The 421 reaches a TLS client too, before close_notify."""
    if not pkilib.tls_built():
        pytest.skip("built without the ssl module")
    pki = pkilib.shared()
    b = scripted("close_after_mail")
    g = smtpgate(pkilib.tls_conf(pki, b))
    with pkilib.implicit_session(g, pki) as c:
        rest = _mail_until_closed(c)
    assert [r.raw for r in rest] == [LOST], rest


@pytest.mark.time_limit(60)
def test_backend_silent_past_proxy_timeout(smtpgate, scripted):
    b = scripted("silent_after_mail")
    g = smtpgate(gatelib.conf(backend=b, proxy_timeout="2s"))
    mark = g.log_mark()
    with g.session() as c:
        rest = _mail_until_closed(c)
    assert [r.raw for r in rest] == [
        b"421 4.4.2 mx.test Error: timeout exceeded\r\n"], rest
    g.wait_log(r"relay idle for longer than proxy_timeout", since=mark)


def test_backend_closes_inside_a_reply(smtpgate, scripted):
    """A 421 after half a reply would read as its next line: the client
    gets what the backend sent, then the close."""
    b = scripted("half_reply_close")
    g = smtpgate(gatelib.conf(backend=b))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        c.send(b"MAIL FROM:<a@example.org>\r\n")
        got = b""
        while True:
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            got += chunk
    assert got == b"250-first of two lines\r\n", got


def test_backend_down_does_not_affect_other_sessions(smtpgate, backend):
    """One failing backend session leaves the worker serving."""
    port = net.free_port()
    g = smtpgate(gatelib.conf(proxy_pass=f"127.0.0.1:{port}"))
    _auth_gets_451(g)
    with g.session() as c:
        assert c.expect("NOOP", 250)


def test_backend_with_fragmented_multiline_replies(smtpgate, scripted):
    """A multi-line greeting and a long EHLO reply arriving a few bytes at
    a time are still one greeting and one reply."""
    b = scripted("fragmented")
    g = smtpgate(gatelib.conf(backend=b))
    with g.session(timeout=60) as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        msg = b"Subject: f\r\n\r\n.dot\r\nend\r\n"
        r = c.mail("a@example.org", ["b@example.org"], msg)
        assert r.last == "2.0.0 fragmented backend took it", r
    net.wait_until(lambda: b.messages, 30, what="the message")
    assert b.messages == [msg]
