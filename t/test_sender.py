"""smtp_sender_allow: which senders a login may use, as Postfix's
reject_sender_login_mismatch.  The check is a map of $auth_user and
$mail_from; a MAIL it says no to gets 553 5.7.1 from smtpgate and never
reaches the backend, and the relay reads such sessions strictly, so
neither a bare LF nor an odd spelling of the command slips a sender past
it.  Raw clients against aiosmtpd, and the spool."""

import json
import os

import pytest

from lib import gate as gatelib
from lib import net
from lib.users import password
from test_access_log import read_lines

REFUSED = "553 5.7.1 Sender address rejected: not owned by the login"

# The login itself (any case), an alias of alice's, and the null sender.
SENDER_MAP = r"""    map $auth_user:$mail_from $sender_ok {
        ~*^([^:]+):\1$                          1;
        alice:alias@example.org                 1;
        ~^[^:]+:$                               1;
        default                                 0;
    }
"""


def sender_conf(backend=None, allow="smtp_sender_allow $sender_ok;",
                extra="", **kw):
    return gatelib.conf(backend=backend,
                        mail=SENDER_MAP + f"    {allow}\n" + extra, **kw)


def _login(g, user="alice"):
    c = g.session()
    c.ehlo()
    assert c.auth_plain(user, password(user)).code == 235
    return c


def test_own_and_allowed_senders_pass_others_are_refused(smtpgate,
                                                         backend):
    g = smtpgate(sender_conf(backend))
    mark = g.log_mark()
    with _login(g) as c:
        # the login is the address here only for "alice" the test user,
        # so the alias and the null sender are what alice may use
        assert c.cmd("MAIL FROM:<alias@example.org>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<>").code == 250
        assert c.cmd("RSET").code == 250
        c.send(b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<b@example.org>\r\n"
               b"DATA\r\nNOOP\r\n")
        got = c.replies(4)
        assert got[0].raw.decode().rstrip() == REFUSED
        assert [r.code for r in got[1:]] == [503, 503, 250]
        assert c.cmd("QUIT").code == 221
    assert backend.seen("MAIL") == ["alias@example.org", "<>"]
    g.wait_log(r'sender "ceo@example.org" refused for this login '
               r'\(smtp_sender_allow at \S+smtpgate.conf:\d+\)', since=mark)
    g.wait_log(r'answered "553" to a MAIL whose sender is not allowed',
               since=mark)


def test_a_login_that_is_an_address(smtpgate, backend, users):
    """Users named by their address may send as themselves, in any case
    (the map's ~*), and as nobody else."""
    text = users[1]
    line = [l for l in text.splitlines() if l.startswith("alice:")][0]
    text += "bob@example.org:" + line.split(":", 1)[1] + "\n"
    g = smtpgate(sender_conf(backend), users_text=text)
    c = g.session()
    c.ehlo()
    assert c.auth_plain("bob@example.org", password("alice")).code == 235
    with c:
        assert c.cmd("MAIL FROM:<Bob@Example.ORG>").code == 250
        assert c.cmd("RSET").code == 250
        r = c.cmd("MAIL FROM:<bob@example.org.evil.test>")
        assert r.raw.decode().rstrip() == REFUSED
        assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("line,code", [
    (b"MAIL FROM:<ceo@example.org>\n", 553),          # bare LF
    (b"mail from:<ceo@example.org>\r\n", 553),        # lower case
    (b"MAIL FROM: <ceo@example.org>\r\n", 553),       # blank before <
    (b"MAIL FROM:<ceo@example.org> SIZE=10\r\n", 553),
    (b"MAIL FROM:<@relay.test:ceo@example.org>\r\n", 553),  # route
    (b"MAIL FROM:ceo@example.org\r\n", 501),          # no brackets
    (b"MAIL FROM:<ceo@example.org\r\n", 501),
    (b"MAIL\r\n", 501),
    (b"MAIL FROM:<alias@example.org\x00>\r\n", 501),
], ids=["bare-lf", "lower", "blank", "param", "route", "unbracketed",
        "unclosed", "bare", "nul"])
def test_no_spelling_slips_past(smtpgate, backend, line, code):
    """Whatever the backend would read as a sender is read here first:
    a MAIL smtpgate cannot read is refused (501), not passed on for the
    backend to read its own way."""
    g = smtpgate(sender_conf(backend))
    with _login(g) as c:
        c.send(line)
        r = c.reply()
        assert r.code == code, r
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    assert backend.seen("MAIL") == []


def test_through_the_spool(smtpgate):
    g = smtpgate(sender_conf(spool="spool"))
    with _login(g) as c:
        r = c.cmd("MAIL FROM:<ceo@example.org>")
        assert r.raw.decode().rstrip() == REFUSED
        assert c.cmd("MAIL FROM:<alias@example.org>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: s\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    assert len(os.listdir(os.path.join(g.prefix, "spool", "new"))) == 1


def test_rate_limits_by_sender(smtpgate, backend):
    """$mail_from keys a rate limit too: one message an hour per
    sender, whoever logs in; a refused sender costs no token."""
    g = smtpgate(sender_conf(
        backend, extra="    limit_message_zone $mail_from zone=s:1m "
                       "rate=1/h;\n    limit_message zone=s;\n"))
    with _login(g) as c:
        assert c.cmd("MAIL FROM:<ceo@example.org>").code == 553
        assert c.cmd("MAIL FROM:<alias@example.org>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<alias@example.org>").code == 450
        assert c.cmd("MAIL FROM:<>").code == 250   # empty key: not counted
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<>").code == 250


def test_counted_and_logged(smtpgate, backend):
    g = smtpgate(sender_conf(
        backend,
        extra="    status_listen 127.0.0.1:@PORTS@;\n"
              "    log_format s escape=json '{\"user\":\"$auth_user\","
              "\"from\":\"$mail_from\"}';\n"
              "    access_log logs/access.log s flush=100ms;\n"))
    from test_status import wait_counter
    with _login(g) as c:
        assert c.cmd("MAIL FROM:<ceo@example.org>").code == 553
        assert c.cmd("MAIL FROM:<x@example.org>").code == 553
        assert c.cmd("QUIT").code == 221
    _, srv = wait_counter(g, "smtpgate_senders_refused_total", 2)
    assert srv["senders_refused"] == 2

    def line():
        mine = [json.loads(l) for l in read_lines(g, partial=True)
                if '"user":"alice"' in l]
        return mine[0] if mine else None
    assert net.wait_until(line, 10, what="the line") == \
        {"user": "alice", "from": "x@example.org"}


def test_config(smtpgate, backend):
    g = smtpgate(sender_conf(backend, allow="smtp_sender_allow 1;"),
                 start=False)
    r = g.ctl("-t")
    assert r.returncode == 1
    assert 'smtp_sender_allow "1" has no variable' in r.stderr, r.stderr
    assert f"{g.conf_path}:" in r.stderr


def test_swaks_and_msmtp(smtpgate, backend, tmp_path):
    """Real clients: swaks sending as alice's alias gets through, as
    someone else it is told 553 and gives up; msmtp the same."""
    import subprocess
    g = smtpgate(sender_conf(backend))

    def swaks(sender):
        return subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{g.port}", "--auth", "PLAIN",
             "--auth-user", "alice", "--auth-password", password("alice"),
             "--from", sender, "--to", "x@example.org", "--timeout", "60"],
            capture_output=True, text=True, timeout=90)
    p = swaks("alias@example.org")
    assert p.returncode == 0, p.stdout + p.stderr
    p = swaks("ceo@example.org")
    assert p.returncode != 0
    assert "553 5.7.1 Sender address rejected: not owned by the login" \
        in p.stdout + p.stderr
    conf = tmp_path / "msmtprc"
    conf.write_text(f"account default\nhost 127.0.0.1\nport {g.port}\n"
                    "auth plain\nuser alice\n"
                    f"password {password('alice')}\ntls off\n"
                    "from ceo@example.org\n")
    conf.chmod(0o600)
    p = subprocess.run(["msmtp", "-C", str(conf), "x@example.org"],
                       input="Subject: m\n\nmsmtp\n", capture_output=True,
                       text=True, timeout=90)
    assert p.returncode != 0
    assert "553" in p.stderr and "not owned by the login" in p.stderr, \
        p.stderr
    (m,) = backend.wait_messages(1)
    assert m.mail_from == "alias@example.org"
