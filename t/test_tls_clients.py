"""Real TLS clients through smtpgate: Python's smtplib (STARTTLS and
SMTP_SSL), swaks (--tls and --tlsc), curl (smtp:// with --ssl-reqd and
smtps://) and msmtp with a client certificate.  Every client verifies the
gate's certificate against the test CA, and every message is checked at
the backend."""

import os
import shutil
import smtplib
import ssl
import subprocess

import pytest

from lib import pki as pkilib
from lib.checks import assert_same_bytes
from lib.messages import make_message
from lib.pki import starttls_session, tls_conf
from lib.smtp import ehlo_line, ehlo_keywords
from lib.users import password

pytestmark = pytest.mark.skipif(not pkilib.tls_built(),
                                reason="smtpgate built without TLS")


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


@pytest.fixture
def tls_gate(smtpgate, backend, pki):
    """smtpgate with STARTTLS on @PORT@ and implicit TLS on @PORTS@."""
    return smtpgate(tls_conf(pki, backend))


def _run(args, timeout=120, **kw):
    p = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    return p, (p.stdout + p.stderr).decode(errors="replace")


# -- smtplib ----------------------------------------------------------------


@pytest.mark.time_limit(240)
@pytest.mark.parametrize("size", [1024, 5 * 1024 * 1024], ids=["1k", "5M"])
def test_smtplib_starttls_login_sendmail(tls_gate, backend, pki, size):
    """smtplib starttls() + login() + sendmail(): byte-exact delivery."""
    msg = make_message(size, seed=size + 1)
    with smtplib.SMTP("127.0.0.1", tls_gate.port, local_hostname="client.test",
                      timeout=120) as c:
        c.ehlo()
        assert c.has_extn("starttls") and not c.has_extn("auth")
        code, text = c.starttls(context=pki.client_context())
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        c.ehlo()
        assert c.has_extn("auth") and not c.has_extn("starttls")
        assert c.login("alice", password("alice"))[0] == 235
        refused = c.sendmail("sender@example.org",
                             ["rcpt1@example.org", "rcpt2@example.org"], msg)
        assert refused == {}
    (m,) = backend.wait_messages(1, timeout=120)
    assert_same_bytes(m.content, msg)
    assert m.mail_from == "sender@example.org"
    assert m.rcpt_tos == ["rcpt1@example.org", "rcpt2@example.org"]


def test_smtplib_login_without_tls_is_refused(tls_gate, backend):
    """smtplib login() in plaintext fails with 538 (and AUTH not offered)."""
    with smtplib.SMTP("127.0.0.1", tls_gate.port, timeout=60) as c:
        c.ehlo()
        code, text = c.docmd("AUTH", "LOGIN")
        assert (code, text) == (538, b"5.7.11 Encryption required for "
                                     b"requested authentication mechanism")
    assert backend.commands == []


def test_smtplib_smtp_ssl(tls_gate, backend, pki):
    """smtplib.SMTP_SSL on the implicit-TLS listener: login and sendmail."""
    msg = make_message(20000, seed=12)
    with smtplib.SMTP_SSL("127.0.0.1", tls_gate.ports["PORTS"],
                          local_hostname="client.test", timeout=60,
                          context=pki.client_context()) as c:
        code, _ = c.ehlo()
        assert code == 250
        assert c.has_extn("auth") and not c.has_extn("starttls")
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert c.login("bob", password("bob"))[0] == 235
        assert c.sendmail("s@example.org", ["r@example.org"], msg) == {}
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, msg)


def test_smtplib_rejects_unknown_ca(tls_gate, backend, pki):
    """A client trusting only another CA rejects the gate's certificate."""
    ctx = ssl.create_default_context(cafile=pki.other_ca)
    with smtplib.SMTP("127.0.0.1", tls_gate.port, timeout=60) as c:
        c.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls(context=ctx)


# -- swaks ------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
@pytest.mark.parametrize("auth", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["--tls", "--tlsc"])
def test_swaks(tls_gate, backend, pki, mode, auth):
    """swaks --tls (STARTTLS) and --tlsc (implicit) with AUTH PLAIN/LOGIN."""
    port = tls_gate.port if mode == "--tls" else tls_gate.ports["PORTS"]
    p, out = _run(["swaks", "--server", "127.0.0.1", "--port", str(port),
                   mode, "--tls-verify", "--tls-ca-path", pki.ca,
                   "--tls-sni", "mx.test",
                   "--auth", auth, "--auth-user", "carol",
                   "--auth-password", password("carol"),
                   "--from", "a@example.org", "--to", "x@example.org",
                   "--header", f"Subject: swaks {mode} {auth}",
                   "--body", "sent by swaks\n.leading dot\n",
                   "--timeout", "60"])
    assert p.returncode == 0, out
    assert "=== TLS started" in out, out
    assert "<~  235 2.7.0 Authentication successful" in out, out
    (m,) = backend.wait_messages(1)
    assert m.mail_from == "a@example.org"
    assert m.rcpt_tos == ["x@example.org"]
    assert f"Subject: swaks {mode} {auth}\r\n".encode() in m.content
    assert b"\r\n.leading dot\r\n" in m.content


# -- curl -------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_curl(tls_gate, backend, pki, tmp_path, scheme):
    """curl smtp:// --ssl-reqd (STARTTLS) and smtps:// (implicit TLS)."""
    msg = make_message(8192, seed=13)
    path = tmp_path / "msg.eml"
    path.write_bytes(msg)
    port = tls_gate.port if scheme == "smtp" else tls_gate.ports["PORTS"]
    args = ["curl", "-sS", "--max-time", "60",
            "--resolve", f"mx.test:{port}:127.0.0.1",
            f"{scheme}://mx.test:{port}/client.test",
            "--cacert", pki.ca,
            "--user", f"dave:{password('dave')}",
            "--mail-from", "a@example.org",
            "--mail-rcpt", "x@example.org",
            "--upload-file", str(path)]
    if scheme == "smtp":
        args.append("--ssl-reqd")
    p, out = _run(args)
    assert p.returncode == 0, out
    (m,) = backend.wait_messages(1)
    assert_same_bytes(m.content, msg)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_ssl_reqd_fails_without_starttls(smtpgate, backend, pki,
                                              tmp_path):
    """curl --ssl-reqd gives up when the gate does not offer STARTTLS."""
    g = smtpgate(tls_conf(pki, backend, starttls="off"))
    path = tmp_path / "msg.eml"
    path.write_bytes(b"Subject: x\r\n\r\nx\r\n")
    p, out = _run(["curl", "-sS", "--max-time", "60",
                   f"smtp://127.0.0.1:{g.port}/client.test", "--ssl-reqd",
                   "--cacert", pki.ca, "--user", f"dave:{password('dave')}",
                   "--mail-from", "a@example.org",
                   "--mail-rcpt", "x@example.org",
                   "--upload-file", str(path)])
    assert p.returncode != 0, out
    assert backend.messages == []


# -- msmtp with a client certificate ----------------------------------------


def _msmtprc(tmp_path, pki, port, auth, user=None):
    lines = [
        "defaults",
        "syslog off",
        "timeout 60",
        "account gate",
        "host 127.0.0.1",
        f"port {port}",
        "domain client.test",
        "from a@example.org",
        "tls on",
        "tls_starttls on",
        f"tls_trust_file {pki.ca}",
        "tls_host_override mx.test",
        f"tls_cert_file {pki.cert('alice')}",
        f"tls_key_file {pki.key('alice')}",
        f"auth {auth}",
    ]
    if user:
        lines += [f"user {user}",
                  f"passwordeval echo {password(user)}"]
    rc = tmp_path / "msmtprc"
    rc.write_text("\n".join(lines) + "\n")
    os.chmod(rc, 0o600)
    return str(rc)


def _client_cert_conf(pki, backend):
    return tls_conf(pki, backend, extra=f"""
        ssl_verify_client on;
        ssl_client_certificate {pki.ca};""")


def _msmtp(rc, msg):
    return _run(["msmtp", "-C", rc, "-a", "gate", "x@example.org"],
                input=msg)


@pytest.mark.skipif(not shutil.which("msmtp"), reason="msmtp not installed")
def test_msmtp_client_certificate_auth_plain(smtpgate, backend, pki,
                                             tmp_path):
    """msmtp with a client certificate: STARTTLS and AUTH PLAIN."""
    g = smtpgate(_client_cert_conf(pki, backend))
    msg = make_message(4096, seed=14)
    p, out = _msmtp(_msmtprc(tmp_path, pki, g.port, "plain", "erin"), msg)
    assert p.returncode == 0, out
    (m,) = backend.wait_messages(1)
    added = m.content[:len(m.content) - len(msg)]
    assert all(l.startswith(b"Date: ") for l in added.splitlines()), added
    assert_same_bytes(m.content[len(added):], msg)


@pytest.mark.skipif(not shutil.which("msmtp"), reason="msmtp not installed")
def test_msmtp_auth_external(smtpgate, backend, pki, tmp_path):
    """msmtp auth external with a client certificate, if EXTERNAL offered."""
    g = smtpgate(_client_cert_conf(pki, backend))
    with starttls_session(g, pki, cert="alice") as c:
        r = c.ehlo()
        auth = (ehlo_line(r, "AUTH") or "").upper().split()
    if "EXTERNAL" not in auth:
        pytest.skip(f"no AUTH EXTERNAL offered (AUTH line: {auth})")
    msg = b"Subject: external\r\n\r\nsent with a client certificate\r\n"
    p, out = _msmtp(_msmtprc(tmp_path, pki, g.port, "external"), msg)
    assert p.returncode == 0, out
    (m,) = backend.wait_messages(1)
    assert m.content.endswith(msg)


@pytest.mark.skipif(not shutil.which("msmtp"), reason="msmtp not installed")
def test_msmtp_without_client_certificate_is_refused(smtpgate, backend, pki,
                                                     tmp_path):
    """With ssl_verify_client on, msmtp without a certificate fails."""
    g = smtpgate(_client_cert_conf(pki, backend))
    rc = _msmtprc(tmp_path, pki, g.port, "plain", "erin")
    with open(rc) as f:
        text = f.read()
    with open(rc, "w") as f:
        f.write("".join(l for l in text.splitlines(True)
                        if not l.startswith(("tls_cert_file",
                                             "tls_key_file"))))
    p, out = _msmtp(rc, b"Subject: x\r\n\r\nx\r\n")
    assert p.returncode != 0, out
    assert backend.messages == []


def test_client_certificate_with_auth_over_python(smtpgate, backend, pki):
    """ssl_verify_client on: a verified client still needs AUTH to relay."""
    g = smtpgate(_client_cert_conf(pki, backend))
    with starttls_session(g, pki, cert="alice") as c:
        keys = ehlo_keywords(c.ehlo())
        assert "AUTH" in keys, keys
        assert c.cmd("MAIL FROM:<a@example.org>").code == 530
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: c\r\n\r\nx\r\n").code == 250
    backend.wait_messages(1)
