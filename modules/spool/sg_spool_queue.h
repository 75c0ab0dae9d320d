/*
 * sg_spool_queue.h: a forwarding spool seen as a mail queue: the
 * envelope at the head of each file, and the delivery status
 * notification (RFC 3464) sent back for a message that cannot be
 * delivered.
 *
 * A spool named "server spool:DIR forward" in an upstream group keeps
 * every message it stores in DIR/new until the forwarder has handed it
 * to one of the group's other servers.  Each file there starts with the
 * spool's usual header block plus one line, X-Smtpgate-Forward, that
 * carries what the forwarder needs to present the message as the
 * original session would have (XCLIENT attributes, MAIL parameters):
 *
 *   Return-Path: <sender>              (<> for the null sender)
 *   X-Original-To: rcpt                (one per recipient, in order)
 *   X-Smtpgate-Forward: ADDR=192.0.2.7 PORT=51234 HELO=client.example
 *   	LOGIN=demo PROTO=ESMTP BODY=8BITMIME SMTPUTF8
 *   Received: ...                      (the message sent starts here)
 *
 * The attributes are NAME=VALUE words, or a bare NAME for a flag,
 * separated by white space (folded lines included); each VALUE is xtext
 * (RFC 3461), as XCLIENT takes it.  Both functions here are pure: no
 * I/O, no global state, unit-tested and fuzzed.
 */
#ifndef SG_SPOOL_QUEUE_H
#define SG_SPOOL_QUEUE_H

#include "sg_core.h"

#define SG_SPOOL_FORWARD_HEADER  "X-Smtpgate-Forward:"

typedef struct sg_spool_envelope_s {
    sg_str_t     sender;        /* inside Return-Path's <>; len 0: <> */
    sg_str_t    *rcpts;         /* the caller's array, nrcpts filled */
    size_t       nrcpts;
    sg_str_t     attrs;         /* X-Smtpgate-Forward's value, as in the
                                   file (folds included); len 0: none */
    size_t       body;          /* offset of the "Received:" line, where
                                   what is forwarded starts */
} sg_spool_envelope_t;

/*
 * Read the envelope from the first len bytes of a spool file.  Every
 * line ends in CRLF.  The first line is "Return-Path: <ADDR>"; then come
 * one or more "X-Original-To: ADDR" lines (ADDR is the rest of the
 * line, not empty); then at most one X-Smtpgate-Forward header, which
 * may go on over continuation lines (starting with a space or a tab);
 * then a line starting "Received:".  The sg_str_t results point into p.
 * max_rcpts is the room in env->rcpts.
 *
 * Returns SG_OK (env filled, env->body set), SG_AGAIN when the bytes
 * end before the Received: line and complete is false (read more and
 * call again from the start), or SG_ERROR with *err naming what is
 * wrong ("no Return-Path line", "more than N recipients"...).
 */
int sg_spool_envelope_parse(const u_char *p, size_t len, bool complete,
    sg_spool_envelope_t *env, size_t max_rcpts, const char **err);

/*
 * Walk the attributes: *pos starts at 0.  Returns true with name and
 * value (still xtext; len 0 for a flag) for the next word, false at the
 * end.  A word without '=' is a flag; a word starting with '=' is
 * skipped.
 */
bool sg_spool_attr_next(const sg_str_t *attrs, size_t *pos, sg_str_t *name,
    sg_str_t *value);
/* The value of attribute name (case-insensitive), or false. */
bool sg_spool_attr_get(const sg_str_t *attrs, const char *name,
    sg_str_t *value);

/* One recipient of a delivery status notification. */
typedef struct {
    sg_str_t     rcpt;          /* as in X-Original-To */
    sg_str_t     status;        /* enhanced status code, "5.1.1" */
    sg_str_t     reply;         /* the server's reply (several lines, with
                                   CRLFs, allowed), or len 0 */
    sg_str_t     remote;        /* the server that answered, or len 0 */
    sg_str_t     text;          /* why, in smtpgate's words (before the
                                   reply, when both are given), or len 0 */
} sg_spool_dsn_rcpt_t;

typedef struct sg_spool_dsn_s {
    sg_str_t                    host;      /* the reporting server_name */
    sg_str_t                    queue_id;  /* the failed message's */
    sg_str_t                    dsn_id;    /* the notification's own:
                                              Message-ID, boundary */
    time_t                      arrival;
    time_t                      now;
    sg_str_t                    sender;    /* who gets the notification */
    const sg_spool_dsn_rcpt_t  *rcpts;
    size_t                      nrcpts;
    sg_str_t                    message;   /* the failed message from its
                                              Received: line on (or just
                                              its first part) */
    bool                        delayed;   /* a warning (Action: delayed),
                                              not a failure */
    time_t                      retry_until;  /* when delayed: the last
                                              try, 0: not said */
} sg_spool_dsn_t;

/* The most of the failed message's header section a notification
 * quotes, in whole lines. */
#define SG_SPOOL_DSN_HEADERS_MAX  (64 * 1024)

/*
 * Compose the notification: the message text only (headers from From:
 * on, then the body), without the envelope lines.  malloc'd; NULL when
 * out of memory.  A multipart/report (RFC 3464, RFC 6522): a text part
 * for people, the message/delivery-status part, and the header section
 * of the failed message (text/rfc822-headers, at most
 * SG_SPOOL_DSN_HEADERS_MAX bytes of it, whole lines).  With any
 * non-ASCII address the report is message/global-delivery-status and
 * the headers message/global-headers (RFC 6533).  Every line ends in
 * CRLF, there is no other CR or LF, and no line is longer than 998
 * octets, whatever the inputs hold.  With d->delayed it is a warning
 * instead (RFC 3464 "Action: delayed", Will-Retry-Until): the message
 * is still being tried, and the sender need not send it again.
 */
u_char *sg_spool_dsn_compose(const sg_spool_dsn_t *d, size_t *len);

/* RFC 5322 date of t, in UTC ("Sat, 28 Nov 2026 15:51:44 +0000"). */
u_char *sg_spool_format_date(u_char *p, u_char *last, time_t t);

/*
 * A spool file's name, "SECONDS.MuSECSpPIDqSEQ.HOST[:2,FLAGS]": its
 * queue id (the name to the second '.', without the dots, as the 250
 * reply and the log give it) into id, NUL-terminated and cut to size;
 * returns its length.  And its arrival, the leading seconds, or
 * fallback when the name does not start with them or says a time after
 * fallback (the file's mtime, which a later try only moves on).
 */
/* The forwarder's note on a deferred file, an extended attribute:
 * "TRIES TIME WHY" (decimal tries, Unix time of the last, the last
 * reply or reason in printable ASCII). */
#define SG_SPOOL_DEFERRED_XATTR  "user.smtpgate.deferred"
#define SG_SPOOL_DEFERRED_MAX    512

size_t sg_spool_name_id(const char *name, char *id, size_t size);
time_t sg_spool_name_arrival(const char *name, time_t fallback);

#endif /* SG_SPOOL_QUEUE_H */
