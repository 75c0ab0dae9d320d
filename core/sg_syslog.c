/*
 * sg_syslog.c: logging to a syslog server (see sg_syslog.h).
 */
#include <sys/un.h>
#include "sg_core.h"

#define SG_SYSLOG_PORT        514
#define SG_SYSLOG_RETRY       1000           /* ms between connects */
#define SG_SYSLOG_SAY_EVERY   60000          /* ms between reports */

/* nginx's facility names, in code order. */
static const char  *sg_syslog_facilities[] = {
    "kern", "user", "mail", "daemon", "auth", "intern", "lpr", "news",
    "uucp", "clock", "authpriv", "ftp", "ntp", "audit", "alert", "cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7"
};

static const char  *sg_syslog_months[] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
    "Nov", "Dec"
};

bool
sg_syslog_target(const sg_str_t *name)
{
    return name->len >= sizeof(SG_SYSLOG_PREFIX) - 1
           && memcmp(name->data, SG_SYSLOG_PREFIX,
                     sizeof(SG_SYSLOG_PREFIX) - 1) == 0;
}

sg_syslog_t *
sg_syslog_find(sg_cycle_t *cycle, const sg_str_t *spec)
{
    sg_syslog_t  **p = cycle->syslogs.elts;
    size_t         i;

    for (i = 0; i < cycle->syslogs.nelts; i++) {
        if (p[i]->spec.len == spec->len
            && memcmp(p[i]->spec.data, spec->data, spec->len) == 0)
        {
            return p[i];
        }
    }
    return NULL;
}

static bool
sg_syslog_param(const sg_str_t *v, const char *name, sg_str_t *value)
{
    size_t  n = strlen(name);

    if (v->len <= n || memcmp(v->data, name, n) != 0) {
        return false;
    }
    value->data = v->data + n;
    value->len = v->len - n;
    return true;
}

static char *
sg_syslog_server(sg_conf_t *cf, sg_syslog_t *peer, const sg_str_t *v)
{
    struct sockaddr_un  *un;
    sg_url_t             u;
    size_t               n;

    peer->server = *v;
    if (v->len >= 5 && memcmp(v->data, "unix:", 5) == 0) {
        n = v->len - 5;
        un = (struct sockaddr_un *) &peer->sa;
        if (n == 0 || v->data[5] != '/' || n >= sizeof(un->sun_path)
            || memchr(v->data + 5, '\0', n))
        {
            return sg_conf_error(cf, 0, "syslog server \"%.*s\": a UNIX "
                                 "socket is an absolute path of at most "
                                 "%zu bytes, such as unix:/dev/log",
                                 SG_STR_ARG(v), sizeof(un->sun_path) - 1);
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, v->data + 5, n);
        peer->socklen = (socklen_t) (offsetof(struct sockaddr_un, sun_path)
                                     + n + 1);
        return SG_CONF_OK;
    }
    memset(&u, 0, sizeof(u));
    u.url = *v;
    u.default_port = SG_SYSLOG_PORT;
    if (sg_parse_url(cf->pool, &u) != SG_OK) {
        return sg_conf_error(cf, 0, "syslog server \"%.*s\": %s",
                             SG_STR_ARG(v), u.err);
    }
    memcpy(&peer->sa, &u.addrs[0].sa, u.addrs[0].socklen);
    peer->socklen = u.addrs[0].socklen;
    return SG_CONF_OK;
}

sg_syslog_t *
sg_syslog_add(sg_conf_t *cf, const sg_str_t *spec)
{
    sg_syslog_t   *peer, **slot;
    sg_str_t       rest, v, value;
    const u_char  *comma, *end;
    size_t         i;
    int            level;
    bool           have_server = false;

    peer = sg_syslog_find(cf->cycle, spec);
    if (peer) {
        return peer;
    }
    peer = sg_pcalloc(cf->pool, sizeof(sg_syslog_t));
    if (peer == NULL) {
        return NULL;
    }
    peer->spec = *spec;
    peer->facility = 23;                        /* local7, as nginx */
    peer->severity = SG_LOG_INFO - 1;           /* info */
    sg_str_set(&peer->tag, "smtpgate");
    peer->hostname = cf->cycle->hostname;
    peer->fd = -1;

    rest.data = spec->data + sizeof(SG_SYSLOG_PREFIX) - 1;
    rest.len = spec->len - (sizeof(SG_SYSLOG_PREFIX) - 1);
    end = rest.data + rest.len;
    if (rest.len == 0) {
        goto no_server;
    }
    for ( ;; ) {
        comma = memchr(rest.data, ',', (size_t) (end - rest.data));
        v.data = rest.data;
        v.len = (size_t) ((comma ? comma : end) - rest.data);
        if (sg_syslog_param(&v, "server=", &value)) {
            if (have_server) {
                goto duplicate;
            }
            have_server = true;
            if (sg_syslog_server(cf, peer, &value) != SG_CONF_OK) {
                return NULL;
            }
        } else if (sg_syslog_param(&v, "facility=", &value)) {
            for (i = 0; i < sg_nelems(sg_syslog_facilities); i++) {
                if (sg_str_eq(&value, sg_syslog_facilities[i])) {
                    break;
                }
            }
            if (i == sg_nelems(sg_syslog_facilities)) {
                sg_conf_error(cf, 0, "unknown syslog facility \"%.*s\": "
                              "use kern, user, mail, daemon, auth, intern, "
                              "lpr, news, uucp, clock, authpriv, ftp, ntp, "
                              "audit, alert, cron or local0 to local7",
                              SG_STR_ARG(&value));
                return NULL;
            }
            peer->facility = (int) i;
        } else if (sg_syslog_param(&v, "severity=", &value)) {
            level = sg_log_level_by_name(&value);
            if (level < SG_LOG_EMERG) {
                sg_conf_error(cf, 0, "unknown syslog severity \"%.*s\": "
                              "use emerg, alert, crit, error, warn, notice, "
                              "info or debug", SG_STR_ARG(&value));
                return NULL;
            }
            peer->severity = level - 1;
        } else if (sg_syslog_param(&v, "tag=", &value)) {
            for (i = 0; i < value.len; i++) {
                if (!(value.data[i] >= 'a' && value.data[i] <= 'z')
                    && !(value.data[i] >= 'A' && value.data[i] <= 'Z')
                    && !(value.data[i] >= '0' && value.data[i] <= '9')
                    && value.data[i] != '_')
                {
                    break;
                }
            }
            if (i < value.len || value.len > SG_SYSLOG_TAG_MAX) {
                sg_conf_error(cf, 0, "syslog tag \"%.*s\": at most %d "
                              "letters, digits and underscores",
                              SG_STR_ARG(&value), SG_SYSLOG_TAG_MAX);
                return NULL;
            }
            peer->tag = value;
        } else if (sg_str_eq(&v, "nohostname")) {
            peer->hostname.len = 0;
        } else {
            sg_conf_error(cf, 0, "unknown syslog parameter \"%.*s\" in "
                          "\"%.*s\": use server=, facility=, severity=, "
                          "tag= or nohostname", SG_STR_ARG(&v),
                          SG_STR_ARG(spec));
            return NULL;
        }
        if (comma == NULL) {
            break;
        }
        rest.data = (u_char *) comma + 1;
    }
    if (!have_server) {
        goto no_server;
    }
    slot = sg_array_push(&cf->cycle->syslogs);
    if (slot == NULL) {
        return NULL;
    }
    *slot = peer;
    return peer;

no_server:
    sg_conf_error(cf, 0, "\"%.*s\" has no server=: write syslog:server="
                  "ADDRESS, such as syslog:server=unix:/dev/log or "
                  "syslog:server=192.0.2.1", SG_STR_ARG(spec));
    return NULL;

duplicate:
    sg_conf_error(cf, 0, "\"%.*s\" names server= twice", SG_STR_ARG(spec));
    return NULL;
}

/* The RFC 3164 time stamp, "Mmm dd hh:mm:ss" in local time, the day
 * padded with a space. */
static u_char *
sg_syslog_time(u_char *p, u_char *last)
{
    static time_t    cached;
    static u_char    text[sizeof("Sep 30 23:59:59")];
    time_t           now = sg_current_time ? sg_current_time : time(NULL);
    struct tm        tm;

    if (now != cached || text[0] == '\0') {
        localtime_r(&now, &tm);
        snprintf((char *) text, sizeof(text), "%s %2d %02d:%02d:%02d",
                 sg_syslog_months[tm.tm_mon], tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec);
        cached = now;
    }
    return sg_slprintf(p, last, "%s", text);
}

static int
sg_syslog_connect(sg_syslog_t *peer)
{
    int  fd;

    fd = socket(peer->sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK
                | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return errno;
    }
    if (connect(fd, (struct sockaddr *) &peer->sa, peer->socklen) == -1) {
        int  err = errno;

        close(fd);
        return err;
    }
    peer->fd = fd;
    peer->pid = sg_pid;
    return 0;
}

/* A failure, said in the process's error log at most once a minute; not
 * to the peer that failed (the error log may be this peer: busy stops
 * that line from coming back here). */
static void
sg_syslog_failed(sg_syslog_t *peer, int err, bool broken, const char *what)
{
    sg_log_t  *log;

    peer->lost++;
    if (broken) {
        peer->err = err;
        peer->failed = sg_current_msec ? sg_current_msec : 1;
    }
    if (peer->busy || sg_cycle == NULL || sg_cycle->log == NULL
        || (peer->said && sg_current_msec - peer->said < SG_SYSLOG_SAY_EVERY))
    {
        return;
    }
    log = sg_cycle->log;
    if (sg_log_targets(log, peer)) {
        return;
    }
    peer->said = sg_current_msec ? sg_current_msec : 1;
    peer->busy = true;
    sg_log_error(SG_LOG_ERR, log, err, "syslog server \"%.*s\": %s, "
                 "%llu log line%s lost: check that the syslog server runs "
                 "and takes messages there", SG_STR_ARG(&peer->server),
                 what, (unsigned long long) peer->lost,
                 peer->lost == 1 ? "" : "s");
    peer->busy = false;
    peer->lost = 0;
}

void
sg_syslog_send(sg_syslog_t *peer, int severity, const u_char *line,
    size_t len)
{
    u_char   buf[SG_SYSLOG_MAX];
    u_char  *p, *last = buf + sizeof(buf);
    size_t   room;
    int      err;

    if (peer->fd != -1 && peer->pid != sg_pid) {
        /* Connected by the master: the copy works for this process too,
         * but it reconnects on its own from now on. */
        peer->pid = sg_pid;
    }
    if (peer->fd == -1) {
        if (peer->failed
            && sg_current_msec - peer->failed < SG_SYSLOG_RETRY)
        {
            sg_syslog_failed(peer, peer->err, false, "connect() failed");
            return;
        }
        err = sg_syslog_connect(peer);
        if (err) {
            sg_syslog_failed(peer, err, true, "connect() failed");
            return;
        }
    }

    p = sg_slprintf(buf, last, "<%d>", peer->facility * 8 + severity);
    p = sg_syslog_time(p, last);
    if (peer->hostname.len) {
        p = sg_slprintf(p, last, " %.*s", SG_STR_ARG(&peer->hostname));
    }
    p = sg_slprintf(p, last, " %.*s: ", SG_STR_ARG(&peer->tag));
    room = (size_t) (last - p);
    len = sg_min(len, room);             /* cut, never split */
    memcpy(p, line, len);
    p += len;

    if (send(peer->fd, buf, (size_t) (p - buf), MSG_DONTWAIT | MSG_NOSIGNAL)
        != -1)
    {
        return;
    }
    err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
        sg_syslog_failed(peer, err, false, "the socket is full");
        return;
    }
    /* Refused (no server), or the server went away: connect again. */
    close(peer->fd);
    peer->fd = -1;
    sg_syslog_failed(peer, err, true, "send() failed");
}

void
sg_syslog_close(sg_cycle_t *cycle)
{
    sg_syslog_t  **p = cycle->syslogs.elts;
    size_t         i;

    for (i = 0; i < cycle->syslogs.nelts; i++) {
        if (p[i]->fd != -1) {
            close(p[i]->fd);
            p[i]->fd = -1;
        }
    }
}
