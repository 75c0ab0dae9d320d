/*
 * sg_connection.h: non-blocking connections and listening sockets.
 *
 * Every socket a worker touches is an sg_connection_t taken from a fixed
 * array sized by worker_connections, so the worker's memory for
 * connection state is bounded and known up front.  Reads and writes go
 * through c->recv / c->send so that TLS can replace plain I/O without the
 * callers knowing.
 */
#ifndef SG_CONNECTION_H
#define SG_CONNECTION_H

typedef ssize_t (*sg_recv_pt)(sg_connection_t *c, u_char *buf, size_t size);
typedef ssize_t (*sg_send_pt)(sg_connection_t *c, const u_char *buf,
    size_t size);
typedef void (*sg_connection_handler_pt)(sg_connection_t *c);

#define SG_KEEPALIVE_UNSET  0
#define SG_KEEPALIVE_ON     1
#define SG_KEEPALIVE_OFF    2

struct sg_listening_s {
    int                       fd;
    sg_addr_t                 addr;
    int                       backlog;
    int                       worker;      /* reuseport clone: worker no. */
    size_t                    pool_size;
    sg_connection_handler_pt  handler;     /* set by the owning module */
    void                     *servers;     /* the owning module's data */
    sg_connection_t          *connection;

    int                       rcvbuf;      /* SO_RCVBUF, 0: the
                                              system's */
    int                       sndbuf;
    int                       keepalive;   /* SG_KEEPALIVE_* */
    int                       keepidle;    /* seconds, 0: the system's */
    int                       keepintvl;
    int                       keepcnt;

    unsigned                  reuseport:1;
    unsigned                  ipv6only:1;  /* IPv6: IPv6 only (the
                                              default) */
    unsigned                  open:1;
    unsigned                  inherited:1; /* taken over from old cycle */
    unsigned                  nodelay:1;   /* TCP_NODELAY set: accepted
                                              sockets have it from here */
    unsigned                  deferred:1;  /* the client speaks first:
                                              TCP_DEFER_ACCEPT */
};

struct sg_connection_s {
    void               *data;
    sg_event_t         *read;
    sg_event_t         *write;
    int                 fd;

    sg_recv_pt          recv;
    sg_send_pt          send;

    sg_listening_t     *listening;
    sg_pool_t          *pool;
    sg_log_t           *log;

    struct sockaddr_storage  sockaddr;        /* peer */
    socklen_t           socklen;
    sg_str_t            addr_text;            /* peer address, no port */
    struct sockaddr_storage  local_sockaddr;
    socklen_t           local_socklen;

    sg_proxy_protocol_t *proxy_protocol;      /* its PROXY header, if
                                                 one with addresses came */

    uint64_t            number;               /* session id */
    uint64_t            sent;
    uint64_t            received;

    sg_connection_t    *next_free;
    void               *ssl;                  /* SSL *, owned by ssl */
    void               *tls_rec;              /* sg_ssl_rec_t *, owned by
                                                 ssl: TLS once OpenSSL's
                                                 state is released */

    unsigned            instance:1;           /* detects stale events */
    unsigned            error:1;
    unsigned            close:1;
    unsigned            tcp_nodelay:1;
    unsigned            is_listening:1;
    unsigned            idle:1;               /* kept for reuse: closed
                                                 (close set, read handler
                                                 run) when draining */
    unsigned            last_write:1;         /* what the next send
                                                 empties is the last:
                                                 TLS closes with it */
    unsigned            fin_follows:1;        /* the peer said QUIT
                                                 and the close follows
                                                 the last send: the FIN
                                                 goes with its bytes */
    unsigned            epoll_err:1;          /* epoll said EPOLLERR or
                                                 EPOLLHUP */
    unsigned            log_debug:1;          /* debug_connection names
                                                 the client: its session
                                                 logs at debug level */
};

/* TLS is on: OpenSSL's, or smtpgate's record layer after it. */
#define sg_connection_tls(c)  ((c)->ssl != NULL || (c)->tls_rec != NULL)

/* The next session number, unique across the workers of one master. */
uint64_t sg_next_session_number(void);
void sg_session_counter_init(void);

int sg_connections_init(sg_cycle_t *cycle);
sg_connection_t *sg_get_connection(int fd, sg_log_t *log);
/* Closes the socket, drops timers and posted events, and returns the
 * connection to the free list.  Does not touch c->pool. */
void sg_close_connection(sg_connection_t *c);
void sg_free_connection(sg_connection_t *c);
size_t sg_connections_in_use(void);

ssize_t sg_unix_recv(sg_connection_t *c, u_char *buf, size_t size);
ssize_t sg_unix_send(sg_connection_t *c, const u_char *buf, size_t size);

int sg_tcp_nodelay(sg_connection_t *c);

/* After QUIT (the client's, or ours to a backend): what the sends empty
 * next is the last, and the close follows it at once.  TLS puts
 * close_notify in the same write, TCP the FIN in the same segment. */
static inline void
sg_connection_last_words(sg_connection_t *c)
{
    c->last_write = 1;
    c->fin_follows = 1;
}

/* Listening sockets: open what the cycle needs (reusing the old cycle's
 * sockets where the address matches) and close what it no longer does. */
int sg_open_listening_sockets(sg_cycle_t *cycle);
void sg_close_listening_sockets(sg_cycle_t *cycle);
sg_listening_t *sg_create_listening(sg_conf_t *cf, const sg_addr_t *addr);
int sg_clone_listening(sg_cycle_t *cycle, int workers);

/* Worker side: add this worker's listeners to epoll / remove them. */
int sg_enable_accept(sg_cycle_t *cycle);
void sg_disable_accept(sg_cycle_t *cycle);

/*
 * Start a non-blocking connect to addr.  Returns SG_OK (connected at
 * once), SG_AGAIN (in progress: the write event fires when done) or
 * SG_ERROR (logged).  *out is the new connection in the first two cases.
 */
int sg_connect(const sg_addr_t *addr, sg_log_t *log, sg_connection_t **out);
/* After the write event of a pending connect: SG_OK or SG_ERROR (logged,
 * with errno). */
int sg_connect_result(sg_connection_t *c, int *err);
/* Send buf[*pos, len) on fd, moving *pos on: SG_OK when all is out,
 * SG_AGAIN when the socket is full, SG_ERROR (errno) on an error. */
int sg_send_rest(int fd, const u_char *buf, size_t len, size_t *pos);

#endif /* SG_CONNECTION_H */
