/*
 * sg_syslog.h: logging to a syslog server, for error_log and access_log
 * targets written as nginx writes them:
 *
 *   syslog:server=ADDRESS[,facility=F][,severity=S][,tag=T][,nohostname]
 *
 * ADDRESS is "host[:port]" or "[v6]:port" (UDP, port 514 by default,
 * the name resolved as the configuration loads) or "unix:/path" (a
 * datagram socket, such as /dev/log).  Each line is one datagram in the
 * BSD format (RFC 3164): "<PRI>Mmm dd hh:mm:ss HOST TAG: line".
 *
 * Sending never waits: the socket is non-blocking, and a line the
 * socket cannot take at once is dropped and counted.  Each process
 * connects the socket the first time it logs, and again (at most once a
 * second) after a send fails.
 */
#ifndef SG_SYSLOG_H
#define SG_SYSLOG_H

#define SG_SYSLOG_PREFIX    "syslog:"
#define SG_SYSLOG_MAX       8192        /* bytes in one datagram */
#define SG_SYSLOG_TAG_MAX   32

struct sg_syslog_s {
    sg_str_t                 spec;      /* "syslog:..." as written */
    sg_str_t                 server;    /* the address, for messages */
    struct sockaddr_storage  sa;
    socklen_t                socklen;
    int                      facility;  /* 0 to 23 */
    int                      severity;  /* 0 to 7: access log lines */
    sg_str_t                 tag;
    sg_str_t                 hostname;  /* empty: nohostname */

    /* The process's own. */
    int                      fd;        /* -1: not connected */
    pid_t                    pid;       /* the process that connected */
    sg_msec_t                failed;    /* last failure; 0: none */
    sg_msec_t                said;      /* last report of a failure */
    uint64_t                 lost;      /* lines, since last said */
    int                      err;       /* errno of the last failure */
    bool                     busy;      /* reporting: do not recurse */
};

/* Whether a log target names syslog. */
bool sg_syslog_target(const sg_str_t *name);

/*
 * Parse a "syslog:..." target of an error_log or access_log directive
 * and resolve its server; the same target named twice in one
 * configuration gives the same peer.  NULL after a file:line error.
 */
sg_syslog_t *sg_syslog_add(sg_conf_t *cf, const sg_str_t *spec);

/* The peer of a target that sg_syslog_add() took, in cycle. */
sg_syslog_t *sg_syslog_find(sg_cycle_t *cycle, const sg_str_t *spec);

/* Send one line (without its line feed) at severity (0 to 7). */
void sg_syslog_send(sg_syslog_t *peer, int severity, const u_char *line,
    size_t len);

/* Close the sockets of a cycle's peers (the master, as a cycle goes). */
void sg_syslog_close(sg_cycle_t *cycle);

#endif /* SG_SYSLOG_H */
