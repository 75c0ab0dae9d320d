/*
 * sg_proxy_protocol.h: the PROXY protocol (versions 1 and 2, as
 * specified by HAProxy's proxy-protocol.txt): a strict parser of the
 * header a load balancer puts in front of a TCP stream, and builders of
 * the header for the other direction.
 *
 * Pure functions of bytes: no I/O, no allocation, no global state.  A
 * caller that reads the header piece by piece calls the parser again
 * with everything it has so far; the parser never looks past the
 * header it reports, so the bytes after it belong to the caller.
 */
#ifndef SG_PROXY_PROTOCOL_H
#define SG_PROXY_PROTOCOL_H

#define SG_PROXY_PROTOCOL_V1_MAX  107           /* the v1 line with CRLF */
#define SG_PROXY_PROTOCOL_MAX     (16 + 65535)  /* what v2 may declare */

typedef struct {
    int                      version;     /* 1 or 2 */
    int                      local;       /* v2 LOCAL or v1 UNKNOWN: no
                                             addresses */
    struct sockaddr_storage  src;         /* the real client */
    struct sockaddr_storage  dst;         /* the address it connected to */
    socklen_t                src_len, dst_len;
} sg_proxy_hdr_t;

/*
 * Parse a PROXY header at the start of [p, p + len).
 * SG_OK: *hdr filled, *consumed = the header's length (what follows it
 * is the application's).
 * SG_AGAIN: not complete yet; the caller reads more and enforces its own
 * cap (108 bytes settle a v1 header; v2 needs 16 + the declared length).
 * SG_ERROR: malformed, or the first bytes already cannot start a header;
 * *err names the cause in a few words ("bad v1 port").
 */
int sg_proxy_protocol_parse(const u_char *p, size_t len, sg_proxy_hdr_t *hdr,
    size_t *consumed, const char **err);

/*
 * Write a header for src -> dst into buf (size bytes); return its length,
 * or 0 when it does not fit or a family is neither AF_INET nor AF_INET6.
 * With mixed families the IPv4 address is written as IPv4-mapped IPv6.
 */
size_t sg_proxy_protocol_write_v1(u_char *buf, size_t size,
    const struct sockaddr *src, const struct sockaddr *dst);
size_t sg_proxy_protocol_write_v2(u_char *buf, size_t size,
    const struct sockaddr *src, const struct sockaddr *dst);

/*
 * What a connection learnt from its PROXY header, kept on the connection
 * (c->proxy_protocol) by the module that read it, for whoever reports
 * the client (logs, auth_http).  Set only when the header carried
 * addresses (not for LOCAL or UNKNOWN).
 */
typedef struct {
    sg_proxy_hdr_t           hdr;
    struct sockaddr_storage  peer;        /* the proxy that sent it */
    socklen_t                peer_len;
    sg_str_t                 peer_text;   /* its address, without port */
    unsigned                 trusted:1;   /* hdr.src became the client */
} sg_proxy_protocol_t;

#endif /* SG_PROXY_PROTOCOL_H */
