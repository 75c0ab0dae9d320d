/*
 * sg_core_module.c: the main-context directives: daemon,
 * worker_processes, user, pid, error_log, worker_shutdown_timeout,
 * worker_rlimit_nofile, include, and the events {} block.
 */
#include "sg_core.h"
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>

static void *sg_core_create_conf(sg_cycle_t *cycle);
static char *sg_core_init_conf(sg_cycle_t *cycle, void *conf);
static char *sg_set_worker_processes(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_set_user(sg_conf_t *cf, const sg_command_t *cmd, void *conf);
static char *sg_set_error_log(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_events_block(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_include(sg_conf_t *cf, const sg_command_t *cmd, void *conf);

static const sg_conf_bounds_t  sg_worker_connections_bounds = { 16, 1048576 };
static const sg_conf_bounds_t  sg_rlimit_bounds = { 64, 16777216 };
static const sg_conf_bounds_t  sg_threads_bounds = { 1, 64 };
static const sg_conf_bounds_t  sg_queue_bounds = { 1, 1048576 };

static const sg_command_t  sg_core_commands[] = {
    { "daemon", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_FLAG,
      sg_conf_set_flag_slot, 0, offsetof(sg_core_conf_t, daemon), NULL },
    { "worker_processes", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_set_worker_processes, 0, 0, NULL },
    { "user", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE12,
      sg_set_user, 0, 0, NULL },
    { "pid", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_conf_set_str_slot, 0, offsetof(sg_core_conf_t, pid), NULL },
    { "error_log", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE12,
      sg_set_error_log, 0, 0, NULL },
    { "worker_shutdown_timeout",
      SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, 0, offsetof(sg_core_conf_t, shutdown_timeout),
      NULL },
    { "worker_rlimit_nofile", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_conf_set_num_slot, 0, offsetof(sg_core_conf_t, worker_rlimit_nofile),
      &sg_rlimit_bounds },
    { "thread_pool_threads", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_conf_set_num_slot, 0, offsetof(sg_core_conf_t, thread_pool_threads),
      &sg_threads_bounds },
    { "thread_pool_max_queue", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_conf_set_num_slot, 0,
      offsetof(sg_core_conf_t, thread_pool_max_queue), &sg_queue_bounds },
    { "events", SG_MAIN_CONF | SG_CONF_BLOCK | SG_CONF_NOARGS,
      sg_events_block, 0, 0, NULL },
    { "worker_connections", SG_EVENTS_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_conf_set_num_slot, 0, offsetof(sg_core_conf_t, worker_connections),
      &sg_worker_connections_bounds },
    { "include", SG_ANY_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_include, 0, 0, NULL },
    sg_null_command
};

static const sg_core_module_ctx_t  sg_core_module_ctx = {
    sg_core_create_conf,
    sg_core_init_conf
};

sg_module_t  sg_core_module = {
    .name = "core",
    .type = SG_CORE_MODULE,
    .ctx = &sg_core_module_ctx,
    .commands = sg_core_commands,
};

static char  sg_core_err[512];

static void *
sg_core_create_conf(sg_cycle_t *cycle)
{
    sg_core_conf_t  *ccf;

    ccf = sg_pcalloc(cycle->pool, sizeof(sg_core_conf_t));
    if (ccf == NULL) {
        return NULL;
    }
    ccf->daemon = SG_CONF_UNSET;
    ccf->worker_processes = SG_CONF_UNSET;
    ccf->shutdown_timeout = SG_CONF_UNSET_MSEC;
    ccf->worker_connections = SG_CONF_UNSET;
    ccf->worker_rlimit_nofile = SG_CONF_UNSET;
    ccf->thread_pool_threads = SG_CONF_UNSET;
    ccf->thread_pool_max_queue = SG_CONF_UNSET;
    ccf->error_log_level = SG_CONF_UNSET;
    ccf->user = (uid_t) -1;
    ccf->group = (gid_t) -1;
    return ccf;
}

static char *
sg_core_init_conf(sg_cycle_t *cycle, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    struct passwd   *pw;
    struct group    *gr;
    sg_conf_t        cf;

    sg_conf_init_value(ccf->daemon, 1);
    sg_conf_init_value(ccf->worker_processes, 1);
    sg_conf_init_value(ccf->worker_connections, 1024);
    sg_conf_init_value(ccf->worker_rlimit_nofile, 0);
    sg_conf_init_value(ccf->thread_pool_threads, 2);
    sg_conf_init_value(ccf->thread_pool_max_queue, 1024);
    sg_conf_init_value(ccf->error_log_level, SG_LOG_ERR);
    if (ccf->shutdown_timeout == SG_CONF_UNSET_MSEC) {
        ccf->shutdown_timeout = 0;
    }

    memset(&cf, 0, sizeof(cf));
    cf.cycle = cycle;
    cf.pool = cycle->pool;
    if (ccf->pid.data == NULL) {
        sg_str_set(&ccf->pid, SG_PID_PATH);
    }
    if (sg_conf_full_name(&cf, &ccf->pid, false) != SG_OK) {
        return SG_CONF_ERROR;
    }
    if (ccf->error_log.data == NULL) {
        sg_str_set(&ccf->error_log, SG_ERROR_LOG_PATH);
    }
    if (!sg_str_eq(&ccf->error_log, "stderr")
        && sg_conf_full_name(&cf, &ccf->error_log, false) != SG_OK)
    {
        return SG_CONF_ERROR;
    }

    /* Look the user up now, in the master, so that a typo is a config
     * error and workers never read /etc/passwd. */
    if (geteuid() != 0) {
        return SG_CONF_OK;
    }
    if (ccf->user_name.data == NULL) {
        sg_str_set(&ccf->user_name, SG_USER);
        sg_str_set(&ccf->group_name, SG_GROUP);
    }
    pw = getpwnam((const char *) ccf->user_name.data);
    if (pw == NULL) {
        snprintf(sg_core_err, sizeof(sg_core_err), "user \"%s\" not found: "
                 "workers run as this user when the master is root; set the "
                 "\"user\" directive", (char *) ccf->user_name.data);
        return sg_core_err;
    }
    ccf->user = pw->pw_uid;
    ccf->group = pw->pw_gid;
    if (ccf->group_name.data) {
        gr = getgrnam((const char *) ccf->group_name.data);
        if (gr == NULL) {
            snprintf(sg_core_err, sizeof(sg_core_err), "group \"%s\" not "
                     "found: check the \"user\" directive",
                     (char *) ccf->group_name.data);
            return sg_core_err;
        }
        ccf->group = gr->gr_gid;
    }
    return SG_CONF_OK;
}

static char *
sg_set_worker_processes(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    sg_str_t        *value = cf->args->elts;
    int64_t          n;
    long             ncpu;

    (void) cmd;
    if (ccf->worker_processes != SG_CONF_UNSET) {
        return sg_conf_duplicate(cf);
    }
    if (sg_str_eq(&value[1], "auto")) {
        ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        ccf->worker_processes = ncpu > 0 ? (int) sg_min(ncpu, 1024) : 1;
        return SG_CONF_OK;
    }
    if (sg_parse_int(&value[1], &n) != SG_OK || n < 1 || n > 1024) {
        return sg_conf_invalid_value(cf, &value[1],
                                     "it must be \"auto\" or 1 to 1024");
    }
    ccf->worker_processes = (int) n;
    return SG_CONF_OK;
}

static char *
sg_set_user(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    sg_str_t        *value = cf->args->elts;

    (void) cmd;
    if (ccf->user_name.data) {
        return sg_conf_duplicate(cf);
    }
    if (geteuid() != 0) {
        sg_conf_warn(cf, "the \"user\" directive makes sense only if the "
                     "master process runs as root, ignored");
    }
    ccf->user_name = value[1];
    if (cf->args->nelts == 3) {
        ccf->group_name = value[2];
    }
    return SG_CONF_OK;
}

static char *
sg_set_error_log(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;

    (void) cmd;
    if (ccf->error_log.data) {
        return sg_conf_duplicate(cf);
    }
    return sg_conf_error_log_args(cf, &ccf->error_log, &ccf->error_log_level);
}

char *
sg_conf_error_log_args(sg_conf_t *cf, sg_str_t *name, int *level)
{
    sg_str_t  *value = cf->args->elts;

    *level = SG_LOG_ERR;
    if (cf->args->nelts == 3) {
        *level = sg_log_level_by_name(&value[2]);
        if (*level < 0) {
            return sg_conf_invalid_value(cf, &value[2],
                "it must be one of: debug info notice warn error crit "
                "alert emerg");
        }
    }
    if (value[1].len == 0) {
        return sg_conf_invalid_value(cf, &value[1], "a path is expected");
    }
    *name = value[1];
    return SG_CONF_OK;
}

static char *
sg_events_block(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    unsigned  prev = cf->cmd_type;
    char     *rv;

    (void) cmd;
    (void) conf;
    cf->cmd_type = SG_EVENTS_CONF;
    rv = sg_conf_parse(cf, NULL);
    cf->cmd_type = prev;
    return rv;
}

/* The directory part of an include mask, when it has no wildcard of its
 * own, must exist: glob() reports a missing one as no match at all. */
static char *
sg_include_dir_exists(sg_conf_t *cf, const sg_str_t *mask)
{
    struct stat  st;
    u_char      *slash, *dir;
    size_t       len;

    slash = (u_char *) strrchr((const char *) mask->data, '/');
    if (slash == NULL || slash == mask->data) {
        return SG_CONF_OK;
    }
    len = (size_t) (slash - mask->data);
    if (memchr(mask->data, '*', len) || memchr(mask->data, '?', len)
        || memchr(mask->data, '[', len))
    {
        return SG_CONF_OK;
    }
    dir = sg_pnalloc(cf->pool, len + 1);
    if (dir == NULL) {
        return SG_CONF_ERROR;
    }
    memcpy(dir, mask->data, len);
    dir[len] = '\0';
    if (stat((const char *) dir, &st) == -1) {
        return sg_conf_error(cf, errno, "include \"%.*s\": no directory "
                             "\"%s\"", SG_STR_ARG(mask), (char *) dir);
    }
    return SG_CONF_OK;
}

static char *
sg_include(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t  *value = cf->args->elts, file, name;
    glob_t     gl;
    size_t     i;
    int        rc;
    char      *rv = SG_CONF_OK;

    (void) cmd;
    (void) conf;
    file = value[1];
    if (sg_conf_full_name(cf, &file, true) != SG_OK) {
        return SG_CONF_ERROR;
    }
    if (strpbrk((const char *) file.data, "*?[") == NULL) {
        return sg_conf_parse(cf, &file);
    }
    rc = glob((const char *) file.data, 0, NULL, &gl);
    if (rc == GLOB_NOMATCH) {
        /* An empty conf.d/ is fine; a missing one is a typo. */
        return sg_include_dir_exists(cf, &file);
    }
    if (rc != 0) {
        return sg_conf_error(cf, 0, "glob() \"%.*s\" failed%s",
                             SG_STR_ARG(&file),
                             rc == GLOB_NOSPACE ? ": out of memory" : "");
    }
    for (i = 0; i < gl.gl_pathc && rv == SG_CONF_OK; i++) {
        name.len = strlen(gl.gl_pathv[i]);
        name.data = sg_pnalloc(cf->pool, name.len + 1);
        if (name.data == NULL) {
            rv = SG_CONF_ERROR;
            break;
        }
        memcpy(name.data, gl.gl_pathv[i], name.len + 1);
        rv = sg_conf_parse(cf, &name);
    }
    globfree(&gl);
    return rv;
}
