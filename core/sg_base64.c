/*
 * sg_base64.c: RFC 4648 base64 with the standard alphabet, as SASL
 * carries credentials in it.
 *
 * Owns nothing: both directions write into a buffer the caller sized
 * with the macros in sg_base64.h.  Refuses, on decoding, anything that
 * is not the one canonical encoding of some octet string: characters
 * outside the alphabet (whitespace included), a length that is not a
 * multiple of 4, padding anywhere but the end of the last quantum, and
 * non-zero pad bits (RFC 4648 3.5).  Refusing these means two different
 * strings on the wire never decode to the same credentials.
 */
#include "sg_core.h"

static const u_char sg_base64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Sextet value of each octet; 0xff marks octets outside the alphabet,
 * '=' included, since padding is handled apart from data.  Kept sixteen
 * to a row, so an octet's row and column are its two hex digits. */
/* clang-format off */
#define XX  0xff
static const u_char  sg_base64_value[256] = {
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, 62, XX, XX, XX, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, XX, XX, XX, XX, XX, XX,
    XX,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, XX, XX, XX, XX, XX,
    XX, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
};
#undef XX
/* clang-format on */

void
sg_base64_encode(sg_str_t *dst, const sg_str_t *src)
{
    const u_char *s, *end;
    u_char       *d;
    uint32_t      v;
    size_t        rest;

    dst->len = 0;
    if (src->len == 0) {
        return;
    }

    s = src->data;
    end = s + src->len - src->len % 3;
    d = dst->data;

    for (/* void */; s < end; s += 3) {
        v = (uint32_t) s[0] << 16 | (uint32_t) s[1] << 8 | s[2];
        *d++ = sg_base64_alphabet[v >> 18];
        *d++ = sg_base64_alphabet[(v >> 12) & 0x3f];
        *d++ = sg_base64_alphabet[(v >> 6) & 0x3f];
        *d++ = sg_base64_alphabet[v & 0x3f];
    }

    rest = src->len % 3;
    if (rest) {
        v = (uint32_t) s[0] << 16;
        if (rest == 2) {
            v |= (uint32_t) s[1] << 8;
        }
        *d++ = sg_base64_alphabet[v >> 18];
        *d++ = sg_base64_alphabet[(v >> 12) & 0x3f];
        *d++ = rest == 2 ? sg_base64_alphabet[(v >> 6) & 0x3f] : '=';
        *d++ = '=';
    }

    dst->len = (size_t) (d - dst->data);
}

/*
 * The last quantum may carry one or two '=' and so stands for 1 to 3
 * octets.  Returns how many, or -1 if it is malformed.  A pad character
 * must not be followed by a data character ("QQ=Q"), and the bits that
 * the padding leaves unused must be zero.
 */
static int
sg_base64_last_quantum(const u_char *s, uint32_t *out)
{
    uint32_t v;
    int      i, n;

    n = 4;
    if (s[3] == '=') {
        n = (s[2] == '=') ? 2 : 3;
    }

    v = 0;
    for (i = 0; i < n; i++) {
        if (sg_base64_value[s[i]] == 0xff) {
            return -1;
        }
        v = v << 6 | sg_base64_value[s[i]];
    }

    if (n == 2) {
        if (v & 0x0f) {
            return -1;
        }
        *out = v << 12;
        return 1;
    }
    if (n == 3) {
        if (v & 0x03) {
            return -1;
        }
        *out = v << 6;
        return 2;
    }
    *out = v;
    return 3;
}

/*
 * Writing 3 octets for every 4 read never overtakes the reader, so
 * dst->data may equal src->data: callers can decode in place.
 */
int
sg_base64_decode(sg_str_t *dst, const sg_str_t *src)
{
    const u_char *s, *end;
    u_char       *d;
    uint32_t      v;
    size_t        len;
    u_char        a, b, c, e;
    int           n;

    /* Read src before writing dst: they may be the same sg_str_t. */
    len = src->len;
    s = src->data;
    d = dst->data;

    dst->len = 0;
    if (len % 4) {
        return SG_ERROR;
    }
    if (len == 0) {
        return SG_OK;
    }

    end = s + len - 4;

    for (/* void */; s < end; s += 4) {
        a = sg_base64_value[s[0]];
        b = sg_base64_value[s[1]];
        c = sg_base64_value[s[2]];
        e = sg_base64_value[s[3]];
        if ((a | b | c | e) & 0xc0) {
            return SG_ERROR;
        }
        v = (uint32_t) a << 18 | (uint32_t) b << 12 | (uint32_t) c << 6 | e;
        *d++ = (u_char) (v >> 16);
        *d++ = (u_char) (v >> 8);
        *d++ = (u_char) v;
    }

    n = sg_base64_last_quantum(s, &v);
    if (n < 0) {
        return SG_ERROR;
    }
    *d++ = (u_char) (v >> 16);
    if (n > 1) {
        *d++ = (u_char) (v >> 8);
    }
    if (n > 2) {
        *d++ = (u_char) v;
    }

    dst->len = (size_t) (d - dst->data);
    return SG_OK;
}
