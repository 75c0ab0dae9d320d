/*
 * sg_access_log.c: the access log, one line per session.
 *
 * "log_format" (mail) names a line made of text and variables, escaped
 * for JSON or in nginx's default way; "json" and "text" are built in.
 * "access_log" (mail, server) says where the sessions of a server are
 * logged and in which format.  The line is made as the session closes
 * (a close hook of the smtp module), while everything it reads -- the
 * TLS facts, the backend, the counters -- is still there.
 *
 * Nothing here blocks a worker: lines gather in a buffer per file, and a
 * full buffer (or one older than flush=) is written by a thread of the
 * worker's pool while the next fills.  One write per file is in flight
 * at a time, so the lines keep their order; up to SG_ALOG_WAITING_MAX
 * more full buffers wait behind it, and past that the disk is not
 * keeping up: lines are dropped, counted, and the count is logged.  A
 * worker that exits writes what is left before it goes.  Log rotation
 * needs nothing here: the cycle reopens the file onto the same
 * descriptor (USR1).
 */
#include "sg_smtp.h"
#include "sg_access_log_escape.h"

/* Bytes of one variable's value written; the rest is cut. */
#define SG_ALOG_VALUE_MAX     2048
/* Full buffers waiting behind the one being written. */
#define SG_ALOG_WAITING_MAX   8
/* At most one error line per file this often. */
#define SG_ALOG_ERROR_EVERY   60000

typedef struct {
    sg_str_t      text;             /* literal bytes, or ... */
    ssize_t       index;            /* ... a variable (>= 0) */
} sg_alog_part_t;

typedef struct {
    sg_str_t         name;
    unsigned         escape;
    sg_alog_part_t  *parts;
    size_t           nparts;
    size_t           max;           /* the longest line it can make */
} sg_alog_format_t;

typedef struct sg_alog_buf_s  sg_alog_buf_t;

struct sg_alog_buf_s {
    sg_alog_buf_t   *next;
    size_t           len;
    size_t           size;
    u_char           data[];
};

typedef struct {
    sg_str_t         path;          /* absolute, NUL-terminated */
    sg_open_file_t  *file;          /* set when the cycle opens logs */
    size_t           size;          /* buffer= */
    sg_msec_t        flush;         /* flush= */
    sg_str_t         conf_file;     /* where first named */
    size_t           conf_line;
    bool             asked;         /* sg_cycle_log_file() called */

    /* The worker's. */
    sg_alog_buf_t   *cur;           /* filling */
    sg_alog_buf_t   *wait;          /* full, in order */
    sg_alog_buf_t   *wait_tail;
    unsigned         nwait;
    bool             writing;       /* a task has one */
    uint64_t         dropped;       /* lines, since last said */
    sg_msec_t        said;          /* the last error line */
    sg_event_t       timer;
} sg_alog_writer_t;

typedef struct {
    sg_task_t          task;
    sg_alog_writer_t  *w;
    sg_alog_buf_t     *b;
    int                fd;
    int                err;
    size_t             written;
} sg_alog_task_t;

typedef struct {
    sg_alog_writer_t  *writer;        /* NULL: to syslog */
    sg_syslog_t       *syslog;
    sg_str_t           format_name;  /* resolved at merge */
    sg_alog_format_t  *format;
    ssize_t            cond;          /* if=$var; -1: none */
    sg_str_t           file;
    size_t             line;
} sg_alog_t;

typedef struct {
    sg_array_t   formats;           /* sg_alog_format_t * */
    sg_array_t   writers;           /* sg_alog_writer_t * */
} sg_alog_main_conf_t;

typedef struct {
    sg_array_t  *logs;              /* sg_alog_t; NULL: not set here */
    bool         off;               /* access_log off */
} sg_alog_srv_conf_t;

static char *sg_alog_format_directive(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_alog_directive(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_alog_create_main_conf(sg_conf_t *cf);
static char *sg_alog_builtin_formats(sg_conf_t *cf,
    sg_alog_main_conf_t *amcf);
static void *sg_alog_create_srv_conf(sg_conf_t *cf);
static char *sg_alog_merge_srv_conf(sg_conf_t *cf, void *prev, void *conf);
static char *sg_alog_postconfiguration(sg_conf_t *cf, void *conf);
static void sg_alog_exit_process(sg_cycle_t *cycle);
static void sg_alog_session(sg_smtp_session_t *s, void *conf);

static const sg_command_t  sg_alog_commands[] = {
    { "log_format", SG_MAIL_MAIN_CONF | SG_CONF_1MORE,
      sg_alog_format_directive, SG_MAIL_MAIN_CONF_OFFSET, 0, NULL },
    { "access_log", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_1MORE,
      sg_alog_directive, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_alog_module_ctx = {
    sg_alog_create_main_conf, NULL,
    sg_alog_create_srv_conf, sg_alog_merge_srv_conf,
    sg_alog_postconfiguration
};

sg_module_t  sg_access_log_module = {
    .name = "access_log",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_alog_module_ctx,
    .commands = sg_alog_commands,
    .exit_process = sg_alog_exit_process,
};

/*
 * The built-in formats.  Every variable in a bare (unquoted) JSON
 * position is always set and always a number.
 */
static const char  sg_alog_json[] =
    "{\"time\":\"$time_iso8601\",\"session\":$session_id,"
    "\"client\":\"$remote_addr\",\"client_port\":$remote_port,"
    "\"client_host\":\"$remote_host\","
    "\"server_addr\":\"$server_addr\",\"server_port\":$server_port,"
    "\"server_name\":\"$server_name\","
#if (SG_HAVE_SSL_MODULE)
    "\"tls\":\"$ssl_protocol\",\"cipher\":\"$ssl_cipher\","
#endif
    "\"helo\":\"$helo\",\"auth_method\":\"$auth_method\","
    "\"auth_status\":\"$auth_status\",\"auth_failures\":$auth_failures,"
    "\"user\":\"$auth_user\",\"upstream_addr\":\"$upstream_addr\","
    "\"messages\":$messages,\"bytes_received\":$bytes_received,"
    "\"bytes_sent\":$bytes_sent,\"session_time\":$session_time,"
    "\"status\":\"$status\"}";

static const char  sg_alog_text[] =
    "$remote_addr [$time_local] *$session_id $server_name"
#if (SG_HAVE_SSL_MODULE)
    " $ssl_protocol"
#endif
    " \"$helo\" $auth_method $auth_status \"$auth_user\" $upstream_addr"
    " $messages $bytes_received $bytes_sent $session_time $status";


/* ---- formats -------------------------------------------------------- */

static sg_alog_format_t *
sg_alog_compile(sg_conf_t *cf, const sg_str_t *name, unsigned escape,
    const sg_str_t *src)
{
    sg_alog_format_t    *fmt;
    sg_alog_part_t      *part;
    sg_smtp_cv_token_t   t;
    sg_smtp_cv_token_e   k;
    const u_char        *pos, *end;
    size_t               n;

    fmt = sg_pcalloc(cf->pool, sizeof(sg_alog_format_t));
    if (fmt == NULL) {
        return NULL;
    }
    fmt->name = *name;
    fmt->escape = escape;
    /* at most one part per byte of the source */
    fmt->parts = sg_pnalloc(cf->pool, (src->len + 1) * sizeof(sg_alog_part_t));
    if (fmt->parts == NULL) {
        return NULL;
    }
    fmt->max = 1;                                   /* the newline */
    pos = src->data;
    end = src->data + src->len;
    for ( ;; ) {
        k = sg_smtp_cv_token(&pos, end, &t);
        if (k == SG_SMTP_CV_END) {
            break;
        }
        if (k == SG_SMTP_CV_ERROR) {
            sg_conf_error(cf, 0, "log_format \"%.*s\": %s",
                          SG_STR_ARG(name), t.err);
            return NULL;
        }
        if (k == SG_SMTP_CV_CAPTURE) {
            sg_conf_error(cf, 0, "log_format \"%.*s\": \"$%u\" is a "
                          "regular expression's capture, which exists only "
                          "in a map's value", SG_STR_ARG(name), t.capture);
            return NULL;
        }
        part = &fmt->parts[fmt->nparts++];
        part->text.len = 0;
        part->index = -1;
        if (k == SG_SMTP_CV_TEXT) {
            part->text = t.text;
            fmt->max += t.text.len;
            continue;
        }
        part->index = sg_smtp_variable_index(cf, &t.text);
        if (part->index < 0) {
            return NULL;
        }
        n = SG_ALOG_VALUE_MAX * sg_alog_escaped_max(escape);
        fmt->max += n < 2 ? 2 : n;                  /* "-" for unset */
    }
    return fmt;
}

static sg_alog_format_t *
sg_alog_find_format(sg_alog_main_conf_t *amcf, const sg_str_t *name)
{
    sg_alog_format_t  **f = amcf->formats.elts;
    size_t              i;

    for (i = 0; i < amcf->formats.nelts; i++) {
        if (f[i]->name.len == name->len
            && memcmp(f[i]->name.data, name->data, name->len) == 0)
        {
            return f[i];
        }
    }
    return NULL;
}

static char *
sg_alog_add_format(sg_conf_t *cf, sg_alog_main_conf_t *amcf,
    sg_alog_format_t *fmt)
{
    sg_alog_format_t  **slot;

    slot = sg_array_push(&amcf->formats);
    if (slot == NULL) {
        return SG_CONF_ERROR;
    }
    *slot = fmt;
    (void) cf;
    return SG_CONF_OK;
}

/* log_format name [escape=default|json] string ...; */
static char *
sg_alog_format_directive(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_alog_main_conf_t  *amcf = conf;
    sg_str_t             *value = cf->args->elts, src;
    sg_alog_format_t     *fmt;
    unsigned              escape = SG_ALOG_ESCAPE_DEFAULT;
    size_t                i, n, first = 2;
    u_char               *p;

    (void) cmd;
    if (cf->args->nelts < 3) {
        return sg_conf_error(cf, 0, "\"log_format\" needs a name and the "
                             "line's text: log_format NAME [escape=default|"
                             "json] STRING ...");
    }
    if (sg_str_eq(&value[1], "json") || sg_str_eq(&value[1], "text")) {
        return sg_conf_error(cf, 0, "log_format \"%.*s\": the name is that "
                             "of a built-in format; choose another",
                             SG_STR_ARG(&value[1]));
    }
    if (sg_alog_find_format(amcf, &value[1])) {
        return sg_conf_error(cf, 0, "log_format \"%.*s\" is defined twice",
                             SG_STR_ARG(&value[1]));
    }
    if (value[2].len > 7 && memcmp(value[2].data, "escape=", 7) == 0) {
        if (sg_str_eq(&value[2], "escape=default")) {
            escape = SG_ALOG_ESCAPE_DEFAULT;
        } else if (sg_str_eq(&value[2], "escape=json")) {
            escape = SG_ALOG_ESCAPE_JSON;
        } else {
            return sg_conf_error(cf, 0, "log_format \"%.*s\": unknown "
                                 "\"%.*s\": escape=default or escape=json",
                                 SG_STR_ARG(&value[1]),
                                 SG_STR_ARG(&value[2]));
        }
        first = 3;
    }
    /* The strings are one line, joined as written (nginx). */
    for (n = 0, i = first; i < cf->args->nelts; i++) {
        n += value[i].len;
    }
    if (n == 0 || n > 16384) {
        return sg_conf_error(cf, 0, "log_format \"%.*s\": the text must be "
                             "1 to 16384 bytes", SG_STR_ARG(&value[1]));
    }
    p = sg_pnalloc(cf->pool, n);
    if (p == NULL) {
        return SG_CONF_ERROR;
    }
    src.data = p;
    src.len = n;
    for (i = first; i < cf->args->nelts; i++) {
        memcpy(p, value[i].data, value[i].len);
        p += value[i].len;
    }
    fmt = sg_alog_compile(cf, &value[1], escape, &src);
    if (fmt == NULL) {
        return SG_CONF_ERROR;
    }
    return sg_alog_add_format(cf, amcf, fmt);
}


/* ---- access_log ----------------------------------------------------- */

static sg_alog_writer_t *
sg_alog_writer(sg_conf_t *cf, sg_alog_main_conf_t *amcf,
    const sg_str_t *path, int64_t size, sg_msec_t flush)
{
    sg_alog_writer_t  **w = amcf->writers.elts, *nw, **slot;
    size_t              i;

    for (i = 0; i < amcf->writers.nelts; i++) {
        if (!sg_str_eq(&w[i]->path, (const char *) path->data)) {
            continue;
        }
        if ((size_t) size != w[i]->size || flush != w[i]->flush) {
            return sg_conf_error(cf, 0, "access_log \"%.*s\": buffer= and "
                                 "flush= differ from those of the same file "
                                 "at %.*s:%zu", SG_STR_ARG(path),
                                 SG_STR_ARG(&w[i]->conf_file),
                                 w[i]->conf_line), NULL;
        }
        return w[i];
    }
    nw = sg_pcalloc(cf->pool, sizeof(sg_alog_writer_t));
    slot = sg_array_push(&amcf->writers);
    if (nw == NULL || slot == NULL) {
        return NULL;
    }
    nw->path = *path;
    nw->size = (size_t) size;
    nw->flush = flush;
    nw->conf_file = cf->file->name;
    nw->conf_line = sg_conf_line(cf);
    *slot = nw;
    return nw;
}

/*
 * access_log path [format] [buffer=size] [flush=time] [if=$var];
 * access_log off;
 */
static char *
sg_alog_directive(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_alog_srv_conf_t   *ascf = conf;
    sg_alog_main_conf_t  *amcf;
    sg_str_t             *value = cf->args->elts, path, v;
    sg_alog_t            *log;
    int64_t               size = 65536, ms = 1000;
    size_t                i;
    bool                  buffered = false;

    (void) cmd;
    amcf = sg_mail_conf_main((sg_mail_conf_ctx_t *) cf->ctx,
                             sg_access_log_module);
    if (sg_str_eq(&value[1], "off")) {
        if (cf->args->nelts != 2) {
            return sg_conf_error(cf, 0, "\"access_log off\" takes nothing "
                                 "more");
        }
        if (ascf->logs || ascf->off) {
            return sg_conf_error(cf, 0, "\"access_log off\" together with "
                                 "another access_log in the same block");
        }
        ascf->off = true;
        return SG_CONF_OK;
    }
    if (ascf->off) {
        return sg_conf_error(cf, 0, "\"access_log\" together with "
                             "\"access_log off\" in the same block");
    }
    if (ascf->logs == NULL) {
        ascf->logs = sg_array_create(cf->pool, 2, sizeof(sg_alog_t));
        if (ascf->logs == NULL) {
            return SG_CONF_ERROR;
        }
    }
    log = sg_array_push(ascf->logs);
    if (log == NULL) {
        return SG_CONF_ERROR;
    }
    memset(log, 0, sizeof(*log));
    log->cond = -1;
    log->file = cf->file->name;
    log->line = sg_conf_line(cf);
    sg_str_set(&log->format_name, "json");

    path = value[1];
    if (sg_str_eq(&path, "stderr") || path.len == 0) {
        return sg_conf_error(cf, 0, "access_log needs a file or syslog: "
                             "\"%.*s\" is neither", SG_STR_ARG(&path));
    }
    if (sg_syslog_target(&path)) {
        log->syslog = sg_syslog_add(cf, &path);
        if (log->syslog == NULL) {
            return SG_CONF_ERROR;
        }
    } else if (sg_conf_full_name(cf, &path, false) != SG_OK) {
        return SG_CONF_ERROR;
    }
    for (i = 2; i < cf->args->nelts; i++) {
        v = value[i];
        if (v.len > 7 && memcmp(v.data, "buffer=", 7) == 0) {
            v.data += 7;
            v.len -= 7;
            if (sg_parse_size(&v, &size) != SG_OK || size < 4096
                || size > 16 * 1024 * 1024)
            {
                return sg_conf_invalid_value(cf, &value[i], "buffer= takes "
                                             "a size from 4k to 16m");
            }
            buffered = true;
        } else if (v.len > 6 && memcmp(v.data, "flush=", 6) == 0) {
            v.data += 6;
            v.len -= 6;
            if (sg_parse_time(&v, &ms) != SG_OK || ms < 1
                || ms > 3600000)
            {
                return sg_conf_invalid_value(cf, &value[i], "flush= takes "
                                             "a time from 1ms to 1h");
            }
            buffered = true;
        } else if (v.len > 3 && memcmp(v.data, "if=", 3) == 0) {
            v.data += 3;
            v.len -= 3;
            if (v.len < 2 || v.data[0] != '$') {
                return sg_conf_invalid_value(cf, &value[i], "if= takes a "
                                             "variable: if=$name");
            }
            v.data++;
            v.len--;
            if (v.len > 2 && v.data[0] == '{' && v.data[v.len - 1] == '}') {
                v.data++;
                v.len -= 2;
            }
            if (!sg_smtp_variable_name_ok(&v)) {
                return sg_conf_invalid_value(cf, &value[i], "if= takes a "
                                             "variable: if=$name");
            }
            log->cond = sg_smtp_variable_index(cf, &v);
            if (log->cond < 0) {
                return SG_CONF_ERROR;
            }
        } else if (v.len > 5 && memcmp(v.data, "gzip", 4) == 0) {
            return sg_conf_error(cf, 0, "access_log: gzip is not "
                                 "supported");
        } else if (i == 2 && memchr(v.data, '=', v.len) == NULL) {
            log->format_name = v;
        } else {
            return sg_conf_invalid_value(cf, &value[i], "expected a format "
                                         "name (second), buffer=, flush= "
                                         "or if=");
        }
    }
    if (log->syslog) {
        if (buffered) {
            return sg_conf_error(cf, 0, "access_log to syslog cannot be "
                                 "buffered: each line is sent as the "
                                 "session ends; leave out buffer= and "
                                 "flush=");
        }
        return SG_CONF_OK;
    }
    log->writer = sg_alog_writer(cf, amcf, &path, size, (sg_msec_t) ms);
    if (log->writer == NULL) {
        return SG_CONF_ERROR;
    }
    return SG_CONF_OK;
}

static void *
sg_alog_create_main_conf(sg_conf_t *cf)
{
    sg_alog_main_conf_t  *amcf;

    amcf = sg_pcalloc(cf->pool, sizeof(sg_alog_main_conf_t));
    if (amcf == NULL
        || sg_array_init(&amcf->formats, cf->pool, 4,
                         sizeof(sg_alog_format_t *)) != SG_OK
        || sg_array_init(&amcf->writers, cf->pool, 4,
                         sizeof(sg_alog_writer_t *)) != SG_OK)
    {
        return NULL;
    }
    if (sg_alog_builtin_formats(cf, amcf) != SG_CONF_OK) {
        return NULL;
    }
    return amcf;
}

/* The built-in formats (the modules defining the variables they read
 * come before this one). */
static char *
sg_alog_builtin_formats(sg_conf_t *cf, sg_alog_main_conf_t *amcf)
{
    sg_alog_format_t     *fmt;
    sg_str_t              name, src;

    sg_str_set(&name, "json");
    src.data = (u_char *) sg_alog_json;
    src.len = sizeof(sg_alog_json) - 1;
    fmt = sg_alog_compile(cf, &name, SG_ALOG_ESCAPE_JSON, &src);
    if (fmt == NULL || sg_alog_add_format(cf, amcf, fmt) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    sg_str_set(&name, "text");
    src.data = (u_char *) sg_alog_text;
    src.len = sizeof(sg_alog_text) - 1;
    fmt = sg_alog_compile(cf, &name, SG_ALOG_ESCAPE_DEFAULT, &src);
    if (fmt == NULL || sg_alog_add_format(cf, amcf, fmt) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    return SG_CONF_OK;
}

static void *
sg_alog_create_srv_conf(sg_conf_t *cf)
{
    return sg_pcalloc(cf->pool, sizeof(sg_alog_srv_conf_t));
}

static char *
sg_alog_merge_srv_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_alog_srv_conf_t   *prev = parent, *conf = child;
    sg_alog_main_conf_t  *amcf;
    sg_alog_t            *log;
    size_t                i;

    if (conf->logs == NULL && !conf->off) {
        conf->logs = prev->logs;
        conf->off = prev->off;
    }
    if (conf->logs == NULL) {
        return SG_CONF_OK;
    }
    amcf = sg_mail_conf_main((sg_mail_conf_ctx_t *) cf->ctx,
                             sg_access_log_module);
    log = conf->logs->elts;
    for (i = 0; i < conf->logs->nelts; i++) {
        if (log[i].format) {
            continue;                   /* the mail block's, done */
        }
        log[i].format = sg_alog_find_format(amcf, &log[i].format_name);
        if (log[i].format == NULL) {
            return sg_conf_error_at(cf, &log[i].file, log[i].line,
                                    "access_log: unknown log_format \"%.*s\"",
                                    SG_STR_ARG(&log[i].format_name));
        }
    }
    return SG_CONF_OK;
}

/* Each writer's file opens with the cycle's logs; each server with an
 * access_log hooks its sessions' close. */
static char *
sg_alog_postconfiguration(sg_conf_t *cf, void *conf)
{
    sg_alog_srv_conf_t   *ascf = conf;
    sg_alog_main_conf_t  *amcf;
    sg_smtp_srv_conf_t   *sscf;
    sg_alog_writer_t    **w;
    size_t                i;

    amcf = sg_mail_conf_main((sg_mail_conf_ctx_t *) cf->ctx,
                             sg_access_log_module);
    w = amcf->writers.elts;
    for (i = 0; i < amcf->writers.nelts; i++) {
        if (w[i]->asked) {
            continue;
        }
        if (sg_cycle_log_file(cf->cycle, &w[i]->path, &w[i]->file)
            != SG_OK)
        {
            return SG_CONF_ERROR;
        }
        w[i]->asked = true;
    }
    if (ascf->logs && ascf->logs->nelts) {
        sscf = sg_mail_conf_srv((sg_mail_conf_ctx_t *) cf->ctx,
                                sg_smtp_module);
        if (sg_smtp_add_hook(sscf, true, sg_alog_session, ascf) != SG_OK) {
            return sg_conf_error(cf, 0, "too many session hooks");
        }
    }
    return SG_CONF_OK;
}


/* ---- lines ---------------------------------------------------------- */

/* The line of one session into buf (at least fmt->max bytes). */
static size_t
sg_alog_line(sg_smtp_session_t *s, const sg_alog_format_t *fmt, u_char *buf)
{
    const sg_alog_part_t  *part = fmt->parts;
    const sg_str_t        *v;
    u_char                *o = buf;
    size_t                 i;

    for (i = 0; i < fmt->nparts; i++) {
        if (part[i].index < 0) {
            memcpy(o, part[i].text.data, part[i].text.len);
            o += part[i].text.len;
            continue;
        }
        v = sg_smtp_variable_value(s, (size_t) part[i].index);
        if (v->len == 0) {
            if (fmt->escape == SG_ALOG_ESCAPE_DEFAULT) {
                *o++ = '-';
            }
            continue;
        }
        o = sg_alog_escape(o, v->data, sg_min(v->len, SG_ALOG_VALUE_MAX),
                           fmt->escape);
    }
    *o++ = '\n';
    return (size_t) (o - buf);
}


/* ---- writing -------------------------------------------------------- */

static void sg_alog_start_write(sg_alog_writer_t *w, sg_log_t *log);
static void sg_alog_timer(sg_event_t *ev);

/* The flush timer, unless it runs already. */
static void
sg_alog_arm(sg_alog_writer_t *w)
{
    if (!sg_event_timer_set(&w->timer)) {
        w->timer.handler = sg_alog_timer;
        w->timer.data = w;
        w->timer.log = sg_cycle->log;
        sg_event_add_timer(&w->timer, w->flush);
    }
}

static void
sg_alog_task_work(sg_task_t *t)
{
    sg_alog_task_t  *at = (sg_alog_task_t *) t;
    ssize_t          n;

    while (at->written < at->b->len) {
        n = write(at->fd, at->b->data + at->written,
                  at->b->len - at->written);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            at->err = errno;
            return;
        }
        at->written += (size_t) n;
    }
}

static void
sg_alog_said(sg_alog_writer_t *w, sg_log_t *log, int err, size_t lost)
{
    if (w->said && sg_current_msec - w->said < SG_ALOG_ERROR_EVERY) {
        return;
    }
    w->said = sg_current_msec;
    if (err) {
        sg_log_error(SG_LOG_ERR, log, err, "access_log \"%.*s\": write() "
                     "failed, %zu bytes of log lines lost: check the disk "
                     "and the file's permissions", SG_STR_ARG(&w->path),
                     lost);
    }
    if (w->dropped) {
        sg_log_error(SG_LOG_WARN, log, 0, "access_log \"%.*s\": %llu lines "
                     "dropped because the disk did not keep up: raise "
                     "buffer= or check the disk", SG_STR_ARG(&w->path),
                     (unsigned long long) w->dropped);
        w->dropped = 0;
    }
}

static void
sg_alog_task_done(sg_task_t *t)
{
    sg_alog_task_t    *at = (sg_alog_task_t *) t;
    sg_alog_writer_t  *w = at->w;

    w->writing = false;
    if (at->err || w->dropped) {
        sg_alog_said(w, sg_cycle->log, at->err,
                     at->b->len - at->written);
    }
    sg_alog_start_write(w, sg_cycle->log);
}

static void
sg_alog_task_destroy(sg_task_t *t)
{
    sg_alog_task_t  *at = (sg_alog_task_t *) t;

    free(at->b);
    free(at);
}

/* Everything in b to the file now, from the event loop: only where
 * blocking is allowed (the worker exiting) or nothing else can write. */
static void
sg_alog_write_now(sg_alog_writer_t *w, sg_alog_buf_t *b, sg_log_t *log)
{
    sg_alog_task_t  at;

    memset(&at, 0, sizeof(at));
    at.b = b;
    at.fd = w->file->fd;
    sg_alog_task_work(&at.task);
    if (at.err) {
        w->said = 0;
        sg_alog_said(w, log, at.err, b->len - at.written);
    }
}

/* The next full buffer to a thread, unless one is being written. */
static void
sg_alog_start_write(sg_alog_writer_t *w, sg_log_t *log)
{
    sg_alog_task_t  *at;
    sg_alog_buf_t   *b = w->wait;
    int              rc;

    if (w->writing || b == NULL) {
        return;
    }
    at = calloc(1, sizeof(sg_alog_task_t));
    if (at == NULL) {
        return;                         /* tried again with the next */
    }
    at->w = w;
    at->b = b;
    at->fd = w->file->fd;
    at->task.work = sg_alog_task_work;
    at->task.done = sg_alog_task_done;
    at->task.destroy = sg_alog_task_destroy;
    rc = sg_task_post(&at->task, log);
    if (rc == SG_BUSY) {
        free(at);                       /* the queue is full: try */
        sg_alog_arm(w);                 /* again after flush= */
        return;
    }
    w->wait = b->next;
    if (w->wait == NULL) {
        w->wait_tail = NULL;
    }
    w->nwait--;
    if (rc != SG_OK) {
        /* No thread could start (logged): write here rather than keep
         * the lines forever. */
        free(at);
        sg_alog_write_now(w, b, log);
        free(b);
        sg_alog_start_write(w, log);
        return;
    }
    w->writing = true;
}

/* The filling buffer joins the queue. */
static void
sg_alog_queue(sg_alog_writer_t *w)
{
    sg_alog_buf_t  *b = w->cur;

    if (sg_event_timer_set(&w->timer)) {
        sg_event_del_timer(&w->timer);
    }
    if (b == NULL || b->len == 0) {
        return;
    }
    w->cur = NULL;
    b->next = NULL;
    if (w->wait_tail) {
        w->wait_tail->next = b;
    } else {
        w->wait = b;
    }
    w->wait_tail = b;
    w->nwait++;
}

static void
sg_alog_flush(sg_alog_writer_t *w, sg_log_t *log)
{
    sg_alog_queue(w);
    sg_alog_start_write(w, log);
}

static void
sg_alog_timer(sg_event_t *ev)
{
    sg_alog_flush(ev->data, ev->log);
}

static void
sg_alog_append(sg_alog_writer_t *w, const u_char *line, size_t len,
    sg_log_t *log)
{
    size_t  size;

    if (w->file == NULL) {
        return;                         /* -t, or not opened */
    }
    if (w->cur && w->cur->size - w->cur->len < len) {
        sg_alog_flush(w, log);
    }
    if (w->cur == NULL) {
        if (w->nwait >= SG_ALOG_WAITING_MAX) {
            w->dropped++;
            return;
        }
        size = sg_max(w->size, len);
        w->cur = malloc(sizeof(sg_alog_buf_t) + size);
        if (w->cur == NULL) {
            w->dropped++;
            return;
        }
        w->cur->next = NULL;
        w->cur->len = 0;
        w->cur->size = size;
    }
    memcpy(w->cur->data + w->cur->len, line, len);
    w->cur->len += len;
    sg_alog_arm(w);
}

static u_char  *sg_alog_scratch;
static size_t   sg_alog_scratch_size;

static void
sg_alog_session(sg_smtp_session_t *s, void *conf)
{
    sg_alog_srv_conf_t  *ascf = conf;
    sg_alog_t           *log = ascf->logs->elts;
    const sg_str_t      *v;
    size_t               i, len;

    for (i = 0; i < ascf->logs->nelts; i++) {
        if (log[i].cond >= 0) {
            v = sg_smtp_variable_value(s, (size_t) log[i].cond);
            if (v->len == 0 || (v->len == 1 && v->data[0] == '0')) {
                continue;
            }
        }
        if (sg_alog_scratch_size < log[i].format->max) {
            free(sg_alog_scratch);
            sg_alog_scratch_size = 0;
            sg_alog_scratch = malloc(log[i].format->max);
            if (sg_alog_scratch == NULL) {
                if (log[i].writer) {
                    log[i].writer->dropped++;
                }
                continue;
            }
            sg_alog_scratch_size = log[i].format->max;
        }
        len = sg_alog_line(s, log[i].format, sg_alog_scratch);
        if (log[i].syslog) {
            sg_syslog_send(log[i].syslog, log[i].syslog->severity,
                           sg_alog_scratch, len - 1);   /* no LF */
            continue;
        }
        sg_alog_append(log[i].writer, sg_alog_scratch, len, s->log);
    }
}

/* The worker is going: what is left, written here. */
static void
sg_alog_exit_process(sg_cycle_t *cycle)
{
    sg_mail_conf_ctx_t   *ctx;
    sg_alog_main_conf_t  *amcf;
    sg_alog_writer_t    **w;
    sg_alog_buf_t        *b;
    size_t                i;

    if (cycle->conf_ctx == NULL
        || (ctx = cycle->conf_ctx[sg_mail_module.index]) == NULL)
    {
        return;
    }
    amcf = sg_mail_conf_main(ctx, sg_access_log_module);
    w = amcf->writers.elts;
    for (i = 0; i < amcf->writers.nelts; i++) {
        if (w[i]->file == NULL) {
            continue;
        }
        /* No thread now: the process ends before one would run.  A
         * write still in flight (a fast stop) keeps its buffer; the
         * ones behind it go here, after it as far as the file sees. */
        sg_alog_queue(w[i]);
        while ((b = w[i]->wait) != NULL) {
            w[i]->wait = b->next;
            sg_alog_write_now(w[i], b, cycle->log);
            free(b);
        }
        w[i]->wait_tail = NULL;
        w[i]->nwait = 0;
        if (w[i]->dropped) {
            w[i]->said = 0;
            sg_alog_said(w[i], cycle->log, 0, 0);
        }
    }
}
