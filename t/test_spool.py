"""The spool ("proxy_pass spool:DIR"): smtpgate takes the message itself
and stores it in a Maildir.  What a client observes (replies, pipelining,
BDAT, limits, errors), what lands in DIR/new byte for byte after the
headers smtpgate adds, and what does not land there: nothing refused,
nothing unfinished, nothing after a crash in the middle of DATA."""

import os
import re
import shutil
import signal
import smtplib
import subprocess
import time

import pytest

from lib import gate as gatelib
from lib import net, pki as pkilib
from lib.checks import assert_same_bytes
from lib.messages import make_message
from lib.smtp import dot_stuff, plain_token
from lib.users import password

QUEUED = re.compile(r"^2\.0\.0 Ok: queued as (\d+M\d+P\d+Q\d+)$")
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^/,:]+),S=(\d+)$")
TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
STORAGE = b"452 4.3.1 Insufficient system storage\r\n"


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def spool_conf(mail="", **kw):
    kw.setdefault("spool", "spool")
    return gatelib.conf(mail=mail, **kw)


def spool_dir(g, name="spool"):
    return os.path.join(g.prefix, name)


def listing(g, sub, name="spool"):
    return sorted(os.listdir(os.path.join(spool_dir(g, name), sub)))


def stored(g, name="spool"):
    """The files in DIR/new: a list of (file name, bytes)."""
    out = []
    for f in listing(g, "new", name):
        with open(os.path.join(spool_dir(g, name), "new", f), "rb") as fh:
            out.append((f, fh.read()))
    return out


def wait_tmp_empty(g, name="spool", timeout=20):
    net.wait_until(lambda: not listing(g, "tmp", name), timeout,
                   what=f"{name}/tmp to be empty, it holds "
                        f"{listing(g, 'tmp', name)}")


def split(data):
    """A stored file -> (Return-Path value, [X-Original-To values],
    Received header with its continuation lines, the message)."""
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: "), data[:300]
    ret = lines[0][len(b"Return-Path: "):]
    i = 1
    rcpts = []
    while lines[i].startswith(b"X-Original-To: "):
        rcpts.append(lines[i][len(b"X-Original-To: "):].decode())
        i += 1
    assert lines[i].startswith(b"Received: "), data[:600]
    received = [lines[i]]
    i += 1
    while lines[i].startswith(b"\t"):
        received.append(lines[i])
        i += 1
    return (ret.decode(), rcpts, b"\r\n".join(received).decode(),
            b"\r\n".join(lines[i:]))


def bdat(c, chunk, last=False):
    """One BDAT command and its octets; its reply."""
    c.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
           + chunk)
    return c.reply()


def login(c, user="dave"):
    c.ehlo()
    r = c.auth_plain(user, password(user))
    assert r.code == 235, r


def queue_id(reply):
    m = QUEUED.match(reply.last)
    assert reply.code == 250 and m, reply
    return m.group(1)


# --------------------------------------------------------------------------
# storing


def test_message_lands_byte_exact_after_the_added_headers(smtpgate):
    g = smtpgate(spool_conf())
    msg = make_message(50000, seed=11)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=60) as c:
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        code, text = c.mail("sender@example.org")
        assert code == 250
        assert c.rcpt("rcpt1@example.org")[0] == 250
        assert c.rcpt("rcpt2@example.org")[0] == 250
        code, text = c.data(msg)
        assert code == 250, text
        m = QUEUED.match(text.decode())
        assert m, text
        qid = m.group(1)
    ((name, data),) = stored(g)
    n = NAME.match(name)
    assert n, name
    assert int(n.group(6)) == len(data)
    assert f"{n.group(1)}M{n.group(2)}P{n.group(3)}Q{n.group(4)}" == qid
    ret, rcpts, received, body = split(data)
    assert ret == "<sender@example.org>"
    assert rcpts == ["rcpt1@example.org", "rcpt2@example.org"]
    assert re.fullmatch(
        r"Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n"
        r"\tby mx\.test \(smtpgate\) with ESMTPA id " + qid + r"\r\n"
        r"\t\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000", received), \
        received
    assert_same_bytes(body, msg)
    assert listing(g, "tmp") == []
    g.wait_log(r"\[info\] \d+#\d+: \*\d+ stored message " + qid + r", "
               + str(len(data)) + r" bytes, from <sender@example\.org>, "
               r"2 recipients, in \S+/spool/new/" + re.escape(name)
               + r", client: 127\.0\.0\.1.*login: \"alice\"")


def test_single_recipient_is_named_in_received(smtpgate):
    g = smtpgate(spool_conf())
    with g.session() as c:
        login(c)
        r = c.mail("", ["only@example.org"], b"Subject: s\r\n\r\nx\r\n")
        qid = queue_id(r)
    ((_, data),) = stored(g)
    ret, rcpts, received, body = split(data)
    assert ret == "<>"
    assert rcpts == ["only@example.org"]
    assert f"with ESMTPA id {qid}\r\n\tfor <only@example.org>; " in received
    assert body == b"Subject: s\r\n\r\nx\r\n"


def test_several_messages_in_one_session(smtpgate):
    g = smtpgate(spool_conf())
    msgs = [make_message(2000 + i, seed=i, subject=f"m{i}") for i in range(4)]
    ids = []
    with g.session() as c:
        login(c)
        for i, msg in enumerate(msgs):
            ids.append(queue_id(c.mail(f"s{i}@example.org",
                                       [f"r{i}@example.org"], msg)))
        assert c.cmd("QUIT").code == 221
    assert len(set(ids)) == 4
    files = stored(g)
    assert len(files) == 4
    by_sender = {split(d)[0]: split(d)[3] for _, d in files}
    for i, msg in enumerate(msgs):
        assert_same_bytes(by_sender[f"<s{i}@example.org>"], msg)


def test_pipelined_auth_envelope_and_data(smtpgate):
    """EHLO, AUTH, MAIL, two RCPTs and DATA in one packet (the spool
    takes over with the commands pipelined after AUTH), then the message,
    a second transaction and QUIT in another: every reply in order."""
    g = smtpgate(spool_conf())
    msg = b"Subject: pipelined\r\n\r\nbody\r\n"
    with g.session() as c:
        c.send(b"EHLO client.test\r\n"
               b"AUTH PLAIN " + plain_token("dave", password("dave")).encode()
               + b"\r\nMAIL FROM:<a@example.org>\r\n"
               b"RCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n"
               b"DATA\r\n")
        assert c.reply().code == 250
        assert c.reply().raw == b"235 2.7.0 Authentication successful\r\n"
        assert c.reply().raw == b"250 2.1.0 OK\r\n"
        assert c.reply().raw == b"250 2.1.5 OK\r\n"
        assert c.reply().raw == b"250 2.1.5 OK\r\n"
        assert c.reply().raw == \
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
        c.send(dot_stuff(msg) + b"RSET\r\nMAIL FROM:<d@example.org>\r\n"
               b"RCPT TO:<e@example.org>\r\nNOOP\r\nDATA\r\n")
        queue_id(c.reply())
        assert c.reply().raw == b"250 2.0.0 OK\r\n"
        assert c.reply().code == 250
        assert c.reply().code == 250
        assert c.reply().raw == b"250 2.0.0 OK\r\n"
        assert c.reply().code == 354
        c.send(dot_stuff(msg) + b"QUIT\r\n")
        queue_id(c.reply())
        assert c.reply().raw == b"221 2.0.0 Bye\r\n"
        c.expect_closed()
    files = stored(g)
    assert sorted(split(d)[1] for _, d in files) == \
        [["b@example.org", "c@example.org"], ["e@example.org"]]


def test_ehlo_and_helo_after_auth(smtpgate):
    g = smtpgate(spool_conf(mail="    spool_max_message_size 2m;\n"))
    with g.session() as c:
        login(c)
        r = c.cmd("EHLO again.test")
        assert r.raw == (b"250-mx.test\r\n250-PIPELINING\r\n"
                         b"250-SIZE 2097152\r\n250-8BITMIME\r\n"
                         b"250-SMTPUTF8\r\n250-CHUNKING\r\n"
                         b"250 ENHANCEDSTATUSCODES\r\n")
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("HELO plain.test").raw == b"250 mx.test\r\n"
        # HELO ended the transaction
        assert c.cmd("RCPT TO:<b@example.org>").code == 503
        queue_id(c.mail("a@example.org", ["b@example.org"], b"x\r\n"))
    ((_, data),) = stored(g)
    assert "Received: from plain.test ([127.0.0.1])\r\n" \
           "\tby mx.test (smtpgate) with SMTP id" in split(data)[2]


def test_front_end_advertises_chunking_for_the_spool(smtpgate):
    """CHUNKING, listed in smtp_capabilities, is advertised before AUTH
    at once: the spool takes BDAT itself."""
    g = smtpgate(spool_conf(mail="    smtp_capabilities CHUNKING 8BITMIME;\n"))
    with g.session() as c:
        r = c.ehlo()
        assert "CHUNKING" in r.lines and "8BITMIME" in r.lines


def test_smtputf8_addresses(smtpgate):
    g = smtpgate(spool_conf())
    with g.session() as c:
        login(c)
        assert c.cmd("MAIL FROM:<j\u00f6rg@example.org>").raw == \
            b"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
        assert c.cmd("MAIL FROM:<j\u00f6rg@example.org> SMTPUTF8 "
                     "BODY=8BITMIME").code == 250
        assert c.cmd("RCPT TO:<\u00fc@b\u00fccher.example>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: \xc3\xa9\r\n\r\n\xe2\x82\xac\r\n.\r\n")
        queue_id(c.reply())
    ((_, data),) = stored(g)
    ret, rcpts, received, body = split(data)
    assert ret == "<j\u00f6rg@example.org>"
    assert rcpts == ["\u00fc@b\u00fccher.example"]
    assert " with UTF8SMTPA id " in received
    assert body == b"Subject: \xc3\xa9\r\n\r\n\xe2\x82\xac\r\n"


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_client_in_received(smtpgate):
    g = smtpgate(spool_conf(listen=("[::1]:@PORT6@",)))
    with g.connect("::1", g.ports["PORT6"]) as c:
        assert c.greeting().code == 220
        login(c)
        queue_id(c.mail("a@example.org", ["b@example.org"], b"v6\r\n"))
    ((_, data),) = stored(g)
    assert split(data)[2].startswith(
        "Received: from client.test ([IPv6:::1])\r\n")


def test_concurrent_sessions(smtpgate):
    """Sessions in two workers storing at once, with writes of one
    interleaved with the others' on the thread pools: every message whole,
    every queue id and file name distinct."""
    import threading
    g = smtpgate(spool_conf(workers=2))
    msgs = {}
    errors = []

    def client(k):
        try:
            with g.session() as c:
                login(c)
                for j in range(3):
                    msg = make_message(40000 + 9000 * k + j, seed=100 * k + j)
                    rcpt = f"k{k}j{j}@example.org"
                    msgs[rcpt] = msg
                    queue_id(c.mail("a@example.org", [rcpt], msg))
        except Exception as e:          # reported below, with its test
            errors.append(repr(e))
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    files = stored(g)
    assert len(files) == 24
    assert len({NAME.match(n).group(0) for n, _ in files}) == 24
    for _, data in files:
        (rcpt,) = split(data)[1]
        assert_same_bytes(split(data)[3], msgs[rcpt], rcpt)


def test_reload_to_another_directory(smtpgate):
    g = smtpgate(spool_conf(spool="one"))
    with g.session() as c:
        login(c)
        queue_id(c.mail("a@example.org", ["first@example.org"], b"1\r\n"))
    old = g.workers()
    mark = g.log_mark()
    g.reload(spool_conf(spool="two"))
    g.wait_log(r"reconfigur|start worker", since=mark)
    g.wait_old_workers_gone(old)
    with g.session() as c:
        login(c)
        queue_id(c.mail("a@example.org", ["second@example.org"], b"2\r\n"))
    assert [split(d)[1] for _, d in stored(g, "one")] == \
        [["first@example.org"]]
    assert [split(d)[1] for _, d in stored(g, "two")] == \
        [["second@example.org"]]


# --------------------------------------------------------------------------
# DATA and BDAT


def test_dot_unstuffing(smtpgate):
    """Lines of only "." and "..", leading dots, a "." after a bare LF
    (not a line start), and the CRLF before the final dot, which belongs
    to the message."""
    g = smtpgate(spool_conf())
    wire = (b"Subject: dots\r\n\r\n"
            b"..\r\n"              # a line of one dot
            b"...\r\n"             # a line of two dots
            b"..leading\r\n"
            b"middle.dot\r\n"
            b"bare\n.\nlf\r\n"     # a dot after a bare LF stays
            b". \r\n"              # stuffed: " "
            b"\r\n"
            b".\r\n")
    want = (b"Subject: dots\r\n\r\n"
            b".\r\n"
            b"..\r\n"
            b".leading\r\n"
            b"middle.dot\r\n"
            b"bare\n.\nlf\r\n"
            b" \r\n"
            b"\r\n")
    with g.session() as c:
        login(c)
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        # one byte at a time for the first part: every split of a dot,
        # CR or LF from its neighbours
        for i in range(40):
            c.send(wire[i:i + 1])
        c.send(wire[40:])
        queue_id(c.reply())
        # an empty message
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<empty@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        queue_id(c.cmd(b"."))
    bodies = {split(d)[1][0]: split(d)[3] for _, d in stored(g)}
    assert_same_bytes(bodies["b@example.org"], want)
    assert bodies["empty@example.org"] == b""


def test_bdat_chunks_last_and_data_in_later_transactions(smtpgate):
    g = smtpgate(spool_conf())
    part1 = b"Subject: bdat\r\n\r\n.no stuffing\r\n"
    part2 = b".\r\nstill the message\r\n"
    with g.session() as c:
        login(c)
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
               + b"BDAT %d\r\n" % len(part1) + part1
               + b"BDAT %d LAST\r\n" % len(part2) + part2)
        assert c.reply().code == 250
        assert c.reply().code == 250
        assert c.reply().raw == b"250 2.0.0 Ok: %d octets\r\n" % len(part1)
        queue_id(c.reply())
        # DATA in the next transaction, then BDAT 0 LAST, then a chunk
        # split across packets
        queue_id(c.mail("a@example.org", ["data@example.org"], b"d\r\n"))
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<zero@example.org>").code == 250
        queue_id(c.cmd("BDAT 0 LAST"))
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<split@example.org>").code == 250
        c.send(b"BDAT 10 last\r\n0123")
        time.sleep(0.2)
        c.send(b"456789NOOP\r\n")
        queue_id(c.reply())
        assert c.reply().raw == b"250 2.0.0 OK\r\n"
    bodies = {split(d)[1][0]: split(d)[3] for _, d in stored(g)}
    assert bodies == {"b@example.org": part1 + part2,
                      "data@example.org": b"d\r\n",
                      "zero@example.org": b"",
                      "split@example.org": b"0123456789"}


def test_bdat_refused_chunks_are_skipped(smtpgate):
    """A BDAT without a transaction is answered 503 after its octets,
    which are not read as commands; DATA after BDAT is refused; a BDAT
    whose size cannot be read is 501."""
    g = smtpgate(spool_conf(mail="    max_errors 20;\n"))
    with g.session() as c:
        login(c)
        assert bdat(c, b"QUIT\r\n").raw == \
            b"503 5.5.1 Need MAIL command first\r\n"
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert bdat(c, b"RSET\r\n", last=True).raw == \
            b"503 5.5.1 Need RCPT command first\r\n"
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert bdat(c, b"abc").code == 250
        assert c.cmd("DATA").raw == \
            b"503 5.5.1 DATA not allowed after BDAT\r\n"
        for bad in ("BDAT", "BDAT x", "BDAT 5 FIRST", "BDAT -1",
                    "BDAT 99999999999999999999", "BDAT 5LAST"):
            assert c.cmd(bad).raw == \
                b"501 5.5.4 Syntax: BDAT size [LAST]\r\n", bad
        queue_id(bdat(c, b"def", last=True))
        assert c.cmd("NOOP").code == 250
    ((_, data),) = stored(g)
    assert split(data)[3] == b"abcdef"


# --------------------------------------------------------------------------
# limits


def test_declared_size_over_the_limit(smtpgate):
    g = smtpgate(spool_conf(mail='    smtp_capabilities "SIZE 1000";\n'))
    with g.session() as c:
        login(c)
        assert "SIZE 1000" in c.cmd("EHLO x.test").lines
        assert c.cmd("MAIL FROM:<a@b.example> SIZE=1001").raw == TOO_BIG
        assert c.cmd("MAIL FROM:<a@b.example> SIZE=x").raw == \
            b"501 5.5.4 Bad SIZE parameter\r\n"
        assert c.cmd("MAIL FROM:<a@b.example> SIZE=1000").code == 250


def test_actual_size_over_the_limit(smtpgate):
    """The octets past the limit are read to the end of the message, then
    552; nothing stays in new/ or tmp/; the next message is stored."""
    g = smtpgate(spool_conf(mail="    spool_max_message_size 64k;\n"))
    big = make_message(200 * 1024, seed=5)
    with g.session() as c:
        login(c)
        assert c.mail("a@example.org", ["b@example.org"], big).raw == \
            TOO_BIG
        # exactly at the limit is fine
        exact = b"x" * (64 * 1024 - 2) + b"\r\n"
        queue_id(c.mail("a@example.org", ["c@example.org"], exact))
        # BDAT: the chunk that crosses the limit gets the 552, and the
        # transaction is over
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<d@example.org>").code == 250
        assert bdat(c, b"y" * 40000).code == 250
        assert bdat(c, b"y" * 40000).raw == TOO_BIG
        assert bdat(c, b"z" * 10, last=True).raw == \
            b"503 5.5.1 Need MAIL command first\r\n"
    wait_tmp_empty(g)
    files = stored(g)
    assert [split(d)[1] for _, d in files] == [["c@example.org"]]
    assert split(files[0][1])[3] == exact


def test_size_limit_is_the_advertised_size(smtpgate):
    """With a SIZE in smtp_capabilities the spool keeps to it, whatever
    spool_max_message_size says."""
    g = smtpgate(spool_conf(mail='    smtp_capabilities "SIZE 2000";\n'
                                 "    spool_max_message_size 1m;\n"))
    with g.session() as c:
        login(c)
        assert c.mail("a@example.org", ["b@example.org"],
                      b"x" * 2100 + b"\r\n").raw == TOO_BIG
    wait_tmp_empty(g)
    assert stored(g) == []


def test_too_many_recipients(smtpgate):
    g = smtpgate(spool_conf(mail="    spool_max_recipients 3;\n"))
    with g.session() as c:
        login(c)
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        for i in range(3):
            assert c.cmd(f"RCPT TO:<r{i}@example.org>").code == 250
        for i in range(3, 10):     # not counted as errors (max_errors 5)
            assert c.cmd(f"RCPT TO:<r{i}@example.org>").raw == \
                b"452 4.5.3 Too many recipients\r\n"
        assert c.cmd("DATA").code == 354
        c.send(b"x\r\n.\r\n")
        queue_id(c.reply())
    ((_, data),) = stored(g)
    assert split(data)[1] == ["r0@example.org", "r1@example.org",
                              "r2@example.org"]


# --------------------------------------------------------------------------
# bad input


def test_bad_sequences(smtpgate):
    g = smtpgate(spool_conf(mail="    max_errors 50;\n"))
    with g.session() as c:
        login(c)
        assert c.cmd("RCPT TO:<b@example.org>").raw == \
            b"503 5.5.1 Need MAIL command first\r\n"
        assert c.cmd("DATA").raw == b"503 5.5.1 Need MAIL command first\r\n"
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("MAIL FROM:<a@example.org>").raw == \
            b"503 5.5.1 Sender already specified\r\n"
        assert c.cmd("DATA").raw == b"503 5.5.1 Need RCPT command first\r\n"
        assert c.cmd("DATA now").raw == b"501 5.5.4 Syntax: DATA\r\n"
        assert c.cmd("RSET").raw == b"250 2.0.0 OK\r\n"
        assert c.cmd("RCPT TO:<b@example.org>").code == 503
        assert c.cmd("AUTH PLAIN " + plain_token("dave", "x")).raw == \
            b"503 5.5.1 Already authenticated\r\n"
        assert c.cmd("STARTTLS").raw == \
            b"503 5.5.1 STARTTLS not allowed now\r\n"
        assert c.cmd("VRFY").raw == b"501 5.5.4 Syntax: VRFY address\r\n"
        assert c.cmd("VRFY someone").code == 252
        assert c.cmd("EXPN list").raw == \
            b"502 5.5.2 Command not implemented\r\n"
        assert c.cmd("HELP").code == 214
        assert c.cmd("EHLO").raw == b"501 5.5.4 Syntax: EHLO hostname\r\n"
    assert stored(g) == []


def test_auth_after_login_keeps_credentials_out_of_the_debug_log(smtpgate):
    """A client that sends AUTH again once the spool has the session is
    refused, and its credentials reach no log line, at any level."""
    g = smtpgate(spool_conf(level="debug"))
    token = plain_token("dave", password("dave"))
    with g.session() as c:
        login(c)
        assert c.cmd("AUTH PLAIN " + token).raw == \
            b"503 5.5.1 Already authenticated\r\n"
        assert c.cmd("NOOP").code == 250
    g.wait_log(r"spool command: NOOP")
    log = g.error_log()
    assert "spool command: AUTH" in log
    assert token not in log and password("dave") not in log


def test_bad_addresses_and_parameters(smtpgate):
    g = smtpgate(spool_conf(mail="    max_errors 50;\n"))
    with g.session() as c:
        login(c)
        for line, reply in [
            ("MAIL FROM:a@example.org",
             b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
            ("MAIL FROM:<a@example.org",
             b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
            ("MAIL FROM:<a b@example.org>",
             b"501 5.1.7 Bad sender address syntax\r\n"),
            ("MAIL FROM:<a@example..org>",
             b"501 5.1.7 Bad sender address syntax\r\n"),
            ("MAIL FROM:<a@example.org> RET=FULL",
             b"555 5.5.4 Unsupported option: RET\r\n"),
            ("MAIL FROM:<a@example.org> BODY=BINARYMIME",
             b"501 5.5.4 Unsupported BODY type\r\n"),
            ("MAIL FROM:<a@example.org> SIZE=",
             b"501 5.5.4 Syntax error in parameters\r\n"),
        ]:
            assert c.cmd(line).raw == reply, line
        assert c.cmd("MAIL FROM:<a@example.org> AUTH=<> BODY=7BIT").code \
            == 250
        for line, reply in [
            ("RCPT TO:<>", b"501 5.1.3 Bad recipient address syntax\r\n"),
            ("RCPT TO:<nodomain>",
             b"501 5.1.3 Bad recipient address syntax\r\n"),
            ("RCPT TO:b@example.org",
             b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
            ("RCPT TO:<b@example.org> NOTIFY=NEVER",
             b"555 5.5.4 Unsupported option: NOTIFY\r\n"),
            ("RCPT TO:<\u00fc@example.org>",
             b"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"),
        ]:
            assert c.cmd(line).raw == reply, line
        assert c.cmd("RCPT TO:<Postmaster>").code == 250
        assert c.cmd("RCPT TO:<@relay.example:b@example.org>").code == 250
        queue_id(_data(c, b"x\r\n"))
    ((_, data),) = stored(g)
    assert split(data)[1] == ["Postmaster", "b@example.org"]


def _data(c, message):
    assert c.cmd("DATA").code == 354
    c.send(dot_stuff(message))
    return c.reply()


def test_garbage_and_over_long_lines(smtpgate):
    g = smtpgate(spool_conf(mail="    max_errors 50;\n"))
    with g.session() as c:
        login(c)
        assert c.cmd(b"\x00\x01\xff garbage").raw == \
            b"500 5.5.2 NUL character not allowed\r\n"
        assert c.cmd(b"\xff\xfe").raw == \
            b"500 5.5.1 Command unrecognized\r\n"
        assert c.cmd("FROBNICATE now").raw == \
            b"500 5.5.1 Command unrecognized\r\n"
        c.send(b"NOOP\n")
        assert c.reply().raw == b"500 5.5.2 Bare LF not allowed, use CRLF\r\n"
        assert c.cmd(b"NO\rOP").raw == b"500 5.5.2 Bare CR not allowed\r\n"
        # 512 octets with CRLF are a command; 513 are too long, once,
        # and the rest of the line is skipped
        assert c.cmd(b"NOOP " + b"x" * 505).raw == b"250 2.0.0 OK\r\n"
        assert c.cmd(b"NOOP " + b"x" * 506).raw == \
            b"500 5.5.2 Line too long\r\n"
        c.send(b"MAIL FROM:<" + b"a" * 100000 + b"@example.org>\r\nNOOP\r\n")
        assert c.reply().raw == b"500 5.5.2 Line too long\r\n"
        assert c.reply().raw == b"250 2.0.0 OK\r\n"
        queue_id(c.mail("a@example.org", ["b@example.org"], b"ok\r\n"))


def test_max_errors_closes_the_session(smtpgate):
    g = smtpgate(spool_conf(mail="    max_errors 3;\n"))
    with g.session() as c:
        login(c)
        c.send(b"BAD1\r\nBAD2\r\nBAD3\r\nNOOP\r\n")
        replies = c.read_until_closed()
    assert [r.code for r in replies] == [500, 500, 500, 421]
    assert replies[-1].raw == \
        b"421 4.7.0 Too many errors, closing connection\r\n"


def test_idle_timeout_in_a_transaction_and_in_data(smtpgate):
    g = smtpgate(spool_conf(timeout="1s"))
    with g.session() as c:
        login(c)
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        t0 = time.monotonic()
        (r,) = c.read_until_closed()
        assert r.raw == b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
        assert time.monotonic() - t0 >= 0.9
    with g.session() as c:
        login(c)
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: half\r\n\r\n" + b"x" * 100000)
        (r,) = c.read_until_closed()
        assert r.code == 421
    g.wait_log(r"client timed out in the middle of a message")
    wait_tmp_empty(g)
    assert stored(g) == []


def test_client_gone_in_the_middle_of_a_message(smtpgate):
    """The session ends while data streams to disk: the write in flight
    finishes, the temporary file goes, nothing is stored."""
    g = smtpgate(spool_conf())
    for i in range(3):
        with g.session() as c:
            login(c)
            assert c.cmd("MAIL FROM:<a@example.org>").code == 250
            assert c.cmd("RCPT TO:<b@example.org>").code == 250
            assert c.cmd("DATA").code == 354
            # the message without its final dot
            c.send(dot_stuff(make_message(300000 * (i + 1), seed=i))[:-3])
    g.wait_log(r"client closed the connection in the middle of a message")
    wait_tmp_empty(g)
    assert stored(g) == []
    with g.session() as c:
        login(c)
        queue_id(c.mail("a@example.org", ["b@example.org"], b"after\r\n"))


def test_draining_worker_removes_unfinished_messages_before_exiting(
        smtpgate):
    """After a reload the old worker finishes its sessions; when clients
    leave it in the middle of their messages, their temporary files are
    removed before the worker exits, not left in tmp/ for good."""
    g = smtpgate(spool_conf())
    conns = []
    for i in range(4):
        c = g.session()
        login(c)
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"x" * 200000)
        conns.append(c)
    net.wait_until(lambda: len(listing(g, "tmp")) == 4, 20,
                   what="four messages to stream into tmp/")
    old = g.workers()
    g.reload()
    g.wait_log(r"gracefully shutting down, 4 connections open")
    for c in conns:
        c.send(b"y" * 100000)
        c.close()
    g.wait_old_workers_gone(old)
    assert listing(g, "tmp") == []
    assert stored(g) == []


# --------------------------------------------------------------------------
# smtp_auth none, TLS, real clients


def test_smtp_auth_none_to_the_spool(smtpgate):
    """The front end answers MAIL; the spool answers the first RCPT, and
    the message is stored with the client's envelope."""
    g = smtpgate(spool_conf(mail="    smtp_auth none plain;\n"))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<anon@example.org>").raw == \
            b"250 2.1.0 OK\r\n"
        assert c.cmd("RCPT TO:<r1@example.net>").raw == b"250 2.1.5 OK\r\n"
        assert c.cmd("RCPT TO:<r2@example.net>").raw == b"250 2.1.5 OK\r\n"
        qid = queue_id(_data(c, b"Subject: anonymous\r\n\r\nhi\r\n"))
        # pipelined, in the same session
        c.send(b"MAIL FROM:<anon2@example.org>\r\nRCPT TO:<r3@example.net>"
               b"\r\nDATA\r\n")
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        c.send(b"x\r\n.\r\nQUIT\r\n")
        queue_id(c.reply())
        assert c.reply().code == 221
    got = {split(d)[0]: split(d) for _, d in stored(g)}
    ret, rcpts, received, body = got["<anon@example.org>"]
    assert rcpts == ["r1@example.net", "r2@example.net"]
    assert f" with ESMTP id {qid}\r\n" in received
    assert body == b"Subject: anonymous\r\n\r\nhi\r\n"
    assert got["<anon2@example.org>"][1] == ["r3@example.net"]


def test_smtp_auth_none_pipelined_and_refused_mail(smtpgate):
    """Everything in one packet; and a MAIL the front end let through but
    the spool refuses: the refusal is the answer to the RCPT."""
    g = smtpgate(spool_conf(mail="    smtp_auth none plain;\n"))
    with g.session() as c:
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n"
               b"RCPT TO:<b@example.net>\r\nDATA\r\n")
        assert c.reply().code == 250
        assert c.reply().raw == b"250 2.1.0 OK\r\n"
        assert c.reply().raw == b"250 2.1.5 OK\r\n"
        assert c.reply().code == 354
        c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        queue_id(c.reply())
        assert c.reply().code == 221
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org> RET=HDRS").raw == \
            b"250 2.1.0 OK\r\n"
        assert c.cmd("RCPT TO:<b@example.net>").raw == \
            b"555 5.5.4 Unsupported option: RET\r\n"
        assert c.cmd("RCPT TO:<b@example.net>").raw == \
            b"503 5.5.1 Need MAIL command first\r\n"
        queue_id(c.mail("a@example.org", ["c@example.net"], b"again\r\n"))
    assert sorted(split(d)[1][0] for _, d in stored(g)) == \
        ["b@example.net", "c@example.net"]


def test_auth_service_backend_takes_precedence(smtpgate, backend):
    """With an auth_http service, a session it routes (Auth-Server) goes
    to that backend; one it does not goes to the spool."""
    from lib.authsvc import AuthService, ok, ok_to
    svc = AuthService().start()
    try:
        svc.responder = lambda req: (ok_to(backend)
                                     if req.header("Auth-User") == "alice"
                                     else ok())
        g = smtpgate(spool_conf(auth_file=None,
                                mail=f"    auth_http {svc.url};\n"))
        for user, rcpt in (("alice", "relayed@example.org"),
                           ("bob", "spooled@example.org")):
            with g.session() as c:
                c.ehlo()
                assert c.auth_plain(user, "whatever").code == 235
                assert c.mail("a@example.org", [rcpt],
                              b"Subject: route\r\n\r\nx\r\n").code == 250
    finally:
        svc.stop()
    (m,) = backend.wait_messages(1)
    assert m.rcpt_tos == ["relayed@example.org"]
    assert [split(d)[1] for _, d in stored(g)] == [["spooled@example.org"]]


@pytest.mark.skipif(not pkilib.tls_built(), reason="smtpgate built "
                    "without TLS")
def test_starttls_session(smtpgate, pki):
    g = smtpgate(pkilib.tls_conf(pki, None, spool="spool"))
    msg = make_message(100000, seed=9)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=60) as c:
        c.ehlo("client.test")
        c.starttls(context=pki.client_context())
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        assert c.sendmail("a@example.org", ["b@example.org"], msg) == {}
    with pkilib.implicit_session(g, pki) as c:
        login(c)
        queue_id(c.mail("implicit@example.org", ["b@example.org"], msg))
    for _, data in stored(g):
        ret, rcpts, received, body = split(data)
        assert re.search(r"\r\n\t\(using TLSv1\.[23] with cipher \S+\)\r\n"
                         r"\tby mx\.test \(smtpgate\) with ESMTPSA id ",
                         received), received
        assert_same_bytes(body, msg)
    assert len(stored(g)) == 2


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
@pytest.mark.skipif(not pkilib.tls_built(), reason="smtpgate built "
                    "without TLS")
def test_swaks_over_starttls(smtpgate, pki):
    g = smtpgate(pkilib.tls_conf(pki, None, spool="spool"))
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{g.port}", "--tls",
                        "--tls-verify", "--tls-ca-path", pki.ca,
                        "--tls-sni", "mx.test",
                        "--auth-user", "carol",
                        "--auth-password", password("carol"),
                        "--from", "demo@example.org",
                        "--to", "you@example.org",
                        "--header", "Subject: swaks to the spool",
                        "--body", "sent by swaks\n.leading dot\n",
                        "--timeout", "60"],
                       capture_output=True, timeout=120)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode == 0, out
    m = re.search(r"<~  250 2\.0\.0 Ok: queued as (\S+)", out)
    assert m, out
    ((name, data),) = stored(g)
    ret, rcpts, received, body = split(data)
    assert ret == "<demo@example.org>" and rcpts == ["you@example.org"]
    assert f" with ESMTPSA id {m.group(1)}\r\n" in received
    assert b"Subject: swaks to the spool\r\n" in body
    assert b"\r\nsent by swaks\r\n.leading dot\r\n" in body


@pytest.mark.time_limit(300)
def test_large_message_byte_exact(smtpgate):
    g = smtpgate(spool_conf())
    msg = make_message(20 * 1024 * 1024, seed=20)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=240) as c:
        c.ehlo("client.test")
        c.login("dave", password("dave"))
        assert c.sendmail("a@example.org", ["b@example.org"], msg) == {}
    ((name, data),) = stored(g)
    assert_same_bytes(split(data)[3], msg)
    assert int(NAME.match(name).group(6)) == len(data)


def test_file_is_complete_in_new_before_the_250(smtpgate):
    """At the moment the client has the 250, the file is in new/, whole,
    and nothing is left in tmp/."""
    g = smtpgate(spool_conf())
    with smtplib.SMTP("127.0.0.1", g.port, timeout=60) as c:
        c.ehlo("client.test")
        c.login("dave", password("dave"))
        for i in range(5):
            msg = make_message(150000 + i * 70000, seed=30 + i)
            assert c.sendmail("a@example.org", [f"r{i}@example.org"],
                              msg) == {}
            files = stored(g)             # right now, no waiting
            assert len(files) == i + 1
            mine = [d for _, d in files
                    if split(d)[1] == [f"r{i}@example.org"]]
            assert len(mine) == 1
            assert_same_bytes(split(mine[0])[3], msg)
            assert listing(g, "tmp") == []


def test_kill_9_during_data_leaves_nothing_in_new(smtpgate):
    g = smtpgate(spool_conf())
    g.expected_returncodes = {0, -signal.SIGKILL}
    c = g.session()
    try:
        login(c)
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(dot_stuff(make_message(400000, seed=40))[:-3])
        # the data has reached the disk: a partial file in tmp/
        net.wait_until(
            lambda: listing(g, "tmp") and os.path.getsize(os.path.join(
                spool_dir(g), "tmp", listing(g, "tmp")[0])) > 100000,
            30, what="the message to stream into tmp/")
        g.workers()
        os.killpg(g.pid, signal.SIGKILL)
        g.proc.wait(30)
    finally:
        c.close()
    assert listing(g, "new") == []
    assert len(listing(g, "tmp")) <= 1


# --------------------------------------------------------------------------
# configuration and storage failures


def test_bad_spool_directories_are_file_line_errors(smtpgate):
    g = smtpgate(spool_conf(spool="/nonexistent-parent/spool"), start=False)
    r = g.ctl("-t")
    assert r.returncode == 1
    assert re.search(r"smtpgate\.conf:\d+: cannot create the spool "
                     r"directory \"/nonexistent-parent/spool\": its parent "
                     r"directory must exist \(2: No such file or directory\)",
                     r.stderr), r.stderr

    os.makedirs(os.path.join(g.prefix, "f"))
    with open(os.path.join(g.prefix, "f", "new"), "w") as f:
        f.write("not a directory")
    g.write_conf(spool_conf(spool="f"))
    r = g.ctl("-t")
    assert r.returncode == 1
    assert re.search(r"smtpgate\.conf:\d+: the spool \"\S+/prefix/f\" needs "
                     r"\"\S+/f/new\" to be a directory", r.stderr), r.stderr

    g.write_conf(spool_conf(spool=""))
    r = g.ctl("-t")
    assert r.returncode == 1
    assert re.search(r"smtpgate\.conf:\d+: \"spool:\" needs a directory",
                     r.stderr), r.stderr

    # -t creates a good one, Maildir layout included
    g.write_conf(spool_conf(spool="made"))
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
    for sub in ("tmp", "new", "cur"):
        assert os.path.isdir(os.path.join(g.prefix, "made", sub))


def test_failed_load_takes_back_the_directories_it_made(smtpgate):
    """A configuration that fails after its spool directory was made (here
    at the access log, which cannot be opened) takes that directory away
    again: as root it was never handed to the workers' user, and a later
    start would refuse it.  A directory that was there before stays."""
    bad = "    access_log /nonexistent-dir/access.log;\n"
    g = smtpgate(spool_conf(spool="made", mail=bad), start=False)
    made = os.path.join(g.prefix, "made")
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    assert "access_log" in r.stderr, r.stderr
    assert not os.path.exists(made)

    os.makedirs(os.path.join(made, "new"))
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    assert os.path.isdir(os.path.join(made, "new"))    # not this load's
    assert not os.path.exists(os.path.join(made, "tmp"))

    shutil.rmtree(made)
    g.write_conf(spool_conf(spool="made"))
    g.start()
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        c.sendmail("s@example.org", ["r@example.org"],
                   b"Subject: after\r\n\r\nstored\r\n")
    assert len(listing(g, "new", "made")) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the check is "
                    "for the workers' user")
def test_spool_the_workers_cannot_write_is_an_error(smtpgate):
    g = smtpgate(spool_conf(spool="locked"), start=False)
    d = os.path.join(g.prefix, "locked")
    for sub in ("", "tmp", "new", "cur"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.chmod(os.path.join(d, sub), 0o700)     # root's alone
    r = g.ctl("-t")
    assert r.returncode == 1
    assert re.search(r"smtpgate\.conf:\d+: the spool directory "
                     r"\"\S+/locked\" is not searchable by the user "
                     r"\"nobody\" the workers run as", r.stderr), r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_spool_as_a_user(smtpgate):
    g = smtpgate(spool_conf(spool="ro"), start=False)
    d = os.path.join(g.prefix, "ro")
    for sub in ("", "tmp", "new", "cur"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    os.chmod(os.path.join(d, "tmp"), 0o500)
    r = g.ctl("-t")
    assert r.returncode == 1
    assert re.search(r"smtpgate\.conf:\d+: the spool directory \"\S+/ro/tmp\" "
                     r"is not writable", r.stderr), r.stderr


def test_same_directory_named_twice(smtpgate):
    g = smtpgate(spool_conf(
        spool="spool",
        servers=["        listen 127.0.0.1:@PORT2@;\n"
                 "        proxy_pass spool:./spool/;\n"]))
    for port in (g.port, g.ports["PORT2"]):
        with g.connect(port=port) as c:
            assert c.greeting().code == 220
            login(c)
            queue_id(c.mail("a@example.org", [f"p{port}@example.org"],
                            b"x\r\n"))
    assert len(stored(g)) == 2


def _tmpfs(size):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    d = "/tmp/smtpgate-tinyfs-%d-%s" % (os.getpid(), size)
    os.makedirs(d, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755",
                        "tmpfs", d], capture_output=True)
    if p.returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs here: "
                    + p.stderr.decode(errors="replace").strip())
    return d


def _untmpfs(d):
    subprocess.run(["umount", "-l", d], capture_output=True)
    os.rmdir(d)


@pytest.fixture
def tiny_fs():
    """A 1 MB tmpfs, for a disk that fills up."""
    d = _tmpfs("1m")
    yield d
    _untmpfs(d)


@pytest.fixture
def small_fs():
    """An 8 MB tmpfs, for spool_min_free."""
    d = _tmpfs("8m")
    yield d
    _untmpfs(d)


def test_disk_full_is_452_and_leaves_nothing(smtpgate, tiny_fs):
    """With no headroom kept (spool_min_free 0), the file system itself
    fills: the write fails, 452, nothing is left behind."""
    spool = os.path.join(tiny_fs, "spool")
    g = smtpgate(spool_conf(spool=spool,
                            mail="    spool_min_free 0;\n"))
    with g.session() as c:
        login(c)
        # DATA: the failure is answered after the final dot
        r = c.mail("a@example.org", ["b@example.org"],
                   make_message(3 * 1024 * 1024, seed=50))
        assert r.raw == STORAGE
        # BDAT, in chunks
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        replies = []
        for _ in range(8):
            r = bdat(c, b"z" * 300000)
            replies.append(r.raw)
            if r.code != 250:
                break
        assert replies[-1] == STORAGE, replies
        # the spool recovers once there is room again
        wait_tmp_empty(g, spool)
        queue_id(c.mail("a@example.org", ["c@example.org"], b"small\r\n"))
    assert listing(g, "new", spool) != []
    assert [split(d)[1] for _, d in stored(g, spool)] == [["c@example.org"]]
    assert listing(g, "tmp", spool) == []
    g.wait_log(r"\[error\] \d+#\d+: \*\d+ spool \"" + re.escape(spool)
               + r"\": "
               r"write\(\) failed for message \S+, the message is refused "
               r"\(28: No space left on device\)")


def test_min_free_keeps_headroom(smtpgate, small_fs):
    """spool_min_free 2m on an 8 MB file system: a message is refused
    with 452 before its 354 once less than that would be left (the free
    space is looked at as its file is opened, on the thread pool), and
    MAIL is refused at once while the last look said so, with SIZE=
    counted in; once there is room again, messages are stored."""
    spool = os.path.join(small_fs, "spool")
    g = smtpgate(spool_conf(spool=spool,
                            mail="    spool_min_free 2m;\n"))
    ballast = os.path.join(small_fs, "ballast")
    with g.session() as c:
        login(c)
        queue_id(c.mail("a@example.org", ["first@example.org"], b"one\r\n"))
        # the open just now saw about 8 MB free: 7 MB declared does not
        # fit with 2 MB kept
        assert c.cmd("MAIL FROM:<a@example.org> SIZE=7000000").raw == \
            STORAGE
        g.wait_log(r"\[warn\] .*spool \"" + re.escape(spool) + r"\": \d+ "
                   r"bytes free, fewer than spool_min_free \(2097152\) plus "
                   r"the size the client declared \(7000000\), so MAIL "
                   r"FROM:<a@example\.org> is refused with 452: free space "
                   r"on that file system, or lower spool_min_free")
        assert c.cmd("MAIL FROM:<a@example.org> SIZE=1000").code == 250
        assert c.cmd("RSET").code == 250

        # something else fills the disk: 1 MB left
        with open(ballast, "wb") as f:
            f.write(b"\0" * (7 * 1024 * 1024))
        time.sleep(2.2)                 # past the last look's trust
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").raw == STORAGE    # no 354: nothing uploaded
        g.wait_log(r"\[warn\] .*spool \"" + re.escape(spool) + r"\": \d+ "
                   r"bytes free, fewer than spool_min_free \(2097152\), so "
                   r"message \d+M\d+P\d+Q\d+ is refused with 452")
        # and MAIL is now refused at once
        assert c.cmd("MAIL FROM:<a@example.org>").raw == STORAGE
        # BDAT, once that look is too old to go by: its first chunk
        time.sleep(2.2)
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert bdat(c, b"x" * 1000, last=True).raw == STORAGE
        os.unlink(ballast)

        def stores():
            if c.cmd("MAIL FROM:<a@example.org>").code != 250:
                return None
            assert c.cmd("RCPT TO:<again@example.org>").code == 250
            assert bdat(c, b"two\r\n", last=True).code == 250
            return True
        net.wait_until(stores, 10, what="a message stored once the disk "
                                        "has room again")
    wait_tmp_empty(g, spool)
    assert [split(d)[1] for _, d in stored(g, spool)] == \
        [["first@example.org"], ["again@example.org"]]


def test_min_free_bad_values(smtpgate):
    for value in ("lots", "-1", "2p"):
        g = smtpgate(spool_conf(mail=f"    spool_min_free {value};\n"),
                     start=False)
        r = g.ctl("-t")
        assert r.returncode != 0, r.stderr
        assert "spool_min_free" in r.stderr and \
            re.search(re.escape(g.conf_path) + r":\d+", r.stderr), r.stderr
