/*
 * sg_status_queue.h: the messages waiting in the forwarding spools, as
 * JSON (GET /queue).  Blocking file I/O: run on the thread pool.
 */
#ifndef SG_STATUS_QUEUE_H
#define SG_STATUS_QUEUE_H

#include "sg_status_parse.h"            /* sg_status_queue_action_e */

typedef struct {
    char    dir[PATH_MAX];          /* the spool's directory */
    char    upstream[256];          /* the group that forwards it */
} sg_status_queue_spool_t;

/* {"spools": [{"directory", "upstream", "queued", "held", "listed",
 * "messages": [{"id", "arrival", "next_try", "size", "warned", "held",
 * "sender", "recipients"} or with "error"]}]}: at most max messages a
 * spool, those waiting first (the next due first), then those held.
 * malloc'd text, or NULL. */
char *sg_status_queue_json(const sg_status_queue_spool_t *spools, size_t n,
    size_t max);

/* Do action (remove, hold or release) to the message whose queue id is
 * id, in the spool that has it (its index in *which), waiting or held:
 * SG_OK; SG_DONE when it is
 * held (or waiting) already; SG_DECLINED when no spool has it; SG_BUSY
 * when the forwarder is delivering it (its file is locked); SG_ERROR
 * with errno. */
int sg_status_queue_act(const sg_status_queue_spool_t *spools, size_t n,
    const char *id, sg_status_queue_action_e action, size_t *which);

/* GET /queue/ID: the message as JSON (as in the listing, with its
 * "attributes", "message_size", and "headers": [[name, value]...] of its
 * header section, "headers_cut" when not all of it was read), malloc'd;
 * *rc SG_OK, SG_DECLINED (NULL: no spool has it, waiting or held), or
 * SG_ERROR (NULL, errno). */
char *sg_status_queue_show(const sg_status_queue_spool_t *spools, size_t n,
    const char *id, int *rc, size_t *which);

#endif /* SG_STATUS_QUEUE_H */
