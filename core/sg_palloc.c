/*
 * sg_palloc.c: the region allocator (see sg_palloc.h).
 *
 * Small requests are carved from the current chunk; when it is full a
 * new chunk is chained and becomes current.  Requests above max_small
 * are malloc'd and listed so that they can be freed early or with the
 * pool.  Nothing here is thread-safe: a pool belongs to one process.
 */
#include "sg_core.h"

#define SG_POOL_ALIGN  16
#define sg_pool_align(n)                                                     \
    (((n) + SG_POOL_ALIGN - 1) & ~(size_t) (SG_POOL_ALIGN - 1))

struct sg_pool_chunk_s {
    sg_pool_chunk_t  *next;
    u_char           *last;
    u_char           *end;
};

struct sg_pool_large_s {
    sg_pool_large_t  *next;
    void             *alloc;
};

struct sg_pool_cleanup_s {
    sg_pool_cleanup_t   *next;
    sg_pool_cleanup_pt   handler;
    void                *data;
};

#define sg_align_ptr(p, a)                                                   \
    (u_char *) (((uintptr_t) (p) + ((uintptr_t) (a) - 1))                    \
                & ~((uintptr_t) (a) - 1))

void *
sg_alloc(size_t size, sg_log_t *log)
{
    void  *p;

    p = malloc(size);
    if (p == NULL && log != NULL) {
        sg_log_error(SG_LOG_EMERG, log, errno, "malloc(%zu) failed", size);
    }
    return p;
}

void *
sg_calloc(size_t size, sg_log_t *log)
{
    void  *p;

    p = calloc(1, size);
    if (p == NULL && log != NULL) {
        sg_log_error(SG_LOG_EMERG, log, errno, "calloc(%zu) failed", size);
    }
    return p;
}

static sg_pool_chunk_t *
sg_pool_new_chunk(sg_pool_t *pool)
{
    sg_pool_chunk_t  *c;

    c = sg_alloc(pool->chunk_size, pool->log);
    if (c == NULL) {
        return NULL;
    }
    c->next = NULL;
    c->last = (u_char *) c + sizeof(sg_pool_chunk_t);
    c->end = (u_char *) c + pool->chunk_size;
    pool->allocated += pool->chunk_size;
    return c;
}

/* The pool's own header lives at the start of its first chunk, so a
 * pool that never grows costs one malloc. */
size_t
sg_pool_size_for(const sg_pool_item_t *items, size_t n)
{
    size_t  size, i;

    /* as sg_pool_create() lays out the first chunk */
    size = sg_pool_align(sizeof(sg_pool_t)) + sizeof(sg_pool_chunk_t);
    for (i = 0; i < n; i++) {
        if (items[i].aligned) {
            size = sg_pool_align(size);
        }
        size += items[i].size;
    }
    return size;
}

sg_pool_t *
sg_pool_create(size_t chunk_size, sg_log_t *log)
{
    sg_pool_t        *pool;
    sg_pool_chunk_t  *c;
    u_char           *m;
    size_t            head;

    head = sg_pool_align(sizeof(sg_pool_t));
    if (chunk_size < head + 256) {
        chunk_size = head + 256;
    }
    m = sg_alloc(chunk_size, log);
    if (m == NULL) {
        return NULL;
    }
    pool = (sg_pool_t *) m;
    memset(pool, 0, sizeof(sg_pool_t));
    pool->chunk_size = chunk_size;
    pool->max_small = chunk_size - sizeof(sg_pool_chunk_t) - SG_POOL_ALIGN;
    pool->log = log;
    pool->allocated = chunk_size;
    c = (sg_pool_chunk_t *) (m + head);
    c->next = NULL;
    c->last = (u_char *) c + sizeof(sg_pool_chunk_t);
    c->end = m + chunk_size;
    pool->chunks = c;
    pool->current = c;
    return pool;
}

void
sg_pool_destroy(sg_pool_t *pool)
{
    sg_pool_cleanup_t  *cl;
    sg_pool_large_t    *l;
    sg_pool_chunk_t    *c, *n;

    if (pool == NULL) {
        return;
    }
    for (cl = pool->cleanups; cl; cl = cl->next) {
        cl->handler(cl->data);
    }
    for (l = pool->large; l; l = l->next) {
        free(l->alloc);
    }
    for (c = pool->chunks->next; c; c = n) {   /* the first holds the pool */
        n = c->next;
        free(c);
    }
    free(pool);
}

static void *
sg_pool_large(sg_pool_t *pool, size_t size)
{
    sg_pool_large_t  *l;
    void             *p;

    p = sg_alloc(size, pool->log);
    if (p == NULL) {
        return NULL;
    }
    for (l = pool->large; l; l = l->next) {
        if (l->alloc == NULL) {
            l->alloc = p;
            pool->allocated += size;
            return p;
        }
    }
    l = sg_palloc(pool, sizeof(sg_pool_large_t));
    if (l == NULL) {
        free(p);
        return NULL;
    }
    l->alloc = p;
    l->next = pool->large;
    pool->large = l;
    pool->allocated += size;
    return p;
}

static void *
sg_pool_small(sg_pool_t *pool, size_t size, bool align)
{
    sg_pool_chunk_t  *c;
    u_char           *m;

    for (c = pool->current; c; c = c->next) {
        m = align ? sg_align_ptr(c->last, SG_POOL_ALIGN) : c->last;
        if (m <= c->end && (size_t) (c->end - m) >= size) {
            c->last = m + size;
            return m;
        }
    }
    c = sg_pool_new_chunk(pool);
    if (c == NULL) {
        return NULL;
    }
    /* Chain after the current one; earlier chunks are considered full. */
    c->next = NULL;
    {
        sg_pool_chunk_t  *t = pool->current;

        while (t->next) {
            t = t->next;
        }
        t->next = c;
    }
    pool->current = c;
    m = align ? sg_align_ptr(c->last, SG_POOL_ALIGN) : c->last;
    c->last = m + size;
    return m;
}

void *
sg_palloc(sg_pool_t *pool, size_t size)
{
    if (size <= pool->max_small) {
        return sg_pool_small(pool, size, true);
    }
    return sg_pool_large(pool, size);
}

void *
sg_pnalloc(sg_pool_t *pool, size_t size)
{
    if (size <= pool->max_small) {
        return sg_pool_small(pool, size, false);
    }
    return sg_pool_large(pool, size);
}

void *
sg_pcalloc(sg_pool_t *pool, size_t size)
{
    void  *p;

    p = sg_palloc(pool, size);
    if (p) {
        memset(p, 0, size);
    }
    return p;
}

int
sg_pfree(sg_pool_t *pool, void *p)
{
    sg_pool_large_t  *l;

    for (l = pool->large; l; l = l->next) {
        if (l->alloc == p) {
            free(p);
            l->alloc = NULL;
            return SG_OK;
        }
    }
    return SG_DECLINED;
}

int
sg_pool_cleanup_add(sg_pool_t *pool, sg_pool_cleanup_pt handler, void *data)
{
    sg_pool_cleanup_t  *cl;

    cl = sg_palloc(pool, sizeof(sg_pool_cleanup_t));
    if (cl == NULL) {
        return SG_ERROR;
    }
    cl->handler = handler;
    cl->data = data;
    cl->next = pool->cleanups;
    pool->cleanups = cl;
    return SG_OK;
}
