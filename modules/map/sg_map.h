/*
 * sg_map.h: the key tables of the map module, as pure functions.
 *
 * A map's exact keys, and with "hostnames" its wildcard keys, are kept
 * in arrays sorted without regard to ASCII case and searched by
 * bisection: no hashing of client-chosen strings, O(log n) per probe,
 * nothing allocated at lookup.  Kept apart from sg_map.c so that the
 * unit test (t/unit/test_map.c) can drive them without a configuration.
 */
#ifndef SG_MAP_H
#define SG_MAP_H

#include "sg_core.h"

typedef struct {
    sg_str_t     key;       /* as stored: lower case, wildcard stripped */
    void        *value;
    sg_str_t     file;      /* where written, for duplicate errors */
    size_t       line;
    size_t       order;     /* 0, 1, 2 ... as written */
} sg_map_key_t;

typedef enum {
    SG_MAP_KEY_EXACT = 0,   /* "mx.example.org" */
    SG_MAP_KEY_HEAD,        /* "*.example.org", ".example.org":
                               stored ".example.org" */
    SG_MAP_KEY_TAIL,        /* "mail.*": stored "mail." */
    SG_MAP_KEY_INVALID
} sg_map_key_e;

/*
 * A key of a "hostnames" map: which table it goes to, rewritten in
 * place to its stored form (a trailing dot of an exact name dropped).
 * *also_exact is set for ".example.org", which matches "example.org"
 * itself as well (the caller adds that exact key too).
 */
sg_map_key_e sg_map_hostname_key(sg_str_t *key, bool *also_exact);

/* Lower-case a key in place (keys are stored so). */
void sg_map_lowercase(sg_str_t *key);

/* Order by bytes without regard to ASCII case, then by length. */
int sg_map_cmp(const u_char *a, size_t alen, const u_char *b, size_t blen);
void sg_map_sort(sg_map_key_t *keys, size_t n);
/* In a sorted table: the index of the later (by order) of two equal
 * keys, or -1. */
ssize_t sg_map_duplicate(const sg_map_key_t *keys, size_t n);

/* Lookups in a sorted table; NULL when nothing matches. */
const sg_map_key_t *sg_map_find(const sg_map_key_t *keys, size_t n,
    const u_char *p, size_t len);
/* The longest HEAD key that ends name at a label boundary: for
 * "a.b.example.org", ".b.example.org" before ".example.org". */
const sg_map_key_t *sg_map_find_head(const sg_map_key_t *keys, size_t n,
    const sg_str_t *name);
/* The longest TAIL key that starts name at a label boundary: for
 * "mail.example.org", "mail.example." before "mail.". */
const sg_map_key_t *sg_map_find_tail(const sg_map_key_t *keys, size_t n,
    const sg_str_t *name);

#endif /* SG_MAP_H */
