"""Store and forward: an upstream group's spool with the `forward` flag
("server spool:DIR backup forward") takes the sessions while the
group's real servers are down, and the spool forwarder, a helper
process of the master, sends what it stored on once they come back.

Checked: what the queued file holds (the envelope and the
X-Smtpgate-Forward attributes); the message as the backend gets it
(the same envelope, the text from the Received: line on, byte for
byte, dot-stuffed on the wire and ended in CRLF, XCLIENT with the
original client, a PROXY header with its address); each outcome of a
delivery (delivered, failed and reported to the sender in a delivery
status notification, deferred with the file rewritten and put off, a
null-sender message that fails moved to cur/, a message deferred for
too long failed with 4.4.7); a queue that waits while no server is
up; many messages, a reload and a graceful stop without a message lost
or sent twice; a forwarder killed and started again; hostile files in
the queue; and the configuration errors.

aiosmtpd answers a command the same way for every recipient, so the
tests that need one recipient refused and another taken use a small
scripted backend defined here (ScriptedSmtp).
"""

import collections
import email
import email.policy
import os
import re
import signal
import socket
import threading
import time

import pytest

from lib import backends
from lib import gate as gatelib
from lib import net
from lib.backends import Message
from lib.checks import assert_same_bytes
from lib.smtp import dot_stuff
from lib.users import password

QUEUED = re.compile(r"^2\.0\.0 Ok: queued as (\S+)$")
ACCEPTED = "250 2.0.0 Message accepted by backend"

needs_ipv6 = pytest.mark.skipif(not net.ipv6_available(),
                                reason="no IPv6 loopback")


# --------------------------------------------------------------------------
# a scripted backend


class ScriptedSmtp(backends.ThreadedServer):
    """A plain ESMTP server whose replies a test chooses per command and
    per address, which aiosmtpd cannot do (its `replies` answer every
    RCPT alike).

    mail(sender), rcpt(sender, recipient), data(sender, recipients) and
    dot(sender, recipients) return the reply line to send, or None for
    the usual one; the functions may be swapped while it runs.  A
    message whose final dot is answered 2xx lands in .messages
    (lib.backends.Message, content dot-unstuffed, rcpt_tos the
    recipients taken); .commands lists every command line."""

    EHLO = (b"250-scripted.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
            b"250-ENHANCEDSTATUSCODES\r\n250 SIZE 10240000\r\n")

    # its reads wait up to 60 s: stop() closes the sockets instead
    join_on_stop = False

    def __init__(self, mail=None, rcpt=None, data=None, dot=None,
                 host=net.IPV4, dot_delay=0, drop_on_reuse=False):
        super().__init__(host)
        self.mail = mail or (lambda s: None)
        self.rcpt = rcpt or (lambda s, r: None)
        self.data = data or (lambda s, rs: None)
        self.dot = dot or (lambda s, rs: None)
        self.dot_delay = dot_delay
        # close a connection, unanswered, at the MAIL of its second
        # message: a server that dropped a connection kept idle
        self.drop_on_reuse = drop_on_reuse
        self.dropped = 0
        self.messages = []
        self.commands = []
        self.open_transactions = 0      # from MAIL to the final reply
        self.max_transactions = 0
        self._cond = threading.Condition(self._lock)

    def start(self):
        return super().start(backlog=64)

    def _serve(self, conn, idx):
        sender, rcpts = None, []
        served = 0
        try:
            conn.settimeout(60)
            f = conn.makefile("rb")
            conn.sendall(b"220 scripted.test ESMTP\r\n")
            while not self._stop.is_set():
                line = f.readline()
                if not line:
                    return
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                with self._cond:
                    self.commands.append(text)
                verb = text.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    conn.sendall(self.EHLO)
                elif verb == "MAIL" and self.drop_on_reuse and served:
                    with self._cond:
                        self.dropped += 1
                    return
                elif verb == "MAIL":
                    m = re.match(r"(?i)MAIL FROM:<([^>]*)>", text)
                    reply = self.mail(m.group(1))
                    if reply is None:
                        sender, rcpts = m.group(1), []
                        self._transaction(+1)
                    self._reply(conn, reply, "250 2.1.0 Ok")
                elif verb == "RCPT":
                    m = re.match(r"(?i)RCPT TO:<([^>]*)>", text)
                    reply = self.rcpt(sender, m.group(1))
                    if reply is None or reply.startswith("2"):
                        rcpts.append(m.group(1))
                    self._reply(conn, reply, "250 2.1.5 Ok")
                elif verb == "DATA":
                    if not rcpts:
                        conn.sendall(b"554 5.5.1 Error: no valid "
                                     b"recipients\r\n")
                        continue
                    reply = self.data(sender, list(rcpts))
                    if reply is not None:
                        self._transaction(-1)
                        self._reply(conn, reply, None)
                        sender, rcpts = None, []
                        continue
                    conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    body = b""
                    while True:
                        l = f.readline()
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        body += l[1:] if l.startswith(b".") else l
                    time.sleep(self.dot_delay)
                    reply = self.dot(sender, list(rcpts))
                    self._transaction(-1)
                    if reply is None or reply.startswith("2"):
                        with self._cond:
                            self.messages.append(
                                Message(sender, list(rcpts), body))
                            self._cond.notify_all()
                    self._reply(conn, reply, "250 2.0.0 Ok: queued")
                    sender, rcpts = None, []
                    served += 1
                elif verb == "RSET":
                    if sender is not None:
                        self._transaction(-1)
                    sender, rcpts = None, []
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                elif verb in ("HELO", "NOOP"):
                    conn.sendall(b"250 scripted.test\r\n")
                else:
                    conn.sendall(b"502 5.5.2 Error: command not "
                                 b"recognized\r\n")
        except OSError:
            pass
        finally:
            if sender is not None:
                self._transaction(-1)
            try:
                conn.close()
            except OSError:
                pass

    def _transaction(self, n):
        with self._cond:
            self.open_transactions += n
            self.max_transactions = max(self.max_transactions,
                                        self.open_transactions)

    @staticmethod
    def _reply(conn, reply, default):
        conn.sendall((reply or default).encode() + b"\r\n")

    def wait_messages(self, n=1, timeout=30.0):
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.messages) >= n,
                                     timeout)
            assert ok, (f"scripted backend got {len(self.messages)} "
                        f"message(s), expected {n} within {timeout}s; "
                        f"commands: {self.commands[-30:]!r}")
            return list(self.messages)


@pytest.fixture
def scripted_smtp():
    """Factory: scripted_smtp(start=True, **kw) -> ScriptedSmtp; with
    start=False its port refuses connections until .start()."""
    started = []

    def make(start=True, **kw):
        b = ScriptedSmtp(**kw)
        started.append(b)
        return b.start() if start else b
    yield make
    for b in started:
        b.stop()


@pytest.fixture
def down_backend():
    """Factory: an AiosmtpdBackend that does not run yet (its port
    refuses connections) until the test calls .start()."""
    made = []

    def make(**kw):
        b = backends.AiosmtpdBackend(**kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.stop()


# --------------------------------------------------------------------------
# helpers


def fwd_conf(*addresses, mail="", retry="1s 2s", **kw):
    """The group "grp": each address a real server (never rested, so
    that the forwarder tries it at once when it comes back), and the
    forwarding spool PREFIX/queue as its backup."""
    servers = "".join(f"        server {a} max_fails=0;\n"
                      for a in addresses)
    block = ("    spool_forward_interval 1s;\n"
             f"    spool_forward_retry {retry};\n"
             + mail
             + "    upstream grp {\n" + servers
             + "        server spool:queue backup forward;\n"
             "    }\n")
    kw.setdefault("proxy_connect_timeout", "2s")
    return gatelib.conf(proxy_pass="grp", mail=block, **kw)


def qdir(g, sub="new"):
    return os.path.join(g.prefix, "queue", sub)


def queued(g, sub="new"):
    return sorted(os.listdir(qdir(g, sub)))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def parse_queued(data):
    """A queued file -> (sender, [recipients], {attribute: value}, the
    text from the Received: line on)."""
    head, sep, _ = data.partition(b"\r\nReceived: ")
    assert sep, data[:600]
    text = data[len(head) + 2:]
    lines = head.split(b"\r\n")
    m = re.fullmatch(rb"Return-Path: <(.*)>", lines[0])
    assert m, data[:300]
    rcpts, attrs, i = [], {}, 1
    while i < len(lines) and lines[i].startswith(b"X-Original-To: "):
        rcpts.append(lines[i][len(b"X-Original-To: "):].decode())
        i += 1
    if i < len(lines):
        assert lines[i].startswith(b"X-Smtpgate-Forward: "), data[:600]
        words = b" ".join([lines[i][len(b"X-Smtpgate-Forward: "):]]
                          + [l for l in lines[i + 1:]]).split()
        for w in words:
            k, _, v = w.decode().partition("=")
            attrs[k] = v
        assert all(l.startswith(b"\t") for l in lines[i + 1:]), data[:600]
    return m.group(1).decode(), rcpts, attrs, text


def words(line):
    """"ADDR=1.2.3.4 LOGIN=x" -> {"ADDR": "1.2.3.4", "LOGIN": "x"}."""
    return dict(w.partition("=")[::2] for w in (line or "").split())


def queue_id(reply):
    m = QUEUED.match(reply.last)
    assert reply.code == 250 and m, reply
    return m.group(1)


def session(g, host=None, port=None, helo="client.test", user="alice"):
    c = g.connect(host, port)
    assert c.greeting().code == 220
    c.ehlo(helo)
    r = c.auth_plain(user, password(user))
    assert r.code == 235, r
    return c


def transaction(c, sender, rcpts, message, params=""):
    """MAIL (with params), RCPTs, DATA: the queue id."""
    c.expect(f"MAIL FROM:<{sender}>{params}", 250)
    for r in rcpts:
        c.expect(f"RCPT TO:<{r}>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(message))
    return queue_id(c.reply())


def submit(g, sender, rcpts, message, **kw):
    """One session, one message: (queue id, the client's address)."""
    with session(g, **kw) as c:
        local = c.sock.getsockname()[:2]
        qid = transaction(c, sender, rcpts, message)
        c.expect("QUIT", 221)
    return qid, local


def only_file(g):
    (name,) = queued(g)
    return name, read(os.path.join(qdir(g), name))


def wait_queue_empty(g, timeout=30):
    net.wait_until(lambda: not queued(g), timeout,
                   what=f"queue/new to empty; it holds {queued(g)}")


def delivered_line(qid, sender, n, peer, reply=ACCEPTED):
    return (r"\[info\] \d+#\d+: \*\d+ spool forwarder: message "
            + re.escape(qid) + r" from <" + re.escape(sender)
            + rf"> delivered to {n} recipients?"
            + r" through " + re.escape(peer)
            + r" \(" + re.escape(reply) + r"\)")


def parse_dsn(content):
    """A delivery status notification -> (the message, the per-message
    fields, [per-recipient fields], the returned headers part)."""
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", content[:1500]
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert len(parts) == 3, [p.get_content_type() for p in parts]
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    assert parts[2].get_content_type() in ("text/rfc822-headers",
                                           "message/rfc822")
    blocks = parts[1].get_payload()
    return msg, blocks[0], blocks[1:], parts[2]


def check_dsn(m, sender, orig_qid):
    """m: a notification as the backend got it, for `sender` about
    message orig_qid.  Returns its per-recipient blocks by recipient."""
    assert m.mail_from == "", m.mail_from
    assert m.rcpt_tos == [sender]
    assert m.content.startswith(b"Received: by "), m.content[:300]
    msg, per_msg, per_rcpt, returned = parse_dsn(m.content)
    assert re.fullmatch(r"Mail Delivery System <MAILER-DAEMON@[^<>\s]+>",
                        msg["From"]), msg["From"]
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["To"] == f"<{sender}>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert per_msg["X-Smtpgate-Queue-ID"] == orig_qid
    assert per_msg["Reporting-MTA"].startswith("dns; ")
    out = {}
    for b in per_rcpt:
        kind, _, rcpt = b["Final-Recipient"].partition("; ")
        assert kind == "rfc822", b["Final-Recipient"]
        assert b["Action"] == "failed"
        out[rcpt] = b
    return out


# --------------------------------------------------------------------------
# the way through


def test_queued_while_down_then_forwarded_with_xclient(smtpgate,
                                                       down_backend):
    b = down_backend(xclient=True)
    g = smtpgate(fwd_conf(b.address))
    # one worker and one forwarder, told apart by name
    assert len(g.workers()) == 1
    (helper,) = g.helpers()
    assert helper not in g.workers()
    g.wait_log(rf"start spool forwarder process {helper}\b")
    g.wait_log(r"\[notice\] \d+#\d+: spool forwarder: forwarding \"\S+/"
               r"queue\" to upstream \"grp\"")

    msg = b"Subject: t\r\n\r\n.body\r\nend\r\n"
    qid, (caddr, cport) = submit(g, "s@example.org",
                                 ["r@example.org", "q@example.org"], msg)
    name, data = only_file(g)
    sender, rcpts, attrs, text = parse_queued(data)
    assert sender == "s@example.org"
    assert rcpts == ["r@example.org", "q@example.org"]
    assert attrs == {"ADDR": "127.0.0.1", "PORT": str(cport),
                     "PROTO": "ESMTP", "NAME": "[UNAVAILABLE]",
                     "HELO": "client.test", "LOGIN": "alice",
                     "SERVER": "mx.test"}, attrs
    assert data.startswith(
        b"Return-Path: <s@example.org>\r\nX-Original-To: r@example.org\r\n"
        b"X-Original-To: q@example.org\r\nX-Smtpgate-Forward: ADDR=")
    assert text.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert text.endswith(b"\r\n" + msg)

    # Down: the queue waits, the file is not put off.
    g.wait_log(r"\[warn\] \d+#\d+: \*\d+ spool forwarder: message "
               + re.escape(qid) + r" deferred: .*; the queue waits 1000 ms "
               r"before the next try")
    assert queued(g) == [name]
    assert os.stat(os.path.join(qdir(g), name)).st_mtime <= time.time()

    mark = g.log_mark()
    b.start()
    (m,) = b.wait_messages(1, timeout=20)
    assert m.mail_from == "s@example.org"
    assert m.rcpt_tos == ["r@example.org", "q@example.org"]
    assert_same_bytes(m.content, text)
    x = words(m.xclient)
    assert x["ADDR"] == "127.0.0.1" and x["LOGIN"] == "alice"
    assert x["HELO"] == "client.test" and x["PROTO"] == "ESMTP"
    assert m.helo == "client.test"      # the EHLO after XCLIENT
    wait_queue_empty(g)
    g.wait_log(delivered_line(qid, "s@example.org", 2, b.address), mark)
    assert queued(g, "cur") == [] and queued(g, "tmp") == []
    assert g.helpers() == [helper]
    time.sleep(1.5)
    assert len(b.messages) == 1


def test_mail_parameters_and_xtext_helo(smtpgate, down_backend):
    """BODY=8BITMIME is stored and sent again, SIZE= is the size of what
    is sent; a HELO name with '+' and '=' is stored in xtext, goes to
    XCLIENT in xtext and to the EHLO after it decoded."""
    b = down_backend(xclient=True)
    g = smtpgate(fwd_conf(b.address))
    msg = b"Subject: 8bit\r\n\r\ncaf\xc3\xa9\r\n"
    with session(g, helo="h+x=y.test") as c:
        qid = transaction(c, "s@example.org", ["r@example.org"], msg,
                          params=" BODY=8BITMIME")
    _, data = only_file(g)
    _, _, attrs, text = parse_queued(data)
    assert attrs["HELO"] == "h+2Bx+3Dy.test", attrs
    assert attrs["BODY"] == "8BITMIME", attrs
    mark = g.log_mark()
    b.start()
    (m,) = b.wait_messages(1, timeout=20)
    assert_same_bytes(m.content, text)
    assert "BODY=8BITMIME" in m.mail_options, m.mail_options
    assert f"SIZE={len(text)}" in m.mail_options, m.mail_options
    assert words(m.xclient)["HELO"] == "h+2Bx+3Dy.test", m.xclient
    assert m.helo == "h+x=y.test"
    wait_queue_empty(g)
    g.wait_log(delivered_line(qid, "s@example.org", 1, b.address), mark)


def test_dot_stuffing_and_text_without_final_crlf(smtpgate, down_backend):
    """Lines starting with a dot (one a lone dot) go out stuffed and
    arrive as they were; a message sent with BDAT that does not end in
    CRLF arrives ended in one, and its lone-dot line does not end the
    data early."""
    b = down_backend()
    g = smtpgate(fwd_conf(b.address))
    dotted = (b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle.dot\r\n"
              b". \r\n\r\n")
    chunked = b"Subject: bdat\r\n\r\nline\r\n.\r\n.x\r\nno final CRLF."
    with session(g) as c:
        transaction(c, "s@example.org", ["data@example.org"], dotted)
        c.expect("MAIL FROM:<s@example.org>", 250)
        c.expect("RCPT TO:<bdat@example.org>", 250)
        c.send(b"BDAT %d LAST\r\n" % len(chunked) + chunked)
        queue_id(c.reply())
    texts = {}
    for name in queued(g):
        _, rcpts, _, text = parse_queued(read(os.path.join(qdir(g), name)))
        texts[rcpts[0]] = text
    assert texts["data@example.org"].endswith(b"\r\n" + dotted)
    assert texts["bdat@example.org"].endswith(b"\r\n" + chunked)
    b.start()
    got = {m.rcpt_tos[0]: m.content for m in b.wait_messages(2, 20)}
    assert_same_bytes(got["data@example.org"], texts["data@example.org"])
    assert_same_bytes(got["bdat@example.org"],
                      texts["bdat@example.org"] + b"\r\n")
    wait_queue_empty(g)
    # nothing the backend took for commands
    assert [v for v, _ in b.commands].count("MAIL") == 2


# --------------------------------------------------------------------------
# outcomes


def test_delivered_failed_and_deferred_recipients(smtpgate, scripted_smtp):
    """One recipient taken, one refused for good, one for now: the first
    gets the message, the sender a notification about the second, and
    the file stays for the third alone, put off to its next try; when
    the backend takes the third, it gets the same text."""
    replies = {"bad@example.org": "550 5.1.1 <bad@example.org>: no such "
                                  "user",
               "later@example.org": "451 4.2.0 <later@example.org>: "
                                    "mailbox busy"}
    b = scripted_smtp(start=False, rcpt=lambda s, r: replies.get(r))
    g = smtpgate(fwd_conf(b.address, retry="3s"))
    qid, _ = submit(g, "s@example.org", ["good@example.org",
                                         "bad@example.org",
                                         "later@example.org"],
                    b"Subject: three\r\n\r\nhello\r\n")
    name, data = only_file(g)
    text = parse_queued(data)[3]
    mark = g.log_mark()
    b.start()

    m = g.wait_log(r"\[warn\] \d+#\d+: \*\d+ spool forwarder: message "
                   + re.escape(qid) + r" to <later@example\.org> deferred "
                   r"\(451 4\.2\.0 <later@example\.org>: mailbox busy\), "
                   r"next try in (\d+) s", mark)
    now = time.time()
    assert m.group(1) == "3"
    # the same file, rewritten: only the recipient left, the attributes
    # and the text kept, its time the next try
    path = os.path.join(qdir(g), name)
    sender, rcpts, attrs, text2 = parse_queued(read(path))
    mtime = os.stat(path).st_mtime
    assert (sender, rcpts) == ("s@example.org", ["later@example.org"])
    assert attrs["LOGIN"] == "alice"
    assert text2 == text
    assert now + 1 <= mtime <= now + 4, (mtime - now)
    # and the forwarder's note of the try, on the new file
    note = os.getxattr(path, "user.smtpgate.deferred").decode()
    m = re.fullmatch(r"(\d+) (\d+) 451 4\.2\.0 <later@example\.org>: "
                     r"mailbox busy", note)
    assert m and int(m.group(1)) >= 1 and abs(int(m.group(2)) - now) < 60, \
        note

    g.wait_log(delivered_line(qid, "s@example.org", 1, b.address,
                              "250 2.0.0 Ok: queued"), mark)
    n = g.wait_log(r"\[notice\] \d+#\d+: \*\d+ spool forwarder: message "
                   + re.escape(qid) + r" to <bad@example\.org> failed "
                   r"\(550 5\.1\.1 <bad@example\.org>: no such user\), "
                   r"reported to <s@example\.org> in message (\S+)", mark)
    dsn_id = n.group(1)
    msgs = b.wait_messages(2, timeout=20)
    first = [x for x in msgs if x.mail_from == "s@example.org"]
    assert [x.rcpt_tos for x in first] == [["good@example.org"]]
    assert_same_bytes(first[0].content, text)
    (dsn,) = [x for x in msgs if x.mail_from == ""]
    blocks = check_dsn(dsn, "s@example.org", qid)
    assert list(blocks) == ["bad@example.org"]
    bad = blocks["bad@example.org"]
    assert bad["Status"] == "5.1.1"
    assert bad["Diagnostic-Code"] == \
        "smtp; 550 5.1.1 <bad@example.org>: no such user"
    assert bad["Remote-MTA"] == f"dns; {b.address}"
    g.wait_log(delivered_line(dsn_id, "", 1, b.address,
                              "250 2.0.0 Ok: queued"), mark)
    # the original's headers come back with the report
    assert b"Subject: three" in dsn.content

    # The backend takes the third recipient now.
    replies.pop("later@example.org")
    msgs = b.wait_messages(3, timeout=20)
    assert msgs[2].mail_from == "s@example.org"
    assert msgs[2].rcpt_tos == ["later@example.org"]
    assert_same_bytes(msgs[2].content, text)
    wait_queue_empty(g)
    g.wait_log(delivered_line(qid, "s@example.org", 1, b.address,
                              "250 2.0.0 Ok: queued"), mark)
    assert queued(g, "cur") == []


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA", "dot"])
def test_refused_message_is_reported_and_the_report_delivered(
        smtpgate, scripted_smtp, stage):
    """A 5xx to MAIL, to every RCPT, to DATA or to the final dot fails
    the message for each recipient; the notification, from <>, is
    queued and forwarded to the sender like any message."""
    refusal = "554 5.7.1 we do not want it"

    def refuse(sender):
        return refusal if sender == "s@example.org" else None
    b = scripted_smtp(
        start=False,
        mail=refuse if stage == "MAIL" else None,
        rcpt=(lambda s, r: refuse(s)) if stage == "RCPT" else None,
        data=(lambda s, rs: refuse(s)) if stage == "DATA" else None,
        dot=(lambda s, rs: refuse(s)) if stage == "dot" else None)
    g = smtpgate(fwd_conf(b.address))
    qid, _ = submit(g, "s@example.org", ["r1@example.org",
                                         "r2@example.org"],
                    b"Subject: refused\r\n\r\nno\r\n")
    mark = g.log_mark()
    b.start()
    (dsn,) = b.wait_messages(1, timeout=20)
    blocks = check_dsn(dsn, "s@example.org", qid)
    assert sorted(blocks) == ["r1@example.org", "r2@example.org"]
    for blk in blocks.values():
        assert blk["Status"] == "5.7.1"
        assert blk["Diagnostic-Code"] == f"smtp; {refusal}"
    for r in ("r1", "r2"):
        g.wait_log(r"\[notice\] \d+#\d+: \*\d+ spool forwarder: message "
                   + re.escape(qid) + rf" to <{r}@example\.org> failed "
                   r"\(" + re.escape(refusal) + r"\), reported to "
                   r"<s@example\.org> in message \S+", mark)
    wait_queue_empty(g)
    assert queued(g, "cur") == []
    assert [m.mail_from for m in b.messages] == [""]


def test_null_sender_that_fails_is_moved_to_cur(smtpgate, scripted_smtp):
    """A message from <> refused for every recipient has nobody to be
    reported to: it goes to queue/cur/, flagged seen, whole.  (aiosmtpd
    refuses MAIL FROM:<> itself, hence the scripted backend.)"""
    b = scripted_smtp(start=False,
                      rcpt=lambda s, r: "550 5.1.1 no such user")
    g = smtpgate(fwd_conf(b.address))
    qid, _ = submit(g, "", ["r@example.org"], b"Subject: bounce\r\n\r\nx\r\n")
    name, data = only_file(g)
    mark = g.log_mark()
    b.start()
    m = g.wait_log(r"\[error\] \d+#\d+: \*\d+ spool forwarder: message "
                   + re.escape(qid) + r" cannot be delivered \((.*)\) nor "
                   r"reported to a sender; moved to \"(\S+)\"", mark)
    assert m.group(2) == os.path.join(qdir(g, "cur"), name + ":2,S")
    assert queued(g) == []
    assert queued(g, "cur") == [name + ":2,S"]
    assert read(os.path.join(qdir(g, "cur"), name + ":2,S")) == data
    assert b.messages == []
    # no notification about a notification
    assert "reported to <" not in g.log_since(mark)


def test_deferred_past_the_lifetime_fails_with_4_4_7(smtpgate,
                                                     scripted_smtp):
    b = scripted_smtp(start=False,
                      rcpt=lambda s, r: "451 4.2.0 mailbox busy"
                      if r == "r@example.org" else None)
    g = smtpgate(fwd_conf(b.address, retry="1s",
                          mail="    spool_forward_lifetime 3s;\n"))
    mark = g.log_mark()
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: slow\r\n\r\nx\r\n")
    t0 = time.monotonic()
    b.start()
    g.wait_log(r"spool forwarder: message " + re.escape(qid)
               + r" to <r@example\.org> deferred \(451 4\.2\.0 mailbox "
               r"busy\), next try in 1 s", mark)
    (dsn,) = b.wait_messages(1, timeout=20)
    assert time.monotonic() - t0 >= 2
    blocks = check_dsn(dsn, "s@example.org", qid)
    blk = blocks["r@example.org"]
    # RFC 3463 4.4.7: delivery time expired.  The reply that kept it
    # deferred is the last word about it and belongs in the report.
    assert blk["Status"] == "4.4.7", dsn.content.decode()
    assert blk["Diagnostic-Code"] == "smtp; 451 4.2.0 mailbox busy", \
        dsn.content.decode()
    g.wait_log(r"\[notice\] \d+#\d+: \*\d+ spool forwarder: message "
               + re.escape(qid) + r" to <r@example\.org> failed \(451 "
               r"4\.2\.0 mailbox busy\), reported to <s@example\.org> in "
               r"message \S+", mark)
    wait_queue_empty(g)


def find_queued(g, qid):
    """(directory, name) of the file of message qid in new/ or cur/."""
    for sub in ("new", "cur"):
        for name in queued(g, sub):
            parts = name.split(".")
            if len(parts) > 2 and parts[0] + parts[1] == qid:
                return sub, name
    return None


def test_lifetime_runs_out_while_no_server_is_up(smtpgate, down_backend):
    """A queue that cannot reach any server puts nothing off, but a
    message's lifetime still runs: it fails, expired (4.4.7), and the
    notification waits in the queue like any message."""
    b = down_backend()
    g = smtpgate(fwd_conf(b.address, retry="1s",
                          mail="    spool_forward_lifetime 3s;\n"))
    mark = g.log_mark()
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: nobody up\r\n\r\nx\r\n")
    m = g.wait_log(r"\[notice\] \d+#\d+: \*\d+ spool forwarder: message "
                   + re.escape(qid) + r" to <r@example\.org> failed \(.*\), "
                   r"reported to <s@example\.org> in message (\S+)", mark,
                   timeout=20)
    where = find_queued(g, m.group(1))
    assert where, (queued(g), queued(g, "cur"))
    sender, rcpts, _, text = parse_queued(
        read(os.path.join(qdir(g, where[0]), where[1])))
    assert (sender, rcpts) == ("", ["s@example.org"])
    dsn = Message("", ["s@example.org"], text)
    blocks = check_dsn(dsn, "s@example.org", qid)
    assert blocks["r@example.org"]["Status"] == "4.4.7", text.decode()
    assert find_queued(g, qid) is None


# --------------------------------------------------------------------------
# the original client


@needs_ipv6
def test_ipv6_client_in_the_file_and_in_xclient(smtpgate, down_backend):
    b = down_backend(xclient=True)
    g = smtpgate(fwd_conf(b.address, listen=("[::1]:@PORT6@",)))
    qid, (caddr, cport) = submit(g, "s@example.org", ["r@example.org"],
                                 b"Subject: v6\r\n\r\nx\r\n", host="::1",
                                 port=g.ports["PORT6"])
    _, data = only_file(g)
    _, _, attrs, text = parse_queued(data)
    assert attrs["ADDR"] == "IPV6:::1" and attrs["PORT"] == str(cport)
    assert text.startswith(b"Received: from client.test ([IPv6:::1])")
    b.start()
    (m,) = b.wait_messages(1, timeout=20)
    assert words(m.xclient)["ADDR"] == "IPV6:::1", m.xclient
    assert_same_bytes(m.content, text)
    wait_queue_empty(g)


@pytest.mark.parametrize("version,client", [
    ("on", "4"), ("v2", "4"),
    pytest.param("on", "6", marks=needs_ipv6)])
def test_proxy_protocol_carries_the_original_client(smtpgate, down_backend,
                                                    version, client):
    b = down_backend(proxy_protocol=True)
    listen = "[::1]:@PORT6@" if client == "6" else "127.0.0.1:@PORT@"
    g = smtpgate(fwd_conf(b.address, listen=(listen,),
                          mail=f"    proxy_protocol {version};\n"))
    host, port = g.listen_addresses()[0]
    qid, (caddr, cport) = submit(g, "s@example.org", ["r@example.org"],
                                 b"Subject: pp\r\n\r\nx\r\n", host=host,
                                 port=port)
    b.start()
    (m,) = b.wait_messages(1, timeout=20)
    pp = m.proxy
    assert pp is not None and pp.valid, pp
    assert pp.version == (2 if version == "v2" else 1)
    assert (str(pp.src_addr), pp.src_port) == (caddr, cport), pp
    if version == "on":
        proto = "TCP6" if client == "6" else "TCP4"
        assert bytes(pp.whole_raw).startswith(
            f"PROXY {proto} {caddr} ".encode()), pp.whole_raw
    wait_queue_empty(g)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_forwarded_over_tls_to_the_backend(smtpgate, down_backend, mode):
    """proxy_ssl in the mail block: the forwarder speaks TLS to the
    backend, STARTTLS or from the first byte, as a relayed session
    would."""
    b = down_backend(tls=mode)
    g = smtpgate(fwd_conf(b.address, mail=(
        f"    proxy_ssl {'starttls' if mode == 'starttls' else 'on'};\n")))
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: tls\r\n\r\nover TLS\r\n")
    b.start()
    (m,) = b.wait_messages(1, timeout=20)
    assert m.tls and m.tls.startswith("TLSv1."), m.tls
    assert m.content.endswith(b"\r\n\r\nover TLS\r\n"), m.content
    wait_queue_empty(g)


def test_each_message_forwarded_with_its_servers_settings(smtpgate,
                                                         down_backend):
    """Two servers with different proxy settings (the second with
    xclient off): each queued message names the server that took it,
    and the forwarder speaks to the backend as that server's sessions
    would: XCLIENT for the first, none and its own name in EHLO for the
    second.  A server no longer in the configuration falls back to the
    mail block's settings."""
    b = down_backend(xclient=True)
    g = smtpgate(fwd_conf(b.address, servers=[
        "        listen 127.0.0.1:@PORT2@;\n"
        "        server_name second.test;\n"
        "        xclient off;\n",
        "        listen 127.0.0.1:@PORT3@;\n"
        "        server_name second.test;\n"]))
    first, _ = submit(g, "one@example.org", ["r@example.org"],
                      b"Subject: one\r\n\r\n1\r\n")
    second, _ = submit(g, "two@example.org", ["r@example.org"],
                       b"Subject: two\r\n\r\n2\r\n",
                       port=g.ports["PORT2"])
    third, _ = submit(g, "three@example.org", ["r@example.org"],
                      b"Subject: three\r\n\r\n3\r\n",
                      port=g.ports["PORT3"])
    servers = {parse_queued(read(os.path.join(qdir(g), n)))[0]:
               parse_queued(read(os.path.join(qdir(g), n)))[2]["SERVER"]
               for n in queued(g)}
    assert servers == {"one@example.org": "mx.test",
                       "two@example.org": "second.test",
                       "three@example.org": "second.test#2"}, servers
    # the third server goes away with a reload
    old = g.helpers()
    g.reload(fwd_conf(b.address, servers=[
        "        listen 127.0.0.1:@PORT2@;\n"
        "        server_name second.test;\n"
        "        xclient off;\n"]))
    g.wait_old_workers_gone(old)
    b.start()
    got = {m.mail_from: m for m in b.wait_messages(3, timeout=20)}
    g.wait_log(r"\[info\] .*spool forwarder: message " + re.escape(third)
               + r' came through server "second\.test#2", which is no '
               r"longer configured: the mail block's proxy settings are "
               r"used")
    assert words(got["one@example.org"].xclient)["LOGIN"] == "alice"
    assert got["one@example.org"].helo == "client.test"
    assert not got["two@example.org"].xclient
    assert got["two@example.org"].helo == "second.test"
    assert words(got["three@example.org"].xclient)["LOGIN"] == "alice"
    wait_queue_empty(g)


@needs_ipv6
def test_forwarded_to_an_ipv6_backend(smtpgate, down_backend):
    """A group's server at [::1]: the forwarder reaches it as the proxy
    does."""
    b = down_backend(host=net.IPV6, xclient=True)
    assert b.address.startswith("[::1]:"), b.address
    g = smtpgate(fwd_conf(b.address))
    submit(g, "s@example.org", ["r@example.org"],
           b"Subject: v6\r\n\r\nsix\r\n")
    b.start()
    (m,) = b.wait_messages(1, timeout=20)
    assert m.peer[0] == "::1", m.peer
    assert words(m.xclient)["LOGIN"] == "alice", m.xclient
    wait_queue_empty(g)


def test_large_message_forwarded_intact(smtpgate, down_backend):
    """3 MB of text with dot lines, passed through the spool and the
    forwarder's 32 KB reads, arrives byte for byte."""
    from lib.messages import make_message
    b = down_backend()
    g = smtpgate(fwd_conf(b.address))
    message = make_message(3 * 1024 * 1024, seed=7)
    submit(g, "s@example.org", ["r@example.org"], message)
    name, data = only_file(g)
    text = data[data.index(b"Received: "):]
    b.start()
    (m,) = b.wait_messages(1, timeout=60)
    assert_same_bytes(m.content, text)
    assert ("SIZE=%d" % len(text)) in " ".join(m.mail_options)
    wait_queue_empty(g)


def test_garbage_reply_defers_then_delivers(smtpgate, scripted_smtp):
    """A reply that is not SMTP, to the final dot: the message is
    deferred (the server's words are not taken for an answer), tried
    again after spool_forward_retry, and delivered once the server
    behaves."""
    b = scripted_smtp(start=False, dot=lambda s, rs: "this is not SMTP")
    g = smtpgate(fwd_conf(b.address))
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: g\r\n\r\ngarbage first\r\n")
    mark = g.log_mark()
    b.start()
    g.wait_log(r"\[warn\] \d+#\d+: \*\d+ spool forwarder: message "
               + re.escape(qid) + r" to <r@example\.org> deferred "
               r"\(.*an invalid reply\), next try in \d+ s", mark)
    assert queued(g) and b.messages == []
    b.dot = lambda s, rs: None
    (m,) = b.wait_messages(1, timeout=20)
    assert m.content.endswith(b"garbage first\r\n")
    wait_queue_empty(g)


# --------------------------------------------------------------------------
# the queue


def test_many_messages_each_delivered_once(smtpgate, scripted_smtp):
    """30 messages wait while the backend is down; the queue then tries
    one message per interval, not all of them.  Once the backend is
    back each arrives once, at most spool_forward_connections at a
    time."""
    b = scripted_smtp(start=False, dot_delay=0.1)
    g = smtpgate(fwd_conf(b.address,
                          mail="    spool_forward_connections 4;\n"))
    mark = g.log_mark()
    ids = []
    for k in range(3):
        with session(g) as c:
            for j in range(10):
                ids.append(transaction(
                    c, "s@example.org", [f"r{k}.{j}@example.org"],
                    b"Subject: m%d.%d\r\n\r\nbody\r\n" % (k, j)))
    assert len(set(ids)) == 30
    assert len(queued(g)) == 30

    # A dead queue: one message per interval, none put off.
    g.wait_log(r"the queue waits 1000 ms before the next try", mark)
    time.sleep(0.5)
    quiet = g.log_mark()
    time.sleep(2.5)
    waits = g.log_since(quiet).count("the queue waits")
    assert 1 <= waits <= 3, g.log_since(quiet)
    now = time.time()
    assert all(os.stat(os.path.join(qdir(g), n)).st_mtime <= now
               for n in queued(g))

    b.start()
    b.wait_messages(30, timeout=30)
    wait_queue_empty(g)
    time.sleep(1.5)
    subjects = collections.Counter(
        re.search(rb"Subject: (\S+)", m.content).group(1)
        for m in b.messages)
    assert len(subjects) == 30 and set(subjects.values()) == {1}, subjects
    assert len(b.messages) == 30
    assert 2 <= b.max_transactions <= 4, b.max_transactions
    log = g.log_since(mark)
    for qid in ids:
        assert f"message {qid} from <s@example.org> delivered to 1 " \
               "recipient through" in log, qid


def test_reload_while_queued_and_graceful_stop(smtpgate, down_backend):
    b = down_backend(delays={"DATA": 0.3})
    g = smtpgate(fwd_conf(b.address,
                          mail="    spool_forward_connections 2;\n"))
    (old,) = g.helpers()
    with session(g) as c:
        for j in range(12):
            transaction(c, "s@example.org", [f"r{j}@example.org"],
                        b"Subject: n%d\r\n\r\nbody\r\n" % j)
    b.start()
    b.wait_messages(1, timeout=20)
    mark = g.log_mark()
    g.reload()
    m = g.wait_log(r"start spool forwarder process (\d+)", mark)
    new = int(m.group(1))
    assert new != old
    net.wait_until(lambda: g.helpers() == [new], 20,
                   what=f"the old forwarder {old} to exit")
    g.wait_log(rf"process {old} exited with code 0", mark)
    b.wait_messages(12, timeout=30)
    wait_queue_empty(g)
    # the new forwarder sent what the old one had not begun
    g.wait_log(rf"\[info\] {new}#\d+: \*\d+ spool forwarder: message \S+ "
               r"from <s@example\.org> delivered to 1 recipient", mark)
    time.sleep(1.5)
    subjects = collections.Counter(
        re.search(rb"Subject: (\S+)", m.content).group(1)
        for m in b.messages)
    assert len(subjects) == 12 and set(subjects.values()) == {1}, subjects

    # Graceful stop: the forwarder goes with the master.
    assert g.stop(signal.SIGQUIT) == 0
    assert not gatelib.alive(new)
    assert re.search(rf"spool forwarder process {new} exited with code 0",
                     g.error_log()), g.error_log()[-2000:]


def test_killed_forwarder_is_started_again(smtpgate, down_backend):
    b = down_backend()
    g = smtpgate(fwd_conf(b.address))
    g.allow(r"spool forwarder process \d+ exited on signal 9")
    (worker,) = g.workers()
    (old,) = g.helpers()
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: k\r\n\r\nx\r\n")
    mark = g.log_mark()
    os.kill(old, signal.SIGKILL)
    g.wait_log(rf"\[alert\] \d+#\d+: spool forwarder process {old} exited "
               r"on signal 9", mark)
    m = g.wait_log(r"start spool forwarder process (\d+)", mark)
    new = int(m.group(1))
    assert new != old
    net.wait_until(lambda: g.helpers() == [new], 20,
                   what="the new forwarder")
    assert g.workers() == [worker]
    b.start()
    (msg,) = b.wait_messages(1, timeout=20)
    assert msg.rcpt_tos == ["r@example.org"]
    wait_queue_empty(g)
    g.wait_log(rf"\[info\] {new}#\d+: \*\d+ spool forwarder: message "
               + re.escape(qid) + " from", mark)


def test_forwarder_killed_mid_delivery_gives_its_count_back(
        smtpgate, down_backend):
    """The forwarder holds a slot in the group's shared state: killed
    while a backend has its message (max_conns=1 on that backend), the
    delivery it counted is taken back by a worker within a second, so
    clients are not refused for a session nobody holds."""
    b = down_backend(delays={"DATA": 3})
    g = smtpgate(fwd_conf(f"{b.address} max_conns=1"))
    g.allow(r"spool forwarder process \d+ exited on signal 9")
    (old,) = g.helpers()
    submit(g, "s@example.org", ["r@example.org"], b"Subject: k\r\n\r\nx\r\n")
    b.start()
    b.wait_open(1, timeout=20)
    mark = g.log_mark()
    os.kill(old, signal.SIGKILL)
    g.wait_log(rf"\[notice\] .*upstream grp: 1 session of process {old}, "
               r"which exited without ending them, no longer counted", mark)
    b.wait_messages(1, timeout=20)
    wait_queue_empty(g)
    # nothing holds the server now: a client session is relayed to it
    with session(g) as c:
        c.expect("MAIL FROM:<t@example.org>", 250)
        c.expect("RCPT TO:<r@example.org>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: after\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    net.wait_until(lambda: any(m.mail_from == "t@example.org"
                               for m in b.messages), 20,
                   what="the client's message at the backend")


def test_hostile_files_are_moved_aside(smtpgate, down_backend):
    """Files the spool did not write: those that are not a queued
    message go to cur/ with an error each, a symbolic link and a
    directory stay where they are untouched, and a well-formed file
    written by hand (no X-Smtpgate-Forward) is delivered; the forwarder
    lives on."""
    b = down_backend(xclient=True)
    g = smtpgate(fwd_conf(b.address))
    (helper,) = g.helpers()
    t = int(time.time())
    bad = {
        "norp": (b"From: x\r\nSubject: y\r\n\r\nbody\r\n",
                 "no Return-Path line"),
        "barelf": (b"Return-Path: <a@example.org>\nX-Original-To: "
                   b"r@example.org\nReceived: x\n\nbody\n",
                   "bare LF in the envelope"),
        "norcpt": (b"Return-Path: <a@example.org>\r\nReceived: x\r\n\r\n"
                   b"body\r\n", "no X-Original-To line"),
        "truncated": (b"Return-Path: <a@example.org>\r\nX-Original-To: "
                      b"r@example.org\r\n", "truncated envelope"),
        "empty": (b"", None),
        "binary": (bytes(range(256)) * 4, None),
        "badrp": (b"Return-Path: a@example.org\r\nX-Original-To: "
                  b"r@example.org\r\nReceived: x\r\n\r\nb\r\n",
                  "bad Return-Path line"),
        "twofwd": (b"Return-Path: <a@example.org>\r\nX-Original-To: "
                   b"r@example.org\r\nX-Smtpgate-Forward: ADDR=1.2.3.4\r\n"
                   b"X-Smtpgate-Forward: ADDR=1.2.3.4\r\nReceived: x\r\n"
                   b"\r\nb\r\n", "two X-Smtpgate-Forward headers"),
        "manyrcpts": (b"Return-Path: <a@example.org>\r\n"
                      + b"X-Original-To: r@example.org\r\n" * 10001
                      + b"Received: x\r\n\r\nb\r\n",
                      "more recipients than the limit"),
        "hugehead": (b"Return-Path: <a@example.org>\r\nX-Original-To: "
                     b"r@example.org\r\nX-Smtpgate-Forward: A=1\r\n"
                     + (b"\tC=" + b"y" * 900 + b"\r\n") * 1300
                     + b"Received: x\r\n\r\nb\r\n",
                     "its envelope is too long"),
    }
    stage = os.path.join(g.prefix, "stage")
    os.makedirs(stage)
    names = {}
    for i, (key, (data, _)) in enumerate(bad.items()):
        names[key] = f"{t}.M{i}P1Q1.{key},S={len(data)}"
        with open(os.path.join(stage, names[key]), "wb") as f:
            f.write(data)
    good = (b"Return-Path: <hand@example.org>\r\n"
            b"X-Original-To: r@example.org\r\n"
            b"Received: by hand\r\n\r\nhand-written\r\n")
    good_name = f"{t}.M99P1Q1.good,S={len(good)}"
    with open(os.path.join(stage, good_name), "wb") as f:
        f.write(good)
    link = f"{t}.M98P1Q1.link"
    os.symlink("/etc/passwd", os.path.join(qdir(g), link))
    os.mkdir(os.path.join(qdir(g), f"{t}.M97P1Q1.dir"))
    mark = g.log_mark()
    for name in list(names.values()) + [good_name]:
        os.rename(os.path.join(stage, name), os.path.join(qdir(g), name))
    b.start()

    (m,) = b.wait_messages(1, timeout=20)
    assert m.mail_from == "hand@example.org" and \
        m.rcpt_tos == ["r@example.org"]
    assert m.content == b"Received: by hand\r\n\r\nhand-written\r\n"
    assert m.xclient is None            # nothing to tell the backend
    net.wait_until(lambda: len(queued(g, "cur")) == len(bad), 20,
                   what=f"{len(bad)} files in cur/, it holds "
                        f"{queued(g, 'cur')}")
    assert sorted(queued(g, "cur")) == sorted(n + ":2,S"
                                              for n in names.values())
    left = sorted([link, f"{t}.M97P1Q1.dir"])
    net.wait_until(lambda: queued(g) == left, 10,
                   what=f"only {left} in new/, it holds {queued(g)}")
    log = g.log_since(mark)
    for key, (data, why) in bad.items():
        qid = names[key].split(".")[0] + names[key].split(".")[1]
        m = re.search(r"\[error\] \d+#\d+: \*\d+ spool forwarder: message "
                      + re.escape(qid) + r" cannot be delivered \((.*?)\) "
                      r"nor reported to a sender; moved to", log)
        assert m, (key, log[-3000:])
        if why:
            assert m.group(1).startswith(why), (key, m.group(1))
        assert read(os.path.join(qdir(g, "cur"), names[key] + ":2,S")) \
            == data
    # the link was not followed, the forwarder did not die
    assert "root:" not in log
    assert g.helpers() == [helper]
    time.sleep(1.5)
    assert len(b.messages) == 1


# --------------------------------------------------------------------------
# configuration errors


def _emerg(g):
    r = g.ctl("-t")
    assert r.returncode != 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if "[emerg]" in l]
    assert len(lines) == 1, r.stderr
    return lines[0]


def _line_of(g, text, nth=1):
    lines = g.conf_text.splitlines()
    found = [i + 1 for i, l in enumerate(lines) if l.strip() == text]
    return found[nth - 1]


def test_forward_on_a_server_that_is_not_a_spool(smtpgate):
    g = smtpgate(gatelib.conf(proxy_pass="grp", mail=(
        "    upstream grp {\n"
        "        server 127.0.0.1:25 forward;\n"
        "        server spool:queue backup;\n"
        "    }\n")), start=False)
    e = _emerg(g)
    line = _line_of(g, "server 127.0.0.1:25 forward;")
    assert f" {g.conf_path}:{line}: " in e, e
    assert 'invalid parameter "forward" of "server"' in e, e


def test_group_with_nothing_to_forward_to(smtpgate):
    g = smtpgate(gatelib.conf(proxy_pass="grp", mail=(
        "    upstream grp {\n"
        "        server spool:queue forward;\n"
        "    }\n")), start=False)
    e = _emerg(g)
    line = _line_of(g, "upstream grp {")
    assert f" {g.conf_path}:{line}: " in e, e
    assert ('upstream "grp" forwards its spool "spool:queue", but has no '
            'other server to forward to') in e, e


def test_one_spool_forwarded_by_two_groups(smtpgate):
    g = smtpgate(gatelib.conf(proxy_pass="one", mail=(
        "    upstream one {\n"
        "        server 127.0.0.1:25;\n"
        "        server spool:queue backup forward;\n"
        "    }\n"
        "    upstream two {\n"
        "        server 127.0.0.1:26;\n"
        "        server spool:./queue/ backup forward;\n"
        "    }\n")), start=False)
    e = _emerg(g)
    first = _line_of(g, "server spool:queue backup forward;")
    second = _line_of(g, "server spool:./queue/ backup forward;")
    assert f" {g.conf_path}:{second}: " in e, e
    assert f"{g.conf_path}:{first}" in e, e
    # the message names both groups
    assert 'upstream "one"' in e, e
    assert '"two"' in e, ("the error does not name the second group", e)


def test_proxy_smtp_auth_with_a_forwarding_spool(smtpgate):
    g = smtpgate(fwd_conf("127.0.0.1:25", mail="    proxy_smtp_auth on;\n"),
                 start=False)
    e = _emerg(g)
    assert '"proxy_smtp_auth on"' in e and "forwarding spool" in e, e
    # The place named is the directive at fault, or the spool line that
    # it cannot go with; not some other line of the mail block.
    m = re.search(rf" {re.escape(g.conf_path)}:(\d+): ", e)
    assert m, e
    places = {_line_of(g, "proxy_smtp_auth on;"),
              _line_of(g, "server spool:queue backup forward;")}
    assert int(m.group(1)) in places, \
        (f"line {m.group(1)} is "
         f"{g.conf_text.splitlines()[int(m.group(1)) - 1].strip()!r}", e)


def test_proxy_smtp_auth_in_a_server_with_a_forwarding_spool(smtpgate):
    """Only one server logs in to the backends with its clients'
    credentials, and its group forwards its spool: -t refuses it, naming
    that server's block, the group and the spool."""
    g = smtpgate(fwd_conf("127.0.0.1:25",
                          server="        proxy_smtp_auth on;\n"),
                 start=False)
    e = _emerg(g)
    assert '"proxy_smtp_auth on" in this server' in e, e
    assert 'upstream "grp"' in e and '"spool:queue"' in e, e
    assert "XCLIENT" in e, e
    assert f" {g.conf_path}:{_line_of(g, 'server {')}: " in e, e


def test_proxy_smtp_auth_never_spools_for_a_forwarder(smtpgate,
                                                      down_backend):
    """The group named at run time (a map), so no check at start: a
    session of a server with proxy_smtp_auth on is answered 451 when only
    the forwarding spool is left, and nothing is queued, since the
    forwarder would deliver without the login the backends ask for.  A
    server without it, on the same group, queues as usual."""
    b = down_backend()
    g = smtpgate(fwd_conf(
        b.address,
        mail="    map $server_port $grp { default grp; }\n",
        server="        proxy_smtp_auth on;\n        proxy_pass $grp;\n",
        servers=["        listen 127.0.0.1:@PORT2@;\n"
                 "        proxy_pass $grp;\n"]))
    with g.connect() as c:
        assert c.greeting().code == 220
        c.ehlo("client.test")
        # (with proxy_smtp_auth the backend is reached as the client
        # logs in)
        r = c.auth_plain("alice", password("alice"))
        assert r.code == 451 and r.text.startswith("4.4.1 "), r
    g.wait_log(r"\[error\] .*no backend available for \"proxy_pass \$grp\" "
               r"\(\"grp\"\) after "
               r"\d+ attempts?: the spool is the only server left, and it "
               r"forwards without logging in, while \"proxy_smtp_auth\" "
               r"is on: not spooling")
    assert queued(g) == []
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: queued\r\n\r\nkept\r\n",
                    port=g.ports["PORT2"])
    (name,) = queued(g)
    assert name.replace(".", "").startswith(qid), (qid, name)


def test_a_group_whose_spool_does_not_forward_starts_no_forwarder(
        smtpgate):
    g = smtpgate(gatelib.conf(proxy_pass="grp", mail=(
        "    upstream grp {\n"
        "        server 127.0.0.1:25;\n"
        "        server spool:queue backup;\n"
        "    }\n")))
    assert g.ctl("-t").returncode == 0
    assert len(g.workers()) == 1
    assert g.helpers() == []
    assert "spool forwarder" not in g.error_log()


def test_queue_listing(smtpgate, down_backend):
    """GET /queue: each waiting message with its envelope, the next due
    first, read on the thread pool, with the forwarder's note of its
    last try; a file that is not a message is listed with why; HEAD.  POST /queue/ID/remove takes one message out,
    POST /queue/flush has the forwarder try the rest at once; empty once
    delivered."""
    import json
    from test_status import curl

    def post(path):
        out = curl(g, path, "-X", "POST", "-w", "\n%{http_code}")
        body, code = out.rsplit("\n", 1)
        return int(code), body

    b = down_backend()
    g = smtpgate(fwd_conf(b.address, retry="30s 60s", mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n"
        "    status_write on;\n")))
    first, _ = submit(g, "s@example.org", ["r@example.org"],
                      b"Subject: 1\r\n\r\none\r\n")
    second, _ = submit(g, "t@example.org", ["x@example.org",
                                            "y@example.org"],
                       b"Subject: 2\r\n\r\n" + b"two\r\n" * 100)
    g.wait_log(r"message " + re.escape(second) + r" deferred")
    bad = os.path.join(qdir(g), f"{int(time.time())}.bad.host")
    with open(bad, "wb") as f:
        f.write(b"not a message\r\n")
    os.utime(bad, (time.time() + 3600, time.time() + 3600))  # due last
    q = json.loads(curl(g, "/queue"))
    (sp,) = q["spools"]
    assert sp["directory"] == os.path.join(g.prefix, "queue")
    assert sp["upstream"] == "grp"
    assert (sp["queued"], sp["listed"]) == (3, 3), sp
    msgs = {m["id"]: m for m in sp["messages"]}
    assert msgs[first]["sender"] == "s@example.org"
    assert msgs[first]["recipients"] == ["r@example.org"]
    assert msgs[second]["recipients"] == ["x@example.org", "y@example.org"]
    assert msgs[second]["size"] > msgs[first]["size"] > 0
    for qid in (first, second):
        assert abs(msgs[qid]["arrival"] - time.time()) < 120
        assert "error" not in msgs[qid]
        assert msgs[qid]["warned"] is False
    assert sp["messages"][-1]["id"].endswith("bad")     # ".bad.host"
    assert sp["messages"][-1]["error"], sp["messages"][-1]
    next_tries = [m["next_try"] for m in sp["messages"]]
    assert next_tries == sorted(next_tries)
    # the forwarder's note of its last try: the group is down
    tried = [m for m in sp["messages"] if m.get("tries")]
    assert tried, sp["messages"]
    for m in tried:
        assert "Connection refused" in m["last_reason"], m
        assert abs(m["last_try"] - time.time()) < 120
    assert msgs[first]["tries"] >= 0
    head = curl(g, "/queue", "-I")
    assert head.startswith("HTTP/1.1 200 OK") and \
        "application/json" in head
    os.unlink(bad)

    # remove one
    code, body = post(f"/queue/{first}/remove")
    assert (code, json.loads(body)) == (200, {"id": first, "removed": True})
    g.wait_log(rf"\[notice\] .*queue: message {first} removed from "
               rf'"{re.escape(sp["directory"])}" by status client '
               r"127\.0\.0\.1")
    (sp,) = json.loads(curl(g, "/queue"))["spools"]
    assert [m["id"] for m in sp["messages"]] == [second]
    for path, want in ((f"/queue/{first}/remove", 404),
                       ("/queue/no.such/remove", 404),
                       ("/queue/%00/remove", 404),
                       ("/queue/x/delete", 404)):
        assert post(path)[0] == want, path
    r = curl(g, "/queue/flush", "-w", "%{http_code}", "-o", "/dev/null")
    assert r == "405"

    # flush: the forwarder tries it now, not in 30 s
    b.start()
    code, body = post("/queue/flush")
    assert (code, json.loads(body)) == (200, {"spools": 1, "flushed": 1})
    g.wait_log(r"queue: flush asked by status client 127\.0\.0\.1, 1 of "
               r"1 forwarding spool told")
    g.wait_log(r"spool forwarder: flush: 1 message of ")
    (m,) = b.wait_messages(1, timeout=20)
    assert m.mail_from == "t@example.org"
    wait_queue_empty(g)
    q = json.loads(curl(g, "/queue"))
    assert q["spools"][0]["messages"] == [] and \
        q["spools"][0]["queued"] == 0


def test_queue_hold_and_release(smtpgate, down_backend):
    """POST /queue/ID/hold moves a message to DIR/hold/, where the
    forwarder never tries it (not on its interval, not on a flush), and
    /queue lists it as held; POST /queue/ID/release puts it back in
    DIR/new/, due at once, and it is delivered.  Both answer 200 again
    for a message already so, 409 while the forwarder has the file
    locked, 404 for no such message; a held message can be removed."""
    import fcntl
    import json
    from test_status import curl

    def post(path):
        out = curl(g, path, "-X", "POST", "-w", "\n%{http_code}")
        body, code = out.rsplit("\n", 1)
        return int(code), body

    def where(qid):
        return [sub for sub in ("new", "hold")
                if os.path.isdir(qdir(g, sub))
                and any(n.replace(".", "").startswith(qid)
                        for n in os.listdir(qdir(g, sub)))]

    b = down_backend()
    g = smtpgate(fwd_conf(b.address, mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n"
        "    status_write on;\n")))
    spool = os.path.join(g.prefix, "queue")
    held, _ = submit(g, "held@example.org", ["r@example.org"],
                     b"Subject: held\r\n\r\nwait\r\n")
    other, _ = submit(g, "other@example.org", ["r@example.org"],
                      b"Subject: other\r\n\r\ngo\r\n")
    gone, _ = submit(g, "gone@example.org", ["r@example.org"],
                     b"Subject: gone\r\n\r\nnever\r\n")

    # while the forwarder has the file locked: 409, nothing moves
    (name,) = [n for n in queued(g) if n.replace(".", "").startswith(held)]
    with open(os.path.join(qdir(g), name), "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert post(f"/queue/{held}/hold")[0] == 409
    assert where(held) == ["new"]

    code, body = post(f"/queue/{held}/hold")
    assert (code, json.loads(body)) == (200, {"id": held, "held": True})
    g.wait_log(rf"\[notice\] .*queue: message {held} held in "
               rf'"{re.escape(spool)}" by status client 127\.0\.0\.1')
    assert where(held) == ["hold"]
    code, body = post(f"/queue/{held}/hold")
    assert (code, json.loads(body)) == \
        (200, {"id": held, "held": True, "unchanged": True})
    assert post(f"/queue/{gone}/hold")[0] == 200
    code, body = post(f"/queue/{gone}/remove")      # held, then removed
    assert (code, json.loads(body)) == (200, {"id": gone, "removed": True})
    assert where(gone) == []

    (sp,) = json.loads(curl(g, "/queue"))["spools"]
    assert (sp["queued"], sp["held"], sp["listed"]) == (1, 1, 2), sp
    # the forwarder counts it at its next listing, for /metrics and /status
    held_metric = re.compile(
        r'^smtpgate_spool_queue_held_messages\{upstream="grp",spool="'
        + re.escape(spool) + r'"\} (\d+)$', re.M)

    def counted(n):
        m = held_metric.search(curl(g, "/metrics"))
        st = json.loads(curl(g, "/status"))["spools"][0]
        return m and int(m.group(1)) == n and st["held"] == n
    net.wait_until(lambda: counted(1), 20, what="1 held message counted")
    assert [(m["id"], m["held"]) for m in sp["messages"]] == \
        [(other, False), (held, True)], sp["messages"]
    assert sp["messages"][1]["next_try"] is None
    assert sp["messages"][1]["sender"] == "held@example.org"

    # the group comes back: the waiting message goes, the held one stays,
    # through a flush too
    b.start()
    (m,) = b.wait_messages(1, timeout=20)
    assert m.mail_from == "other@example.org"
    wait_queue_empty(g)
    mark = g.log_mark()
    assert post("/queue/flush")[0] == 200
    g.wait_log(r"spool forwarder: flush: 0 messages of ", since=mark)
    time.sleep(1.5)                 # and one more forwarder interval
    assert len(b.messages) == 1 and where(held) == ["hold"]

    code, body = post(f"/queue/{held}/release")
    assert (code, json.loads(body)) == (200, {"id": held, "held": False})
    g.wait_log(rf"\[notice\] .*queue: message {held} released in "
               rf'"{re.escape(spool)}"')
    got = b.wait_messages(2, timeout=20)
    assert got[1].mail_from == "held@example.org"
    assert got[1].content.endswith(b"\r\n\r\nwait\r\n")
    wait_queue_empty(g)
    assert os.listdir(qdir(g, "hold")) == []
    net.wait_until(lambda: counted(0), 20, what="no held message counted")
    for path in (f"/queue/{held}/release", f"/queue/{held}/hold",
                 "/queue/x/hold/release", "/queue//hold"):
        assert post(path)[0] == 404, path


def test_hold_and_release_while_the_forwarder_delivers(smtpgate,
                                                       scripted_smtp):
    """20 messages are delivered (slowly) while a client holds and
    releases them at random for a bounded time: every hold or release
    is 200 or 409 (being delivered), and in the end, all released, each
    message has arrived exactly once: none lost between new/ and hold/,
    none sent twice."""
    import json
    import random
    from test_status import curl

    b = scripted_smtp(start=False, dot_delay=0.25)
    g = smtpgate(fwd_conf(b.address, mail=(
        "    spool_forward_connections 3;\n"
        "    status_listen 127.0.0.1:@PORTS@;\n"
        "    status_write on;\n")))
    ids = []
    with session(g) as c:
        for j in range(20):
            ids.append(transaction(c, "s@example.org", [f"r{j}@example.org"],
                                   b"Subject: m%d\r\n\r\nbody\r\n" % j))
    b.start()
    rnd = random.Random(7)
    codes = collections.Counter()
    deadline = time.time() + 4
    while time.time() < deadline:
        qid = rnd.choice(ids)
        action = rnd.choice(["hold", "release"])
        code = curl(g, f"/queue/{qid}/{action}", "-X", "POST",
                    "-o", "/dev/null", "-w", "%{http_code}")
        codes[code] += 1
    assert set(codes) <= {"200", "404", "409"}, codes
    assert codes["200"] >= 5, codes     # the moves did happen
    # release whatever is still held
    (sp,) = json.loads(curl(g, "/queue"))["spools"]
    for m in sp["messages"]:
        if m["held"]:
            assert curl(g, f"/queue/{m['id']}/release", "-X", "POST",
                        "-o", "/dev/null", "-w", "%{http_code}") == "200"
    b.wait_messages(20, timeout=60)
    wait_queue_empty(g, timeout=60)
    assert os.listdir(qdir(g, "hold")) == []
    time.sleep(1.5)                 # nothing more arrives
    subjects = collections.Counter(
        re.search(rb"Subject: (\S+)", m.content).group(1)
        for m in b.messages)
    assert len(subjects) == 20 and set(subjects.values()) == {1}, subjects


def test_queue_hold_fails_clearly(smtpgate, down_backend):
    """DIR/hold, made at start, replaced by something that is not a
    directory: the hold gets 500 and the error log says what to check;
    the message stays where it was, and /queue says the hold/ directory
    could not be read.  At the next load it is a file:line error."""
    import json
    from test_status import curl

    b = down_backend()
    g = smtpgate(fwd_conf(b.address, mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n"
        "    status_write on;\n")))
    assert os.path.isdir(qdir(g, "hold"))
    assert oct(os.stat(qdir(g, "hold")).st_mode & 0o777) == "0o700"
    os.rmdir(qdir(g, "hold"))
    with open(qdir(g, "hold"), "w") as f:
        f.write("in the way\n")
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: x\r\n\r\nx\r\n")
    out = curl(g, f"/queue/{qid}/hold", "-X", "POST", "-w", "\n%{http_code}")
    assert out.endswith("\n500"), out
    g.wait_log(rf"\[error\] .*queue: could not hold message {qid} in "
               r'".*": check that smtpgate\'s user may create and write '
               r"its hold/ directory \(20: Not a directory\)")
    assert len(queued(g)) == 1
    (sp,) = json.loads(curl(g, "/queue"))["spools"]
    assert sp["error"] == "its hold/ directory could not be read", sp
    assert sp["queued"] == 1 and sp["messages"][0]["held"] is False
    r = g.ctl("-t")
    assert r.returncode != 0 and re.search(
        r"\[emerg\] " + re.escape(g.conf_path) + r':\d+: the spool ".*" '
        r'needs ".*/queue/hold" to be a directory', r.stderr), \
        r.stderr


def test_queue_show_one_message(smtpgate, down_backend):
    """GET /queue/ID: one message's envelope, its session's attributes
    and its header section (unfolded; bytes that are not UTF-8 shown as
    '?'), waiting or held; only with the rights of a write, since it
    shows what senders wrote; 404, 405 and 403 otherwise."""
    import json
    from test_status import curl

    def get(path, *args):
        out = curl(g, path, "-w", "\n%{http_code}", *args)
        body, code = out.rsplit("\n", 1)
        return int(code), body

    b = down_backend()
    g = smtpgate(fwd_conf(b.address, mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n"
        "    status_write on;\n"
        "    status_write_allow 127.0.0.1;\n")))
    text = (b"From: Alice <alice@example.org>\r\n"
            b"Subject: a long\r\n subject, folded\r\n"
            b"X-Odd: caf\xc3\xa9 and \xff\r\n"
            b"\r\n"
            b"Body: not a header\r\n")
    qid, _ = submit(g, "s@example.org", ["r1@example.org", "r2@example.org"],
                    text, helo="odd+name=x.test")
    code, body = get(f"/queue/{qid}")
    assert code == 200, body
    m = json.loads(body)
    assert m["id"] == qid and m["held"] is False and m["upstream"] == "grp"
    assert m["sender"] == "s@example.org"
    assert m["recipients"] == ["r1@example.org", "r2@example.org"]
    assert m["attributes"]["LOGIN"] == "alice"
    assert m["attributes"]["ADDR"] == "127.0.0.1"
    assert m["attributes"]["SERVER"] == "mx.test"
    # kept as xtext in the file, shown as the client wrote it
    assert m["attributes"]["HELO"] == "odd+name=x.test"
    assert b"HELO=odd+2Bname+3Dx.test" in only_file(g)[1]
    assert m["headers_cut"] is False
    headers = [tuple(h) for h in m["headers"]]
    assert headers[0][0] == "Received", headers
    assert ("From", "Alice <alice@example.org>") in headers
    assert ("Subject", "a long subject, folded") in headers
    assert ("X-Odd", "caf?? and ?") in headers, headers
    assert all(h[0] != "Body" for h in headers)
    assert m["message_size"] == m["size"] - len(
        read(os.path.join(qdir(g), only_file(g)[0])).split(
            b"\r\nReceived: ")[0]) - 2
    # held: the same, marked
    assert curl(g, f"/queue/{qid}/hold", "-X", "POST",
                "-o", "/dev/null", "-w", "%{http_code}") == "200"
    m = json.loads(get(f"/queue/{qid}")[1])
    assert m["held"] is True and m["next_try"] is None
    # HEAD, 404, 405
    assert curl(g, f"/queue/{qid}", "-I").startswith("HTTP/1.1 200 OK")
    assert get("/queue/nosuch1")[0] == 404
    assert get(f"/queue/{qid}.x")[0] == 404
    assert get(f"/queue/{qid}", "-X", "POST")[0] == 405
    assert get(f"/queue/{qid}", "-X", "DELETE")[0] == 405
    # another address: not shown
    code, body = get(f"/queue/{qid}", "--interface", "127.0.0.2")
    assert (code, body.strip()) == (403, "Queued messages are not shown to "
                                         "this address (status_write_allow)")
    g.wait_log(r"status: client 127\.0\.0\.2 refused a queued message "
               r"\(status_write_allow\)")


def test_queue_show_a_file_that_is_not_a_message(smtpgate, down_backend):
    """A file in new/ that is not a queued message (no envelope, a
    header section that never ends, NUL bytes): shown with why, and no
    headers; a file whose header section is longer than what is read is
    shown cut."""
    import json
    from test_status import curl

    b = down_backend()
    g = smtpgate(fwd_conf(b.address, mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n"
        "    status_write on;\n")))
    # (a queue id is read from the file's name: digits, "M", "P", "Q")
    t = int(time.time())
    bad = os.path.join(qdir(g), f"{t}.M1P1Q1.host")
    with open(bad, "wb") as f:
        f.write(b"\x00garbage\r\nno: envelope")
    os.utime(bad, (t + 3600, t + 3600))
    m = json.loads(curl(g, f"/queue/{t}M1P1Q1"))
    assert m["error"] and "headers" not in m, m
    # a real envelope, then a header section longer than what is read
    long = os.path.join(qdir(g), f"{t}.M2P1Q1.host")
    with open(long, "wb") as f:
        f.write(b"Return-Path: <s@example.org>\r\n"
                b"X-Original-To: r@example.org\r\n"
                b"Received: from x\r\n"
                + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 200)
                           for i in range(600)))
    os.utime(long, (t + 3600, t + 3600))
    m = json.loads(curl(g, f"/queue/{t}M2P1Q1"))
    assert m["headers_cut"] is True and 0 < len(m["headers"]) <= 500, \
        (m.get("headers_cut"), len(m.get("headers", [])))
    assert m["headers"][0] == ["Received", "from x"]
    os.unlink(bad)
    os.unlink(long)


def test_queue_show_needs_status_write(smtpgate, down_backend):
    import json
    from test_status import curl

    b = down_backend()
    g = smtpgate(fwd_conf(b.address, mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n")))
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: private\r\n\r\nx\r\n")
    out = curl(g, f"/queue/{qid}", "-w", "\n%{http_code}")
    assert out == "Reading a queued message needs status_write on\n\n403", \
        out
    # the listing goes on without it
    assert json.loads(curl(g, "/queue"))["spools"][0]["queued"] == 1


def test_queue_listing_without_a_forwarding_spool(smtpgate, backend):
    import json
    from test_status import curl

    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n")))
    assert json.loads(curl(g, "/queue")) == {"spools": []}
    # writes are off by default
    out = curl(g, "/queue/flush", "-X", "POST", "-w", "\n%{http_code}")
    assert out == "Writes are off: set status_write on\n\n403", out


def test_queue_counters_in_metrics_and_status(smtpgate, scripted_smtp):
    """/metrics and /status show a forwarding spool's queue: how many wait
    and since when while the group is down, then the recipients by result
    and the notifications, once the forwarder has sent them on."""
    import json
    import subprocess
    from prometheus_client.parser import text_string_to_metric_families

    def fetch(g, path):
        r = subprocess.run(["curl", "-sS", "--max-time", "20",
                            f"http://127.0.0.1:{g.ports['PORTS']}{path}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def scrape(g):
        out = {}
        for fam in text_string_to_metric_families(fetch(g, "/metrics")):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    b = scripted_smtp(
        start=False,
        rcpt=lambda s, r: ("550 5.1.1 no such user"
                           if r.startswith("gone@") else None))
    g = smtpgate(fwd_conf(b.address, mail=(
        "    status_listen 127.0.0.1:@PORTS@;\n")))
    spool = os.path.join(g.prefix, "queue")
    labels = {"upstream": "grp", "spool": spool}

    def val(m, name, **more):
        return m[(name, frozenset({**labels, **more}.items()))]

    for i in range(3):
        submit(g, "s@example.org", [f"r{i}@example.org"],
               f"Subject: {i}\r\n\r\nbody\r\n".encode())
    submit(g, "s@example.org", ["gone@example.org"],
           b"Subject: gone\r\n\r\nbody\r\n")
    time.sleep(1.2)                    # one listing of the queue at least

    def waiting():
        m = scrape(g)
        return m if val(m, "smtpgate_spool_queue_messages") == 4 else None
    m = net.wait_until(waiting, 20, what="4 messages counted as queued")
    assert val(m, "smtpgate_spool_queue_oldest_seconds") >= 1
    for r in ("delivered", "deferred", "failed"):
        assert val(m, "smtpgate_spool_forward_recipients_total",
                   result=r) == 0
    st = json.loads(fetch(g, "/status"))
    (sp,) = st["spools"]
    assert sp["directory"] == spool and sp["upstream"] == "grp"
    assert sp["queued"] == 4 and sp["oldest_seconds"] >= 1
    # the spool's free space, as the forwarder saw it at its listing
    vfs = os.statvfs(spool)
    free = vfs.f_bavail * vfs.f_frsize
    for got in (val(m, "smtpgate_spool_free_bytes"), sp["free_bytes"]):
        assert 0 < got and abs(got - free) < free // 10 + (256 << 20), \
            (got, free)

    b.start()
    wait_queue_empty(g)

    def settled():
        m = scrape(g)
        return m if (val(m, "smtpgate_spool_forward_recipients_total",
                         result="delivered") == 4
                     and val(m, "smtpgate_spool_queue_messages") == 0) \
            else None
    # three messages, and the notification about the fourth
    m = net.wait_until(settled, 30, what="every recipient delivered")
    assert val(m, "smtpgate_spool_forward_recipients_total",
               result="failed") == 1
    assert val(m, "smtpgate_spool_forward_reports_total") == 1
    assert val(m, "smtpgate_spool_queue_oldest_seconds") == 0
    st = json.loads(fetch(g, "/status"))
    (sp,) = st["spools"]
    assert (sp["queued"], sp["delivered"], sp["failed"], sp["reports"]) \
        == (0, 4, 1, 1)


def test_forwarded_to_a_real_postfix(smtpgate, make_postfix):
    """Postfix itself as the group's server: down while the client sends,
    then back.  What Postfix records comes from the XCLIENT attributes the
    session left in the queued file: the client's HELO name and address
    in its Received line, its login as the authenticated sender."""
    from lib import postfix as postfixlib

    p = make_postfix(main={"smtpd_sasl_authenticated_header": "yes"})
    assert p.stop() == []
    g = smtpgate(fwd_conf(p.address))
    message = (b"From: s@example.org\r\nTo: you@example.org\r\n"
               b"Subject: through postfix\r\n\r\n.dot line\r\nend\r\n")
    qid, _ = submit(g, "s@example.org", ["you@example.org"], message,
                    helo="laptop.client.test")
    assert queued(g)
    p.start()
    (raw,) = p.wait_messages(1, timeout=30)
    wait_queue_empty(g)
    received = postfixlib.headers(raw, "Received")
    assert any("from laptop.client.test" in r and "[127.0.0.1]" in r
               and "(Authenticated sender: alice)" in r
               for r in received), received
    # smtpgate's own Received line, then the message as the client sent it
    assert any(qid in r for r in received), received
    assert postfixlib.body(raw) == b".dot line\nend\n"


def test_connections_kept_between_messages(smtpgate, down_backend):
    """Within a burst, a connection serves several messages, each
    introduced by its own XCLIENT (the login of the session that stored
    it); once the queue is empty the kept connections are closed."""
    b = down_backend(xclient=True)
    g = smtpgate(fwd_conf(b.address, mail=(
        "    spool_forward_connections 2;\n")))
    users = ["alice", "bob", "carol", "dave", "erin", "alice", "bob",
             "carol"]
    for i, u in enumerate(users):
        submit(g, f"{u}@example.org", [f"r{i}@example.org"],
               f"Subject: {i}\r\n\r\nbody {i}\r\n".encode(), user=u)
    b.start()
    msgs = b.wait_messages(len(users), timeout=30)
    wait_queue_empty(g)
    assert len(msgs) == len(users)
    for m in msgs:
        login = dict(w.split("=", 1) for w in m.xclient.split())["LOGIN"]
        assert m.mail_from == f"{login}@example.org", (m.mail_from,
                                                         m.xclient)
    # at most two at once, and fewer connections than messages
    assert b.connections < len(users), b.connections
    net.wait_until(lambda: b.open_connections == 0, 10,
                   what="the kept connections to be closed")


def test_a_kept_connection_the_server_dropped(smtpgate, scripted_smtp):
    """A server that closes a kept connection at its next MAIL: the
    message goes over a new connection at once, the server is not
    counted as failing, nothing is deferred."""
    b = scripted_smtp(start=False, drop_on_reuse=True)
    g = smtpgate(fwd_conf(b.address, mail=(
        "    spool_forward_connections 1;\n")))
    for i in range(4):
        submit(g, "s@example.org", [f"r{i}@example.org"],
               f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
    mark = g.log_mark()
    b.start()
    b.wait_messages(4, timeout=30)
    wait_queue_empty(g)
    assert sorted(m.rcpt_tos[0] for m in b.messages) == [
        f"r{i}@example.org" for i in range(4)]
    assert b.dropped >= 1
    g.wait_log(r"\[info\] \d+#\d+: \*\d+ spool forwarder: message \S+: "
               r"a kept connection to \S+ failed \(.*\), connecting anew",
               mark)
    log = g.log_since(mark)
    assert " deferred" not in log, log


def test_flush_tries_deferred_messages_at_once(smtpgate, scripted_smtp):
    """smtpgate -s flush: a message put off by a 4xx for an hour is tried
    again at once, as "postqueue -f" would do it."""
    busy = {"on": True}
    b = scripted_smtp(start=False,
                      rcpt=lambda s, r: ("451 4.3.0 try later"
                                         if busy["on"] else None))
    g = smtpgate(fwd_conf(b.address, retry="1h"))
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: f\r\n\r\nflush me\r\n")
    mark = g.log_mark()
    b.start()
    g.wait_log(r"spool forwarder: message " + re.escape(qid)
               + r" to <r@example\.org> deferred \(451 4\.3\.0 try later\),"
               r" next try in 3600 s", mark)
    busy["on"] = False
    time.sleep(1.5)                    # two intervals: still put off
    assert b.messages == [] and queued(g)
    mark = g.log_mark()
    r = g.ctl("-s", "flush")
    assert r.returncode == 0, r
    (m,) = b.wait_messages(1, timeout=20)
    assert m.content.endswith(b"flush me\r\n")
    wait_queue_empty(g)
    g.wait_log(r"\[notice\] \d+#\d+: flush: passed on to the spool "
               r"forwarder", mark)
    g.wait_log(r"\[notice\] \d+#\d+: spool forwarder: flush: 1 message of "
               r"\"[^\"]+/queue\" to try now", mark)


def test_flush_without_a_forwarding_spool(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    mark = g.log_mark()
    assert g.ctl("-s", "flush").returncode == 0
    g.wait_log(r"\[notice\] \d+#\d+: flush: nothing to flush, no "
               r"forwarding spool is configured", mark)
    assert g.workers()


def test_reloads_during_a_drain_send_each_message_once(smtpgate,
                                                      scripted_smtp):
    """Five reloads while 80 messages drain: each reload starts a new
    forwarder beside the old one, which finishes what it began; the file
    locks keep the two apart, so every message arrives exactly once."""
    b = scripted_smtp(start=False, dot_delay=0.05)
    g = smtpgate(fwd_conf(b.address,
                          mail="    spool_forward_connections 4;\n"))
    with session(g) as c:
        for j in range(80):
            transaction(c, "s@example.org", [f"r{j}@example.org"],
                        b"Subject: m%d\r\n\r\nbody\r\n" % j)
    b.start()
    b.wait_messages(1, timeout=20)
    for _ in range(5):
        g.reload()
        time.sleep(0.2)
    b.wait_messages(80, timeout=60)
    wait_queue_empty(g)
    net.wait_until(lambda: len(g.helpers()) == 1, 30,
                   what="the old forwarders to exit")
    time.sleep(1.5)                     # anything sent twice would be here
    subjects = collections.Counter(
        re.search(rb"Subject: (\S+)", m.content).group(1)
        for m in b.messages)
    assert len(subjects) == 80 and set(subjects.values()) == {1}, \
        [s for s, n in subjects.items() if n != 1]
    assert queued(g, "cur") == []


def test_delay_warning_is_sent_once(smtpgate, scripted_smtp):
    """spool_forward_delay_warning: a message still deferred at that age
    gets its sender one warning (Action: delayed, Will-Retry-Until), not
    one per try; the file is marked ",W"; the message is still delivered
    once the server takes it."""
    busy = {"on": True}

    def rcpt(sender, r):
        # the original is refused for a while; the warning (from <>) not
        if sender and busy["on"]:
            return "452 4.2.2 mailbox full"
        return None
    b = scripted_smtp(start=False, rcpt=rcpt)
    g = smtpgate(fwd_conf(b.address, retry="1s", mail=(
        "    spool_forward_delay_warning 2s;\n"
        "    spool_forward_lifetime 1h;\n")))
    qid, _ = submit(g, "s@example.org", ["r@example.org"],
                    b"Subject: slow\r\n\r\nlater\r\n")
    mark = g.log_mark()
    b.start()
    (w,) = b.wait_messages(1, timeout=20)
    assert w.mail_from == "" and w.rcpt_tos == ["s@example.org"]
    msg, per_msg, per_rcpt, _ = parse_dsn(w.content)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert per_msg["X-Smtpgate-Queue-ID"] == qid
    (blk,) = per_rcpt
    assert blk["Action"] == "delayed"
    assert blk["Status"] == "4.2.2"
    assert blk["Diagnostic-Code"] == "smtp; 452 4.2.2 mailbox full"
    assert "Will-Retry-Until" in blk
    g.wait_log(r"\[notice\] \d+#\d+: \*\d+ spool forwarder: message "
               + re.escape(qid) + r" to <r@example\.org> still deferred "
               r"\(452 4\.2\.2 mailbox full\), warned <s@example\.org> in "
               r"message \S+", mark)
    # the warning's own file goes once its 250 is read
    (name,) = net.wait_until(lambda: queued(g) if len(queued(g)) == 1
                             else None, 10, what="the warning's file to go")
    assert name.endswith(",W"), name

    # more tries: no second warning
    time.sleep(3)
    assert len(b.messages) == 1, [m.mail_from for m in b.messages]
    busy["on"] = False
    b.wait_messages(2, timeout=20)
    wait_queue_empty(g)
    assert b.messages[1].mail_from == "s@example.org"
    assert b.messages[1].content.endswith(b"later\r\n")
