/*
 * sg_smtp_sasl.c: the AUTH command (RFC 4954) with the PLAIN and LOGIN
 * mechanisms, and the hand-off to the authentication backend.
 *
 * Owns the decoded credentials: they live in one per-session buffer that
 * is wiped as soon as the backend has answered, and they never reach a
 * log line.  Refuses AUTH before HELO/EHLO, over plaintext unless the
 * configuration allows it, and for mechanisms not configured.
 */
#include "sg_smtp.h"

#define SG_SMTP_LOGIN_MAX  255

static const char  sg_smtp_username_challenge[] = "334 VXNlcm5hbWU6";
static const char  sg_smtp_password_challenge[] = "334 UGFzc3dvcmQ6";

bool
sg_smtp_auth_allowed(sg_smtp_session_t *s)
{
    return s->tls || !s->conf->auth_require_tls;
}

static const char *
sg_smtp_mech_name(unsigned mech)
{
    return mech == SG_SMTP_AUTH_PLAIN ? "PLAIN" : "LOGIN";
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
    if (s->secret) {
        sg_wipe(s->secret, s->secret_size);
    }
    if (s->auth) {
        s->auth->pass.len = 0;
        s->auth->pass.data = NULL;
    }
}

static int
sg_smtp_auth_buffers(sg_smtp_session_t *s)
{
    if (s->secret == NULL) {
        s->secret_size = sg_base64_decoded_len(s->conf->client_buffer);
        s->secret = sg_pnalloc(s->pool, s->secret_size);
        s->login.data = sg_pnalloc(s->pool, SG_SMTP_LOGIN_MAX);
        s->auth = sg_pcalloc(s->pool, sizeof(sg_auth_request_t));
        if (s->secret == NULL || s->login.data == NULL || s->auth == NULL) {
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
    if (sg_base64_decoded_len(in->len) > s->secret_size) {
        return SG_ERROR;
    }
    out->data = s->secret;
    return sg_base64_decode(out, in);
}

static void sg_smtp_auth_done(sg_auth_request_t *r);

/* smtp_auth_timeout: the backend is too slow; the client hears 454. */
static void
sg_smtp_auth_timeout(sg_event_t *ev)
{
    sg_smtp_session_t  *s = ev->data;

    sg_log_error(SG_LOG_ERR, s->log, 0, "authentication backend \"%s\" "
                 "gave no answer for \"%.*s\" within smtp_auth_timeout",
                 s->conf->auth->name, SG_STR_ARG(&s->login));
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
sg_smtp_auth_fail_reply(sg_event_t *ev)
{
    sg_smtp_session_t  *s = ev->data;

    s->state = SG_SMTP_ST_COMMAND;
    (void) sg_smtp_error(s, "535 5.7.8 Authentication credentials invalid");
    if (s->auth_failures >= (unsigned) s->conf->auth_attempts && !s->quit) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "%u failed AUTH attempts, "
                     "closing (smtp_auth_attempts)", s->auth_failures);
        (void) sg_smtp_reply(s, "421 4.7.0 Too many failed authentication "
                             "attempts, closing connection");
        s->quit = 1;
    }
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
sg_smtp_auth_start(sg_smtp_session_t *s, const sg_str_t *user,
    const sg_str_t *pass, const sg_str_t *authzid)
{
    sg_auth_request_t  *r = s->auth;

    if (!sg_smtp_login_ok(user)) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "AUTH with an empty, over-long "
                     "or non-printable user name refused");
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "535 5.7.8 Authentication credentials "
                             "invalid");
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
    r->attempt = ++s->auth_attempts;
    r->done = sg_smtp_auth_done;
    r->data = s;

    s->state = SG_SMTP_ST_AUTH_WAIT;
    sg_smtp_set_timer(s, sg_smtp_auth_timeout, s->conf->auth_timeout);
    sg_log_debug(s->log, "AUTH %s for \"%.*s\" sent to the %s backend",
                 sg_smtp_mech_name(s->auth_mech), SG_STR_ARG(&s->login),
                 s->conf->auth->name);
    if (s->conf->auth->start(r, s->conf->auth_conf) != SG_OK) {
        sg_event_del_timer(&s->timer);
        r->status = SG_AUTH_TEMPFAIL;
        r->reason = "the authentication backend could not start";
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        sg_log_error(SG_LOG_ERR, s->log, 0, "authentication backend "
                     "unavailable: %s", r->reason);
        return sg_smtp_error(s, "454 4.7.0 Temporary authentication "
                             "failure");
    }
    return SG_OK;
}

static int
sg_smtp_auth_plain(sg_smtp_session_t *s, const sg_str_t *b64)
{
    sg_str_t  msg, authzid, user, pass;

    s->state = SG_SMTP_ST_COMMAND;
    if (sg_smtp_decode(s, b64, &msg) != SG_OK) {
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid base64 data");
    }
    if (sg_sasl_plain_split(&msg, &authzid, &user, &pass) != SG_OK) {
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid PLAIN authentication "
                             "data");
    }
    return sg_smtp_auth_start(s, &user, &pass, &authzid);
}

int
sg_smtp_auth(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd)
{
    sg_str_t   mech, ir;
    u_char    *sp;

    if (s->helo.len == 0) {
        return sg_smtp_error(s, "503 5.5.1 Send HELO/EHLO first");
    }
    if (!sg_smtp_auth_allowed(s)) {
        sg_log_error(SG_LOG_INFO, s->log, 0, "AUTH refused over plaintext "
                     "(smtp_auth_require_tls)");
        return sg_smtp_error(s, "538 5.7.11 Encryption required for "
                             "requested authentication mechanism");
    }
    mech = cmd->args;
    ir.len = 0;
    ir.data = NULL;
    sp = memchr(mech.data, ' ', mech.len);
    if (sp) {
        ir.data = sp + 1;
        ir.len = (size_t) (mech.data + mech.len - ir.data);
        mech.len = (size_t) (sp - mech.data);
        if (ir.len == 0 || memchr(ir.data, ' ', ir.len)) {
            return sg_smtp_error(s, "501 5.5.4 Syntax: AUTH mechanism "
                                 "[initial-response]");
        }
    }
    if (sg_str_caseeq(&mech, "PLAIN")
        && (s->conf->auth_methods & SG_SMTP_AUTH_PLAIN))
    {
        s->auth_mech = SG_SMTP_AUTH_PLAIN;
    } else if (sg_str_caseeq(&mech, "LOGIN")
               && (s->conf->auth_methods & SG_SMTP_AUTH_LOGIN))
    {
        s->auth_mech = SG_SMTP_AUTH_LOGIN;
    } else {
        return sg_smtp_error(s, "504 5.5.4 Unrecognized authentication "
                             "mechanism");
    }
    if (sg_smtp_auth_buffers(s) != SG_OK) {
        return SG_ERROR;
    }
    if (s->auth_mech == SG_SMTP_AUTH_PLAIN) {
        if (ir.len == 0) {
            s->state = SG_SMTP_ST_AUTH_PLAIN;
            return sg_smtp_reply(s, "334 ");
        }
        if (ir.len == 1 && ir.data[0] == '=') {
            ir.len = 0;                 /* RFC 4954: "=" is empty */
        }
        return sg_smtp_auth_plain(s, &ir);
    }
    if (ir.len == 0) {
        s->state = SG_SMTP_ST_AUTH_LOGIN_USER;
        return sg_smtp_reply(s, "%s", sg_smtp_username_challenge);
    }
    s->state = SG_SMTP_ST_AUTH_LOGIN_USER;
    return sg_smtp_auth_response(s, &ir);
}

int
sg_smtp_auth_response(sg_smtp_session_t *s, const sg_str_t *line)
{
    sg_str_t  msg;

    if (line->len == 1 && line->data[0] == '*') {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_reply(s, "501 5.7.0 Authentication cancelled");
    }
    if (s->state == SG_SMTP_ST_AUTH_PLAIN) {
        return sg_smtp_auth_plain(s, line);
    }
    if (sg_smtp_decode(s, line, &msg) != SG_OK) {
        s->state = SG_SMTP_ST_COMMAND;
        sg_smtp_auth_cleanup(s);
        return sg_smtp_error(s, "501 5.5.2 Invalid base64 data");
    }
    if (s->state == SG_SMTP_ST_AUTH_LOGIN_USER) {
        if (!sg_smtp_login_ok(&msg)) {
            s->state = SG_SMTP_ST_COMMAND;
            sg_smtp_auth_cleanup(s);
            return sg_smtp_error(s, "501 5.5.2 Invalid user name");
        }
        memcpy(s->login.data, msg.data, msg.len);
        s->login.len = msg.len;
        sg_wipe(msg.data, msg.len);
        s->state = SG_SMTP_ST_AUTH_LOGIN_PASS;
        return sg_smtp_reply(s, "%s", sg_smtp_password_challenge);
    }
    /* LOGIN password */
    return sg_smtp_auth_start(s, &s->login, &msg, NULL);
}

static void
sg_smtp_auth_done(sg_auth_request_t *r)
{
    sg_smtp_session_t  *s = r->data;
    const char         *reason = r->reason ? r->reason : "";

    if (s->secret) {
        sg_wipe(s->secret, s->secret_size);
    }
    r->pass.len = 0;
    r->pass.data = NULL;
    sg_event_del_timer(&s->timer);

    switch (r->status) {
    case SG_AUTH_OK:
        sg_log_error(SG_LOG_INFO, s->log, 0, "client logged in with %s",
                     sg_smtp_mech_name(s->auth_mech));
        s->state = SG_SMTP_ST_RELAY_START;
        s->conf->relay->start(s, s->conf->relay_conf);
        return;
    case SG_AUTH_FAIL:
        sg_log_error(SG_LOG_INFO, s->log, 0, "authentication failed for "
                     "\"%.*s\": %s", SG_STR_ARG(&s->login), reason);
        s->login.len = 0;
        s->auth_failures++;
        if (s->conf->auth_fail_delay > 0) {
            s->state = SG_SMTP_ST_AUTH_DELAY;
            sg_smtp_set_timer(s, sg_smtp_auth_fail_reply,
                              s->conf->auth_fail_delay * s->auth_failures);
            sg_smtp_run(s);
            return;
        }
        sg_smtp_auth_fail_reply(&s->timer);
        return;
    default:
        sg_log_error(SG_LOG_ERR, s->log, 0, "authentication backend "
                     "unavailable for \"%.*s\": %s", SG_STR_ARG(&s->login),
                     reason);
        s->state = SG_SMTP_ST_COMMAND;
        s->login.len = 0;
        (void) sg_smtp_error(s, "454 4.7.0 Temporary authentication "
                             "failure");
        break;
    }
    sg_smtp_run(s);
}
