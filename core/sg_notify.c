/*
 * sg_notify.c: telling a service manager how the master is doing, by
 * the protocol systemd documents for Type=notify services (sd_notify(3)):
 * one datagram of "NAME=value" lines to the UNIX socket NOTIFY_SOCKET
 * names (a path, or an abstract name after '@').  Without NOTIFY_SOCKET
 * nothing is sent; a failure is not an error, the manager may be gone.
 */
#include <sys/un.h>
#include "sg_core.h"

void
sg_notify(const char *fmt, ...)
{
    struct sockaddr_un  sa;
    const char         *path = getenv("NOTIFY_SOCKET");
    char                msg[512];
    socklen_t           len;
    va_list             args;
    size_t              n;
    int                 fd, m;

    if (path == NULL || (path[0] != '/' && path[0] != '@')
        || (n = strlen(path)) >= sizeof(sa.sun_path) || n < 2)
    {
        return;
    }
    va_start(args, fmt);
    m = vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);
    if (m <= 0 || (size_t) m >= sizeof(msg)) {
        return;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') {
        sa.sun_path[0] = '\0';              /* an abstract name */
        len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd == -1) {
        return;
    }
    (void) sendto(fd, msg, (size_t) m, MSG_NOSIGNAL,
                  (struct sockaddr *) &sa, len);
    close(fd);
}

/* CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it. */
unsigned long long
sg_notify_monotonic_usec(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long) ts.tv_sec * 1000000ULL
           + (unsigned long long) ts.tv_nsec / 1000;
}
