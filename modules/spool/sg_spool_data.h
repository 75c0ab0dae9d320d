/*
 * sg_spool_data.h: the DATA phase decoder (RFC 5321 4.5.2), a pure
 * function of bytes.
 *
 * It removes dot-stuffing and finds the end of the data, resumably: the
 * session calls it again with more bytes and the state carries over, so
 * a dot, CR or LF split across reads is read the same as in one piece.
 * Lines end in CRLF only.  The data ends at CRLF "." CRLF (or at "."
 * CRLF as the very first line); a bare LF or CR is message text, never
 * a line end, so "\n.\n" and "\r\n.\n" end nothing.  A line of one "."
 * followed by anything but CRLF loses the dot like any other stuffed
 * line.  Unit-tested (t/unit/test_spool_data.c) and fuzzed
 * (fuzz/fuzz_spool_data.c).
 */
#ifndef SG_SPOOL_DATA_H
#define SG_SPOOL_DATA_H

#include "sg_core.h"

typedef struct {
    unsigned  state;        /* zero: at the start of the data */
} sg_spool_data_t;

/*
 * Decode from [*in, in_end) into [*out, out_end), advancing both.  Each
 * input byte writes at most two output bytes, so it stops when fewer
 * than two are free.  Returns SG_DONE when the end of the data has been
 * read (*in is just past its final LF; the CRLF before the dot belongs
 * to the message and has been written), else SG_AGAIN (input used up,
 * or output full).
 */
int sg_spool_data_decode(sg_spool_data_t *d, const u_char **in,
    const u_char *in_end, u_char **out, u_char *out_end);

#endif /* SG_SPOOL_DATA_H */
