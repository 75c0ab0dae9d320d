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

#endif /* SG_SPOOL_H */
