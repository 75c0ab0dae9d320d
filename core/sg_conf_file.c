/*
 * sg_conf_file.c: the configuration parser and the typed setters (see
 * sg_conf_file.h).
 *
 * A file is read whole (configuration is loaded by the master, never on
 * a session path) and tokenised in place.  The first error wins: it is
 * formatted once as "FILE:LINE: message" and the parse unwinds.
 */
#include "sg_core.h"
#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>

#define SG_CONF_FILE_MAX   (16 * 1024 * 1024)

enum {
    SG_TOK_DIRECTIVE = 0,     /* args ended by ';' */
    SG_TOK_BLOCK_START,       /* args ended by '{' */
    SG_TOK_BLOCK_DONE,        /* '}' */
    SG_TOK_FILE_DONE,         /* end of input */
    SG_TOK_ERROR
};

static const unsigned  sg_argument_number[] = {
    SG_CONF_NOARGS, SG_CONF_TAKE1, SG_CONF_TAKE2, SG_CONF_TAKE3,
    SG_CONF_TAKE4, SG_CONF_TAKE5, SG_CONF_TAKE6, SG_CONF_TAKE7
};

static size_t  sg_directive_line;

static void
sg_conf_verror(sg_conf_t *cf, int err, size_t line, const char *fmt,
    va_list args)
{
    u_char  *p, *last;
    char     ebuf[128];

    if (cf->failed) {
        return;                      /* keep the first, root cause */
    }
    cf->failed = true;
    p = (u_char *) cf->errstr;
    last = p + sizeof(cf->errstr) - 1;
    if (cf->file) {
        p = sg_slprintf(p, last, "%.*s:%zu: ", SG_STR_ARG(&cf->file->name),
                        line);
    }
    p = sg_vslprintf(p, last, fmt, args);
    if (err) {
        p = sg_slprintf(p, last, " (%d: %s)", err,
                        strerror_r(err, ebuf, sizeof(ebuf)));
    }
    *p = '\0';
}

char *
sg_conf_error(sg_conf_t *cf, int err, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    sg_conf_verror(cf, err, sg_directive_line, fmt, args);
    va_end(args);
    return SG_CONF_ERROR;
}

char *
sg_conf_error_at(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *fmt, ...)
{
    sg_conf_file_t   f, *prev = cf->file;
    va_list          args;

    memset(&f, 0, sizeof(f));
    f.name = *file;
    cf->file = &f;
    va_start(args, fmt);
    sg_conf_verror(cf, 0, line, fmt, args);
    va_end(args);
    cf->file = prev;
    return SG_CONF_ERROR;
}

size_t
sg_conf_line(sg_conf_t *cf)
{
    (void) cf;
    return sg_directive_line;
}

static int
sg_conf_token_error(sg_conf_t *cf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
sg_conf_token_error(sg_conf_t *cf, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    sg_conf_verror(cf, 0, cf->file->line, fmt, args);
    va_end(args);
    return SG_TOK_ERROR;
}

static void
sg_conf_vwarn(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *fmt, va_list args)
{
    u_char   buf[1024], *p, *last = buf + sizeof(buf) - 1;

    p = buf;
    if (file) {
        p = sg_slprintf(p, last, "%.*s:%zu: ", SG_STR_ARG(file), line);
    }
    p = sg_vslprintf(p, last, fmt, args);
    sg_log_error(SG_LOG_WARN, cf->log, 0, "%.*s", (int) (p - buf),
                 (char *) buf);
}

void
sg_conf_warn(sg_conf_t *cf, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    sg_conf_vwarn(cf, cf->file ? &cf->file->name : NULL, sg_directive_line,
                  fmt, args);
    va_end(args);
}

void
sg_conf_warn_at(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    sg_conf_vwarn(cf, file, line, fmt, args);
    va_end(args);
}

/* Tokeniser. */

static bool
sg_conf_is_space(u_char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

static bool
sg_conf_ends_word(u_char ch)
{
    return sg_conf_is_space(ch) || ch == ';' || ch == '{' || ch == '}';
}

/* As in nginx: \" \' \\ \n \r \t are escapes; any other backslash is
 * kept, so that regexes such as ~^mx\d+ read as written.  Returns 0 for
 * "not an escape". */
static u_char
sg_conf_unescape(u_char ch)
{
    switch (ch) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case '"': case '\'': case '\\': return ch;
    }
    return 0;
}

static int
sg_conf_push_word(sg_conf_t *cf, u_char *buf, size_t len)
{
    sg_str_t  *w;

    if (cf->args->nelts > 64) {
        return sg_conf_token_error(cf, "too many parameters");
    }
    w = sg_array_push(cf->args);
    if (w == NULL) {
        return SG_TOK_ERROR;
    }
    w->data = sg_pnalloc(cf->pool, len + 1);
    if (w->data == NULL) {
        return SG_TOK_ERROR;
    }
    memcpy(w->data, buf, len);
    w->data[len] = '\0';
    w->len = len;
    return SG_OK;
}

/* Read one word, quoted or bare, starting at f->pos. */
static int
sg_conf_read_word(sg_conf_t *cf)
{
    sg_conf_file_t  *f = cf->file;
    u_char           buf[SG_CONF_MAX_WORD], quote = 0, ch;
    size_t           len = 0;
    bool             braced = false;     /* inside "${name}" */

    if (*f->pos == '"' || *f->pos == '\'') {
        quote = *f->pos++;
    }
    for ( ;; ) {
        if (f->pos >= f->end) {
            if (quote) {
                return sg_conf_token_error(cf,
                    "unexpected end of file, expecting closing %c", quote);
            }
            break;
        }
        ch = *f->pos;
        if (quote && ch == quote) {
            f->pos++;
            if (f->pos < f->end && !sg_conf_ends_word(*f->pos)) {
                return sg_conf_token_error(cf, "unexpected \"%c\"", *f->pos);
            }
            break;
        }
        /* As in nginx, "${name}" stays inside the word. */
        if (!quote && ch == '{' && len && buf[len - 1] == '$') {
            braced = true;
        } else if (!quote && ch == '}' && braced) {
            braced = false;
        } else if (!quote
                   && (sg_conf_ends_word(ch) || ch == '"' || ch == '\''))
        {
            if (ch == '"' || ch == '\'') {
                return sg_conf_token_error(cf, "unexpected \"%c\"", ch);
            }
            break;
        }
        f->pos++;
        if (ch == '\n') {
            f->line++;
        }
        if (ch == '\\' && f->pos < f->end) {
            if (sg_conf_unescape(*f->pos)) {
                ch = sg_conf_unescape(*f->pos++);
            } else if (!quote && sg_conf_ends_word(*f->pos)) {
                /* "\;" keeps both and does not end the word, as nginx */
                if (len + 2 > sizeof(buf)) {
                    return sg_conf_token_error(cf, "too long parameter, "
                                               "the limit is %d bytes",
                                               SG_CONF_MAX_WORD);
                }
                buf[len++] = '\\';
                ch = *f->pos++;
                if (ch == '\n') {
                    f->line++;
                }
            }
        }
        if (ch == '\0') {
            return sg_conf_token_error(cf, "unexpected NUL byte");
        }
        if (len == sizeof(buf)) {
            return sg_conf_token_error(cf, "too long parameter, "
                                       "the limit is %d bytes",
                                       SG_CONF_MAX_WORD);
        }
        buf[len++] = ch;
    }
    return sg_conf_push_word(cf, buf, len);
}

static int
sg_conf_read_token(sg_conf_t *cf)
{
    sg_conf_file_t  *f = cf->file;
    u_char           ch;

    cf->args->nelts = 0;
    for ( ;; ) {
        if (f->pos >= f->end) {
            if (cf->args->nelts) {
                return sg_conf_token_error(cf, "unexpected end of file, "
                                           "expecting \";\" or \"}\"");
            }
            return SG_TOK_FILE_DONE;
        }
        ch = *f->pos;
        if (ch == '\n') {
            f->line++;
            f->pos++;
            continue;
        }
        if (sg_conf_is_space(ch)) {
            f->pos++;
            continue;
        }
        if (ch == '#') {
            while (f->pos < f->end && *f->pos != '\n') {
                f->pos++;
            }
            continue;
        }
        if (ch == ';' || ch == '{') {
            f->pos++;
            if (cf->args->nelts == 0) {
                return sg_conf_token_error(cf, "unexpected \"%c\"", ch);
            }
            return ch == ';' ? SG_TOK_DIRECTIVE : SG_TOK_BLOCK_START;
        }
        if (ch == '}') {
            f->pos++;
            if (cf->args->nelts) {
                return sg_conf_token_error(cf, "unexpected \"}\"");
            }
            return SG_TOK_BLOCK_DONE;
        }
        if (cf->args->nelts == 0) {
            sg_directive_line = f->line;
        }
        if (sg_conf_read_word(cf) != SG_OK) {
            return SG_TOK_ERROR;
        }
    }
}

/* Directive dispatch. */

static bool
sg_conf_args_ok(const sg_command_t *cmd, size_t nargs)
{
    if (cmd->type & SG_CONF_ANY) {
        return true;
    }
    if (cmd->type & SG_CONF_FLAG) {
        return nargs == 1;
    }
    if (cmd->type & SG_CONF_1MORE) {
        return nargs >= 1;
    }
    if (cmd->type & SG_CONF_2MORE) {
        return nargs >= 2;
    }
    return nargs < sg_nelems(sg_argument_number)
           && (cmd->type & sg_argument_number[nargs]);
}

static void *
sg_conf_target(sg_conf_t *cf, const sg_module_t *m, const sg_command_t *cmd)
{
    void  **confp;

    if (m->type == SG_CORE_MODULE) {
        if (cmd->type & SG_DIRECT_CONF) {
            return cf->cycle->conf_ctx[m->index];
        }
        return &cf->cycle->conf_ctx[m->index];
    }
    confp = *(void ***) ((char *) cf->ctx + cmd->conf);
    return confp ? confp[m->ctx_index] : NULL;
}

char *
sg_conf_add_cidr(sg_conf_t *cf, sg_array_t **list)
{
    sg_str_t    *value = cf->args->elts;
    sg_cidr_t   *cidr;
    const char  *err = NULL;
    int          rc;

    if (*list == NULL || *list == SG_CONF_UNSET_PTR) {
        *list = sg_array_create(cf->pool, 4, sizeof(sg_cidr_t));
        if (*list == NULL) {
            return SG_CONF_ERROR;
        }
    }
    cidr = sg_array_push(*list);
    if (cidr == NULL) {
        return SG_CONF_ERROR;
    }
    rc = sg_parse_cidr(&value[1], cidr, &err);
    if (rc == SG_ERROR) {
        return sg_conf_invalid_value(cf, &value[1], err);
    }
    if (rc == SG_DECLINED) {
        sg_conf_warn(cf, "low address bits of \"%.*s\" in \"%.*s\" are "
                     "meaningless", SG_STR_ARG(&value[1]),
                     SG_STR_ARG(&value[0]));
    }
    return SG_CONF_OK;
}

static char *
sg_conf_handler(sg_conf_t *cf, int last)
{
    sg_str_t           *name = cf->args->elts;
    const sg_command_t *cmd;
    sg_module_t        *m;
    bool                found = false;
    size_t              i;
    char               *rv;

    for (i = 0; sg_modules[i]; i++) {
        m = sg_modules[i];
        if (m->commands == NULL) {
            continue;
        }
        for (cmd = m->commands; cmd->name; cmd++) {
            if (!sg_str_eq(name, cmd->name)) {
                continue;
            }
            found = true;
            if (m->type != SG_CORE_MODULE && m->type != cf->module_type) {
                continue;
            }
            if (!(cmd->type & cf->cmd_type)) {
                continue;
            }
            if (!(cmd->type & SG_CONF_BLOCK) && last != SG_TOK_DIRECTIVE) {
                return sg_conf_error(cf, 0, "directive \"%s\" is not "
                                     "terminated by \";\"", cmd->name);
            }
            if ((cmd->type & SG_CONF_BLOCK) && last != SG_TOK_BLOCK_START) {
                return sg_conf_error(cf, 0, "directive \"%s\" has no "
                                     "opening \"{\"", cmd->name);
            }
            if (!sg_conf_args_ok(cmd, cf->args->nelts - 1)) {
                return sg_conf_error(cf, 0, "invalid number of arguments "
                                     "in \"%s\" directive", cmd->name);
            }
            rv = cmd->set(cf, cmd, sg_conf_target(cf, m, cmd));
            if (rv == SG_CONF_OK || rv == SG_CONF_ERROR) {
                return rv;
            }
            return sg_conf_error(cf, 0, "\"%s\" directive %s", cmd->name, rv);
        }
    }
    if (found) {
        return sg_conf_error(cf, 0, "\"%.*s\" directive is not allowed here",
                             SG_STR_ARG(name));
    }
    return sg_conf_error(cf, 0, "unknown directive \"%.*s\"",
                         SG_STR_ARG(name));
}

static char *
sg_conf_run(sg_conf_t *cf, bool block)
{
    int    rc;
    char  *rv;

    for ( ;; ) {
        rc = sg_conf_read_token(cf);
        switch (rc) {
        case SG_TOK_ERROR:
            return SG_CONF_ERROR;
        case SG_TOK_BLOCK_DONE:
            if (!block) {
                sg_directive_line = cf->file->line;
                return sg_conf_error(cf, 0, "unexpected \"}\"");
            }
            return SG_CONF_OK;
        case SG_TOK_FILE_DONE:
            if (block) {
                sg_directive_line = cf->file->line;
                return sg_conf_error(cf, 0, "unexpected end of file, "
                                     "expecting \"}\"");
            }
            return SG_CONF_OK;
        }
        /* A block read by its own handler (upstream, map) still takes
         * include, which works in any context. */
        if (cf->handler
            && !sg_str_eq((sg_str_t *) cf->args->elts, "include"))
        {
            if (rc == SG_TOK_BLOCK_START) {
                return sg_conf_error(cf, 0, "unexpected \"{\"");
            }
            rv = cf->handler(cf, NULL, cf->handler_conf);
        } else {
            rv = sg_conf_handler(cf, rc);
        }
        if (rv != SG_CONF_OK) {
            if (rv != SG_CONF_ERROR) {
                sg_conf_error(cf, 0, "%s", rv);
            }
            return SG_CONF_ERROR;
        }
    }
}

/*
 * Read a whole regular file of at most max bytes into the cycle pool,
 * NUL-terminated.  Configuration files, users files and the like are
 * read this way, in the master while a configuration loads.
 */
char *
sg_conf_read_whole(sg_conf_t *cf, const sg_str_t *name, size_t max,
    u_char **data, size_t *size)
{
    struct stat  st;
    ssize_t      n;
    size_t       got = 0;
    int          fd;

    fd = open((const char *) name->data, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return sg_conf_error(cf, errno, "open() \"%.*s\" failed",
                             SG_STR_ARG(name));
    }
    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)
        || (size_t) st.st_size > max)
    {
        close(fd);
        return sg_conf_error(cf, 0, "\"%.*s\" is not a regular file of at "
                             "most %zu bytes", SG_STR_ARG(name), max);
    }
    *data = sg_pnalloc(cf->pool, (size_t) st.st_size + 1);
    if (*data == NULL) {
        close(fd);
        return SG_CONF_ERROR;
    }
    while (got < (size_t) st.st_size) {
        n = read(fd, *data + got, (size_t) st.st_size - got);
        if (n <= 0) {
            if (n == -1 && errno == EINTR) {
                continue;
            }
            close(fd);
            return sg_conf_error(cf, n ? errno : 0, "read() \"%.*s\" failed",
                                 SG_STR_ARG(name));
        }
        got += (size_t) n;
    }
    close(fd);
    (*data)[got] = '\0';
    *size = got;
    return SG_CONF_OK;
}

static int
sg_conf_read_file(sg_conf_t *cf, const sg_str_t *name, sg_conf_file_t *f)
{
    if (sg_conf_read_whole(cf, name, SG_CONF_FILE_MAX, &f->content,
                           &f->size) != SG_CONF_OK)
    {
        return SG_ERROR;
    }
    f->name = *name;
    f->line = 1;
    f->pos = f->content;
    f->end = f->content + f->size;
    return SG_OK;
}

char *
sg_conf_parse(sg_conf_t *cf, const sg_str_t *filename)
{
    sg_conf_file_t  *prev, *f;
    char            *rv;

    if (filename == NULL) {
        return sg_conf_run(cf, true);
    }
    if (cf->depth >= SG_CONF_MAX_DEPTH) {
        return sg_conf_error(cf, 0, "includes nested too deeply at \"%.*s\"",
                             SG_STR_ARG(filename));
    }
    f = sg_array_push(&cf->cycle->conf_files);
    if (f == NULL) {
        return SG_CONF_ERROR;
    }
    if (sg_conf_read_file(cf, filename, f) != SG_OK) {
        cf->cycle->conf_files.nelts--;
        return SG_CONF_ERROR;
    }
    /* The array may move on push: work on a stable copy. */
    prev = cf->file;
    f = sg_palloc(cf->pool, sizeof(sg_conf_file_t));
    if (f == NULL) {
        return SG_CONF_ERROR;
    }
    *f = *sg_array_elt(&cf->cycle->conf_files, sg_conf_file_t,
                       cf->cycle->conf_files.nelts - 1);
    cf->file = f;
    cf->depth++;
    rv = sg_conf_run(cf, false);
    cf->depth--;
    cf->file = prev;       /* errors already carry their own file name */
    return rv;
}

char *
sg_conf_param(sg_conf_t *cf, const sg_str_t *param)
{
    sg_conf_file_t   f;
    sg_conf_file_t  *prev = cf->file;
    char            *rv;

    memset(&f, 0, sizeof(f));
    sg_str_set(&f.name, "command line");
    f.line = 1;
    f.content = param->data;
    f.pos = param->data;
    f.end = param->data + param->len;
    cf->file = &f;
    rv = sg_conf_run(cf, false);
    cf->file = prev;
    return rv;
}

int
sg_conf_full_name(sg_conf_t *cf, sg_str_t *name, bool conf_prefix)
{
    const sg_str_t  *prefix;
    u_char          *p;

    if (name->len && name->data[0] == '/') {
        return SG_OK;
    }
    prefix = conf_prefix ? &cf->cycle->conf_prefix : &cf->cycle->prefix;
    p = sg_pnalloc(cf->pool, prefix->len + name->len + 1);
    if (p == NULL) {
        return SG_ERROR;
    }
    memcpy(p, prefix->data, prefix->len);
    memcpy(p + prefix->len, name->data, name->len);
    p[prefix->len + name->len] = '\0';
    name->data = p;
    name->len += prefix->len;
    return SG_OK;
}

void
sg_conf_dump(sg_cycle_t *cycle, FILE *out)
{
    sg_conf_file_t  *f = cycle->conf_files.elts;
    size_t           i;

    for (i = 0; i < cycle->conf_files.nelts; i++) {
        fprintf(out, "# configuration file %.*s:\n", SG_STR_ARG(&f[i].name));
        fwrite(f[i].content, 1, f[i].size, out);
        if (f[i].size && f[i].content[f[i].size - 1] != '\n') {
            fputc('\n', out);
        }
        fputc('\n', out);
    }
}

/* Typed setters. */

char *
sg_conf_invalid_value(sg_conf_t *cf, const sg_str_t *value, const char *why)
{
    sg_str_t  *args = cf->args->elts;

    return sg_conf_error(cf, 0, "invalid value \"%.*s\" in \"%.*s\" "
                         "directive%s%s", SG_STR_ARG(value),
                         SG_STR_ARG(&args[0]), why ? ", " : "",
                         why ? why : "");
}

char *
sg_conf_duplicate(sg_conf_t *cf)
{
    sg_str_t  *args = cf->args->elts;

    return sg_conf_error(cf, 0, "\"%.*s\" directive is duplicate",
                         SG_STR_ARG(&args[0]));
}

static char *
sg_conf_check_bounds(sg_conf_t *cf, const sg_command_t *cmd,
    const sg_str_t *value, int64_t v)
{
    const sg_conf_bounds_t  *b = cmd->post;
    char                     why[96];

    if (b && (v < b->min || v > b->max)) {
        snprintf(why, sizeof(why), "it must be between %lld and %lld",
                 (long long) b->min, (long long) b->max);
        return sg_conf_invalid_value(cf, value, why);
    }
    return SG_CONF_OK;
}

char *
sg_conf_set_flag_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    int       *fp = (int *) ((char *) conf + cmd->offset);
    sg_str_t  *value = cf->args->elts;

    if (*fp != SG_CONF_UNSET) {
        return sg_conf_duplicate(cf);
    }
    if (sg_str_eq(&value[1], "on")) {
        *fp = 1;
    } else if (sg_str_eq(&value[1], "off")) {
        *fp = 0;
    } else {
        return sg_conf_invalid_value(cf, &value[1],
                                     "it must be \"on\" or \"off\"");
    }
    return SG_CONF_OK;
}

char *
sg_conf_set_num_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    int64_t   *np = (int64_t *) ((char *) conf + cmd->offset);
    sg_str_t  *value = cf->args->elts;
    int64_t    v;

    if (*np != SG_CONF_UNSET) {
        return sg_conf_duplicate(cf);
    }
    if (sg_parse_int(&value[1], &v) != SG_OK) {
        return sg_conf_invalid_value(cf, &value[1], "a number is expected");
    }
    if (sg_conf_check_bounds(cf, cmd, &value[1], v) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    *np = v;
    return SG_CONF_OK;
}

char *
sg_conf_set_size_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    size_t    *sp = (size_t *) ((char *) conf + cmd->offset);
    sg_str_t  *value = cf->args->elts;
    int64_t    v;

    if (*sp != SG_CONF_UNSET_SIZE) {
        return sg_conf_duplicate(cf);
    }
    if (sg_parse_size(&value[1], &v) != SG_OK) {
        return sg_conf_invalid_value(cf, &value[1],
                                     "a size such as 512, 16k or 10m is "
                                     "expected");
    }
    if (sg_conf_check_bounds(cf, cmd, &value[1], v) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    *sp = (size_t) v;
    return SG_CONF_OK;
}

char *
sg_conf_set_msec_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_msec_t  *mp = (sg_msec_t *) ((char *) conf + cmd->offset);
    sg_str_t   *value = cf->args->elts;
    int64_t     v;

    if (*mp != SG_CONF_UNSET_MSEC) {
        return sg_conf_duplicate(cf);
    }
    if (sg_parse_time(&value[1], &v) != SG_OK) {
        return sg_conf_invalid_value(cf, &value[1],
                                     "a time such as 500ms, 30s or 5m is "
                                     "expected");
    }
    if (sg_conf_check_bounds(cf, cmd, &value[1], v) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    *mp = v;
    return SG_CONF_OK;
}

char *
sg_conf_set_str_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t  *field = (sg_str_t *) ((char *) conf + cmd->offset);
    sg_str_t  *value = cf->args->elts;

    if (field->data) {
        return sg_conf_duplicate(cf);
    }
    *field = value[1];
    return SG_CONF_OK;
}

char *
sg_conf_set_path_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t  *field = (sg_str_t *) ((char *) conf + cmd->offset);
    sg_str_t  *value = cf->args->elts;

    if (field->data) {
        return sg_conf_duplicate(cf);
    }
    if (value[1].len == 0) {
        return sg_conf_invalid_value(cf, &value[1], "a path is expected");
    }
    *field = value[1];
    return sg_conf_full_name(cf, field, true) == SG_OK ? SG_CONF_OK
                                                       : SG_CONF_ERROR;
}

static int
sg_conf_lookup_enum(const sg_conf_enum_t *e, const sg_str_t *v, unsigned *out)
{
    for ( ; e->name; e++) {
        if (sg_str_caseeq(v, e->name)) {
            *out = e->value;
            return SG_OK;
        }
    }
    return SG_ERROR;
}

static char *
sg_conf_enum_error(sg_conf_t *cf, const sg_command_t *cmd,
    const sg_str_t *value)
{
    const sg_conf_enum_t  *e;
    char                   why[512];
    size_t                 n;

    n = (size_t) snprintf(why, sizeof(why), "it must be one of:");
    for (e = cmd->post; e->name && n < sizeof(why) - 1; e++) {
        n += (size_t) snprintf(why + n, sizeof(why) - n, " \"%s\"", e->name);
    }
    return sg_conf_invalid_value(cf, value, why);
}

char *
sg_conf_set_enum_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    unsigned  *ep = (unsigned *) ((char *) conf + cmd->offset);
    sg_str_t  *value = cf->args->elts;

    if (*ep != (unsigned) SG_CONF_UNSET) {
        return sg_conf_duplicate(cf);
    }
    if (sg_conf_lookup_enum(cmd->post, &value[1], ep) != SG_OK) {
        *ep = (unsigned) SG_CONF_UNSET;
        return sg_conf_enum_error(cf, cmd, &value[1]);
    }
    return SG_CONF_OK;
}

char *
sg_conf_set_bitmask_slot(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    unsigned  *bp = (unsigned *) ((char *) conf + cmd->offset), bit;
    sg_str_t  *value = cf->args->elts;
    size_t     i;

    if (*bp != 0) {
        return sg_conf_duplicate(cf);
    }
    for (i = 1; i < cf->args->nelts; i++) {
        if (sg_conf_lookup_enum(cmd->post, &value[i], &bit) != SG_OK) {
            *bp = 0;
            return sg_conf_enum_error(cf, cmd, &value[i]);
        }
        *bp |= bit;
    }
    return SG_CONF_OK;
}
