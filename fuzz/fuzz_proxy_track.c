/*
 * fuzz_proxy_track.c: libFuzzer harness for the relay's session reader
 * (sg_proxy_track), which decides whether a backend connection may be
 * kept for another session.
 *
 * The input is a script: each step is one byte, naming the side (low
 * bit: client or server) and a length (the rest), followed by that many
 * bytes for that side.  The script is played twice, once in whole steps
 * and once a byte at a time; as a relay does, client bytes the reader
 * held back are handed to it again with the next ones.  After every step
 * both plays must agree on the state, the replies due and how many
 * client bytes passed: a relay meets every split of the stream, and a
 * reader that answered differently to two splits of the same bytes could
 * disagree with the server on where a message ends.  Beyond that: the
 * count of bytes passed never exceeds what was handed in, nothing passes
 * after QUIT or while a DATA waits for its reply, and once tracking is
 * off it stays off.
 */
#include "sg_core.h"
#include "sg_proxy_track.h"
#include "sg_fuzz.h"

#define SG_FUZZ_HELD_MAX  65536

typedef struct {
    sg_proxy_track_t  t;
    u_char            held[SG_FUZZ_HELD_MAX];
    size_t            nheld;
    size_t            passed;
} sg_fuzz_play_t;

static void
sg_fuzz_client(sg_fuzz_play_t *pl, const u_char *p, size_t n)
{
    size_t    k, before;
    unsigned  state;

    if (pl->nheld + n > SG_FUZZ_HELD_MAX) {
        n = SG_FUZZ_HELD_MAX - pl->nheld;
    }
    if (n) {
        memcpy(pl->held + pl->nheld, p, n);
    }
    pl->nheld += n;
    state = pl->t.state;
    before = pl->nheld;
    k = sg_proxy_track_client(&pl->t, pl->held, pl->nheld, false);
    SG_FUZZ_ASSERT(k <= before);
    if (state == SG_TRACK_QUIT || state == SG_TRACK_WAIT_DATA) {
        SG_FUZZ_ASSERT(k == 0);
    }
    if (state == SG_TRACK_OFF) {
        SG_FUZZ_ASSERT(pl->t.state == SG_TRACK_OFF && k == before);
    }
    if (pl->t.state == SG_TRACK_OFF) {
        SG_FUZZ_ASSERT(pl->t.why != NULL || state == SG_TRACK_OFF);
    }
    memmove(pl->held, pl->held + k, pl->nheld - k);
    pl->nheld -= k;
    pl->passed += k;
}

static void
sg_fuzz_server(sg_fuzz_play_t *pl, const u_char *p, size_t n)
{
    unsigned  state = pl->t.state;

    sg_proxy_track_server(&pl->t, p, n);
    if (state == SG_TRACK_OFF) {
        SG_FUZZ_ASSERT(pl->t.state == SG_TRACK_OFF);
    }
}

/* After a server step the held client bytes may be free to go (the reply
 * to DATA came): hand them in again with nothing new. */
static void
sg_fuzz_retry(sg_fuzz_play_t *pl)
{
    sg_fuzz_client(pl, NULL, 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sg_fuzz_play_t  a, b;
    size_t                 i = 0, n, j;
    bool                   client, chunking;

    /* The first byte's top bit: whether the server offered CHUNKING
     * (the byte still starts the first step). */
    chunking = size && (data[0] & 0x80);
    sg_proxy_track_init(&a.t, false, chunking);
    sg_proxy_track_init(&b.t, false, chunking);
    a.nheld = b.nheld = 0;
    a.passed = b.passed = 0;

    while (i < size) {
        client = (data[i] & 1) == 0;
        n = data[i] >> 1;
        i++;
        if (n > size - i) {
            n = size - i;
        }
        if (client) {
            sg_fuzz_client(&a, data + i, n);
            for (j = 0; j < n; j++) {
                sg_fuzz_client(&b, data + i + j, 1);
            }
        } else {
            sg_fuzz_server(&a, data + i, n);
            for (j = 0; j < n; j++) {
                sg_fuzz_server(&b, data + i + j, 1);
            }
            sg_fuzz_retry(&a);
            sg_fuzz_retry(&b);
        }
        i += n;
        SG_FUZZ_ASSERT(a.t.state == b.t.state);
        SG_FUZZ_ASSERT(a.t.pending == b.t.pending);
        SG_FUZZ_ASSERT(a.passed == b.passed);
        SG_FUZZ_ASSERT(a.nheld == b.nheld);
        SG_FUZZ_ASSERT(sg_proxy_track_done(&a.t) == sg_proxy_track_done(&b.t));
    }
    return 0;
}
