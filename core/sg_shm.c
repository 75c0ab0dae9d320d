/*
 * sg_shm.c: shared memory zones (see sg_shm.h).
 */
#include "sg_core.h"
#include <pthread.h>
#include <sys/mman.h>

typedef struct {
    pthread_mutex_t   mutex;
    uint64_t          magic;
    uint64_t          generation;  /* the committed cycle's */
} sg_shm_header_t;

#define SG_SHM_MAGIC   0x736d74706761746bULL
#define SG_SHM_HDR     ((sizeof(sg_shm_header_t) + 63) & ~(size_t) 63)

/* The cycle lists zones by pointer: a zone's address is handed to
 * modules (TLS contexts keep it) and must not move as the list grows. */
#define sg_shm_zones(cycle)  ((sg_shm_zone_t **) (cycle)->shm_zones.elts)

sg_shm_zone_t *
sg_shm_zone_add(sg_conf_t *cf, const sg_str_t *name, size_t size,
    const void *tag)
{
    sg_shm_zone_t  **zp = sg_shm_zones(cf->cycle), *z;
    size_t           i;

    for (i = 0; i < cf->cycle->shm_zones.nelts; i++) {
        z = zp[i];
        if (z->name.len != name->len
            || memcmp(z->name.data, name->data, name->len) != 0)
        {
            continue;
        }
        if (z->tag != tag) {
            sg_conf_error(cf, 0, "shared memory zone \"%.*s\" is already "
                          "used for something else", SG_STR_ARG(name));
            return NULL;
        }
        if (size && z->size != size) {
            sg_conf_error(cf, 0, "shared memory zone \"%.*s\" is declared "
                          "with two different sizes", SG_STR_ARG(name));
            return NULL;
        }
        return z;
    }
    z = sg_pcalloc(cf->pool, sizeof(sg_shm_zone_t));
    zp = sg_array_push(&cf->cycle->shm_zones);
    if (z == NULL || zp == NULL) {
        return NULL;
    }
    *zp = z;
    z->name = *name;
    z->size = size;
    z->tag = tag;
    return z;
}

static int
sg_shm_map(sg_shm_zone_t *z)
{
    pthread_mutexattr_t  attr;
    sg_shm_header_t     *h;
    long                 page = sysconf(_SC_PAGESIZE);

    z->shm_size = (SG_SHM_HDR + z->size + (size_t) page - 1)
                  & ~((size_t) page - 1);
    z->shm = mmap(NULL, z->shm_size, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (z->shm == MAP_FAILED) {
        z->shm = NULL;
        return SG_ERROR;
    }
    h = z->shm;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&h->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    h->magic = SG_SHM_MAGIC;
    z->addr = (u_char *) z->shm + SG_SHM_HDR;
    return SG_OK;
}

static sg_shm_zone_t *
sg_shm_find_old(sg_cycle_t *old, const sg_shm_zone_t *z)
{
    sg_shm_zone_t  **oz;
    size_t           i;

    if (old == NULL) {
        return NULL;
    }
    oz = sg_shm_zones(old);
    for (i = 0; i < old->shm_zones.nelts; i++) {
        if (oz[i]->shm && oz[i]->tag == z->tag && oz[i]->size == z->size
            && oz[i]->name.len == z->name.len
            && memcmp(oz[i]->name.data, z->name.data, z->name.len) == 0)
        {
            return oz[i];
        }
    }
    return NULL;
}

int
sg_shm_cycle_init(sg_cycle_t *cycle, char *errbuf, size_t errlen)
{
    sg_shm_zone_t  **zp = sg_shm_zones(cycle), *z, *oz;
    size_t           i;
    void            *old_data;

    for (i = 0; i < cycle->shm_zones.nelts; i++) {
        z = zp[i];
        oz = sg_shm_find_old(cycle->old_cycle, z);
        old_data = NULL;
        z->generation = 1;
        if (oz) {
            z->shm = oz->shm;
            z->shm_size = oz->shm_size;
            z->addr = oz->addr;
            z->generation = oz->generation + 1;
            old_data = oz->data;
        } else if (sg_shm_map(z) != SG_OK) {
            snprintf(errbuf, errlen, "mmap() of %zu bytes for shared memory "
                     "zone \"%.*s\" failed (%d: %s)", z->size,
                     SG_STR_ARG(&z->name), errno, strerror(errno));
            return SG_ERROR;
        }
        if (z->init && z->init(z, old_data) != SG_OK) {
            snprintf(errbuf, errlen, "shared memory zone \"%.*s\" could not "
                     "be initialised", SG_STR_ARG(&z->name));
            return SG_ERROR;
        }
    }
    return SG_OK;
}

/* Unmap cycle's zones that keep (the cycle replacing it) does not use. */
void
sg_shm_cycle_release(sg_cycle_t *cycle, sg_cycle_t *keep)
{
    sg_shm_zone_t  **z = sg_shm_zones(cycle), **k;
    size_t           i, j;
    bool             used;

    for (i = 0; i < cycle->shm_zones.nelts; i++) {
        if (z[i]->shm == NULL) {
            continue;
        }
        used = false;
        if (keep) {
            k = sg_shm_zones(keep);
            for (j = 0; j < keep->shm_zones.nelts; j++) {
                used |= k[j]->shm == z[i]->shm;
            }
        }
        if (!used) {
            munmap(z[i]->shm, z[i]->shm_size);
        }
        z[i]->shm = NULL;
    }
}

void
sg_shm_cycle_commit(sg_cycle_t *cycle)
{
    sg_shm_zone_t    **zp = sg_shm_zones(cycle);
    sg_shm_header_t   *h;
    size_t             i;

    for (i = 0; i < cycle->shm_zones.nelts; i++) {
        h = zp[i]->shm;
        sg_shm_lock(zp[i]);
        h->generation = zp[i]->generation;
        sg_shm_unlock(zp[i]);
    }
}

bool
sg_shm_current(const sg_shm_zone_t *zone)
{
    const sg_shm_header_t  *h = zone->shm;

    return h->generation == zone->generation;
}

void
sg_shm_lock(sg_shm_zone_t *zone)
{
    sg_shm_header_t  *h = zone->shm;
    int               rc;

    rc = pthread_mutex_lock(&h->mutex);
    if (rc == EOWNERDEAD) {
        /* A worker died holding the lock; the owner's data structures
         * are written so that a half-done update is only a lost entry. */
        pthread_mutex_consistent(&h->mutex);
    }
}

void
sg_shm_unlock(sg_shm_zone_t *zone)
{
    sg_shm_header_t  *h = zone->shm;

    pthread_mutex_unlock(&h->mutex);
}
