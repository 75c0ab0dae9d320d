/*
 * sg_ssl_cache.c: the TLS session cache shared by all workers
 * ("ssl_session_cache shared:NAME:SIZE").
 *
 * The zone is an array of fixed-size slots holding DER-encoded sessions,
 * found by hashing the session id and probing a few neighbours.  When
 * every probed slot is taken the one closest to expiry is replaced, so
 * the cache never needs more memory than its zone and never blocks for
 * longer than a handful of slot copies under the zone's lock.  A session
 * too large for a slot (a long client certificate chain) is simply not
 * cached.
 */
#include "sg_ssl.h"

#define SG_SSL_CACHE_SLOT   2048
#define SG_SSL_CACHE_PROBE  8

typedef struct {
    uint32_t  id_len;
    uint32_t  der_len;
    int64_t   expires;
    u_char    id[SSL_MAX_SSL_SESSION_ID_LENGTH];
    u_char    der[];
} sg_ssl_slot_t;

typedef struct {
    uint32_t  nslots;
    uint32_t  slot_size;
    uint64_t  stored;
    uint64_t  hits;
    uint64_t  misses;
} sg_ssl_cache_t;

#define SG_SSL_SLOT_DATA  (SG_SSL_CACHE_SLOT - sizeof(sg_ssl_slot_t))

int sg_ssl_cache_ctx_index = -1;

static int
sg_ssl_cache_init(sg_shm_zone_t *zone, void *old_data)
{
    sg_ssl_cache_t  *cache = zone->addr;

    if (old_data) {
        zone->data = old_data;          /* keep the sessions over reload */
        return SG_OK;
    }
    cache->slot_size = SG_SSL_CACHE_SLOT;
    cache->nslots = (uint32_t) ((zone->size - sizeof(sg_ssl_cache_t))
                                / SG_SSL_CACHE_SLOT);
    zone->data = cache;
    return cache->nslots ? SG_OK : SG_ERROR;
}

sg_shm_zone_t *
sg_ssl_cache_zone(sg_conf_t *cf, const sg_str_t *name, size_t size)
{
    sg_shm_zone_t  *z;

    if (size < sizeof(sg_ssl_cache_t) + 8 * SG_SSL_CACHE_SLOT) {
        sg_conf_error(cf, 0, "shared session cache \"%.*s\" is too small: "
                      "give it at least %zuk", SG_STR_ARG(name),
                      (sizeof(sg_ssl_cache_t) + 8 * SG_SSL_CACHE_SLOT) / 1024
                      + 1);
        return NULL;
    }
    z = sg_shm_zone_add(cf, name, size, &sg_ssl_module);
    if (z) {
        z->init = sg_ssl_cache_init;
    }
    return z;
}

static sg_ssl_slot_t *
sg_ssl_slot(sg_ssl_cache_t *cache, uint32_t i)
{
    return (sg_ssl_slot_t *) ((u_char *) (cache + 1)
                              + (size_t) i * cache->slot_size);
}

/* The slot holding id, or the best place for it (store == true). */
static sg_ssl_slot_t *
sg_ssl_find(sg_ssl_cache_t *cache, const u_char *id, size_t len, bool store)
{
    sg_ssl_slot_t  *slot, *victim = NULL;
    uint32_t        h = sg_hash(id, len), i;
    int64_t         now = (int64_t) time(NULL);

    for (i = 0; i < SG_SSL_CACHE_PROBE && i < cache->nslots; i++) {
        slot = sg_ssl_slot(cache, (h + i) % cache->nslots);
        if (slot->id_len == len && memcmp(slot->id, id, len) == 0) {
            if (!store && slot->expires <= now) {
                slot->id_len = 0;       /* expired: drop it */
                return NULL;
            }
            return slot;
        }
        if (!store) {
            continue;
        }
        if (slot->id_len == 0 || slot->expires <= now) {
            return slot;
        }
        if (victim == NULL || slot->expires < victim->expires) {
            victim = slot;
        }
    }
    return victim;
}

static int
sg_ssl_cache_new(SSL *ssl, SSL_SESSION *sess)
{
    sg_shm_zone_t   *zone;
    sg_ssl_cache_t  *cache;
    sg_ssl_slot_t   *slot;
    const u_char    *id;
    u_char           der[SG_SSL_SLOT_DATA], *p = der;
    unsigned         id_len;
    int              len;

    zone = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), sg_ssl_cache_ctx_index);
    len = i2d_SSL_SESSION(sess, NULL);
    id = SSL_SESSION_get_id(sess, &id_len);
    if (zone == NULL || len <= 0 || (size_t) len > sizeof(der) || id_len == 0
        || id_len > SSL_MAX_SSL_SESSION_ID_LENGTH)
    {
        return 0;
    }
    (void) i2d_SSL_SESSION(sess, &p);
    cache = zone->data;
    sg_shm_lock(zone);
    slot = sg_ssl_find(cache, id, id_len, true);
    if (slot) {
        slot->id_len = 0;               /* invalid while half written */
        memcpy(slot->der, der, (size_t) len);
        memcpy(slot->id, id, id_len);
        slot->der_len = (uint32_t) len;
        slot->expires = (int64_t) time(NULL) + SSL_SESSION_get_timeout(sess);
        slot->id_len = id_len;
        cache->stored++;
    }
    sg_shm_unlock(zone);
    sg_wipe(der, (size_t) len);
    return 0;                           /* we keep a copy, not the object */
}

static SSL_SESSION *
sg_ssl_cache_get(SSL *ssl, const unsigned char *id, int len, int *copy)
{
    sg_shm_zone_t   *zone;
    sg_ssl_cache_t  *cache;
    sg_ssl_slot_t   *slot;
    SSL_SESSION     *sess = NULL;
    u_char           der[SG_SSL_SLOT_DATA];
    const u_char    *p = der;
    uint32_t         n = 0;

    *copy = 0;
    zone = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), sg_ssl_cache_ctx_index);
    if (zone == NULL || len <= 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH) {
        return NULL;
    }
    cache = zone->data;
    sg_shm_lock(zone);
    slot = sg_ssl_find(cache, id, (size_t) len, false);
    if (slot && slot->der_len <= sizeof(der)) {
        n = slot->der_len;
        memcpy(der, slot->der, n);
        cache->hits++;
    } else {
        cache->misses++;
    }
    sg_shm_unlock(zone);
    if (n) {
        sess = d2i_SSL_SESSION(NULL, &p, n);
        sg_wipe(der, n);
    }
    return sess;
}

static void
sg_ssl_cache_remove(SSL_CTX *ctx, SSL_SESSION *sess)
{
    sg_shm_zone_t   *zone;
    sg_ssl_slot_t   *slot;
    const u_char    *id;
    unsigned         id_len;

    zone = SSL_CTX_get_ex_data(ctx, sg_ssl_cache_ctx_index);
    id = SSL_SESSION_get_id(sess, &id_len);
    if (zone == NULL || id_len == 0) {
        return;
    }
    sg_shm_lock(zone);
    slot = sg_ssl_find(zone->data, id, id_len, false);
    if (slot) {
        slot->id_len = 0;
    }
    sg_shm_unlock(zone);
}

void
sg_ssl_cache_attach(SSL_CTX *ctx, sg_shm_zone_t *zone)
{
    if (sg_ssl_cache_ctx_index < 0) {
        sg_ssl_cache_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL,
                                                          NULL, NULL);
    }
    SSL_CTX_set_ex_data(ctx, sg_ssl_cache_ctx_index, zone);
    SSL_CTX_sess_set_new_cb(ctx, sg_ssl_cache_new);
    SSL_CTX_sess_set_get_cb(ctx, sg_ssl_cache_get);
    SSL_CTX_sess_set_remove_cb(ctx, sg_ssl_cache_remove);
}
