/*
 * sg_auth_file.c: the local users file authentication backend.
 *
 * "auth_file PATH;" names a file of "user:hash[:route]" lines.  The file
 * is read and checked when the configuration loads (so a reload re-reads
 * it and a bad line is a FILE:LINE error that keeps the old
 * configuration), and looked up in memory afterwards.  Hashes are
 * verified with crypt(3) on the worker's thread pool, so a slow hash
 * never stalls other sessions.  Refuses hash formats libcrypt does not
 * verify, and clear-text passwords unless written as "{PLAIN}secret".
 * An unknown user costs the same hash work as a known one, so timing
 * does not tell which users exist.
 */
#include "sg_smtp.h"
#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define SG_AUTH_FILE_MAX      (64 * 1024 * 1024)
#define SG_AUTH_FILE_USER_MAX 255

typedef struct {
    sg_str_t   user;
    sg_str_t   hash;       /* NUL-terminated; "{PLAIN}..." kept as is */
    sg_str_t   route;      /* optional third column */
} sg_auth_user_t;

typedef struct {
    sg_str_t         path;
    sg_auth_user_t  *users;      /* open-addressing table */
    size_t           nslots;
    size_t           nusers;
} sg_auth_file_conf_t;

typedef struct {
    sg_task_t           task;
    sg_auth_request_t  *r;
    unsigned            mech;
    u_char              salt[SG_SMTP_CHALLENGE_MAX];
    size_t              salt_len;
    const sg_auth_user_t *entry;   /* NULL: unknown user */
    char                *pass;     /* copy, wiped in destroy */
    size_t               pass_len;
    bool                 ok;
    bool                 bad_pass; /* held a NUL: cannot match */
    bool                 inline_;  /* checked at once, answered from
                                      a posted event */
    sg_event_t           ev;
} sg_auth_file_task_t;

static char *sg_auth_file(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
static void *sg_auth_file_create_conf(sg_conf_t *cf);
static char *sg_auth_file_merge_conf(sg_conf_t *cf, void *prev, void *conf);
static int sg_auth_file_start(sg_auth_request_t *r, void *conf);
static void sg_auth_file_cancel(sg_auth_request_t *r, void *conf);

static const sg_command_t  sg_auth_file_commands[] = {
    { "auth_file", SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF | SG_CONF_TAKE1,
      sg_auth_file, SG_MAIL_SRV_CONF_OFFSET, 0, NULL },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_auth_file_module_ctx = {
    NULL, NULL, sg_auth_file_create_conf, sg_auth_file_merge_conf, NULL
};

sg_module_t  sg_auth_file_module = {
    .name = "auth_file",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_auth_file_module_ctx,
    .commands = sg_auth_file_commands,
};

/* Tokens (XOAUTH2, OAUTHBEARER) need a service that can check them. */
static const sg_smtp_auth_backend_t  sg_auth_file_backend = {
    "auth_file",
    SG_SMTP_AUTH_PLAIN | SG_SMTP_AUTH_LOGIN | SG_SMTP_AUTH_CRAM_MD5
    | SG_SMTP_AUTH_EXTERNAL | SG_SMTP_AUTH_NONE,
    false,
    sg_auth_file_start, sg_auth_file_cancel
};

/* A valid yescrypt hash of a random string: unknown users are checked
 * against it so that they take as long as known ones. */
static const char  sg_auth_file_dummy[] =
    "$y$j9T$hLGqNZKXI37DDCgWLo90A1$5bUaM2hM.x0FG.I311C/kSVy8NGfHg1Egs/DE3jzoz.";

static const sg_auth_user_t *
sg_auth_file_find(const sg_auth_file_conf_t *conf, const sg_str_t *user)
{
    size_t  i;

    if (conf->nslots == 0) {
        return NULL;
    }
    i = sg_hash(user->data, user->len) & (conf->nslots - 1);
    while (conf->users[i].user.data) {
        if (conf->users[i].user.len == user->len
            && memcmp(conf->users[i].user.data, user->data, user->len) == 0)
        {
            return &conf->users[i];
        }
        i = (i + 1) & (conf->nslots - 1);
    }
    return NULL;
}

static void *
sg_auth_file_create_conf(sg_conf_t *cf)
{
    return sg_pcalloc(cf->pool, sizeof(sg_auth_file_conf_t));
}

static char *
sg_auth_file_merge_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_auth_file_conf_t  *prev = parent, *conf = child;
    sg_smtp_srv_conf_t   *sscf;

    if (conf->path.data == NULL && prev->path.data) {
        *conf = *prev;
    }
    if (conf->path.data == NULL) {
        return SG_CONF_OK;
    }
    sscf = sg_smtp_conf_current(cf);
    if (sscf->auth && sscf->auth != &sg_auth_file_backend) {
        return sg_conf_error_at(cf, &sscf->file, sscf->line, "more than one "
                                "authentication backend for this server");
    }
    sscf->auth = &sg_auth_file_backend;
    sscf->auth_conf = conf;
    return SG_CONF_OK;
}

/* Loading. */

static bool
sg_auth_file_user_ok(const sg_str_t *u)
{
    size_t  i;

    if (u->len == 0 || u->len > SG_AUTH_FILE_USER_MAX) {
        return false;
    }
    for (i = 0; i < u->len; i++) {
        if (u->data[i] <= 0x20 || u->data[i] == 0x7f) {
            return false;
        }
    }
    return true;
}

/* Whether h is a whole hash and not a cut-off one or a bare setting
 * ("$6$salt"): crypt_checksalt() looks at the setting alone, and a
 * truncated hash would load and then refuse every password.  The hash
 * proper, after the last '$', has one length per scheme. */
static bool
sg_auth_file_hash_whole(const sg_str_t *h)
{
    size_t  i, dollars = 0, last = 0, want, min_dollars;
    u_char  c;

    if (h->data[1] == 'y') {
        want = 43;
        min_dollars = 4;                /* $y$params$salt$hash */
    } else if (h->data[1] == '7') {
        want = 43;
        min_dollars = 3;                /* $7$params+salt$hash */
    } else if (h->data[1] == '6') {
        want = 86;
        min_dollars = 3;                /* $6$[rounds=N$]salt$hash */
    } else {
        want = 53;
        min_dollars = 3;                /* $2b$cost$salt+hash */
    }
    for (i = 0; i < h->len; i++) {
        if (h->data[i] == '$') {
            dollars++;
            last = i;
        }
    }
    if (dollars < min_dollars || h->len - last - 1 != want) {
        return false;
    }
    for (i = last + 1; i < h->len; i++) {
        c = h->data[i];                 /* crypt's base64: ./0-9A-Za-z */
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
              || (c >= 'a' && c <= 'z') || c == '.' || c == '/'))
        {
            return false;
        }
    }
    return true;
}

/* NULL when the hash is one we can verify, else why not. */
static const char *
sg_auth_file_hash_error(const sg_str_t *h)
{
    if (h->len > 7 && memcmp(h->data, "{PLAIN}", 7) == 0) {
        return NULL;
    }
    if (h->len == 0) {
        return "empty password hash";
    }
    if (!(h->len > 3 && (memcmp(h->data, "$y$", 3) == 0
                         || memcmp(h->data, "$6$", 3) == 0
                         || memcmp(h->data, "$7$", 3) == 0))
        && !(h->len > 4 && (memcmp(h->data, "$2b$", 4) == 0
                            || memcmp(h->data, "$2y$", 4) == 0
                            || memcmp(h->data, "$2a$", 4) == 0)))
    {
        return "unsupported password hash: use yescrypt ($y$), SHA-512 "
               "($6$), bcrypt ($2b$), scrypt ($7$) or {PLAIN}secret";
    }
    if (crypt_checksalt((const char *) h->data) != CRYPT_SALT_OK
        || !sg_auth_file_hash_whole(h))
    {
        return "malformed or disabled password hash";
    }
    return NULL;
}

static int
sg_auth_file_insert(sg_auth_file_conf_t *conf, const sg_auth_user_t *u)
{
    size_t  i;

    i = sg_hash(u->user.data, u->user.len) & (conf->nslots - 1);
    while (conf->users[i].user.data) {
        if (conf->users[i].user.len == u->user.len
            && memcmp(conf->users[i].user.data, u->user.data, u->user.len)
               == 0)
        {
            return SG_DECLINED;
        }
        i = (i + 1) & (conf->nslots - 1);
    }
    conf->users[i] = *u;
    conf->nusers++;
    return SG_OK;
}

/* Split "user:hash[:route]" into u, copying into the cycle pool. */
static const char *
sg_auth_file_parse_line(sg_conf_t *cf, u_char *p, size_t len,
    sg_auth_user_t *u)
{
    u_char  *c1, *c2;

    c1 = memchr(p, ':', len);
    if (c1 == NULL) {
        return "expected \"user:hash\"";
    }
    u->user.data = p;
    u->user.len = (size_t) (c1 - p);
    c2 = memchr(c1 + 1, ':', (size_t) (p + len - c1 - 1));
    u->hash.data = c1 + 1;
    u->hash.len = (size_t) ((c2 ? c2 : p + len) - u->hash.data);
    u->route.len = 0;
    u->route.data = NULL;
    if (c2) {
        u->route.data = c2 + 1;
        u->route.len = (size_t) (p + len - u->route.data);
    }
    if (!sg_auth_file_user_ok(&u->user)) {
        return "invalid user name";
    }
    if (memchr(p, '\0', len)) {
        return "NUL byte in line";
    }
    u->user.data = sg_pstrdup(cf->pool, &u->user);
    u->hash.data = sg_pstrdup(cf->pool, &u->hash);
    if (u->user.data == NULL || u->hash.data == NULL) {
        return "out of memory";
    }
    if (u->route.len) {
        u->route.data = sg_pstrdup(cf->pool, &u->route);
        if (u->route.data == NULL) {
            return "out of memory";
        }
    }
    return sg_auth_file_hash_error(&u->hash);
}

static size_t
sg_auth_file_count_lines(const u_char *p, size_t n)
{
    size_t  lines = 1;

    while (n--) {
        lines += *p++ == '\n';
    }
    return lines;
}

static char *
sg_auth_file_load(sg_conf_t *cf, sg_auth_file_conf_t *conf)
{
    sg_auth_user_t  u;
    u_char         *data = NULL, *p, *end, *eol, *e;
    const char     *err;
    size_t          size = 0, lineno = 0, slots = 16;
    char           *rv;

    rv = sg_conf_read_whole(cf, &conf->path, SG_AUTH_FILE_MAX, &data, &size);
    if (rv != SG_CONF_OK) {
        return rv;
    }
    while (slots < 2 * sg_auth_file_count_lines(data, size)) {
        slots *= 2;
    }
    conf->nslots = slots;
    conf->users = sg_pcalloc(cf->pool, slots * sizeof(sg_auth_user_t));
    if (conf->users == NULL) {
        return SG_CONF_ERROR;
    }
    for (p = data, end = data + size; p < end; p = eol + 1) {
        lineno++;
        eol = memchr(p, '\n', (size_t) (end - p));
        if (eol == NULL) {
            eol = end;
        }
        e = eol;
        while (e > p && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) {
            e--;
        }
        while (p < e && (*p == ' ' || *p == '\t')) {
            p++;
        }
        if (p == e || *p == '#') {
            continue;
        }
        err = sg_auth_file_parse_line(cf, p, (size_t) (e - p), &u);
        if (err == NULL && sg_auth_file_insert(conf, &u) == SG_DECLINED) {
            err = "duplicate user";
        }
        if (err) {
            sg_wipe(data, size);
            return sg_conf_error_at(cf, &conf->path, lineno, "%s", err);
        }
    }
    sg_wipe(data, size);
    return SG_CONF_OK;
}

static char *
sg_auth_file(sg_conf_t *cf, const sg_command_t *cmd, void *conf)
{
    sg_auth_file_conf_t  *afc = conf;
    sg_str_t             *value = cf->args->elts;

    (void) cmd;
    if (afc->path.data) {
        return sg_conf_duplicate(cf);
    }
    afc->path = value[1];
    if (sg_conf_full_name(cf, &afc->path, true) != SG_OK) {
        return SG_CONF_ERROR;
    }
    return sg_auth_file_load(cf, afc);
}

/* Verification, on a pool thread. */

/* CRAM-MD5 (RFC 2195): the client proves it knows the clear secret by
 * HMAC-MD5 over our challenge; only {PLAIN} entries can take part. */
static bool
sg_auth_file_cram_md5(const sg_auth_file_task_t *at)
{
    static const char  hex[] = "0123456789abcdef";
    u_char             mac[EVP_MAX_MD_SIZE], want[32];
    size_t             maclen = 0, i;

    if (at->entry == NULL || at->entry->hash.len < 7 || at->pass_len != 32
        || memcmp(at->entry->hash.data, "{PLAIN}", 7) != 0)
    {
        return false;
    }
    if (EVP_Q_mac(NULL, "HMAC", NULL, "MD5", NULL,
                  at->entry->hash.data + 7, at->entry->hash.len - 7,
                  at->salt, at->salt_len, mac, sizeof(mac), &maclen) == NULL
        || maclen != 16)
    {
        return false;
    }
    for (i = 0; i < 16; i++) {
        want[2 * i] = (u_char) hex[mac[i] >> 4];
        want[2 * i + 1] = (u_char) hex[mac[i] & 0x0f];
    }
    return CRYPTO_memcmp(want, at->pass, 32) == 0;
}

static void
sg_auth_file_work(sg_task_t *t)
{
    sg_auth_file_task_t  *at = t->data;
    struct crypt_data    *cd;
    const char           *hash, *out;
    size_t                hlen;

    if (at->mech == SG_SMTP_AUTH_CRAM_MD5) {
        at->ok = sg_auth_file_cram_md5(at);
        return;
    }
    if (at->mech == SG_SMTP_AUTH_EXTERNAL) {
        at->ok = at->entry != NULL;     /* the certificate was the proof */
        return;
    }
    if (at->mech == SG_SMTP_AUTH_NONE) {
        /* "smtp_auth none": the operator lets unauthenticated sessions
         * through to the backend, which applies its own policy. */
        at->ok = true;
        return;
    }
    if (at->entry && at->entry->hash.len > 7
        && memcmp(at->entry->hash.data, "{PLAIN}", 7) == 0)
    {
        hlen = at->entry->hash.len - 7;
        at->ok = hlen == at->pass_len
                 && CRYPTO_memcmp(at->entry->hash.data + 7, at->pass,
                                  hlen) == 0;
        return;
    }
    hash = at->entry ? (const char *) at->entry->hash.data
                     : sg_auth_file_dummy;
    cd = calloc(1, sizeof(struct crypt_data));
    if (cd == NULL) {
        at->ok = false;
        return;
    }
    out = crypt_rn(at->pass, hash, cd, sizeof(struct crypt_data));
    at->ok = at->entry != NULL && out != NULL && out[0] != '*'
             && strlen(out) == strlen(hash)
             && CRYPTO_memcmp(out, hash, strlen(hash)) == 0;
    sg_wipe(cd, sizeof(struct crypt_data));
    free(cd);
}

static void
sg_auth_file_done(sg_task_t *t)
{
    sg_auth_file_task_t  *at = t->data;
    sg_auth_request_t    *r = at->r;

    r->backend_data = NULL;
    if (at->ok) {
        /* The third column names the backend: an upstream group, or
         * an address and port. */
        r->status = SG_AUTH_OK;
        if (at->entry && at->entry->route.len) {
            r->route.data = sg_pnalloc(r->pool, at->entry->route.len);
            if (r->route.data == NULL) {
                r->status = SG_AUTH_TEMPFAIL;
                r->reason = "out of memory";
            } else {
                memcpy(r->route.data, at->entry->route.data,
                       at->entry->route.len);
                r->route.len = at->entry->route.len;
            }
        }
    } else {
        r->status = SG_AUTH_FAIL;
        r->reason = at->entry ? "password mismatch"
                    : at->bad_pass ? "password contains a NUL byte"
                    : "unknown user";
    }
    r->done(r);
}

static void
sg_auth_file_destroy(sg_task_t *t)
{
    sg_auth_file_task_t  *at = t->data;

    sg_wipe(at->pass, at->pass_len);
    free(at->pass);
    free(at);
}

/* Checks that cost no hashing: a {PLAIN} entry (a memcmp), CRAM-MD5
 * (one HMAC), EXTERNAL and smtp_auth none.  Unknown users always go
 * through crypt(3) with the dummy hash, on the pool. */
static bool
sg_auth_file_cheap(const sg_auth_file_task_t *at)
{
    if (at->mech == SG_SMTP_AUTH_NONE || at->mech == SG_SMTP_AUTH_EXTERNAL
        || at->mech == SG_SMTP_AUTH_CRAM_MD5)
    {
        return true;
    }
    return at->entry && at->entry->hash.len > 7
           && memcmp(at->entry->hash.data, "{PLAIN}", 7) == 0;
}

static void
sg_auth_file_inline_done(sg_event_t *ev)
{
    sg_auth_file_task_t  *at = ev->data;

    sg_auth_file_done(&at->task);
    sg_auth_file_destroy(&at->task);
}

static int
sg_auth_file_start(sg_auth_request_t *r, void *conf)
{
    sg_auth_file_conf_t  *afc = conf;
    sg_auth_file_task_t  *at;

    at = calloc(1, sizeof(sg_auth_file_task_t));
    if (at == NULL) {
        return SG_ERROR;
    }
    at->task.data = at;                 /* destroy() finds it there */
    at->pass = malloc(r->pass.len + 1);
    if (at->pass == NULL) {
        free(at);
        return SG_ERROR;
    }
    if (r->pass.len) {
        memcpy(at->pass, r->pass.data, r->pass.len);
    }
    at->pass[r->pass.len] = '\0';
    at->pass_len = r->pass.len;
    at->r = r;
    at->mech = r->mech;
    if (r->salt.len > sizeof(at->salt)) {
        sg_auth_file_destroy(&at->task);
        return SG_ERROR;
    }
    if (r->salt.len) {
        memcpy(at->salt, r->salt.data, r->salt.len);
    }
    at->salt_len = r->salt.len;
    at->entry = sg_auth_file_find(afc, &r->user);
    if (r->pass.len && memchr(r->pass.data, '\0', r->pass.len)) {
        at->bad_pass = at->entry != NULL;   /* a NUL would cut it short */
        at->entry = NULL;
    }
    at->task.work = sg_auth_file_work;
    at->task.done = sg_auth_file_done;
    at->task.destroy = sg_auth_file_destroy;
    if (sg_auth_file_cheap(at)) {
        /* Nothing to hash: no trip through the thread pool, but the
         * answer still comes from the event loop, after start(). */
        sg_auth_file_work(&at->task);
        at->inline_ = true;
        at->ev.handler = sg_auth_file_inline_done;
        at->ev.data = at;
        at->ev.log = r->log;
        sg_event_post(&at->ev);
        r->backend_data = at;
        return SG_OK;
    }
    if (sg_task_post(&at->task, r->log) != SG_OK) {
        sg_auth_file_destroy(&at->task);
        return SG_ERROR;
    }
    r->backend_data = at;
    return SG_OK;
}

static void
sg_auth_file_cancel(sg_auth_request_t *r, void *conf)
{
    sg_auth_file_task_t  *at = r->backend_data;

    (void) conf;
    if (at && at->inline_) {
        sg_event_unpost(&at->ev);
        sg_auth_file_destroy(&at->task);
        r->backend_data = NULL;
    } else if (at) {
        sg_task_cancel(&at->task);
        r->backend_data = NULL;
    }
}
