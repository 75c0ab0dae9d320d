/*
 * fuzz_spool_data.c: libFuzzer harness for the spool's DATA decoder.
 *
 * Decodes arbitrary bytes three ways: in one call; in pieces, with input
 * cuts and output room taken from a generator seeded by the input (as a
 * session meets them: reads of any size, a buffer nearly full); and with
 * a slow oracle that reads the stream a line start at a time.  All three
 * must agree on the octets written, on where the data ended (if it did)
 * and on how much input was taken.  Beyond that: output never exceeds
 * two bytes per input byte, and every call with input and room makes
 * progress.  Each input piece is an exact-size heap copy, so reading one
 * byte too far crashes.
 */
#include "sg_core.h"
#include "sg_spool_data.h"
#include "sg_fuzz.h"


typedef struct {
    u_char  *out;
    size_t   len;
    size_t   consumed;
    bool     done;
} sg_fuzz_result_t;

/* The RFC 5321 4.5.2 reading, slowly: a line starts at the beginning or
 * after CRLF; there "." CRLF ends the data and any other "." is
 * dropped. */
static void
sg_fuzz_oracle(const u_char *p, size_t n, sg_fuzz_result_t *r)
{
    size_t  i = 0;
    bool    bol = true;

    r->len = 0;
    r->done = false;
    while (i < n) {
        if (bol && p[i] == '.') {
            if (i + 1 == n || (p[i + 1] == '\r' && i + 2 == n)) {
                i = n;                       /* held until more comes */
                break;
            }
            if (p[i + 1] == '\r' && p[i + 2] == '\n') {
                i += 3;
                r->done = true;
                break;
            }
            i++;
            bol = false;
            continue;
        }
        r->out[r->len++] = p[i];
        bol = p[i] == '\n' && i > 0 && p[i - 1] == '\r';
        i++;
    }
    r->consumed = i;
}

static void
sg_fuzz_whole(const u_char *p, size_t n, sg_fuzz_result_t *r)
{
    sg_spool_data_t  d = { 0 };
    const u_char    *in = p;
    u_char          *o = r->out;
    int              rc;

    rc = sg_spool_data_decode(&d, &in, p + n, &o, r->out + 2 * n + 2);
    SG_FUZZ_ASSERT(rc == SG_DONE || in == p + n);
    r->done = rc == SG_DONE;
    r->consumed = (size_t) (in - p);
    r->len = (size_t) (o - r->out);
}

static void
sg_fuzz_pieces(const u_char *p, size_t n, uint32_t seed,
    sg_fuzz_result_t *r)
{
    sg_spool_data_t  d = { 0 };
    const u_char    *in, *start;
    u_char          *o = r->out, *piece;
    size_t           off = 0, step, room;
    int              rc = SG_AGAIN;

    while (off < n && rc != SG_DONE) {
        seed = seed * 1103515245u + 12345u;
        step = 1 + (seed >> 16) % 17;
        room = 2 + (seed >> 8) % 9;
        step = sg_min(step, n - off);
        piece = malloc(step);
        SG_FUZZ_ASSERT(piece != NULL);
        memcpy(piece, p + off, step);
        start = in = piece;
        while (in < piece + step) {
            u_char  *before = o;

            rc = sg_spool_data_decode(&d, &in, piece + step, &o, o + room);
            SG_FUZZ_ASSERT(o - before <= (ptrdiff_t) room);
            if (rc == SG_DONE) {
                break;
            }
            /* two bytes of room always take at least one byte */
            SG_FUZZ_ASSERT(in > start || o > before);
            start = in;
        }
        off += (size_t) (in - piece);
        free(piece);
    }
    r->done = rc == SG_DONE;
    r->consumed = off;
    r->len = (size_t) (o - r->out);
}

static void
sg_fuzz_same(const sg_fuzz_result_t *a, const sg_fuzz_result_t *b)
{
    SG_FUZZ_ASSERT(a->done == b->done);
    SG_FUZZ_ASSERT(a->consumed == b->consumed);
    SG_FUZZ_ASSERT(a->len == b->len);
    SG_FUZZ_ASSERT(a->len == 0 || memcmp(a->out, b->out, a->len) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_fuzz_result_t  whole, pieces, oracle;
    uint32_t          seed = 0x9e3779b9u;
    u_char           *p;
    size_t            i;

    p = sg_fuzz_copy(data, size);
    for (i = 0; i < size && i < 8; i++) {
        seed = seed * 31 + data[i];
    }
    whole.out = malloc(2 * size + 2);
    pieces.out = malloc(2 * size + 2);
    oracle.out = malloc(size + 1);
    SG_FUZZ_ASSERT(whole.out && pieces.out && oracle.out);

    sg_fuzz_whole(p, size, &whole);
    sg_fuzz_pieces(p, size, seed, &pieces);
    sg_fuzz_oracle(p, size, &oracle);
    SG_FUZZ_ASSERT(whole.len <= size);
    sg_fuzz_same(&whole, &oracle);
    sg_fuzz_same(&pieces, &oracle);

    free(whole.out);
    free(pieces.out);
    free(oracle.out);
    free(p);
    return 0;
}
