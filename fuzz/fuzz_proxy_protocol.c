/*
 * fuzz_proxy_protocol.c: libFuzzer harness for the PROXY protocol
 * parser and builders (core/sg_proxy_protocol.c).
 *
 * Reads arbitrary bytes as the start of a connection on a
 * proxy_protocol listener, parsed from an exact-size copy.  Beyond the
 * sanitizers it checks that a header lies within the input and its
 * version's limits, that what it reports is consistent (families,
 * lengths, LOCAL without addresses), that an error always names a cause,
 * that nothing is judged early (every cut of a header, or of input the
 * parser still waits on, is AGAIN) and that the bytes after a header do
 * not change it, and that the builders' headers for the reported
 * addresses parse back to the same addresses.
 */
#include "sg_core.h"
#include "sg_fuzz.h"


static int
sg_fuzz_parse(const u_char *data, size_t n, sg_proxy_hdr_t *hdr,
              size_t *consumed, const char **err)
{
    u_char *copy = sg_fuzz_copy(data, n);
    int     rc;

    *consumed = (size_t) -1;
    rc = sg_proxy_protocol_parse(copy, n, hdr, consumed, err);
    free(copy);
    return rc;
}

static void
sg_fuzz_addrs(const sg_proxy_hdr_t *hdr)
{
    socklen_t  want;

    if (hdr->local) {
        SG_FUZZ_ASSERT(hdr->src_len == 0 && hdr->dst_len == 0);
        return;
    }
    SG_FUZZ_ASSERT(hdr->src.ss_family == AF_INET
                   || hdr->src.ss_family == AF_INET6);
    SG_FUZZ_ASSERT(hdr->dst.ss_family == hdr->src.ss_family);
    want = hdr->src.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                         : sizeof(struct sockaddr_in6);
    SG_FUZZ_ASSERT(hdr->src_len == want && hdr->dst_len == want);
}

static bool
sg_fuzz_same_addrs(const sg_proxy_hdr_t *a, const sg_proxy_hdr_t *b)
{
    return a->local == b->local && a->src_len == b->src_len
           && a->dst_len == b->dst_len
           && memcmp(&a->src, &b->src, a->src_len) == 0
           && memcmp(&a->dst, &b->dst, a->dst_len) == 0;
}

/* Shorter cuts of [0, end) are all AGAIN, sampled on long inputs. */
static void
sg_fuzz_cuts(const u_char *data, size_t end)
{
    sg_proxy_hdr_t  hdr;
    const char     *err;
    size_t          k, step, consumed;

    step = end <= 256 ? 1 : end / 64;
    for (k = 0; k < end; k += step) {
        SG_FUZZ_ASSERT(sg_fuzz_parse(data, k, &hdr, &consumed, &err)
                       == SG_AGAIN);
        SG_FUZZ_ASSERT(err == NULL);
    }
    if (end > 0) {
        SG_FUZZ_ASSERT(sg_fuzz_parse(data, end - 1, &hdr, &consumed, &err)
                       == SG_AGAIN);
    }
}

static void
sg_fuzz_round_trip(const sg_proxy_hdr_t *hdr)
{
    sg_proxy_hdr_t  back;
    u_char          buf[SG_PROXY_PROTOCOL_V1_MAX + 64];
    const char     *err;
    size_t          n, consumed;

    if (hdr->local) {
        return;
    }
    n = sg_proxy_protocol_write_v1(buf, sizeof(buf),
                                   (const struct sockaddr *) &hdr->src,
                                   (const struct sockaddr *) &hdr->dst);
    SG_FUZZ_ASSERT(n > 0 && n <= SG_PROXY_PROTOCOL_V1_MAX);
    SG_FUZZ_ASSERT(sg_fuzz_parse(buf, n, &back, &consumed, &err) == SG_OK);
    SG_FUZZ_ASSERT(consumed == n && back.version == 1);
    SG_FUZZ_ASSERT(sg_fuzz_same_addrs(hdr, &back));

    n = sg_proxy_protocol_write_v2(buf, sizeof(buf),
                                   (const struct sockaddr *) &hdr->src,
                                   (const struct sockaddr *) &hdr->dst);
    SG_FUZZ_ASSERT(n == 28 || n == 52);
    SG_FUZZ_ASSERT(sg_fuzz_parse(buf, n, &back, &consumed, &err) == SG_OK);
    SG_FUZZ_ASSERT(consumed == n && back.version == 2);
    SG_FUZZ_ASSERT(sg_fuzz_same_addrs(hdr, &back));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_proxy_hdr_t  hdr, again;
    const char     *err;
    size_t          consumed, n;
    int             rc;

    rc = sg_fuzz_parse(data, size, &hdr, &consumed, &err);
    SG_FUZZ_ASSERT(rc == SG_OK || rc == SG_AGAIN || rc == SG_ERROR);

    if (rc == SG_ERROR) {
        SG_FUZZ_ASSERT(err != NULL && err[0] != '\0');
        return 0;
    }
    SG_FUZZ_ASSERT(err == NULL);

    if (rc == SG_AGAIN) {
        /* Waiting only for what may still become a header. */
        SG_FUZZ_ASSERT(size == 0 || data[0] == 'P' || data[0] == '\r');
        if (size > 0 && data[0] == 'P') {
            SG_FUZZ_ASSERT(size < SG_PROXY_PROTOCOL_V1_MAX);
        }
        SG_FUZZ_ASSERT(size < SG_PROXY_PROTOCOL_MAX);
        sg_fuzz_cuts(data, size);
        return 0;
    }

    SG_FUZZ_ASSERT(consumed > 0 && consumed <= size);
    SG_FUZZ_ASSERT(hdr.version == 1 || hdr.version == 2);
    if (hdr.version == 1) {
        SG_FUZZ_ASSERT(consumed <= SG_PROXY_PROTOCOL_V1_MAX);
        SG_FUZZ_ASSERT(data[consumed - 2] == '\r'
                       && data[consumed - 1] == '\n');
        SG_FUZZ_ASSERT(memchr(data, '\n', consumed - 1) == NULL);
    } else {
        SG_FUZZ_ASSERT(consumed >= 16 && consumed <= SG_PROXY_PROTOCOL_MAX);
        SG_FUZZ_ASSERT(consumed == 16 + ((size_t) data[14] << 8 | data[15]));
    }
    sg_fuzz_addrs(&hdr);

    /* The header alone says the same as the header with what follows. */
    SG_FUZZ_ASSERT(sg_fuzz_parse(data, consumed, &again, &n, &err) == SG_OK);
    SG_FUZZ_ASSERT(n == consumed && again.version == hdr.version);
    SG_FUZZ_ASSERT(sg_fuzz_same_addrs(&hdr, &again));

    sg_fuzz_cuts(data, consumed);
    sg_fuzz_round_trip(&hdr);
    return 0;
}
