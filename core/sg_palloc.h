/*
 * sg_palloc.h: region allocator.
 *
 * A pool hands out small blocks from chained chunks and tracks large
 * blocks separately; everything is released at once by sg_pool_destroy.
 * There is one pool per configuration cycle and one per session, so no
 * session can leak into the next and nothing outlives its owner.
 * Cleanup handlers run (in reverse order) before the memory goes.
 */
#ifndef SG_PALLOC_H
#define SG_PALLOC_H

typedef void (*sg_pool_cleanup_pt)(void *data);

typedef struct sg_pool_cleanup_s  sg_pool_cleanup_t;
typedef struct sg_pool_large_s    sg_pool_large_t;
typedef struct sg_pool_chunk_s    sg_pool_chunk_t;

struct sg_pool_s {
    sg_pool_chunk_t    *current;
    sg_pool_chunk_t    *chunks;
    sg_pool_large_t    *large;
    sg_pool_cleanup_t  *cleanups;
    size_t              chunk_size;
    size_t              max_small;   /* larger requests go to malloc */
    size_t              allocated;   /* bytes held, for accounting */
    sg_log_t           *log;
};

sg_pool_t *sg_pool_create(size_t chunk_size, sg_log_t *log);
/* One allocation a pool's first chunk is to hold: sg_palloc() when
 * aligned, sg_pnalloc() when not. */
typedef struct {
    size_t  size;
    bool    aligned;
} sg_pool_item_t;

/* The chunk size whose first chunk holds these allocations, made in this
 * order, besides the pool's own header: so that a caller sizes its pool
 * from what it puts there, not from a number that silently goes stale
 * when a structure grows. */
size_t sg_pool_size_for(const sg_pool_item_t *items, size_t n);
void sg_pool_destroy(sg_pool_t *pool);

/* Aligned allocation; NULL on ENOMEM (logged). */
void *sg_palloc(sg_pool_t *pool, size_t size);
void *sg_pcalloc(sg_pool_t *pool, size_t size);
/* Unaligned, for byte strings. */
void *sg_pnalloc(sg_pool_t *pool, size_t size);
/* Give a large block back early (buffers that grow); SG_DECLINED if the
 * block is not a large one. */
int sg_pfree(sg_pool_t *pool, void *p);

/* Register a handler run when the pool is destroyed. */
int sg_pool_cleanup_add(sg_pool_t *pool, sg_pool_cleanup_pt handler,
    void *data);

/* malloc that logs a failure. */
void *sg_alloc(size_t size, sg_log_t *log);
void *sg_calloc(size_t size, sg_log_t *log);

#endif /* SG_PALLOC_H */
