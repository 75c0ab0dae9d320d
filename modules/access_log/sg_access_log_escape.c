/*
 * sg_access_log_escape.c: values escaped for the access log (see the
 * header).
 */
#include "sg_access_log_escape.h"

static u_char *
sg_alog_cpy(u_char *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
    return dst + n;
}

/* The length of the UTF-8 sequence at p (at most n bytes there), 0 when
 * it is not a valid one (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF). */
size_t
sg_alog_utf8(const u_char *p, size_t n)
{
    u_char  c = p[0];
    size_t  len, i;

    if (c < 0xc2 || c > 0xf4) {
        return 0;
    }
    len = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (n < len) {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
    }
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f)
        || (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
    {
        return 0;
    }
    return len;
}

u_char *
sg_alog_escape(u_char *o, const u_char *p, size_t n, unsigned escape)
{
    static const u_char  hex[] = "0123456789abcdef";
    static const u_char  HEX[] = "0123456789ABCDEF";   /* nginx's */
    size_t               i, u;
    u_char               c;

    for (i = 0; i < n; i++) {
        c = p[i];
        if (escape == SG_ALOG_ESCAPE_JSON) {
            if (c == '"' || c == '\\') {
                *o++ = '\\';
                *o++ = c;
            } else if (c == '\n') {
                *o++ = '\\';
                *o++ = 'n';
            } else if (c == '\r') {
                *o++ = '\\';
                *o++ = 'r';
            } else if (c == '\t') {
                *o++ = '\\';
                *o++ = 't';
            } else if (c < 0x20 || c == 0x7f) {
                o = sg_alog_cpy(o, "\\u00", 4);
                *o++ = hex[c >> 4];
                *o++ = hex[c & 0xf];
            } else if (c < 0x80) {
                *o++ = c;
            } else if ((u = sg_alog_utf8(p + i, n - i)) != 0) {
                o = sg_alog_cpy(o, p + i, u);
                i += u - 1;
            } else {
                o = sg_alog_cpy(o, "\\ufffd", 6);
            }
            continue;
        }
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x7f) {
            *o++ = '\\';
            *o++ = 'x';
            *o++ = HEX[c >> 4];
            *o++ = HEX[c & 0xf];
        } else {
            *o++ = c;
        }
    }
    return o;
}
