"""auth_http: the nginx mail auth_http protocol end to end.

smtpgate asks a recording HTTP service (lib.authsvc) and, where it says
so, nginx itself.  Checked: the request headers byte for byte and against
what nginx's mail module sends for the same session; how each answer
becomes an SMTP reply and a backend (Auth-Server/Auth-Port without
proxy_pass); keep-alive connections to the service; failover between
services and the error-log line for each that failed; that every broken
answer is a temporary failure (454), never a 535 and never a hang; no
password in the log; reload and graceful quit with connections kept open.
"""

import base64
import concurrent.futures
import hashlib
import hmac
import os
import re
import signal
import ssl
import threading
import time

import pytest

from lib import gate as gatelib
from lib import memscan
from lib import net
from lib import pki as pkilib
from lib.authsvc import Answer, AuthService, Nginx, ok, ok_to, refuse
from lib.backends import AiosmtpdBackend
from lib.pki import TlsSmtp, cert_directives, indent
from lib.smtp import b64, plain_token

OK = (235, "2.7.0 Authentication successful")
TEMPFAIL = b"454 4.7.0 Temporary authentication failure\r\n"


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


@pytest.fixture
def services():
    """Factory: services(**kw) -> a started AuthService, stopped after."""
    started = []

    def make(**kw):
        s = AuthService(**kw).start()
        started.append(s)
        return s
    yield make
    for s in started:
        s.stop()


@pytest.fixture
def svc(services):
    return services()


def http_conf(*urls, backend=None, mail="", fail_delay="0", **kw):
    """lib.gate.conf() authenticating through auth_http (no auth_file),
    with proxy_pass only when `backend` is given."""
    lines = []
    if urls:
        lines.append("    auth_http " + " ".join(urls) + ";")
    if fail_delay is not None:
        lines.append(f"    smtp_auth_fail_delay {fail_delay};")
    if mail:
        lines.append(mail)
    return gatelib.conf(backend=backend, auth_file=None,
                        mail="\n".join(lines), **kw)


def auth_session(g, user="alice", password="alice-secret", mech="PLAIN",
                 quit=True):
    """Connect, EHLO, AUTH; return the AUTH reply (and the open client
    when quit is False)."""
    c = g.session()
    try:
        c.ehlo()
        if mech == "PLAIN":
            r = c.auth_plain(user, password)
        else:
            r = c.auth_login(user, password)
        if quit:
            c.cmd("QUIT")
    except BaseException:
        c.close()
        raise
    if quit:
        c.close()
        return r
    return r, c


def send_message(c, subject="via auth_http"):
    r = c.mail("a@example.org", ["b@example.net"],
               f"Subject: {subject}\r\n\r\nhello\r\n".encode())
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221


def log_lines(g, pattern, since=0):
    return [line for line in g.log_since(since).splitlines()
            if re.search(pattern, line)]


# ==========================================================================
# 1. The request


NGINX_ORDER = ["Host", "Auth-Method", "Auth-User", "Auth-Pass",
               "Auth-Protocol", "Auth-Login-Attempt", "Client-IP",
               "Client-Host"]
SMTP_HEADERS = ["Auth-SMTP-Helo", "Auth-SMTP-From", "Auth-SMTP-To"]


def test_plain_request_head_and_escaping(smtpgate, backend, svc):
    """AUTH PLAIN: the request line, Host, every header in nginx's order,
    Auth-User/Auth-Pass escaped the nginx way (space, '%' and control
    bytes as %XX, UTF-8 bytes as they are), the auth_http_header lines
    last and in order."""
    g = smtpgate(http_conf(svc.url, backend=backend, mail=(
        '    auth_http_header X-Auth-Key "k3y with space";\n'
        '    auth_http_header X-Second 2;')))
    user = "j\u00fcrgen %x"
    password = "pa ss\t%\x01\u00e9\u20ac"
    with g.session() as c:
        c.ehlo("client.test")
        r = c.auth_plain(user, password)
        assert (r.code, r.last) == OK
    (req,) = svc.requests
    head = req.head
    assert head.startswith(b"GET /auth HTTP/1.1\r\n"), head
    assert head.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in head[:-4]
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert req.header("Host") == svc.hostport
    names = req.names()
    assert [n for n in names if n not in SMTP_HEADERS][:len(NGINX_ORDER)] \
        == NGINX_ORDER, names
    assert names[-2:] == ["X-Auth-Key", "X-Second"], names
    assert len(set(n.lower() for n in names)) == len(names), names
    wire = dict((n, v.encode("latin-1")) for n, v in req.headers)
    assert wire["Auth-Method"] == b"plain"
    assert wire["Auth-User"] == "j\u00fcrgen%20%25x".encode()
    assert wire["Auth-Pass"] == "pa%20ss%09%25%01\u00e9\u20ac".encode()
    assert wire["Auth-Protocol"] == b"smtp"
    assert wire["Auth-Login-Attempt"] == b"1"
    assert wire["Client-IP"] == b"127.0.0.1"
    assert wire["Client-Host"] == b"[UNAVAILABLE]"
    assert b"\r\nX-Auth-Key: k3y with space\r\nX-Second: 2\r\n\r\n" in head
    assert "Auth-Salt" not in names
    assert not any(n.startswith("Auth-SSL") for n in names)
    # smtpgate also sends the EHLO name (and an empty envelope) here,
    # which nginx sends only with smtp_auth none.
    assert req.header("Auth-SMTP-Helo") in (None, "client.test")


def test_login_request_headers(smtpgate, backend, svc):
    """AUTH LOGIN: the user and password from the two steps."""
    g = smtpgate(http_conf(svc.url, backend=backend))
    r = auth_session(g, "bob", "bob secret", mech="LOGIN")
    assert (r.code, r.last) == OK
    (req,) = svc.requests
    assert req.header("Auth-User") == "bob"
    assert req.header("Auth-Pass") == "bob%20secret"
    assert req.header("Auth-Method") in ("plain", "login")
    assert req.header("Auth-Login-Attempt") == "1"


def test_login_is_sent_as_plain_like_nginx(smtpgate, backend, svc):
    g = smtpgate(http_conf(svc.url, backend=backend))
    assert auth_session(g, "bob", "secret", mech="LOGIN").code == 235
    assert svc.last.header("Auth-Method") == "plain"


def test_login_attempt_counts_up_within_a_session(smtpgate, backend, svc):
    g = smtpgate(http_conf(svc.url, backend=backend,
                           mail="    smtp_auth_attempts 5;"))
    svc.responder = lambda req: (ok() if req.header("Auth-Pass") == "right"
                                 else refuse("wrong"))
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "bad1").code == 535
        assert c.auth_login("alice", "bad2").code == 535
        assert c.auth_plain("alice", "bad3").code == 535
        assert (c.auth_plain("alice", "right").code) == 235
    # A new session starts again at 1.
    assert auth_session(g, "alice", "right").code == 235
    assert [r.header("Auth-Login-Attempt") for r in svc.requests] == \
        ["1", "2", "3", "4", "1"]


def test_cram_md5_salt_and_digest(smtpgate, backend, svc):
    """CRAM-MD5: Auth-Salt is the challenge the client got, Auth-Pass the
    client's digest; the service can check it with the shared secret."""
    secret = b"tanstaaftanstaaf"

    def check(req):
        digest = hmac.new(secret, req.header("Auth-Salt").encode(),
                          "md5").hexdigest()
        return ok() if req.header("Auth-Pass") == digest else refuse("no")
    svc.responder = check
    g = smtpgate(http_conf(svc.url, backend=backend,
                           mail="    smtp_auth plain login cram-md5;"))
    with g.session() as c:
        c.ehlo()
        r = c.cmd("AUTH CRAM-MD5")
        assert r.code == 334, r
        challenge = base64.b64decode(r.last)
        assert re.fullmatch(rb"<[0-9]+\.[0-9]+@mx\.test>", challenge), \
            challenge
        digest = hmac.new(secret, challenge, "md5").hexdigest()
        r = c.cmd(b64(f"tim {digest}"))
        assert (r.code, r.last) == OK
    (req,) = svc.requests
    assert req.header("Auth-Method") == "cram-md5"
    assert req.header("Auth-User") == "tim"
    assert req.header("Auth-Pass") == digest
    assert req.header("Auth-Salt").encode() == challenge
    names = req.names()
    assert names.index("Auth-Salt") == names.index("Auth-Pass") + 1


def test_cram_md5_wrong_digest_is_535(smtpgate, backend, svc):
    svc.default = refuse("Invalid login or password")
    g = smtpgate(http_conf(svc.url, backend=backend,
                           mail="    smtp_auth plain login cram-md5;"))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("AUTH CRAM-MD5").code == 334
        r = c.cmd(b64("tim " + "0" * 32))
        assert r.raw == b"535 5.7.8 Invalid login or password\r\n"
    assert svc.last.header("Auth-Salt")


def test_auth_none_sends_helo_and_envelope(smtpgate, backend, svc):
    """smtp_auth none: Auth-Method none, empty user and password, and the
    whole MAIL FROM / RCPT TO lines the client sent; the message reaches
    the backend the service named."""
    svc.default = ok_to(backend)
    g = smtpgate(http_conf(svc.url, mail="    smtp_auth none plain;"))
    with g.session() as c:
        c.ehlo("client.test")
        assert c.cmd("MAIL FROM:<anon@example.org> SIZE=10").code == 250
        r = c.cmd("RCPT TO:<rcpt@example.net>")
        assert r.raw == b"250 2.1.5 Recipient OK\r\n", r
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: anonymous\r\n\r\nhello\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    (msg,) = backend.wait_messages(1)
    assert msg.mail_from == "anon@example.org"
    assert msg.rcpt_tos == ["rcpt@example.net"]
    (req,) = svc.requests
    assert req.header("Auth-Method") == "none"
    assert req.header("Auth-User") == ""
    assert req.header("Auth-Pass") == ""
    assert req.header("Auth-SMTP-Helo") == "client.test"
    unescape = lambda v: v.replace("%20", " ")
    assert unescape(req.header("Auth-SMTP-From")) == \
        "MAIL FROM:<anon@example.org> SIZE=10"
    assert unescape(req.header("Auth-SMTP-To")) == \
        "RCPT TO:<rcpt@example.net>"
    assert req.names()[-3:] == SMTP_HEADERS


def test_auth_none_envelope_lines_as_nginx_sends_them(smtpgate, backend,
                                                      svc):
    g = smtpgate(http_conf(svc.url, backend=backend,
                           mail="    smtp_auth none plain;"))
    with g.session() as c:
        c.ehlo("client.test")
        assert c.cmd("MAIL FROM:<anon@example.org> SIZE=10").code == 250
        assert c.cmd("RCPT TO:<rcpt@example.net>").code == 250
    assert svc.last.header("Auth-SMTP-From") == \
        "MAIL FROM:<anon@example.org> SIZE=10"
    assert svc.last.header("Auth-SMTP-To") == "RCPT TO:<rcpt@example.net>"


def test_auth_none_refused_is_550(smtpgate, backend, svc):
    svc.default = refuse("No relaying for you")
    g = smtpgate(http_conf(svc.url, backend=backend,
                           mail="    smtp_auth none plain;"))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        r = c.cmd("RCPT TO:<b@example.net>")
        assert r.code == 550, r
    assert backend.commands == []


def _tls_gate(smtpgate, pki, svc, backend, verify=None, more=""):
    extra = cert_directives(pki, "mx.test") + more
    if verify:
        extra += (f"\nssl_verify_client {verify};"
                  f"\nssl_client_certificate {pki.ca};")
    return smtpgate(http_conf(
        svc.url, backend=backend, require_tls=True,
        listen=("127.0.0.1:@PORT@",),
        server=indent("starttls on;\n" + extra)))


def _starttls_login(g, pki, cert=None, tls12=False):
    ctx = pki.client_context(cert)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c = TlsSmtp("127.0.0.1", g.port, 30)
    try:
        assert c.greeting().code == 220
        c.ehlo()
        c.starttls(ctx, "mx.test")
        c.ehlo()
        r = c.auth_plain("alice", "alice-secret")
        assert (r.code, r.last) == OK
        info = (c.tls.version(), c.tls.cipher()[0])
        c.cmd("QUIT")
    finally:
        c.close()
    return info


def test_tls_headers_after_starttls(smtpgate, backend, svc, pki):
    g = _tls_gate(smtpgate, pki, svc, backend)
    version, cipher = _starttls_login(g, pki)
    (req,) = svc.requests
    assert req.header("Auth-SSL") == "on"
    assert req.header("Auth-SSL-Protocol") == version
    assert req.header("Auth-SSL-Cipher") == cipher
    assert req.header("Auth-SSL-Subject") is None
    names = req.names()
    ssl_names = [n for n in names if n.startswith("Auth-SSL")]
    assert ssl_names[:3] == ["Auth-SSL", "Auth-SSL-Protocol",
                             "Auth-SSL-Cipher"]
    # After Client-Host, before the SMTP headers (nginx's order).
    assert names.index("Auth-SSL") == names.index("Client-Host") + 1


def _cert_facts(pki, name):
    path = pki.cert(name)
    out = {}
    for field in ("subject", "issuer"):
        p = pkilib.run(["openssl", "x509", "-noout", "-" + field,
                        "-nameopt", "RFC2253", "-in", path])
        out[field] = p.stdout.decode().strip().split("=", 1)[1]
    p = pkilib.run(["openssl", "x509", "-noout", "-serial", "-in", path])
    out["serial"] = p.stdout.decode().strip().split("=", 1)[1]
    out["fingerprint"] = hashlib.sha1(pkilib.der(path)).hexdigest()
    return out


def test_client_certificate_headers(smtpgate, backend, svc, pki):
    """With ssl_verify_client and a client certificate: the verification
    result, subject, issuer, serial and SHA-1 fingerprint."""
    g = _tls_gate(smtpgate, pki, svc, backend, verify="optional")
    _starttls_login(g, pki, cert="alice")
    _starttls_login(g, pki)
    with_cert, without = svc.requests
    facts = _cert_facts(pki, "alice")
    assert with_cert.header("Auth-SSL-Verify") == "SUCCESS"
    unescape = lambda v: v.replace("%20", " ").replace("%25", "%")
    assert unescape(with_cert.header("Auth-SSL-Subject")) == facts["subject"]
    assert unescape(with_cert.header("Auth-SSL-Issuer")) == facts["issuer"]
    assert with_cert.header("Auth-SSL-Serial") == facts["serial"]
    assert with_cert.header("Auth-SSL-Fingerprint") == facts["fingerprint"]
    names = with_cert.names()
    i = names.index("Auth-SSL-Verify")
    assert names[i:i + 5] == ["Auth-SSL-Verify", "Auth-SSL-Subject",
                              "Auth-SSL-Issuer", "Auth-SSL-Serial",
                              "Auth-SSL-Fingerprint"], names
    assert without.header("Auth-SSL-Verify") == "NONE"
    assert without.header("Auth-SSL-Subject") is None


def test_certificate_dn_sent_unescaped_like_nginx(smtpgate, backend, svc,
                                                   pki):
    g = _tls_gate(smtpgate, pki, svc, backend, verify="optional")
    _starttls_login(g, pki, cert="alice")
    facts = _cert_facts(pki, "alice")
    assert svc.last.header("Auth-SSL-Issuer") == facts["issuer"]


def test_client_certificate_pem_when_asked(smtpgate, backend, svc, pki):
    """auth_http_pass_client_cert on: Auth-SSL-Cert carries the PEM,
    escaped as nginx escapes it (newlines as %0A); off: no header."""
    import urllib.parse
    g = _tls_gate(smtpgate, pki, svc, backend, verify="optional",
                  more="\nauth_http_pass_client_cert on;")
    _starttls_login(g, pki, cert="alice")
    sent = svc.last.header("Auth-SSL-Cert")
    assert sent and "\n" not in sent and "%0A" in sent, sent
    with open(pki.path("alice.pem")) as f:
        pem = f.read()
    assert urllib.parse.unquote(sent).strip() == pem.strip()


def test_client_certificate_pem_not_sent_by_default(smtpgate, backend, svc,
                                                    pki):
    g = _tls_gate(smtpgate, pki, svc, backend, verify="optional")
    _starttls_login(g, pki, cert="alice")
    assert svc.last.header("Auth-SSL-Cert") is None


def test_ipv6_client_ip(smtpgate, backend, svc):
    if not net.ipv6_available():
        pytest.skip("no IPv6 loopback")
    g = smtpgate(http_conf(svc.url, backend=backend,
                           listen=("[::1]:@PORT6@",)))
    assert auth_session(g).code == 235
    assert svc.last.header("Client-IP") == "::1"


def test_unix_socket_service(smtpgate, backend, services):
    sock = f"/tmp/smtpgate-auth-{os.getpid()}-{time.monotonic_ns()}.sock"
    s = services(unix=sock, path="/check/me")
    g = smtpgate(http_conf(s.url, backend=backend))
    assert auth_session(g).code == 235
    (req,) = s.requests
    assert req.head.startswith(b"GET /check/me HTTP/1.1\r\n"
                               b"Host: localhost\r\n"), req.head


# -- against nginx's own mail module ------------------------------------------


def _nginx_mail_available():
    return os.access(Nginx.BIN, os.X_OK) and os.path.exists(Nginx.MAIL_MODULE)


# Where smtpgate's requests differ from nginx 1.22's.  The first two are
# harmless; the others are product bugs with an xfail test each.
KNOWN_DIFFERENCES = {
    "host-port": "Host carries the URL's port (nginx: the host alone)",
    "smtp-headers": "Auth-SMTP-Helo/From/To also for logins, From and To "
                    "empty (nginx: with smtp_auth none only)",
    "login-method": "test_login_is_sent_as_plain_like_nginx",
    "dn-escape": "test_certificate_dn_sent_unescaped_like_nginx",
    "smtp-escape": "test_auth_none_envelope_lines_as_nginx_sends_them",
}


def _normalized(req, known):
    """A request as (method, path, [(name, value)]) with the differences
    listed in `known` taken out."""
    out = []
    method = req.header("Auth-Method")
    for n, v in req.headers:
        if n == "Host":
            v = v.rsplit(":", 1)[0] if "host-port" in known else v
        if n == "Auth-Salt":
            v = "<salt>"
        if n in SMTP_HEADERS and method != "none" and "smtp-headers" in known:
            continue
        if n == "Auth-Method" and "login-method" in known and v == "login":
            v = "plain"
        if n in ("Auth-SSL-Subject", "Auth-SSL-Issuer") and "dn-escape" \
                in known:
            v = v.replace("%20", " ")
        if n in SMTP_HEADERS and method == "none" and "smtp-escape" in known:
            v = v.replace("%20", " ")
        out.append((n, v))
    return req.method, req.path, out


def test_same_headers_as_nginx(smtpgate, backend, svc, pki):
    """The same five sessions through nginx's mail module and through
    smtpgate give the same requests, but for the differences named here
    (each reported on its own)."""
    if not _nginx_mail_available():
        pytest.skip("nginx or its mail module (libnginx-mod-mail) missing")
    svc.default = ok_to(backend)
    mail = ("    auth_http_header X-Auth-Key \"k3y\";\n"
            "    smtp_auth plain login cram-md5;\n"
            f"    ssl_certificate {pki.cert('mx.test')};\n"
            f"    ssl_certificate_key {pki.key('mx.test')};\n"
            "    ssl_verify_client optional;\n"
            f"    ssl_client_certificate {pki.ca};")
    g = smtpgate(http_conf(
        svc.url, mail=mail, require_tls=False,
        server="        starttls on;",
        servers=["        listen 127.0.0.1:@PORTN@;\n"
                 "        protocol smtp;\n"
                 "        smtp_auth none;"]))
    ngx = Nginx(f"""
mail {{
    server_name mx.test;
    auth_http {svc.hostport}/auth;
    xclient off;
{mail}
    server {{ listen 127.0.0.1:@PORT@; protocol smtp; starttls on; }}
    server {{ listen 127.0.0.1:@PORTN@; protocol smtp; smtp_auth none; }}
}}
""", mail_module=True).start()
    try:
        runs = {}
        for name, port, nport in (("smtpgate", g.port, g.ports["PORTN"]),
                                  ("nginx", ngx.port, ngx.ports["PORTN"])):
            first = len(svc.requests)
            _scripted_sessions(pki, port, nport)
            runs[name] = svc.wait_requests(first + 5)[first:first + 5]
    finally:
        ngx.stop()
    known = set(KNOWN_DIFFERENCES)
    for ours, theirs in zip(runs["smtpgate"], runs["nginx"]):
        assert _normalized(ours, known)[2] == _normalized(theirs, known)[2], \
            f"smtpgate:\n{ours.head.decode('latin-1')}\n" \
            f"nginx:\n{theirs.head.decode('latin-1')}"
        assert ours.method == theirs.method == "GET"
        assert ours.path == theirs.path == "/auth"
    # What each known difference is.
    sg, nx = runs["smtpgate"], runs["nginx"]
    assert nx[0].header("Host") == "127.0.0.1"
    assert sg[0].header("Host") == svc.hostport
    assert nx[1].header("Auth-Method") == "plain"          # AUTH LOGIN
    assert nx[0].header("Auth-SMTP-Helo") is None
    assert " " in nx[3].header("Auth-SSL-Issuer")
    assert nx[4].header("Auth-SMTP-To") == "RCPT TO:<rcpt@example.net>"


def _scripted_sessions(pki, port, none_port):
    """PLAIN, LOGIN, CRAM-MD5 over STARTTLS, PLAIN with a client
    certificate over TLS 1.2, and an anonymous RCPT: one request each."""
    def plain_start():
        c = TlsSmtp("127.0.0.1", port, 30)
        assert c.greeting().code == 220
        c.ehlo("client.test")
        return c

    def tls(c, cert=None):
        ctx = pki.client_context(cert)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        assert c.cmd("STARTTLS").code == 220
        c.wrap(ctx, "mx.test")
        c.ehlo("client.test")

    with plain_start() as c:
        assert c.auth_plain("j\u00fcrgen %x", "pa ss\t%\x01\u00e9").code == 235
    with plain_start() as c:
        assert c.auth_login("bob", "bob secret").code == 235
    with plain_start() as c:
        tls(c)
        r = c.cmd("AUTH CRAM-MD5")
        assert r.code == 334
        assert c.cmd(b64("tim " + "a" * 32)).code == 235
    with plain_start() as c:
        tls(c, cert="alice")
        assert c.auth_plain("alice", "pw").code == 235
    c = TlsSmtp("127.0.0.1", none_port, 30)
    with c:
        assert c.greeting().code == 220
        c.ehlo("client.test")
        assert c.cmd("MAIL FROM:<anon@example.org> SIZE=10").code == 250
        assert c.cmd("RCPT TO:<rcpt@example.net>").code == 250


# ==========================================================================
# 2. Where the session goes


def test_auth_server_routes_without_proxy_pass(smtpgate, backend, svc):
    svc.default = ok_to(backend)
    g = smtpgate(http_conf(svc.url))
    assert "proxy_pass" not in g.conf_text
    r, c = auth_session(g, quit=False)
    with c:
        assert (r.code, r.last) == OK
        send_message(c)
    (msg,) = backend.wait_messages(1)
    assert b"Subject: via auth_http" in msg.content


def test_auth_server_overrides_proxy_pass(smtpgate, backend, svc):
    other = AiosmtpdBackend().start()
    try:
        svc.default = ok_to(other)
        g = smtpgate(http_conf(svc.url, backend=backend))
        r, c = auth_session(g, quit=False)
        with c:
            assert r.code == 235
            send_message(c)
        other.wait_messages(1)
        assert backend.commands == []
    finally:
        other.stop()


def test_ok_without_auth_server_uses_proxy_pass(smtpgate, backend, svc):
    svc.default = ok()
    g = smtpgate(http_conf(svc.url, backend=backend))
    r, c = auth_session(g, quit=False)
    with c:
        assert r.code == 235
        send_message(c)
    backend.wait_messages(1)


def test_ok_without_auth_server_nor_proxy_pass(smtpgate, svc):
    svc.default = ok()
    g = smtpgate(http_conf(svc.url))
    mark = g.log_mark()
    r, c = auth_session(g, quit=False)
    c.close()
    assert r.raw == b"451 4.4.1 No backend available, try again later\r\n"
    g.wait_log(r"no backend for this session", since=mark)


def test_auth_server_ipv6(smtpgate, svc):
    if not net.ipv6_available():
        pytest.skip("no IPv6 loopback")
    b6 = AiosmtpdBackend(host=net.IPV6).start()
    try:
        svc.default = ok("::1", b6.port)
        g = smtpgate(http_conf(svc.url))
        r, c = auth_session(g, quit=False)
        with c:
            assert (r.code, r.last) == OK
            send_message(c)
        (msg,) = b6.wait_messages(1)
        assert msg.peer[0] == "::1"
    finally:
        b6.stop()


def test_auth_server_host_name_is_resolved_off_the_loop(smtpgate, backend,
                                                       svc):
    """Auth-Server may be a host name (nginx takes addresses only): it is
    resolved on the worker's thread pool and each address is tried."""
    svc.default = ok("localhost", backend.port)
    g = smtpgate(http_conf(svc.url))
    r, c = auth_session(g, quit=False)
    with c:
        assert (r.code, r.last) == OK
        send_message(c)
    assert len(backend.wait_messages(1)) == 1


@pytest.mark.parametrize("answer,why", [
    (ok("bad_host!", 25), r"neither an address and port nor a host name"),
    (ok("127.0.0.1"), r"Auth-Server without Auth-Port"),
    (ok("127.0.0.1", "smtp"), r"neither an address and port nor"),
    (ok("127.1", 25), r"neither an address and port nor a host name"),
    (ok("010.0.0.1", 25), r"neither an address and port nor a host name"),
], ids=["bad-name", "no-port", "port-name", "short-ipv4", "octal-ipv4"])
def test_auth_server_unusable_is_454(smtpgate, backend, svc, answer, why):
    svc.default = answer
    g = smtpgate(http_conf(svc.url))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        r = c.auth_plain("alice", "alice-secret")
        assert r.raw == TEMPFAIL, r
        assert c.expect("NOOP", 250)
    line = g.wait_log(r"\[error\] .*authentication backend unavailable "
                      r"for \"alice\": .*" + why, since=mark)
    assert line
    assert backend.commands == []


def test_auth_upstream_unknown_is_refused_with_451(smtpgate, backend, svc):
    svc.default = ok(headers=[("Auth-Upstream", "pool1")])
    g = smtpgate(http_conf(svc.url, backend=backend))
    mark = g.log_mark()
    r, c = auth_session(g, quit=False)
    c.close()
    assert (r.code, r.last) == (451, "4.4.1 No backend available, try "
                                     "again later"), r
    g.wait_log(r'the route of the authentication backend \(auth_http\) gave '
               r'"pool1", which is neither an upstream group', since=mark)
    assert backend.commands == []


# ==========================================================================
# 3. Refusals


def test_auth_status_text_becomes_535_text(smtpgate, backend, svc):
    svc.default = refuse("Invalid login or password")
    g = smtpgate(http_conf(svc.url, backend=backend))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        r = c.auth_plain("alice", "wrong")
        assert r.raw == b"535 5.7.8 Invalid login or password\r\n"
        assert c.expect("NOOP", 250)
    g.wait_log(r"authentication failed for \"alice\"", since=mark)
    assert backend.commands == []


def test_auth_error_code_is_used(smtpgate, backend, svc):
    svc.default = refuse("Sending from your address is not allowed",
                         headers=[("Auth-Error-Code", "550 5.7.1")])
    g = smtpgate(http_conf(svc.url, backend=backend))
    r = auth_session(g)
    assert r.raw == (b"550 5.7.1 Sending from your address is not "
                     b"allowed\r\n")


@pytest.mark.parametrize("code,reply", [
    ("535", b"535 5.7.8 No\r\n"), ("550", b"550 5.7.1 No\r\n"),
    ("454", b"454 4.7.0 No\r\n")])
def test_bare_auth_error_code_gets_an_enhanced_code(smtpgate, backend, svc,
                                                     code, reply):
    """RFC 2034: every reply carries an enhanced status code, also when
    the service sends the bare code."""
    svc.default = refuse("No", headers=[("Auth-Error-Code", code)])
    g = smtpgate(http_conf(svc.url, backend=backend))
    assert auth_session(g).raw == reply


def test_auth_error_code_421_closes_the_connection(smtpgate, backend, svc):
    """421 says the server closes the connection, and so it does."""
    svc.default = refuse("Service shutting down",
                         headers=[("Auth-Error-Code", "421 4.3.2")])
    g = smtpgate(http_conf(svc.url, backend=backend))
    with g.session() as c:
        c.ehlo()
        c.send(b"AUTH PLAIN " + plain_token("alice", "pw").encode()
               + b"\r\n")
        rest = c.read_until_closed()
    assert [r.raw for r in rest] == [
        b"421 4.3.2 Service shutting down\r\n"], rest


def test_temporary_error_code_is_not_counted(smtpgate, backend, svc):
    """A 4xx Auth-Error-Code is a temporary failure: smtp_auth_attempts
    does not count it, while two 535s end the session."""
    g = smtpgate(http_conf(svc.url, backend=backend,
                           mail="    smtp_auth_attempts 2;"))
    svc.queue(*[refuse("Try later", headers=[("Auth-Error-Code",
                                              "451 4.7.1")])] * 4)
    with g.session() as c:
        c.ehlo()
        for _ in range(4):
            assert c.auth_plain("alice", "pw").raw == \
                b"451 4.7.1 Try later\r\n"
        assert c.auth_plain("alice", "pw").code == 235
    svc.default = refuse("Nope")
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "pw").raw == b"535 5.7.8 Nope\r\n"
        r = c.auth_plain("alice", "pw")
        assert r.raw == b"535 5.7.8 Nope\r\n"
        assert c.reply().code == 421
        c.expect_closed()


def test_auth_wait_delays_the_refusal(smtpgate, backend, svc):
    svc.default = refuse("Slow down", headers=[("Auth-Wait", "2")])
    g = smtpgate(http_conf(svc.url, backend=backend))
    with g.session() as c:
        c.ehlo()
        t0 = time.monotonic()
        r = c.auth_plain("alice", "wrong")
        elapsed = time.monotonic() - t0
        assert r.raw == b"535 5.7.8 Slow down\r\n"
    assert elapsed >= 1.8, elapsed


# ==========================================================================
# 4. Keep-alive


def _logins(g, n):
    for i in range(n):
        r = auth_session(g)
        assert (r.code, r.last) == OK, f"login {i + 1}: {r!r}"


def test_sequential_logins_share_one_connection(smtpgate, backend, svc):
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    _logins(g, 10)
    assert len(svc.requests) == 10
    assert set(svc.conns_of()) == {0}, svc.conns_of()
    assert len(svc.connections) == 1


@pytest.mark.parametrize("answer", [
    ok(headers=[("Connection", "close")]),
    ok(version="HTTP/1.0"),
    ok(length=None),                                  # no Content-Length
    ok(body=b"x", length=0),                          # body beyond it
    ok(headers=[("Transfer-Encoding", "chunked")], length=None,
       body=b"0\r\n\r\n"),
], ids=["connection-close", "http10", "no-content-length", "extra-body",
        "chunked"])
def test_answers_that_end_the_connection(smtpgate, backend, svc, answer):
    svc.default = answer
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    _logins(g, 4)
    assert svc.conns_of() == [0, 1, 2, 3]


def test_http10_keep_alive_is_reused(smtpgate, backend, svc):
    svc.default = ok(version="HTTP/1.0",
                     headers=[("Connection", "keep-alive")])
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    _logins(g, 4)
    assert svc.conns_of() == [0, 0, 0, 0]


def test_keepalive_zero_opens_a_connection_each_time(smtpgate, backend, svc):
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1,
                           mail="    auth_http_keepalive 0;"))
    _logins(g, 4)
    assert svc.conns_of() == [0, 1, 2, 3]
    svc.wait_closed(10)


def _parallel_logins(g, n):
    """n logins at once (the service holds each answer a moment, so
    their requests overlap and each takes a connection of its own)."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        replies = list(pool.map(lambda _: auth_session(g), range(n)))
    for r in replies:
        assert (r.code, r.last) == OK, r


def test_keepalive_default_keeps_a_burst(smtpgate, backend, svc):
    """The default pool (32) keeps the connections of 20 logins made at
    once, and the next burst of 20 goes over them again: no connect,
    close and TIME_WAIT per login when a worker is busy."""
    svc.default = ok(delay=0.3)
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    _parallel_logins(g, 20)
    assert len(svc.connections) == 20
    assert len(svc.open_connections()) == 20
    _parallel_logins(g, 20)
    assert len(svc.requests) == 40
    assert len(svc.connections) == 20, svc.conns_of()


def test_keepalive_limit_closes_the_rest(smtpgate, backend, svc):
    """auth_http_keepalive 4: of 10 connections a burst opened, 4 stay."""
    svc.default = ok(delay=0.3)
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1,
                           mail="    auth_http_keepalive 4;"))
    _parallel_logins(g, 10)
    assert len(svc.connections) == 10
    deadline = time.monotonic() + 10
    while len(svc.open_connections()) > 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(svc.open_connections()) == 4


def test_keepalive_timeout_closes_idle_connections(smtpgate, backend, svc):
    """A kept connection unused for auth_http_keepalive_timeout is
    closed by smtpgate (logged at debug); the next login opens another."""
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1,
                           mail="    auth_http_keepalive_timeout 1s;",
                           level="debug"))
    mark = g.log_mark()
    _logins(g, 2)
    assert svc.conns_of() == [0, 0]
    assert svc.open_connections() == [0]
    svc.wait_closed(10)
    assert log_lines(g, r"auth_http: an idle connection to "
                        r"http://127\.0\.0\.1:\d+/auth closed "
                        r"\(auth_http_keepalive_timeout\)", mark)
    _logins(g, 1)
    assert svc.conns_of() == [0, 0, 1]


def test_service_half_closes_kept_connection(smtpgate, backend, svc):
    """The service ends a kept-alive connection after answering: the next
    login goes on a new connection and succeeds."""
    svc.default = ok(half_close=True)
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    mark = g.log_mark()
    _logins(g, 3)
    assert svc.conns_of() == [0, 1, 2]
    assert not log_lines(g, r"auth_http service .* failed", mark)


def test_service_drops_a_reused_connection(smtpgate, backend, svc):
    """The service closes a kept-alive connection instead of answering
    the request on it: smtpgate asks again on a new connection, the
    client logs in, and the service is not counted as failed."""
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    mark = g.log_mark()
    _logins(g, 1)
    svc.queue(Answer(drop=True))
    _logins(g, 2)
    assert svc.conns_of() == [0, 0, 1, 1]
    assert not log_lines(g, r"auth_http service .* failed", mark)


def test_slow_answer_does_not_block_other_sessions(smtpgate, backend, svc):
    """While one request waits for a slow answer, another session of the
    same worker is answered on a second connection."""
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    release = threading.Event()

    def answer(req):
        if req.header("Auth-User") == "slow":
            release.wait(20)
        return ok()
    svc.responder = answer
    try:
        slow = g.session()
        slow.ehlo()
        slow.send(f"AUTH PLAIN {plain_token('slow', 'pw')}\r\n")
        svc.wait_requests(1)
        # Were the worker waiting for the slow answer, this would time out.
        with g.session(timeout=8) as c:
            c.ehlo()
            r = c.auth_plain("quick", "pw")
            assert (r.code, r.last) == OK
        assert not release.is_set()
    finally:
        release.set()
    with slow:
        assert slow.reply().code == 235
    assert svc.conns_of() == [0, 1]


# ==========================================================================
# 5. Failover


def _closed_port_url():
    return f"http://127.0.0.1:{net.free_port()}/auth"


def test_unreachable_first_service_then_second(smtpgate, backend, svc):
    dead = _closed_port_url()
    g = smtpgate(http_conf(dead, svc.url, backend=backend))
    mark = g.log_mark()
    assert auth_session(g).code == 235
    assert len(svc.requests) == 1
    (line,) = log_lines(g, r"auth_http service \S+ failed", mark)
    assert re.search(r"\[error\] .*auth_http service " + re.escape(dead)
                     + r" failed: connect\(\) failed.*\(111: Connection "
                     r"refused\)", line), line
    assert "skipping it for auth_http_fail_timeout" in line, line


def test_garbage_first_service_is_skipped_for_fail_timeout(smtpgate,
                                                           backend,
                                                           services):
    bad, good = services(), services()
    bad.default = Answer(raw=b"SMTP? 220 hello\r\n\r\n")
    # The URLs in two directives: the same failover order.
    g = smtpgate(http_conf(bad.url, backend=backend, workers=1,
                           mail=f"    auth_http {good.url};\n"
                                "    auth_http_fail_timeout 1s;"))
    mark = g.log_mark()
    assert auth_session(g).code == 235
    assert (len(bad.requests), len(good.requests)) == (1, 1)
    (line,) = log_lines(g, r"auth_http service \S+ failed", mark)
    assert f"auth_http service {bad.url} failed: bad status line" in line, \
        line
    # Within auth_http_fail_timeout the bad one is not even asked.
    _logins(g, 3)
    assert (len(bad.requests), len(good.requests)) == (1, 4)
    # Once it has passed, it is asked again first.
    time.sleep(1.3)
    bad.default = ok()
    assert auth_session(g).code == 235
    assert (len(bad.requests), len(good.requests)) == (2, 4)


def test_every_service_down_is_454(smtpgate, backend, services):
    dead = _closed_port_url()
    bad = services()
    bad.default = Answer(raw=b"\x00\x01garbage\r\n\r\n")
    g = smtpgate(http_conf(dead, bad.url, backend=backend))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        r = c.auth_plain("alice", "alice-secret")
        assert r.raw == TEMPFAIL
        assert c.expect("NOOP", 250)
    lines = log_lines(g, r"auth_http service \S+ failed", mark)
    assert len(lines) == 2, lines
    assert f"{dead} failed: connect() failed" in lines[0], lines
    assert "(111: Connection refused)" in lines[0], lines
    assert f"{bad.url} failed: bad status line" in lines[1], lines
    assert all(re.search(r"\[error\]", l) for l in lines), lines
    g.wait_log(r"authentication backend unavailable for \"alice\": no "
               r"auth_http service could be reached", since=mark)
    assert backend.commands == []


# ==========================================================================
# 6. Broken services: 454, never 535, never a hang


BROKEN = {
    "slow": (Answer(delay=4, headers=[("Auth-Status", "OK")]),
             r"no answer within auth_http_timeout"),
    "close-without-answer": (Answer(drop=True),
                             r"the connection closed before any answer"),
    "oversized-head": (ok(headers=[(f"X-Filler-{i}", "y" * 100)
                                   for i in range(90)]),
                       r"response head too (long|large)"),
    "duplicate-auth-status": (Answer(headers=[("Auth-Status", "OK"),
                                              ("Auth-Status", "OK")]),
                              r"duplicate Auth-Status header"),
    # as nginx, the status line does not matter: a 500 without an
    # answer in its headers is a temporary failure
    "http-500": (Answer("500 Internal Server Error"),
                 r"error status and no Auth-Status header"),
    "no-auth-status": (Answer(headers=[("Auth-Server", "127.0.0.1"),
                                       ("Auth-Port", "25")]),
                       r"sent no Auth-Status header"),
    "half-answer-then-close": (Answer(raw=b"HTTP/1.1 200 OK\r\n"
                                      b"Auth-Status: OK\r\n"),
                               r"closed in the middle of the answer"),
    "not-http": (Answer(raw=b"220 mx ESMTP\r\n"),
                 r"bad status line"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_service_is_temporary_failure(smtpgate, backend, svc, case):
    answer, why = BROKEN[case]
    svc.default = answer
    g = smtpgate(http_conf(svc.url, backend=backend,
                           mail="    auth_http_timeout 1s;\n"
                                "    smtp_auth_attempts 1;"))
    mark = g.log_mark()
    with g.session(timeout=20) as c:
        c.ehlo()
        t0 = time.monotonic()
        r = c.auth_plain("alice", "alice-secret")
        elapsed = time.monotonic() - t0
        assert r.raw == TEMPFAIL, r
        # Not counted as a failed login (smtp_auth_attempts 1): the
        # session goes on.
        assert c.expect("NOOP", 250)
    if case == "slow":
        assert elapsed >= 0.9, elapsed
    g.wait_log(why, since=mark)
    assert backend.commands == []
    assert not log_lines(g, r"authentication failed for", mark)


@pytest.mark.parametrize("case", ["duplicate-auth-status", "not-http"])
def test_broken_answer_on_reused_connection(smtpgate, backend, svc, case):
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    _logins(g, 1)
    answer, why = BROKEN[case]
    mark = g.log_mark()
    svc.queue(answer)
    r = auth_session(g)
    assert len(svc.requests) == 2, \
        f"one login sent {len(svc.requests) - 1} times to the service; " \
        f"the client got {r!r}"
    assert r.raw == TEMPFAIL, r
    g.wait_log(why, since=mark)


def test_url_without_a_scheme_is_http(smtpgate, backend, svc):
    """nginx's own example writes "auth_http localhost:9000/cgi-bin/
    nginxauth.cgi": without a scheme the URL is http://, as there."""
    url = svc.url
    assert url.startswith("http://")
    g = smtpgate(http_conf(url[len("http://"):], backend=backend))
    r = auth_session(g)
    assert (r.code, r.last) == OK, r
    assert svc.requests[-1].path == svc.path


@pytest.mark.parametrize("config,error", [
    ("auth_http ftp://127.0.0.1/auth;", r"must start with http://"),
    ("auth_http http://127.0.0.1:9/auth;\n    auth_file users;",
     r"more than one authentication backend"),
    ("auth_http http://127.0.0.1:9/auth;\n    auth_http_keepalive 2000;",
     r"auth_http_keepalive"),
], ids=["ftp", "with-auth-file", "keepalive-range"])
def test_config_errors(smtpgate, config, error):
    g = smtpgate(gatelib.conf(auth_file=None, mail="    " + config),
                 start=False)
    r = g.ctl("-t")
    assert r.returncode != 0, r.stderr
    assert re.search(error, r.stderr), r.stderr


def test_config_without_proxy_pass_is_accepted(smtpgate):
    g = smtpgate(http_conf("http://127.0.0.1:9/auth",
                           "unix:/tmp/none.sock:/a"), start=False)
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr


# ==========================================================================
# 7. nginx as the auth service


NGINX_HTTP = """
http {{
    log_format keyed "$connection $connection_requests $http_auth_user";
    access_log @DIR@/access.log keyed;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;
    server {{
        listen 127.0.0.1:@PORT@;
        location /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port {port};
            {ret}
        }}
        location /deny {{
            add_header Auth-Status "Invalid login or password";
            add_header Auth-Error-Code "535 5.7.8";
            return 200 "";
        }}
    }}
}}
"""


def _nginx_service(backend, ret):
    if not os.access(Nginx.BIN, os.X_OK):
        pytest.skip("nginx is not installed")
    return Nginx(NGINX_HTTP.format(port=backend.port, ret=ret)).start()


def test_nginx_service_return_200(smtpgate, backend):
    ngx = _nginx_service(backend, 'return 200 "";')
    try:
        url = f"http://127.0.0.1:{ngx.port}"
        g = smtpgate(http_conf(url + "/auth", workers=1))
        for i in range(3):
            r, c = auth_session(g, f"user{i}", "pw", quit=False)
            with c:
                assert (r.code, r.last) == OK
                send_message(c, f"nginx {i}")
        backend.wait_messages(3)
        g2 = smtpgate(http_conf(url + "/deny", workers=1))
        assert auth_session(g2).raw == \
            b"535 5.7.8 Invalid login or password\r\n"
        log = ngx.wait_access_lines(4)
    finally:
        ngx.stop()
    # The three logins went over one kept-alive connection.
    conns = [l.split()[0] for l in log[:3]]
    assert len(set(conns)) == 1 and [l.split()[1] for l in log[:3]] == \
        ["1", "2", "3"], log


def test_nginx_service_return_204(smtpgate, backend):
    ngx = _nginx_service(backend, "return 204;")
    try:
        g = smtpgate(http_conf(f"http://127.0.0.1:{ngx.port}/auth"))
        r = auth_session(g)
    finally:
        ngx.stop()
    assert (r.code, r.last) == OK


# ==========================================================================
# 8. No password in the log


PASSWORD = "s3cr3t pa%ss"


def test_no_password_in_debug_log(smtpgate, backend, services):
    """At debug level, through a refusal, a dead service, a broken
    answer, a timeout and successful logins with relaying, the password
    appears in no form: as typed, escaped, in base64 or in part."""
    dead = _closed_port_url()
    svc = services()
    g = smtpgate(http_conf(dead, svc.url, backend=backend, level="debug",
                           mail="    smtp_auth_attempts 10;\n"
                                "    auth_http_timeout 1s;\n"
                                "    auth_http_fail_timeout 1s;"))
    svc.queue(refuse("Bad password", headers=[("Auth-Wait", "0")]),
              Answer(delay=3),
              Answer(raw=b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n"
                         b"Auth-Status: OK\r\n\r\n"))
    with g.session(timeout=20) as c:
        c.ehlo()
        assert c.auth_plain("alice", PASSWORD).code == 535   # refused
        assert c.auth_login("alice", PASSWORD).raw == TEMPFAIL  # timeout
    time.sleep(1.2)     # past auth_http_fail_timeout: both asked again
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", PASSWORD).raw == TEMPFAIL  # duplicate
    assert len(svc.requests) == 3
    assert len(log_lines(g, r"auth_http service \S+ failed")) == 4
    svc2 = services()
    g2 = smtpgate(http_conf(svc2.url, backend=backend, level="debug",
                            mail="    smtp_auth plain login;"))
    for mech in ("PLAIN", "LOGIN"):
        r, c = auth_session(g2, "alice", PASSWORD, mech=mech, quit=False)
        with c:
            assert r.code == 235
            send_message(c)
    assert svc2.requests[0].header("Auth-Pass") == "s3cr3t%20pa%25ss"
    forms = {PASSWORD, "s3cr3t%20pa%25ss", "s3cr3t", b64(PASSWORD),
             plain_token("alice", PASSWORD), "pa%ss", "pa%25ss"}
    for gate in (g, g2):
        log = gate.error_log()
        assert "auth_http request to" in log, "no debug lines"
        for form in forms:
            assert form not in log, f"{form!r} in {gate.error_log_path}"


@pytest.mark.skipif(not memscan.can_scan(), reason="reads /proc/PID/mem")
def test_no_password_left_in_worker_memory(smtpgate, backend, svc):
    """Once the sessions have ended, neither the client's password (in
    the request sent to the service) nor the backend password the
    service answered with (Auth-Pass) is left in the worker's memory:
    they are wiped, not merely freed."""
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    password = "Zq9xClientUNIQUE"
    svc.queue(ok_to(backend, headers=[("Auth-User", "bk"),
                                      ("Auth-Pass", "Bk7BackendUNIQUE")]),
              refuse("No"))
    mark = g.quiet_log_mark()   # past the start-up probe's close
    assert auth_session(g, password=password + "1").code == 235
    # the shorter answer leaves the end of the first in the buffer of the
    # kept connection, unless it was wiped
    assert auth_session(g, password=password + "2").code == 535
    assert svc.conns_of() == [0, 0]
    # each session's pool goes just after the worker logs its close
    net.wait_until(lambda: g.log_since(mark).count("session closed")
                   >= 2, 30, what="both sessions closed")
    with g.session():       # a greeting: the worker is past those closes
        pass
    (worker,) = g.workers()
    found = memscan.find(worker, [b"Auth-Pass: " + password.encode(),
                                  password.encode(), b"Bk7BackendUNIQUE"])
    assert not found, found


# ==========================================================================
# 9. Reload and quit


def test_reload_switches_service(smtpgate, backend, services):
    a, b = services(), services()
    g = smtpgate(http_conf(a.url, backend=backend, workers=1))
    _logins(g, 2)
    assert a.open_connections() == [0]      # kept alive
    old = g.workers()
    g.reload(http_conf(b.url, backend=backend, workers=1))
    # The old worker has only an idle connection to `a`: it must exit.
    g.wait_old_workers_gone(old, timeout=20)
    a.wait_closed(10)
    _logins(g, 2)
    assert (len(a.requests), len(b.requests)) == (2, 2)


@pytest.mark.parametrize("how", ["SIGQUIT", "-s quit"])
def test_graceful_quit_with_kept_connection(smtpgate, backend, svc, how):
    g = smtpgate(http_conf(svc.url, backend=backend, workers=2))
    _logins(g, 4)
    assert svc.open_connections(), "no connection kept alive"
    if how == "SIGQUIT":
        g.signal(signal.SIGQUIT)
    else:
        assert g.ctl("-s", "quit").returncode == 0
    assert g.wait_exit(20) == 0
    svc.wait_closed(10)


def test_quit_waits_for_a_session_in_auth(smtpgate, backend, svc):
    """A session waiting for the service when the worker drains still
    gets its answer and relays its message; then the worker exits."""
    g = smtpgate(http_conf(svc.url, backend=backend, workers=1))
    _logins(g, 1)
    svc.queue(ok(delay=1.0))
    c = g.session()
    c.ehlo()
    c.send(f"AUTH PLAIN {plain_token('alice', 'pw')}\r\n")
    svc.wait_requests(2)
    g.signal(signal.SIGQUIT)
    with c:
        assert c.reply().code == 235
        send_message(c)
    backend.wait_messages(1)
    assert g.wait_exit(20) == 0
    svc.wait_closed(10)


def test_auth_cache_hit_never_reaches_the_service(smtpgate, backend, svc):
    """With auth_cache, logging in again is answered by smtpgate itself
    (any worker): the service sees the first login only, and the session
    still goes to the backend the service named."""
    g = smtpgate(http_conf(svc.url, backend=backend, workers=2,
                           mail="    auth_cache zone=ahc:1m ttl=60s;"))
    for _ in range(4):
        r, c = auth_session(g, quit=False)
        with c:
            assert (r.code, r.last) == OK
            send_message(c)
    assert len(svc.requests) == 1
    assert len(backend.wait_messages(4)) == 4
