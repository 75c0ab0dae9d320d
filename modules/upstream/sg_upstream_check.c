/*
 * sg_upstream_check.c: active SMTP health checks.
 *
 * A probe is the proxy's own handshake (sg_smtp_client): connect,
 * [PROXY header], [TLS], read the greeting (a 421 or any non-220
 * fails), EHLO, [STARTTLS and EHLO again], then QUIT.  Every worker
 * runs a timer per group, but a peer is probed by one worker at a
 * time: the worker claims it in shared memory (probe_pid, probe_seq,
 * probe_at, probe_until) before connecting.  A probe has a deadline of
 * its own, its steps' timeouts added up, and no other worker takes the
 * claim over while its owner is alive and within that deadline; a
 * probe whose claim was taken over all the same (its worker stalled)
 * counts for nothing, so each check counts once.  `fails` failed probes
 * in a row mark the peer down, `passes` good ones mark it up again; the
 * EHLO of each good probe is what smtp_capabilities auto advertises.
 */
#include <signal.h>
#include "sg_upstream.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif

typedef struct {
    sg_smtp_client_t     cl;
    sg_upstream_t       *upstream;
    sg_upstream_peer_t  *peer;
    sg_pool_t           *pool;
    sg_log_t             log;
    sg_event_t           deadline;
    uint32_t             seq;           /* the claim's probe_seq */
} sg_upstream_probe_t;

/* How long past a claim's deadline another worker still waits before
 * taking it over: the owner's timer fires on its next loop turn. */
#define SG_UPSTREAM_CHECK_GRACE  1000

static void sg_upstream_check_timer(sg_event_t *ev);

/* health_check [interval=T] [fails=N] [passes=N] [timeout=T]
 *              [starttls | ssl] [proxy_protocol] */
char *
sg_upstream_health_check(sg_conf_t *cf, sg_upstream_t *u)
{
    sg_str_t             *value = cf->args->elts, v;
    sg_upstream_check_t  *hc;
    int64_t               n;
    size_t                i, eq;

    if (u->check) {
        return sg_conf_duplicate(cf);
    }
    hc = sg_pcalloc(cf->pool, sizeof(sg_upstream_check_t));
    if (hc == NULL) {
        return SG_CONF_ERROR;
    }
    hc->interval = 5000;
    hc->timeout = 5000;
    hc->fails = 1;
    hc->passes = 1;
    for (i = 1; i < cf->args->nelts; i++) {
        if (sg_str_eq(&value[i], "starttls") || sg_str_eq(&value[i], "ssl")) {
#if !(SG_HAVE_SSL_MODULE)
            return sg_conf_error(cf, 0, "\"%.*s\" in \"health_check\" "
                                 "needs the ssl module",
                                 SG_STR_ARG(&value[i]));
#endif
            if (sg_str_eq(&value[i], "ssl")) {
                hc->ssl = 1;
            } else {
                hc->starttls = 1;
            }
            if (hc->ssl && hc->starttls) {
                return sg_conf_error(cf, 0, "\"health_check\" takes "
                                     "\"starttls\" or \"ssl\", not both");
            }
            continue;
        }
        if (sg_str_eq(&value[i], "proxy_protocol")) {
            hc->proxy_protocol = 1;
            continue;
        }
        for (eq = 0; eq < value[i].len && value[i].data[eq] != '='; eq++) {
            /* the parameter's name */
        }
        if (eq == value[i].len) {
            goto invalid;
        }
        v.data = value[i].data + eq + 1;
        v.len = value[i].len - eq - 1;
        if (eq == 8 && memcmp(value[i].data, "interval", 8) == 0) {
            if (sg_parse_time(&v, &n) != SG_OK || n < 100 || n > 86400000) {
                return sg_conf_invalid_value(cf, &value[i], "the interval "
                                             "is a time from 100ms to 1d");
            }
            hc->interval = (sg_msec_t) n;
        } else if (eq == 7 && memcmp(value[i].data, "timeout", 7) == 0) {
            if (sg_parse_time(&v, &n) != SG_OK || n < 1 || n > 3600000) {
                return sg_conf_invalid_value(cf, &value[i], "the timeout "
                                             "is a time from 1ms to 1h");
            }
            hc->timeout = (sg_msec_t) n;
        } else if (eq == 5 && memcmp(value[i].data, "fails", 5) == 0) {
            if (sg_parse_int(&v, &n) != SG_OK || n < 1 || n > 1000) {
                return sg_conf_invalid_value(cf, &value[i], "fails is a "
                                             "number from 1 to 1000");
            }
            hc->fails = n;
        } else if (eq == 6 && memcmp(value[i].data, "passes", 6) == 0) {
            if (sg_parse_int(&v, &n) != SG_OK || n < 1 || n > 1000) {
                return sg_conf_invalid_value(cf, &value[i], "passes is a "
                                             "number from 1 to 1000");
            }
            hc->passes = n;
        } else {
            goto invalid;
        }
    }
    u->check = hc;
    return SG_CONF_OK;

invalid:
    return sg_conf_error(cf, 0, "invalid parameter \"%.*s\" of "
                         "\"health_check\" (expected interval=, fails=, "
                         "passes=, timeout=, starttls, ssl or "
                         "proxy_protocol)",
                         SG_STR_ARG(&value[i]));
}

#if (SG_HAVE_SSL_MODULE)
/* Probes check that STARTTLS works, not whose certificate it is. */
static void *
sg_upstream_check_ssl_ctx(sg_cycle_t *cycle)
{
    static void  *ctx;
    char          err[256];

    if (ctx == NULL) {
        ctx = sg_ssl_client_ctx(cycle->pool, false, NULL, err, sizeof(err));
        if (ctx == NULL) {
            sg_log_error(SG_LOG_ERR, cycle->log, 0, "health checks: %s",
                         err);
        }
    }
    return ctx;
}
#endif

void
sg_upstream_check_start(sg_cycle_t *cycle, sg_upstream_t *u)
{
    u->log = cycle->log;
    u->check_timer.handler = sg_upstream_check_timer;
    u->check_timer.data = u;
    u->check_timer.log = cycle->log;
    /* Soon after start, spread a little over the workers. */
    sg_event_add_timer(&u->check_timer,
                       50 + (sg_msec_t) (sg_pid % 7) * 30);
}

void
sg_upstream_check_stop(sg_upstream_t *u)
{
    sg_event_del_timer(&u->check_timer);
}

/* The longest a probe may take: every step may use the whole timeout
 * (connect, the greeting, EHLO; with ssl the handshake; with starttls
 * STARTTLS, the handshake and EHLO again). */
static sg_msec_t
sg_upstream_check_budget(sg_upstream_check_t *hc)
{
    return (3 + hc->ssl + 3 * hc->starttls) * hc->timeout;
}

/* Whether the probe of st is this one's (with the peer locked). */
static bool
sg_upstream_probe_owns(sg_upstream_probe_t *pr, sg_upstream_state_t *st)
{
    return st->probe_pid == sg_pid && st->probe_seq == pr->seq;
}

/* Whether a worker may start a probe of st now (with the peer locked):
 * nobody probes it, or its prober died or is long past its deadline. */
static bool
sg_upstream_check_free(sg_upstream_state_t *st, sg_msec_t now)
{
    if (st->probe_pid == 0) {
        return true;
    }
    if (st->probe_pid != sg_pid && kill(st->probe_pid, 0) == -1
        && errno == ESRCH)
    {
        return true;
    }
    return now - st->probe_until > SG_UPSTREAM_CHECK_GRACE;
}

static void
sg_upstream_probe_release(sg_upstream_probe_t *pr)
{
    sg_upstream_state_t  *st;

    sg_upstream_lock(pr->upstream);
    st = sg_upstream_state(pr->upstream, pr->peer->index);
    if (sg_upstream_probe_owns(pr, st)) {
        st->probe_pid = 0;
    }
    sg_upstream_unlock(pr->upstream);
}

static void
sg_upstream_probe_free(sg_upstream_probe_t *pr)
{
    sg_pool_t  *pool = pr->pool;

    sg_event_del_timer(&pr->deadline);
    sg_smtp_client_close(&pr->cl);
    sg_pool_destroy(pool);
}

/* The outcome of one probe, into the shared state. */
static void
sg_upstream_probe_result(sg_upstream_probe_t *pr, bool ok, const char *why)
{
    sg_upstream_t        *u = pr->upstream;
    sg_upstream_check_t  *hc = u->check;
    sg_upstream_state_t  *st;
    int                   change = 0;

    sg_upstream_lock(u);
    st = sg_upstream_state(u, pr->peer->index);
    if (!sg_upstream_probe_owns(pr, st)) {
        /* Taken over: the probe that took it counts this check. */
        sg_upstream_unlock(u);
        sg_log_debug(u->log, "upstream %.*s: probe of %.*s taken over, "
                     "not counted", SG_STR_ARG(&u->name),
                     SG_STR_ARG(&pr->peer->addr.name));
        return;
    }
    st->probe_pid = 0;
    if (ok) {
        st->hc_fails = 0;
        st->hc_passes++;
        /* A draining worker of an older configuration does not replace
         * what a newer one learned. */
        if (sg_upstream_generation(u) >= st->caps_generation) {
            st->caps = pr->cl.ehlo.caps;
            st->size = pr->cl.ehlo.size;
            st->caps_generation = sg_upstream_generation(u);
            st->probed = 1;
        }
        if (st->hc_down && st->hc_passes >= (uint32_t) hc->passes) {
            st->hc_down = 0;
            change = 1;
        }
    } else {
        st->hc_passes = 0;
        st->hc_fails++;
        if (!st->hc_down && st->hc_fails >= (uint32_t) hc->fails) {
            st->hc_down = 1;
            change = -1;
        }
    }
    sg_upstream_unlock(u);

    if (change < 0) {
        sg_log_error(SG_LOG_WARN, u->log, 0, "upstream %.*s: server %.*s "
                     "is down: health check failed: %s",
                     SG_STR_ARG(&u->name), SG_STR_ARG(&pr->peer->addr.name),
                     why);
    } else if (change > 0) {
        sg_log_error(SG_LOG_NOTICE, u->log, 0, "upstream %.*s: server %.*s "
                     "is up: health check passed", SG_STR_ARG(&u->name),
                     SG_STR_ARG(&pr->peer->addr.name));
    } else if (!ok) {
        sg_log_error(SG_LOG_INFO, u->log, 0, "upstream %.*s: health check "
                     "of server %.*s failed: %s", SG_STR_ARG(&u->name),
                     SG_STR_ARG(&pr->peer->addr.name), why);
    }
}

static void
sg_upstream_probe_done(sg_smtp_client_t *cl)
{
    sg_upstream_probe_t  *pr = cl->data;
    static const u_char   quit[] = "QUIT\r\n";

    if (cl->aborted) {
        sg_upstream_probe_release(pr);       /* the worker is draining */
    } else if (cl->status == SG_OK) {
        (void) cl->c->send(cl->c, quit, sizeof(quit) - 1);
        sg_upstream_probe_result(pr, true, NULL);
    } else {
        sg_upstream_probe_result(pr, false, cl->error);
    }
    sg_upstream_probe_free(pr);
}

/* A claim given up before its probe could start. */
static void
sg_upstream_release_claim(sg_upstream_t *u, sg_upstream_peer_t *p,
    uint32_t seq)
{
    sg_upstream_state_t  *st;

    sg_upstream_lock(u);
    st = sg_upstream_state(u, p->index);
    if (st->probe_pid == sg_pid && st->probe_seq == seq) {
        st->probe_pid = 0;
    }
    sg_upstream_unlock(u);
}

/* The probe's own deadline: whatever step it is in, it fails now, so
 * that it never outlives its claim. */
static void
sg_upstream_probe_expired(sg_event_t *ev)
{
    sg_upstream_probe_t  *pr = ev->data;
    char                  why[64];

    (void) snprintf(why, sizeof(why), "timed out: not done within %lldms",
                    (long long) sg_upstream_check_budget(pr->upstream->check));
    sg_upstream_probe_result(pr, false, why);
    sg_upstream_probe_free(pr);
}

static void
sg_upstream_probe(sg_cycle_t *cycle, sg_upstream_t *u, sg_upstream_peer_t *p,
    uint32_t seq)
{
    sg_upstream_probe_t  *pr;
    sg_pool_t            *pool;

    pool = sg_pool_create(4096, cycle->log);
    if (pool == NULL) {
        sg_upstream_release_claim(u, p, seq);
        return;
    }
    pr = sg_pcalloc(pool, sizeof(sg_upstream_probe_t));
    if (pr == NULL) {
        sg_pool_destroy(pool);
        sg_upstream_release_claim(u, p, seq);
        return;
    }
    pr->pool = pool;
    pr->upstream = u;
    pr->peer = p;
    pr->seq = seq;
    pr->cl.pool = pool;
    pr->cl.log = cycle->log;
    pr->cl.peer = &p->addr;
    pr->cl.ehlo_name = cycle->hostname;
    pr->cl.timeout = u->check->timeout;
    pr->cl.proxy_protocol = u->check->proxy_protocol;
    pr->cl.done = sg_upstream_probe_done;
    pr->cl.data = pr;
#if (SG_HAVE_SSL_MODULE)
    if (u->check->starttls || u->check->ssl) {
        pr->cl.tls = u->check->ssl ? SG_SMTP_CLIENT_TLS_ON
                                   : SG_SMTP_CLIENT_TLS_STARTTLS;
        pr->cl.ssl_ctx = sg_upstream_check_ssl_ctx(cycle);
        pr->cl.ssl_name = p->host;
        if (pr->cl.ssl_ctx == NULL) {
            sg_upstream_probe_result(pr, false, "no TLS context");
            sg_pool_destroy(pool);
            return;
        }
    }
#endif
    sg_log_debug(cycle->log, "upstream %.*s: probing %.*s",
                 SG_STR_ARG(&u->name), SG_STR_ARG(&p->addr.name));
    sg_smtp_client_start(&pr->cl);
    if (pr->cl.finished) {
        sg_upstream_probe_result(pr, false, pr->cl.error);
        sg_upstream_probe_free(pr);
        return;
    }
    /* The probe does not hold a draining worker. */
    pr->cl.c->idle = 1;
    pr->deadline.handler = sg_upstream_probe_expired;
    pr->deadline.data = pr;
    pr->deadline.log = cycle->log;
    sg_event_add_timer(&pr->deadline, sg_upstream_check_budget(u->check));
}

static void
sg_upstream_check_timer(sg_event_t *ev)
{
    sg_upstream_t        *u = ev->data;
    sg_upstream_check_t  *hc = u->check;
    sg_upstream_peer_t   *p = u->peers.elts;
    sg_upstream_state_t  *st;
    sg_msec_t             now = sg_current_msec, tick;
    size_t                i;
    uint32_t              seq;
    bool                  mine;

    if (sg_exiting) {
        return;
    }
    for (i = 0; i < u->peers.nelts; i++) {
        if (p[i].spool || p[i].down) {
            continue;
        }
        sg_upstream_lock(u);
        st = sg_upstream_state(u, i);
        mine = false;
        seq = 0;
        /* The first check under a new configuration does not wait for
         * the interval: smtp_capabilities auto waits for it. */
        if (sg_upstream_check_free(st, now)
            && (st->probe_at == 0 || now - st->probe_at >= hc->interval
                || st->check_generation < sg_upstream_generation(u)))
        {
            st->probe_pid = sg_pid;
            st->check_generation = sg_max(st->check_generation,
                                          sg_upstream_generation(u));
            seq = ++st->probe_seq;
            st->probe_at = now ? now : 1;
            st->probe_until = now + sg_upstream_check_budget(hc);
            mine = true;
        }
        sg_upstream_unlock(u);
        if (mine) {
            sg_upstream_probe(sg_cycle, u, &p[i], seq);
        }
    }
    tick = hc->interval / 4;
    tick = sg_max(tick, 25);
    tick = sg_min(tick, 1000);
    sg_event_add_timer(&u->check_timer, tick);
}
