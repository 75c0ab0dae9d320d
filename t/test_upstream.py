"""Upstream groups: weighted balancing, failover before the client
notices, passive and active health, and the 451 when nothing is left.

The backends are Postfix's smtp-sink (fast enough for thousands of
sessions) and aiosmtpd; scripted raw-socket servers play the backends
that misbehave on purpose."""

import collections
import os
import re
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


def relay_big(g, backend, size, timeout):
    """One message of `size` bytes through g to backend, written at once
    by smtplib; asserts it arrived byte for byte."""
    from lib.checks import assert_same_bytes, backend_view
    from lib.messages import make_message

    msg = make_message(size, seed=size % 1000)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=timeout) as c:
        c.ehlo("client.test")
        c.login("alice", password("alice"))
        assert c.sendmail("s@example.org", ["r@example.org"], msg) == {}
    (m,) = backend.wait_messages(1, timeout=timeout)
    assert_same_bytes(m.content, backend_view(backend, msg))


@pytest.mark.time_limit(600)
@pytest.mark.parametrize("splice", ["on", "off"])
def test_50mb_message_relayed_byte_exact(smtpgate, backend, splice):
    g = smtpgate(gatelib.conf(backend=backend,
                              mail=f"    proxy_splice {splice};"))
    mark = g.log_mark()
    relay_big(g, backend, 50 * 1024 * 1024, timeout=300)
    g.wait_log(rf"backend {backend.address} ready", since=mark)
    if splice == "on":
        g.wait_log(r"a large transfer: relaying with splice from here on",
                   since=mark)
    else:
        assert "with splice" not in g.log_since(mark)


SPLICE_AFTER = 256 * 1024


@pytest.mark.parametrize("splice", ["on", None])
@pytest.mark.parametrize("kind", ["aiosmtpd", "smtp-sink"])
def test_splice_starts_at_256k_for_a_fast_sender(smtpgate, backend, sink,
                                                  kind, splice):
    """The whole message is written at once.  Whether the backend reads
    it slower (aiosmtpd) or as fast as it comes (smtp-sink, when one pass
    of the relay could move the whole message without ever finding its
    buffers empty), the switch to splice must come right after 256 KB.
    Without the directive the relay stays with buffers."""
    if kind == "smtp-sink":
        backend = sink
    mail = f"    proxy_splice {splice};" if splice else ""
    g = smtpgate(gatelib.conf(backend=backend, mail=mail))
    mark = g.log_mark()
    relay_big(g, backend, 8 * 1024 * 1024, timeout=120)
    g.wait_log(r"session closed", since=mark)
    log = g.log_since(mark)
    if splice is None:
        assert "with splice" not in log
        return
    found = re.search(r"a large transfer: relaying with splice from here "
                      r"on, (\d+) bytes in", log)
    assert found, log
    # one read of at most smtp_client_buffer (16k) may cross the mark
    assert SPLICE_AFTER < int(found.group(1)) <= SPLICE_AFTER + 16384 + 4096


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


# --------------------------------------------------------------------------
# Balancers, limits, backup and down, failover limits


def hold_relay(g, port=None, user="alice"):
    """A client session that logged in (so it is relayed and counts as
    one of its peer's connections) and stays open until closed."""
    c = g.connect(port=port)
    assert c.greeting().code == 220
    c.ehlo()
    r = c.auth_plain(user, password(user))
    assert r.code == 235, r
    return c


def auth_reply(g):
    with g.session() as c:
        c.ehlo()
        return c.auth_plain("alice", password("alice"))


NO_BACKEND = (451, "4.4.1 No backend available, try again later")


def test_least_conn_sends_new_sessions_to_the_idle_peer(smtpgate,
                                                        make_backend):
    """One session stays relayed on one peer; every new session (over
    two workers, which share the counts) goes to the other, where plain
    round robin would alternate."""
    a, b = make_backend(), make_backend()
    mail = upstream_conf("pool", [a.address, b.address],
                         body="        least_conn;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2))
    held = hold_relay(g)
    try:
        busy, idle = (a, b) if a.connections else (b, a)
        busy.wait_open(1)
        for _ in range(5):
            send_one(g.port)
        assert len(idle.wait_messages(5)) == 5
        assert busy.connections == 1 and busy.messages == []
    finally:
        held.close()
    busy.wait_open(0)
    # With the counts equal again, the two peers share the sessions.
    for _ in range(4):
        send_one(g.port)
    net.wait_until(lambda: len(a.messages) + len(b.messages) == 9, 30,
                   what="9 messages")
    assert busy.messages, "no session went to the peer that was busy"


def test_max_conns_holds_across_workers(smtpgate, make_backend):
    """max_conns=2 with the two relayed sessions in two different
    workers: each worker sees the other's session, so a third session
    finds the peer full (451), in whichever worker it lands; once one
    ends, a new session gets through."""
    a = make_backend()
    mail = upstream_conf("pool", [f"{a.address} max_conns=2"])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2,
                              listen=("127.0.0.1:@PORT@ reuseport",)))
    first, second = g.one_in_each_worker()
    try:
        for c in (first, second):
            c.ehlo()
            assert c.auth_plain("alice", password("alice")).code == 235
        a.wait_open(2)
        mark = g.log_mark()
        for _ in range(4):
            r = auth_reply(g)
            assert (r.code, r.last) == NO_BACKEND
        g.wait_log(r"no backend available for proxy_pass after 0 attempts: "
                   r"every server is down or busy, answering 451: check that "
                   r"the backend servers are running and reachable",
                   since=mark)
    finally:
        first.close()
    a.wait_open(1)
    send_one(g.port)
    a.wait_messages(1)
    second.close()
    assert a.max_open == 2


def test_backup_only_when_the_primaries_are_down(smtpgate, make_backend):
    a, b, spare = make_backend(), make_backend(), make_backend()
    mail = upstream_conf("pool", [a.address, b.address,
                                  f"{spare.address} backup"])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    for _ in range(4):
        send_one(g.port)
    assert len(a.messages) == 2 and len(b.messages) == 2
    assert spare.connections == 0
    a.stop()
    b.stop()
    mark = g.log_mark()
    for _ in range(3):
        send_one(g.port)
    assert len(spare.wait_messages(3)) == 3
    # Each primary failed once and then rested (max_fails=1).
    log = g.log_since(mark)
    for p in (a, b):
        assert log.count(f"backend {p.address} failed") == 1


def test_down_is_never_used(smtpgate, make_backend):
    """Neither sessions nor health checks go to a "down" server."""
    a, b = make_backend(), make_backend()
    mail = upstream_conf("pool", [f"{a.address} down", b.address],
                         body="        health_check interval=100ms;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2))
    net.wait_until(lambda: b.connections >= 3, 10, what="probes of b")
    for _ in range(4):
        send_one(g.port)
    assert len(b.wait_messages(4)) == 4
    assert a.connections == 0


def test_failures_older_than_fail_timeout_do_not_count(smtpgate):
    """max_fails=2 fail_timeout=500ms: two failures a second apart are
    not two failures within fail_timeout, so the peer is not rested and
    the next session still tries it."""
    dead = f"127.0.0.1:{net.free_port()}"
    mail = upstream_conf("pool", [f"{dead} max_fails=2 fail_timeout=500ms"])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    mark = g.log_mark()
    for _ in range(2):
        r = auth_reply(g)
        assert (r.code, r.last) == NO_BACKEND
        time.sleep(1)
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND
    net.wait_until(lambda: g.log_since(mark).count("no backend available")
                   == 3, 10, what="three 451 lines")
    log = g.log_since(mark)
    assert "not used for" not in log, log
    assert log.count(f"backend {dead} failed") == 3, log


def test_next_upstream_tries_1_stops_after_one_peer(smtpgate, make_backend):
    good = make_backend()
    dead = f"127.0.0.1:{net.free_port()}"
    mail = upstream_conf("pool", [f"{dead} max_fails=0", good.address],
                         extra="    proxy_next_upstream_tries 1;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    mark = g.log_mark()
    # Round robin starts with the first server: the dead one.
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND
    g.wait_log(rf"backend {dead} failed: connect\(\) failed", since=mark)
    g.wait_log(r"no backend available for proxy_pass after 1 attempt: "
               r"proxy_next_upstream_tries reached, answering 451: check that "
               r"the backend servers are running and reachable", since=mark)
    assert good.connections == 0
    send_one(g.port)                    # the next one gets `good`
    good.wait_messages(1)


def test_next_upstream_timeout_stops_trying(smtpgate, scripted,
                                            make_backend):
    """A backend that never greets holds the first attempt for
    proxy_connect_timeout (500ms), longer than
    proxy_next_upstream_timeout (300ms): no second peer is tried."""
    silent = scripted("silent")
    good = make_backend()
    mail = upstream_conf("pool", [f"{silent.address} max_fails=0",
                                  good.address],
                         extra="    proxy_next_upstream_timeout 300ms;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail,
                              proxy_connect_timeout="500ms"))
    mark = g.log_mark()
    started = time.monotonic()
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND
    assert time.monotonic() - started >= 0.45
    g.wait_log(rf"backend {silent.address} failed: timed out during "
               r"greeting", since=mark)
    g.wait_log(r"no backend available for proxy_pass after 1 attempt: "
               r"proxy_next_upstream_timeout passed, answering 451",
               since=mark)
    assert good.connections == 0


def test_refused_ehlo_and_421_greeting_fail_over(smtpgate, make_backend):
    no_ehlo = make_backend(ehlo_code=554)
    busy = make_backend(greeting_code=421)
    good = make_backend()
    mail = upstream_conf("pool", [f"{no_ehlo.address} max_fails=0",
                                  f"{busy.address} max_fails=0",
                                  good.address])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    mark = g.log_mark()
    for _ in range(3):
        send_one(g.port)
    assert len(good.wait_messages(3)) == 3
    g.wait_log(rf'backend {no_ehlo.address} failed: EHLO reply "554 5\.3\.2 '
               r'backend\.test EHLO refused"', since=mark)
    g.wait_log(rf'backend {busy.address} failed: greeting reply "421 '
               r'4\.3\.2 backend\.test Service not available"', since=mark)
    assert no_ehlo.messages == [] and busy.messages == []


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_peers(smtpgate, make_backend):
    a = make_backend(host=net.IPV6)
    b = make_backend(host=net.IPV6)
    mail = upstream_conf("pool", [a.address, b.address])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    mark = g.log_mark()
    for _ in range(4):
        send_one(g.port)
    assert len(a.wait_messages(2)) == 2 and len(b.wait_messages(2)) == 2
    assert a.messages[0].peer[0] == "::1"
    g.wait_log(rf"backend \[::1\]:{a.port} ready", since=mark)


@pytest.mark.time_limit(240)
def test_backend_killed_and_restarted_during_a_run(smtpgate, sinks):
    """About 300 sessions from 4 client threads over three smtp-sinks
    with health checks.  After 100 the clients pause until no session is
    open, one sink is killed (SIGKILL) and the clients go on; after 200
    it is restarted on its port.

    What is guaranteed, and asserted: no client session fails, because a
    session whose attempt meets the dead sink moves on to the next peer
    before the client notices, and the health check soon keeps sessions
    away from it ("is down"); once it is back the health check says "is
    up" and it takes sessions again.  What is not: a session already
    relaying through a backend when that backend dies cannot be saved
    (its bytes are gone with the backend), which is why the kill waits
    for a moment with no session open."""
    a, b, c = sinks(3)
    mail = upstream_conf(
        "pool", [f"{s.address} fail_timeout=1s" for s in (a, b, c)],
        body="        health_check interval=200ms timeout=1s fails=1 "
             "passes=1;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2))
    mark = g.log_mark()
    total, threads = 300, 4
    cond = threading.Condition()
    state = {"next": 0, "done": 0, "active": 0, "paused": False}
    failures = []

    def worker():
        while True:
            with cond:
                cond.wait_for(lambda: not state["paused"])
                if state["next"] >= total:
                    return
                state["next"] += 1
                state["active"] += 1
            try:
                send_one(g.port)
            except Exception as e:           # noqa: BLE001 - recorded
                failures.append(repr(e))
            with cond:
                state["active"] -= 1
                state["done"] += 1
                cond.notify_all()

    def at(n):
        with cond:
            assert cond.wait_for(lambda: state["done"] >= n, 120), state

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    finished = False
    try:
        at(100)
        with cond:
            state["paused"] = True
            assert cond.wait_for(lambda: state["active"] == 0, 60)
        c.kill()
        with cond:
            state["paused"] = False
            cond.notify_all()
        g.wait_log(rf"upstream pool: server {c.address} is down: health "
                   r"check failed", since=mark)
        at(200)
        before = c.counters()["mesg"]
        c.restart()
        g.wait_log(rf"upstream pool: server {c.address} is up: health check "
                   r"passed", since=mark)
        finished = True
    finally:
        with cond:
            state["paused"] = False
            if not finished:
                state["next"] = total       # stop the clients
            cond.notify_all()
        for t in ts:
            t.join(120)
    assert failures == []
    assert state["done"] == total
    net.wait_until(lambda: sum(len(s._files()) for s in (a, b, c)) >= total,
                   60, what="every message at the sinks")
    # Back in the rotation after the restart.
    net.wait_until(lambda: c.counters()["mesg"] > before, 30,
                   what="the restarted sink to take sessions")


@pytest.mark.time_limit(90)
def test_slow_starttls_check_is_not_taken_over(smtpgate, scripted):
    """A STARTTLS health check whose every step answers just within
    timeout=1s, and whose TLS handshake never comes, lasts about 4s: more
    than twice the timeout.  While it runs no other worker probes the
    same server, so the backend never sees two checks at once, and each
    check is one failure: with fails=3 the server is marked down only
    after three checks have ended."""
    b = scripted("slow_starttls")
    mail = upstream_conf("pool", [b.address],
                         body="        health_check interval=1s timeout=1s "
                              "fails=3 starttls;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=3))
    g.wait_log(rf"upstream pool: server {b.address} is down: health check "
               r"failed: timed out", timeout=60)
    with b._lock:
        ended = b.connections - b.open_connections
    assert b.max_open == 1, f"{b.max_open} checks of one server at once"
    log = g.error_log()
    failed = log.count(f"health check of server {b.address} failed")
    assert failed == 2, log
    assert ended >= 3, f"down after {ended} checks had ended"


def test_dribbling_backend_fails_its_check(smtpgate, scripted):
    """A backend whose greeting never ends, a byte at a time, answers
    within every step's timeout but never finishes: the check gives up
    when its steps' timeouts added up (3 x 1s) have passed, and the
    server is marked down instead of holding the check for ever."""
    b = scripted("dribble")
    mail = upstream_conf("pool", [b.address],
                         body="        health_check interval=1s timeout=1s;")
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail, workers=2))
    g.wait_log(rf"upstream pool: server {b.address} is down: health check "
               r"failed: timed out: not done within 3000ms", timeout=30)


# --------------------------------------------------------------------------
# smtp_capabilities auto


def ehlo_before_auth(g):
    from lib.smtp import ehlo_keywords, ehlo_line
    with g.session() as c:
        r = c.ehlo()
    return ehlo_keywords(r), ehlo_line(r, "SIZE")


def caps_gate(smtpgate, peers, check="interval=200ms timeout=5s"):
    mail = upstream_conf("pool", [p.address for p in peers],
                         body=f"        health_check {check};",
                         extra="    smtp_capabilities auto;")
    return smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))


def test_capabilities_auto_follow_the_probes(smtpgate, make_backend):
    a = make_backend(ehlo_add=("CHUNKING", "SMTPUTF8"),
                     data_size_limit=20_000_000)
    b = make_backend(ehlo_add=("CHUNKING", "SMTPUTF8"),
                     data_size_limit=10_000_000)
    g = caps_gate(smtpgate, [a, b])

    def ehlo_has(*keys, lacks=(), size_is=None):
        def check():
            kw, size = ehlo_before_auth(g)
            ok = all(k in kw for k in keys) and not any(k in kw
                                                        for k in lacks)
            ok = ok and (size_is is None or size == size_is)
            return (kw, size) if ok else None
        return net.wait_until(check, 15, what=f"EHLO with {keys} "
                                              f"without {lacks}")

    # Until b's first probe only a's EHLO counts (SIZE 20000000); once
    # both are probed, the smaller of the two.
    kw, size = ehlo_has("CHUNKING", "SMTPUTF8", "SIZE",
                        size_is="SIZE 10000000")
    assert size == "SIZE 10000000"
    assert "8BITMIME" in kw and "AUTH" in kw
    # b stops advertising CHUNKING (BDAT still works there, only the
    # advertisement goes): after its next probe smtpgate leaves it out.
    b.ehlo_add = ["SMTPUTF8"]
    kw, size = ehlo_has("SMTPUTF8", lacks=("CHUNKING",))
    assert size == "SIZE 10000000"
    # b goes down: only a's probe counts, with its CHUNKING and SIZE.
    b.stop()
    g.wait_log(rf"upstream pool: server {b.address} is down")
    kw, size = ehlo_has("CHUNKING", "SMTPUTF8")
    assert size == "SIZE 20000000"


def test_capabilities_auto_before_the_first_probe(smtpgate, make_backend):
    """Backends that take 4s to greet: until a probe has completed, the
    EHLO reply is the one without auto (no SIZE, SMTPUTF8, CHUNKING)."""
    peers = [make_backend(ehlo_add=("CHUNKING", "SMTPUTF8"),
                          delays={"CONNECT": 4}) for _ in range(2)]
    g = caps_gate(smtpgate, peers, check="interval=10s timeout=8s")
    kw, size = ehlo_before_auth(g)
    assert kw == ["PIPELINING", "ENHANCEDSTATUSCODES", "AUTH"], kw
    assert size is None
    net.wait_until(lambda: "SMTPUTF8" in ehlo_before_auth(g)[0], 20,
                   what="the EHLO after the first probes")
    kw, _ = ehlo_before_auth(g)
    assert "CHUNKING" in kw and "SIZE" in kw


def test_capabilities_auto_learned_again_after_reload(smtpgate,
                                                      make_backend):
    """The backend's operator drops CHUNKING and smtpgate is reloaded:
    the EHLO a client sees after the reload comes from a probe of the new
    configuration (here before the next interval, an hour away), never
    from the capabilities learned before it."""
    a = make_backend(ehlo_add=("CHUNKING", "SMTPUTF8"))
    g = caps_gate(smtpgate, [a], check="interval=1h timeout=5s")
    net.wait_until(lambda: "CHUNKING" in ehlo_before_auth(g)[0], 15,
                   what="the EHLO after the first probe")
    probes = a.connections

    a.ehlo_add = ["SMTPUTF8"]
    old = g.workers()
    g.reload()
    g.wait_old_workers_gone(old)
    kw, _ = ehlo_before_auth(g)
    assert "CHUNKING" not in kw, kw
    kw = net.wait_until(lambda: (lambda k: k if "SMTPUTF8" in k else None)(
                            ehlo_before_auth(g)[0]), 15,
                        what="the EHLO after the new workers' probe")
    assert "CHUNKING" not in kw, kw
    assert a.connections > probes


# --------------------------------------------------------------------------
# configuration errors


UPSTREAM_ERRORS = [
    ("upstream pool { server 127.0.0.1:25; }\n"
     "    upstream pool { server 127.0.0.1:26; }", 2,
     'duplicate upstream "pool"'),
    ("upstream pool { least_conn; }", 1,
     'upstream "pool" has no server (a group needs at least one that is not '
     'a backup)'),
    ("upstream pool { server 127.0.0.1:25 backup; }", 1,
     'upstream "pool" has no server (a group needs at least one that is not '
     'a backup)'),
    ("upstream pool {\n        hash $auth_user;\n"
     "        server 127.0.0.1:25;\n        server 127.0.0.1:26 backup;\n"
     "    }", 1,
     'upstream "pool": "backup" servers cannot be used with "hash"'),
    ("upstream pool { server 127.0.0.1:25 weight=0; }", 1,
     'invalid "weight=0": the value must be a number from 1 to 1000'),
    ("upstream pool { server 127.0.0.1:25 weight=heavy; }", 1,
     'invalid "weight=heavy": the value must be a number from 1 to 1000'),
    ("upstream pool { server 127.0.0.1:25 max_fails=1001; }", 1,
     'invalid "max_fails=1001": the value must be a number from 0 to 1000'),
    ("upstream pool { server 127.0.0.1:25 fail_timeout=soon; }", 1,
     'invalid "fail_timeout=soon": the value must be a time from 1ms to 1d'),
    ("upstream pool { server 127.0.0.1:25 max_conns=-1; }", 1,
     'invalid "max_conns=-1": the value must be a number from 0 to 1000000'),
    ("upstream pool { server 127.0.0.1:25 slow_start=10s; }", 1,
     'invalid parameter "slow_start=10s" of "server"'),
    ("upstream pool {\n        server 127.0.0.1:25;\n        hash;\n    }", 3,
     'invalid arguments of "hash": the syntax is "hash KEY [consistent];"'),
    ("upstream pool {\n        server 127.0.0.1:25;\n"
     "        hash $auth_user ring;\n    }", 3,
     'invalid arguments of "hash": the syntax is "hash KEY [consistent];"'),
    ("upstream pool {\n        server 127.0.0.1:25;\n"
     "        least_conn;\n        hash $auth_user;\n    }", 4,
     'upstream "pool" already has a balancer'),
    ("upstream pool {\n        server 127.0.0.1:25;\n"
     "        health_check uri=/;\n    }", 3,
     'invalid parameter "uri=/" of "health_check" (expected interval=, '
     'fails=, passes=, timeout=, starttls, ssl or proxy_protocol)'),
    ("upstream pool {\n        server 127.0.0.1:25;\n"
     "        health_check starttls ssl;\n    }", 3,
     '"health_check" takes "starttls" or "ssl", not both'),
    ("upstream pool {\n        server 127.0.0.1:25;\n"
     "        health_check interval=10ms;\n    }", 3,
     'the interval is a time from 100ms to 1d'),
    ("upstream pool {\n        server 127.0.0.1:25;\n"
     "        health_check fails=0;\n    }", 3,
     'fails is a number from 1 to 1000'),
    ("upstream pool { server no-such-host.invalid:25; }", 1,
     'host not found in "no-such-host.invalid:25" of "server" in upstream '
     '"pool"'),
    ("upstream $pool { server 127.0.0.1:25; }", 1,
     'an upstream name is 1 to 200 characters, without "$"'),
]


@pytest.mark.parametrize("block,line,error", UPSTREAM_ERRORS)
def test_upstream_config_errors(smtpgate, block, line, error):
    mail = "    " + block
    g = smtpgate(gatelib.conf(proxy_pass="127.0.0.1:25", mail=mail),
                 start=False)
    first = g.conf_text.splitlines().index(mail.splitlines()[0]) + 1
    r = g.ctl("-t")
    assert r.returncode != 0
    (emerg,) = [l for l in r.stderr.splitlines() if "[emerg]" in l]
    assert f" {g.conf_path}:{first + line - 1}: " in emerg, emerg
    assert error in emerg, emerg


def test_proxy_pass_neither_group_nor_address(smtpgate):
    g = smtpgate(gatelib.conf(
        proxy_pass="pool2.invalid",
        mail="    upstream pool { server 127.0.0.1:25; }"), start=False)
    line = g.conf_text.splitlines().index("    proxy_pass pool2.invalid;") + 1
    r = g.ctl("-t")
    assert r.returncode != 0
    assert (f"{g.conf_path}:{line}: host not found in \"pool2.invalid\" of "
            "the "
            "\"proxy_pass\" directive (it is neither an upstream group "
            "defined in this mail block nor a usable address)") in r.stderr


# --------------------------------------------------------------------------
# Routes from the authentication backend


def test_users_file_routes(smtpgate, make_backend):
    """The third column of the users file: a group's name, an IP address
    and port, nothing (proxy_pass decides), or a name that is neither
    (451 and a line quoting it)."""
    premium, direct, default = make_backend(), make_backend(), make_backend()
    users_text = "\n".join([
        f"alice:{{PLAIN}}{password('alice')}:premium",
        f"bob:{{PLAIN}}{password('bob')}:{direct.address}",
        f"carol:{{PLAIN}}{password('carol')}:",
        f"dave:{{PLAIN}}{password('dave')}:no-such-group",
    ]) + "\n"
    g = smtpgate(gatelib.conf(
        proxy_pass=default.address,
        mail=upstream_conf("premium", [premium.address])),
        users_text=users_text)
    for user in ("alice", "bob", "carol"):
        send_from(g.port, user, f"{user}@example.org")
    assert [m.mail_from for m in premium.wait_messages(1)] == \
        ["alice@example.org"]
    assert [m.mail_from for m in direct.wait_messages(1)] == \
        ["bob@example.org"]
    assert [m.mail_from for m in default.wait_messages(1)] == \
        ["carol@example.org"]
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        r = c.auth_plain("dave", password("dave"))
        assert (r.code, r.last) == NO_BACKEND
    g.wait_log(r'the route of the authentication backend \(auth_file\) gave '
               r'"no-such-group", which is neither an upstream group nor an '
               r'IP address and port \(.*\), answering 451', since=mark)


def test_auth_upstream_header_routes_to_a_group(smtpgate, make_backend):
    from lib.authsvc import AuthService, ok

    premium = [make_backend(), make_backend()]
    default = make_backend()
    svc = AuthService().start()
    try:
        svc.responder = lambda req: (
            ok(headers=[("Auth-Upstream", "premium")])
            if req.header("Auth-User") == "alice" else ok())
        g = smtpgate(gatelib.conf(
            proxy_pass=default.address, auth_file=None,
            mail=f"    auth_http {svc.url};\n"
                 + upstream_conf("premium", [p.address for p in premium])))
        for _ in range(2):
            send_from(g.port, "alice", "alice@example.org")
        send_from(g.port, "bob", "bob@example.org")
    finally:
        svc.stop()
    # The group's balancer spreads alice's sessions over its peers.
    assert [len(p.wait_messages(1)) for p in premium] == [1, 1]
    assert [m.mail_from for m in default.wait_messages(1)] == \
        ["bob@example.org"]


@pytest.mark.parametrize("old", [False, True], ids=["current", "old"])
def test_max_conns_freed_when_a_worker_dies(smtpgate, make_backend, old):
    """A worker killed while it relays a session cannot say that the
    session ended.  The worker the master starts in its place gives the
    peer's max_conns slot back, so the peer is not full for good; a
    worker of the configuration before a reload is not replaced, and
    the new workers find its slot within a second."""
    a = make_backend()
    mail = upstream_conf("pool", [f"{a.address} max_conns=1"])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail))
    g.allow(r"worker process \d+ exited on signal 9")
    (worker,) = g.workers()
    held = hold_relay(g)
    a.wait_open(1)
    if old:
        g.reload()
        g.wait_workers(1, exclude=(worker,))
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND       # full, as it should be
    os.kill(worker, 9)
    held.close()
    if not old:
        g.wait_workers(1, exclude=(worker,))
    g.wait_log(rf"upstream pool: 1 session of process {worker}, which "
               r"exited without ending them, no longer counted")
    a.wait_open(0)
    r = auth_reply(g)
    assert r.code == 235, r
    send_one(g.port)
    a.wait_messages(1)


def test_max_conns_freed_after_worker_shutdown_timeout(smtpgate,
                                                       make_backend):
    """An old worker that worker_shutdown_timeout ends with a session
    still relayed gives that session's max_conns slot back: the new
    workers share the group's counters (its server list is the same)."""
    a = make_backend()
    mail = upstream_conf("pool", [f"{a.address} max_conns=1"])
    g = smtpgate(gatelib.conf(proxy_pass="pool", mail=mail,
                              top="worker_shutdown_timeout 500ms;"))
    held = hold_relay(g)
    try:
        a.wait_open(1)
        old = g.workers()
        g.reload()
        g.wait_old_workers_gone(old)
        a.wait_open(0)
        r = auth_reply(g)
        assert r.code == 235, r
        send_one(g.port)
        a.wait_messages(1)
    finally:
        held.close()


def test_reload_keeps_the_health_of_an_unchanged_group(smtpgate,
                                                       make_backend):
    """A peer marked down stays down across a reload that keeps the
    group's servers (no new "is down", no session tries it); a reload
    that changes the list starts afresh, and the peer is found down
    again.  With fails=2 the first failed probe is only an info line."""
    good, gone = make_backend(), make_backend()
    gone.stop()

    def conf(peers):
        return gatelib.conf(proxy_pass="pool", workers=2, mail=upstream_conf(
            "pool", [p.address for p in peers],
            body="        health_check interval=200ms timeout=1s fails=2;"))

    g = smtpgate(conf([gone, good]))
    g.wait_log(rf"upstream pool: server {gone.address} is down: health "
               r"check failed: connect\(\) failed")
    log = g.error_log()
    first = log.index(f"server {gone.address} is down")
    assert re.search(rf"\[info\] .*upstream pool: health check of server "
                     rf"{gone.address} failed: connect\(\) failed",
                     log[:first]), log[:first]

    old = g.workers()
    g.reload(conf([gone, good]))
    g.wait_old_workers_gone(old)
    mark = g.log_mark()
    for _ in range(4):
        send_one(g.port)
    good.wait_messages(4)
    time.sleep(1)                       # several probe intervals
    since = g.log_since(mark)
    assert "is down" not in since and f"backend {gone.address}" not in since

    third = make_backend()
    old = g.workers()
    g.reload(conf([gone, good, third]))
    g.wait_old_workers_gone(old)
    g.wait_log(rf"upstream pool: server {gone.address} is down", since=mark)


def test_no_pipes_for_splice_still_relays(smtpgate, sink):
    """With no descriptor left for the two pipes, the session stays with
    its buffers: the pumps, which stopped reading at 256 KB to switch,
    read on (the relay posts itself an event, since bytes already in the
    socket would not bring another), the failure is logged once, and
    the message arrives whole."""
    limit = 64                     # worker_rlimit_nofile's least
    g = smtpgate(gatelib.conf(backend=sink, mail="    proxy_splice on;",
                              top=f"worker_rlimit_nofile {limit};"))
    (worker,) = g.workers()
    fds = [int(f) for f in os.listdir(f"/proc/{worker}/fd")]
    assert max(fds) < limit
    # Fill the worker with idle clients until the session's two sockets
    # and one more descriptor are left: a pipe needs two.
    idle = []
    try:
        for _ in range(limit - len(fds) - 3):
            c = gatelib.RawSmtp("127.0.0.1", g.port, timeout=10)
            idle.append(c)
            assert c.reply().code == 220
        mark = g.log_mark()
        relay_big(g, sink, 300 * 1024, timeout=60)
        g.wait_log(r"pipe2\(\) failed, relaying without splice", since=mark)
        log = g.log_since(mark)
        assert log.count("pipe2() failed") == 1
        assert "with splice from here on" not in log
    finally:
        for c in idle:
            c.close()
