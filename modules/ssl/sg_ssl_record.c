/*
 * sg_ssl_record.c: smtpgate's TLS record layer (see sg_ssl_record.h).
 *
 * What it does, by RFC 8446:
 * - keys: key and IV from each traffic secret with HKDF-Expand-Label
 *   (7.1, 7.3); a KeyUpdate moves a direction to its next secret (4.6.3,
 *   7.2) and restarts its sequence number;
 * - records (5.2): outer type application_data, length at most 2^14 +
 *   256, the 5-byte header as additional data, the nonce the IV XOR the
 *   64-bit sequence number (5.3); the inner plaintext ends in its content
 *   type followed by zero padding, at most 2^14 + 1 octets;
 * - what a client may send after the handshake: application data,
 *   alerts (close_notify ends the stream, user_canceled is ignored, any
 *   other is fatal) and KeyUpdate; anything else is unexpected_message.
 * And for TLS 1.2 with an AEAD suite (RFC 5246 6.2.3.3, 6.3; RFC 5288;
 * RFC 7905): keys from the master secret by the PRF, the record's own
 * content type, the sequence number, type, version and length as
 * additional data, AES-GCM's explicit nonce, no padding; a handshake
 * record (renegotiation) is refused with no_renegotiation.
 *
 * Memory: the wire buffer (one record's worth) exists only while it
 * holds bytes, and a write that the socket does not take whole keeps
 * only its unsent rest; an idle connection holds the two AEAD contexts
 * and this structure.
 */
#include "sg_ssl_record.h"
#include "sg_connection.h"
#include <openssl/ssl.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/obj_mac.h>
#include <openssl/crypto.h>

#define SG_SSL_REC_IV       12
#define SG_SSL_REC_KEY_MAX  32

/* alert descriptions (RFC 8446 6) */
#define SG_SSL_ALERT_CLOSE_NOTIFY        0
#define SG_SSL_ALERT_UNEXPECTED_MESSAGE  10
#define SG_SSL_ALERT_BAD_RECORD_MAC      20
#define SG_SSL_ALERT_RECORD_OVERFLOW     22
#define SG_SSL_ALERT_ILLEGAL_PARAMETER   47
#define SG_SSL_ALERT_DECODE_ERROR        50
#define SG_SSL_ALERT_INTERNAL_ERROR      80
#define SG_SSL_ALERT_USER_CANCELED       90
#define SG_SSL_ALERT_NO_RENEGOTIATION    100

#define SG_SSL_HS_NEW_SESSION_TICKET  4
#define SG_SSL_HS_KEY_UPDATE  24
/* A post-handshake message split over records is gathered up to this
 * size (a NewSessionTicket's ticket is at most 2^16 - 1 octets). */
#define SG_SSL_HS_MAX         (SG_SSL_REC_PLAIN_MAX * 5)

typedef struct {
    unsigned       id;
    const char    *name;            /* the suite's IANA name */
    const char    *cipher;
    size_t         key_len;
    const char    *digest;
    size_t         hash_len;
} sg_ssl_suite_t;

static const sg_ssl_suite_t  sg_ssl_suites[] = {
    { SG_SSL_REC_AES_128_GCM_SHA256, "TLS_AES_128_GCM_SHA256",
      "AES-128-GCM", 16, "SHA256", 32 },
    { SG_SSL_REC_AES_256_GCM_SHA384, "TLS_AES_256_GCM_SHA384",
      "AES-256-GCM", 32, "SHA384", 48 },
    { SG_SSL_REC_CHACHA20_POLY1305_SHA256, "TLS_CHACHA20_POLY1305_SHA256",
      "ChaCha20-Poly1305", 32, "SHA256", 32 },
};

/* Fetched once per process: a fetch per connection is a locked lookup. */
static EVP_CIPHER  *sg_ssl_rec_ciphers[sg_nelems(sg_ssl_suites)];

typedef struct {
    EVP_CIPHER_CTX  *ctx;
    u_char           secret[SG_SSL_REC_SECRET_MAX];
    u_char           iv[SG_SSL_REC_IV];
    uint64_t         seq;
} sg_ssl_rec_dir_t;

struct sg_ssl_rec_s {
    sg_ssl_rec_dir_t       rd;             /* the peer's records */
    sg_ssl_rec_dir_t       wr;             /* ours */
    const sg_ssl_suite_t  *suite;          /* TLS 1.3's; NULL for 1.2 */
    EVP_CIPHER            *cipher;
    const char            *name;           /* the suite's, for the log */
    size_t                 iv_len;         /* 1.2 AES-GCM: 4 (a salt) */
    unsigned               tls12:1;
    unsigned               explicit_nonce:1;  /* 1.2 AES-GCM */

    u_char                *in;             /* NULL while nothing is held */
    size_t                 in_start;       /* wire bytes not yet opened */
    size_t                 in_end;
    size_t                 plain_pos;      /* plaintext not yet returned */
    size_t                 plain_end;

    u_char                *out;            /* ciphertext a write left */
    size_t                 out_pos;
    size_t                 out_end;
    size_t                 out_plain;      /* the caller's bytes in it */

    int                    alert;          /* to send on failure, or -1 */
    unsigned               key_update_due:1;
    unsigned               closed:1;       /* close_notify came */
    unsigned               failed:1;
    unsigned               said_goodbye:1; /* an alert went out */
    unsigned               client:1;       /* our side is the client's */

    u_char                *hs;             /* a handshake message split
                                              over records, so far */
    size_t                 hs_len;
    unsigned               goodbye_queued:1; /* close_notify is in out */
    unsigned               idle;           /* records in a row without
                                              application data */
};

/* Held bytes (sg_ssl_rec_hold) up to this many leave in one send with
 * the next record. */
#define SG_SSL_REC_HELD_MAX  2048

static u_char  sg_ssl_rec_wbuf[SG_SSL_REC_HELD_MAX + 64 + SG_SSL_REC_MAX];


/*
 * HKDF-Expand-Label(secret, label, "", len) (RFC 8446 7.1).  Every
 * length asked for here (a key, an IV, the next secret) is at most the
 * hash's, so HKDF-Expand is one HMAC: T(1) = HMAC(secret, info | 0x01)
 * (RFC 5869 2.3).  An HMAC context per hash is made once with its digest
 * and only re-keyed: naming the digest per call is a locked lookup.
 */
static int
sg_ssl_rec_expand(const sg_ssl_suite_t *suite, const u_char *secret,
    const char *label, u_char *out, size_t len)
{
    static EVP_MAC_CTX  *hmac[2];           /* SHA-256, SHA-384 */
    EVP_MAC_CTX        **ctx = &hmac[suite->hash_len == 48];
    EVP_MAC             *mac;
    OSSL_PARAM           params[2];
    u_char               info[2 + 1 + 6 + 32 + 1 + 1];
    u_char               t[EVP_MAX_MD_SIZE];
    size_t               llen = strlen(label), n = 0, tlen;

    if (llen > 32 || len > suite->hash_len) {
        return SG_ERROR;
    }
    if (*ctx == NULL) {
        mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
        EVP_MAC_free(mac);                  /* the context keeps it */
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                     (char *) suite->digest,
                                                     0);
        params[1] = OSSL_PARAM_construct_end();
        if (*ctx == NULL || EVP_MAC_CTX_set_params(*ctx, params) != 1) {
            EVP_MAC_CTX_free(*ctx);
            *ctx = NULL;
            return SG_ERROR;
        }
    }
    info[n++] = (u_char) (len >> 8);
    info[n++] = (u_char) len;
    info[n++] = (u_char) (6 + llen);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, llen);
    n += llen;
    info[n++] = 0;                       /* an empty context */
    info[n++] = 1;                       /* T(1)'s counter */
    if (EVP_MAC_init(*ctx, secret, suite->hash_len, NULL) != 1
        || EVP_MAC_update(*ctx, info, n) != 1
        || EVP_MAC_final(*ctx, t, &tlen, sizeof(t)) != 1
        || tlen != suite->hash_len)
    {
        return SG_ERROR;
    }
    memcpy(out, t, len);
    OPENSSL_cleanse(t, sizeof(t));
    return SG_OK;
}

/* Key and IV of a direction from its secret; sequence number 0. */
static int
sg_ssl_rec_keys(sg_ssl_rec_t *r, sg_ssl_rec_dir_t *d, int enc)
{
    u_char  key[SG_SSL_REC_KEY_MAX];
    int     rc = SG_ERROR;

    if (sg_ssl_rec_expand(r->suite, d->secret, "key", key,
                          r->suite->key_len) == SG_OK
        && sg_ssl_rec_expand(r->suite, d->secret, "iv", d->iv,
                             SG_SSL_REC_IV) == SG_OK
        && EVP_CipherInit_ex(d->ctx, r->cipher, NULL, key, NULL, enc) == 1)
    {
        rc = SG_OK;
    }
    OPENSSL_cleanse(key, sizeof(key));
    d->seq = 0;
    return rc;
}

/* The next traffic secret (RFC 8446 7.2), then its keys. */
static int
sg_ssl_rec_next_secret(sg_ssl_rec_t *r, sg_ssl_rec_dir_t *d, int enc)
{
    u_char  next[SG_SSL_REC_SECRET_MAX];

    if (sg_ssl_rec_expand(r->suite, d->secret, "traffic upd", next,
                          r->suite->hash_len) != SG_OK)
    {
        return SG_ERROR;
    }
    memcpy(d->secret, next, r->suite->hash_len);
    OPENSSL_cleanse(next, sizeof(next));
    return sg_ssl_rec_keys(r, d, enc);
}

int
sg_ssl_rec_update_write(sg_ssl_rec_t *r)
{
    return sg_ssl_rec_next_secret(r, &r->wr, 1);
}

static EVP_CIPHER *
sg_ssl_rec_fetch(size_t i)
{
    if (sg_ssl_rec_ciphers[i] == NULL) {
        sg_ssl_rec_ciphers[i] = EVP_CIPHER_fetch(NULL,
                                                 sg_ssl_suites[i].cipher,
                                                 NULL);
    }
    return sg_ssl_rec_ciphers[i];
}

static sg_ssl_rec_t *
sg_ssl_rec_alloc(size_t i)
{
    sg_ssl_rec_t  *r;
    EVP_CIPHER    *cipher = sg_ssl_rec_fetch(i);

    r = cipher ? calloc(1, sizeof(sg_ssl_rec_t)) : NULL;
    if (r == NULL) {
        return NULL;
    }
    r->cipher = cipher;
    r->alert = -1;
    r->iv_len = SG_SSL_REC_IV;
    r->rd.ctx = EVP_CIPHER_CTX_new();
    r->wr.ctx = EVP_CIPHER_CTX_new();
    if (r->rd.ctx == NULL || r->wr.ctx == NULL) {
        sg_ssl_rec_free(r);
        return NULL;
    }
    return r;
}

sg_ssl_rec_t *
sg_ssl_rec_new(unsigned suite, const u_char *rsecret, const u_char *wsecret,
    size_t len, uint64_t rseq, uint64_t wseq)
{
    sg_ssl_rec_t  *r;
    size_t         i;

    for (i = 0; i < sg_nelems(sg_ssl_suites); i++) {
        if (sg_ssl_suites[i].id == suite) {
            break;
        }
    }
    if (i == sg_nelems(sg_ssl_suites) || len != sg_ssl_suites[i].hash_len) {
        return NULL;
    }
    r = sg_ssl_rec_alloc(i);
    if (r == NULL) {
        return NULL;
    }
    r->suite = &sg_ssl_suites[i];
    r->name = r->suite->name;
    memcpy(r->rd.secret, rsecret, len);
    memcpy(r->wr.secret, wsecret, len);
    if (sg_ssl_rec_keys(r, &r->rd, 0) != SG_OK
        || sg_ssl_rec_keys(r, &r->wr, 1) != SG_OK)
    {
        sg_ssl_rec_free(r);
        return NULL;
    }
    r->rd.seq = rseq;
    r->wr.seq = wseq;
    return r;
}

/*
 * TLS 1.2 (RFC 5246 6.3): the key block is PRF(master_secret, "key
 * expansion", server_random + client_random), cut into the client's
 * and the server's write keys and then their IVs: 4-byte salts for
 * AES-GCM, whose records carry the other 8 bytes of the nonce (RFC 5288
 * 3), and 12-byte IVs for ChaCha20-Poly1305, whose nonce is the IV XOR
 * the sequence number as in TLS 1.3 (RFC 7905 2).
 */
sg_ssl_rec_t *
sg_ssl_rec_new_tls12(int cipher_nid, const char *prf_digest,
    const char *name, const u_char *master, size_t master_len,
    const u_char *client_random, const u_char *server_random,
    uint64_t rseq, uint64_t wseq, bool as_client)
{
    static EVP_KDF  *prf;
    sg_ssl_rec_t    *r;
    EVP_KDF_CTX     *kctx;
    OSSL_PARAM       params[4];
    u_char           seed[13 + 64], block[2 * 32 + 2 * 12];
    size_t           i, key_len, iv_len, n, rk, wk;
    int              rc;

    switch (cipher_nid) {
    case NID_aes_128_gcm:
        i = 0;
        break;
    case NID_aes_256_gcm:
        i = 1;
        break;
    case NID_chacha20_poly1305:
        i = 2;
        break;
    default:
        return NULL;
    }
    key_len = sg_ssl_suites[i].key_len;
    iv_len = i == 2 ? SG_SSL_REC_IV : 4;
    n = 2 * key_len + 2 * iv_len;
    if (prf == NULL) {
        prf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
    }
    kctx = prf ? EVP_KDF_CTX_new(prf) : NULL;
    if (kctx == NULL) {
        return NULL;
    }
    memcpy(seed, "key expansion", 13);
    memcpy(seed + 13, server_random, 32);
    memcpy(seed + 45, client_random, 32);
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                                 (char *) prf_digest, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET,
                                                  (void *) master,
                                                  master_len);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED,
                                                  seed, sizeof(seed));
    params[3] = OSSL_PARAM_construct_end();
    rc = EVP_KDF_derive(kctx, block, n, params);
    EVP_KDF_CTX_free(kctx);
    r = rc == 1 ? sg_ssl_rec_alloc(i) : NULL;
    if (r) {
        r->tls12 = 1;
        r->explicit_nonce = i != 2;
        r->iv_len = iv_len;
        r->name = name;
        /* the server reads what the client writes: client_write_key,
         * server_write_key, client_write_IV, server_write_IV */
        rk = as_client ? key_len : 0;
        wk = as_client ? 0 : key_len;
        memcpy(r->rd.iv, block + 2 * key_len + (as_client ? iv_len : 0),
               iv_len);
        memcpy(r->wr.iv, block + 2 * key_len + (as_client ? 0 : iv_len),
               iv_len);
        if (EVP_CipherInit_ex(r->rd.ctx, r->cipher, NULL, block + rk, NULL,
                              0) != 1
            || EVP_CipherInit_ex(r->wr.ctx, r->cipher, NULL, block + wk,
                                 NULL, 1) != 1)
        {
            sg_ssl_rec_free(r);
            r = NULL;
        } else {
            r->rd.seq = rseq;
            r->wr.seq = wseq;
        }
    }
    OPENSSL_cleanse(block, sizeof(block));
    return r;
}

/* Records are opened in place: the wire buffer holds the plaintext the
 * client sent (an AUTH line), wiped before the memory goes back.  Past
 * in_end it holds nothing (sg_ssl_rec_buffer). */
static void
sg_ssl_rec_free_in(sg_ssl_rec_t *r)
{
    if (r->in) {
        OPENSSL_cleanse(r->in, r->in_end);
        free(r->in);
        r->in = NULL;
    }
}

void
sg_ssl_rec_as_client(sg_ssl_rec_t *r)
{
    r->client = 1;
}

void
sg_ssl_rec_free(sg_ssl_rec_t *r)
{
    if (r == NULL) {
        return;
    }
    EVP_CIPHER_CTX_free(r->rd.ctx);
    EVP_CIPHER_CTX_free(r->wr.ctx);
    sg_ssl_rec_free_in(r);
    free(r->out);
    free(r->hs);
    OPENSSL_cleanse(r, sizeof(*r));
    free(r);
}

const char *
sg_ssl_rec_cipher_name(sg_ssl_rec_t *r)
{
    return r->name;
}

const char *
sg_ssl_rec_protocol(sg_ssl_rec_t *r)
{
    return r->tls12 ? "TLSv1.2" : "TLSv1.3";
}

/* The IV XOR the sequence number, or for TLS 1.2 AES-GCM the salt and
 * the 8 bytes the record carries (which we set to the sequence number,
 * as OpenSSL does: unique for the key's life). */
static void
sg_ssl_rec_nonce(const sg_ssl_rec_t *r, const sg_ssl_rec_dir_t *d,
    const u_char *explicit, u_char *nonce)
{
    int  i;

    if (r->explicit_nonce) {
        memcpy(nonce, d->iv, 4);
        memcpy(nonce + 4, explicit, 8);
        return;
    }
    memcpy(nonce, d->iv, SG_SSL_REC_IV);
    for (i = 0; i < 8; i++) {
        nonce[SG_SSL_REC_IV - 1 - i] ^= (u_char) (d->seq >> (8 * i));
    }
}

static void
sg_ssl_rec_put64(u_char *p, uint64_t v)
{
    int  i;

    for (i = 7; i >= 0; i--) {
        p[i] = (u_char) v;
        v >>= 8;
    }
}

/* TLS 1.2's additional data: seq_num, type, version, length (RFC 5246
 * 6.2.3.3). */
static void
sg_ssl_rec_aad12(const sg_ssl_rec_dir_t *d, int type, size_t len,
    u_char *aad)
{
    sg_ssl_rec_put64(aad, d->seq);
    aad[8] = (u_char) type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11] = (u_char) (len >> 8);
    aad[12] = (u_char) len;
}

/* One AEAD pass in place over p[0..len), tag at p + len. */
static int
sg_ssl_rec_aead(EVP_CIPHER_CTX *ctx, int enc, const u_char *nonce,
    const u_char *aad, size_t aad_len, u_char *p, size_t len)
{
    int  n, m;

    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, enc) != 1
        || EVP_CipherUpdate(ctx, NULL, &n, aad, (int) aad_len) != 1
        || (len && EVP_CipherUpdate(ctx, p, &n, p, (int) len) != 1))
    {
        return SG_ERROR;
    }
    if (len == 0) {
        n = 0;
    }
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG,
                                    SG_SSL_REC_TAG, p + len) != 1)
    {
        return SG_ERROR;
    }
    if (EVP_CipherFinal_ex(ctx, p + n, &m) != 1 || (size_t) (n + m) != len) {
        return SG_ERROR;
    }
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG,
                                   SG_SSL_REC_TAG, p + len) != 1)
    {
        return SG_ERROR;
    }
    return SG_OK;
}

size_t
sg_ssl_rec_seal(sg_ssl_rec_t *r, int type, const u_char *in, size_t len,
    size_t pad, u_char *out)
{
    u_char   nonce[SG_SSL_REC_IV], aad[13], *body;
    size_t   x, inner, clen;

    /* the last sequence number is never used: a wrap would repeat a
     * nonce */
    if (len + pad > SG_SSL_REC_PLAIN_MAX || r->wr.seq == UINT64_MAX
        || (r->tls12 && pad))
    {
        return 0;
    }
    x = r->explicit_nonce ? 8 : 0;
    inner = r->tls12 ? len : len + 1 + pad;
    clen = x + inner + SG_SSL_REC_TAG;
    out[0] = (u_char) (r->tls12 ? type : SG_SSL_REC_APPLICATION);
    out[1] = 3;
    out[2] = 3;
    out[3] = (u_char) (clen >> 8);
    out[4] = (u_char) clen;
    body = out + SG_SSL_REC_HEADER + x;
    if (len) {
        memmove(body, in, len);
    }
    if (r->tls12) {
        if (x) {
            sg_ssl_rec_put64(out + SG_SSL_REC_HEADER, r->wr.seq);
        }
        sg_ssl_rec_nonce(r, &r->wr, out + SG_SSL_REC_HEADER, nonce);
        sg_ssl_rec_aad12(&r->wr, type, len, aad);
        if (sg_ssl_rec_aead(r->wr.ctx, 1, nonce, aad, 13, body, inner)
            != SG_OK)
        {
            return 0;
        }
    } else {
        body[len] = (u_char) type;
        memset(body + len + 1, 0, pad);
        sg_ssl_rec_nonce(r, &r->wr, NULL, nonce);
        if (sg_ssl_rec_aead(r->wr.ctx, 1, nonce, out, SG_SSL_REC_HEADER,
                            body, inner) != SG_OK)
        {
            return 0;
        }
    }
    r->wr.seq++;
    return SG_SSL_REC_HEADER + clen;
}

static int
sg_ssl_rec_fail(sg_ssl_rec_t *r, sg_log_t *log, int alert, const char *why)
{
    r->failed = 1;
    r->alert = alert;
    sg_log_error(SG_LOG_INFO, log, 0, "TLS read failed: %s", why);
    return SG_ERROR;
}

/* Who sent what we read, for the log. */
#define sg_ssl_rec_peer(r)  ((r)->client ? "the backend" : "the client")

/* A KeyUpdate (RFC 8446 4.6.3), whole; last in its record (checked by
 * the caller): the next record is under the next key. */
static int
sg_ssl_rec_key_update(sg_ssl_rec_t *r, const u_char *p, size_t len,
    sg_log_t *log)
{
    if (len != 5 || p[1] != 0 || p[2] != 0 || p[3] != 1) {
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_DECODE_ERROR,
                               "a malformed KeyUpdate");
    }
    if (p[4] > 1) {
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_ILLEGAL_PARAMETER,
                               "a KeyUpdate with an unknown request");
    }
    if (sg_ssl_rec_next_secret(r, &r->rd, 0) != SG_OK) {
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_INTERNAL_ERROR,
                               "deriving the next traffic keys failed");
    }
    if (p[4] == 1) {
        r->key_update_due = 1;          /* before our next record */
    }
    sg_log_debug(log, "TLS KeyUpdate from %s%s", sg_ssl_rec_peer(r),
                 p[4] ? ", update requested" : "");
    return SG_OK;
}

/* The handshake messages of one record.  A client may send only
 * KeyUpdate now, alone in its record (RFC 8446 5.1).  A server (when
 * we are the client, towards a backend) also sends NewSessionTickets,
 * which smtpgate does not use: several may share a record, and one may
 * span records, so a message is gathered until it is whole. */
static int
sg_ssl_rec_handshake(sg_ssl_rec_t *r, const u_char *p, size_t len,
    sg_log_t *log)
{
    const u_char  *m;
    size_t         have, mlen, n;
    u_char        *hs;
    int            rc;

    if (!r->client) {
        if (len < 4 || p[0] != SG_SSL_HS_KEY_UPDATE) {
            return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_UNEXPECTED_MESSAGE,
                                   "the client sent a handshake message "
                                   "other than KeyUpdate after the "
                                   "handshake");
        }
        return sg_ssl_rec_key_update(r, p, len, log);
    }
    if (len == 0) {
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_UNEXPECTED_MESSAGE,
                               "an empty handshake record");
    }
    while (len) {
        if (r->hs_len) {
            /* the rest of a message begun in an earlier record */
            have = r->hs_len;
            mlen = have >= 4 ? ((size_t) r->hs[1] << 16
                                | (size_t) r->hs[2] << 8 | r->hs[3]) + 4
                             : 4;
            n = sg_min(len, (have < 4 ? 4 : mlen) - have);
            memcpy(r->hs + have, p, n);
            r->hs_len += n;
            p += n;
            len -= n;
            if (r->hs_len < 4) {
                continue;
            }
            mlen = ((size_t) r->hs[1] << 16 | (size_t) r->hs[2] << 8
                    | r->hs[3]) + 4;
            if (mlen > SG_SSL_HS_MAX) {
                return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_DECODE_ERROR,
                                       "a post-handshake message too long");
            }
            if (r->hs_len < mlen) {
                continue;                /* more in the next record */
            }
            m = r->hs;
        } else {
            mlen = len >= 4 ? ((size_t) p[1] << 16 | (size_t) p[2] << 8
                               | p[3]) + 4
                            : SIZE_MAX;
            if (mlen > len) {
                /* split: keep what came for the next record */
                if (mlen != SIZE_MAX && mlen > SG_SSL_HS_MAX) {
                    return sg_ssl_rec_fail(r, log,
                                           SG_SSL_ALERT_DECODE_ERROR,
                                           "a post-handshake message too "
                                           "long");
                }
                hs = malloc(SG_SSL_HS_MAX);
                if (hs == NULL) {
                    return sg_ssl_rec_fail(r, log,
                                           SG_SSL_ALERT_INTERNAL_ERROR,
                                           "no memory for a handshake "
                                           "message");
                }
                memcpy(hs, p, len);
                r->hs = hs;
                r->hs_len = len;
                return SG_OK;
            }
            m = p;
            p += mlen;
            len -= mlen;
        }
        switch (m[0]) {
        case SG_SSL_HS_NEW_SESSION_TICKET:
            rc = SG_OK;                 /* not kept: nothing resumes */
            break;
        case SG_SSL_HS_KEY_UPDATE:
            rc = len ? sg_ssl_rec_fail(r, log,
                                       SG_SSL_ALERT_UNEXPECTED_MESSAGE,
                                       "data after a KeyUpdate in its "
                                       "record")
                     : sg_ssl_rec_key_update(r, m, mlen, log);
            break;
        default:
            rc = sg_ssl_rec_fail(r, log, SG_SSL_ALERT_UNEXPECTED_MESSAGE,
                                 "the backend sent a handshake message "
                                 "other than NewSessionTicket or KeyUpdate "
                                 "after the handshake");
        }
        if (m == r->hs) {
            free(r->hs);
            r->hs = NULL;
            r->hs_len = 0;
        }
        if (rc != SG_OK) {
            return rc;
        }
    }
    return SG_OK;
}

/* Decrypt the record at p (its header checked, all of it there) in
 * place; its content, and for TLS 1.3 its inner type, in *content,
 * *len and *type. */
static int
sg_ssl_rec_decrypt(sg_ssl_rec_t *r, u_char *p, size_t clen,
    u_char **content, size_t *len, int *type, sg_log_t *log)
{
    u_char  nonce[SG_SSL_REC_IV], aad[13], *body;
    size_t  x = r->explicit_nonce ? 8 : 0, blen;
    int     rc;

    if (clen < x + SG_SSL_REC_TAG + (r->tls12 ? 0 : 1)
        || r->rd.seq == UINT64_MAX)
    {
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_BAD_RECORD_MAC,
                               "a record too short to authenticate");
    }
    body = p + SG_SSL_REC_HEADER + x;
    blen = clen - x - SG_SSL_REC_TAG;
    if (r->tls12) {
        if (blen > SG_SSL_REC_PLAIN_MAX) {
            return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_RECORD_OVERFLOW,
                                   "a record with more than 2^14 octets "
                                   "of content");
        }
        sg_ssl_rec_nonce(r, &r->rd, p + SG_SSL_REC_HEADER, nonce);
        sg_ssl_rec_aad12(&r->rd, p[0], blen, aad);
        rc = sg_ssl_rec_aead(r->rd.ctx, 0, nonce, aad, 13, body, blen);
    } else {
        sg_ssl_rec_nonce(r, &r->rd, NULL, nonce);
        rc = sg_ssl_rec_aead(r->rd.ctx, 0, nonce, p, SG_SSL_REC_HEADER,
                             body, blen);
    }
    if (rc != SG_OK) {
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_BAD_RECORD_MAC,
                               "a record did not authenticate "
                               "(bad_record_mac)");
    }
    r->rd.seq++;
    if (r->tls12) {
        *type = p[0];
    } else {
        while (blen && body[blen - 1] == 0) {
            blen--;                               /* padding */
        }
        if (blen == 0) {
            return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_UNEXPECTED_MESSAGE,
                                   "a record without a content type");
        }
        *type = body[--blen];
        if (blen > SG_SSL_REC_PLAIN_MAX) {
            return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_RECORD_OVERFLOW,
                                   "a record with more than 2^14 octets "
                                   "of content");
        }
    }
    *content = body;
    *len = blen;
    return SG_OK;
}

/* Open the record at the front of the buffer: SG_OK (its content is
 * taken: plaintext, or a control message acted on), SG_AGAIN (not all
 * there), SG_DONE (close_notify) or SG_ERROR. */
static int
sg_ssl_rec_open(sg_ssl_rec_t *r, sg_log_t *log)
{
    u_char  *p, *content;
    size_t   avail = r->in_end - r->in_start, clen, len;
    int      type;
    char     why[96];

    if (avail < SG_SSL_REC_HEADER) {
        return SG_AGAIN;
    }
    p = r->in + r->in_start;
    if (r->tls12 ? p[0] < 20 || p[0] > SG_SSL_REC_APPLICATION
                 : p[0] != SG_SSL_REC_APPLICATION)
    {
        snprintf(why, sizeof(why), "a record of outer type %u after the "
                 "handshake", p[0]);
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_UNEXPECTED_MESSAGE, why);
    }
    clen = (size_t) p[3] << 8 | p[4];
    if (clen > SG_SSL_REC_CIPHER_MAX) {
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_RECORD_OVERFLOW,
                               "a record longer than 2^14 + 256 octets");
    }
    if (avail < SG_SSL_REC_HEADER + clen) {
        return SG_AGAIN;
    }
    if (sg_ssl_rec_decrypt(r, p, clen, &content, &len, &type, log)
        != SG_OK)
    {
        return SG_ERROR;
    }
    r->in_start += SG_SSL_REC_HEADER + clen;
    if (type == SG_SSL_REC_APPLICATION && len) {
        r->idle = 0;
    } else if (++r->idle > SG_SSL_REC_IDLE_MAX) {
        snprintf(why, sizeof(why), "%s sent more than %d records in a row "
                 "without data", sg_ssl_rec_peer(r), SG_SSL_REC_IDLE_MAX);
        return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_UNEXPECTED_MESSAGE, why);
    }

    switch (type) {
    case SG_SSL_REC_APPLICATION:
        r->plain_pos = (size_t) (content - r->in);
        r->plain_end = r->plain_pos + len;
        return SG_OK;
    case SG_SSL_REC_ALERT:
        if (len != 2) {
            return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_DECODE_ERROR,
                                   "a malformed alert");
        }
        if (content[1] == SG_SSL_ALERT_CLOSE_NOTIFY) {
            return SG_DONE;
        }
        /* TLS 1.3 has no warnings but user_canceled; in 1.2 a warning
         * is no reason to end (RFC 5246 7.2) */
        if (content[1] == SG_SSL_ALERT_USER_CANCELED
            || (r->tls12 && content[0] == 1))
        {
            return SG_OK;
        }
        snprintf(why, sizeof(why), "%s sent alert %u (%s)",
                 sg_ssl_rec_peer(r), content[1],
                 SSL_alert_desc_string_long(content[1]));
        return sg_ssl_rec_fail(r, log, -1, why);
    case SG_SSL_REC_HANDSHAKE:
        if (r->tls12) {
            snprintf(why, sizeof(why), "%s asked to renegotiate (refused)",
                     sg_ssl_rec_peer(r));
            return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_NO_RENEGOTIATION,
                                   why);
        }
        return sg_ssl_rec_handshake(r, content, len, log);
    }
    snprintf(why, sizeof(why), "a record of content type %d after the "
             "handshake", type);
    return sg_ssl_rec_fail(r, log, SG_SSL_ALERT_UNEXPECTED_MESSAGE, why);
}

static void
sg_ssl_rec_drop_idle_buffer(sg_ssl_rec_t *r)
{
    if (r->in && r->in_start == r->in_end && r->plain_pos == r->plain_end) {
        sg_ssl_rec_free_in(r);
        r->in_start = r->in_end = r->plain_pos = r->plain_end = 0;
    }
}

/* The wire buffer, allocated if need be, with the bytes not yet opened
 * moved to its front when no plaintext is held in it. */
static int
sg_ssl_rec_buffer(sg_ssl_rec_t *r)
{
    if (r->in == NULL) {
        r->in = malloc(SG_SSL_REC_MAX);
        if (r->in == NULL) {
            return SG_ERROR;
        }
        r->in_start = r->in_end = r->plain_pos = r->plain_end = 0;
    }
    if (r->plain_pos == r->plain_end && r->in_start) {
        memmove(r->in, r->in + r->in_start, r->in_end - r->in_start);
        /* what the move left behind may be opened records */
        OPENSSL_cleanse(r->in + r->in_end - r->in_start, r->in_start);
        r->in_end -= r->in_start;
        r->in_start = 0;
        r->plain_pos = r->plain_end = 0;
    }
    return SG_OK;
}

size_t
sg_ssl_rec_feed(sg_ssl_rec_t *r, const u_char *data, size_t len)
{
    if (len == 0 || sg_ssl_rec_buffer(r) != SG_OK) {
        return 0;
    }
    len = sg_min(len, SG_SSL_REC_MAX - r->in_end);
    memcpy(r->in + r->in_end, data, len);
    r->in_end += len;
    return len;
}

ssize_t
sg_ssl_rec_read(sg_ssl_rec_t *r, u_char *buf, size_t size, sg_log_t *log)
{
    size_t  total = 0, n;
    int     rc;

    while (total < size) {
        if (r->plain_pos < r->plain_end) {
            n = sg_min(size - total, r->plain_end - r->plain_pos);
            memcpy(buf + total, r->in + r->plain_pos, n);
            r->plain_pos += n;
            total += n;
            continue;
        }
        if (r->failed || r->closed) {
            break;
        }
        rc = sg_ssl_rec_open(r, log);
        if (rc == SG_AGAIN) {
            break;
        }
        if (rc == SG_DONE) {
            r->closed = 1;
        }
    }
    sg_ssl_rec_drop_idle_buffer(r);
    if (total) {
        return (ssize_t) total;
    }
    if (r->failed) {
        return SG_ERROR;
    }
    return r->closed ? 0 : SG_AGAIN;
}

bool
sg_ssl_rec_pending(sg_ssl_rec_t *r)
{
    return r->in != NULL && (r->in_start < r->in_end
                             || r->plain_pos < r->plain_end);
}

int
sg_ssl_rec_alert(sg_ssl_rec_t *r)
{
    return r->alert;
}


/* The connection side. */

int
sg_ssl_rec_hold(sg_ssl_rec_t *r, const u_char *data, size_t len)
{
    if (len == 0) {
        return SG_OK;
    }
    if (r->out != NULL || (r->out = malloc(len)) == NULL) {
        return SG_ERROR;
    }
    memcpy(r->out, data, len);
    r->out_pos = 0;
    r->out_end = len;
    r->out_plain = 0;
    return SG_OK;
}

/* Move held bytes, if few enough, to the front of sg_ssl_rec_wbuf: how
 * many (0 if none, or if they must be flushed on their own). */
static size_t
sg_ssl_rec_take_held(sg_ssl_rec_t *r)
{
    size_t  len;

    if (r->out == NULL || r->out_plain != 0
        || r->out_end - r->out_pos > SG_SSL_REC_HELD_MAX)
    {
        return 0;
    }
    len = r->out_end - r->out_pos;
    memcpy(sg_ssl_rec_wbuf, r->out + r->out_pos, len);
    free(r->out);
    r->out = NULL;
    r->out_pos = r->out_end = 0;
    return len;
}

/* One try at an alert record, behind anything held; nothing more is
 * sent after it. */
static void
sg_ssl_rec_send_alert(sg_connection_t *c, sg_ssl_rec_t *r, int level,
    int desc)
{
    u_char   msg[2];
    size_t   len, n;
    ssize_t  w;

    if (r->said_goodbye || desc < 0) {
        return;
    }
    len = sg_ssl_rec_take_held(r);
    if (r->out != NULL) {
        return;                       /* a record is half out */
    }
    r->said_goodbye = 1;
    msg[0] = (u_char) level;
    msg[1] = (u_char) desc;
    n = sg_ssl_rec_seal(r, SG_SSL_REC_ALERT, msg, 2, 0,
                        sg_ssl_rec_wbuf + len);
    len += n;
    if (n && len) {
        do {
            w = send(c->fd, sg_ssl_rec_wbuf, len, MSG_NOSIGNAL);
        } while (w == -1 && errno == EINTR);
    }
}

void
sg_ssl_rec_shutdown(sg_connection_t *c)
{
    sg_ssl_rec_t  *r = c->tls_rec;

    if (r && !r->failed) {
        sg_ssl_rec_send_alert(c, r, 1, SG_SSL_ALERT_CLOSE_NOTIFY);
    }
}

ssize_t
sg_ssl_rec_recv(sg_connection_t *c, u_char *buf, size_t size)
{
    sg_ssl_rec_t  *r = c->tls_rec;
    ssize_t        n;

    if (size == 0) {
        return 0;                       /* as SSL_read() */
    }
    for ( ;; ) {
        n = sg_ssl_rec_read(r, buf, size, c->log);
        if (n > 0) {
            c->received += (uint64_t) n;
            return n;
        }
        if (n == 0) {
            c->read->ready = 0;
            c->read->eof = 1;
            return 0;
        }
        if (n == SG_ERROR) {
            sg_ssl_rec_send_alert(c, r, 2, r->alert);
            c->read->ready = 0;
            c->read->error = 1;
            c->error = 1;
            return SG_ERROR;
        }
        if (sg_ssl_rec_buffer(r) != SG_OK) {
            sg_log_error(SG_LOG_ERR, c->log, 0, "no memory for a TLS "
                         "record buffer");
            c->read->error = 1;
            c->error = 1;
            return SG_ERROR;
        }
        n = recv(c->fd, r->in + r->in_end, SG_SSL_REC_MAX - r->in_end, 0);
        if (n > 0) {
            r->in_end += (size_t) n;
            continue;
        }
        if (n == 0) {
            c->read->ready = 0;
            if (r->in_start < r->in_end) {
                sg_log_error(SG_LOG_INFO, c->log, 0, "TLS read failed: %s "
                             "closed the connection in the middle of a "
                             "record", sg_ssl_rec_peer(r));
                r->failed = 1;
                c->read->error = 1;
                c->error = 1;
                return SG_ERROR;
            }
            /* no close_notify: an end of stream all the same, as with
             * SSL_OP_IGNORE_UNEXPECTED_EOF */
            sg_ssl_rec_drop_idle_buffer(r);
            c->read->eof = 1;
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        c->read->ready = 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            sg_ssl_rec_drop_idle_buffer(r);
            return SG_AGAIN;
        }
        c->read->error = 1;
        c->error = 1;
        sg_log_error(SG_LOG_INFO, c->log, errno, "recv() failed");
        return SG_ERROR;
    }
}

/* Send what a write left over: SG_OK when all is out. */
static int
sg_ssl_rec_flush(sg_connection_t *c, sg_ssl_rec_t *r)
{
    int  rc;

    rc = sg_send_rest(c->fd, r->out, r->out_end, &r->out_pos);
    if (rc == SG_AGAIN) {
        c->write->ready = 0;
        return SG_AGAIN;
    }
    if (rc == SG_ERROR) {
        c->write->error = 1;
        c->error = 1;
        sg_log_error(SG_LOG_INFO, c->log, errno, "send() failed");
        return SG_ERROR;
    }
    free(r->out);
    r->out = NULL;
    r->out_pos = r->out_end = 0;
    return SG_OK;
}

int
sg_ssl_rec_push(sg_connection_t *c)
{
    sg_ssl_rec_t  *r = c->tls_rec;

    if (r == NULL || r->out == NULL || r->out_plain != 0) {
        return SG_OK;
    }
    return sg_ssl_rec_flush(c, r);
}

/*
 * OpenSSL's contract for SSL_write with partial writes: n > 0 bytes of
 * buf are sent (sealed and written whole); SG_AGAIN means the record
 * being written did not go out whole, and the caller calls again with
 * the same bytes, which are then reported once the rest is out.
 */
ssize_t
sg_ssl_rec_send(sg_connection_t *c, const u_char *buf, size_t size)
{
    static const u_char  key_update[5] = { SG_SSL_HS_KEY_UPDATE, 0, 0, 1, 0 };
    static const u_char  close_notify[2] = { 1, SG_SSL_ALERT_CLOSE_NOTIFY };
    sg_ssl_rec_t        *r = c->tls_rec;
    size_t               total = 0, chunk, len, held, n;
    ssize_t              w;
    int                  rc;

    if (r->failed || r->said_goodbye) {
        c->error = 1;
        return SG_ERROR;
    }
    if (size == 0) {
        return 0;
    }
    /* What the handshake left (a ticket) goes in the same send. */
    held = sg_ssl_rec_take_held(r);
    if (r->out) {
        rc = sg_ssl_rec_flush(c, r);
        if (rc != SG_OK) {
            return rc;
        }
        n = r->out_plain;
        r->out_plain = 0;
        if (r->goodbye_queued) {
            r->said_goodbye = 1;
        }
        if (n > size) {
            sg_log_error(SG_LOG_ALERT, c->log, 0, "a TLS write was retried "
                         "with fewer bytes than before");
            c->error = 1;
            return SG_ERROR;
        }
        if (n) {
            c->sent += n;
            return (ssize_t) n;
        }
    }
    while (total < size) {
        len = held;
        held = 0;
        if (r->key_update_due) {
            /* owed since the client asked: before our next data */
            n = sg_ssl_rec_seal(r, SG_SSL_REC_HANDSHAKE, key_update,
                                sizeof(key_update), 0, sg_ssl_rec_wbuf + len);
            if (n == 0 || sg_ssl_rec_update_write(r) != SG_OK) {
                goto failed;
            }
            len += n;
            r->key_update_due = 0;
        }
        chunk = sg_min(size - total, SG_SSL_REC_PLAIN_MAX);
        n = sg_ssl_rec_seal(r, SG_SSL_REC_APPLICATION, buf + total, chunk, 0,
                            sg_ssl_rec_wbuf + len);
        if (n == 0) {
            goto failed;
        }
        len += n;
        if (c->last_write && total + chunk == size) {
            /* the connection's last bytes: close_notify goes with them */
            n = sg_ssl_rec_seal(r, SG_SSL_REC_ALERT, close_notify,
                                sizeof(close_notify), 0,
                                sg_ssl_rec_wbuf + len);
            if (n == 0) {
                goto failed;
            }
            len += n;
            r->goodbye_queued = 1;
        }
        do {
            /* after QUIT, MSG_MORE: the FIN joins close_notify */
            w = send(c->fd, sg_ssl_rec_wbuf, len,
                     r->goodbye_queued && c->fin_follows
                     ? MSG_NOSIGNAL | MSG_MORE : MSG_NOSIGNAL);
        } while (w == -1 && errno == EINTR);
        if (w == (ssize_t) len) {
            total += chunk;
            if (r->goodbye_queued) {
                r->said_goodbye = 1;
            }
            continue;
        }
        if (w == -1 && errno != EAGAIN && errno != EWOULDBLOCK) {
            c->write->error = 1;
            c->error = 1;
            sg_log_error(SG_LOG_INFO, c->log, errno, "send() failed");
            return SG_ERROR;
        }
        w = sg_max(w, 0);
        r->out = malloc(len - (size_t) w);
        if (r->out == NULL) {
            goto failed;
        }
        memcpy(r->out, sg_ssl_rec_wbuf + w, len - (size_t) w);
        r->out_pos = 0;
        r->out_end = len - (size_t) w;
        r->out_plain = chunk;
        c->write->ready = 0;
        break;
    }
    if (total == 0) {
        return SG_AGAIN;
    }
    c->sent += total;
    return (ssize_t) total;

failed:
    r->failed = 1;
    c->write->error = 1;
    c->error = 1;
    sg_log_error(SG_LOG_ERR, c->log, 0, "sealing a TLS record failed");
    return SG_ERROR;
}
