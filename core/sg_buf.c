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

/*
 * Buffers given back are kept on a short free list per size (a worker
 * uses a handful of sizes: the client buffer, proxy_buffer, the
 * handshake buffer), so that a buffer freed by one session is the one
 * the next session takes.  Handing them to free() would let long-lived
 * allocations settle into the holes, and the heap would grow by a
 * buffer for each connection that ever was busy.
 */
#define SG_BUF_CLASSES     4
#define SG_BUF_KEEP        32

typedef struct sg_buf_free_s  sg_buf_free_t;

struct sg_buf_free_s {
    sg_buf_free_t  *next;
};

static struct {
    size_t          size;
    size_t          n;
    sg_buf_free_t  *head;
} sg_buf_cache[SG_BUF_CLASSES];

int
sg_buf_take(sg_buf_t *b, size_t size)
{
    u_char  *p = NULL;
    size_t   i;

    if (b->start) {
        return SG_OK;
    }
    for (i = 0; i < SG_BUF_CLASSES; i++) {
        if (sg_buf_cache[i].size == size && sg_buf_cache[i].head) {
            p = (u_char *) sg_buf_cache[i].head;
            sg_buf_cache[i].head = sg_buf_cache[i].head->next;
            sg_buf_cache[i].n--;
            break;
        }
    }
    if (p == NULL) {
        p = malloc(sg_max(size, sizeof(sg_buf_free_t)));
        if (p == NULL) {
            return SG_ERROR;
        }
    }
    b->start = b->pos = b->last = p;
    b->end = p + size;
    return SG_OK;
}

void
sg_buf_give(sg_buf_t *b)
{
    sg_buf_free_t  *f;
    size_t          i, size;

    if (b->start == NULL) {
        return;
    }
    size = sg_buf_cap(b);
    for (i = 0; i < SG_BUF_CLASSES; i++) {
        if (sg_buf_cache[i].size == 0) {
            sg_buf_cache[i].size = size;          /* a new class */
        }
        if (sg_buf_cache[i].size == size) {
            break;
        }
    }
    if (i < SG_BUF_CLASSES && sg_buf_cache[i].n < SG_BUF_KEEP) {
        f = (sg_buf_free_t *) b->start;
        f->next = sg_buf_cache[i].head;
        sg_buf_cache[i].head = f;
        sg_buf_cache[i].n++;
    } else {
        free(b->start);
    }
    b->start = b->pos = b->last = b->end = NULL;
}
