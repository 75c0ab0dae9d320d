/*
 * sg_cycle.c: building, switching and destroying configuration cycles
 * (see sg_cycle.h).
 */
#include "sg_core.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

sg_cycle_t  *sg_cycle;

static int
sg_cycle_copy_names(sg_cycle_t *cycle, sg_cycle_t *old)
{
    cycle->conf_file = old->conf_file;
    cycle->conf_prefix = old->conf_prefix;
    cycle->prefix = old->prefix;
    cycle->conf_param = old->conf_param;
    cycle->hostname = old->hostname;
    return SG_OK;
}

static int
sg_cycle_create_confs(sg_cycle_t *cycle)
{
    const sg_core_module_ctx_t  *ctx;
    size_t                       i;

    cycle->conf_ctx = sg_pcalloc(cycle->pool, sg_modules_n * sizeof(void *));
    if (cycle->conf_ctx == NULL) {
        return SG_ERROR;
    }
    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->type != SG_CORE_MODULE) {
            continue;
        }
        ctx = sg_modules[i]->ctx;
        if (ctx && ctx->create_conf) {
            cycle->conf_ctx[i] = ctx->create_conf(cycle);
            if (cycle->conf_ctx[i] == NULL) {
                return SG_ERROR;
            }
        }
    }
    return SG_OK;
}

static char *
sg_cycle_init_confs(sg_cycle_t *cycle)
{
    const sg_core_module_ctx_t  *ctx;
    size_t                       i;
    char                        *rv;

    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->type != SG_CORE_MODULE) {
            continue;
        }
        ctx = sg_modules[i]->ctx;
        if (ctx && ctx->init_conf) {
            rv = ctx->init_conf(cycle, cycle->conf_ctx[i]);
            if (rv != SG_CONF_OK) {
                return rv;
            }
        }
    }
    return SG_CONF_OK;
}

typedef struct {
    sg_str_t          name;
    sg_open_file_t  **where;
    size_t            index;       /* in open_files, once open */
} sg_cycle_log_want_t;

int
sg_cycle_add_helper(sg_cycle_t *cycle, const sg_helper_t *h)
{
    sg_helper_t  *n;

    n = sg_array_push(&cycle->helpers);
    if (n == NULL) {
        return SG_ERROR;
    }
    *n = *h;
    return SG_OK;
}

int
sg_cycle_log_file(sg_cycle_t *cycle, const sg_str_t *name,
    sg_open_file_t **where)
{
    sg_cycle_log_want_t  *w;

    *where = NULL;
    w = sg_array_push(&cycle->log_wants);
    if (w == NULL) {
        return SG_ERROR;
    }
    w->name = *name;
    w->where = where;
    w->index = 0;
    return SG_OK;
}

static sg_open_file_t *
sg_cycle_open_log(sg_cycle_t *cycle, const sg_str_t *name, char *errbuf,
    size_t errlen)
{
    sg_open_file_t  *f;
    int              fd;

    f = sg_array_push(&cycle->open_files);
    if (f == NULL) {
        return NULL;
    }
    f->name = *name;
    f->syslog = NULL;
    if (sg_str_eq(name, "stderr")) {
        f->fd = STDERR_FILENO;
        return f;
    }
    if (sg_syslog_target(name)) {
        f->fd = -1;
        f->syslog = sg_syslog_find(cycle, name);
        if (f->syslog == NULL) {
            snprintf(errbuf, errlen, "\"%.*s\" was not configured",
                     SG_STR_ARG(name));
            cycle->open_files.nelts--;
            return NULL;
        }
        return f;
    }
    fd = open((const char *) name->data,
              O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1) {
        snprintf(errbuf, errlen, "open() \"%.*s\" failed (%d: %s): check "
                 "the \"error_log\" or \"access_log\" directive naming it "
                 "and that the directory exists",
                 SG_STR_ARG(name), errno, strerror(errno));
        cycle->open_files.nelts--;
        return NULL;
    }
    f->fd = fd;
    return f;
}

/* The main error log first, then each file a mail or server block asked
 * for, each name once.  Pointers into open_files are handed out only
 * when every file is in: a push may move the array. */
static int
sg_cycle_open_logs(sg_cycle_t *cycle, const sg_str_t *main_log,
    char *errbuf, size_t errlen)
{
    sg_cycle_log_want_t  *w = cycle->log_wants.elts;
    sg_open_file_t       *f;
    size_t                i, j;

    if (sg_cycle_open_log(cycle, main_log, errbuf, errlen) == NULL) {
        return SG_ERROR;
    }
    for (i = 0; i < cycle->log_wants.nelts; i++) {
        f = cycle->open_files.elts;
        for (j = 0; j < cycle->open_files.nelts; j++) {
            if (sg_str_eq(&f[j].name, (const char *) w[i].name.data)) {
                break;
            }
        }
        if (j == cycle->open_files.nelts
            && sg_cycle_open_log(cycle, &w[i].name, errbuf, errlen) == NULL)
        {
            return SG_ERROR;
        }
        w[i].index = j;
    }
    f = cycle->open_files.elts;
    cycle->new_log.file = &f[0];
    for (i = 0; i < cycle->log_wants.nelts; i++) {
        *w[i].where = &f[w[i].index];
    }
    return SG_OK;
}

/* The main log with more than one error_log: the first (the cycle's
 * first file) and the rest, each at its own level. */
static int
sg_cycle_log_sinks(sg_cycle_t *cycle, sg_core_conf_t *ccf)
{
    sg_log_sink_t  *first, *s;

    first = sg_pcalloc(cycle->pool, sizeof(sg_log_sink_t));
    if (first == NULL) {
        return SG_ERROR;
    }
    first->file = cycle->new_log.file;
    first->level = ccf->error_log_level;
    first->next = ccf->error_log_more;
    for (s = first; s; s = s->next) {
        if (s->level > cycle->new_log.level) {
            cycle->new_log.level = s->level;
        }
    }
    cycle->new_log.sinks = first;
    return SG_OK;
}

/* -t: whether each log file could be opened, without creating it: the
 * file writable, or its directory there to create it in. */
static int
sg_cycle_check_log(const sg_str_t *name, char *errbuf, size_t errlen)
{
    char        dir[PATH_MAX];
    const char *path = (const char *) name->data, *slash;
    int         err = 0;

    if (sg_str_eq(name, "stderr") || sg_syslog_target(name)) {
        return SG_OK;                   /* checked as it was read */
    }
    if (access(path, F_OK) == 0) {
        if (access(path, W_OK) != 0) {
            err = errno;
        }
    } else if (errno != ENOENT) {
        err = errno;
    } else {
        slash = strrchr(path, '/');
        if (slash && (size_t) (slash - path) < sizeof(dir)) {
            memcpy(dir, path, (size_t) (slash - path));
            dir[slash == path ? 1 : slash - path] = '\0';
            if (access(dir, W_OK | X_OK) != 0) {
                err = errno;
            }
        }
    }
    if (err == 0) {
        return SG_OK;
    }
    snprintf(errbuf, errlen, "open() \"%.*s\" would fail (%d: %s): check "
             "the \"error_log\" or \"access_log\" directive naming it "
             "and that the directory exists", SG_STR_ARG(name), err,
             strerror(err));
    return SG_ERROR;
}

static int
sg_cycle_check_logs(sg_cycle_t *cycle, const sg_str_t *main_log,
    char *errbuf, size_t errlen)
{
    sg_cycle_log_want_t  *w = cycle->log_wants.elts;
    size_t                i;

    if (sg_cycle_check_log(main_log, errbuf, errlen) != SG_OK) {
        return SG_ERROR;
    }
    for (i = 0; i < cycle->log_wants.nelts; i++) {
        if (sg_cycle_check_log(&w[i].name, errbuf, errlen) != SG_OK) {
            return SG_ERROR;
        }
    }
    return SG_OK;
}

static int
sg_cycle_parse(sg_cycle_t *cycle, sg_log_t *log, char *errbuf, size_t errlen)
{
    sg_conf_t   cf;
    char       *rv;

    memset(&cf, 0, sizeof(cf));
    cf.cycle = cycle;
    cf.pool = cycle->pool;
    cf.log = log;
    cf.ctx = cycle->conf_ctx;
    cf.module_type = SG_CORE_MODULE;
    cf.cmd_type = SG_MAIN_CONF;
    cf.args = sg_array_create(cycle->pool, 10, sizeof(sg_str_t));
    if (cf.args == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        return SG_ERROR;
    }
    rv = SG_CONF_OK;
    if (cycle->conf_param.len) {
        rv = sg_conf_param(&cf, &cycle->conf_param);
    }
    if (rv == SG_CONF_OK) {
        rv = sg_conf_parse(&cf, &cycle->conf_file);
    }
    if (rv == SG_CONF_OK) {
        rv = sg_cycle_init_confs(cycle);
        if (rv != SG_CONF_OK && rv != SG_CONF_ERROR) {
            snprintf(errbuf, errlen, "%.*s: %s", SG_STR_ARG(&cycle->conf_file),
                     rv);
            return SG_ERROR;
        }
    }
    if (rv != SG_CONF_OK) {
        snprintf(errbuf, errlen, "%s",
                 cf.failed ? cf.errstr : "configuration failed");
        return SG_ERROR;
    }
    return SG_OK;
}

static int
sg_cycle_init_modules(sg_cycle_t *cycle, char *errbuf, size_t errlen)
{
    size_t  i;

    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->init_module
            && sg_modules[i]->init_module(cycle) != SG_OK)
        {
            snprintf(errbuf, errlen, "module \"%s\" failed to initialise",
                     sg_modules[i]->name);
            return SG_ERROR;
        }
    }
    return SG_OK;
}

/* Undo what a half-built cycle took: sockets it opened itself. */
static void
sg_cycle_abort(sg_cycle_t *cycle)
{
    sg_listening_t  *ls = cycle->listening.elts;
    sg_open_file_t  *f = cycle->open_files.elts;
    size_t           i;

    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].fd != -1 && !ls[i].inherited) {
            close(ls[i].fd);
        }
    }
    for (i = 0; i < cycle->open_files.nelts; i++) {
        if (f[i].fd > STDERR_FILENO) {
            close(f[i].fd);
        }
    }
    sg_syslog_close(cycle);
    sg_shm_cycle_release(cycle, cycle->old_cycle);
    sg_pool_destroy(cycle->pool);
}

/* The new cycle took some of the old one's sockets: the old one must
 * not close those. */
static void
sg_cycle_commit_listening(sg_cycle_t *cycle)
{
    sg_listening_t  *ls = cycle->listening.elts, *old;
    size_t           i, j;

    if (cycle->old_cycle == NULL) {
        return;
    }
    old = cycle->old_cycle->listening.elts;
    for (i = 0; i < cycle->listening.nelts; i++) {
        if (!ls[i].inherited) {
            continue;
        }
        for (j = 0; j < cycle->old_cycle->listening.nelts; j++) {
            if (old[j].fd == ls[i].fd) {
                old[j].fd = -1;
            }
        }
    }
}

sg_cycle_t *
sg_init_cycle(sg_cycle_t *old, bool test_only, char *errbuf, size_t errlen)
{
    sg_cycle_t      *cycle;
    sg_pool_t       *pool;
    sg_core_conf_t  *ccf;

    errbuf[0] = '\0';
    pool = sg_pool_create(16384, old->log);
    if (pool == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        return NULL;
    }
    cycle = sg_pcalloc(pool, sizeof(sg_cycle_t));
    if (cycle == NULL
        || sg_array_init(&cycle->listening, pool, 8, sizeof(sg_listening_t))
        || sg_array_init(&cycle->open_files, pool, 4, sizeof(sg_open_file_t))
        || sg_array_init(&cycle->conf_files, pool, 4, sizeof(sg_conf_file_t))
        || sg_array_init(&cycle->shm_zones, pool, 4, sizeof(sg_shm_zone_t *))
        || sg_array_init(&cycle->log_wants, pool, 2,
                         sizeof(sg_cycle_log_want_t))
        || sg_array_init(&cycle->helpers, pool, 1, sizeof(sg_helper_t))
        || sg_array_init(&cycle->syslogs, pool, 1, sizeof(sg_syslog_t *)))
    {
        sg_pool_destroy(pool);
        snprintf(errbuf, errlen, "out of memory");
        return NULL;
    }
    cycle->pool = pool;
    cycle->log = old->log;
    cycle->old_cycle = old;
    cycle->worker = -1;
    sg_cycle_copy_names(cycle, old);

    if (sg_cycle_create_confs(cycle) != SG_OK
        || sg_cycle_parse(cycle, old->log, errbuf, errlen) != SG_OK)
    {
        goto failed;
    }
    ccf = sg_core_conf(cycle);
    sg_regex_jit_pending(ccf->pcre_jit, old->log);
    cycle->connection_n = (size_t) ccf->worker_connections;
    if (sg_clone_listening(cycle, ccf->worker_processes) != SG_OK) {
        snprintf(errbuf, errlen, "out of memory");
        goto failed;
    }

    if (test_only
        && sg_cycle_check_logs(cycle, &ccf->error_log, errbuf, errlen)
           != SG_OK)
    {
        goto failed;
    }
    if (!test_only) {
        if (sg_cycle_open_logs(cycle, &ccf->error_log, errbuf, errlen)
            != SG_OK)
        {
            goto failed;
        }
        cycle->new_log.level = ccf->error_log_level;
        if (ccf->error_log_more
            && sg_cycle_log_sinks(cycle, ccf) != SG_OK)
        {
            snprintf(errbuf, errlen, "out of memory");
            goto failed;
        }
        if (sg_open_listening_sockets(cycle) != SG_OK) {
            snprintf(errbuf, errlen, "could not open the listening sockets; "
                     "the reason is logged above");
            goto failed;
        }
        if (sg_shm_cycle_init(cycle, errbuf, errlen) != SG_OK) {
            goto failed;
        }
    }
    if (sg_cycle_init_modules(cycle, errbuf, errlen) != SG_OK) {
        goto failed;
    }
    if (!test_only) {
        sg_cycle_commit_listening(cycle);
        sg_shm_cycle_commit(cycle);
        cycle->log = &cycle->new_log;
        pool->log = cycle->log;
    }
    cycle->old_cycle = NULL;
    return cycle;

failed:
    sg_cycle_abort(cycle);
    return NULL;
}

void
sg_destroy_cycle(sg_cycle_t *cycle, sg_cycle_t *next)
{
    sg_open_file_t  *f = cycle->open_files.elts;
    size_t           i;

    sg_close_listening_sockets(cycle);
    sg_shm_cycle_release(cycle, next);
    for (i = 0; i < cycle->open_files.nelts; i++) {
        if (f[i].fd > STDERR_FILENO) {
            close(f[i].fd);
        }
    }
    sg_syslog_close(cycle);
    sg_pool_destroy(cycle->pool);
}

void
sg_reopen_files(sg_cycle_t *cycle, uid_t user)
{
    sg_open_file_t  *f = cycle->open_files.elts;
    size_t           i;
    int              fd;

    for (i = 0; i < cycle->open_files.nelts; i++) {
        if (f[i].fd <= STDERR_FILENO) {
            continue;
        }
        fd = open((const char *) f[i].name.data,
                  O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd == -1) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno,
                         "reopen \"%.*s\" failed, keeping the old file",
                         SG_STR_ARG(&f[i].name));
            continue;
        }
        if (user != (uid_t) -1 && geteuid() == 0
            && fchown(fd, user, (gid_t) -1) == -1)
        {
            sg_log_error(SG_LOG_WARN, cycle->log, errno,
                         "chown \"%.*s\" failed", SG_STR_ARG(&f[i].name));
        }
        /* dup2 keeps the descriptor number every log already points at */
        if (dup2(fd, f[i].fd) == -1) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno, "dup2() failed");
        }
        close(fd);
    }
    /* stderr still points at the file just rotated away */
    sg_cycle_redirect_stderr(cycle);
}

void
sg_cycle_redirect_stderr(sg_cycle_t *cycle)
{
    if (cycle->log->file && cycle->log->file->fd > STDERR_FILENO) {
        (void) dup2(cycle->log->file->fd, STDERR_FILENO);
    }
}

int
sg_create_pidfile(sg_cycle_t *cycle, sg_log_t *log)
{
    sg_core_conf_t  *ccf = sg_core_conf(cycle);
    char             buf[32];
    int              fd, n;

    fd = open((const char *) ccf->pid.data,
              O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        sg_log_error(SG_LOG_EMERG, log, errno, "open() \"%.*s\" failed: "
                     "check the \"pid\" directive", SG_STR_ARG(&ccf->pid));
        return SG_ERROR;
    }
    n = snprintf(buf, sizeof(buf), "%d\n", (int) getpid());
    if (write(fd, buf, (size_t) n) != n) {
        sg_log_error(SG_LOG_EMERG, log, errno, "write() \"%.*s\" failed",
                     SG_STR_ARG(&ccf->pid));
        close(fd);
        return SG_ERROR;
    }
    close(fd);
    return SG_OK;
}

void
sg_delete_pidfile(sg_cycle_t *cycle)
{
    sg_core_conf_t  *ccf = sg_core_conf(cycle);

    (void) unlink((const char *) ccf->pid.data);
}

int
sg_signal_process(sg_cycle_t *cycle, const char *name)
{
    static const struct { const char *name; int signo; } sigs[] = {
        { "stop", SIGTERM }, { "quit", SIGQUIT }, { "reload", SIGHUP },
        { "reopen", SIGUSR1 }, { "flush", 0 },
    };
    sg_core_conf_t  *ccf = sg_core_conf(cycle);
    char             buf[32];
    ssize_t          n;
    long             pid;
    size_t           i;
    int              fd, signo;

    fd = open((const char *) ccf->pid.data, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        sg_log_stderr(errno, "[error] open() \"%.*s\" failed; is smtpgate "
                      "running?", SG_STR_ARG(&ccf->pid));
        return 1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    pid = strtol(buf, NULL, 10);
    if (pid <= 1) {
        sg_log_stderr(0, "[error] invalid PID number \"%s\" in \"%.*s\"", buf,
                      SG_STR_ARG(&ccf->pid));
        return 1;
    }
    for (i = 0; i < sg_nelems(sigs); i++) {
        if (strcmp(name, sigs[i].name) == 0) {
            /* flush's signal is a real-time one, not a constant */
            signo = sigs[i].signo ? sigs[i].signo : SG_SIGFLUSH;
            if (kill((pid_t) pid, signo) == -1) {
                sg_log_stderr(errno, "[error] kill(%ld, %d) failed", pid,
                              signo);
                return 1;
            }
            return 0;
        }
    }
    return 1;
}
