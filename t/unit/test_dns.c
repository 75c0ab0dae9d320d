/*
 * test_dns.c: unit tests for DNS queries and answers (core/sg_dns.c).
 *
 * Queries are checked byte for byte; answers are built here the way
 * name servers send them (compression, CNAME chains, records in any
 * order) and then broken: cut at every length, pointers that loop or
 * point forwards, labels too long, counts beyond the data, another
 * question, a query instead of a response.  The parser must refuse or
 * skip, never read past the message (the ASan build checks that).
 */
#include "sg_core.h"
#include "sg_dns.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)
#define HN(s)  (const u_char *) (s), (sizeof(s) - 1)

typedef struct {
    u_char  b[1024];
    size_t  n;
} msg_t;

static void
put(msg_t *m, const void *p, size_t n)
{
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void
put16(msg_t *m, unsigned v)
{
    u_char  b[2] = { (u_char) (v >> 8), (u_char) v };

    put(m, b, 2);
}

static void
put32(msg_t *m, uint32_t v)
{
    put16(m, v >> 16);
    put16(m, v & 0xffff);
}

static void
put_name(msg_t *m, const char *name)
{
    const char  *dot;
    size_t       len;

    while (*name) {
        dot = strchr(name, '.');
        len = dot ? (size_t) (dot - name) : strlen(name);
        m->b[m->n++] = (u_char) len;
        put(m, name, len);
        name += len + (dot ? 1 : 0);
    }
    m->b[m->n++] = 0;
}

/* A response header and the question (name, type). */
static void
start(msg_t *m, uint16_t id, unsigned flags, unsigned ancount,
    const char *name, uint16_t type)
{
    m->n = 0;
    put16(m, id);
    put16(m, flags);
    put16(m, 1);
    put16(m, ancount);
    put16(m, 0);
    put16(m, 0);
    put_name(m, name);
    put16(m, type);
    put16(m, 1);
}

static void
rr_head(msg_t *m, uint16_t type, uint32_t ttl, size_t rdlen)
{
    put16(m, type);
    put16(m, 1);
    put32(m, ttl);
    put16(m, (unsigned) rdlen);
}

static int
parse(const msg_t *m, const char *name, uint16_t type, sg_dns_answer_t *a,
    const char **err)
{
    sg_str_t  q;
    u_char   *copy = sg_test_bytes(m->b, m->n);

    q.data = (u_char *) name;
    q.len = strlen(name);
    *err = NULL;
    return sg_dns_parse(copy, m->n, &q, type, a, err);
}

static void
test_arpa(void)
{
    struct sockaddr_in   sin;
    struct sockaddr_in6  sin6;
    u_char               buf[SG_DNS_NAME_MAX];
    size_t               n;
    sg_str_t             s;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    inet_pton(AF_INET, "192.0.2.10", &sin.sin_addr);
    n = sg_dns_arpa_name((struct sockaddr *) &sin, buf);
    s.data = buf;
    s.len = n;
    CHECK_STR(s, "10.2.0.192.in-addr.arpa");

    memset(&sin6, 0, sizeof(sin6));
    sin6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::567:89ab", &sin6.sin6_addr);
    s.len = sg_dns_arpa_name((struct sockaddr *) &sin6, buf);
    CHECK_STR(s, "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0."
                 "1.0.0.2.ip6.arpa");

    inet_pton(AF_INET6, "::ffff:198.51.100.7", &sin6.sin6_addr);
    s.len = sg_dns_arpa_name((struct sockaddr *) &sin6, buf);
    CHECK_STR(s, "7.100.51.198.in-addr.arpa");
}

static void
test_query(void)
{
    static const u_char  want[] = {
        0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
        4, 'm', 'a', 'i', 'l', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3,
        'o', 'r', 'g', 0, 0, 1, 0, 1
    };
    u_char    buf[300];
    sg_str_t  name;
    char      big[300];

    name.data = (u_char *) "mail.example.org";
    name.len = 16;
    CHECK_MEM(buf, sg_dns_query(buf, sizeof(buf), 0xbeef, &name, SG_DNS_A),
              want, sizeof(want));
    /* too small a buffer */
    CHECK_UINT(sg_dns_query(buf, 20, 1, &name, SG_DNS_A), 0);

    /* not domain names */
    name.data = (u_char *) "a..b";
    name.len = 4;
    CHECK_UINT(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A), 0);
    name.data = (u_char *) ".a";
    name.len = 2;
    CHECK_UINT(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A), 0);
    name.data = (u_char *) "a.";
    CHECK_UINT(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A), 0);
    name.len = 0;
    CHECK_UINT(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A), 0);
    memset(big, 'a', 64);
    name.data = (u_char *) big;
    name.len = 64;                      /* a label of 64 */
    CHECK_UINT(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A), 0);
    name.len = 63;
    CHECK(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A) != 0);
    memset(big, 'a', sizeof(big));
    for (size_t i = 63; i < sizeof(big); i += 64) {
        big[i] = '.';
    }
    name.len = 254;                     /* over 253 in text */
    CHECK_UINT(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A), 0);
    name.len = 253;
    CHECK(sg_dns_query(buf, sizeof(buf), 1, &name, SG_DNS_A) != 0);
}

static void
test_edns(void)
{
    static const u_char  opt[] = {
        0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0    /* payload 1232 */
    };
    u_char    buf[300], orig[300];
    size_t    len, with;
    sg_str_t  name;

    name.data = (u_char *) "mail.example.org";
    name.len = 16;
    len = sg_dns_query(buf, sizeof(buf), 0xbeef, &name, SG_DNS_A);
    memcpy(orig, buf, len);
    with = sg_dns_add_edns(buf, len, sizeof(buf));
    CHECK_UINT(with, len + SG_DNS_OPT_LEN);
    CHECK_UINT(buf[10] * 256 + buf[11], 1);            /* ARCOUNT */
    CHECK(memcmp(buf + len, opt, sizeof(opt)) == 0);
    CHECK(memcmp(buf + 12, orig + 12, len - 12) == 0);
    /* once only */
    CHECK_UINT(sg_dns_add_edns(buf, with, sizeof(buf)), with);
    /* no room: the query as it is */
    memcpy(buf, orig, len);
    CHECK_UINT(sg_dns_add_edns(buf, len, len + SG_DNS_OPT_LEN - 1), len);
    CHECK(memcmp(buf, orig, len) == 0);
    CHECK_UINT(sg_dns_add_edns(buf, 5, sizeof(buf)), 5);

    /* and off again: the original query */
    with = sg_dns_add_edns(buf, len, sizeof(buf));
    CHECK_UINT(sg_dns_drop_edns(buf, with), len);
    CHECK(memcmp(buf, orig, len) == 0);
    /* nothing to drop */
    CHECK_UINT(sg_dns_drop_edns(buf, len), len);
    CHECK_UINT(sg_dns_drop_edns(buf, 5), 5);
}

static void
test_ptr_answer(void)
{
    msg_t            m;
    sg_dns_answer_t  a;
    const char      *err;
    size_t           q = 12;

    start(&m, 7, 0x8180, 1, "2.0.0.127.in-addr.arpa", SG_DNS_PTR);
    put16(&m, 0xc000 | q);               /* the question's name */
    rr_head(&m, SG_DNS_PTR, 300, 13);
    put_name(&m, "client.test");
    CHECK_INT(parse(&m, "2.0.0.127.in-addr.arpa", SG_DNS_PTR, &a, &err),
              SG_OK);
    CHECK_INT(a.rcode, SG_DNS_NOERROR);
    CHECK_UINT(a.n, 1);
    CHECK_MEM(a.name, a.name_len, "client.test", 11);
    CHECK_UINT(a.ttl, 300);
    CHECK_INT(sg_dns_id(m.b, m.n), 7);

    /* names compare without regard to case */
    CHECK_INT(parse(&m, "2.0.0.127.IN-ADDR.ARPA", SG_DNS_PTR, &a, &err),
              SG_OK);
    CHECK_UINT(a.n, 1);

    /* another question, another type */
    CHECK_INT(parse(&m, "3.0.0.127.in-addr.arpa", SG_DNS_PTR, &a, &err),
              SG_ERROR);
    CHECK(err && strstr(err, "another question"));
    CHECK_INT(parse(&m, "2.0.0.127.in-addr.arpa", SG_DNS_A, &a, &err),
              SG_ERROR);

    /* a query, not a response; an opcode other than QUERY */
    m.b[2] = 0x01;
    CHECK_INT(parse(&m, "2.0.0.127.in-addr.arpa", SG_DNS_PTR, &a, &err),
              SG_ERROR);
    m.b[2] = 0x81 | 0x08;
    CHECK_INT(parse(&m, "2.0.0.127.in-addr.arpa", SG_DNS_PTR, &a, &err),
              SG_ERROR);
}

static void
test_a_answer_with_cname(void)
{
    msg_t            m;
    sg_dns_answer_t  a;
    const char      *err;
    size_t           i;

    /* the A records come before the CNAME that leads to them, and one
     * A record of another name sits among them */
    start(&m, 1, 0x8180, 5, "mail.test", SG_DNS_A);
    put_name(&m, "real.test");
    rr_head(&m, SG_DNS_A, 60, 4);
    put(&m, "\x7f\0\0\x02", 4);
    put_name(&m, "other.test");
    rr_head(&m, SG_DNS_A, 60, 4);
    put(&m, "\x7f\0\0\x09", 4);
    put_name(&m, "real.test");
    rr_head(&m, SG_DNS_A, 30, 4);
    put(&m, "\x7f\0\0\x03", 4);
    put_name(&m, "real.test");
    rr_head(&m, SG_DNS_A, 30, 5);          /* not an A record's length */
    put(&m, "\x7f\0\0\x04\x00", 5);
    put16(&m, 0xc000 | 12);
    rr_head(&m, SG_DNS_CNAME, 120, 11);
    put_name(&m, "real.test");
    CHECK_INT(parse(&m, "mail.test", SG_DNS_A, &a, &err), SG_OK);
    CHECK_UINT(a.n, 2);
    CHECK_UINT(a.naddrs, 2);
    CHECK_MEM(a.addrs[0], 4, "\x7f\0\0\x02", 4);
    CHECK_MEM(a.addrs[1], 4, "\x7f\0\0\x03", 4);
    CHECK_UINT(a.ttl, 30);

    /* a CNAME loop ends after SG_DNS_CNAMES_MAX hops with nothing */
    start(&m, 1, 0x8180, 2, "a.test", SG_DNS_A);
    put_name(&m, "a.test");
    rr_head(&m, SG_DNS_CNAME, 60, 8);
    put_name(&m, "b.test");
    put_name(&m, "b.test");
    rr_head(&m, SG_DNS_CNAME, 60, 8);
    put_name(&m, "a.test");
    CHECK_INT(parse(&m, "a.test", SG_DNS_A, &a, &err), SG_OK);
    CHECK_UINT(a.n, 0);

    /* more addresses than kept */
    start(&m, 1, 0x8180, 20, "many.test", SG_DNS_A);
    for (i = 0; i < 20; i++) {
        put16(&m, 0xc000 | 12);
        rr_head(&m, SG_DNS_A, 60, 4);
        put(&m, "\x0a\0\0", 3);
        m.b[m.n++] = (u_char) i;
    }
    CHECK_INT(parse(&m, "many.test", SG_DNS_A, &a, &err), SG_OK);
    CHECK_UINT(a.n, 20);
    CHECK_UINT(a.naddrs, SG_DNS_ADDRS_MAX);
}

static void
test_errors_and_truncation(void)
{
    msg_t            m;
    sg_dns_answer_t  a;
    const char      *err;
    size_t           n, full;

    start(&m, 1, 0x8183, 0, "x.test", SG_DNS_A);
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), SG_OK);
    CHECK_INT(a.rcode, SG_DNS_NXDOMAIN);
    CHECK_UINT(a.n, 0);

    /* ANCOUNT beyond the data: malformed, unless TC says it was cut */
    start(&m, 1, 0x8180, 3, "x.test", SG_DNS_A);
    put16(&m, 0xc000 | 12);
    rr_head(&m, SG_DNS_A, 60, 4);
    put(&m, "\x7f\0\0\x02", 4);
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), SG_ERROR);
    m.b[2] |= 0x02;
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), SG_OK);
    CHECK(a.truncated);
    CHECK_UINT(a.n, 1);

    /* cut at every length: never a crash, never a record half read */
    start(&m, 1, 0x8180, 1, "x.test", SG_DNS_A);
    put16(&m, 0xc000 | 12);
    rr_head(&m, SG_DNS_A, 60, 4);
    put(&m, "\x7f\0\0\x02", 4);
    full = m.n;
    for (n = 0; n < full; n++) {
        m.n = n;
        if (parse(&m, "x.test", SG_DNS_A, &a, &err) == SG_OK) {
            CHECK_UINT(a.n, 0);
        }
    }
}

static void
chain(size_t links, int rc)
{
    msg_t            m;
    sg_dns_answer_t  a;
    const char      *err;
    size_t           i, prev = 12, last = 0;

    start(&m, 1, 0x8180, 2, "x.test", SG_DNS_A);
    put16(&m, 0xc000 | 12);
    rr_head(&m, 99, 60, 2 * links);
    for (i = 0; i < links; i++) {
        last = m.n;
        put16(&m, 0xc000 | prev);
        prev = last;
    }
    put16(&m, 0xc000 | last);
    rr_head(&m, SG_DNS_A, 60, 4);
    put(&m, "\x7f\0\0\x02", 4);
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), rc);
    if (rc == SG_OK) {
        CHECK_UINT(a.n, 1);
    }
}

static void
test_hostile_names(void)
{
    msg_t            m;
    sg_dns_answer_t  a;
    const char      *err;
    size_t           at, i;

    /* an owner name pointing at itself */
    start(&m, 1, 0x8180, 1, "x.test", SG_DNS_A);
    at = m.n;
    put16(&m, 0xc000 | at);
    rr_head(&m, SG_DNS_A, 60, 4);
    put(&m, "\x7f\0\0\x02", 4);
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), SG_ERROR);

    /* pointing forwards */
    start(&m, 1, 0x8180, 1, "x.test", SG_DNS_A);
    put16(&m, 0xc000 | (m.n + 12));
    rr_head(&m, SG_DNS_A, 60, 4);
    put(&m, "\x7f\0\0\x02", 4);
    put_name(&m, "x.test");
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), SG_ERROR);

    /* the reserved label types 0x40 and 0x80 */
    start(&m, 1, 0x8180, 1, "x.test", SG_DNS_A);
    m.b[m.n++] = 0x41;
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), SG_ERROR);

    /* chains of pointers, each one back to the one before: 30 are
     * read, 36 are too many (the chain sits in an unknown record) */
    chain(30, SG_OK);
    chain(SG_DNS_JUMPS_MAX + 4, SG_ERROR);

    /* a name of over 255 bytes on the wire, built from pointers to
     * labels of 63 */
    m.n = 0;
    put16(&m, 1);
    put16(&m, 0x8180);
    put16(&m, 1);
    put16(&m, 0);
    put16(&m, 0);
    put16(&m, 0);
    for (i = 0; i < 5; i++) {
        m.b[m.n++] = 63;
        memset(m.b + m.n, 'a', 63);
        m.n += 63;
    }
    m.b[m.n++] = 0;
    put16(&m, SG_DNS_A);
    put16(&m, 1);
    CHECK_INT(parse(&m, "x.test", SG_DNS_A, &a, &err), SG_ERROR);

    /* a PTR whose name has a space or a CR: skipped, not taken */
    start(&m, 1, 0x8180, 2, "2.0.0.127.in-addr.arpa", SG_DNS_PTR);
    put16(&m, 0xc000 | 12);
    rr_head(&m, SG_DNS_PTR, 60, 12);
    put(&m, "\x05" "ev\r\nl" "\x04" "test" "\x00", 12);
    put16(&m, 0xc000 | 12);
    rr_head(&m, SG_DNS_PTR, 60, 12);
    put(&m, "\x05" "ok.ok" "\x04" "test" "\x00", 12);
    CHECK_INT(parse(&m, "2.0.0.127.in-addr.arpa", SG_DNS_PTR, &a, &err),
              SG_OK);
    CHECK_UINT(a.n, 0);

    /* a PTR's name running past its record: skipped */
    start(&m, 1, 0x8180, 1, "2.0.0.127.in-addr.arpa", SG_DNS_PTR);
    put16(&m, 0xc000 | 12);
    rr_head(&m, SG_DNS_PTR, 60, 3);
    put_name(&m, "client.test");
    CHECK_INT(parse(&m, "2.0.0.127.in-addr.arpa", SG_DNS_PTR, &a, &err),
              SG_OK);
    CHECK_UINT(a.n, 0);
}

static void
test_host_names(void)
{
    CHECK(sg_dns_host_name_ok(HN("mail.example.org")));
    CHECK(sg_dns_host_name_ok(HN("localhost")));
    CHECK(sg_dns_host_name_ok(HN("_srv-1.example")));
    CHECK(sg_dns_host_name_ok(HN("1.2.3.example")));
    CHECK(!sg_dns_host_name_ok(HN("192.0.2.1")));
    CHECK(!sg_dns_host_name_ok(HN("a..b")));
    CHECK(!sg_dns_host_name_ok(HN(".a")));
    CHECK(!sg_dns_host_name_ok(HN("a.")));
    CHECK(!sg_dns_host_name_ok(HN("")));
    CHECK(!sg_dns_host_name_ok(HN("bad name.test")));
    CHECK(!sg_dns_host_name_ok(HN("evil\r\n.test")));
    CHECK(!sg_dns_host_name_ok(HN("x/25.test")));
    CHECK(!sg_dns_host_name_ok((const u_char *) "\xc3\xa9.test", 7));
}

int
main(void)
{
    sg_test_start();

    RUN(test_arpa);
    RUN(test_query);
    RUN(test_edns);
    RUN(test_ptr_answer);
    RUN(test_a_answer_with_cname);
    RUN(test_errors_and_truncation);
    RUN(test_hostile_names);
    RUN(test_host_names);

    return sg_test_finish();
}
