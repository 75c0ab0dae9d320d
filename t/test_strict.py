"""proxy_strict: after the login the relay reads every command and every
line of message text itself.  Line ends reach the backend as CR LF
whatever the client sent, so a message ends where smtpgate and the
backend both say it does (no "SMTP smuggling" past a backend that reads
a bare LF differently), and commands it would not follow are answered by
smtpgate and never reach the backend.  Real clients (raw sockets, which
can send what smtplib would correct) against aiosmtpd."""

import base64

import pytest

from lib import gate as gatelib
from lib.users import password

STRICT = "        proxy_strict on;\n"


def _relayed(g, user="alice"):
    c = g.session()
    c.ehlo()
    assert c.auth_plain(user, password(user)).code == 235
    return c


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
def test_smuggled_end_of_data(smtpgate, backend, strict):
    """A client that ends its text with LF "." CR LF: aiosmtpd takes
    only CR LF "." CR LF as the end.  Passed as it came (proxy_strict
    off) the MAIL, RCPT and DATA behind it are message text to the
    backend; strict, the line end becomes CR LF, the message ends there
    for both, and what follows is read as the commands they are."""
    g = smtpgate(gatelib.conf(backend=backend,
                              server=STRICT if strict else ""))
    with _relayed(g) as c:
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: one\r\n\r\nhello\n.\r\n"
               b"MAIL FROM:<ceo@example.org>\r\n"
               b"RCPT TO:<victim@example.org>\r\nDATA\r\n")
        if strict:
            assert [r.code for r in c.replies(4)] == [250, 250, 250, 354]
        c.send(b"Subject: two\r\n\r\nsecond\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    if strict:
        one, two = backend.wait_messages(2)
        assert one.content == b"Subject: one\r\n\r\nhello\r\n"
        assert two.mail_from == "ceo@example.org"
        assert two.rcpt_tos == ["victim@example.org"]
        assert two.content == b"Subject: two\r\n\r\nsecond\r\n"
    else:
        (one,) = backend.wait_messages(1)
        assert b"hello\n.\r\nMAIL FROM:<ceo@example.org>\r\n" in one.content
        assert backend.seen("MAIL") == ["alice@example.org"]


def test_bare_line_ends_reach_the_backend_as_crlf(smtpgate, backend):
    """Bare LF and bare CR, in commands and in message text, arrive as
    CR LF; the message's bytes are otherwise untouched."""
    g = smtpgate(gatelib.conf(backend=backend, server=STRICT))
    with _relayed(g) as c:
        c.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.org>\n"
               b"DATA\n")
        assert [r.code for r in c.replies(3)] == [250, 250, 354]
        c.send(b"Subject: s\n\nline one\nline two\rline three\r\n"
               b"..dot\n\n.\n")
        assert c.reply().code == 250
        c.send(b"NOOP\n")
        assert c.reply().code == 250
    (m,) = backend.wait_messages(1)
    assert m.content == (b"Subject: s\r\n\r\nline one\r\nline two\r\n"
                         b"line three\r\n.dot\r\n\r\n")
    assert m.mail_from == "a@example.org"


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"],
                         ids=["lf", "cr", "crlf"])
def test_a_large_message_of_bare_line_ends(smtpgate, backend, ending):
    """Four megabytes of lines of every length ending in a bare LF (or
    CR): what the backend stores is the same text with CR LF, byte for
    byte, whatever the buffers held at each moment."""
    g = smtpgate(gatelib.conf(backend=backend, server=STRICT))
    lines = [b"x" * (i % 997) + (b"." if i % 7 == 0 else b"")
             for i in range(8000)]
    body = b"".join(b"." + l if l.startswith(b".") else l
                    for l in (l + ending for l in lines))
    want = b"".join(l + b"\r\n" for l in lines)
    with _relayed(g) as c:
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(body + b".\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    (m,) = backend.wait_messages(1)
    assert len(m.content) == len(want)
    assert m.content == want


def test_commands_not_relayed_are_answered_here(smtpgate, backend):
    """Pipelined with commands the backend answers, each gets its reply
    in its turn; the backend never sees them, and the log names each
    without its arguments (a second AUTH may carry a password)."""
    g = smtpgate(gatelib.conf(backend=backend, server=STRICT))
    token = base64.b64encode(b"\0alice\0s3cret-in-the-line").decode()
    mark = g.log_mark()
    with _relayed(g) as c:
        c.send(b"NOOP\r\nXCLIENT ADDR=192.0.2.1\r\n"
               + f"AUTH PLAIN {token}\r\n".encode()
               + b"STARTTLS\r\nETRN example.org\r\nNOOP\r\n\r\n"
               b"NO\rOP\r\nRSET\r\n")
        got = [(r.code, r.last) for r in c.replies(9)]
        assert got == [
            (250, "OK"),
            (502, "5.5.2 Error: command not recognized"),
            (503, "5.5.1 Error: already authenticated"),
            (503, "5.5.1 Error: STARTTLS not allowed now"),
            (502, "5.5.2 Error: command not recognized"),
            (250, "OK"),
            (502, "5.5.2 Error: command not recognized"),
            (500, "5.5.2 Error: bare CR in a command line"),
            (250, "OK"),
        ], got
        assert c.cmd("QUIT").code == 221
    for verb in ("XCLIENT", "STARTTLS", "ETRN"):
        assert backend.seen(verb) == [], verb
    # the backend's own login, never the client's second AUTH
    assert all("s3cret" not in (a or "") for a in backend.seen("AUTH"))
    g.wait_log(r'answered "503" to AUTH after the login; it did not reach '
               r'the backend',
               since=mark)
    g.wait_log(r'answered "502" to a command it does not relay; it did '
               r'not reach the backend', since=mark)
    assert token not in g.error_log()
    assert "s3cret" not in g.error_log()


def test_a_line_too_long_is_answered_and_dropped(smtpgate, backend):
    """A command line past 2048 bytes: 500 from smtpgate, however it is
    split, and the session goes on; the backend never reads a part of
    it as a command."""
    g = smtpgate(gatelib.conf(backend=backend, server=STRICT))
    with _relayed(g) as c:
        line = b"RCPT TO:<" + b"a" * 5000 + b"@example.org>\r\n"
        c.send(b"MAIL FROM:<a@example.org>\r\n" + line[:3000])
        assert c.reply().code == 250
        c.send(line[3000:] + b"RCPT TO:<b@example.org>\r\n")
        r = c.reply()
        assert (r.code, r.last) == (500, "5.5.2 Error: line too long")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    assert backend.wait_command("RCPT") == ["b@example.org"]


def test_invalid_bdat_ends_the_session(smtpgate, make_backend):
    """BDAT whose size cannot be read: nobody can tell where its chunk
    ends, so smtpgate answers 521 and closes, and tells the backend
    QUIT.  A well-formed BDAT with a bare LF after it passes, its chunk
    untouched."""
    backend = make_backend(ehlo_add=("CHUNKING",))
    g = smtpgate(gatelib.conf(backend=backend, server=STRICT))
    mark = g.log_mark()
    with _relayed(g) as c:
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        c.send(b"BDAT 9 LAST\nx\ny\r\n.\r\nz")
        assert c.reply().code == 250
        c.send(b"BDAT many\r\nwhatever\r\n")
        r = c.reply()
        assert (r.code, r.last) == (
            521, "5.5.4 Error: invalid BDAT command, closing the connection")
        c.expect_closed()
    (m,) = backend.wait_messages(1)
    assert m.content == b"x\ny\r\n.\r\nz"
    backend.wait_command("QUIT")
    g.wait_log(r'answered "521" to a BDAT command it cannot read',
               since=mark)


def test_hostile_pipelines_get_one_reply_per_line(smtpgate, backend):
    """Garbage after the login: every line gets exactly one reply, in
    order, and the worker stays up for the next client."""
    g = smtpgate(gatelib.conf(backend=backend, server=STRICT))
    lines = [b"\x00\x01\xff garbage", b"", b"MAIL", b"VRFY x", b"HELP",
             b"\xc3\xa9t\xc3\xa9", b"RCPT", b"DATA x"] * 20
    with _relayed(g) as c:
        c.send(b"".join(line + b"\r\n" for line in lines))
        got = c.replies(len(lines))
        assert len(got) == len(lines)
        assert all(300 <= r.code < 600 or r.code in (250, 252, 214)
                   for r in got)
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    with _relayed(g) as c:
        assert c.cmd("QUIT").code == 221


def test_proxy_strict_takes_on_or_off(smtpgate, backend):
    text = gatelib.conf(backend=backend,
                        server="        proxy_strict yes;\n")
    g = smtpgate(text, start=False)
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    line = [i + 1 for i, l in enumerate(text.splitlines())
            if "proxy_strict" in l][0]
    assert f"{g.conf_path}:{line}:" in r.stderr, r.stderr
    assert '"proxy_strict"' in r.stderr, r.stderr


def test_bare_line_ends_to_a_tls_backend(smtpgate, make_backend):
    """The same normalising over TLS to the backend (proxy_ssl on): the
    staged line ends go out through the TLS connection whole."""
    from lib import pki as pkilib
    if not pkilib.tls_built():
        pytest.skip("built without the ssl module")
    b = make_backend(tls="implicit")
    g = smtpgate(gatelib.conf(proxy_pass=b.address,
                              mail="    proxy_ssl on;\n", server=STRICT))
    lines = [b"line %d " % i + b"y" * (i % 300) for i in range(3000)]
    with _relayed(g) as c:
        c.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.org>\n"
               b"DATA\n")
        assert [r.code for r in c.replies(3)] == [250, 250, 354]
        c.send(b"".join(l + b"\n" for l in lines) + b".\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    (m,) = b.wait_messages(1)
    assert m.content == b"".join(l + b"\r\n" for l in lines)
    g.wait_log(r"backend \S+ ready over TLS")
