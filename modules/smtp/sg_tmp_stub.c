/*
 * Complex values without variables: the text as written.  Variables
 * arrive with sg_smtp_variables.c, which replaces this file.
 */
#include "sg_smtp.h"

struct sg_smtp_complex_value_s {
    sg_str_t  text;
};

sg_smtp_complex_value_t *
sg_smtp_compile_complex_value(sg_conf_t *cf, const sg_str_t *src)
{
    sg_smtp_complex_value_t  *cv;

    if (memchr(src->data, '$', src->len)) {
        (void) sg_conf_error(cf, 0, "\"%.*s\": variables are not "
                             "supported by this build", SG_STR_ARG(src));
        return NULL;
    }
    cv = sg_pcalloc(cf->pool, sizeof(*cv));
    if (cv) {
        cv->text = *src;
    }
    return cv;
}

int
sg_smtp_complex_value(sg_smtp_session_t *s, const sg_smtp_complex_value_t *cv,
    sg_str_t *out)
{
    (void) s;
    *out = cv->text;
    return SG_OK;
}
