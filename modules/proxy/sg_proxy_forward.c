/*
 * sg_proxy_forward.c: the spool's forwarder: store-and-forward for an
 * upstream group whose servers are all down.
 *
 * A group lists a forwarding spool ("server spool:DIR backup forward");
 * sessions that find every other server down are taken by the spool,
 * which answers 250 once the message is on disk.  This file sends those
 * messages on: a helper process of its own (sg_helper_t), since it
 * reads the queue with plain blocking file calls, which a worker serving
 * clients must never make.  Every spool_forward_interval it lists
 * DIR/new, takes the files that are due (a file's mtime is the time of
 * its next try), oldest first, and delivers up to
 * spool_forward_connections at once to the group's other servers,
 * through the same client engine the proxy uses (sg_smtp_client), with
 * the mail block's proxy settings and the XCLIENT attributes the
 * session left in the file.  Then, one message at a time, it speaks
 * MAIL, RCPT for each recipient, DATA and the dot-stuffed text itself.
 *
 * What becomes of each recipient follows the replies: 2xx delivered;
 * 5xx failed, reported to the sender with a delivery status
 * notification queued in the same spool; 4xx, or a connection lost
 * before the end of the data, deferred: the file stays (rewritten to
 * list only those recipients when some others are done), its next try
 * is put off by its age, between the two times of spool_forward_retry.
 * A message still deferred after spool_forward_lifetime fails.  A
 * message whose sender is <> (a notification itself) is never reported
 * on: what fails of it is moved to DIR/cur for the operator.  When no
 * server of the group can be reached, the queue is dead until the next
 * interval: the message tried is not put off (the backend's outage is
 * not its fault), and the next run begins with one message, not many.
 *
 * Two forwarders may meet during a reload (the old one finishing its
 * deliveries, the new one starting): each file is flock()ed while it is
 * delivered, and a file found locked, or gone, is left to the other.
 * A crash between a backend's 250 and the file's removal sends the
 * message again later: delivery is at least once, as with any MTA.
 */
#include "sg_smtp.h"
#include "sg_smtp_client.h"
#include "sg_smtp_parse.h"
#include "sg_proxy_int.h"
#if (SG_HAVE_UPSTREAM_MODULE && SG_HAVE_SPOOL_MODULE)
#include "sg_upstream.h"
#include "sg_spool.h"
#include "sg_spool_queue.h"
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/xattr.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define SG_FWD_HEAD_FIRST  (128 * 1024)    /* read first */
#define SG_FWD_HEAD_MAX    (1024 * 1024)   /* the longest envelope */
#define SG_FWD_RCPTS_MAX   10000
#define SG_FWD_SCAN_MAX    10000           /* files taken per listing */
#define SG_FWD_OUT         65536
#define SG_FWD_IN          8192
#define SG_FWD_REPLY_LOG   200

typedef struct sg_fwd_s       sg_fwd_t;
typedef struct sg_fwd_idle_s  sg_fwd_idle_t;

/* A backend connection kept between two messages of a burst: its last
 * transaction ended with the reply to the final dot, so the server
 * waits for the next MAIL (or XCLIENT). */
struct sg_fwd_idle_s {
    sg_fwd_idle_t        *next;
    void                 *q;
    sg_connection_t      *c;
    sg_upstream_peer_t   *peer;
    sg_proxy_conf_t      *pcf;          /* the settings it was made with */
    sg_smtp_ehlo_t        ehlo;
    u_char                xclient_attrs[256];
    size_t                xclient_len;
    unsigned              messages;     /* sent over it so far */
};

/* One forwarding spool and its group. */
typedef struct {
    sg_spool_t       *sp;
    sg_upstream_t    *u;
    char            **due;          /* names, oldest first, malloc'd */
    size_t            ndue;
    size_t            next;
    unsigned          active;
    sg_fwd_t         *deliveries;
    sg_event_t        kick;         /* posted: start what may start */
    sg_spool_stats_t *stats;
    sg_fwd_idle_t    *idle;         /* kept connections, newest first */
    unsigned          nidle;
    unsigned          dead:1;       /* no server reachable: until the
                                       next interval */
    unsigned          probing:1;    /* one delivery until one works */
} sg_fwd_queue_t;

typedef enum {
    SG_FWD_HANDSHAKE = 0,
    SG_FWD_MAIL,
    SG_FWD_RCPT,
    SG_FWD_DATA,
    SG_FWD_BODY,
    SG_FWD_DOT,
    SG_FWD_END
} sg_fwd_state_e;

/* What became of a recipient. */
#define SG_FWD_PENDING   0
#define SG_FWD_DONE      1
#define SG_FWD_FAILED    2
#define SG_FWD_DEFERRED  3
#define SG_FWD_EXPIRED   5             /* deferred past the lifetime */

struct sg_fwd_s {
    sg_fwd_queue_t       *q;
    sg_fwd_t             *next;
    sg_fwd_t             *prev;
    sg_pool_t            *pool;
    sg_log_t              log;
    char                  path[PATH_MAX];
    char                  id[128];      /* the queue id */
    int                   fd;
    off_t                 size;
    time_t                arrival;
    u_char               *head;         /* malloc'd: the file's start */
    size_t                nhead;
    sg_spool_envelope_t   env;
    uint8_t              *result;       /* SG_FWD_* per recipient */
    sg_str_t             *reply;        /* the last reply for each */
    sg_str_t              helo;         /* decoded, for XCLIENT's EHLO */
    sg_proxy_conf_t      *pcf;          /* the proxy settings of the
                                           server that took it */
    sg_str_t              ehlo_name;    /* and its name */
    unsigned              tries;        /* before this one (the file's
                                           SG_SPOOL_DEFERRED_XATTR) */

    sg_upstream_pick_t    pick;
    sg_smtp_client_t      cl;
    sg_connection_t      *c;
    const char           *peer;         /* for the log */
    sg_fwd_state_e        state;
    size_t                rcpt;         /* the RCPT being answered */
    unsigned              accepted;     /* RCPTs answered 2xx */
    off_t                 off;          /* in the file, what is sent */
    unsigned              bol:1;        /* the text is at a line start */
    unsigned              cr:1;         /* its last octet was CR */
    unsigned              dead:1;       /* no server could be reached */
    unsigned              expired:1;    /* spool_forward_lifetime passed */
    unsigned              pipelined:1;  /* RCPTs and DATA sent with MAIL */
    unsigned              reused:1;     /* over a kept connection */
    unsigned              no_reuse:1;   /* a kept one failed: connect */
    unsigned              conn_messages; /* sent before over f->c */
    u_char                in[SG_FWD_IN];
    size_t                nin;
    sg_buf_t              out;
    sg_str_t              last;         /* the reply that ended it */
    char                  why[320];     /* or why, in our words */
};

static struct {
    sg_proxy_conf_t      *pcf;
    sg_array_t            queues;       /* sg_fwd_queue_t */
    sg_event_t            timer;
    sg_cycle_t           *cycle;
} sg_fwd;

static char  sg_fwd_path_buf[PATH_MAX];

static void sg_fwd_run(sg_fwd_queue_t *q);
static void sg_fwd_server(sg_fwd_t *f, sg_pool_t *pool);
static unsigned sg_fwd_tries(int fd);
static sg_fwd_t *sg_fwd_open(sg_fwd_queue_t *q, const char *name);
static void sg_fwd_line(sg_fwd_t *f, const char *verb, const sg_str_t *addr);
static int sg_fwd_keep(sg_fwd_t *f);
static void sg_fwd_idle_close_all(sg_fwd_queue_t *q);
static void sg_fwd_attempt(sg_fwd_t *f);
static void sg_fwd_finish(sg_fwd_t *f);
static void sg_fwd_handler(sg_event_t *ev);

/* ---- configuration (in the master) ------------------------------- */

static int sg_fwd_init_process(sg_cycle_t *cycle, void *data);
static void sg_fwd_exit_process(sg_cycle_t *cycle, void *data);
static void sg_fwd_flush(sg_cycle_t *cycle, void *data);

char *
sg_proxy_forward_init(sg_conf_t *cf, sg_proxy_conf_t *main)
{
    sg_proxy_conf_t      *fcf = NULL;
    sg_upstream_t       **u;
    sg_upstream_peer_t   *p;
    sg_helper_t           h;
    const sg_str_t       *file;
    size_t                n, i, j, others, line;

    u = sg_upstream_groups_of(cf->cycle, &n);
    for (i = 0; i < n; i++) {
        p = u[i]->peers.elts;
        others = 0;
        for (j = 0; j < u[i]->peers.nelts; j++) {
            others += p[j].spool == NULL;
        }
        for (j = 0; j < u[i]->peers.nelts; j++) {
            if (!p[j].forward) {
                continue;
            }
            if (others == 0) {
                return sg_conf_error_at(cf, &u[i]->file, u[i]->line,
                    "upstream \"%.*s\" forwards its spool \"%.*s\", but "
                    "has no other server to forward to",
                    SG_STR_ARG(&u[i]->name), SG_STR_ARG(&p[j].addr.name));
            }
            if (fcf == NULL) {
                /* The mail block's settings, merged as a server's would
                 * be. */
                fcf = sg_proxy_create_conf(cf);
                if (fcf == NULL
                    || sg_proxy_merge_values(cf, main, fcf) != SG_CONF_OK)
                {
                    return SG_CONF_ERROR;
                }
            }
            if (fcf->smtp_auth == 1) {
                file = sg_spool_forward_file(p[j].spool, &line);
                return sg_conf_error_at(cf, file, line,
                    "\"proxy_smtp_auth on\" in the mail block cannot go "
                    "with a forwarding spool (\"%.*s\" of upstream "
                    "\"%.*s\"): the forwarder has no credentials to log "
                    "in with (it never stores them); let the backends "
                    "trust smtpgate through XCLIENT instead",
                    SG_STR_ARG(&p[j].addr.name), SG_STR_ARG(&u[i]->name));
            }
        }
    }
    if (fcf == NULL) {
        return SG_CONF_OK;
    }
    /* The first server's name: the mail block's, unless that server
     * has its own. */
    fcf->fwd_host = sg_smtp_conf_current(cf)->server_name;
    h.name = "spool forwarder";
    h.init = sg_fwd_init_process;
    h.exit = sg_fwd_exit_process;
    h.flush = sg_fwd_flush;
    h.data = fcf;
    if (sg_cycle_add_helper(cf->cycle, &h) != SG_OK) {
        return SG_CONF_ERROR;
    }
    return SG_CONF_OK;
}

/* ---- the queue ---------------------------------------------------- */

static void
sg_fwd_free_due(sg_fwd_queue_t *q)
{
    size_t  i;

    for (i = q->next; i < q->ndue; i++) {
        free(q->due[i]);
    }
    free(q->due);
    q->due = NULL;
    q->ndue = q->next = 0;
}

typedef struct {
    char    *name;
    time_t   when;
} sg_fwd_entry_t;

static int
sg_fwd_entry_cmp(const void *a, const void *b)
{
    const sg_fwd_entry_t  *x = a, *y = b;

    if (x->when != y->when) {
        return x->when < y->when ? -1 : 1;
    }
    return strcmp(x->name, y->name);
}

static bool
sg_fwd_in_flight(sg_fwd_queue_t *q, const char *name)
{
    sg_fwd_t  *f;
    size_t     n = strlen(name);

    for (f = q->deliveries; f; f = f->next) {
        const char  *b = strrchr(f->path, '/');

        if (b && strncmp(b + 1, name, n) == 0 && b[1 + n] == '\0') {
            return true;
        }
    }
    return false;
}

/* List DIR/new: the files due now (all of them after -s flush), oldest
 * first. */
/* Messages held (moved to DIR/hold by the status API), for /metrics. */
static uint64_t
sg_fwd_count_held(const sg_str_t *dir)
{
    struct dirent  *de;
    uint64_t        n = 0;
    char            path[PATH_MAX];
    DIR            *d;

    (void) snprintf(path, sizeof(path), "%s/hold", (char *) dir->data);
    d = opendir(path);
    if (d == NULL) {
        return 0;
    }
    while ((de = readdir(d)) != NULL) {
        n += de->d_name[0] != '.';
    }
    (void) closedir(d);
    return n;
}

static void
sg_fwd_scan(sg_fwd_queue_t *q, bool all)
{
    const sg_str_t   *dir = sg_spool_dir(q->sp);
    sg_fwd_entry_t   *e = NULL, *ne;
    size_t            n = 0, cap = 0, i;
    char              path[PATH_MAX];
    struct dirent    *de;
    struct stat       st;
    struct statvfs    vfs;
    time_t            now = time(NULL), arrival, oldest = 0;
    uint64_t          total = 0;
    DIR              *d;

    sg_fwd_free_due(q);
    (void) snprintf(path, sizeof(path), "%s/new", (char *) dir->data);
    d = opendir(path);
    if (d == NULL) {
        sg_log_error(SG_LOG_ERR, sg_fwd.cycle->log, errno, "spool "
                     "forwarder: opendir(\"%s\") failed", path);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.'
            || fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0
            || !S_ISREG(st.st_mode))
        {
            continue;
        }
        total++;
        arrival = sg_spool_name_arrival(de->d_name, st.st_mtime);
        if (oldest == 0 || arrival < oldest) {
            oldest = arrival;
        }
        if (n == SG_FWD_SCAN_MAX || (st.st_mtime > now && !all)
            || sg_fwd_in_flight(q, de->d_name))
        {
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            ne = realloc(e, cap * sizeof(*e));
            if (ne == NULL) {
                break;
            }
            e = ne;
        }
        e[n].name = strdup(de->d_name);
        if (e[n].name == NULL) {
            break;
        }
        e[n].when = st.st_mtime;
        n++;
    }
    if (q->stats) {
        __atomic_store_n(&q->stats->queued, total, __ATOMIC_RELAXED);
        __atomic_store_n(&q->stats->oldest, (uint64_t) oldest,
                         __ATOMIC_RELAXED);
        __atomic_store_n(&q->stats->listed, (uint64_t) now,
                         __ATOMIC_RELAXED);
        if (fstatvfs(dirfd(d), &vfs) == 0) {
            __atomic_store_n(&q->stats->free, (uint64_t) vfs.f_bavail
                             * (uint64_t) vfs.f_frsize, __ATOMIC_RELAXED);
        }
        __atomic_store_n(&q->stats->held, sg_fwd_count_held(dir),
                         __ATOMIC_RELAXED);
    }
    (void) closedir(d);
    if (n == 0) {
        free(e);
        return;
    }
    qsort(e, n, sizeof(*e), sg_fwd_entry_cmp);
    q->due = malloc(n * sizeof(char *));
    if (q->due == NULL) {
        for (i = 0; i < n; i++) {
            free(e[i].name);
        }
        free(e);
        return;
    }
    for (i = 0; i < n; i++) {
        q->due[i] = e[i].name;
    }
    q->ndue = n;
    free(e);
}

static void
sg_fwd_timer(sg_event_t *ev)
{
    sg_fwd_queue_t  *q = sg_fwd.queues.elts;
    size_t           i;

    if (sg_exiting) {
        return;
    }
    for (i = 0; i < sg_fwd.queues.nelts; i++) {
        if (q[i].dead) {
            q[i].dead = 0;
            q[i].probing = 1;
        }
        if (q[i].next >= q[i].ndue) {
            sg_fwd_scan(&q[i], false);
        }
        sg_fwd_run(&q[i]);
    }
    sg_event_add_timer(ev, sg_fwd.pcf->fwd_interval);
}

/* "smtpgate -s flush": every queued message is due now, and a group
 * found dead is tried again at once. */
static void
sg_fwd_flush(sg_cycle_t *cycle, void *data)
{
    sg_fwd_queue_t  *q = sg_fwd.queues.elts;
    size_t           i;

    (void) data;
    for (i = 0; i < sg_fwd.queues.nelts; i++) {
        q[i].dead = 0;
        q[i].probing = 0;
        sg_fwd_scan(&q[i], true);
        sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "spool forwarder: flush: "
                     "%zu message%s of \"%.*s\" to try now", q[i].ndue,
                     q[i].ndue == 1 ? "" : "s",
                     SG_STR_ARG(sg_spool_dir(q[i].sp)));
        sg_fwd_run(&q[i]);
    }
}

/* Start deliveries while there is room and something due. */
static void
sg_fwd_run(sg_fwd_queue_t *q)
{
    char      *name;
    sg_fwd_t  *f;

    while (!sg_exiting && !q->dead && q->next < q->ndue
           && q->active < (q->probing ? 1u
                           : (unsigned) sg_fwd.pcf->fwd_connections))
    {
        name = q->due[q->next];
        q->due[q->next++] = NULL;
        f = NULL;
        if (!sg_fwd_in_flight(q, name)) {
            f = sg_fwd_open(q, name);
        }
        free(name);
        if (f) {
            sg_fwd_attempt(f);
        }
    }
    if (q->idle && q->active == 0 && (q->next >= q->ndue || q->dead)) {
        sg_fwd_idle_close_all(q);
    }
}

/* ---- one message -------------------------------------------------- */

/* Add n (which may be negative) to a counter of the spool's stats. */
static void
sg_fwd_count(sg_fwd_queue_t *q, size_t field, int64_t n)
{
    uint64_t  *c;

    if (q->stats == NULL || n == 0) {
        return;
    }
    c = (uint64_t *) ((u_char *) q->stats + field);
    if (n > 0) {
        __atomic_add_fetch(c, (uint64_t) n, __ATOMIC_RELAXED);
    } else if (__atomic_load_n(c, __ATOMIC_RELAXED) >= (uint64_t) -n) {
        __atomic_sub_fetch(c, (uint64_t) -n, __ATOMIC_RELAXED);
    }
}

#define SG_FWD_STAT(field)  offsetof(sg_spool_stats_t, field)

static void
sg_fwd_free(sg_fwd_t *f)
{
    sg_fwd_queue_t  *q = f->q;

    if (f->c) {
        sg_proxy_close_backend(f->c);
        f->c = NULL;
    }
    if (f->cl.c && !f->cl.finished) {
        sg_smtp_client_close(&f->cl);
    }
    sg_buf_give(&f->out);
    if (f->fd != -1) {
        (void) close(f->fd);            /* and its lock */
    }
    free(f->head);
    if (f->prev) {
        f->prev->next = f->next;
    } else {
        q->deliveries = f->next;
    }
    if (f->next) {
        f->next->prev = f->prev;
    }
    q->active--;
    sg_pool_destroy(f->pool);
}

/* Where a file that cannot be delivered or reported goes: DIR/cur,
 * Maildir's "seen" flag on, for the operator to look at. */
static void
sg_fwd_park(sg_fwd_t *f, const char *why)
{
    const sg_str_t  *dir = sg_spool_dir(f->q->sp);
    const char      *base = strrchr(f->path, '/') + 1;
    char             to[PATH_MAX];

    (void) snprintf(to, sizeof(to), "%s/cur/%s:2,S", (char *) dir->data,
                    base);
    if (rename(f->path, to) == -1) {
        sg_log_error(SG_LOG_ERR, &f->log, errno, "spool forwarder: message "
                     "%s: rename() to \"%s\" failed; it stays queued", f->id,
                     to);
        return;
    }
    sg_fwd_count(f->q, SG_FWD_STAT(queued), -1);
    sg_log_error(SG_LOG_ERR, &f->log, 0, "spool forwarder: message %s "
                 "cannot be delivered (%s) nor reported to a sender; moved "
                 "to \"%s\"", f->id, why, to);
}

static void
sg_fwd_xtext_decode(sg_str_t *v)
{
    u_char  *p = v->data, *o = v->data, *end = v->data + v->len;
    int      hi, lo;

    while (p < end) {
        if (*p == '+' && end - p >= 3) {
            hi = sg_hex_digit(p[1]);
            lo = sg_hex_digit(p[2]);
            if (hi >= 0 && lo >= 0) {
                *o++ = (u_char) (hi << 4 | lo);
                p += 3;
                continue;
            }
        }
        *o++ = *p++;
    }
    v->len = (size_t) (o - v->data);
}

/* Room for the recipients: the X-Original-To lines, counted (the
 * parser checks them). */
static size_t
sg_fwd_count_rcpts(const u_char *p, size_t len)
{
    static const char  tag[] = "\nX-Original-To:";
    const u_char      *end = p + len, *hit;
    size_t             n = 1;

    while (n < SG_FWD_RCPTS_MAX
           && (hit = memmem(p, (size_t) (end - p), tag, sizeof(tag) - 1)))
    {
        n++;
        p = hit + 1;
    }
    return n;
}

static sg_fwd_t *
sg_fwd_open(sg_fwd_queue_t *q, const char *name)
{
    const sg_str_t  *dir = sg_spool_dir(q->sp);
    sg_pool_t       *pool;
    sg_fwd_t        *f;
    struct stat      st, here;
    size_t           len, nr;
    ssize_t          n;
    const char      *err = NULL;
    sg_str_t         v;
    int              fd, rc;

    (void) snprintf(sg_fwd_path_buf, sizeof(sg_fwd_path_buf), "%s/new/%s",
                    (char *) dir->data, name);
    fd = open(sg_fwd_path_buf, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1) {
        return NULL;                 /* gone: delivered by the other */
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == -1 || fstat(fd, &st) == -1
        || st.st_nlink == 0)
    {
        (void) close(fd);            /* another forwarder has it */
        return NULL;
    }
    /* Held (moved to hold/) between the open and the lock: not ours. */
    if (stat(sg_fwd_path_buf, &here) == -1 || here.st_ino != st.st_ino
        || here.st_dev != st.st_dev)
    {
        (void) close(fd);
        return NULL;
    }
    pool = sg_pool_create(4096, sg_fwd.cycle->log);
    f = pool ? sg_pcalloc(pool, sizeof(sg_fwd_t)) : NULL;
    if (f == NULL) {
        if (pool) {
            sg_pool_destroy(pool);
        }
        (void) close(fd);
        return NULL;
    }
    f->pool = pool;
    f->q = q;
    f->fd = fd;
    f->size = st.st_size;
    f->tries = sg_fwd_tries(fd);
    f->log = *sg_fwd.cycle->log;
    f->log.session = sg_next_session_number();
    f->log.action = NULL;
    memcpy(f->path, sg_fwd_path_buf, sizeof(f->path));
    (void) sg_spool_name_id(name, f->id, sizeof(f->id));
    f->arrival = sg_spool_name_arrival(name, st.st_mtime);
    f->next = q->deliveries;
    if (f->next) {
        f->next->prev = f;
    }
    q->deliveries = f;
    q->active++;

    /* The envelope and the message's header section are near the
     * start: read a little, and more only for a long envelope. */
    len = (size_t) sg_min((off_t) SG_FWD_HEAD_FIRST, st.st_size);
    for ( ;; ) {
        free(f->head);
        f->head = malloc(len + 1);
        if (f->head == NULL) {
            sg_fwd_free(f);
            return NULL;
        }
        n = pread(fd, f->head, len, 0);
        if (n != (ssize_t) len) {
            sg_log_error(SG_LOG_ERR, &f->log, n < 0 ? errno : 0, "spool "
                         "forwarder: reading \"%s\" failed", f->path);
            sg_fwd_free(f);
            return NULL;
        }
        f->nhead = len;
        nr = sg_fwd_count_rcpts(f->head, len);
        f->env.rcpts = sg_pnalloc(pool, nr * sizeof(sg_str_t));
        if (f->env.rcpts == NULL) {
            sg_fwd_free(f);
            return NULL;
        }
        rc = sg_spool_envelope_parse(f->head, len, (off_t) len == st.st_size,
                                     &f->env, nr, &err);
        if (rc != SG_AGAIN || len == SG_FWD_HEAD_MAX) {
            break;
        }
        len = (size_t) sg_min((off_t) SG_FWD_HEAD_MAX, st.st_size);
    }
    if (rc != SG_OK) {
        sg_fwd_park(f, err ? err : "its envelope is too long");
        sg_fwd_free(f);
        return NULL;
    }
    f->result = sg_pcalloc(pool, f->env.nrcpts);
    f->reply = sg_pcalloc(pool, f->env.nrcpts * sizeof(sg_str_t));
    if (f->result == NULL || f->reply == NULL) {
        sg_fwd_free(f);
        return NULL;
    }
    if (sg_spool_attr_get(&f->env.attrs, "HELO", &v)) {
        f->helo.data = sg_pnalloc(pool, v.len + 1);
        if (f->helo.data) {
            memcpy(f->helo.data, v.data, v.len);
            f->helo.len = v.len;
            sg_fwd_xtext_decode(&f->helo);
        }
    }
    sg_fwd_server(f, pool);
    return f;
}

/* The proxy settings (and name) of the server that took the message,
 * found by its label in the current configuration; the mail block's
 * when the file names none, or a server no longer configured. */
static void
sg_fwd_server(sg_fwd_t *f, sg_pool_t *pool)
{
    sg_smtp_srv_conf_t  **srv;
    sg_str_t              v, label;
    size_t                n, i;

    f->pcf = sg_fwd.pcf;
    f->ehlo_name = sg_fwd.pcf->fwd_host;
    if (!sg_spool_attr_get(&f->env.attrs, "SERVER", &v)
        || (label.data = sg_pnalloc(pool, v.len + 1)) == NULL)
    {
        return;
    }
    memcpy(label.data, v.data, v.len);
    label.len = v.len;
    sg_fwd_xtext_decode(&label);
    srv = sg_smtp_servers(sg_fwd.cycle, &n);
    for (i = 0; i < n; i++) {
        if (srv[i]->label.len == label.len
            && memcmp(srv[i]->label.data, label.data, label.len) == 0)
        {
            f->pcf = sg_mail_conf_srv(srv[i]->ctx, sg_proxy_module);
            f->ehlo_name = srv[i]->server_name;
            return;
        }
    }
    sg_log_error(SG_LOG_INFO, &f->log, 0, "spool forwarder: message %s "
                 "came through server \"%.*s\", which is no longer "
                 "configured: the mail block's proxy settings are used",
                 f->id, SG_STR_ARG(&label));
}

static bool
sg_fwd_has(sg_fwd_t *f, const char *name)
{
    sg_str_t  v;

    return sg_spool_attr_get(&f->env.attrs, name, &v);
}

/* XCLIENT: the attributes the session left, those the server lists. */
static size_t
sg_fwd_xclient(sg_smtp_client_t *cl, const sg_str_t *attrs, u_char *buf,
    size_t size)
{
    static const char  *names[] = { "ADDR", "PORT", "NAME", "HELO", "LOGIN",
                                    "PROTO" };
    sg_fwd_t           *f = cl->data;
    u_char             *p = buf, *last = buf + size;
    sg_str_t            v, w;
    size_t              i, pos;
    bool                listed;

    p = sg_slprintf(p, last, "XCLIENT");
    for (i = 0; i < sg_nelems(names); i++) {
        if (!sg_spool_attr_get(&f->env.attrs, names[i], &v) || v.len == 0) {
            continue;
        }
        listed = false;
        pos = 0;
        while (!listed && pos < attrs->len) {
            while (pos < attrs->len && attrs->data[pos] == ' ') {
                pos++;
            }
            w.data = attrs->data + pos;
            while (pos < attrs->len && attrs->data[pos] != ' ') {
                pos++;
            }
            w.len = (size_t) (attrs->data + pos - w.data);
            listed = w.len && sg_str_caseeq(&w, names[i]);
        }
        if (listed) {
            p = sg_slprintf(p, last, " %s=%.*s", names[i], SG_STR_ARG(&v));
        }
    }
    if (p == buf + sizeof("XCLIENT") - 1) {
        return 0;
    }
    return (size_t) (p - buf);
}

/* The original client's address, for a PROXY header. */
static bool
sg_fwd_client_addr(sg_fwd_t *f, struct sockaddr_storage *ss)
{
    struct sockaddr_in   *sin = (struct sockaddr_in *) ss;
    struct sockaddr_in6  *sin6 = (struct sockaddr_in6 *) ss;
    sg_str_t              a, pt;
    char                  text[64];
    int64_t               port = 0;

    if (!sg_spool_attr_get(&f->env.attrs, "ADDR", &a)
        || a.len >= sizeof(text))
    {
        return false;
    }
    if (sg_spool_attr_get(&f->env.attrs, "PORT", &pt)
        && (sg_parse_int(&pt, &port) != SG_OK || port > 65535))
    {
        port = 0;
    }
    memset(ss, 0, sizeof(*ss));
    if (a.len > 5 && sg_strncasecmp(a.data, (u_char *) "IPV6:", 5) == 0) {
        (void) snprintf(text, sizeof(text), "%.*s", (int) a.len - 5,
                        (char *) a.data + 5);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t) port);
        return inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1;
    }
    (void) snprintf(text, sizeof(text), "%.*s", SG_STR_ARG(&a));
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t) port);
    return inet_pton(AF_INET, text, &sin->sin_addr) == 1;
}

static void sg_fwd_handshake_done(sg_smtp_client_t *cl);

/* The next server of the group, or the end of this try. */
static void sg_fwd_connect(sg_fwd_t *f);
static sg_fwd_idle_t *sg_fwd_idle_take(sg_fwd_queue_t *q,
    sg_upstream_peer_t *peer, sg_proxy_conf_t *pcf);

static void
sg_fwd_attempt(sg_fwd_t *f)
{
    sg_str_t  key;

    if (f->pick.upstream == NULL) {
        if (!sg_spool_attr_get(&f->env.attrs, "LOGIN", &key)) {
            key = f->env.sender;
        }
        if (sg_upstream_pick_init_key(&f->pick, f->q->u, f->pool, &f->log,
                                      &key) != SG_OK)
        {
            snprintf(f->why, sizeof(f->why), "out of memory");
            sg_fwd_finish(f);
            return;
        }
    }
    if (sg_upstream_get(&f->pick) != SG_OK) {
        if (f->pick.tries == 0) {
            snprintf(f->why, sizeof(f->why), "no server of upstream "
                     "\"%.*s\" is up", SG_STR_ARG(&f->q->u->name));
        }
        f->dead = 1;
        sg_fwd_finish(f);
        return;
    }
    f->peer = (const char *) f->pick.peer->addr.name.data;
    sg_fwd_connect(f);
}

/* Connect to f->pick.peer, or take a connection kept to it. */
static void
sg_fwd_connect(sg_fwd_t *f)
{
    sg_proxy_conf_t  *pcf = f->pcf;
    sg_smtp_client_t *cl = &f->cl;
    sg_fwd_idle_t    *idle;
    sg_connection_t  *c;
    sg_str_t          key;
    struct sockaddr_storage  *src;

    memset(cl, 0, sizeof(*cl));
    cl->pool = f->pool;
    cl->log = &f->log;
    cl->peer = &f->pick.peer->addr;
    cl->ehlo_name = f->ehlo_name;
    cl->timeout = pcf->connect_timeout;
    cl->tls = pcf->ssl;
    cl->ssl_ctx = pcf->ssl_ctx;
    cl->ssl_compact = pcf->ssl_compact;
    cl->ssl_name = pcf->ssl_name.len ? pcf->ssl_name : f->pick.peer->host;
    cl->proxy_protocol = pcf->proxy_protocol;
    if (pcf->proxy_protocol) {
        src = sg_pcalloc(f->pool, sizeof(*src));
        if (src && sg_fwd_client_addr(f, src)) {
            cl->pp_src = (struct sockaddr *) src;
            cl->pp_dst = (struct sockaddr *) &f->pick.peer->addr.sa;
        }
    }
    if (pcf->xclient && f->env.attrs.len) {
        cl->xclient = sg_fwd_xclient;
        cl->xclient_helo = f->helo.len ? f->helo : f->ehlo_name;
        cl->xclient_esmtp = !sg_spool_attr_get(&f->env.attrs, "PROTO", &key)
                            || sg_str_caseeq(&key, "ESMTP");
    }
    cl->done = sg_fwd_handshake_done;
    cl->data = f;
    f->state = SG_FWD_HANDSHAKE;
    f->reused = 0;
    idle = f->no_reuse ? NULL : sg_fwd_idle_take(f->q, f->pick.peer, pcf);
    if (idle) {
        /* What the first handshake learnt; XCLIENT (and its EHLO) now
         * speak for this message's client. */
        cl->ehlo = idle->ehlo;
        cl->xclient_attrs.data = sg_pnalloc(f->pool, idle->xclient_len + 1);
        if (cl->xclient_attrs.data) {
            memcpy(cl->xclient_attrs.data, idle->xclient_attrs,
                   idle->xclient_len);
            cl->xclient_attrs.len = idle->xclient_len;
        }
        c = idle->c;
        f->reused = 1;
        f->conn_messages = idle->messages;
        free(idle);
        sg_smtp_client_reuse(cl, c);
    } else {
        f->conn_messages = 0;
        sg_smtp_client_start(cl);
    }
    if (cl->finished) {
        sg_fwd_handshake_done(cl);
    }
}

static void
sg_fwd_handshake_done(sg_smtp_client_t *cl)
{
    sg_fwd_t  *f = cl->data;
    size_t     n, i, need;

    if (cl->status != SG_OK && f->reused) {
        /* A kept connection the server may have closed meanwhile: no
         * fault of the server's; a new one is tried. */
        sg_log_error(SG_LOG_INFO, &f->log, 0, "spool forwarder: message %s: "
                     "a kept connection to %s failed (%s), connecting anew",
                     f->id, f->peer, cl->error);
        sg_smtp_client_close(cl);
        f->no_reuse = 1;
        sg_fwd_connect(f);
        return;
    }
    if (cl->status != SG_OK) {
        sg_log_error(SG_LOG_WARN, &f->log, 0, "spool forwarder: message %s: "
                     "backend %s failed: %s", f->id, f->peer, cl->error);
        snprintf(f->why, sizeof(f->why), "%.100s: %.200s", f->peer,
                 cl->error);
        sg_upstream_done(&f->pick, SG_UPSTREAM_FAILED);
        sg_smtp_client_close(cl);
        sg_fwd_attempt(f);
        return;
    }
    f->why[0] = '\0';
    f->q->probing = 0;                  /* a server is back */
    f->c = cl->c;
    cl->c = NULL;
    n = sg_min(sg_buf_size(&cl->in), sizeof(f->in));
    memcpy(f->in, cl->in.pos, n);
    f->nin = n;
    sg_smtp_client_close(cl);
    f->c->data = f;
    f->c->log = &f->log;
    f->c->read->handler = sg_fwd_handler;
    f->c->write->handler = sg_fwd_handler;
    if (sg_buf_take(&f->out, SG_FWD_OUT) != SG_OK) {
        snprintf(f->why, sizeof(f->why), "out of memory");
        sg_fwd_finish(f);
        return;
    }
    sg_buf_reset(&f->out);
    f->state = SG_FWD_MAIL;
    f->out.last = sg_slprintf(f->out.last, f->out.end - 2,
                              "MAIL FROM:<%.*s>%s%s",
                              SG_STR_ARG(&f->env.sender),
                              sg_fwd_has(f, "BODY")
                              && (cl->ehlo.caps & SG_SMTP_EXT_8BITMIME)
                              ? " BODY=8BITMIME" : "",
                              sg_fwd_has(f, "SMTPUTF8") ? " SMTPUTF8" : "");
    if (cl->ehlo.caps & SG_SMTP_EXT_SIZE) {
        f->out.last = sg_slprintf(f->out.last, f->out.end - 2, " SIZE=%lld",
                                  (long long) (f->size
                                               - (off_t) f->env.body));
    }
    *f->out.last++ = '\r';
    *f->out.last++ = '\n';
    /* RFC 2920: MAIL, every RCPT and DATA in one write when the server
     * takes them so and they fit; their replies are read in order. */
    if (cl->ehlo.caps & SG_SMTP_EXT_PIPELINING) {
        need = sizeof("DATA\r\n");
        for (i = 0; i < f->env.nrcpts; i++) {
            need += sizeof("RCPT TO:<>\r\n") + f->env.rcpts[i].len;
        }
        if (need < sg_buf_free(&f->out)) {
            f->pipelined = 1;
            for (i = 0; i < f->env.nrcpts; i++) {
                sg_fwd_line(f, "RCPT TO:<", &f->env.rcpts[i]);
            }
            sg_fwd_line(f, "DATA", NULL);
        }
    }
    sg_event_add_timer(f->c->read, f->pcf->timeout);
    f->c->write->ready = 1;
    sg_event_post(f->c->write);
}

/* ---- kept connections ------------------------------------------- */

static void
sg_fwd_idle_close(sg_fwd_idle_t *idle, bool quit)
{
    sg_fwd_queue_t   *q = idle->q;
    sg_fwd_idle_t   **pp;

    for (pp = &q->idle; *pp; pp = &(*pp)->next) {
        if (*pp == idle) {
            *pp = idle->next;
            q->nidle--;
            break;
        }
    }
    if (quit) {
        (void) idle->c->send(idle->c, (u_char *) "QUIT\r\n", 6);
    }
    sg_proxy_close_backend(idle->c);
    free(idle);
}

/* A kept connection has nothing to say: any byte, its close, its
 * timeout or a draining process end it. */
static void
sg_fwd_idle_handler(sg_event_t *ev)
{
    sg_connection_t  *c = ev->data;
    u_char            b[64];
    ssize_t           n;

    if (!c->close && !ev->timedout) {
        if (ev->write) {
            return;                   /* writable is no news when idle */
        }
        n = c->recv(c, b, sizeof(b));
        if (n == SG_AGAIN) {
            return;
        }
    }
    sg_fwd_idle_close(c->data, !c->close);
}

/* Keep f's connection for the next message to the same server, within
 * spool_forward_connections and proxy_keepalive_requests. */
static int
sg_fwd_keep(sg_fwd_t *f)
{
    sg_fwd_queue_t   *q = f->q;
    sg_connection_t  *c = f->c;
    sg_fwd_idle_t    *idle;

    if (sg_exiting || c->close || f->nin
        || q->nidle >= (unsigned) sg_fwd.pcf->fwd_connections
        || f->conn_messages + 1 >= (unsigned) f->pcf->keepalive_requests
        || f->cl.xclient_attrs.len > sizeof(idle->xclient_attrs))
    {
        return SG_DECLINED;
    }
    idle = calloc(1, sizeof(sg_fwd_idle_t));
    if (idle == NULL) {
        return SG_ERROR;
    }
    idle->q = q;
    idle->c = c;
    idle->peer = f->pick.peer;
    idle->pcf = f->pcf;
    idle->ehlo = f->cl.ehlo;
    if (f->cl.xclient_attrs.len) {
        memcpy(idle->xclient_attrs, f->cl.xclient_attrs.data,
               f->cl.xclient_attrs.len);
    }
    idle->xclient_len = f->cl.xclient_attrs.len;
    idle->messages = f->conn_messages + 1;
    f->c = NULL;
    c->data = idle;
    c->log = sg_fwd.cycle->log;
    c->pool = NULL;
    c->idle = 1;
    c->read->handler = sg_fwd_idle_handler;
    c->write->handler = sg_fwd_idle_handler;
    sg_event_del_timer(c->write);
    sg_event_add_timer(c->read, f->pcf->keepalive_timeout);
    idle->next = q->idle;
    q->idle = idle;
    q->nidle++;
    if (c->read->ready) {
        sg_event_post(c->read);
    }
    return SG_OK;
}

static sg_fwd_idle_t *
sg_fwd_idle_take(sg_fwd_queue_t *q, sg_upstream_peer_t *peer,
    sg_proxy_conf_t *pcf)
{
    sg_fwd_idle_t  **pp, *idle;

    for (pp = &q->idle; *pp; pp = &(*pp)->next) {
        idle = *pp;
        if (idle->peer == peer && idle->pcf == pcf) {
            *pp = idle->next;
            q->nidle--;
            sg_event_del_timer(idle->c->read);
            idle->c->idle = 0;
            return idle;
        }
    }
    return NULL;
}

/* The burst is over: nothing due, nothing in flight. */
static void
sg_fwd_idle_close_all(sg_fwd_queue_t *q)
{
    while (q->idle) {
        sg_fwd_idle_close(q->idle, true);
    }
}

/* ---- the transaction ---------------------------------------------- */

/* Queue "VERB" or "VERB<addr>" (verb ends in '<' then). */
static void
sg_fwd_line(sg_fwd_t *f, const char *verb, const sg_str_t *addr)
{
    if (sg_buf_size(&f->out) == 0) {
        sg_buf_reset(&f->out);
    }
    if (addr) {
        f->out.last = sg_slprintf(f->out.last, f->out.end - 2, "%s%.*s>",
                                  verb, SG_STR_ARG(addr));
    } else {
        f->out.last = sg_slprintf(f->out.last, f->out.end - 2, "%s", verb);
    }
    *f->out.last++ = '\r';
    *f->out.last++ = '\n';
}

/* Send what is queued: SG_OK, SG_AGAIN or SG_ERROR (f->why set). */
static int
sg_fwd_send(sg_fwd_t *f)
{
    ssize_t  n;

    while (sg_buf_size(&f->out)) {
        n = f->c->send(f->c, f->out.pos, sg_buf_size(&f->out));
        if (n == SG_AGAIN) {
            return SG_AGAIN;
        }
        if (n <= 0) {
            snprintf(f->why, sizeof(f->why), "%s: send() failed", f->peer);
            return SG_ERROR;
        }
        f->out.pos += n;
    }
    sg_buf_reset(&f->out);
    return SG_OK;
}

static u_char  sg_fwd_rbuf[SG_FWD_OUT / 2];

/* Queue more of the message, dot-stuffed (RFC 5321 4.5.2: a line starts
 * after CRLF), and at its end the final dot: SG_OK, SG_DONE once the
 * dot is queued, SG_ERROR. */
static int
sg_fwd_fill(sg_fwd_t *f)
{
    size_t    room, want, i;
    ssize_t   n;
    u_char   *o, ch;

    sg_buf_compact(&f->out);
    room = sg_buf_free(&f->out);
    if (room < 16) {
        return SG_OK;
    }
    want = sg_min((room - 8) / 2, sizeof(sg_fwd_rbuf));
    want = (size_t) sg_min((off_t) want, f->size - f->off);
    if (want) {
        n = pread(f->fd, sg_fwd_rbuf, want, f->off);
        if (n <= 0) {
            snprintf(f->why, sizeof(f->why), "reading the queued file "
                     "failed (%s)", n ? strerror(errno) : "it shrank");
            return SG_ERROR;
        }
        f->off += n;
        o = f->out.last;
        for (i = 0; i < (size_t) n; i++) {
            ch = sg_fwd_rbuf[i];
            if (f->bol && ch == '.') {
                *o++ = '.';
            }
            *o++ = ch;
            f->bol = f->cr && ch == '\n';
            f->cr = ch == '\r';
        }
        f->out.last = o;
    }
    if (f->off < f->size) {
        return SG_OK;
    }
    /* The text must end in CRLF before the dot; a BDAT message may
     * not. */
    if (!f->bol) {
        *f->out.last++ = '\r';
        *f->out.last++ = '\n';
    }
    *f->out.last++ = '.';
    *f->out.last++ = '\r';
    *f->out.last++ = '\n';
    return SG_DONE;
}

static sg_str_t
sg_fwd_copy_reply(sg_fwd_t *f, const sg_smtp_reply_t *r)
{
    sg_str_t  s = { 0, NULL };

    s.data = sg_pnalloc(f->pool, r->len);
    if (s.data) {
        memcpy(s.data, r->start, r->len);
        s.len = r->len;
        while (s.len && (s.data[s.len - 1] == '\n'
                         || s.data[s.len - 1] == '\r'))
        {
            s.len--;
        }
    }
    return s;
}

static uint8_t
sg_fwd_class(int code)
{
    return code / 100 == 2 ? SG_FWD_DONE
           : code / 100 == 5 ? SG_FWD_FAILED : SG_FWD_DEFERRED;
}

/* Every recipient still in state from takes result and reply. */
static void
sg_fwd_settle(sg_fwd_t *f, uint8_t from, uint8_t result, sg_str_t reply)
{
    size_t  i;

    for (i = 0; i < f->env.nrcpts; i++) {
        if (f->result[i] == from) {
            f->result[i] = result;
            f->reply[i] = reply;
        }
    }
}

#define SG_FWD_ACCEPTED  4             /* RCPT said 2xx, DATA to come */

/* One reply: what it means, and the next command.  SG_OK to go on,
 * SG_DONE when the transaction is over. */
static int
sg_fwd_on_reply(sg_fwd_t *f, const sg_smtp_reply_t *r)
{
    sg_str_t  reply = sg_fwd_copy_reply(f, r);
    uint8_t   cls = sg_fwd_class(r->code);

    switch (f->state) {
    case SG_FWD_MAIL:
        if (cls != SG_FWD_DONE) {
            f->last = reply;
            sg_fwd_settle(f, SG_FWD_PENDING, cls, reply);
            return SG_DONE;
        }
        f->state = SG_FWD_RCPT;
        f->rcpt = 0;
        if (!f->pipelined) {
            sg_fwd_line(f, "RCPT TO:<", &f->env.rcpts[0]);
        }
        return SG_OK;

    case SG_FWD_RCPT:
        f->result[f->rcpt] = cls == SG_FWD_DONE ? SG_FWD_ACCEPTED : cls;
        f->reply[f->rcpt] = reply;
        f->accepted += cls == SG_FWD_DONE;
        if (++f->rcpt < f->env.nrcpts) {
            if (!f->pipelined) {
                sg_fwd_line(f, "RCPT TO:<", &f->env.rcpts[f->rcpt]);
            }
            return SG_OK;
        }
        if (f->accepted == 0) {
            /* (a pipelined DATA's reply is left unread: QUIT follows) */
            return SG_DONE;
        }
        f->state = SG_FWD_DATA;
        if (!f->pipelined) {
            sg_fwd_line(f, "DATA", NULL);
        }
        return SG_OK;

    case SG_FWD_DATA:
        if (r->code != 354) {
            f->last = reply;
            sg_fwd_settle(f, SG_FWD_ACCEPTED,
                          cls == SG_FWD_DONE ? SG_FWD_DEFERRED : cls, reply);
            return SG_DONE;
        }
        f->state = SG_FWD_BODY;
        f->off = (off_t) f->env.body;
        f->bol = 1;
        f->cr = 0;
        return SG_OK;

    case SG_FWD_DOT:
        f->last = reply;
        sg_fwd_settle(f, SG_FWD_ACCEPTED, cls, reply);
        return SG_DONE;

    default:
        return SG_DONE;
    }
}

/* The transaction is over: QUIT, best effort, and the outcome. */
static void
sg_fwd_end(sg_fwd_t *f)
{
    f->state = SG_FWD_END;
    sg_buf_reset(&f->out);
    sg_fwd_line(f, "QUIT", NULL);
    (void) sg_fwd_send(f);
    f->why[0] = '\0';
    sg_fwd_finish(f);
}

static void
sg_fwd_lost(sg_fwd_t *f)
{
    if (f->reused && f->state == SG_FWD_MAIL) {
        /* A kept connection that died before its first reply: the
         * server closed it meanwhile, no fault of the message's. */
        sg_log_error(SG_LOG_INFO, &f->log, 0, "spool forwarder: message %s: "
                     "a kept connection to %s failed (%s), connecting anew",
                     f->id, f->peer, f->why);
        sg_proxy_close_backend(f->c);
        f->c = NULL;
        f->nin = 0;
        f->pipelined = 0;
        f->why[0] = '\0';
        f->no_reuse = 1;
        sg_fwd_connect(f);
        return;
    }
    sg_log_error(SG_LOG_WARN, &f->log, 0, "spool forwarder: message %s: %s",
                 f->id, f->why);
    sg_upstream_done(&f->pick, SG_UPSTREAM_FAILED);
    sg_fwd_finish(f);
}

static void
sg_fwd_handler(sg_event_t *ev)
{
    sg_connection_t  *c = ev->data;
    sg_fwd_t         *f = c->data;
    sg_smtp_reply_t   r;
    ssize_t           n;
    int               rc;

    if (ev->timedout) {
        snprintf(f->why, sizeof(f->why), "%s: timed out waiting for the "
                 "reply", f->peer);
        sg_fwd_lost(f);
        return;
    }
    for ( ;; ) {
        rc = sg_fwd_send(f);
        if (rc == SG_ERROR) {
            sg_fwd_lost(f);
            return;
        }
        if (rc == SG_OK && f->state == SG_FWD_BODY) {
            rc = sg_fwd_fill(f);
            if (rc == SG_ERROR) {
                sg_fwd_lost(f);
                return;
            }
            if (rc == SG_DONE) {
                f->state = SG_FWD_DOT;
            }
            continue;
        }
        if (rc == SG_AGAIN) {
            break;
        }
        /* Everything sent: read the reply. */
        rc = sg_smtp_parse_reply(f->in, f->in + f->nin, sizeof(f->in), &r);
        if (rc == SG_OK) {
            rc = sg_fwd_on_reply(f, &r);
            memmove(f->in, f->in + r.len, f->nin - r.len);
            f->nin -= r.len;
            if (rc == SG_DONE) {
                sg_upstream_done(&f->pick, SG_UPSTREAM_OK);
                if (f->state == SG_FWD_DOT && sg_fwd_keep(f) == SG_OK) {
                    f->why[0] = '\0';
                    sg_fwd_finish(f);
                    return;
                }
                sg_fwd_end(f);
                return;
            }
            continue;
        }
        if (rc == SG_ERROR) {
            snprintf(f->why, sizeof(f->why), "%s: an invalid reply", f->peer);
            sg_fwd_lost(f);
            return;
        }
        if (!c->read->ready) {
            break;
        }
        n = c->recv(c, f->in + f->nin, sizeof(f->in) - f->nin);
        if (n == SG_AGAIN) {
            break;
        }
        if (n <= 0) {
            snprintf(f->why, sizeof(f->why), "%s: the connection was %s",
                     f->peer, n ? "lost" : "closed by the backend");
            sg_fwd_lost(f);
            return;
        }
        f->nin += (size_t) n;
    }
    sg_event_add_timer(c->read, f->pcf->timeout);
}

/* ---- the outcome -------------------------------------------------- */

static void
sg_fwd_kick_handler(sg_event_t *ev)
{
    sg_fwd_run(ev->data);
}

/* The next try of a deferred message: put off by its age, between the
 * two times of spool_forward_retry. */
static time_t
sg_fwd_backoff(sg_fwd_t *f, time_t now)
{
    time_t  age = now - f->arrival;
    time_t  lo = (time_t) (sg_fwd.pcf->fwd_retry_min / 1000);
    time_t  hi = (time_t) (sg_fwd.pcf->fwd_retry_max / 1000);

    return age < lo ? lo : age > hi ? hi : age;
}

/* How many tries the file's note counts (0: none yet). */
static unsigned
sg_fwd_tries(int fd)
{
    char     v[32];
    ssize_t  n;

    n = fgetxattr(fd, SG_SPOOL_DEFERRED_XATTR, v, sizeof(v) - 1);
    if (n <= 0) {
        return 0;
    }
    v[n] = '\0';
    return (unsigned) strtoul(v, NULL, 10);
}

/* Note on the file why this try did not deliver it, for GET /queue:
 * "TRIES TIME WHY" in an extended attribute, so that nothing of the
 * message is rewritten for it.  A file system without them just has
 * no note. */
static void
sg_fwd_note(sg_fwd_t *f, time_t now, const sg_str_t *why)
{
    char    v[SG_SPOOL_DEFERRED_MAX];
    size_t  i, n;
    int     m;

    m = snprintf(v, sizeof(v), "%u %lld ", f->tries + 1, (long long) now);
    if (m <= 0 || (size_t) m >= sizeof(v)) {
        return;
    }
    n = (size_t) m;
    for (i = 0; i < why->len && n < sizeof(v) - 1; i++) {
        v[n++] = why->data[i] >= 0x20 && why->data[i] < 0x7f
                 ? (char) why->data[i] : ' ';
    }
    if (setxattr(f->path, SG_SPOOL_DEFERRED_XATTR, v, n, 0) == -1) {
        sg_log_debug(&f->log, "spool forwarder: setxattr(\"%s\") failed "
                     "(%d): no note of the try", f->path, errno);
    }
}

static void
sg_fwd_touch(sg_fwd_t *f, time_t when)
{
    struct timespec  ts[2];

    ts[0].tv_sec = 0;
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = when;
    ts[1].tv_nsec = 0;
    if (utimensat(AT_FDCWD, f->path, ts, 0) == -1) {
        sg_log_error(SG_LOG_ERR, &f->log, errno, "spool forwarder: "
                     "utimensat(\"%s\") failed: the message is tried again "
                     "at the next interval", f->path);
    }
}

/* The enhanced status code of a reply of class cls ('5': "550 5.1.1
 * ..."), or cls.0.0. */
static sg_str_t
sg_fwd_status(const sg_str_t *reply, u_char cls)
{
    sg_str_t  st;
    u_char   *p, *e;

    if (reply->len > 4) {
        p = reply->data + 4;
        e = reply->data + reply->len;
        st.data = p;
        while (p < e && ((*p >= '0' && *p <= '9') || *p == '.')) {
            p++;
        }
        st.len = (size_t) (p - st.data);
        if (st.len >= 5 && st.data[0] == cls && st.data[1] == '.') {
            return st;
        }
    }
    st.data = (u_char *) (cls == '4' ? "4.0.0" : "5.0.0");
    st.len = 5;
    return st;
}

/* spool_forward_lifetime in words: "5 days", "90 minutes". */
static const char *
sg_fwd_lifetime_text(void)
{
    static char  buf[64];
    long long    s = (long long) (sg_fwd.pcf->fwd_lifetime / 1000);

    if (s % 86400 == 0) {
        snprintf(buf, sizeof(buf), "%lld day%s", s / 86400,
                 s == 86400 ? "" : "s");
    } else if (s % 3600 == 0) {
        snprintf(buf, sizeof(buf), "%lld hours", s / 3600);
    } else if (s % 60 == 0) {
        snprintf(buf, sizeof(buf), "%lld minutes", s / 60);
    } else {
        snprintf(buf, sizeof(buf), "%lld seconds", s);
    }
    return buf;
}

/* Report to the sender: the failed recipients, or (delayed) those still
 * deferred, in a warning.  SG_OK, or SG_ERROR (nothing was queued). */
static int
sg_fwd_report(sg_fwd_t *f, size_t n, time_t now, bool delayed)
{
    sg_spool_dsn_rcpt_t  *dr;
    sg_spool_dsn_t        d;
    sg_str_t              id, attrs;
    char                  newid[128];
    size_t                i, k = 0;
    char                 *text;
    bool                  take;

    dr = sg_pcalloc(f->pool, n * sizeof(*dr));
    if (dr == NULL) {
        return SG_ERROR;
    }
    for (i = 0; i < f->env.nrcpts && k < n; i++) {
        take = delayed ? f->result[i] == SG_FWD_DEFERRED
                       : f->result[i] == SG_FWD_FAILED
                         || f->result[i] == SG_FWD_EXPIRED;
        if (!take) {
            continue;
        }
        dr[k].rcpt = f->env.rcpts[i];
        dr[k].reply = f->reply[i];
        if (f->reply[i].len && f->peer) {
            dr[k].remote.data = (u_char *) f->peer;
            dr[k].remote.len = strlen(f->peer);
        }
        if (f->result[i] == SG_FWD_EXPIRED || delayed) {
            /* RFC 3463: 4.4.7, the message expired in the queue; a
             * warning keeps the reply's own code. */
            dr[k].status = delayed ? sg_fwd_status(&f->reply[i], '4')
                                   : (sg_str_t) sg_string("4.4.7");
            text = sg_pnalloc(f->pool, 512);
            if (text == NULL) {
                return SG_ERROR;
            }
            if (delayed) {
                snprintf(text, 512, "not delivered yet after %lld minutes"
                         "%s%.300s", (long long) ((now - f->arrival) / 60),
                         f->reply[i].len == 0 && f->why[0]
                         ? "; the last attempt: " : "",
                         f->reply[i].len ? "" : f->why);
            } else {
                snprintf(text, 512, "the message could not be delivered "
                         "within %s%s%.300s", sg_fwd_lifetime_text(),
                         f->reply[i].len == 0 && f->why[0]
                         ? "; the last attempt: " : "",
                         f->reply[i].len ? "" : f->why);
            }
            dr[k].text.data = (u_char *) text;
            dr[k].text.len = strlen(text);
        } else {
            dr[k].status = sg_fwd_status(&f->reply[i], '5');
        }
        k++;
    }
    memset(&d, 0, sizeof(d));
    d.host = sg_fwd.pcf->fwd_host;
    id.data = (u_char *) f->id;
    id.len = strlen(f->id);
    d.queue_id = id;
    d.arrival = f->arrival;
    d.now = now;
    d.sender = f->env.sender;
    d.rcpts = dr;
    d.nrcpts = k;
    d.message.data = f->head + f->env.body;
    d.message.len = f->nhead - f->env.body;
    d.delayed = delayed;
    d.retry_until = f->arrival
                    + (time_t) (sg_fwd.pcf->fwd_lifetime / 1000);
    attrs = f->env.attrs;
    if (sg_spool_bounce(f->q->sp, &f->log, &d, &attrs, newid,
                        sizeof(newid)) != SG_OK)
    {
        return SG_ERROR;
    }
    sg_fwd_count(f->q, SG_FWD_STAT(reports), 1);
    sg_fwd_count(f->q, SG_FWD_STAT(queued), 1);
    for (i = 0; i < k; i++) {
        sg_log_error(SG_LOG_NOTICE, &f->log, 0, "spool forwarder: message "
                     "%s to <%.*s> %s (%.*s%.*s), %s <%.*s> in message %s",
                     f->id, SG_STR_ARG(&dr[i].rcpt),
                     delayed ? "still deferred" : "failed",
                     (int) sg_min(dr[i].reply.len, SG_FWD_REPLY_LOG),
                     (char *) dr[i].reply.data,
                     (int) sg_min(dr[i].text.len, SG_FWD_REPLY_LOG),
                     dr[i].reply.len ? "" : (char *) dr[i].text.data,
                     delayed ? "warned" : "reported to",
                     SG_STR_ARG(&f->env.sender), newid);
    }
    return SG_OK;
}

/* spool_forward_delay_warning: once a message still deferred is that
 * old, its sender is warned, once; ",W" at the end of the file's name
 * says it was. */
static void
sg_fwd_warn(sg_fwd_t *f, size_t deferred, time_t now)
{
    char    to[PATH_MAX];
    size_t  len = strlen(f->path);
    int     n;

    if (sg_fwd.pcf->fwd_delay_warning == 0 || f->env.sender.len == 0
        || now - f->arrival < (time_t) (sg_fwd.pcf->fwd_delay_warning / 1000)
        || (len > 2 && strcmp(f->path + len - 2, ",W") == 0))
    {
        return;
    }
    n = snprintf(to, sizeof(to), "%s,W", f->path);
    if (n < 0 || (size_t) n >= sizeof(to)) {
        return;
    }
    /* Marked first: a warning that could not be queued is not sent
     * again and again at every try. */
    if (rename(f->path, to) == -1) {
        sg_log_error(SG_LOG_ERR, &f->log, errno, "spool forwarder: "
                     "rename() to \"%s\" failed: no delay warning for "
                     "message %s", to, f->id);
        return;
    }
    memcpy(f->path, to, (size_t) n + 1);
    (void) sg_fwd_report(f, deferred, now, true);
}

static void
sg_fwd_finish(sg_fwd_t *f)
{
    sg_fwd_queue_t  *q = f->q;
    time_t           now = time(NULL), next;
    size_t           i, done = 0, failed = 0, deferred = 0;
    bool             expired, *keep;
    sg_str_t         none = { 0, NULL }, why = { 0, NULL };

    /* Whoever had no answer yet: deferred; the cause is in f->why, in
     * our words, not a server's reply. */
    sg_fwd_settle(f, SG_FWD_PENDING, SG_FWD_DEFERRED, none);
    sg_fwd_settle(f, SG_FWD_ACCEPTED, SG_FWD_DEFERRED, none);
    expired = now - f->arrival >= (time_t) (sg_fwd.pcf->fwd_lifetime / 1000);
    if (expired) {
        /* Deferred too long: failed, keeping the last reply. */
        f->expired = 1;
        for (i = 0; i < f->env.nrcpts; i++) {
            if (f->result[i] == SG_FWD_DEFERRED) {
                f->result[i] = SG_FWD_EXPIRED;
            }
        }
    }
    for (i = 0; i < f->env.nrcpts; i++) {
        done += f->result[i] == SG_FWD_DONE;
        failed += f->result[i] == SG_FWD_FAILED
                  || f->result[i] == SG_FWD_EXPIRED;
        deferred += f->result[i] == SG_FWD_DEFERRED;
    }

    if (f->dead && !expired) {
        /* Not the message's fault: no backoff, the queue waits. */
        q->dead = 1;
        why.data = (u_char *) (f->why[0] ? f->why : "no server is up");
        why.len = strlen((char *) why.data);
        sg_fwd_note(f, now, &why);
        sg_log_error(SG_LOG_WARN, &f->log, 0, "spool forwarder: message %s "
                     "deferred: %s; the queue waits %lld ms before the next "
                     "try", f->id, f->why[0] ? f->why : "no server is up",
                     (long long) sg_fwd.pcf->fwd_interval);
        goto out;
    }
    if (done) {
        sg_log_error(SG_LOG_INFO, &f->log, 0, "spool forwarder: message %s "
                     "from <%.*s> delivered to %zu recipient%s through %s "
                     "(%.*s)", f->id, SG_STR_ARG(&f->env.sender), done,
                     done == 1 ? "" : "s", f->peer,
                     (int) sg_min(f->last.len, SG_FWD_REPLY_LOG),
                     (char *) f->last.data);
    }
    if (failed && f->env.sender.len == 0) {
        if (done == 0 && deferred == 0) {
            sg_fwd_count(q, SG_FWD_STAT(failed), (int64_t) failed);
            sg_fwd_park(f, "every recipient failed");
            goto out;
        }
        for (i = 0; i < f->env.nrcpts; i++) {
            if (f->result[i] == SG_FWD_FAILED
                || f->result[i] == SG_FWD_EXPIRED)
            {
                sg_log_error(SG_LOG_ERR, &f->log, 0, "spool forwarder: "
                             "message %s to <%.*s> failed (%.*s%s), and its "
                             "sender is <>: nobody to report it to", f->id,
                             SG_STR_ARG(&f->env.rcpts[i]),
                             (int) sg_min(f->reply[i].len, SG_FWD_REPLY_LOG),
                             (char *) f->reply[i].data,
                             f->reply[i].len ? "" : f->why[0] ? f->why
                             : "deferred too long");
            }
        }
    } else if (failed && sg_fwd_report(f, failed, now, false) != SG_OK) {
        /* Kept until it can be reported. */
        for (i = 0; i < f->env.nrcpts; i++) {
            if (f->result[i] == SG_FWD_FAILED
                || f->result[i] == SG_FWD_EXPIRED)
            {
                f->result[i] = SG_FWD_DEFERRED;
            }
        }
        deferred += failed;
        failed = 0;
    }
    sg_fwd_count(q, SG_FWD_STAT(delivered), (int64_t) done);
    sg_fwd_count(q, SG_FWD_STAT(failed), (int64_t) failed);
    sg_fwd_count(q, SG_FWD_STAT(deferred), (int64_t) deferred);
    if (deferred == 0) {
        if (unlink(f->path) == 0) {
            sg_fwd_count(q, SG_FWD_STAT(queued), -1);
        } else {
            sg_log_error(SG_LOG_ERR, &f->log, errno, "spool forwarder: "
                         "unlink(\"%s\") failed: the message will be sent "
                         "again", f->path);
        }
        goto out;
    }
    if (done || failed) {
        keep = sg_pnalloc(f->pool, f->env.nrcpts * sizeof(bool));
        if (keep == NULL) {
            goto out;
        }
        for (i = 0; i < f->env.nrcpts; i++) {
            keep[i] = f->result[i] == SG_FWD_DEFERRED;
        }
        if (sg_spool_requeue(q->sp, &f->log, f->path, f->fd, &f->env, keep)
            != SG_OK)
        {
            goto out;          /* the old file lists them all: tried again */
        }
    }
    next = now + sg_fwd_backoff(f, now);
    sg_fwd_touch(f, next);
    for (i = 0; i < f->env.nrcpts && why.len == 0; i++) {
        if (f->result[i] == SG_FWD_DEFERRED) {
            why = f->reply[i];
        }
    }
    if (why.len == 0) {
        why.data = (u_char *) f->why;
        why.len = strlen(f->why);
    }
    sg_fwd_note(f, now, &why);
    sg_fwd_warn(f, deferred, now);
    for (i = 0; i < f->env.nrcpts; i++) {
        if (f->result[i] == SG_FWD_DEFERRED) {
            sg_log_error(SG_LOG_WARN, &f->log, 0, "spool forwarder: message "
                         "%s to <%.*s> deferred (%.*s%s), next try in %lld s",
                         f->id, SG_STR_ARG(&f->env.rcpts[i]),
                         (int) sg_min(f->reply[i].len, SG_FWD_REPLY_LOG),
                         (char *) f->reply[i].data,
                         f->reply[i].len ? "" : f->why,
                         (long long) (next - now));
        }
    }

out:
    if (f->pick.counted) {
        sg_upstream_done(&f->pick, SG_UPSTREAM_ABORTED);
    }
    sg_fwd_free(f);
    sg_event_post(&q->kick);
}

/* ---- the process -------------------------------------------------- */

static int
sg_fwd_init_process(sg_cycle_t *cycle, void *data)
{
    sg_upstream_t      **u;
    sg_upstream_peer_t  *p;
    sg_fwd_queue_t      *q;
    size_t               n, i, j;

    sg_fwd.pcf = data;
    sg_fwd.cycle = cycle;
    if (sg_array_init(&sg_fwd.queues, cycle->pool, 2,
                      sizeof(sg_fwd_queue_t)) != SG_OK)
    {
        return SG_ERROR;
    }
    u = sg_upstream_groups_of(cycle, &n);
    for (i = 0; i < n; i++) {
        p = u[i]->peers.elts;
        for (j = 0; j < u[i]->peers.nelts; j++) {
            if (!p[j].forward) {
                continue;
            }
            q = sg_array_push(&sg_fwd.queues);
            if (q == NULL) {
                return SG_ERROR;
            }
            memset(q, 0, sizeof(*q));
            q->sp = p[j].spool;
            q->u = u[i];
            /* a slot, so that a forwarder that dies does not leave its
             * deliveries counted against the group's servers */
            sg_upstream_slot_claim(cycle, u[i]);
            q->stats = sg_spool_stats(q->sp);
            if (q->stats) {
                __atomic_store_n(&q->stats->forwarder, (uint64_t) sg_pid,
                                 __ATOMIC_RELAXED);
            }
            q->kick.handler = sg_fwd_kick_handler;
            q->kick.data = q;
            q->kick.log = cycle->log;
            sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "spool forwarder: "
                         "forwarding \"%.*s\" to upstream \"%.*s\"",
                         SG_STR_ARG(sg_spool_dir(q->sp)),
                         SG_STR_ARG(&u[i]->name));
        }
    }
    sg_fwd.timer.handler = sg_fwd_timer;
    sg_fwd.timer.log = cycle->log;
    sg_event_post(&sg_fwd.timer);
    return SG_OK;
}

/* Fast stop: what is in flight is dropped; each file stays queued and
 * is sent again by the next forwarder. */
static void
sg_fwd_exit_process(sg_cycle_t *cycle, void *data)
{
    sg_fwd_queue_t  *q = sg_fwd.queues.elts;
    size_t           i;

    (void) cycle;
    (void) data;
    for (i = 0; i < sg_fwd.queues.nelts; i++) {
        while (q[i].deliveries) {
            if (q[i].deliveries->pick.counted) {
                sg_upstream_done(&q[i].deliveries->pick,
                                 SG_UPSTREAM_ABORTED);
            }
            sg_fwd_free(q[i].deliveries);
        }
        sg_fwd_free_due(&q[i]);
        sg_fwd_idle_close_all(&q[i]);
        sg_upstream_slot_leave(q[i].u);
        if (q[i].stats) {
            /* unless a newer forwarder has put its own there */
            uint64_t  mine = (uint64_t) sg_pid;

            (void) __atomic_compare_exchange_n(&q[i].stats->forwarder,
                                               &mine, 0, false,
                                               __ATOMIC_RELAXED,
                                               __ATOMIC_RELAXED);
        }
    }
}

#else /* no upstream or no spool module: nothing to forward */

char *
sg_proxy_forward_init(sg_conf_t *cf, sg_proxy_conf_t *main)
{
    (void) cf;
    (void) main;
    return SG_CONF_OK;
}

#endif
