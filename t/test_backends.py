"""The backend servers of the harness checked on their own, without the
binary: a real Postfix, the aiosmtpd backend's TLS, AUTH, PROXY protocol,
EHLO changes, refusals, delays, counting and restart, and smtp-sink's
switches.  Every check talks to the backend directly with smtplib or a
raw client; when these fail, the tests that put smtpgate in front of the
backends cannot be trusted."""

import smtplib
import socket
import ssl
import struct
import threading
import time

import pytest

from lib import net, pki as pkilib, postfix as postfixlib, smtp
from lib.pki import TlsSmtp

MSG = b"Subject: backend check\r\nFrom: a@example.org\r\n\r\nhello\r\n"


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def connect_as(name, host, port, ssl_context=None):
    """smtplib to host:port that sends `name` as the TLS server name
    (smtplib takes it from the host it was given, which here is an
    address)."""
    if ssl_context is not None:
        c = smtplib.SMTP_SSL(timeout=30, context=ssl_context)
    else:
        c = smtplib.SMTP(timeout=30)
    c._host = name
    c.connect(host, port)
    return c


def ehlo_keywords(c, name="direct.test"):
    code, text = c.ehlo(name)
    assert code == 250, text
    return [l.split()[0].upper() for l in
            text.decode().split("\n")[1:] if l.strip()]


# --------------------------------------------------------------------------
# Postfix


def test_postfix_delivers_with_received(postfix):
    with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as c:
        assert "XCLIENT" in ehlo_keywords(c)
        c.sendmail("a@example.org", ["b@example.org"], MSG)
        # Nothing leaves: only example.org is accepted.
        c.mail("a@example.org")
        code, text = c.rcpt("x@elsewhere.test")
        assert code == 554, text
    (raw,) = postfix.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert received.startswith("from direct.test (unknown [127.0.0.1]) "
                               "by postfix.test (Postfix) with ESMTP id ")
    assert postfixlib.headers(raw, "Return-Path") == ["<a@example.org>"]
    assert postfixlib.headers(raw, "Delivered-To") == ["b@example.org"]
    assert postfixlib.body(raw) == b"hello\n"
    postfix.wait_log(r"postfix-test/smtpd\[\d+\]: connect from "
                     r"unknown\[127\.0\.0\.1\]")


def test_postfix_xclient_shows_in_received_and_log(postfix):
    with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as c:
        c.ehlo("first.test")
        code, text = c.docmd("XCLIENT", "ADDR=203.0.113.9 NAME=[UNAVAILABLE]")
        assert (code, text) == (220, b"postfix.test ESMTP Postfix")
        c.ehlo("after.test")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (raw,) = postfix.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert received.startswith("from after.test (unknown [203.0.113.9]) ")
    postfix.wait_log(r"smtpd\[\d+\]: \w+: client=unknown\[203\.0\.113\.9\]")


def test_postfix_starttls(make_postfix, pki):
    pf = make_postfix(tls="starttls")
    with connect_as("backend.test", pf.host, pf.port) as c:
        assert "STARTTLS" in ehlo_keywords(c)
        c.starttls(context=pki.client_context())
        c.ehlo("tls.test")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (raw,) = pf.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert "(using TLSv1.3 with cipher " in received, received
    assert " with ESMTPS id " in received, received


def test_postfix_implicit_tls(make_postfix, pki):
    pf = make_postfix(tls="implicit")
    with connect_as("backend.test", pf.host, pf.port,
                    pki.client_context()) as c:
        c.ehlo("tls.test")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (raw,) = pf.wait_messages(1)
    assert " with ESMTPS id " in postfixlib.headers(raw, "Received")[0]


def test_postfix_proxy_protocol(make_postfix):
    pf = make_postfix(proxy_protocol=True)
    with smtp.RawSmtp(pf.host, pf.port) as c:
        c.send(f"PROXY TCP4 198.51.100.7 127.0.0.1 40000 {pf.port}\r\n")
        assert c.greeting().code == 220
        c.ehlo("proxied.test")
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    (raw,) = pf.wait_messages(1)
    assert postfixlib.headers(raw, "Received")[0].startswith(
        "from proxied.test (unknown [198.51.100.7]) ")


def test_postfix_ipv6(make_postfix):
    if not net.ipv6_available():
        pytest.skip("no IPv6 loopback")
    pf = make_postfix(host=net.IPV6)
    assert pf.address == f"[::1]:{pf.port}"
    with smtplib.SMTP(pf.host, pf.port, timeout=30) as c:
        c.ehlo("six.test")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (raw,) = pf.wait_messages(1)
    assert postfixlib.headers(raw, "Received")[0].startswith(
        "from six.test (unknown [IPv6:::1]) ")


def test_postfix_stop_leaves_nothing(make_postfix):
    pf = make_postfix()
    pid = pf.master_pid
    assert pf.stop() == []
    assert postfixlib._group_members(pid) == []
    with pytest.raises(OSError):
        net.connect(pf.host, pf.port, 2).close()
    assert pf.stop() == []          # a second stop does nothing


# --------------------------------------------------------------------------
# aiosmtpd: defaults


def test_backend_defaults_unchanged(backend, xclient_backend):
    with smtplib.SMTP(backend.host, backend.port, timeout=30) as c:
        assert ehlo_keywords(c) == ["SIZE", "8BITMIME", "SMTPUTF8", "HELP"]
        code, _ = c.docmd("AUTH", "PLAIN AGFAAGI=")
        assert code == 503
    with smtplib.SMTP(xclient_backend.host, xclient_backend.port,
                      timeout=30) as c:
        assert ehlo_keywords(c) == ["SIZE", "8BITMIME", "SMTPUTF8",
                                    "XCLIENT", "HELP"]
    # The start-up probe of each is neither recorded nor counted.
    backend.wait_connections(1)
    assert backend.connections == 1
    assert backend.sessions[0].index == 0
    assert [v for v, _ in backend.commands] == ["EHLO", "AUTH", "QUIT"]


# --------------------------------------------------------------------------
# aiosmtpd: TLS


def test_backend_starttls_ip_san_no_sni(tls_backend, pki):
    b = tls_backend
    with smtplib.SMTP(b.host, b.port, timeout=30) as c:
        assert "STARTTLS" in ehlo_keywords(c)
        c.starttls(context=pki.client_context())    # verifies 127.0.0.1
        assert "STARTTLS" not in ehlo_keywords(c)
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (m,) = b.wait_messages(1)
    assert m.tls == "TLSv1.3"
    assert m.sni is None            # no SNI for an address
    assert m.conn.tls_mode == "starttls"
    assert m.content == MSG
    assert [v for v, _ in b.commands] == ["EHLO", "STARTTLS", "EHLO",
                                          "MAIL", "RCPT", "QUIT"]


def test_backend_starttls_sni(tls_backend, pki):
    b = tls_backend
    with TlsSmtp(b.host, b.port) as c:
        assert c.greeting().code == 220
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        c.wrap(pki.client_context(), "backend.test")
        c.ehlo()
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    (m,) = b.wait_messages(1)
    assert (m.tls, m.sni) == ("TLSv1.3", "backend.test")
    assert m.conn.cipher


def test_backend_plain_message_not_tls(tls_backend):
    with smtplib.SMTP(tls_backend.host, tls_backend.port, timeout=30) as c:
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (m,) = tls_backend.wait_messages(1)
    assert m.tls is None and m.conn.tls_mode is None


def test_backend_require_starttls(make_backend, pki):
    b = make_backend(tls="starttls", require_starttls=True)
    with smtplib.SMTP(b.host, b.port, timeout=30) as c:
        c.ehlo("direct.test")
        code, text = c.docmd("MAIL FROM:<a@example.org>")
        assert code == 530, text
        c.starttls(context=pki.client_context())
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert b.wait_messages(1)[0].tls


def test_backend_implicit_tls(make_backend, pki):
    b = make_backend(tls="implicit")
    with connect_as("backend.test", b.host, b.port,
                    pki.client_context()) as c:
        assert "STARTTLS" not in ehlo_keywords(c)
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (m,) = b.wait_messages(1)
    assert (m.tls, m.sni, m.conn.tls_mode) == ("TLSv1.3", "backend.test",
                                               "implicit")
    assert b.connections == 1


def test_backend_tls_version_cap(make_backend, pki):
    b = make_backend(tls="implicit",
                     tls_max_version=ssl.TLSVersion.TLSv1_2)
    with smtplib.SMTP_SSL(b.host, b.port, timeout=30,
                          context=pki.client_context()) as c:
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert b.wait_messages(1)[0].tls == "TLSv1.2"


def test_backend_client_certificate(make_backend, pki):
    b = make_backend(tls="starttls", client_ca=pki.ca)
    with smtplib.SMTP(b.host, b.port, timeout=30) as c:
        c.starttls(context=pki.client_context(cert="alice"))
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    cert = b.wait_messages(1)[0].conn.client_cert
    assert pkilib.common_name(cert) == "alice"


# --------------------------------------------------------------------------
# aiosmtpd: AUTH


def test_backend_auth_required(make_backend):
    b = make_backend(auth={"alice": "secret"})
    with smtp.RawSmtp(b.host, b.port) as c:
        c.greeting()
        assert smtp.ehlo_line(c.ehlo(), "AUTH") == "AUTH LOGIN PLAIN"
        r = c.cmd("MAIL FROM:<a@example.org>")
        assert r.raw == b"530 5.7.0 Authentication required\r\n"
        r = c.auth_plain("alice", "wrong")
        assert r.raw == b"535 5.7.8 Authentication credentials invalid\r\n"
        assert c.auth_login("alice", "wrong").code == 535
        assert c.auth_plain("alice", "secret").code == 235
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    (m,) = b.wait_messages(1)
    assert m.login == "alice"
    assert m.conn.login == "alice"
    assert b.auth_attempts == [("PLAIN", "alice", False),
                               ("LOGIN", "alice", False),
                               ("PLAIN", "alice", True)]
    assert m.conn.auth == b.auth_attempts


def test_backend_auth_smtplib(make_backend):
    b = make_backend(auth={"alice": "secret"})
    with smtplib.SMTP(b.host, b.port, timeout=30) as c:
        c.login("alice", "secret")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert b.wait_messages(1)[0].login == "alice"


def test_backend_auth_login_only(make_backend):
    b = make_backend(auth={"bob": "pw"}, auth_mechanisms=("LOGIN",))
    with smtp.RawSmtp(b.host, b.port) as c:
        c.greeting()
        assert smtp.ehlo_line(c.ehlo(), "AUTH") == "AUTH LOGIN"
        assert c.auth_plain("bob", "pw").code == 504
        assert c.auth_login("bob", "pw").code == 235
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    assert b.wait_messages(1)[0].login == "bob"
    assert b.auth_attempts == [("LOGIN", "bob", True)]


def test_backend_auth_only_after_tls(make_backend, pki):
    b = make_backend(tls="starttls", auth={"alice": "secret"},
                     auth_require_tls=True)
    with smtplib.SMTP(b.host, b.port, timeout=30) as c:
        assert "AUTH" not in ehlo_keywords(c)
        c.starttls(context=pki.client_context())
        assert "AUTH" in ehlo_keywords(c)
        c.login("alice", "secret")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    (m,) = b.wait_messages(1)
    assert (m.login, m.tls) == ("alice", "TLSv1.3")


# --------------------------------------------------------------------------
# aiosmtpd: capabilities and refusals


def test_backend_ehlo_drop_and_add(make_backend):
    b = make_backend(ehlo_drop=("SMTPUTF8", "8bitmime"),
                     ehlo_add=("DSN", "PIPELINING", "SIZE 1000"))
    with smtplib.SMTP(b.host, b.port, timeout=30) as c:
        assert ehlo_keywords(c) == ["SIZE", "DSN", "PIPELINING", "SIZE",
                                    "HELP"]
        assert c.esmtp_features["size"] == "1000"    # the last one wins


def test_backend_chunking(make_backend):
    b = make_backend(ehlo_add=("CHUNKING",))
    with smtp.RawSmtp(b.host, b.port) as c:
        c.greeting()
        assert smtp.ehlo_line(c.ehlo(), "CHUNKING")
        c.send(b"BDAT 3\r\nabc")
        assert c.reply().code == 503        # no MAIL yet; still in step
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RCPT TO:<b@example.org>", 250)
        c.send(b"BDAT 10\r\nSubject: x")
        assert c.reply().raw == b"250 2.0.0 10 octets received\r\n"
        c.send(b"BDAT 10 LAST\r\n\r\n\r\nbody\r\n")
        assert c.reply().code == 250
    (m,) = b.wait_messages(1)
    assert m.content == b"Subject: x\r\n\r\nbody\r\n"
    assert b.seen("BDAT") == ["3", "10", "10 LAST"]


def test_backend_without_chunking_refuses_bdat(backend):
    with smtp.RawSmtp(backend.host, backend.port) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("BDAT 1 LAST").code == 500


def test_backend_greeting_421(make_backend):
    b = make_backend(greeting_code=421)
    with smtp.RawSmtp(b.host, b.port) as c:
        r = c.greeting()
        assert r.raw == (b"421 4.3.2 backend.test Service not available"
                         b"\r\n")
        c.expect_closed()
    b.wait_open(0)
    assert b.connections == 1


def test_backend_greeting_554(make_backend):
    b = make_backend(greeting_code=554)
    with smtp.RawSmtp(b.host, b.port) as c:
        assert c.greeting().code == 554
        assert c.cmd("EHLO client.test").code == 503
        assert c.cmd("MAIL FROM:<a@example.org>").code == 503
        assert c.cmd("QUIT").code == 221


def test_backend_ehlo_refused_helo_works(make_backend):
    b = make_backend(ehlo_code=554)
    with smtp.RawSmtp(b.host, b.port) as c:
        c.greeting()
        r = c.cmd("EHLO client.test")
        assert r.raw == b"554 5.3.2 backend.test EHLO refused\r\n"
        assert c.cmd("HELO client.test").code == 250
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    assert b.wait_messages(1)[0].helo == "client.test"


def test_backend_replies(make_backend):
    b = make_backend(replies={"MAIL": "451 4.3.0 backend busy"})
    with smtp.RawSmtp(b.host, b.port) as c:
        c.greeting()
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@example.org>")
        assert r.raw == b"451 4.3.0 backend busy\r\n"


# --------------------------------------------------------------------------
# aiosmtpd: PROXY protocol


def proxy_v2_tcp4(src, dst, sport, dport):
    addrs = (socket.inet_aton(src) + socket.inet_aton(dst)
             + struct.pack("!HH", sport, dport))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11])
            + struct.pack("!H", len(addrs)) + addrs)


@pytest.mark.parametrize("version", [1, 2])
def test_backend_proxy_protocol(make_backend, version):
    b = make_backend(proxy_protocol=True)
    with smtp.RawSmtp(b.host, b.port) as c:
        if version == 1:
            c.send(f"PROXY TCP4 192.0.2.10 127.0.0.1 41000 {b.port}\r\n")
        else:
            c.send(proxy_v2_tcp4("192.0.2.10", "127.0.0.1", 41000, b.port))
        assert c.greeting().code == 220
        c.ehlo()
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
    (m,) = b.wait_messages(1)
    p = m.proxy
    assert p.valid and p.version == version
    assert (str(p.src_addr), p.src_port) == ("192.0.2.10", 41000)
    assert (str(p.dst_addr), p.dst_port) == ("127.0.0.1", b.port)
    assert m.conn.proxy is p


def test_backend_proxy_protocol_missing_header(make_backend):
    b = make_backend(proxy_protocol=True)
    with smtp.RawSmtp(b.host, b.port) as c:
        c.send("EHLO client.test\r\n")
        c.expect_closed()           # no greeting at all
    b.wait_open(0)
    (conn,) = b.sessions
    assert conn.proxy is not None and not conn.proxy.valid
    assert b.commands == []


# --------------------------------------------------------------------------
# aiosmtpd: counting, delays, restart


def test_backend_counts_open_connections(backend):
    clients = [smtplib.SMTP(backend.host, backend.port, timeout=30)
               for _ in range(3)]
    try:
        for c in clients:
            c.ehlo("direct.test")
        backend.wait_open(3)
        clients.pop().quit()
        backend.wait_open(2)
    finally:
        for c in clients:
            c.close()
    backend.wait_open(0)
    assert backend.connections == 3
    assert backend.max_open == 3
    assert [c.open for c in backend.sessions] == [False] * 3


def test_backend_data_delay_keeps_sessions_busy(make_backend):
    b = make_backend(data_delay=0.5)
    both_connected = threading.Barrier(2, timeout=30)
    took = []

    def send():
        with smtplib.SMTP(b.host, b.port, timeout=30) as c:
            c.ehlo("direct.test")
            both_connected.wait()
            start = time.monotonic()
            c.sendmail("a@example.org", ["b@example.org"], MSG)
            took.append(time.monotonic() - start)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(took) == 2
    assert min(took) >= 0.45            # 0.5 s, less a margin
    assert b.max_open == 2
    assert len(b.wait_messages(2)) == 2


def test_backend_stop_and_start_on_the_same_port(backend):
    port = backend.port
    c = smtp.RawSmtp(backend.host, port)
    try:
        c.greeting()
        c.ehlo()
        backend.wait_open(1)
        backend.stop()
        c.expect_closed()
    finally:
        c.close()
    assert backend.open_connections == 0
    with pytest.raises(OSError):
        net.connect(backend.host, port, 2).close()
    backend.stop()                  # a second stop does nothing
    backend.start()
    assert backend.port == port and backend.starts == 2
    with smtplib.SMTP(backend.host, port, timeout=30) as s:
        s.sendmail("a@example.org", ["b@example.org"], MSG)
    assert len(backend.wait_messages(1)) == 1
    assert backend.connections == 2


def test_backend_ipv6_tls(make_backend, pki):
    if not net.ipv6_available():
        pytest.skip("no IPv6 loopback")
    b = make_backend(host=net.IPV6, tls="starttls")
    with smtplib.SMTP(b.host, b.port, timeout=30) as c:
        c.starttls(context=pki.client_context())    # verifies ::1
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert b.wait_messages(1)[0].tls == "TLSv1.3"


def test_backend_rejects_bad_options():
    from lib.backends import AiosmtpdBackend
    with pytest.raises(ValueError):
        AiosmtpdBackend(tls="yes")
    with pytest.raises(ValueError):
        AiosmtpdBackend(auth={"a": "b"}, auth_mechanisms=("CRAM-MD5",))
    with pytest.raises(ValueError):
        AiosmtpdBackend(tls="implicit", proxy_protocol=True)


# --------------------------------------------------------------------------
# smtp-sink


def test_sink_switches(make_sink):
    s = make_sink(pipelining=False, dsn=False, eightbitmime=False,
                  xclient=False, auth=False)
    with smtplib.SMTP(s.host, s.port, timeout=30) as c:
        assert ehlo_keywords(c) == ["XFORWARD", "ENHANCEDSTATUSCODES"]


def test_sink_reject_and_disconnect(make_sink):
    s = make_sink(reject=("RCPT",), disconnect_421=("DATA",))
    with smtp.RawSmtp(s.host, s.port) as c:
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        assert c.cmd("RCPT TO:<b@example.org>").code // 100 == 5
        assert c.cmd("DATA").code == 421
        c.expect_closed()


def test_sink_counts_sessions(sink):
    for _ in range(2):
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
            c.sendmail("a@example.org", ["b@example.org"], MSG)
    sink.wait_sessions(2)
    assert sink.counters() == {"sess": 2, "quit": 2, "mesg": 2}


def test_sink_kill_and_restart(sink):
    c = smtp.RawSmtp(sink.host, sink.port)
    try:
        c.greeting()
        c.ehlo()
        sink.kill()
        c.expect_closed()
    finally:
        c.close()
    with pytest.raises(OSError):
        net.connect(sink.host, sink.port, 2).close()
    sink.restart()
    with smtplib.SMTP(sink.host, sink.port, timeout=30) as s:
        s.sendmail("a@example.org", ["b@example.org"], MSG)
    assert len(sink.wait_messages(1)) == 1
    # The killed session never ended as far as smtp-sink could count.
    sink.wait_sessions(1)
    assert sink.counters() == {"sess": 1, "quit": 1, "mesg": 1}
