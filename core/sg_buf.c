/*
 * sg_buf.c: bounded byte buffers (see sg_buf.h for the invariant).
 */
#include "sg_core.h"

int
sg_buf_init(sg_pool_t *pool, sg_buf_t *b, size_t size)
{
    b->start = sg_pnalloc(pool, size);
    if (b->start == NULL) {
        return SG_ERROR;
    }
    b->pos = b->start;
    b->last = b->start;
    b->end = b->start + size;
    return SG_OK;
}

sg_buf_t *
sg_buf_create(sg_pool_t *pool, size_t size)
{
    sg_buf_t  *b;

    b = sg_palloc(pool, sizeof(sg_buf_t));
    if (b == NULL || sg_buf_init(pool, b, size) != SG_OK) {
        return NULL;
    }
    return b;
}

void
sg_buf_compact(sg_buf_t *b)
{
    size_t  n;

    if (b->pos == b->start) {
        return;
    }
    n = sg_buf_size(b);
    if (n) {
        memmove(b->start, b->pos, n);
    }
    b->pos = b->start;
    b->last = b->start + n;
}

int
sg_buf_append(sg_buf_t *b, const void *data, size_t n)
{
    if (sg_buf_free(b) < n) {
        sg_buf_compact(b);
        if (sg_buf_free(b) < n) {
            return SG_ERROR;
        }
    }
    memcpy(b->last, data, n);
    b->last += n;
    return SG_OK;
}

int
sg_buf_take(sg_buf_t *b, size_t size)
{
    u_char  *p;

    if (b->start) {
        return SG_OK;
    }
    p = malloc(size);
    if (p == NULL) {
        return SG_ERROR;
    }
    b->start = b->pos = b->last = p;
    b->end = p + size;
    return SG_OK;
}

void
sg_buf_give(sg_buf_t *b)
{
    free(b->start);
    b->start = b->pos = b->last = b->end = NULL;
}
