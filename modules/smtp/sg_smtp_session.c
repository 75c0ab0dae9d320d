/*
 * sg_smtp_session.c: the client side of an SMTP session before relay.
 *
 * Owns the session: its input and output buffers, the command loop, the
 * timeouts, the error count, and closing.  Commands are read a line at a
 * time from a bounded buffer and dispatched through a verb table;
 * replies to pipelined commands are collected and written together.
 * Refuses to read past a line it cannot hold: an over-long line is
 * answered once and skipped to its LF so that the session stays in step.
 */
#include "sg_smtp.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif
#if (SG_HAVE_REALIP_MODULE)
#include "sg_realip.h"
#endif

/* Replies are at most SG_SMTP_REPLY_MAX bytes (the EHLO reply is
 * checked against it when the configuration loads), so flushing once
 * free room drops below that keeps every reply whole. */
#define SG_SMTP_OUT_SIZE    (2 * SG_SMTP_REPLY_MAX)
#define SG_SMTP_OUT_SLACK   SG_SMTP_REPLY_MAX
#define SG_SMTP_HELO_MAX    255

typedef int (*sg_smtp_handler_pt)(sg_smtp_session_t *s,
    const sg_smtp_cmd_t *cmd);

static void sg_smtp_read_handler(sg_event_t *ev);
static void sg_smtp_write_handler(sg_event_t *ev);
static void sg_smtp_tls_start(sg_smtp_session_t *s);
static void sg_smtp_greet(sg_smtp_session_t *s);
static bool sg_smtp_early_talker(sg_smtp_session_t *s);

const char *
sg_smtp_log_login(const sg_str_t *login)
{
    static const u_char  hex[] = "0123456789ABCDEF";
    static u_char        buf[SG_SMTP_LOGIN_MAX * 4 + 1];
    u_char              *p = buf, c;
    size_t               i;

    for (i = 0; i < login->len && i < SG_SMTP_LOGIN_MAX; i++) {
        c = login->data[i];
        if (c == '"' || c == '\\' || c == ',' || c < 0x20 || c >= 0x7f) {
            *p++ = '\\';
            *p++ = 'x';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0x0f];
        } else {
            *p++ = c;
        }
    }
    *p = '\0';
    return (const char *) buf;
}

static u_char *
sg_smtp_log_handler(sg_log_t *log, u_char *p, u_char *last)
{
    sg_smtp_session_t  *s = log->data;
    sg_connection_t    *c = s->connection;

    p = sg_slprintf(p, last, ", client: %.*s, server: %.*s",
                    SG_STR_ARG(&c->addr_text),
                    SG_STR_ARG(&c->listening->addr.name));
    if (s->login.len) {
        p = sg_slprintf(p, last, ", login: \"%s\"",
                        sg_smtp_log_login(&s->login));
    }
    return p;
}

/* Per-session buffers come from malloc, not the pool, so that an idle
 * session gives them back: an idle connection then costs its session
 * struct and nothing more. */
static void
sg_smtp_free_buffers(void *data)
{
    sg_smtp_session_t  *s = data;

    sg_buf_give(&s->in);
    sg_buf_give(&s->out);
}

int
sg_smtp_buffers(sg_smtp_session_t *s)
{
    if (sg_buf_take(&s->in, s->conf->client_buffer) != SG_OK
        || sg_buf_take(&s->out, SG_SMTP_OUT_SIZE) != SG_OK)
    {
        sg_log_error(SG_LOG_ALERT, s->log, 0, "out of memory for the "
                     "session's buffers");
        return SG_ERROR;
    }
    return SG_OK;
}

/* Waiting for the client with nothing buffered either way. */
static void
sg_smtp_idle_buffers(sg_smtp_session_t *s)
{
    if (s->in.pos == s->in.last && s->out.pos == s->out.last
        && !s->skipping)
    {
        sg_buf_give(&s->in);
        sg_buf_give(&s->out);
    }
}

/* The worker's open sessions, for sg_smtp_exit_process(). */
static sg_smtp_session_t  *sg_smtp_sessions;

void
sg_smtp_init_session(sg_connection_t *c)
{
    sg_smtp_addr_conf_t  *ac = c->listening->servers;
    sg_smtp_session_t    *s;
    unsigned              i;

    s = sg_pcalloc(c->pool, sizeof(sg_smtp_session_t));
    if (s == NULL) {
        goto fail;
    }
    s->connection = c;
    s->conf = ac->default_server;
    s->pool = c->pool;
    s->log = c->log;
    s->start = sg_current_msec;
    s->auth_time = -1;
    s->upstream_connect_time = -1;
    s->next = sg_smtp_sessions;
    if (sg_smtp_sessions) {
        sg_smtp_sessions->prev = s;
    }
    sg_smtp_sessions = s;
    c->data = s;
    c->log->handler = sg_smtp_log_handler;
    c->log->data = s;
    sg_smtp_session_log(s);

    /* The buffers are taken when there is something to hold and given
     * back whenever the session waits idle with both empty, and when it
     * closes (sg_smtp_close_session: no cleanup record for them, which
     * would cost every idle connection its bytes). */
    sg_log_error(SG_LOG_INFO, s->log, 0, "client connected");
    (void) sg_tcp_nodelay(c);
    for (i = 0; i < s->conf->nopen_hooks; i++) {
        s->conf->open_hooks[i].handler(s, s->conf->open_hooks[i].conf);
    }

#if (SG_HAVE_REALIP_MODULE)
    if (ac->proxy_protocol) {
        sg_realip_read_header(s);   /* then sg_smtp_start_session() */
        return;
    }
#endif
    sg_smtp_start_session(s);
    return;

fail:
    sg_close_connection(c);
    sg_pool_destroy(c->pool);
}

static void
sg_smtp_host_log(sg_smtp_session_t *s, const sg_resolve_host_t *h)
{
    if (h->status == SG_RESOLVE_OK) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client host name: %.*s",
                     (int) h->name_len, h->name);
        return;
    }
    sg_log_error(SG_LOG_INFO, s->log, 0, "client host name %s: %.*s%s%s",
                 h->status == SG_RESOLVE_TEMPFAIL ? "[TEMPUNAVAIL]"
                                                  : "[UNAVAILABLE]",
                 (int) h->name_len, h->name, h->name_len ? ": " : "",
                 h->why);
}

/* The lookup is over: log it, keep the name alone (a few dozen bytes
 * instead of the lookup's state) for the rest of the session. */
static void
sg_smtp_host_keep(sg_smtp_session_t *s, sg_resolve_host_t *h)
{
    u_char  *name = NULL;

    sg_smtp_host_log(s, h);
    s->host_status = h->status;
    if (h->status == SG_RESOLVE_OK) {
        name = malloc(h->name_len + 1);
        if (name == NULL) {
            s->host_status = SG_RESOLVE_NOTFOUND;
        } else {
            memcpy(name, h->name, h->name_len);
            name[h->name_len] = '\0';
        }
    }
    free(h);
    s->host = name;
}

static void
sg_smtp_host_done(sg_resolve_host_t *h)
{
    sg_smtp_session_t  *s = h->data;
    void              (*then)(sg_smtp_session_t *s) = s->host_then;

    s->host_pending = 0;
    s->host_then = NULL;
    sg_smtp_host_keep(s, h);
    if (then) {
        then(s);
    }
}

/* resolver: the lookup starts with the session and runs beside the
 * greeting, EHLO and TLS; only what sends the name on (the auth
 * request, XCLIENT) waits for it. */
static void
sg_smtp_host_lookup(sg_smtp_session_t *s)
{
    sg_connection_t    *c = s->connection;
    sg_resolve_host_t  *h;

    s->host_status = SG_RESOLVE_NOTFOUND;
    h = calloc(1, sizeof(sg_resolve_host_t));
    if (h == NULL) {
        return;                     /* the name stays [UNAVAILABLE] */
    }
    h->resolver = s->conf->resolver;
    memcpy(&h->addr, &c->sockaddr, sizeof(h->addr));
    h->timeout = s->conf->resolver_timeout;
    h->log = s->log;
    h->handler = sg_smtp_host_done;
    h->data = s;
    s->host = h;
    if (sg_resolve_host(h) == SG_AGAIN) {
        s->host_pending = 1;
        return;
    }
    sg_smtp_host_keep(s, h);
}

/* At the end of the session. */
static void
sg_smtp_host_free(sg_smtp_session_t *s)
{
    if (s->host_pending) {
        sg_resolve_host_cancel(s->host);
        s->host_pending = 0;
    }
    free(s->host);
    s->host = NULL;
}

void
sg_smtp_client_host(sg_smtp_session_t *s, sg_str_t *host)
{
    if (s->host_pending || s->host == NULL) {
        if (!s->host_pending && s->host_status == SG_RESOLVE_TEMPFAIL) {
            sg_str_set(host, "[TEMPUNAVAIL]");
        } else {
            sg_str_set(host, "[UNAVAILABLE]");
        }
        return;
    }
    host->data = s->host;           /* only a name found is kept */
    host->len = strlen((char *) s->host);
}

bool
sg_smtp_host_wait(sg_smtp_session_t *s, void (*then)(sg_smtp_session_t *s))
{
    if (!s->host_pending) {
        return false;
    }
    sg_log_debug(s->log, "waiting for the client's host name");
    s->state = SG_SMTP_ST_AUTH_WAIT;
    s->host_then = then;
    return true;
}

void
sg_smtp_start_session(sg_smtp_session_t *s)
{
    sg_connection_t      *c = s->connection;
    sg_smtp_addr_conf_t  *ac = c->listening->servers;
    unsigned              i;
    int                   rc;

    for (i = 0; i < s->conf->nchecks; i++) {
        rc = s->conf->checks[i].check(s, s->conf->checks[i].conf);
        if (rc == SG_OK) {
            continue;
        }
        sg_smtp_set_end(s, rc == SG_BUSY ? SG_SMTP_END_LIMITED
                                         : SG_SMTP_END_DENIED);
        if (ac->ssl) {
            sg_smtp_close_session(s);       /* no handshake to say it in */
            return;
        }
        if (rc == SG_BUSY) {
            if (sg_smtp_buffers(s) != SG_OK) {
                sg_smtp_close_session(s);
                return;
            }
            c->read->handler = sg_smtp_read_handler;
            c->write->handler = sg_smtp_write_handler;
            (void) sg_smtp_reply(s, "421 4.7.0 %.*s Too many sessions, try "
                                 "again later",
                                 SG_STR_ARG(&s->conf->server_name));
            s->quit = 1;
            sg_connection_last_words(c);
            sg_smtp_run(s);
            return;
        }
        s->denied = 1;
        break;
    }
    if (s->conf->resolver && !s->denied) {
        sg_smtp_host_lookup(s);
    }
    c->read->handler = sg_smtp_read_handler;
    c->write->handler = sg_smtp_write_handler;
    if (ac->ssl) {
        s->implicit_tls = 1;        /* greet once TLS is up */
        sg_smtp_tls_start(s);
        return;
    }
    sg_smtp_greet(s);
}

void
sg_smtp_close_session(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;
    sg_pool_t        *pool = s->pool;
    unsigned          i;

    if (s->status == NULL) {
        s->status = s->quit ? SG_SMTP_END_REFUSED
                    : sg_exiting ? SG_SMTP_END_SHUTDOWN : SG_SMTP_END_ERROR;
    }
    /* first: the host name, the TLS facts are still there */
    for (i = 0; i < s->conf->nclose_hooks; i++) {
        s->conf->close_hooks[i].handler(s, s->conf->close_hooks[i].conf);
    }
    if (s->prev) {
        s->prev->next = s->next;
    } else {
        sg_smtp_sessions = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
    sg_smtp_auth_cleanup(s);
    sg_smtp_del_timer(s);
    sg_smtp_host_free(s);
#if (SG_HAVE_SSL_MODULE)
    sg_ssl_shutdown(c);
    sg_ssl_free_connection(c);
#endif
    sg_log_error(SG_LOG_INFO, s->log, 0, "session closed, %llu bytes in, "
                 "%llu bytes out", (unsigned long long) c->received,
                 (unsigned long long) c->sent);
    sg_close_connection(c);
    sg_smtp_free_buffers(s);        /* no cleanup below touches them */
    sg_pool_destroy(pool);          /* runs the relay's cleanups too */
}

void
sg_smtp_exit_process(sg_cycle_t *cycle)
{
    sg_smtp_session_t  *s;
    sg_connection_t    *c;
    u_char              line[SG_SMTP_REPLY_MAX], *p;

    (void) cycle;
    while ((s = sg_smtp_sessions) != NULL) {
        c = s->connection;
        sg_smtp_set_end(s, SG_SMTP_END_SHUTDOWN);
        /* A word to a client waiting on the front end, when the socket
         * takes it now and no reply is half written; a relayed session's
         * bytes are the backend's, and TLS would need the handshake done:
         * those just close. */
        if (s->state != SG_SMTP_ST_RELAY && !sg_connection_tls(c)
            && sg_buf_size(&s->out) == 0 && !s->quit)
        {
            p = sg_slprintf(line, line + sizeof(line) - 2,
                            "421 4.3.2 %.*s Service shutting down",
                            SG_STR_ARG(&s->conf->server_name));
            *p++ = '\r';
            *p++ = '\n';
            (void) send(c->fd, line, (size_t) (p - line),
                        MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        sg_log_error(SG_LOG_INFO, s->log, 0, "closing the session: the "
                     "worker is exiting");
        sg_smtp_close_session(s);
    }
}

/* Replies. */

static int
sg_smtp_vreply(sg_smtp_session_t *s, const char *fmt, va_list args)
{
    u_char  line[SG_SMTP_REPLY_MAX], *p, *last = line + sizeof(line) - 2;

    if (sg_smtp_buffers(s) != SG_OK) {
        return SG_ERROR;
    }
    p = sg_vslprintf(line, last, fmt, args);
    *p++ = '\r';
    *p++ = '\n';
    if (sg_buf_append(&s->out, line, (size_t) (p - line)) != SG_OK) {
        /* Cannot happen while the loop flushes before the slack runs
         * out; refuse rather than truncate a reply. */
        sg_log_error(SG_LOG_ALERT, s->log, 0, "reply buffer full");
        s->quit = 1;
        return SG_ERROR;
    }
    return SG_OK;
}

int
sg_smtp_reply(sg_smtp_session_t *s, const char *fmt, ...)
{
    va_list  args;
    int      rc;

    va_start(args, fmt);
    rc = sg_smtp_vreply(s, fmt, args);
    va_end(args);
    return rc;
}

int
sg_smtp_error(sg_smtp_session_t *s, const char *fmt, ...)
{
    va_list  args;
    int      rc;

    va_start(args, fmt);
    rc = sg_smtp_vreply(s, fmt, args);
    va_end(args);
    if (++s->errors >= (unsigned) s->conf->max_errors) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client made %u errors, "
                     "closing (max_errors)", s->errors);
        (void) sg_smtp_reply(s, "421 4.7.0 Too many errors, closing "
                             "connection");
        s->quit = 1;
    }
    return rc;
}

/* Command handlers. */

int
sg_smtp_set_helo(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    size_t  i;

    if (cmd->args.len == 0 || cmd->args.len > SG_SMTP_HELO_MAX) {
        return sg_smtp_error(s, "501 5.5.4 Syntax: %s hostname",
                             cmd->verb == SG_SMTP_EHLO ? "EHLO" : "HELO")
               == SG_ERROR ? SG_ERROR : SG_DECLINED;
    }
    for (i = 0; i < cmd->args.len; i++) {
        if (cmd->args.data[i] <= 0x20 || cmd->args.data[i] >= 0x7f) {
            return sg_smtp_error(s, "501 5.5.4 Invalid domain name")
                   == SG_ERROR ? SG_ERROR : SG_DECLINED;
        }
    }
    if (s->helo.data == NULL) {
        s->helo.data = sg_pnalloc(s->pool, SG_SMTP_HELO_MAX);
        if (s->helo.data == NULL) {
            return SG_ERROR;
        }
    }
    memcpy(s->helo.data, cmd->args.data, cmd->args.len);
    s->helo.len = cmd->args.len;
    s->esmtp = cmd->verb == SG_SMTP_EHLO;
    return SG_OK;
}

static int
sg_smtp_helo(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    const sg_str_t  *reply;
    unsigned         caps, ext;
    int64_t          size;
    int              rc;

    rc = sg_smtp_set_helo(s, cmd);
    if (rc != SG_OK) {
        return rc == SG_ERROR ? SG_ERROR : SG_OK;
    }
    sg_smtp_forget_envelope(s);       /* EHLO resets a transaction */

    if (!s->esmtp) {
        return sg_buf_append(&s->out, s->conf->helo_reply.data,
                             s->conf->helo_reply.len);
    }
    /* smtp_capabilities auto: what every healthy backend offers. */
    if (s->conf->caps_auto && s->conf->relay->ext
        && s->conf->relay->ext(s->conf->relay_conf, &ext, &size))
    {
        return sg_smtp_ehlo_auto(s, ext, size);
    }
    /* CHUNKING and DSN only once the backends were seen to keep them. */
    caps = s->conf->relay->caps
           ? s->conf->relay->caps(s->conf->relay_conf) & (SG_SMTP_CAP_GATED - 1)
           : 0;
    reply = s->tls ? &s->conf->ehlo_reply_tls[caps]
                   : &s->conf->ehlo_reply[caps];
    return sg_buf_append(&s->out, reply->data, reply->len);
}

/* Copy a command line for replay to the backend (smtp_auth none). */
static int
sg_smtp_keep_line(sg_smtp_session_t *s, sg_str_t *dst, const char *verb,
    const sg_str_t *args)
{
    size_t  n = strlen(verb) + 1 + args->len;

    if (dst->data == NULL) {
        dst->data = sg_pnalloc(s->pool, SG_SMTP_CMD_LINE_MAX);
        if (dst->data == NULL) {
            return SG_ERROR;
        }
    }
    if (n > SG_SMTP_CMD_LINE_MAX - 2) {
        return SG_DECLINED;
    }
    dst->len = (size_t) (sg_slprintf(dst->data, dst->data
                                     + SG_SMTP_CMD_LINE_MAX, "%s %.*s", verb,
                                     SG_STR_ARG(args)) - dst->data);
    return SG_OK;
}

/* "FROM:<path> params" / "TO:<path> params": prefix, then a path in
 * angle brackets. */
static bool
sg_smtp_path_ok(const sg_str_t *args, const char *prefix)
{
    size_t    n = strlen(prefix);
    u_char   *p, *end = args->data + args->len;

    if (args->len <= n || sg_strncasecmp(args->data, (u_char *) prefix, n))
    {
        return false;
    }
    p = args->data + n;
    while (p < end && *p == ' ') {
        p++;
    }
    return p < end && *p == '<' && memchr(p, '>', (size_t) (end - p));
}

/* SIZE=n (RFC 1870) against the advertised limit. */
static bool
sg_smtp_size_ok(sg_smtp_session_t *s, const sg_str_t *args)
{
    u_char    *p, *end = args->data + args->len;
    sg_str_t   v;
    int64_t    n;

    if (s->conf->size_limit == 0) {
        return true;
    }
    for (p = args->data; p + 6 <= end; p++) {
        if (p[0] == ' ' && sg_strncasecmp(p + 1, (u_char *) "SIZE=", 5) == 0)
        {
            v.data = p + 6;
            v.len = 0;
            while (v.data + v.len < end && v.data[v.len] != ' ') {
                v.len++;
            }
            return sg_parse_int(&v, &n) != SG_OK || n <= s->conf->size_limit;
        }
    }
    return true;
}

/*
 * Before AUTH a transaction is refused, unless "smtp_auth none" lets
 * unauthenticated clients through: then MAIL is checked and kept, and
 * the first RCPT asks the auth backend (which sees sender and
 * recipient); the relay replays both to the backend.
 */
static int
sg_smtp_need_auth(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    int  rc;

    if (!(s->conf->auth_methods & SG_SMTP_AUTH_NONE)) {
        return sg_smtp_error(s, "530 5.7.0 Authentication required");
    }
    if (s->helo.len == 0) {
        return sg_smtp_error(s, "503 5.5.1 Send HELO/EHLO first");
    }
    switch (cmd->verb) {
    case SG_SMTP_MAIL:
        if (sg_smtp_has_mail(s)) {
            return sg_smtp_error(s, "503 5.5.1 Sender already specified");
        }
        if (!sg_smtp_path_ok(&cmd->args, "FROM:")) {
            return sg_smtp_error(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
        }
        if (!sg_smtp_size_ok(s, &cmd->args)) {
            return sg_smtp_error(s, "552 5.3.4 Message size exceeds fixed "
                                 "maximum message size");
        }
        if (sg_smtp_sasl(s) == NULL) {
            return SG_ERROR;
        }
        rc = sg_smtp_step(s, SG_SMTP_STEP_MAIL, &cmd->args);
        if (rc != SG_OK) {
            return sg_smtp_step_refuse(s, SG_SMTP_STEP_MAIL, rc);
        }
        if (sg_smtp_keep_line(s, &s->sasl->mail_line, "MAIL", &cmd->args)
            != SG_OK)
        {
            return sg_smtp_error(s, "500 5.5.6 Line too long");
        }
        return sg_smtp_reply(s, "250 2.1.0 OK");
    case SG_SMTP_RCPT:
        if (!sg_smtp_has_mail(s)) {
            return sg_smtp_error(s, "503 5.5.1 Need MAIL command first");
        }
        if (!sg_smtp_path_ok(&cmd->args, "TO:")) {
            return sg_smtp_error(s, "501 5.5.4 Syntax: RCPT TO:<address>");
        }
        if (sg_smtp_keep_line(s, &s->sasl->rcpt_line, "RCPT", &cmd->args)
            != SG_OK)
        {
            return sg_smtp_error(s, "500 5.5.6 Line too long");
        }
        return sg_smtp_auth_none(s);
    default:
        return sg_smtp_error(s, "503 5.5.1 Need %s command first",
                             sg_smtp_has_mail(s) ? "RCPT" : "MAIL");
    }
}

static int
sg_smtp_rset(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    sg_smtp_forget_envelope(s);
    return sg_smtp_reply(s, "250 2.0.0 OK");
}

static int
sg_smtp_ok(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_reply(s, "250 2.0.0 OK");
}

static int
sg_smtp_quit(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    s->quit = 1;
    sg_smtp_set_end(s, SG_SMTP_END_QUIT);
    sg_connection_last_words(s->connection);
    return sg_smtp_reply(s, "221 2.0.0 Bye");
}

static int
sg_smtp_help(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_reply(s, "214 2.0.0 Commands: EHLO HELO AUTH MAIL RCPT "
                         "DATA RSET NOOP QUIT HELP");
}

/* RFC 3207.  The 220 goes out first; the handshake starts once it is
 * written, and whatever the client sent after the command is dropped
 * (sg_smtp_tls_start), so nothing injected in plaintext survives. */
static int
sg_smtp_starttls(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
#if (SG_HAVE_SSL_MODULE)
    if (s->conf->starttls != SG_SSL_STARTTLS_OFF
        && sg_ssl_srv(s->conf)->ctx != NULL)
    {
        if (s->tls) {
            return sg_smtp_error(s, "503 5.5.1 TLS already active");
        }
        if (cmd->args.len) {
            return sg_smtp_error(s, "501 5.5.4 Syntax: STARTTLS");
        }
        s->starttls = 1;
        return sg_smtp_reply(s, "220 2.0.0 Ready to start TLS");
    }
#endif
    (void) cmd;
    return sg_smtp_error(s, "502 5.5.2 Command not implemented");
}

static int
sg_smtp_not_implemented(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_error(s, "502 5.5.2 Command not implemented");
}

static int
sg_smtp_unknown(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_error(s, "500 5.5.1 Command unrecognized");
}

static const sg_smtp_handler_pt  sg_smtp_handlers[SG_SMTP_VERB_COUNT] = {
    [SG_SMTP_UNKNOWN]  = sg_smtp_unknown,
    [SG_SMTP_HELO]     = sg_smtp_helo,
    [SG_SMTP_EHLO]     = sg_smtp_helo,
    [SG_SMTP_AUTH]     = sg_smtp_auth,
    [SG_SMTP_MAIL]     = sg_smtp_need_auth,
    [SG_SMTP_RCPT]     = sg_smtp_need_auth,
    [SG_SMTP_DATA]     = sg_smtp_need_auth,
    [SG_SMTP_BDAT]     = sg_smtp_need_auth,
    [SG_SMTP_RSET]     = sg_smtp_rset,
    [SG_SMTP_NOOP]     = sg_smtp_ok,
    [SG_SMTP_QUIT]     = sg_smtp_quit,
    [SG_SMTP_HELP]     = sg_smtp_help,
    [SG_SMTP_VRFY]     = sg_smtp_not_implemented,
    [SG_SMTP_EXPN]     = sg_smtp_not_implemented,
    [SG_SMTP_STARTTLS] = sg_smtp_starttls,
    [SG_SMTP_ETRN]     = sg_smtp_not_implemented,
    [SG_SMTP_TURN]     = sg_smtp_not_implemented,
    [SG_SMTP_ATRN]     = sg_smtp_not_implemented,
    [SG_SMTP_XCLIENT]  = sg_smtp_not_implemented,
    [SG_SMTP_XFORWARD] = sg_smtp_not_implemented,
};

/* Under "starttls only", what a client may say before TLS. */
static bool
sg_smtp_allowed_before_tls(sg_smtp_verb_e verb)
{
    switch (verb) {
    case SG_SMTP_EHLO:
    case SG_SMTP_HELO:
    case SG_SMTP_NOOP:
    case SG_SMTP_RSET:
    case SG_SMTP_QUIT:
    case SG_SMTP_STARTTLS:
        return true;
    default:
        return false;
    }
}

/* Debug log of a command: never AUTH arguments, and control characters
 * escaped so that a client cannot forge log lines. */
static void
sg_smtp_log_command(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd,
    const sg_str_t *line)
{
    u_char  buf[SG_SMTP_CMD_LINE_MAX * 4 + 8], *p = buf;
    size_t  i, n;

    if (cmd->verb == SG_SMTP_AUTH) {
        sg_log_debug(s->log, "client command: AUTH");
        return;
    }
    n = sg_min(line->len, SG_SMTP_CMD_LINE_MAX);
    for (i = 0; i < n; i++) {
        u_char ch = line->data[i];

        if (ch < 0x20 || ch >= 0x7f || ch == '\\') {
            p = sg_slprintf(p, buf + sizeof(buf), "\\x%02x", ch);
        } else {
            *p++ = ch;
        }
    }
    sg_log_debug(s->log, "client command: %.*s%s", (int) (p - buf),
                 (char *) buf, n < line->len ? "..." : "");
}

static int
sg_smtp_command(sg_smtp_session_t *s, const sg_str_t *line)
{
    sg_smtp_cmd_t  cmd;
    int            rc;

    if (sg_smtp_parse_command(line, &cmd) != SG_OK) {
        return sg_smtp_error(s, "500 5.5.1 Command unrecognized");
    }
    if (s->log->level >= SG_LOG_DEBUG) {
        sg_smtp_log_command(s, &cmd, line);
    }
    if (cmd.verb != SG_SMTP_AUTH && line->len + 2 > SG_SMTP_CMD_LINE_MAX) {
        return sg_smtp_error(s, "500 5.5.6 Line too long");
    }
    if (s->denied && cmd.verb != SG_SMTP_QUIT) {
        /* RFC 5321, 3.1: after a 554 greeting, only QUIT */
        return sg_smtp_error(s, "503 5.5.1 Bad sequence of commands: "
                             "access denied, send QUIT");
    }
    if (!s->tls && s->conf->starttls == SG_SMTP_STARTTLS_ONLY
        && !sg_smtp_allowed_before_tls(cmd.verb))
    {
        return sg_smtp_error(s, "530 5.7.0 Must issue a STARTTLS command "
                             "first");
    }
    rc = sg_smtp_handlers[cmd.verb](s, &cmd);
    if (cmd.verb == SG_SMTP_AUTH) {
        sg_wipe(line->data, line->len);      /* its initial response */
    }
    return rc;
}

/* Input. */

static int
sg_smtp_bad_line(sg_smtp_session_t *s, sg_smtp_line_e r)
{
    if (s->state != SG_SMTP_ST_COMMAND) {
        sg_smtp_auth_cleanup(s);
        s->state = SG_SMTP_ST_COMMAND;
    }
    switch (r) {
    case SG_SMTP_LINE_TOO_LONG:
        s->skipping = 1;
        return sg_smtp_error(s, "500 5.5.6 Line too long");
    case SG_SMTP_LINE_NUL:
        return sg_smtp_error(s, "500 5.5.2 NUL character not allowed");
    case SG_SMTP_LINE_BARE_LF:
        return sg_smtp_error(s, "500 5.5.2 Bare LF not allowed, use CRLF");
    default:
        return sg_smtp_error(s, "500 5.5.2 Bare CR not allowed");
    }
}

/* Handle one complete line from the input: SG_OK, or SG_AGAIN when no
 * complete line is buffered.  Lines that may carry credentials (AUTH
 * and the answers to its challenges; over-long lines, which could be
 * either) are wiped once handled: the buffer outlives the session. */
static int
sg_smtp_next_line(sg_smtp_session_t *s)
{
    sg_smtp_line_t  line;
    sg_smtp_line_e  r;
    size_t          consumed;
    int             rc;

    if (s->skipping) {
        bool found = sg_smtp_skip_line(s->in.pos, s->in.last, &consumed);

        sg_wipe(s->in.pos, consumed);
        s->in.pos += consumed;
        if (!found) {
            return SG_AGAIN;
        }
        s->skipping = 0;
    }
    r = sg_smtp_read_line(s->in.pos, s->in.last, sg_buf_cap(&s->in), &line);
    if (r == SG_SMTP_LINE_AGAIN) {
        return SG_AGAIN;
    }
    s->in.pos += line.consumed;
    if (r != SG_SMTP_LINE_OK) {
        if (s->state != SG_SMTP_ST_COMMAND || r == SG_SMTP_LINE_TOO_LONG) {
            sg_wipe(s->in.pos - line.consumed, line.consumed);
        }
        return sg_smtp_bad_line(s, r) == SG_ERROR ? SG_ERROR : SG_OK;
    }
    if (s->state == SG_SMTP_ST_COMMAND) {
        return sg_smtp_command(s, &line.line) == SG_ERROR ? SG_ERROR : SG_OK;
    }
    rc = sg_smtp_auth_response(s, &line.line);
    sg_wipe(line.line.data, line.line.len);
    return rc == SG_ERROR ? SG_ERROR : SG_OK;
}

/* Read what the socket has into the input buffer. */
int
sg_smtp_read(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;
    ssize_t           n;

    if (s->in.pos == s->in.last) {
        sg_buf_reset(&s->in);
    } else if (sg_buf_free(&s->in) == 0) {
        sg_buf_compact(&s->in);
    }
    if (sg_buf_free(&s->in) == 0) {
        return SG_OK;          /* a full line is waiting to be handled */
    }
    if (!c->read->ready) {
        return SG_AGAIN;
    }
    n = c->recv(c, s->in.last, sg_buf_free(&s->in));
    if (n > 0) {
        s->in.last += n;
        return SG_OK;
    }
    if (n == 0) {
        return SG_DONE;
    }
    if (n != SG_AGAIN && (errno == ECONNRESET || errno == EPIPE)) {
        sg_smtp_set_end(s, SG_SMTP_END_CLOSED);     /* reset by the client */
    }
    return n == SG_AGAIN ? SG_AGAIN : SG_ERROR;
}

int
sg_smtp_flush(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;
    ssize_t           n;
    bool              progress = false;

    while (sg_buf_size(&s->out)) {
        n = c->send(c, s->out.pos, sg_buf_size(&s->out));
        if (n == SG_AGAIN) {
            /* The deadline moves only when the client takes some of
             * the replies: a flush tried because more input arrived
             * must not keep a client that never reads alive. */
            if (progress || !sg_event_timer_set(c->write)) {
                sg_event_add_timer(c->write, s->conf->timeout);
            }
            return SG_AGAIN;
        }
        if (n < 0) {
            if (errno == ECONNRESET || errno == EPIPE) {
                sg_smtp_set_end(s, SG_SMTP_END_CLOSED);
            }
            return SG_ERROR;
        }
        s->out.pos += n;
        progress = progress || n > 0;
    }
    sg_buf_reset(&s->out);
    sg_event_del_timer(c->write);
    return SG_OK;
}

static bool
sg_smtp_waiting(sg_smtp_session_t *s)
{
    return s->state == SG_SMTP_ST_AUTH_WAIT
           || s->state == SG_SMTP_ST_AUTH_DELAY
           || s->state == SG_SMTP_ST_GREETING_DELAY
           || s->state == SG_SMTP_ST_RELAY_START
           || s->starttls;
}

void
sg_smtp_del_timer(sg_smtp_session_t *s)
{
    if (s->timer) {
        sg_event_del_timer(s->timer);
    }
}

void
sg_smtp_set_timer(sg_smtp_session_t *s, sg_event_handler_pt h, sg_msec_t ms)
{
    if (s->timer == NULL) {
        s->timer = sg_pcalloc(s->pool, sizeof(sg_event_t));
        if (s->timer == NULL) {
            sg_log_error(SG_LOG_ALERT, s->log, 0, "out of memory for a "
                         "timer: the session ends at its next step");
            s->quit = 1;
            return;
        }
        s->timer->data = s;
        s->timer->log = s->log;
    }
    s->timer->handler = h;
    sg_event_add_timer(s->timer, ms);
}

/* smtp_greeting_delay: a client that talks before the greeting is
 * almost always a spam engine that does not wait for replies. */
static void
sg_smtp_greeting_timer(sg_event_t *ev)
{
    sg_smtp_session_t  *s = ev->data;

    s->state = SG_SMTP_ST_COMMAND;
    if (sg_smtp_buffers(s) != SG_OK) {
        sg_smtp_close_session(s);
        return;
    }
    (void) sg_buf_append(&s->out, s->conf->greeting.data,
                         s->conf->greeting.len);
    sg_smtp_run(s);
}

static void
sg_smtp_greet(sg_smtp_session_t *s)
{
    if (s->denied) {
        if (sg_smtp_buffers(s) != SG_OK) {
            sg_smtp_close_session(s);
            return;
        }
        (void) sg_smtp_reply(s, "554 5.7.1 %.*s Access denied",
                             SG_STR_ARG(&s->conf->server_name));
        sg_smtp_run(s);
        return;
    }
    if (s->conf->greeting_delay > 0) {
        s->state = SG_SMTP_ST_GREETING_DELAY;
        sg_smtp_set_timer(s, sg_smtp_greeting_timer,
                          s->conf->greeting_delay);
        /* Bytes may be in already, with no event to come for them: a
         * command sent in the same segment as the client's TLS Finished
         * (read with it) or as its PROXY header. */
        (void) sg_smtp_early_talker(s);
        sg_smtp_run(s);
        return;
    }
    if (sg_smtp_buffers(s) != SG_OK) {
        sg_smtp_close_session(s);
        return;
    }
    (void) sg_buf_append(&s->out, s->conf->greeting.data,
                         s->conf->greeting.len);
    sg_smtp_run(s);
}

/* While the greeting is held back, any byte from the client ends the
 * session. */
static bool
sg_smtp_early_talker(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;
    u_char            byte[64];
    ssize_t           n;

    if (s->state != SG_SMTP_ST_GREETING_DELAY || !c->read->ready) {
        return false;
    }
    n = c->recv(c, byte, sizeof(byte));
    if (n == SG_AGAIN) {
        return false;
    }
    if (n > 0) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client talked before the "
                     "greeting (smtp_greeting_delay), closing");
        (void) sg_smtp_reply(s, "503 5.5.0 Talking before the greeting is "
                             "not allowed");
    }
    sg_smtp_del_timer(s);
    s->state = SG_SMTP_ST_COMMAND;
    s->quit = 1;
    return true;
}

/* Room for one more reply of any length. */
static bool
sg_smtp_out_room(sg_smtp_session_t *s)
{
    if (sg_buf_free(&s->out) < SG_SMTP_OUT_SLACK) {
        sg_buf_compact(&s->out);
    }
    return sg_buf_free(&s->out) >= SG_SMTP_OUT_SLACK;
}

void
sg_smtp_run(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;
    bool              buffered;
    int               rc;

    if (sg_smtp_buffers(s) != SG_OK) {
        goto close;
    }
    for ( ;; ) {
        /* Handle buffered lines while the replies fit; flush when the
         * output runs short of room, then go on with what is buffered
         * before reading more. */
        buffered = false;
        if (!s->quit && !sg_smtp_waiting(s)) {
            if (!sg_smtp_out_room(s)) {
                /* Replies are backed up and we were woken by more
                 * input: no command is handled until they drain, or
                 * its reply would not fit. */
                buffered = true;
            } else {
                rc = sg_smtp_next_line(s);
                if (rc == SG_ERROR) {
                    goto close;
                }
                if (rc == SG_OK) {
                    /* A whole command arrived in time: the deadline for
                     * the next one starts when we wait for it. */
                    sg_event_del_timer(c->read);
                    buffered = true;
                    if (sg_smtp_out_room(s)) {
                        continue;
                    }
                }
            }
        }
        rc = sg_smtp_flush(s);
        if (rc == SG_ERROR) {
            goto close;
        }
        if (rc == SG_AGAIN) {
            return;                  /* the write handler resumes */
        }
        if (s->quit) {
            goto close;
        }
        if (sg_smtp_waiting(s)) {
            sg_event_del_timer(c->read);
            if (s->starttls) {
                sg_smtp_tls_start(s);
            }
            return;
        }
        if (buffered) {
            continue;
        }
        rc = sg_smtp_read(s);
        if (rc == SG_DONE) {
            sg_log_error(SG_LOG_INFO, s->log, 0, "client closed the "
                         "connection");
            sg_smtp_set_end(s, SG_SMTP_END_CLOSED);
        }
        if (rc == SG_AGAIN) {
            /* "timeout" is a deadline for a whole command line, not for
             * each byte: a client trickling bytes cannot hold the
             * session open. */
            if (!sg_event_timer_set(c->read)) {
                sg_event_add_timer(c->read, s->conf->timeout);
            }
            sg_smtp_idle_buffers(s);
            return;
        }
        if (rc != SG_OK) {
            goto close;
        }
    }

close:
    sg_smtp_close_session(s);
}

static void
sg_smtp_read_handler(sg_event_t *ev)
{
    sg_connection_t    *c = ev->data;
    sg_smtp_session_t  *s = c->data;

    if (!ev->timedout && sg_smtp_early_talker(s)) {
        sg_smtp_run(s);
        return;
    }

    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client timed out");
        s->quit = 1;
        sg_smtp_set_end(s, SG_SMTP_END_TIMEOUT);
        if (sg_smtp_buffers(s) != SG_OK) {
            sg_smtp_close_session(s);
            return;
        }
        sg_buf_compact(&s->out);
        (void) sg_smtp_reply(s, "421 4.4.2 %.*s Error: timeout exceeded",
                             SG_STR_ARG(&s->conf->server_name));
    }
    sg_smtp_run(s);
}

static void
sg_smtp_write_handler(sg_event_t *ev)
{
    sg_connection_t    *c = ev->data;
    sg_smtp_session_t  *s = c->data;

    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client timed out while we "
                     "were sending replies");
        sg_smtp_set_end(s, SG_SMTP_END_TIMEOUT);
        sg_smtp_close_session(s);
        return;
    }
    if (sg_buf_size(&s->out) == 0 && !s->quit) {
        return;                      /* nothing pending: spurious */
    }
    sg_smtp_run(s);
}

/* TLS, implicit (at connect) or after STARTTLS. */

#if (SG_HAVE_SSL_MODULE)
static void sg_smtp_tls_handler(sg_event_t *ev);
static int sg_smtp_greet_in_handshake(sg_smtp_session_t *s);
#endif

static void
sg_smtp_tls_start(sg_smtp_session_t *s)
{
#if (SG_HAVE_SSL_MODULE)
    sg_connection_t  *c = s->connection;

    /* Drop whatever the client pipelined after STARTTLS. */
    sg_buf_reset(&s->in);
    s->skipping = 0;
    sg_smtp_idle_buffers(s);
    if (sg_ssl_create_connection(c, s->conf) != SG_OK) {
        sg_smtp_close_session(s);
        return;
    }
    c->read->handler = sg_smtp_tls_handler;
    c->write->handler = sg_smtp_tls_handler;
    sg_event_del_timer(c->write);
    sg_event_add_timer(c->read, sg_ssl_srv(s->conf)->handshake_timeout);
    sg_smtp_tls_handler(c->read);
#else
    sg_smtp_close_session(s);
#endif
}

#if (SG_HAVE_SSL_MODULE)

static void
sg_smtp_tls_handler(sg_event_t *ev)
{
    sg_connection_t    *c = ev->data;
    sg_smtp_session_t  *s = c->data;
    sg_str_t            name;
    int                 rc;

    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "TLS handshake timed out "
                     "(ssl_handshake_timeout)");
        sg_smtp_set_end(s, SG_SMTP_END_TIMEOUT);
        sg_smtp_close_session(s);
        return;
    }
    if (s->implicit_tls && !s->tls_early
        && sg_ssl_srv(s->conf)->greeting_in_handshake)
    {
        rc = sg_ssl_handshake_early(c);
        if (rc == SG_DECLINED) {
            s->tls_early = 1;
            if (sg_smtp_greet_in_handshake(s) != SG_OK) {
                sg_smtp_close_session(s);
                return;
            }
            rc = sg_ssl_handshake(c);
        }
    } else {
        rc = sg_ssl_handshake(c);
    }
    if (rc == SG_AGAIN) {
        return;
    }
    if (rc == SG_ERROR) {
        sg_smtp_set_end(s, SG_SMTP_END_TLS_ERROR);
        sg_smtp_close_session(s);
        return;
    }
    sg_event_del_timer(c->read);
    /* The server by the name asked for in this handshake, even when a
     * resumed session skipped the SNI callback; then its TLS policy. */
    name.data = (u_char *) SSL_get_servername(c->ssl,
                                               TLSEXT_NAMETYPE_host_name);
    if (name.data) {
        name.len = strlen((char *) name.data);
        (void) sg_smtp_select_server(c, &name);
    }
    if (sg_ssl_check_session(c, s->conf) != SG_OK) {
        sg_smtp_set_end(s, SG_SMTP_END_TLS_ERROR);
        sg_smtp_close_session(s);
        return;
    }
    sg_ssl_release(c, sg_ssl_srv(s->conf)->compact);
    sg_log_error(SG_LOG_INFO, s->log, 0, "TLS established: %s, %s%s",
                 sg_ssl_protocol(c), sg_ssl_cipher(c),
                 c->tls_rec ? ", compact state" : "");
    if (sg_ssl_push(c, s->implicit_tls && !s->greeted
                       && s->conf->greeting_delay == 0)
        == SG_ERROR)
    {
        sg_smtp_close_session(s);
        return;
    }

    /* RFC 3207 4.2: forget everything learnt before TLS. */
    s->tls = 1;
    s->starttls = 0;
    s->helo.len = 0;
    s->esmtp = 0;
    s->login.len = 0;
    sg_smtp_forget_envelope(s);
    s->state = SG_SMTP_ST_COMMAND;
    c->read->handler = sg_smtp_read_handler;
    c->write->handler = sg_smtp_write_handler;
    if (s->implicit_tls && !s->greeted) {
        sg_smtp_greet(s);
        return;
    }
    sg_smtp_run(s);
}

/*
 * ssl_greeting_in_handshake: over implicit TLS 1.3 the 220 goes out in
 * the server's first flight, as 0.5-RTT data, and reaches the client
 * with the handshake instead of one round trip after it.  The greeting
 * is what any client connecting is told, so nothing is given away to a
 * client not yet authenticated.  It is the greeting of the server the
 * client's SNI chose, which is known by then.  Not when the greeting is
 * held back (smtp_greeting_delay: whether the client talks first is the
 * point) or when the server asks for client certificates (the session
 * may yet be refused for one).  A session resumed under another server
 * is refused here, before anything is said, as it would be after the
 * handshake.
 */
static int
sg_smtp_greet_in_handshake(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;
    sg_str_t          name;
    int               rc;

    name.data = (u_char *) SSL_get_servername(c->ssl,
                                               TLSEXT_NAMETYPE_host_name);
    if (name.data) {
        name.len = strlen((char *) name.data);
        (void) sg_smtp_select_server(c, &name);
    }
    if (!sg_ssl_srv(s->conf)->greeting_in_handshake
        || sg_ssl_srv(s->conf)->verify != SG_SSL_VERIFY_OFF
        || s->conf->greeting_delay > 0)
    {
        return SG_OK;
    }
    if (sg_ssl_check_session(c, s->conf) != SG_OK) {
        return SG_ERROR;
    }
    rc = sg_ssl_write_early(c, s->conf->greeting.data, s->conf->greeting.len);
    if (rc == SG_ERROR) {
        return SG_ERROR;
    }
    if (rc == SG_OK) {
        s->greeted = 1;
        sg_log_debug(s->log, "greeting sent with the TLS handshake");
    }
    return SG_OK;
}

#endif

int
sg_smtp_relay_ready(sg_smtp_session_t *s)
{
    if (sg_smtp_buffers(s) != SG_OK) {
        return SG_ERROR;
    }
    sg_log_error(SG_LOG_INFO, s->log, 0, "relaying");
    sg_event_del_timer(s->connection->read);
    s->state = SG_SMTP_ST_RELAY;
    sg_buf_compact(&s->out);
    if (s->auth_mech != SG_SMTP_AUTH_NONE) {
        /* anonymous (smtp_auth none): the backend answers the RCPT */
        (void) sg_smtp_reply(s, "235 2.7.0 Authentication successful");
    }
    return SG_OK;
}

void
sg_smtp_relay_failed(sg_smtp_session_t *s)
{
    s->state = SG_SMTP_ST_COMMAND;
    s->quit = 1;
    sg_smtp_set_end(s, SG_SMTP_END_BACKEND_ERROR);
    sg_buf_compact(&s->out);
    (void) sg_smtp_reply(s, "451 4.4.1 No backend available, try again "
                         "later");
    sg_smtp_run(s);
}

void
sg_smtp_relay_refused(sg_smtp_session_t *s, const sg_str_t *reply)
{
    s->state = SG_SMTP_ST_COMMAND;
    s->quit = 1;
    sg_smtp_set_end(s, SG_SMTP_END_BACKEND_REFUSED);
    sg_buf_compact(&s->out);
    if (sg_smtp_buffers(s) != SG_OK
        || sg_buf_append(&s->out, reply->data, reply->len) != SG_OK)
    {
        sg_smtp_relay_failed(s);
        return;
    }
    sg_smtp_run(s);
}
