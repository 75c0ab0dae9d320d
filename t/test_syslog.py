"""error_log and access_log to syslog (`syslog:server=...`, as nginx
writes it), received by a real rsyslogd (lib.syslogd) over UDP (IPv4
and IPv6) and over a UNIX datagram socket.

Checked: what rsyslog parses out of each datagram (facility, severity
from each line's level, host name or none, tag) and the raw RFC 3164
header; one session's lines tied by their session id; access log lines
with a chosen severity and if=; the main error log, master and worker
lines alike; a syslog server that goes away and comes back (nothing
blocks, the loss is said in the file error log, the lines come again);
hostile client input arriving as one clean message; -t and every
configuration error with its file:line.
"""

import json
import re
import smtplib
import socket

import pytest

from lib import gate as gatelib
from lib import net
from lib import syslogd
from lib.users import password

from test_config import assert_failed, conf_test, line_of, make  # noqa: F401

pytestmark = pytest.mark.skipif(syslogd.skip_reason() is not None,
                                reason=str(syslogd.skip_reason()))

HEADER = re.compile(r"^<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) "
                    r"(?:(\S+) )?(\w+): ")


@pytest.fixture
def rsyslog():
    r = syslogd.Rsyslog().start()
    yield r
    r.remove()


def send_one(g, user="alice"):
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
        c.login(user, password(user))
        c.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n")


def msg(m):
    return m["msg"].lstrip()


def test_session_error_log_over_unix_socket(smtpgate, backend, rsyslog):
    """error_log in the mail block to a UNIX datagram socket: each line
    of a session is one message at its own level, with the facility and
    tag asked for and no host name; the main error log stays a file."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        f"    error_log syslog:server={rsyslog.unix},facility=mail,"
        "tag=gate_7,nohostname debug;")))
    send_one(g)
    # the close of the session that logged in (the harness's readiness
    # probe was a session too)
    got = rsyslog.wait(lambda ms: any("session closed" in msg(m)
                                      and 'login: "alice"' in msg(m)
                                      for m in ms),
                       what="the session's close")
    for m in got:
        assert m["facility"] == "mail"
        assert m["program"] == "gate_7"
        head = HEADER.match(m["raw"])
        assert head, m["raw"]
        assert head.group(3) is None            # nohostname
        assert head.group(4) == "gate_7"
        level = re.search(r" \[(\w+)\] \d+#\d+: ", msg(m)).group(1)
        want = {"error": "err", "warn": "warning"}.get(level, level)
        assert m["severity"] == want, m
        assert int(head.group(1)) == 2 * 8 + [
            "emerg", "alert", "crit", "err", "warning", "notice", "info",
            "debug"].index(m["severity"])
    # the lines of the session that logged in (the harness's readiness
    # probe was one more), tied by one id
    (sid,) = {re.search(r": \*(\d+) ", msg(m)).group(1) for m in got
              if "client command: AUTH" in msg(m)}
    texts = [msg(m) for m in got if f": *{sid} " in msg(m)]
    assert any("client connected" in t for t in texts)
    assert any("client command: ehlo" in t for t in texts)
    assert any(re.search(r"\[debug\]", t) for t in texts)
    assert all("client: 127.0.0.1" in t for t in texts)
    # the password never: AUTH PLAIN's argument is not logged
    assert not any(password("alice") in m["raw"] for m in got)
    # the master and the worker still write to the file
    assert "start worker process" in g.error_log()
    assert "client connected" not in g.error_log()


def test_main_error_log_over_udp(smtpgate, backend, rsyslog):
    """The main error_log to UDP: the master's and the worker's lines,
    with the host name and the default facility (local7) and tag
    (smtpgate); a level filters as for a file."""
    text = gatelib.conf(backend=backend, level="info").replace(
        "error_log logs/error.log info;",
        f"error_log syslog:server={rsyslog.udp} notice;")
    g = smtpgate(text)
    send_one(g)
    got = rsyslog.wait(lambda ms: any("start worker process" in msg(m)
                                      for m in ms),
                       what="the master's lines")
    g.ctl("-s", "reopen")
    got = rsyslog.wait(lambda ms: any("reopening logs" in msg(m)
                                      for m in ms), what="reopen")
    host = socket.gethostname()
    for m in got:
        assert (m["facility"], m["program"]) == ("local7", "smtpgate"), m
        head = HEADER.match(m["raw"])
        assert head and head.group(3) == host, m["raw"]
        assert m["severity"] in ("notice", "warning", "err"), m
        for bad in ("[alert]", "[emerg]", "[crit]"):
            assert bad not in msg(m)
    # notice and above only: the info lines of the session are not sent
    assert not any("client connected" in msg(m) for m in got)
    masters = {re.search(r"\] (\d+)#", msg(m)).group(1) for m in got}
    assert str(g.pid) in masters


def test_file_and_syslog_together(smtpgate, rsyslog):
    """The usual nginx pair: the file and syslog, each at its own level.
    A backend that refuses connections makes an error line for both;
    the session's info lines reach the file only."""
    dead = net.free_port()
    g = smtpgate(gatelib.conf(
        proxy_pass=f"127.0.0.1:{dead}", level="info",
        top=f"error_log syslog:server={rsyslog.udp},tag=both error;"))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 451
    g.wait_log(r"\[info\] .*session closed")
    got = rsyslog.wait(lambda ms: any(f"127.0.0.1:{dead}" in msg(m)
                                      for m in ms),
                       what="the backend's error line")
    assert all(m["program"] == "both" and m["severity"] == "err"
               for m in got), got
    assert not any("client connected" in msg(m) for m in got)
    assert "client connected" in g.error_log()
    line = [msg(m) for m in got if f"127.0.0.1:{dead}" in msg(m)][0]
    assert line.split("] ", 1)[1] in g.error_log()     # the same line


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_access_log_over_ipv6(smtpgate, backend, rsyslog):
    """access_log to syslog over IPv6: one message per session, the
    format's line as it would be in a file, at severity=; if= holds as
    for a file."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    map $auth_user $logged { alice 1; default 0; }\n"
        f"    access_log syslog:server={rsyslog.udp6},severity=notice,"
        "facility=local3,tag=sessions json if=$logged;")))
    send_one(g)
    send_one(g, user="bob")
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
        c.ehlo()
    send_one(g)
    got = rsyslog.wait(lambda ms: len(ms) >= 2, what="two session lines")
    net.wait_until(lambda: len(rsyslog.wait(lambda ms: True)) >= 2, 5)
    assert len(got) == 2, got
    for m in got:
        assert m["from"] == "::1"
        assert (m["facility"], m["severity"], m["program"]) == \
            ("local3", "notice", "sessions")
        line = json.loads(msg(m))
        assert line["user"] == "alice"
        assert line["status"] == "quit"
        assert line["messages"] == 1


def test_syslog_server_away_and_back(smtpgate, backend, rsyslog):
    """With the syslog server gone, sessions go on as before and the
    file error log says once that lines are being lost and why; once it
    is back (same socket), the lines come again."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        f"    error_log syslog:server={rsyslog.unix} info;\n"
        f"    access_log syslog:server={rsyslog.udp} text;")))
    send_one(g)
    rsyslog.wait(lambda ms: any("session closed" in msg(m) for m in ms))
    rsyslog.stop()
    for _ in range(5):
        send_one(g)
    g.wait_log(r'\[error\] .*syslog server "unix:.*log\.sock": '
               r"(send|connect)\(\) failed, \d+ log lines? lost: check "
               r"that the syslog server runs and takes messages there "
               r"\(\d+: [^)]+\)")
    said = len(re.findall(r"syslog server \"unix", g.error_log()))
    assert said == 1, g.error_log()             # once a minute at most
    rsyslog.start()

    def arrived():
        send_one(g, user="bob")
        return any("user: bob" in msg(m) or '"user": "bob"' in msg(m)
                   or "bob" in msg(m)
                   for m in rsyslog.wait(lambda ms: True))
    net.wait_until(arrived, 20, interval=0.3, what="lines after the return")


def test_hostile_input_is_one_clean_message(smtpgate, backend, rsyslog):
    """A client command full of control bytes and a very long argument
    arrives as one message, with nothing that would split it."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        f"    error_log syslog:server={rsyslog.udp} debug;")))
    with g.session() as c:
        c.send(b"EHLO a\x01\x1b[2J\x7fb\xff\xfe" + b"x" * 900 + b"\r\n")
        c.reply()
        c.send(b"NOOP \x00\x00zz\r\n")
        c.reply()
        c.cmd("QUIT")
    # (the harness's readiness probe was a session too: wait for this
    # one's own lines, not any "session closed")
    def whole(ms):
        ehlo = [re.search(r": (\*\d+) ", msg(m)).group(1) for m in ms
                if "client command: EHLO a\\x01\\x1b[2J" in msg(m)]
        return ehlo and any("session closed" in msg(m)
                            and f": {ehlo[0]} " in msg(m) for m in ms)
    got = rsyslog.wait(whole, what="the EHLO line and the session's close")
    for m in got:
        raw = m["raw"]
        assert not re.search(r"[\x00-\x1f\x7f]", raw), raw


def test_t_accepts_syslog_targets(conf_test):
    """-t takes syslog targets without any syslog server running."""
    text = make(top="error_log syslog:server=unix:/nonexistent/log info;",
                mail="    access_log syslog:server=127.0.0.1:9,"
                     "severity=info text;\n"
                     "    error_log syslog:server=[::1]:9 debug;")
    text = text.replace("error_log logs/error.log", "#")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("directive,message", [
    ("error_log syslog:;", '"syslog:" has no server=: write '
     "syslog:server=ADDRESS"),
    ("error_log syslog:facility=mail;", '"syslog:facility=mail" has no '
     "server="),
    ("error_log syslog:server=127.0.0.1,facility=mailx;",
     'unknown syslog facility "mailx": use kern, user, mail'),
    ("error_log syslog:server=127.0.0.1,severity=loud;",
     'unknown syslog severity "loud": use emerg, alert'),
    ("error_log syslog:server=127.0.0.1,tag=a-b;",
     'syslog tag "a-b": at most 32 letters, digits and underscores'),
    ("error_log syslog:server=127.0.0.1,tag=" + "a" * 33 + ";",
     "syslog tag"),
    ("error_log syslog:server=127.0.0.1,what=1;",
     'unknown syslog parameter "what=1" in "syslog:server=127.0.0.1,'
     'what=1": use server=, facility=, severity=, tag= or nohostname'),
    ("error_log syslog:server=127.0.0.1,server=127.0.0.2;",
     '"syslog:server=127.0.0.1,server=127.0.0.2" names server= twice'),
    ("error_log syslog:server=unix:dev/log;",
     'syslog server "unix:dev/log": a UNIX socket is an absolute path'),
    ("error_log syslog:server=unix:/" + "d" * 120 + ";",
     f'syslog server "unix:/{"d" * 120}": a UNIX socket is an absolute '
     "path of at most 107 bytes"),
    ("error_log syslog:server=no-such-host.invalid;",
     'syslog server "no-such-host.invalid": '),
    ("error_log syslog:server=127.0.0.1:99999;",
     'syslog server "127.0.0.1:99999": '),
    ("access_log syslog:server=127.0.0.1 json buffer=64k;",
     "access_log to syslog cannot be buffered"),
    ("access_log syslog:server=127.0.0.1 json flush=1s;",
     "access_log to syslog cannot be buffered"),
    ("access_log syslog:server=127.0.0.1,tag=x.y json;",
     'syslog tag "x.y"'),
])
def test_config_errors(conf_test, directive, message):
    text = make(mail="    " + directive)
    g, r = conf_test(text)
    assert_failed(g, r, message, line_of(text, directive))


def test_config_error_in_main_error_log(conf_test):
    text = make(top="error_log syslog:server=127.0.0.1,facility=x;")
    text = text.replace("error_log logs/error.log", "#error_log")
    g, r = conf_test(text)
    assert_failed(g, r, 'unknown syslog facility "x"',
                  line_of(text, "facility=x"))
