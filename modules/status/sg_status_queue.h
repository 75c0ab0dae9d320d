/*
 * sg_status_queue.h: the messages waiting in the forwarding spools, as
 * JSON (GET /queue).  Blocking file I/O: run on the thread pool.
 */
#ifndef SG_STATUS_QUEUE_H
#define SG_STATUS_QUEUE_H

typedef struct {
    char    dir[PATH_MAX];          /* the spool's directory */
    char    upstream[256];          /* the group that forwards it */
} sg_status_queue_spool_t;

/* {"spools": [{"directory", "upstream", "queued", "listed", "messages":
 * [{"id", "arrival", "next_try", "size", "warned", "sender",
 * "recipients"} or with "error"]}]}: at most max messages a spool, the
 * next due first.  malloc'd text, or NULL. */
char *sg_status_queue_json(const sg_status_queue_spool_t *spools, size_t n,
    size_t max);

/* Remove the message whose queue id is id from the spool that has it
 * (its index in *which): SG_OK; SG_DECLINED when no spool has it;
 * SG_BUSY when the forwarder is delivering it (its file is locked);
 * SG_ERROR with errno. */
int sg_status_queue_remove(const sg_status_queue_spool_t *spools,
    size_t n, const char *id, size_t *which);

#endif /* SG_STATUS_QUEUE_H */
