/*
 * sg_ssl_bio.c: the socket under a server connection's SSL object.
 *
 * OpenSSL's own socket BIO makes a system call for every read and
 * write it is asked for.  During a handshake without read-ahead (which
 * ssl_compact_state needs, sg_ssl_io.c) that is two reads a record: the
 * 5-byte header, then the body.  And each flight goes out on its own,
 * so a TLS 1.3 session ticket, written as the handshake ends, is one
 * segment (and one wakeup of the client) and the greeting after it
 * another.
 *
 * This BIO reads a whole segment at once into a small buffer and hands
 * OpenSSL the bytes it asks for from there, and holds what OpenSSL
 * writes until sg_ssl_bio_flush(), called when SSL_do_handshake()
 * returns.  What is still held when the handshake ends (the ticket)
 * and what was read beyond the client's Finished (a command sent right
 * behind it) are handed to smtpgate's record layer with the session
 * (sg_ssl_bio_leftovers()), so the ticket leaves with the first reply.
 * A session that stays in OpenSSL switches the BIO to passing writes
 * straight through (sg_ssl_bio_pass()).
 *
 * Every buffer here is bounded: the read buffer is SG_SSL_BIO_IN bytes,
 * allocated while it holds something; held writes are one handshake
 * flight, at most SG_SSL_BIO_HOLD_MAX bytes.
 */
#include "sg_ssl.h"
#include <openssl/bio.h>

#define SG_SSL_BIO_IN        4096
#define SG_SSL_BIO_HOLD_MAX  (256 * 1024)

typedef struct {
    int       fd;
    unsigned  pass:1;          /* writes go straight out */
    unsigned  eof:1;           /* a read found the end of the stream */
    u_char   *in;              /* NULL while nothing is held */
    size_t    in_pos;
    size_t    in_end;
    u_char   *out;
    size_t    out_pos;
    size_t    out_end;
    size_t    out_size;
} sg_ssl_bio_t;

static BIO_METHOD  *sg_ssl_bio_method;
static int          sg_ssl_bio_type;

static void
sg_ssl_bio_drop_in(sg_ssl_bio_t *st)
{
    free(st->in);
    st->in = NULL;
    st->in_pos = st->in_end = 0;
}

static void
sg_ssl_bio_drop_out(sg_ssl_bio_t *st)
{
    free(st->out);
    st->out = NULL;
    st->out_pos = st->out_end = st->out_size = 0;
}

/* recv() into buf: n > 0, 0 at the end of the stream, -1 with errno. */
static ssize_t
sg_ssl_bio_recv(int fd, u_char *buf, size_t len)
{
    ssize_t  n;

    do {
        n = recv(fd, buf, len, 0);
    } while (n == -1 && errno == EINTR);
    return n;
}

static int
sg_ssl_bio_read(BIO *b, char *buf, int len)
{
    sg_ssl_bio_t  *st = BIO_get_data(b);
    size_t         n;
    ssize_t        got;

    BIO_clear_retry_flags(b);
    if (len <= 0) {
        return 0;
    }
    if (st->in_pos < st->in_end) {
        n = sg_min((size_t) len, st->in_end - st->in_pos);
        memcpy(buf, st->in + st->in_pos, n);
        st->in_pos += n;
        if (st->in_pos == st->in_end) {
            sg_ssl_bio_drop_in(st);
        }
        return (int) n;
    }
    if ((size_t) len >= SG_SSL_BIO_IN
        || (st->in = malloc(SG_SSL_BIO_IN)) == NULL)
    {
        /* read-ahead asks for a record's worth: straight in */
        got = sg_ssl_bio_recv(st->fd, (u_char *) buf, (size_t) len);
    } else {
        got = sg_ssl_bio_recv(st->fd, st->in, SG_SSL_BIO_IN);
        if (got > 0) {
            st->in_end = (size_t) got;
            n = sg_min((size_t) len, st->in_end);
            memcpy(buf, st->in, n);
            st->in_pos = n;
            if (st->in_pos == st->in_end) {
                sg_ssl_bio_drop_in(st);
            }
            return (int) n;
        }
        sg_ssl_bio_drop_in(st);
    }
    if (got >= 0) {
        /* BIO_eof(): SSL_OP_IGNORE_UNEXPECTED_EOF takes it as an end */
        st->eof = got == 0;
        return (int) got;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        BIO_set_retry_read(b);
    }
    return -1;
}

/* Send what is held: SG_OK when all is out, SG_AGAIN when the socket
 * is full, SG_ERROR (errno). */
static int
sg_ssl_bio_send_held(sg_ssl_bio_t *st)
{
    int  rc;

    rc = sg_send_rest(st->fd, st->out, st->out_end, &st->out_pos);
    if (rc == SG_OK) {
        sg_ssl_bio_drop_out(st);
    }
    return rc;
}

static int
sg_ssl_bio_write(BIO *b, const char *data, int len)
{
    sg_ssl_bio_t  *st = BIO_get_data(b);
    size_t         need;
    ssize_t        n;
    u_char        *p;
    int            rc;

    BIO_clear_retry_flags(b);
    if (len <= 0) {
        return 0;
    }
    if (!st->pass) {
        need = st->out_end + (size_t) len;
        if (need > SG_SSL_BIO_HOLD_MAX) {
            errno = ENOBUFS;
            return -1;
        }
        if (need > st->out_size) {
            need = sg_max(need, sg_max(2 * st->out_size, 2048));
            need = sg_min(need, SG_SSL_BIO_HOLD_MAX);
            p = realloc(st->out, need);
            if (p == NULL) {
                errno = ENOMEM;
                return -1;
            }
            st->out = p;
            st->out_size = need;
        }
        memcpy(st->out + st->out_end, data, (size_t) len);
        st->out_end += (size_t) len;
        return len;
    }
    if (st->out) {
        rc = sg_ssl_bio_send_held(st);
        if (rc != SG_OK) {
            if (rc == SG_AGAIN) {
                BIO_set_retry_write(b);
            }
            return -1;
        }
    }
    do {
        n = send(st->fd, data, (size_t) len, MSG_NOSIGNAL);
    } while (n == -1 && errno == EINTR);
    if (n >= 0) {
        return (int) n;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        BIO_set_retry_write(b);
    }
    return -1;
}

static long
sg_ssl_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    sg_ssl_bio_t  *st = BIO_get_data(b);

    (void) num;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;                 /* held until sg_ssl_bio_flush() */
    case BIO_CTRL_EOF:
        return st->eof && st->in_pos == st->in_end;
    case BIO_CTRL_PENDING:
        return (long) (st->in_end - st->in_pos);
    case BIO_CTRL_WPENDING:
        return (long) (st->out_end - st->out_pos);
    case BIO_C_GET_FD:
        if (ptr) {
            *(int *) ptr = st->fd;
        }
        return st->fd;
    case BIO_CTRL_GET_CLOSE:
        return BIO_NOCLOSE;
    case BIO_CTRL_SET_CLOSE:
        return 1;
    default:
        return 0;
    }
}

static int
sg_ssl_bio_destroy(BIO *b)
{
    sg_ssl_bio_t  *st = BIO_get_data(b);

    if (st) {
        sg_ssl_bio_drop_in(st);
        sg_ssl_bio_drop_out(st);
        free(st);
        BIO_set_data(b, NULL);
    }
    return 1;
}

BIO *
sg_ssl_bio_new(int fd)
{
    sg_ssl_bio_t  *st;
    BIO_METHOD    *m;
    BIO           *b;

    if (sg_ssl_bio_method == NULL) {
        sg_ssl_bio_type = BIO_get_new_index();
        if (sg_ssl_bio_type == -1) {
            return NULL;
        }
        sg_ssl_bio_type |= BIO_TYPE_SOURCE_SINK;
        m = BIO_meth_new(sg_ssl_bio_type, "smtpgate socket");
        if (m == NULL
            || BIO_meth_set_write(m, sg_ssl_bio_write) != 1
            || BIO_meth_set_read(m, sg_ssl_bio_read) != 1
            || BIO_meth_set_ctrl(m, sg_ssl_bio_ctrl) != 1
            || BIO_meth_set_destroy(m, sg_ssl_bio_destroy) != 1)
        {
            BIO_meth_free(m);
            return NULL;
        }
        sg_ssl_bio_method = m;
    }
    st = calloc(1, sizeof(sg_ssl_bio_t));
    b = st ? BIO_new(sg_ssl_bio_method) : NULL;
    if (b == NULL) {
        free(st);
        return NULL;
    }
    st->fd = fd;
    BIO_set_data(b, st);
    BIO_set_init(b, 1);
    return b;
}

/* Our BIO's state under ssl, or NULL (a client connection's socket). */
static sg_ssl_bio_t *
sg_ssl_bio_of(SSL *ssl)
{
    BIO  *b = SSL_get_wbio(ssl);

    if (b == NULL || sg_ssl_bio_method == NULL
        || BIO_method_type(b) != sg_ssl_bio_type)
    {
        return NULL;
    }
    return BIO_get_data(b);
}

int
sg_ssl_bio_flush(sg_connection_t *c)
{
    sg_ssl_bio_t  *st = c->ssl ? sg_ssl_bio_of(c->ssl) : NULL;
    int            rc;

    if (st == NULL || st->out == NULL) {
        return SG_OK;
    }
    rc = sg_ssl_bio_send_held(st);
    if (rc == SG_AGAIN) {
        c->write->ready = 0;
    } else if (rc == SG_ERROR) {
        c->write->error = 1;
        c->error = 1;
        sg_log_error(SG_LOG_INFO, c->log, errno, "send() failed");
    }
    return rc;
}

bool
sg_ssl_bio_input_pending(SSL *ssl)
{
    sg_ssl_bio_t  *st = sg_ssl_bio_of(ssl);

    return st && st->in_pos < st->in_end;
}

void
sg_ssl_bio_leftovers(SSL *ssl, sg_str_t *in, sg_str_t *out)
{
    sg_ssl_bio_t  *st = sg_ssl_bio_of(ssl);

    in->len = out->len = 0;
    in->data = out->data = NULL;
    if (st) {
        in->data = st->in + st->in_pos;
        in->len = st->in_end - st->in_pos;
        out->data = st->out + st->out_pos;
        out->len = st->out_end - st->out_pos;
    }
}

void
sg_ssl_bio_pass(SSL *ssl)
{
    sg_ssl_bio_t  *st = sg_ssl_bio_of(ssl);

    if (st) {
        st->pass = 1;
    }
}
