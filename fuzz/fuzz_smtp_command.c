/*
 * fuzz_smtp_command.c: libFuzzer harness for the client command path.
 *
 * Feeds arbitrary bytes through sg_smtp_read_line(), sg_smtp_skip_line()
 * and sg_smtp_parse_command() the way a session does: in chunks into a
 * bounded buffer, dropping what each call consumed, skipping to the next
 * LF after an over-long line.  Beyond the sanitizers it checks what a
 * session relies on: every verdict makes progress or asks for bytes
 * that fit, every view lies inside the line, and cutting the same input
 * into different chunks gives the same verdicts in the same order.
 * Bytes past the valid part of the buffer are poisoned under
 * AddressSanitizer, so reading one byte too far is a crash.
 */
#include "sg_core.h"
#include "sg_smtp_parse.h"
#include "sg_fuzz.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define SG_FUZZ_POISON(p, n)   ASAN_POISON_MEMORY_REGION(p, n)
#define SG_FUZZ_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#endif
#endif
#ifndef SG_FUZZ_POISON
#define SG_FUZZ_POISON(p, n)   ((void) (p), (void) (n))
#define SG_FUZZ_UNPOISON(p, n) ((void) (p), (void) (n))
#endif


/* A session buffer holds at least one whole line at the largest limit
 * used here, as the real one must, or AGAIN could never be answered. */
#define SG_FUZZ_BUF (2 * SG_SMTP_CMD_LINE_MAX)

typedef struct {
    u_char  *buf;
    size_t   n; /* valid bytes at buf */
    size_t   limit;
    bool     skipping;
    uint64_t trace; /* hash of every verdict, in order */
} sg_fuzz_session_t;

static void
sg_fuzz_trace(sg_fuzz_session_t *s, int event, const u_char *p, size_t n)
{
    size_t i;

    s->trace = (s->trace ^ (uint64_t) (event + 1000)) * 0x100000001b3ULL;
    for (i = 0; i < n; i++) {
        s->trace = (s->trace ^ p[i]) * 0x100000001b3ULL;
    }
    s->trace = (s->trace ^ n) * 0x100000001b3ULL;
}

static bool
sg_fuzz_alnum(u_char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
           || (c >= 'a' && c <= 'z');
}

/* The verdict the header promises, worked out the slow way. */
static int
sg_fuzz_command_oracle(const sg_str_t *line)
{
    size_t i;

    for (i = 0; i < line->len && line->data[i] != ' '; i++) {
        if (!sg_fuzz_alnum(line->data[i])) {
            return SG_ERROR;
        }
    }
    return i > 0 ? SG_OK : SG_ERROR;
}

static void
sg_fuzz_command(sg_fuzz_session_t *s, const sg_str_t *line, bool ok)
{
    sg_smtp_cmd_t cmd;
    const u_char *end;
    size_t        i;
    int           rc;

    rc = sg_smtp_parse_command(line, &cmd);
    SG_FUZZ_ASSERT(rc == sg_fuzz_command_oracle(line));
    SG_FUZZ_ASSERT((int) cmd.verb >= (int) SG_SMTP_UNKNOWN
                   && (int) cmd.verb < (int) SG_SMTP_VERB_COUNT);
    if (rc == SG_ERROR) {
        SG_FUZZ_ASSERT(cmd.verb == SG_SMTP_UNKNOWN && cmd.args.len == 0);
        if (ok) {
            sg_fuzz_trace(s, 100, NULL, 0);
        }
        return;
    }

    SG_FUZZ_ASSERT(cmd.name.data == line->data && cmd.name.len > 0);
    for (i = 0; i < cmd.name.len; i++) {
        SG_FUZZ_ASSERT(sg_fuzz_alnum(cmd.name.data[i]));
    }
    end = line->data + line->len;
    SG_FUZZ_ASSERT(cmd.args.data >= cmd.name.data + cmd.name.len);
    SG_FUZZ_ASSERT(cmd.args.data + cmd.args.len <= end);
    if (cmd.args.len > 0) {
        SG_FUZZ_ASSERT(cmd.args.data[cmd.args.len - 1] != ' '
                       && cmd.args.data[cmd.args.len - 1] != '\t');
    }
    if (cmd.verb != SG_SMTP_UNKNOWN) {
        SG_FUZZ_ASSERT(strlen(sg_smtp_verb_name(cmd.verb)) == cmd.name.len);
        SG_FUZZ_ASSERT(
            sg_strncasecmp(cmd.name.data,
                           (const u_char *) sg_smtp_verb_name(cmd.verb),
                           cmd.name.len)
            == 0);
    }
    if (ok) {
        sg_fuzz_trace(s, 200 + cmd.verb, cmd.args.data, cmd.args.len);
    }
}

/* Check one sg_smtp_read_line() verdict against the buffer it saw. */
static void
sg_fuzz_check_line(sg_fuzz_session_t *s, sg_smtp_line_e rc,
                   const sg_smtp_line_t *out)
{
    const u_char *p = s->buf;

    SG_FUZZ_ASSERT(out->consumed <= s->n);
    switch (rc) {
    case SG_SMTP_LINE_AGAIN:
        SG_FUZZ_ASSERT(out->consumed == 0 && s->n < s->limit);
        SG_FUZZ_ASSERT(s->n == 0 || memchr(p, '\n', s->n) == NULL);
        return;
    case SG_SMTP_LINE_TOO_LONG:
        SG_FUZZ_ASSERT(s->n >= s->limit && out->consumed == s->limit);
        SG_FUZZ_ASSERT(s->limit == 0 || memchr(p, '\n', s->limit) == NULL);
        return;
    case SG_SMTP_LINE_OK:
        SG_FUZZ_ASSERT(out->consumed >= 2 && out->consumed <= s->limit);
        SG_FUZZ_ASSERT(out->line.len == out->consumed - 2);
        SG_FUZZ_ASSERT(p[out->consumed - 2] == '\r');
        if (out->line.len > 0) {
            SG_FUZZ_ASSERT(!memchr(p, '\0', out->line.len));
            SG_FUZZ_ASSERT(!memchr(p, '\r', out->line.len));
        }
        break;
    case SG_SMTP_LINE_BARE_LF:
    case SG_SMTP_LINE_BARE_CR:
    case SG_SMTP_LINE_NUL:
        SG_FUZZ_ASSERT(out->consumed >= 1 && out->consumed <= s->limit);
        SG_FUZZ_ASSERT(out->line.len < out->consumed);
        break;
    default:
        SG_FUZZ_ASSERT(0);
    }
    SG_FUZZ_ASSERT(out->line.data == p && p[out->consumed - 1] == '\n');
    SG_FUZZ_ASSERT(!memchr(p, '\n', out->consumed - 1));
}

static void
sg_fuzz_drop(sg_fuzz_session_t *s, size_t n)
{
    SG_FUZZ_UNPOISON(s->buf, SG_FUZZ_BUF);
    memmove(s->buf, s->buf + n, s->n - n);
    s->n -= n;
}

/* Run every verdict the bytes in the buffer allow, then ask for more. */
static void
sg_fuzz_drain(sg_fuzz_session_t *s)
{
    sg_smtp_line_t out;
    sg_smtp_line_e rc;
    size_t         consumed;
    bool           found;

    for (;;) {
        SG_FUZZ_POISON(s->buf + s->n, SG_FUZZ_BUF - s->n);

        if (s->skipping) {
            found = sg_smtp_skip_line(s->buf, s->buf + s->n, &consumed);
            SG_FUZZ_ASSERT(consumed <= s->n);
            SG_FUZZ_ASSERT(found ? s->buf[consumed - 1] == '\n'
                                 : consumed == s->n);
            sg_fuzz_drop(s, consumed);
            if (!found) {
                return;
            }
            s->skipping = false;
            sg_fuzz_trace(s, 50, NULL, 0);
            continue;
        }

        rc = sg_smtp_read_line(s->buf, s->buf + s->n, s->limit, &out);
        sg_fuzz_check_line(s, rc, &out);
        if (rc == SG_SMTP_LINE_AGAIN) {
            return;
        }
        sg_fuzz_trace(s, rc, out.line.data, out.line.len);
        if (rc != SG_SMTP_LINE_TOO_LONG) {
            sg_fuzz_command(s, &out.line, rc == SG_SMTP_LINE_OK);
        }
        s->skipping = (rc == SG_SMTP_LINE_TOO_LONG);
        sg_fuzz_drop(s, out.consumed);
    }
}

static uint64_t
sg_fuzz_session(const uint8_t *data, size_t size, size_t chunk, size_t limit)
{
    sg_fuzz_session_t s;
    size_t            off, n;

    s.buf = malloc(SG_FUZZ_BUF);
    SG_FUZZ_ASSERT(s.buf != NULL);
    s.n = 0;
    s.limit = limit;
    s.skipping = false;
    s.trace = 0xcbf29ce484222325ULL;

    off = 0;
    for (;;) {
        sg_fuzz_drain(&s);
        if (off == size) {
            break;
        }
        /* AGAIN promised that a whole line fits: there must be room. */
        SG_FUZZ_ASSERT(s.n < SG_FUZZ_BUF);
        n = size - off;
        n = n < chunk ? n : chunk;
        n = n < SG_FUZZ_BUF - s.n ? n : SG_FUZZ_BUF - s.n;
        SG_FUZZ_UNPOISON(s.buf, SG_FUZZ_BUF);
        memcpy(s.buf + s.n, data + off, n);
        s.n += n;
        off += n;
    }

    /* What is left over at the end must not depend on the chunking. */
    sg_fuzz_trace(&s, s.skipping ? 60 : 61, s.buf, s.n);
    SG_FUZZ_UNPOISON(s.buf, SG_FUZZ_BUF);
    free(s.buf);
    return s.trace;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t   limits[2], chunks[3];
    uint64_t first;
    size_t   i, j;

    limits[0] = SG_SMTP_CMD_LINE_MAX;
    limits[1] = size % 67;
    chunks[0] = size ? size : 1;
    chunks[1] = 1;
    chunks[2] = size ? 1 + data[size - 1] % 37 : 1;

    for (i = 0; i < 2; i++) {
        first = sg_fuzz_session(data, size, chunks[0], limits[i]);
        for (j = 1; j < 3; j++) {
            SG_FUZZ_ASSERT(sg_fuzz_session(data, size, chunks[j], limits[i])
                           == first);
        }
    }
    return 0;
}
