/*
 * sg_spool_data.c: the DATA phase decoder (see sg_spool_data.h).
 *
 * Owns nothing but the caller's small state: five positions relative to
 * the last line break.  Text between line starts is copied in runs found
 * with memchr, so a large message costs little more than a copy.
 */
#include "sg_spool_data.h"

#define SG_SPOOL_DATA_BOL     0      /* at the start of a line */
#define SG_SPOOL_DATA_TEXT    1      /* inside a line */
#define SG_SPOOL_DATA_CR      2      /* after a CR inside a line */
#define SG_SPOOL_DATA_DOT     3      /* after a dot at a line start */
#define SG_SPOOL_DATA_DOT_CR  4      /* after "." CR at a line start */

int
sg_spool_data_decode(sg_spool_data_t *d, const u_char **in,
    const u_char *in_end, u_char **out, u_char *out_end)
{
    const u_char  *p = *in, *cr;
    u_char        *o = *out, c;
    unsigned       st = d->state;
    size_t         n;

    while (p < in_end && out_end - o >= 2) {
        if (st == SG_SPOOL_DATA_TEXT) {
            n = sg_min((size_t) (in_end - p), (size_t) (out_end - o));
            cr = memchr(p, '\r', n);
            if (cr != NULL) {
                n = (size_t) (cr - p) + 1;
                st = SG_SPOOL_DATA_CR;
            }
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        c = *p++;
        switch (st) {
        case SG_SPOOL_DATA_BOL:
            if (c == '.') {
                st = SG_SPOOL_DATA_DOT;
                break;
            }
            *o++ = c;
            st = c == '\r' ? SG_SPOOL_DATA_CR : SG_SPOOL_DATA_TEXT;
            break;
        case SG_SPOOL_DATA_CR:
            *o++ = c;
            st = c == '\n' ? SG_SPOOL_DATA_BOL
                 : c == '\r' ? SG_SPOOL_DATA_CR : SG_SPOOL_DATA_TEXT;
            break;
        case SG_SPOOL_DATA_DOT:
            if (c == '\r') {
                st = SG_SPOOL_DATA_DOT_CR;
                break;
            }
            *o++ = c;                      /* the stuffed dot is gone */
            st = SG_SPOOL_DATA_TEXT;
            break;
        default:                           /* SG_SPOOL_DATA_DOT_CR */
            if (c == '\n') {
                d->state = SG_SPOOL_DATA_BOL;
                *in = p;
                *out = o;
                return SG_DONE;
            }
            /* "." CR and more: a stuffed line whose CR is text */
            *o++ = '\r';
            *o++ = c;
            st = c == '\r' ? SG_SPOOL_DATA_CR : SG_SPOOL_DATA_TEXT;
            break;
        }
    }
    d->state = st;
    *in = p;
    *out = o;
    return SG_AGAIN;
}
