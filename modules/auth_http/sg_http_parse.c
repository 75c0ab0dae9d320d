/*
 * sg_http_parse.c: the pure parts of the HTTP authentication protocol
 * declared in sg_http_parse.h: nginx-compatible escaping of request
 * header values, and a strict parser of the auth service's response
 * head.
 *
 * Owns nothing: header values are views into the caller's bytes, and no
 * function allocates, does I/O or keeps state between calls, so the
 * caller resumes a parse simply by calling again with more bytes.
 * Refuses anything but HTTP/1.0 and HTTP/1.1 status lines, header names
 * that are not tokens, obsolete line folding, NUL and control bytes, a
 * CR outside CRLF, a known header given twice, malformed Content-Length
 * values and heads longer than the caller's limit.  What the Auth-*
 * values mean is the auth module's business, not this file's.
 */
#include "sg_core.h"
#include "sg_http_parse.h"

#define SG_HTTP_CONTENT_LENGTH_DIGITS 10

typedef struct {
    const char *name; /* canonical spelling */
    size_t      len;
    const char *dup; /* the error for a second occurrence */
} sg_http_header_entry_t;

#define SG_HTTP_HEADER(e, n)                                                   \
    [SG_HTTP_H_##e] = { n, sizeof(n) - 1, "duplicate " n " header" }

/* Indexed by sg_http_header_e. */
static const sg_http_header_entry_t sg_http_headers[SG_HTTP_H_COUNT] = {
    SG_HTTP_HEADER(AUTH_STATUS, "Auth-Status"),
    SG_HTTP_HEADER(AUTH_SERVER, "Auth-Server"),
    SG_HTTP_HEADER(AUTH_PORT, "Auth-Port"),
    SG_HTTP_HEADER(AUTH_WAIT, "Auth-Wait"),
    SG_HTTP_HEADER(AUTH_ERROR_CODE, "Auth-Error-Code"),
    SG_HTTP_HEADER(AUTH_USER, "Auth-User"),
    SG_HTTP_HEADER(AUTH_PASS, "Auth-Pass"),
    SG_HTTP_HEADER(AUTH_UPSTREAM, "Auth-Upstream"),
    SG_HTTP_HEADER(CONTENT_LENGTH, "Content-Length"),
    SG_HTTP_HEADER(CONNECTION, "Connection"),
    SG_HTTP_HEADER(TRANSFER_ENCODING, "Transfer-Encoding"),
};

#undef SG_HTTP_HEADER


size_t
sg_http_auth_escape(u_char *dst, const sg_str_t *src)
{
    /* as nginx's mail auth: 0x00-0x20 and '%', nothing else */
    static const uint32_t  mail_auth[8] = {
        0xffffffff, 0x00000021, 0, 0, 0, 0, 0, 0
    };

    return sg_escape_hex(dst, src, '%', mail_auth);
}

const char *
sg_http_header_name(sg_http_header_e h)
{
    if ((int) h < 0 || h >= SG_HTTP_H_COUNT) {
        return "(unknown header)";
    }
    return sg_http_headers[h].name;
}

static int
sg_http_fail(sg_http_auth_response_t *out, const char *why)
{
    out->error = why;
    return SG_ERROR;
}

/* RFC 9110 tchar. */
static bool
sg_http_is_tchar(u_char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
        || (c >= 'a' && c <= 'z')) {
        return true;
    }
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/*
 * Field values and reason phrases: HTAB, SP, VCHAR and obs-text.  A
 * CR has been refused before this is called; the NUL gets a message of
 * its own because it is the byte most likely to be an attack.
 */
static const char *
sg_http_check_text(const u_char *p, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (p[i] == '\0') {
            return "NUL in response head";
        }
        if ((p[i] < ' ' && p[i] != '\t') || p[i] == 0x7f) {
            return "control byte in response head";
        }
    }
    return NULL;
}

/*
 * The status line, or as much of it as has arrived (complete false):
 * each byte is judged as soon as it is here, so a service that does not
 * speak HTTP/1.x is refused without waiting for its line end.
 */
static const char *
sg_http_status_line(const u_char *p, size_t len, bool complete,
                    sg_http_auth_response_t *out)
{
    static const char proto[] = "HTTP/1.";
    size_t            i;

    for (i = 0; i < len && i < sizeof(proto) - 1; i++) {
        if (p[i] != (u_char) proto[i]) {
            return "bad status line: not HTTP/1.x";
        }
    }
    if (len > 7 && p[7] != '0' && p[7] != '1') {
        return "unsupported HTTP version";
    }
    if (len > 8 && p[8] != ' ') {
        return "bad status line";
    }
    for (i = 9; i < len && i < 12; i++) {
        if (p[i] < '0' || p[i] > '9'
            || (i == 9 && (p[i] < '1' || p[i] > '5'))) {
            return "bad status code";
        }
    }
    if (len > 12 && p[12] != ' ') {
        return "bad status code";
    }
    if (len > 13) {
        const char *err = sg_http_check_text(p + 13, len - 13);
        if (err != NULL) {
            return err;
        }
    }
    if (!complete) {
        return NULL;
    }
    if (len < 12) {
        return "bad status line: truncated";
    }
    out->minor = p[7] - '0';
    out->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    return NULL;
}

static int
sg_http_header_lookup(const u_char *name, size_t len)
{
    int i;

    for (i = 0; i < SG_HTTP_H_COUNT; i++) {
        if (sg_http_headers[i].len == len
            && sg_strncasecmp(name, (const u_char *) sg_http_headers[i].name,
                              len)
                   == 0) {
            return i;
        }
    }
    return -1;
}

static void
sg_http_trim(const u_char **p, const u_char **end)
{
    while (*p < *end && (**p == ' ' || **p == '\t')) {
        (*p)++;
    }
    while (*end > *p && ((*end)[-1] == ' ' || (*end)[-1] == '\t')) {
        (*end)--;
    }
}

/*
 * A header line without its ending, or as much of it as has arrived.
 * A known header's value is kept only once its line is complete, but a
 * second occurrence is refused as soon as its colon is here.
 */
static const char *
sg_http_header_line(const u_char *p, size_t len, bool complete,
                    sg_http_auth_response_t *out)
{
    const u_char *colon, *q, *v, *end;
    const char   *err;
    int           h;

    if (len == 0) {
        return NULL;
    }
    if (p[0] == ' ' || p[0] == '\t') {
        return "obsolete line folding in response head";
    }
    colon = memchr(p, ':', len);
    end = p + len;
    for (q = p; q < (colon ? colon : end); q++) {
        if (!sg_http_is_tchar(*q)) {
            return *q == '\0' ? "NUL in header name" : "bad header name";
        }
    }
    if (colon == NULL) {
        return complete ? "header line without a colon" : NULL;
    }
    if (colon == p) {
        return "empty header name";
    }
    err = sg_http_check_text(colon + 1, (size_t) (end - colon - 1));
    if (err != NULL) {
        return err;
    }

    h = sg_http_header_lookup(p, (size_t) (colon - p));
    if (h < 0) {
        return NULL;
    }
    if (out->h[h].data != NULL) {
        return sg_http_headers[h].dup;
    }
    if (complete) {
        v = colon + 1;
        sg_http_trim(&v, &end);
        out->h[h].data = (u_char *) v;
        out->h[h].len = (size_t) (end - v);
    }
    return NULL;
}

/* The connection options of a Connection value: a comma-separated list
 * of tokens, of which only "close" and "keep-alive" matter here. */
static void
sg_http_connection(const sg_str_t *value, bool *closing, bool *keep)
{
    const u_char *p, *end, *item, *comma;

    p = value->data;
    end = p + value->len;
    while (p < end) {
        comma = memchr(p, ',', (size_t) (end - p));
        item = p;
        p = comma ? comma : end;
        sg_http_trim(&item, &p);
        if (p - item == 5 && sg_strncasecmp(item, (u_char *) "close", 5) == 0) {
            *closing = true;
        } else if (p - item == 10
                   && sg_strncasecmp(item, (u_char *) "keep-alive", 10) == 0) {
            *keep = true;
        }
        p = comma ? comma + 1 : end;
    }
}

/* Decimal digits only, and few enough that no overflow is possible. */
static const char *
sg_http_content_length(const sg_str_t *v, int64_t *n)
{
    size_t i;

    if (v->len == 0) {
        return "empty Content-Length";
    }
    if (v->len > SG_HTTP_CONTENT_LENGTH_DIGITS) {
        return "Content-Length too large";
    }
    *n = 0;
    for (i = 0; i < v->len; i++) {
        if (v->data[i] < '0' || v->data[i] > '9') {
            return "bad Content-Length";
        }
        *n = *n * 10 + (v->data[i] - '0');
    }
    return NULL;
}

/* The head is complete: judge the values whose meaning is HTTP's. */
static int
sg_http_finish(sg_http_auth_response_t *out)
{
    const char *err;
    sg_str_t   *conn;
    int64_t     n;
    bool        closing, keep;

    if (out->h[SG_HTTP_H_CONTENT_LENGTH].data != NULL) {
        err = sg_http_content_length(&out->h[SG_HTTP_H_CONTENT_LENGTH], &n);
        if (err != NULL) {
            return sg_http_fail(out, err);
        }
        out->content_length = n;
    }

    closing = false;
    keep = out->minor == 1;
    conn = &out->h[SG_HTTP_H_CONNECTION];
    if (conn->data != NULL) {
        sg_http_connection(conn, &closing, &keep);
    }
    out->keepalive = keep && !closing && out->content_length >= 0
                     && out->h[SG_HTTP_H_TRANSFER_ENCODING].data == NULL;
    return SG_OK;
}

static void
sg_http_response_init(sg_http_auth_response_t *out)
{
    int i;

    out->status = 0;
    out->minor = 0;
    out->head_len = 0;
    out->content_length = -1;
    out->keepalive = false;
    for (i = 0; i < SG_HTTP_H_COUNT; i++) {
        out->h[i].len = 0;
        out->h[i].data = NULL;
    }
    out->error = NULL;
}

/* One line without its ending; first is the status line. */
static const char *
sg_http_line(const u_char *p, size_t len, bool first, bool complete,
             sg_http_auth_response_t *out)
{
    if (len > 0 && memchr(p, '\r', len) != NULL) {
        return "bare CR in response head";
    }
    if (first) {
        return sg_http_status_line(p, len, complete, out);
    }
    return sg_http_header_line(p, len, complete, out);
}

/*
 * Only the first limit bytes are searched, so the work per call is
 * bounded whatever the service sends.  The line that has not ended yet
 * is judged too, so that garbage is refused without waiting for a line
 * end or for the limit.
 */
int
sg_http_parse_auth_response(const u_char *p, const u_char *last, size_t limit,
                            sg_http_auth_response_t *out)
{
    const u_char *pos, *end, *lf;
    const char   *err;
    size_t        avail, len;
    bool          first;

    sg_http_response_init(out);
    avail = (size_t) (last - p);
    end = p + sg_min(avail, limit);
    first = true;

    for (pos = p; pos < end; pos = lf + 1) {
        lf = memchr(pos, '\n', (size_t) (end - pos));
        if (lf == NULL) {
            break;
        }
        len = (size_t) (lf - pos);
        if (len > 0 && lf[-1] == '\r') {
            len--;
        }
        if (len == 0 && !first) {
            out->head_len = (size_t) (lf + 1 - p);
            return sg_http_finish(out);
        }
        err = sg_http_line(pos, len, first, true, out);
        if (err != NULL) {
            return sg_http_fail(out, err);
        }
        first = false;
    }

    /* A CR at the very end may yet be followed by its LF. */
    len = (size_t) (end - pos);
    if (len > 0 && pos[len - 1] == '\r') {
        len--;
    }
    err = sg_http_line(pos, len, first, false, out);
    if (err != NULL) {
        return sg_http_fail(out, err);
    }
    if (avail >= limit) {
        return sg_http_fail(out, "response head too long");
    }
    return SG_AGAIN;
}
