/*
 * sg_spool_session.c: the SMTP server the spool runs on a session it
 * takes over after AUTH (or, with "smtp_auth none", at the first RCPT).
 *
 * Owns the client connection's handlers from then on, the envelope of
 * the current transaction, and the decoding of DATA and BDAT into the
 * storage layer (sg_spool_store.c).  Commands are table-dispatched and
 * answered in order, pipelined or not, through the session's own input
 * and output buffers; the same timeout and max_errors apply as before
 * AUTH.  Refuses to answer 250 to the end of a message before the file
 * is durable in DIR/new, and to read more from the client while its
 * data waits for the disk: memory per session stays bounded.
 */
#include "sg_spool_int.h"
#include "sg_spool_data.h"
#include "sg_spool_queue.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif

/* The session's output buffer holds two of the longest replies; it is
 * flushed once less than one fits, as before AUTH. */
#define SG_SPOOL_OUT_SLACK  SG_SMTP_REPLY_MAX
#define SG_SPOOL_HELO_MAX   255
/* How long a look at the free space is trusted for the check at MAIL. */
#define SG_SPOOL_FREE_FRESH  2000

typedef enum {
    SG_SPOOL_CMD = 0,           /* reading command lines */
    SG_SPOOL_DATA,              /* after 354, until CRLF.CRLF */
    SG_SPOOL_BDAT               /* the octets of a BDAT chunk */
} sg_spool_phase_e;

/* What the session waits for from the storage layer; it reads and
 * handles nothing from the client meanwhile. */
typedef enum {
    SG_SPOOL_WAIT_NONE = 0,
    SG_SPOOL_WAIT_OPEN,         /* the file, before 354 */
    SG_SPOOL_WAIT_ROOM,         /* a buffer, while data streams in */
    SG_SPOOL_WAIT_COMMIT        /* the message in DIR/new, before 250 */
} sg_spool_wait_e;

typedef struct {
    sg_smtp_session_t  *s;
    sg_spool_t         *sp;
    sg_spool_conf_t    *conf;
    int64_t             max_size;

    sg_spool_phase_e    phase;
    sg_spool_wait_e     wait;
    unsigned            started:1;
    unsigned            skipping:1;    /* an over-long line, to its LF */

    /* The transaction. */
    unsigned            has_mail:1;
    unsigned            replaying:1;   /* a MAIL taken before, again */
    unsigned            bdat:1;        /* BDAT began it: no DATA now */
    unsigned            smtputf8:1;
    unsigned            eightbit:1;    /* BODY=8BITMIME */
    unsigned            too_big:1;
    sg_str_t            from;          /* SG_SMTP_PATH_MAX bytes */
    u_char             *rcpts;         /* "addr\0" each, malloc'd */
    size_t              rcpts_len;
    size_t              rcpts_cap;
    unsigned            nrcpt;
    int64_t             size;          /* message octets so far */
    int64_t             declared;      /* MAIL's SIZE=, 0: none */
    int                 store_err;     /* errno of a storage failure */
    sg_spool_file_t    *file;

    sg_spool_data_t     dec;
    uint64_t            chunk_size;
    uint64_t            chunk_left;    /* BDAT octets still to come */
    unsigned            chunk_last:1;
    const char         *chunk_refusal; /* a refused BDAT: its reply */
} sg_spool_ctx_t;

typedef int (*sg_spool_handler_pt)(sg_spool_ctx_t *ctx,
    const sg_smtp_cmd_t *cmd);

static void sg_spool_run(sg_spool_ctx_t *ctx);
static void sg_spool_read_handler(sg_event_t *ev);
static void sg_spool_write_handler(sg_event_t *ev);

/* The transaction and the storage. */

static void
sg_spool_reset(sg_spool_ctx_t *ctx)
{
    if (ctx->file) {
        sg_spool_file_release(ctx->file);
        ctx->file = NULL;
    }
    ctx->has_mail = 0;
    ctx->bdat = 0;
    ctx->smtputf8 = 0;
    ctx->eightbit = 0;
    ctx->too_big = 0;
    ctx->from.len = 0;
    ctx->rcpts_len = 0;
    ctx->nrcpt = 0;
    ctx->size = 0;
    ctx->declared = 0;
    ctx->store_err = 0;
}

static void
sg_spool_cleanup(void *data)
{
    sg_spool_ctx_t  *ctx = data;

    if (ctx->file) {
        sg_spool_file_release(ctx->file);     /* the tmp file goes */
        ctx->file = NULL;
    }
    free(ctx->rcpts);
    ctx->rcpts = NULL;
}

/* Too little room left on the spool's file system (spool_min_free). */
static void
sg_spool_low_log(sg_spool_ctx_t *ctx, int64_t avail, const char *what,
    const sg_str_t *id)
{
    char  declared[80] = "";

    if (ctx->declared) {
        (void) snprintf(declared, sizeof(declared), " plus the size the "
                        "client declared (%lld)",
                        (long long) ctx->declared);
    }
    sg_log_error(SG_LOG_WARN, ctx->s->log, 0, "spool \"%.*s\": %lld bytes "
                 "free, fewer than spool_min_free (%zu)%s, so %s%.*s%s is "
                 "refused with 452: free space on that file system, or "
                 "lower spool_min_free", SG_STR_ARG(&ctx->sp->dir),
                 (long long) avail, ctx->conf->min_free, declared, what,
                 SG_STR_ARG(id), what[0] == 'M' ? ">" : "");
}

/* The file failed: log why once, and go on reading the message into
 * nothing, to answer at its end. */
static void
sg_spool_lost(sg_spool_ctx_t *ctx)
{
    const char  *call;
    int64_t      avail;
    sg_str_t     idv;
    bool         low;
    int          err;

    err = sg_spool_file_error(ctx->file, &call);
    avail = sg_spool_file_free(ctx->file, &low);
    if (low) {
        idv.data = (u_char *) sg_spool_file_id(ctx->file);
        idv.len = strlen((char *) idv.data);
        sg_spool_low_log(ctx, avail, "message ", &idv);
    } else {
        sg_log_error(SG_LOG_ERR, ctx->s->log, err, "spool \"%.*s\": %s "
                     "failed for message %s, the message is refused",
                     SG_STR_ARG(&ctx->sp->dir), call,
                     sg_spool_file_id(ctx->file));
    }
    ctx->store_err = err ? err : EIO;
    sg_spool_file_release(ctx->file);
    ctx->file = NULL;
}

/* The reply to a message that could not be stored; the transaction
 * ends. */
static int
sg_spool_refuse_storage(sg_spool_ctx_t *ctx)
{
    int  err = ctx->store_err;

    sg_spool_reset(ctx);
    if (err == ENOSPC || err == EDQUOT || err == EIO || err == EFBIG) {
        return sg_smtp_reply(ctx->s, "452 4.3.1 Insufficient system "
                             "storage");
    }
    return sg_smtp_reply(ctx->s, "451 4.3.0 Local error in processing");
}

static int
sg_spool_refuse_size(sg_spool_ctx_t *ctx)
{
    sg_log_error(SG_LOG_INFO, ctx->s->log, 0, "message from <%.*s> refused: "
                 "more than %lld octets", SG_STR_ARG(&ctx->from),
                 (long long) ctx->max_size);
    sg_spool_reset(ctx);
    return sg_smtp_error(ctx->s, "552 5.3.4 Message size exceeds fixed "
                         "maximum message size");
}

/* RFC 3848 and RFC 6531: ESMTP, then S for TLS and A for AUTH. */
static const char *
sg_spool_protocol(sg_spool_ctx_t *ctx)
{
    static const char  *names[2][4] = {
        { "ESMTP", "ESMTPA", "ESMTPS", "ESMTPSA" },
        { "UTF8SMTP", "UTF8SMTPA", "UTF8SMTPS", "UTF8SMTPSA" }
    };
    sg_smtp_session_t  *s = ctx->s;

    if (!s->esmtp) {
        return "SMTP";
    }
    return names[ctx->smtputf8][(s->auth_mech != SG_SMTP_AUTH_NONE)
                                + 2 * s->tls];
}

/* Room for X-Smtpgate-Forward: the login, HELO, host name and server
 * label in xtext (at most 3 octets each), and the rest. */
#define SG_SPOOL_FORWARD_MAX  (4 * (255 * 3 + 16) + 256 + SG_INET_ADDRSTRLEN)

/*
 * In a forwarding spool, what the forwarder needs to present the
 * message as this session would have: the XCLIENT attributes the proxy
 * sends (sg_proxy_xclient()), already in xtext, the MAIL parameters
 * that change how the message is read, and the server whose proxy
 * settings to use.  Folded so that no
 * line passes 998 octets.
 */
static u_char *
sg_spool_forward_header(sg_spool_ctx_t *ctx, u_char *p, u_char *last)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;
    u_char              x[255 * 3 + 1];
    sg_str_t            name;
    size_t              n;

    p = sg_slprintf(p, last, "%s ADDR=%s%.*s PORT=%d PROTO=%s",
                    SG_SPOOL_FORWARD_HEADER,
                    c->sockaddr.ss_family == AF_INET6 ? "IPV6:" : "",
                    SG_STR_ARG(&c->addr_text),
                    sg_sockaddr_port((struct sockaddr *) &c->sockaddr),
                    s->esmtp ? "ESMTP" : "SMTP");
    if (ctx->eightbit) {
        p = sg_slprintf(p, last, " BODY=8BITMIME");
    }
    if (ctx->smtputf8) {
        p = sg_slprintf(p, last, " SMTPUTF8");
    }
    sg_smtp_client_host(s, &name);
    if (name.len && name.len <= 255) {
        n = sg_smtp_xtext_encode(x, &name);
        p = sg_slprintf(p, last, "\r\n\tNAME=%.*s", (int) n, (char *) x);
    }
    if (s->helo.len && s->helo.len <= 255) {
        n = sg_smtp_xtext_encode(x, &s->helo);
        p = sg_slprintf(p, last, "\r\n\tHELO=%.*s", (int) n, (char *) x);
    }
    if (s->login.len && s->login.len <= 255) {
        n = sg_smtp_xtext_encode(x, &s->login);
        p = sg_slprintf(p, last, "\r\n\tLOGIN=%.*s", (int) n, (char *) x);
    }
    /* Which server took it: the forwarder speaks to the backend with
     * that server's proxy settings. */
    if (s->conf->label.len && s->conf->label.len <= 255) {
        n = sg_smtp_xtext_encode(x, &s->conf->label);
        p = sg_slprintf(p, last, "\r\n\tSERVER=%.*s", (int) n, (char *) x);
    }
    return sg_slprintf(p, last, "\r\n");
}

/*
 * The header block put before the message: Return-Path, one
 * X-Original-To per envelope recipient, and a Received line.  malloc'd,
 * for the storage layer to write and free.
 */
static u_char *
sg_spool_headers(sg_spool_ctx_t *ctx, size_t *len)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;
    u_char             *buf, *p, *last, *r;
    size_t              size;
    unsigned            i;

    size = 2048 + 2 * SG_SPOOL_HELO_MAX + s->conf->server_name.len
           + ctx->rcpts_len + ctx->nrcpt * sizeof("X-Original-To: \r\n")
           + (ctx->sp->forward ? SG_SPOOL_FORWARD_MAX : 0);
    buf = sg_alloc(size, s->log);
    if (buf == NULL) {
        return NULL;
    }
    p = buf;
    last = buf + size;
    p = sg_slprintf(p, last, "Return-Path: <%.*s>\r\n",
                    SG_STR_ARG(&ctx->from));
    for (i = 0, r = ctx->rcpts; i < ctx->nrcpt; i++) {
        p = sg_slprintf(p, last, "X-Original-To: %s\r\n", (char *) r);
        r += strlen((char *) r) + 1;
    }
    if (ctx->sp->forward) {
        p = sg_spool_forward_header(ctx, p, last);
    }
    p = sg_slprintf(p, last, "Received: from %.*s ([%s%.*s])\r\n",
                    SG_STR_ARG(&s->helo),
                    c->sockaddr.ss_family == AF_INET6 ? "IPv6:" : "",
                    SG_STR_ARG(&c->addr_text));
#if (SG_HAVE_SSL_MODULE)
    if (s->tls) {
        p = sg_slprintf(p, last, "\t(using %s with cipher %s)\r\n",
                        sg_ssl_protocol(c), sg_ssl_cipher(c));
    }
#endif
    p = sg_slprintf(p, last, "\tby %.*s (smtpgate) with %s id %s\r\n\t",
                    SG_STR_ARG(&s->conf->server_name),
                    sg_spool_protocol(ctx), sg_spool_file_id(ctx->file));
    if (ctx->nrcpt == 1) {
        p = sg_slprintf(p, last, "for <%s>; ", (char *) ctx->rcpts);
    }
    p = sg_spool_format_date(p, last - 2, sg_current_time);
    *p++ = '\r';
    *p++ = '\n';
    *len = (size_t) (p - buf);
    return buf;
}

static void sg_spool_on_file(sg_spool_file_t *f, void *data);

/* Start the message's file: name, headers, and the open on a thread. */
static int
sg_spool_begin(sg_spool_ctx_t *ctx)
{
    u_char  *head;
    size_t   len;

    ctx->size = 0;
    ctx->too_big = 0;
    ctx->store_err = 0;
    ctx->file = sg_spool_file_create(ctx->sp, ctx->s->log, sg_spool_on_file,
                                     ctx);
    if (ctx->file == NULL) {
        ctx->store_err = ENOMEM;
        return SG_ERROR;
    }
    head = sg_spool_headers(ctx, &len);
    if (head == NULL) {
        sg_spool_file_release(ctx->file);
        ctx->file = NULL;
        ctx->store_err = ENOMEM;
        return SG_ERROR;
    }
    if (sg_spool_file_open(ctx->file, head, len, ctx->conf->min_free
                           ? (int64_t) ctx->conf->min_free + ctx->declared
                           : 0) != SG_OK)
    {
        sg_spool_lost(ctx);
        return SG_ERROR;
    }
    return SG_OK;
}

/*
 * Account for n octets of the message now at the fill position: true
 * when they are to be kept.  Past the size limit the file is dropped
 * and the rest of the message is read into nothing.
 */
static bool
sg_spool_take(sg_spool_ctx_t *ctx, size_t n)
{
    ctx->size += (int64_t) n;
    if (!ctx->too_big && ctx->size > ctx->max_size) {
        ctx->too_big = 1;
        if (ctx->file) {
            sg_spool_file_release(ctx->file);
            ctx->file = NULL;
        }
    }
    if (ctx->file == NULL) {
        return false;
    }
    sg_spool_file_add(ctx->file, n);
    return true;
}

/* Where the next octets go: the file's buffer, or a scratch buffer when
 * they are dropped.  NULL: the session must wait for a buffer. */
static u_char *
sg_spool_room(sg_spool_ctx_t *ctx, u_char *scratch, size_t scratch_size,
    size_t *room)
{
    u_char  *p;
    int      rc;

    if (ctx->file) {
        p = sg_spool_file_room(ctx->file, room);
        if (*room >= 2) {
            return p;
        }
        rc = sg_spool_file_flush(ctx->file);
        if (rc == SG_AGAIN) {
            ctx->wait = SG_SPOOL_WAIT_ROOM;
            return NULL;
        }
        if (rc == SG_OK) {
            return sg_spool_file_room(ctx->file, room);
        }
        sg_spool_lost(ctx);
    }
    *room = scratch_size;
    return scratch;
}

/* The end of a message (the final dot, or BDAT LAST). */
static int
sg_spool_end(sg_spool_ctx_t *ctx)
{
    if (ctx->too_big) {
        return sg_spool_refuse_size(ctx);
    }
    if (ctx->file == NULL) {
        return sg_spool_refuse_storage(ctx);
    }
    if (sg_spool_file_commit(ctx->file) != SG_OK) {
        sg_spool_lost(ctx);
        return sg_spool_refuse_storage(ctx);
    }
    ctx->wait = SG_SPOOL_WAIT_COMMIT;
    return SG_OK;
}

static int
sg_spool_stored(sg_spool_ctx_t *ctx)
{
    sg_spool_file_t  *f = ctx->file;
    char              id[64];

    sg_log_error(SG_LOG_INFO, ctx->s->log, 0, "stored message %s, %llu "
                 "bytes, from <%.*s>, %u recipient%s, in %s",
                 sg_spool_file_id(f),
                 (unsigned long long) sg_spool_file_size(f),
                 SG_STR_ARG(&ctx->from), ctx->nrcpt,
                 ctx->nrcpt == 1 ? "" : "s", sg_spool_file_path(f));
    (void) snprintf(id, sizeof(id), "%s", sg_spool_file_id(f));
    sg_spool_reset(ctx);
    ctx->s->messages++;
    return sg_smtp_reply(ctx->s, "250 2.0.0 Ok: queued as %s", id);
}

/* A task of the storage layer came back. */
static void
sg_spool_on_file(sg_spool_file_t *f, void *data)
{
    sg_spool_ctx_t   *ctx = data;
    sg_spool_wait_e   wait = ctx->wait;
    const char       *call;
    int               rc = SG_OK;

    SG_BUG_ON(f != ctx->file);
    ctx->wait = SG_SPOOL_WAIT_NONE;
    if (wait == SG_SPOOL_WAIT_OPEN) {
        bool     low;
        int64_t  avail = sg_spool_file_free(f, &low);

        if (avail >= 0) {
            ctx->sp->free = avail;
            ctx->sp->free_at = sg_current_msec;
        }
    }
    if (sg_spool_file_error(f, &call) != 0) {
        sg_spool_lost(ctx);
    }
    switch (wait) {
    case SG_SPOOL_WAIT_OPEN:
        if (ctx->file == NULL) {
            rc = sg_spool_refuse_storage(ctx);
            break;
        }
        ctx->phase = SG_SPOOL_DATA;
        memset(&ctx->dec, 0, sizeof(ctx->dec));
        rc = sg_smtp_reply(ctx->s, "354 End data with <CR><LF>.<CR><LF>");
        break;
    case SG_SPOOL_WAIT_COMMIT:
        if (ctx->file && sg_spool_file_committed(ctx->file)) {
            rc = sg_spool_stored(ctx);
        } else {
            rc = sg_spool_refuse_storage(ctx);
        }
        break;
    case SG_SPOOL_WAIT_ROOM:
        break;
    default:
        return;           /* a write the session did not wait for */
    }
    if (rc == SG_ERROR) {
        sg_smtp_close_session(ctx->s);
        return;
    }
    sg_spool_run(ctx);
}

/* Commands. */

static int
sg_spool_helo(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    sg_smtp_session_t  *s = ctx->s;
    int                 rc;

    rc = sg_smtp_set_helo(s, cmd);
    if (rc != SG_OK) {
        return rc == SG_ERROR ? SG_ERROR : SG_OK;
    }
    sg_spool_reset(ctx);
    if (!s->esmtp) {
        return sg_buf_append(&s->out, s->conf->helo_reply.data,
                             s->conf->helo_reply.len);
    }
    /* What the spool itself supports; AUTH and STARTTLS are behind. */
    return sg_smtp_reply(s, "250-%.*s\r\n250-PIPELINING\r\n250-SIZE %lld\r\n"
                         "250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
                         "250 ENHANCEDSTATUSCODES",
                         SG_STR_ARG(&s->conf->server_name),
                         (long long) ctx->max_size);
}

static int
sg_spool_mail_params(sg_spool_ctx_t *ctx, sg_str_t *rest, bool *utf8,
    int64_t *declared)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_str_t            key, val;
    int64_t             n;
    int                 rc;

    while ((rc = sg_smtp_next_param(rest, &key, &val)) == SG_OK) {
        if (sg_str_caseeq(&key, "SIZE")) {
            if (val.data == NULL || sg_parse_int(&val, &n) != SG_OK) {
                return sg_smtp_error(s, "501 5.5.4 Bad SIZE parameter");
            }
            if (n > ctx->max_size) {
                return sg_smtp_error(s, "552 5.3.4 Message size exceeds "
                                     "fixed maximum message size");
            }
            *declared = n;
        } else if (sg_str_caseeq(&key, "BODY")) {
            if (val.data == NULL || (!sg_str_caseeq(&val, "7BIT")
                                     && !sg_str_caseeq(&val, "8BITMIME")))
            {
                return sg_smtp_error(s, "501 5.5.4 Unsupported BODY type");
            }
            ctx->eightbit = sg_str_caseeq(&val, "8BITMIME");
        } else if (sg_str_caseeq(&key, "SMTPUTF8") && val.data == NULL) {
            *utf8 = true;
        } else if (sg_str_caseeq(&key, "AUTH") && val.data) {
            /* RFC 4954 5: who submitted it first; nothing to do here */
        } else {
            return sg_smtp_error(s, "555 5.5.4 Unsupported option: %.*s",
                                 (int) sg_min(key.len, 64),
                                 (char *) key.data);
        }
    }
    if (rc == SG_ERROR) {
        return sg_smtp_error(s, "501 5.5.4 Syntax error in parameters");
    }
    return SG_DONE;
}

static int
sg_spool_mail(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_smtp_path_t      path;
    bool                utf8 = false;
    int64_t             declared = 0;
    int                 rc;

    if (ctx->has_mail) {
        return sg_smtp_error(s, "503 5.5.1 Sender already specified");
    }
    rc = sg_smtp_parse_path(&cmd->args, "FROM:", true, &path);
    if (rc == SG_ERROR) {
        return sg_smtp_error(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
    }
    if (rc == SG_DECLINED) {
        return sg_smtp_error(s, "501 5.1.7 Bad sender address syntax");
    }
    rc = sg_spool_mail_params(ctx, &path.params, &utf8, &declared);
    if (rc != SG_DONE) {
        return rc;
    }
    /* The last message's look at the free space, when recent, saves the
     * client its recipients; the open looks again (RFC 1870 6.1). */
    if (ctx->conf->min_free && ctx->sp->free_at
        && sg_current_msec - ctx->sp->free_at < SG_SPOOL_FREE_FRESH
        && ctx->sp->free < (int64_t) ctx->conf->min_free + declared)
    {
        ctx->declared = declared;
        sg_spool_low_log(ctx, ctx->sp->free, "MAIL FROM:<", &path.addr);
        ctx->declared = 0;
        return sg_smtp_reply(s, "452 4.3.1 Insufficient system storage");
    }
    if (path.utf8 && !utf8) {
        return sg_smtp_error(s, "553 5.6.7 Non-ASCII address requires "
                             "SMTPUTF8");
    }
    /* (A MAIL taken before the spool, and replayed, was counted then.) */
    if (!ctx->replaying) {
        rc = sg_smtp_step(s, SG_SMTP_STEP_MAIL, &cmd->args);
        if (rc != SG_OK) {
            return sg_smtp_step_refuse(s, SG_SMTP_STEP_MAIL, rc);
        }
    }
    memcpy(ctx->from.data, path.addr.data, path.addr.len);
    ctx->from.len = path.addr.len;
    ctx->has_mail = 1;
    ctx->smtputf8 = utf8;
    ctx->declared = declared;
    return sg_smtp_reply(s, "250 2.1.0 OK");
}

static int
sg_spool_add_rcpt(sg_spool_ctx_t *ctx, const sg_str_t *addr)
{
    size_t   need = ctx->rcpts_len + addr->len + 1, cap;
    u_char  *p;

    if (need > ctx->rcpts_cap) {
        cap = sg_max(need, sg_max(ctx->rcpts_cap * 2, 1024));
        p = realloc(ctx->rcpts, cap);
        if (p == NULL) {
            sg_log_error(SG_LOG_ALERT, ctx->s->log, errno, "realloc(%zu) "
                         "failed", cap);
            return SG_ERROR;
        }
        ctx->rcpts = p;
        ctx->rcpts_cap = cap;
    }
    memcpy(ctx->rcpts + ctx->rcpts_len, addr->data, addr->len);
    ctx->rcpts[ctx->rcpts_len + addr->len] = '\0';
    ctx->rcpts_len = need;
    ctx->nrcpt++;
    return SG_OK;
}

static int
sg_spool_rcpt(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_smtp_path_t      path;
    sg_str_t            key, val;
    int                 rc;

    if (!ctx->has_mail) {
        return sg_smtp_error(s, "503 5.5.1 Need MAIL command first");
    }
    rc = sg_smtp_parse_path(&cmd->args, "TO:", false, &path);
    if (rc == SG_ERROR) {
        return sg_smtp_error(s, "501 5.5.4 Syntax: RCPT TO:<address>");
    }
    if (rc == SG_DECLINED) {
        return sg_smtp_error(s, "501 5.1.3 Bad recipient address syntax");
    }
    /* DSN (NOTIFY, ORCPT) is not offered, so no parameter is known. */
    rc = sg_smtp_next_param(&path.params, &key, &val);
    if (rc == SG_ERROR) {
        return sg_smtp_error(s, "501 5.5.4 Syntax error in parameters");
    }
    if (rc == SG_OK) {
        return sg_smtp_error(s, "555 5.5.4 Unsupported option: %.*s",
                             (int) sg_min(key.len, 64), (char *) key.data);
    }
    if (path.utf8 && !ctx->smtputf8) {
        return sg_smtp_error(s, "553 5.6.7 Non-ASCII address requires "
                             "SMTPUTF8");
    }
    if (ctx->nrcpt >= (unsigned) ctx->conf->max_recipients) {
        /* Not an error of the client's: it sends the rest later. */
        return sg_smtp_reply(s, "452 4.5.3 Too many recipients");
    }
    rc = sg_smtp_step(s, SG_SMTP_STEP_RCPT, &cmd->args);
    if (rc != SG_OK) {
        return sg_smtp_step_refuse(s, SG_SMTP_STEP_RCPT, rc);
    }
    if (sg_spool_add_rcpt(ctx, &path.addr) != SG_OK) {
        return sg_smtp_reply(s, "451 4.3.0 Local error in processing");
    }
    return sg_smtp_reply(s, "250 2.1.5 OK");
}

/* Whether MAIL and RCPT came first; else the 503 to answer. */
static const char *
sg_spool_refusal(sg_spool_ctx_t *ctx)
{
    if (!ctx->has_mail) {
        return "503 5.5.1 Need MAIL command first";
    }
    if (ctx->nrcpt == 0) {
        return "503 5.5.1 Need RCPT command first";
    }
    return NULL;
}

static int
sg_spool_data_cmd(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    const char  *refusal;

    if (cmd->args.len) {
        return sg_smtp_error(ctx->s, "501 5.5.4 Syntax: DATA");
    }
    refusal = sg_spool_refusal(ctx);
    if (refusal) {
        return sg_smtp_error(ctx->s, "%s", refusal);
    }
    if (ctx->bdat) {
        return sg_smtp_error(ctx->s, "503 5.5.1 DATA not allowed after "
                             "BDAT");
    }
    if (sg_spool_begin(ctx) != SG_OK) {
        return sg_spool_refuse_storage(ctx);
    }
    /* 354 only once the file exists, so that a broken spool costs the
     * client no upload. */
    ctx->wait = SG_SPOOL_WAIT_OPEN;
    return SG_OK;
}

/* "n" or "n LAST" (RFC 3030). */
static int
sg_spool_bdat_args(const sg_str_t *args, uint64_t *n, bool *last)
{
    sg_str_t  digits, rest;
    int64_t   v;

    digits.data = args->data;
    digits.len = 0;
    while (digits.len < args->len && digits.data[digits.len] >= '0'
           && digits.data[digits.len] <= '9')
    {
        digits.len++;
    }
    if (digits.len == 0 || digits.len > 18 || sg_parse_int(&digits, &v)) {
        return SG_ERROR;
    }
    rest.data = args->data + digits.len;
    rest.len = args->len - digits.len;
    *n = (uint64_t) v;
    *last = false;
    if (rest.len == 0) {
        return SG_OK;
    }
    if (rest.data[0] != ' ') {
        return SG_ERROR;
    }
    while (rest.len && rest.data[0] == ' ') {
        rest.data++;
        rest.len--;
    }
    if (!sg_str_caseeq(&rest, "LAST")) {
        return SG_ERROR;
    }
    *last = true;
    return SG_OK;
}

static int
sg_spool_bdat(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    uint64_t  n;
    bool      last;

    if (sg_spool_bdat_args(&cmd->args, &n, &last) != SG_OK) {
        /* The size is unknown, so its octets cannot be skipped: they
         * will be read as commands, and refused. */
        return sg_smtp_error(ctx->s, "501 5.5.4 Syntax: BDAT size [LAST]");
    }
    ctx->phase = SG_SPOOL_BDAT;
    ctx->chunk_size = n;
    ctx->chunk_left = n;
    ctx->chunk_last = last;
    /* A refused chunk is still read, to stay in step (RFC 3030 4.2). */
    ctx->chunk_refusal = sg_spool_refusal(ctx);
    if (ctx->chunk_refusal == NULL && !ctx->bdat) {
        ctx->bdat = 1;
        (void) sg_spool_begin(ctx);      /* failure: answered at the end */
    }
    return SG_OK;
}

static int
sg_spool_chunk_end(sg_spool_ctx_t *ctx)
{
    ctx->phase = SG_SPOOL_CMD;
    if (ctx->chunk_refusal) {
        return sg_smtp_error(ctx->s, "%s", ctx->chunk_refusal);
    }
    if (ctx->chunk_last || ctx->too_big || ctx->file == NULL) {
        return sg_spool_end(ctx);
    }
    return sg_smtp_reply(ctx->s, "250 2.0.0 Ok: %llu octets",
                         (unsigned long long) ctx->chunk_size);
}

static int
sg_spool_rset(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    sg_spool_reset(ctx);
    return sg_smtp_reply(ctx->s, "250 2.0.0 OK");
}

static int
sg_spool_noop(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_reply(ctx->s, "250 2.0.0 OK");
}

static int
sg_spool_quit(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    ctx->s->quit = 1;
    sg_smtp_set_end(ctx->s, SG_SMTP_END_QUIT);
    sg_connection_last_words(ctx->s->connection);
    return sg_smtp_reply(ctx->s, "221 2.0.0 Bye");
}

static int
sg_spool_help(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_reply(ctx->s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT "
                         "DATA BDAT RSET NOOP QUIT HELP VRFY");
}

static int
sg_spool_vrfy(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    if (cmd->args.len == 0) {
        return sg_smtp_error(ctx->s, "501 5.5.4 Syntax: VRFY address");
    }
    return sg_smtp_reply(ctx->s, "252 2.5.0 Cannot VRFY user, but will "
                         "accept message");
}

static int
sg_spool_auth(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    if (ctx->s->auth_mech == SG_SMTP_AUTH_NONE) {
        return sg_smtp_error(ctx->s, "503 5.5.1 AUTH not allowed now");
    }
    return sg_smtp_error(ctx->s, "503 5.5.1 Already authenticated");
}

static int
sg_spool_starttls(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    if (ctx->s->tls) {
        return sg_smtp_error(ctx->s, "503 5.5.1 TLS already active");
    }
    return sg_smtp_error(ctx->s, "503 5.5.1 STARTTLS not allowed now");
}

static int
sg_spool_not_implemented(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_error(ctx->s, "502 5.5.2 Command not implemented");
}

static int
sg_spool_unknown(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd)
{
    (void) cmd;
    return sg_smtp_error(ctx->s, "500 5.5.1 Command unrecognized");
}

static const sg_spool_handler_pt  sg_spool_handlers[SG_SMTP_VERB_COUNT] = {
    [SG_SMTP_UNKNOWN]  = sg_spool_unknown,
    [SG_SMTP_HELO]     = sg_spool_helo,
    [SG_SMTP_EHLO]     = sg_spool_helo,
    [SG_SMTP_AUTH]     = sg_spool_auth,
    [SG_SMTP_MAIL]     = sg_spool_mail,
    [SG_SMTP_RCPT]     = sg_spool_rcpt,
    [SG_SMTP_DATA]     = sg_spool_data_cmd,
    [SG_SMTP_BDAT]     = sg_spool_bdat,
    [SG_SMTP_RSET]     = sg_spool_rset,
    [SG_SMTP_NOOP]     = sg_spool_noop,
    [SG_SMTP_QUIT]     = sg_spool_quit,
    [SG_SMTP_HELP]     = sg_spool_help,
    [SG_SMTP_VRFY]     = sg_spool_vrfy,
    [SG_SMTP_EXPN]     = sg_spool_not_implemented,
    [SG_SMTP_STARTTLS] = sg_spool_starttls,
    [SG_SMTP_ETRN]     = sg_spool_not_implemented,
    [SG_SMTP_TURN]     = sg_spool_not_implemented,
    [SG_SMTP_ATRN]     = sg_spool_not_implemented,
    [SG_SMTP_XCLIENT]  = sg_spool_not_implemented,
    [SG_SMTP_XFORWARD] = sg_spool_not_implemented,
};

/* Debug log of a command: never AUTH arguments (a client may send its
 * credentials again after AUTH), and control characters escaped so that
 * a client cannot forge log lines. */
static void
sg_spool_log_command(sg_spool_ctx_t *ctx, const sg_smtp_cmd_t *cmd,
    const sg_str_t *line)
{
    u_char  buf[SG_SMTP_CMD_LINE_MAX * 4], *p = buf;
    size_t  i;

    if (cmd->verb == SG_SMTP_AUTH) {
        sg_log_debug(ctx->s->log, "spool command: AUTH");
        return;
    }
    for (i = 0; i < line->len; i++) {
        if (line->data[i] < 0x20 || line->data[i] >= 0x7f
            || line->data[i] == '\\')
        {
            p = sg_slprintf(p, buf + sizeof(buf), "\\x%02x", line->data[i]);
        } else if (p < buf + sizeof(buf)) {
            *p++ = line->data[i];
        }
    }
    sg_log_debug(ctx->s->log, "spool command: %.*s", (int) (p - buf),
                 (char *) buf);
}

static int
sg_spool_command(sg_spool_ctx_t *ctx, const sg_str_t *line)
{
    sg_smtp_cmd_t  cmd;

    if (sg_smtp_parse_command(line, &cmd) != SG_OK) {
        return sg_smtp_error(ctx->s, "500 5.5.1 Command unrecognized");
    }
    if (ctx->s->log->level >= SG_LOG_DEBUG) {
        sg_spool_log_command(ctx, &cmd, line);
    }
    return sg_spool_handlers[cmd.verb](ctx, &cmd);
}

/* Input. */

/* One command line: SG_OK when one was handled, SG_AGAIN when no whole
 * line is buffered, SG_ERROR when the session must end. */
static int
sg_spool_line(sg_spool_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_smtp_line_t      line;
    sg_smtp_line_e      r;
    size_t              consumed;
    int                 rc;

    if (ctx->skipping) {
        bool found = sg_smtp_skip_line(s->in.pos, s->in.last, &consumed);

        s->in.pos += consumed;
        if (!found) {
            return SG_AGAIN;
        }
        ctx->skipping = 0;
    }
    r = sg_smtp_read_line(s->in.pos, s->in.last, SG_SMTP_CMD_LINE_MAX,
                          &line);
    if (r == SG_SMTP_LINE_AGAIN) {
        return SG_AGAIN;
    }
    s->in.pos += line.consumed;
    switch (r) {
    case SG_SMTP_LINE_OK:
        rc = sg_spool_command(ctx, &line.line);
        break;
    case SG_SMTP_LINE_TOO_LONG:
        ctx->skipping = 1;
        rc = sg_smtp_error(s, "500 5.5.2 Line too long");
        break;
    case SG_SMTP_LINE_NUL:
        rc = sg_smtp_error(s, "500 5.5.2 NUL character not allowed");
        break;
    case SG_SMTP_LINE_BARE_LF:
        rc = sg_smtp_error(s, "500 5.5.2 Bare LF not allowed, use CRLF");
        break;
    default:
        rc = sg_smtp_error(s, "500 5.5.2 Bare CR not allowed");
        break;
    }
    return rc == SG_ERROR ? SG_ERROR : SG_OK;
}

/* DATA octets, dot-stuffed, up to CRLF.CRLF. */
static int
sg_spool_data_in(sg_spool_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    const u_char       *p = s->in.pos;
    u_char              scratch[4096], *start, *o;
    size_t              room;
    int                 rc;

    if (p == s->in.last) {
        return SG_AGAIN;
    }
    start = sg_spool_room(ctx, scratch, sizeof(scratch), &room);
    if (start == NULL) {
        return SG_AGAIN;                  /* ctx->wait is set */
    }
    o = start;
    rc = sg_spool_data_decode(&ctx->dec, &p, s->in.last, &o, start + room);
    s->in.pos = (u_char *) p;
    if (start != scratch) {
        (void) sg_spool_take(ctx, (size_t) (o - start));
    } else {
        ctx->size += o - start;
        ctx->too_big |= ctx->size > ctx->max_size;
    }
    if (rc == SG_DONE) {
        ctx->phase = SG_SPOOL_CMD;
        return sg_spool_end(ctx) == SG_ERROR ? SG_ERROR : SG_OK;
    }
    return SG_OK;
}

/* The octets of a BDAT chunk, taken as they are. */
static int
sg_spool_chunk_in(sg_spool_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    u_char              scratch[4096], *dst;
    size_t              n, room;

    if (ctx->chunk_left == 0) {
        return sg_spool_chunk_end(ctx) == SG_ERROR ? SG_ERROR : SG_OK;
    }
    n = sg_buf_size(&s->in);
    if (n == 0) {
        return SG_AGAIN;
    }
    n = (size_t) sg_min((uint64_t) n, ctx->chunk_left);
    if (ctx->chunk_refusal == NULL) {
        dst = sg_spool_room(ctx, scratch, sizeof(scratch), &room);
        if (dst == NULL) {
            return SG_AGAIN;              /* ctx->wait is set */
        }
        n = sg_min(n, room);
        memcpy(dst, s->in.pos, n);
        if (dst != scratch) {
            (void) sg_spool_take(ctx, n);
        } else {
            ctx->size += (int64_t) n;
            ctx->too_big |= ctx->size > ctx->max_size;
        }
    }
    s->in.pos += n;
    ctx->chunk_left -= n;
    if (ctx->chunk_left == 0) {
        return sg_spool_chunk_end(ctx) == SG_ERROR ? SG_ERROR : SG_OK;
    }
    return SG_OK;
}

static int
sg_spool_step(sg_spool_ctx_t *ctx)
{
    switch (ctx->phase) {
    case SG_SPOOL_DATA:
        return sg_spool_data_in(ctx);
    case SG_SPOOL_BDAT:
        return sg_spool_chunk_in(ctx);
    default:
        return sg_spool_line(ctx);
    }
}

static int
sg_spool_read(sg_spool_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    int                 rc;

    rc = sg_smtp_read(s);
    if (rc == SG_DONE) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client closed the connection%s",
                     ctx->phase == SG_SPOOL_CMD ? ""
                     : " in the middle of a message");
        sg_smtp_set_end(s, SG_SMTP_END_CLOSED);
    }
    return rc;
}

/*
 * smtp_auth none: the front end answered the client's MAIL with 250 and
 * kept it; the client now waits for the answer to its first RCPT.  The
 * MAIL is taken here silently; if the spool refuses it, that refusal is
 * the answer the client gets for its RCPT.
 */
static int
sg_spool_replay(sg_spool_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_smtp_cmd_t       cmd;
    size_t              mark;
    int                 rc;

    if (!sg_smtp_has_mail(s)) {
        return SG_OK;
    }
    mark = (size_t) (s->out.last - s->out.start);
    if (sg_smtp_parse_command(&s->sasl->mail_line, &cmd) != SG_OK
        || cmd.verb != SG_SMTP_MAIL)
    {
        return sg_smtp_reply(s, "451 4.3.0 Local error in processing");
    }
    ctx->replaying = 1;
    rc = sg_spool_mail(ctx, &cmd);
    ctx->replaying = 0;
    if (rc == SG_ERROR || !ctx->has_mail) {
        return rc;
    }
    s->out.last = s->out.start + mark;        /* its 250 was sent */
    if (sg_smtp_parse_command(&s->sasl->rcpt_line, &cmd) != SG_OK
        || cmd.verb != SG_SMTP_RCPT)
    {
        return sg_smtp_reply(s, "451 4.3.0 Local error in processing");
    }
    return sg_spool_rcpt(ctx, &cmd);
}

static void
sg_spool_run(sg_spool_ctx_t *ctx)
{
    sg_smtp_session_t  *s = ctx->s;
    sg_connection_t    *c = s->connection;
    bool                more;
    int                 rc;

    if (!ctx->started) {
        ctx->started = 1;
        if (sg_spool_replay(ctx) == SG_ERROR) {
            goto close;
        }
    }
    for ( ;; ) {
        /* Handle what is buffered while the replies fit; flush when the
         * output runs short of room. */
        more = false;
        if (!s->quit && ctx->wait == SG_SPOOL_WAIT_NONE) {
            rc = sg_spool_step(ctx);
            if (rc == SG_ERROR) {
                goto close;
            }
            if (rc == SG_OK) {
                /* Progress: the next wait for the client starts a new
                 * deadline; a trickled partial line does not. */
                sg_event_del_timer(c->read);
                more = true;
                if (sg_buf_free(&s->out) < SG_SPOOL_OUT_SLACK) {
                    sg_buf_compact(&s->out);
                }
                if (sg_buf_free(&s->out) >= SG_SPOOL_OUT_SLACK) {
                    continue;
                }
            }
        }
        rc = sg_smtp_flush(ctx->s);
        if (rc == SG_ERROR) {
            goto close;
        }
        if (rc == SG_AGAIN) {
            return;                     /* the write handler resumes */
        }
        if (s->quit) {
            goto close;
        }
        if (ctx->wait != SG_SPOOL_WAIT_NONE) {
            sg_event_del_timer(c->read);
            return;                     /* sg_spool_on_file() resumes */
        }
        if (more) {
            continue;
        }
        rc = sg_spool_read(ctx);
        if (rc == SG_AGAIN) {
            if (!sg_event_timer_set(c->read)) {
                sg_event_add_timer(c->read, s->conf->timeout);
            }
            return;
        }
        if (rc != SG_OK) {
            goto close;
        }
    }

close:
    sg_smtp_close_session(s);
}

static void
sg_spool_read_handler(sg_event_t *ev)
{
    sg_connection_t    *c = ev->data;
    sg_spool_ctx_t     *ctx = c->data;
    sg_smtp_session_t  *s = ctx->s;

    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "client timed out%s",
                     ctx->phase == SG_SPOOL_CMD ? ""
                     : " in the middle of a message");
        s->quit = 1;
        sg_smtp_set_end(s, SG_SMTP_END_TIMEOUT);
        sg_buf_compact(&s->out);
        (void) sg_smtp_reply(s, "421 4.4.2 %.*s Error: timeout exceeded",
                             SG_STR_ARG(&s->conf->server_name));
    }
    sg_spool_run(ctx);
}

static void
sg_spool_write_handler(sg_event_t *ev)
{
    sg_connection_t    *c = ev->data;
    sg_spool_ctx_t     *ctx = c->data;

    if (ev->timedout) {
        sg_log_error(SG_LOG_INFO, ctx->s->log, 0, "client timed out while "
                     "we were sending replies");
        sg_smtp_set_end(ctx->s, SG_SMTP_END_TIMEOUT);
        sg_smtp_close_session(ctx->s);
        return;
    }
    sg_spool_run(ctx);
}

void
sg_spool_start(sg_smtp_session_t *s, sg_spool_t *sp)
{
    sg_connection_t  *c = s->connection;
    sg_spool_ctx_t   *ctx;

    ctx = sg_pcalloc(s->pool, sizeof(sg_spool_ctx_t));
    if (ctx == NULL
        || (ctx->from.data = sg_pnalloc(s->pool, SG_SMTP_PATH_MAX)) == NULL
        || sg_pool_cleanup_add(s->pool, sg_spool_cleanup, ctx) != SG_OK)
    {
        sg_smtp_relay_failed(s);
        return;
    }
    ctx->s = s;
    ctx->sp = sp;
    ctx->conf = sg_mail_conf_srv(s->conf->ctx, sg_spool_module);
    ctx->max_size = s->conf->size_limit ? s->conf->size_limit
                                        : (int64_t) ctx->conf->max_message_size;
    ctx->skipping = s->skipping;
    s->relay_ctx = ctx;
    if (sg_smtp_relay_ready(s) != SG_OK) {
        sg_smtp_close_session(s);
        return;
    }
    sg_log_debug(s->log, "messages go to the spool \"%.*s\"",
                 SG_STR_ARG(&sp->dir));
    c->data = ctx;
    c->read->handler = sg_spool_read_handler;
    c->write->handler = sg_spool_write_handler;
    /* The caller may still be using the session when start() returns:
     * go on from the event loop. */
    sg_event_post(c->write);
}
