/*
 * test_access_log.c: unit tests for how the access log escapes values.
 *
 * The values are the client's (a user name, a certificate's subject):
 * every byte, every broken UTF-8 sequence, must come out as one line,
 * and in the json escape as a string jansson reads back to the same
 * text where the input was valid UTF-8.
 */
#include "sg_core.h"
#include "sg_access_log_escape.h"
#include "sg_test.h"
#include <jansson.h>

#define LIT(s) (s), (sizeof(s) - 1)

static size_t
esc(const char *in, size_t n, unsigned escape, u_char *out)
{
    const u_char  *p = sg_test_bytes(in, n);
    u_char        *end;

    end = sg_alog_escape(out, p, n, escape);
    CHECK((size_t) (end - out) <= n * sg_alog_escaped_max(escape));
    return (size_t) (end - out);
}

#define JSON(in, want)                                                         \
    do {                                                                       \
        u_char  out_[256];                                                     \
        size_t  n_ = esc(LIT(in), SG_ALOG_ESCAPE_JSON, out_);                  \
        CHECK_MEM(out_, n_, want, strlen(want));                               \
    } while (0)

#define TEXT(in, want)                                                         \
    do {                                                                       \
        u_char  out_[256];                                                     \
        size_t  n_ = esc(LIT(in), SG_ALOG_ESCAPE_DEFAULT, out_);               \
        CHECK_MEM(out_, n_, want, strlen(want));                               \
    } while (0)

static void
test_json_specials(void)
{
    JSON("alice", "alice");
    JSON("a\"b", "a\\\"b");
    JSON("a\\b", "a\\\\b");
    JSON("\r\n\t", "\\r\\n\\t");
    JSON("\x01\x1f\x7f", "\\u0001\\u001f\\u007f");
    JSON("", "");
    JSON("{\"user\":1}", "{\\\"user\\\":1}");
}

static void
test_json_utf8(void)
{
    JSON("\xc3\xa9", "\xc3\xa9");                          /* U+00E9 */
    JSON("\xe4\xb8\xad", "\xe4\xb8\xad");                  /* U+4E2D */
    JSON("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80");          /* U+1F600 */
    JSON("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf");          /* U+10FFFF */
    JSON("\xef\xbf\xbd", "\xef\xbf\xbd");                  /* U+FFFD */
    /* Invalid: each byte that cannot start a sequence is one U+FFFD. */
    JSON("\xff", "\\ufffd");
    JSON("\x80", "\\ufffd");
    JSON("\xc0\x80", "\\ufffd\\ufffd");                    /* overlong */
    JSON("\xc1\xbf", "\\ufffd\\ufffd");
    JSON("\xe0\x80\x80", "\\ufffd\\ufffd\\ufffd");         /* overlong */
    JSON("\xed\xa0\x80", "\\ufffd\\ufffd\\ufffd");         /* surrogate */
    JSON("\xf4\x90\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd");  /* > max */
    JSON("\xf5\x80\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd");
    JSON("\xf0\x80\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd");  /* overlong */
    /* Cut short: at the end, and before an ASCII byte. */
    JSON("a\xc3", "a\\ufffd");
    JSON("\xe4\xb8", "\\ufffd\\ufffd");
    JSON("\xe4\xb8(", "\\ufffd\\ufffd(");
    JSON("\xc3\"", "\\ufffd\\\"");
}

static void
test_default_escape(void)
{
    TEXT("alice", "alice");
    TEXT("a\"b\\c", "a\\x22b\\x5Cc");
    TEXT("\r\n\x01", "\\x0D\\x0A\\x01");
    TEXT("\x7f\xc3\xa9\xff", "\\x7F\\xC3\\xA9\\xFF");
    TEXT(" ~", " ~");
}

static void
test_utf8_lengths(void)
{
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("\xc3\xa9")), 2), 2);
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("\xc3\xa9")), 1), 0);
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("\xe4\xb8\xad")), 3), 3);
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("\xf0\x90\x80\x80")), 4), 4);
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("\xf0\x90\x80")), 3), 0);
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("\xc2\x7f")), 2), 0);
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("\xed\x9f\xbf")), 3), 3);
    CHECK_UINT(sg_alog_utf8(sg_test_bytes(LIT("a")), 1), 0);
}

/* Every single byte, and random strings: the json escape always makes
 * a string jansson accepts, and for valid UTF-8 input the very same
 * text; the default escape only printable ASCII without '"' or '\'
 * unescaped. */
static void
test_any_bytes(void)
{
    u_char        in[64], out[64 * 6 + 2], *copy;
    size_t        n, len, i, k;
    json_t       *j;
    json_error_t  err;
    uint32_t      x = 12345;
    bool          utf8;

    for (k = 0; k < 20000; k++) {
        if (k < 256) {
            in[0] = (u_char) k;
            n = 1;
        } else {
            n = k % sizeof(in);
            for (i = 0; i < n; i++) {
                x = x * 1103515245 + 12345;
                /* mostly high bytes, so that valid sequences occur */
                in[i] = (u_char) ((x >> 16) % 3 ? 0x80 | (x >> 8) : x >> 8);
            }
        }
        /* an exact-size copy, so that a read past it is caught */
        copy = malloc(n ? n : 1);
        if (copy == NULL) {
            CHECK(copy != NULL);
            return;
        }
        memcpy(copy, in, n);
        out[0] = '"';
        len = (size_t) (sg_alog_escape(out + 1, copy, n,
                                       SG_ALOG_ESCAPE_JSON) - out);
        out[len++] = '"';
        CHECK(memchr(out, '\n', len) == NULL);
        j = json_loadb((const char *) out, len,
                       JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        if (CHECK(j != NULL && json_is_string(j))) {
            sg_test_show("input", in, n);
            sg_test_show("json", out, len);
            json_decref(j);
            free(copy);
            continue;
        }
        for (i = 0, utf8 = true; i < n; i += len) {
            len = in[i] < 0x80 ? 1 : sg_alog_utf8(in + i, n - i);
            if (len == 0) {
                utf8 = false;
                break;
            }
        }
        if (utf8) {
            CHECK_MEM(json_string_value(j), json_string_length(j), in, n);
        }
        json_decref(j);

        len = (size_t) (sg_alog_escape(out, copy, n, SG_ALOG_ESCAPE_DEFAULT)
                        - out);
        free(copy);
        for (i = 0; i < len; i++) {
            if (out[i] < 0x20 || out[i] >= 0x7f || out[i] == '"') {
                break;
            }
        }
        if (CHECK(i == len)) {
            sg_test_show("input", in, n);
        }
    }
}

int
main(void)
{
    sg_test_start();

    RUN(test_json_specials);
    RUN(test_json_utf8);
    RUN(test_default_escape);
    RUN(test_utf8_lengths);
    RUN(test_any_bytes);

    return sg_test_finish();
}
