"""status_listen: the counters of every worker, shown over HTTP.

/metrics is read with curl and parsed by prometheus_client's own
text-format parser (what a Prometheus server reads); /status with curl
and Python's json.  Sessions are real (smtplib, raw sockets) through
smtpgate to aiosmtpd, with two workers so that the counters must come
from shared memory.  Checked: each counter's change against the
sessions that made it (bytes counted on the client's socket), the
sessions open now, upstream peers going down after a failed attempt,
counters kept across a reload and a new server added by one, HEAD,
query strings, requests split over many writes; bad requests (garbage,
other methods, unknown paths, over-long heads, silence) each answered
with its HTTP error, status_allow; IPv6; configuration errors.
"""

import json
import smtplib
import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lib import gate as gatelib
from lib import net
from lib.smtp import RawSmtp, plain_token
from lib.users import password

from test_access_log import Counted
from test_config import assert_failed, conf_test, line_of, make  # noqa: F401


def conf(backend, mail="", workers=2, **kw):
    return gatelib.conf(backend=backend, workers=workers,
                        mail="    status_listen 127.0.0.1:@PORTS@;\n" + mail,
                        **kw)


def curl(g, path, *args, host="127.0.0.1", key="PORTS"):
    h = f"[{host}]" if ":" in host else host
    r = subprocess.run(["curl", "-sS", "-g", "--max-time", "20", *args,
                        f"http://{h}:{g.ports[key]}{path}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def metrics(g, **kw):
    """{(name, frozenset(labels)): value} of one scrape."""
    out = {}
    for fam in text_string_to_metric_families(curl(g, "/metrics", **kw)):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m, name, **labels):
    return m[(name, frozenset(labels.items()))]


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def wait_counter(g, name, n, server="mx.test"):
    """Once the server's counter `name` in /metrics reads n: the scrape,
    and the server's entry in /status."""
    def counted():
        m = metrics(g)
        return m if value(m, name, server=server) == n else None
    m = net.wait_until(counted, 10, what=f"{name} at {n}")
    (srv,) = [s for s in json.loads(curl(g, "/status"))["servers"]
              if s["name"] == server]
    return m, srv


def listen(g):
    return f"127.0.0.1:{g.port}"


def test_counters(smtpgate, backend):
    g = smtpgate(conf(backend, timeout="1s",
                      mail="    smtp_auth_fail_delay 0;"))
    m0 = metrics(g)
    # Three sessions that each relay a message.
    for i in range(3):
        with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
            c.login("alice", password("alice"))
            c.sendmail("a@example.org", ["b@example.org"],
                       b"Subject: %d\r\n\r\nx\r\n" % i)
    # Two failed AUTHs, then QUIT; one silent client timed out.
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "no").code == 535
        assert c.auth_plain("alice", "still no").code == 535
        c.cmd("QUIT")
    with g.session() as c:
        assert c.reply().code == 421
    # One whose bytes are counted on its socket.
    k = Counted(g.port)
    k.reply()
    k.cmd(b"EHLO counted.test")
    k.cmd(b"NOOP")
    k.cmd(b"QUIT")
    k.closed()
    k.close()
    backend.wait_messages(3)

    def settled():
        m = metrics(g)
        return m if value(m, "smtpgate_sessions_active",
                          listen=listen(g)) == 0 else None
    m1 = net.wait_until(settled, 10, what="no session open")
    srv = dict(server="mx.test")
    assert delta(m0, m1, "smtpgate_connections_total",
                 listen=listen(g)) == 6
    assert delta(m0, m1, "smtpgate_sessions_total", status="quit",
                 **srv) == 5
    assert delta(m0, m1, "smtpgate_sessions_total", status="timeout",
                 **srv) == 1
    assert delta(m0, m1, "smtpgate_sessions_total", status="error",
                 **srv) == 0
    assert delta(m0, m1, "smtpgate_logins_total", **srv) == 3
    assert delta(m0, m1, "smtpgate_auth_failures_total", **srv) == 2
    assert delta(m0, m1, "smtpgate_messages_total", **srv) == 3
    assert delta(m0, m1, "smtpgate_tls_sessions_total", **srv) == 0
    assert value(m1, "smtpgate_info", version=value_of_version(m1)) == 1
    assert value(m1, "smtpgate_start_time_seconds") <= time.time()

    # The counted session alone.
    m2 = metrics(g)
    k = Counted(g.port)
    k.reply()
    k.cmd(b"EHLO counted.test")
    k.cmd(b"QUIT")
    k.closed()
    k.close()
    m3 = net.wait_until(lambda: (lambda m: m if delta(
        m2, m, "smtpgate_sessions_total", status="quit", **srv) == 1
        else None)(metrics(g)), 10, what="the session counted")
    assert delta(m2, m3, "smtpgate_received_bytes_total", **srv) == k.sent
    assert delta(m2, m3, "smtpgate_sent_bytes_total", **srv) == k.received


def value_of_version(m):
    (labels,) = [dict(l) for (n, l) in m if n == "smtpgate_info"]
    return labels["version"]


def test_active_sessions(smtpgate, backend):
    g = smtpgate(conf(backend))
    held = [RawSmtp("127.0.0.1", g.port) for _ in range(3)]
    for c in held:
        c.greeting()
    m = metrics(g)
    assert value(m, "smtpgate_sessions_active", listen=listen(g)) == 3
    for c in held:
        c.cmd("QUIT")
        c.close()
    net.wait_until(lambda: value(metrics(g), "smtpgate_sessions_active",
                                 listen=listen(g)) == 0, 10,
                   what="the sessions to be counted closed")


def test_status_json_and_upstreams(smtpgate, backend):
    dead = net.free_port()
    g = smtpgate(conf(None, proxy_pass="pool", mail=f"""
    proxy_next_upstream_tries 2;
    upstream pool {{
        server 127.0.0.1:{dead} max_fails=1 fail_timeout=60s;
        server {backend.address};
    }}"""))
    # Round robin: every session tries the dead one once at most.
    for _ in range(2):
        with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
            c.login("alice", password("alice"))
            c.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    d = json.loads(curl(g, "/status"))
    assert d["version"] and d["start_time"] <= time.time()
    assert d["listen"][0]["address"] == listen(g)
    (srv,) = d["servers"]
    assert srv["name"] == "mx.test"
    assert srv["logins"] >= 2 and srv["messages"] >= 2
    assert set(srv["sessions"]) == {
        "quit", "closed", "timeout", "tls_error", "refused", "denied",
        "limited", "backend_error", "backend_refused", "backend_closed",
        "shutdown", "error"}
    (pool,) = d["upstreams"]
    assert pool["name"] == "pool"
    peers = {p["address"]: p for p in pool["peers"]}
    assert peers[f"127.0.0.1:{dead}"]["up"] is False
    assert peers[f"127.0.0.1:{dead}"]["failures"] == 1
    assert peers[backend.address]["up"] is True
    assert peers[backend.address]["active"] == 0
    m = metrics(g)
    assert value(m, "smtpgate_upstream_peer_up", upstream="pool",
                 peer=f"127.0.0.1:{dead}") == 0
    assert value(m, "smtpgate_upstream_peer_up", upstream="pool",
                 peer=backend.address) == 1
    assert value(m, "smtpgate_upstream_peer_failures", upstream="pool",
                 peer=f"127.0.0.1:{dead}") == 1


def test_server_names_are_unique_labels(smtpgate, backend):
    g = smtpgate(conf(backend, servers=[
        "        listen 127.0.0.1:@PORTB@;\n        server_name mx.test;",
        "        listen 127.0.0.1:@PORTC@;\n        server_name other.test;"]))
    m0 = metrics(g)
    with RawSmtp("127.0.0.1", g.ports["PORTB"]) as c:
        c.greeting()
        c.cmd("QUIT")
    m1 = net.wait_until(lambda: (lambda m: m if delta(
        m0, m, "smtpgate_sessions_total", server="mx.test#2",
        status="quit") == 1 else None)(metrics(g)), 10,
        what="the second mx.test's session")
    for name in ("mx.test", "other.test"):
        assert delta(m0, m1, "smtpgate_sessions_total", server=name,
                     status="quit") == 0
    assert delta(m0, m1, "smtpgate_connections_total",
                 listen=f"127.0.0.1:{g.ports['PORTB']}") == 1


def test_reload_keeps_counters(smtpgate, backend):
    g = smtpgate(conf(backend))
    for _ in range(2):
        with g.session() as c:
            c.cmd("QUIT")
    m0 = net.wait_until(lambda: (lambda m: m if value(
        m, "smtpgate_sessions_total", server="mx.test",
        status="quit") >= 3 else None)(metrics(g)), 10, what="3 sessions")
    old = g.workers()
    g.reload(conf(backend, servers=[
        "        listen 127.0.0.1:@PORTB@;\n        server_name new.test;"]))
    g.wait_workers(2, exclude=old)
    g.wait_old_workers_gone(old)
    m1 = metrics(g)
    assert value(m1, "smtpgate_start_time_seconds") == \
        value(m0, "smtpgate_start_time_seconds")
    assert value(m1, "smtpgate_sessions_total", server="mx.test",
                 status="quit") >= value(m0, "smtpgate_sessions_total",
                                         server="mx.test", status="quit")
    assert value(m1, "smtpgate_connections_total", listen=listen(g)) >= \
        value(m0, "smtpgate_connections_total", listen=listen(g))
    assert value(m1, "smtpgate_sessions_total", server="new.test",
                 status="quit") == 0


# -- HTTP --------------------------------------------------------------------

def raw_http(g, data, *, pause=0.0, key="PORTS", read=True):
    s = socket.create_connection(("127.0.0.1", g.ports[key]), timeout=30)
    try:
        if pause:
            for b in data:
                s.sendall(bytes([b]))
                time.sleep(pause)
        elif data:
            s.sendall(data)
        if not read:
            return s
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        if read:
            s.close()


def status_line(resp):
    return resp.split(b"\r\n", 1)[0].decode()


def test_http_answers(smtpgate, backend):
    g = smtpgate(conf(backend, workers=1))
    head = curl(g, "/metrics", "-I")
    assert head.startswith("HTTP/1.1 200 OK\n")   # (text mode: CRLF read
                                                  # as LF)
    assert "Content-Type: text/plain; version=0.0.4" in head
    assert "Connection: close" in head
    r = raw_http(g, b"HEAD /status HTTP/1.0\r\n\r\n")
    hdr, body = r.split(b"\r\n\r\n", 1)
    assert status_line(r) == "HTTP/1.1 200 OK" and body == b""
    assert int(dict(l.split(b": ", 1) for l in hdr.split(b"\r\n")[1:])
               [b"Content-Length"]) > 0
    assert "smtpgate_sessions_total" in curl(g, "/metrics?x=1&y")
    assert json.loads(curl(g, "/status?pretty"))["servers"]
    assert "/metrics" in curl(g, "/")
    # One byte a write, LF line ends.
    r = raw_http(g, b"GET /metrics HTTP/1.1\nHost: x\n\n", pause=0.01)
    assert status_line(r) == "HTTP/1.1 200 OK"


@pytest.mark.parametrize("request_bytes,code", [
    (b"GET /nope HTTP/1.1\r\n\r\n", 404),
    (b"GET /metricsX HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE /status HTTP/1.1\r\n\r\n", 405),
    (b"hello\r\n\r\n", 400),
    (b"GET /metrics\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
    (b"GET  HTTP/1.1\r\n\r\n", 400),
    (b"\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40
     + b"\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 5000 + b"\r\n\r\n", 431),
])
def test_bad_requests(smtpgate, backend, request_bytes, code):
    g = smtpgate(conf(backend, workers=1))
    r = raw_http(g, request_bytes)
    assert status_line(r).startswith(f"HTTP/1.1 {code} "), r[:200]
    assert b"Connection: close" in r
    # and the listener goes on
    assert "smtpgate_info" in curl(g, "/metrics")


def test_silent_client_times_out(smtpgate, backend):
    g = smtpgate(conf(backend, workers=1, mail="    status_timeout 1s;"))
    t0 = time.monotonic()
    s = raw_http(g, b"GET /metrics HTTP/1.1\r\n", read=False)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    assert status_line(out) == "HTTP/1.1 408 Request Timeout"
    assert 0.5 < time.monotonic() - t0 < 15
    g.wait_log(r"status client sent no whole request within "
               r"status_timeout")


def test_status_allow(smtpgate, backend):
    g = smtpgate(conf(backend, workers=1, mail="    status_allow 10.0.0.0/8;"
                                             "\n    status_allow ::1;"))
    r = raw_http(g, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status_line(r) == "HTTP/1.1 403 Forbidden"
    g.wait_log(r"status: client 127\.0\.0\.1 refused \(status_allow\)")
    g2 = smtpgate(conf(backend, workers=1,
                       mail="    status_allow 127.0.0.0/8;"))
    assert "smtpgate_info" in curl(g2, "/metrics")


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, listen=("[::1]:@PORT6@",),
                              mail="    status_listen [::1]:@PORTS6@;"))
    with RawSmtp("::1", g.ports["PORT6"]) as c:
        c.greeting()
        c.cmd("QUIT")
    m = net.wait_until(lambda: (lambda m: m if value(
        m, "smtpgate_sessions_total", server="mx.test", status="quit") >= 2
        else None)(metrics(g, host="::1", key="PORTS6")), 10,
        what="the IPv6 sessions")
    assert value(m, "smtpgate_connections_total",
                 listen=f"[::1]:{g.ports['PORT6']}") >= 2


def listening_sockets(g):
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True,
                         check=True).stdout
    return [l for l in out.splitlines() if f"pid={g.pid}," in l]


def test_listeners(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    assert len(listening_sockets(g)) == 1
    g2 = smtpgate(conf(backend, workers=1))
    socks = listening_sockets(g2)
    assert len(socks) == 2
    assert any(f"127.0.0.1:{g2.ports['PORTS']} " in l for l in socks)


# -- configuration ------------------------------------------------------------

@pytest.mark.parametrize("mail,message", [
    ("status_listen 127.0.0.1:@PORTS@; status_listen 127.0.0.1:@PORTS@;",
     "duplicate status_listen 127.0.0.1:"),
    ("status_listen nosuch.invalid:1;", 'host not found in '
     '"nosuch.invalid:1" of the "status_listen" directive'),
    ("status_listen 127.0.0.1:99999;", 'invalid port in "127.0.0.1:99999" '
     'of the "status_listen" directive'),
    ("status_allow 10.0.0.0/33;", 'invalid value "10.0.0.0/33"'),
    ("status_timeout 0;", 'invalid value "0"'),
])
def test_config_errors(conf_test, mail, message):
    text = make(mail="    " + mail)
    g, r = conf_test(text)
    assert_failed(g, r, message, line_of(text, mail.split(" ")[0]))


def test_status_listen_on_an_smtp_address(conf_test):
    text = make(mail="    status_listen 127.0.0.1:@PORT@;")
    g, r = conf_test(text)
    assert_failed(g, r, f"127.0.0.1:{g.port} is already listened on for "
                  "another purpose (status_listen)",
                  line_of(text, "  listen 127.0.0.1:@PORT@;"))


def test_more_servers_than_slots(smtpgate, backend):
    """The zone has 512 slots: servers past them are not counted, with a
    warning, and the listener still answers for the rest."""
    servers = [f"        listen 127.0.0.1:@PORT@;\n"
               f"        server_name s{i}.test;" for i in range(520)]
    g = smtpgate(conf(backend, workers=1, servers=servers))
    g.wait_log(r"\[warn\] .*status: 10 addresses or servers are not "
               r"counted: the zone's 512 slots are taken")
    m = metrics(g)
    assert value(m, "smtpgate_sessions_total", server="mx.test",
                 status="quit") >= 1
    assert ("smtpgate_logins_total", frozenset({("server", "s509.test")})) \
        in m
    assert ("smtpgate_logins_total", frozenset({("server", "s510.test")})) \
        not in m
