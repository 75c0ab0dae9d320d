/*
 * session.c: one SMTP client session as a state machine, and the epoll
 * loop of a thread that runs many of them.
 *
 * A session connects, optionally does TLS (implicit, or STARTTLS), reads
 * the greeting, says EHLO, authenticates, sends its messages (MAIL, RCPT,
 * DATA pipelined when asked and offered, else one at a time) and QUITs.
 * Every command pushes the step it expects a reply for onto a small
 * queue; each complete reply pops one step and its handler decides what
 * to send next.  A reply that is not the one expected fails the session
 * with the reply's text: the rest of the queued replies are read, an
 * unexpected 354 is answered with an empty message, and the session
 * QUITs politely.  A timeout, a closed connection or garbage closes it
 * at once.  After the reply to QUIT the session waits for the server to
 * close first (TIME-WAIT stays on the server's side); it sends no TLS
 * close_notify.
 *
 * It owns: the session structures of its thread (allocated once per
 * slot, reused), their sockets and SSL objects.  It refuses: reply lines
 * longer than SL_IN_SIZE, replies that are not SMTP, and blocking.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "sl.h"

#define SL_EVENTS       512
#define SL_TICK_MS      50      /* timeout scan and stop-flag check */
#define SL_CLOSE_WAIT   1.0     /* seconds for the server's close */

typedef enum {
    SL_ST_FREE,
    SL_ST_CONNECTING,
    SL_ST_HANDSHAKE,
    SL_ST_SMTP,
    SL_ST_HOLD,         /* idle: held in the requested state */
    SL_ST_CLOSING       /* QUIT answered: waiting for the server's close */
} sl_state_e;

typedef enum {
    SL_EXP_GREETING,
    SL_EXP_EHLO,
    SL_EXP_STARTTLS,
    SL_EXP_AUTH_PLAIN,
    SL_EXP_AUTH_LOGIN,
    SL_EXP_LOGIN_USER,
    SL_EXP_LOGIN_PASS,
    SL_EXP_MAIL,
    SL_EXP_RCPT,
    SL_EXP_DATA,
    SL_EXP_DOT,
    SL_EXP_QUIT,
    SL_EXP_FAIL_DOT,
    SL_EXP_FAIL_QUIT
} sl_expect_e;

static const char *sl_step_name[] = {
    "greeting", "EHLO", "STARTTLS", "AUTH PLAIN", "AUTH LOGIN",
    "AUTH LOGIN user", "AUTH LOGIN password", "MAIL", "RCPT", "DATA",
    "end of data", "QUIT", "end of data", "QUIT"
};

struct sl_session_s {
    sl_worker_t      *w;
    unsigned          slot;             /* index in w->sessions */
    int               fd;
    SSL              *ssl;
    sl_state_e        state;
    bool              tls_up;
    bool              pipelining;       /* the server offered it */
    bool              failed;           /* counted as a failure */
    bool              counted;          /* counted at all */
    bool              held;
    bool              peer_closed;      /* EPOLLRDHUP seen: read to EOF */
    uint64_t          t_start;
    uint64_t          deadline;         /* ns; 0: none */
    unsigned          msgs_done;
    unsigned          rcpt_next;        /* lockstep: next RCPT to send */
    const sl_cred_t  *cred;
    sl_reply_t        reply;
    uint8_t           exp[SL_EXPECT_MAX];
    unsigned          exp_head;
    unsigned          exp_count;
    const char       *body;             /* message being sent, or NULL */
    size_t            body_pos;
    size_t            body_len;
    size_t            out_pos;
    size_t            out_len;
    size_t            in_len;
    char              in[SL_IN_SIZE];
    char              out[];            /* conf->out_size bytes */
};

typedef enum { SL_IO_OK, SL_IO_AGAIN, SL_IO_EOF, SL_IO_ERROR } sl_io_e;

static void sl_io(sl_session_t *s);

uint64_t
sl_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t
sl_secs(double s)
{
    return (uint64_t) (s * 1e9);
}

/* ---- ending a session ------------------------------------------------ */

static void
sl_close(sl_session_t *s)
{
    sl_worker_t *w = s->w;

    if (s->ssl) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        close(s->fd);           /* also leaves the epoll set */
        s->fd = -1;
    }
    if (w->conf->idle != SL_IDLE_OFF) {
        if (s->held) {
            if (!s->counted) {
                atomic_fetch_add(&sl_shared.lost, 1);
                sl_stats_fail(&w->stats, "closed by the server while held");
                s->counted = true;
            }
        } else {
            w->setting_up--;
        }
    }
    s->state = SL_ST_FREE;
    w->active--;
    w->free_slots[w->nfree++] = s->slot;
}

static void
sl_count_fail(sl_session_t *s, const char *text)
{
    if (s->counted) {
        return;
    }
    s->counted = true;
    s->failed = true;
    sl_stats_fail(&s->w->stats, text);
    if (s->w->conf->idle != SL_IDLE_OFF && !s->held) {
        atomic_fetch_add(&sl_shared.idle_failed, 1);
    }
}

/* A failure after which the connection is of no further use. */
static void
sl_fail_close(sl_session_t *s, const char *fmt, const char *arg)
{
    char  text[SL_TEXT_MAX + 48];

    snprintf(text, sizeof(text), fmt, arg);
    sl_count_fail(s, text);
    sl_close(s);
}

static const char *
sl_step(const sl_session_t *s)
{
    return s->exp_count ? sl_step_name[s->exp[s->exp_head]] : "idle";
}

/* ---- output ---------------------------------------------------------- */

static void
sl_expect(sl_session_t *s, sl_expect_e e)
{
    unsigned i = (s->exp_head + s->exp_count) % SL_EXPECT_MAX;

    s->exp[i] = (uint8_t) e;
    s->exp_count++;
    s->deadline = sl_now() + sl_secs(s->w->conf->timeout);
}

static void
sl_put(sl_session_t *s, const char *data, size_t len, sl_expect_e e)
{
    if (s->out_pos == s->out_len) {
        s->out_pos = s->out_len = 0;
    }
    /* conf->out_size fits the longest batch; never more is queued. */
    if (s->out_len + len > s->w->conf->out_size) {
        abort();
    }
    memcpy(s->out + s->out_len, data, len);
    s->out_len += len;
    sl_expect(s, e);
}

static sl_io_e
sl_send(sl_session_t *s, const char *p, size_t n, size_t *done)
{
    ssize_t  r;

    if (n > (1u << 20)) {
        n = 1u << 20;
    }
    if (s->ssl) {
        int rc = SSL_write(s->ssl, p, (int) n);
        if (rc > 0) {
            *done = (size_t) rc;
            return SL_IO_OK;
        }
        switch (SSL_get_error(s->ssl, rc)) {
        case SSL_ERROR_WANT_WRITE:
        case SSL_ERROR_WANT_READ:
            return SL_IO_AGAIN;
        default:
            ERR_clear_error();
            return SL_IO_ERROR;
        }
    }
    do {
        r = send(s->fd, p, n, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r >= 0) {
        *done = (size_t) r;
        return SL_IO_OK;
    }
    return errno == EAGAIN ? SL_IO_AGAIN : SL_IO_ERROR;
}

/* Writes what is queued: commands first, then the message.  Returns
 * false when the session was closed. */
static bool
sl_flush(sl_session_t *s)
{
    size_t   done;
    sl_io_e  rc;

    while (s->out_pos < s->out_len || s->body_pos < s->body_len) {
        bool cmd = s->out_pos < s->out_len;
        rc = cmd ? sl_send(s, s->out + s->out_pos, s->out_len - s->out_pos,
                           &done)
                 : sl_send(s, s->body + s->body_pos,
                           s->body_len - s->body_pos, &done);
        if (rc == SL_IO_AGAIN) {
            return true;
        }
        if (rc != SL_IO_OK) {
            sl_fail_close(s, "write error (%s)", sl_step(s));
            return false;
        }
        if (cmd) {
            s->out_pos += done;
        } else {
            s->body_pos += done;
        }
        /* Progress on a long message keeps its reply's deadline away. */
        s->deadline = sl_now() + sl_secs(s->w->conf->timeout);
    }
    s->out_pos = s->out_len = 0;
    s->body = NULL;
    s->body_pos = s->body_len = 0;
    return true;
}

/* ---- the conversation ------------------------------------------------ */

static void
sl_hold(sl_session_t *s)
{
    s->state = SL_ST_HOLD;
    s->held = true;
    s->deadline = 0;
    s->w->setting_up--;
    sl_hist_add(&s->w->stats.latency, (sl_now() - s->t_start) / 1000);
    atomic_fetch_add(&sl_shared.held, 1);
}

static void
sl_send_mail(sl_session_t *s)
{
    const sl_conf_t *conf = s->w->conf;
    unsigned         i;

    sl_put(s, conf->mail_cmd, conf->mail_len, SL_EXP_MAIL);
    if (conf->pipelining && s->pipelining) {
        for (i = 0; i < conf->rcpts; i++) {
            sl_put(s, conf->rcpt_cmd[i], conf->rcpt_len[i], SL_EXP_RCPT);
        }
        sl_put(s, "DATA\r\n", 6, SL_EXP_DATA);
        s->rcpt_next = conf->rcpts;
    } else {
        s->rcpt_next = 0;
    }
}

static void
sl_next_message(sl_session_t *s)
{
    if (s->msgs_done < s->w->conf->messages) {
        sl_send_mail(s);
    } else {
        sl_put(s, "QUIT\r\n", 6, SL_EXP_QUIT);
    }
}

static void
sl_authenticated(sl_session_t *s)
{
    if (s->w->conf->idle == SL_IDLE_AUTH) {
        sl_hold(s);
        return;
    }
    sl_next_message(s);
}

static void
sl_after_ehlo(sl_session_t *s)
{
    const sl_conf_t *conf = s->w->conf;

    if (conf->tls == SL_TLS_STARTTLS && !s->tls_up) {
        if (conf->idle == SL_IDLE_EHLO) {
            sl_hold(s);
            return;
        }
        sl_put(s, "STARTTLS\r\n", 10, SL_EXP_STARTTLS);
        return;
    }
    if (conf->idle == SL_IDLE_EHLO || conf->idle == SL_IDLE_STARTTLS) {
        sl_hold(s);
        return;
    }
    s->cred = conf->ncreds
        ? &conf->creds[atomic_fetch_add(&sl_shared.user_index, 1)
                       % conf->ncreds]
        : NULL;
    switch (conf->auth) {
    case SL_AUTH_PLAIN:
        sl_put(s, s->cred->plain, strlen(s->cred->plain), SL_EXP_AUTH_PLAIN);
        break;
    case SL_AUTH_LOGIN:
        sl_put(s, "AUTH LOGIN\r\n", 12, SL_EXP_AUTH_LOGIN);
        break;
    default:
        sl_authenticated(s);
    }
}

static void sl_start_tls(sl_session_t *s);

/* The reply a step expected: true when it is a success and the session
 * goes on; false when it failed the session. */
static bool
sl_reply_ok(sl_expect_e step, int code)
{
    switch (step) {
    case SL_EXP_GREETING:
    case SL_EXP_STARTTLS:
        return code == 220;
    case SL_EXP_AUTH_LOGIN:
    case SL_EXP_LOGIN_USER:
        return code == 334;
    case SL_EXP_AUTH_PLAIN:
    case SL_EXP_LOGIN_PASS:
        return code == 235;
    case SL_EXP_DATA:
        return code == 354;
    default:
        return code / 100 == 2;
    }
}

/* After a failure: read the replies still due, answer an unexpected 354
 * with an empty message, then QUIT once. */
static void
sl_drain(sl_session_t *s, sl_expect_e step, int code)
{
    if (step == SL_EXP_FAIL_QUIT) {
        sl_close(s);
        return;
    }
    if (code == 354) {
        sl_put(s, ".\r\n", 3, SL_EXP_FAIL_DOT);
    }
    if (s->exp_count == 0) {
        sl_put(s, "QUIT\r\n", 6, SL_EXP_FAIL_QUIT);
    }
}

static void
sl_on_reply(sl_session_t *s, sl_expect_e step, int code)
{
    const sl_conf_t *conf = s->w->conf;
    char             text[SL_TEXT_MAX + 48];

    if (!s->failed && !sl_reply_ok(step, code)) {
        snprintf(text, sizeof(text), "%s (%s)", s->reply.text,
                 sl_step_name[step]);
        sl_count_fail(s, text);
    }
    if (s->failed) {
        sl_drain(s, step, code);
        return;
    }
    switch (step) {
    case SL_EXP_GREETING:
        if (conf->idle == SL_IDLE_GREETING) {
            sl_hold(s);
        } else {
            sl_put(s, conf->ehlo_cmd, conf->ehlo_len, SL_EXP_EHLO);
        }
        break;
    case SL_EXP_EHLO:
        sl_after_ehlo(s);
        break;
    case SL_EXP_STARTTLS:
        sl_start_tls(s);
        break;
    case SL_EXP_AUTH_LOGIN:
        sl_put(s, s->cred->login_user, strlen(s->cred->login_user),
               SL_EXP_LOGIN_USER);
        break;
    case SL_EXP_LOGIN_USER:
        sl_put(s, s->cred->login_pass, strlen(s->cred->login_pass),
               SL_EXP_LOGIN_PASS);
        break;
    case SL_EXP_AUTH_PLAIN:
    case SL_EXP_LOGIN_PASS:
        sl_authenticated(s);
        break;
    case SL_EXP_MAIL:
    case SL_EXP_RCPT:
        if (s->rcpt_next < conf->rcpts) {
            sl_put(s, conf->rcpt_cmd[s->rcpt_next],
                   conf->rcpt_len[s->rcpt_next], SL_EXP_RCPT);
            s->rcpt_next++;
        } else if (step == SL_EXP_RCPT && s->exp_count == 0) {
            sl_put(s, "DATA\r\n", 6, SL_EXP_DATA);
        }
        break;
    case SL_EXP_DATA:
        s->body = conf->body;
        s->body_pos = 0;
        s->body_len = conf->body_len;
        sl_expect(s, SL_EXP_DOT);
        break;
    case SL_EXP_DOT:
        s->msgs_done++;
        s->w->stats.messages++;
        s->w->stats.message_bytes += conf->size;
        sl_next_message(s);
        break;
    case SL_EXP_QUIT:
        s->counted = true;
        s->w->stats.ok++;
        sl_hist_add(&s->w->stats.latency, (sl_now() - s->t_start) / 1000);
        s->state = SL_ST_CLOSING;
        s->deadline = sl_now() + sl_secs(SL_CLOSE_WAIT);
        break;
    default:
        break;
    }
}

/* One complete line of input. */
static void
sl_line(sl_session_t *s, const char *line, size_t len)
{
    sl_reply_rc_e  rc;
    sl_expect_e    step;

    if (s->state == SL_ST_HOLD || s->state == SL_ST_CLOSING) {
        return;                 /* whatever it is, we are not asking */
    }
    if (s->exp_count == 0) {
        char text[SL_TEXT_MAX + 1];
        sl_printable(text, sizeof(text), line, len);
        sl_fail_close(s, "unexpected reply: %s", text);
        return;
    }
    step = (sl_expect_e) s->exp[s->exp_head];
    rc = sl_reply_line(&s->reply, line, len);
    if (rc == SL_REPLY_BAD) {
        char text[SL_TEXT_MAX + 48];
        snprintf(text, sizeof(text), "garbage reply (%s): ",
                 sl_step_name[step]);
        sl_fail_close(s, "%s", strncat(text, s->reply.text,
                                       sizeof(text) - strlen(text) - 1));
        return;
    }
    if (step == SL_EXP_EHLO && sl_reply_keyword(line, len, "PIPELINING")) {
        s->pipelining = true;
    }
    if (rc == SL_REPLY_MORE) {
        return;
    }
    s->exp_head = (s->exp_head + 1) % SL_EXPECT_MAX;
    s->exp_count--;
    s->deadline = s->exp_count
        ? sl_now() + sl_secs(s->w->conf->timeout) : 0;
    sl_on_reply(s, step, s->reply.code);
    sl_reply_reset(&s->reply);
}

/* Cuts the input into lines.  Returns false when the session was closed
 * or changed state (STARTTLS) so that the caller stops reading. */
static bool
sl_parse(sl_session_t *s)
{
    size_t      pos = 0;
    char       *lf;
    sl_state_e  state = s->state;

    while (pos < s->in_len
           && (lf = memchr(s->in + pos, '\n', s->in_len - pos)) != NULL)
    {
        size_t len = (size_t) (lf - (s->in + pos));
        sl_line(s, s->in + pos, len);
        pos += len + 1;
        if (s->state != state) {
            break;
        }
    }
    if (s->state == SL_ST_FREE) {
        return false;
    }
    memmove(s->in, s->in + pos, s->in_len - pos);
    s->in_len -= pos;
    if (s->state == SL_ST_HANDSHAKE && s->in_len > 0) {
        sl_fail_close(s, "%s", "data after the STARTTLS reply");
        return false;
    }
    return s->state == state;
}

static sl_io_e
sl_recv(sl_session_t *s, char *buf, size_t size, size_t *got)
{
    ssize_t  r;

    if (s->ssl) {
        int rc = SSL_read(s->ssl, buf, (int) size);
        if (rc > 0) {
            *got = (size_t) rc;
            return SL_IO_OK;
        }
        switch (SSL_get_error(s->ssl, rc)) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE:
            return SL_IO_AGAIN;
        case SSL_ERROR_ZERO_RETURN:
            return SL_IO_EOF;
        default:
            ERR_clear_error();
            return SL_IO_ERROR;
        }
    }
    do {
        r = recv(s->fd, buf, size, 0);
    } while (r < 0 && errno == EINTR);
    if (r > 0) {
        *got = (size_t) r;
        return SL_IO_OK;
    }
    if (r == 0) {
        return SL_IO_EOF;
    }
    return errno == EAGAIN ? SL_IO_AGAIN : SL_IO_ERROR;
}

/* Reads until the socket is dry, the state changes, or the session
 * ends.  Returns false when it was closed.
 *
 * The socket is edge-triggered, so "dry" must be true: EAGAIN, or a
 * plain read that did not fill the buffer (the kernel had no more).  A
 * short read does not show a close that came with the data, so once
 * epoll reported the peer's close, and while waiting for it after QUIT,
 * reading goes on to EOF.  OpenSSL reads whole records and may keep
 * decrypted bytes, so with TLS reading goes on to WANT_READ. */
static bool
sl_read(sl_session_t *s)
{
    size_t   got, room;
    sl_io_e  rc;

    for (;;) {
        if (s->in_len == SL_IN_SIZE) {
            sl_fail_close(s, "reply line too long (%s)", sl_step(s));
            return false;
        }
        room = SL_IN_SIZE - s->in_len;
        rc = sl_recv(s, s->in + s->in_len, room, &got);
        if (rc == SL_IO_AGAIN) {
            return true;
        }
        if (rc == SL_IO_EOF || rc == SL_IO_ERROR) {
            if (s->state == SL_ST_CLOSING || s->state == SL_ST_HOLD
                || (s->failed && s->exp_count
                    && s->exp[s->exp_head] == SL_EXP_FAIL_QUIT))
            {
                sl_close(s);
            } else {
                sl_fail_close(s, rc == SL_IO_EOF
                              ? "connection closed by the server (%s)"
                              : "read error (%s)", sl_step(s));
            }
            return false;
        }
        s->in_len += got;
        if (!sl_parse(s) && s->state != SL_ST_CLOSING) {
            return s->state != SL_ST_FREE;
        }
        if (got < room && s->ssl == NULL && !s->peer_closed
            && s->state != SL_ST_CLOSING)
        {
            return true;
        }
    }
}

/* ---- TLS ------------------------------------------------------------- */

static void
sl_handshake(sl_session_t *s)
{
    int   rc = SSL_connect(s->ssl), err;
    char  text[SL_TEXT_MAX + 1];

    if (rc == 1) {
        s->tls_up = true;
        s->pipelining = false;          /* the EHLO over TLS decides */
        s->state = SL_ST_SMTP;
        s->w->stats.tls_handshakes++;
        if (SSL_session_reused(s->ssl)) {
            s->w->stats.tls_resumed++;
        }
        if (SSL_version(s->ssl) == TLS1_3_VERSION) {
            s->w->stats.tls13++;
        }
        if (s->w->conf->tls == SL_TLS_IMPLICIT) {
            sl_expect(s, SL_EXP_GREETING);
        } else {
            sl_put(s, s->w->conf->ehlo_cmd, s->w->conf->ehlo_len,
                   SL_EXP_EHLO);
        }
        sl_io(s);               /* OpenSSL may hold the greeting already */
        return;
    }
    err = SSL_get_error(s->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        return;                 /* epoll reports both directions */
    }
    if (ERR_peek_error()) {
        ERR_error_string_n(ERR_get_error(), text, sizeof(text));
    } else {
        snprintf(text, sizeof(text), "%s",
                 err == SSL_ERROR_SYSCALL ? "connection closed" : "error");
    }
    ERR_clear_error();
    sl_fail_close(s, "TLS handshake: %s", text);
}

static void
sl_start_tls(sl_session_t *s)
{
    sl_worker_t *w = s->w;

    s->ssl = SSL_new(w->conf->ssl_ctx);
    if (s->ssl == NULL || SSL_set_fd(s->ssl, s->fd) != 1) {
        ERR_clear_error();
        sl_fail_close(s, "%s", "TLS: out of memory");
        return;
    }
    SSL_set_app_data(s->ssl, s);
    if (w->conf->sni) {
        SSL_set_tlsext_host_name(s->ssl, w->conf->sni);
    }
    if (w->conf->resume && w->resume) {
        SSL_set_session(s->ssl, w->resume);
    }
    /* The caller drives the handshake once it has left the parser. */
    s->state = SL_ST_HANDSHAKE;
    s->deadline = sl_now() + sl_secs(w->conf->timeout);
}

/* SSL_CTX new-session callback with --resume: keep the newest session
 * of this thread for the next connection. */
int
sl_new_session(SSL *ssl, SSL_SESSION *sess)
{
    sl_session_t *s = SSL_get_app_data(ssl);

    if (s == NULL) {
        return 0;
    }
    if (s->w->resume) {
        SSL_SESSION_free(s->w->resume);
    }
    s->w->resume = sess;
    return 1;
}

/* ---- events ---------------------------------------------------------- */

static void
sl_io(sl_session_t *s)
{
    if (!sl_flush(s)) {
        return;
    }
    if (!sl_read(s)) {
        return;
    }
    if (s->state == SL_ST_HANDSHAKE) {
        sl_handshake(s);        /* after STARTTLS's 220 */
        return;
    }
    sl_flush(s);
}

static void
sl_connected(sl_session_t *s, uint32_t events)
{
    int        err = 0;
    socklen_t  len = sizeof(err);

    if (events & (EPOLLERR | EPOLLHUP)) {
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
            err = errno;
        }
        if (err == 0) {
            err = ECONNRESET;
        }
    } else if (!(events & EPOLLOUT)) {
        return;
    }
    if (err != 0) {
        sl_fail_close(s, "connect: %s", strerror(err));
        return;
    }
    if (s->w->conf->tls == SL_TLS_IMPLICIT) {
        sl_start_tls(s);
        if (s->state == SL_ST_HANDSHAKE) {
            sl_handshake(s);
        }
        return;
    }
    s->state = SL_ST_SMTP;
    sl_expect(s, SL_EXP_GREETING);
    sl_io(s);                   /* the greeting may be there already */
}

static void
sl_event(sl_session_t *s, uint32_t events)
{
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        s->peer_closed = true;
    }
    switch (s->state) {
    case SL_ST_FREE:
        return;
    case SL_ST_CONNECTING:
        sl_connected(s, events);
        return;
    case SL_ST_HANDSHAKE:
        sl_handshake(s);
        return;
    default:
        sl_io(s);
    }
}

static void
sl_timeout(sl_session_t *s)
{
    switch (s->state) {
    case SL_ST_CLOSING:
        sl_close(s);
        return;
    case SL_ST_CONNECTING:
        sl_fail_close(s, "%s", "timeout in connect");
        return;
    case SL_ST_HANDSHAKE:
        sl_fail_close(s, "%s", "timeout in the TLS handshake");
        return;
    default:
        if (s->failed) {
            sl_close(s);
            return;
        }
        sl_fail_close(s, "timeout waiting for the reply to %s", sl_step(s));
    }
}

/* ---- starting sessions ----------------------------------------------- */

static sl_session_t *
sl_session_alloc(sl_worker_t *w, unsigned slot)
{
    sl_session_t *s = malloc(sizeof(sl_session_t) + w->conf->out_size);

    if (s != NULL) {
        s->w = w;
        s->slot = slot;
        s->state = SL_ST_FREE;
    }
    return s;
}

static void
sl_session_init(sl_session_t *s)
{
    s->fd = -1;
    s->ssl = NULL;
    s->tls_up = s->pipelining = s->failed = s->counted = s->held = false;
    s->peer_closed = false;
    s->t_start = sl_now();
    s->deadline = s->t_start + sl_secs(s->w->conf->timeout);
    s->msgs_done = s->rcpt_next = 0;
    s->cred = NULL;
    sl_reply_reset(&s->reply);
    s->exp_head = s->exp_count = 0;
    s->body = NULL;
    s->body_pos = s->body_len = 0;
    s->out_pos = s->out_len = s->in_len = 0;
}

static void
sl_session_start(sl_worker_t *w, sl_session_t *s)
{
    const sl_conf_t    *conf = w->conf;
    struct epoll_event  ev;
    int                 one = 1, rc;

    sl_session_init(s);
    s->state = SL_ST_CONNECTING;
    w->active++;
    if (conf->idle != SL_IDLE_OFF) {
        w->setting_up++;
        w->opened++;
    }
    s->fd = socket(conf->addr.ss_family,
                   SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        sl_fail_close(s, "socket: %s", strerror(errno));
        return;
    }
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Registered once, both directions, edge-triggered: no epoll_ctl()
     * as the session goes from writing to reading and back. */
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = s;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, s->fd, &ev) != 0) {
        sl_fail_close(s, "epoll_ctl: %s", strerror(errno));
        return;
    }
    rc = connect(s->fd, (const struct sockaddr *) &conf->addr,
                 conf->addr_len);
    if (rc != 0 && errno != EINPROGRESS) {
        sl_fail_close(s, "connect: %s", strerror(errno));
    }
}

/* May this thread begin one more session now? */
static bool
sl_may_start(sl_worker_t *w, uint64_t now)
{
    const sl_conf_t *conf = w->conf;

    if (atomic_load(&sl_shared.stop)) {
        return false;
    }
    if (conf->idle != SL_IDLE_OFF) {
        return w->opened < w->slots && w->setting_up < w->ramp;
    }
    if (w->exhausted || w->active >= w->slots
        || (sl_shared.deadline && now >= sl_shared.deadline))
    {
        return false;
    }
    if (w->rate > 0 && now < w->next_start) {
        return false;
    }
    return true;
}

/* Begins sessions while allowed.  New sessions start only here, between
 * batches of events, so a slot freed during a batch is not reused while
 * events for its old socket may still be in that batch. */
static void
sl_start_sessions(sl_worker_t *w, uint64_t now)
{
    const sl_conf_t *conf = w->conf;
    unsigned         i;

    while (w->nfree > 0 && sl_may_start(w, now)) {
        i = w->free_slots[w->nfree - 1];
        if (w->sessions[i] == NULL) {
            w->sessions[i] = sl_session_alloc(w, i);
            if (w->sessions[i] == NULL) {
                w->error = ENOMEM;
                return;
            }
        }
        if (conf->idle == SL_IDLE_OFF && conf->sessions
            && atomic_fetch_add(&sl_shared.started, 1) >= conf->sessions
            && now >= sl_shared.min_until)
        {
            w->exhausted = true;
            return;
        }
        if (w->rate > 0) {
            /* At most 100 ms of missed starts are made up in a burst. */
            w->next_start += (uint64_t) (1e9 / w->rate);
            if (w->next_start + 100000000u < now) {
                w->next_start = now - 100000000u;
            }
        }
        w->nfree--;
        sl_session_start(w, w->sessions[i]);
    }
}

/* Is there anything left for this thread to do? */
static bool
sl_worker_busy(sl_worker_t *w, uint64_t now)
{
    if (w->active > 0) {
        return true;
    }
    if (atomic_load(&sl_shared.stop)) {
        return false;
    }
    if (w->conf->idle != SL_IDLE_OFF) {
        return true;            /* holds until told to stop */
    }
    if (w->exhausted || (sl_shared.deadline && now >= sl_shared.deadline)) {
        return false;
    }
    return true;
}

static void
sl_abort_all(sl_worker_t *w)
{
    unsigned  i;

    for (i = 0; i < w->slots; i++) {
        sl_session_t *s = w->sessions[i];
        if (s == NULL || s->state == SL_ST_FREE) {
            continue;
        }
        if (s->held && !s->counted) {
            s->counted = true;          /* held to the end: a success */
            w->stats.ok++;
        } else if (!s->counted) {
            s->counted = true;
            w->stats.aborted++;
        }
        sl_close(s);
    }
}

static void
sl_check_timeouts(sl_worker_t *w, uint64_t now)
{
    unsigned  i;

    for (i = 0; i < w->slots; i++) {
        sl_session_t *s = w->sessions[i];
        if (s != NULL && s->state != SL_ST_FREE && s->deadline
            && now >= s->deadline)
        {
            sl_timeout(s);
        }
    }
}

static int
sl_wait_ms(sl_worker_t *w, uint64_t now)
{
    uint64_t  ms = SL_TICK_MS;

    if (w->rate > 0 && w->next_start > now && w->active < w->slots) {
        uint64_t until = (w->next_start - now + 999999) / 1000000;
        if (until < ms) {
            ms = until;
        }
    } else if (w->rate > 0 && w->active < w->slots) {
        ms = 0;
    }
    return (int) ms;
}

void *
sl_worker_run(void *arg)
{
    sl_worker_t         *w = arg;
    struct epoll_event   evs[SL_EVENTS];
    uint64_t             now, next_scan;
    int                  n, i;

    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->sessions = calloc(w->slots ? w->slots : 1, sizeof(sl_session_t *));
    w->free_slots = calloc(w->slots ? w->slots : 1, sizeof(unsigned));
    if (w->ep < 0 || w->sessions == NULL || w->free_slots == NULL) {
        w->error = errno ? errno : ENOMEM;
        atomic_store(&sl_shared.stop, 2);
        atomic_fetch_add(&sl_shared.workers_done, 1);
        return NULL;
    }
    for (i = 0; i < (int) w->slots; i++) {
        w->free_slots[i] = w->slots - 1 - (unsigned) i;
    }
    w->nfree = w->slots;
    now = sl_now();
    w->next_start = now;
    next_scan = now + SL_TICK_MS * 1000000ull;

    for (;;) {
        now = sl_now();
        if (atomic_load(&sl_shared.stop) == 2) {
            sl_abort_all(w);
            break;
        }
        sl_start_sessions(w, now);
        if (w->error || !sl_worker_busy(w, now)) {
            break;
        }
        n = epoll_wait(w->ep, evs, SL_EVENTS, sl_wait_ms(w, now));
        for (i = 0; i < n; i++) {
            sl_event(evs[i].data.ptr, evs[i].events);
        }
        now = sl_now();
        if (now >= next_scan) {
            sl_check_timeouts(w, now);
            next_scan = now + SL_TICK_MS * 1000000ull;
        }
    }
    if (w->error) {
        atomic_store(&sl_shared.stop, 2);
    }
    atomic_fetch_add(&sl_shared.workers_done, 1);
    return NULL;
}
