"""The test harness itself, checked without the smtpgate binary: backends
against a direct client, the users file hashes, config rendering and the
log scanner.  When these fail, the other tests cannot be trusted."""

import os
import smtplib
import warnings

import pytest

from lib import gate as gatelib
from lib import net, smtp, users as userlib
from lib.messages import make_message

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt
    except ImportError:         # gone from Python 3.13
        crypt = None


@pytest.mark.parametrize("name", sorted(userlib.USERS))
def test_users_file_hashes_verify(users, name):
    hashes, text = users
    password, scheme = userlib.USERS[name]
    h = hashes[name]
    prefix = {"yescrypt": "$y$", "yescrypt-extra": "$y$", "sha512": "$6$",
              "bcrypt": "$2b$", "plain": "{PLAIN}"}[scheme]
    assert h.startswith(prefix)
    if scheme != "plain" and crypt is not None:
        assert crypt.crypt(password, h) == h
        assert crypt.crypt(password + "x", h) != h
    assert any(l.startswith(f"{name}:{h}") for l in text.splitlines())


def test_aiosmtpd_backend_direct(backend):
    msg = make_message(1024)
    with smtplib.SMTP(backend.host, backend.port, timeout=30) as c:
        c.ehlo("direct.test")
        c.sendmail("a@example.org", ["b@example.org"], msg)
    (m,) = backend.wait_messages(1)
    assert m.content == msg
    assert m.mail_from == "a@example.org"
    assert m.rcpt_tos == ["b@example.org"]
    assert backend.seen("EHLO") == ["direct.test"]


def test_aiosmtpd_xclient_backend_direct(xclient_backend):
    b = xclient_backend
    with smtp.RawSmtp(b.host, b.port) as c:
        assert c.greeting().code == 220
        r = c.ehlo("first.test")
        assert smtp.ehlo_line(r, "XCLIENT")
        r = c.cmd("XCLIENT ADDR=192.0.2.1 NAME=[UNAVAILABLE]")
        assert r.code == 220
        c.ehlo("second.test")
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: x\r\n\r\nhi\r\n").code == 250
    (m,) = b.wait_messages(1)
    assert m.xclient == "ADDR=192.0.2.1 NAME=[UNAVAILABLE]"
    assert m.helo == "second.test"
    assert [v for v, _ in b.commands] == ["EHLO", "XCLIENT", "EHLO",
                                          "MAIL", "RCPT"]


def test_raw_client_dot_stuffing(backend):
    msg = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nend\r\n"
    with smtp.RawSmtp(backend.host, backend.port) as c:
        c.greeting()
        c.ehlo()
        assert c.mail("a@example.org", ["b@example.org"], msg).code == 250
        assert c.cmd("QUIT").code == 221
        c.expect_closed()
    assert backend.wait_messages(1)[0].content == msg


def test_sink_backend_direct(sink):
    msg = make_message(1024)
    with smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
        c.ehlo("direct.test")
        c.sendmail("a@example.org", ["b@example.org", "c@example.org"], msg)
    (m,) = sink.wait_messages(1)
    assert m.content == msg.replace(b"\r\n", b"\n")
    assert m.mail_from.startswith("<a@example.org>")
    assert m.rcpt_tos == ["<b@example.org>", "<c@example.org>"]
    assert m.helo == "direct.test"


@pytest.mark.parametrize("behaviour", ["greet_close", "garbage",
                                       "refuse_greeting", "silent"])
def test_scripted_backend_greeting(scripted, behaviour):
    b = scripted(behaviour)
    with net.connect(b.host, b.port, timeout=2) as s:
        try:
            data = s.recv(100)
        except TimeoutError:
            data = None
    expected = {"greet_close": b"220 ", "garbage": b"HELLO",
                "refuse_greeting": b"554 ", "silent": None}[behaviour]
    if expected is None:
        assert data is None
    else:
        assert data.startswith(expected)


def test_scripted_backend_close_after_mail(scripted):
    b = scripted("close_after_mail")
    with smtp.RawSmtp(b.host, b.port) as c:
        assert c.greeting().code == 220
        c.ehlo()
        c.send("MAIL FROM:<a@example.org>\r\n")
        c.expect_closed()
    assert b"MAIL FROM:<a@example.org>" in b.received[0]


def test_conf_placeholders(tmp_path, backend, users):
    text = gatelib.conf(backend=backend,
                        listen=("127.0.0.1:@PORT@", "127.0.0.1:@PORT2@"))
    g = gatelib.Smtpgate(tmp_path, text, users_text=users[1])
    assert "@" not in g.conf_text
    assert g.port != g.ports["PORT2"]
    assert g.listen_addresses() == [("127.0.0.1", g.port),
                                    ("127.0.0.1", g.ports["PORT2"])]
    assert f"proxy_pass 127.0.0.1:{backend.port};" in g.conf_text
    assert os.path.exists(os.path.join(g.confdir, "users"))
    assert os.path.isdir(g.logdir)


def test_log_scanner(tmp_path, backend):
    g = gatelib.Smtpgate(tmp_path, gatelib.conf(backend=backend))
    with open(g.error_log_path, "w") as f:
        f.write("2024/01/01 00:00:00 [notice] 1#1: start worker process 2\n"
                "2024/01/01 00:00:01 [alert] 1#1: worker process 2 exited "
                "on signal 9\n")
    report = os.path.join(g.root, "sanitizer", "report.123")
    os.makedirs(os.path.dirname(report), exist_ok=True)
    with open(report, "w") as f:
        f.write("==123==ERROR: AddressSanitizer: heap-use-after-free\n")
    problems = g.problems()
    assert len(problems) == 2, problems
    g.allow(r"worker process \d+ exited on signal 9")
    os.unlink(report)
    assert g.problems() == []
