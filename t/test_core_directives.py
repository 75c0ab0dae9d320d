"""nginx's main and events directives as an operator sees them: the
workers' CPUs, nice value, core limit, directory and environment in
/proc, multi_accept in the worker's system calls, debug_connection in the
error log, pcre_jit in the master's memory map, and the nginx directives
that are read without effect, with their -t warnings at FILE:LINE."""

import os
import pwd
import re
import signal
import subprocess
import time

import pytest

from lib import gate as gatelib, net
from lib.messages import make_message
from lib.users import password

from test_config import (  # noqa: F401 (conf_test is a fixture)
    BASE, assert_failed, conf_test, line_of, make)


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def nice(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # "pid (comm) state ppid ..."; nice is field 19, the 17th after comm.
    return int(data[data.rindex(")") + 2:].split()[16])


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        data = f.read()
    out = {}
    for item in data.split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            out[k] = v
    return out


def top_conf(backend, top, workers=1, **kw):
    return gatelib.conf(backend=backend, workers=workers, top=top, **kw)


# -- worker process attributes ------------------------------------------------


@pytest.mark.parametrize("directive, want", [
    ("worker_cpu_affinity 01 10;", ["0", "1"]),
    ("worker_cpu_affinity auto;", ["0", "1"]),
    ("worker_cpu_affinity auto 10;", ["1", "1"]),
    ("worker_cpu_affinity 10;", ["1", "1"]),
])
def test_worker_cpu_affinity(smtpgate, backend, directive, want):
    """Each worker runs on the CPUs its mask names (the rightmost digit is
    CPU 0; the last mask serves the workers beyond it; auto gives worker N
    the Nth CPU of the mask), and says so in the log."""
    g = smtpgate(top_conf(backend, directive, workers=2))
    ws = g.wait_workers(2)
    got = sorted(proc_status(w, "Cpus_allowed_list") for w in ws)
    assert got == want, (directive, got)
    assert proc_status(g.pid, "Cpus_allowed_list") == "0-1"
    for cpu in set(want):
        g.wait_log(rf"(?m)\[notice\] .*worker \d runs on CPU {cpu}$")


@pytest.mark.parametrize("directive, message", [
    ("worker_cpu_affinity 0102;", 'invalid value "0102" in '
     '"worker_cpu_affinity" directive, a mask is written with 0 and 1'),
    ("worker_cpu_affinity 00;", 'invalid value "00" in "worker_cpu_affinity" '
     "directive, a mask names at least one CPU"),
    ("worker_cpu_affinity auto 01 10;",
     '"worker_cpu_affinity auto" takes at most one mask'),
    ("worker_priority -21;", 'invalid value "-21" in "worker_priority" '
     "directive, it must be a nice value from -20 to 20"),
    ("worker_priority high;", 'invalid value "high" in "worker_priority"'),
    ("worker_rlimit_core lots;", 'invalid value "lots" in '
     '"worker_rlimit_core"'),
])
def test_worker_attribute_errors(conf_test, directive, message):
    text = make(top=directive)
    g, r = conf_test(text)
    assert_failed(g, r, message, line_of(text, directive))


def test_cpu_mask_for_a_bigger_machine_warns(conf_test):
    """A mask copied from a machine with more CPUs names none here: -t
    says so, and the configuration loads."""
    mask = "1" + "0" * os.cpu_count()
    text = make(top=f"worker_cpu_affinity 01 {mask};")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr
    where = f"{g.conf_path}:{line_of(text, 'worker_cpu_affinity')}:"
    assert re.search(r"\[warn\] \d+#\d+: " + re.escape(
        f"{where} worker_cpu_affinity mask \"{mask}\" names no CPU this "
        "system lets smtpgate run on"), r.stderr), r.stderr


def test_worker_priority(smtpgate, backend):
    g = smtpgate(top_conf(backend, "worker_priority -5;"))
    w = g.wait_workers(1)[0]
    assert nice(w) == -5
    assert nice(g.pid) == 0


def test_core_limit_and_working_directory(smtpgate, backend):
    """worker_rlimit_core sets both limits, working_directory is the
    workers' current directory, and a worker that changed its user stays
    dumpable: its /proc files belong to that user, not to root."""
    g = smtpgate(top_conf(backend, "worker_rlimit_core 64m;\n"
                          "working_directory cores;"), start=False)
    cores = os.path.join(g.prefix, "cores")
    os.makedirs(cores)
    os.chmod(cores, 0o777)
    g.start()
    w = g.wait_workers(1)[0]
    with open(f"/proc/{w}/limits") as f:
        line = [l for l in f if l.startswith("Max core file size")][0]
    assert line.split()[4:7] == ["67108864", "67108864", "bytes"], line
    assert os.readlink(f"/proc/{w}/cwd") == cores
    assert os.readlink(f"/proc/{g.pid}/cwd") == g.cwd
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody").pw_uid
        assert os.stat(f"/proc/{w}/status").st_uid == nobody


def test_no_core_settings_leave_the_worker_alone(smtpgate, backend):
    g = smtpgate(top_conf(backend, ""))
    w = g.wait_workers(1)[0]
    assert os.readlink(f"/proc/{w}/cwd") == g.cwd
    if os.geteuid() == 0:
        assert os.stat(f"/proc/{w}/status").st_uid == 0


def test_working_directory_must_exist(conf_test):
    text = make(top="working_directory /nonexistent/cores;")
    g, r = conf_test(text)
    assert_failed(g, r, 'working_directory "/nonexistent/cores" '
                  "(2: No such file or directory)",
                  line_of(text, "working_directory"))
    text = make(top="working_directory conf/smtpgate.conf;")
    g, r = conf_test(text)
    assert_failed(g, r, f'working_directory "{g.prefix}/conf/smtpgate.conf" is '
                  "not a directory", line_of(text, "working_directory"))


def test_env(smtpgate, backend, monkeypatch):
    """Workers keep TZ and what "env" names, nothing else; the master
    keeps everything."""
    monkeypatch.setenv("SG_KEEP", "kept")
    monkeypatch.setenv("SG_DROP", "secret")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("SG_OVER", "inherited")
    g = smtpgate(top_conf(backend, "env SG_KEEP;\nenv SG_SET=given;\n"
                          "env SG_OVER=configured;\nenv SG_ABSENT;"))
    w = g.wait_workers(1)[0]
    assert environ(w) == {"SG_KEEP": "kept", "SG_SET": "given",
                          "SG_OVER": "configured", "TZ": "UTC"}
    master = environ(g.pid)
    assert master["SG_DROP"] == "secret" and master["SG_OVER"] == "inherited"
    # The workers still serve.
    with g.session() as c:
        assert c.ehlo("client.test").code == 250


# -- events -------------------------------------------------------------------


def accept_pattern(g, worker, clients):
    """Stop the worker, let `clients` connections wait in the listen
    queue, and trace its accept4() and epoll calls as it resumes: the
    list of ("accept", ok) and ("wait",) it made."""
    trace = os.path.join(g.root, "strace")
    os.kill(worker, signal.SIGSTOP)
    socks = []
    strace = None
    try:
        socks = [net.connect("127.0.0.1", g.port, 10) for _ in range(clients)]
        strace = subprocess.Popen(
            ["strace", "-qq", "-e", "trace=accept4,epoll_wait,epoll_pwait",
             "-o", trace, "-p", str(worker)], stderr=subprocess.DEVNULL)
        net.wait_until(lambda: proc_status(worker, "TracerPid") != "0", 10,
                       what="strace to attach")
        os.kill(worker, signal.SIGCONT)
        for s in socks:
            s.settimeout(10)
            assert s.recv(100).startswith(b"220")
        # A reply means the worker is back in its event loop: the accept
        # loop is over and traced.
        socks[0].sendall(b"NOOP\r\n")
        assert socks[0].recv(100).startswith(b"250")
    finally:
        os.kill(worker, signal.SIGCONT)
        for s in socks:
            s.close()
        if strace:
            strace.terminate()
            strace.wait(10)
    calls = []
    with open(trace) as f:
        for line in f:
            if line.startswith("accept4("):
                calls.append(("accept", "EAGAIN" not in line))
            elif line.startswith("epoll_"):
                calls.append(("wait",))
    return calls


@pytest.mark.parametrize("multi", ["on", "off"])
def test_multi_accept(smtpgate, backend, multi):
    """With multi_accept on, the waiting connections are taken in one go,
    until accept4() says EAGAIN; with off, one per readiness event."""
    g = smtpgate(gatelib.conf(backend=backend).replace(
        "worker_connections 1024;",
        f"worker_connections 1024;\n    multi_accept {multi};"))
    w = g.wait_workers(1)[0]
    calls = accept_pattern(g, w, 4)
    runs, n = [], 0
    for call in calls:
        if call == ("accept", True):
            n += 1
        elif n:
            runs.append(n)
            n = 0
    if n:
        runs.append(n)
    if multi == "on":
        assert 4 in runs, calls
        assert ("accept", False) in calls, calls
    else:
        assert runs and max(runs) == 1, calls
        assert ("accept", False) not in calls, calls


@pytest.mark.parametrize("value", ["127.0.0.2", "127.0.0.2/32",
                                   "127.0.0.0/30"])
def test_debug_connection(smtpgate, backend, value):
    """A client debug_connection names is logged at debug level although
    error_log says error; another client is not."""
    g = smtpgate(gatelib.conf(backend=backend, level="error").replace(
        "worker_connections 1024;",
        "worker_connections 1024;\n"
        f"    debug_connection {value};\n    debug_connection ::5;"))
    mark = g.quiet_log_mark()
    with g.session(source="127.0.0.5") as c:
        assert c.ehlo("plain.test").code == 250
        assert c.cmd("QUIT").code == 221
    time.sleep(0.5)
    assert "127.0.0.5" not in g.log_since(mark), g.log_since(mark)
    mark = g.log_mark()
    with g.session(source="127.0.0.2") as c:
        assert c.ehlo("debugged.test").code == 250
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    g.wait_log(r"\[debug\] \d+#\d+: \*\d+ client command: EHLO "
               r"debugged\.test, client: 127\.0\.0\.2,", since=mark)
    g.wait_log(r"\[info\] \d+#\d+: \*\d+ session closed, .*client: "
               r"127\.0\.0\.2,", since=mark)


def test_debug_connection_errors(conf_test):
    text = BASE.replace("worker_connections 1024;",
                        "worker_connections 1024;\n"
                        "    debug_connection example.org;")
    g, r = conf_test(text)
    assert_failed(g, r, 'invalid value "example.org" in "debug_connection"',
                  line_of(text, "debug_connection"))
    text = BASE.replace("worker_connections 1024;",
                        "worker_connections 1024;\n"
                        "    debug_connection 127.0.0.1/8;")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr
    assert (f"{g.conf_path}:{line_of(text, 'debug_connection')}: "
            'low address bits of "127.0.0.1/8" in "debug_connection" are '
            'meaningless') in r.stderr


def test_use(conf_test):
    text = BASE.replace("worker_connections 1024;",
                        "worker_connections 1024;\n    use epoll;")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr
    assert "[warn]" not in r.stderr, r.stderr
    text = BASE.replace("worker_connections 1024;",
                        "worker_connections 1024;\n    use select;")
    g, r = conf_test(text)
    assert_failed(g, r, 'invalid value "select" in "use" directive, '
                  "smtpgate's only connection processing method is "
                  '"epoll"', line_of(text, "use select"))


# -- pcre_jit -----------------------------------------------------------------


def jit_mapped(pid):
    """PCRE2 puts JIT code in an anonymous writable and executable
    mapping."""
    with open(f"/proc/{pid}/maps") as f:
        return [l for l in f if l.split()[1] == "rwxp"]


@pytest.mark.parametrize("jit", ["on", "off", None])
def test_pcre_jit(smtpgate, make_backend, jit):
    """Regexes are JIT-compiled unless "pcre_jit off" (smtpgate's default
    is on), wherever the directive stands; they match either way."""
    a, b = make_backend(), make_backend()
    conf = gatelib.conf(proxy_pass="$backend", mail=f"""
    map $auth_user $backend {{
        ~^u[0-9]+@a\\.test$  {a.address};
        default            {b.address};
    }}
    server_name ~^mx[0-9]+\\.test$;""", server_name=None)
    if jit:
        conf += f"pcre_jit {jit};\n"
    users = "u1@a.test:{PLAIN}pw\nx@b.test:{PLAIN}pw\n"
    g = smtpgate(conf, users_text=users)
    assert bool(jit_mapped(g.pid)) == (jit != "off"), jit_mapped(g.pid)
    for user, want in (("u1@a.test", a), ("x@b.test", b)):
        with g.session() as c:
            assert c.ehlo("client.test").code == 250
            assert c.auth_plain(user, "pw").code == 235
            r = c.mail(f"s-{user}", ["r@example.org"], make_message(100))
            assert r.code == 250, r
            assert c.cmd("QUIT").code == 221
        net.wait_until(lambda: any(m.mail_from == f"s-{user}"
                                   for m in want.messages), 30,
                       what=f"mail from {user}")


# -- nginx directives without effect ------------------------------------------


NGINX_TOP = """\
master_process on;
lock_file logs/nginx.lock;
timer_resolution 100ms;
load_module modules/ngx_mail_module.so;
load_module /usr/lib/nginx/modules/ngx_http_geoip_module.so;
thread_pool io threads=4;
thread_pool default threads=3 max_queue=100;
"""
NGINX_EVENTS = """\
    multi_accept on;
    use epoll;
    accept_mutex off;
    accept_mutex on;
    accept_mutex_delay 500ms;
    worker_aio_requests 32;
"""


def test_nginx_directives_load_with_warnings(conf_test):
    """The directives nginx has and smtpgate has no use for are read; -t
    warns, at FILE:LINE, about those an nginx user may count on."""
    text = NGINX_TOP + BASE.replace("worker_connections 1024;\n",
                                    "worker_connections 1024;\n"
                                    + NGINX_EVENTS)
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr
    warns = [l for l in r.stderr.splitlines() if "[warn]" in l]

    def at(needle):
        return f"{g.conf_path}:{line_of(text, needle)}: "
    want = [
        at("timer_resolution") + '"timer_resolution" ignored: smtpgate '
        "reads the clock once per event loop iteration",
        at("ngx_http_geoip") + 'load_module "/usr/lib/nginx/modules/'
        'ngx_http_geoip_module.so" ignored: smtpgate\'s modules are built '
        "in (smtpgate -V lists them)",
        at("thread_pool io") + 'thread pool "io" ignored: smtpgate\'s one '
        'thread pool per worker is "default"',
        at("accept_mutex on") + '"accept_mutex" ignored: smtpgate has no '
        "accept mutex: workers share a listening socket through "
        'EPOLLEXCLUSIVE, or each has its own with "reuseport"',
        at("accept_mutex_delay") + '"accept_mutex_delay" ignored: smtpgate '
        "has no accept mutex: workers share a listening socket through "
        'EPOLLEXCLUSIVE, or each has its own with "reuseport"',
    ]
    for w in want:
        assert any(l.endswith(w) for l in warns), \
            f"missing {w!r} in:\n{r.stderr}"
    assert len(warns) == len(want), "\n".join(warns)


@pytest.mark.parametrize("top, message", [
    ("master_process off;", '"master_process off" is not supported: '
     "smtpgate always runs a master and its workers"),
    ("thread_pool default threads=65;", 'invalid value "threads=65" in '
     '"thread_pool" directive, threads= must be 1 to 64'),
    ("thread_pool default max_queue=5;", '"thread_pool default" needs '
     "threads=N"),
    ("thread_pool default threads=2 size=1;", 'invalid value "size=1" in '
     '"thread_pool"'),
    ("thread_pool_threads 4;\nthread_pool default threads=2;",
     '"thread_pool default" is set twice, or also by "thread_pool_threads"'),
])
def test_nginx_directive_errors(conf_test, top, message):
    text = make(top=top)
    g, r = conf_test(text)
    assert_failed(g, r, message, line_of(text, top.splitlines()[-1]))


def test_thread_pool_default_sizes_the_pool(smtpgate, backend):
    """"thread_pool default threads=3" starts three threads in a worker
    once a password is checked, as thread_pool_threads 3 would."""
    g = smtpgate(top_conf(backend, "thread_pool default threads=3;"))
    w = g.wait_workers(1)[0]
    with g.session() as c:
        assert c.ehlo("client.test").code == 250
        assert c.auth_plain("alice", password("alice")).code == 235
    assert len(os.listdir(f"/proc/{w}/task")) == 1 + 3
