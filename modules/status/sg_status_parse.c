/*
 * sg_status_parse.c: the status listener's request head (see the
 * header).
 */
#include "sg_status_parse.h"

size_t
sg_status_head_len(const u_char *p, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (p[i] != '\n') {
            continue;
        }
        if (i + 1 < n && p[i + 1] == '\n') {
            return i + 2;
        }
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
            return i + 3;
        }
    }
    return 0;
}

/* RFC 9110's token characters. */
static bool
sg_status_tchar(u_char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || (c != 0 && strchr("!#$%&'*+-.^_`|~",
                                                          c) != NULL);
}

int
sg_status_parse_request(const u_char *p, size_t n, sg_status_request_t *r)
{
    const u_char  *end, *m, *t, *q;
    size_t         i;

    end = memchr(p, '\n', n);
    if (end == NULL) {
        return SG_ERROR;
    }
    if (end > p && end[-1] == '\r') {
        end--;
    }
    /* the method: a token, then one space */
    for (m = p; m < end && sg_status_tchar(*m); m++) {
        /* void */
    }
    if (m == p || m == end || *m != ' ') {
        return SG_ERROR;
    }
    if (m - p == 3 && memcmp(p, "GET", 3) == 0) {
        r->method = SG_STATUS_GET;
    } else if (m - p == 4 && memcmp(p, "HEAD", 4) == 0) {
        r->method = SG_STATUS_HEAD;
    } else if (m - p == 4 && memcmp(p, "POST", 4) == 0) {
        r->method = SG_STATUS_POST;
    } else {
        r->method = SG_STATUS_OTHER;
    }
    /* the target: visible characters from '/', then " HTTP/1.x" */
    t = m + 1;
    if (end - t < 10 || *t != '/') {
        return SG_ERROR;
    }
    for (q = t; q < end && *q > ' ' && *q < 0x7f; q++) {
        /* void */
    }
    if (end - q != 9 || memcmp(q, " HTTP/1.", 8) != 0
        || (q[8] != '0' && q[8] != '1'))
    {
        return SG_ERROR;
    }
    r->path.data = (u_char *) t;
    r->path.len = (size_t) (q - t);
    for (i = 0; i < r->path.len; i++) {
        if (t[i] == '?') {
            r->path.len = i;
            break;
        }
    }
    return SG_OK;
}

int
sg_status_parse_peer_path(const sg_str_t *path, u_char *buf,
    sg_status_peer_path_t *out)
{
    size_t   pre = sizeof(SG_STATUS_UPSTREAMS) - 1, i, n = 0;
    u_char  *first, *last, c;
    int      hi, lo;

    if (path->len < pre
        || memcmp(path->data, SG_STATUS_UPSTREAMS, pre) != 0)
    {
        return SG_ERROR;
    }
    /* Split on the raw slashes first: an escaped "%2F" is part of a
     * name, never a separator. */
    first = memchr(path->data + pre, '/', path->len - pre);
    if (first == NULL) {
        return SG_ERROR;
    }
    for (last = path->data + path->len - 1; *last != '/'; last--) {
        /* void: first is a '/' at or before it */
    }
    if (last == first || first == path->data + pre
        || last == first + 1 || last == path->data + path->len - 1)
    {
        return SG_ERROR;
    }
    memset(out, 0, sizeof(*out));
    for (i = pre; i < path->len; i++) {
        if (path->data + i == first || path->data + i == last) {
            if (path->data + i == first) {
                out->upstream.data = buf;
                out->upstream.len = n;
                out->peer.data = buf + n;
            } else {
                out->peer.len = (size_t) (buf + n - out->peer.data);
                out->action.data = buf + n;
            }
            continue;
        }
        c = path->data[i];
        if (c == '%') {
            if (i + 2 >= path->len
                || (hi = sg_hex_digit(path->data[i + 1])) < 0
                || (lo = sg_hex_digit(path->data[i + 2])) < 0)
            {
                return SG_ERROR;
            }
            c = (u_char) (hi << 4 | lo);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f) {
            return SG_ERROR;
        }
        buf[n++] = c;
    }
    out->action.len = (size_t) (buf + n - out->action.data);
    if (out->upstream.len == 0 || out->peer.len == 0
        || out->action.len == 0)
    {
        return SG_ERROR;            /* every part escaped to nothing */
    }
    return SG_OK;
}

int
sg_status_parse_queue_path(const sg_str_t *path, sg_str_t *id,
    sg_status_queue_action_e *action)
{
    static const struct {
        const char               *name;
        sg_status_queue_action_e  action;
    } verbs[] = {
        { "remove", SG_QUEUE_REMOVE },
        { "hold", SG_QUEUE_HOLD },
        { "release", SG_QUEUE_RELEASE },
    };
    size_t   pre = sizeof(SG_STATUS_QUEUE) - 1, i, n;
    u_char  *p, *slash, c;

    if (path->len <= pre || memcmp(path->data, SG_STATUS_QUEUE, pre) != 0)
    {
        return SG_ERROR;
    }
    p = path->data + pre;
    n = path->len - pre;
    if (n == 5 && memcmp(p, "flush", 5) == 0) {
        id->data = NULL;
        id->len = 0;
        *action = SG_QUEUE_FLUSH;
        return SG_OK;
    }
    slash = memchr(p, '/', n);
    if (slash == NULL) {
        slash = p + n;              /* the id alone: show it */
    }
    if (slash == p || (size_t) (slash - p) > SG_STATUS_QUEUE_ID) {
        return SG_ERROR;
    }
    for (i = 0; p + i < slash; i++) {
        c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
              || (c >= 'a' && c <= 'z')))
        {
            return SG_ERROR;
        }
    }
    if (slash == p + n) {
        id->data = p;
        id->len = n;
        *action = SG_QUEUE_SHOW;
        return SG_OK;
    }
    n -= i + 1;
    for (i = 0; i < sg_nelems(verbs); i++) {
        if (n == strlen(verbs[i].name)
            && memcmp(slash + 1, verbs[i].name, n) == 0)
        {
            id->data = p;
            id->len = (size_t) (slash - p);
            *action = verbs[i].action;
            return SG_OK;
        }
    }
    return SG_ERROR;
}

size_t
sg_status_header_field(const u_char *p, size_t len, sg_str_t *name,
    sg_str_t *value)
{
    const u_char  *end = p + len, *eol, *colon, *last, *first;

    if (len >= 2 && p[0] == '\r' && p[1] == '\n') {
        return 0;                       /* the empty line */
    }
    if (len >= 1 && p[0] == '\n') {
        return 0;
    }
    eol = p;
    for ( ;; ) {
        eol = memchr(eol, '\n', (size_t) (end - eol));
        if (eol == NULL || eol + 1 >= end) {
            return 0;       /* not whole: a continuation may still come */
        }
        if (eol[1] != ' ' && eol[1] != '\t') {
            break;
        }
        eol++;
    }
    /* the field is p[0..eol], its line end at eol (LF, maybe CR LF);
     * its name ends at a colon on its first line (RFC 5322 2.2) */
    last = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
    first = memchr(p, '\n', (size_t) (eol + 1 - p));
    colon = memchr(p, ':', (size_t) (first - p));
    if (colon == NULL) {
        name->data = NULL;
        name->len = 0;
        value->data = (u_char *) p;
        value->len = (size_t) (last - p);
    } else {
        name->data = (u_char *) p;
        name->len = (size_t) (colon - p);
        value->data = (u_char *) colon + 1;
        value->len = (size_t) (last - colon - 1);
    }
    return (size_t) (eol + 1 - p);
}

size_t
sg_status_header_unfold(const sg_str_t *value, u_char *out)
{
    size_t  i, n = 0;
    u_char  c;

    for (i = 0; i < value->len; i++) {
        c = value->data[i];
        if (c == '\r' || c == '\n' || (n == 0 && (c == ' ' || c == '\t')))
        {
            continue;
        }
        out[n++] = c;
    }
    while (n && (out[n - 1] == ' ' || out[n - 1] == '\t')) {
        n--;
    }
    return n;
}
