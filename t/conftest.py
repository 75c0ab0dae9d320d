"""Fixtures for the smtpgate integration tests.

    smtpgate(conf_text, ...)  start the binary on a generated config; the
                              test fails at teardown if the logs show an
                              [alert], [emerg], crash or sanitizer report
    gate                      smtpgate in front of `backend`, defaults
    backend                   aiosmtpd on 127.0.0.1 recording envelopes
    sink                      Postfix smtp-sink recording messages to files
    scripted(behaviour)       a misbehaving backend (see lib/backends.py)
    make_backend(**kw)        one more AiosmtpdBackend (TLS, AUTH, PROXY,
                              EHLO changes, refusals, delays: see there)
    tls_backend               AiosmtpdBackend offering STARTTLS
    make_sink(**kw)           one more SinkBackend with smtp-sink switches
    postfix, make_postfix     a real Postfix (lib/postfix.py); skipped
                              unless root with postfix installed
    users                     hashes and the users file text

Every test phase runs under an alarm (default 120 s, more with
@pytest.mark.time_limit(N)), so a hung socket cannot hang the suite.
"""

import os
import shutil
import signal
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib import backends, gate as gatelib  # noqa: E402
from lib import postfix as postfixlib, users as userlib  # noqa: E402

DEFAULT_TIME_LIMIT = 120
TEARDOWN_TIME_LIMIT = 150


class PhaseTimeout(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "time_limit(seconds): per-phase time limit for a test")


def _limit_for(item, phase):
    if phase == "teardown":
        return TEARDOWN_TIME_LIMIT
    m = item.get_closest_marker("time_limit")
    return int(m.args[0]) if m else DEFAULT_TIME_LIMIT


def _alarm(seconds, what):
    def handler(signum, frame):
        raise PhaseTimeout(f"{what} exceeded its time limit of {seconds}s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    return old


def _phase(item, phase):
    seconds = _limit_for(item, phase)
    old = _alarm(seconds, f"{phase} of {item.nodeid}")
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _phase(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _phase(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _phase(item, "teardown")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# --------------------------------------------------------------------------
# users


@pytest.fixture(scope="session")
def users():
    """(hashes, users_file_text); hashes maps user name -> hash."""
    return userlib.generate()


# --------------------------------------------------------------------------
# backends


@pytest.fixture
def backend():
    b = backends.AiosmtpdBackend().start()
    yield b
    b.stop()


@pytest.fixture
def xclient_backend():
    b = backends.AiosmtpdBackend(xclient=True).start()
    yield b
    b.stop()


@pytest.fixture
def sink():
    b = backends.SinkBackend().start()
    yield b
    b.stop()


@pytest.fixture
def scripted():
    started = []

    def make(behaviour, host="127.0.0.1"):
        b = backends.ScriptedBackend(behaviour, host=host).start()
        started.append(b)
        return b
    yield make
    for b in started:
        b.stop()


def _failed(request):
    return any(getattr(getattr(request.node, f"rep_{when}", None),
                       "failed", False) for when in ("setup", "call"))


@pytest.fixture
def make_backend():
    """Factory: make_backend(**kw) -> a started AiosmtpdBackend."""
    started = []

    def make(**kw):
        b = backends.AiosmtpdBackend(**kw).start()
        started.append(b)
        return b
    yield make
    for b in started:
        b.stop()


@pytest.fixture
def tls_backend(make_backend):
    """AiosmtpdBackend offering STARTTLS with the backend.test
    certificate of the shared test PKI."""
    return make_backend(tls="starttls")


@pytest.fixture
def make_sink():
    """Factory: make_sink(**kw) -> a started SinkBackend."""
    started = []

    def make(**kw):
        b = backends.SinkBackend(**kw).start()
        started.append(b)
        return b
    yield make
    for b in started:
        b.stop()


@pytest.fixture
def make_postfix(request):
    """Factory: make_postfix(**kw) -> a started lib.postfix.PostfixServer.
    Skips the test unless root with Postfix installed.  At teardown each
    one is stopped (the test fails if it would not stop); its directory
    is removed when the test passed and kept when not."""
    reason = postfixlib.skip_reason()
    if reason:
        pytest.skip(reason)
    started = []

    def make(**kw):
        s = postfixlib.PostfixServer(**kw)
        started.append(s)
        return s.start()
    yield make
    issues = []
    for s in started:
        issues += [f"[{s.root}] {i}" for i in s.stop()]
    if not issues and not _failed(request):
        for s in started:
            s.cleanup()
    if issues:
        pytest.fail("Postfix teardown found problems:\n" + "\n".join(issues),
                    pytrace=False)


@pytest.fixture
def postfix(make_postfix):
    """A real Postfix delivering @example.org into a Maildir."""
    return make_postfix()


# --------------------------------------------------------------------------
# the binary


@pytest.fixture
def smtpgate(request, users):
    """Factory: smtpgate(conf_text, users_text=<default>, files=None,
    args=(), start=True) -> lib.gate.Smtpgate.

    Run as root, smtpgate's workers drop privileges, and they reopen their
    logs by path; pytest's own temporary directories are private to root,
    so each test gets a world-traversable directory under /tmp instead.
    It is removed when the test passes and kept for a look when not."""
    base = tempfile.mkdtemp(prefix="smtpgate-test-", dir="/tmp")
    os.chmod(base, 0o755)
    started = []

    def make(conf_text, *, users_text=users[1], files=None, args=(),
             start=True):
        g = gatelib.Smtpgate(os.path.join(base, f"gate{len(started)}"),
                             conf_text, users_text=users_text, files=files,
                             args=args)
        started.append(g)
        if start:
            g.start()
        return g

    yield make

    issues = []
    for g in started:
        for issue in g.shutdown():
            issues.append(f"[{g.root}] {issue}")
    if not issues and not _failed(request):
        shutil.rmtree(base, ignore_errors=True)
    if issues:
        pytest.fail("smtpgate teardown found problems:\n" + "\n".join(issues),
                    pytrace=False)


@pytest.fixture
def gate(smtpgate, backend):
    """smtpgate with the default configuration, relaying to `backend`."""
    return smtpgate(gatelib.conf(backend=backend))
