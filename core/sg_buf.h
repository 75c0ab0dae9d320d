/*
 * sg_buf.h: a bounded byte buffer.
 *
 * Invariant: start <= pos <= last <= end.  Bytes [pos, last) are unread
 * data; [last, end) is free space.  A buffer never grows by itself: the
 * owner decides whether to compact (sg_buf_compact) or refuse.
 */
#ifndef SG_BUF_H
#define SG_BUF_H

typedef struct {
    u_char  *start;
    u_char  *pos;
    u_char  *last;
    u_char  *end;
} sg_buf_t;

#define sg_buf_size(b)   ((size_t) ((b)->last - (b)->pos))
#define sg_buf_free(b)   ((size_t) ((b)->end - (b)->last))
#define sg_buf_cap(b)    ((size_t) ((b)->end - (b)->start))
#define sg_buf_reset(b)  ((b)->pos = (b)->last = (b)->start)

sg_buf_t *sg_buf_create(sg_pool_t *pool, size_t size);
int sg_buf_init(sg_pool_t *pool, sg_buf_t *b, size_t size);

/* Move unread bytes to the start so that the free space is contiguous. */
void sg_buf_compact(sg_buf_t *b);

/* Append n bytes; SG_ERROR (nothing written) when they do not fit. */
int sg_buf_append(sg_buf_t *b, const void *data, size_t n);

/* Buffers held only while they hold something: sg_buf_take() mallocs
 * size bytes unless b already has memory; sg_buf_give() frees it and
 * leaves b empty (start == NULL).  The owner gives back at the end. */
int sg_buf_take(sg_buf_t *b, size_t size);
void sg_buf_give(sg_buf_t *b);

#endif /* SG_BUF_H */
