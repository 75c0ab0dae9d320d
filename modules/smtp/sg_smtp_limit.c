/*
 * sg_smtp_limit.c: brute-force protection for AUTH ("auth_fail_limit").
 *
 * Failed AUTH attempts are counted per client address (per /64 for
 * IPv6) and per user in a shared memory zone, so every worker sees the
 * same counts.  Past the limit within the window, further attempts from
 * that address or for that user are refused with a 454 before the
 * authentication backend is contacted, and the first refusal of a window
 * is logged (not every attempt).  The table is a fixed array probed by hash: a full table
 * replaces the oldest entry, so memory never grows and an attacker
 * cannot exhaust it, only age out other entries early.
 */
#include "sg_smtp.h"

#define SG_LIMIT_PROBE  8

typedef struct {
    uint64_t   key;          /* hash of kind + address or user; 0: free */
    int64_t    start;        /* the window's start, seconds */
    uint32_t   count;
    uint32_t   logged;
} sg_limit_entry_t;

typedef struct {
    uint32_t          nentries;
    sg_limit_entry_t  e[];
} sg_limit_table_t;

static int
sg_limit_init(sg_shm_zone_t *zone, void *old_data)
{
    sg_limit_table_t  *t = zone->addr;

    if (old_data) {
        zone->data = old_data;
        return SG_OK;
    }
    t->nentries = (uint32_t) ((zone->size - sizeof(sg_limit_table_t))
                              / sizeof(sg_limit_entry_t));
    zone->data = t;
    return t->nentries >= 64 ? SG_OK : SG_ERROR;
}

static char *
sg_limit_parse_kv(sg_conf_t *cf, sg_smtp_srv_conf_t *sscf, sg_str_t *v,
    sg_str_t *zname, int64_t *zsize)
{
    sg_str_t   val;
    u_char    *eq = memchr(v->data, '=', v->len), *colon;

    if (eq == NULL) {
        return sg_conf_invalid_value(cf, v, "expected key=value");
    }
    val.data = eq + 1;
    val.len = (size_t) (v->data + v->len - val.data);
    if (eq - v->data == 4 && memcmp(v->data, "zone", 4) == 0) {
        colon = memchr(val.data, ':', val.len);
        if (colon == NULL || colon == val.data) {
            return sg_conf_invalid_value(cf, v, "zone=NAME:SIZE");
        }
        zname->data = val.data;
        zname->len = (size_t) (colon - val.data);
        val.data = colon + 1;
        val.len = (size_t) (v->data + v->len - val.data);
        if (sg_parse_size(&val, zsize) != SG_OK || *zsize < 16384
            || *zsize > 1024LL * 1024 * 1024)
        {
            return sg_conf_invalid_value(cf, v, "SIZE from 16k to 1g");
        }
    } else if (eq - v->data == 7 && memcmp(v->data, "address", 7) == 0) {
        if (sg_parse_int(&val, &sscf->fail_limit_address) != SG_OK
            || sscf->fail_limit_address > 1000000)
        {
            return sg_conf_invalid_value(cf, v, "a count, 0 to turn off");
        }
    } else if (eq - v->data == 4 && memcmp(v->data, "user", 4) == 0) {
        if (sg_parse_int(&val, &sscf->fail_limit_user) != SG_OK
            || sscf->fail_limit_user > 1000000)
        {
            return sg_conf_invalid_value(cf, v, "a count, 0 to turn off");
        }
    } else if (eq - v->data == 6 && memcmp(v->data, "window", 6) == 0) {
        if (sg_parse_time(&val, &sscf->fail_limit_window) != SG_OK
            || sscf->fail_limit_window < 1000)
        {
            return sg_conf_invalid_value(cf, v, "at least 1s");
        }
    } else {
        return sg_conf_invalid_value(cf, v, "keys are zone, address, user "
                                     "and window");
    }
    return SG_CONF_OK;
}

/* auth_fail_limit zone=NAME:SIZE [address=N] [user=N] [window=T]; */
char *
sg_smtp_auth_fail_limit(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_smtp_srv_conf_t  *sscf = conf;
    sg_str_t            *value = cf->args->elts, zname = sg_null_string;
    int64_t              zsize = 0;
    size_t               i;
    char                *rv;

    (void) cmd;
    if (sscf->fail_limit != SG_CONF_UNSET_PTR) {
        return sg_conf_duplicate(cf);
    }
    sscf->fail_limit_address = 10;
    sscf->fail_limit_user = 10;
    sscf->fail_limit_window = 600000;
    for (i = 1; i < cf->args->nelts; i++) {
        rv = sg_limit_parse_kv(cf, sscf, &value[i], &zname, &zsize);
        if (rv != SG_CONF_OK) {
            return rv;
        }
    }
    if (zname.data == NULL) {
        return "needs zone=NAME:SIZE";
    }
    sscf->fail_limit = sg_shm_zone_add(cf, &zname, (size_t) zsize,
                                       &sg_smtp_module);
    if (sscf->fail_limit == NULL) {
        return SG_CONF_ERROR;
    }
    sscf->fail_limit->init = sg_limit_init;
    return SG_CONF_OK;
}

/* Keyed: a client cannot choose an address or user name that shares
 * another's count. */
static uint64_t
sg_limit_key(char kind, const sg_str_t *s)
{
    u_char    buf[1 + SG_SMTP_LOGIN_MAX];
    size_t    n = sg_min(s->len, sizeof(buf) - 1);
    uint64_t  h;

    buf[0] = (u_char) kind;
    memcpy(buf + 1, s->data, n);
    h = sg_keyed_hash(buf, n + 1);
    return h ? h : 1;
}

/* An IPv6 client is counted by its /64: one host or home is given a
 * whole /64 and may send from any address in it (privacy addresses
 * change on their own), so a count per address would never fill.  An
 * IPv4-mapped address counts as the IPv4 address it is.  The address
 * is the one set_real_ip_from trusted, as in every log line. */
static uint64_t
sg_limit_address_key(const sg_connection_t *c)
{
    const struct sockaddr_in6  *sin6;
    sg_str_t                    a;

    if (c->sockaddr.ss_family == AF_INET) {
        a.data = (u_char *) &((const struct sockaddr_in *)
                              &c->sockaddr)->sin_addr;
        a.len = 4;
        return sg_limit_key('4', &a);
    }
    if (c->sockaddr.ss_family == AF_INET6) {
        sin6 = (const struct sockaddr_in6 *) &c->sockaddr;
        a.data = (u_char *) sin6->sin6_addr.s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
            a.data += 12;
            a.len = 4;
            return sg_limit_key('4', &a);
        }
        a.len = 8;
        return sg_limit_key('6', &a);
    }
    return sg_limit_key('a', &c->addr_text);
}

/* The entry for key, made (or taken over) when create is set. */
static sg_limit_entry_t *
sg_limit_find(sg_limit_table_t *t, uint64_t key, int64_t now,
    int64_t window, bool create)
{
    sg_limit_entry_t  *e, *victim = NULL;
    uint32_t           i;

    for (i = 0; i < SG_LIMIT_PROBE; i++) {
        e = &t->e[(key + i) % t->nentries];
        if (e->key == key) {
            if (now - e->start >= window) {   /* the window has passed */
                e->start = now;
                e->count = 0;
                e->logged = 0;
            }
            return e;
        }
        if (e->key == 0 || now - e->start >= window) {
            victim = victim && victim->key == 0 ? victim : e;
        } else if (victim == NULL || (victim->key != 0
                                      && e->start < victim->start))
        {
            victim = e;
        }
    }
    if (!create || victim == NULL) {
        return NULL;
    }
    victim->key = key;
    victim->start = now;
    victim->count = 0;
    victim->logged = 0;
    return victim;
}

/* true: this attempt is over a limit and must not reach the backend. */
bool
sg_smtp_limit_refused(sg_smtp_session_t *s)
{
    sg_smtp_srv_conf_t  *sscf = s->conf;
    sg_limit_table_t    *t;
    sg_limit_entry_t    *e;
    int64_t              now = (int64_t) sg_current_time;
    int64_t              window = sscf->fail_limit_window / 1000;
    const char          *what = NULL;
    bool                 log = false;

    if (sscf->fail_limit == NULL) {
        return false;
    }
    t = sscf->fail_limit->data;
    sg_shm_lock(sscf->fail_limit);
    if (sscf->fail_limit_address) {
        e = sg_limit_find(t, sg_limit_address_key(s->connection),
                          now, window, false);
        if (e && e->count >= sscf->fail_limit_address) {
            what = "address";
            log = !e->logged;
            e->logged = 1;
        }
    }
    if (what == NULL && sscf->fail_limit_user && s->login.len) {
        e = sg_limit_find(t, sg_limit_key('u', &s->login), now, window,
                          false);
        if (e && e->count >= sscf->fail_limit_user) {
            what = "user";
            log = !e->logged;
            e->logged = 1;
        }
    }
    sg_shm_unlock(sscf->fail_limit);
    if (log) {
        sg_log_error(SG_LOG_WARN, s->log, 0, "too many failed AUTH attempts "
                     "for this %s within the window (auth_fail_limit): "
                     "refusing further attempts without asking the "
                     "authentication backend", what);
    }
    return what != NULL;
}

/* Count a failure (failed = true) or clear the user's count. */
void
sg_smtp_limit_account(sg_smtp_session_t *s, bool failed)
{
    sg_smtp_srv_conf_t  *sscf = s->conf;
    sg_limit_table_t    *t;
    sg_limit_entry_t    *e;
    int64_t              now = (int64_t) sg_current_time;
    int64_t              window = sscf->fail_limit_window / 1000;

    if (sscf->fail_limit == NULL) {
        return;
    }
    t = sscf->fail_limit->data;
    sg_shm_lock(sscf->fail_limit);
    if (failed && sscf->fail_limit_address) {
        e = sg_limit_find(t, sg_limit_address_key(s->connection),
                          now, window, true);
        if (e && e->count < UINT32_MAX) {
            e->count++;
        }
    }
    if (sscf->fail_limit_user && s->login.len) {
        e = sg_limit_find(t, sg_limit_key('u', &s->login), now, window,
                          failed);
        if (e && failed && e->count < UINT32_MAX) {
            e->count++;
        } else if (e && !failed) {
            e->count = 0;
        }
    }
    sg_shm_unlock(sscf->fail_limit);
}
