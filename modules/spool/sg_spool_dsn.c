/*
 * sg_spool_dsn.c: the delivery status notification for a message the
 * forwarder gives up on (see sg_spool_queue.h).
 *
 * Owns only the buffer it returns.  Every field may come from a client
 * or a remote server and is written as if hostile: a one-line field
 * loses its control characters (a CRLF becomes one space) and is cut
 * to SG_SPOOL_DSN_FIELD_MAX octets, or shorter where the line is
 * already long; the quoted header section has every CR, LF and CRLF
 * made a CRLF, over-long lines folded, and any line that could pass
 * for the MIME boundary moved off it by a space.  The text is written
 * twice by the same code, once to count and once into a buffer of
 * exactly that size, so that no write can run past the end.
 */
#include "sg_spool_queue.h"

#define SG_SPOOL_DSN_LINE_MAX      998   /* RFC 5322 2.1.1, no CRLF */
/* Where a one-line field stops: the fixed text after it on the same
 * line (">: host ", " said: ", "@", ">") fits in what is left. */
#define SG_SPOOL_DSN_LINE_ROOM     980
#define SG_SPOOL_DSN_FIELD_MAX     900
#define SG_SPOOL_DSN_BOUNDARY_MAX  70    /* RFC 2046 5.1.1 */
#define SG_SPOOL_DSN_DATE_LEN      64

typedef struct {
    u_char    *buf;             /* NULL: count only */
    size_t     len;
    size_t     col;             /* octets since the last CRLF */
    bool       eightbit;        /* an octet >= 0x80 was written */
} sg_spool_dsn_out_t;

typedef struct {
    const sg_spool_dsn_t  *d;
    u_char                 boundary[SG_SPOOL_DSN_BOUNDARY_MAX];
    size_t                 blen;
    u_char                 arrival[SG_SPOOL_DSN_DATE_LEN];
    size_t                 arrival_len;
    u_char                 now[SG_SPOOL_DSN_DATE_LEN];
    size_t                 now_len;
    u_char                 until[SG_SPOOL_DSN_DATE_LEN];
    size_t                 until_len;   /* 0: no Will-Retry-Until */
    bool                   global;      /* a non-ASCII address */
    bool                   eightbit;    /* the text part is not ASCII */
} sg_spool_dsn_ctx_t;


u_char *
sg_spool_format_date(u_char *p, u_char *last, time_t t)
{
    static const char  *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri",
                                   "Sat" };
    static const char  *months[] = { "Jan", "Feb", "Mar", "Apr", "May",
                                     "Jun", "Jul", "Aug", "Sep", "Oct",
                                     "Nov", "Dec" };
    struct tm           tm;

    if (gmtime_r(&t, &tm) == NULL) {
        /* a year past int: tm would be garbage, and index the tables */
        t = 0;
        (void) gmtime_r(&t, &tm);
    }
    return sg_slprintf(p, last, "%s, %d %s %lld %02d:%02d:%02d +0000",
                       days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
                       (long long) tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                       tm.tm_sec);
}


static void
sg_spool_dsn_put(sg_spool_dsn_out_t *o, const u_char *p, size_t n)
{
    size_t  i;

    if (o->buf != NULL && n) {
        memcpy(o->buf + o->len, p, n);
    }
    for (i = 0; i < n && !o->eightbit; i++) {
        o->eightbit = p[i] >= 0x80;
    }
    o->len += n;
    o->col += n;
}

#define sg_spool_dsn_lit(o, s)                                               \
    sg_spool_dsn_put(o, (const u_char *) (s), sizeof(s) - 1)

static void
sg_spool_dsn_crlf(sg_spool_dsn_out_t *o)
{
    sg_spool_dsn_lit(o, "\r\n");
    o->col = 0;
}

static bool
sg_spool_dsn_ctl(u_char c)
{
    return c < 0x20 || c == 0x7f;
}

/*
 * A field on one line.  Trailing CRs and LFs go, a CRLF inside becomes
 * one space (the lines of a multi-line reply, joined), and any other
 * control character a space.  Cut at SG_SPOOL_DSN_FIELD_MAX octets or
 * at SG_SPOOL_DSN_LINE_ROOM on the line, whichever comes first, and
 * then back to the start of a UTF-8 character (at most three bytes
 * back, so that a run of stray continuation bytes is still cut).
 */
static void
sg_spool_dsn_field(sg_spool_dsn_out_t *o, const sg_str_t *s)
{
    const u_char  *p = s->data;
    u_char         tmp[SG_SPOOL_DSN_FIELD_MAX];
    size_t         n = s->len, max, i, k, cut;

    while (n && (p[n - 1] == '\r' || p[n - 1] == '\n')) {
        n--;
    }
    max = o->col < SG_SPOOL_DSN_LINE_ROOM ? SG_SPOOL_DSN_LINE_ROOM - o->col
                                          : 0;
    max = sg_min(max, SG_SPOOL_DSN_FIELD_MAX);

    for (cut = 0, k = 0; cut < n && k < max; k++) {
        cut += (p[cut] == '\r' && cut + 1 < n && p[cut + 1] == '\n') ? 2 : 1;
    }
    for (k = 0; k < 3 && cut < n && cut > 0 && (p[cut] & 0xc0) == 0x80; k++) {
        cut--;
    }

    for (i = 0, k = 0; i < cut; i++) {
        if (p[i] == '\r' && i + 1 < cut && p[i + 1] == '\n') {
            i++;
        }
        tmp[k++] = sg_spool_dsn_ctl(p[i]) ? ' ' : p[i];
    }
    sg_spool_dsn_put(o, tmp, k);
}

static void
sg_spool_dsn_boundary_line(sg_spool_dsn_out_t *o,
    const sg_spool_dsn_ctx_t *c, bool close)
{
    sg_spool_dsn_lit(o, "--");
    sg_spool_dsn_put(o, c->boundary, c->blen);
    if (close) {
        sg_spool_dsn_lit(o, "--");
    }
    sg_spool_dsn_crlf(o);
}

/* RFC 3464: DIGIT "." 1*3DIGIT "." 1*3DIGIT */
static bool
sg_spool_dsn_status_valid(const sg_str_t *s)
{
    size_t  i = 0, part, digits;

    for (part = 0; part < 3; part++) {
        if (part > 0) {
            if (i == s->len || s->data[i] != '.') {
                return false;
            }
            i++;
        }
        for (digits = 0; i < s->len && digits < 3; digits++, i++) {
            if (s->data[i] < '0' || s->data[i] > '9') {
                break;
            }
        }
        if (digits == 0 || (part == 0 && digits != 1)) {
            return false;
        }
    }
    return i == s->len;
}

static bool
sg_spool_dsn_ascii(const sg_str_t *s)
{
    size_t  i;

    for (i = 0; i < s->len; i++) {
        if (s->data[i] >= 0x80) {
            return false;
        }
    }
    return true;
}

/*
 * The boundary is DSN_ID "/" HOST.  Both come from smtpgate itself,
 * but a byte RFC 2046 does not allow in a boundary would break the
 * whole report, so it becomes '_', and the boundary is cut at the
 * RFC's 70 octets.
 */
static void
sg_spool_dsn_boundary(sg_spool_dsn_ctx_t *c)
{
    static const char  *bchars = "'()+_,-./:=?";
    const sg_str_t     *parts[2];
    size_t              i, j;
    u_char              b;

    parts[0] = &c->d->dsn_id;
    parts[1] = &c->d->host;
    c->blen = 0;
    for (j = 0; j < 2; j++) {
        if (j == 1 && c->blen < SG_SPOOL_DSN_BOUNDARY_MAX) {
            c->boundary[c->blen++] = '/';
        }
        for (i = 0; i < parts[j]->len; i++) {
            if (c->blen == SG_SPOOL_DSN_BOUNDARY_MAX) {
                return;
            }
            b = parts[j]->data[i];
            if (!((b >= '0' && b <= '9') || (b >= 'a' && b <= 'z')
                  || (b >= 'A' && b <= 'Z')
                  || (b != '\0' && strchr(bchars, b) != NULL)))
            {
                b = '_';
            }
            c->boundary[c->blen++] = b;
        }
    }
}

static void
sg_spool_dsn_text(sg_spool_dsn_out_t *o, const sg_spool_dsn_ctx_t *c)
{
    const sg_spool_dsn_t       *d = c->d;
    const sg_spool_dsn_rcpt_t  *r;
    size_t                      i;

    sg_spool_dsn_lit(o, "This is the mail system at host ");
    sg_spool_dsn_field(o, &d->host);
    sg_spool_dsn_lit(o, ".");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "Your message, received ");
    sg_spool_dsn_put(o, c->arrival, c->arrival_len);
    sg_spool_dsn_lit(o, " with queue id ");
    sg_spool_dsn_field(o, &d->queue_id);
    sg_spool_dsn_lit(o, ",");
    sg_spool_dsn_crlf(o);
    if (d->delayed) {
        sg_spool_dsn_lit(o, "has not yet been delivered to one or more "
                            "recipients.");
        sg_spool_dsn_crlf(o);
        sg_spool_dsn_lit(o, "This is a warning only: it is still being "
                            "tried, and you need not send it again.");
        sg_spool_dsn_crlf(o);
        if (c->until_len) {
            sg_spool_dsn_lit(o, "It will be tried until ");
            sg_spool_dsn_put(o, c->until, c->until_len);
            sg_spool_dsn_lit(o, ".");
            sg_spool_dsn_crlf(o);
        }
    } else {
        sg_spool_dsn_lit(o, "could not be delivered to one or more "
                            "recipients.");
        sg_spool_dsn_crlf(o);
    }

    for (i = 0; i < d->nrcpts; i++) {
        r = &d->rcpts[i];
        sg_spool_dsn_crlf(o);
        sg_spool_dsn_lit(o, "<");
        sg_spool_dsn_field(o, &r->rcpt);
        sg_spool_dsn_lit(o, ">: ");
        if (r->text.len) {
            sg_spool_dsn_field(o, &r->text);
            if (r->reply.len) {
                sg_spool_dsn_crlf(o);       /* the reply on a line of its
                                               own: each is cut apart */
                sg_spool_dsn_lit(o, "    ");
            }
        }
        if (r->reply.len) {
            if (r->remote.len) {
                sg_spool_dsn_lit(o, "host ");
                sg_spool_dsn_field(o, &r->remote);
                sg_spool_dsn_lit(o, " said: ");
            }
            sg_spool_dsn_field(o, &r->reply);
        } else if (r->text.len == 0) {
            sg_spool_dsn_lit(o, "delivery failed");
        }
        sg_spool_dsn_crlf(o);
    }
    sg_spool_dsn_crlf(o);
}

static void
sg_spool_dsn_rcpt(sg_spool_dsn_out_t *o, const sg_spool_dsn_ctx_t *c,
    const sg_spool_dsn_rcpt_t *r)
{
    sg_spool_dsn_lit(o, "Final-Recipient: ");
    if (sg_spool_dsn_ascii(&r->rcpt)) {
        sg_spool_dsn_lit(o, "rfc822; ");
    } else {
        sg_spool_dsn_lit(o, "utf-8; ");       /* RFC 6533 */
    }
    sg_spool_dsn_field(o, &r->rcpt);
    sg_spool_dsn_crlf(o);
    if (c->d->delayed) {
        sg_spool_dsn_lit(o, "Action: delayed");
    } else {
        sg_spool_dsn_lit(o, "Action: failed");
    }
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "Status: ");
    if (sg_spool_dsn_status_valid(&r->status)) {
        sg_spool_dsn_put(o, r->status.data, r->status.len);
    } else if (c->d->delayed) {
        sg_spool_dsn_lit(o, "4.0.0");
    } else {
        sg_spool_dsn_lit(o, "5.0.0");
    }
    sg_spool_dsn_crlf(o);
    if (r->remote.len) {
        sg_spool_dsn_lit(o, "Remote-MTA: dns; ");
        sg_spool_dsn_field(o, &r->remote);
        sg_spool_dsn_crlf(o);
    }
    if (r->reply.len) {
        sg_spool_dsn_lit(o, "Diagnostic-Code: smtp; ");
        sg_spool_dsn_field(o, &r->reply);
        sg_spool_dsn_crlf(o);
    }
    sg_spool_dsn_lit(o, "Last-Attempt-Date: ");
    sg_spool_dsn_put(o, c->now, c->now_len);
    sg_spool_dsn_crlf(o);
    if (c->d->delayed && c->until_len) {
        sg_spool_dsn_lit(o, "Will-Retry-Until: ");
        sg_spool_dsn_put(o, c->until, c->until_len);
        sg_spool_dsn_crlf(o);
    }
}

static void
sg_spool_dsn_status(sg_spool_dsn_out_t *o, const sg_spool_dsn_ctx_t *c)
{
    const sg_spool_dsn_t  *d = c->d;
    size_t                 i;

    sg_spool_dsn_lit(o, "Reporting-MTA: dns; ");
    sg_spool_dsn_field(o, &d->host);
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "X-Smtpgate-Queue-ID: ");
    sg_spool_dsn_field(o, &d->queue_id);
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "Arrival-Date: ");
    sg_spool_dsn_put(o, c->arrival, c->arrival_len);
    sg_spool_dsn_crlf(o);

    for (i = 0; i < d->nrcpts; i++) {
        sg_spool_dsn_crlf(o);
        sg_spool_dsn_rcpt(o, c, &d->rcpts[i]);
    }
    sg_spool_dsn_crlf(o);
}

/* One quoted header line, without its line end: moved off the boundary
 * by a space if it starts like it, and folded (CRLF TAB) wherever it
 * would pass SG_SPOOL_DSN_LINE_MAX. */
static void
sg_spool_dsn_header_line(sg_spool_dsn_out_t *o, const sg_spool_dsn_ctx_t *c,
    const u_char *p, size_t n)
{
    size_t  k;

    if (n >= 2 + c->blen && p[0] == '-' && p[1] == '-'
        && memcmp(p + 2, c->boundary, c->blen) == 0)
    {
        sg_spool_dsn_lit(o, " ");
    }
    for ( ;; ) {
        k = sg_min(n, SG_SPOOL_DSN_LINE_MAX - o->col);
        sg_spool_dsn_put(o, p, k);
        p += k;
        n -= k;
        if (n == 0) {
            break;
        }
        sg_spool_dsn_crlf(o);
        sg_spool_dsn_lit(o, "\t");
    }
    sg_spool_dsn_crlf(o);
}

/*
 * The header section: whole lines up to the first empty one, at most
 * SG_SPOOL_DSN_HEADERS_MAX octets of the message.  CRLF, a bare LF and
 * a bare CR all end a line, both here and in the empty-line test, so
 * that no line end written as CRLF can make an empty line of its own.
 * A last line with no end may have been cut: it is left out.
 */
static void
sg_spool_dsn_headers(sg_spool_dsn_out_t *o, const sg_spool_dsn_ctx_t *c)
{
    const u_char  *p = c->d->message.data, *end, *q, *lim;
    size_t         room = SG_SPOOL_DSN_HEADERS_MAX, term;

    if (c->d->message.len == 0) {
        return;                 /* data may be NULL: no arithmetic on it */
    }
    end = p + c->d->message.len;
    while (p < end) {
        lim = p + sg_min(room, (size_t) (end - p));
        for (q = p; q < lim && *q != '\r' && *q != '\n'; q++) {
            /* void */
        }
        if (q == lim || q == p) {
            break;              /* no room, no line end, or the end */
        }
        term = (*q == '\r' && q + 1 < end && q[1] == '\n') ? 2 : 1;
        if ((size_t) (q - p) + term > room) {
            break;
        }
        sg_spool_dsn_header_line(o, c, p, (size_t) (q - p));
        room -= (size_t) (q - p) + term;
        p = q + term;
    }
}

/* The notification's own header section and the MIME preamble. */
static void
sg_spool_dsn_head(sg_spool_dsn_out_t *o, const sg_spool_dsn_ctx_t *c)
{
    const sg_spool_dsn_t  *d = c->d;

    sg_spool_dsn_lit(o, "From: Mail Delivery System <MAILER-DAEMON@");
    sg_spool_dsn_field(o, &d->host);
    sg_spool_dsn_lit(o, ">");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "To: <");
    sg_spool_dsn_field(o, &d->sender);
    sg_spool_dsn_lit(o, ">");
    sg_spool_dsn_crlf(o);
    if (d->delayed) {
        sg_spool_dsn_lit(o, "Subject: Delayed Mail (still being retried)");
    } else {
        sg_spool_dsn_lit(o, "Subject: Undelivered Mail Returned to Sender");
    }
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "Date: ");
    sg_spool_dsn_put(o, c->now, c->now_len);
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "Message-ID: <");
    sg_spool_dsn_field(o, &d->dsn_id);
    sg_spool_dsn_lit(o, "@");
    sg_spool_dsn_field(o, &d->host);
    sg_spool_dsn_lit(o, ">");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "Auto-Submitted: auto-replied");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "MIME-Version: 1.0");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "Content-Type: multipart/report; "
                        "report-type=delivery-status;");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "\tboundary=\"");
    sg_spool_dsn_put(o, c->boundary, c->blen);
    sg_spool_dsn_lit(o, "\"");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_lit(o, "This is a MIME-encapsulated message.");
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_crlf(o);
}

static void
sg_spool_dsn_write(sg_spool_dsn_out_t *o, const sg_spool_dsn_ctx_t *c)
{
    sg_spool_dsn_head(o, c);

    sg_spool_dsn_boundary_line(o, c, false);
    if (c->eightbit) {
        sg_spool_dsn_lit(o, "Content-Type: text/plain; charset=utf-8\r\n"
                            "Content-Transfer-Encoding: 8bit\r\n");
    } else {
        sg_spool_dsn_lit(o, "Content-Type: text/plain; charset=us-ascii\r\n"
                            "Content-Transfer-Encoding: 7bit\r\n");
    }
    o->col = 0;
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_text(o, c);

    sg_spool_dsn_boundary_line(o, c, false);
    if (c->global) {
        sg_spool_dsn_lit(o, "Content-Type: message/global-delivery-status");
    } else {
        sg_spool_dsn_lit(o, "Content-Type: message/delivery-status");
    }
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_status(o, c);

    sg_spool_dsn_boundary_line(o, c, false);
    if (c->global) {
        sg_spool_dsn_lit(o, "Content-Type: message/global-headers");
    } else {
        sg_spool_dsn_lit(o, "Content-Type: text/rfc822-headers");
    }
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_crlf(o);
    sg_spool_dsn_headers(o, c);
    sg_spool_dsn_boundary_line(o, c, true);
}

u_char *
sg_spool_dsn_compose(const sg_spool_dsn_t *d, size_t *len)
{
    sg_spool_dsn_ctx_t   c;
    sg_spool_dsn_out_t   o;
    u_char              *buf, *p;
    size_t               i, size;

    c.d = d;
    sg_spool_dsn_boundary(&c);
    p = sg_spool_format_date(c.arrival, c.arrival + sizeof(c.arrival),
                             d->arrival);
    c.arrival_len = (size_t) (p - c.arrival);
    p = sg_spool_format_date(c.now, c.now + sizeof(c.now), d->now);
    c.now_len = (size_t) (p - c.now);
    c.until_len = 0;
    if (d->delayed && d->retry_until) {
        p = sg_spool_format_date(c.until, c.until + sizeof(c.until),
                                 d->retry_until);
        c.until_len = (size_t) (p - c.until);
    }
    c.global = !sg_spool_dsn_ascii(&d->sender);
    for (i = 0; i < d->nrcpts; i++) {
        c.global = c.global || !sg_spool_dsn_ascii(&d->rcpts[i].rcpt);
    }

    /* The text part's charset depends on what is left of its fields
     * after they are cut: write it once to find out. */
    memset(&o, 0, sizeof(o));
    c.eightbit = false;
    sg_spool_dsn_text(&o, &c);
    c.eightbit = o.eightbit;

    memset(&o, 0, sizeof(o));
    sg_spool_dsn_write(&o, &c);
    size = o.len;

    buf = malloc(size);
    if (buf == NULL) {
        return NULL;
    }
    memset(&o, 0, sizeof(o));
    o.buf = buf;
    sg_spool_dsn_write(&o, &c);
    SG_BUG_ON(o.len != size);

    *len = size;
    return buf;
}
