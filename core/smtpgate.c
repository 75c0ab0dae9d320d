/*
 * smtpgate.c: the command line and start-up.
 *
 * Parses the options, loads the first configuration (or only tests it),
 * signals a running master for -s, and otherwise becomes the master
 * process.  Every start-up failure is reported on stderr and ends with
 * exit status 1; nothing here runs once workers exist.
 */
#include "sg_core.h"
#include <openssl/opensslv.h>
#include <openssl/crypto.h>

typedef struct {
    bool         test;
    bool         dump;
    bool         quiet;
    bool         version;
    bool         help;
    const char  *prefix;
    const char  *conf;
    const char  *param;
    const char  *signal;
} sg_options_t;

static void
sg_usage(void)
{
    fprintf(stderr,
        "Usage: smtpgate [-?hvVtTq] [-s signal] [-p prefix] [-c filename]"
        " [-g directives]\n\n"
        "Options:\n"
        "  -?,-h         : this help\n"
        "  -v            : show version and exit\n"
        "  -V            : show version, configure options and modules\n"
        "  -t            : test the configuration and exit\n"
        "  -T            : test the configuration, dump it and exit\n"
        "  -q            : suppress non-error messages while testing\n"
        "  -s signal     : send a signal to the master: stop, quit, "
        "reopen, reload,\n"
        "                  flush\n"
        "  -p prefix     : set the prefix path (default: %s)\n"
        "  -c filename   : set the configuration file (default: %s)\n"
        "  -g directives : set global directives before the file\n",
        SG_PREFIX, SG_CONF_PATH);
}

static int
sg_get_options(int argc, char **argv, sg_options_t *o)
{
    int    i;
    char  *p;

    for (i = 1; i < argc; i++) {
        p = argv[i];
        if (*p++ != '-' || *p == '\0') {
            sg_log_stderr(0, "invalid option: \"%s\"", argv[i]);
            return SG_ERROR;
        }
        for ( ; *p; p++) {
            switch (*p) {
            case '?': case 'h': o->help = true; continue;
            case 'v': o->version = true; continue;
            case 'V': o->version = true; o->help = false; continue;
            case 't': o->test = true; continue;
            case 'T': o->test = true; o->dump = true; continue;
            case 'q': o->quiet = true; continue;
            case 'p': case 'c': case 'g': case 's':
                break;
            default:
                sg_log_stderr(0, "invalid option: \"%c\"", *p);
                return SG_ERROR;
            }
            /* an option with a value: "-pDIR" or "-p DIR" */
            {
                char         opt = *p;
                const char  *val = p[1] ? p + 1 : argv[++i];

                if (i >= argc || val == NULL) {
                    sg_log_stderr(0, "option \"-%c\" requires a value", opt);
                    return SG_ERROR;
                }
                switch (opt) {
                case 'p': o->prefix = val; break;
                case 'c': o->conf = val; break;
                case 'g': o->param = val; break;
                case 's':
                    if (strcmp(val, "stop") && strcmp(val, "quit")
                        && strcmp(val, "reopen") && strcmp(val, "reload")
                        && strcmp(val, "flush"))
                    {
                        sg_log_stderr(0, "invalid option: \"-s %s\"", val);
                        return SG_ERROR;
                    }
                    o->signal = val;
                    break;
                }
                break;
            }
        }
    }
    return SG_OK;
}

static void
sg_show_version(bool full)
{
    size_t  i;

    fprintf(stderr, "smtpgate version: smtpgate/%s\n", SG_VERSION);
    if (!full) {
        return;
    }
    fprintf(stderr, "built with %s (running with %s)\n", OPENSSL_VERSION_TEXT,
            OpenSSL_version(OPENSSL_VERSION));
    fprintf(stderr, "configure arguments: %s\n", SG_CONFIGURE);
    fprintf(stderr, "modules:");
    for (i = 0; sg_module_names[i]; i++) {
        fprintf(stderr, " %s", sg_module_names[i]);
    }
    fprintf(stderr, "\n");
}

/* Make s absolute against base (or the cwd when base is NULL). */
static int
sg_absolute(sg_str_t *out, const char *s, const sg_str_t *base,
    bool trailing_slash)
{
    char    cwd[PATH_MAX];
    size_t  blen = 0, slen = strlen(s);
    const char *b = "";

    if (s[0] != '/') {
        if (base) {
            b = (const char *) base->data;
            blen = base->len;
        } else {
            if (getcwd(cwd, sizeof(cwd)) == NULL) {
                sg_log_stderr(errno, "[emerg] getcwd() failed");
                return SG_ERROR;
            }
            strcat(cwd, "/");
            b = cwd;
            blen = strlen(cwd);
        }
    }
    out->data = malloc(blen + slen + 2);
    if (out->data == NULL) {
        return SG_ERROR;
    }
    memcpy(out->data, b, blen);
    memcpy(out->data + blen, s, slen);
    out->len = blen + slen;
    if (trailing_slash && (out->len == 0 || out->data[out->len - 1] != '/')) {
        out->data[out->len++] = '/';
    }
    out->data[out->len] = '\0';
    return SG_OK;
}

static int
sg_bootstrap(sg_cycle_t *init, const sg_options_t *o, sg_log_t *log)
{
    static char  host[256];
    u_char      *slash;

    memset(init, 0, sizeof(*init));
    init->log = log;
    if (sg_absolute(&init->prefix, o->prefix ? o->prefix : SG_PREFIX, NULL,
                    true) != SG_OK)
    {
        return SG_ERROR;
    }
    if (o->conf) {
        if (sg_absolute(&init->conf_file, o->conf, NULL, false) != SG_OK) {
            return SG_ERROR;
        }
    } else if (sg_absolute(&init->conf_file, SG_CONF_PATH, &init->prefix,
                           false) != SG_OK)
    {
        return SG_ERROR;
    }
    init->conf_prefix = init->conf_file;
    slash = memrchr(init->conf_file.data, '/', init->conf_file.len);
    init->conf_prefix.len = (size_t) (slash - init->conf_file.data) + 1;
    if (o->param) {
        init->conf_param.data = (u_char *) o->param;
        init->conf_param.len = strlen(o->param);
    }
    if (gethostname(host, sizeof(host) - 1) == -1) {
        strcpy(host, "localhost");
    }
    host[sizeof(host) - 1] = '\0';
    init->hostname.data = (u_char *) host;
    init->hostname.len = strlen(host);
    return SG_OK;
}

static int
sg_test_config(sg_cycle_t *init, const sg_options_t *o)
{
    sg_cycle_t  *cycle;
    char         err[2048];

    cycle = sg_init_cycle(init, true, err, sizeof(err));
    if (cycle == NULL) {
        sg_log_stderr(0, "[emerg] %s", err);
        sg_log_stderr(0, "configuration file %.*s test failed",
                      SG_STR_ARG(&init->conf_file));
        return 1;
    }
    if (!o->quiet) {
        sg_log_stderr(0, "the configuration file %.*s syntax is ok",
                      SG_STR_ARG(&init->conf_file));
        sg_log_stderr(0, "configuration file %.*s test is successful",
                      SG_STR_ARG(&init->conf_file));
    }
    if (o->dump) {
        sg_conf_dump(cycle, stdout);
        fflush(stdout);
    }
    return 0;
}

static int
sg_send_signal(sg_cycle_t *init, const char *name)
{
    sg_cycle_t  *cycle;
    char         err[2048];

    cycle = sg_init_cycle(init, true, err, sizeof(err));
    if (cycle == NULL) {
        sg_log_stderr(0, "[emerg] %s", err);
        return 1;
    }
    return sg_signal_process(cycle, name);
}

int
main(int argc, char **argv)
{
    /* static: the bootstrap strings live as long as the process, also
     * after main() returns on a failed -t (LeakSanitizer runs then). */
    static sg_cycle_t  init;
    sg_options_t       o;
    sg_cycle_t        *cycle;
    sg_log_t          *log;
    char               err[2048];

    memset(&o, 0, sizeof(o));
    log = sg_log_init();
    tzset();
    sg_time_update();
    if (sg_keyed_hash_init() != SG_OK) {
        sg_log_stderr(errno, "getrandom() failed");
        return 1;
    }
    sg_modules_init();
    if (sg_get_options(argc, argv, &o) != SG_OK) {
        return 1;
    }
    if (o.version || o.help) {
        sg_show_version(!o.help);
        if (o.help) {
            sg_usage();
        }
        return 0;
    }
    if (sg_bootstrap(&init, &o, log) != SG_OK) {
        return 1;
    }
    if (o.test) {
        return sg_test_config(&init, &o);
    }
    if (o.signal) {
        return sg_send_signal(&init, o.signal);
    }

    sg_session_counter_init();
    cycle = sg_init_cycle(&init, false, err, sizeof(err));
    if (cycle == NULL) {
        sg_log_stderr(0, "[emerg] %s", err);
        return 1;
    }
    sg_cycle = cycle;
    if (sg_init_signals(cycle->log) != SG_OK) {
        return 1;
    }
    if (sg_core_conf(cycle)->daemon && sg_daemon(cycle->log) != SG_OK) {
        return 1;
    }
    sg_pid = getpid();
    if (sg_create_pidfile(cycle, cycle->log) != SG_OK) {
        return 1;
    }
    sg_log_error(SG_LOG_NOTICE, cycle->log, 0, "smtpgate/%s started",
                 SG_VERSION);
    sg_cycle_redirect_stderr(cycle);
    sg_master_process_cycle(cycle);
    return 0;
}
