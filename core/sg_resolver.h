/*
 * sg_resolver.h: client host names from DNS, without blocking a worker.
 *
 * A lookup asks the name servers of one "resolver" directive for the
 * PTR record of the client's address and then for the addresses of
 * the name it gives (A for an IPv4 client, AAAA for an IPv6 one): the
 * name counts only when it resolves back to the client (forward
 * confirmation, as nginx, Postfix and sendmail do), so that whoever
 * controls a reverse zone cannot name a client after someone else.
 *
 * Each worker keeps its own state: UDP sockets to the name servers,
 * open only while queries are pending (each burst gets a new source
 * port), the queries in flight (one per name and type, shared by every
 * session waiting on it), and a cache of answers, for their TTL or
 * valid=, bounded by worker_connections entries.  A query is sent again
 * every SG_RESOLVER_RESEND ms, to the next server in turn, until the
 * lookup's timeout; a server that answers with ICMP port unreachable is
 * skipped at once; a truncated answer is asked for again over TCP.
 */
#ifndef SG_RESOLVER_H
#define SG_RESOLVER_H

#include "sg_dns.h"

#define SG_RESOLVER_RESEND        2000     /* ms between sends of a query */
#define SG_RESOLVER_NEGATIVE_TTL  10000    /* ms an answer without the
                                              name is kept, without
                                              valid= */
#define SG_RESOLVER_ADDRS_MAX     16       /* name servers a directive */

typedef struct sg_resolver_rt_s  sg_resolver_rt_t;

typedef struct {
    sg_addr_t            *addrs;           /* name servers, port 53 when
                                              none was given */
    size_t                naddrs;
    sg_msec_t             valid;           /* 0: the answers' TTLs */
    unsigned              ipv6:1;          /* look AAAA records up */
    sg_resolver_rt_t     *rt;              /* the worker's state */
} sg_resolver_t;

typedef enum {
    SG_RESOLVE_OK = 0,                     /* h->name is the client's */
    SG_RESOLVE_NOTFOUND,                   /* no name: [UNAVAILABLE] */
    SG_RESOLVE_TEMPFAIL                    /* DNS failed: [TEMPUNAVAIL] */
} sg_resolve_status_e;

typedef struct sg_resolve_host_s  sg_resolve_host_t;
typedef void (*sg_resolve_handler_pt)(sg_resolve_host_t *h);

struct sg_resolve_host_s {
    /* Set by the caller. */
    sg_resolver_t            *resolver;
    struct sockaddr_storage   addr;        /* the client's */
    sg_msec_t                 timeout;     /* for the whole lookup */
    sg_log_t                 *log;
    sg_resolve_handler_pt     handler;
    void                     *data;

    /* The result. */
    sg_resolve_status_e       status;
    u_char                    name[SG_DNS_NAME_MAX];  /* OK: the name;
                                              else what the PTR said, if
                                              anything */
    size_t                    name_len;
    const char               *why;         /* not OK: the cause, for the
                                              log */

    /* The resolver's. */
    sg_msec_t                 deadline;
    void                     *entry;       /* the answer waited for */
    sg_resolve_host_t        *next;        /* among its waiters */
    sg_resolve_host_t       **prev;
    unsigned                  forward:1;   /* waiting on A/AAAA */
};

/* Start looking h->addr up.  SG_OK: done at once (from the cache, or
 * failed), h->status set and the handler not called; SG_AGAIN: the
 * handler is called from the event loop when it is done. */
int sg_resolve_host(sg_resolve_host_t *h);
/* Stop waiting (the session closes).  Nothing is called afterwards. */
void sg_resolve_host_cancel(sg_resolve_host_t *h);

#endif /* SG_RESOLVER_H */
