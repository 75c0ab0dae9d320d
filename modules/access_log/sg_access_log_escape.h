/*
 * sg_access_log_escape.h: how the access log writes a value, as pure
 * functions (unit-tested in t/unit/test_access_log.c).
 *
 * Values come from clients (a user name, a certificate's subject) and
 * may hold any byte.  A line must stay one line, and in the json escape
 * a valid JSON string whatever the bytes:
 *   - SG_ALOG_ESCAPE_JSON: '"' and '\' escaped, control characters as
 *     \n, \r, \t or \u00XX (DEL too), valid UTF-8 (RFC 3629) kept,
 *     every byte that does not start a valid sequence as \ufffd;
 *   - SG_ALOG_ESCAPE_DEFAULT (nginx's): '"', '\', control characters and
 *     bytes from 0x7f up as \xHH.
 */
#ifndef SG_ACCESS_LOG_ESCAPE_H
#define SG_ACCESS_LOG_ESCAPE_H

#include "sg_core.h"

#define SG_ALOG_ESCAPE_DEFAULT  0
#define SG_ALOG_ESCAPE_JSON     1

/* The most bytes one input byte can become. */
#define sg_alog_escaped_max(escape)                                          \
    ((escape) == SG_ALOG_ESCAPE_JSON ? 6 : 4)

/* The length of the valid UTF-8 sequence at p (n bytes there), or 0. */
size_t sg_alog_utf8(const u_char *p, size_t n);

/* p[0..n) escaped into o, which has room for n * sg_alog_escaped_max();
 * returns the end of what was written. */
u_char *sg_alog_escape(u_char *o, const u_char *p, size_t n,
    unsigned escape);

#endif /* SG_ACCESS_LOG_ESCAPE_H */
