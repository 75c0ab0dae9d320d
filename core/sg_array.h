/*
 * sg_array.h: a growable array of fixed-size elements living in a pool.
 * Growing copies into a larger pool block; the old block stays in the
 * pool until it is destroyed, so element pointers taken before a push
 * may go stale: keep indexes, not pointers, across pushes.
 */
#ifndef SG_ARRAY_H
#define SG_ARRAY_H

typedef struct {
    void       *elts;
    size_t      nelts;
    size_t      size;
    size_t      nalloc;
    sg_pool_t  *pool;
} sg_array_t;

sg_array_t *sg_array_create(sg_pool_t *pool, size_t n, size_t size);
int sg_array_init(sg_array_t *a, sg_pool_t *pool, size_t n, size_t size);
void *sg_array_push(sg_array_t *a);   /* zeroed element, NULL on ENOMEM */

#define sg_array_elt(a, type, i)  (&((type *) (a)->elts)[i])

#endif /* SG_ARRAY_H */
