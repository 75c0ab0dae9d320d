/*
 * sg_smtp_parse.h: the pure SMTP wire parsers.
 *
 * Everything here is a function of bytes only: no I/O, no allocation, no
 * global state.  Client command lines, MAIL/RCPT paths and their ESMTP
 * parameters, backend replies (multi-line, as the proxy and health
 * checks read them), EHLO capability lists, SASL PLAIN payloads and
 * xtext encoding.  Each parser is unit-tested
 * (t/unit/test_smtp_parse.c) and fuzzed (fuzz/).
 */
#ifndef SG_SMTP_PARSE_H
#define SG_SMTP_PARSE_H

#include "sg_core.h"

/* RFC 5321 4.5.3.1.4: a command line is at most 512 octets with CRLF. */
#define SG_SMTP_CMD_LINE_MAX     512
/* RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with CRLF. We
 * accept up to this many from backends before calling the reply bad. */
#define SG_SMTP_REPLY_LINE_MAX   4096

typedef enum {
    SG_SMTP_UNKNOWN = 0,
    SG_SMTP_HELO,
    SG_SMTP_EHLO,
    SG_SMTP_AUTH,
    SG_SMTP_MAIL,
    SG_SMTP_RCPT,
    SG_SMTP_DATA,
    SG_SMTP_BDAT,
    SG_SMTP_RSET,
    SG_SMTP_NOOP,
    SG_SMTP_QUIT,
    SG_SMTP_HELP,
    SG_SMTP_VRFY,
    SG_SMTP_EXPN,
    SG_SMTP_STARTTLS,
    SG_SMTP_ETRN,
    SG_SMTP_TURN,
    SG_SMTP_ATRN,
    SG_SMTP_XCLIENT,
    SG_SMTP_XFORWARD,
    SG_SMTP_VERB_COUNT
} sg_smtp_verb_e;

/* Result of sg_smtp_read_line(). */
typedef enum {
    SG_SMTP_LINE_OK = 0,      /* a complete CRLF-terminated line */
    SG_SMTP_LINE_AGAIN,       /* no LF yet and still within the limit */
    SG_SMTP_LINE_TOO_LONG,    /* no LF within limit bytes: skip to LF */
    SG_SMTP_LINE_BARE_LF,     /* line ended in LF without CR */
    SG_SMTP_LINE_BARE_CR,     /* a CR not followed by LF inside the line */
    SG_SMTP_LINE_NUL          /* a NUL byte inside the line */
} sg_smtp_line_e;

typedef struct {
    sg_str_t  line;       /* the line without its line ending */
    size_t    consumed;   /* bytes to drop from the input: line + ending */
} sg_smtp_line_t;

/*
 * Find the first line in [p, last).  limit counts the line with its CRLF.
 * On SG_SMTP_LINE_OK and the three "bad byte" results, out->consumed is
 * the length up to and including the LF, so the caller can drop the line
 * and stay in step.  On SG_SMTP_LINE_TOO_LONG out->consumed is
 * (last - p) or limit, whichever is smaller, and the caller then drops
 * input with sg_smtp_skip_line() until it returns true.
 * A line of exactly limit bytes including CRLF is accepted.  A line with
 * several faults reports NUL before BARE_CR before BARE_LF; out->line is
 * set for those too (for logging), is empty on AGAIN and is the refused
 * prefix on TOO_LONG.  Nothing is judged before the LF arrives, so a CR,
 * NUL or anything else at the end of the input is SG_SMTP_LINE_AGAIN.
 */
sg_smtp_line_e sg_smtp_read_line(const u_char *p, const u_char *last,
    size_t limit, sg_smtp_line_t *out);

/*
 * Skip-to-LF mode after an over-long line: returns true when the LF was
 * found, with *consumed covering it; false with *consumed == last - p.
 */
bool sg_smtp_skip_line(const u_char *p, const u_char *last,
    size_t *consumed);

typedef struct {
    sg_smtp_verb_e  verb;
    sg_str_t        name;   /* the verb as the client wrote it */
    sg_str_t        args;   /* after the verb and its separating SP,
                               trailing SP/HTAB removed; may be empty */
} sg_smtp_cmd_t;

/*
 * Split a line (from sg_smtp_read_line) into verb and arguments.  The
 * verb is matched case-insensitively against a table; "MAIL FROM:" and
 * "RCPT TO:" are recognised by their first word.  Returns SG_OK, or
 * SG_ERROR when the line is empty, starts with a space, or the verb
 * contains characters other than ASCII letters and digits (the caller
 * answers 500 5.5.1 / 501 5.5.2).  An unknown but well-formed verb is
 * SG_OK with verb == SG_SMTP_UNKNOWN.
 */
int sg_smtp_parse_command(const sg_str_t *line, sg_smtp_cmd_t *cmd);

/* The canonical upper-case name of a verb ("EHLO"), "" for UNKNOWN. */
const char *sg_smtp_verb_name(sg_smtp_verb_e verb);

/*
 * A server reply, possibly multi-line ("250-a\r\n250-b\r\n250 c\r\n").
 * start/len cover the whole reply with every line ending.  code is the
 * three-digit code; lines is the number of lines.  text is the text of
 * the last line (after "250 ").
 */
typedef struct {
    const u_char  *start;
    size_t         len;
    int            code;
    unsigned       lines;
    sg_str_t       text;
} sg_smtp_reply_t;

/*
 * Parse one complete reply from [p, last).  Strict: every line must be
 * three digits (first 2-5) followed by '-' or ' ' (or CRLF directly
 * after the code), all lines must carry the same code, lines end in
 * CRLF (a bare LF is tolerated as a line ending, since deployed servers
 * send it), no NUL bytes, each line at most SG_SMTP_REPLY_LINE_MAX bytes
 * and the whole reply at most limit bytes.
 * Returns SG_OK (out filled), SG_AGAIN (incomplete but fine so far) or
 * SG_ERROR (malformed or over a limit).
 */
int sg_smtp_parse_reply(const u_char *p, const u_char *last, size_t limit,
    sg_smtp_reply_t *out);

/*
 * Iterate over the lines of a parsed reply: *line is the text of each
 * line after the code and separator.  Start with *cursor = 0; returns
 * false after the last line.
 */
bool sg_smtp_reply_next_line(const sg_smtp_reply_t *r, size_t *cursor,
    sg_str_t *line);

/*
 * In an EHLO reply, find a keyword (case-insensitive, whole word).
 * Returns true and sets *params (may be empty) to the rest of the line
 * after the keyword and its space.  The first line (the greeting name)
 * is not a keyword, and a reply whose code is not 250 advertises
 * nothing.  params may be NULL.
 */
bool sg_smtp_ehlo_has(const sg_smtp_reply_t *r, const char *keyword,
    sg_str_t *params);

/* RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets. */
#define SG_SMTP_PATH_MAX         254

typedef struct {
    sg_str_t  addr;       /* the mailbox, without brackets and source
                             route; empty for the null path "<>" */
    sg_str_t  params;     /* ESMTP parameters after the path, may be
                             empty */
    bool      utf8;       /* addr holds bytes 0x80-0xff */
} sg_smtp_path_t;

/*
 * The argument of MAIL or RCPT: prefix ("FROM:" or "TO:", any case),
 * optional blanks, "<" path ">", then nothing or SP and the ESMTP
 * parameters.  The path is empty (only when allow_null), or an optional
 * source route ("@a,@b:", dropped as RFC 5321 4.1.1.3 asks) and a
 * mailbox: a dot-string or quoted-string local part, "@", and a domain
 * name or address literal.  A local part alone is accepted only as
 * "postmaster" (any case).  Bytes 0x80-0xff may appear in the local part
 * and the domain and are reported in out->utf8 (whether they are allowed
 * depends on SMTPUTF8, the caller's business); control characters never.
 * At most SG_SMTP_PATH_MAX octets between the brackets.
 * Returns SG_OK, SG_ERROR when the argument does not have that shape
 * (a syntax error), or SG_DECLINED when it does but the address inside
 * the brackets is not a valid mailbox.  The views point into args.
 */
int sg_smtp_parse_path(const sg_str_t *args, const char *prefix,
    bool allow_null, sg_smtp_path_t *out);

/*
 * The next ESMTP parameter (RFC 5321 4.1.2: keyword ["=" value]) from
 * *rest, which advances past it and the blanks after it.  *value has
 * data == NULL when the parameter has no "=".  Returns SG_OK, SG_DONE
 * when *rest is empty, or SG_ERROR for a malformed parameter (keyword
 * not letters, digits and "-" starting with a letter or digit; an empty
 * value; a value with "=", a space or a control character).  Bytes
 * 0x80-0xff are allowed in values, as RFC 6531 extends them.
 */
int sg_smtp_next_param(sg_str_t *rest, sg_str_t *key, sg_str_t *value);

/*
 * SASL PLAIN (RFC 4616): message = [authzid] NUL authcid NUL passwd.
 * Returns SG_ERROR unless there are exactly two NULs, authcid and passwd
 * are non-empty, and every part is at most 255 octets.  The outputs
 * point into msg.
 */
int sg_sasl_plain_split(const sg_str_t *msg, sg_str_t *authzid,
    sg_str_t *authcid, sg_str_t *passwd);

/*
 * CRAM-MD5 response (RFC 2195): "user SP digest", the digest 32 hex
 * digits (folded to lower case in place).  SG_ERROR unless the user is
 * non-empty and the digest well-formed.
 */
int sg_sasl_cram_md5_split(sg_str_t *msg, sg_str_t *user, sg_str_t *digest);

/*
 * XOAUTH2: "user=" U ^A "auth=Bearer " T ^A ^A.
 * OAUTHBEARER (RFC 7628): gs2 header "n,a=U," (or "y,", or no a=) then
 * ^A-separated key=value pairs with "auth=Bearer T", ending ^A ^A.
 * Both set *user (may be empty for OAUTHBEARER without a=) and *token
 * (non-empty), pointing into msg; SG_ERROR when malformed.
 */
int sg_sasl_xoauth2_split(const sg_str_t *msg, sg_str_t *user,
    sg_str_t *token);
int sg_sasl_oauthbearer_split(const sg_str_t *msg, sg_str_t *user,
    sg_str_t *token);

/*
 * xtext (RFC 3461 4): '+' and characters outside '!'..'~' and '=' are
 * written as "+XX".  Returns the encoded length; with dst == NULL only
 * computes it.  dst must hold the computed length.
 */
size_t sg_smtp_xtext_encode(u_char *dst, const sg_str_t *src);
/* And back: dst (room for src->len bytes) gets the octets, *len their
 * count.  SG_ERROR, dst undefined, for anything not xtext: a '+' not
 * followed by two hex digits (either case, as RFC 3461 asks of readers),
 * an '=' or an octet outside '!'..'~'. */
int sg_smtp_xtext_decode(u_char *dst, const sg_str_t *src, size_t *len);

#endif /* SG_SMTP_PARSE_H */
