"""The error log: line format, one session id per session, and never a
credential, even at debug level."""

import os
import re
import signal

from lib import gate as gatelib
from lib import net
from lib.smtp import b64, plain_token
from lib.users import password

LINE = re.compile(
    r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) "
    r"\[(debug|info|notice|warn|error|crit|alert|emerg)\] "
    r"(\d+)#(\d+): (?:\*(\d+) )?(.*)$")


def parse(text):
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        assert m, f"log line in an unexpected format: {line!r}"
        out.append(m)
    return out


def test_log_line_format(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    with g.session() as c:
        c.ehlo()
        c.auth_plain("alice", "wrong")
        c.cmd("QUIT")
    g.stop()
    lines = parse(g.error_log())
    assert lines, "empty error log"
    assert any(m.group(2) == "notice" and m.group(5) is None
               and "start worker process" in m.group(6) for m in lines)


def test_session_id_on_every_line_of_a_session(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    mark = g.quiet_log_mark()
    with g.session() as c:
        c.ehlo("client.test")
        assert c.auth_plain("alice", "wrong-password").code == 535
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    # Let the worker finish logging the session's end.
    g.stop()
    lines = parse(g.log_since(mark))
    session = [m for m in lines if m.group(5) is not None]
    assert session, "no session lines logged for a failed AUTH"
    ids = {m.group(5) for m in session}
    assert len(ids) == 1, f"several session ids in one session: {ids}"
    # Session lines carry the client and the listening address (more
    # context, such as the login, may follow).
    context = re.compile(rf", client: 127\.0\.0\.1, "
                         rf"server: 127\.0\.0\.1:{g.port}(, |$)")
    for m in session:
        if m.group(2) != "debug":
            assert context.search(m.group(6)), m.group(0)
    # Lines without a session id are not about this client.
    for m in lines:
        if m.group(5) is None:
            assert "client: 127.0.0.1" not in m.group(6), m.group(0)


def test_sessions_get_distinct_ids(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    mark = g.quiet_log_mark()
    for _ in range(3):
        with g.session() as c:
            c.ehlo()
            c.auth_plain("alice", "wrong-password")
            c.cmd("QUIT")
            c.expect_closed()
    g.stop()
    ids = {m.group(5) for m in parse(g.log_since(mark)) if m.group(5)}
    assert len(ids) == 3, ids


def _secret_forms(user, pw):
    return {
        pw,
        b64(pw),
        plain_token(user, pw),
        plain_token(user, pw, authzid=user),
        b64(pw)[:-2] if b64(pw).endswith("==") else b64(pw),
    }


def test_passwords_never_logged(smtpgate, backend, users):
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    wrong = "Wr0ng-Passw0rd-Never-Logged"
    secrets = set()
    for user in ("alice", "bob", "dave"):
        pw = password(user)
        secrets |= _secret_forms(user, pw) | _secret_forms(user, wrong)
        with g.session() as c:
            c.ehlo()
            assert c.auth_plain(user, wrong).code == 535
            assert c.auth_login(user, wrong).code == 535
            assert c.cmd("AUTH PLAIN").code == 334
            assert c.cmd(plain_token(user, wrong)).code == 535
        with g.session() as c:
            c.ehlo()
            assert c.auth_login(user, pw).code == 235
            assert c.mail("a@example.org", ["b@example.org"],
                          b"Subject: x\r\n\r\nx\r\n").code == 250
        with g.session() as c:
            c.ehlo()
            assert c.auth_plain(user, pw).code == 235
    # The stored hashes are secrets too.
    hashes, _ = users
    secrets |= {hashes[u] for u in ("alice", "bob")}
    g.stop()
    texts = {p: open(p, "rb").read() for p in g._scan_files()
             if os.path.exists(p)}
    assert texts[g.error_log_path], "nothing logged at debug level"
    for path, data in texts.items():
        for s in secrets:
            assert s.encode() not in data, f"{s!r} found in {path}"


def test_failed_auth_is_logged_with_user(smtpgate, backend):
    """An operator can see who failed to log in (without the password)."""
    g = smtpgate(gatelib.conf(backend=backend, level="info"))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "wrong-password").code == 535
    g.wait_log(r"\*\d+ .*alice", since=mark)


def test_no_log_injection(smtpgate, backend):
    """Control characters from the client (in a user name, in a command)
    never start a new log line or reach the log raw."""
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    mark = g.quiet_log_mark()
    evil_user = "eve\n2024/01/01 00:00:00 [emerg] 1#1: FORGED\r"
    with g.session() as c:
        c.ehlo("client.test")
        r = c.cmd("AUTH PLAIN " + plain_token(evil_user, "x"))
        assert 500 <= r.code < 600, r
        r = c.auth_login(evil_user, "x")
        assert 500 <= r.code < 600, r
        c.send(b"NOOP \x1b[31mred\x1b[0m \x07\r\n")
        assert c.reply().code in (250, 500, 501)
        c.cmd("QUIT")
    g.stop()
    text = g.log_since(mark)
    parse(text)                     # every line is a well-formed log line
    assert not any(l.startswith("2024/01/01") for l in text.splitlines()), \
        text
    assert "\x1b" not in text and "\x07" not in text, text


def test_user_name_cannot_fake_log_fields(smtpgate, backend):
    """A user name with a quote, a comma (or a backslash, or UTF-8) is
    written \\xHH inside its quotes, as nginx's access log writes such
    bytes: it cannot close them or hold a field a log reader would take
    for the client's (a fail2ban filter banning someone else's
    address)."""
    g = smtpgate(gatelib.conf(backend=backend, level="debug"))
    mark = g.quiet_log_mark()
    user = 'x", client: 192.0.2.66, login: "y\\é'
    with g.session() as c:
        c.ehlo("client.test")
        assert c.auth_plain(user, "wrong").code == 535
        c.cmd("QUIT")
    g.wait_log(r"session closed", since=mark)
    text = g.log_since(mark)
    assert "192.0.2.66" in text                 # written, but quoted
    for line in text.splitlines():
        fields = re.findall(r', client: ([^,]+)', line)
        assert fields in ([], ["127.0.0.1"]), line
    assert ('authentication failed for "x\\x22\\x2C client: 192.0.2.66\\x2C '
            'login: \\x22y\\x5C\\xC3\\xA9"') in text, text


def test_error_log_per_server(smtpgate, backend):
    """error_log in a server (as in nginx): its sessions log there, at
    its level; another server's go to the mail block's error_log, and the
    main error_log keeps the rest.  USR1 reopens them all."""
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    error_log logs/mail.log info;",
        server="        error_log logs/first.log debug;",
        servers=["        listen 127.0.0.1:@PORT2@;\n"
                 "        server_name second.test;\n"]))
    first = os.path.join(g.logdir, "first.log")
    mail = os.path.join(g.logdir, "mail.log")
    for port in (g.port, g.ports["PORT2"]):
        with g.connect(port=port) as c:
            c.greeting()
            c.ehlo()
            assert c.auth_plain("alice", password("alice")).code == 235
            assert c.expect("QUIT", 221)
    def done(path):
        return any("session closed" in l and 'login: "alice"' in l
                   for l in open(path).read().splitlines())
    net.wait_until(lambda: done(mail) and done(first), 30,
                   what="both sessions in their logs")
    first_text, mail_text = open(first).read(), open(mail).read()
    assert "[debug]" in first_text and "[debug]" not in mail_text
    assert f"server: 127.0.0.1:{g.port}" in first_text
    assert f"server: 127.0.0.1:{g.ports['PORT2']}" in mail_text
    assert "client logged in" not in g.error_log()
    assert "start worker process" in g.error_log()

    os.rename(first, first + ".1")
    g.signal(signal.SIGUSR1)
    net.wait_until(lambda: os.path.exists(first), 30, what="first.log again")
    with g.connect() as c:
        c.greeting()
        assert c.expect("QUIT", 221)
    net.wait_until(lambda: "session closed" in open(first).read(), 30,
                   what="the next session in the new first.log")


def levels_in(path):
    try:
        text = open(path).read()
    except FileNotFoundError:
        return set()
    return set(re.findall(r"^\S+ \S+ \[(\w+)\]", text, re.M))


def test_several_error_logs(smtpgate, backend):
    """error_log given more than once in a context (as nginx allows):
    every line goes to each target whose level takes it.  Main: the file
    at warn and another at notice; mail: one at info, one at debug; a
    debug_connection client's lines reach every target."""
    text = gatelib.conf(backend=backend, level="warn",
                        top="error_log logs/main-info.log notice;",
                        mail="    error_log logs/s-info.log info;\n"
                             "    error_log logs/s-debug.log debug;")
    g = smtpgate(text)
    main_info = os.path.join(g.logdir, "main-info.log")
    s_info = os.path.join(g.logdir, "s-info.log")
    s_debug = os.path.join(g.logdir, "s-debug.log")
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.expect("QUIT", 221)
    # the close of the session that logged in (the harness's readiness
    # probe was a session too)
    net.wait_until(lambda: all(re.search(r'session closed.*login: "alice"',
                                         open(p).read())
                               for p in (s_info, s_debug)), 30,
                   what="the session in both of its logs")
    assert "debug" in levels_in(s_debug) and "info" in levels_in(s_debug)
    assert levels_in(s_info) == {"info"}
    info_lines = [l for l in open(s_info).read().splitlines()]
    debug_text = open(s_debug).read()
    assert all(l in debug_text for l in info_lines)
    # the main error_log's two targets: the master's and workers'
    # notices in one, not in the other (warn)
    assert "start worker process" in open(main_info).read()
    assert "start worker process" not in g.error_log()
    assert "client connected" not in open(main_info).read()
    g.ctl("-s", "reopen")
    net.wait_until(lambda: "reopening logs" in open(main_info).read(), 30,
                   what="the notice in main-info.log")
    assert "reopening logs" not in g.error_log()


def test_several_error_logs_debug_connection(smtpgate, backend):
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    error_log logs/a.log error;\n"
             "    error_log logs/b.log info;").replace(
        "worker_connections 1024;",
        "worker_connections 1024;\n    debug_connection 127.0.0.7;"))
    a = os.path.join(g.logdir, "a.log")
    b = os.path.join(g.logdir, "b.log")
    for src in ("127.0.0.7", "127.0.0.8"):
        with g.session(source=src) as c:
            c.ehlo()
            assert c.expect("QUIT", 221)
    net.wait_until(lambda: "client: 127.0.0.8" in open(b).read()
                   and "client: 127.0.0.7" in open(b).read(), 30,
                   what="both sessions in b.log")

    def lines(path, src):
        return [l for l in open(path).read().splitlines()
                if f"client: {src}" in l]
    # the debug client: every line, debug ones too, in both targets
    assert any("[debug]" in l for l in lines(a, "127.0.0.7"))
    assert any("[debug]" in l for l in lines(b, "127.0.0.7"))
    # another client: each target at its own level
    assert lines(a, "127.0.0.8") == []
    assert lines(b, "127.0.0.8") and \
        not any("[debug]" in l for l in lines(b, "127.0.0.8"))


def test_start_fails_when_port_in_use(smtpgate, backend):
    import socket
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        g = smtpgate(gatelib.conf(backend=backend,
                                  listen=(f"127.0.0.1:{port}",)), start=False)
        g.allow(r"\[emerg\]")      # start-up failure is the point here
        g.expected_returncodes = {1}
        g.start(wait=False)
        assert g.wait_exit(60) == 1
        out = open(g.stderr_path).read() + g.error_log()
        assert "Address already in use" in out, out
        assert f"127.0.0.1:{port}" in out, out
    finally:
        holder.close()
