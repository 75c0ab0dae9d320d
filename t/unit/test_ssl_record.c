/*
 * test_ssl_record.c: smtpgate's TLS 1.3 record layer (ssl_compact_state)
 * against OpenSSL's, over a socket pair.
 *
 * The server side does its handshake as the front end does
 * (sg_ssl_handshake, then sg_ssl_release); from then on its records are
 * sealed and opened by sg_ssl_record.c while the client stays a plain
 * OpenSSL client.  Every cipher suite, with 0, 1 and 3 session tickets
 * (each moves the server's first sequence number), TLS 1.2's AEAD suites,
 * full and resumed, data both ways, large
 * transfers through a small socket buffer (partial writes), KeyUpdate
 * both ways, close_notify both ways, and forged records.  The engine
 * alone (two layers facing each other, no socket) covers padding, empty
 * records, records split at every byte, replays and bad messages.
 */
#include "sg_core.h"
#include "sg_test.h"

#if (SG_HAVE_SSL_MODULE)

#include "sg_ssl.h"
#include "sg_ssl_record.h"
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include "sg_test_cert.h"

static EVP_PKEY  *test_key;
static X509      *test_cert;

static const char  *suites[] = {
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
};

typedef struct {
    int              fds[2];       /* [0] the server's, [1] the client's */
    SSL_CTX         *sctx, *cctx;
    SSL             *client;
    sg_connection_t  c;
    sg_event_t       rev, wev;
    sg_log_t         log;
    unsigned         key_updates_in;     /* seen by the client */
    int              alert_in;           /* the last one, or -1 */
} tpair_t;

static void
client_msg(int write_p, int version, int type, const void *buf, size_t len,
    SSL *ssl, void *arg)
{
    tpair_t       *p = arg;
    const u_char  *b = buf;

    (void) version;
    (void) ssl;
    if (write_p || len < 2) {
        return;
    }
    if (type == SSL3_RT_HANDSHAKE && b[0] == 24) {
        p->key_updates_in++;
    }
    if (type == SSL3_RT_ALERT) {
        p->alert_in = b[1];
    }
}

/* For resumption: the server context to use again (its ticket keys)
 * and the session the client offers. */
static SSL_CTX      *reuse_sctx;
static SSL_SESSION  *resume;

/* A handshake driven step by step; suite: TLS 1.3 ciphersuites or a
 * TLS 1.2 cipher list; early: what the client writes as soon as its
 * side is done (right behind its Finished). */
static int
tp_open(tpair_t *p, int version, const char *suite, int tickets,
    const char *early)
{
    SSL   *ssl;
    BIO   *bio;
    int    i, rc = SG_AGAIN;
    bool   client_done = false;

    memset(p, 0, sizeof(*p));
    p->alert_in = -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p->fds) != 0) {
        return -1;
    }
    p->sctx = reuse_sctx ? reuse_sctx : SSL_CTX_new(TLS_server_method());
    if (reuse_sctx) {
        SSL_CTX_up_ref(reuse_sctx);
    }
    p->cctx = SSL_CTX_new(TLS_client_method());
    if (p->sctx == NULL || p->cctx == NULL
        || SSL_CTX_use_certificate(p->sctx, test_cert) != 1
        || SSL_CTX_use_PrivateKey(p->sctx, test_key) != 1)
    {
        return -1;
    }
    /* as sg_ssl_build_ctx() does */
    SSL_CTX_set_mode(p->sctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                              | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                              | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(p->sctx, 1);
    sg_ssl_compact_ctx(p->sctx, true);
    SSL_CTX_set_num_tickets(p->sctx, (size_t) tickets);
    SSL_CTX_set_min_proto_version(p->sctx, version);
    SSL_CTX_set_max_proto_version(p->sctx, version);
    if (suite && (version == TLS1_3_VERSION
                  ? SSL_CTX_set_ciphersuites(p->sctx, suite)
                  : SSL_CTX_set_cipher_list(p->sctx, suite)) != 1)
    {
        return -1;
    }
    SSL_CTX_set_verify(p->cctx, SSL_VERIFY_NONE, NULL);
    if (suite && (version == TLS1_3_VERSION
                  ? SSL_CTX_set_ciphersuites(p->cctx, suite)
                  : SSL_CTX_set_cipher_list(p->cctx, suite)) != 1)
    {
        return -1;
    }

    p->client = SSL_new(p->cctx);
    ssl = SSL_new(p->sctx);
    bio = sg_ssl_bio_new(p->fds[0]);      /* as sg_ssl_create_connection */
    if (p->client == NULL || ssl == NULL || bio == NULL
        || SSL_set_fd(p->client, p->fds[1]) != 1)
    {
        BIO_free(bio);
        SSL_free(ssl);
        return -1;
    }
    SSL_set_bio(ssl, bio, bio);
    if (resume) {
        SSL_set_session(p->client, resume);
    }
    SSL_set_msg_callback(p->client, client_msg);
    SSL_set_msg_callback_arg(p->client, p);
    SSL_set_app_data(ssl, &p->c);
    SSL_set_accept_state(ssl);
    SSL_set_connect_state(p->client);

    p->log.level = 0;                   /* nothing is written */
    p->c.fd = p->fds[0];
    p->c.read = &p->rev;
    p->c.write = &p->wev;
    p->c.log = &p->log;
    p->c.ssl = ssl;
    p->rev.data = &p->c;
    p->wev.data = &p->c;

    for (i = 0; i < 40 && (rc != SG_OK || !client_done); i++) {
        if (!client_done && SSL_do_handshake(p->client) == 1) {
            client_done = true;
            if (early) {
                (void) SSL_write(p->client, early, (int) strlen(early));
            }
        }
        if (rc == SG_AGAIN) {
            p->rev.ready = 1;
            p->wev.ready = 1;
            rc = sg_ssl_handshake(&p->c);
            if (rc == SG_ERROR) {
                return -1;
            }
            /* the key-log callback is set only inside a step, from a
             * Finished on (sg_ssl_finished()), never between steps */
            CHECK(SSL_CTX_get_keylog_callback(p->sctx) == NULL);
            if (rc == SG_OK) {
                /* as sg_smtp_tls_handler(), after STARTTLS: a TLS 1.2
                 * Finished goes now, a TLS 1.3 ticket with the reply */
                sg_ssl_release(&p->c, true);
                if (sg_ssl_push(&p->c, false) != SG_OK) {
                    return -1;
                }
            }
        }
    }
    if (rc != SG_OK || !client_done) {
        return -1;
    }
    p->rev.ready = 1;
    p->wev.ready = 1;
    return 0;
}

static void
tp_close(tpair_t *p)
{
    sg_ssl_free_connection(&p->c);
    SSL_free(p->client);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
    close(p->fds[0]);
    close(p->fds[1]);
    ERR_clear_error();
}

/* Everything the server has for us, up to want bytes. */
static size_t
server_read(tpair_t *p, u_char *buf, size_t want)
{
    size_t   got = 0;
    ssize_t  n;

    p->rev.ready = 1;
    while (got < want) {
        n = p->c.recv(&p->c, buf + got, want - got);
        if (n <= 0) {
            break;
        }
        got += (size_t) n;
    }
    return got;
}

static size_t
client_read(tpair_t *p, u_char *buf, size_t want)
{
    size_t  got = 0;
    int     n;

    while (got < want) {
        n = SSL_read(p->client, buf + got, (int) (want - got));
        if (n <= 0) {
            break;
        }
        got += (size_t) n;
    }
    return got;
}

/* Released with these names, and a command and a reply through it. */
static void
check_released(tpair_t *p, const char *protocol, const char *cipher)
{
    u_char  buf[64];

    CHECK(p->c.ssl == NULL && p->c.tls_rec != NULL);
    CHECK_MEM(sg_ssl_protocol(&p->c), strlen(sg_ssl_protocol(&p->c)),
              protocol, strlen(protocol));
    CHECK_MEM(sg_ssl_cipher(&p->c), strlen(sg_ssl_cipher(&p->c)),
              cipher, strlen(cipher));
    CHECK_INT(SSL_write(p->client, "EHLO x\r\n", 8), 8);
    CHECK_MEM(buf, server_read(p, buf, 8), "EHLO x\r\n", 8);
    CHECK_INT(p->c.send(&p->c, (const u_char *) "250 ok\r\n", 8), 8);
    CHECK_MEM(buf, client_read(p, buf, 8), "250 ok\r\n", 8);
}

/* Bytes both ways after the handshake, for every suite and ticket
 * count: a wrong first sequence number fails the client's first read. */
static void
test_suites_and_tickets(void)
{
    static const int  tickets[] = { 0, 1, 3 };
    tpair_t           p;
    u_char            buf[64];
    size_t            s, t;

    for (s = 0; s < sg_nelems(suites); s++) {
        for (t = 0; t < sg_nelems(tickets); t++) {
            if (CHECK(tp_open(&p, TLS1_3_VERSION, suites[s], tickets[t],
                              NULL) == 0))
            {
                printf("    %s, %d tickets\n", suites[s], tickets[t]);
                continue;
            }
            check_released(&p, "TLSv1.3", suites[s]);
            /* once more each way: the sequence numbers move on */
            CHECK_INT(SSL_write(p.client, "QUIT\r\n", 6), 6);
            CHECK_MEM(buf, server_read(&p, buf, 6), "QUIT\r\n", 6);
            CHECK_INT(p.c.send(&p.c, (const u_char *) "221 bye\r\n", 9), 9);
            CHECK_MEM(buf, client_read(&p, buf, 9), "221 bye\r\n", 9);
            tp_close(&p);
        }
    }
}

/* A command right behind the client's Finished stays in the socket
 * (no read-ahead in the handshake) and is the released layer's. */
static void
test_command_behind_finished(void)
{
    tpair_t  p;
    u_char   buf[64];

    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, "QUIT\r\n") == 0)) {
        return;
    }
    CHECK(p.c.tls_rec != NULL);
    CHECK_MEM(buf, server_read(&p, buf, 6), "QUIT\r\n", 6);
    tp_close(&p);
}

/* TLS 1.2 with an AEAD suite, full and resumed: released, and bytes
 * go both ways (both sides' Finished was record 0 under the keys). */
static void
test_tls12(void)
{
    static const char  *ciphers[] = {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    };
    tpair_t   p;
    u_char    buf[64];
    size_t    i;
    int       round;

    for (i = 0; i < sg_nelems(ciphers); i++) {
        for (round = 0; round < 2; round++) {
            if (CHECK(tp_open(&p, TLS1_2_VERSION, ciphers[i], 1, NULL) == 0))
            {
                break;
            }
            CHECK_INT(SSL_session_reused(p.client), round);
            check_released(&p, "TLSv1.2", ciphers[i]);
            CHECK_INT(SSL_write(p.client, "QUIT\r\n", 6), 6);
            CHECK_MEM(buf, server_read(&p, buf, 6), "QUIT\r\n", 6);
            sg_ssl_shutdown(&p.c);
            CHECK_INT(SSL_read(p.client, buf, sizeof(buf)), 0);
            if (round == 0) {
                /* the next round resumes this session (one freed
                 * unshut would not be resumable) */
                (void) SSL_shutdown(p.client);
                reuse_sctx = p.sctx;
                SSL_CTX_up_ref(reuse_sctx);
                resume = SSL_get1_session(p.client);
            }
            tp_close(&p);
        }
        SSL_CTX_free(reuse_sctx);
        SSL_SESSION_free(resume);
        reuse_sctx = NULL;
        resume = NULL;
    }
}

/* A CBC suite stays with OpenSSL, with read-ahead back on. */
static void
test_tls12_cbc_kept(void)
{
    tpair_t  p;
    u_char   buf[64];

    if (CHECK(tp_open(&p, TLS1_2_VERSION, "ECDHE-ECDSA-AES128-SHA256", 1,
                      NULL) == 0))
    {
        return;
    }
    CHECK(p.c.ssl != NULL && p.c.tls_rec == NULL);
    if (p.c.ssl) {
        CHECK(SSL_get_read_ahead(p.c.ssl));
    }
    CHECK_INT(SSL_write(p.client, "EHLO x\r\n", 8), 8);
    CHECK_MEM(buf, server_read(&p, buf, 8), "EHLO x\r\n", 8);
    /* replies go out through smtpgate's BIO, now passing writes on */
    CHECK_INT(p.c.send(&p.c, (const u_char *) "250 ok\r\n", 8), 8);
    CHECK_MEM(buf, client_read(&p, buf, 8), "250 ok\r\n", 8);
    CHECK_INT(p.c.send(&p.c, (const u_char *) "221 bye\r\n", 9), 9);
    CHECK_MEM(buf, client_read(&p, buf, 9), "221 bye\r\n", 9);
    /* a close without close_notify is an end, not an error (BIO_eof()
     * for SSL_OP_IGNORE_UNEXPECTED_EOF, as sg_ssl_build_ctx() sets) */
    if (p.c.ssl) {
        SSL_set_options(p.c.ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    }
    shutdown(p.fds[1], SHUT_WR);
    p.rev.ready = 1;
    CHECK_INT(p.c.recv(&p.c, buf, sizeof(buf)), 0);
    CHECK(p.rev.eof && !p.c.error);
    tp_close(&p);
}

/* Bytes waiting on the client's socket, without taking them. */
static bool
client_socket_empty(tpair_t *p)
{
    u_char  byte;

    return recv(p->fds[1], &byte, 1, MSG_PEEK | MSG_DONTWAIT) == -1
           && errno == EAGAIN;
}

/* The TLS 1.3 ticket is held after the handshake and leaves with the
 * first reply, which the client reads behind it; the session it gives
 * resumes. */
static void
test_ticket_with_first_reply(void)
{
    tpair_t       p;
    u_char        buf[64];
    SSL_SESSION  *sess;

    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    CHECK(client_socket_empty(&p));
    CHECK_INT(SSL_write(p.client, "EHLO x\r\n", 8), 8);
    CHECK_MEM(buf, server_read(&p, buf, 8), "EHLO x\r\n", 8);
    CHECK(client_socket_empty(&p));
    CHECK_INT(p.c.send(&p.c, (const u_char *) "250 ok\r\n", 8), 8);
    CHECK_MEM(buf, client_read(&p, buf, 8), "250 ok\r\n", 8);
    sess = SSL_get1_session(p.client);
    CHECK(sess != NULL && SSL_SESSION_is_resumable(sess));
    (void) SSL_shutdown(p.client);      /* freed unshut: not resumable */
    reuse_sctx = p.sctx;
    SSL_CTX_up_ref(reuse_sctx);
    tp_close(&p);

    resume = sess;
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0) == 0) {
        CHECK(SSL_session_reused(p.client));
        check_released(&p, "TLSv1.3", "TLS_AES_256_GCM_SHA384");
        tp_close(&p);
    }
    SSL_CTX_free(reuse_sctx);
    reuse_sctx = NULL;
    SSL_SESSION_free(sess);
    resume = NULL;

    /* pushed on its own when no reply is coming */
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    CHECK(client_socket_empty(&p));
    CHECK_INT(sg_ssl_rec_push(&p.c), SG_OK);
    CHECK(!client_socket_empty(&p));
    CHECK_INT(p.c.send(&p.c, (const u_char *) "250 ok\r\n", 8), 8);
    CHECK_MEM(buf, client_read(&p, buf, 8), "250 ok\r\n", 8);
    tp_close(&p);

    /* held, then an alert: the ticket goes ahead of it */
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    sg_ssl_shutdown(&p.c);
    CHECK_INT(SSL_read(p.client, buf, sizeof(buf)), 0);
    CHECK_INT(SSL_get_error(p.client, 0), SSL_ERROR_ZERO_RETURN);
    sess = SSL_get1_session(p.client);
    CHECK(sess != NULL && SSL_SESSION_is_resumable(sess));
    SSL_SESSION_free(sess);
    tp_close(&p);
}

/* A TLS 1.2 client asking to renegotiate is refused, with
 * no_renegotiation. */
static void
test_tls12_renegotiation(void)
{
    tpair_t  p;
    u_char   buf[64];

    if (CHECK(tp_open(&p, TLS1_2_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    CHECK_INT(SSL_renegotiate(p.client), 1);
    (void) SSL_do_handshake(p.client);          /* sends its ClientHello */
    p.rev.ready = 1;
    CHECK_INT(p.c.recv(&p.c, buf, sizeof(buf)), SG_ERROR);
    (void) SSL_read(p.client, buf, sizeof(buf));
    CHECK_INT(p.alert_in, 100);
    tp_close(&p);
}

/* A megabyte each way through a 4 KB socket buffer: records split in
 * every way on the wire, and writes the socket takes in part. */
static void
test_large_transfers(void)
{
    enum { SIZE = 1 << 20 };
    tpair_t   p;
    u_char   *src = malloc(SIZE), *dst = malloc(SIZE);
    size_t    sent = 0, got = 0, rounds;
    ssize_t   n;
    int       m, sz = 4096;

    if (src == NULL || dst == NULL
        || CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0))
    {
        free(src);
        free(dst);
        return;
    }
    RAND_bytes(src, SIZE);
    (void) setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    (void) setsockopt(p.fds[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));

    /* client to server */
    for (rounds = 0; got < SIZE && rounds < 100000; rounds++) {
        if (sent < SIZE) {
            m = SSL_write(p.client, src + sent,
                          (int) sg_min(SIZE - sent, 65536));
            if (m > 0) {
                sent += (size_t) m;
            }
        }
        got += server_read(&p, dst + got, SIZE - got);
    }
    CHECK_UINT(got, SIZE);
    CHECK(memcmp(src, dst, SIZE) == 0);

    /* server to client: a write that stops short is retried with the
     * same bytes, as the front end does */
    RAND_bytes(src, SIZE);
    sent = got = 0;
    for (rounds = 0; got < SIZE && rounds < 100000; rounds++) {
        if (sent < SIZE) {
            p.wev.ready = 1;
            n = p.c.send(&p.c, src + sent, sg_min(SIZE - sent, 40000));
            if (n > 0) {
                sent += (size_t) n;
            } else if (CHECK_INT(n, SG_AGAIN)) {
                break;
            }
        }
        m = SSL_read(p.client, dst + got, (int) (SIZE - got));
        if (m > 0) {
            got += (size_t) m;
        }
    }
    CHECK_UINT(got, SIZE);
    CHECK(memcmp(src, dst, SIZE) == 0);
    CHECK_UINT(p.c.sent, SIZE + 0);
    tp_close(&p);
    free(src);
    free(dst);
}

/* KeyUpdate from the client, with and without a request for ours. */
static void
test_key_update(void)
{
    tpair_t  p;
    u_char   buf[64];
    int      round, requested;

    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    /* three without a request (no KeyUpdate of ours comes back), then
     * three with one (ours comes back before each reply) */
    for (round = 0; round < 6; round++) {
        requested = round >= 3;
        CHECK_INT(SSL_key_update(p.client,
                                 requested ? SSL_KEY_UPDATE_REQUESTED
                                           : SSL_KEY_UPDATE_NOT_REQUESTED),
                  1);
        CHECK_INT(SSL_write(p.client, "NOOP\r\n", 6), 6);
        CHECK_MEM(buf, server_read(&p, buf, 6), "NOOP\r\n", 6);
        CHECK_INT(p.c.send(&p.c, (const u_char *) "250 ok\r\n", 8), 8);
        CHECK_MEM(buf, client_read(&p, buf, 8), "250 ok\r\n", 8);
        CHECK_UINT(p.key_updates_in, (unsigned) (requested ? round - 2 : 0));
    }
    tp_close(&p);
}

/* The client's next read finds close_notify: the end of the stream. */
static void
client_sees_close_notify(tpair_t *p)
{
    u_char  buf[64];
    int     n;

    n = SSL_read(p->client, buf, sizeof(buf));
    CHECK_INT(n, 0);
    CHECK_INT(SSL_get_error(p->client, n), SSL_ERROR_ZERO_RETURN);
}

static void
test_close_notify(void)
{
    static u_char  big[65536], big2[65536];
    tpair_t        p;
    u_char         buf[64];
    size_t         sent = 0, got = 0, rounds, again = 0;
    ssize_t        w;
    int            n, sz = 4096;

    /* the client's: an end of stream */
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    CHECK_INT(SSL_write(p.client, "QUIT\r\n", 6), 6);
    (void) SSL_shutdown(p.client);
    CHECK_MEM(buf, server_read(&p, buf, sizeof(buf)), "QUIT\r\n", 6);
    p.rev.ready = 1;
    CHECK_INT(p.c.recv(&p.c, buf, sizeof(buf)), 0);
    CHECK(p.rev.eof);
    tp_close(&p);

    /* ours */
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    CHECK_INT(p.c.send(&p.c, (const u_char *) "221 bye\r\n", 9), 9);
    sg_ssl_shutdown(&p.c);
    CHECK_MEM(buf, client_read(&p, buf, 9), "221 bye\r\n", 9);
    client_sees_close_notify(&p);
    tp_close(&p);

    /* the last reply (last_write, set by the relay when the backend
     * closed): close_notify in the same write, and not again */
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    p.c.last_write = 1;
    CHECK_INT(p.c.send(&p.c, (const u_char *) "221 bye\r\n", 9), 9);
    CHECK_MEM(buf, client_read(&p, buf, 9), "221 bye\r\n", 9);
    client_sees_close_notify(&p);
    sg_ssl_shutdown(&p.c);
    CHECK(client_socket_empty(&p));
    CHECK_INT(p.c.send(&p.c, (const u_char *) "x", 1), SG_ERROR);
    tp_close(&p);

    /* the same through a full socket: the rest and close_notify go
     * once it drains, and the bytes are reported sent then */
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    (void) setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    RAND_bytes(big, sizeof(big));
    p.c.last_write = 1;
    for (rounds = 0; got < sizeof(big) && rounds < 10000; rounds++) {
        if (sent < sizeof(big)) {
            p.wev.ready = 1;
            w = p.c.send(&p.c, big + sent, sizeof(big) - sent);
            if (w > 0) {
                sent += (size_t) w;
            } else if (w == SG_AGAIN) {
                again++;
            } else {
                break;
            }
        }
        n = SSL_read(p.client, big2 + got, (int) (sizeof(big2) - got));
        if (n > 0) {
            got += (size_t) n;
        }
    }
    CHECK(again > 0);                    /* the socket was full */
    CHECK_UINT(got, sizeof(big));
    CHECK(memcmp(big, big2, sizeof(big)) == 0);
    client_sees_close_notify(&p);
    tp_close(&p);

    /* a plain end of stream, no close_notify: an end all the same */
    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    shutdown(p.fds[1], SHUT_WR);
    p.rev.ready = 1;
    CHECK_INT(p.c.recv(&p.c, buf, sizeof(buf)), 0);
    tp_close(&p);
}

/* Raw bytes on the client's socket, not the client's records: the
 * server reads an error, says why with an alert, and sends no more. */
static void
forged(const u_char *bytes, size_t len, bool close_after, int alert)
{
    tpair_t  p;
    u_char   buf[64];
    int      n;

    if (CHECK(tp_open(&p, TLS1_3_VERSION, NULL, 1, NULL) == 0)) {
        return;
    }
    CHECK_INT(write(p.fds[1], bytes, len), (ssize_t) len);
    if (close_after) {
        shutdown(p.fds[1], SHUT_WR);
    }
    p.rev.ready = 1;
    CHECK_INT(p.c.recv(&p.c, buf, sizeof(buf)), SG_ERROR);
    CHECK(p.c.error);
    CHECK_INT(p.c.send(&p.c, (const u_char *) "250 ok\r\n", 8), SG_ERROR);
    if (alert >= 0) {
        n = SSL_read(p.client, buf, sizeof(buf));
        CHECK(n <= 0);
        CHECK_INT(p.alert_in, alert);
    }
    tp_close(&p);
}

static void
test_forged_records(void)
{
    u_char  rec[64];

    /* application_data, 32 octets that do not authenticate */
    memset(rec, 0x41, sizeof(rec));
    memcpy(rec, "\x17\x03\x03\x00\x20", 5);
    forged(rec, 5 + 32, false, 20);                /* bad_record_mac */
    /* too short to hold a tag */
    memcpy(rec, "\x17\x03\x03\x00\x08", 5);
    forged(rec, 5 + 8, false, 20);
    /* longer than 2^14 + 256 */
    memcpy(rec, "\x17\x03\x03\x41\x01", 5);
    forged(rec, 5, false, 22);                     /* record_overflow */
    /* a plaintext handshake record, as from a TLS 1.2 renegotiation */
    memcpy(rec, "\x16\x03\x03\x00\x04\x00\x00\x00\x00", 9);
    forged(rec, 9, false, 10);                     /* unexpected_message */
    /* a plaintext alert */
    memcpy(rec, "\x15\x03\x03\x00\x02\x02\x28", 7);
    forged(rec, 7, false, 10);
    /* half a record, then the end */
    memcpy(rec, "\x17\x03\x03\x00\x40", 5);
    forged(rec, 20, true, -1);
}


/* The engine alone: a client's layer (b) facing the server's (a). */

static int
rec_pair(unsigned suite, size_t len, sg_ssl_rec_t **a, sg_ssl_rec_t **b)
{
    u_char  cs[SG_SSL_REC_SECRET_MAX], ss[SG_SSL_REC_SECRET_MAX];

    RAND_bytes(cs, sizeof(cs));
    RAND_bytes(ss, sizeof(ss));
    *a = sg_ssl_rec_new(suite, cs, ss, len, 0, 0);
    *b = sg_ssl_rec_new(suite, ss, cs, len, 0, 0);
    return *a && *b ? 0 : -1;
}

static sg_log_t  quiet_log;

static void
test_engine_padding_and_splits(void)
{
    static const unsigned  ids[] = { SG_SSL_REC_AES_128_GCM_SHA256,
                                     SG_SSL_REC_AES_256_GCM_SHA384,
                                     SG_SSL_REC_CHACHA20_POLY1305_SHA256 };
    static const size_t    lens[] = { 32, 48, 32 };
    static u_char          wire[4 * SG_SSL_REC_MAX], out[SG_SSL_REC_MAX];
    sg_ssl_rec_t          *a, *b;
    size_t                 i, w, k, got, fed;
    ssize_t                n;

    for (i = 0; i < sg_nelems(ids); i++) {
        if (CHECK(rec_pair(ids[i], lens[i], &a, &b) == 0)) {
            continue;
        }
        /* "hello" padded, an empty record, then 2^14 with no room to
         * pad, then 1 octet padded to the limit */
        w = sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION,
                            (const u_char *) "hello", 5, 100, wire);
        w += sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION, NULL, 0, 0,
                             wire + w);
        memset(out, 'x', SG_SSL_REC_PLAIN_MAX);
        k = sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION, out,
                            SG_SSL_REC_PLAIN_MAX, 0, wire + w);
        CHECK_UINT(k, SG_SSL_REC_HEADER + SG_SSL_REC_PLAIN_MAX + 17);
        w += k;
        k = sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION,
                            (const u_char *) "!", 1,
                            SG_SSL_REC_PLAIN_MAX - 1, wire + w);
        CHECK(k > 0);
        w += k;
        CHECK_UINT(sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION, out,
                                   SG_SSL_REC_PLAIN_MAX, 1, wire + w), 0);
        /* fed one byte at a time, read into a small buffer */
        got = 0;
        n = SG_AGAIN;
        for (fed = 0; fed < w && n == SG_AGAIN; fed++) {
            if (sg_ssl_rec_feed(a, wire + fed, 1) != 1) {
                break;
            }
            for ( ;; ) {
                n = sg_ssl_rec_read(a, out + got,
                                    sg_min(7, sizeof(out) - got),
                                    &quiet_log);
                if (n <= 0) {
                    break;
                }
                got += (size_t) n;
            }
        }
        CHECK_UINT(fed, w);
        CHECK_INT(n, SG_AGAIN);
        CHECK_UINT(got, 5 + SG_SSL_REC_PLAIN_MAX + 1);
        CHECK_MEM(out, 5, "hello", 5);
        CHECK(out[5] == 'x' && out[5 + SG_SSL_REC_PLAIN_MAX - 1] == 'x');
        CHECK(out[got - 1] == '!');
        CHECK(!sg_ssl_rec_pending(a));
        sg_ssl_rec_free(a);
        sg_ssl_rec_free(b);
    }
}

/* What one sealed record does to the reader. */
static ssize_t
one_record(int type, const u_char *msg, size_t len, int *alert)
{
    u_char         wire[256], out[64];
    sg_ssl_rec_t  *a, *b;
    size_t         w;
    ssize_t        n;

    if (rec_pair(SG_SSL_REC_AES_128_GCM_SHA256, 32, &a, &b) != 0) {
        return -100;
    }
    w = sg_ssl_rec_seal(b, type, msg, len, 0, wire);
    sg_ssl_rec_feed(a, wire, w);
    n = sg_ssl_rec_read(a, out, sizeof(out), &quiet_log);
    *alert = sg_ssl_rec_alert(a);
    sg_ssl_rec_free(a);
    sg_ssl_rec_free(b);
    return n;
}

static void
test_engine_messages(void)
{
    u_char         wire[256], out[64];
    sg_ssl_rec_t  *a, *b;
    size_t         w, w2;
    int            alert;

    CHECK_INT(one_record(SG_SSL_REC_ALERT, (const u_char *) "\x01\x00", 2,
                         &alert), 0);                      /* close_notify */
    CHECK_INT(one_record(SG_SSL_REC_ALERT, (const u_char *) "\x01\x5a", 2,
                         &alert), SG_AGAIN);             /* user_canceled */
    CHECK_INT(one_record(SG_SSL_REC_ALERT, (const u_char *) "\x02\x28", 2,
                         &alert), SG_ERROR);             /* theirs, fatal */
    CHECK_INT(alert, -1);                              /* no answer to it */
    CHECK_INT(one_record(SG_SSL_REC_ALERT, (const u_char *) "\x02", 1,
                         &alert), SG_ERROR);
    CHECK_INT(alert, 50);
    CHECK_INT(one_record(SG_SSL_REC_HANDSHAKE,
                         (const u_char *) "\x04\x00\x00\x01\x00", 5, &alert),
              SG_ERROR);                            /* NewSessionTicket */
    CHECK_INT(alert, 10);
    CHECK_INT(one_record(SG_SSL_REC_HANDSHAKE,
                         (const u_char *) "\x18\x00\x00\x01\x02", 5, &alert),
              SG_ERROR);
    CHECK_INT(alert, 47);
    CHECK_INT(one_record(SG_SSL_REC_HANDSHAKE,
                         (const u_char *) "\x18\x00\x00\x02\x00\x00", 6,
                         &alert), SG_ERROR);
    CHECK_INT(alert, 50);
    CHECK_INT(one_record(SG_SSL_REC_HANDSHAKE, NULL, 0, &alert), SG_ERROR);
    CHECK_INT(alert, 10);
    CHECK_INT(one_record(20, (const u_char *) "\x01", 1, &alert), SG_ERROR);
    CHECK_INT(alert, 10);                    /* change_cipher_spec, inner */
    CHECK_INT(one_record(0, NULL, 0, &alert), SG_ERROR);
    CHECK_INT(alert, 10);                           /* no content type */

    /* a replayed record: the second copy has the wrong nonce */
    if (CHECK(rec_pair(SG_SSL_REC_AES_256_GCM_SHA384, 48, &a, &b) == 0)) {
        return;
    }
    w = sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION, (const u_char *) "abc", 3,
                        0, wire);
    memcpy(wire + w, wire, w);
    sg_ssl_rec_feed(a, wire, 2 * w);
    CHECK_MEM(out, (size_t) sg_ssl_rec_read(a, out, 3, &quiet_log), "abc", 3);
    CHECK_INT(sg_ssl_rec_read(a, out, sizeof(out), &quiet_log), SG_ERROR);
    CHECK_INT(sg_ssl_rec_alert(a), 20);
    sg_ssl_rec_free(a);
    sg_ssl_rec_free(b);

    /* KeyUpdate: records after it are under the next key, and one still
     * sealed under the old key fails */
    if (CHECK(rec_pair(SG_SSL_REC_AES_128_GCM_SHA256, 32, &a, &b) == 0)) {
        return;
    }
    w = sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE,
                        (const u_char *) "\x18\x00\x00\x01\x01", 5, 0, wire);
    CHECK_INT(sg_ssl_rec_update_write(b), SG_OK);
    w2 = sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION, (const u_char *) "new",
                         3, 0, wire + w);
    sg_ssl_rec_feed(a, wire, w + w2);
    CHECK_MEM(out, (size_t) sg_ssl_rec_read(a, out, sizeof(out),
                                            &quiet_log), "new", 3);
    sg_ssl_rec_free(a);
    sg_ssl_rec_free(b);

    /* the last sequence number is never used */
    {
        u_char  s1[32] = { 1 }, s2[32] = { 2 };

        a = sg_ssl_rec_new(SG_SSL_REC_AES_128_GCM_SHA256, s1, s2, 32, 0,
                           UINT64_MAX);
        if (CHECK(a != NULL)) {
            return;
        }
        CHECK_UINT(sg_ssl_rec_seal(a, SG_SSL_REC_APPLICATION,
                                   (const u_char *) "x", 1, 0, wire), 0);
        sg_ssl_rec_free(a);
        CHECK(sg_ssl_rec_new(0x1304, s1, s2, 32, 0, 0) == NULL);   /* CCM */
        CHECK(sg_ssl_rec_new(SG_SSL_REC_AES_256_GCM_SHA384, s1, s2, 32, 0, 0)
              == NULL);                         /* a SHA-256-sized secret */
    }
}

/* Our side the client (a backend connection): NewSessionTickets are
 * read and dropped, several in a record or one over several records;
 * KeyUpdate is taken, but only last in its record; anything else, or a
 * message too long, ends it. */
static void
test_engine_client_role(void)
{
    static u_char  wire[4 * SG_SSL_REC_MAX], msg[40000];
    u_char         out[64], nst[300];
    sg_ssl_rec_t  *a, *b;
    size_t         w, i, n, cut;
    ssize_t        got;

    /* a NewSessionTicket of 300 octets (its body does not matter) */
    memset(nst, 0x5a, sizeof(nst));
    nst[0] = 4;
    nst[1] = 0;
    nst[2] = (sizeof(nst) - 4) >> 8;
    nst[3] = (sizeof(nst) - 4) & 0xff;

    /* one per record, three in one record, then data */
    if (CHECK(rec_pair(SG_SSL_REC_AES_128_GCM_SHA256, 32, &a, &b) == 0)) {
        return;
    }
    sg_ssl_rec_as_client(a);
    w = sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE, nst, sizeof(nst), 0, wire);
    for (i = 0; i < 3; i++) {
        memcpy(msg + i * sizeof(nst), nst, sizeof(nst));
    }
    w += sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE, msg, 3 * sizeof(nst), 0,
                         wire + w);
    w += sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION,
                         (const u_char *) "220 ok\r\n", 8, 0, wire + w);
    sg_ssl_rec_feed(a, wire, w);
    CHECK_MEM(out, (size_t) sg_ssl_rec_read(a, out, sizeof(out),
                                            &quiet_log), "220 ok\r\n", 8);
    sg_ssl_rec_free(a);
    sg_ssl_rec_free(b);

    /* one message over records cut at every place, even in its header,
     * and a KeyUpdate request after it */
    for (cut = 1; cut < sizeof(nst); cut += (cut < 8 ? 1 : 37)) {
        if (CHECK(rec_pair(SG_SSL_REC_CHACHA20_POLY1305_SHA256, 32, &a, &b)
                  == 0))
        {
            return;
        }
        sg_ssl_rec_as_client(a);
        w = sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE, nst, cut, 0, wire);
        w += sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE, nst + cut,
                             sizeof(nst) - cut, 0, wire + w);
        w += sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE,
                             (const u_char *) "\x18\x00\x00\x01\x01", 5,
                             0, wire + w);
        CHECK_INT(sg_ssl_rec_update_write(b), SG_OK);
        w += sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION,
                             (const u_char *) "250 ok\r\n", 8, 0, wire + w);
        sg_ssl_rec_feed(a, wire, w);
        got = sg_ssl_rec_read(a, out, sizeof(out), &quiet_log);
        if (CHECK_MEM(out, (size_t) got, "250 ok\r\n", 8)) {
            printf("    cut at %zu\n", cut);
        }
        sg_ssl_rec_free(a);
        sg_ssl_rec_free(b);
    }

    /* a ticket of 40000 octets over three records */
    if (CHECK(rec_pair(SG_SSL_REC_AES_256_GCM_SHA384, 48, &a, &b) == 0)) {
        return;
    }
    sg_ssl_rec_as_client(a);
    memset(msg, 0x11, sizeof(msg));
    msg[0] = 4;
    msg[1] = 0;
    msg[2] = (sizeof(msg) - 4) >> 8;
    msg[3] = (sizeof(msg) - 4) & 0xff;
    for (i = 0, w = 0; i < sizeof(msg); i += n) {
        n = sg_min(sizeof(msg) - i, SG_SSL_REC_PLAIN_MAX);
        w += sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE, msg + i, n, 0, wire + w);
    }
    w += sg_ssl_rec_seal(b, SG_SSL_REC_APPLICATION, (const u_char *) "x", 1,
                         0, wire + w);
    for (i = 0, got = SG_AGAIN; i < w && got == SG_AGAIN; i += n) {
        /* as it comes off a socket, as much as the buffer takes */
        n = sg_ssl_rec_feed(a, wire + i, sg_min(w - i, (size_t) 1000));
        got = sg_ssl_rec_read(a, out, sizeof(out), &quiet_log);
    }
    if (CHECK_MEM(out, (size_t) got, "x", 1)) {
        printf("    got %zd, fed %zu of %zu, alert %d\n", got, i, w,
               sg_ssl_rec_alert(a));
    }
    sg_ssl_rec_free(a);
    sg_ssl_rec_free(b);

    /* refused: a KeyUpdate with a ticket behind it in its record, a
     * CertificateRequest (no post-handshake authentication was
     * offered), a message longer than the limit, an empty record */
    {
        static const struct {
            const char  *bytes;
            size_t       len;
            int          alert;
        } bad[] = {
            { "\x18\x00\x00\x01\x00\x04\x00\x00\x00", 9, 10 },
            { "\x0d\x00\x00\x00", 4, 10 },
            { "\x04\x10\x00\x00", 4, 50 },
            { "", 0, 10 },
        };

        for (i = 0; i < sg_nelems(bad); i++) {
            if (CHECK(rec_pair(SG_SSL_REC_AES_128_GCM_SHA256, 32, &a, &b)
                      == 0))
            {
                return;
            }
            sg_ssl_rec_as_client(a);
            w = sg_ssl_rec_seal(b, SG_SSL_REC_HANDSHAKE,
                                (const u_char *) bad[i].bytes, bad[i].len, 0,
                                wire);
            sg_ssl_rec_feed(a, wire, w);
            CHECK_INT(sg_ssl_rec_read(a, out, sizeof(out), &quiet_log),
                      SG_ERROR);
            if (CHECK_INT(sg_ssl_rec_alert(a), bad[i].alert)) {
                printf("    case %zu\n", i);
            }
            sg_ssl_rec_free(a);
            sg_ssl_rec_free(b);
        }
    }
}

int
main(void)
{
    sg_test_start();
    quiet_log.level = 0;
    if (sg_test_make_cert(&test_key, &test_cert) != 0) {
        printf("cannot set the test up\n");
        return 1;
    }

    RUN(test_suites_and_tickets);
    RUN(test_command_behind_finished);
    RUN(test_tls12);
    RUN(test_tls12_cbc_kept);
    RUN(test_tls12_renegotiation);
    RUN(test_ticket_with_first_reply);
    RUN(test_large_transfers);
    RUN(test_key_update);
    RUN(test_close_notify);
    RUN(test_forged_records);
    RUN(test_engine_padding_and_splits);
    RUN(test_engine_messages);
    RUN(test_engine_client_role);

    X509_free(test_cert);
    EVP_PKEY_free(test_key);
    return sg_test_finish();
}

#else

int
main(void)
{
    printf("built without the ssl module: nothing to test\n");
    return 0;
}

#endif
