"""TLS on the client side: STARTTLS and implicit TLS, what EHLO offers
before and after, STARTTLS command injection, AUTH only over TLS,
`starttls only`, protocols and ciphers, certificates chosen by SNI, RSA
beside ECDSA, encrypted keys, client certificates, session resumption,
handshake failures and timeouts, and certificates swapped by a reload.

Sessions are driven by lib.pki.TlsSmtp (a RawSmtp that can switch to TLS)
and by `openssl s_client`; the other TLS clients are in test_tls_clients.py.
"""

import os
import re
import select
import socket
import ssl
import subprocess
import time

import pytest

from lib import gate as gatelib
from lib import net, pki as pkilib, smtp
from lib.checks import assert_same_bytes
from lib.messages import make_message
from lib.pki import (TlsSmtp, cert_directives, der, implicit_session,
                     indent, starttls_session, tls_conf)
from lib.smtp import ServerClosed, ehlo_keywords, plain_token
from lib.users import password

pytestmark = pytest.mark.skipif(not pkilib.tls_built(),
                                reason="smtpgate built without TLS")

READY = b"220 2.0.0 Ready to start TLS\r\n"
OK = b"250 2.0.0 OK\r\n"
MUST_STARTTLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
ENCRYPTION_REQUIRED = (b"538 5.7.11 Encryption required for requested "
                       b"authentication mechanism\r\n")
AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
HANDSHAKE_FAILED = r"\[info\] .*TLS handshake failed.*client: 127\.0\.0\.1\b"
HANDSHAKE_TIMED_OUT = (r"\[info\] .*TLS handshake timed out.*"
                       r"client: 127\.0\.0\.1\b")


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def s_client(*args, stdin=b"QUIT\r\n", timeout=60):
    """Run `openssl s_client ARGS -ign_eof` with `stdin`; return (exit
    status, stdout + stderr)."""
    p = subprocess.run(["openssl", "s_client", *args, "-ign_eof"],
                       input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def subject_line(pki, name):
    return "subject=" + pki.subject(name)


def session_line(out):
    """'New, TLSv1.3, Cipher is ...' or 'Reused, ...' from s_client."""
    m = re.search(r"^(New|Reused), .*$", out, re.M)
    assert m, f"no New/Reused line in s_client output:\n{out}"
    return m.group(0)


def peer_der(c):
    return c.tls.getpeercert(binary_form=True)


def authed_starttls(g, pki, user="alice"):
    c = starttls_session(g, pki)
    c.ehlo()
    r = c.auth_plain(user, password(user))
    assert r.raw == AUTH_OK, r
    return c


# -- EHLO before and after TLS ---------------------------------------------


def test_ehlo_before_tls_offers_starttls_but_not_auth(smtpgate, backend, pki):
    """EHLO in plaintext lists STARTTLS, and no AUTH while AUTH needs TLS."""
    g = smtpgate(tls_conf(pki, backend))
    with g.session() as c:
        keys = ehlo_keywords(c.ehlo())
        assert "STARTTLS" in keys, keys
        assert "AUTH" not in keys, keys


def test_ehlo_after_starttls_offers_auth_not_starttls(smtpgate, backend, pki):
    """EHLO after STARTTLS lists AUTH and no longer STARTTLS."""
    g = smtpgate(tls_conf(pki, backend))
    with starttls_session(g, pki) as c:
        r = c.ehlo()
        assert r.lines[0] == "mx.test", r
        keys = ehlo_keywords(r)
        assert "STARTTLS" not in keys, keys
        assert "AUTH" in keys, keys
        assert "PLAIN" in smtp.ehlo_line(r, "AUTH").upper().split(), r


def test_implicit_tls_greeting_and_ehlo(smtpgate, backend, pki):
    """An ssl listener greets inside TLS and lists AUTH, not STARTTLS."""
    g = smtpgate(tls_conf(pki, backend))
    with implicit_session(g, pki) as c:
        assert c.greeting_reply.raw == b"220 mx.test ESMTP ready\r\n"
        assert c.tls.version() in ("TLSv1.2", "TLSv1.3")
        keys = ehlo_keywords(c.ehlo())
        assert "AUTH" in keys and "STARTTLS" not in keys, keys


def test_auth_offered_before_tls_when_not_required(smtpgate, backend, pki):
    """With smtp_auth_require_tls off, plaintext EHLO lists AUTH too."""
    g = smtpgate(tls_conf(pki, backend, require_tls=False))
    with g.session() as c:
        keys = ehlo_keywords(c.ehlo())
        assert "STARTTLS" in keys and "AUTH" in keys, keys
        assert c.auth_plain("alice", password("alice")).raw == AUTH_OK


# -- the STARTTLS command ---------------------------------------------------


def test_starttls_reply_and_handshake(smtpgate, backend, pki):
    """STARTTLS answers the exact 220 and the handshake verifies mx.test."""
    g = smtpgate(tls_conf(pki, backend))
    with TlsSmtp("127.0.0.1", g.port) as c:
        assert c.greeting().raw == b"220 mx.test ESMTP ready\r\n"
        c.ehlo()
        c.send(b"STARTTLS\r\n")
        assert c.reply().raw == READY
        c.wrap(pki.client_context(), "mx.test")
        assert peer_der(c) == der(pki.cert("mx.test"))
        assert c.cmd("NOOP").raw == OK


def test_starttls_with_argument(smtpgate, backend, pki):
    """STARTTLS with an argument is a 501 and the session stays plain."""
    g = smtpgate(tls_conf(pki, backend))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("STARTTLS now").raw == b"501 5.5.4 Syntax: STARTTLS\r\n"
        assert c.cmd("NOOP").raw == OK


def test_starttls_inside_tls(smtpgate, backend, pki):
    """STARTTLS after STARTTLS is 503 and the TLS session goes on."""
    g = smtpgate(tls_conf(pki, backend))
    with starttls_session(g, pki) as c:
        c.ehlo()
        assert c.cmd("STARTTLS").raw == b"503 5.5.1 TLS already active\r\n"
        assert c.cmd("NOOP").raw == OK


def test_starttls_on_implicit_tls_listener(smtpgate, backend, pki):
    """STARTTLS on an ssl listener is 503, TLS being active already."""
    g = smtpgate(tls_conf(pki, backend))
    with implicit_session(g, pki) as c:
        c.ehlo()
        assert c.cmd("STARTTLS").raw == b"503 5.5.1 TLS already active\r\n"
        assert c.cmd("NOOP").raw == OK


def test_starttls_off(smtpgate, backend, pki):
    """starttls off: not offered, and the command is not implemented."""
    g = smtpgate(tls_conf(pki, backend, starttls="off"))
    with g.session() as c:
        assert "STARTTLS" not in ehlo_keywords(c.ehlo())
        assert c.cmd("STARTTLS").raw == \
            b"502 5.5.2 Command not implemented\r\n"
        assert c.cmd("NOOP").raw == OK


def test_starttls_is_off_by_default(smtpgate, backend, pki):
    """Without a starttls directive a certificate alone offers no STARTTLS."""
    g = smtpgate(tls_conf(pki, backend, starttls=None))
    with g.session() as c:
        assert "STARTTLS" not in ehlo_keywords(c.ehlo())
        assert c.cmd("STARTTLS").raw == \
            b"502 5.5.2 Command not implemented\r\n"


def test_session_is_reset_after_starttls(smtpgate, backend, pki):
    """After the handshake the client must EHLO again before AUTH."""
    g = smtpgate(tls_conf(pki, backend))
    with starttls_session(g, pki) as c:
        r = c.auth_plain("alice", password("alice"))
        assert r.raw == b"503 5.5.1 Send HELO/EHLO first\r\n", r
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).raw == AUTH_OK


def test_starttls_pipelined_noop_is_discarded(smtpgate, backend, pki):
    """NOOP pipelined behind STARTTLS in plaintext is never answered."""
    g = smtpgate(tls_conf(pki, backend))
    with TlsSmtp("127.0.0.1", g.port) as c:
        assert c.greeting().code == 220
        c.ehlo()
        c.send(b"STARTTLS\r\nNOOP\r\n")
        assert c.reply().raw == READY
        assert c.buf == b"", f"plaintext after the 220: {c.buf!r}"
        c.wrap(pki.client_context(), "mx.test")
        r = c.cmd("EHLO client.test")
        assert r.code == 250 and r.lines[0] == "mx.test", \
            f"first reply after the handshake is not the EHLO reply: {r!r}"
        # A stray NOOP reply queued behind the EHLO reply would shift these.
        assert c.cmd("NOOP").raw == OK
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()


def test_starttls_pipelined_auth_is_not_executed(smtpgate, backend, pki):
    """AUTH and MAIL pipelined behind STARTTLS are discarded, not run."""
    g = smtpgate(tls_conf(pki, backend, require_tls=False))
    with TlsSmtp("127.0.0.1", g.port) as c:
        assert c.greeting().code == 220
        c.ehlo()
        c.send(b"STARTTLS\r\nAUTH PLAIN "
               + plain_token("alice", password("alice")).encode()
               + b"\r\nMAIL FROM:<injected@example.org>\r\n")
        assert c.reply().raw == READY
        c.wrap(pki.client_context(), "mx.test")
        r = c.cmd("EHLO client.test")
        assert r.code == 250 and r.lines[0] == "mx.test", r
        assert c.cmd("MAIL FROM:<a@example.org>").raw == \
            b"530 5.7.0 Authentication required\r\n"
        assert c.cmd("NOOP").raw == OK
    assert backend.commands == []


# -- AUTH and TLS ------------------------------------------------------------


@pytest.mark.parametrize("how", ["plain", "plain-initial", "login"])
def test_auth_before_tls_is_refused(smtpgate, backend, pki, how):
    """AUTH in plaintext is a 538 while smtp_auth_require_tls is on."""
    g = smtpgate(tls_conf(pki, backend))
    with g.session() as c:
        c.ehlo()
        line = {"plain": "AUTH PLAIN",
                "plain-initial": "AUTH PLAIN "
                                 + plain_token("alice", password("alice")),
                "login": "AUTH LOGIN"}[how]
        assert c.cmd(line).raw == ENCRYPTION_REQUIRED
        assert c.cmd("NOOP").raw == OK
        assert c.cmd("MAIL FROM:<a@example.org>").code == 530
    assert backend.commands == []


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_auth_over_tls_relays_byte_exact(smtpgate, backend, pki, mode):
    """After AUTH over TLS the message reaches the backend byte for byte."""
    g = smtpgate(tls_conf(pki, backend))
    msg = make_message(200 * 1024, seed=41)
    opener = starttls_session if mode == "starttls" else implicit_session
    with opener(g, pki) as c:
        c.ehlo()
        assert c.auth_login("bob", password("bob")).raw == AUTH_OK
        assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
        assert c.cmd("QUIT").code == 221
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, msg)
    assert m.mail_from == "a@example.org"


# -- starttls only ----------------------------------------------------------


@pytest.mark.parametrize("line", [
    "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA",
    "BDAT 10 LAST", "AUTH PLAIN", "AUTH LOGIN", "VRFY alice", "HELP"])
def test_starttls_only_refuses_before_tls(smtpgate, backend, pki, line):
    """starttls only: other commands get 530 before TLS."""
    g = smtpgate(tls_conf(pki, backend, starttls="only"))
    with g.session() as c:
        c.ehlo()
        assert c.cmd(line).raw == MUST_STARTTLS
        if not line.startswith("BDAT"):
            assert c.cmd("NOOP").raw == OK
    assert backend.commands == []


def test_starttls_only_allows_the_basics_before_tls(smtpgate, backend, pki):
    """starttls only: EHLO, HELO, NOOP, RSET and QUIT work in plaintext."""
    g = smtpgate(tls_conf(pki, backend, starttls="only"))
    with g.session() as c:
        assert "STARTTLS" in ehlo_keywords(c.ehlo())
        assert c.cmd("HELO client.test").code == 250
        assert c.cmd("NOOP").raw == OK
        assert c.cmd("RSET").raw == OK
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()


def test_starttls_only_works_after_tls(smtpgate, backend, pki):
    """starttls only: after STARTTLS the usual AUTH and relay follow."""
    g = smtpgate(tls_conf(pki, backend, starttls="only"))
    with starttls_session(g, pki) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").raw == \
            b"530 5.7.0 Authentication required\r\n"
        assert c.auth_plain("carol", password("carol")).raw == AUTH_OK
        msg = b"Subject: only\r\n\r\nbody\r\n"
        assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
    (m,) = backend.wait_messages(1)
    assert m.content == msg


# -- a command right behind the client's Finished ---------------------------


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_command_right_behind_finished(smtpgate, backend, pki, version):
    """Implicit-TLS clients that send QUIT the moment their handshake is
    done are all answered.  With read-ahead, the server's last handshake
    read can take the client's Finished and its QUIT together, straight
    after accept and before any event: the QUIT then sits in OpenSSL and
    no event will announce it.  Whether the two arrive together is down to
    timing, so many sessions are run; t/unit/test_ssl_io.c makes the same
    case certain."""
    g = smtpgate(tls_conf(pki, backend))
    args = ["-connect", f"127.0.0.1:{g.ports['PORTS']}", version,
            "-servername", "mx.test", "-CAfile", pki.ca,
            "-verify_return_error", "-quiet"]
    before = g.error_log().count("session closed, 6 bytes in")
    for _ in range(150):
        rc, out = s_client(*args, timeout=10)
        assert "221 2.0.0 Bye" in out, out
    assert g.error_log().count("session closed, 6 bytes in") == before + 150


# -- malformed and heavy input over TLS -------------------------------------


def test_long_line_over_tls(smtpgate, backend, pki):
    """A 100 KB line over TLS is a 500 and the session stays in step."""
    g = smtpgate(tls_conf(pki, backend))
    with starttls_session(g, pki) as c:
        c.ehlo()
        c.send(b"NOOP " + b"a" * (100 * 1024) + b"\r\n")
        assert c.reply().raw == b"500 5.5.6 Line too long\r\n"
        assert c.cmd("NOOP").raw == OK


def test_nul_byte_over_tls(smtpgate, backend, pki):
    """A NUL byte over TLS is a 5.5.x error; then NOOP works or 421 ends."""
    g = smtpgate(tls_conf(pki, backend))
    with starttls_session(g, pki) as c:
        c.ehlo()
        c.send(b"NO\x00OP\r\n")
        r = c.reply()
        assert r.code == 500 and r.last.startswith("5.5."), r
        r = c.cmd("NOOP")
        if r.code == 421:
            c.expect_closed()
        else:
            assert r.raw == OK, r


def _pump(tls, data, n_lines, timeout):
    """Write `data` and read `n_lines` reply lines at the same time on a
    non-blocking SSLSocket, so neither side's buffers can deadlock us."""
    tls.setblocking(False)
    crlf = b"\r\n"
    got = b""
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        while got.count(crlf) < n_lines:
            assert time.monotonic() < deadline, \
                f"{got.count(crlf)} of {n_lines} replies after {timeout}s"
            want_write = [tls] if sent < len(data) else []
            select.select([tls], want_write, [], 1.0)
            if sent < len(data):
                try:
                    sent += tls.send(data[sent:sent + 16384])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not chunk:
                    raise ServerClosed(f"closed after {got.count(crlf)} "
                                       "reply lines")
                got += chunk
    finally:
        tls.settimeout(30)
    return got


@pytest.mark.time_limit(180)
def test_ten_thousand_pipelined_noops_over_tls(smtpgate, backend, pki):
    """10,000 NOOPs written in one go over TLS are all answered in order."""
    g = smtpgate(tls_conf(pki, backend, timeout="30s"))
    n = 10000
    with starttls_session(g, pki) as c:
        c.ehlo()
        got = _pump(c.tls, b"NOOP\r\n" * n, n, timeout=120)
        assert got == OK * n, f"{len(got)} bytes, not {n} x {OK!r}"
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"


@pytest.mark.time_limit(120)
def test_slow_client_over_tls_times_out(smtpgate, backend, pki):
    """One byte a second over TLS: 421 or closed after timeout 3s."""
    g = smtpgate(tls_conf(pki, backend, timeout="3s"))
    limit = 40
    with starttls_session(g, pki) as c:
        c.ehlo()
        c.sock.settimeout(1.0)
        got = b""
        closed = False
        for i in range(limit):
            try:
                c.sock.sendall(b"NOOP "[i:i + 1] or b"a")
            except OSError:
                closed = True
                break
            try:
                chunk = c.sock.recv(4096)
            except socket.timeout:
                continue
            except (ssl.SSLError, ConnectionResetError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            if b"\r\n" in got:
                break
        assert closed or got.startswith(b"421 "), (
            f"after {limit} bytes at one a second with timeout 3s the "
            f"session is still open; got {got!r}")
        if got:
            assert got.startswith(b"421 "), got


def _client_hello():
    """The first flight of a real TLS client, as bytes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _wait_closed(sock, timeout):
    """Read (and drop) whatever comes until the peer closes; fail if it has
    not closed within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except socket.timeout:
        raise AssertionError(f"the server kept the connection open for "
                             f"{timeout}s") from None
    except ConnectionResetError:
        pass


@pytest.mark.time_limit(120)
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_abandoned_handshake_is_closed(smtpgate, backend, pki, mode):
    """Half a ClientHello: closed after ssl_handshake_timeout, logged."""
    g = smtpgate(tls_conf(pki, backend, timeout="300s",
                          extra="ssl_handshake_timeout 2s;"))
    mark = g.quiet_log_mark()
    hello = _client_hello()
    port = g.ports["PORTS"] if mode == "implicit" else g.port
    with TlsSmtp("127.0.0.1", port) as c:
        if mode == "starttls":
            assert c.greeting().code == 220
            c.ehlo()
            assert c.cmd("STARTTLS").raw == READY
        c.sock.sendall(hello[:len(hello) // 2])
        _wait_closed(c.sock, 60)
    g.wait_log(HANDSHAKE_TIMED_OUT, since=mark)


def test_garbage_instead_of_handshake(smtpgate, backend, pki):
    """Plaintext on an ssl listener: closed, 'TLS handshake failed'."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.quiet_log_mark()
    with net.connect("127.0.0.1", g.ports["PORTS"], 30) as s:
        s.sendall(b"EHLO client.test\r\n" * 20)
        _wait_closed(s, 30)
    g.wait_log(HANDSHAKE_FAILED, since=mark)
    with implicit_session(g, pki) as c:
        assert c.cmd("NOOP").raw == OK


# -- protocols, ciphers, curves ---------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls11_refused_by_default(smtpgate, backend, pki, mode):
    """TLSv1.1 fails the handshake with the default ssl_protocols."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.quiet_log_mark()
    rc, out = _s_client_tls11(g, pki, mode)
    assert rc != 0, out
    assert "BEGIN CERTIFICATE" not in out, out
    assert "220 mx.test ESMTP ready" not in out, out
    # the alert OpenSSL wrote as the handshake failed reached the client
    assert "alert protocol version" in out, out
    g.wait_log(HANDSHAKE_FAILED, since=mark)


def _s_client_tls11(g, pki, mode):
    # The client's own security level would refuse TLSv1.1 by itself;
    # level 0 makes the server the one that decides.
    args = ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", pki.ca,
            "-servername", "mx.test"]
    if mode == "starttls":
        args += ["-connect", f"127.0.0.1:{g.port}", "-starttls", "smtp"]
    else:
        args += ["-connect", f"127.0.0.1:{g.ports['PORTS']}"]
    return s_client(*args)


def test_tls11_accepted_when_enabled(smtpgate, backend, pki):
    """Control: the same TLSv1.1 client works once ssl_protocols allows."""
    g = smtpgate(tls_conf(pki, backend, extra="""
        ssl_protocols TLSv1.1 TLSv1.2;
        ssl_ciphers DEFAULT@SECLEVEL=0;"""))
    rc, out = _s_client_tls11(g, pki, "implicit")
    assert "220 mx.test ESMTP ready" in out, out
    assert re.search(r"Protocol\s*: TLSv1\.1", out), out


@pytest.mark.parametrize("protocols,version,ok", [
    ("", ssl.TLSVersion.TLSv1_2, True),
    ("", ssl.TLSVersion.TLSv1_3, True),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_3, False),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2, True),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_2, False),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3, True),
], ids=["default-1.2", "default-1.3", "1.2-only-1.3", "1.2-only-1.2",
        "1.3-only-1.2", "1.3-only-1.3"])
def test_ssl_protocols(smtpgate, backend, pki, protocols, version, ok):
    """ssl_protocols decides which versions complete the handshake."""
    extra = f"ssl_protocols {protocols};" if protocols else ""
    g = smtpgate(tls_conf(pki, backend, extra=extra))
    ctx = pki.client_context()
    ctx.minimum_version = ctx.maximum_version = version
    for starttls in (False, True):
        port = g.port if starttls else g.ports["PORTS"]
        outcome, what = pkilib.handshake_outcome(
            "127.0.0.1", port, ctx, "mx.test", starttls=starttls)
        assert outcome == ("ok" if ok else "refused"), (starttls, what)


def test_ssl_prefer_server_ciphers(smtpgate, backend, pki):
    """TLSv1.2 cipher: the client's order, or the server's when preferred."""
    server_order = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
    client_order = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
    for prefer, expected in (("off", "ECDHE-RSA-AES128-GCM-SHA256"),
                             ("on", "ECDHE-RSA-AES256-GCM-SHA384")):
        g = smtpgate(tls_conf(pki, backend, extra=f"""
            ssl_ciphers {server_order};
            ssl_prefer_server_ciphers {prefer};"""))
        ctx = pki.client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(client_order)
        with implicit_session(g, pki, context=ctx) as c:
            assert c.tls.cipher()[0] == expected, (prefer, c.tls.cipher())
        g.stop()


def test_ssl_ciphers_limits_tls12(smtpgate, backend, pki):
    """A TLSv1.2 client with no cipher in ssl_ciphers is refused."""
    g = smtpgate(tls_conf(pki, backend,
                          extra="ssl_ciphers ECDHE-RSA-AES256-GCM-SHA384;"))
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    outcome, what = pkilib.handshake_outcome(
        "127.0.0.1", g.ports["PORTS"], ctx, "mx.test")
    assert outcome == "refused", what


def test_ssl_conf_command(smtpgate, backend, pki):
    """ssl_conf_command Ciphersuites limits the TLSv1.3 suites."""
    g = smtpgate(tls_conf(pki, backend, extra=(
        "ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;")))
    with implicit_session(g, pki) as c:
        assert c.tls.version() == "TLSv1.3"
        assert c.tls.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256", \
            c.tls.cipher()


@pytest.mark.parametrize("prefer,expected", [
    ("off", "TLS_AES_256_GCM_SHA384"),      # the client's first (OpenSSL's)
    ("on", "TLS_AES_128_GCM_SHA256"),
])
def test_tls13_suite_by_server_preference(smtpgate, backend, pki, prefer,
                                          expected):
    """The cheaper-handshake tuning in docs/operations.md: with
    ssl_prefer_server_ciphers on, the server's Ciphersuites order picks the
    TLSv1.3 suite over an OpenSSL client's own (AES-256 first); off, the
    client's order stands."""
    g = smtpgate(tls_conf(pki, backend, extra=(
        f"ssl_prefer_server_ciphers {prefer};\n"
        "ssl_conf_command Ciphersuites "
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
        "TLS_CHACHA20_POLY1305_SHA256;")))
    ctx = pki.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with implicit_session(g, pki, context=ctx) as c:
        assert c.tls.version() == "TLSv1.3"
        assert c.tls.cipher()[0] == expected, c.tls.cipher()
        c.ehlo()


def test_ssl_ecdh_curve(smtpgate, backend, pki):
    """ssl_ecdh_curve secp384r1 is the key exchange group used."""
    g = smtpgate(tls_conf(pki, backend, extra="ssl_ecdh_curve secp384r1;"))
    for version in ("-tls1_2", "-tls1_3"):
        rc, out = s_client("-connect", f"127.0.0.1:{g.ports['PORTS']}",
                           version, "-servername", "mx.test",
                           "-CAfile", pki.ca)
        assert "220 mx.test ESMTP ready" in out, out
        assert re.search(r"Server Temp Key: ECDH, (secp384r1|P-384)", out), \
            (version, out)


def test_ssl_dhparam(smtpgate, backend, pki):
    """With ssl_dhparam a TLSv1.2 client offering only DHE gets it."""
    g = smtpgate(tls_conf(pki, backend, extra=f"""
        ssl_dhparam {pki.dhparam};
        ssl_ciphers HIGH:!aNULL:!MD5;"""))
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("DHE-RSA-AES256-GCM-SHA384")
    with implicit_session(g, pki, context=ctx) as c:
        assert c.tls.cipher()[0] == "DHE-RSA-AES256-GCM-SHA384", \
            c.tls.cipher()


# -- certificates and keys --------------------------------------------------


def test_rsa_and_ecdsa_side_by_side(smtpgate, backend, pki):
    """Two certificate/key pairs: the client's algorithms pick each one."""
    g = smtpgate(tls_conf(pki, backend, certs=("mx.test", "mx.test-ec")))
    port = g.ports["PORTS"]
    for version in (ssl.TLSVersion.TLSv1_2,):
        for cipher, name in (("ECDHE-ECDSA-AES128-GCM-SHA256", "mx.test-ec"),
                             ("ECDHE-RSA-AES128-GCM-SHA256", "mx.test")):
            ctx = pki.client_context()
            ctx.minimum_version = ctx.maximum_version = version
            ctx.set_ciphers(cipher)
            with implicit_session(g, pki, context=ctx, port=port) as c:
                assert peer_der(c) == der(pki.cert(name)), (cipher, name)
    for sigalg, bits in (("ecdsa_secp256r1_sha256", "256"),
                         ("rsa_pss_rsae_sha256", "2048")):
        rc, out = s_client("-connect", f"127.0.0.1:{port}", "-tls1_3",
                           "-sigalgs", sigalg, "-servername", "mx.test",
                           "-CAfile", pki.ca, "-verify_return_error")
        assert "220 mx.test ESMTP ready" in out, out
        assert f"Server public key is {bits} bit" in out, (sigalg, out)


@pytest.mark.parametrize("password_file", ["password.txt", "passwords.txt"],
                         ids=["first-line", "second-line"])
def test_encrypted_key_with_password_file(smtpgate, backend, pki,
                                          password_file):
    """An encrypted key loads with ssl_password_file (any line)."""
    g = smtpgate(tls_conf(pki, backend, certs=(), extra=f"""
        ssl_certificate {pki.cert("mx.test")};
        ssl_certificate_key {pki.encrypted_key};
        ssl_password_file {pki.path(password_file)};"""))
    with starttls_session(g, pki) as c:
        assert peer_der(c) == der(pki.cert("mx.test"))
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).raw == AUTH_OK


def test_encrypted_key_without_password_file(tmp_path, backend, pki):
    """An encrypted key and no ssl_password_file fails `-t`, naming the key."""
    text = tls_conf(pki, backend, certs=(), extra=f"""
        ssl_certificate {pki.cert("mx.test")};
        ssl_certificate_key {pki.encrypted_key};""")
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    assert pki.encrypted_key in r.stderr, r.stderr


@pytest.mark.parametrize("cert,key", [("mx.test", "mx.test-ec"),
                                      ("mx.test-ec", "mx.test")])
def test_key_of_another_type_fails_check(tmp_path, backend, pki, cert,
                                         key):
    """An RSA certificate with an ECDSA key (or the reverse) fails `-t`
    naming the key: OpenSSL files such a key beside the certificate
    without a word, and every handshake would then fail."""
    text = tls_conf(pki, backend, certs=(), extra=f"""
        ssl_certificate {pki.cert(cert)};
        ssl_certificate_key {pki.key(key)};""")
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    assert (f'loading certificate key "{pki.key(key)}" failed: '
            "no certificate assigned") in r.stderr, r.stderr


@pytest.mark.parametrize("which", ["certificate", "key"])
def test_missing_file_names_the_system_error(tmp_path, backend, pki, which):
    """A certificate or key that cannot be opened: `-t` says why in the
    system's words, once, not OpenSSL's "unknown; system lib; system
    lib"."""
    missing = pki.path("no-such-file.pem")
    cert = missing if which == "certificate" else pki.cert("mx.test")
    key = missing if which == "key" else pki.key("mx.test")
    text = tls_conf(pki, backend, certs=(), extra=f"""
        ssl_certificate {cert};
        ssl_certificate_key {key};""")
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    what = "certificate" if which == "certificate" else "certificate key"
    assert (f'loading {what} "{missing}" failed: No such file or '
            'directory; system lib\n') in r.stderr, r.stderr


def test_relative_certificate_paths(smtpgate, backend, pki):
    """Relative certificate paths are relative to the config directory."""
    files = {}
    for name, src in (("tls/mx.pem", pki.cert("mx.test")),
                      ("tls/mx.key", pki.key("mx.test"))):
        with open(src) as f:
            files[name] = f.read()
    g = smtpgate(tls_conf(pki, backend, certs=(), extra="""
        ssl_certificate tls/mx.pem;
        ssl_certificate_key tls/mx.key;"""), files=files)
    with implicit_session(g, pki) as c:
        assert peer_der(c) == der(pki.cert("mx.test"))


@pytest.mark.parametrize("server", [
    "listen 127.0.0.1:@PORTS@ ssl;",
    "listen 127.0.0.1:@PORTS@; starttls on;"], ids=["ssl", "starttls"])
def test_tls_without_certificate_is_a_config_error(tmp_path, backend,
                                                   server):
    """TLS asked for with no ssl_certificate fails `-t`, and says why."""
    text = gatelib.conf(backend=backend, listen=(), server=indent(
        server.replace("; ", ";\n")))
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    assert "ssl_certificate" in r.stderr, r.stderr


# -- SNI ----------------------------------------------------------------------


SNI_SERVERS = (
    ("alt.test", "alt.test"),
    ("wild.test *.wild.test", "wild.test"),
    ("re.test ~^re[0-9]+[.]test$", "re.test"),
)


def sni_conf(pki, backend, default=None, alt_extra=""):
    """mx.test first, then alt.test, *.wild.test and a regex name, all on
    the same two listeners; `default` names the default_server."""
    def listens(name):
        d = " default_server" if name == default else ""
        return (f"listen {pkilib.STARTTLS_LISTEN}{d};\n"
                f"listen {pkilib.IMPLICIT_LISTEN}{d};\n")
    servers = []
    for names, cert in SNI_SERVERS:
        extra = alt_extra if cert == "alt.test" else ""
        servers.append(indent(
            listens(cert) + "protocol smtp;\n"
            f"server_name {names};\nstarttls on;\n"
            + cert_directives(pki, cert) + "\n" + extra))
    return tls_conf(pki, backend, listen=(
        pkilib.STARTTLS_LISTEN + (" default_server" if default == "mx.test"
                                  else ""),
        pkilib.IMPLICIT_LISTEN + (" default_server" if default == "mx.test"
                                  else "")), servers=servers)


SNI_CASES = [
    ("mx.test", "mx.test", "mx.test"),
    ("alt.test", "alt.test", "alt.test"),
    ("host.wild.test", "wild.test", "wild.test"),
    ("re42.test", "re.test", "re.test"),
    ("unknown.test", "mx.test", "mx.test"),
]


@pytest.mark.parametrize("sni,cert,greeting", SNI_CASES,
                         ids=[c[0] for c in SNI_CASES])
def test_sni_starttls_picks_certificate(smtpgate, backend, pki, sni, cert,
                                        greeting):
    """s_client -starttls smtp -servername: certificate and EHLO name."""
    g = smtpgate(sni_conf(pki, backend))
    rc, out = s_client("-connect", f"127.0.0.1:{g.port}", "-starttls", "smtp",
                       "-servername", sni, "-CAfile", pki.ca,
                       stdin=b"EHLO client.test\r\nQUIT\r\n")
    assert subject_line(pki, cert) in out, out
    assert "issuer=" + pki.subject("ca") in out, out
    assert "Verify return code: 0 (ok)" in out, out
    assert f"250-{greeting}\r\n" in out or f"250-{greeting}\n" in out, out


@pytest.mark.parametrize("sni,cert,greeting", SNI_CASES,
                         ids=[c[0] for c in SNI_CASES])
def test_sni_implicit_picks_server(smtpgate, backend, pki, sni, cert,
                                   greeting):
    """On an ssl listener SNI picks the certificate and the greeting name."""
    g = smtpgate(sni_conf(pki, backend))
    ctx = pki.client_context(check_hostname=False)
    with implicit_session(g, pki, sni=sni, context=ctx) as c:
        assert peer_der(c) == der(pki.cert(cert))
        assert c.greeting_reply.raw == \
            f"220 {greeting} ESMTP ready\r\n".encode()
        assert c.ehlo().lines[0] == greeting


def test_no_sni_gets_first_server(smtpgate, backend, pki):
    """Without SNI the first server answers: its certificate and name."""
    g = smtpgate(sni_conf(pki, backend))
    rc, out = s_client("-connect", f"127.0.0.1:{g.ports['PORTS']}",
                       "-noservername", "-CAfile", pki.ca)
    assert subject_line(pki, "mx.test") in out, out
    assert "220 mx.test ESMTP ready" in out, out


def test_default_server_answers_without_sni(smtpgate, backend, pki):
    """default_server answers no SNI and unknown names; others by name."""
    g = smtpgate(sni_conf(pki, backend, default="alt.test"))
    ctx = pki.client_context(check_hostname=False)
    for sni, name in ((None, "alt.test"), ("unknown.test", "alt.test"),
                      ("mx.test", "mx.test")):
        with implicit_session(g, pki, sni=sni, context=ctx) as c:
            assert peer_der(c) == der(pki.cert(name)), sni
            assert c.greeting_reply.raw == \
                f"220 {name} ESMTP ready\r\n".encode(), sni
    with smtp.RawSmtp("127.0.0.1", g.port) as c:
        assert c.greeting().raw == b"220 alt.test ESMTP ready\r\n"


def test_sni_server_settings_apply(smtpgate, backend, pki):
    """The SNI-chosen server's ssl_verify_client applies."""
    g = smtpgate(sni_conf(pki, backend, alt_extra=f"""
        ssl_verify_client on;
        ssl_client_certificate {pki.ca};"""))
    ctx = pki.client_context(check_hostname=False)
    port = g.ports["PORTS"]
    outcome, what = pkilib.handshake_outcome("127.0.0.1", port, ctx,
                                             "mx.test")
    assert outcome == "ok", what
    outcome, what = pkilib.handshake_outcome("127.0.0.1", port, ctx,
                                             "alt.test")
    assert outcome == "refused", what
    with_cert = pki.client_context("alice", check_hostname=False)
    outcome, what = pkilib.handshake_outcome("127.0.0.1", port, with_cert,
                                             "alt.test")
    assert outcome == "ok", what


def test_sni_with_a_control_character_picks_no_server(smtpgate, backend,
                                                       pki):
    """A name that is no host name (here a 0x01 byte, which *.wild.test
    would match) chooses nothing and is not written into the log."""
    g = smtpgate(sni_conf(pki, backend).replace("error_log logs/error.log "
                                                "info;", "error_log "
                                                "logs/error.log debug;"))
    mark = g.log_mark()
    rc, out = s_client("-connect", f"127.0.0.1:{g.ports['PORTS']}",
                       "-servername", "host\x01.wild.test", "-CAfile",
                       pki.ca)
    assert subject_line(pki, "mx.test") in out, out
    assert "220 mx.test ESMTP ready" in out, out
    g.wait_log(r"TLS SNI with a space, control or non-ASCII character "
               r"ignored", since=mark)
    assert "\x01" not in g.log_since(mark)


def test_sni_regex_name_as_in_nginx(smtpgate, backend, pki):
    """A regex server_name written as in nginx (\\d, \\.) matches."""
    body = indent(f"""
        listen {pkilib.IMPLICIT_LISTEN};
        protocol smtp;
        server_name re.test ~^re\\d+\\.test$;
        """ + cert_directives(pki, "re.test"))
    g = smtpgate(tls_conf(pki, backend, listen=(pkilib.IMPLICIT_LISTEN,),
                          servers=[body]))
    ctx = pki.client_context(check_hostname=False)
    with implicit_session(g, pki, sni="re42.test", context=ctx) as c:
        assert c.greeting_reply.raw == b"220 re.test ESMTP ready\r\n"
        assert peer_der(c) == der(pki.cert("re.test"))


# -- client certificates ----------------------------------------------------


CLIENT_CERT_CASES = [
    ("on", None, "refused"),
    ("on", "alice", "ok"),
    ("on", "mallory", "refused"),
    ("optional", None, "ok"),
    ("optional", "alice", "ok"),
    ("optional", "mallory", "refused"),
    ("off", "mallory", "ok"),
]


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize("verify,cert,expected", CLIENT_CERT_CASES,
                         ids=[f"{v}-{c or 'none'}"
                              for v, c, _ in CLIENT_CERT_CASES])
def test_client_certificates(smtpgate, backend, pki, verify, cert, expected,
                             mode):
    """ssl_verify_client on/optional/off against none/known/unknown CA."""
    g = smtpgate(tls_conf(pki, backend, extra=f"""
        ssl_verify_client {verify};
        ssl_client_certificate {pki.ca};"""))
    ctx = pki.client_context(cert)
    port = g.port if mode == "starttls" else g.ports["PORTS"]
    outcome, what = pkilib.handshake_outcome(
        "127.0.0.1", port, ctx, "mx.test", starttls=(mode == "starttls"))
    assert outcome == expected, what


def test_unknown_ca_client_certificate_is_logged(smtpgate, backend, pki):
    """A refused client certificate is logged; CA names are sent."""
    g = smtpgate(tls_conf(pki, backend, extra=f"""
        ssl_verify_client on;
        ssl_client_certificate {pki.ca};"""))
    mark = g.quiet_log_mark()
    ctx = pki.client_context("mallory")
    outcome, what = pkilib.handshake_outcome("127.0.0.1", g.ports["PORTS"],
                                             ctx, "mx.test")
    assert outcome == "refused", what
    g.wait_log(HANDSHAKE_FAILED, since=mark)
    rc, out = s_client("-connect", f"127.0.0.1:{g.ports['PORTS']}",
                       "-servername", "mx.test", "-CAfile", pki.ca)
    assert "Acceptable client certificate CA names" in out, out
    names = out.split("Acceptable client certificate CA names", 1)[1]
    assert "CN = smtpgate test CA" in names[:400], out


def test_revoked_client_certificate(smtpgate, backend, pki):
    """ssl_crl: bob's revoked certificate is refused, alice's accepted."""
    g = smtpgate(tls_conf(pki, backend, extra=f"""
        ssl_verify_client on;
        ssl_client_certificate {pki.ca};
        ssl_crl {pki.crl};"""))
    port = g.ports["PORTS"]
    for cert, expected in (("bob", "refused"), ("alice", "ok")):
        outcome, what = pkilib.handshake_outcome(
            "127.0.0.1", port, pki.client_context(cert), "mx.test")
        assert outcome == expected, (cert, what)


# -- session resumption -----------------------------------------------------


RESUMPTION_CASES = [
    ("tickets-1.3", "", "-tls1_3", True),
    ("tickets-1.2", "", "-tls1_2", True),
    ("cache-1.2", "ssl_session_cache builtin:1000; ssl_session_tickets off;",
     "-tls1_2", True),
    ("cache-1.3", "ssl_session_cache builtin; ssl_session_tickets off;",
     "-tls1_3", True),
    ("shared-1.2", "ssl_session_cache shared:TLS:1m; "
     "ssl_session_tickets off;", "-tls1_2", True),
    ("off-1.2", "ssl_session_cache off; ssl_session_tickets off;",
     "-tls1_2", False),
    ("none-1.2", "ssl_session_cache none; ssl_session_tickets off;",
     "-tls1_2", False),
    ("off-1.3", "ssl_session_cache off; ssl_session_tickets off;",
     "-tls1_3", False),
]


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize("extra,version,reused",
                         [c[1:] for c in RESUMPTION_CASES],
                         ids=[c[0] for c in RESUMPTION_CASES])
def test_session_resumption(smtpgate, backend, pki, tmp_path, extra, version,
                            reused, mode):
    """s_client -sess_out/-sess_in: Reused with tickets or cache, else New."""
    g = smtpgate(tls_conf(pki, backend, extra=extra.replace("; ", ";\n")))
    sess = str(tmp_path / "session.pem")
    if mode == "starttls":
        target = ["-connect", f"127.0.0.1:{g.port}", "-starttls", "smtp"]
        stdin = b"EHLO client.test\r\nQUIT\r\n"
    else:
        target = ["-connect", f"127.0.0.1:{g.ports['PORTS']}"]
        stdin = b"QUIT\r\n"
    common = target + [version, "-servername", "mx.test", "-CAfile", pki.ca,
                       "-verify_return_error"]
    rc, out = s_client(*common, "-sess_out", sess, stdin=stdin)
    assert "221 2.0.0 Bye" in out, out
    assert session_line(out).startswith("New, "), out
    if not reused and not os.path.exists(sess):
        return                  # nothing resumable was even offered
    rc, out = s_client(*common, "-sess_in", sess, stdin=stdin)
    assert "221 2.0.0 Bye" in out, out
    expected = "Reused, " if reused else "New, "
    assert session_line(out).startswith(expected), out


def test_session_resumption_python(smtpgate, backend, pki):
    """A TLSv1.3 ticket from one connection resumes the next."""
    g = smtpgate(tls_conf(pki, backend))
    ctx = pki.client_context()
    with implicit_session(g, pki, context=ctx) as c:
        c.ehlo()                    # reading makes the ticket arrive
        session = c.tls.session
    assert session is not None
    c = TlsSmtp("127.0.0.1", g.ports["PORTS"])
    c.tls = c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.test",
                                     session=session)
    with c:
        assert c.greeting().code == 220
        assert c.tls.session_reused
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).raw == AUTH_OK


@pytest.mark.parametrize("compact", ["on", "off"])
@pytest.mark.parametrize("mode", ["tickets", "shared-cache"])
def test_resumption_across_workers(smtpgate, backend, pki, mode, compact):
    """With two workers every later connection resumes the session, also
    when the clients close without close_notify (an end of stream, not
    an error that would take the session out of the cache), with the
    records in OpenSSL's hands or in smtpgate's."""
    extra = "" if mode == "tickets" else \
        "ssl_session_cache shared:TLS:1m;\nssl_session_tickets off;"
    extra += f"\nssl_compact_state {compact};"
    g = smtpgate(tls_conf(pki, backend, workers=2, extra=extra))
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with implicit_session(g, pki, context=ctx) as c:
        session = c.tls.session
    reused = []
    for _ in range(10):
        c = TlsSmtp("127.0.0.1", g.ports["PORTS"])
        with c:
            c.tls = c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.test",
                                             session=session)
            assert c.greeting().code == 220
            reused.append(c.tls.session_reused)
    assert all(reused), reused


TICKET_ARRIVED = "Post-Handshake New Session Ticket arrived"


@pytest.mark.parametrize("extra,tickets", [
    ("", 1),
    ("ssl_conf_command NumTickets 3;", 3),
    ("ssl_session_tickets off; ssl_session_cache builtin;", 1),
    ("ssl_session_tickets off;", 0),
], ids=["default", "NumTickets-3", "stateful", "off"])
def test_tls13_tickets_per_handshake(smtpgate, backend, pki, extra, tickets):
    """A TLS 1.3 handshake brings one ticket unless ssl_conf_command
    NumTickets asks for more, and none when nothing could resume."""
    g = smtpgate(tls_conf(pki, backend, extra=extra))
    rc, out = s_client("-connect", f"127.0.0.1:{g.ports['PORTS']}",
                       "-tls1_3", "-servername", "mx.test", "-CAfile", pki.ca,
                       "-verify_return_error")
    assert "221 2.0.0 Bye" in out, out
    assert out.count(TICKET_ARRIVED) == tickets, out


def test_listen_parameters_with_ssl(smtpgate, backend, pki):
    """ssl combines with backlog= and reuseport on one listen line."""
    g = smtpgate(tls_conf(pki, backend, listen=(
        pkilib.STARTTLS_LISTEN + " backlog=64",
        pkilib.IMPLICIT_LISTEN + " backlog=32 reuseport")))
    with implicit_session(g, pki) as c:
        assert c.greeting_reply.raw == b"220 mx.test ESMTP ready\r\n"
    with starttls_session(g, pki) as c:
        assert c.ehlo().lines[0] == "mx.test"


# -- reload -----------------------------------------------------------------


@pytest.mark.time_limit(180)
def test_reload_swaps_certificate(smtpgate, backend, pki):
    """Reload: new connections get the new cert, an old session delivers."""
    g = smtpgate(tls_conf(pki, backend))
    old = g.workers()
    c = authed_starttls(g, pki)
    assert peer_der(c) == der(pki.cert("mx.test"))
    g.reload(tls_conf(pki, backend, certs=("mx.test-ec",)))
    new_der = der(pki.cert("mx.test-ec"))

    def new_cert_served():
        with implicit_session(g, pki) as n:
            return peer_der(n) == new_der
    net.wait_until(new_cert_served, 60, what="the new certificate")
    with starttls_session(g, pki) as n:
        assert peer_der(n) == new_der
    msg = make_message(30000, seed=5)
    with c:
        assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
        assert c.cmd("QUIT").code == 221     # the backend's, relayed
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, msg)
    net.wait_until(lambda: not set(g.workers()) & set(old), 60,
                   what=f"old workers {old} to exit")


def test_reload_with_missing_certificate_keeps_old(smtpgate, backend, pki):
    """Reload with a missing certificate: error, old cert still served."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.log_mark()
    missing = pki.path("no-such-cert.pem")
    g.reload(tls_conf(pki, backend, certs=(), server_name="mx2.test",
                      extra=f"""
        ssl_certificate {missing};
        ssl_certificate_key {pki.key("mx.test")};"""))
    g.wait_log(re.escape(missing), since=mark)
    with implicit_session(g, pki) as c:
        assert peer_der(c) == der(pki.cert("mx.test"))
        assert c.greeting_reply.raw == b"220 mx.test ESMTP ready\r\n"


# -- sessions do not cross servers --------------------------------------------


CROSS_CASES = [
    ("tickets-1.3", "", "-tls1_3"),
    ("tickets-1.2", "", "-tls1_2"),
    ("shared-1.2", "ssl_session_cache shared:X:1m; ssl_session_tickets off;",
     "-tls1_2"),
    ("shared-1.3", "ssl_session_cache shared:X:1m; ssl_session_tickets off;",
     "-tls1_3"),
]


@pytest.mark.parametrize("extra,version", [c[1:] for c in CROSS_CASES],
                         ids=[c[0] for c in CROSS_CASES])
def test_session_from_open_server_cannot_skip_client_certificate(
        smtpgate, backend, pki, tmp_path, extra, version):
    """Two servers share the implicit-TLS address; alt.test requires a
    client certificate.  A session made with mx.test (no certificate) and
    offered under SNI alt.test must never get alt.test's greeting."""
    conf = sni_conf(pki, backend, alt_extra=f"""
        ssl_verify_client on;
        ssl_client_certificate {pki.ca};""")
    conf = conf.replace("mail {\n", "mail {\n" + indent(extra) + "\n", 1)
    g = smtpgate(conf)
    sess = str(tmp_path / "session.pem")
    common = ["-connect", f"127.0.0.1:{g.ports['PORTS']}", version,
              "-CAfile", pki.ca]
    rc, out = s_client(*common, "-servername", "mx.test", "-sess_out", sess)
    assert "220 mx.test ESMTP ready" in out, out
    if not os.path.exists(sess):
        return
    rc, out = s_client(*common, "-servername", "alt.test", "-sess_in", sess)
    assert "220 alt.test" not in out, out


def test_session_resumes_on_its_own_sni_server(smtpgate, backend, pki,
                                               tmp_path):
    """No false alarm: a session made under alt.test with a client
    certificate resumes under alt.test."""
    conf = sni_conf(pki, backend, alt_extra=f"""
        ssl_verify_client on;
        ssl_client_certificate {pki.ca};""")
    g = smtpgate(conf)
    sess = str(tmp_path / "session.pem")
    common = ["-connect", f"127.0.0.1:{g.ports['PORTS']}", "-tls1_3",
              "-CAfile", pki.ca, "-servername", "alt.test",
              "-cert", pki.path("alice.pem"), "-key", pki.path("alice.key")]
    rc, out = s_client(*common, "-sess_out", sess)
    assert "220 alt.test ESMTP ready" in out, out
    rc, out = s_client(*common, "-sess_in", sess)
    assert session_line(out).startswith("Reused, "), out
    assert "220 alt.test ESMTP ready" in out, out
