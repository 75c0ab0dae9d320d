/*
 * sg_dns.h: DNS messages as the resolver needs them (RFC 1035): a query
 * for one name and type, and the answer to it read back.
 *
 * Pure functions of bytes, with a unit test and a fuzz harness.  The
 * parser follows CNAME chains inside one answer (RFC 2317 reverse
 * delegation, names with aliases), takes compression pointers only
 * backwards and at most SG_DNS_JUMPS_MAX of them a name, and refuses a
 * message whose question is not the one asked: an answer to another
 * query, or a forged one, is never taken for this one.
 */
#ifndef SG_DNS_H
#define SG_DNS_H

#define SG_DNS_A          1
#define SG_DNS_CNAME      5
#define SG_DNS_PTR        12
#define SG_DNS_AAAA       28
#define SG_DNS_OPT        41

#define SG_DNS_NOERROR    0
#define SG_DNS_FORMERR    1
#define SG_DNS_SERVFAIL   2
#define SG_DNS_NXDOMAIN   3
#define SG_DNS_NOTIMP     4
#define SG_DNS_REFUSED    5

#define SG_DNS_NAME_MAX   255      /* dotted text, no final dot */
#define SG_DNS_UDP_MAX    512      /* without EDNS (RFC 1035 4.2.1) */
#define SG_DNS_EDNS_UDP   1232     /* the UDP answers we take with EDNS:
                                      no IP fragments on any usual path */
#define SG_DNS_OPT_LEN    11       /* an OPT record without options */
#define SG_DNS_ADDRS_MAX  16       /* addresses kept of one answer */
#define SG_DNS_CNAMES_MAX 8        /* aliases followed in one answer */
#define SG_DNS_JUMPS_MAX  32       /* compression pointers in one name */

/* "4.3.2.1.in-addr.arpa", or the 72-character ip6.arpa nibble name;
 * an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is its IPv4 address.
 * buf holds at least SG_DNS_NAME_MAX bytes; returns the length. */
size_t sg_dns_arpa_name(const struct sockaddr *sa, u_char *buf);

/* A query (recursion desired) for name (dotted, without a final dot)
 * and type into buf.  Returns its length, or 0 when name is not a
 * domain name (an empty or over-long label, over 255 bytes). */
size_t sg_dns_query(u_char *buf, size_t size, uint16_t id,
    const sg_str_t *name, uint16_t type);

/* EDNS (RFC 6891): add to the query of len bytes in msg (size bytes of
 * room) an OPT record saying that UDP answers of SG_DNS_EDNS_UDP bytes
 * are taken, so that a long answer needs no TCP; returns the new
 * length, or len when there is no room or the query has one already.
 * sg_dns_drop_edns() takes it off again (for a server that answered
 * FORMERR or NOTIMP to it, 7): the query as it was. */
size_t sg_dns_add_edns(u_char *msg, size_t len, size_t size);
size_t sg_dns_drop_edns(u_char *msg, size_t len);

/* The id of a message at least 12 bytes long; -1 when shorter. */
int sg_dns_id(const u_char *msg, size_t len);

typedef struct {
    unsigned    rcode;                 /* SG_DNS_NOERROR, ... */
    unsigned    truncated:1;           /* TC: what came may be cut */
    /* The records of the type asked for, owned by the name asked for or
     * by the last alias in a CNAME chain from it. */
    size_t      n;                     /* how many there were */
    u_char      name[SG_DNS_NAME_MAX]; /* PTR: the first one's name */
    size_t      name_len;
    u_char      addrs[SG_DNS_ADDRS_MAX][16];   /* A: 4 bytes, AAAA: 16 */
    size_t      naddrs;
    uint32_t    ttl;                   /* the least TTL of the records
                                          (and aliases) used */
} sg_dns_answer_t;

/*
 * Read msg, the response to the query for (name, type).  SG_OK with *a
 * filled in (a->rcode says whether the server found the name), or
 * SG_ERROR with *err saying why the message is not such an answer:
 * truncated, malformed, a query rather than a response, another
 * question.  Records that do not parse as their type (an A record of 5
 * bytes, a PTR to a name with a byte no host name has) are skipped, not
 * taken; names are compared without regard to ASCII case.
 */
int sg_dns_parse(const u_char *msg, size_t len, const sg_str_t *name,
    uint16_t type, sg_dns_answer_t *a, const char **err);

/* Whether name (dotted text) is a host name a client may be called by:
 * labels of letters, digits, '-' and '_', 1 to 63 bytes, at most 253
 * bytes in all, and a last label that is not all digits (no top-level
 * domain is, and "192.0.2.1" is an address pretending to be a name). */
bool sg_dns_host_name_ok(const u_char *name, size_t len);

#endif /* SG_DNS_H */
