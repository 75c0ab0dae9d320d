/*
 * reply.c: the SMTP reply parser, a pure function of bytes.
 *
 * The session cuts its input into lines and hands each one here; this
 * file decides whether the line belongs to a well-formed reply (three
 * digits, then a space, a hyphen or nothing; the same code on every line
 * of a multi-line reply) and keeps the first line's text for the failure
 * histogram.  Anything else is BAD, and the session gives up on the
 * connection: a server that sends garbage is not talked to further.
 */
#include <ctype.h>
#include <string.h>

#include "sl.h"

void
sl_reply_reset(sl_reply_t *r)
{
    r->code = 0;
    r->lines = 0;
    r->text[0] = '\0';
}

/* Copies len bytes of src as printable ASCII (others become '?'),
 * truncated to dst_size - 1, always NUL-terminated. */
void
sl_printable(char *dst, size_t dst_size, const char *src, size_t len)
{
    size_t  i;

    if (dst_size == 0) {
        return;
    }
    if (len > dst_size - 1) {
        len = dst_size - 1;
    }
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char) src[i];
        dst[i] = (ch >= 0x20 && ch < 0x7f) ? (char) ch : '?';
    }
    dst[len] = '\0';
}

sl_reply_rc_e
sl_reply_line(sl_reply_t *r, const char *line, size_t len)
{
    int   code;
    char  sep;

    if (len > 0 && line[len - 1] == '\r') {
        len--;
    }
    if (len < 3 || !isdigit((unsigned char) line[0])
        || !isdigit((unsigned char) line[1])
        || !isdigit((unsigned char) line[2]))
    {
        goto bad;
    }
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code < 200 || code > 599) {
        goto bad;
    }
    sep = len > 3 ? line[3] : ' ';
    if (sep != ' ' && sep != '-') {
        goto bad;
    }
    if (r->lines == 0) {
        r->code = code;
        sl_printable(r->text, sizeof(r->text), line, len);
    } else if (code != r->code) {
        goto bad;
    }
    if (++r->lines > SL_REPLY_LINES_MAX) {
        goto bad;
    }
    return sep == '-' ? SL_REPLY_MORE : SL_REPLY_DONE;

bad:
    if (r->lines == 0) {
        /* Keep what the server said, for the failure histogram. */
        sl_printable(r->text, sizeof(r->text), line, len);
    }
    return SL_REPLY_BAD;
}

/* True when an EHLO reply line ("250-KEYWORD params" or "250 KEYWORD")
 * names the extension keyword, in any case. */
bool
sl_reply_keyword(const char *line, size_t len, const char *keyword)
{
    size_t  klen = strlen(keyword), i;

    if (len > 0 && line[len - 1] == '\r') {
        len--;
    }
    if (len < 4 + klen) {
        return false;
    }
    line += 4;
    len -= 4;
    for (i = 0; i < klen; i++) {
        if (toupper((unsigned char) line[i]) != keyword[i]) {
            return false;
        }
    }
    return len == klen || line[klen] == ' ' || line[klen] == '=';
}
