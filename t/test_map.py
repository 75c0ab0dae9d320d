"""Variables, `map` and `proxy_pass $variable`: sessions routed to the
backend a map picks (by the user's domain, a regex capture, chained
maps, the client's address, the listening port, the HELO name, the
AUTH mechanism, the TLS facts), what the client and the log see when the
map gives nothing usable, and every configuration error with its
FILE:LINE."""

import itertools
import re

import pytest

from lib import backends, gate as gatelib, net
from lib import pki as pkilib
from lib.authsvc import AuthService, ok, ok_to
from lib.messages import make_message
from lib.pki import cert_directives, indent, starttls_session

NO_BACKEND = "451 4.4.1 No backend available, try again later"

# Users of several domains; passwords in {PLAIN} keep the file simple.
USERS = {
    "u1@example.org": "pw-u1",
    "u2@example.net": "pw-u2",
    "u3@other.test": "pw-u3",
    "u4@example.org": "pw-u4",
    "U5@EXAMPLE.ORG": "pw-u5",
    "nobody@nowhere.test": "pw-nobody",
}


def users_text(extra=()):
    names = dict(USERS)
    names.update({n: "pw-" + n for n in extra})
    return "".join(f"{n}:{{PLAIN}}{p}\n" for n, p in names.items())


def pw(user):
    return USERS.get(user, "pw-" + user)


@pytest.fixture
def three():
    """Three aiosmtpd backends, A, B and C."""
    bs = [backends.AiosmtpdBackend().start() for _ in range(3)]
    yield bs
    for b in bs:
        b.stop()


def map_conf(maps, *, listen=("127.0.0.1:@PORT@",), server="", **kw):
    """A configuration whose backend is `proxy_pass $backend`, with the
    map blocks `maps` in mail {}."""
    return gatelib.conf(proxy_pass="$backend", mail=indent(maps, 4),
                        listen=listen, server=server, **kw)


def session_to(g, user, *, ehlo="client.test", port=None, mech="plain"):
    """Log in as user; return (connection, AUTH reply)."""
    c = g.connect(port=port)
    r = c.greeting()
    assert r.code == 220, r
    c.ehlo(ehlo)
    if mech == "plain":
        r = c.auth_plain(user, pw(user))
    else:
        r = c.auth_login(user, pw(user))
    return c, r


_sent = itertools.count(1)


def send_as(g, user, **kw):
    """Log in as user and send one message whose sender names the user
    (and is new each time); return the sender address used."""
    sender = (f"m{next(_sent)}-" + re.sub(r"[^A-Za-z0-9]", "-", user)
              + "@sender.test")
    c, r = session_to(g, user, **kw)
    with c:
        assert r.code == 235, f"AUTH as {user}: {r!r}\n{g.error_log()[-3000:]}"
        r = c.mail(sender, ["rcpt@example.com"], make_message(300))
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
    return sender


def landed(bs, sender, timeout=30.0):
    """Index of the backend that got the message from sender; the others
    got nothing from it."""
    found = []

    def got():
        found[:] = [i for i, b in enumerate(bs)
                    if any(m.mail_from == sender for m in b.messages)]
        return found or None
    net.wait_until(got, timeout, what=f"a backend to get mail from {sender}")
    assert len(found) == 1, f"{sender} reached backends {found}"
    return found[0]


def refused(g, user, **kw):
    """Log in as user; the client must hear 451 and be disconnected."""
    c, r = session_to(g, user, **kw)
    with c:
        assert r.code == 451, r
        assert r.raw == (NO_BACKEND + "\r\n").encode(), r
        c.expect_closed()


# -- routing ------------------------------------------------------------------


def test_route_by_user_domain(smtpgate, three):
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            ~@example\\.org$  {a.address};
            ~@example\\.net$  {b.address};
            default           {c.address};
        }}"""), users_text=users_text())
    for user, want in (("u1@example.org", 0), ("u2@example.net", 1),
                       ("u3@other.test", 2), ("u4@example.org", 0)):
        assert landed(three, send_as(g, user)) == want, user


def test_named_capture_and_chained_maps(smtpgate, three):
    """Map one gives the user's domain from a named capture; map two
    turns the domain into an address."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $auth_user $user_domain {{
            ~@(?<domain>[^@]+)$  $domain;
        }}
        map $user_domain $backend {{
            example.org  {a.address};
            example.net  {b.address};
            default      {c.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u2@example.net")) == 1
    assert landed(three, send_as(g, "u1@example.org")) == 0
    assert landed(three, send_as(g, "u3@other.test")) == 2


def test_numbered_capture_gives_the_port(smtpgate, three):
    """The user name carries the backend's port: "port12345@ports.test"
    goes to 127.0.0.1:12345 through "127.0.0.1:$1"."""
    users = [f"port{b.port}@ports.test" for b in three]
    g = smtpgate(map_conf("""
        map $auth_user $backend {
            "~^port(\\d+)@ports\\.test$"  127.0.0.1:$1;
        }"""), users_text=users_text(users))
    for i, user in enumerate(users):
        assert landed(three, send_as(g, user)) == i


def test_value_mixes_text_variables_and_captures(smtpgate, three):
    """"$1${2}" joins two captures; the next map puts the result after
    another variable and some text."""
    a = three[0]
    user = f"x{a.port}@ports.test"
    g = smtpgate(map_conf("""
        map $auth_user $port {
            "~^x(\\d+)(\\d)@"  "$1${2}";
        }
        map $port $backend {
            default  "${server_addr}:$port";
        }"""), users_text=users_text([user]))
    assert landed(three, send_as(g, user)) == 0


def test_case_insensitive_regex(smtpgate, three):
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            ~@EXAMPLE\\.NET$   {a.address};
            ~*@EXAMPLE\\.ORG$  {b.address};
            default            {c.address};
        }}"""), users_text=users_text())
    # ~ is case-sensitive: u2@example.net does not match @EXAMPLE.NET.
    assert landed(three, send_as(g, "u2@example.net")) == 2
    assert landed(three, send_as(g, "u1@example.org")) == 1
    assert landed(three, send_as(g, "U5@EXAMPLE.ORG")) == 1


def test_exact_key_beats_regex(smtpgate, three):
    """Exact keys are looked up first, whatever their place in the block,
    and without regard to case."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            ~@example\\.org$  {b.address};
            u1@example.org    {a.address};
            u5@example.org    {a.address};
            default           {c.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0
    assert landed(three, send_as(g, "U5@EXAMPLE.ORG")) == 0
    assert landed(three, send_as(g, "u4@example.org")) == 1
    assert landed(three, send_as(g, "u3@other.test")) == 2


def test_first_matching_regex_wins(smtpgate, three):
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            ~^u1@    {a.address};
            ~\\.org$  {b.address};
            default  {c.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0
    assert landed(three, send_as(g, "u4@example.org")) == 1


def test_default(smtpgate, three):
    c = three[2]
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            ~@example\\.com$  127.0.0.1:1;
            default           {c.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 2


def test_special_words_escaped_as_keys(smtpgate, three):
    a, b, c = three
    users = ["default", "hostnames"]
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            \\default    {a.address};
            \\hostnames  {b.address};
            default     {c.address};
        }}"""), users_text=users_text(users))
    assert landed(three, send_as(g, "default")) == 0
    assert landed(three, send_as(g, "hostnames")) == 1


def test_include_inside_map(smtpgate, three):
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            include map.d/*.conf;
            default {c.address};
        }}"""), users_text=users_text(),
        files={"map.d/org.conf": f"~@example\\.org$ {a.address};\n",
               "map.d/net.conf": f"u2@example.net {b.address};\n"})
    assert landed(three, send_as(g, "u1@example.org")) == 0
    assert landed(three, send_as(g, "u2@example.net")) == 1
    assert landed(three, send_as(g, "u3@other.test")) == 2


@pytest.mark.skipif(not net.ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_backend_through_a_map(smtpgate):
    b6 = backends.AiosmtpdBackend(host=net.IPV6).start()
    try:
        g = smtpgate(map_conf(f"""
            map $auth_user $backend {{
                default [::1]:{b6.port};
            }}"""), users_text=users_text())
        sender = send_as(g, "u1@example.org")
        (m,) = b6.wait_messages(1)
        assert m.mail_from == sender
        assert m.peer[0] == "::1"
    finally:
        b6.stop()


# -- built-in variables as sources --------------------------------------------


def test_remote_addr_as_source(smtpgate, three):
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $remote_addr $backend {{
            127.0.0.1  {a.address};
            default    {c.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0


def test_server_port_as_source(smtpgate, three):
    """Two listening ports of one server, one backend each."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $server_port $backend {{
            @PORT@   {a.address};
            @PORT2@  {b.address};
        }}
        map $server_addr:$server_port $tag {{
            default x;
        }}""", listen=("127.0.0.1:@PORT@", "127.0.0.1:@PORT2@")),
        users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0
    assert landed(three, send_as(g, "u1@example.org",
                                 port=g.ports["PORT2"])) == 1


def test_helo_as_source(smtpgate, three):
    """$helo is the name of the client's last EHLO, and a hostnames map
    matches it by wildcard."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $helo $backend {{
            hostnames;
            *.example.org        {a.address};
            mail.*               {b.address};
            client.example.net   {b.address};
            default              {c.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org",
                                 ehlo="host.Example.ORG")) == 0
    assert landed(three, send_as(g, "u1@example.org",
                                 ehlo="mail.elsewhere.test")) == 1
    assert landed(three, send_as(g, "u1@example.org",
                                 ehlo="client.example.net.")) == 1
    assert landed(three, send_as(g, "u1@example.org",
                                 ehlo="example.org")) == 2


def test_helo_changes_are_seen(smtpgate, three):
    """A second EHLO in the session replaces the name the map sees."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $helo $backend {{
            first.test   {a.address};
            second.test  {b.address};
        }}"""), users_text=users_text())
    with g.session() as s:
        s.ehlo("first.test")
        s.ehlo("second.test")
        assert s.auth_plain("u1@example.org", pw("u1@example.org")).code \
            == 235
        r = s.mail("helo@sender.test", ["r@example.com"], make_message(100))
        assert r.code == 250
    assert landed(three, "helo@sender.test") == 1


def test_failed_auth_then_other_user(smtpgate, three):
    """$auth_user is the user of the AUTH that succeeded, not of an
    earlier failed attempt."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        smtp_auth_fail_delay 0;
        map $auth_user $backend {{
            ~@example\\.org$  {a.address};
            ~@example\\.net$  {b.address};
        }}"""), users_text=users_text())
    with g.session() as s:
        s.ehlo()
        assert s.auth_plain("u1@example.org", "wrong").code == 535
        assert s.auth_plain("u2@example.net", pw("u2@example.net")).code \
            == 235
        r = s.mail("retry@sender.test", ["r@example.com"], make_message(100))
        assert r.code == 250
    assert landed(three, "retry@sender.test") == 1


def test_auth_method_as_source(smtpgate, three):
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $auth_method $backend {{
            plain  {a.address};
            login  {b.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0
    assert landed(three, send_as(g, "u4@example.org", mech="login")) == 1


def test_session_id_and_server_name(smtpgate, three):
    """$session_id is a decimal number; $server_name the server's name."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $session_id $by_id {{
            ~^[1-9][0-9]*$  {a.address};
            default         {c.address};
        }}
        map $server_name $backend {{
            mx.test  $by_id;
            default  {b.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0


# -- TLS variables ------------------------------------------------------------


@pytest.fixture(scope="module")
def pki():
    return pkilib.shared()


@pytest.mark.skipif(not pkilib.tls_built(), reason="built without TLS")
def test_ssl_variables_as_sources(smtpgate, three, pki):
    """$ssl_protocol is empty before STARTTLS and set after it;
    $ssl_client_s_dn is the RFC 2253 subject of the client's
    certificate."""
    a, b, c = three
    server = indent(f"""
        starttls on;
        {cert_directives(pki, "mx.test")}
        ssl_verify_client optional;
        ssl_client_certificate {pki.ca};""")
    g = smtpgate(map_conf(f"""
        map $ssl_client_s_dn $by_dn {{
            "emailAddress=alice@example.org,CN=alice"  {a.address};
        }}
        map $ssl_protocol $backend {{
            ~^TLSv1\\.[23]$  $by_dn;
            default         {c.address};
        }}""", server=server), users_text=users_text())

    # Without TLS: $ssl_protocol is empty, the default applies.
    assert landed(three, send_as(g, "u1@example.org")) == 2

    # With TLS and alice's certificate: $by_dn gives A.
    s = starttls_session(g, pki, cert="alice")
    with s:
        s.ehlo()
        assert s.auth_plain("u1@example.org", pw("u1@example.org")).code \
            == 235
        assert s.mail("tls-alice@sender.test", ["r@example.com"],
                      make_message(100)).code == 250
    assert landed(three, "tls-alice@sender.test") == 0

    # With TLS and no certificate: $by_dn is empty, so is $backend.
    s = starttls_session(g, pki)
    with s:
        s.ehlo()
        r = s.auth_plain("u1@example.org", pw("u1@example.org"))
        assert r.code == 451, r
    g.wait_log(r'"proxy_pass \$backend" is empty for this session')


@pytest.mark.skipif(not pkilib.tls_built(), reason="built without TLS")
def test_empty_key_matches_an_unset_variable(smtpgate, three):
    """Without TLS $ssl_protocol is empty, and the key "" matches it."""
    a, b, c = three
    g = smtpgate(map_conf(f"""
        map $ssl_protocol $backend {{
            ""       {a.address};
            default  {c.address};
        }}"""), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0


# -- no usable value ----------------------------------------------------------


def test_empty_result_is_451_with_a_log_line(smtpgate, three):
    a = three[0]
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            ~@example\\.org$  {a.address};
        }}"""), users_text=users_text())
    mark = g.log_mark()
    refused(g, "u2@example.net")
    g.wait_log(r'\[error\] \d+#\d+: \*\d+ "proxy_pass \$backend" is empty '
               r'for this session, answering 451: check that the map '
               r'\(or variable\) gives every session a backend, with a '
               r'"default" entry.*login: "u2@example\.net"', since=mark)
    # The next session is not affected.
    assert landed(three, send_as(g, "u1@example.org")) == 0


@pytest.mark.parametrize("value,why", [
    ("not-an-address", "invalid address"),
    ("not-an-address:25", "invalid address"),
    ("localhost:25", "invalid address"),
    ("127.0.0.1:0", "invalid port"),
    ("127.0.0.1:99999", "invalid port"),
    ("[::1", "invalid IPv6 address"),
    ("::1:25", "IPv6 addresses must be written in brackets"),
    ("127.0.0.1:25:25", "IPv6 addresses must be written in brackets"),
    ('"127.0.0.1: 25"', "invalid port"),
])
def test_unparsable_result_is_451(smtpgate, value, why):
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            default {value};
        }}"""), users_text=users_text())
    mark = g.log_mark()
    refused(g, "u1@example.org")
    shown = value.strip('"')
    g.wait_log(r'\[error\] .*"proxy_pass \$backend" gave "'
               + re.escape(shown) + r'", which is neither an upstream group '
               r"nor an IP address and port \(" + re.escape(why)
               + r"\), answering 451: check it", since=mark)


def test_unreachable_result_names_the_variable(smtpgate):
    port = net.free_port()
    g = smtpgate(map_conf(f"""
        map $auth_user $backend {{
            default 127.0.0.1:{port};
        }}"""), users_text=users_text())
    mark = g.log_mark()
    refused(g, "u1@example.org")
    g.wait_log(r'\[error\] .*no backend available for "proxy_pass '
               r'\$backend" \("127\.0\.0\.1:' + str(port) + r'"\) after 1 '
               r"attempt, answering 451", since=mark)


def test_hostile_value_length_is_refused_at_run_time(smtpgate):
    """Maps that multiply a value past 64 KB read as empty: 451, and the
    log says why."""
    sixteen = "$auth_user" * 16
    g = smtpgate(map_conf(f"""
        map $auth_user $x1 {{ default "{sixteen}"; }}
        map $x1 $x2 {{ default "{sixteen.replace('auth_user', 'x1')}"; }}
        map $x2 $x3 {{ default "{sixteen.replace('auth_user', 'x2')}"; }}
        map $x3 $backend {{ default "{sixteen.replace('auth_user', 'x3')}"; }}
        """), users_text=users_text())
    mark = g.log_mark()
    refused(g, "u1@example.org")
    g.wait_log(r"\[error\] .*would be longer than 65536 bytes: read as empty",
               since=mark)


def test_proxy_pass_forms_per_server(smtpgate, three):
    """One server relays through the map, another to a fixed address."""
    a, b, c = three
    g = smtpgate(gatelib.conf(proxy_pass=False, mail=indent(f"""
        map $auth_user $backend {{ default {a.address}; }}""", 4),
        server=indent("proxy_pass $backend;"),
        servers=[indent(f"""
            listen 127.0.0.1:@PORT2@;
            proxy_pass {b.address};""")]), users_text=users_text())
    assert landed(three, send_as(g, "u1@example.org")) == 0
    assert landed(three, send_as(g, "u1@example.org",
                                 port=g.ports["PORT2"])) == 1


def test_auth_service_route_comes_first(smtpgate, three):
    """An auth_http answer with Auth-Server/Auth-Port wins over
    proxy_pass $backend; one without them leaves the map to decide."""
    a, b, c = three
    svc = AuthService().start()
    try:
        svc.responder = lambda req: (
            ok_to(b) if req.header("Auth-User") == "routed" else ok())
        g = smtpgate(gatelib.conf(
            auth_file=None, proxy_pass="$backend",
            mail=indent(f"""
                auth_http {svc.url};
                map $auth_user $backend {{ default {a.address}; }}""", 4)))
        for user, want in (("routed", 1), ("mapped", 0)):
            with g.session() as s:
                s.ehlo()
                assert s.auth_plain(user, "secret").code == 235
                sender = f"{user}@sender.test"
                assert s.mail(sender, ["r@example.com"],
                              make_message(100)).code == 250
            assert landed(three, sender) == want, user
    finally:
        svc.stop()


# -- configuration errors -----------------------------------------------------


@pytest.fixture
def conf_test(tmp_path):
    """conf_test(text, files=...) -> (gate, result of `smtpgate -t`)."""
    n = [0]

    def run(text, *, files=None):
        n[0] += 1
        g = gatelib.Smtpgate(tmp_path / f"t{n[0]}", text,
                             users_text=users_text(), files=files)
        return g, g.ctl("-t")
    return run


def line_of(text, needle, index=0):
    return [i + 1 for i, l in enumerate(text.splitlines())
            if needle in l][index]


def assert_failed(g, r, line, message, path=None):
    where = f"{path or g.conf_path}:{line}: "
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stderr}"
    assert f"[emerg] {where}{message}" in r.stderr, \
        f"stderr lacks {where}{message!r}:\n{r.stderr}"


def test_good_config_passes(conf_test):
    text = map_conf("""
        map $auth_user $backend {
            hostnames;
            volatile;
            .example.org   127.0.0.1:2525;
            ~^(?<u>[^@]+)@  127.0.0.1:$1${u};
            default        "";
        }""")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr


def test_variable_defined_later_in_the_file(conf_test):
    text = map_conf("""
        map $user_domain $backend { default 127.0.0.1:25; }
        map $auth_user $user_domain { ~@(.*)$ $1; }""")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("maps,needle,message", [
    ("map $auth_user $backend { default $nope; }", "$nope",
     'unknown variable "$nope"'),
    ("map $no_such_thing $backend { default 1; }", "$no_such_thing",
     'unknown variable "$no_such_thing"'),
    ("map $auth_user $backend { ~(a 1; }", "~(a",
     'invalid regex "(a" in map "$backend": missing closing parenthesis '
     'at offset 2'),
    ("map $auth_user $backend { ~*a[ 1; }", "~*a[",
     'invalid regex "a[" in map "$backend": missing terminating ] for '
     'character class at offset 2'),
    ("map $auth_user $backend {\n a 1;\n B 2;\n A 3;\n}", " A 3",
     'duplicate key "a" in map "$backend"'),
    ("map $auth_user $backend {\n hostnames;\n .example.org 1;\n"
     " example.org 2;\n}", "example.org 2",
     'duplicate key "example.org" in map "$backend"'),
    ("map $auth_user $backend {\n default 1;\n default 2;\n}", "default 2",
     'duplicate default in map "$backend" (first at '),
    ("map $auth_user $backend;", "map $auth_user",
     'directive "map" has no opening "{"'),
    ("map $auth_user $backend extra { default 1; }", "map $auth_user",
     'invalid number of arguments in "map" directive'),
    ("map $auth_user { default 1; }", "map $auth_user",
     'invalid number of arguments in "map" directive'),
    ("map $auth_user $backend {\n a b c;\n}", "a b c",
     'invalid number of parameters in map "$backend": expected a key and '
     'a value'),
    ("map $auth_user $backend {\n nonsense;\n}", "nonsense",
     'invalid number of parameters in map "$backend"'),
    ("map $auth_user backend { default 1; }", "map $auth_user",
     'invalid map result "backend": a variable name such as $backend is '
     'expected'),
    ("map $auth_user $back-end { default 1; }", "map $auth_user",
     'invalid variable name "$back-end"'),
    ("map $auth_user $1x { default 1; }", "map $auth_user",
     'invalid variable name "$1x"'),
    ("map $auth_user $remote_addr { default 1; }", "map $auth_user",
     'variable "$remote_addr" is built in: choose another name'),
    ("map $auth_user $ssl_protocol { default 1; }", "map $auth_user",
     'variable "$ssl_protocol" is built in: choose another name'),
    ("map $auth_user $backend { default 1; }\n"
     "map $helo $backend { default 2; }", "map $helo",
     'variable "$backend" is already defined at '),
    ("map auth_user $backend { default 1; }", "map auth_user",
     'the source "auth_user" of a map has no variable in it'),
    ("map $auth_user $backend { default $1; }", "default $1",
     '"$1" in "$1" refers to a regex capture, but there is no regex here'),
    ("map $auth_user $backend { ~^(a)$ $2; }", "~^(a)$",
     '"$2" in "$2": the regex has 1 capture(s)'),
    ("map $auth_user $backend { default x$; }", "default x$",
     'a "$" without a variable name in "x$"'),
    ("map $auth_user $backend { default \"${a\"; }", "default",
     'a "${" without its closing "}" in "${a"'),
    ("map $auth_user $backend { ~ 1; }", "~ 1",
     'empty regex in map "$backend"'),
    ("map $auth_user $backend {\n a 1;\n hostnames;\n}", "hostnames",
     '"hostnames" must come before the keys of map "$backend"'),
    ("map $auth_user $backend {\n hostnames;\n *.a.* 1;\n}", "*.a.*",
     'invalid key "*.a.*" in a hostnames map'),
    ("map $auth_user $backend {\n a { }\n}", "a {",
     'unexpected "{"'),
    ("map $a1 $backend { default 1; }\nmap $backend $a1 { default 2; }",
     "map $backend",
     'variable "$a1" is computed from "$backend", which itself needs '
     '"$a1": a cycle'),
    ("map $auth_user $backend { default $backend; }", "default $backend",
     'variable "$backend" is computed from itself'),
    ("map $auth_user $a2 { default $a3; }\nmap $a2 $a3 { default 1; }\n"
     "map $auth_user $backend { default $a2; }", "map $a2 $a3",
     'variable "$a3" is computed from "$a2", which itself needs "$a3": '
     'a cycle'),
])
def test_map_errors(conf_test, maps, needle, message):
    text = map_conf(maps)
    g, r = conf_test(text)
    assert_failed(g, r, line_of(text, needle), message)


def test_map_block_never_closed(conf_test):
    text = map_conf("").split("mail {")[0] + (
        "mail {\n    map $auth_user $backend {\n        a 1;\n")
    g, r = conf_test(text)
    assert_failed(g, r, len(text.splitlines()) + 1,
                  'unexpected end of file, expecting "}"')


def test_unknown_variable_in_proxy_pass(conf_test):
    text = gatelib.conf(proxy_pass="$nowhere")
    g, r = conf_test(text)
    assert_failed(g, r, line_of(text, "proxy_pass $nowhere"),
                  'unknown variable "$nowhere"')


def test_capture_in_proxy_pass(conf_test):
    text = gatelib.conf(proxy_pass="127.0.0.1:$1")
    g, r = conf_test(text)
    assert_failed(g, r, line_of(text, "proxy_pass 127"),
                  '"$1" in "127.0.0.1:$1" refers to a regex capture')


def test_error_in_included_map_file(conf_test):
    text = map_conf("""
        map $auth_user $backend {
            include entries.conf;
        }""")
    g, r = conf_test(text, files={"entries.conf": "a 1;\n\nb $2;\n"})
    assert_failed(g, r, 3, '"$2" in "$2" refers to a regex capture',
                  path=g.confdir + "/entries.conf")


def test_duplicate_key_across_include(conf_test):
    text = map_conf("""
        map $auth_user $backend {
            a 1;
            include entries.conf;
        }""")
    g, r = conf_test(text, files={"entries.conf": "b 1;\nA 2;\n"})
    assert_failed(g, r, 2, 'duplicate key "a" in map "$backend"',
                  path=g.confdir + "/entries.conf")


def test_map_outside_mail_is_refused(conf_test):
    text = (map_conf("map $auth_user $backend { default 1; }")
            + "map $auth_user $x { default 1; }\n")
    g, r = conf_test(text)
    assert_failed(g, r, line_of(text, "map $auth_user $x"),
                  '"map" directive is not allowed here')


def test_map_in_server_is_refused(conf_test):
    text = map_conf("map $auth_user $backend { default 1; }",
                    server=indent("map $helo $x { default 1; }"))
    g, r = conf_test(text)
    assert_failed(g, r, line_of(text, "map $helo"),
                  '"map" directive is not allowed here')
