/*
 * sg_regex.c: PCRE2 wrapper (see sg_regex.h).  Compiled code and match
 * data belong to the configuration cycle's pool and are released with
 * it.  Match limits keep a hostile subject from costing unbounded time.
 * A regex is JIT-compiled once the whole configuration is read, since
 * pcre_jit may come after the map or server_name that uses one.
 */
#include "sg_core.h"
#include <pcre2.h>

#define SG_REGEX_MATCH_LIMIT  100000

struct sg_regex_s {
    pcre2_code          *code;
    pcre2_match_data    *md;
    pcre2_match_context *mctx;
    sg_str_t             pattern;
    sg_regex_t          *next_pending;
};

/* Compiled since the configuration being read began: sg_regex_jit_pending
 * takes them.  A configuration that fails frees its regexes, which leave
 * the list as they go. */
static sg_regex_t  *sg_regex_pending;

static void
sg_regex_cleanup(void *data)
{
    sg_regex_t  *re = data, **pp;

    for (pp = &sg_regex_pending; *pp; pp = &(*pp)->next_pending) {
        if (*pp == re) {
            *pp = re->next_pending;
            break;
        }
    }
    pcre2_match_data_free(re->md);
    pcre2_match_context_free(re->mctx);
    pcre2_code_free(re->code);
}

sg_regex_t *
sg_regex_compile(sg_pool_t *pool, const sg_str_t *pattern, char *err,
    size_t errlen)
{
    return sg_regex_compile_flags(pool, pattern, 0, err, errlen);
}

sg_regex_t *
sg_regex_compile_flags(sg_pool_t *pool, const sg_str_t *pattern,
    unsigned flags, char *err, size_t errlen)
{
    sg_regex_t  *re;
    PCRE2_SIZE   off;
    int          code;
    PCRE2_UCHAR  msg[256];

    re = sg_pcalloc(pool, sizeof(sg_regex_t));
    if (re == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    re->pattern = *pattern;
    re->code = pcre2_compile((PCRE2_SPTR) pattern->data, pattern->len,
                             (flags & SG_REGEX_CASELESS) ? PCRE2_CASELESS
                                                         : 0,
                             &code, &off, NULL);
    if (re->code == NULL) {
        pcre2_get_error_message(code, msg, sizeof(msg));
        snprintf(err, errlen, "%s at offset %zu", (char *) msg, (size_t) off);
        return NULL;
    }
    re->md = pcre2_match_data_create_from_pattern(re->code, NULL);
    re->mctx = pcre2_match_context_create(NULL);
    if (re->md == NULL || re->mctx == NULL) {
        pcre2_match_data_free(re->md);
        pcre2_match_context_free(re->mctx);
        pcre2_code_free(re->code);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pcre2_set_match_limit(re->mctx, SG_REGEX_MATCH_LIMIT);
    if (sg_pool_cleanup_add(pool, sg_regex_cleanup, re) != SG_OK) {
        sg_regex_cleanup(re);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    re->next_pending = sg_regex_pending;
    sg_regex_pending = re;
    return re;
}

bool
sg_regex_jit_available(void)
{
    uint32_t  jit = 0;

    return pcre2_config(PCRE2_CONFIG_JIT, &jit) >= 0 && jit == 1;
}

void
sg_regex_jit_pending(bool jit, sg_log_t *log)
{
    sg_regex_t  *re;
    int          rc;

    while ((re = sg_regex_pending) != NULL) {
        sg_regex_pending = re->next_pending;
        re->next_pending = NULL;
        if (!jit || !sg_regex_jit_available()) {
            continue;
        }
        /* JIT only makes matching faster: the interpreter stays. */
        rc = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
        if (rc != 0) {
            sg_log_error(SG_LOG_INFO, log, 0, "pcre2_jit_compile() failed: "
                         "%d in \"%.*s\", ignored", rc,
                         SG_STR_ARG(&re->pattern));
        }
    }
}

size_t
sg_regex_captures(const sg_regex_t *re)
{
    uint32_t  n = 0;

    (void) pcre2_pattern_info(re->code, PCRE2_INFO_CAPTURECOUNT, &n);
    return n;
}

int
sg_regex_named(const sg_regex_t *re, const sg_str_t *name)
{
    char  buf[64];
    int   n;

    if (name->len == 0 || name->len >= sizeof(buf)) {
        return -1;                    /* PCRE2 names are at most 32 */
    }
    memcpy(buf, name->data, name->len);
    buf[name->len] = '\0';
    n = pcre2_substring_number_from_name(re->code, (PCRE2_SPTR) buf);
    return n > 0 ? n : -1;
}

int
sg_regex_exec(sg_regex_t *re, const sg_str_t *s, size_t *caps, size_t ncaps)
{
    PCRE2_SIZE  *ov;
    uint32_t     n, i;
    int          rc;

    rc = pcre2_match(re->code, (PCRE2_SPTR) (s->data ? s->data
                                                      : (u_char *) ""),
                     s->len, 0, 0, re->md, re->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) {
        return 0;
    }
    if (rc < 0) {
        return SG_ERROR;
    }
    if (caps) {
        ov = pcre2_get_ovector_pointer(re->md);
        n = pcre2_get_ovector_count(re->md);
        for (i = 0; i < n && i < ncaps; i++) {
            caps[2 * i] = ov[2 * i];
            caps[2 * i + 1] = ov[2 * i + 1];
        }
    }
    return rc;
}
