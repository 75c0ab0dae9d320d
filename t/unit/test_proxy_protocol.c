/*
 * test_proxy_protocol.c: unit tests for the PROXY protocol parser and
 * builders (core/sg_proxy_protocol.c).
 *
 * Every header is parsed from an exact-size heap copy, so a read one
 * byte too far is a sanitizer report.  Checked: valid v1 and v2 headers
 * of both families, UNKNOWN and LOCAL, the bytes after a header left
 * alone; every cut of a valid header is AGAIN; every malformation is an
 * ERROR naming its cause, and garbage is refused from its first bytes;
 * the builders' output parses back to what went in.
 */
#include "sg_core.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

/* The v2 signature, as a string literal piece. */
#define SIG "\r\n\r\n\0\r\nQUIT\n"

static int
parse(const void *s, size_t n, sg_proxy_hdr_t *hdr, size_t *consumed,
      const char **err)
{
    u_char *p = sg_test_bytes(s, n);

    *consumed = 0;
    *err = NULL;
    return sg_proxy_protocol_parse(p, n, hdr, consumed, err);
}

/* Every cut shorter than the whole header is AGAIN, without a cause. */
static void
check_cuts(const void *s, size_t header_len)
{
    sg_proxy_hdr_t  hdr;
    const char     *err;
    size_t          k, consumed;
    int             rc;

    for (k = 0; k < header_len; k++) {
        rc = parse(s, k, &hdr, &consumed, &err);
        if (CHECK_INT(rc, SG_AGAIN)) {
            printf("    at a cut of %zu bytes: %s\n", k, err ? err : "-");
        }
    }
}

static void
check_error(const void *s, size_t n, const char *want)
{
    sg_proxy_hdr_t  hdr;
    const char     *err;
    size_t          consumed;

    if (CHECK_INT(parse(s, n, &hdr, &consumed, &err), SG_ERROR)) {
        sg_test_show("input", s, n);
        return;
    }
    if (CHECK(err != NULL && strcmp(err, want) == 0)) {
        printf("    got \"%s\", want \"%s\"\n", err ? err : "(null)", want);
        sg_test_show("input", s, n);
    }
}

static void
check_addr(const struct sockaddr_storage *ss, socklen_t len, const char *want)
{
    u_char  text[SG_SOCKADDR_STRLEN];
    size_t  n;

    CHECK_UINT(len, ss->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                             : sizeof(struct sockaddr_in6));
    n = sg_sock_ntop((const struct sockaddr *) ss, text, sizeof(text), true);
    CHECK_MEM(text, n, want, strlen(want));
}

/* ---- version 1 ------------------------------------------------------ */

static void
test_v1_tcp4(void)
{
    static const char  h[] = "PROXY TCP4 203.0.113.7 192.0.2.1 4242 25\r\n";
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(h), &hdr, &consumed, &err), SG_OK);
    CHECK(err == NULL);
    CHECK_UINT(consumed, sizeof(h) - 1);
    CHECK_INT(hdr.version, 1);
    CHECK_INT(hdr.local, 0);
    CHECK_INT(hdr.src.ss_family, AF_INET);
    check_addr(&hdr.src, hdr.src_len, "203.0.113.7:4242");
    check_addr(&hdr.dst, hdr.dst_len, "192.0.2.1:25");
    check_cuts(LIT(h));

    /* Ports at both ends of their range. */
    CHECK_INT(parse(LIT("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n"),
                    &hdr, &consumed, &err), SG_OK);
    check_addr(&hdr.src, hdr.src_len, "0.0.0.0:0");
    check_addr(&hdr.dst, hdr.dst_len, "255.255.255.255:65535");
}

static void
test_v1_tcp6(void)
{
    static const char  h[] =
        "PROXY TCP6 2001:db8::7 2001:DB8:0:0:0:0:0:1 65535 587\r\n";
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(h), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, sizeof(h) - 1);
    CHECK_INT(hdr.version, 1);
    CHECK_INT(hdr.src.ss_family, AF_INET6);
    check_addr(&hdr.src, hdr.src_len, "[2001:db8::7]:65535");
    check_addr(&hdr.dst, hdr.dst_len, "[2001:db8::1]:587");
    check_cuts(LIT(h));

    /* IPv4-mapped addresses are IPv6 addresses. */
    CHECK_INT(parse(LIT("PROXY TCP6 ::ffff:192.0.2.9 ::1 1 2\r\n"), &hdr,
                    &consumed, &err), SG_OK);
    check_addr(&hdr.src, hdr.src_len, "[::ffff:192.0.2.9]:1");
    check_addr(&hdr.dst, hdr.dst_len, "[::1]:2");
}

static void
test_v1_unknown(void)
{
    static const char  bare[] = "PROXY UNKNOWN\r\n";
    static const char  more[] =
        "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(bare), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, sizeof(bare) - 1);
    CHECK_INT(hdr.version, 1);
    CHECK_INT(hdr.local, 1);
    CHECK_UINT(hdr.src_len, 0);
    CHECK_UINT(hdr.dst_len, 0);
    check_cuts(LIT(bare));

    /* Whatever follows UNKNOWN up to the CRLF is ignored. */
    CHECK_INT(parse(LIT(more), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, sizeof(more) - 1);
    CHECK_INT(hdr.local, 1);
    check_cuts(LIT(more));
}

static void
test_v1_leaves_what_follows(void)
{
    static const char  h[] = "PROXY TCP4 1.2.3.4 5.6.7.8 1111 25\r\n"
                             "EHLO client.test\r\n";
    static const char  tls[] = "PROXY UNKNOWN\r\n\x16\x03\x01\x02\x00\x01";
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(h), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, sizeof("PROXY TCP4 1.2.3.4 5.6.7.8 1111 25\r\n") - 1);
    CHECK_INT(parse(LIT(tls), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, 15);

    /* A second header right after the first is not the first's
     * business. */
    CHECK_INT(parse(LIT("PROXY UNKNOWN\r\nPROXY UNKNOWN\r\n"), &hdr,
                    &consumed, &err), SG_OK);
    CHECK_UINT(consumed, 15);
}

static void
test_v1_length_limit(void)
{
    char            line[200];
    sg_proxy_hdr_t  hdr;
    const char     *err;
    size_t          consumed;

    /* 107 bytes with the CRLF: the longest allowed. */
    memcpy(line, "PROXY UNKNOWN ", 14);
    memset(line + 14, 'x', 91);
    memcpy(line + 105, "\r\n", 2);
    CHECK_INT(parse(line, 107, &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, 107);
    check_cuts(line, 107);

    /* One more is too long, known at the 107th byte without a LF. */
    memcpy(line, "PROXY UNKNOWN ", 14);
    memset(line + 14, 'x', 92);
    memcpy(line + 106, "\r\n", 2);
    check_error(line, 108, "v1 header too long");
    check_error(line, 107, "v1 header too long");
    CHECK_INT(parse(line, 106, &hdr, &consumed, &err), SG_AGAIN);

    /* Endless spaces or digits are too long too. */
    memset(line, 0, sizeof(line));
    memcpy(line, "PROXY UNKNOWN", 13);
    memset(line + 13, ' ', 150);
    check_error(line, 163, "v1 header too long");
}

static void
test_v1_malformed(void)
{
    static const struct {
        const char  *in;
        const char  *err;
    } bad[] = {
        /* the prefix and the protocol */
        { "PROXY\r\n", "not a PROXY header" },
        { "PROXY \r\n", "bad v1 protocol" },
        { "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY header" },
        { "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol" },
        { "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol" },
        { "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol" },
        { "PROXY TCP4\r\n", "bad v1 protocol" },
        { "PROXY TCP\r\n", "bad v1 protocol" },
        { "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol" },
        { "PROXY UNKNOWNX\r\n", "bad v1 protocol" },
        { "PROXY UNKNOWN\n", "bad v1 line ending" },
        { "PROXY UNKNOWN x\ty\r\n", "bad v1 character" },
        { "PROXY UNKNOWN x\ry\r\n", "bad v1 character" },
        { "PROXY UNKNOWN \x80\r\n", "bad v1 character" },
        /* line ending */
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bad v1 line ending" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "bad v1 character" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx", "bad v1 character" },
        /* spacing */
        { "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 spacing" },
        { "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "bad v1 spacing" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "bad v1 spacing" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "bad v1 spacing" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "bad v1 spacing" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8\r\n", "bad v1 spacing" },
        { "PROXY TCP4 \r\n", "bad v1 spacing" },
        { "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "bad v1 character" },
        /* addresses */
        { "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP4 1.2.3.4 5.6.7 1 2\r\n", "bad v1 destination address" },
        { "PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad v1 character" },
        { "PROXY TCP4 a.b.c.d 5.6.7.8 1 2\r\n", "bad v1 character" },
        { "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "bad v1 destination address" },
        { "PROXY TCP6 ::1::2 ::1 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP6 12345::1 ::1 1 2\r\n", "bad v1 source address" },
        { "PROXY TCP6 [::1] ::1 1 2\r\n", "bad v1 character" },
        { "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad v1 character" },
        { "PROXY TCP6 ::g ::1 1 2\r\n", "bad v1 character" },
        { "PROXY TCP6 1111:2222:3333:4444:5555:6666:7777:8888:9999 ::1 1 2"
          "\r\n", "bad v1 source address" },
        /* ports */
        { "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad v1 port" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "bad v1 port" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", "bad v1 port" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad v1 port" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "bad v1 port" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 1.5 2\r\n", "bad v1 port" },
        { "PROXY TCP6 ::1 ::2 a 2\r\n", "bad v1 port" },
        { "PROXY TCP6 ::1 ::2 1 :\r\n", "bad v1 port" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad v1 character" },
        { "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad v1 character" },
    };
    size_t  i;

    for (i = 0; i < sg_nelems(bad); i++) {
        check_error(bad[i].in, strlen(bad[i].in), bad[i].err);
    }
    check_error(LIT("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n"),
                "bad v1 character");
    check_error(LIT("PROXY UNKNOWN \0\r\n"), "bad v1 character");
}

/* Bytes that cannot start a header are refused at once, whatever may
 * follow: no waiting for the rest of a line that is not a header. */
static void
test_v1_early_errors(void)
{
    check_error(LIT("E"), "not a PROXY header");
    check_error(LIT("EHLO client.test\r\n"), "not a PROXY header");
    check_error(LIT("\x16\x03\x01"), "not a PROXY header");
    check_error(LIT("PRX"), "not a PROXY header");
    check_error(LIT("PROXY_"), "not a PROXY header");
    check_error(LIT("PROXY X"), "bad v1 protocol");
    check_error(LIT("PROXY TCP4 1.2.3.4 x"), "bad v1 character");
    check_error(LIT("PROXY TCP4 1.2.3.4  "), "bad v1 spacing");
    check_error(LIT("PROXY TCP4 1 2 3 4 "), "bad v1 spacing");
    check_error(LIT("PROXY TCP6 ::1 \r"), "bad v1 spacing");
    check_error(LIT("PROXY UNKNOWN\x01"), "bad v1 protocol");
    check_error(LIT("PROXY UNKNOWN\r\r"), "bad v1 character");
    check_error(LIT("\n"), "not a PROXY header");
    check_error(LIT("\0"), "not a PROXY header");
}

/* ---- version 2 ------------------------------------------------------ */

static void
test_v2_inet(void)
{
    static const char  h[] = SIG "\x21\x11\x00\x0c"
                             "\xcb\x00\x71\x07" "\xc0\x00\x02\x01"
                             "\x10\x92" "\x00\x19";
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(h), &hdr, &consumed, &err), SG_OK);
    CHECK(err == NULL);
    CHECK_UINT(consumed, 28);
    CHECK_INT(hdr.version, 2);
    CHECK_INT(hdr.local, 0);
    check_addr(&hdr.src, hdr.src_len, "203.0.113.7:4242");
    check_addr(&hdr.dst, hdr.dst_len, "192.0.2.1:25");
    check_cuts(LIT(h));
}

static void
test_v2_inet6(void)
{
    static const char  h[] = SIG "\x21\x21\x00\x24"
        "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x07"
        "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
        "\xff\xff" "\x02\x4b";
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(h), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, 52);
    CHECK_INT(hdr.version, 2);
    check_addr(&hdr.src, hdr.src_len, "[2001:db8::7]:65535");
    check_addr(&hdr.dst, hdr.dst_len, "[2001:db8::1]:587");
    check_cuts(LIT(h));
}

static void
test_v2_tlvs(void)
{
    /* ALPN "smtp", an empty NOOP, and an AUTHORITY, then SMTP bytes. */
    static const char  h[] = SIG "\x21\x11\x00\x1f"
                             "\x01\x02\x03\x04" "\x05\x06\x07\x08"
                             "\x00\x01" "\x00\x02"
                             "\x01\x00\x04smtp"
                             "\x04\x00\x00"
                             "\x02\x00\x06mx.tst"
                             "EHLO x\r\n";
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(h), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, 47);
    check_addr(&hdr.src, hdr.src_len, "1.2.3.4:1");
    check_addr(&hdr.dst, hdr.dst_len, "5.6.7.8:2");
    check_cuts(h, 47);
}

static void
test_v2_local(void)
{
    static const char  bare[] = SIG "\x20\x00\x00\x00";
    static const char  tlv[] = SIG "\x20\x00\x00\x05" "\xe0\x00\x02hi";
    /* LOCAL ignores the addresses it may carry. */
    static const char  inet[] = SIG "\x20\x11\x00\x0c" "\1\2\3\4\5\6\7\x8"
                                "\0\1\0\2";
    static const char  unix_[] = SIG "\x20\x31\x00\xd8";
    u_char             buf[16 + 216];
    sg_proxy_hdr_t     hdr;
    const char        *err;
    size_t             consumed;

    CHECK_INT(parse(LIT(bare), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, 16);
    CHECK_INT(hdr.version, 2);
    CHECK_INT(hdr.local, 1);
    CHECK_UINT(hdr.src_len, 0);
    check_cuts(LIT(bare));

    CHECK_INT(parse(LIT(tlv), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, 21);
    CHECK_INT(hdr.local, 1);
    check_cuts(LIT(tlv));

    /* LOCAL: the block is discarded whole, as the specification (2.2)
     * and nginx do, whatever its family says or its TLVs hold. */
    {
        static const char  shortblk[] = SIG "\x20\x11\x00\x00";
        static const char  badtlv[] = SIG "\x20\x00\x00\x04"
                                      "\x01\x00\x00" "\x01";
        static const char  overrun[] = SIG "\x20\x00\x00\x06"
                                       "\x01\x00\x04" "abc";

        CHECK_INT(parse(LIT(shortblk), &hdr, &consumed, &err), SG_OK);
        CHECK_UINT(consumed, 16);
        CHECK_INT(hdr.local, 1);
        CHECK_INT(parse(LIT(badtlv), &hdr, &consumed, &err), SG_OK);
        CHECK_UINT(consumed, 20);
        CHECK_INT(parse(LIT(overrun), &hdr, &consumed, &err), SG_OK);
        CHECK_UINT(consumed, 22);
        check_cuts(LIT(overrun));
    }

    CHECK_INT(parse(LIT(inet), &hdr, &consumed, &err), SG_OK);
    CHECK_INT(hdr.local, 1);
    CHECK_UINT(hdr.src_len, 0);

    memset(buf, 'u', sizeof(buf));
    memcpy(buf, unix_, 16);
    CHECK_INT(parse(buf, sizeof(buf), &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, sizeof(buf));
    CHECK_INT(hdr.local, 1);
}

static void
test_v2_malformed(void)
{
    /* The command and family byte after SIG, then a length of 12 and
     * twelve address bytes. */
#define V2(vc, fp)  SIG vc fp "\x00\x0c" "\1\2\3\4\5\6\7\x8\0\1\0\2"
    check_error(LIT(V2("\x11", "\x11")), "bad v2 version");
    check_error(LIT(V2("\x31", "\x11")), "bad v2 version");
    check_error(LIT(V2("\x01", "\x11")), "bad v2 version");
    check_error(LIT(V2("\x22", "\x11")), "bad v2 command");
    check_error(LIT(V2("\x2f", "\x11")), "bad v2 command");
    check_error(LIT(V2("\x21", "\x41")), "bad v2 family");
    check_error(LIT(V2("\x21", "\x13")), "bad v2 family");
    check_error(LIT(V2("\x20", "\x41")), "bad v2 family");
    check_error(LIT(V2("\x20", "\x03")), "bad v2 family");
    check_error(LIT(V2("\x21", "\x01")), "bad v2 family");
    check_error(LIT(V2("\x21", "\x00")), "bad v2 family");
    check_error(LIT(V2("\x21", "\x10")), "bad v2 family");
    check_error(LIT(V2("\x21", "\x31")), "unsupported v2 family");
    check_error(LIT(V2("\x21", "\x32")), "unsupported v2 family");
    check_error(LIT(V2("\x21", "\x12")), "unsupported v2 protocol");
    check_error(LIT(V2("\x21", "\x22")), "unsupported v2 protocol");
#undef V2

    /* Declared lengths shorter than the family's addresses. */
    check_error(LIT(SIG "\x21\x11\x00\x0b" "\1\2\3\4\5\6\7\x8\0\1\0"),
                "v2 address block too short");
    check_error(LIT(SIG "\x21\x21\x00\x0c" "\1\2\3\4\5\6\7\x8\0\1\0\2"),
                "v2 address block too short");
    check_error(LIT(SIG "\x21\x11\x00\x00"), "v2 address block too short");

    /* TLVs: overrunning the block, or leaving a stub of one or two
     * bytes.  Known as soon as the TLV header arrives. */
    check_error(LIT(SIG "\x21\x11\x00\x10" "\1\2\3\4\5\6\7\x8\0\1\0\2"
                    "\x01\x00\x02x"), "bad v2 TLV length");
    check_error(LIT(SIG "\x21\x11\x00\x0e" "\1\2\3\4\5\6\7\x8\0\1\0\2"
                    "\x01\x00"), "bad v2 TLV length");
    check_error(LIT(SIG "\x21\x11\x00\x0d" "\1\2\3\4\5\6\7\x8\0\1\0\2"
                    "\x01"), "bad v2 TLV length");
    /* A huge TLV in a huge block is refused before the block arrives. */
    check_error(LIT(SIG "\x21\x11\xff\xff" "\1\2\3\4\5\6\7\x8\0\1\0\2"
                    "\x01\xff\xf1"), "bad v2 TLV length");
    /* ... and one that leaves a stub too short for another TLV. */
    check_error(LIT(SIG "\x21\x11\xff\xff" "\1\2\3\4\5\6\7\x8\0\1\0\2"
                    "\x01\xff\xef"), "bad v2 TLV length");
}

static void
test_v2_early_errors(void)
{
    sg_proxy_hdr_t  hdr;
    const char     *err;
    size_t          consumed;

    check_error(LIT("\r\n\r\n\r"), "not a PROXY header");
    check_error(LIT("\r\r"), "not a PROXY header");
    check_error(LIT("\r\n\r\n\0\r\nQUIX"), "not a PROXY header");
    check_error(LIT(SIG "\x11"), "bad v2 version");
    check_error(LIT(SIG "\x21\x31"), "unsupported v2 family");

    /* A declared 64 KB block of valid TLVs is waited for. */
    CHECK_INT(parse(LIT(SIG "\x21\x11\xff\xff" "\1\2\3\4\5\6\7\x8\0\1\0\2"
                        "\x01\xff\xf0"), &hdr, &consumed, &err), SG_AGAIN);
    CHECK_INT(parse(LIT(SIG "\x21\x11\xff\xff" "\1\2\3\4\5\6\7\x8\0\1\0\2"
                        "\x01\xff\xec"), &hdr, &consumed, &err), SG_AGAIN);
}

static void
test_v2_largest(void)
{
    u_char         *buf;
    size_t          n = SG_PROXY_PROTOCOL_MAX, off, consumed;
    sg_proxy_hdr_t  hdr;
    const char     *err;

    buf = sg_test_bytes(NULL, n);
    memcpy(buf, SIG "\x21\x21\xff\xff", 16);
    /* 36 address bytes, then TLVs of 65499 bytes: 3 + 65496. */
    off = 16 + 36;
    buf[off] = 0xee;
    buf[off + 1] = (u_char) (65496 >> 8);
    buf[off + 2] = (u_char) 65496;
    CHECK_INT(sg_proxy_protocol_parse(buf, n, &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, SG_PROXY_PROTOCOL_MAX);
    CHECK_INT(sg_proxy_protocol_parse(buf, n - 1, &hdr, &consumed, &err),
              SG_AGAIN);
}

/* ---- both ----------------------------------------------------------- */

static void
test_empty_and_null_err(void)
{
    sg_proxy_hdr_t  hdr;
    size_t          consumed;
    u_char         *p = sg_test_bytes("PROXY UNKNOWN\r\n", 15);

    CHECK_INT(sg_proxy_protocol_parse(p, 0, &hdr, &consumed, NULL), SG_AGAIN);
    CHECK_INT(sg_proxy_protocol_parse(p, 15, &hdr, &consumed, NULL), SG_OK);
    p = sg_test_bytes("GET", 3);
    CHECK_INT(sg_proxy_protocol_parse(p, 3, &hdr, &consumed, NULL), SG_ERROR);
}

/* ---- builders ------------------------------------------------------- */

static void
sin4(struct sockaddr_storage *ss, const char *addr, int port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *) ss;

    memset(ss, 0, sizeof(*ss));
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t) port);
    CHECK_INT(inet_pton(AF_INET, addr, &sin->sin_addr), 1);
}

static void
sin6(struct sockaddr_storage *ss, const char *addr, int port)
{
    struct sockaddr_in6 *sin = (struct sockaddr_in6 *) ss;

    memset(ss, 0, sizeof(*ss));
    sin->sin6_family = AF_INET6;
    sin->sin6_port = htons((uint16_t) port);
    CHECK_INT(inet_pton(AF_INET6, addr, &sin->sin6_addr), 1);
}

/* Build with both builders, parse back, compare. */
static void
round_trip(const struct sockaddr_storage *s, const struct sockaddr_storage *d,
           const char *want_v1, const char *want_src, const char *want_dst)
{
    u_char          buf[256], *copy;
    sg_proxy_hdr_t  hdr;
    const char     *err;
    size_t          n, consumed, v2_len;

    n = sg_proxy_protocol_write_v1(buf, sizeof(buf),
                                   (const struct sockaddr *) s,
                                   (const struct sockaddr *) d);
    CHECK_MEM(buf, n, want_v1, strlen(want_v1));
    copy = sg_test_bytes(buf, n);
    CHECK_INT(sg_proxy_protocol_parse(copy, n, &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, n);
    CHECK_INT(hdr.version, 1);
    check_addr(&hdr.src, hdr.src_len, want_src);
    check_addr(&hdr.dst, hdr.dst_len, want_dst);
    /* Exactly enough room works, one byte less does not. */
    CHECK_UINT(sg_proxy_protocol_write_v1(buf, n, (const struct sockaddr *) s,
                                          (const struct sockaddr *) d), n);
    CHECK_UINT(sg_proxy_protocol_write_v1(buf, n - 1,
                                          (const struct sockaddr *) s,
                                          (const struct sockaddr *) d), 0);

    n = sg_proxy_protocol_write_v2(buf, sizeof(buf),
                                   (const struct sockaddr *) s,
                                   (const struct sockaddr *) d);
    v2_len = hdr.src.ss_family == AF_INET ? 28 : 52;
    CHECK_UINT(n, v2_len);
    copy = sg_test_bytes(buf, n);
    CHECK_INT(sg_proxy_protocol_parse(copy, n, &hdr, &consumed, &err), SG_OK);
    CHECK_UINT(consumed, n);
    CHECK_INT(hdr.version, 2);
    CHECK_INT(hdr.local, 0);
    check_addr(&hdr.src, hdr.src_len, want_src);
    check_addr(&hdr.dst, hdr.dst_len, want_dst);
    CHECK_UINT(sg_proxy_protocol_write_v2(buf, n - 1,
                                          (const struct sockaddr *) s,
                                          (const struct sockaddr *) d), 0);
}

static void
test_builders_round_trip(void)
{
    struct sockaddr_storage  s, d;

    sin4(&s, "203.0.113.7", 4242);
    sin4(&d, "192.0.2.1", 25);
    round_trip(&s, &d, "PROXY TCP4 203.0.113.7 192.0.2.1 4242 25\r\n",
               "203.0.113.7:4242", "192.0.2.1:25");

    sin6(&s, "2001:db8::7", 65535);
    sin6(&d, "::1", 0);
    round_trip(&s, &d, "PROXY TCP6 2001:db8::7 ::1 65535 0\r\n",
               "[2001:db8::7]:65535", "[::1]:0");

    /* Mixed: the IPv4 end is mapped, on either side. */
    sin4(&s, "198.51.100.3", 1);
    sin6(&d, "2001:db8::1", 587);
    round_trip(&s, &d, "PROXY TCP6 ::ffff:198.51.100.3 2001:db8::1 1 587\r\n",
               "[::ffff:198.51.100.3]:1", "[2001:db8::1]:587");
    sin6(&s, "2001:db8::2", 2);
    sin4(&d, "198.51.100.4", 465);
    round_trip(&s, &d, "PROXY TCP6 2001:db8::2 ::ffff:198.51.100.4 2 465\r\n",
               "[2001:db8::2]:2", "[::ffff:198.51.100.4]:465");

    /* The longest v1 line a builder can write fits the limit. */
    sin6(&s, "1111:2222:3333:4444:5555:6666:7777:8888", 65535);
    sin6(&d, "aaaa:bbbb:cccc:dddd:eeee:ffff:1111:2222", 65535);
    round_trip(&s, &d, "PROXY TCP6 1111:2222:3333:4444:5555:6666:7777:8888 "
               "aaaa:bbbb:cccc:dddd:eeee:ffff:1111:2222 65535 65535\r\n",
               "[1111:2222:3333:4444:5555:6666:7777:8888]:65535",
               "[aaaa:bbbb:cccc:dddd:eeee:ffff:1111:2222]:65535");
}

static void
test_builders_v2_bytes(void)
{
    static const char        want[] = SIG "\x21\x11\x00\x0c"
                                      "\xcb\x00\x71\x07" "\xc0\x00\x02\x01"
                                      "\x10\x92" "\x00\x19";
    struct sockaddr_storage  s, d;
    u_char                   buf[64];

    sin4(&s, "203.0.113.7", 4242);
    sin4(&d, "192.0.2.1", 25);
    CHECK_MEM(buf, sg_proxy_protocol_write_v2(buf, sizeof(buf),
                                              (struct sockaddr *) &s,
                                              (struct sockaddr *) &d),
              want, sizeof(want) - 1);
}

static void
test_builders_refuse(void)
{
    struct sockaddr_storage  s, d, u;
    u_char                   buf[256];

    sin4(&s, "192.0.2.1", 1);
    sin4(&d, "192.0.2.2", 2);
    memset(&u, 0, sizeof(u));
    u.ss_family = AF_UNIX;
    CHECK_UINT(sg_proxy_protocol_write_v1(buf, sizeof(buf),
                                          (struct sockaddr *) &u,
                                          (struct sockaddr *) &d), 0);
    CHECK_UINT(sg_proxy_protocol_write_v1(buf, sizeof(buf),
                                          (struct sockaddr *) &s,
                                          (struct sockaddr *) &u), 0);
    CHECK_UINT(sg_proxy_protocol_write_v2(buf, sizeof(buf),
                                          (struct sockaddr *) &u,
                                          (struct sockaddr *) &d), 0);
    CHECK_UINT(sg_proxy_protocol_write_v2(buf, sizeof(buf),
                                          (struct sockaddr *) &s,
                                          (struct sockaddr *) &u), 0);
    CHECK_UINT(sg_proxy_protocol_write_v1(buf, 0, (struct sockaddr *) &s,
                                          (struct sockaddr *) &d), 0);
    CHECK_UINT(sg_proxy_protocol_write_v2(buf, 0, (struct sockaddr *) &s,
                                          (struct sockaddr *) &d), 0);
}

int
main(void)
{
    sg_test_start();

    RUN(test_v1_tcp4);
    RUN(test_v1_tcp6);
    RUN(test_v1_unknown);
    RUN(test_v1_leaves_what_follows);
    RUN(test_v1_length_limit);
    RUN(test_v1_malformed);
    RUN(test_v1_early_errors);
    RUN(test_v2_inet);
    RUN(test_v2_inet6);
    RUN(test_v2_tlvs);
    RUN(test_v2_local);
    RUN(test_v2_malformed);
    RUN(test_v2_early_errors);
    RUN(test_v2_largest);
    RUN(test_empty_and_null_err);
    RUN(test_builders_round_trip);
    RUN(test_builders_v2_bytes);
    RUN(test_builders_refuse);

    return sg_test_finish();
}
