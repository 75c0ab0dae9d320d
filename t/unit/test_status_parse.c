/*
 * test_status_parse.c: unit tests for the status listener's request
 * head: where it ends, and its request line.
 */
#include "sg_core.h"
#include "sg_status_parse.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

static size_t
head_len(const char *s, size_t n)
{
    return sg_status_head_len(sg_test_bytes(s, n), n);
}

static int
parse(const char *s, size_t n, sg_status_request_t *r)
{
    memset(r, 0x5a, sizeof(*r));
    return sg_status_parse_request(sg_test_bytes(s, n), n, r);
}

static void
test_head_end(void)
{
    CHECK_UINT(head_len(LIT("GET / HTTP/1.1\r\n\r\n")), 18);
    CHECK_UINT(head_len(LIT("GET / HTTP/1.1\n\n")), 16);
    CHECK_UINT(head_len(LIT("GET / HTTP/1.1\r\nHost: a\r\n\r\nbody")), 27);
    CHECK_UINT(head_len(LIT("GET / HTTP/1.1\n\r\n")), 17);
    CHECK_UINT(head_len(LIT("GET / HTTP/1.1\r\n")), 0);
    CHECK_UINT(head_len(LIT("GET / HTTP/1.1\r\n\r")), 0);
    CHECK_UINT(head_len(LIT("GET / HTTP/1.1\r\r\r\r")), 0);
    CHECK_UINT(head_len(LIT("")), 0);
    CHECK_UINT(head_len(LIT("\n\n")), 2);
}

static void
test_request_line(void)
{
    sg_status_request_t  r;

    CHECK_INT(parse(LIT("GET /metrics HTTP/1.1\r\n\r\n"), &r), SG_OK);
    CHECK_UINT(r.method, SG_STATUS_GET);
    CHECK_STR(r.path, "/metrics");
    CHECK_INT(parse(LIT("HEAD /status?x=1&y HTTP/1.0\n\n"), &r), SG_OK);
    CHECK_UINT(r.method, SG_STATUS_HEAD);
    CHECK_STR(r.path, "/status");
    CHECK_INT(parse(LIT("POST / HTTP/1.1\r\n\r\n"), &r), SG_OK);
    CHECK_UINT(r.method, SG_STATUS_POST);
    CHECK_STR(r.path, "/");
    CHECK_INT(parse(LIT("PUT / HTTP/1.1\r\n\r\n"), &r), SG_OK);
    CHECK_UINT(r.method, SG_STATUS_OTHER);
    CHECK_INT(parse(LIT("POSTS / HTTP/1.1\r\n\r\n"), &r), SG_OK);
    CHECK_UINT(r.method, SG_STATUS_OTHER);
    CHECK_INT(parse(LIT("GET /? HTTP/1.1\r\n\r\n"), &r), SG_OK);
    CHECK_STR(r.path, "/");
    /* lower case is another method, as HTTP says */
    CHECK_INT(parse(LIT("get / HTTP/1.1\r\n\r\n"), &r), SG_OK);
    CHECK_UINT(r.method, SG_STATUS_OTHER);
}

static void
test_bad_request_lines(void)
{
    sg_status_request_t  r;
    static const char   *bad[] = {
        "GET /metrics\r\n\r\n",
        "GET /metrics HTTP/2.0\r\n\r\n",
        "GET /metrics HTTP/1.1 \r\n\r\n",
        "GET  /metrics HTTP/1.1\r\n\r\n",
        "GET metrics HTTP/1.1\r\n\r\n",
        "GET http://x/metrics HTTP/1.1\r\n\r\n",
        " GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.10\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\n\r\n",
        "GET /\xff HTTP/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET / http/1.1\r\n\r\n",
        "hello\r\n\r\n",
        "\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\n\n",
        "GET / HTTP/1.1",
    };
    size_t               i;

    for (i = 0; i < sg_nelems(bad); i++) {
        if (CHECK_INT(parse(bad[i], strlen(bad[i]), &r), SG_ERROR)) {
            sg_test_show("line", bad[i], strlen(bad[i]));
        }
    }
    /* a NUL in the method */
    CHECK_INT(parse(LIT("GE\0T / HTTP/1.1\r\n\r\n"), &r), SG_ERROR);
}

/* sg_hex_digit (core), which the path's escapes are read with: every
 * byte against the digits' own values. */
static void
test_hex_digit(void)
{
    static const char  digits[] = "0123456789abcdef";
    const char        *d;
    int                c, want;

    for (c = 0; c < 256; c++) {
        d = c ? strchr(digits, c >= 'A' && c <= 'F' ? c | 0x20 : c) : NULL;
        want = d ? (int) (d - digits) : -1;
        CHECK_INT(sg_hex_digit((u_char) c), want);
    }
}

static int
peer_path(const char *s, sg_status_peer_path_t *out)
{
    static u_char  buf[512];
    sg_str_t       path;

    path.len = strlen(s);
    path.data = sg_test_bytes(s, path.len);
    memset(out, 0x5a, sizeof(*out));
    return sg_status_parse_peer_path(&path, buf, out);
}

static void
test_peer_path(void)
{
    sg_status_peer_path_t  p;

    CHECK_INT(peer_path("/upstreams/pool/10.0.0.5:25/drain", &p), SG_OK);
    CHECK_STR(p.upstream, "pool");
    CHECK_STR(p.peer, "10.0.0.5:25");
    CHECK_STR(p.action, "drain");
    CHECK_INT(peer_path("/upstreams/pool/%5B::1%5d:25/ready", &p), SG_OK);
    CHECK_STR(p.peer, "[::1]:25");
    CHECK_STR(p.action, "ready");
    /* the peer may hold slashes; the first and last raw ones split */
    CHECK_INT(peer_path("/upstreams/g/spool:/var/q/new/drain", &p), SG_OK);
    CHECK_STR(p.upstream, "g");
    CHECK_STR(p.peer, "spool:/var/q/new");
    CHECK_STR(p.action, "drain");
    /* an escaped slash is part of a name */
    CHECK_INT(peer_path("/upstreams/a%2Fb/p/x", &p), SG_OK);
    CHECK_STR(p.upstream, "a/b");
    CHECK_STR(p.peer, "p");
    CHECK_INT(peer_path("/upstreams/%41/%42/%43", &p), SG_OK);
    CHECK_STR(p.upstream, "A");
    CHECK_STR(p.peer, "B");
    CHECK_STR(p.action, "C");

    CHECK_INT(peer_path("/upstreams/", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool//drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p/", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams//p/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstream/pool/p/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p%/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p%4/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p%zz/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p/drain%", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p/drain%0", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p%00/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p%0a/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p%7F/drain", &p), SG_ERROR);
    CHECK_INT(peer_path("/upstreams/pool/p/%2/", &p), SG_ERROR);
}

static int
queue_path(const char *s, sg_str_t *id, sg_status_queue_action_e *action)
{
    sg_str_t  path;

    path.len = strlen(s);
    path.data = sg_test_bytes(s, path.len);
    memset(id, 0x5a, sizeof(*id));
    *action = 0;
    return sg_status_parse_queue_path(&path, id, action);
}

static void
test_queue_path(void)
{
    sg_status_queue_action_e  a;
    sg_str_t                  id;
    char                      longest[200];

    CHECK_INT(queue_path("/queue/flush", &id, &a), SG_OK);
    CHECK_INT(a, SG_QUEUE_FLUSH);
    CHECK_INT((int) id.len, 0);
    CHECK_INT(queue_path("/queue/1796654461M419151P18334Q1/remove", &id,
                         &a), SG_OK);
    CHECK_INT(a, SG_QUEUE_REMOVE);
    CHECK_STR(id, "1796654461M419151P18334Q1");
    CHECK_INT(queue_path("/queue/abc/hold", &id, &a), SG_OK);
    CHECK_INT(a, SG_QUEUE_HOLD);
    CHECK_STR(id, "abc");
    CHECK_INT(queue_path("/queue/Z9/release", &id, &a), SG_OK);
    CHECK_INT(a, SG_QUEUE_RELEASE);
    CHECK_STR(id, "Z9");
    /* the longest id taken, and one more */
    memset(longest, 'a', sizeof(longest));
    memcpy(longest, "/queue/", 7);
    strcpy(longest + 7 + SG_STATUS_QUEUE_ID, "/hold");
    CHECK_INT(queue_path(longest, &id, &a), SG_OK);
    CHECK_INT((int) id.len, SG_STATUS_QUEUE_ID);
    memset(longest, 'a', sizeof(longest));
    memcpy(longest, "/queue/", 7);
    strcpy(longest + 8 + SG_STATUS_QUEUE_ID, "/hold");
    CHECK_INT(queue_path(longest, &id, &a), SG_ERROR);

    CHECK_INT(queue_path("/queue/", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/flush/", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/flushx", &id, &a), SG_OK);   /* an id */
    CHECK_INT(a, SG_QUEUE_SHOW);
    CHECK_INT(queue_path("/queue/x/flush", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue//hold", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/x/", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/x", &id, &a), SG_OK);
    CHECK_INT(a, SG_QUEUE_SHOW);
    CHECK_STR(id, "x");
    CHECK_INT(queue_path("/queue/1796654461M419151P18334Q1", &id, &a),
              SG_OK);
    CHECK_INT(a, SG_QUEUE_SHOW);
    CHECK_STR(id, "1796654461M419151P18334Q1");
    CHECK_INT(queue_path("/queue/x.y", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/x/delete", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/x/Hold", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/x/hold/", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/x/hold/release", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/no.such/remove", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/%41/remove", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queue/a-b/remove", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/queues/x/hold", &id, &a), SG_ERROR);
    CHECK_INT(queue_path("/upstreams/x/hold", &id, &a), SG_ERROR);
}

static size_t
field(const char *s, const char **name, const char **value)
{
    static char  nbuf[256], vbuf[256];
    sg_str_t     n, v;
    size_t       used;
    u_char       out[256];

    used = sg_status_header_field(sg_test_bytes(s, strlen(s)), strlen(s),
                                  &n, &v);
    snprintf(nbuf, sizeof(nbuf), "%.*s", (int) n.len,
             n.data ? (char *) n.data : "");
    *name = n.data ? nbuf : NULL;
    if (used) {
        CHECK(v.len < sizeof(out));
        snprintf(vbuf, sizeof(vbuf), "%.*s",
                 (int) sg_status_header_unfold(&v, out), (char *) out);
    } else {
        vbuf[0] = '\0';
    }
    *value = vbuf;
    return used;
}

static void
test_header_fields(void)
{
    const char  *n, *v;

    CHECK_INT((int) field("Subject: hi\r\nFrom: x\r\n", &n, &v), 13);
    CHECK(n && strcmp(n, "Subject") == 0 && strcmp(v, "hi") == 0);
    /* folded, then unfolded; blanks trimmed */
    CHECK_INT((int) field("Subject:  a\r\n\tb \r\n c\r\nX: y\r\n", &n,
                          &v), 22);
    CHECK(strcmp(n, "Subject") == 0 && strcmp(v, "a\tb  c") == 0);
    /* bare LF line ends */
    CHECK_INT((int) field("A: 1\nB: 2\n", &n, &v), 5);
    CHECK(strcmp(n, "A") == 0 && strcmp(v, "1") == 0);
    /* no colon: not a field, but a line all the same */
    CHECK_INT((int) field("garbage line\r\nA: 1\r\n", &n, &v), 14);
    CHECK(n == NULL && strcmp(v, "garbage line") == 0);
    /* empty name, empty value */
    CHECK_INT((int) field(":\r\nA: 1\r\n", &n, &v), 3);
    CHECK(n && n[0] == '\0' && v[0] == '\0');
    /* a colon on a continuation line does not make a name */
    CHECK_INT((int) field("Foo\r\n bar: x\r\nA: 1\r\n", &n, &v), 14);
    CHECK(n == NULL && strcmp(v, "Foo bar: x") == 0);
    /* the end of the section */
    CHECK_INT((int) field("\r\nbody\r\n", &n, &v), 0);
    CHECK_INT((int) field("\nbody\n", &n, &v), 0);
    /* not whole: no line end, or a continuation may follow */
    CHECK_INT((int) field("Subject: cut", &n, &v), 0);
    CHECK_INT((int) field("Subject: cut\r\n", &n, &v), 0);
    CHECK_INT((int) field("", &n, &v), 0);
    CHECK_INT((int) field("\r", &n, &v), 0);
}

int
main(void)
{
    sg_test_start();

    RUN(test_head_end);
    RUN(test_request_line);
    RUN(test_bad_request_lines);
    RUN(test_hex_digit);
    RUN(test_peer_path);
    RUN(test_queue_path);
    RUN(test_header_fields);

    return sg_test_finish();
}
