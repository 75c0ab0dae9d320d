"""limit_message and limit_recipient: how many messages (MAIL) and
recipients (RCPT) a key -- a login here -- may send per unit of time,
across sessions and workers.  Over the limit a MAIL or RCPT gets 450
4.7.1 from smtpgate and never reaches the backend; the relay reads such
sessions strictly, so that no bare LF or unknown command lets a client
slip past the count.  Real clients (raw sockets) against aiosmtpd, and
the spool."""

import json
import os
import re
import time

import pytest

from lib import gate as gatelib
from lib import net
from lib.users import password
from test_access_log import read_lines

MAIL_LIMIT = "450 4.7.1 Error: message rate limit exceeded, try again later"
RCPT_LIMIT = ("450 4.7.1 Error: recipient rate limit exceeded, try again "
              "later")


def rate_conf(backend=None, zones="", rules="", **kw):
    return gatelib.conf(backend=backend, mail=zones, server=rules, **kw)


def _login(g, user="alice", workers_note=""):
    c = g.session()
    c.ehlo()
    assert c.auth_plain(user, password(user)).code == 235, workers_note
    return c


def _send(c, n, rcpts=("b@example.org",)):
    """One message; returns the replies to MAIL, each RCPT and DATA (and
    the message end when DATA got 354)."""
    got = [c.cmd(f"MAIL FROM:<s{n}@example.org>")]
    for r in rcpts:
        got.append(c.cmd(f"RCPT TO:<{r}>"))
    d = c.cmd("DATA")
    got.append(d)
    if d.code == 354:
        c.send(f"Subject: {n}\r\n\r\nbody {n}\r\n.\r\n".encode())
        got.append(c.reply())
    return got


def test_messages_per_login(smtpgate, backend):
    """Three an hour for alice: the fourth MAIL is refused by smtpgate,
    with the RCPT and DATA pipelined after it; in a new session too;
    bob has his own count."""
    g = smtpgate(rate_conf(
        backend,
        zones="    limit_message_zone $auth_user zone=msgs:1m rate=3/h;\n",
        rules="        limit_message zone=msgs;\n"))
    mark = g.log_mark()
    with _login(g) as c:
        for n in range(3):
            assert [r.code for r in _send(c, n)] == [250, 250, 354, 250]
        c.send(b"MAIL FROM:<s3@example.org>\r\nRCPT TO:<b@example.org>\r\n"
               b"DATA\r\nNOOP\r\n")
        got = c.replies(4)
        assert got[0].raw.decode().rstrip() == MAIL_LIMIT
        assert [(r.code, r.last) for r in got[1:3]] == \
            [(503, "5.5.1 Error: need MAIL command")] * 2
        assert got[3].code == 250
        # a bare LF does not turn the reading off
        c.send(b"MAIL FROM:<s4@example.org>\n")
        assert c.reply().raw.decode().rstrip() == MAIL_LIMIT
        assert c.cmd("QUIT").code == 221
    with _login(g) as c:
        assert c.cmd("MAIL FROM:<s5@example.org>").raw.decode().rstrip() \
            == MAIL_LIMIT
        assert c.cmd("RSET").code == 250
        assert c.cmd("QUIT").code == 221
    with _login(g, "bob") as c:
        assert [r.code for r in _send(c, 9)] == [250, 250, 354, 250]
    got = backend.wait_messages(4)
    assert [m.mail_from for m in got] == [
        "s0@example.org", "s1@example.org", "s2@example.org",
        "s9@example.org"]
    assert "s3@example.org" not in backend.seen("MAIL")
    g.wait_log(r'limiting messages by zone "msgs", key "alice": over '
               r'rate=3/h, burst=3; the next in \d+ s \(limit_message at '
               r'\S+smtpgate.conf:\d+\)', since=mark)
    g.wait_log(r'answered "450" to a MAIL over a limit; it did not reach '
               r'the backend',
               since=mark)


def test_recipients_per_login(smtpgate, backend):
    """Five recipients an hour: the sixth and seventh RCPT of a message
    are refused, the message goes to the first five."""
    g = smtpgate(rate_conf(
        backend,
        zones="    limit_recipient_zone $auth_user zone=r:1m rate=5/h;\n",
        rules="        limit_recipient zone=r;\n"))
    rcpts = [f"r{i}@example.org" for i in range(7)]
    with _login(g) as c:
        got = _send(c, 0, rcpts)
        assert [r.code for r in got[1:6]] == [250] * 5
        assert [r.raw.decode().rstrip() for r in got[6:8]] == \
            [RCPT_LIMIT] * 2
        assert [r.code for r in got[8:]] == [354, 250]
    (m,) = backend.wait_messages(1)
    assert m.rcpt_tos == rcpts[:5]


def test_burst_and_refill(smtpgate, backend):
    """rate=2/s burst=1: one at once, the next half a second later.  The
    two MAILs of the first try come in one packet, so they are read in
    the same moment whatever the machine's load."""
    g = smtpgate(rate_conf(
        backend,
        zones="    limit_message_zone $auth_user zone=m:1m rate=2/s;\n",
        rules="        limit_message zone=m burst=1;\n"))
    with _login(g) as c:
        c.send(b"MAIL FROM:<a@example.org>\r\nRSET\r\n"
               b"MAIL FROM:<b@example.org>\r\n")
        got = c.replies(3)
        assert [r.code for r in got[:2]] == [250, 250]
        assert got[2].raw.decode().rstrip() == MAIL_LIMIT
        time.sleep(0.8)
        assert c.cmd("MAIL FROM:<c@example.org>").code == 250


def test_limits_through_the_spool(smtpgate):
    """The spool answers MAIL and RCPT itself, and asks the same
    limits."""
    g = smtpgate(gatelib.conf(
        spool="spool",
        mail="    limit_message_zone $auth_user zone=m:1m rate=1/h;\n"
             "    limit_recipient_zone $auth_user zone=r:1m rate=2/h;\n"
             "    limit_message zone=m;\n    limit_recipient zone=r;\n"))
    with _login(g) as c:
        got = _send(c, 0, ["a@example.org", "b@example.org",
                           "c@example.org"])
        assert [r.code for r in got[:3]] == [250, 250, 250]
        assert got[3].raw.decode().rstrip() == RCPT_LIMIT
        assert [r.code for r in got[4:]] == [354, 250]
        r = c.cmd("MAIL FROM:<again@example.org>")
        assert r.raw.decode().rstrip() == MAIL_LIMIT
    new = os.listdir(os.path.join(g.prefix, "spool", "new"))
    assert len(new) == 1


def test_anonymous_sessions_by_address(smtpgate, backend):
    """With smtp_auth none smtpgate answers MAIL itself: a zone keyed by
    the client's address counts it there."""
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    smtp_auth none plain;\n    smtp_auth_fail_delay 0;\n"
             "    limit_message_zone $remote_addr zone=m:1m rate=1/h;\n"
             "    limit_message zone=m;\n"))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    with g.session() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@example.org>")
        assert r.raw.decode().rstrip() == MAIL_LIMIT
    assert len(backend.wait_messages(1)) == 1


def test_several_workers_share_the_count(smtpgate, backend):
    """Four workers, one zone: six sessions of one message each at
    rate=3/h, wherever each lands, deliver three."""
    g = smtpgate(rate_conf(
        backend, workers=4,
        zones="    limit_message_zone $auth_user zone=m:1m rate=3/h;\n",
        rules="        limit_message zone=m;\n"))
    codes = []
    for n in range(6):
        with _login(g) as c:
            codes.append(c.cmd(f"MAIL FROM:<s{n}@example.org>").code)
            c.cmd("QUIT")
    assert codes == [250, 250, 250, 450, 450, 450]


@pytest.mark.parametrize("zones,rules,message", [
    ("", "limit_message zone=nope;",
     'limit_message: no limit_message_zone "nope"'),
    ("limit_message_zone $auth_user zone=m:1m rate=1/h;",
     "limit_recipient zone=m;",
     'limit_recipient: "m" is a limit_message_zone'),
    ("limit_message_zone $auth_user zone=m:1m rate=10/w;", "",
     'invalid value "rate=10/w"'),
    ("limit_message_zone $auth_user zone=m:1m rate=0/h;", "",
     'invalid value "rate=0/h"'),
    ("limit_message_zone alice zone=m:1m rate=1/h;", "",
     'the key "alice" has no variable'),
    ("limit_message_zone $auth_user zone=m:1k rate=1/h;", "",
     'invalid value "zone=m:1k"'),
    ("limit_message_zone $auth_user zone=m:1m rate=1/h;",
     "limit_message zone=m burst=0;", 'invalid value "burst=0"'),
    ("limit_message_zone $auth_user zone=m:1m rate=1/h;",
     "limit_message zone=m;\nlimit_message zone=m;", "given twice"),
    ("limit_message_zone $auth_user zone=m:1m rate=1/h;\n"
     "limit_recipient_zone $auth_user zone=m:1m rate=1/h;", "",
     "already defined"),
], ids=["unknown", "kind", "unit", "zero", "static", "small", "burst",
        "twice", "redefined"])
def test_config_errors(smtpgate, backend, zones, rules, message):
    text = rate_conf(backend, zones="".join(f"    {l}\n" for l in
                                            zones.splitlines()),
                     rules="".join(f"        {l}\n" for l in
                                   rules.splitlines()))
    g = smtpgate(text, start=False)
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    assert re.search(re.escape(str(g.conf_path)) + r":\d+: .*"
                     + re.escape(message), r.stderr), r.stderr


def test_refusals_are_counted(smtpgate, backend):
    """/metrics and /status count the MAILs and RCPTs the limits
    refused, per server."""
    from test_status import value, wait_counter

    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    status_listen 127.0.0.1:@PORTS@;\n"
             "    limit_message_zone $auth_user zone=m:1m rate=1/h;\n"
             "    limit_recipient_zone $auth_user zone=r:1m rate=2/h;\n"
             "    limit_message zone=m;\n    limit_recipient zone=r;\n"))
    with _login(g) as c:
        got = _send(c, 0, ["a@example.org", "b@example.org",
                           "c@example.org"])
        assert [r.code for r in got] == [250, 250, 250, 450, 354, 250]
        assert c.cmd("MAIL FROM:<x@example.org>").code == 450
        assert c.cmd("MAIL FROM:<y@example.org>").code == 450
        assert c.cmd("QUIT").code == 221
    m, srv = wait_counter(g, "smtpgate_rate_limited_messages_total", 2)
    assert value(m, "smtpgate_rate_limited_recipients_total",
                 server="mx.test") == 1
    assert srv["rate_limited_messages"] == 2
    assert srv["rate_limited_recipients"] == 1


def test_refusals_in_the_access_log(smtpgate, backend):
    """$rate_limited_messages and $rate_limited_recipients give each
    session's refusals to its access log line."""
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    log_format lim escape=json '{\"user\":\"$auth_user\","
             "\"m\":$rate_limited_messages,"
             "\"r\":$rate_limited_recipients}';\n"
             "    access_log logs/access.log lim flush=100ms;\n"
             "    limit_message_zone $auth_user zone=m:1m rate=1/h;\n"
             "    limit_recipient_zone $auth_user zone=r:1m rate=1/h;\n"
             "    limit_message zone=m;\n    limit_recipient zone=r;\n"))
    with _login(g) as c:
        got = _send(c, 0, ["a@example.org", "b@example.org"])
        assert [r.code for r in got] == [250, 250, 450, 354, 250]
        assert c.cmd("MAIL FROM:<x@example.org>").code == 450
        assert c.cmd("QUIT").code == 221

    def line():
        mine = [json.loads(l) for l in read_lines(g, partial=True)
                if '"user":"alice"' in l]
        return mine[0] if mine else None
    assert net.wait_until(line, 10, what="the session's line") == \
        {"user": "alice", "m": 1, "r": 1}


def test_refusals_are_not_errors(smtpgate):
    """A limit's 450 is no error of the client's: a client with more
    recipients than its limit allows is not cut off by max_errors for
    it, through the spool as through the relay."""
    g = smtpgate(gatelib.conf(
        spool="spool",
        mail="    max_errors 3;\n"
             "    limit_recipient_zone $auth_user zone=r:1m rate=2/h;\n"
             "    limit_recipient zone=r;\n"))
    rcpts = [f"r{i}@example.org" for i in range(10)]
    with _login(g) as c:
        got = _send(c, 0, rcpts)
        assert [r.code for r in got[1:11]] == [250, 250] + [450] * 8
        assert [r.code for r in got[11:]] == [354, 250]
        assert c.cmd("QUIT").code == 221
