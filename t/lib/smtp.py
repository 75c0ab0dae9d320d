"""A raw SMTP client that shows exactly what the server sends.

smtplib hides line endings, continuation lines and pipelining; tests that
check those talk through this class instead.  Every read is bounded by the
socket timeout, and a reply line that does not end in CRLF is an error.
"""

import base64
import re
import time

from . import net

CRLF = b"\r\n"
REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.S)


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def plain_token(user, password, authzid=""):
    return b64(f"{authzid}\0{user}\0{password}")


def dot_stuff(message):
    """Message bytes (CRLF lines) -> DATA payload including the final dot."""
    if not message.endswith(CRLF):
        message += CRLF
    lines = message.split(CRLF)[:-1]
    stuffed = [b"." + l if l.startswith(b".") else l for l in lines]
    return CRLF.join(stuffed) + CRLF + b"." + CRLF


class ServerClosed(AssertionError):
    """The server closed the connection while a reply was expected."""


class Reply:
    def __init__(self, code, lines, raw):
        self.code = code
        self.lines = lines      # text of each line after "NNN-" / "NNN "
        self.raw = raw          # the exact bytes received

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def last(self):
        return self.lines[-1]

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


class RawSmtp:
    def __init__(self, host, port, timeout=30.0, rcvbuf=None, source=None):
        self.host = host
        self.port = port
        self.sock = net.connect(host, port, timeout, rcvbuf, source)
        self.buf = b""
        self.closed_by_peer = False

    # -- bytes ------------------------------------------------------------

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed_by_peer = True
            raise ServerClosed(
                f"connection closed by server; unparsed bytes: {self.buf!r}")
        self.buf += chunk

    def read_line(self):
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise AssertionError("reply line longer than 1 MB")
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        line += b"\n"
        assert line.endswith(CRLF), f"reply line not CRLF-terminated: {line!r}"
        return line

    # -- replies ----------------------------------------------------------

    def reply(self):
        """Read one (possibly multi-line) reply."""
        raw = b""
        lines = []
        code = None
        while True:
            line = self.read_line()
            raw += line
            m = REPLY_LINE.match(line[:-2])
            assert m, f"malformed reply line {line!r} (so far {raw!r})"
            this_code = int(m.group(1))
            assert code is None or this_code == code, \
                f"reply code changed inside a reply: {raw!r}"
            code = this_code
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(code, lines, raw)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, line):
        self.send(line.encode() + CRLF if isinstance(line, str) else line + CRLF)
        return self.reply()

    def expect(self, line, code, text=None):
        """Send one command; assert the reply code (and exact last-line text)."""
        r = self.cmd(line)
        assert r.code == code, f"{line!r}: expected {code}, got {r!r}"
        if text is not None:
            assert r.last == text, f"{line!r}: expected {text!r}, got {r!r}"
        return r

    def expect_closed(self):
        """Assert the server closes the connection with nothing more to say
        (a pending reply must already have been read)."""
        try:
            while True:
                self._fill()
                if b"\n" in self.buf:
                    raise AssertionError(
                        f"expected the connection to close, got {self.buf!r}")
        except ServerClosed:
            pass
        assert self.buf == b"", f"partial data before close: {self.buf!r}"

    def read_until_closed(self):
        """Read and return every reply until the server closes."""
        out = []
        try:
            while True:
                out.append(self.reply())
        except ServerClosed:
            pass
        return out

    # -- conversations ----------------------------------------------------

    def greeting(self):
        return self.reply()

    def ehlo(self, name="client.test"):
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, f"EHLO: {r!r}"
        return r

    def auth_plain(self, user, password):
        return self.cmd(f"AUTH PLAIN {plain_token(user, password)}")

    def auth_login(self, user, password):
        r = self.cmd("AUTH LOGIN")
        if r.code != 334:
            return r
        r = self.cmd(b64(user))
        if r.code != 334:
            return r
        return self.cmd(b64(password))

    def mail(self, sender, recipients, message):
        """MAIL, RCPT..., DATA and the message; return the final reply."""
        self.expect(f"MAIL FROM:<{sender}>", 250)
        for rcpt in recipients:
            self.expect(f"RCPT TO:<{rcpt}>", 250)
        self.expect("DATA", 354)
        self.send(dot_stuff(message))
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def back_up_replies(c, command=b"HELP", chunk=5000, limit=400):
    """Pipeline a command without reading its replies until the server
    has more replies than the connection takes and stops reading
    (its unread input stays put); return how many were sent.  A small
    rcvbuf on c makes this quicker."""
    n = 0
    for _ in range(limit):
        c.send((command + CRLF) * chunk)
        n += chunk
        time.sleep(0.2)
        unread = net.peer_unread(c.sock)
        time.sleep(0.3)
        if unread and net.peer_unread(c.sock) == unread:
            return n
    raise AssertionError(f"the server kept reading after {n} commands")


def ehlo_keywords(reply):
    """Capability keywords (upper case) of an EHLO reply, without line one."""
    return [l.split()[0].upper() for l in reply.lines[1:] if l.strip()]


def ehlo_line(reply, keyword):
    for l in reply.lines[1:]:
        if l.split() and l.split()[0].upper() == keyword.upper():
            return l
    return None
