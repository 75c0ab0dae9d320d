/*
 * sg_smtp.h: the mail {} block, the SMTP front end, and the seams other
 * modules plug into.
 *
 * Seams:
 *   - auth backends (auth_file, auth_http, ...) register an
 *     sg_smtp_auth_backend_t on a server's conf; the session builds one
 *     sg_auth_request_t and gets the answer back asynchronously;
 *   - relays (proxy, spool, ...) register an sg_smtp_relay_t; after a
 *     successful AUTH the session hands itself to the relay, which either
 *     takes the session over (sg_smtp_relay_ready) or gives up
 *     (sg_smtp_relay_failed).
 * The session never names a particular backend or relay module.
 */
#ifndef SG_SMTP_H
#define SG_SMTP_H

#include "sg_core.h"
#include "sg_smtp_parse.h"

typedef struct {
    void  **main_conf;
    void  **srv_conf;
} sg_mail_conf_ctx_t;

#define SG_MAIL_MAIN_CONF_OFFSET  offsetof(sg_mail_conf_ctx_t, main_conf)
#define SG_MAIL_SRV_CONF_OFFSET   offsetof(sg_mail_conf_ctx_t, srv_conf)

typedef struct {
    /* cf->ctx is the mail block's context during the call, with the
     * confs of the modules before this one made: a module defines its
     * variables here (sg_smtp_add_variable). */
    void   *(*create_main_conf)(sg_conf_t *cf);
    char   *(*init_main_conf)(sg_conf_t *cf, void *conf);
    void   *(*create_srv_conf)(sg_conf_t *cf);
    /* cf->ctx is the server's sg_mail_conf_ctx_t during the call. */
    char   *(*merge_srv_conf)(sg_conf_t *cf, void *prev, void *conf);
    /* After every server is merged: cross-module checks. */
    char   *(*postconfiguration)(sg_conf_t *cf, void *srv_conf);
} sg_mail_module_ctx_t;

extern sg_module_t  sg_mail_module;    /* core: the mail {} block */
extern sg_module_t  sg_smtp_module;    /* mail: server {}, SMTP */

#define sg_mail_conf_srv(ctx, module)  ((ctx)->srv_conf[(module).ctx_index])
#define sg_mail_conf_main(ctx, module) ((ctx)->main_conf[(module).ctx_index])

typedef struct sg_smtp_session_s   sg_smtp_session_t;
typedef struct sg_auth_request_s   sg_auth_request_t;
typedef struct sg_smtp_var_cache_s sg_smtp_var_cache_t;

/* The longest reply the front end writes itself (the EHLO reply with
 * every capability included). */
#define SG_SMTP_REPLY_MAX      2048

/* starttls on|only|off (the directive belongs to the ssl module). */
#define SG_SMTP_STARTTLS_OFF   0
#define SG_SMTP_STARTTLS_ON    1
#define SG_SMTP_STARTTLS_ONLY  2

/* SASL mechanisms (smtp_auth). */
#define SG_SMTP_AUTH_PLAIN       0x0001
#define SG_SMTP_AUTH_LOGIN       0x0002
#define SG_SMTP_AUTH_CRAM_MD5    0x0004
#define SG_SMTP_AUTH_XOAUTH2     0x0008
#define SG_SMTP_AUTH_OAUTHBEARER 0x0010
#define SG_SMTP_AUTH_EXTERNAL    0x0020
#define SG_SMTP_AUTH_MECHS       0x003f
#define SG_SMTP_AUTH_NONE        0x0100

/* The mechanisms' names, for EHLO and logs. */
const char *sg_smtp_mech_name(unsigned mech);

typedef enum {
    SG_AUTH_OK = 0,
    SG_AUTH_FAIL,          /* wrong credentials: 535 */
    SG_AUTH_TEMPFAIL       /* backend unavailable: 454 */
} sg_auth_status_e;

/* The longest user name a client may log in with. */
#define SG_SMTP_LOGIN_MAX  255

/* The longest CRAM-MD5 challenge: "<20 digits.20 digits@server_name>"
 * with a server_name of up to 255 characters. */
#define SG_SMTP_CHALLENGE_MAX  320

struct sg_auth_request_s {
    sg_pool_t          *pool;          /* the session's */
    sg_log_t           *log;
    sg_connection_t    *connection;    /* client: address, TLS facts */
    unsigned            mech;          /* SG_SMTP_AUTH_* */
    sg_str_t            user;
    sg_str_t            pass;          /* password, CRAM-MD5 digest (hex)
                                          or OAuth token; wiped */
    sg_str_t            authzid;
    sg_str_t            salt;          /* the CRAM-MD5 challenge, up to
                                          SG_SMTP_CHALLENGE_MAX */
    sg_str_t            helo;
    sg_str_t            host;          /* sg_smtp_client_host() */
    sg_str_t            mail_from;     /* smtp_auth none: the envelope */
    sg_str_t            rcpt_to;
    unsigned            attempt;       /* 1 for the first AUTH */

    /* The answer, filled in by the backend before done(). */
    sg_auth_status_e    status;
    const char         *reason;        /* for the error log, never sent */
    sg_str_t            reply;         /* the reply to send on failure
                                          ("535 5.7.8 text"), if the
                                          backend chose one */
    sg_msec_t           wait;          /* hold a failure reply this long
                                          (Auth-Wait); 0: the default */
    sg_str_t            route;         /* an upstream group's name */
    sg_addr_t          *route_addr;    /* the backend to relay to: */
    size_t              route_naddrs;  /* addresses tried in order */
    sg_str_t            backend_user;  /* credentials for the backend */
    sg_str_t            backend_pass;

    void              (*done)(sg_auth_request_t *r);
    void               *data;          /* the session */
    unsigned            from_cache:1;
    void               *backend_data;  /* the backend's own state */
};

typedef struct {
    const char  *name;
    unsigned     mechs;         /* SG_SMTP_AUTH_* it can verify */
    bool         routes;        /* answers may name the backend */
    /* Start the check.  The answer must come through r->done(r) later,
     * never from inside start().  SG_ERROR: could not even start (the
     * session answers 454). */
    int        (*start)(sg_auth_request_t *r, void *conf);
    /* The session is going away: drop r, never call done(). */
    void       (*cancel)(sg_auth_request_t *r, void *conf);
} sg_smtp_auth_backend_t;

/* Extensions the front end may advertise only when the backends keep
 * them (smtp_capabilities lists them; the relay says what it has seen). */
#define SG_SMTP_CAP_CHUNKING   0x01
#define SG_SMTP_CAP_DSN        0x02
#define SG_SMTP_CAP_GATED      4          /* variants: every subset */

/* Service extensions a backend's EHLO may offer (smtp_capabilities auto
 * advertises those every healthy backend of the group offers).  The
 * first two are the SG_SMTP_CAP_* bits. */
#define SG_SMTP_EXT_CHUNKING     0x0001
#define SG_SMTP_EXT_DSN          0x0002
#define SG_SMTP_EXT_8BITMIME     0x0004
#define SG_SMTP_EXT_SMTPUTF8     0x0008
#define SG_SMTP_EXT_BINARYMIME   0x0010
#define SG_SMTP_EXT_SIZE         0x0020
#define SG_SMTP_EXT_PIPELINING   0x0040
#define SG_SMTP_EXT_ENHANCED     0x0080     /* ENHANCEDSTATUSCODES */
#define SG_SMTP_EXT_REQUIRETLS   0x0100
#define SG_SMTP_EXT_ALL          0x01ff
#define SG_SMTP_EXT_N            9
/* The keyword of an SG_SMTP_EXT_* bit ("CHUNKING"). */
const char *sg_smtp_ext_name(unsigned ext);

typedef struct {
    const char  *name;
    /* Take over an authenticated session: connect, hand-shake, then
     * sg_smtp_relay_ready() or sg_smtp_relay_failed(). */
    void       (*start)(sg_smtp_session_t *s, void *conf);
    /* Which SG_SMTP_CAP_* the backends were last seen to support. */
    unsigned   (*caps)(void *conf);
    /* smtp_capabilities auto: the SG_SMTP_EXT_* every healthy backend
     * offers and their smallest SIZE; false when not known (yet). */
    bool       (*ext)(void *conf, unsigned *ext, int64_t *size);
    /* Whether the relay has a backend of its own (false: it needs the
     * auth backend's answer to name one). */
    bool       (*routed)(void *conf);
} sg_smtp_relay_t;

/* One server_name: "mx.example.org", "*.example.org", ".example.org"
 * or "~regex". */
#define SG_SMTP_NAME_EXACT     0
#define SG_SMTP_NAME_WILDCARD  1     /* "*.example.org" */
#define SG_SMTP_NAME_DOMAIN    2     /* ".example.org": itself and below */
#define SG_SMTP_NAME_REGEX     3

typedef struct {
    sg_str_t      name;                  /* without "*" / "~" */
    sg_regex_t   *regex;
    unsigned      kind;
} sg_smtp_name_t;

/* What runs as a session opens or closes (the access log, the status
 * counters). */
typedef void (*sg_smtp_hook_pt)(sg_smtp_session_t *s, void *conf);

typedef struct {
    sg_smtp_hook_pt   handler;
    void             *conf;
} sg_smtp_hook_t;

#define SG_SMTP_HOOKS_MAX  4

/* Whether the client may be served: SG_OK; SG_DECLINED, refused for
 * good (554, then 503 until QUIT); SG_BUSY, not now (421 and close).
 * The check logs why. */
typedef int (*sg_smtp_check_pt)(sg_smtp_session_t *s, void *conf);

typedef struct {
    sg_smtp_check_pt  check;
    void             *conf;
} sg_smtp_check_t;

/* The steps of a mail transaction that limits count (limit_message,
 * limit_recipient). */
#define SG_SMTP_STEP_MAIL  0
#define SG_SMTP_STEP_RCPT  1

/* Whether the session may take one more step: SG_OK (counted), or
 * SG_BUSY, not now: the MAIL or RCPT is refused with
 * sg_smtp_step_refusal() and never reaches a backend.  The check logs
 * why.  At a MAIL, s->mail_from holds its sender. */
typedef int (*sg_smtp_step_pt)(sg_smtp_session_t *s, unsigned step,
    void *conf);

typedef struct {
    sg_smtp_step_pt   check;
    void             *conf;
} sg_smtp_step_t;

typedef struct {
    sg_mail_conf_ctx_t            *ctx;
    sg_str_t                       file;      /* where the block is */
    size_t                         line;
    const char                    *skipped;   /* "imap", "pop3": an nginx
                                                 server not served */
    sg_log_sink_t                 *logs;      /* error_log here: each
                                                 target, in order */
    int                            log_level; /* the most verbose */

    sg_str_t                       server_name;   /* the greeting name */
    sg_str_t                       label;     /* unique among the servers:
                                                 "NAME", "NAME#2"... */
    sg_array_t                    *names;         /* sg_smtp_name_t */
    sg_msec_t                      timeout;
    int64_t                        max_errors;
    sg_msec_t                      greeting_delay;
    int64_t                        auth_attempts;
    sg_msec_t                      auth_fail_delay;
    sg_msec_t                      auth_timeout;
    sg_shm_zone_t                 *auth_cache;     /* auth_cache */
    sg_msec_t                      cache_ttl;
    sg_msec_t                      cache_negative_ttl;
    sg_shm_zone_t                 *fail_limit;     /* auth_fail_limit */
    int64_t                        fail_limit_address;
    int64_t                        fail_limit_user;
    sg_msec_t                      fail_limit_window;
    size_t                         client_buffer;
    unsigned                       auth_methods;
    int                            auth_require_tls;
    sg_array_t                    *capabilities;   /* sg_str_t */
    sg_resolver_t                 *resolver;       /* NULL: client host
                                                      names unlooked */
    sg_msec_t                      resolver_timeout;
    int64_t                        size_limit;     /* "SIZE n", 0: none */

    /* Prebuilt replies. */
    sg_str_t                       greeting;
    sg_str_t                       helo_reply;
    /* EHLO replies by the subset of SG_SMTP_CAP_* the backends keep. */
    sg_str_t                       ehlo_reply[SG_SMTP_CAP_GATED];
    sg_str_t                       ehlo_reply_tls[SG_SMTP_CAP_GATED];
    unsigned                       starttls;          /* SG_SSL_STARTTLS_* */

    const sg_smtp_auth_backend_t  *auth;
    void                          *auth_conf;
    const sg_smtp_relay_t         *relay;
    void                          *relay_conf;
    unsigned                       relay_wants_pass:1;  /* keep the
                                      client's password for the relay
                                      (proxy_smtp_auth) */
    unsigned                       caps_auto:1;   /* smtp_capabilities
                                                     auto */

    /* Modules' hooks (sg_smtp_add_hook): open ones run as a session
     * starts (those of the address's default server), close ones as it
     * closes, before anything of it is freed (those of the server that
     * handled it). */
    sg_smtp_hook_t                 open_hooks[SG_SMTP_HOOKS_MAX];
    sg_smtp_hook_t                 close_hooks[SG_SMTP_HOOKS_MAX];
    unsigned                       nopen_hooks;
    unsigned                       nclose_hooks;
    /* Checks (sg_smtp_add_check) run as the session starts, after any
     * PROXY header and before TLS, those of the address's default
     * server: one that says SG_DECLINED refuses the client. */
    sg_smtp_check_t                checks[SG_SMTP_HOOKS_MAX];
    unsigned                       nchecks;
    /* Login checks (sg_smtp_add_check, login): run as a login succeeds
     * (AUTH, or an anonymous session accepted), those of the server
     * that handles the session: one that says SG_BUSY turns the login
     * into a temporary failure. */
    sg_smtp_check_t                login_checks[SG_SMTP_HOOKS_MAX];
    unsigned                       nlogin_checks;
    /* Step checks (sg_smtp_add_step_check): asked by whoever takes a
     * MAIL or a RCPT of the server's sessions (smtpgate itself, the
     * spool, the relay, which then reads the session strictly). */
    sg_smtp_step_t                 step_checks[SG_SMTP_HOOKS_MAX];
    unsigned                       nstep_checks;
    /* smtp_sender_allow: a MAIL is taken only when this is neither
     * empty nor "0"; NULL: any sender. */
    struct sg_smtp_complex_value_s  *sender_allow;
    sg_str_t                       sender_allow_file;
    size_t                         sender_allow_line;
} sg_smtp_srv_conf_t;

int sg_smtp_add_check(sg_smtp_srv_conf_t *sscf, sg_smtp_check_pt check,
    void *conf);
int sg_smtp_add_login_check(sg_smtp_srv_conf_t *sscf,
    sg_smtp_check_pt check, void *conf);
int sg_smtp_add_step_check(sg_smtp_srv_conf_t *sscf, sg_smtp_step_pt check,
    void *conf);
/* Whether a MAIL or RCPT of the server's sessions is checked (a step
 * check or smtp_sender_allow): the relay then reads them strictly. */
#define sg_smtp_steps_checked(sscf)                                         \
    ((sscf)->nstep_checks != 0 || (sscf)->sender_allow != NULL)
/* Ask the server's checks before a MAIL or RCPT (args: what follows the
 * verb and its space) is taken: SG_OK; or refuse it with
 * sg_smtp_step_refusal() for SG_ERROR (a MAIL whose sender cannot be
 * read, when checks need it), SG_DECLINED (smtp_sender_allow says no)
 * or SG_BUSY (over a limit). */
int sg_smtp_step(sg_smtp_session_t *s, unsigned step, const sg_str_t *args);
/* The reply to a step refused (no CRLF). */
const char *sg_smtp_step_refusal(unsigned step, int rc);
/* Answer a step refused with it, as smtpgate answers the command itself
 * (the spool, smtp_auth none): a limit's 450 is no error of the
 * client's (it does not count towards max_errors, as a relayed
 * session's would not), a sender refused or unreadable is. */
int sg_smtp_step_refuse(sg_smtp_session_t *s, unsigned step, int rc);

/* Add a hook to a server, from a module's postconfiguration.  SG_OK, or
 * SG_ERROR when the server has SG_SMTP_HOOKS_MAX of that kind already
 * (a build error: more modules than slots). */
int sg_smtp_add_hook(sg_smtp_srv_conf_t *sscf, bool close,
    sg_smtp_hook_pt handler, void *conf);

/* What a listening socket serves: the servers sharing its address. */
typedef struct {
    sg_smtp_srv_conf_t   *default_server;
    sg_array_t            servers;       /* sg_smtp_srv_conf_t * */
    int                   ipv6only;      /* as listed; -1: not said */
    unsigned              explicit_default:1;
    unsigned              ssl:1;         /* implicit TLS */
    unsigned              proxy_protocol:1;  /* a PROXY header first */
} sg_smtp_addr_conf_t;

typedef enum {
    SG_SMTP_ST_COMMAND = 0,
    SG_SMTP_ST_AUTH_STEP,         /* waiting for a SASL response */
    SG_SMTP_ST_AUTH_OAUTH_ERROR,  /* OAuth error sent, awaiting the ack */
    SG_SMTP_ST_AUTH_WAIT,         /* the auth backend is deciding */
    SG_SMTP_ST_AUTH_DELAY,        /* holding a failure reply back */
    SG_SMTP_ST_GREETING_DELAY,    /* smtp_greeting_delay running */
    SG_SMTP_ST_RELAY_START,       /* the relay is connecting */
    SG_SMTP_ST_RELAY,             /* the relay owns the session */
    SG_SMTP_ST_CLOSING
} sg_smtp_state_e;

/* A login in progress, the session's AUTH history, and the envelope
 * an anonymous session (smtp_auth none) keeps to replay: apart from the
 * session, so that a session that never logs in does not carry it. */
typedef struct {
    u_char                *secret;       /* decoded SASL data, wiped */
    size_t                 secret_size;
    sg_str_t               salt;         /* CRAM-MD5 challenge */
    unsigned               step;
    unsigned               attempts;     /* AUTH commands so far */
    unsigned               failures;
    unsigned               tempfails;    /* answered 454 (or 451 under
                                            smtp_auth none): no backend
                                            answer, or a login limit */
    sg_str_t               mail_line;    /* smtp_auth none: replayed */
    sg_str_t               rcpt_line;
} sg_smtp_sasl_t;

/* The anonymous envelope: whether a MAIL is kept, and forgetting it. */
#define sg_smtp_has_mail(s)                                                  \
    ((s)->sasl != NULL && (s)->sasl->mail_line.len != 0)
#define sg_smtp_forget_envelope(s)                                           \
    do {                                                                     \
        if ((s)->sasl) {                                                     \
            (s)->sasl->mail_line.len = 0;                                    \
            (s)->sasl->rcpt_line.len = 0;                                    \
        }                                                                    \
    } while (0)

/* s->sasl, taken when missing; NULL when out of memory. */
sg_smtp_sasl_t *sg_smtp_sasl(sg_smtp_session_t *s);

struct sg_smtp_session_s {
    sg_connection_t       *connection;
    sg_smtp_srv_conf_t    *conf;
    sg_pool_t             *pool;
    sg_log_t              *log;

    sg_buf_t               in;
    sg_buf_t               out;

    sg_smtp_state_e        state;
    unsigned               errors;

    sg_smtp_session_t     *prev;         /* the worker's open sessions */
    sg_smtp_session_t     *next;

    sg_str_t               helo;
    sg_str_t               login;
    sg_smtp_sasl_t        *sasl;         /* taken by the first AUTH, or
                                            by MAIL with smtp_auth none */
    sg_auth_request_t     *auth;

    void                  *relay_ctx;
    sg_smtp_var_cache_t   *variables;    /* values read so far; made on
                                            the first read */
    sg_event_t            *timer;        /* delays and the auth timeout,
                                            taken on first use */
    void                  *host;         /* with a resolver: the lookup
                                            (sg_resolve_host_t) while it
                                            runs, then the name found
                                            (NUL-terminated) or NULL;
                                            malloc'd, so that an idle
                                            session's pool keeps its
                                            size */
    void                 (*host_then)(sg_smtp_session_t *s);  /* what
                                            waits for the name */
    unsigned               auth_mech;
    const char            *status;       /* how it ended: SG_SMTP_END_* */
    sg_msec_t              start;        /* accepted (monotonic) */
    /* Timings ($auth_time, $upstream_connect_time, the status
     * listener's histograms); -1: not measured. */
    sg_msec_t              auth_began;   /* the last AUTH's request */
    int64_t                auth_time;    /* ms it took, cache or backend */
    int64_t                upstream_connect_time;  /* ms from the try
                                            that took the session to its
                                            backend being ready */
    uint64_t               messages;     /* accepted by the backend */
    uint32_t               limited[2];   /* MAIL, RCPT refused by step
                                            checks (SG_SMTP_STEP_*) */
    uint32_t               senders_refused;  /* by smtp_sender_allow */
    sg_str_t               mail_from;    /* the last MAIL's sender, as
                                            checked ($mail_from) */
    const sg_str_t        *upstream;     /* the relay's backend, the last
                                            tried ("192.0.2.9:25") */

    unsigned               auth_result:2;    /* the last AUTH's:
                                                SG_SMTP_AUTH_RESULT_* */
    unsigned               denied:1;     /* refused by a check: 554,
                                            then 503 until QUIT */
    unsigned               esmtp:1;
    unsigned               skipping:1;   /* dropping an over-long line */
    unsigned               quit:1;       /* close once out is flushed */
    unsigned               tls:1;
    unsigned               starttls:1;   /* 220 sent, handshake next */
    unsigned               implicit_tls:1;
    unsigned               tls_early:1;  /* implicit TLS: the handshake
                                            stepped to its first flight */
    unsigned               greeted:1;    /* the 220 rode with it */
    unsigned               host_pending:1;   /* the name is being
                                                looked up */
    unsigned               host_status:2;    /* SG_RESOLVE_*, once
                                                looked up */
};

/* How a session ended ($status), set where the cause is known; the
 * first cause set wins.  A session closed with none set ended "refused"
 * when smtpgate had decided to close it (s->quit), "shutdown" when the
 * worker was stopping, else "error". */
#define SG_SMTP_END_QUIT             "quit"
#define SG_SMTP_END_CLOSED           "closed"
#define SG_SMTP_END_TIMEOUT          "timeout"
#define SG_SMTP_END_TLS_ERROR        "tls_error"
#define SG_SMTP_END_REFUSED          "refused"
#define SG_SMTP_END_DENIED           "denied"
#define SG_SMTP_END_LIMITED          "limited"
#define SG_SMTP_END_BACKEND_ERROR    "backend_error"
#define SG_SMTP_END_BACKEND_CLOSED   "backend_closed"
#define SG_SMTP_END_BACKEND_REFUSED  "backend_refused"
#define SG_SMTP_END_SHUTDOWN         "shutdown"
#define SG_SMTP_END_ERROR            "error"

#define sg_smtp_set_end(s, why)                                             \
    do {                                                                     \
        if ((s)->status == NULL) {                                           \
            (s)->status = (why);                                             \
        }                                                                    \
    } while (0)

#define SG_SMTP_AUTH_RESULT_NONE      0
#define SG_SMTP_AUTH_RESULT_OK        1
#define SG_SMTP_AUTH_RESULT_FAILED    2
#define SG_SMTP_AUTH_RESULT_TEMPFAIL  3

/* ---- variables (sg_smtp_variables.c) ---------------------------------
 *
 * Named values of a session ("$remote_addr", "$auth_user", a map's
 * result), computed on demand.  Modules define them while the
 * configuration loads: from a mail module's create_main_conf (cf->ctx is
 * the mail block's context then, and the smtp module's main conf, which
 * holds the registry, is made first) or while parsing a block inside
 * mail {} (map).  Users (map, proxy_pass $var, hash keys) turn a name
 * into an index at configuration time and read the value by index at
 * run time.  Names are letters, digits and '_', not starting with a
 * digit, compared without regard to ASCII case.
 *
 * A value is computed on its first read in a session and kept for the
 * rest of it, unless the variable is SG_SMTP_VAR_NOCACHE (it may change
 * during the session: $helo, $auth_user, the TLS facts, ...); then
 * every read computes it again.  A variable defined in terms of others
 * (sg_smtp_variable_depends) becomes NOCACHE when any of them is, and a
 * cycle among such definitions is a configuration error.
 */
typedef int (*sg_smtp_variable_get_pt)(sg_smtp_session_t *s, sg_str_t *value,
    uintptr_t data);               /* SG_OK, or SG_DECLINED: not set (empty) */
#define SG_SMTP_VAR_NOCACHE  0x01   /* may change during the session */
#define SG_SMTP_VAR_BUILTIN  0x02   /* a module's own: the configuration
                                       cannot define the name again */
#define SG_SMTP_VAR_LOGIN    0x04   /* known once the client logged in */

/* The longest value a complex value may produce; longer is an error
 * (logged) and reads as empty. */
#define SG_SMTP_VALUE_MAX    65536

/* Define a variable (from a module's preconfiguration or while parsing
 * its block, e.g. map).  Defining the same name twice is an error.  The
 * getter's value must stay valid for the session (s->pool, the
 * configuration, the connection).  SG_OK, or SG_ERROR after
 * sg_conf_error. */
int sg_smtp_add_variable(sg_conf_t *cf, const sg_str_t *name,
    sg_smtp_variable_get_pt get, uintptr_t data, unsigned flags);
/* Add SG_SMTP_VAR_* flags to a variable defined earlier (a map's
 * "volatile", known only at the end of its block).  SG_OK. */
int sg_smtp_variable_flags(sg_conf_t *cf, size_t index, unsigned flags);
/* Index of a variable by name (without '$').  The variable may be
 * defined later in the file: unknown names are checked after the whole
 * configuration is read and reported with the file:line of the first use.
 * -1 after sg_conf_error (an invalid name). */
ssize_t sg_smtp_variable_index(sg_conf_t *cf, const sg_str_t *name);
/* The value at run time; never NULL (empty when not set).  Cached per
 * session unless NOCACHE; for a NOCACHE variable the pointed-to value
 * holds until the next read of the same variable: copy the sg_str_t. */
const sg_str_t *sg_smtp_variable_value(sg_smtp_session_t *s, size_t index);

/* "text $var ${var}text $1" compiled once at configuration time. */
typedef struct sg_smtp_complex_value_s  sg_smtp_complex_value_t;
sg_smtp_complex_value_t *sg_smtp_compile_complex_value(sg_conf_t *cf,
    const sg_str_t *src);        /* NULL after sg_conf_error */
/* Evaluate into a string allocated from s->pool (a static value points
 * at the configuration's bytes, a lone "$var" at the variable's value).
 * Read-only.  SG_OK, or SG_ERROR (logged; out is empty). */
int sg_smtp_complex_value(sg_smtp_session_t *s,
    const sg_smtp_complex_value_t *cv, sg_str_t *out);
bool sg_smtp_complex_value_is_static(const sg_smtp_complex_value_t *cv);
/* The text as written in the configuration, for log lines. */
const sg_str_t *sg_smtp_complex_value_text(const sg_smtp_complex_value_t *cv);

/*
 * Captures.  "$1".."$9" ("$0": the whole match) and "$name" for a named
 * group "(?<name>...)" refer to the captures of a regex, which exist
 * only where a regex matched: they are allowed only in a value compiled
 * with sg_smtp_compile_complex_value_re() for that regex (a map's
 * "~regex value" entry; "$name" is a capture when the regex has a group
 * of that name, a variable otherwise), and anywhere else "$1" is a
 * configuration error.  No capture state lives in the session: whoever
 * matched passes the captures to sg_smtp_complex_value_captures(), for
 * that one evaluation.  Variables read during it (a map's value naming
 * another map) evaluate with their own captures, never these.
 */
#define SG_SMTP_CAPTURES_MAX  32    /* groups a value can refer to */

typedef struct {
    sg_str_t        subject;        /* the string the regex matched */
    const size_t   *caps;           /* offset pairs from sg_regex_exec */
    size_t          n;              /* pairs set: its return value */
} sg_smtp_captures_t;

sg_smtp_complex_value_t *sg_smtp_compile_complex_value_re(sg_conf_t *cf,
    const sg_str_t *src, const sg_regex_t *re);
int sg_smtp_complex_value_captures(sg_smtp_session_t *s,
    const sg_smtp_complex_value_t *cv, const sg_smtp_captures_t *captures,
    sg_str_t *out);

/* The variable at index is computed from the one at "on" (a map's
 * result from its source): it is NOCACHE when "on" is, and a cycle is
 * an error reported at the current directive.  SG_OK or SG_ERROR. */
int sg_smtp_variable_depends(sg_conf_t *cf, size_t index, size_t on);
/* The same for every variable cv reads. */
int sg_smtp_complex_value_depends(sg_conf_t *cf, size_t index,
    const sg_smtp_complex_value_t *cv);

/* Whether cv reads a variable with flag (SG_SMTP_VAR_*), directly or
 * through the variables it reads (a map of $auth_user, say).  For a
 * module's postconfiguration: every map is known by then. */
bool sg_smtp_complex_value_reads(sg_conf_t *cf,
    const sg_smtp_complex_value_t *cv, unsigned flag);

bool sg_smtp_variable_name_ok(const sg_str_t *name);

/* The pure tokeniser of complex values, for sg_smtp_variables.c and its
 * unit test.  Each call reads one token at *pos and moves *pos past it:
 * TEXT (literal bytes in t->text), VAR (a name in t->text, "$name" or
 * "${name}"), CAPTURE (t->capture: "$0".."$9"), END, or ERROR with
 * t->err. */
typedef enum {
    SG_SMTP_CV_END = 0,
    SG_SMTP_CV_TEXT,
    SG_SMTP_CV_VAR,
    SG_SMTP_CV_CAPTURE,
    SG_SMTP_CV_ERROR
} sg_smtp_cv_token_e;

typedef struct {
    sg_str_t      text;
    unsigned      capture;
    const char   *err;
} sg_smtp_cv_token_t;

sg_smtp_cv_token_e sg_smtp_cv_token(const u_char **pos, const u_char *end,
    sg_smtp_cv_token_t *t);

/* The registry, kept in the smtp module's main conf (sg_smtp_conf.c). */
typedef struct sg_smtp_variables_s  sg_smtp_variables_t;
sg_smtp_variables_t *sg_smtp_variables_create(sg_conf_t *cf);
sg_smtp_variables_t *sg_smtp_variables_of(void **main_conf);
/* After the mail block: every name used is defined, no cycles, NOCACHE
 * propagated. */
char *sg_smtp_variables_check(sg_conf_t *cf);

/* ---- end of variables ------------------------------------------------ */

void sg_smtp_init_session(sg_connection_t *c);
/* The worker is exiting (a fast stop, or worker_shutdown_timeout
 * expired): every session still open is told 421 where it can be and
 * closed, so that each ends through sg_smtp_close_session (its access
 * log line, its counters, its limit_conn count). */
void sg_smtp_exit_process(sg_cycle_t *cycle);
/* After what comes before SMTP on the address (a PROXY protocol header,
 * read by the realip module): the TLS handshake on an implicit-TLS
 * address, else the greeting. */
void sg_smtp_start_session(sg_smtp_session_t *s);

/* Append a reply ("250 2.0.0 OK", no CRLF) to the client's output. */
int sg_smtp_reply(sg_smtp_session_t *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The same for an error reply: counts towards max_errors, and after the
 * last one allowed adds the 421 and ends the session. */
int sg_smtp_error(sg_smtp_session_t *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Read what the client sent into s->in: SG_OK, SG_AGAIN, SG_DONE (the
 * client closed) or SG_ERROR.  Write s->out: SG_OK (all written),
 * SG_AGAIN (the write handler resumes; timer set) or SG_ERROR.  For
 * relays that speak SMTP themselves (the spool). */
int sg_smtp_read(sg_smtp_session_t *s);
/* HELO/EHLO: check the name and keep it in s->helo and s->esmtp; a bad
 * one gets its 501 and SG_DECLINED. */
int sg_smtp_set_helo(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd);
int sg_smtp_flush(sg_smtp_session_t *s);
/* Keep processing the session after an asynchronous step. */
void sg_smtp_run(sg_smtp_session_t *s);

void sg_smtp_set_timer(sg_smtp_session_t *s, sg_event_handler_pt h,
    sg_msec_t ms);
void sg_smtp_del_timer(sg_smtp_session_t *s);

/* The client's host name as Client-Host and XCLIENT NAME carry it: the
 * name, "[UNAVAILABLE]" (none, or no resolver) or "[TEMPUNAVAIL]" (DNS
 * failed), as nginx sends them. */
void sg_smtp_client_host(sg_smtp_session_t *s, sg_str_t *host);
/* Whether then must wait for the client's host name: true when it was
 * kept to be called once the name is known (the session in AUTH_WAIT
 * meanwhile); false when the name is known and the caller goes on. */
bool sg_smtp_host_wait(sg_smtp_session_t *s,
    void (*then)(sg_smtp_session_t *s));

/* AUTH (sg_smtp_sasl.c). */
int sg_smtp_auth(sg_smtp_session_t *s, const sg_smtp_cmd_t *cmd);
int sg_smtp_auth_response(sg_smtp_session_t *s, const sg_str_t *line);
int sg_smtp_auth_none(sg_smtp_session_t *s);

/* auth_cache (sg_smtp_cache.c). */
char *sg_smtp_auth_cache(sg_conf_t *cf, const sg_command_t *cmd, void *conf);
int sg_smtp_cache_lookup(sg_smtp_srv_conf_t *sscf, sg_auth_request_t *r);
void sg_smtp_cache_store(sg_smtp_srv_conf_t *sscf, sg_auth_request_t *r);

/* auth_fail_limit (sg_smtp_limit.c). */
char *sg_smtp_auth_fail_limit(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);
bool sg_smtp_limit_refused(sg_smtp_session_t *s);
void sg_smtp_limit_account(sg_smtp_session_t *s, bool failed);
void sg_smtp_auth_cleanup(sg_smtp_session_t *s);
bool sg_smtp_auth_allowed(sg_smtp_session_t *s);

/* smtp_capabilities auto: append the EHLO reply built from the
 * extensions ext (SG_SMTP_EXT_*) and SIZE size. */
int sg_smtp_ehlo_auto(sg_smtp_session_t *s, unsigned ext, int64_t size);

/* Values built from text and variables (sg_smtp_variables.c). */
typedef struct sg_smtp_complex_value_s  sg_smtp_complex_value_t;
sg_smtp_complex_value_t *sg_smtp_compile_complex_value(sg_conf_t *cf,
    const sg_str_t *src);
int sg_smtp_complex_value(sg_smtp_session_t *s,
    const sg_smtp_complex_value_t *cv, sg_str_t *out);

/* Relay callbacks.  After relay_ready the relay owns the client
 * connection's handlers; s->in holds bytes the client already sent past
 * the AUTH exchange, s->out the replies not yet written. */
int sg_smtp_relay_ready(sg_smtp_session_t *s);     /* SG_ERROR: out of
                                                     memory, close */
void sg_smtp_relay_failed(sg_smtp_session_t *s);
/* The same, answering with reply (a whole 4xx/5xx reply of the backend's,
 * CRLFs included) instead of 451 4.4.1. */
void sg_smtp_relay_refused(sg_smtp_session_t *s, const sg_str_t *reply);

void sg_smtp_close_session(sg_smtp_session_t *s);
/* Make sure s->in and s->out exist (they are given back while the
 * session waits idle); SG_ERROR when memory ran out. */
int sg_smtp_buffers(sg_smtp_session_t *s);

/* For auth and relay modules, from their merge_srv_conf: the server's
 * SMTP conf, where they register themselves. */
sg_smtp_srv_conf_t *sg_smtp_conf_of(void **srv_conf);
sg_smtp_srv_conf_t *sg_smtp_conf_current(sg_conf_t *cf);
/* The servers of cycle's mail block, in the order they are written. */
sg_smtp_srv_conf_t **sg_smtp_servers(sg_cycle_t *cycle, size_t *n);

/* SNI: pick the server for host among those sharing c's address and
 * make it the session's.  NULL: no server has that name. */
sg_smtp_srv_conf_t *sg_smtp_select_server(sg_connection_t *c,
    const sg_str_t *host);
/* The same lookup without changing the session: NULL when no name
 * matches (the default server then serves). */
/* name is 1 to 255 printable ASCII characters without spaces: a server
 * name, or an SNI name worth choosing a server by. */
bool sg_smtp_name_ok(const sg_str_t *name);
sg_smtp_srv_conf_t *sg_smtp_find_server(sg_connection_t *c,
    const sg_str_t *host);
sg_smtp_srv_conf_t *sg_smtp_default_server(sg_connection_t *c);
/* login as log lines quote it: '"', '\\', ',' and bytes outside
 * printable ASCII written \xHH (as nginx's access log writes such
 * bytes), so that a user name can neither close its quotes nor hold a
 * ", client: ..." a log reader would take for a field of the line.  Its
 * buffer serves one call at a time: the event loop writes one line at a
 * time. */
const char *sg_smtp_log_login(const sg_str_t *login);
/* Point the session's log at its server's error_log, or the main one. */
void sg_smtp_session_log(sg_smtp_session_t *s);

#endif /* SG_SMTP_H */
