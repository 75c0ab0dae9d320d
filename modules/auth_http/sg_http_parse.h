/*
 * sg_http_parse.h: the pure parts of the HTTP authentication protocol
 * (nginx's mail auth_http): escaping credentials into request headers,
 * and a strict parser of the service's response head.
 *
 * Functions of bytes only: no I/O, no allocation, no global state.
 * Unit-tested in t/unit/test_http_parse.c and fuzzed in
 * fuzz/fuzz_http_auth.c.
 */
#ifndef SG_HTTP_PARSE_H
#define SG_HTTP_PARSE_H

#include "sg_core.h"

/*
 * Escape a value for Auth-User / Auth-Pass / Auth-SMTP-* exactly as
 * nginx's mail module does: bytes 0x00-0x1f, space (0x20) and '%'
 * become "%XX" (upper-case hex); every other byte, 0x7f and above
 * included, is copied.  Returns the escaped length; with dst == NULL
 * only computes it.
 */
size_t sg_http_auth_escape(u_char *dst, const sg_str_t *src);

/* Headers the response parser knows; each may appear at most once. */
typedef enum {
    SG_HTTP_H_AUTH_STATUS = 0,
    SG_HTTP_H_AUTH_SERVER,
    SG_HTTP_H_AUTH_PORT,
    SG_HTTP_H_AUTH_WAIT,
    SG_HTTP_H_AUTH_ERROR_CODE,
    SG_HTTP_H_AUTH_USER,
    SG_HTTP_H_AUTH_PASS,
    SG_HTTP_H_AUTH_UPSTREAM,
    SG_HTTP_H_CONTENT_LENGTH,
    SG_HTTP_H_CONNECTION,
    SG_HTTP_H_TRANSFER_ENCODING,
    SG_HTTP_H_COUNT
} sg_http_header_e;

typedef struct {
    int          status;        /* 100..599 */
    int          minor;         /* HTTP/1.minor, 0 or 1 */
    size_t       head_len;      /* bytes up to and including the empty
                                   line that ends the head */
    int64_t      content_length;   /* -1 when absent */
    bool         keepalive;     /* the connection may carry another
                                   request once content_length bytes of
                                   body are read: HTTP/1.1 without
                                   "Connection: close", or HTTP/1.0 with
                                   "Connection: keep-alive"; and a
                                   Content-Length, and no
                                   Transfer-Encoding */
    sg_str_t     h[SG_HTTP_H_COUNT];   /* values, surrounding whitespace
                                          trimmed; data NULL if absent */
    const char  *error;         /* why SG_ERROR (static text) */
} sg_http_auth_response_t;

/*
 * Parse the response head in [p, last).  limit bounds the head size.
 * Strict: the status line must be "HTTP/1.0" or "HTTP/1.1", SP, three
 * digits, then SP and a reason or the line end; header names are
 * tokens (RFC 9110) matched case-insensitively; a known header twice is
 * an error ("duplicate Auth-Status header"); obsolete line folding, NUL
 * and other control bytes in values (HTAB allowed), a CR not followed by
 * LF, or a head longer than limit are errors.  Lines end in CRLF or LF.
 * Content-Length must be decimal digits only, at most 10 digits.
 * Unknown headers are skipped.
 * Returns SG_OK (head complete, out filled), SG_AGAIN (incomplete but
 * fine so far) or SG_ERROR (out->error says why).
 */
int sg_http_parse_auth_response(const u_char *p, const u_char *last,
    size_t limit, sg_http_auth_response_t *out);

/* The header's canonical name ("Auth-Status"), for messages. */
const char *sg_http_header_name(sg_http_header_e h);

#endif /* SG_HTTP_PARSE_H */
