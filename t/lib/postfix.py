"""A real Postfix as a backend, run as root from a directory of its own.

PostfixServer(...).start() writes a configuration and runs
`postfix -c ROOT/conf start`; every path Postfix writes to is under ROOT,
so a system Postfix (if any) is neither read nor touched:

    ROOT/conf/main.cf, master.cf    config_directory (root-owned, as
                                    Postfix insists)
    ROOT/queue/                     queue_directory; pid/master.pid
    ROOT/data/                      data_directory (master.lock)
    ROOT/mail/inbox/new/            every message for @example.org,
                                    delivered by virtual(8) as nobody
                                    into one Maildir
    ROOT/maillog                    the log, written by postlogd(8)

It listens only on host:port (127.0.0.1 or ::1, a free port) with
smtpd(8); mynetworks and smtpd_authorized_xclient_hosts are the loopback
networks, so XCLIENT works from the tests.  Only example.org is
accepted (anything else gets 554 at RCPT); nothing leaves the machine.

Keywords: hostname (myhostname, default postfix.test); tls="starttls"
offers STARTTLS, tls="implicit" runs smtpd in wrapper mode (both with
the backend.test certificate of lib.pki, and the TLS details in the
Received header); proxy_protocol=True makes smtpd expect a haproxy
PROXY header (v1 or v2) first; main={...} adds or overrides main.cf
parameters and smtpd={...} -o options of the smtpd service.  Postfix
here has no SASL (AUTH is what AiosmtpdBackend(auth=...) is for).

The start-up is bounded (START_TIMEOUT) and ends with one probe session
(connect, greeting, QUIT), which the log shows.  On failure the error
carries the output of `postfix start` and the log.  stop() sends the
master SIGTERM and waits for it and its children to go, killing them if
they do not; an atexit hook kills whatever a test left running.
cleanup() removes ROOT.

Needs root (Postfix's daemons start as root and drop to `postfix`) and
the postfix package; skip_reason() says why not when one is missing.
"""

import atexit
import os
import pty
import pwd
import re
import select
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

from . import net

POSTFIX = "/usr/sbin/postfix"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
DOMAIN = "example.org"
LOOPBACK_NETWORKS = "127.0.0.0/8 [::1]/128"

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd{smtpd_opts}
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_live = set()


def skip_reason():
    """Why a PostfixServer cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a real Postfix needs root (its daemons drop privileges)"
    if not os.access(POSTFIX, os.X_OK):
        return f"{POSTFIX} not found (install the postfix package)"
    for user in ("postfix", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"no user {user!r} for Postfix"
    return None


def run_captured(args, timeout):
    """Run a Postfix command with its stderr on a pseudo-terminal: the
    postfix command reports to stderr only when that is a terminal (and
    to syslog, which a test machine may not have).  Returns (exit status,
    output)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave,
                             stderr=slave, start_new_session=True)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:         # EIO: every writer is gone
                    chunk = b""
                if chunk:
                    out += chunk
                    continue
                break
            if p.poll() is not None:
                break
            if time.monotonic() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
                raise AssertionError(
                    f"{' '.join(args)} did not finish within {timeout}s; "
                    f"output so far:\n{out.decode(errors='replace')}")
    finally:
        os.close(master)
    return p.wait(5), out.decode(errors="replace").replace("\r\n", "\n")


def _alive(pid):
    """True while pid runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(")") + 2:].split()[0] != "Z"


def _group_members(pgid):
    """Live pids in process group pgid."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(name))
    return out


def headers(raw, name):
    """The values of every header `name` in message bytes `raw`, each
    unfolded (continuation lines joined with one space), in order."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    fields = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line)
    want = name.lower().encode() + b":"
    return [f[len(want):].strip().decode(errors="replace") for f in fields
            if f.lower().startswith(want)]


def body(raw):
    """The part of message bytes `raw` after the header."""
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


class PostfixServer:
    name = "postfix"

    def __init__(self, host=net.IPV4, *, hostname="postfix.test",
                 directory=None, tls=None, proxy_protocol=False,
                 main=None, smtpd=None, pki=None):
        if tls not in (None, "starttls", "implicit"):
            raise ValueError(f"tls must be None, 'starttls' or 'implicit', "
                             f"not {tls!r}")
        self.host = host
        self.hostname = hostname
        self.port = net.free_port(host)
        self.tls = tls
        self.proxy_protocol = proxy_protocol
        self._main_extra = dict(main or {})
        self._smtpd_extra = dict(smtpd or {})
        self._pki = pki
        self._own_dir = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="smtpgate-postfix-",
                                         dir="/tmp")
        self.root = str(directory)
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.confdir = os.path.join(self.root, "conf")
        self.queuedir = os.path.join(self.root, "queue")
        self.datadir = os.path.join(self.root, "data")
        self.maildir = os.path.join(self.root, "mail")
        self.inbox = os.path.join(self.maildir, "inbox")
        self.log_path = os.path.join(self.root, "maillog")
        self.master_pid = None
        self.start_output = ""

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    # -- configuration -----------------------------------------------------

    def main_cf(self):
        """main.cf as a dict (the defaults, then main={...})."""
        nobody = pwd.getpwnam("nobody")
        conf = {
            "compatibility_level": "3.6",
            "queue_directory": self.queuedir,
            "data_directory": self.datadir,
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.root,
            "syslog_name": "postfix-test",
            "myhostname": self.hostname,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "relayhost": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv6" if ":" in self.host else "ipv4",
            "mynetworks": LOOPBACK_NETWORKS,
            "smtpd_authorized_xclient_hosts": LOOPBACK_NETWORKS,
            "smtpd_authorized_xforward_hosts": LOOPBACK_NETWORKS,
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "smtpd_banner": "$myhostname ESMTP Postfix",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "notify_classes": "",
            "default_transport": "error:nothing leaves this test Postfix",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": self.maildir,
            "virtual_mailbox_maps": "static:inbox/",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "virtual_minimum_uid": "1",
        }
        if self.tls is not None:
            conf.update(self._tls_main())
        conf.update(self._main_extra)
        return conf

    def _tls_main(self):
        pki = self._pki
        if pki is None:
            from . import pki as pkilib
            pki = pkilib.shared()
        name = pki.backend_cert()
        return {
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": pki.cert(name),
            "smtpd_tls_key_file": pki.key(name),
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_session_cache_database": "",
        }

    def smtpd_options(self):
        opts = {}
        if self.tls == "implicit":
            opts["smtpd_tls_wrappermode"] = "yes"
        if self.proxy_protocol:
            opts["smtpd_upstream_proxy_protocol"] = "haproxy"
        opts.update(self._smtpd_extra)
        return opts

    def master_cf(self):
        opts = ""
        for key, value in self.smtpd_options().items():
            value = str(value)
            if re.search(r"\s", value) or not value:
                opts += f"\n  -o {{ {key} = {value} }}"
            else:
                opts += f"\n  -o {key}={value}"
        return MASTER_CF.format(listen=self.address, smtpd_opts=opts)

    def _write_config(self):
        os.makedirs(self.confdir, exist_ok=True)
        os.chmod(self.confdir, 0o755)
        with open(os.path.join(self.confdir, "main.cf"), "w") as f:
            for key, value in self.main_cf().items():
                f.write(f"{key} = {value}\n")
        with open(os.path.join(self.confdir, "master.cf"), "w") as f:
            f.write(self.master_cf())
        for name in ("main.cf", "master.cf"):
            os.chmod(os.path.join(self.confdir, name), 0o644)
        pf = pwd.getpwnam("postfix")
        nobody = pwd.getpwnam("nobody")
        for path, owner, mode in ((self.queuedir, None, 0o755),
                                  (self.datadir, pf, 0o700),
                                  (self.maildir, nobody, 0o755)):
            os.makedirs(path, exist_ok=True)
            if owner is not None:
                os.chown(path, owner.pw_uid, owner.pw_gid)
            os.chmod(path, mode)

    # -- running -----------------------------------------------------------

    def start(self):
        reason = skip_reason()
        if reason:
            raise AssertionError(reason)
        if self.master_pid is not None:
            raise AssertionError(f"Postfix {self.address} already running")
        self._write_config()
        deadline = time.monotonic() + START_TIMEOUT
        _live.add(self)
        try:
            status, self.start_output = run_captured(
                [POSTFIX, "-c", self.confdir, "start"], START_TIMEOUT)
            if status != 0:
                raise AssertionError(f"postfix start exited {status}")
            self.master_pid = self._read_pid()
            if self.master_pid is None:
                raise AssertionError("no master.pid after postfix start")
            net.wait_until(self._greets, max(1.0, deadline - time.monotonic()),
                           what=f"Postfix to greet on {self.address}")
        except BaseException as e:
            self._force_stop()
            raise AssertionError(
                f"Postfix did not start: {e}\n"
                f"--- postfix start:\n{self.start_output}"
                f"--- {self.log_path}:\n{self.log_text()}") from None
        return self

    def _read_pid(self):
        try:
            with open(os.path.join(self.queuedir, "pid", "master.pid")) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def _greets(self):
        if self.tls == "implicit":
            return self._greets_tls()
        try:
            with net.connect(self.host, self.port, 5) as s:
                if self.proxy_protocol:
                    s.sendall(self._probe_proxy_header(s))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"220 "):
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
                    return True
                return False
        except OSError:
            return False

    @staticmethod
    def _probe_proxy_header(s):
        src, sport = s.getsockname()[:2]
        dst, dport = s.getpeername()[:2]
        proto = "TCP6" if ":" in src else "TCP4"
        return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()

    def _greets_tls(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with net.connect(self.host, self.port, 5) as s:
                if self.proxy_protocol:
                    s.sendall(self._probe_proxy_header(s))
                with ctx.wrap_socket(s) as t:
                    if t.recv(512).startswith(b"220"):
                        t.sendall(b"QUIT\r\n")
                        t.recv(512)
                        return True
                    return False
        except (OSError, ssl.SSLError):
            return False

    def stop(self):
        """Stop the master (SIGTERM, as `postfix stop` does) and wait for
        it and its process group to go; SIGKILL what is left after
        STOP_TIMEOUT.  Returns the problems found, [] when it stopped
        cleanly."""
        pid, self.master_pid = self.master_pid, None
        _live.discard(self)
        if pid is None:
            return []
        problems = []
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            problems.append(f"Postfix master {pid} was already gone")
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and (_alive(pid)
                                               or _group_members(pid)):
            time.sleep(0.05)
        left = _group_members(pid)
        if left:
            problems.append(f"Postfix processes {left} still running "
                            f"{STOP_TIMEOUT}s after SIGTERM; killed")
            _kill_group(pid)
        return problems

    def _force_stop(self):
        pid = self.master_pid or self._read_pid()
        self.master_pid = None
        _live.discard(self)
        if pid is not None:
            _kill_group(pid)

    def cleanup(self):
        """Remove ROOT, when this object made it."""
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- looking -----------------------------------------------------------

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, regex, timeout=30.0):
        """Wait for a log line matching regex; return the match."""
        pattern = re.compile(regex)
        return net.wait_until(lambda: pattern.search(self.log_text()),
                              timeout, interval=0.1,
                              what=f"/{regex}/ in {self.log_path}")

    def _files(self):
        new = os.path.join(self.inbox, "new")
        try:
            names = os.listdir(new)
        except FileNotFoundError:
            return []

        def order(name):
            # Maildir names: SECONDS.V<dev>I<inode>M<usec>.host
            m = re.match(r"(\d+)\..*?M(\d+)", name)
            return (int(m.group(1)), int(m.group(2)), name) if m else \
                (0, 0, name)
        return [os.path.join(new, n) for n in sorted(names, key=order)]

    def messages(self):
        """The delivered messages as bytes (LF line ends, as Postfix
        stores them), oldest first, each with the Return-Path,
        Delivered-To and Received headers Postfix put on top."""
        out = []
        for path in self._files():
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    def wait_messages(self, n=1, timeout=30.0):
        """Wait for n delivered messages; return messages()."""
        try:
            net.wait_until(lambda: len(self._files()) >= n, timeout,
                           interval=0.1,
                           what=f"{n} message(s) delivered by Postfix")
        except AssertionError as e:
            raise AssertionError(f"{e}; {len(self._files())} arrived; "
                                 f"the log ends:\n"
                                 f"{self.log_text()[-3000:]}") from None
        return self.messages()


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


@atexit.register
def _cleanup():
    for s in list(_live):
        s._force_stop()
