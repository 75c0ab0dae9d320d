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
 *
 * The first byte's 0x40 bit plays it strict (proxy_strict), as the relay
 * does: the line ends it inserts go to the server, the bytes it drops
 * do not, its own replies wait for every reply due.  Then only the
 * server's replies may end it, and a plain reader of what the server
 * got (which takes nothing but CR LF line ends) must count the same
 * replies due and the same message ends.  Its 0x20 bit adds limits that
 * refuse some MAILs and RCPTs, answered here with their transactions:
 * the same must hold.
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
    /* Strict: a plain reader of what the server gets (the bytes passed
     * and the line ends inserted), with what it holds back. */
    sg_proxy_track_t  shadow;
    u_char            sheld[SG_FUZZ_HELD_MAX];
    size_t            nsheld;
} sg_fuzz_play_t;

/* Strict with limits (the first byte's 0x20 bit): every third MAIL and
 * every other RCPT is refused.  Both plays read the same commands in
 * the same order, so they are refused alike. */
static int
sg_fuzz_step(void *data, unsigned what, const u_char *args, size_t n)
{
    unsigned  *asked = data;

    SG_FUZZ_ASSERT(n <= SG_PROXY_TRACK_STRICT_LINE_MAX && (n == 0 || args));

    asked[what]++;
    return asked[what] % (what == 0 ? 3 : 2) == 0 ? SG_BUSY : SG_OK;
}

/* Strict: bytes the server gets, read by the shadow. */
static void
sg_fuzz_shadow(sg_fuzz_play_t *pl, const u_char *p, size_t n)
{
    size_t  k;

    if (pl->nsheld + n > SG_FUZZ_HELD_MAX) {
        n = SG_FUZZ_HELD_MAX - pl->nsheld;
    }
    if (n) {
        memcpy(pl->sheld + pl->nsheld, p, n);
    }
    pl->nsheld += n;
    k = sg_proxy_track_client(&pl->shadow, pl->sheld, pl->nsheld, false);
    memmove(pl->sheld, pl->sheld + k, pl->nsheld - k);
    pl->nsheld -= k;
}

/* Strict: what the relay does for the reader -- inserts, drops, its own
 * replies once none is due -- until nothing moves. */
static void
sg_fuzz_owed(sg_fuzz_play_t *pl)
{
    sg_proxy_track_t  *t = &pl->t;
    size_t             k;

    if (t->ins) {
        sg_fuzz_shadow(pl, &t->ins, 1);
        t->ins = 0;
    }
    if (t->drop && pl->nheld) {
        k = sg_min(t->drop, pl->nheld);
        memmove(pl->held, pl->held + k, pl->nheld - k);
        pl->nheld -= k;
        t->drop -= k;
    }
    if (t->reply && t->drop == 0 && t->pending == 0) {
        SG_FUZZ_ASSERT(t->reply <= SG_TRACK_R_NO_MAIL);
        t->reply = SG_TRACK_R_NONE;
    }
}

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
    for ( ;; ) {
        if (pl->t.strict && sg_proxy_track_owed(&pl->t)) {
            sg_fuzz_owed(pl);
            if (sg_proxy_track_owed(&pl->t)) {
                return;                /* waits for the server */
            }
        }
        state = pl->t.state;
        before = pl->nheld;
        k = sg_proxy_track_client(&pl->t, pl->held, pl->nheld, false);
        SG_FUZZ_ASSERT(k <= before);
        if (state == SG_TRACK_QUIT || state == SG_TRACK_WAIT_DATA) {
            SG_FUZZ_ASSERT(k == 0 || pl->t.strict);
        }
        if (state == SG_TRACK_OFF) {
            SG_FUZZ_ASSERT(pl->t.state == SG_TRACK_OFF
                           && k == (pl->t.strict ? 0 : before));
        }
        if (pl->t.state == SG_TRACK_OFF) {
            SG_FUZZ_ASSERT(pl->t.why != NULL || state == SG_TRACK_OFF);
            /* strict: only the server ends it */
            SG_FUZZ_ASSERT(!pl->t.strict || state == SG_TRACK_OFF);
        }
        if (pl->t.strict) {
            sg_fuzz_shadow(pl, pl->held, k);
        }
        memmove(pl->held, pl->held + k, pl->nheld - k);
        pl->nheld -= k;
        pl->passed += k;
        if (!pl->t.strict || !sg_proxy_track_owed(&pl->t)) {
            return;
        }
    }
}

static void
sg_fuzz_server(sg_fuzz_play_t *pl, const u_char *p, size_t n)
{
    unsigned  state = pl->t.state;

    sg_proxy_track_server(&pl->t, p, n);
    if (state == SG_TRACK_OFF) {
        SG_FUZZ_ASSERT(pl->t.state == SG_TRACK_OFF);
    }
    if (pl->t.strict) {
        sg_proxy_track_server(&pl->shadow, p, n);
    }
}

/* Strict: the server, reading only what it got, must agree with the
 * reader on every reply due -- and so on where each message ends -- as
 * long as neither was ended by the server's replies (or the shadow by a
 * line longer than a plain reader takes, which strict passes). */
static void
sg_fuzz_agree(sg_fuzz_play_t *pl)
{
    sg_proxy_track_t  *t = &pl->t, *sh = &pl->shadow;

    if (!t->strict || t->state == SG_TRACK_OFF || sh->state == SG_TRACK_OFF) {
        if (t->strict && sh->state == SG_TRACK_OFF
            && t->state != SG_TRACK_OFF)
        {
            SG_FUZZ_ASSERT(strcmp(sh->why, "a command line too long") == 0
                           || strcmp(sh->why, "QUIT with an argument") == 0);
        }
        return;
    }
    SG_FUZZ_ASSERT(t->pending == sh->pending);
    SG_FUZZ_ASSERT(t->sent == sh->sent && t->end_at == sh->end_at);
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
    static unsigned        asked_a[2], asked_b[2];
    size_t                 i = 0, n, j;
    bool                   client, chunking;

    /* The first byte's top bit: whether the server offered CHUNKING
     * (the byte still starts the first step). */
    chunking = size && (data[0] & 0x80);
    sg_proxy_track_init(&a.t, false, chunking);
    sg_proxy_track_init(&b.t, false, chunking);
    /* Its next bit: strict (proxy_strict). */
    a.t.strict = b.t.strict = size && (data[0] & 0x40);
    if (size && (data[0] & 0x20)) {
        memset(asked_a, 0, sizeof(asked_a));
        memset(asked_b, 0, sizeof(asked_b));
        a.t.step = b.t.step = sg_fuzz_step;
        a.t.step_data = asked_a;
        b.t.step_data = asked_b;
    }
    sg_proxy_track_init(&a.shadow, false, chunking);
    sg_proxy_track_init(&b.shadow, false, chunking);
    a.nheld = b.nheld = a.nsheld = b.nsheld = 0;
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
        sg_fuzz_agree(&a);
        sg_fuzz_agree(&b);
    }
    return 0;
}
