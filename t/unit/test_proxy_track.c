/*
 * test_proxy_track.c: unit tests for the relay's reader of SMTP
 * sessions, which decides when a backend connection may be kept.
 *
 * Each conversation is played twice: in whole pieces, and one byte at
 * a time; both must end in the same state, since a relay meets every
 * split of the stream.  The hostile cases are those where a client
 * could make the reader and the server disagree on where a message
 * ends: bare CR and LF, dots after them, BDAT sizes, replies nobody
 * asked for.
 */
#include "sg_core.h"
#include "sg_proxy_track.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

/* Feed client bytes, step at a time (0: all); returns what may pass. */
static size_t
client(sg_proxy_track_t *t, const char *s, size_t n, size_t step)
{
    const u_char  *in = sg_test_bytes(s, n);
    size_t         done = 0, k, got;

    if (step == 0) {
        return sg_proxy_track_client(t, in, n, false);
    }
    /* A relay hands the reader everything not yet passed, as it grows. */
    for (k = 1; k <= n; k++) {
        got = sg_proxy_track_client(t, in + done, k - done, false);
        done += got;
    }
    return done;
}

static void
server(sg_proxy_track_t *t, const char *s, size_t n, size_t step)
{
    const u_char  *in = sg_test_bytes(s, n);
    size_t         i;

    if (step == 0) {
        sg_proxy_track_server(t, in, n);
        return;
    }
    for (i = 0; i < n; i++) {
        sg_proxy_track_server(t, in + i, 1);
    }
}

static void
test_transaction(void)
{
    sg_proxy_track_t  t;
    size_t            step;
    static const char  msg[] = "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
    static const char  body[] = "Subject: x\r\n\r\n..dot\r\n.\r\n";

    for (step = 0; step < 2; step++) {
        sg_proxy_track_init(&t, false, true);
        CHECK_UINT(client(&t, LIT(msg), step), sizeof(msg) - 1);
        CHECK_INT(t.state, SG_TRACK_WAIT_DATA);
        CHECK_UINT(t.pending, 3);
        /* nothing passes before the reply to DATA */
        CHECK_UINT(client(&t, LIT("early"), step), 0);
        server(&t, LIT("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), step);
        CHECK_INT(t.state, SG_TRACK_WAIT_DATA);
        server(&t, LIT("354 End data with <CR><LF>.<CR><LF>\r\n"), step);
        CHECK_INT(t.state, SG_TRACK_DATA);
        CHECK_UINT(client(&t, LIT(body), step), sizeof(body) - 1);
        CHECK_INT(t.state, SG_TRACK_CMD);
        CHECK_UINT(t.pending, 1);
        CHECK_UINT(client(&t, LIT("QUIT\r\n"), step), 0);
        CHECK_INT(t.state, SG_TRACK_QUIT);
        CHECK(!sg_proxy_track_done(&t));
        server(&t, LIT("250 2.0.0 Ok: queued\r\n"), step);
        CHECK(sg_proxy_track_done(&t));
    }
}

static void
test_pipelined_end_and_quit(void)
{
    sg_proxy_track_t  t;

    sg_proxy_track_init(&t, false, true);
    CHECK_UINT(client(&t, LIT("DATA\r\n"), 0), 6);
    server(&t, LIT("354 go\r\n"), 0);
    /* the end of the message and QUIT in one read: QUIT stays behind */
    CHECK_UINT(client(&t, LIT("x\r\n.\r\nQUIT\r\n"), 0), 6);
    CHECK_INT(t.state, SG_TRACK_QUIT);
    CHECK_UINT(t.pending, 1);
    server(&t, LIT("250 ok\r\n"), 0);
    CHECK(sg_proxy_track_done(&t));

    /* an empty message */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("DATA\r\n"), 0);
    server(&t, LIT("354 go\r\n"), 0);
    CHECK_UINT(client(&t, LIT(".\r\nNOOP\r\n"), 0), 9);
    CHECK_INT(t.state, SG_TRACK_CMD);
    CHECK_UINT(t.pending, 2);
}

static void
test_refused_data(void)
{
    sg_proxy_track_t  t;

    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\n"), 0);
    server(&t, LIT("250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n"),
           0);
    CHECK_INT(t.state, SG_TRACK_CMD);
    CHECK_UINT(t.pending, 0);
    CHECK_UINT(client(&t, LIT("RSET\r\n"), 0), 6);
    CHECK_UINT(t.pending, 1);
}

static void
test_multiline_replies(void)
{
    sg_proxy_track_t  t;
    size_t            step;

    for (step = 0; step < 2; step++) {
        sg_proxy_track_init(&t, false, true);
        CHECK_UINT(client(&t, LIT("EHLO x\r\nHELP\r\n"), step), 14);
        server(&t, LIT("250-a\r\n250-PIPELINING\r\n250 SIZE 10\r\n"), step);
        CHECK_UINT(t.pending, 1);
        server(&t, LIT("214\r\n"), step);       /* a code alone is final */
        CHECK_UINT(t.pending, 0);
        CHECK_INT(t.state, SG_TRACK_CMD);
    }
}

static void
test_bdat(void)
{
    sg_proxy_track_t  t;
    size_t            step;

    for (step = 0; step < 2; step++) {
        sg_proxy_track_init(&t, false, true);
        /* chunk octets are not commands, even when they look like QUIT */
        CHECK_UINT(client(&t, LIT("BDAT 6\r\nQUIT\r\nBDAT 0 LAST\r\n"), step),
                   27);
        CHECK_INT(t.state, SG_TRACK_CMD);
        CHECK_UINT(t.pending, 2);
        CHECK_UINT(client(&t, LIT("bdat 3 last\r\n.\r\n"), step), 16);
        CHECK_UINT(t.pending, 3);
    }

    static const char  *bad[] = {
        "BDAT\r\n", "BDAT x\r\n", "BDAT 12x\r\n", "BDAT 1 LATE\r\n",
        "BDAT  1\r\n", "BDAT 1234567890123456789\r\n", "BDAT -1\r\n"
    };
    size_t  i;

    for (i = 0; i < sg_nelems(bad); i++) {
        sg_proxy_track_init(&t, false, true);
        CHECK_UINT(client(&t, bad[i], strlen(bad[i]), 0), strlen(bad[i]));
        CHECK_INT(t.state, SG_TRACK_OFF);
    }
}

/* A server that does not know BDAT reads its chunk as commands: a
 * MAIL, RCPT and DATA hidden in one, balanced by commands the server
 * then takes as message text, would leave it inside a message while the
 * reader saw a clean end.  Without CHUNKING, BDAT turns tracking off. */
static void
test_bdat_without_chunking(void)
{
    static const char  hidden[] = "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
                                  "DATA\r\n";
    sg_proxy_track_t   t;
    char               line[64];
    int                n;

    sg_proxy_track_init(&t, false, false);
    n = snprintf(line, sizeof(line), "BDAT %zu\r\n", sizeof(hidden) - 1);
    CHECK_UINT(client(&t, line, (size_t) n, 0), (size_t) n);
    CHECK_INT(t.state, SG_TRACK_OFF);
    CHECK(t.why != NULL && strstr(t.why, "CHUNKING") != NULL);

    /* with CHUNKING offered the same bytes are a chunk */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, line, (size_t) n, 0);
    CHECK_UINT(client(&t, LIT(hidden), 0), sizeof(hidden) - 1);
    CHECK_INT(t.state, SG_TRACK_CMD);
    CHECK_UINT(t.pending, 1);
}

/* Whatever could make a server see the end of a message where the
 * reader does not (or the reverse) turns tracking off. */
static void
test_smuggling(void)
{
    static const char  *bodies[] = {
        "a\n.\r\nQUIT\r\n",          /* bare LF before the dot */
        "a\r\n.\nQUIT\r\n",          /* bare LF after it */
        "a\r.\r\nQUIT\r\n",          /* bare CR */
        "a\r\n.\rQUIT\r\n",
        "\n.\r\n",
        ".\n",
        "a\r\r\n.\r\n",
    };
    sg_proxy_track_t    t;
    size_t              i, step, n;

    for (i = 0; i < sg_nelems(bodies); i++) {
        for (step = 0; step < 2; step++) {
            sg_proxy_track_init(&t, false, true);
            (void) client(&t, LIT("DATA\r\n"), step);
            server(&t, LIT("354 go\r\n"), step);
            n = strlen(bodies[i]);
            CHECK_UINT(client(&t, bodies[i], n, step), n);
            CHECK_INT(t.state, SG_TRACK_OFF);
            CHECK(t.why != NULL);
        }
    }
}

/* Message text in long lines, each hazard at every place in a line (and
 * so at every place in the 16- and 64-byte blocks the reader passes over
 * in one step when it can, both ways: 64 where the CPU allows, and 16),
 * after `from` to `to` bytes: the outcome must be the same as byte by
 * byte. */
static void
long_lines(size_t from, size_t to)
{
    static const struct {
        const char  *hazard;
        int          state;      /* after the text */
        const char  *why;        /* for SG_TRACK_OFF */
        int          end;        /* the text ends right after the hazard */
    } cases[] = {
        { "\r\n", SG_TRACK_CMD, NULL, 0 },
        { "\r\n..x\r\n", SG_TRACK_CMD, NULL, 0 },
        { "\r\n.\r\n", SG_TRACK_CMD, NULL, 1 },
        { "\rx", SG_TRACK_OFF, "a bare CR in the message", 0 },
        { "\r\r\n", SG_TRACK_OFF, "a bare CR in the message", 0 },
        { "\nx", SG_TRACK_OFF, "a bare LF in the message", 0 },
        { "\n.\r\n", SG_TRACK_OFF, "a bare LF in the message", 0 },
        { "\r\n.\n", SG_TRACK_OFF, "a bare LF in the message", 0 },
    };
    static const char  tail[] = "abcdefghijklmnopqrstuvwxyz0123\r\n.\r\n";
    static const char  lines[] = "0123456789ABCDEFGHIJ0123456789ABCDEFGHIJ"
                                 "0123456789ABCDEFGHIJ0123456789ABCDEFGHIJ"
                                 "0123456789ABCDEFGHIJ0123456789ABCDEFGHIJ"
                                 "0123456789ABCDEFGHIJ0123456789ABCDEFGHIJ";
    char               text[256];
    sg_proxy_track_t   t;
    size_t             i, lead, step, n, h, got;

    for (i = 0; i < sg_nelems(cases); i++) {
        h = strlen(cases[i].hazard);
        for (lead = from; lead < to && lead < sizeof(lines); lead++) {
            n = 0;
            memcpy(text, lines, lead);
            n += lead;
            memcpy(text + n, cases[i].hazard, h);
            n += h;
            if (!cases[i].end) {
                memcpy(text + n, tail, sizeof(tail) - 1);
                n += sizeof(tail) - 1;
            } else {
                memcpy(text + n, "NOOP", 4);   /* a command, unfinished */
                n += 4;
            }
            for (step = 0; step < 2; step++) {
                sg_proxy_track_init(&t, false, true);
                (void) client(&t, LIT("DATA\r\n"), step);
                server(&t, LIT("354 go\r\n"), step);
                got = client(&t, text, n, step);
                CHECK_INT(t.state, cases[i].state);
                if (cases[i].why) {
                    CHECK(t.why != NULL
                          && strcmp(t.why, cases[i].why) == 0);
                    CHECK_UINT(got, n);
                } else {
                    CHECK_UINT(t.pending, 1);
                    /* all of it, or up to the unfinished command */
                    CHECK_UINT(got, cases[i].end ? n - 4 : n);
                }
            }
        }
    }
}

static void
test_long_lines(void)
{
    sg_proxy_track_wide = -1;           /* 64 bytes a step with AVX2 */
    long_lines(1, 80);
}

static void
test_long_lines_far(void)
{
    long_lines(80, 160);
}

static void
test_long_lines_16(void)
{
    sg_proxy_track_wide = 0;
    long_lines(1, 80);
    sg_proxy_track_wide = -1;
}

static void
test_off(void)
{
    static const char  *lines[] = {
        "AUTH PLAIN AAAA\r\n", "STARTTLS\r\n", "XCLIENT ADDR=1.2.3.4\r\n",
        "TURN\r\n", "ETRN x\r\n", "QUITX\r\n", "QUIT now\r\n",
        "QUIT \r\n", "quit  \r\n", "\r\n", "NOOP\n",
        "NO\rOP\r\n", "MAILFROM:<>\r\n"
    };
    sg_proxy_track_t    t;
    size_t              i, n;
    char                longline[SG_PROXY_TRACK_LINE_MAX + 16];

    for (i = 0; i < sg_nelems(lines); i++) {
        sg_proxy_track_init(&t, false, true);
        n = strlen(lines[i]);
        CHECK_UINT(client(&t, lines[i], n, 0), n);
        CHECK_INT(t.state, SG_TRACK_OFF);
        /* once off, everything passes, QUIT too */
        CHECK_UINT(client(&t, LIT("QUIT\r\n"), 0), 6);
        CHECK_INT(t.state, SG_TRACK_OFF);
    }

    /* QUIT takes no argument: the server answers one, not the relay */
    sg_proxy_track_init(&t, false, true);
    CHECK_UINT(client(&t, LIT("QUIT now\r\n"), 0), 10);
    CHECK(t.why != NULL && strcmp(t.why, "QUIT with an argument") == 0);
    /* lower case is QUIT all the same */
    sg_proxy_track_init(&t, false, true);
    CHECK_UINT(client(&t, LIT("quit\r\n"), 0), 0);
    CHECK_INT(t.state, SG_TRACK_QUIT);
    CHECK(sg_proxy_track_done(&t));

    /* a command line that never ends */
    memset(longline, 'A', sizeof(longline));
    sg_proxy_track_init(&t, false, true);
    CHECK_UINT(client(&t, longline, SG_PROXY_TRACK_LINE_MAX, 0), 0);
    CHECK_INT(t.state, SG_TRACK_CMD);
    CHECK_UINT(client(&t, longline, sizeof(longline), 0), sizeof(longline));
    CHECK_INT(t.state, SG_TRACK_OFF);

    /* an incomplete line in a full buffer */
    sg_proxy_track_init(&t, false, true);
    CHECK_UINT(sg_proxy_track_client(&t, (u_char *) "NOOP", 4, true), 4);
    CHECK_INT(t.state, SG_TRACK_OFF);

    /* replies: unasked, unreadable, 421 */
    static const char  *replies[] = {
        "250 ok\r\n", "2x0 ok\r\n", "25\r\n", "250ok\r\n", "250 ok\n",
        "250 o\rk\r\n"
    };
    for (i = 0; i < sg_nelems(replies); i++) {
        sg_proxy_track_init(&t, false, true);
        if (i) {
            (void) client(&t, LIT("NOOP\r\n"), 0);
        }
        server(&t, replies[i], strlen(replies[i]), 0);
        CHECK_INT(t.state, SG_TRACK_OFF);
    }
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("NOOP\r\n"), 0);
    server(&t, LIT("421 4.4.2 timeout\r\n"), 0);
    CHECK_INT(t.state, SG_TRACK_OFF);

    /* an unasked reply is known at its first byte, not at its end: the
     * session must not be done with half of it passed on */
    for (i = 0; i < 2; i++) {
        sg_proxy_track_init(&t, false, true);
        (void) client(&t, LIT("NOOP\r\nQUIT\r\n"), 0);
        server(&t, LIT("250 ok\r\n2"), i);
        CHECK_INT(t.state, SG_TRACK_OFF);
        CHECK(!sg_proxy_track_done(&t));
        CHECK(t.why != NULL && strcmp(t.why, "a reply to no command") == 0);
    }
}

static void
test_partial_lines(void)
{
    sg_proxy_track_t  t;

    sg_proxy_track_init(&t, false, true);
    CHECK_UINT(client(&t, LIT("NOOP\r\nQUI"), 0), 6);
    CHECK_INT(t.state, SG_TRACK_CMD);
    /* the caller hands the held bytes back with more */
    CHECK_UINT(client(&t, LIT("QUIT\r\n"), 0), 0);
    CHECK_INT(t.state, SG_TRACK_QUIT);
    CHECK_UINT(t.pending, 1);
    /* a reply split anywhere */
    server(&t, LIT("25"), 0);
    server(&t, LIT("0 o"), 0);
    CHECK_UINT(t.pending, 1);
    server(&t, LIT("k\r"), 0);
    server(&t, LIT("\n"), 0);
    CHECK(sg_proxy_track_done(&t));
}

/* RFC 5321's longest command line (510 octets and CRLF) is followed
 * however it arrives; one octet more ends tracking, however it arrives.
 * (Split before its LF, the longest line once counted as too long.) */
static void
test_line_max(void)
{
    char               line[600];
    sg_proxy_track_t   t;
    size_t             len, step, n;

    for (len = SG_PROXY_TRACK_LINE_MAX; len <= SG_PROXY_TRACK_LINE_MAX + 1;
         len++)
    {
        memcpy(line, "NOOP ", 5);
        memset(line + 5, 'x', len - 5);
        memcpy(line + len, "\r\n", 2);
        n = len + 2;
        for (step = 0; step < 2; step++) {
            sg_proxy_track_init(&t, false, true);
            CHECK_UINT(client(&t, line, n, step), n);
            if (len == SG_PROXY_TRACK_LINE_MAX) {
                CHECK_INT(t.state, SG_TRACK_CMD);
                CHECK_UINT(t.pending, 1);
            } else {
                CHECK_INT(t.state, SG_TRACK_OFF);
                CHECK(t.why != NULL
                      && strcmp(t.why, "a command line too long") == 0);
            }
        }
    }
}

/* Whether the next session needs an RSET first. */
static void
test_clean(void)
{
    sg_proxy_track_t  t;

    /* no transaction at all */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("NOOP\r\nQUIT\r\n"), 0);
    server(&t, LIT("250 ok\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && sg_proxy_track_clean(&t));

    /* a message accepted */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n"), 0);
    server(&t, LIT("250 ok\r\n250 ok\r\n354 go\r\n"), 0);
    CHECK(!sg_proxy_track_clean(&t));
    (void) client(&t, LIT("x\r\n.\r\nQUIT\r\n"), 0);
    CHECK(!sg_proxy_track_clean(&t));
    server(&t, LIT("250 queued\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && sg_proxy_track_clean(&t));

    /* refused at its end: the server may still hold the transaction */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n"), 0);
    server(&t, LIT("250 ok\r\n250 ok\r\n354 go\r\n"), 0);
    (void) client(&t, LIT("x\r\n.\r\nQUIT\r\n"), 0);
    server(&t, LIT("554 no\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && !sg_proxy_track_clean(&t));

    /* a new MAIL pipelined after the end of a message */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n"), 0);
    server(&t, LIT("250 ok\r\n250 ok\r\n354 go\r\n"), 0);
    (void) client(&t, LIT("x\r\n.\r\nMAIL FROM:<>\r\nQUIT\r\n"), 0);
    server(&t, LIT("250 queued\r\n250 ok\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && !sg_proxy_track_clean(&t));

    /* MAIL, then RSET */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nRSET\r\nQUIT\r\n"), 0);
    server(&t, LIT("250 ok\r\n"), 0);
    CHECK(!sg_proxy_track_clean(&t));
    server(&t, LIT("250 reset\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && sg_proxy_track_clean(&t));

    /* MAIL left open */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nQUIT\r\n"), 0);
    server(&t, LIT("250 ok\r\n250 ok\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && !sg_proxy_track_clean(&t));

    /* BDAT LAST accepted; BDAT without LAST is not an end */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nBDAT 1\r\nxBDAT 1 LAST\r\ny"
                          "QUIT\r\n"), 0);
    server(&t, LIT("250 ok\r\n250 chunk\r\n"), 0);
    CHECK(!sg_proxy_track_clean(&t));
    server(&t, LIT("250 queued\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && sg_proxy_track_clean(&t));

    /* the MAIL replayed before the relay began counts */
    sg_proxy_track_init(&t, true, true);
    (void) client(&t, LIT("RCPT TO:<a@b>\r\nQUIT\r\n"), 0);
    server(&t, LIT("250 ok\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && !sg_proxy_track_clean(&t));
}

/* A client that greets again is still followed, and marked: the
 * server keeps the name (and HELO's plain SMTP) past RSET. */
static void
test_greeted(void)
{
    sg_proxy_track_t  t;
    size_t            step;

    for (step = 0; step < 2; step++) {
        sg_proxy_track_init(&t, false, true);
        (void) client(&t, LIT("NOOP\r\nRSET\r\n"), step);
        CHECK(!t.greeted);
        (void) client(&t, LIT("helo x.example\r\nQUIT\r\n"), step);
        CHECK(t.greeted);
        server(&t, LIT("250 ok\r\n250 ok\r\n250 hi\r\n"), step);
        CHECK(sg_proxy_track_done(&t));

        sg_proxy_track_init(&t, false, true);
        (void) client(&t, LIT("EHLO x.example\r\nQUIT\r\n"), step);
        CHECK(t.greeted);
        server(&t, LIT("250-hi\r\n250 PIPELINING\r\n"), step);
        CHECK(sg_proxy_track_done(&t));
    }
}

/* An error reply marks the session until a message is accepted. */
static void
test_erred(void)
{
    sg_proxy_track_t  t;

    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("NOOP\r\nRCPT TO:<a@b>\r\n"), 0);
    server(&t, LIT("250 ok\r\n"), 0);
    CHECK(!t.erred);
    server(&t, LIT("503 need MAIL\r\n"), 0);
    CHECK(t.erred);
    (void) client(&t, LIT("RSET\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\n"
                          "DATA\r\n"), 0);
    server(&t, LIT("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"), 0);
    CHECK(t.erred);
    (void) client(&t, LIT("x\r\n.\r\nQUIT\r\n"), 0);
    server(&t, LIT("250 queued\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && !t.erred);

    /* a message refused at its end is one more error */
    sg_proxy_track_init(&t, false, true);
    (void) client(&t, LIT("MAIL FROM:<>\r\nBDAT 1 LAST\r\nxQUIT\r\n"), 0);
    server(&t, LIT("250 ok\r\n554 no\r\n"), 0);
    CHECK(sg_proxy_track_done(&t) && t.erred);
}

/*
 * Strict: play client bytes through the reader as the relay does --
 * pass what it lets pass, insert the line end it completes, drop what it
 * drops, and note each reply of its own once no reply is due -- a step
 * at a time (0: all at once).  out gets what the server would read,
 * replies the relay's own replies in order.
 */
typedef struct {
    u_char    held[8192];
    size_t    nheld;
    char      out[8192];
    size_t    nout;
    unsigned  replies[16];
    size_t    nreplies;
} relay_t;

static void
relay_run(sg_proxy_track_t *t, relay_t *r)
{
    size_t  k;
    bool    moved = true;

    while (moved) {
        moved = false;
        if (!sg_proxy_track_owed(t) && r->nheld
            && t->state != SG_TRACK_QUIT)
        {
            k = sg_proxy_track_client(t, r->held, r->nheld, false);
            if (k) {
                memcpy(r->out + r->nout, r->held, k);
                r->nout += k;
                memmove(r->held, r->held + k, r->nheld - k);
                r->nheld -= k;
                moved = true;
            }
        }
        if (t->ins) {
            r->out[r->nout++] = (char) t->ins;
            t->ins = 0;
            moved = true;
        }
        if (t->drop && r->nheld) {
            k = sg_min(t->drop, r->nheld);
            memmove(r->held, r->held + k, r->nheld - k);
            r->nheld -= k;
            t->drop -= k;
            moved = true;
        }
        if (t->reply && t->pending == 0 && t->drop == 0) {
            if (r->nreplies < sg_nelems(r->replies)) {
                r->replies[r->nreplies++] = t->reply;
            }
            t->reply = SG_TRACK_R_NONE;
            moved = true;
        }
    }
}

static void
relay(sg_proxy_track_t *t, relay_t *r, const char *s, size_t n,
    size_t step)
{
    size_t  i, k;

    for (i = 0; i < n; i += k) {
        k = step ? sg_min(step, n - i) : n;
        memcpy(r->held + r->nheld, s + i, k);
        r->nheld += k;
        relay_run(t, r);
    }
}

static void
strict_init(sg_proxy_track_t *t, relay_t *r, bool chunking)
{
    sg_proxy_track_init(t, false, chunking);
    t->strict = 1;
    memset(r, 0, sizeof(*r));
}

/* Strict: every line end reaches the server as CR LF, and the message
 * ends where the server (reading what was passed) says it does. */
static void
test_strict_line_ends(void)
{
    static const struct {
        const char  *body;
        const char  *out;         /* what the server reads */
        int          state;       /* after it */
    } cases[] = {
        { "a\n.\r\nQUIT\r\n", "a\r\n.\r\n", SG_TRACK_QUIT },
        { "a\r\n.\nQUIT\r\n", "a\r\n.\r\n", SG_TRACK_QUIT },
        { "a\r.\r\nQUIT\r\n", "a\r\n.\r\n", SG_TRACK_QUIT },
        { "a\r\n.\rQUIT\r\n", "a\r\n.\r\n", SG_TRACK_QUIT },
        { "\n.\r\n", "\r\n.\r\n", SG_TRACK_CMD },
        { ".\n", ".\r\n", SG_TRACK_CMD },
        { "a\r\r\n.\r\n", "a\r\n\r\n.\r\n", SG_TRACK_CMD },
        { "a\n\nb\r\n..\n.\n", "a\r\n\r\nb\r\n..\r\n.\r\n",
          SG_TRACK_CMD },
        { "a\n.x\n.\n", "a\r\n.x\r\n.\r\n", SG_TRACK_CMD },
        { "\r\r\r.\r\r", "\r\n\r\n\r\n.\r\n", SG_TRACK_CMD },
    };
    sg_proxy_track_t  t, plain;
    relay_t           r;
    size_t            i, step, n;

    for (i = 0; i < sg_nelems(cases); i++) {
        for (step = 0; step < 2; step++) {
            strict_init(&t, &r, true);
            relay(&t, &r, LIT("DATA\r\n"), step);
            server(&t, LIT("354 go\r\n"), step);
            r.nout = 0;
            n = strlen(cases[i].body);
            relay(&t, &r, cases[i].body, n, step);
            relay_run(&t, &r);
            CHECK_INT(t.state, cases[i].state);
            CHECK_UINT(t.pending, 1);
            CHECK_UINT(r.nout, strlen(cases[i].out));
            CHECK(r.nout == strlen(cases[i].out)
                  && memcmp(r.out, cases[i].out, r.nout) == 0);
            CHECK_UINT(r.nreplies, 0);
            /* a reader that takes nothing but CR LF agrees on the end */
            sg_proxy_track_init(&plain, false, true);
            (void) client(&plain, LIT("DATA\r\n"), 0);
            server(&plain, LIT("354 go\r\n"), 0);
            CHECK_UINT(client(&plain, r.out, r.nout, 0), r.nout);
            CHECK_INT(plain.state, SG_TRACK_CMD);
            CHECK_UINT(plain.pending, 1);
        }
    }
    /* long lines with every hazard, over the 16- and 64-byte steps */
    for (i = 1; i < 150; i++) {
        char  text[256];

        memset(text, 'x', i);
        memcpy(text + i, "\n.\n", 3);
        for (step = 0; step < 2; step++) {
            strict_init(&t, &r, true);
            relay(&t, &r, LIT("DATA\r\n"), step);
            server(&t, LIT("354 go\r\n"), step);
            r.nout = 0;
            relay(&t, &r, text, i + 3, step);
            CHECK_INT(t.state, SG_TRACK_CMD);
            CHECK_UINT(r.nout, i + 5);
            CHECK(memcmp(r.out + i, "\r\n.\r\n", 5) == 0);
        }
    }
}

/* Strict: commands it would not follow are answered, in their turn,
 * and never reach the server. */
static void
test_strict_commands(void)
{
    static const struct {
        const char  *in;
        const char  *out;
        unsigned     reply;
        int          state;
    } cases[] = {
        { "NOOP\n", "NOOP\r\n", 0, SG_TRACK_CMD },
        { "AUTH PLAIN AAAA\r\n", "", SG_TRACK_R_AUTH, SG_TRACK_CMD },
        { "STARTTLS\r\n", "", SG_TRACK_R_STARTTLS, SG_TRACK_CMD },
        { "XCLIENT ADDR=1.2.3.4\r\n", "", SG_TRACK_R_UNKNOWN,
          SG_TRACK_CMD },
        { "ETRN x\r\n", "", SG_TRACK_R_UNKNOWN, SG_TRACK_CMD },
        { "MAILFROM:<>\r\n", "", SG_TRACK_R_UNKNOWN, SG_TRACK_CMD },
        { "\r\n", "", SG_TRACK_R_UNKNOWN, SG_TRACK_CMD },
        { "\n", "", SG_TRACK_R_UNKNOWN, SG_TRACK_CMD },
        { "NO\rOP\r\n", "", SG_TRACK_R_BARE_CR, SG_TRACK_CMD },
        { "BDAT x\r\n", "", SG_TRACK_R_BDAT, SG_TRACK_CMD },
        { "QUIT now\r\n", "", 0, SG_TRACK_QUIT },
        { "QUIT\n", "", 0, SG_TRACK_QUIT },
        { "DATA\n", "DATA\r\n", 0, SG_TRACK_WAIT_DATA },
        { "BDAT 3\nabcNOOP\r\n", "BDAT 3\r\nabcNOOP\r\n", 0,
          SG_TRACK_CMD },
        { "BDAT 3\r\n\n\r\nNOOP\n", "BDAT 3\r\n\n\r\nNOOP\r\n", 0,
          SG_TRACK_CMD },
    };
    sg_proxy_track_t  t;
    relay_t           r;
    size_t            i, step;

    for (i = 0; i < sg_nelems(cases); i++) {
        for (step = 0; step < 2; step++) {
            strict_init(&t, &r, true);
            relay(&t, &r, cases[i].in, strlen(cases[i].in), step);
            CHECK_INT(t.state, cases[i].state);
            CHECK_UINT(r.nout, strlen(cases[i].out));
            CHECK(memcmp(r.out, cases[i].out, r.nout) == 0);
            CHECK_UINT(r.nreplies, cases[i].reply != 0);
            if (cases[i].reply) {
                CHECK_UINT(r.replies[0], cases[i].reply);
            }
            CHECK(t.why == NULL);
        }
    }

    /* BDAT to a server without CHUNKING: answered, not passed */
    strict_init(&t, &r, false);
    relay(&t, &r, LIT("BDAT 3 LAST\r\n"), 0);
    CHECK_UINT(r.nout, 0);
    CHECK_UINT(r.nreplies, 1);
    CHECK_UINT(r.replies[0], SG_TRACK_R_UNKNOWN);

    /* a reply of its own waits for those due before it */
    for (step = 0; step < 2; step++) {
        strict_init(&t, &r, true);
        relay(&t, &r, LIT("MAIL FROM:<a@b>\r\nXYZ\r\nNOOP\r\n"), step);
        CHECK_UINT(r.nout, 17);
        CHECK_UINT(r.nreplies, 0);
        CHECK_UINT(t.pending, 1);
        server(&t, LIT("250 ok\r\n"), step);
        relay_run(&t, &r);
        CHECK_UINT(r.nreplies, 1);
        CHECK_UINT(r.nout, 17 + 6);
        CHECK(memcmp(r.out + 17, "NOOP\r\n", 6) == 0);
        CHECK_UINT(t.pending, 1);
    }
}

/* Strict: a line too long is answered once, dropped through its LF,
 * however it comes; the next command passes. */
static void
test_strict_long_lines(void)
{
    static char       line[SG_PROXY_TRACK_STRICT_LINE_MAX + 64];
    sg_proxy_track_t  t;
    relay_t           r;
    size_t            len, step;
    const size_t      lens[] = {
        SG_PROXY_TRACK_STRICT_LINE_MAX, SG_PROXY_TRACK_STRICT_LINE_MAX + 1,
        SG_PROXY_TRACK_STRICT_LINE_MAX + 40
    };
    size_t            i;

    for (i = 0; i < sg_nelems(lens); i++) {
        len = lens[i];
        memcpy(line, "RCPT TO:<", 9);
        memset(line + 9, 'a', len - 9);
        memcpy(line + len, "\r\nNOOP\r\n", 8);
        for (step = 0; step < 2; step++) {
            /* a step of 1000: the line comes in pieces */
            strict_init(&t, &r, true);
            relay(&t, &r, line, len + 8, step ? 1000 : 0);
            if (len <= SG_PROXY_TRACK_STRICT_LINE_MAX) {
                CHECK_UINT(r.nreplies, 0);
                CHECK_UINT(r.nout, len + 8);
                CHECK_UINT(t.pending, 2);
            } else {
                CHECK_UINT(r.nreplies, 1);
                CHECK_UINT(r.replies[0], SG_TRACK_R_LONG);
                CHECK_UINT(r.nout, 6);
                CHECK(memcmp(r.out, "NOOP\r\n", 6) == 0);
                CHECK_UINT(t.pending, 1);
            }
            CHECK_INT(t.state, SG_TRACK_CMD);
        }
    }
    /* a full buffer holding only part of a line: too long too */
    strict_init(&t, &r, true);
    CHECK_UINT(sg_proxy_track_client(&t, (u_char *) "NOOP", 4, true), 0);
    CHECK_UINT(t.reply, SG_TRACK_R_LONG);
    CHECK_UINT(t.drop, 4);
    CHECK_INT(t.state, SG_TRACK_SKIP);
    /* ... unless what is before it may go first */
    strict_init(&t, &r, true);
    CHECK_UINT(sg_proxy_track_client(&t, (u_char *) "NOOP\r\nNO", 8, true),
               6);
    CHECK_UINT(t.reply, 0);
}

/* Strict: the server can still end it (the relay then ends the session),
 * and then nothing of the client's passes. */
static void
test_strict_off(void)
{
    sg_proxy_track_t  t;
    relay_t           r;

    strict_init(&t, &r, true);
    relay(&t, &r, LIT("NOOP\r\n"), 0);
    server(&t, LIT("250 ok\r\n250 again\r\n"), 0);
    CHECK_INT(t.state, SG_TRACK_OFF);
    r.nout = 0;
    relay(&t, &r, LIT("MAIL FROM:<a@b>\r\n"), 0);
    CHECK_UINT(r.nout, 0);
}

/* Strict with limits: the step check says no to MAILs and RCPTs past
 * the first `allow` of each. */
static unsigned  steps_allowed[2], steps_asked[2];

static char  step_args[64];

static int
step_check(void *data, unsigned what, const u_char *args, size_t n)
{
    (void) data;
    n = sg_min(n, sizeof(step_args) - 1);
    memcpy(step_args, args, n);
    step_args[n] = '\0';
    return steps_asked[what]++ < steps_allowed[what] ? SG_OK : SG_BUSY;
}

static void
test_strict_steps(void)
{
    sg_proxy_track_t  t;
    relay_t           r;
    size_t            step;
    static const char  in[] =
        "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n"
        "DATA\r\n";
    static const char  in2[] =
        "RSET\r\nMAIL FROM:<g@h>\r\nRCPT TO:<i@j>\r\nDATA\r\n"
        "BDAT 6 LAST\r\nRCPT\r\nNOOP\r\nMAIL FROM:<k@l>\r\n";

    for (step = 0; step < 2; step++) {
        strict_init(&t, &r, true);
        t.step = step_check;
        steps_allowed[0] = 1;
        steps_allowed[1] = 1;
        steps_asked[0] = steps_asked[1] = 0;
        /* the second RCPT is refused; DATA passes */
        relay(&t, &r, LIT(in), step);
        CHECK_UINT(r.nout, 32);
        CHECK(memcmp(r.out, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", 32)
              == 0);
        CHECK_UINT(t.pending, 2);
        server(&t, LIT("250 ok\r\n250 ok\r\n"), step);
        relay_run(&t, &r);
        CHECK_UINT(r.nreplies, 1);
        CHECK_UINT(r.replies[0], SG_TRACK_R_RCPT_REFUSED);
        CHECK_UINT(r.nout, 32 + 6);
        CHECK_INT(t.state, SG_TRACK_WAIT_DATA);
        server(&t, LIT("354 go\r\n"), step);
        relay(&t, &r, LIT("x\r\n.\r\n"), step);
        server(&t, LIT("250 queued\r\n"), step);
        /* the next MAIL is refused, and its transaction with it: the
         * BDAT's chunk ("RCPT\r") is dropped, not read as a command;
         * a new MAIL is asked again */
        r.nout = 0;
        relay(&t, &r, LIT(in2), step);
        relay_run(&t, &r);
        CHECK_UINT(r.nout, 6);
        CHECK_UINT(r.nreplies, 1);
        server(&t, LIT("250 ok\r\n"), step);
        relay_run(&t, &r);
        CHECK_UINT(r.nout, 12);
        CHECK(memcmp(r.out, "RSET\r\nNOOP\r\n", 12) == 0);
        CHECK_UINT(r.nreplies, 5);
        CHECK_UINT(r.replies[1], SG_TRACK_R_MAIL_REFUSED);
        CHECK_UINT(r.replies[2], SG_TRACK_R_NO_MAIL);
        CHECK_UINT(r.replies[3], SG_TRACK_R_NO_MAIL);
        CHECK_UINT(r.replies[4], SG_TRACK_R_NO_MAIL);
        server(&t, LIT("250 ok\r\n"), step);
        relay_run(&t, &r);
        CHECK_UINT(r.nreplies, 6);
        CHECK_UINT(r.replies[5], SG_TRACK_R_MAIL_REFUSED);
        CHECK_UINT(steps_asked[0], 3);
        CHECK_UINT(steps_asked[1], 2);
        /* each is asked with what follows its verb */
        CHECK(strcmp(step_args, "FROM:<k@l>") == 0);
        CHECK_INT(t.step_rc, SG_BUSY);
        CHECK_INT(t.state, SG_TRACK_CMD);
        CHECK_UINT(t.pending, 0);
    }
    /* not strict: never asked */
    sg_proxy_track_init(&t, false, true);
    t.step = step_check;
    steps_allowed[0] = 0;
    steps_asked[0] = 0;
    CHECK_UINT(client(&t, LIT("MAIL FROM:<a@b>\r\n"), 0), 17);
    CHECK_UINT(steps_asked[0], 0);
}

int
main(void)
{
    sg_test_start();

    RUN(test_transaction);
    RUN(test_pipelined_end_and_quit);
    RUN(test_refused_data);
    RUN(test_multiline_replies);
    RUN(test_bdat);
    RUN(test_bdat_without_chunking);
    RUN(test_smuggling);
    RUN(test_long_lines);
    RUN(test_long_lines_far);
    RUN(test_long_lines_16);
    RUN(test_off);
    RUN(test_partial_lines);
    RUN(test_line_max);
    RUN(test_clean);
    RUN(test_greeted);
    RUN(test_erred);
    RUN(test_strict_line_ends);
    RUN(test_strict_commands);
    RUN(test_strict_long_lines);
    RUN(test_strict_off);
    RUN(test_strict_steps);

    return sg_test_finish();
}
