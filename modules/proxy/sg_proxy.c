/*
 * sg_proxy.c: relaying an authenticated session to a backend SMTP
 * server.
 *
 * Picks the backend (the auth service's answer first, then proxy_pass:
 * an upstream group, HOST:PORT, a $variable or spool:DIR), runs the
 * shared client handshake (sg_smtp_client: PROXY header, TLS or
 * STARTTLS, EHLO, XCLIENT, AUTH, the replayed MAIL) and moves on to the
 * next peer whenever an attempt fails, within proxy_next_upstream_tries
 * and proxy_next_upstream_timeout.  Only a completed handshake gets the
 * client its 235; when every peer failed the client hears 451 4.4.1.
 * Then bytes flow both ways: through a pipe with splice(2) when neither
 * side is TLS, else through two bounded buffers, until either side
 * closes or proxy_timeout passes.
 */
#include "sg_smtp.h"
#include "sg_smtp_client.h"
#include "sg_proxy_int.h"
#include "sg_proxy_track.h"
#if (SG_HAVE_UPSTREAM_MODULE)
#include "sg_upstream.h"
#endif
#if (SG_HAVE_SPOOL_MODULE)
#include "sg_spool.h"
#endif
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#include <openssl/err.h>
#endif
#include <fcntl.h>

/* Bytes relayed before a plaintext session switches to splice(2). */
#define SG_PROXY_SPLICE_AFTER  (256 * 1024)
/* Client bytes after which a session whose backend connection cannot be
 * kept is no longer followed: reading its message text costs more than
 * the QUIT answered here saves (a backend round trip). */
#define SG_PROXY_FOLLOW_MAX    (128 * 1024)

/* What a client is told when its backend goes away mid-session. */
#define SG_PROXY_LOST  "Connection to the backend lost, try again later"


/* A backend connection kept between sessions, waiting in its
 * configuration's list: RSET sent, then answered. */
struct sg_proxy_idle_s {
    sg_proxy_idle_t    *next;
    sg_proxy_conf_t    *conf;
    sg_connection_t    *c;
    sg_smtp_ehlo_t      ehlo;         /* what its EHLO offered */
    u_char              xclient_attrs[256];
    size_t              xclient_len;
    unsigned            sessions;     /* it has served */
    size_t              name_len;
    u_char              name[64];     /* the peer's, for the log */
    size_t              nin;
    u_char              in[128];      /* the reply to RSET */
    unsigned            ready:1;      /* RSET answered 250 */
};

/* One pipe of a spliced direction. */
typedef struct {
    int           fd[2];
    size_t        bytes;          /* in the pipe */
    size_t        size;
} sg_proxy_pipe_t;

typedef struct {
    sg_smtp_session_t  *s;
    sg_proxy_conf_t    *conf;
    sg_smtp_client_t    cl;
    sg_connection_t    *up;
    const sg_addr_t    *peer;
    sg_str_t            peer_host;  /* for proxy_ssl_name */
    const char         *route;      /* where the backend came from */
#if (SG_HAVE_UPSTREAM_MODULE)
    sg_upstream_pick_t  pick;
    bool                picking;
    bool                listed;     /* on sg_proxy_picked */
    uint32_t            close_seq;  /* the peer's when it was picked */
    void               *picked_next;
    void               *picked_prev;
#endif
    const sg_addr_t    *addrs;      /* an address list without a group */
    size_t              naddrs;
    size_t              addr_index;
    unsigned            tries;
    sg_msec_t           started;
    sg_msec_t           attempt_started;    /* the try going on */
    sg_buf_t            ubuf;       /* backend -> client */
    sg_buf_t            nbuf;       /* client -> backend, proxy_strict:
                                       bytes passed with the line ends
                                       the reader completed, ahead of
                                       those still in s->in */
    sg_proxy_pipe_t     pipes[2];   /* 0: client -> backend, 1: back */
    sg_str_t            refusal;    /* the last attempt's, if a reply */
    sg_proxy_track_t    track;      /* the session as it passes */
    size_t              fwd;        /* of s->in, what may pass */
    unsigned            up_sessions; /* the backend connection's, this
                                        one included */
    unsigned            closing:1;  /* QUIT answered, 221 going out */
    unsigned            bail:1;     /* closing after a reply of its own
                                       (proxy_strict) */
    unsigned            answered:1; /* a reply of its own is in ubuf */
    unsigned            keep:1;     /* keep the backend connection */
    unsigned            keepable:1; /* proxy_keepalive may keep it */
    unsigned            quit_up:1;  /* tell it QUIT before the close */
    unsigned            reused:1;   /* this attempt took a kept one */
    unsigned            no_reuse:1;
    unsigned            up_eof:1;
    unsigned            down_eof:1;
    unsigned            replay_rcpt:1;
    unsigned            spliced:1;
    unsigned            splice_tried:1;  /* once: a failed pipe2() is
                                            not retried per event */
} sg_proxy_ctx_t;

static char *sg_proxy_pass(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_proxy_protocol_directive(sg_conf_t *cf,
    const sg_command_t *cmd, void *conf);
static char *sg_proxy_set_file(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_proxy_merge_conf(sg_conf_t *cf, void *prev, void *conf);
static char *sg_proxy_forward_retry(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void sg_proxy_start(sg_smtp_session_t *s, void *conf);
static void sg_proxy_next(sg_proxy_ctx_t *ctx);
static void sg_proxy_relay_handler(sg_event_t *ev);

static const sg_conf_bounds_t  sg_proxy_timeout_bounds = { 1, 86400000LL };
static const sg_conf_bounds_t  sg_proxy_next_timeout_bounds = {
    0, 86400000LL };
static const sg_conf_bounds_t  sg_proxy_buffer_bounds = { 1024, 16777216 };
static const sg_conf_bounds_t  sg_proxy_tries_bounds = { 0, 1000 };
static const sg_conf_bounds_t  sg_proxy_keepalive_bounds = { 0, 1024 };
static const sg_conf_bounds_t  sg_proxy_requests_bounds = { 1, 1000000 };
static const sg_conf_bounds_t  sg_proxy_fwd_interval_bounds = {
    100, 3600000LL };
static const sg_conf_bounds_t  sg_proxy_fwd_life_bounds = {
    1000, 365 * 86400000LL };
static const sg_conf_bounds_t  sg_proxy_fwd_conns_bounds = { 1, 1000 };
static const sg_conf_bounds_t  sg_proxy_fwd_warn_bounds = {
    0, 365 * 86400000LL };

static const sg_conf_enum_t  sg_proxy_ssl_modes[] = {
    { "off", SG_PROXY_SSL_OFF },
    { "on", SG_PROXY_SSL_ON },
    { "starttls", SG_PROXY_SSL_STARTTLS },
    { NULL, 0 }
};

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
    { "proxy_next_upstream_tries", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_num_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, next_tries), &sg_proxy_tries_bounds },
    { "proxy_next_upstream_timeout", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, next_timeout),
      &sg_proxy_next_timeout_bounds },
    { "xclient", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, xclient), NULL },
    { "proxy_buffer", SG_SRV | SG_CONF_TAKE1, sg_conf_set_size_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, buffer_size),
      &sg_proxy_buffer_bounds },
    { "proxy_splice", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, splice), NULL },
    { "proxy_strict", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, strict), NULL },
    { "proxy_pass_error_message", SG_SRV | SG_CONF_FLAG,
      sg_conf_set_flag_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, pass_error_message), NULL },
    { "proxy_ssl", SG_SRV | SG_CONF_TAKE1, sg_conf_set_enum_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, ssl),
      sg_proxy_ssl_modes },
    { "proxy_ssl_verify", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, ssl_verify), NULL },
    { "proxy_ssl_compact_state", SG_SRV | SG_CONF_FLAG,
      sg_conf_set_flag_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, ssl_compact), NULL },
    { "proxy_ssl_trusted_certificate", SG_SRV | SG_CONF_TAKE1,
      sg_proxy_set_file, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, ssl_trusted), NULL },
    { "proxy_ssl_name", SG_SRV | SG_CONF_TAKE1, sg_conf_set_str_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, ssl_name), NULL },
    { "proxy_ssl_certificate", SG_SRV | SG_CONF_TAKE1,
      sg_proxy_set_file, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, ssl_certificate), NULL },
    { "proxy_ssl_certificate_key", SG_SRV | SG_CONF_TAKE1,
      sg_proxy_set_file, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, ssl_certificate_key), NULL },
    { "proxy_smtp_auth", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, smtp_auth), NULL },
    { "proxy_protocol", SG_SRV | SG_CONF_TAKE1,
      sg_proxy_protocol_directive, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "proxy_keepalive", SG_SRV | SG_CONF_TAKE1, sg_conf_set_num_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_proxy_conf_t, keepalive),
      &sg_proxy_keepalive_bounds },
    { "proxy_keepalive_requests", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_num_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, keepalive_requests),
      &sg_proxy_requests_bounds },
    { "proxy_keepalive_timeout", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, keepalive_timeout),
      &sg_proxy_timeout_bounds },
    { "spool_forward_interval", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, fwd_interval), &sg_proxy_fwd_interval_bounds },
    { "spool_forward_retry", SG_MAIL_MAIN_CONF | SG_CONF_TAKE12,
      sg_proxy_forward_retry, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "spool_forward_lifetime", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, fwd_lifetime), &sg_proxy_fwd_life_bounds },
    { "spool_forward_delay_warning", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, fwd_delay_warning),
      &sg_proxy_fwd_warn_bounds },
    { "spool_forward_connections", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_conf_set_num_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_proxy_conf_t, fwd_connections), &sg_proxy_fwd_conns_bounds },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_proxy_module_ctx = {
    NULL, NULL, sg_proxy_create_conf, sg_proxy_merge_conf, NULL
};

#if (SG_HAVE_UPSTREAM_MODULE)
static int sg_proxy_init_process(sg_cycle_t *cycle);
static void sg_proxy_exit_process(sg_cycle_t *cycle);
#endif

sg_module_t  sg_proxy_module = {
    .name = "proxy",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_proxy_module_ctx,
    .commands = sg_proxy_commands,
#if (SG_HAVE_UPSTREAM_MODULE)
    .init_process = sg_proxy_init_process,
    .exit_process = sg_proxy_exit_process,
#endif
};

static unsigned
sg_proxy_caps(void *conf)
{
    if (((sg_proxy_conf_t *) conf)->spool) {
        return SG_SMTP_CAP_CHUNKING;      /* the spool takes BDAT itself */
    }
    return ((sg_proxy_conf_t *) conf)->seen_caps;
}

static bool
sg_proxy_routed(void *conf)
{
    return ((sg_proxy_conf_t *) conf)->pass_set;
}

static bool
sg_proxy_ext(void *conf, unsigned *ext, int64_t *size)
{
#if (SG_HAVE_UPSTREAM_MODULE)
    sg_proxy_conf_t  *pcf = conf;

    if (pcf->upstream && pcf->upstream->check) {
        return sg_upstream_caps(pcf->upstream, ext, size);
    }
#else
    (void) conf;
#endif
    (void) ext;
    (void) size;
    return false;
}

static const sg_smtp_relay_t  sg_proxy_relay = {
    "proxy", sg_proxy_start, sg_proxy_caps, sg_proxy_ext, sg_proxy_routed
};

/* Configuration. */

static char *
sg_proxy_pass(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_proxy_conf_t  *pcf = conf;
    sg_str_t         *value = cf->args->elts;

    (void) cmd;
    if (pcf->pass_set) {
        return sg_conf_duplicate(cf);
    }
    if (value[1].len == 0) {
        return sg_conf_invalid_value(cf, &value[1], NULL);
    }
    pcf->pass_set = true;
    pcf->pass_name = value[1];
    pcf->pass_file = cf->file->name;
    pcf->pass_line = sg_conf_line(cf);

    if (sg_str_has_prefix(&value[1], "spool:")) {
#if (SG_HAVE_SPOOL_MODULE)
        sg_str_t  dir;

        dir.data = value[1].data + 6;
        dir.len = value[1].len - 6;
        pcf->spool = sg_spool_create(cf, &dir);
        return pcf->spool ? SG_CONF_OK : SG_CONF_ERROR;
#else
        return sg_conf_error(cf, 0, "\"%.*s\": this build has no spool "
                             "module", SG_STR_ARG(&value[1]));
#endif
    }
    if (memchr(value[1].data, '$', value[1].len)) {
        pcf->pass_value = sg_smtp_compile_complex_value(cf, &value[1]);
        return pcf->pass_value ? SG_CONF_OK : SG_CONF_ERROR;
    }
    /* A group's name or HOST:PORT: resolved once every upstream {} of
     * the mail block is known (merge). */
    return SG_CONF_OK;
}

static char *
sg_proxy_protocol_directive(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf)
{
    sg_proxy_conf_t  *pcf = conf;
    sg_str_t         *value = cf->args->elts;

    (void) cmd;
    if (pcf->proxy_protocol != (unsigned) SG_CONF_UNSET) {
        return sg_conf_duplicate(cf);
    }
    if (sg_str_eq(&value[1], "off")) {
        pcf->proxy_protocol = 0;
    } else if (sg_str_eq(&value[1], "on") || sg_str_eq(&value[1], "v1")) {
        pcf->proxy_protocol = 1;
    } else if (sg_str_eq(&value[1], "v2")) {
        pcf->proxy_protocol = 2;
    } else {
        return sg_conf_invalid_value(cf, &value[1], "expected on, v1, v2 "
                                     "or off");
    }
    return SG_CONF_OK;
}

static char *
sg_proxy_set_file(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_proxy_file_t  *f = (sg_proxy_file_t *) ((char *) conf + cmd->offset);
    char             *rv;

    rv = sg_conf_set_path_slot(cf, cmd, conf);
    if (rv == SG_CONF_OK) {
        f->file = cf->file->name;
        f->line = sg_conf_line(cf);
    }
    return rv;
}

/* spool_forward_retry MIN [MAX] */
static char *
sg_proxy_forward_retry(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_proxy_conf_t  *pcf = conf;
    sg_str_t         *value = cf->args->elts;
    int64_t           v[2];
    size_t            i;

    (void) cmd;
    if (pcf->fwd_retry_min != SG_CONF_UNSET_MSEC) {
        return sg_conf_error(cf, 0, "\"spool_forward_retry\" is "
                             "duplicate");
    }
    for (i = 1; i < cf->args->nelts; i++) {
        if (sg_parse_time(&value[i], &v[i - 1]) != SG_OK
            || v[i - 1] < 1000 || v[i - 1] > 7 * 86400000LL)
        {
            return sg_conf_error(cf, 0, "invalid time \"%.*s\" in "
                                 "\"spool_forward_retry\": from 1s to 7d",
                                 SG_STR_ARG(&value[i]));
        }
    }
    if (cf->args->nelts == 2) {
        v[1] = v[0];
    } else if (v[1] < v[0]) {
        return sg_conf_error(cf, 0, "\"spool_forward_retry\": the longest "
                             "wait must not be shorter than the first");
    }
    pcf->fwd_retry_min = (sg_msec_t) v[0];
    pcf->fwd_retry_max = (sg_msec_t) v[1];
    return SG_CONF_OK;
}

void *
sg_proxy_create_conf(sg_conf_t *cf)
{
    sg_proxy_conf_t  *pcf;

    pcf = sg_pcalloc(cf->pool, sizeof(sg_proxy_conf_t));
    if (pcf == NULL) {
        return NULL;
    }
    pcf->connect_timeout = SG_CONF_UNSET_MSEC;
    pcf->timeout = SG_CONF_UNSET_MSEC;
    pcf->next_timeout = SG_CONF_UNSET_MSEC;
    pcf->next_tries = SG_CONF_UNSET;
    pcf->xclient = SG_CONF_UNSET;
    pcf->buffer_size = SG_CONF_UNSET_SIZE;
    pcf->splice = SG_CONF_UNSET;
    pcf->strict = SG_CONF_UNSET;
    pcf->pass_error_message = SG_CONF_UNSET;
    pcf->ssl = (unsigned) SG_CONF_UNSET;
    pcf->ssl_verify = SG_CONF_UNSET;
    pcf->ssl_compact = SG_CONF_UNSET;
    pcf->smtp_auth = SG_CONF_UNSET;
    pcf->proxy_protocol = (unsigned) SG_CONF_UNSET;
    pcf->keepalive = SG_CONF_UNSET;
    pcf->keepalive_requests = SG_CONF_UNSET;
    pcf->keepalive_timeout = SG_CONF_UNSET_MSEC;
    pcf->fwd_interval = SG_CONF_UNSET_MSEC;
    pcf->fwd_retry_min = SG_CONF_UNSET_MSEC;
    pcf->fwd_retry_max = SG_CONF_UNSET_MSEC;
    pcf->fwd_lifetime = SG_CONF_UNSET_MSEC;
    pcf->fwd_connections = SG_CONF_UNSET;
    pcf->fwd_delay_warning = SG_CONF_UNSET_MSEC;
    return pcf;
}

/* proxy_pass NAME | HOST:PORT, now that every upstream {} is known. */
static char *
sg_proxy_resolve_pass(sg_conf_t *cf, sg_proxy_conf_t *pcf)
{
#if (SG_HAVE_UPSTREAM_MODULE)
    sg_url_t  u;

    if (!pcf->pass_set || pcf->spool || pcf->pass_value || pcf->upstream) {
        return SG_CONF_OK;
    }
    pcf->upstream = sg_upstream_find(cf, &pcf->pass_name);
    if (pcf->upstream) {
        pcf->upstream->used = true;
        return SG_CONF_OK;
    }
    memset(&u, 0, sizeof(u));
    u.url = pcf->pass_name;
    u.default_port = 25;
    if (sg_parse_url(cf->pool, &u) != SG_OK) {
        return sg_conf_error_at(cf, &pcf->pass_file, pcf->pass_line,
            "%s in \"%.*s\" of the \"proxy_pass\" directive (it is neither "
            "an upstream group defined in this mail block nor a usable "
            "address)", u.err, SG_STR_ARG(&u.url));
    }
    pcf->upstream = sg_upstream_implicit(cf, &u);
    return pcf->upstream ? SG_CONF_OK : SG_CONF_ERROR;
#else
    (void) cf;
    (void) pcf;
    return SG_CONF_OK;
#endif
}

#if (SG_HAVE_SSL_MODULE)
static char *
sg_proxy_ssl_ctx(sg_conf_t *cf, sg_proxy_conf_t *pcf)
{
    SSL_CTX          *ctx;
    sg_proxy_file_t  *cert = &pcf->ssl_certificate;
    sg_proxy_file_t  *key = &pcf->ssl_certificate_key;
    char              err[512];

    ctx = sg_ssl_client_ctx(cf->pool, pcf->ssl_verify,
                            pcf->ssl_trusted.path.data
                            ? &pcf->ssl_trusted.path : NULL,
                            err, sizeof(err));
    if (ctx == NULL) {
        if (pcf->ssl_trusted.path.data) {
            return sg_conf_error_at(cf, &pcf->ssl_trusted.file,
                                    pcf->ssl_trusted.line,
                                    "proxy_ssl_trusted_certificate: %s", err);
        }
        return sg_conf_error(cf, 0, "proxy_ssl: %s", err);
    }
    if (cert->path.data) {
        if (key->path.data == NULL) {
            return sg_conf_error_at(cf, &cert->file, cert->line,
                                    "\"proxy_ssl_certificate\" is set but "
                                    "\"proxy_ssl_certificate_key\" is not");
        }
        if (SSL_CTX_use_certificate_chain_file(ctx,
                (const char *) cert->path.data) != 1)
        {
            ERR_clear_error();
            return sg_conf_error_at(cf, &cert->file, cert->line, "cannot "
                                    "load the client certificate \"%.*s\" "
                                    "(proxy_ssl_certificate)",
                                    SG_STR_ARG(&cert->path));
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, (const char *) key->path.data,
                                        SSL_FILETYPE_PEM) != 1
            || SSL_CTX_check_private_key(ctx) != 1)
        {
            ERR_clear_error();
            return sg_conf_error_at(cf, &key->file, key->line, "cannot load "
                                    "the key \"%.*s\" or it does not match "
                                    "the certificate "
                                    "(proxy_ssl_certificate_key)",
                                    SG_STR_ARG(&key->path));
        }
        if (sg_ssl_cert_dates(cf, &cert->file, cert->line,
                              "proxy_ssl_certificate",
                              SSL_CTX_get0_certificate(ctx), &cert->path,
                              &pcf->ssl_cert_info) != SG_CONF_OK)
        {
            return SG_CONF_ERROR;
        }
    } else if (key->path.data) {
        return sg_conf_error_at(cf, &key->file, key->line,
                                "\"proxy_ssl_certificate_key\" is set but "
                                "\"proxy_ssl_certificate\" is not");
    }
    /* the key-log callback that compact state learns the traffic
     * secrets from (sg_ssl_release()) */
    sg_ssl_compact_ctx(ctx, pcf->ssl_compact);
    pcf->ssl_ctx = ctx;
    return SG_CONF_OK;
}
#endif

char *
sg_proxy_merge_values(sg_conf_t *cf, sg_proxy_conf_t *prev,
    sg_proxy_conf_t *conf)
{
    sg_conf_merge_msec(conf->connect_timeout, prev->connect_timeout, 10000);
    sg_conf_merge_msec(conf->timeout, prev->timeout, 600000);
    sg_conf_merge_msec(conf->next_timeout, prev->next_timeout, 0);
    sg_conf_merge_value(conf->next_tries, prev->next_tries, 0);
    sg_conf_merge_value(conf->xclient, prev->xclient, 1);
    sg_conf_merge_size(conf->buffer_size, prev->buffer_size, 16384);
    sg_conf_merge_value(conf->splice, prev->splice, 0);
    sg_conf_merge_value(conf->strict, prev->strict, 0);
    sg_conf_merge_value(conf->pass_error_message, prev->pass_error_message,
                        0);
    if (conf->ssl == (unsigned) SG_CONF_UNSET) {
        conf->ssl = prev->ssl == (unsigned) SG_CONF_UNSET ? SG_PROXY_SSL_OFF
                                                          : prev->ssl;
    }
    sg_conf_merge_value(conf->ssl_verify, prev->ssl_verify, 0);
    if (conf->ssl_trusted.path.data == NULL) {
        conf->ssl_trusted = prev->ssl_trusted;
    }
    if (conf->ssl_name.data == NULL) {
        conf->ssl_name = prev->ssl_name;
    }
    if (conf->ssl_certificate.path.data == NULL
        && conf->ssl_certificate_key.path.data == NULL)
    {
        conf->ssl_certificate = prev->ssl_certificate;
        conf->ssl_certificate_key = prev->ssl_certificate_key;
    }
    sg_conf_merge_value(conf->ssl_compact, prev->ssl_compact, 1);
    sg_conf_merge_value(conf->smtp_auth, prev->smtp_auth, 0);
    sg_conf_merge_value(conf->keepalive, prev->keepalive, 0);
    sg_conf_merge_value(conf->keepalive_requests, prev->keepalive_requests,
                        100);
    sg_conf_merge_msec(conf->keepalive_timeout, prev->keepalive_timeout,
                       60000);
    if (conf->proxy_protocol == (unsigned) SG_CONF_UNSET) {
        conf->proxy_protocol = prev->proxy_protocol == (unsigned) SG_CONF_UNSET
                               ? 0 : prev->proxy_protocol;
    }

    sg_conf_merge_msec(conf->fwd_interval, prev->fwd_interval, 10000);
    sg_conf_merge_msec(conf->fwd_retry_min, prev->fwd_retry_min, 60000);
    sg_conf_merge_msec(conf->fwd_retry_max, prev->fwd_retry_max, 1800000);
    sg_conf_merge_msec(conf->fwd_lifetime, prev->fwd_lifetime,
                       5 * 86400000LL);
    sg_conf_merge_value(conf->fwd_connections, prev->fwd_connections, 10);
    sg_conf_merge_msec(conf->fwd_delay_warning, prev->fwd_delay_warning, 0);
    if (conf->fwd_retry_max < conf->fwd_retry_min) {
        conf->fwd_retry_max = conf->fwd_retry_min;
    }

    if (conf->ssl != SG_PROXY_SSL_OFF) {
#if (SG_HAVE_SSL_MODULE)
        if (sg_proxy_ssl_ctx(cf, conf) != SG_CONF_OK) {
            return SG_CONF_ERROR;
        }
#else
        return sg_conf_error(cf, 0, "\"proxy_ssl\" needs the ssl module");
#endif
    }

    return SG_CONF_OK;
}

/* The configuration whose forwarder has been set up; forgotten with
 * it, so that a later one at the same address is set up too. */
static sg_cycle_t  *sg_proxy_forward_cycle;

static void
sg_proxy_forward_forget(void *data)
{
    if (sg_proxy_forward_cycle == data) {
        sg_proxy_forward_cycle = NULL;
    }
}

/* A server that logs in to its backends with the client's credentials
 * ("proxy_smtp_auth on") cannot hand its messages to a forwarding
 * spool of its own group: the forwarder never has credentials, and
 * the backends that want them would refuse (or bounce) every message
 * the client was told 250 for.  (Set in the mail block, it is refused
 * by sg_proxy_forward_init, for every group.)  A group named only at
 * run time is checked as the session picks the spool (sg_proxy_next). */
static char *
sg_proxy_check_forward(sg_conf_t *cf, sg_proxy_conf_t *conf)
{
#if (SG_HAVE_UPSTREAM_MODULE && SG_HAVE_SPOOL_MODULE)
    sg_smtp_srv_conf_t  *sscf = sg_smtp_conf_current(cf);
    sg_upstream_peer_t  *p;
    size_t               i;

    if (conf->smtp_auth != 1 || conf->upstream == NULL) {
        return SG_CONF_OK;
    }
    p = conf->upstream->peers.elts;
    for (i = 0; i < conf->upstream->peers.nelts; i++) {
        if (p[i].forward) {
            return sg_conf_error_at(cf, &sscf->file, sscf->line,
                "\"proxy_smtp_auth on\" in this server cannot go with "
                "upstream \"%.*s\", which forwards its spool \"%.*s\": "
                "the forwarder has no credentials to log in with (it "
                "never stores them); let the backends trust smtpgate "
                "through XCLIENT instead",
                SG_STR_ARG(&conf->upstream->name),
                SG_STR_ARG(&p[i].addr.name));
        }
    }
#else
    (void) cf;
    (void) conf;
#endif
    return SG_CONF_OK;
}

static char *
sg_proxy_merge_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_proxy_conf_t     *prev = parent, *conf = child;
    sg_smtp_srv_conf_t  *sscf;

    if (sg_proxy_resolve_pass(cf, prev) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    if (!conf->pass_set && prev->pass_set) {
        conf->pass_set = true;
        conf->pass_name = prev->pass_name;
        conf->pass_file = prev->pass_file;
        conf->pass_line = prev->pass_line;
#if (SG_HAVE_UPSTREAM_MODULE)
        conf->upstream = prev->upstream;
#endif
        conf->pass_value = prev->pass_value;
        conf->spool = prev->spool;
    }
    if (sg_proxy_resolve_pass(cf, conf) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    if (sg_proxy_merge_values(cf, prev, conf) != SG_CONF_OK
        || (prev->smtp_auth != 1
            && sg_proxy_check_forward(cf, conf) != SG_CONF_OK))
    {
        return SG_CONF_ERROR;
    }
    /* Once per configuration: the forwarder's settings are the mail
     * block's. */
    if (sg_proxy_forward_cycle != cf->cycle) {
        sg_proxy_forward_cycle = cf->cycle;
        if (sg_pool_cleanup_add(cf->cycle->pool, sg_proxy_forward_forget,
                                cf->cycle) != SG_OK
            || sg_proxy_forward_init(cf, prev) != SG_CONF_OK)
        {
            return SG_CONF_ERROR;
        }
    }

    /* Registered even without proxy_pass: an authentication service may
     * name the backend for each session (Auth-Server, Auth-Port). */
    sscf = sg_smtp_conf_current(cf);
    sscf->relay = &sg_proxy_relay;
    sscf->relay_conf = conf;
    sscf->relay_wants_pass = conf->smtp_auth == 1;
    return SG_CONF_OK;
}

/* The handshake. */

static void
sg_proxy_close_pipes(sg_proxy_ctx_t *ctx)
{
    size_t  i;

    for (i = 0; i < 2; i++) {
        if (ctx->pipes[i].fd[0] != -1) {
            close(ctx->pipes[i].fd[0]);
            close(ctx->pipes[i].fd[1]);
            ctx->pipes[i].fd[0] = ctx->pipes[i].fd[1] = -1;
        }
    }
}

/* Kept backend connections (proxy_keepalive). */

void
sg_proxy_close_backend(sg_connection_t *c)
{
#if (SG_HAVE_SSL_MODULE)
    sg_ssl_free_connection(c);
#endif
    sg_close_connection(c);
}

/* The session ended with the client's QUIT, answered here: the backend
 * is told QUIT too, and its reply is not waited for (as Postfix's
 * smtp_skip_quit_response does): nothing can be lost at a command
 * boundary with every reply in. */
static void
sg_proxy_quit_backend(sg_connection_t *c)
{
    if (!c->close && !c->error) {
        if (!sg_connection_tls(c)) {
            /* Over TLS, QUIT goes alone: a server that reads it and
             * close_notify at once may end the session with QUIT unread
             * (aiosmtpd does), and the tickets it sent, never read,
             * make the close a reset anyway. */
            sg_connection_last_words(c);
        }
        (void) c->send(c, (u_char *) "QUIT\r\n", 6);
    }
    sg_proxy_close_backend(c);
}

static void
sg_proxy_idle_close(sg_proxy_idle_t *idle, const char *why)
{
    sg_proxy_conf_t   *pcf = idle->conf;
    sg_proxy_idle_t  **pp;

    for (pp = &pcf->idle; *pp; pp = &(*pp)->next) {
        if (*pp == idle) {
            *pp = idle->next;
            pcf->nidle--;
            break;
        }
    }
    if (why) {
        sg_log_error(SG_LOG_INFO, idle->c->log, 0, "kept connection to "
                     "backend %.*s closed: %s", (int) idle->name_len,
                     (char *) idle->name, why);
    }
    sg_proxy_close_backend(idle->c);
    free(idle);
}

/* A kept connection speaks only to answer the RSET it was sent; any
 * other byte, its close, its timeout or a draining worker end it. */
static void
sg_proxy_idle_handler(sg_event_t *ev)
{
    sg_connection_t  *c = ev->data;
    sg_proxy_idle_t  *idle = c->data;
    sg_smtp_reply_t   r;
    ssize_t           n;
    int               rc;

    if (c->close) {
        sg_proxy_idle_close(idle, NULL);
        return;
    }
    if (ev->timedout) {
        (void) c->send(c, (u_char *) "QUIT\r\n", 6);
        sg_proxy_idle_close(idle, NULL);
        return;
    }
    if (ev->write) {
        return;                       /* writable is no news when idle */
    }
    for ( ;; ) {
        if (idle->nin == sizeof(idle->in)) {
            sg_proxy_idle_close(idle, "a reply to RSET too long");
            return;
        }
        n = c->recv(c, idle->in + idle->nin, sizeof(idle->in) - idle->nin);
        if (n == SG_AGAIN) {
            return;
        }
        if (n <= 0) {
            sg_proxy_idle_close(idle, n ? "read error"
                                        : "the backend closed it");
            return;
        }
        if (idle->ready) {
            sg_proxy_idle_close(idle, "the backend sent bytes unasked");
            return;
        }
        idle->nin += (size_t) n;
        rc = sg_smtp_parse_reply(idle->in, idle->in + idle->nin,
                                 sizeof(idle->in), &r);
        if (rc == SG_ERROR) {
            /* not a reply: it would sit here, never ready, until
             * proxy_keepalive_timeout */
            sg_proxy_idle_close(idle, "RSET was not answered 250");
            return;
        }
        if (rc == SG_OK) {
            if (r.code != 250 || r.len != idle->nin) {
                sg_proxy_idle_close(idle, "RSET was not answered 250");
                return;
            }
            idle->ready = 1;
            idle->nin = 0;
        }
    }
}

/* The session is over with its backend connection at a command
 * boundary: keep it for the next session, after RSET when a mail
 * transaction may still be open. */
static void
sg_proxy_keep(sg_proxy_ctx_t *ctx)
{
    sg_proxy_conf_t  *pcf = ctx->conf;
    sg_connection_t  *c = ctx->up;
    sg_proxy_idle_t  *idle;
    sg_str_t         *xa = &ctx->cl.xclient_attrs;
    bool              clean;

    ctx->up = NULL;
    clean = sg_proxy_track_clean(&ctx->track);
    if (sg_exiting || c->close || pcf->nidle >= (size_t) pcf->keepalive
        || xa->len > sizeof(idle->xclient_attrs))
    {
        sg_proxy_quit_backend(c);
        return;
    }
    if (!clean && c->send(c, (u_char *) "RSET\r\n", 6) != 6) {
        sg_proxy_close_backend(c);
        return;
    }
    idle = calloc(1, sizeof(sg_proxy_idle_t));
    if (idle == NULL) {
        sg_proxy_close_backend(c);
        return;
    }
    idle->conf = pcf;
    idle->c = c;
    idle->ehlo = ctx->cl.ehlo;
    if (xa->len) {
        memcpy(idle->xclient_attrs, xa->data, xa->len);
    }
    idle->xclient_len = xa->len;
    idle->sessions = ctx->up_sessions;
    idle->ready = clean;
    idle->name_len = sg_min(ctx->peer->name.len, sizeof(idle->name));
    memcpy(idle->name, ctx->peer->name.data, idle->name_len);
    c->data = idle;
    c->log = sg_cycle->log;
    c->pool = NULL;
    c->idle = 1;
    c->read->handler = sg_proxy_idle_handler;
    c->write->handler = sg_proxy_idle_handler;
    c->write->ready = 0;
    sg_event_del_timer(c->write);
    sg_event_add_timer(c->read, pcf->keepalive_timeout);
    idle->next = pcf->idle;
    pcf->idle = idle;
    pcf->nidle++;
    /* An answer already waiting is read now. */
    if (c->read->ready) {
        sg_event_post(c->read);
    }
}

/* A kept connection to this peer, answered and ready, or NULL. */
static sg_proxy_idle_t *
sg_proxy_idle_take(sg_proxy_conf_t *pcf, const sg_addr_t *peer)
{
    sg_proxy_idle_t  **pp, *idle;

    for (pp = &pcf->idle; *pp; pp = &(*pp)->next) {
        idle = *pp;
        if (idle->ready && idle->c->socklen == peer->socklen
            && memcmp(&idle->c->sockaddr, &peer->sa, peer->socklen) == 0)
        {
            *pp = idle->next;
            pcf->nidle--;
            sg_event_del_timer(idle->c->read);
            return idle;
        }
    }
    return NULL;
}

#if (SG_HAVE_UPSTREAM_MODULE)

/* The worker's sessions that hold a peer of a group, for the tick that
 * closes those the operator takes out (sg_upstream_close). */
static sg_proxy_ctx_t  *sg_proxy_picked;
static sg_event_t       sg_proxy_close_tick;

static void
sg_proxy_list(sg_proxy_ctx_t *ctx)
{
    ctx->close_seq = sg_upstream_close_seq(ctx->pick.upstream,
                                           ctx->pick.peer->index);
    if (ctx->listed) {
        return;
    }
    ctx->listed = true;
    ctx->picked_prev = NULL;
    ctx->picked_next = sg_proxy_picked;
    if (sg_proxy_picked) {
        sg_proxy_picked->picked_prev = ctx;
    }
    sg_proxy_picked = ctx;
}

static void
sg_proxy_unlist(sg_proxy_ctx_t *ctx)
{
    sg_proxy_ctx_t  *prev = ctx->picked_prev, *next = ctx->picked_next;

    if (!ctx->listed) {
        return;
    }
    if (prev) {
        prev->picked_next = next;
    } else {
        sg_proxy_picked = next;
    }
    if (next) {
        next->picked_prev = prev;
    }
    ctx->listed = false;
}

static void sg_proxy_lost(sg_proxy_ctx_t *ctx, const char *text);

/* Each second: close the relayed sessions whose peer the operator took
 * out since they picked it. */
static void
sg_proxy_close_handler(sg_event_t *ev)
{
    sg_proxy_ctx_t     *ctx, *next;
    sg_smtp_session_t  *s;

    for (ctx = sg_proxy_picked; ctx; ctx = next) {
        next = ctx->picked_next;
        if (ctx->up == NULL || ctx->pick.peer == NULL
            || sg_upstream_close_seq(ctx->pick.upstream,
                                     ctx->pick.peer->index)
               == ctx->close_seq)
        {
            continue;
        }
        s = ctx->s;
        sg_log_error(SG_LOG_NOTICE, s->log, 0, "closing the session: "
                     "backend %.*s of upstream %.*s was taken out of "
                     "service (the status API)",
                     SG_STR_ARG(&ctx->peer->name),
                     SG_STR_ARG(&ctx->pick.upstream->name));
        sg_smtp_set_end(s, SG_SMTP_END_SHUTDOWN);
        sg_proxy_lost(ctx, "Backend taken out of service, try again "
                      "later");
        sg_smtp_close_session(s);
    }
    sg_event_add_timer(ev, 1000);
}

static int
sg_proxy_init_process(sg_cycle_t *cycle)
{
    size_t  n;

    if (sg_upstream_groups_of(cycle, &n) != NULL && n) {
        sg_proxy_close_tick.handler = sg_proxy_close_handler;
        sg_proxy_close_tick.log = cycle->log;
        sg_event_add_timer(&sg_proxy_close_tick, 1000);
    }
    return SG_OK;
}

static void
sg_proxy_exit_process(sg_cycle_t *cycle)
{
    (void) cycle;
    if (sg_event_timer_set(&sg_proxy_close_tick)) {
        sg_event_del_timer(&sg_proxy_close_tick);
    }
}

#endif

static void
sg_proxy_cleanup(void *data)
{
    sg_proxy_ctx_t  *ctx = data;
    bool             relayed = ctx->up != NULL;

    sg_proxy_close_pipes(ctx);
    if (ctx->up && ctx->keep) {
        sg_proxy_keep(ctx);
    }
    if (ctx->up && ctx->quit_up && !ctx->up_eof) {
        sg_proxy_quit_backend(ctx->up);
        ctx->up = NULL;
    }
    if (ctx->up) {
        sg_proxy_close_backend(ctx->up);
        ctx->up = NULL;
    }
    sg_smtp_client_close(&ctx->cl);
    sg_buf_give(&ctx->ubuf);
    sg_buf_give(&ctx->nbuf);
#if (SG_HAVE_UPSTREAM_MODULE)
    sg_proxy_unlist(ctx);
    if (ctx->picking) {
        /* A session that ends before its backend was ready says
         * nothing about the backend. */
        sg_upstream_done(&ctx->pick, relayed ? SG_UPSTREAM_OK
                                             : SG_UPSTREAM_ABORTED);
    }
#endif
}

/* "XCLIENT ADDR=... PORT=... LOGIN=... NAME=... HELO=... PROTO=ESMTP"
 * with only the attributes the backend listed, values in xtext. */
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
        if ((size_t) (p - w) == n
            && sg_strncasecmp(w, (u_char *) word, n) == 0)
        {
            return true;
        }
    }
    return false;
}

static size_t
sg_proxy_xclient(sg_smtp_client_t *cl, const sg_str_t *attrs, u_char *buf,
    size_t size)
{
    sg_proxy_ctx_t     *ctx = cl->data;
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;
    u_char             *p = buf, *last = buf + size;
    u_char              x[255 * 3 + 1];
    size_t              n;
    sg_str_t            name;

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
    if (sg_proxy_has_word(attrs, "LOGIN") && s->login.len
        && s->login.len <= 255)
    {
        n = sg_smtp_xtext_encode(x, &s->login);
        p = sg_slprintf(p, last, " LOGIN=%.*s", (int) n, (char *) x);
    } else if (sg_proxy_has_word(attrs, "LOGIN") && ctx->reused) {
        /* A kept connection still carries the last session's login: an
         * attribute left out keeps its value. */
        p = sg_slprintf(p, last, " LOGIN=[UNAVAILABLE]");
    }
    if (sg_proxy_has_word(attrs, "NAME")) {
        sg_smtp_client_host(s, &name);
        p = sg_slprintf(p, last, " NAME=%.*s", SG_STR_ARG(&name));
    }
    if (sg_proxy_has_word(attrs, "HELO") && s->helo.len
        && s->helo.len <= 255)
    {
        n = sg_smtp_xtext_encode(x, &s->helo);
        p = sg_slprintf(p, last, " HELO=%.*s", (int) n, (char *) x);
    } else if (sg_proxy_has_word(attrs, "HELO") && ctx->reused) {
        p = sg_slprintf(p, last, " HELO=[UNAVAILABLE]");
    }
    if (sg_proxy_has_word(attrs, "PROTO")) {
        p = sg_slprintf(p, last, " PROTO=%s", s->esmtp ? "ESMTP" : "SMTP");
    }
    if (p == buf + sizeof("XCLIENT") - 1) {
        return 0;                       /* no attribute we could send */
    }
    return (size_t) (p - buf);
}

static void sg_proxy_relay_start(sg_proxy_ctx_t *ctx);
static void sg_proxy_attempt(sg_proxy_ctx_t *ctx);

/* What the backend's EHLO promised of the extensions the front end only
 * advertises when the backend keeps them. */
static void
sg_proxy_learn_caps(sg_proxy_ctx_t *ctx)
{
    ctx->conf->seen_caps = ctx->cl.ehlo.caps
                           & (SG_SMTP_CAP_CHUNKING | SG_SMTP_CAP_DSN);
}

static void
sg_proxy_all_failed(sg_proxy_ctx_t *ctx, const char *why)
{
    sg_smtp_session_t  *s = ctx->s;
    bool                pass;

    pass = ctx->conf->pass_error_message && ctx->refusal.len;
    sg_log_error(SG_LOG_ERR, s->log, 0, "no backend available for %s "
                 "after %u attempt%s%s%s, answering %s: check that the "
                 "backend servers are running and reachable",
                 ctx->route, ctx->tries, ctx->tries == 1 ? "" : "s",
                 why ? ": " : "", why ? why : "",
                 pass ? "with the backend's reply (proxy_pass_error_message)"
                      : "451");
    if (pass) {
        /* the backend's own words, as nginx passes them on */
        sg_smtp_relay_refused(s, &ctx->refusal);
        return;
    }
    sg_smtp_relay_failed(s);
}

static void
sg_proxy_handshake_done(sg_smtp_client_t *cl)
{
    sg_proxy_ctx_t  *ctx = cl->data;

    if (cl->status == SG_OK) {
        ctx->s->upstream_connect_time =
            (int64_t) (sg_current_msec - ctx->attempt_started);
        sg_proxy_learn_caps(ctx);
        sg_proxy_relay_start(ctx);
        return;
    }
    if (ctx->reused && !cl->aborted) {
        /* The kept connection went stale: no fault of the peer's. */
        sg_log_error(SG_LOG_INFO, ctx->s->log, 0, "kept connection to "
                     "backend %.*s failed (%s), connecting anew",
                     SG_STR_ARG(&ctx->peer->name), cl->error);
        sg_smtp_client_close(cl);
        ctx->no_reuse = 1;
        ctx->tries--;
        sg_proxy_attempt(ctx);
        return;
    }
    sg_log_error(SG_LOG_ERR, ctx->s->log, 0, "backend %.*s failed: %s",
                 SG_STR_ARG(&ctx->peer->name), cl->error);
    ctx->refusal = cl->refusal;         /* in the session's pool */
#if (SG_HAVE_UPSTREAM_MODULE)
    if (ctx->picking) {
        sg_upstream_done(&ctx->pick, SG_UPSTREAM_FAILED);
    }
#endif
    sg_smtp_client_close(cl);
    sg_proxy_next(ctx);
}

static void
sg_proxy_attempt(sg_proxy_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;
    sg_smtp_client_t   *cl = &ctx->cl;
    sg_auth_request_t  *r = s->auth;
    sg_buf_t            in = cl->in, out = cl->out;
    sg_proxy_idle_t    *idle;
    sg_connection_t    *kc;

    ctx->attempt_started = sg_current_msec;
    memset(cl, 0, sizeof(*cl));
    cl->in = in;
    cl->out = out;
    cl->pool = s->pool;
    cl->log = s->log;
    cl->peer = ctx->peer;
    cl->ehlo_name = s->conf->server_name;
    cl->timeout = ctx->conf->connect_timeout;
    cl->tls = ctx->conf->ssl;
    cl->ssl_ctx = ctx->conf->ssl_ctx;
    cl->ssl_compact = ctx->conf->ssl_compact;
    cl->ssl_name = ctx->conf->ssl_name.len ? ctx->conf->ssl_name
                                           : ctx->peer_host;
    cl->proxy_protocol = ctx->conf->proxy_protocol;
    cl->pp_src = (struct sockaddr *) &c->sockaddr;
    cl->pp_dst = (struct sockaddr *) &c->local_sockaddr;
    if (ctx->conf->xclient) {
        cl->xclient = sg_proxy_xclient;
        cl->xclient_helo = s->helo;
        cl->xclient_esmtp = s->esmtp;
    }
    if (ctx->conf->smtp_auth == 1) {
        cl->auth = 1;
        if (r) {
            cl->auth_user = r->backend_user;
            cl->auth_pass = r->backend_pass;
        }
    }
    if (s->sasl) {
        cl->mail_line = s->sasl->mail_line;
    }
    cl->done = sg_proxy_handshake_done;
    cl->data = ctx;
    ctx->tries++;
    ctx->reused = 0;
    ctx->refusal.len = 0;
    ctx->up_sessions = 1;
    if (ctx->conf->keepalive && !ctx->no_reuse && !cl->auth
        && cl->proxy_protocol == 0)
    {
        idle = sg_proxy_idle_take(ctx->conf, ctx->peer);
        if (idle) {
            ctx->reused = 1;
            ctx->up_sessions = idle->sessions + 1;
            cl->ehlo = idle->ehlo;
            cl->xclient_attrs.len = idle->xclient_len;
            cl->xclient_attrs.data = sg_pnalloc(s->pool,
                                                idle->xclient_len + 1);
            if (cl->xclient_attrs.data == NULL) {
                sg_proxy_close_backend(idle->c);
                free(idle);
                sg_smtp_relay_failed(s);
                return;
            }
            if (idle->xclient_len) {
                memcpy(cl->xclient_attrs.data, idle->xclient_attrs,
                       idle->xclient_len);
            }
            kc = idle->c;
            free(idle);
            sg_log_debug(s->log, "backend %.*s: a kept connection, its "
                         "session %u", SG_STR_ARG(&ctx->peer->name),
                         ctx->up_sessions);
            sg_smtp_client_reuse(cl, kc);
            if (cl->finished) {
                sg_proxy_handshake_done(cl);
            }
            return;
        }
    }
    sg_smtp_client_start(cl);
    if (cl->finished) {
        sg_proxy_handshake_done(cl);
    }
}

/* The next peer: from the group, or the next address of a list. */
static void
sg_proxy_next(sg_proxy_ctx_t *ctx)
{
    sg_proxy_conf_t  *pcf = ctx->conf;

    if (ctx->tries && pcf->next_tries && ctx->tries >= pcf->next_tries) {
        sg_proxy_all_failed(ctx, "proxy_next_upstream_tries reached");
        return;
    }
    if (ctx->tries && pcf->next_timeout
        && sg_current_msec - ctx->started >= pcf->next_timeout)
    {
        sg_proxy_all_failed(ctx, "proxy_next_upstream_timeout passed");
        return;
    }
#if (SG_HAVE_UPSTREAM_MODULE)
    if (ctx->picking) {
        if (sg_upstream_get(&ctx->pick) != SG_OK) {
            sg_proxy_all_failed(ctx, ctx->tries ? NULL
                                : "every server is down or busy");
            return;
        }
        ctx->peer = &ctx->pick.peer->addr;
        ctx->s->upstream = &ctx->peer->name;
        ctx->peer_host = ctx->pick.peer->host;
        if (ctx->pick.upstream->zone) {
            sg_proxy_list(ctx);
        }
#if (SG_HAVE_SPOOL_MODULE)
        if (ctx->pick.peer->spool && ctx->pick.peer->forward
            && pcf->smtp_auth == 1)
        {
            /* The backends would see the message without the login
             * they ask for: the forwarder has no credentials. */
            sg_proxy_all_failed(ctx, "the spool is the only server left, "
                "and it forwards without logging in, while "
                "\"proxy_smtp_auth\" is on: not spooling");
            return;
        }
        if (ctx->pick.peer->spool) {
            sg_log_debug(ctx->s->log, "upstream chose %.*s",
                         SG_STR_ARG(&ctx->peer->name));
            sg_spool_start(ctx->s, ctx->pick.peer->spool);
            return;
        }
#endif
        sg_proxy_attempt(ctx);
        return;
    }
#endif
    if (ctx->addr_index >= ctx->naddrs) {
        sg_proxy_all_failed(ctx, NULL);
        return;
    }
    ctx->peer = &ctx->addrs[ctx->addr_index++];
    ctx->s->upstream = &ctx->peer->name;
    /* Named at run time: the IP address is the name TLS checks. */
    ctx->peer_host.data = sg_pnalloc(ctx->s->pool, SG_INET_ADDRSTRLEN + 1);
    if (ctx->peer_host.data == NULL) {
        sg_smtp_relay_failed(ctx->s);
        return;
    }
    ctx->peer_host.len = sg_sock_ntop((struct sockaddr *) &ctx->peer->sa,
                                      ctx->peer_host.data,
                                      SG_INET_ADDRSTRLEN + 1, false);
    sg_proxy_attempt(ctx);
}

/* A backend named at run time (a $variable, the auth service's
 * Auth-Upstream, auth_file's third column): a group's name, or an IP
 * address and port.  what names the source for the log. */
static int
sg_proxy_target(sg_proxy_ctx_t *ctx, const sg_str_t *v, const char *what)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_url_t            u;
    u_char             *p;
    size_t              n;
#if (SG_HAVE_UPSTREAM_MODULE)
    sg_upstream_t      *up;
#endif

    if (v->len == 0) {
        sg_log_error(SG_LOG_ERR, s->log, 0, "%s is empty for this session, "
                     "answering 451: check that the map (or variable) gives "
                     "every session a backend, with a \"default\" entry",
                     what);
        return SG_ERROR;
    }
#if (SG_HAVE_UPSTREAM_MODULE)
    up = sg_upstream_lookup(v);
    if (up) {
        if (sg_upstream_pick_init(&ctx->pick, up, s) != SG_OK) {
            return SG_ERROR;
        }
        ctx->picking = true;
        goto found;
    }
#endif
    memset(&u, 0, sizeof(u));
    u.url = *v;
    u.default_port = 25;
    u.no_resolve = 1;
    if (sg_parse_url(s->pool, &u) != SG_OK) {
        sg_log_error(SG_LOG_ERR, s->log, 0, "%s gave \"%.*s\", which is "
                     "neither an upstream group nor an IP address and port "
                     "(%s), answering 451: check it", what,
                     (int) sg_min(v->len, 200), (char *) v->data, u.err);
        return SG_ERROR;
    }
    ctx->addrs = u.addrs;
    ctx->naddrs = u.naddrs;

#if (SG_HAVE_UPSTREAM_MODULE)
found:
#endif
    /* "the value of "proxy_pass $backend", 10.0.0.5:25" for later lines */
    n = strlen(what) + v->len + 32;
    p = sg_pnalloc(s->pool, n);
    if (p == NULL) {
        return SG_ERROR;
    }
    *sg_slprintf(p, p + n - 1, "%s (\"%.*s\")", what,
                 (int) sg_min(v->len, 200), (char *) v->data) = '\0';
    ctx->route = (const char *) p;
    return SG_OK;
}

static void
sg_proxy_start(sg_smtp_session_t *s, void *conf)
{
    sg_proxy_conf_t  *pcf = conf;
    sg_proxy_ctx_t   *ctx;
    sg_str_t          v;
    char              from[160];

    ctx = sg_pcalloc(s->pool, sizeof(sg_proxy_ctx_t));
    if (ctx == NULL) {
        sg_smtp_relay_failed(s);
        return;
    }
    ctx->pipes[0].fd[0] = ctx->pipes[0].fd[1] = -1;
    ctx->pipes[1].fd[0] = ctx->pipes[1].fd[1] = -1;
    if (sg_pool_cleanup_add(s->pool, sg_proxy_cleanup, ctx) != SG_OK) {
        sg_smtp_relay_failed(s);
        return;
    }
    ctx->s = s;
    ctx->conf = pcf;
    ctx->started = sg_current_msec;
    s->relay_ctx = ctx;

    if (s->auth && s->auth->route_addr) {
        ctx->addrs = s->auth->route_addr;     /* Auth-Server, Auth-Port */
        ctx->naddrs = s->auth->route_naddrs ? s->auth->route_naddrs : 1;
        ctx->route = "the backend the authentication service named";
    } else if (s->auth && s->auth->route.len) {
        snprintf(from, sizeof(from), "the route of the authentication "
                 "backend (%s)", s->conf->auth->name);
        if (sg_proxy_target(ctx, &s->auth->route, from) != SG_OK)
        {
            sg_smtp_relay_failed(s);
            return;
        }
    } else if (pcf->pass_value) {
        snprintf(from, sizeof(from), "\"proxy_pass %.*s\"",
                 (int) sg_min(pcf->pass_name.len, 100),
                 (char *) pcf->pass_name.data);
        if (sg_smtp_complex_value(s, pcf->pass_value, &v) != SG_OK
            || sg_proxy_target(ctx, &v, from) != SG_OK)
        {
            sg_smtp_relay_failed(s);
            return;
        }
    } else if (pcf->spool) {
#if (SG_HAVE_SPOOL_MODULE)
        sg_spool_start(s, pcf->spool);
#else
        sg_smtp_relay_failed(s);
#endif
        return;
#if (SG_HAVE_UPSTREAM_MODULE)
    } else if (pcf->upstream) {
        ctx->route = "proxy_pass";
        if (sg_upstream_pick_init(&ctx->pick, pcf->upstream, s) != SG_OK) {
            sg_smtp_relay_failed(s);
            return;
        }
        ctx->picking = true;
#endif
    } else {
        sg_log_error(SG_LOG_ERR, s->log, 0, "no backend for this session: "
                     "the authentication service named none (Auth-Server) "
                     "and \"proxy_pass\" is not set");
        sg_smtp_relay_failed(s);
        return;
    }
    /* Without credentials no backend can take the session; trying each
     * would only mark healthy peers failed for every other session. */
    if (pcf->smtp_auth == 1
        && (s->auth == NULL || s->auth->backend_user.len == 0
            || s->auth->backend_pass.len == 0))
    {
        sg_log_error(SG_LOG_ERR, s->log, 0, "proxy_smtp_auth is on, but %s%s"
                     "%s, and the authentication backend gave no credentials "
                     "for the backend (Auth-User, Auth-Pass), answering 451",
                     s->auth_mech == SG_SMTP_AUTH_NONE
                     ? "the session is anonymous (smtp_auth none)"
                     : "the client logged in with ",
                     s->auth_mech == SG_SMTP_AUTH_NONE
                     ? "" : sg_smtp_mech_name(s->auth_mech),
                     s->auth_mech == SG_SMTP_AUTH_NONE
                     ? "" : ", which does not reveal its password");
        sg_smtp_relay_failed(s);
        return;
    }
    sg_proxy_next(ctx);
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
sg_proxy_splice_init(sg_proxy_ctx_t *ctx)
{
    size_t  i;
    int     size;

    ctx->splice_tried = 1;
    if (!ctx->conf->splice || sg_connection_tls(ctx->up)
        || sg_connection_tls(ctx->s->connection))
    {
        return;
    }
    for (i = 0; i < 2; i++) {
        if (pipe2(ctx->pipes[i].fd, O_NONBLOCK | O_CLOEXEC) != 0) {
            sg_log_error(SG_LOG_WARN, ctx->s->log, errno, "pipe2() failed, "
                         "relaying without splice");
            sg_proxy_close_pipes(ctx);
            return;
        }
        size = fcntl(ctx->pipes[i].fd[0], F_GETPIPE_SZ);
        ctx->pipes[i].size = size > 0 ? (size_t) size : 65536;
        ctx->pipes[i].bytes = 0;
    }
    ctx->spliced = 1;
    sg_log_error(SG_LOG_INFO, ctx->s->log, 0, "a large transfer: relaying "
                 "with splice from here on, %llu bytes in",
                 (unsigned long long) (ctx->s->connection->received
                                       + ctx->up->received));
}

/* The relay's reader met a MAIL (0) or RCPT (1) with args: the
 * session's checks say whether it passes. */
static int
sg_proxy_step(void *data, unsigned what, const u_char *args, size_t n)
{
    sg_proxy_ctx_t  *ctx = data;
    sg_str_t         a;

    a.data = (u_char *) args;
    a.len = n;
    return sg_smtp_step(ctx->s, what == 0 ? SG_SMTP_STEP_MAIL
                                          : SG_SMTP_STEP_RCPT, &a);
}

static void
sg_proxy_relay_start(sg_proxy_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;
    sg_smtp_client_t   *cl = &ctx->cl;
    sg_str_t           *mail = &cl->mail_reply;

    ctx->up = cl->c;
    cl->c = NULL;
    ctx->up->data = ctx;
    if (sg_smtp_relay_ready(s) != SG_OK) {
        sg_smtp_close_session(s);
        return;
    }
    if (mail->len) {
        /* The client already heard 250 for its MAIL: a refusal now is
         * its answer to RCPT, and the RCPT is not sent. */
        if (mail->data[0] == '2') {
            ctx->replay_rcpt = 1;
        } else if (sg_buf_append(&s->out, mail->data, mail->len) != SG_OK) {
            sg_smtp_close_session(s);
            return;
        }
    }

    /* Replies not yet written to the client, the 235 last, go first;
     * then anything the backend sent past the handshake. */
    if (sg_buf_take(&ctx->ubuf, ctx->conf->buffer_size) != SG_OK) {
        sg_smtp_close_session(s);
        return;
    }
    if (sg_buf_append(&ctx->ubuf, s->out.pos, sg_buf_size(&s->out)) != SG_OK
        || sg_buf_append(&ctx->ubuf, cl->in.pos, sg_buf_size(&cl->in))
           != SG_OK)
    {
        sg_log_error(SG_LOG_ALERT, s->log, 0, "proxy_buffer is smaller than "
                     "the pending replies");
        sg_smtp_close_session(s);
        return;
    }
    sg_buf_give(&s->out);             /* the relay writes from ubuf */
    sg_smtp_client_close(cl);         /* its buffers: the handshake is over */
    (void) sg_tcp_nodelay(ctx->up);

    /* The replayed RCPT goes ahead of whatever the client pipelined
     * after it. */
    if (ctx->replay_rcpt
        && sg_proxy_prepend(&s->in, &s->sasl->rcpt_line) != SG_OK)
    {
        sg_log_error(SG_LOG_ERR, s->log, 0, "no room to replay RCPT: raise "
                     "\"smtp_client_buffer\"");
        sg_smtp_close_session(s);
        return;
    }
    /* Follow the session: its QUIT is answered here, and its backend
     * connection may be kept. */
    sg_proxy_track_init(&ctx->track, ctx->replay_rcpt,
                        (cl->ehlo.caps & SG_SMTP_EXT_CHUNKING) != 0);
    /* Limits on MAIL and RCPT hold only while every command is read:
     * they make the relay strict. */
    ctx->track.strict = ctx->conf->strict || sg_smtp_steps_checked(s->conf);
    if (sg_smtp_steps_checked(s->conf)) {
        ctx->track.step = sg_proxy_step;
        ctx->track.step_data = ctx;
    }
    ctx->track.erred = mail->len && mail->data[0] != '2';
    ctx->keepable = ctx->conf->keepalive && !cl->auth
        && cl->proxy_protocol == 0
        && ctx->up_sessions < (unsigned) ctx->conf->keepalive_requests;
    if (sg_buf_size(&cl->in)) {
        ctx->track.state = SG_TRACK_OFF;
        ctx->track.why = "the backend spoke before any command";
    } else if (ctx->keepable && cl->xclient_sent && !cl->ehlo.xclient) {
        /* It speaks for this client now and would not take another
         * XCLIENT (Postfix, where the client it was told of is not
         * among smtpd_authorized_xclient_hosts). */
        ctx->keepable = 0;
        sg_log_debug(s->log, "the backend connection will not be kept: "
                     "after XCLIENT the backend offers no other");
    }
    sg_log_error(SG_LOG_INFO, s->log, 0, "backend %.*s ready%s%s%s",
                 SG_STR_ARG(&ctx->peer->name),
                 sg_connection_tls(ctx->up) ? " over TLS" : "",
                 cl->auth ? ", logged in" : "",
                 ctx->reused ? ", on a kept connection" : "");

    /* From here both connections' data is the relay context. */
    c->data = ctx;
    c->read->handler = sg_proxy_relay_handler;
    c->write->handler = sg_proxy_relay_handler;
    ctx->up->read->handler = sg_proxy_relay_handler;
    ctx->up->write->handler = sg_proxy_relay_handler;
    sg_event_del_timer(c->write);
    sg_event_del_timer(ctx->up->read);
    sg_event_del_timer(ctx->up->write);
    sg_proxy_relay_handler(c->write);
}

/* Whether the two connections have moved fewer than until bytes in all:
 * the pumps read only while they have (0: not at all). */
static bool
sg_proxy_below(sg_connection_t *src, sg_connection_t *dst, uint64_t until)
{
    return src->received + dst->received < until;
}

/* How far the pumps may read through the buffers: until the transfer is
 * large enough for splice(2) when it may switch to it (so that a fast
 * sender cannot keep one call of a pump busy for a whole message), else
 * without end. */
static uint64_t
sg_proxy_read_until(sg_proxy_ctx_t *ctx)
{
    if (ctx->spliced) {
        return 0;
    }
    if (!ctx->splice_tried && ctx->conf->splice && !ctx->track.strict
        && !sg_connection_tls(ctx->up)
        && !sg_connection_tls(ctx->s->connection))
    {
        return SG_PROXY_SPLICE_AFTER + 1;
    }
    return UINT64_MAX;
}

/* Move bytes from src into b, and from b into dst, until neither can
 * make progress (reading while sg_proxy_below(until)).  SG_ERROR on an
 * I/O error; *eof is set when src closed, *moved when a byte moved. */
static int
sg_proxy_pump(sg_connection_t *src, sg_connection_t *dst, sg_buf_t *b,
    size_t size, unsigned *eof, bool *moved, uint64_t until,
    sg_proxy_track_t *track)
{
    ssize_t  n;
    bool     drain;

    if (!*eof && src->read->ready && sg_proxy_below(src, dst, until)
        && sg_buf_take(b, size) != SG_OK)
    {
        return SG_ERROR;
    }

    /* When src has shut its side (EPOLLRDHUP), its last bytes are read
     * to the end before they are sent: a TLS client then gets them and
     * close_notify in one segment. */
    drain = src->read->pending_eof;
    for ( ;; ) {
        if (sg_buf_size(b) && dst->write->ready
            && !(drain && !*eof && src->read->ready && sg_buf_free(b)
                 && sg_proxy_below(src, dst, until)))
        {
            if (*eof && dst->tls_rec) {
                dst->last_write = 1;
            }
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
        if (!*eof && sg_buf_free(b) && src->read->ready
            && sg_proxy_below(src, dst, until))
        {
            n = src->recv(src, b->last, sg_buf_free(b));
            if (n == SG_ERROR) {
                return SG_ERROR;
            }
            if (n > 0) {
                if (track) {
                    sg_proxy_track_server(track, b->last, (size_t) n);
                }
                b->last += n;
                *moved = true;
                continue;
            }
            if (n == 0) {
                *eof = 1;
            }
            if (drain) {
                drain = false;          /* what was held back goes now */
                continue;
            }
        }
        return SG_OK;
    }
}

/* proxy_strict: the replies the relay gives itself. */
static const char *
sg_proxy_strict_reply(sg_proxy_ctx_t *ctx, unsigned reply,
    const char **why)
{
    sg_smtp_session_t  *s = ctx->s;

    switch (reply) {
    case SG_TRACK_R_AUTH:
        *why = "AUTH after the login";
        return s->login.len ? "503 5.5.1 Error: already authenticated"
                            : "503 5.5.1 Error: AUTH not allowed now";
    case SG_TRACK_R_STARTTLS:
        *why = "STARTTLS after the login";
        return s->tls ? "554 5.5.1 Error: TLS already active"
                      : "503 5.5.1 Error: STARTTLS not allowed now";
    case SG_TRACK_R_LONG:
        *why = "a command line too long";
        return "500 5.5.2 Error: line too long";
    case SG_TRACK_R_BARE_CR:
        *why = "a bare CR in a command line";
        return "500 5.5.2 Error: bare CR in a command line";
    case SG_TRACK_R_BDAT:
        *why = "a BDAT command it cannot read, so no telling where its "
               "chunk ends";
        return "521 5.5.4 Error: invalid BDAT command, closing the "
               "connection";
    case SG_TRACK_R_MAIL_REFUSED:
        *why = ctx->track.step_rc == SG_BUSY ? "a MAIL over a limit"
               : ctx->track.step_rc == SG_DECLINED
                 ? "a MAIL whose sender is not allowed"
                 : "a MAIL whose sender cannot be read";
        return sg_smtp_step_refusal(SG_SMTP_STEP_MAIL, ctx->track.step_rc);
    case SG_TRACK_R_RCPT_REFUSED:
        *why = "a RCPT over a limit";
        return sg_smtp_step_refusal(SG_SMTP_STEP_RCPT, ctx->track.step_rc);
    case SG_TRACK_R_NO_MAIL:
        *why = "a command of a transaction whose MAIL was refused";
        return "503 5.5.1 Error: need MAIL command";
    default:
        *why = "a command it does not relay";
        return "502 5.5.2 Error: command not recognized";
    }
}

/* proxy_strict: what the reader asks of the relay once the bytes it let
 * pass are on their way -- bytes dropped, a reply of its own once every
 * reply due has come (a line end it completed is staged by
 * sg_proxy_stage()).  SG_OK: done one; SG_DECLINED: none can be done
 * now. */
static ssize_t
sg_proxy_owed(sg_proxy_ctx_t *ctx, sg_buf_t *b)
{
    sg_proxy_track_t  *t = &ctx->track;
    const char        *text, *why;
    size_t             k, len;

    if (t->drop) {
        k = sg_min(t->drop, sg_buf_size(b));
        if (k == 0) {
            return SG_DECLINED;
        }
        b->pos += k;
        t->drop -= k;
        return SG_OK;
    }
    if (t->reply == SG_TRACK_R_NONE || t->pending != 0) {
        return SG_DECLINED;
    }
    text = sg_proxy_strict_reply(ctx, t->reply, &why);
    len = strlen(text);
    if (sg_buf_take(&ctx->ubuf, ctx->conf->buffer_size) != SG_OK) {
        return SG_ERROR;
    }
    if (sg_buf_free(&ctx->ubuf) < len + 2) {
        sg_buf_compact(&ctx->ubuf);
        if (sg_buf_free(&ctx->ubuf) < len + 2) {
            return SG_DECLINED;     /* the client reads its replies first */
        }
    }
    (void) sg_buf_append(&ctx->ubuf, (const u_char *) text, len);
    (void) sg_buf_append(&ctx->ubuf, (const u_char *) "\r\n", 2);
    sg_log_error(SG_LOG_INFO, ctx->s->log, 0, "answered \"%.3s\" to %s; it "
                 "did not reach the backend", text, why);
    ctx->answered = 1;
    if (t->reply == SG_TRACK_R_BDAT) {
        ctx->bail = 1;
        ctx->closing = 1;
        ctx->quit_up = 1;
        ctx->keepable = 0;
        sg_connection_last_words(ctx->s->connection);
        sg_buf_reset(b);
        ctx->fwd = 0;
    }
    t->reply = SG_TRACK_R_NONE;
    return SG_OK;
}

/* proxy_strict: the bytes the reader let pass, and the line end it
 * completed after them, copied into nbuf (behind what is there), so
 * that a message of bare LFs goes out in the usual writes rather than
 * in two per line.  Once nbuf holds bytes every byte passed goes
 * through it, to keep the order.  true: some moved. */
static bool
sg_proxy_stage(sg_proxy_ctx_t *ctx, sg_buf_t *b, size_t size)
{
    sg_proxy_track_t  *t = &ctx->track;
    sg_buf_t          *nb = &ctx->nbuf;
    size_t             k;

    if (sg_buf_take(nb, size) != SG_OK) {
        return false;
    }
    if (sg_buf_free(nb) < ctx->fwd + (t->ins != 0)) {
        sg_buf_compact(nb);
    }
    k = sg_min(ctx->fwd, sg_buf_free(nb));
    memcpy(nb->last, b->pos, k);
    nb->last += k;
    b->pos += k;
    ctx->fwd -= k;
    if (ctx->fwd == 0 && t->ins && sg_buf_free(nb)) {
        *nb->last++ = t->ins;
        t->ins = 0;
        return true;
    }
    return k != 0;
}

/* Client to backend while the session is followed: only the bytes the
 * reader let pass go out (strict: through nbuf where a line end was
 * completed); nothing is read after QUIT. */
static int
sg_proxy_pump_tracked(sg_proxy_ctx_t *ctx, sg_connection_t *src,
    sg_connection_t *dst, sg_buf_t *b, size_t size, unsigned *eof,
    bool *moved, uint64_t until)
{
    sg_proxy_track_t  *t = &ctx->track;
    sg_buf_t          *nb = &ctx->nbuf;
    ssize_t            n;
    bool               full;

    if (!*eof && src->read->ready && sg_proxy_below(src, dst, until)
        && sg_buf_take(b, size) != SG_OK)
    {
        return SG_ERROR;
    }

    for ( ;; ) {
        if (ctx->fwd < sg_buf_size(b) && t->state != SG_TRACK_QUIT
            && !sg_proxy_track_owed(t))
        {
            if (t->state == SG_TRACK_DATA && !ctx->keepable && !t->strict
                && src->received > SG_PROXY_FOLLOW_MAX)
            {
                t->state = SG_TRACK_OFF;        /* all passes from here */
                t->why = "a large message";
            }
            full = b->pos == b->start && b->last == b->end;
            ctx->fwd += sg_proxy_track_client(t, b->pos + ctx->fwd,
                                              sg_buf_size(b) - ctx->fwd,
                                              full);
        }
        /* The reader read on until it needs a line end completed: the
         * writes wait until it has read all it can. */
        if ((t->ins || (ctx->fwd && sg_buf_size(nb)))
            && sg_proxy_stage(ctx, b, size))
        {
            *moved = true;
            continue;
        }
        if (sg_buf_size(nb) && dst->write->ready) {
            n = dst->send(dst, nb->pos, sg_buf_size(nb));
            if (n == SG_ERROR) {
                return SG_ERROR;
            }
            if (n > 0) {
                nb->pos += n;
                if (nb->pos == nb->last) {
                    sg_buf_give(nb);
                }
                *moved = true;
                continue;
            }
        } else if (ctx->fwd && dst->write->ready && !sg_buf_size(nb)) {
            n = dst->send(dst, b->pos, ctx->fwd);
            if (n == SG_ERROR) {
                return SG_ERROR;
            }
            if (n > 0) {
                b->pos += n;
                ctx->fwd -= (size_t) n;
                *moved = true;
                continue;
            }
        }
        if (ctx->fwd == 0 && !t->ins && sg_proxy_track_owed(t)) {
            n = sg_proxy_owed(ctx, b);
            if (n == SG_ERROR) {
                return SG_ERROR;
            }
            if (n == SG_OK) {
                *moved = true;
                continue;
            }
        }
        if (t->state == SG_TRACK_QUIT || ctx->bail) {
            return SG_OK;
        }
        if (b->pos == b->last) {
            sg_buf_reset(b);
        } else if (sg_buf_free(b) == 0) {
            sg_buf_compact(b);
        }
        if (!*eof && sg_buf_free(b) && src->read->ready
            && sg_proxy_below(src, dst, until))
        {
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

/* The client sent QUIT and every reply has come: answer it here, and
 * keep the backend connection once the 221 is out. */
static int
sg_proxy_quit(sg_proxy_ctx_t *ctx)
{
    static const char  bye[] = "221 2.0.0 Bye\r\n";
    sg_smtp_session_t  *s = ctx->s;

    ctx->closing = 1;
    ctx->quit_up = 1;              /* even if the 221 cannot go out */
    sg_connection_last_words(s->connection);
    sg_buf_reset(&s->in);          /* nothing after QUIT counts */
    ctx->fwd = 0;
    if (sg_buf_take(&ctx->ubuf, ctx->conf->buffer_size) != SG_OK) {
        return SG_ERROR;
    }
    sg_buf_compact(&ctx->ubuf);
    return sg_buf_append(&ctx->ubuf, (u_char *) bye, sizeof(bye) - 1);
}

/* The same through a pipe with splice(2): the bytes never enter user
 * space.  A pipe that refuses more (EAGAIN while it holds bytes) may be
 * full rather than the socket empty, so the read side is only marked
 * drained when the pipe was empty. */
static int
sg_proxy_splice(sg_connection_t *src, sg_connection_t *dst,
    sg_proxy_pipe_t *p, unsigned *eof, bool *moved)
{
    ssize_t  n;

    for ( ;; ) {
        if (p->bytes && dst->write->ready) {
            n = splice(p->fd[0], NULL, dst->fd, NULL, p->bytes,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                p->bytes -= (size_t) n;
                dst->sent += (uint64_t) n;
                *moved = true;
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EINTR) {
                return SG_ERROR;
            }
            if (n < 0 && errno == EAGAIN) {
                dst->write->ready = 0;
            }
        }
        if (!*eof && src->read->ready && p->bytes < p->size) {
            n = splice(src->fd, NULL, p->fd[1], NULL, p->size - p->bytes,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                p->bytes += (size_t) n;
                src->received += (uint64_t) n;
                *moved = true;
                continue;
            }
            if (n == 0) {
                *eof = 1;
            } else if (errno == EAGAIN) {
                if (p->bytes == 0) {
                    src->read->ready = 0;
                }
            } else if (errno != EINTR) {
                return SG_ERROR;
            }
        }
        return SG_OK;
    }
}

/*
 * The relay ends without the backend (it closed, fell silent for
 * proxy_timeout, or failed) while the client is still there: the client
 * is told why with a 421 (RFC 5321 4.2.2), but only where the replies
 * it got so far end cleanly -- the session was followed, and no reply
 * is half passed on -- so that the 421 cannot read as part of another
 * reply.  Best effort: the session ends either way.
 */
static void
sg_proxy_lost(sg_proxy_ctx_t *ctx, const char *text)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *down = s->connection;
    sg_proxy_track_t   *t = &ctx->track;
    u_char              line[SG_SMTP_REPLY_MAX], *p;

    if (t->state == SG_TRACK_OFF || t->rlen != 0 || t->rhead[3] == '-'
        || sg_buf_size(&ctx->ubuf) != 0 || ctx->down_eof
        || down->last_write || !down->write->ready)
    {
        return;
    }
    p = sg_slprintf(line, line + sizeof(line) - 2, "421 4.4.2 %.*s %s",
                    SG_STR_ARG(&s->conf->server_name), text);
    *p++ = '\r';
    *p++ = '\n';
    (void) down->send(down, line, (size_t) (p - line));
}

/* What the backend keeps past RSET from a session that was followed
 * to its end, which the next session must not inherit; NULL: nothing. */
static const char *
sg_proxy_keep_refused(sg_proxy_ctx_t *ctx)
{
    /* The HELO name (and HELO's plain SMTP).  After XCLIENT the next
     * session sends XCLIENT and EHLO anew. */
    if (ctx->track.greeted && !ctx->cl.xclient_sent) {
        return "the client greeted again (HELO or EHLO)";
    }
    /* The count of errors (Postfix: smtpd_soft_error_limit delays every
     * reply, smtpd_hard_error_limit ends the connection), which XCLIENT
     * does not reset and an accepted message does. */
    if (ctx->track.erred) {
        return "the backend answered an error since the last message it "
               "accepted";
    }
    return NULL;
}

static void
sg_proxy_relay_handler(sg_event_t *ev)
{
    sg_connection_t    *c = ev->data, *down;
    sg_proxy_ctx_t     *ctx;
    sg_smtp_session_t  *s;
    unsigned            up_eof, down_eof;
    bool                moved = false, up_empty, down_empty, tracked;
    uint64_t            until;
    const char         *why;
    int                 rc;

    ctx = c->data;
    s = ctx->s;
    down = s->connection;
    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "relay idle for longer than "
                     "proxy_timeout, closing");
        sg_smtp_set_end(s, SG_SMTP_END_TIMEOUT);
        sg_proxy_lost(ctx, "Error: timeout exceeded");
        sg_smtp_close_session(s);
        return;
    }
    up_eof = ctx->up_eof;
    down_eof = ctx->down_eof;
again:
    tracked = ctx->track.state != SG_TRACK_OFF;
    until = sg_proxy_read_until(ctx);
    /* Buffered bytes (the pending replies, what the client pipelined)
     * go first; each direction is spliced once its buffer is empty. */
    rc = sg_proxy_pump(ctx->up, down, &ctx->ubuf, ctx->conf->buffer_size,
                       &up_eof, &moved, ctx->closing ? 0 : until,
                       tracked ? &ctx->track : NULL);
    s->messages = ctx->track.accepted;
    if (rc == SG_OK && ctx->closing) {
        if (sg_buf_size(&ctx->ubuf)) {
            goto wait;
        }
        if (ctx->bail) {
            sg_log_error(SG_LOG_INFO, s->log, 0, "session closed after "
                         "its last reply, backend connection told QUIT");
            sg_smtp_set_end(s, SG_SMTP_END_ERROR);
            sg_smtp_close_session(s);
            return;
        }
        why = ctx->keepable ? sg_proxy_keep_refused(ctx) : NULL;
        if (why) {
            ctx->keepable = 0;
            sg_log_debug(s->log, "the backend connection will not be "
                         "kept: %s", why);
        }
        /* The 221 is out: the session ends, its backend connection
         * stays, unless the backend spoke out of turn meanwhile. */
        ctx->keep = ctx->keepable && !up_eof
                    && ctx->track.state == SG_TRACK_QUIT;
        ctx->quit_up = !ctx->keep && !up_eof;   /* (kept: RSET instead) */
        sg_log_error(SG_LOG_INFO, s->log, 0, "client sent QUIT, backend "
                     "connection %s", ctx->keep ? "kept"
                     : ctx->quit_up ? "told QUIT and closed" : "closed");
        sg_smtp_set_end(s, SG_SMTP_END_QUIT);
        sg_smtp_close_session(s);
        return;
    }
    if (rc == SG_OK && tracked) {
        rc = sg_proxy_pump_tracked(ctx, down, ctx->up, &s->in,
                                   s->conf->client_buffer, &down_eof,
                                   &moved, until);
        if (rc == SG_OK && sg_proxy_track_done(&ctx->track) && !up_eof) {
            if (sg_proxy_quit(ctx) != SG_OK) {
                sg_smtp_close_session(s);
                return;
            }
            sg_proxy_relay_handler(ev);   /* the 221 goes out */
            return;
        }
        if (rc == SG_OK && (ctx->answered || (ctx->track.strict
                                                && ctx->track.state
                                                   == SG_TRACK_OFF)))
        {
            ctx->answered = 0;            /* its own replies go out */
            goto again;
        }
    } else if (rc == SG_OK && ctx->track.strict) {
        /* The backend's replies can no longer be followed: what it said
         * goes to the client, nothing more goes to it. */
        if (ctx->track.why) {
            sg_log_error(SG_LOG_WARN, s->log, 0, "backend %.*s: %s, so "
                         "the session cannot be followed; it ends, as "
                         "proxy_strict requires",
                         SG_STR_ARG(&ctx->peer->name), ctx->track.why);
            ctx->track.why = NULL;
        }
        if (sg_buf_size(&ctx->ubuf) == 0) {
            sg_smtp_set_end(s, SG_SMTP_END_BACKEND_ERROR);
            sg_smtp_close_session(s);
            return;
        }
    } else if (rc == SG_OK) {
        rc = sg_proxy_pump(down, ctx->up, &s->in, s->conf->client_buffer,
                           &down_eof, &moved, until, NULL);
    }
    if (ctx->track.state == SG_TRACK_OFF && ctx->track.why
        && !ctx->track.strict)
    {
        if (ctx->keepable) {
            sg_log_debug(s->log, "the backend connection will not be "
                         "kept: %s", ctx->track.why);
        } else {
            sg_log_debug(s->log, "the session is no longer followed: %s; "
                         "QUIT goes to the backend", ctx->track.why);
        }
        ctx->track.why = NULL;
    }
    up_empty = sg_buf_size(&ctx->ubuf) == 0;
    down_empty = sg_buf_size(&s->in) == 0 && sg_buf_size(&ctx->nbuf) == 0;
    /* A session of commands and small messages is cheaper through the
     * buffers than through two pipes; a large transfer switches to
     * splice(2) at once, and is no longer read.  What the buffers still
     * hold goes out first: neither side is read into them any more,
     * and a pipe is filled and emptied only once its side's buffer is
     * empty.  (Waiting for both to be empty at one moment would leave a
     * fast sender in the buffers for most of its message.) */
    if (rc == SG_OK && !ctx->splice_tried && !ctx->track.strict
        && down->received + ctx->up->received > SG_PROXY_SPLICE_AFTER
        && ctx->conf->splice && !sg_connection_tls(ctx->up)
        && !sg_connection_tls(down))
    {
        if (ctx->track.state != SG_TRACK_OFF) {
            ctx->track.state = SG_TRACK_OFF;
            ctx->track.why = "a large transfer goes through splice";
        }
        ctx->fwd = 0;
        sg_proxy_splice_init(ctx);
        if (!ctx->spliced) {
            /* No pipes: the pumps stopped reading at the mark with bytes
             * maybe waiting, which no event will announce again. */
            sg_event_post(down->read);
        }
    }
    if (rc == SG_OK && ctx->spliced) {
        if (up_empty) {
            rc = sg_proxy_splice(ctx->up, down, &ctx->pipes[1], &up_eof,
                                 &moved);
            up_empty = ctx->pipes[1].bytes == 0;
        }
        if (rc == SG_OK && down_empty) {
            rc = sg_proxy_splice(down, ctx->up, &ctx->pipes[0], &down_eof,
                                 &moved);
            down_empty = ctx->pipes[0].bytes == 0;
        }
    }
    if (rc == SG_ERROR) {
        sg_log_error(SG_LOG_INFO, s->log, errno, "relay with backend %.*s "
                     "ended by an I/O error", SG_STR_ARG(&ctx->peer->name));
        sg_proxy_lost(ctx, SG_PROXY_LOST);
        sg_smtp_close_session(s);
        return;
    }
    ctx->up_eof = up_eof;
    ctx->down_eof = down_eof;
    /* Nothing held while nothing passes. */
    if (sg_buf_size(&ctx->ubuf) == 0) {
        sg_buf_give(&ctx->ubuf);
    }
    if (sg_buf_size(&s->in) == 0) {
        sg_buf_give(&s->in);
    }
    if (ctx->up_eof && up_empty) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "backend %.*s closed the "
                     "connection", SG_STR_ARG(&ctx->peer->name));
        sg_smtp_set_end(s, SG_SMTP_END_BACKEND_CLOSED);
        sg_proxy_lost(ctx, SG_PROXY_LOST);
        sg_smtp_close_session(s);
        return;
    }
    if (ctx->down_eof && down_empty) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client closed the connection");
        sg_smtp_set_end(s, SG_SMTP_END_CLOSED);
        sg_smtp_close_session(s);
        return;
    }
wait:
    if (moved || !sg_event_timer_set(down->read)) {
        sg_event_add_timer(down->read, ctx->conf->timeout);
    }
}
