/*
 * test_map.c: unit tests for the map module's key tables: hostname key
 * forms, sorting without regard to case, duplicates, exact and wildcard
 * lookups.
 *
 * Names looked up are exact-size heap copies, so a read past their end
 * is a sanitizer report; the wildcard lookups are driven at the label
 * boundaries where an off-by-one would show.
 */
#include "sg_map.h"
#include "sg_test.h"

static sg_str_t
str(const char *s)
{
    sg_str_t  v;

    v.len = strlen(s);
    v.data = sg_test_bytes(s, v.len);
    return v;
}

static sg_map_key_e
classify(const char *s, sg_str_t *out, bool *also)
{
    *out = str(s);
    return sg_map_hostname_key(out, also);
}

static void
test_hostname_keys(void)
{
    sg_str_t  k;
    bool      also;

    CHECK_INT(classify("mx.example.org", &k, &also), SG_MAP_KEY_EXACT);
    CHECK_STR(k, "mx.example.org");
    CHECK(!also);
    CHECK_INT(classify("mx.example.org.", &k, &also), SG_MAP_KEY_EXACT);
    CHECK_STR(k, "mx.example.org");

    CHECK_INT(classify("*.example.org", &k, &also), SG_MAP_KEY_HEAD);
    CHECK_STR(k, ".example.org");
    CHECK(!also);
    CHECK_INT(classify(".example.org", &k, &also), SG_MAP_KEY_HEAD);
    CHECK_STR(k, ".example.org");
    CHECK(also);

    CHECK_INT(classify("mail.*", &k, &also), SG_MAP_KEY_TAIL);
    CHECK_STR(k, "mail.");

    CHECK_INT(classify("*", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify("*.", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify(".", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify("", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify("a*b", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify("*.a.*", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify("*.*", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify("mail*", &k, &also), SG_MAP_KEY_INVALID);
    CHECK_INT(classify(".*", &k, &also), SG_MAP_KEY_INVALID);
}

static void
test_cmp(void)
{
    CHECK_INT(sg_map_cmp((u_char *) "abc", 3, (u_char *) "ABC", 3), 0);
    CHECK_INT(sg_map_cmp((u_char *) "ab", 2, (u_char *) "abc", 3), -1);
    CHECK_INT(sg_map_cmp((u_char *) "abd", 3, (u_char *) "ABC", 3), 1);
    /* Bytes above 0x7f are compared as they are. */
    CHECK(sg_map_cmp((u_char *) "\xc3\xa9", 2, (u_char *) "\xc3\x89", 2)
          != 0);
}

static void
table(sg_map_key_t *keys, const char **names, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        memset(&keys[i], 0, sizeof(keys[i]));
        keys[i].key = str(names[i]);
        keys[i].value = (void *) names[i];
        keys[i].order = i;
        keys[i].line = 10 + i;
    }
    sg_map_sort(keys, n);
}

static const char *
find(const sg_map_key_t *keys, size_t n, const char *s)
{
    sg_str_t             v = str(s);
    const sg_map_key_t  *k = sg_map_find(keys, n, v.data, v.len);

    return k ? k->value : NULL;
}

static void
check_found(const char *got, const char *want, const char *what)
{
    if (want == NULL) {
        if (CHECK(got == NULL)) {
            printf("    %s found %s\n", what, got);
        }
        return;
    }
    if (CHECK(got != NULL && strcmp(got, want) == 0)) {
        printf("    %s: got %s, want %s\n", what, got ? got : "(none)",
               want);
    }
}

static void
test_exact(void)
{
    static const char  *names[] = {
        "u1@example.org", "b", "a", "postmaster", "u1@example.net", "ab"
    };
    sg_map_key_t        keys[6];

    table(keys, names, 6);
    CHECK_INT(sg_map_duplicate(keys, 6), -1);
    check_found(find(keys, 6, "a"), "a", "a");
    check_found(find(keys, 6, "ab"), "ab", "ab");
    check_found(find(keys, 6, "B"), "b", "B");
    check_found(find(keys, 6, "U1@Example.ORG"), "u1@example.org", "U1");
    check_found(find(keys, 6, "u1@example.ne"), NULL, "prefix");
    check_found(find(keys, 6, "u1@example.nett"), NULL, "longer");
    check_found(find(keys, 6, ""), NULL, "empty");
    check_found(find(keys, 0, "a"), NULL, "empty table");
}

static void
test_duplicates(void)
{
    static const char  *names[] = { "x", "Mail", "y", "mail" };
    sg_map_key_t        keys[4];
    ssize_t             d;

    table(keys, names, 4);
    d = sg_map_duplicate(keys, 4);
    if (!CHECK(d >= 0)) {
        /* The one written second (order 3) is reported. */
        CHECK_UINT(keys[d].order, 3);
        CHECK_UINT(keys[d].line, 13);
    }
}

static void
test_head(void)
{
    static const char  *names[] = {
        ".example.org", ".b.example.org", ".net"
    };
    sg_map_key_t        keys[3];
    sg_str_t            n;

    table(keys, names, 3);
#define HEAD(s) (n = str(s), sg_map_find_head(keys, 3, &n)                   \
                 ? (const char *) sg_map_find_head(keys, 3, &n)->value : NULL)
    check_found(HEAD("a.example.org"), ".example.org", "a.example.org");
    check_found(HEAD("a.b.example.org"), ".b.example.org", "longest");
    check_found(HEAD("b.example.org"), ".example.org", "b.example.org");
    check_found(HEAD("A.EXAMPLE.ORG"), ".example.org", "case");
    /* The name itself is not below itself. */
    check_found(HEAD("example.org"), NULL, "example.org");
    check_found(HEAD("xexample.org"), NULL, "no label boundary");
    check_found(HEAD("x.net"), ".net", "x.net");
    check_found(HEAD("net"), NULL, "net");
    check_found(HEAD(""), NULL, "empty");
    check_found(HEAD("."), NULL, "dot");
#undef HEAD
}

static void
test_tail(void)
{
    static const char  *names[] = { "mail.", "mail.example." };
    sg_map_key_t        keys[2];
    sg_str_t            n;

    table(keys, names, 2);
#define TAIL(s) (n = str(s), sg_map_find_tail(keys, 2, &n)                   \
                 ? (const char *) sg_map_find_tail(keys, 2, &n)->value : NULL)
    check_found(TAIL("mail.example.org"), "mail.example.", "longest");
    check_found(TAIL("mail.example"), "mail.", "mail.example");
    check_found(TAIL("MAIL.test"), "mail.", "case");
    check_found(TAIL("mailx.test"), NULL, "no label boundary");
    check_found(TAIL("mail"), NULL, "mail");
    check_found(TAIL(""), NULL, "empty");
#undef TAIL
}

int
main(void)
{
    sg_test_start();
    RUN(test_hostname_keys);
    RUN(test_cmp);
    RUN(test_exact);
    RUN(test_duplicates);
    RUN(test_head);
    RUN(test_tail);
    return sg_test_finish();
}
