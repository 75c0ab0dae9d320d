/*
 * sg_upstream.c: upstream {} blocks and the balancers.
 *
 *   upstream NAME {
 *       server ADDR[:PORT] [weight=N] [max_fails=N] [fail_timeout=T]
 *                          [max_conns=N] [backup] [down];
 *       server spool:DIR;
 *       least_conn; | hash KEY [consistent];
 *       health_check [interval=T] [fails=N] [passes=N] [timeout=T]
 *                    [starttls] [proxy_protocol];
 *   }
 *
 * Each group's peer state lives in a shared memory zone named after the
 * group and its server list, so every worker balances over the same
 * counters and a reload that keeps the group keeps its state.
 *
 * Each worker also counts, in a slot of the zone, the sessions it has
 * added to the peers' totals: a worker that exits without ending them
 * (worker_shutdown_timeout) hands them back, and the slot of one that
 * died (a crash, SIGKILL) is emptied by the next worker to start, or
 * by any worker within a second (for a dying worker of an older
 * generation, which nobody replaces), so max_conns and least_conn do
 * not count sessions nobody holds.
 */
#include <signal.h>
#include "sg_upstream.h"
#if (SG_HAVE_SPOOL_MODULE)
#include "sg_spool.h"
#endif

#define SG_UPSTREAM_RING_POINTS  160
#define SG_UPSTREAM_HASH_TRIES   20
/* Workers counted per group: the workers of a generation and those of
 * older ones still draining.  A worker past this many counts its
 * sessions in the totals only, as before slots existed. */
#define SG_UPSTREAM_SLOTS        128

typedef struct {
    sg_array_t   upstreams;          /* sg_upstream_t * */
} sg_upstream_main_conf_t;

typedef struct {
    uint32_t     hash;
    uint32_t     peer;
} sg_upstream_point_t;

static void *sg_upstream_create_main_conf(sg_conf_t *cf);
static char *sg_upstream_block(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static int sg_upstream_init_process(sg_cycle_t *cycle);
static void sg_upstream_exit_process(sg_cycle_t *cycle);

static const sg_command_t  sg_upstream_commands[] = {
    { "upstream", SG_MAIL_MAIN_CONF | SG_CONF_BLOCK | SG_CONF_TAKE1,
      sg_upstream_block, SG_MAIL_MAIN_CONF_OFFSET, 0, NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_upstream_module_ctx = {
    sg_upstream_create_main_conf, NULL, NULL, NULL, NULL
};

sg_module_t  sg_upstream_module = {
    .name = "upstream",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_upstream_module_ctx,
    .commands = sg_upstream_commands,
    .init_process = sg_upstream_init_process,
    .exit_process = sg_upstream_exit_process,
};

static void *
sg_upstream_create_main_conf(sg_conf_t *cf)
{
    sg_upstream_main_conf_t  *umcf;

    umcf = sg_pcalloc(cf->pool, sizeof(sg_upstream_main_conf_t));
    if (umcf == NULL
        || sg_array_init(&umcf->upstreams, cf->pool, 4,
                         sizeof(sg_upstream_t *)) != SG_OK)
    {
        return NULL;
    }
    return umcf;
}

static sg_upstream_main_conf_t *
sg_upstream_main_conf(sg_conf_t *cf)
{
    sg_mail_conf_ctx_t  *ctx = cf->ctx;

    return sg_mail_conf_main(ctx, sg_upstream_module);
}

sg_upstream_t *
sg_upstream_find(sg_conf_t *cf, const sg_str_t *name)
{
    sg_upstream_main_conf_t  *umcf = sg_upstream_main_conf(cf);
    sg_upstream_t           **u = umcf->upstreams.elts;
    size_t                    i;

    for (i = 0; i < umcf->upstreams.nelts; i++) {
        if (!u[i]->implicit && u[i]->name.len == name->len
            && memcmp(u[i]->name.data, name->data, name->len) == 0)
        {
            return u[i];
        }
    }
    return NULL;
}

static sg_upstream_main_conf_t *
sg_upstream_cycle_conf(sg_cycle_t *cycle)
{
    sg_mail_conf_ctx_t  *ctx;

    if (cycle == NULL || cycle->conf_ctx == NULL) {
        return NULL;
    }
    ctx = cycle->conf_ctx[sg_mail_module.index];
    if (ctx == NULL) {
        return NULL;
    }
    return sg_mail_conf_main(ctx, sg_upstream_module);
}

sg_upstream_t *
sg_upstream_lookup(const sg_str_t *name)
{
    sg_upstream_main_conf_t  *umcf = sg_upstream_cycle_conf(sg_cycle);
    sg_upstream_t           **u;
    size_t                    i;

    if (umcf == NULL) {
        return NULL;
    }
    u = umcf->upstreams.elts;
    for (i = 0; i < umcf->upstreams.nelts; i++) {
        if (!u[i]->implicit && u[i]->name.len == name->len
            && memcmp(u[i]->name.data, name->data, name->len) == 0)
        {
            return u[i];
        }
    }
    return NULL;
}

/* Configuration. */

static const sg_conf_bounds_t  sg_upstream_weight_bounds = { 1, 1000 };

static char *
sg_upstream_param_num(sg_conf_t *cf, const sg_str_t *v, size_t skip,
    int64_t lo, int64_t hi, int64_t *out)
{
    sg_str_t  n;

    n.data = v->data + skip;
    n.len = v->len - skip;
    if (sg_parse_int(&n, out) != SG_OK || *out < lo || *out > hi) {
        return sg_conf_error(cf, 0, "invalid \"%.*s\": the value must be "
                             "a number from %lld to %lld", SG_STR_ARG(v),
                             (long long) lo, (long long) hi);
    }
    return SG_CONF_OK;
}

static char *
sg_upstream_param_time(sg_conf_t *cf, const sg_str_t *v, size_t skip,
    sg_msec_t *out)
{
    sg_str_t  n;
    int64_t   ms;

    n.data = v->data + skip;
    n.len = v->len - skip;
    if (sg_parse_time(&n, &ms) != SG_OK || ms < 1 || ms > 86400000LL) {
        return sg_conf_error(cf, 0, "invalid \"%.*s\": the value must be "
                             "a time from 1ms to 1d (\"10s\", \"500ms\")",
                             SG_STR_ARG(v));
    }
    *out = (sg_msec_t) ms;
    return SG_CONF_OK;
}

static bool
sg_upstream_prefix(const sg_str_t *v, const char *p)
{
    size_t  n = strlen(p);

    return v->len >= n && memcmp(v->data, p, n) == 0;
}

static char *
sg_upstream_server(sg_conf_t *cf, sg_upstream_t *u)
{
    sg_str_t            *value = cf->args->elts;
    sg_upstream_peer_t   proto, *p;
    sg_url_t             url;
    size_t               i;
    char                *rv = SG_CONF_OK;
    bool                 spool;

    if (cf->args->nelts < 2) {
        return sg_conf_error(cf, 0, "invalid number of arguments in "
                             "\"server\" of upstream \"%.*s\"",
                             SG_STR_ARG(&u->name));
    }
    memset(&proto, 0, sizeof(proto));
    proto.weight = 1;
    proto.max_fails = 1;
    proto.fail_timeout = 10000;
    spool = sg_upstream_prefix(&value[1], "spool:");

    for (i = 2; i < cf->args->nelts && rv == SG_CONF_OK; i++) {
        if (sg_upstream_prefix(&value[i], "weight=")) {
            rv = sg_upstream_param_num(cf, &value[i], 7,
                                       sg_upstream_weight_bounds.min,
                                       sg_upstream_weight_bounds.max,
                                       &proto.weight);
        } else if (sg_upstream_prefix(&value[i], "max_fails=")) {
            rv = sg_upstream_param_num(cf, &value[i], 10, 0, 1000,
                                       &proto.max_fails);
        } else if (sg_upstream_prefix(&value[i], "fail_timeout=")) {
            rv = sg_upstream_param_time(cf, &value[i], 13,
                                        &proto.fail_timeout);
        } else if (sg_upstream_prefix(&value[i], "max_conns=")) {
            rv = sg_upstream_param_num(cf, &value[i], 10, 0, 1000000,
                                       &proto.max_conns);
        } else if (sg_str_eq(&value[i], "backup")) {
            proto.backup = 1;
        } else if (sg_str_eq(&value[i], "down")) {
            proto.down = 1;
        } else if (sg_str_eq(&value[i], "forward") && spool) {
            proto.forward = 1;
        } else {
            return sg_conf_error(cf, 0, "invalid parameter \"%.*s\" of "
                                 "\"server\"", SG_STR_ARG(&value[i]));
        }
    }
    if (rv != SG_CONF_OK) {
        return rv;
    }

    if (spool) {
#if (SG_HAVE_SPOOL_MODULE)
        sg_str_t  dir;

        dir.data = value[1].data + 6;
        dir.len = value[1].len - 6;
        proto.spool = sg_spool_create(cf, &dir);
        if (proto.spool == NULL
            || (proto.forward
                && sg_spool_set_forward(cf, proto.spool, &u->name) != SG_OK))
        {
            return SG_CONF_ERROR;
        }
        p = sg_array_push(&u->peers);
        if (p == NULL) {
            return SG_CONF_ERROR;
        }
        *p = proto;
        p->host = value[1];
        p->addr.name = value[1];
        p->index = u->peers.nelts - 1;
        return SG_CONF_OK;
#else
        return sg_conf_error(cf, 0, "\"%.*s\": this build has no spool "
                             "module", SG_STR_ARG(&value[1]));
#endif
    }

    memset(&url, 0, sizeof(url));
    url.url = value[1];
    url.default_port = 25;
    if (sg_parse_url(cf->pool, &url) != SG_OK) {
        return sg_conf_error(cf, 0, "%s in \"%.*s\" of \"server\" in "
                             "upstream \"%.*s\"", url.err,
                             SG_STR_ARG(&url.url), SG_STR_ARG(&u->name));
    }
    for (i = 0; i < url.naddrs; i++) {
        p = sg_array_push(&u->peers);
        if (p == NULL) {
            return SG_CONF_ERROR;
        }
        *p = proto;
        p->addr = url.addrs[i];
        p->host = url.host;
        p->index = u->peers.nelts - 1;
    }
    return SG_CONF_OK;
}

static char *
sg_upstream_hash_directive(sg_conf_t *cf, sg_upstream_t *u)
{
    sg_str_t  *value = cf->args->elts;

    if (u->balancer != SG_UPSTREAM_RR) {
        return sg_conf_error(cf, 0, "upstream \"%.*s\" already has a "
                             "balancer", SG_STR_ARG(&u->name));
    }
    if (cf->args->nelts < 2 || cf->args->nelts > 3
        || (cf->args->nelts == 3 && !sg_str_eq(&value[2], "consistent")))
    {
        return sg_conf_error(cf, 0, "invalid arguments of \"hash\": the "
                             "syntax is \"hash KEY [consistent];\"");
    }
    u->hash_key = sg_smtp_compile_complex_value(cf, &value[1]);
    if (u->hash_key == NULL) {
        return SG_CONF_ERROR;
    }
    u->balancer = SG_UPSTREAM_HASH;
    u->consistent = cf->args->nelts == 3;
    return SG_CONF_OK;
}

static char *
sg_upstream_directive(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_upstream_t  *u = conf;
    sg_str_t       *value = cf->args->elts;

    (void) cmd;
    if (sg_str_eq(&value[0], "server")) {
        return sg_upstream_server(cf, u);
    }
    if (sg_str_eq(&value[0], "least_conn")) {
        if (cf->args->nelts != 1) {
            return sg_conf_error(cf, 0, "\"least_conn\" takes no "
                                 "arguments");
        }
        if (u->balancer != SG_UPSTREAM_RR) {
            return sg_conf_error(cf, 0, "upstream \"%.*s\" already has a "
                                 "balancer", SG_STR_ARG(&u->name));
        }
        u->balancer = SG_UPSTREAM_LEAST_CONN;
        return SG_CONF_OK;
    }
    if (sg_str_eq(&value[0], "hash")) {
        return sg_upstream_hash_directive(cf, u);
    }
    if (sg_str_eq(&value[0], "health_check")) {
        return sg_upstream_health_check(cf, u);
    }
    return sg_conf_error(cf, 0, "unknown directive \"%.*s\" in upstream "
                         "\"%.*s\" (expected server, least_conn, hash or "
                         "health_check)", SG_STR_ARG(&value[0]),
                         SG_STR_ARG(&u->name));
}

static int
sg_upstream_point_cmp(const void *a, const void *b)
{
    const sg_upstream_point_t  *x = a, *y = b;

    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

/* The consistent-hash ring: SG_UPSTREAM_RING_POINTS points per unit of
 * weight for every primary peer. */
static char *
sg_upstream_build_ring(sg_conf_t *cf, sg_upstream_t *u)
{
    sg_upstream_peer_t   *p = u->peers.elts;
    sg_upstream_point_t  *ring;
    u_char                key[SG_SOCKADDR_STRLEN + 16], *k;
    size_t                i, n = 0, total = 0;
    int64_t               j;

    for (i = 0; i < u->peers.nelts; i++) {
        if (!p[i].backup) {
            total += (size_t) p[i].weight * SG_UPSTREAM_RING_POINTS;
        }
    }
    ring = sg_palloc(cf->pool, total * sizeof(sg_upstream_point_t));
    if (ring == NULL) {
        return SG_CONF_ERROR;
    }
    for (i = 0; i < u->peers.nelts; i++) {
        if (p[i].backup) {
            continue;
        }
        for (j = 0; j < p[i].weight * SG_UPSTREAM_RING_POINTS; j++) {
            k = sg_slprintf(key, key + sizeof(key), "%.*s-%lld",
                            SG_STR_ARG(&p[i].addr.name), (long long) j);
            ring[n].hash = sg_hash(key, (size_t) (k - key));
            ring[n].peer = (uint32_t) i;
            n++;
        }
    }
    qsort(ring, n, sizeof(sg_upstream_point_t), sg_upstream_point_cmp);
    u->ring = ring;
    u->nring = n;
    return SG_CONF_OK;
}

static int
sg_upstream_zone_init(sg_shm_zone_t *zone, void *old_data)
{
    zone->data = zone->addr;
    if (old_data == NULL) {
        memset(zone->addr, 0, zone->size);
    }
    return SG_OK;
}

/* The zone's name carries a fingerprint of the server list: a reload
 * that changes the servers starts from fresh state, one that keeps them
 * keeps the counters and the health. */
static char *
sg_upstream_add_zone(sg_conf_t *cf, sg_upstream_t *u)
{
    sg_upstream_peer_t  *p = u->peers.elts;
    sg_str_t             name;
    uint32_t             h = 2166136261u;
    size_t               i, size;
    u_char               buf[300], *b;

    for (i = 0; i < u->peers.nelts; i++) {
        h ^= sg_hash(p[i].addr.name.data, p[i].addr.name.len);
        h *= 16777619u;
    }
    b = sg_slprintf(buf, buf + sizeof(buf), "upstream %.*s %08x",
                    (int) sg_min(u->name.len, 200), (char *) u->name.data,
                    (unsigned) h);
    name.len = (size_t) (b - buf);
    name.data = sg_pnalloc(cf->pool, name.len);
    if (name.data == NULL) {
        return SG_CONF_ERROR;
    }
    memcpy(name.data, buf, name.len);
    /* The peers' state, the slots' pids, then per peer the sessions of
     * each slot. */
    size = u->peers.nelts * sizeof(sg_upstream_state_t)
           + SG_UPSTREAM_SLOTS * sizeof(pid_t)
           + u->peers.nelts * SG_UPSTREAM_SLOTS * sizeof(uint32_t);
    size = (size + 4095) & ~(size_t) 4095;
    u->zone = sg_shm_zone_add(cf, &name, size, &sg_upstream_module);
    if (u->zone == NULL) {
        return SG_CONF_ERROR;
    }
    u->zone->init = sg_upstream_zone_init;
    return SG_CONF_OK;
}

static char *
sg_upstream_block(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_upstream_main_conf_t  *umcf = sg_upstream_main_conf(cf);
    sg_str_t                 *value = cf->args->elts;
    sg_upstream_t            *u, **slot;
    sg_upstream_peer_t       *p;
    sg_conf_set_pt            prev_handler = cf->handler;
    void                     *prev_conf = cf->handler_conf;
    size_t                    i, primaries = 0;
    char                     *rv;

    (void) cmd;
    (void) conf;
    if (sg_upstream_find(cf, &value[1])) {
        return sg_conf_error(cf, 0, "duplicate upstream \"%.*s\"",
                             SG_STR_ARG(&value[1]));
    }
    if (value[1].len == 0 || value[1].len > 200
        || sg_upstream_prefix(&value[1], "spool:")
        || memchr(value[1].data, '$', value[1].len))
    {
        return sg_conf_invalid_value(cf, &value[1], "an upstream name is "
                                     "1 to 200 characters, without \"$\"");
    }
    u = sg_pcalloc(cf->pool, sizeof(sg_upstream_t));
    if (u == NULL
        || sg_array_init(&u->peers, cf->pool, 4,
                         sizeof(sg_upstream_peer_t)) != SG_OK)
    {
        return SG_CONF_ERROR;
    }
    u->name = value[1];
    u->file = cf->file->name;
    u->line = sg_conf_line(cf);
    u->balancer = SG_UPSTREAM_RR;
    u->slot = -1;

    cf->handler = sg_upstream_directive;
    cf->handler_conf = u;
    rv = sg_conf_parse(cf, NULL);
    cf->handler = prev_handler;
    cf->handler_conf = prev_conf;
    if (rv != SG_CONF_OK) {
        return rv;
    }

    p = u->peers.elts;
    for (i = 0; i < u->peers.nelts; i++) {
        primaries += !p[i].backup;
    }
    if (primaries == 0) {
        return sg_conf_error_at(cf, &u->file, u->line, "upstream \"%.*s\" "
                                "has no server (a group needs at least one "
                                "that is not a backup)", SG_STR_ARG(&u->name));
    }
    if (u->balancer == SG_UPSTREAM_HASH && primaries != u->peers.nelts) {
        return sg_conf_error_at(cf, &u->file, u->line, "upstream \"%.*s\": "
                                "\"backup\" servers cannot be used with "
                                "\"hash\"", SG_STR_ARG(&u->name));
    }
    if (u->balancer == SG_UPSTREAM_HASH && u->consistent
        && sg_upstream_build_ring(cf, u) != SG_CONF_OK)
    {
        return SG_CONF_ERROR;
    }
    if (sg_upstream_add_zone(cf, u) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    slot = sg_array_push(&umcf->upstreams);
    if (slot == NULL) {
        return SG_CONF_ERROR;
    }
    *slot = u;
    return SG_CONF_OK;
}

sg_upstream_t *
sg_upstream_implicit(sg_conf_t *cf, sg_url_t *url)
{
    sg_upstream_main_conf_t  *umcf = sg_upstream_main_conf(cf);
    sg_upstream_t            *u, **slot;
    sg_upstream_peer_t       *p;
    size_t                    i;

    u = sg_pcalloc(cf->pool, sizeof(sg_upstream_t));
    if (u == NULL
        || sg_array_init(&u->peers, cf->pool, url->naddrs,
                         sizeof(sg_upstream_peer_t)) != SG_OK)
    {
        return NULL;
    }
    u->name = url->url;
    u->file = cf->file->name;
    u->line = sg_conf_line(cf);
    u->implicit = true;
    u->slot = -1;
    for (i = 0; i < url->naddrs; i++) {
        p = sg_array_push(&u->peers);
        if (p == NULL) {
            return NULL;
        }
        memset(p, 0, sizeof(*p));
        p->addr = url->addrs[i];
        p->host = url->host;
        p->weight = 1;
        p->index = i;
    }
    u->local = sg_pcalloc(cf->pool,
                          url->naddrs * sizeof(sg_upstream_state_t));
    slot = sg_array_push(&umcf->upstreams);
    if (u->local == NULL || slot == NULL) {
        return NULL;
    }
    *slot = u;
    return u;
}

/* The zone's table of workers: after the peers' state, one pid per
 * slot, then for each peer the sessions each slot counts. */
static pid_t *
sg_upstream_slot_pids(sg_upstream_t *u)
{
    return (pid_t *) ((sg_upstream_state_t *) u->zone->data
                      + u->peers.nelts);
}

static uint32_t *
sg_upstream_held(sg_upstream_t *u, size_t peer, size_t slot)
{
    uint32_t  *held;

    held = (uint32_t *) (sg_upstream_slot_pids(u) + SG_UPSTREAM_SLOTS);
    return held + peer * SG_UPSTREAM_SLOTS + slot;
}

/* Take the sessions of slot i out of the totals and free the slot;
 * with the lock held.  Returns how many there were. */
static uint64_t
sg_upstream_slot_release(sg_upstream_t *u, size_t i)
{
    pid_t                *pid = sg_upstream_slot_pids(u);
    sg_upstream_state_t  *st;
    uint32_t             *held;
    uint64_t              n = 0;
    size_t                j;

    for (j = 0; j < u->peers.nelts; j++) {
        st = sg_upstream_state(u, j);
        held = sg_upstream_held(u, j, i);
        st->conns -= sg_min(st->conns, *held);
        n += *held;
        *held = 0;
        if (st->probe_pid == pid[i]) {
            st->probe_pid = 0;
        }
    }
    pid[i] = 0;
    return n;
}

/* Empty the slots of workers that are gone; with the lock held.  The
 * master reaps a dead worker before it starts the next, so a gone
 * worker's pid no longer names a process; one that is our own (when
 * this worker has no slot yet) was a dead worker's whose pid came
 * round again. */
static void
sg_upstream_slot_reap(sg_log_t *log, sg_upstream_t *u)
{
    pid_t     *pid = sg_upstream_slot_pids(u), dead;
    uint64_t   n;
    size_t     i;

    for (i = 0; i < SG_UPSTREAM_SLOTS; i++) {
        if (pid[i] == 0 || (int) i == u->slot) {
            continue;
        }
        if (pid[i] == sg_pid || (kill(pid[i], 0) == -1 && errno == ESRCH)) {
            dead = pid[i];
            n = sg_upstream_slot_release(u, i);
            if (n) {
                sg_log_error(SG_LOG_NOTICE, log, 0, "upstream %.*s: %llu "
                             "session%s of process %d, which exited without "
                             "ending them, no longer counted",
                             SG_STR_ARG(&u->name), (unsigned long long) n,
                             n == 1 ? "" : "s", (int) dead);
            }
        }
    }
}

/* A starting worker (or the spool forwarder): empty the slots of
 * processes that are gone, and take one. */
void
sg_upstream_slot_claim(sg_cycle_t *cycle, sg_upstream_t *u)
{
    pid_t     *pid;
    size_t     i;
    int        slot = -1;

    sg_upstream_lock(u);
    sg_upstream_slot_reap(cycle->log, u);
    pid = sg_upstream_slot_pids(u);
    for (i = 0; i < SG_UPSTREAM_SLOTS && slot < 0; i++) {
        if (pid[i] == 0) {
            slot = (int) i;
            pid[i] = sg_pid;
        }
    }
    sg_upstream_unlock(u);
    u->slot = slot;
}

/* Each second, the slots of workers that died with no worker started in
 * their place (those of an older generation, draining after a reload). */
static sg_event_t  sg_upstream_tick;

static void
sg_upstream_tick_handler(sg_event_t *ev)
{
    sg_upstream_t  **u;
    size_t           n, i;

    u = sg_upstream_groups(&n);
    for (i = 0; i < n; i++) {
        if (u[i]->zone && !u[i]->released) {
            sg_upstream_lock(u[i]);
            sg_upstream_slot_reap(ev->log, u[i]);
            sg_upstream_unlock(u[i]);
        }
    }
    sg_event_add_timer(ev, 1000);
}

/* An exiting worker hands back the sessions it still counts: a worker
 * that worker_shutdown_timeout ends leaves them open. */
void
sg_upstream_slot_leave(sg_upstream_t *u)
{
    if (u->slot >= 0) {
        sg_upstream_lock(u);
        (void) sg_upstream_slot_release(u, (size_t) u->slot);
        sg_upstream_unlock(u);
        u->slot = -1;
    }
    u->released = true;
}

/* Balancing. */

int
sg_upstream_pick_init(sg_upstream_pick_t *pk, sg_upstream_t *u,
    sg_smtp_session_t *s)
{
    sg_str_t  key;

    memset(pk, 0, sizeof(*pk));
    pk->upstream = u;
    pk->log = s->log;
    pk->tried = sg_pcalloc(s->pool, u->peers.nelts);
    if (pk->tried == NULL) {
        return SG_ERROR;
    }
    if (u->balancer == SG_UPSTREAM_HASH) {
        if (sg_smtp_complex_value(s, u->hash_key, &key) != SG_OK) {
            return SG_ERROR;
        }
        pk->hash = sg_hash(key.data, key.len);
        sg_log_debug(s->log, "upstream %.*s: hash key \"%.*s\" (%08x)",
                     SG_STR_ARG(&u->name), SG_STR_ARG(&key),
                     (unsigned) pk->hash);
    }
    return SG_OK;
}

int
sg_upstream_pick_init_key(sg_upstream_pick_t *pk, sg_upstream_t *u,
    sg_pool_t *pool, sg_log_t *log, const sg_str_t *key)
{
    memset(pk, 0, sizeof(*pk));
    pk->upstream = u;
    pk->log = log;
    pk->no_spool = true;
    pk->tried = sg_pcalloc(pool, u->peers.nelts);
    if (pk->tried == NULL) {
        return SG_ERROR;
    }
    pk->hash = sg_hash(key->data, key->len);
    return SG_OK;
}

static bool
sg_upstream_healthy(sg_upstream_peer_t *p, sg_upstream_state_t *st)
{
    if (p->down || st->hc_down || st->drain) {
        return false;
    }
    return !(p->max_fails && st->fails >= p->max_fails
             && sg_current_msec - st->failed_at < p->fail_timeout);
}

bool
sg_upstream_peer_up(sg_upstream_t *u, size_t i)
{
    sg_upstream_peer_t  *p = u->peers.elts;

    return sg_upstream_healthy(&p[i], sg_upstream_state(u, i));
}

bool
sg_upstream_drain(sg_upstream_t *u, size_t i, bool drain, uint32_t *active)
{
    sg_upstream_state_t  *st = sg_upstream_state(u, i);
    bool                  was;

    sg_upstream_lock(u);
    was = st->drain;
    st->drain = drain;
    *active = st->conns;
    sg_upstream_unlock(u);
    return was;
}

void
sg_upstream_close(sg_upstream_t *u, size_t i, uint32_t *active)
{
    sg_upstream_state_t  *st = sg_upstream_state(u, i);

    sg_upstream_lock(u);
    st->drain = 1;
    __atomic_add_fetch(&st->close_seq, 1, __ATOMIC_RELAXED);
    *active = st->conns;
    sg_upstream_unlock(u);
}

bool
sg_upstream_drain_state(sg_upstream_t *u, size_t i, uint32_t *active)
{
    sg_upstream_state_t  *st = sg_upstream_state(u, i);
    bool                  drain;

    sg_upstream_lock(u);
    drain = st->drain;
    *active = st->conns;
    sg_upstream_unlock(u);
    return drain;
}

sg_upstream_t **
sg_upstream_groups(size_t *n)
{
    return sg_upstream_groups_of(sg_cycle, n);
}

sg_upstream_t **
sg_upstream_groups_of(sg_cycle_t *cycle, size_t *n)
{
    sg_upstream_main_conf_t  *umcf = sg_upstream_cycle_conf(cycle);

    if (umcf == NULL) {
        *n = 0;
        return NULL;
    }
    *n = umcf->upstreams.nelts;
    return umcf->upstreams.elts;
}

static bool
sg_upstream_available(sg_upstream_pick_t *pk, sg_upstream_peer_t *p,
    sg_upstream_state_t *st)
{
    if (pk->tried[p->index] || !sg_upstream_healthy(p, st)
        || (pk->no_spool && p->spool))
    {
        return false;
    }
    if (p->max_conns && st->conns >= p->max_conns) {
        return false;
    }
    return true;
}

static int64_t
sg_upstream_w(const sg_upstream_peer_t *p, const sg_upstream_state_t *st)
{
    return st->weight ? st->weight : p->weight;
}

int64_t
sg_upstream_weight(sg_upstream_t *u, size_t i)
{
    sg_upstream_peer_t  *p = u->peers.elts;

    return sg_upstream_w(&p[i], sg_upstream_state(u, i));
}

int
sg_upstream_set_weight(sg_upstream_t *u, size_t i, int64_t weight)
{
    if (u->consistent) {
        return SG_DECLINED;
    }
    sg_upstream_lock(u);
    sg_upstream_state(u, i)->weight = weight;
    sg_upstream_unlock(u);
    return SG_OK;
}

/* Smooth weighted round robin (and least_conn, which runs it among the
 * peers with the fewest connections per weight). */
static sg_upstream_peer_t *
sg_upstream_rr(sg_upstream_pick_t *pk, bool backup)
{
    sg_upstream_t        *u = pk->upstream;
    sg_upstream_peer_t   *p = u->peers.elts, *best = NULL;
    sg_upstream_state_t  *st, *bst = NULL, *lst = NULL;
    int64_t               total = 0, w, lw = 0;
    size_t                i;

    if (u->balancer == SG_UPSTREAM_LEAST_CONN) {
        for (i = 0; i < u->peers.nelts; i++) {
            st = sg_upstream_state(u, i);
            if (p[i].backup != backup
                || !sg_upstream_available(pk, &p[i], st))
            {
                continue;
            }
            w = sg_upstream_w(&p[i], st);
            if (lst == NULL
                || (int64_t) st->conns * lw < (int64_t) lst->conns * w)
            {
                lst = st;
                lw = w;
            }
        }
        if (lst == NULL) {
            return NULL;
        }
    }
    for (i = 0; i < u->peers.nelts; i++) {
        st = sg_upstream_state(u, i);
        if (p[i].backup != backup || !sg_upstream_available(pk, &p[i], st)) {
            continue;
        }
        w = sg_upstream_w(&p[i], st);
        if (lst && (int64_t) st->conns * lw != (int64_t) lst->conns * w) {
            continue;
        }
        st->current_weight += w;
        total += w;
        if (best == NULL || st->current_weight > bst->current_weight) {
            best = &p[i];
            bst = st;
        }
    }
    if (best) {
        bst->current_weight -= total;
    }
    return best;
}

static sg_upstream_peer_t *
sg_upstream_hash_peer(sg_upstream_pick_t *pk)
{
    sg_upstream_t        *u = pk->upstream;
    sg_upstream_peer_t   *p = u->peers.elts;
    sg_upstream_point_t  *ring = u->ring;
    int64_t               total = 0, w;
    size_t                i, lo, hi, n;

    if (u->consistent) {
        lo = 0;
        hi = u->nring;
        while (lo < hi) {                 /* the first point >= hash */
            size_t  mid = lo + (hi - lo) / 2;

            if (ring[mid].hash < pk->hash) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        for (n = 0; n < u->nring; n++) {
            i = ring[(lo + n) % u->nring].peer;
            if (sg_upstream_available(pk, &p[i], sg_upstream_state(u, i))) {
                return &p[i];
            }
        }
        return NULL;
    }
    for (i = 0; i < u->peers.nelts; i++) {
        total += sg_upstream_weight(u, i);
    }
    while (pk->hash_tries++ < SG_UPSTREAM_HASH_TRIES) {
        w = (int64_t) (pk->hash % (uint64_t) total);
        for (i = 0; i < u->peers.nelts; i++) {
            w -= sg_upstream_weight(u, i);
            if (w < 0) {
                break;
            }
        }
        if (sg_upstream_available(pk, &p[i], sg_upstream_state(u, i))) {
            return &p[i];
        }
        pk->hash = pk->hash * 113 + 6271;  /* another spot on the wheel */
    }
    return sg_upstream_rr(pk, false);
}

int
sg_upstream_get(sg_upstream_pick_t *pk)
{
    sg_upstream_t       *u = pk->upstream;
    sg_upstream_peer_t  *p;

    sg_upstream_lock(u);
    if (u->balancer == SG_UPSTREAM_HASH) {
        p = sg_upstream_hash_peer(pk);
    } else {
        p = sg_upstream_rr(pk, false);
        if (p == NULL) {
            p = sg_upstream_rr(pk, true);
        }
    }
    if (p) {
        sg_upstream_state(u, p->index)->conns++;
        if (u->slot >= 0) {
            (*sg_upstream_held(u, p->index, (size_t) u->slot))++;
        }
    }
    sg_upstream_unlock(u);
    pk->peer = p;
    pk->counted = p != NULL;
    if (p == NULL) {
        return SG_DECLINED;
    }
    pk->tried[p->index] = 1;
    pk->tries++;
    return SG_OK;
}

void
sg_upstream_done(sg_upstream_pick_t *pk, unsigned outcome)
{
    bool                  failed = outcome == SG_UPSTREAM_FAILED;
    sg_upstream_t        *u = pk->upstream;
    sg_upstream_peer_t   *p = pk->peer;
    sg_upstream_state_t  *st;
    uint32_t             *held;
    bool                  marked = false;

    if (p == NULL || !pk->counted) {
        return;
    }
    pk->counted = false;
    sg_upstream_lock(u);
    st = sg_upstream_state(u, p->index);
    if (!u->released) {           /* else handed back already */
        held = u->slot >= 0 ? sg_upstream_held(u, p->index, (size_t) u->slot)
                            : NULL;
        if (st->conns) {
            st->conns--;
        }
        if (held && *held) {
            (*held)--;
        }
    }
    if (failed && p->max_fails) {
        /* Only failures within fail_timeout of each other add up; once
         * they marked the peer, one more after its rest marks it again. */
        if (st->fails < (uint32_t) p->max_fails
            && sg_current_msec - st->failed_at >= p->fail_timeout)
        {
            st->fails = 0;
        }
        st->fails++;
        st->failed_at = sg_current_msec;
        marked = st->fails == (uint32_t) p->max_fails;
    } else if (outcome == SG_UPSTREAM_OK) {
        st->fails = 0;
    }
    sg_upstream_unlock(u);
    if (marked) {
        sg_log_error(SG_LOG_WARN, pk->log, 0, "upstream %.*s: server %.*s "
                     "failed %lld times, not used for %lldms (max_fails, "
                     "fail_timeout)", SG_STR_ARG(&u->name),
                     SG_STR_ARG(&p->addr.name), (long long) p->max_fails,
                     (long long) p->fail_timeout);
    }
}

bool
sg_upstream_caps(sg_upstream_t *u, unsigned *caps, int64_t *size)
{
    sg_upstream_peer_t   *p = u->peers.elts;
    sg_upstream_state_t  *st;
    unsigned              c = SG_SMTP_EXT_ALL;
    int64_t               sz = 0;
    bool                  any = false;
    size_t                i;

    sg_upstream_lock(u);
    for (i = 0; i < u->peers.nelts; i++) {
        st = sg_upstream_state(u, i);
        /* What was learned under an older configuration may describe
         * another backend: the operator reloads after changing it. */
        if (p[i].spool || p[i].down || st->hc_down || !st->probed
            || st->caps_generation < sg_upstream_generation(u))
        {
            continue;
        }
        any = true;
        c &= st->caps;
        if (st->size && (sz == 0 || st->size < sz)) {
            sz = st->size;
        }
    }
    sg_upstream_unlock(u);
    *caps = any ? c : 0;
    *size = sz;
    return any;
}

/* Workers: the health checks. */

static int
sg_upstream_init_process(sg_cycle_t *cycle)
{
    sg_upstream_main_conf_t  *umcf = sg_upstream_cycle_conf(cycle);
    sg_upstream_t           **u;
    size_t                    i;

    if (umcf == NULL) {
        return SG_OK;
    }
    u = umcf->upstreams.elts;
    for (i = 0; i < umcf->upstreams.nelts; i++) {
        if (u[i]->zone) {
            sg_upstream_slot_claim(cycle, u[i]);
            if (!sg_event_timer_set(&sg_upstream_tick)) {
                sg_upstream_tick.handler = sg_upstream_tick_handler;
                sg_upstream_tick.log = cycle->log;
                sg_event_add_timer(&sg_upstream_tick, 1000);
            }
        }
        if (u[i]->check) {
            sg_upstream_check_start(cycle, u[i]);
        }
    }
    return SG_OK;
}

static void
sg_upstream_exit_process(sg_cycle_t *cycle)
{
    sg_upstream_main_conf_t  *umcf = sg_upstream_cycle_conf(cycle);
    sg_upstream_t           **u;
    size_t                    i;

    if (umcf == NULL) {
        return;
    }
    if (sg_event_timer_set(&sg_upstream_tick)) {
        sg_event_del_timer(&sg_upstream_tick);
    }
    u = umcf->upstreams.elts;
    for (i = 0; i < umcf->upstreams.nelts; i++) {
        if (u[i]->check) {
            sg_upstream_check_stop(u[i]);
        }
        if (u[i]->zone) {
            sg_upstream_slot_leave(u[i]);
        }
    }
}
