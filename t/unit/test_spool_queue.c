/*
 * test_spool_queue.c: unit tests for the forwarding spool's envelope
 * reader, its attribute walker and the delivery status notification.
 *
 * The envelope is read from exact-size heap copies, so that a read one
 * byte too far is a sanitizer report under make unit-asan; every cut of
 * a good envelope must ask for more, or fail as truncated when the file
 * is said to be complete.  Notifications are checked line by line for
 * what a receiving MTA relies on (CRLF only, 998 octets, the boundary
 * in its place and nowhere else), with hostile replies and headers, and
 * once against the exact text.
 */
#include "sg_core.h"
#include "sg_spool_queue.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

#define RCPTS_MAX  8

#define HAS(out, len, lit)  (memmem(out, len, lit, sizeof(lit) - 1) != NULL)

static const char  *env_one =
    "Return-Path: <alice@example.org>\r\n"
    "X-Original-To: bob@example.net\r\n"
    "Received: from client.example ([192.0.2.7])\r\n"
    "\tby mx.example.org (smtpgate) with ESMTPA id 4Hx2\r\n"
    "Subject: hi\r\n"
    "\r\n"
    "body\r\n";

static const char  *env_forward =
    "Return-Path: <alice@example.org>\r\n"
    "X-Original-To: bob@example.net\r\n"
    "X-Original-To: carol@example.net\r\n"
    "X-Original-To: dave@example.com\r\n"
    "X-Smtpgate-Forward: ADDR=192.0.2.7 PORT=51234 HELO=client.example\r\n"
    "\tLOGIN=a+2Bb PROTO=ESMTP BODY=8BITMIME SMTPUTF8\r\n"
    " =skipped\r\n"
    "Received: from client.example\r\n"
    "\r\n";

static const char  *env_null =
    "return-path:<>\r\n"
    "x-original-to:\tpostmaster@example.org\r\n"
    "RECEIVED:x";


typedef struct {
    int                   rc;
    const char           *err;
    sg_spool_envelope_t   env;
    sg_str_t              rcpts[RCPTS_MAX];
} parsed_t;

static void
parse(const char *s, size_t n, bool complete, size_t max, parsed_t *r)
{
    const u_char  *p;

    p = sg_test_bytes(s, n);
    memset(r, 0x5a, sizeof(*r));
    r->err = NULL;
    r->env.rcpts = r->rcpts;
    r->rc = sg_spool_envelope_parse(p, n, complete, &r->env, max, &r->err);
}

/* The same from a private copy, for loops that would use up the
 * harness's copies: only the code, the error and the body are kept. */
static int
parse_cut(const char *s, size_t n, bool complete, size_t *body,
    const char **err)
{
    sg_spool_envelope_t  env;
    sg_str_t             rcpts[RCPTS_MAX];
    u_char              *p;
    int                  rc;

    p = malloc(n ? n : 1);
    if (p == NULL) {
        printf("Bail out: out of memory\n");
        exit(2);
    }
    if (n) {
        memcpy(p, s, n);
    }
    env.rcpts = rcpts;
    *err = NULL;
    rc = sg_spool_envelope_parse(p, n, complete, &env, RCPTS_MAX, err);
    *body = env.body;
    free(p);
    return rc;
}

static void
test_envelope_one(void)
{
    parsed_t  r;

    parse(env_one, strlen(env_one), true, RCPTS_MAX, &r);
    if (CHECK_INT(r.rc, SG_OK)) {
        printf("    err: %s\n", r.err);
        return;
    }
    CHECK_STR(r.env.sender, "alice@example.org");
    CHECK_UINT(r.env.nrcpts, 1);
    CHECK_STR(r.env.rcpts[0], "bob@example.net");
    CHECK_UINT(r.env.attrs.len, 0);
    CHECK_UINT(r.env.body, strlen("Return-Path: <alice@example.org>\r\n"
                                  "X-Original-To: bob@example.net\r\n"));
    CHECK(r.err == NULL);

    /* exactly the room for one recipient */
    parse(env_one, strlen(env_one), true, 1, &r);
    CHECK_INT(r.rc, SG_OK);
}

static void
test_envelope_forward(void)
{
    parsed_t  r;

    parse(env_forward, strlen(env_forward), false, RCPTS_MAX, &r);
    if (CHECK_INT(r.rc, SG_OK)) {
        printf("    err: %s\n", r.err);
        return;
    }
    CHECK_STR(r.env.sender, "alice@example.org");
    CHECK_UINT(r.env.nrcpts, 3);
    CHECK_STR(r.env.rcpts[0], "bob@example.net");
    CHECK_STR(r.env.rcpts[1], "carol@example.net");
    CHECK_STR(r.env.rcpts[2], "dave@example.com");
    CHECK_STR(r.env.attrs, " ADDR=192.0.2.7 PORT=51234 HELO=client.example"
                           "\r\n\tLOGIN=a+2Bb PROTO=ESMTP BODY=8BITMIME"
                           " SMTPUTF8\r\n =skipped");
    CHECK_STR(((sg_str_t) { 9, (u_char *) env_forward + r.env.body }),
              "Received:");

    /* one line, no value at all */
    parse(LIT("Return-Path: <a>\r\nX-Original-To: b\r\n"
              "X-Smtpgate-Forward: ADDR=::1\r\nReceived:\r\n"), true,
          RCPTS_MAX, &r);
    CHECK_INT(r.rc, SG_OK);
    CHECK_STR(r.env.attrs, " ADDR=::1");
    parse(LIT("Return-Path: <a>\r\nX-Original-To: b\r\n"
              "x-smtpgate-forward:\r\nReceived:\r\n"), true, RCPTS_MAX, &r);
    CHECK_INT(r.rc, SG_OK);
    CHECK_UINT(r.env.attrs.len, 0);
}

static void
test_envelope_null_sender(void)
{
    parsed_t  r;

    parse(env_null, strlen(env_null), true, RCPTS_MAX, &r);
    if (CHECK_INT(r.rc, SG_OK)) {
        printf("    err: %s\n", r.err);
        return;
    }
    CHECK_UINT(r.env.sender.len, 0);
    CHECK_UINT(r.env.nrcpts, 1);
    CHECK_STR(r.env.rcpts[0], "postmaster@example.org");
    CHECK_UINT(r.env.body, strlen(env_null) - 10);

    /* the last '>' closes the address; spaces only before '<' */
    parse(LIT("Return-Path:  \t<\"a>b\"@x>\r\nX-Original-To: b  \r\n"
              "Received: x\r\n"), true, RCPTS_MAX, &r);
    CHECK_INT(r.rc, SG_OK);
    CHECK_STR(r.env.sender, "\"a>b\"@x");
    CHECK_STR(r.env.rcpts[0], "b  ");
}

/* Every cut before "Received:" is whole: AGAIN, or truncated when the
 * file is complete; from there on the same result as the whole. */
static void
check_cuts(const char *s)
{
    size_t       n = strlen(s), k, body, want;
    const char  *err;
    int          rc;

    rc = parse_cut(s, n, true, &want, &err);
    if (CHECK_INT(rc, SG_OK)) {
        return;
    }
    for (k = 0; k <= n; k++) {
        if (k < want + 9) {
            rc = parse_cut(s, k, false, &body, &err);
            if (CHECK_INT(rc, SG_AGAIN)) {
                printf("    cut at %zu: %s\n", k, err);
            }
            rc = parse_cut(s, k, true, &body, &err);
            if (CHECK_INT(rc, SG_ERROR)
                || CHECK(strncmp(err, "truncated", 9) == 0))
            {
                printf("    cut at %zu\n", k);
            }
            continue;
        }
        rc = parse_cut(s, k, false, &body, &err);
        if (CHECK_INT(rc, SG_OK) || CHECK_UINT(body, want)) {
            printf("    cut at %zu\n", k);
        }
    }
}

static void
test_envelope_truncated(void)
{
    check_cuts(env_one);
    check_cuts(env_forward);
    check_cuts(env_null);
}

static void
test_envelope_errors(void)
{
    static const struct {
        const char  *in;
        const char  *err;
    } bad[] = {
        { "X-Original-To: b\r\nReceived: x\r\n", "no Return-Path line" },
        { "X-Original-To: b\r\nReturn-Path: <a>\r\nReceived: x\r\n",
          "no Return-Path line" },
        { " Return-Path: <a>\r\n", "no Return-Path line" },
        { "Return-Path : <a>\r\n", "no Return-Path line" },
        { "Return-Path: a@b\r\nX-Original-To: b\r\n",
          "bad Return-Path line" },
        { "Return-Path: <a\r\nX-Original-To: b\r\n",
          "bad Return-Path line" },
        { "Return-Path: <a> \r\nX-Original-To: b\r\n",
          "bad Return-Path line" },
        { "Return-Path:\r\nX-Original-To: b\r\n", "bad Return-Path line" },
        { "Return-Path: <a>\r\nX-Original-To: \r\nReceived: x\r\n",
          "empty X-Original-To" },
        { "Return-Path: <a>\r\nX-Original-To:\r\nReceived: x\r\n",
          "empty X-Original-To" },
        { "Return-Path: <a>\r\nReceived: x\r\n", "no X-Original-To line" },
        { "Return-Path: <a>\nX-Original-To: b\r\nReceived: x\r\n",
          "bare LF in the envelope" },
        { "Return-Path: <a>\r\nX-Original-To: b\nReceived: x\r\n",
          "bare LF in the envelope" },
        { "Return-Path: <a>\r\nX-Original-To: b\r\n"
          "X-Smtpgate-Forward: A=1\n\tB\r\nReceived: x\r\n",
          "bare LF in the envelope" },
        { "Return-Path: <a>\rX-Original-To: b\r\nReceived: x\r\n",
          "bare CR in the envelope" },
        { "Return-Path: <a>\r\r\nX-Original-To: b\r\nReceived: x\r\n",
          "bare CR in the envelope" },
        { "Return-Path: <a>\r\nX-Original-To: b\r\nSubject: x\r\n"
          "Received: x\r\n", "unexpected line in the envelope" },
        { "Return-Path: <a>\r\nX-Original-To: b\r\n\r\nReceived: x\r\n",
          "unexpected line in the envelope" },
        { "Return-Path: <a>\r\nX-Original-To: b\r\nDelivered-To: b\r\n",
          "unexpected line in the envelope" },
        { "Return-Path: <a>\r\nX-Original-To: b\r\n"
          "X-Smtpgate-Forward: A=1\r\nX-Smtpgate-Forward: B=2\r\n"
          "Received: x\r\n", "two X-Smtpgate-Forward headers" },
        { "Return-Path: <a>\r\nX-Smtpgate-Forward: A=1\r\n"
          "X-Original-To: b\r\nReceived: x\r\n", "no X-Original-To line" },
        { "Return-Path: <a>\r\nX-Original-To: b\r\n"
          "X-Smtpgate-Forward: A=1\r\nX-Original-To: c\r\nReceived: x\r\n",
          "X-Original-To after X-Smtpgate-Forward" },
        { "Return-Path: <a>\r\nX-Original-To: b\r\n\tc\r\nReceived: x\r\n",
          "continuation line out of place in the envelope" },
        { "Return-Path: <a>\r\n X-Original-To: b\r\nReceived: x\r\n",
          "continuation line out of place in the envelope" },
        { "Return-Path: <a>\r\nX-Original-To: 1\r\nX-Original-To: 2\r\n"
          "X-Original-To: 3\r\nReceived: x\r\n",
          "more recipients than the limit" },
    };
    parsed_t             r;
    size_t               i, n;
    int                  complete;

    for (i = 0; i < sg_nelems(bad); i++) {
        n = strlen(bad[i].in);
        for (complete = 0; complete < 2; complete++) {
            parse(bad[i].in, n, complete, 2, &r);
            if (CHECK_INT(r.rc, SG_ERROR)
                || CHECK(r.err != NULL && strcmp(r.err, bad[i].err) == 0))
            {
                sg_test_show("in", bad[i].in, n);
                printf("    err: %s\n", r.rc == SG_ERROR ? r.err : "-");
            }
        }
    }

    /* No Received: line: more may come, unless the file is all there. */
    parse(LIT("Return-Path: <a>\r\nX-Original-To: b\r\n"), false, 2, &r);
    CHECK_INT(r.rc, SG_AGAIN);
    parse(LIT("Return-Path: <a>\r\nX-Original-To: b\r\n"), true, 2, &r);
    CHECK_INT(r.rc, SG_ERROR);
    CHECK_STR(((sg_str_t) { 9, (u_char *) r.err }), "truncated");
    parse(LIT("Return-Path: <a>\r\nX-Original-To: b\r\nReceive"), true, 2,
          &r);
    CHECK_INT(r.rc, SG_ERROR);
    parse(LIT(""), true, 2, &r);
    CHECK_INT(r.rc, SG_ERROR);
    parse(LIT(""), false, 2, &r);
    CHECK_INT(r.rc, SG_AGAIN);

    /* no room at all */
    parse(env_one, strlen(env_one), true, 0, &r);
    CHECK_INT(r.rc, SG_ERROR);
}

static void
test_attrs_walk(void)
{
    static const char  *want[][2] = {
        { "ADDR", "192.0.2.7" }, { "PORT", "51234" },
        { "HELO", "client.example" }, { "LOGIN", "a+2Bb" },
        { "PROTO", "ESMTP" }, { "BODY", "8BITMIME" }, { "SMTPUTF8", NULL },
        { "A", "=b" }, { "EMPTY", "" },
    };
    static const char   s[] = " ADDR=192.0.2.7 PORT=51234"
                              " HELO=client.example\r\n\tLOGIN=a+2Bb"
                              " PROTO=ESMTP\r\n BODY=8BITMIME SMTPUTF8"
                              " =x == A==b\nEMPTY=\r\n";
    sg_str_t            attrs, name, value;
    size_t              pos = 0, i, last = 0;

    attrs.data = sg_test_bytes(s, sizeof(s) - 1);
    attrs.len = sizeof(s) - 1;
    for (i = 0; sg_spool_attr_next(&attrs, &pos, &name, &value); i++) {
        CHECK(pos > last && pos <= attrs.len);
        last = pos;
        if (CHECK(i < sg_nelems(want))) {
            break;
        }
        CHECK_STR(name, want[i][0]);
        if (want[i][1] == NULL) {
            CHECK_UINT(value.len, 0);
            CHECK(value.data == NULL);
        } else {
            CHECK_STR(value, want[i][1]);
            CHECK(value.data != NULL);
        }
    }
    CHECK_UINT(i, sg_nelems(want));
    CHECK_UINT(pos, attrs.len);
    /* at the end it stays at the end */
    CHECK(!sg_spool_attr_next(&attrs, &pos, &name, &value));

    attrs.len = 0;
    attrs.data = NULL;
    pos = 0;
    CHECK(!sg_spool_attr_next(&attrs, &pos, &name, &value));
    attrs.data = sg_test_bytes(LIT(" \t\r\n =1 =="));
    attrs.len = 10;
    CHECK(!sg_spool_attr_next(&attrs, &pos, &name, &value));
    CHECK_UINT(pos, 10);
}

static void
test_attrs_get(void)
{
    static const char   s[] = " ADDR=192.0.2.7 login=a+2Bb\r\n\tSMTPUTF8"
                              " LOGINX=no ADDR=second";
    sg_str_t            attrs, value;

    attrs.data = sg_test_bytes(s, sizeof(s) - 1);
    attrs.len = sizeof(s) - 1;
    CHECK(sg_spool_attr_get(&attrs, "LOGIN", &value));
    CHECK_STR(value, "a+2Bb");
    CHECK(sg_spool_attr_get(&attrs, "Login", &value));
    CHECK_STR(value, "a+2Bb");
    CHECK(sg_spool_attr_get(&attrs, "addr", &value));
    CHECK_STR(value, "192.0.2.7");          /* the first one */
    CHECK(sg_spool_attr_get(&attrs, "smtputf8", &value));
    CHECK_UINT(value.len, 0);
    CHECK(!sg_spool_attr_get(&attrs, "LOG", &value));
    CHECK(!sg_spool_attr_get(&attrs, "HELO", &value));
    CHECK(!sg_spool_attr_get(&attrs, "", &value));
    attrs.len = 0;
    CHECK(!sg_spool_attr_get(&attrs, "ADDR", &value));
}

static void
test_date(void)
{
    u_char    buf[64], *p;

    sg_str_t  s;

    p = sg_spool_format_date(buf, buf + sizeof(buf), 1795881104);
    s.data = buf;
    s.len = (size_t) (p - buf);
    CHECK_STR(s, "Sat, 28 Nov 2026 15:51:44 +0000");
    p = sg_spool_format_date(buf, buf + sizeof(buf), 0);
    s.len = (size_t) (p - buf);
    CHECK_STR(s, "Thu, 1 Jan 1970 00:00:00 +0000");
    p = sg_spool_format_date(buf, buf + 10, 1795881104);
    CHECK(p >= buf && p <= buf + 10);
    /* a time no calendar can show is not garbage */
    p = sg_spool_format_date(buf, buf + sizeof(buf),
                             (time_t) INT64_MAX);
    CHECK(p > buf && p <= buf + sizeof(buf));
}


/*
 * What every notification must hold, whatever went in; NULL when it
 * does, else what is wrong.  The boundary is read back from the
 * Content-Type: it must delimit exactly three parts, close once on the
 * last line, and start no other line.
 */
static const char *
dsn_problem(const u_char *p, size_t n, sg_str_t *boundary)
{
    static const char   bp[] = "\tboundary=\"";
    size_t              i, start, len, opens = 0, closes = 0;
    sg_str_t            b = sg_null_string;
    const u_char       *q;

    if (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n') {
        return "does not end in CRLF";
    }
    for (i = 0, start = 0; i < n; i++) {
        if (p[i] == '\n') {
            return "a bare LF";
        }
        if (p[i] != '\r') {
            continue;
        }
        if (i + 1 == n || p[i + 1] != '\n') {
            return "a bare CR";
        }
        len = i - start;
        if (len > 998) {
            return "a line over 998 octets";
        }
        q = p + start;
        if (b.data == NULL && len > sizeof(bp) && memcmp(q, bp, 11) == 0) {
            b.data = (u_char *) q + 11;
            b.len = len - 12;
            if (q[len - 1] != '"' || b.len == 0 || b.len > 70) {
                return "a bad boundary parameter";
            }
        } else if (b.data != NULL && len >= 2 + b.len && q[0] == '-'
                   && q[1] == '-' && memcmp(q + 2, b.data, b.len) == 0)
        {
            if (len == 2 + b.len) {
                opens++;
            } else if (len == 4 + b.len && q[len - 1] == '-'
                       && q[len - 2] == '-' && i + 2 == n)
            {
                closes++;
            } else {
                return "a line starts with the boundary";
            }
        }
        i++;
        start = i + 1;
    }
    if (b.data == NULL) {
        return "no boundary";
    }
    if (opens != 3 || closes != 1) {
        return "not three parts, closed";
    }
    if (boundary) {
        *boundary = b;
    }
    return NULL;
}

static u_char *
compose(const sg_spool_dsn_t *d, size_t *len)
{
    u_char      *out;
    const char  *why;

    out = sg_spool_dsn_compose(d, len);
    if (CHECK(out != NULL)) {
        printf("Bail out: out of memory\n");
        exit(2);
    }
    why = dsn_problem(out, *len, NULL);
    if (CHECK(why == NULL)) {
        printf("    %s\n", why);
        sg_test_show("dsn", out, *len);
    }
    return out;
}

/* The line of out that starts with prefix, without its CRLF. */
static sg_str_t
dsn_line(const u_char *out, size_t len, const char *prefix)
{
    sg_str_t       line = sg_null_string;
    const u_char  *p = out, *end = out + len, *e;
    size_t         n = strlen(prefix);

    while (p < end) {
        e = memmem(p, (size_t) (end - p), "\r\n", 2);
        if (e == NULL) {
            break;
        }
        if ((size_t) (e - p) >= n && memcmp(p, prefix, n) == 0) {
            line.data = (u_char *) p;
            line.len = (size_t) (e - p);
            return line;
        }
        p = e + 2;
    }
    return line;
}

/* The quoted header section: from after the part's empty line to the
 * closing boundary line. */
static sg_str_t
dsn_headers(const u_char *out, size_t len)
{
    sg_str_t       h = sg_null_string, b;
    const u_char  *p;

    if (dsn_problem(out, len, &b) != NULL) {
        return h;
    }
    p = memmem(out, len, "-headers\r\n\r\n", 12);
    if (p == NULL) {
        return h;
    }
    h.data = (u_char *) p + 12;
    h.len = (size_t) (out + len - (b.len + 6) - h.data);
    return h;
}

static sg_spool_dsn_t
dsn_simple(sg_spool_dsn_rcpt_t *r)
{
    sg_spool_dsn_t  d;

    memset(r, 0, sizeof(*r));
    sg_str_set(&r->rcpt, "bob@example.net");
    sg_str_set(&r->status, "5.1.1");
    sg_str_set(&r->reply, "550 5.1.1 <bob@example.net>: User unknown\r\n");
    sg_str_set(&r->remote, "mx.example.net[192.0.2.25]");

    memset(&d, 0, sizeof(d));
    sg_str_set(&d.host, "mx.example.org");
    sg_str_set(&d.queue_id, "4Hx2kQ0abc");
    sg_str_set(&d.dsn_id, "B8F1C2A9");
    d.arrival = 1795881104;
    d.now = 1795881104 + 3600;
    sg_str_set(&d.sender, "alice@example.org");
    d.rcpts = r;
    d.nrcpts = 1;
    sg_str_set(&d.message, "Received: from a\r\n\tby b\r\nSubject: hi\r\n"
                           "\r\nbody\r\n");
    return d;
}

static void
test_dsn_exact(void)
{
    static const char    want[] =
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        "To: <alice@example.org>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Sat, 28 Nov 2026 16:51:44 +0000\r\n"
        "Message-ID: <B8F1C2A9@mx.example.org>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        "\tboundary=\"B8F1C2A9/mx.example.org\"\r\n"
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        "--B8F1C2A9/mx.example.org\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        "This is the mail system at host mx.example.org.\r\n"
        "\r\n"
        "Your message, received Sat, 28 Nov 2026 15:51:44 +0000 with queue"
        " id 4Hx2kQ0abc,\r\n"
        "could not be delivered to one or more recipients.\r\n"
        "\r\n"
        "<bob@example.net>: host mx.example.net[192.0.2.25] said: 550 5.1.1"
        " <bob@example.net>: User unknown\r\n"
        "\r\n"
        "--B8F1C2A9/mx.example.org\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n"
        "X-Smtpgate-Queue-ID: 4Hx2kQ0abc\r\n"
        "Arrival-Date: Sat, 28 Nov 2026 15:51:44 +0000\r\n"
        "\r\n"
        "Final-Recipient: rfc822; bob@example.net\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Remote-MTA: dns; mx.example.net[192.0.2.25]\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: User unknown\r\n"
        "Last-Attempt-Date: Sat, 28 Nov 2026 16:51:44 +0000\r\n"
        "\r\n"
        "--B8F1C2A9/mx.example.org\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        "Received: from a\r\n"
        "\tby b\r\n"
        "Subject: hi\r\n"
        "--B8F1C2A9/mx.example.org--\r\n";
    sg_spool_dsn_rcpt_t  r;
    sg_spool_dsn_t       d;
    u_char              *out;
    size_t               len;

    d = dsn_simple(&r);
    out = compose(&d, &len);
    CHECK_MEM(out, len, want, sizeof(want) - 1);
    free(out);
}

/* A warning: the same report with "delayed" where a failure says
 * "failed", the retry deadline, the 4.x.y of the reply, and a text
 * that tells the sender not to send again. */
static void
test_dsn_delayed(void)
{
    sg_spool_dsn_rcpt_t  r;
    sg_spool_dsn_t       d;
    sg_str_t             l;
    u_char              *out;
    size_t               len;

    d = dsn_simple(&r);
    sg_str_set(&r.status, "4.2.2");
    sg_str_set(&r.reply, "452 4.2.2 <bob@example.net>: Mailbox full\r\n");
    sg_str_set(&r.text, "not delivered yet after 240 minutes");
    d.delayed = true;
    d.retry_until = d.arrival + 5 * 86400;
    out = compose(&d, &len);

    l = dsn_line(out, len, "Subject: ");
    CHECK_STR(l, "Subject: Delayed Mail (still being retried)");
    l = dsn_line(out, len, "Action: ");
    CHECK_STR(l, "Action: delayed");
    l = dsn_line(out, len, "Status: ");
    CHECK_STR(l, "Status: 4.2.2");
    l = dsn_line(out, len, "Will-Retry-Until: ");
    CHECK_STR(l, "Will-Retry-Until: Thu, 3 Dec 2026 15:51:44 +0000");
    l = dsn_line(out, len, "This is a warning only");
    CHECK_STR(l, "This is a warning only: it is still being tried, and "
                  "you need not send it again.");
    l = dsn_line(out, len, "It will be tried until ");
    CHECK_STR(l, "It will be tried until Thu, 3 Dec 2026 15:51:44 +0000.");
    l = dsn_line(out, len, "<bob@example.net>: ");
    CHECK_STR(l, "<bob@example.net>: not delivered yet after 240 minutes");
    l = dsn_line(out, len, "    host ");
    CHECK_STR(l, "    host mx.example.net[192.0.2.25] said: 452 4.2.2 "
                  "<bob@example.net>: Mailbox full");
    CHECK(memmem(out, len, "could not be delivered", 22) == NULL);
    CHECK(memmem(out, len, "Action: failed", 14) == NULL);
    free(out);

    /* no valid status and no deadline: 4.0.0, no Will-Retry-Until */
    sg_str_set(&r.status, "x");
    d.retry_until = 0;
    out = compose(&d, &len);
    l = dsn_line(out, len, "Status: ");
    CHECK_STR(l, "Status: 4.0.0");
    CHECK(memmem(out, len, "Will-Retry-Until", 16) == NULL);
    CHECK(memmem(out, len, "It will be tried until", 22) == NULL);
    free(out);
}

static void
test_dsn_recipients(void)
{
    sg_spool_dsn_rcpt_t  r[3];
    sg_spool_dsn_t       d;
    sg_str_t             line;
    u_char              *out;
    size_t               len;

    d = dsn_simple(&r[0]);
    r[1] = r[0];
    sg_str_set(&r[1].rcpt, "carol@example.net");
    r[1].remote.len = 0;
    sg_str_set(&r[1].status, "4.4.7");
    memset(&r[2], 0, sizeof(r[2]));
    sg_str_set(&r[2].rcpt, "dave@example.com");
    sg_str_set(&r[2].status, "5.4.4");
    sg_str_set(&r[2].text, "no MX or A record for example.com");
    d.nrcpts = 3;
    d.sender.len = 0;
    d.sender.data = NULL;

    out = compose(&d, &len);
    CHECK_STR(dsn_line(out, len, "To:"), "To: <>");
    CHECK_STR(dsn_line(out, len, "<carol"), "<carol@example.net>: 550 5.1.1"
              " <bob@example.net>: User unknown");
    CHECK_STR(dsn_line(out, len, "<dave"), "<dave@example.com>: no MX or A"
              " record for example.com");
    CHECK(HAS(out, len, "Status: 4.4.7\r\nDiagnostic-Code: smtp; 550"));
    CHECK(HAS(out, len, "Final-Recipient: rfc822; dave@example.com\r\n"
              "Action: failed\r\nStatus: 5.4.4\r\nLast-Attempt-Date: "));
    /* the groups: a blank line before each, and one before the end */
    CHECK(HAS(out, len, "+0000\r\n\r\nFinal-Recipient: rfc822; carol"));
    CHECK(HAS(out, len, "+0000\r\n\r\n--B8F1C2A9/mx.example.org\r\n"
              "Content-Type: text/rfc822-headers"));
    line = dsn_line(out, len, "Remote-MTA:");
    CHECK_STR(line, "Remote-MTA: dns; mx.example.net[192.0.2.25]");
    /* only the first one has a remote */
    CHECK(memmem(line.data + 1, (size_t) (out + len - line.data - 1),
                 "Remote-MTA:", 11) == NULL);
    free(out);
}

static void
test_dsn_status(void)
{
    static const char   *bad[] = { "", "5", "5.1", "5.1.", "51.1.1",
                                   "5.1234.1", "5.1.1 ", "5.1.1\r\nX",
                                   "x.1.1", "5..1", "5.1.1.1" };
    static const char   *good[] = { "5.1.1", "4.4.7", "5.123.999",
                                    "2.0.0" };
    sg_spool_dsn_rcpt_t  r;
    sg_spool_dsn_t       d;
    u_char              *out;
    size_t               len, i;
    char                 want[32];

    d = dsn_simple(&r);
    for (i = 0; i < sg_nelems(bad); i++) {
        r.status.data = (u_char *) bad[i];
        r.status.len = strlen(bad[i]);
        out = compose(&d, &len);
        if (CHECK_STR(dsn_line(out, len, "Status:"), "Status: 5.0.0")) {
            sg_test_show("status", bad[i], strlen(bad[i]));
        }
        free(out);
    }
    for (i = 0; i < sg_nelems(good); i++) {
        r.status.data = (u_char *) good[i];
        r.status.len = strlen(good[i]);
        out = compose(&d, &len);
        snprintf(want, sizeof(want), "Status: %s", good[i]);
        CHECK_STR(dsn_line(out, len, "Status:"), want);
        free(out);
    }
}

static void
test_dsn_headers_cut(void)
{
    sg_spool_dsn_rcpt_t  r;
    sg_spool_dsn_t       d;
    sg_str_t             h;
    u_char              *out, *msg, *p;
    size_t               len, i, nl;

    d = dsn_simple(&r);

    /* no empty line: all whole lines, the last partial one left out */
    sg_str_set(&d.message, "Received: a\r\nSubject: b\r\nX-Cut: par");
    out = compose(&d, &len);
    CHECK_STR(dsn_headers(out, len), "Received: a\r\nSubject: b\r\n");
    free(out);

    /* an empty message, and one that starts with its body */
    sg_str_set(&d.message, "");
    out = compose(&d, &len);
    CHECK_UINT(dsn_headers(out, len).len, 0);
    free(out);
    sg_str_set(&d.message, "\r\nReceived: a\r\n");
    out = compose(&d, &len);
    CHECK_UINT(dsn_headers(out, len).len, 0);
    free(out);

    /* 700 lines of 100 octets: 655 of them fit in 64 KB */
    msg = sg_test_bytes(NULL, 70000 + 6);
    for (i = 0, p = msg; i < 700; i++, p += 100) {
        memset(p, 'a', 98);
        memcpy(p, "X-Pad: ", 7);
        memcpy(p + 98, "\r\n", 2);
    }
    memcpy(p, "\r\nbody", 6);
    d.message.data = msg;
    d.message.len = 70006;
    out = compose(&d, &len);
    h = dsn_headers(out, len);
    CHECK_UINT(h.len, 65500);
    CHECK_MEM(h.data, h.len, msg, 65500);
    free(out);

    /* 64 lines of 1024 octets fill it exactly; each is folded once */
    for (i = 0, p = msg; i < 65; i++, p += 1024) {
        memset(p, 'b', 1022);
        memcpy(p + 1022, "\r\n", 2);
    }
    for (nl = 64; nl <= 65; nl++) {
        d.message.len = nl * 1024;
        out = compose(&d, &len);
        h = dsn_headers(out, len);
        CHECK_UINT(h.len, 64 * (1022 + 5));
        if (h.len == 64 * (1022 + 5)) {
            CHECK_MEM(h.data + 998, 3, "\r\n\t", 3);
            CHECK_MEM(h.data + 1027 - 2, 3, "\r\nb", 3);
        }
        free(out);
    }
}

static void
test_dsn_non_ascii(void)
{
    sg_spool_dsn_rcpt_t  r;
    sg_spool_dsn_t       d;
    u_char              *out;
    size_t               len;

    d = dsn_simple(&r);
    sg_str_set(&r.rcpt, "d\xc3\xb8@example.org");
    out = compose(&d, &len);
    CHECK(HAS(out, len, "Content-Type: message/global-delivery-status\r\n"));
    CHECK(HAS(out, len, "Content-Type: message/global-headers\r\n"));
    CHECK(HAS(out, len, "charset=utf-8\r\n"
              "Content-Transfer-Encoding: 8bit\r\n"));
    CHECK_STR(dsn_line(out, len, "Final-Recipient:"),
              "Final-Recipient: utf-8; d\xc3\xb8@example.org");
    CHECK(!HAS(out, len, "rfc822-headers"));
    free(out);

    /* a non-ASCII sender makes the report global as well */
    d = dsn_simple(&r);
    sg_str_set(&d.sender, "\xe7\x94\xa8\xe6\x88\xb7@example.cn");
    out = compose(&d, &len);
    CHECK(HAS(out, len, "global-delivery-status"));
    CHECK_STR(dsn_line(out, len, "Final-Recipient:"),
              "Final-Recipient: rfc822; bob@example.net");
    CHECK(HAS(out, len, "charset=us-ascii"));
    free(out);

    /* 8-bit text in a reply: only the text part says so */
    d = dsn_simple(&r);
    sg_str_set(&r.reply, "550 Benutzer unbekannt \xe2\x80\x94 nein");
    out = compose(&d, &len);
    CHECK(HAS(out, len, "charset=utf-8"));
    CHECK(HAS(out, len, "Content-Type: message/delivery-status\r\n"));
    CHECK(HAS(out, len, "text/rfc822-headers"));
    free(out);
}

static void
test_dsn_hostile(void)
{
    sg_spool_dsn_rcpt_t  r;
    sg_spool_dsn_t       d;
    sg_str_t             line;
    u_char              *out, *big;
    size_t               len, i;

    d = dsn_simple(&r);
    sg_str_set(&r.reply, "550-5.1.1 first\r\n550-second\rthird\nfourth\0"
                         "fifth\x7f\x1b[0m\r\n550 last\r\n\r\n");
    sg_str_set(&r.remote, "mx\r\n.example\0.net");
    sg_str_set(&d.sender, "a\r\nBcc: victim@example.com");
    out = compose(&d, &len);
    CHECK_STR(dsn_line(out, len, "Diagnostic-Code:"),
              "Diagnostic-Code: smtp; 550-5.1.1 first 550-second third fourth"
              " fifth  [0m 550 last");
    CHECK_STR(dsn_line(out, len, "Remote-MTA:"),
              "Remote-MTA: dns; mx .example .net");
    CHECK_STR(dsn_line(out, len, "To:"), "To: <a Bcc: victim@example.com>");
    CHECK(dsn_line(out, len, "Bcc:").data == NULL);
    free(out);

    /* 100 KB of reply: cut to fit the line */
    big = sg_test_bytes(NULL, 100 * 1024);
    memset(big, 'x', 100 * 1024);
    for (i = 0; i < 100 * 1024; i += 700) {
        memcpy(big + i, "\r\n550-", 6);
    }
    r.reply.data = big;
    r.reply.len = 100 * 1024;
    r.text = r.reply;
    r.rcpt = r.reply;
    r.remote = r.reply;
    d.queue_id = r.reply;
    d.dsn_id = r.reply;
    d.host = r.reply;
    d.sender = r.reply;
    out = compose(&d, &len);
    line = dsn_line(out, len, "Diagnostic-Code:");
    CHECK_UINT(line.len, sizeof("Diagnostic-Code: smtp; ") - 1 + 900);
    CHECK(len < 64 * 1024);
    free(out);
}

static void
test_dsn_hostile_headers(void)
{
    static const char    head_in[] =
        "A: 1\nB: 2\rC: 3\r\n--B8F1C2A9/mx.example.org\r\n"
        "--B8F1C2A9/mx.example.org--\r\nX: ";
    static const char    head_out[] =
        "A: 1\r\nB: 2\r\nC: 3\r\n --B8F1C2A9/mx.example.org\r\n"
        " --B8F1C2A9/mx.example.org--\r\nX: ";
    static const char    tail_in[] =
        "\r\n--B8F1C2A9/mx.example.org\r\n\r\nbody";
    sg_spool_dsn_rcpt_t  r;
    sg_spool_dsn_t       d;
    sg_str_t             h;
    u_char              *out, *big, *p;
    size_t               len;

    /*
     * Headers with bare CR and LF, the boundary and its close, and a
     * 5003-octet line: folded after 998 octets and then after every
     * 997 (TAB first), five times.
     */
    d = dsn_simple(&r);
    big = sg_test_bytes(NULL, sizeof(head_in) - 1 + 5000 + sizeof(tail_in));
    memcpy(big, head_in, sizeof(head_in) - 1);
    memset(big + sizeof(head_in) - 1, 'y', 5000);
    memcpy(big + sizeof(head_in) - 1 + 5000, tail_in, sizeof(tail_in) - 1);
    d.message.data = big;
    d.message.len = sizeof(head_in) - 1 + 5000 + sizeof(tail_in) - 1;
    out = compose(&d, &len);
    h = dsn_headers(out, len);
    if (!CHECK_UINT(h.len, sizeof(head_out) - 1 + 5000 + 5 * 3 + 2
                           + sizeof(" --B8F1C2A9/mx.example.org\r\n") - 1))
    {
        CHECK_MEM(h.data, sizeof(head_out) - 1, head_out,
                  sizeof(head_out) - 1);
        p = h.data + sizeof(head_out) - 1 - 3;
        CHECK_MEM(p + 998, 4, "\r\n\ty", 4);
        CHECK_MEM(p + 998 + 3 + 997, 4, "\r\n\ty", 4);
        CHECK_MEM(h.data + h.len - 31, 31,
                  "y\r\n --B8F1C2A9/mx.example.org\r\n", 31);
    }
    free(out);

    /* a bare CR ends a line, so the CRLF right after it is the empty
     * line that ends the section */
    sg_str_set(&d.message, "A: 1\r\r\nB: 2\r\n");
    out = compose(&d, &len);
    CHECK_STR(dsn_headers(out, len), "A: 1\r\n");
    free(out);

    /* a host and id that do not belong in a boundary */
    d = dsn_simple(&r);
    sg_str_set(&d.host, "mx \"example\"\r\n.org");
    sg_str_set(&d.dsn_id, "0123456789012345678901234567890123456789"
                          "0123456789012345678901234567890123456789");
    out = compose(&d, &len);
    CHECK_STR(dsn_line(out, len, "\tboundary="),
              "\tboundary=\"0123456789012345678901234567890123456789"
              "012345678901234567890123456789\"");
    free(out);
    sg_str_set(&d.dsn_id, "id");
    out = compose(&d, &len);
    CHECK_STR(dsn_line(out, len, "\tboundary="),
              "\tboundary=\"id/mx__example___.org\"");
    CHECK_STR(dsn_line(out, len, "Message-ID:"),
              "Message-ID: <id@mx \"example\" .org>");
    free(out);
}

/* A generator that needs no global state and repeats across runs. */
static uint32_t
rnd(uint32_t *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return *seed >> 8;
}

/* Random bytes, mostly the ones that matter here, in an exact-size
 * heap block (NULL when n is 0). */
static u_char *
rnd_bytes(uint32_t *seed, size_t n)
{
    static const char   tokens[] = "\r\n\r\n\0\x7f\xc3\xb8\x80 \t<>=:-";
    u_char             *p;
    size_t              i;

    if (n == 0) {
        return NULL;
    }
    p = malloc(n);
    if (p == NULL) {
        printf("Bail out: out of memory\n");
        exit(2);
    }
    for (i = 0; i < n; i++) {
        p[i] = rnd(seed) % 3 ? tokens[rnd(seed) % (sizeof(tokens) - 1)]
                             : (u_char) rnd(seed);
    }
    return p;
}

static size_t
rnd_len(uint32_t *seed)
{
    switch (rnd(seed) % 8) {
    case 0:
        return 0;
    case 1:
        return 900 + rnd(seed) % 3000;
    default:
        return rnd(seed) % 64;
    }
}

/* Random envelopes: mostly well formed, from the lines they are made
 * of, then as often as not broken a little (a byte changed, a stray
 * line put in, the end cut off), so that the parser is taken past its
 * first line and to each of its refusals. */
static size_t
rnd_envelope(uint32_t *seed, u_char *buf, size_t size)
{
    static const char  *first[] = {
        "Return-Path: <a@b>\r\n", "Return-Path: <>\r\n",
        "return-path:\t<\"x>y\"@b>\r\n", "Return-Path: <a\r\n",
    };
    static const char  *rcpt[] = {
        "X-Original-To: r@x\r\n", "x-original-to:\tq@y\r\n",
        "X-Original-To:  \t\r\n",
    };
    static const char  *fwd[] = {
        "X-Smtpgate-Forward: ADDR=1 LOGIN=a+2Bb\r\n",
        "X-Smtpgate-Forward:\r\n",
    };
    static const char  *cont[] = { "\tFLAG =x A==\r\n", " \r\n" };
    static const char  *stray[] = {
        "Subject: s\r\n", "\r\n", "\n", "\r", "Received", "X-", "=",
        " x\r\n", "X-Original-To: z\r\n", "X-Smtpgate-Forward: B\r\n",
    };
    const char         *l[16];
    size_t              n = 0, k, i, nl = 0, count;

    /* the last of each list is the bad one: rarer than the others */
    k = rnd(seed) % 16;
    l[nl++] = first[k < sg_nelems(first) ? k : rnd(seed) % 3];
    count = rnd(seed) % 6;
    for (i = 0; i < count; i++) {
        k = rnd(seed) % 16;
        l[nl++] = rcpt[k < sg_nelems(rcpt) ? k : rnd(seed) % 2];
    }
    if (rnd(seed) % 2) {
        l[nl++] = fwd[rnd(seed) % sg_nelems(fwd)];
        count = rnd(seed) % 3;
        for (i = 0; i < count; i++) {
            l[nl++] = cont[rnd(seed) % sg_nelems(cont)];
        }
    }
    if (rnd(seed) % 4 == 0) {
        k = rnd(seed) % nl;
        memmove(&l[k + 1], &l[k], (nl - k) * sizeof(l[0]));
        l[k] = stray[rnd(seed) % sg_nelems(stray)];
        nl++;
    }
    l[nl++] = "Received: from x\r\n\r\nbody\n";

    for (i = 0; i < nl; i++) {
        k = strlen(l[i]);
        if (n + k > size) {
            break;
        }
        memcpy(buf + n, l[i], k);
        n += k;
    }
    if (n > 0 && rnd(seed) % 4 == 0) {
        buf[rnd(seed) % n] = (u_char) rnd(seed);
    }
    if (rnd(seed) % 4 == 0) {
        n = rnd(seed) % (n + 1);
    }
    return n;
}

static bool
inside(const sg_str_t *s, const u_char *p, size_t n)
{
    return s->len == 0
           || (s->data >= p && s->len <= n
               && (size_t) (s->data - p) <= n - s->len);
}

static void
random_envelope(uint32_t *seed)
{
    sg_spool_envelope_t  env;
    sg_str_t             rcpts[4], attrs, name, value;
    u_char               tmp[512], *p;
    const char          *err;
    size_t               n, i, pos, last;
    int                  rc, again;

    n = rnd_envelope(seed, tmp, sizeof(tmp));
    p = malloc(n ? n : 1);
    if (p == NULL) {
        printf("Bail out: out of memory\n");
        exit(2);
    }
    if (n) {
        memcpy(p, tmp, n);
    }
    env.rcpts = rcpts;
    again = sg_spool_envelope_parse(p, n, false, &env, 4, &err);
    rc = sg_spool_envelope_parse(p, n, true, &env, 4, &err);
    /* the last word is the same, or "more" became "truncated" */
    if (CHECK(again == SG_AGAIN ? rc == SG_ERROR : rc == again)) {
        sg_test_show("in", p, n);
    }
    if (rc == SG_OK) {
        CHECK(env.body + 9 <= n && env.nrcpts >= 1 && env.nrcpts <= 4);
        CHECK(sg_strncasecmp(p + env.body, (u_char *) "Received:", 9) == 0);
        CHECK(inside(&env.sender, p, env.body));
        CHECK(inside(&env.attrs, p, env.body));
        for (i = 0; i < env.nrcpts; i++) {
            CHECK(rcpts[i].len > 0 && inside(&rcpts[i], p, env.body));
        }
    }
    /* the input as attributes: every word inside, the walk moving on */
    attrs.data = p;
    attrs.len = n;
    pos = 0;
    last = 0;
    while (sg_spool_attr_next(&attrs, &pos, &name, &value)) {
        if (CHECK(name.len > 0 && inside(&name, p, n) && inside(&value, p, n)
                  && pos > last && pos <= n && name.data[0] != '='))
        {
            break;
        }
        last = pos;
    }
    free(p);
}

static void
random_dsn(uint32_t *seed)
{
    sg_spool_dsn_rcpt_t  r[3];
    sg_spool_dsn_t       d;
    sg_str_t            *fields[5 + 3 * 5];
    u_char              *out;
    size_t               len, i, nf = 0;
    const char          *why;
    bool                 replaced;

    memset(&d, 0, sizeof(d));
    memset(r, 0, sizeof(r));
    d.rcpts = r;
    d.nrcpts = rnd(seed) % 4;
    d.arrival = (time_t) rnd(seed) * 4096;
    d.now = rnd(seed) % 16 ? (time_t) rnd(seed) : (time_t) -1;
    fields[nf++] = &d.host;
    fields[nf++] = &d.queue_id;
    fields[nf++] = &d.dsn_id;
    fields[nf++] = &d.sender;
    fields[nf++] = &d.message;
    for (i = 0; i < 3; i++) {
        fields[nf++] = &r[i].rcpt;
        fields[nf++] = &r[i].status;
        fields[nf++] = &r[i].reply;
        fields[nf++] = &r[i].remote;
        fields[nf++] = &r[i].text;
    }
    for (i = 0; i < nf; i++) {
        fields[i]->len = rnd_len(seed);
        fields[i]->data = rnd_bytes(seed, fields[i]->len);
    }
    replaced = rnd(seed) % 2;
    if (replaced) {
        free(r[0].status.data);
        sg_str_set(&r[0].status, "5.7.1");
    }

    out = sg_spool_dsn_compose(&d, &len);
    if (CHECK(out != NULL)) {
        exit(2);
    }
    why = dsn_problem(out, len, NULL);
    if (CHECK(why == NULL)) {
        printf("    %s\n", why);
        sg_test_show("dsn", out, len);
    }
    free(out);
    for (i = 0; i < nf; i++) {
        if (!replaced || fields[i] != &r[0].status) {
            free(fields[i]->data);
        }
    }
}

static void
test_random(void)
{
    uint32_t       seed = 20261128;
    unsigned long  failed = sg_test_failed;
    int            i;

    for (i = 0; i < 4000 && sg_test_failed == failed; i++) {
        random_envelope(&seed);
    }
    for (i = 0; i < 3000 && sg_test_failed == failed; i++) {
        random_dsn(&seed);
    }
}

/* A file's queue id and arrival, from its name. */
static void
test_file_names(void)
{
    char    id[32];
    size_t  n;

    n = sg_spool_name_id("1796654461.M419151P18334Q1.mx.test:2,W", id,
                         sizeof(id));
    CHECK_UINT(n, strlen("1796654461M419151P18334Q1"));
    CHECK(strcmp(id, "1796654461M419151P18334Q1") == 0);
    n = sg_spool_name_id("noDots", id, sizeof(id));
    CHECK(n == 6 && strcmp(id, "noDots") == 0);
    n = sg_spool_name_id("a.b", id, sizeof(id));
    CHECK(n == 2 && strcmp(id, "ab") == 0);
    n = sg_spool_name_id("1234567890.M1P2Q3.host", id, 8);
    CHECK(n == 7 && strcmp(id, "1234567") == 0);     /* cut to size */
    CHECK_UINT(sg_spool_name_id("x", id, 0), 0);
    n = sg_spool_name_id("", id, sizeof(id));
    CHECK(n == 0 && id[0] == '\0');

    CHECK_INT(sg_spool_name_arrival("1796654461.M1P2Q3.h", 1796654500),
              1796654461);
    /* later than the file's mtime: the mtime */
    CHECK_INT(sg_spool_name_arrival("1796654461.M1P2Q3.h", 1000), 1000);
    CHECK_INT(sg_spool_name_arrival("x1796654461", 77), 77);
    CHECK_INT(sg_spool_name_arrival("", 77), 77);
    /* an endless number stops, bounded, before it overflows */
    CHECK(sg_spool_name_arrival("99999999999999999999999.x",
                                (time_t) 1 << 50) < ((time_t) 1 << 44));
}

int
main(void)
{
    sg_test_start();

    RUN(test_envelope_one);
    RUN(test_envelope_forward);
    RUN(test_envelope_null_sender);
    RUN(test_envelope_truncated);
    RUN(test_envelope_errors);
    RUN(test_attrs_walk);
    RUN(test_attrs_get);
    RUN(test_date);
    RUN(test_dsn_exact);
    RUN(test_dsn_delayed);
    RUN(test_dsn_recipients);
    RUN(test_dsn_status);
    RUN(test_dsn_headers_cut);
    RUN(test_dsn_non_ascii);
    RUN(test_dsn_hostile);
    RUN(test_dsn_hostile_headers);
    RUN(test_random);
    RUN(test_file_names);

    return sg_test_finish();
}
