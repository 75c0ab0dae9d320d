/*
 * sg_log.h: the error log.
 *
 * A line is "TIME [level] PID#TID: *SESSION message (errno: text), ctx"
 * where ctx comes from the log's handler (the session appends client,
 * server and user).  Every line of one session carries the same
 * "*SESSION" number, unique across workers and reloads.  A log is a small
 * struct that sessions copy and extend; the file behind it is shared.
 */
#ifndef SG_LOG_H
#define SG_LOG_H

#define SG_LOG_STDERR   0
#define SG_LOG_EMERG    1
#define SG_LOG_ALERT    2
#define SG_LOG_CRIT     3
#define SG_LOG_ERR      4
#define SG_LOG_WARN     5
#define SG_LOG_NOTICE   6
#define SG_LOG_INFO     7
#define SG_LOG_DEBUG    8

#define SG_LOG_LINE_MAX 4096

typedef struct {
    int           fd;      /* -1 for syslog */
    sg_str_t      name;    /* NUL-terminated; "stderr" for fd 2 */
    sg_syslog_t  *syslog;  /* a "syslog:" target */
} sg_open_file_t;

/* One target of a log that has several (error_log given more than once
 * in a context, as nginx allows): its file and its own level. */
typedef struct sg_log_sink_s  sg_log_sink_t;

struct sg_log_sink_s {
    sg_open_file_t     *file;      /* set when the cycle opens its logs */
    int                 level;
    sg_log_sink_t      *next;
};

/* Appends context (", client: ...") to a line being built. */
typedef u_char *(*sg_log_handler_pt)(sg_log_t *log, u_char *buf,
    u_char *last);

struct sg_log_s {
    int                 level;     /* with sinks: the most verbose sink's,
                                      what sg_log_error() tests */
    sg_open_file_t     *file;      /* the (first) target */
    const sg_log_sink_t *sinks;    /* several targets, each with its own
                                      level; NULL: file at level */
    bool                all;       /* debug_connection: every line to
                                      every target */
    uint64_t            session;   /* 0: not a session line */
    const char         *action;    /* "while ..." appended when set */
    sg_log_handler_pt   handler;
    void               *data;
};

extern const char  *sg_log_levels[];
extern pid_t        sg_pid;

#define sg_log_error(lvl, log, ...)                                          \
    do {                                                                     \
        if ((log)->level >= (lvl)) {                                         \
            sg_log_error_core(lvl, log, __VA_ARGS__);                        \
        }                                                                    \
    } while (0)

#define sg_log_debug(log, ...)                                               \
    sg_log_error(SG_LOG_DEBUG, log, 0, __VA_ARGS__)

void sg_log_error_core(int level, sg_log_t *log, int err,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Whether one of log's targets is the syslog peer. */
bool sg_log_targets(const sg_log_t *log, const sg_syslog_t *peer);

/* A message on stderr with the "smtpgate: " prefix (start-up, -t). */
void sg_log_stderr(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The log used before any configuration is loaded: stderr, notice. */
sg_log_t *sg_log_init(void);

/* Level name to number; -1 when unknown. */
int sg_log_level_by_name(const sg_str_t *name);

#endif /* SG_LOG_H */
