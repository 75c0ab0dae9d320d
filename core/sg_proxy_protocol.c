/*
 * sg_proxy_protocol.c: the PROXY protocol parser and builders (see
 * sg_proxy_protocol.h).
 *
 * The parser is as strict as the specification.  Version 1: "PROXY",
 * then "TCP4" or "TCP6" with source and destination address and port,
 * or "UNKNOWN" with anything printable, single spaces, literal addresses
 * of the named family, decimal ports 0-65535 without sign or leading
 * zero, CRLF, 107 bytes at most.  Version 2: the 12-byte signature,
 * version 2, LOCAL or PROXY, INET or INET6 over STREAM (LOCAL may say
 * UNSPEC), an address block as long as its family needs, and TLVs that
 * are skipped but must tile the rest of the block exactly.  AF_UNIX and
 * DGRAM are refused as unsupported.
 *
 * It refuses as early as the bytes allow: a first byte that starts
 * neither signature, a wrong character in a v1 line, a bad version,
 * command or family, or a TLV that overruns the block is an error before
 * the rest of the header has arrived, so a caller never waits for more
 * of something that cannot become a header.
 */
#include "sg_core.h"

#define SG_PP1_PREFIX_LEN   6                 /* "PROXY " */
#define SG_PP1_TCP_SPACES   3                 /* between the four fields */

#define SG_PP2_SIG_LEN      12
#define SG_PP2_HEADER_LEN   16
#define SG_PP2_VERSION      2
#define SG_PP2_CMD_LOCAL    0
#define SG_PP2_CMD_PROXY    1
#define SG_PP2_FAM_UNSPEC   0
#define SG_PP2_FAM_INET     1
#define SG_PP2_FAM_INET6    2
#define SG_PP2_FAM_UNIX     3
#define SG_PP2_PROTO_UNSPEC 0
#define SG_PP2_PROTO_STREAM 1
#define SG_PP2_PROTO_DGRAM  2
#define SG_PP2_TLV_HEADER   3                 /* type, length (2 bytes) */

static const u_char  sg_pp2_sig[SG_PP2_SIG_LEN] = {
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};

/* The address block's size by family: UNSPEC, INET, INET6, UNIX. */
static const size_t  sg_pp2_addr_len[4] = { 0, 12, 36, 216 };

typedef struct {
    const char  *name;
    size_t       len;
    int          family;              /* AF_UNSPEC: UNKNOWN */
} sg_pp1_proto_t;

static const sg_pp1_proto_t  sg_pp1_protos[] = {
    { "TCP4 ", 5, AF_INET },
    { "TCP6 ", 5, AF_INET6 },
    { "UNKNOWN", 7, AF_UNSPEC },
};


/* ---- version 1 ------------------------------------------------------ */

static bool
sg_pp1_char_ok(u_char ch, int family)
{
    if (family == AF_UNSPEC) {
        return ch >= 0x20 && ch <= 0x7e;
    }
    if ((ch >= '0' && ch <= '9') || ch == '.' || ch == ' ') {
        return true;
    }
    return family == AF_INET6
           && (ch == ':' || (ch >= 'a' && ch <= 'f')
               || (ch >= 'A' && ch <= 'F'));
}

/* Which protocol the bytes after "PROXY " name, as far as they go.
 * Returns NULL when they can name none. */
static const sg_pp1_proto_t *
sg_pp1_proto(const u_char *p, size_t n, bool complete)
{
    const sg_pp1_proto_t  *pr;
    size_t                 i;

    for (i = 0; i < sg_nelems(sg_pp1_protos); i++) {
        pr = &sg_pp1_protos[i];
        if (memcmp(p, pr->name, sg_min(n, pr->len)) != 0) {
            continue;
        }
        if (n < pr->len && complete) {
            return NULL;
        }
        if (pr->family == AF_UNSPEC && n > pr->len
            && p[pr->len] != ' ' && p[pr->len] != '\r')
        {
            return NULL;                       /* "UNKNOWNX" */
        }
        return pr;
    }
    return NULL;
}

/*
 * Check the n bytes of a v1 line before its LF (complete) or of a line
 * still arriving (not complete): prefix, protocol, characters, spacing.
 * A check that fails here fails for any longer input too.
 */
static int
sg_pp1_check(const u_char *p, size_t n, bool complete,
    const sg_pp1_proto_t **proto, const char **err)
{
    const sg_pp1_proto_t  *pr;
    size_t                 i, start, end, spaces = 0;

    if (memcmp(p, "PROXY ", sg_min(n, SG_PP1_PREFIX_LEN)) != 0
        || (complete && n <= SG_PP1_PREFIX_LEN))
    {
        *err = "not a PROXY header";
        return SG_ERROR;
    }
    if (n <= SG_PP1_PREFIX_LEN) {
        *proto = NULL;
        return SG_OK;
    }
    pr = sg_pp1_proto(p + SG_PP1_PREFIX_LEN, n - SG_PP1_PREFIX_LEN,
                      complete);
    if (pr == NULL) {
        *err = "bad v1 protocol";
        return SG_ERROR;
    }
    *proto = pr;
    if (complete && p[n - 1] != '\r') {
        *err = "bad v1 line ending";
        return SG_ERROR;
    }
    start = SG_PP1_PREFIX_LEN + pr->len;
    /* A CR is allowed only last: before the LF, or waiting for it. */
    end = n > 0 && p[n - 1] == '\r' ? n - 1 : n;
    for (i = start; i < end; i++) {
        if (!sg_pp1_char_ok(p[i], pr->family)) {
            *err = "bad v1 character";
            return SG_ERROR;
        }
        if (pr->family == AF_UNSPEC || p[i] != ' ') {
            continue;
        }
        if (i == start || p[i - 1] == ' ' || ++spaces > SG_PP1_TCP_SPACES) {
            *err = "bad v1 spacing";
            return SG_ERROR;
        }
    }
    /* Once the CR is there, only the LF may follow: the fields must
     * already be complete. */
    if (end < n && pr->family != AF_UNSPEC
        && (spaces != SG_PP1_TCP_SPACES || p[end - 1] == ' '))
    {
        *err = "bad v1 spacing";
        return SG_ERROR;
    }
    return SG_OK;
}

static int
sg_pp1_addr(const u_char *p, size_t n, int family,
    struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in   *sin = (struct sockaddr_in *) ss;
    struct sockaddr_in6  *sin6 = (struct sockaddr_in6 *) ss;
    char                  text[SG_INET_ADDRSTRLEN + 1];

    if (n == 0 || n > SG_INET_ADDRSTRLEN) {
        return SG_ERROR;
    }
    memcpy(text, p, n);
    text[n] = '\0';
    if (family == AF_INET) {
        sin->sin_family = AF_INET;
        *len = sizeof(struct sockaddr_in);
        return inet_pton(AF_INET, text, &sin->sin_addr) == 1 ? SG_OK
                                                              : SG_ERROR;
    }
    sin6->sin6_family = AF_INET6;
    *len = sizeof(struct sockaddr_in6);
    return inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1 ? SG_OK
                                                             : SG_ERROR;
}

/* 0 to 65535, decimal, no sign, no leading zero. */
static int
sg_pp1_port(const u_char *p, size_t n, uint16_t *port)
{
    uint32_t  v = 0;
    size_t    i;

    if (n == 0 || n > 5 || (p[0] == '0' && n > 1)) {
        return SG_ERROR;
    }
    for (i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return SG_ERROR;
        }
        v = v * 10 + (uint32_t) (p[i] - '0');
    }
    if (v > 65535) {
        return SG_ERROR;
    }
    *port = htons((uint16_t) v);
    return SG_OK;
}

static void
sg_pp_set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET) {
        ((struct sockaddr_in *) ss)->sin_port = port;
    } else {
        ((struct sockaddr_in6 *) ss)->sin6_port = port;
    }
}

/* The four fields of a checked TCP4/TCP6 line: exactly three single
 * spaces separate them (sg_pp1_check). */
static int
sg_pp1_fields(const u_char *p, const u_char *end, int family,
    sg_proxy_hdr_t *hdr, const char **err)
{
    const u_char  *f[4], *e[4];
    uint16_t       sport, dport;
    size_t         i;

    for (i = 0; i < 4; i++) {
        f[i] = p;
        e[i] = i < 3 ? memchr(p, ' ', (size_t) (end - p)) : end;
        p = e[i] + 1;
    }
    if (sg_pp1_addr(f[0], (size_t) (e[0] - f[0]), family, &hdr->src,
                    &hdr->src_len) != SG_OK)
    {
        *err = "bad v1 source address";
        return SG_ERROR;
    }
    if (sg_pp1_addr(f[1], (size_t) (e[1] - f[1]), family, &hdr->dst,
                    &hdr->dst_len) != SG_OK)
    {
        *err = "bad v1 destination address";
        return SG_ERROR;
    }
    if (sg_pp1_port(f[2], (size_t) (e[2] - f[2]), &sport) != SG_OK
        || sg_pp1_port(f[3], (size_t) (e[3] - f[3]), &dport) != SG_OK)
    {
        *err = "bad v1 port";
        return SG_ERROR;
    }
    sg_pp_set_port(&hdr->src, sport);
    sg_pp_set_port(&hdr->dst, dport);
    return SG_OK;
}

static int
sg_pp1_parse(const u_char *p, size_t len, sg_proxy_hdr_t *hdr,
    size_t *consumed, const char **err)
{
    const sg_pp1_proto_t  *proto;
    const u_char          *lf;
    size_t                 n;

    n = sg_min(len, (size_t) SG_PROXY_PROTOCOL_V1_MAX);
    lf = memchr(p, '\n', n);
    if (lf) {
        n = (size_t) (lf - p);
    }
    if (sg_pp1_check(p, n, lf != NULL, &proto, err) != SG_OK) {
        return SG_ERROR;
    }
    if (lf == NULL) {
        if (len >= SG_PROXY_PROTOCOL_V1_MAX) {
            *err = "v1 header too long";
            return SG_ERROR;
        }
        return SG_AGAIN;
    }
    memset(hdr, 0, sizeof(*hdr));
    hdr->version = 1;
    if (proto->family == AF_UNSPEC) {
        hdr->local = 1;
    } else if (sg_pp1_fields(p + SG_PP1_PREFIX_LEN + proto->len,
                             p + n - 1, proto->family, hdr, err) != SG_OK)
    {
        return SG_ERROR;
    }
    *consumed = n + 1;
    return SG_OK;
}


/* ---- version 2 ------------------------------------------------------ */

static int
sg_pp2_check_cmd(u_char ver_cmd, const char **err)
{
    if (ver_cmd >> 4 != SG_PP2_VERSION) {
        *err = "bad v2 version";
        return SG_ERROR;
    }
    if ((ver_cmd & 0x0f) > SG_PP2_CMD_PROXY) {
        *err = "bad v2 command";
        return SG_ERROR;
    }
    return SG_OK;
}

/* LOCAL ignores the addresses (any family the specification defines);
 * PROXY needs INET or INET6 over STREAM. */
static int
sg_pp2_check_family(u_char ver_cmd, u_char fam_proto, const char **err)
{
    unsigned  fam = fam_proto >> 4, proto = fam_proto & 0x0f;

    if (fam > SG_PP2_FAM_UNIX || proto > SG_PP2_PROTO_DGRAM) {
        *err = "bad v2 family";
        return SG_ERROR;
    }
    if ((ver_cmd & 0x0f) == SG_PP2_CMD_LOCAL) {
        return SG_OK;
    }
    if (fam == SG_PP2_FAM_UNIX) {
        *err = "unsupported v2 family";
        return SG_ERROR;
    }
    if (proto == SG_PP2_PROTO_DGRAM) {
        *err = "unsupported v2 protocol";
        return SG_ERROR;
    }
    if (fam == SG_PP2_FAM_UNSPEC || proto == SG_PP2_PROTO_UNSPEC) {
        *err = "bad v2 family";
        return SG_ERROR;
    }
    return SG_OK;
}

/*
 * The TLVs fill exactly `size` bytes after the addresses, of which
 * `have` have arrived.  A TLV longer than what is left of the block, or
 * a remainder too short for a TLV header, is an error as soon as seen.
 */
static int
sg_pp2_check_tlvs(const u_char *p, size_t have, size_t size,
    const char **err)
{
    size_t  off = 0, vlen;

    while (off + SG_PP2_TLV_HEADER <= have) {
        vlen = (size_t) p[off + 1] << 8 | p[off + 2];
        if (vlen > size - off - SG_PP2_TLV_HEADER) {
            *err = "bad v2 TLV length";
            return SG_ERROR;
        }
        off += SG_PP2_TLV_HEADER + vlen;
    }
    if (off < size && size - off < SG_PP2_TLV_HEADER) {
        *err = "bad v2 TLV length";
        return SG_ERROR;
    }
    return SG_OK;
}

static void
sg_pp2_addrs(const u_char *a, unsigned fam, sg_proxy_hdr_t *hdr)
{
    struct sockaddr_in   *s4 = (struct sockaddr_in *) &hdr->src;
    struct sockaddr_in   *d4 = (struct sockaddr_in *) &hdr->dst;
    struct sockaddr_in6  *s6 = (struct sockaddr_in6 *) &hdr->src;
    struct sockaddr_in6  *d6 = (struct sockaddr_in6 *) &hdr->dst;

    if (fam == SG_PP2_FAM_INET) {
        s4->sin_family = AF_INET;
        d4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, a, 4);
        memcpy(&d4->sin_addr, a + 4, 4);
        memcpy(&s4->sin_port, a + 8, 2);         /* network order */
        memcpy(&d4->sin_port, a + 10, 2);
        hdr->src_len = sizeof(struct sockaddr_in);
        hdr->dst_len = sizeof(struct sockaddr_in);
        return;
    }
    s6->sin6_family = AF_INET6;
    d6->sin6_family = AF_INET6;
    memcpy(&s6->sin6_addr, a, 16);
    memcpy(&d6->sin6_addr, a + 16, 16);
    memcpy(&s6->sin6_port, a + 32, 2);
    memcpy(&d6->sin6_port, a + 34, 2);
    hdr->src_len = sizeof(struct sockaddr_in6);
    hdr->dst_len = sizeof(struct sockaddr_in6);
}

static int
sg_pp2_parse(const u_char *p, size_t len, sg_proxy_hdr_t *hdr,
    size_t *consumed, const char **err)
{
    size_t    blen, alen, have;
    bool      local;
    unsigned  fam;

    if (memcmp(p, sg_pp2_sig, sg_min(len, SG_PP2_SIG_LEN)) != 0) {
        *err = "not a PROXY header";
        return SG_ERROR;
    }
    if (len > 12 && sg_pp2_check_cmd(p[12], err) != SG_OK) {
        return SG_ERROR;
    }
    if (len > 13 && sg_pp2_check_family(p[12], p[13], err) != SG_OK) {
        return SG_ERROR;
    }
    if (len < SG_PP2_HEADER_LEN) {
        return SG_AGAIN;
    }
    fam = p[13] >> 4;
    blen = (size_t) p[14] << 8 | p[15];
    local = (p[12] & 0x0f) == SG_PP2_CMD_LOCAL;
    /* LOCAL: "discard the protocol block including the family" (the
     * specification, 2.2), however long it says it is. */
    alen = local ? 0 : sg_pp2_addr_len[fam];
    if (blen < alen) {
        *err = "v2 address block too short";
        return SG_ERROR;
    }
    have = len > SG_PP2_HEADER_LEN + alen ? len - SG_PP2_HEADER_LEN - alen
                                          : 0;
    if (!local
        && sg_pp2_check_tlvs(p + SG_PP2_HEADER_LEN + alen,
                             sg_min(have, blen - alen), blen - alen, err)
           != SG_OK)
    {
        return SG_ERROR;
    }
    if (len < SG_PP2_HEADER_LEN + blen) {
        return SG_AGAIN;
    }
    memset(hdr, 0, sizeof(*hdr));
    hdr->version = 2;
    if (local) {
        hdr->local = 1;
    } else {
        sg_pp2_addrs(p + SG_PP2_HEADER_LEN, fam, hdr);
    }
    *consumed = SG_PP2_HEADER_LEN + blen;
    return SG_OK;
}


int
sg_proxy_protocol_parse(const u_char *p, size_t len, sg_proxy_hdr_t *hdr,
    size_t *consumed, const char **err)
{
    const char  *dummy;

    if (err == NULL) {
        err = &dummy;
    }
    *err = NULL;
    if (len == 0) {
        return SG_AGAIN;
    }
    if (p[0] == 'P') {
        return sg_pp1_parse(p, len, hdr, consumed, err);
    }
    if (p[0] == sg_pp2_sig[0]) {
        return sg_pp2_parse(p, len, hdr, consumed, err);
    }
    *err = "not a PROXY header";
    return SG_ERROR;
}


/* ---- builders ------------------------------------------------------- */

/* Both ends in one family: IPv4 when both are, else IPv6 with an IPv4
 * end mapped (::ffff:a.b.c.d).  Addresses and ports in network order. */
typedef struct {
    int       family;
    u_char    src[16];
    u_char    dst[16];
    uint16_t  sport;
    uint16_t  dport;
} sg_pp_pair_t;

static int
sg_pp_end(const struct sockaddr *sa, bool v6, u_char *addr, uint16_t *port)
{
    const struct sockaddr_in   *sin = (const struct sockaddr_in *) sa;
    const struct sockaddr_in6  *sin6 = (const struct sockaddr_in6 *) sa;

    if (sa->sa_family == AF_INET6) {
        memcpy(addr, &sin6->sin6_addr, 16);
        *port = sin6->sin6_port;
        return SG_OK;
    }
    if (sa->sa_family != AF_INET) {
        return SG_ERROR;
    }
    *port = sin->sin_port;
    if (!v6) {
        memcpy(addr, &sin->sin_addr, 4);
        return SG_OK;
    }
    memset(addr, 0, 10);
    addr[10] = 0xff;
    addr[11] = 0xff;
    memcpy(addr + 12, &sin->sin_addr, 4);
    return SG_OK;
}

static int
sg_pp_pair(const struct sockaddr *src, const struct sockaddr *dst,
    sg_pp_pair_t *pair)
{
    bool  v6;

    if (src == NULL || dst == NULL) {
        return SG_ERROR;
    }
    v6 = src->sa_family == AF_INET6 || dst->sa_family == AF_INET6;
    pair->family = v6 ? AF_INET6 : AF_INET;
    if (sg_pp_end(src, v6, pair->src, &pair->sport) != SG_OK
        || sg_pp_end(dst, v6, pair->dst, &pair->dport) != SG_OK)
    {
        return SG_ERROR;
    }
    return SG_OK;
}

size_t
sg_proxy_protocol_write_v1(u_char *buf, size_t size,
    const struct sockaddr *src, const struct sockaddr *dst)
{
    sg_pp_pair_t  pair;
    char          line[2 * INET6_ADDRSTRLEN + 64];
    char          sa[INET6_ADDRSTRLEN], da[INET6_ADDRSTRLEN];
    int           n;

    if (sg_pp_pair(src, dst, &pair) != SG_OK
        || inet_ntop(pair.family, pair.src, sa, sizeof(sa)) == NULL
        || inet_ntop(pair.family, pair.dst, da, sizeof(da)) == NULL)
    {
        return 0;
    }
    n = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n",
                 pair.family == AF_INET ? "TCP4" : "TCP6", sa, da,
                 (unsigned) ntohs(pair.sport), (unsigned) ntohs(pair.dport));
    if (n <= 0 || (size_t) n >= sizeof(line)
        || n > SG_PROXY_PROTOCOL_V1_MAX || (size_t) n > size)
    {
        return 0;
    }
    memcpy(buf, line, (size_t) n);
    return (size_t) n;
}

size_t
sg_proxy_protocol_write_v2(u_char *buf, size_t size,
    const struct sockaddr *src, const struct sockaddr *dst)
{
    sg_pp_pair_t  pair;
    size_t        alen, n;
    u_char       *p;

    if (sg_pp_pair(src, dst, &pair) != SG_OK) {
        return 0;
    }
    alen = pair.family == AF_INET ? 4 : 16;
    n = SG_PP2_HEADER_LEN + 2 * alen + 4;
    if (n > size) {
        return 0;
    }
    p = buf;
    memcpy(p, sg_pp2_sig, SG_PP2_SIG_LEN);
    p += SG_PP2_SIG_LEN;
    *p++ = SG_PP2_VERSION << 4 | SG_PP2_CMD_PROXY;
    *p++ = (pair.family == AF_INET ? SG_PP2_FAM_INET : SG_PP2_FAM_INET6) << 4
           | SG_PP2_PROTO_STREAM;
    *p++ = (u_char) ((n - SG_PP2_HEADER_LEN) >> 8);
    *p++ = (u_char) (n - SG_PP2_HEADER_LEN);
    memcpy(p, pair.src, alen);
    p += alen;
    memcpy(p, pair.dst, alen);
    p += alen;
    memcpy(p, &pair.sport, 2);
    memcpy(p + 2, &pair.dport, 2);
    return n;
}
