/*
 * sg_listen.c: listening sockets and accepting.
 *
 * The master opens every listening socket (as root, before dropping
 * privileges) and keeps it across reloads when the new configuration
 * still listens on the same address, so a reload never refuses a
 * connection.  With "reuseport" the master opens one socket per worker
 * and the kernel spreads connections; otherwise all workers share one
 * socket and epoll's EPOLLEXCLUSIVE wakes one of them.
 */
#include "sg_core.h"
#include <netinet/tcp.h>

#define SG_ACCEPT_PAUSE_MS   500

sg_listening_t *
sg_create_listening(sg_conf_t *cf, const sg_addr_t *addr)
{
    sg_listening_t  *ls;

    ls = sg_array_push(&cf->cycle->listening);
    if (ls == NULL) {
        return NULL;
    }
    ls->fd = -1;
    ls->addr = *addr;
    ls->backlog = 511;
    ls->ipv6only = 1;
    ls->worker = -1;
    ls->pool_size = 1024;
    return ls;
}

/*
 * With reuseport every worker gets a socket of its own: the entry from
 * the configuration becomes worker 0's and copies are added for the
 * others.  Called once the configuration (and worker_processes) is known.
 */
int
sg_clone_listening(sg_cycle_t *cycle, int workers)
{
    sg_listening_t  *ls, *clone;
    size_t           i, n = cycle->listening.nelts;
    int              w;

    for (i = 0; i < n; i++) {
        ls = sg_array_elt(&cycle->listening, sg_listening_t, i);
        if (!ls->reuseport) {
            continue;
        }
        ls->worker = 0;
        for (w = 1; w < workers; w++) {
            clone = sg_array_push(&cycle->listening);
            if (clone == NULL) {
                return SG_ERROR;
            }
            /* push may have moved the array */
            ls = sg_array_elt(&cycle->listening, sg_listening_t, i);
            *clone = *ls;
            clone->worker = w;
        }
    }
    return SG_OK;
}

static int
sg_open_one(sg_cycle_t *cycle, sg_listening_t *ls)
{
    int  fd, on = 1;

    fd = socket(ls->addr.sa.ss_family,
                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno,
                     "socket() for %.*s failed", SG_STR_ARG(&ls->addr.name));
        return SG_ERROR;
    }
    (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
#if (SG_HAVE_REUSEPORT)
    if (ls->reuseport
        && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) == -1)
    {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno,
                     "setsockopt(SO_REUSEPORT) for %.*s failed",
                     SG_STR_ARG(&ls->addr.name));
        close(fd);
        return SG_ERROR;
    }
#endif
    if (ls->addr.sa.ss_family == AF_INET6) {
        /* "[::]:587" means IPv6 only unless ipv6only=off: list 0.0.0.0
         * separately, as in nginx, so that the two never collide. */
        on = ls->ipv6only;
        (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    }
    if (bind(fd, (struct sockaddr *) &ls->addr.sa, ls->addr.socklen) == -1) {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno,
                     "bind() to %.*s failed", SG_STR_ARG(&ls->addr.name));
        close(fd);
        return SG_ERROR;
    }
    if (listen(fd, ls->backlog) == -1) {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno,
                     "listen() to %.*s failed", SG_STR_ARG(&ls->addr.name));
        close(fd);
        return SG_ERROR;
    }
    ls->fd = fd;
    ls->open = 1;
    return SG_OK;
}

static bool
sg_fd_taken(sg_cycle_t *cycle, int fd)
{
    sg_listening_t  *ls = cycle->listening.elts;
    size_t           i;

    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].fd == fd) {
            return true;
        }
    }
    return false;
}

/* Take over the old cycle's socket for the same address and worker.  The
 * old cycle gives it up only when the new one is committed. */
static void
sg_inherit(sg_cycle_t *cycle, sg_listening_t *ls)
{
    sg_listening_t  *old;
    size_t           i;

    if (cycle->old_cycle == NULL) {
        return;
    }
    old = cycle->old_cycle->listening.elts;
    for (i = 0; i < cycle->old_cycle->listening.nelts; i++) {
        if (old[i].fd == -1
            || old[i].reuseport != ls->reuseport
            || old[i].ipv6only != ls->ipv6only
            || old[i].worker != ls->worker
            || !sg_sockaddr_eq((struct sockaddr *) &old[i].addr.sa,
                               old[i].addr.socklen,
                               (struct sockaddr *) &ls->addr.sa,
                               ls->addr.socklen)
            || sg_fd_taken(cycle, old[i].fd))
        {
            continue;
        }
        ls->fd = old[i].fd;
        ls->open = 1;
        ls->inherited = 1;
        if (ls->backlog != old[i].backlog) {
            (void) listen(ls->fd, ls->backlog);
        }
        return;
    }
}

static void
sg_listen_option(sg_cycle_t *cycle, sg_listening_t *ls, int level, int name,
    int value, const char *what)
{
    if (setsockopt(ls->fd, level, name, &value, sizeof(value)) == -1) {
        sg_log_error(SG_LOG_CRIT, cycle->log, errno, "setsockopt(%s, %d) "
                     "for %.*s failed, ignored", what, value,
                     SG_STR_ARG(&ls->addr.name));
    }
}

/* The options accepted sockets inherit from the listener (rcvbuf=,
 * sndbuf=, so_keepalive=): set on every socket of the configuration,
 * those kept across a reload too, as the configuration says now. */
static void
sg_configure_listening(sg_cycle_t *cycle, sg_listening_t *ls)
{
    if (ls->rcvbuf) {
        sg_listen_option(cycle, ls, SOL_SOCKET, SO_RCVBUF, ls->rcvbuf,
                         "SO_RCVBUF");
    }
    if (ls->sndbuf) {
        sg_listen_option(cycle, ls, SOL_SOCKET, SO_SNDBUF, ls->sndbuf,
                         "SO_SNDBUF");
    }
    /* Where the client speaks first (a TLS ClientHello, a PROXY
     * header), the kernel hands the connection over with its first
     * bytes: one wake-up and one read that finds nothing fewer per
     * session.  A client silent for a second is handed over anyway
     * (the next SYN-ACK's ACK), to meet the handshake's timeout. */
    if (ls->deferred || ls->inherited) {
        sg_listen_option(cycle, ls, IPPROTO_TCP, TCP_DEFER_ACCEPT,
                         ls->deferred ? 1 : 0, "TCP_DEFER_ACCEPT");
    }
    if (ls->keepalive == SG_KEEPALIVE_UNSET && !ls->inherited) {
        return;
    }
    sg_listen_option(cycle, ls, SOL_SOCKET, SO_KEEPALIVE,
                     ls->keepalive == SG_KEEPALIVE_ON, "SO_KEEPALIVE");
    if (ls->keepidle) {
        sg_listen_option(cycle, ls, IPPROTO_TCP, TCP_KEEPIDLE, ls->keepidle,
                         "TCP_KEEPIDLE");
    }
    if (ls->keepintvl) {
        sg_listen_option(cycle, ls, IPPROTO_TCP, TCP_KEEPINTVL,
                         ls->keepintvl, "TCP_KEEPINTVL");
    }
    if (ls->keepcnt) {
        sg_listen_option(cycle, ls, IPPROTO_TCP, TCP_KEEPCNT, ls->keepcnt,
                         "TCP_KEEPCNT");
    }
}

int
sg_open_listening_sockets(sg_cycle_t *cycle)
{
    sg_listening_t  *ls = cycle->listening.elts;
    size_t           i;

    for (i = 0; i < cycle->listening.nelts; i++) {
        sg_inherit(cycle, &ls[i]);
    }
    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].fd == -1 && sg_open_one(cycle, &ls[i]) != SG_OK) {
            return SG_ERROR;
        }
        sg_configure_listening(cycle, &ls[i]);
    }
    return SG_OK;
}

/* Close the sockets this cycle owns; those a newer cycle took over were
 * set to -1 when it was committed. */
void
sg_close_listening_sockets(sg_cycle_t *cycle)
{
    sg_listening_t  *ls = cycle->listening.elts;
    size_t           i;

    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].fd != -1) {
            close(ls[i].fd);
        }
        ls[i].fd = -1;
    }
}

static void
sg_accept_resume(sg_event_t *ev)
{
    (void) ev;
    if (!sg_exiting) {
        (void) sg_enable_accept(sg_cycle);
    }
}

static sg_event_t  sg_accept_timer = { .handler = sg_accept_resume };

static void
sg_accept_pause(sg_listening_t *ls, int err)
{
    sg_log_error(SG_LOG_CRIT, sg_cycle->log, err,
                 "accept4() on %.*s failed, pausing accepts for %d ms; "
                 "check worker_rlimit_nofile and worker_connections",
                 SG_STR_ARG(&ls->addr.name), SG_ACCEPT_PAUSE_MS);
    sg_disable_accept(sg_cycle);
    sg_accept_timer.log = sg_cycle->log;
    sg_event_add_timer(&sg_accept_timer, SG_ACCEPT_PAUSE_MS);
}

static bool
sg_listening_wildcard(const sg_listening_t *ls)
{
    const struct sockaddr_in   *sin;
    const struct sockaddr_in6  *sin6;

    if (ls->addr.sa.ss_family == AF_INET) {
        sin = (const struct sockaddr_in *) &ls->addr.sa;
        return sin->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    if (ls->addr.sa.ss_family == AF_INET6) {
        sin6 = (const struct sockaddr_in6 *) &ls->addr.sa;
        return IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr);
    }
    return true;
}

/* An IPv4 client of a "listen [::]:587 ipv6only=off" socket arrives as
 * ::ffff:a.b.c.d: it is an IPv4 client, in logs, XCLIENT ADDR,
 * Client-IP, set_real_ip_from and every limit by address. */
static void
sg_unmap_v4(struct sockaddr_storage *sa, socklen_t *len)
{
    struct sockaddr_in6  sin6;
    struct sockaddr_in  *sin = (struct sockaddr_in *) sa;

    if (sa->ss_family != AF_INET6
        || !IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *) sa)->sin6_addr))
    {
        return;
    }
    memcpy(&sin6, sa, sizeof(sin6));
    memset(sa, 0, sizeof(*sa));
    sin->sin_family = AF_INET;
    sin->sin_port = sin6.sin6_port;
    memcpy(&sin->sin_addr, sin6.sin6_addr.s6_addr + 12, 4);
    *len = sizeof(struct sockaddr_in);
}

static void
sg_accept_one(sg_listening_t *ls, int fd, struct sockaddr_storage *sa,
    socklen_t len)
{
    sg_connection_t  *c = NULL;
    sg_pool_t        *pool;
    sg_log_t         *log;
    u_char            text[SG_INET_ADDRSTRLEN + 1];
    size_t            n;

    pool = sg_pool_create(ls->pool_size, sg_cycle->log);
    if (pool == NULL) {
        close(fd);
        return;
    }
    log = sg_palloc(pool, sizeof(sg_log_t));
    if (log == NULL) {
        goto fail;
    }
    *log = *sg_cycle->log;
    c = sg_get_connection(fd, log);
    if (c == NULL) {
        goto fail;
    }
    c->pool = pool;
    pool->log = log;
    c->listening = ls;
    c->tcp_nodelay = ls->nodelay;
    if (!ls->ipv6only) {
        sg_unmap_v4(sa, &len);
    }
    memcpy(&c->sockaddr, sa, len);
    c->socklen = len;
    /* The local address is the listener's unless it listens on a
     * wildcard: ask the kernel only then. */
    c->local_sockaddr = ls->addr.sa;
    c->local_socklen = ls->addr.socklen;
    if (sg_listening_wildcard(ls)) {
        c->local_socklen = sizeof(c->local_sockaddr);
        if (getsockname(fd, (struct sockaddr *) &c->local_sockaddr,
                        &c->local_socklen) == -1)
        {
            c->local_sockaddr = ls->addr.sa;
            c->local_socklen = ls->addr.socklen;
        } else if (!ls->ipv6only) {
            sg_unmap_v4(&c->local_sockaddr, &c->local_socklen);
        }
    }
    /* debug_connection: this client's session logs at debug level
     * whatever error_log says.  The address is the socket's, before any
     * PROXY header, as in nginx. */
    if (sg_core_debug_connection(sg_core_conf(sg_cycle),
                                 (struct sockaddr *) sa))
    {
        c->log_debug = 1;
        log->level = SG_LOG_DEBUG;
        log->all = true;
    }
    n = sg_sock_ntop((struct sockaddr *) sa, text, sizeof(text), false);
    c->addr_text.data = sg_pnalloc(pool, n);
    if (c->addr_text.data == NULL) {
        goto fail_conn;
    }
    memcpy(c->addr_text.data, text, n);
    c->addr_text.len = n;
    c->number = sg_next_session_number();
    log->session = c->number;
    c->write->ready = 1;
    if (sg_event_add_conn(c) != SG_OK) {
        goto fail_conn;
    }
    ls->handler(c);
    return;

fail_conn:
    sg_close_connection(c);
    sg_pool_destroy(pool);
    return;

fail:
    close(fd);
    sg_pool_destroy(pool);
}

static void
sg_event_accept(sg_event_t *ev)
{
    sg_connection_t         *lc = ev->data;
    sg_listening_t          *ls = lc->listening;
    struct sockaddr_storage  sa;
    socklen_t                len;
    int                      fd;
    bool                     more;

    /* Without multi_accept, one connection per readiness event, as in
     * nginx: the listener is level-triggered, so epoll reports it again
     * at once while more are waiting, and an idle server makes no
     * accept4() call that can only fail with EAGAIN.  With it, every
     * connection waiting is taken now, until EAGAIN. */
    more = sg_core_conf(sg_cycle)->multi_accept;
    do {
        len = sizeof(sa);
        fd = accept4(lc->fd, (struct sockaddr *) &sa, &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS
                || errno == ENOMEM)
            {
                sg_accept_pause(ls, errno);
                return;
            }
            sg_log_error(SG_LOG_ERR, sg_cycle->log, errno,
                         "accept4() on %.*s failed",
                         SG_STR_ARG(&ls->addr.name));
            return;
        }
        if (sg_exiting) {
            close(fd);
            return;
        }
        sg_accept_one(ls, fd, &sa, len);
    } while (more && ls->connection == lc);
}

int
sg_enable_accept(sg_cycle_t *cycle)
{
    sg_listening_t   *ls = cycle->listening.elts;
    sg_connection_t  *c;
    size_t            i;
    int               on = 1, off = 0;

    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].fd == -1 || ls[i].connection != NULL) {
            continue;
        }
        if (ls[i].worker != -1 && ls[i].worker != sg_worker) {
            continue;
        }
        /* Accepted sockets inherit TCP_NODELAY from the listener: one
         * setsockopt() here instead of one per connection.  (An old
         * cycle's socket may not have it yet.) */
        ls[i].nodelay = setsockopt(ls[i].fd, IPPROTO_TCP, TCP_NODELAY, &on,
                                   sizeof(on)) == 0;
        /* They inherit delayed ACKs too (TCP_QUICKACK off): the
         * client's first command is acknowledged by its reply, one
         * segment instead of a pure ACK and then the reply.  Linux
         * delays ACKs from the first exchange on anyway. */
        (void) setsockopt(ls[i].fd, IPPROTO_TCP, TCP_QUICKACK, &off,
                          sizeof(off));
        c = sg_get_connection(ls[i].fd, cycle->log);
        if (c == NULL) {
            return SG_ERROR;
        }
        c->is_listening = 1;
        c->listening = &ls[i];
        c->read->handler = sg_event_accept;
        c->read->accept = 1;
        ls[i].connection = c;
        if (sg_event_add_listening(&ls[i]) != SG_OK) {
            ls[i].connection = NULL;
            sg_free_connection(c);
            return SG_ERROR;
        }
    }
    return SG_OK;
}

/* Stop accepting: remove the listeners from this worker's epoll.  A
 * draining worker also closes its copies, so that a port the new
 * configuration dropped is really closed once the master closes it. */
void
sg_disable_accept(sg_cycle_t *cycle)
{
    sg_listening_t  *ls = cycle->listening.elts;
    size_t           i;

    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].connection == NULL) {
            continue;
        }
        (void) sg_event_del_listening(&ls[i]);
        sg_free_connection(ls[i].connection);
        ls[i].connection = NULL;
        if (sg_exiting) {
            close(ls[i].fd);
            ls[i].fd = -1;
        }
    }
}
