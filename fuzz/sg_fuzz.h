/*
 * sg_fuzz.h: what every harness shares: an invariant check that aborts
 * with the place and the condition, so that libFuzzer keeps the input,
 * and hex decoding for the escaping checks.
 */
#ifndef SG_FUZZ_H
#define SG_FUZZ_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_FUZZ_ASSERT(cond)                                                   \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* An exact-size copy of the input (at least one byte allocated), so
 * that AddressSanitizer sees any read past its end; free() it. */
static inline unsigned char *
sg_fuzz_copy(const unsigned char *data, size_t n)
{
    unsigned char  *copy = malloc(n ? n : 1);

    SG_FUZZ_ASSERT(copy != NULL);
    if (n) {
        memcpy(copy, data, n);
    }
    return copy;
}

/* The value of an upper-case hex digit, -1 for anything else: the
 * escapers write upper case only. */
static inline int
sg_fuzz_hex(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

#endif /* SG_FUZZ_H */
