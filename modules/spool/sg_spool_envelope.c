/*
 * sg_spool_envelope.c: the envelope at the head of a forwarding spool's
 * file, and the X-Smtpgate-Forward attributes in it (see
 * sg_spool_queue.h).
 *
 * Owns nothing: every result points into the caller's bytes and nothing
 * is allocated.  Refuses whatever the spool itself would not have
 * written: a bare CR or LF, a header out of its place, an empty
 * recipient, a second X-Smtpgate-Forward.  A line is judged as soon as
 * its name can be told apart, so garbage fails at once, while every
 * prefix of a good envelope asks for more (SG_AGAIN) until the caller
 * says the file is all there.
 */
#include "sg_spool_queue.h"

#define SG_ENV_RETURN_PATH  "Return-Path:"
#define SG_ENV_RCPT         "X-Original-To:"
#define SG_ENV_RECEIVED     "Received:"

#define SG_ENV_MATCH    1
#define SG_ENV_PARTIAL  0       /* the bytes end inside the name */
#define SG_ENV_NO      -1

typedef struct {
    const u_char         *p;
    size_t                len;
    sg_spool_envelope_t  *env;
    size_t                max_rcpts;
    bool                  forward;      /* X-Smtpgate-Forward seen */
    const char          **err;
} sg_spool_env_ctx_t;


static int
sg_spool_env_name(const u_char *p, size_t n, const char *name)
{
    size_t  len = strlen(name);

    if (n >= len) {
        return sg_strncasecmp(p, (const u_char *) name, len) == 0
               ? SG_ENV_MATCH : SG_ENV_NO;
    }
    return sg_strncasecmp(p, (const u_char *) name, n) == 0
           ? SG_ENV_PARTIAL : SG_ENV_NO;
}

static bool
sg_spool_env_wsp(u_char c)
{
    return c == ' ' || c == '\t';
}

/* The offset of the CR that ends the line at pos: SG_OK, SG_AGAIN when
 * the bytes stop first, SG_ERROR for a bare CR or LF on the way. */
static int
sg_spool_env_eol(sg_spool_env_ctx_t *ctx, size_t pos, size_t *eol)
{
    const u_char  *p = ctx->p;

    for (; pos < ctx->len; pos++) {
        if (p[pos] == '\n') {
            *ctx->err = "bare LF in the envelope";
            return SG_ERROR;
        }
        if (p[pos] != '\r') {
            continue;
        }
        if (pos + 1 == ctx->len) {
            return SG_AGAIN;
        }
        if (p[pos + 1] != '\n') {
            *ctx->err = "bare CR in the envelope";
            return SG_ERROR;
        }
        *eol = pos;
        return SG_OK;
    }
    return SG_AGAIN;
}

/* "Return-Path:", optional white space, "<", the address, and ">" as
 * the last byte of the line: the address may hold '>' itself. */
static int
sg_spool_env_return_path(sg_spool_env_ctx_t *ctx, size_t *pos)
{
    const u_char  *p = ctx->p;
    size_t         i, eol;
    int            rc;

    rc = sg_spool_env_name(p, ctx->len, SG_ENV_RETURN_PATH);
    if (rc != SG_ENV_MATCH) {
        *ctx->err = "no Return-Path line";
        return rc == SG_ENV_PARTIAL ? SG_AGAIN : SG_ERROR;
    }
    rc = sg_spool_env_eol(ctx, 0, &eol);
    if (rc != SG_OK) {
        return rc;
    }
    i = sizeof(SG_ENV_RETURN_PATH) - 1;
    while (i < eol && sg_spool_env_wsp(p[i])) {
        i++;
    }
    if (i == eol || p[i] != '<' || p[eol - 1] != '>') {
        *ctx->err = "bad Return-Path line";
        return SG_ERROR;
    }
    ctx->env->sender.data = (u_char *) p + i + 1;
    ctx->env->sender.len = eol - 1 - (i + 1);
    *pos = eol + 2;
    return SG_OK;
}

static int
sg_spool_env_rcpt(sg_spool_env_ctx_t *ctx, size_t *pos)
{
    sg_spool_envelope_t  *env = ctx->env;
    size_t                i, eol;
    int                   rc;

    if (ctx->forward) {
        *ctx->err = "X-Original-To after X-Smtpgate-Forward";
        return SG_ERROR;
    }
    rc = sg_spool_env_eol(ctx, *pos, &eol);
    if (rc != SG_OK) {
        return rc;
    }
    i = *pos + sizeof(SG_ENV_RCPT) - 1;
    while (i < eol && sg_spool_env_wsp(ctx->p[i])) {
        i++;
    }
    if (i == eol) {
        *ctx->err = "empty X-Original-To";
        return SG_ERROR;
    }
    if (env->nrcpts == ctx->max_rcpts) {
        /* static: the caller knows its own limit */
        *ctx->err = "more recipients than the limit";
        return SG_ERROR;
    }
    env->rcpts[env->nrcpts].data = (u_char *) ctx->p + i;
    env->rcpts[env->nrcpts].len = eol - i;
    env->nrcpts++;
    *pos = eol + 2;
    return SG_OK;
}

/* The value runs over continuation lines, so where it ends is known
 * only from the first byte of the line after: one more byte than the
 * header's own CRLF. */
static int
sg_spool_env_forward(sg_spool_env_ctx_t *ctx, size_t *pos)
{
    size_t  start, eol, next;
    int     rc;

    if (ctx->forward) {
        *ctx->err = "two X-Smtpgate-Forward headers";
        return SG_ERROR;
    }
    if (ctx->env->nrcpts == 0) {
        *ctx->err = "no X-Original-To line";
        return SG_ERROR;
    }
    start = *pos + sizeof(SG_SPOOL_FORWARD_HEADER) - 1;
    next = *pos;
    do {
        rc = sg_spool_env_eol(ctx, next, &eol);
        if (rc != SG_OK) {
            return rc;
        }
        next = eol + 2;
        if (next == ctx->len) {
            return SG_AGAIN;
        }
    } while (sg_spool_env_wsp(ctx->p[next]));

    ctx->forward = true;
    ctx->env->attrs.data = (u_char *) ctx->p + start;
    ctx->env->attrs.len = eol - start;
    *pos = next;
    return SG_OK;
}

/* One line after Return-Path: SG_OK, or SG_DONE at Received:. */
static int
sg_spool_env_line(sg_spool_env_ctx_t *ctx, size_t *pos)
{
    const u_char  *s = ctx->p + *pos;
    size_t         n = ctx->len - *pos;
    int            rcvd, rcpt, fwd;

    rcvd = sg_spool_env_name(s, n, SG_ENV_RECEIVED);
    rcpt = sg_spool_env_name(s, n, SG_ENV_RCPT);
    fwd = sg_spool_env_name(s, n, SG_SPOOL_FORWARD_HEADER);

    if (rcvd == SG_ENV_MATCH) {
        if (ctx->env->nrcpts == 0) {
            *ctx->err = "no X-Original-To line";
            return SG_ERROR;
        }
        ctx->env->body = *pos;
        return SG_DONE;
    }
    if (rcpt == SG_ENV_MATCH) {
        return sg_spool_env_rcpt(ctx, pos);
    }
    if (fwd == SG_ENV_MATCH) {
        return sg_spool_env_forward(ctx, pos);
    }
    if (n > 0 && sg_spool_env_wsp(s[0])) {
        /* the forward header takes its own continuation lines */
        *ctx->err = "continuation line out of place in the envelope";
        return SG_ERROR;
    }
    if (rcvd == SG_ENV_PARTIAL || rcpt == SG_ENV_PARTIAL
        || fwd == SG_ENV_PARTIAL)
    {
        return SG_AGAIN;
    }
    *ctx->err = "unexpected line in the envelope";
    return SG_ERROR;
}

int
sg_spool_envelope_parse(const u_char *p, size_t len, bool complete,
    sg_spool_envelope_t *env, size_t max_rcpts, const char **err)
{
    sg_spool_env_ctx_t  ctx;
    size_t              pos = 0;
    int                 rc;

    env->sender.len = 0;
    env->sender.data = NULL;
    env->nrcpts = 0;
    env->attrs.len = 0;
    env->attrs.data = NULL;
    env->body = 0;

    ctx.p = p;
    ctx.len = len;
    ctx.env = env;
    ctx.max_rcpts = max_rcpts;
    ctx.forward = false;
    ctx.err = err;

    rc = sg_spool_env_return_path(&ctx, &pos);
    while (rc == SG_OK) {
        rc = sg_spool_env_line(&ctx, &pos);
    }
    if (rc == SG_DONE) {
        return SG_OK;
    }
    if (rc == SG_AGAIN) {
        if (!complete) {
            return SG_AGAIN;
        }
        *err = "truncated envelope: no Received: line";
    }
    return SG_ERROR;
}


static bool
sg_spool_attr_sep(u_char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

bool
sg_spool_attr_next(const sg_str_t *attrs, size_t *pos, sg_str_t *name,
    sg_str_t *value)
{
    const u_char  *p = attrs->data;
    size_t         i = *pos, start, eq;

    while (i < attrs->len) {
        if (sg_spool_attr_sep(p[i])) {
            i++;
            continue;
        }
        start = i;
        eq = 0;
        while (i < attrs->len && !sg_spool_attr_sep(p[i])) {
            if (eq == 0 && p[i] == '=') {
                eq = i;
            }
            i++;
        }
        if (p[start] == '=') {
            continue;               /* no name: nothing to call it by */
        }
        *pos = i;
        name->data = (u_char *) p + start;
        if (eq == 0) {
            name->len = i - start;
            value->len = 0;
            value->data = NULL;
            return true;
        }
        name->len = eq - start;
        value->data = (u_char *) p + eq + 1;
        value->len = i - eq - 1;
        return true;
    }
    *pos = i;
    return false;
}

bool
sg_spool_attr_get(const sg_str_t *attrs, const char *name,
    sg_str_t *value)
{
    sg_str_t  n, v;
    size_t    pos = 0;

    while (sg_spool_attr_next(attrs, &pos, &n, &v)) {
        if (sg_str_caseeq(&n, name)) {
            *value = v;
            return true;
        }
    }
    return false;
}

size_t
sg_spool_name_id(const char *name, char *id, size_t size)
{
    const char  *dot;
    size_t       len, i, n = 0;

    if (size == 0) {
        return 0;
    }
    dot = strchr(name, '.');
    dot = dot ? strchr(dot + 1, '.') : NULL;
    len = dot ? (size_t) (dot - name) : strlen(name);
    for (i = 0; i < len && n < size - 1; i++) {
        if (name[i] != '.') {
            id[n++] = name[i];
        }
    }
    id[n] = '\0';
    return n;
}

time_t
sg_spool_name_arrival(const char *name, time_t fallback)
{
    time_t  t = 0;

    if (*name < '0' || *name > '9') {
        return fallback;
    }
    while (*name >= '0' && *name <= '9' && t < ((time_t) 1 << 40)) {
        t = t * 10 + (*name++ - '0');
    }
    return t > fallback ? fallback : t;
}
