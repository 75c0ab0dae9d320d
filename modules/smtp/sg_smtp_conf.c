/*
 * sg_smtp_conf.c: the mail {} and server {} blocks, "listen", and the
 * SMTP front-end directives.
 *
 * Owns the mail configuration contexts (main and per-server arrays of
 * every mail module's conf), merging server settings over mail-level
 * ones, and turning listen directives into listening sockets.  Refuses a
 * server without an authentication backend or a relay, so that -t
 * catches what would otherwise fail at the first session.
 */
#include "sg_smtp.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif

typedef struct {
    sg_addr_t             addr;
    int                   backlog;
    int                   rcvbuf;
    int                   sndbuf;
    int                   keepalive;     /* SG_KEEPALIVE_* */
    int                   keepidle;
    int                   keepintvl;
    int                   keepcnt;
    int                   ipv6only;      /* -1: not given */
    unsigned              reuseport:1;
    unsigned              default_server:1;
    unsigned              ssl:1;
    unsigned              proxy_protocol:1;
    sg_smtp_srv_conf_t   *server;
    sg_str_t              file;
    size_t                line;
} sg_smtp_listen_t;

typedef struct {
    sg_array_t            servers;       /* sg_smtp_srv_conf_t * */
    sg_array_t            listens;       /* sg_smtp_listen_t */
    sg_smtp_variables_t  *variables;
} sg_smtp_main_conf_t;


static char *sg_mail_block(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_server_block(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_listen(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_not_served(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_resolver(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_error_log(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_protocol(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_capabilities(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_server_name(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_smtp_create_main_conf(sg_conf_t *cf);
static void *sg_smtp_create_srv_conf(sg_conf_t *cf);
static char *sg_smtp_merge_srv_conf(sg_conf_t *cf, void *prev, void *conf);
static char *sg_smtp_sender_allow(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_smtp_postconfiguration(sg_conf_t *cf, void *conf);

static const sg_command_t  sg_mail_commands[] = {
    { "mail", SG_MAIN_CONF | SG_CONF_BLOCK | SG_CONF_NOARGS,
      sg_mail_block, 0, 0, NULL },
    sg_null_command
};

sg_module_t  sg_mail_module = {
    .name = "mail",
    .type = SG_CORE_MODULE,
    .commands = sg_mail_commands,
};

static const sg_conf_enum_t  sg_smtp_auth_methods[] = {
    { "plain", SG_SMTP_AUTH_PLAIN },
    { "login", SG_SMTP_AUTH_LOGIN },
    { "cram-md5", SG_SMTP_AUTH_CRAM_MD5 },
    { "xoauth2", SG_SMTP_AUTH_XOAUTH2 },
    { "oauthbearer", SG_SMTP_AUTH_OAUTHBEARER },
    { "external", SG_SMTP_AUTH_EXTERNAL },
    { "none", SG_SMTP_AUTH_NONE },
    { NULL, 0 }
};

static const sg_conf_bounds_t  sg_smtp_timeout_bounds = { 1, 86400000LL };
static const sg_conf_bounds_t  sg_smtp_delay_bounds = { 0, 3600000LL };
static const sg_conf_bounds_t  sg_smtp_attempts_bounds = { 1, 100 };
static const sg_conf_bounds_t  sg_smtp_errors_bounds = { 1, 1000 };
static const sg_conf_bounds_t  sg_smtp_buffer_bounds = { 1024, 1048576 };

#define SG_SRV  (SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF)

static const sg_command_t  sg_smtp_commands[] = {
    { "server", SG_MAIL_MAIN_CONF | SG_CONF_BLOCK | SG_CONF_NOARGS,
      sg_smtp_server_block, 0, 0, NULL },
    { "listen", SG_MAIL_SRV_CONF | SG_CONF_1MORE,
      sg_smtp_listen, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "protocol", SG_MAIL_SRV_CONF | SG_CONF_TAKE1,
      sg_smtp_protocol, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "server_name", SG_SRV | SG_CONF_1MORE, sg_smtp_server_name,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "timeout", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_smtp_srv_conf_t, timeout),
      &sg_smtp_timeout_bounds },
    { "max_errors", SG_SRV | SG_CONF_TAKE1, sg_conf_set_num_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_smtp_srv_conf_t, max_errors),
      &sg_smtp_errors_bounds },
    { "smtp_greeting_delay", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_smtp_srv_conf_t, greeting_delay), &sg_smtp_delay_bounds },
    { "smtp_auth_attempts", SG_SRV | SG_CONF_TAKE1, sg_conf_set_num_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_smtp_srv_conf_t, auth_attempts),
      &sg_smtp_attempts_bounds },
    { "smtp_auth_fail_delay", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_smtp_srv_conf_t, auth_fail_delay), &sg_smtp_delay_bounds },
    { "smtp_auth_timeout", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_smtp_srv_conf_t, auth_timeout),
      &sg_smtp_timeout_bounds },
    { "auth_fail_limit", SG_SRV | SG_CONF_1MORE, sg_smtp_auth_fail_limit,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "auth_cache", SG_SRV | SG_CONF_1MORE, sg_smtp_auth_cache,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "smtp_client_buffer", SG_SRV | SG_CONF_TAKE1, sg_conf_set_size_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_smtp_srv_conf_t, client_buffer),
      &sg_smtp_buffer_bounds },
    { "smtp_auth", SG_SRV | SG_CONF_1MORE, sg_conf_set_bitmask_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_smtp_srv_conf_t, auth_methods),
      sg_smtp_auth_methods },
    { "smtp_auth_require_tls", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_smtp_srv_conf_t, auth_require_tls), NULL },
    { "smtp_capabilities", SG_SRV | SG_CONF_1MORE, sg_smtp_capabilities,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "smtp_sender_allow", SG_SRV | SG_CONF_TAKE1, sg_smtp_sender_allow,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    /* nginx mail directives for what smtpgate does not do: read, so
     * that an nginx mail block carries over, and without effect
     * (docs/directives.md, "nginx directives without effect"). */
    { "imap_auth", SG_SRV | SG_CONF_1MORE, sg_smtp_not_served,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "imap_capabilities", SG_SRV | SG_CONF_1MORE, sg_smtp_not_served,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "imap_client_buffer", SG_SRV | SG_CONF_TAKE1, sg_smtp_not_served,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "pop3_auth", SG_SRV | SG_CONF_1MORE, sg_smtp_not_served,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "pop3_capabilities", SG_SRV | SG_CONF_1MORE, sg_smtp_not_served,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "resolver", SG_SRV | SG_CONF_1MORE, sg_smtp_resolver,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "resolver_timeout", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_smtp_srv_conf_t, resolver_timeout),
      &sg_smtp_timeout_bounds },
    { "error_log", SG_SRV | SG_CONF_TAKE12, sg_smtp_error_log,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_smtp_module_ctx = {
    sg_smtp_create_main_conf,
    NULL,
    sg_smtp_create_srv_conf,
    sg_smtp_merge_srv_conf,
    sg_smtp_postconfiguration
};

sg_module_t  sg_smtp_module = {
    .name = "smtp",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_smtp_module_ctx,
    .commands = sg_smtp_commands,
    .exit_process = sg_smtp_exit_process,
};

sg_smtp_srv_conf_t *
sg_smtp_conf_of(void **srv_conf)
{
    return srv_conf[sg_smtp_module.ctx_index];
}

sg_smtp_srv_conf_t *
sg_smtp_conf_current(sg_conf_t *cf)
{
    return sg_smtp_conf_of(((sg_mail_conf_ctx_t *) cf->ctx)->srv_conf);
}

sg_smtp_variables_t *
sg_smtp_variables_of(void **main_conf)
{
    return ((sg_smtp_main_conf_t *)
            main_conf[sg_smtp_module.ctx_index])->variables;
}

int
sg_smtp_add_hook(sg_smtp_srv_conf_t *sscf, bool close, sg_smtp_hook_pt handler,
    void *conf)
{
    sg_smtp_hook_t  *h = close ? sscf->close_hooks : sscf->open_hooks;
    unsigned        *n = close ? &sscf->nclose_hooks : &sscf->nopen_hooks;

    if (*n == SG_SMTP_HOOKS_MAX) {
        return SG_ERROR;
    }
    h[*n].handler = handler;
    h[*n].conf = conf;
    (*n)++;
    return SG_OK;
}

static int
sg_smtp_add_to(sg_smtp_check_t *checks, unsigned *n, sg_smtp_check_pt check,
    void *conf)
{
    if (*n == SG_SMTP_HOOKS_MAX) {
        return SG_ERROR;
    }
    checks[*n].check = check;
    checks[*n].conf = conf;
    (*n)++;
    return SG_OK;
}

int
sg_smtp_add_check(sg_smtp_srv_conf_t *sscf, sg_smtp_check_pt check,
    void *conf)
{
    return sg_smtp_add_to(sscf->checks, &sscf->nchecks, check, conf);
}

int
sg_smtp_add_login_check(sg_smtp_srv_conf_t *sscf, sg_smtp_check_pt check,
    void *conf)
{
    return sg_smtp_add_to(sscf->login_checks, &sscf->nlogin_checks, check,
                          conf);
}

int
sg_smtp_add_step_check(sg_smtp_srv_conf_t *sscf, sg_smtp_step_pt check,
    void *conf)
{
    if (sscf->nstep_checks == SG_SMTP_HOOKS_MAX) {
        return SG_ERROR;
    }
    sscf->step_checks[sscf->nstep_checks].check = check;
    sscf->step_checks[sscf->nstep_checks].conf = conf;
    sscf->nstep_checks++;
    return SG_OK;
}

/* smtp_sender_allow VALUE; */
static char *
sg_smtp_sender_allow(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_smtp_srv_conf_t  *sscf = conf;
    sg_str_t            *value = cf->args->elts;

    (void) cmd;
    if (sscf->sender_allow) {
        return sg_conf_duplicate(cf);
    }
    sscf->sender_allow = sg_smtp_compile_complex_value(cf, &value[1]);
    if (sscf->sender_allow == NULL) {
        return SG_CONF_ERROR;
    }
    if (sg_smtp_complex_value_is_static(sscf->sender_allow)) {
        return sg_conf_error(cf, 0, "smtp_sender_allow \"%.*s\" has no "
                             "variable, so it would say the same of every "
                             "sender: use a map of $auth_user and "
                             "$mail_from", SG_STR_ARG(&value[1]));
    }
    sscf->sender_allow_file = cf->file->name;
    sscf->sender_allow_line = sg_conf_line(cf);
    return SG_CONF_OK;
}

/* A MAIL's sender into s->mail_from (its buffer made once per
 * session): SG_OK, or SG_ERROR when it cannot be read. */
static int
sg_smtp_step_sender(sg_smtp_session_t *s, const sg_str_t *args)
{
    sg_smtp_path_t  path;

    s->mail_from.len = 0;
    if (args == NULL
        || sg_smtp_parse_path(args, "FROM:", true, &path) != SG_OK)
    {
        return SG_ERROR;
    }
    if (s->mail_from.data == NULL) {
        s->mail_from.data = sg_pnalloc(s->pool, SG_SMTP_PATH_MAX);
        if (s->mail_from.data == NULL) {
            return SG_ERROR;
        }
    }
    memcpy(s->mail_from.data, path.addr.data, path.addr.len);
    s->mail_from.len = path.addr.len;
    return SG_OK;
}

int
sg_smtp_step(sg_smtp_session_t *s, unsigned step, const sg_str_t *args)
{
    sg_smtp_srv_conf_t  *sscf = s->conf;
    sg_str_t             v;
    unsigned             i;

    if (step == SG_SMTP_STEP_MAIL && sg_smtp_steps_checked(sscf)) {
        /* What is checked is what the backend gets: a sender that
         * cannot be read here is not passed on for the backend to read
         * its own way. */
        if (sg_smtp_step_sender(s, args) != SG_OK) {
            sg_log_error(SG_LOG_INFO, s->log, 0, "MAIL refused: its "
                         "sender cannot be read, and the server's checks "
                         "need it");
            return SG_ERROR;
        }
        if (sscf->sender_allow
            && (sg_smtp_complex_value(s, sscf->sender_allow, &v) != SG_OK
                || v.len == 0 || (v.len == 1 && v.data[0] == '0')))
        {
            if (s->senders_refused < UINT32_MAX) {
                s->senders_refused++;
            }
            sg_log_error(SG_LOG_WARN, s->log, 0, "sender \"%s\" refused "
                         "for this login (smtp_sender_allow at %.*s:%zu)",
                         sg_smtp_log_login(&s->mail_from),
                         SG_STR_ARG(&sscf->sender_allow_file),
                         sscf->sender_allow_line);
            return SG_DECLINED;
        }
    }
    for (i = 0; i < sscf->nstep_checks; i++) {
        if (sscf->step_checks[i].check(s, step, sscf->step_checks[i].conf)
            != SG_OK)
        {
            if (s->limited[step] < UINT32_MAX) {
                s->limited[step]++;
            }
            return SG_BUSY;
        }
    }
    return SG_OK;
}

const char *
sg_smtp_step_refusal(unsigned step, int rc)
{
    if (rc == SG_ERROR) {
        return "501 5.5.4 Syntax: MAIL FROM:<address>";
    }
    if (rc == SG_DECLINED) {
        return "553 5.7.1 Sender address rejected: not owned by the login";
    }
    return step == SG_SMTP_STEP_MAIL
           ? "450 4.7.1 Error: message rate limit exceeded, try again later"
           : "450 4.7.1 Error: recipient rate limit exceeded, try again "
             "later";
}

int
sg_smtp_step_refuse(sg_smtp_session_t *s, unsigned step, int rc)
{
    const char  *text = sg_smtp_step_refusal(step, rc);

    return rc == SG_BUSY ? sg_smtp_reply(s, "%s", text)
                         : sg_smtp_error(s, "%s", text);
}

/* Contexts. */

static int
sg_mail_create_confs(sg_conf_t *cf, sg_mail_conf_ctx_t *ctx, bool main)
{
    const sg_mail_module_ctx_t  *mctx;
    size_t                       i, n = sg_count_modules(SG_MAIL_MODULE);

    if (main) {
        ctx->main_conf = sg_pcalloc(cf->pool, n * sizeof(void *));
        if (ctx->main_conf == NULL) {
            return SG_ERROR;
        }
    }
    ctx->srv_conf = sg_pcalloc(cf->pool, n * sizeof(void *));
    if (ctx->srv_conf == NULL) {
        return SG_ERROR;
    }
    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->type != SG_MAIL_MODULE) {
            continue;
        }
        mctx = sg_modules[i]->ctx;
        if (main && mctx->create_main_conf) {
            ctx->main_conf[sg_modules[i]->ctx_index] =
                mctx->create_main_conf(cf);
            if (ctx->main_conf[sg_modules[i]->ctx_index] == NULL) {
                return SG_ERROR;
            }
        }
        if (mctx->create_srv_conf) {
            ctx->srv_conf[sg_modules[i]->ctx_index] =
                mctx->create_srv_conf(cf);
            if (ctx->srv_conf[sg_modules[i]->ctx_index] == NULL) {
                return SG_ERROR;
            }
        }
    }
    return SG_OK;
}

static char *
sg_mail_parse_block(sg_conf_t *cf, void *ctx, unsigned cmd_type)
{
    void      *prev_ctx = cf->ctx;
    unsigned   prev_module = cf->module_type, prev_cmd = cf->cmd_type;
    char      *rv;

    cf->ctx = ctx;
    cf->module_type = SG_MAIL_MODULE;
    cf->cmd_type = cmd_type;
    rv = sg_conf_parse(cf, NULL);
    cf->ctx = prev_ctx;
    cf->module_type = prev_module;
    cf->cmd_type = prev_cmd;
    return rv;
}

/* A server's label, unique among the servers: its server_name, then
 * "NAME#2" for a second server of that name, and so on. */
static int
sg_smtp_server_label(sg_conf_t *cf, sg_smtp_main_conf_t *mcf,
    sg_smtp_srv_conf_t *sscf)
{
    sg_smtp_srv_conf_t  **srv = mcf->servers.elts;
    unsigned              same = 1;
    size_t                i;
    u_char               *p;

    for (i = 0; i < mcf->servers.nelts && srv[i] != sscf; i++) {
        same += srv[i]->server_name.len == sscf->server_name.len
                && memcmp(srv[i]->server_name.data, sscf->server_name.data,
                          sscf->server_name.len) == 0;
    }
    if (same == 1) {
        sscf->label = sscf->server_name;
        return SG_OK;
    }
    p = sg_pnalloc(cf->pool, sscf->server_name.len + 16);
    if (p == NULL) {
        return SG_ERROR;
    }
    sscf->label.data = p;
    sscf->label.len = (size_t) (sg_slprintf(p, p + sscf->server_name.len
                                            + 16, "%.*s#%u",
                                            SG_STR_ARG(&sscf->server_name),
                                            same) - p);
    return SG_OK;
}

sg_smtp_srv_conf_t **
sg_smtp_servers(sg_cycle_t *cycle, size_t *n)
{
    sg_mail_conf_ctx_t   *ctx;
    sg_smtp_main_conf_t  *mcf;

    *n = 0;
    if (cycle == NULL || cycle->conf_ctx == NULL
        || (ctx = cycle->conf_ctx[sg_mail_module.index]) == NULL)
    {
        return NULL;
    }
    mcf = sg_mail_conf_main(ctx, sg_smtp_module);
    *n = mcf->servers.nelts;
    return mcf->servers.elts;
}

static char *
sg_mail_merge_servers(sg_conf_t *cf, sg_mail_conf_ctx_t *ctx)
{
    const sg_mail_module_ctx_t  *mctx;
    sg_smtp_main_conf_t         *mcf;
    sg_smtp_srv_conf_t         **srv;
    size_t                       i, s;
    char                        *rv;

    /* While merging, cf->ctx is the server's context, so that a module
     * can reach the server's other confs (sg_smtp_conf_of). */
    mcf = sg_mail_conf_main(ctx, sg_smtp_module);
    srv = mcf->servers.elts;
    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->type != SG_MAIL_MODULE) {
            continue;
        }
        mctx = sg_modules[i]->ctx;
        for (s = 0; s < mcf->servers.nelts; s++) {
            if (mctx->merge_srv_conf == NULL) {
                continue;
            }
            cf->ctx = srv[s]->ctx;
            rv = mctx->merge_srv_conf(cf,
                     ctx->srv_conf[sg_modules[i]->ctx_index],
                     srv[s]->ctx->srv_conf[sg_modules[i]->ctx_index]);
            if (rv != SG_CONF_OK) {
                return rv;
            }
        }
    }
    for (s = 0; s < mcf->servers.nelts; s++) {
        if (sg_smtp_server_label(cf, mcf, srv[s]) != SG_OK) {
            return SG_CONF_ERROR;
        }
    }
    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->type != SG_MAIL_MODULE) {
            continue;
        }
        mctx = sg_modules[i]->ctx;
        for (s = 0; s < mcf->servers.nelts; s++) {
            if (mctx->postconfiguration == NULL) {
                continue;
            }
            cf->ctx = srv[s]->ctx;
            rv = mctx->postconfiguration(cf,
                     srv[s]->ctx->srv_conf[sg_modules[i]->ctx_index]);
            if (rv != SG_CONF_OK) {
                return rv;
            }
        }
    }
    return SG_CONF_OK;
}

static char *sg_smtp_add_listening(sg_conf_t *cf, sg_smtp_main_conf_t *mcf);
static void sg_smtp_skip_server(sg_conf_t *cf, sg_smtp_main_conf_t *mcf,
    sg_smtp_srv_conf_t *sscf);
static void sg_smtp_warn_no_login(sg_conf_t *cf, sg_smtp_main_conf_t *mcf);

static char *
sg_mail_block(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_mail_conf_ctx_t  *ctx;
    sg_smtp_main_conf_t *mcf;
    void                *prev_ctx;
    char                *rv;
    int                  rc;

    (void) cmd;
    if (*(void **) conf) {
        return "is duplicate";
    }
    ctx = sg_pcalloc(cf->pool, sizeof(sg_mail_conf_ctx_t));
    if (ctx == NULL) {
        return SG_CONF_ERROR;
    }
    /* Modules define their variables from create_main_conf, which finds
     * the registry through cf->ctx. */
    prev_ctx = cf->ctx;
    cf->ctx = ctx;
    rc = sg_mail_create_confs(cf, ctx, true);
    cf->ctx = prev_ctx;
    if (rc != SG_OK) {
        return SG_CONF_ERROR;
    }
    *(void **) conf = ctx;
    rv = sg_mail_parse_block(cf, ctx, SG_MAIL_MAIN_CONF);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    rv = sg_mail_merge_servers(cf, ctx);
    if (rv == SG_CONF_OK) {
        cf->ctx = ctx;
        rv = sg_smtp_variables_check(cf);
    }
    cf->ctx = cf->cycle->conf_ctx;
    if (rv != SG_CONF_OK) {
        return rv;
    }
    mcf = sg_mail_conf_main(ctx, sg_smtp_module);
    return sg_smtp_add_listening(cf, mcf);
}

static char *
sg_smtp_server_block(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_mail_conf_ctx_t    *parent = cf->ctx, *ctx;
    sg_smtp_main_conf_t   *mcf;
    sg_smtp_srv_conf_t    *sscf, **slot;
    size_t                 listens;
    char                  *rv;

    (void) cmd;
    (void) conf;
    ctx = sg_pcalloc(cf->pool, sizeof(sg_mail_conf_ctx_t));
    if (ctx == NULL) {
        return SG_CONF_ERROR;
    }
    ctx->main_conf = parent->main_conf;
    if (sg_mail_create_confs(cf, ctx, false) != SG_OK) {
        return SG_CONF_ERROR;
    }
    sscf = sg_mail_conf_srv(ctx, sg_smtp_module);
    sscf->ctx = ctx;
    sscf->file = cf->file->name;
    sscf->line = sg_conf_line(cf);

    mcf = sg_mail_conf_main(parent, sg_smtp_module);
    slot = sg_array_push(&mcf->servers);
    if (slot == NULL) {
        return SG_CONF_ERROR;
    }
    *slot = sscf;
    listens = mcf->listens.nelts;
    rv = sg_mail_parse_block(cf, ctx, SG_MAIL_SRV_CONF);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    if (sscf->skipped) {
        sg_smtp_skip_server(cf, mcf, sscf);
        return SG_CONF_OK;
    }
    if (mcf->listens.nelts == listens) {
        /* no client could ever reach it (as in nginx, an error) */
        return sg_conf_error_at(cf, &sscf->file, sscf->line, "no "
                                "\"listen\" is defined for this server");
    }
    return SG_CONF_OK;
}

/* An nginx IMAP or POP3 server: read whole (so that its errors are
 * found), then dropped with its listens, which stay closed. */
static void
sg_smtp_skip_server(sg_conf_t *cf, sg_smtp_main_conf_t *mcf,
    sg_smtp_srv_conf_t *sscf)
{
    sg_smtp_listen_t  *l = mcf->listens.elts;
    size_t             i, kept = 0;

    mcf->servers.nelts--;                 /* it was pushed last */
    for (i = 0; i < mcf->listens.nelts; i++) {
        if (l[i].server != sscf) {
            l[kept++] = l[i];
        }
    }
    mcf->listens.nelts = kept;
    sg_conf_warn_at(cf, &sscf->file, sscf->line, "this server (protocol "
                    "%s) is skipped and its addresses are not listened on: "
                    "smtpgate proxies SMTP only", sscf->skipped);
}

/* Directives. */

static int
sg_smtp_listen_size(sg_conf_t *cf, const sg_str_t *arg, size_t skip,
    int *out)
{
    sg_str_t  v;
    int64_t   n;

    v.data = arg->data + skip;
    v.len = arg->len - skip;
    if (sg_parse_size(&v, &n) != SG_OK || n < 1 || n > (1 << 30)) {
        (void) sg_conf_invalid_value(cf, arg, "a size of 1 to 1g");
        return SG_ERROR;
    }
    *out = (int) n;
    return SG_OK;
}

/* One of so_keepalive=[keepidle]:[keepintvl]:[keepcnt]: a time in
 * seconds (idle, interval) or a count, empty for the system's. */
static int
sg_smtp_keepalive_part(const u_char *p, const u_char *end, bool time,
    int *out)
{
    sg_str_t  v;
    int64_t   n;

    v.data = (u_char *) p;
    v.len = (size_t) (end - p);
    if (v.len == 0) {
        *out = 0;
        return SG_OK;
    }
    if (time) {
        if (sg_parse_time(&v, &n) != SG_OK || n < 1000 || n > 32767000
            || n % 1000)
        {
            return SG_ERROR;
        }
        *out = (int) (n / 1000);
        return SG_OK;
    }
    if (sg_parse_int(&v, &n) != SG_OK || n < 1 || n > 127) {
        return SG_ERROR;
    }
    *out = (int) n;
    return SG_OK;
}

static int
sg_smtp_listen_keepalive(sg_conf_t *cf, sg_smtp_listen_t *ls,
    const sg_str_t *arg)
{
    const u_char  *p = arg->data + 13, *end = arg->data + arg->len, *c1, *c2;

    if (sg_str_eq(arg, "so_keepalive=on")
        || sg_str_eq(arg, "so_keepalive=off"))
    {
        ls->keepalive = arg->len == 15 ? SG_KEEPALIVE_ON : SG_KEEPALIVE_OFF;
        return SG_OK;
    }
    c1 = memchr(p, ':', (size_t) (end - p));
    c2 = c1 ? memchr(c1 + 1, ':', (size_t) (end - c1 - 1)) : NULL;
    if (c2 == NULL || (c1 == p && c2 == c1 + 1 && c2 + 1 == end)
        || sg_smtp_keepalive_part(p, c1, true, &ls->keepidle) != SG_OK
        || sg_smtp_keepalive_part(c1 + 1, c2, true, &ls->keepintvl) != SG_OK
        || sg_smtp_keepalive_part(c2 + 1, end, false, &ls->keepcnt) != SG_OK)
    {
        (void) sg_conf_invalid_value(cf, arg, "so_keepalive= takes on, off "
                                     "or [keepidle]:[keepintvl]:[keepcnt] "
                                     "(times of 1s to 32767s, a count of 1 "
                                     "to 127)");
        return SG_ERROR;
    }
    ls->keepalive = SG_KEEPALIVE_ON;
    return SG_OK;
}

/* The socket options of nginx's mail "listen": rcvbuf=, sndbuf=, bind,
 * ipv6only=, so_keepalive=.  SG_OK, SG_ERROR (cf->error set, logged) or
 * SG_DECLINED: not one of them. */
static int
sg_smtp_listen_option(sg_conf_t *cf, sg_smtp_listen_t *ls,
    const sg_str_t *arg)
{
    if (arg->len > 7 && sg_str_has_prefix(arg, "rcvbuf=")) {
        return sg_smtp_listen_size(cf, arg, 7, &ls->rcvbuf);
    }
    if (arg->len > 7 && sg_str_has_prefix(arg, "sndbuf=")) {
        return sg_smtp_listen_size(cf, arg, 7, &ls->sndbuf);
    }
    if (sg_str_eq(arg, "bind")) {
        return SG_OK;           /* every address has its own socket */
    }
    if (sg_str_eq(arg, "ipv6only=on") || sg_str_eq(arg, "ipv6only=off")) {
        if (ls->addr.sa.ss_family != AF_INET6) {
            (void) sg_conf_invalid_value(cf, arg, "ipv6only= is for IPv6 "
                                         "addresses");
            return SG_ERROR;
        }
        ls->ipv6only = arg->len == 11;
        return SG_OK;
    }
    if (arg->len > 13 && sg_str_has_prefix(arg, "so_keepalive=")) {
        return sg_smtp_listen_keepalive(cf, ls, arg);
    }
    return SG_DECLINED;
}

static char *
sg_smtp_listen(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_smtp_srv_conf_t   *sscf = conf;
    sg_smtp_main_conf_t  *mcf;
    sg_smtp_listen_t     *ls;
    sg_str_t             *value = cf->args->elts;
    sg_url_t              u;
    sg_str_t              v;
    int64_t               n;
    size_t                i;
    int                   rc;

    (void) cmd;
    memset(&u, 0, sizeof(u));
    u.url = value[1];
    u.listen = 1;
    if (sg_parse_url(cf->pool, &u) != SG_OK) {
        return sg_conf_error(cf, 0, "%s in \"%.*s\" of the \"listen\" "
                             "directive", u.err, SG_STR_ARG(&u.url));
    }
    if (u.naddrs > 1) {
        return sg_conf_error(cf, 0, "\"%.*s\" of the \"listen\" directive "
                             "resolves to %zu addresses: listen on each "
                             "address with its own directive",
                             SG_STR_ARG(&u.url), u.naddrs);
    }
    mcf = sg_mail_conf_main(sscf->ctx, sg_smtp_module);
    ls = mcf->listens.elts;
    for (i = 0; i < mcf->listens.nelts; i++) {
        if (ls[i].server == sscf
            && sg_sockaddr_eq((struct sockaddr *) &ls[i].addr.sa,
                              ls[i].addr.socklen,
                              (struct sockaddr *) &u.addrs[0].sa,
                              u.addrs[0].socklen))
        {
            return sg_conf_error(cf, 0, "duplicate listen %.*s",
                                 SG_STR_ARG(&u.addrs[0].name));
        }
    }
    ls = sg_array_push(&mcf->listens);
    if (ls == NULL) {
        return SG_CONF_ERROR;
    }
    ls->addr = u.addrs[0];
    ls->backlog = 511;
    ls->ipv6only = -1;
    ls->server = sscf;
    ls->file = cf->file->name;
    ls->line = sg_conf_line(cf);

    for (i = 2; i < cf->args->nelts; i++) {
        if (value[i].len > 8 && memcmp(value[i].data, "backlog=", 8) == 0) {
            v.data = value[i].data + 8;
            v.len = value[i].len - 8;
            if (sg_parse_int(&v, &n) != SG_OK || n < 1 || n > 65535) {
                return sg_conf_invalid_value(cf, &value[i],
                                             "backlog must be 1 to 65535");
            }
            ls->backlog = (int) n;
        } else if (sg_str_eq(&value[i], "reuseport")) {
#if (SG_HAVE_REUSEPORT)
            ls->reuseport = 1;
#else
            return "reuseport is not supported on this platform";
#endif
        } else if (sg_str_eq(&value[i], "default_server")) {
            ls->default_server = 1;
        } else if ((rc = sg_smtp_listen_option(cf, ls, &value[i]))
                   != SG_DECLINED)
        {
            if (rc != SG_OK) {
                return SG_CONF_ERROR;
            }
        } else if (sg_str_eq(&value[i], "ssl")) {
#if (SG_HAVE_SSL_MODULE)
            ls->ssl = 1;
#else
            return "\"ssl\" needs the ssl module, left out of this build";
#endif
        } else if (sg_str_eq(&value[i], "proxy_protocol")) {
#if (SG_HAVE_REALIP_MODULE)
            ls->proxy_protocol = 1;
#else
            return "\"proxy_protocol\" needs the realip module, left out "
                   "of this build";
#endif
        } else {
            return sg_conf_error(cf, 0, "invalid parameter \"%.*s\" in "
                                 "\"listen\"", SG_STR_ARG(&value[i]));
        }
    }
    return SG_CONF_OK;
}

static char *
sg_smtp_protocol(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t            *value = cf->args->elts;
    sg_smtp_srv_conf_t  *sscf = conf;

    (void) cmd;
    if (sg_str_eq(&value[1], "imap") || sg_str_eq(&value[1], "pop3")) {
        sscf->skipped = sg_str_eq(&value[1], "imap") ? "imap" : "pop3";
        return SG_CONF_OK;
    }
    if (!sg_str_eq(&value[1], "smtp")) {
        return sg_conf_invalid_value(cf, &value[1], "only \"smtp\" is "
                                     "served (\"imap\" and \"pop3\" "
                                     "servers are read and skipped)");
    }
    return SG_CONF_OK;
}

static char *
sg_smtp_not_served(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    (void) cf;
    (void) cmd;
    (void) conf;
    return SG_CONF_OK;
}

/* resolver address ... [valid=time] [ipv6=on|off] [status_zone=zone]
 * | off: the name servers client host names are asked of (Client-Host,
 * XCLIENT NAME).  Names among the addresses are resolved now, at
 * configuration time, as nginx does. */
static char *
sg_smtp_resolver(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t            *value = cf->args->elts, v;
    sg_smtp_srv_conf_t  *sscf = conf;
    sg_resolver_t       *r;
    sg_url_t             u;
    size_t               i, k;
    int64_t              ms;

    (void) cmd;
    if (sscf->resolver != SG_CONF_UNSET_PTR) {
        return sg_conf_duplicate(cf);
    }
    if (cf->args->nelts == 2 && sg_str_eq(&value[1], "off")) {
        sscf->resolver = NULL;
        return SG_CONF_OK;
    }
    r = sg_pcalloc(cf->pool, sizeof(sg_resolver_t));
    if (r == NULL) {
        return SG_CONF_ERROR;
    }
    r->addrs = sg_pcalloc(cf->pool,
                          SG_RESOLVER_ADDRS_MAX * sizeof(sg_addr_t));
    if (r->addrs == NULL) {
        return SG_CONF_ERROR;
    }
    r->ipv6 = 1;
    for (i = 1; i < cf->args->nelts; i++) {
        if (value[i].len > 6 && sg_str_has_prefix(&value[i], "valid=")) {
            v.data = value[i].data + 6;
            v.len = value[i].len - 6;
            if (sg_parse_time(&v, &ms) != SG_OK || ms < 1000) {
                return sg_conf_invalid_value(cf, &value[i], "valid= takes "
                                             "a time of at least 1s");
            }
            r->valid = ms;
            continue;
        }
        if (sg_str_eq(&value[i], "ipv6=on")
            || sg_str_eq(&value[i], "ipv6=off"))
        {
            r->ipv6 = sg_str_eq(&value[i], "ipv6=on");
            continue;
        }
        if (value[i].len > 12
            && sg_str_has_prefix(&value[i], "status_zone="))
        {
            continue;           /* nginx's statistics: nothing to count */
        }
        if (memchr(value[i].data, '=', value[i].len)) {
            return sg_conf_invalid_value(cf, &value[i], "the parameters "
                                         "are valid=, ipv6= and "
                                         "status_zone=");
        }
        memset(&u, 0, sizeof(u));
        u.url = value[i];
        u.default_port = 53;
        if (sg_parse_url(cf->pool, &u) != SG_OK) {
            return sg_conf_invalid_value(cf, &value[i], u.err);
        }
        for (k = 0; k < u.naddrs; k++) {
            if (r->naddrs == SG_RESOLVER_ADDRS_MAX) {
                return sg_conf_invalid_value(cf, &value[i], "a resolver "
                                             "takes at most 16 name server "
                                             "addresses");
            }
            r->addrs[r->naddrs++] = u.addrs[k];
        }
    }
    if (r->naddrs == 0) {
        return sg_conf_error(cf, 0, "\"resolver\" needs the address of a "
                             "name server, or \"off\"");
    }
    sscf->resolver = r;
    return SG_CONF_OK;
}

/* error_log in mail or server: that server's sessions log there, at
 * that level, instead of the main error_log (as in nginx); given more
 * than once, to each target at its own level.  The files are opened with
 * the main one. */
static char *
sg_smtp_error_log(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_smtp_srv_conf_t  *sscf = conf;

    (void) cmd;
    if (sscf->logs == NULL) {
        sscf->log_level = 0;
    }
    return sg_conf_error_log_sink(cf, &sscf->logs, &sscf->log_level);
}

static char *
sg_smtp_add_name(sg_conf_t *cf, sg_smtp_srv_conf_t *sscf, sg_str_t *v)
{
    sg_smtp_name_t  *n;
    char             err[256];
    size_t           i;

    n = sg_array_push(sscf->names);
    if (n == NULL) {
        return SG_CONF_ERROR;
    }
    n->name = *v;
    if (v->len > 1 && v->data[0] == '~') {
        n->kind = SG_SMTP_NAME_REGEX;
        n->name.data++;
        n->name.len--;
        n->regex = sg_regex_compile(cf->pool, &n->name, err, sizeof(err));
        if (n->regex == NULL) {
            return sg_conf_error(cf, 0, "invalid server_name regex "
                                 "\"%.*s\": %s", SG_STR_ARG(v), err);
        }
        return SG_CONF_OK;
    }
    for (i = 0; i < v->len; i++) {
        v->data[i] = sg_tolower(v->data[i]);
    }
    if (v->len > 2 && v->data[0] == '*' && v->data[1] == '.') {
        n->kind = SG_SMTP_NAME_WILDCARD;
        n->name.data++;                 /* keep the dot: ".example.org" */
        n->name.len--;
    } else if (v->len > 1 && v->data[0] == '.') {
        n->kind = SG_SMTP_NAME_DOMAIN;
    } else if (memchr(v->data, '*', v->len)) {
        return sg_conf_invalid_value(cf, v, "a wildcard is only allowed as "
                                     "\"*.\" at the start");
    } else {
        n->kind = SG_SMTP_NAME_EXACT;
    }
    return SG_CONF_OK;
}

static char *
sg_smtp_server_name(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_smtp_srv_conf_t  *sscf = conf;
    sg_str_t            *value = cf->args->elts;
    size_t               i;
    char                *rv;

    (void) cmd;
    if (sscf->names) {
        return sg_conf_duplicate(cf);
    }
    sscf->names = sg_array_create(cf->pool, cf->args->nelts,
                                  sizeof(sg_smtp_name_t));
    if (sscf->names == NULL) {
        return SG_CONF_ERROR;
    }
    for (i = 1; i < cf->args->nelts; i++) {
        if (value[i].len == 0) {
            return sg_conf_invalid_value(cf, &value[i], NULL);
        }
        if (sscf->server_name.data == NULL && value[i].data[0] != '~'
            && value[i].data[0] != '*' && value[i].data[0] != '.')
        {
            sscf->server_name = value[i];   /* greeting: as written */
            sscf->server_name.data = sg_pstrdup(cf->pool, &value[i]);
        }
        rv = sg_smtp_add_name(cf, sscf, &value[i]);
        if (rv != SG_CONF_OK) {
            return rv;
        }
    }
    return SG_CONF_OK;
}

static bool
sg_smtp_name_match(const sg_smtp_name_t *n, const sg_str_t *host,
    unsigned kind)
{
    if (n->kind != kind) {
        return false;
    }
    switch (kind) {
    case SG_SMTP_NAME_EXACT:
        return host->len == n->name.len
               && sg_strncasecmp(host->data, n->name.data, host->len) == 0;
    case SG_SMTP_NAME_WILDCARD:          /* ".example.org", one label+ */
        return host->len > n->name.len
               && sg_strncasecmp(host->data + host->len - n->name.len,
                                 n->name.data, n->name.len) == 0;
    case SG_SMTP_NAME_DOMAIN:
        if (host->len + 1 == n->name.len) {
            return sg_strncasecmp(host->data, n->name.data + 1,
                                  host->len) == 0;
        }
        return host->len > n->name.len
               && sg_strncasecmp(host->data + host->len - n->name.len,
                                 n->name.data, n->name.len) == 0;
    default:
        return sg_regex_exec(n->regex, host, NULL, 0) > 0;
    }
}

sg_smtp_srv_conf_t *
sg_smtp_default_server(sg_connection_t *c)
{
    return ((sg_smtp_addr_conf_t *) c->listening->servers)->default_server;
}

sg_smtp_srv_conf_t *
sg_smtp_select_server(sg_connection_t *c, const sg_str_t *host)
{
    sg_smtp_session_t    *s = c->data;
    sg_smtp_srv_conf_t   *found;

    found = sg_smtp_find_server(c, host);
    if (found) {
        s->conf = found;
        sg_smtp_session_log(s);
    }
    return found;
}

/* The session logs where its server says (error_log in mail or server),
 * else to the main error_log; at debug level for a debug_connection
 * client. */
void
sg_smtp_session_log(sg_smtp_session_t *s)
{
    const sg_log_t  *main = sg_cycle->log;

    if (s->conf->logs) {
        s->log->sinks = s->conf->logs->next ? s->conf->logs : NULL;
        s->log->file = s->conf->logs->file;
        s->log->level = s->conf->log_level;
    } else {
        s->log->sinks = main->sinks;
        s->log->file = main->file;
        s->log->level = main->level;
    }
    if (s->connection->log_debug) {
        s->log->level = SG_LOG_DEBUG;
        s->log->all = true;
    }
}

sg_smtp_srv_conf_t *
sg_smtp_find_server(sg_connection_t *c, const sg_str_t *host)
{
    sg_smtp_addr_conf_t  *ac = c->listening->servers;
    sg_smtp_srv_conf_t  **srv = ac->servers.elts;
    sg_smtp_name_t       *n;
    unsigned              kind;
    size_t                i, j;

    if (!sg_smtp_name_ok(host)) {
        return NULL;                  /* no host name: chooses nothing */
    }
    /* Exact names first, then wildcards, then regexes, as in nginx. */
    for (kind = SG_SMTP_NAME_EXACT; kind <= SG_SMTP_NAME_REGEX; kind++) {
        for (i = 0; i < ac->servers.nelts; i++) {
            if (srv[i]->names == NULL) {
                continue;
            }
            n = srv[i]->names->elts;
            for (j = 0; j < srv[i]->names->nelts; j++) {
                if (sg_smtp_name_match(&n[j], host, kind)) {
                    return srv[i];
                }
            }
        }
    }
    return NULL;
}

static char *
sg_smtp_capabilities(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_smtp_srv_conf_t  *sscf = conf;
    sg_str_t            *value = cf->args->elts, *c;
    size_t               i, j;

    (void) cmd;
    if (sscf->capabilities != SG_CONF_UNSET_PTR) {
        return sg_conf_duplicate(cf);
    }
    sscf->capabilities = sg_array_create(cf->pool, cf->args->nelts,
                                         sizeof(sg_str_t));
    if (sscf->capabilities == NULL) {
        return SG_CONF_ERROR;
    }
    for (i = 1; i < cf->args->nelts; i++) {
        for (j = 0; j < value[i].len; j++) {
            if (value[i].data[j] < 0x20 || value[i].data[j] > 0x7e) {
                return sg_conf_invalid_value(cf, &value[i], "capabilities "
                                             "are printable ASCII");
            }
        }
        if (value[i].len == 0 || value[i].len > 200) {
            return sg_conf_invalid_value(cf, &value[i], NULL);
        }
        c = sg_array_push(sscf->capabilities);
        if (c == NULL) {
            return SG_CONF_ERROR;
        }
        *c = value[i];
    }
    return SG_CONF_OK;
}

/* Conf structures. */

static void *
sg_smtp_create_main_conf(sg_conf_t *cf)
{
    sg_smtp_main_conf_t  *mcf;

    mcf = sg_pcalloc(cf->pool, sizeof(sg_smtp_main_conf_t));
    if (mcf == NULL
        || sg_array_init(&mcf->servers, cf->pool, 4,
                         sizeof(sg_smtp_srv_conf_t *)) != SG_OK
        || sg_array_init(&mcf->listens, cf->pool, 4,
                         sizeof(sg_smtp_listen_t)) != SG_OK)
    {
        return NULL;
    }
    mcf->variables = sg_smtp_variables_create(cf);
    if (mcf->variables == NULL) {
        return NULL;
    }
    return mcf;
}

static void *
sg_smtp_create_srv_conf(sg_conf_t *cf)
{
    sg_smtp_srv_conf_t  *sscf;

    sscf = sg_pcalloc(cf->pool, sizeof(sg_smtp_srv_conf_t));
    if (sscf == NULL) {
        return NULL;
    }
    sscf->timeout = SG_CONF_UNSET_MSEC;
    sscf->max_errors = SG_CONF_UNSET;
    sscf->greeting_delay = SG_CONF_UNSET_MSEC;
    sscf->auth_attempts = SG_CONF_UNSET;
    sscf->auth_fail_delay = SG_CONF_UNSET_MSEC;
    sscf->auth_timeout = SG_CONF_UNSET_MSEC;
    sscf->fail_limit = SG_CONF_UNSET_PTR;
    sscf->auth_cache = SG_CONF_UNSET_PTR;
    sscf->client_buffer = SG_CONF_UNSET_SIZE;
    sscf->auth_require_tls = SG_CONF_UNSET;
    sscf->capabilities = SG_CONF_UNSET_PTR;
    sscf->resolver = SG_CONF_UNSET_PTR;
    sscf->resolver_timeout = SG_CONF_UNSET_MSEC;
    return sscf;
}

static int
sg_smtp_build(sg_pool_t *pool, sg_str_t *out, const u_char *buf, size_t len)
{
    out->data = sg_pnalloc(pool, len);
    if (out->data == NULL) {
        return SG_ERROR;
    }
    memcpy(out->data, buf, len);
    out->len = len;
    return SG_OK;
}

static bool
sg_smtp_builtin_cap(const sg_str_t *cap)
{
    return sg_str_caseeq(cap, "PIPELINING")
           || sg_str_caseeq(cap, "ENHANCEDSTATUSCODES");
}

/* "250-name\r\n250-PIPELINING\r\n...\r\n250 LAST\r\n", with or without
 * the STARTTLS and AUTH lines. */
/* CHUNKING and DSN promise what only the backend can keep. */
static unsigned
sg_smtp_gated_cap(const sg_str_t *cap)
{
    sg_str_t  word = *cap;
    u_char   *sp = memchr(cap->data, ' ', cap->len);

    if (sp) {
        word.len = (size_t) (sp - cap->data);
    }
    if (sg_str_caseeq(&word, "CHUNKING")) {
        return SG_SMTP_CAP_CHUNKING;
    }
    if (sg_str_caseeq(&word, "DSN")) {
        return SG_SMTP_CAP_DSN;
    }
    return 0;
}

/* Whether a listed capability is one smtp_capabilities auto decides. */
static bool
sg_smtp_auto_cap(const sg_str_t *cap)
{
    sg_str_t   word = *cap;
    u_char    *sp = memchr(cap->data, ' ', cap->len);
    unsigned   bit;

    if (sp) {
        word.len = (size_t) (sp - cap->data);
    }
    for (bit = 1; bit & SG_SMTP_EXT_ALL; bit <<= 1) {
        if (sg_str_caseeq(&word, sg_smtp_ext_name(bit))) {
            return true;
        }
    }
    return sg_str_caseeq(&word, "auto");
}

/* The EHLO reply's text into [buf, last): the listed capabilities (with
 * CHUNKING and DSN only when allowed), or with auto those of ext. */
static u_char *
sg_smtp_ehlo_text(sg_smtp_srv_conf_t *sscf, bool starttls, bool auth,
    unsigned allowed, bool autox, unsigned ext, int64_t size, u_char *buf,
    u_char *last)
{
    u_char     *p = buf;
    u_char      authline[128], sizeline[32];
    sg_str_t    lines[64], *caps;
    size_t      n = 0, i;
    unsigned    gated, bit;

    sg_str_set(&lines[n], "PIPELINING"); n++;
    sg_str_set(&lines[n], "ENHANCEDSTATUSCODES"); n++;
    if (autox) {
        for (bit = 1; bit & SG_SMTP_EXT_ALL; bit <<= 1) {
            if (!(ext & bit) || bit == SG_SMTP_EXT_PIPELINING
                || bit == SG_SMTP_EXT_ENHANCED)
            {
                continue;
            }
            if (bit == SG_SMTP_EXT_SIZE && size > 0) {
                lines[n].data = sizeline;
                lines[n].len = (size_t) (sg_slprintf(sizeline,
                    sizeline + sizeof(sizeline), "SIZE %lld",
                    (long long) size) - sizeline);
            } else {
                lines[n].data = (u_char *) sg_smtp_ext_name(bit);
                lines[n].len = strlen(sg_smtp_ext_name(bit));
            }
            n++;
        }
    }
    if (sscf->capabilities != SG_CONF_UNSET_PTR && sscf->capabilities) {
        caps = sscf->capabilities->elts;
        for (i = 0; i < sscf->capabilities->nelts && n < 60; i++) {
            if (autox ? sg_smtp_auto_cap(&caps[i])
                      : sg_str_caseeq(&caps[i], "auto"))
            {
                continue;
            }
            gated = sg_smtp_gated_cap(&caps[i]);
            if (!sg_smtp_builtin_cap(&caps[i])
                && (gated == 0 || (gated & allowed)))
            {
                lines[n++] = caps[i];
            }
        }
    }
    if (starttls) {
        sg_str_set(&lines[n], "STARTTLS");
        n++;
    }
    if (auth) {
        u_char    *a = authline, *alast = authline + sizeof(authline);

        a = sg_slprintf(a, alast, "AUTH");
        for (bit = 1; bit <= SG_SMTP_AUTH_EXTERNAL; bit <<= 1) {
            if (sscf->auth_methods & bit) {
                a = sg_slprintf(a, alast, " %s", sg_smtp_mech_name(bit));
            }
        }
        lines[n].data = authline;
        lines[n].len = (size_t) (a - authline);
        n++;
    }
    p = sg_slprintf(p, last, "250-%.*s\r\n", SG_STR_ARG(&sscf->server_name));
    for (i = 0; i < n; i++) {
        p = sg_slprintf(p, last, "250%c%.*s\r\n", i + 1 == n ? ' ' : '-',
                        SG_STR_ARG(&lines[i]));
    }
    return p;
}

static int
sg_smtp_build_ehlo(sg_pool_t *pool, sg_smtp_srv_conf_t *sscf, bool starttls,
    bool auth, unsigned allowed, sg_str_t *out)
{
    u_char  buf[8192], *p;

    p = sg_smtp_ehlo_text(sscf, starttls, auth, allowed, false, 0, 0, buf,
                          buf + sizeof(buf));
    if ((size_t) (p - buf) > SG_SMTP_REPLY_MAX - 16) {
        return SG_DECLINED;
    }
    return sg_smtp_build(pool, out, buf, (size_t) (p - buf));
}

int
sg_smtp_ehlo_auto(sg_smtp_session_t *s, unsigned ext, int64_t size)
{
    sg_smtp_srv_conf_t  *sscf = s->conf;
    u_char               buf[SG_SMTP_REPLY_MAX + 512], *p;
    bool                 mechs = sscf->auth_methods & SG_SMTP_AUTH_MECHS;

    if (s->tls) {
        p = sg_smtp_ehlo_text(sscf, false, mechs, 0, true, ext, size, buf,
                              buf + sizeof(buf));
    } else {
        p = sg_smtp_ehlo_text(sscf, sscf->starttls != SG_SMTP_STARTTLS_OFF,
                              mechs && !sscf->auth_require_tls
                              && sscf->starttls != SG_SMTP_STARTTLS_ONLY,
                              0, true, ext, size, buf, buf + sizeof(buf));
    }
    return sg_buf_append(&s->out, buf, (size_t) (p - buf));
}

bool
sg_smtp_name_ok(const sg_str_t *name)
{
    size_t  i;

    if (name->len == 0 || name->len > 255) {
        return false;
    }
    for (i = 0; i < name->len; i++) {
        if (name->data[i] <= 0x20 || name->data[i] >= 0x7f) {
            return false;
        }
    }
    return true;
}

static char *
sg_smtp_merge_srv_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_smtp_srv_conf_t  *prev = parent, *conf = child;
    u_char               buf[1024], *p;

    if (conf->names == NULL) {
        conf->names = prev->names;
        conf->server_name = prev->server_name;
    }
    if (conf->server_name.data == NULL) {
        conf->server_name = cf->cycle->hostname;
    }
    if (!sg_smtp_name_ok(&conf->server_name)) {
        return sg_conf_error_at(cf, &conf->file, conf->line, "invalid "
            "server_name \"%.*s\": it goes into the greeting, so it must "
            "be 1 to 255 printable characters without spaces",
            SG_STR_ARG(&conf->server_name));
    }
    sg_conf_merge_msec(conf->timeout, prev->timeout, 60000);
    sg_conf_merge_value(conf->max_errors, prev->max_errors, 5);
    sg_conf_merge_msec(conf->greeting_delay, prev->greeting_delay, 0);
    sg_conf_merge_value(conf->auth_attempts, prev->auth_attempts, 3);
    sg_conf_merge_msec(conf->auth_fail_delay, prev->auth_fail_delay, 1000);
    sg_conf_merge_msec(conf->auth_timeout, prev->auth_timeout, 30000);
    if (conf->auth_cache == SG_CONF_UNSET_PTR) {
        conf->auth_cache = prev->auth_cache == SG_CONF_UNSET_PTR
                           ? NULL : prev->auth_cache;
        conf->cache_ttl = prev->cache_ttl;
        conf->cache_negative_ttl = prev->cache_negative_ttl;
    }
    if (conf->fail_limit == SG_CONF_UNSET_PTR) {
        conf->fail_limit = prev->fail_limit == SG_CONF_UNSET_PTR
                           ? NULL : prev->fail_limit;
        conf->fail_limit_address = prev->fail_limit_address;
        conf->fail_limit_user = prev->fail_limit_user;
        conf->fail_limit_window = prev->fail_limit_window;
    }
    sg_conf_merge_size(conf->client_buffer, prev->client_buffer, 16384);
    sg_conf_merge_value(conf->auth_require_tls, prev->auth_require_tls, 1);
    if (conf->sender_allow == NULL) {
        conf->sender_allow = prev->sender_allow;
        conf->sender_allow_file = prev->sender_allow_file;
        conf->sender_allow_line = prev->sender_allow_line;
    }
    if (conf->logs == NULL) {
        conf->logs = prev->logs;
        conf->log_level = prev->log_level;
    }
    if (conf->auth_methods == 0) {
        conf->auth_methods = prev->auth_methods
                             ? prev->auth_methods
                             : SG_SMTP_AUTH_PLAIN | SG_SMTP_AUTH_LOGIN;
    }
    sg_conf_merge_ptr(conf->capabilities, prev->capabilities, NULL);
    sg_conf_merge_ptr(conf->resolver, prev->resolver, NULL);
    sg_conf_merge_msec(conf->resolver_timeout, prev->resolver_timeout, 30000);


    p = sg_slprintf(buf, buf + sizeof(buf), "220 %.*s ESMTP ready\r\n",
                    SG_STR_ARG(&conf->server_name));
    if (sg_smtp_build(cf->pool, &conf->greeting, buf, (size_t) (p - buf)))
    {
        return SG_CONF_ERROR;
    }
    p = sg_slprintf(buf, buf + sizeof(buf), "250 %.*s\r\n",
                    SG_STR_ARG(&conf->server_name));
    if (sg_smtp_build(cf->pool, &conf->helo_reply, buf, (size_t) (p - buf)))
    {
        return SG_CONF_ERROR;
    }
    return SG_CONF_OK;
}

static char *
sg_smtp_postconfiguration(sg_conf_t *cf, void *conf)
{
    sg_smtp_srv_conf_t  *sscf = conf;
    bool                 mechs, starttls = false;
    unsigned             gated;

#if (SG_HAVE_SSL_MODULE)
    sscf->starttls = sg_ssl_srv(sscf)->starttls;
    starttls = sscf->starttls != SG_SSL_STARTTLS_OFF;
#endif
    mechs = sscf->auth_methods & SG_SMTP_AUTH_MECHS;
    sscf->size_limit = 0;
    sscf->caps_auto = 0;
    if (sscf->capabilities) {
        sg_str_t  *cap = sscf->capabilities->elts, n;
        size_t     i;

        for (i = 0; i < sscf->capabilities->nelts; i++) {
            if (sg_str_caseeq(&cap[i], "auto")) {
                sscf->caps_auto = 1;
            }
            if (cap[i].len > 5
                && sg_strncasecmp(cap[i].data, (u_char *) "SIZE ", 5) == 0)
            {
                n.data = cap[i].data + 5;
                n.len = cap[i].len - 5;
                if (sg_parse_int(&n, &sscf->size_limit) != SG_OK) {
                    return sg_conf_error_at(cf, &sscf->file, sscf->line,
                        "invalid \"%.*s\" in \"smtp_capabilities\"",
                        SG_STR_ARG(&cap[i]));
                }
            }
        }
    }
    for (gated = 0; gated < SG_SMTP_CAP_GATED; gated++) {
        if (sg_smtp_build_ehlo(cf->pool, sscf, starttls,
                               mechs && !sscf->auth_require_tls
                               && sscf->starttls != SG_SMTP_STARTTLS_ONLY,
                               gated,
                               &sscf->ehlo_reply[gated]) != SG_OK
            || sg_smtp_build_ehlo(cf->pool, sscf, false, mechs, gated,
                                  &sscf->ehlo_reply_tls[gated]) != SG_OK)
        {
            return sg_conf_error_at(cf, &sscf->file, sscf->line, "the EHLO "
                "reply would exceed %d bytes: shorten "
                "\"smtp_capabilities\"", SG_SMTP_REPLY_MAX - 16);
        }
    }

    if (sscf->auth == NULL) {
        return sg_conf_error_at(cf, &sscf->file, sscf->line, "no "
            "authentication backend for this server: set \"auth_file\"");
    }
    if (sscf->auth_methods & ~sscf->auth->mechs) {
        unsigned  bit = sscf->auth_methods & ~sscf->auth->mechs;

        bit &= -bit;                          /* the first one */
        return sg_conf_error_at(cf, &sscf->file, sscf->line, "\"smtp_auth "
            "%s\" cannot be verified by %s: it checks passwords, not "
            "tokens; remove it or use an HTTP authentication service",
            sg_smtp_mech_name(bit), sscf->auth->name);
    }
    if (sscf->relay == NULL
        || (sscf->relay->routed && !sscf->relay->routed(sscf->relay_conf)
            && !sscf->auth->routes))
    {
        return sg_conf_error_at(cf, &sscf->file, sscf->line, "no backend "
            "for this server: set \"proxy_pass\" (or use an "
            "authentication service that names the backend)");
    }
    return SG_CONF_OK;
}

/* Socket options given by any of the servers that list an address
 * apply to its socket (as backlog= and reuseport do). */
static void
sg_smtp_listen_apply(sg_listening_t *ls, const sg_smtp_listen_t *l)
{
    if (l->rcvbuf) {
        ls->rcvbuf = l->rcvbuf;
    }
    if (l->sndbuf) {
        ls->sndbuf = l->sndbuf;
    }
    if (l->keepalive != SG_KEEPALIVE_UNSET) {
        ls->keepalive = l->keepalive;
        ls->keepidle = l->keepidle;
        ls->keepintvl = l->keepintvl;
        ls->keepcnt = l->keepcnt;
    }
    if (l->ipv6only != -1) {
        ls->ipv6only = (unsigned) l->ipv6only;
    }
    ls->deferred = l->ssl || l->proxy_protocol;
}

/* "listen [::]:587 ipv6only=off" takes IPv4 connections to port 587 as
 * well: an IPv4 address on that port could not be bound beside it. */
static char *
sg_smtp_check_dual_stack(sg_conf_t *cf, sg_smtp_main_conf_t *mcf)
{
    sg_smtp_listen_t  *l = mcf->listens.elts;
    size_t             i, j;

    for (i = 0; i < mcf->listens.nelts; i++) {
        if (l[i].ipv6only != 0
            || !IN6_IS_ADDR_UNSPECIFIED(
                   &((struct sockaddr_in6 *) &l[i].addr.sa)->sin6_addr))
        {
            continue;
        }
        for (j = 0; j < mcf->listens.nelts; j++) {
            if (l[j].addr.sa.ss_family == AF_INET
                && sg_sockaddr_port((struct sockaddr *) &l[j].addr.sa)
                   == sg_sockaddr_port((struct sockaddr *) &l[i].addr.sa))
            {
                return sg_conf_error_at(cf, &l[j].file, l[j].line, "%.*s "
                    "cannot be listened on beside %.*s ipv6only=off, "
                    "which takes IPv4 connections to that port too (%.*s:%zu)",
                    SG_STR_ARG(&l[j].addr.name), SG_STR_ARG(&l[i].addr.name),
                    SG_STR_ARG(&l[i].file), l[i].line);
            }
        }
    }
    return SG_CONF_OK;
}

/* Listening sockets: one per distinct address, shared by the servers
 * that list it; the default server answers clients that name none. */
static sg_smtp_addr_conf_t *
sg_smtp_find_addr(sg_conf_t *cf, const sg_smtp_listen_t *l)
{
    sg_listening_t       *ls = cf->cycle->listening.elts;
    sg_smtp_addr_conf_t  *ac;
    size_t                i;

    for (i = 0; i < cf->cycle->listening.nelts; i++) {
        if (sg_sockaddr_eq((struct sockaddr *) &ls[i].addr.sa,
                           ls[i].addr.socklen,
                           (struct sockaddr *) &l->addr.sa, l->addr.socklen))
        {
            if (ls[i].handler != sg_smtp_init_session) {
                (void) sg_conf_error_at(cf, &l->file, l->line, "%.*s is "
                    "already listened on for another purpose "
                    "(status_listen)", SG_STR_ARG(&l->addr.name));
                return NULL;
            }
            if (l->reuseport) {
                ls[i].reuseport = 1;
            }
            if (l->backlog != 511) {
                ls[i].backlog = l->backlog;
            }
            sg_smtp_listen_apply(&ls[i], l);
            return ls[i].servers;
        }
    }
    ls = sg_create_listening(cf, &l->addr);
    ac = sg_pcalloc(cf->pool, sizeof(sg_smtp_addr_conf_t));
    if (ls == NULL || ac == NULL
        || sg_array_init(&ac->servers, cf->pool, 2,
                         sizeof(sg_smtp_srv_conf_t *)) != SG_OK)
    {
        return NULL;
    }
    ls->backlog = l->backlog;
    ls->reuseport = l->reuseport;
    sg_smtp_listen_apply(ls, l);
    ac->ipv6only = -1;
    ls->handler = sg_smtp_init_session;
    ls->servers = ac;
    /* One chunk holds an idle connection: the log, the address text (45
     * bytes at most) and the session (sg_accept_one, then
     * sg_smtp_init_session). */
    ls->pool_size = sg_pool_size_for((const sg_pool_item_t[]) {
                                         { sizeof(sg_log_t), true },
                                         { SG_INET_ADDRSTRLEN, false },
                                         { sizeof(sg_smtp_session_t), true } },
                                     3);
    return ac;
}

static char *
sg_smtp_add_listening(sg_conf_t *cf, sg_smtp_main_conf_t *mcf)
{
    sg_smtp_listen_t     *l = mcf->listens.elts;
    sg_smtp_addr_conf_t  *ac;
    sg_smtp_srv_conf_t  **slot;
    size_t                i;

    for (i = 0; i < mcf->listens.nelts; i++) {
#if (SG_HAVE_SSL_MODULE)
        /* nginx's deprecated "ssl on" (known only once the server's
         * settings are merged): its every listen is "listen ... ssl". */
        if (sg_ssl_srv(l[i].server)->implicit) {
            l[i].ssl = 1;
        }
#endif
        ac = sg_smtp_find_addr(cf, &l[i]);
        if (ac == NULL) {
            return SG_CONF_ERROR;
        }
        if (ac->servers.nelts && ac->ssl != l[i].ssl) {
            return sg_conf_error_at(cf, &l[i].file, l[i].line, "%.*s is "
                "listed both with and without \"ssl\"",
                SG_STR_ARG(&l[i].addr.name));
        }
#if (SG_HAVE_SSL_MODULE)
        if (l[i].ssl && sg_ssl_srv(l[i].server)->ctx == NULL) {
            return sg_conf_error_at(cf, &l[i].file, l[i].line,
                "\"listen ... ssl\" needs \"ssl_certificate\" and "
                "\"ssl_certificate_key\" in this server");
        }
#endif
        if (ac->servers.nelts && ac->proxy_protocol != l[i].proxy_protocol)
        {
            return sg_conf_error_at(cf, &l[i].file, l[i].line, "%.*s is "
                "listed both with and without \"proxy_protocol\"",
                SG_STR_ARG(&l[i].addr.name));
        }
        if (l[i].ipv6only != -1 && ac->ipv6only != -1
            && ac->ipv6only != l[i].ipv6only)
        {
            return sg_conf_error_at(cf, &l[i].file, l[i].line, "%.*s is "
                "listed both with ipv6only=on and ipv6only=off",
                SG_STR_ARG(&l[i].addr.name));
        }
        if (l[i].ipv6only != -1) {
            ac->ipv6only = l[i].ipv6only;
        }
        ac->ssl = l[i].ssl;
        ac->proxy_protocol = l[i].proxy_protocol;
        if (l[i].default_server) {
            if (ac->explicit_default) {
                return sg_conf_error_at(cf, &l[i].file, l[i].line,
                    "a duplicate default server for %.*s",
                    SG_STR_ARG(&l[i].addr.name));
            }
            ac->explicit_default = 1;
            ac->default_server = l[i].server;
        } else if (ac->default_server == NULL) {
            ac->default_server = l[i].server;
        }
        slot = sg_array_push(&ac->servers);
        if (slot == NULL) {
            return SG_CONF_ERROR;
        }
        *slot = l[i].server;
    }
    sg_smtp_warn_no_login(cf, mcf);
    return sg_smtp_check_dual_stack(cf, mcf);
}

/* A server that offers password mechanisms only over TLS, and has no TLS
 * at all, refuses every AUTH: legal, and what an nginx mail block
 * without "starttls" becomes here, so say so before it is found out from
 * the clients. */
static void
sg_smtp_warn_no_login(sg_conf_t *cf, sg_smtp_main_conf_t *mcf)
{
    sg_smtp_srv_conf_t  **srv = mcf->servers.elts, *sscf;
    sg_smtp_listen_t     *l = mcf->listens.elts;
    size_t                i, j, listens;
    bool                  tls;

    for (i = 0; i < mcf->servers.nelts; i++) {
        sscf = srv[i];
        if (!(sscf->auth_methods & SG_SMTP_AUTH_MECHS)
            || !sscf->auth_require_tls
            || sscf->starttls != SG_SMTP_STARTTLS_OFF)
        {
            continue;
        }
        tls = false;
        listens = 0;
        for (j = 0; j < mcf->listens.nelts; j++) {
            if (l[j].server == sscf) {
                listens++;
                tls = tls || l[j].ssl;
            }
        }
        if (listens && !tls) {
            sg_conf_warn_at(cf, &sscf->file, sscf->line, "no client can "
                "log in to this server: \"smtp_auth_require_tls\" is on "
                "(the default) and it has neither \"starttls\" nor a "
                "\"listen ... ssl\"; add TLS, or set "
                "\"smtp_auth_require_tls off\" on a trusted network");
        }
    }
}
