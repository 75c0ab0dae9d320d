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

/* host (NUL-terminated) is an IPv4 address only in the forms inet_aton()
 * also takes: fewer than four parts ("10.1" is 10.0.0.1), octal
 * ("010.0.0.1" is 8.0.0.1) or hex.  Never a host name, and never what
 * was meant: refused wherever an address is read. */
bool sg_inet_sloppy_ipv4(const char *host);

/* Print an address ("1.2.3.4", "::1"; with port "1.2.3.4:25",
 * "[::1]:25").  Returns the length written (no NUL). */
size_t sg_sock_ntop(const struct sockaddr *sa, u_char *text, size_t len,
    bool port);

int sg_sockaddr_port(const struct sockaddr *sa);

/* Byte-equal addresses (family, address and port). */
bool sg_sockaddr_eq(const struct sockaddr *a, socklen_t alen,
    const struct sockaddr *b, socklen_t blen);

/* An address or network for access lists (set_real_ip_from). */
typedef struct {
    int          family;                /* AF_INET, AF_INET6, AF_UNIX */
    u_char       addr[16];              /* network order, masked */
    u_char       mask[16];
} sg_cidr_t;

/*
 * Parse a literal address or network: "192.0.2.7", "192.0.2.0/24",
 * "2001:db8::/32", "::1", or "unix:" (every UNIX-domain peer).  Names
 * are not resolved.  Returns SG_OK; SG_DECLINED when the address had
 * bits set beyond the prefix (they are cleared; the caller may warn);
 * SG_ERROR with *err saying why.
 */
int sg_parse_cidr(const sg_str_t *text, sg_cidr_t *cidr, const char **err);

/* Whether sa lies in cidr.  An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * matches the IPv4 networks its IPv4 address lies in. */
bool sg_cidr_match(const sg_cidr_t *cidr, const struct sockaddr *sa);
/* Whether sa lies in any network of list (sg_cidr_t); false for an
 * empty list or none. */
bool sg_cidr_list_match(const sg_array_t *list, const struct sockaddr *sa);

#endif /* SG_INET_H */
