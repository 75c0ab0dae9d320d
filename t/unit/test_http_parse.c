/*
 * test_http_parse.c: unit tests for the HTTP auth protocol helpers:
 * credential escaping and the auth service's response head.
 *
 * Every response is handed to the parser as an exact-size heap copy, so
 * a read one byte too far is a sanitizer report rather than luck.  The
 * friendly cases pin down what a real auth service sends; the hostile
 * ones (every cut of a head, limits at the byte, folded lines, NULs,
 * stray CRs, duplicate headers, odd Content-Lengths) are the point.
 */
#include "sg_core.h"
#include "sg_http_parse.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

#define LIMIT 4096

/* want is a string literal, NULs and all. */
#define CHECK_BYTES(got, got_len, want)                                        \
    CHECK_MEM(got, got_len, want, sizeof(want) - 1)

static int
parse(const char *s, size_t n, size_t limit, sg_http_auth_response_t *out)
{
    u_char *p = sg_test_bytes(s, n);

    return sg_http_parse_auth_response(p, p + n, limit, out);
}

/* Whether the error message mentions word. */
static int
error_has(const sg_http_auth_response_t *out, const char *word)
{
    return out->error != NULL && strstr(out->error, word) != NULL;
}

static size_t
escape(const char *s, size_t n, u_char **dst)
{
    sg_str_t src;
    size_t   len;

    src.data = sg_test_bytes(s, n);
    src.len = n;
    len = sg_http_auth_escape(NULL, &src);
    *dst = sg_test_bytes(NULL, len);
    CHECK_UINT(sg_http_auth_escape(*dst, &src), len);
    return len;
}

/* ---- sg_http_auth_escape -------------------------------------------- */

static void
test_escape_every_byte(void)
{
    char    want[4];
    u_char *dst, c;
    size_t  len;
    int     i;

    for (i = 0; i < 256; i++) {
        c = (u_char) i;
        len = escape((const char *) &c, 1, &dst);
        if (i <= 0x20 || i == '%') {
            snprintf(want, sizeof(want), "%%%02X", i);
            CHECK_MEM(dst, len, want, 3);
        } else {
            /* 0x7f and 0x80-0xff pass through, as in nginx. */
            CHECK_MEM(dst, len, &c, 1);
        }
    }
}

static void
test_escape_strings(void)
{
    u_char *dst;
    size_t  len;

    len = escape(LIT(""), &dst);
    CHECK_UINT(len, 0);

    len = escape(LIT("alice@example.org"), &dst);
    CHECK_BYTES(dst, len, "alice@example.org");

    len = escape(LIT("pass word%"), &dst);
    CHECK_BYTES(dst, len, "pass%20word%25");

    len = escape(LIT("a\r\nAuth-Status: OK"), &dst);
    CHECK_BYTES(dst, len, "a%0D%0AAuth-Status:%20OK");

    len = escape(LIT("\x00\x1f\x7f\x80\xff\xc3\xa9"), &dst);
    CHECK_BYTES(dst, len, "%00%1F\x7f\x80\xff\xc3\xa9");

    /* Upper-case hex, and a '%' already escaped is escaped again. */
    len = escape(LIT("%2a\x1a"), &dst);
    CHECK_BYTES(dst, len, "%252a%1A");

    len = escape(LIT("+/=:;\"'<>?#&~`!"), &dst);
    CHECK_BYTES(dst, len, "+/=:;\"'<>?#&~`!");
}

static void
test_escape_length_mode(void)
{
    u_char   buf[256 * 3], all[256];
    sg_str_t src;
    size_t   i, plain;

    for (i = 0; i < 256; i++) {
        all[i] = (u_char) i;
    }
    src.data = sg_test_bytes(all, sizeof(all));
    src.len = sizeof(all);

    /* 33 control/space bytes and '%' take three bytes each. */
    plain = 256 - 34;
    CHECK_UINT(sg_http_auth_escape(NULL, &src), plain + 34 * 3);

    memset(buf, 0xaa, sizeof(buf));
    CHECK_UINT(sg_http_auth_escape(buf, &src), plain + 34 * 3);
    CHECK_BYTES(buf, 6, "%00%01");
    /* Nothing written past the returned length. */
    CHECK_INT(buf[plain + 34 * 3], 0xaa);

    /* Length mode never touches the source either. */
    src.len = 0;
    CHECK_UINT(sg_http_auth_escape(NULL, &src), 0);
}

/* ---- status line ---------------------------------------------------- */

static void
test_status_versions(void)
{
    sg_http_auth_response_t r;

    CHECK_INT(parse(LIT("HTTP/1.0 200 OK\r\n\r\n"), LIMIT, &r), SG_OK);
    CHECK_INT(r.status, 200);
    CHECK_INT(r.minor, 0);
    CHECK_UINT(r.head_len, 19);
    CHECK_INT(r.content_length, -1);
    CHECK(r.error == NULL);

    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\n\r\n"), LIMIT, &r), SG_OK);
    CHECK_INT(r.status, 200);
    CHECK_INT(r.minor, 1);

    /* No reason phrase, with or without its SP. */
    CHECK_INT(parse(LIT("HTTP/1.1 204\r\n\r\n"), LIMIT, &r), SG_OK);
    CHECK_INT(r.status, 204);
    CHECK_UINT(r.head_len, 16);
    CHECK_INT(parse(LIT("HTTP/1.1 204 \r\n\r\n"), LIMIT, &r), SG_OK);
    CHECK_INT(r.status, 204);

    /* A reason may hold spaces, tabs and eight-bit text. */
    CHECK_INT(
        parse(LIT("HTTP/1.0 502 Bad\tGateway \xc3\xa9\r\n\r\n"), LIMIT, &r),
        SG_OK);
    CHECK_INT(r.status, 502);

    /* Bare LF endings, and a mix of both. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\n\n"), LIMIT, &r), SG_OK);
    CHECK_UINT(r.head_len, 17);
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\nAuth-Status: OK\r\n\n"), LIMIT, &r),
              SG_OK);
    CHECK_STR(r.h[SG_HTTP_H_AUTH_STATUS], "OK");
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status: OK\n\r\n"), LIMIT, &r),
              SG_OK);
    CHECK_STR(r.h[SG_HTTP_H_AUTH_STATUS], "OK");

    /* The whole range of codes, and no further. */
    CHECK_INT(parse(LIT("HTTP/1.1 100 Continue\r\n\r\n"), LIMIT, &r), SG_OK);
    CHECK_INT(r.status, 100);
    CHECK_INT(parse(LIT("HTTP/1.1 599 x\r\n\r\n"), LIMIT, &r), SG_OK);
    CHECK_INT(r.status, 599);
}

static void
test_status_garbage(void)
{
    static const char *bad[] = {
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.2 200 OK\r\n\r\n",
        "HTTP/1.10 200 OK\r\n\r\n",
        "HTTP/1.1 20\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 099 x\r\n\r\n",
        "HTTP/1.1 600 x\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "Http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1200 OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/1.1\t200 OK\r\n\r\n",
        "HTTP/1.1\r\n\r\n",
        "HTTP/1.\r\n\r\n",
        " HTTP/1.1 200 OK\r\n\r\n",
        "\r\nHTTP/1.1 200 OK\r\n\r\n",
        "\n\n",
        "220 smtp.example.org ESMTP\r\n",
        "HTTP/1.1 200 O\x01K\r\n\r\n",
        "HTTP/1.1 200 O\x7fK\r\n\r\n",
    };
    sg_http_auth_response_t r;
    size_t                  i;

    for (i = 0; i < sg_nelems(bad); i++) {
        if (CHECK_INT(parse(bad[i], strlen(bad[i]), LIMIT, &r), SG_ERROR)) {
            printf("    input %zu: \"%s\"\n", i, bad[i]);
        }
        CHECK(r.error != NULL);
    }

    /* NUL in the reason phrase. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 O\0K\r\n\r\n"), LIMIT, &r), SG_ERROR);
    CHECK(error_has(&r, "NUL"));
}

/* Garbage is refused as soon as it shows, not at the line end. */
static void
test_status_early(void)
{
    sg_http_auth_response_t r;

    CHECK_INT(parse(LIT("H"), LIMIT, &r), SG_AGAIN);
    CHECK_INT(parse(LIT("HTTP/1.1 2"), LIMIT, &r), SG_AGAIN);
    CHECK_INT(parse(LIT("HTTP/1.1 200"), LIMIT, &r), SG_AGAIN);
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r"), LIMIT, &r), SG_AGAIN);

    CHECK_INT(parse(LIT("220 "), LIMIT, &r), SG_ERROR);
    CHECK_INT(parse(LIT("HTTP/2"), LIMIT, &r), SG_ERROR);
    CHECK_INT(parse(LIT("HTTP/1.1 2000"), LIMIT, &r), SG_ERROR);
    CHECK_INT(parse(LIT("HTTP/1.1 200 O\rK"), LIMIT, &r), SG_ERROR);
    CHECK(error_has(&r, "CR"));
}

/* ---- headers -------------------------------------------------------- */

static void
test_known_headers(void)
{
    static const char head[] = "HTTP/1.0 200 OK\r\n"
                               "auth-status: OK\r\n"
                               "AUTH-SERVER:\t192.0.2.10 \t\r\n"
                               "Auth-Port:  2525\r\n"
                               "Auth-Wait:3\r\n"
                               "aUTH-eRROR-cODE: 535 5.7.8\r\n"
                               "Auth-User: alice@example.org\r\n"
                               "Auth-Pass: s3cr\xc3\xa9t \tx\r\n"
                               "Auth-Upstream: pool-a\r\n"
                               "content-length: 0\r\n"
                               "CONNECTION: Keep-Alive\r\n"
                               "\r\n";

    sg_http_auth_response_t r;

    CHECK_INT(parse(head, sizeof(head) - 1, LIMIT, &r), SG_OK);
    CHECK_UINT(r.head_len, sizeof(head) - 1);
    CHECK_STR(r.h[SG_HTTP_H_AUTH_STATUS], "OK");
    CHECK_STR(r.h[SG_HTTP_H_AUTH_SERVER], "192.0.2.10");
    CHECK_STR(r.h[SG_HTTP_H_AUTH_PORT], "2525");
    CHECK_STR(r.h[SG_HTTP_H_AUTH_WAIT], "3");
    CHECK_STR(r.h[SG_HTTP_H_AUTH_ERROR_CODE], "535 5.7.8");
    CHECK_STR(r.h[SG_HTTP_H_AUTH_USER], "alice@example.org");
    CHECK_STR(r.h[SG_HTTP_H_AUTH_PASS], "s3cr\xc3\xa9t \tx");
    CHECK_STR(r.h[SG_HTTP_H_AUTH_UPSTREAM], "pool-a");
    CHECK_STR(r.h[SG_HTTP_H_CONTENT_LENGTH], "0");
    CHECK_STR(r.h[SG_HTTP_H_CONNECTION], "Keep-Alive");
    CHECK(r.h[SG_HTTP_H_TRANSFER_ENCODING].data == NULL);
    CHECK_INT(r.content_length, 0);
    CHECK(r.keepalive);

    /* Views point into the input, not at copies. */
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
              LIMIT, &r),
        SG_OK);
    CHECK_STR(r.h[SG_HTTP_H_TRANSFER_ENCODING], "chunked");
}

static void
test_empty_values(void)
{
    sg_http_auth_response_t r;

    /* Present but empty: data set, length 0; absent: data NULL. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status:\r\n"
                        "Auth-Wait: \t \r\n\r\n"),
                    LIMIT, &r),
              SG_OK);
    CHECK(r.h[SG_HTTP_H_AUTH_STATUS].data != NULL);
    CHECK_UINT(r.h[SG_HTTP_H_AUTH_STATUS].len, 0);
    CHECK(r.h[SG_HTTP_H_AUTH_WAIT].data != NULL);
    CHECK_UINT(r.h[SG_HTTP_H_AUTH_WAIT].len, 0);
    CHECK(r.h[SG_HTTP_H_AUTH_SERVER].data == NULL);
    CHECK_UINT(r.h[SG_HTTP_H_AUTH_SERVER].len, 0);
}

static void
test_unknown_headers(void)
{
    static const char head[] = "HTTP/1.1 200 OK\r\n"
                               "Server: nginx/1.25.3\r\n"
                               "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
                               "Auth-Statu: x\r\n"
                               "Auth-Statuses: x\r\n"
                               "Auth-Status-Extra: x\r\n"
                               "X-Auth-Status: x\r\n"
                               "X-Odd: \x80\xff\x7e\r\n"
                               "!#$%&'*+-.^_`|~09azAZ: tokens\r\n"
                               "Server: again\r\n"
                               "Auth-Status: Invalid login or password\r\n"
                               "\r\n";

    sg_http_auth_response_t r;
    int                     i;

    CHECK_INT(parse(head, sizeof(head) - 1, LIMIT, &r), SG_OK);
    CHECK_STR(r.h[SG_HTTP_H_AUTH_STATUS], "Invalid login or password");
    for (i = 0; i < SG_HTTP_H_COUNT; i++) {
        if (i != SG_HTTP_H_AUTH_STATUS) {
            CHECK(r.h[i].data == NULL);
        }
    }
}

static void
test_duplicates(void)
{
    char                    buf[256], want[64];
    const char             *name;
    sg_http_auth_response_t r;
    int                     i, n;

    for (i = 0; i < SG_HTTP_H_COUNT; i++) {
        name = sg_http_header_name((sg_http_header_e) i);
        n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 200 OK\r\n%s: 1\r\nX: y\r\n%s: 1\r\n\r\n", name,
                     name);
        CHECK_INT(parse(buf, (size_t) n, LIMIT, &r), SG_ERROR);
        snprintf(want, sizeof(want), "duplicate %s header", name);
        if (CHECK(r.error != NULL && strcmp(r.error, want) == 0)) {
            printf("    error \"%s\", want \"%s\"\n",
                   r.error ? r.error : "(null)", want);
        }
    }

    /* The same header in another case is the same header. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n"
                        "AUTH-STATUS: OK\r\n\r\n"),
                    LIMIT, &r),
              SG_ERROR);
    CHECK(error_has(&r, "Auth-Status"));

    /* Refused at the colon, before the line ends. */
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nAuth-Pass: a\r\nauth-pass:"), LIMIT, &r),
        SG_ERROR);
    CHECK(error_has(&r, "Auth-Pass"));
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nAuth-Pass: a\r\nauth-pass"), LIMIT, &r),
        SG_AGAIN);
}

static void
test_header_names(void)
{
    static const char *bad[] = {
        "HTTP/1.1 200 OK\r\nAuth-Status : OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth-Status\t: OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth Status: OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth-Status OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth-Status\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth(Status): OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth-St\x01tus: OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth-St\x7ftus: OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth-St\xc3\xa4tus: OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nAuth/Status: OK\r\n\r\n",
    };
    sg_http_auth_response_t r;
    size_t                  i;

    for (i = 0; i < sg_nelems(bad); i++) {
        if (CHECK_INT(parse(bad[i], strlen(bad[i]), LIMIT, &r), SG_ERROR)) {
            printf("    input %zu: \"%s\"\n", i, bad[i]);
        }
        CHECK(r.error != NULL);
    }

    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nAuth\0Status: OK\r\n\r\n"), LIMIT, &r),
        SG_ERROR);
    CHECK(error_has(&r, "NUL"));
    /* ... and as soon as the byte is here. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth\0"), LIMIT, &r), SG_ERROR);
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status "), LIMIT, &r),
              SG_ERROR);
}

static void
test_header_values(void)
{
    sg_http_auth_response_t r;
    char                    buf[64];
    int                     c, n, rc;

    /* Every control byte but HTAB, and DEL, is refused in a value. */
    for (c = 0; c < 0x80; c++) {
        if (c == '\r' || c == '\n') {
            continue;
        }
        n = snprintf(buf, sizeof(buf), "HTTP/1.1 200 OK\r\nAuth-Wait: 1");
        buf[n++] = (char) c;
        memcpy(buf + n, "2\r\n\r\n", 5);
        n += 5;
        rc = parse(buf, (size_t) n, LIMIT, &r);
        if (c == '\t' || (c >= 0x20 && c < 0x7f)) {
            if (CHECK_INT(rc, SG_OK)) {
                printf("    byte 0x%02x\n", c);
            }
        } else if (CHECK_INT(rc, SG_ERROR)) {
            printf("    byte 0x%02x\n", c);
        }
    }

    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nAuth-Pass: a\0b\r\n\r\n"), LIMIT, &r),
        SG_ERROR);
    CHECK(error_has(&r, "NUL"));
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nX-Unknown: a\0b\r\n\r\n"), LIMIT, &r),
        SG_ERROR);

    /* A CR not followed by LF, in a value and at a line end. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status: OK\rAuth-Pass: x\r\n"
                        "\r\n"),
                    LIMIT, &r),
              SG_ERROR);
    CHECK(error_has(&r, "CR"));
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status: OK\r\r\n\r\n"), LIMIT, &r),
        SG_ERROR);
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\n\r\r\n"), LIMIT, &r), SG_ERROR);
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n\rX"), LIMIT, &r),
        SG_ERROR);
}

static void
test_obs_fold(void)
{
    sg_http_auth_response_t r;

    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status: Invalid\r\n"
                        " login\r\n\r\n"),
                    LIMIT, &r),
              SG_ERROR);
    CHECK(error_has(&r, "folding"));
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nAuth-Status: Invalid\r\n"
                        "\tlogin\r\n\r\n"),
                    LIMIT, &r),
              SG_ERROR);
    CHECK(error_has(&r, "folding"));
    /* Right after the status line, and before the line has ended. */
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\n Auth-Status: OK\r\n\r\n"), LIMIT, &r),
        SG_ERROR);
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nA: b\r\n "), LIMIT, &r), SG_ERROR);
    /* A line of blanks is not the empty line either. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\n \r\n\r\n"), LIMIT, &r), SG_ERROR);
}

/* ---- Content-Length and keep-alive ---------------------------------- */

static void
test_content_length(void)
{
    static const char *bad[] = {
        "+5", "-5",   "1 2", "1\t2", "12345678901", "",
        "  ", "0x10", "5a",  "1,1",  "1.0",         "\xef\xbc\x95",
    };
    sg_http_auth_response_t r;
    char                    buf[128];
    size_t                  i;
    int                     n;

    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nContent-Length: 9999999999\r\n"
                        "\r\n"),
                    LIMIT, &r),
              SG_OK);
    CHECK_INT(r.content_length, INT64_C(9999999999));
    CHECK_INT(
        parse(LIT("HTTP/1.1 200 OK\r\nContent-Length:007 \r\n\r\n"), LIMIT, &r),
        SG_OK);
    CHECK_INT(r.content_length, 7);
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nContent-Length: 0000000000\r\n"
                        "\r\n"),
                    LIMIT, &r),
              SG_OK);
    CHECK_INT(r.content_length, 0);

    for (i = 0; i < sg_nelems(bad); i++) {
        n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n", bad[i]);
        if (CHECK_INT(parse(buf, (size_t) n, LIMIT, &r), SG_ERROR)) {
            printf("    Content-Length: \"%s\"\n", bad[i]);
        }
        CHECK(error_has(&r, "Content-Length"));
    }

    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                        "Content-Length: 5\r\n\r\n"),
                    LIMIT, &r),
              SG_ERROR);
    CHECK(error_has(&r, "duplicate Content-Length"));
}

static void
test_keepalive(void)
{
    static const struct {
        const char *head;
        bool        keepalive;
    } cases[] = {
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
          "Connection: close\r\n\r\n",
          false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
          "Connection: CLOSE\r\n\r\n",
          false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
          "Connection: keep-alive, close\r\n\r\n",
          false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
          "Connection: Upgrade ,  close \r\n\r\n",
          false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
          "Connection: closed\r\n\r\n",
          true },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
          "Connection: keep-alive\r\n\r\n",
          true },
        { "HTTP/1.1 200 OK\r\n\r\n", false },
        { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
          "Transfer-Encoding: chunked\r\n\r\n",
          false },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", false },
        { "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false },
        { "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n"
          "Connection: keep-alive\r\n\r\n",
          true },
        { "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n"
          "Connection: Keep-Alive\r\n\r\n",
          true },
        { "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n"
          "Connection: foo,keep-alive\r\n\r\n",
          true },
        { "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n"
          "Connection: keep-alive,close\r\n\r\n",
          false },
        { "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", false },
        { "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n"
          "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
          false },
        { "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n"
          "Connection: keepalive\r\n\r\n",
          false },
    };
    sg_http_auth_response_t r;
    size_t                  i;

    for (i = 0; i < sg_nelems(cases); i++) {
        CHECK_INT(parse(cases[i].head, strlen(cases[i].head), LIMIT, &r),
                  SG_OK);
        if (CHECK_INT(r.keepalive, cases[i].keepalive)) {
            printf("    case %zu: \"%s\"\n", i, cases[i].head);
        }
    }
}

/* ---- cuts, limits, body --------------------------------------------- */

static void
test_every_cut(void)
{
    static const char *heads[] = {
        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 192.0.2.1\r\n"
        "Auth-Port: 25\r\n\r\n",
        "HTTP/1.1 200 OK\nAuth-Status: Invalid login\nAuth-Wait: 3\n"
        "Content-Length: 0\n\n",
        "HTTP/1.1 204\r\n\r\n",
    };
    sg_http_auth_response_t r;
    size_t                  i, k, len, head_len;
    int                     rc;

    for (i = 0; i < sg_nelems(heads); i++) {
        len = strlen(heads[i]);
        CHECK_INT(parse(heads[i], len, LIMIT, &r), SG_OK);
        head_len = r.head_len;
        CHECK_UINT(head_len, len);
        for (k = 0; k < len; k++) {
            rc = parse(heads[i], k, LIMIT, &r);
            if (CHECK_INT(rc, SG_AGAIN)) {
                printf("    head %zu cut at %zu: %s\n", i, k,
                       r.error ? r.error : "");
            }
            CHECK(r.error == NULL);
        }
        CHECK_INT(parse(heads[i], len, LIMIT, &r), SG_OK);
        CHECK_UINT(r.head_len, head_len);
    }

    CHECK_INT(parse(LIT(""), LIMIT, &r), SG_AGAIN);
}

static void
test_limit(void)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n\r\n";

    sg_http_auth_response_t r;
    size_t                  n = sizeof(head) - 1;

    CHECK_INT(parse(head, n, n, &r), SG_OK);
    CHECK_UINT(r.head_len, n);
    CHECK_INT(parse(head, n, n - 1, &r), SG_ERROR);
    CHECK(error_has(&r, "too long"));
    /* One byte short with room to go: wait. */
    CHECK_INT(parse(head, n - 1, n, &r), SG_AGAIN);
    /* One byte short and at the limit: it can never fit. */
    CHECK_INT(parse(head, n - 1, n - 1, &r), SG_ERROR);
    CHECK(error_has(&r, "too long"));
    CHECK_INT(parse(head, n, 0, &r), SG_ERROR);
    CHECK_INT(parse(LIT(""), 0, &r), SG_ERROR);
    /* Bytes past the limit do not matter once the head has ended. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\n\r\nlong body here"), 19, &r),
              SG_OK);
    CHECK_UINT(r.head_len, 19);
}

static void
test_head_len_and_body(void)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n"
                               "HTTP/1.1 500 xyz\r\n\r\n";

    sg_http_auth_response_t r;

    CHECK_INT(parse(resp, sizeof(resp) - 1, LIMIT, &r), SG_OK);
    CHECK_INT(r.status, 200);
    CHECK_UINT(r.head_len, sizeof(resp) - 1 - 20);
    CHECK_INT(r.content_length, 20);

    /* A body that looks like bad headers is not looked at. */
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\n\n \0\r\x01:"), LIMIT, &r), SG_OK);
    CHECK_UINT(r.head_len, 17);
    CHECK_INT(parse(LIT("HTTP/1.1 200 OK\r\nA: b\r\n\r\n\r\n"), LIMIT, &r),
              SG_OK);
    CHECK_UINT(r.head_len, 25);
}

static void
test_header_name(void)
{
    CHECK(strcmp(sg_http_header_name(SG_HTTP_H_AUTH_STATUS), "Auth-Status")
          == 0);
    CHECK(strcmp(sg_http_header_name(SG_HTTP_H_AUTH_ERROR_CODE),
                 "Auth-Error-Code")
          == 0);
    CHECK(strcmp(sg_http_header_name(SG_HTTP_H_TRANSFER_ENCODING),
                 "Transfer-Encoding")
          == 0);
    CHECK(sg_http_header_name(SG_HTTP_H_COUNT) != NULL);
    CHECK(sg_http_header_name((sg_http_header_e) -1) != NULL);
}

int
main(void)
{
    sg_test_start();

    RUN(test_escape_every_byte);
    RUN(test_escape_strings);
    RUN(test_escape_length_mode);
    RUN(test_status_versions);
    RUN(test_status_garbage);
    RUN(test_status_early);
    RUN(test_known_headers);
    RUN(test_empty_values);
    RUN(test_unknown_headers);
    RUN(test_duplicates);
    RUN(test_header_names);
    RUN(test_header_values);
    RUN(test_obs_fold);
    RUN(test_content_length);
    RUN(test_keepalive);
    RUN(test_every_cut);
    RUN(test_limit);
    RUN(test_head_len_and_body);
    RUN(test_header_name);

    return sg_test_finish();
}
