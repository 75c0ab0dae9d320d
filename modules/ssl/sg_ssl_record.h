/*
 * sg_ssl_record.h: smtpgate's own TLS record layer (TLS 1.3, and TLS 1.2
 * with an AEAD suite), for client connections whose handshake OpenSSL
 * has finished (ssl_compact_state).
 *
 * OpenSSL keeps about 14 KB per connection after a handshake, most of
 * it in the SSL object, for as long as the connection lives.  Once the
 * handshake is done, all a connection needs is a key, an IV and a
 * sequence number per direction (RFC 8446 5.2-5.3, 7.3; RFC 5246 6.3):
 * this layer takes those over from OpenSSL, which then frees the SSL
 * object.  The AEAD itself (AES-GCM, ChaCha20-Poly1305) is OpenSSL's
 * EVP; only the framing, nonces, padding, alerts and KeyUpdate are done
 * here.
 *
 * The engine (sg_ssl_rec_feed / _read / _seal) works on memory, so the
 * unit tests and the fuzz harness drive it without a socket; the
 * connection functions put it behind c->recv and c->send.
 */
#ifndef SG_SSL_RECORD_H
#define SG_SSL_RECORD_H

#include "sg_core.h"

#define SG_SSL_REC_AES_128_GCM_SHA256        0x1301
#define SG_SSL_REC_AES_256_GCM_SHA384        0x1302
#define SG_SSL_REC_CHACHA20_POLY1305_SHA256  0x1303

#define SG_SSL_REC_HEADER      5
#define SG_SSL_REC_TAG         16
#define SG_SSL_REC_PLAIN_MAX   16384          /* 2^14 */
/* Records in a row that carry no application data (empty ones, ignored
 * alerts, KeyUpdates, tickets): each costs an AEAD pass or a key
 * derivation, and a read takes them all while more keep coming, so a
 * peer sending them without end would hold the worker.  Past this many
 * the connection fails.  OpenSSL allows 32 empty records and 32
 * KeyUpdates in a row. */
#define SG_SSL_REC_IDLE_MAX    32
/* TLSCiphertext.length at most 2^14 + 256 (RFC 8446 5.2) */
#define SG_SSL_REC_CIPHER_MAX  (SG_SSL_REC_PLAIN_MAX + 256)
#define SG_SSL_REC_MAX         (SG_SSL_REC_HEADER + SG_SSL_REC_CIPHER_MAX)

#define SG_SSL_REC_ALERT         21
#define SG_SSL_REC_HANDSHAKE     22
#define SG_SSL_REC_APPLICATION   23

#define SG_SSL_REC_SECRET_MAX  48

typedef struct sg_ssl_rec_s  sg_ssl_rec_t;

/* A layer for a cipher suite (its TLS id) and the two application
 * traffic secrets: read (the peer's) and write (ours), each with the
 * sequence number its next record has.  NULL: an unknown suite, a bad
 * secret length, or no memory. */
sg_ssl_rec_t *sg_ssl_rec_new(unsigned suite, const u_char *rsecret,
    const u_char *wsecret, size_t len, uint64_t rseq, uint64_t wseq);
/* A TLS 1.2 layer for an AEAD suite (cipher_nid: NID_aes_128_gcm,
 * NID_aes_256_gcm or NID_chacha20_poly1305; prf_digest: the suite's PRF
 * hash), its keys from the master secret and the two randoms; name is
 * kept for the log.  as_client: the client's side (tests). */
sg_ssl_rec_t *sg_ssl_rec_new_tls12(int cipher_nid, const char *prf_digest,
    const char *name, const u_char *master, size_t master_len,
    const u_char *client_random, const u_char *server_random,
    uint64_t rseq, uint64_t wseq, bool as_client);
void sg_ssl_rec_free(sg_ssl_rec_t *r);
/* Our side is the client (a backend connection): the peer may also send
 * NewSessionTickets, which are read and dropped. */
void sg_ssl_rec_as_client(sg_ssl_rec_t *r);
/* The suite's name ("TLS_AES_256_GCM_SHA384"), the protocol's. */
const char *sg_ssl_rec_cipher_name(sg_ssl_rec_t *r);
const char *sg_ssl_rec_protocol(sg_ssl_rec_t *r);

/* Take up to len bytes from the wire; returns how many fit (the buffer
 * holds at most one record and the bytes behind it up to its size). */
size_t sg_ssl_rec_feed(sg_ssl_rec_t *r, const u_char *data, size_t len);
/* Plaintext from what was fed: n > 0 bytes; SG_AGAIN, more input is
 * needed; 0, the peer sent close_notify; SG_ERROR, the connection must
 * end (sg_ssl_rec_alert() says which alert to send, and the reason was
 * logged at info). */
ssize_t sg_ssl_rec_read(sg_ssl_rec_t *r, u_char *buf, size_t size,
    sg_log_t *log);
/* Bytes fed but not yet taken as plaintext. */
bool sg_ssl_rec_pending(sg_ssl_rec_t *r);
int sg_ssl_rec_alert(sg_ssl_rec_t *r);

/* Seal one record of content type type around in[0..len) (len at most
 * 2^14) followed by pad zero bytes (TLS 1.3 only), into out (room for
 * len + pad + 30 bytes); returns the record's length, 0 on a failure. */
size_t sg_ssl_rec_seal(sg_ssl_rec_t *r, int type, const u_char *in,
    size_t len, size_t pad, u_char *out);
/* Move our sending direction to its next traffic secret (after sending
 * a KeyUpdate). */
int sg_ssl_rec_update_write(sg_ssl_rec_t *r);

/* The connection side (c->tls_rec holds r). */
ssize_t sg_ssl_rec_recv(sg_connection_t *c, u_char *buf, size_t size);
ssize_t sg_ssl_rec_send(sg_connection_t *c, const u_char *buf,
    size_t size);
/* Records sealed elsewhere (by OpenSSL, at the end of the handshake) to
 * send before ours: they leave with the next write, or with
 * sg_ssl_rec_push() (SG_OK, SG_AGAIN, SG_ERROR).  SG_ERROR from hold:
 * no memory, or bytes are held already. */
int sg_ssl_rec_hold(sg_ssl_rec_t *r, const u_char *data, size_t len);
int sg_ssl_rec_push(sg_connection_t *c);
/* Send close_notify (once, without waiting). */
void sg_ssl_rec_shutdown(sg_connection_t *c);

#endif /* SG_SSL_RECORD_H */
