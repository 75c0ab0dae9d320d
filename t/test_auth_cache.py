"""auth_cache: answers of the authentication backend kept in shared
memory, so a client logging in again does not reach the backend; the
key never holds the password; emptied on reload."""
import time

from lib import gate as gatelib
from lib.smtp import plain_token
from lib.users import password


def cache_conf(backend, cache, workers=2):
    return gatelib.conf(backend=backend, workers=workers, level="debug",
                        mail=f"    auth_cache {cache};\n"
                             "    smtp_auth_fail_delay 0;\n")


def login(g, user, secret, port=None):
    """AUTH PLAIN on g (at port, or its first address): the reply code."""
    with g.connect(port=port) as c:
        assert c.greeting().code == 220
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {plain_token(user, secret)}")
        if r.code == 235:
            c.cmd("QUIT")
        return r.code


def test_second_login_is_answered_from_the_cache(smtpgate, backend):
    """The users file is the backend here: the second login of alice is
    answered from the cache, then relayed as usual."""
    g = smtpgate(cache_conf(backend, "zone=ac:1m ttl=60s"))
    assert login(g, "alice", password("alice")) == 235
    for _ in range(4):
        assert login(g, "alice", password("alice")) == 235
    log = g.error_log()
    assert log.count("sent to the auth_file backend") == 1, log
    assert log.count("answered from auth_cache") == 4, log
    assert password("alice") not in log


def test_wrong_password_is_not_a_hit_for_the_right_one(smtpgate, backend):
    g = smtpgate(cache_conf(backend, "zone=ac:1m ttl=60s negative_ttl=60s"))
    assert login(g, "alice", "wrong") == 535
    assert login(g, "alice", "wrong") == 535            # cached refusal
    assert login(g, "alice", password("alice")) == 235  # a different key
    log = g.error_log()
    assert log.count("answered from auth_cache") == 1, log


def test_negative_ttl_expires(smtpgate, backend):
    g = smtpgate(cache_conf(backend, "zone=ac:1m negative_ttl=1s"))
    assert login(g, "alice", "wrong") == 535
    time.sleep(2.2)
    assert login(g, "alice", "wrong") == 535
    assert g.error_log().count("sent to the auth_file backend") == 2


def test_reload_empties_the_cache_and_logs_the_counts(smtpgate, backend):
    conf = cache_conf(backend, "zone=ac:1m ttl=60s")
    g = smtpgate(conf)
    assert login(g, "alice", password("alice")) == 235
    assert login(g, "alice", password("alice")) == 235
    g.reload(conf + "\n# changed\n")
    deadline = time.monotonic() + 30
    while "auth_cache \"ac\": 1 hits" not in g.error_log():
        assert time.monotonic() < deadline, g.error_log()
        time.sleep(0.2)
    assert login(g, "alice", password("alice")) == 235
    assert g.error_log().count("sent to the auth_file backend") == 2


def test_bad_auth_cache_is_a_config_error(smtpgate, backend):
    for bad in ("ttl=1m", "zone=ac", "zone=ac:1k", "zone=ac:1m ttl=x",
                "zone=ac:1m colour=red"):
        g = smtpgate(cache_conf(backend, bad), start=False)
        r = g.ctl("-t")
        assert r.returncode == 1 and "auth_cache" in r.stderr, (bad,
                                                                r.stderr)


def test_old_worker_does_not_refill_the_cache_after_reload(smtpgate, backend,
                                                          users):
    """A session that began before a reload is served by an old worker
    with the old users file.  Its answers must not reach the cache the
    new workers read: a changed password would go on working there for
    the whole ttl."""
    conf = cache_conf(backend, "zone=ac:1m ttl=60s", workers=1)
    g = smtpgate(conf)
    old = g.workers()
    early = g.session()                  # stays with the old worker
    early.ehlo()
    g.write_file("users", users[1].replace("{PLAIN}dave-secret",
                                           "{PLAIN}dave-changed"))
    mark = g.log_mark()
    g.reload(conf + "\n# changed\n")
    g.wait_log("configuration reloaded", since=mark)
    g.wait_workers(1, exclude=old)
    with early:
        r = early.cmd(f"AUTH PLAIN {plain_token('dave', 'dave-secret')}")
        assert r.code == 235, r          # the old worker, the old file
        early.cmd("QUIT")
    g.wait_old_workers_gone(old)
    assert login(g, "dave", "dave-secret") == 535
    assert login(g, "dave", "dave-changed") == 235


def test_servers_sharing_a_zone_do_not_share_answers(smtpgate, backend):
    """auth_cache set in mail{} serves every server, but each server has
    its own users.  An answer of one server's backend must not be given
    by another: a password of the first would open the second."""
    other = ("        listen 127.0.0.1:@PORT2@;\n"
             "        protocol smtp;\n"
             "        auth_file users2;\n")
    conf = gatelib.conf(backend=backend, workers=1, level="debug",
                        auth_file=None, server="        auth_file users;",
                        mail="    auth_cache zone=ac:1m ttl=60s "
                             "negative_ttl=60s;\n"
                             "    smtp_auth_fail_delay 0;\n",
                        servers=(other,))
    g = smtpgate(conf, files={"users2": "alice:{PLAIN}second-file\n"})
    first, second = g.port, g.ports["PORT2"]
    assert login(g, "alice", password("alice"), port=first) == 235
    assert login(g, "alice", password("alice"), port=second) == 535
    assert login(g, "alice", "second-file", port=second) == 235
    assert login(g, "alice", "second-file", port=first) == 535
    assert "answered from auth_cache" not in g.error_log()
