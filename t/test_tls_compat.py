"""ngx_mail_ssl_module directives that nginx mail blocks bring along:
ssl_session_ticket_key (tickets shared by several instances, and key
rotation), ssl_trusted_certificate (CAs that verify client certificates
without being named to clients) and the deprecated `ssl on`.

Sessions are driven by `openssl s_client -sess_out/-sess_in`, which
prints `New` or `Reused` for each handshake.
"""

import os
import re
import subprocess

import pytest

from lib import gate as gatelib, net, pki as pkilib
from lib.pki import implicit_session, indent, starttls_session, tls_conf
from lib.smtp import ehlo_keywords
from lib.users import password
from test_tls import sni_conf

pytestmark = pytest.mark.skipif(not pkilib.tls_built(),
                                reason="smtpgate built without TLS")


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def s_client(*args, stdin=b"QUIT\r\n", timeout=60):
    p = subprocess.run(["openssl", "s_client", *args, "-ign_eof"],
                       input=stdin, capture_output=True, timeout=timeout)
    return (p.stdout + p.stderr).decode(errors="replace")


def session_line(out):
    """'New, TLSv1.3, Cipher is ...' or 'Reused, ...' from s_client."""
    m = re.search(r"^(New|Reused), .*$", out, re.M)
    assert m, f"no New/Reused line in s_client output:\n{out}"
    return m.group(0)


def handshake(g, pki, version, *, sess_out=None, sess_in=None):
    """One implicit-TLS session with s_client; returns 'New' or 'Reused'
    after checking that the session went through to the 221."""
    args = ["-connect", f"127.0.0.1:{g.ports['PORTS']}", version,
            "-servername", "mx.test", "-CAfile", pki.ca,
            "-verify_return_error"]
    if sess_out:
        args += ["-sess_out", sess_out]
    if sess_in:
        args += ["-sess_in", sess_in]
    out = s_client(*args)
    assert "221 2.0.0 Bye" in out, out
    return session_line(out).split(",")[0]


# -- ssl_session_ticket_key ---------------------------------------------------


def key_file(tmp_path, name, size=80):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    return str(path)


def ticket_conf(pki, backend, *keys, extra=""):
    return tls_conf(pki, backend, extra="\n".join(
        [f"ssl_session_ticket_key {k};" for k in keys] + [extra]))


VERSIONS = ["-tls1_3", "-tls1_2"]


@pytest.mark.parametrize("size", [80, 48])
@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_key_shared_by_two_instances(smtpgate, backend, pki,
                                            tmp_path, version, size):
    """Two smtpgate instances with the same key file: a ticket from the
    first resumes on the second (AES-256 keys of 80 bytes, AES-128 keys
    of 48)."""
    key = key_file(tmp_path, "ticket.key", size)
    g1 = smtpgate(ticket_conf(pki, backend, key))
    g2 = smtpgate(ticket_conf(pki, backend, key))
    sess = str(tmp_path / "session.pem")
    assert handshake(g1, pki, version, sess_out=sess) == "New"
    assert handshake(g2, pki, version, sess_in=sess) == "Reused"


@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_from_other_keys_does_not_resume(smtpgate, backend, pki,
                                                tmp_path, version):
    """Instances with different key files, or with none (each master
    draws its own secret): a full handshake, no resumption."""
    a = key_file(tmp_path, "a.key")
    b = key_file(tmp_path, "b.key")
    g1 = smtpgate(ticket_conf(pki, backend, a))
    g2 = smtpgate(ticket_conf(pki, backend, b))
    g3 = smtpgate(tls_conf(pki, backend))
    g4 = smtpgate(tls_conf(pki, backend))
    for first, second in ((g1, g2), (g3, g4)):
        sess = str(tmp_path / f"session-{first.port}.pem")
        assert handshake(first, pki, version, sess_out=sess) == "New"
        assert handshake(second, pki, version, sess_in=sess) == "New"
        assert handshake(first, pki, version, sess_in=sess) == "Reused"


@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_key_rotation(smtpgate, backend, pki, tmp_path, version):
    """A ticket issued under key A resumes on a server configured with
    `ssl_session_ticket_key B; ssl_session_ticket_key A;`, which issues
    its new tickets under B: one of those does not resume where only A
    is known."""
    a = key_file(tmp_path, "a.key")
    b = key_file(tmp_path, "b.key")
    old = smtpgate(ticket_conf(pki, backend, a))
    new = smtpgate(ticket_conf(pki, backend, b, a))
    sess_a = str(tmp_path / "a.pem")
    sess_b = str(tmp_path / "b.pem")
    assert handshake(old, pki, version, sess_out=sess_a) == "New"
    assert handshake(new, pki, version, sess_in=sess_a) == "Reused"
    assert handshake(new, pki, version, sess_out=sess_b) == "New"
    assert handshake(new, pki, version, sess_in=sess_b) == "Reused"
    assert handshake(old, pki, version, sess_in=sess_b) == "New"


def test_ticket_key_in_mail_block_serves_every_server(smtpgate, backend,
                                                      pki, tmp_path):
    """Given in mail {}, the keys are every server's; with workers=2,
    every worker opens the other instance's tickets."""
    key = key_file(tmp_path, "ticket.key")
    conf = tls_conf(pki, backend, workers=2,
                    mail=f"    ssl_session_ticket_key {key};")
    g1 = smtpgate(conf)
    g2 = smtpgate(conf)
    sess = str(tmp_path / "session.pem")
    assert handshake(g1, pki, "-tls1_3", sess_out=sess) == "New"
    for _ in range(4):
        assert handshake(g2, pki, "-tls1_3", sess_in=sess) == "Reused"


@pytest.mark.parametrize("version", VERSIONS)
def test_shared_ticket_stays_with_its_server(smtpgate, backend, pki,
                                             tmp_path, version):
    """With shared keys as with smtpgate's own, a session resumes only
    under the server that made it: one from mx.test (no client
    certificate) offered under alt.test, which requires one, never gets
    alt.test's greeting; alt.test's own session resumes there."""
    key = key_file(tmp_path, "ticket.key")
    conf = sni_conf(pki, backend, alt_extra=f"""
        ssl_verify_client on;
        ssl_client_certificate {pki.ca};""")
    conf = conf.replace("mail {\n", "mail {\n" + indent(
        f"ssl_session_ticket_key {key};") + "\n", 1)
    g = smtpgate(conf)
    common = ["-connect", f"127.0.0.1:{g.ports['PORTS']}", version,
              "-CAfile", pki.ca]
    sess = str(tmp_path / "mx.pem")
    out = s_client(*common, "-servername", "mx.test", "-sess_out", sess)
    assert "220 mx.test ESMTP ready" in out, out
    out = s_client(*common, "-servername", "alt.test", "-sess_in", sess)
    assert "220 alt.test" not in out, out
    alice = ["-servername", "alt.test", "-cert", pki.cert("alice"),
             "-key", pki.key("alice")]
    sess = str(tmp_path / "alt.pem")
    out = s_client(*common, *alice, "-sess_out", sess)
    assert "220 alt.test ESMTP ready" in out, out
    out = s_client(*common, *alice, "-sess_in", sess)
    assert session_line(out).startswith("Reused, "), out
    assert "220 alt.test ESMTP ready" in out, out


def test_ticket_keys_not_logged(smtpgate, backend, pki, tmp_path):
    """At debug level no part of the key file reaches the error log."""
    key = key_file(tmp_path, "ticket.key")
    g = smtpgate(ticket_conf(pki, backend, key).replace(" info;", " debug;"))
    sess = str(tmp_path / "session.pem")
    assert handshake(g, pki, "-tls1_2", sess_out=sess) == "New"
    assert handshake(g, pki, "-tls1_2", sess_in=sess) == "Reused"
    data = open(key, "rb").read()
    log = g.error_log()
    assert "debug" in log
    for i in range(0, 80, 16):
        part = data[i:i + 16]
        assert part.hex() not in log.lower(), i
        assert part.hex().upper() not in log, i


@pytest.mark.parametrize("size", [0, 47, 64, 81, 4096])
def test_ticket_key_of_wrong_size(tmp_path, backend, pki, size):
    """A file of another size than 48 or 80 bytes fails -t at the line
    of its directive."""
    key = key_file(tmp_path, "ticket.key", size)
    text = ticket_conf(pki, backend, key)
    line = text.splitlines().index(
        f"        ssl_session_ticket_key {key};") + 1
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    what = f"more than 80" if size > 80 else str(size)
    assert (f'{g.conf_path}:{line}: "{key}" must be 48 or 80 bytes '
            f'("openssl rand 80"), not {what}') in r.stderr, r.stderr


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_ticket_key_unreadable(tmp_path, backend, pki, which):
    """A key file that cannot be read fails -t with the system's reason,
    at the line of its directive."""
    key = str(tmp_path / "ticket.key")
    if which == "directory":
        os.mkdir(key)
    text = ticket_conf(pki, backend, key)
    line = text.splitlines().index(
        f"        ssl_session_ticket_key {key};") + 1
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    reason = ('open() "{}" failed (2: No such file or directory)'
              if which == "missing"
              else 'read() "{}" failed (21: Is a directory)').format(key)
    assert f"{g.conf_path}:{line}: {reason}" in r.stderr, r.stderr


# -- ssl_trusted_certificate --------------------------------------------------


AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
CA_NAMES = "Acceptable client certificate CA names"


def trusted_conf(pki, backend, client_ca, trusted, verify="on"):
    lines = [f"ssl_verify_client {verify};", "smtp_auth plain external;"]
    if client_ca:
        lines.append(f"ssl_client_certificate {client_ca};")
    if trusted:
        lines.append(f"ssl_trusted_certificate {trusted};")
    return tls_conf(pki, backend, extra="\n".join(lines))


def external_login(g, pki, cert):
    """AUTH EXTERNAL over implicit TLS with client certificate `cert`;
    the reply (235 only if the certificate was verified)."""
    with implicit_session(g, pki, cert=cert) as c:
        c.ehlo()
        return c.cmd("AUTH EXTERNAL =").raw


def ca_names(g, pki):
    """What s_client says of the CA names in the CertificateRequest."""
    out = s_client("-connect", f"127.0.0.1:{g.ports['PORTS']}",
                   "-servername", "mx.test", "-CAfile", pki.ca)
    if "No client certificate CA names sent" in out:
        return ""
    assert CA_NAMES in out, out
    return out.split(CA_NAMES, 1)[1].split("---", 1)[0]


CERT_USERS = "alice@example.org:{PLAIN}x\nmallory:{PLAIN}x\n"


def test_trusted_certificate_verifies_without_naming_its_ca(smtpgate,
                                                            backend, pki):
    """mallory's CA is only in ssl_trusted_certificate: its certificate
    is verified (AUTH EXTERNAL logs in with it) while the CertificateRequest
    names only the CA of ssl_client_certificate; alice's, from that CA,
    still verifies."""
    g = smtpgate(trusted_conf(pki, backend, pki.ca, pki.other_ca),
                 users_text=CERT_USERS)
    names = ca_names(g, pki)
    assert "CN = smtpgate test CA" in names, names
    assert "unknown CA" not in names, names
    assert external_login(g, pki, "mallory") == AUTH_OK
    assert external_login(g, pki, "alice") == AUTH_OK


def test_trusted_certificate_alone(smtpgate, backend, pki):
    """ssl_verify_client with ssl_trusted_certificate and no
    ssl_client_certificate: no CA names are sent, the certificates of the
    trusted CA verify, others are refused."""
    g = smtpgate(trusted_conf(pki, backend, None, pki.other_ca,
                              verify="optional"),
                 users_text=CERT_USERS)
    assert ca_names(g, pki) == ""
    assert external_login(g, pki, "mallory") == AUTH_OK
    outcome, what = pkilib.handshake_outcome(
        "127.0.0.1", g.ports["PORTS"], pki.client_context("alice"),
        "mx.test")
    assert outcome == "refused", what


def test_without_trusted_certificate_its_ca_is_refused(smtpgate, backend,
                                                       pki):
    """The counterpart: with ssl_client_certificate alone mallory's
    certificate does not verify."""
    g = smtpgate(trusted_conf(pki, backend, pki.ca, None),
                 users_text=CERT_USERS)
    outcome, what = pkilib.handshake_outcome(
        "127.0.0.1", g.ports["PORTS"], pki.client_context("mallory"),
        "mx.test")
    assert outcome == "refused", what


def test_trusted_certificate_missing_file(tmp_path, backend, pki):
    """A trusted CA file that cannot be read fails -t at its line."""
    missing = pki.path("no-such-ca.pem")
    text = trusted_conf(pki, backend, pki.ca, missing)
    line = text.splitlines().index(
        f"        ssl_trusted_certificate {missing};") + 1
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    assert (f'{g.conf_path}:{line}: loading ssl_trusted_certificate '
            f'"{missing}" failed: No such file or directory') in r.stderr, \
        r.stderr


def test_verify_client_needs_a_ca(tmp_path, backend, pki):
    """ssl_verify_client without either CA file fails -t and names both
    directives."""
    g = gatelib.Smtpgate(tmp_path / "g",
                         trusted_conf(pki, backend, None, None),
                         users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    assert ('"ssl_verify_client" needs "ssl_client_certificate" or '
            '"ssl_trusted_certificate"') in r.stderr, r.stderr


# -- ssl on | off ---------------------------------------------------------------


DEPRECATED = ('the "ssl" directive is deprecated, use the "listen ... ssl" '
              'directive instead')
PLAIN_LISTEN = ("127.0.0.1:@PORT@",)


def start_implicit(smtpgate, conf):
    """Start an instance whose plain `listen` speaks implicit TLS (the
    readiness probe would greet it in plaintext)."""
    g = smtpgate(conf, start=False)
    g.start(wait=False)
    net.wait_until(lambda: gatelib.tls_probe("127.0.0.1", g.port), 60,
                   what="smtpgate to answer a TLS handshake")
    return g


def line_of(text, directive):
    return text.splitlines().index(directive) + 1


@pytest.mark.parametrize("where", ["server", "mail"])
def test_ssl_on_makes_listen_implicit_tls(smtpgate, backend, pki, where):
    """`ssl on` (in the server or in mail {}): a plain `listen` greets
    inside TLS, as `listen ... ssl` would, and AUTH works over it; -t and
    the start warn that the directive is deprecated, at its line."""
    if where == "server":
        conf = tls_conf(pki, backend, starttls=None, listen=PLAIN_LISTEN,
                        extra="ssl on;")
        directive = "        ssl on;"
    else:
        conf = tls_conf(pki, backend, starttls=None, listen=PLAIN_LISTEN,
                        mail="    ssl on;")
        directive = "    ssl on;"
    g = start_implicit(smtpgate, conf)
    warning = f"{g.conf_path}:{line_of(conf, directive)}: {DEPRECATED}"
    r = g.ctl("-t", timeout=30)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\[warn\] \d+#\d+: " + re.escape(warning), r.stderr), \
        r.stderr
    assert warning in g.error_log() + open(g.stderr_path).read()
    with implicit_session(g, pki, port=g.port) as c:
        assert c.greeting_reply.raw == b"220 mx.test ESMTP ready\r\n"
        keys = ehlo_keywords(c.ehlo())
        assert "AUTH" in keys and "STARTTLS" not in keys, keys
        assert c.auth_plain("alice", password("alice")).raw == AUTH_OK


def test_ssl_on_applies_to_its_server_only(smtpgate, backend, pki):
    """`ssl on` in one server leaves another server's address plain."""
    conf = tls_conf(pki, backend, starttls=None, listen=PLAIN_LISTEN,
                    extra="ssl on;", servers=[indent(
                        "listen 127.0.0.1:@PORT2@;\nprotocol smtp;\n"
                        "server_name plain.test;")])
    g = start_implicit(smtpgate, conf)
    with implicit_session(g, pki, port=g.port) as c:
        assert c.greeting_reply.code == 220
    with gatelib.RawSmtp("127.0.0.1", g.ports["PORT2"]) as c:
        assert c.greeting().raw == b"220 plain.test ESMTP ready\r\n"


def test_ssl_off_is_accepted_with_the_warning(smtpgate, backend, pki):
    """`ssl off`: plain SMTP with STARTTLS as before, and the warning."""
    conf = tls_conf(pki, backend, extra="ssl off;")
    g = smtpgate(conf)
    r = g.ctl("-t", timeout=30)
    assert r.returncode == 0 and DEPRECATED in r.stderr, r.stderr
    with starttls_session(g, pki) as c:
        assert c.ehlo().code == 250


@pytest.mark.parametrize("first,second,error", [
    ("ssl on;", "starttls on;",
     '"ssl" directive conflicts with "starttls"'),
    ("starttls only;", "ssl on;",
     '"starttls" directive conflicts with "ssl on"'),
], ids=["ssl-then-starttls", "starttls-then-ssl"])
def test_ssl_on_conflicts_with_starttls(tmp_path, backend, pki, first,
                                        second, error):
    """As in nginx, `ssl on` and `starttls on|only` in one block are an
    error, at the second of the two."""
    text = tls_conf(pki, backend, starttls=None, listen=PLAIN_LISTEN,
                    extra=f"{first}\n{second}")
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    line = line_of(text, "        " + second)
    assert f"{g.conf_path}:{line}: {error}" in r.stderr, r.stderr


def test_ssl_on_without_certificate(tmp_path, backend):
    """`ssl on` in a server without a certificate fails -t at its line."""
    text = gatelib.conf(backend=backend, server="        ssl on;")
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    line = line_of(text, "        ssl on;")
    assert (f'{g.conf_path}:{line}: "ssl on" needs "ssl_certificate" and '
            '"ssl_certificate_key"') in r.stderr, r.stderr


def test_ssl_on_server_sharing_a_plain_address(tmp_path, backend, pki):
    """A server with `ssl on` and one without on the same address: the
    address would be both, which is refused as for `listen ... ssl`."""
    text = tls_conf(pki, backend, starttls=None, listen=PLAIN_LISTEN,
                    extra="ssl on;", servers=[indent(
                        "listen 127.0.0.1:@PORT@;\nprotocol smtp;\n"
                        "server_name plain.test;")])
    g = gatelib.Smtpgate(tmp_path / "g", text, users_text="")
    r = g.ctl("-t", timeout=30)
    assert r.returncode != 0, r.stderr
    assert 'is listed both with and without "ssl"' in r.stderr, r.stderr
