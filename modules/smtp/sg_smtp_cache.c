/*
 * sg_smtp_cache.c: the authentication cache ("auth_cache").
 *
 * Answers of the authentication backend are kept in a shared memory
 * zone for ttl (accepted) or negative_ttl (refused), so a client that
 * logs in again and again (a busy sender opening a connection per
 * message) does not reach the backend each time, whichever worker it
 * lands on.  The key is an HMAC, under a secret the master draws once,
 * of the server's backend, the mechanism, the user and the password: no
 * password or plain digest of one is stored, and no server is answered
 * with another's users.  Temporary failures are never cached.  The
 * zone is emptied on every reload (with its hit and miss counts logged),
 * so edited users take effect at once: each entry carries the zone
 * generation it was made in, and only the newest configuration's workers
 * read or write the cache.  Old workers finishing their sessions with
 * the old users file neither answer from it nor fill it.
 */
#include "sg_smtp.h"
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>

#define SG_CACHE_PROBE      8
#define SG_CACHE_REPLY_MAX  160

typedef struct {
    u_char                   key[32];     /* all zero: free */
    uint64_t                 generation;  /* the zone's, when stored */
    int64_t                  expires;     /* seconds */
    uint32_t                 status;      /* SG_AUTH_OK / SG_AUTH_FAIL */
    uint32_t                 reply_len;
    struct sockaddr_storage  route;       /* Auth-Server, if any */
    socklen_t                route_len;
    u_char                   reply[SG_CACHE_REPLY_MAX];
} sg_cache_entry_t;

typedef struct {
    uint32_t          nentries;
    uint64_t          hits;
    uint64_t          misses;
    sg_cache_entry_t  e[];
} sg_cache_t;

static u_char  sg_cache_secret[32];
static bool    sg_cache_secret_set;

static int
sg_cache_init(sg_shm_zone_t *zone, void *old_data)
{
    sg_cache_t  *c = zone->addr;

    /* The old workers still use the zone: a reload leaves the entries
     * (the new generation ignores them) and their count alone. */
    if (old_data) {
        sg_shm_lock(zone);
        sg_log_error(SG_LOG_INFO, sg_cycle ? sg_cycle->log : sg_log_init(), 0,
                     "auth_cache \"%.*s\": %llu hits, %llu misses since "
                     "the last reload; emptied", SG_STR_ARG(&zone->name),
                     (unsigned long long) c->hits,
                     (unsigned long long) c->misses);
        c->hits = 0;
        c->misses = 0;
        sg_shm_unlock(zone);
        zone->data = c;
        return SG_OK;
    }
    memset(c, 0, zone->size);
    c->nentries = (uint32_t) ((zone->size - sizeof(sg_cache_t))
                              / sizeof(sg_cache_entry_t));
    zone->data = c;
    if (!sg_cache_secret_set) {
        if (RAND_bytes(sg_cache_secret, sizeof(sg_cache_secret)) != 1) {
            return SG_ERROR;
        }
        sg_cache_secret_set = true;
    }
    return c->nentries >= 16 ? SG_OK : SG_ERROR;
}

/* auth_cache zone=NAME:SIZE [ttl=T] [negative_ttl=T]; */
char *
sg_smtp_auth_cache(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_smtp_srv_conf_t  *sscf = conf;
    sg_str_t            *value = cf->args->elts, v, name = sg_null_string;
    int64_t              size = 0;
    u_char              *eq, *colon;
    size_t               i;

    (void) cmd;
    if (sscf->auth_cache != SG_CONF_UNSET_PTR) {
        return sg_conf_duplicate(cf);
    }
    sscf->cache_ttl = 60000;
    sscf->cache_negative_ttl = 5000;
    for (i = 1; i < cf->args->nelts; i++) {
        eq = memchr(value[i].data, '=', value[i].len);
        if (eq == NULL) {
            return sg_conf_invalid_value(cf, &value[i], "expected key=value");
        }
        v.data = eq + 1;
        v.len = (size_t) (value[i].data + value[i].len - v.data);
        if (eq - value[i].data == 4 && !memcmp(value[i].data, "zone", 4)) {
            colon = memchr(v.data, ':', v.len);
            if (colon == NULL || colon == v.data) {
                return sg_conf_invalid_value(cf, &value[i], "zone=NAME:SIZE");
            }
            name.data = v.data;
            name.len = (size_t) (colon - v.data);
            v.data = colon + 1;
            v.len = (size_t) (value[i].data + value[i].len - v.data);
            if (sg_parse_size(&v, &size) != SG_OK || size < 16384
                || size > 1024LL * 1024 * 1024)
            {
                return sg_conf_invalid_value(cf, &value[i], "SIZE from 16k "
                                             "to 1g");
            }
        } else if (eq - value[i].data == 3
                   && !memcmp(value[i].data, "ttl", 3))
        {
            if (sg_parse_time(&v, &sscf->cache_ttl) != SG_OK) {
                return sg_conf_invalid_value(cf, &value[i], NULL);
            }
        } else if (eq - value[i].data == 12
                   && !memcmp(value[i].data, "negative_ttl", 12))
        {
            if (sg_parse_time(&v, &sscf->cache_negative_ttl) != SG_OK) {
                return sg_conf_invalid_value(cf, &value[i], NULL);
            }
        } else {
            return sg_conf_invalid_value(cf, &value[i], "keys are zone, ttl "
                                         "and negative_ttl");
        }
    }
    if (name.data == NULL) {
        return "needs zone=NAME:SIZE";
    }
    sscf->auth_cache = sg_shm_zone_add(cf, &name, (size_t) size,
                                       &sg_smtp_module.ctx);
    if (sscf->auth_cache == NULL) {
        return SG_CONF_ERROR;
    }
    sscf->auth_cache->init = sg_cache_init;
    return SG_CONF_OK;
}

/* HMAC-SHA256 keyed with the secret, made once per process: each key
 * then costs a copy of it, not a fetch of HMAC and SHA-256 (a locked
 * lookup each in OpenSSL 3) and a new keying.  The secret never changes
 * while the master lives, so neither does this. */
static EVP_MAC_CTX *
sg_cache_mac(void)
{
    static EVP_MAC_CTX  *keyed;
    EVP_MAC             *m;
    OSSL_PARAM           params[2];

    if (keyed == NULL) {
        m = EVP_MAC_fetch(NULL, "HMAC", NULL);
        keyed = m ? EVP_MAC_CTX_new(m) : NULL;
        EVP_MAC_free(m);                /* the context holds its own */
        params[0] = OSSL_PARAM_construct_utf8_string("digest",
                                                     (char *) "SHA256", 0);
        params[1] = OSSL_PARAM_construct_end();
        if (keyed != NULL
            && EVP_MAC_init(keyed, sg_cache_secret, sizeof(sg_cache_secret),
                            params) != 1)
        {
            EVP_MAC_CTX_free(keyed);
            keyed = NULL;
        }
    }
    return keyed ? EVP_MAC_CTX_dup(keyed) : NULL;
}

/* The key covers the server's backend configuration too: a zone set in
 * mail{} serves servers with different users files or services, and
 * one server's answer must never open another.  Every worker of a
 * configuration inherits the same pointer from the master, and entries
 * of an older configuration are never read (the zone's generation). */
static int
sg_cache_key(const sg_smtp_srv_conf_t *sscf, const sg_auth_request_t *r,
    u_char key[32])
{
    u_char        msg[4 + sizeof(void *) + 256 + 1], mac[EVP_MAX_MD_SIZE];
    size_t        n = 0, maclen = 0;
    EVP_MAC_CTX  *ctx;
    int           ok;

    if (r->user.len > 256) {
        return SG_ERROR;
    }
    msg[n++] = (u_char) r->mech;
    memcpy(msg + n, &sscf->auth_conf, sizeof(void *));
    n += sizeof(void *);
    memcpy(msg + n, r->user.data, r->user.len);
    n += r->user.len;
    msg[n++] = 0;
    ctx = sg_cache_mac();
    ok = ctx != NULL
         && EVP_MAC_update(ctx, msg, n) == 1
         && (r->pass.len == 0
             || EVP_MAC_update(ctx, r->pass.data, r->pass.len) == 1)
         && EVP_MAC_final(ctx, mac, &maclen, sizeof(mac)) == 1
         && maclen >= 32;
    EVP_MAC_CTX_free(ctx);
    if (!ok) {
        return SG_ERROR;
    }
    memcpy(key, mac, 32);
    key[0] |= 1;                        /* never all zero: free marks */
    sg_wipe(mac, sizeof(mac));
    return SG_OK;
}

/* A cached answer for r (filled in, SG_OK), or SG_DECLINED. */
int
sg_smtp_cache_lookup(sg_smtp_srv_conf_t *sscf, sg_auth_request_t *r)
{
    sg_shm_zone_t     *zone = sscf->auth_cache;
    sg_cache_t        *c;
    sg_cache_entry_t  *e;
    u_char             key[32];
    uint32_t           i, h;
    int64_t            now = (int64_t) sg_current_time;
    int                rc = SG_DECLINED;

    if (zone == NULL || r->mech == SG_SMTP_AUTH_CRAM_MD5
        || sg_cache_key(sscf, r, key) != SG_OK)
    {
        return SG_DECLINED;
    }
    c = zone->data;
    memcpy(&h, key + 4, sizeof(h));
    sg_shm_lock(zone);
    if (!sg_shm_current(zone)) {
        sg_shm_unlock(zone);
        return SG_DECLINED;             /* a reload replaced our users */
    }
    for (i = 0; i < SG_CACHE_PROBE; i++) {
        e = &c->e[(h + i) % c->nentries];
        if (e->generation == zone->generation && e->expires > now
            && CRYPTO_memcmp(e->key, key, 32) == 0)
        {
            r->status = e->status;
            r->reason = "cached answer (auth_cache)";
            if (e->route_len && (r->route_addr = sg_pcalloc(r->pool,
                                     sizeof(sg_addr_t))) != NULL)
            {
                memcpy(&r->route_addr->sa, &e->route, e->route_len);
                r->route_addr->socklen = e->route_len;
            }
            if (e->reply_len && (r->reply.data = sg_pnalloc(r->pool,
                                     e->reply_len)) != NULL)
            {
                memcpy(r->reply.data, e->reply, e->reply_len);
                r->reply.len = e->reply_len;
            }
            rc = SG_OK;
            break;
        }
    }
    if (rc == SG_OK) {
        c->hits++;
    } else {
        c->misses++;
    }
    sg_shm_unlock(zone);
    return rc;
}

void
sg_smtp_cache_store(sg_smtp_srv_conf_t *sscf, sg_auth_request_t *r)
{
    sg_shm_zone_t     *zone = sscf->auth_cache;
    sg_cache_t        *c;
    sg_cache_entry_t  *e, *victim = NULL;
    u_char             key[32];
    uint32_t           i, h;
    int64_t            now = (int64_t) sg_current_time;

    if (zone == NULL || r->mech == SG_SMTP_AUTH_CRAM_MD5
        || (r->status != SG_AUTH_OK && r->status != SG_AUTH_FAIL)
        || r->route.len                 /* upstream names: not cached */
        || r->backend_user.len || r->backend_pass.len   /* nor secrets */
        || sg_cache_key(sscf, r, key) != SG_OK)
    {
        return;
    }
    c = zone->data;
    memcpy(&h, key + 4, sizeof(h));
    sg_shm_lock(zone);
    if (!sg_shm_current(zone)) {
        sg_shm_unlock(zone);
        return;                         /* answered under old users */
    }
    for (i = 0; i < SG_CACHE_PROBE; i++) {
        e = &c->e[(h + i) % c->nentries];
        if (e->generation != zone->generation || e->expires <= now
            || CRYPTO_memcmp(e->key, key, 32) == 0)
        {
            victim = e;
            break;
        }
        if (victim == NULL || e->expires < victim->expires) {
            victim = e;
        }
    }
    memcpy(victim->key, key, 32);
    victim->generation = zone->generation;
    victim->status = r->status;
    victim->expires = now + (r->status == SG_AUTH_OK
                             ? sscf->cache_ttl : sscf->cache_negative_ttl)
                            / 1000;
    victim->route_len = 0;
    if (r->route_addr) {
        memcpy(&victim->route, &r->route_addr->sa, r->route_addr->socklen);
        victim->route_len = r->route_addr->socklen;
    }
    victim->reply_len = (uint32_t) sg_min(r->reply.len, SG_CACHE_REPLY_MAX);
    if (victim->reply_len) {
        memcpy(victim->reply, r->reply.data, victim->reply_len);
    }
    sg_shm_unlock(zone);
}
