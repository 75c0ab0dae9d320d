/*
 * sg_regex.h: PCRE2 regular expressions, compiled once when the
 * configuration loads (with JIT where the platform has it) and matched
 * on session paths without allocation beyond the match data made at
 * compile time.  Patterns are case-sensitive unless written with (?i).
 */
#ifndef SG_REGEX_H
#define SG_REGEX_H

typedef struct sg_regex_s  sg_regex_t;

/* NULL on error, with a message ("missing ) at offset 3") in err. */
sg_regex_t *sg_regex_compile(sg_pool_t *pool, const sg_str_t *pattern,
    char *err, size_t errlen);

/*
 * Match s against re.  Returns the number of captured groups + 1 when it
 * matches (captures in caps[] as start/end offsets pairs, up to ncaps
 * pairs), 0 when it does not, SG_ERROR on a matching error (a limit).
 */
int sg_regex_exec(sg_regex_t *re, const sg_str_t *s, size_t *caps,
    size_t ncaps);

#endif /* SG_REGEX_H */
