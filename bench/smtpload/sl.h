/*
 * sl.h: smtpload, an SMTP load generator.
 *
 * One state machine per session over a non-blocking socket, one epoll
 * loop per thread, nothing shared between threads at run time but a few
 * atomic counters.  This header holds the types every file shares: the
 * options (read-only once parsed), a thread's state and its statistics,
 * and the pure reply parser.
 *
 * It refuses: unbounded input (every buffer has a fixed size and a
 * server that overflows one fails its session), and blocking calls on
 * the session path.
 */
#ifndef SL_H
#define SL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#define SL_IN_SIZE          4096    /* longest reply line we accept */
#define SL_REPLY_LINES_MAX  1000    /* lines in one multi-line reply */
#define SL_TEXT_MAX         60      /* reply text kept for failures */
#define SL_FAIL_KINDS       64      /* distinct failure texts counted */
#define SL_RCPTS_MAX        1000
#define SL_EXPECT_MAX       (SL_RCPTS_MAX + 4)

typedef enum { SL_TLS_NONE, SL_TLS_STARTTLS, SL_TLS_IMPLICIT } sl_tls_e;
typedef enum { SL_AUTH_NONE, SL_AUTH_PLAIN, SL_AUTH_LOGIN } sl_auth_e;
typedef enum {
    SL_IDLE_OFF, SL_IDLE_GREETING, SL_IDLE_EHLO, SL_IDLE_STARTTLS,
    SL_IDLE_AUTH
} sl_idle_e;

/* One user's credentials, ready to send. */
typedef struct {
    char  *plain;           /* "AUTH PLAIN base64(\0user\0pass)\r\n" */
    char  *login_user;      /* "base64(user)\r\n" */
    char  *login_pass;      /* "base64(pass)\r\n" */
} sl_cred_t;

typedef struct {
    struct sockaddr_storage  addr;
    socklen_t                addr_len;
    const char              *target;        /* as given with -s */

    uint64_t     sessions;          /* -n; 0 = unbounded (with -d) */
    unsigned     concurrency;       /* -c */
    double       duration;          /* -d seconds; 0 = none */
    double       min_duration;      /* --min-duration seconds; 0 = none */
    double       rate;              /* -r sessions/s; 0 = none */
    unsigned     threads;           /* -T */

    sl_tls_e     tls;
    bool         resume;
    const char  *sni;
    SSL_CTX     *ssl_ctx;

    sl_auth_e    auth;
    sl_cred_t   *creds;
    size_t       ncreds;

    size_t       size;              /* message bytes before stuffing */
    unsigned     messages;          /* per session */
    unsigned     rcpts;             /* per message */
    bool         pipelining;
    const char  *ehlo;
    const char  *from;
    const char  *to;
    double       timeout;           /* seconds, per reply */

    sl_idle_e    idle;
    unsigned     ramp;              /* idle: sessions set up at once */
    bool         json;

    /* Built once from the options, shared read-only by every thread. */
    char        *ehlo_cmd;
    size_t       ehlo_len;
    char        *mail_cmd;          /* MAIL FROM line */
    size_t       mail_len;
    char       **rcpt_cmd;          /* one RCPT TO line per recipient */
    size_t      *rcpt_len;
    char        *body;              /* dot-stuffed message + ".\r\n" */
    size_t       body_len;
    size_t       out_size;          /* a session's command buffer */
} sl_conf_t;

/* A log-bucketed latency histogram in microseconds: 64 sub-buckets per
 * power of two, so a value is known within 1/64 (1.6 %). */
#define SL_HIST_SUB     64
#define SL_HIST_BUCKETS (40 * SL_HIST_SUB + 2 * SL_HIST_SUB)

typedef struct {
    uint64_t  counts[SL_HIST_BUCKETS];
    uint64_t  total;
    uint64_t  max;
    uint64_t  sum;
} sl_hist_t;

typedef struct {
    char      text[SL_TEXT_MAX + 48];
    uint64_t  count;
} sl_fail_t;

typedef struct {
    uint64_t   ok;
    uint64_t   failed;
    uint64_t   aborted;         /* cut by a signal while in flight */
    uint64_t   messages;        /* messages accepted (250 after DATA) */
    uint64_t   message_bytes;   /* their size before stuffing */
    uint64_t   tls_handshakes;
    uint64_t   tls_resumed;
    uint64_t   tls13;          /* handshakes that made TLS 1.3 */
    sl_hist_t  latency;
    sl_fail_t  fails[SL_FAIL_KINDS];
    unsigned   nfails;
    uint64_t   fail_other;      /* beyond SL_FAIL_KINDS distinct texts */
} sl_stats_t;

typedef struct sl_session_s sl_session_t;

typedef struct {
    const sl_conf_t  *conf;
    unsigned          id;
    pthread_t         tid;
    int               ep;
    unsigned          slots;            /* concurrent sessions */
    sl_session_t    **sessions;         /* [slots], NULL until used */
    unsigned         *free_slots;       /* stack of free slot indices */
    unsigned          nfree;
    unsigned          active;
    unsigned          setting_up;       /* idle: not yet in the state */
    unsigned          ramp;             /* idle: most setting up at once */
    uint64_t          opened;           /* idle: sessions begun here */
    bool              exhausted;        /* the -n budget is spent */
    double            rate;             /* this thread's share of -r */
    uint64_t          next_start;       /* ns, for the rate limit */
    SSL_SESSION      *resume;           /* latest session, for --resume */
    sl_stats_t        stats;
    int               error;            /* fatal setup error (errno) */
} sl_worker_t;

/* Shared counters. */
typedef struct {
    atomic_uint_fast64_t  started;      /* sessions begun */
    atomic_uint_fast64_t  user_index;   /* round-robin over --users */
    atomic_uint_fast64_t  held;         /* idle: sessions in the state */
    atomic_uint_fast64_t  idle_failed;  /* idle: failed before it */
    atomic_uint_fast64_t  lost;         /* idle: closed while held */
    atomic_int            stop;         /* 1: stop starting; 2: abort */
    atomic_uint           workers_done;
    uint64_t              t0;           /* ns, start of the run */
    uint64_t              deadline;     /* ns, 0 = none */
    uint64_t              min_until;    /* ns: -n counts only after it */
} sl_shared_t;

extern sl_shared_t sl_shared;

/* The reply parser: a pure function of bytes.  It is fed one complete
 * line at a time (without its LF) and says whether a reply is complete. */
typedef enum {
    SL_REPLY_MORE,          /* a continuation line: more to come */
    SL_REPLY_DONE,          /* the last line: the reply is complete */
    SL_REPLY_BAD            /* not an SMTP reply line */
} sl_reply_rc_e;

typedef struct {
    int       code;                 /* 0 before the first line */
    unsigned  lines;
    char      text[SL_TEXT_MAX + 1];/* first line, printable, truncated */
} sl_reply_t;

void          sl_reply_reset(sl_reply_t *r);
sl_reply_rc_e sl_reply_line(sl_reply_t *r, const char *line, size_t len);
bool          sl_reply_keyword(const char *line, size_t len,
                               const char *keyword);
void          sl_printable(char *dst, size_t dst_size, const char *src,
                           size_t len);

/* Message and commands (message.c). */
int  sl_build_commands(sl_conf_t *conf);
int  sl_build_body(sl_conf_t *conf);
int  sl_load_users(sl_conf_t *conf, const char *path, const char *user,
                   const char *password);

/* Sessions (session.c). */
void *sl_worker_run(void *arg);
int   sl_new_session(SSL *ssl, SSL_SESSION *sess);
uint64_t sl_now(void);

/* Statistics (stats.c). */
void     sl_hist_add(sl_hist_t *h, uint64_t us);
uint64_t sl_hist_percentile(const sl_hist_t *h, double p);
void     sl_stats_fail(sl_stats_t *st, const char *text);
void     sl_stats_merge(sl_stats_t *dst, const sl_stats_t *src);
void     sl_report_text(const sl_conf_t *conf, const sl_stats_t *st,
                        double elapsed, double cpu_user, double cpu_sys);
void     sl_report_json(const sl_conf_t *conf, const sl_stats_t *st,
                        double elapsed, double cpu_user, double cpu_sys);

#endif /* SL_H */
