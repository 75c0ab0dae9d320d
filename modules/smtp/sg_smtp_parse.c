/*
 * sg_smtp_parse.c: the pure SMTP wire parsers declared in
 * sg_smtp_parse.h.
 *
 * Owns nothing: every result is a view into the caller's bytes, and no
 * function allocates, does I/O or keeps state between calls, so a
 * session resumes a parse simply by calling again with more bytes.
 * Refuses what RFC 5321 does not allow on the wire (NUL, a CR outside
 * CRLF, lines over the limit, reply codes that are malformed or change
 * within a reply) and SASL PLAIN messages of the wrong shape.  Which
 * verb is allowed when is policy, and is left to the session.
 */
#include "sg_core.h"
#include "sg_smtp_parse.h"

typedef struct {
    const char *name; /* canonical, upper case */
    size_t      len;
} sg_smtp_verb_entry_t;

#define SG_SMTP_VERB(v) [SG_SMTP_##v] = { #v, sizeof(#v) - 1 }

/* Indexed by sg_smtp_verb_e, so the name of a verb is one lookup. */
static const sg_smtp_verb_entry_t sg_smtp_verbs[SG_SMTP_VERB_COUNT] = {
    [SG_SMTP_UNKNOWN] = { "", 0 },
    SG_SMTP_VERB(HELO),
    SG_SMTP_VERB(EHLO),
    SG_SMTP_VERB(AUTH),
    SG_SMTP_VERB(MAIL),
    SG_SMTP_VERB(RCPT),
    SG_SMTP_VERB(DATA),
    SG_SMTP_VERB(BDAT),
    SG_SMTP_VERB(RSET),
    SG_SMTP_VERB(NOOP),
    SG_SMTP_VERB(QUIT),
    SG_SMTP_VERB(HELP),
    SG_SMTP_VERB(VRFY),
    SG_SMTP_VERB(EXPN),
    SG_SMTP_VERB(STARTTLS),
    SG_SMTP_VERB(ETRN),
    SG_SMTP_VERB(TURN),
    SG_SMTP_VERB(ATRN),
    SG_SMTP_VERB(XCLIENT),
    SG_SMTP_VERB(XFORWARD),
};

#undef SG_SMTP_VERB

static bool
sg_smtp_is_alnum(u_char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
           || (c >= 'a' && c <= 'z');
}

static u_char
sg_smtp_upper(u_char c)
{
    return (c >= 'a' && c <= 'z') ? (u_char) (c - 'a' + 'A') : c;
}

/*
 * Classify the line whose LF is at lf, reporting its worst fault.  A NUL
 * comes first because it is the fault most likely to be an attack (it
 * ends C strings further down); a stray CR next because it can smuggle
 * a line break past a backend that accepts bare CR.
 */
static sg_smtp_line_e
sg_smtp_line_classify(const u_char *p, const u_char *lf, sg_smtp_line_t *out)
{
    size_t len;
    bool   crlf;

    len = (size_t) (lf - p);
    crlf = len > 0 && lf[-1] == '\r';
    if (crlf) {
        len--;
    }

    out->line.data = (u_char *) p;
    out->line.len = len;
    out->consumed = (size_t) (lf - p) + 1;

    if (len == 0) {
        return crlf ? SG_SMTP_LINE_OK : SG_SMTP_LINE_BARE_LF;
    }
    if (memchr(p, '\0', len) != NULL) {
        return SG_SMTP_LINE_NUL;
    }
    if (memchr(p, '\r', len) != NULL) {
        return SG_SMTP_LINE_BARE_CR;
    }
    return crlf ? SG_SMTP_LINE_OK : SG_SMTP_LINE_BARE_LF;
}

sg_smtp_line_e
sg_smtp_read_line(const u_char *p, const u_char *last, size_t limit,
                  sg_smtp_line_t *out)
{
    const u_char *lf;
    size_t        avail, n;

    avail = (size_t) (last - p);
    n = avail < limit ? avail : limit;

    /* Only the first limit bytes are searched: a longer line is refused
     * whatever follows, and the search stays bounded on a full buffer. */
    lf = (n > 0) ? memchr(p, '\n', n) : NULL;
    if (lf != NULL) {
        return sg_smtp_line_classify(p, lf, out);
    }

    out->line.data = (u_char *) p;
    if (avail < limit) {
        /* A CR, NUL or partial verb so far is not yet a verdict: only
         * the LF tells where the line ends and what to drop. */
        out->line.len = 0;
        out->consumed = 0;
        return SG_SMTP_LINE_AGAIN;
    }

    out->line.len = n;
    out->consumed = n;
    return SG_SMTP_LINE_TOO_LONG;
}

bool
sg_smtp_skip_line(const u_char *p, const u_char *last, size_t *consumed)
{
    const u_char *lf;
    size_t        avail;

    avail = (size_t) (last - p);
    lf = (avail > 0) ? memchr(p, '\n', avail) : NULL;
    if (lf == NULL) {
        *consumed = avail;
        return false;
    }
    *consumed = (size_t) (lf - p) + 1;
    return true;
}

/*
 * The table is small and the length and first letter rule out nearly
 * every entry before any byte-wise comparison.  Every known verb has
 * 4, 7 or 8 letters, which settles most unknown words at once.
 */
static sg_smtp_verb_e
sg_smtp_verb_lookup(const u_char *name, size_t len)
{
    const sg_smtp_verb_entry_t *v;
    int                         i;
    u_char                      c;

    if (len != 4 && len != 7 && len != 8) {
        return SG_SMTP_UNKNOWN;
    }

    c = sg_smtp_upper(name[0]);
    for (i = SG_SMTP_UNKNOWN + 1; i < SG_SMTP_VERB_COUNT; i++) {
        v = &sg_smtp_verbs[i];
        if (v->len == len && (u_char) v->name[0] == c
            && sg_strncasecmp(name, (const u_char *) v->name, len) == 0) {
            return (sg_smtp_verb_e) i;
        }
    }
    return SG_SMTP_UNKNOWN;
}

int
sg_smtp_parse_command(const sg_str_t *line, sg_smtp_cmd_t *cmd)
{
    u_char *p, *q, *end;

    p = line->data;
    cmd->verb = SG_SMTP_UNKNOWN;
    cmd->name.data = p;
    cmd->name.len = 0;
    cmd->args.data = p;
    cmd->args.len = 0;

    if (line->len == 0) {
        return SG_ERROR;
    }
    end = p + line->len;

    for (q = p; q < end && *q != ' '; q++) {
        if (!sg_smtp_is_alnum(*q)) {
            return SG_ERROR;
        }
    }
    if (q == p) {
        return SG_ERROR;
    }

    cmd->name.len = (size_t) (q - p);
    cmd->verb = sg_smtp_verb_lookup(p, cmd->name.len);

    if (q < end) {
        q++;
    }
    /* Clients pad lines with blanks often enough that refusing them
     * would only break mail; leading blanks are the caller's to judge. */
    while (end > q && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }
    cmd->args.data = q;
    cmd->args.len = (size_t) (end - q);
    return SG_OK;
}

const char *
sg_smtp_verb_name(sg_smtp_verb_e verb)
{
    if ((int) verb < 0 || verb >= SG_SMTP_VERB_COUNT) {
        return "";
    }
    return sg_smtp_verbs[verb].name;
}

/* Paths and parameters (RFC 5321 4.1.2, with RFC 6531's 8-bit bytes). */

static bool
sg_smtp_atext(u_char c)
{
    static const char  specials[] = "!#$%&'*+-/=?^_`{|}~";

    return sg_smtp_is_alnum(c) || c >= 0x80
           || (c != '\0' && strchr(specials, c) != NULL);
}

/*
 * A dot-string local part.  Dots are allowed anywhere in it: addresses
 * such as "first..last@" are still in use, and refusing them would only
 * lose mail; the domain is held to the grammar.
 */
static const u_char *
sg_smtp_dot_string(const u_char *p, const u_char *end)
{
    const u_char  *start = p;

    while (p < end && (*p == '.' || sg_smtp_atext(*p))) {
        p++;
    }
    return p > start ? p : NULL;
}

/* A quoted-string local part; p is at its opening quote. */
static const u_char *
sg_smtp_quoted_string(const u_char *p, const u_char *end)
{
    for (p++; p < end; p++) {
        if (*p == '"') {
            return p + 1;
        }
        if (*p == '\\') {
            if (end - p < 2 || p[1] < 0x20 || p[1] > 0x7e) {
                return NULL;
            }
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            return NULL;
        }
    }
    return NULL;
}

/* A domain name (dot-separated labels) or an address literal. */
static const u_char *
sg_smtp_domain(const u_char *p, const u_char *end)
{
    const u_char  *start;

    if (p < end && *p == '[') {
        for (start = ++p; p < end && *p != ']'; p++) {
            if (*p < 0x21 || *p > 0x7e || *p == '[' || *p == '\\') {
                return NULL;
            }
        }
        return (p > start && p < end) ? p + 1 : NULL;
    }
    for ( ;; ) {
        for (start = p;
             p < end && (sg_smtp_is_alnum(*p) || *p == '-' || *p >= 0x80);
             p++)
        {
            /* a label */
        }
        if (p == start) {
            return NULL;
        }
        if (p == end || *p != '.') {
            return p;
        }
        p++;
    }
}

/* The '>' that closes the path opened before p: one inside a quoted
 * local part does not count. */
static const u_char *
sg_smtp_path_end(const u_char *p, const u_char *end)
{
    bool  quoted = false;

    for ( ; p < end; p++) {
        if (quoted) {
            if (*p == '\\' && end - p > 1) {
                p++;
            } else if (*p == '"') {
                quoted = false;
            }
        } else if (*p == '"') {
            quoted = true;
        } else if (*p == '>') {
            return p;
        }
    }
    return NULL;
}

/* The mailbox in [p, end), after an optional source route; the start of
 * the mailbox, or NULL. */
static const u_char *
sg_smtp_mailbox(const u_char *p, const u_char *end)
{
    const u_char  *q, *mbox;

    if (p < end && *p == '@') {                   /* "@a,@b:" */
        for ( ;; ) {
            if (p == end || *p != '@') {
                return NULL;
            }
            p = sg_smtp_domain(p + 1, end);
            if (p == NULL || p == end || (*p != ',' && *p != ':')) {
                return NULL;
            }
            if (*p++ == ':') {
                break;
            }
        }
    }
    mbox = p;
    if (p < end && *p == '"') {
        q = sg_smtp_quoted_string(p, end);
    } else {
        q = sg_smtp_dot_string(p, end);
    }
    if (q == NULL) {
        return NULL;
    }
    if (q == end) {
        return (end - mbox == 10
                && sg_strncasecmp(mbox, (const u_char *) "postmaster", 10)
                   == 0) ? mbox : NULL;
    }
    if (*q != '@' || sg_smtp_domain(q + 1, end) != end) {
        return NULL;
    }
    return mbox;
}

int
sg_smtp_parse_path(const sg_str_t *args, const char *prefix,
    bool allow_null, sg_smtp_path_t *out)
{
    const u_char  *p = args->data, *end = args->data + args->len;
    const u_char  *lt, *gt, *mbox;
    size_t         n = strlen(prefix), i;

    out->addr.data = (u_char *) end;
    out->addr.len = 0;
    out->params = out->addr;
    out->utf8 = false;
    if (args->len < n || sg_strncasecmp(p, (const u_char *) prefix, n)) {
        return SG_ERROR;
    }
    /* "MAIL FROM: <a@b>" is not in the grammar, but common. */
    for (p += n; p < end && (*p == ' ' || *p == '\t'); p++) {
        /* skip */
    }
    if (p == end || *p != '<') {
        return SG_ERROR;
    }
    lt = p + 1;
    gt = sg_smtp_path_end(lt, end);
    if (gt == NULL || (gt + 1 < end && gt[1] != ' ')) {
        return SG_ERROR;
    }
    for (p = gt + 1; p < end && *p == ' '; p++) {
        /* skip */
    }
    out->params.data = (u_char *) p;
    out->params.len = (size_t) (end - p);

    if (gt == lt) {
        out->addr.data = (u_char *) lt;
        return allow_null ? SG_OK : SG_DECLINED;
    }
    if (gt - lt > SG_SMTP_PATH_MAX) {
        return SG_DECLINED;
    }
    mbox = sg_smtp_mailbox(lt, gt);
    if (mbox == NULL) {
        return SG_DECLINED;
    }
    out->addr.data = (u_char *) mbox;
    out->addr.len = (size_t) (gt - mbox);
    for (i = 0; i < out->addr.len; i++) {
        if (mbox[i] >= 0x80) {
            out->utf8 = true;
            break;
        }
    }
    return SG_OK;
}

int
sg_smtp_next_param(sg_str_t *rest, sg_str_t *key, sg_str_t *value)
{
    u_char  *p = rest->data, *end = rest->data + rest->len, *w, *eq, *q;

    while (p < end && *p == ' ') {
        p++;
    }
    if (p == end) {
        rest->data = p;
        rest->len = 0;
        return SG_DONE;
    }
    for (w = p; p < end && *p != ' '; p++) {
        /* the word */
    }
    eq = memchr(w, '=', (size_t) (p - w));
    key->data = w;
    key->len = (size_t) ((eq ? eq : p) - w);
    value->data = eq ? eq + 1 : NULL;
    value->len = eq ? (size_t) (p - eq - 1) : 0;
    while (p < end && *p == ' ') {
        p++;
    }
    rest->data = p;
    rest->len = (size_t) (end - p);

    if (key->len == 0 || !sg_smtp_is_alnum(key->data[0])) {
        return SG_ERROR;
    }
    for (q = key->data; q < key->data + key->len; q++) {
        if (!sg_smtp_is_alnum(*q) && *q != '-') {
            return SG_ERROR;
        }
    }
    if (eq == NULL) {
        return SG_OK;
    }
    if (value->len == 0) {
        return SG_ERROR;
    }
    for (q = value->data; q < value->data + value->len; q++) {
        if (*q < 0x21 || *q == '=' || *q == 0x7f) {
            return SG_ERROR;
        }
    }
    return SG_OK;
}

/*
 * The text of one reply line of len bytes (with its ending, if any):
 * what follows the code and its '-' or ' ', without the CRLF or LF.
 */
static void
sg_smtp_line_text(const u_char *p, size_t len, sg_str_t *text)
{
    size_t start, end;

    if (len > 3 && (p[3] == '-' || p[3] == ' ')) {
        start = 4;
    } else {
        start = len < 3 ? len : 3;
    }

    end = len;
    if (end > start && p[end - 1] == '\n') {
        end--;
    }
    if (end > start && p[end - 1] == '\r') {
        end--;
    }

    text->data = (u_char *) p + start;
    text->len = end - start;
}

/*
 * Check the line at p, of which avail bytes have arrived.  first is the
 * reply's first line, or NULL if this is it: later lines must repeat its
 * code.  Faults are reported as soon as the bytes show them, so a
 * hostile backend cannot make the caller wait for a line it will refuse.
 * SG_OK sets *len (the line with its ending) and *more (a '-' line).
 */
static int
sg_smtp_reply_line(const u_char *p, size_t avail, const u_char *first,
                   size_t *len, bool *more)
{
    size_t i, n;

    for (i = 0; i < 3 && i < avail; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return SG_ERROR;
        }
        if (first != NULL ? p[i] != first[i]
                          : i == 0 && (p[0] < '2' || p[0] > '5')) {
            return SG_ERROR;
        }
    }
    if (avail <= 3) {
        return SG_AGAIN;
    }

    switch (p[3]) {
    case '-':
    case ' ':
        *more = (p[3] == '-');
        i = 4;
        break;
    case '\r':
    case '\n':
        *more = false;
        i = 3;
        break;
    default:
        return SG_ERROR;
    }

    n = avail < SG_SMTP_REPLY_LINE_MAX ? avail : SG_SMTP_REPLY_LINE_MAX;
    for (/* void */; i < n; i++) {
        if (p[i] == '\n') {
            *len = i + 1;
            return SG_OK;
        }
        if (p[i] == '\0') {
            return SG_ERROR;
        }
        if (p[i] == '\r' && i + 1 < n && p[i + 1] != '\n') {
            return SG_ERROR;
        }
    }

    /* No LF within the first SG_SMTP_REPLY_LINE_MAX bytes: too long. */
    return avail >= SG_SMTP_REPLY_LINE_MAX ? SG_ERROR : SG_AGAIN;
}

int
sg_smtp_parse_reply(const u_char *p, const u_char *last, size_t limit,
                    sg_smtp_reply_t *out)
{
    size_t   avail, win, off, len;
    unsigned lines;
    bool     more;
    int      rc;

    avail = (size_t) (last - p);
    win = avail < limit ? avail : limit;
    if (win == 0) {
        return avail >= limit ? SG_ERROR : SG_AGAIN;
    }

    off = 0;
    len = 0;
    lines = 0;
    do {
        rc = sg_smtp_reply_line(p + off, win - off, lines ? p : NULL, &len,
                                &more);
        if (rc != SG_OK) {
            /* Waiting is pointless once the window is the whole limit:
             * whatever comes next would make the reply too long. */
            return (rc == SG_AGAIN && avail >= limit) ? SG_ERROR : rc;
        }
        off += len;
        lines++;
    } while (more);

    out->start = p;
    out->len = off;
    out->code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    out->lines = lines;
    sg_smtp_line_text(p + off - len, len, &out->text);
    return SG_OK;
}

bool
sg_smtp_reply_next_line(const sg_smtp_reply_t *r, size_t *cursor,
                        sg_str_t *line)
{
    const u_char *p, *lf;
    size_t        rest, len;

    if (*cursor >= r->len) {
        return false;
    }

    p = r->start + *cursor;
    rest = r->len - *cursor;
    lf = memchr(p, '\n', rest);
    len = (lf != NULL) ? (size_t) (lf - p) + 1 : rest;

    sg_smtp_line_text(p, len, line);
    *cursor += len;
    return true;
}

bool
sg_smtp_ehlo_has(const sg_smtp_reply_t *r, const char *keyword,
                 sg_str_t *params)
{
    sg_str_t line;
    size_t   cursor, klen;

    if (params != NULL) {
        params->data = NULL;
        params->len = 0;
    }

    klen = strlen(keyword);
    cursor = 0;

    /* A refusal can be multi-line too; its lines advertise nothing. */
    if (r->code != 250 || klen == 0
        || !sg_smtp_reply_next_line(r, &cursor, &line)) {
        return false;
    }

    while (sg_smtp_reply_next_line(r, &cursor, &line)) {
        if (line.len < klen || (line.len > klen && line.data[klen] != ' ')
            || sg_strncasecmp(line.data, (const u_char *) keyword, klen)) {
            continue;
        }
        if (params != NULL) {
            params->data = line.data + klen;
            params->len = line.len - klen;
            if (params->len > 0) {
                params->data++;
                params->len--;
            }
        }
        return true;
    }
    return false;
}

/*
 * Cut the part of msg that starts at *pos and ends before the next NUL
 * (want_nul) or at the end.  Returns false if that NUL is missing, or
 * present when none is wanted, or the part is over 255 octets.
 */
static bool
sg_sasl_plain_part(u_char **pos, u_char *end, bool want_nul, sg_str_t *part)
{
    u_char *p, *nul;

    p = *pos;
    nul = (p < end) ? memchr(p, '\0', (size_t) (end - p)) : NULL;
    if ((nul != NULL) != want_nul) {
        return false;
    }
    if (nul == NULL) {
        nul = end;
    }

    part->data = p;
    part->len = (size_t) (nul - p);
    *pos = want_nul ? nul + 1 : end;

    /* RFC 4616 2 bounds each part at 255 octets, and so do we: no
     * client can make the auth service receive more. */
    return part->len <= 255;
}

int
sg_sasl_plain_split(const sg_str_t *msg, sg_str_t *authzid, sg_str_t *authcid,
                    sg_str_t *passwd)
{
    u_char *pos, *end;

    pos = msg->data;
    end = (msg->len > 0) ? pos + msg->len : pos;

    if (msg->len > 0 && sg_sasl_plain_part(&pos, end, true, authzid)
        && sg_sasl_plain_part(&pos, end, true, authcid)
        && sg_sasl_plain_part(&pos, end, false, passwd) && authcid->len > 0
        && passwd->len > 0) {
        return SG_OK;
    }

    /* Leave no half-split views of credentials behind. */
    authzid->data = authcid->data = passwd->data = NULL;
    authzid->len = authcid->len = passwd->len = 0;
    return SG_ERROR;
}

int
sg_sasl_cram_md5_split(sg_str_t *msg, sg_str_t *user, sg_str_t *digest)
{
    u_char  *sp, c;
    size_t   i;

    sp = msg->len ? memrchr(msg->data, ' ', msg->len) : NULL;
    if (sp == NULL || sp == msg->data
        || (size_t) (msg->data + msg->len - sp - 1) != 32)
    {
        return SG_ERROR;
    }
    for (i = 0; i < 32; i++) {
        c = sg_tolower(sp[1 + i]);
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return SG_ERROR;
        }
        sp[1 + i] = c;
    }
    user->data = msg->data;
    user->len = (size_t) (sp - msg->data);
    digest->data = sp + 1;
    digest->len = 32;
    return SG_OK;
}

/* The value of "key=" among ^A-separated pairs. */
static bool
sg_sasl_kv(const u_char *p, const u_char *end, const char *key,
    sg_str_t *value)
{
    const u_char  *e;
    size_t         n = strlen(key);

    while (p < end) {
        e = memchr(p, 0x01, (size_t) (end - p));
        if (e == NULL) {
            e = end;
        }
        if ((size_t) (e - p) > n && memcmp(p, key, n) == 0) {
            value->data = (u_char *) p + n;
            value->len = (size_t) (e - p) - n;
            return true;
        }
        p = e + 1;
    }
    return false;
}

/* "auth=Bearer T" among the pairs; the message must end in ^A ^A. */
static int
sg_sasl_bearer(const u_char *p, const u_char *end, sg_str_t *token)
{
    sg_str_t  auth;

    if (end - p < 2 || end[-1] != 0x01 || end[-2] != 0x01
        || !sg_sasl_kv(p, end, "auth=", &auth) || auth.len <= 7
        || sg_strncasecmp(auth.data, (const u_char *) "Bearer ", 7) != 0)
    {
        return SG_ERROR;
    }
    token->data = auth.data + 7;
    token->len = auth.len - 7;
    return SG_OK;
}

int
sg_sasl_xoauth2_split(const sg_str_t *msg, sg_str_t *user, sg_str_t *token)
{
    const u_char  *end = msg->data + msg->len;

    if (msg->len == 0 || !sg_sasl_kv(msg->data, end, "user=", user)
        || user->len == 0)
    {
        return SG_ERROR;
    }
    return sg_sasl_bearer(msg->data, end, token);
}

int
sg_sasl_oauthbearer_split(const sg_str_t *msg, sg_str_t *user,
    sg_str_t *token)
{
    const u_char  *p = msg->data, *end = msg->data + msg->len, *comma;

    user->data = msg->data;
    user->len = 0;
    /* gs2-header: ("n" | "y" | "p=...") "," ["a=" authzid] "," */
    if (msg->len < 3 || (p[0] != 'n' && p[0] != 'y') || p[1] != ',') {
        return SG_ERROR;
    }
    p += 2;
    comma = memchr(p, ',', (size_t) (end - p));
    if (comma == NULL) {
        return SG_ERROR;
    }
    if (comma - p > 2 && p[0] == 'a' && p[1] == '=') {
        user->data = (u_char *) p + 2;
        user->len = (size_t) (comma - p - 2);
    } else if (comma != p) {
        return SG_ERROR;
    }
    p = comma + 1;
    if (p >= end || *p != 0x01) {
        return SG_ERROR;
    }
    return sg_sasl_bearer(p + 1, end, token);
}

size_t
sg_smtp_xtext_encode(u_char *dst, const sg_str_t *src)
{
    /* RFC 3461 4: everything outside '!'..'~', and '+' and '=' */
    static const uint32_t  xtext[8] = {
        0xffffffff, 0x20000801, 0x00000000, 0x80000000,
        0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff
    };

    return sg_escape_hex(dst, src, '+', xtext);
}

static int
sg_smtp_hex_digit(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int
sg_smtp_xtext_decode(u_char *dst, const sg_str_t *src, size_t *len)
{
    const u_char  *p = src->data, *end = src->data + src->len;
    u_char        *d = dst;
    int            hi, lo;

    while (p < end) {
        if (*p == '+') {
            if (end - p < 3 || (hi = sg_smtp_hex_digit(p[1])) < 0
                || (lo = sg_smtp_hex_digit(p[2])) < 0)
            {
                return SG_ERROR;
            }
            *d++ = (u_char) (hi << 4 | lo);
            p += 3;
            continue;
        }
        if (*p < '!' || *p > '~' || *p == '=') {
            return SG_ERROR;
        }
        *d++ = *p++;
    }
    *len = (size_t) (d - dst);
    return SG_OK;
}
