/*
 * sg_log.c: the error log (see sg_log.h).
 *
 * Each line is built in a stack buffer and written with one write(2) to
 * a file opened O_APPEND, so lines from several workers never interleave.
 * A line longer than SG_LOG_LINE_MAX is cut, never split.  A log whose
 * file is a "syslog:" target sends the same line as one datagram.
 */
#include "sg_core.h"

const char *sg_log_levels[] = {
    "", "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"
};

pid_t  sg_pid;

static sg_open_file_t  sg_stderr_file = { STDERR_FILENO, sg_string("stderr"),
                                         NULL };
static sg_log_t        sg_stderr_log;

sg_log_t *
sg_log_init(void)
{
    sg_stderr_log.level = SG_LOG_NOTICE;
    sg_stderr_log.file = &sg_stderr_file;
    sg_pid = getpid();
    return &sg_stderr_log;
}

int
sg_log_level_by_name(const sg_str_t *name)
{
    int  i;

    for (i = 1; i < (int) sg_nelems(sg_log_levels); i++) {
        if (sg_str_eq(name, sg_log_levels[i])) {
            return i;
        }
    }
    if (sg_str_eq(name, "warning")) {
        return SG_LOG_WARN;
    }
    return -1;
}

static u_char *
sg_log_errno(u_char *p, u_char *last, int err)
{
    char  buf[128];

    return sg_slprintf(p, last, " (%d: %s)", err,
                       strerror_r(err, buf, sizeof(buf)));
}

/* One line (without its line feed; line has room for one more byte
 * past end) to one target. */
static void
sg_log_emit(sg_open_file_t *file, int level, u_char *line, u_char *end)
{
    ssize_t  n;

    if (file && file->syslog) {
        sg_syslog_send(file->syslog, level - 1, line, (size_t) (end - line));
        return;
    }
    *end = '\n';
    n = write(file ? file->fd : STDERR_FILENO, line,
              (size_t) (end - line) + 1);
    (void) n;   /* nowhere left to report a failing log */
}

void
sg_log_error_core(int level, sg_log_t *log, int err, const char *fmt, ...)
{
    u_char               line[SG_LOG_LINE_MAX];
    u_char              *p, *last;
    va_list              args;
    const sg_log_sink_t *sink;

    if (sg_log_time[0] == '\0') {
        sg_time_update();
    }
    last = line + sizeof(line) - 1;           /* room for the LF */
    p = sg_slprintf(line, last, "%s [%s] %d#%d: ", sg_log_time,
                    sg_log_levels[level], (int) sg_pid, (int) sg_pid);
    if (log->session) {
        p = sg_slprintf(p, last, "*%llu ",
                        (unsigned long long) log->session);
    }
    va_start(args, fmt);
    p = sg_vslprintf(p, last, fmt, args);
    va_end(args);
    if (err) {
        p = sg_log_errno(p, last, err);
    }
    if (log->action) {
        p = sg_slprintf(p, last, " while %s", log->action);
    }
    if (log->handler) {
        p = log->handler(log, p, last);
    }
    if (log->sinks == NULL) {
        sg_log_emit(log->file, level, line, p);
        return;
    }
    for (sink = log->sinks; sink; sink = sink->next) {
        if (sink->file && (log->all || sink->level >= level)) {
            sg_log_emit(sink->file, level, line, p);
        }
    }
}

bool
sg_log_targets(const sg_log_t *log, const sg_syslog_t *peer)
{
    const sg_log_sink_t  *sink;

    if (log->sinks == NULL) {
        return log->file && log->file->syslog == peer;
    }
    for (sink = log->sinks; sink; sink = sink->next) {
        if (sink->file && sink->file->syslog == peer) {
            return true;
        }
    }
    return false;
}

void
sg_log_stderr(int err, const char *fmt, ...)
{
    u_char    line[SG_LOG_LINE_MAX];
    u_char   *p, *last;
    va_list   args;
    ssize_t   n;

    last = line + sizeof(line) - 1;
    p = sg_slprintf(line, last, "smtpgate: ");
    va_start(args, fmt);
    p = sg_vslprintf(p, last, fmt, args);
    va_end(args);
    if (err) {
        p = sg_log_errno(p, last, err);
    }
    *p++ = '\n';
    n = write(STDERR_FILENO, line, (size_t) (p - line));
    (void) n;
}
