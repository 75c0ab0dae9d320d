/*
 * fuzz_smtp_path.c: libFuzzer harness for the argument of MAIL and RCPT.
 *
 * Feeds arbitrary bytes to sg_smtp_parse_path(), as MAIL's argument
 * (null path allowed) and as RCPT's, and walks the parameters of an
 * accepted one with sg_smtp_next_param(), the way the spool does.
 * Beyond the sanitizers it checks what the spool relies on when it
 * copies an address into a header and a log line: every view lies
 * inside the argument, an address is at most SG_SMTP_PATH_MAX octets and
 * holds no control character, utf8 says whether it has 8-bit bytes, an
 * address put back between brackets parses to itself, and the
 * parameter walk makes progress, ends, and yields only well-formed
 * keywords and values.  The argument is an exact-size heap copy, so one
 * byte too far crashes.
 *
 * The same bytes go through xtext (the spool's attributes): encoded and
 * decoded they come back as they were, and decoded as they are they
 * either are refused or give at most as many octets, which encode back
 * to the same text when that text was in the canonical (upper-case)
 * form.
 */
#include "sg_core.h"
#include "sg_smtp_parse.h"
#include "sg_fuzz.h"


static bool
sg_fuzz_inside(const sg_str_t *v, const u_char *p, size_t n)
{
    return v->data >= p && v->data + v->len <= p + n;
}

static bool
sg_fuzz_alnum(u_char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
           || (c >= 'a' && c <= 'z');
}

static void
sg_fuzz_xtext(const u_char *p, size_t n)
{
    sg_str_t  src = { n, (u_char *) p }, enc;
    u_char   *a, *b;
    size_t    len, back;

    /* round trip */
    len = sg_smtp_xtext_encode(NULL, &src);
    a = malloc(len + 1);
    b = malloc(len + 1);
    SG_FUZZ_ASSERT(a && b);
    SG_FUZZ_ASSERT(sg_smtp_xtext_encode(a, &src) == len);
    enc.data = a;
    enc.len = len;
    SG_FUZZ_ASSERT(sg_smtp_xtext_decode(b, &enc, &back) == SG_OK);
    SG_FUZZ_ASSERT(back == n && memcmp(b, p, n) == 0);
    free(a);
    free(b);

    /* the bytes as they are */
    b = malloc(n + 1);
    SG_FUZZ_ASSERT(b);
    if (sg_smtp_xtext_decode(b, &src, &back) == SG_OK) {
        SG_FUZZ_ASSERT(back <= n);
        enc.data = b;
        enc.len = back;
        len = sg_smtp_xtext_encode(NULL, &enc);
        a = malloc(len + 1);
        SG_FUZZ_ASSERT(a);
        (void) sg_smtp_xtext_encode(a, &enc);
        if (len == n && memcmp(a, p, n) != 0) {
            /* only the case of hex digits may differ */
            for (len = 0; len < n; len++) {
                SG_FUZZ_ASSERT(a[len] == p[len]
                               || (a[len] | 0x20) == (p[len] | 0x20));
            }
        }
        free(a);
    }
    free(b);
}

static void
sg_fuzz_params(sg_str_t rest, const u_char *p, size_t n)
{
    sg_str_t  key, val;
    size_t    i, before, rounds = 0;
    int       rc;

    for ( ;; ) {
        before = rest.len;
        rc = sg_smtp_next_param(&rest, &key, &val);
        SG_FUZZ_ASSERT(rc == SG_OK || rc == SG_DONE || rc == SG_ERROR);
        SG_FUZZ_ASSERT(sg_fuzz_inside(&rest, p, n));
        if (rc == SG_DONE) {
            SG_FUZZ_ASSERT(rest.len == 0);
            return;
        }
        SG_FUZZ_ASSERT(rest.len < before);          /* progress */
        SG_FUZZ_ASSERT(++rounds <= n);
        if (rc == SG_ERROR) {
            return;
        }
        SG_FUZZ_ASSERT(sg_fuzz_inside(&key, p, n) && key.len > 0);
        SG_FUZZ_ASSERT(sg_fuzz_alnum(key.data[0]));
        for (i = 0; i < key.len; i++) {
            SG_FUZZ_ASSERT(sg_fuzz_alnum(key.data[i]) || key.data[i] == '-');
        }
        if (val.data != NULL) {
            SG_FUZZ_ASSERT(sg_fuzz_inside(&val, p, n) && val.len > 0);
            for (i = 0; i < val.len; i++) {
                SG_FUZZ_ASSERT(val.data[i] > 0x20 && val.data[i] != '='
                               && val.data[i] != 0x7f);
            }
        }
    }
}

/* "<addr>" after the prefix must give addr back, byte for byte. */
static void
sg_fuzz_reparse(const char *prefix, bool null, const sg_str_t *addr)
{
    sg_smtp_path_t  again;
    sg_str_t        args;
    size_t          n = strlen(prefix);

    args.len = n + addr->len + 2;
    args.data = malloc(args.len);
    SG_FUZZ_ASSERT(args.data != NULL);
    memcpy(args.data, prefix, n);
    args.data[n] = '<';
    memcpy(args.data + n + 1, addr->data, addr->len);
    args.data[args.len - 1] = '>';
    SG_FUZZ_ASSERT(sg_smtp_parse_path(&args, prefix, null, &again) == SG_OK);
    SG_FUZZ_ASSERT(again.addr.len == addr->len
                   && memcmp(again.addr.data, addr->data, addr->len) == 0);
    SG_FUZZ_ASSERT(again.params.len == 0);
    free(args.data);
}

static void
sg_fuzz_path(const u_char *p, size_t n, const char *prefix, bool null)
{
    sg_smtp_path_t  path;
    sg_str_t        args;
    bool            high = false;
    size_t          i;
    int             rc;

    args.data = (u_char *) p;
    args.len = n;
    rc = sg_smtp_parse_path(&args, prefix, null, &path);
    SG_FUZZ_ASSERT(rc == SG_OK || rc == SG_ERROR || rc == SG_DECLINED);
    if (rc != SG_OK) {
        return;
    }
    SG_FUZZ_ASSERT(sg_fuzz_inside(&path.addr, p, n));
    SG_FUZZ_ASSERT(sg_fuzz_inside(&path.params, p, n));
    SG_FUZZ_ASSERT(path.addr.len <= SG_SMTP_PATH_MAX);
    SG_FUZZ_ASSERT(path.addr.len > 0 || null);
    SG_FUZZ_ASSERT(path.params.len == 0 || path.params.data[0] != ' ');
    for (i = 0; i < path.addr.len; i++) {
        SG_FUZZ_ASSERT(path.addr.data[i] >= 0x20
                       && path.addr.data[i] != 0x7f);
        high |= path.addr.data[i] >= 0x80;
    }
    SG_FUZZ_ASSERT(high == path.utf8);
    sg_fuzz_reparse(prefix, null, &path.addr);
    sg_fuzz_params(path.params, p, n);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char  *p;

    p = sg_fuzz_copy(data, size);
    sg_fuzz_path(p, size, "FROM:", true);
    sg_fuzz_path(p, size, "TO:", false);
    sg_fuzz_xtext(p, size);
    free(p);
    return 0;
}
