"""SMTP AUTH against the users file: every hash kind, PLAIN and LOGIN,
right and wrong, and each way a client can get the exchange wrong."""

import smtplib

import pytest

from lib import gate as gatelib
from lib import smtp
from lib.smtp import b64, plain_token
from lib.users import USERS, password

OK = "2.7.0 Authentication successful"
INVALID = "5.7.8 Authentication credentials invalid"


def _authed_relay_works(c):
    """After 235 the client talks to the backend (aiosmtpd's reply text)."""
    assert c.expect("MAIL FROM:<a@example.org>", 250).last == \
        "2.1.0 Sender OK"


def test_ehlo_capabilities(gate):
    with gate.session() as c:
        r = c.ehlo("client.test")
        assert r.lines[0] == "mx.test"
        kw = smtp.ehlo_keywords(r)
        assert "PIPELINING" in kw
        assert "ENHANCEDSTATUSCODES" in kw
        assert smtp.ehlo_line(r, "AUTH") == "AUTH PLAIN LOGIN"


def test_smtp_auth_directive_limits_mechanisms(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, mail="    smtp_auth plain;"))
    with g.session() as c:
        assert smtp.ehlo_line(c.ehlo(), "AUTH") == "AUTH PLAIN"
        r = c.cmd("AUTH LOGIN")
        assert (r.code, r.last) == (
            504, "5.5.4 Unrecognized authentication mechanism")
        assert c.auth_plain("alice", password("alice")).code == 235


@pytest.mark.parametrize("user", sorted(USERS))
def test_auth_plain_right_password(gate, user):
    with gate.session() as c:
        c.ehlo()
        r = c.auth_plain(user, password(user))
        assert (r.code, r.last) == (235, OK)
        _authed_relay_works(c)


@pytest.mark.parametrize("user", sorted(USERS))
def test_auth_login_right_password(gate, user):
    with gate.session() as c:
        c.ehlo()
        assert c.cmd("AUTH LOGIN").raw == b"334 VXNlcm5hbWU6\r\n"
        assert c.cmd(b64(user)).raw == b"334 UGFzc3dvcmQ6\r\n"
        r = c.cmd(b64(password(user)))
        assert (r.code, r.last) == (235, OK)
        _authed_relay_works(c)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("user", sorted(USERS))
def test_wrong_password_then_retry(gate, backend, user, mech):
    with gate.session() as c:
        c.ehlo()
        auth = c.auth_plain if mech == "PLAIN" else c.auth_login
        r = auth(user, password(user) + "-wrong")
        assert (r.code, r.last) == (535, INVALID)
        # A hash prefix or a truncated password is wrong too.
        r = auth(user, password(user)[:-1])
        assert (r.code, r.last) == (535, INVALID)
        assert backend.commands == [], "backend contacted after failed AUTH"
        r = auth(user, password(user))
        assert (r.code, r.last) == (235, OK)


def test_unknown_user(gate):
    with gate.session() as c:
        c.ehlo()
        r = c.auth_plain("mallory", "whatever")
        assert (r.code, r.last) == (535, INVALID)


def test_plain_hash_is_not_a_password(gate, users):
    """The stored hash itself must not authenticate."""
    hashes, _ = users
    with gate.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", hashes["alice"]).code == 535
        assert c.auth_plain("dave", hashes["dave"]).code == 535


def test_auth_plain_without_initial_response(gate):
    with gate.session() as c:
        c.ehlo()
        assert c.cmd("AUTH PLAIN").raw == b"334 \r\n"
        r = c.cmd(plain_token("alice", password("alice")))
        assert (r.code, r.last) == (235, OK)
        _authed_relay_works(c)


def test_auth_plain_with_matching_authzid(gate):
    with gate.session() as c:
        c.ehlo()
        r = c.cmd("AUTH PLAIN "
                  + plain_token("alice", password("alice"), authzid="alice"))
        assert (r.code, r.last) == (235, OK)


def test_auth_mechanism_is_case_insensitive(gate):
    with gate.session() as c:
        c.ehlo()
        r = c.cmd("auth plain " + plain_token("bob", password("bob")))
        assert (r.code, r.last) == (235, OK)


@pytest.mark.parametrize("where", ["plain", "login-user", "login-password"])
def test_auth_cancelled(gate, where):
    with gate.session() as c:
        c.ehlo()
        if where == "plain":
            assert c.cmd("AUTH PLAIN").code == 334
        else:
            assert c.cmd("AUTH LOGIN").code == 334
            if where == "login-password":
                assert c.cmd(b64("alice")).code == 334
        r = c.cmd("*")
        assert (r.code, r.last) == (501, "5.7.0 Authentication cancelled")
        # The session is back in command state.
        assert c.expect("NOOP", 250)


@pytest.mark.parametrize("how", ["initial", "plain-continuation",
                                 "login-user", "login-password"])
def test_auth_bad_base64(gate, how):
    bad = "%%%not*base64%%%"
    with gate.session() as c:
        c.ehlo()
        if how == "initial":
            r = c.cmd("AUTH PLAIN " + bad)
        elif how == "plain-continuation":
            assert c.cmd("AUTH PLAIN").code == 334
            r = c.cmd(bad)
        else:
            assert c.cmd("AUTH LOGIN").code == 334
            if how == "login-password":
                assert c.cmd(b64("alice")).code == 334
            r = c.cmd(bad)
        assert (r.code, r.last) == (501, "5.5.2 Invalid base64 data")
        assert c.expect("NOOP", 250)


@pytest.mark.parametrize("token", [
    b64("alice" + password("alice")),               # no NUL at all
    b64("\0alice"),                                  # no password part
    b64("\0\0" + password("alice")),                 # empty user
    b64("\0alice\0"),                                # empty password
    b64("\0alice\0" + password("alice") + "\0x"),    # extra field
])
def test_auth_plain_malformed_token(gate, token):
    with gate.session() as c:
        c.ehlo()
        r = c.cmd("AUTH PLAIN " + token)
        assert r.code in (501, 535), r
        assert c.expect("NOOP", 250)


def test_unknown_mechanism(gate):
    with gate.session() as c:
        c.ehlo()
        r = c.cmd("AUTH XFOO")
        assert (r.code, r.last) == (
            504, "5.5.4 Unrecognized authentication mechanism")
        assert c.expect("NOOP", 250)


def test_auth_before_ehlo(gate):
    with gate.session() as c:
        r = c.cmd("AUTH PLAIN " + plain_token("alice", password("alice")))
        assert r.code == 503, r


def test_commands_after_auth_go_to_the_backend(gate):
    with gate.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        # smtpgate answers NOOP "250 2.0.0 OK"; aiosmtpd answers "250 OK".
        assert c.expect("NOOP", 250).last == "OK"


def test_smtplib_login_both_mechanisms(gate):
    for mech in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", gate.port, timeout=60) as c:
            c.ehlo("client.test")
            c.user, c.password = "carol", password("carol")
            method = c.auth_plain if mech == "PLAIN" else c.auth_login
            code, text = c.auth(mech, method, initial_response_ok=False)
            assert (code, text.decode()) == (235, OK)


# -- AUTH refused without TLS (the default) ---------------------------------


def test_default_requires_tls_for_auth(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, require_tls=True))
    with g.session() as c:
        r = c.ehlo()
        assert "AUTH" not in smtp.ehlo_keywords(r), r
        for cmd in ("AUTH PLAIN " + plain_token("alice", password("alice")),
                    "AUTH LOGIN"):
            r = c.cmd(cmd)
            assert (r.code, r.last) == (538, "5.7.11 Encryption required "
                                        "for requested authentication "
                                        "mechanism")
        assert backend.commands == []
        r = c.cmd("MAIL FROM:<a@example.org>")
        assert (r.code, r.last) == (530, "5.7.0 Authentication required")


def test_smtplib_login_only_mechanism_login(smtpgate, backend):
    """smtplib sends AUTH LOGIN with the user name as initial response when
    LOGIN is the only mechanism offered."""
    g = smtpgate(gatelib.conf(backend=backend, mail="    smtp_auth login;"))
    with smtplib.SMTP("127.0.0.1", g.port, timeout=60) as c:
        c.ehlo("client.test")
        assert c.esmtp_features["auth"].strip().upper() == "LOGIN"
        code, text = c.login("erin", password("erin"))
        assert (code, text.decode()) == (235, OK)
        assert c.sendmail("a@example.org", ["b@example.org"],
                          b"Subject: login\r\n\r\nx\r\n") == {}
    backend.wait_messages(1)


def test_auth_login_with_initial_response(gate):
    with gate.session() as c:
        c.ehlo()
        assert c.cmd("AUTH LOGIN " + b64("bob")).raw == \
            b"334 UGFzc3dvcmQ6\r\n"
        r = c.cmd(b64(password("bob")))
        assert (r.code, r.last) == (235, OK)
