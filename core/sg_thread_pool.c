/*
 * sg_thread_pool.c: the per-worker thread pool (see sg_thread_pool.h).
 *
 * Threads start lazily, in the worker, on the first task.  Finished
 * tasks go on a done queue and an eventfd wakes the event loop, which
 * runs their done() handlers.  Cancellation is a flag read under the
 * same mutex, so a cancelled task is freed exactly once, by the loop.
 * The loop counts the tasks it has posted and not yet seen back, so
 * that a draining worker waits for them (sg_worker_busy()).
 */
#include "sg_core.h"
#include <pthread.h>
#include <sys/eventfd.h>

static pthread_mutex_t   sg_tp_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t    sg_tp_cond = PTHREAD_COND_INITIALIZER;
static sg_task_t        *sg_tp_queue, *sg_tp_queue_tail;
static sg_task_t        *sg_tp_done;
static size_t            sg_tp_waiting;
static int               sg_tp_efd = -1;
static bool              sg_tp_started;
static sg_connection_t  *sg_tp_conn;
static size_t            sg_tp_out;       /* the loop's own: posted, not
                                             yet destroyed */

static void *
sg_tp_thread(void *arg)
{
    sg_task_t  *t;
    uint64_t    one = 1;
    ssize_t     n;
    sigset_t    all;

    (void) arg;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for ( ;; ) {
        pthread_mutex_lock(&sg_tp_lock);
        while (sg_tp_queue == NULL) {
            pthread_cond_wait(&sg_tp_cond, &sg_tp_lock);
        }
        t = sg_tp_queue;
        sg_tp_queue = t->next;
        if (sg_tp_queue == NULL) {
            sg_tp_queue_tail = NULL;
        }
        sg_tp_waiting--;
        pthread_mutex_unlock(&sg_tp_lock);

        t->work(t);

        pthread_mutex_lock(&sg_tp_lock);
        t->next = sg_tp_done;
        sg_tp_done = t;
        pthread_mutex_unlock(&sg_tp_lock);
        n = write(sg_tp_efd, &one, sizeof(one));
        (void) n;                     /* a full counter still wakes us */
    }
    return NULL;
}

static void
sg_tp_complete(sg_event_t *ev)
{
    sg_task_t  *list, *t, *rev = NULL;
    uint64_t    v;

    (void) ev;
    while (read(sg_tp_efd, &v, sizeof(v)) > 0) {
        /* drain */
    }
    sg_tp_conn->read->ready = 0;
    pthread_mutex_lock(&sg_tp_lock);
    list = sg_tp_done;
    sg_tp_done = NULL;
    pthread_mutex_unlock(&sg_tp_lock);
    while (list) {                   /* restore completion order */
        t = list;
        list = t->next;
        t->next = rev;
        rev = t;
    }
    while ((t = rev) != NULL) {
        rev = t->next;
        pthread_mutex_lock(&sg_tp_lock);
        bool cancelled = t->cancelled;
        pthread_mutex_unlock(&sg_tp_lock);
        if (!cancelled) {
            t->done(t);
        }
        t->destroy(t);
        sg_tp_out--;
    }
}

static int
sg_tp_start(sg_log_t *log)
{
    sg_core_conf_t  *ccf = sg_core_conf(sg_cycle);
    pthread_t        tid;
    int              i, rc;

    sg_tp_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sg_tp_efd == -1) {
        sg_log_error(SG_LOG_ALERT, log, errno, "eventfd() failed");
        return SG_ERROR;
    }
    sg_tp_conn = sg_get_connection(sg_tp_efd, sg_cycle->log);
    if (sg_tp_conn == NULL) {
        close(sg_tp_efd);
        sg_tp_efd = -1;
        return SG_ERROR;
    }
    sg_tp_conn->read->handler = sg_tp_complete;
    sg_tp_conn->write->handler = sg_tp_complete;
    if (sg_event_add_conn(sg_tp_conn) != SG_OK) {
        sg_close_connection(sg_tp_conn);
        sg_tp_conn = NULL;
        sg_tp_efd = -1;
        return SG_ERROR;
    }
    for (i = 0; i < ccf->thread_pool_threads; i++) {
        rc = pthread_create(&tid, NULL, sg_tp_thread, NULL);
        if (rc != 0) {
            sg_log_error(SG_LOG_ALERT, log, rc, "pthread_create() failed");
            return i ? SG_OK : SG_ERROR;
        }
        pthread_detach(tid);
    }
    sg_tp_started = true;
    return SG_OK;
}

int
sg_task_post(sg_task_t *t, sg_log_t *log)
{
    sg_core_conf_t  *ccf = sg_core_conf(sg_cycle);

    if (!sg_tp_started && sg_tp_start(log) != SG_OK) {
        return SG_ERROR;
    }
    pthread_mutex_lock(&sg_tp_lock);
    if (sg_tp_waiting >= (size_t) ccf->thread_pool_max_queue) {
        pthread_mutex_unlock(&sg_tp_lock);
        sg_log_error(SG_LOG_ERR, log, 0, "thread pool queue is full "
                     "(%zu tasks waiting): raise \"thread_pool_max_queue\" "
                     "or \"thread_pool_threads\"", sg_tp_waiting);
        return SG_BUSY;
    }
    t->next = NULL;
    t->cancelled = false;
    if (sg_tp_queue_tail) {
        sg_tp_queue_tail->next = t;
    } else {
        sg_tp_queue = t;
    }
    sg_tp_queue_tail = t;
    sg_tp_waiting++;
    pthread_cond_signal(&sg_tp_cond);
    pthread_mutex_unlock(&sg_tp_lock);
    sg_tp_out++;
    return SG_OK;
}

void
sg_task_cancel(sg_task_t *t)
{
    pthread_mutex_lock(&sg_tp_lock);
    t->cancelled = true;
    pthread_mutex_unlock(&sg_tp_lock);
}

size_t
sg_thread_pool_tasks(void)
{
    return sg_tp_out;
}

size_t
sg_thread_pool_internal_connections(void)
{
    return sg_tp_conn != NULL;
}
