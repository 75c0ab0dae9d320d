/*
 * sg_proxy_track.h: following an SMTP session through the relay, so that
 * its backend connection can serve the next session.
 *
 * The relay copies bytes; this reads them as they pass, the client's
 * commands on one side and the server's replies on the other, and knows
 * at every moment whether the server waits for a command and how many
 * replies are still due.  When the client sends QUIT at a command
 * boundary with nothing due, the relay answers it itself and keeps the
 * backend connection.
 *
 * It follows only what it can follow without doubt: the commands of
 * RFC 5321 with one reply each, DATA (its end found by the strict
 * CRLF "." CRLF) and BDAT (RFC 3030, its chunk skipped by its size,
 * when the server offered CHUNKING).
 * Anything else -- AUTH, STARTTLS, XCLIENT, an unknown verb, a bare CR or
 * LF anywhere, a reply nobody asked for, 421 -- turns it off for the rest
 * of the session: the bytes still pass unchanged, and the backend
 * connection is closed at the end as without keepalive.  A server and
 * this reader can then never disagree on where a message ends.
 *
 * Strict (proxy_strict): the client cannot turn it off.  Every line end
 * a client sends -- CR LF, a bare LF, a bare CR -- reaches the server as
 * CR LF (the reader has the relay insert the missing byte), so the
 * server sees only what the reader read, and a message ends where both
 * say it does.  A command it would not follow is not passed at all:
 * the relay answers it (once every earlier reply has come) and drops
 * its line.  Only the server can still turn it off, and the relay then
 * ends the session.
 */
#ifndef SG_PROXY_TRACK_H
#define SG_PROXY_TRACK_H

#include "sg_core.h"

/* A command line longer than this (without CRLF) ends tracking: RFC
 * 5321's 512 octets, the most every server reads as one line. */
#define SG_PROXY_TRACK_LINE_MAX  510
/* More replies due than this (a flood of pipelined commands) too. */
#define SG_PROXY_TRACK_PENDING_MAX  10000
/* Strict: the longest command line answered by the server (MAIL and
 * RCPT with DSN parameters, RFC 3461, grow past 512); a longer one is
 * answered here.  Postfix's line_length_limit. */
#define SG_PROXY_TRACK_STRICT_LINE_MAX  2046

typedef enum {
    SG_TRACK_CMD = 0,        /* the server waits for a command */
    SG_TRACK_WAIT_DATA,      /* DATA sent: held until its reply */
    SG_TRACK_DATA,           /* message text, until CRLF "." CRLF */
    SG_TRACK_CHUNK,          /* a BDAT chunk's octets */
    SG_TRACK_QUIT,           /* the client sent QUIT (not passed on) */
    SG_TRACK_SKIP,           /* strict: a line too long, dropped up to
                                and with its LF */
    SG_TRACK_OFF             /* not followed any more */
} sg_proxy_track_state_e;

/* Strict: the replies the relay gives itself, to lines it drops. */
typedef enum {
    SG_TRACK_R_NONE = 0,
    SG_TRACK_R_UNKNOWN,      /* a verb it does not follow */
    SG_TRACK_R_AUTH,         /* AUTH: the login is smtpgate's */
    SG_TRACK_R_STARTTLS,     /* STARTTLS: TLS is smtpgate's */
    SG_TRACK_R_LONG,         /* a line too long */
    SG_TRACK_R_BARE_CR,      /* a bare CR in a command line */
    SG_TRACK_R_BDAT,         /* a BDAT it cannot read: the session ends,
                                there is no telling where its chunk
                                ends */
    SG_TRACK_R_MAIL_REFUSED, /* a MAIL the step check refused */
    SG_TRACK_R_RCPT_REFUSED, /* a RCPT the step check refused */
    SG_TRACK_R_NO_MAIL       /* RCPT, DATA or BDAT (its chunk dropped too)
                                after a MAIL refused here */
} sg_proxy_track_reply_e;

typedef struct {
    uint64_t     skip;       /* BDAT octets still to pass */
    /* Whether a mail transaction is open: commands owed a reply are
     * numbered as sent, replies as they come. */
    uint64_t     sent;
    uint64_t     got;
    uint64_t     mail_at;    /* the last MAIL's number, 0: none */
    uint64_t     end_at;     /* the last message end's (DATA's text, or
                                BDAT LAST) */
    uint64_t     rset_at;    /* the last RSET's */
    uint64_t     clean_at;   /* the last of those two answered 2xx */
    uint64_t     accepted;   /* messages the server answered 2xx */
    unsigned     pending;    /* replies due from the server */
    unsigned     state;      /* sg_proxy_track_state_e */
    unsigned     dstate;     /* where in a line of message text */
    unsigned     rlen;       /* bytes of the reply line so far */
    u_char       rhead[4];   /* its first four */
    unsigned     rcr:1;      /* the reply's last byte was CR */
    unsigned     data_due:1; /* the last reply due is DATA's */
    unsigned     chunking:1; /* the server offered CHUNKING */
    unsigned     greeted:1;  /* the client sent HELO or EHLO: the server
                                keeps its name and mode past RSET */
    unsigned     erred:1;    /* a 4xx or 5xx reply since the last message
                                accepted: servers count those per
                                connection (Postfix's error limits) */
    const char  *why;        /* why tracking stopped, for the log */

    /* Strict only.  After the bytes sg_proxy_track_client() let pass
     * the relay sends ins (when not 0), drops the next drop bytes, and
     * once every reply due has come (pending 0) writes reply; the reader
     * takes no more bytes until all three are done (ins and reply
     * cleared by the relay, drop counted down). */
    size_t       drop;
    u_char       ins;        /* CR or LF, a line end completed */
    unsigned     reply;      /* sg_proxy_track_reply_e */
    unsigned     strict:1;
    unsigned     passlf:1;   /* the next byte is the LF of a line read */
    unsigned     mail_refused:1;  /* the last MAIL was answered here */

    /* Strict, when set: asked before a MAIL (0) or a RCPT (1) passes,
     * with what follows the verb and its space; not SG_OK refuses it
     * here (SG_TRACK_R_MAIL_REFUSED, _RCPT_REFUSED), step_rc saying
     * what it said. */
    int        (*step)(void *data, unsigned what, const u_char *args,
                       size_t n);
    void        *step_data;
    int          step_rc;
    uint64_t     drop_chunk; /* a refused BDAT's chunk, dropped with it */
} sg_proxy_track_t;

/* mail: a MAIL was sent (and answered) before the relay began.
 * chunking: the server offered CHUNKING.  Without it BDAT ends tracking:
 * a server that does not know BDAT reads the chunk as commands. */
void sg_proxy_track_init(sg_proxy_track_t *t, bool mail, bool chunking);

/* Whether the reader waits on the relay (strict): a byte to insert, bytes
 * to drop, or a reply of its own to write. */
#define sg_proxy_track_owed(t)                                              \
    ((t)->ins != 0 || (t)->drop != 0 || (t)->reply != SG_TRACK_R_NONE)

/*
 * Read client bytes [p, p + n).  Returns how many may be passed to the
 * server now; the rest waits: an incomplete command line, or everything
 * after a DATA until the server answered it.  full: no more bytes can
 * arrive before these move (the buffer is full), so an incomplete line
 * that fills it ends tracking (strict: is answered as too long).  After
 * QUIT the state is SG_TRACK_QUIT,
 * the count excludes the QUIT line, and the caller drops the rest.  Once
 * off, every byte may pass.
 */
size_t sg_proxy_track_client(sg_proxy_track_t *t, const u_char *p,
    size_t n, bool full);

/* Message text is passed over 64 bytes a step where the CPU has AVX2
 * (1), else 16 (0); -1 until the first message asks the CPU.  Tests set
 * it to read the same text both ways. */
extern int sg_proxy_track_wide;

/* Read server bytes (replies); every byte passes. */
void sg_proxy_track_server(sg_proxy_track_t *t, const u_char *p, size_t n);

/* The session is at a point where its backend connection can be kept:
 * the client sent QUIT and every reply due has come. */
#define sg_proxy_track_done(t)                                              \
    ((t)->state == SG_TRACK_QUIT && (t)->pending == 0)

/* No mail transaction is open: no MAIL, or none since a message was
 * accepted or RSET answered.  Then the next session needs no RSET. */
#define sg_proxy_track_clean(t)                                             \
    ((t)->mail_at == 0 || (t)->mail_at < (t)->clean_at)

#endif /* SG_PROXY_TRACK_H */
