/*
 * test_variables.c: unit tests for the pure parts of session variables:
 * the complex-value tokeniser and the rule for variable names.
 *
 * Every input is an exact-size heap copy, so a read past its end is a
 * sanitizer report.  The hostile cases ("$" at the end, "${" without
 * "}", names that start with a digit, control bytes, over-long names)
 * are the point.
 */
#include "sg_smtp.h"
#include "sg_test.h"

#define MAXTOK 16

typedef struct {
    sg_smtp_cv_token_e  type;
    sg_str_t            text;
    unsigned            capture;
} tok_t;

/* Tokenise s into out[]; returns the count, the last one END or ERROR. */
static size_t
tokens(const char *s, tok_t *out)
{
    size_t               n = strlen(s), i;
    const u_char        *p = sg_test_bytes(s, n), *end = p + n;
    sg_smtp_cv_token_t   t;

    for (i = 0; i < MAXTOK; i++) {
        out[i].type = sg_smtp_cv_token(&p, end, &t);
        out[i].text = t.text;
        out[i].capture = t.capture;
        if (out[i].type == SG_SMTP_CV_END || out[i].type == SG_SMTP_CV_ERROR)
        {
            if (out[i].type == SG_SMTP_CV_ERROR) {
                CHECK(t.err != NULL);
            }
            return i + 1;
        }
    }
    return i;
}

static void
test_plain_text(void)
{
    tok_t  t[MAXTOK];

    CHECK_UINT(tokens("127.0.0.1:25", t), 2);
    CHECK_INT(t[0].type, SG_SMTP_CV_TEXT);
    CHECK_STR(t[0].text, "127.0.0.1:25");
    CHECK_INT(t[1].type, SG_SMTP_CV_END);

    CHECK_UINT(tokens("", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_END);
}

static void
test_variables(void)
{
    tok_t  t[MAXTOK];

    CHECK_UINT(tokens("$auth_user", t), 2);
    CHECK_INT(t[0].type, SG_SMTP_CV_VAR);
    CHECK_STR(t[0].text, "auth_user");

    /* A name ends at the first byte that cannot be in one. */
    CHECK_UINT(tokens("[$remote_addr]:$server_port.x", t), 6);
    CHECK_STR(t[0].text, "[");
    CHECK_INT(t[1].type, SG_SMTP_CV_VAR);
    CHECK_STR(t[1].text, "remote_addr");
    CHECK_STR(t[2].text, "]:");
    CHECK_STR(t[3].text, "server_port");
    CHECK_STR(t[4].text, ".x");
    CHECK_INT(t[5].type, SG_SMTP_CV_END);

    /* Braces let text follow a name directly. */
    CHECK_UINT(tokens("${helo}x$a_1", t), 4);
    CHECK_INT(t[0].type, SG_SMTP_CV_VAR);
    CHECK_STR(t[0].text, "helo");
    CHECK_STR(t[1].text, "x");
    CHECK_STR(t[2].text, "a_1");

    /* Two variables back to back. */
    CHECK_UINT(tokens("$a$b", t), 3);
    CHECK_STR(t[0].text, "a");
    CHECK_STR(t[1].text, "b");
}

static void
test_captures(void)
{
    tok_t  t[MAXTOK];

    CHECK_UINT(tokens("127.0.0.1:$1", t), 3);
    CHECK_INT(t[1].type, SG_SMTP_CV_CAPTURE);
    CHECK_UINT(t[1].capture, 1);

    /* One digit only, as in nginx: "$12" is $1 then "2". */
    CHECK_UINT(tokens("$12", t), 3);
    CHECK_UINT(t[0].capture, 1);
    CHECK_STR(t[1].text, "2");

    CHECK_UINT(tokens("${0}0", t), 3);
    CHECK_INT(t[0].type, SG_SMTP_CV_CAPTURE);
    CHECK_UINT(t[0].capture, 0);
    CHECK_STR(t[1].text, "0");
}

static void
test_errors(void)
{
    tok_t  t[MAXTOK];

    CHECK_UINT(tokens("$", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("x$", t), 2);
    CHECK_INT(t[1].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("$-", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("${abc", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("${}", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("${1a}", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("${a b}", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("$\x01", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
    CHECK_UINT(tokens("$\xc3\xa9", t), 1);
    CHECK_INT(t[0].type, SG_SMTP_CV_ERROR);
}

static void
test_names(void)
{
    char      buf[200];
    sg_str_t  n;

#define NAME(lit) (n.data = sg_test_bytes(lit, sizeof(lit) - 1), \
                   n.len = sizeof(lit) - 1, &n)
    CHECK(sg_smtp_variable_name_ok(NAME("backend")));
    CHECK(sg_smtp_variable_name_ok(NAME("_x9")));
    CHECK(sg_smtp_variable_name_ok(NAME("Remote_Addr")));
    CHECK(!sg_smtp_variable_name_ok(NAME("")));
    CHECK(!sg_smtp_variable_name_ok(NAME("1abc")));
    CHECK(!sg_smtp_variable_name_ok(NAME("a-b")));
    CHECK(!sg_smtp_variable_name_ok(NAME("a b")));
    CHECK(!sg_smtp_variable_name_ok(NAME("$a")));
    CHECK(!sg_smtp_variable_name_ok(NAME("a\0b")));

    memset(buf, 'a', sizeof(buf));
    n.data = sg_test_bytes(buf, 128);
    n.len = 128;
    CHECK(sg_smtp_variable_name_ok(&n));
    n.data = sg_test_bytes(buf, 129);
    n.len = 129;
    CHECK(!sg_smtp_variable_name_ok(&n));
#undef NAME
}

int
main(void)
{
    sg_test_start();
    RUN(test_plain_text);
    RUN(test_variables);
    RUN(test_captures);
    RUN(test_errors);
    RUN(test_names);
    return sg_test_finish();
}
