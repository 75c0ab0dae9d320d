"""auth_http_format json: the request is a POST of one JSON document with
the same facts as nginx's headers; the answer is a JSON object with the
same meaning; connections are kept alive; a bad answer is a temporary
failure."""
import http.server
import json
import threading

import pytest

from lib import gate as gatelib
from lib import memscan
from lib import net
from lib.smtp import plain_token


class _Json(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        svc = self.server.svc
        n = int(self.headers.get("Content-Length", "0"))
        doc = json.loads(self.rfile.read(n))
        with svc.lock:
            svc.requests.append((self.headers.get("Content-Type"), doc))
            svc.connections.add(self.client_address[1])
        body = svc.answer(doc)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class JsonService:
    def __init__(self, backend_port):
        self.port = net.free_port("127.0.0.1")
        self.backend_port = backend_port
        self.lock = threading.Lock()
        self.requests = []
        self.connections = set()
        self.answer = self.default
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port),
                                                     _Json)
        self.httpd.svc = self
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def default(self, doc):
        if doc["pass"] == "right":
            return {"status": "OK", "server": "127.0.0.1",
                    "port": self.backend_port}
        return {"status": "Bad password", "wait": 0}

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def svc(backend):
    s = JsonService(backend.port)
    yield s
    s.stop()


def conf(backend, svc):
    return gatelib.conf(backend=backend, auth_file=None, level="debug",
                        mail=(f"    auth_http http://127.0.0.1:{svc.port}/a;\n"
                              "    auth_http_format json;\n"
                              "    smtp_auth_fail_delay 0;\n"))


def login(g, secret, user="someone"):
    with g.session() as c:
        c.ehlo("client.test")
        return c.cmd(f"AUTH PLAIN {plain_token(user, secret)}")


def test_json_request_and_answer(smtpgate, backend, svc):
    g = smtpgate(conf(backend, svc))
    for _ in range(3):
        assert login(g, "right").code == 235
    ctype, doc = svc.requests[0]
    assert ctype == "application/json"
    assert doc["method"] == "plain" and doc["user"] == "someone"
    assert doc["pass"] == "right" and doc["protocol"] == "smtp"
    assert doc["client_ip"] == "127.0.0.1" and doc["helo"] == "client.test"
    assert doc["attempt"] == 1
    assert len(svc.connections) == 1          # kept alive
    assert "right" not in g.error_log()


def test_json_refusal_with_error_code(smtpgate, backend, svc):
    svc.answer = lambda doc: {"status": "Mailbox disabled",
                              "error_code": "550 5.7.1"}
    g = smtpgate(conf(backend, svc))
    assert login(g, "x").raw == b"550 5.7.1 Mailbox disabled\r\n"


def test_json_refusal_text_control_characters_become_spaces(smtpgate,
                                                             backend, svc):
    """JSON can carry any control character in a string; none reaches the
    SMTP reply (CR, LF and NUL make the answer invalid as before)."""
    svc.answer = lambda doc: {"status": "Mailbox\tdisabled\u0001\u001b[0m"}
    g = smtpgate(conf(backend, svc))
    assert login(g, "x").raw == b"535 5.7.8 Mailbox disabled  [0m\r\n"


def test_json_unicode_credentials(smtpgate, backend, svc):
    seen = []

    def answer(doc):
        seen.append((doc["user"], doc["pass"]))
        return {"status": "OK", "server": "127.0.0.1",
                "port": str(svc.backend_port)}
    svc.answer = answer
    g = smtpgate(conf(backend, svc))
    assert login(g, "pässwörd €", user="jörg").code == 235
    assert seen == [("jörg", "pässwörd €")]


@pytest.mark.parametrize("bad", [b"not json", b"[1, 2]",
                                 b'{"status": "OK", "status": "OK"}',
                                 b'{"status": {"nested": 1}}', b"{}"])
def test_json_bad_answers_are_temporary(smtpgate, backend, svc, bad):
    svc.answer = lambda doc: bad
    g = smtpgate(conf(backend, svc))
    r = login(g, "right")
    assert r.raw == b"454 4.7.0 Temporary authentication failure\r\n", r


@pytest.mark.parametrize("bad", [
    b'{"status": "OK", "user": "bk", "pass": "BackendSecret\\q"}',
    b'{"status": "OK", "user": "bk", "pass": "BackendSecret',
    b'{"status": "OK", "pass": "BackendSecret\\ud800"}',
], ids=["bad-escape", "unterminated", "lone-surrogate"])
def test_json_bad_answer_keeps_its_values_out_of_the_log(smtpgate, backend,
                                                          svc, bad):
    """jansson quotes the text where it stopped parsing; when that is the
    backend password the service sent, none of it may reach the log."""
    svc.answer = lambda doc: bad
    g = smtpgate(conf(backend, svc))
    mark = g.log_mark()
    assert login(g, "right").code == 454
    g.wait_log(r"auth_http service \S+ failed: invalid JSON answer: .* at "
               r"offset \d+", since=mark)
    log = g.log_since(mark)
    assert "Secret" not in log, log


@pytest.mark.parametrize("bad", [b"not json", b'{"status": "OK", "status": "OK"}',
                                 b'{"status": ["OK"]}'],
                         ids=["syntax", "duplicate", "type"])
def test_json_bad_answer_fails_over_to_the_next_service(smtpgate, backend,
                                                        bad):
    """As for a malformed head, a service whose answer is not valid is
    skipped for auth_http_fail_timeout and the next one asked: the
    client logs in."""
    broken, good = JsonService(backend.port), JsonService(backend.port)
    broken.answer = lambda doc: bad
    try:
        g = smtpgate(gatelib.conf(
            backend=backend, auth_file=None, workers=1,
            mail=(f"    auth_http http://127.0.0.1:{broken.port}/a "
                  f"http://127.0.0.1:{good.port}/a;\n"
                  "    auth_http_format json;\n")))
        mark = g.log_mark()
        assert login(g, "right").code == 235
        assert login(g, "right").code == 235
        assert (len(broken.requests), len(good.requests)) == (1, 2)
        g.wait_log(rf"auth_http service http://127.0.0.1:{broken.port}/a "
                   r"failed: .*; skipping it for auth_http_fail_timeout",
                   since=mark)
    finally:
        broken.stop()
        good.stop()


@pytest.mark.skipif(not memscan.can_scan(), reason="reads /proc/PID/mem")
def test_json_passwords_not_left_in_worker_memory(smtpgate, backend, svc):
    """The request's "pass" and the "pass" of the answer are wiped once
    the login is over, not merely freed."""
    svc.answer = lambda doc: {"status": "OK", "server": "127.0.0.1",
                              "port": svc.backend_port, "user": "bk",
                              "pass": "Bk7JsonBackendUNIQUE"}
    g = gatelib.conf(backend=backend, auth_file=None, workers=1,
                     mail=(f"    auth_http http://127.0.0.1:{svc.port}/a;\n"
                           "    auth_http_format json;\n"))
    g = smtpgate(g)
    mark = g.quiet_log_mark()   # past the start-up probe's close
    assert login(g, "Zq9JsonClientUNIQUE").code == 235
    # the session's pool (with its copy of the backend password) goes
    # just after the worker logs the close: scan once it is past it
    g.wait_log(r"session closed", since=mark)
    with g.session():       # a greeting: the worker is past that close
        pass
    (worker,) = g.workers()
    found = memscan.find(worker, [b'"pass":"Zq9JsonClientUNIQUE"',
                                  b"Bk7JsonBackendUNIQUE"])
    assert not found, found
