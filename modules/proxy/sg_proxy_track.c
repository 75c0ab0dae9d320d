/*
 * sg_proxy_track.c: reading a relayed SMTP session's commands and
 * replies as they pass (see sg_proxy_track.h).
 */
#include "sg_core.h"
#include "sg_proxy_track.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SG_TRACK_AVX2  1
#else
#define SG_TRACK_AVX2  0
#endif

int  sg_proxy_track_wide = -1;

/* Where in a line of message text (SG_TRACK_DATA). */
enum {
    SG_TRACK_D_BOL = 0,      /* at the start of a line */
    SG_TRACK_D_MID,          /* inside one */
    SG_TRACK_D_CR,           /* inside one, after CR */
    SG_TRACK_D_DOT,          /* a line that began with "." */
    SG_TRACK_D_DOTCR         /* "." CR */
};

void
sg_proxy_track_init(sg_proxy_track_t *t, bool mail, bool chunking)
{
    memset(t, 0, sizeof(*t));
    t->state = SG_TRACK_CMD;
    t->chunking = chunking;
    if (mail) {
        t->sent = t->got = t->mail_at = 1;
    }
}

/* One more command owed a reply. */
static void
sg_proxy_track_sent(sg_proxy_track_t *t)
{
    t->pending++;
    t->sent++;
}

static void
sg_proxy_track_off(sg_proxy_track_t *t, const char *why)
{
    t->state = SG_TRACK_OFF;
    t->why = why;
}

/* The verb of a command line, letters only, up to SP or the end. */
static bool
sg_proxy_track_verb(const u_char *p, size_t n, const char *verb)
{
    size_t  v = strlen(verb);

    return n >= v && sg_strncasecmp(p, (u_char *) verb, v) == 0
           && (n == v || p[v] == ' ');
}

/* "BDAT" SP 1*DIGIT [SP "LAST"], exactly (line without CRLF). */
static int
sg_proxy_track_bdat(const u_char *p, size_t n, uint64_t *size)
{
    size_t    i = 5, digits = 0;
    uint64_t  v = 0;

    if (n < 6 || p[4] != ' ') {
        return SG_ERROR;
    }
    while (i < n && p[i] >= '0' && p[i] <= '9') {
        if (++digits > 18) {
            return SG_ERROR;
        }
        v = v * 10 + (uint64_t) (p[i] - '0');
        i++;
    }
    if (digits == 0) {
        return SG_ERROR;
    }
    if (i < n && !(n - i == 5 && sg_strncasecmp(p + i, (u_char *) " LAST", 5)
                   == 0))
    {
        return SG_ERROR;
    }
    *size = v;
    return SG_OK;
}

/* MAIL (0) or RCPT (1), the line [p, p + n), strict: whether it
 * passes, or is answered here (t->reply set). */
static int
sg_proxy_track_step(sg_proxy_track_t *t, unsigned what, const u_char *p,
    size_t n)
{
    if (what == 1 && t->mail_refused) {
        t->reply = SG_TRACK_R_NO_MAIL;
        return SG_DECLINED;
    }
    if (t->step == NULL || !t->strict) {
        return SG_OK;
    }
    t->step_rc = t->step(t->step_data, what, p + sg_min(n, 5),
                         n - sg_min(n, 5));
    if (t->step_rc == SG_OK) {
        return SG_OK;
    }
    if (what == 0) {
        t->mail_refused = 1;
        t->reply = SG_TRACK_R_MAIL_REFUSED;
    } else {
        t->reply = SG_TRACK_R_RCPT_REFUSED;
    }
    return SG_DECLINED;
}

/* One complete command line (without its CRLF). */
static void
sg_proxy_track_command(sg_proxy_track_t *t, const u_char *p, size_t n)
{
    static const char  *one_reply[] = {
        "MAIL", "RCPT", "RSET", "NOOP", "EHLO", "HELO", "VRFY", "EXPN",
        "HELP"
    };
    size_t              i;

    if (t->pending >= SG_PROXY_TRACK_PENDING_MAX) {
        sg_proxy_track_off(t, "too many commands before their replies");
        return;
    }
    if (sg_proxy_track_verb(p, n, "QUIT")) {
        if (n != 4 && !t->strict) {
            /* RFC 5321 gives QUIT no argument: the server says what it
             * makes of one (strict: it ends the session all the same). */
            sg_proxy_track_off(t, "QUIT with an argument");
            return;
        }
        t->state = SG_TRACK_QUIT;
        return;
    }
    if (sg_proxy_track_verb(p, n, "DATA")) {
        if (t->mail_refused) {
            t->reply = SG_TRACK_R_NO_MAIL;
            return;
        }
        sg_proxy_track_sent(t);
        t->data_due = 1;
        t->state = SG_TRACK_WAIT_DATA;
        return;
    }
    if (sg_proxy_track_verb(p, n, "BDAT")) {
        if (!t->chunking) {
            /* It would take the chunk for commands, unseen here. */
            if (t->strict) {
                t->reply = SG_TRACK_R_UNKNOWN;
                return;
            }
            sg_proxy_track_off(t, "BDAT to a server that does not offer "
                               "CHUNKING");
            return;
        }
        if (sg_proxy_track_bdat(p, n, &t->skip) != SG_OK) {
            if (t->strict) {
                t->reply = SG_TRACK_R_BDAT;
                return;
            }
            sg_proxy_track_off(t, "a BDAT command it cannot read");
            return;
        }
        if (t->mail_refused) {
            t->reply = SG_TRACK_R_NO_MAIL;       /* its chunk goes too */
            t->drop_chunk = t->skip;
            t->skip = 0;
            return;
        }
        sg_proxy_track_sent(t);
        if (n > 5 && (p[n - 1] == 'T' || p[n - 1] == 't')) {
            t->end_at = t->sent;            /* BDAT n LAST */
        }
        t->state = t->skip ? SG_TRACK_CHUNK : SG_TRACK_CMD;
        return;
    }
    for (i = 0; i < sg_nelems(one_reply); i++) {
        if (sg_proxy_track_verb(p, n, one_reply[i])) {
            if (i <= 1 && sg_proxy_track_step(t, i, p, n) != SG_OK) {
                return;                     /* answered here */
            }
            if (i == 0 || i == 2 || i == 4 || i == 5) {
                t->mail_refused = 0;        /* MAIL, RSET, EHLO, HELO */
            }
            sg_proxy_track_sent(t);
            if (i == 0) {
                t->mail_at = t->sent;
            } else if (i == 2) {
                t->rset_at = t->sent;
            } else if (i == 4 || i == 5) {
                t->greeted = 1;
            }
            return;
        }
    }
    if (t->strict) {
        t->reply = sg_proxy_track_verb(p, n, "AUTH") ? SG_TRACK_R_AUTH
                   : sg_proxy_track_verb(p, n, "STARTTLS")
                     ? SG_TRACK_R_STARTTLS : SG_TRACK_R_UNKNOWN;
        return;
    }
    sg_proxy_track_off(t, "a command other than those of RFC 5321");
}

#if (SG_TRACK_AVX2)
/* The loop below, 64 bytes a step: two loads, the CRs, LFs and dots as
 * bit masks, and the byte after the block read on its own (two loads
 * at p and p + 1 would split a cache line every other step).  Stops at
 * the first 64 bytes that need a look (the 16-byte loop then finds the
 * byte), or with fewer than 65 left. */
__attribute__((target("avx2")))
static const u_char *
sg_proxy_track_skip64(const u_char *p, const u_char *end)
{
    const __m256i  cr = _mm256_set1_epi8('\r'), lf = _mm256_set1_epi8('\n'),
                   dot = _mm256_set1_epi8('.');
    __m256i        a, b;
    uint64_t       mcr, mlf, mdot, lf1, dot1;

    while (end - p >= 65) {
        a = _mm256_loadu_si256((const __m256i *) (const void *) p);
        b = _mm256_loadu_si256((const __m256i *) (const void *) (p + 32));
        mcr = (uint32_t) _mm256_movemask_epi8(_mm256_cmpeq_epi8(a, cr))
              | (uint64_t) (uint32_t) _mm256_movemask_epi8(
                                          _mm256_cmpeq_epi8(b, cr)) << 32;
        mlf = (uint32_t) _mm256_movemask_epi8(_mm256_cmpeq_epi8(a, lf))
              | (uint64_t) (uint32_t) _mm256_movemask_epi8(
                                          _mm256_cmpeq_epi8(b, lf)) << 32;
        mdot = (uint32_t) _mm256_movemask_epi8(_mm256_cmpeq_epi8(a, dot))
               | (uint64_t) (uint32_t) _mm256_movemask_epi8(
                                           _mm256_cmpeq_epi8(b, dot)) << 32;
        /* bit i: the byte after byte i is an LF, a dot */
        lf1 = mlf >> 1 | (uint64_t) (p[64] == '\n') << 63;
        dot1 = mdot >> 1 | (uint64_t) (p[64] == '.') << 63;
        if ((mcr ^ lf1) | (mlf & dot1)) {
            break;
        }
        p += 64;
    }
    return p;
}
#endif

/* Message text that needs no decision, 16 bytes at a time (64 with
 * AVX2): every CR is followed by LF, every LF follows a CR, and no line
 * starts with ".".  Called inside a line (SG_TRACK_D_MID, so p[-1] is
 * no CR); returns the first byte not passed over and sets *dstate for
 * the last one that was.  What it stops at is left to the byte-wise
 * reader. */
static const u_char *
sg_proxy_track_skip(const u_char *p, const u_char *end, unsigned *dstate)
{
#if defined(__SSE2__)
    const u_char  *start = p;
    const __m128i  cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n'),
                   dot = _mm_set1_epi8('.');
    __m128i        v, w, odd;
    int            bad;

    if (p < end && *p == '\n') {
        return p;                          /* a bare LF */
    }
#if (SG_TRACK_AVX2)
    if (sg_proxy_track_wide < 0) {
        sg_proxy_track_wide = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    if (sg_proxy_track_wide) {
        p = sg_proxy_track_skip64(p, end);
    }
#endif
    while (end - p >= 17) {
        v = _mm_loadu_si128((const __m128i *) (const void *) p);
        w = _mm_loadu_si128((const __m128i *) (const void *) (p + 1));
        /* at i: a CR without an LF at i + 1, an LF at i + 1 without a
         * CR at i, or an LF at i with a "." at i + 1 */
        odd = _mm_or_si128(
                  _mm_xor_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(w, lf)),
                  _mm_and_si128(_mm_cmpeq_epi8(v, lf),
                                _mm_cmpeq_epi8(w, dot)));
        bad = _mm_movemask_epi8(odd);
        if (bad) {
            p += __builtin_ctz((unsigned) bad);
            break;
        }
        p += 16;
    }
    if (p > start) {
        *dstate = p[-1] == '\r' ? SG_TRACK_D_CR
                  : p[-1] == '\n' ? SG_TRACK_D_BOL : SG_TRACK_D_MID;
    }
#else
    (void) end;
    (void) dstate;
#endif
    return p;
}

/* Message text: find CRLF "." CRLF, refusing any bare CR or LF.  Returns
 * the bytes read; the state leaves SG_TRACK_DATA at the end. */
static size_t
sg_proxy_track_data(sg_proxy_track_t *t, const u_char *p, size_t n)
{
    const u_char  *s = p, *end = p + n, *lf, *cr, *skip;

    while (p < end && t->state == SG_TRACK_DATA) {
        switch (t->dstate) {
        case SG_TRACK_D_MID:
            skip = sg_proxy_track_skip(p, end, &t->dstate);
            if (skip != p) {
                p = skip;
                break;
            }
            /* the next LF must come right after the next CR */
            lf = memchr(p, '\n', (size_t) (end - p));
            cr = memchr(p, '\r', (size_t) ((lf ? lf : end) - p));
            if (cr == NULL) {
                if (lf && t->strict) {
                    t->ins = '\r';            /* the LF follows it */
                    t->dstate = SG_TRACK_D_CR;
                    return (size_t) (lf - s);
                }
                if (lf) {
                    sg_proxy_track_off(t, "a bare LF in the message");
                    return (size_t) (lf - s);
                }
                return n;
            }
            p = cr + 1;
            t->dstate = SG_TRACK_D_CR;
            break;
        case SG_TRACK_D_CR:
            if (*p != '\n' && t->strict) {
                t->ins = '\n';                /* the line ends there */
                t->dstate = SG_TRACK_D_BOL;
                return (size_t) (p - s);
            }
            if (*p++ != '\n') {
                sg_proxy_track_off(t, "a bare CR in the message");
                return (size_t) (p - 1 - s);
            }
            t->dstate = SG_TRACK_D_BOL;
            break;
        case SG_TRACK_D_BOL:
            /* any other byte is read again as inside a line */
            if (*p == '.') {
                t->dstate = SG_TRACK_D_DOT;
                p++;
            } else {
                t->dstate = SG_TRACK_D_MID;
            }
            break;
        case SG_TRACK_D_DOT:
            if (*p == '\n' && t->strict) {
                t->ins = '\r';                /* "." CR LF: the end */
                t->dstate = SG_TRACK_D_DOTCR;
                return (size_t) (p - s);
            }
            if (*p == '\r') {
                t->dstate = SG_TRACK_D_DOTCR;
                p++;
            } else {
                t->dstate = SG_TRACK_D_MID;
            }
            break;
        case SG_TRACK_D_DOTCR:
            if (*p != '\n' && !t->strict) {
                sg_proxy_track_off(t, "a bare CR in the message");
                return (size_t) (p - s);
            }
            if (*p != '\n') {
                t->ins = '\n';                /* "." CR LF: the end */
            } else {
                p++;
            }
            sg_proxy_track_sent(t);  /* the message's own reply */
            t->end_at = t->sent;
            t->state = SG_TRACK_CMD;
            if (t->ins) {
                return (size_t) (p - s);
            }
            break;
        }
    }
    return (size_t) (p - s);
}

/* Strict: a command line refused here, [p, p + len) with its LF. */
static size_t
sg_proxy_track_refuse(sg_proxy_track_t *t, unsigned reply, size_t len)
{
    t->reply = reply;
    t->drop = len;
    return 0;
}

/* A command line waiting for its LF, [p, end): SG_OK to wait for more;
 * otherwise it is too long: tracking ends, or (strict) it is answered
 * and dropped through its LF. */
static int
sg_proxy_track_partial(sg_proxy_track_t *t, const u_char *p,
    const u_char *end, bool first, bool full)
{
    size_t  max = t->strict ? SG_PROXY_TRACK_STRICT_LINE_MAX
                            : SG_PROXY_TRACK_LINE_MAX;

    /* The longest line may wait here whole, CR and all, for its LF: the
     * same limit as for a complete one, however it is split.  A full
     * buffer with bytes before the line frees them first (strict). */
    if ((size_t) (end - p) <= max + 1 && !(full && (first || !t->strict))) {
        return SG_OK;
    }
    if (!t->strict) {
        sg_proxy_track_off(t, "a command line too long");
        return SG_ERROR;
    }
    (void) sg_proxy_track_refuse(t, SG_TRACK_R_LONG, (size_t) (end - p));
    t->state = SG_TRACK_SKIP;
    return SG_ERROR;
}

size_t
sg_proxy_track_client(sg_proxy_track_t *t, const u_char *p, size_t n,
    bool full)
{
    const u_char  *s = p, *end = p + n, *lf, *cr;
    size_t         k, len, max;

    while (p < end) {
        if (t->passlf) {
            t->passlf = 0;                   /* after the CR inserted */
            p++;
            continue;
        }
        switch (t->state) {
        case SG_TRACK_OFF:
            /* strict: the server's replies cannot be followed, and the
             * relay ends the session: nothing more passes */
            return t->strict ? (size_t) (p - s) : n;

        case SG_TRACK_WAIT_DATA:
        case SG_TRACK_QUIT:
            return (size_t) (p - s);

        case SG_TRACK_CHUNK:
            k = (size_t) sg_min((uint64_t) (end - p), t->skip);
            p += k;
            t->skip -= k;
            if (t->skip == 0) {
                t->state = SG_TRACK_CMD;
            }
            break;

        case SG_TRACK_DATA:
            p += sg_proxy_track_data(t, p, (size_t) (end - p));
            if (t->ins) {
                return (size_t) (p - s);
            }
            break;

        case SG_TRACK_SKIP:
            lf = memchr(p, '\n', (size_t) (end - p));
            t->drop = (size_t) ((lf ? lf + 1 : end) - p);
            if (lf) {
                t->state = SG_TRACK_CMD;
            }
            return (size_t) (p - s);

        default: /* SG_TRACK_CMD */
            if (t->strict && t->pending >= SG_PROXY_TRACK_PENDING_MAX) {
                return (size_t) (p - s);     /* until replies come */
            }
            max = t->strict ? SG_PROXY_TRACK_STRICT_LINE_MAX
                            : SG_PROXY_TRACK_LINE_MAX;
            lf = memchr(p, '\n', (size_t) (end - p));
            if (lf == NULL) {
                if (sg_proxy_track_partial(t, p, end, p == s, full)
                    == SG_OK)
                {
                    return (size_t) (p - s);
                }
                return t->strict ? (size_t) (p - s) : n;
            }
            len = (size_t) (lf - p);
            if (len > max + 1) {
                if (!t->strict) {
                    sg_proxy_track_off(t, "a command line too long");
                    return n;
                }
                return (size_t) (p - s)
                       + sg_proxy_track_refuse(t, SG_TRACK_R_LONG, len + 1);
            }
            if (len && lf[-1] == '\r') {
                len--;
            } else if (!t->strict) {
                sg_proxy_track_off(t, "a command line ending in a bare LF");
                return n;
            } else if (len > max) {
                return (size_t) (p - s)
                       + sg_proxy_track_refuse(t, SG_TRACK_R_LONG,
                                               len + 1);
            }
            cr = memchr(p, '\r', len);
            if (cr) {
                if (!t->strict) {
                    sg_proxy_track_off(t, "a bare CR in a command line");
                    return n;
                }
                return (size_t) (p - s)
                       + sg_proxy_track_refuse(t, SG_TRACK_R_BARE_CR,
                                               (size_t) (lf + 1 - p));
            }
            sg_proxy_track_command(t, p, len);
            if (t->reply) {
                t->drop = (size_t) (lf + 1 - p) + (size_t) t->drop_chunk;
                t->drop_chunk = 0;
                return (size_t) (p - s);
            }
            if (t->state == SG_TRACK_QUIT) {
                return (size_t) (p - s);
            }
            if (t->state == SG_TRACK_OFF) {
                return n;
            }
            if (lf == p || lf[-1] != '\r') {
                t->ins = '\r';              /* strict: a bare LF */
                t->passlf = 1;
                return (size_t) (lf - s);
            }
            p = lf + 1;
            break;
        }
    }
    return (size_t) (p - s);
}

/* The end of one reply line, rhead holding its first bytes. */
static void
sg_proxy_track_reply_line(sg_proxy_track_t *t)
{
    unsigned  code;
    size_t    i;

    if (t->rlen < 3) {
        sg_proxy_track_off(t, "a reply line too short");
        return;
    }
    for (i = 0; i < 3; i++) {
        if (t->rhead[i] < '0' || t->rhead[i] > '9') {
            sg_proxy_track_off(t, "a reply line without a code");
            return;
        }
    }
    if (t->rlen > 3 && t->rhead[3] == '-') {
        return;                               /* more lines follow */
    }
    if (t->rlen > 3 && t->rhead[3] != ' ') {
        sg_proxy_track_off(t, "a reply line it cannot read");
        return;
    }
    code = (unsigned) (t->rhead[0] - '0') * 100
           + (unsigned) (t->rhead[1] - '0') * 10
           + (unsigned) (t->rhead[2] - '0');
    if (t->pending == 0) {
        sg_proxy_track_off(t, "a reply to no command");
        return;
    }
    if (code == 421) {
        sg_proxy_track_off(t, "the server is closing the session (421)");
        return;
    }
    t->pending--;
    t->got++;
    if (code / 100 == 2 && (t->got == t->end_at || t->got == t->rset_at)) {
        t->clean_at = t->got;
    }
    if (code >= 400) {
        t->erred = 1;
    } else if (code / 100 == 2 && t->got == t->end_at) {
        t->erred = 0;                 /* Postfix forgets them here too */
        t->accepted++;
    }
    if (t->pending == 0 && t->data_due) {
        t->data_due = 0;
        if (t->state == SG_TRACK_WAIT_DATA) {
            t->state = code == 354 ? SG_TRACK_DATA : SG_TRACK_CMD;
            t->dstate = SG_TRACK_D_BOL;
        }
    }
}

void
sg_proxy_track_server(sg_proxy_track_t *t, const u_char *p, size_t n)
{
    const u_char  *end = p + n;
    u_char         ch;

    for ( ; p < end && t->state != SG_TRACK_OFF; p++) {
        ch = *p;
        if (t->rlen == 0 && t->pending == 0) {
            /* Known at its first byte: waiting for its end would let
             * the session end (our 221 glued to the half line) and the
             * connection be kept with the rest still to come. */
            sg_proxy_track_off(t, "a reply to no command");
            return;
        }
        if (ch == '\n') {
            if (!t->rcr) {
                sg_proxy_track_off(t, "a reply line ending in a bare LF");
                return;
            }
            t->rlen--;                        /* the CR */
            sg_proxy_track_reply_line(t);
            t->rlen = 0;
            t->rcr = 0;
            continue;
        }
        if (t->rcr) {
            sg_proxy_track_off(t, "a bare CR in a reply");
            return;
        }
        t->rcr = ch == '\r';
        if (t->rlen < sizeof(t->rhead)) {
            t->rhead[t->rlen] = ch;
        }
        if (t->rlen < 1000000) {
            t->rlen++;
        }
    }
}
