"""Test messages with the lines that relays get wrong: leading dots, a
line that is a single dot, empty lines, 8-bit bytes, long lines."""

import base64
import random

CRLF = b"\r\n"


def make_message(size, seed=1, subject="smtpgate test"):
    """CRLF-terminated message bytes of about `size` bytes (at least the
    headers and the tricky lines).  Lines stay under 998 octets."""
    rng = random.Random(seed)
    head = [
        b"From: Sender <sender@example.org>",
        b"To: Rcpt <rcpt@example.org>",
        b"Subject: " + subject.encode(),
        b"Message-ID: <%d.smtpgate@example.org>" % seed,
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        b"First line.",
        b".leading dot",
        b"..two leading dots",
        b".",
        b"",
        b"",
        b"caf\xc3\xa9 8-bit \xe2\x82\xac",
        b"x" * 990,
        b"tab\tand trailing space ",
        b"-- ",
    ]
    out = CRLF.join(head) + CRLF
    if len(out) < size:
        need = size - len(out)
        # base64 text in 76-column lines, with a dot line now and then
        raw = rng.randbytes(need * 3 // 4 + 3)
        body = base64.encodebytes(raw).replace(b"\n", CRLF)
        lines = body.split(CRLF)
        for i in range(0, len(lines), 5000):
            lines[i] = b"." + lines[i]
        out += CRLF.join(lines)
        if not out.endswith(CRLF):
            out += CRLF
    return out
