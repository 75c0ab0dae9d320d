"""ssl_greeting_in_handshake: over implicit TLS 1.3 the 220 greeting
leaves with the server's first handshake flight (0.5-RTT data, RFC 8446
2 and 4.4.4), so a client has it one round trip sooner; and the
listening socket of an implicit-TLS (or PROXY) address hands a
connection over only once the client has sent something
(TCP_DEFER_ACCEPT).

The client is Python's ssl over memory BIOs, so that the test decides
when each of its handshake records leaves: the greeting must be readable
before the client's Finished has been sent at all.  Real clients
(smtplib, swaks, openssl s_client, msmtp) run over the same listeners in
t/test_tls.py, t/test_tls_clients.py and t/test_tls_compact.py, where
this is the default.
"""

import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from lib import net, tls13rec
from lib import pki as pkilib
from lib.pki import cert_directives, implicit_session, indent, tls_conf
from lib.smtp import RawSmtp, plain_token
from lib.users import password

pytestmark = pytest.mark.skipif(not pkilib.tls_built(),
                                reason="smtpgate built without TLS")

GREETING = b"220 mx.test ESMTP ready\r\n"
AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
EARLY_LOG = "greeting sent with the TLS handshake"


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


class Client:
    """An implicit-TLS client whose handshake records are sent by hand."""

    def __init__(self, g, pki, *, sni="mx.test", version="TLSv1_3",
                 context=None, session=None):
        ctx = context or pki.client_context(check_hostname=False)
        ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion,
                                                            version)
        self.sock = socket.create_connection(("127.0.0.1",
                                              g.ports["PORTS"]), timeout=10)
        self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outg, server_hostname=sni,
                                session=session)

    def close(self):
        self.sock.close()

    def flight(self):
        """Send the ClientHello (again after a HelloRetryRequest) and take
        in what the server answers until the client's side of the
        handshake is done; the client's last flight (its Finished) is
        left unsent, in outg."""
        while True:
            try:
                self.obj.do_handshake()
                return
            except ssl.SSLWantReadError:
                data = self.outg.read()
                if data:
                    self.sock.sendall(data)
                data = self.sock.recv(65536)
                assert data, "closed during the handshake"
                self.inc.write(data)

    def plaintext(self, wait=1.0):
        """What the server sent as application data so far, waiting up to
        `wait` seconds for the first of it."""
        got = b""
        deadline = time.monotonic() + wait
        while True:
            try:
                data = self.obj.read(65536)
                if data:
                    got += data
                    continue
                return got                # close_notify
            except ssl.SSLWantReadError:
                pass
            if got.endswith(b"\r\n"):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return got
            finally:
                self.sock.settimeout(10)
            if not data:
                return got
            self.inc.write(data)

    def send(self, text=b""):
        """The client's pending handshake bytes, then `text` sealed."""
        if text:
            self.obj.write(text)
        self.sock.sendall(self.outg.read())

    def reply(self):
        got = self.plaintext(wait=10)
        assert got.endswith(b"\r\n"), got
        return got


def smtp_through(c):
    """EHLO, AUTH and QUIT through a Client whose greeting was read."""
    c.send(b"EHLO client.test\r\n")
    assert c.reply().startswith(b"250-mx.test")
    c.send(f"AUTH PLAIN {plain_token('alice', password('alice'))}\r\n"
           .encode())
    assert c.reply() == AUTH_OK
    c.send(b"QUIT\r\n")
    assert c.reply().startswith(b"221 ")


def early_session(g, c):
    """A whole session through Client c whose greeting must come before
    its Finished; the session's 'TLS established' line."""
    mark = g.log_mark()
    try:
        c.flight()
        assert c.plaintext() == GREETING
        c.send()
        smtp_through(c)
    finally:
        c.close()
    g.wait_log(EARLY_LOG, since=mark)
    return g.wait_log(r"TLS established: [^\n]*", since=mark).group(0)


def late_session(g, c, quiet=True):
    """A whole session through Client c whose greeting must wait for its
    Finished (quiet: nothing may come before the client's last flight is
    sent; in TLS 1.2 that flight ends before the server's Finished); the
    session's 'TLS established' line."""
    mark = g.log_mark()
    try:
        c.flight()
        if quiet:
            assert c.plaintext(wait=0.5) == b""
        c.send()
        assert c.reply() == GREETING
        smtp_through(c)
    finally:
        c.close()
    line = g.wait_log(r"TLS established: [^\n]*", since=mark).group(0)
    assert EARLY_LOG not in g.log_since(mark)
    return line


@pytest.mark.parametrize("compact", ["on", "off"])
def test_greeting_before_the_clients_finished(smtpgate, backend, pki,
                                              compact):
    """The greeting is readable before the client has sent its Finished,
    and the session goes on over the same keys (compact state counts the
    greeting's record in its sequence numbers)."""
    g = smtpgate(tls_conf(pki, backend, level="debug",
                          extra=f"ssl_compact_state {compact};"))
    line = early_session(g, Client(g, pki))
    assert ("compact state" in line) == (compact == "on"), line


def test_finished_and_first_command_together(smtpgate, backend, pki):
    """A client that sends its Finished and EHLO in one segment, as one
    that has the greeting early may: the EHLO is answered, with the
    session ticket in front of it."""
    g = smtpgate(tls_conf(pki, backend))
    c = Client(g, pki)
    try:
        c.flight()
        assert c.plaintext() == GREETING
        c.send(b"EHLO client.test\r\n")
        assert c.reply().startswith(b"250-mx.test")
        c.send(b"QUIT\r\n")
        assert c.reply().startswith(b"221 ")
    finally:
        c.close()


def test_off_greets_after_the_handshake(smtpgate, backend, pki):
    """ssl_greeting_in_handshake off: nothing is said until the client's
    Finished is in."""
    g = smtpgate(tls_conf(pki, backend, level="debug",
                          extra="ssl_greeting_in_handshake off;"))
    late_session(g, Client(g, pki))


def test_tls12_greets_after_the_handshake(smtpgate, backend, pki):
    """TLS 1.2 has no 0.5-RTT: the server's Finished comes last in a full
    handshake, and the greeting right behind it; sessions work."""
    g = smtpgate(tls_conf(pki, backend, level="debug"))
    line = late_session(g, Client(g, pki, version="TLSv1_2"), quiet=False)
    assert "TLSv1.2" in line, line


def test_hello_retry_request(smtpgate, backend, pki):
    """A group the client offered no key share for (secp384r1 here) costs
    a HelloRetryRequest, after which OpenSSL stops with no key to write
    under: the greeting waits for the handshake's end, and the session
    works."""
    g = smtpgate(tls_conf(pki, backend, level="debug",
                          extra="ssl_ecdh_curve secp384r1;"))
    late_session(g, Client(g, pki))
    # openssl s_client, which offers x25519 only, the same way
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{g.ports['PORTS']}",
         "-tls1_3", "-servername", "mx.test", "-CAfile", pki.ca,
         "-groups", "X25519:secp384r1", "-quiet"],
        input=b"QUIT\r\n", capture_output=True, timeout=30)
    assert GREETING in out.stdout, out


@pytest.mark.parametrize("in_handshake", ["on", "off"])
def test_greeting_delay_keeps_its_pause(smtpgate, backend, pki,
                                        in_handshake):
    """smtp_greeting_delay: the greeting is held back after the handshake,
    and a client talking first is refused, also when its command came in
    the same segment as its Finished (read with it, so no event comes
    for it)."""
    g = smtpgate(tls_conf(pki, backend, level="debug",
                          extra="smtp_greeting_delay 1s;\n"
                                f"ssl_greeting_in_handshake {in_handshake};"))
    mark = g.log_mark()
    c = Client(g, pki)
    try:
        c.flight()
        assert c.plaintext(wait=0.3) == b""
        c.send(b"EHLO eager.test\r\n")
        assert c.reply().startswith(b"503 5.5.0 Talking before the greeting")
    finally:
        c.close()
    g.wait_log("client talked before the greeting", since=mark)
    assert EARLY_LOG not in g.log_since(mark)


def test_client_certificates_wait_for_the_handshake(smtpgate, backend, pki):
    """ssl_verify_client optional: the session may yet be refused for its
    certificate, so the greeting waits for the handshake's end."""
    g = smtpgate(tls_conf(pki, backend, level="debug",
                          extra=f"ssl_client_certificate {pki.ca};\n"
                                "ssl_verify_client optional;"))
    late_session(g, Client(g, pki, context=pki.client_context(
        "alice", check_hostname=False)))


def two_servers(pki, backend, alt_extra=""):
    alt = indent(f"listen {pkilib.STARTTLS_LISTEN};\n"
                 f"listen {pkilib.IMPLICIT_LISTEN};\n"
                 "protocol smtp;\nserver_name alt.test;\n"
                 + cert_directives(pki, "alt.test") + "\n" + alt_extra)
    return tls_conf(pki, backend, level="debug", servers=[alt])


def test_the_greeting_of_the_server_sni_chose(smtpgate, backend, pki):
    """The greeting in the handshake is that of the server the client's
    SNI chose; one with it off greets after the handshake."""
    g = smtpgate(two_servers(pki, backend))
    c = Client(g, pki, sni="alt.test")
    try:
        c.flight()
        assert c.plaintext() == b"220 alt.test ESMTP ready\r\n"
    finally:
        c.close()

    g = smtpgate(two_servers(pki, backend, "ssl_greeting_in_handshake off;"))
    c = Client(g, pki, sni="alt.test")
    try:
        c.flight()
        assert c.plaintext(wait=0.5) == b""
        c.send()
        assert c.reply() == b"220 alt.test ESMTP ready\r\n"
    finally:
        c.close()
    c = Client(g, pki, sni="mx.test")
    try:
        c.flight()
        assert c.plaintext() == GREETING
    finally:
        c.close()


def test_resumed_session_greets_in_the_handshake(smtpgate, backend, pki):
    """A session resumed from its ticket (no certificate, no key exchange
    but the PSK's) has the greeting in the handshake too, and goes on
    in compact state with the right sequence numbers."""
    g = smtpgate(tls_conf(pki, backend, level="debug"))
    ctx = pki.client_context(check_hostname=False)
    c = Client(g, pki, context=ctx)
    try:
        c.flight()
        assert c.plaintext() == GREETING
        c.send(b"EHLO client.test\r\n")
        assert c.reply().startswith(b"250-mx.test")   # the ticket came too
        session = c.obj.session
        c.send(b"QUIT\r\n")
        assert c.reply().startswith(b"221 ")
    finally:
        c.close()
    assert session is not None and session.has_ticket
    c = Client(g, pki, context=ctx, session=session)
    line = early_session(g, c)
    assert c.obj.session_reused
    assert "compact state" in line, line


def test_session_of_another_server_hears_nothing(smtpgate, backend, pki,
                                                 tmp_path):
    """A session made with mx.test offered under SNI alt.test is refused
    before a word is said: not even mx.test's greeting leaves with the
    flight."""
    g = smtpgate(two_servers(pki, backend))
    sess = str(tmp_path / "session.pem")
    common = ["openssl", "s_client", "-connect",
              f"127.0.0.1:{g.ports['PORTS']}", "-tls1_3", "-CAfile", pki.ca,
              "-ign_eof"]
    out = subprocess.run(common + ["-servername", "mx.test", "-sess_out",
                                   sess], input=b"QUIT\r\n",
                         capture_output=True, timeout=60).stdout
    assert GREETING in out, out
    mark = g.log_mark()
    out = subprocess.run(common + ["-servername", "alt.test", "-sess_in",
                                   sess], input=b"QUIT\r\n",
                         capture_output=True, timeout=60).stdout
    assert b"220 " not in out, out
    g.wait_log(r'TLS session of server "mx.test" resumed under "alt.test"',
               since=mark)


@pytest.mark.skipif(not shutil.which("msmtp"), reason="msmtp not installed")
@pytest.mark.parametrize("priority", ["NORMAL:-VERS-ALL:+VERS-TLS1.3",
                                      "NORMAL:-VERS-ALL:+VERS-TLS1.2"])
def test_gnutls_client(smtpgate, backend, pki, tmp_path, priority):
    """msmtp, a GnuTLS client, over implicit TLS: with TLS 1.3 it takes
    the greeting that came with the handshake, and the message arrives."""
    g = smtpgate(tls_conf(pki, backend, level="debug"))
    mark = g.log_mark()
    rc = tmp_path / "msmtprc"
    rc.write_text("\n".join([
        "account gate", "host 127.0.0.1", f"port {g.ports['PORTS']}",
        "syslog off", "timeout 60", "domain client.test",
        "from a@example.org", "tls on", "tls_starttls off",
        f"tls_trust_file {pki.ca}", "tls_host_override mx.test",
        f"tls_priorities {priority}", "auth plain", "user alice",
        f"passwordeval echo {password('alice')}"]) + "\n")
    os.chmod(rc, 0o600)
    msg = b"Subject: over implicit TLS\r\n\r\nfrom GnuTLS\r\n"
    p = subprocess.run(["msmtp", "-C", str(rc), "-a", "gate",
                        "b@example.org"], input=msg, capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p
    (m,) = backend.wait_messages(1)
    assert m.content.endswith(msg)
    early = EARLY_LOG in g.wait_log(r"TLS established", since=mark).string
    assert early == ("TLS1.3" in priority), g.log_since(mark)


def test_client_leaving_after_the_greeting(smtpgate, backend, pki):
    """A client that reads the greeting and leaves without its Finished,
    or answers the flight with garbage: the handshake fails with its
    reason in the log, and the server goes on serving."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.log_mark()
    c = Client(g, pki)
    try:
        c.flight()
        assert c.plaintext() == GREETING
    finally:
        c.close()
    g.wait_log(r"TLS handshake failed: the client closed the connection",
               since=mark)

    mark = g.log_mark()
    c = Client(g, pki)
    try:
        c.flight()
        assert c.plaintext() == GREETING
        c.sock.sendall(b"\x16\x03\x03\x00\x05garbage and more" * 4)
        c.sock.settimeout(10)
        while c.sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    finally:
        c.close()
    g.wait_log(r"TLS handshake failed: ", since=mark)
    with implicit_session(g, pki) as s:
        assert s.ehlo().code == 250


# -- TCP_DEFER_ACCEPT ------------------------------------------------------


def syn_recv(port):
    """The connections to port the kernel holds back: SYN-RECV on the
    server's side while the client has them established."""
    out = subprocess.run(["ss", "-Htn", "state", "syn-recv",
                          f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_silent_client_is_held_by_the_kernel(smtpgate, backend, pki):
    """On an implicit-TLS address a connection that has sent nothing yet
    is not handed to smtpgate (no 'client connected'): it sits in the
    kernel until its ClientHello comes; then the session runs.  One that
    stays silent is handed over after about a second and meets
    ssl_handshake_timeout."""
    g = smtpgate(tls_conf(pki, backend, extra="ssl_handshake_timeout 1s;"))
    port = g.ports["PORTS"]
    mark = g.log_mark()
    s = net.connect("127.0.0.1", port, 5)
    try:
        time.sleep(0.4)
        assert syn_recv(port), "the connection is not held back"
        assert "client connected" not in g.log_since(mark)
        ctx = pki.client_context()
        with ctx.wrap_socket(s, server_hostname="mx.test") as t:
            assert t.recv(512) == GREETING
            t.sendall(b"QUIT\r\n")
            assert t.recv(512).startswith(b"221 ")
    finally:
        s.close()
    g.wait_log("client connected", since=mark)

    mark = g.log_mark()
    s = net.connect("127.0.0.1", port, 5)
    try:
        g.wait_log("client connected", since=mark, timeout=10)
        g.wait_log(r"TLS handshake timed out \(ssl_handshake_timeout\)",
                   since=mark, timeout=10)
        s.settimeout(10)
        assert s.recv(512) == b""
    finally:
        s.close()


def test_plaintext_address_is_not_held(smtpgate, backend, pki):
    """Where the server speaks first there is nothing to wait for: the
    STARTTLS address greets a silent client at once."""
    g = smtpgate(tls_conf(pki, backend))
    with RawSmtp("127.0.0.1", g.port, timeout=5) as c:
        assert c.greeting().code == 220
        assert not syn_recv(g.port)
