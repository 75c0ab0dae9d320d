/*
 * sg_connection.c: the worker's connection array, plain socket I/O,
 * accepting, connecting, and the listening sockets the master opens
 * (see sg_connection.h).
 */
#include "sg_core.h"
#include <sys/mman.h>
#include <netinet/tcp.h>
#include <sys/stat.h>

static sg_connection_t  *sg_free_connections;
static size_t            sg_free_connection_n;
static volatile uint64_t *sg_session_counter;

/* The session counter lives in a page shared by the master and every
 * worker it ever forks, so session numbers never repeat while the master
 * runs, across reloads included. */
void
sg_session_counter_init(void)
{
    void  *p;

    p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
             -1, 0);
    if (p == MAP_FAILED) {
        static uint64_t  local;

        sg_session_counter = &local;
        return;
    }
    sg_session_counter = p;
}

uint64_t
sg_next_session_number(void)
{
    return __atomic_add_fetch(sg_session_counter, 1, __ATOMIC_RELAXED);
}

int
sg_connections_init(sg_cycle_t *cycle)
{
    size_t  i, n = cycle->connection_n;

    cycle->connections = sg_calloc(sizeof(sg_connection_t) * n, cycle->log);
    cycle->read_events = sg_calloc(sizeof(sg_event_t) * n, cycle->log);
    cycle->write_events = sg_calloc(sizeof(sg_event_t) * n, cycle->log);
    if (cycle->connections == NULL || cycle->read_events == NULL
        || cycle->write_events == NULL)
    {
        return SG_ERROR;
    }
    sg_free_connections = NULL;
    for (i = n; i-- > 0; ) {
        cycle->connections[i].fd = -1;
        cycle->connections[i].read = &cycle->read_events[i];
        cycle->connections[i].write = &cycle->write_events[i];
        cycle->write_events[i].write = 1;
        cycle->connections[i].next_free = sg_free_connections;
        sg_free_connections = &cycle->connections[i];
    }
    sg_free_connection_n = n;
    return SG_OK;
}

size_t
sg_connections_in_use(void)
{
    return sg_cycle->connection_n - sg_free_connection_n
           - sg_thread_pool_internal_connections();
}

sg_connection_t *
sg_get_connection(int fd, sg_log_t *log)
{
    sg_connection_t  *c;
    sg_event_t       *rev, *wev;
    unsigned          instance;

    c = sg_free_connections;
    if (c == NULL) {
        sg_log_error(SG_LOG_ERR, log, 0,
                     "%zu worker_connections are not enough, "
                     "raise \"worker_connections\"", sg_cycle->connection_n);
        return NULL;
    }
    sg_free_connections = c->next_free;
    sg_free_connection_n--;

    rev = c->read;
    wev = c->write;
    instance = c->instance;
    memset(c, 0, sizeof(*c));
    memset(rev, 0, sizeof(*rev));
    memset(wev, 0, sizeof(*wev));
    c->read = rev;
    c->write = wev;
    c->instance = !instance;
    c->fd = fd;
    c->log = log;
    c->recv = sg_unix_recv;
    c->send = sg_unix_send;
    rev->data = c;
    wev->data = c;
    wev->write = 1;
    rev->log = log;
    wev->log = log;
    return c;
}

void
sg_free_connection(sg_connection_t *c)
{
    c->fd = -1;
    c->next_free = sg_free_connections;
    sg_free_connections = c;
    sg_free_connection_n++;
}

void
sg_close_connection(sg_connection_t *c)
{
    int  fd = c->fd;

    if (fd == -1) {
        return;
    }
    sg_event_del_timer(c->read);
    sg_event_del_timer(c->write);
    sg_event_unpost(c->read);
    sg_event_unpost(c->write);
    /* close(2) removes the fd from epoll since nothing else holds it.
     * The instance bit is left alone: sg_get_connection() flips it, and
     * a second flip here would undo that for a slot closed and taken
     * again while events for its old use are still being dispatched. */
    sg_free_connection(c);
    if (close(fd) == -1) {
        sg_log_error(SG_LOG_ALERT, c->log, errno, "close(%d) failed", fd);
    }
}

ssize_t
sg_unix_recv(sg_connection_t *c, u_char *buf, size_t size)
{
    ssize_t  n;

    for ( ;; ) {
        n = recv(c->fd, buf, size, 0);
        if (n > 0) {
            c->received += (uint64_t) n;
            return n;
        }
        if (n == 0) {
            c->read->ready = 0;
            c->read->eof = 1;
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->read->ready = 0;
            return SG_AGAIN;
        }
        c->read->ready = 0;
        c->read->error = 1;
        c->error = 1;
        sg_log_error(SG_LOG_INFO, c->log, errno, "recv() failed");
        return SG_ERROR;
    }
}

ssize_t
sg_unix_send(sg_connection_t *c, const u_char *buf, size_t size)
{
    ssize_t  n;
    int      flags;

    /* MSG_MORE holds the bytes back for the close to push: they and the
     * FIN go in one segment.  Only after QUIT: a close with unread
     * bytes resets the connection, and what MSG_MORE held is lost. */
    flags = c->fin_follows ? MSG_NOSIGNAL | MSG_MORE : MSG_NOSIGNAL;
    for ( ;; ) {
        n = send(c->fd, buf, size, flags);
        if (n >= 0) {
            c->sent += (uint64_t) n;
            if ((size_t) n < size) {
                c->write->ready = 0;
            }
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->write->ready = 0;
            return SG_AGAIN;
        }
        c->write->error = 1;
        c->error = 1;
        sg_log_error(SG_LOG_INFO, c->log, errno, "send() failed");
        return SG_ERROR;
    }
}

int
sg_tcp_nodelay(sg_connection_t *c)
{
    int  on = 1;

    if (c->tcp_nodelay) {
        return SG_OK;
    }
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) == -1) {
        if (errno != EOPNOTSUPP) {
            sg_log_error(SG_LOG_INFO, c->log, errno,
                         "setsockopt(TCP_NODELAY) failed");
        }
        return SG_ERROR;
    }
    c->tcp_nodelay = 1;
    return SG_OK;
}

int
sg_connect(const sg_addr_t *addr, sg_log_t *log, sg_connection_t **out)
{
    sg_connection_t  *c;
    int               fd, rc;

    fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd == -1) {
        sg_log_error(SG_LOG_ERR, log, errno, "socket() for %.*s failed",
                     SG_STR_ARG(&addr->name));
        return SG_ERROR;
    }
    c = sg_get_connection(fd, log);
    if (c == NULL) {
        close(fd);
        return SG_ERROR;
    }
    memcpy(&c->sockaddr, &addr->sa, addr->socklen);
    c->socklen = addr->socklen;
    c->addr_text = addr->name;

    if (sg_event_add_conn(c) != SG_OK) {
        sg_close_connection(c);
        return SG_ERROR;
    }
    rc = connect(fd, (const struct sockaddr *) &addr->sa, addr->socklen);
    if (rc == -1 && errno != EINPROGRESS) {
        sg_log_error(SG_LOG_ERR, log, errno, "connect() to %.*s failed",
                     SG_STR_ARG(&addr->name));
        sg_close_connection(c);
        return SG_ERROR;
    }
    *out = c;
    if (rc == 0) {
        c->write->ready = 1;
        return SG_OK;
    }
    c->write->ready = 0;
    return SG_AGAIN;
}

int
sg_send_rest(int fd, const u_char *buf, size_t len, size_t *pos)
{
    ssize_t  n;

    while (*pos < len) {
        n = send(fd, buf + *pos, len - *pos, MSG_NOSIGNAL);
        if (n > 0) {
            *pos += (size_t) n;
        } else if (n == -1 && errno == EAGAIN) {
            return SG_AGAIN;
        } else if (n == -1 && errno != EINTR) {
            return SG_ERROR;
        }
    }
    return SG_OK;
}

/* A connect in progress reports its end by an event: EPOLLOUT alone
 * once connected (TCP is writable only from then on), EPOLLERR (and
 * EPOLLHUP) when it failed.  Only then is there an error to ask for. */
int
sg_connect_result(sg_connection_t *c, int *err)
{
    int        e = 0;
    socklen_t  len = sizeof(e);

    if (!c->epoll_err) {
        *err = 0;
        return SG_OK;
    }
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &len) == -1) {
        e = errno;
    }
    *err = e;
    return e ? SG_ERROR : SG_OK;
}
