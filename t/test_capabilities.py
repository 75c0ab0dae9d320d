"""Extensions that only the backend can keep (CHUNKING, DSN) are
advertised before AUTH only once a backend handshake showed them."""
from lib import gate as gatelib
from lib import smtp
from lib.users import password


def caps_conf(backend):
    return gatelib.conf(backend=backend, mail=(
        "    smtp_capabilities 8BITMIME DSN CHUNKING \"SIZE 10485760\";\n"))


def keywords(g):
    with g.session() as c:
        return smtp.ehlo_keywords(c.ehlo())


def relay_once(g):
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", password("alice")).code == 235
        assert c.cmd("QUIT").code == 221


def test_gated_extensions_wait_for_a_backend_that_has_them(smtpgate, sink):
    """smtp-sink offers DSN but not CHUNKING: after one relayed session
    DSN is advertised, CHUNKING never; the others all along."""
    g = smtpgate(caps_conf(sink))
    before = keywords(g)
    assert "8BITMIME" in before and "SIZE" in before
    assert "DSN" not in before and "CHUNKING" not in before
    relay_once(g)
    after = keywords(g)
    assert "DSN" in after
    assert "CHUNKING" not in after
    assert "8BITMIME" in after and "SIZE" in after


def test_gated_extensions_stay_off_for_a_backend_without_them(smtpgate,
                                                              backend):
    """aiosmtpd offers neither DSN nor CHUNKING."""
    g = smtpgate(caps_conf(backend))
    relay_once(g)
    after = keywords(g)
    assert "DSN" not in after and "CHUNKING" not in after
    assert "8BITMIME" in after
