"""proxy_keepalive: one backend connection serves session after session.

A real aiosmtpd backend (and Postfix's smtp-sink, and Postfix itself for
XCLIENT) counts the connections it accepted and records each command;
the tests check that sessions which end with QUIT at a command boundary
leave their backend connection for the next session (RSET in between,
XCLIENT again for each client), that every message still arrives byte
for byte, and that any session the relay cannot follow without doubt --
a bare LF in a message, a command it does not know, a client that
vanishes, a login to the backend -- gets its backend connection closed
as without keepalive.
"""

import re
import signal
import smtplib
import time

import pytest

from lib import gate as gatelib
from lib import postfix as postfixlib
from lib.backends import AiosmtpdBackend
from lib.checks import assert_same_bytes
from lib.messages import make_message
from lib.smtp import RawSmtp
from lib.users import password


def ka_gate(smtpgate, backend, mail="", keepalive=4, xclient="off", **kw):
    return smtpgate(gatelib.conf(
        backend=backend,
        mail=f"    proxy_keepalive {keepalive};\n    xclient {xclient};\n"
        + mail, **kw))


def logged_in(g, user="alice", helo=None):
    """A RawSmtp to g past the greeting, EHLO (helo, or the default name)
    and AUTH as user."""
    c = RawSmtp("127.0.0.1", g.port, 30)
    c.greeting()
    c.ehlo(*([helo] if helo else []))
    assert c.auth_plain(user, password(user)).code == 235
    return c


def one_session(g, msg, user="alice", quit=True):
    c = RawSmtp("127.0.0.1", g.port, 30)
    assert c.greeting().code == 220
    c.ehlo("client.example")
    assert c.auth_plain(user, password(user)).code == 235
    assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
    if quit:
        r = c.cmd("QUIT")
        assert r.code == 221, r
        c.expect_closed()
    c.close()


def wait_until(check, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_sessions_share_one_backend_connection(smtpgate, backend):
    g = ka_gate(smtpgate, backend)
    mark = g.log_mark()
    msgs = [make_message(2000 + i * 3000, seed=i) for i in range(5)]
    for msg in msgs:
        one_session(g, msg)
    got = backend.wait_messages(5)
    for m, msg in zip(got, msgs):
        assert_same_bytes(m.content, msg)
    assert backend.connections == 1
    (conn,) = backend.sessions
    assert conn.messages == 5
    log = g.log_since(mark)
    assert log.count("backend connection kept") == 5
    assert log.count("on a kept connection") == 4


@pytest.mark.parametrize("splice", ["on", "off"])
def test_a_large_message_keeps_or_ends_the_connection(smtpgate, backend,
                                                      splice):
    """A message past 256 KB: with proxy_splice on the relay stops reading
    what passes, so it cannot know where the session stands, and the
    backend connection is closed; with buffers (the default) it reads on
    and the connection is kept for the next session."""
    g = ka_gate(smtpgate, backend, mail=f"    proxy_splice {splice};\n",
                level="debug")
    mark = g.log_mark()
    big = make_message(1024 * 1024, seed=11)
    small = make_message(1500, seed=12)
    one_session(g, big)
    one_session(g, small)
    got = backend.wait_messages(2)
    assert_same_bytes(got[0].content, big)
    assert_same_bytes(got[1].content, small)
    log = g.log_since(mark)
    if splice == "on":
        assert "will not be kept: a large transfer goes through splice" \
            in log
        assert backend.connections == 2
        assert "on a kept connection" not in log
    else:
        assert "with splice" not in log
        assert backend.connections == 1
        assert log.count("on a kept connection") == 1


def test_rset_between_sessions_clears_a_transaction(smtpgate, backend):
    g = ka_gate(smtpgate, backend)
    # A session that leaves a transaction open (MAIL, RCPT, no DATA).
    with RawSmtp("127.0.0.1", g.port, 30) as c:
        c.greeting()
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.expect("MAIL FROM:<open@example.org>", 250).code == 250
        assert c.expect("RCPT TO:<x@example.org>", 250).code == 250
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    msg = make_message(1500, seed=7)
    one_session(g, msg)
    (m,) = backend.wait_messages(1)
    assert m.mail_from == "a@example.org"
    assert m.rcpt_tos == ["b@example.org"]
    assert backend.connections == 1
    verbs = [v for v, _ in backend.sessions[0].commands]
    # RSET itself is not recorded by the backend; the second MAIL is
    # accepted, which aiosmtpd refuses with 503 inside a transaction.
    assert verbs.count("MAIL") == 2


def test_xclient_is_sent_again_for_each_client(smtpgate, xclient_backend):
    g = smtpgate(gatelib.conf(
        backend=xclient_backend,
        mail="    proxy_keepalive 4;\n    xclient on;\n"))
    one_session(g, b"Subject: 1\r\n\r\none\r\n", user="alice")
    one_session(g, b"Subject: 2\r\n\r\ntwo\r\n", user="bob")
    xclient_backend.wait_messages(2)
    assert xclient_backend.connections == 1
    xc = [a for v, a in xclient_backend.sessions[0].commands
          if v == "XCLIENT"]
    assert len(xc) == 2, xc
    assert "LOGIN=alice" in xc[0] and "LOGIN=bob" in xc[1]


def test_postfix_each_client_seen_right_with_xclient(smtpgate, make_postfix):
    # After XCLIENT, Postfix speaks for the client it was told of, and
    # that client may not send XCLIENT: the connection cannot serve
    # another client, so it is not kept; every message shows its own
    # client.
    postfix = make_postfix()
    g = smtpgate(gatelib.conf(
        proxy_pass=postfix.address, level="debug",
        listen=("127.0.0.1:@PORT@ proxy_protocol",),
        mail="    set_real_ip_from 127.0.0.1;\n    proxy_keepalive 4;\n"))
    mark = g.log_mark()
    for i, (addr, user) in enumerate((("203.0.113.50", "alice"),
                                      ("203.0.113.51", "bob"))):
        with RawSmtp("127.0.0.1", g.port, 30) as c:
            c.send(f"PROXY TCP4 {addr} 192.0.2.1 4000{i} 587\r\n".encode())
            assert c.greeting().code == 220
            c.ehlo(f"client{i}.example")
            assert c.auth_plain(user, password(user)).code == 235
            assert c.mail("a@example.org", ["b@example.org"],
                          f"Subject: {i}\r\n\r\nhello\r\n".encode()
                          ).code == 250
            assert c.cmd("QUIT").code == 221
            c.expect_closed()
    raws = postfix.wait_messages(2)
    seen = set()
    for raw in raws:
        (received,) = postfixlib.headers(raw, "Received")
        m = re.match(r"from (client\d\.example) \(unknown \[([0-9.]+)\]\)",
                     received)
        assert m, received
        seen.add((m.group(1), m.group(2)))
    assert seen == {("client0.example", "203.0.113.50"),
                    ("client1.example", "203.0.113.51")}
    log = g.log_since(mark)
    assert "on a kept connection" not in log
    assert log.count("will not be kept: after XCLIENT the backend offers "
                     "no other") == 2


def test_postfix_without_xclient_keeps_its_connection(smtpgate, make_postfix):
    postfix = make_postfix()
    g = smtpgate(gatelib.conf(
        proxy_pass=postfix.address,
        mail="    proxy_keepalive 4;\n    xclient off;\n"))
    mark = g.log_mark()
    msgs = [make_message(3000, seed=i) for i in range(3)]
    for msg in msgs:
        one_session(g, msg)
    raws = postfix.wait_messages(3)
    for raw in raws:
        (received,) = postfixlib.headers(raw, "Received")
        assert received.startswith("from mx.test (localhost [127.0.0.1])") \
            or received.startswith("from mx.test (unknown [127.0.0.1])"), \
            received
    assert g.log_since(mark).count("on a kept connection") == 2


def test_end_of_data_and_quit_in_one_write(smtpgate, backend):
    g = ka_gate(smtpgate, backend)
    for _ in range(2):
        with RawSmtp("127.0.0.1", g.port, 30) as c:
            c.greeting()
            c.ehlo()
            assert c.auth_plain("alice", password("alice")).code == 235
            c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
                   b"DATA\r\n")
            assert [r.code for r in c.replies(3)] == [250, 250, 354]
            c.send(b"Subject: p\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
            assert c.reply().code == 250
            assert c.reply().code == 221
            c.expect_closed()
    got = backend.wait_messages(2)
    assert got[0].content == b"Subject: p\r\n\r\n.dot\r\n"
    assert backend.connections == 1


def test_bdat_chunks_are_not_read_as_commands(smtpgate, make_backend):
    b = make_backend(ehlo_add=("CHUNKING",))
    g = ka_gate(smtpgate, b)
    body = b"Subject: c\r\n\r\nQUIT\r\nRSET\r\n"
    for _ in range(2):
        with RawSmtp("127.0.0.1", g.port, 30) as c:
            c.greeting()
            c.ehlo()
            assert c.auth_plain("alice", password("alice")).code == 235
            assert c.expect("MAIL FROM:<a@example.org>", 250).code == 250
            assert c.expect("RCPT TO:<b@example.org>", 250).code == 250
            c.send(b"BDAT %d LAST\r\n" % len(body) + body)
            assert c.reply().code == 250
            assert c.cmd("QUIT").code == 221
            c.expect_closed()
    got = b.wait_messages(2)
    assert got[1].content == body
    assert b.connections == 1


@pytest.mark.parametrize("case", ["bare-lf", "unknown-command",
                                  "client-vanishes"])
def test_sessions_it_cannot_follow_close_their_backend(smtpgate, backend,
                                                       case):
    g = smtpgate(gatelib.conf(
        backend=backend, level="debug",
        mail="    proxy_keepalive 4;\n    xclient off;\n"))
    mark = g.log_mark()
    with RawSmtp("127.0.0.1", g.port, 30) as c:
        c.greeting()
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        if case == "bare-lf":
            assert c.expect("MAIL FROM:<a@example.org>", 250).code == 250
            assert c.expect("RCPT TO:<b@example.org>", 250).code == 250
            assert c.expect("DATA", 354).code == 354
            c.send(b"Subject: lf\r\n\r\nline\n.\r\nmore\r\n.\r\n")
            assert c.reply().code == 250
            g.wait_log("will not be kept: a bare LF in the message",
                       since=mark)
        elif case == "unknown-command":
            assert c.cmd("ETRN example.org").code // 100 == 5
            g.wait_log("will not be kept: a command other than those of "
                       "RFC 5321", since=mark)
        if case != "client-vanishes":
            assert c.cmd("QUIT").code == 221
            c.expect_closed()
    assert wait_until(lambda: backend.open_connections == 0)
    assert "backend connection kept" not in g.log_since(mark)
    # and the next session gets a connection of its own
    one_session(g, b"Subject: next\r\n\r\nnext\r\n")
    assert backend.connections == 2


def test_off_by_default_and_with_backend_login(smtpgate, make_backend):
    b = make_backend()
    g = smtpgate(gatelib.conf(backend=b, mail="    xclient off;\n"))
    one_session(g, b"Subject: 1\r\n\r\n1\r\n")
    one_session(g, b"Subject: 2\r\n\r\n2\r\n")
    b.wait_messages(2)
    assert b.connections == 2

    users = {"alice": password("alice")}
    a = make_backend(auth=users)
    g2 = smtpgate(gatelib.conf(
        backend=a, mail="    xclient off;\n    proxy_keepalive 4;\n"
                        "    proxy_smtp_auth on;\n"))
    one_session(g2, b"Subject: 1\r\n\r\n1\r\n")
    one_session(g2, b"Subject: 2\r\n\r\n2\r\n")
    a.wait_messages(2)
    assert a.connections == 2


def test_keepalive_requests_bounds_sessions_per_connection(smtpgate,
                                                          backend):
    g = ka_gate(smtpgate, backend, mail="    proxy_keepalive_requests 2;\n")
    for i in range(5):
        one_session(g, b"Subject: r\r\n\r\nr\r\n")
    backend.wait_messages(5)
    assert backend.connections == 3
    assert [s.messages for s in backend.sessions] == [2, 2, 1]


def test_idle_connection_closed_after_timeout_with_quit(smtpgate, backend):
    g = ka_gate(smtpgate, backend, mail="    proxy_keepalive_timeout 1s;\n")
    one_session(g, b"Subject: t\r\n\r\nt\r\n")
    backend.wait_messages(1)
    assert backend.open_connections == 1
    assert wait_until(lambda: backend.open_connections == 0, timeout=10)
    one_session(g, b"Subject: t\r\n\r\nt\r\n")
    assert backend.connections == 2


def test_backend_closing_a_kept_connection_is_no_failure(smtpgate, backend):
    g = ka_gate(smtpgate, backend)
    mark = g.log_mark()
    one_session(g, b"Subject: 1\r\n\r\n1\r\n")
    backend.wait_messages(1)
    backend.stop()               # closes the kept connection
    backend.start()
    g.wait_log("kept connection to backend .* closed: the backend closed "
               "it", since=mark)
    one_session(g, b"Subject: 2\r\n\r\n2\r\n")
    backend.wait_messages(2)
    assert backend.connections == 2
    assert "failed" not in g.log_since(mark)


def test_smtp_sink_and_many_sessions(smtpgate, sink):
    g = ka_gate(smtpgate, sink, keepalive=2)
    msg = make_message(5000, seed=3)
    for _ in range(20):
        with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
            c.login("alice", password("alice"))
            assert c.sendmail("a@example.org", ["b@example.org"], msg) == {}
    got = sink.wait_messages(20)
    assert len(got) == 20


def test_reload_closes_kept_connections(smtpgate, backend):
    g = ka_gate(smtpgate, backend)
    one_session(g, b"Subject: 1\r\n\r\n1\r\n")
    backend.wait_messages(1)
    assert backend.open_connections == 1
    old = g.workers()
    g.signal(signal.SIGHUP)
    g.wait_old_workers_gone(old)
    assert wait_until(lambda: backend.open_connections == 0)


@pytest.mark.parametrize("line,err", [
    ("proxy_keepalive -1;", "proxy_keepalive"),
    ("proxy_keepalive many;", "proxy_keepalive"),
    ("proxy_keepalive 5000;", "proxy_keepalive"),
    ("proxy_keepalive_requests 0;", "proxy_keepalive_requests"),
    ("proxy_keepalive_timeout never;", "proxy_keepalive_timeout"),
])
def test_bad_directives_are_config_errors(tmp_path, users, backend, line,
                                          err):
    conf = gatelib.conf(backend=backend, mail=f"    {line}\n")
    g = gatelib.Smtpgate(tmp_path / "t", conf, users_text=users[1])
    r = g.ctl("-t")
    assert r.returncode != 0
    want = line_no(open(g.conf_path).read(), line)
    assert re.search(rf"{re.escape(str(g.conf_path))}:{want}: .*\"{err}\"",
                     r.stderr), r.stderr


def line_no(text, needle):
    return [i + 1 for i, l in enumerate(text.splitlines()) if needle in l][0]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_backend_connection_is_kept(smtpgate, make_backend, mode):
    b = make_backend(tls=mode, require_starttls=(mode == "starttls"))
    g = ka_gate(smtpgate, b, mail="    proxy_ssl %s;\n"
                % ("starttls" if mode == "starttls" else "on"))
    mark = g.log_mark()
    for i in range(3):
        one_session(g, f"Subject: {i}\r\n\r\nover TLS\r\n".encode())
    got = b.wait_messages(3)
    assert all(m.conn.tls_mode == mode for m in got)
    assert b.connections == 1
    # one TLS handshake (and one STARTTLS) for the three sessions
    verbs = [v for v, _ in b.sessions[0].commands]
    assert verbs.count("STARTTLS") == (1 if mode == "starttls" else 0)
    assert g.log_since(mark).count("ready over TLS, on a kept connection") \
        == 2


def test_bdat_to_a_backend_without_chunking_is_not_followed(smtpgate,
                                                            backend):
    # A backend that does not know BDAT reads the "chunk" as commands:
    # here a hidden MAIL, RCPT and DATA, with three NOOPs to even out the
    # replies.  Were the connection kept, the next session's commands
    # would land inside this message.  It must not be kept, and the next
    # client's message must arrive as its own.
    g = smtpgate(gatelib.conf(
        backend=backend, level="debug",
        mail="    proxy_keepalive 4;\n    xclient off;\n"))
    mark = g.log_mark()
    hidden = (b"MAIL FROM:<attacker@example.org>\r\n"
              b"RCPT TO:<attacker@example.org>\r\nDATA\r\n")
    with RawSmtp("127.0.0.1", g.port, 30) as c:
        c.greeting()
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        c.send(b"BDAT %d\r\n" % len(hidden) + hidden
               + b"NOOP\r\nNOOP\r\nNOOP\r\n")
        codes = [r.code for r in c.replies(4)]
        assert codes == [500, 250, 250, 354], codes
        # The backend now reads message text: QUIT is a line of it, so
        # no 221 comes; the client gives up and closes.
        c.send(b"QUIT\r\n")
    g.wait_log("will not be kept: BDAT to a server that does not offer "
               "CHUNKING", since=mark)
    assert wait_until(lambda: backend.open_connections == 0)
    assert "backend connection kept" not in g.log_since(mark)
    one_session(g, b"Subject: victim\r\n\r\nprivate\r\n", user="bob")
    (m,) = backend.wait_messages(1)
    assert m.mail_from == "a@example.org"
    assert m.content == b"Subject: victim\r\n\r\nprivate\r\n"
    assert backend.connections == 2


def test_xclient_on_a_kept_connection_clears_the_last_login(
        smtpgate, xclient_backend):
    # XCLIENT attributes left out keep their values: an anonymous session
    # (smtp_auth none) after alice's must not be relayed as alice.
    g = smtpgate(gatelib.conf(
        backend=xclient_backend,
        mail="    proxy_keepalive 4;\n    xclient on;\n"
             "    smtp_auth none plain;\n    smtp_auth_fail_delay 0;\n"))
    one_session(g, b"Subject: 1\r\n\r\none\r\n", user="alice")
    with RawSmtp("127.0.0.1", g.port, 30) as c:
        c.greeting()
        c.ehlo("anon.example")
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: 2\r\n\r\ntwo\r\n").code == 250
        assert c.cmd("QUIT").code == 221
    xclient_backend.wait_messages(2)
    assert xclient_backend.connections == 1
    xc = [a for v, a in xclient_backend.sessions[0].commands
          if v == "XCLIENT"]
    assert len(xc) == 2, xc
    assert "LOGIN=alice" in xc[0]
    assert "LOGIN=[UNAVAILABLE]" in xc[1], xc[1]
    assert "HELO=anon.example" in xc[1]


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
def test_client_helo_does_not_reach_the_next_session(smtpgate, backend,
                                                     verb):
    # A client that greets again during the relay renames (and, with HELO,
    # leaves ESMTP) the backend's session.  RSET keeps both, so on a kept
    # connection the next client's message would come "from" the first
    # client's name.  Without XCLIENT the backend must see smtpgate's own
    # server_name for every session, as it does without keepalive.
    g = ka_gate(smtpgate, backend, level="debug")
    mark = g.log_mark()
    with logged_in(g, "alice", "alice.example") as c:
        assert c.cmd(f"{verb} evil.example").code == 250
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    with logged_in(g, "bob", "bob.example") as c:
        c.send(b"MAIL FROM:<bob@example.org> BODY=8BITMIME\r\n")
        assert c.reply().code == 250
        assert c.expect("RCPT TO:<b@example.org>", 250).code == 250
        assert c.expect("DATA", 354).code == 354
        c.send(b"Subject: bob\r\n\r\nbob's\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    (m,) = backend.wait_messages(1)
    assert m.helo == "mx.test", m.helo
    assert "will not be kept: the client greeted again" \
        in g.log_since(mark)


def test_client_helo_with_xclient_keeps_the_connection(smtpgate,
                                                       xclient_backend):
    # With XCLIENT the next session sends XCLIENT and EHLO anew, so a
    # client that greeted again does not cost the connection.
    g = ka_gate(smtpgate, xclient_backend, xclient="on", level="debug")
    mark = g.log_mark()
    with logged_in(g, "alice", "alice.example") as c:
        assert c.cmd("HELO evil.example").code == 250
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    one_session(g, b"Subject: bob\r\n\r\nbob's\r\n", user="bob")
    (m,) = xclient_backend.wait_messages(1)
    assert m.helo == "client.example", m.helo
    assert xclient_backend.connections == 1
    assert "greeted again" not in g.log_since(mark)


def test_a_started_reply_nobody_asked_for_is_not_kept(smtpgate, scripted):
    # The backend answers NOOP, then begins a line of its own.  smtpgate's
    # 221 must not be glued to that half line, and the connection, which
    # spoke out of turn, must not serve another session.
    b = scripted("noop_tail")
    g = ka_gate(smtpgate, b, level="debug")
    mark = g.log_mark()
    with logged_in(g) as c:
        assert c.cmd("NOOP").code == 250
        time.sleep(0.1)
        c.send(b"QUIT\r\n")
        raw = b"".join(r.raw for r in c.read_until_closed())
    assert b"tail221" not in raw, raw
    assert raw.endswith(b"221 2.0.0 scripted Bye\r\n"), raw
    g.wait_log("will not be kept: a reply to no command", since=mark)
    assert "backend connection kept" not in g.log_since(mark)


def test_errors_since_the_last_message_close_the_connection(smtpgate,
                                                            backend):
    g = ka_gate(smtpgate, backend, level="debug")
    mark = g.log_mark()
    # errors, nothing accepted after them: not kept
    with logged_in(g) as c:
        assert c.cmd("RCPT TO:<x@example.org>").code == 503
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    g.wait_log("will not be kept: the backend answered an error since the "
               "last message it accepted", since=mark)
    assert wait_until(lambda: backend.open_connections == 0)
    # errors, then a message accepted: kept
    with logged_in(g) as c:
        assert c.cmd("RCPT TO:<x@example.org>").code == 503
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: 1\r\n\r\none\r\n").code == 250
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    one_session(g, b"Subject: 2\r\n\r\ntwo\r\n", user="bob")
    backend.wait_messages(2)
    assert backend.connections == 2
    assert g.log_since(mark).count("on a kept connection") == 1


@pytest.mark.parametrize("xclient", ["off", "on"])
def test_postfix_error_count_is_not_inherited(smtpgate, make_postfix,
                                              xclient):
    # Postfix counts a client's errors per connection until a message is
    # delivered (XCLIENT does not reset it): past smtpd_soft_error_limit
    # each reply waits, at smtpd_hard_error_limit the connection ends.
    # One client's errors must not slow down or cut off the next client.
    postfix = make_postfix(main={"smtpd_hard_error_limit": "5",
                                 "smtpd_soft_error_limit": "3",
                                 "smtpd_error_sleep_time": "1s"})
    g = ka_gate(smtpgate, None, xclient=xclient,
                proxy_pass=postfix.address)
    with logged_in(g, "alice", "alice.example") as c:
        for _ in range(4):
            assert c.cmd("RCPT TO:<x@example.org>").code == 503
        assert c.cmd("QUIT").code == 221
    with logged_in(g, "bob", "bob.example") as c:
        assert c.cmd("RCPT TO:<x@example.org>").code == 503
        r = c.cmd("NOOP")
        assert r.code == 250, r
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: bob\r\n\r\nbob\r\n").code == 250
        assert c.cmd("QUIT").code == 221
    postfix.wait_messages(1)


def test_an_unreadable_answer_to_rset_closes_the_connection(smtpgate,
                                                             scripted):
    # Not a reply: the connection can serve no one, and must not sit in
    # the pool until proxy_keepalive_timeout.
    b = scripted("rset_garbage")
    g = ka_gate(smtpgate, b)
    mark = g.log_mark()
    with logged_in(g) as c:
        assert c.expect("MAIL FROM:<a@example.org>", 250).code == 250
        assert c.cmd("QUIT").code == 221
    g.wait_log("kept connection to backend .* closed: RSET was not "
               "answered 250", since=mark, timeout=10)
