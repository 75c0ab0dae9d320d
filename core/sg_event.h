/*
 * sg_event.h: the per-worker event loop: epoll (edge-triggered for
 * connections, level-triggered with EPOLLEXCLUSIVE for listeners), a
 * timer heap, and a queue of posted events run after I/O.
 *
 * Contract with handlers: an event is "ready" until an I/O call on it
 * returns SG_AGAIN (edge-triggered epoll reports a change only once), so
 * a read handler reads until SG_AGAIN, and a handler may be called with
 * nothing to do.  Handlers may close their connection; the loop then
 * skips that connection's remaining events.
 */
#ifndef SG_EVENT_H
#define SG_EVENT_H

typedef void (*sg_event_handler_pt)(sg_event_t *ev);

struct sg_event_s {
    void                 *data;
    sg_event_handler_pt   handler;
    sg_log_t             *log;

    sg_msec_t             timer_key;
    size_t                timer_index;    /* heap slot + 1; 0: no timer */
    sg_event_t           *posted_next;

    unsigned              write:1;
    unsigned              ready:1;
    unsigned              eof:1;
    unsigned              error:1;
    unsigned              timedout:1;
    unsigned              posted:1;
    unsigned              pending_eof:1;  /* peer shut down its side */
    unsigned              accept:1;
};

#define sg_event_timer_set(ev)  ((ev)->timer_index != 0)

#include <signal.h>

extern sigset_t  sg_event_wait_sigmask;

int sg_event_init(sg_cycle_t *cycle);
void sg_event_done(sg_cycle_t *cycle);

int sg_event_add_conn(sg_connection_t *c);
int sg_event_del_conn(sg_connection_t *c);
int sg_event_add_listening(sg_listening_t *ls);
int sg_event_del_listening(sg_listening_t *ls);

/* One iteration: wait for I/O or the next timer, then run handlers,
 * expired timers and posted events. */
void sg_event_process(sg_cycle_t *cycle);

void sg_event_add_timer(sg_event_t *ev, sg_msec_t ms);
void sg_event_del_timer(sg_event_t *ev);
size_t sg_event_timers_pending(void);

void sg_event_post(sg_event_t *ev);
void sg_event_unpost(sg_event_t *ev);

#endif /* SG_EVENT_H */
