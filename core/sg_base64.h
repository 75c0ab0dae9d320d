/*
 * sg_base64.h: strict RFC 4648 base64 (standard alphabet, padding
 * required), as SASL uses it.
 */
#ifndef SG_BASE64_H
#define SG_BASE64_H

#define sg_base64_encoded_len(n)  ((((n) + 2) / 3) * 4)
#define sg_base64_decoded_len(n)  ((((n) + 3) / 4) * 3)

/* dst must hold sg_base64_encoded_len(src->len) bytes; sets dst->len. */
void sg_base64_encode(sg_str_t *dst, const sg_str_t *src);

/*
 * dst->data must hold sg_base64_decoded_len(src->len) bytes; sets
 * dst->len.  SG_ERROR on any character outside the alphabet, a length
 * that is not a multiple of 4, misplaced padding, or pad bits that are
 * not zero (RFC 4648 3.5), so only the canonical encoding is accepted;
 * on SG_ERROR dst->len is 0 and dst->data holds garbage.  An empty input
 * decodes to an empty output.  Decoding in place (dst->data ==
 * src->data, even dst == src) is allowed.
 */
int sg_base64_decode(sg_str_t *dst, const sg_str_t *src);

#endif /* SG_BASE64_H */
