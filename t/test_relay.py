"""Messages relayed through smtpgate reach the backend byte for byte, with
real clients (smtplib, swaks, curl, msmtp) and real servers (aiosmtpd,
Postfix's smtp-sink)."""

import shutil
import smtplib
import subprocess
import time

import pytest

from lib import gate as gatelib
from lib import net, smtp
from lib.checks import assert_same_bytes, backend_view
from lib.messages import make_message
from lib.users import password


@pytest.fixture(params=["aiosmtpd", "smtp-sink"])
def any_backend(request):
    return request.getfixturevalue(
        {"aiosmtpd": "backend", "smtp-sink": "sink"}[request.param])


@pytest.mark.time_limit(300)
@pytest.mark.parametrize("size", [1024, 20 * 1024 * 1024], ids=["1k", "20M"])
def test_message_arrives_byte_exact(smtpgate, any_backend, size):
    g = smtpgate(gatelib.conf(backend=any_backend))
    msg = make_message(size, seed=size)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=180) as c:
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        refused = c.sendmail("sender@example.org",
                             ["rcpt1@example.org", "rcpt2@example.org"], msg)
        assert refused == {}
    (m,) = any_backend.wait_messages(1, timeout=120)
    assert_same_bytes(m.content, backend_view(any_backend, msg))
    if any_backend.name == "aiosmtpd":
        assert m.mail_from == "sender@example.org"
        assert m.rcpt_tos == ["rcpt1@example.org", "rcpt2@example.org"]
    else:
        assert m.mail_from.split()[0] == "<sender@example.org>"
        assert m.rcpt_tos == ["<rcpt1@example.org>", "<rcpt2@example.org>"]
    assert m.helo, "smtpgate did not EHLO/HELO the backend"


def test_several_messages_in_one_session(gate, backend):
    msgs = [make_message(3000, seed=i, subject=f"message {i}")
            for i in range(3)]
    with gate.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        for i, msg in enumerate(msgs):
            r = c.mail(f"s{i}@example.org", [f"r{i}@example.org"], msg)
            assert r.code == 250, r
            assert c.cmd("RSET").code == 250
        r = c.cmd("QUIT")
        assert r.code == 221
        c.expect_closed()
    got = backend.wait_messages(3)
    for i, (m, msg) in enumerate(zip(got, msgs)):
        assert m.mail_from == f"s{i}@example.org"
        assert_same_bytes(m.content, msg, f"message {i}")


def test_backend_replies_are_relayed_verbatim(gate, backend):
    with gate.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        # These texts come from the aiosmtpd backend, not from smtpgate.
        assert c.expect("MAIL FROM:<a@example.org>", 250).last == \
            "2.1.0 Sender OK"
        assert c.expect("RCPT TO:<b@example.org>", 250).last == \
            "2.1.5 Recipient OK"
        assert c.expect("DATA", 354).code == 354
        c.send(b"Subject: v\r\n\r\nbody\r\n.\r\n")
        assert c.reply().last == "2.0.0 Message accepted by backend"


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_listen_and_backend(smtpgate):
    from lib.backends import AiosmtpdBackend
    b = AiosmtpdBackend(host=net.IPV6).start()
    try:
        g = smtpgate(gatelib.conf(backend=b, listen=("[::1]:@PORT6@",)))
        assert b.address.startswith("[::1]:")
        msg = make_message(2048)
        with smtp.RawSmtp("::1", g.ports["PORT6"]) as c:
            assert c.greeting().code == 220
            c.ehlo()
            assert c.auth_plain("bob", password("bob")).code == 235
            assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
        (m,) = b.wait_messages(1)
        assert_same_bytes(m.content, msg)
        assert m.peer[0] == "::1"
    finally:
        b.stop()


def test_ipv4_and_ipv6_listeners_together(smtpgate, backend):
    if not net.ipv6_available():
        pytest.skip("no IPv6 loopback")
    g = smtpgate(gatelib.conf(backend=backend,
                              listen=("127.0.0.1:@PORT@", "[::1]:@PORT6@")))
    for host, port in ((net.IPV4, g.port), (net.IPV6, g.ports["PORT6"])):
        with smtp.RawSmtp(host, port) as c:
            assert c.greeting().last == "mx.test ESMTP ready"
            c.ehlo()
            assert c.auth_plain("alice", password("alice")).code == 235
            assert c.mail("a@example.org", [f"{port}@example.org"],
                          b"Subject: x\r\n\r\nx\r\n").code == 250
    got = backend.wait_messages(2)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(
        [f"{g.port}@example.org", f"{g.ports['PORT6']}@example.org"])


# -- XCLIENT ----------------------------------------------------------------


def test_xclient_sent_when_offered(smtpgate, xclient_backend):
    b = xclient_backend
    g = smtpgate(gatelib.conf(backend=b))
    with g.session() as c:
        c.ehlo("client.test")
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: x\r\n\r\nx\r\n").code == 250
    (m,) = b.wait_messages(1)
    assert m.xclient is not None, f"no XCLIENT; backend saw {b.commands}"
    assert "ADDR=127.0.0.1" in m.xclient.split()
    verbs = [v for v, _ in b.commands]
    # XCLIENT resets the backend session: EHLO must come again after it.
    assert verbs[:3] == ["EHLO", "XCLIENT", "EHLO"], b.commands
    assert verbs[3:] == ["MAIL", "RCPT"], b.commands


def test_xclient_off(smtpgate, xclient_backend):
    b = xclient_backend
    g = smtpgate(gatelib.conf(backend=b, mail="    xclient off;"))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: x\r\n\r\nx\r\n").code == 250
    b.wait_messages(1)
    assert b.seen("XCLIENT") == []


def test_no_xclient_when_backend_does_not_offer_it(gate, backend):
    with gate.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: x\r\n\r\nx\r\n").code == 250
    backend.wait_messages(1)
    assert backend.seen("XCLIENT") == []


# -- other clients ----------------------------------------------------------


def _run(args, timeout=120, **kw):
    p = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    return p, (p.stdout + p.stderr).decode(errors="replace")


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_auth_plain(gate, backend):
    p, out = _run(["swaks", "--server", f"127.0.0.1:{gate.port}",
                   "--auth", "PLAIN", "--auth-user", "alice",
                   "--auth-password", password("alice"),
                   "--from", "a@example.org", "--to", "x@example.org",
                   "--header", "Subject: swaks test",
                   "--body", "sent by swaks\n.leading dot\n",
                   "--timeout", "60"])
    assert p.returncode == 0, out
    assert "235 2.7.0 Authentication successful" in out
    (m,) = backend.wait_messages(1)
    assert m.mail_from == "a@example.org"
    assert m.rcpt_tos == ["x@example.org"]
    assert b"Subject: swaks test\r\n" in m.content
    assert b"\r\n.leading dot\r\n" in m.content


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_smtp(gate, backend, tmp_path):
    msg = make_message(4096, seed=7)
    path = tmp_path / "msg.eml"
    path.write_bytes(msg)
    p, out = _run(["curl", "-sS", "--max-time", "60",
                   f"smtp://127.0.0.1:{gate.port}/client.test",
                   "--user", f"carol:{password('carol')}",
                   "--mail-from", "a@example.org",
                   "--mail-rcpt", "x@example.org",
                   "--upload-file", str(path)])
    assert p.returncode == 0, out
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, msg)


@pytest.mark.skipif(not shutil.which("msmtp"), reason="msmtp not installed")
def test_msmtp_auth_login(gate, backend):
    msg = make_message(4096, seed=8)
    p, out = _run(["msmtp", "--host=127.0.0.1", f"--port={gate.port}",
                   "--tls=off", "--auth=login", "--user=dave",
                   f"--passwordeval=echo {password('dave')}",
                   "--from=a@example.org", "--timeout=60", "x@example.org"],
                  input=msg)
    assert p.returncode == 0, out
    (m,) = backend.wait_messages(1)
    # msmtp adds a Date: header in front; the rest must be intact.
    added = m.content[:len(m.content) - len(msg)]
    assert all(l.startswith(b"Date: ") for l in added.splitlines()), added
    assert_same_bytes(m.content[len(added):], msg)


N_CLOSE_SESSIONS = 60


@pytest.mark.parametrize("quit", ["answered-here", "passed-on"])
def test_session_ends_at_once_after_quit(smtpgate, sink, quit):
    """After QUIT smtpgate closes the client's connection at once, every
    time: when it answers QUIT itself, and when QUIT goes to the backend
    (after a command the relay does not follow) and the backend's 221
    and close come back: a relay that missed the backend's FIN would
    leave a client that waits for the close (as RFC 5321 lets it)
    hanging until proxy_timeout.  Many short sessions, because a FIN
    arriving on an edge of its own is a matter of timing."""
    g = smtpgate(gatelib.conf(backend=sink, proxy_timeout="60s"))
    for i in range(N_CLOSE_SESSIONS):
        with g.session(timeout=20) as c:
            c.ehlo()
            assert c.auth_plain("dave", password("dave")).code == 235
            if quit == "passed-on":
                assert c.cmd("XYZZY").code == 500
            assert c.mail("s@example.org", ["r@example.org"],
                          make_message(10240, seed=i)).code == 250
            r = c.cmd("QUIT")
            assert r.raw == (b"221 2.0.0 Bye\r\n" if quit == "answered-here"
                             else b"221 Bye\r\n"), (i, r)
            started = time.monotonic()
            c.expect_closed()
            assert time.monotonic() - started < 5, f"session {i}"


# --------------------------------------------------------------------------
# QUIT in the relay: answered by smtpgate when every reply the client was
# owed has come, and passed on to the backend, whose own reply is not
# waited for.


def _relayed_session(g, user="alice"):
    c = g.session()
    c.ehlo()
    assert c.auth_plain(user, password(user)).code == 235
    return c


def _wait_closed(backend, timeout=10):
    net.wait_until(lambda: backend.sessions
                   and not backend.sessions[-1].open, timeout,
                   what="the backend connection to close")


def test_quit_after_a_message_is_answered_here(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    mark = g.log_mark()
    with _relayed_session(g) as c:
        r = c.mail("a@example.org", ["b@example.org"],
                   make_message(4096, seed=1))
        assert r.raw == b"250 2.0.0 Message accepted by backend\r\n", r
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    backend.wait_messages(1)
    # The backend heard QUIT, after the message, and the connection
    # closed: nothing is left open behind the client.
    backend.wait_command("QUIT")
    _wait_closed(backend)
    assert [v for v, _ in backend.sessions[-1].commands][-1] == "QUIT"
    g.wait_log(r"\[info\] .*\*\d+ client sent QUIT, backend connection told "
               r"QUIT and closed, ", since=mark)


def test_quit_pipelined_after_the_message_waits_for_its_reply(smtpgate,
                                                              make_backend):
    """The end of the message and QUIT in one write, to a backend slow to
    accept the message: the client gets the backend's 250 first, then
    the 221, and the message is delivered."""
    backend = make_backend(delays={"DATA": 1.0})
    g = smtpgate(gatelib.conf(backend=backend))
    with _relayed_session(g) as c:
        assert c.expect("MAIL FROM:<a@example.org>", 250)
        assert c.expect("RCPT TO:<b@example.org>", 250)
        assert c.expect("DATA", 354)
        c.send(smtp.dot_stuff(make_message(2048, seed=2)) + b"QUIT\r\n")
        r = c.reply()
        assert r.raw == b"250 2.0.0 Message accepted by backend\r\n", r
        assert c.reply().raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, make_message(2048, seed=2))
    backend.wait_command("QUIT")


def test_quit_pipelined_after_a_refused_rcpt(smtpgate, make_backend):
    """MAIL, RCPT and QUIT together: the RCPT's refusal comes first."""
    backend = make_backend(replies={"RCPT": "550 5.1.1 no such user"},
                           delays={"RCPT": 0.5})
    g = smtpgate(gatelib.conf(backend=backend))
    with _relayed_session(g) as c:
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.org>\r\n"
               b"QUIT\r\n")
        assert c.reply().code == 250
        assert c.reply().raw == b"550 5.1.1 no such user\r\n"
        assert c.reply().raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    backend.wait_command("QUIT")


def test_nothing_after_quit_reaches_the_backend(smtpgate, backend):
    """Commands pipelined behind QUIT are dropped with it."""
    g = smtpgate(gatelib.conf(backend=backend))
    with _relayed_session(g) as c:
        c.send(b"QUIT\r\nMAIL FROM:<late@example.org>\r\n"
               b"RCPT TO:<b@example.org>\r\nDATA\r\n")
        assert c.reply().raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    backend.wait_command("QUIT")
    _wait_closed(backend)
    assert backend.seen("MAIL") == []


@pytest.mark.parametrize("how", ["unknown-command", "quit-argument"])
def test_quit_goes_to_the_backend_when_the_session_is_not_followed(
        smtpgate, backend, how):
    """After anything the relay does not follow without doubt, QUIT and
    its reply pass unchanged, the backend's own words."""
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    mark = g.log_mark()
    with _relayed_session(g) as c:
        if how == "unknown-command":
            assert c.cmd("XYZZY").code == 500
            r = c.cmd("QUIT")
            why = "a command other than those of RFC 5321"
            assert r.raw == b"221 2.0.0 backend says bye\r\n", r
        else:
            r = c.cmd("QUIT now")
            why = "QUIT with an argument"
            # aiosmtpd refuses the argument, as RFC 5321 allows no other
            # form; the session goes on.
            assert r.code == 501, r
            assert c.cmd("QUIT").raw == b"221 2.0.0 backend says bye\r\n"
        c.expect_closed()
    g.wait_log(r"the session is no longer followed: " + why
               + "; QUIT goes to the backend", since=mark)
    g.wait_log(r"backend \S+ closed the connection", since=mark)


def test_quit_through_real_postfix(smtpgate, postfix):
    """Postfix logs the session as ended by QUIT, not as a lost
    connection."""
    g = smtpgate(gatelib.conf(backend=postfix))
    with _relayed_session(g) as c:
        assert c.mail("a@example.org", ["b@example.org"],
                      make_message(1024, seed=4)).code == 250
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    postfix.wait_messages(1)
    postfix.wait_log(r"smtpd\[\d+\]: disconnect from \S+ ehlo=\d.* mail=1 "
                     r"rcpt=1 data=1 quit=1 commands=")
    assert "lost connection" not in postfix.log_text()


def test_a_large_message_is_no_longer_followed(smtpgate, backend):
    """Past 128 KB of a message the relay stops reading the session
    (without proxy_keepalive all it would buy is the QUIT answered
    here): the message arrives whole, and QUIT and the backend's reply
    pass unchanged.  A small message in the same setup is followed."""
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    big = make_message(300 * 1024, seed=5)
    mark = g.log_mark()
    with _relayed_session(g) as c:
        assert c.mail("a@example.org", ["b@example.org"], big).code == 250
        assert c.cmd("QUIT").raw == b"221 2.0.0 backend says bye\r\n"
        c.expect_closed()
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, big)
    g.wait_log(r"the session is no longer followed: a large message; "
               r"QUIT goes to the backend", since=mark)
    with _relayed_session(g) as c:
        assert c.mail("a@example.org", ["b@example.org"],
                      make_message(100 * 1024, seed=6)).code == 250
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    backend.wait_messages(2)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_quit_and_go(smtpgate, backend, how):
    """A client that sends QUIT and hangs up without reading the 221
    (closing, or resetting the connection): the backend is still told
    QUIT whenever smtpgate read it, nothing is left open, and the worker
    serves the next client."""
    import socket
    import struct
    g = smtpgate(gatelib.conf(backend=backend))
    c = _relayed_session(g)
    assert c.mail("a@example.org", ["b@example.org"],
                  make_message(1024, seed=7)).code == 250
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
    c.sock.sendall(b"QUIT\r\n")
    c.sock.close()
    backend.wait_messages(1)
    if how == "close":
        backend.wait_command("QUIT")
    _wait_closed(backend)
    with _relayed_session(g, "bob") as c2:
        assert c2.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
