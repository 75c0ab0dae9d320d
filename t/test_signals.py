"""The master process: reload, graceful and fast stop, log reopening and
respawning a worker that died.  No established session may be dropped."""

import os
import signal

import pytest

from lib import gate as gatelib
from lib import net
from lib.checks import assert_same_bytes
from lib.messages import make_message
from lib.users import password


def _greeting_of_new_connection(g):
    try:
        with g.connect(timeout=10) as c:
            return c.greeting().last
    except (OSError, AssertionError):
        return None


def _authed_session(g, user="alice"):
    c = g.session()
    c.ehlo()
    r = c.auth_plain(user, password(user))
    assert r.code == 235, r
    return c


@pytest.mark.parametrize("how", ["SIGHUP", "-s reload"])
def test_reload_keeps_established_session(smtpgate, backend, how):
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    old_workers = set(g.workers())
    c = _authed_session(g)              # relaying through an old worker
    g.write_conf(gatelib.conf(backend=backend, workers=2,
                              server_name="mx2.test"))
    if how == "SIGHUP":
        g.signal(signal.SIGHUP)
    else:
        r = g.ctl("-s", "reload")
        assert r.returncode == 0, r.stderr
    net.wait_until(
        lambda: _greeting_of_new_connection(g) == "mx2.test ESMTP ready",
        60, what="the new greeting after reload")
    # New workers run beside the old ones that still have a session.
    new_workers = g.wait_workers(2, exclude=old_workers)
    assert not set(new_workers) & old_workers
    msg = make_message(50000, seed=3)
    with c:
        assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, msg)
    # With their sessions gone the old workers exit.
    net.wait_until(lambda: set(g.workers()) == set(new_workers), 60,
                   what=f"old workers {old_workers} to exit")


def test_reload_with_broken_config_keeps_serving(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    workers = set(g.workers())
    mark = g.log_mark()
    broken = gatelib.conf(backend=backend, workers=2, server_name="new.test",
                          mail="    no_such_directive 1;")
    line = next(i + 1 for i, l in enumerate(broken.splitlines())
                if "no_such_directive" in l)
    g.reload(broken)
    m = g.wait_log(r"\[(\w+)\] .*" + f"{g.conf_path}:{line}: "
                   + 'unknown directive "no_such_directive"', since=mark)
    assert m.group(1) == "error", m.group(0)
    # Still the old configuration, the same workers, and sessions work.
    assert _greeting_of_new_connection(g) == "mx.test ESMTP ready"
    assert set(g.workers()) == workers
    with _authed_session(g) as c:
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: x\r\n\r\nx\r\n").code == 250
    assert g.proc.poll() is None


def test_reload_changes_backend(smtpgate, backend):
    from lib.backends import AiosmtpdBackend
    b2 = AiosmtpdBackend().start()
    try:
        g = smtpgate(gatelib.conf(backend=backend))
        old = g.workers()
        g.reload(gatelib.conf(backend=b2, server_name="mx2.test"))
        g.wait_old_workers_gone(old)
        assert _greeting_of_new_connection(g) == "mx2.test ESMTP ready"
        with _authed_session(g) as c:
            assert c.mail("a@example.org", ["b@example.org"],
                          b"Subject: 2\r\n\r\nx\r\n").code == 250
        b2.wait_messages(1)
        assert backend.messages == []
    finally:
        b2.stop()


def test_reload_reads_users_file_again(smtpgate, backend, users):
    g = smtpgate(gatelib.conf(backend=backend))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("zed", "zed-secret-Qq1").code == 535
    g.write_file("users", users[1] + "zed:{PLAIN}zed-secret-Qq1\n")
    old = g.workers()
    g.reload(gatelib.conf(backend=backend, server_name="mx2.test"))
    g.wait_old_workers_gone(old)
    assert _greeting_of_new_connection(g) == "mx2.test ESMTP ready"
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("zed", "zed-secret-Qq1").code == 235


@pytest.mark.time_limit(180)
def test_graceful_quit_finishes_message_in_flight(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    msg = make_message(200000, seed=9)
    half = len(msg) // 2
    c = _authed_session(g)
    assert c.expect("MAIL FROM:<a@example.org>", 250)
    assert c.expect("RCPT TO:<b@example.org>", 250)
    assert c.expect("DATA", 354)
    from lib.smtp import dot_stuff
    payload = dot_stuff(msg)
    c.send(payload[:half])
    g.signal(signal.SIGQUIT)

    def refused():
        try:
            net.connect("127.0.0.1", g.port, timeout=5).close()
            return False
        except ConnectionRefusedError:
            return True
    net.wait_until(refused, 60, interval=0.2,
                   what="new connections to be refused after SIGQUIT")
    with c:
        c.send(payload[half:])
        r = c.reply()
        assert r.code == 250 and "backend" in r.last, r
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, msg)
    assert g.wait_exit(60) == 0


def test_s_quit_exits_when_idle(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    r = g.ctl("-s", "quit")
    assert r.returncode == 0, r.stderr
    assert g.wait_exit(60) == 0


def test_s_stop(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    workers = g.workers()
    r = g.ctl("-s", "stop")
    assert r.returncode == 0, r.stderr
    assert g.wait_exit(60) == 0
    net.wait_until(lambda: not any(gatelib.alive(p) for p in workers), 30,
                   what="workers to exit")
    with pytest.raises(ConnectionRefusedError):
        net.connect("127.0.0.1", g.port, timeout=5).close()


def test_fast_stop_closes_sessions(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    c = _authed_session(g)
    g.signal(signal.SIGTERM)
    assert g.wait_exit(60) == 0
    with c:
        c.read_until_closed()


def test_s_without_running_master_fails(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend), start=False)
    r = g.ctl("-s", "reload")
    assert r.returncode != 0
    assert "smtpgate.pid" in r.stderr, r.stderr


def test_reopen_logs(smtpgate):
    port = net.free_port()      # no backend: AUTH makes the worker log
    g = smtpgate(gatelib.conf(proxy_pass=f"127.0.0.1:{port}"))
    rotated = g.error_log_path + ".1"
    os.rename(g.error_log_path, rotated)
    g.signal(signal.SIGUSR1)
    net.wait_until(lambda: os.path.exists(g.error_log_path), 30,
                   what="error.log to be reopened")
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 451
    g.wait_log(rf"127\.0\.0\.1:{port}")
    with open(rotated) as f:
        assert f"127.0.0.1:{port}" not in f.read()


def test_reopen_moves_stderr_to_the_new_log(smtpgate, backend):
    """stderr carries what is not a log line (a sanitizer report, a
    library's complaint) into the error log: after a reopen it goes to
    the new file, in the master and in the workers, not to the rotated
    one."""
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    new = os.path.realpath(g.error_log_path)
    os.rename(g.error_log_path, g.error_log_path + ".1")
    g.signal(signal.SIGUSR1)
    for pid in [g.pid] + g.workers():
        net.wait_until(lambda: os.readlink(f"/proc/{pid}/fd/2") == new, 30,
                       what=f"stderr of {pid} on the new error.log")


def test_s_reopen(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    os.rename(g.error_log_path, g.error_log_path + ".1")
    r = g.ctl("-s", "reopen")
    assert r.returncode == 0, r.stderr
    net.wait_until(lambda: os.path.exists(g.error_log_path), 30,
                   what="error.log to be reopened")


def test_killed_worker_is_respawned(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    before = g.workers()
    victim = before[0]
    g.allow(rf"\[alert\] .*worker process {victim} exited on signal 9")
    mark = g.log_mark()
    os.kill(victim, signal.SIGKILL)
    now = g.wait_workers(2, exclude=[victim])
    new = [p for p in now if p not in before]
    assert len(new) == 1, (before, now)
    g.wait_log(rf"\[alert\] .*worker process {victim} exited on signal 9",
               since=mark)
    g.wait_log(rf"\[notice\] .*start worker process {new[0]}\b", since=mark)
    for i in range(6):
        with _authed_session(g) as c:
            assert c.mail("a@example.org", [f"r{i}@example.org"],
                          b"Subject: after respawn\r\n\r\nx\r\n").code == 250
    assert len(backend.wait_messages(6)) == 6


def test_pid_file_and_start_log(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=2))
    with open(os.path.join(g.prefix, "logs", "smtpgate.pid")) as f:
        assert int(f.read().strip()) == g.pid
    for w in g.workers():
        g.wait_log(rf"\[notice\] {g.pid}#\d+: start worker process {w}\b")


def test_reload_moves_listener(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    old_port = g.port
    g.reload(gatelib.conf(backend=backend, listen=("127.0.0.1:@PORT2@",)))
    new_port = g.ports["PORT2"]

    def greets(port):
        try:
            with g.connect(port=port, timeout=10) as c:
                return c.greeting().code == 220
        except (OSError, AssertionError):
            return False
    net.wait_until(lambda: greets(new_port), 60, what="the new listener")

    def refused():
        try:
            net.connect("127.0.0.1", old_port, timeout=5).close()
            return False
        except ConnectionRefusedError:
            return True
    net.wait_until(refused, 60, what="the old listener to close")
