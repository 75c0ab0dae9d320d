/*
 * sg_smtp_variables.c: session variables and complex values (see the
 * variables block of sg_smtp.h).
 *
 * Owns the registry of variable names (in the smtp module's main conf,
 * built while the configuration loads), the per-session cache of values
 * (one array from the session pool, made on the first read), the
 * built-in variables of the SMTP front end, and complex values: strings
 * with "$var" and "$1" in them, split into parts once at configuration
 * time and joined at run time.
 * Refuses, at configuration time, a name that is used but never
 * defined, one defined twice, a capture outside a regex's value, and a
 * cycle of variables defined in terms of each other; at run time a
 * value longer than SG_SMTP_VALUE_MAX and a variable read while it is
 * being computed (logged, read as empty).
 */
#include "sg_smtp.h"

#define SG_SMTP_VAR_NAME_MAX   128
#define SG_SMTP_VAR_DEPTH      64      /* variables computing variables */

typedef struct {
    sg_str_t                  name;
    sg_smtp_variable_get_pt   get;     /* NULL: used, not defined (yet) */
    uintptr_t                 data;
    unsigned                  flags;
    sg_str_t                  file;    /* where defined, else first used */
    size_t                    line;
    unsigned                  builtin:1;
} sg_smtp_variable_t;

typedef struct {
    size_t                    index;   /* this variable ... */
    size_t                    on;      /* ... is computed from this one */
    sg_str_t                  file;
    size_t                    line;
} sg_smtp_var_dep_t;

struct sg_smtp_variables_s {
    sg_array_t                vars;    /* sg_smtp_variable_t */
    sg_array_t                deps;    /* sg_smtp_var_dep_t */
};

typedef struct {
    sg_str_t                  value;
    unsigned                  valid:1;
    unsigned                  busy:1;  /* being computed */
} sg_smtp_var_slot_t;

struct sg_smtp_var_cache_s {
    size_t                    n;
    unsigned                  depth;
    sg_smtp_var_slot_t        slot[];
};

typedef enum {
    SG_SMTP_PART_TEXT = 0,
    SG_SMTP_PART_VAR,
    SG_SMTP_PART_CAPTURE
} sg_smtp_part_e;

typedef struct {
    sg_smtp_part_e            type;
    sg_str_t                  text;
    size_t                    index;   /* variable index or group number */
} sg_smtp_cv_part_t;

struct sg_smtp_complex_value_s {
    sg_str_t                  src;
    sg_smtp_cv_part_t        *parts;
    size_t                    nparts;
};

static const sg_str_t  sg_smtp_empty = { 0, (u_char *) "" };

static void sg_smtp_builtin_variables(sg_conf_t *cf,
    sg_smtp_variables_t *vs);

/* Names. */

static bool
sg_smtp_name_char(u_char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
           || (ch >= '0' && ch <= '9') || ch == '_';
}

bool
sg_smtp_variable_name_ok(const sg_str_t *name)
{
    size_t  i;

    if (name->len == 0 || name->len > SG_SMTP_VAR_NAME_MAX
        || (name->data[0] >= '0' && name->data[0] <= '9'))
    {
        return false;
    }
    for (i = 0; i < name->len; i++) {
        if (!sg_smtp_name_char(name->data[i])) {
            return false;
        }
    }
    return true;
}

/* The registry. */

static sg_smtp_variables_t *
sg_smtp_registry(sg_conf_t *cf)
{
    return sg_smtp_variables_of(((sg_mail_conf_ctx_t *) cf->ctx)->main_conf);
}

static void
sg_smtp_var_here(sg_conf_t *cf, sg_str_t *file, size_t *line)
{
    if (cf->file) {
        *file = cf->file->name;
        *line = sg_conf_line(cf);
    } else {
        sg_str_set(file, "(configuration)");
        *line = 0;
    }
}

static ssize_t
sg_smtp_var_find(sg_smtp_variables_t *vs, const sg_str_t *name)
{
    sg_smtp_variable_t  *v = vs->vars.elts;
    size_t               i;

    for (i = 0; i < vs->vars.nelts; i++) {
        if (v[i].name.len == name->len
            && sg_strncasecmp(v[i].name.data, name->data, name->len) == 0)
        {
            return (ssize_t) i;
        }
    }
    return -1;
}

/* A new, not yet defined entry; its name is copied into the cycle. */
static ssize_t
sg_smtp_var_push(sg_conf_t *cf, sg_smtp_variables_t *vs,
    const sg_str_t *name)
{
    sg_smtp_variable_t  *v;

    v = sg_array_push(&vs->vars);
    if (v == NULL) {
        return -1;
    }
    v->name.data = sg_pstrdup(cf->pool, name);
    if (v->name.data == NULL) {
        vs->vars.nelts--;
        return -1;
    }
    v->name.len = name->len;
    sg_smtp_var_here(cf, &v->file, &v->line);
    return (ssize_t) (vs->vars.nelts - 1);
}

static int
sg_smtp_var_define(sg_conf_t *cf, sg_smtp_variables_t *vs,
    const sg_str_t *name, sg_smtp_variable_get_pt get, uintptr_t data,
    unsigned flags, bool builtin)
{
    sg_smtp_variable_t  *v;
    ssize_t              i;

    if (!sg_smtp_variable_name_ok(name)) {
        sg_conf_error(cf, 0, "invalid variable name \"$%.*s\": use letters, "
                      "digits and \"_\", not starting with a digit",
                      SG_STR_ARG(name));
        return SG_ERROR;
    }
    i = sg_smtp_var_find(vs, name);
    if (i >= 0) {
        v = sg_array_elt(&vs->vars, sg_smtp_variable_t, i);
        if (v->builtin) {
            sg_conf_error(cf, 0, "variable \"$%.*s\" is built in: choose "
                          "another name", SG_STR_ARG(name));
            return SG_ERROR;
        }
        if (v->get) {
            sg_conf_error(cf, 0, "variable \"$%.*s\" is already defined at "
                          "%.*s:%zu", SG_STR_ARG(name), SG_STR_ARG(&v->file),
                          v->line);
            return SG_ERROR;
        }
    } else {
        i = sg_smtp_var_push(cf, vs, name);
        if (i < 0) {
            return SG_ERROR;
        }
        v = sg_array_elt(&vs->vars, sg_smtp_variable_t, i);
    }
    v->get = get;
    v->data = data;
    v->flags = flags & ~SG_SMTP_VAR_BUILTIN;
    v->builtin = builtin || (flags & SG_SMTP_VAR_BUILTIN);
    sg_smtp_var_here(cf, &v->file, &v->line);
    return SG_OK;
}

sg_smtp_variables_t *
sg_smtp_variables_create(sg_conf_t *cf)
{
    sg_smtp_variables_t  *vs;

    vs = sg_pcalloc(cf->pool, sizeof(sg_smtp_variables_t));
    if (vs == NULL
        || sg_array_init(&vs->vars, cf->pool, 32,
                         sizeof(sg_smtp_variable_t)) != SG_OK
        || sg_array_init(&vs->deps, cf->pool, 16,
                         sizeof(sg_smtp_var_dep_t)) != SG_OK)
    {
        return NULL;
    }
    sg_smtp_builtin_variables(cf, vs);
    return cf->failed ? NULL : vs;
}

int
sg_smtp_add_variable(sg_conf_t *cf, const sg_str_t *name,
    sg_smtp_variable_get_pt get, uintptr_t data, unsigned flags)
{
    return sg_smtp_var_define(cf, sg_smtp_registry(cf), name, get, data,
                              flags, false);
}

int
sg_smtp_variable_flags(sg_conf_t *cf, size_t index, unsigned flags)
{
    sg_smtp_variables_t  *vs = sg_smtp_registry(cf);

    SG_BUG_ON(index >= vs->vars.nelts);
    sg_array_elt(&vs->vars, sg_smtp_variable_t, index)->flags |=
        flags & SG_SMTP_VAR_NOCACHE;
    return SG_OK;
}

ssize_t
sg_smtp_variable_index(sg_conf_t *cf, const sg_str_t *name)
{
    sg_smtp_variables_t  *vs = sg_smtp_registry(cf);
    ssize_t               i;

    if (!sg_smtp_variable_name_ok(name)) {
        sg_conf_error(cf, 0, "invalid variable name \"$%.*s\"",
                      SG_STR_ARG(name));
        return -1;
    }
    i = sg_smtp_var_find(vs, name);
    return i >= 0 ? i : sg_smtp_var_push(cf, vs, name);
}

int
sg_smtp_variable_depends(sg_conf_t *cf, size_t index, size_t on)
{
    sg_smtp_variables_t  *vs = sg_smtp_registry(cf);
    sg_smtp_var_dep_t    *d;

    d = sg_array_push(&vs->deps);
    if (d == NULL) {
        return SG_ERROR;
    }
    d->index = index;
    d->on = on;
    sg_smtp_var_here(cf, &d->file, &d->line);
    return SG_OK;
}

/* Whether variable x, or one it is computed from, has flag; seen marks
 * those looked at (a cycle is reported elsewhere). */
static bool
sg_smtp_var_reads(sg_smtp_variables_t *vs, size_t x, unsigned flag,
    bool *seen)
{
    sg_smtp_variable_t  *v = vs->vars.elts;
    sg_smtp_var_dep_t   *d = vs->deps.elts;
    size_t               j;

    if (x >= vs->vars.nelts || seen[x]) {
        return false;
    }
    seen[x] = true;
    if (v[x].flags & flag) {
        return true;
    }
    for (j = 0; j < vs->deps.nelts; j++) {
        if (d[j].index == x && sg_smtp_var_reads(vs, d[j].on, flag, seen)) {
            return true;
        }
    }
    return false;
}

bool
sg_smtp_complex_value_reads(sg_conf_t *cf,
    const sg_smtp_complex_value_t *cv, unsigned flag)
{
    sg_smtp_variables_t  *vs = sg_smtp_registry(cf);
    bool                 *seen;
    size_t                i;

    seen = sg_pcalloc(cf->temp_pool ? cf->temp_pool : cf->pool,
                      vs->vars.nelts + 1);
    if (seen == NULL) {
        return false;
    }
    for (i = 0; i < cv->nparts; i++) {
        if (cv->parts[i].type == SG_SMTP_PART_VAR
            && sg_smtp_var_reads(vs, cv->parts[i].index, flag, seen))
        {
            return true;
        }
    }
    return false;
}

int
sg_smtp_complex_value_depends(sg_conf_t *cf, size_t index,
    const sg_smtp_complex_value_t *cv)
{
    size_t  i;

    for (i = 0; i < cv->nparts; i++) {
        if (cv->parts[i].type == SG_SMTP_PART_VAR
            && sg_smtp_variable_depends(cf, index, cv->parts[i].index)
               != SG_OK)
        {
            return SG_ERROR;
        }
    }
    return SG_OK;
}

/* The check after the mail block. */

/* Find a cycle among the variables Kahn's pass could not order (each of
 * them depends on another one of them) and report it. */
static char *
sg_smtp_var_cycle(sg_conf_t *cf, sg_smtp_variables_t *vs, const bool *done,
    const size_t *dep_start, const size_t *dep_list)
{
    sg_smtp_variable_t  *v = vs->vars.elts;
    sg_smtp_var_dep_t   *d = vs->deps.elts;
    size_t               n = vs->vars.nelts, x, j, steps, *seen;

    seen = sg_pcalloc(cf->pool, n * sizeof(size_t));
    if (seen == NULL) {
        return SG_CONF_ERROR;
    }
    for (x = 0; x < n && done[x]; x++) { /* void */ }
    /* Walk to an unordered dependency until a variable repeats: it is
     * on a cycle, and so is the edge that led back to it. */
    for (steps = 1; ; steps++) {
        seen[x] = steps;
        for (j = dep_start[x]; j < dep_start[x + 1]; j++) {
            if (!done[d[dep_list[j]].on]) {
                break;
            }
        }
        SG_BUG_ON(j == dep_start[x + 1]);
        if (seen[d[dep_list[j]].on]) {
            break;
        }
        x = d[dep_list[j]].on;
    }
    j = dep_list[j];
    if (d[j].index == d[j].on) {
        return sg_conf_error_at(cf, &d[j].file, d[j].line, "variable "
                                "\"$%.*s\" is computed from itself",
                                SG_STR_ARG(&v[d[j].index].name));
    }
    return sg_conf_error_at(cf, &d[j].file, d[j].line, "variable \"$%.*s\" "
                            "is computed from \"$%.*s\", which itself needs "
                            "\"$%.*s\": a cycle",
                            SG_STR_ARG(&v[d[j].index].name),
                            SG_STR_ARG(&v[d[j].on].name),
                            SG_STR_ARG(&v[d[j].index].name));
}

/*
 * Order the variables so that each comes after those it is computed
 * from (Kahn), making a variable NOCACHE when one of those is; what
 * cannot be ordered is a cycle.
 */
static char *
sg_smtp_var_order(sg_conf_t *cf, sg_smtp_variables_t *vs)
{
    sg_smtp_variable_t  *v = vs->vars.elts;
    sg_smtp_var_dep_t   *d = vs->deps.elts;
    size_t               n = vs->vars.nelts, m = vs->deps.nelts, i, j, x;
    size_t              *dep_start, *dep_list, *use_start, *use_list;
    size_t              *pending, *queue, head = 0, tail = 0;
    bool                *done;

    if (m == 0) {
        return SG_CONF_OK;
    }
    dep_start = sg_pcalloc(cf->pool, (n + 1) * sizeof(size_t));
    use_start = sg_pcalloc(cf->pool, (n + 1) * sizeof(size_t));
    dep_list = sg_palloc(cf->pool, m * sizeof(size_t));
    use_list = sg_palloc(cf->pool, m * sizeof(size_t));
    pending = sg_pcalloc(cf->pool, n * sizeof(size_t));
    queue = sg_palloc(cf->pool, n * sizeof(size_t));
    done = sg_pcalloc(cf->pool, n * sizeof(bool));
    if (dep_start == NULL || use_start == NULL || dep_list == NULL
        || use_list == NULL || pending == NULL || queue == NULL
        || done == NULL)
    {
        return SG_CONF_ERROR;
    }
    /* Edges by variable: what it needs (dep_*), what needs it (use_*). */
    for (j = 0; j < m; j++) {
        dep_start[d[j].index + 1]++;
        use_start[d[j].on + 1]++;
    }
    for (i = 0; i < n; i++) {
        dep_start[i + 1] += dep_start[i];
        use_start[i + 1] += use_start[i];
    }
    for (j = 0; j < m; j++) {
        dep_list[dep_start[d[j].index] + pending[d[j].index]++] = j;
    }
    memset(pending, 0, n * sizeof(size_t));
    for (j = 0; j < m; j++) {
        use_list[use_start[d[j].on] + pending[d[j].on]++] = j;
    }
    for (i = 0; i < n; i++) {
        pending[i] = dep_start[i + 1] - dep_start[i];
        if (pending[i] == 0) {
            queue[tail++] = i;
        }
    }
    while (head < tail) {
        x = queue[head++];
        done[x] = true;
        for (j = use_start[x]; j < use_start[x + 1]; j++) {
            i = d[use_list[j]].index;
            v[i].flags |= v[x].flags & SG_SMTP_VAR_NOCACHE;
            if (--pending[i] == 0) {
                queue[tail++] = i;
            }
        }
    }
    if (tail < n) {
        return sg_smtp_var_cycle(cf, vs, done, dep_start, dep_list);
    }
    return SG_CONF_OK;
}

char *
sg_smtp_variables_check(sg_conf_t *cf)
{
    sg_smtp_variables_t  *vs = sg_smtp_registry(cf);
    sg_smtp_variable_t   *v = vs->vars.elts;
    size_t                i;

    for (i = 0; i < vs->vars.nelts; i++) {
        if (v[i].get == NULL) {
            return sg_conf_error_at(cf, &v[i].file, v[i].line, "unknown "
                                    "variable \"$%.*s\"",
                                    SG_STR_ARG(&v[i].name));
        }
    }
    return sg_smtp_var_order(cf, vs);
}

/* Values at run time. */

const sg_str_t *
sg_smtp_variable_value(sg_smtp_session_t *s, size_t index)
{
    sg_smtp_variables_t  *vs = sg_smtp_variables_of(s->conf->ctx->main_conf);
    sg_smtp_variable_t   *v;
    sg_smtp_var_cache_t  *cache = s->variables;
    sg_smtp_var_slot_t   *slot;
    sg_str_t              value;
    int                   rc;

    SG_BUG_ON(index >= vs->vars.nelts);
    if (cache == NULL) {
        cache = sg_pcalloc(s->pool, sizeof(sg_smtp_var_cache_t)
                           + vs->vars.nelts * sizeof(sg_smtp_var_slot_t));
        if (cache == NULL) {
            return &sg_smtp_empty;
        }
        cache->n = vs->vars.nelts;
        s->variables = cache;
    }
    v = sg_array_elt(&vs->vars, sg_smtp_variable_t, index);
    slot = &cache->slot[index];
    if (slot->valid && !(v->flags & SG_SMTP_VAR_NOCACHE)) {
        return &slot->value;
    }
    /* The configuration check refuses cycles; this keeps a missed one
     * from recursing until the stack runs out. */
    if (slot->busy || cache->depth >= SG_SMTP_VAR_DEPTH) {
        sg_log_error(SG_LOG_ERR, s->log, 0, "variable \"$%.*s\" is needed "
                     "while it is being computed, or variables are nested "
                     "more than %d deep: read as empty",
                     SG_STR_ARG(&v->name), SG_SMTP_VAR_DEPTH);
        return &sg_smtp_empty;
    }
    slot->busy = 1;
    cache->depth++;
    value = sg_smtp_empty;
    rc = v->get(s, &value, v->data);
    cache->depth--;
    slot->busy = 0;
    slot->value = rc == SG_OK && value.data ? value : sg_smtp_empty;
    slot->valid = 1;
    return &slot->value;
}

/* Complex values. */

sg_smtp_cv_token_e
sg_smtp_cv_token(const u_char **pos, const u_char *end,
    sg_smtp_cv_token_t *t)
{
    const u_char  *p = *pos, *q;

    memset(t, 0, sizeof(*t));
    if (p >= end) {
        return SG_SMTP_CV_END;
    }
    if (*p != '$') {
        q = memchr(p, '$', (size_t) (end - p));
        q = q ? q : end;
        t->text.data = (u_char *) p;
        t->text.len = (size_t) (q - p);
        *pos = q;
        return SG_SMTP_CV_TEXT;
    }
    p++;
    if (p == end) {
        t->err = "a \"$\" without a variable name";
        return SG_SMTP_CV_ERROR;
    }
    if (*p >= '0' && *p <= '9') {
        t->capture = (unsigned) (*p - '0');
        *pos = p + 1;
        return SG_SMTP_CV_CAPTURE;
    }
    if (*p == '{') {
        p++;
        q = p;
        while (q < end && *q != '}') {
            q++;
        }
        if (q == end) {
            t->err = "a \"${\" without its closing \"}\"";
            return SG_SMTP_CV_ERROR;
        }
        *pos = q + 1;
        if (q - p == 1 && *p >= '0' && *p <= '9') {
            t->capture = (unsigned) (*p - '0');
            return SG_SMTP_CV_CAPTURE;
        }
        t->text.data = (u_char *) p;
        t->text.len = (size_t) (q - p);
        if (!sg_smtp_variable_name_ok(&t->text)) {
            t->err = "an invalid variable name";
            return SG_SMTP_CV_ERROR;
        }
        return SG_SMTP_CV_VAR;
    }
    q = p;
    while (q < end && sg_smtp_name_char(*q)) {
        q++;
    }
    t->text.data = (u_char *) p;
    t->text.len = (size_t) (q - p);
    if (!sg_smtp_variable_name_ok(&t->text)) {
        t->err = "a \"$\" without a valid variable name (letters, digits "
                 "and \"_\")";
        return SG_SMTP_CV_ERROR;
    }
    *pos = q;
    return SG_SMTP_CV_VAR;
}

/* A "$1" or "$name" standing for a group of re. */
static char *
sg_smtp_cv_capture(sg_conf_t *cf, const sg_smtp_complex_value_t *cv,
    const sg_regex_t *re, unsigned group, const char *written)
{
    if (re == NULL) {
        return sg_conf_error(cf, 0, "\"%s\" in \"%.*s\" refers to a regex "
                             "capture, but there is no regex here: "
                             "captures can be used only in the value of a "
                             "map's ~regex entry", written,
                             SG_STR_ARG(&cv->src));
    }
    if (group > sg_regex_captures(re) || group >= SG_SMTP_CAPTURES_MAX) {
        return sg_conf_error(cf, 0, "\"%s\" in \"%.*s\": the regex has %zu "
                             "capture(s)", written, SG_STR_ARG(&cv->src),
                             sg_regex_captures(re));
    }
    return SG_CONF_OK;
}

sg_smtp_complex_value_t *
sg_smtp_compile_complex_value_re(sg_conf_t *cf, const sg_str_t *src,
    const sg_regex_t *re)
{
    sg_smtp_complex_value_t  *cv;
    sg_smtp_cv_part_t        *part;
    sg_smtp_cv_token_t        t;
    sg_smtp_cv_token_e        tok;
    sg_array_t                parts;
    const u_char             *p, *end;
    char                      written[SG_SMTP_VAR_NAME_MAX + 4];
    ssize_t                   idx;
    int                       group;

    cv = sg_pcalloc(cf->pool, sizeof(sg_smtp_complex_value_t));
    if (cv == NULL || sg_array_init(&parts, cf->pool, 4,
                                    sizeof(sg_smtp_cv_part_t)) != SG_OK)
    {
        return NULL;
    }
    cv->src.len = src->len;
    cv->src.data = sg_pstrdup(cf->pool, src);
    if (cv->src.data == NULL) {
        return NULL;
    }
    p = cv->src.data;
    end = p + cv->src.len;
    while ((tok = sg_smtp_cv_token(&p, end, &t)) != SG_SMTP_CV_END) {
        if (tok == SG_SMTP_CV_ERROR) {
            sg_conf_error(cf, 0, "%s in \"%.*s\"", t.err,
                          SG_STR_ARG(&cv->src));
            return NULL;
        }
        part = sg_array_push(&parts);
        if (part == NULL) {
            return NULL;
        }
        part->text = t.text;
        if (tok == SG_SMTP_CV_TEXT) {
            part->type = SG_SMTP_PART_TEXT;
            continue;
        }
        group = tok == SG_SMTP_CV_CAPTURE ? (int) t.capture
                : re ? sg_regex_named(re, &t.text) : -1;
        if (group >= 0) {
            if (tok == SG_SMTP_CV_CAPTURE) {
                snprintf(written, sizeof(written), "$%u", t.capture);
            } else {
                snprintf(written, sizeof(written), "$%.*s",
                         SG_STR_ARG(&t.text));
            }
            if (sg_smtp_cv_capture(cf, cv, re, (unsigned) group, written)
                != SG_CONF_OK)
            {
                return NULL;
            }
            part->type = SG_SMTP_PART_CAPTURE;
            part->index = (size_t) group;
            continue;
        }
        idx = sg_smtp_variable_index(cf, &t.text);
        if (idx < 0) {
            return NULL;
        }
        part->type = SG_SMTP_PART_VAR;
        part->index = (size_t) idx;
    }
    cv->parts = parts.elts;
    cv->nparts = parts.nelts;
    return cv;
}

sg_smtp_complex_value_t *
sg_smtp_compile_complex_value(sg_conf_t *cf, const sg_str_t *src)
{
    return sg_smtp_compile_complex_value_re(cf, src, NULL);
}

bool
sg_smtp_complex_value_is_static(const sg_smtp_complex_value_t *cv)
{
    return cv->nparts == 0
           || (cv->nparts == 1 && cv->parts[0].type == SG_SMTP_PART_TEXT);
}

const sg_str_t *
sg_smtp_complex_value_text(const sg_smtp_complex_value_t *cv)
{
    return &cv->src;
}

static sg_str_t
sg_smtp_capture(const sg_smtp_captures_t *c, size_t group)
{
    sg_str_t  v = sg_smtp_empty;
    size_t    from, to;

    if (c == NULL || group >= c->n) {
        return v;
    }
    from = c->caps[2 * group];
    to = c->caps[2 * group + 1];
    if (from == SG_REGEX_UNSET || from > to || to > c->subject.len) {
        return v;                   /* the group took no part */
    }
    v.data = c->subject.data + from;
    v.len = to - from;
    return v;
}

int
sg_smtp_complex_value_captures(sg_smtp_session_t *s,
    const sg_smtp_complex_value_t *cv, const sg_smtp_captures_t *captures,
    sg_str_t *out)
{
    sg_str_t   local[16], *vals;
    size_t     i, len = 0;
    u_char    *p;

    if (sg_smtp_complex_value_is_static(cv)) {
        *out = cv->nparts ? cv->parts[0].text : sg_smtp_empty;
        return SG_OK;
    }
    if (cv->nparts == 1) {
        /* "$var" or "$1" alone: the value itself, no copy. */
        *out = cv->parts[0].type == SG_SMTP_PART_VAR
               ? *sg_smtp_variable_value(s, cv->parts[0].index)
               : sg_smtp_capture(captures, cv->parts[0].index);
        return SG_OK;
    }
    *out = sg_smtp_empty;
    vals = cv->nparts <= sg_nelems(local)
           ? local : sg_palloc(s->pool, cv->nparts * sizeof(sg_str_t));
    if (vals == NULL) {
        return SG_ERROR;
    }
    /* Each value is copied out before the next is read: reading one
     * variable may recompute another (NOCACHE) in its slot. */
    for (i = 0; i < cv->nparts; i++) {
        switch (cv->parts[i].type) {
        case SG_SMTP_PART_TEXT:
            vals[i] = cv->parts[i].text;
            break;
        case SG_SMTP_PART_VAR:
            vals[i] = *sg_smtp_variable_value(s, cv->parts[i].index);
            break;
        default:
            vals[i] = sg_smtp_capture(captures, cv->parts[i].index);
        }
        len += vals[i].len;
        if (len > SG_SMTP_VALUE_MAX) {
            sg_log_error(SG_LOG_ERR, s->log, 0, "the value of \"%.*s\" "
                         "would be longer than %d bytes: read as empty",
                         SG_STR_ARG(&cv->src), SG_SMTP_VALUE_MAX);
            return SG_ERROR;
        }
    }
    p = sg_pnalloc(s->pool, len ? len : 1);
    if (p == NULL) {
        return SG_ERROR;
    }
    out->data = p;
    out->len = len;
    for (i = 0; i < cv->nparts; i++) {
        if (vals[i].len) {
            memcpy(p, vals[i].data, vals[i].len);
            p += vals[i].len;
        }
    }
    return SG_OK;
}

int
sg_smtp_complex_value(sg_smtp_session_t *s,
    const sg_smtp_complex_value_t *cv, sg_str_t *out)
{
    return sg_smtp_complex_value_captures(s, cv, NULL, out);
}

/* Built-in variables. */

static int
sg_smtp_var_str(sg_str_t *value, const sg_str_t *src)
{
    if (src->len == 0 || src->data == NULL) {
        return SG_DECLINED;
    }
    *value = *src;
    return SG_OK;
}

/* A short value formatted into the session pool (at most 40 bytes). */
static int __attribute__((format(printf, 3, 4)))
sg_smtp_var_printf(sg_smtp_session_t *s, sg_str_t *value, const char *fmt,
    ...)
{
    u_char   *p;
    va_list   args;

    p = sg_pnalloc(s->pool, 40);
    if (p == NULL) {
        return SG_ERROR;
    }
    va_start(args, fmt);
    value->len = (size_t) (sg_vslprintf(p, p + 40, fmt, args) - p);
    va_end(args);
    value->data = p;
    return SG_OK;
}

static int
sg_smtp_var_number(sg_smtp_session_t *s, sg_str_t *value, uint64_t n)
{
    return sg_smtp_var_printf(s, value, "%llu", (unsigned long long) n);
}

static int
sg_smtp_var_remote_addr(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    return sg_smtp_var_str(value, &s->connection->addr_text);
}

/* The client's address in network byte order: 4 bytes for IPv4, 16
 * for IPv6 (nginx's $binary_remote_addr, the usual key of
 * limit_conn_zone). */
static int
sg_smtp_var_binary_remote_addr(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    struct sockaddr_storage  *sa = &s->connection->sockaddr;

    (void) data;
    if (sa->ss_family == AF_INET) {
        value->data = (u_char *) &((struct sockaddr_in *) sa)->sin_addr;
        value->len = 4;
        return SG_OK;
    }
    if (sa->ss_family == AF_INET6) {
        value->data = (u_char *) &((struct sockaddr_in6 *) sa)->sin6_addr;
        value->len = 16;
        return SG_OK;
    }
    return SG_DECLINED;
}

/* The client's network as one host holds it: the IPv4 address, or the
 * /64 of an IPv6 one ("2001:db8:1:2::/64"), which a home or a host is
 * given whole and sends from at will (privacy addresses).  The key that
 * counts a client as auth_fail_limit does. */
static int
sg_smtp_var_remote_net(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    struct sockaddr_storage  *sa = &s->connection->sockaddr;
    struct sockaddr_in6       net;
    u_char                   *p;
    size_t                    n;

    (void) data;
    if (sa->ss_family != AF_INET6
        || IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *) sa)->sin6_addr))
    {
        return sg_smtp_var_str(value, &s->connection->addr_text);
    }
    memset(&net, 0, sizeof(net));
    net.sin6_family = AF_INET6;
    memcpy(net.sin6_addr.s6_addr,
           ((struct sockaddr_in6 *) sa)->sin6_addr.s6_addr, 8);
    p = sg_pnalloc(s->pool, SG_INET_ADDRSTRLEN + 4);
    if (p == NULL) {
        return SG_ERROR;
    }
    n = sg_sock_ntop((struct sockaddr *) &net, p, SG_INET_ADDRSTRLEN, false);
    memcpy(p + n, "/64", 3);
    value->data = p;
    value->len = n + 3;
    return SG_OK;
}

/* The client's host name as the resolver confirmed it; not set without
 * one (no resolver, no name, DNS failed, or not looked up yet). */
static int
sg_smtp_var_remote_host(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    sg_smtp_client_host(s, value);
    if (value->len && value->data[0] == '[') {
        value->len = 0;                 /* [UNAVAILABLE], [TEMPUNAVAIL] */
        return SG_DECLINED;
    }
    return SG_OK;
}

static int
sg_smtp_var_remote_port(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    return sg_smtp_var_number(s, value, (uint64_t) sg_sockaddr_port(
               (struct sockaddr *) &s->connection->sockaddr));
}

/* The local end of the connection: the accept path records it; a
 * connection that came without it asks the kernel. */
static const struct sockaddr *
sg_smtp_local_addr(sg_smtp_session_t *s)
{
    sg_connection_t  *c = s->connection;
    socklen_t         len = sizeof(c->local_sockaddr);

    if (c->local_socklen == 0) {
        if (getsockname(c->fd, (struct sockaddr *) &c->local_sockaddr, &len)
            == -1)
        {
            sg_log_error(SG_LOG_ERR, s->log, errno, "getsockname() failed");
            return NULL;
        }
        c->local_socklen = len;
    }
    return (struct sockaddr *) &c->local_sockaddr;
}

static int
sg_smtp_var_server_addr(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    const struct sockaddr  *sa = sg_smtp_local_addr(s);
    u_char                 *p;

    (void) data;
    if (sa == NULL) {
        return SG_DECLINED;
    }
    p = sg_pnalloc(s->pool, SG_INET_ADDRSTRLEN);
    if (p == NULL) {
        return SG_ERROR;
    }
    value->data = p;
    value->len = sg_sock_ntop(sa, p, SG_INET_ADDRSTRLEN, false);
    return SG_OK;
}

static int
sg_smtp_var_server_port(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    const struct sockaddr  *sa = sg_smtp_local_addr(s);

    (void) data;
    if (sa == NULL) {
        return SG_DECLINED;
    }
    return sg_smtp_var_number(s, value, (uint64_t) sg_sockaddr_port(sa));
}

static int
sg_smtp_var_server_name(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    return sg_smtp_var_str(value, &s->conf->server_name);
}

static int
sg_smtp_var_auth_user(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    (void) data;
    return sg_smtp_var_str(value, &s->login);
}

static int
sg_smtp_var_auth_method(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    switch (s->auth_mech) {
    case SG_SMTP_AUTH_PLAIN:       sg_str_set(value, "plain"); break;
    case SG_SMTP_AUTH_LOGIN:       sg_str_set(value, "login"); break;
    case SG_SMTP_AUTH_CRAM_MD5:    sg_str_set(value, "cram-md5"); break;
    case SG_SMTP_AUTH_XOAUTH2:     sg_str_set(value, "xoauth2"); break;
    case SG_SMTP_AUTH_OAUTHBEARER: sg_str_set(value, "oauthbearer"); break;
    case SG_SMTP_AUTH_EXTERNAL:    sg_str_set(value, "external"); break;
    case SG_SMTP_AUTH_NONE:        sg_str_set(value, "none"); break;
    default:
        return SG_DECLINED;         /* no AUTH yet */
    }
    return SG_OK;
}

static int
sg_smtp_var_helo(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    (void) data;
    return sg_smtp_var_str(value, &s->helo);
}

static int
sg_smtp_var_session_id(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    return sg_smtp_var_number(s, value, s->connection->number);
}

static int
sg_smtp_var_auth_status(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    switch (s->auth_result) {
    case SG_SMTP_AUTH_RESULT_OK:       sg_str_set(value, "ok"); break;
    case SG_SMTP_AUTH_RESULT_FAILED:   sg_str_set(value, "failed"); break;
    case SG_SMTP_AUTH_RESULT_TEMPFAIL: sg_str_set(value, "tempfail"); break;
    default:
        return SG_DECLINED;         /* no answer yet */
    }
    return SG_OK;
}

static int
sg_smtp_var_auth_failures(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    return sg_smtp_var_number(s, value, s->sasl ? s->sasl->failures : 0);
}

static int
sg_smtp_var_bytes(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    return sg_smtp_var_number(s, value, data ? s->connection->sent
                                             : s->connection->received);
}

static int
sg_smtp_var_messages(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    (void) data;
    return sg_smtp_var_number(s, value, s->messages);
}

/* $mail_from: the sender of the last MAIL the server's checks read
 * (sg_smtp_step()), as the client wrote it; empty for "<>". */
static int
sg_smtp_var_mail_from(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    *value = s->mail_from;
    return SG_OK;
}

/* $rate_limited_messages, $rate_limited_recipients: data is the step. */
static int
sg_smtp_var_limited(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    return sg_smtp_var_number(s, value, s->limited[data]);
}

static int
sg_smtp_var_upstream_addr(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    if (s->upstream == NULL) {
        return SG_DECLINED;
    }
    return sg_smtp_var_str(value, s->upstream);
}

static int
sg_smtp_var_status(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    (void) data;
    if (s->status == NULL) {
        return SG_DECLINED;         /* still running */
    }
    value->data = (u_char *) s->status;
    value->len = strlen(s->status);
    return SG_OK;
}

/* Seconds with milliseconds: "12.345". */
static int
sg_smtp_var_msec_value(sg_smtp_session_t *s, sg_str_t *value, uint64_t ms)
{
    return sg_smtp_var_printf(s, value, "%llu.%03u",
                              (unsigned long long) (ms / 1000),
                              (unsigned) (ms % 1000));
}

static int
sg_smtp_var_session_time(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    (void) data;
    return sg_smtp_var_msec_value(s, value,
        sg_current_msec >= s->start ? sg_current_msec - s->start : 0);
}

/* data 0: $auth_time, 1: $upstream_connect_time; empty until measured. */
static int
sg_smtp_var_timing(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    int64_t  ms = data ? s->upstream_connect_time : s->auth_time;

    if (ms < 0) {
        return SG_DECLINED;
    }
    return sg_smtp_var_msec_value(s, value, (uint64_t) ms);
}

static int
sg_smtp_var_msec(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    struct timespec  ts;

    (void) data;
    (void) clock_gettime(CLOCK_REALTIME, &ts);
    return sg_smtp_var_msec_value(s, value, (uint64_t) ts.tv_sec * 1000
                                            + (uint64_t) ts.tv_nsec / 1000000);
}

/* The local time now: data 0 "2026-12-07T10:15:02+01:00" (ISO 8601),
 * 1 "07/Dec/2026:10:15:02 +0100" (nginx's $time_local). */
static int
sg_smtp_var_time(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    struct tm  tm;
    time_t     now = sg_current_time;
    long       off;
    u_char    *p;
    size_t     n;
    char       sign;

    if (localtime_r(&now, &tm) == NULL) {
        return SG_DECLINED;
    }
    off = tm.tm_gmtoff / 60;
    sign = off < 0 ? '-' : '+';
    off = off < 0 ? -off : off;
    p = sg_pnalloc(s->pool, 40);
    if (p == NULL) {
        return SG_ERROR;
    }
    n = strftime((char *) p, 40, data ? "%d/%b/%Y:%H:%M:%S"
                                      : "%Y-%m-%dT%H:%M:%S", &tm);
    if (n == 0) {
        return SG_DECLINED;
    }
    if (data) {
        n = (size_t) (sg_slprintf(p + n, p + 40, " %c%02ld%02ld", sign,
                                  off / 60, off % 60) - p);
    } else {
        n = (size_t) (sg_slprintf(p + n, p + 40, "%c%02ld:%02ld", sign,
                                  off / 60, off % 60) - p);
    }
    value->data = p;
    value->len = n;
    return SG_OK;
}

static const struct {
    const char               *name;
    sg_smtp_variable_get_pt   get;
    uintptr_t                 data;
    unsigned                  flags;
} sg_smtp_builtins[] = {
    { "remote_addr", sg_smtp_var_remote_addr, 0, 0 },
    /* c->sockaddr: a trusted PROXY header rewrites it before any read */
    { "binary_remote_addr", sg_smtp_var_binary_remote_addr, 0,
      SG_SMTP_VAR_NOCACHE },
    { "remote_net", sg_smtp_var_remote_net, 0, SG_SMTP_VAR_NOCACHE },
    { "remote_port", sg_smtp_var_remote_port, 0, 0 },
    /* looked up beside the session: known by AUTH */
    { "remote_host", sg_smtp_var_remote_host, 0, SG_SMTP_VAR_NOCACHE },
    { "server_addr", sg_smtp_var_server_addr, 0, 0 },
    { "server_port", sg_smtp_var_server_port, 0, 0 },
    /* SNI after STARTTLS may pick another server. */
    { "server_name", sg_smtp_var_server_name, 0, SG_SMTP_VAR_NOCACHE },
    { "auth_user", sg_smtp_var_auth_user, 0,
      SG_SMTP_VAR_NOCACHE | SG_SMTP_VAR_LOGIN },
    { "auth_method", sg_smtp_var_auth_method, 0,
      SG_SMTP_VAR_NOCACHE | SG_SMTP_VAR_LOGIN },
    { "helo", sg_smtp_var_helo, 0, SG_SMTP_VAR_NOCACHE },
    { "session_id", sg_smtp_var_session_id, 0, 0 },
    { "auth_status", sg_smtp_var_auth_status, 0, SG_SMTP_VAR_NOCACHE },
    { "auth_failures", sg_smtp_var_auth_failures, 0, SG_SMTP_VAR_NOCACHE },
    { "bytes_received", sg_smtp_var_bytes, 0, SG_SMTP_VAR_NOCACHE },
    { "bytes_sent", sg_smtp_var_bytes, 1, SG_SMTP_VAR_NOCACHE },
    { "messages", sg_smtp_var_messages, 0, SG_SMTP_VAR_NOCACHE },
    { "mail_from", sg_smtp_var_mail_from, 0, SG_SMTP_VAR_NOCACHE },
    { "rate_limited_messages", sg_smtp_var_limited, SG_SMTP_STEP_MAIL,
      SG_SMTP_VAR_NOCACHE },
    { "rate_limited_recipients", sg_smtp_var_limited, SG_SMTP_STEP_RCPT,
      SG_SMTP_VAR_NOCACHE },
    { "upstream_addr", sg_smtp_var_upstream_addr, 0, SG_SMTP_VAR_NOCACHE },
    { "status", sg_smtp_var_status, 0, SG_SMTP_VAR_NOCACHE },
    { "session_time", sg_smtp_var_session_time, 0, SG_SMTP_VAR_NOCACHE },
    { "auth_time", sg_smtp_var_timing, 0, SG_SMTP_VAR_NOCACHE },
    { "upstream_connect_time", sg_smtp_var_timing, 1, SG_SMTP_VAR_NOCACHE },
    { "msec", sg_smtp_var_msec, 0, SG_SMTP_VAR_NOCACHE },
    { "time_iso8601", sg_smtp_var_time, 0, SG_SMTP_VAR_NOCACHE },
    { "time_local", sg_smtp_var_time, 1, SG_SMTP_VAR_NOCACHE },
};

static void
sg_smtp_builtin_variables(sg_conf_t *cf, sg_smtp_variables_t *vs)
{
    sg_str_t  name;
    size_t    i;

    for (i = 0; i < sg_nelems(sg_smtp_builtins); i++) {
        name.data = (u_char *) sg_smtp_builtins[i].name;
        name.len = strlen(sg_smtp_builtins[i].name);
        if (sg_smtp_var_define(cf, vs, &name, sg_smtp_builtins[i].get,
                               sg_smtp_builtins[i].data,
                               sg_smtp_builtins[i].flags, true) != SG_OK)
        {
            return;
        }
    }
}
