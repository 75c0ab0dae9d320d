/*
 * sg_event.c: the epoll event loop, timers and posted events (see
 * sg_event.h).
 *
 * Timers live in a binary min-heap of event pointers; each event knows
 * its slot, so deleting a timer is O(log n).  The epoll data pointer is
 * the connection with its "instance" bit in the low bit: taking a slot
 * for a new connection flips the bit, so an event already fetched for an
 * old use of the same slot is recognised as stale and dropped (and one
 * for a slot closed and not yet reused, by its fd of -1).
 */
#include "sg_core.h"
#include <sys/epoll.h>

#define SG_EPOLL_EVENTS  512

static int                  sg_ep = -1;
static struct epoll_event  *sg_ep_events;
static sg_event_t         **sg_timers;
static size_t               sg_timers_n;
static size_t               sg_timers_cap;
static sg_event_t          *sg_posted_head;
static sg_event_t          *sg_posted_tail;

/* Signals stay blocked except while waiting in epoll_pwait(), so a signal
 * can never slip in between checking the flags and going to sleep. */
sigset_t                    sg_event_wait_sigmask;

int
sg_event_init(sg_cycle_t *cycle)
{
    sg_ep = epoll_create1(EPOLL_CLOEXEC);
    if (sg_ep == -1) {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno, "epoll_create1() failed");
        return SG_ERROR;
    }
    sg_ep_events = sg_alloc(sizeof(struct epoll_event) * SG_EPOLL_EVENTS,
                            cycle->log);
    sg_timers_cap = 2 * cycle->connection_n + 64;
    sg_timers = sg_alloc(sizeof(sg_event_t *) * sg_timers_cap, cycle->log);
    if (sg_ep_events == NULL || sg_timers == NULL) {
        return SG_ERROR;
    }
    sg_timers_n = 0;
    return SG_OK;
}

void
sg_event_done(sg_cycle_t *cycle)
{
    (void) cycle;
    if (sg_ep != -1) {
        close(sg_ep);
        sg_ep = -1;
    }
}

int
sg_event_add_conn(sg_connection_t *c)
{
    struct epoll_event  ee;

    ee.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ee.data.ptr = (void *) ((uintptr_t) c | c->instance);
    if (epoll_ctl(sg_ep, EPOLL_CTL_ADD, c->fd, &ee) == -1) {
        sg_log_error(SG_LOG_ALERT, c->log, errno,
                     "epoll_ctl(ADD, %d) failed", c->fd);
        return SG_ERROR;
    }
    return SG_OK;
}

int
sg_event_del_conn(sg_connection_t *c)
{
    struct epoll_event  ee;

    memset(&ee, 0, sizeof(ee));
    if (epoll_ctl(sg_ep, EPOLL_CTL_DEL, c->fd, &ee) == -1) {
        return SG_ERROR;
    }
    return SG_OK;
}

int
sg_event_add_listening(sg_listening_t *ls)
{
    struct epoll_event  ee;
    sg_connection_t    *c = ls->connection;

    ee.events = EPOLLIN;
#if (SG_HAVE_EPOLLEXCLUSIVE)
    if (!ls->reuseport) {
        ee.events |= EPOLLEXCLUSIVE;    /* wake one worker per connection */
    }
#endif
    ee.data.ptr = (void *) ((uintptr_t) c | c->instance);
    if (epoll_ctl(sg_ep, EPOLL_CTL_ADD, c->fd, &ee) == -1) {
        sg_log_error(SG_LOG_ALERT, c->log, errno,
                     "epoll_ctl(ADD, listening %.*s) failed",
                     SG_STR_ARG(&ls->addr.name));
        return SG_ERROR;
    }
    return SG_OK;
}

int
sg_event_del_listening(sg_listening_t *ls)
{
    return sg_event_del_conn(ls->connection);
}

/* Timer heap. */

static void
sg_timer_swap(size_t a, size_t b)
{
    sg_event_t  *t = sg_timers[a];

    sg_timers[a] = sg_timers[b];
    sg_timers[b] = t;
    sg_timers[a]->timer_index = a + 1;
    sg_timers[b]->timer_index = b + 1;
}

static void
sg_timer_up(size_t i)
{
    while (i > 0) {
        size_t  parent = (i - 1) / 2;

        if (sg_timers[parent]->timer_key <= sg_timers[i]->timer_key) {
            break;
        }
        sg_timer_swap(i, parent);
        i = parent;
    }
}

static void
sg_timer_down(size_t i)
{
    for ( ;; ) {
        size_t  l = 2 * i + 1, r = l + 1, m = i;

        if (l < sg_timers_n
            && sg_timers[l]->timer_key < sg_timers[m]->timer_key)
        {
            m = l;
        }
        if (r < sg_timers_n
            && sg_timers[r]->timer_key < sg_timers[m]->timer_key)
        {
            m = r;
        }
        if (m == i) {
            return;
        }
        sg_timer_swap(i, m);
        i = m;
    }
}

void
sg_event_del_timer(sg_event_t *ev)
{
    size_t  i;

    if (ev->timer_index == 0) {
        return;
    }
    i = ev->timer_index - 1;
    ev->timer_index = 0;
    sg_timers_n--;
    if (i == sg_timers_n) {
        return;
    }
    sg_timers[i] = sg_timers[sg_timers_n];
    sg_timers[i]->timer_index = i + 1;
    sg_timer_up(i);
    sg_timer_down(sg_timers[i]->timer_index - 1);
}

void
sg_event_add_timer(sg_event_t *ev, sg_msec_t ms)
{
    sg_event_t  **n;

    sg_event_del_timer(ev);
    if (sg_timers_n == sg_timers_cap) {
        n = realloc(sg_timers, 2 * sg_timers_cap * sizeof(sg_event_t *));
        SG_BUG_ON(n == NULL);         /* cannot lose a timer silently */
        sg_timers = n;
        sg_timers_cap *= 2;
    }
    ev->timer_key = sg_current_msec + ms;
    ev->timedout = 0;
    sg_timers[sg_timers_n] = ev;
    ev->timer_index = ++sg_timers_n;
    sg_timer_up(sg_timers_n - 1);
}

size_t
sg_event_timers_pending(void)
{
    return sg_timers_n;
}

static void
sg_event_expire_timers(void)
{
    sg_event_t  *ev;

    while (sg_timers_n && sg_timers[0]->timer_key <= sg_current_msec) {
        ev = sg_timers[0];
        sg_event_del_timer(ev);
        ev->timedout = 1;
        ev->handler(ev);
    }
}

/* Posted events. */

void
sg_event_post(sg_event_t *ev)
{
    if (ev->posted) {
        return;
    }
    ev->posted = 1;
    ev->posted_next = NULL;
    if (sg_posted_tail) {
        sg_posted_tail->posted_next = ev;
    } else {
        sg_posted_head = ev;
    }
    sg_posted_tail = ev;
}

void
sg_event_unpost(sg_event_t *ev)
{
    sg_event_t  **pp, *prev = NULL;

    if (!ev->posted) {
        return;
    }
    for (pp = &sg_posted_head; *pp; prev = *pp, pp = &(*pp)->posted_next) {
        if (*pp == ev) {
            *pp = ev->posted_next;
            if (sg_posted_tail == ev) {
                sg_posted_tail = prev;
            }
            break;
        }
    }
    ev->posted = 0;
}

static void
sg_event_run_posted(void)
{
    sg_event_t  *ev;

    while ((ev = sg_posted_head) != NULL) {
        sg_posted_head = ev->posted_next;
        if (sg_posted_head == NULL) {
            sg_posted_tail = NULL;
        }
        ev->posted = 0;
        ev->handler(ev);
    }
}

static void
sg_event_dispatch(struct epoll_event *e)
{
    sg_connection_t  *c;
    unsigned          instance, revents;

    instance = (uintptr_t) e->data.ptr & 1;
    c = (sg_connection_t *) ((uintptr_t) e->data.ptr & ~(uintptr_t) 1);
    if (c->fd == -1 || c->instance != instance) {
        return;                                   /* stale */
    }
    revents = e->events;
    if (revents & (EPOLLERR | EPOLLHUP)) {
        revents |= EPOLLIN | EPOLLOUT;
        c->epoll_err = 1;
    }
    if (revents & EPOLLIN) {
        c->read->ready = 1;
        if (revents & EPOLLRDHUP) {
            c->read->pending_eof = 1;
        }
        c->read->handler(c->read);
    }
    if ((revents & EPOLLOUT) && !c->is_listening) {
        if (c->fd == -1 || c->instance != instance) {
            return;                               /* closed by reader */
        }
        c->write->ready = 1;
        c->write->handler(c->write);
    }
}

void
sg_event_process(sg_cycle_t *cycle)
{
    int        n, i, timeout;
    sg_msec_t  delta;

    (void) cycle;
    timeout = -1;
    if (sg_posted_head) {
        timeout = 0;
    } else if (sg_timers_n) {
        delta = sg_timers[0]->timer_key - sg_current_msec;
        timeout = delta > 0 ? (int) sg_min(delta, INT_MAX) : 0;
    }

    n = epoll_pwait(sg_ep, sg_ep_events, SG_EPOLL_EVENTS, timeout,
                   &sg_event_wait_sigmask);
    sg_time_update();
    if (n == -1) {
        if (errno != EINTR) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno,
                         "epoll_pwait() failed");
        }
        n = 0;
    }
    for (i = 0; i < n; i++) {
        sg_event_dispatch(&sg_ep_events[i]);
    }
    sg_event_expire_timers();
    sg_event_run_posted();
}
