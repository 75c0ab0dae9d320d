/*
 * sg_fuzz.h: what every harness shares: an invariant check that aborts
 * with the place and the condition, so that libFuzzer keeps the input.
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

#endif /* SG_FUZZ_H */
