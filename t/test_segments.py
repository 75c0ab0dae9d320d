"""What smtpgate puts on the wire around a reply: the segments it saves.

- The client's first command is acknowledged by its reply, not by a
  pure ACK of its own first (the listener is out of TCP quick-ACK mode,
  which accepted connections inherit).
- The last reply of a session and the close go in one segment: the 221
  and the FIN (with TLS, the 221, close_notify and the FIN), whether the
  smtp module, the relay or the spool answers QUIT.
- The QUIT smtpgate sends a plaintext backend and its FIN go in one
  segment (a TLS backend gets its QUIT alone: t/test_backend_tls.py).

Each count is the peer's own (TCP_INFO's tcpi_segs_in, read on the
client's or the backend's socket).  A delayed ACK of smtpgate's goes out
on its own after 40 ms (Linux's least delayed-ACK timeout) and would add
a segment that says nothing about what is tested, so only exchanges that
took less than 30 ms count, and each test needs at least one.
"""

import asyncio
import time

import pytest

from lib import gate as gatelib
from lib import net, pki as pkilib, smtp
from lib.messages import make_message
from lib.pki import implicit_session, tls_conf
from lib.users import password

FAST = 0.03
TRIES = 5


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def assert_one_segment(samples, what):
    """samples: (segments, seconds) pairs."""
    fast = [n for n, took in samples if took < FAST]
    assert fast, (f"no {what} took less than {FAST * 1000:.0f} ms: "
                  f"{samples}")
    assert all(n == 1 for n in fast), (
        f"{what}: segments received, (count, seconds): {samples}")


def test_the_first_command_is_acknowledged_by_its_reply(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    samples = []
    for _ in range(TRIES):
        with g.session() as c:
            before = net.tcp_info(c.sock)[1]
            started = time.monotonic()
            r = c.cmd("EHLO client.example.org")
            took = time.monotonic() - started
            assert r.code == 250, r
            samples.append((net.tcp_info(c.sock)[1] - before, took))
            assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
    assert_one_segment(samples, "EHLO and its reply")


def _quit(c, expect=b"221 2.0.0 Bye\r\n"):
    """QUIT, its 221 and the close: (segments, seconds)."""
    before = net.tcp_info(c.sock)[1]
    started = time.monotonic()
    assert c.cmd("QUIT").raw == expect
    n = net.segments_until_fin(c.sock, before)
    return n, time.monotonic() - started


def _login(c):
    c.ehlo()
    assert c.auth_plain("alice", password("alice")).code == 235


@pytest.mark.parametrize("where", ["before-auth", "relay", "spool"])
def test_the_221_and_the_close_in_one_segment(smtpgate, backend, where):
    if where == "spool":
        g = smtpgate(gatelib.conf(spool="spool"))
    else:
        g = smtpgate(gatelib.conf(backend=backend))
    samples = []
    for i in range(TRIES):
        with g.session() as c:
            if where == "before-auth":
                c.ehlo()
            else:
                _login(c)
                assert c.mail("a@example.org", ["b@example.org"],
                              make_message(2048, seed=i)).code == 250
            samples.append(_quit(c))
            c.expect_closed()
    assert_one_segment(samples, f"QUIT ({where}), its 221 and the FIN")


@pytest.mark.skipif(not pkilib.tls_built(), reason="built without TLS")
def test_the_221_close_notify_and_the_close_in_one_segment(smtpgate,
                                                          backend, pki):
    g = smtpgate(tls_conf(pki, backend))
    samples = []
    for i in range(TRIES):
        with implicit_session(g, pki) as c:
            _login(c)
            assert c.mail("a@example.org", ["b@example.org"],
                          make_message(2048, seed=i)).code == 250
            samples.append(_quit(c))
            c.expect_closed()           # close_notify: a clean TLS end
    assert_one_segment(samples, "QUIT over TLS, its 221, close_notify and "
                                "the FIN")


def test_quit_and_the_close_reach_the_backend_in_one_segment(smtpgate,
                                                             scripted):
    b = scripted("count_quit")
    g = smtpgate(gatelib.conf(backend=b))
    for i in range(TRIES):
        with g.session() as c:
            _login(c)
            assert c.mail("a@example.org", ["b@example.org"],
                          make_message(2048, seed=i)).code == 250
            assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
            c.expect_closed()
        net.wait_until(lambda: len(b.quit_segments) == i + 1, 10,
                       what="the backend's QUIT")
    # from the backend's 250 for the message to the FIN: QUIT (with the
    # ACK of that 250) and the FIN
    assert_one_segment(b.quit_segments, "QUIT to the backend and the FIN")


@pytest.mark.skipif(not pkilib.tls_built(), reason="built without TLS")
def test_an_asyncio_tls_client_reads_the_221(smtpgate, backend, pki):
    """The 221 and close_notify arrive in one read: a client on
    asyncio's TLS (as aiosmtplib is) gets the 221 before the end of the
    stream, not a lost connection."""
    g = smtpgate(tls_conf(pki, backend))

    async def session():
        r, w = await asyncio.open_connection(
            "127.0.0.1", g.ports["PORTS"], ssl=pki.client_context(),
            server_hostname="mx.test")
        lines = [await r.readline()]
        w.write(b"EHLO client.example.org\r\n")
        while not (line := await r.readline()).startswith(b"250 "):
            assert line.startswith(b"250-"), line
        w.write(b"QUIT\r\n")
        lines.append(await r.readline())
        lines.append(await r.read())
        w.close()
        return lines

    for _ in range(TRIES):
        greeting, bye, rest = asyncio.run(asyncio.wait_for(session(), 30))
        assert greeting.startswith(b"220 "), greeting
        assert bye == b"221 2.0.0 Bye\r\n"
        assert rest == b""


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_the_same_over_ipv6(smtpgate, scripted):
    """An IPv6 listener and an IPv6 backend: the EHLO acknowledged by
    its reply, the 221 with the FIN, QUIT with the FIN."""
    b = scripted("count_quit", host=net.IPV6)
    g = smtpgate(gatelib.conf(backend=b, listen=("[::1]:@PORT6@",)))
    ehlo, bye = [], []
    for i in range(TRIES):
        with smtp.RawSmtp(net.IPV6, g.ports["PORT6"]) as c:
            assert c.greeting().code == 220
            before = net.tcp_info(c.sock)[1]
            started = time.monotonic()
            assert c.cmd("EHLO client.example.org").code == 250
            ehlo.append((net.tcp_info(c.sock)[1] - before,
                         time.monotonic() - started))
            assert c.auth_plain("alice", password("alice")).code == 235
            assert c.mail("a@example.org", ["b@example.org"],
                          make_message(2048, seed=i)).code == 250
            bye.append(_quit(c))
            c.expect_closed()
        net.wait_until(lambda: len(b.quit_segments) == i + 1, 10,
                       what="the backend's QUIT")
    assert_one_segment(ehlo, "EHLO and its reply over IPv6")
    assert_one_segment(bye, "QUIT over IPv6, its 221 and the FIN")
    assert_one_segment(b.quit_segments, "QUIT to an IPv6 backend and the "
                                        "FIN")
