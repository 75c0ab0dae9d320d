"""Backend SMTP servers that smtpgate relays to, each recording what it got.

- AiosmtpdBackend: aiosmtpd in a thread; records every envelope with the
  raw content bytes, the EHLO names and XCLIENT lines it saw.  With
  xclient=True it advertises XCLIENT and answers it the way Postfix does
  (a fresh 220 greeting, after which the client must EHLO again).
- SinkBackend: Postfix's smtp-sink writing each message to a file.
- ScriptedBackend: a raw socket server that misbehaves on purpose.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from . import net

SMTP_SINK = "/usr/sbin/smtp-sink"


class Message:
    def __init__(self, mail_from, rcpt_tos, content, helo=None,
                 peer=None, xclient=None):
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.content = content      # bytes, as received after un-stuffing
        self.helo = helo
        self.peer = peer
        self.xclient = xclient

    def __repr__(self):
        return (f"Message(from={self.mail_from!r}, to={self.rcpt_tos!r}, "
                f"{len(self.content)} bytes)")


# --------------------------------------------------------------------------
# aiosmtpd


class _RecordingHandler:
    def __init__(self, backend):
        self.backend = backend

    async def handle_EHLO(self, server, session, envelope, hostname,
                          responses):
        session.host_name = hostname
        self.backend._record("EHLO", hostname)
        if self.backend.xclient:
            responses.insert(-1, "250-XCLIENT ADDR NAME HELO PROTO LOGIN")
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        self.backend._record("HELO", hostname)
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.backend._record("MAIL", address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.backend._record("RCPT", address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content
        if content is None:
            content = envelope.content
        msg = Message(envelope.mail_from, list(envelope.rcpt_tos),
                      bytes(content), helo=session.host_name,
                      peer=session.peer,
                      xclient=getattr(session, "xclient", None))
        self.backend._deliver(msg)
        return "250 2.0.0 Message accepted by backend"


class _XclientSMTP(SMTP):
    """aiosmtpd's SMTP with a Postfix-like XCLIENT command."""

    async def smtp_XCLIENT(self, arg):
        backend = self.event_handler.backend
        backend._record("XCLIENT", arg)
        if not backend.xclient:
            await self.push('500 Error: command "XCLIENT" not recognized')
            return
        self.session.xclient = arg
        self.session.host_name = None
        self.session.extended_smtp = False
        self._set_rset_state()
        await self.push(f"220 {self.hostname} ESMTP backend after XCLIENT")


class _Controller(Controller):
    def factory(self):
        return _XclientSMTP(self.handler, **self.SMTP_kwargs)


class AiosmtpdBackend:
    name = "aiosmtpd"

    def __init__(self, host=net.IPV4, xclient=False, hostname="backend.test"):
        self.host = host
        self.xclient = xclient
        self.port = net.free_port(host)
        self.messages = []
        self.commands = []          # ("EHLO", "name"), ("XCLIENT", "..."), ...
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ctl = _Controller(
            _RecordingHandler(self), hostname=host, port=self.port,
            decode_data=False, ready_timeout=30.0, server_hostname=hostname,
            data_size_limit=64 * 1024 * 1024, timeout=120)

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    def start(self):
        self._ctl.start()
        # The controller's own start-up probe is a session too; forget it.
        with self._lock:
            self.commands.clear()
        return self

    def stop(self):
        self._ctl.stop()

    def _record(self, verb, arg):
        with self._cond:
            self.commands.append((verb, arg))
            self._cond.notify_all()

    def _deliver(self, msg):
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def seen(self, verb):
        with self._lock:
            return [a for v, a in self.commands if v == verb]

    def wait_messages(self, n=1, timeout=60.0):
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            assert ok, (f"backend got {len(self.messages)} message(s), "
                        f"expected {n} within {timeout}s")
            return list(self.messages)

    def wait_command(self, verb, timeout=30.0):
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(v == verb for v, _ in self.commands), timeout)
            assert ok, f"backend never saw {verb}; saw {self.commands!r}"
            return [a for v, a in self.commands if v == verb]


# --------------------------------------------------------------------------
# Postfix smtp-sink


class SinkBackend:
    """smtp-sink -d: one file per message, LF line endings, dot-unstuffed,
    headed by X-* records and a three-line Received header, followed by
    one empty line."""

    name = "smtp-sink"

    def __init__(self, host=net.IPV4, hostname="sink.test"):
        self.host = host
        self.port = net.free_port(host)
        self.hostname = hostname
        self.proc = None
        # smtp-sink drops privileges before writing; pytest's tmp_path is
        # not reachable for nobody, so the dump directory lives in /tmp.
        self.dir = tempfile.mkdtemp(prefix="smtpgate-sink-", dir="/tmp")
        os.chmod(self.dir, 0o777)
        self.log_path = os.path.join(self.dir, "sink.log")

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    def start(self):
        args = [SMTP_SINK]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += ["-h", self.hostname, "-t", "120",
                 "-d", os.path.join(self.dir, "msg."),
                 net.hostport(self.host, self.port), "100"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"smtp-sink exited: {self.output()}")
            try:
                with net.connect(self.host, self.port, 5) as s:
                    return s.recv(100).startswith(b"220")
            except OSError:
                return False

        net.wait_until(ready, 30, what="smtp-sink to listen")
        return self

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _files(self):
        return sorted(f for f in os.listdir(self.dir) if f.startswith("msg."))

    @staticmethod
    def parse(data):
        lines = data.split(b"\n")
        fields = {}
        for i, line in enumerate(lines):
            if line.startswith(b"Received: "):
                body = b"\n".join(lines[i + 3:])
                break
            key, _, value = line.partition(b": ")
            fields.setdefault(key.decode(), []).append(value.decode())
        else:
            raise AssertionError(f"no Received header in dump: {data[:500]!r}")
        assert body.endswith(b"\n"), "dump does not end in an empty line"
        body = body[:-1]
        return Message(
            mail_from=fields.get("X-Mail-Args", [""])[0],
            rcpt_tos=fields.get("X-Rcpt-Args", []),
            content=body,
            helo=fields.get("X-Helo-Args", [None])[0],
            peer=fields.get("X-Client-Addr", [None])[0])

    def wait_messages(self, n=1, timeout=60.0):
        """Wait for n complete dump files and return them parsed, oldest
        first.  A file is complete once its size stops changing."""
        sizes = {}

        def complete():
            files = self._files()
            if len(files) < n:
                return False
            now = {f: os.path.getsize(os.path.join(self.dir, f)) for f in files}
            stable = now == sizes and all(v > 0 for v in now.values())
            sizes.clear()
            sizes.update(now)
            return stable

        net.wait_until(complete, timeout, interval=0.2,
                       what=f"{n} message(s) in smtp-sink")
        paths = [os.path.join(self.dir, f) for f in self._files()]
        paths.sort(key=os.path.getmtime)
        out = []
        for p in paths:
            with open(p, "rb") as f:
                out.append(self.parse(f.read()))
        return out


# --------------------------------------------------------------------------
# misbehaving backends


class ScriptedBackend:
    """Accepts connections and runs one behaviour on each.

    Behaviours:
      silent            accept, never send anything (held open until stop)
      greet_close       send a 220 greeting, then close
      garbage           send a line that is not an SMTP reply, then wait
      close_after_mail  a plain ESMTP server that closes when MAIL arrives
      refuse_greeting   send "554 go away", then wait
      fragmented        a working ESMTP server whose multi-line greeting
                        and 60-line EHLO reply trickle out a few bytes at a
                        time; it records each message in .messages
      ehlo_garbage      greets, then answers EHLO with a non-reply
    """

    def __init__(self, behaviour, host=net.IPV4):
        self.behaviour = behaviour
        self.host = host
        self.port = net.free_port(host)
        self.received = []          # bytes read on each connection
        self.messages = []          # (fragmented) message bodies
        self.connections = 0
        self._stop = threading.Event()
        self._threads = []
        self._socks = []
        self._lock = threading.Lock()

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    def start(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, self.port))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(conn)
                idx = len(self.received)
                self.received.append(b"")
            conn.settimeout(0.2)
            t = threading.Thread(target=self._serve, args=(conn, idx),
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _readline(self, conn, idx):
        data = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(1)
            except socket.timeout:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
            with self._lock:
                self.received[idx] += chunk
            if chunk == b"\n":
                return data
        return None

    def _hold(self, conn, idx):
        while self._readline(conn, idx) is not None:
            pass

    def _serve(self, conn, idx):
        try:
            getattr(self, "_do_" + self.behaviour)(conn, idx)
        except OSError:
            pass
        finally:
            if self.behaviour != "silent" or self._stop.is_set():
                try:
                    conn.close()
                except OSError:
                    pass

    def _do_silent(self, conn, idx):
        self._hold(conn, idx)

    def _do_greet_close(self, conn, idx):
        conn.sendall(b"220 scripted.test ESMTP\r\n")

    def _do_garbage(self, conn, idx):
        conn.sendall(b"HELLO this is not smtp\r\n\x00\xff\r\n")
        self._hold(conn, idx)

    def _do_refuse_greeting(self, conn, idx):
        conn.sendall(b"554 5.3.2 scripted.test go away\r\n")
        self._hold(conn, idx)

    def _trickle(self, conn, data):
        for i in range(0, len(data), 3):
            conn.sendall(data[i:i + 3])
            time.sleep(0.002)

    def _do_ehlo_garbage(self, conn, idx):
        conn.sendall(b"220 scripted.test ESMTP\r\n")
        if self._readline(conn, idx) is not None:
            conn.sendall(b"this is not a reply\r\n")
            self._hold(conn, idx)

    def _do_fragmented(self, conn, idx):
        self._trickle(conn, b"220-scripted.test ESMTP\r\n"
                            b"220-a multi-line greeting\r\n"
                            b"220 that arrives in pieces\r\n")
        caps = [b"250-scripted.test"] + [b"250-X-CAP%02d" % i
                                         for i in range(58)]
        caps.append(b"250 PIPELINING")
        while True:
            line = self._readline(conn, idx)
            if line is None:
                return
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb in (b"EHLO", b"LHLO"):
                self._trickle(conn, b"\r\n".join(caps) + b"\r\n")
            elif verb == b"DATA":
                self._trickle(conn, b"354 go ahead\r\n")
                body = b""
                while True:
                    l = self._readline(conn, idx)
                    if l is None:
                        return
                    if l == b".\r\n":
                        break
                    body += l[1:] if l.startswith(b".") else l
                with self._lock:
                    self.messages.append(body)
                self._trickle(conn, b"250 2.0.0 fragmented backend took it\r\n")
            elif verb == b"QUIT":
                self._trickle(conn, b"221 2.0.0 Bye\r\n")
                return
            else:
                self._trickle(conn, b"250 2.0.0 OK\r\n")

    def _do_close_after_mail(self, conn, idx):
        conn.sendall(b"220 scripted.test ESMTP\r\n")
        while True:
            line = self._readline(conn, idx)
            if line is None:
                return
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                conn.sendall(b"250-scripted.test\r\n250-PIPELINING\r\n"
                             b"250 8BITMIME\r\n")
            elif verb == b"HELO":
                conn.sendall(b"250 scripted.test\r\n")
            elif verb == b"MAIL":
                conn.shutdown(socket.SHUT_RDWR)
                return
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                conn.sendall(b"250 2.0.0 OK\r\n")
