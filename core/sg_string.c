/*
 * sg_string.c: string views, bounded formatting and strict value parsers
 * (see sg_string.h).  Everything is ASCII and locale-independent.
 */
#include "sg_core.h"
#include <sys/random.h>

int
sg_strncasecmp(const u_char *a, const u_char *b, size_t n)
{
    u_char  c1, c2;

    while (n--) {
        c1 = sg_tolower(*a);
        c2 = sg_tolower(*b);
        if (c1 != c2) {
            return c1 - c2;
        }
        a++;
        b++;
    }
    return 0;
}

bool
sg_str_eq(const sg_str_t *a, const char *lit)
{
    size_t  n = strlen(lit);

    return a->len == n && memcmp(a->data, lit, n) == 0;
}

bool
sg_str_has_prefix(const sg_str_t *s, const char *prefix)
{
    size_t  n = strlen(prefix);

    return s->len >= n && memcmp(s->data, prefix, n) == 0;
}

bool
sg_str_caseeq(const sg_str_t *a, const char *lit)
{
    size_t  n = strlen(lit);

    return a->len == n
           && sg_strncasecmp(a->data, (const u_char *) lit, n) == 0;
}

u_char *
sg_pstrdup(sg_pool_t *pool, const sg_str_t *src)
{
    u_char  *p;

    p = sg_pnalloc(pool, src->len + 1);
    if (p == NULL) {
        return NULL;
    }
    if (src->len) {
        memcpy(p, src->data, src->len);
    }
    p[src->len] = '\0';
    return p;
}

u_char *
sg_vslprintf(u_char *buf, u_char *last, const char *fmt, va_list args)
{
    size_t  room;
    int     n;
    char    tmp[1];

    if (buf >= last) {
        /* Still consume nothing; keep vsnprintf well-defined. */
        (void) vsnprintf(tmp, 0, fmt, args);
        return buf;
    }
    room = (size_t) (last - buf);
    /* vsnprintf writes a NUL; we want every byte of room usable, so format
     * into room + 1 when the caller's buffer allows it is not knowable;
     * accept losing the final byte to the terminator. */
    n = vsnprintf((char *) buf, room, fmt, args);
    if (n < 0) {
        return buf;
    }
    if ((size_t) n >= room) {
        return last - 1 > buf ? last - 1 : buf;
    }
    return buf + n;
}

u_char *
sg_slprintf(u_char *buf, u_char *last, const char *fmt, ...)
{
    va_list  args;
    u_char  *p;

    va_start(args, fmt);
    p = sg_vslprintf(buf, last, fmt, args);
    va_end(args);
    return p;
}

int
sg_parse_int(const sg_str_t *s, int64_t *out)
{
    int64_t  v = 0;
    size_t   i;

    if (s->len == 0) {
        return SG_ERROR;
    }
    for (i = 0; i < s->len; i++) {
        if (s->data[i] < '0' || s->data[i] > '9') {
            return SG_ERROR;
        }
        if (v > (INT64_MAX - (s->data[i] - '0')) / 10) {
            return SG_ERROR;
        }
        v = v * 10 + (s->data[i] - '0');
    }
    *out = v;
    return SG_OK;
}

int
sg_parse_size(const sg_str_t *s, int64_t *out)
{
    sg_str_t  num = *s;
    int64_t   scale = 1, v;

    if (num.len == 0) {
        return SG_ERROR;
    }
    switch (num.data[num.len - 1]) {
    case 'k': case 'K':
        scale = 1024;
        num.len--;
        break;
    case 'm': case 'M':
        scale = 1024 * 1024;
        num.len--;
        break;
    case 'g': case 'G':
        scale = 1024 * 1024 * 1024;
        num.len--;
        break;
    }
    if (sg_parse_int(&num, &v) != SG_OK || v > INT64_MAX / scale) {
        return SG_ERROR;
    }
    *out = v * scale;
    return SG_OK;
}

static int64_t
sg_time_unit(const u_char **pp, const u_char *end)
{
    const u_char  *p = *pp;

    if (p == end) {
        return 1000;                       /* bare number: seconds */
    }
    if (end - p >= 2 && p[0] == 'm' && p[1] == 's') {
        *pp = p + 2;
        return 1;
    }
    *pp = p + 1;
    switch (*p) {
    case 's': return 1000;
    case 'm': return 60 * 1000;
    case 'h': return 3600 * 1000;
    case 'd': return 86400 * 1000LL;
    case 'w': return 7 * 86400 * 1000LL;
    case ' ': *pp = p; return 1000;
    }
    return -1;
}

int
sg_parse_time(const sg_str_t *s, int64_t *out_ms)
{
    const u_char  *p = s->data, *end = s->data + s->len;
    int64_t        total = 0, v, unit;
    bool           any = false;

    while (p < end) {
        while (p < end && *p == ' ') {
            p++;
        }
        if (p == end) {
            break;
        }
        if (*p < '0' || *p > '9') {
            return SG_ERROR;
        }
        v = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (v > (INT64_MAX / 1000 - 9) / 10) {
                return SG_ERROR;
            }
            v = v * 10 + (*p++ - '0');
        }
        unit = sg_time_unit(&p, end);
        if (unit < 0 || v > INT64_MAX / unit
            || total > INT64_MAX - v * unit)
        {
            return SG_ERROR;
        }
        total += v * unit;
        any = true;
    }
    if (!any) {
        return SG_ERROR;
    }
    *out_ms = total;
    return SG_OK;
}

int
sg_hex_digit(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

size_t
sg_escape_hex(u_char *dst, const sg_str_t *src, u_char mark,
    const uint32_t table[8])
{
    static const u_char  hex[] = "0123456789ABCDEF";
    size_t               i, n = 0;
    u_char               c;

    for (i = 0; i < src->len; i++) {
        c = src->data[i];
        if (!(table[c >> 5] & (1u << (c & 31)))) {
            if (dst != NULL) {
                dst[n] = c;
            }
            n++;
            continue;
        }
        if (dst != NULL) {
            dst[n] = mark;
            dst[n + 1] = hex[c >> 4];
            dst[n + 2] = hex[c & 0x0f];
        }
        n += 3;
    }
    return n;
}

uint32_t
sg_hash(const u_char *p, size_t n)
{
    uint32_t  h = 2166136261u;

    while (n--) {
        h = (h ^ *p++) * 16777619u;
    }
    return h;
}

/* SipHash-2-4 (Aumasson and Bernstein, 2012): 64-bit words read little
 * endian, two compression rounds a word, four finalisation rounds. */
#define SG_ROTL64(x, b)  (uint64_t) (((x) << (b)) | ((x) >> (64 - (b))))
#define SG_SIPROUND                                                          \
    do {                                                                     \
        v0 += v1; v1 = SG_ROTL64(v1, 13); v1 ^= v0; v0 = SG_ROTL64(v0, 32);  \
        v2 += v3; v3 = SG_ROTL64(v3, 16); v3 ^= v2;                          \
        v0 += v3; v3 = SG_ROTL64(v3, 21); v3 ^= v0;                          \
        v2 += v1; v1 = SG_ROTL64(v1, 17); v1 ^= v2; v2 = SG_ROTL64(v2, 32);  \
    } while (0)

static uint64_t
sg_le64(const u_char *p, size_t n)
{
    uint64_t  v = 0;
    size_t    i;

    for (i = 0; i < n; i++) {
        v |= (uint64_t) p[i] << (8 * i);
    }
    return v;
}

uint64_t
sg_siphash(const u_char key[16], const u_char *p, size_t n)
{
    uint64_t  k0 = sg_le64(key, 8), k1 = sg_le64(key + 8, 8), m;
    uint64_t  v0 = k0 ^ 0x736f6d6570736575ULL;
    uint64_t  v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t  v2 = k0 ^ 0x6c7967656e657261ULL;
    uint64_t  v3 = k1 ^ 0x7465646279746573ULL;
    size_t    i, whole = n & ~(size_t) 7;

    for (i = 0; i < whole; i += 8) {
        m = sg_le64(p + i, 8);
        v3 ^= m;
        SG_SIPROUND;
        SG_SIPROUND;
        v0 ^= m;
    }
    m = sg_le64(p + whole, n - whole) | ((uint64_t) n << 56);
    v3 ^= m;
    SG_SIPROUND;
    SG_SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SG_SIPROUND;
    SG_SIPROUND;
    SG_SIPROUND;
    SG_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static u_char  sg_hash_secret[16];

int
sg_keyed_hash_init(void)
{
    size_t   got = 0;
    ssize_t  n;

    while (got < sizeof(sg_hash_secret)) {
        n = getrandom(sg_hash_secret + got, sizeof(sg_hash_secret) - got, 0);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            return SG_ERROR;
        }
        got += (size_t) n;
    }
    return SG_OK;
}

uint64_t
sg_keyed_hash(const u_char *p, size_t n)
{
    return sg_siphash(sg_hash_secret, p, n);
}

void
sg_wipe(void *p, size_t n)
{
#if (SG_HAVE_EXPLICIT_BZERO)
    explicit_bzero(p, n);
#else
    volatile u_char  *v = p;

    while (n--) {
        *v++ = 0;
    }
#endif
}

void
sg_bug(const char *file, int line, const char *cond)
{
    fprintf(stderr, "smtpgate: [alert] BUG at %s:%d: %s\n", file, line, cond);
    abort();
}
