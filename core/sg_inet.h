/*
 * sg_inet.h: socket addresses: parsing "host:port", "[v6]:port", "*:port"
 * and "port" as configuration values, resolving names at configuration
 * time only (never on a session path), and printing addresses.
 */
#ifndef SG_INET_H
#define SG_INET_H

#define SG_SOCKADDR_STRLEN  (sizeof("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535") - 1)
#define SG_INET_ADDRSTRLEN  (sizeof("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255") - 1)

typedef struct {
    struct sockaddr_storage  sa;
    socklen_t                socklen;
    sg_str_t                 name;      /* "127.0.0.1:25", "[::1]:25" */
} sg_addr_t;

typedef struct {
    sg_str_t     url;                   /* as written */
    sg_str_t     host;                  /* without brackets */
    int          port;                  /* -1 when absent */
    int          default_port;          /* used when absent; 0: required */
    unsigned     listen:1;              /* "*:25", "25" allowed */
    unsigned     no_resolve:1;          /* literal addresses only */
    unsigned     wildcard:1;
    sg_addr_t   *addrs;
    size_t       naddrs;
    const char  *err;                   /* why parsing failed */
} sg_url_t;

/*
 * Parse u->url and resolve it (getaddrinfo, at configuration time).
 * Returns SG_OK, or SG_ERROR with u->err set to a message.
 */
int sg_parse_url(sg_pool_t *pool, sg_url_t *u);

/* Print an address ("1.2.3.4", "::1"; with port "1.2.3.4:25",
 * "[::1]:25").  Returns the length written (no NUL). */
size_t sg_sock_ntop(const struct sockaddr *sa, u_char *text, size_t len,
    bool port);

int sg_sockaddr_port(const struct sockaddr *sa);

/* Byte-equal addresses (family, address and port). */
bool sg_sockaddr_eq(const struct sockaddr *a, socklen_t alen,
    const struct sockaddr *b, socklen_t blen);

#endif /* SG_INET_H */
