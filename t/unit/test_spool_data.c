/*
 * test_spool_data.c: unit tests for the DATA phase decoder.
 *
 * Each case is decoded three ways: in one call, one input byte at a
 * time, and with only two bytes of output room per call.  All three
 * must agree, since a session meets every split of the stream.  The
 * cases are the lines relays get wrong: single dots, doubled dots, dots
 * after a bare LF, CR and LF split from each other, bytes after the end.
 */
#include "sg_core.h"
#include "sg_spool_data.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

typedef struct {
    int      rc;
    size_t   consumed;
    u_char   out[256];
    size_t   len;
} decoded_t;

/* step: input bytes per call (0: all); room: output room per call. */
static void
decode(const char *s, size_t n, size_t step, size_t room, decoded_t *r)
{
    sg_spool_data_t  d = { 0 };
    const u_char    *in, *p, *end;
    u_char          *o, *lim;

    in = sg_test_bytes(s, n);
    p = in;
    o = r->out;
    r->rc = SG_AGAIN;
    while (p < in + n) {
        end = step ? sg_min(in + n, p + step) : in + n;
        lim = room ? sg_min(r->out + sizeof(r->out), o + room)
                   : r->out + sizeof(r->out);
        r->rc = sg_spool_data_decode(&d, &p, end, &o, lim);
        if (r->rc == SG_DONE) {
            break;
        }
    }
    r->consumed = (size_t) (p - in);
    r->len = (size_t) (o - r->out);
}

static void
check(const char *s, size_t n, int rc, const char *want, size_t want_len,
    size_t consumed)
{
    static const size_t  steps[][2] = { { 0, 0 }, { 1, 0 }, { 0, 2 },
                                        { 3, 5 } };
    decoded_t            r;
    size_t               i;

    for (i = 0; i < sg_nelems(steps); i++) {
        decode(s, n, steps[i][0], steps[i][1], &r);
        CHECK_INT(r.rc, rc);
        CHECK_MEM(r.out, r.len, want, want_len);
        CHECK_UINT(r.consumed, consumed);
    }
}

#define CASE(in, rc, out, consumed)                                          \
    check(LIT(in), rc, LIT(out), consumed)

static void
test_ends(void)
{
    CASE(".\r\n", SG_DONE, "", 3);
    CASE("a\r\n.\r\n", SG_DONE, "a\r\n", 6);
    CASE("\r\n.\r\n", SG_DONE, "\r\n", 5);
    CASE("a\r\n.\r\nQUIT\r\n", SG_DONE, "a\r\n", 6);
    CASE("a\r\nb\r\n", SG_AGAIN, "a\r\nb\r\n", 6);
    CASE("a\r\n.", SG_AGAIN, "a\r\n", 4);
    CASE("a\r\n.\r", SG_AGAIN, "a\r\n", 5);
}

static void
test_stuffing(void)
{
    CASE("..\r\n.\r\n", SG_DONE, ".\r\n", 7);
    CASE("...\r\n.\r\n", SG_DONE, "..\r\n", 8);
    CASE(".a\r\n.\r\n", SG_DONE, "a\r\n", 7);
    CASE("a.\r\n.b.\r\n.\r\n", SG_DONE, "a.\r\nb.\r\n", 12);
    /* "." CR without LF: the dot was stuffing, the CR is text. */
    CASE(".\rX\r\n.\r\n", SG_DONE, "\rX\r\n", 8);
    CASE(".\r\r\n.\r\n", SG_DONE, "\r\r\n", 7);
    CASE(".\n\r\n.\r\n", SG_DONE, "\n\r\n", 7);
}

static void
test_bare_line_ends(void)
{
    /* A bare LF or CR never starts a line, so nothing here ends. */
    CASE("a\n.\n", SG_AGAIN, "a\n.\n", 4);
    CASE("a\n.\r\n", SG_AGAIN, "a\n.\r\n", 5);
    CASE("a\r\n.\n.\r\n", SG_AGAIN, "a\r\n\n.\r\n", 8);
    CASE("a\r.\r\n", SG_AGAIN, "a\r.\r\n", 5);
    CASE("a\r\r\n.\r\n", SG_DONE, "a\r\r\n", 7);
    /* Any byte passes through, NUL and 8-bit included. */
    CASE("\x00\xff\r\n.\r\n", SG_DONE, "\x00\xff\r\n", 7);
}

static void
test_reuse_and_room(void)
{
    sg_spool_data_t  d = { 0 };
    const u_char    *in, *p;
    u_char           out[16], *o;

    in = sg_test_bytes(LIT("x\r\n.\r\n.y\r\n.\r\n"));
    p = in;
    o = out;
    CHECK_INT(sg_spool_data_decode(&d, &p, in + 13, &o, out + 16), SG_DONE);
    CHECK_UINT((size_t) (p - in), 6);
    /* the state is back at the start for the next message */
    o = out;
    CHECK_INT(sg_spool_data_decode(&d, &p, in + 13, &o, out + 16), SG_DONE);
    CHECK_MEM(out, (size_t) (o - out), "y\r\n", 3);

    /* Less than two bytes of room: nothing is taken. */
    p = in;
    o = out;
    CHECK_INT(sg_spool_data_decode(&d, &p, in + 13, &o, out + 1), SG_AGAIN);
    CHECK(p == in && o == out);
}

int
main(void)
{
    sg_test_start();

    RUN(test_ends);
    RUN(test_stuffing);
    RUN(test_bare_line_ends);
    RUN(test_reuse_and_room);

    return sg_test_finish();
}
