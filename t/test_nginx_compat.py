"""An nginx mail block carried over unchanged: the example of nginx's own
documentation (IMAP and POP3 servers, imap_*/pop3_* directives,
proxy_pass_error_message, an auth_http URL without a scheme), with a
mail-level error_log and a resolver, is accepted with a warning for each
thing smtpgate does not do, and its SMTP servers work.  And a mail block
with every directive of nginx's mail modules that an SMTP server can
carry passes both the real nginx's `nginx -t` and `smtpgate -t`."""

import os
import re
import socket

import pytest

from lib import gate as gatelib
from lib import net
from lib import pki as pkilib
from lib.authsvc import AuthService, Nginx, ok_to
from lib.smtp import plain_token

# nginx.org's "Setting up a mail proxy" example, on loopback ports, with
# the auth service and a backend of the test's own.
NGINX_MAIL = """\
daemon off;
worker_processes 1;
pid logs/smtpgate.pid;
error_log logs/error.log info;
events {
    worker_connections 1024;
}
mail {
    server_name       mail.example.com;
    auth_http         @AUTH@;
    error_log         logs/mail.log info;
    resolver          127.0.0.1 valid=30s;
    resolver_timeout  5s;

    imap_capabilities IMAP4rev1 UIDPLUS IDLE LITERAL+ QUOTA;
    imap_client_buffer 4k;

    pop3_auth         plain apop cram-md5;
    pop3_capabilities LAST TOP USER PIPELINING UIDL;

    smtp_auth         login plain cram-md5;
    smtp_capabilities "SIZE 10485760" ENHANCEDSTATUSCODES 8BITMIME DSN;
    xclient           off;

    server {
        listen   127.0.0.1:@PORT@;
        protocol smtp;
        smtp_auth_require_tls off;
    }
    server {
        listen   127.0.0.1:@PORTPOP@;
        protocol pop3;
        proxy_pass_error_message on;
    }
    server {
        listen   127.0.0.1:@PORTIMAP@;
        protocol imap;
        imap_auth plain login;
    }
    server {
        listen   127.0.0.1:@PORTSUB@;
        protocol smtp;
    }
}
"""


@pytest.fixture
def svc():
    s = AuthService().start()
    yield s
    s.stop()


def warnings_of(text):
    return [l for l in text.splitlines() if "[warn]" in l]


def test_nginx_mail_example_carries_over(smtpgate, backend, svc):
    text = NGINX_MAIL.replace("@AUTH@", svc.url[len("http://"):])
    g = smtpgate(text, start=False)
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
    lines = text.splitlines()

    def at(needle, index=0):
        hits = [i + 1 for i, l in enumerate(lines) if needle in l]
        return f"{g.conf_path}:{hits[index]}: "

    warns = warnings_of(r.stderr)
    expected = [
        at("    server {", 1) + "this server (protocol pop3) is skipped and "
        "its addresses are not listened on: smtpgate proxies SMTP only",
        at("    server {", 2) + "this server (protocol imap) is skipped and "
        "its addresses are not listened on: smtpgate proxies SMTP only",
        # the submission server is nginx's too: no TLS, and AUTH only
        # over TLS by default here
        at("    server {", 3) + "no client can log in to this server",
    ]
    for want in expected:
        assert any(want in w for w in warns), (want, warns)
    assert len(warns) == len(expected), warns

    g.start()
    svc.default = ok_to(backend)
    with g.session() as c:
        c.ehlo()
        c.send(b"AUTH PLAIN " + plain_token("alice", "pw").encode()
               + b"\r\n")
        assert c.reply().code == 235
        assert c.expect("MAIL FROM:<a@example.org>", 250)
        assert c.expect("QUIT", 221)
    assert svc.requests[0].path == svc.path        # http://, no scheme
    for name in ("PORTPOP", "PORTIMAP"):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", g.ports[name]), 2)
    # the mail block's error_log has the sessions' lines, as in nginx
    mail_log = os.path.join(g.logdir, "mail.log")
    net.wait_until(lambda: "session closed" in open(mail_log).read(), 30,
                   what="the session's lines in mail.log")
    assert "client logged in with PLAIN" in open(mail_log).read()
    assert "client logged in" not in g.error_log()


@pytest.mark.parametrize("bad", ["protocol gopher;",
                                 "error_log logs/mail.log loud;"])
def test_nginx_directives_are_still_checked(smtpgate, backend, bad):
    text = gatelib.conf(backend=backend, server=f"        {bad}")
    g = smtpgate(text, start=False)
    r = g.ctl("-t")
    assert r.returncode == 1, r.stderr
    assert re.search(r"\[emerg\] .*invalid value", r.stderr), r.stderr


# Every directive of nginx's mail modules that an SMTP server can carry
# (ngx_mail_core, _auth_http, _proxy, _realip, _smtp and _ssl), in the
# forms nginx documents, with the main and events directives of a usual
# nginx.conf: the same text must pass both `nginx -t` (the real nginx
# 1.22 of Debian, with its mail module) and `smtpgate -t`.
EVERY_EVENTS = ("worker_connections 768; multi_accept on; use epoll; "
                "accept_mutex off;")
EVERY_DIRECTIVE = """\
worker_processes   auto;
worker_cpu_affinity auto;
worker_priority    0;
worker_rlimit_nofile 4096;
worker_rlimit_core 10m;
working_directory  /tmp;
pcre_jit           on;
env                TZ;
master_process     on;

mail {
    server_name        mail.example.com;
    auth_http          127.0.0.1:@PORTAUTH@/auth;
    auth_http_header   X-Auth-Key "secret value";
    auth_http_timeout  5s;
    auth_http_pass_client_cert on;
    error_log          @LOGDIR@/mail.log info;
    error_log          syslog:server=unix:/dev/log,facility=mail,tag=mail_proxy,nohostname warn;
    error_log          syslog:server=127.0.0.1:514,severity=info crit;
    timeout            60s;
    max_errors         5;
    resolver           127.0.0.1 [::1]:5353 valid=30s ipv6=off;
    resolver_timeout   5s;
    set_real_ip_from   192.0.2.0/24;
    set_real_ip_from   2001:db8::/32;
    proxy_buffer       16k;
    proxy_pass_error_message on;
    proxy_timeout      10m;
    proxy_smtp_auth    on;
    proxy_protocol     on;
    xclient            on;
    smtp_auth          login plain cram-md5 external;
    smtp_capabilities  "SIZE 10485760" ENHANCEDSTATUSCODES 8BITMIME DSN;
    smtp_client_buffer 4k;
    smtp_greeting_delay 0;
    ssl_certificate    @CERT@;
    ssl_certificate_key @KEY@;
    ssl_protocols      TLSv1.2 TLSv1.3;
    ssl_ciphers        HIGH:!aNULL:!MD5;
    ssl_prefer_server_ciphers on;
    ssl_ecdh_curve     auto;
    ssl_dhparam        @DH@;
    ssl_conf_command   Options PrioritizeChaCha;
    ssl_session_cache  shared:MAILSSL:1m;
    ssl_session_timeout 10m;
    ssl_session_tickets on;
    ssl_session_ticket_key @TICKETS@;
    ssl_client_certificate @CA@;
    ssl_trusted_certificate @CA@;
    ssl_crl            @CRL@;
    ssl_verify_client  optional;
    ssl_verify_depth   2;
    starttls           on;

    server {
        listen   127.0.0.1:@PORT@ backlog=128 rcvbuf=64k sndbuf=64k so_keepalive=on;
        listen   [::1]:@PORT@ ipv6only=on bind;
        protocol smtp;
    }
    server {
        listen   127.0.0.1:@PORTS@ ssl so_keepalive=30m::10;
        protocol smtp;
    }
    server {
        listen   127.0.0.1:@PORTOLD@;
        protocol smtp;
        starttls off;
        ssl      on;
    }
}
"""


def test_every_nginx_mail_directive_loads_in_both(smtpgate, tmp_path):
    pki = pkilib.shared()
    tickets = tmp_path / "tickets.key"
    tickets.write_bytes(os.urandom(80))
    os.chmod(tmp_path, 0o755)
    os.chmod(tickets, 0o644)

    def block(logdir):
        text = EVERY_DIRECTIVE
        for key, value in (("CERT", pki.cert("mx.test")),
                           ("KEY", pki.key("mx.test")), ("DH", pki.dhparam),
                           ("CA", pki.cert("ca")), ("CRL", pki.crl),
                           ("TICKETS", str(tickets)), ("LOGDIR", logdir)):
            text = text.replace(f"@{key}@", value)
        return text

    nginx = Nginx(block("@DIR@"), mail_module=True, events=EVERY_EVENTS)
    try:
        r = nginx.check()
        assert r.returncode == 0, r.stderr
    finally:
        nginx.stop()

    g = smtpgate("daemon off;\npid logs/smtpgate.pid;\n"
                 "error_log logs/error.log info;\n"
                 "load_module modules/ngx_mail_module.so;\n"
                 "events { " + EVERY_EVENTS + " }\n"
                 + block("logs"), start=False)
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
    # the one warning nginx 1.22 gives too
    assert [w for w in warnings_of(r.stderr)
            if '"ssl" directive is deprecated' not in w] == [], r.stderr
