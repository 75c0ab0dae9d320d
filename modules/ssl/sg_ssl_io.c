/*
 * sg_ssl_io.c: TLS on a connection: the server handshake, reads and
 * writes in place of the plain ones, and shutdown.
 *
 * The event loop is edge-triggered, so a TLS read that stops short of
 * SSL_ERROR_WANT_READ leaves the read event ready, and a handshake that
 * ends with bytes in OpenSSL's buffers (or in our BIO's, sg_ssl_bio.c)
 * makes it ready: bytes already taken from the socket are never stranded
 * waiting for an event that will not come.  The SSL object is freed by
 * sg_ssl_free_connection(), which whoever closes the connection calls,
 * or straight after the handshake by sg_ssl_release().
 */
#include "sg_ssl.h"
#include "sg_ssl_record.h"
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>

static ssize_t sg_ssl_recv(sg_connection_t *c, u_char *buf, size_t size);
static ssize_t sg_ssl_send(sg_connection_t *c, const u_char *buf,
    size_t size);
static void sg_ssl_keylog_off(SSL *ssl);

static void
sg_ssl_ctx_free(void *data)
{
    SSL_CTX_free(data);
}

int
sg_ssl_create_connection(sg_connection_t *c, sg_smtp_srv_conf_t *sscf)
{
    sg_ssl_srv_t  *srv = sg_ssl_srv(sscf);
    SSL           *ssl;
    BIO           *bio;

    ssl = SSL_new(srv->ctx);
    if (ssl == NULL) {
        sg_log_error(SG_LOG_ERR, c->log, 0, "SSL_new() failed");
        return SG_ERROR;
    }
    /* Freed by sg_smtp_close_session() (sg_ssl_free_connection): a
     * cleanup record in the session pool would cost every connection. */
    bio = sg_ssl_bio_new(c->fd);
    if (bio == NULL) {
        SSL_free(ssl);
        sg_log_error(SG_LOG_ERR, c->log, 0, "no memory for a TLS socket");
        return SG_ERROR;
    }
    SSL_set_bio(ssl, bio, bio);
    SSL_set_app_data(ssl, c);
    SSL_set_accept_state(ssl);
    c->ssl = ssl;
    return SG_OK;
}

/* Why a TLS call failed, for the log: the library's reason, else the
 * system error, else "the peer closed the connection". */
static void
sg_ssl_log_failure(sg_connection_t *c, int sslerr, int err,
    const char *what)
{
    unsigned long  e = ERR_peek_last_error();
    char           buf[256];

    if (e) {
        ERR_error_string_n(e, buf, sizeof(buf));
        ERR_clear_error();
        sg_log_error(SG_LOG_INFO, c->log, 0, "%s failed: %s", what, buf);
    } else if (sslerr == SSL_ERROR_SYSCALL && err) {
        sg_log_error(SG_LOG_INFO, c->log, err, "%s failed", what);
    } else {
        sg_log_error(SG_LOG_INFO, c->log, 0, "%s failed: the client closed "
                     "the connection", what);
    }
}

/* Before a handshake step: SG_OK to take it, else what to return. */
static int
sg_ssl_handshake_step(sg_connection_t *c)
{
    int  rc;

    /* A flight our BIO could not send at once goes first. */
    rc = sg_ssl_bio_flush(c);
    if (rc != SG_OK) {
        return rc;
    }
    /* The read and the write event share the handler, and one epoll
     * report often carries both: the one OpenSSL is not waiting on
     * would only repeat the read (or write) that just failed. */
    if ((SSL_want_read(c->ssl) && !c->read->ready)
        || (SSL_want_write(c->ssl) && !c->write->ready))
    {
        return SG_AGAIN;
    }
    ERR_clear_error();
    return SG_OK;
}

static int sg_ssl_handshake_done(sg_connection_t *c);
static int sg_ssl_handshake_failed(sg_connection_t *c, int n);

int
sg_ssl_handshake(sg_connection_t *c)
{
    int  n, rc;

    rc = sg_ssl_handshake_step(c);
    if (rc != SG_OK) {
        return rc;
    }
    n = SSL_do_handshake(c->ssl);
    sg_ssl_keylog_off(c->ssl);
    if (n == 1) {
        return sg_ssl_handshake_done(c);
    }
    return sg_ssl_handshake_failed(c, n);
}

static int
sg_ssl_handshake_done(sg_connection_t *c)
{
    c->recv = sg_ssl_recv;
    c->send = sg_ssl_send;
    SSL_set_msg_callback(c->ssl, NULL);
    /* Reading ahead, the handshake's last read may also have taken the
     * peer's first records (an implicit-TLS client's command sent right
     * behind its Finished).  When that read came without an event (the
     * first step runs straight after accept, before epoll has said
     * anything), the event will never come: the bytes are out of the
     * socket, in OpenSSL. */
    if (SSL_has_pending(c->ssl) || sg_ssl_bio_input_pending(c->ssl)) {
        c->read->ready = 1;
    }
    sg_log_debug(c->log, "TLS handshake done: %s, %s",
                 SSL_get_version(c->ssl),
                 SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)));
    /* What our BIO still holds (a TLS 1.3 ticket) waits for
     * sg_ssl_release() and the first reply (sg_ssl_push()). */
    return SG_OK;
}

static int
sg_ssl_handshake_failed(sg_connection_t *c, int n)
{
    int  sslerr, err;

    sslerr = SSL_get_error(c->ssl, n);
    if (sslerr == SSL_ERROR_WANT_READ) {
        c->read->ready = 0;
        return sg_ssl_bio_flush(c) == SG_ERROR ? SG_ERROR : SG_AGAIN;
    }
    if (sslerr == SSL_ERROR_WANT_WRITE) {
        c->write->ready = 0;
        return SG_AGAIN;
    }
    err = errno;
    /* the alert OpenSSL wrote, if it could */
    (void) sg_ssl_bio_flush(c);
    c->error = 1;
    sg_ssl_log_failure(c, sslerr, err, "TLS handshake");
    return SG_ERROR;
}

/*
 * ssl_compact_state.  OpenSSL tells a TLS 1.3 connection's application
 * traffic secrets to a key-log callback, the one public way to learn
 * them; they wait in the SSL object's ex_data until the handshake is
 * done.  Each NewSessionTicket the server sends after the client's
 * Finished is a record under the new write key, so the ticket callback
 * counts them: that is our first sequence number.  The client's is 0:
 * without read-ahead OpenSSL reads record by record, so when the
 * handshake ends it holds nothing the client sent after its Finished
 * (SSL_has_pending() makes sure).
 */
typedef struct {
    u_char    rsecret[SG_SSL_REC_SECRET_MAX];     /* the client's */
    u_char    wsecret[SG_SSL_REC_SECRET_MAX];     /* ours */
    size_t    rlen;
    size_t    wlen;
    uint64_t  tickets;
    uint64_t  early;        /* records sent before the client's Finished */
} sg_ssl_secrets_t;

static int  sg_ssl_secrets_index = -1;
static int  sg_ssl_compact_index = -1;     /* SSL_CTX: compact state on */

static void
sg_ssl_secrets_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
    long argl, void *argp)
{
    (void) parent;
    (void) ad;
    (void) idx;
    (void) argl;
    (void) argp;
    if (ptr) {
        OPENSSL_cleanse(ptr, sizeof(sg_ssl_secrets_t));
        free(ptr);
    }
}

static sg_ssl_secrets_t *
sg_ssl_secrets(SSL *ssl, bool create)
{
    sg_ssl_secrets_t  *s;

    s = SSL_get_ex_data(ssl, sg_ssl_secrets_index);
    if (s || !create) {
        return s;
    }
    s = calloc(1, sizeof(sg_ssl_secrets_t));
    if (s && SSL_set_ex_data(ssl, sg_ssl_secrets_index, s) != 1) {
        free(s);
        s = NULL;
    }
    return s;
}

static void
sg_ssl_keylog(const SSL *ssl, const char *line)
{
    static const char   client[] = "CLIENT_TRAFFIC_SECRET_0 ";
    static const char   server[] = "SERVER_TRAFFIC_SECRET_0 ";
    sg_ssl_secrets_t   *s;
    const char         *p;
    u_char             *to;
    size_t             *len;
    bool                ours;

    if (strncmp(line, client, sizeof(client) - 1) == 0) {
        ours = !SSL_is_server(ssl);           /* a backend connection's */
        p = line + sizeof(client) - 1;
    } else if (strncmp(line, server, sizeof(server) - 1) == 0) {
        ours = SSL_is_server(ssl);
        p = line + sizeof(server) - 1;
    } else {
        return;                    /* handshake and exporter secrets */
    }
    p = strchr(p, ' ');                      /* past the client random */
    s = p ? sg_ssl_secrets((SSL *) ssl, true) : NULL;
    if (s == NULL) {
        return;
    }
    to = ours ? s->wsecret : s->rsecret;
    len = ours ? &s->wlen : &s->rlen;
    if (OPENSSL_hexstr2buf_ex(to, SG_SSL_REC_SECRET_MAX, len, p + 1, '\0')
        != 1)
    {
        *len = 0;                             /* not released, then */
    }
    /* Nothing more until the next Finished (sg_ssl_finished). */
    SSL_CTX_set_keylog_callback(SSL_get_SSL_CTX(ssl), NULL);
}

/*
 * OpenSSL writes out every secret it tells the key-log callback as a
 * line of hex (a sprintf() per byte), five per TLS 1.3 handshake, and
 * does so only while the SSL_CTX has a callback.  The two wanted are
 * derived right after a Finished is sent or received: the server's
 * application secret after the server's Finished (behind the exporter
 * secret, which comes along), the client's after the client's.  So the
 * callback is set at each Finished, on the context the handshake runs
 * under (SNI may have swapped it) when that one has compact state, and
 * taken off by the callback itself once it has its secret, and by
 * sg_ssl_keylog_off() after every handshake step: a worker runs one
 * handshake step at a time.  The two handshake secrets are never
 * written out; TLS 1.2 needs none: its keys come from the session's
 * master secret.
 */
static void
sg_ssl_finished(int write_p, int version, int content_type, const void *buf,
    size_t len, SSL *ssl, void *arg)
{
    SSL_CTX  *ctx;

    (void) write_p;
    (void) arg;
    if (content_type == SSL3_RT_HANDSHAKE && len > 0
        && *(const u_char *) buf == SSL3_MT_FINISHED
        && version == TLS1_3_VERSION)
    {
        ctx = SSL_get_SSL_CTX(ssl);
        if (SSL_CTX_get_ex_data(ctx, sg_ssl_compact_index) != NULL) {
            SSL_CTX_set_keylog_callback(ctx, sg_ssl_keylog);
        }
    }
}

static void
sg_ssl_keylog_off(SSL *ssl)
{
    SSL_CTX_set_keylog_callback(SSL_get_SSL_CTX(ssl), NULL);
}

static int
sg_ssl_ticket_made(SSL *ssl, void *arg)
{
    sg_ssl_secrets_t  *s = sg_ssl_secrets(ssl, false);

    (void) arg;
    if (s) {
        s->tickets++;
    }
    return 1;
}

/*
 * OpenSSL stops a server handshake after its first flight only for
 * early data (and after a HelloRetryRequest, where the client's second
 * ClientHello is next): SSL_read_early_data() runs it, and returns
 * FINISH there, having read none (no ticket of ours allows early data: max_early_data
 * stays 0, so a client sends none, and what one sent anyway would be
 * skipped).  Its state then allows SSL_write_early_data(), and
 * SSL_do_handshake() takes the handshake on from there.
 */
int
sg_ssl_handshake_early(sg_connection_t *c)
{
    u_char  byte;
    size_t  n;
    int     rc;

    rc = sg_ssl_handshake_step(c);
    if (rc != SG_OK) {
        return rc;
    }
    rc = SSL_read_early_data(c->ssl, &byte, 1, &n);
    sg_ssl_keylog_off(c->ssl);
    switch (rc) {
    case SSL_READ_EARLY_DATA_FINISH:
        if (SSL_is_init_finished(c->ssl)) {
            return sg_ssl_handshake_done(c);          /* TLS 1.2 */
        }
        return SG_DECLINED;
    case SSL_READ_EARLY_DATA_SUCCESS:
        c->error = 1;
        sg_log_error(SG_LOG_INFO, c->log, 0, "TLS handshake failed: early "
                     "data accepted, which smtpgate never allows");
        return SG_ERROR;
    }
    return sg_ssl_handshake_failed(c, -1);
}

/* Records sent under the new key before the handshake ends count in
 * ssl_compact_state's first sequence number, as the tickets do.  The
 * caller's data is one record: at most SG_SSL_EARLY_MAX bytes (a client
 * that asked for records smaller than that keeps its state in OpenSSL,
 * sg_ssl_release()). */
int
sg_ssl_write_early(sg_connection_t *c, const u_char *data, size_t len)
{
    sg_ssl_secrets_t  *s;
    size_t             written = 0;
    u_char             finished[EVP_MAX_MD_SIZE];
    int                err;

    /* OpenSSL stops after a HelloRetryRequest too, with no key to write
     * under yet: only once our Finished is out. */
    if (len == 0 || len > SG_SSL_EARLY_MAX
        || SSL_get_finished(c->ssl, finished, sizeof(finished)) == 0)
    {
        return SG_DECLINED;
    }
    ERR_clear_error();
    if (SSL_write_early_data(c->ssl, data, len, &written) != 1
        || written != len)
    {
        err = errno;
        c->error = 1;
        sg_ssl_log_failure(c, SSL_get_error(c->ssl, 0), err,
                           "TLS write in the handshake");
        return SG_ERROR;
    }
    c->sent += (uint64_t) len;
    s = sg_ssl_secrets(c->ssl, false);
    if (s) {
        s->early++;
    }
    return SG_OK;
}

void
sg_ssl_compact_ctx(SSL_CTX *ctx, bool compact)
{
    if (sg_ssl_secrets_index < 0) {
        sg_ssl_secrets_index = SSL_get_ex_new_index(0, NULL, NULL, NULL,
                                                    sg_ssl_secrets_free);
    }
    if (sg_ssl_compact_index < 0) {
        sg_ssl_compact_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL,
                                                        NULL);
    }
    /* Tickets go out under the context the handshake began with, which
     * SNI may have swapped for one that releases: count on every one,
     * and watch for Finished on every one (the SSL object keeps the
     * first context's message callback). */
    SSL_CTX_set_session_ticket_cb(ctx, sg_ssl_ticket_made, NULL, NULL);
    SSL_CTX_set_msg_callback(ctx, sg_ssl_finished);
    if (compact) {
        (void) SSL_CTX_set_ex_data(ctx, sg_ssl_compact_index, (void *) ctx);
        SSL_CTX_set_read_ahead(ctx, 0);
    }
}

/* TLS 1.2: the keys come from the session's master secret and the two
 * randoms; both sides' Finished was record 0 under them. */
static sg_ssl_rec_t *
sg_ssl_release_tls12(SSL *ssl, bool client)
{
    const SSL_CIPHER  *cipher = SSL_get_current_cipher(ssl);
    const EVP_MD      *md = SSL_CIPHER_get_handshake_digest(cipher);
    sg_ssl_rec_t      *r;
    u_char             master[SSL_MAX_MASTER_KEY_LENGTH];
    u_char             cr[SSL3_RANDOM_SIZE], sr[SSL3_RANDOM_SIZE];
    size_t             n;

    n = SSL_SESSION_get_master_key(SSL_get_session(ssl), master,
                                   sizeof(master));
    if (md == NULL || n == 0
        || SSL_get_client_random(ssl, cr, sizeof(cr)) != sizeof(cr)
        || SSL_get_server_random(ssl, sr, sizeof(sr)) != sizeof(sr))
    {
        return NULL;
    }
    r = sg_ssl_rec_new_tls12(SSL_CIPHER_get_cipher_nid(cipher),
                             EVP_MD_get0_name(md),
                             SSL_CIPHER_get_name(cipher), master, n, cr, sr,
                             1, 1, client);
    OPENSSL_cleanse(master, sizeof(master));
    return r;
}

void
sg_ssl_release(sg_connection_t *c, bool compact)
{
    SSL               *ssl = c->ssl;
    sg_ssl_secrets_t  *s = sg_ssl_secrets(ssl, false);
    sg_ssl_rec_t      *r = NULL;
    const char        *why;
    sg_str_t           in, out;
    int                version = SSL_version(ssl);
    bool               client = !SSL_is_server(ssl);

    if (!compact) {
        why = NULL;
    } else if (version != TLS1_3_VERSION && version != TLS1_2_VERSION) {
        why = "not TLS 1.2 or 1.3";
    } else if (!client && SSL_get0_peer_certificate(ssl) != NULL) {
        why = "a client certificate is kept for the session";
    } else if (version == TLS1_3_VERSION
               && (s == NULL || s->rlen == 0 || s->rlen != s->wlen))
    {
        why = "no traffic secrets";
    } else if (SSL_has_pending(ssl)
               || SSL_get_early_data_status(ssl) == SSL_EARLY_DATA_ACCEPTED)
    {
        why = "OpenSSL holds records already";
    } else if (SSL_SESSION_get_max_fragment_length(SSL_get_session(ssl))
               != TLSEXT_max_fragment_length_DISABLED)
    {
        why = "the client asked for smaller records";
    } else {
        /* Our first sequence numbers: a server's is the tickets it
         * sent; a client's is 0 (it sends no tickets, and reads the
         * server's with the records that follow). */
        r = version == TLS1_2_VERSION
            ? sg_ssl_release_tls12(ssl, client)
            : sg_ssl_rec_new(SSL_CIPHER_get_protocol_id(
                                 SSL_get_current_cipher(ssl)),
                             s->rsecret, s->wsecret, s->rlen, 0,
                             client ? 0 : s->early + s->tickets);
        if (r && client) {
            sg_ssl_rec_as_client(r);
        }
        why = "the cipher suite is not one smtpgate seals";
    }
    if (r) {
        /* What our BIO read past the handshake, and the ticket it
         * holds, move to the record layer. */
        sg_ssl_bio_leftovers(ssl, &in, &out);
        if (sg_ssl_rec_feed(r, in.data, in.len) != in.len
            || sg_ssl_rec_hold(r, out.data, out.len) != SG_OK)
        {
            sg_ssl_rec_free(r);
            r = NULL;
            why = "no memory";
        }
    }
    if (r) {
        sg_log_debug(c->log, "TLS state released: records by smtpgate "
                     "from here on (%s %s; tickets sent: %llu)",
                     sg_ssl_rec_protocol(r), sg_ssl_rec_cipher_name(r),
                     (unsigned long long) (s ? s->tickets : 0));
        /* Freed unshut, an SSL object takes its session out of the
         * cache: the session is good, and close_notify is ours to
         * send now. */
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(ssl);
        c->ssl = NULL;
        c->tls_rec = r;
        c->recv = sg_ssl_rec_recv;
        c->send = sg_ssl_rec_send;
        return;
    }
    if (why) {
        sg_log_debug(c->log, "TLS state kept in OpenSSL: %s", why);
    }
    if (s) {
        SSL_set_ex_data(ssl, sg_ssl_secrets_index, NULL);
        sg_ssl_secrets_free(NULL, s, NULL, 0, 0, NULL);
    }
    SSL_set_read_ahead(ssl, 1);
    sg_ssl_bio_pass(ssl);
}

int
sg_ssl_push(sg_connection_t *c, bool reply_next)
{
    bool  tls13;

    tls13 = c->tls_rec
            ? strcmp(sg_ssl_rec_protocol(c->tls_rec), "TLSv1.3") == 0
            : c->ssl && SSL_version(c->ssl) == TLS1_3_VERSION;
    if (reply_next || tls13) {
        return SG_OK;
    }
    return c->tls_rec ? sg_ssl_rec_push(c) : sg_ssl_bio_flush(c);
}

static ssize_t
sg_ssl_recv(sg_connection_t *c, u_char *buf, size_t size)
{
    int  n, sslerr;

    ERR_clear_error();
    n = SSL_read(c->ssl, buf, (int) sg_min(size, INT_MAX));
    if (n > 0) {
        c->received += (uint64_t) n;
        return n;
    }
    sslerr = SSL_get_error(c->ssl, n);
    switch (sslerr) {
    case SSL_ERROR_WANT_READ:
        c->read->ready = 0;
        return SG_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        c->write->ready = 0;
        return SG_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        c->read->ready = 0;
        c->read->eof = 1;
        return 0;
    }
    c->read->ready = 0;
    c->read->error = 1;
    c->error = 1;
    sg_ssl_log_failure(c, sslerr, errno, "TLS read");
    return SG_ERROR;
}

static ssize_t
sg_ssl_send(sg_connection_t *c, const u_char *buf, size_t size)
{
    int  n, sslerr;

    ERR_clear_error();
    n = SSL_write(c->ssl, buf, (int) sg_min(size, INT_MAX));
    if (n > 0) {
        c->sent += (uint64_t) n;
        return n;
    }
    sslerr = SSL_get_error(c->ssl, n);
    if (sslerr == SSL_ERROR_WANT_WRITE) {
        c->write->ready = 0;
        return SG_AGAIN;
    }
    if (sslerr == SSL_ERROR_WANT_READ) {
        c->read->ready = 0;
        return SG_AGAIN;
    }
    c->write->error = 1;
    c->error = 1;
    sg_ssl_log_failure(c, sslerr, errno, "TLS write");
    return SG_ERROR;
}

void
sg_ssl_shutdown(sg_connection_t *c)
{
    if (c->tls_rec && !c->error) {
        sg_ssl_rec_shutdown(c);
    }
    if (c->ssl == NULL) {
        return;
    }
    if (!c->error && SSL_is_init_finished(c->ssl)) {
        ERR_clear_error();
        (void) SSL_shutdown(c->ssl);      /* one try, never wait */
        ERR_clear_error();
    }
}

const char *
sg_ssl_protocol(sg_connection_t *c)
{
    if (c->ssl) {
        return SSL_get_version(c->ssl);
    }
    return c->tls_rec ? sg_ssl_rec_protocol(c->tls_rec) : "";
}

const char *
sg_ssl_cipher(sg_connection_t *c)
{
    if (c->ssl) {
        return SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl));
    }
    return c->tls_rec ? sg_ssl_rec_cipher_name(c->tls_rec) : "";
}

/* The certificate's first e-mail SAN, else its emailAddress, else its
 * CN.  A name with an embedded NUL is refused outright: a CA-signed
 * "victim\0@evil" must never read as "victim". */
static int
sg_ssl_identity_of(X509 *cert, char *buf, size_t len)
{
    STACK_OF(GENERAL_NAME)  *sans;
    const GENERAL_NAME      *gn;
    X509_NAME               *subj;
    int                      i, n = 0;

    sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
        gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_EMAIL) {
            continue;
        }
        n = ASN1_STRING_length(gn->d.rfc822Name);
        if (n <= 0 || (size_t) n >= len) {
            n = -1;
            break;
        }
        memcpy(buf, ASN1_STRING_get0_data(gn->d.rfc822Name), (size_t) n);
        buf[n] = '\0';
        break;
    }
    GENERAL_NAMES_free(sans);
    if (n == 0) {
        subj = X509_get_subject_name(cert);
        n = X509_NAME_get_text_by_NID(subj, NID_pkcs9_emailAddress, buf,
                                      (int) len);
        if (n <= 0) {
            n = X509_NAME_get_text_by_NID(subj, NID_commonName, buf,
                                          (int) len);
        }
    }
    if (n <= 0 || strlen(buf) != (size_t) n) {
        return SG_ERROR;
    }
    return n;
}

bool
sg_ssl_client_identity(sg_connection_t *c, sg_pool_t *pool,
    sg_str_t *identity)
{
    X509  *cert;
    char   buf[256];
    int    n;

    if (c->ssl == NULL || SSL_get_verify_result(c->ssl) != X509_V_OK) {
        return false;
    }
    cert = SSL_get1_peer_certificate(c->ssl);
    if (cert == NULL) {
        return false;
    }
    n = sg_ssl_identity_of(cert, buf, sizeof(buf));
    X509_free(cert);
    if (n <= 0) {
        sg_log_error(SG_LOG_INFO, c->log, 0, "the client certificate has no "
                     "usable identity (e-mail or CN, without NUL bytes)");
        return false;
    }
    identity->len = (size_t) n;
    identity->data = sg_pnalloc(pool, identity->len);
    if (identity->data == NULL) {
        return false;
    }
    memcpy(identity->data, buf, identity->len);
    return true;
}

/* What an HTTP auth service is told of the client certificate, in
 * nginx's forms: "SUCCESS" / "FAILED:reason" / "NONE", one-line DNs,
 * the serial in hex and the SHA-1 fingerprint in hex.  Strings come
 * from pool; absent ones stay empty. */
void
sg_ssl_cert_facts(sg_connection_t *c, sg_pool_t *pool, sg_ssl_facts_t *f)
{
    X509           *cert;
    BIO            *bio;
    u_char          md[EVP_MAX_MD_SIZE];
    unsigned        mdlen = 0, i;
    char           *p;
    long            n;
    const char     *v;
    ASN1_INTEGER   *serial;
    BIGNUM         *bn;

    memset(f, 0, sizeof(*f));
    if (c->ssl == NULL) {
        if (c->tls_rec) {
            sg_str_set(&f->verify, "NONE");   /* released: none came */
        }
        return;
    }
    cert = SSL_get1_peer_certificate(c->ssl);
    if (cert == NULL) {
        sg_str_set(&f->verify, "NONE");
        return;
    }
    n = SSL_get_verify_result(c->ssl);
    if (n == X509_V_OK) {
        sg_str_set(&f->verify, "SUCCESS");
    } else {
        v = X509_verify_cert_error_string(n);
        f->verify.data = sg_pnalloc(pool, strlen(v) + 8);
        if (f->verify.data) {
            f->verify.len = (size_t) sprintf((char *) f->verify.data,
                                             "FAILED:%s", v);
        }
    }
    bio = BIO_new(BIO_s_mem());
    if (bio) {
        X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0,
                           XN_FLAG_RFC2253);
        n = BIO_get_mem_data(bio, &p);
        f->subject.data = sg_pnalloc(pool, (size_t) n);
        if (f->subject.data && n > 0) {
            memcpy(f->subject.data, p, (size_t) n);
            f->subject.len = (size_t) n;
        }
        (void) BIO_reset(bio);
        X509_NAME_print_ex(bio, X509_get_issuer_name(cert), 0,
                           XN_FLAG_RFC2253);
        n = BIO_get_mem_data(bio, &p);
        f->issuer.data = sg_pnalloc(pool, (size_t) n);
        if (f->issuer.data && n > 0) {
            memcpy(f->issuer.data, p, (size_t) n);
            f->issuer.len = (size_t) n;
        }
        BIO_free(bio);
    }
    serial = X509_get_serialNumber(cert);
    bn = serial ? ASN1_INTEGER_to_BN(serial, NULL) : NULL;
    if (bn) {
        p = BN_bn2hex(bn);
        if (p) {
            f->serial.len = strlen(p);
            f->serial.data = sg_pnalloc(pool, f->serial.len);
            if (f->serial.data) {
                memcpy(f->serial.data, p, f->serial.len);
            } else {
                f->serial.len = 0;
            }
            OPENSSL_free(p);
        }
        BN_free(bn);
    }
    if (X509_digest(cert, EVP_sha1(), md, &mdlen) == 1) {
        f->fingerprint.data = sg_pnalloc(pool, 2 * mdlen + 1);
        for (i = 0; f->fingerprint.data && i < mdlen; i++) {
            sprintf((char *) f->fingerprint.data + 2 * i, "%02x", md[i]);
        }
        f->fingerprint.len = f->fingerprint.data ? 2 * mdlen : 0;
    }
    X509_free(cert);
}

/* TLS towards services (an HTTP auth service): a client context that
 * verifies the peer against trusted (or the system's CAs) unless told
 * not to.  NULL with a reason in err. */
SSL_CTX *
sg_ssl_client_ctx(sg_pool_t *pool, bool verify, const sg_str_t *trusted,
    char *err, size_t errlen)
{
    SSL_CTX  *ctx;

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "SSL_CTX_new() failed");
        return NULL;
    }
    if (sg_pool_cleanup_add(pool, sg_ssl_ctx_free, ctx) != SG_OK) {
        SSL_CTX_free(ctx);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* what a service answers (Auth-Pass) is wiped from OpenSSL's
     * buffer once read */
    SSL_CTX_set_options(ctx, SSL_OP_CLEANSE_PLAINTEXT);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                          | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                          | SSL_MODE_RELEASE_BUFFERS);
    if (!verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (trusted && trusted->data) {
        if (SSL_CTX_load_verify_locations(ctx, (const char *) trusted->data,
                                          NULL) != 1)
        {
            snprintf(err, errlen, "cannot load trusted certificates from "
                     "\"%.*s\"", SG_STR_ARG(trusted));
            ERR_clear_error();
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "cannot load the system's CA certificates");
        ERR_clear_error();
        return NULL;
    }
    return ctx;
}

/* Start TLS as a client on c; the peer's certificate must name host (a
 * DNS name or an IP address), which is also sent as SNI when it is a
 * name.  Then sg_ssl_handshake() until done. */
int
sg_ssl_client_connection(sg_connection_t *c, SSL_CTX *ctx,
    const sg_str_t *host)
{
    char   name[256];
    SSL   *ssl;
    struct in6_addr  a6;

    if (host->len == 0 || host->len >= sizeof(name)) {
        return SG_ERROR;             /* nothing to send, nothing to check */
    }
    memcpy(name, host->data, host->len);
    name[host->len] = '\0';
    ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, c->fd) != 1) {
        SSL_free(ssl);
        return SG_ERROR;
    }
    if (inet_pton(AF_INET, name, &a6) != 1
        && inet_pton(AF_INET6, name, &a6) != 1)
    {
        (void) SSL_set_tlsext_host_name(ssl, name);
    }
    if (SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE
        && SSL_set1_host(ssl, name) != 1)
    {
        SSL_free(ssl);
        return SG_ERROR;
    }
    SSL_set_app_data(ssl, c);
    SSL_set_connect_state(ssl);
    c->ssl = ssl;
    return SG_OK;
}

/* For connections outside any pool: free the TLS state with the
 * connection. */
void
sg_ssl_free_connection(sg_connection_t *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->tls_rec) {
        sg_ssl_rec_free(c->tls_rec);
        c->tls_rec = NULL;
    }
}

void
sg_ssl_cert_pem(sg_connection_t *c, sg_pool_t *pool, sg_str_t *pem)
{
    X509   *cert;
    BIO    *bio;
    char   *p;
    long    n;

    pem->len = 0;
    pem->data = NULL;
    cert = c->ssl ? SSL_get1_peer_certificate(c->ssl) : NULL;
    if (cert == NULL) {
        return;
    }
    bio = BIO_new(BIO_s_mem());
    if (bio && PEM_write_bio_X509(bio, cert) == 1) {
        n = BIO_get_mem_data(bio, &p);
        pem->data = n > 0 ? sg_pnalloc(pool, (size_t) n) : NULL;
        if (pem->data) {
            memcpy(pem->data, p, (size_t) n);
            pem->len = (size_t) n;
        }
    }
    BIO_free(bio);
    X509_free(cert);
}
