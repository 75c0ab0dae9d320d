/*
 * sg_spool_int.h: what the files of the spool module share: the spool
 * object, its directives, and the storage layer that writes one message
 * on the thread pool (sg_spool_store.c).
 */
#ifndef SG_SPOOL_INT_H
#define SG_SPOOL_INT_H

#include "sg_spool.h"
#include <sys/stat.h>

/* Each of the two buffers a message streams through (see
 * sg_spool_store.c): the session fills one while a thread writes the
 * other, so a session holds at most twice this. */
#define SG_SPOOL_CHUNK  32768

struct sg_spool_s {
    sg_str_t     dir;            /* absolute, NUL-terminated, no '/' at
                                    the end */
    sg_str_t     file;           /* where it was first named */
    size_t       line;
    dev_t        dev;
    ino_t        ino;
    unsigned     created;        /* which of DIR, tmp, new, cur this
                                    load made (bit i: sg_spool_subdirs) */
    unsigned     forward:1;      /* "server spool:DIR forward" */
    sg_str_t     forward_group;  /* the upstream it is forwarded to */
    sg_str_t     forward_file;
    size_t       forward_line;
    sg_shm_zone_t  *stats;       /* sg_spool_stats_t */
    /* This process's last look at the free space (each message's
     * open), for the check at MAIL. */
    int64_t      free;
    sg_msec_t    free_at;        /* 0: never */
    sg_spool_t  *next;           /* the spools of one configuration */
};

typedef struct {
    int64_t      max_recipients;
    size_t       max_message_size;
    size_t       min_free;       /* spool_min_free; 0: no check */
} sg_spool_conf_t;

/* Storage: one message on its way into DIR/tmp and then DIR/new. */
typedef struct sg_spool_file_s  sg_spool_file_t;

/* Called in the event loop when a write the session waits for, or the
 * commit, has finished (see sg_spool_file_error). */
typedef void (*sg_spool_file_handler_pt)(sg_spool_file_t *f, void *data);

/* Choose the message's unique name and queue id; no I/O yet. */
sg_spool_file_t *sg_spool_file_create(sg_spool_t *sp, sg_log_t *log,
    sg_spool_file_handler_pt handler, void *data);
const char *sg_spool_file_id(sg_spool_file_t *f);
/* The file in DIR/new, once committed. */
const char *sg_spool_file_path(sg_spool_file_t *f);
/* Bytes in the file: the added headers and the message. */
uint64_t sg_spool_file_size(sg_spool_file_t *f);

/* Create DIR/tmp/NAME and write the header block, which the file takes
 * over (malloc'd).  With need_free, the file system must first have that
 * many bytes free for the workers' user, or the open fails with ENOSPC
 * (sg_spool_file_free: low).  Does not wait: data may be added at
 * once. */
int sg_spool_file_open(sg_spool_file_t *f, u_char *head, size_t len,
    int64_t need_free);
/* The bytes free when the open looked (-1: it did not), and whether
 * that was too few. */
int64_t sg_spool_file_free(sg_spool_file_t *f, bool *low);

/* Free room in the buffer being filled; then sg_spool_file_add(n) for
 * the bytes put there. */
u_char *sg_spool_file_room(sg_spool_file_t *f, size_t *room);
void sg_spool_file_add(sg_spool_file_t *f, size_t n);

/* Hand the filled buffer to a thread: SG_OK, SG_AGAIN while the other
 * buffer is still being written (the handler is called when it is), or
 * SG_ERROR (see sg_spool_file_error). */
int sg_spool_file_flush(sg_spool_file_t *f);

/* Write the rest, fsync, rename into DIR/new, fsync DIR/new.  The
 * handler is called when that is done or has failed.  SG_ERROR: failed
 * already. */
int sg_spool_file_commit(sg_spool_file_t *f);

/*
 * Move tmp_path to new_path (a buffer of size bytes) without ever
 * replacing a file there.  When the name is taken, a random part
 * ("R" and 16 hex digits, SG_SPOOL_MOVE_EXTRA bytes) goes into it before
 * the host name and the move is tried again, SG_SPOOL_MOVE_TRIES times;
 * new_path then holds the name used.  Returns 0, or an errno value with
 * *call naming the call that failed.  Blocking: on the thread pool.
 */
#define SG_SPOOL_MOVE_EXTRA  17
#define SG_SPOOL_MOVE_TRIES  8
int sg_spool_move(const char *tmp_path, char *new_path, size_t size,
    const char **call);

/* For a process that may block (the forwarder): open, write head and
 * body, fsync, rename into DIR/new and fsync it, all now.  SG_OK, or
 * SG_ERROR (see sg_spool_file_error; nothing is left behind). */
int sg_spool_file_write_now(sg_spool_file_t *f, const u_char *head,
    size_t hlen, const u_char *body, size_t blen);

bool sg_spool_file_busy(sg_spool_file_t *f);
bool sg_spool_file_committed(sg_spool_file_t *f);
/* The errno of the first failure, and the call that failed; 0 while all
 * is well.  A failed file has already removed its temporary file. */
int sg_spool_file_error(sg_spool_file_t *f, const char **call);

/* The session is done with f: whatever is not committed is removed (on
 * the thread pool, after a write in flight finishes) and f is freed.
 * f must not be used afterwards; its handler is never called again. */
void sg_spool_file_release(sg_spool_file_t *f);

#endif /* SG_SPOOL_INT_H */
