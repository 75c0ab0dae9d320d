"""Server certificate dates: -t, start and reload warn of a certificate
that clients would refuse (expired, not valid yet) or soon will (less
than 14 days left), naming the file and the line, once per file; the
certificate still loads and is served, as nginx serves it.  /metrics
(smtpgate_ssl_certificate_not_after_seconds) and /status (each server's
certificates) give every server certificate's end, for alerting.

Certificates are made by openssl's own CA tool with the dates wanted;
the clients are Python's ssl module and openssl s_client."""

import datetime
import json
import re
import ssl
import subprocess

import pytest

from lib import gate as gatelib
from lib import pki as pkilib

from test_status import curl

UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def pki():
    if not pkilib.tls_built():
        pytest.skip("built without the ssl module")
    return pkilib.shared()


def dated(pki, name, start, end):
    return pki.add_dated_server(name, "DNS:mx.test, IP:127.0.0.1",
                                start, end)


def not_after(path):
    """The certificate's notAfter as Unix time, as Python reads it."""
    info = ssl._ssl._test_decode_cert(path)
    return int(ssl.cert_time_to_seconds(info["notAfter"]))


def conf(cert, key, mail="", servers=()):
    return gatelib.conf(
        auth_file="users", proxy_pass="127.0.0.1:9",
        mail=(f"    ssl_certificate {cert};\n"
              f"    ssl_certificate_key {key};\n"
              "    status_listen 127.0.0.1:@PORTS@;\n" + mail),
        server="        starttls on;\n", servers=servers)


def warnings(text):
    return [l for l in text.splitlines() if "[warn]" in l]


def test_expired_certificate_warns_and_still_loads(smtpgate, pki):
    cert = dated(pki, "expired.test",
                 datetime.datetime(2020, 1, 1, tzinfo=UTC),
                 datetime.datetime(2021, 1, 1, 12, 30, tzinfo=UTC))
    key = pki.key("expired.test")
    # two servers take the mail block's certificate: one warning
    g = smtpgate(conf(cert, key, servers=[
        "        listen 127.0.0.1:@PORT2@;\n        starttls on;\n"]),
        start=False)
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
    (w,) = warnings(r.stderr)
    line = [i + 1 for i, l in enumerate(g.conf_text.splitlines())
            if "ssl_certificate " in l][0]
    assert re.search(
        r"\[warn\] .*ssl_certificate \"" + re.escape(cert) + r"\" expired "
        r"on 2021-01-01 12:30:00 UTC: clients will refuse it; renew it",
        w), w
    assert f"{g.conf_path}:{line}" in w, w
    g.start()
    # the start says so too (on stderr: the error log opens after it)
    with open(g.stderr_path) as f:
        assert re.search(r"\[warn\] .*ssl_certificate \""
                         + re.escape(cert) + r"\" expired on 2021-01-01",
                         f.read())
    # served all the same: a client that checks refuses it...
    ctx = pki.client_context()
    with pytest.raises(ssl.SSLCertVerificationError,
                       match="certificate has expired"):
        pkilib.starttls_session(g, pki, context=ctx)
    # ...and the figures say when it ended
    st = json.loads(curl(g, "/status"))
    for s in st["servers"]:
        assert s["certificates"] == [{
            "file": cert, "not_before": 1577836800,
            "not_after": not_after(cert)}], s
    assert not_after(cert) == 1609504200
    m = re.findall(r'^smtpgate_ssl_certificate_not_after_seconds\{server='
                   r'"([^"]+)",file="' + re.escape(cert) + r'"\} (\d+)$',
                   curl(g, "/metrics"), re.M)
    assert sorted(m) == [("mx.test", "1609504200"),
                         ("mx.test#2", "1609504200")], m


def test_not_yet_valid_and_expiring_soon(smtpgate, pki):
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    future = dated(pki, "future.test", datetime.datetime(2099, 1, 1,
                                                         tzinfo=UTC),
                   datetime.datetime(2100, 1, 1, tzinfo=UTC))
    soon = dated(pki, "soon.test", now - datetime.timedelta(days=30),
                 now + datetime.timedelta(days=3, hours=2))
    g = smtpgate(conf(pki.cert("mx.test"), pki.key("mx.test"), servers=[
        "        listen 127.0.0.1:@PORT2@;\n"
        f"        ssl_certificate {future};\n"
        f"        ssl_certificate_key {pki.key('future.test')};\n"
        "        starttls on;\n",
        "        listen 127.0.0.1:@PORT3@;\n"
        f"        ssl_certificate {soon};\n"
        f"        ssl_certificate_key {pki.key('soon.test')};\n"
        "        starttls on;\n"]), start=False)
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
    w = warnings(r.stderr)
    assert len(w) == 2, r.stderr
    assert re.search(r"ssl_certificate \"" + re.escape(future) + r"\" is "
                     r"not valid before 2099-01-01 00:00:00 UTC: clients "
                     r"will refuse it until then; check the clock, or the "
                     r"certificate", w[0]), w
    assert re.search(r"ssl_certificate \"" + re.escape(soon) + r"\" "
                     r"expires in 3 days, on \d{4}-\d\d-\d\d "
                     r"\d\d:\d\d:\d\d UTC: renew it", w[1]), w
    # the good certificate of the first server is not mentioned
    assert pki.cert("mx.test") not in r.stderr
    g.start()
    st = {s["name"]: s for s in json.loads(curl(g, "/status"))["servers"]}
    assert st["mx.test"]["certificates"][0]["not_after"] == \
        not_after(pki.cert("mx.test"))
    assert st["mx.test#3"]["certificates"][0]["not_after"] == \
        not_after(soon)


def test_both_certificates_of_a_server_are_listed(smtpgate, pki):
    """An RSA and an ECDSA certificate in one server: each with its own
    end; a reload to another certificate changes the figures."""
    g = smtpgate(conf(pki.cert("mx.test"), pki.key("mx.test"), mail=(
        f"    ssl_certificate {pki.cert('mx.test-ec')};\n"
        f"    ssl_certificate_key {pki.key('mx.test-ec')};\n")))
    (srv,) = json.loads(curl(g, "/status"))["servers"]
    assert [c["file"] for c in srv["certificates"]] == \
        [pki.cert("mx.test"), pki.cert("mx.test-ec")]
    assert [c["not_after"] for c in srv["certificates"]] == \
        [not_after(pki.cert("mx.test")), not_after(pki.cert("mx.test-ec"))]
    assert "[warn]" not in g.error_log()
    soon = dated(pki, "soon2.test",
                 datetime.datetime.now(UTC) - datetime.timedelta(days=1),
                 datetime.datetime.now(UTC) + datetime.timedelta(hours=5))
    g.reload(conf(soon, pki.key("soon2.test")))
    g.wait_log(r"\[warn\] .*ssl_certificate \"" + re.escape(soon)
               + r"\" expires in less than 1 day, on ")

    def reloaded():
        (srv,) = json.loads(curl(g, "/status"))["servers"]
        return srv if srv["certificates"][0]["file"] == soon else None
    from lib import net
    srv = net.wait_until(reloaded, 20, what="the new certificate listed")
    assert srv["certificates"] == [{
        "file": soon, "not_before": srv["certificates"][0]["not_before"],
        "not_after": not_after(soon)}]
    # openssl agrees on the date
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in",
                          soon], capture_output=True, text=True).stdout
    end = datetime.datetime.strptime(out.strip().split("=", 1)[1],
                                     "%b %d %H:%M:%S %Y GMT")
    assert int(end.replace(tzinfo=UTC).timestamp()) == not_after(soon)


def test_proxy_ssl_certificate_dates(smtpgate, pki):
    """The client certificate smtpgate shows its backends is checked the
    same way, naming its own directive."""
    cert = dated(pki, "old-client.test",
                 datetime.datetime(2019, 5, 1, tzinfo=UTC),
                 datetime.datetime(2020, 5, 1, tzinfo=UTC))
    g = smtpgate(gatelib.conf(
        auth_file="users", proxy_pass="127.0.0.1:9",
        mail=("    proxy_ssl on;\n"
              f"    proxy_ssl_certificate {cert};\n"
              f"    proxy_ssl_certificate_key {pki.key('old-client.test')};"
              "\n")), start=False)
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
    (w,) = warnings(r.stderr)
    line = [i + 1 for i, l in enumerate(g.conf_text.splitlines())
            if "proxy_ssl_certificate " in l][0]
    assert re.search(r"proxy_ssl_certificate \"" + re.escape(cert)
                     + r"\" expired on 2020-05-01 00:00:00 UTC: backends "
                     r"will refuse it; renew it", w), w
    assert f"{g.conf_path}:{line}" in w, w
