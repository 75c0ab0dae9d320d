"""proxy_smtp_auth: smtpgate logs in to the backend.

The backends are aiosmtpd servers that require AUTH (530 to MAIL until
a login succeeded) and record every attempt: the mechanism, the user and
whether it succeeded.  Checked: AUTH LOGIN to a backend that offers only
LOGIN and AUTH PLAIN when it is offered, both as the client's own user;
a refused login fails the attempt, the next peer is tried, and with none
left the client hears 451 4.4.1; a backend without AUTH is the documented
error; Auth-User/Auth-Pass from an auth_http service replace the
client's credentials; a client that logged in with CRAM-MD5 (which does
not reveal its password) and no backend credentials gets 451 with a log
line that says why, without a single connection to a backend; the
password appears nowhere in the error log, even at debug level.
"""

import hashlib
import hmac
import base64
import smtplib

import pytest

from lib import gate as gatelib
from lib.authsvc import AuthService, ok
from lib.smtp import b64, plain_token
from lib.users import password

MSG = b"Subject: logged in\r\n\r\nhello\r\n"
NO_BACKEND = (451, "4.4.1 No backend available, try again later")
ALICE = {"alice": password("alice")}


def auth_conf(proxy_pass, mail="", **kw):
    lines = ["    proxy_smtp_auth on;", "    smtp_auth_fail_delay 0;"]
    if mail:
        lines.append(mail)
    return gatelib.conf(proxy_pass=proxy_pass, mail="\n".join(lines), **kw)


def upstream(name, peers, body=""):
    lines = [f"    upstream {name} {{"]
    lines += [f"        server {p};" for p in peers]
    if body:
        lines.append(body)
    lines.append("    }")
    return "\n".join(lines)


def send(g, user="alice", secret=None, login=False, port=None):
    """One session through smtplib: EHLO, AUTH PLAIN (or LOGIN), one
    message, QUIT."""
    with smtplib.SMTP("127.0.0.1", port or g.port, timeout=30) as c:
        c.ehlo("client.test")
        c.user, c.password = user, secret or password(user)
        if login:
            code, text = c.auth("LOGIN", c.auth_login,
                                initial_response_ok=False)
        else:
            code, text = c.auth("PLAIN", c.auth_plain)
        assert code == 235, text
        assert c.sendmail("a@example.org", ["b@example.org"], MSG) == {}


def auth_reply(g, user="alice", secret=None):
    """EHLO and AUTH PLAIN on a raw connection; the AUTH reply."""
    with g.session() as c:
        c.ehlo()
        return c.auth_plain(user, secret or password(user))


def test_auth_login_when_only_login_is_offered(smtpgate, make_backend):
    b = make_backend(auth=ALICE, auth_mechanisms=("LOGIN",))
    g = smtpgate(auth_conf(b.address))
    mark = g.log_mark()
    send(g)
    (m,) = b.wait_messages(1)
    assert m.login == "alice"
    (conn,) = b.sessions
    assert conn.auth == [("LOGIN", "alice", True)]
    assert [v for v, _ in conn.commands][:2] == ["EHLO", "AUTH"]
    g.wait_log(rf"backend {b.address} ready, logged in",
               since=mark)


def test_auth_plain_when_offered(smtpgate, make_backend):
    b = make_backend(auth=ALICE, auth_mechanisms=("LOGIN", "PLAIN"))
    g = smtpgate(auth_conf(b.address))
    # The client's own mechanism does not matter: LOGIN in front,
    # PLAIN behind.
    send(g, login=True)
    (m,) = b.wait_messages(1)
    assert m.login == "alice"
    assert b.sessions[0].auth == [("PLAIN", "alice", True)]


def test_refused_login_fails_over_to_the_next_peer(smtpgate, make_backend):
    bad = make_backend(auth={"alice": "not-her-password"})
    good = make_backend(auth=ALICE)
    mail = upstream("pool", [f"{bad.address} max_fails=0", good.address])
    g = smtpgate(auth_conf("pool", mail=mail))
    mark = g.log_mark()
    for _ in range(2):
        send(g)
    assert len(good.wait_messages(2)) == 2
    assert bad.messages == []
    # Round robin sends one of the two sessions to `bad` first.
    assert ("PLAIN", "alice", False) in bad.auth_attempts
    g.wait_log(rf'backend {bad.address} failed: AUTH reply "535 5\.7\.8 ',
               since=mark)


def test_refused_login_everywhere_is_451(smtpgate, make_backend):
    bad = make_backend(auth={"alice": "not-her-password"},
                       auth_mechanisms=("LOGIN",))
    g = smtpgate(auth_conf(bad.address))
    mark = g.log_mark()
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND
    g.wait_log(rf'backend {bad.address} failed: AUTH LOGIN password reply '
               r'"535 5\.7\.8 ', since=mark)
    g.wait_log(r"no backend available for proxy_pass after 1 attempt, "
               r"answering 451", since=mark)
    assert bad.auth_attempts == [("LOGIN", "alice", False)]


def test_backend_without_auth(smtpgate, backend):
    g = smtpgate(auth_conf(backend.address))
    mark = g.log_mark()
    r = auth_reply(g)
    assert (r.code, r.last) == NO_BACKEND
    g.wait_log(rf"backend {backend.address} failed: the backend offers "
               r"neither AUTH PLAIN nor AUTH LOGIN, and proxy_smtp_auth is "
               r"on", since=mark)
    assert backend.seen("AUTH") == []


def test_auth_after_starttls_and_xclient(smtpgate, make_backend):
    """A backend that offers AUTH only over TLS and takes XCLIENT: the
    handshake runs EHLO, STARTTLS, EHLO, XCLIENT, EHLO, AUTH, in that
    order, and the session logs in as the client."""
    b = make_backend(tls="starttls", auth=ALICE, auth_require_tls=True,
                     xclient=True)
    g = smtpgate(auth_conf(b.address, mail="    proxy_ssl starttls;"))
    mark = g.log_mark()
    send(g)
    (m,) = b.wait_messages(1)
    assert m.login == "alice" and m.conn.tls_mode == "starttls"
    verbs = [v for v, _ in m.conn.commands]
    assert verbs[:6] == ["EHLO", "STARTTLS", "EHLO", "XCLIENT", "EHLO",
                         "AUTH"], verbs
    assert "LOGIN=alice" in m.xclient
    g.wait_log(rf"backend {b.address} ready over TLS, logged in",
               since=mark)


@pytest.fixture
def svc():
    s = AuthService().start()
    yield s
    s.stop()


def http_auth_conf(svc, **kw):
    return gatelib.conf(auth_file=None, mail="\n".join([
        f"    auth_http {svc.url};",
        "    proxy_smtp_auth on;",
        "    smtp_auth_fail_delay 0;"]), **kw)


def test_auth_service_credentials_replace_the_clients(smtpgate, make_backend,
                                                      svc):
    b = make_backend(auth={"relay-user": "relay-pass"})
    svc.default = ok(b.host, b.port, headers=[("Auth-User", "relay-user"),
                                              ("Auth-Pass", "relay-pass")])
    g = smtpgate(http_auth_conf(svc))
    send(g, "alice", "what-the-client-typed")
    (m,) = b.wait_messages(1)
    assert m.login == "relay-user"
    assert b.auth_attempts == [("PLAIN", "relay-user", True)]


def cram_login(c, user, secret):
    r = c.cmd("AUTH CRAM-MD5")
    assert r.code == 334, r
    challenge = base64.b64decode(r.lines[0])
    digest = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    return c.cmd(b64(f"{user} {digest}"))


def test_cram_md5_client_without_backend_credentials(smtpgate, make_backend):
    """CRAM-MD5 does not reveal the password, and the users file gives no
    other credentials: the session cannot log in to any backend.  It gets
    451 at once, no backend is contacted (and none is marked failed), and
    the log says why."""
    a = make_backend(auth={"dave": password("dave")})
    b = make_backend(auth={"dave": password("dave")})
    mail = upstream("pool", [a.address, b.address]) + \
        "\n    smtp_auth plain login cram-md5;"
    g = smtpgate(auth_conf("pool", mail=mail))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        r = cram_login(c, "dave", password("dave"))
        assert (r.code, r.last) == NO_BACKEND
    g.wait_log(r"proxy_smtp_auth is on, but the client logged in with "
               r"CRAM-MD5, which does not reveal its password, and the "
               r"authentication backend gave no credentials for the "
               r"backend \(Auth-User, Auth-Pass\), answering 451",
               since=mark)
    assert a.connections == b.connections == 0
    log = g.log_since(mark)
    assert "failed" not in log and "not used for" not in log
    # The same user with PLAIN is relayed.
    send(g, "dave")
    assert len(a.messages) + len(b.messages) == 1


def test_password_never_in_the_log(smtpgate, make_backend, svc):
    """At debug level, through logins to the backend with PLAIN and LOGIN,
    a refused one, and credentials from the auth service, no password
    appears in the log in any form; the debug lines show
    "(credentials)"."""
    plain_b = make_backend(auth=ALICE, auth_mechanisms=("PLAIN",))
    login_b = make_backend(auth=ALICE, auth_mechanisms=("LOGIN",))
    refusing = make_backend(auth={"alice": "x"}, auth_mechanisms=("LOGIN",))
    g = smtpgate(auth_conf(plain_b.address, level="debug", servers=[
        "        listen 127.0.0.1:@PORT2@;\n"
        f"        proxy_pass {login_b.address};",
        "        listen 127.0.0.1:@PORT3@;\n"
        f"        proxy_pass {refusing.address};"]))
    send(g)
    send(g, login=True)
    send(g, port=g.ports["PORT2"])
    with g.connect(port=g.ports["PORT3"]) as c:
        c.greeting()
        c.ehlo()
        assert (c.auth_login("alice", password("alice")).code == 451)
    b = make_backend(auth={"relay-user": "relay-pass-42"})
    svc.default = ok(b.host, b.port, headers=[("Auth-User", "relay-user"),
                                              ("Auth-Pass", "relay-pass-42")])
    g2 = smtpgate(http_auth_conf(svc, level="debug"))
    send(g2)
    assert len(plain_b.messages) == 2 and len(login_b.messages) == 1
    assert len(b.messages) == 1
    secrets = [password("alice"), "relay-pass-42"]
    forms = set(secrets)
    for s in secrets:
        forms |= {b64(s), plain_token("alice", s),
                  plain_token("relay-user", s)}
    for gate in (g, g2):
        log = gate.error_log()
        assert "(credentials)" in log, "no debug lines for AUTH"
        for form in forms:
            assert form not in log, f"{form!r} in {gate.error_log_path}"
