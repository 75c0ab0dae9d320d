"""resolver: the client's host name, looked up and confirmed.

With `resolver`, smtpgate asks for the PTR record of the client's address
and then for the addresses of the name it gives; the name counts only
when it resolves back to the client.  It then goes to the auth service
as Client-Host and to the backend as XCLIENT NAME; otherwise these say
[UNAVAILABLE] (no name, or no resolver) or [TEMPUNAVAIL] (DNS failed),
as nginx's do.

The name servers are a real dnsmasq (authoritative for *.test and the
loopback reverse zones) and, for what no real server does on demand
(SERVFAIL, silence, forged or malformed answers), a scripted UDP server
(lib.dns.ScriptedDns, a mock).  Clients connect from chosen loopback
addresses (127.0.0.2, ...) so that each test controls what the PTR says.
"""

import base64
import os
import re
import struct
import threading

import pytest

from lib import dns
from lib import gate as gatelib
from lib import net
from lib import postfix as postfixlib
from lib.authsvc import AuthService, Nginx, ok_to
from lib.smtp import RawSmtp
from lib.users import password

MSG = b"Subject: named\r\n\r\nhello\r\n"


def _servers(start):
    """A factory fixture's body: start(**kw) -> a started server, each
    stopped at teardown."""
    started = []

    def make(*args, **kw):
        d = start(*args, **kw)
        started.append(d)
        return d
    yield make
    for d in started:
        d.stop()


@pytest.fixture
def dnsmasq():
    reason = dns.skip_reason()
    if reason:
        pytest.skip(reason)
    yield from _servers(lambda **kw: dns.Dnsmasq(**kw).start())


@pytest.fixture
def scripted_dns():
    yield from _servers(lambda behaviour, **kw:
                        dns.ScriptedDns(behaviour, **kw).start())


@pytest.fixture
def svc():
    s = AuthService().start()
    yield s
    s.stop()


STANDARD = dict(host_records=(("client.test", "127.0.0.2"),
                              ("liar.test", "127.0.0.99"),
                              ("v6.test", "::1")),
                ptr_records=(("127.0.0.3", "liar.test"),
                             ("127.0.0.4", "bad_name!.test")))


def resolver_gate(smtpgate, backend, resolver, svc=None, mail="", **kw):
    """auth_http to svc when given (to see Client-Host), else the users
    file; XCLIENT on to the backend."""
    lines = [f"    resolver {resolver};", "    xclient on;", mail]
    if svc is not None:
        lines.insert(0, f"    auth_http {svc.url};")
        kw["auth_file"] = None
    kw.setdefault("level", "debug")
    return smtpgate(gatelib.conf(backend=backend, mail="\n".join(lines),
                                 **kw))


def login_and_send(g, source="127.0.0.2", user="alice"):
    with g.connect(source=source) as c:
        assert c.greeting().code == 220
        c.ehlo("helo.example")
        r = c.auth_plain(user, password(user))
        assert r.code == 235, r
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
        assert c.cmd("QUIT").code == 221


def xclient_names(backend):
    out = []
    for s in backend.sessions:
        for verb, arg in s.commands:
            if verb == "XCLIENT":
                out += [w[5:] for w in arg.split() if w.startswith("NAME=")]
    return out


def asked(d, qtype="PTR", about="2.0.0.127.in-addr.arpa"):
    """How often d was asked about the test client (the harness's own
    readiness probe, from 127.0.0.1, is looked up too)."""
    return d.queries(qtype).count(about)


def client_hosts(svc):
    return [r.header("Client-Host") for r in svc.requests]


# ==========================================================================
# 1. Names that count, and names that do not


def test_confirmed_name_reaches_auth_service_and_backend(
        smtpgate, xclient_backend, dnsmasq, svc):
    d = dnsmasq(**STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    xclient_backend.wait_messages(1)
    assert client_hosts(svc) == ["client.test"]
    assert xclient_names(xclient_backend) == ["client.test"]
    g.wait_log(r"client host name: client\.test", since=mark)
    # the PTR, then the A record of its name: forward confirmation
    assert asked(d) == 1
    assert asked(d, "A", "client.test") == 1


@pytest.mark.parametrize("source,why", [
    ("127.0.0.5", r"\[UNAVAILABLE\]: the name does not exist \(NXDOMAIN\)"),
    ("127.0.0.3", r"\[UNAVAILABLE\]: liar\.test: the PTR record's name "
                  r"does not resolve to the client's address"),
    ("127.0.0.4", r"\[UNAVAILABLE\]: bad_name!\.test: the PTR record's "
                  r"name is not a host name"),
])
def test_names_that_do_not_count(smtpgate, xclient_backend, dnsmasq, svc,
                                 source, why):
    """No PTR record; a PTR to a name whose address is another (anyone
    can write any name into their reverse zone); a PTR to something no
    host name looks like.  The session goes on, the name is
    [UNAVAILABLE], and the log says why."""
    d = dnsmasq(**STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g, source=source)
    xclient_backend.wait_messages(1)
    assert client_hosts(svc) == ["[UNAVAILABLE]"]
    assert xclient_names(xclient_backend) == ["[UNAVAILABLE]"]
    g.wait_log("client host name " + why, since=mark)


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
@pytest.mark.parametrize("ipv6,expected", [("", "v6.test"),
                                          (" ipv6=off", "[UNAVAILABLE]")])
def test_ipv6_client(smtpgate, xclient_backend, dnsmasq, svc, ipv6,
                     expected):
    """An IPv6 client is looked up in ip6.arpa and confirmed by AAAA;
    ipv6=off looks no IPv6 client up (as nginx, which then finds no
    address to confirm)."""
    d = dnsmasq(**STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address + ipv6, svc=svc,
                      listen=("[::1]:@PORT@",))
    with RawSmtp("::1", g.listen_addresses()[0][1], 30) as c:
        assert c.greeting().code == 220
        c.ehlo("helo.example")
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
        c.cmd("QUIT")
    xclient_backend.wait_messages(1)
    assert client_hosts(svc) == [expected]
    assert xclient_names(xclient_backend) == [expected]
    # (the harness's readiness probe comes from ::1 too: its lookup may
    # have asked once more)
    if ipv6:
        assert asked(d, "AAAA", "v6.test") == 0
    else:
        assert asked(d, "AAAA", "v6.test") >= 1


def test_ipv6_name_server(smtpgate, xclient_backend, scripted_dns, svc):
    if not net.ipv6_available():
        pytest.skip("no IPv6 loopback")
    d = scripted_dns(dns.zone({
        ("2.0.0.127.in-addr.arpa", dns.PTR): ["client.test"],
        ("client.test", dns.A): ["127.0.0.2"]}), host=net.IPV6)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test"]


def test_without_resolver_the_name_is_unavailable(smtpgate, xclient_backend,
                                                   svc):
    g = smtpgate(gatelib.conf(backend=xclient_backend, auth_file=None,
                              mail=f"    auth_http {svc.url};\n"
                                   "    xclient on;"))
    login_and_send(g, source="127.0.0.2")
    xclient_backend.wait_messages(1)
    assert client_hosts(svc) == ["[UNAVAILABLE]"]
    assert xclient_names(xclient_backend) == ["[UNAVAILABLE]"]
    assert "client host name" not in g.error_log()


@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.3", "127.0.0.4",
                                    "127.0.0.5"])
def test_client_host_as_nginx_sends_it(smtpgate, backend, dnsmasq, svc,
                                       source):
    """nginx's own mail module with the same resolver, side by side: the
    same Client-Host for a confirmed name, a PTR that does not resolve
    back and no PTR.  One known difference: a PTR to something that is
    no host name ("bad_name!.test") is [TEMPUNAVAIL] in nginx; smtpgate
    says [UNAVAILABLE], since asking again cannot change it (Postfix
    calls such a client "unknown" for good too)."""
    if not (os.access(Nginx.BIN, os.X_OK)
            and os.path.exists(Nginx.MAIL_MODULE)):
        pytest.skip("nginx or its mail module (libnginx-mod-mail) missing")
    d = dnsmasq(**STANDARD)
    svc.default = ok_to(backend)
    g = smtpgate(gatelib.conf(auth_file=None, mail=(
        f"    auth_http {svc.url};\n    resolver {d.address};")))
    ngx = Nginx(f"""
mail {{
    server_name mx.test;
    auth_http {svc.hostport}/auth;
    resolver {d.address};
    xclient off;
    server {{ listen 127.0.0.1:@PORT@; protocol smtp; }}
}}
""", mail_module=True).start()
    try:
        hosts = {}
        for name, port in (("smtpgate", g.port), ("nginx", ngx.port)):
            first = len(svc.requests)
            with RawSmtp("127.0.0.1", port, 30, source=source) as c:
                assert c.greeting().code == 220
                c.ehlo("helo.example")
                assert c.auth_plain("alice", password("alice")).code == 235
                c.cmd("QUIT")
            (req,) = svc.wait_requests(first + 1)[first:]
            hosts[name] = req.header("Client-Host")
    finally:
        ngx.stop()
    if source == "127.0.0.4":
        assert hosts == {"smtpgate": "[UNAVAILABLE]",
                         "nginx": "[TEMPUNAVAIL]"}, hosts
    else:
        assert hosts["smtpgate"] == hosts["nginx"], hosts


def test_postfix_writes_the_name_into_received(smtpgate, make_postfix,
                                               dnsmasq):
    """A real Postfix takes XCLIENT NAME: its Received header names the
    client as smtpgate found it."""
    d = dnsmasq(**STANDARD)
    postfix = make_postfix()
    g = smtpgate(gatelib.conf(proxy_pass=postfix.address,
                              mail=f"    resolver {d.address};"))
    login_and_send(g, source="127.0.0.2")
    (raw,) = postfix.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert received.startswith(
        "from helo.example (client.test [127.0.0.2]) by postfix.test"), \
        received


def test_the_address_from_a_proxy_header_is_looked_up(
        smtpgate, xclient_backend, dnsmasq, svc):
    """Behind a trusted load balancer the client is the one the PROXY
    header names, and that address is looked up."""
    d = dnsmasq(**STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc,
                      mail="    set_real_ip_from 127.0.0.1;",
                      listen=("127.0.0.1:@PORT@ proxy_protocol",))
    with RawSmtp("127.0.0.1", g.port, 30) as c:
        c.send(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 587\r\n")
        assert c.greeting().code == 220
        c.ehlo("helo.example")
        assert c.auth_plain("alice", password("alice")).code == 235
        c.cmd("QUIT")
    assert client_hosts(svc) == ["client.test"]
    assert asked(d) == 1


def test_map_routes_by_remote_host(smtpgate, make_backend, dnsmasq):
    """$remote_host is the confirmed name (empty without one): a map
    over it picks the backend."""
    d = dnsmasq(**STANDARD)
    named, other = make_backend(), make_backend()
    g = smtpgate(gatelib.conf(proxy_pass="$backend", mail=(
        f"    resolver {d.address};\n"
        "    map $remote_host $backend {\n"
        f"        ~\\.test$  {named.address};\n"
        f"        default     {other.address};\n"
        "    }")))
    login_and_send(g, source="127.0.0.2")       # client.test
    login_and_send(g, source="127.0.0.3")       # liar.test: not confirmed
    login_and_send(g, source="127.0.0.5")       # no PTR
    assert len(named.wait_messages(1)) == 1
    assert len(other.wait_messages(2)) == 2


def test_anonymous_relay_gets_the_name_too(smtpgate, xclient_backend,
                                           dnsmasq, svc):
    """smtp_auth none: the auth request made at RCPT carries the name."""
    d = dnsmasq(**STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc,
                      mail="    smtp_auth none;")
    with g.connect(source="127.0.0.2") as c:
        assert c.greeting().code == 220
        c.ehlo("helo.example")
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
        c.cmd("QUIT")
    assert client_hosts(svc) == ["client.test"]


# ==========================================================================
# 2. When DNS fails


def test_dead_name_server_tempunavail_at_once(smtpgate, xclient_backend,
                                              svc):
    """Nothing listens on the resolver's port: the ICMP port unreachable
    ends the lookup (not resolver_timeout), the name is [TEMPUNAVAIL],
    the login and the message go through."""
    port = dns.free_udp_tcp_port()
    g = resolver_gate(smtpgate, xclient_backend, f"127.0.0.1:{port}",
                      svc=svc, mail="    resolver_timeout 300s;")
    mark = g.log_mark()
    login_and_send(g)
    assert client_hosts(svc) == ["[TEMPUNAVAIL]"]
    assert xclient_names(xclient_backend) == ["[TEMPUNAVAIL]"]
    g.wait_log(r"the name server 127\.0\.0\.1:%d is not listening" % port,
               since=mark)
    g.wait_log(r"client host name \[TEMPUNAVAIL\]: no name server is "
               r"listening", since=mark)


def test_second_name_server_answers_when_first_is_dead(
        smtpgate, xclient_backend, dnsmasq, svc):
    d = dnsmasq(**STANDARD)
    dead = dns.free_udp_tcp_port()
    g = resolver_gate(smtpgate, xclient_backend,
                      f"127.0.0.1:{dead} {d.address}", svc=svc)
    for _ in range(2):        # each server in turn comes first once
        login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test", "client.test"]


def test_silent_name_server_times_out(smtpgate, xclient_backend,
                                      scripted_dns, svc):
    """No answer at all: the query is sent again, and after
    resolver_timeout the name is [TEMPUNAVAIL]; AUTH waited for it and
    then went on."""
    d = scripted_dns(lambda msg: [])
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc,
                      mail="    resolver_timeout 3s;")
    mark = g.log_mark()
    login_and_send(g)
    assert client_hosts(svc) == ["[TEMPUNAVAIL]"]
    g.wait_log(r"client host name \[TEMPUNAVAIL\]: no answer in time "
               r"\(resolver_timeout\)", since=mark)
    sent = [q for q in d.queries() if q[1] == "2.0.0.127.in-addr.arpa"]
    assert len(sent) >= 2 and len(set(sent)) == 1, sent


@pytest.mark.parametrize("rcode,expected,why", [
    (2, "[TEMPUNAVAIL]", r"the name server failed \(SERVFAIL\)"),
    (5, "[TEMPUNAVAIL]", r"the name server refused the query \(REFUSED\)"),
    (1, "[UNAVAILABLE]", r"the name server could not read the query"),
])
def test_error_answers(smtpgate, xclient_backend, scripted_dns, svc, rcode,
                       expected, why):
    d = scripted_dns(lambda msg: [dns.answer(msg, rcode=rcode)])
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g)
    assert client_hosts(svc) == [expected]
    g.wait_log(r"client host name .*" + why, since=mark)


def test_auth_waits_for_a_slow_answer(smtpgate, xclient_backend,
                                      scripted_dns, svc):
    """The lookup runs beside the greeting and EHLO; AUTH waits for the
    rest of it and the request carries the name."""
    zone = dns.zone({("2.0.0.127.in-addr.arpa", dns.PTR): ["client.test"],
                     ("client.test", dns.A): ["127.0.0.2"]})
    d = scripted_dns(lambda msg: [(1.0, m) for m in zone(msg)])
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test"]
    g.wait_log("waiting for the client's host name", since=mark)


def test_client_gone_while_looking_up(smtpgate, xclient_backend,
                                      scripted_dns):
    """Sessions that end while their lookup waits leave nothing behind:
    the next session is served, the worker holds no stray state."""
    release = threading.Event()
    zone = dns.zone({("2.0.0.127.in-addr.arpa", dns.PTR): ["client.test"],
                     ("client.test", dns.A): ["127.0.0.2"]})
    d = scripted_dns(lambda msg: [] if not release.is_set() else zone(msg))
    g = resolver_gate(smtpgate, xclient_backend, d.address)
    for _ in range(3):
        with g.connect(source="127.0.0.2") as c:
            assert c.greeting().code == 220
            c.ehlo("helo.example")
            c.send(b"AUTH PLAIN " + base64.b64encode(
                b"\0alice\0" + password("alice").encode()) + b"\r\n")
        # closed before any answer
    release.set()
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    g.wait_log(r"client host name: client\.test", since=mark)


# ==========================================================================
# 3. Hostile and broken answers


def _ptr_answer_for(msg, target="client.test"):
    return dns.answer(msg, [dns.rr(dns.query_of(msg)[1], dns.PTR, target)])


def _a_answer_for(msg, addr="127.0.0.2"):
    return dns.answer(msg, [dns.rr(dns.query_of(msg)[1], dns.A, addr)])


def _good(msg):
    qtype = dns.query_of(msg)[2]
    return _ptr_answer_for(msg) if qtype == dns.PTR else _a_answer_for(msg)


def _loop_ptr(msg):
    # the record's owner name is a pointer to itself
    base = dns.answer(msg, count=1)
    at = len(base)
    return base + struct.pack(">H", 0xc000 | at) + struct.pack(
        ">HHIH", dns.PTR, 1, 300, 2) + struct.pack(">H", 0xc000 | at)


def _forward_pointer(msg):
    base = dns.answer(msg, count=1)
    return base + struct.pack(">H", 0xc000 | (len(base) + 20)) + b"\0" * 30


HOSTILE = {
    # forged: another id first, then the real answer
    "wrong id": lambda m: [dns.answer(m, [dns.rr(dns.query_of(m)[1],
                                                  dns.PTR, "evil.test")],
                                      qid=(dns.query_of(m)[0] + 1) & 0xffff),
                           _good(m)],
    # an answer to another question, then the real one
    "other question": lambda m: [dns.answer(
        m, [dns.rr("9.9.9.9.in-addr.arpa", dns.PTR, "evil.test")],
        question=dns.encode_name("9.9.9.9.in-addr.arpa")
        + struct.pack(">HH", dns.PTR, 1)), _good(m)],
    "garbage": lambda m: [b"\xff" * 7, b"\x00" * 12, bytes(range(256)),
                          _good(m)],
    "query echoed": lambda m: [m, _good(m)],
    "compression loop": lambda m: [_loop_ptr(m), _good(m)],
    "forward pointer": lambda m: [_forward_pointer(m), _good(m)],
    "count beyond the data": lambda m: [dns.answer(m, count=40), _good(m)],
    "record cut short": lambda m: [_good(m)[:-3], _good(m)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_messages_are_ignored(smtpgate, xclient_backend,
                                      scripted_dns, svc, case):
    """Each bad message is ignored (and logged); the right answer after
    it is taken."""
    d = scripted_dns(HOSTILE[case])
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test"]
    g.wait_log(r"a DNS message from 127\.0\.0\.1:\d+ (ignored: |for no "
               r"query in flight)", since=mark)


@pytest.mark.parametrize("label", [
    b"evil\r\nX-Injected: 1", b"sp ace", b"quote\"d", b"\xc3\xa9t\xc3\xa9",
    b"a" * 64, b"dot.inside",
])
def test_ptr_names_that_could_inject(smtpgate, xclient_backend,
                                     scripted_dns, svc, label):
    """A PTR name with CR LF, spaces, quotes, UTF-8, an over-long label
    or a dot inside a label never reaches a header or a command: the
    name is [UNAVAILABLE]."""
    def behave(msg):
        if dns.query_of(msg)[2] != dns.PTR:
            return [_a_answer_for(msg)]
        return [dns.answer(msg, [dns.rr(dns.query_of(msg)[1], dns.PTR,
                                        dns.encode_name([label, b"test"]))])]
    d = scripted_dns(behave)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["[UNAVAILABLE]"]
    assert xclient_names(xclient_backend) == ["[UNAVAILABLE]"]
    assert all(b"X-Injected" not in r.head for r in svc.requests)


def test_cname_chain_is_followed(smtpgate, xclient_backend, scripted_dns,
                                 svc):
    """RFC 2317 classless reverse delegation: the PTR sits behind a
    CNAME, in the same answer."""
    def behave(msg):
        qid, name, qtype = dns.query_of(msg)
        if qtype == dns.PTR:
            return [dns.answer(msg, [
                dns.rr(name, dns.CNAME, "2.0/25.0.0.127.in-addr.arpa"),
                dns.rr("2.0/25.0.0.127.in-addr.arpa", dns.PTR,
                       "client.test")])]
        return [dns.answer(msg, [dns.rr(name, dns.CNAME, "real.test"),
                                 dns.rr("real.test", dns.A, "127.0.0.2")])]
    d = scripted_dns(behave)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test"]


def _truncated_ptr(msg):
    """UDP: a PTR query gets a truncated answer without records (as a
    name server does when they do not fit 512 bytes), an A query the
    client's address."""
    if dns.query_of(msg)[2] == dns.PTR:
        return [dns.answer(msg, flags=0x8380)]
    return [_a_answer_for(msg)]


def _many_ptrs(msg):
    """40 PTR records: over 512 bytes, as for a shared hosting address."""
    name = dns.query_of(msg)[1]
    return [dns.answer(msg, [dns.rr(name, dns.PTR, "client.test")]
                       + [dns.rr(name, dns.PTR, f"alias{i}.example.com")
                          for i in range(40)])]


@pytest.mark.parametrize("how", ["whole", "in pieces"])
def test_truncated_answer_is_asked_again_over_tcp(
        smtpgate, xclient_backend, scripted_dns, svc, how):
    """RFC 7766: a truncated UDP answer is asked for again over TCP, and
    the whole answer (over 512 bytes here) is taken."""
    def tcp(msg):
        whole = dns.framed(_many_ptrs(msg)[0])
        if how == "whole":
            return [whole]
        # the length, the header and the question split byte by byte,
        # then the rest in pieces
        return ([(0.01, whole[i:i + 1]) for i in range(40)]
                + [(0.01, whole[i:i + 97]) for i in range(40, len(whole),
                                                           97)])
    d = scripted_dns(_truncated_ptr, tcp=tcp)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test"]
    assert ("2.0.0.127.in-addr.arpa", dns.PTR) in [
        dns.query_of(m)[1:] for m in d.tcp_received]
    g.wait_log(r"truncated DNS answer for \"2\.0\.0\.127\.in-addr\.arpa\" "
               r"from 127\.0\.0\.1:\d+, asking again over TCP", since=mark)


def test_edns_takes_a_long_answer_over_udp(smtpgate, xclient_backend,
                                           scripted_dns, svc):
    """Queries offer 1232-byte UDP answers (EDNS, RFC 6891): an answer
    over 512 bytes comes over UDP, with no TCP (there is no TCP listener
    here)."""
    def udp(msg):
        if dns.query_of(msg)[2] != dns.PTR:
            return [_a_answer_for(msg)]
        if dns.edns_payload(msg) != 1232:
            return [dns.answer(msg, flags=0x8380)]     # truncated
        name = dns.query_of(msg)[1]
        return [dns.answer(msg, [dns.rr(name, dns.PTR, "client.test")]
                           + [dns.rr(name, dns.PTR, f"alias{i}.example.com")
                              for i in range(20)])]     # 1004 bytes
    d = scripted_dns(udp)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test"]
    assert all(dns.edns_payload(m) == 1232 for m in d.received)


@pytest.mark.parametrize("rcode", [1, 4], ids=["FORMERR", "NOTIMP"])
def test_server_without_edns(smtpgate, xclient_backend, scripted_dns, svc,
                             rcode):
    """A name server that answers FORMERR or NOTIMP to a query with EDNS
    is asked again at once without it, and from then on without it
    (RFC 6891 7)."""
    def udp(msg):
        if dns.edns_payload(msg) is not None:
            return [dns.answer(msg, rcode=rcode)]
        return [_good(msg)]
    d = scripted_dns(udp)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test"]
    name = "FORMERR" if rcode == 1 else "NOTIMP"
    # the first lookup may be the start-up probe's (127.0.0.1)
    g.wait_log(rf"the name server 127\.0\.0\.1:\d+ does not take EDNS "
               rf"\({name}\), asking again without it")
    edns = [dns.edns_payload(m) for m in d.received]
    first = edns.index(None)
    assert first >= 1 and set(edns[:first]) == {1232}, edns
    assert set(edns[first:]) == {None}, edns
    # (the readiness probe's lookup of 127.0.0.1 may come in between)
    ours = [q for q in (dns.query_of(m)[1:] for m in d.received[first:])
            if q[0] in ("2.0.0.127.in-addr.arpa", "client.test")]
    assert ours[-2:] == [("2.0.0.127.in-addr.arpa", dns.PTR),
                         ("client.test", dns.A)], ours


def _tcp_cases():
    def other_id(msg):
        a = bytearray(_many_ptrs(msg)[0])
        a[0] ^= 0xff
        return [dns.framed(bytes(a))]
    return {
        "closed at once": (lambda msg: [], "closed before the whole answer"),
        "closed mid-answer": (lambda msg: [dns.framed(_many_ptrs(msg)[0])
                                           [:100]],
                              "closed before the whole answer"),
        "another id": (other_id, "an answer with another id"),
        "over 16 KB": (lambda msg: [b"\xff\xff" + b"x" * 100],
                       "the answer is over 16384 bytes"),
        "garbage": (lambda msg: [dns.framed(msg[:2] + b"\x00" * 30)],
                    "not a response to a standard query"),
    }


@pytest.mark.parametrize("case", sorted(_tcp_cases()))
def test_tcp_answers_that_fail(smtpgate, xclient_backend, scripted_dns,
                               svc, case):
    tcp, why = _tcp_cases()[case]
    d = scripted_dns(_truncated_ptr, tcp=tcp)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["[TEMPUNAVAIL]"]
    g.wait_log(r"DNS over TCP to 127\.0\.0\.1:\d+ for "
               r"\"2\.0\.0\.127\.in-addr\.arpa\": " + re.escape(why),
               since=mark)
    g.wait_log(r"client host name \[TEMPUNAVAIL\]: the answer was "
               r"truncated and TCP failed", since=mark)


def test_no_tcp_listener(smtpgate, xclient_backend, scripted_dns, svc):
    d = scripted_dns(_truncated_ptr)            # UDP only
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["[TEMPUNAVAIL]"]
    g.wait_log(r"DNS over TCP to .*: Connection refused", since=mark)


def test_silent_tcp_times_out(smtpgate, xclient_backend, scripted_dns,
                              svc):
    d = scripted_dns(_truncated_ptr, tcp=lambda msg: [(10, b"")])
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc,
                      mail="    resolver_timeout 2s;")
    mark = g.log_mark()
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["[TEMPUNAVAIL]"]
    g.wait_log(r"client host name \[TEMPUNAVAIL\]: no answer over TCP in "
               r"time \(resolver_timeout\)", since=mark)


# ==========================================================================
# 4. Cache and shared queries


def test_answers_are_cached(smtpgate, xclient_backend, dnsmasq, svc):
    """A second session from the same client asks the name server
    nothing: both answers are kept for their TTL."""
    d = dnsmasq(ttl=300, **STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    login_and_send(g, source="127.0.0.2")
    login_and_send(g, source="127.0.0.2")
    assert client_hosts(svc) == ["client.test", "client.test"]
    assert asked(d) == 1
    assert asked(d, "A", "client.test") == 1


def test_zero_ttl_is_asked_again(smtpgate, xclient_backend, dnsmasq, svc):
    d = dnsmasq(ttl=0, **STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    login_and_send(g, source="127.0.0.2")
    login_and_send(g, source="127.0.0.2")
    assert asked(d) == 2


def test_valid_overrides_ttl(smtpgate, xclient_backend, dnsmasq, svc):
    d = dnsmasq(ttl=0, **STANDARD)
    g = resolver_gate(smtpgate, xclient_backend, d.address + " valid=30s",
                      svc=svc)
    login_and_send(g, source="127.0.0.2")
    login_and_send(g, source="127.0.0.2")
    assert asked(d) == 1


def test_cache_keeps_the_most_recent_answers(smtpgate, xclient_backend,
                                             scripted_dns):
    """The cache holds at most max(worker_connections, 256) answers: after
    300 clients from 300 addresses, the first one's answer is gone (asked
    again) and the last one's is kept."""
    d = scripted_dns(lambda msg: [dns.answer(msg, rcode=3)])
    text = gatelib.conf(backend=xclient_backend, level="info",
                        mail=f"    resolver {d.address} valid=60s;")
    g = smtpgate(text.replace("worker_connections 1024",
                              "worker_connections 64"))
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(300)]
    for source in sources:
        with g.connect(source=source) as c:
            assert c.greeting().code == 220
            c.ehlo("helo.example")
            assert c.auth_plain("dave", password("dave")).code == 235
            c.cmd("QUIT")

    def asked_about(source):
        name = dns.arpa(source)
        return sum(1 for q in d.queries() if q[1] == name)
    assert asked_about(sources[0]) == 1 and asked_about(sources[-1]) == 1
    for source in (sources[0], sources[-1]):
        with g.connect(source=source) as c:
            assert c.greeting().code == 220
            c.ehlo("helo.example")
            assert c.auth_plain("dave", password("dave")).code == 235
            c.cmd("QUIT")
    assert asked_about(sources[0]) == 2       # forgotten, asked again
    assert asked_about(sources[-1]) == 1      # still known


def test_sessions_at_once_share_one_query(smtpgate, xclient_backend,
                                          scripted_dns, svc):
    zone = dns.zone({("2.0.0.127.in-addr.arpa", dns.PTR): ["client.test"],
                     ("client.test", dns.A): ["127.0.0.2"]})
    d = scripted_dns(lambda msg: [(1.0, m) for m in zone(msg)])
    g = resolver_gate(smtpgate, xclient_backend, d.address, svc=svc)
    errors = []

    def one():
        try:
            login_and_send(g, source="127.0.0.2")
        except BaseException as e:       # reported below
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert client_hosts(svc) == ["client.test"] * 5
    mine = [q[1:] for q in d.queries() if q[1] != "1.0.0.127.in-addr.arpa"]
    assert mine == [("2.0.0.127.in-addr.arpa", dns.PTR),
                    ("client.test", dns.A)]


# ==========================================================================
# 5. Configuration


@pytest.mark.parametrize("directive,message", [
    ("resolver;", "invalid number of arguments"),
    ("resolver valid=10s;", "needs the address of a name server"),
    ("resolver 127.0.0.1 valid=0;", "valid= takes a time"),
    ("resolver 127.0.0.1 ipv6=maybe;", "the parameters are"),
    ("resolver 127.1;", "127.1"),
    ("resolver no-such-host.invalid;", "host not found"),
    ("resolver 127.0.0.1;\n    resolver 127.0.0.2;", "duplicate"),
    ("resolver " + " ".join(f"127.0.0.{i}" for i in range(1, 18)) + ";",
     "at most 16"),
    ("resolver_timeout 0;", "resolver_timeout"),
])
def test_configuration_errors(smtpgate, backend, directive, message):
    g = smtpgate(gatelib.conf(backend=backend, mail="    " + directive),
                 start=False)
    r = g.ctl("-t")
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert f"{g.conf_path}:" in r.stderr, r.stderr


def test_configuration_accepted(smtpgate, backend):
    """nginx's forms: several addresses, IPv6 in brackets, a port,
    valid=, ipv6=, status_zone= (read, nothing to count), off in a
    server; names resolved at load."""
    g = smtpgate(gatelib.conf(
        backend=backend,
        mail="    resolver 127.0.0.1 [::1]:5353 localhost valid=30s "
             "ipv6=off status_zone=dns;\n    resolver_timeout 5s;",
        server="        resolver off;"), start=False)
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
    assert "resolver" not in r.stderr, r.stderr
