/*
 * sg_smtp_sasl.c: the AUTH command (RFC 4954) with the PLAIN, LOGIN,
 * CRAM-MD5, XOAUTH2, OAUTHBEARER and EXTERNAL mechanisms, and the
 * hand-off to the authentication backend.
 *
 * Owns the decoded credentials: they live in one per-session buffer that
 * is wiped as soon as the backend has answered, and they never reach a
 * log line.  Refuses AUTH before HELO/EHLO, over plaintext unless the
 * configuration allows it, and for mechanisms not configured.
 */
#include "sg_smtp.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif
#include <openssl/rand.h>

static const char  sg_smtp_username_challenge[] = "334 VXNlcm5hbWU6";
static const char  sg_smtp_password_challenge[] = "334 UGFzc3dvcmQ6";

bool
sg_smtp_auth_allowed(sg_smtp_session_t *s)
{
    return s->tls || !s->conf->auth_require_tls;
}

const char *
sg_smtp_mech_name(unsigned mech)
{
    switch (mech) {
    case SG_SMTP_AUTH_PLAIN:       return "PLAIN";
    case SG_SMTP_AUTH_LOGIN:       return "LOGIN";
    case SG_SMTP_AUTH_CRAM_MD5:    return "CRAM-MD5";
    case SG_SMTP_AUTH_XOAUTH2:     return "XOAUTH2";
    case SG_SMTP_AUTH_OAUTHBEARER: return "OAUTHBEARER";
    case SG_SMTP_AUTH_EXTERNAL:    return "EXTERNAL";
    }
    return "NONE";
}

/* Wipe what the client sent; keep the buffers for the next attempt. */
void
sg_smtp_auth_cleanup(sg_smtp_session_t *s)
{
    if (s->state == SG_SMTP_ST_AUTH_WAIT && s->auth
        && s->conf->auth->cancel)
    {
        s->conf->auth->cancel(s->auth, s->conf->auth_conf);
    }
    if (s->sasl && s->sasl->secret) {
        sg_wipe(s->sasl->secret, s->sasl->secret_size);
    }
    if (s->auth) {
        s->auth->pass.len = 0;
        s->auth->pass.data = NULL;
    }
    if (s->state < SG_SMTP_ST_RELAY_START) {
        /* The exchange ended without a login (cancelled, refused, bad
         * input): log lines stop naming the user it was for. */
        s->login.len = 0;
    }
}

sg_smtp_sasl_t *
sg_smtp_sasl(sg_smtp_session_t *s)
{
    if (s->sasl == NULL) {
        /* Only a session that logs in (or keeps an anonymous envelope)
         * pays for this. */
        s->sasl = sg_pcalloc(s->pool, sizeof(sg_smtp_sasl_t));
    }
    return s->sasl;
}

static int
sg_smtp_auth_buffers(sg_smtp_session_t *s)
{
    if (sg_smtp_sasl(s) == NULL) {
        return SG_ERROR;
    }
    if (s->sasl->secret == NULL) {
        s->sasl->secret_size = sg_base64_decoded_len(s->conf->client_buffer);
        s->sasl->secret = sg_pnalloc(s->pool, s->sasl->secret_size);
        s->login.data = sg_pnalloc(s->pool, SG_SMTP_LOGIN_MAX);
        s->auth = sg_pcalloc(s->pool, sizeof(sg_auth_request_t));
        if (s->sasl->secret == NULL || s->login.data == NULL
            || s->auth == NULL)
        {
            return SG_ERROR;
        }
    }
    s->login.len = 0;
    return SG_OK;
}

/* Decode one base64 SASL message into the secret buffer. */
static int
sg_smtp_decode(sg_smtp_session_t *s, const sg_str_t *in, sg_str_t *out)
{
    if (sg_base64_decoded_len(in->len) > s->sasl->secret_size) {
        return SG_ERROR;
    }
    out->data = s->sasl->secret;
    return sg_base64_decode(out, in);
}

static void sg_smtp_auth_done(sg_auth_request_t *r);
static int sg_smtp_auth_failed(sg_smtp_session_t *s);

/* smtp_auth_timeout: the backend is too slow; the client hears 454. */
static void
sg_smtp_auth_timeout(sg_event_t *ev)
{
    sg_smtp_session_t  *s = ev->data;

    sg_log_error(SG_LOG_ERR, s->log, 0, "authentication backend \"%s\" "
                 "gave no answer for \"%s\" within smtp_auth_timeout",
                 s->conf->auth->name, sg_smtp_log_login(&s->login));
    s->auth_time = (int64_t) (sg_current_msec - s->auth_began);
    s->sasl->tempfails++;
    sg_smtp_auth_cleanup(s);            /* cancels the request */
    s->state = SG_SMTP_ST_COMMAND;
    s->login.len = 0;
    (void) sg_smtp_error(s, "454 4.7.0 Temporary authentication failure");
    sg_smtp_run(s);
}

/* The 535 for a failed attempt goes out after smtp_auth_fail_delay
 * times the number of failures so far; after smtp_auth_attempts
 * failures the session ends. */
static void
sg_smtp_auth_fail_reply_now(sg_smtp_session_t *s)
{
    s->state = SG_SMTP_ST_COMMAND;
    if (s->auth && s->auth->reply.len) {
        (void) sg_smtp_error(s, "%.*s", SG_STR_ARG(&s->auth->reply));
    } else {
        (void) sg_smtp_error(s, "535 5.7.8 Authentication credentials "
                             "invalid");
    }
    if (s->sasl->failures >= (unsigned) s->conf->auth_attempts && !s->quit) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "%u failed AUTH attempts, "
                     "closing (smtp_auth_attempts)", s->sasl->failures);
        (void) sg_smtp_reply(s, "421 4.7.0 Too many failed authentication "
                             "attempts, closing connection");
        s->quit = 1;
    }
}

static void
sg_smtp_auth_fail_reply(sg_event_t *ev)
{
    sg_smtp_session_t  *s = ev->data;

    sg_smtp_auth_fail_reply_now(s);
    sg_smtp_run(s);
}

static void
sg_smtp_auth_cached(sg_event_t *ev)
{
    sg_smtp_session_t  *s = ev->data;

    s->auth->done(s->auth);
}

static void
sg_smtp_limit_reply(sg_event_t *ev)
{
    sg_smtp_session_t  *s = ev->data;

    s->state = SG_SMTP_ST_COMMAND;
    s->login.len = 0;
    sg_smtp_auth_cleanup(s);
    (void) sg_smtp_error(s, "454 4.7.0 Too many failed authentication "
                         "attempts, try again later");
    sg_smtp_run(s);
}

/* User names go into log lines and backend commands: no control
 * characters, whatever SASL itself would allow. */
static bool
sg_smtp_login_ok(const sg_str_t *user)
{
    size_t  i;

    if (user->len == 0 || user->len > SG_SMTP_LOGIN_MAX) {
        return false;
    }
    for (i = 0; i < user->len; i++) {
        if (user->data[i] < 0x20 || user->data[i] == 0x7f) {
            return false;
        }
    }
    return true;
}

static int
sg_smtp_auth_refuse(sg_smtp_session_t *s, const char *why)
{
    sg_log_error(SG_LOG_INFO, s->log, 0, "AUTH %s refused: %s",
                 sg_smtp_mech_name(s->auth_mech), why);
    s->state = SG_SMTP_ST_COMMAND;
    sg_smtp_auth_cleanup(s);
    return sg_smtp_error(s, "535 5.7.8 Authentication credentials invalid");
}

/* The login goes to auth_cache, then to the backend; the client's host
 * name is known by now (sg_smtp_host_wait). */
static int
sg_smtp_auth_ask(sg_smtp_session_t *s)
{
    sg_auth_request_t  *r = s->auth;

    sg_smtp_client_host(s, &r->host);
    s->state = SG_SMTP_ST_AUTH_WAIT;
    s->auth_began = sg_current_msec;
    if (sg_smtp_cache_lookup(s->conf, r) == SG_OK) {
        /* answered from auth_cache; done() runs from the loop */
        sg_log_debug(s->log, "AUTH %s for \"%s\" answered from "
                     "auth_cache", sg_smtp_mech_name(s->auth_mech),
                     sg_smtp_log_login(&s->login));
        r->from_cache = 1;
        sg_smtp_set_timer(s, sg_smtp_auth_cached, 0);
        return SG_OK;
    }
    sg_smtp_set_timer(s, sg_smtp_auth_timeout, s->conf->auth_timeout);
    sg_log_debug(s->log, "AUTH %s for \"%s\" sent to the %s backend",
                 sg_smtp_mech_name(s->auth_mech), sg_smtp_log_login(&s->login),
                 s->conf->auth->name);
    if (s->conf->auth->start(r, s->conf->auth_conf) != SG_OK) {
        sg_smtp_del_timer(s);
        s->state = SG_SMTP_ST_COMMAND;
        s->sasl->tempfails++;
        sg_smtp_auth_cleanup(s);
        sg_log_error(SG_LOG_ERR, s->log, 0, "authentication backend \"%s\" "
                     "could not take the request for \"%s\"",
                     s->conf->auth->name, sg_smtp_log_login(&s->login));
        s->login.len = 0;
        return sg_smtp_error(s, "454 4.7.0 Temporary authentication "
                             "failure");
    }
    return SG_OK;
}

static void
sg_smtp_auth_ask_later(sg_smtp_session_t *s)
{
    (void) sg_smtp_auth_ask(s);
    sg_smtp_run(s);
}

static int
sg_smtp_auth_start(sg_smtp_session_t *s, const sg_str_t *user,
    const sg_str_t *pass, const sg_str_t *authzid)
{
    sg_auth_request_t  *r = s->auth;

    if (!sg_smtp_login_ok(user)) {
        return sg_smtp_auth_refuse(s, "empty, over-long or non-printable "
                                   "user name");
    }
    if (user->data != s->login.data) {
        memcpy(s->login.data, user->data, user->len);
    }
    s->login.len = user->len;

    memset(r, 0, sizeof(*r));
    r->pool = s->pool;
    r->log = s->log;
    r->connection = s->connection;
    r->mech = s->auth_mech;
    r->user = s->login;
    r->pass = *pass;
    if (authzid) {
        r->authzid = *authzid;
    }
    r->salt = s->sasl->salt;
    r->helo = s->helo;
    r->attempt = ++s->sasl->attempts;
    r->done = sg_smtp_auth_done;
    r->data = s;

    if (sg_smtp_limit_refused(s)) {
        /* auth_fail_limit: answered after the usual delay, without
         * asking the backend */
        s->state = SG_SMTP_ST_AUTH_DELAY;
        sg_smtp_set_timer(s, sg_smtp_limit_reply,
                          sg_max(s->conf->auth_fail_delay, 1000));
        return SG_OK;
    }
    if (sg_smtp_host_wait(s, sg_smtp_auth_ask_later)) {
        return SG_OK;
    }
    return sg_smtp_auth_ask(s);
}

/* Mechanisms.  Each sees the decoded client data of one step and
 * either answers with a challenge or starts the backend. */

typedef struct {
    const char  *name;
    unsigned     bit;
    bool         initial_response;   /* may come with AUTH */
    int        (*step)(sg_smtp_session_t *s, sg_str_t *msg);
} sg_smtp_mech_t;

static int
sg_smtp_challenge(sg_smtp_session_t *s, const char *text)
{
    s->state = SG_SMTP_ST_AUTH_STEP;
    s->sasl->step++;
    return sg_smtp_reply(s, "334 %s", text);
}

static int
sg_smtp_plain(sg_smtp_session_t *s, sg_str_t *msg)
{
    sg_str_t  authzid, user, pass;

    if (sg_sasl_plain_split(msg, &authzid, &user, &pass) != SG_OK) {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid PLAIN authentication "
                             "data");
    }
    if (authzid.len && (authzid.len != user.len
                        || memcmp(authzid.data, user.data, user.len) != 0))
    {
        return sg_smtp_auth_refuse(s, "acting for another user (authzid) "
                                   "is not supported");
    }
    return sg_smtp_auth_start(s, &user, &pass, &authzid);
}

static int
sg_smtp_login(sg_smtp_session_t *s, sg_str_t *msg)
{
    if (s->sasl->step == 1) {            /* the user name */
        if (!sg_smtp_login_ok(msg)) {
            s->state = SG_SMTP_ST_COMMAND;
            sg_smtp_auth_cleanup(s);
            return sg_smtp_error(s, "501 5.5.2 Invalid user name");
        }
        memcpy(s->login.data, msg->data, msg->len);
        s->login.len = msg->len;
        sg_wipe(msg->data, msg->len);
        return sg_smtp_challenge(s, sg_smtp_password_challenge + 4);
    }
    return sg_smtp_auth_start(s, &s->login, msg, NULL);
}

/* RFC 2195: "user SP 32 lowercase hex digits" answering our challenge. */
static int
sg_smtp_cram_md5(sg_smtp_session_t *s, sg_str_t *msg)
{
    sg_str_t  user, digest;

    if (sg_sasl_cram_md5_split(msg, &user, &digest) != SG_OK) {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid CRAM-MD5 response");
    }
    return sg_smtp_auth_start(s, &user, &digest, NULL);
}

static int
sg_smtp_oauth(sg_smtp_session_t *s, sg_str_t *msg)
{
    sg_str_t  user, token;
    int       rc;

    rc = s->auth_mech == SG_SMTP_AUTH_XOAUTH2
         ? sg_sasl_xoauth2_split(msg, &user, &token)
         : sg_sasl_oauthbearer_split(msg, &user, &token);
    if (rc != SG_OK) {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid %s authentication data",
                             sg_smtp_mech_name(s->auth_mech));
    }
    return sg_smtp_auth_start(s, &user, &token, NULL);
}

/* EXTERNAL (RFC 4422 appendix A): the verified client certificate is
 * the credential; the message is an optional authorization identity,
 * which must then name the certificate's own identity. */
static int
sg_smtp_external(sg_smtp_session_t *s, sg_str_t *msg)
{
    sg_str_t  id, none = { 0, NULL };

#if (SG_HAVE_SSL_MODULE)
    if (!sg_ssl_client_identity(s->connection, s->pool, &id)) {
        return sg_smtp_auth_refuse(s, "no verified client certificate");
    }
#else
    (void) id;
    return sg_smtp_auth_refuse(s, "no TLS in this build");
#endif
    if (msg->len && (msg->len != id.len
                     || memcmp(msg->data, id.data, id.len) != 0))
    {
        return sg_smtp_auth_refuse(s, "the authorization identity is not "
                                   "the certificate's");
    }
    return sg_smtp_auth_start(s, &id, &none, NULL);
}

static const sg_smtp_mech_t  sg_smtp_mechs[] = {
    { "PLAIN", SG_SMTP_AUTH_PLAIN, true, sg_smtp_plain },
    { "LOGIN", SG_SMTP_AUTH_LOGIN, true, sg_smtp_login },
    { "CRAM-MD5", SG_SMTP_AUTH_CRAM_MD5, false, sg_smtp_cram_md5 },
    { "XOAUTH2", SG_SMTP_AUTH_XOAUTH2, true, sg_smtp_oauth },
    { "OAUTHBEARER", SG_SMTP_AUTH_OAUTHBEARER, true, sg_smtp_oauth },
    { "EXTERNAL", SG_SMTP_AUTH_EXTERNAL, true, sg_smtp_external },
};

static const sg_smtp_mech_t *
sg_smtp_find_mech(unsigned bit)
{
    size_t  i;

    for (i = 0; i < sg_nelems(sg_smtp_mechs); i++) {
        if (sg_smtp_mechs[i].bit == bit) {
            return &sg_smtp_mechs[i];
        }
    }
    return NULL;
}

/* The first challenge, when AUTH came without an initial response. */
static int
sg_smtp_first_challenge(sg_smtp_session_t *s)
{
    u_char    raw[SG_SMTP_CHALLENGE_MAX];
    u_char    b64[sg_base64_encoded_len(SG_SMTP_CHALLENGE_MAX) + 1];
    sg_str_t  src, dst;
    uint64_t  rnd = 0;

    switch (s->auth_mech) {
    case SG_SMTP_AUTH_LOGIN:
        return sg_smtp_challenge(s, sg_smtp_username_challenge + 4);
    case SG_SMTP_AUTH_CRAM_MD5:
        (void) RAND_bytes((u_char *) &rnd, sizeof(rnd));
        src.data = raw;
        src.len = (size_t) (sg_slprintf(raw, raw + sizeof(raw),
                                        "<%llu.%lld@%.*s>",
                                        (unsigned long long) rnd,
                                        (long long) sg_current_time,
                                        SG_STR_ARG(&s->conf->server_name))
                            - raw);
        s->sasl->salt.data = sg_pnalloc(s->pool, src.len);
        if (s->sasl->salt.data == NULL) {
            return SG_ERROR;
        }
        memcpy(s->sasl->salt.data, raw, src.len);
        s->sasl->salt.len = src.len;
        dst.data = b64;
        sg_base64_encode(&dst, &src);
        b64[dst.len] = '\0';
        return sg_smtp_challenge(s, (const char *) b64);
    default:
        return sg_smtp_challenge(s, "");
    }
}

int
sg_smtp_auth(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    const sg_smtp_mech_t  *m = NULL;
    sg_str_t               name, ir, msg;
    u_char                *sp;
    size_t                 i;

    if (s->helo.len == 0) {
        return sg_smtp_error(s, "503 5.5.1 Send HELO/EHLO first");
    }
    if (sg_smtp_has_mail(s)) {
        /* RFC 4954 4; and the relay would replay a MAIL (kept under
         * smtp_auth none) with no RCPT behind it. */
        return sg_smtp_error(s, "503 5.5.1 AUTH not permitted during a "
                             "mail transaction");
    }
    if (!sg_smtp_auth_allowed(s)) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "AUTH refused over plaintext "
                     "(smtp_auth_require_tls)");
        return sg_smtp_error(s, "538 5.7.11 Encryption required for "
                             "requested authentication mechanism");
    }
    name = cmd->args;
    ir.len = 0;
    ir.data = NULL;
    sp = memchr(name.data, ' ', name.len);
    if (sp) {
        ir.data = sp + 1;
        ir.len = (size_t) (name.data + name.len - ir.data);
        name.len = (size_t) (sp - name.data);
        if (ir.len == 0 || memchr(ir.data, ' ', ir.len)) {
            return sg_smtp_error(s, "501 5.5.4 Syntax: AUTH mechanism "
                                 "[initial-response]");
        }
    }
    for (i = 0; i < sg_nelems(sg_smtp_mechs); i++) {
        if ((s->conf->auth_methods & sg_smtp_mechs[i].bit)
            && sg_str_caseeq(&name, sg_smtp_mechs[i].name))
        {
            m = &sg_smtp_mechs[i];
            break;
        }
    }
    if (m == NULL) {
        return sg_smtp_error(s, "504 5.5.4 Unrecognized authentication "
                             "mechanism");
    }
    if (ir.len && !m->initial_response) {
        return sg_smtp_error(s, "501 5.5.4 %s takes no initial response",
                             m->name);
    }
    if (sg_smtp_auth_buffers(s) != SG_OK) {
        return SG_ERROR;
    }
    s->auth_mech = m->bit;
    s->sasl->step = 0;
    s->sasl->salt.len = 0;
    if (ir.len == 0) {
        return sg_smtp_first_challenge(s);
    }
    s->sasl->step = 1;
    if (ir.len == 1 && ir.data[0] == '=') {
        ir.len = 0;                     /* RFC 4954: "=" is empty */
    }
    if (sg_smtp_decode(s, &ir, &msg) != SG_OK) {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid base64 data");
    }
    return m->step(s, &msg);
}

int
sg_smtp_auth_response(sg_smtp_session_t *s, const sg_str_t *line)
{
    const sg_smtp_mech_t  *m = sg_smtp_find_mech(s->auth_mech);
    sg_str_t               msg;

    if (s->state == SG_SMTP_ST_AUTH_OAUTH_ERROR) {
        /* RFC 7628 3.2.3: the client acknowledges the error, then the
         * exchange fails, delayed and counted like any other failure. */
        return sg_smtp_auth_failed(s);
    }
    if (line->len == 1 && line->data[0] == '*') {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_reply(s, "501 5.7.0 Authentication cancelled");
    }
    if (line->len == 1 && line->data[0] == '=') {
        /* RFC 4954 uses "=" for an empty initial response; some clients
         * send it as an empty continuation too. */
        msg.data = s->sasl->secret;
        msg.len = 0;
        return m ? m->step(s, &msg) : SG_ERROR;
    }
    if (m == NULL || sg_smtp_decode(s, line, &msg) != SG_OK) {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid base64 data");
    }
    return m->step(s, &msg);
}

/* A failed attempt: the 535 after smtp_auth_fail_delay times the
 * failures so far (the count was made when the backend answered). */
static int
sg_smtp_auth_failed(sg_smtp_session_t *s)
{
    sg_msec_t  delay = s->conf->auth_fail_delay * s->sasl->failures;

    if (s->auth && s->auth->wait > 0) {
        delay = s->auth->wait;              /* the backend's Auth-Wait */
    }
    if (delay > 0) {
        s->state = SG_SMTP_ST_AUTH_DELAY;
        sg_smtp_set_timer(s, sg_smtp_auth_fail_reply, delay);
        return SG_OK;
    }
    s->state = SG_SMTP_ST_COMMAND;
    sg_smtp_auth_fail_reply_now(s);
    return SG_OK;
}

/* XOAUTH2 and OAUTHBEARER report a failure as a 334 carrying a JSON
 * error, which the client acknowledges before the 535. */
static bool
sg_smtp_oauth_error(sg_smtp_session_t *s)
{
    if (s->auth_mech != SG_SMTP_AUTH_XOAUTH2
        && s->auth_mech != SG_SMTP_AUTH_OAUTHBEARER)
    {
        return false;
    }
    s->state = SG_SMTP_ST_AUTH_OAUTH_ERROR;
    /* {"status":"invalid_token","schemes":"bearer","scope":""} */
    (void) sg_smtp_reply(s, "334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2No"
                         "ZW1lcyI6ImJlYXJlciIsInNjb3BlIjoiIn0=");
    return true;
}

/* proxy_smtp_auth: the relay logs in to the backend with the client's
 * own credentials unless the auth backend named others (Auth-User,
 * Auth-Pass).  The copy lives in the session pool and is wiped with
 * it. */
static void
sg_smtp_wipe_str(void *data)
{
    sg_str_t  *v = data;

    if (v->data) {
        sg_wipe(v->data, v->len);
    }
}

static int
sg_smtp_keep_backend_pass(sg_smtp_session_t *s, sg_auth_request_t *r)
{
    sg_str_t  *copy;

    if (r->backend_pass.len) {
        copy = &r->backend_pass;
    } else if (r->pass.len && (s->auth_mech == SG_SMTP_AUTH_PLAIN
                               || s->auth_mech == SG_SMTP_AUTH_LOGIN))
    {
        copy = sg_palloc(s->pool, sizeof(sg_str_t));
        if (copy == NULL) {
            return SG_ERROR;
        }
        copy->len = r->pass.len;
        copy->data = sg_pnalloc(s->pool, r->pass.len);
        if (copy->data == NULL) {
            return SG_ERROR;
        }
        memcpy(copy->data, r->pass.data, r->pass.len);
        r->backend_pass = *copy;
        if (r->backend_user.len == 0) {
            r->backend_user = s->login;
        }
    } else {
        return SG_OK;
    }
    return sg_pool_cleanup_add(s->pool, sg_smtp_wipe_str, copy);
}

/* The login checks (limit_conn by login): true when one refused the
 * login, which then ends as a temporary failure (logged by the check). */
static bool
sg_smtp_login_refused(sg_smtp_session_t *s)
{
    unsigned  i;

    for (i = 0; i < s->conf->nlogin_checks; i++) {
        if (s->conf->login_checks[i].check(s, s->conf->login_checks[i].conf)
            == SG_OK)
        {
            continue;
        }
        s->auth_result = SG_SMTP_AUTH_RESULT_TEMPFAIL;
        s->sasl->tempfails++;
        s->state = SG_SMTP_ST_COMMAND;
        s->login.len = 0;
        if (s->auth_mech == SG_SMTP_AUTH_NONE) {
            s->sasl->rcpt_line.len = 0;
            (void) sg_smtp_error(s, "451 4.7.0 Too many sessions, try "
                                 "again later");
        } else {
            (void) sg_smtp_error(s, "454 4.7.0 Too many sessions for this "
                                 "login, try again later");
        }
        return true;
    }
    return false;
}

static void
sg_smtp_auth_done(sg_auth_request_t *r)
{
    sg_smtp_session_t  *s = r->data;
    const char         *reason = r->reason ? r->reason : "";

    if (!r->from_cache) {
        sg_smtp_cache_store(s->conf, r);     /* while the pass is here */
    }
    if (r->status == SG_AUTH_OK && s->conf->relay_wants_pass
        && sg_smtp_keep_backend_pass(s, r) != SG_OK)
    {
        r->status = SG_AUTH_TEMPFAIL;
        r->reason = "out of memory";
    }
    if (s->sasl->secret) {
        /* the pass lives in it */
        sg_wipe(s->sasl->secret, s->sasl->secret_size);
        if (r->status == SG_AUTH_OK) {
            /* No further AUTH in this session: give its memory back. */
            (void) sg_pfree(s->pool, s->sasl->secret);
            s->sasl->secret = NULL;
            s->sasl->secret_size = 0;
        }
    }
    r->pass.len = 0;
    r->pass.data = NULL;
    sg_smtp_del_timer(s);
    s->auth_time = (int64_t) (sg_current_msec - s->auth_began);

    s->auth_result = r->status == SG_AUTH_OK ? SG_SMTP_AUTH_RESULT_OK
                     : r->status == SG_AUTH_FAIL ? SG_SMTP_AUTH_RESULT_FAILED
                     : SG_SMTP_AUTH_RESULT_TEMPFAIL;
    switch (r->status) {
    case SG_AUTH_OK:
        sg_smtp_limit_account(s, false);
        if (sg_smtp_login_refused(s)) {
            break;
        }
        if (s->auth_mech == SG_SMTP_AUTH_NONE) {
            sg_log_error(SG_LOG_INFO, s->log, 0, "anonymous session "
                         "accepted (smtp_auth none)");
        } else {
            sg_log_error(SG_LOG_INFO, s->log, 0, "client logged in with %s",
                         sg_smtp_mech_name(s->auth_mech));
        }
        s->state = SG_SMTP_ST_RELAY_START;
        s->conf->relay->start(s, s->conf->relay_conf);
        return;
    case SG_AUTH_FAIL:
        if (s->auth_mech == SG_SMTP_AUTH_NONE) {
            sg_log_error(SG_LOG_INFO, s->log, 0, "anonymous session "
                         "refused by the auth backend: %s", reason);
            s->state = SG_SMTP_ST_COMMAND;
            s->sasl->rcpt_line.len = 0;
            (void) sg_smtp_error(s, "550 5.7.1 Access denied");
            break;
        }
        sg_log_error(SG_LOG_INFO, s->log, 0, "authentication failed for "
                     "\"%s\" with %s: %s", sg_smtp_log_login(&s->login),
                     sg_smtp_mech_name(s->auth_mech), reason);
        sg_smtp_limit_account(s, true);
        s->login.len = 0;
        s->sasl->failures++;
        if (!sg_smtp_oauth_error(s)) {
            (void) sg_smtp_auth_failed(s);
        }
        break;
    default:
        s->sasl->tempfails++;
        sg_log_error(SG_LOG_ERR, s->log, 0, "authentication backend "
                     "unavailable for \"%s\": %s", sg_smtp_log_login(&s->login),
                     reason);
        s->state = SG_SMTP_ST_COMMAND;
        s->login.len = 0;
        s->sasl->rcpt_line.len = 0;
        if (r->reply.len) {
            (void) sg_smtp_error(s, "%.*s", SG_STR_ARG(&r->reply));
            if (r->reply.len >= 3 && memcmp(r->reply.data, "421", 3) == 0) {
                s->quit = 1;         /* 421 says the server closes */
            }
        } else {
            (void) sg_smtp_error(s, "454 4.7.0 Temporary authentication "
                                 "failure");
        }
        break;
    }
    sg_smtp_run(s);
}

static int sg_smtp_auth_none_ask(sg_smtp_session_t *s);

static void
sg_smtp_auth_none_later(sg_smtp_session_t *s)
{
    (void) sg_smtp_auth_none_ask(s);
    sg_smtp_run(s);
}

/* smtp_auth none: the first RCPT asks the backend about an anonymous
 * session, with the envelope so far. */
int
sg_smtp_auth_none(sg_smtp_session_t *s)
{
    sg_auth_request_t  *r;

    if (sg_smtp_auth_buffers(s) != SG_OK) {
        return SG_ERROR;
    }
    r = s->auth;
    memset(r, 0, sizeof(*r));
    r->pool = s->pool;
    r->log = s->log;
    r->connection = s->connection;
    r->mech = SG_SMTP_AUTH_NONE;
    r->helo = s->helo;
    r->mail_from = s->sasl->mail_line;
    r->rcpt_to = s->sasl->rcpt_line;
    r->done = sg_smtp_auth_done;
    r->data = s;
    s->auth_mech = SG_SMTP_AUTH_NONE;
    if (sg_smtp_host_wait(s, sg_smtp_auth_none_later)) {
        return SG_OK;
    }
    return sg_smtp_auth_none_ask(s);
}

static int
sg_smtp_auth_none_ask(sg_smtp_session_t *s)
{
    sg_auth_request_t  *r = s->auth;

    sg_smtp_client_host(s, &r->host);
    s->state = SG_SMTP_ST_AUTH_WAIT;
    s->auth_began = sg_current_msec;
    sg_smtp_set_timer(s, sg_smtp_auth_timeout, s->conf->auth_timeout);
    if (s->conf->auth->start(r, s->conf->auth_conf) != SG_OK) {
        sg_smtp_del_timer(s);
        s->state = SG_SMTP_ST_COMMAND;
        s->sasl->tempfails++;
        sg_log_error(SG_LOG_ERR, s->log, 0, "authentication backend \"%s\" "
                     "could not take an anonymous request",
                     s->conf->auth->name);
        return sg_smtp_error(s, "451 4.7.0 Temporary failure, try again "
                             "later");
    }
    return SG_OK;
}
