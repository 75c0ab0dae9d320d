"""Backend SMTP servers that smtpgate relays to, each recording what it got.

- AiosmtpdBackend: aiosmtpd in a thread; records every envelope with the
  raw content bytes, the EHLO names and XCLIENT lines it saw, and every
  connection (peer, PROXY header, TLS version and SNI name, AUTH).  It can
  be made to speak TLS (STARTTLS or implicit), require AUTH, take a PROXY
  protocol header, change its EHLO keywords, refuse at the greeting or at
  EHLO, answer slowly, and die and come back on the same port.  With
  xclient=True it advertises XCLIENT and answers it the way Postfix does
  (a fresh 220 greeting, after which the client must EHLO again).
- SinkBackend: Postfix's smtp-sink writing each message to a file, with
  its switches for ESMTP features, rejections and delays.
- ScriptedBackend: a raw socket server that misbehaves on purpose.

A real Postfix is in lib/postfix.py.
"""

import asyncio
import collections
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Session

from . import net

SMTP_SINK = "/usr/sbin/smtp-sink"


def stop_process(proc, timeout=10):
    """SIGTERM a child process, SIGKILL it if it lingers, reap it."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Message:
    """One message a backend took.  tls is the TLS version ("TLSv1.3")
    or None, sni the name the client sent in TLS, login the user it
    authenticated as, proxy the PROXY header of its connection (aiosmtpd
    ProxyData), conn the Connection it came on."""

    def __init__(self, mail_from, rcpt_tos, content, helo=None,
                 peer=None, xclient=None, *, mail_options=(), tls=None,
                 sni=None, login=None, proxy=None, conn=None):
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.content = content      # bytes, as received after un-stuffing
        self.helo = helo
        self.peer = peer
        self.xclient = xclient
        self.mail_options = list(mail_options)
        self.tls = tls
        self.sni = sni
        self.login = login
        self.proxy = proxy
        self.conn = conn

    def __repr__(self):
        return (f"Message(from={self.mail_from!r}, to={self.rcpt_tos!r}, "
                f"{len(self.content)} bytes)")


# --------------------------------------------------------------------------
# aiosmtpd


AuthAttempt = collections.namedtuple("AuthAttempt",
                                     "mechanism user success")


class Connection:
    """One TCP connection an AiosmtpdBackend accepted, in accept order.

    peer            (address, port, ...) as the socket saw it
    proxy           the PROXY header (aiosmtpd ProxyData: version,
                    src_addr, src_port, dst_addr, dst_port, valid, error,
                    whole_raw) with proxy_protocol=True, else None
    tls             TLS version once TLS runs ("TLSv1.3"), else None
    tls_mode        "starttls" or "implicit" once TLS runs
    cipher          the cipher name
    sni             the server name the client sent, None if none
    client_cert     the client certificate (getpeercert()), if one was
                    asked for (client_ca) and sent
    auth            AuthAttempt(mechanism, user, success) per AUTH
    login           the user of the successful AUTH, if any
    commands        (verb, argument) as in AiosmtpdBackend.commands
    messages        how many messages it delivered
    open            False once closed
    """

    def __init__(self, index, peer):
        self.index = index
        self.peer = peer
        self.proxy = None
        self.tls = None
        self.tls_mode = None
        self.cipher = None
        self.sni = None
        self.client_cert = None
        self.auth = []
        self.login = None
        self.commands = []
        self.messages = 0
        self.open = True

    def __repr__(self):
        return (f"Connection(#{self.index} from {self.peer!r}, "
                f"tls={self.tls}, login={self.login!r}, "
                f"{self.messages} message(s), "
                f"{'open' if self.open else 'closed'})")


class _RecordingHandler:
    """aiosmtpd's handler hooks.  No attribute may start with auth_:
    aiosmtpd would take it for an AUTH mechanism."""

    def __init__(self, backend):
        self.backend = backend

    async def handle_PROXY(self, server, session, envelope, proxy_data):
        server.conn.proxy = proxy_data
        return True

    async def handle_EHLO(self, server, session, envelope, hostname,
                          responses):
        b = self.backend
        await b._delay("EHLO")
        b._record("EHLO", hostname, server.conn)
        if b.ehlo_code is not None:
            return [b._refusal(b.ehlo_code, "EHLO")]
        session.host_name = hostname
        return b._ehlo_reply(responses)

    async def handle_HELO(self, server, session, envelope, hostname):
        b = self.backend
        await b._delay("HELO")
        b._record("HELO", hostname, server.conn)
        if b.helo_code is not None:
            return b._refusal(b.helo_code, "HELO")
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server, session, envelope, address, options):
        b = self.backend
        await b._delay("MAIL")
        b._record("MAIL", address, server.conn)
        if "MAIL" in b.replies:
            return b.replies["MAIL"]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        b = self.backend
        await b._delay("RCPT")
        b._record("RCPT", address, server.conn)
        if "RCPT" in b.replies:
            return b.replies["RCPT"]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        b = self.backend
        await b._delay("DATA")
        if "DATA" in b.replies:
            return b.replies["DATA"]
        content = envelope.original_content
        if content is None:
            content = envelope.content
        conn = server.conn
        msg = Message(envelope.mail_from, list(envelope.rcpt_tos),
                      bytes(content), helo=session.host_name,
                      peer=session.peer,
                      xclient=getattr(session, "xclient", None),
                      mail_options=envelope.mail_options,
                      tls=conn.tls, sni=conn.sni,
                      login=session.auth_data if session.authenticated
                      else None,
                      proxy=conn.proxy, conn=conn)
        b._deliver(msg)
        return "250 2.0.0 Message accepted by backend"

    async def handle_QUIT(self, server, session, envelope):
        self.backend._record("QUIT", "", server.conn)
        return "221 2.0.0 backend says bye"


class _Session(Session):
    """aiosmtpd's Session without the log line its login_data setter
    writes on every successful AUTH."""

    @property
    def login_data(self):
        return self._login_data

    @login_data.setter
    def login_data(self, value):
        self._login_data = value


BDAT_ARG = re.compile(r"^(\d{1,9})(?: +(LAST))? *$", re.I)


class _BackendSMTP(SMTP):
    """aiosmtpd's SMTP with a Postfix-like XCLIENT command, BDAT, a
    greeting that may refuse, and the bookkeeping of each connection."""

    def __init__(self, backend, handler, **kw):
        super().__init__(handler, **kw)
        self.backend = backend
        self.conn = None
        self._greeted = False
        self._chunks = None
        if backend.auth is not None:
            # Set here, not as auth_required=True: aiosmtpd warns about
            # AUTH without TLS, which is what the tests want by default.
            self._auth_required = True

    # -- the connection ----------------------------------------------------

    def _create_session(self):
        return _Session(self.loop)

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.conn is None:
            self.conn = self.backend._opened(self, transport)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and self.conn.tls is None:
            c = self.conn
            c.tls = sslobj.version()
            c.tls_mode = ("starttls" if self._original_transport is not None
                          else "implicit")
            c.cipher = (sslobj.cipher() or (None,))[0]
            c.sni = getattr(sslobj, "backend_sni", None)
            c.client_cert = sslobj.getpeercert() or None

    def connection_lost(self, error):
        if self.conn is not None and self.conn.open:
            if self.conn.proxy is None and self.session is not None:
                self.conn.proxy = self.session.proxy_data
            self.backend._closed(self)
        super().connection_lost(error)

    async def push(self, status):
        if not self._greeted:
            self._greeted = True
            b = self.backend
            await b._delay("CONNECT")
            if b.greeting_code != 220:
                await super().push(b._refusal(b.greeting_code, "greeting"))
                if b.greeting_code == 421:
                    self.transport.close()
                else:
                    # RFC 5321 3.1: after a 554 greeting only QUIT works.
                    self._smtp_methods = {
                        k: (v if k == "QUIT" else self._no_service)
                        for k, v in self._smtp_methods.items()}
                return
        await super().push(status)

    def _set_post_data_state(self):
        super()._set_post_data_state()
        self._chunks = None

    async def _no_service(self, arg):
        await self.push("503 5.5.1 Error: no SMTP service here")

    # -- commands ----------------------------------------------------------

    async def smtp_XCLIENT(self, arg):
        backend = self.backend
        await backend._delay("XCLIENT")
        backend._record("XCLIENT", arg, self.conn)
        if not backend.xclient:
            await self.push('500 Error: command "XCLIENT" not recognized')
            return
        self.session.xclient = arg
        self.session.host_name = None
        self.session.extended_smtp = False
        self._set_rset_state()
        await self.push(f"220 {self.hostname} ESMTP backend after XCLIENT")

    async def smtp_STARTTLS(self, arg):
        self.backend._record("STARTTLS", arg or "", self.conn)
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg):
        b = self.backend
        b._record("AUTH", (arg or "").split(" ")[0], self.conn)
        if b.auth is None:
            await self.push("503 5.5.1 Error: authentication not enabled")
            return
        await super().smtp_AUTH(arg)

    async def smtp_BDAT(self, arg):
        b = self.backend
        m = BDAT_ARG.match(arg or "")
        if not b.chunking or not m:
            if not b.chunking:
                await self.push('500 Error: command "BDAT" not recognized')
            else:
                await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            return
        size, last = int(m.group(1)), bool(m.group(2))
        chunk = await self._reader.readexactly(size)
        b._record("BDAT", arg, self.conn)
        if (not self.session.host_name or self.envelope.mail_from is None
                or not self.envelope.rcpt_tos
                or (self._auth_required and not self.session.authenticated)):
            self._chunks = None
            await self.push("503 5.5.1 Error: need MAIL and RCPT before BDAT")
            return
        self._chunks = (self._chunks or b"") + chunk
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        self.envelope.content = self.envelope.original_content = self._chunks
        self._chunks = None
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


class _Controller(Controller):
    def __init__(self, backend, *args, **kw):
        super().__init__(*args, **kw)
        self.backend = backend

    def factory(self):
        return _BackendSMTP(self.backend, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self):
        """aiosmtpd's start-up probe, made known to the backend so that
        its connection is neither recorded nor counted: it comes from a
        port the backend is told about before it connects."""
        b = self.backend
        family = socket.AF_INET6 if ":" in b.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((b.host, 0))
            with b._lock:
                b._probe_ports.add(s.getsockname()[1])
                b._probe_seen.clear()
            s.settimeout(5.0)
            s.connect((b.host, b.port))
            if self.ssl_context:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s = ctx.wrap_socket(s)
            b._probe_seen.wait(5.0)
            s.close()


TLS_MODES = (None, "starttls", "implicit")
AUTH_MECHANISMS = ("LOGIN", "PLAIN")


class AiosmtpdBackend:
    """aiosmtpd on host:port (a free port unless given).

    Keywords, all optional:

    xclient=True        advertise and answer XCLIENT like Postfix
    hostname            the name in the greeting and EHLO reply
    tls="starttls"      offer STARTTLS (require_starttls=True: 530 for
                        anything else first); tls="implicit": TLS from the
                        first byte.  The certificate is `cert` from `pki`
                        (default: backend.test, also valid for 127.0.0.1
                        and ::1, from lib.pki.shared()); tls_context
                        replaces the whole server context; client_ca asks
                        for an optional client certificate signed by that
                        CA file; tls_min_version/tls_max_version are
                        ssl.TLSVersion values.  Each Connection and
                        Message records the TLS version and the SNI name.
    auth={user: pass}   offer AUTH (auth_mechanisms, default LOGIN and
                        PLAIN) and answer MAIL/RCPT/DATA with 530 5.7.0
                        until it succeeded; auth_require_tls=True offers
                        it only after TLS.  Every attempt lands in
                        .auth_attempts and on its Connection.  Without
                        auth, AUTH is not offered and gets 503.
    ehlo_drop=(...)     EHLO keywords to leave out (e.g. "SMTPUTF8",
                        "8BITMIME", "SIZE", "STARTTLS"); the commands
                        still work, only the advertisement goes
    ehlo_add=(...)      lines to add to the EHLO reply (e.g. "DSN",
                        "SIZE 1000"); "CHUNKING" also makes BDAT work
    greeting_code=421   greet with 421 and close; another code (554)
                        greets with it and answers 503 to all but QUIT
    ehlo_code=554       answer EHLO with this code (HELO still works
                        unless helo_code is set too)
    replies={"MAIL": "451 4.3.0 busy"}
                        answer MAIL, RCPT or DATA (end of data) with this
                        line instead of accepting
    proxy_protocol=True expect a PROXY protocol header (v1 or v2) first;
                        each Connection's .proxy holds what came.  A
                        connection with a missing or bad header is closed
                        without a greeting.  Not with tls="implicit"
                        (aiosmtpd would want the header inside TLS).
    delays={"DATA": 0.5}, data_delay=0.5
                        seconds to wait before answering CONNECT (the
                        greeting), EHLO, HELO, XCLIENT, MAIL, RCPT or
                        DATA (the end of data)

    Counting: .connections (accepted so far), .open_connections,
    .max_open (the most open at once), .sessions (the Connection list).

    stop() closes every open connection and the listener; start() again
    listens on the same port (asyncio sets SO_REUSEADDR), keeping what
    was recorded, so a test can kill a backend and bring it back.
    """

    name = "aiosmtpd"

    def __init__(self, host=net.IPV4, xclient=False, hostname="backend.test",
                 *, port=None, tls=None, require_starttls=False, pki=None,
                 cert=None, tls_context=None, client_ca=None,
                 tls_min_version=None, tls_max_version=None,
                 auth=None, auth_mechanisms=AUTH_MECHANISMS,
                 auth_require_tls=False, ehlo_drop=(), ehlo_add=(),
                 greeting_code=220, ehlo_code=None, helo_code=None,
                 replies=None, proxy_protocol=False,
                 proxy_protocol_timeout=10.0, delays=None, data_delay=None,
                 data_size_limit=64 * 1024 * 1024, timeout=120):
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
        if proxy_protocol and tls == "implicit":
            raise ValueError("proxy_protocol with tls='implicit' is not "
                             "supported: aiosmtpd reads the header inside "
                             "TLS")
        bad = set(m.upper() for m in auth_mechanisms) - set(AUTH_MECHANISMS)
        if bad:
            raise ValueError(f"unsupported AUTH mechanism(s) {sorted(bad)}")
        self.host = host
        self.xclient = xclient
        self.hostname = hostname
        self.port = port or net.free_port(host)
        self.tls = tls
        self.auth = dict(auth) if auth is not None else None
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.ehlo_drop = {k.upper() for k in ehlo_drop}
        self.ehlo_add = list(ehlo_add)
        self.chunking = any(a.split()[0].upper() == "CHUNKING"
                            for a in ehlo_add)
        self.greeting_code = int(greeting_code)
        self.ehlo_code = ehlo_code
        self.helo_code = helo_code
        self.replies = {k.upper(): v for k, v in (replies or {}).items()}
        self.proxy_protocol = proxy_protocol
        self.delays = {k.upper(): v for k, v in (delays or {}).items()}
        if data_delay is not None:
            self.delays["DATA"] = data_delay

        self.messages = []
        self.commands = []          # ("EHLO", "name"), ("XCLIENT", "..."),
        #                             ..., ("QUIT", "")
        self.sessions = []          # Connection, in accept order
        self.auth_attempts = []     # AuthAttempt
        self.open_connections = 0
        self.max_open = 0
        self.starts = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._live = set()          # _BackendSMTP with an open connection
        self._probe_ports = set()
        self._probe_seen = threading.Event()

        ssl_ctx = None
        if tls is not None:
            ssl_ctx = tls_context or self._tls_context(
                pki, cert, client_ca, tls_min_version, tls_max_version)
        smtp_kw = dict(
            hostname=host, port=self.port, decode_data=False,
            ready_timeout=30.0, server_hostname=hostname,
            data_size_limit=data_size_limit, timeout=timeout)
        if tls == "implicit":
            smtp_kw["ssl_context"] = ssl_ctx
        elif tls == "starttls":
            smtp_kw["tls_context"] = ssl_ctx
            smtp_kw["require_starttls"] = require_starttls
        if self.auth is not None:
            smtp_kw["authenticator"] = self._authenticate
            smtp_kw["auth_require_tls"] = auth_require_tls
            smtp_kw["auth_exclude_mechanism"] = [
                m for m in AUTH_MECHANISMS if m not in self.auth_mechanisms]
        if proxy_protocol:
            smtp_kw["proxy_protocol_timeout"] = proxy_protocol_timeout
        self._smtp_kw = smtp_kw
        self._ctl = None

    @staticmethod
    def _tls_context(pki, cert, client_ca, min_version, max_version):
        if pki is None:
            from . import pki as pkilib
            pki = pkilib.shared()
        if cert is None:
            cert = pki.backend_cert()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.cert(cert), pki.key(cert))
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(client_ca)

        def sni(sslobj, server_name, context):
            sslobj.backend_sni = server_name
        ctx.sni_callback = sni
        return ctx

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    @property
    def running(self):
        return self._ctl is not None

    @property
    def connections(self):
        """How many connections it accepted (the start-up probe aside)."""
        with self._lock:
            return len(self.sessions)

    def start(self):
        """Listen (again) on self.port."""
        if self._ctl is not None:
            raise AssertionError(f"backend {self.address} already running")
        self._ctl = _Controller(self, _RecordingHandler(self),
                                **self._smtp_kw)
        try:
            self._ctl.start()
        except BaseException:
            self._ctl = None
            raise
        self.starts += 1
        return self

    def stop(self):
        """Close every open connection and the listener.  Does nothing
        when it is not running."""
        ctl, self._ctl = self._ctl, None
        if ctl is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(
                self._abort_all(), ctl.loop).result(10)
        except Exception:
            pass                # the loop is going away regardless
        ctl.stop()
        with self._cond:
            for c in self.sessions:
                c.open = False
            self._live.clear()
            self.open_connections = 0
            self._cond.notify_all()

    async def _abort_all(self):
        for proto in list(self._live):
            for t in (proto.transport, proto._original_transport):
                if t is not None:
                    t.abort()
        # Let the connection_lost callbacks run.
        for _ in range(3):
            await asyncio.sleep(0)

    # -- bookkeeping (called in the server thread) --------------------------

    def _opened(self, proto, transport):
        peer = transport.get_extra_info("peername")
        with self._cond:
            conn = Connection(len(self.sessions), peer)
            if peer and peer[1] in self._probe_ports:
                self._probe_ports.discard(peer[1])
                conn.index = None
                conn.open = False
                self._probe_seen.set()
                return conn
            self.sessions.append(conn)
            self._live.add(proto)
            self.open_connections += 1
            self.max_open = max(self.max_open, self.open_connections)
            self._cond.notify_all()
            return conn

    def _closed(self, proto):
        with self._cond:
            if proto in self._live:
                self._live.discard(proto)
                self.open_connections -= 1
            proto.conn.open = False
            self._cond.notify_all()

    async def _delay(self, what):
        seconds = self.delays.get(what)
        if seconds:
            await asyncio.sleep(seconds)

    def _refusal(self, code, where):
        texts = {"greeting": "Service not available",
                 "EHLO": "EHLO refused", "HELO": "HELO refused"}
        enhanced = "4.3.2" if 400 <= code < 500 else "5.3.2"
        return f"{code} {enhanced} {self.hostname} {texts[where]}"

    def _ehlo_reply(self, responses):
        """aiosmtpd's EHLO lines with AUTH (when no auth is configured)
        and the ehlo_drop keywords taken out, XCLIENT and ehlo_add put in
        before HELP, and the 250-/250 prefixes set again."""
        lines = [r[4:] for r in responses]
        first, rest = lines[0], lines[1:]
        drop = set(self.ehlo_drop)
        if self.auth is None:
            drop.add("AUTH")
        rest = [l for l in rest if l.split(" ")[0].upper() not in drop]
        tail = [l for l in rest if l.upper() == "HELP"]
        rest = [l for l in rest if l.upper() != "HELP"]
        if self.xclient:
            rest.append("XCLIENT ADDR NAME HELO PROTO LOGIN")
        rest += self.ehlo_add + tail
        lines = [first] + rest
        return [f"250-{l}" for l in lines[:-1]] + [f"250 {lines[-1]}"]

    def _authenticate(self, server, session, envelope, mechanism, data):
        user = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        ok = self.auth.get(user) == password
        attempt = AuthAttempt(mechanism, user, ok)
        with self._cond:
            self.auth_attempts.append(attempt)
            server.conn.auth.append(attempt)
            if ok:
                server.conn.login = user
            self._cond.notify_all()
        if ok:
            return AuthResult(success=True, auth_data=user)
        # handled=False: aiosmtpd answers 535 5.7.8 itself.
        return AuthResult(success=False, handled=False)

    def _record(self, verb, arg, conn=None):
        with self._cond:
            self.commands.append((verb, arg))
            if conn is not None:
                conn.commands.append((verb, arg))
            self._cond.notify_all()

    def _deliver(self, msg):
        with self._cond:
            self.messages.append(msg)
            if msg.conn is not None:
                msg.conn.messages += 1
            self._cond.notify_all()

    # -- looking -----------------------------------------------------------

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

    def wait_connections(self, n=1, timeout=30.0):
        """Wait until it accepted at least n connections; return them."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.sessions) >= n, timeout)
            assert ok, (f"backend accepted {len(self.sessions)} "
                        f"connection(s), expected {n} within {timeout}s")
            return list(self.sessions)

    def wait_open(self, n, timeout=30.0):
        """Wait until exactly n connections are open."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.open_connections == n,
                                     timeout)
            assert ok, (f"backend has {self.open_connections} open "
                        f"connection(s), expected {n} within {timeout}s")


# --------------------------------------------------------------------------
# Postfix smtp-sink


SINK_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")
COUNTER_NAMES = ("sess", "quit", "mesg")


class SinkBackend:
    """smtp-sink -d: one file per message, LF line endings, dot-unstuffed,
    headed by X-* records and a three-line Received header, followed by
    one empty line.

    The switches map to smtp-sink's options: esmtp=False (-e),
    pipelining=False (-p), eightbitmime=False (-8), dsn=False (-N),
    enhancedstatuscodes=False (-E), auth=False (-a), xclient=False (-C),
    xforward=False (-F); reject=("MAIL",) answers those commands with a
    5xx (-f), soft_reject=(...) with a 4xx (-r), disconnect=(...) closes
    without a reply (-q), disconnect_421=(...) replies 421 and closes
    (-Q) -- a command list may name CONNECT, HELO, EHLO, MAIL, RCPT, DATA,
    "." (end of data), RSET, NOOP, QUIT; data_delay waits before
    answering DATA (-w), delays={"RCPT": 1} before answering a command
    (-W); args adds raw options.  smtp-sink offers neither CHUNKING nor
    SMTPUTF8.

    counters() reads smtp-sink's running counters (-c): sessions ended,
    QUITs, messages; .sessions is the first.  kill() ends it with SIGKILL
    the way a crash would and restart() brings it back on the same port
    (smtp-sink sets SO_REUSEADDR); the counters go on from where they
    were."""

    name = "smtp-sink"

    def __init__(self, host=net.IPV4, hostname="sink.test", *, port=None,
                 esmtp=True, pipelining=True, eightbitmime=True, dsn=True,
                 enhancedstatuscodes=True, auth=True, xclient=True,
                 xforward=True, reject=(), soft_reject=(), disconnect=(),
                 disconnect_421=(), data_delay=None, delays=None, args=()):
        self.host = host
        self.port = port or net.free_port(host)
        self.hostname = hostname
        self.proc = None
        self._log = None
        self._acc = dict.fromkeys(COUNTER_NAMES, 0)
        self._snap = dict.fromkeys(COUNTER_NAMES, 0)
        self._log_offset = 0
        self.options = self._options(
            esmtp=esmtp, pipelining=pipelining, eightbitmime=eightbitmime,
            dsn=dsn, enhancedstatuscodes=enhancedstatuscodes, auth=auth,
            xclient=xclient, xforward=xforward, reject=reject,
            soft_reject=soft_reject, disconnect=disconnect,
            disconnect_421=disconnect_421, data_delay=data_delay,
            delays=delays) + list(args)
        # smtp-sink drops privileges before writing; pytest's tmp_path is
        # not reachable for nobody, so the dump directory lives in /tmp.
        self.dir = tempfile.mkdtemp(prefix="smtpgate-sink-", dir="/tmp")
        os.chmod(self.dir, 0o777)
        self.log_path = os.path.join(self.dir, "sink.log")

    @staticmethod
    def _options(**kw):
        switches = (("esmtp", "-e"), ("pipelining", "-p"),
                    ("eightbitmime", "-8"), ("dsn", "-N"),
                    ("enhancedstatuscodes", "-E"), ("auth", "-a"),
                    ("xclient", "-C"), ("xforward", "-F"))
        opts = [flag for key, flag in switches if not kw[key]]
        for key, flag in (("reject", "-f"), ("soft_reject", "-r"),
                          ("disconnect", "-q"), ("disconnect_421", "-Q")):
            if kw[key]:
                opts += [flag, ",".join(kw[key])]
        if kw["data_delay"] is not None:
            opts += ["-w", str(kw["data_delay"])]
        for command, seconds in (kw["delays"] or {}).items():
            opts += ["-W", f"{command}:{seconds}"]
        return opts

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    def start(self):
        args = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += ["-h", self.hostname, "-t", "120",
                 "-d", os.path.join(self.dir, "msg."), *self.options,
                 net.hostport(self.host, self.port), "100"]
        self._log = open(self.log_path, "ab")
        self._log_offset = self._log.tell()
        self.proc = subprocess.Popen(args, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"smtp-sink exited: {self.output()}")
            try:
                with net.connect(self.host, self.port, 5) as s:
                    # Whatever it answers (a CONNECT in reject or
                    # disconnect gives no 220), it listens.
                    s.recv(100)
                    return True
            except OSError:
                return False

        net.wait_until(ready, 30, what="smtp-sink to listen")
        # The probe above is a session too: count from after it.
        net.wait_until(lambda: self._current()["sess"] >= 1, 10,
                       what="smtp-sink to count its probe session")
        self._snap = self._current()
        return self

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _current(self):
        """The last counter record of the running process (smtp-sink
        writes one when a session ends, at QUIT and after a message)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                found = SINK_COUNTERS.findall(f.read())
        except OSError:
            found = []
        if not found:
            return dict.fromkeys(COUNTER_NAMES, 0)
        return dict(zip(COUNTER_NAMES, map(int, found[-1])))

    def counters(self):
        """{"sess": sessions ended, "quit": QUITs, "mesg": messages}
        since start(), across restarts."""
        if self.proc is None or self.proc.poll() is not None:
            return dict(self._acc)
        now = self._current()
        return {k: self._acc[k] + now[k] - self._snap[k] for k in now}

    @property
    def sessions(self):
        """How many sessions ended so far."""
        return self.counters()["sess"]

    def wait_sessions(self, n, timeout=30.0):
        """Wait until n sessions ended."""
        net.wait_until(lambda: self.sessions >= n, timeout,
                       what=f"{n} session(s) to end in smtp-sink")

    def kill(self):
        """End smtp-sink with SIGKILL, the way a crash would: open
        connections drop without a reply."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            now = self._current()
            self._acc = {k: self._acc[k] + now[k] - self._snap[k]
                         for k in now}
        self._close_log()

    def restart(self):
        """kill() if it runs, then start again on the same port."""
        self.kill()
        return self.start()

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self):
        stop_process(self.proc)
        self._close_log()
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


class ThreadedServer:
    """A plain TCP listener on host:port (a free port unless given) that
    serves each accepted connection on a thread of its own:
    self._serve(conn, index), index counting the connections from 0.
    Subclasses write _serve and may extend _accepted(conn), which runs
    under self._lock before the thread starts and returns the index.
    .connections counts the connections accepted; stop() closes the
    listener and every connection (joining the threads first when
    join_on_stop, for servers whose reads time out quickly)."""

    join_on_stop = True

    def __init__(self, host=net.IPV4, port=None):
        self.host = host
        self.port = port or net.free_port(host)
        self.connections = 0
        self._stop = threading.Event()
        self._threads = []
        self._socks = []
        self._lock = threading.Lock()
        self._listener = None

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    def start(self, backlog=16):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, self.port))
        self._listener.listen(backlog)
        self._listener.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        if self.join_on_stop:
            for t in self._threads:
                t.join(10)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def _accepted(self, conn):
        self.connections += 1
        self._socks.append(conn)
        return self.connections - 1

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                idx = self._accepted(conn)
            t = threading.Thread(target=self._serve, args=(conn, idx),
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn, idx):
        raise NotImplementedError


class ScriptedBackend(ThreadedServer):
    """Accepts connections and runs one behaviour on each.

    Behaviours:
      silent            accept, never send anything (held open until stop)
      greet_close       send a 220 greeting, then close
      garbage           send a line that is not an SMTP reply, then wait
      close_after_mail  a plain ESMTP server that closes when MAIL arrives
      silent_after_mail a plain ESMTP server that never answers MAIL (and
                        holds the connection until stop)
      half_reply_close  a plain ESMTP server that answers MAIL with the
                        first line of a multi-line reply, then closes
      refuse_greeting   send "554 go away", then wait
      fragmented        a working ESMTP server whose multi-line greeting
                        and 60-line EHLO reply trickle out a few bytes at a
                        time; it records each message in .messages
      ehlo_garbage      greets, then answers EHLO with a non-reply
      noop_tail         a plain ESMTP server that answers NOOP and then
                        starts a reply nobody asked for, "250 tail",
                        whose "ed" CRLF follows half a second later
      rset_garbage      a plain ESMTP server that answers RSET with a
                        line that is not an SMTP reply
      count_quit        a plain ESMTP server that, at QUIT, waits for the
                        client's FIN and records in .quit_segments how
                        many segments came since it answered the command
                        before, and how long that took
      dribble           sends a greeting that never ends, one byte every
                        0.3 seconds, until the client closes
      slow_starttls     waits .step_delay seconds (0.9) before each reply:
                        the greeting, EHLO (offering STARTTLS) and "220"
                        to STARTTLS; then never starts TLS, holding the
                        connection until the client closes it

    .open_connections and .max_open (the most open at once) count the
    connections being served.
    """

    EHLO_REPLY = b"250-scripted.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"

    def __init__(self, behaviour, host=net.IPV4):
        super().__init__(host)
        self.behaviour = behaviour
        self.received = []          # bytes read on each connection
        self.messages = []          # (fragmented) message bodies
        self.quit_segments = []     # (count_quit) (segments, seconds)
        self.step_delay = 0.9       # (slow_starttls)
        self.open_connections = 0
        self.max_open = 0

    def _accepted(self, conn):
        self.received.append(b"")
        conn.settimeout(0.2)
        return super()._accepted(conn)

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
        with self._lock:
            self.open_connections += 1
            self.max_open = max(self.max_open, self.open_connections)
        try:
            getattr(self, "_do_" + self.behaviour)(conn, idx)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open_connections -= 1
            if self.behaviour != "silent" or self._stop.is_set():
                try:
                    conn.close()
                except OSError:
                    pass

    def _do_silent(self, conn, idx):
        self._hold(conn, idx)

    def _do_greet_close(self, conn, idx):
        conn.sendall(b"220 scripted.test ESMTP\r\n")

    def _do_dribble(self, conn, idx):
        conn.settimeout(None)
        while not self._stop.is_set():
            for b in b"220-scripted.test still greeting\r\n":
                conn.sendall(bytes([b]))
                if self._stop.wait(0.3):
                    return

    def _do_slow_starttls(self, conn, idx):
        time.sleep(self.step_delay)
        conn.sendall(b"220 scripted.test ESMTP\r\n")
        while (line := self._readline(conn, idx)) is not None:
            verb = line.split(b" ", 1)[0].strip().upper()
            time.sleep(self.step_delay)
            if verb == b"EHLO":
                conn.sendall(b"250-scripted.test\r\n250 STARTTLS\r\n")
            elif verb == b"STARTTLS":
                conn.sendall(b"220 2.0.0 go ahead\r\n")
                self._hold(conn, idx)
                return
            else:
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return

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

    def _verbs(self, conn, idx):
        """Greet, then yield each command's verb (upper case) until the
        connection ends."""
        conn.sendall(b"220 scripted.test ESMTP\r\n")
        while (line := self._readline(conn, idx)) is not None:
            yield line.split(b" ", 1)[0].strip().upper()

    def _do_close_after_mail(self, conn, idx):
        for verb in self._verbs(conn, idx):
            if verb == b"EHLO":
                conn.sendall(self.EHLO_REPLY)
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

    def _plain_until_mail(self, conn, idx):
        """Answer like close_after_mail until MAIL; True when MAIL came."""
        for verb in self._verbs(conn, idx):
            if verb == b"EHLO":
                conn.sendall(self.EHLO_REPLY)
            elif verb == b"MAIL":
                return True
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return False
            else:
                conn.sendall(b"250 2.0.0 OK\r\n")
        return False

    def _do_silent_after_mail(self, conn, idx):
        if self._plain_until_mail(conn, idx):
            self._hold(conn, idx)

    def _do_half_reply_close(self, conn, idx):
        if self._plain_until_mail(conn, idx):
            conn.sendall(b"250-first of two lines\r\n")
            time.sleep(0.2)

    def _do_noop_tail(self, conn, idx):
        for verb in self._verbs(conn, idx):
            if verb == b"EHLO":
                conn.sendall(self.EHLO_REPLY)
            elif verb == b"NOOP":
                conn.sendall(b"250 2.0.0 OK\r\n250 tail")
                time.sleep(0.5)
                conn.sendall(b"ed\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 scripted Bye\r\n")
                return
            else:
                conn.sendall(b"250 2.0.0 OK\r\n")

    def _do_rset_garbage(self, conn, idx):
        for verb in self._verbs(conn, idx):
            if verb == b"EHLO":
                conn.sendall(self.EHLO_REPLY)
            elif verb == b"RSET":
                conn.sendall(b"this is not a reply\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 scripted Bye\r\n")
                return
            else:
                conn.sendall(b"250 2.0.0 OK\r\n")

    def _do_count_quit(self, conn, idx):
        mark = None
        for verb in self._verbs(conn, idx):
            if verb == b"EHLO":
                reply = self.EHLO_REPLY
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                line = b""
                while line not in (None, b".\r\n"):
                    line = self._readline(conn, idx)
                reply = b"250 2.0.0 counted\r\n"
            elif verb == b"QUIT":
                segments = net.segments_until_fin(conn, mark[1])
                with self._lock:
                    self.quit_segments.append(
                        (segments, time.monotonic() - mark[0]))
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                reply = b"250 2.0.0 OK\r\n"
            # The mark goes before the reply: nothing arrives until the
            # reply is out, and after it the client's next command can
            # come back before this thread runs again.
            mark = (time.monotonic(), net.tcp_info(conn)[1])
            conn.sendall(reply)
