/*
 * sg_limit_rate.c: "limit_message_zone", "limit_recipient_zone",
 * "limit_message" and "limit_recipient": how many messages (MAIL
 * commands) and recipients (RCPT commands) one key -- a login, most
 * often -- may send per unit of time, across all workers.
 *
 * Each key has a bucket of `burst` (by default the rate's count) that
 * fills again at the rate; a MAIL or RCPT takes one from its bucket, and
 * one that finds it empty is refused with 450 4.7.1 without reaching a
 * backend.  The bucket is kept as the time it will next be full (GCRA,
 * the "theoretical arrival time"), one 16-byte entry per key in a table
 * in shared memory, probed from the key's hash.  An entry whose bucket
 * is full again is free: a key that sends nothing for a while costs
 * nothing.  When a key's window of entries holds none free, the entry
 * nearest to being full is taken over (its key gets a full bucket, so a
 * zone too small errs towards letting mail through) and a warning asks
 * for a larger zone.
 *
 * Counted is whatever is let through: the MAIL or RCPT the relay (which
 * then reads the session strictly, see proxy_strict), the spool or
 * smtpgate itself takes, whatever the backend answers it, as Postfix's
 * smtpd_client_message_rate_limit counts.  One the limits refuse is not
 * counted.
 */
#include "sg_limit.h"

#define SG_RATE_PROBE   8
#define SG_RATE_KINDS   2               /* messages, recipients */
#define SG_RATE_RULES_MAX  8            /* of one kind in one block */
/* A zone full warning at most this often per worker. */
#define SG_RATE_FULL_LOG_EVERY  60000   /* ms */

typedef struct {
    uint64_t   key;                  /* sg_keyed_hash of the key; 0: free */
    int64_t    full_at;              /* µs, CLOCK_MONOTONIC: the bucket is
                                        full again from then on */
} sg_rate_entry_t;

typedef struct {
    uint32_t         nentries;
    uint32_t         pad;
    sg_rate_entry_t  e[];
} sg_rate_table_t;

typedef struct {
    sg_limit_zone_head_t      head;      /* name, where it is defined */
    unsigned                  kind;      /* SG_SMTP_STEP_MAIL or _RCPT */
    sg_shm_zone_t            *zone;
    sg_smtp_complex_value_t  *key;
    int64_t                   count;     /* rate=COUNT/UNIT */
    int64_t                   unit;      /* µs */
    int64_t                   interval;  /* µs between two at the rate */
    sg_str_t                  rate;      /* as written, for the log */
    sg_msec_t                 full_logged;
} sg_rate_zone_t;

typedef struct {
    sg_rate_zone_t  *zone;               /* resolved at merge */
    sg_str_t         zone_name;
    int64_t          burst;              /* 0: the rate's count */
    sg_str_t         file;
    size_t           line;
} sg_rate_rule_t;

typedef sg_limit_zones_t  sg_rate_main_conf_t;    /* sg_rate_zone_t * */

typedef struct {
    sg_array_t  *rules[SG_RATE_KINDS];   /* sg_rate_rule_t; NULL: none */
} sg_rate_srv_conf_t;

static char *sg_rate_zone_directive(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_rate_rule_directive(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_rate_create_srv_conf(sg_conf_t *cf);
static char *sg_rate_merge_srv_conf(sg_conf_t *cf, void *prev, void *conf);
static char *sg_rate_postconfiguration(sg_conf_t *cf, void *conf);
static int sg_rate_step(sg_smtp_session_t *s, unsigned step, void *conf);

static const char  *sg_rate_kind_names[SG_RATE_KINDS] = {
    "message", "recipient"
};

static const sg_command_t  sg_rate_commands[] = {
    { "limit_message_zone", SG_MAIL_MAIN_CONF | SG_CONF_TAKE3,
      sg_rate_zone_directive, SG_MAIL_MAIN_CONF_OFFSET, SG_SMTP_STEP_MAIL,
      NULL },
    { "limit_recipient_zone", SG_MAIL_MAIN_CONF | SG_CONF_TAKE3,
      sg_rate_zone_directive, SG_MAIL_MAIN_CONF_OFFSET, SG_SMTP_STEP_RCPT,
      NULL },
    { "limit_message", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_TAKE12,
      sg_rate_rule_directive, SG_MAIL_SRV_CONF_OFFSET, SG_SMTP_STEP_MAIL,
      NULL },
    { "limit_recipient", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF
                         | SG_CONF_TAKE12,
      sg_rate_rule_directive, SG_MAIL_SRV_CONF_OFFSET, SG_SMTP_STEP_RCPT,
      NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_rate_module_ctx = {
    sg_limit_create_zones, NULL, sg_rate_create_srv_conf,
    sg_rate_merge_srv_conf, sg_rate_postconfiguration
};

sg_module_t  sg_limit_rate_module = {
    .name = "limit_rate",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_rate_module_ctx,
    .commands = sg_rate_commands,
};


/* ---- configuration -------------------------------------------------- */

static int
sg_rate_zone_init(sg_shm_zone_t *zone, void *old_data)
{
    sg_limit_table_init(zone, old_data, sizeof(sg_rate_table_t),
                        sizeof(sg_rate_entry_t));
    return SG_OK;
}

/* rate=COUNT/s|m|h|d */
static char *
sg_rate_parse_rate(sg_conf_t *cf, const sg_str_t *value, sg_rate_zone_t *z)
{
    sg_str_t  v = *value, n;
    u_char   *slash;

    if (v.len < 8 || memcmp(v.data, "rate=", 5) != 0
        || (slash = memchr(v.data, '/', v.len)) == NULL
        || v.data + v.len - slash != 2)
    {
        return sg_conf_invalid_value(cf, value, "rate=COUNT/s, /m, /h or "
                                     "/d");
    }
    n.data = v.data + 5;
    n.len = (size_t) (slash - n.data);
    if (sg_parse_int(&n, &z->count) != SG_OK || z->count < 1
        || z->count > 1000000)
    {
        return sg_conf_invalid_value(cf, value, "a COUNT from 1 to 1000000");
    }
    switch (slash[1]) {
    case 's':
        z->unit = 1000000LL;
        break;
    case 'm':
        z->unit = 60LL * 1000000;
        break;
    case 'h':
        z->unit = 3600LL * 1000000;
        break;
    case 'd':
        z->unit = 86400LL * 1000000;
        break;
    default:
        return sg_conf_invalid_value(cf, value, "rate=COUNT/s, /m, /h or "
                                     "/d");
    }
    z->interval = sg_max(z->unit / z->count, 1);
    z->rate.data = v.data + 5;
    z->rate.len = v.len - 5;
    return SG_CONF_OK;
}

/* limit_message_zone | limit_recipient_zone key zone=NAME:SIZE
 * rate=RATE; */
static char *
sg_rate_zone_directive(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_rate_main_conf_t  *rmcf = conf;
    sg_rate_zone_t       *z;
    sg_str_t             *value = cf->args->elts, name;
    int64_t               size;
    char                 *rv;

    rv = sg_limit_parse_zone(cf, &value[2], &name, &size);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    z = sg_limit_add_zone(cf, rmcf, cmd->name, &name,
                          sizeof(sg_rate_zone_t));
    if (z == NULL) {
        return SG_CONF_ERROR;
    }
    z->kind = (unsigned) cmd->offset;
    rv = sg_rate_parse_rate(cf, &value[3], z);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    z->key = sg_limit_compile_key(cf, cmd->name, &name, &value[1],
                                  "$auth_user");
    if (z->key == NULL) {
        return SG_CONF_ERROR;
    }
    /* The shared memory zone is known by its name alone: another kind of
     * zone of the same name is refused there. */
    z->zone = sg_shm_zone_add(cf, &name, (size_t) size,
                              &sg_limit_rate_module);
    if (z->zone == NULL) {
        return SG_CONF_ERROR;
    }
    z->zone->init = sg_rate_zone_init;
    return SG_CONF_OK;
}

/* limit_message | limit_recipient zone=NAME [burst=N]; */
static char *
sg_rate_rule_directive(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_rate_srv_conf_t  *rscf = conf;
    sg_str_t            *value = cf->args->elts, v;
    sg_rate_rule_t      *r;
    sg_array_t         **rules = &rscf->rules[cmd->offset];
    size_t               i;

    if (value[1].len < 6 || memcmp(value[1].data, "zone=", 5) != 0) {
        return sg_conf_invalid_value(cf, &value[1], "zone=NAME");
    }
    if (*rules == NULL) {
        *rules = sg_array_create(cf->pool, 2, sizeof(sg_rate_rule_t));
        if (*rules == NULL) {
            return SG_CONF_ERROR;
        }
    }
    r = (*rules)->elts;
    for (i = 0; i < (*rules)->nelts; i++) {
        if (r[i].zone_name.len == value[1].len - 5
            && memcmp(r[i].zone_name.data, value[1].data + 5,
                      value[1].len - 5) == 0)
        {
            return sg_conf_error(cf, 0, "%s zone=%.*s is given twice in "
                                 "this block", cmd->name,
                                 SG_STR_ARG(&r[i].zone_name));
        }
    }
    if ((*rules)->nelts == SG_RATE_RULES_MAX) {
        return sg_conf_error(cf, 0, "more than %d %s lines in one block",
                             SG_RATE_RULES_MAX, cmd->name);
    }
    r = sg_array_push(*rules);
    if (r == NULL) {
        return SG_CONF_ERROR;
    }
    memset(r, 0, sizeof(*r));
    r->zone_name.data = value[1].data + 5;
    r->zone_name.len = value[1].len - 5;
    r->file = cf->file->name;
    r->line = sg_conf_line(cf);
    if (cf->args->nelts == 3) {
        v = value[2];
        if (v.len < 7 || memcmp(v.data, "burst=", 6) != 0) {
            return sg_conf_invalid_value(cf, &value[2], "burst=N");
        }
        v.data += 6;
        v.len -= 6;
        if (sg_parse_int(&v, &r->burst) != SG_OK || r->burst < 1
            || r->burst > 1000000)
        {
            return sg_conf_invalid_value(cf, &value[2], "burst from 1 to "
                                         "1000000");
        }
    }
    return SG_CONF_OK;
}

static void *
sg_rate_create_srv_conf(sg_conf_t *cf)
{
    return sg_pcalloc(cf->pool, sizeof(sg_rate_srv_conf_t));
}

/* Each directive is inherited on its own: a server with limit_message
 * lines of its own uses only those (nginx), and still inherits the
 * mail block's limit_recipient lines.  Each names a zone of its kind
 * defined anywhere in the mail block. */
static char *
sg_rate_merge_srv_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_rate_srv_conf_t   *prev = parent, *conf = child;
    sg_rate_main_conf_t  *rmcf;
    sg_rate_rule_t       *r;
    size_t                i;
    unsigned              k;

    rmcf = sg_mail_conf_main((sg_mail_conf_ctx_t *) cf->ctx,
                             sg_limit_rate_module);
    for (k = 0; k < SG_RATE_KINDS; k++) {
        if (conf->rules[k] == NULL) {
            conf->rules[k] = prev->rules[k];
        }
        if (conf->rules[k] == NULL) {
            continue;
        }
        r = conf->rules[k]->elts;
        for (i = 0; i < conf->rules[k]->nelts; i++) {
            if (r[i].zone) {
                continue;
            }
            r[i].zone = sg_limit_find_zone(rmcf, &r[i].zone_name);
            if (r[i].zone == NULL) {
                return sg_conf_error_at(cf, &r[i].file, r[i].line,
                                        "limit_%s: no limit_%s_zone "
                                        "\"%.*s\"", sg_rate_kind_names[k],
                                        sg_rate_kind_names[k],
                                        SG_STR_ARG(&r[i].zone_name));
            }
            if (r[i].zone->kind != k) {
                return sg_conf_error_at(cf, &r[i].file, r[i].line,
                                        "limit_%s: \"%.*s\" is a "
                                        "limit_%s_zone (%.*s:%zu), it "
                                        "counts %ss",
                                        sg_rate_kind_names[k],
                                        SG_STR_ARG(&r[i].zone_name),
                                        sg_rate_kind_names[r[i].zone->kind],
                                        SG_STR_ARG(&r[i].zone->head.file),
                                        r[i].zone->head.line,
                                        sg_rate_kind_names[r[i].zone->kind]);
            }
        }
    }
    return SG_CONF_OK;
}

static char *
sg_rate_postconfiguration(sg_conf_t *cf, void *conf)
{
    sg_rate_srv_conf_t  *rscf = conf;
    sg_smtp_srv_conf_t  *sscf;

    if ((rscf->rules[0] == NULL || rscf->rules[0]->nelts == 0)
        && (rscf->rules[1] == NULL || rscf->rules[1]->nelts == 0))
    {
        return SG_CONF_OK;
    }
    sscf = sg_mail_conf_srv((sg_mail_conf_ctx_t *) cf->ctx, sg_smtp_module);
    if (sg_smtp_add_step_check(sscf, sg_rate_step, rscf) != SG_OK) {
        return sg_conf_error(cf, 0, "too many session hooks");
    }
    return SG_CONF_OK;
}


/* ---- counting ------------------------------------------------------- */

/* The entry of key in its window; with take, a free one for it (or the
 * one nearest to free, *evicted set).  NULL: none.  Under the lock. */
static sg_rate_entry_t *
sg_rate_entry(sg_rate_table_t *t, uint64_t key, int64_t now, bool take,
    bool *evicted)
{
    sg_rate_entry_t  *e, *victim = NULL;
    uint32_t          i;

    if (t->nentries == 0) {
        return NULL;
    }
    for (i = 0; i < SG_RATE_PROBE; i++) {
        e = &t->e[(key + i) % t->nentries];
        if (e->key == key) {
            return e;
        }
        if (e->key == 0 || e->full_at <= now) {
            if (victim == NULL || !(victim->key == 0
                                    || victim->full_at <= now))
            {
                victim = e;
            }
        } else if (victim == NULL
                   || (victim->key != 0 && victim->full_at > now
                       && e->full_at < victim->full_at))
        {
            victim = e;
        }
    }
    if (!take || victim == NULL) {
        return NULL;
    }
    *evicted = victim->key != 0 && victim->full_at > now;
    victim->key = key;
    victim->full_at = now;
    return victim;
}

/* How long until key may take one more step of rule r (µs); 0: now. */
static int64_t
sg_rate_wait(sg_rate_rule_t *r, uint64_t key, int64_t now)
{
    sg_rate_zone_t   *z = r->zone;
    sg_rate_entry_t  *e;
    int64_t           burst = r->burst ? r->burst : z->count, wait;
    bool              evicted = false;

    sg_shm_lock(z->zone);
    e = sg_rate_entry(z->zone->data, key, now, false, &evicted);
    wait = e ? e->full_at - now - z->interval * (burst - 1) : 0;
    sg_shm_unlock(z->zone);
    return wait > 0 ? wait : 0;
}

/* Take the step: one less in key's bucket of rule r. */
static void
sg_rate_take(sg_smtp_session_t *s, sg_rate_rule_t *r, uint64_t key,
    int64_t now)
{
    sg_rate_zone_t   *z = r->zone;
    sg_rate_entry_t  *e;
    bool              evicted = false;

    sg_shm_lock(z->zone);
    e = sg_rate_entry(z->zone->data, key, now, true, &evicted);
    if (e) {
        e->full_at = sg_max(e->full_at, now) + z->interval;
    }
    sg_shm_unlock(z->zone);
    if ((e == NULL || evicted)
        && (z->full_logged == 0
            || sg_current_msec - z->full_logged >= SG_RATE_FULL_LOG_EVERY))
    {
        z->full_logged = sg_current_msec ? sg_current_msec : 1;
        sg_log_error(SG_LOG_WARN, s->log, 0, "limit_%s_zone \"%.*s\" is "
                     "full: a key's count was forgotten to make room, so "
                     "it may send more than rate=%.*s; raise the zone's "
                     "size (%.*s:%zu)", sg_rate_kind_names[z->kind],
                     SG_STR_ARG(&z->head.name), SG_STR_ARG(&z->rate),
                     SG_STR_ARG(&z->head.file), z->head.line);
    }
}

/* Every rule of the step first says whether it lets the step through;
 * only then does each count it, so a step one limit refuses is counted
 * by none. */
static int
sg_rate_step(sg_smtp_session_t *s, unsigned step, void *conf)
{
    sg_rate_srv_conf_t  *rscf = conf;
    sg_array_t          *rules = rscf->rules[step];
    sg_rate_rule_t      *r;
    sg_str_t             key;
    uint64_t             keys[SG_RATE_RULES_MAX];
    int64_t              now, wait;
    size_t               i, n;

    if (rules == NULL || rules->nelts == 0) {
        return SG_OK;
    }
    now = (int64_t) sg_current_msec * 1000;
    r = rules->elts;
    n = rules->nelts;
    for (i = 0; i < n; i++) {
        keys[i] = 0;
        if (sg_smtp_complex_value(s, r[i].zone->key, &key) != SG_OK
            || key.len == 0)
        {
            continue;                   /* no key: not counted (nginx) */
        }
        keys[i] = sg_limit_hash(&key);
        wait = sg_rate_wait(&r[i], keys[i], now);
        if (wait) {
            sg_log_error(SG_LOG_WARN, s->log, 0, "limiting %ss by zone "
                         "\"%.*s\", key \"%.*s\": over rate=%.*s, "
                         "burst=%lld; the next in %lld s (limit_%s at "
                         "%.*s:%zu)", sg_rate_kind_names[step],
                         SG_STR_ARG(&r[i].zone->head.name), SG_STR_ARG(&key),
                         SG_STR_ARG(&r[i].zone->rate),
                         (long long) (r[i].burst ? r[i].burst
                                                 : r[i].zone->count),
                         (long long) ((wait + 999999) / 1000000),
                         sg_rate_kind_names[step], SG_STR_ARG(&r[i].file),
                         r[i].line);
            return SG_BUSY;
        }
    }
    for (i = 0; i < n; i++) {
        if (keys[i]) {
            sg_rate_take(s, &r[i], keys[i], now);
        }
    }
    return SG_OK;
}
