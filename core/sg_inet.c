/*
 * sg_inet.c: address parsing, resolution at configuration time, and
 * printing (see sg_inet.h).  getaddrinfo() is only ever called while a
 * configuration is loaded, in the master; workers never resolve.
 */
#include "sg_core.h"
#include <netdb.h>

size_t
sg_sock_ntop(const struct sockaddr *sa, u_char *text, size_t len, bool port)
{
    char     addr[INET6_ADDRSTRLEN];
    u_char  *p = text;
    int      prt;

    switch (sa->sa_family) {
    case AF_INET:
        inet_ntop(AF_INET, &((const struct sockaddr_in *) sa)->sin_addr,
                  addr, sizeof(addr));
        prt = ntohs(((const struct sockaddr_in *) sa)->sin_port);
        p = port ? sg_slprintf(text, text + len, "%s:%d", addr, prt)
                 : sg_slprintf(text, text + len, "%s", addr);
        break;
    case AF_INET6:
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *) sa)->sin6_addr,
                  addr, sizeof(addr));
        prt = ntohs(((const struct sockaddr_in6 *) sa)->sin6_port);
        p = port ? sg_slprintf(text, text + len, "[%s]:%d", addr, prt)
                 : sg_slprintf(text, text + len, "%s", addr);
        break;
    case AF_UNIX:
        p = sg_slprintf(text, text + len, "unix:");
        break;
    default:
        p = sg_slprintf(text, text + len, "unknown");
    }
    return (size_t) (p - text);
}

int
sg_sockaddr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        return ntohs(((const struct sockaddr_in *) sa)->sin_port);
    }
    if (sa->sa_family == AF_INET6) {
        return ntohs(((const struct sockaddr_in6 *) sa)->sin6_port);
    }
    return 0;
}

bool
sg_sockaddr_eq(const struct sockaddr *a, socklen_t alen,
    const struct sockaddr *b, socklen_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

static int
sg_url_split(sg_url_t *u)
{
    u_char  *p = u->url.data, *end = u->url.data + u->url.len, *colon;
    sg_str_t port;
    int64_t  n;

    if (u->url.len == 0) {
        u->err = "empty address";
        return SG_ERROR;
    }
    if (*p == '[') {
        colon = memchr(p, ']', u->url.len);
        if (colon == NULL) {
            u->err = "invalid IPv6 address";
            return SG_ERROR;
        }
        u->host.data = p + 1;
        u->host.len = (size_t) (colon - p - 1);
        p = colon + 1;
        if (p < end && *p != ':') {
            u->err = "invalid address";
            return SG_ERROR;
        }
        colon = p < end ? p : NULL;
    } else {
        colon = memrchr(p, ':', u->url.len);
        if (colon && memchr(p, ':', (size_t) (colon - p))) {
            u->err = "IPv6 addresses must be written in brackets";
            return SG_ERROR;
        }
        u->host.data = p;
        u->host.len = colon ? (size_t) (colon - p) : u->url.len;
    }

    u->port = -1;
    if (colon) {
        port.data = colon + 1;
        port.len = (size_t) (end - port.data);
        if (sg_parse_int(&port, &n) != SG_OK || n < 1 || n > 65535) {
            u->err = "invalid port";
            return SG_ERROR;
        }
        u->port = (int) n;
    } else if (u->listen && sg_parse_int(&u->host, &n) == SG_OK) {
        if (n < 1 || n > 65535) {
            u->err = "invalid port";
            return SG_ERROR;
        }
        u->port = (int) n;            /* "listen 587;" */
        u->host.len = 0;
    }

    if (u->port < 0) {
        if (u->default_port == 0) {
            u->err = "no port";
            return SG_ERROR;
        }
        u->port = u->default_port;
    }
    if (u->host.len == 0 || (u->host.len == 1 && u->host.data[0] == '*')) {
        if (!u->listen) {
            u->err = "no host";
            return SG_ERROR;
        }
        u->wildcard = 1;
        u->host.len = 0;
    }
    return SG_OK;
}

static int
sg_url_add(sg_pool_t *pool, sg_url_t *u, const struct sockaddr *sa,
    socklen_t len)
{
    sg_addr_t  *a;
    u_char      text[SG_SOCKADDR_STRLEN];
    size_t      i, n;

    for (i = 0; i < u->naddrs; i++) {
        if (sg_sockaddr_eq((struct sockaddr *) &u->addrs[i].sa,
                           u->addrs[i].socklen, sa, len))
        {
            return SG_OK;                  /* getaddrinfo repeats itself */
        }
    }
    a = &u->addrs[u->naddrs];
    memset(a, 0, sizeof(*a));
    memcpy(&a->sa, sa, len);
    a->socklen = len;
    n = sg_sock_ntop(sa, text, sizeof(text), true);
    a->name.data = sg_pnalloc(pool, n + 1);
    if (a->name.data == NULL) {
        return SG_ERROR;
    }
    memcpy(a->name.data, text, n);
    a->name.data[n] = '\0';
    a->name.len = n;
    u->naddrs++;
    return SG_OK;
}

bool
sg_inet_sloppy_ipv4(const char *host)
{
    struct in_addr  in;

    return inet_pton(AF_INET, host, &in) != 1 && inet_aton(host, &in) != 0;
}

static int
sg_parse_literal(sg_pool_t *pool, sg_url_t *u, const char *host)
{
    struct sockaddr_in   sin;
    struct sockaddr_in6  sin6;

    memset(&sin, 0, sizeof(sin));
    memset(&sin6, 0, sizeof(sin6));
    if (inet_pton(AF_INET, host, &sin.sin_addr) == 1) {
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t) u->port);
    } else if (inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1) {
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons((uint16_t) u->port);
    } else if (sg_inet_sloppy_ipv4(host)) {
        /* getaddrinfo() would take it, as inet_aton() does */
        u->err = "invalid IPv4 address (four decimal numbers, 0 to 255, "
                 "without leading zeros)";
        return SG_ERROR;
    } else {
        return SG_DECLINED;          /* a name, or a scoped address */
    }
    u->addrs = sg_pcalloc(pool, sizeof(sg_addr_t));
    if (u->addrs == NULL) {
        return SG_ERROR;
    }
    return sin.sin_family == AF_INET
           ? sg_url_add(pool, u, (struct sockaddr *) &sin, sizeof(sin))
           : sg_url_add(pool, u, (struct sockaddr *) &sin6, sizeof(sin6));
}

int
sg_parse_url(sg_pool_t *pool, sg_url_t *u)
{
    struct addrinfo   hints, *res, *ai;
    struct sockaddr_in  sin;
    char              host[256];
    size_t            n;
    int               rc;

    if (sg_url_split(u) != SG_OK) {
        return SG_ERROR;
    }
    if (!u->wildcard && u->host.len < sizeof(host)) {
        /* An address literal needs no getaddrinfo(): this path also runs
         * for backends named while serving (Auth-Server, $variables). */
        memcpy(host, u->host.data, u->host.len);
        host[u->host.len] = '\0';
        rc = sg_parse_literal(pool, u, host);
        if (rc != SG_DECLINED) {
            return rc;
        }
    }
    u->addrs = sg_pcalloc(pool, 16 * sizeof(sg_addr_t));
    if (u->addrs == NULL) {
        return SG_ERROR;
    }
    if (u->wildcard) {
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t) u->port);
        return sg_url_add(pool, u, (struct sockaddr *) &sin, sizeof(sin));
    }
    if (u->host.len >= sizeof(host)) {
        u->err = "host name too long";
        return SG_ERROR;
    }
    memcpy(host, u->host.data, u->host.len);
    host[u->host.len] = '\0';

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (u->no_resolve ? AI_NUMERICHOST : 0);
    rc = getaddrinfo(host, "1", &hints, &res);
    if (rc != 0) {
        u->err = u->no_resolve ? "invalid address" : "host not found";
        return SG_ERROR;
    }
    for (ai = res, n = 0; ai && u->naddrs < 16; ai = ai->ai_next, n++) {
        if (ai->ai_family == AF_INET) {
            ((struct sockaddr_in *) ai->ai_addr)->sin_port =
                htons((uint16_t) u->port);
        } else if (ai->ai_family == AF_INET6) {
            ((struct sockaddr_in6 *) ai->ai_addr)->sin6_port =
                htons((uint16_t) u->port);
        } else {
            continue;
        }
        if (sg_url_add(pool, u, ai->ai_addr, ai->ai_addrlen) != SG_OK) {
            freeaddrinfo(res);
            return SG_ERROR;
        }
    }
    freeaddrinfo(res);
    if (u->naddrs == 0) {
        u->err = "host not found";
        return SG_ERROR;
    }
    return SG_OK;
}

/* Access lists. */

static int
sg_cidr_prefix(const u_char *p, size_t n, unsigned max, unsigned *bits)
{
    unsigned  v = 0;
    size_t    i;

    if (n == 0 || n > 3 || (p[0] == '0' && n > 1)) {
        return SG_ERROR;
    }
    for (i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return SG_ERROR;
        }
        v = v * 10 + (unsigned) (p[i] - '0');
    }
    if (v > max) {
        return SG_ERROR;
    }
    *bits = v;
    return SG_OK;
}

int
sg_parse_cidr(const sg_str_t *text, sg_cidr_t *cidr, const char **err)
{
    char       addr[SG_INET_ADDRSTRLEN + 1];
    u_char    *slash;
    size_t     alen, i, len;
    unsigned   bits, max;
    bool       masked = false;

    memset(cidr, 0, sizeof(*cidr));
    if (sg_str_eq(text, "unix:")) {
        cidr->family = AF_UNIX;
        return SG_OK;
    }
    slash = memchr(text->data, '/', text->len);
    alen = slash ? (size_t) (slash - text->data) : text->len;
    if (alen == 0 || alen > SG_INET_ADDRSTRLEN) {
        *err = "invalid address";
        return SG_ERROR;
    }
    memcpy(addr, text->data, alen);
    addr[alen] = '\0';
    cidr->family = memchr(addr, ':', alen) ? AF_INET6 : AF_INET;
    len = cidr->family == AF_INET ? 4 : 16;
    max = (unsigned) len * 8;
    if (inet_pton(cidr->family, addr, cidr->addr) != 1) {
        *err = "invalid address";
        return SG_ERROR;
    }
    bits = max;
    if (slash
        && sg_cidr_prefix(slash + 1, text->len - alen - 1, max, &bits)
           != SG_OK)
    {
        *err = "invalid prefix length";
        return SG_ERROR;
    }
    for (i = 0; i < len; i++) {
        if (bits >= 8) {
            cidr->mask[i] = 0xff;
            bits -= 8;
        } else {
            cidr->mask[i] = (u_char) (0xff << (8 - bits));
            bits = 0;
        }
        if (cidr->addr[i] & ~cidr->mask[i]) {
            masked = true;
            cidr->addr[i] &= cidr->mask[i];
        }
    }
    return masked ? SG_DECLINED : SG_OK;
}

bool
sg_cidr_match(const sg_cidr_t *cidr, const struct sockaddr *sa)
{
    static const u_char  mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        0xff, 0xff };
    const u_char        *a;
    size_t               i, len;

    switch (sa->sa_family) {
    case AF_INET:
        a = (const u_char *) &((const struct sockaddr_in *) sa)->sin_addr;
        len = 4;
        break;
    case AF_INET6:
        a = ((const struct sockaddr_in6 *) sa)->sin6_addr.s6_addr;
        len = 16;
        if (cidr->family == AF_INET && memcmp(a, mapped, 12) == 0) {
            a += 12;
            len = 4;
        }
        break;
    case AF_UNIX:
        return cidr->family == AF_UNIX;
    default:
        return false;
    }
    if ((cidr->family == AF_INET && len != 4)
        || (cidr->family == AF_INET6 && len != 16)
        || cidr->family == AF_UNIX)
    {
        return false;
    }
    for (i = 0; i < len; i++) {
        if ((a[i] & cidr->mask[i]) != cidr->addr[i]) {
            return false;
        }
    }
    return true;
}

bool
sg_cidr_list_match(const sg_array_t *list, const struct sockaddr *sa)
{
    const sg_cidr_t  *cidr;
    size_t            i;

    if (list == NULL) {
        return false;
    }
    cidr = list->elts;
    for (i = 0; i < list->nelts; i++) {
        if (sg_cidr_match(&cidr[i], sa)) {
            return true;
        }
    }
    return false;
}
