"""Running the smtpgate binary under test.

A Smtpgate object owns one temporary prefix:

    ROOT/prefix/            -p PREFIX/
    ROOT/prefix/logs/       error.log, smtpgate.pid (relative to the prefix)
    ROOT/prefix/conf/       smtpgate.conf, users, included files
                            (relative to the directory of the main config)
    ROOT/stdout, ROOT/stderr, ROOT/sanitizer/report.PID

The master runs in the foreground (`daemon off;`), so the Popen pid is the
master pid and the workers are its children.  check() lists what must not
happen in any test: an [alert] or [emerg] line, a sanitizer report, a
crash, a master that does not stop on SIGTERM, a worker that outlives it.
"""

import atexit
import os
import re
import signal as _signal
import ssl
import subprocess
import time

from . import net
from .smtp import RawSmtp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BIN = os.path.join(REPO, "objs", "smtpgate")

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

BAD_PATTERNS = [
    "[alert]",
    "[emerg]",
    "AddressSanitizer",
    "LeakSanitizer",
    "runtime error:",
    "Segmentation fault",
    "core dumped",
]

PLACEHOLDER = re.compile(r"@(PORT\w*|PREFIX|CONFDIR)@")
LISTEN = re.compile(r"^\s*listen\s+(\S+?)(?:;|\s)", re.M)
LISTEN_PARAMS = re.compile(r"^\s*listen\s+([^;\s]+)([^;]*);", re.M)
WORKERS = re.compile(r"^\s*worker_processes\s+(\d+)\s*;", re.M)
# An nginx server block smtpgate reads and skips (protocol imap or pop3):
# its listens stay closed.
SKIPPED_SERVER = re.compile(
    r"^\s*server\s*\{[^{}]*?^\s*protocol\s+(?:imap|pop3)\s*;[^{}]*\}",
    re.M)

_live = set()


def binary():
    return os.environ.get("SMTPGATE_BIN") or DEFAULT_BIN


def sanitizer_env(log_dir):
    """Sanitizer reports go to files in log_dir/sanitizer/, which workers
    that dropped privileges can still write."""
    report_dir = os.path.join(log_dir, "sanitizer")
    os.makedirs(report_dir, exist_ok=True)
    os.chmod(report_dir, 0o1777)
    env = dict(os.environ)
    ours = {
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:"
                        f"log_path={report_dir}/report",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:"
                         f"log_path={report_dir}/report",
    }
    for key, value in ours.items():
        # The caller's own options come last so that they win.
        env[key] = value + (":" + env[key] if env.get(key) else "")
    return env


def run_binary(args, cwd, timeout=60):
    """Run the binary once (-t, -T, -V, -s ...) and return the result with
    text stdout and stderr."""
    exe = binary()
    if not os.access(exe, os.X_OK):
        raise AssertionError(f"smtpgate binary not found at {exe} "
                             "(build it, or set SMTPGATE_BIN)")
    env = sanitizer_env(cwd)
    r = subprocess.run([exe] + list(args), cwd=cwd, capture_output=True,
                       text=True, errors="replace", timeout=timeout,
                       env=env, stdin=subprocess.DEVNULL)
    reports = os.path.join(cwd, "sanitizer")
    for name in sorted(os.listdir(reports)):
        text = _read(os.path.join(reports, name))
        if text.strip():
            raise AssertionError(f"sanitizer report from smtpgate {args}:\n"
                                 f"{text[:6000]}")
    return r


# What the readiness probe sends first on a "listen ... proxy_protocol"
# address: a PROXY header that keeps the connection's own address.
PROXY_PROBE = b"PROXY UNKNOWN\r\n"


def tls_probe(host, port, timeout=5.0, preface=b""):
    """True once an implicit-TLS listener answers a handshake, whether
    or not it accepts this client (one that wants a client certificate
    answers with an alert).  `preface` goes out before the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        s = net.connect(host, port, timeout)
    except OSError:
        return False
    try:
        if preface:
            s.sendall(preface)
        with ctx.wrap_socket(s) as t:
            if not t.recv(512).startswith(b"220"):
                return False
            # The greeting may come with the server's handshake flight
            # (ssl_greeting_in_handshake): QUIT's answer says the server
            # has finished this session's handshake and logged it, so
            # that it does not log it after a test's log mark.
            t.sendall(b"QUIT\r\n")
            t.recv(512)
            return True
    except ssl.SSLError:
        return True
    except OSError:
        return False
    finally:
        s.close()


def conf(*, backend=None, proxy_pass=None, server_name="mx.test",
         workers=1, level="info", mail="", server="",
         listen=("127.0.0.1:@PORT@",), require_tls=False,
         auth_file="users", top="", timeout="60s",
         proxy_connect_timeout="10s", proxy_timeout=None, servers=(),
         spool=None):
    """A complete configuration for the common case; the keyword arguments
    add or change directives.  Each text in `servers` is the body of one
    more server{} block after the first.  Placeholders (@PORT@ ...) are
    filled in by Smtpgate.  auth_file=None leaves auth_file out;
    proxy_pass=False (or no backend and no proxy_pass) leaves proxy_pass
    out.  spool=DIR stores messages in a Maildir instead of relaying
    (`proxy_pass spool:DIR;`, DIR relative to the prefix)."""
    if spool is not None:
        proxy_pass = f"spool:{spool}"
    if proxy_pass is None and backend is not None:
        proxy_pass = backend.address
    lines = ["daemon off;"]
    if workers is not None:
        lines.append(f"worker_processes {workers};")
    lines += [
        "pid logs/smtpgate.pid;",
        f"error_log logs/error.log {level};",
        top,
        "events {",
        "    worker_connections 1024;",
        "}",
        "mail {",
    ]
    if server_name is not None:
        lines.append(f"    server_name {server_name};")
    if auth_file is not None:
        lines.append(f"    auth_file {auth_file};")
    if not require_tls:
        lines.append("    smtp_auth_require_tls off;")
    if proxy_pass:
        lines.append(f"    proxy_pass {proxy_pass};")
    for name, value in (("proxy_connect_timeout", proxy_connect_timeout),
                        ("proxy_timeout", proxy_timeout),
                        ("timeout", timeout)):
        if value is not None:
            lines.append(f"    {name} {value};")
    lines += [
        mail,
        "    server {",
    ]
    lines += [f"        listen {l};" for l in listen]
    lines += [
        "        protocol smtp;",
        server,
        "    }",
    ]
    for body in servers:
        lines += ["    server {", body, "    }"]
    lines += [
        "}",
    ]
    return "\n".join(l for l in lines if l) + "\n"


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # "pid (comm) S ppid ..." -- comm may contain spaces and parentheses.
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


# The names helper processes give themselves (prctl PR_SET_NAME).
HELPER_NAMES = ("spool forwarder",)


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def children(pid):
    """Live (non-zombie) child pids of pid."""
    out = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
        except OSError:
            pass
    live = []
    for c in sorted(out):
        st = _proc_state(c)
        if st and st[0] != "Z":
            live.append(c)
    return live


def alive(pid):
    """pid runs the smtpgate binary (a reused pid running something else,
    or a zombie, does not count)."""
    st = _proc_state(pid)
    if st is None or st[0] == "Z":
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    if exe.endswith(" (deleted)"):
        exe = exe[:-len(" (deleted)")]
    return os.path.realpath(exe) == os.path.realpath(binary())


class Smtpgate:
    def __init__(self, root, conf_text, *, users_text=None, files=None,
                 args=()):
        self.root = str(root)
        self.prefix = os.path.join(self.root, "prefix")
        self.confdir = os.path.join(self.prefix, "conf")
        self.logdir = os.path.join(self.prefix, "logs")
        self.conf_path = os.path.join(self.confdir, "smtpgate.conf")
        self.error_log_path = os.path.join(self.logdir, "error.log")
        self.stdout_path = os.path.join(self.root, "stdout")
        self.stderr_path = os.path.join(self.root, "stderr")
        self.cwd = os.path.join(self.root, "cwd")
        for d in (self.confdir, self.logdir, self.cwd):
            os.makedirs(d, exist_ok=True)
        self.ports = {}
        self.args = list(args)
        self.proc = None
        self.allowed = []           # regexes for expected bad lines
        self.known_workers = set()
        self.expected_returncodes = {0}
        if users_text is not None:
            self.write_file("users", users_text)
        for name, text in (files or {}).items():
            self.write_file(name, text)
        self.write_conf(conf_text)

    # -- files ------------------------------------------------------------

    def render(self, text):
        def sub(m):
            key = m.group(1)
            if key == "PREFIX":
                return self.prefix
            if key == "CONFDIR":
                return self.confdir
            if key not in self.ports:
                host = net.IPV6 if "6" in key else net.IPV4
                self.ports[key] = net.free_port(host)
            return str(self.ports[key])
        return PLACEHOLDER.sub(sub, text)

    def write_file(self, name, text):
        path = os.path.join(self.confdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(self.render(text))
        return path

    def write_conf(self, text):
        self.conf_text = self.render(text)
        with open(self.conf_path, "w") as f:
            f.write(self.conf_text)

    @property
    def port(self):
        return self.ports["PORT"]

    def _served_text(self):
        return SKIPPED_SERVER.sub("", self.conf_text)

    def listen_addresses(self):
        return [net.parse_hostport(a)
                for a in LISTEN.findall(self._served_text())]

    def tls_listen_addresses(self):
        """The listen addresses with the `ssl` parameter (implicit TLS)."""
        return [net.parse_hostport(a)
                for a, params in LISTEN_PARAMS.findall(self._served_text())
                if "ssl" in params.split()]

    def proxy_protocol_listen_addresses(self):
        """The listen addresses with the `proxy_protocol` parameter."""
        return [net.parse_hostport(a)
                for a, params in LISTEN_PARAMS.findall(self._served_text())
                if "proxy_protocol" in params.split()]

    # -- process ----------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid

    def start(self, wait=True):
        exe = binary()
        if not os.access(exe, os.X_OK):
            raise AssertionError(f"smtpgate binary not found at {exe} "
                                 "(build it, or set SMTPGATE_BIN)")
        self._out = open(self.stdout_path, "ab")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [exe, "-p", self.prefix + "/", "-c", self.conf_path] + self.args,
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
            cwd=self.cwd, env=sanitizer_env(self.root),
            start_new_session=True)
        _live.add(self)
        if wait:
            self.wait_ready()
        return self

    def describe(self):
        """Everything useful for a failure message."""
        parts = [f"binary: {binary()}", f"conf {self.conf_path}:",
                 self.conf_text]
        if self.proc is not None and self.proc.poll() is not None:
            parts.append(f"master exited with {self.proc.returncode}")
        for path in self._scan_files():
            text = _read(path)
            if text:
                parts.append(f"--- {path} (last 3000 chars):\n{text[-3000:]}")
        return "\n".join(parts)

    def wait_ready(self, timeout=START_TIMEOUT):
        """Wait until every listen address greets and the configured
        number of workers runs."""
        addresses = self.listen_addresses()
        pending = list(addresses)
        tls = set(self.tls_listen_addresses())
        pp = set(self.proxy_protocol_listen_addresses())

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("smtpgate exited during start-up\n"
                                     + self.describe())
            while pending:
                host, port = pending[0]
                preface = PROXY_PROBE if (host, port) in pp else b""
                if (host, port) in tls:
                    if not tls_probe(host, port, preface=preface):
                        return False
                    pending.pop(0)
                    continue
                try:
                    with RawSmtp(host, port, timeout=5) as c:
                        c.send(preface)
                        r = c.greeting()
                        assert r.code == 220, f"greeting {r!r}"
                        c.cmd("QUIT")
                except (OSError, AssertionError):
                    return False
                pending.pop(0)
            return True

        try:
            net.wait_until(ready, timeout, what="smtpgate to greet on "
                           + ", ".join(net.hostport(*a) for a in addresses))
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.describe()}") from None
        m = WORKERS.search(self.conf_text)
        if m:
            self.wait_workers(int(m.group(1)))
        return self

    def workers(self):
        """The worker processes: the master's children but its helpers
        (see helpers())."""
        pids = children(self.proc.pid)
        self.known_workers.update(pids)
        return [p for p in pids if _comm(p) not in HELPER_NAMES]

    def helpers(self):
        """The helper processes (the spool forwarder), known by the
        name each gives itself."""
        pids = children(self.proc.pid)
        self.known_workers.update(pids)
        return [p for p in pids if _comm(p) in HELPER_NAMES]

    def wait_workers(self, n, timeout=START_TIMEOUT, exclude=()):
        """Wait until exactly n workers not in `exclude` run; return them."""
        def check():
            w = [p for p in self.workers() if p not in exclude]
            return w if len(w) == n else None
        try:
            return net.wait_until(check, timeout,
                                  what=f"{n} worker processes besides "
                                       f"{sorted(exclude)}")
        except AssertionError as e:
            raise AssertionError(f"{e}; workers now: {self.workers()}") \
                from None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reload(self, conf_text=None):
        if conf_text is not None:
            self.workers()
            self.write_conf(conf_text)
        self.signal(_signal.SIGHUP)

    def wait_old_workers_gone(self, old, timeout=START_TIMEOUT):
        """After a reload: wait until none of the `old` workers runs, so
        that every new connection meets the new configuration."""
        old = set(old)
        net.wait_until(lambda: not set(self.workers()) & old, timeout,
                       what=f"old workers {sorted(old)} to exit")

    def ctl(self, *args, timeout=60):
        """Run `smtpgate -p PREFIX/ -c CONF ARGS` (for -s, -t ...)."""
        return run_binary(["-p", self.prefix + "/", "-c", self.conf_path]
                          + list(args), cwd=self.cwd, timeout=timeout)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"master {self.proc.pid} still running after {timeout}s\n"
                + self.describe()) from None

    def stop(self, sig=_signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signal the master and wait for it; return its exit status."""
        if self.proc.poll() is None:
            self.workers()
            self.signal(sig)
        return self.wait_exit(timeout)

    def connect(self, host=None, port=None, timeout=30.0, rcvbuf=None,
                source=None):
        if host is None:
            host, p = self.listen_addresses()[0]
            port = port or p
        return RawSmtp(host, port, timeout, rcvbuf, source)

    def session(self, timeout=30.0, rcvbuf=None, source=None):
        """Connect (from the address source, when given) and read the 220
        greeting."""
        c = self.connect(timeout=timeout, rcvbuf=rcvbuf, source=source)
        r = c.greeting()
        assert r.code == 220, f"greeting: {r!r}"
        return c

    def worker_of(self, client):
        """The worker process holding the server side of a RawSmtp
        client connection (IPv4), found by its socket's inode."""
        local = client.sock.getsockname()[:2]
        remote = client.sock.getpeername()[:2]
        inode = net.tcp_inode(remote, local)
        assert inode, f"no server socket for client {local}"
        for pid in self.workers():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == \
                            f"socket:[{inode}]":
                        return pid
                except OSError:
                    pass
        return None

    def one_in_each_worker(self, tries=60):
        """Two greeted client connections held by different workers."""
        found, spare = {}, []
        try:
            for _ in range(tries):
                c = self.connect()
                assert c.greeting().code == 220
                pid = self.worker_of(c)
                if pid in found or pid is None:
                    spare.append(c)
                else:
                    found[pid] = c
                if len(found) == 2:
                    return list(found.values())
            raise AssertionError("all connections went to one worker")
        finally:
            for c in spare:
                c.close()

    # -- logs -------------------------------------------------------------

    def error_log(self):
        return _read(self.error_log_path)

    def log_mark(self):
        try:
            return os.path.getsize(self.error_log_path)
        except OSError:
            return 0

    def quiet_log_mark(self, quiet=0.5, timeout=20.0):
        """A log mark taken once the log has stopped growing for `quiet`
        seconds, so that lines of earlier sessions (the start-up probe)
        are behind it."""
        state = {"size": -1, "since": time.monotonic()}

        def settled():
            size = self.log_mark()
            now = time.monotonic()
            if size != state["size"]:
                state["size"], state["since"] = size, now
                return False
            return now - state["since"] >= quiet
        net.wait_until(settled, timeout, what="the error log to settle")
        return state["size"]

    def log_since(self, mark):
        try:
            with open(self.error_log_path, "rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, since=0, timeout=30.0):
        """Wait for a log line matching the regex; return the match."""
        rx = re.compile(pattern)

        def found():
            return rx.search(self.log_since(since))
        try:
            return net.wait_until(found, timeout,
                                  what=f"error log line /{pattern}/")
        except AssertionError as e:
            raise AssertionError(f"{e}\nlog since mark:\n"
                                 f"{self.log_since(since)[-4000:]}") from None

    def allow(self, pattern):
        """Do not fail the test for bad lines matching this regex."""
        self.allowed.append(re.compile(pattern))

    # -- teardown ---------------------------------------------------------

    def _scan_files(self):
        paths = [self.stderr_path, self.stdout_path]
        for d in (self.logdir, os.path.join(self.root, "sanitizer")):
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            paths += [os.path.join(d, n) for n in names
                      if os.path.isfile(os.path.join(d, n))]
        return paths

    def problems(self):
        out = []
        for path in self._scan_files():
            text = _read(path)
            is_sanitizer = os.path.basename(os.path.dirname(path)) == \
                "sanitizer"
            if is_sanitizer and text.strip():
                out.append(f"sanitizer report {path}:\n{text[:6000]}")
                continue
            for line in text.splitlines():
                if any(p in line for p in BAD_PATTERNS) and \
                        not any(a.search(line) for a in self.allowed):
                    out.append(f"{os.path.basename(path)}: {line}")
        return out

    def shutdown(self):
        """Stop everything this object started; return what went wrong."""
        issues = []
        if self.proc is None:
            return issues
        if self.proc.poll() is None:
            self.workers()
            try:
                self.signal(_signal.SIGTERM)
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                issues.append(f"master {self.proc.pid} did not exit within "
                              f"{STOP_TIMEOUT}s of SIGTERM; killed")
                _kill_group(self.proc.pid)
                self.proc.wait(10)
        rc = self.proc.returncode
        if rc not in self.expected_returncodes:
            issues.append(f"master exited with status {rc}")
        survivors = [p for p in sorted(self.known_workers) if alive(p)]
        if survivors:
            # Give an orphan a moment: it may be finishing its exit.
            time.sleep(1)
            survivors = [p for p in survivors if alive(p)]
        if survivors:
            issues.append(f"worker(s) {survivors} still running after the "
                          "master exited; killed")
            for p in survivors:
                try:
                    os.kill(p, _signal.SIGKILL)
                except OSError:
                    pass
        _kill_group(self.proc.pid)
        self._out.close()
        self._err.close()
        _live.discard(self)
        issues += self.problems()
        return issues


def _kill_group(pgid):
    try:
        os.killpg(pgid, _signal.SIGKILL)
    except OSError:
        pass


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@atexit.register
def _cleanup():
    for g in list(_live):
        if g.proc is not None:
            _kill_group(g.proc.pid)
