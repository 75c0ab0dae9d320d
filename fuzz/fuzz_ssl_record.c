/*
 * fuzz_ssl_record.c: libFuzzer harness for smtpgate's TLS 1.3 record
 * reader (sg_ssl_record.c, ssl_compact_state).
 *
 * Random bytes almost never authenticate, so the input is a script that
 * mostly makes real records.  Its first byte picks the protocol: TLS 1.3
 * (AES-128-GCM), or TLS 1.2 with AES-128-GCM (explicit nonces) or
 * ChaCha20-Poly1305, or TLS 1.3 read by a layer in the client's role (a
 * backend connection's, which also takes NewSessionTickets, whole or
 * split over records).  Then each step is one byte naming what to do, then
 * its arguments:
 *   0: raw bytes (a length byte, then the bytes) onto the wire;
 *   1: a record sealed by the client's layer: content type, a padding
 *      length byte (x 64; TLS 1.3 only), a length byte, then the content;
 *      a well-formed TLS 1.3 KeyUpdate also moves the client to its next
 *      key, as a client would;
 *   2: a record as 1, then one of its bytes flipped on the wire;
 *   3: the size of the reads that follow (1..256).
 * The wire is then read by the server's layer twice: fed in the script's
 * pieces and read in the script's sizes, and fed one byte at a time.
 * Both must return the same plaintext and end the same way; while no raw
 * or flipped byte went on the wire the plaintext must be exactly the
 * application data sealed, in order; nothing may follow an error or a
 * close_notify.
 */
#include "sg_core.h"
#include "sg_ssl_record.h"
#include "sg_fuzz.h"
#include <openssl/obj_mac.h>

#define SG_FUZZ_WIRE_MAX  (1 << 20)
#define SG_FUZZ_OUT_MAX   (1 << 20)

typedef struct {
    u_char   bytes[SG_FUZZ_WIRE_MAX];
    size_t   len;
    size_t   cuts[4096];            /* where the script's pieces end */
    size_t   ncuts;
} sg_fuzz_wire_t;

typedef struct {
    u_char   out[SG_FUZZ_OUT_MAX];
    size_t   len;
    ssize_t  end;                    /* SG_AGAIN, 0 or SG_ERROR */
} sg_fuzz_result_t;

static sg_fuzz_wire_t    wire;
static sg_fuzz_result_t  whole, bytewise;
static u_char            expected[SG_FUZZ_OUT_MAX];
static size_t            nexpected;
static u_char            scratch[SG_SSL_REC_MAX + 64];
static sg_log_t          quiet;

static const u_char  sg_fuzz_cs[32] = "client application traffic 0123";
static const u_char  sg_fuzz_ss[32] = "server application traffic 0123";
static const u_char  sg_fuzz_master[48] =
    "a TLS 1.2 master secret, forty-eight bytes long";

/* mode 0: TLS 1.3; 1, 2: TLS 1.2 AES-128-GCM, ChaCha20-Poly1305; 3:
 * TLS 1.3, the reader in the client's role (the writer plays the
 * backend) */
static sg_ssl_rec_t *
sg_fuzz_layer(int mode, bool client)
{
    sg_ssl_rec_t  *r;

    if (mode == 3) {
        r = client ? sg_ssl_rec_new(SG_SSL_REC_AES_128_GCM_SHA256,
                                    sg_fuzz_ss, sg_fuzz_cs, 32, 0, 0)
                   : sg_ssl_rec_new(SG_SSL_REC_AES_128_GCM_SHA256,
                                    sg_fuzz_cs, sg_fuzz_ss, 32, 0, 0);
        if (r && !client) {
            sg_ssl_rec_as_client(r);
        }
        return r;
    }
    static const u_char  cr[32] = "the client's random, 32 bytes..";
    static const u_char  sr[32] = "the server's random, 32 bytes..";

    if (mode == 0) {
        return client ? sg_ssl_rec_new(SG_SSL_REC_AES_128_GCM_SHA256,
                                       sg_fuzz_ss, sg_fuzz_cs, 32, 0, 0)
                      : sg_ssl_rec_new(SG_SSL_REC_AES_128_GCM_SHA256,
                                       sg_fuzz_cs, sg_fuzz_ss, 32, 0, 0);
    }
    return sg_ssl_rec_new_tls12(mode == 1 ? NID_aes_128_gcm
                                          : NID_chacha20_poly1305,
                                "SHA256", "fuzz", sg_fuzz_master, 48, cr, sr,
                                1, 1, client);
}

static void
sg_fuzz_cut(void)
{
    if (wire.ncuts < sg_nelems(wire.cuts)) {
        wire.cuts[wire.ncuts++] = wire.len;
    }
}

/* Feed [from, to) and read in reads of size; false once it ended. */
static bool
sg_fuzz_play(sg_ssl_rec_t *r, size_t from, size_t to, size_t size,
    sg_fuzz_result_t *res)
{
    size_t   k;
    ssize_t  n;

    while (res->end == SG_AGAIN) {
        k = from < to ? sg_ssl_rec_feed(r, wire.bytes + from, to - from) : 0;
        from += k;
        for ( ;; ) {
            n = sg_ssl_rec_read(r, res->out + res->len,
                                sg_min(size, SG_FUZZ_OUT_MAX - res->len),
                                &quiet);
            if (n <= 0) {
                break;
            }
            SG_FUZZ_ASSERT((size_t) n <= size);
            res->len += (size_t) n;
            if (res->len == SG_FUZZ_OUT_MAX) {
                n = SG_ERROR;        /* a cap of the harness, not an end */
                break;
            }
        }
        if (n != SG_AGAIN) {
            res->end = n;
            /* nothing after an end */
            SG_FUZZ_ASSERT(sg_ssl_rec_read(r, scratch, 16, &quiet) == n);
        }
        if (from == to || (k == 0 && n == SG_AGAIN)) {
            break;
        }
    }
    return res->end == SG_AGAIN;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t  *p = data, *end = data + size;
    sg_ssl_rec_t   *client, *server;
    size_t          len, pad, n, i, read_size = 64, last;
    size_t          sizes[4096];
    size_t          nsizes = 0;
    bool            exact = true;
    unsigned        idle = 0;       /* records in a row without data */
    int             type, op, mode;
    bool            tls13;

    if (size == 0) {
        return 0;
    }
    mode = *p++ % 4;
    tls13 = mode == 0 || mode == 3;
    quiet.level = 0;
    wire.len = wire.ncuts = 0;
    nexpected = 0;
    client = sg_fuzz_layer(mode, true);
    SG_FUZZ_ASSERT(client != NULL);

    while (p < end && wire.len + SG_SSL_REC_MAX + 64 < SG_FUZZ_WIRE_MAX) {
        op = *p++ % 4;
        if (op == 3) {
            read_size = p < end ? (size_t) *p++ + 1 : 1;
            continue;
        }
        if (op == 0) {
            len = p < end ? *p++ : 0;
            len = sg_min(len, (size_t) (end - p));
            memcpy(wire.bytes + wire.len, p, len);
            p += len;
            wire.len += len;
            exact = exact && len == 0;
        } else {
            if (end - p < 3) {
                break;
            }
            type = *p++;
            pad = tls13 ? (size_t) *p++ * 64 : 0;
            if (!tls13) {
                p++;
            }
            len = *p++;
            len = sg_min(len, (size_t) (end - p));
            pad = sg_min(pad, SG_SSL_REC_PLAIN_MAX - len);
            n = sg_ssl_rec_seal(client, type, p, len, pad,
                                wire.bytes + wire.len);
            SG_FUZZ_ASSERT(n == SG_SSL_REC_HEADER + len + SG_SSL_REC_TAG
                                + (tls13 ? 1 + pad : 0)
                                + (mode == 1 ? 8 : 0));
            idle = type == SG_SSL_REC_APPLICATION && len ? 0 : idle + 1;
            if (idle > SG_SSL_REC_IDLE_MAX) {
                exact = false;      /* the reader refuses so many */
            }
            if (type == SG_SSL_REC_APPLICATION && exact) {
                memcpy(expected + nexpected, p, len);
                nexpected += len;
            } else if (tls13 && type == SG_SSL_REC_HANDSHAKE && len == 5
                       && memcmp(p, "\x18\x00\x00\x01", 4) == 0 && p[4] < 2)
            {
                SG_FUZZ_ASSERT(sg_ssl_rec_update_write(client) == SG_OK);
            } else if (type != SG_SSL_REC_APPLICATION) {
                exact = false;      /* the reader stops at it, or not */
            }
            if (op == 2 && p < end) {
                wire.bytes[wire.len + (size_t) *p % n] ^= 0x20;
                exact = false;
            }
            p += len;
            wire.len += n;
        }
        if (nsizes < sg_nelems(sizes)) {
            sizes[nsizes] = read_size;
            nsizes++;
            sg_fuzz_cut();
        }
    }
    sg_ssl_rec_free(client);

    /* in the script's pieces */
    whole.len = 0;
    whole.end = SG_AGAIN;
    server = sg_fuzz_layer(mode, false);
    SG_FUZZ_ASSERT(server != NULL);
    last = 0;
    for (i = 0; i < wire.ncuts; i++) {
        if (!sg_fuzz_play(server, last, wire.cuts[i], sizes[i], &whole)) {
            break;
        }
        last = wire.cuts[i];
    }
    sg_ssl_rec_free(server);

    /* a byte at a time */
    bytewise.len = 0;
    bytewise.end = SG_AGAIN;
    server = sg_fuzz_layer(mode, false);
    SG_FUZZ_ASSERT(server != NULL);
    for (i = 0; i < wire.len; i++) {
        if (!sg_fuzz_play(server, i, i + 1, SG_SSL_REC_PLAIN_MAX,
                          &bytewise))
        {
            break;
        }
    }
    sg_ssl_rec_free(server);

    SG_FUZZ_ASSERT(whole.end == bytewise.end);
    SG_FUZZ_ASSERT(whole.len == bytewise.len);
    SG_FUZZ_ASSERT(memcmp(whole.out, bytewise.out, whole.len) == 0);
    if (exact) {
        SG_FUZZ_ASSERT(whole.end == SG_AGAIN);
        SG_FUZZ_ASSERT(whole.len == nexpected);
        SG_FUZZ_ASSERT(memcmp(whole.out, expected, nexpected) == 0);
    }
    return 0;
}
