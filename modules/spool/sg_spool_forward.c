/*
 * sg_spool_forward.c: what the forwarder's process writes into a
 * forwarding spool: a delivery status notification for a message it
 * gives up on, and a queued message rewritten to list only the
 * recipients still to be tried.
 *
 * Both write a new file in DIR/tmp and make it durable before it takes
 * its place in DIR/new, as a stored message is (see sg_spool_store.c):
 * a crash leaves either the old state or the new one, never a half
 * written file in DIR/new.  They block on the disk, which only the
 * forwarder's process, serving no client, may do.
 */
#include "sg_spool_int.h"
#include "sg_spool_queue.h"
#include <fcntl.h>

#define SG_SPOOL_COPY  65536

int
sg_spool_bounce(sg_spool_t *sp, sg_log_t *log,
    const struct sg_spool_dsn_s *d, const sg_str_t *attrs, char *id,
    size_t idlen)
{
    sg_spool_file_t  *f;
    sg_spool_dsn_t    dsn = *d;
    u_char           *body = NULL, *head = NULL, *p, *last;
    size_t            blen, hsize;
    const char       *call;
    int               rc = SG_ERROR, err;

    f = sg_spool_file_create(sp, log, NULL, NULL);
    if (f == NULL) {
        return SG_ERROR;
    }
    dsn.dsn_id.data = (u_char *) sg_spool_file_id(f);
    dsn.dsn_id.len = strlen(sg_spool_file_id(f));
    body = sg_spool_dsn_compose(&dsn, &blen);
    hsize = 512 + d->sender.len + attrs->len + d->host.len;
    head = sg_alloc(hsize, log);
    if (body == NULL || head == NULL) {
        goto done;
    }
    p = head;
    last = head + hsize;
    p = sg_slprintf(p, last, "Return-Path: <>\r\nX-Original-To: %.*s\r\n",
                    SG_STR_ARG(&d->sender));
    if (attrs->len) {
        p = sg_slprintf(p, last, "%s%.*s\r\n", SG_SPOOL_FORWARD_HEADER,
                        SG_STR_ARG(attrs));
    }
    p = sg_slprintf(p, last, "Received: by %.*s (smtpgate) id %s;\r\n\t",
                    SG_STR_ARG(&d->host), sg_spool_file_id(f));
    p = sg_spool_format_date(p, last - 2, d->now);
    *p++ = '\r';
    *p++ = '\n';
    if (sg_spool_file_write_now(f, head, (size_t) (p - head), body, blen)
        != SG_OK)
    {
        err = sg_spool_file_error(f, &call);
        sg_log_error(SG_LOG_ERR, log, err, "spool \"%.*s\": %s failed for "
                     "the notification to <%.*s> about message %.*s",
                     SG_STR_ARG(&sp->dir), call, SG_STR_ARG(&d->sender),
                     SG_STR_ARG(&d->queue_id));
        goto done;
    }
    (void) snprintf(id, idlen, "%s", sg_spool_file_id(f));
    rc = SG_OK;

done:
    free(head);
    free(body);
    sg_spool_file_release(f);
    return rc;
}

static int
sg_spool_write_fd(int fd, const u_char *p, size_t n)
{
    ssize_t  w;

    while (n) {
        w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t) w;
        } else if (w == 0 || errno != EINTR) {
            return w == 0 ? EIO : errno;
        }
    }
    return 0;
}

/* The new head: Return-Path, the recipients kept, the attributes. */
static u_char *
sg_spool_requeue_head(const sg_spool_envelope_t *env, const bool *keep,
    sg_log_t *log, size_t *len)
{
    u_char  *head, *p, *last;
    size_t   size, i;

    size = 128 + env->sender.len + env->attrs.len;
    for (i = 0; i < env->nrcpts; i++) {
        size += sizeof("X-Original-To: \r\n") + env->rcpts[i].len;
    }
    head = sg_alloc(size, log);
    if (head == NULL) {
        return NULL;
    }
    p = head;
    last = head + size;
    p = sg_slprintf(p, last, "Return-Path: <%.*s>\r\n",
                    SG_STR_ARG(&env->sender));
    for (i = 0; i < env->nrcpts; i++) {
        if (keep[i]) {
            p = sg_slprintf(p, last, "X-Original-To: %.*s\r\n",
                            SG_STR_ARG(&env->rcpts[i]));
        }
    }
    if (env->attrs.len) {
        p = sg_slprintf(p, last, "%s%.*s\r\n", SG_SPOOL_FORWARD_HEADER,
                        SG_STR_ARG(&env->attrs));
    }
    *len = (size_t) (p - head);
    return head;
}

int
sg_spool_requeue(sg_spool_t *sp, sg_log_t *log, const char *path, int fd,
    const struct sg_spool_envelope_s *env, const bool *keep)
{
    char          tmp[PATH_MAX], dir[PATH_MAX];
    const char   *base, *call = "malloc()";
    u_char       *head, *buf = NULL;
    size_t        hlen;
    off_t         off = (off_t) env->body;
    ssize_t       n;
    int           out = -1, dfd, err = ENOMEM;

    base = strrchr(path, '/');
    base = base ? base + 1 : path;
    (void) snprintf(tmp, sizeof(tmp), "%s/tmp/%s.requeue",
                    (char *) sp->dir.data, base);
    (void) snprintf(dir, sizeof(dir), "%s/new", (char *) sp->dir.data);

    head = sg_spool_requeue_head(env, keep, log, &hlen);
    buf = sg_alloc(SG_SPOOL_COPY, log);
    if (head == NULL || buf == NULL) {
        goto failed;
    }
    call = "open()";
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out == -1) {
        err = errno;
        goto failed;
    }
    call = "write()";
    err = sg_spool_write_fd(out, head, hlen);
    while (err == 0) {
        n = pread(fd, buf, SG_SPOOL_COPY, off);
        if (n == 0) {
            break;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            call = "pread()";
            err = errno;
            break;
        }
        off += n;
        err = sg_spool_write_fd(out, buf, (size_t) n);
    }
    if (err) {
        goto failed;
    }
    call = "fsync()";
    if (fsync(out) == -1) {
        err = errno;
        goto failed;
    }
    call = "close()";
    n = close(out);
    out = -1;
    if (n == -1) {
        err = errno;
        goto failed;
    }
    /* Replacing is the point here: the file is the same message, with
     * fewer recipients left. */
    call = "rename()";
    if (rename(tmp, path) == -1) {
        err = errno;
        goto failed;
    }
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd == -1 || fsync(dfd) == -1) {
        /* The file is in place; only its durability is in doubt, and
         * the old one listed more recipients, never fewer. */
        sg_log_error(SG_LOG_WARN, log, errno, "spool \"%.*s\": fsync() of "
                     "\"%s\" failed", SG_STR_ARG(&sp->dir), dir);
    }
    if (dfd != -1) {
        (void) close(dfd);
    }
    free(head);
    free(buf);
    return SG_OK;

failed:
    sg_log_error(SG_LOG_ERR, log, err, "spool \"%.*s\": %s failed while "
                 "rewriting \"%s\" with the recipients left",
                 SG_STR_ARG(&sp->dir), call, base);
    if (out != -1) {
        (void) close(out);
    }
    (void) unlink(tmp);
    free(head);
    free(buf);
    return SG_ERROR;
}
