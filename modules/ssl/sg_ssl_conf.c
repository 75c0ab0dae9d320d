/*
 * sg_ssl_conf.c: the ssl_* directives and starttls, and the per-server
 * TLS contexts built from them.
 *
 * Every context is built when the configuration loads, in the master, so
 * an unreadable certificate, a key that does not match it, a wrong
 * passphrase or a bad cipher string is a configuration error that -t
 * reports and a reload refuses, and workers inherit ready contexts.
 * Session tickets are encrypted with keys derived from a secret the
 * master draws once: every worker derives the same keys, they survive a
 * reload, and they rotate every ssl_session_timeout without any state
 * shared at run time.  Or, with ssl_session_ticket_key, with keys read
 * from files that several hosts share (nginx's format); those are wiped
 * when the configuration is freed and never logged.
 */
#include "sg_ssl.h"
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <openssl/core_names.h>
#include <openssl/decoder.h>

#define SG_SSL_PROTO_TLSv1    0x01
#define SG_SSL_PROTO_TLSv1_1  0x02
#define SG_SSL_PROTO_TLSv1_2  0x04
#define SG_SSL_PROTO_TLSv1_3  0x08

#define SG_SSL_CACHE_UNSET    -1
#define SG_SSL_CACHE_OFF      0
#define SG_SSL_CACHE_NONE     1
#define SG_SSL_CACHE_BUILTIN  2

typedef struct {
    sg_ssl_srv_t   srv;                /* what the session reads */

    sg_array_t    *certificates;       /* sg_str_t, paths */
    sg_array_t    *certificate_keys;   /* sg_str_t, paths */
    sg_str_t       password_file;
    unsigned       protocols;
    sg_str_t       ciphers;
    int            prefer_server_ciphers;
    sg_str_t       ecdh_curve;
    sg_str_t       dhparam;
    sg_array_t    *conf_commands;      /* sg_str_t pairs */
    int            session_cache;
    int64_t        session_cache_size;
    sg_shm_zone_t *session_zone;       /* shared:NAME:SIZE */
    sg_msec_t      session_timeout;
    int            session_tickets;
    int            compact;
    int            greeting_in_handshake;
    sg_array_t    *ticket_keys;        /* sg_ssl_ticket_key_t *, files */
    sg_str_t       client_certificate;
    sg_str_t       trusted_certificate;
    int64_t        verify_depth;
    sg_str_t       crl;
    int            enable;             /* "ssl on", nginx's old syntax */

    sg_str_t       file;               /* where the settings come from */
    size_t         line;
    sg_str_t       enable_file;        /* where "ssl on" is */
    size_t         enable_line;
    sg_str_t       trusted_file;       /* where ssl_trusted_certificate is */
    size_t         trusted_line;

    /* Sessions (cached or in tickets) resume only on the server, and
     * under the certificate policy, that made them. */
    u_char         sid_ctx[SSL_MAX_SID_CTX_LENGTH];
    unsigned       sid_ctx_len;
} sg_ssl_conf_t;

static char *sg_ssl_append(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_ssl_session_cache(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_ssl_conf_command(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_ssl_ticket_key(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_ssl_trusted(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_ssl_enable(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static char *sg_ssl_starttls(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_ssl_create_conf(sg_conf_t *cf);
static char *sg_ssl_merge_conf(sg_conf_t *cf, void *prev, void *conf);

static const sg_conf_enum_t  sg_ssl_starttls_values[] = {
    { "off", SG_SSL_STARTTLS_OFF },
    { "on", SG_SSL_STARTTLS_ON },
    { "only", SG_SSL_STARTTLS_ONLY },
    { NULL, 0 }
};

static const sg_conf_enum_t  sg_ssl_verify_values[] = {
    { "off", SG_SSL_VERIFY_OFF },
    { "on", SG_SSL_VERIFY_ON },
    { "optional", SG_SSL_VERIFY_OPTIONAL },
    { NULL, 0 }
};

static const sg_conf_enum_t  sg_ssl_protocol_values[] = {
    { "TLSv1", SG_SSL_PROTO_TLSv1 },
    { "TLSv1.1", SG_SSL_PROTO_TLSv1_1 },
    { "TLSv1.2", SG_SSL_PROTO_TLSv1_2 },
    { "TLSv1.3", SG_SSL_PROTO_TLSv1_3 },
    { NULL, 0 }
};

static const sg_conf_bounds_t  sg_ssl_timeout_bounds = { 1, 86400000LL * 7 };
static const sg_conf_bounds_t  sg_ssl_depth_bounds = { 0, 100 };

#define SG_SRV     (SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF)
#define SG_OFF(f)  offsetof(sg_ssl_conf_t, f)

static const sg_command_t  sg_ssl_commands[] = {
    { "ssl", SG_SRV | SG_CONF_FLAG, sg_ssl_enable,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(enable), NULL },
    { "starttls", SG_SRV | SG_CONF_TAKE1, sg_ssl_starttls,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(srv.starttls), sg_ssl_starttls_values },
    { "ssl_certificate", SG_SRV | SG_CONF_TAKE1, sg_ssl_append,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(certificates), NULL },
    { "ssl_certificate_key", SG_SRV | SG_CONF_TAKE1, sg_ssl_append,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(certificate_keys), NULL },
    { "ssl_password_file", SG_SRV | SG_CONF_TAKE1, sg_conf_set_path_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(password_file), NULL },
    { "ssl_protocols", SG_SRV | SG_CONF_1MORE, sg_conf_set_bitmask_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(protocols), sg_ssl_protocol_values },
    { "ssl_ciphers", SG_SRV | SG_CONF_TAKE1, sg_conf_set_str_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(ciphers), NULL },
    { "ssl_prefer_server_ciphers", SG_SRV | SG_CONF_FLAG,
      sg_conf_set_flag_slot, SG_MAIL_SRV_CONF_OFFSET,
      SG_OFF(prefer_server_ciphers), NULL },
    { "ssl_ecdh_curve", SG_SRV | SG_CONF_TAKE1, sg_conf_set_str_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(ecdh_curve), NULL },
    { "ssl_dhparam", SG_SRV | SG_CONF_TAKE1, sg_conf_set_path_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(dhparam), NULL },
    { "ssl_conf_command", SG_SRV | SG_CONF_TAKE2, sg_ssl_conf_command,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "ssl_session_cache", SG_SRV | SG_CONF_TAKE12, sg_ssl_session_cache,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "ssl_session_timeout", SG_SRV | SG_CONF_TAKE1, sg_conf_set_msec_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(session_timeout),
      &sg_ssl_timeout_bounds },
    { "ssl_session_tickets", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(session_tickets), NULL },
    { "ssl_session_ticket_key", SG_SRV | SG_CONF_TAKE1, sg_ssl_ticket_key,
      SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    { "ssl_verify_client", SG_SRV | SG_CONF_TAKE1, sg_conf_set_enum_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(srv.verify), sg_ssl_verify_values },
    { "ssl_client_certificate", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_path_slot, SG_MAIL_SRV_CONF_OFFSET,
      SG_OFF(client_certificate), NULL },
    { "ssl_trusted_certificate", SG_SRV | SG_CONF_TAKE1, sg_ssl_trusted,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(trusted_certificate), NULL },
    { "ssl_verify_depth", SG_SRV | SG_CONF_TAKE1, sg_conf_set_num_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(verify_depth), &sg_ssl_depth_bounds },
    { "ssl_crl", SG_SRV | SG_CONF_TAKE1, sg_conf_set_path_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(crl), NULL },
    { "ssl_compact_state", SG_SRV | SG_CONF_FLAG, sg_conf_set_flag_slot,
      SG_MAIL_SRV_CONF_OFFSET, SG_OFF(compact), NULL },
    { "ssl_greeting_in_handshake", SG_SRV | SG_CONF_FLAG,
      sg_conf_set_flag_slot, SG_MAIL_SRV_CONF_OFFSET,
      SG_OFF(greeting_in_handshake), NULL },
    { "ssl_handshake_timeout", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_msec_slot, SG_MAIL_SRV_CONF_OFFSET,
      SG_OFF(srv.handshake_timeout), &sg_ssl_timeout_bounds },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_ssl_module_ctx = {
    sg_ssl_create_main_conf, NULL, sg_ssl_create_conf, sg_ssl_merge_conf,
    NULL
};

sg_module_t  sg_ssl_module = {
    .name = "ssl",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_ssl_module_ctx,
    .commands = sg_ssl_commands,
};

sg_ssl_srv_t *
sg_ssl_srv(sg_smtp_srv_conf_t *sscf)
{
    return &((sg_ssl_conf_t *)
             sscf->ctx->srv_conf[sg_ssl_module.ctx_index])->srv;
}

/* Directives. */

static char *
sg_ssl_append(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_array_t  **ap = (sg_array_t **) ((char *) conf + cmd->offset);
    sg_str_t     *value = cf->args->elts, *p;
    sg_ssl_conf_t *scf = conf;

    if (*ap == SG_CONF_UNSET_PTR) {
        *ap = sg_array_create(cf->pool, 2, sizeof(sg_str_t));
        if (*ap == NULL) {
            return SG_CONF_ERROR;
        }
    }
    p = sg_array_push(*ap);
    if (p == NULL) {
        return SG_CONF_ERROR;
    }
    *p = value[1];
    if (scf->file.data == NULL) {
        scf->file = cf->file->name;
        scf->line = sg_conf_line(cf);
    }
    return sg_conf_full_name(cf, p, true) == SG_OK ? SG_CONF_OK
                                                   : SG_CONF_ERROR;
}

/* shared:NAME:SIZE */
static char *
sg_ssl_shared_cache(sg_conf_t *cf, sg_ssl_conf_t *scf, sg_str_t *v)
{
    sg_str_t   name, size;
    u_char    *colon;
    int64_t    n;

    name.data = v->data + 7;
    colon = memchr(name.data, ':', v->len - 7);
    if (colon == NULL || colon == name.data) {
        return sg_conf_invalid_value(cf, v, "it must be shared:NAME:SIZE");
    }
    name.len = (size_t) (colon - name.data);
    size.data = colon + 1;
    size.len = (size_t) (v->data + v->len - size.data);
    if (sg_parse_size(&size, &n) != SG_OK || n > 1024LL * 1024 * 1024) {
        return sg_conf_invalid_value(cf, v, "SIZE is a size such as 10m");
    }
    scf->session_zone = sg_ssl_cache_zone(cf, &name, (size_t) n);
    return scf->session_zone ? SG_CONF_OK : SG_CONF_ERROR;
}

static char *
sg_ssl_session_cache(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_ssl_conf_t  *scf = conf;
    sg_str_t       *value = cf->args->elts, n;
    int64_t         size;
    size_t          i;

    (void) cmd;
    if (scf->session_cache != SG_SSL_CACHE_UNSET) {
        return sg_conf_duplicate(cf);
    }
    for (i = 1; i < cf->args->nelts; i++) {
        if (cf->args->nelts == 2 && sg_str_eq(&value[i], "off")) {
            scf->session_cache = SG_SSL_CACHE_OFF;
        } else if (cf->args->nelts == 2 && sg_str_eq(&value[i], "none")) {
            scf->session_cache = SG_SSL_CACHE_NONE;
        } else if (sg_str_eq(&value[i], "builtin")) {
            scf->session_cache = SG_SSL_CACHE_BUILTIN;
            scf->session_cache_size = 20480;
        } else if (value[i].len > 8
                   && memcmp(value[i].data, "builtin:", 8) == 0)
        {
            n.data = value[i].data + 8;
            n.len = value[i].len - 8;
            if (sg_parse_int(&n, &size) != SG_OK || size < 1
                || size > 10000000)
            {
                return sg_conf_invalid_value(cf, &value[i], "builtin:N "
                                             "takes a number of sessions");
            }
            scf->session_cache = SG_SSL_CACHE_BUILTIN;
            scf->session_cache_size = size;
        } else if (value[i].len > 7
                   && memcmp(value[i].data, "shared:", 7) == 0)
        {
            if (sg_ssl_shared_cache(cf, scf, &value[i]) != SG_CONF_OK) {
                return SG_CONF_ERROR;
            }
            if (scf->session_cache == SG_SSL_CACHE_UNSET) {
                scf->session_cache = SG_SSL_CACHE_NONE;   /* shared only */
            }
        } else {
            return sg_conf_invalid_value(cf, &value[i], "it must be \"off\", "
                                         "\"none\", \"builtin[:N]\" or "
                                         "\"shared:NAME:SIZE\"");
        }
    }
    return SG_CONF_OK;
}

static char *
sg_ssl_conf_command(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_ssl_conf_t  *scf = conf;
    sg_str_t       *value = cf->args->elts, *p;

    (void) cmd;
    if (scf->conf_commands == SG_CONF_UNSET_PTR) {
        scf->conf_commands = sg_array_create(cf->pool, 4, sizeof(sg_str_t));
        if (scf->conf_commands == NULL) {
            return SG_CONF_ERROR;
        }
    }
    p = sg_array_push(scf->conf_commands);
    if (p == NULL) {
        return SG_CONF_ERROR;
    }
    *p = value[1];
    p = sg_array_push(scf->conf_commands);
    if (p == NULL) {
        return SG_CONF_ERROR;
    }
    *p = value[2];
    return SG_CONF_OK;
}

/* ssl_session_ticket_key: nginx's file layout, so that the key files of
 * an nginx setup serve unchanged: 80 bytes are a name, an HMAC-SHA256
 * key and an AES-256 key; 48 bytes a name, an AES-128 key and an
 * HMAC-SHA256 key of 16 bytes. */
typedef struct {
    u_char  name[16];
    u_char  aes[32];
    u_char  hmac[32];
    size_t  size;                   /* 48 or 80 */
} sg_ssl_ticket_key_t;

static void
sg_ssl_ticket_key_wipe(void *data)
{
    sg_wipe(data, sizeof(sg_ssl_ticket_key_t));
}

static char *
sg_ssl_ticket_key_read(sg_conf_t *cf, const sg_str_t *path,
    sg_ssl_ticket_key_t *key)
{
    u_char   buf[81];              /* one more than 80 tells a longer file */
    size_t   got = 0;
    ssize_t  n;
    int      fd, err = 0;

    fd = open((const char *) path->data, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return sg_conf_error(cf, errno, "open() \"%.*s\" failed",
                             SG_STR_ARG(path));
    }
    while (got < sizeof(buf)) {
        n = read(fd, buf + got, sizeof(buf) - got);
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            err = n ? errno : 0;
            break;
        }
        got += (size_t) n;
    }
    close(fd);
    if (err == 0 && (got == 48 || got == 80)) {
        key->size = got;
        memcpy(key->name, buf, 16);
        if (got == 48) {
            memcpy(key->aes, buf + 16, 16);
            memcpy(key->hmac, buf + 32, 16);
        } else {
            memcpy(key->hmac, buf + 16, 32);
            memcpy(key->aes, buf + 48, 32);
        }
    }
    sg_wipe(buf, sizeof(buf));
    if (err) {
        return sg_conf_error(cf, err, "read() \"%.*s\" failed",
                             SG_STR_ARG(path));
    }
    if (key->size == 0) {
        return sg_conf_error(cf, 0, "\"%.*s\" must be 48 or 80 bytes "
                             "(\"openssl rand 80\"), not %s%zu",
                             SG_STR_ARG(path), got > 80 ? "more than " : "",
                             got > 80 ? (size_t) 80 : got);
    }
    return SG_CONF_OK;
}

/* Read when the directive is, so that a bad file is reported at its
 * line; the keys live, and are wiped, with the configuration. */
static char *
sg_ssl_ticket_key(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_ssl_conf_t         *scf = conf;
    sg_str_t               path = ((sg_str_t *) cf->args->elts)[1];
    sg_ssl_ticket_key_t   *key, **slot;

    (void) cmd;
    if (scf->ticket_keys == SG_CONF_UNSET_PTR) {
        scf->ticket_keys = sg_array_create(cf->pool, 2,
                                           sizeof(sg_ssl_ticket_key_t *));
        if (scf->ticket_keys == NULL) {
            return SG_CONF_ERROR;
        }
    }
    if (sg_conf_full_name(cf, &path, true) != SG_OK) {
        return SG_CONF_ERROR;
    }
    key = sg_pcalloc(cf->pool, sizeof(sg_ssl_ticket_key_t));
    slot = sg_array_push(scf->ticket_keys);
    if (key == NULL || slot == NULL
        || sg_pool_cleanup_add(cf->pool, sg_ssl_ticket_key_wipe, key)
           != SG_OK)
    {
        return SG_CONF_ERROR;
    }
    *slot = key;
    return sg_ssl_ticket_key_read(cf, &path, key);
}

static char *
sg_ssl_trusted(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_ssl_conf_t  *scf = conf;
    char           *rv;

    rv = sg_conf_set_path_slot(cf, cmd, conf);
    if (rv == SG_CONF_OK) {
        scf->trusted_file = cf->file->name;
        scf->trusted_line = sg_conf_line(cf);
    }
    return rv;
}

/* "ssl on": nginx's way, before "listen ... ssl", to make every address
 * of a server implicit TLS; still in nginx 1.22 (Debian 12) configs. */
static char *
sg_ssl_enable(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_ssl_conf_t  *scf = conf;
    char           *rv;

    rv = sg_conf_set_flag_slot(cf, cmd, conf);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    if (scf->enable && scf->srv.starttls != (unsigned) SG_CONF_UNSET
        && scf->srv.starttls != SG_SSL_STARTTLS_OFF)
    {
        return sg_conf_error(cf, 0, "\"starttls\" directive conflicts with "
                             "\"ssl on\"");
    }
    scf->enable_file = cf->file->name;
    scf->enable_line = sg_conf_line(cf);
    sg_conf_warn(cf, "the \"ssl\" directive is deprecated, use the "
                 "\"listen ... ssl\" directive instead");
    return SG_CONF_OK;
}

static char *
sg_ssl_starttls(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_ssl_conf_t  *scf = conf;
    char           *rv;

    rv = sg_conf_set_enum_slot(cf, cmd, conf);
    if (rv == SG_CONF_OK && scf->enable == 1
        && scf->srv.starttls != SG_SSL_STARTTLS_OFF)
    {
        return sg_conf_error(cf, 0, "\"ssl\" directive conflicts with "
                             "\"starttls\"");
    }
    return rv;
}

static void *
sg_ssl_create_conf(sg_conf_t *cf)
{
    sg_ssl_conf_t  *scf;

    scf = sg_pcalloc(cf->pool, sizeof(sg_ssl_conf_t));
    if (scf == NULL) {
        return NULL;
    }
    scf->srv.starttls = (unsigned) SG_CONF_UNSET;
    scf->srv.verify = (unsigned) SG_CONF_UNSET;
    scf->srv.handshake_timeout = SG_CONF_UNSET_MSEC;
    scf->certificates = SG_CONF_UNSET_PTR;
    scf->certificate_keys = SG_CONF_UNSET_PTR;
    scf->conf_commands = SG_CONF_UNSET_PTR;
    scf->prefer_server_ciphers = SG_CONF_UNSET;
    scf->session_cache = SG_SSL_CACHE_UNSET;
    scf->session_timeout = SG_CONF_UNSET_MSEC;
    scf->session_tickets = SG_CONF_UNSET;
    scf->compact = SG_CONF_UNSET;
    scf->greeting_in_handshake = SG_CONF_UNSET;
    scf->verify_depth = SG_CONF_UNSET;
    scf->ticket_keys = SG_CONF_UNSET_PTR;
    scf->enable = SG_CONF_UNSET;
    return scf;
}

/* Building a context. */

static int            sg_ssl_conf_index = -1;
static u_char         sg_ssl_ticket_secret[32];
static bool           sg_ssl_ticket_secret_set;

/* Whether reason is one of the "; "-separated reasons in buf already. */
static bool
sg_ssl_said(const char *buf, const char *reason)
{
    size_t       len = strlen(reason);
    const char  *p = buf;

    while (*p) {
        if (strncmp(p, reason, len) == 0 && (p[len] == ';' || !p[len])) {
            return true;
        }
        p = strstr(p, "; ");
        if (p == NULL) {
            return false;
        }
        p += 2;
    }
    return false;
}

/* Every reason OpenSSL queued, outermost last, each once: the first is
 * often the system error ("No such file or directory"), the last the
 * context.  OpenSSL 3 has no reason string for a system error, only its
 * errno; and a failure repeats reasons on its way up ("system lib" for
 * each layer a failed fopen() passes). */
static const char *
sg_ssl_errstr(char *buf, size_t len)
{
    unsigned long  e;
    size_t         n = 0;
    const char    *r;

    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0 && n + 4 < len) {
        r = ERR_SYSTEM_ERROR(e) ? strerror((int) ERR_GET_REASON(e))
                                : ERR_reason_error_string(e);
        r = r ? r : "unknown";
        if (sg_ssl_said(buf, r)) {
            continue;
        }
        n += (size_t) snprintf(buf + n, len - n, "%s%s", n ? "; " : "", r);
    }
    ERR_clear_error();
    if (n == 0) {
        snprintf(buf, len, "unknown error");
    }
    return buf;
}

static char *
sg_ssl_fail_at(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *what, const sg_str_t *path)
{
    char  e[512];

    sg_ssl_errstr(e, sizeof(e));
    if (path) {
        return sg_conf_error_at(cf, file, line, "%s \"%.*s\" failed: %s",
                                what, SG_STR_ARG(path), e);
    }
    return sg_conf_error_at(cf, file, line, "%s failed: %s", what, e);
}

static char *
sg_ssl_fail(sg_conf_t *cf, sg_ssl_conf_t *scf, const char *what,
    const sg_str_t *path)
{
    return sg_ssl_fail_at(cf, &scf->file, scf->line, what, path);
}

static void
sg_ssl_ctx_cleanup(void *data)
{
    SSL_CTX_free(data);
}

static int
sg_ssl_password_cb(char *buf, int size, int rwflag, void *u)
{
    const sg_str_t  *pw = u;

    (void) rwflag;
    if (pw == NULL || pw->len > (size_t) size) {
        return 0;
    }
    memcpy(buf, pw->data, pw->len);
    return (int) pw->len;
}

/* Passphrases, one per line; the file is read once, at load time. */
static sg_array_t *
sg_ssl_read_passwords(sg_conf_t *cf, sg_ssl_conf_t *scf)
{
    sg_array_t  *a;
    sg_str_t    *pw;
    FILE        *f;
    char         line[1024];
    size_t       n;

    a = sg_array_create(cf->pool, 4, sizeof(sg_str_t));
    if (a == NULL) {
        return NULL;
    }
    f = fopen((const char *) scf->password_file.data, "re");
    if (f == NULL) {
        sg_conf_error_at(cf, &scf->file, scf->line, "open() \"%.*s\" failed "
                         "(%d: %s): check \"ssl_password_file\"",
                         SG_STR_ARG(&scf->password_file), errno,
                         strerror(errno));
        return NULL;
    }
    while (fgets(line, sizeof(line), f)) {
        n = strcspn(line, "\r\n");
        pw = sg_array_push(a);
        if (pw == NULL) {
            break;
        }
        pw->data = sg_pnalloc(cf->pool, n + 1);
        if (pw->data) {
            memcpy(pw->data, line, n);
            pw->len = n;
        }
    }
    sg_wipe(line, sizeof(line));
    fclose(f);
    return a;
}

static int
sg_ssl_use_key(SSL_CTX *ctx, const sg_str_t *key, sg_array_t *passwords)
{
    sg_str_t  *pw;
    size_t     i, n = passwords ? passwords->nelts : 0;

    for (i = 0; i == 0 || i < n; i++) {
        pw = n ? sg_array_elt(passwords, sg_str_t, i) : NULL;
        SSL_CTX_set_default_passwd_cb(ctx, sg_ssl_password_cb);
        SSL_CTX_set_default_passwd_cb_userdata(ctx, pw);
        if (SSL_CTX_use_PrivateKey_file(ctx, (const char *) key->data,
                                        SSL_FILETYPE_PEM) == 1)
        {
            SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
            return SG_OK;
        }
        if (i + 1 < n) {
            ERR_clear_error();     /* try the next passphrase */
        }
    }
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    return SG_ERROR;
}

/* The paths whose dates were already warned of in the configuration
 * being loaded (a certificate of the mail block is every server's). */
static sg_cycle_t  *sg_ssl_dates_cycle;
static sg_array_t  *sg_ssl_dates_warned;

static void
sg_ssl_dates_forget(void *data)
{
    if (sg_ssl_dates_cycle == data) {
        sg_ssl_dates_cycle = NULL;
        sg_ssl_dates_warned = NULL;
    }
}

/* How many days before a certificate's end -t and a load warn. */
#define SG_SSL_EXPIRY_WARN_DAYS  14

static int
sg_ssl_asn1_time(const ASN1_TIME *t, time_t *out)
{
    struct tm  tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        return SG_ERROR;
    }
    *out = timegm(&tm);
    return SG_OK;
}

char *
sg_ssl_cert_dates(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *directive, X509 *x, const sg_str_t *path,
    sg_ssl_cert_info_t *ci)
{
    sg_str_t   *seen;
    time_t      now = time(NULL);
    struct tm   tm;
    char        when[64];
    size_t      i;
    long long   days;

    ci->file = *path;
    if (x == NULL
        || sg_ssl_asn1_time(X509_get0_notBefore(x), &ci->not_before)
           != SG_OK
        || sg_ssl_asn1_time(X509_get0_notAfter(x), &ci->not_after) != SG_OK)
    {
        ci->not_before = ci->not_after = 0;
        return SG_CONF_OK;
    }

    if (sg_ssl_dates_cycle != cf->cycle) {
        if (sg_pool_cleanup_add(cf->cycle->pool, sg_ssl_dates_forget,
                                cf->cycle) != SG_OK)
        {
            return SG_CONF_ERROR;
        }
        sg_ssl_dates_cycle = cf->cycle;
        sg_ssl_dates_warned = sg_array_create(cf->pool, 2,
                                              sizeof(sg_str_t));
        if (sg_ssl_dates_warned == NULL) {
            return SG_CONF_ERROR;
        }
    }
    seen = sg_ssl_dates_warned->elts;
    for (i = 0; i < sg_ssl_dates_warned->nelts; i++) {
        if (seen[i].len == path->len
            && memcmp(seen[i].data, path->data, path->len) == 0)
        {
            return SG_CONF_OK;
        }
    }
    seen = sg_array_push(sg_ssl_dates_warned);
    if (seen == NULL) {
        return SG_CONF_ERROR;
    }
    *seen = *path;

    if (now < ci->not_before) {
        (void) gmtime_r(&ci->not_before, &tm);
        (void) strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
        sg_conf_warn_at(cf, file, line, "%s \"%.*s\" is not valid before "
                        "%s: %s will refuse it until then; check the "
                        "clock, or the certificate", directive,
                        SG_STR_ARG(path), when,
                        directive[0] == 'p' ? "backends" : "clients");
        return SG_CONF_OK;
    }
    (void) gmtime_r(&ci->not_after, &tm);
    (void) strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
    if (now >= ci->not_after) {
        sg_conf_warn_at(cf, file, line, "%s \"%.*s\" expired on %s: %s "
                        "will refuse it; renew it", directive,
                        SG_STR_ARG(path), when,
                        directive[0] == 'p' ? "backends" : "clients");
    } else if (ci->not_after - now < SG_SSL_EXPIRY_WARN_DAYS * 86400) {
        days = (long long) ((ci->not_after - now) / 86400);
        sg_conf_warn_at(cf, file, line, "%s \"%.*s\" expires %s%lld day%s, "
                        "on %s: renew it", directive, SG_STR_ARG(path),
                        days ? "in " : "in less than ", days ? days : 1,
                        days <= 1 ? "" : "s", when);
    }
    return SG_CONF_OK;
}

static char *
sg_ssl_certificates(sg_conf_t *cf, sg_ssl_conf_t *scf, SSL_CTX *ctx)
{
    sg_str_t            *cert = scf->certificates->elts;
    sg_str_t            *key = scf->certificate_keys->elts;
    sg_array_t          *passwords = NULL;
    sg_ssl_cert_info_t  *ci;
    size_t       i;
    char        *rv;

    if (scf->certificates->nelts != scf->certificate_keys->nelts) {
        return sg_conf_error_at(cf, &scf->file, scf->line, "every "
            "\"ssl_certificate\" needs its own \"ssl_certificate_key\", "
            "in the same order");
    }
    if (scf->password_file.data) {
        passwords = sg_ssl_read_passwords(cf, scf);
        if (passwords == NULL) {
            return SG_CONF_ERROR;
        }
    }
    rv = SG_CONF_OK;
    for (i = 0; i < scf->certificates->nelts && rv == SG_CONF_OK; i++) {
        if (SSL_CTX_use_certificate_chain_file(ctx,
                (const char *) cert[i].data) != 1)
        {
            rv = sg_ssl_fail(cf, scf, "loading certificate", &cert[i]);
        } else if (sg_ssl_use_key(ctx, &key[i], passwords) != SG_OK
                   /* A key of another type than its certificate goes
                    * to that type's empty slot without a complaint,
                    * and every handshake would then fail. */
                   || SSL_CTX_check_private_key(ctx) != 1)
        {
            rv = sg_ssl_fail(cf, scf, "loading certificate key", &key[i]);
        } else {
            if (scf->srv.certs == NULL) {
                scf->srv.certs = sg_array_create(cf->pool, 2,
                                                 sizeof(sg_ssl_cert_info_t));
            }
            ci = scf->srv.certs ? sg_array_push(scf->srv.certs) : NULL;
            rv = ci ? sg_ssl_cert_dates(cf, &scf->file, scf->line,
                                        "ssl_certificate",
                                        SSL_CTX_get0_certificate(ctx),
                                        &cert[i], ci)
                    : SG_CONF_ERROR;
        }
    }
    for (i = 0; passwords && i < passwords->nelts; i++) {
        sg_str_t  *pw = sg_array_elt(passwords, sg_str_t, i);

        sg_wipe(pw->data, pw->len);     /* on every path */
    }
    return rv;
}

static int
sg_ssl_set_protocols(SSL_CTX *ctx, unsigned protocols)
{
    static const int  versions[] = { TLS1_VERSION, TLS1_1_VERSION,
                                     TLS1_2_VERSION, TLS1_3_VERSION };
    static const long no[] = { SSL_OP_NO_TLSv1, SSL_OP_NO_TLSv1_1,
                               SSL_OP_NO_TLSv1_2, SSL_OP_NO_TLSv1_3 };
    int               i, lo = -1, hi = -1;

    for (i = 0; i < 4; i++) {
        if (protocols & (1u << i)) {
            if (lo < 0) {
                lo = i;
            }
            hi = i;
        }
    }
    if (lo < 0) {
        return SG_ERROR;
    }
    for (i = lo; i <= hi; i++) {
        if (!(protocols & (1u << i))) {
            SSL_CTX_set_options(ctx, (uint64_t) no[i]);    /* a gap */
        }
    }
    if (!SSL_CTX_set_min_proto_version(ctx, versions[lo])
        || !SSL_CTX_set_max_proto_version(ctx, versions[hi]))
    {
        return SG_ERROR;
    }
    return SG_OK;
}

/* Session tickets: keys for period i are derived from the secret, so
 * every worker (and the workers after a reload) agrees on them.  A
 * worker derives a period's keys once and keeps them: deriving them per
 * ticket cost six HMACs (each fetching its algorithms) per handshake. */
typedef struct {
    uint64_t  period;               /* 0: empty; else the period + 1 */
    u_char    name[16];
    u_char    aes[32];
    u_char    hmac[32];
} sg_ssl_ticket_keys_t;

#define SG_SSL_TICKET_SLOTS  4      /* two periods of two servers' lengths */

static sg_ssl_ticket_keys_t  sg_ssl_ticket_keys[SG_SSL_TICKET_SLOTS];
static EVP_CIPHER           *sg_ssl_ticket_cipher;
static EVP_CIPHER           *sg_ssl_ticket_cipher128;   /* 48-byte files */

static int
sg_ssl_derive(const char *label, uint64_t period, u_char *out, size_t len)
{
    u_char  msg[32], mac[EVP_MAX_MD_SIZE];
    size_t  n = strlen(label), maclen = 0;
    int     i;

    /* One key set for every server: OpenSSL may open a ticket before
     * SNI has picked the server.  A session carries its server's id
     * context, and sg_ssl_check_session() refuses it anywhere else. */
    memcpy(msg, label, n);
    for (i = 0; i < 8; i++) {
        msg[n + i] = (u_char) (period >> (56 - 8 * i));
    }
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, sg_ssl_ticket_secret,
                  sizeof(sg_ssl_ticket_secret), msg, n + 8, mac, sizeof(mac),
                  &maclen) == NULL || maclen < len)
    {
        return SG_ERROR;
    }
    memcpy(out, mac, len);
    sg_wipe(mac, sizeof(mac));
    return SG_OK;
}

static const sg_ssl_ticket_keys_t *
sg_ssl_ticket_keys_for(uint64_t period)
{
    sg_ssl_ticket_keys_t  *k = &sg_ssl_ticket_keys[period
                                                   % SG_SSL_TICKET_SLOTS];

    if (k->period == period + 1) {
        return k;
    }
    k->period = 0;
    if (sg_ssl_derive("ticket-name", period, k->name, 16) != SG_OK
        || sg_ssl_derive("ticket-aes", period, k->aes, 32) != SG_OK
        || sg_ssl_derive("ticket-hmac", period, k->hmac, 32) != SG_OK)
    {
        sg_wipe(k, sizeof(*k));
        return NULL;
    }
    k->period = period + 1;
    return k;
}

static int
sg_ssl_ticket_init(EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx,
    const EVP_CIPHER *cipher, const u_char *aes, const u_char *hmac,
    size_t hmac_len, unsigned char *iv, int enc)
{
    OSSL_PARAM  params[3];

    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
                    (void *) hmac, hmac_len);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *) "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_CipherInit_ex(ectx, cipher, NULL, aes, iv, enc) != 1
        || EVP_MAC_CTX_set_params(hctx, params) != 1)
    {
        return SG_ERROR;
    }
    return SG_OK;
}

/* ssl_session_ticket_key: the first key encrypts, any of them decrypts,
 * and a ticket opened with another than the first is renewed (as in
 * nginx), so that a key can be retired once it has been second for a
 * session's lifetime. */
static int
sg_ssl_ticket_file_cb(sg_ssl_conf_t *scf, unsigned char name[16],
    unsigned char *iv, EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx, int enc)
{
    sg_ssl_ticket_key_t  **keys = scf->ticket_keys->elts, *k;
    size_t                 i;

    for (i = 0; i < scf->ticket_keys->nelts; i++) {
        k = keys[i];
        if (enc) {
            memcpy(name, k->name, 16);
            if (RAND_bytes(iv, 16) != 1) {
                return -1;
            }
        } else if (memcmp(name, k->name, 16) != 0) {
            continue;
        }
        if (sg_ssl_ticket_init(ectx, hctx, k->size == 80
                                   ? sg_ssl_ticket_cipher
                                   : sg_ssl_ticket_cipher128,
                               k->aes, k->hmac, k->size == 80 ? 32 : 16,
                               iv, enc) != SG_OK)
        {
            return -1;
        }
        return (!enc && i > 0) ? 2 : 1;
    }
    return 0;
}

static int
sg_ssl_ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv,
    EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx, int enc)
{
    const sg_ssl_ticket_keys_t  *keys;
    sg_ssl_conf_t               *scf;
    uint64_t                     period, now = (uint64_t) time(NULL);
    int                          k;

    /* OpenSSL calls the callback of the context the connection started
     * with, and opens tickets before SNI has chosen the server: this
     * context is the default server's then, the chosen one's later. */
    scf = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), sg_ssl_conf_index);
    if (scf->ticket_keys) {
        return sg_ssl_ticket_file_cb(scf, name, iv, ectx, hctx, enc);
    }
    period = (uint64_t) sg_max(scf->session_timeout / 1000, 60);
    for (k = 0; k < 2; k++) {
        keys = sg_ssl_ticket_keys_for(now / period - (uint64_t) k);
        if (keys == NULL) {
            return -1;
        }
        if (enc) {
            memcpy(name, keys->name, 16);
            if (RAND_bytes(iv, 16) != 1) {
                return -1;
            }
        } else if (memcmp(name, keys->name, 16) != 0) {
            continue;
        }
        if (sg_ssl_ticket_init(ectx, hctx, sg_ssl_ticket_cipher, keys->aes,
                               keys->hmac, 32, iv, enc) != SG_OK)
        {
            return -1;
        }
        return (!enc && k == 1) ? 2 : 1;    /* 2: renew an old ticket */
    }
    return 0;
}

/* The server's certificates, by their SHA-256. */
static int
sg_ssl_digest_certs(EVP_MD_CTX *md, SSL_CTX *ctx)
{
    u_char    d[EVP_MAX_MD_SIZE];
    unsigned  n;
    X509     *x;
    long      more;

    for (more = SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_FIRST);
         more == 1;
         more = SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_NEXT))
    {
        x = SSL_CTX_get0_certificate(ctx);
        if (x != NULL
            && (X509_digest(x, EVP_sha256(), d, &n) != 1
                || EVP_DigestUpdate(md, d, n) != 1))
        {
            return SG_ERROR;
        }
    }
    return SG_OK;
}

/* SHA-256 over what makes a session trustworthy on this server: its
 * identity and its client certificate policy.  The identity is the
 * server's name and place in the configuration; but with ticket keys
 * from files, which other hosts share, it is what those hosts agree on:
 * the server's name and its certificates. */
static int
sg_ssl_sid_ctx(sg_ssl_conf_t *scf, sg_smtp_srv_conf_t *sscf, SSL_CTX *ctx)
{
    EVP_MD_CTX  *md;
    unsigned     len = 0;
    u_char       out[EVP_MAX_MD_SIZE];
    char         policy[96];
    int          rc = SG_ERROR;
    bool         ok;

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return SG_ERROR;
    }
    snprintf(policy, sizeof(policy), "|%u|%lld|", scf->srv.verify,
             (long long) scf->verify_depth);
    ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1
         && EVP_DigestUpdate(md, sscf->server_name.data,
                             sscf->server_name.len) == 1;
    if (scf->ticket_keys) {
        ok = ok && sg_ssl_digest_certs(md, ctx) == SG_OK;
    } else {
        ok = ok && EVP_DigestUpdate(md, sscf->file.data, sscf->file.len) == 1
             && EVP_DigestUpdate(md, &sscf->line, sizeof(sscf->line)) == 1;
    }
    if (ok
        && EVP_DigestUpdate(md, policy, strlen(policy)) == 1
        && EVP_DigestUpdate(md, scf->client_certificate.data,
                            scf->client_certificate.len) == 1
        && EVP_DigestUpdate(md, "|", 1) == 1
        && EVP_DigestUpdate(md, scf->trusted_certificate.data,
                            scf->trusted_certificate.len) == 1
        && EVP_DigestUpdate(md, "|", 1) == 1
        && EVP_DigestUpdate(md, scf->crl.data, scf->crl.len) == 1
        && EVP_DigestFinal_ex(md, out, &len) == 1)
    {
        scf->sid_ctx_len = sg_min(len, SSL_MAX_SID_CTX_LENGTH);
        memcpy(scf->sid_ctx, out, scf->sid_ctx_len);
        rc = SG_OK;
    }
    EVP_MD_CTX_free(md);
    return rc;
}

static char *
sg_ssl_sessions(sg_conf_t *cf, sg_ssl_conf_t *scf, SSL_CTX *ctx,
    sg_smtp_srv_conf_t *sscf)
{
    if (sg_ssl_sid_ctx(scf, sscf, ctx) != SG_OK
        || SSL_CTX_set_session_id_context(ctx, scf->sid_ctx,
                                          scf->sid_ctx_len) != 1)
    {
        return sg_ssl_fail(cf, scf, "setting the session id context", NULL);
    }
    SSL_CTX_set_timeout(ctx, (long) (scf->session_timeout / 1000));
    /* One TLS 1.3 ticket per handshake, not OpenSSL's two: each costs an
     * encryption and a write, and a client resuming one connection after
     * another gets a fresh ticket each time (ssl_conf_command NumTickets
     * gives more to clients that open several at once). */
    SSL_CTX_set_num_tickets(ctx, 1);
    switch (scf->session_cache) {
    case SG_SSL_CACHE_OFF:
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        break;
    case SG_SSL_CACHE_NONE:
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER
                                            | SSL_SESS_CACHE_NO_INTERNAL);
        break;
    default:
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, (long) scf->session_cache_size);
    }
    if (scf->session_zone && scf->session_cache != SG_SSL_CACHE_OFF) {
        sg_ssl_cache_attach(ctx, scf->session_zone);
    }
    if (!scf->session_tickets) {
        /* TLS 1.3 then issues stateful tickets that name a cached
         * session; with nowhere to cache, issue none at all. */
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        if (scf->session_cache == SG_SSL_CACHE_OFF
            || (scf->session_cache == SG_SSL_CACHE_NONE
                && scf->session_zone == NULL))
        {
            SSL_CTX_set_num_tickets(ctx, 0);
        }
        return SG_CONF_OK;
    }
    if (!sg_ssl_ticket_secret_set) {
        if (RAND_bytes(sg_ssl_ticket_secret,
                       sizeof(sg_ssl_ticket_secret)) != 1)
        {
            return sg_ssl_fail(cf, scf, "RAND_bytes()", NULL);
        }
        sg_ssl_ticket_secret_set = true;
    }
    if (sg_ssl_ticket_cipher == NULL) {
        /* Fetched once: a cipher named per ticket is looked up anew. */
        sg_ssl_ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
        if (sg_ssl_ticket_cipher == NULL) {
            return sg_ssl_fail(cf, scf, "EVP_CIPHER_fetch(AES-256-CBC)",
                               NULL);
        }
    }
    if (scf->ticket_keys && sg_ssl_ticket_cipher128 == NULL) {
        sg_ssl_ticket_cipher128 = EVP_CIPHER_fetch(NULL, "AES-128-CBC", NULL);
        if (sg_ssl_ticket_cipher128 == NULL) {
            return sg_ssl_fail(cf, scf, "EVP_CIPHER_fetch(AES-128-CBC)",
                               NULL);
        }
    }
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, sg_ssl_ticket_cb);
    return SG_CONF_OK;
}

static char *
sg_ssl_dh_and_curves(sg_conf_t *cf, sg_ssl_conf_t *scf, SSL_CTX *ctx)
{
    EVP_PKEY  *dh;
    BIO       *bio;

    if (scf->ecdh_curve.data && !sg_str_eq(&scf->ecdh_curve, "auto")
        && SSL_CTX_set1_groups_list(ctx, (const char *) scf->ecdh_curve.data)
           != 1)
    {
        return sg_ssl_fail(cf, scf, "ssl_ecdh_curve", &scf->ecdh_curve);
    }
    if (scf->dhparam.data == NULL) {
        SSL_CTX_set_dh_auto(ctx, 1);
        return SG_CONF_OK;
    }
    bio = BIO_new_file((const char *) scf->dhparam.data, "r");
    if (bio == NULL) {
        return sg_ssl_fail(cf, scf, "opening ssl_dhparam", &scf->dhparam);
    }
    dh = PEM_read_bio_Parameters(bio, NULL);
    BIO_free(bio);
    if (dh == NULL || SSL_CTX_set0_tmp_dh_pkey(ctx, dh) != 1) {
        EVP_PKEY_free(dh);
        return sg_ssl_fail(cf, scf, "loading ssl_dhparam", &scf->dhparam);
    }
    return SG_CONF_OK;
}

static char *
sg_ssl_commands_apply(sg_conf_t *cf, sg_ssl_conf_t *scf, SSL_CTX *ctx)
{
    SSL_CONF_CTX  *cctx;
    sg_str_t      *kv;
    size_t         i;

    if (scf->conf_commands == NULL) {
        return SG_CONF_OK;
    }
    kv = scf->conf_commands->elts;
    cctx = SSL_CONF_CTX_new();
    if (cctx == NULL) {
        return SG_CONF_ERROR;
    }
    SSL_CONF_CTX_set_flags(cctx, SSL_CONF_FLAG_FILE | SSL_CONF_FLAG_SERVER
                                 | SSL_CONF_FLAG_CERTIFICATE
                                 | SSL_CONF_FLAG_SHOW_ERRORS);
    SSL_CONF_CTX_set_ssl_ctx(cctx, ctx);
    for (i = 0; i + 1 < scf->conf_commands->nelts; i += 2) {
        if (SSL_CONF_cmd(cctx, (const char *) kv[i].data,
                         (const char *) kv[i + 1].data) <= 0)
        {
            SSL_CONF_CTX_free(cctx);
            return sg_ssl_fail(cf, scf, "ssl_conf_command", &kv[i]);
        }
    }
    if (SSL_CONF_CTX_finish(cctx) != 1) {
        SSL_CONF_CTX_free(cctx);
        return sg_ssl_fail(cf, scf, "ssl_conf_command", NULL);
    }
    SSL_CONF_CTX_free(cctx);
    return SG_CONF_OK;
}

static char *
sg_ssl_client_verify(sg_conf_t *cf, sg_ssl_conf_t *scf, SSL_CTX *ctx)
{
    STACK_OF(X509_NAME)  *names;
    X509_STORE           *store;
    X509_LOOKUP          *lookup;

    if (scf->srv.verify == SG_SSL_VERIFY_OFF) {
        return SG_CONF_OK;
    }
    if (scf->client_certificate.data == NULL
        && scf->trusted_certificate.data == NULL)
    {
        return sg_conf_error_at(cf, &scf->file, scf->line, "\"ssl_verify_"
            "client\" needs \"ssl_client_certificate\" or \"ssl_trusted_"
            "certificate\": the CAs that sign client certificates");
    }
    /* Both files verify; only ssl_client_certificate's names are sent to
     * clients as the acceptable issuers. */
    if (scf->trusted_certificate.data
        && SSL_CTX_load_verify_locations(ctx,
               (const char *) scf->trusted_certificate.data, NULL) != 1)
    {
        return sg_ssl_fail_at(cf, &scf->trusted_file, scf->trusted_line,
                              "loading ssl_trusted_certificate",
                              &scf->trusted_certificate);
    }
    if (scf->client_certificate.data) {
        if (SSL_CTX_load_verify_locations(ctx,
                (const char *) scf->client_certificate.data, NULL) != 1)
        {
            return sg_ssl_fail(cf, scf, "loading ssl_client_certificate",
                               &scf->client_certificate);
        }
        names = SSL_load_client_CA_file(
                    (const char *) scf->client_certificate.data);
        if (names == NULL) {
            return sg_ssl_fail(cf, scf, "reading CA names from",
                               &scf->client_certificate);
        }
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER
                            | (scf->srv.verify == SG_SSL_VERIFY_ON
                               ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                       NULL);
    SSL_CTX_set_verify_depth(ctx, (int) scf->verify_depth);
    if (scf->crl.data) {
        store = SSL_CTX_get_cert_store(ctx);
        lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (lookup == NULL
            || X509_load_crl_file(lookup, (const char *) scf->crl.data,
                                  X509_FILETYPE_PEM) <= 0)
        {
            return sg_ssl_fail(cf, scf, "loading ssl_crl", &scf->crl);
        }
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK
                                    | X509_V_FLAG_CRL_CHECK_ALL);
    }
    return SG_CONF_OK;
}

/* SNI: the name the client asked for picks the server among those that
 * share the address; its context then serves the handshake. */
static int
sg_ssl_servername(SSL *ssl, int *ad, void *arg)
{
    sg_connection_t     *c = SSL_get_app_data(ssl);
    sg_smtp_srv_conf_t  *sscf;
    sg_ssl_conf_t       *scf;
    const char          *name;
    sg_str_t             host;

    (void) ad;
    (void) arg;
    name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || c == NULL) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    host.data = (u_char *) name;
    host.len = strlen(name);
    if (!sg_smtp_name_ok(&host)) {
        /* RFC 6066: an ASCII host name (IDNs as A-labels).  Not one to
         * choose a server by (sg_smtp_find_server agrees), or to write
         * into a log line. */
        sg_log_debug(c->log, "TLS SNI with a space, control or non-ASCII "
                     "character ignored");
        return SSL_TLSEXT_ERR_OK;
    }
    sscf = sg_smtp_select_server(c, &host);
    if (sscf == NULL) {
        return SSL_TLSEXT_ERR_OK;      /* keep the default server */
    }
    scf = sscf->ctx->srv_conf[sg_ssl_module.ctx_index];
    if (scf->srv.ctx && scf->srv.ctx != SSL_get_SSL_CTX(ssl)) {
        SSL_set_SSL_CTX(ssl, scf->srv.ctx);
        /* SSL_set_SSL_CTX swaps certificates only: take the verify
         * settings and options of the chosen server too. */
        SSL_set_verify(ssl, SSL_CTX_get_verify_mode(scf->srv.ctx),
                       SSL_CTX_get_verify_callback(scf->srv.ctx));
        SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(scf->srv.ctx));
        SSL_clear_options(ssl, SSL_get_options(ssl)
                               ^ SSL_CTX_get_options(scf->srv.ctx));
        SSL_set_options(ssl, SSL_CTX_get_options(scf->srv.ctx));
        SSL_set_session_id_context(ssl, scf->sid_ctx, scf->sid_ctx_len);
        SSL_set_read_ahead(ssl, SSL_CTX_get_read_ahead(scf->srv.ctx));
    }
    sg_log_debug(c->log, "TLS SNI \"%s\" selects server \"%.*s\"", name,
                 SG_STR_ARG(&sscf->server_name));
    return SSL_TLSEXT_ERR_OK;
}

static char *
sg_ssl_build_ctx(sg_conf_t *cf, sg_ssl_conf_t *scf, sg_smtp_srv_conf_t *sscf)
{
    SSL_CTX  *ctx;
    char     *rv;

    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        return sg_ssl_fail(cf, scf, "SSL_CTX_new()", NULL);
    }
    if (sg_pool_cleanup_add(cf->pool, sg_ssl_ctx_cleanup, ctx) != SG_OK) {
        SSL_CTX_free(ctx);
        return SG_CONF_ERROR;
    }
    if (sg_ssl_conf_index < 0) {
        sg_ssl_conf_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL,
                                                     NULL);
    }
    SSL_CTX_set_ex_data(ctx, sg_ssl_conf_index, scf);
    /* OpenSSL opens records in place and leaves what the client sent
     * (an AUTH line) in its buffer, freed as it is: wipe it once read. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION
                             | SSL_OP_IGNORE_UNEXPECTED_EOF
                             | SSL_OP_CLEANSE_PLAINTEXT);
    if (scf->prefer_server_ciphers) {
        SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    }
    /* Partial writes and moving buffers suit a non-blocking loop; idle
     * connections give their read/write buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                          | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                          | SSL_MODE_RELEASE_BUFFERS);
    /* Read whatever the socket holds, not a record header and then its
     * body: half the read(2) calls.  The event loop is edge-triggered
     * and keeps the read event ready until a read would block, so bytes
     * read ahead are never left waiting for an event. */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* ssl_compact_state: no read-ahead during the handshake (it comes
     * back if OpenSSL keeps the connection), the secrets and the
     * tickets counted. */
    sg_ssl_compact_ctx(ctx, scf->compact);
    if (sg_ssl_set_protocols(ctx, scf->protocols) != SG_OK) {
        return sg_ssl_fail(cf, scf, "setting ssl_protocols", NULL);
    }
    if (SSL_CTX_set_cipher_list(ctx, (const char *) scf->ciphers.data) != 1)
    {
        return sg_ssl_fail(cf, scf, "ssl_ciphers", &scf->ciphers);
    }
    if ((rv = sg_ssl_certificates(cf, scf, ctx)) != SG_CONF_OK
        || (rv = sg_ssl_dh_and_curves(cf, scf, ctx)) != SG_CONF_OK
        || (rv = sg_ssl_sessions(cf, scf, ctx, sscf)) != SG_CONF_OK
        || (rv = sg_ssl_client_verify(cf, scf, ctx)) != SG_CONF_OK
        || (rv = sg_ssl_commands_apply(cf, scf, ctx)) != SG_CONF_OK)
    {
        return rv;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, sg_ssl_servername);
    scf->srv.ctx = ctx;
    return SG_CONF_OK;
}

static char *
sg_ssl_merge_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_ssl_conf_t       *prev = parent, *conf = child;
    sg_smtp_srv_conf_t  *sscf = sg_smtp_conf_current(cf);

    if (conf->srv.starttls == (unsigned) SG_CONF_UNSET) {
        conf->srv.starttls = prev->srv.starttls == (unsigned) SG_CONF_UNSET
                             ? SG_SSL_STARTTLS_OFF : prev->srv.starttls;
    }
    if (conf->srv.verify == (unsigned) SG_CONF_UNSET) {
        conf->srv.verify = prev->srv.verify == (unsigned) SG_CONF_UNSET
                           ? SG_SSL_VERIFY_OFF : prev->srv.verify;
    }
    sg_conf_merge_msec(conf->srv.handshake_timeout,
                       prev->srv.handshake_timeout, 30000);
    sg_conf_merge_ptr(conf->certificates, prev->certificates, NULL);
    sg_conf_merge_ptr(conf->certificate_keys, prev->certificate_keys, NULL);
    sg_conf_merge_ptr(conf->conf_commands, prev->conf_commands, NULL);
    if (conf->password_file.data == NULL) {
        conf->password_file = prev->password_file;
    }
    if (conf->protocols == 0) {
        conf->protocols = prev->protocols ? prev->protocols
                          : SG_SSL_PROTO_TLSv1_2 | SG_SSL_PROTO_TLSv1_3;
    }
    sg_conf_merge_str(conf->ciphers, prev->ciphers, "HIGH:!aNULL:!MD5");
    sg_conf_merge_value(conf->prefer_server_ciphers,
                        prev->prefer_server_ciphers, 0);
    sg_conf_merge_str(conf->ecdh_curve, prev->ecdh_curve, "auto");
    if (conf->dhparam.data == NULL) {
        conf->dhparam = prev->dhparam;
    }
    if (conf->session_cache == SG_SSL_CACHE_UNSET) {
        conf->session_cache = prev->session_cache == SG_SSL_CACHE_UNSET
                              ? SG_SSL_CACHE_NONE : prev->session_cache;
        conf->session_cache_size = prev->session_cache_size;
        conf->session_zone = prev->session_zone;
    }
    sg_conf_merge_msec(conf->session_timeout, prev->session_timeout, 300000);
    sg_conf_merge_value(conf->session_tickets, prev->session_tickets, 1);
    sg_conf_merge_value(conf->compact, prev->compact, 1);
    conf->srv.compact = (unsigned) conf->compact;
    sg_conf_merge_value(conf->greeting_in_handshake,
                        prev->greeting_in_handshake, 1);
    conf->srv.greeting_in_handshake = (unsigned) conf->greeting_in_handshake;
    sg_conf_merge_ptr(conf->ticket_keys, prev->ticket_keys, NULL);
    if (conf->client_certificate.data == NULL) {
        conf->client_certificate = prev->client_certificate;
    }
    if (conf->trusted_certificate.data == NULL) {
        conf->trusted_certificate = prev->trusted_certificate;
        conf->trusted_file = prev->trusted_file;
        conf->trusted_line = prev->trusted_line;
    }
    if (conf->enable == SG_CONF_UNSET) {
        conf->enable = prev->enable == SG_CONF_UNSET ? 0 : prev->enable;
        conf->enable_file = prev->enable_file;
        conf->enable_line = prev->enable_line;
    }
    conf->srv.implicit = (unsigned) conf->enable;
    sg_conf_merge_value(conf->verify_depth, prev->verify_depth, 1);
    if (conf->crl.data == NULL) {
        conf->crl = prev->crl;
    }
    if (conf->file.data == NULL) {
        conf->file = prev->file.data ? prev->file : sscf->file;
        conf->line = prev->file.data ? prev->line : sscf->line;
    }

    if (conf->certificates == NULL && conf->certificate_keys != NULL) {
        return sg_conf_error_at(cf, &sscf->file, sscf->line, "\"ssl_"
            "certificate_key\" without \"ssl_certificate\"");
    }
    if (conf->certificates == NULL) {
        if (conf->enable) {
            return sg_conf_error_at(cf, &conf->enable_file,
                conf->enable_line, "\"ssl on\" needs \"ssl_certificate\" "
                "and \"ssl_certificate_key\"");
        }
        if (conf->srv.starttls != SG_SSL_STARTTLS_OFF) {
            return sg_conf_error_at(cf, &sscf->file, sscf->line, "\"starttls"
                "\" needs \"ssl_certificate\" and \"ssl_certificate_key\"");
        }
        return SG_CONF_OK;
    }
    if (conf->certificate_keys == NULL) {
        return sg_conf_error_at(cf, &conf->file, conf->line, "no "
            "\"ssl_certificate_key\" for \"ssl_certificate\"");
    }
    return sg_ssl_build_ctx(cf, conf, sscf);
}

/*
 * After the handshake, on the server the session ended up with: a
 * resumed session must have been made by this server, and this server's
 * client certificate policy must hold, however the handshake went (a
 * session resumed under another name carries that server's checks, not
 * this one's).
 */
int
sg_ssl_check_session(sg_connection_t *c, sg_smtp_srv_conf_t *sscf)
{
    sg_ssl_conf_t        *scf = sscf->ctx->srv_conf[sg_ssl_module.ctx_index];
    sg_smtp_srv_conf_t   *made_by;
    const char           *host;
    sg_str_t              name;
    X509                 *peer;
    long                  verify;

    /* A session remembers the name it was made under; the server of
     * that name made it, and only that server may take it back. */
    if (SSL_session_reused(c->ssl)) {
        host = SSL_SESSION_get0_hostname(SSL_get_session(c->ssl));
        made_by = NULL;
        if (host) {
            name.data = (u_char *) host;
            name.len = strlen(host);
            made_by = sg_smtp_find_server(c, &name);
        }
        if (made_by == NULL) {
            made_by = sg_smtp_default_server(c);
        }
        if (made_by != sscf) {
            sg_log_error(SG_LOG_INFO, c->log, 0, "TLS session of server "
                         "\"%.*s\" resumed under \"%.*s\", closing",
                         SG_STR_ARG(&made_by->server_name),
                         SG_STR_ARG(&sscf->server_name));
            return SG_ERROR;
        }
    }
    if (scf->srv.verify == SG_SSL_VERIFY_OFF) {
        return SG_OK;
    }
    peer = SSL_get0_peer_certificate(c->ssl);
    verify = SSL_get_verify_result(c->ssl);
    if ((peer == NULL && scf->srv.verify == SG_SSL_VERIFY_ON)
        || (peer != NULL && verify != X509_V_OK))
    {
        sg_log_error(SG_LOG_INFO, c->log, 0, "client certificate %s "
                     "(ssl_verify_client %s), closing",
                     peer ? X509_verify_cert_error_string(verify) : "missing",
                     scf->srv.verify == SG_SSL_VERIFY_ON ? "on" : "optional");
        return SG_ERROR;
    }
    return SG_OK;
}
