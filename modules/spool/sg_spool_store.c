/*
 * sg_spool_store.c: writing one message into a Maildir, on the thread
 * pool.
 *
 * Owns the message's file from its creation in DIR/tmp to its rename
 * into DIR/new: the descriptor, the two buffers the data streams
 * through, and the task that carries every system call off the event
 * loop.  A message is durable before the session hears of it: the file
 * is fsync'ed, renamed, and DIR/new is fsync'ed, in that order, and only
 * then is the session called back.  The rename never replaces a file
 * already in DIR/new, which would lose a message accepted before.
 * Refuses to leave anything behind that was not committed: a failed
 * write removes the file at once, and a session that goes away has its
 * file removed after the write in flight, if any, has finished.
 *
 * The file object and its task are one malloc'd block, never in the
 * session's pool, because a thread may still be writing from it when
 * the session is gone.  Its fields are split by who may touch them:
 * the loop sets the request before posting the task; the thread writes
 * the results; the loop reads them after the task has come back.  The
 * thread pool's mutex orders each hand-over.
 */
#include "sg_spool_int.h"
#include <fcntl.h>
#include <sys/random.h>
#include <sys/statvfs.h>

#define SG_SPOOL_OP_OPEN     0x01
#define SG_SPOOL_OP_WRITE    0x02
#define SG_SPOOL_OP_COMMIT   0x04
#define SG_SPOOL_OP_ABORT    0x08

struct sg_spool_file_s {
    sg_task_t                  task;        /* first: the pool's view */

    /* The request: set by the loop before the task is posted. */
    unsigned                   ops;
    u_char                    *io;          /* the buffer to write */
    size_t                     io_len;
    u_char                    *head;        /* the header block (OPEN) */
    size_t                     head_len;
    int64_t                    need_free;   /* OPEN: bytes that must be
                                               free first; 0: no check */

    /* The results: written by the thread. */
    int                        fd;
    int                        err;
    const char                *failed;      /* the call that failed */
    uint64_t                   size;
    int64_t                    free;        /* bytes free at the OPEN,
                                               -1: not measured */
    unsigned                   low:1;       /* refused: less than
                                               need_free */
    unsigned                   tmp_exists:1;
    unsigned                   committed:1;

    /* The loop's own. */
    u_char                    *fill;        /* the buffer being filled */
    size_t                     fill_len;
    sg_log_t                  *log;         /* the session's, until it
                                               leaves */
    sg_spool_file_handler_pt   handler;
    void                      *data;
    unsigned                   busy:1;      /* a task is out */
    unsigned                   want_commit:1;
    unsigned                   released:1;
    unsigned                   completing:1;  /* done() ran for the task
                                                 destroy() now sees */

    char                       id[64];
    char                       tmp_path[PATH_MAX];
    char                       new_path[PATH_MAX];
    char                       new_dir[PATH_MAX];
    u_char                     buf[2][SG_SPOOL_CHUNK];
};

/* Maildir's "Qn": how many messages this process has delivered. */
static unsigned  sg_spool_deliveries;

/* The host name as a Maildir name part: '/', ':' and ',' would be read
 * as separators, so they are written as octal escapes. */
static const char *
sg_spool_host(void)
{
    static char    host[4 * 256 + 1];
    const u_char  *p;
    char          *h = host;
    size_t         i;

    if (host[0]) {
        return host;
    }
    p = sg_cycle->hostname.data;
    for (i = 0; i < sg_cycle->hostname.len && i < 255; i++) {
        if (p[i] == '/' || p[i] == ':' || p[i] == ',' || p[i] < 0x21
            || p[i] > 0x7e)
        {
            h += sprintf(h, "\\%03o", p[i]);
        } else {
            *h++ = (char) p[i];
        }
    }
    *h = '\0';
    if (host[0] == '\0') {
        strcpy(host, "localhost");
    }
    return host;
}

sg_spool_file_t *
sg_spool_file_create(sg_spool_t *sp, sg_log_t *log,
    sg_spool_file_handler_pt handler, void *data)
{
    sg_spool_file_t  *f;
    struct timespec   ts;
    char              unique[128 + 4 * 256];
    int               n, m, k;

    f = sg_alloc(sizeof(sg_spool_file_t), log);
    if (f == NULL) {
        return NULL;
    }
    memset(f, 0, offsetof(sg_spool_file_t, buf));
    f->fd = -1;
    f->free = -1;
    f->fill = f->buf[0];
    f->log = log;
    f->handler = handler;
    f->data = data;
    f->task.data = f;

    (void) clock_gettime(CLOCK_REALTIME, &ts);
    sg_spool_deliveries++;
    (void) snprintf(f->id, sizeof(f->id), "%lldM%06ldP%dQ%u",
                    (long long) ts.tv_sec, (long) (ts.tv_nsec / 1000),
                    (int) sg_pid, sg_spool_deliveries);
    (void) snprintf(unique, sizeof(unique), "%lld.M%06ldP%dQ%u.%s",
                    (long long) ts.tv_sec, (long) (ts.tv_nsec / 1000),
                    (int) sg_pid, sg_spool_deliveries, sg_spool_host());
    n = snprintf(f->tmp_path, sizeof(f->tmp_path), "%s/tmp/%s",
                 (char *) sp->dir.data, unique);
    m = snprintf(f->new_path, sizeof(f->new_path), "%s/new/%s",
                 (char *) sp->dir.data, unique);
    k = snprintf(f->new_dir, sizeof(f->new_dir), "%s/new",
                 (char *) sp->dir.data);
    /* ",S=" and up to 20 digits are added at the commit, and perhaps
     * the random part of sg_spool_move(). */
    if (n < 0 || m < 0 || k < 0 || (size_t) n >= sizeof(f->tmp_path)
        || (size_t) m + 24 + SG_SPOOL_MOVE_EXTRA >= sizeof(f->new_path))
    {
        f->err = ENAMETOOLONG;
        f->failed = "snprintf()";
    }
    return f;
}

const char *
sg_spool_file_id(sg_spool_file_t *f)
{
    return f->id;
}

const char *
sg_spool_file_path(sg_spool_file_t *f)
{
    return f->new_path;
}

uint64_t
sg_spool_file_size(sg_spool_file_t *f)
{
    return f->size;
}

int64_t
sg_spool_file_free(sg_spool_file_t *f, bool *low)
{
    *low = f->low;
    return f->free;
}

bool
sg_spool_file_busy(sg_spool_file_t *f)
{
    return f->busy;
}

bool
sg_spool_file_committed(sg_spool_file_t *f)
{
    return f->committed;
}

int
sg_spool_file_error(sg_spool_file_t *f, const char **call)
{
    *call = f->failed ? f->failed : "";
    return f->err;
}

/* On the thread. */

static void
sg_spool_fail(sg_spool_file_t *f, const char *call, int err)
{
    if (f->err == 0) {
        f->err = err ? err : EIO;
        f->failed = call;
    }
}

static void
sg_spool_write_all(sg_spool_file_t *f, const u_char *p, size_t n)
{
    ssize_t  w;

    while (n && f->err == 0) {
        w = write(f->fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t) w;
            f->size += (uint64_t) w;
        } else if (w == 0) {
            sg_spool_fail(f, "write()", EIO);
        } else if (errno != EINTR) {
            sg_spool_fail(f, "write()", errno);
        }
    }
}

/* rename() that never replaces: RENAME_NOREPLACE, or where the
 * filesystem or kernel lacks it, link() and unlink(), since link() never
 * replaces either.  -1 with errno on failure (EEXIST: the name is
 * taken). */
static int
sg_spool_rename(const char *from, const char *to, const char **call)
{
    *call = "renameat2()";
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) {
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS) {
        return -1;
    }
    *call = "link()";
    if (link(from, to) == -1) {
        return -1;
    }
    /* Stored under its new name already: a failure here leaves a second
     * name in tmp/, which Maildir readers never deliver from. */
    (void) unlink(from);
    return 0;
}

/* Courier's "R" part: a random number that makes a name unique when the
 * clock, the pid and the delivery count do not (a clock set back, a pid
 * used again). */
static uint64_t
sg_spool_random(unsigned attempt)
{
    uint64_t         r;
    struct timespec  ts;

    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) == (ssize_t) sizeof(r)) {
        return r;
    }
    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t) ts.tv_nsec << 20) ^ (uint64_t) ts.tv_sec
           ^ ((uint64_t) getpid() << 40) ^ attempt;
}

int
sg_spool_move(const char *tmp_path, char *new_path, size_t size,
    const char **call)
{
    char      name[PATH_MAX];
    char     *base, *at;
    size_t    len = strlen(new_path), head;
    unsigned  i;
    int       n;

    if (sg_spool_rename(tmp_path, new_path, call) == 0) {
        return 0;
    }
    if (errno != EEXIST || len >= sizeof(name)) {
        return errno;
    }
    /* Taken: an accepted message must not be replaced, so the name gets
     * a random part after "M...P...Q...", before the host name. */
    memcpy(name, new_path, len + 1);
    base = strrchr(name, '/');
    base = base ? base + 1 : name;
    at = strchr(base, '.');
    at = at ? strchr(at + 1, '.') : NULL;
    head = at ? (size_t) (at - name) : len;
    for (i = 0; i < SG_SPOOL_MOVE_TRIES; i++) {
        n = snprintf(new_path, size, "%.*sR%016llx%s", (int) head, name,
                     (unsigned long long) sg_spool_random(i), name + head);
        if (n < 0 || (size_t) n >= size) {
            memcpy(new_path, name, len + 1);
            *call = "snprintf()";
            return ENAMETOOLONG;
        }
        if (sg_spool_rename(tmp_path, new_path, call) == 0) {
            return 0;
        }
        if (errno != EEXIST) {
            return errno;
        }
    }
    return EEXIST;
}

/* Close and remove whatever exists of an uncommitted file. */
static void
sg_spool_remove(sg_spool_file_t *f)
{
    if (f->fd != -1) {
        (void) close(f->fd);
        f->fd = -1;
    }
    if (f->tmp_exists) {
        (void) unlink(f->tmp_path);
        f->tmp_exists = 0;
    }
}

static void
sg_spool_commit(sg_spool_file_t *f)
{
    size_t       n = strlen(f->new_path);
    int          dfd, rc, err;
    const char  *call;

    if (fsync(f->fd) == -1) {
        sg_spool_fail(f, "fsync()", errno);
        return;
    }
    rc = close(f->fd);
    f->fd = -1;
    if (rc == -1) {
        sg_spool_fail(f, "close()", errno);
        return;
    }
    (void) snprintf(f->new_path + n, sizeof(f->new_path) - n, ",S=%llu",
                    (unsigned long long) f->size);
    err = sg_spool_move(f->tmp_path, f->new_path, sizeof(f->new_path),
                        &call);
    if (err) {
        sg_spool_fail(f, call, err);
        return;
    }
    f->tmp_exists = 0;
    /* The rename is durable only once the directory is. */
    dfd = open(f->new_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd == -1 || fsync(dfd) == -1) {
        sg_spool_fail(f, dfd == -1 ? "open()" : "fsync()", errno);
        if (dfd != -1) {
            (void) close(dfd);
        }
        /* Not known to be stored: the client will try again, so the
         * file must not stay to be delivered twice. */
        (void) unlink(f->new_path);
        return;
    }
    (void) close(dfd);
    f->committed = 1;
}

/* Create the file in DIR/tmp, never over another, and write head;
 * first, with need_free, make sure that much room is left. */
static void
sg_spool_open(sg_spool_file_t *f, const u_char *head, size_t len)
{
    struct statvfs  vfs;

    if (f->need_free > 0) {
        if (statvfs(f->new_dir, &vfs) == -1) {
            sg_spool_fail(f, "statvfs()", errno);
            return;
        }
        /* what an unprivileged user may take: the workers' */
        f->free = (int64_t) sg_min((uint64_t) vfs.f_bavail
                                   * (uint64_t) vfs.f_frsize,
                                   (uint64_t) INT64_MAX);
        if (f->free < f->need_free) {
            f->low = 1;
            sg_spool_fail(f, "statvfs()", ENOSPC);
            return;
        }
    }
    f->fd = open(f->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (f->fd == -1) {
        sg_spool_fail(f, "open()", errno);
        return;
    }
    f->tmp_exists = 1;
    sg_spool_write_all(f, head, len);
}

static void
sg_spool_work(sg_task_t *t)
{
    sg_spool_file_t  *f = t->data;

    if ((f->ops & SG_SPOOL_OP_OPEN) && f->err == 0) {
        sg_spool_open(f, f->head, f->head_len);
        free(f->head);
        f->head = NULL;
    }
    if ((f->ops & SG_SPOOL_OP_WRITE) && f->err == 0) {
        sg_spool_write_all(f, f->io, f->io_len);
    }
    if ((f->ops & SG_SPOOL_OP_COMMIT) && f->err == 0) {
        sg_spool_commit(f);
    }
    if ((f->ops & SG_SPOOL_OP_ABORT) || f->err) {
        sg_spool_remove(f);
    }
}

int
sg_spool_file_write_now(sg_spool_file_t *f, const u_char *head,
    size_t hlen, const u_char *body, size_t blen)
{
    if (f->err == 0) {
        sg_spool_open(f, head, hlen);
        sg_spool_write_all(f, body, blen);
    }
    if (f->err == 0) {
        sg_spool_commit(f);
    }
    if (f->err) {
        sg_spool_remove(f);
        return SG_ERROR;
    }
    return SG_OK;
}

/* In the event loop. */

static void sg_spool_done(sg_task_t *t);
static void sg_spool_destroy(sg_task_t *t);

static int
sg_spool_post(sg_spool_file_t *f, unsigned ops)
{
    sg_log_t  *log = f->log ? f->log : sg_cycle->log;
    int        rc;

    f->ops = ops;
    if (ops & SG_SPOOL_OP_WRITE) {
        f->io = f->fill;
        f->io_len = f->fill_len;
        f->fill = f->fill == f->buf[0] ? f->buf[1] : f->buf[0];
        f->fill_len = 0;
    }
    f->task.work = sg_spool_work;
    f->task.done = sg_spool_done;
    f->task.destroy = sg_spool_destroy;
    rc = sg_task_post(&f->task, log);
    if (rc != SG_OK) {
        /* logged by the pool; the session answers 451 */
        sg_spool_fail(f, "posting to the thread pool", EAGAIN);
        return SG_ERROR;
    }
    f->busy = 1;
    return SG_OK;
}

/* Free f, first removing on the thread pool what is left of it. */
static void
sg_spool_finish(sg_spool_file_t *f)
{
    if (f->fd != -1 || f->tmp_exists) {
        if (sg_spool_post(f, SG_SPOOL_OP_ABORT) == SG_OK) {
            sg_task_cancel(&f->task);       /* destroy() frees it */
            return;
        }
        /* The pool cannot take it: better a blocking unlink here than
         * a file nobody will remove. */
        sg_spool_remove(f);
    }
    free(f->head);
    free(f);
}

static void
sg_spool_done(sg_task_t *t)
{
    sg_spool_file_t  *f = t->data;

    f->completing = 1;
    f->busy = 0;
    if (f->err == 0 && f->want_commit && !(f->ops & SG_SPOOL_OP_COMMIT)
        && sg_spool_post(f, SG_SPOOL_OP_WRITE | SG_SPOOL_OP_COMMIT) == SG_OK)
    {
        return;                        /* the session hears of the commit */
    }
    if (f->handler) {
        f->handler(f, f->data);
    }
}

/* Called for every task that comes back: after done(), or instead of it
 * when the session cancelled the task on leaving. */
static void
sg_spool_destroy(sg_task_t *t)
{
    sg_spool_file_t  *f = t->data;

    if (f->completing) {
        f->completing = 0;
        if (f->released && !f->busy) {
            sg_spool_finish(f);
        }
        return;
    }
    /* Cancelled: the session has gone. */
    f->busy = 0;
    sg_spool_finish(f);
}

int
sg_spool_file_open(sg_spool_file_t *f, u_char *head, size_t len,
    int64_t need_free)
{
    f->head = head;
    f->head_len = len;
    f->need_free = need_free;
    if (f->err) {
        return SG_ERROR;
    }
    return sg_spool_post(f, SG_SPOOL_OP_OPEN);
}

u_char *
sg_spool_file_room(sg_spool_file_t *f, size_t *room)
{
    *room = SG_SPOOL_CHUNK - f->fill_len;
    return f->fill + f->fill_len;
}

void
sg_spool_file_add(sg_spool_file_t *f, size_t n)
{
    SG_BUG_ON(n > SG_SPOOL_CHUNK - f->fill_len);
    f->fill_len += n;
}

int
sg_spool_file_flush(sg_spool_file_t *f)
{
    if (f->err) {
        return SG_ERROR;
    }
    if (f->busy) {
        return SG_AGAIN;
    }
    if (f->fill_len == 0) {
        return SG_OK;
    }
    return sg_spool_post(f, SG_SPOOL_OP_WRITE);
}

int
sg_spool_file_commit(sg_spool_file_t *f)
{
    if (f->err) {
        return SG_ERROR;
    }
    f->want_commit = 1;
    if (f->busy) {
        return SG_OK;                  /* done() posts it */
    }
    return sg_spool_post(f, SG_SPOOL_OP_WRITE | SG_SPOOL_OP_COMMIT);
}

void
sg_spool_file_release(sg_spool_file_t *f)
{
    f->released = 1;
    f->handler = NULL;
    f->log = NULL;
    if (f->busy) {
        sg_task_cancel(&f->task);      /* destroy() finishes it */
        return;
    }
    if (f->completing) {
        return;                        /* inside done(): destroy() is next */
    }
    sg_spool_finish(f);
}
