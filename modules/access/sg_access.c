/*
 * sg_access.c: "allow" and "deny": which client addresses a server
 * serves, as nginx's stream access module says it.
 *
 * The rules are read in order and the first that matches the client's
 * address decides; a client no rule matches is allowed.  They are
 * checked once, as the session starts: after a PROXY header (so the
 * address is the one it carried, when trusted) and before TLS, with the
 * rules of the address's default server.  A refused client on a plain
 * or STARTTLS address is greeted "554 5.7.1" and then told "503" to
 * everything but QUIT (RFC 5321, 3.1); on an implicit-TLS address it is
 * closed before any handshake, which would cost more than the refusal.
 */
#include "sg_smtp.h"

typedef struct {
    sg_cidr_t     cidr;
    bool          all;
    bool          deny;
    sg_str_t      file;
    size_t        line;
} sg_access_rule_t;

typedef struct {
    sg_array_t   *rules;            /* sg_access_rule_t; NULL: not set */
} sg_access_srv_conf_t;

static char *sg_access_rule(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_access_create_srv_conf(sg_conf_t *cf);
static char *sg_access_merge_srv_conf(sg_conf_t *cf, void *prev,
    void *conf);
static char *sg_access_postconfiguration(sg_conf_t *cf, void *conf);
static int sg_access_check(sg_smtp_session_t *s, void *conf);

static const sg_command_t  sg_access_commands[] = {
    { "allow", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_TAKE1,
      sg_access_rule, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "deny", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_TAKE1,
      sg_access_rule, SG_MAIL_SRV_CONF_OFFSET, 1, NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_access_module_ctx = {
    NULL, NULL, sg_access_create_srv_conf, sg_access_merge_srv_conf,
    sg_access_postconfiguration
};

sg_module_t  sg_access_module = {
    .name = "access",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_access_module_ctx,
    .commands = sg_access_commands,
};

/* allow address | CIDR | all;  deny ... */
static char *
sg_access_rule(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_access_srv_conf_t  *ascf = conf;
    sg_access_rule_t      *r;
    sg_str_t              *value = cf->args->elts;
    sg_array_t            *one = NULL;

    if (ascf->rules == NULL) {
        ascf->rules = sg_array_create(cf->pool, 4, sizeof(sg_access_rule_t));
        if (ascf->rules == NULL) {
            return SG_CONF_ERROR;
        }
    }
    r = sg_array_push(ascf->rules);
    if (r == NULL) {
        return SG_CONF_ERROR;
    }
    memset(r, 0, sizeof(*r));
    r->deny = cmd->offset == 1;
    r->file = cf->file->name;
    r->line = sg_conf_line(cf);
    if (sg_str_eq(&value[1], "all")) {
        r->all = true;
        return SG_CONF_OK;
    }
    if (sg_conf_add_cidr(cf, &one) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    r->cidr = *(sg_cidr_t *) one->elts;
    return SG_CONF_OK;
}

static void *
sg_access_create_srv_conf(sg_conf_t *cf)
{
    return sg_pcalloc(cf->pool, sizeof(sg_access_srv_conf_t));
}

/* A server with rules of its own uses only those (nginx). */
static char *
sg_access_merge_srv_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_access_srv_conf_t  *prev = parent, *conf = child;

    (void) cf;
    if (conf->rules == NULL) {
        conf->rules = prev->rules;
    }
    return SG_CONF_OK;
}

static char *
sg_access_postconfiguration(sg_conf_t *cf, void *conf)
{
    sg_access_srv_conf_t  *ascf = conf;
    sg_smtp_srv_conf_t    *sscf;

    if (ascf->rules == NULL || ascf->rules->nelts == 0) {
        return SG_CONF_OK;
    }
    sscf = sg_mail_conf_srv((sg_mail_conf_ctx_t *) cf->ctx, sg_smtp_module);
    if (sg_smtp_add_check(sscf, sg_access_check, ascf) != SG_OK) {
        return sg_conf_error(cf, 0, "too many session hooks");
    }
    return SG_CONF_OK;
}

static int
sg_access_check(sg_smtp_session_t *s, void *conf)
{
    sg_access_srv_conf_t  *ascf = conf;
    sg_access_rule_t      *r = ascf->rules->elts;
    sg_connection_t       *c = s->connection;
    size_t                 i;

    for (i = 0; i < ascf->rules->nelts; i++) {
        if (!r[i].all
            && !sg_cidr_match(&r[i].cidr, (struct sockaddr *) &c->sockaddr))
        {
            continue;
        }
        if (!r[i].deny) {
            return SG_OK;
        }
        sg_log_error(SG_LOG_INFO, s->log, 0, "access denied by the rule at "
                     "%.*s:%zu", SG_STR_ARG(&r[i].file), r[i].line);
        return SG_DECLINED;
    }
    return SG_OK;
}
