"""Draining a backend and setting its weight at run time: POST
/upstreams/GROUP/PEER/drain, /ready and /weight=N on the status
listener (status_write on), driven with curl, with
sessions through smtpgate to real aiosmtpd backends and two workers, so
that the drain must hold across workers.

Checked: a drained peer gets no new session while the session it has
goes on and delivers; the notice line; /status, /metrics
(upstream_peer_draining, upstream_peer_up); ready lets sessions in
again; backups take over when every primary drains, 451 when all do; a
reload keeps the drain; a weight that shares sessions out anew, back to
the configured one, refused values, and a consistent hash group's
refusal (409); IPv6 peers named with brackets, escaped or
not; refusals: writes off (403), status_allow and status_write_allow
(403), other methods
(405 with Allow: POST), unknown groups, peers and actions and bad
escapes (404); the configuration error.
"""

import json
import re
import subprocess

import pytest

from lib import gate as gatelib
from lib import net

from test_config import assert_failed, conf_test, line_of, make  # noqa: F401
from test_status import curl, metrics, raw_http, status_line, value
from test_upstream import (NO_BACKEND, auth_reply, hold_relay, send_one,
                           upstream_conf)


def conf(peers, write=True, extra="", workers=2, **kw):
    mail = ("    status_listen 127.0.0.1:@PORTS@;\n"
            + ("    status_write on;\n" if write else "")
            + upstream_conf("pool", peers) + extra)
    return gatelib.conf(proxy_pass="pool", workers=workers, mail=mail, **kw)


def post(g, group, peer, action, *args):
    """(HTTP code, body) of one POST, the peer put in the path as is."""
    r = subprocess.run(
        ["curl", "-sS", "-g", "--max-time", "20", "-X", "POST", "-o", "-",
         "-w", "\n%{http_code}", *args,
         f"http://127.0.0.1:{g.ports['PORTS']}/upstreams/{group}/{peer}/"
         f"{action}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    body, code = r.stdout.rsplit("\n", 1)
    return int(code), body


def peer_json(g, address):
    (group,) = [u for u in json.loads(curl(g, "/status"))["upstreams"]
                if u["name"] == "pool"]
    (peer,) = [p for p in group["peers"] if p["address"] == address]
    return peer


def count(backends):
    return [len(b.messages) for b in backends]


def test_drain_and_ready(smtpgate, make_backend):
    a, b = make_backend(), make_backend()
    g = smtpgate(conf([a.address, b.address]))
    # a session relayed to a before the drain
    held = []
    for _ in range(6):
        c = hold_relay(g)
        held.append(c)
        if a.open_connections:
            break
    a.wait_open(1)
    code, body = post(g, "pool", a.address, "drain")
    assert code == 200, body
    r = json.loads(body)
    assert r == {"upstream": "pool", "address": a.address, "draining": True,
                 "weight": 1, "changed": True, "up": False,
                 "active": r["active"]}
    assert r["active"] >= 1
    g.wait_log(rf"\[notice\] .*upstream pool: server {a.address} "
               r"draining: no new sessions by status client 127\.0\.0\.1 "
               r"\(\d+ sessions? open\)")
    # idempotent: the same again changes nothing and logs nothing
    code, body = post(g, "pool", a.address, "drain")
    assert code == 200 and json.loads(body)["changed"] is False
    # new sessions all go to b, in both workers
    before = count([a, b])
    for _ in range(8):
        send_one(g.port)
    b.wait_messages(before[1] + 8)
    assert len(a.messages) == before[0]
    # the session a had goes on and delivers there
    c = held[-1]
    assert c.cmd("MAIL FROM:<held@example.org>").code == 250
    assert c.cmd("RCPT TO:<r@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    assert c.cmd("Subject: held\r\n\r\nx\r\n.").code == 250
    assert c.cmd("QUIT").code == 221
    for h in held:
        h.close()
    msgs = [m for m in a.wait_messages(before[0] + 1)
            if m.mail_from == "held@example.org"]
    assert len(msgs) == 1
    # what operators read
    assert peer_json(g, a.address)["draining"] is True
    assert peer_json(g, a.address)["up"] is False
    assert peer_json(g, b.address)["draining"] is False
    m = metrics(g)
    assert value(m, "smtpgate_upstream_peer_draining", upstream="pool",
                 peer=a.address) == 1
    assert value(m, "smtpgate_upstream_peer_up", upstream="pool",
                 peer=a.address) == 0
    assert value(m, "smtpgate_upstream_peer_draining", upstream="pool",
                 peer=b.address) == 0
    # ready: a takes sessions again
    code, body = post(g, "pool", a.address, "ready")
    assert code == 200 and json.loads(body)["draining"] is False
    g.wait_log(rf"upstream pool: server {a.address} ready: takes sessions "
               r"again by status client")
    n = len(a.messages)
    for _ in range(8):
        send_one(g.port)
    a.wait_messages(n + 1)


def test_backups_then_nothing(smtpgate, make_backend):
    """Draining every primary sends sessions to the backup; draining the
    backup too leaves nothing, and clients are told 451."""
    a, b, spare = make_backend(), make_backend(), make_backend()
    g = smtpgate(conf([a.address, b.address, f"{spare.address} backup"]))
    for p in (a, b):
        assert post(g, "pool", p.address, "drain")[0] == 200
    send_one(g.port)
    spare.wait_messages(1)
    assert post(g, "pool", spare.address, "drain")[0] == 200
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND
    g.wait_log(r"every server is down or busy")
    assert count([a, b]) == [0, 0]


def hold_on(g, backends, n):
    """n logged-in sessions, each relayed: {backend: [sessions]}."""
    out = {be: [] for be in backends}
    for _ in range(n):
        before = [be.connections for be in backends]
        c = hold_relay(g)
        (landed,) = [be for be, k in zip(backends, before)
                     if be.connections > k]
        out[landed].append(c)
    return out


def test_close_takes_a_server_out_at_once(smtpgate, make_backend):
    """close: the server drains, and the sessions relayed to it are
    closed within a second (421 at a command boundary, then the close),
    in both workers, while the other server's go on; ready brings it
    back."""
    a, b = make_backend(), make_backend()
    g = smtpgate(conf([a.address, b.address]))
    held = hold_on(g, [a, b], 6)
    n = len(held[a])
    assert n and held[b], held
    a.wait_open(n)
    code, body = post(g, "pool", a.address, "close")
    assert code == 200, body
    r = json.loads(body)
    assert (r["draining"], r["changed"], r["active"]) == (True, True, n), r
    g.wait_log(rf"\[notice\] .*upstream pool: server {a.address} taken "
               rf"out of service by status client 127\.0\.0\.1: its {n} "
               r"sessions? closed within a second")
    for c in held[a]:
        reply = c.reply()
        assert (reply.code, reply.last) == (
            421, "4.4.2 mx.test Backend taken out of service, try again "
                 "later"), reply
        c.expect_closed()
    a.wait_open(0)
    g.wait_log(r"\[notice\] .*closing the session: backend "
               + re.escape(a.address) + r" of upstream pool was taken out "
               r"of service \(the status API\)")
    # b's sessions go on
    for c in held[b]:
        assert c.cmd("NOOP").code == 250
    # new sessions go to b only, until ready
    for _ in range(4):
        send_one(g.port)
    assert not a.messages
    assert post(g, "pool", a.address, "ready")[0] == 200
    for _ in range(4):
        send_one(g.port)
    a.wait_messages(1)
    for c in held[a] + held[b]:
        c.close()


def test_weight(smtpgate, make_backend):
    """weight=3 on one of two servers: of the next 8 sessions it takes 6
    (smooth weighted round robin, shared by both workers); weight=default
    puts the configured weight back."""
    a, b = make_backend(), make_backend()
    g = smtpgate(conf([a.address, b.address]))
    code, body = post(g, "pool", a.address, "weight=3")
    assert code == 200, body
    r = json.loads(body)
    assert (r["weight"], r["changed"], r["draining"]) == (3, True, False)
    g.wait_log(rf"\[notice\] .*upstream pool: server {a.address} weight 3 "
               r"\(was 1\) by status client 127\.0\.0\.1")
    assert peer_json(g, a.address)["weight"] == 3
    assert value(metrics(g), "smtpgate_upstream_peer_weight",
                 upstream="pool", peer=a.address) == 3
    n0 = count([a, b])
    for _ in range(8):
        send_one(g.port)
    b.wait_messages(n0[1] + 2)
    a.wait_messages(n0[0] + 6)
    assert count([a, b]) == [n0[0] + 6, n0[1] + 2]
    # kept across a reload of the same group
    old = g.workers()
    g.reload()
    g.wait_workers(2, exclude=old)
    assert peer_json(g, a.address)["weight"] == 3
    code, body = post(g, "pool", a.address, "weight=default")
    assert code == 200 and json.loads(body)["weight"] == 1
    for bad in ("weight=0", "weight=1001", "weight=x", "weight=-1",
                "weight=1.5"):
        code, body = post(g, "pool", a.address, bad)
        assert code == 400, (bad, body)
        assert body.strip() == ("weight= takes 1 to 1000, or default (the "
                                "configured weight)")
    assert peer_json(g, a.address)["weight"] == 1


def test_weight_of_a_consistent_hash_group(smtpgate, make_backend):
    a, b = make_backend(), make_backend()
    g = smtpgate(conf([a.address, b.address], workers=1).replace(
        "    upstream pool {", "    upstream pool {\n"
        "        hash $auth_user consistent;"))
    code, body = post(g, "pool", a.address, "weight=5")
    assert (code, body.strip()) == (409, "A consistent hash group's "
                                         "weights are those of the "
                                         "configuration")
    # draining one is fine
    assert post(g, "pool", a.address, "drain")[0] == 200


def test_reload_keeps_the_drain(smtpgate, make_backend):
    a, b = make_backend(), make_backend()
    g = smtpgate(conf([a.address, b.address]))
    assert post(g, "pool", a.address, "drain")[0] == 200
    old = g.workers()
    g.reload()
    g.wait_workers(2, exclude=old)
    g.wait_old_workers_gone(old)
    assert peer_json(g, a.address)["draining"] is True
    for _ in range(6):
        send_one(g.port)
    b.wait_messages(6)
    assert not a.messages


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_peer(smtpgate, make_backend):
    a, b = make_backend(host=net.IPV6), make_backend()
    g = smtpgate(conf([a.address, b.address]))
    assert a.address.startswith("[::1]:")
    code, body = post(g, "pool", a.address, "drain")
    assert code == 200, body
    escaped = a.address.replace("[", "%5B").replace("]", "%5d")
    code, body = post(g, "pool", escaped, "ready")
    assert code == 200 and json.loads(body)["address"] == a.address
    assert json.loads(body)["changed"] is True


def test_refusals(smtpgate, make_backend):
    a = make_backend()
    g = smtpgate(conf([a.address], workers=1))
    for group, peer, action, text in (
            ("nosuch", a.address, "drain", "No such upstream group"),
            ("pool", "127.0.0.1:1", "drain", "No such server in the group"),
            ("pool", a.address, "maint", "Unknown action: drain, close, "
             "ready or weight=N"),
            ("pool", a.address + "%zz", "drain", "Not found: POST "
             "/upstreams/GROUP/PEER/drain"),
            ("pool", a.address + "%00", "drain", "Not found"),
            ("pool", "", "drain", "Not found")):
        code, body = post(g, group, peer, action)
        assert (code, body.strip()[:len(text)]) == (404, text), body
    # other methods: 405 naming POST
    r = raw_http(g, f"GET /upstreams/pool/{a.address}/drain HTTP/1.1\r\n"
                    "\r\n".encode())
    assert status_line(r) == "HTTP/1.1 405 Method Not Allowed"
    assert b"\r\nAllow: POST\r\n" in r
    r = raw_http(g, b"POST /status HTTP/1.1\r\n\r\n")
    assert status_line(r) == "HTTP/1.1 405 Method Not Allowed"
    assert b"\r\nAllow: GET, HEAD\r\n" in r
    # a body is read and dropped
    r = raw_http(g, f"POST /upstreams/pool/{a.address}/drain HTTP/1.1\r\n"
                    "Content-Length: 5\r\n\r\nhello".encode())
    assert status_line(r) == "HTTP/1.1 200 OK"
    assert peer_json(g, a.address)["draining"] is True
    # nothing else moved
    assert "smtpgate_info" in curl(g, "/metrics")


def test_writes_off_by_default(smtpgate, make_backend):
    a = make_backend()
    g = smtpgate(conf([a.address], write=False, workers=1))
    code, body = post(g, "pool", a.address, "drain")
    assert (code, body.strip()) == (403, "Writes are off: set status_write "
                                         "on")
    assert peer_json(g, a.address)["draining"] is False
    g.wait_log(r"status: client 127\.0\.0\.1 refused a write: status_write "
               r"is off")
    send_one(g.port)
    a.wait_messages(1)


def test_status_allow_still_applies(smtpgate, make_backend):
    a = make_backend()
    g = smtpgate(conf([a.address], workers=1,
                      extra="    status_allow 192.0.2.0/24;\n"))
    code, _ = post(g, "pool", a.address, "drain")
    assert code == 403
    send_one(g.port)                    # not drained: a still takes it
    a.wait_messages(1)


def test_status_write_allow(smtpgate, make_backend):
    """status_write_allow narrows who may write: reads go on from every
    client status_allow lets in, a write from elsewhere gets 403 and an
    info line, one from a listed address (here 127.0.0.2) is done; the
    queue's writes are held to it too."""
    a = make_backend()
    g = smtpgate(conf([a.address], workers=1, extra=(
        "    status_write_allow 127.0.0.2;\n"
        "    status_write_allow 2001:db8::/32;\n")))
    assert "smtpgate_info" in curl(g, "/metrics")
    code, body = post(g, "pool", a.address, "drain")
    assert (code, body.strip()) == \
        (403, "Writes are not allowed from this address "
              "(status_write_allow)")
    g.wait_log(r"\[info\] .*status: client 127\.0\.0\.1 refused a write "
               r"\(status_write_allow\)")
    code, _ = post(g, "pool", a.address, "drain",
                   "--interface", "127.0.0.2")
    assert code == 200
    assert peer_json(g, a.address)["draining"] is True
    out = curl(g, "/queue/flush", "-X", "POST", "-w", "\n%{http_code}")
    assert out.endswith("\n403"), out
    out = curl(g, "/queue/flush", "-X", "POST", "-w", "\n%{http_code}",
               "--interface", "127.0.0.2")
    assert out.endswith("\n200"), out


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_status_write_allow_over_ipv6(smtpgate, make_backend):
    """A status listener on [::1]: status_write_allow ::1 lets a client
    there write; 2001:db8::/32 alone would not."""
    a = make_backend()
    mail = upstream_conf("pool", [a.address])

    def make_conf(allow):
        return gatelib.conf(proxy_pass="pool", workers=1, mail=(
            "    status_listen [::1]:@PORTS@;\n"
            "    status_write on;\n"
            f"    status_write_allow {allow};\n" + mail))
    g = smtpgate(make_conf("2001:db8::/32"))
    out = curl(g, f"/upstreams/pool/{a.address}/drain", "-X", "POST",
               "-w", "\n%{http_code}", host="::1")
    assert out.endswith("\n403"), out
    g.wait_log(r"status: client ::1 refused a write \(status_write_allow\)")
    g.reload(make_conf("::1"))

    def drained():
        out = curl(g, f"/upstreams/pool/{a.address}/drain", "-X", "POST",
                   "-w", "\n%{http_code}", host="::1")
        return out if out.endswith("\n200") else None
    net.wait_until(drained, 20, what="the write allowed after the reload")


def test_status_write_allow_errors(conf_test):
    for value, why in (("300.0.0.1", "invalid"), ("10.0.0.0/33", "invalid"),
                       ("", "invalid")):
        text = make(mail=f'    status_write_allow "{value}";')
        g, r = conf_test(text)
        assert r.returncode != 0, r.stderr
        assert "status_write_allow" in r.stderr and why in r.stderr \
            and f"{g.conf_path}:{line_of(text, 'status_write_allow')}" \
            in r.stderr, r.stderr


def test_status_write_allow_without_writes_warns(conf_test):
    text = make(mail="    status_write_allow 127.0.0.1;")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr
    w = [l for l in r.stderr.splitlines() if "[warn]" in l]
    assert len(w) == 1 and '"status_write_allow" has no effect while '\
        '"status_write" is off' in w[0] and \
        f"{g.conf_path}:{line_of(text, 'status_write_allow')}" in w[0], \
        r.stderr


def test_config_error(conf_test):
    text = make(mail="    status_write yes;")
    g, r = conf_test(text)
    assert_failed(g, r, 'invalid value "yes" in "status_write" directive, '
                  'it must be "on" or "off"', line_of(text, "status_write"))
