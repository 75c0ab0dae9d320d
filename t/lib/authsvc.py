"""An HTTP authentication service for auth_http, recording every request.

AuthService is http.server's ThreadingHTTPServer speaking HTTP/1.1 on a
loopback port (or a unix socket).  It keeps, for each request, the
exact head bytes, the headers in order (duplicates kept) and the TCP
connection it came on, so that tests can tell a kept-alive connection
from a new one.  What it answers comes from a programmable table:

    svc.default = ok("127.0.0.1", 2525)       # the answer when none else
    svc.queue(Answer(...), Answer(...))       # the next requests, in order
    svc.responder = lambda req: Answer(...)   # or decide per request

An Answer is a status line and headers (Content-Length: 0 added unless
told otherwise), optionally after a delay, or raw bytes (garbage), or a
close without any answer, or a half-close after the answer.  Every wait
is bounded; stop() closes whatever is still open.

Nginx runs Debian's nginx as a child process with its own prefix, as an
auth service itself or as the mail proxy to compare requests with.
"""

import http.server
import os
import re
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time

from . import net
from .backends import stop_process

# A kept-alive connection stays open on the service's side this long at
# most, far longer than any test, so that a client that leaves it open
# (a worker that does not close its idle connections) is seen as such.
IDLE_TIMEOUT = 120.0


class Answer:
    """One answer of the service.

    status      the status line after the version: "200 OK", "500 Oops"
    headers     [(name, value)], sent in order (duplicates allowed)
    version     "HTTP/1.1" or "HTTP/1.0"
    body        bytes after the head
    length      Content-Length: True for len(body), None for none, or an
                explicit value
    delay       seconds to wait before answering
    raw         bytes to send instead of a response built from the above
    drop        close the connection without answering
    close       close the connection after answering
    half_close  after answering, shut down the sending side and keep
                reading until the client closes
    """

    def __init__(self, status="200 OK", headers=(), *, version="HTTP/1.1",
                 body=b"", length=True, delay=0.0, raw=None, drop=False,
                 close=False, half_close=False):
        self.status = status
        self.headers = list(headers)
        self.version = version
        self.body = body
        self.length = length
        self.delay = delay
        self.raw = raw
        self.drop = drop
        self.close = close
        self.half_close = half_close

    def bytes(self):
        if self.raw is not None:
            return self.raw
        lines = [f"{self.version} {self.status}"]
        lines += [f"{n}: {v}" for n, v in self.headers]
        if self.length is True:
            lines.append(f"Content-Length: {len(self.body)}")
        elif self.length is not None:
            lines.append(f"Content-Length: {self.length}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + self.body

    def __repr__(self):
        if self.drop:
            return "Answer(drop)"
        return f"Answer({self.bytes()[:200]!r})"


def ok(server=None, port=None, headers=(), **kw):
    """Auth-Status: OK, with Auth-Server/Auth-Port when given."""
    h = [("Auth-Status", "OK")]
    if server is not None:
        h.append(("Auth-Server", server))
    if port is not None:
        h.append(("Auth-Port", str(port)))
    return Answer(headers=h + list(headers), **kw)


def ok_to(backend, **kw):
    """OK, routed to a lib.backends backend."""
    return ok(backend.host, backend.port, **kw)


def refuse(text="Invalid login or password", headers=(), **kw):
    return Answer(headers=[("Auth-Status", text)] + list(headers), **kw)


class Request:
    def __init__(self, index, conn, head, method, path, version, headers,
                 when):
        self.index = index          # 0, 1, ... over the service's life
        self.conn = conn            # the connection's number (see .peer)
        self.head = head            # the exact bytes up to the empty line
        self.method = method
        self.path = path
        self.version = version      # "HTTP/1.1"
        self.headers = headers      # [(name, value)] in order, raw values
        self.when = when            # time.monotonic() at arrival

    def header(self, name, default=None):
        """The value of a header (first occurrence), case-insensitively."""
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return default

    def all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self):
        return [n for n, _ in self.headers]

    def __repr__(self):
        return f"Request(#{self.index} conn {self.conn}: {self.head!r})"


class _Tee:
    """The handler's rfile, recording the bytes the parser reads."""

    def __init__(self, f):
        self.f = f
        self.seen = bytearray()

    def readline(self, size=-1):
        line = self.f.readline(size)
        self.seen += line
        return line

    def read(self, size=-1):
        data = self.f.read(size)
        self.seen += data
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT

    def setup(self):
        super().setup()
        self.svc = self.server.svc
        self.conn_id = self.svc._new_connection(self.connection,
                                                self.client_address)
        self.rfile = _Tee(self.rfile)

    def finish(self):
        try:
            super().finish()
        finally:
            self.svc._connection_closed(self.conn_id)

    def handle_one_request(self):
        self.rfile.seen.clear()
        super().handle_one_request()

    def do_GET(self):
        svc = self.svc
        head = bytes(self.rfile.seen)
        headers = parse_head(head)
        answer = svc._record_and_choose(self.conn_id, head, self.command,
                                        self.path, self.request_version,
                                        headers)
        if answer.delay and svc._stopping.wait(answer.delay):
            self.close_connection = True
            return
        if answer.drop:
            self.close_connection = True
            return
        self.wfile.write(answer.bytes())
        self.wfile.flush()
        if answer.half_close:
            self.connection.shutdown(socket.SHUT_WR)
            try:
                while self.connection.recv(4096):
                    pass
            except OSError:
                pass
            self.close_connection = True
        elif answer.close or self._client_closes(answer):
            self.close_connection = True

    def _client_closes(self, answer):
        """Whether the answer ends the connection by HTTP's rules (the
        client would not send another request on it)."""
        if answer.raw is not None:
            return True
        conn = ",".join(v for n, v in answer.headers
                        if n.lower() == "connection").lower()
        if "close" in conn:
            return True
        if answer.version == "HTTP/1.0" and "keep-alive" not in conn:
            return True
        return False

    def log_message(self, fmt, *args):
        pass


class _TCPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer.server_bind() looks the host name up; not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        pass                # a client that went away mid-answer


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        sock, _ = super().get_request()
        return sock, ("unix", 0)

    def handle_error(self, request, client_address):
        pass


def parse_head(head):
    """[(name, value)] of a request head, in order, duplicates kept; the
    value with the whitespace around it removed, bytes as latin-1 (so
    that value.encode("latin-1") gives back the bytes on the wire)."""
    out = []
    for line in head.split(b"\n")[1:]:
        line = line.rstrip(b"\r")
        if not line:
            break
        name, _, value = line.partition(b":")
        out.append((name.decode("latin-1"),
                    value.strip(b" \t").decode("latin-1")))
    return out


class AuthService:
    """See the module's docstring.  path: the URI in url (default /auth);
    unix: a socket path to listen on instead of a loopback port."""

    def __init__(self, host=net.IPV4, path="/auth", unix=None):
        self.host = host
        self.path = path
        self.unix = unix
        self.port = None if unix else net.free_port(host)
        self.default = ok()
        self.responder = None
        self.requests = []
        self.connections = []       # peer (host, port) of each, in order
        self._queue = []
        self._open = {}             # conn id -> socket, while open
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server = None

    # -- addresses ---------------------------------------------------------

    @property
    def url(self):
        if self.unix:
            return f"unix:{self.unix}:{self.path}"
        return f"http://{net.hostport(self.host, self.port)}{self.path}"

    @property
    def hostport(self):
        return net.hostport(self.host, self.port)

    # -- life ----------------------------------------------------------------

    def start(self):
        if self.unix:
            if os.path.exists(self.unix):
                os.unlink(self.unix)
            self._server = _UnixServer(self.unix, _Handler)
            os.chmod(self.unix, 0o777)
        else:
            cls = _TCP6Server if ":" in self.host else _TCPServer
            self._server = cls((self.host, self.port), _Handler)
        self._server.svc = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        if self._server is None:
            return
        self._server.shutdown()
        self._thread.join(10)
        self._server.server_close()
        self.close_connections()
        if self.unix and os.path.exists(self.unix):
            os.unlink(self.unix)

    def close_connections(self):
        """Close every open connection from the service's side."""
        with self._lock:
            socks = list(self._open.values())
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the table -----------------------------------------------------------

    def queue(self, *answers):
        with self._lock:
            self._queue.extend(answers)

    def _record_and_choose(self, conn, head, method, path, version, headers):
        with self._cond:
            req = Request(len(self.requests), conn, head, method, path,
                          version, headers, time.monotonic())
            self.requests.append(req)
            self._cond.notify_all()
            if self._queue:
                return self._queue.pop(0)
            responder = self.responder
        if responder is not None:
            answer = responder(req)
            if answer is not None:
                return answer
        return self.default

    def _new_connection(self, sock, peer):
        with self._cond:
            cid = len(self.connections)
            self.connections.append(peer)
            self._open[cid] = sock
            self._cond.notify_all()
            return cid

    def _connection_closed(self, cid):
        with self._cond:
            self._open.pop(cid, None)
            self._cond.notify_all()

    # -- looking -------------------------------------------------------------

    def open_connections(self):
        with self._lock:
            return sorted(self._open)

    def conns_of(self, requests=None):
        """The connection number of each request."""
        with self._lock:
            reqs = list(self.requests if requests is None else requests)
        return [r.conn for r in reqs]

    def wait_requests(self, n, timeout=30.0):
        with self._cond:
            ok_ = self._cond.wait_for(lambda: len(self.requests) >= n,
                                      timeout)
            assert ok_, (f"auth service got {len(self.requests)} "
                         f"request(s), expected {n} within {timeout}s")
            return list(self.requests)

    def wait_closed(self, timeout=30.0):
        """Wait until no connection to the service is open."""
        with self._cond:
            ok_ = self._cond.wait_for(lambda: not self._open, timeout)
            assert ok_, (f"connections {sorted(self._open)} to the auth "
                         f"service still open after {timeout}s")

    @property
    def last(self):
        with self._lock:
            return self.requests[-1] if self.requests else None


# --------------------------------------------------------------------------
# nginx


class Nginx:
    """nginx from Debian as a child process on loopback ports, with its
    own prefix, configuration, error log and pid file in a directory
    under /tmp: as an auth_http service (an http{} block) or, with
    mail_module=True, as the mail proxy whose requests smtpgate's are
    compared with.

    `body` is the configuration after the events{} block; @PORT@,
    @PORTxxx@ (free loopback ports, in .ports) and @DIR@ are filled in.
    """

    BIN = "/usr/sbin/nginx"
    MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
    START_TIMEOUT = 20.0

    def __init__(self, body, mail_module=False,
                 events="worker_connections 256;"):
        self.dir = tempfile.mkdtemp(prefix="smtpgate-nginx-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.ports = {}
        self.proc = None
        self.conf_path = os.path.join(self.dir, "nginx.conf")
        self.error_log_path = os.path.join(self.dir, "error.log")
        self.access_log_path = os.path.join(self.dir, "access.log")
        head = []
        if mail_module:
            head.append(f"load_module {self.MAIL_MODULE};")
        head += [f"error_log {self.error_log_path} info;",
                 f"pid {self.dir}/nginx.pid;",
                 "events { " + events + " }"]
        self.conf_text = self._render("\n".join(head) + "\n" + body)
        with open(self.conf_path, "w") as f:
            f.write(self.conf_text)

    def _render(self, text):
        def sub(m):
            key = m.group(1)
            if key == "DIR":
                return self.dir
            if key not in self.ports:
                self.ports[key] = net.free_port()
            return str(self.ports[key])
        return re.sub(r"@(PORT\w*|DIR)@", sub, text)

    @property
    def port(self):
        return self.ports["PORT"]

    def start(self):
        self._out = open(os.path.join(self.dir, "stderr"), "wb")
        self.proc = subprocess.Popen(
            [self.BIN, "-p", self.dir + "/", "-c", self.conf_path,
             "-e", self.error_log_path,
             "-g", "daemon off; master_process off;"],
            stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with "
                                     f"{self.proc.returncode}:\n"
                                     + self.describe())
            for port in self.ports.values():
                try:
                    net.connect(net.IPV4, port, 2).close()
                except OSError:
                    return False
            return True
        try:
            net.wait_until(listening, self.START_TIMEOUT,
                           what="nginx to listen")
        except BaseException:
            self.stop()
            raise
        return self

    def describe(self):
        out = [f"conf {self.conf_path}:", self.conf_text]
        for path in (self.error_log_path,
                     os.path.join(self.dir, "stderr")):
            try:
                with open(path, "rb") as f:
                    out.append(f"--- {path}:\n"
                               + f.read()[-3000:].decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def access_lines(self):
        try:
            with open(self.access_log_path) as f:
                # only whole lines: nginx may be in the middle of one
                return f.read().split("\n")[:-1]
        except OSError:
            return []

    def wait_access_lines(self, n, timeout=10.0):
        """nginx writes an access log line when a request ends."""
        return net.wait_until(
            lambda: (lambda l: l if len(l) >= n else None)(
                self.access_lines()),
            timeout, what=f"{n} lines in nginx's access log")

    def check(self):
        """`nginx -t` of this configuration: the CompletedProcess."""
        return subprocess.run(
            [self.BIN, "-t", "-p", self.dir + "/", "-c", self.conf_path,
             "-e", self.error_log_path, "-g", "daemon off;"],
            capture_output=True, text=True, timeout=60)

    def stop(self):
        stop_process(self.proc)
        if self.proc is not None:
            self._out.close()
        shutil.rmtree(self.dir, ignore_errors=True)
