/*
 * sg_map.c: "map $source $result { ... }" in the mail {} block, as in
 * nginx's stream and http map modules.
 *
 * Owns each map's tables (exact keys, with "hostnames" also wildcard
 * keys, then regexes in the order written, then the default) and the
 * getter of its result variable.  The source is a complex value read
 * from the session; the first entry that matches gives the result, a
 * complex value too, which may use the captures of the matching regex
 * and other variables.  The result is computed once per session unless
 * something it reads may change (NOCACHE) or the map says "volatile".
 * Refuses, with file:line: a duplicate key or default, a regex PCRE2
 * will not compile, a capture the regex does not have, a malformed
 * wildcard, a result naming a variable that exists, and parameters
 * that are not a key and a value.
 */
#include "sg_smtp.h"
#include "sg_map.h"

typedef struct {
    sg_regex_t               *regex;
    sg_str_t                  pattern;    /* as written, for logs */
    sg_smtp_complex_value_t  *value;
} sg_map_regex_t;

typedef struct {
    sg_smtp_complex_value_t  *source;
    sg_str_t                  name;       /* the result, without '$' */
    size_t                    index;      /* the result's variable */

    sg_map_key_t             *exact;      /* sorted */
    size_t                    nexact;
    sg_map_key_t             *head;       /* ".example.org" */
    size_t                    nhead;
    sg_map_key_t             *tail;       /* "mail." */
    size_t                    ntail;
    sg_map_regex_t           *regexes;    /* in order */
    size_t                    nregexes;
    sg_smtp_complex_value_t  *deflt;      /* NULL: empty */

    unsigned                  hostnames:1;
    unsigned                  volatil:1;
} sg_map_t;

/* While the block is parsed. */
typedef struct {
    sg_map_t                 *map;
    sg_array_t                exact;      /* sg_map_key_t */
    sg_array_t                head;
    sg_array_t                tail;
    sg_array_t                regexes;    /* sg_map_regex_t */
    size_t                    order;
    sg_str_t                  default_file;
    size_t                    default_line;
} sg_map_conf_ctx_t;

static char *sg_map_block(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);

static const sg_command_t  sg_map_commands[] = {
    { "map", SG_MAIL_MAIN_CONF | SG_CONF_BLOCK | SG_CONF_TAKE2,
      sg_map_block, SG_MAIL_MAIN_CONF_OFFSET, 0, NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_map_module_ctx = {
    NULL, NULL, NULL, NULL, NULL
};

sg_module_t  sg_map_module = {
    .name = "map",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_map_module_ctx,
    .commands = sg_map_commands,
};

/* Run time. */

/* The entry for key, or NULL; captures are filled when a regex
 * matched. */
static sg_smtp_complex_value_t *
sg_map_lookup(sg_smtp_session_t *s, const sg_map_t *map, const sg_str_t *key,
    size_t *caps, sg_smtp_captures_t *captures)
{
    const sg_map_key_t  *k;
    size_t               i;
    int                  rc;

    k = sg_map_find(map->exact, map->nexact, key->data, key->len);
    if (k == NULL && map->nhead) {
        k = sg_map_find_head(map->head, map->nhead, key);
    }
    if (k == NULL && map->ntail) {
        k = sg_map_find_tail(map->tail, map->ntail, key);
    }
    if (k) {
        return k->value;
    }
    for (i = 0; i < map->nregexes; i++) {
        rc = sg_regex_exec(map->regexes[i].regex, key, caps,
                           SG_SMTP_CAPTURES_MAX);
        if (rc == 0) {
            continue;
        }
        if (rc < 0) {
            sg_log_error(SG_LOG_ERR, s->log, 0, "map \"$%.*s\": matching "
                         "\"%.*s\" against the regex \"%.*s\" failed (match "
                         "limit), trying the next entry",
                         SG_STR_ARG(&map->name), (int) sg_min(key->len, 200),
                         (char *) key->data,
                         SG_STR_ARG(&map->regexes[i].pattern));
            continue;
        }
        captures->subject = *key;
        captures->caps = caps;
        captures->n = (size_t) sg_min(rc, SG_SMTP_CAPTURES_MAX);
        return map->regexes[i].value;
    }
    return map->deflt;
}

static int
sg_map_get(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    const sg_map_t           *map = (const sg_map_t *) data;
    sg_smtp_complex_value_t  *cv;
    sg_smtp_captures_t        captures;
    size_t                    caps[2 * SG_SMTP_CAPTURES_MAX];
    sg_str_t                  key;

    if (sg_smtp_complex_value(s, map->source, &key) != SG_OK) {
        return SG_DECLINED;
    }
    if (map->hostnames && key.len && key.data[key.len - 1] == '.') {
        key.len--;
    }
    memset(&captures, 0, sizeof(captures));
    cv = sg_map_lookup(s, map, &key, caps, &captures);
    if (cv == NULL) {
        return SG_DECLINED;
    }
    if (sg_smtp_complex_value_captures(s, cv, &captures, value) != SG_OK) {
        return SG_DECLINED;
    }
    return value->len ? SG_OK : SG_DECLINED;
}

/* The block. */

static char *
sg_map_value(sg_conf_t *cf, sg_map_conf_ctx_t *ctx, const sg_str_t *v,
    const sg_regex_t *re, sg_smtp_complex_value_t **out)
{
    *out = sg_smtp_compile_complex_value_re(cf, v, re);
    if (*out == NULL) {
        return SG_CONF_ERROR;
    }
    return sg_smtp_complex_value_depends(cf, ctx->map->index, *out) == SG_OK
           ? SG_CONF_OK : SG_CONF_ERROR;
}

static char *
sg_map_add_regex(sg_conf_t *cf, sg_map_conf_ctx_t *ctx, sg_str_t *key,
    const sg_str_t *value)
{
    sg_map_regex_t  *r;
    unsigned         flags = 0;
    char             err[256];

    key->data++;                          /* "~" */
    key->len--;
    if (key->len && key->data[0] == '*') {
        flags = SG_REGEX_CASELESS;        /* "~*" */
        key->data++;
        key->len--;
    }
    if (key->len == 0) {
        return sg_conf_error(cf, 0, "empty regex in map \"$%.*s\"",
                             SG_STR_ARG(&ctx->map->name));
    }
    r = sg_array_push(&ctx->regexes);
    if (r == NULL) {
        return SG_CONF_ERROR;
    }
    r->pattern = *key;
    r->regex = sg_regex_compile_flags(cf->pool, key, flags, err,
                                      sizeof(err));
    if (r->regex == NULL) {
        return sg_conf_error(cf, 0, "invalid regex \"%.*s\" in map "
                             "\"$%.*s\": %s", SG_STR_ARG(key),
                             SG_STR_ARG(&ctx->map->name), err);
    }
    return sg_map_value(cf, ctx, value, r->regex, &r->value);
}

static char *
sg_map_add_key(sg_conf_t *cf, sg_map_conf_ctx_t *ctx, sg_array_t *table,
    const sg_str_t *key, sg_smtp_complex_value_t *value)
{
    sg_map_key_t  *k;

    k = sg_array_push(table);
    if (k == NULL) {
        return SG_CONF_ERROR;
    }
    k->key = *key;
    k->value = value;
    k->file = cf->file->name;
    k->line = sg_conf_line(cf);
    k->order = ctx->order++;
    return SG_CONF_OK;
}

static char *
sg_map_add_hostname(sg_conf_t *cf, sg_map_conf_ctx_t *ctx, sg_str_t *key,
    sg_smtp_complex_value_t *value)
{
    sg_str_t  written = *key, exact;
    bool      also_exact;

    switch (sg_map_hostname_key(key, &also_exact)) {
    case SG_MAP_KEY_HEAD:
        if (also_exact) {
            exact.data = key->data + 1;
            exact.len = key->len - 1;
            if (sg_map_add_key(cf, ctx, &ctx->exact, &exact, value)
                != SG_CONF_OK)
            {
                return SG_CONF_ERROR;
            }
        }
        return sg_map_add_key(cf, ctx, &ctx->head, key, value);
    case SG_MAP_KEY_TAIL:
        return sg_map_add_key(cf, ctx, &ctx->tail, key, value);
    case SG_MAP_KEY_EXACT:
        return sg_map_add_key(cf, ctx, &ctx->exact, key, value);
    default:
        return sg_conf_error(cf, 0, "invalid key \"%.*s\" in a hostnames "
                             "map: a wildcard is \"*.example.org\", "
                             "\".example.org\" or \"mail.*\"",
                             SG_STR_ARG(&written));
    }
}

static sg_command_t *
sg_map_include_command(void)
{
    const sg_command_t  *cmd;

    for (cmd = sg_core_module.commands; cmd->name; cmd++) {
        if (strcmp(cmd->name, "include") == 0) {
            return (sg_command_t *) cmd;
        }
    }
    return NULL;
}

static char *
sg_map_bad_params(sg_conf_t *cf, sg_map_conf_ctx_t *ctx)
{
    return sg_conf_error(cf, 0, "invalid number of parameters in map "
                         "\"$%.*s\": expected a key and a value, "
                         "\"default value\", \"hostnames\", \"volatile\" "
                         "or \"include file\"", SG_STR_ARG(&ctx->map->name));
}

static char *
sg_map_flag(sg_conf_t *cf, sg_map_conf_ctx_t *ctx, const sg_str_t *word)
{
    if (sg_str_eq(word, "hostnames")) {
        if (ctx->exact.nelts || ctx->regexes.nelts) {
            return sg_conf_error(cf, 0, "\"hostnames\" must come before "
                                 "the keys of map \"$%.*s\"",
                                 SG_STR_ARG(&ctx->map->name));
        }
        ctx->map->hostnames = 1;
        return SG_CONF_OK;
    }
    if (sg_str_eq(word, "volatile")) {
        ctx->map->volatil = 1;
        return SG_CONF_OK;
    }
    return sg_map_bad_params(cf, ctx);
}

/* One line of the block: cf->handler. */
static char *
sg_map_entry(sg_conf_t *cf, const sg_command_t *dummy, void *conf)
{
    sg_map_conf_ctx_t        *ctx = conf;
    sg_str_t                 *value = cf->args->elts, key;
    sg_smtp_complex_value_t  *cv;
    const sg_command_t       *include;

    (void) dummy;
    if (cf->args->nelts == 1) {
        return sg_map_flag(cf, ctx, &value[0]);
    }
    if (cf->args->nelts != 2) {
        return sg_map_bad_params(cf, ctx);
    }
    key = value[0];
    if (sg_str_eq(&key, "include")) {
        include = sg_map_include_command();
        return include ? include->set(cf, include, NULL) : SG_CONF_ERROR;
    }
    if (sg_str_eq(&key, "default")) {
        if (ctx->map->deflt) {
            return sg_conf_error(cf, 0, "duplicate default in map "
                                 "\"$%.*s\" (first at %.*s:%zu)",
                                 SG_STR_ARG(&ctx->map->name),
                                 SG_STR_ARG(&ctx->default_file),
                                 ctx->default_line);
        }
        ctx->default_file = cf->file->name;
        ctx->default_line = sg_conf_line(cf);
        return sg_map_value(cf, ctx, &value[1], NULL, &ctx->map->deflt);
    }
    if (key.len && key.data[0] == '~') {
        return sg_map_add_regex(cf, ctx, &key, &value[1]);
    }
    if (key.len && key.data[0] == '\\') {
        key.data++;                  /* "\default": the word itself */
        key.len--;
    }
    if (sg_map_value(cf, ctx, &value[1], NULL, &cv) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    sg_map_lowercase(&key);
    if (ctx->map->hostnames) {
        return sg_map_add_hostname(cf, ctx, &key, cv);
    }
    return sg_map_add_key(cf, ctx, &ctx->exact, &key, cv);
}

/* Sort a table and refuse a key written twice. */
static char *
sg_map_table(sg_conf_t *cf, sg_map_conf_ctx_t *ctx, sg_array_t *a,
    sg_map_key_t **keys, size_t *n)
{
    sg_map_key_t  *k = a->elts;
    ssize_t        dup;

    sg_map_sort(k, a->nelts);
    dup = sg_map_duplicate(k, a->nelts);
    if (dup >= 0) {
        return sg_conf_error_at(cf, &k[dup].file, k[dup].line, "duplicate "
                                "key \"%.*s\" in map \"$%.*s\"",
                                SG_STR_ARG(&k[dup].key),
                                SG_STR_ARG(&ctx->map->name));
    }
    *keys = k;
    *n = a->nelts;
    return SG_CONF_OK;
}

static char *
sg_map_finish(sg_conf_t *cf, sg_map_conf_ctx_t *ctx)
{
    sg_map_t  *map = ctx->map;

    if (sg_map_table(cf, ctx, &ctx->exact, &map->exact, &map->nexact)
            != SG_CONF_OK
        || sg_map_table(cf, ctx, &ctx->head, &map->head, &map->nhead)
            != SG_CONF_OK
        || sg_map_table(cf, ctx, &ctx->tail, &map->tail, &map->ntail)
            != SG_CONF_OK)
    {
        return SG_CONF_ERROR;
    }
    map->regexes = ctx->regexes.elts;
    map->nregexes = ctx->regexes.nelts;
    if (map->volatil
        && sg_smtp_variable_flags(cf, map->index, SG_SMTP_VAR_NOCACHE)
           != SG_OK)
    {
        return SG_CONF_ERROR;
    }
    return SG_CONF_OK;
}

/* "map $source $result": the result is defined before the block is
 * read, so that an entry naming it is seen as the cycle it is. */
static char *
sg_map_start(sg_conf_t *cf, sg_map_conf_ctx_t *ctx, const sg_str_t *source,
    const sg_str_t *result)
{
    sg_map_t  *map;
    ssize_t    index;

    map = sg_pcalloc(cf->pool, sizeof(sg_map_t));
    if (map == NULL) {
        return SG_CONF_ERROR;
    }
    ctx->map = map;
    map->source = sg_smtp_compile_complex_value(cf, source);
    if (map->source == NULL) {
        return SG_CONF_ERROR;
    }
    if (sg_smtp_complex_value_is_static(map->source)) {
        return sg_conf_error(cf, 0, "the source \"%.*s\" of a map has no "
                             "variable in it: write one such as "
                             "$auth_user", SG_STR_ARG(source));
    }
    if (result->len < 2 || result->data[0] != '$') {
        return sg_conf_error(cf, 0, "invalid map result \"%.*s\": a "
                             "variable name such as $backend is expected",
                             SG_STR_ARG(result));
    }
    map->name.data = result->data + 1;
    map->name.len = result->len - 1;
    if (sg_smtp_add_variable(cf, &map->name, sg_map_get, (uintptr_t) map, 0)
        != SG_OK)
    {
        return SG_CONF_ERROR;
    }
    index = sg_smtp_variable_index(cf, &map->name);
    if (index < 0) {
        return SG_CONF_ERROR;
    }
    map->index = (size_t) index;
    if (sg_smtp_complex_value_depends(cf, map->index, map->source) != SG_OK)
    {
        return SG_CONF_ERROR;
    }
    if (sg_array_init(&ctx->exact, cf->pool, 16, sizeof(sg_map_key_t))
            != SG_OK
        || sg_array_init(&ctx->head, cf->pool, 4, sizeof(sg_map_key_t))
            != SG_OK
        || sg_array_init(&ctx->tail, cf->pool, 4, sizeof(sg_map_key_t))
            != SG_OK
        || sg_array_init(&ctx->regexes, cf->pool, 4, sizeof(sg_map_regex_t))
            != SG_OK)
    {
        return SG_CONF_ERROR;
    }
    return SG_CONF_OK;
}

static char *
sg_map_block(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_str_t            *value = cf->args->elts, source, result;
    sg_map_conf_ctx_t    ctx;
    sg_conf_set_pt       prev_handler = cf->handler;
    void                *prev_conf = cf->handler_conf;
    char                *rv;

    (void) cmd;
    (void) conf;
    /* cf->args is reused by every line of the block. */
    source = value[1];
    result = value[2];
    memset(&ctx, 0, sizeof(ctx));
    if (sg_map_start(cf, &ctx, &source, &result) != SG_CONF_OK) {
        return SG_CONF_ERROR;
    }
    cf->handler = sg_map_entry;
    cf->handler_conf = &ctx;
    rv = sg_conf_parse(cf, NULL);
    cf->handler = prev_handler;
    cf->handler_conf = prev_conf;
    if (rv != SG_CONF_OK) {
        return rv;
    }
    return sg_map_finish(cf, &ctx);
}
