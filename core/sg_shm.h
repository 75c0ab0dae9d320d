/*
 * sg_shm.h: shared memory zones: memory every worker of one master sees,
 * for state that must agree across workers (TLS session cache, later
 * limits, health and statistics).
 *
 * A module declares a zone while the configuration loads; the cycle maps
 * it before the workers are forked.  A reload keeps a zone of the same
 * name, size and owner with its contents, so state survives; the
 * module's init hook is told whether the memory is fresh.  Each zone has
 * one process-shared, robust mutex: a worker that dies holding it does
 * not wedge the others.
 */
#ifndef SG_SHM_H
#define SG_SHM_H

typedef struct sg_shm_zone_s  sg_shm_zone_t;

/* Called in the master once the zone is mapped: old_data is the data
 * pointer the zone had in the previous cycle (its memory kept), or NULL
 * for fresh zeroed memory. */
typedef int (*sg_shm_init_pt)(sg_shm_zone_t *zone, void *old_data);

struct sg_shm_zone_s {
    sg_str_t          name;
    size_t            size;        /* usable bytes after the header */
    const void       *tag;         /* the owning module */
    void             *addr;        /* usable memory */
    void             *data;        /* the owner's, set by init */
    sg_shm_init_pt    init;
    void             *shm;         /* the whole mapping (with header) */
    size_t            shm_size;
    uint64_t          generation;  /* 1 for the first cycle to map the
                                    * memory, one more for each reload
                                    * that keeps it */
};

/* Declare (or find, when the same name and owner ask again) a zone.
 * NULL with a file:line error when the name is taken by another owner
 * or with another size. */
sg_shm_zone_t *sg_shm_zone_add(sg_conf_t *cf, const sg_str_t *name,
    size_t size, const void *tag);

/* In sg_init_cycle: map every zone (reusing the old cycle's when they
 * match) and run the init hooks; unmap the old cycle's that are gone. */
int sg_shm_cycle_init(sg_cycle_t *cycle, char *errbuf, size_t errlen);
void sg_shm_cycle_release(sg_cycle_t *cycle, sg_cycle_t *keep);

/* Once nothing can fail any more: make cycle's the newest generation of
 * each of its zones.  Workers of an older configuration go on sharing
 * the memory until they exit; sg_shm_current() tells them apart. */
void sg_shm_cycle_commit(sg_cycle_t *cycle);

/* Whether zone belongs to the newest configuration that uses its memory.
 * Call with the zone locked. */
bool sg_shm_current(const sg_shm_zone_t *zone);

void sg_shm_lock(sg_shm_zone_t *zone);
void sg_shm_unlock(sg_shm_zone_t *zone);

#endif /* SG_SHM_H */
