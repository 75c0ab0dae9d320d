/*
 * sg_map_keys.c: sorted key tables for the map module (see sg_map.h).
 *
 * Pure functions over arrays the caller owns: no allocation, no I/O, no
 * global state.  Refuses nothing at lookup; what a key may look like is
 * decided by sg_map_hostname_key() when the configuration loads.
 */
#include "sg_map.h"

void
sg_map_lowercase(sg_str_t *key)
{
    size_t  i;

    for (i = 0; i < key->len; i++) {
        key->data[i] = sg_tolower(key->data[i]);
    }
}

sg_map_key_e
sg_map_hostname_key(sg_str_t *key, bool *also_exact)
{
    u_char  *star;

    *also_exact = false;
    if (key->len >= 3 && key->data[0] == '*' && key->data[1] == '.') {
        key->data++;                           /* "*.example.org" */
        key->len--;
        return memchr(key->data, '*', key->len) ? SG_MAP_KEY_INVALID
                                                : SG_MAP_KEY_HEAD;
    }
    if (key->len >= 2 && key->data[0] == '.') {
        *also_exact = true;                    /* ".example.org" */
        return memchr(key->data, '*', key->len) ? SG_MAP_KEY_INVALID
                                                : SG_MAP_KEY_HEAD;
    }
    if (key->len >= 3 && key->data[key->len - 1] == '*'
        && key->data[key->len - 2] == '.')
    {
        key->len--;                            /* "mail.*" */
        return memchr(key->data, '*', key->len) ? SG_MAP_KEY_INVALID
                                                : SG_MAP_KEY_TAIL;
    }
    star = memchr(key->data, '*', key->len);
    if (star || key->len == 0 || (key->len == 1 && key->data[0] == '.')) {
        return SG_MAP_KEY_INVALID;
    }
    if (key->data[key->len - 1] == '.') {
        key->len--;                            /* "example.org." */
    }
    return SG_MAP_KEY_EXACT;
}

int
sg_map_cmp(const u_char *a, size_t alen, const u_char *b, size_t blen)
{
    size_t  i, n = sg_min(alen, blen);
    u_char  ca, cb;

    for (i = 0; i < n; i++) {
        ca = sg_tolower(a[i]);
        cb = sg_tolower(b[i]);
        if (ca != cb) {
            return ca < cb ? -1 : 1;
        }
    }
    return alen == blen ? 0 : alen < blen ? -1 : 1;
}

static int
sg_map_key_cmp(const void *a, const void *b)
{
    const sg_map_key_t  *x = a, *y = b;

    return sg_map_cmp(x->key.data, x->key.len, y->key.data, y->key.len);
}

void
sg_map_sort(sg_map_key_t *keys, size_t n)
{
    if (n > 1) {
        qsort(keys, n, sizeof(sg_map_key_t), sg_map_key_cmp);
    }
}

ssize_t
sg_map_duplicate(const sg_map_key_t *keys, size_t n)
{
    size_t  i;

    for (i = 1; i < n; i++) {
        if (sg_map_key_cmp(&keys[i - 1], &keys[i]) == 0) {
            return keys[i].order > keys[i - 1].order ? (ssize_t) i
                                                     : (ssize_t) i - 1;
        }
    }
    return -1;
}

const sg_map_key_t *
sg_map_find(const sg_map_key_t *keys, size_t n, const u_char *p, size_t len)
{
    size_t  lo = 0, hi = n, mid;
    int     c;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        c = sg_map_cmp(keys[mid].key.data, keys[mid].key.len, p, len);
        if (c == 0) {
            return &keys[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

const sg_map_key_t *
sg_map_find_head(const sg_map_key_t *keys, size_t n, const sg_str_t *name)
{
    const sg_map_key_t  *k;
    size_t               i;

    /* From the left: the first dot gives the longest suffix. */
    for (i = 0; i < name->len; i++) {
        if (name->data[i] != '.') {
            continue;
        }
        k = sg_map_find(keys, n, name->data + i, name->len - i);
        if (k) {
            return k;
        }
    }
    return NULL;
}

const sg_map_key_t *
sg_map_find_tail(const sg_map_key_t *keys, size_t n, const sg_str_t *name)
{
    const sg_map_key_t  *k;
    size_t               i;

    /* From the right: the last dot gives the longest prefix. */
    for (i = name->len; i > 0; i--) {
        if (name->data[i - 1] != '.') {
            continue;
        }
        k = sg_map_find(keys, n, name->data, i);
        if (k) {
            return k;
        }
    }
    return NULL;
}
