"""The socket options of nginx's mail "listen": rcvbuf=, sndbuf=,
so_keepalive=, ipv6only= and bind.

What they change is seen on smtpgate's side of an accepted connection,
read with iproute2's `ss` (the kernel's own view of the socket): the
keepalive timer and the buffer sizes.  ipv6only=off is seen by an IPv4
client connecting to a "[::]" address, and by what smtpgate then says
about that client.
"""

import re
import subprocess

import pytest

from lib import gate as gatelib
from lib import net
from lib.users import password

MSG = b"Subject: dual\r\n\r\nhello\r\n"


def server_side(port):
    """ss's line for smtpgate's end of the one established connection
    to port (its local port is port)."""
    def line():
        out = subprocess.run(
            ["ss", "-tnoemH", "state", "established",
             f"( sport = :{port} )"], capture_output=True, text=True,
            check=True).stdout
        return " ".join(out.split()) if out.strip() else None
    found = []
    net.wait_until(lambda: found.append(line()) or found[-1], 10,
                   what=f"an established connection on port {port}")
    return found[-1]


def test_so_keepalive_with_times(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend, listen=("127.0.0.1:@PORT@ so_keepalive=30m:10s:4",)))
    with g.session() as c:
        text = server_side(g.port)
        m = re.search(r"timer:\(keepalive,(\d+)min(\d+)?", text)
        assert m, text
        assert 28 <= int(m.group(1)) <= 30, text
        assert c.cmd("NOOP").code == 250


def test_so_keepalive_on_and_off(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend, listen=("127.0.0.1:@PORT@ so_keepalive=on",
                                 "127.0.0.1:@PORT2@ so_keepalive=off")))
    with g.session() as c:
        assert "timer:(keepalive" in server_side(g.port)
        c.cmd("QUIT")
    port2 = g.listen_addresses()[1][1]
    with g.connect(port=port2) as c:
        assert c.greeting().code == 220
        assert "timer:(keepalive" not in server_side(port2)


def test_rcvbuf_and_sndbuf(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend, listen=("127.0.0.1:@PORT@ rcvbuf=48k sndbuf=40k",)))
    with g.session():
        text = server_side(g.port)
    # the kernel doubles what setsockopt() asks for
    assert f"rb{2 * 48 * 1024}," in text, text
    assert f"tb{2 * 40 * 1024}," in text, text


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6only_off_takes_ipv4_clients_as_ipv4(smtpgate, xclient_backend):
    """A dual-stack "[::]" socket: an IPv4 client is served, and is an
    IPv4 client everywhere: in the log, in XCLIENT ADDR (no IPV6:
    prefix, no ::ffff:)."""
    port = net.free_port(net.IPV6)
    g = smtpgate(gatelib.conf(
        backend=xclient_backend, mail="    xclient on;",
        listen=(f"[::]:{port} ipv6only=off",)))
    for host in ("127.0.0.1", "::1"):
        mark = g.log_mark()
        with g.connect(host=host, port=port) as c:
            assert c.greeting().code == 220
            c.ehlo("dual.example")
            assert c.auth_plain("alice", password("alice")).code == 235
            assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
            c.cmd("QUIT")
        g.wait_log(r"client connected, client: %s, server: \[::\]:%d"
                   % (re.escape(host), port), since=mark)
    xclient_backend.wait_messages(2)
    addrs = [w for s in xclient_backend.sessions for v, a in s.commands
             if v == "XCLIENT" for w in a.split() if w.startswith("ADDR=")]
    assert addrs == ["ADDR=127.0.0.1", "ADDR=IPV6:::1"], addrs
    assert "::ffff:" not in g.error_log()


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6only_on_is_the_default(smtpgate, backend):
    port = net.free_port(net.IPV6)
    g = smtpgate(gatelib.conf(backend=backend,
                              listen=(f"[::]:{port}", f"[::1]:@PORT@ bind",
                                      f"127.0.0.1:{port}")))
    for host in ("127.0.0.1", "::1"):
        with g.connect(host=host, port=port) as c:
            assert c.greeting().code == 220


@pytest.mark.parametrize("listen,message", [
    ("127.0.0.1:@PORT@ ipv6only=off", "ipv6only= is for IPv6 addresses"),
    ("[::1]:@PORT@ ipv6only=maybe", 'invalid parameter "ipv6only=maybe"'),
    ("127.0.0.1:@PORT@ so_keepalive=yes", "so_keepalive= takes"),
    ("127.0.0.1:@PORT@ so_keepalive=1s:1s", "so_keepalive= takes"),
    ("127.0.0.1:@PORT@ so_keepalive=::", "so_keepalive= takes"),
    ("127.0.0.1:@PORT@ so_keepalive=0:1:1", "so_keepalive= takes"),
    ("127.0.0.1:@PORT@ so_keepalive=1:1:128", "so_keepalive= takes"),
    ("127.0.0.1:@PORT@ so_keepalive=1500ms::", "so_keepalive= takes"),
    ("127.0.0.1:@PORT@ rcvbuf=0", "a size of 1 to 1g"),
    ("127.0.0.1:@PORT@ sndbuf=2g", "a size of 1 to 1g"),
    ("127.0.0.1:@PORT@ rcvbuf=", 'invalid parameter "rcvbuf="'),
])
def test_bad_options(smtpgate, backend, listen, message):
    g = smtpgate(gatelib.conf(backend=backend, listen=(listen,)),
                 start=False)
    r = g.ctl("-t")
    assert r.returncode != 0, r.stderr
    assert message in r.stderr, r.stderr
    assert f"{g.conf_path}:" in r.stderr, r.stderr


def test_dual_stack_beside_ipv4_on_the_same_port(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend,
                              listen=("[::]:@PORT@ ipv6only=off",),
                              servers=("        listen 127.0.0.1:@PORT@;\n"
                                       "        protocol smtp;",)),
                 start=False)
    r = g.ctl("-t")
    assert r.returncode != 0, r.stderr
    assert "ipv6only=off, which takes IPv4 connections to that port too" \
        in r.stderr, r.stderr


def test_conflicting_ipv6only_for_one_address(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend,
                              listen=("[::1]:@PORT@ ipv6only=on",),
                              servers=("        listen [::1]:@PORT@ "
                                       "ipv6only=off;\n"
                                       "        protocol smtp;",)),
                 start=False)
    r = g.ctl("-t")
    assert r.returncode != 0, r.stderr
    assert "listed both with ipv6only=on and ipv6only=off" in r.stderr
