"""access_log and log_format: one line per session, written by the
worker's threads.

Sessions are driven by real clients (smtplib, raw sockets, TLS) through
smtpgate to aiosmtpd, an HTTP auth service (lib.authsvc) where the user
name must be hostile, and a Maildir spool; the lines are read back from
the file and, for the json format, parsed with Python's json module.
Checked: every field of a relayed session against what the client and
the backend saw (bytes counted on the client's socket, the backend's
address, the messages it accepted, the session id of the error log's
lines); how each session ended ($status) for QUIT, a close, a timeout,
too many failed AUTHs, a backend that is down or refuses; TLS facts;
escaping of a user name with quotes, backslashes, UTF-8 and invalid
bytes, in JSON and in the default escape; custom formats, if=, several
logs, a server's own log and access_log off; buffer= and flush=; lines
kept through reopen (USR1), reload and graceful stop; a log whose
disk is stuck (a FIFO nobody reads) while sessions go on, and one that
fails (/dev/full); every configuration mistake as a file:line error.
"""

import json
import os
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from lib import gate as gatelib
from lib import net
from lib import pki as pkilib
from lib.authsvc import AuthService, ok_to
from lib.pki import TlsSmtp, cert_directives, indent
from lib.smtp import RawSmtp, plain_token
from lib.users import password

from test_config import assert_failed, conf_test, line_of, make  # noqa: F401
from test_resolver import STANDARD, dnsmasq  # noqa: F401


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def log_path(g, name="access.log"):
    return os.path.join(g.logdir, name)


def read_lines(g, name="access.log", partial=False):
    """The file's lines.  partial: while smtpgate may be writing, whose
    write() a read can catch half done (reads of a regular file do not
    wait for writes): a line counts once whole, and one that never ends
    makes wait_lines() time out.  Otherwise the file must end in a
    newline."""
    try:
        with open(log_path(g, name), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    if partial:
        data = data[:data.rfind(b"\n") + 1]
    assert data == b"" or data.endswith(b"\n"), data[-200:]
    return data.decode("utf-8").splitlines()


def wait_lines(g, n, name="access.log", timeout=30.0, probe=True):
    """The file's lines once it holds n of them (the harness's readiness
    probes are sessions too: probe=True drops theirs, the ones with no
    EHLO and nothing but QUIT)."""
    def got():
        lines = read_lines(g, name, partial=True)
        if probe:
            lines = [l for l in lines if not is_probe(l)]
        return lines if len(lines) >= n else None
    return net.wait_until(got, timeout, what=f"{n} lines in {name}")


def is_probe(line):
    try:
        d = json.loads(line)
    except ValueError:
        return False
    return d["helo"] == "" and d["bytes_received"] == 6 \
        and d["status"] == "quit"


def records(g, n, name="access.log", **kw):
    return [json.loads(l) for l in wait_lines(g, n, name, **kw)]


def conf(backend, mail="", **kw):
    return gatelib.conf(backend=backend,
                        mail="    access_log logs/access.log flush=50ms;\n"
                             + mail, **kw)


class Counted:
    """A raw SMTP client counting the bytes each way on its socket."""

    def __init__(self, port, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sent = 0
        self.received = 0
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def reply(self):
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    out = b"\r\n".join(lines[:i + 1]) + b"\r\n"
                    self.buf = self.buf[len(out):]
                    return out
            chunk = self.sock.recv(65536)
            assert chunk, "closed"
            self.received += len(chunk)
            self.buf += chunk

    def cmd(self, line):
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self):
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            self.received += len(chunk)

    def close(self):
        self.sock.close()


# -- what one session's line says ---------------------------------------------

def test_relayed_session(smtpgate, backend):
    g = smtpgate(conf(backend))
    c = Counted(g.port)
    assert c.reply().startswith(b"220 ")
    assert c.cmd(b"EHLO client.test").startswith(b"250")
    token = plain_token("alice", password("alice")).encode()
    assert c.cmd(b"AUTH PLAIN " + token).startswith(b"235")
    for i in range(2):
        assert c.cmd(b"MAIL FROM:<a@example.org>").startswith(b"250")
        assert c.cmd(b"RCPT TO:<b@example.org>").startswith(b"250")
        assert c.cmd(b"DATA").startswith(b"354")
        assert c.cmd(b"Subject: %d\r\n\r\nbody\r\n." % i).startswith(b"250")
    assert c.cmd(b"QUIT").startswith(b"221")
    c.closed()
    port = c.sock.getsockname()[1]
    c.close()
    backend.wait_messages(2)

    (d,) = records(g, 1)
    assert d["client"] == "127.0.0.1"
    assert d["client_port"] == port
    assert d["server_addr"] == "127.0.0.1"
    assert d["server_port"] == g.port
    assert d["server_name"] == "mx.test"
    assert d["helo"] == "client.test"
    assert d["auth_method"] == "plain"
    assert d["auth_status"] == "ok"
    assert d["auth_failures"] == 0
    assert d["user"] == "alice"
    assert d["upstream_addr"] == backend.address
    assert d["messages"] == 2
    assert d["bytes_received"] == c.sent
    assert d["bytes_sent"] == c.received
    assert d["status"] == "quit"
    assert d["tls"] == "" and d["cipher"] == ""
    assert 0 <= d["session_time"] < 30
    # The error log's lines of the same session carry its id.
    assert f"*{d['session']} client logged in with PLAIN" in g.error_log()
    assert time.strftime("%Y-%m-%dT") in d["time"]


def test_failed_logins_then_refused(smtpgate, backend):
    g = smtpgate(conf(backend, mail="    smtp_auth_attempts 2;\n"
                                    "    smtp_auth_fail_delay 0;"))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "wrong").code == 535
        r = c.auth_plain("alice", "wrong again")
        assert r.code == 535
        assert c.reply().code == 421
        c.expect_closed()
    (d,) = records(g, 1)
    assert d["auth_status"] == "failed"
    assert d["auth_failures"] == 2
    assert d["user"] == ""
    assert d["upstream_addr"] == ""
    assert d["messages"] == 0
    assert d["status"] == "refused"
    log = g.error_log()
    assert "wrong" not in open(log_path(g)).read()
    assert "wrong" not in log


def test_client_closes_and_times_out(smtpgate, backend):
    g = smtpgate(conf(backend, timeout="1s"))
    with g.session() as c:
        c.ehlo()
    with g.session() as c:
        c.ehlo()
        assert c.reply().code == 421          # after "timeout"
        c.expect_closed()
    d = records(g, 2)
    assert [x["status"] for x in d] == ["closed", "timeout"]


def test_client_closes_in_the_relay(smtpgate, backend):
    g = smtpgate(conf(backend))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: x\r\n\r\nx\r\n").code == 250
    (d,) = records(g, 1)
    assert d["status"] == "closed"
    assert d["messages"] == 1
    assert d["upstream_addr"] == backend.address


def test_backend_down(smtpgate):
    port = net.free_port()
    g = smtpgate(gatelib.conf(proxy_pass=f"127.0.0.1:{port}",
                              mail="    access_log logs/access.log "
                                   "flush=50ms;"))
    with g.session() as c:
        c.ehlo()
        r = c.auth_plain("alice", password("alice"))
        assert r.code == 451, r
        c.expect_closed()
    (d,) = records(g, 1)
    assert d["auth_status"] == "ok"
    assert d["upstream_addr"] == f"127.0.0.1:{port}"
    assert d["status"] == "backend_error"


def test_backend_refuses(smtpgate, make_backend):
    b = make_backend(greeting_code=554)
    g = smtpgate(conf(b, mail="    proxy_pass_error_message on;"))
    with g.session() as c:
        c.ehlo()
        r = c.auth_plain("alice", password("alice"))
        assert r.code == 554, r
    (d,) = records(g, 1)
    assert d["status"] == "backend_refused"
    assert d["upstream_addr"] == b.address


def test_spool_counts_messages(smtpgate, tmp_path):
    g = smtpgate(gatelib.conf(spool="maildir", mail="    access_log "
                              "logs/access.log flush=50ms;"))
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
        c.login("alice", password("alice"))
        for i in range(3):
            c.sendmail("a@example.org", ["b@example.org"],
                       b"Subject: %d\r\n\r\nx\r\n" % i)
    (d,) = records(g, 1)
    assert d["messages"] == 3
    assert d["upstream_addr"] == ""
    assert d["status"] == "quit"


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_client(smtpgate, backend):
    g = smtpgate(conf(backend, listen=("[::1]:@PORT6@",)))
    port = g.ports["PORT6"]
    with RawSmtp("::1", port) as c:
        c.greeting()
        c.ehlo()
        c.cmd("QUIT")
    lines = [json.loads(l) for l in wait_lines(g, 2, probe=False)]
    d = lines[-1]
    assert d["client"] == "::1" and d["server_addr"] == "::1"
    assert d["server_port"] == port


def test_tls_facts(smtpgate, backend, pki):
    g = smtpgate(pkilib.tls_conf(pki, backend, mail="    access_log "
                                 "logs/access.log flush=50ms;"))
    ctx = pki.client_context()
    c = TlsSmtp.implicit("127.0.0.1", g.ports["PORTS"], ctx, "mx.test")
    c.greeting()
    c.ehlo()
    assert c.auth_plain("alice", password("alice")).code == 235
    c.cmd("QUIT")
    c.close()
    d = [x for x in records(g, 1) if x["tls"]]
    assert d[-1]["tls"] == "TLSv1.3"
    assert d[-1]["cipher"].startswith("TLS_")
    assert d[-1]["user"] == "alice"
    assert d[-1]["server_port"] == g.ports["PORTS"]


def test_client_host_name(smtpgate, backend, dnsmasq):  # noqa: F811
    d = dnsmasq(**STANDARD)
    g = smtpgate(conf(backend, mail=f"    resolver {d.address};"))
    with g.connect(source="127.0.0.2") as c:
        assert c.greeting().code == 220
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.cmd("QUIT").code == 221
    d = [x for x in records(g, 1) if x["client"] == "127.0.0.2"]
    assert d[0]["client_host"] == "client.test"


# -- hostile values ---------------------------------------------------------

HOSTILE = 'al"i\\ce \u00e9\u4e2d'.encode() + b"\xff\xc3("


@pytest.fixture
def hostile_gate(smtpgate, backend):
    svc = AuthService().start()
    svc.default = ok_to(backend)
    g = smtpgate(gatelib.conf(
        backend=backend, auth_file=None,
        mail=f"    auth_http {svc.url};\n"
             "    access_log logs/access.log flush=50ms;\n"
             "    access_log logs/access.txt text flush=50ms;\n"
             "    log_format raw escape=json '[$auth_user|$helo]';\n"
             "    access_log logs/raw.log raw flush=50ms;"))
    yield g
    svc.stop()


def test_hostile_user_name_is_escaped(hostile_gate, backend):
    g = hostile_gate
    with g.session() as c:
        c.ehlo()
        r = c.cmd(b"AUTH PLAIN " + plain_token_bytes(HOSTILE, b"pw"))
        assert r.code == 235, r
        c.cmd("QUIT")
    (d,) = records(g, 1)
    # Valid JSON; the valid UTF-8 kept, every invalid byte U+FFFD.
    assert d["user"] == 'al"i\\ce \u00e9\u4e2d\ufffd\ufffd('
    (t,) = [l for l in wait_lines(g, 1, "access.txt", probe=False)
            if "client.test" in l]
    assert '"al\\x22i\\x5Cce \\xC3\\xA9' .lower() in t.lower()
    assert "\\xff\\xc3(" in t.lower()
    raw = [l for l in wait_lines(g, 2, "raw.log", probe=False)]
    assert json.loads('"' + raw[-1][1:-1] + '"') == \
        'al"i\\ce \u00e9\u4e2d\ufffd\ufffd(|client.test'
    for name in ("access.log", "access.txt", "raw.log"):
        assert b"pw" not in open(log_path(g, name), "rb").read().replace(
            b"pwd", b"")


def plain_token_bytes(user, pw):
    import base64
    return base64.b64encode(b"\0" + user + b"\0" + pw)


# -- formats, conditions, several logs ---------------------------------------

def test_custom_format_and_if(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="""
    map $auth_status $log_it {
        ok       0;
        default  1;
    }
    log_format short '$session_id $remote_addr'
                     ' $auth_status [$auth_user] $status $messages';
    access_log logs/short.log short if=$log_it flush=50ms;
    access_log logs/all.log short flush=50ms;"""))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        c.cmd("QUIT")
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "nope").code == 535
        c.cmd("QUIT")
    all_lines = wait_lines(g, 3, "all.log", probe=False)
    ok_line = [l for l in all_lines if " ok " in l]
    assert len(ok_line) == 1 and ok_line[0].endswith(" ok [alice] quit 0")
    short = wait_lines(g, 2, "short.log", probe=False)
    assert all(" ok " not in l for l in short)
    assert any(l.endswith(" failed [-] quit 0") for l in short)
    assert any(l.endswith(" - [-] quit 0") for l in short)   # the probe


def test_server_logs_and_off(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    access_log logs/mail.log flush=50ms;",
        servers=["        listen 127.0.0.1:@PORTB@;\n"
                 "        access_log off;",
                 "        listen 127.0.0.1:@PORTC@;\n"
                 "        access_log logs/c.log text flush=50ms;"]))
    for key in ("PORT", "PORTB", "PORTC"):
        with RawSmtp("127.0.0.1", g.ports[key]) as c:
            c.greeting()
            c.cmd(f"EHLO {key.lower()}.test")
            c.cmd("QUIT")
    mail = [json.loads(l) for l in wait_lines(g, 1, "mail.log")]
    assert [d["helo"] for d in mail] == ["port.test"]
    c_lines = wait_lines(g, 2, "c.log", probe=False)
    assert any('"portc.test"' in l for l in c_lines)
    time.sleep(0.3)
    text = open(log_path(g, "mail.log")).read() + "".join(c_lines)
    assert "portb.test" not in text


def test_buffer_flush_and_graceful_stop(smtpgate, backend):
    """flush=1h: nothing reaches the file until the buffer (4k) fills;
    what is left is written as the worker exits."""
    g = smtpgate(gatelib.conf(backend=backend, mail="    access_log "
                              "logs/access.log buffer=4k flush=1h;"))
    with g.session() as c:
        c.ehlo()
        c.cmd("QUIT")
    time.sleep(0.5)
    assert read_lines(g) == []
    n = 0
    while not read_lines(g, partial=True):
        with g.session() as c:
            c.cmd("QUIT")
        n += 1
        assert n < 100, "4k of lines never written"
    assert 4096 - 600 < os.path.getsize(log_path(g)) <= 4096
    for _ in range(3):
        with g.session() as c:
            c.ehlo("last.test")
            c.cmd("QUIT")
    g.signal(signal.SIGQUIT)
    g.wait_exit()
    lines = read_lines(g)
    assert sum(1 for l in lines if '"helo":"last.test"' in l) == 3
    assert len(lines) >= n + 4
    for l in lines:
        json.loads(l)


def test_flush_timer(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="    access_log "
                              "logs/access.log flush=300ms;"))
    with g.session() as c:
        c.ehlo("timer.test")
        c.cmd("QUIT")
    t0 = time.monotonic()
    wait_lines(g, 1)
    assert time.monotonic() - t0 < 10


def test_reopen_and_reload(smtpgate, backend):
    g = smtpgate(conf(backend))
    with g.session() as c:
        c.ehlo("before.test")
        c.cmd("QUIT")
    wait_lines(g, 1)
    os.rename(log_path(g), log_path(g, "access.log.1"))
    g.signal(signal.SIGUSR1)
    net.wait_until(lambda: os.path.exists(log_path(g)), 30,
                   what="access.log to be reopened")
    with g.session() as c:
        c.ehlo("after.test")
        c.cmd("QUIT")
    (d,) = records(g, 1)
    assert d["helo"] == "after.test"
    assert "before.test" in open(log_path(g, "access.log.1")).read()
    assert "after.test" not in open(log_path(g, "access.log.1")).read()

    # A session open across a reload is logged by the old worker as it
    # ends, in the same file.
    old = g.workers()
    c = RawSmtp("127.0.0.1", g.port)
    c.greeting()
    c.ehlo("across.test")
    g.reload()
    g.wait_workers(1, exclude=old)
    c.cmd("QUIT")
    c.close()
    g.wait_old_workers_gone(old)
    assert any(json.loads(l)["helo"] == "across.test"
               for l in read_lines(g))


def test_stuck_disk_does_not_stop_sessions(smtpgate, backend):
    """The log is a FIFO that nobody reads: the thread writing it blocks,
    buffers pile up to their limit and further lines are dropped; the
    sessions themselves go on as before.  Once the FIFO is read, the
    lines kept arrive whole and the drop is logged."""
    mail = ("    log_format big '$session_id $helo " + "x" * 3000 + "';\n"
            "    access_log logs/fifo big buffer=4k flush=10ms;")
    g = smtpgate(gatelib.conf(backend=backend, mail=mail), start=False)
    fifo = os.path.join(g.logdir, "fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        g.start()
        # 64k of pipe, 9 buffers of 4k: far fewer than 80 lines of 3k.
        for i in range(80):
            with g.session(timeout=10) as c:
                assert c.cmd(f"EHLO s{i}.test").code == 250
                assert c.cmd("QUIT").code == 221
        got = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                got += chunk
                deadline = min(deadline, time.monotonic() + 2)
            else:
                time.sleep(0.05)
        lines = got.decode().splitlines()
        assert 10 < len(lines) < 80, len(lines)
        for l in lines:
            sid, helo, pad = l.split(" ")
            assert pad == "x" * 3000
        g.wait_log(r"access_log \".*fifo\": \d+ lines dropped because the "
                   r"disk did not keep up")
    finally:
        os.close(reader)


def test_write_errors_are_logged(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="    access_log "
                              "/dev/full flush=10ms;"))
    with g.session() as c:
        c.ehlo()
        c.cmd("QUIT")
    g.wait_log(r'\[error\] .*access_log "/dev/full": write\(\) failed, '
               r"\d+ bytes of log lines lost: check the disk and the file's "
               r"permissions \(28: No space left on device\)")
    with g.session() as c:
        assert c.cmd("QUIT").code == 221


# -- configuration mistakes ------------------------------------------------

def invalid(value, why):
    return f'invalid value "{value}" in "access_log" directive, {why}'


@pytest.mark.parametrize("mail,message", [
    ("access_log logs/a.log nosuch;",
     'access_log: unknown log_format "nosuch"'),
    ("access_log logs/a.log json buffer=1k;",
     invalid("buffer=1k", "buffer= takes a size from 4k to 16m")),
    ("access_log logs/a.log json buffer=99x;",
     invalid("buffer=99x", "buffer= takes a size from 4k to 16m")),
    ("access_log logs/a.log json flush=0;",
     invalid("flush=0", "flush= takes a time from 1ms to 1h")),
    ("access_log logs/a.log json flush=2h;",
     invalid("flush=2h", "flush= takes a time from 1ms to 1h")),
    ("access_log logs/a.log json if=x;",
     invalid("if=x", "if= takes a variable: if=$name")),
    ("access_log logs/a.log json if=$;",
     invalid("if=$", "if= takes a variable: if=$name")),
    ("access_log logs/a.log json if=$nosuch;",
     'unknown variable "$nosuch"'),
    ("access_log logs/a.log json what=1;",
     invalid("what=1", "expected a format name (second), buffer=, "
             "flush= or if=")),
    ("access_log logs/a.log json text;",
     invalid("text", "expected a format name (second), buffer=, "
             "flush= or if=")),
    ("access_log logs/a.log json gzip=5;",
     "access_log: gzip is not supported"),
    ("access_log stderr;",
     'access_log needs a file or syslog: "stderr" is neither'),
    ("access_log off json;", '"access_log off" takes nothing more'),
    ("access_log off; access_log logs/a.log;",
     '"access_log" together with "access_log off" in the same block'),
    ("access_log logs/a.log; access_log off;",
     '"access_log off" together with another access_log in the same '
     "block"),
    ("log_format f '$nosuch';", 'unknown variable "$nosuch"'),
    ("log_format f 'a $';", 'log_format "f": '),
    ("log_format f '$1';",
     'log_format "f": "$1" is a regular expression\'s capture'),
    ("log_format f escape=xml 'a';",
     'log_format "f": unknown "escape=xml": escape=default or escape=json'),
    ("log_format f escape=json;", 'log_format "f": the text must be'),
    ("log_format json 'a';",
     'log_format "json": the name is that of a built-in format'),
    ("log_format f 'a'; log_format f 'b';", 'log_format "f" is defined '
     "twice"),
    ("log_format f;", '"log_format" needs a name and the line\'s text'),
])
def test_config_errors(conf_test, mail, message):
    text = make(mail="    " + mail)
    g, r = conf_test(text)
    assert_failed(g, r, message, line_of(text, mail))


def test_one_file_two_buffer_sizes(conf_test):
    text = make(mail="    access_log logs/a.log buffer=8k;",
                server="        access_log logs/a.log;")
    g, r = conf_test(text)
    assert_failed(g, r, f'access_log "{g.prefix}/logs/a.log": buffer= and '
                  "flush= differ from those of the same file at "
                  f"{g.conf_path}:{line_of(text, 'buffer=8k')}",
                  line_of(text, "access_log logs/a.log;"))


def test_log_format_in_server_is_an_error(conf_test):
    text = make(server="        log_format f 'a';")
    g, r = conf_test(text)
    assert_failed(g, r, '"log_format" directive is not allowed here',
                  line_of(text, "log_format"))


def test_directory_missing_fails_at_start(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend, mail="    access_log /nonexistent/dir/a.log;"),
        start=False)
    r = g.ctl()
    assert r.returncode == 1
    assert 'open() "/nonexistent/dir/a.log" failed (2: No such file or ' \
        'directory): check the "error_log" or "access_log" directive ' \
        "naming it and that the directory exists" in r.stderr, r.stderr


def test_t_finds_a_missing_directory(conf_test):
    text = make(mail="    access_log /nonexistent/dir/a.log;")
    g, r = conf_test(text)
    assert r.returncode == 1, r.stderr
    assert 'open() "/nonexistent/dir/a.log" would fail (2: No such file ' \
        'or directory): check the "error_log" or "access_log" directive ' \
        "naming it and that the directory exists" in r.stderr, r.stderr


def test_sessions_cut_by_the_shutdown_get_their_lines(smtpgate, backend):
    """worker_shutdown_timeout expiring, and a fast stop (TERM), end the
    sessions still open through their normal close: each is told 421
    where it waits for a command, gets its line (status "shutdown"),
    and gives back its status gauge and its limit_conn count."""
    g = smtpgate(gatelib.conf(
        backend=backend, top="worker_shutdown_timeout 1s;",
        mail="    access_log logs/access.log flush=50ms;\n"
             "    status_listen 127.0.0.1:@PORTS@;\n"
             "    limit_conn_zone $remote_addr zone=addr:1m;\n"
             "    limit_conn addr 1;"))
    old = g.workers()
    c = g.connect(source="127.0.0.2")
    assert c.greeting().code == 220
    c.ehlo("cut.test")
    g.reload()
    g.wait_workers(1, exclude=old)
    r = c.reply()                       # after worker_shutdown_timeout
    assert r.code == 421 and r.last == "4.3.2 mx.test Service shutting " \
        "down", r
    c.expect_closed()
    g.wait_old_workers_gone(old)
    d = [x for x in records(g, 1) if x["helo"] == "cut.test"]
    assert d and d[0]["status"] == "shutdown"
    # The count came back: the same address gets its one session.
    with g.connect(source="127.0.0.2") as c2:
        assert c2.greeting().code == 220
        c2.cmd("QUIT")
    out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:"
                          f"{g.ports['PORTS']}/metrics"],
                         capture_output=True, text=True, check=True).stdout
    assert f'smtpgate_sessions_active{{listen="127.0.0.1:{g.port}"}} 0' \
        in out
    # A fast stop: the open session's line is written before the exit.
    c3 = g.connect(source="127.0.0.3")
    assert c3.greeting().code == 220
    c3.ehlo("term.test")
    g.stop(signal.SIGTERM)
    c3.close()
    lines = [json.loads(l) for l in read_lines(g)]
    assert [x["status"] for x in lines if x["helo"] == "term.test"] == \
        ["shutdown"]


def test_line_longer_than_the_buffer(smtpgate, backend):
    """A line over buffer= is written whole, alone, between the others."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    log_format long '$helo " + "x" * 3000 + "' '"
        + "x" * 3000 + "';\n"
        "    access_log logs/long.log long buffer=4k flush=50ms;")))
    for name in ("one.test", "two.test"):
        with g.session() as c:
            c.ehlo(name)
            c.cmd("QUIT")
    lines = wait_lines(g, 3, "long.log", probe=False)
    assert [l.split(" ")[0] for l in lines][-2:] == ["one.test",
                                                     "two.test"]
    assert all(l.endswith(" " + "x" * 6000) for l in lines)
