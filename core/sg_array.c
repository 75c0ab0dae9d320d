/*
 * sg_array.c: pool-backed growable arrays (see sg_array.h).
 */
#include "sg_core.h"

int
sg_array_init(sg_array_t *a, sg_pool_t *pool, size_t n, size_t size)
{
    if (n == 0) {
        n = 1;
    }
    a->nelts = 0;
    a->size = size;
    a->nalloc = n;
    a->pool = pool;
    a->elts = sg_palloc(pool, n * size);
    return a->elts ? SG_OK : SG_ERROR;
}

sg_array_t *
sg_array_create(sg_pool_t *pool, size_t n, size_t size)
{
    sg_array_t  *a;

    a = sg_palloc(pool, sizeof(sg_array_t));
    if (a == NULL || sg_array_init(a, pool, n, size) != SG_OK) {
        return NULL;
    }
    return a;
}

void *
sg_array_push(sg_array_t *a)
{
    void  *n, *elt;

    if (a->nelts == a->nalloc) {
        n = sg_palloc(a->pool, 2 * a->nalloc * a->size);
        if (n == NULL) {
            return NULL;
        }
        memcpy(n, a->elts, a->nelts * a->size);
        a->elts = n;
        a->nalloc *= 2;
    }
    elt = (u_char *) a->elts + a->nelts * a->size;
    a->nelts++;
    memset(elt, 0, a->size);
    return elt;
}
