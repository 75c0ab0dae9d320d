"""SASL mechanisms beyond the basics of test_auth.py: the AUTH line of
EHLO, CRAM-MD5 (raw, swaks and smtplib), XOAUTH2 and OAUTHBEARER as
configuration errors with the users file, EXTERNAL with client
certificates (raw and msmtp), PLAIN authorization identities,
cancelling, mechanisms that are not configured, and what the debug log
must never show."""

import base64
import hashlib
import hmac
import os
import re
import shutil
import smtplib
import subprocess

import pytest

from lib import gate as gatelib
from lib import pki as pkilib
from lib import smtp
from lib.pki import implicit_session, starttls_session, tls_conf
from lib.smtp import b64, plain_token
from lib.users import password

OK = b"235 2.7.0 Authentication successful\r\n"
INVALID = b"535 5.7.8 Authentication credentials invalid\r\n"
CANCELLED = b"501 5.7.0 Authentication cancelled\r\n"
UNRECOGNIZED = b"504 5.5.4 Unrecognized authentication mechanism\r\n"
CHALLENGE = re.compile(rb"<[0-9]+\.[0-9]+@mx\.test>")

# Every test here sets a failure delay of 0 unless it is about the delay
# (test_abuse.py is): the default of 1s per failure only costs time.
NO_DELAY = "    smtp_auth_fail_delay 0;"


def mail_conf(*lines):
    return "\n".join([NO_DELAY] + [f"    {l}" for l in lines])


def relay_works(c):
    """After 235 the session talks to aiosmtpd (its own reply text)."""
    r = c.cmd("MAIL FROM:<a@example.org>")
    assert (r.code, r.last) == (250, "2.1.0 Sender OK"), r


def cram_challenge(reply):
    """The decoded challenge of a 334 to AUTH CRAM-MD5."""
    assert reply.code == 334, reply
    return base64.b64decode(reply.lines[0], validate=True)


def cram_answer(user, secret, challenge):
    """RFC 2195: base64("user <hex HMAC-MD5 of the challenge>")."""
    digest = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    return b64(f"{user} {digest}")


# -- the AUTH line of EHLO ----------------------------------------------------


@pytest.mark.parametrize("configured,listed", [
    ("external cram-md5 login plain", "AUTH PLAIN LOGIN CRAM-MD5 EXTERNAL"),
    ("EXTERNAL Cram-MD5", "AUTH CRAM-MD5 EXTERNAL"),
    ("login cram-md5", "AUTH LOGIN CRAM-MD5"),
])
def test_ehlo_lists_mechanisms_in_fixed_order(smtpgate, backend, configured,
                                              listed):
    """Whatever the order in smtp_auth, EHLO lists PLAIN LOGIN CRAM-MD5
    (XOAUTH2 OAUTHBEARER) EXTERNAL, in that order."""
    g = smtpgate(gatelib.conf(backend=backend,
                              mail=mail_conf(f"smtp_auth {configured};")))
    with g.session() as c:
        assert smtp.ehlo_line(c.ehlo(), "AUTH") == listed


# -- XOAUTH2 and OAUTHBEARER --------------------------------------------------


@pytest.mark.parametrize("mech", ["xoauth2", "oauthbearer"])
def test_token_mechanisms_need_more_than_the_users_file(tmp_path, backend,
                                                         mech):
    """Tokens cannot be checked against password hashes: -t refuses."""
    g = gatelib.Smtpgate(tmp_path / "g", gatelib.conf(
        backend=backend, mail=mail_conf(f"smtp_auth plain {mech};")),
        users_text="dave:{PLAIN}dave-secret\n")
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    rx = (r"\[emerg\] " + re.escape(g.conf_path) + r":\d+: "
          + re.escape(f'"smtp_auth {mech.upper()}" cannot be verified by '
                      "auth_file"))
    assert re.search(rx, r.stderr), r.stderr
    assert "test failed" in r.stderr, r.stderr


# -- CRAM-MD5 -----------------------------------------------------------------


@pytest.fixture
def cram_gate(smtpgate, backend):
    return smtpgate(gatelib.conf(backend=backend, mail=mail_conf(
        "smtp_auth plain login cram-md5;", "smtp_auth_attempts 20;",
        "max_errors 20;")))


def test_cram_md5_plain_user(cram_gate):
    """The challenge is <digits.digits@server_name>; the HMAC of the
    {PLAIN} secret logs in, and the session relays."""
    with cram_gate.session() as c:
        c.ehlo()
        r = c.cmd("AUTH CRAM-MD5")
        assert r.raw.startswith(b"334 ") and len(r.lines) == 1, r
        challenge = cram_challenge(r)
        assert CHALLENGE.fullmatch(challenge), challenge
        assert c.cmd(cram_answer("dave", password("dave"),
                                 challenge)).raw == OK
        relay_works(c)


def _cram_gate_named(smtpgate, backend, length):
    """A CRAM-MD5 gate whose server_name is length characters long (the
    most a server_name may be is 255): (the name, the gate)."""
    name = ".".join(["a" * 63, "b" * 63, "c" * 63,
                     "d" * (length - 197), "test"])
    assert len(name) == length
    return name, smtpgate(gatelib.conf(backend=backend, server_name=name,
                                       mail=mail_conf("smtp_auth cram-md5;")))


def test_cram_md5_challenge_with_long_server_name(smtpgate, backend):
    name, g = _cram_gate_named(smtpgate, backend, 250)
    with g.session() as c:
        c.ehlo()
        challenge = cram_challenge(c.cmd("AUTH CRAM-MD5"))
        assert re.fullmatch(rb"<[0-9]+\.[0-9]+@" + name.encode() + b">",
                            challenge), challenge


def test_cram_md5_login_with_longest_server_name(smtpgate, backend):
    """server_name may be 255 characters, so the challenge is some 290
    bytes: the users file must check an answer to it, not turn every
    CRAM-MD5 login into a 454."""
    _, g = _cram_gate_named(smtpgate, backend, 255)
    with g.session() as c:
        c.ehlo()
        challenge = cram_challenge(c.cmd("AUTH CRAM-MD5"))
        assert c.cmd(cram_answer("dave", password("dave"),
                                 challenge)).raw == OK
        relay_works(c)


def test_cram_md5_challenges_differ(cram_gate):
    with cram_gate.session() as c:
        c.ehlo()
        seen = set()
        for _ in range(3):
            challenge = cram_challenge(c.cmd("AUTH CRAM-MD5"))
            assert CHALLENGE.fullmatch(challenge), challenge
            seen.add(challenge)
            assert c.cmd("*").raw == CANCELLED
        assert len(seen) == 3, seen


def test_cram_md5_failures(cram_gate, users):
    """Users with crypt hashes cannot use CRAM-MD5 even with the right
    secret; a wrong secret, an unknown user and an answer to an older
    challenge fail too.  The session goes on, and dave then logs in."""
    with cram_gate.session() as c:
        c.ehlo()
        attempts = [(u, password(u)) for u in ("alice", "bob", "carol",
                                               "erin")]
        attempts += [("dave", password("dave") + "-wrong"),
                     ("dave", password("dave")[:-1]),
                     ("mallory", "whatever"),
                     ("dave", users[0]["dave"])]      # "{PLAIN}dave-secret"
        for user, secret in attempts:
            challenge = cram_challenge(c.cmd("AUTH CRAM-MD5"))
            r = c.cmd(cram_answer(user, secret, challenge))
            assert r.raw == INVALID, (user, r)
        # Replay: an answer computed for an earlier challenge.
        old = cram_challenge(c.cmd("AUTH CRAM-MD5"))
        assert c.cmd("*").raw == CANCELLED
        cram_challenge(c.cmd("AUTH CRAM-MD5"))
        assert c.cmd(cram_answer("dave", password("dave"), old)).raw == \
            INVALID
        assert c.expect("NOOP", 250)
        challenge = cram_challenge(c.cmd("AUTH CRAM-MD5"))
        assert c.cmd(cram_answer("dave", password("dave"),
                                 challenge)).raw == OK


def test_cram_md5_takes_no_initial_response(cram_gate):
    with cram_gate.session() as c:
        c.ehlo()
        for ir in (b64("dave 0123456789abcdef0123456789abcdef"), "="):
            r = c.cmd("AUTH CRAM-MD5 " + ir)
            assert r.raw == (b"501 5.5.4 CRAM-MD5 takes no initial "
                             b"response\r\n"), r
        assert c.expect("NOOP", 250)


@pytest.mark.parametrize("answer", [
    b64("dave"),                                        # no digest
    b64("dave0123456789abcdef0123456789abcdef"),        # no space
    b64("dave " + "0" * 31),                            # short digest
    b64("dave " + "0" * 33),                            # long digest
    b64("dave 0123456789abcdef0123456789abcdef "),      # trailing space
    "",                                                 # empty
], ids=["user-only", "no-space", "31-hex", "33-hex", "trailing-space",
        "empty"])
def test_cram_md5_malformed_response(cram_gate, answer):
    with cram_gate.session() as c:
        c.ehlo()
        cram_challenge(c.cmd("AUTH CRAM-MD5"))
        r = c.cmd(answer)
        assert r.raw == b"501 5.5.2 Invalid CRAM-MD5 response\r\n", r
        assert c.expect("NOOP", 250)


def test_cram_md5_bad_base64_and_cancel(cram_gate):
    with cram_gate.session() as c:
        c.ehlo()
        cram_challenge(c.cmd("AUTH CRAM-MD5"))
        assert c.cmd("%%%not*base64%%%").raw == \
            b"501 5.5.2 Invalid base64 data\r\n"
        cram_challenge(c.cmd("AUTH CRAM-MD5"))
        assert c.cmd("*").raw == CANCELLED
        assert c.expect("NOOP", 250)


def test_cram_md5_needs_tls_by_default(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, require_tls=True,
                              mail=mail_conf("smtp_auth cram-md5;")))
    with g.session() as c:
        assert "AUTH" not in smtp.ehlo_keywords(c.ehlo())
        r = c.cmd("AUTH CRAM-MD5")
        assert r.code == 538 and r.last.startswith("5.7.11 "), r


def _swaks(port, user, secret):
    p = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port),
         "--helo", "client.test",
         "--auth", "CRAM-MD5", "--auth-user", user, "--auth-password", secret,
         "--from", "a@example.org", "--to", "x@example.org",
         "--header", f"Subject: swaks cram-md5 {user}",
         "--body", "sent with CRAM-MD5\n", "--timeout", "30"],
        capture_output=True, timeout=90)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_cram_md5(cram_gate, backend):
    rc, out = _swaks(cram_gate.port, "dave", password("dave"))
    assert rc == 0, out
    assert " -> AUTH CRAM-MD5" in out, out
    assert "<-  235 2.7.0 Authentication successful" in out, out
    (m,) = backend.wait_messages(1)
    assert m.rcpt_tos == ["x@example.org"]
    assert b"Subject: swaks cram-md5 dave\r\n" in m.content
    # A user stored as a crypt hash cannot use CRAM-MD5.
    rc, out = _swaks(cram_gate.port, "alice", password("alice"))
    assert rc != 0, out
    assert "<** 535 5.7.8 Authentication credentials invalid" in out, out
    assert len(backend.messages) == 1


def test_smtplib_falls_back_from_cram_md5_to_plain(cram_gate, backend):
    """smtplib prefers CRAM-MD5: dave gets in with it; alice (yescrypt)
    fails it and gets in with PLAIN on the same connection."""
    for user, mechs in (("dave", ["CRAM-MD5"]),
                        ("alice", ["CRAM-MD5", "PLAIN"])):
        mark = cram_gate.log_mark()
        with smtplib.SMTP("127.0.0.1", cram_gate.port, timeout=60,
                          local_hostname="client.test") as c:
            code, _ = c.login(user, password(user))
            assert code == 235
            assert c.sendmail("a@example.org", [f"{user}@example.org"],
                              b"Subject: smtplib\r\n\r\nx\r\n") == {}
        cram_gate.wait_log(r"client logged in with \w", since=mark)
        log = cram_gate.log_since(mark)
        used = re.findall(r"(?:authentication failed for \"\w+\" with "
                          r"|client logged in with )([\w-]+)", log)
        assert used == mechs, log
    assert len(backend.wait_messages(2)) == 2


# -- EXTERNAL -----------------------------------------------------------------

# Identities of the client certificates: an e-mail subjectAltName wins
# over the subject's emailAddress, which wins over its CN.
EXTERNAL_USERS = """\
ext-san@example.org:{PLAIN}external-1
ext-subject@example.org:{PLAIN}external-2
ext-cn-name:{PLAIN}external-3
bob@example.org:{PLAIN}external-4
bob:{PLAIN}external-5
ext-cn-only:{PLAIN}external-6
alice:{PLAIN}external-7
dave:{PLAIN}dave-secret
"""

IDENTITY = {
    "ext-san": "ext-san@example.org",       # SAN, emailAddress and CN
    "bob": "bob@example.org",               # emailAddress and CN
    "ext-cn": "ext-cn-only",                # CN only
}


@pytest.fixture(scope="module")
def pki():
    if not pkilib.tls_built():
        pytest.skip("smtpgate built without TLS")
    p = pkilib.shared()
    p.add_client("ext-san", "/CN=ext-cn-name/emailAddress="
                 "ext-subject@example.org", san="email:ext-san@example.org")
    p.add_client("ext-cn", "/O=smtpgate tests/CN=ext-cn-only")
    # An e-mail subjectAltName with a NUL byte: "dave\0@evil.test".
    value = b"dave\0@evil.test"
    names = b"\x81" + bytes([len(value)]) + value     # [1] rfc822Name
    names = b"\x30" + bytes([len(names)]) + names     # GeneralNames
    p.add_client("ext-nul", "/CN=ext-nul-cn", san="DER:" + names.hex(":"))
    return p


def external_gate(smtpgate, backend, pki, verify="optional", **kw):
    return smtpgate(tls_conf(
        pki, backend,
        mail=mail_conf("smtp_auth plain external;", "max_errors 20;"),
        extra=f"ssl_verify_client {verify};\n"
              f"ssl_client_certificate {pki.ca};", **kw),
        users_text=EXTERNAL_USERS)


def logged_in_as(g, mark, identity):
    g.wait_log(r"client logged in with EXTERNAL, .*login: \""
               + re.escape(identity) + '"', since=mark)


@pytest.mark.parametrize("cert", sorted(IDENTITY))
def test_external_identity_from_certificate(smtpgate, backend, pki, cert):
    g = external_gate(smtpgate, backend, pki)
    mark = g.quiet_log_mark()
    with starttls_session(g, pki, cert=cert) as c:
        r = c.ehlo()
        assert smtp.ehlo_line(r, "AUTH") == "AUTH PLAIN EXTERNAL", r
        assert c.cmd("AUTH EXTERNAL =").raw == OK
        relay_works(c)
    logged_in_as(g, mark, IDENTITY[cert])


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_external_with_verify_on_and_matching_authzid(smtpgate, backend, pki,
                                                      mode):
    g = external_gate(smtpgate, backend, pki, verify="on")
    session = starttls_session if mode == "starttls" else implicit_session
    with session(g, pki, cert="ext-san") as c:
        c.ehlo()
        r = c.cmd("AUTH EXTERNAL " + b64(IDENTITY["ext-san"]))
        assert r.raw == OK, r
        relay_works(c)


def test_external_without_initial_response(smtpgate, backend, pki):
    """AUTH EXTERNAL alone: an empty challenge, then an empty response
    (an empty line) logs in."""
    g = external_gate(smtpgate, backend, pki)
    mark = g.quiet_log_mark()
    with starttls_session(g, pki, cert="bob") as c:
        c.ehlo()
        assert c.cmd("AUTH EXTERNAL").raw == b"334 \r\n"
        assert c.cmd("").raw == OK
        relay_works(c)
    logged_in_as(g, mark, "bob@example.org")


def test_external_equals_sign_as_continuation(smtpgate, backend, pki):
    g = external_gate(smtpgate, backend, pki)
    with starttls_session(g, pki, cert="bob") as c:
        c.ehlo()
        assert c.cmd("AUTH EXTERNAL").raw == b"334 \r\n"
        assert c.cmd("=").raw == OK


def test_external_continuation_with_authzid(smtpgate, backend, pki):
    g = external_gate(smtpgate, backend, pki)
    with starttls_session(g, pki, cert="ext-cn") as c:
        c.ehlo()
        assert c.cmd("AUTH EXTERNAL").raw == b"334 \r\n"
        assert c.cmd(b64("ext-cn-only")).raw == OK


def test_external_refusals(smtpgate, backend, pki):
    """535 without a certificate, for an identity not in the users file
    (alice's e-mail; her CN "alice" is in the file but is not her
    identity), and for an authorization identity other than the
    certificate's; each session goes on."""
    g = external_gate(smtpgate, backend, pki)
    mark = g.quiet_log_mark()
    with starttls_session(g, pki) as c:
        c.ehlo()
        assert c.cmd("AUTH EXTERNAL =").raw == INVALID
        assert c.cmd("AUTH EXTERNAL").raw == b"334 \r\n"
        assert c.cmd("").raw == INVALID
        assert c.auth_plain("dave", password("dave")).raw == OK
    g.wait_log(r"AUTH EXTERNAL refused: no verified client certificate",
               since=mark)
    with starttls_session(g, pki, cert="alice") as c:
        c.ehlo()
        assert c.cmd("AUTH EXTERNAL =").raw == INVALID
        assert c.cmd("AUTH EXTERNAL " + b64("alice")).raw == INVALID
        assert c.expect("NOOP", 250)
    g.wait_log(r'authentication failed for "alice@example\.org" with '
               r"EXTERNAL: unknown user", since=mark)
    with starttls_session(g, pki, cert="ext-san") as c:
        c.ehlo()
        for other in ("ext-subject@example.org", "ext-cn-name", "dave",
                      "EXT-SAN@example.org", "ext-san@example.org "):
            r = c.cmd("AUTH EXTERNAL " + b64(other))
            assert r.raw == INVALID, (other, r)
        assert c.cmd("AUTH EXTERNAL =").raw == OK
    g.wait_log(r"AUTH EXTERNAL refused: the authorization identity is not "
               r"the certificate's", since=mark)
    assert backend.commands.count("MAIL") == 0


def test_external_identity_with_nul_byte_is_refused(smtpgate, backend, pki):
    """A name with a NUL byte in it is not a shorter name."""
    g = external_gate(smtpgate, backend, pki)
    with starttls_session(g, pki, cert="ext-nul") as c:
        c.ehlo()
        assert c.cmd("AUTH EXTERNAL =").raw == INVALID


def test_external_in_plaintext_fails(smtpgate, backend, pki):
    """With AUTH allowed in plaintext, EXTERNAL is offered there but has
    no certificate to go by."""
    g = external_gate(smtpgate, backend, pki, require_tls=False)
    with g.session() as c:
        r = c.ehlo()
        assert smtp.ehlo_line(r, "AUTH") == "AUTH PLAIN EXTERNAL", r
        assert c.cmd("AUTH EXTERNAL =").raw == INVALID
        assert c.auth_plain("dave", password("dave")).raw == OK


@pytest.mark.skipif(not shutil.which("msmtp"), reason="msmtp not installed")
def test_msmtp_auth_external(smtpgate, backend, pki, tmp_path):
    """msmtp `auth external` with a client certificate; msmtp sends its
    `user` as the authorization identity after the empty challenge."""
    g = external_gate(smtpgate, backend, pki, verify="on")
    rc = tmp_path / "msmtprc"
    rc.write_text("\n".join([
        "defaults", "syslog off", "timeout 60", "account gate",
        "host 127.0.0.1", f"port {g.port}", "domain client.test",
        "from a@example.org", "tls on", "tls_starttls on",
        f"tls_trust_file {pki.ca}", "tls_host_override mx.test",
        f"tls_cert_file {pki.cert('ext-san')}",
        f"tls_key_file {pki.key('ext-san')}",
        "auth external", f"user {IDENTITY['ext-san']}"]) + "\n")
    os.chmod(rc, 0o600)
    mark = g.quiet_log_mark()
    msg = b"Subject: msmtp external\r\n\r\nsent with a certificate\r\n"
    p = subprocess.run(["msmtp", "-C", str(rc), "-a", "gate",
                        "x@example.org"], input=msg, capture_output=True,
                       timeout=90)
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")
    (m,) = backend.wait_messages(1)
    assert m.content.endswith(msg)
    logged_in_as(g, mark, IDENTITY["ext-san"])


# -- PLAIN authorization identity, cancelling, unknown mechanisms -------------


def test_plain_authzid_must_be_the_user(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend,
                              mail=mail_conf("max_errors 20;")))
    mark = g.quiet_log_mark()
    with g.session() as c:
        c.ehlo()
        for authzid in ("bob", "Dave", "dave ", "dave@example.org"):
            r = c.cmd("AUTH PLAIN " + plain_token("dave", password("dave"),
                                                  authzid=authzid))
            assert r.raw == INVALID, (authzid, r)
        assert c.cmd("AUTH PLAIN").raw == b"334 \r\n"
        assert c.cmd(plain_token("dave", password("dave"),
                                 authzid="alice")).raw == INVALID
        r = c.cmd("AUTH PLAIN " + plain_token("dave", password("dave"),
                                              authzid="dave"))
        assert r.raw == OK
        relay_works(c)
    g.wait_log(r"AUTH PLAIN refused: acting for another user", since=mark)


@pytest.mark.parametrize("mech", ["CRAM-MD5", "EXTERNAL"])
def test_cancel(smtpgate, backend, mech):
    g = smtpgate(gatelib.conf(backend=backend, mail=mail_conf(
        "smtp_auth plain login cram-md5 external;")))
    with g.session() as c:
        c.ehlo()
        assert c.cmd(f"AUTH {mech}").code == 334
        assert c.cmd("*").raw == CANCELLED
        assert c.expect("NOOP", 250)
        assert c.auth_plain("dave", password("dave")).raw == OK


@pytest.mark.parametrize("end", ["cancel", "bad base64", "wrong password"])
def test_log_lines_name_no_user_after_an_exchange_without_login(
        smtpgate, backend, end):
    """An AUTH LOGIN that named a user and then ended without a login
    leaves that user out of the session's later log lines."""
    g = smtpgate(gatelib.conf(backend=backend, mail=mail_conf(
        "smtp_auth plain login;")))
    mark = g.quiet_log_mark()
    with g.session() as c:
        c.ehlo()
        assert c.cmd("AUTH LOGIN").code == 334
        assert c.cmd(smtp.b64("mallory")).code == 334
        if end == "cancel":
            assert c.cmd("*").raw == CANCELLED
        elif end == "bad base64":
            assert c.cmd("%%%").code == 501
        else:
            assert c.cmd(smtp.b64("wrong")).code == 535
        assert c.expect("QUIT", 221)
    g.wait_log(r"session closed", since=mark)
    closed = [l for l in g.log_since(mark).splitlines()
              if "session closed" in l]
    assert closed and 'login: "mallory"' not in closed[-1], closed


def test_unconfigured_and_unknown_mechanisms(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend,
                              mail=mail_conf("max_errors 50;")))
    with g.session() as c:
        c.ehlo()
        for line in ("AUTH CRAM-MD5", "AUTH CRAM-MD5 " + b64("x y"),
                     "AUTH EXTERNAL", "AUTH EXTERNAL =",
                     "AUTH XOAUTH2 " + b64("user=dave\1auth=Bearer x\1\1"),
                     "AUTH OAUTHBEARER", "AUTH GSSAPI", "AUTH NTLM",
                     "AUTH SCRAM-SHA-256", "AUTH DIGEST-MD5", "AUTH PLAINX",
                     "AUTH PLAI", "AUTH LOGIN-", "AUTH ANONYMOUS"):
            assert c.cmd(line).raw == UNRECOGNIZED, line
        assert c.auth_plain("dave", password("dave")).raw == OK


# -- nothing secret in the debug log ------------------------------------------


def test_debug_log_shows_no_secrets(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, level="debug", mail=mail_conf(
        "smtp_auth plain login cram-md5;", "smtp_auth_attempts 20;",
        "max_errors 20;")))
    secrets = []

    def remember(*values):
        for v in values:
            secrets.append(v)
            if len(v) >= 6:
                secrets.append(b64(v))
        return values[0]

    with g.session() as c:
        c.ehlo()
        wrong = remember("plain-wrong-Kq7")
        r = c.cmd("AUTH PLAIN " + remember(plain_token("alice", wrong)))
        assert r.raw == INVALID
        assert c.cmd("AUTH PLAIN").code == 334
        assert c.cmd(remember(plain_token("bob", "cont-wrong-Zx4"))).raw == \
            INVALID
        remember("cont-wrong-Zx4")
        assert c.auth_login("carol", remember("login-wrong-Wr2")).raw == \
            INVALID
        challenge = cram_challenge(c.cmd("AUTH CRAM-MD5"))
        answer = cram_answer("dave", "cram-wrong-Pp9", challenge)
        remember("cram-wrong-Pp9", answer,
                 base64.b64decode(answer).decode().split()[1])
        assert c.cmd(answer).raw == INVALID
        challenge = cram_challenge(c.cmd("AUTH CRAM-MD5"))
        answer = cram_answer("dave", password("dave"), challenge)
        remember(password("dave"), answer,
                 base64.b64decode(answer).decode().split()[1])
        assert c.cmd(answer).raw == OK
    with g.session() as c:
        c.ehlo()
        assert c.auth_login("carol", remember(password("carol"))).raw == OK
    with g.session() as c:
        c.ehlo()
        token = remember(plain_token("bob", remember(password("bob"))))
        assert c.cmd("AUTH PLAIN " + token).raw == OK
    g.wait_log(r'client logged in with PLAIN, .*login: "bob"')
    log = g.error_log()
    assert re.search(r"\[debug\] .*client command: AUTH, ", log), log[-3000:]
    assert "client command: AUTH " not in log
    for path in [g.error_log_path, g.stdout_path, g.stderr_path]:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        for s in secrets:
            assert s not in text, f"{s!r} appears in {path}"


# -- nothing secret left in the worker's memory -------------------------------


def memory_holds(pid, needle):
    """Whether a writable anonymous mapping of pid holds needle (huge
    reservations, such as a sanitizer's shadow memory, are left out)."""
    with open(f"/proc/{pid}/maps") as maps, \
            open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            f = line.split()
            start, end = (int(x, 16) for x in f[0].split("-"))
            if (not f[1].startswith("rw") or end - start > 1 << 28
                    or (len(f) > 5 and f[5].startswith("/"))):
                continue
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


def auth_plain_initial(c):
    secret = plain_token("alice", "ir-wrong-Ht5vQ8")
    assert c.cmd("AUTH PLAIN " + secret).raw == INVALID
    return secret


def auth_plain_continued(c):
    secret = plain_token("bob", "cont-wrong-Lm3wR6")
    assert c.cmd("AUTH PLAIN").code == 334
    assert c.cmd(secret).raw == INVALID
    return secret


def auth_login(c):
    assert c.auth_login("carol", "login-wrong-Zp8nB1").raw == INVALID
    return b64("login-wrong-Zp8nB1")


def auth_login_too_long(c):
    secret = b64("toolong-" + "Qw9" * 6000)
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(b64("carol")).code == 334
    assert c.cmd(secret).code == 500
    return secret


@pytest.mark.skipif(os.geteuid() != 0, reason="reads the worker's memory")
@pytest.mark.parametrize("exchange", [auth_plain_initial, auth_plain_continued,
                                      auth_login, auth_login_too_long])
def test_no_base64_credentials_left_in_memory(smtpgate, backend, exchange):
    """The input buffer outlives the session (the next one takes it):
    the lines that carried credentials must not stay in it.  The
    session ends with the client leaving, so that nothing overwrites
    them by chance."""
    g = smtpgate(gatelib.conf(backend=backend, mail=mail_conf()))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        secret = exchange(c)
    g.wait_log("session closed", since=mark)
    # The first bytes of a buffer may be reused; the rest must be gone.
    assert not memory_holds(g.workers()[0], secret[-16:].encode())
