/*
 * sg_ssl_variables.c: the TLS facts of a session as variables:
 * $ssl_protocol, $ssl_cipher and $ssl_client_s_dn.
 *
 * Owns only their getters; the values come from the connection's SSL
 * object and live in the session pool.  Each is empty until a TLS
 * handshake has completed, and each is NOCACHE: STARTTLS turns a
 * session that had no TLS into one that has it.
 */
#include "sg_ssl.h"
#include <openssl/x509.h>

typedef struct {
    unsigned  variables;        /* how many this module defined */
} sg_ssl_main_conf_t;

static int
sg_ssl_var_const(sg_smtp_session_t *s, sg_str_t *value, const char *text)
{
    (void) s;
    if (text == NULL || *text == '\0') {
        return SG_DECLINED;
    }
    value->data = (u_char *) text;    /* OpenSSL's static names */
    value->len = strlen(text);
    return SG_OK;
}

static int
sg_ssl_var_protocol(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    (void) data;
    if (!s->tls) {
        return SG_DECLINED;
    }
    return sg_ssl_var_const(s, value, sg_ssl_protocol(s->connection));
}

static int
sg_ssl_var_cipher(sg_smtp_session_t *s, sg_str_t *value, uintptr_t data)
{
    (void) data;
    if (!s->tls) {
        return SG_DECLINED;
    }
    return sg_ssl_var_const(s, value, sg_ssl_cipher(s->connection));
}

/* The client certificate's subject, RFC 2253 ("CN=alice,O=Example"), as
 * nginx's $ssl_client_s_dn; empty without a certificate. */
static int
sg_ssl_var_client_s_dn(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data)
{
    X509    *cert;
    BIO     *bio;
    char    *p;
    long     n;
    int      rc = SG_DECLINED;

    (void) data;
    if (!s->tls || s->connection->ssl == NULL) {
        return SG_DECLINED;
    }
    cert = SSL_get0_peer_certificate(s->connection->ssl);
    if (cert == NULL) {
        return SG_DECLINED;
    }
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL) {
        return SG_ERROR;
    }
    if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0,
                           XN_FLAG_RFC2253) >= 0)
    {
        n = BIO_get_mem_data(bio, &p);
        if (n > 0) {
            value->data = sg_pnalloc(s->pool, (size_t) n);
            if (value->data == NULL) {
                rc = SG_ERROR;
            } else {
                memcpy(value->data, p, (size_t) n);
                value->len = (size_t) n;
                rc = SG_OK;
            }
        }
    }
    BIO_free(bio);
    return rc;
}

static const struct {
    const char               *name;
    sg_smtp_variable_get_pt   get;
} sg_ssl_variables[] = {
    { "ssl_protocol", sg_ssl_var_protocol },
    { "ssl_cipher", sg_ssl_var_cipher },
    { "ssl_client_s_dn", sg_ssl_var_client_s_dn },
};

/* The mail-level create hook: the ssl module has no mail-level
 * settings, only its variables to define. */
void *
sg_ssl_create_main_conf(sg_conf_t *cf)
{
    sg_ssl_main_conf_t  *mcf;
    sg_str_t             name;
    size_t               i;

    mcf = sg_pcalloc(cf->pool, sizeof(sg_ssl_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }
    for (i = 0; i < sg_nelems(sg_ssl_variables); i++) {
        name.data = (u_char *) sg_ssl_variables[i].name;
        name.len = strlen(sg_ssl_variables[i].name);
        if (sg_smtp_add_variable(cf, &name, sg_ssl_variables[i].get, 0,
                                 SG_SMTP_VAR_NOCACHE | SG_SMTP_VAR_BUILTIN)
            != SG_OK)
        {
            return NULL;
        }
        mcf->variables++;
    }
    return mcf;
}
