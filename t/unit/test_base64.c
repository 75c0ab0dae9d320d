/*
 * test_base64.c: unit tests for the strict base64 codec.
 *
 * The RFC 4648 vectors show it encodes and decodes at all; the rest
 * tries to make the decoder accept something it should not: bad
 * lengths, misplaced or extra padding, non-zero pad bits, whitespace,
 * the URL-safe alphabet, NUL and eight-bit bytes, every octet in every
 * position of a quantum.
 */
#include "sg_core.h"
#include "sg_test.h"

#define LIT(s) (s), (sizeof(s) - 1)

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int
decode(const char *s, size_t n, sg_str_t *out)
{
    sg_str_t src;

    src.data = sg_test_bytes(s, n);
    src.len = n;
    out->data = sg_test_bytes(NULL, sg_base64_decoded_len(n));
    out->len = 12345;
    return sg_base64_decode(out, &src);
}

static void
encode(const char *s, size_t n, sg_str_t *out)
{
    sg_str_t src;

    src.data = sg_test_bytes(s, n);
    src.len = n;
    out->data = sg_test_bytes(NULL, sg_base64_encoded_len(n));
    out->len = 12345;
    sg_base64_encode(out, &src);
}

static void
vector(const char *plain, size_t n, const char *b64)
{
    sg_str_t out;

    encode(plain, n, &out);
    CHECK_STR(out, b64);
    CHECK_INT(decode(b64, strlen(b64), &out), SG_OK);
    CHECK_MEM(out.data, out.len, plain, n);
}

static void
test_vectors(void)
{
    /* RFC 4648 10. */
    vector(LIT(""), "");
    vector(LIT("f"), "Zg==");
    vector(LIT("fo"), "Zm8=");
    vector(LIT("foo"), "Zm9v");
    vector(LIT("foob"), "Zm9vYg==");
    vector(LIT("fooba"), "Zm9vYmE=");
    vector(LIT("foobar"), "Zm9vYmFy");
    /* RFC 4616 4: the SASL PLAIN example. */
    vector(LIT("\0tim\0tanstaaftanstaaf"), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    vector(LIT("\0\0\0"), "AAAA");
    vector(LIT("\xff\xff\xff"), "////");
    vector(LIT("\xfb\xff"), "+/8=");
    vector(LIT("\xc3\xa9"), "w6k=");
}

static void
test_lengths(void)
{
    CHECK_UINT(sg_base64_encoded_len(0), 0);
    CHECK_UINT(sg_base64_encoded_len(1), 4);
    CHECK_UINT(sg_base64_encoded_len(3), 4);
    CHECK_UINT(sg_base64_encoded_len(4), 8);
    CHECK_UINT(sg_base64_decoded_len(0), 0);
    CHECK_UINT(sg_base64_decoded_len(4), 3);
    CHECK_UINT(sg_base64_decoded_len(5), 6);
    CHECK_UINT(sg_base64_decoded_len(8), 6);
}

static void
test_empty_null(void)
{
    sg_str_t none = { 0, NULL }, out;
    u_char   byte;

    out.data = &byte;
    out.len = 7;
    sg_base64_encode(&out, &none);
    CHECK_UINT(out.len, 0);
    out.len = 7;
    CHECK_INT(sg_base64_decode(&out, &none), SG_OK);
    CHECK_UINT(out.len, 0);
}

/* Every length from 0 to 300 over pseudo-random bytes, both ways. */
static void
test_roundtrip(void)
{
    u_char   buf[300];
    sg_str_t enc, dec;
    uint32_t x = 2463534242u;
    size_t   n, i;

    for (n = 0; n <= sizeof(buf); n++) {
        for (i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf[i] = (u_char) x;
        }
        encode((char *) buf, n, &enc);
        CHECK_UINT(enc.len, sg_base64_encoded_len(n));
        CHECK_INT(decode((char *) enc.data, enc.len, &dec), SG_OK);
        if (CHECK_MEM(dec.data, dec.len, buf, n)) {
            printf("    at length %zu\n", n);
        }
    }
}

static void
test_bad_length(void)
{
    sg_str_t out;

    CHECK_INT(decode(LIT("Z"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zg"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zg="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9vY"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9vYg"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9vYg="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9vYg==="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("="), &out), SG_ERROR);
    CHECK_UINT(out.len, 0);
}

static void
test_bad_padding(void)
{
    sg_str_t out;

    CHECK_INT(decode(LIT("===="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Z==="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("=Zg="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zg=g"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Z=g="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm=v"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zg==Zm9v"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm8=Zm9v"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9v===="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9vZ==="), &out), SG_ERROR);
    /* Padding left off is not guessed at. */
    CHECK_INT(decode(LIT("Zm9vYg"), &out), SG_ERROR);

    /* Non-zero pad bits: a second spelling of the same octets. */
    CHECK_INT(decode(LIT("Zh=="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zv=="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm/="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9vYh=="), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zg=="), &out), SG_OK);
    CHECK_INT(decode(LIT("Zm8="), &out), SG_OK);
}

static void
test_bad_chars(void)
{
    sg_str_t out;

    CHECK_INT(decode(LIT("Zm9v\n"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9v\r\n"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm 9"), &out), SG_ERROR);
    CHECK_INT(decode(LIT(" Zm9"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9vZm9 "), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9\t"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9v\r\nZm9v"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm-v"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm_v"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9\0"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("\0\0\0\0"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9\x80"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9\xff"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm.v"), &out), SG_ERROR);
    CHECK_INT(decode(LIT("Zm9v*Zm="), &out), SG_ERROR);
    CHECK_UINT(out.len, 0);
}

/*
 * Every octet in every position of "Zm9v" and of the padded last
 * quantum: only the alphabet decodes, and in "X?==" only characters
 * whose low four bits are zero.
 */
static void
test_every_octet(void)
{
    char     q[4];
    sg_str_t out;
    int      c, pos, want;
    size_t   lost;

    for (pos = 0; pos < 4; pos++) {
        for (c = 0; c < 256; c++) {
            memcpy(q, "Zm9v", 4);
            q[pos] = (char) c;
            want = (c != 0 && strchr(alphabet, c) != NULL) ? SG_OK : SG_ERROR;
            if (CHECK_INT(decode(q, 4, &out), want)) {
                printf("    octet 0x%02x at %d\n", c, pos);
            }
        }
    }

    for (c = 0; c < 256; c++) {
        memcpy(q, "Q?==", 4);
        q[1] = (char) c;
        want = SG_ERROR;
        if (c != 0 && strchr(alphabet, c) != NULL) {
            lost = (size_t) (strchr(alphabet, c) - alphabet) & 0x0f;
            want = lost ? SG_ERROR : SG_OK;
        }
        if (CHECK_INT(decode(q, 4, &out), want)) {
            printf("    octet 0x%02x\n", c);
        }
    }
}

static void
test_in_place(void)
{
    sg_str_t s;
    u_char  *buf;

    buf = sg_test_bytes(LIT("AHRpbQB0YW5zdGFhZnRhbnN0YWFm"));
    s.data = buf;
    s.len = 28;
    CHECK_INT(sg_base64_decode(&s, &s), SG_OK);
    CHECK_MEM(s.data, s.len, "\0tim\0tanstaaftanstaaf", 21);
    CHECK(s.data == buf);

    buf = sg_test_bytes(LIT("Zm9vYmE="));
    s.data = buf;
    s.len = 8;
    CHECK_INT(sg_base64_decode(&s, &s), SG_OK);
    CHECK_STR(s, "fooba");

    s.len = 0;
    CHECK_INT(sg_base64_decode(&s, &s), SG_OK);
    CHECK_UINT(s.len, 0);
}

int
main(void)
{
    sg_test_start();

    RUN(test_vectors);
    RUN(test_lengths);
    RUN(test_empty_null);
    RUN(test_roundtrip);
    RUN(test_bad_length);
    RUN(test_bad_padding);
    RUN(test_bad_chars);
    RUN(test_every_octet);
    RUN(test_in_place);

    return sg_test_finish();
}
