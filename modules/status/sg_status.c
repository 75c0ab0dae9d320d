/*
 * sg_status.c: counters of every worker in shared memory, and a small
 * HTTP listener that shows them: /metrics in Prometheus's text format,
 * /status as JSON.
 *
 * Counting: a session's open hook counts the connection on its listening
 * address (connections, active); its close hook takes active back and
 * counts the session on the server that handled it (how it ended, the
 * login, failed AUTHs, messages, bytes, TLS).  Every counter is a
 * 64-bit word in the "status" zone, added to atomically: no lock on the
 * session path.  Each address and server owns a slot named by a key
 * ("a 127.0.0.1:587", "s mx.example.org"); a reload finds the slots of
 * the keys it keeps, so their counters go on, and takes free ones for
 * new keys.  The master assigns slots (init_module) before the workers
 * are forked.
 *
 * Serving: "status_listen" adds listening sockets whose connections
 * this module reads: one request of at most SG_STATUS_REQUEST_MAX bytes
 * under status_timeout, answered and closed (HTTP/1.0 style, "Connection:
 * close").  GET and HEAD, and with "status_write on" the one write:
 * POST /upstreams/GROUP/PEER/drain|close|ready|weight=N, which sets a
 * peer's drain or weight, or closes its sessions (sg_upstream_drain,
 * sg_upstream_set_weight, sg_upstream_close).  A client outside status_allow gets 403.
 */
#include "sg_smtp.h"
#include "sg_status_parse.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif
#if (SG_HAVE_AUTH_HTTP_MODULE)
#include "sg_auth_http.h"
#endif
#if (SG_HAVE_UPSTREAM_MODULE)
#include "sg_upstream.h"
#endif
#if (SG_HAVE_UPSTREAM_MODULE && SG_HAVE_SPOOL_MODULE)
#include "sg_spool.h"
#include "sg_status_queue.h"
#define SG_STATUS_SPOOLS  1
#define SG_STATUS_QUEUE_MAX  1000       /* messages listed a spool */
#else
#define SG_STATUS_SPOOLS  0
#endif
#include <jansson.h>

#define SG_STATUS_SLOTS          512
#define SG_STATUS_KEY            96
#define SG_STATUS_RESPONSE_MAX   (4 * 1024 * 1024)
#define SG_STATUS_LINGER         2000    /* ms */

/* $status values, in the order of the counters. */
static const char  *sg_status_ends[] = {
    SG_SMTP_END_QUIT, SG_SMTP_END_CLOSED, SG_SMTP_END_TIMEOUT,
    SG_SMTP_END_TLS_ERROR, SG_SMTP_END_REFUSED, SG_SMTP_END_DENIED,
    SG_SMTP_END_LIMITED, SG_SMTP_END_BACKEND_ERROR,
    SG_SMTP_END_BACKEND_REFUSED, SG_SMTP_END_BACKEND_CLOSED,
    SG_SMTP_END_SHUTDOWN, SG_SMTP_END_ERROR
};

#define SG_STATUS_NENDS  (sizeof(sg_status_ends) / sizeof(sg_status_ends[0]))

/* The histograms' upper bounds in ms (Prometheus's default buckets),
 * and +Inf. */
static const unsigned  sg_status_buckets[] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000
};
#define SG_STATUS_NBUCKETS  (sizeof(sg_status_buckets)                      \
                             / sizeof(sg_status_buckets[0]) + 1)

enum {
    SG_ST_CONNECTIONS = 0,          /* an address's */
    SG_ST_ACTIVE,
    SG_ST_END,                      /* a server's, one per end */
    SG_ST_LOGINS = SG_ST_END + SG_STATUS_NENDS,
    SG_ST_AUTH_FAILURES,
    SG_ST_AUTH_TEMPFAILS,
    SG_ST_MESSAGES,
    SG_ST_RECEIVED,
    SG_ST_SENT,
    SG_ST_TLS,
    SG_ST_LIMITED_MAIL,             /* MAIL and RCPT refused by limits */
    SG_ST_LIMITED_RCPT,
    SG_ST_SENDERS_REFUSED,          /* by smtp_sender_allow */
    SG_ST_AUTH_HIST,                /* SG_STATUS_NBUCKETS, then the sum
                                       (ms) and the count */
    SG_ST_UPC_HIST = SG_ST_AUTH_HIST + SG_STATUS_NBUCKETS + 2,
    SG_ST_N = SG_ST_UPC_HIST + SG_STATUS_NBUCKETS + 2
};

typedef struct {
    char       key[SG_STATUS_KEY];
    uint64_t   c[SG_ST_N];
} sg_status_slot_t;

typedef struct {
    uint64_t           started;     /* wall clock, when first mapped */
    uint32_t           nslots;
    sg_status_slot_t   slot[SG_STATUS_SLOTS];
} sg_status_shm_t;

typedef struct {
    void       *ac;                 /* the address's sg_smtp_addr_conf_t */
    sg_str_t    name;               /* "127.0.0.1:587" */
    int         slot;
} sg_status_addr_t;

typedef struct sg_status_srv_conf_s  sg_status_srv_conf_t;

typedef struct {
    sg_array_t      listens;        /* sg_addr_t: status_listen */
    sg_array_t     *allow;          /* sg_cidr_t; NULL: everyone */
    sg_array_t     *write_allow;    /* sg_cidr_t; NULL: as allow */
    sg_msec_t       timeout;
    int             write;          /* status_write */
    sg_shm_zone_t  *zone;
    sg_array_t      servers;        /* sg_status_srv_conf_t * */
    sg_array_t      addrs;          /* sg_status_addr_t, by init_module */
    sg_str_t        file;           /* the first status_listen */
    size_t          line;
    sg_str_t        write_allow_file;   /* the first status_write_allow */
    size_t          write_allow_line;
    bool            checked;        /* once per configuration */
} sg_status_main_conf_t;

struct sg_status_srv_conf_s {
    sg_str_t        name;           /* the server label */
    int             slot;
    sg_smtp_srv_conf_t  *sscf;      /* the server's */
};

/* One HTTP connection. */
typedef struct {
    sg_status_main_conf_t  *conf;
    u_char                 *in;
    size_t                  nin;
    u_char                 *out;    /* malloc'd response */
    size_t                  nout;
    size_t                  sent;
    const char             *allow;  /* a 405's Allow header, if not
                                       GET and HEAD */
    sg_task_t              *task;   /* GET /queue being read */
    bool                    head;   /* that request was HEAD */
} sg_status_conn_t;

/* A growing response body, malloc'd, at most SG_STATUS_RESPONSE_MAX. */
typedef struct {
    u_char   *data;
    size_t    len;
    size_t    cap;
    bool      failed;
} sg_status_out_t;

static char *sg_status_listen(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_status_write_allow(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_status_allow(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_status_create_main_conf(sg_conf_t *cf);
static void *sg_status_create_srv_conf(sg_conf_t *cf);
static char *sg_status_postconfiguration(sg_conf_t *cf, void *conf);
static int sg_status_init_module(sg_cycle_t *cycle);
static void sg_status_init_connection(sg_connection_t *c);
static void sg_status_open(sg_smtp_session_t *s, void *conf);
static void sg_status_close(sg_smtp_session_t *s, void *conf);

static const sg_conf_bounds_t  sg_status_timeout_bounds = { 1, 3600000LL };

static const sg_command_t  sg_status_commands[] = {
    { "status_listen", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_status_listen, SG_MAIL_MAIN_CONF_OFFSET, 0, NULL },
    { "status_allow", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_status_allow, SG_MAIL_MAIN_CONF_OFFSET, 0, NULL },
    { "status_timeout", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_MAIN_CONF_OFFSET,
      offsetof(sg_status_main_conf_t, timeout), &sg_status_timeout_bounds },
    { "status_write", SG_MAIL_MAIN_CONF | SG_CONF_FLAG,
      sg_conf_set_flag_slot, SG_MAIL_MAIN_CONF_OFFSET,
      offsetof(sg_status_main_conf_t, write), NULL },
    { "status_write_allow", SG_MAIL_MAIN_CONF | SG_CONF_TAKE1,
      sg_status_write_allow, SG_MAIL_MAIN_CONF_OFFSET, 0, NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_status_module_ctx = {
    sg_status_create_main_conf, NULL, sg_status_create_srv_conf, NULL,
    sg_status_postconfiguration
};

sg_module_t  sg_status_module = {
    .name = "status",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_status_module_ctx,
    .commands = sg_status_commands,
    .init_module = sg_status_init_module,
};


/* ---- configuration -------------------------------------------------- */

static int
sg_status_zone_init(sg_shm_zone_t *zone, void *old_data)
{
    sg_status_shm_t  *sh = zone->addr;

    zone->data = sh;
    if (old_data == NULL) {
        memset(sh, 0, sizeof(*sh));
        sh->started = (uint64_t) time(NULL);
    }
    return SG_OK;
}

/* status_listen address; */
static char *
sg_status_listen(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    static sg_str_t         zname = sg_string("status");
    sg_status_main_conf_t  *smcf = conf;
    sg_str_t               *value = cf->args->elts;
    sg_listening_t         *ls, *all;
    sg_addr_t              *a;
    sg_url_t                u;
    size_t                  i;

    (void) cmd;
    memset(&u, 0, sizeof(u));
    u.url = value[1];
    u.listen = 1;
    if (sg_parse_url(cf->pool, &u) != SG_OK) {
        return sg_conf_error(cf, 0, "%s in \"%.*s\" of the "
                             "\"status_listen\" directive", u.err,
                             SG_STR_ARG(&u.url));
    }
    if (u.naddrs > 1) {
        return sg_conf_error(cf, 0, "\"%.*s\" of the \"status_listen\" "
                             "directive resolves to %zu addresses: name "
                             "each with its own directive",
                             SG_STR_ARG(&u.url), u.naddrs);
    }
    /* The SMTP addresses are made at the end of the mail block: those
     * clash there; another status_listen clashes here. */
    all = cf->cycle->listening.elts;
    for (i = 0; i < cf->cycle->listening.nelts; i++) {
        if (sg_sockaddr_eq((struct sockaddr *) &all[i].addr.sa,
                           all[i].addr.socklen,
                           (struct sockaddr *) &u.addrs[0].sa,
                           u.addrs[0].socklen))
        {
            return sg_conf_error(cf, 0, "duplicate status_listen %.*s",
                                 SG_STR_ARG(&u.addrs[0].name));
        }
    }
    a = sg_array_push(&smcf->listens);
    ls = sg_create_listening(cf, &u.addrs[0]);
    if (a == NULL || ls == NULL) {
        return SG_CONF_ERROR;
    }
    *a = u.addrs[0];
    ls->handler = sg_status_init_connection;
    ls->servers = smcf;
    ls->deferred = 1;              /* the client speaks first */
    if (smcf->zone == NULL) {
        smcf->zone = sg_shm_zone_add(cf, &zname,
                                     (sizeof(sg_status_shm_t) + 4095)
                                     & ~(size_t) 4095, &sg_status_module);
        if (smcf->zone == NULL) {
            return SG_CONF_ERROR;
        }
        smcf->zone->init = sg_status_zone_init;
        smcf->file = cf->file->name;
        smcf->line = sg_conf_line(cf);
    }
    return SG_CONF_OK;
}

static char *
sg_status_allow(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_status_main_conf_t  *smcf = conf;

    (void) cmd;
    return sg_conf_add_cidr(cf, &smcf->allow);
}

static char *
sg_status_write_allow(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_status_main_conf_t  *smcf = conf;

    (void) cmd;
    if (smcf->write_allow == NULL) {
        smcf->write_allow_file = cf->file->name;
        smcf->write_allow_line = sg_conf_line(cf);
    }
    return sg_conf_add_cidr(cf, &smcf->write_allow);
}

static void *
sg_status_create_main_conf(sg_conf_t *cf)
{
    sg_status_main_conf_t  *smcf;

    smcf = sg_pcalloc(cf->pool, sizeof(sg_status_main_conf_t));
    if (smcf == NULL
        || sg_array_init(&smcf->listens, cf->pool, 1, sizeof(sg_addr_t))
        || sg_array_init(&smcf->servers, cf->pool, 4,
                         sizeof(sg_status_srv_conf_t *))
        || sg_array_init(&smcf->addrs, cf->pool, 4,
                         sizeof(sg_status_addr_t)))
    {
        return NULL;
    }
    smcf->timeout = SG_CONF_UNSET_MSEC;
    smcf->write = SG_CONF_UNSET;
    return smcf;
}

static void *
sg_status_create_srv_conf(sg_conf_t *cf)
{
    sg_status_srv_conf_t  *sscf;

    sscf = sg_pcalloc(cf->pool, sizeof(sg_status_srv_conf_t));
    if (sscf) {
        sscf->slot = -1;
    }
    return sscf;
}

/* Each server: its label (the smtp module's, unique among the servers:
 * "mx.test", then "mx.test#2" for a second server of that name), and
 * its hooks. */
static char *
sg_status_postconfiguration(sg_conf_t *cf, void *conf)
{
    sg_status_srv_conf_t    *sc = conf, **slot;
    sg_status_main_conf_t   *smcf;
    sg_smtp_srv_conf_t      *sscf;
    size_t                   suffix;

    smcf = sg_mail_conf_main((sg_mail_conf_ctx_t *) cf->ctx,
                             sg_status_module);
    if (smcf->timeout == SG_CONF_UNSET_MSEC) {
        smcf->timeout = 10000;
    }
    sg_conf_init_value(smcf->write, 0);
    if (!smcf->checked) {
        smcf->checked = true;
        if (smcf->write_allow && !smcf->write) {
            sg_conf_warn_at(cf, &smcf->write_allow_file,
                            smcf->write_allow_line, "\"status_write_allow\" "
                            "has no effect while \"status_write\" is off");
        }
    }
    if (smcf->zone == NULL) {
        return SG_CONF_OK;              /* no status_listen: no counting */
    }
    sscf = sg_mail_conf_srv((sg_mail_conf_ctx_t *) cf->ctx, sg_smtp_module);
    sc->name = sscf->label;
    sc->sscf = sscf;
    if (sc->name.len > SG_STATUS_KEY - 8) {
        /* as much of the name as a slot's key holds, and the "#N" */
        suffix = sscf->label.len - sscf->server_name.len;
        sc->name.len = SG_STATUS_KEY - 8;
        sc->name.data = sg_pnalloc(cf->pool, sc->name.len);
        if (sc->name.data == NULL) {
            return SG_CONF_ERROR;
        }
        memcpy(sc->name.data, sscf->label.data, sc->name.len - suffix);
        memcpy(sc->name.data + sc->name.len - suffix,
               sscf->label.data + sscf->server_name.len, suffix);
    }
    slot = sg_array_push(&smcf->servers);
    if (slot == NULL) {
        return SG_CONF_ERROR;
    }
    *slot = sc;
    if (sg_smtp_add_hook(sscf, false, sg_status_open, smcf) != SG_OK
        || sg_smtp_add_hook(sscf, true, sg_status_close, sc) != SG_OK)
    {
        return sg_conf_error(cf, 0, "too many session hooks");
    }
    return SG_CONF_OK;
}

static sg_status_main_conf_t *
sg_status_cycle_conf(sg_cycle_t *cycle)
{
    sg_mail_conf_ctx_t  *ctx;

    if (cycle == NULL || cycle->conf_ctx == NULL
        || (ctx = cycle->conf_ctx[sg_mail_module.index]) == NULL)
    {
        return NULL;
    }
    return sg_mail_conf_main(ctx, sg_status_module);
}

/* The slot of key: the one a previous configuration gave it, else a
 * free one; -1 when all are taken.  Under the zone's lock. */
static int
sg_status_slot(sg_status_shm_t *sh, const char *key)
{
    uint32_t  i;

    for (i = 0; i < sh->nslots; i++) {
        if (strcmp(sh->slot[i].key, key) == 0) {
            return (int) i;
        }
    }
    if (sh->nslots == SG_STATUS_SLOTS) {
        return -1;
    }
    i = sh->nslots++;
    memset(&sh->slot[i], 0, sizeof(sh->slot[i]));
    snprintf(sh->slot[i].key, SG_STATUS_KEY, "%s", key);
    return (int) i;
}

/* In the master, once the zone is mapped and the listening sockets are
 * made: every SMTP address and server gets its slot. */
static int
sg_status_init_module(sg_cycle_t *cycle)
{
    sg_status_main_conf_t  *smcf = sg_status_cycle_conf(cycle);
    sg_status_srv_conf_t  **srv;
    sg_status_addr_t       *a, *as;
    sg_listening_t         *ls;
    sg_status_shm_t        *sh;
    size_t                  i, j;
    char                    key[SG_STATUS_KEY];
    unsigned                lost = 0;

    if (smcf == NULL || smcf->zone == NULL || smcf->zone->data == NULL) {
        return SG_OK;                   /* none, or -t */
    }
    sh = smcf->zone->data;
    ls = cycle->listening.elts;
    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].handler != sg_smtp_init_session) {
            continue;
        }
        as = smcf->addrs.elts;
        for (j = 0; j < smcf->addrs.nelts && as[j].ac != ls[i].servers; j++) {
            /* a reuseport copy of one seen */
        }
        if (j < smcf->addrs.nelts) {
            continue;
        }
        a = sg_array_push(&smcf->addrs);
        if (a == NULL) {
            return SG_ERROR;
        }
        a->ac = ls[i].servers;
        a->name = ls[i].addr.name;
    }
    sg_shm_lock(smcf->zone);
    a = smcf->addrs.elts;
    for (i = 0; i < smcf->addrs.nelts; i++) {
        snprintf(key, sizeof(key), "a %.*s", SG_STR_ARG(&a[i].name));
        a[i].slot = sg_status_slot(sh, key);
        lost += a[i].slot < 0;
    }
    srv = smcf->servers.elts;
    for (i = 0; i < smcf->servers.nelts; i++) {
        snprintf(key, sizeof(key), "s %.*s", SG_STR_ARG(&srv[i]->name));
        srv[i]->slot = sg_status_slot(sh, key);
        lost += srv[i]->slot < 0;
    }
    sg_shm_unlock(smcf->zone);
    if (lost) {
        /* the configuration's own error log: this runs before the cycle
         * takes it as its log */
        sg_log_error(SG_LOG_WARN, cycle->new_log.file ? &cycle->new_log
                                                      : cycle->log, 0,
                     "status: %u addresses or "
                     "servers are not counted: the zone's %d slots are "
                     "taken (each address and server named since the "
                     "start keeps one): restart smtpgate to free them",
                     lost, SG_STATUS_SLOTS);
    }
    return SG_OK;
}


/* ---- counting ------------------------------------------------------- */

static uint64_t *
sg_status_counters(sg_status_main_conf_t *smcf, int slot)
{
    sg_status_shm_t  *sh = smcf->zone->data;

    return slot < 0 || sh == NULL ? NULL : sh->slot[slot].c;
}

#define sg_status_add(c, i, n)                                              \
    (void) __atomic_add_fetch(&(c)[i], (uint64_t) (n), __ATOMIC_RELAXED)

static int
sg_status_addr_slot(sg_status_main_conf_t *smcf, sg_connection_t *c)
{
    sg_status_addr_t  *a = smcf->addrs.elts;
    size_t             i;

    for (i = 0; i < smcf->addrs.nelts; i++) {
        if (a[i].ac == c->listening->servers) {
            return a[i].slot;
        }
    }
    return -1;
}

static void
sg_status_open(sg_smtp_session_t *s, void *conf)
{
    uint64_t  *c = sg_status_counters(conf,
                       sg_status_addr_slot(conf, s->connection));

    if (c) {
        sg_status_add(c, SG_ST_CONNECTIONS, 1);
        sg_status_add(c, SG_ST_ACTIVE, 1);
    }
}

/* One observation of ms (none when negative) in the histogram at h. */
static void
sg_status_observe(uint64_t *c, unsigned h, int64_t ms)
{
    size_t  b;

    if (ms < 0) {
        return;
    }
    for (b = 0; b + 1 < SG_STATUS_NBUCKETS; b++) {
        if ((uint64_t) ms <= sg_status_buckets[b]) {
            break;
        }
    }
    sg_status_add(c, h + b, 1);
    sg_status_add(c, h + SG_STATUS_NBUCKETS, (uint64_t) ms);
    sg_status_add(c, h + SG_STATUS_NBUCKETS + 1, 1);
}

static void
sg_status_close(sg_smtp_session_t *s, void *conf)
{
    sg_status_srv_conf_t   *sc = conf;
    sg_status_main_conf_t  *smcf;
    sg_connection_t        *conn = s->connection;
    uint64_t               *c;
    size_t                  i;

    smcf = sg_mail_conf_main(s->conf->ctx, sg_status_module);
    c = sg_status_counters(smcf, sg_status_addr_slot(smcf, conn));
    if (c) {
        (void) __atomic_sub_fetch(&c[SG_ST_ACTIVE], 1, __ATOMIC_RELAXED);
    }
    c = sg_status_counters(smcf, sc->slot);
    if (c == NULL) {
        return;
    }
    for (i = 0; i < SG_STATUS_NENDS; i++) {
        if (strcmp(s->status, sg_status_ends[i]) == 0) {
            sg_status_add(c, SG_ST_END + i, 1);
            break;
        }
    }
    if (s->auth_result == SG_SMTP_AUTH_RESULT_OK) {
        sg_status_add(c, SG_ST_LOGINS, 1);
    }
    if (s->sasl && s->sasl->failures) {
        sg_status_add(c, SG_ST_AUTH_FAILURES, s->sasl->failures);
    }
    if (s->sasl && s->sasl->tempfails) {
        sg_status_add(c, SG_ST_AUTH_TEMPFAILS, s->sasl->tempfails);
    }
    sg_status_add(c, SG_ST_MESSAGES, s->messages);
    sg_status_add(c, SG_ST_LIMITED_MAIL, s->limited[SG_SMTP_STEP_MAIL]);
    sg_status_add(c, SG_ST_LIMITED_RCPT, s->limited[SG_SMTP_STEP_RCPT]);
    sg_status_add(c, SG_ST_SENDERS_REFUSED, s->senders_refused);
    sg_status_add(c, SG_ST_RECEIVED, conn->received);
    sg_status_add(c, SG_ST_SENT, conn->sent);
    if (sg_connection_tls(conn)) {
        sg_status_add(c, SG_ST_TLS, 1);
    }
    sg_status_observe(c, SG_ST_AUTH_HIST, s->auth_time);
    sg_status_observe(c, SG_ST_UPC_HIST, s->upstream_connect_time);
}

static uint64_t
sg_status_read(const uint64_t *c, unsigned i)
{
    return __atomic_load_n(&c[i], __ATOMIC_RELAXED);
}


/* ---- responses ------------------------------------------------------ */

static void __attribute__((format(printf, 2, 3)))
sg_status_printf(sg_status_out_t *o, const char *fmt, ...)
{
    va_list   args;
    int       n;
    size_t    cap;
    u_char   *p;

    if (o->data == NULL && !o->failed) {
        o->data = malloc(4096);
        o->cap = 4096;
        o->failed = o->data == NULL;
    }
    for ( ;; ) {
        if (o->failed) {
            return;
        }
        va_start(args, fmt);
        n = vsnprintf((char *) o->data + o->len, o->cap - o->len, fmt, args);
        va_end(args);
        if (n < 0) {
            o->failed = true;
            return;
        }
        if ((size_t) n < o->cap - o->len) {
            o->len += (size_t) n;
            return;
        }
        cap = sg_max(o->cap * 2, o->len + (size_t) n + 1);
        if (cap > SG_STATUS_RESPONSE_MAX) {
            o->failed = true;
            return;
        }
        p = realloc(o->data, cap);
        if (p == NULL) {
            o->failed = true;
            return;
        }
        o->data = p;
        o->cap = cap;
    }
}

/* A label value as Prometheus reads it: '\', '"' and LF escaped. */
static const char *
sg_status_label(const sg_str_t *v, char *buf, size_t size)
{
    size_t  i, n = 0;

    for (i = 0; i < v->len && n + 3 < size; i++) {
        if (v->data[i] == '\\' || v->data[i] == '"') {
            buf[n++] = '\\';
            buf[n++] = (char) v->data[i];
        } else if (v->data[i] == '\n') {
            buf[n++] = '\\';
            buf[n++] = 'n';
        } else {
            buf[n++] = (char) v->data[i];
        }
    }
    buf[n] = '\0';
    return buf;
}

static void
sg_status_help(sg_status_out_t *o, const char *name, const char *type,
    const char *help)
{
    sg_status_printf(o, "# HELP smtpgate_%s %s\n# TYPE smtpgate_%s %s\n",
                     name, help, name, type);
}

#if (SG_STATUS_SPOOLS)

/* The forwarding spools: each "server spool:DIR forward" of a group,
 * with the counters its forwarder keeps (sg_spool_stats_t). */
typedef struct {
    sg_upstream_t       *u;
    sg_spool_t          *sp;
    sg_spool_stats_t     st;          /* a copy */
} sg_status_spool_t;

static size_t
sg_status_spools(sg_status_spool_t *out, size_t max)
{
    sg_upstream_t       **u;
    sg_upstream_peer_t   *p;
    sg_spool_stats_t     *st;
    size_t                n, i, j, k = 0;

    u = sg_upstream_groups(&n);
    for (i = 0; i < n; i++) {
        p = u[i]->peers.elts;
        for (j = 0; j < u[i]->peers.nelts && k < max; j++) {
            st = p[j].forward ? sg_spool_stats(p[j].spool) : NULL;
            if (st == NULL) {
                continue;
            }
            out[k].u = u[i];
            out[k].sp = p[j].spool;
            out[k].st.queued = __atomic_load_n(&st->queued, __ATOMIC_RELAXED);
            out[k].st.oldest = __atomic_load_n(&st->oldest, __ATOMIC_RELAXED);
            out[k].st.listed = __atomic_load_n(&st->listed, __ATOMIC_RELAXED);
            out[k].st.delivered = __atomic_load_n(&st->delivered,
                                                  __ATOMIC_RELAXED);
            out[k].st.deferred = __atomic_load_n(&st->deferred,
                                                 __ATOMIC_RELAXED);
            out[k].st.failed = __atomic_load_n(&st->failed, __ATOMIC_RELAXED);
            out[k].st.reports = __atomic_load_n(&st->reports,
                                                __ATOMIC_RELAXED);
            out[k].st.free = __atomic_load_n(&st->free, __ATOMIC_RELAXED);
            out[k].st.held = __atomic_load_n(&st->held, __ATOMIC_RELAXED);
            k++;
        }
    }
    return k;
}

/* Seconds since the oldest queued message arrived, at the listing. */
static uint64_t
sg_status_spool_age(const sg_spool_stats_t *st)
{
    uint64_t  now = (uint64_t) time(NULL);

    return st->oldest && st->queued && now > st->oldest
           ? now - st->oldest : 0;
}

static void
sg_status_spool_metrics(sg_status_out_t *o)
{
    static const struct {
        const char  *name;
        const char  *type;
        const char  *help;
    } m[] = {
        { "spool_queue_messages", "gauge",
          "Messages waiting in a forwarding spool (at its last listing, "
          "less those sent since)." },
        { "spool_queue_oldest_seconds", "gauge",
          "Age of the oldest message waiting, at the last listing." },
        { "spool_forward_recipients_total", "counter",
          "Recipients of forwarded messages, by result: delivered, "
          "deferred (once per try), failed." },
        { "spool_forward_reports_total", "counter",
          "Delivery status notifications queued for senders." },
        { "spool_queue_held_messages", "gauge",
          "Messages held in a forwarding spool (POST /queue/ID/hold), at "
          "its last listing." },
        { "spool_free_bytes", "gauge",
          "Bytes free on the spool's file system for smtpgate's user, at "
          "the last listing (0: not known yet)." },
    };
    static const char   *results[] = { "delivered", "deferred", "failed" };
    sg_status_spool_t    sp[64];
    size_t               n, i, k, r;
    char                 l[512], d[512];
    uint64_t             v;

    n = sg_status_spools(sp, sg_nelems(sp));
    if (n == 0) {
        return;
    }
    for (k = 0; k < sg_nelems(m); k++) {
        sg_status_help(o, m[k].name, m[k].type, m[k].help);
        for (i = 0; i < n; i++) {
            sg_status_label(&sp[i].u->name, l, sizeof(l));
            sg_status_label(sg_spool_dir(sp[i].sp), d, sizeof(d));
            if (k == 2) {
                for (r = 0; r < 3; r++) {
                    v = r == 0 ? sp[i].st.delivered
                        : r == 1 ? sp[i].st.deferred : sp[i].st.failed;
                    sg_status_printf(o, "smtpgate_%s{upstream=\"%s\","
                                     "spool=\"%s\",result=\"%s\"} %llu\n",
                                     m[k].name, l, d, results[r],
                                     (unsigned long long) v);
                }
                continue;
            }
            v = k == 0 ? sp[i].st.queued
                : k == 1 ? sg_status_spool_age(&sp[i].st)
                : k == 3 ? sp[i].st.reports
                : k == 4 ? sp[i].st.held : sp[i].st.free;
            sg_status_printf(o, "smtpgate_%s{upstream=\"%s\",spool=\"%s\"} "
                             "%llu\n", m[k].name, l, d,
                             (unsigned long long) v);
        }
    }
}

static json_t *
sg_status_spool_json(void)
{
    sg_status_spool_t   sp[64];
    const sg_str_t     *dir;
    json_t             *arr, *obj;
    size_t              n, i;

    arr = json_array();
    n = sg_status_spools(sp, sg_nelems(sp));
    for (i = 0; i < n; i++) {
        dir = sg_spool_dir(sp[i].sp);
        obj = json_object();
        json_object_set_new(obj, "directory", json_stringn(
                            (const char *) dir->data, dir->len));
        json_object_set_new(obj, "upstream", json_stringn(
                            (const char *) sp[i].u->name.data,
                            sp[i].u->name.len));
        json_object_set_new(obj, "queued",
                            json_integer((json_int_t) sp[i].st.queued));
        json_object_set_new(obj, "oldest_seconds", json_integer(
                            (json_int_t) sg_status_spool_age(&sp[i].st)));
        json_object_set_new(obj, "delivered",
                            json_integer((json_int_t) sp[i].st.delivered));
        json_object_set_new(obj, "deferred",
                            json_integer((json_int_t) sp[i].st.deferred));
        json_object_set_new(obj, "failed",
                            json_integer((json_int_t) sp[i].st.failed));
        json_object_set_new(obj, "reports",
                            json_integer((json_int_t) sp[i].st.reports));
        json_object_set_new(obj, "held",
                            json_integer((json_int_t) sp[i].st.held));
        json_object_set_new(obj, "free_bytes",
                            json_integer((json_int_t) sp[i].st.free));
        json_array_append_new(arr, obj);
    }
    return arr;
}

#endif

/* The timing histograms, per server, cumulative as Prometheus reads
 * them, in seconds. */
static void
sg_status_histograms(sg_status_main_conf_t *smcf, sg_status_out_t *o)
{
    static const struct {
        unsigned     h;
        const char  *name;
        const char  *help;
    } hist[] = {
        { SG_ST_AUTH_HIST, "auth_duration_seconds",
          "How long each session's last authentication took (auth_cache "
          "or the backend), as $auth_time." },
        { SG_ST_UPC_HIST, "upstream_connect_duration_seconds",
          "How long the backend connection that took each session took "
          "to be ready (connect, greeting, TLS, EHLO, XCLIENT, AUTH), as "
          "$upstream_connect_time." },
    };
    sg_status_srv_conf_t  **srv = smcf->servers.elts;
    uint64_t               *c, sum;
    size_t                  k, i, b;
    char                    l[512];

    for (k = 0; k < sg_nelems(hist); k++) {
        sg_status_help(o, hist[k].name, "histogram", hist[k].help);
        for (i = 0; i < smcf->servers.nelts; i++) {
            if ((c = sg_status_counters(smcf, srv[i]->slot)) == NULL) {
                continue;
            }
            sg_status_label(&srv[i]->name, l, sizeof(l));
            sum = 0;
            for (b = 0; b < SG_STATUS_NBUCKETS; b++) {
                sum += sg_status_read(c, hist[k].h + b);
                if (b + 1 < SG_STATUS_NBUCKETS) {
                    sg_status_printf(o, "smtpgate_%s_bucket{server=\"%s\","
                                     "le=\"%u.%03u\"} %llu\n",
                                     hist[k].name, l,
                                     sg_status_buckets[b] / 1000,
                                     sg_status_buckets[b] % 1000,
                                     (unsigned long long) sum);
                } else {
                    sg_status_printf(o, "smtpgate_%s_bucket{server=\"%s\","
                                     "le=\"+Inf\"} %llu\n", hist[k].name,
                                     l, (unsigned long long) sum);
                }
            }
            sum = sg_status_read(c, hist[k].h + SG_STATUS_NBUCKETS);
            sg_status_printf(o, "smtpgate_%s_sum{server=\"%s\"} "
                             "%llu.%03u\n", hist[k].name, l,
                             (unsigned long long) (sum / 1000),
                             (unsigned) (sum % 1000));
            sg_status_printf(o, "smtpgate_%s_count{server=\"%s\"} %llu\n",
                             hist[k].name, l, (unsigned long long)
                             sg_status_read(c, hist[k].h
                                               + SG_STATUS_NBUCKETS + 1));
        }
    }
}

#if (SG_HAVE_AUTH_HTTP_MODULE)

#define SG_STATUS_AUTH_MAX  128

typedef struct {
    sg_str_t               url;
    sg_auth_http_counts_t  n;
} sg_status_auth_t;

/* The auth_http services of every server, each once. */
static size_t
sg_status_auth_services(sg_status_main_conf_t *smcf, sg_status_auth_t *out)
{
    sg_status_srv_conf_t  **srv = smcf->servers.elts;
    sg_auth_http_counts_t   n;
    sg_str_t                url;
    size_t                  i, k, j, count = 0;

    for (i = 0; i < smcf->servers.nelts; i++) {
        for (k = 0; sg_auth_http_service(srv[i]->sscf, k, &url, &n); k++) {
            for (j = 0; j < count; j++) {
                if (out[j].url.len == url.len
                    && memcmp(out[j].url.data, url.data, url.len) == 0)
                {
                    break;
                }
            }
            if (j == count && count < SG_STATUS_AUTH_MAX) {
                out[count].url = url;
                out[count].n = n;
                count++;
            }
        }
    }
    return count;
}

static bool
sg_status_auth_up(const sg_auth_http_counts_t *n)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000
           >= n->down_until;
}

static void
sg_status_auth_metrics(sg_status_main_conf_t *smcf, sg_status_out_t *o)
{
    static const char  *help[] = {
        "Answers read from each auth_http service.",
        "Requests to each auth_http service that got no usable answer "
        "(it is then skipped for auth_http_fail_timeout).",
        "0 while a worker skips the service after a failure "
        "(auth_http_fail_timeout), else 1.",
    };
    static const char  *names[] = {
        "auth_http_answers_total", "auth_http_failures_total",
        "auth_http_service_up"
    };
    sg_status_auth_t    a[SG_STATUS_AUTH_MAX];
    size_t              n, i, k;
    char                l[512];
    uint64_t            v;

    n = sg_status_auth_services(smcf, a);
    if (n == 0) {
        return;
    }
    for (k = 0; k < 3; k++) {
        sg_status_help(o, names[k], k == 2 ? "gauge" : "counter", help[k]);
        for (i = 0; i < n; i++) {
            v = k == 0 ? a[i].n.answered : k == 1 ? a[i].n.failed
                : sg_status_auth_up(&a[i].n);
            sg_status_printf(o, "smtpgate_%s{service=\"%s\"} %llu\n",
                             names[k], sg_status_label(&a[i].url, l,
                                                       sizeof(l)),
                             (unsigned long long) v);
        }
    }
}

static json_t *
sg_status_auth_json(sg_status_main_conf_t *smcf)
{
    sg_status_auth_t   a[SG_STATUS_AUTH_MAX];
    json_t            *arr, *obj;
    size_t             n, i;

    arr = json_array();
    n = sg_status_auth_services(smcf, a);
    for (i = 0; i < n; i++) {
        obj = json_object();
        json_object_set_new(obj, "url", json_stringn(
                            (const char *) a[i].url.data, a[i].url.len));
        json_object_set_new(obj, "answered",
                            json_integer((json_int_t) a[i].n.answered));
        json_object_set_new(obj, "failed",
                            json_integer((json_int_t) a[i].n.failed));
        json_object_set_new(obj, "up", json_boolean(sg_status_auth_up(
                                                    &a[i].n)));
        json_array_append_new(arr, obj);
    }
    return arr;
}

#endif

static void
sg_status_metrics(sg_status_main_conf_t *smcf, sg_status_out_t *o)
{
    sg_status_shm_t        *sh = smcf->zone->data;
    sg_status_addr_t       *a = smcf->addrs.elts;
    sg_status_srv_conf_t  **srv = smcf->servers.elts;
    uint64_t               *c;
    size_t                  i, e;
    char                    l[512];
    static const struct {
        unsigned     counter;
        const char  *name;
        const char  *help;
    } per_server[] = {
        { SG_ST_LOGINS, "logins_total",
          "Sessions that logged in (AUTH answered 235)." },
        { SG_ST_AUTH_FAILURES, "auth_failures_total",
          "AUTH attempts refused (535)." },
        { SG_ST_AUTH_TEMPFAILS, "auth_tempfails_total",
          "Logins answered as a temporary failure (454; 451 for an "
          "anonymous session): the authentication backend did not "
          "answer in time or at all, or a limit_conn by login." },
        { SG_ST_MESSAGES, "messages_total",
          "Messages the backend accepted, or the spool stored." },
        { SG_ST_LIMITED_MAIL, "rate_limited_messages_total",
          "MAIL commands refused by limit_message (450 4.7.1)." },
        { SG_ST_LIMITED_RCPT, "rate_limited_recipients_total",
          "RCPT commands refused by limit_recipient (450 4.7.1)." },
        { SG_ST_SENDERS_REFUSED, "senders_refused_total",
          "MAIL commands refused by smtp_sender_allow (553 5.7.1)." },
        { SG_ST_RECEIVED, "received_bytes_total",
          "Bytes read from clients." },
        { SG_ST_SENT, "sent_bytes_total", "Bytes written to clients." },
        { SG_ST_TLS, "tls_sessions_total",
          "Sessions that ended over TLS." },
    };

    sg_status_help(o, "info", "gauge", "The running version.");
    sg_status_printf(o, "smtpgate_info{version=\"%s\"} 1\n", SG_VERSION);
    sg_status_help(o, "start_time_seconds", "gauge",
                   "When the counters started, in seconds since the "
                   "epoch.");
    sg_status_printf(o, "smtpgate_start_time_seconds %llu\n",
                     (unsigned long long) sh->started);

    sg_status_help(o, "connections_total", "counter",
                   "Client connections accepted, by listening address.");
    for (i = 0; i < smcf->addrs.nelts; i++) {
        if ((c = sg_status_counters(smcf, a[i].slot)) != NULL) {
            sg_status_printf(o, "smtpgate_connections_total{listen=\"%s\"} "
                             "%llu\n", sg_status_label(&a[i].name, l,
                                                       sizeof(l)),
                             (unsigned long long)
                             sg_status_read(c, SG_ST_CONNECTIONS));
        }
    }
    sg_status_help(o, "sessions_active", "gauge",
                   "Client sessions open now, by listening address.");
    for (i = 0; i < smcf->addrs.nelts; i++) {
        if ((c = sg_status_counters(smcf, a[i].slot)) != NULL) {
            sg_status_printf(o, "smtpgate_sessions_active{listen=\"%s\"} "
                             "%lld\n", sg_status_label(&a[i].name, l,
                                                       sizeof(l)),
                             (long long) sg_status_read(c, SG_ST_ACTIVE));
        }
    }
    sg_status_help(o, "sessions_total", "counter",
                   "Client sessions ended, by server and how they ended.");
    for (i = 0; i < smcf->servers.nelts; i++) {
        if ((c = sg_status_counters(smcf, srv[i]->slot)) == NULL) {
            continue;
        }
        sg_status_label(&srv[i]->name, l, sizeof(l));
        for (e = 0; e < SG_STATUS_NENDS; e++) {
            sg_status_printf(o, "smtpgate_sessions_total{server=\"%s\","
                             "status=\"%s\"} %llu\n", l, sg_status_ends[e],
                             (unsigned long long)
                             sg_status_read(c, SG_ST_END + e));
        }
    }
    for (e = 0; e < sg_nelems(per_server); e++) {
        sg_status_help(o, per_server[e].name, "counter", per_server[e].help);
        for (i = 0; i < smcf->servers.nelts; i++) {
            if ((c = sg_status_counters(smcf, srv[i]->slot)) != NULL) {
                sg_status_printf(o, "smtpgate_%s{server=\"%s\"} %llu\n",
                                 per_server[e].name,
                                 sg_status_label(&srv[i]->name, l,
                                                 sizeof(l)),
                                 (unsigned long long)
                                 sg_status_read(c, per_server[e].counter));
            }
        }
    }
    sg_status_histograms(smcf, o);
#if (SG_HAVE_AUTH_HTTP_MODULE)
    sg_status_auth_metrics(smcf, o);
#endif
#if (SG_HAVE_UPSTREAM_MODULE)
    {
        sg_upstream_t       **u;
        sg_upstream_peer_t   *p;
        size_t                n, k;
        char                  pl[512];
        static const struct {
            const char  *name;
            const char  *help;
        } kinds[] = {
            { "up", "1 when the peer takes sessions (not down, not "
                    "draining, not failing its health checks, not out "
                    "after max_fails), else 0." },
            { "active", "Sessions relayed to the peer now." },
            { "failures", "Failed attempts counted against the peer "
                          "(max_fails)." },
            { "draining", "1 while the operator drains the peer (the "
                          "status API), else 0." },
            { "weight", "The peer's weight now: the configured one, or "
                        "the operator's (the status API)." },
        };
        uint64_t              v;

        u = sg_upstream_groups(&n);
        for (e = 0; e < sg_nelems(kinds); e++) {
            char  name[64];

            snprintf(name, sizeof(name), "upstream_peer_%s", kinds[e].name);
            sg_status_help(o, name, "gauge", kinds[e].help);
            for (i = 0; i < n; i++) {
                if (u[i]->implicit || u[i]->zone == NULL) {
                    continue;
                }
                sg_status_label(&u[i]->name, l, sizeof(l));
                p = u[i]->peers.elts;
                for (k = 0; k < u[i]->peers.nelts; k++) {
                    v = e == 0 ? sg_upstream_peer_up(u[i], k)
                        : e == 1 ? sg_upstream_state(u[i], k)->conns
                        : e == 2 ? sg_upstream_state(u[i], k)->fails
                        : e == 3 ? sg_upstream_state(u[i], k)->drain
                        : (uint64_t) sg_upstream_weight(u[i], k);
                    sg_status_printf(o, "smtpgate_%s{upstream=\"%s\","
                                     "peer=\"%s\"} %llu\n", name, l,
                                     sg_status_label(&p[k].addr.name, pl,
                                                     sizeof(pl)),
                                     (unsigned long long) v);
                }
            }
        }
    }
#endif
#if (SG_STATUS_SPOOLS)
    sg_status_spool_metrics(o);
#endif
#if (SG_HAVE_SSL_MODULE)
    sg_status_help(o, "ssl_certificate_not_after_seconds", "gauge",
                   "When each server certificate expires, in seconds "
                   "since the epoch.");
    for (i = 0; i < smcf->servers.nelts; i++) {
        sg_ssl_srv_t        *ss = sg_ssl_srv(srv[i]->sscf);
        sg_ssl_cert_info_t  *ci;
        char                 fl[PATH_MAX + 64];

        if (ss == NULL || ss->certs == NULL) {
            continue;
        }
        ci = ss->certs->elts;
        sg_status_label(&srv[i]->name, l, sizeof(l));
        for (e = 0; e < ss->certs->nelts; e++) {
            sg_status_printf(o, "smtpgate_ssl_certificate_not_after_seconds"
                             "{server=\"%s\",file=\"%s\"} %lld\n", l,
                             sg_status_label(&ci[e].file, fl, sizeof(fl)),
                             (long long) ci[e].not_after);
        }
    }
#endif
}

static json_t *
sg_status_json_str(const sg_str_t *v)
{
    return json_stringn((const char *) v->data, v->len);
}

#if (SG_HAVE_SSL_MODULE)
/* A server's certificates: "certificates": [{"file", "not_before",
 * "not_after"}]. */
static void
sg_status_json_certs(sg_smtp_srv_conf_t *sscf, json_t *obj)
{
    sg_ssl_srv_t        *ss = sg_ssl_srv(sscf);
    sg_ssl_cert_info_t  *ci;
    json_t              *arr, *c;
    size_t               i;

    if (ss == NULL || ss->certs == NULL) {
        return;
    }
    arr = json_array();
    ci = ss->certs->elts;
    for (i = 0; i < ss->certs->nelts; i++) {
        c = json_object();
        json_object_set_new(c, "file", sg_status_json_str(&ci[i].file));
        json_object_set_new(c, "not_before",
                            json_integer((json_int_t) ci[i].not_before));
        json_object_set_new(c, "not_after",
                            json_integer((json_int_t) ci[i].not_after));
        json_array_append_new(arr, c);
    }
    json_object_set_new(obj, "certificates", arr);
}
#endif

static void
sg_status_json(sg_status_main_conf_t *smcf, sg_status_out_t *o)
{
    sg_status_shm_t        *sh = smcf->zone->data;
    sg_status_addr_t       *a = smcf->addrs.elts;
    sg_status_srv_conf_t  **srv = smcf->servers.elts;
    json_t                 *root, *arr, *obj, *ends;
    uint64_t               *c;
    size_t                  i, e;
    char                   *text;

    root = json_object();
    json_object_set_new(root, "version", json_string(SG_VERSION));
    json_object_set_new(root, "start_time", json_integer((json_int_t)
                                                         sh->started));
    arr = json_array();
    for (i = 0; i < smcf->addrs.nelts; i++) {
        if ((c = sg_status_counters(smcf, a[i].slot)) == NULL) {
            continue;
        }
        obj = json_object();
        json_object_set_new(obj, "address", sg_status_json_str(&a[i].name));
        json_object_set_new(obj, "connections", json_integer((json_int_t)
                            sg_status_read(c, SG_ST_CONNECTIONS)));
        json_object_set_new(obj, "active", json_integer((json_int_t)
                            sg_status_read(c, SG_ST_ACTIVE)));
        json_array_append_new(arr, obj);
    }
    json_object_set_new(root, "listen", arr);
    arr = json_array();
    for (i = 0; i < smcf->servers.nelts; i++) {
        if ((c = sg_status_counters(smcf, srv[i]->slot)) == NULL) {
            continue;
        }
        obj = json_object();
        ends = json_object();
        for (e = 0; e < SG_STATUS_NENDS; e++) {
            json_object_set_new(ends, sg_status_ends[e], json_integer(
                (json_int_t) sg_status_read(c, SG_ST_END + e)));
        }
        json_object_set_new(obj, "name", sg_status_json_str(&srv[i]->name));
        json_object_set_new(obj, "sessions", ends);
#define SG_STATUS_J(key, i)                                                  \
        json_object_set_new(obj, key, json_integer((json_int_t)             \
                                                   sg_status_read(c, i)))
        SG_STATUS_J("logins", SG_ST_LOGINS);
        SG_STATUS_J("auth_failures", SG_ST_AUTH_FAILURES);
        SG_STATUS_J("auth_tempfails", SG_ST_AUTH_TEMPFAILS);
        SG_STATUS_J("messages", SG_ST_MESSAGES);
        SG_STATUS_J("rate_limited_messages", SG_ST_LIMITED_MAIL);
        SG_STATUS_J("rate_limited_recipients", SG_ST_LIMITED_RCPT);
        SG_STATUS_J("senders_refused", SG_ST_SENDERS_REFUSED);
        SG_STATUS_J("received_bytes", SG_ST_RECEIVED);
        SG_STATUS_J("sent_bytes", SG_ST_SENT);
        SG_STATUS_J("tls_sessions", SG_ST_TLS);
#undef SG_STATUS_J
#if (SG_HAVE_SSL_MODULE)
        sg_status_json_certs(srv[i]->sscf, obj);
#endif
        json_array_append_new(arr, obj);
    }
    json_object_set_new(root, "servers", arr);
#if (SG_HAVE_AUTH_HTTP_MODULE)
    json_object_set_new(root, "auth_services", sg_status_auth_json(smcf));
#endif
#if (SG_HAVE_UPSTREAM_MODULE)
    {
        sg_upstream_t       **u;
        sg_upstream_peer_t   *p;
        sg_upstream_state_t  *st;
        json_t               *peers, *peer;
        size_t                n, k;

        u = sg_upstream_groups(&n);
        arr = json_array();
        for (i = 0; i < n; i++) {
            if (u[i]->implicit || u[i]->zone == NULL) {
                continue;
            }
            obj = json_object();
            peers = json_array();
            p = u[i]->peers.elts;
            for (k = 0; k < u[i]->peers.nelts; k++) {
                st = sg_upstream_state(u[i], k);
                peer = json_object();
                json_object_set_new(peer, "address",
                                    sg_status_json_str(&p[k].addr.name));
                json_object_set_new(peer, "up", json_boolean(
                                    sg_upstream_peer_up(u[i], k)));
                json_object_set_new(peer, "active",
                                    json_integer((json_int_t) st->conns));
                json_object_set_new(peer, "failures",
                                    json_integer((json_int_t) st->fails));
                json_object_set_new(peer, "backup",
                                    json_boolean(p[k].backup));
                json_object_set_new(peer, "down", json_boolean(p[k].down));
                json_object_set_new(peer, "health_check_failed",
                                    json_boolean(st->hc_down));
                json_object_set_new(peer, "draining",
                                    json_boolean(st->drain));
                json_object_set_new(peer, "weight", json_integer(
                                    (json_int_t) sg_upstream_weight(u[i],
                                                                    k)));
                json_array_append_new(peers, peer);
            }
            json_object_set_new(obj, "name", sg_status_json_str(&u[i]->name));
            json_object_set_new(obj, "peers", peers);
            json_array_append_new(arr, obj);
        }
        json_object_set_new(root, "upstreams", arr);
    }
#endif
#if (SG_STATUS_SPOOLS)
    json_object_set_new(root, "spools", sg_status_spool_json());
#endif
    text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text == NULL) {
        o->failed = true;
        return;
    }
    sg_status_printf(o, "%s\n", text);
    free(text);
}


/* ---- HTTP ----------------------------------------------------------- */

static void
sg_status_close_connection(sg_connection_t *c)
{
    sg_status_conn_t  *sc = c->data;
    sg_pool_t         *pool = c->pool;

    if (sc) {
        free(sc->out);
        if (sc->task) {
            sg_task_cancel(sc->task);   /* the pool frees it */
        }
    }
    sg_close_connection(c);
    sg_pool_destroy(pool);
}

/* After the response: the write side closed, what the client still
 * sends (the rest of an over-long request) is read and dropped until it
 * closes too, for at most SG_STATUS_LINGER ms.  Closing with unread
 * bytes would send a reset, which can destroy the response before the
 * client reads it. */
static void
sg_status_drain(sg_event_t *ev)
{
    sg_connection_t   *c = ev->data;
    sg_status_conn_t  *sc = c->data;
    ssize_t            n;

    if (ev->timedout) {
        sg_status_close_connection(c);
        return;
    }
    for ( ;; ) {
        n = c->recv(c, sc->in, SG_STATUS_REQUEST_MAX);
        if (n == SG_AGAIN) {
            return;
        }
        if (n <= 0) {
            sg_status_close_connection(c);
            return;
        }
    }
}

static void
sg_status_write(sg_event_t *ev)
{
    sg_connection_t   *c = ev->data;
    sg_status_conn_t  *sc = c->data;
    ssize_t            n;

    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, c->log, 0, "status client timed out "
                     "reading the response (status_timeout)");
        sg_status_close_connection(c);
        return;
    }
    if (sc->out == NULL) {
        return;                 /* writable before there is a response */
    }
    while (sc->sent < sc->nout) {
        n = c->send(c, sc->out + sc->sent, sc->nout - sc->sent);
        if (n == SG_AGAIN) {
            if (!sg_event_timer_set(c->write)) {
                sg_event_add_timer(c->write, sc->conf->timeout);
            }
            return;
        }
        if (n < 0) {
            sg_status_close_connection(c);
            return;
        }
        sc->sent += (size_t) n;
    }
    sg_event_del_timer(c->write);
    if (shutdown(c->fd, SHUT_WR) == -1) {
        sg_status_close_connection(c);
        return;
    }
    c->read->handler = sg_status_drain;
    sg_event_add_timer(c->read, sg_min(sc->conf->timeout, SG_STATUS_LINGER));
    sg_status_drain(c->read);
}

/* The whole response, head and body, into sc->out, then sent. */
static void
sg_status_respond(sg_connection_t *c, unsigned code, const char *type,
    sg_status_out_t *body, bool head_only)
{
    sg_status_conn_t  *sc = c->data;
    sg_status_out_t    o = { NULL, 0, 0, false };
    const char        *reason;
    u_char            *p;

    reason = code == 200 ? "OK" : code == 400 ? "Bad Request"
             : code == 403 ? "Forbidden" : code == 404 ? "Not Found"
             : code == 405 ? "Method Not Allowed" : code == 409 ? "Conflict"
             : code == 503 ? "Service Unavailable"
             : code == 408 ? "Request Timeout"
             : code == 431 ? "Request Header Fields Too Large"
             : "Internal Server Error";
    sg_status_printf(&o, "HTTP/1.1 %u %s\r\nServer: smtpgate/%s\r\n"
                     "Content-Type: %s\r\nContent-Length: %zu\r\n"
                     "%sCache-Control: no-cache\r\nConnection: close\r\n\r\n",
                     code, reason, SG_VERSION, type, body->len,
                     code != 405 ? ""
                     : sc->allow ? sc->allow : "Allow: GET, HEAD\r\n");
    if (!head_only && body->len && !o.failed) {
        if (o.cap - o.len < body->len) {
            p = realloc(o.data, o.len + body->len);
            if (p == NULL) {
                o.failed = true;
            } else {
                o.data = p;
                o.cap = o.len + body->len;
            }
        }
        if (!o.failed) {
            memcpy(o.data + o.len, body->data, body->len);
            o.len += body->len;
        }
    }
    free(body->data);
    if (o.failed) {
        free(o.data);
        sg_status_close_connection(c);
        return;
    }
    sc->out = o.data;
    sc->nout = o.len;
    sg_event_del_timer(c->read);
    c->read->handler = sg_status_drain;     /* (more input is dropped) */
    c->write->handler = sg_status_write;
    sg_status_write(c->write);
}

static void
sg_status_error(sg_connection_t *c, unsigned code, const char *text,
    bool head_only)
{
    sg_status_out_t  body = { NULL, 0, 0, false };

    sg_status_printf(&body, "%s\n", text);
    sg_status_respond(c, code, "text/plain; charset=utf-8", &body,
                      head_only);
}

#if (SG_HAVE_UPSTREAM_MODULE)

/* Whether c may change anything (status_write, status_write_allow), or
 * with reading, read a queued message's envelope and headers, which
 * takes the same rights; if not, it has its 403.  (Every write is on a
 * group or its spool.) */
static bool
sg_status_may_write(sg_connection_t *c, bool reading)
{
    sg_status_conn_t       *sc = c->data;
    sg_status_main_conf_t  *smcf = sc->conf;

    if (!smcf->write) {
        sg_log_error(SG_LOG_INFO, c->log, 0, "status: client %.*s refused "
                     "%s: status_write is off", SG_STR_ARG(&c->addr_text),
                     reading ? "a queued message" : "a write");
        sg_status_error(c, 403, reading ? "Reading a queued message needs "
                        "status_write on" : "Writes are off: set "
                        "status_write on", false);
        return false;
    }
    if (smcf->write_allow == NULL
        || sg_cidr_list_match(smcf->write_allow,
                              (struct sockaddr *) &c->sockaddr))
    {
        return true;
    }
    sg_log_error(SG_LOG_INFO, c->log, 0, "status: client %.*s refused %s "
                 "(status_write_allow)", SG_STR_ARG(&c->addr_text),
                 reading ? "a queued message" : "a write");
    sg_status_error(c, 403, reading ? "Queued messages are not shown to "
                    "this address (status_write_allow)" : "Writes are not "
                    "allowed from this address (status_write_allow)",
                    false);
    return false;
}

/* POST /upstreams/GROUP/PEER/drain|close|ready|weight=N: the operator's
 * say on one peer of a group, answered with the peer's state as JSON. */
static void
sg_status_peer_request(sg_connection_t *c, const sg_str_t *path)
{
    sg_status_out_t         body = { NULL, 0, 0, false };
    sg_status_peer_path_t   pp;
    sg_upstream_t         **u;
    sg_upstream_peer_t     *p;
    json_t                 *obj;
    u_char                  buf[SG_STATUS_REQUEST_MAX];
    uint32_t                active;
    int64_t                 weight, before;
    sg_str_t                v;
    size_t                  n, i, k;
    bool                    drain = false, was, changed, closing;
    char                   *text;

    if (!sg_status_may_write(c, false)) {
        return;
    }
    if (sg_status_parse_peer_path(path, buf, &pp) != SG_OK) {
        sg_status_error(c, 404, "Not found: POST /upstreams/GROUP/PEER/"
                        "drain or /ready, with PEER as /status names it",
                        false);
        return;
    }
    weight = -1;
    closing = false;
    if (sg_str_eq(&pp.action, "drain")) {
        drain = true;
    } else if (sg_str_eq(&pp.action, "close")) {
        closing = true;
    } else if (sg_str_eq(&pp.action, "ready")) {
        drain = false;
    } else if (pp.action.len > 7
               && memcmp(pp.action.data, "weight=", 7) == 0)
    {
        v.data = pp.action.data + 7;
        v.len = pp.action.len - 7;
        if (sg_str_eq(&v, "default")) {
            weight = 0;
        } else if (sg_parse_int(&v, &weight) != SG_OK || weight < 1
                   || weight > 1000)
        {
            sg_status_error(c, 400, "weight= takes 1 to 1000, or default "
                            "(the configured weight)", false);
            return;
        }
    } else {
        sg_status_error(c, 404, "Unknown action: drain, close, ready or "
                        "weight=N", false);
        return;
    }
    u = sg_upstream_groups(&n);
    for (i = 0; i < n; i++) {
        if (!u[i]->implicit && u[i]->zone
            && u[i]->name.len == pp.upstream.len
            && memcmp(u[i]->name.data, pp.upstream.data,
                      pp.upstream.len) == 0)
        {
            break;
        }
    }
    if (i == n) {
        sg_status_error(c, 404, "No such upstream group", false);
        return;
    }
    p = u[i]->peers.elts;
    for (k = 0; k < u[i]->peers.nelts; k++) {
        if (p[k].addr.name.len == pp.peer.len
            && memcmp(p[k].addr.name.data, pp.peer.data, pp.peer.len) == 0)
        {
            break;
        }
    }
    if (k == u[i]->peers.nelts) {
        sg_status_error(c, 404, "No such server in the group: name it as "
                        "/status does (ADDRESS:PORT, [IPv6]:PORT)", false);
        return;
    }
    before = sg_upstream_weight(u[i], k);
    if (closing) {
        sg_upstream_close(u[i], k, &active);
        drain = true;
        changed = true;
        sg_log_error(SG_LOG_NOTICE, c->log, 0, "upstream %.*s: server %.*s "
                     "taken out of service by status client %.*s: its %u "
                     "session%s closed within a second",
                     SG_STR_ARG(&u[i]->name), SG_STR_ARG(&p[k].addr.name),
                     SG_STR_ARG(&c->addr_text), active,
                     active == 1 ? "" : "s");
    } else if (weight >= 0) {
        if (sg_upstream_set_weight(u[i], k, weight) != SG_OK) {
            sg_status_error(c, 409, "A consistent hash group's weights are "
                            "those of the configuration", false);
            return;
        }
        drain = sg_upstream_drain_state(u[i], k, &active);
        changed = before != sg_upstream_weight(u[i], k);
        if (changed) {
            sg_log_error(SG_LOG_NOTICE, c->log, 0, "upstream %.*s: server "
                         "%.*s weight %lld (was %lld) by status client %.*s",
                         SG_STR_ARG(&u[i]->name),
                         SG_STR_ARG(&p[k].addr.name),
                         (long long) sg_upstream_weight(u[i], k),
                         (long long) before, SG_STR_ARG(&c->addr_text));
        }
    } else {
        was = sg_upstream_drain(u[i], k, drain, &active);
        changed = was != drain;
        if (changed) {
            sg_log_error(SG_LOG_NOTICE, c->log, 0, "upstream %.*s: server "
                         "%.*s %s by status client %.*s (%u session%s "
                         "open)", SG_STR_ARG(&u[i]->name),
                         SG_STR_ARG(&p[k].addr.name),
                         drain ? "draining: no new sessions"
                               : "ready: takes sessions again",
                         SG_STR_ARG(&c->addr_text), active,
                         active == 1 ? "" : "s");
        }
    }
    obj = json_object();
    json_object_set_new(obj, "upstream", sg_status_json_str(&u[i]->name));
    json_object_set_new(obj, "address", sg_status_json_str(&p[k].addr.name));
    json_object_set_new(obj, "draining", json_boolean(drain));
    json_object_set_new(obj, "weight", json_integer((json_int_t)
                        sg_upstream_weight(u[i], k)));
    json_object_set_new(obj, "changed", json_boolean(changed));
    json_object_set_new(obj, "up", json_boolean(
                        sg_upstream_peer_up(u[i], k)));
    json_object_set_new(obj, "active", json_integer((json_int_t) active));
    text = json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (text == NULL) {
        sg_status_error(c, 500, "The response could not be made", false);
        return;
    }
    sg_status_printf(&body, "%s\n", text);
    free(text);
    sg_status_respond(c, 200, "application/json", &body, false);
}

#endif

#if (SG_STATUS_SPOOLS)

/* GET /queue: the listing on the thread pool, the answer when done. */
typedef struct {
    sg_task_t                 task;
    sg_connection_t          *c;
    sg_status_queue_spool_t  *spools;
    size_t                    n;
    char                     *json;
    char                      id[128];  /* to act on; "": to list */
    sg_status_queue_action_e  action;
    int                       rc;       /* of the action */
    int                       err;
    size_t                    which;
} sg_status_queue_task_t;

static void
sg_status_queue_work(sg_task_t *t)
{
    sg_status_queue_task_t  *qt = (sg_status_queue_task_t *) t;

    if (qt->action == SG_QUEUE_SHOW) {
        qt->json = sg_status_queue_show(qt->spools, qt->n, qt->id, &qt->rc,
                                        &qt->which);
        qt->err = errno;
        return;
    }
    if (qt->id[0]) {
        qt->rc = sg_status_queue_act(qt->spools, qt->n, qt->id,
                                     qt->action, &qt->which);
        qt->err = errno;
        return;
    }
    qt->json = sg_status_queue_json(qt->spools, qt->n, SG_STATUS_QUEUE_MAX);
}

/* The answer to POST /queue/ID/remove, /hold or /release. */
static void
sg_status_queue_acted(sg_connection_t *c, sg_status_queue_task_t *qt)
{
    static const char  *done[] = { "", "", "removed", "held", "released" };
    static const char  *verb[] = { "", "", "remove", "hold", "release" };
    sg_status_out_t     body = { NULL, 0, 0, false };
    const char         *dir = qt->n ? qt->spools[qt->which].dir : "";
    bool                held = qt->action == SG_QUEUE_HOLD;

    switch (qt->rc) {
    case SG_OK:
        sg_log_error(SG_LOG_NOTICE, c->log, 0, "queue: message %s %s "
                     "%s \"%s\" by status client %.*s", qt->id,
                     done[qt->action], qt->action == SG_QUEUE_REMOVE
                     ? "from" : "in", dir, SG_STR_ARG(&c->addr_text));
        /* fall through */
    case SG_DONE:
        if (qt->action == SG_QUEUE_REMOVE) {
            sg_status_printf(&body, "{\"id\": \"%s\", \"removed\": true}\n",
                             qt->id);
        } else {
            sg_status_printf(&body, "{\"id\": \"%s\", \"held\": %s%s}\n",
                             qt->id, held ? "true" : "false",
                             qt->rc == SG_DONE ? ", \"unchanged\": true"
                                               : "");
        }
        sg_status_respond(c, 200, "application/json", &body, false);
        return;
    case SG_DECLINED:
        sg_status_error(c, 404, "No such message in the forwarding spools",
                        false);
        return;
    case SG_BUSY:
        sg_status_error(c, 409, "The forwarder is delivering it now: try "
                        "again", false);
        return;
    default:
        sg_log_error(SG_LOG_ERR, c->log, qt->err, "queue: could not %s "
                     "message %s in \"%s\"%s", verb[qt->action], qt->id, dir,
                     held ? ": check that smtpgate's user may create and "
                     "write its hold/ directory" : "");
        sg_status_error(c, 500, "It could not be done: see the error log",
                        false);
    }
}

static void
sg_status_queue_done(sg_task_t *t)
{
    sg_status_queue_task_t  *qt = (sg_status_queue_task_t *) t;
    sg_connection_t         *c = qt->c;
    sg_status_conn_t        *sc = c->data;
    sg_status_out_t          body = { NULL, 0, 0, false };

    sc->task = NULL;
    if (qt->action == SG_QUEUE_SHOW && qt->rc != SG_OK) {
        if (qt->rc == SG_DECLINED) {
            sg_status_error(c, 404, "No such message in the forwarding "
                            "spools", sc->head);
            return;
        }
        sg_log_error(SG_LOG_ERR, c->log, qt->err, "queue: message %s in "
                     "\"%s\" could not be read", qt->id,
                     qt->n ? qt->spools[qt->which].dir : "");
        sg_status_error(c, 500, "It could not be read: see the error log",
                        sc->head);
        return;
    }
    if (qt->id[0] && qt->action != SG_QUEUE_SHOW) {
        sg_status_queue_acted(c, qt);
        return;
    }
    if (qt->json == NULL) {
        sg_status_error(c, 500, "The queue could not be read", sc->head);
        return;
    }
    sg_status_printf(&body, "%s\n", qt->json);
    if (body.failed) {
        free(body.data);
        sg_status_error(c, 500, "The response could not be made",
                        sc->head);
        return;
    }
    sg_status_respond(c, 200, "application/json", &body, sc->head);
}

static void
sg_status_queue_destroy(sg_task_t *t)
{
    sg_status_queue_task_t  *qt = (sg_status_queue_task_t *) t;

    free(qt->json);
    free(qt->spools);
    free(qt);
}

static void
sg_status_queue(sg_connection_t *c, bool head, const sg_str_t *id,
    sg_status_queue_action_e action)
{
    sg_status_conn_t        *sc = c->data;
    sg_status_spool_t        sp[64];
    sg_status_queue_task_t  *qt;
    const sg_str_t          *dir;
    size_t                   n, i;
    int                      rc;

    n = sg_status_spools(sp, sg_nelems(sp));
    qt = calloc(1, sizeof(*qt));
    if (qt == NULL
        || (n && (qt->spools = calloc(n, sizeof(*qt->spools))) == NULL))
    {
        free(qt);
        sg_status_error(c, 500, "Out of memory", head);
        return;
    }
    for (i = 0; i < n; i++) {
        dir = sg_spool_dir(sp[i].sp);
        (void) snprintf(qt->spools[i].dir, sizeof(qt->spools[i].dir),
                        "%.*s", SG_STR_ARG(dir));
        (void) snprintf(qt->spools[i].upstream,
                        sizeof(qt->spools[i].upstream), "%.*s",
                        SG_STR_ARG(&sp[i].u->name));
    }
    qt->n = n;
    qt->c = c;
    if (id) {
        (void) snprintf(qt->id, sizeof(qt->id), "%.*s", SG_STR_ARG(id));
        qt->action = action;
    }
    qt->task.work = sg_status_queue_work;
    qt->task.done = sg_status_queue_done;
    qt->task.destroy = sg_status_queue_destroy;
    rc = sg_task_post(&qt->task, c->log);
    if (rc != SG_OK) {
        sg_status_queue_destroy(&qt->task);
        sg_status_error(c, 503, "Busy: try again", head);
        return;
    }
    sc->task = &qt->task;
    sc->head = head;
    /* Until the answer: a client that goes (or status_timeout) closes
     * the connection, which cancels the listing. */
    c->read->handler = sg_status_drain;
}

/* POST /queue/flush: every forwarder tries its whole queue now (as
 * "smtpgate -s flush"); POST /queue/ID/remove: that message goes;
 * /queue/ID/hold: it stays, untried, until /queue/ID/release. */
static void
sg_status_queue_write(sg_connection_t *c, const sg_str_t *path)
{
    sg_status_out_t            body = { NULL, 0, 0, false };
    sg_status_spool_t          sp[64];
    sg_spool_stats_t          *st;
    sg_str_t                   id;
    sg_status_queue_action_e   action;
    uint64_t                   pid;
    size_t                     n, i, told = 0;

    if (!sg_status_may_write(c, false)) {
        return;
    }
    if (sg_status_parse_queue_path(path, &id, &action) != SG_OK
        || action == SG_QUEUE_SHOW)
    {
        sg_status_error(c, 404, "Not found: POST /queue/flush or "
                        "/queue/ID/remove, /queue/ID/hold, "
                        "/queue/ID/release", false);
        return;
    }
    if (action != SG_QUEUE_FLUSH) {
        sg_status_queue(c, false, &id, action);
        return;
    }
    n = sg_status_spools(sp, sg_nelems(sp));
    for (i = 0; i < n; i++) {
        st = sg_spool_stats(sp[i].sp);
        pid = st ? __atomic_load_n(&st->forwarder, __ATOMIC_RELAXED) : 0;
        if (pid && kill((pid_t) pid, SG_SIGFLUSH) == 0) {
            told++;
        }
    }
    sg_log_error(SG_LOG_NOTICE, c->log, 0, "queue: flush asked by status "
                 "client %.*s, %zu of %zu forwarding spool%s told",
                 SG_STR_ARG(&c->addr_text), told, n, n == 1 ? "" : "s");
    sg_status_printf(&body, "{\"spools\": %zu, \"flushed\": %zu}\n", n,
                     told);
    sg_status_respond(c, 200, "application/json", &body, false);
}

#endif

/* A whole request head is in: answer it. */
static void
sg_status_request(sg_connection_t *c)
{
    sg_status_conn_t     *sc = c->data;
    sg_status_out_t       body = { NULL, 0, 0, false };
    sg_status_request_t   r;
    bool                  head;

    if (sg_status_parse_request(sc->in, sc->nin, &r) != SG_OK) {
        sg_status_error(c, 400, "Bad request", false);
        return;
    }
    head = r.method == SG_STATUS_HEAD;
    if (r.path.len >= sizeof(SG_STATUS_UPSTREAMS) - 1
        && memcmp(r.path.data, SG_STATUS_UPSTREAMS,
                  sizeof(SG_STATUS_UPSTREAMS) - 1) == 0)
    {
        if (r.method != SG_STATUS_POST) {
            sc->allow = "Allow: POST\r\n";
            sg_status_error(c, 405, "Only POST", head);
            return;
        }
#if (SG_HAVE_UPSTREAM_MODULE)
        sg_status_peer_request(c, &r.path);
#else
        sg_status_error(c, 404, "No upstream module", false);
#endif
        return;
    }
#if (SG_STATUS_SPOOLS)
    if (r.path.len > 7 && memcmp(r.path.data, "/queue/", 7) == 0) {
        sg_str_t                  id;
        sg_status_queue_action_e  action;

        if (sg_status_parse_queue_path(&r.path, &id, &action) != SG_OK) {
            sg_status_error(c, 404, "Not found: GET /queue/ID, POST "
                            "/queue/flush or /queue/ID/remove, "
                            "/queue/ID/hold, /queue/ID/release", head);
            return;
        }
        if (action == SG_QUEUE_SHOW) {
            if (r.method != SG_STATUS_GET && r.method != SG_STATUS_HEAD) {
                sc->allow = "Allow: GET, HEAD\r\n";
                sg_status_error(c, 405, "Only GET and HEAD", head);
                return;
            }
            if (sg_status_may_write(c, true)) {
                sg_status_queue(c, head, &id, SG_QUEUE_SHOW);
            }
            return;
        }
        if (r.method != SG_STATUS_POST) {
            sc->allow = "Allow: POST\r\n";
            sg_status_error(c, 405, "Only POST", head);
            return;
        }
        sg_status_queue_write(c, &r.path);
        return;
    }
#endif
    if (r.method == SG_STATUS_OTHER || r.method == SG_STATUS_POST) {
        sg_status_error(c, 405, "Only GET and HEAD", false);
        return;
    }
    if (sc->conf->zone->data == NULL) {
        sg_status_error(c, 500, "No counters", head);
        return;
    }
    if (sg_str_eq(&r.path, "/metrics")) {
        sg_status_metrics(sc->conf, &body);
        if (!body.failed) {
            sg_status_respond(c, 200, "text/plain; version=0.0.4; "
                              "charset=utf-8", &body, head);
            return;
        }
    } else if (sg_str_eq(&r.path, "/status")) {
        sg_status_json(sc->conf, &body);
        if (!body.failed) {
            sg_status_respond(c, 200, "application/json", &body, head);
            return;
        }
#if (SG_STATUS_SPOOLS)
    } else if (sg_str_eq(&r.path, "/queue")) {
        sg_status_queue(c, head, NULL, 0);
        return;
#endif
    } else if (sg_str_eq(&r.path, "/")) {
        sg_status_printf(&body, "smtpgate %s: /metrics (Prometheus), "
                         "/status (JSON), /queue (JSON)\n", SG_VERSION);
        sg_status_respond(c, 200, "text/plain; charset=utf-8", &body, head);
        return;
    } else {
        sg_status_error(c, 404, "Not found: /metrics or /status", head);
        return;
    }
    free(body.data);
    sg_log_error(SG_LOG_ERR, c->log, 0, "status: the response could not be "
                 "made (out of memory, or over %d bytes)",
                 SG_STATUS_RESPONSE_MAX);
    sg_status_error(c, 500, "The response could not be made", head);
}

static void
sg_status_read_request(sg_event_t *ev)
{
    sg_connection_t   *c = ev->data;
    sg_status_conn_t  *sc = c->data;
    ssize_t            n;
    size_t             from;

    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, c->log, 0, "status client sent no whole "
                     "request within status_timeout");
        sg_status_error(c, 408, "Request timeout", false);
        return;
    }
    for ( ;; ) {
        n = c->recv(c, sc->in + sc->nin, SG_STATUS_REQUEST_MAX - sc->nin);
        if (n == SG_AGAIN) {
            return;
        }
        if (n <= 0) {
            sg_status_close_connection(c);
            return;
        }
        /* a blank line may straddle the reads ("\n" "\r\n"): look from
         * two bytes before the new ones */
        from = sc->nin > 2 ? sc->nin - 2 : 0;
        sc->nin += (size_t) n;
        if (sg_status_head_len(sc->in + from, sc->nin - from)) {
            sg_status_request(c);
            return;
        }
        if (sc->nin == SG_STATUS_REQUEST_MAX) {
            sg_status_error(c, 431, "Request too long", false);
            return;
        }
    }
}

static void
sg_status_init_connection(sg_connection_t *c)
{
    sg_status_main_conf_t  *smcf = c->listening->servers;
    sg_status_conn_t       *sc;

    sc = sg_pcalloc(c->pool, sizeof(sg_status_conn_t));
    if (sc == NULL
        || (sc->in = sg_pnalloc(c->pool, SG_STATUS_REQUEST_MAX)) == NULL)
    {
        sg_status_close_connection(c);
        return;
    }
    sc->conf = smcf;
    c->data = sc;
    c->read->handler = sg_status_read_request;
    c->write->handler = sg_status_write;
    if (smcf->allow) {
        if (!sg_cidr_list_match(smcf->allow,
                                (struct sockaddr *) &c->sockaddr))
        {
            sg_log_error(SG_LOG_INFO, c->log, 0, "status: client %.*s "
                         "refused (status_allow)",
                         SG_STR_ARG(&c->addr_text));
            sg_status_error(c, 403, "Forbidden", false);
            return;
        }
    }
    sg_event_add_timer(c->read, smcf->timeout);
    sg_status_read_request(c->read);
}
