"""Loopback addresses and free ports.

A port is found by binding port 0 and closing the socket again; another
process could take it in between, which on a test machine is rare enough
that a clear failure beats a retry loop that hides a real bind error.
"""

import collections
import socket
import struct
import time

IPV4 = "127.0.0.1"
IPV6 = "::1"


# Ports handed out lately: the kernel may give the same free port to two
# binds in a row (each socket is closed before the next asks), and two
# addresses of one configuration must differ.
_recent_ports = collections.deque(maxlen=512)


def free_port(host=IPV4):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _recent_ports:
            break
    _recent_ports.append(port)
    return port


def ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((IPV6, 0))
        return True
    except OSError:
        return False


def hostport(host, port):
    """The form used in configs and command lines: 1.2.3.4:25, [::1]:25."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text):
    """'127.0.0.1:25' or '[::1]:25' -> (host, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)


def connect(host, port, timeout=30.0, rcvbuf=None, source=None):
    """rcvbuf: a small receive buffer, set before the handshake so that
    the window stays small, for tests of a client that does not read.
    source: the client's own address (any of 127.0.0.0/8 is local)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        if source:
            s.bind((source, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until it returns a true value; return that value.

    Raises AssertionError naming `what` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


# struct tcp_info (linux/tcp.h): tcpi_state is its first byte, tcpi_segs_in
# (every segment received, pure ACKs and FINs included) the __u32 at 140.
TCP_CLOSE_WAIT = 8              # the peer's FIN has arrived


def tcp_info(sock):
    """(state, segments received) of a connected TCP socket."""
    b = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return b[0], struct.unpack_from("I", b, 140)[0]


def segments_until_fin(sock, since, timeout=10.0):
    """Wait for the peer's FIN on sock; return the segments received
    since `since` (a tcp_info() segment count), the FIN's included."""
    wait_until(lambda: tcp_info(sock)[0] == TCP_CLOSE_WAIT, timeout,
               interval=0.001, what="the peer's FIN")
    return tcp_info(sock)[1] - since


def tcp_inode(local, remote):
    """The inode of the IPv4 TCP socket with this local and remote
    address (both (ip, port)), from /proc/net/tcp; None if there is
    none."""
    def enc(addr):
        ip, port = addr
        packed = bytes(reversed(bytes(int(x) for x in ip.split("."))))
        return f"{packed.hex().upper()}:{port:04X}"
    want = (enc(local), enc(remote))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return fields[9]
    return None


def peer_unread(sock):
    """Bytes that the other end of a loopback connection has received
    but not yet read (its rx_queue in /proc/net/tcp): how a test sees a
    server stop reading."""
    local = sock.getsockname()[1]
    remote = sock.getpeername()[1]
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if (int(fields[1].rsplit(":", 1)[1], 16) == remote
                    and int(fields[2].rsplit(":", 1)[1], 16) == local):
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no socket {remote} -> {local} in /proc/net/tcp")
