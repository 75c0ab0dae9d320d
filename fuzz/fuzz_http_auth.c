/*
 * fuzz_http_auth.c: libFuzzer harness for the HTTP auth protocol
 * helpers.
 *
 * Reads arbitrary bytes as an auth service's response, parsed from an
 * exact-size copy under two limits, and as a credential to escape.
 * Beyond the sanitizers it checks that a complete head lies within the
 * input and the limit, that every header view lies within the head and
 * is trimmed, that the keep-alive verdict agrees with the headers, that
 * a head is never judged before it is complete (every shorter cut is
 * AGAIN) nor changed by what follows it, and that escaping computes its
 * own length and can be undone.
 */
#include "sg_core.h"
#include "sg_http_parse.h"
#include "sg_fuzz.h"


#define SG_FUZZ_HEAD_LIMIT 4096

/* Parse the first n bytes of p from an exact-size copy, so that reading
 * past them is a sanitizer report.  The copy is the caller's to free:
 * the views in r point into it. */
static int
sg_fuzz_parse_copy(const u_char *p, size_t n, size_t limit,
                   sg_http_auth_response_t *r, u_char **copy)
{
    *copy = sg_fuzz_copy(p, n);
    return sg_http_parse_auth_response(*copy, *copy + n, limit, r);
}

static int
sg_fuzz_parse_cut(const u_char *p, size_t n, size_t limit,
                  sg_http_auth_response_t *r)
{
    u_char *copy;
    int     rc;

    rc = sg_fuzz_parse_copy(p, n, limit, r, &copy);
    free(copy);
    return rc;
}

static void
sg_fuzz_views(const sg_http_auth_response_t *r, const u_char *head)
{
    const sg_str_t *v;
    int             i;

    for (i = 0; i < SG_HTTP_H_COUNT; i++) {
        v = &r->h[i];
        if (v->data == NULL) {
            SG_FUZZ_ASSERT(v->len == 0);
            continue;
        }
        SG_FUZZ_ASSERT(v->data >= head
                       && v->data + v->len <= head + r->head_len);
        SG_FUZZ_ASSERT(v->len == 0 || memchr(v->data, '\n', v->len) == NULL);
        SG_FUZZ_ASSERT(v->len == 0 || memchr(v->data, '\r', v->len) == NULL);
        SG_FUZZ_ASSERT(v->len == 0 || memchr(v->data, '\0', v->len) == NULL);
        if (v->len > 0) {
            SG_FUZZ_ASSERT(v->data[0] != ' ' && v->data[0] != '\t');
            SG_FUZZ_ASSERT(v->data[v->len - 1] != ' '
                           && v->data[v->len - 1] != '\t');
        }
    }
}

static void
sg_fuzz_complete(const sg_http_auth_response_t *r, const u_char *head,
                 size_t size, size_t limit)
{
    const sg_str_t *cl;

    SG_FUZZ_ASSERT(r->error == NULL);
    SG_FUZZ_ASSERT(r->head_len > 0 && r->head_len <= size);
    SG_FUZZ_ASSERT(r->head_len <= limit);
    SG_FUZZ_ASSERT(head[r->head_len - 1] == '\n');
    SG_FUZZ_ASSERT(memcmp(head, "HTTP/1.", 7) == 0);
    SG_FUZZ_ASSERT(r->status >= 100 && r->status <= 599);
    SG_FUZZ_ASSERT(r->minor == 0 || r->minor == 1);
    sg_fuzz_views(r, head);

    cl = &r->h[SG_HTTP_H_CONTENT_LENGTH];
    SG_FUZZ_ASSERT((cl->data != NULL) == (r->content_length >= 0));
    SG_FUZZ_ASSERT(r->content_length <= INT64_C(9999999999));
    if (r->keepalive) {
        SG_FUZZ_ASSERT(r->content_length >= 0);
        SG_FUZZ_ASSERT(r->h[SG_HTTP_H_TRANSFER_ENCODING].data == NULL);
    }
}

/* A complete head: no cut of it is judged, and nothing after it (within
 * the limit) changes the verdict. */
static void
sg_fuzz_cuts(const u_char *data, size_t limit, const sg_http_auth_response_t *r)
{
    sg_http_auth_response_t cut;
    size_t                  k, step;

    step = r->head_len <= 128 ? 1 : r->head_len / 32;
    for (k = 0; k < r->head_len; k += step) {
        SG_FUZZ_ASSERT(sg_fuzz_parse_cut(data, k, limit, &cut) == SG_AGAIN);
        SG_FUZZ_ASSERT(cut.error == NULL);
    }
    SG_FUZZ_ASSERT(sg_fuzz_parse_cut(data, r->head_len - 1, limit, &cut)
                   == SG_AGAIN);

    SG_FUZZ_ASSERT(sg_fuzz_parse_cut(data, r->head_len, limit, &cut) == SG_OK);
    SG_FUZZ_ASSERT(cut.head_len == r->head_len && cut.status == r->status
                   && cut.minor == r->minor
                   && cut.content_length == r->content_length
                   && cut.keepalive == r->keepalive);
    for (k = 0; k < SG_HTTP_H_COUNT; k++) {
        SG_FUZZ_ASSERT((cut.h[k].data == NULL) == (r->h[k].data == NULL));
        SG_FUZZ_ASSERT(cut.h[k].len == r->h[k].len);
    }
}

static void
sg_fuzz_response(const u_char *data, size_t size, size_t limit)
{
    sg_http_auth_response_t r, cut;
    u_char                 *copy;
    int                     rc;

    rc = sg_fuzz_parse_copy(data, size, limit, &r, &copy);
    SG_FUZZ_ASSERT(rc == SG_OK || rc == SG_AGAIN || rc == SG_ERROR);

    if (rc == SG_OK) {
        sg_fuzz_complete(&r, copy, size, limit);
        free(copy);
        sg_fuzz_cuts(data, limit, &r);
        return;
    }
    free(copy);

    if (rc == SG_ERROR) {
        SG_FUZZ_ASSERT(r.error != NULL && r.error[0] != '\0');
        return;
    }

    /* Waiting is only for a head that may still fit, and what is
     * waited on now was waited on before. */
    SG_FUZZ_ASSERT(r.error == NULL && size < limit);
    SG_FUZZ_ASSERT(sg_fuzz_parse_cut(data, size / 2, limit, &cut) == SG_AGAIN);
    if (size > 0) {
        SG_FUZZ_ASSERT(sg_fuzz_parse_cut(data, size - 1, limit, &cut)
                       == SG_AGAIN);
    }
}

static void
sg_fuzz_escape(const u_char *data, size_t size)
{
    sg_str_t src;
    u_char  *in, *out, *back;
    size_t   len, i, n;
    int      hi, lo;

    in = sg_fuzz_copy(data, size);
    src.data = in;
    src.len = size;

    len = sg_http_auth_escape(NULL, &src);
    SG_FUZZ_ASSERT(len >= size && len <= 3 * size);
    out = malloc(len ? len : 1);
    back = malloc(size ? size : 1);
    SG_FUZZ_ASSERT(out != NULL && back != NULL);
    SG_FUZZ_ASSERT(sg_http_auth_escape(out, &src) == len);

    /* Undo it: what comes out must be safe in a header, and be the
     * input again. */
    n = 0;
    for (i = 0; i < len; n++) {
        SG_FUZZ_ASSERT(out[i] > ' ');
        if (out[i] != '%') {
            back[n] = out[i++];
            continue;
        }
        SG_FUZZ_ASSERT(i + 2 < len);
        hi = sg_fuzz_hex(out[i + 1]);
        lo = sg_fuzz_hex(out[i + 2]);
        SG_FUZZ_ASSERT(hi >= 0 && lo >= 0);
        back[n] = (u_char) (hi << 4 | lo);
        SG_FUZZ_ASSERT(back[n] <= ' ' || back[n] == '%');
        i += 3;
    }
    SG_FUZZ_ASSERT(n == size && (size == 0 || memcmp(back, data, size) == 0));

    free(back);
    free(out);
    free(in);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_fuzz_response(data, size, SG_FUZZ_HEAD_LIMIT);
    /* A small limit reached at varied places, the end included. */
    sg_fuzz_response(data, size, size % 257);
    sg_fuzz_escape(data, size);
    return 0;
}
