"""Defences against abusive clients: the greeting delay and early
talkers, the cap on failed AUTH attempts, the growing delay before a
535, the deadline for a slow authentication backend, the per-command
`timeout`, and how max_errors counts failed AUTH.

Timing is only ever checked from below ("not answered before ~0.8s when
the delay is 1s") or against a deadline many times the configured one.
"""

import re
import select
import socket
import subprocess
import time

import pytest

from lib import gate as gatelib
from lib import pki as pkilib
from lib import smtp
from lib.pki import TlsSmtp, tls_conf
from lib.smtp import b64, plain_token
from lib.users import password

OK = b"235 2.7.0 Authentication successful\r\n"
INVALID = b"535 5.7.8 Authentication credentials invalid\r\n"
TOO_MANY_FAILURES = (b"421 4.7.0 Too many failed authentication attempts, "
                     b"closing connection\r\n")
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
EARLY = b"503 5.5.0 Talking before the greeting is not allowed\r\n"
TEMPFAIL = b"454 4.7.0 Temporary authentication failure\r\n"
TIMEOUT = b"421 4.4.2 mx.test Error: timeout exceeded\r\n"

# A delay of 1s is checked against 0.8s: early enough to allow for a
# coarse timer, late enough to tell "delayed" from "not delayed".
DELAY_FLOOR = 0.8


def bad_plain(user="dave", n=1):
    return f"AUTH PLAIN {plain_token(user, f'wrong-{n}')}"


def good_plain(user="dave"):
    return f"AUTH PLAIN {plain_token(user, password(user))}"


def assert_silent(c, what):
    """Nothing is waiting to be read on the connection right now."""
    readable, _, _ = select.select([c.sock], [], [], 0)
    assert not readable and c.buf == b"", f"{what}: got {c.buf!r} " \
        f"(readable: {bool(readable)})"


# -- smtp_greeting_delay ------------------------------------------------------


@pytest.fixture
def delayed_gate(smtpgate, backend):
    return smtpgate(gatelib.conf(backend=backend,
                                 mail="    smtp_greeting_delay 1s;"))


@pytest.mark.parametrize("when", [0, 0.3], ids=["at-once", "after-0.3s"])
def test_early_talker_is_refused(delayed_gate, backend, when):
    """A line sent before the greeting gets the 503 and the connection
    closes; no 220 is ever sent."""
    mark = delayed_gate.log_mark()
    with delayed_gate.connect(timeout=30) as c:
        if when:
            time.sleep(when)
        c.send(b"EHLO spammer.test\r\n" + good_plain().encode() + b"\r\n")
        replies = c.read_until_closed()
        assert [r.raw for r in replies] == [EARLY], replies
    delayed_gate.wait_log(r"\[info\] .*client talked before the greeting "
                          r"\(smtp_greeting_delay\), closing", since=mark)
    assert backend.commands == []


def test_patient_client_is_greeted_after_the_delay(delayed_gate, backend):
    with delayed_gate.connect(timeout=30) as c:
        start = time.monotonic()
        r = c.greeting()
        waited = time.monotonic() - start
        assert r.raw == b"220 mx.test ESMTP ready\r\n"
        assert waited >= DELAY_FLOOR, f"greeted after {waited:.2f}s"
        c.ehlo()
        assert c.cmd(good_plain()).raw == OK
        assert c.mail("a@example.org", ["b@example.org"],
                      b"Subject: patient\r\n\r\nx\r\n").code == 250
    backend.wait_messages(1)


def test_client_leaving_during_the_delay(delayed_gate):
    """A client that connects and leaves before the greeting is only
    logged; the next one is served."""
    mark = delayed_gate.log_mark()
    c = delayed_gate.connect(timeout=30)
    c.close()
    delayed_gate.wait_log(r"session closed, 0 bytes in, 0 bytes out",
                          since=mark)
    with delayed_gate.session() as c:
        assert c.expect("NOOP", 250)


@pytest.mark.skipif(not pkilib.tls_built(), reason="built without TLS")
def test_early_talker_inside_implicit_tls(smtpgate, backend):
    """On an `ssl` listener the delay starts after the handshake, and a
    client talking inside TLS before the greeting is refused too."""
    pki = pkilib.shared()
    g = smtpgate(tls_conf(pki, backend, mail="    smtp_greeting_delay 1s;"))
    c = TlsSmtp.implicit("127.0.0.1", g.ports["PORTS"], pki.client_context(),
                         "mx.test", timeout=30)
    with c:
        c.send(b"EHLO spammer.test\r\n")
        assert [r.raw for r in c.read_until_closed()] == [EARLY]
    c = TlsSmtp.implicit("127.0.0.1", g.ports["PORTS"], pki.client_context(),
                         "mx.test", timeout=30)
    with c:
        start = time.monotonic()
        assert c.greeting().code == 220
        assert time.monotonic() - start >= DELAY_FLOOR
        c.ehlo()
        assert c.cmd(good_plain()).raw == OK


# -- smtp_auth_attempts -------------------------------------------------------


def test_auth_attempts_cap(smtpgate, backend):
    """smtp_auth_attempts 2: the second failure is answered 535, then 421,
    then the connection closes."""
    g = smtpgate(gatelib.conf(backend=backend, mail="    smtp_auth_attempts 2;"
                              "\n    smtp_auth_fail_delay 0;"))
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        assert c.cmd(bad_plain(n=1)).raw == INVALID
        assert c.expect("NOOP", 250)
        c.send(bad_plain(n=2) + "\r\n")
        assert [r.raw for r in c.read_until_closed()] == [INVALID,
                                                          TOO_MANY_FAILURES]
    g.wait_log(r"\[info\] .*2 failed AUTH attempts, closing "
               r"\(smtp_auth_attempts\)", since=mark)
    assert backend.commands == []


def test_auth_attempts_default_is_three_across_mechanisms(smtpgate, backend):
    """By default the third failure closes the session, whichever
    mechanisms failed; commands pipelined behind it are not answered."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    smtp_auth plain login cram-md5;\n"
        "    smtp_auth_fail_delay 0;")))
    with g.session() as c:
        c.ehlo()
        assert c.cmd(bad_plain("alice")).raw == INVALID
        assert c.auth_login("bob", "wrong-login").raw == INVALID
        assert c.expect("NOOP", 250)
        assert c.cmd("AUTH CRAM-MD5").code == 334
        c.send(b64("carol 0123456789abcdef0123456789abcdef") + "\r\n"
               + good_plain() + "\r\nNOOP\r\n")
        assert [r.raw for r in c.read_until_closed()] == [INVALID,
                                                          TOO_MANY_FAILURES]
    assert backend.commands == []


def test_auth_attempts_count_per_session(smtpgate, backend):
    """The cap is per connection: a new one starts from zero."""
    g = smtpgate(gatelib.conf(backend=backend, mail="    smtp_auth_attempts 1;"
                              "\n    smtp_auth_fail_delay 0;"))
    for _ in range(2):
        with g.session() as c:
            c.ehlo()
            c.send(bad_plain() + "\r\n")
            assert [r.raw for r in c.read_until_closed()] == [
                INVALID, TOO_MANY_FAILURES]
    with g.session() as c:
        c.ehlo()
        assert c.cmd(good_plain()).raw == OK


# -- smtp_auth_fail_delay -----------------------------------------------------


def test_auth_fail_delay_grows_and_keeps_order(smtpgate, backend):
    """smtp_auth_fail_delay 1s: the first 535 comes after 1s, the second
    after 2s; commands pipelined behind a failed AUTH are answered after
    its 535, in order; other sessions are served meanwhile."""
    g = smtpgate(gatelib.conf(backend=backend,
                              mail="    smtp_auth_fail_delay 1s;"))
    with g.session() as c:
        c.ehlo()
        start = time.monotonic()
        c.send(bad_plain(n=1) + "\r\nNOOP\r\nHELP\r\nRSET\r\n")
        first = c.reply()
        waited = time.monotonic() - start
        assert first.raw == INVALID
        assert waited >= DELAY_FLOOR, f"535 after {waited:.2f}s"
        rest = c.replies(3)
        assert [r.code for r in rest] == [250, 214, 250], rest

        start = time.monotonic()
        c.send(bad_plain(n=2) + "\r\n" + good_plain() + "\r\n"
               "MAIL FROM:<a@example.org>\r\n")
        # Meanwhile another client is served from start to finish.
        with g.session() as other:
            other.ehlo()
            assert other.cmd(good_plain("carol")).raw == OK
        assert_silent(c, "second 535 while another session was served")
        second = c.reply()
        waited = time.monotonic() - start
        assert second.raw == INVALID
        assert waited >= 2 * DELAY_FLOOR, f"second 535 after {waited:.2f}s"
        r1, r2 = c.replies(2)
        assert r1.raw == OK
        assert (r2.code, r2.last) == (250, "2.1.0 Sender OK")


def test_auth_fail_delay_does_not_delay_success(smtpgate, backend):
    """Only failures wait: with a long delay a right password is still
    answered well before it."""
    g = smtpgate(gatelib.conf(backend=backend,
                              mail="    smtp_auth_fail_delay 60s;"))
    with g.session(timeout=30) as c:
        c.ehlo()
        assert c.cmd(good_plain()).raw == OK


# -- smtp_auth_timeout --------------------------------------------------------


@pytest.fixture(scope="module")
def slow_hash():
    """A bcrypt hash with cost 18, which takes crypt(3) many seconds to
    check: a cheap hash with its cost field raised (the password it was
    made for no longer matches, which does not matter here)."""
    p = subprocess.run(["mkpasswd", "-m", "bcrypt", "unused"],
                       capture_output=True, text=True, timeout=60)
    m = re.fullmatch(r"\$2b\$[0-9]{2}\$([./A-Za-z0-9]{53})", p.stdout.strip())
    assert p.returncode == 0 and m, p
    return "$2b$18$" + m.group(1)


def test_auth_timeout_on_slow_backend(smtpgate, backend, slow_hash):
    """smtp_auth_timeout 1s with a backend still hashing: 454 after ~1s,
    an error-log line, and the session goes on (the pool's other thread
    checks the next AUTH)."""
    users = (f"slow:{slow_hash}\n"
             f"dave:{{PLAIN}}{password('dave')}\n")
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    smtp_auth_timeout 1s;\n"
        "    smtp_auth_fail_delay 0;")), users_text=users)
    mark = g.log_mark()
    with g.session() as c:
        c.ehlo()
        start = time.monotonic()
        c.send(bad_plain("slow") + "\r\nNOOP\r\n")
        r = c.reply()
        waited = time.monotonic() - start
        assert r.raw == TEMPFAIL
        assert waited >= DELAY_FLOOR, f"454 after {waited:.2f}s"
        assert c.reply().raw == b"250 2.0.0 OK\r\n"
        assert c.cmd(good_plain()).raw == OK
    g.wait_log(r'\[error\] .*authentication backend "auth_file" gave no '
               r'answer for "slow" within smtp_auth_timeout', since=mark)


@pytest.mark.parametrize("directive,value,why", [
    ("smtp_auth_timeout", "0", "between 1 and 86400000"),
    ("smtp_auth_timeout", "25h", "between 1 and 86400000"),
    ("smtp_auth_attempts", "0", "between 1 and 100"),
    ("smtp_auth_attempts", "101", "between 1 and 100"),
    ("smtp_auth_fail_delay", "61m", "between 0 and 3600000"),
    ("smtp_greeting_delay", "3601s", "between 0 and 3600000"),
    ("smtp_greeting_delay", "-1s", None),
])
def test_limits_out_of_bounds(tmp_path, backend, directive, value, why):
    g = gatelib.Smtpgate(tmp_path / "g", gatelib.conf(
        backend=backend, mail=f"    {directive} {value};"),
        users_text=f"dave:{{PLAIN}}{password('dave')}\n")
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    message = f'invalid value "{value}" in "{directive}" directive'
    assert message in r.stderr, r.stderr
    if why:
        assert f"it must be {why}" in r.stderr, r.stderr


def test_limits_at_their_bounds(tmp_path, backend):
    g = gatelib.Smtpgate(tmp_path / "g", gatelib.conf(backend=backend, mail=(
        "    smtp_auth_timeout 1ms;\n"
        "    smtp_auth_attempts 1;\n"
        "    smtp_auth_fail_delay 0;\n"
        "    smtp_greeting_delay 0;"), server=(
        "        smtp_auth_timeout 24h;\n"
        "        smtp_auth_attempts 100;\n"
        "        smtp_auth_fail_delay 1h;\n"
        "        smtp_greeting_delay 3600s;")),
        users_text=f"dave:{{PLAIN}}{password('dave')}\n")
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr


# -- timeout: a deadline per command line -------------------------------------


@pytest.fixture
def short_timeout_gate(smtpgate, backend):
    return smtpgate(gatelib.conf(backend=backend, timeout="2s"))


def test_trickling_client_is_cut_off(short_timeout_gate):
    """One byte every 0.5s and never a whole line: a per-byte idle timer
    would wait forever; the per-line deadline ends it after ~2s."""
    limit = 30                       # 15s, far beyond the 2s deadline
    with short_timeout_gate.session(timeout=30) as c:
        c.ehlo()
        c.sock.settimeout(0.5)
        start = time.monotonic()
        got, closed = b"", False
        for i in range(limit):
            try:
                c.sock.sendall(b"N" if i == 0 else b"O")
            except OSError:
                closed = True
                break
            try:
                chunk = c.sock.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
        elapsed = time.monotonic() - start
        assert closed, (f"still open after {limit} bytes over "
                        f"{elapsed:.1f}s; got {got!r}")
        if got:
            assert got == TIMEOUT, got
        assert elapsed >= 1.5, f"cut off after {elapsed:.2f}s"


def test_client_completing_lines_keeps_going(short_timeout_gate):
    """A NOOP every 0.8s for over 5s: each line is a new deadline."""
    with short_timeout_gate.session(timeout=30) as c:
        c.ehlo()
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 5.5:
            time.sleep(0.8)
            assert c.cmd("NOOP").raw == b"250 2.0.0 OK\r\n", n
            n += 1
        # A line sent in two halves, each well within the deadline.
        c.send(b"NO")
        time.sleep(0.8)
        c.send(b"OP\r\n")
        assert c.reply().raw == b"250 2.0.0 OK\r\n"
        assert c.cmd("QUIT").raw == b"221 2.0.0 Bye\r\n"


@pytest.mark.time_limit(240)
def test_client_not_reading_replies_is_cut_off(short_timeout_gate):
    """A client that lets the replies back up and never reads them is
    disconnected once "timeout" passes, however often it sends more."""
    g = short_timeout_gate
    mark = g.log_mark()
    with g.session(timeout=60, rcvbuf=4096) as c:
        smtp.back_up_replies(c)
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.monotonic()
        while time.monotonic() - start < 20:      # ten times the deadline
            if "while we were sending" in g.log_since(mark):
                break
            try:
                c.sock.send(b"N")
            except OSError:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - start
    g.wait_log(r"\[info\] .*client timed out while we were sending replies",
               since=mark, timeout=1)
    assert elapsed < 20, elapsed


# -- max_errors and failed AUTH -----------------------------------------------


def test_failed_auth_counts_toward_max_errors(smtpgate, backend):
    """max_errors 3 with a higher smtp_auth_attempts: an unknown command
    and two failed AUTHs make three errors."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    max_errors 3;\n"
        "    smtp_auth_attempts 10;\n"
        "    smtp_auth_fail_delay 0;")))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("XYZZY").code == 500
        assert c.cmd(bad_plain(n=1)).raw == INVALID
        c.send(bad_plain(n=2) + "\r\nNOOP\r\n")
        assert [r.raw for r in c.read_until_closed()] == [INVALID,
                                                          TOO_MANY_ERRORS]
    assert backend.commands == []


def test_both_limits_at_once_close_once(smtpgate, backend):
    """When a failure reaches max_errors and smtp_auth_attempts together,
    the client gets one 421, not two."""
    g = smtpgate(gatelib.conf(backend=backend, mail=(
        "    max_errors 2;\n"
        "    smtp_auth_attempts 2;\n"
        "    smtp_auth_fail_delay 0;")))
    with g.session() as c:
        c.ehlo()
        assert c.cmd(bad_plain(n=1)).raw == INVALID
        c.send(bad_plain(n=2) + "\r\n")
        replies = c.read_until_closed()
        assert [r.code for r in replies] == [535, 421], replies
        assert replies[1].raw in (TOO_MANY_ERRORS, TOO_MANY_FAILURES)
