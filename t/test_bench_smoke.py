"""bench/build/smtpload, the benchmark's load generator, end to end.

The benchmark itself (bench/run) is not part of the suite; this only
checks that its load generator builds and that its counts are right:
20 sessions against smtp-sink and through smtpgate (STARTTLS with AUTH
PLAIN, implicit TLS with AUTH LOGIN from a users file), and a few idle
connections held after AUTH; and bench/features, tiny, end to end.
Skipped when the build cannot work here (no C compiler or no OpenSSL
headers).
"""

import json
import os
import select
import shutil
import signal
import subprocess

import pytest

from lib import gate as gatelib

BENCH = os.path.join(gatelib.REPO, "bench")
SMTPLOAD = os.path.join(BENCH, "build", "smtpload")
PASSWORD = "dave-secret"        # dave's password in lib/users.py


@pytest.fixture(scope="module")
def smtpload():
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.skip("no make or cc to build bench/build/smtpload")
    if not os.path.exists("/usr/include/openssl/ssl.h"):
        pytest.skip("OpenSSL headers missing (Debian package libssl-dev)")
    r = subprocess.run(["make", "-C", BENCH], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"make -C bench failed:\n{r.stdout}{r.stderr}"
    return SMTPLOAD


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed ECDSA certificate and key, readable by all."""
    d = tmp_path_factory.mktemp("bench-cert")
    key, crt = str(d / "key.pem"), str(d / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.test", "-keyout", key, "-out", crt],
                   check=True, capture_output=True, timeout=60)
    with open(crt) as f:
        crt_text = f.read()
    with open(key) as f:
        key_text = f.read()
    return crt_text, key_text


def tls_gate(smtpgate, sink, cert):
    conf = gatelib.conf(
        backend=sink, listen=("127.0.0.1:@PORT@", "127.0.0.1:@PORTS@ ssl"),
        server="        starttls on;\n"
               "        ssl_certificate @CONFDIR@/cert.pem;\n"
               "        ssl_certificate_key @CONFDIR@/key.pem;",
        level="warn")
    return smtpgate(conf, files={"cert.pem": cert[0], "key.pem": cert[1]})


def run(args, timeout=60):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (f"{' '.join(args)} exited {r.returncode}\n"
                               f"stdout: {r.stdout}\nstderr: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_all_ok(res, sessions, messages):
    assert res["failures"] == {}, res
    assert (res["sessions"], res["failed"], res["aborted"]) == \
        (sessions, 0, 0), res
    assert res["messages"] == messages, res
    assert res["latency_ms"]["max"] > 0, res


def test_smtpload_against_smtp_sink(smtpload, sink):
    res = run([smtpload, "-s", sink.address, "-n", "20", "-c", "4",
               "--size", "3000", "--rcpts", "2", "--messages", "2",
               "--pipelining", "--json"])
    assert_all_ok(res, 20, 40)
    assert res["message_bytes"] == 40 * 3000
    assert res["pipelining"] is True


def test_smtpload_min_duration(smtpload, sink):
    """-n 5 --min-duration 0.5 at 20 sessions/s: the 5 are done after
    0.25 s, and sessions go on starting until 0.5 s have passed."""
    res = run([smtpload, "-s", sink.address, "-n", "5", "-c", "2",
               "-r", "20", "--min-duration", "0.5", "--json"])
    assert res["failed"] == 0 and res["aborted"] == 0, res
    assert 9 <= res["sessions"] <= 12, res
    assert res["elapsed_s"] >= 0.45, res
    # -n still counts once the time is up; -d still ends it
    res = run([smtpload, "-s", sink.address, "-n", "100", "-c", "2",
               "--min-duration", "0.001", "--json"])
    assert_all_ok(res, 100, 100)
    res = run([smtpload, "-s", sink.address, "-n", "5", "-c", "2",
               "-r", "20", "--min-duration", "5", "-d", "0.3", "--json"])
    assert 5 <= res["sessions"] <= 8 and res["failed"] == 0, res
    r = subprocess.run([smtpload, "-s", sink.address, "--min-duration",
                        "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--min-duration needs -n" in r.stderr, \
        r.stderr


def test_smtpload_text_report(smtpload, sink):
    r = subprocess.run([smtpload, "-s", sink.address, "-n", "20", "-c",
                        "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sessions   20 ok, 0 failed, 0 aborted" in r.stdout, r.stdout
    assert "failures:" not in r.stdout


def test_smtpload_through_smtpgate_starttls(smtpload, smtpgate, sink, cert):
    g = tls_gate(smtpgate, sink, cert)
    res = run([smtpload, "-s", f"127.0.0.1:{g.port}", "-n", "20", "-c",
               "5", "--tls", "starttls", "--auth", "plain", "--user",
               "dave", "--password", PASSWORD, "--size", "10k",
               "--pipelining", "--json"])
    assert_all_ok(res, 20, 20)
    assert res["tls_handshakes"] == 20


def test_smtpload_through_smtpgate_implicit_login(smtpload, smtpgate, sink,
                                                  cert, tmp_path):
    g = tls_gate(smtpgate, sink, cert)
    users = tmp_path / "users"
    users.write_text(f"# bench users\ndave:{PASSWORD}\n")
    res = run([smtpload, "-s", f"127.0.0.1:{g.ports['PORTS']}", "-n", "20",
               "-c", "4", "--tls", "implicit", "--resume", "--auth",
               "login", "--users", str(users), "--json"])
    assert_all_ok(res, 20, 20)
    assert res["tls_resumed"] > 0, res


def test_smtpload_reports_refusals(smtpload, smtpgate, sink):
    g = smtpgate(gatelib.conf(backend=sink, level="warn"))
    r = subprocess.run([smtpload, "-s", f"127.0.0.1:{g.port}", "-n", "3",
                        "-c", "3", "--auth", "plain", "--user", "dave",
                        "--password", "wrong", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["failed"] == 3 and res["sessions"] == 0, res
    [(text, count)] = res["failures"].items()
    assert text.startswith("535 ") and text.endswith("(AUTH PLAIN)"), text
    assert count == 3


def test_smtpload_idle_auth(smtpload, smtpgate, sink, cert):
    g = tls_gate(smtpgate, sink, cert)
    p = subprocess.Popen([smtpload, "-s", f"127.0.0.1:{g.port}", "--idle",
                          "auth", "-c", "5", "--tls", "starttls", "--auth",
                          "plain", "--user", "dave", "--password", PASSWORD,
                          "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready, "no \"ready\" line within 30 s"
        assert p.stdout.readline() == "ready 5\n"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert (res["sessions"], res["failed"]) == (5, 0), res


def test_features_runs(smtpload):
    """bench/features end to end, tiny: every configuration starts,
    relays its sessions and gets its line (objs/smtpgate, the build the
    benchmark measures)."""
    binary = os.path.join(gatelib.REPO, "objs", "smtpgate")
    if not os.path.exists(binary):
        pytest.skip("objs/smtpgate is not built")
    r = subprocess.run([os.path.join(BENCH, "features"), "-n", "40", "-c",
                        "4", "-r", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.split("CPU per session")[1]
    for name in ("off", "access_log", "status", "access+limit"):
        line = [l for l in summary.splitlines() if l.split()[:1] == [name]]
        assert len(line) == 1, summary
        assert line[0].split()[2] == "us"
    assert " 1.00x " in summary
