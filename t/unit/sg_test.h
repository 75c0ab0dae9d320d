/*
 * sg_test.h: the unit-test harness for the pure parsers.
 *
 * What it does: CHECK macros that count a pass, or print file:line, the
 * expression and both values on a failure and carry on; RUN() to run a
 * test function under its name; sg_test_finish() to print the final
 * "N passed, N failed" line and pick the exit status.
 * What it owns: the counters and the copies made by sg_test_bytes(),
 * which RUN() frees after each test.  It is included by exactly one test
 * program at a time, so its state is static to that program.
 * What it refuses: to run for ever; sg_test_start() arms an alarm, and a
 * hung test kills the program with a non-zero status.
 *
 * The macros drop the SG_ prefix on purpose: test bodies are mostly
 * checks, the header is never included by the server, and CHECK_STR
 * reads better than SG_TEST_CHECK_STR a hundred times over.
 */
#ifndef SG_TEST_H
#define SG_TEST_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SG_TEST_TIMEOUT  60   /* seconds, for the whole program */
#define SG_TEST_SHOW_MAX 96   /* bytes of a string shown on failure */
#define SG_TEST_COPIES   4096 /* sg_test_bytes() copies per test */

static unsigned long sg_test_passed;
static unsigned long sg_test_failed;
static const char   *sg_test_name = "(none)";
static void         *sg_test_copies[SG_TEST_COPIES];
static size_t        sg_test_ncopies;

/* Returns whether the check failed, so callers can skip checks that
 * would only repeat the failure or read through a bad pointer. */
static inline int
sg_test_result(int ok, const char *file, int line, const char *expr)
{
    if (ok) {
        sg_test_passed++;
        return 0;
    }
    sg_test_failed++;
    printf("FAIL %s:%d: in %s: %s\n", file, line, sg_test_name, expr);
    return 1;
}

/* Print bytes so that binary and control characters stay readable. */
static inline void
sg_test_show(const char *label, const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t               i, n;

    n = len < SG_TEST_SHOW_MAX ? len : SG_TEST_SHOW_MAX;
    printf("    %s (%zu bytes): \"", label, len);
    for (i = 0; i < n; i++) {
        if (p[i] == '\\' || p[i] == '"') {
            printf("\\%c", p[i]);
        } else if (p[i] >= 0x20 && p[i] < 0x7f) {
            putchar(p[i]);
        } else {
            printf("\\x%02x", p[i]);
        }
    }
    printf("\"%s\n", n < len ? "..." : "");
}

static inline int
sg_test_int(intmax_t got, intmax_t want, const char *file, int line,
            const char *expr)
{
    if (sg_test_result(got == want, file, line, expr)) {
        printf("    got %jd, want %jd\n", got, want);
        return 1;
    }
    return 0;
}

static inline int
sg_test_uint(uintmax_t got, uintmax_t want, const char *file, int line,
             const char *expr)
{
    if (sg_test_result(got == want, file, line, expr)) {
        printf("    got %ju, want %ju\n", got, want);
        return 1;
    }
    return 0;
}

static inline int
sg_test_mem(const void *got, size_t got_len, const void *want, size_t want_len,
            const char *file, int line, const char *expr)
{
    int ok;

    ok = got_len == want_len
         && (got_len == 0 || (got != NULL && memcmp(got, want, got_len) == 0));
    if (sg_test_result(ok, file, line, expr)) {
        if (got == NULL) {
            got = "";
            got_len = 0;
        }
        sg_test_show("got ", got, got_len);
        sg_test_show("want", want, want_len);
        return 1;
    }
    return 0;
}

/*
 * A heap copy of exactly n bytes, so that AddressSanitizer reports any
 * read one byte past what a parser was given; with data NULL, n zeroed
 * bytes to write into.  Freed after the test.  Not inlined: gcc would
 * then see malloc and warn that the end pointer a test passes along
 * (p + n) points at memory never written.
 */
static __attribute__((noinline, unused)) unsigned char *
sg_test_bytes(const void *data, size_t n)
{
    unsigned char *p;

    if (sg_test_ncopies == SG_TEST_COPIES) {
        printf("Bail out: more than %d copies in %s\n", SG_TEST_COPIES,
               sg_test_name);
        exit(2);
    }
    p = malloc(n ? n : 1);
    if (p == NULL) {
        printf("Bail out: out of memory\n");
        exit(2);
    }
    if (data != NULL) {
        memcpy(p, data, n);
    } else {
        memset(p, 0, n);
    }
    sg_test_copies[sg_test_ncopies++] = p;
    return p;
}

static inline void
sg_test_run(void (*fn)(void), const char *name)
{
    unsigned long failed = sg_test_failed;

    sg_test_name = name;
    fn();
    while (sg_test_ncopies) {
        free(sg_test_copies[--sg_test_ncopies]);
    }
    if (sg_test_failed != failed) {
        printf("not ok: %s\n", name);
    }
    sg_test_name = "(none)";
}

static inline void
sg_test_start(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(SG_TEST_TIMEOUT);
}

static inline int
sg_test_finish(void)
{
    printf("%lu passed, %lu failed\n", sg_test_passed, sg_test_failed);
    return sg_test_failed ? 1 : 0;
}

#define RUN(fn) sg_test_run(fn, #fn)

#define CHECK(cond) sg_test_result((cond) ? 1 : 0, __FILE__, __LINE__, #cond)

#define CHECK_INT(got, want)                                                   \
    sg_test_int((intmax_t) (got), (intmax_t) (want), __FILE__, __LINE__,       \
                "CHECK_INT(" #got ", " #want ")")

#define CHECK_UINT(got, want)                                                  \
    sg_test_uint((uintmax_t) (got), (uintmax_t) (want), __FILE__, __LINE__,    \
                 "CHECK_UINT(" #got ", " #want ")")

/* got is an sg_str_t (or anything with len and data); want a literal or
 * a C string: for wanted bytes with NULs in them use CHECK_MEM. */
#define CHECK_STR(got, want)                                                   \
    sg_test_mem((got).data, (got).len, (want), strlen(want), __FILE__,         \
                __LINE__, "CHECK_STR(" #got ", " #want ")")

#define CHECK_MEM(got, got_len, want, want_len)                                \
    sg_test_mem((got), (got_len), (want), (want_len), __FILE__, __LINE__,      \
                "CHECK_MEM(" #got ", " #want ")")

#endif /* SG_TEST_H */
