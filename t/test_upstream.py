"""Upstream groups: weighted balancing, failover before the client
notices, passive and active health, and the 451 when nothing is left.

The backends are Postfix's smtp-sink (fast enough for thousands of
sessions) and aiosmtpd; scripted raw-socket servers play the backends
that misbehave on purpose."""

import collections
import smtplib
import socket
import threading
import time

import pytest

from lib import gate as gatelib
from lib import net
from lib.backends import SinkBackend
from lib.users import password


def upstream_conf(name, peers, extra="", body=""):
    lines = [f"    upstream {name} {{"]
    lines += [f"        server {p};" for p in peers]
    if body:
        lines.append(body)
    lines.append("    }")
    return "\n".join(lines) + "\n" + extra


def send_one(port, user="alice", timeout=30):
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as c:
        c.ehlo("client.test")
        c.login(user, password(user))
        c.sendmail("s@example.org", ["r@example.org"],
                   b"Subject: t\r\n\r\nbody\r\n")


def run_sessions(port, n, threads=4, user="alice"):
    """n sessions over a few client threads; returns the failures."""
    failures = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker():
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            try:
                send_one(port, user=user)
            except Exception as e:           # noqa: BLE001 - recorded
                with lock:
                    failures.append(repr(e))

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return failures


@pytest.fixture
def sinks():
    started = []

    def make(n):
        for _ in range(n):
            started.append(SinkBackend().start())
        return started[-n:]

    yield make
    for s in started:
        s.stop()


@pytest.mark.time_limit(400)
def test_weights_hold_over_3000_sessions(smtpgate, sinks):
    a, b, c = sinks(3)
    mail = upstream_conf("pool", [f"{a.address} weight=5",
                                  f"{b.address} weight=3",
                                  f"{c.address} weight=2"])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2))
    n = 3000
    failures = run_sessions(g.port, n, threads=6)
    assert failures == []
    net.wait_until(lambda: sum(len(s._files()) for s in (a, b, c)) >= n,
                   60, what="all messages at the sinks")
    counts = [len(s._files()) for s in (a, b, c)]
    for got, weight in zip(counts, (5, 3, 2)):
        expected = n * weight / 10
        assert abs(got - expected) <= 0.05 * expected, (counts, weight)


def test_dead_peer_is_skipped_before_the_client_notices(smtpgate, sinks):
    (a,) = sinks(1)
    dead = f"127.0.0.1:{net.free_port()}"
    mail = upstream_conf("pool", [dead, a.address])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    mark = g.log_mark()
    for _ in range(4):
        send_one(g.port)
    a.wait_messages(4)
    g.wait_log(rf"backend {dead} failed: connect\(\) failed", since=mark)
    # max_fails=1: after the first failure the dead peer rests for
    # fail_timeout and is not tried again.
    g.wait_log(rf"upstream pool: server {dead} failed 1 times, not used",
               since=mark)
    assert g.log_since(mark).count(f"backend {dead} failed") == 1


def test_every_peer_down_gives_451(smtpgate):
    d1 = f"127.0.0.1:{net.free_port()}"
    d2 = f"127.0.0.1:{net.free_port()}"
    mail = upstream_conf("pool", [d1, d2])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        r = c.auth_plain("alice", password("alice"))
        assert (r.code, r.last) == (451, "4.4.1 No backend available, try "
                                         "again later")
    g.wait_log(r"no backend available for proxy_pass after 2 attempts, "
               r"answering 451", since=mark)


def test_refused_greeting_fails_over(smtpgate, scripted, sinks):
    (a,) = sinks(1)
    bad = scripted("refuse_greeting")
    mail = upstream_conf("pool", [f"{bad.address} max_fails=0", a.address])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    mark = g.log_mark()
    for _ in range(2):
        send_one(g.port)
    a.wait_messages(2)
    g.wait_log(rf'backend {bad.address} failed: greeting reply "554 5.3.2',
               since=mark)


def test_health_check_marks_down_and_up(smtpgate, sinks):
    a, b = sinks(2)
    mail = upstream_conf("pool", [a.address, b.address],
                         body="        health_check interval=200ms "
                              "timeout=1s fails=1 passes=2;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2))
    mark = g.log_mark()
    b.proc.terminate()                 # the backend dies ...
    b.proc.wait()
    g.wait_log(rf"upstream pool: server {b.address} is down: health check "
               r"failed", since=mark)
    mark2 = g.log_mark()
    for _ in range(6):
        send_one(g.port)
    # A down peer gets no sessions, so no attempt against it failed.
    assert f"backend {b.address} failed" not in g.log_since(mark2)
    b.start()                          # ... and comes back on its port
    g.wait_log(rf"upstream pool: server {b.address} is up", since=mark2)
    # Exactly one worker reports each change.
    assert g.log_since(mark).count(f"server {b.address} is down") == 1
    assert g.log_since(mark).count(f"server {b.address} is up") == 1


def test_unknown_directive_in_upstream_is_a_config_error(smtpgate):
    mail = upstream_conf("pool", ["127.0.0.1:25"], body="        bogus 1;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail), start=False)
    r = g.ctl("-t")
    assert r.returncode != 0
    assert 'unknown directive "bogus" in upstream "pool"' in r.stderr


@pytest.mark.time_limit(600)
@pytest.mark.parametrize("splice", ["on", "off"])
def test_50mb_message_relayed_byte_exact(smtpgate, backend, splice):
    from lib.checks import assert_same_bytes, backend_view
    from lib.messages import make_message

    g = smtpgate(gatelib.conf(backend=backend,
                              mail=f"    proxy_splice {splice};"))
    mark = g.log_mark()
    msg = make_message(50 * 1024 * 1024, seed=50)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=300) as c:
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        assert c.sendmail("s@example.org", ["r@example.org"], msg) == {}
    (m,) = backend.wait_messages(1, timeout=300)
    assert_same_bytes(m.content, backend_view(backend, msg))
    how = "with splice" if splice == "on" else "through buffers"
    g.wait_log(rf"backend {backend.address} ready, relaying {how}",
               since=mark)


def landed_on(sinks_, sender):
    """Index of the one sink that holds mail from sender."""
    where = set()
    for i, s in enumerate(sinks_):
        for f in s._files():
            with open(f"{s.dir}/{f}", "rb") as fh:
                if f"<{sender}>".encode() in fh.read(4096):
                    where.add(i)
    return where


def send_from(port, user, sender):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        c.login(user, password(user))
        c.sendmail(sender, ["r@example.org"], b"Subject: t\r\n\r\nx\r\n")


def test_hash_auth_user_consistent_keeps_each_user_on_one_backend(
        smtpgate, sinks):
    peers = sinks(3)
    users = ["alice", "bob", "carol", "dave"]
    mail = upstream_conf("pool", [p.address for p in peers],
                         body="        hash $auth_user consistent;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2))
    for round_ in range(3):
        for u in users:
            send_from(g.port, u, f"{u}-{round_}@example.org")
    net.wait_until(lambda: sum(len(p._files()) for p in peers) >= 12, 30,
                   what="12 messages at the sinks")
    home = {}
    for u in users:
        where = set()
        for round_ in range(3):
            where |= landed_on(peers, f"{u}-{round_}@example.org")
        assert len(where) == 1, (u, where)
        home[u] = where.pop()

    # Drop one backend: only the users it had move.
    gone = home["alice"]
    kept = [p for i, p in enumerate(peers) if i != gone]
    old = g.workers()
    g.reload(gatelib.conf(
        proxy_pass="pool", workers=2,
        mail=upstream_conf("pool", [p.address for p in kept],
                           body="        hash $auth_user consistent;")))
    g.wait_old_workers_gone(old)
    for u in users:
        send_from(g.port, u, f"{u}-after@example.org")
    net.wait_until(lambda: sum(len(p._files()) for p in peers) >= 16, 30,
                   what="16 messages at the sinks")
    for u in users:
        (now,) = landed_on(peers, f"{u}-after@example.org")
        if home[u] != gone:
            assert now == home[u], (u, home, now)
        else:
            assert now != gone
