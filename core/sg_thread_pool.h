/*
 * sg_thread_pool.h: a small pool of threads per worker for work that
 * must not stall the event loop (password hashing, spool file I/O).
 *
 * A task is malloc'd by the caller, runs work() on a pool thread, then
 * done() back in the event loop.  A caller that goes away first calls
 * sg_task_cancel(): done() is then never called and the pool frees the
 * task.  Tasks must carry their own copies of what work() reads; the
 * caller's pool may be gone by the time work() runs.
 */
#ifndef SG_THREAD_POOL_H
#define SG_THREAD_POOL_H

typedef struct sg_task_s  sg_task_t;

struct sg_task_s {
    sg_task_t  *next;
    void      (*work)(sg_task_t *t);      /* on a pool thread */
    void      (*done)(sg_task_t *t);      /* in the event loop */
    void      (*destroy)(sg_task_t *t);   /* frees the task */
    void       *data;
    bool        cancelled;
};

/* SG_OK, or SG_BUSY when max_queue tasks are already waiting, or
 * SG_ERROR when the pool could not start (logged). */
int sg_task_post(sg_task_t *t, sg_log_t *log);
void sg_task_cancel(sg_task_t *t);
/* Tasks posted whose destroy() has not run yet, cancelled ones included:
 * their work, such as removing a spool file, is still to be done. */
size_t sg_thread_pool_tasks(void);
size_t sg_thread_pool_internal_connections(void);

#endif /* SG_THREAD_POOL_H */
