/*
 * fuzz_status_request.c: libFuzzer harness for the status listener's
 * request head.
 *
 * Reads arbitrary bytes as what a client sends the status listener,
 * from an exact-size copy.  Beyond the sanitizers it checks that a head
 * is found only where a blank line ends it, never before it is whole
 * (every shorter cut is incomplete) and whatever follows it; that a
 * parsed request's path lies within the line, starts with '/', and
 * holds no space, control character or '?'; that the method is GET,
 * HEAD or POST only when the line says so; that a path under
 * /upstreams/ splits into three non-empty parts, decoded into no more
 * bytes than the path, none of them a control byte; and that a path
 * under /queue/ is read as a flush, or as an action on a queue id of
 * letters and digits only.  The same bytes, read as a message's header
 * section field by field (GET /queue/ID), give fields that end in a line
 * feed, lie within the input, and unfold to no CR, LF or edge blank.
 */
#include "sg_core.h"
#include "sg_status_parse.h"
#include "sg_fuzz.h"

static void
sg_fuzz_peer_path(const sg_str_t *path)
{
    sg_status_peer_path_t  pp;
    u_char                *buf;
    size_t                 i, total;

    buf = malloc(path->len ? path->len : 1);
    SG_FUZZ_ASSERT(buf != NULL);
    if (sg_status_parse_peer_path(path, buf, &pp) == SG_OK) {
        SG_FUZZ_ASSERT(pp.upstream.len && pp.peer.len && pp.action.len);
        total = pp.upstream.len + pp.peer.len + pp.action.len;
        SG_FUZZ_ASSERT(total + 2 <= path->len);
        SG_FUZZ_ASSERT(pp.upstream.data == buf
                       && pp.peer.data == buf + pp.upstream.len
                       && pp.action.data == pp.peer.data + pp.peer.len);
        for (i = 0; i < total; i++) {
            SG_FUZZ_ASSERT(buf[i] >= 0x20 && buf[i] != 0x7f);
        }
    }
    free(buf);
}

static void
sg_fuzz_queue_path(const sg_str_t *path)
{
    sg_status_queue_action_e  action = 0;
    sg_str_t                  id;
    size_t                    i;

    if (sg_status_parse_queue_path(path, &id, &action) != SG_OK) {
        return;
    }
    SG_FUZZ_ASSERT(action >= SG_QUEUE_FLUSH && action <= SG_QUEUE_SHOW);
    if (action == SG_QUEUE_FLUSH) {
        SG_FUZZ_ASSERT(id.len == 0 && path->len == 12);
        return;
    }
    SG_FUZZ_ASSERT(id.len >= 1 && id.len <= SG_STATUS_QUEUE_ID);
    SG_FUZZ_ASSERT(id.data == path->data + 7);
    SG_FUZZ_ASSERT(action == SG_QUEUE_SHOW
                   ? id.data + id.len == path->data + path->len
                   : id.data[id.len] == '/');
    for (i = 0; i < id.len; i++) {
        SG_FUZZ_ASSERT((id.data[i] >= '0' && id.data[i] <= '9')
                       || (id.data[i] >= 'A' && id.data[i] <= 'Z')
                       || (id.data[i] >= 'a' && id.data[i] <= 'z'));
    }
}

/* The same bytes as a message's header section, field by field. */
static void
sg_fuzz_header_fields(const u_char *p, size_t len)
{
    sg_str_t  name, value;
    u_char   *out;
    size_t    used, n, i;

    while ((used = sg_status_header_field(p, len, &name, &value)) != 0) {
        SG_FUZZ_ASSERT(used <= len && p[used - 1] == '\n');
        SG_FUZZ_ASSERT(value.data >= p && value.data + value.len <= p + used);
        if (name.data != NULL) {
            SG_FUZZ_ASSERT(name.data == p && value.data == p + name.len + 1
                           && p[name.len] == ':');
            SG_FUZZ_ASSERT(memchr(name.data, '\n', name.len) == NULL);
        }
        out = malloc(value.len + 1);
        SG_FUZZ_ASSERT(out != NULL);
        n = sg_status_header_unfold(&value, out);
        SG_FUZZ_ASSERT(n <= value.len);
        for (i = 0; i < n; i++) {
            SG_FUZZ_ASSERT(out[i] != '\r' && out[i] != '\n');
        }
        SG_FUZZ_ASSERT(n == 0 || (out[0] != ' ' && out[0] != '\t'
                                  && out[n - 1] != ' '
                                  && out[n - 1] != '\t'));
        free(out);
        p += used;
        len -= used;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_status_request_t  r;
    u_char              *copy;
    size_t               n, len, i;

    n = size < SG_STATUS_REQUEST_MAX ? size : SG_STATUS_REQUEST_MAX;
    copy = sg_fuzz_copy(data, n);
    sg_fuzz_header_fields(copy, n);
    len = sg_status_head_len(copy, n);
    SG_FUZZ_ASSERT(len <= n);
    if (len) {
        SG_FUZZ_ASSERT(len >= 2 && copy[len - 1] == '\n'
                       && (copy[len - 2] == '\n'
                           || (len >= 3 && copy[len - 2] == '\r'
                               && copy[len - 3] == '\n')));
        SG_FUZZ_ASSERT(sg_status_head_len(copy, len - 1) == 0);
        SG_FUZZ_ASSERT(sg_status_head_len(copy, len) == len);
    }
    if (sg_status_parse_request(copy, n, &r) == SG_OK) {
        SG_FUZZ_ASSERT(r.path.data > copy && r.path.len >= 1
                       && r.path.data + r.path.len <= copy + n);
        SG_FUZZ_ASSERT(r.path.data[0] == '/');
        for (i = 0; i < r.path.len; i++) {
            SG_FUZZ_ASSERT(r.path.data[i] > ' ' && r.path.data[i] < 0x7f
                           && r.path.data[i] != '?');
        }
        SG_FUZZ_ASSERT(r.method != SG_STATUS_GET
                       || memcmp(copy, "GET ", 4) == 0);
        SG_FUZZ_ASSERT(r.method != SG_STATUS_HEAD
                       || memcmp(copy, "HEAD ", 5) == 0);
        SG_FUZZ_ASSERT(r.method != SG_STATUS_POST
                       || memcmp(copy, "POST ", 5) == 0);
        SG_FUZZ_ASSERT(r.method >= SG_STATUS_GET
                       && r.method <= SG_STATUS_POST);
        sg_fuzz_peer_path(&r.path);
        sg_fuzz_queue_path(&r.path);
    }
    free(copy);
    return 0;
}
