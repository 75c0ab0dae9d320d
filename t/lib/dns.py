"""Name servers for the resolver tests, on loopback.

- Dnsmasq: the real thing (Debian's dnsmasq-base), authoritative for the
  names and reverse zones it is given and answering NXDOMAIN for every
  other name in them, with no upstream and no /etc/hosts.  It logs every
  query it gets, so a test can count them.
- ScriptedDns: a UDP socket in a thread whose answers a test writes
  itself, byte for byte: a mock, because no real name server sends
  SERVFAIL on demand, forged ids, compression loops or nothing at all.
  It records every query it got.

query_of(msg) and answer(...) build and read DNS messages (RFC 1035) for
ScriptedDns behaviours.
"""

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

from . import net
from .backends import stop_process

DNSMASQ = "/usr/sbin/dnsmasq"

A, CNAME, PTR, AAAA, OPT = 1, 5, 12, 28, 41


def skip_reason():
    if not os.path.exists(DNSMASQ):
        return "dnsmasq is not installed (auto/deps test installs it)"
    return None


def free_udp_tcp_port(host=net.IPV4):
    """A port free for both UDP and TCP (dnsmasq binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(family, socket.SOCK_STREAM) as t:
                    t.bind((host, port))
                return port
            except OSError:
                continue
    raise RuntimeError("no port free for both UDP and TCP")


def arpa(addr):
    """The reverse-lookup name of an address."""
    if ":" in addr:
        packed = socket.inet_pton(socket.AF_INET6, addr)
        nibbles = "".join(f"{b:02x}" for b in packed)
        return ".".join(reversed(nibbles)) + ".ip6.arpa"
    return ".".join(reversed(addr.split("."))) + ".in-addr.arpa"


class Dnsmasq:
    """dnsmasq on 127.0.0.1:port.  host_records: (name, address) pairs
    (A or AAAA and the PTR back); ptr_records: (address, name) pairs
    (the PTR only); local: domains answered here only (NXDOMAIN for what
    is not known)."""

    def __init__(self, host_records=(), ptr_records=(),
                 local=("test", "127.in-addr.arpa", "ip6.arpa"), ttl=None):
        self.port = free_udp_tcp_port()
        self.dir = tempfile.mkdtemp(prefix="smtpgate-dns-")
        self.log_path = os.path.join(self.dir, "dnsmasq.log")
        args = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null",
                f"--port={self.port}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--no-negcache", "--log-queries",
                f"--log-facility={self.log_path}",
                f"--pid-file={os.path.join(self.dir, 'pid')}"]
        if os.geteuid() == 0:
            args.append("--user=root")
        if ttl is not None:
            args.append(f"--local-ttl={ttl}")
        args += [f"--local=/{d}/" for d in local]
        args += [f"--host-record={n},{a}" for n, a in host_records]
        args += [f"--ptr-record={arpa(a)},{n}" for a, n in ptr_records]
        self.args = args
        self.proc = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        # ready once it answers a query
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dnsmasq exited: "
                                   + self.proc.stderr.read().decode())
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(0.2)
                    s.sendto(query(1, "ready.test", A), ("127.0.0.1",
                                                          self.port))
                    s.recv(512)
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer")

    def queries(self, qtype="PTR"):
        """The names dnsmasq was asked about with this type, in order."""
        try:
            with open(self.log_path) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if f"query[{qtype}] " in line:
                out.append(line.split(f"query[{qtype}] ")[1].split()[0])
        return out

    def stop(self):
        stop_process(self.proc)
        if self.proc:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# messages


def encode_name(name):
    if not name:
        return b"\0"
    out = b""
    for label in name.split(".") if isinstance(name, str) else name:
        if isinstance(label, str):
            label = label.encode()
        out += bytes([len(label)]) + label
    return out + b"\0"


def query(qid, name, qtype):
    return (struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
            + encode_name(name) + struct.pack(">HH", qtype, 1))


def query_of(msg):
    """(id, name, type) of a query message."""
    qid = struct.unpack(">H", msg[:2])[0]
    pos, labels = 12, []
    while msg[pos]:
        n = msg[pos]
        labels.append(msg[pos + 1:pos + 1 + n].decode("latin-1"))
        pos += 1 + n
    qtype = struct.unpack(">H", msg[pos + 1:pos + 3])[0]
    return qid, ".".join(labels), qtype


def edns_payload(msg):
    """The UDP payload size a query's OPT record offers (RFC 6891), or
    None when it has none."""
    arcount = struct.unpack(">H", msg[10:12])[0]
    end = msg.index(b"\0", 12) + 5
    if arcount != 1 or len(msg) < end + 11 or msg[end] != 0:
        return None
    rtype, payload = struct.unpack(">HH", msg[end + 1:end + 5])
    return payload if rtype == OPT else None


def rr(name, rtype, rdata, ttl=300):
    """One record; name is text or raw bytes (already encoded)."""
    owner = name if isinstance(name, bytes) else encode_name(name)
    if rtype in (PTR, CNAME) and isinstance(rdata, str):
        rdata = encode_name(rdata)
    elif rtype == A and isinstance(rdata, str):
        rdata = socket.inet_pton(socket.AF_INET, rdata)
    elif rtype == AAAA and isinstance(rdata, str):
        rdata = socket.inet_pton(socket.AF_INET6, rdata)
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def answer(q, records=(), rcode=0, flags=0x8180, qid=None, question=None,
           count=None):
    """A response to the query q (its bytes): the question copied (or
    `question`, raw), then the records (raw bytes from rr()).  count
    overrides ANCOUNT."""
    qid_q, _, _ = query_of(q)
    end = q.index(b"\0", 12) + 5
    body = question if question is not None else q[12:end]
    return (struct.pack(">HHHHHH", qid if qid is not None else qid_q,
                        flags | rcode, 1,
                        len(records) if count is None else count, 0, 0)
            + body + b"".join(records))


def framed(msg):
    """A DNS message as it goes over TCP: its 2-byte length first."""
    return struct.pack(">H", len(msg)) + msg


class ScriptedDns:
    """UDP on 127.0.0.1 (or ::1).  behaviour(msg) -> a list of messages
    to send back (bytes), or (delay, bytes) pairs; [] sends nothing.
    With tcp, also TCP on the same port: tcp(msg) -> a list of byte
    strings written as they are (framed() adds the length), or
    (delay, bytes) pairs; the connection is closed after them.  TCP
    queries are recorded in tcp_received."""

    def __init__(self, behaviour, host=net.IPV4, tcp=None):
        self.behaviour = behaviour
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.received = []
        self.tcp_received = []
        self.tcp = tcp
        self.listener = None
        if tcp is not None:
            self.listener = socket.socket(family, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET,
                                     socket.SO_REUSEADDR, 1)
            self.listener.bind((host, self.port))
            self.listener.listen(16)
            self.listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tcp_thread = threading.Thread(target=self._run_tcp,
                                            daemon=True)
        self._timers = []

    @property
    def address(self):
        return net.hostport(self.host, self.port)

    def queries(self):
        return [query_of(m) for m in list(self.received)]

    def start(self):
        self._thread.start()
        if self.listener is not None:
            self._tcp_thread.start()
        return self

    def _run_tcp(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve_tcp, args=(conn,),
                             daemon=True).start()

    def _serve_tcp(self, conn):
        with conn:
            conn.settimeout(5)
            try:
                head = conn.recv(2, socket.MSG_WAITALL)
                n = struct.unpack(">H", head)[0]
                msg = conn.recv(n, socket.MSG_WAITALL)
            except (OSError, struct.error):
                return
            self.tcp_received.append(msg)
            for out in self.tcp(msg):
                if isinstance(out, tuple):
                    time.sleep(out[0])
                    out = out[1]
                if self._stop.is_set():
                    return
                try:
                    conn.sendall(out)
                except OSError:
                    return

    def _send_later(self, delay, data, peer):
        t = threading.Timer(delay, self._send, (data, peer))
        t.daemon = True
        self._timers.append(t)
        t.start()

    def _send(self, data, peer):
        if not self._stop.is_set():
            try:
                self.sock.sendto(data, peer)
            except OSError:
                pass

    def _run(self):
        while not self._stop.is_set():
            try:
                msg, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append(msg)
            for out in self.behaviour(msg):
                if isinstance(out, tuple):
                    self._send_later(out[0], out[1], peer)
                else:
                    self._send(out, peer)

    def stop(self):
        self._stop.set()
        for t in self._timers:
            t.cancel()
        self._thread.join(5)
        self.sock.close()
        if self.listener is not None:
            self._tcp_thread.join(5)
            self.listener.close()


def zone(records):
    """A ScriptedDns behaviour answering from a dict {(name, type):
    [rdata, ...]} with TTL 300, NXDOMAIN for anything else."""
    def behave(msg):
        _, name, qtype = query_of(msg)
        found = records.get((name.lower(), qtype))
        if found is None:
            return [answer(msg, rcode=3)]
        return [answer(msg, [rr(name, qtype, d) for d in found])]
    return behave
