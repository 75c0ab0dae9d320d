/*
 * fuzz_sasl.c: libFuzzer harness for the AUTH PLAIN path.
 *
 * Treats arbitrary bytes both as a client's base64 answer and as the
 * decoded message: sg_base64_decode(), sg_sasl_plain_split() and
 * sg_smtp_xtext_encode() (as AUTH= and XCLIENT carry the result on).
 * Beyond the sanitizers it checks each against a slow oracle: what
 * decodes re-encodes to the same bytes (the decoder takes only the
 * canonical form), every encoding decodes back, the split agrees with a
 * count of NULs and part sizes, and xtext decodes back to its input.
 * Every buffer is an exact-size heap copy, so one byte too far crashes.
 */
#include "sg_core.h"
#include "sg_smtp_parse.h"
#include "sg_fuzz.h"


static u_char *
sg_fuzz_alloc(const void *data, size_t n)
{
    u_char *p;

    p = malloc(n ? n : 1);
    SG_FUZZ_ASSERT(p != NULL);
    if (data != NULL && n > 0) {
        memcpy(p, data, n);
    }
    return p;
}

static bool
sg_fuzz_same(const sg_str_t *a, const u_char *b, size_t n)
{
    return a->len == n && (n == 0 || memcmp(a->data, b, n) == 0);
}

static void
sg_fuzz_base64(const uint8_t *data, size_t size)
{
    sg_str_t src, dec, enc;

    src.data = sg_fuzz_alloc(data, size);
    src.len = size;

    dec.data = sg_fuzz_alloc(NULL, sg_base64_decoded_len(size));
    if (sg_base64_decode(&dec, &src) == SG_OK) {
        SG_FUZZ_ASSERT(size % 4 == 0);
        SG_FUZZ_ASSERT(dec.len <= sg_base64_decoded_len(size));
        SG_FUZZ_ASSERT(dec.len + 2 >= sg_base64_decoded_len(size));
        enc.data = sg_fuzz_alloc(NULL, sg_base64_encoded_len(dec.len));
        sg_base64_encode(&enc, &dec);
        SG_FUZZ_ASSERT(sg_fuzz_same(&enc, data, size));
        free(enc.data);
    } else {
        SG_FUZZ_ASSERT(dec.len == 0);
    }
    free(dec.data);

    enc.data = sg_fuzz_alloc(NULL, sg_base64_encoded_len(size));
    sg_base64_encode(&enc, &src);
    SG_FUZZ_ASSERT(enc.len == sg_base64_encoded_len(size));
    dec.data = sg_fuzz_alloc(NULL, sg_base64_decoded_len(enc.len));
    SG_FUZZ_ASSERT(sg_base64_decode(&dec, &enc) == SG_OK);
    SG_FUZZ_ASSERT(sg_fuzz_same(&dec, data, size));

    /* In place, as a session decodes in its own buffer. */
    SG_FUZZ_ASSERT(sg_base64_decode(&enc, &enc) == SG_OK);
    SG_FUZZ_ASSERT(sg_fuzz_same(&enc, data, size));

    free(dec.data);
    free(enc.data);
    free(src.data);
}

/* The split the header promises, worked out the slow way. */
static int
sg_fuzz_plain_oracle(const u_char *p, size_t n)
{
    size_t i, nuls, part[3];

    nuls = 0;
    part[0] = part[1] = part[2] = 0;
    for (i = 0; i < n; i++) {
        if (p[i] == '\0') {
            if (++nuls > 2) {
                return SG_ERROR;
            }
        } else {
            part[nuls]++;
        }
    }
    if (nuls != 2 || part[1] == 0 || part[2] == 0) {
        return SG_ERROR;
    }
    if (part[0] > 255 || part[1] > 255 || part[2] > 255) {
        return SG_ERROR;
    }
    return SG_OK;
}

static void
sg_fuzz_plain(const u_char *data, size_t size)
{
    sg_str_t msg, z, c, p;
    int      rc;

    msg.data = sg_fuzz_alloc(data, size);
    msg.len = size;

    rc = sg_sasl_plain_split(&msg, &z, &c, &p);
    SG_FUZZ_ASSERT(rc == sg_fuzz_plain_oracle(data, size));
    if (rc == SG_OK) {
        SG_FUZZ_ASSERT(z.data == msg.data);
        SG_FUZZ_ASSERT(c.data == z.data + z.len + 1);
        SG_FUZZ_ASSERT(p.data == c.data + c.len + 1);
        SG_FUZZ_ASSERT(p.data + p.len == msg.data + msg.len);
        SG_FUZZ_ASSERT(z.len <= 255 && c.len <= 255 && p.len <= 255);
    } else {
        SG_FUZZ_ASSERT(z.len == 0 && c.len == 0 && p.len == 0);
    }
    free(msg.data);
}

static void
sg_fuzz_xtext(const uint8_t *data, size_t size)
{
    sg_str_t src;
    u_char  *dst, *back;
    size_t   n, i, k;

    src.data = sg_fuzz_alloc(data, size);
    src.len = size;
    n = sg_smtp_xtext_encode(NULL, &src);
    SG_FUZZ_ASSERT(n >= size && n <= 3 * size);
    dst = sg_fuzz_alloc(NULL, n);
    SG_FUZZ_ASSERT(sg_smtp_xtext_encode(dst, &src) == n);

    /* Decode by RFC 3461 4 and compare. */
    back = sg_fuzz_alloc(NULL, n);
    k = 0;
    for (i = 0; i < n; i++) {
        SG_FUZZ_ASSERT(dst[i] >= '!' && dst[i] <= '~' && dst[i] != '=');
        if (dst[i] != '+') {
            back[k++] = dst[i];
            continue;
        }
        SG_FUZZ_ASSERT(i + 2 < n && sg_fuzz_hex(dst[i + 1]) >= 0
                       && sg_fuzz_hex(dst[i + 2]) >= 0);
        back[k++] = (u_char) (sg_fuzz_hex(dst[i + 1]) << 4
                              | sg_fuzz_hex(dst[i + 2]));
        i += 2;
    }
    SG_FUZZ_ASSERT(k == size && (size == 0 || memcmp(back, data, size) == 0));

    free(back);
    free(dst);
    free(src.data);
}

/* CRAM-MD5 and OAuth payloads: views stay inside the message. */
static void
sg_fuzz_tokens(const uint8_t *data, size_t size)
{
    sg_str_t  m, u, t;
    u_char   *end;

    m.data = sg_fuzz_alloc(data, size);
    m.len = size;
    end = m.data + size;
    if (sg_sasl_xoauth2_split(&m, &u, &t) == SG_OK) {
        SG_FUZZ_ASSERT(u.len > 0 && t.len > 0 && u.data >= m.data
                       && u.data + u.len <= end && t.data + t.len <= end);
    }
    if (sg_sasl_oauthbearer_split(&m, &u, &t) == SG_OK) {
        SG_FUZZ_ASSERT(t.len > 0 && u.data + u.len <= end
                       && t.data >= m.data && t.data + t.len <= end);
    }
    if (sg_sasl_cram_md5_split(&m, &u, &t) == SG_OK) {
        SG_FUZZ_ASSERT(u.len > 0 && t.len == 32
                       && t.data + t.len == end);
    }
    free(m.data);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_str_t src, dec;

    sg_fuzz_base64(data, size);
    sg_fuzz_plain(data, size);
    sg_fuzz_xtext(data, size);
    sg_fuzz_tokens(data, size);

    /* And what a client's base64 answer decodes to, as AUTH sees it. */
    src.data = sg_fuzz_alloc(data, size);
    src.len = size;
    dec.data = sg_fuzz_alloc(NULL, sg_base64_decoded_len(size));
    if (sg_base64_decode(&dec, &src) == SG_OK) {
        sg_fuzz_plain(dec.data, dec.len);
    }
    free(dec.data);
    free(src.data);
    return 0;
}
