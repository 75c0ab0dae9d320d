"""A throw-away PKI for the TLS tests, made with the openssl command line,
and the client side of TLS the tests talk through.

Pki(directory) writes:

    ca.pem, ca.key            the test CA every certificate below chains to
    other-ca.pem              a second CA the gate does not know
    mx.test.pem/.key          RSA 2048, SAN DNS:mx.test, IP:127.0.0.1
    mx.test-ec.pem/.key       the same names on an ECDSA P-256 key
    mx.test-enc.key           mx.test.key under a passphrase, which is on
    password.txt              the only line of this file ...
    passwords.txt             ... and on the second line of this one
    alt.test.pem/.key         for SNI
    wild.test.pem/.key        DNS:*.wild.test and DNS:wild.test
    re.test.pem/.key          DNS:re.test (a server with a regex name)
    alice.pem/.key            client: CN=alice, emailAddress=alice@example.org
    bob.pem/.key              client, revoked in crl.pem
    mallory.pem/.key          client, signed by other-ca
    crl.pem                   the test CA's CRL revoking bob
    dh.pem                    ffdhe2048 parameters for ssl_dhparam

add_client(name, subject, san) makes one more client certificate on
first use, add_server(name, san) one more server certificate, and
backend_cert() the one the test backends present:

    backend.test.pem/.key     SAN DNS:backend.test, IP:127.0.0.1, IP:::1
  Every key file is readable by all: the gate's workers drop
privileges.
shared() makes one Pki per test run, in a directory under /tmp.

TlsSmtp is lib.smtp.RawSmtp that can also run STARTTLS or start in TLS;
a peer that closes without close_notify reads as ServerClosed, as a plain
close does.
"""

import atexit
import os
import shutil
import ssl
import subprocess
import tempfile

from . import gate as gatelib
from .smtp import RawSmtp, ServerClosed

OPENSSL = "openssl"
DAYS = "3650"
PASSPHRASE = "mx-key-passphrase"
BACKEND_NAME = "backend.test"
BACKEND_SAN = "DNS:backend.test, IP:127.0.0.1, IP:::1"


def run(args, timeout=60, **kw):
    """Run a command; raise with its output when it fails."""
    p = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {p.returncode}:\n"
                           + (p.stdout + p.stderr).decode(errors="replace"))
    return p


SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = {san}
"""

CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
{san}
"""

CA_CONF = """\
[ ca ]
default_ca = test_ca

[ test_ca ]
dir = {dir}
database = {dir}/index.txt
serial = {dir}/serial
crlnumber = {dir}/crlnumber
certificate = {dir}/ca.pem
private_key = {dir}/ca.key
new_certs_dir = {dir}
default_md = sha256
default_days = 3650
default_crl_days = 3650
policy = any

[ any ]
commonName = supplied
"""


DATED_CA_CONF = """\
[ ca ]
default_ca = dated_ca

[ dated_ca ]
database = {dir}/index.txt
serial = {dir}/serial
certificate = {ca}/ca.pem
private_key = {ca}/ca.key
new_certs_dir = {dir}
default_md = sha256
policy = any
unique_subject = no

[ any ]
commonName = supplied
"""


class Pki:
    def __init__(self, directory):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self._serial = 100
        self.ca = self._ca("ca", "/O=smtpgate tests/CN=smtpgate test CA")
        self.other_ca = self._ca("other-ca", "/O=elsewhere/CN=unknown CA")
        self._server("mx.test", "DNS:mx.test, IP:127.0.0.1")
        self._server("mx.test-ec", "DNS:mx.test, IP:127.0.0.1", cn="mx.test",
                     key=["-newkey", "ec", "-pkeyopt",
                          "ec_paramgen_curve:P-256"])
        self._server("alt.test", "DNS:alt.test")
        self._server("wild.test", "DNS:*.wild.test, DNS:wild.test",
                     cn="*.wild.test")
        self._server("re.test", "DNS:re.test")
        self._client("alice", "/CN=alice/emailAddress=alice@example.org",
                     "subjectAltName = email:alice@example.org")
        self._client("bob", "/CN=bob/emailAddress=bob@example.org")
        self._client("mallory", "/CN=mallory", ca="other-ca")
        self._encrypted_key()
        self._crl("bob")
        run([OPENSSL, "genpkey", "-genparam", "-algorithm", "DH",
             "-pkeyopt", "group:ffdhe2048", "-out", self.path("dh.pem")])
        for name in os.listdir(self.dir):
            os.chmod(self.path(name), 0o644)

    def path(self, name):
        return os.path.join(self.dir, name)

    def cert(self, name):
        return self.path(name + ".pem")

    def key(self, name):
        return self.path(name + ".key")

    @property
    def crl(self):
        return self.path("crl.pem")

    @property
    def dhparam(self):
        return self.path("dh.pem")

    @property
    def encrypted_key(self):
        return self.path("mx.test-enc.key")

    @property
    def password_file(self):
        return self.path("password.txt")

    @property
    def passwords_file(self):
        return self.path("passwords.txt")

    # -- making ------------------------------------------------------------

    def _next_serial(self):
        self._serial += 1
        return str(self._serial)

    def _ca(self, name, subject):
        run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-sha256", "-days", DAYS, "-subj", subject,
             "-set_serial", self._next_serial(),
             "-keyout", self.key(name), "-out", self.cert(name),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        return self.cert(name)

    def _sign(self, name, subject, ext, ca="ca", key=("-newkey", "rsa:2048")):
        csr = self.path(name + ".csr")
        extfile = self.path(name + ".ext")
        with open(extfile, "w") as f:
            f.write(ext)
        run([OPENSSL, "req", "-new", *key, "-nodes", "-subj", subject,
             "-keyout", self.key(name), "-out", csr])
        run([OPENSSL, "x509", "-req", "-in", csr, "-sha256", "-days", DAYS,
             "-CA", self.cert(ca), "-CAkey", self.key(ca),
             "-set_serial", self._next_serial(),
             "-extfile", extfile, "-out", self.cert(name)])
        os.unlink(csr)
        os.unlink(extfile)

    def _server(self, name, san, cn=None, key=("-newkey", "rsa:2048")):
        self._sign(name, f"/O=smtpgate tests/CN={cn or name}",
                   SERVER_EXT.format(san=san), key=key)

    def _client(self, name, subject, san="", ca="ca"):
        self._sign(name, subject, CLIENT_EXT.format(san=san), ca=ca)

    def add_client(self, name, subject, san=None, ca="ca"):
        """One more client certificate, made on first use: `subject` as
        for openssl req -subj, `san` e.g. 'email:x@example.org' or None
        for no subjectAltName.  Returns the certificate path."""
        if not os.path.exists(self.cert(name)):
            self._client(name, subject,
                         f"subjectAltName = {san}" if san else "", ca=ca)
            for path in (self.cert(name), self.key(name)):
                os.chmod(path, 0o644)
        return self.cert(name)

    def add_server(self, name, san, cn=None):
        """One more server certificate, made on first use: `san` as for
        openssl's subjectAltName, e.g. 'DNS:x.test, IP:127.0.0.1'.
        Returns the certificate path."""
        if not os.path.exists(self.cert(name)):
            self._server(name, san, cn=cn)
            for path in (self.cert(name), self.key(name)):
                os.chmod(path, 0o644)
        return self.cert(name)

    def add_dated_server(self, name, san, not_before, not_after):
        """One more server certificate valid from not_before to not_after
        (datetime, UTC), made on first use by `openssl ca`, which alone
        takes both dates: expired ones, ones not valid yet, ones about to
        expire.  Returns the certificate path."""
        if os.path.exists(self.cert(name)):
            return self.cert(name)
        d = self.path("dated")
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "ca.cnf")
        if not os.path.exists(conf):
            with open(conf, "w") as f:
                f.write(DATED_CA_CONF.format(dir=d, ca=self.dir))
            open(os.path.join(d, "index.txt"), "w").close()
            with open(os.path.join(d, "serial"), "w") as f:
                f.write("2000\n")
        csr = self.path(name + ".csr")
        extfile = self.path(name + ".ext")
        with open(extfile, "w") as f:
            f.write(SERVER_EXT.format(san=san))
        run([OPENSSL, "req", "-new", "-newkey", "rsa:2048", "-nodes",
             "-subj", f"/O=smtpgate tests/CN={name}",
             "-keyout", self.key(name), "-out", csr])
        run([OPENSSL, "ca", "-batch", "-config", conf, "-notext",
             "-startdate", not_before.strftime("%Y%m%d%H%M%SZ"),
             "-enddate", not_after.strftime("%Y%m%d%H%M%SZ"),
             "-extfile", extfile, "-in", csr, "-out", self.cert(name)])
        os.unlink(csr)
        os.unlink(extfile)
        for path in (self.cert(name), self.key(name)):
            os.chmod(path, 0o644)
        return self.cert(name)

    def backend_cert(self):
        """The name of the certificate the test backends present
        (backend.test, valid for 127.0.0.1 and ::1 too)."""
        self.add_server(BACKEND_NAME, BACKEND_SAN)
        return BACKEND_NAME

    def _encrypted_key(self):
        with open(self.password_file, "w") as f:
            f.write(PASSPHRASE + "\n")
        with open(self.passwords_file, "w") as f:
            f.write("not-the-passphrase\n" + PASSPHRASE + "\n")
        run([OPENSSL, "pkey", "-in", self.key("mx.test"), "-aes256",
             "-passout", "file:" + self.password_file,
             "-out", self.encrypted_key])

    def _crl(self, revoked):
        conf = self.path("ca.cnf")
        with open(conf, "w") as f:
            f.write(CA_CONF.format(dir=self.dir))
        open(self.path("index.txt"), "w").close()
        with open(self.path("crlnumber"), "w") as f:
            f.write("1000\n")
        run([OPENSSL, "ca", "-batch", "-config", conf,
             "-revoke", self.cert(revoked)])
        run([OPENSSL, "ca", "-batch", "-config", conf, "-gencrl",
             "-out", self.crl])

    # -- looking -----------------------------------------------------------

    def subject(self, name):
        """The subject of a certificate as openssl prints it, e.g.
        'O = smtpgate tests, CN = mx.test'."""
        p = run([OPENSSL, "x509", "-noout", "-subject", "-nameopt",
                 "oneline", "-in", self.cert(name)])
        return p.stdout.decode().strip().split("=", 1)[1].strip()

    def client_context(self, cert=None, verify=True, check_hostname=True):
        """An ssl context that trusts the test CA, optionally presenting
        client certificate `cert` (a name such as 'alice')."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            ctx.load_verify_locations(self.ca)
            ctx.check_hostname = check_hostname
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert is not None:
            ctx.load_cert_chain(self.cert(cert), self.key(cert))
        return ctx


def common_name(cert_dict):
    """The CN of a certificate as returned by SSLSocket.getpeercert()."""
    for rdn in cert_dict.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class TlsSmtp(RawSmtp):
    """RawSmtp over a socket that can be switched to TLS."""

    tls = None          # the SSLSocket once TLS runs

    @classmethod
    def implicit(cls, host, port, context, server_hostname=None,
                 timeout=30.0):
        """Connect and handshake at once (an `ssl` listener)."""
        c = cls(host, port, timeout)
        try:
            c.wrap(context, server_hostname)
        except BaseException:
            c.close()
            raise
        return c

    def wrap(self, context, server_hostname=None):
        """Run the TLS handshake on the connection now; bytes already
        buffered in plaintext stay in self.buf (the caller decides)."""
        self.tls = context.wrap_socket(self.sock,
                                       server_hostname=server_hostname)
        self.sock = self.tls
        return self.tls

    def starttls(self, context, server_hostname=None):
        """STARTTLS, expect the exact 220, handshake.  Nothing may follow
        the 220 in plaintext."""
        r = self.cmd("STARTTLS")
        assert r.raw == b"220 2.0.0 Ready to start TLS\r\n", r
        assert self.buf == b"", f"plaintext after the 220: {self.buf!r}"
        return self.wrap(context, server_hostname)

    def _fill(self):
        try:
            super()._fill()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self.closed_by_peer = True
            raise ServerClosed("connection closed by server (TLS EOF); "
                               f"unparsed bytes: {self.buf!r}") from None


def handshake_outcome(host, port, context, server_hostname=None,
                      starttls=False, timeout=30.0):
    """Try a TLS session and say how it went: ('ok', greeting-or-EHLO
    reply) when the server talks SMTP over TLS, ('refused', what) when the
    handshake fails, the server drops the connection during or right
    after it (as TLS 1.3 does for a rejected client certificate), or it
    greets with something other than 220."""
    c = TlsSmtp(host, port, timeout)
    try:
        try:
            if starttls:
                r = c.greeting()
                assert r.code == 220, r
                c.ehlo()
                c.starttls(context, server_hostname)
                return "ok", c.ehlo()
            c.wrap(context, server_hostname)
            r = c.greeting()
            return ("ok" if r.code == 220 else "refused"), r
        except (ssl.SSLError, ServerClosed, ConnectionResetError,
                BrokenPipeError) as e:
            return "refused", repr(e)
    finally:
        c.close()


_shared = []


def shared():
    """The test run's Pki (made once, removed at exit); the test modules'
    session-scoped `pki` fixture returns it."""
    if not _shared:
        d = tempfile.mkdtemp(prefix="smtpgate-pki-", dir="/tmp")
        atexit.register(shutil.rmtree, d, True)
        _shared.append(Pki(d))
    return _shared[0]


# --------------------------------------------------------------------------
# configurations and sessions

STARTTLS_LISTEN = "127.0.0.1:@PORT@"
IMPLICIT_LISTEN = "127.0.0.1:@PORTS@ ssl"


def indent(text, spaces=8):
    return "\n".join(" " * spaces + l.strip() for l in text.splitlines()
                     if l.strip())


def cert_directives(pki, *names):
    """ssl_certificate / ssl_certificate_key pairs for the named certs."""
    return "\n".join(f"ssl_certificate {pki.cert(n)};\n"
                     f"ssl_certificate_key {pki.key(n)};" for n in names)


def tls_conf(pki, backend, *, starttls="on", certs=("mx.test",), extra="",
             listen=(STARTTLS_LISTEN, IMPLICIT_LISTEN), require_tls=True,
             **kw):
    """lib.gate.conf() with TLS in its server{} block: a STARTTLS listener
    on @PORT@, an implicit-TLS one on @PORTS@, the mx.test certificate and
    AUTH only over TLS (the default), plus the directives in `extra`."""
    server = []
    if starttls is not None:
        server.append(f"starttls {starttls};")
    server.append(cert_directives(pki, *certs))
    server.append(extra)
    return gatelib.conf(backend=backend, listen=listen,
                        require_tls=require_tls,
                        server=indent("\n".join(server)), **kw)


def der(path):
    """The DER bytes of the (first) certificate in a PEM file."""
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def starttls_session(g, pki, *, sni="mx.test", cert=None, port=None,
                     context=None, timeout=30.0):
    """Connect to the STARTTLS listener, EHLO, STARTTLS (verifying the
    server as `sni`), and return the TlsSmtp before the second EHLO."""
    c = TlsSmtp("127.0.0.1", port or g.port, timeout)
    try:
        r = c.greeting()
        assert r.code == 220, r
        c.ehlo()
        c.starttls(context or pki.client_context(cert), sni)
    except BaseException:
        c.close()
        raise
    return c


def implicit_session(g, pki, *, sni="mx.test", cert=None, port=None,
                     context=None, timeout=30.0):
    """Connect to the implicit-TLS listener; return the TlsSmtp with the
    greeting read (and checked to be a 220)."""
    c = TlsSmtp.implicit("127.0.0.1", port or g.ports["PORTS"],
                         context or pki.client_context(cert), sni, timeout)
    try:
        r = c.greeting()
        assert r.code == 220, r
        c.greeting_reply = r
    except BaseException:
        c.close()
        raise
    return c


def tls_built():
    """False when the binary says it was built without the ssl module."""
    exe = gatelib.binary()
    if not os.access(exe, os.X_OK):
        return True
    d = tempfile.mkdtemp(prefix="smtpgate-v-", dir="/tmp")
    try:
        r = gatelib.run_binary(["-V"], cwd=d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("modules:"):
            return "ssl" in line.split()[1:]
    return True
