/*
 * main.c: smtpload's command line, set-up, threads and report.
 *
 * Parses and checks the options, builds the commands and the message
 * once, starts -T threads that each run an epoll loop over their share
 * of the sessions, and waits for them (or, in idle mode, prints "ready
 * N" once every connection is in its state and holds until SIGINT,
 * SIGTERM or -d).  Then it merges the threads' counts and prints them.
 *
 * It refuses: option values out of their bounds, with a message naming
 * the option.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "sl.h"

sl_shared_t sl_shared;

static const char sl_usage[] =
"usage: smtpload -s HOST:PORT [options]\n"
"\n"
"Runs SMTP sessions against a server and reports sessions/s, messages/s,\n"
"MB/s of message data, session latency (connect to the QUIT reply) and\n"
"the replies of failed sessions.\n"
"\n"
"load\n"
"  -s, --server HOST:PORT   target; IPv6 as [ADDR]:PORT\n"
"  -n, --sessions N         sessions in all (default 1000, or unbounded\n"
"                           with -d alone)\n"
"  -c, --concurrency C      sessions at once (default 10)\n"
"  -d, --duration SECONDS   stop starting sessions after this long;\n"
"                           with -n, whichever comes first\n"
"      --min-duration SECONDS  with -n, go on starting sessions after\n"
"                           the N until this long has passed (never\n"
"                           past -d): at least N sessions and S seconds\n"
"  -r, --rate R             start at most R sessions per second\n"
"  -T, --threads N          threads, each with its own epoll loop\n"
"                           (default 1)\n"
"      --timeout SECONDS    for each reply, connect and handshake\n"
"                           (default 30)\n"
"\n"
"TLS (never verified)\n"
"      --tls none|starttls|implicit   (default none)\n"
"      --resume             resume the TLS session of an earlier\n"
"                           connection of the same thread\n"
"      --sni NAME           send NAME as the server name\n"
"\n"
"authentication\n"
"      --auth none|plain|login        (default none)\n"
"      --users FILE         \"user:password\" lines, used in turn\n"
"      --user U --password P          one user (default bench/bench)\n"
"\n"
"messages\n"
"      --size BYTES         message size, before dot-stuffing; k and m\n"
"                           suffixes (default 1024)\n"
"      --messages N         messages per session (default 1; 0: none)\n"
"      --rcpts N            recipients per message (default 1)\n"
"      --pipelining         send MAIL, RCPT and DATA together when the\n"
"                           server offers PIPELINING\n"
"      --ehlo NAME          (default smtpload.test)\n"
"      --from ADDR          (default load@smtpload.test)\n"
"      --to ADDR            (default sink@smtpload.test; further\n"
"                           recipients are local+N@domain)\n"
"\n"
"idle connections\n"
"      --idle STATE         open -c connections and hold each in STATE:\n"
"                           greeting (220 read), ehlo (EHLO answered),\n"
"                           starttls (EHLO answered over TLS: needs\n"
"                           --tls), auth (authenticated: needs --auth);\n"
"                           prints \"ready N\" when all are there, then\n"
"                           holds until SIGINT, SIGTERM or -d\n"
"      --ramp N             idle: connections being set up at once\n"
"                           (default 100)\n"
"\n"
"output\n"
"      --json               one JSON object instead of text\n"
"  -h, --help\n";

enum {
    OPT_TLS = 256, OPT_RESUME, OPT_SNI, OPT_AUTH, OPT_USERS, OPT_USER,
    OPT_PASSWORD, OPT_SIZE, OPT_MESSAGES, OPT_RCPTS, OPT_PIPELINING,
    OPT_EHLO, OPT_FROM, OPT_TO, OPT_TIMEOUT, OPT_IDLE, OPT_RAMP, OPT_JSON,
    OPT_MIN_DURATION
};

static const struct option sl_options[] = {
    { "server",      required_argument, NULL, 's' },
    { "sessions",    required_argument, NULL, 'n' },
    { "concurrency", required_argument, NULL, 'c' },
    { "duration",    required_argument, NULL, 'd' },
    { "min-duration", required_argument, NULL, OPT_MIN_DURATION },
    { "rate",        required_argument, NULL, 'r' },
    { "threads",     required_argument, NULL, 'T' },
    { "help",        no_argument,       NULL, 'h' },
    { "tls",         required_argument, NULL, OPT_TLS },
    { "resume",      no_argument,       NULL, OPT_RESUME },
    { "sni",         required_argument, NULL, OPT_SNI },
    { "auth",        required_argument, NULL, OPT_AUTH },
    { "users",       required_argument, NULL, OPT_USERS },
    { "user",        required_argument, NULL, OPT_USER },
    { "password",    required_argument, NULL, OPT_PASSWORD },
    { "size",        required_argument, NULL, OPT_SIZE },
    { "messages",    required_argument, NULL, OPT_MESSAGES },
    { "rcpts",       required_argument, NULL, OPT_RCPTS },
    { "pipelining",  no_argument,       NULL, OPT_PIPELINING },
    { "ehlo",        required_argument, NULL, OPT_EHLO },
    { "from",        required_argument, NULL, OPT_FROM },
    { "to",          required_argument, NULL, OPT_TO },
    { "timeout",     required_argument, NULL, OPT_TIMEOUT },
    { "idle",        required_argument, NULL, OPT_IDLE },
    { "ramp",        required_argument, NULL, OPT_RAMP },
    { "json",        no_argument,       NULL, OPT_JSON },
    { NULL, 0, NULL, 0 }
};

static void
sl_die(const char *fmt, const char *arg)
{
    fprintf(stderr, "smtpload: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(smtpload -h lists the options)\n");
    exit(2);
}

static uint64_t
sl_uint(const char *name, const char *s, uint64_t min, uint64_t max)
{
    char                *end;
    unsigned long long   v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end != '\0' || s[0] == '-' || v < min
        || v > max)
    {
        fprintf(stderr, "smtpload: %s must be a whole number from %llu to "
                "%llu, not \"%s\"\n", name, (unsigned long long) min,
                (unsigned long long) max, s);
        exit(2);
    }
    return v;
}

static double
sl_double(const char *name, const char *s, double min, double max)
{
    char   *end;
    double  v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= min) || !(v <= max)) {
        fprintf(stderr, "smtpload: %s must be a number from %g to %g, not "
                "\"%s\"\n", name, min, max, s);
        exit(2);
    }
    return v;
}

static size_t
sl_size(const char *s)
{
    char                *end;
    unsigned long long   v, mul = 1;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (*end == 'k' || *end == 'K') {
        mul = 1024;
        end++;
    } else if (*end == 'm' || *end == 'M') {
        mul = 1024 * 1024;
        end++;
    }
    if (errno || end == s || *end != '\0' || s[0] == '-'
        || v > (1ull << 30) / mul)
    {
        sl_die("--size must be a number of bytes up to 1g (k and m "
               "suffixes allowed), not \"%s\"", s);
    }
    return (size_t) (v * mul);
}

static int
sl_pick(const char *name, const char *value, const char *const *names,
        int n)
{
    int i;

    for (i = 0; i < n; i++) {
        if (strcmp(value, names[i]) == 0) {
            return i;
        }
    }
    fprintf(stderr, "smtpload: unknown %s \"%s\"\n", name, value);
    exit(2);
}

/* HOST:PORT or [IPv6]:PORT, resolved now, once. */
static void
sl_target(sl_conf_t *conf, const char *arg)
{
    char             host[256];
    const char      *port;
    struct addrinfo  hints, *res;
    size_t           hlen;
    int              rc;

    if (arg[0] == '[') {
        const char *close = strchr(arg, ']');
        if (close == NULL || close[1] != ':') {
            sl_die("bad -s \"%s\": expected [IPv6]:PORT", arg);
        }
        hlen = (size_t) (close - arg - 1);
        arg++;
        port = close + 2;
    } else {
        port = strrchr(arg, ':');
        if (port == NULL) {
            sl_die("bad -s \"%s\": expected HOST:PORT", arg);
        }
        hlen = (size_t) (port - arg);
        port++;
    }
    if (hlen == 0 || hlen >= sizeof(host) || *port == '\0') {
        sl_die("bad -s \"%s\": expected HOST:PORT", arg);
    }
    memcpy(host, arg, hlen);
    host[hlen] = '\0';
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "smtpload: %s: %s\n", host, gai_strerror(rc));
        exit(2);
    }
    memcpy(&conf->addr, res->ai_addr, res->ai_addrlen);
    conf->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

static void
sl_parse_options(sl_conf_t *conf, int argc, char **argv)
{
    static const char *const tls[] = { "none", "starttls", "implicit" };
    static const char *const auth[] = { "none", "plain", "login" };
    static const char *const idle[] = {
        "off", "greeting", "ehlo", "starttls", "auth"
    };
    const char *users = NULL, *user = NULL, *password = NULL;
    bool        have_n = false;
    int         opt;

    conf->concurrency = 10;
    conf->threads = 1;
    conf->size = 1024;
    conf->messages = 1;
    conf->rcpts = 1;
    conf->ehlo = "smtpload.test";
    conf->from = "load@smtpload.test";
    conf->to = "sink@smtpload.test";
    conf->timeout = 30;
    conf->ramp = 100;

    while ((opt = getopt_long(argc, argv, "s:n:c:d:r:T:h", sl_options, NULL))
           != -1)
    {
        switch (opt) {
        case 's': conf->target = optarg; sl_target(conf, optarg); break;
        case 'n':
            conf->sessions = sl_uint("-n", optarg, 1, UINT64_MAX / 2);
            have_n = true;
            break;
        case 'c': conf->concurrency = sl_uint("-c", optarg, 1, 1000000);
                  break;
        case 'd': conf->duration = sl_double("-d", optarg, 0.001, 1e7);
                  break;
        case OPT_MIN_DURATION:
            conf->min_duration = sl_double("--min-duration", optarg, 0.001,
                                           1e7);
            break;
        case 'r': conf->rate = sl_double("-r", optarg, 0.001, 1e9); break;
        case 'T': conf->threads = sl_uint("-T", optarg, 1, 256); break;
        case 'h': fputs(sl_usage, stdout); exit(0);
        case OPT_TLS: conf->tls = sl_pick("--tls", optarg, tls, 3); break;
        case OPT_RESUME: conf->resume = true; break;
        case OPT_SNI: conf->sni = optarg; break;
        case OPT_AUTH: conf->auth = sl_pick("--auth", optarg, auth, 3);
                       break;
        case OPT_USERS: users = optarg; break;
        case OPT_USER: user = optarg; break;
        case OPT_PASSWORD: password = optarg; break;
        case OPT_SIZE: conf->size = sl_size(optarg); break;
        case OPT_MESSAGES:
            conf->messages = sl_uint("--messages", optarg, 0, 1000000);
            break;
        case OPT_RCPTS:
            conf->rcpts = sl_uint("--rcpts", optarg, 1, SL_RCPTS_MAX);
            break;
        case OPT_PIPELINING: conf->pipelining = true; break;
        case OPT_EHLO: conf->ehlo = optarg; break;
        case OPT_FROM: conf->from = optarg; break;
        case OPT_TO: conf->to = optarg; break;
        case OPT_TIMEOUT:
            conf->timeout = sl_double("--timeout", optarg, 0.001, 86400);
            break;
        case OPT_IDLE:
            conf->idle = sl_pick("--idle", optarg, idle, 5);
            if (conf->idle == SL_IDLE_OFF) {
                sl_die("--idle takes greeting, ehlo, starttls or auth, "
                       "not \"%s\"", optarg);
            }
            break;
        case OPT_RAMP: conf->ramp = sl_uint("--ramp", optarg, 1, 1000000);
                       break;
        case OPT_JSON: conf->json = true; break;
        default:
            fputs(sl_usage, stderr);
            exit(2);
        }
    }
    if (optind < argc) {
        sl_die("unexpected argument \"%s\"", argv[optind]);
    }
    if (conf->target == NULL) {
        sl_die("%s", "-s HOST:PORT is required");
    }
    if (!have_n && conf->duration == 0) {
        conf->sessions = 1000;
    }
    if (conf->min_duration > 0 && !have_n) {
        sl_die("%s", "--min-duration needs -n");
    }
    if (conf->idle == SL_IDLE_STARTTLS && conf->tls == SL_TLS_NONE) {
        sl_die("%s", "--idle starttls needs --tls starttls or implicit");
    }
    if (conf->idle == SL_IDLE_AUTH && conf->auth == SL_AUTH_NONE) {
        sl_die("%s", "--idle auth needs --auth plain or login");
    }
    if ((users && (user || password)) || (password && !user)) {
        sl_die("%s", "give either --users FILE or --user U [--password P]");
    }
    if (strlen(conf->from) > 256 || strlen(conf->to) > 256
        || strlen(conf->ehlo) > 256)
    {
        sl_die("%s", "--from, --to and --ehlo take at most 256 bytes");
    }
    if (conf->threads > conf->concurrency) {
        conf->threads = conf->concurrency;
    }
    if (conf->auth != SL_AUTH_NONE
        && sl_load_users(conf, users, user, password) != 0)
    {
        exit(2);
    }
}

static int
sl_tls_setup(sl_conf_t *conf)
{
    SSL_CTX *ctx;

    if (conf->tls == SL_TLS_NONE) {
        return 0;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                          | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (conf->idle != SL_IDLE_OFF) {
        /* Thousands of held connections need no 34 KB of buffers each;
         * under load, keeping them saves a malloc and free per record. */
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    }
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (conf->resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT
                                       | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, sl_new_session);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    conf->ssl_ctx = ctx;
    return 0;
}

/* Enough descriptors for every connection, when the hard limit (or, as
 * root, raising it) allows. */
static void
sl_raise_nofile(const sl_conf_t *conf)
{
    struct rlimit  rl;
    rlim_t         want = (rlim_t) conf->concurrency + 64;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    if (rl.rlim_cur >= want) {
        return;
    }
    if (rl.rlim_max < want) {
        struct rlimit more = { want, want };
        if (setrlimit(RLIMIT_NOFILE, &more) == 0) {
            return;
        }
        fprintf(stderr, "smtpload: warning: the open files limit (%llu) is "
                "below -c %u\n", (unsigned long long) rl.rlim_max,
                conf->concurrency);
    }
    rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static sl_worker_t *
sl_start_workers(const sl_conf_t *conf)
{
    sl_worker_t *w = calloc(conf->threads, sizeof(sl_worker_t));
    unsigned     i, share, extra, ramp;

    if (w == NULL) {
        return NULL;
    }
    share = conf->concurrency / conf->threads;
    extra = conf->concurrency % conf->threads;
    ramp = conf->ramp / conf->threads;
    for (i = 0; i < conf->threads; i++) {
        w[i].conf = conf;
        w[i].id = i;
        w[i].slots = share + (i < extra ? 1 : 0);
        w[i].ramp = ramp ? ramp : 1;
        w[i].rate = conf->rate / conf->threads;
        if (pthread_create(&w[i].tid, NULL, sl_worker_run, &w[i]) != 0) {
            fprintf(stderr, "smtpload: pthread_create failed\n");
            exit(1);
        }
    }
    return w;
}

/* Waits for the threads, and in idle mode announces "ready N".  Signals
 * are taken here with sigtimedwait, every other thread blocks them. */
static void
sl_wait(const sl_conf_t *conf, const sigset_t *sigs)
{
    struct timespec  tick = { 0, 20 * 1000 * 1000 };
    bool             announced = false;
    siginfo_t        si;

    while (atomic_load(&sl_shared.workers_done) < conf->threads) {
        if (sigtimedwait(sigs, &si, &tick) > 0) {
            atomic_store(&sl_shared.stop, 2);
            continue;
        }
        if (conf->idle == SL_IDLE_OFF) {
            continue;
        }
        if (!announced
            && atomic_load(&sl_shared.held)
               + atomic_load(&sl_shared.idle_failed) >= conf->concurrency)
        {
            uint64_t failed = atomic_load(&sl_shared.idle_failed);
            printf("ready %llu\n",
                   (unsigned long long) atomic_load(&sl_shared.held));
            fflush(stdout);
            if (failed) {
                fprintf(stderr, "smtpload: %llu connections failed before "
                        "reaching the state\n", (unsigned long long) failed);
            }
            announced = true;
        }
        if (sl_shared.deadline && sl_now() >= sl_shared.deadline) {
            atomic_store(&sl_shared.stop, 2);
        }
    }
}

int
main(int argc, char **argv)
{
    static sl_conf_t  conf;
    sl_stats_t       *total;
    sl_worker_t      *w;
    sigset_t          sigs;
    struct rusage     ru;
    double            elapsed;
    unsigned          i;
    int               rc = 0;

    sl_parse_options(&conf, argc, argv);
    if (sl_build_commands(&conf) != 0 || sl_build_body(&conf) != 0
        || sl_tls_setup(&conf) != 0)
    {
        return 2;
    }
    sl_raise_nofile(&conf);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    sl_shared.t0 = sl_now();
    if (conf.duration > 0) {
        sl_shared.deadline = sl_shared.t0 + (uint64_t) (conf.duration * 1e9);
    }
    if (conf.min_duration > 0) {
        sl_shared.min_until = sl_shared.t0
                              + (uint64_t) (conf.min_duration * 1e9);
    }
    w = sl_start_workers(&conf);
    total = calloc(1, sizeof(*total));
    if (w == NULL || total == NULL) {
        fprintf(stderr, "smtpload: out of memory\n");
        return 1;
    }
    sl_wait(&conf, &sigs);
    for (i = 0; i < conf.threads; i++) {
        pthread_join(w[i].tid, NULL);
        if (w[i].error) {
            fprintf(stderr, "smtpload: thread %u: %s\n", i,
                    strerror(w[i].error));
            rc = 1;
        }
        sl_stats_merge(total, &w[i].stats);
    }
    elapsed = (double) (sl_now() - sl_shared.t0) / 1e9;
    getrusage(RUSAGE_SELF, &ru);
    if (conf.json) {
        sl_report_json(&conf, total, elapsed,
                       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
                       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    } else {
        sl_report_text(&conf, total, elapsed,
                       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
                       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    }
    if (rc == 0 && total->failed > 0) {
        rc = 3;
    }
    return rc;
}
