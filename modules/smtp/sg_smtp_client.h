/*
 * sg_smtp_client.h: the client side of SMTP, as smtpgate speaks it to a
 * backend server.  One engine runs the whole handshake for the proxy and
 * for the health checks, so that a probe speaks exactly as a session
 * does:
 *
 *   connect -> [PROXY header] -> [TLS] -> greeting -> EHLO
 *     -> [STARTTLS -> TLS -> EHLO] -> [XCLIENT -> EHLO]
 *     -> [AUTH PLAIN | AUTH LOGIN] -> [one replayed MAIL]
 *
 * Every step has a deadline; any failure (connect refused, timeout, a
 * reply other than the one expected, a TLS or certificate error) ends
 * the handshake with cl->error naming the step and the cause.  The
 * caller is told through cl->done(cl), never from inside start().
 */
#ifndef SG_SMTP_CLIENT_H
#define SG_SMTP_CLIENT_H

#include "sg_smtp.h"

#define SG_SMTP_CLIENT_TLS_OFF       0
#define SG_SMTP_CLIENT_TLS_ON        1     /* implicit TLS (port 465) */
#define SG_SMTP_CLIENT_TLS_STARTTLS  2

typedef struct sg_smtp_client_s  sg_smtp_client_t;
typedef void (*sg_smtp_client_done_pt)(sg_smtp_client_t *cl);
/* Build the XCLIENT line ("XCLIENT ADDR=..."), sending only attributes
 * the server listed; return its length, or 0 to send none. */
typedef size_t (*sg_smtp_client_xclient_pt)(sg_smtp_client_t *cl,
    const sg_str_t *attrs, u_char *buf, size_t size);

/* What the server's last EHLO reply offered. */
typedef struct {
    unsigned     caps;          /* SG_SMTP_EXT_* */
    int64_t      size;          /* SIZE n; 0: none, or no limit */
    unsigned     auth;          /* SG_SMTP_AUTH_PLAIN | _LOGIN offered */
    unsigned     starttls:1;
    unsigned     xclient:1;
} sg_smtp_ehlo_t;

struct sg_smtp_client_s {
    /* Set by the caller. */
    sg_pool_t                   *pool;
    sg_log_t                    *log;
    const sg_addr_t             *peer;
    sg_str_t                     ehlo_name;
    sg_msec_t                    timeout;       /* connect, each reply */
    unsigned                     tls;           /* SG_SMTP_CLIENT_TLS_* */
    void                        *ssl_ctx;       /* SSL_CTX */
    sg_str_t                     ssl_name;      /* SNI and verified name */
    unsigned                     proxy_protocol; /* 0, 1 or 2 */
    const struct sockaddr       *pp_src;        /* NULL: the connection's
                                                   own addresses */
    const struct sockaddr       *pp_dst;
    sg_smtp_client_xclient_pt    xclient;       /* NULL: no XCLIENT */
    sg_str_t                     xclient_helo;  /* EHLO after XCLIENT */
    unsigned                     xclient_esmtp:1;
    unsigned                     auth:1;        /* log in to the server */
    sg_str_t                     auth_user;
    sg_str_t                     auth_pass;
    sg_str_t                     mail_line;     /* replayed last */
    sg_smtp_client_done_pt       done;
    void                        *data;

    /* The outcome. */
    sg_connection_t             *c;             /* the caller's after OK */
    int                          status;        /* SG_OK, SG_ERROR */
    bool                         timedout;
    char                         error[320];    /* why it failed */
    sg_smtp_ehlo_t               ehlo;
    sg_str_t                     mail_reply;    /* whole reply, CRLFs */
    sg_str_t                     refusal;       /* the 4xx/5xx reply that
                                                   ended the handshake,
                                                   whole, with CRLFs */
    sg_buf_t                     in;            /* bytes past the last
                                                   reply (none normally) */
    unsigned                     xclient_sent:1; /* and answered 2xx */

    /* The engine's. */
    sg_buf_t                     out;
    sg_str_t                     xclient_attrs;
    unsigned                     state;
    unsigned                     tls_active:1;
    unsigned                     ssl_compact:1; /* proxy_ssl_compact_state */
    unsigned                     finished:1;
    unsigned                     aborted:1;     /* the worker drains */
};

/* Connect and run the handshake; cl->done(cl) follows later.  When the
 * connect fails at once, start() returns with cl->finished set,
 * cl->status SG_ERROR and cl->error filled, and done() is not called. */
void sg_smtp_client_start(sg_smtp_client_t *cl);
/* Go on with a connection kept from an earlier session: connected, past
 * its greeting, TLS and EHLO, answered RSET, with cl->ehlo and
 * cl->xclient_attrs as that EHLO left them.  Runs what the handshake
 * does after EHLO (XCLIENT, the replayed MAIL); cl->done(cl) follows,
 * from the event loop, as after start().  When it cannot begin,
 * cl->finished is set and done() is not called. */
void sg_smtp_client_reuse(sg_smtp_client_t *cl, sg_connection_t *c);
/* Close the connection (if the caller did not take it), stop, and give
 * back the handshake buffers (after copying what cl->in still holds). */
void sg_smtp_client_close(sg_smtp_client_t *cl);
/* Read what an EHLO reply offers. */
void sg_smtp_client_read_ehlo(const sg_smtp_reply_t *r, sg_smtp_ehlo_t *e);
/* The name of the step the engine is at, for logs. */
const char *sg_smtp_client_step(sg_smtp_client_t *cl);

#endif /* SG_SMTP_CLIENT_H */
