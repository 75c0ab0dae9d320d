/*
 * sg_realip.c: the client's address as a load balancer in front of
 * smtpgate saw it: the PROXY protocol header on "listen ...
 * proxy_protocol" addresses, and "set_real_ip_from", which says whose
 * headers to believe.
 *
 * Owns the first step of a session on such an address, before anything
 * else (TLS handshake, greeting, greeting delay): reading the header
 * under proxy_protocol_timeout and deciding whether the address it
 * carries replaces the connection's.  The header is read with MSG_PEEK
 * into a bounded stack buffer and only its own length is then taken off
 * the socket, so whatever the client sent right after it (SMTP commands,
 * a TLS ClientHello) is still in the socket when the session starts, as
 * if the header had never been there.
 *
 * Refuses a malformed or over-long header, a first byte that cannot
 * start one, a timeout and a close: the connection is closed without a
 * reply, as no greeting was ever sent (nginx and HAProxy do the same).
 * A header from a peer outside set_real_ip_from is read and ignored,
 * with a warning, as nginx ignores it.
 */
#include "sg_smtp.h"
#include "sg_realip.h"

/* The longest header read, as in nginx: v1 fits many times over, and a
 * v2 header with more TLVs than this is refused. */
#define SG_REALIP_HEADER_MAX       4096
#define SG_REALIP_HEADER_MAX_TEXT  "4096"

typedef struct {
    sg_array_t  *from;              /* sg_cidr_t */
    sg_msec_t    timeout;
} sg_realip_srv_conf_t;

static char *sg_realip_set_from(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_realip_create_srv_conf(sg_conf_t *cf);
static char *sg_realip_merge_srv_conf(sg_conf_t *cf, void *prev,
    void *conf);

static const sg_conf_bounds_t  sg_realip_timeout_bounds = { 1, 3600000LL };

static const sg_command_t  sg_realip_commands[] = {
    { "set_real_ip_from",
      SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_TAKE1,
      sg_realip_set_from, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "proxy_protocol_timeout",
      SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_realip_srv_conf_t, timeout), &sg_realip_timeout_bounds },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_realip_module_ctx = {
    NULL, NULL, sg_realip_create_srv_conf, sg_realip_merge_srv_conf, NULL
};

sg_module_t  sg_realip_module = {
    .name = "realip",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_realip_module_ctx,
    .commands = sg_realip_commands,
};


/* ---- configuration -------------------------------------------------- */

static char *
sg_realip_set_from(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_realip_srv_conf_t  *rcf = conf;

    (void) cmd;
    return sg_conf_add_cidr(cf, &rcf->from);
}

static void *
sg_realip_create_srv_conf(sg_conf_t *cf)
{
    sg_realip_srv_conf_t  *rcf;

    rcf = sg_pcalloc(cf->pool, sizeof(sg_realip_srv_conf_t));
    if (rcf == NULL) {
        return NULL;
    }
    rcf->from = SG_CONF_UNSET_PTR;
    rcf->timeout = SG_CONF_UNSET_MSEC;
    return rcf;
}

static char *
sg_realip_merge_srv_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_realip_srv_conf_t  *prev = parent, *conf = child;

    (void) cf;
    sg_conf_merge_ptr(conf->from, prev->from, NULL);
    sg_conf_merge_msec(conf->timeout, prev->timeout, 30000);
    return SG_CONF_OK;
}

/* The default server of the address decides: nothing else is known
 * before the header (SNI comes later, inside TLS). */
static sg_realip_srv_conf_t *
sg_realip_conf(sg_smtp_session_t *s)
{
    return sg_mail_conf_srv(s->conf->ctx, sg_realip_module);
}


/* ---- the header ----------------------------------------------------- */

static void sg_realip_read_handler(sg_event_t *rev);

static void
sg_realip_write_handler(sg_event_t *wev)
{
    (void) wev;                  /* nothing is written before the header */
}

void
sg_realip_read_header(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;

    c->read->handler = sg_realip_read_handler;
    c->write->handler = sg_realip_write_handler;
    sg_event_add_timer(c->read, sg_realip_conf(s)->timeout);
    sg_realip_read_handler(c->read);
}

static void
sg_realip_fail(sg_smtp_session_t *s, const char *why, const char *detail)
{
    sg_log_error(SG_LOG_INFO, s->log, 0, "%s%s%s, closing", why,
                 detail ? ": " : "", detail ? detail : "");
    sg_smtp_close_session(s);
}

/* Look at what has arrived without taking it off the socket. */
static ssize_t
sg_realip_peek(sg_connection_t *c, u_char *buf, size_t size)
{
    ssize_t  n;

    for ( ;; ) {
        n = recv(c->fd, buf, size, MSG_PEEK);
        if (n >= 0) {
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->read->ready = 0;
            return SG_AGAIN;
        }
        sg_log_error(SG_LOG_INFO, c->log, errno, "recv() failed while "
                     "reading the PROXY protocol header");
        return SG_ERROR;
    }
}

/* Take n bytes that a peek has shown to be there. */
static int
sg_realip_take(sg_connection_t *c, u_char *buf, size_t n)
{
    ssize_t  got;

    do {
        got = recv(c->fd, buf, n, 0);
    } while (got == -1 && errno == EINTR);
    return got == (ssize_t) n ? SG_OK : SG_ERROR;
}

static bool
sg_realip_trusted(sg_realip_srv_conf_t *rcf, sg_connection_t *c)
{
    return sg_cidr_list_match(rcf->from, (struct sockaddr *) &c->sockaddr);
}

/* A trusted header's source becomes the client: its address for logs,
 * XCLIENT, auth_http and auth_fail_limit; its destination becomes the
 * connection's local address.  The proxy's own address stays on
 * c->proxy_protocol. */
static int
sg_realip_set_client(sg_connection_t *c, const sg_proxy_hdr_t *hdr)
{
    u_char  text[SG_INET_ADDRSTRLEN + 1];
    size_t  n;

    n = sg_sock_ntop((const struct sockaddr *) &hdr->src, text, sizeof(text),
                     false);
    c->addr_text.data = sg_pnalloc(c->pool, n);
    if (c->addr_text.data == NULL) {
        return SG_ERROR;
    }
    memcpy(c->addr_text.data, text, n);
    c->addr_text.len = n;
    memcpy(&c->sockaddr, &hdr->src, hdr->src_len);
    c->socklen = hdr->src_len;
    memcpy(&c->local_sockaddr, &hdr->dst, hdr->dst_len);
    c->local_socklen = hdr->dst_len;
    return SG_OK;
}

static int
sg_realip_apply(sg_smtp_session_t *s, const sg_proxy_hdr_t *hdr)
{
    sg_connection_t      *c = s->connection;
    sg_proxy_protocol_t  *pp;
    u_char                src[SG_SOCKADDR_STRLEN], dst[SG_SOCKADDR_STRLEN];
    size_t                sn, dn;

    if (hdr->local) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "PROXY protocol from %.*s: "
                     "%s, client address kept", SG_STR_ARG(&c->addr_text),
                     hdr->version == 1 ? "UNKNOWN" : "LOCAL");
        return SG_OK;
    }
    pp = sg_pcalloc(c->pool, sizeof(sg_proxy_protocol_t));
    if (pp == NULL) {
        return SG_ERROR;
    }
    pp->hdr = *hdr;
    memcpy(&pp->peer, &c->sockaddr, c->socklen);
    pp->peer_len = c->socklen;
    pp->peer_text = c->addr_text;
    c->proxy_protocol = pp;

    sn = sg_sock_ntop((const struct sockaddr *) &hdr->src, src, sizeof(src),
                      true);
    dn = sg_sock_ntop((const struct sockaddr *) &hdr->dst, dst, sizeof(dst),
                      true);
    if (!sg_realip_trusted(sg_realip_conf(s), c)) {
        sg_log_error(SG_LOG_WARN, s->log, 0, "PROXY protocol from %.*s "
                     "ignored, the address is not in \"set_real_ip_from\" "
                     "(header: client %.*s, server %.*s)",
                     SG_STR_ARG(&pp->peer_text), (int) sn, (char *) src,
                     (int) dn, (char *) dst);
        return SG_OK;
    }
    if (sg_realip_set_client(c, hdr) != SG_OK) {
        return SG_ERROR;
    }
    pp->trusted = 1;
    sg_log_error(SG_LOG_INFO, s->log, 0, "PROXY protocol from %.*s: "
                 "client %.*s, server %.*s", SG_STR_ARG(&pp->peer_text),
                 (int) sn, (char *) src, (int) dn, (char *) dst);
    return SG_OK;
}

/* The header has been taken off the socket: apply it and start the
 * session proper.  Bytes after the header are still in the socket; a
 * read event is posted for them, since epoll will not report bytes that
 * arrived before. */
static void
sg_realip_done(sg_smtp_session_t *s, const sg_proxy_hdr_t *hdr, bool more)
{
    sg_connection_t  *c = s->connection;

    sg_event_del_timer(c->read);
    if (sg_realip_apply(s, hdr) != SG_OK) {
        sg_smtp_close_session(s);
        return;
    }
    c->read->ready = 1;
    if (more) {
        sg_event_post(c->read);
    }
    sg_smtp_start_session(s);
}

static void
sg_realip_read_handler(sg_event_t *rev)
{
    sg_connection_t    *c = rev->data;
    sg_smtp_session_t  *s = c->data;
    u_char              buf[SG_REALIP_HEADER_MAX];
    sg_proxy_hdr_t      hdr;
    const char         *err;
    size_t              consumed;
    ssize_t             n;
    int                 rc;

    if (rev->timedout) {
        sg_realip_fail(s, "no PROXY protocol header within "
                       "proxy_protocol_timeout", NULL);
        return;
    }
    n = sg_realip_peek(c, buf, sizeof(buf));
    if (n == SG_AGAIN) {
        return;
    }
    if (n == SG_ERROR) {
        sg_smtp_close_session(s);
        return;
    }
    if (n == 0) {
        sg_realip_fail(s, "client closed the connection before sending a "
                       "PROXY protocol header", NULL);
        return;
    }
    rc = sg_proxy_protocol_parse(buf, (size_t) n, &hdr, &consumed, &err);
    if (rc == SG_ERROR) {
        /* Take what was looked at, so that the close is an orderly one
         * unless more is on its way. */
        (void) sg_realip_take(c, buf, (size_t) n);
        sg_realip_fail(s, "invalid PROXY protocol header", err);
        return;
    }
    if (rc == SG_AGAIN) {
        if ((size_t) n == sizeof(buf)) {
            sg_realip_fail(s, "invalid PROXY protocol header",
                           "longer than " SG_REALIP_HEADER_MAX_TEXT " bytes");
        } else if (rev->pending_eof) {
            sg_realip_fail(s, "client closed the connection in the middle "
                           "of the PROXY protocol header", NULL);
        }
        return;                       /* the timer is still running */
    }
    /* Take exactly the header: it is there, so this reads it whole.
     * Not through c->recv: the header is not SMTP, and "bytes in"
     * counts SMTP only. */
    if (sg_realip_take(c, buf, consumed) != SG_OK) {
        sg_realip_fail(s, "could not read the PROXY protocol header", NULL);
        return;
    }
    sg_realip_done(s, &hdr, (size_t) n > consumed || rev->pending_eof);
}
