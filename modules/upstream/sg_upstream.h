/*
 * sg_upstream.h: upstream groups: backend servers with weights and
 * limits, a balancer (smooth weighted round robin, least_conn, hash),
 * passive health (max_fails, fail_timeout) and active SMTP health checks,
 * with the state every worker shares in shared memory.
 *
 * The seam with the proxy: sg_upstream_pick_init() for a session, then
 * sg_upstream_get() for each attempt and sg_upstream_done() to say how
 * the attempt went.  Balancers live behind that call.
 */
#ifndef SG_UPSTREAM_H
#define SG_UPSTREAM_H

#include "sg_smtp.h"
#include "sg_smtp_client.h"

extern sg_module_t  sg_upstream_module;

#define SG_UPSTREAM_RR          0
#define SG_UPSTREAM_LEAST_CONN  1
#define SG_UPSTREAM_HASH        2

typedef struct sg_upstream_s  sg_upstream_t;

/* One server line (a name resolving to several addresses gives one
 * peer per address). */
typedef struct {
    sg_addr_t          addr;
    sg_str_t           host;          /* as written, for proxy_ssl_name */
    void              *spool;         /* "server spool:DIR" */
    int64_t            weight;
    int64_t            max_fails;
    sg_msec_t          fail_timeout;
    int64_t            max_conns;     /* 0: no limit */
    size_t             index;
    unsigned           backup:1;
    unsigned           down:1;
    unsigned           forward:1;     /* "server spool:DIR forward" */
} sg_upstream_peer_t;

/* What every worker sees of a peer (shared memory). */
typedef struct {
    int64_t            current_weight;
    int64_t            weight;        /* set by the operator (the status
                                         API); 0: the configured one */
    uint32_t           conns;
    uint32_t           fails;
    sg_msec_t          failed_at;     /* CLOCK_MONOTONIC */
    uint32_t           hc_fails;      /* consecutive failed probes */
    uint32_t           hc_passes;     /* consecutive good probes */
    pid_t              probe_pid;     /* the worker probing it now */
    uint32_t           probe_seq;     /* counts the probes started */
    sg_msec_t          probe_at;      /* when the last probe started */
    sg_msec_t          probe_until;   /* when it gives up at the latest */
    unsigned           caps;          /* SG_SMTP_EXT_* of the last probe */
    int64_t            size;
    /* The configurations (zone generations) of the workers that made
     * the last good probe and started the last probe: a reload learns
     * the capabilities again. */
    uint64_t           caps_generation;
    uint64_t           check_generation;
    unsigned           hc_down:1;     /* failed its health checks */
    unsigned           probed:1;      /* caps is known */
    unsigned           drain:1;       /* set by the operator (the status
                                         API): no new sessions */
    uint32_t           close_seq;     /* one more each time the operator
                                         closes its sessions */
} sg_upstream_state_t;

typedef struct {
    sg_msec_t          interval;
    sg_msec_t          timeout;
    int64_t            fails;
    int64_t            passes;
    unsigned           starttls:1;
    unsigned           ssl:1;         /* implicit TLS (proxy_ssl on) */
    unsigned           proxy_protocol:1;
} sg_upstream_check_t;

struct sg_upstream_s {
    sg_str_t               name;
    sg_str_t               file;          /* where it is defined */
    size_t                 line;
    sg_array_t             peers;         /* sg_upstream_peer_t */
    unsigned               balancer;      /* SG_UPSTREAM_* */
    void                  *hash_key;      /* sg_smtp_complex_value_t */
    bool                   consistent;
    void                  *ring;          /* consistent hash points */
    size_t                 nring;
    sg_upstream_check_t   *check;         /* health_check, or NULL */
    sg_shm_zone_t         *zone;          /* NULL: implicit (proxy_pass
                                             HOST:PORT), state per worker */
    sg_upstream_state_t   *local;         /* the state without a zone */
    bool                   implicit;
    bool                   used;
    /* Worker: its slot in the zone's table of the sessions each worker
     * counts (-1: none), and whether it has handed them back. */
    int                    slot;
    bool                   released;
    /* Worker: the health check timer. */
    sg_event_t             check_timer;
    sg_log_t              *log;
};

/* One session's choice of peers. */
typedef struct {
    sg_upstream_t        *upstream;
    sg_log_t             *log;
    uint32_t              hash;
    uint8_t              *tried;        /* one byte per peer */
    sg_upstream_peer_t   *peer;         /* the current attempt's */
    unsigned              tries;
    unsigned              hash_tries;
    bool                  counted;      /* peer's conns incremented */
    bool                  no_spool;     /* skip spool peers */
} sg_upstream_pick_t;

/* Find a group by name (NULL: none), at configuration time. */
sg_upstream_t *sg_upstream_find(sg_conf_t *cf, const sg_str_t *name);
/* ... or at run time, in the current cycle. */
sg_upstream_t *sg_upstream_lookup(const sg_str_t *name);
/* An implicit group for "proxy_pass HOST:PORT" (one peer per address,
 * no passive failure marking). */
sg_upstream_t *sg_upstream_implicit(sg_conf_t *cf, sg_url_t *u);

int sg_upstream_pick_init(sg_upstream_pick_t *pk, sg_upstream_t *u,
    sg_smtp_session_t *s);
/* The same without a session (the spool's forwarder): hash balancers
 * hash key instead of their key's value. */
int sg_upstream_pick_init_key(sg_upstream_pick_t *pk, sg_upstream_t *u,
    sg_pool_t *pool, sg_log_t *log, const sg_str_t *key);
/* The next peer to try: SG_OK (pk->peer), or SG_DECLINED when none is
 * left. */
int sg_upstream_get(sg_upstream_pick_t *pk);
/* The attempt with pk->peer ended: it worked (the session was relayed),
 * it failed, or the session went away before it could tell. */
#define SG_UPSTREAM_OK       0
#define SG_UPSTREAM_FAILED   1
#define SG_UPSTREAM_ABORTED  2
void sg_upstream_done(sg_upstream_pick_t *pk, unsigned outcome);

/* The extensions every healthy, probed peer of u offers (and the
 * smallest SIZE), for smtp_capabilities auto; false when no peer has
 * been probed yet since the configuration was loaded. */
bool sg_upstream_caps(sg_upstream_t *u, unsigned *caps, int64_t *size);

/* For the status module: every group of the current configuration (the
 * implicit ones, u->implicit, keep their state per worker), and
 * whether peer i of u takes sessions now (not down, not failing its
 * health checks, not out for max_fails). */
sg_upstream_t **sg_upstream_groups(size_t *n);
/* ... of a given configuration (one being loaded, say). */
sg_upstream_t **sg_upstream_groups_of(sg_cycle_t *cycle, size_t *n);
bool sg_upstream_peer_up(sg_upstream_t *u, size_t i);
/* A process that relays to u's peers (a worker, as it starts; the spool
 * forwarder) takes a slot of its zone, so that the sessions it counts
 * are taken back should it die; and gives it back as it exits. */
void sg_upstream_slot_claim(sg_cycle_t *cycle, sg_upstream_t *u);
/* Peer i's weight now: the operator's (sg_upstream_set_weight), else
 * the configured one. */
int64_t sg_upstream_weight(sg_upstream_t *u, size_t i);
/* The operator's weight for peer i, 1 to 1000, or 0 for the configured
 * one again; kept across reloads that keep the group.  SG_DECLINED for
 * a consistent hash group (its ring is built from the configured
 * weights), else SG_OK. */
int sg_upstream_set_weight(sg_upstream_t *u, size_t i, int64_t weight);
void sg_upstream_slot_leave(sg_upstream_t *u);
/* The operator's say on peer i (the status API): drain keeps new
 * sessions (and the spool forwarder) away from it, while those it has
 * go on; !drain lets them in again.  Kept across reloads that keep the
 * group.  Returns whether it was draining; *active: its sessions now. */
bool sg_upstream_drain(sg_upstream_t *u, size_t i, bool drain,
    uint32_t *active);
/* The operator takes peer i out at once: it drains, and every worker
 * closes the sessions relayed to it within a second (close_seq moves
 * on).  *active: its sessions as it was taken out. */
void sg_upstream_close(sg_upstream_t *u, size_t i, uint32_t *active);
/* Whether peer i drains; *active: its sessions now. */
bool sg_upstream_drain_state(sg_upstream_t *u, size_t i, uint32_t *active);

/* Health checks (sg_upstream_check.c). */
char *sg_upstream_health_check(sg_conf_t *cf, sg_upstream_t *u);
void sg_upstream_check_start(sg_cycle_t *cycle, sg_upstream_t *u);
void sg_upstream_check_stop(sg_upstream_t *u);

/* The state of peer i (shared memory or the worker's own). */
static inline sg_upstream_state_t *
sg_upstream_state(sg_upstream_t *u, size_t i)
{
    return u->zone ? (sg_upstream_state_t *) u->zone->data + i
                   : u->local + i;
}

/* How many times the operator has closed peer i's sessions: a session
 * that saw another number when it picked the peer is to be closed. */
static inline uint32_t
sg_upstream_close_seq(sg_upstream_t *u, size_t i)
{
    return __atomic_load_n(&sg_upstream_state(u, i)->close_seq,
                           __ATOMIC_RELAXED);
}

/* Which configuration this worker's u belongs to, among those sharing
 * its state: one more for each reload that kept the group. */
static inline uint64_t
sg_upstream_generation(sg_upstream_t *u)
{
    return u->zone ? u->zone->generation : 0;
}

static inline void
sg_upstream_lock(sg_upstream_t *u)
{
    if (u->zone) {
        sg_shm_lock(u->zone);
    }
}

static inline void
sg_upstream_unlock(sg_upstream_t *u)
{
    if (u->zone) {
        sg_shm_unlock(u->zone);
    }
}

#endif /* SG_UPSTREAM_H */
