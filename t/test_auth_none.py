"""smtp_auth none: anonymous sessions decided at the first RCPT, the
envelope replayed to the backend, SIZE checked, and no way around
"starttls only"."""
import pytest

from lib import gate as gatelib
from lib import pki as pkilib


@pytest.fixture(scope="session")
def pki():
    return pkilib.shared()


def none_conf(backend, mail="", **kw):
    return gatelib.conf(backend=backend, mail="    smtp_auth none plain;\n"
                        "    smtp_auth_fail_delay 0;\n" + mail, **kw)


def test_anonymous_message_reaches_backend_with_replayed_envelope(
        smtpgate, backend):
    """MAIL is answered locally, RCPT by the backend after the replay,
    and the message arrives with the client's envelope."""
    g = smtpgate(none_conf(backend))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<anon@example.org>").raw == \
            b"250 2.1.0 OK\r\n"
        r = c.cmd("RCPT TO:<rcpt@example.net>")
        assert r.raw == b"250 2.1.5 Recipient OK\r\n", r
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: anonymous\r\n\r\nhello\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    msg = backend.wait_messages(1)[0]
    assert msg.mail_from == "anon@example.org"
    assert msg.rcpt_tos == ["rcpt@example.net"]
    assert b"Subject: anonymous" in msg.content
    assert backend.seen("MAIL") == ["anon@example.org"]
    assert "anonymous session accepted" in g.error_log()


def test_anonymous_transaction_pipelined(smtpgate, backend):
    """EHLO, MAIL, RCPT, DATA and the message in one packet: replies in
    order, the message delivered once."""
    g = smtpgate(none_conf(backend))
    with g.session() as c:
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n"
               b"RCPT TO:<b@example.net>\r\nDATA\r\n")
        assert c.reply().code == 250                    # EHLO
        assert c.reply().raw == b"250 2.1.0 OK\r\n"     # MAIL (local)
        assert c.reply().code == 250                    # RCPT (backend)
        assert c.reply().code == 354
        c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert c.reply().code == 250
        assert c.reply().code == 221
    assert len(backend.wait_messages(1)) == 1


def test_anonymous_sequence_errors(smtpgate, backend):
    g = smtpgate(none_conf(backend))
    with g.session() as c:
        assert c.cmd("MAIL FROM:<a@b>").code == 503      # before EHLO
        c.ehlo()
        assert c.cmd("RCPT TO:<a@b>").raw == \
            b"503 5.5.1 Need MAIL command first\r\n"
        assert c.cmd("DATA").raw == b"503 5.5.1 Need MAIL command first\r\n"
        assert c.cmd("MAIL FROM:a@b").raw == \
            b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
        assert c.cmd("MAIL FROM:<a@b>").code == 250
        assert c.cmd("MAIL FROM:<a@b>").raw == \
            b"503 5.5.1 Sender already specified\r\n"


def test_declared_size_over_the_advertised_limit(smtpgate, backend):
    g = smtpgate(none_conf(backend,
                           mail='    smtp_capabilities "SIZE 1000";\n'))
    with g.session() as c:
        r = c.ehlo()
        assert "SIZE 1000" in r.lines
        assert c.cmd("MAIL FROM:<a@b> SIZE=1001").raw == \
            b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        assert c.cmd("MAIL FROM:<a@b> SIZE=1000").code == 250


def test_rset_forgets_the_sender(smtpgate, backend):
    g = smtpgate(none_conf(backend))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("RCPT TO:<c@d>").code == 503


def test_auth_during_anonymous_transaction_is_refused(smtpgate, backend):
    """RFC 4954 4: AUTH inside a mail transaction gets 503.  Taking it
    would relay the anonymous MAIL with no RCPT kept to replay, and the
    replies would no longer match the commands."""
    from lib.smtp import plain_token
    from lib.users import password
    g = smtpgate(none_conf(backend))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<anon@example.org>").code == 250
        assert c.cmd("AUTH PLAIN " + plain_token("alice", password("alice"))
                     ).raw == (b"503 5.5.1 AUTH not permitted during a mail "
                               b"transaction\r\n")
        assert c.cmd("RSET").code == 250
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<rcpt@example.net>").raw == \
            b"250 2.1.5 Recipient OK\r\n"
        assert c.cmd("QUIT").code == 221
    assert backend.seen("MAIL") == ["alice@example.org"]


def test_without_none_transaction_needs_auth(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend))
    with g.session() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b>").raw == \
            b"530 5.7.0 Authentication required\r\n"


def test_starttls_only_is_not_bypassed_by_none(smtpgate, backend, pki):
    """With "starttls only" and "smtp_auth none", MAIL and RCPT before
    TLS are refused: nothing reaches the backend in plaintext."""
    mail = (f"    ssl_certificate {pki.cert('mx.test')};\n"
            f"    ssl_certificate_key {pki.key('mx.test')};\n"
            "    starttls only;\n")
    g = smtpgate(none_conf(backend, mail=mail))
    with g.session() as c:
        r = c.ehlo()
        assert "STARTTLS" in r.lines
        for line in ("MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA",
                     "AUTH PLAIN AGFsaWNlAHg="):
            assert c.cmd(line).raw == \
                b"530 5.7.0 Must issue a STARTTLS command first\r\n", line
        assert c.cmd("NOOP").code == 250
    assert backend.seen("MAIL") == []
