/*
 * sg_core_module.c: the main-context directives: daemon,
 * worker_processes, user, pid, error_log, worker_shutdown_timeout,
 * the worker's process attributes (worker_rlimit_nofile,
 * worker_rlimit_core, worker_priority, worker_cpu_affinity,
 * working_directory, env), pcre_jit, include, and the events {} block.
 * nginx's directives that mean nothing here are read so that an nginx
 * configuration carries over (see sg_core_compat_commands).
 */
#include "sg_core.h"
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
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
static char *sg_set_cpu_affinity(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_set_priority(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_set_working_directory(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_set_env(sg_conf_t *cf, const sg_command_t *cmd, void *conf);
static char *sg_set_debug_connection(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_set_use(sg_conf_t *cf, const sg_command_t *cmd, void *conf);
static char *sg_set_master_process(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_set_thread_pool(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_load_module(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_no_effect(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static int sg_core_env_tz(sg_core_conf_t *ccf);

static const sg_conf_bounds_t  sg_worker_connections_bounds = { 16, 1048576 };
static const sg_conf_bounds_t  sg_rlimit_bounds = { 64, 16777216 };
static const sg_conf_bounds_t  sg_threads_bounds = { 1, 64 };
static const sg_conf_bounds_t  sg_queue_bounds = { 1, 1048576 };
static const sg_conf_bounds_t  sg_rlimit_core_bounds = { 0, INT64_MAX };

/* The post of sg_no_effect: why an nginx directive does nothing here;
 * NULL when nginx's meaning is smtpgate's behaviour anyway, so that the
 * directive is read silently. */
static const char  sg_no_accept_mutex[] =
    "smtpgate has no accept mutex: workers share a listening socket "
    "through EPOLLEXCLUSIVE, or each has its own with \"reuseport\"";
static const char  sg_no_timer_resolution[] =
    "smtpgate reads the clock once per event loop iteration";

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

    { "worker_cpu_affinity", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_1MORE,
      sg_set_cpu_affinity, 0, 0, NULL },
    { "worker_priority", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_set_priority, 0, 0, NULL },
    { "worker_rlimit_core", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_conf_set_size_slot, 0, offsetof(sg_core_conf_t, rlimit_core),
      &sg_rlimit_core_bounds },
    { "working_directory", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_set_working_directory, 0, 0, NULL },
    { "env", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_set_env, 0, 0, NULL },
    { "pcre_jit", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_FLAG,
      sg_conf_set_flag_slot, 0, offsetof(sg_core_conf_t, pcre_jit), NULL },
    { "multi_accept", SG_EVENTS_CONF | SG_DIRECT_CONF | SG_CONF_FLAG,
      sg_conf_set_flag_slot, 0, offsetof(sg_core_conf_t, multi_accept),
      NULL },
    { "debug_connection", SG_EVENTS_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_set_debug_connection, 0, 0, NULL },
    { "use", SG_EVENTS_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_set_use, 0, 0, NULL },

    /* nginx's, read so that its configuration carries over. */
    { "master_process", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_FLAG,
      sg_set_master_process, 0, 0, NULL },
    { "thread_pool", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE23,
      sg_set_thread_pool, 0, 0, NULL },
    { "load_module", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_load_module, 0, 0, NULL },
    { "lock_file", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_no_effect, 0, 0, NULL },
    { "timer_resolution", SG_MAIN_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_no_effect, 0, 0, sg_no_timer_resolution },
    { "accept_mutex", SG_EVENTS_CONF | SG_DIRECT_CONF | SG_CONF_FLAG,
      sg_no_effect, 0, 0, sg_no_accept_mutex },
    { "accept_mutex_delay", SG_EVENTS_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_no_effect, 0, 0, sg_no_accept_mutex },
    { "worker_aio_requests", SG_EVENTS_CONF | SG_DIRECT_CONF | SG_CONF_TAKE1,
      sg_no_effect, 0, 0, NULL },
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
    ccf->rlimit_core = SG_CONF_UNSET_SIZE;
    ccf->pcre_jit = SG_CONF_UNSET;
    ccf->multi_accept = SG_CONF_UNSET;
    ccf->env = sg_array_create(cycle->pool, 4, sizeof(sg_str_t));
    if (ccf->env == NULL) {
        return NULL;
    }
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
    sg_conf_init_value(ccf->multi_accept, 0);
    if (ccf->shutdown_timeout == SG_CONF_UNSET_MSEC) {
        ccf->shutdown_timeout = 0;
    }
    /* JIT unless told otherwise (nginx's default is off; smtpgate has
     * always compiled its regexes with JIT where PCRE2 can).  A JIT
     * that PCRE2 lacks is worth a word only when asked for. */
    if (ccf->pcre_jit == 1 && !sg_regex_jit_available()) {
        sg_log_error(SG_LOG_WARN, cycle->log, 0, "\"pcre_jit on\": "
                     "this PCRE2 library has no JIT, regexes are "
                     "interpreted");
    }
    sg_conf_init_value(ccf->pcre_jit, 1);
    if (sg_core_env_tz(ccf) != SG_OK) {
        return SG_CONF_ERROR;
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
        && !sg_syslog_target(&ccf->error_log)
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
    if (ccf->error_log.data == NULL) {
        return sg_conf_error_log_args(cf, &ccf->error_log,
                                      &ccf->error_log_level);
    }
    /* Another target, as nginx allows: opened with the others. */
    return sg_conf_error_log_sink(cf, &ccf->error_log_more, NULL);
}

char *
sg_conf_error_log_sink(sg_conf_t *cf, sg_log_sink_t **list, int *max)
{
    sg_log_sink_t  *sink, **tail;
    sg_str_t        name;
    char           *rv;

    sink = sg_pcalloc(cf->pool, sizeof(sg_log_sink_t));
    if (sink == NULL) {
        return SG_CONF_ERROR;
    }
    rv = sg_conf_error_log_args(cf, &name, &sink->level);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    if (!sg_str_eq(&name, "stderr") && !sg_syslog_target(&name)
        && sg_conf_full_name(cf, &name, false) != SG_OK)
    {
        return SG_CONF_ERROR;
    }
    if (sg_cycle_log_file(cf->cycle, &name, &sink->file) != SG_OK) {
        return SG_CONF_ERROR;
    }
    for (tail = list; *tail; tail = &(*tail)->next) {
        /* void */
    }
    *tail = sink;
    if (max && sink->level > *max) {
        *max = sink->level;
    }
    return SG_CONF_OK;
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
    if (sg_syslog_target(&value[1]) && sg_syslog_add(cf, &value[1]) == NULL)
    {
        return SG_CONF_ERROR;
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

/* nginx keeps TZ in its workers' environment whether listed or not. */
static int
sg_core_env_tz(sg_core_conf_t *ccf)
{
    sg_str_t  *e = ccf->env->elts;
    size_t     i;

    for (i = 0; i < ccf->env->nelts; i++) {
        if ((e[i].len == 2 || (e[i].len > 2 && e[i].data[2] == '='))
            && memcmp(e[i].data, "TZ", 2) == 0)
        {
            return SG_OK;
        }
    }
    e = sg_array_push(ccf->env);
    if (e == NULL) {
        return SG_ERROR;
    }
    sg_str_set(e, "TZ");
    return SG_OK;
}

/* One worker_cpu_affinity mask, nginx's way: '0' and '1' with the
 * rightmost for CPU 0. */
static char *
sg_parse_cpu_mask(sg_conf_t *cf, const sg_str_t *text, cpu_set_t *set)
{
    cpu_set_t  allowed, common;
    size_t     i;

    CPU_ZERO(set);
    if (text->len > CPU_SETSIZE) {
        return sg_conf_invalid_value(cf, text, "a mask covers at most "
                                     "1024 CPUs");
    }
    for (i = 0; i < text->len; i++) {
        if (text->data[i] != '0' && text->data[i] != '1') {
            return sg_conf_invalid_value(cf, text, "a mask is written "
                                         "with 0 and 1, the rightmost for "
                                         "CPU 0");
        }
        if (text->data[i] == '1') {
            CPU_SET(text->len - 1 - i, set);
        }
    }
    if (CPU_COUNT(set) == 0) {
        return sg_conf_invalid_value(cf, text, "a mask names at least "
                                     "one CPU");
    }
    /* A configuration written for a bigger machine: the worker will run
     * where the system lets it, which -t had better say. */
    if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) {
        CPU_AND(&common, set, &allowed);
        if (CPU_COUNT(&common) == 0) {
            sg_conf_warn(cf, "worker_cpu_affinity mask \"%.*s\" names no "
                         "CPU this system lets smtpgate run on",
                         SG_STR_ARG(text));
        }
    }
    return SG_CONF_OK;
}

static char *
sg_set_cpu_affinity(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    sg_str_t        *value = cf->args->elts;
    cpu_set_t       *set;
    size_t           i = 1;

    (void) cmd;
    if (ccf->cpu_affinity) {
        return sg_conf_duplicate(cf);
    }
    ccf->cpu_affinity = sg_array_create(cf->pool, cf->args->nelts,
                                        sizeof(cpu_set_t));
    if (ccf->cpu_affinity == NULL) {
        return SG_CONF_ERROR;
    }
    if (sg_str_eq(&value[1], "auto")) {
        if (cf->args->nelts > 3) {
            return sg_conf_error(cf, 0, "\"worker_cpu_affinity auto\" "
                                 "takes at most one mask");
        }
        ccf->cpu_affinity_auto = 1;
        i = 2;
        if (cf->args->nelts == 2) {
            /* The CPUs smtpgate was started on: all of them, unless a
             * cpuset or taskset says otherwise. */
            set = sg_array_push(ccf->cpu_affinity);
            if (set == NULL) {
                return SG_CONF_ERROR;
            }
            if (sched_getaffinity(0, sizeof(*set), set) == -1) {
                return sg_conf_error(cf, errno, "sched_getaffinity() "
                                     "failed");
            }
            return SG_CONF_OK;
        }
    }
    for ( /* void */ ; i < cf->args->nelts; i++) {
        set = sg_array_push(ccf->cpu_affinity);
        if (set == NULL) {
            return SG_CONF_ERROR;
        }
        if (sg_parse_cpu_mask(cf, &value[i], set) != SG_CONF_OK) {
            return SG_CONF_ERROR;
        }
    }
    return SG_CONF_OK;
}

const cpu_set_t *
sg_core_cpu_affinity(sg_core_conf_t *ccf, int worker, cpu_set_t *one)
{
    const cpu_set_t  *sets;
    int               n, cpu;

    if (ccf->cpu_affinity == NULL || ccf->cpu_affinity->nelts == 0) {
        return NULL;
    }
    sets = ccf->cpu_affinity->elts;
    if (!ccf->cpu_affinity_auto) {
        /* As in nginx, the last mask serves the workers beyond it. */
        n = (int) ccf->cpu_affinity->nelts;
        return &sets[worker < n ? worker : n - 1];
    }
    /* auto: worker N gets the Nth CPU of the mask, round and round. */
    n = worker % CPU_COUNT(&sets[0]);
    for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &sets[0]) && n-- == 0) {
            break;
        }
    }
    CPU_ZERO(one);
    CPU_SET(cpu, one);
    return one;
}

static char *
sg_set_priority(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    sg_str_t        *value = cf->args->elts, num = value[1];
    int64_t          n;
    bool             minus = false;

    (void) cmd;
    if (ccf->priority_set) {
        return sg_conf_duplicate(cf);
    }
    if (num.len > 0 && (num.data[0] == '-' || num.data[0] == '+')) {
        minus = num.data[0] == '-';
        num.data++;
        num.len--;
    }
    if (sg_parse_int(&num, &n) != SG_OK || n > 20) {
        return sg_conf_invalid_value(cf, &value[1], "it must be a nice "
                                     "value from -20 to 20");
    }
    ccf->priority = minus ? (int) -n : (int) n;
    ccf->priority_set = true;
    return SG_CONF_OK;
}

/* The directory must be there now, so that -t finds a typo and a
 * worker never fails to start on it. */
static char *
sg_set_working_directory(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    sg_str_t        *value = cf->args->elts, dir = value[1];
    struct stat      st;

    (void) cmd;
    if (ccf->working_directory.data) {
        return sg_conf_duplicate(cf);
    }
    if (dir.len == 0) {
        return sg_conf_invalid_value(cf, &dir, "a directory is expected");
    }
    if (sg_conf_full_name(cf, &dir, false) != SG_OK) {
        return SG_CONF_ERROR;
    }
    if (stat((const char *) dir.data, &st) == -1) {
        return sg_conf_error(cf, errno, "working_directory \"%.*s\"",
                             SG_STR_ARG(&dir));
    }
    if (!S_ISDIR(st.st_mode)) {
        return sg_conf_error(cf, 0, "working_directory \"%.*s\" is not a "
                             "directory", SG_STR_ARG(&dir));
    }
    ccf->working_directory = dir;
    return SG_CONF_OK;
}

static char *
sg_set_env(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    sg_str_t        *value = cf->args->elts, *e;
    u_char          *eq;

    (void) cmd;
    eq = memchr(value[1].data, '=', value[1].len);
    if (value[1].len == 0 || eq == value[1].data) {
        return sg_conf_invalid_value(cf, &value[1], "it must be NAME or "
                                     "NAME=value");
    }
    e = sg_array_push(ccf->env);
    if (e == NULL) {
        return SG_CONF_ERROR;
    }
    *e = value[1];                    /* NUL-terminated by the parser */
    return SG_CONF_OK;
}

static char *
sg_set_debug_connection(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;

    (void) cmd;
    return sg_conf_add_cidr(cf, &ccf->debug_connection);
}

bool
sg_core_debug_connection(sg_core_conf_t *ccf, const struct sockaddr *sa)
{
    sg_cidr_t  *cidr;
    size_t      i;

    if (ccf->debug_connection == NULL) {
        return false;
    }
    cidr = ccf->debug_connection->elts;
    for (i = 0; i < ccf->debug_connection->nelts; i++) {
        if (sg_cidr_match(&cidr[i], sa)) {
            return true;
        }
    }
    return false;
}

static char *
sg_set_use(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t  *value = cf->args->elts;

    (void) cmd;
    (void) conf;
    if (!sg_str_eq(&value[1], "epoll")) {
        return sg_conf_invalid_value(cf, &value[1], "smtpgate's only "
                                     "connection processing method is "
                                     "\"epoll\"");
    }
    return SG_CONF_OK;
}

static char *
sg_set_master_process(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t  *value = cf->args->elts;

    (void) cmd;
    (void) conf;
    if (sg_str_eq(&value[1], "off")) {
        return sg_conf_error(cf, 0, "\"master_process off\" is not "
                             "supported: smtpgate always runs a master and "
                             "its workers; for debugging, use "
                             "\"daemon off\" and \"worker_processes 1\"");
    }
    if (!sg_str_eq(&value[1], "on")) {
        return sg_conf_invalid_value(cf, &value[1], "it must be \"on\" or "
                                     "\"off\"");
    }
    return SG_CONF_OK;
}

static char *
sg_thread_pool_param(sg_conf_t *cf, const sg_str_t *arg, const char *name,
    const sg_conf_bounds_t *bounds, int64_t *out)
{
    sg_str_t  num;
    size_t    len = strlen(name);
    char      why[128];

    num.data = arg->data + len;
    num.len = arg->len - len;
    if (sg_parse_int(&num, out) != SG_OK || *out < bounds->min
        || *out > bounds->max)
    {
        snprintf(why, sizeof(why), "%s must be %lld to %lld", name,
                 (long long) bounds->min, (long long) bounds->max);
        return sg_conf_invalid_value(cf, arg, why);
    }
    return SG_CONF_OK;
}

/* nginx's "thread_pool NAME threads=N [max_queue=N]".  smtpgate has one
 * pool per worker, as nginx's are: the pool named "default" is it. */
static char *
sg_set_thread_pool(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_core_conf_t  *ccf = conf;
    sg_str_t        *value = cf->args->elts;
    int64_t          threads = SG_CONF_UNSET, queue = SG_CONF_UNSET;
    size_t           i;

    (void) cmd;
    for (i = 2; i < cf->args->nelts; i++) {
        if (sg_str_has_prefix(&value[i], "threads=")) {
            if (sg_thread_pool_param(cf, &value[i], "threads=",
                                     &sg_threads_bounds, &threads)
                != SG_CONF_OK)
            {
                return SG_CONF_ERROR;
            }
        } else if (sg_str_has_prefix(&value[i], "max_queue=")) {
            if (sg_thread_pool_param(cf, &value[i], "max_queue=",
                                     &sg_queue_bounds, &queue)
                != SG_CONF_OK)
            {
                return SG_CONF_ERROR;
            }
        } else {
            return sg_conf_invalid_value(cf, &value[i], "it must be "
                                         "threads=N or max_queue=N");
        }
    }
    if (threads == SG_CONF_UNSET) {
        return sg_conf_error(cf, 0, "\"thread_pool %.*s\" needs "
                             "threads=N", SG_STR_ARG(&value[1]));
    }
    if (!sg_str_eq(&value[1], "default")) {
        sg_conf_warn(cf, "thread pool \"%.*s\" ignored: smtpgate's one "
                     "thread pool per worker is \"default\"",
                     SG_STR_ARG(&value[1]));
        return SG_CONF_OK;
    }
    if (ccf->thread_pool_threads != SG_CONF_UNSET
        || ccf->thread_pool_max_queue != SG_CONF_UNSET)
    {
        return sg_conf_error(cf, 0, "\"thread_pool default\" is set "
                             "twice, or also by \"thread_pool_threads\" or "
                             "\"thread_pool_max_queue\"");
    }
    ccf->thread_pool_threads = threads;
    if (queue != SG_CONF_UNSET) {
        ccf->thread_pool_max_queue = queue;
    }
    return SG_CONF_OK;
}

/* Debian's nginx.conf includes the files of modules-enabled, which load
 * the mail module among others: smtpgate is that module, built in, so
 * loading it says nothing; any other is not here, and -t says so. */
static char *
sg_load_module(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t  *value = cf->args->elts;
    u_char    *base;

    (void) cmd;
    (void) conf;
    base = (u_char *) strrchr((const char *) value[1].data, '/');
    base = base ? base + 1 : value[1].data;
    if (strstr((const char *) base, "mail") != NULL) {
        return SG_CONF_OK;
    }
    sg_conf_warn(cf, "load_module \"%.*s\" ignored: smtpgate's modules "
                 "are built in (smtpgate -V lists them)",
                 SG_STR_ARG(&value[1]));
    return SG_CONF_OK;
}

static char *
sg_no_effect(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t  *value = cf->args->elts;

    (void) conf;
    if ((cmd->type & SG_CONF_FLAG) && !sg_str_eq(&value[1], "on")
        && !sg_str_eq(&value[1], "off"))
    {
        return sg_conf_invalid_value(cf, &value[1], "it must be \"on\" or "
                                     "\"off\"");
    }
    /* "accept_mutex off" is what smtpgate does anyway. */
    if (cmd->post == NULL || sg_str_eq(&value[1], "off")) {
        return SG_CONF_OK;
    }
    sg_conf_warn(cf, "\"%s\" ignored: %s", cmd->name,
                 (const char *) cmd->post);
    return SG_CONF_OK;
}
