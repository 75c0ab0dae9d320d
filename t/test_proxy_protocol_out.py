"""PROXY protocol towards the backends: "proxy_protocol on | v1 | v2".

The backends are aiosmtpd servers that require a PROXY header (v1 or
v2) and record it, and a real Postfix with smtpd_upstream_proxy_protocol
= haproxy.  Checked: the header's source is the client's address and
port and its destination the address the client connected to, in v1
and v2, for IPv4 and IPv6 clients and backends (the header's family is
the client's, whatever the backend's address family); behind a trusted
PROXY-protocol load balancer, the backend gets the original client
from the load balancer's header; Postfix delivers and logs the client;
health checks with "proxy_protocol" probe such a backend successfully,
while probes without it fail against the same backend.
"""

import ipaddress
import re
import smtplib
import struct

import pytest

from lib import gate as gatelib
from lib import net
from lib import postfix as postfixlib
from lib.smtp import RawSmtp
from lib.users import password

MSG = b"Subject: proxied\r\n\r\nhello\r\n"

needs_ipv6 = pytest.mark.skipif(not net.ipv6_available(),
                                reason="no IPv6 loopback")


def relay(host, port, header=b""):
    """One session from host; returns the client's (address, port)."""
    with RawSmtp(host, port, 30) as c:
        local = c.sock.getsockname()[:2]
        c.send(header)
        assert c.greeting().code == 220
        c.ehlo("client.test")
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
        assert c.cmd("QUIT").code == 221
    return local


def ip(text):
    return ipaddress.ip_address(str(text))


@pytest.mark.parametrize("version", ["on", "v1", "v2"])
@pytest.mark.parametrize("client,backend", [
    ("4", "4"),
    pytest.param("6", "6", marks=needs_ipv6),
    pytest.param("4", "6", marks=needs_ipv6),
    pytest.param("6", "4", marks=needs_ipv6),
])
def test_header_carries_client_and_listen_address(smtpgate, make_backend,
                                                  version, client, backend):
    b = make_backend(host=net.IPV6 if backend == "6" else net.IPV4,
                     proxy_protocol=True)
    listen = "[::1]:@PORT6@" if client == "6" else "127.0.0.1:@PORT@"
    g = smtpgate(gatelib.conf(proxy_pass=b.address, listen=(listen,),
                              mail=f"    proxy_protocol {version};"))
    host, port = g.listen_addresses()[0]
    caddr, cport = relay(host, port)
    (m,) = b.wait_messages(1)
    pp = m.proxy
    assert pp is not None and pp.valid, pp
    assert pp.version == (2 if version == "v2" else 1)
    assert (ip(pp.src_addr), pp.src_port) == (ip(caddr), cport)
    assert (ip(pp.dst_addr), pp.dst_port) == (ip(host), port)
    if version != "v2":
        proto = "TCP6" if client == "6" else "TCP4"
        assert bytes(pp.whole_raw) == (
            f"PROXY {proto} {caddr} {host} {cport} {port}\r\n".encode())
    # The SMTP session behind the header is smtpgate's as usual.
    assert m.helo == "mx.test" and m.content.endswith(b"hello\r\n")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_original_client_through_a_trusted_load_balancer(smtpgate,
                                                         make_backend,
                                                         version):
    """A load balancer's header (trusted: 127.0.0.1 is in
    set_real_ip_from) makes its source the client and its destination
    the address connected to, and those are what the backend gets."""
    b = make_backend(proxy_protocol=True)
    g = smtpgate(gatelib.conf(
        proxy_pass=b.address, listen=("127.0.0.1:@PORT@ proxy_protocol",),
        mail=f"    set_real_ip_from 127.0.0.1;\n"
             f"    proxy_protocol {version};"))
    relay("127.0.0.1", g.port,
          b"PROXY TCP4 203.0.113.7 192.0.2.25 4242 587\r\n")
    (m,) = b.wait_messages(1)
    assert (str(m.proxy.src_addr), m.proxy.src_port) == ("203.0.113.7", 4242)
    assert (str(m.proxy.dst_addr), m.proxy.dst_port) == ("192.0.2.25", 587)


def test_untrusted_load_balancer_header_is_not_passed_on(smtpgate,
                                                         make_backend):
    b = make_backend(proxy_protocol=True)
    g = smtpgate(gatelib.conf(
        proxy_pass=b.address, listen=("127.0.0.1:@PORT@ proxy_protocol",),
        mail="    set_real_ip_from 192.0.2.0/24;\n    proxy_protocol on;"))
    caddr, cport = relay("127.0.0.1", g.port,
                         b"PROXY TCP4 203.0.113.7 192.0.2.25 4242 587\r\n")
    (m,) = b.wait_messages(1)
    assert (str(m.proxy.src_addr), m.proxy.src_port) == (caddr, cport)
    assert (str(m.proxy.dst_addr), m.proxy.dst_port) == ("127.0.0.1",
                                                         g.port)


def test_postfix_reads_the_header(smtpgate, make_postfix):
    pf = make_postfix(proxy_protocol=True)
    g = smtpgate(gatelib.conf(
        proxy_pass=pf.address, listen=("127.0.0.1:@PORT@ proxy_protocol",),
        mail="    set_real_ip_from 127.0.0.1;\n    proxy_protocol v2;"))
    relay("127.0.0.1", g.port,
          b"PROXY TCP4 203.0.113.50 192.0.2.25 4242 587\r\n")
    (raw,) = pf.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert "(unknown [203.0.113.50])" in received, received
    pf.wait_log(r"postfix-test/smtpd\[\d+\]: connect from "
                r"unknown\[203\.0\.113\.50\]")
    assert postfixlib.body(raw) == b"hello\n"


def test_header_comes_before_starttls(smtpgate, make_backend):
    b = make_backend(proxy_protocol=True, tls="starttls")
    g = smtpgate(gatelib.conf(proxy_pass=b.address, mail="\n".join([
        "    proxy_protocol v2;", "    proxy_ssl starttls;"])))
    caddr, cport = relay("127.0.0.1", g.port)
    (m,) = b.wait_messages(1)
    assert m.conn.tls_mode == "starttls"
    assert (str(m.proxy.src_addr), m.proxy.src_port) == (caddr, cport)


def test_header_comes_before_implicit_tls_to_postfix(smtpgate, make_postfix):
    """With proxy_ssl on the header goes first, in plaintext, then the
    TLS handshake: what Postfix in wrapper mode with haproxy expects."""
    pf = make_postfix(tls="implicit", proxy_protocol=True)
    g = smtpgate(gatelib.conf(
        proxy_pass=pf.address, listen=("127.0.0.1:@PORT@ proxy_protocol",),
        mail="\n".join(["    set_real_ip_from 127.0.0.1;",
                        "    proxy_protocol on;", "    proxy_ssl on;"])))
    mark = g.log_mark()
    relay("127.0.0.1", g.port,
          b"PROXY TCP4 203.0.113.51 192.0.2.25 4242 465\r\n")
    (raw,) = pf.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert "(unknown [203.0.113.51])" in received, received
    assert "(using TLSv1." in received, received
    g.wait_log(rf"backend {pf.address} ready over TLS", since=mark)


def upstream(name, peer, check):
    return (f"    upstream {name} {{\n        server {peer};\n"
            f"        health_check {check};\n    }}")


def test_health_check_with_proxy_protocol(smtpgate, make_backend):
    """Two groups with the same backend, which requires the header: the
    one whose probes send it keeps the peer up and relays; the other's
    probes fail and mark it down."""
    b = make_backend(proxy_protocol=True)
    mail = "\n".join([
        upstream("pp", b.address,
                 "interval=200ms timeout=2s proxy_protocol"),
        upstream("plain", b.address, "interval=200ms timeout=2s"),
        "    proxy_protocol on;"])
    g = smtpgate(gatelib.conf(proxy_pass="pp", mail=mail, servers=[
        "        listen 127.0.0.1:@PORT2@;\n        proxy_pass plain;"]))
    g.wait_log(rf"upstream plain: server {re.escape(b.address)} is down: "
               r"health check failed: ")
    # Several probes of "pp" went by meanwhile, each with a header.
    net.wait_until(lambda: sum(1 for c in b.sessions
                               if c.proxy is not None and c.proxy.valid
                               and c.messages == 0) >= 3, 10,
                   what="three probes with a PROXY header")
    probes = [c for c in b.sessions if c.proxy is not None and c.proxy.valid]
    for c in probes:
        assert str(c.proxy.dst_addr) == "127.0.0.1"
        assert c.proxy.dst_port == b.port
        assert c.commands and c.commands[0][0] == "EHLO"
    log = g.error_log()
    assert "upstream pp: server" not in log
    relay("127.0.0.1", g.port)
    b.wait_messages(1)
    with g.connect(port=g.ports["PORT2"]) as c:
        c.greeting()
        c.ehlo()
        r = c.auth_plain("alice", password("alice"))
        assert r.code == 451, r
