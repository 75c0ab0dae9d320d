/*
 * sg_process.c: the master and worker processes (see sg_process.h).
 *
 * Signal handlers only set flags.  The master sleeps in sigsuspend()
 * with every handled signal blocked outside of it; workers sleep in
 * epoll_pwait() the same way.  So no signal is lost between checking
 * the flags and going to sleep.
 */
#include "sg_core.h"
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define SG_MAX_PROCESSES    1024
#define SG_TERM_GRACE_MS    5000

volatile sig_atomic_t  sg_quit;
volatile sig_atomic_t  sg_terminate;
volatile sig_atomic_t  sg_reconfigure;
volatile sig_atomic_t  sg_reopen;
volatile sig_atomic_t  sg_reap;
volatile sig_atomic_t  sg_flush;
static volatile sig_atomic_t  sg_sigalrm;
bool                   sg_exiting;
int                    sg_worker = -1;

typedef struct {
    pid_t     pid;
    int       worker;        /* worker number within its generation */
    int       helper;        /* index in cycle->helpers; -1: a worker */
    unsigned  generation;
    bool      exiting;       /* told to stop: do not respawn */
} sg_process_t;

static sg_process_t  sg_processes[SG_MAX_PROCESSES];
static size_t        sg_nprocesses;
static unsigned      sg_generation;

static void
sg_signal_handler(int signo)
{
    int  saved = errno;

    switch (signo) {
    case SIGQUIT: sg_quit = 1; break;
    case SIGTERM:
    case SIGINT:  sg_terminate = 1; break;
    case SIGHUP:  sg_reconfigure = 1; break;
    case SIGUSR1: sg_reopen = 1; break;
    case SIGCHLD: sg_reap = 1; break;
    case SIGALRM: sg_sigalrm = 1; break;
    default:
        if (signo == SG_SIGFLUSH) {
            sg_flush = 1;
        }
        break;
    }
    errno = saved;
}

int
sg_init_signals(sg_log_t *log)
{
    static const int   sigs[] = { SIGQUIT, SIGTERM, SIGINT, SIGHUP, SIGUSR1,
                                  SIGCHLD, SIGALRM };
    struct sigaction   sa;
    size_t             i;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sg_signal_handler;
    sigemptyset(&sa.sa_mask);
    for (i = 0; i < sg_nelems(sigs); i++) {
        if (sigaction(sigs[i], &sa, NULL) == -1) {
            sg_log_error(SG_LOG_EMERG, log, errno, "sigaction(%d) failed",
                         sigs[i]);
            return SG_ERROR;
        }
    }
    if (sigaction(SG_SIGFLUSH, &sa, NULL) == -1) {
        sg_log_error(SG_LOG_EMERG, log, errno, "sigaction(%d) failed",
                     SG_SIGFLUSH);
        return SG_ERROR;
    }
    sa.sa_handler = SIG_IGN;
    (void) sigaction(SIGPIPE, &sa, NULL);
    (void) sigaction(SIGUSR2, &sa, NULL);
    return SG_OK;
}

int
sg_daemon(sg_log_t *log)
{
    int  fd;

    switch (fork()) {
    case -1:
        sg_log_error(SG_LOG_EMERG, log, errno, "fork() failed");
        return SG_ERROR;
    case 0:
        break;
    default:
        _exit(0);
    }
    sg_pid = getpid();
    if (setsid() == -1) {
        sg_log_error(SG_LOG_EMERG, log, errno, "setsid() failed");
        return SG_ERROR;
    }
    umask(0);
    fd = open("/dev/null", O_RDWR);
    if (fd == -1) {
        sg_log_error(SG_LOG_EMERG, log, errno, "open(\"/dev/null\") failed");
        return SG_ERROR;
    }
    (void) dup2(fd, STDIN_FILENO);
    (void) dup2(fd, STDOUT_FILENO);
    if (fd > STDERR_FILENO) {
        close(fd);
    }
    return SG_OK;
}

size_t
sg_worker_busy(void)
{
    /* A spool file whose session has gone is removed by a task: a worker
     * that exited first would leave it in DIR/tmp for good. */
    return sg_thread_pool_tasks();
}

static void
sg_call_exit_process(sg_cycle_t *cycle)
{
    size_t  i;

    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->exit_process) {
            sg_modules[i]->exit_process(cycle);
        }
    }
}

static int  sg_helper_index = -1;     /* in a helper process */

static void
sg_worker_shutdown_expired(sg_event_t *ev)
{
    sg_helper_t  *h;

    sg_log_error(SG_LOG_NOTICE, ev->log, 0, "worker_shutdown_timeout "
                 "expired, closing %zu connections", sg_connections_in_use());
    if (sg_helper_index >= 0) {
        h = (sg_helper_t *) sg_cycle->helpers.elts + sg_helper_index;
        if (h->exit) {
            h->exit(sg_cycle, h->data);
        }
    } else {
        sg_call_exit_process(sg_cycle);
    }
    exit(0);
}

static sg_event_t  sg_shutdown_event = {
    .handler = sg_worker_shutdown_expired
};

static int
sg_worker_set_user(sg_cycle_t *cycle)
{
    sg_core_conf_t  *ccf = sg_core_conf(cycle);

    if (geteuid() != 0 || ccf->user == (uid_t) -1) {
        return SG_OK;
    }
    if (setgid(ccf->group) == -1) {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno, "setgid(%d) failed",
                     (int) ccf->group);
        return SG_ERROR;
    }
    if (initgroups((const char *) ccf->user_name.data, ccf->group) == -1) {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno,
                     "initgroups(%.*s) failed", SG_STR_ARG(&ccf->user_name));
        return SG_ERROR;
    }
    if (setuid(ccf->user) == -1) {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno, "setuid(%d) failed",
                     (int) ccf->user);
        return SG_ERROR;
    }
    return SG_OK;
}

/* Where the kernel keeps the environment a process started with, which
 * is what /proc/PID/environ and ps show: the strings environ pointed to
 * at start, one after another.  NULL when they are not (something moved
 * them). */
static char *
sg_env_area(char **env, size_t *size)
{
    char    *start, *p;
    size_t   i;

    if (env == NULL || env[0] == NULL) {
        return NULL;
    }
    start = p = env[0];
    for (i = 0; env[i]; i++) {
        if (env[i] != p) {
            return NULL;
        }
        p += strlen(p) + 1;
    }
    *size = (size_t) (p - start);
    return start;
}

/*
 * As in nginx, a worker keeps only TZ and the variables named by "env"
 * ("env NAME=value" sets one).  What it keeps is also written over the
 * environment it started with, so that /proc/PID/environ shows the
 * worker's real environment and not the master's; a value too long to
 * fit there stays in the cycle's pool.
 */
static int
sg_worker_set_env(sg_cycle_t *cycle)
{
    extern char    **environ;
    sg_core_conf_t  *ccf = sg_core_conf(cycle);
    sg_str_t        *e = ccf->env->elts;
    char           **env, *area, *p, *v;
    size_t           i, j, n = 0, size = 0, len, used = 0;

    env = sg_pcalloc(cycle->pool, (ccf->env->nelts + 1) * sizeof(char *));
    if (env == NULL) {
        return SG_ERROR;
    }
    for (i = 0; i < ccf->env->nelts; i++) {
        v = memchr(e[i].data, '=', e[i].len) ? (char *) e[i].data : NULL;
        for (j = 0; v == NULL && environ && environ[j]; j++) {
            if (strncmp(environ[j], (char *) e[i].data, e[i].len) == 0
                && environ[j][e[i].len] == '=')
            {
                v = environ[j];
            }
        }
        if (v == NULL) {
            continue;                 /* "env NAME" with NAME not set */
        }
        len = strlen(v) + 1;
        env[n] = sg_pnalloc(cycle->pool, len);
        if (env[n] == NULL) {
            return SG_ERROR;
        }
        memcpy(env[n++], v, len);
    }
    area = sg_env_area(environ, &size);
    if (area) {
        memset(area, 0, size);
        for (i = 0; i < n; i++) {
            len = strlen(env[i]) + 1;
            if (len <= size - used) {
                p = area + used;
                memcpy(p, env[i], len);
                env[i] = p;
                used += len;
            }
        }
    }
    environ = env;
    return SG_OK;
}

/* What needs root: before the worker drops privileges. */
static void
sg_worker_set_limits(sg_cycle_t *cycle)
{
    sg_core_conf_t  *ccf = sg_core_conf(cycle);
    struct rlimit    rl;

    if (ccf->priority_set && setpriority(PRIO_PROCESS, 0, ccf->priority)
                             == -1)
    {
        sg_log_error(SG_LOG_ALERT, cycle->log, errno,
                     "setpriority(%d) failed", ccf->priority);
    }
    if (ccf->worker_rlimit_nofile > 0) {
        rl.rlim_cur = (rlim_t) ccf->worker_rlimit_nofile;
        rl.rlim_max = (rlim_t) ccf->worker_rlimit_nofile;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno,
                         "setrlimit(RLIMIT_NOFILE, %lld) failed",
                         (long long) ccf->worker_rlimit_nofile);
        }
    }
    if (ccf->rlimit_core != SG_CONF_UNSET_SIZE) {
        rl.rlim_cur = (rlim_t) ccf->rlimit_core;
        rl.rlim_max = (rlim_t) ccf->rlimit_core;
        if (setrlimit(RLIMIT_CORE, &rl) == -1) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno,
                         "setrlimit(RLIMIT_CORE, %zu) failed",
                         ccf->rlimit_core);
        }
    }
}

/* What the worker does as its own user: the CPUs it runs on, and what
 * a core dump needs (a worker that changed its user is not dumpable
 * until it says so; working_directory is where the core goes). */
static int
sg_worker_set_place(sg_cycle_t *cycle, int worker)
{
    sg_core_conf_t   *ccf = sg_core_conf(cycle);
    const cpu_set_t  *set;
    cpu_set_t         one;
    char              cpus[256];
    size_t            len = 0;
    int               cpu;

    set = worker >= 0 ? sg_core_cpu_affinity(ccf, worker, &one) : NULL;
    if (set) {
        for (cpu = 0; cpu < CPU_SETSIZE && len < sizeof(cpus) - 8; cpu++) {
            if (CPU_ISSET(cpu, set)) {
                len += (size_t) snprintf(cpus + len, sizeof(cpus) - len,
                                         "%s%d", len ? "," : "", cpu);
            }
        }
        if (sched_setaffinity(0, sizeof(*set), set) == -1) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno,
                         "sched_setaffinity(%s) failed", cpus);
        } else {
            sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "worker %d runs on "
                         "CPU %s", worker, cpus);
        }
    }
    if ((ccf->rlimit_core != SG_CONF_UNSET_SIZE
         || ccf->working_directory.len)
        && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == -1)
    {
        sg_log_error(SG_LOG_ALERT, cycle->log, errno,
                     "prctl(PR_SET_DUMPABLE) failed");
    }
    if (ccf->working_directory.len
        && chdir((const char *) ccf->working_directory.data) == -1)
    {
        sg_log_error(SG_LOG_EMERG, cycle->log, errno, "chdir(\"%.*s\") "
                     "failed", SG_STR_ARG(&ccf->working_directory));
        return SG_ERROR;
    }
    return SG_OK;
}

static int
sg_worker_init(sg_cycle_t *cycle, int worker)
{
    size_t  i;

    if (sg_worker_set_env(cycle) != SG_OK) {
        return SG_ERROR;
    }
    sg_worker_set_limits(cycle);
    if (sg_worker_set_user(cycle) != SG_OK
        || sg_worker_set_place(cycle, worker) != SG_OK
        || sg_connections_init(cycle) != SG_OK
        || sg_event_init(cycle) != SG_OK)
    {
        return SG_ERROR;
    }
    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->init_process
            && sg_modules[i]->init_process(cycle) != SG_OK)
        {
            return SG_ERROR;
        }
    }
    return sg_enable_accept(cycle);
}

/* Connections kept only for reuse (keep-alive to an auth service) would
 * hold a draining worker forever: their owners close them. */
static void
sg_close_idle_connections(sg_cycle_t *cycle)
{
    sg_connection_t  *c = cycle->connections;
    size_t            i;

    for (i = 0; i < cycle->connection_n; i++) {
        if (c[i].fd != -1 && c[i].idle) {
            c[i].close = 1;
            c[i].read->handler(c[i].read);
        }
    }
}

static void
sg_worker_drain(sg_cycle_t *cycle)
{
    sg_core_conf_t  *ccf = sg_core_conf(cycle);

    if (sg_exiting) {
        return;
    }
    sg_exiting = true;
    sg_disable_accept(cycle);
    sg_close_idle_connections(cycle);
    sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "gracefully shutting down, "
                 "%zu connections open", sg_connections_in_use());
    if (ccf->shutdown_timeout > 0) {
        sg_shutdown_event.log = cycle->log;
        sg_event_add_timer(&sg_shutdown_event, ccf->shutdown_timeout);
    }
}

/* What a worker or a helper does for QUIT and USR1 (TERM is each one's
 * own), once the event loop has returned. */
static void
sg_worker_signals(sg_cycle_t *cycle)
{
    if (sg_quit) {
        sg_quit = 0;
        sg_worker_drain(cycle);
    }
    if (sg_reopen) {
        sg_reopen = 0;
        sg_reopen_files(cycle, (uid_t) -1);
    }
    sg_reconfigure = 0;              /* the master's business */
}

static void __attribute__((noreturn))
sg_worker_process_cycle(sg_cycle_t *cycle, int worker)
{
    sg_worker = worker;
    sg_pid = getpid();
    cycle->worker = worker;
    sigemptyset(&sg_event_wait_sigmask);

    if (sg_worker_init(cycle, worker) != SG_OK) {
        exit(2);                     /* the master does not respawn on 2 */
    }
    for ( ;; ) {
        if (sg_exiting && sg_connections_in_use() == 0
            && sg_worker_busy() == 0)
        {
            sg_call_exit_process(cycle);
            sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "exiting");
            exit(0);
        }
        sg_event_process(cycle);
        if (sg_terminate) {
            sg_call_exit_process(cycle);
            sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "exiting");
            exit(0);
        }
        sg_worker_signals(cycle);
    }
}

/* A helper process (see sg_helper_t): the worker's set-up without the
 * listening sockets and the modules' init_process, then its own init
 * and the event loop. */
static void __attribute__((noreturn))
sg_helper_process_cycle(sg_cycle_t *cycle, int index)
{
    sg_helper_t  *h = (sg_helper_t *) cycle->helpers.elts + index;

    sg_worker = SG_HELPER_PROCESS;
    sg_helper_index = index;
    sg_pid = getpid();
    cycle->worker = SG_HELPER_PROCESS;
    sigemptyset(&sg_event_wait_sigmask);
    sg_close_listening_sockets(cycle);
    /* ps and top show it by its name (at most 15 characters). */
    (void) prctl(PR_SET_NAME, h->name, 0, 0, 0);

    if (sg_worker_set_env(cycle) != SG_OK) {
        exit(2);
    }
    sg_worker_set_limits(cycle);
    if (sg_worker_set_user(cycle) != SG_OK
        || sg_worker_set_place(cycle, SG_HELPER_PROCESS) != SG_OK
        || sg_connections_init(cycle) != SG_OK
        || sg_event_init(cycle) != SG_OK
        || h->init(cycle, h->data) != SG_OK)
    {
        exit(2);
    }
    for ( ;; ) {
        if (sg_exiting && sg_connections_in_use() == 0) {
            break;
        }
        sg_event_process(cycle);
        if (sg_terminate) {
            break;
        }
        if (sg_flush) {
            sg_flush = 0;
            if (h->flush && !sg_exiting) {
                h->flush(cycle, h->data);
            }
        }
        sg_worker_signals(cycle);
    }
    if (h->exit) {
        h->exit(cycle, h->data);
    }
    sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "exiting");
    exit(0);
}

static const char *
sg_process_name(sg_cycle_t *cycle, int helper)
{
    if (helper < 0 || (size_t) helper >= cycle->helpers.nelts) {
        return "worker";
    }
    return ((sg_helper_t *) cycle->helpers.elts)[helper].name;
}

/* Start worker number worker, or (worker -1) helper number helper. */
static void
sg_spawn(sg_cycle_t *cycle, int worker, int helper)
{
    sg_process_t  *p;
    pid_t          pid;

    if (sg_nprocesses == SG_MAX_PROCESSES) {
        sg_log_error(SG_LOG_ALERT, cycle->log, 0, "too many processes");
        return;
    }
    pid = fork();
    if (pid == -1) {
        sg_log_error(SG_LOG_ALERT, cycle->log, errno, "fork() failed");
        return;
    }
    if (pid == 0) {
        if (helper >= 0) {
            sg_helper_process_cycle(cycle, helper);
        }
        sg_worker_process_cycle(cycle, worker);
    }
    p = &sg_processes[sg_nprocesses++];
    p->pid = pid;
    p->worker = worker;
    p->helper = helper;
    p->generation = sg_generation;
    p->exiting = false;
    sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "start %s process %d",
                 sg_process_name(cycle, helper), (int) pid);
}

static void
sg_start_workers(sg_cycle_t *cycle)
{
    int  i;

    for (i = 0; i < sg_core_conf(cycle)->worker_processes; i++) {
        sg_spawn(cycle, i, -1);
    }
    for (i = 0; (size_t) i < cycle->helpers.nelts; i++) {
        sg_spawn(cycle, -1, i);
    }
}

static void
sg_signal_workers(sg_cycle_t *cycle, int signo, bool old_only)
{
    size_t  i;

    for (i = 0; i < sg_nprocesses; i++) {
        if (old_only && sg_processes[i].generation == sg_generation) {
            continue;
        }
        if (signo == SIGQUIT || signo == SIGTERM) {
            sg_processes[i].exiting = true;
        }
        if (kill(sg_processes[i].pid, signo) == -1 && errno != ESRCH) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno, "kill(%d, %d) "
                         "failed", (int) sg_processes[i].pid, signo);
        }
    }
}

/* -s flush: the current configuration's helpers only. */
static void
sg_signal_helpers(sg_cycle_t *cycle, int signo)
{
    size_t  i, n = 0;

    for (i = 0; i < sg_nprocesses; i++) {
        if (sg_processes[i].helper < 0 || sg_processes[i].exiting
            || sg_processes[i].generation != sg_generation)
        {
            continue;
        }
        if (kill(sg_processes[i].pid, signo) == -1 && errno != ESRCH) {
            sg_log_error(SG_LOG_ALERT, cycle->log, errno, "kill(%d, %d) "
                         "failed", (int) sg_processes[i].pid, signo);
        }
        n++;
    }
    sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "flush: %s", n
                 ? "passed on to the spool forwarder"
                 : "nothing to flush, no forwarding spool is configured");
}

static void
sg_log_exit(sg_cycle_t *cycle, const char *name, pid_t pid, int status)
{
    if (WIFSIGNALED(status)) {
        sg_log_error(SG_LOG_ALERT, cycle->log, 0, "%s process %d exited "
                     "on signal %d%s", name, (int) pid, WTERMSIG(status),
                     WCOREDUMP(status) ? " (core dumped)" : "");
    } else if (WEXITSTATUS(status) != 0) {
        sg_log_error(SG_LOG_ALERT, cycle->log, 0, "%s process %d exited "
                     "with code %d", name, (int) pid, WEXITSTATUS(status));
    } else {
        sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "%s process %d exited "
                     "with code 0", name, (int) pid);
    }
}

static void
sg_reap_children(sg_cycle_t *cycle)
{
    sg_process_t  p;
    pid_t         pid;
    size_t        i;
    int           status;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (i = 0; i < sg_nprocesses; i++) {
            if (sg_processes[i].pid == pid) {
                break;
            }
        }
        if (i == sg_nprocesses) {
            sg_log_exit(cycle, "worker", pid, status);
            continue;
        }
        /* A helper of an older generation is named by its own cycle's
         * list, which may be gone: say "helper" then. */
        sg_log_exit(cycle, sg_processes[i].helper < 0 ? "worker"
                    : sg_processes[i].generation == sg_generation
                    ? sg_process_name(cycle, sg_processes[i].helper)
                    : "helper", pid, status);
        p = sg_processes[i];
        sg_processes[i] = sg_processes[--sg_nprocesses];
        if (p.exiting || p.generation != sg_generation || sg_quit
            || sg_terminate)
        {
            continue;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
            sg_log_error(SG_LOG_ALERT, cycle->log, 0, "%s process %d "
                         "could not start; not respawning it",
                         sg_process_name(cycle, p.helper), (int) pid);
            continue;
        }
        sg_spawn(cycle, p.worker, p.helper);
    }
}

/* A reload that moves the pid file writes the new one and removes the
 * old, so that -s and init scripts find the master either way. */
static void
sg_reload_pidfile(sg_cycle_t *old, sg_cycle_t *new)
{
    sg_str_t  *op = &sg_core_conf(old)->pid, *np = &sg_core_conf(new)->pid;

    if (op->len == np->len && memcmp(op->data, np->data, op->len) == 0) {
        return;
    }
    if (sg_create_pidfile(new, new->log) == SG_OK) {
        sg_delete_pidfile(old);
    }
}

static sg_cycle_t *
sg_master_reload(sg_cycle_t *cycle)
{
    sg_cycle_t  *new;
    char         err[2048];

    sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "reconfiguring");
    sg_notify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
              sg_notify_monotonic_usec());
    new = sg_init_cycle(cycle, false, err, sizeof(err));
    if (new == NULL) {
        sg_log_error(SG_LOG_ERR, cycle->log, 0, "reload failed, keeping the "
                     "old configuration: %s", err);
        sg_notify("READY=1\nSTATUS=reload failed, the old configuration "
                  "serves: %.200s", err);
        return cycle;
    }
    sg_cycle = new;
    sg_generation++;
    sg_cycle_redirect_stderr(new);
    sg_reload_pidfile(cycle, new);
    /* Close what the old configuration alone held (listeners it dropped,
     * its log files) before forking, or the new workers would inherit
     * them and keep a dropped port open. */
    sg_destroy_cycle(cycle, new);
    sg_start_workers(new);
    sg_signal_workers(new, SIGQUIT, true);
    sg_log_error(SG_LOG_NOTICE, new->log, 0, "configuration reloaded, "
                 "old workers are finishing their sessions");
    sg_notify("READY=1\nSTATUS=serving (configuration reloaded)");
    return new;
}

void
sg_master_process_cycle(sg_cycle_t *cycle)
{
    sigset_t  set, empty;
    bool      term_sent = false, quit_sent = false;

    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGALRM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SG_SIGFLUSH);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sigemptyset(&empty);

    sg_start_workers(cycle);
    sg_notify("READY=1\nMAINPID=%d\nSTATUS=serving", (int) getpid());
    for ( ;; ) {
        sigsuspend(&empty);
        sg_time_update();
        if (sg_reap) {
            sg_reap = 0;
            sg_reap_children(cycle);
        }
        if ((sg_terminate || sg_quit) && sg_nprocesses == 0) {
            sg_delete_pidfile(cycle);
            sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "exit");
            exit(0);
        }
        if (sg_terminate) {
            if (!term_sent) {
                term_sent = true;
                sg_notify("STOPPING=1\nSTATUS=stopping");
                sg_signal_workers(cycle, SIGTERM, false);
                alarm(SG_TERM_GRACE_MS / 1000);
            } else if (sg_sigalrm) {
                sg_signal_workers(cycle, SIGKILL, false);
            }
            sg_sigalrm = 0;
            continue;
        }
        if (sg_quit && !quit_sent) {
            quit_sent = true;
            sg_notify("STOPPING=1\nSTATUS=stopping, the workers are "
                      "finishing their sessions");
            sg_signal_workers(cycle, SIGQUIT, false);
            sg_close_listening_sockets(cycle);
            continue;
        }
        if (sg_reconfigure && !sg_quit) {
            sg_reconfigure = 0;
            cycle = sg_master_reload(cycle);
        }
        if (sg_flush) {
            sg_flush = 0;
            sg_signal_helpers(cycle, SG_SIGFLUSH);
        }
        if (sg_reopen) {
            sg_reopen = 0;
            sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "reopening logs");
            sg_reopen_files(cycle, sg_core_conf(cycle)->user);
            sg_signal_workers(cycle, SIGUSR1, false);
        }
    }
}
