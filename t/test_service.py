"""The service files configure writes (auto/service/*.in): the systemd
unit and the logrotate file.

- The unit, rendered for the test's binary and prefix, passes
  `systemd-analyze verify`; its commands are run as systemd would run
  them: ExecStartPre (-t), the master started with NOTIFY_SOCKET set,
  ExecReload (-t, then HUP to $MAINPID), KillSignal (QUIT).  What the
  master tells the notify socket is read from a UNIX datagram socket of
  the test's own: a mock of systemd's end of the protocol, since no
  systemd runs here as the service manager.  Checked: READY=1 with
  MAINPID once the workers run, RELOADING=1 with MONOTONIC_USEC then
  READY=1 for a reload, READY=1 with the reason for a reload that
  fails, STOPPING=1 for a graceful stop, the abstract-socket form
  ("@name"), and a NOTIFY_SOCKET nobody listens on.
- The logrotate file, rendered for the test's prefix, run by the real
  logrotate: the logs are renamed and smtpgate writes new ones.
- configure's output carries the build's paths.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

from lib import gate as gatelib
from lib import net

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
UNIT_IN = os.path.join(TOP, "auto", "service", "smtpgate.service.in")
LOGROTATE_IN = os.path.join(TOP, "auto", "service", "smtpgate.logrotate.in")


def render(path, **values):
    with open(path) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    assert "@" not in re.sub(r"(?m)^#.*$", "", text), text
    return text


def unit_for(g):
    """The unit for this test's smtpgate: its binary, with the test's
    prefix, and its configuration."""
    return render(UNIT_IN, SBIN=f"{gatelib.binary()} -p {g.prefix}/",
                  CONF=g.conf_path)


def unit_lines(text, key):
    return [l.split("=", 1)[1] for l in text.splitlines()
            if l.startswith(key + "=")]


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket, each datagram a
    set of NAME=value lines (a mock of the service manager)."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"smtpgate-notify-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
            self.dir = None
        else:
            self.dir = tempfile.mkdtemp(prefix="smtpgate-notify-")
            self.address = os.path.join(self.dir, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(30)

    def next(self):
        data = self.sock.recv(4096).decode()
        return dict(l.split("=", 1) for l in data.splitlines() if l)

    def close(self):
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify(monkeypatch):
    made = []

    def make(abstract=False):
        n = NotifySocket(abstract)
        made.append(n)
        monkeypatch.setenv("NOTIFY_SOCKET", n.address)
        return n
    yield make
    for n in made:
        n.close()


def run(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_unit_verifies(smtpgate, backend, tmp_path):
    g = smtpgate(gatelib.conf(backend=backend), start=False)
    path = tmp_path / "smtpgate.service"
    path.write_text(unit_for(g))
    r = run(f"systemd-analyze verify {path}")
    assert r.returncode == 0, r.stdout + r.stderr
    text = path.read_text()
    assert unit_lines(text, "Type") == ["notify"]
    assert unit_lines(text, "KillSignal") == ["SIGQUIT"]


def test_unit_lifecycle(smtpgate, backend, notify):
    n = notify()
    g = smtpgate(gatelib.conf(backend=backend, workers=2), start=False)
    unit = unit_for(g)
    (pre,) = unit_lines(unit, "ExecStartPre")
    r = run(pre)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    g.start()
    ready = n.next()
    assert ready["READY"] == "1" and ready["MAINPID"] == str(g.pid), ready
    assert ready["STATUS"] == "serving"
    assert len(g.workers()) == 2          # ready means the workers run
    with g.session() as c:
        assert c.cmd("QUIT").code == 221

    old = g.workers()
    for cmd in unit_lines(unit, "ExecReload"):
        r = run(cmd.replace("$MAINPID", str(g.pid)))
        assert r.returncode == 0, r.stderr
    reloading = n.next()
    assert reloading["RELOADING"] == "1", reloading
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert n.next() == {"READY": "1",
                        "STATUS": "serving (configuration reloaded)"}
    g.wait_workers(2, exclude=old)

    # A reload whose configuration fails: READY again, with why.
    g.write_conf(g.conf_text.replace("events {", "events {\n    nosuch;"))
    os.kill(g.pid, signal.SIGHUP)
    assert n.next()["RELOADING"] == "1"
    again = n.next()
    assert again["READY"] == "1", again
    assert again["STATUS"].startswith("reload failed, the old "
                                      "configuration serves: "), again
    assert 'unknown directive "nosuch"' in again["STATUS"]
    g.allow(r"reload failed")
    with g.session() as c:                # still served
        assert c.cmd("QUIT").code == 221

    (sig,) = unit_lines(unit, "KillSignal")
    g.signal(getattr(signal, sig))
    stopping = n.next()
    assert stopping["STOPPING"] == "1", stopping
    g.wait_exit()
    assert g.proc.returncode == 0


def test_abstract_notify_socket_and_fast_stop(smtpgate, backend, notify):
    n = notify(abstract=True)
    g = smtpgate(gatelib.conf(backend=backend))
    assert n.next()["READY"] == "1"
    g.signal(signal.SIGTERM)
    assert n.next()["STOPPING"] == "1"
    g.wait_exit()


def test_notify_socket_nobody_listens_on(smtpgate, backend, monkeypatch,
                                         tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    g = smtpgate(gatelib.conf(backend=backend))
    g.reload()
    with g.session() as c:
        assert c.cmd("QUIT").code == 221
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/not/a/socket")
    g2 = smtpgate(gatelib.conf(backend=backend))
    with g2.session() as c:
        assert c.cmd("QUIT").code == 221


@pytest.mark.skipif(shutil.which("logrotate") is None,
                    reason="logrotate is not installed")
def test_logrotate(smtpgate, backend, tmp_path):
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    access_log logs/access.log flush=50ms;"))
    with g.session() as c:
        assert c.cmd("QUIT").code == 221
    access = os.path.join(g.logdir, "access.log")
    net.wait_until(lambda: os.path.exists(access)
                   and os.path.getsize(access) > 0, 30, what="access.log")
    conf = tmp_path / "smtpgate.logrotate"
    conf.write_text(render(LOGROTATE_IN, LOGS=g.logdir + "/",
                           PID=os.path.join(g.logdir, "smtpgate.pid")))
    os.chmod(conf, 0o644)
    r = run(f"logrotate -f -s {tmp_path / 'state'} {conf}")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("error.log", "access.log"):
        assert os.path.exists(os.path.join(g.logdir, name + ".1")), \
            os.listdir(g.logdir)
    assert "reopening logs" in open(g.error_log_path + ".1").read()

    # USR1 from postrotate: new files, written to by the workers too
    def new_files_written():
        with g.session() as c:
            assert c.cmd("QUIT").code == 221
        return (os.path.exists(g.error_log_path)
                and "session closed" in g.error_log()
                and os.path.exists(access) and os.path.getsize(access))
    net.wait_until(new_files_written, 30, interval=0.2,
                   what="lines in the new error.log and access.log")
    # a second rotation compresses the first (delaycompress)
    with g.session() as c:
        assert c.cmd("QUIT").code == 221
    r = run(f"logrotate -f -s {tmp_path / 'state'} {conf}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.path.exists(os.path.join(g.logdir, "error.log.2.gz")), \
        os.listdir(g.logdir)


def test_configure_writes_the_build_paths():
    """The files in the build directory carry configure's paths."""
    builddir = os.path.dirname(gatelib.binary())
    unit = os.path.join(builddir, "smtpgate.service")
    rot = os.path.join(builddir, "smtpgate.logrotate")
    assert os.path.exists(unit) and os.path.exists(rot), builddir
    text = open(unit).read()
    (start,) = unit_lines(text, "ExecStart")
    assert re.fullmatch(r"/\S+/sbin/smtpgate -c /\S+\.conf", start), start
    assert "@" not in re.sub(r"(?m)^#.*$", "", text)
    text = open(rot).read()
    assert re.search(r"(?m)^/\S+/\*\.log \{$", text), text
    assert re.search(r'kill -USR1 "\$\(cat /\S+\.pid\)"', text), text
