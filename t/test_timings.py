"""How long the authentication and the backend connection took: the
variables $auth_time and $upstream_connect_time (in an access log
line), and the status listener's histograms
smtpgate_auth_duration_seconds and
smtpgate_upstream_connect_duration_seconds, per server.

The authentication service is the tests' scripted HTTP service (a mock:
it is told to answer after a delay, which no real service does on
request); the backend is aiosmtpd, told to hold its greeting."""

import os
import re

from lib import backends
from lib import gate as gatelib
from lib import net
from lib.authsvc import AuthService, ok_to
from lib.users import password

from test_status import curl


def timing_conf(svc, mail=""):
    return gatelib.conf(
        auth_file=None, proxy_pass=False,
        mail=(f"    auth_http {svc.url};\n"
              "    status_listen 127.0.0.1:@PORTS@;\n"
              "    log_format timing '$session_id [$auth_time] "
              "[$upstream_connect_time] $status';\n"
              "    access_log logs/timing.log timing;\n" + mail))


def lines(g):
    path = os.path.join(g.logdir, "timing.log")
    try:
        with open(path) as f:
            return f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []


def scrape(g, name):
    """{le or "sum" or "count": value} of one histogram of server
    mx.test."""
    out = {}
    text = curl(g, "/metrics")
    for m in re.finditer(r'^smtpgate_' + name + r'_bucket\{server="mx\.test",'
                         r'le="([^"]+)"\} (\d+)$', text, re.M):
        out[m.group(1)] = int(m.group(2))
    for part in ("sum", "count"):
        m = re.search(r'^smtpgate_' + name + '_' + part
                      + r'\{server="mx\.test"\} ([\d.]+)$', text, re.M)
        out[part] = float(m.group(1))
    return out


def test_auth_and_backend_times(smtpgate):
    svc = AuthService().start()
    b = backends.AiosmtpdBackend(delays={"CONNECT": 0.3}).start()
    try:
        svc.default = ok_to(b, delay=0.4)
        g = smtpgate(timing_conf(svc))
        before_auth = scrape(g, "auth_duration_seconds")
        before_upc = scrape(g, "upstream_connect_duration_seconds")
        with g.session() as c:
            c.ehlo("client.test")
            assert c.auth_plain("alice", password("alice")).code == 235
            assert c.mail("a@example.org", ["b@example.org"],
                          b"Subject: t\r\n\r\nx\r\n").code == 250
            c.cmd("QUIT")
        # a session that never logs in measures nothing
        with g.session() as c:
            c.ehlo("client.test")
            c.cmd("QUIT")

        # (the harness's readiness probe has a line too, before ours)
        def two():
            ls = [l for l in lines(g) if l.endswith(" quit")]
            return ls[-2:] if len(ls) >= 3 else None
        first, second = net.wait_until(two, 30, what="our two lines")
        m = re.fullmatch(r"\S+ \[(\d+\.\d{3})\] \[(\d+\.\d{3})\] quit", first)
        assert m, first
        auth, upc = float(m.group(1)), float(m.group(2))
        assert 0.4 <= auth < 10, first
        assert 0.3 <= upc < 10, first
        # (an empty value is written "-", as nginx writes it)
        assert re.fullmatch(r"\S+ \[-\] \[-\] quit", second), second

        after = scrape(g, "auth_duration_seconds")
        assert after["count"] - before_auth["count"] == 1
        assert after["sum"] - before_auth["sum"] >= 0.4
        assert after["+Inf"] - before_auth["+Inf"] == 1
        assert after["0.250"] == before_auth["0.250"]
        assert after["10.000"] - before_auth["10.000"] == 1
        # cumulative: every bucket at least the one below it
        les = [k for k in after if k not in ("sum", "count")]
        values = [after[k] for k in les]
        assert values == sorted(values) and les[-1] == "+Inf", after

        after = scrape(g, "upstream_connect_duration_seconds")
        assert after["count"] - before_upc["count"] == 1
        assert after["sum"] - before_upc["sum"] >= 0.3
        assert after["0.250"] == before_upc["0.250"]
        assert after["+Inf"] - before_upc["+Inf"] == 1
    finally:
        b.stop()
        svc.stop()


def test_failed_authentication_is_timed_too(smtpgate):
    """A refusal takes time as well: measured, no backend connection."""
    from lib.authsvc import refuse
    svc = AuthService().start()
    try:
        svc.default = refuse(delay=0.2)
        g = smtpgate(timing_conf(svc, mail="    smtp_auth_fail_delay 0;\n"))
        with g.session() as c:
            c.ehlo("client.test")
            assert c.auth_plain("alice", "wrong").code == 535
            c.cmd("QUIT")

        def one():
            ls = [l for l in lines(g) if l.endswith(" quit")]
            return ls[-1] if ls and "[0." in ls[-1] else None
        line = net.wait_until(one, 30, what="the session's line")
        m = re.fullmatch(r"\S+ \[(\d+\.\d{3})\] \[-\] quit", line)
        assert m and float(m.group(1)) >= 0.2, line
        assert scrape(g, "upstream_connect_duration_seconds")["count"] == 0
    finally:
        svc.stop()


def test_unavailable_authentication_is_counted(smtpgate):
    """The service hangs up without answering: the client hears 454, the
    time is measured, and smtpgate_auth_tempfails_total (and /status's
    auth_tempfails) count it, apart from the 535s."""
    import json
    from lib.authsvc import Answer
    svc = AuthService().start()
    try:
        svc.default = Answer(drop=True)
        g = smtpgate(timing_conf(svc))
        with g.session() as c:
            c.ehlo("client.test")
            r = c.auth_plain("alice", password("alice"))
            assert r.code == 454, r
            c.cmd("QUIT")

        def counted():
            m = re.search(r'^smtpgate_auth_tempfails_total\{server='
                          r'"mx\.test"\} (\d+)$', curl(g, "/metrics"), re.M)
            return m and m.group(1) == "1"
        net.wait_until(counted, 20, what="the 454 counted")
        (srv,) = json.loads(curl(g, "/status"))["servers"]
        assert (srv["auth_tempfails"], srv["auth_failures"]) == (1, 0)
        assert scrape(g, "auth_duration_seconds")["count"] == 1
    finally:
        svc.stop()


def test_auth_http_services_counted(smtpgate, backend):
    """Two services, the first not listening: the login goes through
    the second; /metrics and /status count the first's failure (and say
    it is skipped now) and the second's answer, across workers."""
    import json
    svc = AuthService().start()
    down = f"127.0.0.1:{net.free_port('127.0.0.1')}"
    try:
        svc.default = ok_to(backend)
        g = smtpgate(gatelib.conf(
            auth_file=None, proxy_pass=False, workers=2,
            mail=(f"    auth_http http://{down}/auth {svc.url};\n"
                  "    auth_http_fail_timeout 60s;\n"
                  "    status_listen 127.0.0.1:@PORTS@;\n")))
        with g.session() as c:
            c.ehlo("client.test")
            assert c.auth_plain("alice", password("alice")).code == 235
            c.cmd("QUIT")
        text = curl(g, "/metrics")

        def metric(name, url):
            m = re.search(r'^smtpgate_' + name + r'\{service="'
                          + re.escape(url) + r'"\} (\d+)$', text, re.M)
            assert m, (name, url, text[-2000:])
            return int(m.group(1))
        first = f"http://{down}/auth"
        assert metric("auth_http_failures_total", first) == 1
        assert metric("auth_http_answers_total", first) == 0
        assert metric("auth_http_service_up", first) == 0
        assert metric("auth_http_answers_total", svc.url) == 1
        assert metric("auth_http_failures_total", svc.url) == 0
        assert metric("auth_http_service_up", svc.url) == 1
        st = json.loads(curl(g, "/status"))["auth_services"]
        assert st == [{"url": first, "answered": 0, "failed": 1,
                       "up": False},
                      {"url": svc.url, "answered": 1, "failed": 0,
                       "up": True}], st
    finally:
        svc.stop()
