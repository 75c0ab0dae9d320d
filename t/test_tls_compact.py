"""ssl_compact_state: after a TLS 1.3 or TLS 1.2 (AEAD) handshake
smtpgate frees OpenSSL's per-connection state and seals and opens the
records itself.

Real clients (Python's ssl, `openssl s_client`) talk to it through every
TLS 1.3 suite and every TLS 1.2 AEAD suite, with KeyUpdate both ways,
close_notify both ways, and a TLS 1.2 renegotiation refused; CBC suites,
client certificates and `ssl_compact_state off` keep OpenSSL's record
layer.  Forged and truncated records are written on the raw socket
under a real handshake (Python's ssl.SSLObject over memory BIOs: no client
sends such records on purpose).  t/unit/test_ssl_record.c and
fuzz/fuzz_ssl_record.c cover the record reader byte by byte.
"""

import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from lib import pki as pkilib
from lib import memscan, net, tls13rec
from lib.smtp import plain_token
from lib.messages import make_message
from lib.pki import (cert_directives, implicit_session, indent,
                     starttls_session, tls_conf)
from lib.users import password

pytestmark = pytest.mark.skipif(not pkilib.tls_built(),
                                reason="smtpgate built without TLS")

AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
COMPACT = (r"TLS established: TLSv1\.[23], {}, compact state, "
           r"client: 127\.0\.0\.1")
SUITES = [("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"),
          ("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"),
          ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"),
          ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
          ("-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"),
          ("-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305")]


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def established(g, since):
    """The 'TLS established' line of the last session."""
    return g.wait_log(r"TLS established: [^\n]*", since=since).group(0)


@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_a_message_through_compact_state(smtpgate, backend, pki, mode,
                                         version):
    """AUTH and a 3 MB message over TLS arrive byte for byte, and the
    log says the session's TLS ran in compact state."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.log_mark()
    msg = make_message(3 * 1024 * 1024, seed=7)
    opener = starttls_session if mode == "starttls" else implicit_session
    ctx = pki.client_context()
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with opener(g, pki, context=ctx) as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).raw == AUTH_OK
        assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
        assert c.cmd("QUIT").code == 221
        # the server's close_notify is a valid record: unwrap succeeds
        c.tls.unwrap()
    (m,) = backend.wait_messages(1)
    assert m.content == msg
    line = established(g, mark)
    assert re.search(COMPACT.format(r"\S+"), line), line
    assert f"TLSv{version}," in line, line


@pytest.mark.parametrize("version,option,suite", SUITES,
                         ids=[s[2] for s in SUITES])
def test_every_aead_suite(smtpgate, backend, pki, version, option, suite):
    """s_client with each TLS 1.3 suite and each TLS 1.2 AEAD suite: the
    session works end to end and runs in compact state with that suite."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.log_mark()
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{g.port}",
         "-starttls", "smtp", version, option, suite,
         "-servername", "mx.test", "-CAfile", pki.ca, "-verify_return_error",
         "-crlf", "-quiet", "-ign_eof"],
        input=b"EHLO client.test\nNOOP\nQUIT\n", capture_output=True,
        timeout=60)
    out = p.stdout.decode(errors="replace")
    assert "250 2.0.0 OK" in out and "221 2.0.0 Bye" in out, out
    assert re.search(COMPACT.format(suite), established(g, mark))


def test_off_and_where_openssl_keeps_the_connection(smtpgate, backend, pki):
    """A TLS 1.2 CBC suite, a client certificate, and ssl_compact_state
    off: OpenSSL keeps the records, and the sessions work as before."""
    g = smtpgate(tls_conf(pki, backend, extra=(
        f"ssl_verify_client optional;\n"
        f"ssl_client_certificate {pki.ca};")))
    cases = []
    ctx12 = pki.client_context()
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx12.set_ciphers("ECDHE-RSA-AES128-SHA256")
    cases.append(("TLSv1.2", ctx12))
    cases.append(("TLSv1.3", pki.client_context("alice")))
    for version, ctx in cases:
        mark = g.log_mark()
        with starttls_session(g, pki, context=ctx) as c:
            c.ehlo()
            assert c.auth_plain("alice", password("alice")).raw == AUTH_OK
            assert c.cmd("QUIT").code == 221
        line = established(g, mark)
        assert version in line and "compact state" not in line, line
    assert "ECDHE-RSA-AES128-SHA256" in g.error_log()

    g = smtpgate(tls_conf(pki, backend, extra="ssl_compact_state off;"))
    mark = g.log_mark()
    with implicit_session(g, pki) as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).raw == AUTH_OK
    line = established(g, mark)
    assert "TLSv1.3" in line and "compact state" not in line, line


def test_key_update_both_ways(smtpgate, backend, pki):
    """s_client's 'k' (KeyUpdate) and 'K' (KeyUpdate, update requested):
    the session goes on under the new keys, and a request is answered
    with the server's own KeyUpdate before its next reply."""
    g = smtpgate(tls_conf(pki, backend, level="debug"))
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{g.ports['PORTS']}",
         "-tls1_3", "-servername", "mx.test", "-CAfile", pki.ca,
         "-verify_return_error", "-crlf", "-msg"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    chunks = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: p.stdout.read1(65536),
                                          b"")), daemon=True)
    reader.start()
    try:
        # s_client looks at the first byte of each read of its input for
        # a command letter, so each line goes on its own, with pauses (and
        # no QUIT: "Q" is s_client's own quit)
        for line in [b"EHLO client.test\n", b"k\n", b"NOOP\n", b"K\n",
                     b"NOOP\n", b"K\n", b"NOOP\n", b"NOOP\n"]:
            time.sleep(0.4)
            p.stdin.write(line)
            p.stdin.flush()
        # the last reply, before s_client is told to end
        deadline = time.monotonic() + 20
        while b"".join(chunks).count(b"250 2.0.0 OK") < 4 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        p.stdin.close()
        p.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = b"".join(chunks).decode(errors="replace")
    assert out.count("250 2.0.0 OK") == 4, out
    # s_client -msg shows what came in: two KeyUpdates of the server's
    assert len(re.findall(r"<<< TLS 1\.3, Handshake \[length 0005\], "
                          r"KeyUpdate", out)) == 2, out
    log = g.error_log()
    assert len(re.findall(r"TLS KeyUpdate from the client, update "
                          r"requested, client: 127\.0\.0\.1", log)) == 2, log
    assert len(re.findall(r"TLS KeyUpdate from the client, client: "
                          r"127\.0\.0\.1", log)) == 1, log


def test_tls12_renegotiation_refused(smtpgate, backend, pki):
    """s_client's 'R' asks a TLS 1.2 server to renegotiate: refused with
    a no_renegotiation alert, the session ends, and the log says why."""
    g = smtpgate(tls_conf(pki, backend))
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{g.ports['PORTS']}",
         "-tls1_2", "-servername", "mx.test", "-CAfile", pki.ca,
         "-verify_return_error", "-crlf"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        for line in [b"EHLO client.test\n", b"R\n"]:
            time.sleep(0.5)
            p.stdin.write(line)
            p.stdin.flush()
        g.wait_log(r"TLS read failed: the client asked to renegotiate "
                   r"\(refused\).*client: 127\.0\.0\.1")
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = out.decode(errors="replace")
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out
    g.wait_log(r"session closed")


# -- hostile records --------------------------------------------------------


def raw_tls13(g, pki):
    """A TLS 1.3 session over a plain socket: (socket, SSLObject, in BIO,
    out BIO), handshake done, greeting read."""
    ctx = pki.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sock = socket.create_connection(("127.0.0.1", g.ports["PORTS"]),
                                    timeout=10)
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outg, server_hostname="mx.test")

    def pump():
        data = outg.read()
        if data:
            sock.sendall(data)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            inc.write(data)
    pump()
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        try:
            greeting += obj.read(4096)
        except ssl.SSLWantReadError:
            pump()
            inc.write(sock.recv(65536))
    assert greeting.startswith(b"220 "), greeting
    return sock, obj, inc, outg


def read_alert(sock, obj, inc):
    """Read until the server ends the session; the SSL error it raised."""
    while True:
        data = sock.recv(65536)
        if not data:
            return None
        inc.write(data)
        try:
            obj.read(4096)
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError as e:
            return e


@pytest.mark.parametrize("name,record,alert,logged", [
    ("forged", b"\x17\x03\x03\x00\x20" + b"\x41" * 32, "BAD_RECORD_MAC",
     r"TLS read failed: a record did not authenticate \(bad_record_mac\)"),
    ("oversized", b"\x17\x03\x03\x41\x01" + b"\x00" * 64, "RECORD_OVERFLOW",
     r"TLS read failed: a record longer than 2\^14 \+ 256 octets"),
    ("plaintext-handshake", b"\x16\x03\x03\x00\x04\x01\x00\x00\x00",
     "UNEXPECTED_MESSAGE",
     r"TLS read failed: a record of outer type 22 after the handshake"),
])
def test_hostile_records(smtpgate, backend, pki, name, record, alert,
                         logged):
    """Records a client's TLS stack would never send: the server answers
    with the alert RFC 8446 names, closes, and logs why."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.log_mark()
    sock, obj, inc, outg = raw_tls13(g, pki)
    with sock:
        sock.sendall(record)
        e = read_alert(sock, obj, inc)
    assert e is not None and alert in str(e), e
    g.wait_log(logged + r".*client: 127\.0\.0\.1", since=mark)
    g.wait_log(r"session closed", since=mark)


def test_truncated_record(smtpgate, backend, pki):
    """Half a record and then the end of the stream: logged as such."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.log_mark()
    sock, obj, inc, outg = raw_tls13(g, pki)
    obj.write(b"NOOP\r\n")
    rec = outg.read()
    with sock:
        sock.sendall(rec[:len(rec) // 2])
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    g.wait_log(r"TLS read failed: the client closed the connection in the "
               r"middle of a record", since=mark)


def test_records_split_and_joined(smtpgate, backend, pki):
    """Records cut at every byte, and many records in one segment: the
    replies come in order and nothing is lost."""
    g = smtpgate(tls_conf(pki, backend))
    sock, obj, inc, outg = raw_tls13(g, pki)
    with sock:
        for _ in range(20):
            obj.write(b"NOOP\r\n")
        joined = outg.read()
        obj.write(b"NOOP\r\n")
        split = outg.read()
        sock.sendall(joined)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(split)):
            sock.sendall(split[i:i + 1])
            time.sleep(0.002)
        got = b""
        deadline = time.monotonic() + 20
        while got.count(b"250 2.0.0 OK\r\n") < 21:
            assert time.monotonic() < deadline, got
            try:
                got += obj.read(65536)
            except ssl.SSLWantReadError:
                inc.write(sock.recv(65536))
        assert got == b"250 2.0.0 OK\r\n" * 21


@pytest.mark.parametrize("compact", ["on", "off"])
@pytest.mark.parametrize("version,split,early", [
    ("TLSv1_3", True, False),
    ("TLSv1_3", False, True),
    ("TLSv1_3", True, True),
    ("TLSv1_2", True, False),
])
def test_handshake_split_and_joined(smtpgate, backend, pki, compact,
                                    version, split, early):
    """The client's handshake records cut at every byte (smtpgate's
    socket BIO hands OpenSSL what came so far, and waits for the rest),
    and a command in the same segment as the client's Finished (read
    with it, and answered after the greeting): with the records then in
    smtpgate's hands or in OpenSSL's."""
    g = smtpgate(tls_conf(pki, backend,
                          extra=f"ssl_compact_state {compact};"))
    mark = g.log_mark()
    ctx = pki.client_context()
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion,
                                                        version)
    sock = socket.create_connection(("127.0.0.1", g.ports["PORTS"]),
                                    timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outg, server_hostname="mx.test")

    def send(data):
        if not split:
            sock.sendall(data)
            return
        for i in range(len(data)):
            sock.sendall(data[i:i + 1])
            time.sleep(0.001)

    with sock:
        tls13rec.bio_handshake(sock, obj, inc, outg, send)
        def read(n):
            got = b""
            deadline = time.monotonic() + 20
            while len(got) < n:
                assert time.monotonic() < deadline, got
                try:
                    got += obj.read(65536)
                except ssl.SSLWantReadError:
                    data = sock.recv(65536)
                    assert data, got
                    inc.write(data)
            return got

        if early:
            obj.write(b"NOOP\r\n")
        send(outg.read())              # Finished (1.3), and the command
        want = b"220 mx.test ESMTP ready\r\n" + \
            (b"250 2.0.0 OK\r\n" if early else b"")
        assert read(len(want)) == want
        obj.write(b"QUIT\r\n")
        sock.sendall(outg.read())
        assert read(len(b"221 2.0.0 Bye\r\n")) == b"221 2.0.0 Bye\r\n"
    proto = version.replace("_", ".")
    line = established(g, mark)
    assert proto in line, line
    assert ("compact state" in line) == (compact == "on"), line


def two_servers(pki, backend, mx_extra, alt_extra):
    """mx.test (the default) and alt.test on the same two listeners."""
    alt = indent(f"listen {pkilib.STARTTLS_LISTEN};\n"
                 f"listen {pkilib.IMPLICIT_LISTEN};\n"
                 "protocol smtp;\nserver_name alt.test;\nstarttls on;\n"
                 + cert_directives(pki, "alt.test") + "\n" + alt_extra)
    return tls_conf(pki, backend, extra=mx_extra, servers=[alt])


@pytest.mark.parametrize("off", ["mx.test", "alt.test"])
@pytest.mark.parametrize("sni", ["mx.test", "alt.test"])
def test_sni_server_decides(smtpgate, backend, pki, off, sni):
    """The server SNI picks decides, whichever server's context the
    handshake began with: sessions work either way, in compact state
    exactly when that server has it on."""
    off_extra = "ssl_compact_state off;"
    g = smtpgate(two_servers(pki, backend,
                             off_extra if off == "mx.test" else "",
                             off_extra if off == "alt.test" else ""))
    ctx = pki.client_context(check_hostname=False)
    for mode in ("implicit", "starttls"):
        mark = g.log_mark()
        opener = implicit_session if mode == "implicit" else starttls_session
        with opener(g, pki, sni=sni, context=ctx) as c:
            assert c.ehlo().lines[0] == sni
            assert c.auth_plain("alice", password("alice")).raw == AUTH_OK
            assert c.cmd("QUIT").code == 221
        line = established(g, mark)
        assert ("compact state" in line) == (sni != off), line



# -- records that carry nothing ---------------------------------------------


def idle_records(kind, sealer, n):
    """n records of one kind that carry no application data."""
    if kind == "empty":
        return b"".join(sealer.data(b"") for _ in range(n))
    if kind == "user_canceled":
        return b"".join(sealer.seal(21, b"\x01\x5a") for _ in range(n))
    return b"".join(sealer.key_update() for _ in range(n))


@pytest.mark.parametrize("kind", ["empty", "user_canceled", "key_update"])
def test_records_without_data_in_bulk(smtpgate, backend, pki, tmp_path,
                                      kind):
    """Records that carry no data (empty ones, user_canceled alerts,
    KeyUpdates): 32 in a row are taken, the 33rd ends the session with
    unexpected_message, as OpenSSL ends it after 32 empty records.
    Without a limit a client sending them without end holds the worker:
    one read opens them all while more keep coming."""
    g = smtpgate(tls_conf(pki, backend))
    mark = g.log_mark()
    sock, obj, inc, sealer = tls13rec.session(
        g.ports["PORTS"], pki.client_context(), str(tmp_path / "keylog"))
    with sock:
        sock.sendall(idle_records(kind, sealer, 32)
                     + sealer.data(b"NOOP\r\n"))
        assert tls13rec.read_line(sock, obj, inc) == b"250 2.0.0 OK\r\n"
        sock.sendall(idle_records(kind, sealer, 33)
                     + sealer.data(b"NOOP\r\n"))
        got, err = tls13rec.replies(sock, obj, inc)
    assert got == b"", got
    assert "UNEXPECTED_MESSAGE" in str(err), err
    g.wait_log(r"TLS read failed: the client sent more than 32 records in "
               r"a row without data.*client: 127\.0\.0\.1", since=mark)
    g.wait_log(r"session closed", since=mark)



@pytest.mark.skipif(not memscan.can_scan(), reason="reads /proc/PID/mem")
@pytest.mark.parametrize("compact", ["on", "off"])
def test_auth_line_not_left_in_worker_memory(smtpgate, backend, pki,
                                             compact):
    """Records are opened in place, in smtpgate's record buffer or in
    OpenSSL's: once the session has ended, the AUTH PLAIN line the
    client sent is not left there, freed but whole.  (Freed memory
    keeps its bytes longest under AddressSanitizer's quarantine, where
    this test is sharpest.)"""
    g = smtpgate(tls_conf(pki, backend,
                          extra=f"ssl_compact_state {compact};"))
    mark = g.quiet_log_mark()
    line = f"AUTH PLAIN {plain_token('alice', password('alice'))}"
    with implicit_session(g, pki) as c:
        c.ehlo()
        assert c.cmd(line).raw == AUTH_OK
        assert c.cmd("QUIT").code == 221
    net.wait_until(lambda: "session closed" in g.log_since(mark), 30,
                   what="the session closed")
    with g.session():       # a greeting: the worker is past that close
        pass
    (worker,) = g.workers()
    # from "PLAIN": a freed block's first bytes hold the allocator's
    # own data
    found = memscan.find(worker, [line[5:].encode() + b"\r\n"])
    assert not found, found
