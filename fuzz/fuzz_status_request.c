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
 * letters and digits only.
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

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_status_request_t  r;
    u_char              *copy;
    size_t               n, len, i;

    n = size < SG_STATUS_REQUEST_MAX ? size : SG_STATUS_REQUEST_MAX;
    copy = sg_fuzz_copy(data, n);
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
