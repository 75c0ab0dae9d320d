/*
 * sg_proxy_int.h: what the files of the proxy module share: its
 * configuration, and the spool's forwarder (sg_proxy_forward.c), which
 * speaks to the backends with the mail block's proxy settings.
 */
#ifndef SG_PROXY_INT_H
#define SG_PROXY_INT_H

#include "sg_smtp.h"
#if (SG_HAVE_UPSTREAM_MODULE)
#include "sg_upstream.h"
#if (SG_HAVE_SSL_MODULE)
#include "sg_ssl.h"
#endif
#endif

#define SG_PROXY_SSL_OFF       0
#define SG_PROXY_SSL_ON        1
#define SG_PROXY_SSL_STARTTLS  2

extern sg_module_t  sg_proxy_module;

typedef struct sg_proxy_idle_s  sg_proxy_idle_t;

/* A file named by a directive, with where, for errors found later. */
typedef struct {
    sg_str_t      path;           /* first: sg_conf_set_path_slot's */
    sg_str_t      file;
    size_t        line;
} sg_proxy_file_t;

typedef struct {
    sg_str_t      pass_name;      /* proxy_pass as written */
    sg_str_t      pass_file;
    size_t        pass_line;
#if (SG_HAVE_UPSTREAM_MODULE)
    sg_upstream_t *upstream;      /* proxy_pass NAME | HOST:PORT */
#endif
    void         *pass_value;     /* proxy_pass $variable */
    void         *spool;          /* proxy_pass spool:DIR */
    bool          pass_set;

    sg_msec_t     connect_timeout;
    sg_msec_t     timeout;
    sg_msec_t     next_timeout;
    int64_t       next_tries;
    int           xclient;
    size_t        buffer_size;
    int           splice;
    int           strict;         /* proxy_strict */
    int           pass_error_message;
    unsigned      ssl;
    int           ssl_verify;
    int           ssl_compact;
    sg_proxy_file_t  ssl_trusted;
    sg_str_t      ssl_name;
    sg_proxy_file_t  ssl_certificate;
    sg_proxy_file_t  ssl_certificate_key;
#if (SG_HAVE_SSL_MODULE)
    sg_ssl_cert_info_t  ssl_cert_info;  /* proxy_ssl_certificate's dates */
#endif
    void         *ssl_ctx;
    int           smtp_auth;
    unsigned      proxy_protocol;
    unsigned      seen_caps;      /* this worker's last backend EHLO */
    int64_t       keepalive;      /* idle backend connections kept */
    int64_t       keepalive_requests;
    sg_msec_t     keepalive_timeout;
    sg_proxy_idle_t  *idle;       /* this worker's, newest first */
    size_t        nidle;

    /* The spool's forwarder (mail level only, sg_proxy_forward.c). */
    sg_msec_t     fwd_interval;
    sg_msec_t     fwd_retry_min;
    sg_msec_t     fwd_retry_max;
    sg_msec_t     fwd_lifetime;
    int64_t       fwd_connections;
    sg_msec_t     fwd_delay_warning;  /* 0: none */
    sg_str_t      fwd_host;       /* its EHLO name, its reports' host */
} sg_proxy_conf_t;

/* Merge conf from prev, without registering a relay. */
char *sg_proxy_merge_values(sg_conf_t *cf, sg_proxy_conf_t *prev,
    sg_proxy_conf_t *conf);
void *sg_proxy_create_conf(sg_conf_t *cf);
/* Close a backend connection, TLS and all. */
void sg_proxy_close_backend(sg_connection_t *c);

/* Called with the mail block's conf once per configuration, when its
 * servers are merged: checks the forwarding spools of every upstream
 * group and asks for the forwarder's process when there is one. */
char *sg_proxy_forward_init(sg_conf_t *cf, sg_proxy_conf_t *main);

#endif /* SG_PROXY_INT_H */
