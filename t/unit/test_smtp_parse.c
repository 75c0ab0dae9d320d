/*
 * test_smtp_parse.c: unit tests for the SMTP wire parsers.
 *
 * Every input is handed to the parser as an exact-size heap copy, so a
 * read one byte too far is a sanitizer report rather than luck.  The
 * hostile cases (limits at the byte, NULs, stray CR and LF, replies cut
 * at every offset, mismatched codes, oversized SASL parts) are the point;
 * the friendly ones are here to show the hostile ones fail for the
 * right reason.
 */
#include "sg_core.h"
#include "sg_smtp_parse.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

/* A line of n bytes: 'A' repeated, then the given ending. */
static u_char *
long_line(size_t n, const char *ending, size_t *len)
{
    size_t  elen = strlen(ending);
    u_char *buf, *p;

    buf = malloc(n + elen);
    memset(buf, 'A', n);
    memcpy(buf + n, ending, elen);
    *len = n + elen;
    p = sg_test_bytes(buf, *len);
    free(buf);
    return p;
}

static sg_smtp_line_e
read_line(const char *s, size_t n, size_t limit, sg_smtp_line_t *out)
{
    u_char *p = sg_test_bytes(s, n);

    return sg_smtp_read_line(p, p + n, limit, out);
}

/* ---- sg_smtp_read_line ---------------------------------------------- */

static void
test_line_simple(void)
{
    sg_smtp_line_t out;

    CHECK_INT(read_line(LIT("NOOP\r\n"), 512, &out), SG_SMTP_LINE_OK);
    CHECK_STR(out.line, "NOOP");
    CHECK_UINT(out.consumed, 6);

    CHECK_INT(read_line(LIT("\r\n"), 512, &out), SG_SMTP_LINE_OK);
    CHECK_UINT(out.line.len, 0);
    CHECK_UINT(out.consumed, 2);

    /* Only the first of two pipelined lines. */
    CHECK_INT(read_line(LIT("RSET\r\nQUIT\r\n"), 512, &out), SG_SMTP_LINE_OK);
    CHECK_STR(out.line, "RSET");
    CHECK_UINT(out.consumed, 6);

    /* Eight-bit bytes are the caller's business, not a line fault. */
    CHECK_INT(read_line(LIT("EHLO \xc3\xa9t\xc3\xa9\r\n"), 512, &out),
              SG_SMTP_LINE_OK);
    CHECK_STR(out.line, "EHLO \xc3\xa9t\xc3\xa9");
}

static void
test_line_again(void)
{
    sg_smtp_line_t out;

    CHECK_INT(read_line(LIT(""), 512, &out), SG_SMTP_LINE_AGAIN);
    CHECK_UINT(out.consumed, 0);
    CHECK_INT(read_line(LIT("NOOP"), 512, &out), SG_SMTP_LINE_AGAIN);
    CHECK_UINT(out.consumed, 0);

    /* A CR at the end may still be followed by its LF. */
    CHECK_INT(read_line(LIT("NOOP\r"), 512, &out), SG_SMTP_LINE_AGAIN);
    CHECK_INT(read_line(LIT("\r"), 512, &out), SG_SMTP_LINE_AGAIN);
    CHECK_UINT(out.consumed, 0);

    /* Faults are judged only once the LF shows what to drop. */
    CHECK_INT(read_line(LIT("NO\0OP"), 512, &out), SG_SMTP_LINE_AGAIN);
    CHECK_INT(read_line(LIT("NO\rOP"), 512, &out), SG_SMTP_LINE_AGAIN);
    CHECK_INT(read_line(LIT("\0"), 512, &out), SG_SMTP_LINE_AGAIN);
}

static void
test_line_limit(void)
{
    sg_smtp_line_t out;
    sg_smtp_line_e rc;
    u_char        *p;
    size_t         len;

    /* Exactly 512 octets with CRLF: accepted. */
    p = long_line(510, "\r\n", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_OK);
    CHECK_UINT(out.line.len, 510);
    CHECK_UINT(out.consumed, 512);
    CHECK(out.line.data == p);

    /* 513: refused, 512 bytes to drop, then skip to the LF. */
    p = long_line(511, "\r\n", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_TOO_LONG);
    CHECK_UINT(out.consumed, 512);
    CHECK_UINT(out.line.len, 512);
    CHECK_UINT(len - out.consumed, 1);

    /* 512 bytes with no LF: the CR at 512 cannot be followed by an LF
     * that fits, so waiting is pointless. */
    p = long_line(511, "\r", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_TOO_LONG);
    CHECK_UINT(out.consumed, 512);

    /* 511 bytes ending in CR: the LF would make exactly 512. */
    p = long_line(510, "\r", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_AGAIN);

    p = long_line(512, "", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_TOO_LONG);
    p = long_line(511, "", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_AGAIN);

    /* A huge buffer: consumed is limit, not the buffer size. */
    p = long_line(100000, "\r\n", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_TOO_LONG);
    CHECK_UINT(out.consumed, 512);

    /* Bare LF at the limit is a bare LF; one past it is too long. */
    p = long_line(511, "\n", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_BARE_LF);
    CHECK_UINT(out.consumed, 512);
    p = long_line(512, "\n", &len);
    rc = sg_smtp_read_line(p, p + len, SG_SMTP_CMD_LINE_MAX, &out);
    CHECK_INT(rc, SG_SMTP_LINE_TOO_LONG);
}

static void
test_line_small_limits(void)
{
    sg_smtp_line_t out;

    CHECK_INT(read_line(LIT("\r\n"), 2, &out), SG_SMTP_LINE_OK);
    CHECK_INT(read_line(LIT("a\r\n"), 2, &out), SG_SMTP_LINE_TOO_LONG);
    CHECK_UINT(out.consumed, 2);
    CHECK_INT(read_line(LIT("a\r\n"), 3, &out), SG_SMTP_LINE_OK);
    CHECK_INT(read_line(LIT("\n"), 1, &out), SG_SMTP_LINE_BARE_LF);
    CHECK_INT(read_line(LIT("a"), 1, &out), SG_SMTP_LINE_TOO_LONG);
    CHECK_UINT(out.consumed, 1);
    /* limit 0 refuses everything without consuming: the caller's skip
     * mode then drops the line, so a session cannot spin. */
    CHECK_INT(read_line(LIT("\r\n"), 0, &out), SG_SMTP_LINE_TOO_LONG);
    CHECK_UINT(out.consumed, 0);
}

static void
test_line_faults(void)
{
    sg_smtp_line_t out;

    CHECK_INT(read_line(LIT("NOOP\n"), 512, &out), SG_SMTP_LINE_BARE_LF);
    CHECK_STR(out.line, "NOOP");
    CHECK_UINT(out.consumed, 5);
    CHECK_INT(read_line(LIT("\n"), 512, &out), SG_SMTP_LINE_BARE_LF);
    CHECK_UINT(out.consumed, 1);
    CHECK_INT(read_line(LIT("\nNOOP\r\n"), 512, &out), SG_SMTP_LINE_BARE_LF);
    CHECK_UINT(out.consumed, 1);

    CHECK_INT(read_line(LIT("NO\rOP\r\n"), 512, &out), SG_SMTP_LINE_BARE_CR);
    CHECK_UINT(out.consumed, 7);
    CHECK_INT(read_line(LIT("NOOP\r\r\n"), 512, &out), SG_SMTP_LINE_BARE_CR);
    CHECK_INT(read_line(LIT("\r\r\n"), 512, &out), SG_SMTP_LINE_BARE_CR);
    CHECK_INT(read_line(LIT("\rNOOP\r\n"), 512, &out), SG_SMTP_LINE_BARE_CR);
    /* A smuggled "CR LF" split over a bare CR: still one line. */
    CHECK_INT(read_line(LIT("DATA\r.\r\nQUIT\r\n"), 512, &out),
              SG_SMTP_LINE_BARE_CR);
    CHECK_UINT(out.consumed, 8);

    CHECK_INT(read_line(LIT("NO\0OP\r\n"), 512, &out), SG_SMTP_LINE_NUL);
    CHECK_UINT(out.consumed, 7);
    CHECK_INT(read_line(LIT("\0\r\n"), 512, &out), SG_SMTP_LINE_NUL);
    CHECK_INT(read_line(LIT("NOOP\0\r\n"), 512, &out), SG_SMTP_LINE_NUL);
    CHECK_INT(read_line(LIT("\0\n"), 512, &out), SG_SMTP_LINE_NUL);

    /* Several faults: NUL, then bare CR, then bare LF. */
    CHECK_INT(read_line(LIT("a\rb\0c\n"), 512, &out), SG_SMTP_LINE_NUL);
    CHECK_INT(read_line(LIT("a\rbc\n"), 512, &out), SG_SMTP_LINE_BARE_CR);
    CHECK_UINT(out.consumed, 5);
}

/* Lines drop out one after another, as a session would see them. */
static void
test_line_session(void)
{
    static const char in[] = "EHLO a\r\n\nMAIL FROM:<>\r\nNO\0P\r\nQUIT\r\n";
    sg_smtp_line_e    want[] = { SG_SMTP_LINE_OK, SG_SMTP_LINE_BARE_LF,
                                 SG_SMTP_LINE_OK, SG_SMTP_LINE_NUL,
                                 SG_SMTP_LINE_OK, SG_SMTP_LINE_AGAIN };
    sg_smtp_line_t    out;
    u_char           *p, *last;
    size_t            i;

    p = sg_test_bytes(in, sizeof(in) - 1);
    last = p + sizeof(in) - 1;
    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        CHECK_INT(sg_smtp_read_line(p, last, 512, &out), want[i]);
        CHECK(out.consumed <= (size_t) (last - p));
        p += out.consumed;
    }
    CHECK(p == last);
}

static void
test_skip_line(void)
{
    sg_smtp_line_t out;
    u_char        *p;
    size_t         len, consumed;

    p = sg_test_bytes(LIT("abc\nrest"));
    CHECK(sg_smtp_skip_line(p, p + 8, &consumed));
    CHECK_UINT(consumed, 4);

    p = sg_test_bytes(LIT("abc\r"));
    CHECK(!sg_smtp_skip_line(p, p + 4, &consumed));
    CHECK_UINT(consumed, 4);

    CHECK(!sg_smtp_skip_line(p, p, &consumed));
    CHECK_UINT(consumed, 0);

    p = sg_test_bytes(LIT("\n"));
    CHECK(sg_smtp_skip_line(p, p + 1, &consumed));
    CHECK_UINT(consumed, 1);

    /* Too long, then skipped in three pieces, then back in step. */
    p = long_line(1500, "\r\nQUIT\r\n", &len);
    CHECK_INT(sg_smtp_read_line(p, p + len, 512, &out), SG_SMTP_LINE_TOO_LONG);
    p += out.consumed;
    CHECK(!sg_smtp_skip_line(p, p + 500, &consumed));
    CHECK_UINT(consumed, 500);
    p += consumed;
    CHECK(!sg_smtp_skip_line(p, p + 488, &consumed));
    p += consumed;
    CHECK(sg_smtp_skip_line(p, p + 10, &consumed));
    CHECK_UINT(consumed, 2);
    p += consumed;
    CHECK_INT(sg_smtp_read_line(p, p + 6, 512, &out), SG_SMTP_LINE_OK);
    CHECK_STR(out.line, "QUIT");
}

/* ---- sg_smtp_parse_command ------------------------------------------ */

static int
parse(const char *s, size_t n, sg_smtp_cmd_t *cmd)
{
    sg_str_t line;

    line.data = sg_test_bytes(s, n);
    line.len = n;
    return sg_smtp_parse_command(&line, cmd);
}

static void
test_command_simple(void)
{
    sg_smtp_cmd_t cmd;

    CHECK_INT(parse(LIT("EHLO mx.example.org"), &cmd), SG_OK);
    CHECK_INT(cmd.verb, SG_SMTP_EHLO);
    CHECK_STR(cmd.name, "EHLO");
    CHECK_STR(cmd.args, "mx.example.org");

    CHECK_INT(parse(LIT("mail FROM:<a@b.c> SIZE=100"), &cmd), SG_OK);
    CHECK_INT(cmd.verb, SG_SMTP_MAIL);
    CHECK_STR(cmd.name, "mail");
    CHECK_STR(cmd.args, "FROM:<a@b.c> SIZE=100");

    CHECK_INT(parse(LIT("RcPt To:<x@y>"), &cmd), SG_OK);
    CHECK_INT(cmd.verb, SG_SMTP_RCPT);
    CHECK_STR(cmd.args, "To:<x@y>");

    CHECK_INT(parse(LIT("NOOP"), &cmd), SG_OK);
    CHECK_INT(cmd.verb, SG_SMTP_NOOP);
    CHECK_UINT(cmd.args.len, 0);
    CHECK(cmd.args.data != NULL);

    CHECK_INT(parse(LIT("AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm"), &cmd),
              SG_OK);
    CHECK_INT(cmd.verb, SG_SMTP_AUTH);
    CHECK_STR(cmd.args, "PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
}

static void
test_command_blanks(void)
{
    sg_smtp_cmd_t cmd;

    CHECK_INT(parse(LIT("QUIT "), &cmd), SG_OK);
    CHECK_INT(cmd.verb, SG_SMTP_QUIT);
    CHECK_UINT(cmd.args.len, 0);
    CHECK_INT(parse(LIT("QUIT \t \t"), &cmd), SG_OK);
    CHECK_UINT(cmd.args.len, 0);
    CHECK_INT(parse(LIT("EHLO x  \t"), &cmd), SG_OK);
    CHECK_STR(cmd.args, "x");
    /* Only the one separating SP belongs to the verb. */
    CHECK_INT(parse(LIT("HELO  x"), &cmd), SG_OK);
    CHECK_STR(cmd.args, " x");
    CHECK_INT(parse(LIT("MAIL FROM: <a@b>"), &cmd), SG_OK);
    CHECK_STR(cmd.args, "FROM: <a@b>");
}

static void
test_command_bad(void)
{
    sg_smtp_cmd_t cmd;
    sg_str_t      empty = { 0, NULL };

    CHECK_INT(sg_smtp_parse_command(&empty, &cmd), SG_ERROR);
    CHECK_INT(parse(LIT(""), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT(" "), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT(" NOOP"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("\tNOOP"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("NOOP\tx"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("NO-OP"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("MAIL:FROM:<>"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("EHLO\0x"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("\0"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("\xc3\x89HLO x"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("EHL\xcf"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("\r"), &cmd), SG_ERROR);
    CHECK_INT(parse(LIT("GET/index.html"), &cmd), SG_ERROR);
    /* After an error the views are empty, never stale. */
    CHECK_INT(cmd.verb, SG_SMTP_UNKNOWN);
    CHECK_UINT(cmd.name.len, 0);
    CHECK_UINT(cmd.args.len, 0);
}

static void
test_command_unknown(void)
{
    static const char *words[] = {
        "XYZZY",  "EHL",     "EHLOX",    "HELOO",    "STARTTL",  "STARTTLSX",
        "XCLIEN", "XFORWAR", "1234",     "E",        "MAIL1",    "QUI",
        "0HLO",   "DAT4",    "XCLIENTS", "STARTTLZ", "XFORWARX", "BDATA",
        "TURNX",  "@HLO",    NULL
    };
    sg_smtp_cmd_t cmd;
    size_t        i, n;

    for (i = 0; words[i] != NULL; i++) {
        n = strlen(words[i]);
        if (words[i][0] == '@') {
            CHECK_INT(parse(words[i], n, &cmd), SG_ERROR);
            continue;
        }
        CHECK_INT(parse(words[i], n, &cmd), SG_OK);
        CHECK_INT(cmd.verb, SG_SMTP_UNKNOWN);
        CHECK_UINT(cmd.name.len, n);
    }
}

/* Every verb, in three spellings, maps back to itself. */
static void
test_command_all_verbs(void)
{
    sg_smtp_cmd_t cmd;
    const char   *name;
    char          buf[32];
    size_t        i, n, k;
    int           v;

    for (v = SG_SMTP_UNKNOWN + 1; v < SG_SMTP_VERB_COUNT; v++) {
        name = sg_smtp_verb_name(v);
        n = strlen(name);
        CHECK(n >= 4 && n < 16);

        for (k = 0; k < 3; k++) {
            for (i = 0; i < n; i++) {
                buf[i] = name[i];
                if ((k == 1 || (k == 2 && i % 2)) && name[i] >= 'A'
                    && name[i] <= 'Z') {
                    buf[i] = (char) (name[i] + 'a' - 'A');
                }
            }
            memcpy(buf + n, " arg", 4);
            CHECK_INT(parse(buf, n + 4, &cmd), SG_OK);
            CHECK_INT(cmd.verb, v);
            CHECK_STR(cmd.args, "arg");
            CHECK_UINT(cmd.name.len, n);
        }
    }

    CHECK_STR(((sg_str_t){ 4, (u_char *) sg_smtp_verb_name(SG_SMTP_EHLO) }),
              "EHLO");
    CHECK_INT(strcmp(sg_smtp_verb_name(SG_SMTP_XFORWARD), "XFORWARD"), 0);
    CHECK_INT(strcmp(sg_smtp_verb_name(SG_SMTP_STARTTLS), "STARTTLS"), 0);
    CHECK_INT(strcmp(sg_smtp_verb_name(SG_SMTP_UNKNOWN), ""), 0);
    CHECK_INT(strcmp(sg_smtp_verb_name(SG_SMTP_VERB_COUNT), ""), 0);
    CHECK_INT(strcmp(sg_smtp_verb_name((sg_smtp_verb_e) -1), ""), 0);
    CHECK_INT(strcmp(sg_smtp_verb_name((sg_smtp_verb_e) 1000), ""), 0);
}

/* ---- sg_smtp_parse_reply -------------------------------------------- */

static int
reply(const char *s, size_t n, size_t limit, sg_smtp_reply_t *r)
{
    u_char *p = sg_test_bytes(s, n);

    return sg_smtp_parse_reply(p, p + n, limit, r);
}

static void
test_reply_simple(void)
{
    sg_smtp_reply_t r;

    CHECK_INT(reply(LIT("250 ok\r\n"), 4096, &r), SG_OK);
    CHECK_INT(r.code, 250);
    CHECK_UINT(r.lines, 1);
    CHECK_UINT(r.len, 8);
    CHECK_STR(r.text, "ok");

    CHECK_INT(reply(LIT("250\r\n"), 4096, &r), SG_OK);
    CHECK_UINT(r.len, 5);
    CHECK_UINT(r.text.len, 0);
    CHECK_INT(reply(LIT("250 \r\n"), 4096, &r), SG_OK);
    CHECK_UINT(r.text.len, 0);

    CHECK_INT(reply(LIT("554 5.7.1 go away\r\n"), 4096, &r), SG_OK);
    CHECK_INT(r.code, 554);
    CHECK_STR(r.text, "5.7.1 go away");

    /* What follows the reply is left alone. */
    CHECK_INT(reply(LIT("220 hi\r\n250 next\r\n"), 4096, &r), SG_OK);
    CHECK_INT(r.code, 220);
    CHECK_UINT(r.len, 8);

    /* Bare LF endings are tolerated, also mixed with CRLF. */
    CHECK_INT(reply(LIT("250-a\n250 b\n"), 4096, &r), SG_OK);
    CHECK_UINT(r.lines, 2);
    CHECK_STR(r.text, "b");
    CHECK_INT(reply(LIT("250-a\r\n250 b\n"), 4096, &r), SG_OK);
    CHECK_INT(reply(LIT("250\n"), 4096, &r), SG_OK);
    CHECK_UINT(r.text.len, 0);
}

static void
test_reply_multiline(void)
{
    sg_smtp_reply_t r;
    u_char         *buf;
    size_t          i, n;

    CHECK_INT(reply(LIT("250-a\r\n250-b\r\n250 c\r\n"), 4096, &r), SG_OK);
    CHECK_UINT(r.lines, 3);
    CHECK_UINT(r.len, 21);
    CHECK_STR(r.text, "c");

    CHECK_INT(reply(LIT("250-\r\n250-\r\n250\r\n"), 4096, &r), SG_OK);
    CHECK_UINT(r.lines, 3);

    /* A thousand lines within the limit. */
    n = 1001 * 7;
    buf = malloc(n);
    for (i = 0; i < 1000; i++) {
        memcpy(buf + i * 7, "250-x\r\n", 7);
    }
    memcpy(buf + 7000, "250 y\r\n", 7);
    CHECK_INT(reply((char *) buf, n, n, &r), SG_OK);
    CHECK_UINT(r.lines, 1001);
    CHECK_INT(reply((char *) buf, n, n - 1, &r), SG_ERROR);
    CHECK_INT(reply((char *) buf, n - 1, n, &r), SG_AGAIN);
    free(buf);
}

static void
test_reply_bad(void)
{
    sg_smtp_reply_t r;

    CHECK_INT(reply(LIT("250-a\r\n251 b\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250-a\r\n350 b\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250-a\r\n205 b\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250-a\r\n250-b\r\n550 c\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("150 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("650 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("050 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("2a0 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("25 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT(" 250 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("2500 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250\tx\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250 a\0b\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250 a\rb\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250 a\r\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250\r250 x\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250-a\r\n\r\n"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("HTTP/1.1 400 Bad\r\n"), 4096, &r), SG_ERROR);
    /* An over-long reply with no end is refused, not waited for. */
    CHECK_INT(reply(LIT("250-a\r\n250-b\r\n"), 14, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250 ok\r\n"), 7, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250 ok\r\n"), 0, &r), SG_ERROR);
    CHECK_INT(reply(LIT(""), 0, &r), SG_ERROR);
}

/* Faults show as soon as their bytes arrive; no fault, no verdict. */
static void
test_reply_partial(void)
{
    sg_smtp_reply_t r;

    CHECK_INT(reply(LIT(""), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("2"), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("25"), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("250"), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("250\r"), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("250 ok\r"), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("250-"), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("250-a\r\n"), 4096, &r), SG_AGAIN);
    CHECK_INT(reply(LIT("250-a\r\n25"), 4096, &r), SG_AGAIN);

    CHECK_INT(reply(LIT("x"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("1"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("2x"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250x"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250 a\0"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250 a\rb"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250-a\r\n251"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250-a\r\n24"), 4096, &r), SG_ERROR);
    CHECK_INT(reply(LIT("250-a\r\n3"), 4096, &r), SG_ERROR);
}

static void
test_reply_line_max(void)
{
    sg_smtp_reply_t r;
    u_char         *p;
    size_t          len;

    /* "250 " + text + CRLF = exactly SG_SMTP_REPLY_LINE_MAX: fine. */
    p = long_line(SG_SMTP_REPLY_LINE_MAX - 2, "\r\n", &len);
    memcpy(p, "250 ", 4);
    CHECK_INT(sg_smtp_parse_reply(p, p + len, 65536, &r), SG_OK);
    CHECK_UINT(r.len, SG_SMTP_REPLY_LINE_MAX);
    CHECK_UINT(r.text.len, SG_SMTP_REPLY_LINE_MAX - 6);

    p = long_line(SG_SMTP_REPLY_LINE_MAX - 1, "\r\n", &len);
    memcpy(p, "250 ", 4);
    CHECK_INT(sg_smtp_parse_reply(p, p + len, 65536, &r), SG_ERROR);

    /* One byte short of the limit with no LF: wait.  At it: refuse. */
    p = long_line(SG_SMTP_REPLY_LINE_MAX - 1, "", &len);
    memcpy(p, "250-", 4);
    CHECK_INT(sg_smtp_parse_reply(p, p + len, 65536, &r), SG_AGAIN);
    p = long_line(SG_SMTP_REPLY_LINE_MAX - 1, "\r", &len);
    memcpy(p, "250-", 4);
    CHECK_INT(sg_smtp_parse_reply(p, p + len, 65536, &r), SG_ERROR);

    /* A long line later in the reply counts from its own start. */
    p = long_line(SG_SMTP_REPLY_LINE_MAX + 5, "\r\n", &len);
    memcpy(p, "250-a\r\n250 ", 11);
    CHECK_INT(sg_smtp_parse_reply(p, p + len, 65536, &r), SG_OK);
    CHECK_UINT(r.lines, 2);
    p = long_line(SG_SMTP_REPLY_LINE_MAX + 6, "\r\n", &len);
    memcpy(p, "250-a\r\n250 ", 11);
    CHECK_INT(sg_smtp_parse_reply(p, p + len, 65536, &r), SG_ERROR);
}

/*
 * Cut a reply at every offset: each prefix must be AGAIN, the whole OK
 * with the same result as in one piece.  Cut a bad reply likewise: once
 * a prefix is refused, every longer one is.
 */
static void
split_everywhere(const char *s, size_t n, int want)
{
    sg_smtp_reply_t r, whole;
    size_t          k;
    int             rc, seen_error;

    CHECK_INT(reply(s, n, 4096, &whole), want);
    seen_error = 0;
    for (k = 0; k < n; k++) {
        rc = reply(s, k, 4096, &r);
        if (want == SG_OK) {
            if (CHECK_INT(rc, SG_AGAIN)) {
                printf("    at offset %zu of %zu\n", k, n);
            }
            continue;
        }
        CHECK(rc == SG_AGAIN || rc == SG_ERROR);
        if (seen_error) {
            CHECK_INT(rc, SG_ERROR);
        }
        seen_error |= rc == SG_ERROR;
    }
    if (want == SG_OK) {
        CHECK_UINT(whole.len, n);
    }
}

static void
test_reply_split(void)
{
    split_everywhere(LIT("250 ok\r\n"), SG_OK);
    split_everywhere(LIT("250\r\n"), SG_OK);
    split_everywhere(LIT("250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"),
                     SG_OK);
    split_everywhere(LIT("421-a\n421-b\r\n421 c\n"), SG_OK);
    split_everywhere(LIT("250-\r\n250\r\n"), SG_OK);

    split_everywhere(LIT("250-a\r\n251 b\r\n"), SG_ERROR);
    split_everywhere(LIT("250 a\rb\r\n"), SG_ERROR);
    split_everywhere(LIT("250 a\0\r\n"), SG_ERROR);
    split_everywhere(LIT("199 x\r\n"), SG_ERROR);
}

static void
test_reply_next_line(void)
{
    static const char *want[] = { "mx Hello", "", "SIZE 10", "AUTH PLAIN" };
    sg_smtp_reply_t    r;
    sg_str_t           line;
    size_t             cursor, i;

    CHECK_INT(reply(LIT("250-mx Hello\r\n250-\r\n250-SIZE 10\n"
                        "250 AUTH PLAIN\r\nXXX"),
                    4096, &r),
              SG_OK);
    cursor = 0;
    for (i = 0; sg_smtp_reply_next_line(&r, &cursor, &line); i++) {
        if (CHECK(i < 4)) {
            break;
        }
        CHECK_STR(line, want[i]);
    }
    CHECK_UINT(i, 4);
    CHECK_UINT(cursor, r.len);
    CHECK(!sg_smtp_reply_next_line(&r, &cursor, &line));

    CHECK_INT(reply(LIT("250\r\n"), 4096, &r), SG_OK);
    cursor = 0;
    CHECK(sg_smtp_reply_next_line(&r, &cursor, &line));
    CHECK_UINT(line.len, 0);
    CHECK(!sg_smtp_reply_next_line(&r, &cursor, &line));
}

/* ---- sg_smtp_ehlo_has ----------------------------------------------- */

static const char ehlo[] = "250-mx.example.org Hello [192.0.2.1]\r\n"
                           "250-PIPELINING\r\n"
                           "250-SIZE 10240000\r\n"
                           "250-AUTH PLAIN LOGIN\r\n"
                           "250-AUTH=PLAIN\r\n"
                           "250-8BITMIME\r\n"
                           "250-ENHANCEDSTATUSCODES \r\n"
                           "250 STARTTLS\r\n";

static void
test_ehlo_has(void)
{
    sg_smtp_reply_t r;
    sg_str_t        params;

    CHECK_INT(reply(LIT(ehlo), 4096, &r), SG_OK);

    CHECK(sg_smtp_ehlo_has(&r, "STARTTLS", &params));
    CHECK_UINT(params.len, 0);
    CHECK(sg_smtp_ehlo_has(&r, "starttls", &params));
    CHECK(sg_smtp_ehlo_has(&r, "SIZE", &params));
    CHECK_STR(params, "10240000");
    CHECK(sg_smtp_ehlo_has(&r, "auth", &params));
    CHECK_STR(params, "PLAIN LOGIN");
    CHECK(sg_smtp_ehlo_has(&r, "8BITMIME", NULL));
    CHECK(sg_smtp_ehlo_has(&r, "PIPELINING", &params));
    CHECK(sg_smtp_ehlo_has(&r, "ENHANCEDSTATUSCODES", &params));
    CHECK_UINT(params.len, 0);

    /* Whole words only, and the greeting line is not a keyword. */
    CHECK(!sg_smtp_ehlo_has(&r, "PIPE", &params));
    CHECK_UINT(params.len, 0);
    CHECK(!sg_smtp_ehlo_has(&r, "PIPELININGS", &params));
    CHECK(sg_smtp_ehlo_has(&r, "AUTH=PLAIN", &params));
    CHECK_UINT(params.len, 0);
    CHECK(!sg_smtp_ehlo_has(&r, "mx.example.org", &params));
    CHECK(!sg_smtp_ehlo_has(&r, "SMTPUTF8", &params));
    CHECK(!sg_smtp_ehlo_has(&r, "", &params));
    CHECK(!sg_smtp_ehlo_has(&r, "STARTTLS ", &params));
}

static void
test_ehlo_edges(void)
{
    sg_smtp_reply_t r;
    sg_str_t        params;

    CHECK_INT(reply(LIT("250-STARTTLS\r\n250 SIZE\r\n"), 4096, &r), SG_OK);
    CHECK(!sg_smtp_ehlo_has(&r, "STARTTLS", &params));
    CHECK(sg_smtp_ehlo_has(&r, "SIZE", &params));
    CHECK_UINT(params.len, 0);

    CHECK_INT(reply(LIT("250 STARTTLS\r\n"), 4096, &r), SG_OK);
    CHECK(!sg_smtp_ehlo_has(&r, "STARTTLS", &params));

    CHECK_INT(reply(LIT("250-x\n250 SIZE  5\n"), 4096, &r), SG_OK);
    CHECK(sg_smtp_ehlo_has(&r, "SIZE", &params));
    CHECK_STR(params, " 5");

    /* A refusal can look like a capability list: it is not one. */
    CHECK_INT(reply(LIT("550-x\r\n550 STARTTLS\r\n"), 4096, &r), SG_OK);
    CHECK(!sg_smtp_ehlo_has(&r, "STARTTLS", &params));

    /* The pre-RFC "AUTH=" form is a different word. */
    CHECK_INT(reply(LIT("250-x\r\n250 AUTH=LOGIN PLAIN\r\n"), 4096, &r), SG_OK);
    CHECK(!sg_smtp_ehlo_has(&r, "AUTH", &params));

    CHECK_INT(reply(LIT("250-x\r\n250-\r\n250 \r\n"), 4096, &r), SG_OK);
    CHECK(!sg_smtp_ehlo_has(&r, "X", &params));
}

/* ---- sg_sasl_plain_split -------------------------------------------- */

static int
plain(const char *s, size_t n, sg_str_t *z, sg_str_t *c, sg_str_t *p)
{
    sg_str_t msg;

    msg.data = sg_test_bytes(s, n);
    msg.len = n;
    return sg_sasl_plain_split(&msg, z, c, p);
}

static void
test_plain_good(void)
{
    sg_str_t z, c, p, msg;

    CHECK_INT(plain(LIT("\0tim\0tanstaaftanstaaf"), &z, &c, &p), SG_OK);
    CHECK_UINT(z.len, 0);
    CHECK_STR(c, "tim");
    CHECK_STR(p, "tanstaaftanstaaf");

    CHECK_INT(plain(LIT("admin\0user\0pass"), &z, &c, &p), SG_OK);
    CHECK_STR(z, "admin");
    CHECK_STR(c, "user");
    CHECK_STR(p, "pass");

    CHECK_INT(plain(LIT("\0\xc3\xa9\0\xe2\x82\xac"), &z, &c, &p), SG_OK);
    CHECK_STR(c, "\xc3\xa9");
    CHECK_STR(p, "\xe2\x82\xac");

    /* The parts are views into the message. */
    msg.data = sg_test_bytes(LIT("a\0b\0c"));
    msg.len = 5;
    CHECK_INT(sg_sasl_plain_split(&msg, &z, &c, &p), SG_OK);
    CHECK(z.data == msg.data && c.data == msg.data + 2
          && p.data == msg.data + 4);
}

static void
test_plain_bad(void)
{
    sg_str_t z, c, p, msg = { 0, NULL };

    CHECK_INT(sg_sasl_plain_split(&msg, &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT(""), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("userpass"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("user\0pass"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("\0"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("\0\0"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("\0\0\0"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("\0\0pass"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("\0user\0"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("a\0b\0c\0"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("a\0b\0c\0d"), &z, &c, &p), SG_ERROR);
    CHECK_INT(plain(LIT("\0user\0pa\0ss"), &z, &c, &p), SG_ERROR);
    /* No half-split credentials are left behind. */
    CHECK(z.data == NULL && c.data == NULL && p.data == NULL);
    CHECK_UINT(z.len + c.len + p.len, 0);
}

static void
test_plain_sizes(void)
{
    u_char   buf[3 * 256 + 2];
    sg_str_t z, c, p;
    size_t   sz[3], i, n;
    int      part, big;

    /* 255 octets in any part is fine; 256 in any one is not. */
    for (big = -1; big < 3; big++) {
        for (part = 0; part < 3; part++) {
            sz[part] = (part == big) ? 256 : 255;
        }
        n = 0;
        for (part = 0; part < 3; part++) {
            for (i = 0; i < sz[part]; i++) {
                buf[n++] = (u_char) ('a' + part);
            }
            if (part < 2) {
                buf[n++] = '\0';
            }
        }
        CHECK_INT(plain((char *) buf, n, &z, &c, &p),
                  big < 0 ? SG_OK : SG_ERROR);
        if (big < 0) {
            CHECK_UINT(z.len, 255);
            CHECK_UINT(c.len, 255);
            CHECK_UINT(p.len, 255);
        }
    }
}

/* ---- sg_smtp_xtext_encode ------------------------------------------- */

static void
xtext(const char *s, size_t n, const char *want)
{
    sg_str_t src;
    u_char  *dst;
    size_t   len;

    src.data = sg_test_bytes(s, n);
    src.len = n;
    len = sg_smtp_xtext_encode(NULL, &src);
    CHECK_UINT(len, strlen(want));
    dst = sg_test_bytes(NULL, len);
    CHECK_UINT(sg_smtp_xtext_encode(dst, &src), len);
    CHECK_MEM(dst, len, want, strlen(want));
    /* and back */
    src.data = dst;
    src.len = len;
    dst = sg_test_bytes(NULL, len + 1);
    CHECK_INT(sg_smtp_xtext_decode(dst, &src, &len), SG_OK);
    CHECK_MEM(dst, len, s, n);
}

static void
xtext_bad(const char *s)
{
    sg_str_t  src;
    u_char   *dst;
    size_t    len = 12345;

    src.data = sg_test_bytes(s, strlen(s));
    src.len = strlen(s);
    dst = sg_test_bytes(NULL, src.len + 1);
    CHECK_INT(sg_smtp_xtext_decode(dst, &src, &len), SG_ERROR);
    CHECK_UINT(len, 12345);
}

/* ---- sg_smtp_parse_path, sg_smtp_next_param ------------------------- */

static int
path(const char *s, size_t n, const char *prefix, bool null,
    sg_smtp_path_t *out)
{
    sg_str_t  args;

    args.data = sg_test_bytes(s, n);
    args.len = n;
    return sg_smtp_parse_path(&args, prefix, null, out);
}

static void
test_path_good(void)
{
    sg_smtp_path_t  p;

    CHECK_INT(path(LIT("FROM:<a@b.example>"), "FROM:", true, &p), SG_OK);
    CHECK_STR(p.addr, "a@b.example");
    CHECK_UINT(p.params.len, 0);
    CHECK(!p.utf8);

    CHECK_INT(path(LIT("from:<a@b> SIZE=10  BODY=8BITMIME"), "FROM:", true,
                   &p), SG_OK);
    CHECK_STR(p.addr, "a@b");
    CHECK_STR(p.params, "SIZE=10  BODY=8BITMIME");

    /* A blank after the colon is outside the grammar but common. */
    CHECK_INT(path(LIT("FROM: <a@b>"), "FROM:", true, &p), SG_OK);
    CHECK_STR(p.addr, "a@b");

    CHECK_INT(path(LIT("FROM:<>"), "FROM:", true, &p), SG_OK);
    CHECK_UINT(p.addr.len, 0);
    CHECK_INT(path(LIT("FROM:<> SIZE=1"), "FROM:", true, &p), SG_OK);
    CHECK_STR(p.params, "SIZE=1");

    CHECK_INT(path(LIT("TO:<Postmaster>"), "TO:", false, &p), SG_OK);
    CHECK_STR(p.addr, "Postmaster");

    /* A source route is dropped. */
    CHECK_INT(path(LIT("TO:<@r1.example,@r2.example:u@d.example>"), "TO:",
                   false, &p), SG_OK);
    CHECK_STR(p.addr, "u@d.example");

    /* A '>' inside a quoted local part does not close the path. */
    CHECK_INT(path(LIT("TO:<\"a b>\\\"c\"@d.example> NOTIFY=NEVER"), "TO:",
                   false, &p), SG_OK);
    CHECK_STR(p.addr, "\"a b>\\\"c\"@d.example");
    CHECK_STR(p.params, "NOTIFY=NEVER");

    CHECK_INT(path(LIT("TO:<u@[192.0.2.1]>"), "TO:", false, &p), SG_OK);
    CHECK_STR(p.addr, "u@[192.0.2.1]");
    CHECK_INT(path(LIT("TO:<u@[IPv6:2001:db8::1]>"), "TO:", false, &p),
              SG_OK);

    CHECK_INT(path(LIT("TO:<j\xc3\xb6rg@b\xc3\xbc" "cher.example>"), "TO:",
                   false, &p), SG_OK);
    CHECK(p.utf8);

    CHECK_INT(path(LIT("TO:<first..last.@d-1.example>"), "TO:", false, &p),
              SG_OK);
    CHECK_STR(p.addr, "first..last.@d-1.example");
}

static void
test_path_bad(void)
{
    sg_smtp_path_t  p;
    u_char          buf[300];
    sg_str_t        args;

    /* Not the shape of the argument: syntax errors. */
    CHECK_INT(path(LIT(""), "FROM:", true, &p), SG_ERROR);
    CHECK_INT(path(LIT("FROM:"), "FROM:", true, &p), SG_ERROR);
    CHECK_INT(path(LIT("FROM:a@b"), "FROM:", true, &p), SG_ERROR);
    CHECK_INT(path(LIT("FROM:<a@b"), "FROM:", true, &p), SG_ERROR);
    CHECK_INT(path(LIT("FRM:<a@b>"), "FROM:", true, &p), SG_ERROR);
    CHECK_INT(path(LIT("TO:<a@b>x"), "TO:", false, &p), SG_ERROR);
    CHECK_INT(path(LIT("TO:<\"a@b>"), "TO:", false, &p), SG_ERROR);
    CHECK_INT(path(LIT("FROM:<a@b>"), "TO:", false, &p), SG_ERROR);

    /* The right shape, a bad address. */
    CHECK_INT(path(LIT("TO:<>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<bob>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<@b>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@b..c>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@.b>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@b.>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a b@c>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@b@c>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a\x01@b>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a\t@b>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<\"a\x01\"@b>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a\x7f@b>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<@a,b@c>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<@a:>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@[]>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@[1.2.3.4>"), "TO:", false, &p), SG_DECLINED);
    CHECK_INT(path(LIT("TO:<a@[1.2]x>"), "TO:", false, &p), SG_DECLINED);

    /* The length limit, at the byte. */
    memcpy(buf, "TO:<", 4);
    memset(buf + 4, 'a', 250);
    memcpy(buf + 254, "@b.c>", 5);
    args.data = sg_test_bytes(buf, 259);
    args.len = 259;
    CHECK_INT(sg_smtp_parse_path(&args, "TO:", false, &p), SG_OK);
    CHECK_UINT(p.addr.len, SG_SMTP_PATH_MAX);
    memcpy(buf + 254, "@bb.c>", 6);
    args.data = sg_test_bytes(buf, 260);
    args.len = 260;
    CHECK_INT(sg_smtp_parse_path(&args, "TO:", false, &p), SG_DECLINED);
}

static void
test_params(void)
{
    sg_str_t  rest, k, v;

    rest.data = sg_test_bytes(LIT("SIZE=100  BODY=8BITMIME SMTPUTF8 "));
    rest.len = sizeof("SIZE=100  BODY=8BITMIME SMTPUTF8 ") - 1;
    CHECK_INT(sg_smtp_next_param(&rest, &k, &v), SG_OK);
    CHECK_STR(k, "SIZE");
    CHECK_STR(v, "100");
    CHECK_INT(sg_smtp_next_param(&rest, &k, &v), SG_OK);
    CHECK_STR(k, "BODY");
    CHECK_STR(v, "8BITMIME");
    CHECK_INT(sg_smtp_next_param(&rest, &k, &v), SG_OK);
    CHECK_STR(k, "SMTPUTF8");
    CHECK(v.data == NULL);
    CHECK_INT(sg_smtp_next_param(&rest, &k, &v), SG_DONE);
    CHECK_INT(sg_smtp_next_param(&rest, &k, &v), SG_DONE);

    rest.data = sg_test_bytes(LIT("X-A1=\xc3\xa9"));
    rest.len = sizeof("X-A1=\xc3\xa9") - 1;
    CHECK_INT(sg_smtp_next_param(&rest, &k, &v), SG_OK);
    CHECK_STR(v, "\xc3\xa9");

#define BAD_PARAM(s)                                                         \
    do {                                                                     \
        rest.data = sg_test_bytes(LIT(s));                                   \
        rest.len = sizeof(s) - 1;                                            \
        CHECK_INT(sg_smtp_next_param(&rest, &k, &v), SG_ERROR);              \
    } while (0)

    BAD_PARAM("=x");
    BAD_PARAM("SIZE=");
    BAD_PARAM("A=b=c");
    BAD_PARAM("-X");
    BAD_PARAM("X_Y");
    BAD_PARAM("X=a\tb");
    BAD_PARAM("X=\x7f");
#undef BAD_PARAM
}

static void
test_xtext(void)
{
    u_char   all[256];
    sg_str_t src;
    size_t   i;

    xtext(LIT(""), "");
    xtext(LIT("user@example.org"), "user@example.org");
    xtext(LIT("+"), "+2B");
    xtext(LIT("="), "+3D");
    xtext(LIT(" "), "+20");
    xtext(LIT("\x7f"), "+7F");
    xtext(LIT("\0"), "+00");
    xtext(LIT("\xff"), "+FF");
    xtext(LIT("!~"), "!~");
    xtext(LIT("a+b=c d"), "a+2Bb+3Dc+20d");
    xtext(LIT("\xc3\xa9t\xc3\xa9"), "+C3+A9t+C3+A9");
    xtext(LIT("\r\n"), "+0D+0A");
    xtext(LIT("++"), "+2B+2B");

    /* Readers take lower-case hex too; anything else is not xtext. */
    {
        sg_str_t  lc = { 9, (u_char *) "a+2bb+3dc" };
        u_char    out[9];
        size_t    n;

        CHECK_INT(sg_smtp_xtext_decode(out, &lc, &n), SG_OK);
        CHECK_MEM(out, n, "a+b=c", 5);
    }
    xtext_bad("+");
    xtext_bad("+2");
    xtext_bad("a+2");
    xtext_bad("+2G");
    xtext_bad("+G2");
    xtext_bad("a=b");
    xtext_bad("a b");
    xtext_bad("\x7f");
    xtext_bad("\xc3\xa9");
    xtext_bad("tab\there");

    /* Of all 256 octets, 92 stand for themselves. */
    for (i = 0; i < 256; i++) {
        all[i] = (u_char) i;
    }
    src.data = all;
    src.len = 256;
    CHECK_UINT(sg_smtp_xtext_encode(NULL, &src), 92 + 164 * 3);
}

/* CRAM-MD5 and OAuth payloads. */

static sg_str_t
msgof(const char *s, size_t n)
{
    sg_str_t  m;

    m.data = sg_test_bytes(s, n);
    m.len = n;
    return m;
}

static void
test_cram_md5(void)
{
    sg_str_t  m, u, d;

    m = msgof(LIT("tim B913A602C7EDA7A495B4E6E7334D3890"));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_OK);
    CHECK_STR(u, "tim");
    CHECK_STR(d, "b913a602c7eda7a495b4e6e7334d3890");

    m = msgof(LIT("a b c 0123456789abcdef0123456789abcdef"));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_OK);
    CHECK_STR(u, "a b c");           /* the last space splits */

    m = msgof(LIT(" 0123456789abcdef0123456789abcdef"));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_ERROR);   /* no user */
    m = msgof(LIT("tim 0123456789abcdef0123456789abcde"));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_ERROR);   /* 31 */
    m = msgof(LIT("tim 0123456789abcdef0123456789abcdef0"));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_ERROR);   /* 33 */
    m = msgof(LIT("tim 0123456789abcdef0123456789abcdeg"));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_ERROR);   /* not hex */
    m = msgof(LIT("tim0123456789abcdef0123456789abcdef"));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_ERROR);   /* no space */
    m = msgof(LIT(""));
    CHECK_INT(sg_sasl_cram_md5_split(&m, &u, &d), SG_ERROR);
}

static void
test_xoauth2(void)
{
    sg_str_t  m, u, t;

    m = msgof(LIT("user=someuser@example.com\x01"
                  "auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29t"
                  "CgE\x01\x01"));
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_OK);
    CHECK_STR(u, "someuser@example.com");
    CHECK_STR(t, "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCgE");

    m = msgof(LIT("user=u\x01" "auth=bearer tok\x01\x01"));
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_OK);   /* case */
    CHECK_STR(t, "tok");

    m = msgof(LIT("user=u\x01" "auth=Bearer tok\x01"));     /* one ^A */
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("user=\x01" "auth=Bearer tok\x01\x01"));  /* no user */
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("user=u\x01" "auth=Bearer \x01\x01"));    /* no token */
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("user=u\x01" "auth=Basic dXNlcg==\x01\x01"));
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("auth=Bearer tok\x01\x01"));
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT(""));
    CHECK_INT(sg_sasl_xoauth2_split(&m, &u, &t), SG_ERROR);
}

static void
test_oauthbearer(void)
{
    sg_str_t  m, u, t;

    /* RFC 7628 section 4.1 */
    m = msgof(LIT("n,a=user@example.com,\x01host=server.example.com\x01"
                  "port=143\x01" "auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdm"
                  "lzdGEuY29tCg==\x01\x01"));
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_OK);
    CHECK_STR(u, "user@example.com");
    CHECK_STR(t, "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==");

    m = msgof(LIT("n,,\x01" "auth=Bearer tok\x01\x01"));   /* no a= */
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_OK);
    CHECK_UINT(u.len, 0);
    CHECK_STR(t, "tok");

    m = msgof(LIT("y,a=u,\x01" "auth=Bearer tok\x01\x01"));
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_OK);

    m = msgof(LIT("p=tls-unique,a=u,\x01" "auth=Bearer t\x01\x01"));
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("n,x=u,\x01" "auth=Bearer tok\x01\x01"));
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("n,a=u\x01" "auth=Bearer tok\x01\x01"));  /* no comma */
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("n,a=u,auth=Bearer tok\x01\x01"));        /* no ^A */
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("n,a=u,\x01" "auth=Bearer tok"));         /* no end */
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("\x01"));                                 /* the ack */
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_ERROR);
    m = msgof(LIT("n,"));
    CHECK_INT(sg_sasl_oauthbearer_split(&m, &u, &t), SG_ERROR);
}

int
main(void)
{
    sg_test_start();

    RUN(test_line_simple);
    RUN(test_line_again);
    RUN(test_line_limit);
    RUN(test_line_small_limits);
    RUN(test_line_faults);
    RUN(test_line_session);
    RUN(test_skip_line);

    RUN(test_command_simple);
    RUN(test_command_blanks);
    RUN(test_command_bad);
    RUN(test_command_unknown);
    RUN(test_command_all_verbs);

    RUN(test_path_good);
    RUN(test_path_bad);
    RUN(test_params);

    RUN(test_reply_simple);
    RUN(test_reply_multiline);
    RUN(test_reply_bad);
    RUN(test_reply_partial);
    RUN(test_reply_line_max);
    RUN(test_reply_split);
    RUN(test_reply_next_line);

    RUN(test_ehlo_has);
    RUN(test_ehlo_edges);

    RUN(test_plain_good);
    RUN(test_plain_bad);
    RUN(test_plain_sizes);

    RUN(test_xtext);

    RUN(test_cram_md5);
    RUN(test_xoauth2);
    RUN(test_oauthbearer);

    return sg_test_finish();
}
