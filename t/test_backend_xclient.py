"""XCLIENT as a real Postfix honours it.

smtpgate listens with "proxy_protocol" and trusts 127.0.0.1, and the
test client sends a PROXY header claiming to be 203.0.113.50 (or an
IPv6 address), so the address Postfix writes into the Received header
can only have come through XCLIENT.  Checked: the delivered message's
Received header carries the client's address and HELO name, Postfix
logs the client and the LOGIN as its SASL user; a Postfix that does not
authorise smtpgate for XCLIENT gets the session relayed without it,
showing smtpgate's own address, and smtpgate's log says so.
"""

import re

import pytest

from lib import gate as gatelib
from lib import postfix as postfixlib
from lib.smtp import RawSmtp
from lib.users import password

MSG = b"Subject: through XCLIENT\r\n\r\nhello\r\n"


def pp_gate(smtpgate, backend, mail=""):
    return smtpgate(gatelib.conf(
        proxy_pass=backend.address,
        listen=("127.0.0.1:@PORT@ proxy_protocol",),
        mail="    set_real_ip_from 127.0.0.1;\n" + mail))


def relay(g, header, helo="client.example", user="alice"):
    with RawSmtp("127.0.0.1", g.port, 30) as c:
        c.send(header)
        assert c.greeting().code == 220
        c.ehlo(helo)
        assert c.auth_plain(user, password(user)).code == 235
        assert c.mail("a@example.org", ["b@example.org"], MSG).code == 250
        assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_postfix_sees_the_real_client(smtpgate, make_postfix, family):
    # Postfix takes an IPv6 ADDR only with IPv6 among its inet_protocols.
    postfix = make_postfix(main={"inet_protocols": "all"}
                           if family == "ipv6" else None)
    if family == "ipv4":
        header = b"PROXY TCP4 203.0.113.50 192.0.2.1 40000 587\r\n"
        shown = "203.0.113.50"
    else:
        header = b"PROXY TCP6 2001:db8::50 2001:db8::1 40000 587\r\n"
        shown = "IPv6:2001:db8::50"
    g = pp_gate(smtpgate, postfix)
    mark = g.log_mark()
    relay(g, header)
    (raw,) = postfix.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    # "from HELO (unknown [ADDR]) by postfix.test (Postfix) with ESMTPA"
    assert received.startswith(
        f"from client.example (unknown [{shown}]) by postfix.test "
        "(Postfix) with ESMTPA id "), received
    assert postfixlib.body(raw) == b"hello\n"
    addr = re.escape(shown.replace("IPv6:", ""))
    postfix.wait_log(rf"client=unknown\[{addr}\], sasl_method=XCLIENT, "
                     r"sasl_username=alice")
    assert "does not offer XCLIENT" not in g.log_since(mark)


def test_postfix_without_xclient_authorisation(smtpgate, make_postfix):
    pf = make_postfix(main={"smtpd_authorized_xclient_hosts": ""})
    g = pp_gate(smtpgate, pf)
    mark = g.log_mark()
    relay(g, b"PROXY TCP4 203.0.113.50 192.0.2.1 40000 587\r\n")
    (raw,) = pf.wait_messages(1)
    (received,) = postfixlib.headers(raw, "Received")
    assert received.startswith("from mx.test (unknown [127.0.0.1]) by "
                               "postfix.test (Postfix) with ESMTP id "), \
        received
    g.wait_log(rf"backend {pf.address} does not offer XCLIENT, relaying "
               r"without it, client: 203\.0\.113\.50", since=mark)
