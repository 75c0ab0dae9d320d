"""auth_http over https://: the service's certificate is verified (by
default against the system's CAs, or auth_http_ssl_trusted_certificate),
connections are kept alive across logins, and a certificate that does
not verify gets the client a 454 with the cause in the log."""
import http.server
import ssl
import threading

import pytest

from lib import gate as gatelib
from lib import net
from lib import pki as pkilib
from lib.smtp import plain_token


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


class _Auth(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        svc = self.server.svc
        with svc.lock:
            svc.connections.add(self.client_address[1])
            svc.requests += 1
        self.send_response(200)
        if self.headers.get("Auth-Pass") == "right":
            self.send_header("Auth-Status", "OK")
            self.send_header("Auth-Server", "127.0.0.1")
            self.send_header("Auth-Port", str(svc.backend_port))
        else:
            self.send_header("Auth-Status", "Invalid login")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class TlsAuthService:
    def __init__(self, pki, backend_port):
        self.port = net.free_port("127.0.0.1")
        self.backend_port = backend_port
        self.lock = threading.Lock()
        self.connections = set()
        self.requests = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port),
                                                     _Auth)
        self.httpd.svc = self
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.cert("mx.test"), pki.key("mx.test"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket,
                                            server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tls_service(pki, backend):
    svc = TlsAuthService(pki, backend.port)
    yield svc
    svc.stop()


def conf(backend, svc, trusted, extra=""):
    return gatelib.conf(backend=backend, auth_file=None, mail=(
        f"    auth_http https://127.0.0.1:{svc.port}/auth;\n"
        f"    auth_http_ssl_trusted_certificate {trusted};\n"
        "    smtp_auth_fail_delay 0;\n" + extra))


def login(g, secret):
    with g.session() as c:
        c.ehlo()
        return c.cmd(f"AUTH PLAIN {plain_token('someone', secret)}")


def test_https_service_verified_and_kept_alive(smtpgate, backend, pki,
                                               tls_service):
    """Three logins reach the backend the service names, over one TLS
    connection to the service."""
    g = smtpgate(conf(backend, tls_service, pki.ca))
    for _ in range(3):
        assert login(g, "right").code == 235
    assert login(g, "wrong").code == 535
    assert tls_service.requests == 4
    assert len(tls_service.connections) == 1


def test_https_service_with_an_untrusted_certificate(smtpgate, backend,
                                                     pki, tls_service):
    """A certificate from a CA smtpgate does not trust: 454, never 535,
    and the log says the TLS handshake with the service failed."""
    g = smtpgate(conf(backend, tls_service, pki.cert("alt.test")))
    r = login(g, "right")
    assert r.raw == b"454 4.7.0 Temporary authentication failure\r\n", r
    log = g.error_log()
    assert "TLS handshake failed" in log
    assert "certificate verify failed" in log
    assert tls_service.requests == 0


def test_https_verification_off(smtpgate, backend, pki, tls_service):
    g = smtpgate(conf(backend, tls_service, pki.cert("alt.test"),
                      extra="    auth_http_ssl_verify off;\n"))
    assert login(g, "right").code == 235
