/*
 * fuzz_dns.c: libFuzzer harness for DNS answers (core/sg_dns.c).
 *
 * The first byte picks the query the rest answers: a PTR for
 * 2.0.0.127.in-addr.arpa, an A or an AAAA for client.test (the seeds
 * carry those questions, so that the fuzzer gets past them).  The
 * message is parsed from an exact-size copy.  Beyond the sanitizers it
 * checks that an error always names a cause, that what an answer
 * reports stays within its limits (counts, lengths, TTL), that a PTR's
 * name has no byte a name compared here cannot have, that a message
 * cut short never yields more records than the whole, and that the
 * query for the same question is never taken for its answer.
 */
#include "sg_core.h"
#include "sg_dns.h"
#include "sg_fuzz.h"

static const struct {
    const char  *name;
    uint16_t     type;
} sg_fuzz_questions[] = {
    { "2.0.0.127.in-addr.arpa", SG_DNS_PTR },
    { "client.test", SG_DNS_A },
    { "client.test", SG_DNS_AAAA },
};

static int
sg_fuzz_parse(const u_char *data, size_t n, const sg_str_t *name,
    uint16_t type, sg_dns_answer_t *a, const char **err)
{
    u_char  *copy = sg_fuzz_copy(data, n);
    int      rc;

    *err = NULL;
    rc = sg_dns_parse(copy, n, name, type, a, err);
    free(copy);
    return rc;
}

static void
sg_fuzz_answer(const sg_dns_answer_t *a, uint16_t type)
{
    size_t  i;

    SG_FUZZ_ASSERT(a->rcode <= 15);
    SG_FUZZ_ASSERT(a->naddrs <= SG_DNS_ADDRS_MAX && a->naddrs <= a->n);
    SG_FUZZ_ASSERT(a->name_len <= 253);
    if (a->n == 0) {
        SG_FUZZ_ASSERT(a->ttl == 0 && a->name_len == 0 && a->naddrs == 0);
        return;
    }
    SG_FUZZ_ASSERT(a->ttl <= INT32_MAX);
    if (type == SG_DNS_PTR) {
        SG_FUZZ_ASSERT(a->naddrs == 0);
        for (i = 0; i < a->name_len; i++) {
            SG_FUZZ_ASSERT(a->name[i] > ' ' && a->name[i] <= '~');
        }
        (void) sg_dns_host_name_ok(a->name, a->name_len);
    } else {
        SG_FUZZ_ASSERT(a->name_len == 0
                       && a->naddrs == sg_min(a->n, SG_DNS_ADDRS_MAX));
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_dns_answer_t  a, cut;
    const char      *err;
    sg_str_t         name;
    uint16_t         type;
    u_char           query[SG_DNS_NAME_MAX + 32];
    size_t           q, len;
    int              rc;

    if (size == 0) {
        return 0;
    }
    q = data[0] % sg_nelems(sg_fuzz_questions);
    name.data = (u_char *) sg_fuzz_questions[q].name;
    name.len = strlen(sg_fuzz_questions[q].name);
    type = sg_fuzz_questions[q].type;
    data++;
    size--;

    rc = sg_fuzz_parse(data, size, &name, type, &a, &err);
    if (rc != SG_OK) {
        SG_FUZZ_ASSERT(rc == SG_ERROR && err != NULL && *err != '\0');
    } else {
        sg_fuzz_answer(&a, type);
        /* Cut short, a message never says more than whole (unless the
         * cut makes it an error). */
        for (len = 12; len < size; len += 1 + len / 4) {
            if (sg_fuzz_parse(data, len, &name, type, &cut, &err)
                == SG_OK && !a.truncated)
            {
                SG_FUZZ_ASSERT(cut.n <= a.n || a.rcode != cut.rcode);
            }
        }
    }
    (void) sg_dns_id(data, size);

    /* The query for this question is not its own answer. */
    len = sg_dns_query(query, sizeof(query), 0x1234, &name, type);
    SG_FUZZ_ASSERT(len > 12);
    SG_FUZZ_ASSERT(sg_fuzz_parse(query, len, &name, type, &cut, &err)
                   == SG_ERROR);
    return 0;
}
