/*
 * fuzz_map.c: libFuzzer harness for what a map does with a client's
 * bytes, and for the complex-value tokeniser.
 *
 * The input is split at LF: the last piece is the name looked up (a
 * login, a HELO name), the others are keys.  sg_map_find(),
 * sg_map_find_head() and sg_map_find_tail() are checked against slow
 * linear oracles that follow the documented rules (equal without regard
 * to ASCII case; the longest key ending / starting the name at a label
 * boundary).  The whole input is also tokenised as a complex value: the
 * tokens must tile it exactly, text never holds a '$', and names obey
 * sg_smtp_variable_name_ok().  Every buffer is an exact-size heap copy.
 */
#include "sg_smtp.h"
#include "sg_map.h"
#include "sg_fuzz.h"

#define SG_FUZZ_KEYS  64

static bool
sg_fuzz_eq(const sg_str_t *k, const u_char *p, size_t n)
{
    return sg_map_cmp(k->data, k->len, p, n) == 0;
}

/* The longest key equal to name[i..] with name[i] == '.' (head) or to
 * name[..i] with name[i - 1] == '.' (tail). */
static const sg_map_key_t *
sg_fuzz_oracle(const sg_map_key_t *keys, size_t n, const sg_str_t *name,
    bool head)
{
    const sg_map_key_t  *best = NULL;
    size_t               i, j, len;

    for (i = 0; i < name->len; i++) {
        if (name->data[i] != '.') {
            continue;
        }
        for (j = 0; j < n; j++) {
            len = head ? name->len - i : i + 1;
            if (sg_fuzz_eq(&keys[j].key, head ? name->data + i : name->data,
                           len)
                && (best == NULL || keys[j].key.len > best->key.len))
            {
                best = &keys[j];
            }
        }
    }
    return best;
}

static void
sg_fuzz_same_key(const sg_map_key_t *got, const sg_map_key_t *want)
{
    SG_FUZZ_ASSERT((got == NULL) == (want == NULL));
    if (got) {
        SG_FUZZ_ASSERT(sg_map_cmp(got->key.data, got->key.len,
                                  want->key.data, want->key.len) == 0);
    }
}

static void
sg_fuzz_lookups(const uint8_t *data, size_t size)
{
    sg_map_key_t   keys[SG_FUZZ_KEYS];
    const u_char  *p = data, *end = data + size, *lf;
    sg_str_t       name;
    size_t         n = 0, i;
    bool           dup = false;

    while ((lf = memchr(p, '\n', (size_t) (end - p))) && n < SG_FUZZ_KEYS) {
        memset(&keys[n], 0, sizeof(keys[n]));
        keys[n].key.len = (size_t) (lf - p);
        keys[n].key.data = malloc(keys[n].key.len + 1);
        SG_FUZZ_ASSERT(keys[n].key.data != NULL);
        memcpy(keys[n].key.data, p, keys[n].key.len);
        keys[n].order = n;
        n++;
        p = lf + 1;
    }
    name.len = (size_t) (end - p);
    name.data = malloc(name.len + 1);
    SG_FUZZ_ASSERT(name.data != NULL);
    memcpy(name.data, p, name.len);

    sg_map_sort(keys, n);
    for (i = 1; i < n; i++) {
        SG_FUZZ_ASSERT(sg_map_cmp(keys[i - 1].key.data, keys[i - 1].key.len,
                                  keys[i].key.data, keys[i].key.len) <= 0);
        dup = dup || sg_map_cmp(keys[i - 1].key.data, keys[i - 1].key.len,
                                keys[i].key.data, keys[i].key.len) == 0;
    }
    SG_FUZZ_ASSERT((sg_map_duplicate(keys, n) >= 0) == dup);
    if (!dup) {
        /* With duplicates which of the equal ones is found is open. */
        const sg_map_key_t  *want = NULL;

        for (i = 0; i < n; i++) {
            if (sg_fuzz_eq(&keys[i].key, name.data, name.len)) {
                want = &keys[i];
            }
        }
        sg_fuzz_same_key(sg_map_find(keys, n, name.data, name.len), want);
    }
    sg_fuzz_same_key(sg_map_find_head(keys, n, &name),
                     sg_fuzz_oracle(keys, n, &name, true));
    sg_fuzz_same_key(sg_map_find_tail(keys, n, &name),
                     sg_fuzz_oracle(keys, n, &name, false));

    for (i = 0; i < n; i++) {
        free(keys[i].key.data);
    }
    free(name.data);
}

static void
sg_fuzz_tokens(const uint8_t *data, size_t size)
{
    u_char              *buf = sg_fuzz_copy(data, size);
    const u_char        *p, *end, *before;
    sg_smtp_cv_token_t   t;
    sg_smtp_cv_token_e   tok;

    p = buf;
    end = buf + size;
    for ( ;; ) {
        before = p;
        tok = sg_smtp_cv_token(&p, end, &t);
        if (tok == SG_SMTP_CV_END) {
            SG_FUZZ_ASSERT(p == end);
            break;
        }
        if (tok == SG_SMTP_CV_ERROR) {
            SG_FUZZ_ASSERT(t.err != NULL && *before == '$');
            break;
        }
        SG_FUZZ_ASSERT(p > before && p <= end);
        switch (tok) {
        case SG_SMTP_CV_TEXT:
            SG_FUZZ_ASSERT(t.text.data == before
                           && t.text.len == (size_t) (p - before));
            SG_FUZZ_ASSERT(memchr(t.text.data, '$', t.text.len) == NULL);
            break;
        case SG_SMTP_CV_VAR:
            SG_FUZZ_ASSERT(*before == '$');
            SG_FUZZ_ASSERT(sg_smtp_variable_name_ok(&t.text));
            break;
        default:
            SG_FUZZ_ASSERT(*before == '$' && t.capture <= 9);
        }
    }
    free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_fuzz_lookups(data, size);
    sg_fuzz_tokens(data, size);
    return 0;
}
