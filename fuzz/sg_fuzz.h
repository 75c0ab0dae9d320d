/*
 * sg_fuzz.h: what every harness shares: an invariant check that aborts
 * with the place and the condition, so that libFuzzer keeps the input,
 * and hex decoding for the escaping checks.
 */
#ifndef SG_FUZZ_H
#define SG_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

#define SG_FUZZ_ASSERT(cond)                                                   \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

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
