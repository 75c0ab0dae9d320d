/*
 * sg_ssl.h: TLS for the SMTP front end: per-server contexts built from
 * the ssl_* directives, the TLS connection layer (handshake, reads and
 * writes behind c->recv / c->send), SNI server selection and the facts
 * a session reports about its TLS (protocol, cipher, client
 * certificate).
 */
#ifndef SG_SSL_H
#define SG_SSL_H

#include "sg_smtp.h"
#include <openssl/ssl.h>

#define SG_SSL_STARTTLS_OFF   SG_SMTP_STARTTLS_OFF
#define SG_SSL_STARTTLS_ON    SG_SMTP_STARTTLS_ON
#define SG_SSL_STARTTLS_ONLY  SG_SMTP_STARTTLS_ONLY

#define SG_SSL_VERIFY_OFF       0
#define SG_SSL_VERIFY_ON        1
#define SG_SSL_VERIFY_OPTIONAL  2

extern sg_module_t  sg_ssl_module;

/* What the SMTP front end needs of a server's TLS settings. */
/* A server certificate as loaded: its file and dates (Unix time). */
typedef struct {
    sg_str_t     file;
    time_t       not_before;
    time_t       not_after;
} sg_ssl_cert_info_t;

/* Fill ci with the dates of x (a certificate just loaded from path),
 * and warn at file:line, once per path and load, when the other side
 * would refuse it (expired, not valid yet) or soon will (less than 14
 * days left).  directive names it in the warning.  Never an error but
 * for memory. */
char *sg_ssl_cert_dates(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *directive, X509 *x, const sg_str_t *path,
    sg_ssl_cert_info_t *ci);

typedef struct {
    SSL_CTX     *ctx;               /* NULL: no certificate configured */
    sg_array_t  *certs;             /* sg_ssl_cert_info_t; NULL: none */
    unsigned     starttls;
    unsigned     verify;
    unsigned     compact;           /* ssl_compact_state */
    unsigned     greeting_in_handshake;
    unsigned     implicit;          /* "ssl on": every listen is "ssl" */
    sg_msec_t    handshake_timeout;
} sg_ssl_srv_t;

sg_ssl_srv_t *sg_ssl_srv(sg_smtp_srv_conf_t *sscf);

/* The mail-level conf: defines $ssl_protocol, $ssl_cipher and
 * $ssl_client_s_dn (sg_ssl_variables.c). */
void *sg_ssl_create_main_conf(sg_conf_t *cf);

/*
 * Start TLS on a connection as the server, with the context of sscf.
 * Then call sg_ssl_handshake() from the connection's read and write
 * handlers until it returns SG_OK (done) or SG_ERROR (failed, logged at
 * info with the reason).  SG_AGAIN: wait for the next event.
 */
int sg_ssl_create_connection(sg_connection_t *c, sg_smtp_srv_conf_t *sscf);
int sg_ssl_handshake(sg_connection_t *c);
/*
 * TLS 1.3 lets a server send data right behind its first flight,
 * before the client's Finished ("0.5-RTT", RFC 8446 2 and 4.4.4).
 * sg_ssl_handshake_early() steps the handshake as sg_ssl_handshake()
 * does, but stops once that flight is written (held in our BIO, not yet
 * sent): SG_DECLINED.  sg_ssl_write_early() may then add one record to
 * it, at most SG_SSL_EARLY_MAX bytes (SG_DECLINED for more, or when
 * the stop was for a HelloRetryRequest, before any key), of data
 * any client may see: nothing has authenticated the client yet.  Then
 * sg_ssl_handshake() goes on from there.  A handshake that cannot stop
 * there (TLS 1.2) runs to its end: SG_OK, as from sg_ssl_handshake().
 */
#define SG_SSL_EARLY_MAX  SSL3_RT_MAX_PLAIN_LENGTH
int sg_ssl_handshake_early(sg_connection_t *c);
int sg_ssl_write_early(sg_connection_t *c, const u_char *data, size_t len);
/* After the handshake: the session belongs to sscf and meets its client
 * certificate policy (SG_OK), or the connection must close (logged). */
int sg_ssl_check_session(sg_connection_t *c, sg_smtp_srv_conf_t *sscf);
/* ssl_compact_state (compact, of the server the session ended up
 * with) or proxy_ssl_compact_state (a backend connection, the client
 * side): after a TLS 1.3 handshake, or TLS 1.2 with an AEAD suite, hand
 * the records to smtpgate's own layer and free the SSL object
 * (sg_ssl_record.h); otherwise OpenSSL goes on with them. */
void sg_ssl_release(sg_connection_t *c, bool compact);
/* What a server context needs for that (sg_ssl_build_ctx). */
void sg_ssl_compact_ctx(SSL_CTX *ctx, bool compact);

/* The socket under a server connection's SSL object (sg_ssl_bio.c):
 * reads a segment at a time and holds writes until
 * sg_ssl_bio_flush() (SG_OK, SG_AGAIN with write->ready cleared, or
 * SG_ERROR, logged).  After the handshake, what it read beyond the
 * handshake and what it still holds are the leftovers; passing, it
 * sends each write at once, after anything held. */
BIO *sg_ssl_bio_new(int fd);
int sg_ssl_bio_flush(sg_connection_t *c);
bool sg_ssl_bio_input_pending(SSL *ssl);
void sg_ssl_bio_leftovers(SSL *ssl, sg_str_t *in, sg_str_t *out);
void sg_ssl_bio_pass(SSL *ssl);
/* After sg_ssl_release(): the handshake's last flight, when our BIO
 * held one, leaves with the next reply if reply_next (implicit TLS
 * greets at once) or if it is a TLS 1.3 ticket, which no client waits
 * for (after STARTTLS the client speaks first); otherwise now (TLS
 * 1.2's Finished, which the client does wait for). */
int sg_ssl_push(sg_connection_t *c, bool reply_next);

/* Send close_notify without waiting for the peer's. */
void sg_ssl_shutdown(sg_connection_t *c);

/* The shared session cache (sg_ssl_cache.c). */
sg_shm_zone_t *sg_ssl_cache_zone(sg_conf_t *cf, const sg_str_t *name,
    size_t size);
void sg_ssl_cache_attach(SSL_CTX *ctx, sg_shm_zone_t *zone);

typedef struct {
    sg_str_t  verify;        /* SUCCESS, FAILED:reason, NONE */
    sg_str_t  subject;
    sg_str_t  issuer;
    sg_str_t  serial;
    sg_str_t  fingerprint;
} sg_ssl_facts_t;

void sg_ssl_cert_facts(sg_connection_t *c, sg_pool_t *pool,
    sg_ssl_facts_t *f);
/* The client certificate in PEM (empty when none). */
void sg_ssl_cert_pem(sg_connection_t *c, sg_pool_t *pool, sg_str_t *pem);

/* TLS towards a service (sg_ssl_io.c). */
SSL_CTX *sg_ssl_client_ctx(sg_pool_t *pool, bool verify,
    const sg_str_t *trusted, char *err, size_t errlen);
int sg_ssl_client_connection(sg_connection_t *c, SSL_CTX *ctx,
    const sg_str_t *host);
void sg_ssl_free_connection(sg_connection_t *c);

const char *sg_ssl_protocol(sg_connection_t *c);
const char *sg_ssl_cipher(sg_connection_t *c);
/* The verified client certificate's identity for SASL EXTERNAL: its
 * e-mail SAN, else emailAddress, else CN; false when there is no
 * verified certificate or the name holds a NUL byte. */
bool sg_ssl_client_identity(sg_connection_t *c, sg_pool_t *pool,
    sg_str_t *identity);

#endif /* SG_SSL_H */
