/*
 * message.c: what smtpload sends, built once before any thread starts.
 *
 * The commands (EHLO, MAIL, one RCPT per recipient), the credentials of
 * every user as ready-to-send AUTH lines, and the message: `size` bytes
 * of CRLF lines (a few headers, then text lines of up to 78 characters,
 * some starting with a dot), dot-stuffed and followed by ".\r\n".  All
 * of it is shared read-only by the sessions, so a 10 MB message costs
 * 10 MB once, not once per session.
 *
 * It refuses: addresses or names with CR, LF or other control bytes,
 * and a --size too small for the headers.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "sl.h"

#define SL_LINE_TEXT 78

static bool
sl_clean(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char) *s < 0x20 || *s == 0x7f) {
            return false;
        }
    }
    return true;
}

static char *
sl_fmt(size_t *len, const char *fmt, const char *a, const char *b)
{
    int    n = snprintf(NULL, 0, fmt, a, b);
    char  *p;

    if (n < 0 || (p = malloc((size_t) n + 1)) == NULL) {
        return NULL;
    }
    snprintf(p, (size_t) n + 1, fmt, a, b);
    if (len) {
        *len = (size_t) n;
    }
    return p;
}

/* The i-th recipient: the --to address itself for the first, then
 * local+i@domain, so that a server that drops duplicates sees each. */
static char *
sl_rcpt(const sl_conf_t *conf, unsigned i, size_t *len)
{
    const char  *at = strchr(conf->to, '@');
    char         local[512], tag[32];

    if (i == 0 || at == NULL || (size_t) (at - conf->to) >= sizeof(local)) {
        return sl_fmt(len, "RCPT TO:<%s>%s\r\n", conf->to, "");
    }
    memcpy(local, conf->to, (size_t) (at - conf->to));
    local[at - conf->to] = '\0';
    snprintf(tag, sizeof(tag), "+%u", i);
    {
        char *addr = sl_fmt(NULL, "%s%s", local, tag);
        char *line;

        if (addr == NULL) {
            return NULL;
        }
        line = sl_fmt(len, "RCPT TO:<%s%s>\r\n", addr, at);
        free(addr);
        return line;
    }
}

int
sl_build_commands(sl_conf_t *conf)
{
    unsigned  i;
    size_t    max_rcpt = 0;

    if (!sl_clean(conf->ehlo) || !sl_clean(conf->from)
        || !sl_clean(conf->to))
    {
        fprintf(stderr, "smtpload: --ehlo, --from and --to must not hold "
                "control characters\n");
        return -1;
    }
    conf->ehlo_cmd = sl_fmt(&conf->ehlo_len, "EHLO %s%s\r\n", conf->ehlo,
                            "");
    conf->mail_cmd = sl_fmt(&conf->mail_len, "MAIL FROM:<%s>%s\r\n",
                            conf->from, "");
    conf->rcpt_cmd = calloc(conf->rcpts, sizeof(char *));
    conf->rcpt_len = calloc(conf->rcpts, sizeof(size_t));
    if (!conf->ehlo_cmd || !conf->mail_cmd || !conf->rcpt_cmd
        || !conf->rcpt_len)
    {
        return -1;
    }
    for (i = 0; i < conf->rcpts; i++) {
        conf->rcpt_cmd[i] = sl_rcpt(conf, i, &conf->rcpt_len[i]);
        if (conf->rcpt_cmd[i] == NULL) {
            return -1;
        }
        if (conf->rcpt_len[i] > max_rcpt) {
            max_rcpt = conf->rcpt_len[i];
        }
    }
    /* The longest batch: MAIL, every RCPT and DATA pipelined, or an
     * AUTH line.  Room for both, and for QUIT behind either. */
    conf->out_size = conf->mail_len + conf->rcpts * max_rcpt + 64
                     + conf->ehlo_len;
    for (i = 0; i < conf->ncreds; i++) {
        size_t n = strlen(conf->creds[i].plain) + 64;
        if (n > conf->out_size) {
            conf->out_size = n;
        }
    }
    return 0;
}

/* Appends one line of `len` text bytes (plus CRLF) to the wire form,
 * stuffing a leading dot. */
static char *
sl_put_line(char *p, const char *text, size_t len)
{
    if (len > 0 && text[0] == '.') {
        *p++ = '.';
    }
    memcpy(p, text, len);
    p += len;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

int
sl_build_body(sl_conf_t *conf)
{
    char        hdr[1024], line[SL_LINE_TEXT + 1];
    size_t      left, n, lineno = 0;
    char       *p;
    int         hlen = 0;
    int         pad;
    /* 26 starting points and 78 characters from each: 104 or more. */
    const char *alpha = "abcdefghijklmnopqrstuvwxyz0123456789"
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "abcdefghijklmnopqrstuvwxyz0123456789";

    /* One byte left over would fit no line: lengthen the subject. */
    for (pad = 0; pad < 2; pad++) {
        hlen = snprintf(hdr, sizeof(hdr),
                        "From: <%s>\r\nTo: <%s>\r\n"
                        "Subject: smtpload message of %zu bytes%s\r\n\r\n",
                        conf->from, conf->to, conf->size, pad ? "." : "");
        if (hlen < 0 || (size_t) hlen >= sizeof(hdr)) {
            return -1;
        }
        if (conf->size < (size_t) hlen || conf->size - (size_t) hlen != 1) {
            break;
        }
    }
    if (conf->size < (size_t) hlen) {
        fprintf(stderr, "smtpload: --size must be at least %d bytes with "
                "these addresses (the headers)\n", hlen);
        return -1;
    }
    /* Worst case every line is stuffed: one byte more per line of at
     * least 3 bytes, and the terminator. */
    conf->body = malloc(conf->size + conf->size / 3 + 16);
    if (conf->body == NULL) {
        return -1;
    }
    memcpy(conf->body, hdr, (size_t) hlen);
    p = conf->body + hlen;
    left = conf->size - (size_t) hlen;

    /* Invariant: left is 0 or at least 2 (a line is text + CRLF). */
    while (left > 0) {
        if (lineno % 64 == 7 && left >= 3 && left != 4) {
            /* A lone dot, which a server must not take for the end. */
            n = 1;
            line[0] = '.';
        } else {
            n = left - 2 < SL_LINE_TEXT ? left - 2 : SL_LINE_TEXT;
            if (left - (n + 2) == 1) {
                n--;
            }
            memcpy(line, alpha + lineno % 26, n);
            if (n > 0 && lineno % 16 == 5) {
                line[0] = '.';      /* stuffed on the wire */
            }
        }
        p = sl_put_line(p, line, n);
        left -= n + 2;
        lineno++;
    }
    memcpy(p, ".\r\n", 3);
    p += 3;
    conf->body_len = (size_t) (p - conf->body);
    return 0;
}

static char *
sl_b64_line(const char *data, size_t len, const char *prefix)
{
    size_t  plen = strlen(prefix);
    char   *out = malloc(plen + 4 * ((len + 2) / 3) + 3);
    int     n;

    if (out == NULL) {
        return NULL;
    }
    memcpy(out, prefix, plen);
    n = EVP_EncodeBlock((unsigned char *) out + plen,
                        (const unsigned char *) data, (int) len);
    memcpy(out + plen + n, "\r\n", 3);
    return out;
}

static int
sl_add_cred(sl_conf_t *conf, const char *user, const char *password)
{
    size_t     ul = strlen(user), pl = strlen(password);
    char      *msg;
    sl_cred_t *c, *creds;

    if (ul == 0 || ul > 255 || pl > 255) {
        fprintf(stderr, "smtpload: a user name must have 1 to 255 bytes "
                "and a password at most 255\n");
        return -1;
    }
    creds = realloc(conf->creds, (conf->ncreds + 1) * sizeof(sl_cred_t));
    if (creds == NULL) {
        return -1;
    }
    conf->creds = creds;
    c = &creds[conf->ncreds];
    msg = malloc(ul + pl + 2);
    if (msg == NULL) {
        return -1;
    }
    msg[0] = '\0';
    memcpy(msg + 1, user, ul);
    msg[1 + ul] = '\0';
    memcpy(msg + 2 + ul, password, pl);
    c->plain = sl_b64_line(msg, ul + pl + 2, "AUTH PLAIN ");
    c->login_user = sl_b64_line(user, ul, "");
    c->login_pass = sl_b64_line(password, pl, "");
    free(msg);
    if (!c->plain || !c->login_user || !c->login_pass) {
        return -1;
    }
    conf->ncreds++;
    return 0;
}

/* --users FILE: "user:password" per line; blank lines and lines starting
 * with '#' are skipped.  Or one --user/--password pair. */
int
sl_load_users(sl_conf_t *conf, const char *path, const char *user,
              const char *password)
{
    FILE     *f;
    char      buf[1024];
    unsigned  lineno = 0;

    if (path == NULL) {
        return sl_add_cred(conf, user ? user : "bench",
                           password ? password : "bench");
    }
    f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "smtpload: %s: %s\n", path, strerror(errno));
        return -1;
    }
    while (fgets(buf, sizeof(buf), f) != NULL) {
        size_t  len = strlen(buf);
        char   *colon;

        lineno++;
        if (len > 0 && buf[len - 1] != '\n' && !feof(f)) {
            fprintf(stderr, "smtpload: %s:%u: line too long\n", path, lineno);
            fclose(f);
            return -1;
        }
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) {
            buf[--len] = '\0';
        }
        if (len == 0 || buf[0] == '#') {
            continue;
        }
        colon = strchr(buf, ':');
        if (colon == NULL) {
            fprintf(stderr, "smtpload: %s:%u: expected \"user:password\"\n",
                    path, lineno);
            fclose(f);
            return -1;
        }
        *colon = '\0';
        if (sl_add_cred(conf, buf, colon + 1) != 0) {
            fprintf(stderr, "smtpload: %s:%u: bad entry\n", path, lineno);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    if (conf->ncreds == 0) {
        fprintf(stderr, "smtpload: %s: no users\n", path);
        return -1;
    }
    return 0;
}
