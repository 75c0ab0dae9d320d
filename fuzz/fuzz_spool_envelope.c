/*
 * fuzz_spool_envelope.c: libFuzzer harness for the forwarding spool's
 * envelope reader, its attribute walker and the delivery status
 * notification.
 *
 * The input is read as the head of a spool file, complete and not,
 * from an exact-size heap copy, so that reading one byte too far
 * crashes.  Beyond the sanitizers it checks that the two readings agree
 * (the only difference allowed: "more" becomes "truncated"), that every
 * result points inside the envelope, that the result depends on nothing
 * past "Received:", and that the attribute walk stays inside and moves
 * on.  Then two notifications are composed, one from the envelope read
 * (when it was good) and one from the input cut into nine fields, and
 * each must keep what a receiving MTA relies on: CRLF line ends only,
 * no line over 998 octets, the boundary on exactly its four lines.
 * Last, the input as a file name: its queue id and arrival.
 */
#include "sg_core.h"
#include "sg_spool_queue.h"
#include "sg_fuzz.h"


#define SG_FUZZ_RCPTS  16

static bool
sg_fuzz_inside(const sg_str_t *s, const u_char *p, size_t n)
{
    return s->len == 0
           || (s->data >= p && s->len <= n
               && (size_t) (s->data - p) <= n - s->len);
}

static int
sg_fuzz_parse(const u_char *data, size_t n, bool complete, size_t max,
    sg_spool_envelope_t *env, const u_char **copy)
{
    const char  *err = NULL;
    u_char      *p;
    int          rc;

    p = sg_fuzz_copy(data, n);
    rc = sg_spool_envelope_parse(p, n, complete, env, max, &err);
    SG_FUZZ_ASSERT(rc == SG_OK || rc == SG_AGAIN || rc == SG_ERROR);
    SG_FUZZ_ASSERT(rc != SG_AGAIN || !complete);
    SG_FUZZ_ASSERT(rc != SG_ERROR || err != NULL);
    if (rc == SG_OK) {
        size_t  i;

        SG_FUZZ_ASSERT(env->body < n && env->body + 9 <= n);
        SG_FUZZ_ASSERT(sg_strncasecmp(p + env->body, (u_char *) "Received:",
                                      9) == 0);
        SG_FUZZ_ASSERT(env->nrcpts >= 1 && env->nrcpts <= max);
        SG_FUZZ_ASSERT(sg_fuzz_inside(&env->sender, p, env->body));
        SG_FUZZ_ASSERT(sg_fuzz_inside(&env->attrs, p, env->body));
        for (i = 0; i < env->nrcpts; i++) {
            SG_FUZZ_ASSERT(env->rcpts[i].len > 0);
            SG_FUZZ_ASSERT(sg_fuzz_inside(&env->rcpts[i], p, env->body));
        }
    }
    if (copy != NULL) {
        *copy = p;
    } else {
        free(p);
    }
    return rc;
}

static bool
sg_fuzz_sep(u_char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void
sg_fuzz_attrs(const sg_str_t *attrs)
{
    sg_str_t  name, value, got;
    size_t    pos = 0, last = 0, i;

    while (sg_spool_attr_next(attrs, &pos, &name, &value)) {
        SG_FUZZ_ASSERT(pos > last && pos <= attrs->len);
        SG_FUZZ_ASSERT(name.len > 0 && name.data[0] != '=');
        SG_FUZZ_ASSERT(sg_fuzz_inside(&name, attrs->data, attrs->len));
        SG_FUZZ_ASSERT(sg_fuzz_inside(&value, attrs->data, attrs->len));
        SG_FUZZ_ASSERT(value.len > 0 || value.data == NULL
                       || value.data == name.data + name.len + 1);
        for (i = 0; i < name.len; i++) {
            SG_FUZZ_ASSERT(!sg_fuzz_sep(name.data[i]) && name.data[i] != '=');
        }
        for (i = 0; i < value.len; i++) {
            SG_FUZZ_ASSERT(!sg_fuzz_sep(value.data[i]));
        }
        last = pos;
    }
    SG_FUZZ_ASSERT(pos >= attrs->len);

    /* the first word of a name is found again by its name */
    pos = 0;
    if (sg_spool_attr_next(attrs, &pos, &name, &value) && name.len < 64) {
        char  key[64];

        memcpy(key, name.data, name.len);
        key[name.len] = '\0';
        if (strlen(key) == name.len) {
            SG_FUZZ_ASSERT(sg_spool_attr_get(attrs, key, &got));
        }
    }
}

/* What every notification holds, whatever went in. */
static void
sg_fuzz_dsn_check(const u_char *p, size_t n)
{
    static const char   bp[] = "\tboundary=\"";
    size_t              i, start, len, opens = 0, closes = 0;
    sg_str_t            b = sg_null_string;
    const u_char       *q;

    SG_FUZZ_ASSERT(n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n');
    for (i = 0, start = 0; i < n; i++) {
        SG_FUZZ_ASSERT(p[i] != '\n');
        if (p[i] != '\r') {
            continue;
        }
        SG_FUZZ_ASSERT(i + 1 < n && p[i + 1] == '\n');
        len = i - start;
        SG_FUZZ_ASSERT(len <= 998);
        q = p + start;
        if (b.data == NULL && len > sizeof(bp)
            && memcmp(q, bp, sizeof(bp) - 1) == 0)
        {
            b.data = (u_char *) q + sizeof(bp) - 1;
            b.len = len - sizeof(bp);
            SG_FUZZ_ASSERT(q[len - 1] == '"' && b.len > 0 && b.len <= 70);
            SG_FUZZ_ASSERT(memchr(b.data, '"', b.len) == NULL);
        } else if (b.data != NULL && len >= 2 + b.len && q[0] == '-'
                   && q[1] == '-' && memcmp(q + 2, b.data, b.len) == 0)
        {
            if (len == 2 + b.len) {
                opens++;
            } else {
                /* only the very last line closes */
                SG_FUZZ_ASSERT(len == 4 + b.len && q[len - 1] == '-'
                               && q[len - 2] == '-' && i + 2 == n);
                closes++;
            }
        }
        i++;
        start = i + 1;
    }
    SG_FUZZ_ASSERT(b.data != NULL && opens == 3 && closes == 1);
}

static void
sg_fuzz_dsn(const sg_spool_dsn_t *d)
{
    u_char  *out;
    size_t   len = 0;

    out = sg_spool_dsn_compose(d, &len);
    SG_FUZZ_ASSERT(out != NULL);
    sg_fuzz_dsn_check(out, len);
    free(out);
}

/* The envelope as the forwarder would bounce it: each recipient with
 * the forward attributes as its reply. */
static void
sg_fuzz_dsn_envelope(const sg_spool_envelope_t *env, const u_char *p,
    size_t n)
{
    sg_spool_dsn_rcpt_t  r[SG_FUZZ_RCPTS];
    sg_spool_dsn_t       d;
    size_t               i;

    memset(&d, 0, sizeof(d));
    memset(r, 0, sizeof(r));
    for (i = 0; i < env->nrcpts; i++) {
        r[i].rcpt = env->rcpts[i];
        sg_str_set(&r[i].status, "5.1.1");
        if (i % 2) {
            r[i].reply = env->attrs;
            sg_str_set(&r[i].remote, "mx.example.net[192.0.2.25]");
        } else {
            sg_str_set(&r[i].text, "connection refused");
        }
    }
    sg_str_set(&d.host, "mx.example.org");
    sg_str_set(&d.queue_id, "4Hx2kQ0abc");
    sg_str_set(&d.dsn_id, "4Hx2kQ0abc.1");
    d.arrival = 1795881104;
    d.now = 1795884704;
    d.sender = env->sender;
    d.rcpts = r;
    d.nrcpts = env->nrcpts;
    d.message.data = (u_char *) p + env->body;
    d.message.len = n - env->body;
    sg_fuzz_dsn(&d);
}

/* The input cut into nine fields of about equal size, each in a heap
 * block of its own and exact size; the times from its first bytes. */
static void
sg_fuzz_dsn_pieces(const uint8_t *data, size_t size)
{
    sg_spool_dsn_rcpt_t  r[2];
    sg_spool_dsn_t       d;
    sg_str_t            *f[9];
    size_t               i, a, b;
    uint64_t             t = 0;

    memset(&d, 0, sizeof(d));
    memset(r, 0, sizeof(r));
    f[0] = &d.host;
    f[1] = &d.dsn_id;
    f[2] = &d.sender;
    f[3] = &r[0].rcpt;
    f[4] = &r[0].reply;
    f[5] = &r[0].remote;
    f[6] = &r[1].rcpt;
    f[7] = &r[1].text;
    f[8] = &d.message;
    for (i = 0; i < 9; i++) {
        a = size * i / 9;
        b = size * (i + 1) / 9;
        f[i]->len = b - a;
        f[i]->data = sg_fuzz_copy(data + a, b - a);
    }
    d.queue_id = r[1].text;
    r[0].status = r[0].remote;
    r[1].status = r[1].rcpt;
    for (i = 0; i < size && i < 8; i++) {
        t = t << 8 | data[i];
    }
    d.arrival = (time_t) t;
    d.now = (time_t) (t >> 3);
    d.rcpts = r;
    d.nrcpts = size % 3;
    sg_fuzz_dsn(&d);
    for (i = 0; i < 9; i++) {
        free(f[i]->data);
    }
}

/* The input as a file name: the queue id fits and has no dot, the
 * arrival is never after the fallback, and bounded. */
static void
sg_fuzz_name(const uint8_t *data, size_t size)
{
    char    *name, id[16];
    size_t   n;

    name = malloc(size + 1);
    SG_FUZZ_ASSERT(name != NULL);
    memcpy(name, data, size);
    name[size] = '\0';
    n = sg_spool_name_id(name, id, sizeof(id));
    SG_FUZZ_ASSERT(n < sizeof(id) && id[n] == '\0' && strlen(id) <= n);
    SG_FUZZ_ASSERT(memchr(id, '.', n) == NULL);
    SG_FUZZ_ASSERT(sg_spool_name_arrival(name, 1000) <= 1000);
    /* leading digits stop before they could overflow */
    SG_FUZZ_ASSERT(name[0] < '0' || name[0] > '9'
                   || sg_spool_name_arrival(name, (time_t) 1 << 60)
                      < ((time_t) 1 << 50));
    free(name);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_spool_envelope_t  env, env1;
    sg_str_t             rcpts[SG_FUZZ_RCPTS], rcpts1[SG_FUZZ_RCPTS], whole;
    const u_char        *p;
    int                  rc, again;

    env1.rcpts = rcpts1;
    env.rcpts = rcpts;
    again = sg_fuzz_parse(data, size, false, SG_FUZZ_RCPTS, &env, NULL);
    rc = sg_fuzz_parse(data, size, true, SG_FUZZ_RCPTS, &env, &p);
    SG_FUZZ_ASSERT(again == SG_AGAIN ? rc == SG_ERROR : rc == again);

    if (rc == SG_OK) {
        /* nothing after "Received:" matters, and the room counts */
        SG_FUZZ_ASSERT(sg_fuzz_parse(data, env.body + 9, false,
                                     SG_FUZZ_RCPTS, &env1, NULL) == SG_OK);
        rc = sg_fuzz_parse(data, size, true, 1, &env1, NULL);
        SG_FUZZ_ASSERT(rc == (env.nrcpts == 1 ? SG_OK : SG_ERROR));
        /* a cut one byte shorter asks for more */
        SG_FUZZ_ASSERT(sg_fuzz_parse(data, env.body + 8, false,
                                     SG_FUZZ_RCPTS, &env1, NULL)
                       == SG_AGAIN);
        sg_fuzz_attrs(&env.attrs);
        sg_fuzz_dsn_envelope(&env, p, size);
    }
    free((void *) p);

    whole.data = sg_fuzz_copy(data, size);
    whole.len = size;
    sg_fuzz_attrs(&whole);
    free(whole.data);

    sg_fuzz_dsn_pieces(data, size);
    sg_fuzz_name(data, size);
    return 0;
}
