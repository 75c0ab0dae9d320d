/*
 * fuzz_smtp_reply.c: libFuzzer harness for backend reply parsing.
 *
 * Reads arbitrary bytes as a stream of replies, the way the proxy reads
 * a backend: sg_smtp_parse_reply() until it stops, then every line of
 * each reply through sg_smtp_reply_next_line() and the capability words
 * through sg_smtp_ehlo_has().  Beyond the sanitizers it checks that a
 * reply is never judged before it is complete (every shorter cut is
 * AGAIN), that a refused prefix stays refused, that line counts and
 * texts agree between the two views of a reply, and that every word
 * advertised on a later line of a 250 reply is found again.
 */
#include "sg_core.h"
#include "sg_smtp_parse.h"
#include "sg_fuzz.h"


#define SG_FUZZ_KEYWORD_MAX 64

/* Parse the first n bytes of p from an exact-size copy, so that reading
 * past them is a sanitizer report and not a read of the next reply. */
static int
sg_fuzz_parse_cut(const u_char *p, size_t n, size_t limit, sg_smtp_reply_t *r)
{
    u_char *copy;
    int     rc;

    copy = sg_fuzz_copy(p, n);
    rc = sg_smtp_parse_reply(copy, copy + n, limit, r);
    free(copy);
    return rc;
}

static bool
sg_fuzz_inside(const sg_smtp_reply_t *r, const sg_str_t *s)
{
    return s->data >= r->start && s->data + s->len <= r->start + r->len;
}

/* Every later line's first word must be found by sg_smtp_ehlo_has(). */
static void
sg_fuzz_ehlo_word(const sg_smtp_reply_t *r, const sg_str_t *line)
{
    char     keyword[SG_FUZZ_KEYWORD_MAX + 1];
    sg_str_t params;
    size_t   n;
    u_char  *sp;

    sp = line->len ? memchr(line->data, ' ', line->len) : NULL;
    n = sp ? (size_t) (sp - line->data) : line->len;
    if (n == 0 || n > SG_FUZZ_KEYWORD_MAX) {
        return;
    }
    memcpy(keyword, line->data, n);
    keyword[n] = '\0';

    /* A NUL is refused by the parser, so the word is all of keyword. */
    SG_FUZZ_ASSERT(strlen(keyword) == n);
    SG_FUZZ_ASSERT(sg_smtp_ehlo_has(r, keyword, &params) == (r->code == 250));
    if (r->code == 250) {
        SG_FUZZ_ASSERT(sg_fuzz_inside(r, &params));
    }
}

static void
sg_fuzz_lines(const sg_smtp_reply_t *r)
{
    static const char *keywords[] = {
        "STARTTLS", "AUTH",     "SIZE",     "PIPELINING", "8BITMIME",
        "XCLIENT",  "SMTPUTF8", "CHUNKING", "x",          "AUTH=PLAIN",
    };
    sg_str_t line, params;
    size_t   cursor, i;
    unsigned n;

    cursor = 0;
    n = 0;
    while (sg_smtp_reply_next_line(r, &cursor, &line)) {
        SG_FUZZ_ASSERT(sg_fuzz_inside(r, &line));
        SG_FUZZ_ASSERT(!line.len || !memchr(line.data, '\n', line.len));
        SG_FUZZ_ASSERT(!line.len || !memchr(line.data, '\0', line.len));
        if (n > 0) {
            sg_fuzz_ehlo_word(r, &line);
        }
        n++;
        SG_FUZZ_ASSERT(n <= r->lines);
    }
    SG_FUZZ_ASSERT(n == r->lines && cursor == r->len);
    SG_FUZZ_ASSERT(line.data == r->text.data && line.len == r->text.len);

    for (i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++) {
        if (sg_smtp_ehlo_has(r, keywords[i], &params)) {
            SG_FUZZ_ASSERT(r->code == 250 && r->lines > 1);
            SG_FUZZ_ASSERT(sg_fuzz_inside(r, &params));
        } else {
            SG_FUZZ_ASSERT(params.len == 0);
        }
    }
}

/* One reply at p: check it against cuts of itself, return its length
 * or 0 when the stream stops here. */
static size_t
sg_fuzz_reply(const u_char *p, const u_char *end, size_t limit)
{
    sg_smtp_reply_t r, cut;
    size_t          k, step, avail;
    int             rc;

    avail = (size_t) (end - p);
    rc = sg_smtp_parse_reply(p, end, limit, &r);
    SG_FUZZ_ASSERT(rc == SG_OK || rc == SG_AGAIN || rc == SG_ERROR);

    if (rc != SG_OK) {
        SG_FUZZ_ASSERT(rc == SG_ERROR || avail < limit);
        /* Replies are judged whole: if the stream does not start with
         * one, no prefix of it does. */
        rc = sg_fuzz_parse_cut(p, avail / 2, limit, &cut);
        SG_FUZZ_ASSERT(rc != SG_OK);
        return 0;
    }

    SG_FUZZ_ASSERT(r.start == p && r.len > 0 && r.len <= avail);
    SG_FUZZ_ASSERT(r.len <= limit && r.lines > 0 && r.lines <= r.len / 4);
    SG_FUZZ_ASSERT(r.code >= 200 && r.code <= 599);
    SG_FUZZ_ASSERT(p[r.len - 1] == '\n' && sg_fuzz_inside(&r, &r.text));
    sg_fuzz_lines(&r);

    SG_FUZZ_ASSERT(sg_fuzz_parse_cut(p, r.len, limit, &cut) == SG_OK);
    SG_FUZZ_ASSERT(cut.len == r.len && cut.code == r.code
                   && cut.lines == r.lines && cut.text.len == r.text.len);

    /* Short replies are cut everywhere, long ones at a few places. */
    step = r.len <= 64 ? 1 : r.len / 16;
    for (k = 0; k < r.len; k += step) {
        SG_FUZZ_ASSERT(sg_fuzz_parse_cut(p, k, limit, &cut) == SG_AGAIN);
    }
    SG_FUZZ_ASSERT(sg_fuzz_parse_cut(p, r.len - 1, limit, &cut) == SG_AGAIN);
    return r.len;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const u_char *p, *end;
    size_t        limits[2], i, n;

    limits[0] = 4 * SG_SMTP_REPLY_LINE_MAX;
    limits[1] = size % 701;

    for (i = 0; i < 2; i++) {
        p = data;
        end = data + size;
        while (p < end) {
            n = sg_fuzz_reply(p, end, limits[i]);
            if (n == 0) {
                break;
            }
            p += n;
        }
    }
    return 0;
}
