/*
 * test_hash.c: unit tests for SipHash-2-4 and the keyed hash of the
 * shared tables (limit_conn, auth_fail_limit).
 *
 * The vectors are the reference ones of the SipHash paper: key 00 01 ..
 * 0f, messages 00 01 .. of every length; a few lengths cover the empty
 * message, a partial word, whole words and both together.
 */
#include "sg_core.h"
#include "sg_test.h"

static void
test_reference_vectors(void)
{
    static const struct {
        size_t    len;
        uint64_t  want;
    } v[] = {
        { 0, 0x726fdb47dd0e0e31ULL },
        { 1, 0x74f839c593dc67fdULL },
        { 7, 0xab0200f58b01d137ULL },
        { 8, 0x93f5f5799a932462ULL },
        { 15, 0xa129ca6149be45e5ULL },
        { 63, 0x958a324ceb064572ULL },
    };
    u_char  key[16], msg[64];
    size_t  i;

    for (i = 0; i < 16; i++) {
        key[i] = (u_char) i;
    }
    for (i = 0; i < 64; i++) {
        msg[i] = (u_char) i;
    }
    for (i = 0; i < sg_nelems(v); i++) {
        CHECK_UINT(sg_siphash(key, sg_test_bytes(msg, v[i].len), v[i].len),
                   v[i].want);
    }
}

static void
test_keyed(void)
{
    u_char    key[16] = { 0 };
    uint64_t  a, b;

    CHECK_INT(sg_keyed_hash_init(), SG_OK);
    a = sg_keyed_hash(sg_test_bytes("192.0.2.7", 9), 9);
    b = sg_keyed_hash(sg_test_bytes("192.0.2.7", 9), 9);
    CHECK_UINT(a, b);
    CHECK(a != sg_keyed_hash(sg_test_bytes("192.0.2.8", 9), 9));
    /* not the unkeyed value: the secret is not all zeroes */
    CHECK(a != sg_siphash(key, sg_test_bytes("192.0.2.7", 9), 9));
}

int
main(void)
{
    sg_test_start();

    RUN(test_reference_vectors);
    RUN(test_keyed);

    return sg_test_finish();
}
