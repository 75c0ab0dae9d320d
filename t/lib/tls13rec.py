"""A TLS 1.3 client's records sealed by hand, for tests that need records
no TLS stack sends on purpose (empty ones, alerts, KeyUpdates in bulk).

Python's ssl does the handshake over memory BIOs and writes its traffic
secrets to a key log; from there on this module seals what the client
sends (RFC 8446 5.2, 5.3, 7.1, 7.3) while Python's ssl still opens what
the server sends.
"""

import hashlib
import hmac
import socket
import ssl
import struct

from cryptography.hazmat.primitives.ciphers.aead import (AESGCM,
                                                         ChaCha20Poly1305)

SUITES = {
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, hashlib.sha256),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, hashlib.sha384),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, hashlib.sha256),
}


def expand_label(secret, label, length, digest):
    """HKDF-Expand-Label with an empty context; length <= hash length."""
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", digest).digest()[:length]


class Sealer:
    """Seals the client's application-traffic records."""

    def __init__(self, suite, secret):
        self.aead, self.key_len, self.digest = SUITES[suite]
        self.secret = secret
        self._keys()

    def _keys(self):
        key = expand_label(self.secret, b"key", self.key_len, self.digest)
        self.iv = expand_label(self.secret, b"iv", 12, self.digest)
        self.cipher = self.aead(key)
        self.seq = 0

    def seal(self, inner_type, content, pad=0):
        inner = content + bytes([inner_type]) + b"\x00" * pad
        header = b"\x17\x03\x03" + struct.pack(">H", len(inner) + 16)
        nonce = bytes(a ^ b for a, b in
                      zip(self.iv, self.seq.to_bytes(12, "big")))
        self.seq += 1
        return header + self.cipher.encrypt(nonce, inner, header)

    def data(self, content):
        return self.seal(23, content)

    def key_update(self, requested=False):
        """A KeyUpdate; the records after it are under the next key."""
        rec = self.seal(22, b"\x18\x00\x00\x01" + bytes([int(requested)]))
        self.secret = expand_label(self.secret, b"traffic upd",
                                   len(self.secret), self.digest)
        self._keys()
        return rec


def bio_handshake(sock, obj, inc, outg, send=None):
    """Run obj's handshake (an SSLObject over the BIOs inc and outg)
    across sock; send(data) writes to the socket (default: sendall)."""
    send = send or sock.sendall
    while True:
        try:
            obj.do_handshake()
            return
        except ssl.SSLWantReadError:
            data = outg.read()
            if data:
                send(data)
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            inc.write(data)


def session(port, ctx, keylog, sni="mx.test"):
    """An implicit-TLS session on port: (socket, SSLObject, in BIO,
    Sealer), handshake done, greeting read.  ctx must write its key log
    to keylog (a path, empty before)."""
    ctx.keylog_filename = keylog
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outg, server_hostname=sni)
    bio_handshake(sock, obj, inc, outg)
    data = outg.read()
    if data:
        sock.sendall(data)
    with open(keylog) as f:
        secret = [line.split()[2] for line in f
                  if line.startswith("CLIENT_TRAFFIC_SECRET_0 ")][-1]
    sealer = Sealer(obj.cipher()[0], bytes.fromhex(secret))
    greeting = read_line(sock, obj, inc)
    assert greeting.startswith(b"220 "), greeting
    return sock, obj, inc, sealer


def read_line(sock, obj, inc):
    """Plaintext through the SSLObject up to the end of a line (one
    reply of a single line)."""
    got = b""
    while not got.endswith(b"\r\n"):
        try:
            got += obj.read(4096)
        except ssl.SSLWantReadError:
            inc.write(sock.recv(65536))
    return got


def replies(sock, obj, inc, timeout=10):
    """Everything the server sends until it closes: (plaintext, the SSL
    error that ended it or None)."""
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            got += obj.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, ssl.SSLEOFError) as e:
            return got, e
        except ssl.SSLZeroReturnError:
            return got, None
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return got, "reset"
        if not data:
            return got, None
        inc.write(data)
