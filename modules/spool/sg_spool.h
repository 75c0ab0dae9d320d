/*
 * sg_spool.h: the spool, smtpgate's embedded backend: instead of
 * relaying an authenticated session, smtpgate takes the message itself
 * and stores it durably in a Maildir ("proxy_pass spool:DIR").
 *
 * What other modules call: sg_spool_create() while the configuration
 * loads, to name a spool directory; sg_spool_start() in place of a
 * relay's start().  Everything else is private to modules/spool/.
 */
#ifndef SG_SPOOL_H
#define SG_SPOOL_H

#include "sg_smtp.h"

typedef struct sg_spool_s  sg_spool_t;

extern sg_module_t  sg_spool_module;

/*
 * At configuration time.  dir is the path after "spool:"; a relative
 * one is taken against the prefix, like the other files smtpgate
 * writes.  Creates DIR (its parent must exist) and DIR/tmp, DIR/new,
 * DIR/cur where missing, and checks that they are directories smtpgate
 * can write (when the master runs as root: that the workers' user can,
 * checked once the whole configuration is read).  On error reports it
 * with sg_conf_error() ("FILE:LINE: ...") and returns NULL.  The same
 * directory named twice gives the same object.  Works under -t.
 */
sg_spool_t *sg_spool_create(sg_conf_t *cf, const sg_str_t *dir);

/*
 * Take over an authenticated session exactly like a relay's start()
 * (sg_smtp_relay_t): calls sg_smtp_relay_ready(s) and then owns the
 * client connection's handlers, or sg_smtp_relay_failed(s).
 */
void sg_spool_start(sg_smtp_session_t *s, sg_spool_t *sp);

/*
 * Forwarding ("server spool:DIR forward" in an upstream group): the
 * spool keeps what it stores in DIR/new for the proxy's forwarder,
 * with the envelope of sg_spool_queue.h at the head of each file.
 */

/* At configuration time: DIR is forwarded to the group named group (a
 * second group for the same DIR is an error). */
int sg_spool_set_forward(sg_conf_t *cf, sg_spool_t *sp,
    const sg_str_t *group);
bool sg_spool_forwarding(sg_spool_t *sp);
/* What the forwarder counts of a forwarding spool, in shared memory
 * that a reload keeps (the status module shows it).  Written by the
 * forwarder alone, with atomic stores and adds. */
typedef struct {
    uint64_t     queued;        /* files in DIR/new at the last listing */
    uint64_t     oldest;        /* when the oldest of them arrived (Unix
                                   time), 0: none */
    uint64_t     listed;        /* when that listing was made */
    uint64_t     delivered;     /* recipients delivered */
    uint64_t     deferred;      /* recipients deferred, once per try */
    uint64_t     failed;        /* recipients given up on */
    uint64_t     reports;       /* notifications queued */
    uint64_t     forwarder;     /* the pid of the forwarder that runs
                                   now, for "POST /queue/flush" */
    uint64_t     free;          /* bytes free on its file system for
                                   the workers' user, at the listing */
    uint64_t     held;          /* files in DIR/hold, at the listing */
} sg_spool_stats_t;

/* sp's counters, or NULL when sp does not forward. */
sg_spool_stats_t *sg_spool_stats(sg_spool_t *sp);

/* Where "forward" was given, for errors found later. */
const sg_str_t *sg_spool_forward_file(sg_spool_t *sp, size_t *line);
/* DIR: absolute, NUL-terminated. */
const sg_str_t *sg_spool_dir(sg_spool_t *sp);

/* The rest is for the forwarder's own process, where blocking on the
 * disk is allowed, and logs to log.  Each returns SG_OK or SG_ERROR
 * (logged, naming the call that failed and the spool). */

struct sg_spool_dsn_s;
/*
 * Queue a delivery status notification (d: sg_spool_dsn_t, its dsn_id
 * left empty: the notification's own queue id is used) from the null
 * sender to d->sender, presented with attrs (the failed message's
 * X-Smtpgate-Forward value).  Its queue id is written to id.
 */
int sg_spool_bounce(sg_spool_t *sp, sg_log_t *log,
    const struct sg_spool_dsn_s *d, const sg_str_t *attrs, char *id,
    size_t idlen);

/*
 * Replace the queued file path (open as fd) by a copy that lists only
 * the recipients i of env for which keep[i] is true: written in DIR/tmp,
 * fsync'ed, renamed over path, DIR/new fsync'ed.  env is path's
 * envelope (sg_spool_envelope_t).
 */
struct sg_spool_envelope_s;
int sg_spool_requeue(sg_spool_t *sp, sg_log_t *log, const char *path,
    int fd, const struct sg_spool_envelope_s *env, const bool *keep);

#endif /* SG_SPOOL_H */
