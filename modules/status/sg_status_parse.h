/*
 * sg_status_parse.h: the status listener's HTTP request head, as pure
 * functions of bytes (unit-tested in t/unit/test_status_parse.c,
 * fuzzed by fuzz/fuzz_status_request.c).
 */
#ifndef SG_STATUS_PARSE_H
#define SG_STATUS_PARSE_H

#include "sg_core.h"

/* The most bytes a request head may take. */
#define SG_STATUS_REQUEST_MAX  4096

#define SG_STATUS_GET    1
#define SG_STATUS_HEAD   2
#define SG_STATUS_OTHER  3          /* a well-formed token: 405 */
#define SG_STATUS_POST   4

typedef struct {
    unsigned   method;              /* SG_STATUS_* */
    sg_str_t   path;                /* the target before any '?' */
} sg_status_request_t;

/* The length of the head in p[0..n) up to and with its blank line
 * (CRLF CRLF, or LF LF from a lenient client), or 0 while incomplete. */
size_t sg_status_head_len(const u_char *p, size_t n);

/* Read the request line "METHOD SP TARGET SP HTTP/1.0|1.1" at the start
 * of a complete head.  SG_OK with r filled (r->path points into p), or
 * SG_ERROR for anything else: a 400. */
int sg_status_parse_request(const u_char *p, size_t n,
    sg_status_request_t *r);

/* A request on one peer of a group: POST /upstreams/GROUP/PEER/ACTION.
 * The parts point into the caller's buffer, percent-decoded. */
typedef struct {
    sg_str_t   upstream;
    sg_str_t   peer;                /* may hold '/' ("spool:/var/q") */
    sg_str_t   action;
} sg_status_peer_path_t;

#define SG_STATUS_UPSTREAMS  "/upstreams/"

/* Split and percent-decode path, which starts with SG_STATUS_UPSTREAMS,
 * into buf (at least path->len bytes): GROUP is the first segment,
 * ACTION the last, PEER everything between.  SG_OK, or SG_ERROR for a
 * bad escape, an empty part, or a decoded control byte. */
int sg_status_parse_peer_path(const sg_str_t *path, u_char *buf,
    sg_status_peer_path_t *out);

/* A request on the forwarding spools' queue: POST /queue/flush, or
 * POST /queue/ID/ACTION. */
typedef enum {
    SG_QUEUE_FLUSH = 1,             /* every message due now */
    SG_QUEUE_REMOVE,                /* delete it unsent */
    SG_QUEUE_HOLD,                  /* DIR/new -> DIR/hold: never tried */
    SG_QUEUE_RELEASE,               /* DIR/hold -> DIR/new, due now */
    SG_QUEUE_SHOW                   /* GET /queue/ID: one message */
} sg_status_queue_action_e;

#define SG_STATUS_QUEUE      "/queue/"
#define SG_STATUS_QUEUE_ID   99     /* the longest queue id taken */

/* Read path, which starts with SG_STATUS_QUEUE: the action ("flush",
 * "ID/remove", "ID/hold", "ID/release", or "ID" alone: show), and for
 * one message its queue id (letters and digits, 1 to SG_STATUS_QUEUE_ID
 * of them, pointing into path).  SG_OK, or SG_ERROR for anything else:
 * a 404. */
int sg_status_parse_queue_path(const sg_str_t *path, sg_str_t *id,
    sg_status_queue_action_e *action);

/*
 * One field of a message's header section, from p[0..len): its name
 * (before the colon, possibly empty or absent: a line without a colon
 * has name.len 0 and name.data NULL) and its raw value (after the
 * colon, continuation lines included, up to but without the final
 * CRLF or LF).  Returns the bytes the field takes with its line end;
 * 0 at the empty line that ends the section, or when the field is not
 * whole in p (no line end after it, or its continuation may go on).
 */
size_t sg_status_header_field(const u_char *p, size_t len, sg_str_t *name,
    sg_str_t *value);
/* Unfold a raw value into out (room for value->len bytes): CR and LF
 * dropped, leading and trailing blanks trimmed.  The length written. */
size_t sg_status_header_unfold(const sg_str_t *value, u_char *out);

#endif /* SG_STATUS_PARSE_H */
