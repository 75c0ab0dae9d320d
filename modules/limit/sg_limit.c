/*
 * sg_limit.c: "limit_conn_zone" and "limit_conn": how many sessions one
 * key (a client address, most often) may hold open at once, across all
 * workers, as nginx's stream limit_conn module says it.
 *
 * A zone is a table in shared memory of (key hash, sessions) entries.
 * A key hashes to a window of SG_LIMIT_WINDOW entries; its entry is the
 * one in the window with its hash, or, for a new key, the first with no
 * sessions.  An entry with sessions is never taken by another key: when
 * a window has none free, the zone is full for that key and the session
 * is refused, as nginx refuses one when its zone is full.  Each counted
 * session gives its count back from a cleanup of its pool, so every way
 * a session ends gives it back once.
 *
 * A worker that dies (a crash, SIGKILL) cannot give back the counts of
 * its sessions.  So each worker also keeps a list of the sessions it
 * counts and takes a slot of the zone (its pid and how many sessions it
 * counts there).  A worker that finds the slot of a dead one holding
 * sessions (as it starts, and on a tick each second, which covers a
 * dead worker of an older generation that nobody replaces) empties the
 * table and moves the zone to a new epoch; every worker, at its next
 * look at the zone (its next session, or its tick), counts its own
 * sessions into the emptied table again.  A worker that exits gives
 * back whatever its list still holds and frees its slot.
 *
 * Until the live workers have counted theirs again, for at most a tick,
 * a key may be let in more often than its limit: after a crash the count
 * errs towards letting clients in, never towards locking one out.
 *
 * The check runs as the session starts, after any PROXY header (the key
 * is evaluated then) and before TLS, and says SG_BUSY to refuse: the
 * client is told "421 4.7.0" and closed, or, on an implicit-TLS
 * address, closed before any handshake.  A zone whose key reads the
 * login ($auth_user, $auth_method, a map of them; or "at=login") is
 * counted instead by a login check as the login succeeds, where SG_BUSY
 * turns the login into a temporary failure (454).
 */
#include <signal.h>
#include "sg_limit.h"

#define SG_LIMIT_WINDOW  16
/* Workers with a slot in a zone: those of a generation and those of
 * older ones still draining.  A worker past this many counts without a
 * slot, and its counts cannot be taken back should it die. */
#define SG_LIMIT_SLOTS   128
#define SG_LIMIT_TICK    1000            /* ms */
#define SG_LIMIT_AT_LOGIN    1
#define SG_LIMIT_AT_CONNECT  2

typedef struct {
    uint64_t   key;                  /* sg_keyed_hash of the key; 0: never
                                        used */
    uint32_t   sessions;
} sg_limit_entry_t;

typedef struct {
    uint32_t          nentries;
    uint32_t          pad;
    uint64_t          epoch;         /* one more at each recount */
    pid_t             pid[SG_LIMIT_SLOTS];   /* 0: a free slot */
    uint32_t          held[SG_LIMIT_SLOTS];  /* sessions each counts */
    sg_limit_entry_t  e[];
} sg_limit_table_t;

typedef struct sg_limit_held_s  sg_limit_held_t;

typedef struct {
    sg_limit_zone_head_t      head;      /* name, where it is defined */
    sg_shm_zone_t            *zone;
    sg_smtp_complex_value_t  *key;
    unsigned                  at;        /* 0: by its key, or at= */
    bool                      at_login;  /* counted as a login succeeds:
                                            a key of the login (set at
                                            postconfiguration) */
    bool                      resolved;

    /* The worker's own, after the fork. */
    sg_limit_held_t          *held;  /* the sessions it counts */
    uint64_t                  epoch; /* the table's, when it last counted
                                        them in */
    int                       slot;  /* -1: none */
    bool                      left;  /* exiting: every count given back */
} sg_limit_zone_t;

typedef struct {
    sg_limit_zone_t  *zone;          /* resolved at merge */
    sg_str_t          zone_name;
    uint32_t          max;
    sg_str_t          file;
    size_t            line;
} sg_limit_rule_t;

typedef sg_limit_zones_t  sg_limit_main_conf_t;   /* sg_limit_zone_t * */

typedef struct {
    sg_array_t  *rules;              /* sg_limit_rule_t; NULL: not set */
    int          log_level;
} sg_limit_srv_conf_t;

/* One session counted in a zone, in its pool's cleanup and on its
 * worker's list for the zone. */
struct sg_limit_held_s {
    sg_limit_zone_t  *zone;
    uint64_t          key;
    sg_limit_held_t  *prev, *next;
    bool              linked;        /* on the list */
    bool              counted;       /* in the table (a recount may have
                                        found no room for it) */
};

static char *sg_limit_zone_directive(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_limit_conn_directive(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_limit_create_srv_conf(sg_conf_t *cf);
static char *sg_limit_merge_srv_conf(sg_conf_t *cf, void *prev,
    void *conf);
static char *sg_limit_postconfiguration(sg_conf_t *cf, void *conf);
static int sg_limit_check(sg_smtp_session_t *s, void *conf);
static int sg_limit_login_check(sg_smtp_session_t *s, void *conf);
static int sg_limit_init_process(sg_cycle_t *cycle);
static void sg_limit_exit_process(sg_cycle_t *cycle);

static const sg_conf_enum_t  sg_limit_levels[] = {
    { "info", SG_LOG_INFO },
    { "notice", SG_LOG_NOTICE },
    { "warn", SG_LOG_WARN },
    { "error", SG_LOG_ERR },
    { NULL, 0 }
};

static const sg_command_t  sg_limit_commands[] = {
    { "limit_conn_zone", SG_MAIL_MAIN_CONF | SG_CONF_TAKE23,
      sg_limit_zone_directive, SG_MAIL_MAIN_CONF_OFFSET, 0, NULL },
    { "limit_conn", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_TAKE2,
      sg_limit_conn_directive, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "limit_conn_log_level", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF
                              | SG_CONF_TAKE1,
      sg_conf_set_enum_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_limit_srv_conf_t, log_level), sg_limit_levels },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_limit_module_ctx = {
    sg_limit_create_zones, NULL, sg_limit_create_srv_conf,
    sg_limit_merge_srv_conf, sg_limit_postconfiguration
};

sg_module_t  sg_limit_module = {
    .name = "limit",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_limit_module_ctx,
    .commands = sg_limit_commands,
    .init_process = sg_limit_init_process,
    .exit_process = sg_limit_exit_process,
};


/* ---- configuration -------------------------------------------------- */

void *
sg_limit_find_zone(sg_limit_zones_t *lz, const sg_str_t *name)
{
    sg_limit_zone_head_t  **all = lz->zones.elts;
    size_t                  i;

    for (i = 0; i < lz->zones.nelts; i++) {
        if (all[i]->name.len == name->len
            && memcmp(all[i]->name.data, name->data, name->len) == 0)
        {
            return all[i];
        }
    }
    return NULL;
}

void *
sg_limit_add_zone(sg_conf_t *cf, sg_limit_zones_t *lz, const char *directive,
    const sg_str_t *name, size_t size)
{
    sg_limit_zone_head_t  *z, **slot;

    z = sg_limit_find_zone(lz, name);
    if (z) {
        (void) sg_conf_error(cf, 0, "%s \"%.*s\" is already defined at "
                             "%.*s:%zu", directive, SG_STR_ARG(name),
                             SG_STR_ARG(&z->file), z->line);
        return NULL;
    }
    z = sg_pcalloc(cf->pool, size);
    slot = sg_array_push(&lz->zones);
    if (z == NULL || slot == NULL) {
        return NULL;
    }
    z->name = *name;
    z->file = cf->file->name;
    z->line = sg_conf_line(cf);
    *slot = z;
    return z;
}

void
sg_limit_table_init(sg_shm_zone_t *zone, void *old_data, size_t head,
    size_t entry)
{
    uint32_t  n;

    zone->data = zone->addr;
    if (old_data == NULL) {
        memset(zone->addr, 0, zone->size);
        n = (uint32_t) ((zone->size - head) / entry);
        memcpy(zone->addr, &n, sizeof(n));
    }
}

char *
sg_limit_parse_zone(sg_conf_t *cf, const sg_str_t *value, sg_str_t *name,
    int64_t *size)
{
    sg_str_t  v = *value;
    u_char   *colon;

    if (v.len < 6 || memcmp(v.data, "zone=", 5) != 0
        || (colon = memchr(v.data, ':', v.len)) == NULL
        || colon == v.data + 5)
    {
        return sg_conf_invalid_value(cf, value, "zone=NAME:SIZE");
    }
    name->data = v.data + 5;
    name->len = (size_t) (colon - name->data);
    v.data = colon + 1;
    v.len = (size_t) (value->data + value->len - v.data);
    if (sg_parse_size(&v, size) != SG_OK || *size < 16384
        || *size > 1024LL * 1024 * 1024)
    {
        return sg_conf_invalid_value(cf, value, "SIZE from 16k to 1g");
    }
    return SG_CONF_OK;
}

sg_smtp_complex_value_t *
sg_limit_compile_key(sg_conf_t *cf, const char *directive,
    const sg_str_t *zone, const sg_str_t *key, const char *use)
{
    sg_smtp_complex_value_t  *cv;

    cv = sg_smtp_compile_complex_value(cf, key);
    if (cv && sg_smtp_complex_value_is_static(cv)) {
        (void) sg_conf_error(cf, 0, "%s \"%.*s\": the key \"%.*s\" has no "
                             "variable, so every session would share one "
                             "count: use %s", directive, SG_STR_ARG(zone),
                             SG_STR_ARG(key), use);
        return NULL;
    }
    return cv;
}

static int
sg_limit_zone_init(sg_shm_zone_t *zone, void *old_data)
{
    sg_limit_table_init(zone, old_data, sizeof(sg_limit_table_t),
                        sizeof(sg_limit_entry_t));
    return SG_OK;
}

/* limit_conn_zone key zone=NAME:SIZE; */
static char *
sg_limit_zone_directive(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_limit_main_conf_t  *lmcf = conf;
    sg_limit_zone_t       *z;
    sg_str_t              *value = cf->args->elts, name;
    int64_t                size;
    char                  *rv;

    (void) cmd;
    rv = sg_limit_parse_zone(cf, &value[2], &name, &size);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    z = sg_limit_add_zone(cf, lmcf, "limit_conn_zone", &name,
                          sizeof(sg_limit_zone_t));
    if (z == NULL) {
        return SG_CONF_ERROR;
    }
    z->slot = -1;
    z->key = sg_limit_compile_key(cf, "limit_conn_zone", &name, &value[1],
                                  "$remote_addr");
    if (z->key == NULL) {
        return SG_CONF_ERROR;
    }
    if (cf->args->nelts == 4) {
        if (sg_str_eq(&value[3], "at=login")) {
            z->at = SG_LIMIT_AT_LOGIN;
        } else if (sg_str_eq(&value[3], "at=connect")) {
            z->at = SG_LIMIT_AT_CONNECT;
        } else {
            return sg_conf_invalid_value(cf, &value[3],
                                         "at=login or at=connect");
        }
    }
    z->zone = sg_shm_zone_add(cf, &name, (size_t) size, &sg_limit_module);
    if (z->zone == NULL) {
        return SG_CONF_ERROR;
    }
    z->zone->init = sg_limit_zone_init;
    return SG_CONF_OK;
}

/* limit_conn NAME NUMBER; */
static char *
sg_limit_conn_directive(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_limit_srv_conf_t  *lscf = conf;
    sg_str_t             *value = cf->args->elts;
    sg_limit_rule_t      *r;
    int64_t               n;
    size_t                i;

    (void) cmd;
    if (sg_parse_int(&value[2], &n) != SG_OK || n < 1 || n > 1000000) {
        return sg_conf_invalid_value(cf, &value[2], "a number of sessions "
                                     "from 1 to 1000000");
    }
    if (lscf->rules == NULL) {
        lscf->rules = sg_array_create(cf->pool, 2, sizeof(sg_limit_rule_t));
        if (lscf->rules == NULL) {
            return SG_CONF_ERROR;
        }
    }
    r = lscf->rules->elts;
    for (i = 0; i < lscf->rules->nelts; i++) {
        if (r[i].zone_name.len == value[1].len
            && memcmp(r[i].zone_name.data, value[1].data, value[1].len) == 0)
        {
            return sg_conf_error(cf, 0, "limit_conn \"%.*s\" is given "
                                 "twice in this block",
                                 SG_STR_ARG(&value[1]));
        }
    }
    r = sg_array_push(lscf->rules);
    if (r == NULL) {
        return SG_CONF_ERROR;
    }
    memset(r, 0, sizeof(*r));
    r->zone_name = value[1];
    r->max = (uint32_t) n;
    r->file = cf->file->name;
    r->line = sg_conf_line(cf);
    return SG_CONF_OK;
}

void *
sg_limit_create_zones(sg_conf_t *cf)
{
    sg_limit_zones_t  *lz;

    lz = sg_pcalloc(cf->pool, sizeof(sg_limit_zones_t));
    if (lz == NULL
        || sg_array_init(&lz->zones, cf->pool, 2, sizeof(void *)) != SG_OK)
    {
        return NULL;
    }
    return lz;
}

static void *
sg_limit_create_srv_conf(sg_conf_t *cf)
{
    sg_limit_srv_conf_t  *lscf;

    lscf = sg_pcalloc(cf->pool, sizeof(sg_limit_srv_conf_t));
    if (lscf) {
        lscf->log_level = SG_CONF_UNSET;
    }
    return lscf;
}

/* A server with limit_conn lines of its own uses only those (nginx);
 * each names a zone defined anywhere in the mail block. */
static char *
sg_limit_merge_srv_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_limit_srv_conf_t   *prev = parent, *conf = child;
    sg_limit_main_conf_t  *lmcf;
    sg_limit_rule_t       *r;
    size_t                 i;

    sg_conf_merge_value(conf->log_level, prev->log_level, SG_LOG_ERR);
    if (conf->rules == NULL) {
        conf->rules = prev->rules;
    }
    if (conf->rules == NULL) {
        return SG_CONF_OK;
    }
    lmcf = sg_mail_conf_main((sg_mail_conf_ctx_t *) cf->ctx,
                             sg_limit_module);
    r = conf->rules->elts;
    for (i = 0; i < conf->rules->nelts; i++) {
        if (r[i].zone) {
            continue;
        }
        r[i].zone = sg_limit_find_zone(lmcf, &r[i].zone_name);
        if (r[i].zone == NULL) {
            return sg_conf_error_at(cf, &r[i].file, r[i].line, "limit_conn: "
                                    "no limit_conn_zone \"%.*s\"",
                                    SG_STR_ARG(&r[i].zone_name));
        }
    }
    return SG_CONF_OK;
}

static char *
sg_limit_postconfiguration(sg_conf_t *cf, void *conf)
{
    sg_limit_srv_conf_t  *lscf = conf;
    sg_smtp_srv_conf_t   *sscf;
    sg_limit_rule_t      *r;
    sg_limit_zone_t      *z;
    size_t                i;
    bool                  login = false, connect = false;

    if (lscf->rules == NULL || lscf->rules->nelts == 0) {
        return SG_CONF_OK;
    }
    sscf = sg_mail_conf_srv((sg_mail_conf_ctx_t *) cf->ctx, sg_smtp_module);
    r = lscf->rules->elts;
    for (i = 0; i < lscf->rules->nelts; i++) {
        z = r[i].zone;
        if (!z->resolved) {
            /* Every map is known now: a key read from the login, even
             * through one, counts at the login. */
            z->resolved = true;
            z->at_login = z->at == SG_LIMIT_AT_LOGIN
                          || (z->at == 0
                              && sg_smtp_complex_value_reads(cf, z->key,
                                     SG_SMTP_VAR_LOGIN));
        }
        login |= z->at_login;
        connect |= !z->at_login;
    }
    if ((connect && sg_smtp_add_check(sscf, sg_limit_check, lscf) != SG_OK)
        || (login && sg_smtp_add_login_check(sscf, sg_limit_login_check,
                                             lscf) != SG_OK))
    {
        return sg_conf_error(cf, 0, "too many session hooks");
    }
    return SG_CONF_OK;
}


/* ---- counting ------------------------------------------------------- */

uint64_t
sg_limit_hash(const sg_str_t *key)
{
    uint64_t  h = sg_keyed_hash(key->data, key->len);

    return h ? h : 1;
}

/* The entry of key in its window, or a free one for it (marked with the
 * key); NULL when the window has neither.  Under the zone's lock. */
static sg_limit_entry_t *
sg_limit_entry(sg_limit_table_t *t, uint64_t key, bool take)
{
    sg_limit_entry_t  *free_one = NULL, *e;
    uint32_t           i, at = (uint32_t) (key % t->nentries);

    for (i = 0; i < SG_LIMIT_WINDOW && i < t->nentries; i++) {
        e = &t->e[(at + i) % t->nentries];
        if (e->key == key) {
            return e;
        }
        if (free_one == NULL && e->sessions == 0) {
            free_one = e;
        }
    }
    if (take && free_one) {
        free_one->key = key;
    }
    return take ? free_one : NULL;
}

/* Count this worker's sessions into the table again if another worker
 * has emptied it since this one last looked.  Under the zone's lock. */
static void
sg_limit_sync(sg_limit_zone_t *z)
{
    sg_limit_table_t  *t = z->zone->data;
    sg_limit_entry_t  *e;
    sg_limit_held_t   *h;

    if (z->epoch == t->epoch) {
        return;
    }
    for (h = z->held; h; h = h->next) {
        e = sg_limit_entry(t, h->key, true);
        h->counted = e != NULL;
        if (e) {
            e->sessions++;
        }
    }
    z->epoch = t->epoch;
}

/* Take a dead worker's slot: when it held sessions, empty the table and
 * start a new epoch, in which every live worker counts its own again
 * (this one at once).  Under the zone's lock. */
static void
sg_limit_reap_slot(sg_limit_zone_t *z, size_t i, sg_log_t *log)
{
    sg_limit_table_t  *t = z->zone->data;
    uint32_t           held = t->held[i];
    pid_t              dead = t->pid[i];

    t->pid[i] = 0;
    t->held[i] = 0;
    if (held == 0) {
        return;
    }
    memset(t->e, 0, (size_t) t->nentries * sizeof(sg_limit_entry_t));
    t->epoch++;
    sg_limit_sync(z);
    sg_log_error(SG_LOG_NOTICE, log, 0, "limit_conn_zone \"%.*s\": %u "
                 "session%s of worker %d, which exited without ending "
                 "them, no longer counted; the live workers count theirs "
                 "again", SG_STR_ARG(&z->head.name), held, held == 1 ? "" : "s",
                 (int) dead);
}

/* Reap the slots of workers that are gone.  The master reaps a dead
 * worker before it starts the next, so a gone worker's pid no longer
 * names a process; one that is our own was a dead worker's whose pid
 * came round again.  Under the zone's lock. */
static void
sg_limit_reap(sg_limit_zone_t *z, sg_log_t *log)
{
    sg_limit_table_t  *t = z->zone->data;
    size_t             i;

    for (i = 0; i < SG_LIMIT_SLOTS; i++) {
        if (t->pid[i] == 0 || (int) i == z->slot) {
            continue;
        }
        if (t->pid[i] == sg_pid
            || (kill(t->pid[i], 0) == -1 && errno == ESRCH))
        {
            sg_limit_reap_slot(z, i, log);
        }
    }
}

static void
sg_limit_unlink(sg_limit_zone_t *z, sg_limit_held_t *h)
{
    sg_limit_table_t  *t = z->zone->data;

    if (h->prev) {
        h->prev->next = h->next;
    } else {
        z->held = h->next;
    }
    if (h->next) {
        h->next->prev = h->prev;
    }
    h->linked = false;
    if (z->slot >= 0 && t->held[z->slot]) {
        t->held[z->slot]--;
    }
}

/* Give h's count back.  Under the zone's lock. */
static void
sg_limit_give_back(sg_limit_zone_t *z, sg_limit_held_t *h)
{
    sg_limit_entry_t  *e;

    if (h->counted) {
        e = sg_limit_entry(z->zone->data, h->key, false);
        if (e && e->sessions) {
            e->sessions--;
        }
    }
    sg_limit_unlink(z, h);
}

static void
sg_limit_release(void *data)
{
    sg_limit_held_t  *h = data;
    sg_limit_zone_t  *z = h->zone;

    if (!h->linked || z->left) {
        return;
    }
    sg_shm_lock(z->zone);
    sg_limit_sync(z);
    sg_limit_give_back(z, h);
    sg_shm_unlock(z->zone);
}

/* Count the session in the zones of its rules that count at this
 * point (at_login: the login's, else the connection's): SG_OK, or
 * SG_BUSY over a limit (logged). */
static int
sg_limit_count(sg_smtp_session_t *s, sg_limit_srv_conf_t *lscf,
    bool at_login)
{
    sg_limit_rule_t      *r = lscf->rules->elts;
    sg_limit_table_t     *t;
    sg_limit_entry_t     *e;
    sg_limit_held_t      *h;
    sg_limit_zone_t      *z;
    sg_str_t              key;
    const char           *why = NULL;
    size_t                i;

    for (i = 0; i < lscf->rules->nelts; i++) {
        z = r[i].zone;
        if (z->at_login != at_login) {
            continue;
        }
        if (sg_smtp_complex_value(s, z->key, &key) != SG_OK
            || key.len == 0)
        {
            continue;                   /* no key: not counted (nginx) */
        }
        h = sg_pcalloc(s->pool, sizeof(sg_limit_held_t));
        if (h == NULL
            || sg_pool_cleanup_add(s->pool, sg_limit_release, h) != SG_OK)
        {
            return SG_BUSY;
        }
        h->zone = z;
        h->key = sg_limit_hash(&key);
        t = z->zone->data;
        sg_shm_lock(z->zone);
        sg_limit_sync(z);
        e = sg_limit_entry(t, h->key, true);
        if (e == NULL) {
            why = "the zone is full: raise its size";
        } else if (e->sessions >= r[i].max) {
            why = "the key holds that many sessions already";
        } else {
            e->sessions++;
            h->counted = true;
            h->linked = true;
            h->next = z->held;
            if (z->held) {
                z->held->prev = h;
            }
            z->held = h;
            if (z->slot >= 0) {
                t->held[z->slot]++;
            }
        }
        sg_shm_unlock(z->zone);
        if (why) {
            sg_log_error(lscf->log_level, s->log, 0, "limiting %s by "
                         "zone \"%.*s\", key \"%.*s\": %s (limit_conn "
                         "%u at %.*s:%zu)", at_login ? "logins" : "sessions",
                         SG_STR_ARG(&z->head.name), SG_STR_ARG(&key), why,
                         r[i].max, SG_STR_ARG(&r[i].file), r[i].line);
            return SG_BUSY;
        }
    }
    return SG_OK;
}

static int
sg_limit_check(sg_smtp_session_t *s, void *conf)
{
    return sg_limit_count(s, conf, false);
}

static int
sg_limit_login_check(sg_smtp_session_t *s, void *conf)
{
    return sg_limit_count(s, conf, true);
}


/* ---- workers' slots ------------------------------------------------- */

static sg_event_t  sg_limit_tick;

static sg_limit_main_conf_t *
sg_limit_cycle_conf(sg_cycle_t *cycle)
{
    sg_mail_conf_ctx_t  *ctx;

    if (cycle == NULL || cycle->conf_ctx == NULL) {
        return NULL;
    }
    ctx = cycle->conf_ctx[sg_mail_module.index];
    return ctx ? sg_mail_conf_main(ctx, sg_limit_module) : NULL;
}

/* Each second: count this worker's sessions in again after another
 * worker's recount, and reap the slots of workers that died without a
 * replacement to do it (those of an older generation). */
static void
sg_limit_tick_handler(sg_event_t *ev)
{
    sg_limit_main_conf_t  *lmcf = ev->data;
    sg_limit_zone_t      **z = lmcf->zones.elts;
    size_t                 i;

    for (i = 0; i < lmcf->zones.nelts; i++) {
        sg_shm_lock(z[i]->zone);
        sg_limit_sync(z[i]);
        sg_limit_reap(z[i], ev->log);
        sg_shm_unlock(z[i]->zone);
    }
    sg_event_add_timer(ev, SG_LIMIT_TICK);
}

static int
sg_limit_init_process(sg_cycle_t *cycle)
{
    sg_limit_main_conf_t  *lmcf = sg_limit_cycle_conf(cycle);
    sg_limit_table_t      *t;
    sg_limit_zone_t      **z;
    size_t                 i, j;

    if (lmcf == NULL || lmcf->zones.nelts == 0) {
        return SG_OK;
    }
    z = lmcf->zones.elts;
    for (i = 0; i < lmcf->zones.nelts; i++) {
        t = z[i]->zone->data;
        sg_shm_lock(z[i]->zone);
        sg_limit_reap(z[i], cycle->log);
        for (j = 0; j < SG_LIMIT_SLOTS; j++) {
            if (t->pid[j] == 0) {
                t->pid[j] = sg_pid;
                t->held[j] = 0;
                z[i]->slot = (int) j;
                break;
            }
        }
        z[i]->epoch = t->epoch;
        sg_shm_unlock(z[i]->zone);
    }
    sg_limit_tick.handler = sg_limit_tick_handler;
    sg_limit_tick.data = lmcf;
    sg_limit_tick.log = cycle->log;
    sg_event_add_timer(&sg_limit_tick, SG_LIMIT_TICK);
    return SG_OK;
}

/* Free the slot.  The smtp module's exit closes the sessions still open
 * (worker_shutdown_timeout, a fast stop), which gives their counts back;
 * whichever of the two runs first, each count goes back once. */
static void
sg_limit_exit_process(sg_cycle_t *cycle)
{
    sg_limit_main_conf_t  *lmcf = sg_limit_cycle_conf(cycle);
    sg_limit_table_t      *t;
    sg_limit_zone_t      **z;
    size_t                 i;

    if (lmcf == NULL || lmcf->zones.nelts == 0) {
        return;
    }
    sg_event_del_timer(&sg_limit_tick);
    z = lmcf->zones.elts;
    for (i = 0; i < lmcf->zones.nelts; i++) {
        if (z[i]->left) {
            continue;
        }
        t = z[i]->zone->data;
        sg_shm_lock(z[i]->zone);
        sg_limit_sync(z[i]);
        while (z[i]->held) {
            sg_limit_give_back(z[i], z[i]->held);
        }
        if (z[i]->slot >= 0) {
            t->pid[z[i]->slot] = 0;
            t->held[z[i]->slot] = 0;
            z[i]->slot = -1;
        }
        sg_shm_unlock(z[i]->zone);
        z[i]->left = true;
    }
}
