/*
 * sg_regex.h: PCRE2 regular expressions, compiled once when the
 * configuration loads (with JIT unless "pcre_jit off") and matched
 * on session paths without allocation beyond the match data made at
 * compile time.  Patterns are case-sensitive unless written with (?i) or
 * compiled with SG_REGEX_CASELESS.
 */
#ifndef SG_REGEX_H
#define SG_REGEX_H

typedef struct sg_regex_s  sg_regex_t;

#define SG_REGEX_CASELESS  0x01      /* ASCII and Unicode case folded */

/* NULL on error, with a message ("missing ) at offset 3") in err. */
sg_regex_t *sg_regex_compile(sg_pool_t *pool, const sg_str_t *pattern,
    char *err, size_t errlen);
/* The same with SG_REGEX_* options. */
sg_regex_t *sg_regex_compile_flags(sg_pool_t *pool, const sg_str_t *pattern,
    unsigned flags, char *err, size_t errlen);

/* Whether PCRE2 can JIT-compile here. */
bool sg_regex_jit_available(void);
/* JIT-compile (jit true) or leave interpreted every regex compiled since
 * the last call: once the configuration has been read. */
void sg_regex_jit_pending(bool jit, sg_log_t *log);

/* How many capturing groups the pattern has. */
size_t sg_regex_captures(const sg_regex_t *re);
/* The number of the group named name ("(?<name>...)"), or -1. */
int sg_regex_named(const sg_regex_t *re, const sg_str_t *name);

/*
 * Match s against re.  Returns the number of captured groups + 1 when it
 * matches (captures in caps[] as start/end offsets pairs, up to ncaps
 * pairs; a group that took no part has both offsets SG_REGEX_UNSET), 0
 * when it does not, SG_ERROR on a matching error (a limit).
 */
#define SG_REGEX_UNSET  ((size_t) -1)

int sg_regex_exec(sg_regex_t *re, const sg_str_t *s, size_t *caps,
    size_t ncaps);

#endif /* SG_REGEX_H */
