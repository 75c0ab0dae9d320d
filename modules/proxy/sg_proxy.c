/*
 * sg_proxy.c: relaying an authenticated session to a backend SMTP
 * server.
 *
 * Owns the backend connection of a session: connect with a timeout
 * (trying each address proxy_pass resolved to), read the greeting, EHLO,
 * XCLIENT when the backend offers it and "xclient on", EHLO again, then
 * tell the client 235 and copy bytes both ways through two bounded
 * buffers until either side closes or proxy_timeout passes.  Refuses to
 * answer 235 unless the backend completed the handshake: a backend that
 * cannot be reached or misbehaves gets the client a 451.
 */
#include "sg_smtp.h"
#if (SG_HAVE_SPOOL_MODULE)
#include "sg_spool.h"
#endif

#define SG_PROXY_HS_BUF     4096
#define SG_PROXY_XTEXT_MAX  (255 * 3)

typedef enum {
    SG_PROXY_CONNECT = 0,
    SG_PROXY_GREETING,
    SG_PROXY_EHLO,
    SG_PROXY_XCLIENT,
    SG_PROXY_XCLIENT_EHLO,
    SG_PROXY_MAIL,
    SG_PROXY_RELAY
} sg_proxy_state_e;

typedef struct {
    sg_url_t     *pass;
    sg_msec_t     connect_timeout;
    sg_msec_t     timeout;
    int           xclient;
    size_t        buffer_size;
    unsigned      seen_caps;    /* this worker's last backend EHLO */
#if (SG_HAVE_SPOOL_MODULE)
    sg_spool_t   *spool;        /* proxy_pass spool:DIR */
#endif
} sg_proxy_conf_t;

typedef struct {
    sg_smtp_session_t  *s;
    sg_proxy_conf_t    *conf;
    sg_connection_t    *up;
    const sg_addr_t    *peer;
    const sg_addr_t    *addrs;      /* the route, or proxy_pass's */
    size_t              naddrs;
    size_t              addr_index;
    sg_proxy_state_e    state;
    sg_buf_t            ubuf;       /* backend -> client */
    sg_buf_t            hbuf;       /* handshake commands to backend */
    unsigned            up_eof:1;
    unsigned            down_eof:1;
    unsigned            replay_rcpt:1;  /* smtp_auth none: RCPT next */
} sg_proxy_ctx_t;

static char *sg_proxy_pass(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_proxy_create_conf(sg_conf_t *cf);
static char *sg_proxy_merge_conf(sg_conf_t *cf, void *prev, void *conf);
static void sg_proxy_start(sg_smtp_session_t *s, void *conf);
static void sg_proxy_handshake_handler(sg_event_t *ev);
static void sg_proxy_relay_handler(sg_event_t *ev);

static const sg_conf_bounds_t  sg_proxy_timeout_bounds = { 1, 86400000LL };
static const sg_conf_bounds_t  sg_proxy_buffer_bounds = { 1024, 16777216 };

#define SG_SRV  (SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF)

static const sg_command_t  sg_proxy_commands[] = {
    { "proxy_pass", SG_SRV | SG_CONF_TAKE1, sg_proxy_pass,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "proxy_connect_timeout", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, connect_timeout), &sg_proxy_timeout_bounds },
    { "proxy_timeout", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, timeout),
      &sg_proxy_timeout_bounds },
    { "xclient", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, xclient), NULL },
    { "proxy_buffer", SG_SRV | SG_CONF_TAKE1, sg_conf_set_size_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, buffer_size),
      &sg_proxy_buffer_bounds },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_proxy_module_ctx = {
    NULL, NULL, sg_proxy_create_conf, sg_proxy_merge_conf, NULL
};

sg_module_t  sg_proxy_module = {
    .name = "proxy",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_proxy_module_ctx,
    .commands = sg_proxy_commands,
};

static unsigned
sg_proxy_caps(void *conf)
{
#if (SG_HAVE_SPOOL_MODULE)
    if (((sg_proxy_conf_t *) conf)->spool) {
        return SG_SMTP_CAP_CHUNKING;      /* the spool takes BDAT itself */
    }
#endif
    return ((sg_proxy_conf_t *) conf)->seen_caps;
}

static bool
sg_proxy_routed(void *conf)
{
#if (SG_HAVE_SPOOL_MODULE)
    if (((sg_proxy_conf_t *) conf)->spool) {
        return true;
    }
#endif
    return ((sg_proxy_conf_t *) conf)->pass != NULL;
}

static const sg_smtp_relay_t  sg_proxy_relay = {
    "proxy", sg_proxy_start, sg_proxy_caps, sg_proxy_routed
};

/* What the backend's EHLO promised of the extensions the front end only
 * advertises when the backend keeps them. */
static void
sg_proxy_learn_caps(sg_proxy_ctx_t *ctx, const sg_smtp_reply_t *r)
{
    unsigned  caps = 0;

    if (sg_smtp_ehlo_has(r, "CHUNKING", NULL)) {
        caps |= SG_SMTP_CAP_CHUNKING;
    }
    if (sg_smtp_ehlo_has(r, "DSN", NULL)) {
        caps |= SG_SMTP_CAP_DSN;
    }
    ctx->conf->seen_caps = caps;
}

/* Configuration. */

static char *
sg_proxy_pass(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_proxy_conf_t  *pcf = conf;
    sg_str_t         *value = cf->args->elts;
    sg_url_t         *u;

    (void) cmd;
    if (pcf->pass != SG_CONF_UNSET_PTR) {
        return sg_conf_duplicate(cf);
    }
#if (SG_HAVE_SPOOL_MODULE)
    if (value[1].len >= 6 && memcmp(value[1].data, "spool:", 6) == 0) {
        sg_str_t  dir = { value[1].len - 6, value[1].data + 6 };

        pcf->spool = sg_spool_create(cf, &dir);
        if (pcf->spool == NULL) {
            return SG_CONF_ERROR;
        }
        pcf->pass = NULL;
        return SG_CONF_OK;
    }
#endif
    u = sg_pcalloc(cf->pool, sizeof(sg_url_t));
    if (u == NULL) {
        return SG_CONF_ERROR;
    }
    u->url = value[1];
    u->default_port = 25;
    if (sg_parse_url(cf->pool, u) != SG_OK) {
        return sg_conf_error(cf, 0, "%s in \"%.*s\" of the \"proxy_pass\" "
                             "directive", u->err, SG_STR_ARG(&u->url));
    }
    pcf->pass = u;
    return SG_CONF_OK;
}

static void *
sg_proxy_create_conf(sg_conf_t *cf)
{
    sg_proxy_conf_t  *pcf;

    pcf = sg_pcalloc(cf->pool, sizeof(sg_proxy_conf_t));
    if (pcf == NULL) {
        return NULL;
    }
    pcf->pass = SG_CONF_UNSET_PTR;
    pcf->connect_timeout = SG_CONF_UNSET_MSEC;
    pcf->timeout = SG_CONF_UNSET_MSEC;
    pcf->xclient = SG_CONF_UNSET;
    pcf->buffer_size = SG_CONF_UNSET_SIZE;
    return pcf;
}

static char *
sg_proxy_merge_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_proxy_conf_t     *prev = parent, *conf = child;
    sg_smtp_srv_conf_t  *sscf;

#if (SG_HAVE_SPOOL_MODULE)
    if (conf->pass == SG_CONF_UNSET_PTR) {
        conf->spool = prev->spool;
    }
#endif
    sg_conf_merge_ptr(conf->pass, prev->pass, NULL);
    sg_conf_merge_msec(conf->connect_timeout, prev->connect_timeout, 10000);
    sg_conf_merge_msec(conf->timeout, prev->timeout, 600000);
    sg_conf_merge_value(conf->xclient, prev->xclient, 1);
    sg_conf_merge_size(conf->buffer_size, prev->buffer_size, 16384);
    /* Registered even without proxy_pass: an authentication service may
     * name the backend for each session (Auth-Server, Auth-Port). */
    sscf = sg_smtp_conf_current(cf);
    sscf->relay = &sg_proxy_relay;
    sscf->relay_conf = conf;
    return SG_CONF_OK;
}

/* The handshake. */

static void
sg_proxy_cleanup(void *data)
{
    sg_proxy_ctx_t  *ctx = data;

    if (ctx->up) {
        sg_close_connection(ctx->up);
        ctx->up = NULL;
    }
}

static void sg_proxy_connect(sg_proxy_ctx_t *ctx);
static const char *sg_proxy_state_name(sg_proxy_state_e st);

/* This attempt failed: try the next address, else give up with 451. */
static void
sg_proxy_fail(sg_proxy_ctx_t *ctx, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
sg_proxy_fail(sg_proxy_ctx_t *ctx, int err, const char *fmt, ...)
{
    char     msg[512];
    va_list  args;

    va_start(args, fmt);
    vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);
    sg_log_error(SG_LOG_ERR, ctx->s->log, err, "backend %.*s: %s",
                 SG_STR_ARG(&ctx->peer->name), msg);
    sg_proxy_cleanup(ctx);
    if (++ctx->addr_index < ctx->naddrs) {
        sg_proxy_connect(ctx);
        return;
    }
    if (ctx->conf->pass == NULL || ctx->addrs != ctx->conf->pass->addrs) {
        sg_log_error(SG_LOG_ERR, ctx->s->log, 0, "no backend available "
                     "at %.*s%s (named by the authentication service), "
                     "answering 451", SG_STR_ARG(&ctx->addrs->name),
                     ctx->naddrs > 1 ? " and its other addresses" : "");
    } else {
        sg_log_error(SG_LOG_ERR, ctx->s->log, 0, "no backend available "
                     "for \"%.*s\", answering 451: check that the backend "
                     "server is running and reachable, and the "
                     "\"proxy_pass\" directive",
                     SG_STR_ARG(&ctx->conf->pass->url));
    }
    sg_smtp_relay_failed(ctx->s);
}

static void
sg_proxy_connect(sg_proxy_ctx_t *ctx)
{
    sg_connection_t  *up;
    int               rc;

    ctx->peer = &ctx->addrs[ctx->addr_index];
    ctx->state = SG_PROXY_CONNECT;
    sg_buf_reset(&ctx->ubuf);
    sg_buf_reset(&ctx->hbuf);
    sg_log_debug(ctx->s->log, "connecting to backend %.*s",
                 SG_STR_ARG(&ctx->peer->name));
    rc = sg_connect(ctx->peer, ctx->s->log, &up);
    if (rc == SG_ERROR) {
        /* sg_connect logged the system error */
        sg_proxy_fail(ctx, 0, "connect failed");
        return;
    }
    ctx->up = up;
    up->data = ctx;
    up->pool = ctx->s->pool;
    up->read->handler = sg_proxy_handshake_handler;
    up->write->handler = sg_proxy_handshake_handler;
    sg_event_add_timer(up->write, ctx->conf->connect_timeout);
    if (rc == SG_OK) {
        sg_proxy_handshake_handler(up->write);
    }
}

static void
sg_proxy_start(sg_smtp_session_t *s, void *conf)
{
    sg_proxy_ctx_t  *ctx;

#if (SG_HAVE_SPOOL_MODULE)
    /* proxy_pass spool:DIR, unless the authentication service named a
     * backend for this session. */
    if (((sg_proxy_conf_t *) conf)->spool
        && (s->auth == NULL
            || (s->auth->route_addr == NULL && s->auth->route.len == 0)))
    {
        sg_spool_start(s, ((sg_proxy_conf_t *) conf)->spool);
        return;
    }
#endif
    ctx = sg_pcalloc(s->pool, sizeof(sg_proxy_ctx_t));
    if (ctx == NULL
        || sg_buf_init(s->pool, &ctx->hbuf, SG_PROXY_HS_BUF) != SG_OK
        || sg_buf_init(s->pool, &ctx->ubuf,
                       ((sg_proxy_conf_t *) conf)->buffer_size) != SG_OK
        || sg_pool_cleanup_add(s->pool, sg_proxy_cleanup, ctx) != SG_OK)
    {
        sg_smtp_relay_failed(s);
        return;
    }
    ctx->s = s;
    ctx->conf = conf;
    s->relay_ctx = ctx;
    if (s->auth && s->auth->route.len) {
        sg_log_error(SG_LOG_ERR, s->log, 0, "the authentication service "
                     "named the upstream group \"%.*s\" (Auth-Upstream), "
                     "but this build has no upstream groups",
                     SG_STR_ARG(&s->auth->route));
        sg_smtp_relay_failed(s);
        return;
    }
    if (s->auth && s->auth->route_addr) {
        ctx->addrs = s->auth->route_addr;     /* Auth-Server, Auth-Port */
        ctx->naddrs = s->auth->route_naddrs ? s->auth->route_naddrs : 1;
    } else if (ctx->conf->pass) {
        ctx->addrs = ctx->conf->pass->addrs;
        ctx->naddrs = ctx->conf->pass->naddrs;
    } else {
        sg_log_error(SG_LOG_ERR, s->log, 0, "no backend for this session: "
                     "the authentication service named none (Auth-Server) "
                     "and \"proxy_pass\" is not set");
        sg_smtp_relay_failed(s);
        return;
    }
    sg_proxy_connect(ctx);
}

static int
sg_proxy_send(sg_proxy_ctx_t *ctx)
{
    ssize_t  n;

    while (sg_buf_size(&ctx->hbuf)) {
        n = ctx->up->send(ctx->up, ctx->hbuf.pos, sg_buf_size(&ctx->hbuf));
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n < 0) {
            return SG_ERROR;
        }
        ctx->hbuf.pos += n;
    }
    sg_buf_reset(&ctx->hbuf);
    return SG_OK;
}

static int
sg_proxy_line(sg_proxy_ctx_t *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
sg_proxy_line(sg_proxy_ctx_t *ctx, const char *fmt, ...)
{
    u_char   *p, *last = ctx->hbuf.end - 2;
    va_list   args;

    sg_buf_compact(&ctx->hbuf);
    va_start(args, fmt);
    p = sg_vslprintf(ctx->hbuf.last, last, fmt, args);
    va_end(args);
    sg_log_debug(ctx->s->log, "to backend: %.*s",
                 (int) (p - ctx->hbuf.last), (char *) ctx->hbuf.last);
    *p++ = '\r';
    *p++ = '\n';
    ctx->hbuf.last = p;
    if (sg_proxy_send(ctx) == SG_ERROR) {
        sg_proxy_fail(ctx, 0, "send() failed during %s",
                      sg_proxy_state_name(ctx->state));
        return SG_ABORT;
    }
    return SG_OK;
}

static bool
sg_proxy_has_word(const sg_str_t *list, const char *word)
{
    const u_char  *p = list->data, *end = list->data + list->len, *w;
    size_t         n = strlen(word);

    while (p < end) {
        while (p < end && *p == ' ') {
            p++;
        }
        w = p;
        while (p < end && *p != ' ') {
            p++;
        }
        if ((size_t) (p - w) == n && sg_strncasecmp(w, (u_char *) word, n)
                                     == 0)
        {
            return true;
        }
    }
    return false;
}

/* "XCLIENT ADDR=... PORT=... LOGIN=... NAME=... HELO=... PROTO=ESMTP"
 * with only the attributes the backend listed, values in xtext. */
static int
sg_proxy_xclient(sg_proxy_ctx_t *ctx, const sg_str_t *attrs)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;
    u_char              line[2048], *p = line, *last = line + sizeof(line);
    u_char              x[SG_PROXY_XTEXT_MAX];
    sg_str_t            v;

    p = sg_slprintf(p, last, "XCLIENT");
    if (sg_proxy_has_word(attrs, "ADDR")) {
        p = sg_slprintf(p, last, " ADDR=%s%.*s",
                        c->sockaddr.ss_family == AF_INET6 ? "IPV6:" : "",
                        SG_STR_ARG(&c->addr_text));
    }
    if (sg_proxy_has_word(attrs, "PORT")) {
        p = sg_slprintf(p, last, " PORT=%d",
                        sg_sockaddr_port((struct sockaddr *) &c->sockaddr));
    }
    if (sg_proxy_has_word(attrs, "LOGIN") && s->login.len) {
        v.len = sg_smtp_xtext_encode(x, &s->login);
        p = sg_slprintf(p, last, " LOGIN=%.*s", (int) v.len, (char *) x);
    }
    if (sg_proxy_has_word(attrs, "NAME")) {
        p = sg_slprintf(p, last, " NAME=[UNAVAILABLE]");
    }
    if (sg_proxy_has_word(attrs, "HELO") && s->helo.len) {
        v.len = sg_smtp_xtext_encode(x, &s->helo);
        p = sg_slprintf(p, last, " HELO=%.*s", (int) v.len, (char *) x);
    }
    if (sg_proxy_has_word(attrs, "PROTO")) {
        p = sg_slprintf(p, last, " PROTO=%s", s->esmtp ? "ESMTP" : "SMTP");
    }
    if (p == line + sizeof("XCLIENT") - 1) {
        return SG_DECLINED;           /* no attribute we could send */
    }
    return sg_proxy_line(ctx, "%.*s", (int) (p - line), (char *) line);
}

static void sg_proxy_relay_start(sg_proxy_ctx_t *ctx);

/* The backend is ready for the client; an anonymous session (smtp_auth
 * none) first replays the MAIL the client already sent us. */
static int
sg_proxy_handshake_done(sg_proxy_ctx_t *ctx)
{
    if (ctx->s->mail_line.len == 0) {
        return SG_DONE;
    }
    ctx->state = SG_PROXY_MAIL;
    return sg_proxy_line(ctx, "%.*s", SG_STR_ARG(&ctx->s->mail_line));
}

/* One complete reply from the backend during the handshake. */
static int
sg_proxy_on_reply(sg_proxy_ctx_t *ctx, const sg_smtp_reply_t *r)
{
    sg_str_t  attrs;
    int       rc;

    switch (ctx->state) {
    case SG_PROXY_GREETING:
        if (r->code != 220) {
            return SG_ERROR;
        }
        ctx->state = SG_PROXY_EHLO;
        return sg_proxy_line(ctx, "EHLO %.*s",
                             SG_STR_ARG(&ctx->s->conf->server_name));
    case SG_PROXY_EHLO:
        if (r->code != 250) {
            return SG_ERROR;
        }
        sg_proxy_learn_caps(ctx, r);
        if (ctx->conf->xclient) {
            if (sg_smtp_ehlo_has(r, "XCLIENT", &attrs)) {
                ctx->state = SG_PROXY_XCLIENT;
                rc = sg_proxy_xclient(ctx, &attrs);
                return rc == SG_DECLINED ? sg_proxy_handshake_done(ctx) : rc;
            }
            sg_log_error(SG_LOG_INFO, ctx->s->log, 0, "backend %.*s does "
                         "not offer XCLIENT, relaying without it",
                         SG_STR_ARG(&ctx->peer->name));
        }
        return sg_proxy_handshake_done(ctx);
    case SG_PROXY_XCLIENT:
        if (r->code / 100 != 2) {
            return SG_ERROR;
        }
        ctx->state = SG_PROXY_XCLIENT_EHLO;
        return sg_proxy_line(ctx, "%s %.*s", ctx->s->esmtp ? "EHLO" : "HELO",
                             SG_STR_ARG(&ctx->s->helo));
    case SG_PROXY_XCLIENT_EHLO:
        if (r->code != 250) {
            return SG_ERROR;
        }
        sg_proxy_learn_caps(ctx, r);
        return sg_proxy_handshake_done(ctx);
    case SG_PROXY_MAIL:
        /* The client already heard 250 for its MAIL: a refusal now is
         * its answer to RCPT, and the RCPT is not sent. */
        if (r->code / 100 == 2) {
            ctx->replay_rcpt = 1;
        } else if (sg_buf_append(&ctx->s->out, r->start, r->len) != SG_OK) {
            return SG_ERROR;
        }
        return SG_DONE;
    default:
        return SG_ERROR;
    }
}

static const char *
sg_proxy_state_name(sg_proxy_state_e st)
{
    static const char *names[] = { "connect", "greeting", "EHLO", "XCLIENT",
                                   "EHLO after XCLIENT", "MAIL", "relay" };

    return names[st];
}

/* Read and act on backend replies; SG_AGAIN, SG_DONE or SG_ERROR. */
static int
sg_proxy_read_replies(sg_proxy_ctx_t *ctx)
{
    sg_connection_t  *up = ctx->up;
    sg_smtp_reply_t   r;
    ssize_t           n;
    int               rc;

    for ( ;; ) {
        rc = sg_smtp_parse_reply(ctx->ubuf.pos, ctx->ubuf.last,
                                 sg_buf_cap(&ctx->ubuf), &r);
        if (rc == SG_OK) {
            ctx->ubuf.pos += r.len;
            sg_log_debug(ctx->s->log, "backend %s reply: %d %.*s",
                         sg_proxy_state_name(ctx->state), r.code,
                         SG_STR_ARG(&r.text));
            rc = sg_proxy_on_reply(ctx, &r);
            if (rc == SG_ERROR) {
                sg_proxy_fail(ctx, 0, "unexpected %s reply \"%d %.*s\"",
                              sg_proxy_state_name(ctx->state), r.code,
                              (int) sg_min(r.text.len, 200),
                              (char *) r.text.data);
                return SG_ABORT;
            }
            if (rc != SG_OK && rc != SG_AGAIN) {
                return rc;
            }
            continue;
        }
        if (rc == SG_ERROR) {
            sg_proxy_fail(ctx, 0, "invalid reply during %s",
                          sg_proxy_state_name(ctx->state));
            return SG_ABORT;
        }
        if (ctx->ubuf.pos == ctx->ubuf.last) {
            sg_buf_reset(&ctx->ubuf);
        }
        sg_buf_compact(&ctx->ubuf);
        if (!up->read->ready) {
            return SG_AGAIN;
        }
        n = up->recv(up, ctx->ubuf.last, sg_buf_free(&ctx->ubuf));
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n <= 0) {
            sg_proxy_fail(ctx, 0,
                          "connection %s during %s",
                          n ? "failed" : "closed",
                          sg_proxy_state_name(ctx->state));
            return SG_ABORT;
        }
        ctx->ubuf.last += n;
    }
}

static void
sg_proxy_handshake_handler(sg_event_t *ev)
{
    sg_connection_t  *up = ev->data;
    sg_proxy_ctx_t   *ctx = up->data;
    int               rc, err;

    if (ev->timedout) {
        sg_proxy_fail(ctx, 0, "timed out during %s (proxy_connect_timeout)",
                      sg_proxy_state_name(ctx->state));
        return;
    }
    if (ctx->state == SG_PROXY_CONNECT) {
        if (!up->write->ready) {
            return;
        }
        if (sg_connect_result(up, &err) != SG_OK) {
            sg_proxy_fail(ctx, err, "connect() failed");
            return;
        }
        sg_event_del_timer(up->write);
        ctx->state = SG_PROXY_GREETING;
        sg_event_add_timer(up->read, ctx->conf->connect_timeout);
    }
    if (sg_proxy_send(ctx) == SG_ERROR) {
        sg_proxy_fail(ctx, errno, "send() failed during %s",
                      sg_proxy_state_name(ctx->state));
        return;
    }
    rc = sg_proxy_read_replies(ctx);
    if (rc == SG_DONE) {
        sg_event_del_timer(up->read);
        sg_proxy_relay_start(ctx);
    } else if (rc == SG_AGAIN) {
        sg_event_add_timer(up->read, ctx->conf->connect_timeout);
    }
}

/* The relay. */

static int
sg_proxy_prepend(sg_buf_t *b, const sg_str_t *line)
{
    size_t  pending = sg_buf_size(b), n = line->len + 2;

    if (pending + n > sg_buf_cap(b)) {
        return SG_ERROR;
    }
    memmove(b->start + n, b->pos, pending);
    memcpy(b->start, line->data, line->len);
    b->start[line->len] = '\r';
    b->start[line->len + 1] = '\n';
    b->pos = b->start;
    b->last = b->start + n + pending;
    return SG_OK;
}

static void
sg_proxy_relay_start(sg_proxy_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;

    sg_log_debug(s->log, "backend %.*s ready", SG_STR_ARG(&ctx->peer->name));
    sg_smtp_relay_ready(s);
    ctx->state = SG_PROXY_RELAY;

    /* Replies not yet written to the client, the 235 last, go first. */
    sg_buf_reset(&ctx->ubuf);
    if (sg_buf_append(&ctx->ubuf, s->out.pos, sg_buf_size(&s->out))
        != SG_OK)
    {
        sg_log_error(SG_LOG_ALERT, s->log, 0, "proxy_buffer is smaller than "
                     "the pending replies");
        sg_smtp_close_session(s);
        return;
    }
    sg_buf_reset(&s->out);
    (void) sg_tcp_nodelay(ctx->up);

    /* The replayed RCPT goes ahead of whatever the client pipelined
     * after it. */
    if (ctx->replay_rcpt
        && sg_proxy_prepend(&s->in, &s->rcpt_line) != SG_OK)
    {
        sg_log_error(SG_LOG_ERR, s->log, 0, "no room to replay RCPT: raise "
                     "\"smtp_client_buffer\"");
        sg_smtp_close_session(s);
        return;
    }

    /* From here both connections' data is the relay context. */
    c->data = ctx;
    c->read->handler = sg_proxy_relay_handler;
    c->write->handler = sg_proxy_relay_handler;
    ctx->up->read->handler = sg_proxy_relay_handler;
    ctx->up->write->handler = sg_proxy_relay_handler;
    sg_event_del_timer(c->write);
    sg_event_del_timer(ctx->up->write);
    sg_proxy_relay_handler(c->write);
}

/* Move bytes from src into b, and from b into dst, until neither can
 * make progress.  Returns SG_ERROR on an I/O error, else whether any
 * byte moved (SG_OK) or not (SG_AGAIN); *eof is set when src closed. */
static int
sg_proxy_pump(sg_connection_t *src, sg_connection_t *dst, sg_buf_t *b,
    unsigned *eof, bool *moved)
{
    ssize_t  n;

    for ( ;; ) {
        if (sg_buf_size(b) && dst->write->ready) {
            n = dst->send(dst, b->pos, sg_buf_size(b));
            if (n == SG_ERROR) {
                return SG_ERROR;
            }
            if (n > 0) {
                b->pos += n;
                *moved = true;
                continue;
            }
        }
        if (b->pos == b->last) {
            sg_buf_reset(b);
        } else if (sg_buf_free(b) == 0) {
            sg_buf_compact(b);
        }
        if (!*eof && sg_buf_free(b) && src->read->ready) {
            n = src->recv(src, b->last, sg_buf_free(b));
            if (n == SG_ERROR) {
                return SG_ERROR;
            }
            if (n == 0) {
                *eof = 1;
            } else if (n > 0) {
                b->last += n;
                *moved = true;
                continue;
            }
        }
        return SG_OK;
    }
}

static void
sg_proxy_relay_handler(sg_event_t *ev)
{
    sg_connection_t    *c = ev->data;
    sg_proxy_ctx_t     *ctx;
    sg_smtp_session_t  *s;
    unsigned            up_eof, down_eof;
    bool                moved = false;

    ctx = c->data;
    s = ctx->s;
    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "relay idle for longer than "
                     "proxy_timeout, closing");
        sg_smtp_close_session(s);
        return;
    }
    up_eof = ctx->up_eof;
    down_eof = ctx->down_eof;
    if (sg_proxy_pump(ctx->up, s->connection, &ctx->ubuf, &up_eof, &moved)
            == SG_ERROR
        || sg_proxy_pump(s->connection, ctx->up, &s->in, &down_eof, &moved)
            == SG_ERROR)
    {
        sg_log_error(SG_LOG_INFO, s->log, 0, "relay with backend %.*s "
                     "ended by an I/O error", SG_STR_ARG(&ctx->peer->name));
        sg_smtp_close_session(s);
        return;
    }
    ctx->up_eof = up_eof;
    ctx->down_eof = down_eof;
    if (ctx->up_eof && sg_buf_size(&ctx->ubuf) == 0) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "backend %.*s closed the "
                     "connection", SG_STR_ARG(&ctx->peer->name));
        sg_smtp_close_session(s);
        return;
    }
    if (ctx->down_eof && sg_buf_size(&s->in) == 0) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client closed the connection");
        sg_smtp_close_session(s);
        return;
    }
    if (moved || !sg_event_timer_set(s->connection->read)) {
        sg_event_add_timer(s->connection->read, ctx->conf->timeout);
    }
}
