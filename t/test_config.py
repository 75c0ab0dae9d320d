"""The configuration language and the command line: -t, -T, -V, -g, and
every kind of configuration error reported as FILE:LINE: message."""

import os
import re

import pytest

from lib import gate as gatelib
from lib import net, pki as pkilib
from lib.users import password

BASE = """\
daemon off;
worker_processes 1;
pid logs/smtpgate.pid;
error_log logs/error.log info;
events {
    worker_connections 1024;
}
mail {
    server_name mx.test;
    auth_file users;
    smtp_auth_require_tls off;
    proxy_pass 127.0.0.1:@PORTB@;
    #MAIL#
    server {
        listen 127.0.0.1:@PORT@;
        protocol smtp;
        #SERVER#
    }
}
#TOP#
"""


def make(mail="", server="", top="", base=BASE):
    return (base.replace("#MAIL#", mail).replace("#SERVER#", server)
            .replace("#TOP#", top))


def line_of(text, needle, index=0):
    """1-based line number of a line containing needle (the first one, or
    hits[index])."""
    hits = [i + 1 for i, l in enumerate(text.splitlines()) if needle in l]
    return hits[index]


@pytest.fixture
def conf_test(tmp_path, users):
    """conf_test(text, files=..., users_text=..., args=...) -> (gate, result
    of `smtpgate -t`); the gate is written, not started."""
    n = [0]

    def run(text, *, files=None, users_text=users[1], args=()):
        n[0] += 1
        g = gatelib.Smtpgate(tmp_path / f"t{n[0]}", text,
                             users_text=users_text, files=files)
        return g, g.ctl("-t", *args)
    return run


def assert_failed(g, r, message, line=None, path=None):
    path = path or g.conf_path
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stderr}"
    where = f"{path}:{line}:" if line is not None else f"{path}:" + r"\d+:"
    rx = (r"\[emerg\] " + (re.escape(where) if line is not None else
                           re.escape(f"{path}:") + r"\d+:")
          + " " + re.escape(message))
    assert re.search(rx, r.stderr), \
        f"stderr lacks /{rx}/:\n{r.stderr}"
    assert (f"smtpgate: configuration file {g.conf_path} test failed"
            in r.stderr), r.stderr


# -- success ----------------------------------------------------------------


def test_good_config(conf_test):
    g, r = conf_test(make())
    assert r.returncode == 0, r.stderr
    assert (f"smtpgate: the configuration file {g.conf_path} syntax is ok"
            in r.stderr.splitlines()), r.stderr
    assert (f"smtpgate: configuration file {g.conf_path} test is successful"
            in r.stderr.splitlines()), r.stderr


def test_full_example_config(conf_test):
    """Every directive of the reference example, at both levels."""
    text = make(mail="""
    smtp_auth plain login;
    xclient off;
    proxy_connect_timeout 5s;
    proxy_timeout 10m;
    timeout 60s;
    max_errors 5;
    smtp_client_buffer 16k;""", server="""
        timeout 30s;
        max_errors 4;
        server_name "inner.test";  # a quoted value and a comment
        smtp_auth plain;""").replace("worker_processes 1;",
                                     "worker_processes auto;")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr


def test_dump_config(conf_test):
    g, r = conf_test(make(mail="    include extra.conf;"),
                     files={"extra.conf": "    max_errors 4; # extra-marker\n"})
    r = g.ctl("-T")
    assert r.returncode == 0, r.stderr
    assert "proxy_pass 127.0.0.1:" in r.stdout
    assert f"listen 127.0.0.1:{g.port};" in r.stdout
    assert "server_name mx.test;" in r.stdout


def test_dump_config_includes_included_files(conf_test):
    g, r = conf_test(make(mail="    include extra.conf;"),
                     files={"extra.conf": "    max_errors 4; # extra-marker\n"})
    r = g.ctl("-T")
    assert r.returncode == 0, r.stderr
    assert "extra-marker" in r.stdout, r.stdout


def test_version(tmp_path):
    r = gatelib.run_binary(["-V"], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert re.search(r"smtpgate.*\d+\.\d+", out), out
    assert re.search(r"(?i)configure", out), out
    for module in ("smtp", "auth_file", "proxy"):
        assert module in out, f"module {module} not listed:\n{out}"


def test_g_sets_a_directive(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=None),
                 args=["-g", "worker_processes 3;"])
    g.wait_workers(3)


def test_g_conflicts_with_config(conf_test):
    g, r = conf_test(make(), args=["-g", "worker_processes 2;"])
    assert r.returncode == 1, r.stderr
    assert '"worker_processes" directive is duplicate' in r.stderr


def test_g_bad_directive(conf_test):
    g, r = conf_test(make(), args=["-g", "no_such_thing on;"])
    assert r.returncode == 1, r.stderr
    assert 'unknown directive "no_such_thing"' in r.stderr


def test_include_glob_relative_to_config_dir(smtpgate, backend):
    text = gatelib.conf(backend=backend, listen=("127.0.0.1:@PORT@",),
                        mail="    include servers/*.conf;")
    g = smtpgate(text, files={
        "servers/a.conf": "server {\n listen 127.0.0.1:@PORTA@;\n"
                          " protocol smtp;\n server_name a.test;\n}\n",
        "servers/b.conf": "server {\n listen 127.0.0.1:@PORTB@;\n"
                          " protocol smtp;\n server_name b.test;\n}\n",
        "servers/ignored.txt": "this is not a config file\n",
    })
    for key, name in (("PORTA", "a.test"), ("PORTB", "b.test"),
                      ("PORT", "mx.test")):
        with g.connect(port=g.ports[key]) as c:
            assert c.greeting().last == f"{name} ESMTP ready"
            if key == "PORTA":
                c.ehlo()
                assert c.auth_plain("alice", password("alice")).code == 235


# -- errors -----------------------------------------------------------------


def test_unknown_directive(conf_test):
    text = make(mail="    foo bar;")
    g, r = conf_test(text)
    assert_failed(g, r, 'unknown directive "foo"', line_of(text, "foo bar"))


@pytest.mark.parametrize("where,directive", [
    ("mail", "listen 127.0.0.1:@PORT2@;"),
    ("mail", "worker_processes 2;"),
    ("top", "protocol smtp;"),
    ("top", "proxy_pass 127.0.0.1:25;"),
    ("server", "daemon off;"),
])
def test_directive_not_allowed_here(conf_test, where, directive):
    text = make(**{where: directive})
    name = directive.split()[0]
    g, r = conf_test(text)
    assert_failed(g, r, f'"{name}" directive is not allowed here',
                  line_of(text, directive, -1))


@pytest.mark.parametrize("directive", [
    "timeout 5s 6s;", "max_errors;", "proxy_pass;",
    "smtp_client_buffer 1k 2k;"])
def test_invalid_number_of_arguments(conf_test, directive):
    text = make(mail="    " + directive)
    name = directive.rstrip(";").split()[0]
    g, r = conf_test(text)
    assert_failed(g, r, f'invalid number of arguments in "{name}" directive',
                  line_of(text, directive))


@pytest.mark.parametrize("directive,value", [
    ("max_errors abc;", "abc"),
    ("timeout 5x;", "5x"),
    ("proxy_timeout -1s;", "-1s"),
    ("smtp_client_buffer 16q;", "16q"),
    ("smtp_auth_require_tls maybe;", "maybe"),
    ("xclient yes;", "yes"),
    ("smtp_auth plain bogus;", "bogus"),
])
def test_invalid_value(conf_test, directive, value):
    text = make(server="        " + directive)
    name = directive.split()[0]
    g, r = conf_test(text)
    assert_failed(g, r, f'invalid value "{value}" in "{name}" directive',
                  line_of(text, directive))


def test_invalid_value_top_level(conf_test):
    text = make().replace("worker_processes 1;", "worker_processes many;")
    g, r = conf_test(text)
    assert_failed(g, r, 'invalid value "many" in "worker_processes" directive',
                  line_of(text, "worker_processes"))


def test_invalid_protocol(conf_test):
    text = make().replace("protocol smtp;", "protocol gopher;")
    g, r = conf_test(text)
    assert_failed(g, r, 'invalid value "gopher" in "protocol" directive',
                  line_of(text, "protocol gopher"))


def test_duplicate_directive(conf_test):
    text = make(mail="    timeout 5s;\n    timeout 6s;")
    g, r = conf_test(text)
    assert_failed(g, r, '"timeout" directive is duplicate',
                  line_of(text, "timeout 6s"))


def test_unexpected_eof_expecting_brace(conf_test):
    text = make().replace("#TOP#", "").rstrip()
    assert text.endswith("}")
    text = text[:-1] + "\n"
    g, r = conf_test(text)
    assert_failed(g, r, 'unexpected end of file, expecting "}"')


def test_unexpected_closing_brace(conf_test):
    text = make(top="}")
    g, r = conf_test(text)
    lines = text.splitlines()
    assert_failed(g, r, 'unexpected "}"', len(lines))


def test_unexpected_eof_expecting_semicolon(conf_test):
    text = make(top="worker_connections 5")
    g, r = conf_test(text.rstrip("\n"))
    assert_failed(g, r, 'unexpected end of file, expecting ";" or "}"')


def test_missing_include(conf_test):
    text = make(mail="    include missing.conf;")
    g, r = conf_test(text)
    assert r.returncode == 1, r.stderr
    missing = f"{g.confdir}/missing.conf"
    lines = [l for l in r.stderr.splitlines()
             if f'open() "{missing}" failed (2: No such file or directory)'
             in l]
    assert lines, r.stderr
    assert f"{g.conf_path}:{line_of(text, 'missing.conf')}" in lines[0], \
        r.stderr


def test_error_inside_included_file(conf_test):
    text = make(mail="    include extra.conf;")
    g, r = conf_test(text, files={
        "extra.conf": "# first line\n    bogus_directive on;\n"})
    assert_failed(g, r, 'unknown directive "bogus_directive"', 2,
                  path=f"{g.confdir}/extra.conf")


NO_LOGIN = ('no client can log in to this server: "smtp_auth_require_tls" '
            'is on (the default) and it has neither "starttls" nor a '
            '"listen ... ssl"; add TLS, or set "smtp_auth_require_tls off" '
            'on a trusted network')


def test_warns_when_no_client_can_log_in(conf_test):
    """An nginx mail block without TLS, brought over as it is: every AUTH
    would be refused, and -t says so at the server block, without
    failing (the configuration is legal)."""
    text = make(server="server_name plain.test;").replace(
        "    smtp_auth_require_tls off;\n", "")
    g, r = conf_test(text)
    assert r.returncode == 0, r.stderr
    line = line_of(text, "    server {")
    assert re.search(r"\[warn\] .*" + re.escape(
        f"{g.conf_path}:{line}: {NO_LOGIN}"), r.stderr), r.stderr
    assert r.stderr.count("no client can log in") == 1, r.stderr
    assert "test is successful" in r.stderr


@pytest.mark.parametrize("case", ["require_tls off", "auth none only",
                                  "starttls", "listen ssl"])
def test_no_login_warning_when_a_login_is_possible(conf_test, case):
    text = make()
    if case == "auth none only":
        text = make(server="smtp_auth none;")
    if case in ("starttls", "listen ssl"):
        if not pkilib.tls_built():
            pytest.skip("built without the ssl module")
        pki = pkilib.shared()
        tls = (f"ssl_certificate {pki.cert('mx.test')};\n"
               f"        ssl_certificate_key {pki.key('mx.test')};\n")
        tls += ("        starttls on;" if case == "starttls" else
                "        listen 127.0.0.1:@PORTB2@ ssl;")
        text = make(server=tls)
    if case != "require_tls off":
        text = text.replace("    smtp_auth_require_tls off;\n", "")
    g, r = conf_test(text.replace("@PORTB2@", str(net.free_port())))
    assert r.returncode == 0, r.stderr
    assert "no client can log in" not in r.stderr, r.stderr


@pytest.mark.parametrize("where,old,new", [
    ("proxy_pass", "proxy_pass 127.0.0.1:", "proxy_pass 127.1:"),
    ("proxy_pass", "proxy_pass 127.0.0.1:", "proxy_pass 0127.0.0.1:"),
    ("listen", "listen 127.0.0.1:", "listen 0x7f.0.0.1:")])
def test_ipv4_address_in_a_form_only_inet_aton_takes(conf_test, where, old,
                                                     new):
    """127.1 or an octal or hex part: getaddrinfo() would read them (as
    127.0.0.1, or 0127 as 87), which is never what was meant."""
    text = make().replace(old, new)
    g, r = conf_test(text)
    assert_failed(g, r, "invalid IPv4 address (four decimal numbers, 0 to "
                  "255, without leading zeros) in ",
                  line=line_of(text, new))
    assert f'of the "{where}" directive' in r.stderr, r.stderr


def test_server_without_listen(conf_test):
    """No client could reach it: an error, as in nginx."""
    text = make(mail="    server {\n        server_name lost.test;\n"
                     "    }")
    g, r = conf_test(text)
    assert_failed(g, r, 'no "listen" is defined for this server',
                  line_of(text, "    server {"))


def test_missing_users_file(conf_test):
    text = make().replace("auth_file users;", "auth_file no-such-users;")
    g, r = conf_test(text)
    assert r.returncode == 1, r.stderr
    assert f"{g.confdir}/no-such-users" in r.stderr, r.stderr
    assert "test failed" in r.stderr


@pytest.mark.parametrize("bad", ["nocolonhere", "frank:", ":hash-without-user"])
def test_malformed_users_file_line(conf_test, users, bad):
    good = users[1].splitlines()
    text = "\n".join(good[:2] + [bad] + good[2:]) + "\n"
    g, r = conf_test(make(), users_text=text)
    assert r.returncode == 1, r.stderr
    assert f"{g.confdir}/users:3:" in r.stderr, r.stderr


@pytest.mark.parametrize("bad", [
    # cut off: the hash part is shorter than its scheme makes
    "frank:$y$j9T$5c.vbbUqRvaqygTIZvmaW/$WIY90CHZoKi6XaiAfUD",
    "frank:$6$e97e7Rjoqzzo3UPB$KPEdrnhnTwoHFYAoxXqgeId53nZafxYoO",
    "frank:$2b$05$bkzk.Pelut09pT0tuT7Mc.rXTpJ8LkdN.cptUpl",
    # a setting (salt) with no hash at all
    "frank:$6$e97e7Rjoqzzo3UPB",
    "frank:$y$j9T$5c.vbbUqRvaqygTIZvmaW/",
    "frank:$2b$05$",
])
def test_cut_off_hash_in_users_file(conf_test, users, bad):
    """libcrypt's crypt_checksalt() looks at the setting only: a hash cut
    short by a copy and paste would load, and its user would then be
    refused with every password, the log saying only "password
    mismatch".  It is a malformed hash, refused when the file loads."""
    good = users[1].splitlines()
    text = "\n".join(good[:2] + [bad] + good[2:]) + "\n"
    g, r = conf_test(make(), users_text=text)
    assert r.returncode == 1, r.stderr
    assert (f"{g.confdir}/users:3: malformed or disabled password hash"
            in r.stderr), r.stderr


def test_config_error_prevents_start(smtpgate):
    g = smtpgate(make(mail="    foo bar;"), start=False)
    g.allow(r'\[emerg\] .*unknown directive "foo"')
    g.expected_returncodes = {1}
    g.start(wait=False)
    assert g.wait_exit(60) == 1
    # The error is on stderr (the error log may not be open yet).
    err = open(g.stderr_path).read() + g.error_log()
    assert 'unknown directive "foo"' in err


def test_missing_proxy_pass_is_an_error(conf_test):
    text = make().replace("    proxy_pass 127.0.0.1:@PORTB@;\n", "")
    g, r = conf_test(text)
    assert r.returncode == 1, r.stderr
    assert "proxy_pass" in r.stderr, r.stderr


def test_relative_paths(smtpgate, backend):
    """pid and error_log are relative to the prefix, auth_file to the
    directory of the config; the working directory plays no part."""
    g = smtpgate(gatelib.conf(backend=backend))
    assert os.path.exists(os.path.join(g.prefix, "logs", "error.log"))
    with open(os.path.join(g.prefix, "logs", "smtpgate.pid")) as f:
        assert int(f.read().strip()) == g.pid
    assert os.listdir(g.cwd) == []


def test_listen_options(smtpgate, backend):
    g = smtpgate(gatelib.conf(backend=backend, workers=2,
                              listen=("127.0.0.1:@PORT@ backlog=64 reuseport",)))
    for _ in range(4):
        with g.session() as c:
            c.ehlo()
            assert c.auth_plain("alice", password("alice")).code == 235


def test_error_log_to_stderr(smtpgate, backend):
    text = gatelib.conf(backend=backend).replace(
        "error_log logs/error.log info;", "error_log stderr info;")
    g = smtpgate(text)
    with g.session() as c:
        c.ehlo()
        assert c.auth_plain("alice", "wrong").code == 535
    net.wait_until(lambda: "client: 127.0.0.1" in open(g.stderr_path).read(),
                   30, what="session lines on stderr")


def test_include_inside_upstream_block(conf_test):
    """include works in any context (directives.md), the upstream block
    included: its servers may come from a file of their own."""
    text = make(mail="    upstream pool {\n        include pool.conf;\n"
                     "    }\n").replace("proxy_pass 127.0.0.1:@PORTB@;",
                                       "proxy_pass pool;")
    g, r = conf_test(text, files={
        "pool.conf": "# first line\nserver 127.0.0.1:25;\n"
                     "server 127.0.0.1:26;\n"})
    assert r.returncode == 0, r.stderr
    g, r = conf_test(text, files={
        "pool.conf": "# first line\nserver 127.0.0.1:25 colour=red;\n"})
    assert_failed(g, r, 'invalid', 2, path=f"{g.confdir}/pool.conf")


def test_include_mask_in_missing_directory(conf_test):
    """A mask in a directory that does not exist is an error (an empty
    directory is not)."""
    text = make(mail="    include nowhere/*.conf;")
    g, r = conf_test(text)
    assert_failed(g, r, f'include "{g.confdir}/nowhere/*.conf": no '
                        f'directory "{g.confdir}/nowhere" (2: No such file',
                  line_of(text, "nowhere"))
    os.makedirs(os.path.join(g.confdir, "nowhere"))
    r = g.ctl("-t")
    assert r.returncode == 0, r.stderr
