"""PROXY protocol on "listen ... proxy_protocol" with set_real_ip_from.

A raw socket plays the load balancer: it sends a v1 or v2 header, then
talks SMTP (or TLS) as the client would.  Checked: a header from a
trusted address makes its source the client everywhere a user sees it
(the log, XCLIENT ADDR at the backend, auth_http's Client-IP, the
auth_fail_limit key) and auth_http gets nginx's Proxy-Protocol-*
headers; an untrusted proxy's header is read and ignored with a
warning; LOCAL and UNKNOWN keep the connection's address; bytes sent
right after the header (SMTP commands, a TLS ClientHello) belong to the
session; a malformed, over-long, truncated or late header closes the
connection without a single byte of SMTP and a log line naming the
cause; configuration errors point at their line.
"""

import ipaddress
import json
import os
import re
import socket
import ssl
import struct
import time

import pytest

from lib import gate as gatelib
from lib import net
from lib import pki as pkilib
from lib.authsvc import AuthService, Nginx, ok_to
from lib.smtp import RawSmtp, ServerClosed, plain_token
from lib.users import password

PP_LISTEN = "127.0.0.1:@PORT@ proxy_protocol"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
MSG = b"Subject: via a load balancer\r\n\r\nhello\r\n"


def v1(src, dst, sport, dport):
    proto = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src, dst, sport, dport, tlvs=b"", command=0x21):
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIG + bytes([command, fam]) + struct.pack("!H", len(body)) \
        + body


V2_LOCAL = V2_SIG + b"\x20\x00\x00\x00"


def pp_conf(backend=None, *, trusted=("127.0.0.1",), mail="",
            listen=(PP_LISTEN,), **kw):
    lines = [f"    set_real_ip_from {t};" for t in trusted]
    if mail:
        lines.append(mail)
    return gatelib.conf(backend=backend, listen=listen,
                        mail="\n".join(lines), **kw)


def connect(g, header, port=None, timeout=30.0):
    c = RawSmtp("127.0.0.1", port or g.port, timeout)
    c.send(header)
    return c


def relay_one(c):
    """EHLO, AUTH, one message; the greeting already read."""
    c.ehlo("client.test")
    assert c.auth_plain("alice", password("alice")).code == 235
    assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    assert c.cmd("QUIT").code == 221


def session_lines(g, pattern, since=0):
    return [l for l in g.log_since(since).splitlines() if re.search(pattern, l)]


def session_of(line):
    m = re.search(r" \*(\d+) ", line)
    assert m, f"no session id in {line!r}"
    return m.group(1)


# -- the client's address ---------------------------------------------------


TRUSTED_CASES = [
    pytest.param(v1("203.0.113.7", "192.0.2.1", 4242, 25),
                 "ADDR=203.0.113.7", "203.0.113.7:4242", "192.0.2.1:25",
                 "203.0.113.7", id="v1-tcp4"),
    pytest.param(v1("2001:db8::7", "2001:db8::1", 4243, 587),
                 "ADDR=IPV6:2001:db8::7", "[2001:db8::7]:4243",
                 "[2001:db8::1]:587", "2001:db8::7", id="v1-tcp6"),
    pytest.param(v2("198.51.100.9", "192.0.2.2", 50000, 465),
                 "ADDR=198.51.100.9", "198.51.100.9:50000", "192.0.2.2:465",
                 "198.51.100.9", id="v2-inet"),
    pytest.param(v2("2001:db8:1::9", "2001:db8:2::1", 1, 2,
                    tlvs=b"\x01\x00\x04smtp\x04\x00\x00"),
                 "ADDR=IPV6:2001:db8:1::9", "[2001:db8:1::9]:1",
                 "[2001:db8:2::1]:2", "2001:db8:1::9", id="v2-inet6-tlvs"),
]


@pytest.mark.parametrize("header,xclient,client,server,addr", TRUSTED_CASES)
def test_trusted_header_is_the_client(smtpgate, xclient_backend, header,
                                      xclient, client, server, addr):
    """From a trusted 127.0.0.1 the header's source is the client: the
    backend's XCLIENT and every log line of the session say so, and the
    proxy's own address is logged once."""
    b = xclient_backend
    g = smtpgate(pp_conf(b))
    mark = g.quiet_log_mark()
    with connect(g, header) as c:
        assert c.greeting().code == 220
        relay_one(c)
    (m,) = b.wait_messages(1)
    assert xclient in m.xclient.split(), m.xclient
    line = g.wait_log(rf"PROXY protocol from 127\.0\.0\.1: client "
                      rf"{re.escape(client)}, server {re.escape(server)}",
                      since=mark).group(0)
    g.wait_log(r"session closed", since=mark)
    sid = session_of([l for l in g.log_since(mark).splitlines()
                      if "PROXY protocol from" in l][0])
    lines = [l for l in g.log_since(mark).splitlines() if f" *{sid} " in l]
    after = lines[[i for i, l in enumerate(lines) if line in l][0]:]
    assert all(f"client: {addr}," in l for l in after), "\n".join(after)
    assert sum("PROXY protocol" in l for l in lines) == 1, "\n".join(lines)
    assert "[info]" in [l for l in lines if "PROXY protocol" in l][0]


@pytest.mark.parametrize("trusted", [("10.0.0.0/8", "::1"), ()],
                         ids=["other-networks", "no-set_real_ip_from"])
def test_untrusted_header_is_ignored(smtpgate, xclient_backend, trusted):
    """A proxy outside set_real_ip_from (or with none at all) is read
    and ignored: the connection's own address stays, with one warning."""
    b = xclient_backend
    g = smtpgate(pp_conf(b, trusted=trusted))
    mark = g.quiet_log_mark()
    with connect(g, v1("203.0.113.7", "192.0.2.1", 4242, 25)) as c:
        assert c.greeting().code == 220
        relay_one(c)
    (m,) = b.wait_messages(1)
    assert "ADDR=127.0.0.1" in m.xclient.split(), m.xclient
    g.wait_log(r"session closed", since=mark)
    warn = session_lines(g, r"PROXY protocol", since=mark)
    assert len(warn) == 1, warn
    assert "[warn]" in warn[0], warn
    assert ('PROXY protocol from 127.0.0.1 ignored, the address is not in '
            '"set_real_ip_from" (header: client 203.0.113.7:4242, server '
            '192.0.2.1:25), client: 127.0.0.1,') in warn[0], warn
    assert "203.0.113.7," not in g.log_since(mark).replace(
        "client 203.0.113.7:4242", "")


def test_trusted_network_and_ipv6_proxy(smtpgate, xclient_backend):
    """A CIDR network trusts every proxy in it; an IPv6 proxy is matched
    against IPv6 networks."""
    if not net.ipv6_available():
        pytest.skip("no IPv6 loopback")
    b = xclient_backend
    g = smtpgate(pp_conf(b, trusted=("127.0.0.0/8", "::1/128"),
                         listen=(PP_LISTEN, "[::1]:@PORT6@ proxy_protocol")))
    for host, port, src in (("127.0.0.1", g.port, "203.0.113.1"),
                            ("::1", g.ports["PORT6"], "203.0.113.2")):
        c = RawSmtp(host, port, 30)
        with c:
            c.send(v1(src, "192.0.2.1", 1000, 25))
            assert c.greeting().code == 220
            relay_one(c)
    msgs = b.wait_messages(2)
    assert sorted(m.xclient.split()[0] for m in msgs) == \
        ["ADDR=203.0.113.1", "ADDR=203.0.113.2"]
    g.wait_log(r"PROXY protocol from ::1: client 203\.0\.113\.2:1000")


@pytest.mark.parametrize("header,kind", [
    (b"PROXY UNKNOWN\r\n", "UNKNOWN"),
    (b"PROXY UNKNOWN 2001:db8::1 2001:db8::2 1 2\r\n", "UNKNOWN"),
    (V2_LOCAL, "LOCAL"),
    (V2_SIG + b"\x20\x00\x00\x07" + b"\x03\x00\x04abcd", "LOCAL"),
    # the family is ignored with LOCAL, its addresses too (specification
    # 2.2, and nginx): here TCP/IPv4 with an empty block
    (V2_SIG + b"\x20\x11\x00\x00", "LOCAL"),
], ids=["v1-unknown", "v1-unknown-args", "v2-local", "v2-local-tlv",
        "v2-local-inet-empty"])
def test_local_and_unknown_keep_the_address(smtpgate, xclient_backend,
                                            header, kind):
    b = xclient_backend
    g = smtpgate(pp_conf(b))
    mark = g.quiet_log_mark()
    with connect(g, header) as c:
        assert c.greeting().code == 220
        relay_one(c)
    (m,) = b.wait_messages(1)
    assert "ADDR=127.0.0.1" in m.xclient.split(), m.xclient
    g.wait_log(rf"\[info\] .*PROXY protocol from 127\.0\.0\.1: {kind}, "
               rf"client address kept", since=mark)


def test_header_in_pieces(smtpgate, backend):
    """A header that arrives a few bytes at a time is waited for."""
    g = smtpgate(pp_conf(backend))
    mark = g.quiet_log_mark()
    header = v2("203.0.113.50", "192.0.2.1", 7, 25)
    c = RawSmtp("127.0.0.1", g.port, 30)
    with c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(header), 5):
            c.send(header[i:i + 5])
            time.sleep(0.05)
        assert c.greeting().code == 220
        relay_one(c)
    g.wait_log(r"PROXY protocol from 127\.0\.0\.1: client 203\.0\.113\.50:7",
               since=mark)

    mark = g.quiet_log_mark()
    c = RawSmtp("127.0.0.1", g.port, 30)
    with c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (b"PRO", b"XY TCP4 203.0.113.6", b"1 192.0.2.1 8 2",
                      b"5\r", b"\n"):
            c.send(piece)
            time.sleep(0.05)
        assert c.greeting().code == 220
    g.wait_log(r"PROXY protocol from 127\.0\.0\.1: client 203\.0\.113\.61:8",
               since=mark)


# -- bytes right after the header -------------------------------------------


def test_commands_pipelined_after_the_header(smtpgate, xclient_backend):
    """Commands in the same segment as the header are the session's: as
    for any client that talks before the greeting, they are answered
    after it."""
    b = xclient_backend
    g = smtpgate(pp_conf(b))
    header = v1("203.0.113.7", "192.0.2.1", 4242, 25)
    with connect(g, header + b"EHLO client.test\r\nNOOP\r\n") as c:
        assert c.greeting().code == 220
        r = c.reply()
        assert r.code == 250 and r.lines[0] == "mx.test", r
        assert c.reply().code == 250
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    (m,) = b.wait_messages(1)
    assert "ADDR=203.0.113.7" in m.xclient.split()
    assert "HELO=client.test" in m.xclient.split()


def test_early_talker_after_the_header(smtpgate, backend):
    """With smtp_greeting_delay, a command right after the header is
    talking before the greeting, as it would be without the header."""
    g = smtpgate(pp_conf(backend, mail="    smtp_greeting_delay 2s;"))
    mark = g.quiet_log_mark()
    header = v1("203.0.113.7", "192.0.2.1", 4242, 25)
    with connect(g, header + b"EHLO spam.test\r\n") as c:
        r = c.reply()
        assert r.raw == (b"503 5.5.0 Talking before the greeting is not "
                         b"allowed\r\n"), r
        c.expect_closed()
    g.wait_log(r"client talked before the greeting \(smtp_greeting_delay\), "
               r"closing, client: 203\.0\.113\.7,", since=mark)

    # A patient client behind the same proxy is greeted after the delay.
    with connect(g, header) as c:
        t0 = time.monotonic()
        assert c.greeting().code == 220
        assert time.monotonic() - t0 >= 1.5


@pytest.fixture(scope="module")
def pki():
    return pkilib.shared()


def _tls_after_header(port, header, ctx, sni="mx.test", timeout=30.0):
    """Connect, send the header and the TLS ClientHello in one write,
    finish the handshake through memory BIOs, and return a small object
    that reads and writes over it."""
    sock = net.connect("127.0.0.1", port, timeout)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(header + out.read())
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            if data:
                sock.sendall(data)
            chunk = sock.recv(65536)
            if not chunk:
                raise ServerClosed("closed during the TLS handshake")
            inc.write(chunk)
    data = out.read()
    if data:
        sock.sendall(data)
    return _BioSmtp(sock, obj, inc, out)


class _BioSmtp(RawSmtp):
    """RawSmtp over an SSLObject."""

    def __init__(self, sock, obj, inc, out):
        self.sock, self.obj, self.inc, self.out = sock, obj, inc, out
        self.buf = b""
        self.closed_by_peer = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.obj.write(data)
        self.sock.sendall(self.out.read())

    def _fill(self):
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    self.closed_by_peer = True
                    raise ServerClosed("connection closed by server")
                self.inc.write(data)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                chunk = b""
            if not chunk:
                self.closed_by_peer = True
                raise ServerClosed("connection closed by server (TLS EOF)")
            self.buf += chunk
            return


def test_implicit_tls_after_the_header(smtpgate, xclient_backend, pki):
    """On "listen ... ssl proxy_protocol" the header comes first, then
    the TLS handshake: a ClientHello in the same segment as the header
    reaches TLS whole, and the session is the header's client."""
    b = xclient_backend
    server = pkilib.indent(pkilib.cert_directives(pki, "mx.test"))
    g = smtpgate(pp_conf(b, listen=("127.0.0.1:@PORT@ ssl proxy_protocol",),
                         server=server))
    mark = g.quiet_log_mark()
    for header in (v1("203.0.113.7", "192.0.2.1", 4242, 465),
                   v2("2001:db8::7", "2001:db8::1", 4243, 465)):
        c = _tls_after_header(g.port, header, pki.client_context())
        assert c.greeting().code == 220
        relay_one(c)
        c.close()
    msgs = b.wait_messages(2)
    assert [m.xclient.split()[0] for m in msgs] == \
        ["ADDR=203.0.113.7", "ADDR=IPV6:2001:db8::7"]
    g.wait_log(r"TLS established: .*, client: 2001:db8::7,", since=mark)

    # A plain TLS client that sends no header is not served.
    mark = g.quiet_log_mark()
    sock = net.connect("127.0.0.1", g.port, 30)
    with pytest.raises((ssl.SSLError, OSError)):
        with pki.client_context().wrap_socket(sock,
                                              server_hostname="mx.test") as t:
            t.recv(1)
    sock.close()
    g.wait_log(r"invalid PROXY protocol header: not a PROXY header, "
               r"closing", since=mark)


def test_starttls_listener_with_header(smtpgate, backend, pki):
    """STARTTLS works after a header; the handshake happens later, so
    nothing of the header is left in front of it."""
    server = pkilib.indent("starttls on;\n"
                           + pkilib.cert_directives(pki, "mx.test"))
    g = smtpgate(pp_conf(backend, server=server))
    c = pkilib.TlsSmtp("127.0.0.1", g.port, 30)
    with c:
        c.send(v1("203.0.113.7", "192.0.2.1", 4242, 587))
        assert c.greeting().code == 220
        c.ehlo()
        c.starttls(pki.client_context(), "mx.test")
        relay_one(c)
    g.wait_log(r"TLS established: .*, client: 203\.0\.113\.7,")


# -- headers that are refused -----------------------------------------------


def refused_bytes(g, data, *, shut=False, wait=30.0):
    """Send data (half-closing afterwards when shut), and return what the
    server sent before it closed (it must close within `wait`)."""
    s = net.connect("127.0.0.1", g.port, wait)
    got = b""
    try:
        try:
            if data:
                s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # refused before all of it went
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    return got


BAD = [
    pytest.param(b"EHLO client.test\r\n", False,
                 "invalid PROXY protocol header: not a PROXY header",
                 id="smtp-instead"),
    pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", False,
                 "invalid PROXY protocol header: not a PROXY header",
                 id="tls-instead"),
    pytest.param(b"GET / HTTP/1.0\r\n\r\n", False,
                 "invalid PROXY protocol header: not a PROXY header",
                 id="http"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", False,
                 "invalid PROXY protocol header: v1 header too long",
                 id="v1-too-long"),
    pytest.param(b"PROXY TCP4 " + b"1" * 200, False,
                 "invalid PROXY protocol header: v1 header too long",
                 id="v1-endless"),
    pytest.param(b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 65536\r\n", False,
                 "invalid PROXY protocol header: bad v1 port", id="v1-port"),
    pytest.param(b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", False,
                 "invalid PROXY protocol header: bad v1 character",
                 id="v1-family"),
    pytest.param(b"PROXY TCP6 203.0.113.7 ::1 1 2\r\n", False,
                 "invalid PROXY protocol header: bad v1 source address",
                 id="v1-tcp6-with-v4"),
    pytest.param(b"PROXY  TCP4 203.0.113.7 192.0.2.1 1 2\r\n", False,
                 "invalid PROXY protocol header: bad v1 protocol",
                 id="v1-double-space"),
    pytest.param(b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n", False,
                 "invalid PROXY protocol header: bad v1 line ending",
                 id="v1-bare-lf"),
    pytest.param(V2_SIG + b"\x21\x31\x00\xd8" + b"\0" * 216, False,
                 "invalid PROXY protocol header: unsupported v2 family",
                 id="v2-unix"),
    pytest.param(V2_SIG + b"\x21\x12\x00\x0c" + b"\0" * 12, False,
                 "invalid PROXY protocol header: unsupported v2 protocol",
                 id="v2-dgram"),
    pytest.param(V2_SIG + b"\x11\x11\x00\x0c" + b"\0" * 12, False,
                 "invalid PROXY protocol header: bad v2 version",
                 id="v2-version"),
    pytest.param(v2("203.0.113.7", "192.0.2.1", 1, 2)[:15] + b"\x10"
                 + b"\0" * 12 + b"\x01\x00\x09ab", False,
                 "invalid PROXY protocol header: bad v2 TLV length",
                 id="v2-tlv-overrun"),
    pytest.param(V2_SIG + b"\x21\x11\x20\x00" + b"\0" * 12
                 + b"\x01\x1f\xf1" + b"\0" * 8177, False,
                 "invalid PROXY protocol header: longer than 4096 bytes",
                 id="v2-too-large"),
    pytest.param(b"PROXY TCP4 203.0.113.7 192.", True,
                 "client closed the connection in the middle of the PROXY "
                 "protocol header", id="v1-truncated"),
    pytest.param(V2_SIG + b"\x21\x11\x00\x0c\x01\x02", True,
                 "client closed the connection in the middle of the PROXY "
                 "protocol header", id="v2-truncated"),
    pytest.param(b"", True,
                 "client closed the connection before sending a PROXY "
                 "protocol header", id="nothing"),
]


@pytest.mark.parametrize("data,shut,cause", BAD)
def test_bad_header_closes_without_a_reply(smtpgate, backend, data, shut,
                                           cause):
    """No 220 was sent, so none of these gets an SMTP reply: the
    connection is closed and the log names the cause, at info, with the
    session id."""
    g = smtpgate(pp_conf(backend))
    mark = g.quiet_log_mark()
    assert refused_bytes(g, data, shut=shut) == b""
    line = g.wait_log(rf"\[info\] \d+#\d+: \*\d+ {re.escape(cause)}, "
                      r"closing, client: 127\.0\.0\.1,", since=mark).group(0)
    sid = session_of(line)
    g.wait_log(rf"\*{sid} session closed", since=mark)
    assert "relaying" not in g.log_since(mark)


@pytest.mark.time_limit(60)
def test_header_timeout(smtpgate, backend):
    """Nothing, or part of a header, within proxy_protocol_timeout: the
    connection is closed without a reply when it runs out."""
    g = smtpgate(pp_conf(backend, mail="    proxy_protocol_timeout 1500ms;"))
    for data in (b"", b"PROXY TCP4 203.0.113.7 "):
        mark = g.quiet_log_mark()
        t0 = time.monotonic()
        assert refused_bytes(g, data, wait=20) == b""
        elapsed = time.monotonic() - t0
        assert 1.2 <= elapsed < 15, elapsed
        g.wait_log(r"\[info\] .*no PROXY protocol header within "
                   r"proxy_protocol_timeout, closing", since=mark)


def test_default_timeout_is_not_the_command_timeout(smtpgate, backend):
    """proxy_protocol_timeout, not "timeout", bounds the header."""
    g = smtpgate(pp_conf(backend, timeout="1s"))
    s = net.connect("127.0.0.1", g.port, 10)
    try:
        s.sendall(b"PROXY ")
        s.settimeout(2.5)
        with pytest.raises(socket.timeout):
            s.recv(1)                     # still waiting after 2.5 s
        s.sendall(b"UNKNOWN\r\n")
        s.settimeout(10)
        assert s.recv(4096).startswith(b"220 ")
    finally:
        s.close()


def test_plain_listener_beside_a_proxy_protocol_one(smtpgate, backend):
    """Only the address with the parameter expects a header."""
    g = smtpgate(pp_conf(backend, listen=(PP_LISTEN, "127.0.0.1:@PORTP@")))
    with RawSmtp("127.0.0.1", g.ports["PORTP"], 30) as c:
        assert c.greeting().code == 220
        relay_one(c)
    with connect(g, v2("203.0.113.7", "192.0.2.1", 1, 25)) as c:
        assert c.greeting().code == 220
        relay_one(c)
    backend.wait_messages(2)


# -- where the address goes -------------------------------------------------


def _auth_behind(g, header, secret):
    """alice's AUTH PLAIN on a connection announced by header: the code."""
    with connect(g, header) as c:
        assert c.greeting().code == 220
        c.ehlo()
        return c.cmd(f"AUTH PLAIN {plain_token('alice', secret)}").code


def test_auth_fail_limit_counts_the_real_client(smtpgate, backend):
    """auth_fail_limit keys on the header's source: one client behind
    the proxy locked out does not lock out another."""
    g = smtpgate(pp_conf(backend, mail=(
        "    auth_fail_limit zone=af:64k address=2 user=0;\n"
        "    smtp_auth_fail_delay 0;\n")))

    def attempt(src, secret):
        return _auth_behind(g, v1(src, "192.0.2.1", 1000, 25), secret)

    assert attempt("203.0.113.7", "wrong") == 535
    assert attempt("203.0.113.7", "wrong") == 535
    assert attempt("203.0.113.7", password("alice")) == 454
    assert attempt("203.0.113.8", password("alice")) == 235
    g.wait_log(r"too many failed AUTH attempts for this address .*"
               r"client: 203\.0\.113\.7,")


def test_auth_fail_limit_counts_ipv6_clients_per_64(smtpgate, backend):
    """An IPv6 host holds a whole /64 and may send from any address in
    it: counted per address, it would never reach the limit.  Clients
    in one /64 share a count; the next /64 has its own."""
    g = smtpgate(pp_conf(backend, mail=(
        "    auth_fail_limit zone=af:64k address=2 user=0;\n"
        "    smtp_auth_fail_delay 0;\n")))

    def attempt(src, secret):
        return _auth_behind(g, v1(src, "2001:db8:ffff::1", 1000, 25),
                            secret)

    assert attempt("2001:db8:0:1::7", "wrong") == 535
    assert attempt("2001:db8:0:1:aaaa:bbbb:cccc:dddd", "wrong") == 535
    assert attempt("2001:db8:0:1::8", password("alice")) == 454
    assert attempt("2001:db8:0:2::7", password("alice")) == 235
    g.wait_log(r"too many failed AUTH attempts for this address .*"
               r"client: 2001:db8:0:1::8,")


@pytest.fixture
def svc():
    s = AuthService().start()
    yield s
    s.stop()


PP_HEADERS = ["Proxy-Protocol-Addr", "Proxy-Protocol-Port",
              "Proxy-Protocol-Server-Addr", "Proxy-Protocol-Server-Port"]


def _auth_http_login(g, header):
    with connect(g, header) as c:
        assert c.greeting().code == 220
        c.ehlo()
        assert c.auth_plain("alice", "pw").code == 235


@pytest.mark.parametrize("trusted,client_ip", [
    (("127.0.0.1",), "2001:db8::7"),
    (("192.0.2.0/24",), "127.0.0.1"),
], ids=["trusted", "untrusted"])
def test_auth_http_proxy_protocol_headers(smtpgate, backend, svc, trusted,
                                          client_ip):
    """As nginx: right after Client-Host, the header's addresses and
    ports, trusted or not; Client-IP is the header's source only when
    the proxy is trusted."""
    svc.default = ok_to(backend)
    g = smtpgate(pp_conf(trusted=trusted, auth_file=None,
                         mail=f"    auth_http {svc.url};",
                         listen=(PP_LISTEN, "127.0.0.1:@PORTP@")))
    _auth_http_login(g, v1("2001:db8::7", "2001:db8::1", 4242, 587))
    (req,) = svc.wait_requests(1)
    names = req.names()
    i = names.index("Client-Host")
    assert names[i + 1:i + 5] == PP_HEADERS, names
    assert req.header("Client-IP") == client_ip
    assert [req.header(h) for h in PP_HEADERS] == \
        ["2001:db8::7", "4242", "2001:db8::1", "587"]

    # No header with addresses, no Proxy-Protocol-* headers.
    _auth_http_login(g, V2_LOCAL)
    with RawSmtp("127.0.0.1", g.ports["PORTP"], 30) as c:
        assert c.greeting().code == 220
        c.ehlo()
        assert c.auth_plain("alice", "pw").code == 235
    reqs = svc.wait_requests(3)
    for r in reqs[1:]:
        assert not set(PP_HEADERS) & set(r.names()), r.head
        assert r.header("Client-IP") == "127.0.0.1"


def test_auth_http_json_proxy_protocol(smtpgate, backend):
    """auth_http_format json: the same facts as a "proxy_protocol"
    object."""
    import http.server
    import threading

    docs = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            docs.append(json.loads(self.rfile.read(n)))
            body = json.dumps({"status": "OK"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = net.free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        g = smtpgate(pp_conf(backend, auth_file=None, mail=(
            f"    auth_http http://127.0.0.1:{port}/a;\n"
            "    auth_http_format json;")))
        _auth_http_login(g, v2("203.0.113.7", "192.0.2.1", 4242, 25))
        _auth_http_login(g, b"PROXY UNKNOWN\r\n")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert docs[0]["client_ip"] == "203.0.113.7"
    assert docs[0]["proxy_protocol"] == {
        "addr": "203.0.113.7", "port": 4242,
        "server_addr": "192.0.2.1", "server_port": 25}
    assert docs[1]["client_ip"] == "127.0.0.1"
    assert "proxy_protocol" not in docs[1]


def test_same_headers_as_nginx(smtpgate, backend, svc):
    """nginx's mail module behind the same header sends the same
    Client-IP and Proxy-Protocol-* headers, in the same place."""
    if not (os.access(Nginx.BIN, os.X_OK)
            and os.path.exists(Nginx.MAIL_MODULE)):
        pytest.skip("nginx or its mail module (libnginx-mod-mail) missing")
    svc.default = ok_to(backend)
    g = smtpgate(pp_conf(trusted=("127.0.0.1",), auth_file=None,
                         mail=f"    auth_http {svc.url};"))
    ngx = Nginx(f"""
mail {{
    server_name mx.test;
    auth_http {svc.hostport}/auth;
    xclient off;
    set_real_ip_from 127.0.0.1;
    server {{ listen 127.0.0.1:@PORT@ proxy_protocol; protocol smtp; }}
}}
""", mail_module=True).start()
    headers = (v1("2001:db8::7", "2001:db8::1", 4242, 25),
               v2("203.0.113.9", "192.0.2.1", 1, 465))
    try:
        runs = {}
        for name, port in (("smtpgate", g.port), ("nginx", ngx.port)):
            first = len(svc.requests)
            for h in headers:
                with connect(g, h, port=port) as c:
                    assert c.greeting().code == 220
                    c.ehlo()
                    c.auth_plain("alice", "pw")
            runs[name] = svc.wait_requests(first + 2)[first:first + 2]
    finally:
        ngx.stop()

    def pick(req):
        names = req.names()
        i = names.index("Client-IP")
        return req.headers[i:i + 6]

    for ours, theirs in zip(runs["smtpgate"], runs["nginx"]):
        assert pick(ours) == pick(theirs), \
            f"smtpgate:\n{ours.head.decode()}\nnginx:\n{theirs.head.decode()}"
    assert runs["smtpgate"][1].header("Client-IP") == "203.0.113.9"


# -- configuration ----------------------------------------------------------


def _conf_test(smtpgate, text):
    g = smtpgate(text, start=False)
    return g, g.ctl("-t")


def test_config_errors(smtpgate, backend):
    cases = [
        (pp_conf(backend, trusted=("192.0.2.0/33",)),
         'invalid value "192.0.2.0/33" in "set_real_ip_from" directive, '
         'invalid prefix length', "set_real_ip_from"),
        (pp_conf(backend, trusted=("mail.example.org",)),
         'invalid value "mail.example.org" in "set_real_ip_from" directive,'
         ' invalid address', "set_real_ip_from"),
        (pp_conf(backend, mail="    proxy_protocol_timeout 0;"),
         'invalid value "0" in "proxy_protocol_timeout" directive',
         "proxy_protocol_timeout"),
        (pp_conf(backend, mail="    proxy_protocol_timeout 2h;"),
         'invalid value "2h" in "proxy_protocol_timeout" directive',
         "proxy_protocol_timeout"),
        (pp_conf(backend, listen=(PP_LISTEN,),
                 servers=["        listen 127.0.0.1:@PORT@;"]),
         'is listed both with and without "proxy_protocol"',
         "listen 127.0.0.1:@PORT@;"),
        (pp_conf(backend, listen=("127.0.0.1:@PORT@ proxy_protocols",)),
         'invalid parameter "proxy_protocols" in "listen"', "listen"),
        (pp_conf(backend, mail="    set_real_ip_from 10.0.0.0/8 x;"),
         'invalid number of arguments in "set_real_ip_from"',
         "set_real_ip_from 10.0.0.0/8 x"),
    ]
    for text, message, where in cases:
        g, r = _conf_test(smtpgate, text)
        assert r.returncode == 1, (text, r.stderr)
        line = [i + 1 for i, l in enumerate(g.conf_text.splitlines())
                if where.replace("@PORT@", str(g.port)) in l][-1]
        assert f"{g.conf_path}:{line}: " in r.stderr, (where, r.stderr)
        assert message in r.stderr, (message, r.stderr)


def test_config_accepts_and_warns(smtpgate, backend):
    g, r = _conf_test(smtpgate, pp_conf(
        backend, trusted=("10.1.2.3/8", "2001:db8::/32", "unix:", "::1"),
        mail="    proxy_protocol_timeout 5s;",
        server="        set_real_ip_from 127.0.0.1;"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"\[warn\] .*:\d+: low address bits of \"10\.1\.2\.3/8\""
                     r" in \"set_real_ip_from\" are meaningless", r.stderr), \
        r.stderr


def test_held_by_the_kernel_until_the_header(smtpgate, backend):
    """The load balancer speaks first, so the listening socket hands a
    connection over only with its first bytes (TCP_DEFER_ACCEPT): a
    connection that has sent nothing is no session yet; its header and
    the session follow as usual."""
    import subprocess
    g = smtpgate(pp_conf(backend))
    mark = g.log_mark()
    c = RawSmtp("127.0.0.1", g.port, 10)
    try:
        time.sleep(0.4)
        out = subprocess.run(["ss", "-Htn", "state", "syn-recv",
                              f"sport = :{g.port}"], capture_output=True,
                             text=True, check=True).stdout
        assert out.strip(), "the connection is not held back"
        assert "client connected" not in g.log_since(mark)
        c.send(v1("192.0.2.7", "127.0.0.1", 40000, 587))
        assert c.greeting().code == 220
        relay_one(c)
    finally:
        c.close()
    g.wait_log(r"client 192\.0\.2\.7 connected|client connected",
               since=mark)


def test_greeting_delay_sees_a_command_behind_the_header(smtpgate, backend):
    """smtp_greeting_delay: a command sent in the same segment as the
    PROXY header is talking before the greeting, though no read event
    comes for it (it was read with the header)."""
    g = smtpgate(pp_conf(backend, server="    smtp_greeting_delay 1s;"))
    mark = g.log_mark()
    c = RawSmtp("127.0.0.1", g.port, 10)
    try:
        c.send(v1("192.0.2.8", "127.0.0.1", 40000, 587)
               + b"EHLO eager.test\r\n")
        r = c.reply()
        assert r.code == 503, r
        assert "Talking before the greeting" in r.text, r
    finally:
        c.close()
    g.wait_log("client talked before the greeting", since=mark)
