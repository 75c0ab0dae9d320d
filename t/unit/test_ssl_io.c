/*
 * test_ssl_io.c: the server handshake step, sg_ssl_handshake(), against
 * a real OpenSSL client over a socket pair.
 *
 * The case that matters is a timing one, made certain here: the client
 * answers the server's flight at once and sends its first command right
 * behind its Finished (an implicit-TLS client typing "QUIT" at once).  The
 * server's handshake runs straight after accept, before any event, and
 * reading ahead, its last read takes the Finished and the command
 * together.  The bytes are then in OpenSSL, not in the socket, so the
 * edge-triggered loop will never report them: the handshake must leave
 * the read event ready, or the session waits for ever.
 *
 * The "instant" client is a filter BIO under the server's SSL: whenever
 * the server reads after having written, the client takes its turn
 * first, so its answer is already in the socket.
 */
#include "sg_core.h"
#include "sg_test.h"

#if (SG_HAVE_SSL_MODULE)

#include "sg_ssl.h"
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include "sg_test_cert.h"

typedef struct {
    SSL       *client;
    unsigned   wrote:1;        /* the server wrote since it last read */
    unsigned   send_quit:1;    /* send "QUIT\r\n" once connected */
    unsigned   sent_quit:1;
} instant_t;

static BIO_METHOD  *instant_method;

/* The client's turn: go on with its handshake; once done, say QUIT. */
static void
client_turn(instant_t *t)
{
    if (SSL_do_handshake(t->client) != 1) {
        return;                         /* waits for the server again */
    }
    if (t->send_quit && !t->sent_quit) {
        if (SSL_write(t->client, "QUIT\r\n", 6) == 6) {
            t->sent_quit = 1;
        }
    }
}

static int
instant_write(BIO *b, const char *buf, int len)
{
    instant_t  *t = BIO_get_data(b);
    int         n;

    BIO_clear_retry_flags(b);
    n = BIO_write(BIO_next(b), buf, len);
    if (n > 0) {
        t->wrote = 1;
    } else if (BIO_should_retry(BIO_next(b))) {
        BIO_set_retry_write(b);
    }
    return n;
}

static int
instant_read(BIO *b, char *buf, int len)
{
    instant_t  *t = BIO_get_data(b);
    int         n;

    if (t->wrote) {
        t->wrote = 0;
        client_turn(t);
    }
    BIO_clear_retry_flags(b);
    n = BIO_read(BIO_next(b), buf, len);
    if (n <= 0 && BIO_should_retry(BIO_next(b))) {
        BIO_set_retry_read(b);
    }
    return n;
}

static long
instant_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    return BIO_next(b) ? BIO_ctrl(BIO_next(b), cmd, num, ptr) : 0;
}

static int
instant_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

typedef struct {
    int              fds[2];      /* [0] the server's, [1] the client's */
    SSL_CTX         *sctx, *cctx;
    SSL             *server;
    instant_t        inst;
    sg_connection_t  c;
    sg_event_t       rev, wev;
    sg_log_t         log;
} pair_t;

static int
pair_open(pair_t *p, EVP_PKEY *key, X509 *cert, int version, bool quit)
{
    BIO  *filter, *sock;

    memset(p, 0, sizeof(*p));
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p->fds) != 0) {
        return -1;
    }
    p->sctx = SSL_CTX_new(TLS_server_method());
    p->cctx = SSL_CTX_new(TLS_client_method());
    if (p->sctx == NULL || p->cctx == NULL
        || SSL_CTX_use_certificate(p->sctx, cert) != 1
        || SSL_CTX_use_PrivateKey(p->sctx, key) != 1)
    {
        return -1;
    }
    /* as sg_ssl_build_ctx() does: the point of the test */
    SSL_CTX_set_read_ahead(p->sctx, 1);
    SSL_CTX_set_min_proto_version(p->sctx, version);
    SSL_CTX_set_max_proto_version(p->sctx, version);
    SSL_CTX_set_verify(p->cctx, SSL_VERIFY_NONE, NULL);

    p->inst.client = SSL_new(p->cctx);
    p->server = SSL_new(p->sctx);
    filter = BIO_new(instant_method);
    sock = BIO_new_socket(p->fds[0], BIO_NOCLOSE);
    if (p->inst.client == NULL || p->server == NULL || filter == NULL
        || sock == NULL || SSL_set_fd(p->inst.client, p->fds[1]) != 1)
    {
        BIO_free(filter);
        BIO_free(sock);
        return -1;
    }
    p->inst.send_quit = quit;
    BIO_set_data(filter, &p->inst);
    BIO_push(filter, sock);
    SSL_set_bio(p->server, filter, filter);
    SSL_set_accept_state(p->server);
    SSL_set_connect_state(p->inst.client);

    p->log.level = 0;                   /* nothing is written */
    p->c.fd = p->fds[0];
    p->c.read = &p->rev;
    p->c.write = &p->wev;
    p->c.log = &p->log;
    p->c.ssl = p->server;
    p->rev.data = &p->c;
    p->wev.data = &p->c;
    p->wev.ready = 1;                   /* as after accept */
    p->rev.ready = 0;                   /* no event seen yet */
    return 0;
}

static void
pair_close(pair_t *p)
{
    SSL_free(p->server);
    SSL_free(p->inst.client);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
    close(p->fds[0]);
    close(p->fds[1]);
}

static EVP_PKEY  *test_key;
static X509      *test_cert;

/* The client's ClientHello is waiting when the server starts, as it is
 * when a connection is accepted with data; then one handshake step. */
static int
first_step(pair_t *p)
{
    client_turn(&p->inst);
    return sg_ssl_handshake(&p->c);
}

static void
test_command_behind_finished(void)
{
    pair_t   p;
    u_char   buf[64];
    ssize_t  n;

    if (CHECK(pair_open(&p, test_key, test_cert, TLS1_3_VERSION, true)
              == 0))
    {
        return;
    }
    /* One step does the whole handshake: no EAGAIN, so no event. */
    CHECK_INT(first_step(&p), SG_OK);
    CHECK(p.inst.sent_quit);
    CHECK(SSL_has_pending(p.server));
    /* The command is in OpenSSL's buffer, and the socket is empty. */
    n = recv(p.fds[0], buf, sizeof(buf), MSG_PEEK);
    CHECK_INT(n, -1);
    CHECK(p.rev.ready);
    if (p.rev.ready) {
        n = p.c.recv(&p.c, buf, sizeof(buf));
        CHECK_MEM(buf, n > 0 ? (size_t) n : 0, "QUIT\r\n", 6);
    }
    pair_close(&p);
}

static void
test_nothing_behind_finished(void)
{
    pair_t   p;
    u_char   buf[64];
    ssize_t  n;

    if (CHECK(pair_open(&p, test_key, test_cert, TLS1_3_VERSION, false)
              == 0))
    {
        return;
    }
    CHECK_INT(first_step(&p), SG_OK);
    /* Nothing read ahead: no read that can only find EAGAIN. */
    CHECK(!SSL_has_pending(p.server));
    CHECK(!p.rev.ready);
    /* The next bytes come through the socket, and with them an event. */
    CHECK_INT(SSL_write(p.inst.client, "EHLO x\r\n", 8), 8);
    p.rev.ready = 1;
    n = p.c.recv(&p.c, buf, sizeof(buf));
    CHECK_MEM(buf, n > 0 ? (size_t) n : 0, "EHLO x\r\n", 8);
    pair_close(&p);
}

/* TLS 1.2's full handshake ends with the server's Finished, so nothing
 * of the client's can come behind the client's Finished. */
static void
test_tls12(void)
{
    pair_t  p;
    int     rc, steps;

    if (CHECK(pair_open(&p, test_key, test_cert, TLS1_2_VERSION, true)
              == 0))
    {
        return;
    }
    rc = first_step(&p);
    for (steps = 0; rc == SG_AGAIN && steps < 8; steps++) {
        client_turn(&p.inst);
        p.rev.ready = 1;                /* the event for its bytes */
        rc = sg_ssl_handshake(&p.c);
    }
    CHECK_INT(rc, SG_OK);
    CHECK(strcmp(SSL_get_version(p.server), "TLSv1.2") == 0);
    pair_close(&p);
}

int
main(void)
{
    sg_test_start();
    instant_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_FILTER,
                                  "instant client");
    if (instant_method == NULL
        || !BIO_meth_set_write(instant_method, instant_write)
        || !BIO_meth_set_read(instant_method, instant_read)
        || !BIO_meth_set_ctrl(instant_method, instant_ctrl)
        || !BIO_meth_set_create(instant_method, instant_create)
        || sg_test_make_cert(&test_key, &test_cert) != 0)
    {
        printf("cannot set the test up\n");
        return 1;
    }

    RUN(test_command_behind_finished);
    RUN(test_nothing_behind_finished);
    RUN(test_tls12);

    X509_free(test_cert);
    EVP_PKEY_free(test_key);
    BIO_meth_free(instant_method);
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
