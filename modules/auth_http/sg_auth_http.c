/*
 * sg_auth_http.c: the HTTP authentication backend, wire-compatible with
 * nginx's mail auth_http: the same request headers (Auth-Method,
 * Auth-User, Auth-Pass escaped the same way, Client-IP, Auth-SMTP-*,
 * Auth-SSL-*) and the same answers (Auth-Status, Auth-Server, Auth-Port,
 * Auth-Wait, Auth-Error-Code, Auth-User, Auth-Pass), so services written
 * for nginx work unchanged.
 *
 * Beyond nginx: requests go out over HTTP/1.1 keep-alive connections
 * that each worker keeps per service (no TCP connection per login);
 * several services are tried in order, and one that fails is skipped
 * for auth_http_fail_timeout; every answer is parsed strictly and every
 * failure (down, slow, garbage) is a temporary failure that names its
 * cause in the log.  Host names in Auth-Server are looked up on the
 * worker's thread pool, never in the event loop.  Every block jansson
 * frees is wiped first: requests and answers carry passwords.
 */
#include "sg_smtp.h"
#include "sg_http_parse.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif
#include "sg_auth_http.h"
#include <sys/un.h>
#include <netdb.h>
#include <malloc.h>
#include <jansson.h>

#define SG_AUTH_HTTP_HEAD_MAX   8192

#define SG_AUTH_HTTP_NGINX      0
#define SG_AUTH_HTTP_JSON       1

typedef struct sg_auth_http_conn_s  sg_auth_http_conn_t;

typedef struct {
    sg_str_t               url;
    sg_addr_t              addr;
    sg_str_t               host;        /* the Host header */
    sg_str_t               hostname;    /* without the port: TLS name */
    sg_str_t               uri;
    unsigned               https:1;
    /* per worker, at run time */
    sg_msec_t              failed_until;
    int                    slot;        /* in the stats zone; -1: not
                                           looked up yet */
    sg_auth_http_conn_t   *idle;        /* kept-alive connections */
    size_t                 nidle;
} sg_auth_http_server_t;

typedef struct {
    sg_array_t            *servers;     /* sg_auth_http_server_t */
    sg_array_t            *headers;     /* sg_str_t: "Name: value\r\n" */
    sg_msec_t              timeout;
    sg_msec_t              fail_timeout;
    int64_t                keepalive;
    sg_msec_t              keepalive_timeout;
    int                    pass_client_cert;
    int                    ssl_verify;
    unsigned               format;      /* SG_AUTH_HTTP_NGINX / _JSON */
    sg_str_t               ssl_trusted;
    void                  *ssl_ctx;     /* SSL_CTX for https:// */
    sg_shm_zone_t         *stats;       /* sg_auth_http_stats_t */
} sg_auth_http_conf_t;

/* Every service's counts, by URL, shared by the workers. */
#define SG_AUTH_HTTP_STAT_SLOTS  128
#define SG_AUTH_HTTP_STAT_URL    232

typedef struct {
    char                   url[SG_AUTH_HTTP_STAT_URL];
    sg_auth_http_counts_t  n;
} sg_auth_http_stat_t;

typedef struct {
    uint32_t               nslots;
    sg_auth_http_stat_t    slot[SG_AUTH_HTTP_STAT_SLOTS];
} sg_auth_http_stats_t;

/* One connection to a service, idle in its server's list or busy with
 * one request.  Lives outside any session: malloc'd, freed on close. */
struct sg_auth_http_conn_s {
    sg_connection_t        *c;
    sg_auth_http_server_t  *server;
    sg_auth_http_conn_t    *next;
    void                   *ctx;        /* the request, while busy */
    sg_buf_t                in;
    u_char                  data[SG_AUTH_HTTP_HEAD_MAX];
};

typedef struct {
    sg_auth_request_t      *r;
    sg_auth_http_conf_t    *conf;
    size_t                  server;     /* index being tried */
    sg_auth_http_conn_t    *hc;
    sg_str_t                req;
    size_t                  sent;
    sg_event_t              start;      /* posted by start() */
    sg_task_t              *resolving;  /* Auth-Server name lookup */
    unsigned                reused:1;
    unsigned                retried:1;
    unsigned                connected:1;
    unsigned                secured:1;  /* TLS up (or not needed) */
} sg_auth_http_ctx_t;

static char *sg_auth_http(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_auth_http_header(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_auth_http_create_conf(sg_conf_t *cf);
static char *sg_auth_http_merge_conf(sg_conf_t *cf, void *prev, void *conf);
static int sg_auth_http_start(sg_auth_request_t *r, void *conf);
static void sg_auth_http_cancel(sg_auth_request_t *r, void *conf);
static void sg_auth_http_next(sg_auth_http_ctx_t *ctx);

static const sg_conf_bounds_t  sg_auth_http_timeout_bounds = { 1, 3600000 };
static const sg_conf_enum_t    sg_auth_http_formats[] = {
    { "nginx", SG_AUTH_HTTP_NGINX },
    { "json", SG_AUTH_HTTP_JSON },
    { NULL, 0 }
};
static const sg_conf_bounds_t  sg_auth_http_keepalive_bounds = { 0, 1024 };

#define SG_SRV  (SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF)

static const sg_command_t  sg_auth_http_commands[] = {
    { "auth_http", SG_SRV | SG_CONF_1MORE, sg_auth_http,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "auth_http_header", SG_SRV | SG_CONF_TAKE2, sg_auth_http_header,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "auth_http_timeout", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_auth_http_conf_t, timeout),
      &sg_auth_http_timeout_bounds },
    { "auth_http_fail_timeout", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_auth_http_conf_t, fail_timeout),
      &sg_auth_http_timeout_bounds },
    { "auth_http_keepalive", SG_SRV | SG_CONF_TAKE1, sg_conf_set_num_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_auth_http_conf_t, keepalive),
      &sg_auth_http_keepalive_bounds },
    { "auth_http_keepalive_timeout", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_auth_http_conf_t, keepalive_timeout),
      &sg_auth_http_timeout_bounds },
    { "auth_http_format", SG_SRV | SG_CONF_TAKE1, sg_conf_set_enum_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_auth_http_conf_t, format),
      sg_auth_http_formats },
    { "auth_http_ssl_verify", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_auth_http_conf_t, ssl_verify),
      NULL },
    { "auth_http_ssl_trusted_certificate", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_path_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_auth_http_conf_t, ssl_trusted), NULL },
    { "auth_http_pass_client_cert", SG_SRV | SG_CONF_FLAG,
      sg_conf_set_flag_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_auth_http_conf_t, pass_client_cert), NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_auth_http_module_ctx = {
    NULL, NULL, sg_auth_http_create_conf, sg_auth_http_merge_conf, NULL
};

static int sg_auth_http_init_module(sg_cycle_t *cycle);

sg_module_t  sg_auth_http_module = {
    .name = "auth_http",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_auth_http_module_ctx,
    .commands = sg_auth_http_commands,
    .init_module = sg_auth_http_init_module,
};

static void *
sg_auth_http_json_alloc(size_t size)
{
    return malloc(size);
}

/* jansson frees without clearing, and the parser's and printer's own
 * buffers (not only the values) hold copies of the "pass" of a request
 * or an answer: each block is wiped whole before it goes back. */
static void
sg_auth_http_json_release(void *p)
{
    if (p != NULL) {
        sg_wipe(p, malloc_usable_size(p));
        free(p);
    }
}

static int
sg_auth_http_init_module(sg_cycle_t *cycle)
{
    (void) cycle;
    json_set_alloc_funcs(sg_auth_http_json_alloc, sg_auth_http_json_release);
    return SG_OK;
}

static const sg_smtp_auth_backend_t  sg_auth_http_backend = {
    "auth_http",
    SG_SMTP_AUTH_MECHS | SG_SMTP_AUTH_NONE,
    true,
    sg_auth_http_start, sg_auth_http_cancel
};

/* Configuration. */

static char *
sg_auth_http_unix(sg_conf_t *cf, sg_auth_http_server_t *srv, sg_str_t *v)
{
    struct sockaddr_un  *sun;
    u_char              *path = v->data + 5, *end = v->data + v->len, *colon;
    size_t               n;

    colon = memchr(path, ':', (size_t) (end - path));
    n = (size_t) ((colon ? colon : end) - path);
    sun = (struct sockaddr_un *) &srv->addr.sa;
    if (n == 0 || n >= sizeof(sun->sun_path)) {
        return sg_conf_invalid_value(cf, v, "the socket path is empty or "
                                     "too long");
    }
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, n);
    srv->addr.socklen = (socklen_t) sizeof(struct sockaddr_un);
    srv->addr.name = *v;
    sg_str_set(&srv->host, "localhost");
    if (colon) {
        srv->uri.data = colon + 1;
        srv->uri.len = (size_t) (end - colon - 1);
    }
    return SG_CONF_OK;
}

static char *
sg_auth_http_url(sg_conf_t *cf, sg_auth_http_server_t *srv, sg_str_t *v)
{
    sg_url_t   u;
    u_char    *slash;
    size_t     skip = 0;

    srv->url = *v;
    sg_str_set(&srv->uri, "/");
    if (v->len > 5 && memcmp(v->data, "unix:", 5) == 0) {
        return sg_auth_http_unix(cf, srv, v);
    }
    if (v->len > 8 && sg_strncasecmp(v->data, (u_char *) "https://", 8) == 0)
    {
#if (SG_HAVE_SSL_MODULE)
        srv->https = 1;
        skip = 8;
#else
        return sg_conf_invalid_value(cf, v, "https:// needs the ssl module, "
                                     "left out of this build");
#endif
    } else if (v->len > 7
               && sg_strncasecmp(v->data, (u_char *) "http://", 7) == 0)
    {
        skip = 7;
    } else if (memmem(v->data, v->len, "://", 3) != NULL) {
        return sg_conf_invalid_value(cf, v, "it must start with http://, "
                                     "https:// or unix:");
    }
    /* Without a scheme it is http://, as in nginx, whose documentation
     * writes "auth_http localhost:9000/cgi-bin/nginxauth.cgi". */
    memset(&u, 0, sizeof(u));
    u.url.data = v->data + skip;
    u.url.len = v->len - skip;
    slash = memchr(u.url.data, '/', u.url.len);
    if (slash) {
        srv->uri.data = slash;
        srv->uri.len = (size_t) (v->data + v->len - slash);
        u.url.len = (size_t) (slash - u.url.data);
    }
    srv->host = u.url;
    u.default_port = srv->https ? 443 : 80;
    if (sg_parse_url(cf->pool, &u) != SG_OK) {
        return sg_conf_error(cf, 0, "%s in \"%.*s\" of the \"auth_http\" "
                             "directive", u.err, SG_STR_ARG(v));
    }
    srv->addr = u.addrs[0];
    srv->hostname = u.host;
    return SG_CONF_OK;
}

static char *
sg_auth_http(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_auth_http_conf_t    *ahc = conf;
    sg_auth_http_server_t  *srv;
    sg_str_t               *value = cf->args->elts;
    size_t                  i;
    char                   *rv;

    (void) cmd;
    if (ahc->servers == NULL) {
        ahc->servers = sg_array_create(cf->pool, 2,
                                       sizeof(sg_auth_http_server_t));
        if (ahc->servers == NULL) {
            return SG_CONF_ERROR;
        }
    }
    for (i = 1; i < cf->args->nelts; i++) {
        srv = sg_array_push(ahc->servers);
        if (srv == NULL) {
            return SG_CONF_ERROR;
        }
        srv->slot = -1;
        rv = sg_auth_http_url(cf, srv, &value[i]);
        if (rv != SG_CONF_OK) {
            return rv;
        }
    }
    return SG_CONF_OK;
}

static char *
sg_auth_http_header(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_auth_http_conf_t  *ahc = conf;
    sg_str_t             *value = cf->args->elts, *h;
    size_t                i;

    (void) cmd;
    for (i = 0; i < value[1].len; i++) {
        u_char ch = value[1].data[i];

        if (ch <= 0x20 || ch >= 0x7f || ch == ':') {
            return sg_conf_invalid_value(cf, &value[1], "a header name is "
                                         "printable, without spaces or ':'");
        }
    }
    for (i = 0; i < value[2].len; i++) {
        if (value[2].data[i] < 0x20 || value[2].data[i] == 0x7f) {
            return sg_conf_invalid_value(cf, &value[2], "a header value "
                                         "has no control characters");
        }
    }
    if (ahc->headers == NULL) {
        ahc->headers = sg_array_create(cf->pool, 4, sizeof(sg_str_t));
    }
    h = ahc->headers ? sg_array_push(ahc->headers) : NULL;
    if (h == NULL) {
        return SG_CONF_ERROR;
    }
    h->len = value[1].len + 2 + value[2].len + 2;
    h->data = sg_pnalloc(cf->pool, h->len + 1);
    if (h->data == NULL) {
        return SG_CONF_ERROR;
    }
    snprintf((char *) h->data, h->len + 1, "%.*s: %.*s\r\n",
             SG_STR_ARG(&value[1]), SG_STR_ARG(&value[2]));
    return SG_CONF_OK;
}

/* One client TLS context for the https:// services of this conf. */
static char *
sg_auth_http_tls(sg_conf_t *cf, sg_auth_http_conf_t *conf)
{
#if (SG_HAVE_SSL_MODULE)
    sg_auth_http_server_t  *srv = conf->servers->elts;
    sg_smtp_srv_conf_t     *sscf = sg_smtp_conf_current(cf);
    char                    err[256];
    size_t                  i;

    for (i = 0; i < conf->servers->nelts; i++) {
        if (srv[i].https && conf->ssl_ctx == NULL) {
            conf->ssl_ctx = sg_ssl_client_ctx(cf->pool, conf->ssl_verify,
                                              &conf->ssl_trusted, err,
                                              sizeof(err));
            if (conf->ssl_ctx == NULL) {
                return sg_conf_error_at(cf, &sscf->file, sscf->line,
                                        "auth_http: %s", err);
            }
        }
    }
#else
    (void) cf;
    (void) conf;
#endif
    return SG_CONF_OK;
}

static void *
sg_auth_http_create_conf(sg_conf_t *cf)
{
    sg_auth_http_conf_t  *ahc;

    ahc = sg_pcalloc(cf->pool, sizeof(sg_auth_http_conf_t));
    if (ahc == NULL) {
        return NULL;
    }
    ahc->timeout = SG_CONF_UNSET_MSEC;
    ahc->fail_timeout = SG_CONF_UNSET_MSEC;
    ahc->keepalive = SG_CONF_UNSET;
    ahc->keepalive_timeout = SG_CONF_UNSET_MSEC;
    ahc->pass_client_cert = SG_CONF_UNSET;
    ahc->ssl_verify = SG_CONF_UNSET;
    ahc->format = (unsigned) SG_CONF_UNSET;
    return ahc;
}

static int
sg_auth_http_stats_init(sg_shm_zone_t *zone, void *old_data)
{
    zone->data = zone->addr;
    if (old_data == NULL) {
        memset(zone->addr, 0, sizeof(sg_auth_http_stats_t));
    }
    return SG_OK;
}

/* The slot of srv's URL in the zone, or -1; call with it locked. */
static int
sg_auth_http_find(sg_auth_http_stats_t *st, const sg_auth_http_server_t *srv)
{
    uint32_t  i;
    size_t    len = sg_min(srv->url.len, SG_AUTH_HTTP_STAT_URL - 1);

    for (i = 0; i < st->nslots && i < SG_AUTH_HTTP_STAT_SLOTS; i++) {
        if (strlen(st->slot[i].url) == len
            && memcmp(st->slot[i].url, srv->url.data, len) == 0)
        {
            return (int) i;
        }
    }
    return -1;
}

/* The counts of srv in the zone (looked up by URL, a slot taken for a
 * new one), or NULL when the zone is full; call with the zone locked. */
static sg_auth_http_counts_t *
sg_auth_http_counts(sg_auth_http_stats_t *st, sg_auth_http_server_t *srv)
{
    size_t  len = sg_min(srv->url.len, SG_AUTH_HTTP_STAT_URL - 1);

    if (srv->slot < 0) {
        srv->slot = sg_auth_http_find(st, srv);
    }
    if (srv->slot >= 0) {
        return &st->slot[srv->slot].n;
    }
    if (st->nslots >= SG_AUTH_HTTP_STAT_SLOTS) {
        return NULL;
    }
    memcpy(st->slot[st->nslots].url, srv->url.data, len);
    st->slot[st->nslots].url[len] = '\0';
    srv->slot = (int) st->nslots++;
    return &st->slot[srv->slot].n;
}

/* Count an answer of srv, or a failure (which it is then skipped for). */
static void
sg_auth_http_count(sg_auth_http_conf_t *conf, sg_auth_http_server_t *srv,
    bool failed)
{
    sg_auth_http_counts_t  *n;
    struct timespec         ts;

    if (conf->stats == NULL || conf->stats->data == NULL) {
        return;
    }
    sg_shm_lock(conf->stats);
    n = sg_auth_http_counts(conf->stats->data, srv);
    if (n != NULL) {
        if (failed) {
            n->failed++;
            (void) clock_gettime(CLOCK_REALTIME, &ts);
            n->down_until = (uint64_t) ts.tv_sec * 1000
                            + (uint64_t) ts.tv_nsec / 1000000
                            + conf->fail_timeout;
        } else {
            n->answered++;
            n->down_until = 0;
        }
    }
    sg_shm_unlock(conf->stats);
}

bool
sg_auth_http_service(sg_smtp_srv_conf_t *sscf, size_t i, sg_str_t *url,
    sg_auth_http_counts_t *counts)
{
    sg_auth_http_conf_t    *conf = sscf->auth_conf;
    sg_auth_http_server_t  *srv;
    sg_auth_http_stats_t   *st;
    int                     k;

    if (sscf->auth != &sg_auth_http_backend || conf->servers == NULL
        || i >= conf->servers->nelts)
    {
        return false;
    }
    srv = sg_array_elt(conf->servers, sg_auth_http_server_t, i);
    *url = srv->url;
    memset(counts, 0, sizeof(*counts));
    if (conf->stats == NULL || conf->stats->data == NULL) {
        return true;
    }
    /* looked up without taking a slot for a service never asked */
    st = conf->stats->data;
    sg_shm_lock(conf->stats);
    k = sg_auth_http_find(st, srv);
    if (k >= 0) {
        *counts = st->slot[k].n;
    }
    sg_shm_unlock(conf->stats);
    return true;
}

static char *
sg_auth_http_merge_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_auth_http_conf_t  *prev = parent, *conf = child;
    sg_smtp_srv_conf_t   *sscf;

    if (conf->servers == NULL) {
        conf->servers = prev->servers;  /* shared: one pool per worker */
    }
    if (conf->headers == NULL) {
        conf->headers = prev->headers;
    }
    sg_conf_merge_msec(conf->timeout, prev->timeout, 10000);
    sg_conf_merge_msec(conf->fail_timeout, prev->fail_timeout, 10000);
    /* Enough for the logins a busy worker has in flight at once: with
     * fewer, each burst closes connections that the next one opens
     * again (a connect, a close and a TIME_WAIT each). */
    sg_conf_merge_value(conf->keepalive, prev->keepalive, 32);
    sg_conf_merge_msec(conf->keepalive_timeout, prev->keepalive_timeout,
                       60000);
    sg_conf_merge_value(conf->pass_client_cert, prev->pass_client_cert, 0);
    sg_conf_merge_value(conf->ssl_verify, prev->ssl_verify, 1);
    if (conf->format == (unsigned) SG_CONF_UNSET) {
        conf->format = prev->format == (unsigned) SG_CONF_UNSET
                       ? SG_AUTH_HTTP_NGINX : prev->format;
    }
    if (conf->ssl_trusted.data == NULL) {
        conf->ssl_trusted = prev->ssl_trusted;
    }
    if (conf->servers == NULL) {
        return SG_CONF_OK;
    }
    if (sg_auth_http_tls(cf, conf) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    if (conf->stats == NULL) {
        sg_str_t  name = sg_string("auth_http");

        conf->stats = sg_shm_zone_add(cf, &name,
                                      (sizeof(sg_auth_http_stats_t) + 4095)
                                      & ~(size_t) 4095,
                                      &sg_auth_http_module);
        if (conf->stats == NULL) {
            return SG_CONF_ERROR;
        }
        conf->stats->init = sg_auth_http_stats_init;
    }
    sscf = sg_smtp_conf_current(cf);
    if (sscf->auth && sscf->auth != &sg_auth_http_backend) {
        return sg_conf_error_at(cf, &sscf->file, sscf->line, "more than one "
                                "authentication backend for this server: "
                                "\"auth_file\" and \"auth_http\"");
    }
    sscf->auth = &sg_auth_http_backend;
    sscf->auth_conf = conf;
    return SG_CONF_OK;
}

/* The request. */

static const char *
sg_auth_http_method(unsigned mech)
{
    switch (mech) {
    /* As nginx: LOGIN is reported as "plain" (services written for
     * nginx know no "login"), and both carry the same user and pass. */
    case SG_SMTP_AUTH_PLAIN:       return "plain";
    case SG_SMTP_AUTH_LOGIN:       return "plain";
    case SG_SMTP_AUTH_CRAM_MD5:    return "cram-md5";
    case SG_SMTP_AUTH_XOAUTH2:     return "xoauth2";
    case SG_SMTP_AUTH_OAUTHBEARER: return "oauthbearer";
    case SG_SMTP_AUTH_EXTERNAL:    return "external";
    }
    return "none";
}

/* Values nginx sends as they are (SMTP lines, DNs): only bytes that
 * cannot stand in a header are escaped, and those never occur in what
 * the parsers let through. */
static const uint32_t  sg_auth_http_raw[8] = {
    0xffffffff, 0, 0, 0x80000000, 0, 0, 0, 0
};

#define SG_ESC_NONE  0
#define SG_ESC_AUTH  1          /* Auth-User, Auth-Pass: nginx's escaping */
#define SG_ESC_RAW   2          /* control bytes only */

/* Append "Name: value\r\n". */
static u_char *
sg_auth_http_put(u_char *p, const char *name, const sg_str_t *v, int esc)
{
    size_t  n = strlen(name);

    memcpy(p, name, n);
    p += n;
    *p++ = ':';
    *p++ = ' ';
    if (esc == SG_ESC_AUTH) {
        p += sg_http_auth_escape(p, v);
    } else if (esc == SG_ESC_RAW) {
        p += sg_escape_hex(p, v, '%', sg_auth_http_raw);
    } else if (v->len) {
        memcpy(p, v->data, v->len);
        p += v->len;
    }
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* PROXY protocol: what the header said, as nginx sends it, whether or
 * not set_real_ip_from made its source the client (Client-IP). */
#define SG_AUTH_HTTP_PP_ROOM  256

static void
sg_auth_http_pp_addr(const struct sockaddr *sa, u_char *text, size_t size,
    sg_str_t *addr, sg_str_t *port)
{
    addr->data = text;
    addr->len = sg_sock_ntop(sa, text, SG_INET_ADDRSTRLEN + 1, false);
    port->data = text + addr->len;
    port->len = (size_t) (sg_slprintf(port->data, text + size, "%d",
                                      sg_sockaddr_port(sa)) - port->data);
}

static u_char *
sg_auth_http_put_proxy_protocol(u_char *p, const sg_proxy_protocol_t *pp)
{
    u_char    text[SG_INET_ADDRSTRLEN + 16];
    sg_str_t  addr, port;

    sg_auth_http_pp_addr((const struct sockaddr *) &pp->hdr.src, text,
                         sizeof(text), &addr, &port);
    p = sg_auth_http_put(p, "Proxy-Protocol-Addr", &addr, SG_ESC_NONE);
    p = sg_auth_http_put(p, "Proxy-Protocol-Port", &port, SG_ESC_NONE);
    sg_auth_http_pp_addr((const struct sockaddr *) &pp->hdr.dst, text,
                         sizeof(text), &addr, &port);
    p = sg_auth_http_put(p, "Proxy-Protocol-Server-Addr", &addr,
                         SG_ESC_NONE);
    p = sg_auth_http_put(p, "Proxy-Protocol-Server-Port", &port,
                         SG_ESC_NONE);
    return p;
}

/* Room for a header: name, ": ", the value escaped, CRLF. */
#define sg_auth_http_room(name, v)                                           \
    (sizeof(name) + 3 + sg_http_auth_escape(NULL, v))

static int
sg_auth_http_build(sg_auth_http_ctx_t *ctx, sg_auth_http_server_t *srv)
{
    sg_auth_request_t  *r = ctx->r;
    sg_connection_t    *c = r->connection;
    sg_str_t            v, *h;
    u_char              num[32], *p;
    size_t              len, i;
#if (SG_HAVE_SSL_MODULE)
    sg_ssl_facts_t      f;
    sg_str_t            pem = sg_null_string;

    memset(&f, 0, sizeof(f));
    if (sg_connection_tls(c)) {
        sg_ssl_cert_facts(c, r->pool, &f);
        if (ctx->conf->pass_client_cert) {
            sg_ssl_cert_pem(c, r->pool, &pem);
        }
    }
#endif

    len = sizeof("GET  HTTP/1.1\r\nHost: \r\n\r\n") + srv->uri.len
          + srv->host.len + 1024
          + sg_auth_http_room("Auth-User", &r->user)
          + sg_auth_http_room("Auth-Pass", &r->pass)
          + sg_auth_http_room("Auth-Salt", &r->salt)
          + sg_auth_http_room("Auth-SMTP-Helo", &r->helo)
          + sg_auth_http_room("Client-Host", &r->host)
          + sg_auth_http_room("Auth-SMTP-From", &r->mail_from)
          + sg_auth_http_room("Auth-SMTP-To", &r->rcpt_to)
          + (c->proxy_protocol ? SG_AUTH_HTTP_PP_ROOM : 0);
#if (SG_HAVE_SSL_MODULE)
    len += f.verify.len + 3 * (f.subject.len + f.issuer.len) + f.serial.len
           + f.fingerprint.len + 256 + sg_http_auth_escape(NULL, &pem);
#endif
    for (i = 0; ctx->conf->headers && i < ctx->conf->headers->nelts; i++) {
        len += sg_array_elt(ctx->conf->headers, sg_str_t, i)->len;
    }
    p = sg_pnalloc(r->pool, len);
    if (p == NULL) {
        return SG_ERROR;
    }
    ctx->req.data = p;
    p = sg_slprintf(p, p + len, "GET %.*s HTTP/1.1\r\nHost: %.*s\r\n",
                    SG_STR_ARG(&srv->uri), SG_STR_ARG(&srv->host));
    v.data = (u_char *) sg_auth_http_method(r->mech);
    v.len = strlen((char *) v.data);
    p = sg_auth_http_put(p, "Auth-Method", &v, SG_ESC_NONE);
    p = sg_auth_http_put(p, "Auth-User", &r->user, SG_ESC_AUTH);
    p = sg_auth_http_put(p, "Auth-Pass", &r->pass, SG_ESC_AUTH);
    if (r->salt.len) {
        p = sg_auth_http_put(p, "Auth-Salt", &r->salt, SG_ESC_RAW);
    }
    sg_str_set(&v, "smtp");
    p = sg_auth_http_put(p, "Auth-Protocol", &v, SG_ESC_NONE);
    v.data = num;
    v.len = (size_t) (sg_slprintf(num, num + sizeof(num), "%u",
                                  r->attempt ? r->attempt : 1) - num);
    p = sg_auth_http_put(p, "Auth-Login-Attempt", &v, SG_ESC_NONE);
    p = sg_auth_http_put(p, "Client-IP", &c->addr_text, SG_ESC_NONE);
    v = r->host;
    if (v.len == 0) {
        sg_str_set(&v, "[UNAVAILABLE]");
    }
    p = sg_auth_http_put(p, "Client-Host", &v, SG_ESC_NONE);
    if (c->proxy_protocol) {
        p = sg_auth_http_put_proxy_protocol(p, c->proxy_protocol);
    }
#if (SG_HAVE_SSL_MODULE)
    if (sg_connection_tls(c)) {
        sg_str_set(&v, "on");
        p = sg_auth_http_put(p, "Auth-SSL", &v, SG_ESC_NONE);
        v.data = (u_char *) sg_ssl_protocol(c);
        v.len = strlen((char *) v.data);
        p = sg_auth_http_put(p, "Auth-SSL-Protocol", &v, SG_ESC_NONE);
        v.data = (u_char *) sg_ssl_cipher(c);
        v.len = strlen((char *) v.data);
        p = sg_auth_http_put(p, "Auth-SSL-Cipher", &v, SG_ESC_NONE);
        if (f.verify.len) {
            p = sg_auth_http_put(p, "Auth-SSL-Verify", &f.verify, SG_ESC_NONE);
        }
        if (f.subject.len) {
            p = sg_auth_http_put(p, "Auth-SSL-Subject", &f.subject,
                                 SG_ESC_RAW);
            p = sg_auth_http_put(p, "Auth-SSL-Issuer", &f.issuer,
                                 SG_ESC_RAW);
            p = sg_auth_http_put(p, "Auth-SSL-Serial", &f.serial, SG_ESC_NONE);
            if (pem.len) {
                /* as nginx: the PEM, escaped (its newlines become %0A) */
                p = sg_auth_http_put(p, "Auth-SSL-Cert", &pem, SG_ESC_AUTH);
            }
            p = sg_auth_http_put(p, "Auth-SSL-Fingerprint", &f.fingerprint,
                                 SG_ESC_NONE);
        }
    }
#endif
    p = sg_auth_http_put(p, "Auth-SMTP-Helo", &r->helo, SG_ESC_RAW);
    p = sg_auth_http_put(p, "Auth-SMTP-From", &r->mail_from,
                         SG_ESC_RAW);
    p = sg_auth_http_put(p, "Auth-SMTP-To", &r->rcpt_to, SG_ESC_RAW);
    for (i = 0; ctx->conf->headers && i < ctx->conf->headers->nelts; i++) {
        h = sg_array_elt(ctx->conf->headers, sg_str_t, i);
        memcpy(p, h->data, h->len);
        p += h->len;
    }
    *p++ = '\r';
    *p++ = '\n';
    ctx->req.len = (size_t) (p - ctx->req.data);
    SG_BUG_ON(ctx->req.len > len);
    return SG_OK;
}

/* auth_http_format json: the same facts as one JSON document. */

static int
sg_json_put(json_t *o, const char *key, const sg_str_t *v)
{
    json_t  *s;

    s = json_stringn(v->len ? (const char *) v->data : "", v->len);
    if (s == NULL) {
        return SG_ERROR;                /* not valid UTF-8 */
    }
    return json_object_set_new(o, key, s) == 0 ? SG_OK : SG_ERROR;
}

/* "proxy_protocol": {"addr", "port", "server_addr", "server_port"}. */
static int
sg_json_put_proxy_protocol(json_t *o, const sg_proxy_protocol_t *pp)
{
    const struct sockaddr  *src = (const struct sockaddr *) &pp->hdr.src;
    const struct sockaddr  *dst = (const struct sockaddr *) &pp->hdr.dst;
    u_char                  text[SG_INET_ADDRSTRLEN + 16];
    sg_str_t                addr, port;
    json_t                 *t;
    int                     rc = SG_OK;

    t = json_object();
    if (t == NULL) {
        return SG_ERROR;
    }
    sg_auth_http_pp_addr(src, text, sizeof(text), &addr, &port);
    rc |= sg_json_put(t, "addr", &addr);
    rc |= json_object_set_new(t, "port", json_integer(sg_sockaddr_port(src)));
    sg_auth_http_pp_addr(dst, text, sizeof(text), &addr, &port);
    rc |= sg_json_put(t, "server_addr", &addr);
    rc |= json_object_set_new(t, "server_port",
                              json_integer(sg_sockaddr_port(dst)));
    rc |= json_object_set_new(o, "proxy_protocol", t);
    return rc == SG_OK ? SG_OK : SG_ERROR;
}

/* jansson frees without clearing: the "pass" of a request or an
 * answer is wiped first. */
static void
sg_auth_http_json_free(json_t *o)
{
    json_t  *v = json_object_get(o, "pass");

    if (json_is_string(v)) {
        sg_wipe((void *) json_string_value(v), json_string_length(v));
    }
    json_decref(o);
}

static json_t *
sg_auth_http_json_body(sg_auth_http_ctx_t *ctx)
{
    sg_auth_request_t  *r = ctx->r;
    sg_connection_t    *c = r->connection;
    sg_str_t            v;
    json_t             *o;
    int                 rc = SG_OK;

    o = json_object();
    if (o == NULL) {
        return NULL;
    }
    v.data = (u_char *) sg_auth_http_method(r->mech);
    v.len = strlen((char *) v.data);
    rc |= sg_json_put(o, "method", &v);
    rc |= sg_json_put(o, "user", &r->user);
    rc |= sg_json_put(o, "pass", &r->pass);
    rc |= sg_json_put(o, "salt", &r->salt);
    sg_str_set(&v, "smtp");
    rc |= sg_json_put(o, "protocol", &v);
    rc |= json_object_set_new(o, "attempt",
                              json_integer(r->attempt ? r->attempt : 1));
    rc |= sg_json_put(o, "client_ip", &c->addr_text);
    rc |= sg_json_put(o, "helo", &r->helo);
    rc |= sg_json_put(o, "from", &r->mail_from);
    rc |= sg_json_put(o, "to", &r->rcpt_to);
    if (c->proxy_protocol) {
        rc |= sg_json_put_proxy_protocol(o, c->proxy_protocol);
    }
#if (SG_HAVE_SSL_MODULE)
    if (sg_connection_tls(c)) {
        json_t          *t = json_object();
        sg_ssl_facts_t   f;

        sg_ssl_cert_facts(c, r->pool, &f);
        rc |= t == NULL;
        if (t) {
            v.data = (u_char *) sg_ssl_protocol(c);
            v.len = strlen((char *) v.data);
            rc |= sg_json_put(t, "protocol", &v);
            v.data = (u_char *) sg_ssl_cipher(c);
            v.len = strlen((char *) v.data);
            rc |= sg_json_put(t, "cipher", &v);
            rc |= sg_json_put(t, "verify", &f.verify);
            rc |= sg_json_put(t, "subject", &f.subject);
            rc |= sg_json_put(t, "issuer", &f.issuer);
            rc |= sg_json_put(t, "serial", &f.serial);
            rc |= sg_json_put(t, "fingerprint", &f.fingerprint);
            rc |= json_object_set_new(o, "ssl", t);
        }
    }
#endif
    if (rc != SG_OK) {
        sg_auth_http_json_free(o);
        return NULL;
    }
    return o;
}

/* The JSON request: POST with the document as its body, written
 * straight into the request (json_dumps would leave copies of the
 * password in the buffers it outgrows). */
static int
sg_auth_http_build_json(sg_auth_http_ctx_t *ctx, sg_auth_http_server_t *srv)
{
    sg_str_t  *h;
    json_t    *o;
    size_t     len, blen, i;
    u_char    *p;

    o = sg_auth_http_json_body(ctx);
    if (o == NULL) {
        return SG_DECLINED;
    }
    blen = json_dumpb(o, NULL, 0, JSON_COMPACT);
    len = 256 + srv->uri.len + srv->host.len + blen;
    for (i = 0; ctx->conf->headers && i < ctx->conf->headers->nelts; i++) {
        len += sg_array_elt(ctx->conf->headers, sg_str_t, i)->len;
    }
    p = blen ? sg_pnalloc(ctx->r->pool, len) : NULL;
    if (p == NULL) {
        sg_auth_http_json_free(o);
        return SG_ERROR;
    }
    ctx->req.data = p;
    p = sg_slprintf(p, p + len, "POST %.*s HTTP/1.1\r\nHost: %.*s\r\n"
                    "Content-Type: application/json\r\n"
                    "Content-Length: %zu\r\n", SG_STR_ARG(&srv->uri),
                    SG_STR_ARG(&srv->host), blen);
    for (i = 0; ctx->conf->headers && i < ctx->conf->headers->nelts; i++) {
        h = sg_array_elt(ctx->conf->headers, sg_str_t, i);
        memcpy(p, h->data, h->len);
        p += h->len;
    }
    *p++ = '\r';
    *p++ = '\n';
    ctx->req.len = (size_t) (p - ctx->req.data);
    SG_BUG_ON(ctx->req.len + blen > len);
    p += json_dumpb(o, (char *) p, blen, JSON_COMPACT);
    sg_auth_http_json_free(o);
    ctx->req.len = (size_t) (p - ctx->req.data);
    return SG_OK;
}

/* Connections. */

static void sg_auth_http_handler(sg_event_t *ev);

/* The buffer held an answer, and answers carry backend passwords
 * (Auth-Pass): nothing of one outlives the request it answered. */
static void
sg_auth_http_wipe_in(sg_auth_http_conn_t *hc)
{
    if (hc->in.start != NULL && hc->in.last > hc->in.start) {
        sg_wipe(hc->in.start, (size_t) (hc->in.last - hc->in.start));
    }
    sg_buf_reset(&hc->in);
}

static void
sg_auth_http_close_conn(sg_auth_http_conn_t *hc)
{
    sg_auth_http_wipe_in(hc);
#if (SG_HAVE_SSL_MODULE)
    sg_ssl_free_connection(hc->c);
#endif
    sg_close_connection(hc->c);
    free(hc);
}

/* An idle connection that becomes readable was closed by the service
 * (or sent bytes it should not have); when draining, close it. */
static void
sg_auth_http_idle_handler(sg_event_t *ev)
{
    sg_connection_t        *c = ev->data;
    sg_auth_http_conn_t    *hc = c->data, **pp;
    sg_auth_http_server_t  *srv = hc->server;

    if (!c->close && !ev->timedout && (ev->write || !ev->ready)) {
        return;                       /* writable is no news when idle */
    }
    if (ev->timedout) {
        sg_log_debug(c->log, "auth_http: an idle connection to %.*s "
                     "closed (auth_http_keepalive_timeout)",
                     SG_STR_ARG(&srv->url));
    }
    for (pp = &srv->idle; *pp; pp = &(*pp)->next) {
        if (*pp == hc) {
            *pp = hc->next;
            srv->nidle--;
            break;
        }
    }
    sg_auth_http_close_conn(hc);
}

static void
sg_auth_http_release(sg_auth_http_conn_t *hc, sg_auth_http_conf_t *conf,
    bool reusable)
{
    sg_auth_http_server_t  *srv = hc->server;

    hc->ctx = NULL;
    sg_event_del_timer(hc->c->read);
    sg_event_del_timer(hc->c->write);
    sg_auth_http_wipe_in(hc);
    if (!reusable || sg_exiting || srv->nidle >= (size_t) conf->keepalive) {
        sg_auth_http_close_conn(hc);
        return;
    }
    hc->c->log = sg_cycle->log;
    hc->c->idle = 1;
    hc->c->read->handler = sg_auth_http_idle_handler;
    hc->c->write->handler = sg_auth_http_idle_handler;
    hc->c->write->ready = 0;
    hc->next = srv->idle;
    srv->idle = hc;
    srv->nidle++;
    sg_event_add_timer(hc->c->read, conf->keepalive_timeout);
}

static sg_auth_http_conn_t *
sg_auth_http_take(sg_auth_http_ctx_t *ctx, sg_auth_http_server_t *srv)
{
    sg_auth_http_conn_t  *hc;
    sg_connection_t      *c;
    int                   rc;

    ctx->reused = 0;
    if (srv->idle && !ctx->retried) {
        hc = srv->idle;
        srv->idle = hc->next;
        srv->nidle--;
        sg_event_del_timer(hc->c->read);
        hc->c->idle = 0;
        hc->c->write->ready = 1;
        ctx->reused = 1;
        ctx->connected = 1;
        ctx->secured = 1;
    } else {
        hc = calloc(1, sizeof(sg_auth_http_conn_t));
        if (hc == NULL) {
            return NULL;
        }
        rc = sg_connect(&srv->addr, ctx->r->log, &c);
        if (rc == SG_ERROR) {
            free(hc);
            return NULL;
        }
        ctx->connected = rc == SG_OK;
        ctx->secured = !srv->https;
        hc->c = c;
        hc->server = srv;
        c->data = hc;
        hc->in.start = hc->data;
        hc->in.end = hc->data + sizeof(hc->data);
        sg_buf_reset(&hc->in);
    }
    hc->ctx = ctx;
    hc->c->log = ctx->r->log;
    hc->c->read->handler = sg_auth_http_handler;
    hc->c->write->handler = sg_auth_http_handler;
    return hc;
}

/* The request holds the password (escaped, or in the JSON body): wiped
 * once it has served, whatever the outcome, as it lives in the session
 * pool, which is freed without being cleared. */
static void
sg_auth_http_forget(sg_auth_http_ctx_t *ctx)
{
    if (ctx->req.data != NULL) {
        sg_wipe(ctx->req.data, ctx->req.len);
        ctx->req.data = NULL;
        ctx->req.len = 0;
    }
}

/* Answers. */

static void
sg_auth_http_finish(sg_auth_http_ctx_t *ctx, sg_auth_status_e status,
    const char *reason)
{
    sg_auth_request_t  *r = ctx->r;

    sg_auth_http_forget(ctx);
    r->status = status;
    if (reason) {
        r->reason = reason;
    }
    r->backend_data = NULL;
    r->done(r);
}

/* A service could not be used: note it, skip it for fail_timeout, and
 * go on with the next. */
static void
sg_auth_http_failed_race(sg_auth_http_ctx_t *ctx, int err, const char *why,
    bool race);

static void
sg_auth_http_failed(sg_auth_http_ctx_t *ctx, int err, const char *why)
{
    sg_auth_http_failed_race(ctx, err, why, false);
}

/* race: a kept-alive connection closed before any byte of an answer,
 * which a service may do at any time; worth one retry, not a failure. */
static void
sg_auth_http_failed_race(sg_auth_http_ctx_t *ctx, int err, const char *why,
    bool race)
{
    sg_auth_http_server_t  *srv = sg_array_elt(ctx->conf->servers,
                                               sg_auth_http_server_t,
                                               ctx->server);

    if (ctx->hc) {
        sg_auth_http_close_conn(ctx->hc);
        ctx->hc = NULL;
    }
    if (race && ctx->reused && !ctx->retried) {
        /* The service closed a kept-alive connection as we used it: a
         * race, not a failure; once more on a fresh connection. */
        ctx->retried = 1;
        sg_auth_http_next(ctx);
        return;
    }
    sg_log_error(SG_LOG_ERR, ctx->r->log, err == ETIMEDOUT ? 0 : err,
                 "auth_http service %.*s failed: %s; skipping it for "
                 "auth_http_fail_timeout", SG_STR_ARG(&srv->url), why);
    srv->failed_until = sg_current_msec + ctx->conf->fail_timeout;
    sg_auth_http_count(ctx->conf, srv, true);
    ctx->server++;
    ctx->retried = 0;
    sg_auth_http_next(ctx);
}

static bool
sg_auth_http_code_ok(const sg_str_t *code)
{
    /* "535" or "535 5.7.8": the reply's code and enhanced code */
    if (code->len != 3 && (code->len < 9 || code->len > 13)) {
        return false;
    }
    if ((code->data[0] != '4' && code->data[0] != '5')
        || code->data[1] < '0' || code->data[1] > '9'
        || code->data[2] < '0' || code->data[2] > '9')
    {
        return false;
    }
    return code->len == 3
           || (code->data[3] == ' ' && code->data[4] == code->data[0]
               && code->data[5] == '.');
}

/*
 * The reply to a refusal: Auth-Error-Code (or 535 5.7.8), then the text
 * of Auth-Status.  A bare code gets the enhanced code RFC 2034 wants
 * (535 5.7.8, 4xx 4.7.0, other 5xx 5.7.1); a control character in the
 * text (a JSON answer may hold one) becomes a space.  Returns the length
 * written at buf.
 */
static size_t
sg_auth_http_reply(u_char *buf, u_char *last, const sg_str_t *code,
    const sg_str_t *st)
{
    const char  *enh;
    u_char      *p, *text;

    if (!sg_auth_http_code_ok(code)) {
        p = sg_slprintf(buf, last, "535 5.7.8 ");
    } else if (code->len == 3) {
        enh = code->data[0] == '4' ? "4.7.0"
              : memcmp(code->data, "535", 3) == 0 ? "5.7.8" : "5.7.1";
        p = sg_slprintf(buf, last, "%.*s %s ", SG_STR_ARG(code), enh);
    } else {
        p = sg_slprintf(buf, last, "%.*s ", SG_STR_ARG(code));
    }
    text = p;
    p = sg_slprintf(p, last, "%.*s", (int) sg_min(st->len, 200),
                    (char *) st->data);
    for ( ; text < p; text++) {
        if (*text < 0x20 || *text == 0x7f) {
            *text = ' ';
        }
    }
    return (size_t) (p - buf);
}

static int
sg_auth_http_copy(sg_pool_t *pool, sg_str_t *dst, const sg_str_t *src)
{
    dst->len = 0;
    dst->data = NULL;
    if (src->data == NULL || src->len == 0) {
        return SG_OK;
    }
    dst->data = sg_pnalloc(pool, src->len);
    if (dst->data == NULL) {
        return SG_ERROR;
    }
    memcpy(dst->data, src->data, src->len);
    dst->len = src->len;
    return SG_OK;
}

static void
sg_auth_http_wipe_str(void *data)
{
    sg_str_t  *v = data;

    sg_wipe(v->data, v->len);
}

/* A copy of Auth-Pass in the session pool, wiped when the pool goes
 * (whether or not proxy_smtp_auth ever uses it). */
static int
sg_auth_http_copy_secret(sg_pool_t *pool, sg_str_t *dst, const sg_str_t *src)
{
    sg_str_t  *keep;

    if (sg_auth_http_copy(pool, dst, src) != SG_OK) {
        return SG_ERROR;
    }
    if (dst->len == 0) {
        return SG_OK;
    }
    keep = sg_palloc(pool, sizeof(sg_str_t));
    if (keep == NULL) {
        sg_wipe(dst->data, dst->len);
        return SG_ERROR;
    }
    *keep = *dst;
    return sg_pool_cleanup_add(pool, sg_auth_http_wipe_str, keep);
}

/* An Auth-Server host name is looked up on the worker's thread pool,
 * so the event loop never waits on DNS. */
typedef struct {
    sg_task_t                task;
    sg_auth_http_ctx_t      *ctx;
    char                     host[256];
    char                     port[8];
    struct sockaddr_storage  sa[4];
    socklen_t                len[4];
    size_t                   n;
    int                      rc;
} sg_auth_http_resolve_t;

static void
sg_auth_http_resolve_work(sg_task_t *t)
{
    sg_auth_http_resolve_t  *rt = t->data;
    struct addrinfo          hints, *res, *ai;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    rt->rc = getaddrinfo(rt->host, rt->port, &hints, &res);
    if (rt->rc == 0) {
        for (ai = res; ai && rt->n < 4; ai = ai->ai_next) {
            if (ai->ai_addrlen <= sizeof(rt->sa[0])) {
                memcpy(&rt->sa[rt->n], ai->ai_addr, ai->ai_addrlen);
                rt->len[rt->n++] = ai->ai_addrlen;
            }
        }
        freeaddrinfo(res);
    }
}

static void
sg_auth_http_resolve_done(sg_task_t *t)
{
    sg_auth_http_resolve_t  *rt = t->data;
    sg_auth_http_ctx_t      *ctx = rt->ctx;
    sg_auth_request_t       *r = ctx->r;
    sg_addr_t               *a;
    u_char                   text[SG_SOCKADDR_STRLEN];
    size_t                   n, i;

    ctx->resolving = NULL;
    if (rt->rc != 0 || rt->n == 0) {
        sg_log_error(SG_LOG_ERR, r->log, 0, "Auth-Server \"%s\" did not "
                     "resolve: %s", rt->host,
                     rt->rc ? gai_strerror(rt->rc) : "no address");
        sg_auth_http_finish(ctx, SG_AUTH_TEMPFAIL, "the Auth-Server host "
                            "name did not resolve");
        return;
    }
    a = sg_pcalloc(r->pool, rt->n * sizeof(sg_addr_t));
    if (a == NULL) {
        sg_auth_http_finish(ctx, SG_AUTH_TEMPFAIL, "out of memory");
        return;
    }
    for (i = 0; i < rt->n; i++) {
        n = sg_sock_ntop((struct sockaddr *) &rt->sa[i], text, sizeof(text),
                         true);
        a[i].name.data = sg_pnalloc(r->pool, n);
        if (a[i].name.data == NULL) {
            sg_auth_http_finish(ctx, SG_AUTH_TEMPFAIL, "out of memory");
            return;
        }
        memcpy(&a[i].sa, &rt->sa[i], rt->len[i]);
        a[i].socklen = rt->len[i];
        memcpy(a[i].name.data, text, n);
        a[i].name.len = n;
    }
    r->route_addr = a;
    r->route_naddrs = rt->n;
    sg_log_debug(r->log, "Auth-Server \"%s\" resolved to %.*s%s",
                 rt->host, SG_STR_ARG(&a[0].name),
                 rt->n > 1 ? " and more" : "");
    sg_auth_http_finish(ctx, SG_AUTH_OK, NULL);
}

static void
sg_auth_http_resolve_free(sg_task_t *t)
{
    free(t->data);
}

static bool
sg_auth_http_hostname_ok(const sg_str_t *h)
{
    size_t  i;

    char    name[254];

    if (h->len == 0 || h->len > 253) {
        return false;
    }
    for (i = 0; i < h->len; i++) {
        u_char ch = h->data[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
              || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-'))
        {
            return false;
        }
    }
    memcpy(name, h->data, h->len);
    name[h->len] = '\0';
    return !sg_inet_sloppy_ipv4(name);     /* "1.2.3": not a name */
}

/* SG_OK: resolving in the background, the answer comes later. */
static int
sg_auth_http_resolve(sg_auth_http_ctx_t *ctx, const sg_str_t *host,
    const sg_str_t *port)
{
    sg_auth_http_resolve_t  *rt;

    if (!sg_auth_http_hostname_ok(host) || port->len == 0
        || port->len >= sizeof(rt->port))
    {
        return SG_ERROR;
    }
    rt = calloc(1, sizeof(*rt));
    if (rt == NULL) {
        return SG_ERROR;
    }
    memcpy(rt->host, host->data, host->len);
    memcpy(rt->port, port->data, port->len);
    rt->ctx = ctx;
    rt->task.work = sg_auth_http_resolve_work;
    rt->task.done = sg_auth_http_resolve_done;
    rt->task.destroy = sg_auth_http_resolve_free;
    rt->task.data = rt;
    if (sg_task_post(&rt->task, ctx->r->log) != SG_OK) {
        free(rt);
        return SG_ERROR;
    }
    ctx->resolving = &rt->task;
    return SG_OK;
}

static const char *
sg_auth_http_route(sg_auth_http_ctx_t *ctx, const sg_http_auth_response_t *h,
    bool *later)
{
    sg_auth_request_t  *r = ctx->r;
    const sg_str_t  *host = &h->h[SG_HTTP_H_AUTH_SERVER];
    const sg_str_t  *port = &h->h[SG_HTTP_H_AUTH_PORT];
    sg_url_t         u;
    u_char           buf[SG_SOCKADDR_STRLEN + 8];

    if (host->data == NULL) {
        return NULL;                  /* proxy_pass decides */
    }
    if (port->data == NULL) {
        return "Auth-Server without Auth-Port";
    }
    if (host->len + port->len + 4 > sizeof(buf)) {
        if (sg_auth_http_resolve(ctx, host, port) == SG_OK) {
            *later = true;          /* too long for an address: a name */
            return NULL;
        }
        return "Auth-Server is neither an address nor a host name";
    }
    memset(&u, 0, sizeof(u));
    u.url.data = buf;
    u.url.len = (size_t) (memchr(host->data, ':', host->len)
        ? sg_slprintf(buf, buf + sizeof(buf), "[%.*s]:%.*s",
                      SG_STR_ARG(host), SG_STR_ARG(port)) - buf
        : sg_slprintf(buf, buf + sizeof(buf), "%.*s:%.*s",
                      SG_STR_ARG(host), SG_STR_ARG(port)) - buf);
    u.no_resolve = 1;               /* never a DNS lookup in the loop */
    if (sg_parse_url(r->pool, &u) != SG_OK) {
        if (u.port > 0 && sg_auth_http_resolve(ctx, host, port) == SG_OK) {
            *later = true;          /* a host name: on the thread pool */
            return NULL;
        }
        return "Auth-Server/Auth-Port is neither an address and port nor "
               "a host name and port";
    }
    r->route_addr = &u.addrs[0];
    return NULL;
}

static void
sg_auth_http_answer(sg_auth_http_ctx_t *ctx, const sg_http_auth_response_t *h)
{
    sg_auth_request_t  *r = ctx->r;
    const sg_str_t     *st = &h->h[SG_HTTP_H_AUTH_STATUS];
    const sg_str_t     *code = &h->h[SG_HTTP_H_AUTH_ERROR_CODE];
    const sg_str_t     *wait = &h->h[SG_HTTP_H_AUTH_WAIT];
    const char         *err;
    int64_t             n;
    bool                later;

    /* As nginx, the answer is in the headers whatever the status line
     * says (a location ending in "return 204;" works). */
    if (st->data == NULL) {
        sg_auth_http_finish(ctx, SG_AUTH_TEMPFAIL, h->status == 200
                            ? "the auth_http service sent no Auth-Status "
                              "header"
                            : "the auth_http service answered with an "
                              "error status and no Auth-Status header");
        return;
    }
    if (sg_auth_http_copy(r->pool, &r->route, &h->h[SG_HTTP_H_AUTH_UPSTREAM])
        || sg_auth_http_copy(r->pool, &r->backend_user,
                             &h->h[SG_HTTP_H_AUTH_USER])
        || sg_auth_http_copy_secret(r->pool, &r->backend_pass,
                                    &h->h[SG_HTTP_H_AUTH_PASS]))
    {
        sg_auth_http_finish(ctx, SG_AUTH_TEMPFAIL, "out of memory");
        return;
    }
    if (sg_str_eq(st, "OK")) {
        later = false;
        err = sg_auth_http_route(ctx, h, &later);
        if (!later) {
            sg_auth_http_finish(ctx, err ? SG_AUTH_TEMPFAIL : SG_AUTH_OK,
                                err);
        }
        return;
    }
    if (wait->data && sg_parse_int(wait, &n) == SG_OK && n > 0 && n < 3600) {
        r->wait = n * 1000;
    }
    r->reply.data = sg_pnalloc(r->pool, 32 + sg_min(st->len, 200));
    if (r->reply.data) {
        r->reply.len = sg_auth_http_reply(r->reply.data,
                                          r->reply.data + 32
                                          + sg_min(st->len, 200), code, st);
    }
    sg_auth_http_finish(ctx, r->reply.len && r->reply.data[0] == '4'
                             ? SG_AUTH_TEMPFAIL : SG_AUTH_FAIL,
                        "refused by the auth_http service");
}

/* https://: the TLS handshake with the service. */
static int
sg_auth_http_secure(sg_auth_http_ctx_t *ctx)
{
#if (SG_HAVE_SSL_MODULE)
    sg_auth_http_conn_t  *hc = ctx->hc;
    int                   rc;

    if (hc->c->ssl == NULL
        && sg_ssl_client_connection(hc->c, ctx->conf->ssl_ctx,
                                    &hc->server->hostname) != SG_OK)
    {
        return SG_ERROR;
    }
    rc = sg_ssl_handshake(hc->c);
    if (rc == SG_OK) {
        ctx->secured = 1;
    }
    return rc;
#else
    (void) ctx;
    return SG_ERROR;
#endif
}

/* A JSON answer read as the headers would be: {"status", "server",
 * "port", "upstream", "wait", "error_code", "user", "pass"}. */
static const char *
sg_auth_http_json_fields(json_t *o, sg_http_auth_response_t *h,
    u_char *num, size_t numlen)
{
    static const struct { const char *key; sg_http_header_e h; } map[] = {
        { "status", SG_HTTP_H_AUTH_STATUS },
        { "server", SG_HTTP_H_AUTH_SERVER },
        { "port", SG_HTTP_H_AUTH_PORT },
        { "upstream", SG_HTTP_H_AUTH_UPSTREAM },
        { "wait", SG_HTTP_H_AUTH_WAIT },
        { "error_code", SG_HTTP_H_AUTH_ERROR_CODE },
        { "user", SG_HTTP_H_AUTH_USER },
        { "pass", SG_HTTP_H_AUTH_PASS },
    };
    json_t  *v;
    size_t   i;

    if (!json_is_object(o)) {
        return "the JSON answer is not an object";
    }
    for (i = 0; i < sg_nelems(map); i++) {
        v = json_object_get(o, map[i].key);
        if (v == NULL || json_is_null(v)) {
            continue;
        }
        if (json_is_string(v)) {
            h->h[map[i].h].data = (u_char *) json_string_value(v);
            h->h[map[i].h].len = json_string_length(v);
            if (memchr(h->h[map[i].h].data, '\0', h->h[map[i].h].len)
                || memchr(h->h[map[i].h].data, '\r', h->h[map[i].h].len)
                || memchr(h->h[map[i].h].data, '\n', h->h[map[i].h].len))
            {
                return "a JSON answer field holds a control character";
            }
        } else if (json_is_integer(v) && numlen >= 24) {
            h->h[map[i].h].data = num;
            h->h[map[i].h].len = (size_t) snprintf((char *) num, 24, "%lld",
                (long long) json_integer_value(v));
            num += 24;
            numlen -= 24;
        } else {
            return "a JSON answer field is neither a string nor a number";
        }
    }
    return NULL;
}

/*
 * How much of jansson's message may be logged: it goes on with "near
 * '...'" (or quotes an escape) from the text where parsing stopped,
 * which can be the middle of the "pass" the service sent.
 */
static int
sg_auth_http_json_why(const json_error_t *jerr)
{
    const char  *near;
    size_t       n;

    n = strcspn(jerr->text, "'");
    near = strstr(jerr->text, " near ");
    if (near != NULL && (size_t) (near - jerr->text) < n) {
        n = (size_t) (near - jerr->text);
    }
    while (n > 0 && jerr->text[n - 1] == ' ') {
        n--;
    }
    return (int) n;
}

/* auth_http_format json: the answer's object, read as the headers would
 * be (h's values point into o, freed by the caller after use). */
typedef struct {
    json_t                   *o;
    sg_http_auth_response_t   h;
    u_char                    num[4 * 24];
    char                      why[128];
} sg_auth_http_json_t;

/* SG_ERROR (why filled, o NULL): not a valid answer, which makes the
 * service count as broken, as a malformed head does. */
static int
sg_auth_http_json_load(sg_auth_http_json_t *j,
    const sg_http_auth_response_t *head, const u_char *body)
{
    json_error_t  jerr;
    const char   *why;

    memset(&j->h, 0, sizeof(j->h));
    j->h.status = head->status;
    j->o = json_loadb((const char *) body, (size_t) head->content_length,
                      JSON_REJECT_DUPLICATES, &jerr);
    if (j->o == NULL) {
        snprintf(j->why, sizeof(j->why), "invalid JSON answer: %.*s at "
                 "offset %d", sg_auth_http_json_why(&jerr), jerr.text,
                 jerr.position);
        return SG_ERROR;
    }
    why = sg_auth_http_json_fields(j->o, &j->h, j->num, sizeof(j->num));
    if (why != NULL) {
        snprintf(j->why, sizeof(j->why), "%s", why);
        sg_auth_http_json_free(j->o);
        j->o = NULL;
        return SG_ERROR;
    }
    return SG_OK;
}

/* auth_http_format json: the body, Content-Length bytes after the head,
 * must be in the buffer too.  SG_OK, SG_AGAIN or SG_ERROR (why). */
static int
sg_auth_http_read_body(sg_auth_http_ctx_t *ctx,
    const sg_http_auth_response_t *h, const char **why)
{
    sg_auth_http_conn_t  *hc = ctx->hc;
    ssize_t               n;

    if (h->content_length < 0
        || (size_t) h->content_length > sizeof(hc->data) - h->head_len)
    {
        *why = "the JSON answer has no Content-Length or is too large";
        return SG_ERROR;
    }
    while ((size_t) (hc->in.last - hc->in.pos) - h->head_len
           < (size_t) h->content_length)
    {
        n = hc->c->recv(hc->c, hc->in.last, sg_buf_free(&hc->in));
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n <= 0) {
            *why = "the connection closed in the middle of the answer";
            return SG_ERROR;
        }
        hc->in.last += n;
    }
    return SG_OK;
}

/* Send what is left of the request; SG_OK when all is out. */
static int
sg_auth_http_send(sg_auth_http_ctx_t *ctx)
{
    sg_connection_t  *c = ctx->hc->c;
    ssize_t           n;

    while (ctx->sent < ctx->req.len) {
        n = c->send(c, ctx->req.data + ctx->sent, ctx->req.len - ctx->sent);
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n < 0) {
            return SG_ERROR;
        }
        ctx->sent += (size_t) n;
    }
    return SG_OK;
}

/* Read until the response head is complete; SG_OK with h filled. */
static int
sg_auth_http_read(sg_auth_http_ctx_t *ctx, sg_http_auth_response_t *h,
    const char **why)
{
    sg_auth_http_conn_t  *hc = ctx->hc;
    ssize_t               n;
    int                   rc;

    for ( ;; ) {
        rc = sg_http_parse_auth_response(hc->in.pos, hc->in.last,
                                         sizeof(hc->data), h);
        if (rc == SG_OK) {
            return SG_OK;
        }
        if (rc == SG_ERROR) {
            *why = h->error;
            return SG_ERROR;
        }
        if (sg_buf_free(&hc->in) == 0) {
            *why = "response head too large";
            return SG_ERROR;
        }
        n = hc->c->recv(hc->c, hc->in.last, sg_buf_free(&hc->in));
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n <= 0) {
            *why = hc->in.last == hc->in.pos
                   ? "the connection closed before any answer"
                   : "the connection closed in the middle of the answer";
            return SG_ERROR;
        }
        hc->in.last += n;
    }
}

/* The whole answer: the head, and with auth_http_format json the body,
 * parsed into j.  SG_OK, SG_AGAIN, or SG_ERROR with why, and race when
 * the connection failed before a byte of an answer arrived. */
static int
sg_auth_http_receive(sg_auth_http_ctx_t *ctx, sg_http_auth_response_t *h,
    sg_auth_http_json_t *j, const char **why, bool *race)
{
    sg_auth_http_conn_t  *hc = ctx->hc;
    int                   rc;

    h->error = NULL;
    rc = sg_auth_http_read(ctx, h, why);
    if (rc == SG_ERROR) {
        *race = hc->in.last == hc->in.pos && h->error == NULL;
        return SG_ERROR;
    }
    if (rc != SG_OK || ctx->conf->format != SG_AUTH_HTTP_JSON) {
        return rc;
    }
    rc = sg_auth_http_read_body(ctx, h, why);
    if (rc != SG_OK) {
        return rc;
    }
    if (sg_auth_http_json_load(j, h, hc->in.pos + h->head_len) != SG_OK) {
        *why = j->why;
        return SG_ERROR;
    }
    return SG_OK;
}

static void
sg_auth_http_handler(sg_event_t *ev)
{
    sg_connection_t          *c = ev->data;
    sg_auth_http_conn_t      *hc = c->data;
    sg_auth_http_ctx_t       *ctx = hc->ctx;
    sg_http_auth_response_t   h, *ans;
    sg_auth_http_json_t       j;
    sg_auth_http_conf_t      *conf;
    const char               *why = NULL;
    size_t                    body;
    int                       rc, err;
    bool                      race;

    if (ev->timedout) {
        sg_auth_http_failed(ctx, ETIMEDOUT, "no answer within "
                            "auth_http_timeout");
        return;
    }
    if (!ctx->connected) {
        if (sg_connect_result(c, &err) != SG_OK) {
            sg_auth_http_failed(ctx, err, "connect() failed");
            return;
        }
        if (!c->write->ready) {
            return;                     /* still connecting */
        }
        ctx->connected = 1;
    }
    if (!ctx->secured) {
        rc = sg_auth_http_secure(ctx);
        if (rc == SG_AGAIN) {
            return;
        }
        if (rc == SG_ERROR) {
            sg_auth_http_failed(ctx, 0, "the TLS handshake failed (the "
                                "reason is logged above; check "
                                "auth_http_ssl_trusted_certificate)");
            return;
        }
    }
    rc = sg_auth_http_send(ctx);
    if (rc == SG_ERROR) {
        sg_auth_http_failed_race(ctx, errno, "send() failed", true);
        return;
    }
    if (rc == SG_AGAIN) {
        return;
    }
    j.o = NULL;
    race = false;
    rc = sg_auth_http_receive(ctx, &h, &j, &why, &race);
    if (rc == SG_AGAIN) {
        return;
    }
    if (rc == SG_ERROR) {
        sg_auth_http_failed_race(ctx, 0, why, race);
        return;
    }
    ans = j.o ? &j.h : &h;
    sg_log_debug(ctx->r->log, "auth_http answer: HTTP %d, Auth-Status "
                 "\"%.*s\"", h.status,
                 (int) sg_min(ans->h[SG_HTTP_H_AUTH_STATUS].len, 100),
                 ans->h[SG_HTTP_H_AUTH_STATUS].data
                     ? (char *) ans->h[SG_HTTP_H_AUTH_STATUS].data : "");
    /* The answer is in the head (or the JSON body); nothing more is
     * read.  The connection is kept only when it ends exactly here. */
    body = (size_t) (hc->in.last - hc->in.pos) - h.head_len;
    conf = ctx->conf;
    ctx->hc = NULL;
    hc->ctx = NULL;
    sg_auth_http_count(conf, hc->server, false);
    /* The answer may end the session (and ctx with it); h points into
     * hc's buffer, which stays until the connection is released. */
    sg_auth_http_answer(ctx, ans);
    if (j.o != NULL) {
        sg_auth_http_json_free(j.o);
    }
    sg_auth_http_release(hc, conf, h.keepalive && h.content_length >= 0
                                   && (size_t) h.content_length == body);
}

/* Requests. */

static void
sg_auth_http_next(sg_auth_http_ctx_t *ctx)
{
    sg_auth_http_server_t  *srv;
    size_t                  n = ctx->conf->servers->nelts;
    int                     rc;

    for ( ; ctx->server < n; ctx->server++) {
        srv = sg_array_elt(ctx->conf->servers, sg_auth_http_server_t,
                           ctx->server);
        if (srv->failed_until > sg_current_msec) {
            continue;                     /* failed recently: skip */
        }
        sg_auth_http_forget(ctx);         /* the one sent before, if any */
        rc = ctx->conf->format == SG_AUTH_HTTP_JSON
             ? sg_auth_http_build_json(ctx, srv)
             : sg_auth_http_build(ctx, srv);
        if (rc != SG_OK) {
            sg_auth_http_finish(ctx, SG_AUTH_TEMPFAIL, rc == SG_DECLINED
                                ? "the credentials are not valid UTF-8, "
                                  "which auth_http_format json cannot carry"
                                : "out of memory");
            return;
        }
        ctx->sent = 0;
        ctx->hc = sg_auth_http_take(ctx, srv);
        if (ctx->hc == NULL) {
            srv->failed_until = sg_current_msec + ctx->conf->fail_timeout;
            sg_auth_http_count(ctx->conf, srv, true);
            continue;                     /* sg_connect logged why */
        }
        sg_log_debug(ctx->r->log, "auth_http request to %.*s%s",
                     SG_STR_ARG(&srv->url),
                     ctx->reused ? " on a kept-alive connection" : "");
        sg_event_add_timer(ctx->hc->c->read, ctx->conf->timeout);
        if (ctx->connected) {
            sg_auth_http_handler(ctx->hc->c->write);
        }
        return;
    }
    sg_auth_http_finish(ctx, SG_AUTH_TEMPFAIL, "no auth_http service "
                        "could be reached (each failed now or within "
                        "auth_http_fail_timeout)");
}

static void
sg_auth_http_start_handler(sg_event_t *ev)
{
    sg_auth_http_next(ev->data);
}

static int
sg_auth_http_start(sg_auth_request_t *r, void *conf)
{
    sg_auth_http_ctx_t  *ctx;

    ctx = sg_pcalloc(r->pool, sizeof(sg_auth_http_ctx_t));
    if (ctx == NULL) {
        return SG_ERROR;
    }
    ctx->r = r;
    ctx->conf = conf;
    r->backend_data = ctx;
    /* Everything runs from a posted event, so that done() is never
     * called from inside start(). */
    ctx->start.data = ctx;
    ctx->start.log = r->log;
    ctx->start.handler = sg_auth_http_start_handler;
    sg_event_post(&ctx->start);
    return SG_OK;
}

static void
sg_auth_http_cancel(sg_auth_request_t *r, void *conf)
{
    sg_auth_http_ctx_t  *ctx = r->backend_data;

    (void) conf;
    if (ctx == NULL) {
        return;
    }
    if (ctx->hc) {
        /* an answer is on its way: this connection cannot be reused */
        sg_auth_http_close_conn(ctx->hc);
        ctx->hc = NULL;
    }
    sg_auth_http_forget(ctx);
    sg_event_unpost(&ctx->start);
    if (ctx->resolving) {
        sg_task_cancel(ctx->resolving);
        ctx->resolving = NULL;
    }
    r->backend_data = NULL;
}
