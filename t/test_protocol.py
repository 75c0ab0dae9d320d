"""The client side of smtpgate before relay: replies to each command,
pipelining, malformed input, limits and timeouts."""

import socket
import time

import pytest

from lib import gate as gatelib
from lib import smtp
from lib.smtp import plain_token
from lib.users import password


def test_greeting(gate):
    with gate.connect() as c:
        assert c.greeting().raw == b"220 mx.test ESMTP ready\r\n"


def test_greeting_uses_server_name_from_server_block(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend,
                              server="        server_name inner.test;"))
    with g.connect() as c:
        assert c.greeting().raw == b"220 inner.test ESMTP ready\r\n"
        assert c.ehlo().lines[0] == "inner.test"


def test_helo(gate):
    with gate.session() as c:
        assert c.cmd("HELO client.test").raw == b"250 mx.test\r\n"


def test_ehlo_multiline_format(gate):
    with gate.session() as c:
        r = c.ehlo("client.test")
        raw_lines = r.raw.split(b"\r\n")[:-1]
        assert raw_lines[0] == b"250-mx.test"
        assert all(l.startswith(b"250-") for l in raw_lines[:-1])
        assert raw_lines[-1].startswith(b"250 ")


@pytest.mark.parametrize("cmd", ["NOOP", "RSET", "noop", "NOOP ignored"])
def test_noop_rset(gate, cmd):
    with gate.session() as c:
        assert c.cmd(cmd).raw == b"250 2.0.0 OK\r\n"


def test_help(gate):
    with gate.session() as c:
        r = c.cmd("HELP")
        assert r.code == 214 and r.last.startswith("2.0.0"), r


def test_quit(gate):
    with gate.session() as c:
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()


@pytest.mark.parametrize("cmd", ["XYZZY", "FOO bar", "MAILFROM:<a@b>"])
def test_unknown_command(gate, cmd):
    with gate.session() as c:
        assert c.cmd(cmd).raw == b"500 5.5.1 Command unrecognized\r\n"
        assert c.expect("NOOP", 250)


@pytest.mark.parametrize("cmd", ["VRFY alice", "EXPN list", "ETRN example.org",
                                 "TURN", "STARTTLS"])
def test_not_implemented(gate, cmd):
    with gate.session() as c:
        c.ehlo()
        assert c.cmd(cmd).raw == b"502 5.5.2 Command not implemented\r\n"
        assert c.expect("NOOP", 250)


def test_ehlo_does_not_offer_starttls_without_tls(gate):
    with gate.session() as c:
        assert "STARTTLS" not in smtp.ehlo_keywords(c.ehlo())


@pytest.mark.parametrize("cmd", ["MAIL FROM:<a@example.org>",
                                 "RCPT TO:<b@example.org>", "DATA",
                                 "BDAT 10 LAST"])
def test_transaction_before_auth(gate, backend, cmd):
    with gate.session() as c:
        c.ehlo()
        assert c.cmd(cmd).raw == b"530 5.7.0 Authentication required\r\n"
        if not cmd.startswith("BDAT"):
            # (after BDAT a server may wait for the announced chunk)
            assert c.expect("NOOP", 250)
    assert backend.commands == []


# -- pipelining -------------------------------------------------------------


def test_ehlo_and_auth_in_one_packet(gate, backend):
    with gate.session() as c:
        c.send(b"EHLO client.test\r\nAUTH PLAIN "
               + plain_token("alice", password("alice")).encode() + b"\r\n")
        r1, r2 = c.replies(2)
        assert r1.code == 250 and r1.lines[0] == "mx.test", r1
        assert r2.raw == b"235 2.7.0 Authentication successful\r\n"
        msg = b"Subject: pipelined\r\n\r\nbody\r\n"
        assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
    (m,) = backend.wait_messages(1)
    assert m.content == msg


def test_auth_and_mail_in_one_packet(gate, backend):
    with gate.session() as c:
        c.ehlo()
        c.send(b"AUTH PLAIN "
               + plain_token("alice", password("alice")).encode()
               + b"\r\nMAIL FROM:<piped@example.org>\r\n")
        r1, r2 = c.replies(2)
        assert r1.raw == b"235 2.7.0 Authentication successful\r\n"
        assert (r2.code, r2.last) == (250, "2.1.0 Sender OK")
        assert c.expect("RCPT TO:<b@example.org>", 250)
        assert c.expect("DATA", 354)
        c.send(b"Subject: p\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    (m,) = backend.wait_messages(1)
    assert m.mail_from == "piped@example.org"


def test_whole_transaction_pipelined_after_auth(gate, backend):
    """Everything up to DATA in the AUTH packet (RFC 2920 style)."""
    with gate.session() as c:
        c.ehlo()
        c.send(b"AUTH PLAIN "
               + plain_token("bob", password("bob")).encode() + b"\r\n"
               b"MAIL FROM:<a@example.org>\r\n"
               b"RCPT TO:<r1@example.org>\r\n"
               b"RCPT TO:<r2@example.org>\r\n"
               b"DATA\r\n")
        codes = [r.code for r in c.replies(5)]
        assert codes == [235, 250, 250, 250, 354]
        c.send(b"Subject: all\r\n\r\nx\r\n.\r\nQUIT\r\n")
        assert [r.code for r in c.replies(2)] == [250, 221]
    (m,) = backend.wait_messages(1)
    assert m.rcpt_tos == ["r1@example.org", "r2@example.org"]


def test_commands_pipelined_before_auth(gate):
    with gate.session() as c:
        c.send(b"EHLO a.test\r\nNOOP\r\nRSET\r\nXYZZY\r\nNOOP\r\n")
        codes = [r.code for r in c.replies(5)]
        assert codes == [250, 250, 250, 500, 250]


def test_command_split_across_packets(gate):
    with gate.session() as c:
        for piece in (b"NO", b"O", b"P\r", b"\n"):
            c.send(piece)
            time.sleep(0.05)
        assert c.reply().raw == b"250 2.0.0 OK\r\n"


# -- malformed input --------------------------------------------------------


@pytest.mark.parametrize("length", [2000, 100 * 1024], ids=["2k", "100k"])
def test_line_too_long(gate, length):
    with gate.session() as c:
        c.send(b"NOOP " + b"a" * length + b"\r\n")
        assert c.reply().raw == b"500 5.5.6 Line too long\r\n"
        assert c.cmd("NOOP").raw == b"250 2.0.0 OK\r\n"


def test_line_of_512_octets_is_accepted(gate):
    with gate.session() as c:
        line = b"NOOP " + b"a" * (512 - 5 - 2)
        assert len(line + b"\r\n") == 512
        assert c.cmd(line).raw == b"250 2.0.0 OK\r\n"


def test_line_too_long_in_auth_exchange(gate):
    with gate.session() as c:
        c.ehlo()
        assert c.cmd("AUTH PLAIN").code == 334
        c.send(b"A" * 100000 + b"\r\n")
        r = c.reply()
        assert r.code in (500, 501), r
        assert r.last.startswith("5.5."), r
        # The session is in step again: the next line is a command.
        assert c.cmd("NOOP").code == 250


def _session_goes_on_or_ends_cleanly(c):
    """After a rejected line: either NOOP works, or the server says 421
    and closes."""
    try:
        r = c.cmd("NOOP")
    except smtp.ServerClosed:
        raise AssertionError("connection dropped without a 421")
    if r.code == 421:
        c.expect_closed()
    else:
        assert r.raw == b"250 2.0.0 OK\r\n", r


@pytest.mark.parametrize("line", [b"NO\x00OP\r\n", b"\x00\r\n",
                                  b"EHLO a\x00b.test\r\n"],
                         ids=["inside", "alone", "in-argument"])
def test_nul_byte(gate, line):
    with gate.session() as c:
        c.send(line)
        r = c.reply()
        assert r.code == 500 and r.last.startswith("5.5."), r
        _session_goes_on_or_ends_cleanly(c)


def test_bare_lf(gate):
    with gate.session() as c:
        c.send(b"NOOP\n")
        r = c.reply()
        assert r.code == 500 and r.last.startswith("5.5."), r
        _session_goes_on_or_ends_cleanly(c)


def test_bare_cr(gate):
    with gate.session() as c:
        c.send(b"NO\rOP\r\n")
        r = c.reply()
        assert r.code == 500 and r.last.startswith("5.5."), r
        _session_goes_on_or_ends_cleanly(c)


def test_binary_garbage_does_not_reach_backend(gate, backend):
    with gate.session() as c:
        c.send(bytes(range(1, 256)).replace(b"\n", b"") + b"\r\n")
        r = c.reply()
        assert r.code >= 500, r
    assert backend.commands == []


def test_client_closes_mid_line(gate):
    with gate.session() as c:
        c.send(b"EHLO half-a-comm")
    # The next session is served normally.
    with gate.session() as c:
        assert c.expect("NOOP", 250)


# -- limits -----------------------------------------------------------------


def test_max_errors(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="    max_errors 3;"))
    with g.session() as c:
        c.send(b"XYZZY\r\n")
        assert c.reply().raw == b"500 5.5.1 Command unrecognized\r\n"
        c.send(b"XYZZY\r\n")
        assert c.reply().raw == b"500 5.5.1 Command unrecognized\r\n"
        c.send(b"XYZZY\r\n")
        rest = c.read_until_closed()
        assert [r.raw for r in rest] == [
            b"500 5.5.1 Command unrecognized\r\n",
            b"421 4.7.0 Too many errors, closing connection\r\n"]


def test_max_errors_counts_failed_auth(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="    max_errors 2;"))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "wrong-1").code == 535
        c.send(b"AUTH PLAIN " + plain_token("alice", "wrong-2").encode()
               + b"\r\n")
        rest = c.read_until_closed()
        assert [r.code for r in rest] == [535, 421], rest
    assert backend.commands == []


def test_max_errors_pipelined(smtpgate, backend):
    """Errors arriving in one packet: the replies stop at the 421."""
    g = smtpgate(gatelib.conf(backend=backend, mail="    max_errors 3;"))
    with g.session() as c:
        c.send(b"XYZZY\r\n" * 10)
        rest = c.read_until_closed()
        assert [r.code for r in rest] == [500, 500, 500, 421], rest


@pytest.mark.time_limit(90)
def test_idle_timeout(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, timeout="2s"))
    with g.session(timeout=60) as c:
        c.ehlo()
        rest = c.read_until_closed()
        assert [r.raw for r in rest] == [
            b"421 4.4.2 mx.test Error: timeout exceeded\r\n"]


@pytest.mark.time_limit(90)
def test_idle_timeout_in_auth_exchange(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, timeout="2s"))
    with g.session(timeout=60) as c:
        c.ehlo()
        assert c.cmd("AUTH LOGIN").code == 334
        rest = c.read_until_closed()
        assert [r.code for r in rest] == [421], rest
    assert backend.commands == []


def test_many_concurrent_sessions(gate, backend):
    sessions = [gate.session() for _ in range(50)]
    try:
        for i, c in enumerate(sessions):
            c.ehlo(f"c{i}.test")
            c.send(b"AUTH PLAIN "
                   + plain_token("dave", password("dave")).encode() + b"\r\n")
        for c in sessions:
            assert c.reply().code == 235
        for i, c in enumerate(sessions):
            assert c.mail("a@example.org", [f"r{i}@example.org"],
                          b"Subject: %d\r\n\r\nx\r\n" % i).code == 250
    finally:
        for c in sessions:
            c.close()
    assert len(backend.wait_messages(50)) == 50


def test_empty_command_line(gate):
    with gate.session() as c:
        r = c.cmd(b"")
        assert r.code == 500 and r.last.startswith("5.5."), r
        assert c.expect("NOOP", 250)


def test_max_errors_counts_every_kind_of_error(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="    max_errors 3;"))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").code == 530
        assert c.cmd("VRFY alice").code == 502
        c.send(b"XYZZY\r\n")
        assert [r.code for r in c.read_until_closed()] == [500, 421]


@pytest.mark.time_limit(90)
def test_server_level_timeout_overrides_mail_level(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, timeout="60s",
                              server="        timeout 2s;"))
    with g.session(timeout=50) as c:
        rest = c.read_until_closed()
        assert [r.code for r in rest] == [421], rest


@pytest.mark.time_limit(90)
def test_client_timeout_does_not_apply_while_relaying(smtpgate, backend):
    """After 235 the relay is governed by proxy_timeout, not timeout."""
    g = smtpgate(gatelib.conf(backend=backend, timeout="2s",
                              proxy_timeout="60s"))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        time.sleep(5)       # longer than `timeout`, on purpose
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: slow\r\n\r\nx\r\n").code == 250
    backend.wait_messages(1)


@pytest.mark.time_limit(90)
def test_proxy_timeout_closes_idle_relay(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, proxy_timeout="2s"))
    with g.session(timeout=60) as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        rest = c.read_until_closed()
        assert all(400 <= r.code < 500 for r in rest), rest


def test_client_disconnects_mid_data(gate, backend):
    c = gate.session()
    c.ehlo()
    assert c.auth_plain("alice", password("alice")).code == 235
    assert c.expect("MAIL FROM:<a@example.org>", 250)
    assert c.expect("RCPT TO:<b@example.org>", 250)
    assert c.expect("DATA", 354)
    c.send(b"Subject: cut\r\n\r\n" + b"x" * 10000)
    c.close()
    # Nothing was delivered, and the gate serves the next client.
    with gate.session() as c2:
        c2.ehlo()
        assert c2.auth_plain("bob", password("bob")).code == 235
        assert c2.mail("a@example.org", ["b@example.org"],
                       b"Subject: next\r\n\r\nx\r\n").code == 250
    (m,) = backend.wait_messages(1)
    assert b"Subject: next" in m.content


def test_quit_right_after_auth_is_answered_here_and_passed_on(gate,
                                                               backend):
    """QUIT in the relay is answered by smtpgate (t/test_relay.py has the
    cases); the backend still hears it."""
    with gate.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    backend.wait_command("QUIT")


@pytest.mark.time_limit(180)
def test_heavy_pipelining_with_backpressure(smtpgate, backend):
    """5,000 NOOPs written without reading: smtpgate must stop reading
    while its replies back up, and answer every one, in order."""
    import threading
    g = smtpgate(gatelib.conf(backend=backend, timeout="20s"))
    n = 5000
    with g.session(timeout=120) as c:
        errors = []

        def writer():
            try:
                c.send(b"NOOP\r\n" * n)
            except OSError as e:
                errors.append(e)
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        for i in range(n):
            r = c.reply()
            assert r.raw == b"250 2.0.0 OK\r\n", (i, r)
        t.join(60)
        assert not errors, errors
        assert c.cmd("QUIT").code == 221


@pytest.mark.time_limit(240)
def test_commands_arriving_while_replies_back_up(smtpgate, backend):
    """A client that pipelines without reading until smtpgate's replies
    back up, then sends more commands a packet at a time: they wait
    until the replies drain, then every one is answered, in order."""
    g = smtpgate(gatelib.conf(backend=backend))
    with g.session(timeout=60, rcvbuf=4096) as c:
        n = smtp.back_up_replies(c)
        # One segment per command, each a read event for smtpgate.
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(100):
            c.send(b"HELP\r\n")
            time.sleep(0.01)
        c.send(b"QUIT\r\n")
        replies = c.read_until_closed()
    codes = [r.code for r in replies]
    assert codes == [214] * (n + 100) + [221], \
        (len(codes), codes[-5:], [i for i, r in enumerate(codes)
                                  if r not in (214, 221)][:5])


def test_commands_pipelined_after_auth_are_replayed(gate, backend):
    """Everything that arrived behind the AUTH line reaches the backend,
    in order, however much it is."""
    n = 200
    with gate.session() as c:
        c.ehlo()
        c.send(b"AUTH PLAIN "
               + plain_token("alice", password("alice")).encode() + b"\r\n"
               + b"NOOP\r\n" * n
               + b"MAIL FROM:<after-noops@example.org>\r\n")
        rs = c.replies(n + 2)
        assert rs[0].code == 235
        # aiosmtpd's "250 OK", not smtpgate's "250 2.0.0 OK"
        assert all(r.raw == b"250 OK\r\n" for r in rs[1:-1]), rs[1:-1]
        assert rs[-1].last == "2.1.0 Sender OK"
    assert backend.seen("MAIL") == ["after-noops@example.org"]


def test_connection_flood(gate):
    """Clients that connect and vanish leave the gate serving."""
    from lib import net
    for _ in range(200):
        s = net.connect("127.0.0.1", gate.port, timeout=10)
        s.close()
    with gate.session() as c:
        assert c.expect("NOOP", 250)
