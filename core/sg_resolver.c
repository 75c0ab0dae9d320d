/*
 * sg_resolver.c: reverse lookups with forward confirmation over UDP
 * (sg_resolver.h).
 *
 * Owns, per worker and resolver: the UDP connections, the entries (an
 * answer, or a query in flight with the lookups waiting on it) in one
 * hash table by type and name, and their LRU list.  Refuses answers
 * that do not match a query in flight by id, question and server.
 */
#include "sg_core.h"

#include <sys/random.h>

#define SG_RESOLVER_BUCKETS  1024
#define SG_RESOLVER_ID_BUCKETS  256
#define SG_RESOLVER_IN_FLIGHT_MAX  32768   /* of 65536 query ids */
#define SG_RESOLVER_TTL_MAX  86400000      /* ms: a day at most */
#define SG_RESOLVER_TCP_MAX  16384         /* a TCP answer, with its
                                              2-byte length */

typedef struct sg_dns_entry_s  sg_dns_entry_t;

/* A query in flight. */
typedef struct {
    sg_event_t           timer;
    sg_msec_t            deadline;
    uint16_t             id;
    size_t               server;           /* where it went last */
    uint32_t             sent;             /* servers it went to */
    uint32_t             refused;          /* ... that said unreachable */
    size_t               len;
    u_char               msg[SG_DNS_NAME_MAX + 32 + SG_DNS_OPT_LEN];
    unsigned             edns:1;            /* msg has an OPT record */

    /* Asked again over TCP after a truncated answer (RFC 7766). */
    sg_connection_t     *tcp;
    u_char              *tcp_buf;           /* SG_RESOLVER_TCP_MAX */
    size_t               tcp_pos;           /* sent, then received */
    unsigned             tcp_reading:1;
} sg_dns_query_t;

struct sg_dns_entry_s {
    sg_dns_entry_t      *hnext;
    sg_dns_entry_t      *id_next;           /* in flight, by query id */
    sg_dns_entry_t      *lru_prev;          /* answers only, newest first */
    sg_dns_entry_t      *lru_next;
    sg_resolver_t       *resolver;
    uint32_t             hash;
    uint16_t             type;
    sg_str_t             key;               /* the name asked about */

    sg_dns_query_t      *query;             /* in flight; NULL: answered */
    sg_resolve_host_t   *waiters;

    sg_resolve_status_e  status;
    const char          *why;
    sg_msec_t            expires;
    u_char               value[SG_DNS_NAME_MAX];  /* PTR: the name */
    size_t               value_len;
    u_char               addrs[SG_DNS_ADDRS_MAX][16];
    size_t               naddrs;
    u_char               key_data[SG_DNS_NAME_MAX];
};

struct sg_resolver_rt_s {
    sg_dns_entry_t      *buckets[SG_RESOLVER_BUCKETS];
    sg_dns_entry_t      *by_id[SG_RESOLVER_ID_BUCKETS];
    sg_dns_entry_t      *lru_head;
    sg_dns_entry_t      *lru_tail;
    size_t               answers;           /* in the LRU list */
    size_t               max_answers;
    size_t               in_flight;
    size_t               next_server;
    uint32_t             refused_logged;    /* said once per socket */
    uint32_t             no_edns;           /* servers that answered
                                               FORMERR or NOTIMP to it */
    sg_connection_t     *udp[SG_RESOLVER_ADDRS_MAX];
    u_char               random[64];
    size_t               random_left;
};

static void sg_resolver_read(sg_event_t *ev);
static void sg_resolver_answered(sg_dns_entry_t *e);


static sg_resolver_rt_t *
sg_resolver_rt(sg_resolver_t *r)
{
    if (r->rt == NULL) {
        r->rt = calloc(1, sizeof(sg_resolver_rt_t));
        if (r->rt) {
            r->rt->max_answers = sg_max(sg_cycle->connection_n, 256);
        }
    }
    return r->rt;
}

static uint32_t
sg_resolver_hash(uint16_t type, const u_char *name, size_t len)
{
    uint32_t  h = 2166136261u ^ type;
    size_t    i;

    for (i = 0; i < len; i++) {
        h = (h ^ sg_tolower(name[i])) * 16777619u;
    }
    return h;
}

static sg_dns_entry_t *
sg_resolver_find(sg_resolver_rt_t *rt, uint16_t type, const u_char *name,
    size_t len, uint32_t hash)
{
    sg_dns_entry_t  *e;

    for (e = rt->buckets[hash % SG_RESOLVER_BUCKETS]; e; e = e->hnext) {
        if (e->hash == hash && e->type == type && e->key.len == len
            && sg_strncasecmp(e->key.data, name, len) == 0)
        {
            return e;
        }
    }
    return NULL;
}

static sg_dns_entry_t *
sg_resolver_by_id(sg_resolver_rt_t *rt, uint16_t id)
{
    sg_dns_entry_t  *e;

    for (e = rt->by_id[id % SG_RESOLVER_ID_BUCKETS]; e; e = e->id_next) {
        if (e->query->id == id) {
            return e;
        }
    }
    return NULL;
}

static void
sg_resolver_unlink_id(sg_resolver_rt_t *rt, sg_dns_entry_t *e)
{
    sg_dns_entry_t  **pp = &rt->by_id[e->query->id % SG_RESOLVER_ID_BUCKETS];

    while (*pp != e) {
        pp = &(*pp)->id_next;
    }
    *pp = e->id_next;
    e->id_next = NULL;
}

/* Out of the table by name (it stays in memory). */
static void
sg_resolver_unlink(sg_resolver_rt_t *rt, sg_dns_entry_t *e)
{
    sg_dns_entry_t  **pp = &rt->buckets[e->hash % SG_RESOLVER_BUCKETS];

    while (*pp != e) {
        pp = &(*pp)->hnext;
    }
    *pp = e->hnext;
    e->hnext = NULL;
}

static void
sg_resolver_lru_unlink(sg_resolver_rt_t *rt, sg_dns_entry_t *e)
{
    if (e->lru_prev) {
        e->lru_prev->lru_next = e->lru_next;
    } else {
        rt->lru_head = e->lru_next;
    }
    if (e->lru_next) {
        e->lru_next->lru_prev = e->lru_prev;
    } else {
        rt->lru_tail = e->lru_prev;
    }
    e->lru_prev = e->lru_next = NULL;
    rt->answers--;
}

static void
sg_resolver_lru_push(sg_resolver_rt_t *rt, sg_dns_entry_t *e)
{
    e->lru_prev = NULL;
    e->lru_next = rt->lru_head;
    if (rt->lru_head) {
        rt->lru_head->lru_prev = e;
    } else {
        rt->lru_tail = e;
    }
    rt->lru_head = e;
    rt->answers++;
}

/* The query of e is over: its timer, its TCP retry and its memory. */
static void
sg_resolver_query_free(sg_resolver_rt_t *rt, sg_dns_entry_t *e)
{
    sg_dns_query_t  *q = e->query;

    sg_event_del_timer(&q->timer);
    if (q->tcp) {
        sg_close_connection(q->tcp);
    }
    free(q->tcp_buf);
    free(q);
    e->query = NULL;
    rt->in_flight--;
}

/* Drop an entry with nobody waiting on it. */
static void
sg_resolver_free_entry(sg_resolver_rt_t *rt, sg_dns_entry_t *e)
{
    sg_resolver_unlink(rt, e);
    if (e->query) {
        sg_resolver_unlink_id(rt, e);
        sg_resolver_query_free(rt, e);
    } else if (e->lru_prev || e->lru_next || rt->lru_head == e) {
        sg_resolver_lru_unlink(rt, e);
    }
    free(e);
}

/* The UDP sockets live while queries do: each burst of lookups gets
 * new source ports, and an idle worker holds none. */
static void
sg_resolver_close_idle(sg_resolver_t *r)
{
    sg_resolver_rt_t  *rt = r->rt;
    size_t             i;

    if (rt->in_flight) {
        return;
    }
    for (i = 0; i < r->naddrs; i++) {
        if (rt->udp[i]) {
            sg_close_connection(rt->udp[i]);
            rt->udp[i] = NULL;
        }
    }
    rt->refused_logged = 0;
}

static void
sg_resolver_write(sg_event_t *ev)
{
    (void) ev;                  /* UDP sends never wait for room */
}

static sg_connection_t *
sg_resolver_udp(sg_resolver_t *r, size_t i, sg_log_t *log)
{
    sg_resolver_rt_t  *rt = r->rt;
    sg_connection_t   *c;
    sg_addr_t         *a = &r->addrs[i];
    int                fd;

    if (rt->udp[i]) {
        return rt->udp[i];
    }
    fd = socket(a->sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd == -1) {
        sg_log_error(SG_LOG_ERR, log, errno, "socket() for the name server "
                     "%.*s failed", SG_STR_ARG(&a->name));
        return NULL;
    }
    if (connect(fd, (struct sockaddr *) &a->sa, a->socklen) == -1) {
        sg_log_error(SG_LOG_ERR, log, errno, "connect() to the name server "
                     "%.*s failed", SG_STR_ARG(&a->name));
        (void) close(fd);
        return NULL;
    }
    c = sg_get_connection(fd, sg_cycle->log);
    if (c == NULL) {
        (void) close(fd);
        return NULL;
    }
    c->data = r;
    c->addr_text = a->name;
    c->read->handler = sg_resolver_read;
    c->write->handler = sg_resolver_write;
    if (sg_event_add_conn(c) != SG_OK) {
        sg_close_connection(c);
        return NULL;
    }
    rt->udp[i] = c;
    return c;
}

static uint16_t
sg_resolver_random16(sg_resolver_rt_t *rt)
{
    uint16_t  v;

    if (rt->random_left < 2) {
        if (getrandom(rt->random, sizeof(rt->random), 0)
            != (ssize_t) sizeof(rt->random))
        {
            /* never expected for 64 bytes; ids then only count */
            memset(rt->random, 0, sizeof(rt->random));
            rt->random[0] = (u_char) sg_current_msec;
            rt->random[1] = (u_char) rt->in_flight;
        }
        rt->random_left = sizeof(rt->random);
    }
    rt->random_left -= 2;
    memcpy(&v, rt->random + rt->random_left, 2);
    return v;
}

/* Send the query to server i.  SG_OK, or SG_ERROR (logged). */
static int
sg_resolver_send_to(sg_dns_entry_t *e, size_t i, sg_log_t *log)
{
    sg_resolver_t    *r = e->resolver;
    sg_dns_query_t   *q = e->query;
    sg_connection_t  *c;
    ssize_t           n;

    c = sg_resolver_udp(r, i, log);
    if (c == NULL) {
        return SG_ERROR;
    }
    q->server = i;
    q->sent |= 1u << i;
    if (q->edns && (r->rt->no_edns & (1u << i))) {
        q->len = sg_dns_drop_edns(q->msg, q->len);
        q->edns = 0;
    }
    n = send(c->fd, q->msg, q->len, 0);
    if (n == (ssize_t) q->len) {
        return SG_OK;
    }
    if (n == -1 && errno == ECONNREFUSED) {
        q->refused |= 1u << i;          /* an earlier query's ICMP */
    }
    sg_log_error(SG_LOG_ERR, log, n == -1 ? errno : 0, "send() to the name "
                 "server %.*s failed", SG_STR_ARG(&r->addrs[i].name));
    return SG_ERROR;
}

/* Send to the next server that has not refused this query; SG_ERROR
 * when none is left. */
static int
sg_resolver_send(sg_dns_entry_t *e, sg_log_t *log)
{
    sg_resolver_t   *r = e->resolver;
    sg_dns_query_t  *q = e->query;
    size_t           k, i;

    for (k = 0; k < r->naddrs; k++) {
        i = (q->server + 1 + k) % r->naddrs;
        if (!(q->refused & (1u << i))
            && sg_resolver_send_to(e, i, log) == SG_OK)
        {
            return SG_OK;
        }
    }
    return SG_ERROR;
}

/* The query failed for good: every waiter learns it. */
static void
sg_resolver_fail(sg_dns_entry_t *e, const char *why)
{
    e->status = SG_RESOLVE_TEMPFAIL;
    e->why = why;
    e->expires = 0;
    sg_resolver_answered(e);
}

static void
sg_resolver_timer(sg_event_t *ev)
{
    sg_dns_entry_t  *e = ev->data;
    sg_dns_query_t  *q = e->query;
    sg_msec_t        left = q->deadline - sg_current_msec;

    if (left <= 0) {
        sg_resolver_fail(e, q->tcp ? "no answer over TCP in time "
                         "(resolver_timeout)"
                         : "no answer in time (resolver_timeout)");
        return;
    }
    if (q->tcp) {
        sg_event_add_timer(ev, left);   /* TCP has its own retransmits */
        return;
    }
    if (sg_resolver_send(e, ev->log) != SG_OK) {
        sg_resolver_fail(e, q->refused ? "no name server is listening "
                         "(ICMP port unreachable)"
                         : "no name server could be reached");
        return;
    }
    sg_event_add_timer(ev, sg_min(left, SG_RESOLVER_RESEND));
}

/* An entry for (type, name), asked for now.  NULL: out of memory or
 * sockets (logged). */
static sg_dns_entry_t *
sg_resolver_query(sg_resolver_t *r, uint16_t type, const u_char *name,
    size_t len, uint32_t hash, sg_msec_t timeout, sg_log_t *log)
{
    sg_resolver_rt_t  *rt = r->rt;
    sg_dns_entry_t    *e;
    sg_dns_query_t    *q;
    sg_str_t           qname;

    if (rt->in_flight >= SG_RESOLVER_IN_FLIGHT_MAX) {
        /* ids must stay unique among the queries in flight */
        sg_log_error(SG_LOG_ERR, log, 0, "%d DNS queries in flight, no "
                     "more", SG_RESOLVER_IN_FLIGHT_MAX);
        return NULL;
    }
    e = calloc(1, sizeof(sg_dns_entry_t));
    q = calloc(1, sizeof(sg_dns_query_t));
    if (e == NULL || q == NULL) {
        free(e);
        free(q);
        return NULL;
    }
    e->resolver = r;
    e->hash = hash;
    e->type = type;
    e->key.data = e->key_data;
    e->key.len = len;
    memcpy(e->key_data, name, len);
    e->query = q;
    do {
        q->id = sg_resolver_random16(rt);
    } while (sg_resolver_by_id(rt, q->id) != NULL);
    qname = e->key;
    q->len = sg_dns_query(q->msg, sizeof(q->msg), q->id, &qname, type);
    if (q->len == 0) {
        free(q);
        free(e);
        return NULL;
    }
    q->len = sg_dns_add_edns(q->msg, q->len, sizeof(q->msg));
    q->edns = 1;
    q->timer.data = e;
    q->timer.handler = sg_resolver_timer;
    q->timer.log = sg_cycle->log;
    q->deadline = sg_current_msec + timeout;
    q->server = rt->next_server++ % r->naddrs;
    q->server = (q->server + r->naddrs - 1) % r->naddrs;
    e->hnext = rt->buckets[hash % SG_RESOLVER_BUCKETS];
    rt->buckets[hash % SG_RESOLVER_BUCKETS] = e;
    e->id_next = rt->by_id[q->id % SG_RESOLVER_ID_BUCKETS];
    rt->by_id[q->id % SG_RESOLVER_ID_BUCKETS] = e;
    rt->in_flight++;
    if (sg_resolver_send(e, log) != SG_OK) {
        sg_resolver_free_entry(rt, e);
        sg_resolver_close_idle(r);
        return NULL;
    }
    sg_event_add_timer(&q->timer, sg_min(timeout, SG_RESOLVER_RESEND));
    return e;
}

/* Forget the least recently used answers beyond the bound. */
static void
sg_resolver_trim(sg_resolver_rt_t *rt)
{
    while (rt->answers > rt->max_answers) {
        sg_resolver_free_entry(rt, rt->lru_tail);
    }
}

static void
sg_resolver_wait(sg_dns_entry_t *e, sg_resolve_host_t *h)
{
    h->entry = e;
    h->next = e->waiters;
    if (h->next) {
        h->next->prev = &h->next;
    }
    h->prev = &e->waiters;
    e->waiters = h;
}

static void
sg_resolver_unwait(sg_resolve_host_t *h)
{
    *h->prev = h->next;
    if (h->next) {
        h->next->prev = h->prev;
    }
    h->entry = NULL;
    h->next = NULL;
    h->prev = NULL;
}

static bool
sg_resolver_client_v6(const sg_resolve_host_t *h)
{
    const struct sockaddr_in6  *sin6 = (const void *) &h->addr;

    return h->addr.ss_family == AF_INET6
           && !IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr);
}

/* The client's address as the A or AAAA record would hold it. */
static const u_char *
sg_resolver_client_bytes(const sg_resolve_host_t *h, size_t *len)
{
    const struct sockaddr_in6  *sin6 = (const void *) &h->addr;
    const struct sockaddr_in   *sin = (const void *) &h->addr;

    if (h->addr.ss_family == AF_INET) {
        *len = 4;
        return (const u_char *) &sin->sin_addr;
    }
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
        *len = 4;
        return sin6->sin6_addr.s6_addr + 12;
    }
    *len = 16;
    return sin6->sin6_addr.s6_addr;
}

/*
 * Take h one step on with entry e's answer, or start waiting for the
 * entry it needs.  SG_OK: h is done; SG_AGAIN: it waits.
 */
static int sg_resolver_step(sg_resolve_host_t *h, sg_dns_entry_t *e);

static int
sg_resolver_need(sg_resolve_host_t *h, uint16_t type, const u_char *name,
    size_t len)
{
    sg_resolver_t     *r = h->resolver;
    sg_resolver_rt_t  *rt = r->rt;
    sg_dns_entry_t    *e;
    uint32_t           hash = sg_resolver_hash(type, name, len);

    e = sg_resolver_find(rt, type, name, len, hash);
    if (e && e->query == NULL && e->expires <= sg_current_msec) {
        sg_resolver_free_entry(rt, e);
        e = NULL;
    }
    if (e == NULL) {
        if (h->deadline <= sg_current_msec) {
            h->status = SG_RESOLVE_TEMPFAIL;
            h->why = "no answer in time (resolver_timeout)";
            return SG_OK;
        }
        e = sg_resolver_query(r, type, name, len, hash,
                              h->deadline - sg_current_msec, h->log);
        if (e == NULL) {
            h->status = SG_RESOLVE_TEMPFAIL;
            h->why = "the query could not be sent";
            return SG_OK;
        }
    }
    if (e->query) {
        sg_resolver_wait(e, h);
        return SG_AGAIN;
    }
    sg_resolver_lru_unlink(rt, e);       /* used: the newest again */
    sg_resolver_lru_push(rt, e);
    return sg_resolver_step(h, e);
}

static int
sg_resolver_step(sg_resolve_host_t *h, sg_dns_entry_t *e)
{
    const u_char  *mine;
    size_t         len, i;

    if (e->status != SG_RESOLVE_OK) {
        h->status = e->status;
        h->why = e->why;
        return SG_OK;
    }
    if (!h->forward) {
        memcpy(h->name, e->value, e->value_len);
        h->name_len = e->value_len;
        if (!sg_dns_host_name_ok(h->name, h->name_len)) {
            h->status = SG_RESOLVE_NOTFOUND;
            h->why = "the PTR record's name is not a host name";
            return SG_OK;
        }
        h->forward = 1;
        return sg_resolver_need(h, sg_resolver_client_v6(h) ? SG_DNS_AAAA
                                                            : SG_DNS_A,
                                h->name, h->name_len);
    }
    mine = sg_resolver_client_bytes(h, &len);
    for (i = 0; i < e->naddrs; i++) {
        if (memcmp(e->addrs[i], mine, len) == 0) {
            h->status = SG_RESOLVE_OK;
            h->why = NULL;
            return SG_OK;
        }
    }
    h->status = SG_RESOLVE_NOTFOUND;
    h->why = "the PTR record's name does not resolve to the client's "
             "address";
    return SG_OK;
}

int
sg_resolve_host(sg_resolve_host_t *h)
{
    u_char  arpa[SG_DNS_NAME_MAX];
    size_t  len;

    h->status = SG_RESOLVE_TEMPFAIL;
    h->name_len = 0;
    h->forward = 0;
    h->entry = NULL;
    h->deadline = sg_current_msec + h->timeout;
    if (sg_resolver_client_v6(h) && !h->resolver->ipv6) {
        h->status = SG_RESOLVE_NOTFOUND;
        h->why = "an IPv6 client, and the resolver has ipv6=off";
        return SG_OK;
    }
    if (sg_resolver_rt(h->resolver) == NULL) {
        h->why = "out of memory";
        return SG_OK;
    }
    len = sg_dns_arpa_name((struct sockaddr *) &h->addr, arpa);
    return sg_resolver_need(h, SG_DNS_PTR, arpa, len);
}

void
sg_resolve_host_cancel(sg_resolve_host_t *h)
{
    sg_dns_entry_t  *e = h->entry;

    if (e == NULL) {
        return;
    }
    sg_resolver_unwait(h);
    if (e->waiters == NULL && e->query) {
        /* nobody else wants it: stop asking */
        sg_resolver_free_entry(e->resolver->rt, e);
        sg_resolver_close_idle(h->resolver);
    }
}

/* e has its answer (or failed): keep it if it may be kept, and move
 * every lookup waiting on it along, calling those that are done.  A
 * handler may start or cancel lookups, but cannot free e meanwhile: a
 * kept answer has not expired by the cached clock, and one not kept is
 * out of the table already. */
static void
sg_resolver_answered(sg_dns_entry_t *e)
{
    sg_resolver_t      *r = e->resolver;
    sg_resolver_rt_t   *rt = r->rt;
    sg_resolve_host_t  *h, *list;
    bool                keep = e->expires > sg_current_msec;

    sg_resolver_unlink_id(rt, e);
    sg_resolver_query_free(rt, e);
    if (keep) {
        sg_resolver_lru_push(rt, e);
        sg_resolver_trim(rt);
    } else {
        sg_resolver_unlink(rt, e);
    }
    list = e->waiters;
    e->waiters = NULL;
    if (list) {
        list->prev = &list;
    }
    while ((h = list) != NULL) {
        sg_resolver_unwait(h);
        if (sg_resolver_step(h, e) == SG_OK) {
            h->handler(h);
        }
    }
    if (!keep) {
        free(e);
    }
    sg_resolver_close_idle(r);
}

/* What an answer means for the lookups waiting on it. */
static void
sg_resolver_take(sg_dns_entry_t *e, const sg_dns_answer_t *a)
{
    sg_resolver_t  *r = e->resolver;
    sg_msec_t       ttl;

    e->expires = 0;
    switch (a->rcode) {
    case SG_DNS_NOERROR:
        if (a->n) {
            e->status = SG_RESOLVE_OK;
            memcpy(e->value, a->name, a->name_len);
            e->value_len = a->name_len;
            memcpy(e->addrs, a->addrs, sizeof(a->addrs));
            e->naddrs = a->naddrs;
            ttl = r->valid ? r->valid
                           : sg_min((sg_msec_t) a->ttl * 1000,
                                    SG_RESOLVER_TTL_MAX);
            e->expires = sg_current_msec + ttl;
        } else if (a->truncated) {
            e->status = SG_RESOLVE_TEMPFAIL;
            e->why = "the answer was truncated (TC) before any record";
        } else {
            e->status = SG_RESOLVE_NOTFOUND;
            e->why = e->type == SG_DNS_PTR ? "no PTR record"
                     : e->type == SG_DNS_A ? "no A record" : "no AAAA record";
            e->expires = sg_current_msec
                         + (r->valid ? r->valid : SG_RESOLVER_NEGATIVE_TTL);
        }
        break;
    case SG_DNS_NXDOMAIN:
        e->status = SG_RESOLVE_NOTFOUND;
        e->why = "the name does not exist (NXDOMAIN)";
        e->expires = sg_current_msec
                     + (r->valid ? r->valid : SG_RESOLVER_NEGATIVE_TTL);
        break;
    case SG_DNS_FORMERR:
        e->status = SG_RESOLVE_NOTFOUND;
        e->why = "the name server could not read the query (FORMERR)";
        break;
    case SG_DNS_SERVFAIL:
        e->status = SG_RESOLVE_TEMPFAIL;
        e->why = "the name server failed (SERVFAIL)";
        break;
    case SG_DNS_REFUSED:
        e->status = SG_RESOLVE_TEMPFAIL;
        e->why = "the name server refused the query (REFUSED)";
        break;
    default:
        e->status = SG_RESOLVE_TEMPFAIL;
        e->why = "the name server answered with an error";
        break;
    }
    sg_resolver_answered(e);
}

/* An ICMP port unreachable on server i's socket: every query that went
 * there last moves on at once (from its timer, outside this loop over
 * the table). */
static void
sg_resolver_refused(sg_resolver_t *r, size_t i)
{
    sg_resolver_rt_t  *rt = r->rt;
    sg_dns_entry_t    *e;
    size_t             b;

    for (b = 0; b < SG_RESOLVER_ID_BUCKETS; b++) {
        for (e = rt->by_id[b]; e; e = e->id_next) {
            if (e->query->server == i) {
                e->query->refused |= 1u << i;
                sg_event_add_timer(&e->query->timer, 0);
            }
        }
    }
}

/* TCP: the query with its 2-byte length, then the answer with its
 * own, read whole into q->tcp_buf (RFC 1035 4.2.2, RFC 7766). */

static void
sg_resolver_tcp_failed(sg_dns_entry_t *e, const char *why)
{
    sg_log_error(SG_LOG_INFO, sg_cycle->log, 0, "DNS over TCP to %.*s for "
                 "\"%.*s\": %s", SG_STR_ARG(&e->query->tcp->addr_text),
                 SG_STR_ARG(&e->key), why);
    sg_resolver_fail(e, "the answer was truncated and TCP failed");
}

static void
sg_resolver_tcp_read(sg_event_t *ev)
{
    sg_connection_t  *c = ev->data;
    sg_dns_entry_t   *e = c->data;
    sg_dns_query_t   *q = e->query;
    sg_dns_answer_t   a;
    const char       *err;
    size_t            want;
    ssize_t           n;

    if (!q->tcp_reading) {
        return;                     /* nothing is due before the query */
    }
    for ( ;; ) {
        want = q->tcp_pos < 2 ? 2
               : 2 + (size_t) ((q->tcp_buf[0] << 8) | q->tcp_buf[1]);
        if (want > SG_RESOLVER_TCP_MAX) {
            sg_resolver_tcp_failed(e, "the answer is over 16384 bytes");
            return;
        }
        if (q->tcp_pos == want && want > 2) {
            break;
        }
        n = recv(c->fd, q->tcp_buf + q->tcp_pos, want - q->tcp_pos, 0);
        if (n > 0) {
            q->tcp_pos += (size_t) n;
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        sg_resolver_tcp_failed(e, n == 0 ? "closed before the whole answer"
                                         : strerror(errno));
        return;
    }
    if (sg_dns_id(q->tcp_buf + 2, want - 2) != q->id
        || sg_dns_parse(q->tcp_buf + 2, want - 2, &e->key, e->type, &a,
                        &err) != SG_OK)
    {
        sg_resolver_tcp_failed(e, sg_dns_id(q->tcp_buf + 2, want - 2)
                                  != q->id ? "an answer with another id"
                                           : err);
        return;
    }
    sg_resolver_take(e, &a);
}

static void
sg_resolver_tcp_write(sg_event_t *ev)
{
    sg_connection_t  *c = ev->data;
    sg_dns_entry_t   *e = c->data;
    sg_dns_query_t   *q = e->query;
    int               err, rc;

    if (q->tcp_reading) {
        return;
    }
    if (q->tcp_pos == 0 && sg_connect_result(c, &err) != SG_OK) {
        sg_resolver_tcp_failed(e, strerror(err));
        return;
    }
    rc = sg_send_rest(c->fd, q->tcp_buf, q->len + 2, &q->tcp_pos);
    if (rc == SG_AGAIN) {
        return;
    }
    if (rc == SG_ERROR) {
        sg_resolver_tcp_failed(e, strerror(errno));
        return;
    }
    q->tcp_reading = 1;
    q->tcp_pos = 0;
    sg_resolver_tcp_read(c->read);
}

/* A truncated answer from server i: ask it again over TCP.  SG_OK:
 * under way; SG_ERROR: the truncated answer is all there is. */
static int
sg_resolver_tcp(sg_dns_entry_t *e, size_t i)
{
    sg_dns_query_t   *q = e->query;
    sg_connection_t  *c;
    int               rc;

    if (q->tcp_buf != NULL) {
        return SG_ERROR;            /* a second truncated answer */
    }
    q->tcp_buf = malloc(SG_RESOLVER_TCP_MAX);
    if (q->tcp_buf == NULL) {
        return SG_ERROR;
    }
    rc = sg_connect(&e->resolver->addrs[i], sg_cycle->log, &c);
    if (rc == SG_ERROR) {
        return SG_ERROR;
    }
    q->tcp = c;
    c->data = e;
    c->read->handler = sg_resolver_tcp_read;
    c->write->handler = sg_resolver_tcp_write;
    q->tcp_buf[0] = (u_char) (q->len >> 8);
    q->tcp_buf[1] = (u_char) q->len;
    memcpy(q->tcp_buf + 2, q->msg, q->len);
    q->tcp_pos = 0;
    sg_log_debug(sg_cycle->log, "truncated DNS answer for \"%.*s\" from "
                 "%.*s, asking again over TCP", SG_STR_ARG(&e->key),
                 SG_STR_ARG(&c->addr_text));
    if (rc == SG_OK) {
        sg_resolver_tcp_write(c->write);
    }
    return SG_OK;
}

static void
sg_resolver_read(sg_event_t *ev)
{
    sg_connection_t   *c = ev->data;
    sg_resolver_t     *r = c->data;
    sg_resolver_rt_t  *rt = r->rt;
    sg_dns_entry_t    *e;
    sg_dns_answer_t    a;
    const char        *err;
    u_char             buf[4096];
    ssize_t            n;
    size_t             i;
    int                id;

    for (i = 0; i < r->naddrs && rt->udp[i] != c; i++) { /* void */ }
    while (i < r->naddrs && rt->udp[i] == c) {
        n = recv(c->fd, buf, sizeof(buf), 0);
        if (n == -1) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            if (errno == ECONNREFUSED) {
                /* once while the socket lives: with the name server
                 * down, every query would say it again */
                if (!(rt->refused_logged & (1u << i))) {
                    rt->refused_logged |= 1u << i;
                    sg_log_error(SG_LOG_ERR, sg_cycle->log, 0, "the name "
                                 "server %.*s is not listening (ICMP port "
                                 "unreachable)", SG_STR_ARG(&c->addr_text));
                }
                sg_resolver_refused(r, i);
                continue;
            }
            sg_log_error(SG_LOG_ERR, sg_cycle->log, errno, "recv() from the "
                         "name server %.*s failed", SG_STR_ARG(&c->addr_text));
            return;
        }
        id = sg_dns_id(buf, (size_t) n);
        e = id < 0 ? NULL : sg_resolver_by_id(rt, (uint16_t) id);
        if (e == NULL || !(e->query->sent & (1u << i))) {
            sg_log_debug(sg_cycle->log, "a DNS message from %.*s for no "
                         "query in flight, ignored",
                         SG_STR_ARG(&c->addr_text));
            continue;
        }
        if (sg_dns_parse(buf, (size_t) n, &e->key, e->type, &a, &err)
            != SG_OK)
        {
            sg_log_error(SG_LOG_INFO, sg_cycle->log, 0, "a DNS message from "
                         "%.*s ignored: %s", SG_STR_ARG(&c->addr_text), err);
            continue;
        }
        if (e->query->edns
            && (a.rcode == SG_DNS_FORMERR || a.rcode == SG_DNS_NOTIMP))
        {
            /* RFC 6891 7: a server that does not know EDNS; it is
             * asked without from here on, this query at once */
            rt->no_edns |= 1u << i;
            sg_log_error(SG_LOG_INFO, sg_cycle->log, 0, "the name server "
                         "%.*s does not take EDNS (%s), asking again "
                         "without it", SG_STR_ARG(&c->addr_text),
                         a.rcode == SG_DNS_FORMERR ? "FORMERR" : "NOTIMP");
            if (sg_resolver_send_to(e, i, sg_cycle->log) == SG_OK) {
                continue;
            }
        }
        if (a.truncated && sg_resolver_tcp(e, i) == SG_OK) {
            continue;               /* the whole answer comes over TCP */
        }
        /* the handlers it calls may close c: the loop checks */
        sg_resolver_take(e, &a);
    }
}
