/*
 * test_inet.c: unit tests for the address helpers of core/sg_inet.c
 * that need no name resolution: access-list networks (sg_parse_cidr,
 * sg_cidr_match), printing, and the IPv4 forms refused as addresses.
 */
#include "sg_core.h"
#include "sg_test.h"

static int
cidr(const char *s, sg_cidr_t *out, const char **err)
{
    sg_str_t  t;

    t.len = strlen(s);
    t.data = sg_test_bytes(s, t.len);
    *err = NULL;
    return sg_parse_cidr(&t, out, err);
}

static struct sockaddr_storage *
addr(const char *s)
{
    struct sockaddr_storage  *ss;
    struct sockaddr_in       *sin;
    struct sockaddr_in6      *sin6;

    ss = (struct sockaddr_storage *) sg_test_bytes(NULL, sizeof(*ss));
    if (strcmp(s, "unix:") == 0) {
        ss->ss_family = AF_UNIX;
    } else if (strchr(s, ':')) {
        sin6 = (struct sockaddr_in6 *) ss;
        sin6->sin6_family = AF_INET6;
        CHECK_INT(inet_pton(AF_INET6, s, &sin6->sin6_addr), 1);
    } else {
        sin = (struct sockaddr_in *) ss;
        sin->sin_family = AF_INET;
        CHECK_INT(inet_pton(AF_INET, s, &sin->sin_addr), 1);
    }
    return ss;
}

static bool
match(const char *net, const char *a)
{
    sg_cidr_t    c;
    const char  *err;
    int          rc = cidr(net, &c, &err);

    if (CHECK(rc == SG_OK || rc == SG_DECLINED)) {
        printf("    network \"%s\": %s\n", net, err ? err : "-");
        return false;
    }
    return sg_cidr_match(&c, (struct sockaddr *) addr(a));
}

static void
test_cidr_parse(void)
{
    sg_cidr_t    c;
    const char  *err;

    CHECK_INT(cidr("192.0.2.7", &c, &err), SG_OK);
    CHECK_INT(c.family, AF_INET);
    CHECK_MEM(c.addr, 4, "\xc0\x00\x02\x07", 4);
    CHECK_MEM(c.mask, 4, "\xff\xff\xff\xff", 4);

    CHECK_INT(cidr("10.0.0.0/8", &c, &err), SG_OK);
    CHECK_MEM(c.mask, 4, "\xff\x00\x00\x00", 4);
    CHECK_INT(cidr("172.16.0.0/12", &c, &err), SG_OK);
    CHECK_MEM(c.mask, 4, "\xff\xf0\x00\x00", 4);
    CHECK_INT(cidr("0.0.0.0/0", &c, &err), SG_OK);
    CHECK_MEM(c.mask, 4, "\0\0\0\0", 4);

    CHECK_INT(cidr("2001:db8::/32", &c, &err), SG_OK);
    CHECK_INT(c.family, AF_INET6);
    CHECK_MEM(c.mask, 16, "\xff\xff\xff\xff\0\0\0\0\0\0\0\0\0\0\0\0", 16);
    CHECK_INT(cidr("::1", &c, &err), SG_OK);
    CHECK_MEM(c.mask, 16, "\xff\xff\xff\xff\xff\xff\xff\xff"
                          "\xff\xff\xff\xff\xff\xff\xff\xff", 16);
    CHECK_INT(cidr("::/0", &c, &err), SG_OK);
    CHECK_INT(cidr("2001:db8::1/127", &c, &err), SG_DECLINED);
    CHECK_MEM(c.addr + 15, 1, "\0", 1);

    CHECK_INT(cidr("unix:", &c, &err), SG_OK);
    CHECK_INT(c.family, AF_UNIX);

    /* Bits beyond the prefix are cleared, and said to be. */
    CHECK_INT(cidr("192.0.2.7/24", &c, &err), SG_DECLINED);
    CHECK_MEM(c.addr, 4, "\xc0\x00\x02\x00", 4);
    CHECK_INT(cidr("192.0.2.7/31", &c, &err), SG_DECLINED);
    CHECK_MEM(c.addr, 4, "\xc0\x00\x02\x06", 4);
}

static void
test_cidr_refused(void)
{
    static const struct {
        const char  *in;
        const char  *err;
    } bad[] = {
        { "", "invalid address" },
        { "/24", "invalid address" },
        { "localhost", "invalid address" },
        { "192.0.2", "invalid address" },
        { "192.0.2.256", "invalid address" },
        { "192.0.2.1 ", "invalid address" },
        { "[::1]", "invalid address" },
        { "::1::2", "invalid address" },
        { "unix", "invalid address" },
        { "unix:/tmp/x", "invalid address" },
        { "192.0.2.0/", "invalid prefix length" },
        { "192.0.2.0/33", "invalid prefix length" },
        { "192.0.2.0/024", "invalid prefix length" },
        { "192.0.2.0/-1", "invalid prefix length" },
        { "192.0.2.0/+8", "invalid prefix length" },
        { "192.0.2.0/8/8", "invalid prefix length" },
        { "192.0.2.0/1000", "invalid prefix length" },
        { "::/129", "invalid prefix length" },
        { "::/ 8", "invalid prefix length" },
        { "1111:2222:3333:4444:5555:6666:7777:8888:9999/64",
          "invalid address" },
    };
    sg_cidr_t    c;
    const char  *err;
    size_t       i;

    for (i = 0; i < sg_nelems(bad); i++) {
        if (CHECK_INT(cidr(bad[i].in, &c, &err), SG_ERROR)
            || CHECK(err != NULL && strcmp(err, bad[i].err) == 0))
        {
            printf("    input \"%s\": %s\n", bad[i].in, err ? err : "-");
        }
    }
}

static void
test_cidr_match(void)
{
    CHECK(match("127.0.0.1", "127.0.0.1"));
    CHECK(!match("127.0.0.1", "127.0.0.2"));
    CHECK(match("10.0.0.0/8", "10.255.1.2"));
    CHECK(!match("10.0.0.0/8", "11.0.0.1"));
    CHECK(match("172.16.0.0/12", "172.31.255.255"));
    CHECK(!match("172.16.0.0/12", "172.32.0.0"));
    CHECK(match("0.0.0.0/0", "203.0.113.9"));
    CHECK(!match("0.0.0.0/0", "::1"));
    CHECK(match("192.0.2.7/24", "192.0.2.200"));

    CHECK(match("::1", "::1"));
    CHECK(!match("::1", "::2"));
    CHECK(match("2001:db8::/32", "2001:db8:ffff::1"));
    CHECK(!match("2001:db8::/32", "2001:db9::1"));
    CHECK(match("::/0", "fe80::1"));
    CHECK(!match("::/0", "127.0.0.1"));

    /* IPv4-mapped IPv6 peers meet IPv4 networks, and IPv6 ones that
     * name the mapped form. */
    CHECK(match("127.0.0.0/8", "::ffff:127.0.0.1"));
    CHECK(!match("127.0.0.0/8", "::ffff:128.0.0.1"));
    CHECK(!match("127.0.0.0/8", "::127.0.0.1"));
    CHECK(match("::ffff:0:0/96", "::ffff:10.1.2.3"));

    CHECK(match("unix:", "unix:"));
    CHECK(!match("unix:", "127.0.0.1"));
    CHECK(!match("0.0.0.0/0", "unix:"));
    CHECK(!match("::/0", "unix:"));
}

static void
test_sock_ntop(void)
{
    u_char  text[SG_SOCKADDR_STRLEN];
    size_t  n;

    n = sg_sock_ntop((struct sockaddr *) addr("192.0.2.1"), text,
                     sizeof(text), true);
    CHECK_MEM(text, n, "192.0.2.1:0", 11);
    n = sg_sock_ntop((struct sockaddr *) addr("2001:db8::1"), text,
                     sizeof(text), true);
    CHECK_MEM(text, n, "[2001:db8::1]:0", 15);
    n = sg_sock_ntop((struct sockaddr *) addr("2001:db8::1"), text,
                     sizeof(text), false);
    CHECK_MEM(text, n, "2001:db8::1", 11);
}

static void
test_sloppy_ipv4(void)
{
    static const char  *sloppy[] = { "1.2.3", "10.1", "127.1", "1",
                                     "010.0.0.1", "0x7f.0.0.1",
                                     "0x7f000001", "4294967295" };
    static const char  *fine[] = { "1.2.3.4", "0.0.0.0", "255.255.255.255",
                                   "mx.example.org", "localhost", "::1",
                                   "1.2.3.4.5", "256.1.1.1", "1e3", "" };
    size_t              i;

    for (i = 0; i < sizeof(sloppy) / sizeof(sloppy[0]); i++) {
        if (CHECK(sg_inet_sloppy_ipv4(sloppy[i]))) {
            printf("    \"%s\"\n", sloppy[i]);
        }
    }
    for (i = 0; i < sizeof(fine) / sizeof(fine[0]); i++) {
        if (CHECK(!sg_inet_sloppy_ipv4(fine[i]))) {
            printf("    \"%s\"\n", fine[i]);
        }
    }
}

static void
test_cidr_list_match(void)
{
    static const char  *nets[] = { "10.0.0.0/8", "2001:db8::/32", "::1" };
    sg_array_t          list;
    sg_cidr_t           c[3];
    const char         *err;
    size_t              i;

    CHECK(!sg_cidr_list_match(NULL, (struct sockaddr *) addr("10.0.0.1")));
    list.elts = c;
    list.nelts = 0;
    list.size = sizeof(sg_cidr_t);
    list.nalloc = 3;
    list.pool = NULL;
    CHECK(!sg_cidr_list_match(&list, (struct sockaddr *) addr("10.0.0.1")));
    for (i = 0; i < 3; i++) {
        CHECK_INT(cidr(nets[i], &c[i], &err), SG_OK);
    }
    list.nelts = 3;
    CHECK(sg_cidr_list_match(&list, (struct sockaddr *) addr("10.9.8.7")));
    CHECK(sg_cidr_list_match(&list,
                             (struct sockaddr *) addr("2001:db8:1::5")));
    CHECK(sg_cidr_list_match(&list, (struct sockaddr *) addr("::1")));
    CHECK(sg_cidr_list_match(&list,
                             (struct sockaddr *) addr("::ffff:10.1.2.3")));
    CHECK(!sg_cidr_list_match(&list, (struct sockaddr *) addr("11.0.0.1")));
    CHECK(!sg_cidr_list_match(&list, (struct sockaddr *) addr("::2")));
}

int
main(void)
{
    sg_test_start();

    RUN(test_cidr_parse);
    RUN(test_cidr_refused);
    RUN(test_cidr_match);
    RUN(test_cidr_list_match);
    RUN(test_sock_ntop);
    RUN(test_sloppy_ipv4);

    return sg_test_finish();
}
