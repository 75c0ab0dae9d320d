"""auth_fail_limit: failures counted per address and per user in shared
memory, across workers and connections; past the limit AUTH is refused
with a 454 without asking the backend, and the refusal is logged once."""
from lib import gate as gatelib
from lib.smtp import plain_token
from lib.users import password


def limit_conf(backend, limit, workers=2):
    return gatelib.conf(backend=backend, workers=workers, mail=(
        f"    auth_fail_limit {limit};\n"
        "    smtp_auth_fail_delay 0;\n"
        "    smtp_auth_attempts 100;\n"
        "    max_errors 100;\n"))


def attempt(g, user, secret):
    with g.session() as c:
        c.ehlo()
        return c.cmd(f"AUTH PLAIN {plain_token(user, secret)}")


def test_user_limit_across_connections_and_workers(smtpgate, backend):
    """Two failures for alice, over separate connections (two workers):
    the third attempt, even with the right password, gets 454, and the
    log says so once."""
    g = smtpgate(limit_conf(backend, "zone=af:64k user=2 address=0"))
    assert attempt(g, "alice", "wrong").code == 535
    assert attempt(g, "alice", "wrong").code == 535
    for _ in range(3):
        r = attempt(g, "alice", password("alice"))
        assert r.raw == (b"454 4.7.0 Too many failed authentication "
                         b"attempts, try again later\r\n"), r
    log = g.error_log()
    assert log.count("too many failed AUTH attempts for this user") == 1
    # another user from the same address is not affected
    assert attempt(g, "bob", password("bob")).code == 235


def test_address_limit(smtpgate, backend):
    g = smtpgate(limit_conf(backend, "zone=af:64k address=3 user=0"))
    for user in ("alice", "bob", "carol"):
        assert attempt(g, user, "wrong").code == 535
    r = attempt(g, "bob", password("bob"))
    assert r.code == 454, r
    assert "for this address" in g.error_log()


def test_success_clears_the_user_count(smtpgate, backend):
    g = smtpgate(limit_conf(backend, "zone=af:64k user=2 address=0"))
    assert attempt(g, "alice", "wrong").code == 535
    assert attempt(g, "alice", password("alice")).code == 235
    assert attempt(g, "alice", "wrong").code == 535
    assert attempt(g, "alice", password("alice")).code == 235


def test_window_expires(smtpgate, backend):
    import time
    g = smtpgate(limit_conf(backend, "zone=af:64k user=1 address=0 "
                                     "window=2s"))
    assert attempt(g, "alice", "wrong").code == 535
    assert attempt(g, "alice", password("alice")).code == 454
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if attempt(g, "alice", password("alice")).code == 235:
            return
    raise AssertionError("the window never expired")


def test_bad_auth_fail_limit_is_a_config_error(smtpgate, backend):
    for bad in ("address=3", "zone=af", "zone=af:1k", "zone=af:64k user=x",
                "zone=af:64k window=0", "zone=af:64k colour=red"):
        g = smtpgate(limit_conf(backend, bad), start=False)
        r = g.ctl("-t")
        assert r.returncode == 1, (bad, r.stderr)
        assert "auth_fail_limit" in r.stderr, (bad, r.stderr)
