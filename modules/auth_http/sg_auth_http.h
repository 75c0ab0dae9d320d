/*
 * sg_auth_http.h: what the auth_http module tells the status listener:
 * each authentication service's answers and failures, counted by every
 * worker in one shared zone (kept across reloads), and whether the
 * last worker to fail on it still skips it (auth_http_fail_timeout).
 */
#ifndef SG_AUTH_HTTP_H
#define SG_AUTH_HTTP_H

#include "sg_smtp.h"

typedef struct {
    uint64_t   answered;        /* HTTP answers read from it */
    uint64_t   failed;          /* no usable answer: skipped after */
    uint64_t   down_until;      /* ms since the epoch; 0: never */
} sg_auth_http_counts_t;

/* The i-th auth_http service of the server sscf: its URL and counts
 * (zero before its first request).  false past the last, or when the
 * server does not use auth_http. */
bool sg_auth_http_service(sg_smtp_srv_conf_t *sscf, size_t i, sg_str_t *url,
    sg_auth_http_counts_t *counts);

#endif /* SG_AUTH_HTTP_H */
