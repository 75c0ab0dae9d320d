/*
 * sg_cycle.h: one loaded configuration and everything that hangs on it:
 * its pool, the modules' configuration, the listening sockets, the open
 * log files.  A reload builds a new cycle beside the old one and only
 * switches when the new one is complete; on any error the old one stays.
 */
#ifndef SG_CYCLE_H
#define SG_CYCLE_H

typedef struct {
    int          daemon;
    int          worker_processes;
    sg_msec_t    shutdown_timeout;
    sg_str_t     pid;
    sg_str_t     user_name;
    sg_str_t     group_name;
    uid_t        user;
    gid_t        group;
    int64_t      worker_connections;
    int64_t      worker_rlimit_nofile;
    int64_t      thread_pool_threads;
    int64_t      thread_pool_max_queue;
    sg_str_t     error_log;
    int          error_log_level;
    sg_log_sink_t *error_log_more;   /* the second error_log and on */

    sg_array_t  *cpu_affinity;       /* cpu_set_t, one per mask */
    int          cpu_affinity_auto;
    int          priority;           /* worker_priority, -20 to 20 */
    bool         priority_set;
    size_t       rlimit_core;        /* worker_rlimit_core, bytes */
    sg_str_t     working_directory;
    sg_array_t  *env;                /* sg_str_t: "NAME" or "NAME=value" */
    int          pcre_jit;
    int          multi_accept;
    sg_array_t  *debug_connection;   /* sg_cidr_t */
} sg_core_conf_t;

/*
 * A helper process: one more child of the master beside the workers,
 * for work that serves no client and may block (the spool's
 * forwarder).  Modules ask for one while the configuration loads; the
 * master starts it with the workers, respawns it when it dies, and
 * replaces it on a reload like a worker.  In the helper, init() runs
 * once the event loop is ready (no listening socket, no other module's
 * init_process); the helper then runs the loop, and exits once it is
 * told to stop (QUIT) and holds no connection, or at once on TERM,
 * calling exit() first.  "smtpgate -s flush" calls its flush().
 */
typedef struct {
    const char   *name;              /* for the log: "spool forwarder" */
    int         (*init)(sg_cycle_t *cycle, void *data);
    void        (*exit)(sg_cycle_t *cycle, void *data);
    void        (*flush)(sg_cycle_t *cycle, void *data);   /* -s flush */
    void         *data;
} sg_helper_t;

struct sg_cycle_s {
    void              **conf_ctx;        /* by module index (core) */
    sg_pool_t          *pool;
    sg_log_t           *log;
    sg_log_t            new_log;

    sg_array_t          listening;       /* sg_listening_t */
    sg_array_t          open_files;      /* sg_open_file_t */
    sg_array_t          conf_files;      /* sg_conf_file_t, for -T */
    sg_array_t          shm_zones;       /* sg_shm_zone_t * */
    sg_array_t          log_wants;       /* sg_cycle_log_want_t */
    sg_array_t          helpers;         /* sg_helper_t */
    sg_array_t          syslogs;         /* sg_syslog_t * */

    sg_connection_t    *connections;
    sg_event_t         *read_events;
    sg_event_t         *write_events;
    size_t              connection_n;

    sg_str_t            conf_file;       /* absolute */
    sg_str_t            conf_prefix;     /* its directory, with '/' */
    sg_str_t            prefix;          /* with '/' */
    sg_str_t            conf_param;      /* -g */
    sg_str_t            hostname;

    int                 worker;          /* worker number, -1 master,
                                            SG_HELPER_PROCESS helper */
    sg_cycle_t         *old_cycle;
};

#define SG_HELPER_PROCESS  (-2)

/* Ask for a helper process (at configuration time); h is copied. */
int sg_cycle_add_helper(sg_cycle_t *cycle, const sg_helper_t *h);

#define sg_core_conf(cycle)                                                  \
    ((sg_core_conf_t *) (cycle)->conf_ctx[sg_core_module.index])

/* The CPUs worker number worker is bound to by worker_cpu_affinity (one
 * may be built in *one), or NULL when it runs anywhere. */
const cpu_set_t *sg_core_cpu_affinity(sg_core_conf_t *ccf, int worker,
    cpu_set_t *one);
/* Whether a client from sa is logged at debug level (debug_connection). */
bool sg_core_debug_connection(sg_core_conf_t *ccf,
    const struct sockaddr *sa);

extern sg_module_t      sg_core_module;
extern sg_cycle_t      *sg_cycle;

/*
 * Build a cycle from old's file names.  With test_only the listening
 * sockets are not opened.  Returns NULL on failure; the message is in
 * errbuf (one "FILE:LINE: text" line, or a system error).
 */
sg_cycle_t *sg_init_cycle(sg_cycle_t *old, bool test_only, char *errbuf,
    size_t errlen);
void sg_destroy_cycle(sg_cycle_t *cycle, sg_cycle_t *next);

/* Reopen every log file (SIGUSR1); files are chowned to user when root. */
void sg_reopen_files(sg_cycle_t *cycle, uid_t user);
/* A log file besides the main error_log (an error_log in a mail or
 * server block), asked for while the configuration is read: *where is
 * set when the cycle opens its logs, to the file of that name (opened
 * once however many ask), and stays NULL under -t.  name is absolute. */
int sg_cycle_log_file(sg_cycle_t *cycle, const sg_str_t *name,
    sg_open_file_t **where);
/* The arguments of an error_log directive ("file [level]"): name and
 * level, or a configuration error. */
char *sg_conf_error_log_args(sg_conf_t *cf, sg_str_t *name, int *level);
/* An error_log directive as one more target at the end of *list, opened
 * with the cycle's logs; *max (when given) raised to its level. */
char *sg_conf_error_log_sink(sg_conf_t *cf, sg_log_sink_t **list,
    int *max);
/* Point stderr (sanitizer reports, library complaints) at the error log,
 * unless the error log is stderr itself: at start, after a reload and
 * after the logs are reopened. */
void sg_cycle_redirect_stderr(sg_cycle_t *cycle);

int sg_create_pidfile(sg_cycle_t *cycle, sg_log_t *log);
void sg_delete_pidfile(sg_cycle_t *cycle);
/* For -s: read the pid from the configured pid file and signal it. */
int sg_signal_process(sg_cycle_t *cycle, const char *name);

#endif /* SG_CYCLE_H */
