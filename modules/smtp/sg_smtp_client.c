/*
 * sg_smtp_client.c: the client-side SMTP handshake with a backend
 * server, shared by the proxy and the health checks.
 */
#include "sg_smtp_client.h"

#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#include <openssl/x509.h>
#endif

#define SG_SMTP_CLIENT_BUF  4096

typedef enum {
    SG_CL_CONNECT = 0,
    SG_CL_TLS,                /* implicit TLS handshake */
    SG_CL_GREETING,
    SG_CL_EHLO,
    SG_CL_STARTTLS,
    SG_CL_STARTTLS_TLS,       /* handshake after 220 to STARTTLS */
    SG_CL_EHLO_TLS,
    SG_CL_XCLIENT,
    SG_CL_XCLIENT_EHLO,
    SG_CL_AUTH,               /* AUTH PLAIN, or AUTH LOGIN's first 334 */
    SG_CL_AUTH_USER,          /* AUTH LOGIN: the user sent */
    SG_CL_AUTH_PASS,          /* AUTH LOGIN: the password sent */
    SG_CL_MAIL,
    SG_CL_DONE,
    SG_CL_REUSE               /* a kept connection, past its EHLO */
} sg_smtp_client_state_e;

static const char *sg_cl_step_names[] = {
    "connect", "TLS handshake", "greeting", "EHLO", "STARTTLS",
    "TLS handshake after STARTTLS", "EHLO after STARTTLS", "XCLIENT",
    "EHLO after XCLIENT", "AUTH", "AUTH LOGIN user", "AUTH LOGIN password",
    "MAIL", "done", "reuse of a kept connection"
};

static const struct {
    const char  *name;
    unsigned     bit;
} sg_smtp_exts[] = {
    { "CHUNKING", SG_SMTP_EXT_CHUNKING },
    { "DSN", SG_SMTP_EXT_DSN },
    { "8BITMIME", SG_SMTP_EXT_8BITMIME },
    { "SMTPUTF8", SG_SMTP_EXT_SMTPUTF8 },
    { "BINARYMIME", SG_SMTP_EXT_BINARYMIME },
    { "SIZE", SG_SMTP_EXT_SIZE },
    { "PIPELINING", SG_SMTP_EXT_PIPELINING },
    { "ENHANCEDSTATUSCODES", SG_SMTP_EXT_ENHANCED },
    { "REQUIRETLS", SG_SMTP_EXT_REQUIRETLS },
};

static void sg_smtp_client_handler(sg_event_t *ev);

const char *
sg_smtp_ext_name(unsigned ext)
{
    size_t  i;

    for (i = 0; i < sg_nelems(sg_smtp_exts); i++) {
        if (sg_smtp_exts[i].bit == ext) {
            return sg_smtp_exts[i].name;
        }
    }
    return "";
}

const char *
sg_smtp_client_step(sg_smtp_client_t *cl)
{
    return sg_cl_step_names[cl->state];
}

void
sg_smtp_client_read_ehlo(const sg_smtp_reply_t *r, sg_smtp_ehlo_t *e)
{
    sg_str_t  params;
    int64_t   n;
    size_t    i;

    memset(e, 0, sizeof(*e));
    for (i = 0; i < sg_nelems(sg_smtp_exts); i++) {
        if (sg_smtp_ehlo_has(r, sg_smtp_exts[i].name, &params)) {
            e->caps |= sg_smtp_exts[i].bit;
            if (sg_smtp_exts[i].bit == SG_SMTP_EXT_SIZE && params.len
                && sg_parse_int(&params, &n) == SG_OK && n > 0)
            {
                e->size = n;
            }
        }
    }
    e->starttls = sg_smtp_ehlo_has(r, "STARTTLS", NULL);
    e->xclient = sg_smtp_ehlo_has(r, "XCLIENT", NULL);
    if (sg_smtp_ehlo_has(r, "AUTH", &params)) {
        sg_str_t  w;
        size_t    j = 0, k;

        while (j < params.len) {
            while (j < params.len && params.data[j] == ' ') {
                j++;
            }
            k = j;
            while (k < params.len && params.data[k] != ' ') {
                k++;
            }
            w.data = params.data + j;
            w.len = k - j;
            if (sg_str_caseeq(&w, "PLAIN")) {
                e->auth |= SG_SMTP_AUTH_PLAIN;
            } else if (sg_str_caseeq(&w, "LOGIN")) {
                e->auth |= SG_SMTP_AUTH_LOGIN;
            }
            j = k;
        }
    }
}

/* The end: tell the caller once. */
static void
sg_smtp_client_finish(sg_smtp_client_t *cl, int status)
{
    if (cl->finished) {
        return;
    }
    cl->finished = 1;
    cl->status = status;
    if (cl->c) {
        sg_event_del_timer(cl->c->read);
        sg_event_del_timer(cl->c->write);
    }
    cl->done(cl);
}

static void
sg_smtp_client_fail(sg_smtp_client_t *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
sg_smtp_client_fail(sg_smtp_client_t *cl, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    vsnprintf(cl->error, sizeof(cl->error), fmt, args);
    va_end(args);
    sg_smtp_client_finish(cl, SG_ERROR);
}

void
sg_smtp_client_close(sg_smtp_client_t *cl)
{
    cl->finished = 1;
    if (cl->c) {
#if (SG_HAVE_SSL_MODULE)
        sg_ssl_free_connection(cl->c);
#endif
        sg_close_connection(cl->c);
        cl->c = NULL;
    }
    sg_buf_give(&cl->in);
    sg_buf_give(&cl->out);
}

/* Queue a command line; secret: log it without its argument. */
static int
sg_smtp_client_line(sg_smtp_client_t *cl, bool secret, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
sg_smtp_client_line(sg_smtp_client_t *cl, bool secret, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    sg_buf_compact(&cl->out);
    if (sg_buf_free(&cl->out) < 3) {
        sg_smtp_client_fail(cl, "command too long for the %s step",
                            sg_smtp_client_step(cl));
        return SG_ERROR;
    }
    va_start(args, fmt);
    p = sg_vslprintf(cl->out.last, cl->out.end - 2, fmt, args);
    va_end(args);
    if (secret) {
        sg_log_debug(cl->log, "to backend %.*s: (credentials)",
                     SG_STR_ARG(&cl->peer->name));
    } else {
        sg_log_debug(cl->log, "to backend %.*s: %.*s",
                     SG_STR_ARG(&cl->peer->name),
                     (int) (p - cl->out.last), (char *) cl->out.last);
    }
    *p++ = '\r';
    *p++ = '\n';
    cl->out.last = p;
    return SG_OK;
}

static int
sg_smtp_client_send(sg_smtp_client_t *cl)
{
    ssize_t  n;

    while (sg_buf_size(&cl->out)) {
        n = cl->c->send(cl->c, cl->out.pos, sg_buf_size(&cl->out));
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n < 0) {
            sg_smtp_client_fail(cl, "send() failed during %s",
                                sg_smtp_client_step(cl));
            return SG_ERROR;
        }
        cl->out.pos += n;
    }
    sg_buf_reset(&cl->out);
    return SG_OK;
}

#if (SG_HAVE_SSL_MODULE)
/* SG_OK, SG_AGAIN or SG_ERROR (failed, reported). */
static int
sg_smtp_client_tls(sg_smtp_client_t *cl)
{
    sg_connection_t  *c = cl->c;
    long              v;
    int               rc;

    if (c->ssl == NULL
        && sg_ssl_client_connection(c, cl->ssl_ctx, &cl->ssl_name) != SG_OK)
    {
        sg_smtp_client_fail(cl, "cannot start TLS with the name \"%.*s\"",
                            SG_STR_ARG(&cl->ssl_name));
        return SG_ERROR;
    }
    rc = sg_ssl_handshake(c);
    if (rc == SG_ERROR) {
        v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK) {
            sg_smtp_client_fail(cl, "certificate verify failed: %s (the "
                "name checked was \"%.*s\"; check proxy_ssl_name and "
                "proxy_ssl_trusted_certificate)",
                X509_verify_cert_error_string(v), SG_STR_ARG(&cl->ssl_name));
        } else {
            sg_smtp_client_fail(cl, "TLS handshake failed during %s",
                                sg_smtp_client_step(cl));
        }
        return SG_ERROR;
    }
    if (rc == SG_OK) {
        cl->tls_active = 1;
        if (cl->ssl_compact) {
            sg_ssl_release(c, true);
        }
        sg_log_debug(cl->log, "TLS with backend %.*s: %s, %s%s",
                     SG_STR_ARG(&cl->peer->name), sg_ssl_protocol(c),
                     sg_ssl_cipher(c), c->tls_rec ? ", compact state" : "");
    }
    return rc;
}
#endif

static int
sg_smtp_client_ehlo(sg_smtp_client_t *cl, unsigned state)
{
    cl->state = state;
    return sg_smtp_client_line(cl, false, "EHLO %.*s",
                               SG_STR_ARG(&cl->ehlo_name));
}

/* After the last EHLO: AUTH, the replayed MAIL, or done. */
static int
sg_smtp_client_after_ehlo(sg_smtp_client_t *cl)
{
    u_char    buf[1024], b64[sg_base64_encoded_len(1024)];
    sg_str_t  src, dst;
    size_t    n;
    int       rc;

    if (cl->auth && cl->state != SG_CL_AUTH && cl->state != SG_CL_AUTH_PASS)
    {
        n = cl->auth_user.len + cl->auth_pass.len + 2;
        if (cl->auth_user.len == 0 || n > sizeof(buf)) {
            sg_smtp_client_fail(cl, "no usable credentials to log in to "
                                "the backend");
            return SG_ERROR;
        }
        cl->state = SG_CL_AUTH;
        if (cl->ehlo.auth & SG_SMTP_AUTH_PLAIN) {
            buf[0] = '\0';
            memcpy(buf + 1, cl->auth_user.data, cl->auth_user.len);
            buf[1 + cl->auth_user.len] = '\0';
            memcpy(buf + 2 + cl->auth_user.len, cl->auth_pass.data,
                   cl->auth_pass.len);
            src.data = buf;
            src.len = n;
            dst.data = b64;
            sg_base64_encode(&dst, &src);
            sg_wipe(buf, n);
            rc = sg_smtp_client_line(cl, true, "AUTH PLAIN %.*s",
                                     SG_STR_ARG(&dst));
            sg_wipe(b64, dst.len);
            return rc;
        }
        if (cl->ehlo.auth & SG_SMTP_AUTH_LOGIN) {
            return sg_smtp_client_line(cl, false, "AUTH LOGIN");
        }
        sg_smtp_client_fail(cl, "the backend offers neither AUTH PLAIN nor "
                            "AUTH LOGIN, and proxy_smtp_auth is on");
        return SG_ERROR;
    }
    if (cl->mail_line.len) {
        cl->state = SG_CL_MAIL;
        return sg_smtp_client_line(cl, false, "%.*s",
                                   SG_STR_ARG(&cl->mail_line));
    }
    cl->state = SG_CL_DONE;
    return SG_DONE;
}

/* The XCLIENT attributes the server lists, kept for building the line. */
static int
sg_smtp_client_keep_xclient(sg_smtp_client_t *cl, const sg_smtp_reply_t *r)
{
    sg_str_t  attrs;

    (void) sg_smtp_ehlo_has(r, "XCLIENT", &attrs);
    cl->xclient_attrs.data = sg_pnalloc(cl->pool, attrs.len + 1);
    if (cl->xclient_attrs.data == NULL) {
        return SG_ERROR;
    }
    memcpy(cl->xclient_attrs.data, attrs.data, attrs.len);
    cl->xclient_attrs.len = attrs.len;
    return SG_OK;
}

/* After the EHLO that follows TLS (or the first, without STARTTLS). */
static int
sg_smtp_client_after_tls_ehlo(sg_smtp_client_t *cl)
{
    u_char  line[2048];
    size_t  n;

    if (cl->xclient && cl->ehlo.xclient) {
        n = cl->xclient(cl, &cl->xclient_attrs, line, sizeof(line));
        if (n) {
            cl->state = SG_CL_XCLIENT;
            return sg_smtp_client_line(cl, false, "%.*s", (int) n,
                                       (char *) line);
        }
    } else if (cl->xclient) {
        sg_log_error(SG_LOG_INFO, cl->log, 0, "backend %.*s does not offer "
                     "XCLIENT, relaying without it",
                     SG_STR_ARG(&cl->peer->name));
    }
    return sg_smtp_client_after_ehlo(cl);
}

static int
sg_smtp_client_login_step(sg_smtp_client_t *cl, const sg_str_t *v)
{
    u_char    b64[sg_base64_encoded_len(512)];
    sg_str_t  dst;
    int       rc;

    if (v->len > 512) {
        sg_smtp_client_fail(cl, "credentials too long for AUTH LOGIN");
        return SG_ERROR;
    }
    dst.data = b64;
    sg_base64_encode(&dst, v);
    rc = sg_smtp_client_line(cl, true, "%.*s", SG_STR_ARG(&dst));
    sg_wipe(b64, dst.len);
    return rc;
}

/* One complete reply: SG_OK (sent the next command), SG_DONE, or
 * SG_ERROR (failed, reported). */
static int
sg_smtp_client_on_reply(sg_smtp_client_t *cl, const sg_smtp_reply_t *r)
{
    switch (cl->state) {
    case SG_CL_GREETING:
        if (r->code != 220) {
            break;
        }
        return sg_smtp_client_ehlo(cl, SG_CL_EHLO);

    case SG_CL_EHLO:
    case SG_CL_EHLO_TLS:
    case SG_CL_XCLIENT_EHLO:
        if (r->code != 250) {
            break;
        }
        sg_smtp_client_read_ehlo(r, &cl->ehlo);
        if (cl->ehlo.xclient && sg_smtp_client_keep_xclient(cl, r) != SG_OK)
        {
            break;
        }
        if (cl->state == SG_CL_EHLO && cl->tls == SG_SMTP_CLIENT_TLS_STARTTLS)
        {
            if (!cl->ehlo.starttls) {
                sg_smtp_client_fail(cl, "the backend does not offer "
                                    "STARTTLS, and proxy_ssl is starttls");
                return SG_ERROR;
            }
            cl->state = SG_CL_STARTTLS;
            return sg_smtp_client_line(cl, false, "STARTTLS");
        }
        if (cl->state == SG_CL_XCLIENT_EHLO) {
            return sg_smtp_client_after_ehlo(cl);
        }
        return sg_smtp_client_after_tls_ehlo(cl);

    case SG_CL_STARTTLS:
        if (r->code != 220) {
            break;
        }
        if (sg_buf_size(&cl->in)) {
            sg_smtp_client_fail(cl, "the backend sent data after its 220 "
                                "to STARTTLS");
            return SG_ERROR;
        }
        cl->state = SG_CL_STARTTLS_TLS;
        return SG_AGAIN;                   /* the handler runs TLS */

    case SG_CL_XCLIENT:
        if (r->code / 100 != 2) {
            break;
        }
        cl->xclient_sent = 1;
        cl->state = SG_CL_XCLIENT_EHLO;
        return sg_smtp_client_line(cl, false, "%s %.*s",
                                   cl->xclient_esmtp ? "EHLO" : "HELO",
                                   SG_STR_ARG(&cl->xclient_helo));

    case SG_CL_AUTH:
        if (r->code == 235) {
            cl->state = SG_CL_AUTH_PASS;
            return sg_smtp_client_after_ehlo(cl);
        }
        if (r->code != 334 || (cl->ehlo.auth & SG_SMTP_AUTH_PLAIN)) {
            break;
        }
        cl->state = SG_CL_AUTH_USER;
        return sg_smtp_client_login_step(cl, &cl->auth_user);

    case SG_CL_AUTH_USER:
        if (r->code != 334) {
            break;
        }
        cl->state = SG_CL_AUTH_PASS;
        return sg_smtp_client_login_step(cl, &cl->auth_pass);

    case SG_CL_AUTH_PASS:
        if (r->code != 235) {
            break;
        }
        return sg_smtp_client_after_ehlo(cl);

    case SG_CL_MAIL:
        /* Whatever the answer, it is the client's. */
        cl->mail_reply.data = sg_pnalloc(cl->pool, r->len);
        if (cl->mail_reply.data == NULL) {
            break;
        }
        memcpy(cl->mail_reply.data, r->start, r->len);
        cl->mail_reply.len = r->len;
        cl->state = SG_CL_DONE;
        return SG_DONE;

    default:
        break;
    }
    if (r->code >= 400 && r->code < 600) {
        /* for proxy_pass_error_message */
        cl->refusal.data = sg_pnalloc(cl->pool, r->len);
        if (cl->refusal.data) {
            memcpy(cl->refusal.data, r->start, r->len);
            cl->refusal.len = r->len;
        }
    }
    sg_smtp_client_fail(cl, "%s reply \"%d %.*s\"", sg_smtp_client_step(cl),
                        r->code, (int) sg_min(r->text.len, 200),
                        (char *) r->text.data);
    return SG_ERROR;
}

/* Read replies and act on them: SG_AGAIN, SG_DONE or SG_ERROR. */
static int
sg_smtp_client_read(sg_smtp_client_t *cl)
{
    sg_connection_t  *c = cl->c;
    sg_smtp_reply_t   r;
    ssize_t           n;
    int               rc;

    for ( ;; ) {
        rc = sg_smtp_parse_reply(cl->in.pos, cl->in.last,
                                 sg_buf_cap(&cl->in), &r);
        if (rc == SG_OK) {
            cl->in.pos += r.len;
            sg_log_debug(cl->log, "backend %s reply: %d %.*s",
                         sg_smtp_client_step(cl), r.code,
                         SG_STR_ARG(&r.text));
            rc = sg_smtp_client_on_reply(cl, &r);
            if (rc == SG_ERROR || rc == SG_DONE) {
                return rc;
            }
            if (cl->state == SG_CL_STARTTLS_TLS) {
                return SG_AGAIN;
            }
            if (sg_smtp_client_send(cl) == SG_ERROR) {
                return SG_ERROR;
            }
            continue;
        }
        if (rc == SG_ERROR) {
            sg_smtp_client_fail(cl, "invalid reply during %s",
                                sg_smtp_client_step(cl));
            return SG_ERROR;
        }
        if (cl->in.pos == cl->in.last) {
            sg_buf_reset(&cl->in);
        }
        sg_buf_compact(&cl->in);
        if (!c->read->ready) {
            return SG_AGAIN;
        }
        n = c->recv(c, cl->in.last, sg_buf_free(&cl->in));
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n <= 0) {
            sg_smtp_client_fail(cl, "connection %s during %s",
                                n ? "failed" : "closed by the backend",
                                sg_smtp_client_step(cl));
            return SG_ERROR;
        }
        cl->in.last += n;
    }
}

static int
sg_smtp_client_proxy_header(sg_smtp_client_t *cl)
{
    const struct sockaddr  *src = cl->pp_src, *dst = cl->pp_dst;
    struct sockaddr_storage local;
    socklen_t               len = sizeof(local);
    size_t                  n;

    if (src == NULL || dst == NULL) {
        /* a probe: the connection's own addresses */
        if (getsockname(cl->c->fd, (struct sockaddr *) &local, &len) != 0) {
            sg_smtp_client_fail(cl, "getsockname() failed");
            return SG_ERROR;
        }
        src = (struct sockaddr *) &local;
        dst = (struct sockaddr *) &cl->peer->sa;
    }
    sg_buf_compact(&cl->out);
    n = cl->proxy_protocol == 2
        ? sg_proxy_protocol_write_v2(cl->out.last, sg_buf_free(&cl->out),
                                     src, dst)
        : sg_proxy_protocol_write_v1(cl->out.last, sg_buf_free(&cl->out),
                                     src, dst);
    if (n == 0) {
        sg_smtp_client_fail(cl, "cannot write a PROXY protocol header for "
                            "these addresses");
        return SG_ERROR;
    }
    cl->out.last += n;
    return SG_OK;
}

static void
sg_smtp_client_handler(sg_event_t *ev)
{
    sg_connection_t   *c = ev->data;
    sg_smtp_client_t  *cl = c->data;
    int                rc, err;

    if (cl->finished) {
        return;
    }
    if (c->close) {
        cl->aborted = 1;                 /* a draining worker */
        sg_smtp_client_fail(cl, "aborted: the worker is shutting down");
        return;
    }
    if (ev->timedout) {
        cl->timedout = true;
        sg_smtp_client_fail(cl, "timed out during %s",
                            sg_smtp_client_step(cl));
        return;
    }
    if (cl->state == SG_CL_CONNECT) {
        if (!c->write->ready) {
            return;
        }
        if (sg_connect_result(c, &err) != SG_OK) {
            errno = err;
            sg_smtp_client_fail(cl, "connect() failed (%s)", strerror(err));
            return;
        }
        sg_event_del_timer(c->write);
        if (cl->proxy_protocol
            && sg_smtp_client_proxy_header(cl) != SG_OK)
        {
            return;
        }
        cl->state = cl->tls == SG_SMTP_CLIENT_TLS_ON ? SG_CL_TLS
                                                     : SG_CL_GREETING;
        sg_event_add_timer(c->read, cl->timeout);
    }
    if (cl->state == SG_CL_REUSE) {
        /* The server waits for a command: XCLIENT, the replayed MAIL,
         * or nothing at all. */
        sg_event_add_timer(c->read, cl->timeout);
        rc = sg_smtp_client_after_tls_ehlo(cl);
        if (rc == SG_ERROR) {
            return;
        }
        if (rc == SG_DONE) {
            sg_smtp_client_finish(cl, SG_OK);
            return;
        }
    }
    for ( ;; ) {
        rc = sg_smtp_client_send(cl);
        if (rc == SG_ERROR) {
            return;
        }
        if (cl->state == SG_CL_TLS || cl->state == SG_CL_STARTTLS_TLS) {
#if (SG_HAVE_SSL_MODULE)
            if (rc == SG_AGAIN) {
                break;                       /* the PROXY header first */
            }
            rc = sg_smtp_client_tls(cl);
            if (rc == SG_ERROR) {
                return;
            }
            if (rc == SG_AGAIN) {
                break;
            }
            if (cl->state == SG_CL_TLS) {
                cl->state = SG_CL_GREETING;
            } else if (sg_smtp_client_ehlo(cl, SG_CL_EHLO_TLS) != SG_OK) {
                return;
            }
            continue;
#else
            sg_smtp_client_fail(cl, "TLS to backends needs the ssl module");
            return;
#endif
        }
        rc = sg_smtp_client_read(cl);
        if (rc == SG_ERROR) {
            return;
        }
        if (rc == SG_DONE) {
            sg_smtp_client_finish(cl, SG_OK);
            return;
        }
        if (cl->state == SG_CL_STARTTLS_TLS) {
            continue;
        }
        break;
    }
    sg_event_add_timer(c->read, cl->timeout);
}

void
sg_smtp_client_start(sg_smtp_client_t *cl)
{
    sg_connection_t  *c;
    int               rc;

    cl->state = SG_CL_CONNECT;
    cl->finished = 0;
    cl->tls_active = 0;
    cl->xclient_sent = 0;
    cl->timedout = false;
    cl->aborted = 0;
    cl->error[0] = '\0';
    cl->mail_reply.len = 0;
    memset(&cl->ehlo, 0, sizeof(cl->ehlo));
    if (sg_buf_take(&cl->in, SG_SMTP_CLIENT_BUF) != SG_OK
        || sg_buf_take(&cl->out, SG_SMTP_CLIENT_BUF) != SG_OK)
    {
        snprintf(cl->error, sizeof(cl->error), "out of memory");
        cl->status = SG_ERROR;
        cl->finished = 1;
        return;
    }
    sg_buf_reset(&cl->in);
    sg_buf_reset(&cl->out);
    sg_log_debug(cl->log, "connecting to backend %.*s",
                 SG_STR_ARG(&cl->peer->name));
    rc = sg_connect(cl->peer, cl->log, &c);
    if (rc == SG_ERROR) {
        snprintf(cl->error, sizeof(cl->error), "connect() failed");
        c = NULL;
    }
    cl->c = c;
    if (c == NULL) {
        cl->status = SG_ERROR;             /* see the header: no done() */
        cl->finished = 1;
        return;
    }
    c->data = cl;
    c->pool = cl->pool;
    c->read->handler = sg_smtp_client_handler;
    c->write->handler = sg_smtp_client_handler;
    sg_event_add_timer(c->write, cl->timeout);
    if (rc == SG_OK) {
        sg_event_post(c->write);
    }
}

void
sg_smtp_client_reuse(sg_smtp_client_t *cl, sg_connection_t *c)
{
    cl->state = SG_CL_REUSE;
    cl->finished = 0;
    cl->tls_active = sg_connection_tls(c);
    cl->xclient_sent = 0;
    cl->timedout = false;
    cl->aborted = 0;
    cl->error[0] = '\0';
    cl->mail_reply.len = 0;
    if (sg_buf_take(&cl->in, SG_SMTP_CLIENT_BUF) != SG_OK
        || sg_buf_take(&cl->out, SG_SMTP_CLIENT_BUF) != SG_OK)
    {
        snprintf(cl->error, sizeof(cl->error), "out of memory");
        cl->status = SG_ERROR;
        cl->finished = 1;
        cl->c = c;                 /* the caller closes it */
        return;
    }
    sg_buf_reset(&cl->in);
    sg_buf_reset(&cl->out);
    cl->c = c;
    c->data = cl;
    c->pool = cl->pool;
    c->log = cl->log;
    c->idle = 0;
    c->read->handler = sg_smtp_client_handler;
    c->write->handler = sg_smtp_client_handler;
    c->write->ready = 1;
    sg_event_post(c->write);
}
