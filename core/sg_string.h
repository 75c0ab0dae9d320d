/*
 * sg_string.h: length-counted string views and the small string helpers
 * the rest of the code needs.  An sg_str_t never owns its bytes and is
 * never assumed to be NUL-terminated: wire data is not.
 */
#ifndef SG_STRING_H
#define SG_STRING_H

typedef struct {
    size_t   len;
    u_char  *data;
} sg_str_t;

#define sg_string(lit)      { sizeof(lit) - 1, (u_char *) (lit) }
#define sg_null_string      { 0, NULL }
#define sg_str_set(s, lit)                                                   \
    do { (s)->len = sizeof(lit) - 1; (s)->data = (u_char *) (lit); } while (0)

#define SG_STR_ARG(s)       (int) (s)->len, (const char *) (s)->data

#define sg_tolower(c)  ((u_char) (((c) >= 'A' && (c) <= 'Z') ? ((c) | 0x20) : (c)))
#define sg_toupper(c)  ((u_char) (((c) >= 'a' && (c) <= 'z') ? ((c) & ~0x20) : (c)))

/* ASCII-only, locale-independent comparisons. */
int sg_strncasecmp(const u_char *a, const u_char *b, size_t n);
bool sg_str_eq(const sg_str_t *a, const char *lit);       /* exact */
bool sg_str_caseeq(const sg_str_t *a, const char *lit);   /* ASCII case */
bool sg_str_has_prefix(const sg_str_t *s, const char *prefix);  /* exact */

/* Copy into a new NUL-terminated string from the pool; NULL on ENOMEM. */
u_char *sg_pstrdup(sg_pool_t *pool, const sg_str_t *src);

/*
 * Bounded formatting: writes at most (last - buf) bytes, never a NUL, and
 * returns the position after the last byte written (never past last).
 * Print an sg_str_t with "%.*s" and SG_STR_ARG(s).
 */
u_char *sg_slprintf(u_char *buf, u_char *last, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
u_char *sg_vslprintf(u_char *buf, u_char *last, const char *fmt,
    va_list args) __attribute__((format(printf, 3, 0)));

/*
 * Strict parsers of configuration values: each returns SG_ERROR for an
 * empty, signed, non-numeric or overflowing value.
 *   sg_parse_int:  decimal, 0 .. INT64_MAX
 *   sg_parse_size: decimal with optional k/K or m/M or g/G suffix
 *   sg_parse_time: nginx time syntax ("500ms", "30s", "1h 30m", "2d");
 *                  a bare number means seconds; result in milliseconds
 */
int sg_parse_int(const sg_str_t *s, int64_t *out);
int sg_parse_size(const sg_str_t *s, int64_t *out);
int sg_parse_time(const sg_str_t *s, int64_t *out_ms);

/*
 * Escape bytes as MARK followed by two upper-case hex digits: a byte b
 * is escaped when bit b of the 256-bit table is set (table[b >> 5] &
 * (1 << (b & 31))).  Returns the escaped length; with dst == NULL only
 * computes it.  xtext (RFC 3461) and nginx's auth_http escaping are two
 * tables over this.
 */
size_t sg_escape_hex(u_char *dst, const sg_str_t *src, u_char mark,
    const uint32_t table[8]);
/* The value of one hex digit (either case), or -1. */
int sg_hex_digit(u_char c);

/* FNV-1a: for in-memory tables keyed by names and ids, not for
 * anything an attacker could aim collisions at across a trust line. */
uint32_t sg_hash(const u_char *p, size_t n);

/* SipHash-2-4 of p[0..n) under a 16-byte key. */
uint64_t sg_siphash(const u_char key[16], const u_char *p, size_t n);

/* For tables in shared memory keyed by what clients choose (their
 * addresses, user names): SipHash under a secret drawn once when the
 * master starts, which every worker inherits, so a client cannot aim
 * its key at another's.  sg_keyed_hash_init() draws the secret:
 * SG_ERROR (errno) when the system gives no randomness. */
int sg_keyed_hash_init(void);
uint64_t sg_keyed_hash(const u_char *p, size_t n);

/* Wipe a secret so that the compiler cannot drop the store. */
void sg_wipe(void *p, size_t n);

#endif /* SG_STRING_H */
