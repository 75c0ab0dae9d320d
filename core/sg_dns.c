/*
 * sg_dns.c: DNS queries and answers (sg_dns.h).
 *
 * Owns nothing: every function reads and writes the caller's bytes.
 * Refuses a name that loops or points forwards, a record that runs past
 * its message, and an answer whose question differs from the query's.
 */
#include "sg_core.h"
#include "sg_dns.h"

#define SG_DNS_HEADER  12

static uint16_t
sg_dns_get16(const u_char *p)
{
    return (uint16_t) ((p[0] << 8) | p[1]);
}

static uint32_t
sg_dns_get32(const u_char *p)
{
    return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16)
           | ((uint32_t) p[2] << 8) | p[3];
}

static u_char *
sg_dns_put16(u_char *p, unsigned v)
{
    *p++ = (u_char) (v >> 8);
    *p++ = (u_char) v;
    return p;
}

size_t
sg_dns_arpa_name(const struct sockaddr *sa, u_char *buf)
{
    static const char         hex[] = "0123456789abcdef";
    const struct sockaddr_in6  *sin6;
    const u_char               *a;
    u_char                     *p = buf;
    int                         i;

    if (sa->sa_family == AF_INET6) {
        sin6 = (const struct sockaddr_in6 *) sa;
        a = sin6->sin6_addr.s6_addr;
        if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
            for (i = 15; i >= 0; i--) {
                *p++ = (u_char) hex[a[i] & 0xf];
                *p++ = '.';
                *p++ = (u_char) hex[a[i] >> 4];
                *p++ = '.';
            }
            memcpy(p, "ip6.arpa", 8);
            return (size_t) (p - buf) + 8;
        }
        a += 12;
    } else {
        a = (const u_char *) &((const struct sockaddr_in *) sa)->sin_addr;
    }
    p = sg_slprintf(p, buf + SG_DNS_NAME_MAX, "%u.%u.%u.%u.in-addr.arpa",
                    a[3], a[2], a[1], a[0]);
    return (size_t) (p - buf);
}

size_t
sg_dns_query(u_char *buf, size_t size, uint16_t id, const sg_str_t *name,
    uint16_t type)
{
    const u_char  *s, *dot, *end = name->data + name->len;
    u_char        *p = buf;
    size_t         label;

    /* header, the name's labels with their lengths and a root label,
     * type and class */
    if (name->len == 0 || name->len > SG_DNS_NAME_MAX - 2
        || size < SG_DNS_HEADER + name->len + 2 + 4)
    {
        return 0;
    }
    p = sg_dns_put16(p, id);
    p = sg_dns_put16(p, 0x0100);            /* RD */
    p = sg_dns_put16(p, 1);                 /* QDCOUNT */
    memset(p, 0, 6);
    p += 6;
    for (s = name->data; s < end; s = dot + 1) {
        dot = memchr(s, '.', (size_t) (end - s));
        if (dot == NULL) {
            dot = end;
        }
        label = (size_t) (dot - s);
        if (label == 0 || label > 63) {
            return 0;
        }
        *p++ = (u_char) label;
        p = (u_char *) memcpy(p, s, label) + label;
        if (dot == end) {
            break;
        }
    }
    if (end[-1] == '.') {
        return 0;                           /* "name." or ".." */
    }
    *p++ = 0;
    p = sg_dns_put16(p, type);
    p = sg_dns_put16(p, 1);                 /* IN */
    return (size_t) (p - buf);
}

size_t
sg_dns_add_edns(u_char *msg, size_t len, size_t size)
{
    u_char  *p = msg + len;

    if (len < SG_DNS_HEADER || size - len < SG_DNS_OPT_LEN
        || sg_dns_get16(msg + 10) != 0)
    {
        return len;
    }
    *p++ = 0;                               /* the root */
    p = sg_dns_put16(p, SG_DNS_OPT);
    p = sg_dns_put16(p, SG_DNS_EDNS_UDP);   /* in place of the class */
    memset(p, 0, 6);  /* extended rcode, version 0, flags (no DO), RDLEN */
    (void) sg_dns_put16(msg + 10, 1);       /* ARCOUNT */
    return len + SG_DNS_OPT_LEN;
}

size_t
sg_dns_drop_edns(u_char *msg, size_t len)
{
    if (len < SG_DNS_HEADER + SG_DNS_OPT_LEN || sg_dns_get16(msg + 10) != 1
        || sg_dns_get16(msg + len - SG_DNS_OPT_LEN + 1) != SG_DNS_OPT)
    {
        return len;
    }
    (void) sg_dns_put16(msg + 10, 0);
    return len - SG_DNS_OPT_LEN;
}

int
sg_dns_id(const u_char *msg, size_t len)
{
    return len < SG_DNS_HEADER ? -1 : (int) sg_dns_get16(msg);
}

/*
 * Read the name at msg[*pos] into out (dotted text, at most
 * SG_DNS_NAME_MAX bytes) and move *pos past it (past the first pointer
 * when there is one).  SG_OK; SG_DECLINED when the name is well formed
 * but has a byte that no name compared here can have (a '.', a space,
 * a control character or a byte over 0x7e inside a label): its record
 * is skipped; SG_ERROR when it is malformed.
 */
static int
sg_dns_name(const u_char *msg, size_t len, size_t *pos, u_char *out,
    size_t *out_len)
{
    size_t    p = *pos, wire = 1, n = 0, label, i;
    unsigned  jumps = 0;
    bool      odd = false, jumped = false;

    for ( ;; ) {
        if (p >= len) {
            return SG_ERROR;
        }
        label = msg[p];
        if ((label & 0xc0) == 0xc0) {
            size_t  to;

            if (p + 1 >= len || ++jumps > SG_DNS_JUMPS_MAX) {
                return SG_ERROR;
            }
            to = ((label & 0x3f) << 8) | msg[p + 1];
            if (to >= p) {
                return SG_ERROR;            /* only backwards: no loop */
            }
            if (!jumped) {
                *pos = p + 2;
                jumped = true;
            }
            p = to;
            continue;
        }
        if (label & 0xc0) {
            return SG_ERROR;                /* 0x40, 0x80: not in use */
        }
        if (label == 0) {
            break;
        }
        wire += label + 1;
        if (wire > 255 || p + 1 + label > len) {
            return SG_ERROR;
        }
        if (n) {
            out[n++] = '.';
        }
        for (i = 0; i < label; i++) {
            u_char  c = msg[p + 1 + i];

            if (c <= ' ' || c > '~' || c == '.') {
                odd = true;
            }
            out[n++] = c;
        }
        p += 1 + label;
    }
    if (!jumped) {
        *pos = p + 1;
    }
    *out_len = n;
    return odd ? SG_DECLINED : SG_OK;
}

static bool
sg_dns_name_eq(const u_char *a, size_t alen, const u_char *b, size_t blen)
{
    return alen == blen && sg_strncasecmp(a, b, alen) == 0;
}

/* One resource record of the answer section, its data located. */
typedef struct {
    u_char     owner[SG_DNS_NAME_MAX];
    size_t     owner_len;
    int        owner_rc;
    uint16_t   type;
    uint16_t   class;
    uint32_t   ttl;
    size_t     rdata;                   /* offset in the message */
    size_t     rdlen;
} sg_dns_rr_t;

/* SG_OK, SG_DONE when a truncated message ends here, SG_ERROR. */
static int
sg_dns_rr(const u_char *msg, size_t len, size_t *pos, bool truncated,
    sg_dns_rr_t *rr)
{
    rr->owner_rc = sg_dns_name(msg, len, pos, rr->owner, &rr->owner_len);
    if (rr->owner_rc == SG_ERROR || *pos + 10 > len) {
        return truncated ? SG_DONE : SG_ERROR;
    }
    rr->type = sg_dns_get16(msg + *pos);
    rr->class = sg_dns_get16(msg + *pos + 2);
    rr->ttl = sg_dns_get32(msg + *pos + 4);
    if (rr->ttl > INT32_MAX) {
        rr->ttl = 0;                        /* RFC 2181 8 */
    }
    rr->rdlen = sg_dns_get16(msg + *pos + 8);
    rr->rdata = *pos + 10;
    if (rr->rdata + rr->rdlen > len) {
        return truncated ? SG_DONE : SG_ERROR;
    }
    *pos = rr->rdata + rr->rdlen;
    return SG_OK;
}

/* Take the record of the asked type if its data is what the type says. */
static void
sg_dns_take(const u_char *msg, size_t len, const sg_dns_rr_t *rr,
    sg_dns_answer_t *a)
{
    u_char  name[SG_DNS_NAME_MAX];
    size_t  pos = rr->rdata, n;

    if (rr->type == SG_DNS_PTR) {
        if (sg_dns_name(msg, len, &pos, name, &n) != SG_OK
            || pos > rr->rdata + rr->rdlen)
        {
            return;
        }
        if (a->n == 0) {
            memcpy(a->name, name, n);
            a->name_len = n;
        }
    } else {
        n = rr->type == SG_DNS_A ? 4 : 16;
        if (rr->rdlen != n) {
            return;
        }
        if (a->naddrs < SG_DNS_ADDRS_MAX) {
            memcpy(a->addrs[a->naddrs++], msg + rr->rdata, n);
        }
    }
    a->n++;
    a->ttl = sg_min(a->ttl, rr->ttl);
}

/*
 * One pass over the answer section for the records owned by target:
 * those of the asked type are taken; a CNAME's name is put in alias.
 * SG_OK or SG_ERROR (malformed).
 */
static int
sg_dns_scan(const u_char *msg, size_t len, size_t start, unsigned ancount,
    const u_char *target, size_t target_len, uint16_t type,
    sg_dns_answer_t *a, u_char *alias, size_t *alias_len, uint32_t *alias_ttl)
{
    sg_dns_rr_t  rr;
    size_t       pos = start, p;
    unsigned     i;
    int          rc;

    *alias_len = 0;
    for (i = 0; i < ancount; i++) {
        rc = sg_dns_rr(msg, len, &pos, a->truncated, &rr);
        if (rc == SG_DONE) {
            break;
        }
        if (rc == SG_ERROR) {
            return SG_ERROR;
        }
        if (rr.owner_rc != SG_OK || rr.class != 1
            || !sg_dns_name_eq(rr.owner, rr.owner_len, target, target_len))
        {
            continue;
        }
        if (rr.type == type) {
            sg_dns_take(msg, len, &rr, a);
        } else if (rr.type == SG_DNS_CNAME && *alias_len == 0) {
            p = rr.rdata;
            if (sg_dns_name(msg, len, &p, alias, alias_len) != SG_OK
                || p > rr.rdata + rr.rdlen)
            {
                *alias_len = 0;
                continue;
            }
            *alias_ttl = rr.ttl;
        }
    }
    return SG_OK;
}

int
sg_dns_parse(const u_char *msg, size_t len, const sg_str_t *name,
    uint16_t type, sg_dns_answer_t *a, const char **err)
{
    u_char    target[SG_DNS_NAME_MAX], alias[SG_DNS_NAME_MAX];
    size_t    pos = SG_DNS_HEADER, target_len, alias_len;
    uint16_t  flags;
    uint32_t  alias_ttl = 0;
    unsigned  ancount, hops;

    memset(a, 0, sizeof(*a));
    a->ttl = UINT32_MAX;
    if (len < SG_DNS_HEADER) {
        *err = "shorter than a DNS header";
        return SG_ERROR;
    }
    flags = sg_dns_get16(msg + 2);
    if (!(flags & 0x8000) || (flags & 0x7800)) {
        *err = "not a response to a standard query";
        return SG_ERROR;
    }
    a->truncated = (flags & 0x0200) != 0;
    a->rcode = flags & 0x000f;
    if (sg_dns_get16(msg + 4) != 1) {
        *err = "not one question";
        return SG_ERROR;
    }
    ancount = sg_dns_get16(msg + 6);
    if (sg_dns_name(msg, len, &pos, target, &target_len) != SG_OK
        || pos + 4 > len)
    {
        *err = "a malformed question";
        return SG_ERROR;
    }
    if (!sg_dns_name_eq(target, target_len, name->data, name->len)
        || sg_dns_get16(msg + pos) != type || sg_dns_get16(msg + pos + 2) != 1)
    {
        *err = "an answer to another question";
        return SG_ERROR;
    }
    pos += 4;
    if (a->rcode != SG_DNS_NOERROR) {
        a->ttl = 0;
        return SG_OK;
    }
    for (hops = 0; hops <= SG_DNS_CNAMES_MAX; hops++) {
        if (sg_dns_scan(msg, len, pos, ancount, target, target_len, type,
                        a, alias, &alias_len, &alias_ttl) != SG_OK)
        {
            *err = "a malformed record";
            return SG_ERROR;
        }
        if (a->n || alias_len == 0) {
            break;
        }
        memcpy(target, alias, alias_len);
        target_len = alias_len;
        a->ttl = sg_min(a->ttl, alias_ttl);
    }
    if (a->n == 0) {
        a->ttl = 0;
    }
    return SG_OK;
}

bool
sg_dns_host_name_ok(const u_char *name, size_t len)
{
    size_t  i, label = 0;
    bool    digits = true;

    if (len == 0 || len > 253) {
        return false;
    }
    for (i = 0; i < len; i++) {
        u_char  c = name[i];

        if (c == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
            digits = true;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '-' || c == '_'))
        {
            return false;
        }
        if (c < '0' || c > '9') {
            digits = false;
        }
        if (++label > 63) {
            return false;
        }
    }
    return label != 0 && !digits;
}
