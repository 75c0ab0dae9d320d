/*
 * stats.c: counting and reporting.
 *
 * Each thread counts into its own sl_stats_t, merged once at the end:
 * sessions, messages, bytes, a log-bucketed latency histogram (fixed
 * size whatever the run length) and a bounded table of failure texts.
 * The report is text for a person or one JSON object for a script.
 */
#include <stdio.h>
#include <string.h>

#include "sl.h"

#define SL_HIST_MAX_US  ((uint64_t) 1 << 45)

/* Bucket e*64 + (v >> e), where e is how far v's top bit lies above bit
 * 6; for e = 0 the index is v itself (0..127). */
static unsigned
sl_hist_index(uint64_t v)
{
    unsigned  msb, e;

    if (v < 2 * SL_HIST_SUB) {
        return (unsigned) v;
    }
    msb = 63 - (unsigned) __builtin_clzll(v);
    e = msb - 6;
    return e * SL_HIST_SUB + (unsigned) (v >> e);
}

/* The middle of the values a bucket holds. */
static uint64_t
sl_hist_value(unsigned idx)
{
    unsigned  e, sub;

    if (idx < 2 * SL_HIST_SUB) {
        return idx;
    }
    e = idx / SL_HIST_SUB - 1;
    sub = idx - e * SL_HIST_SUB;
    return ((uint64_t) sub << e) + (((uint64_t) 1 << e) - 1) / 2;
}

void
sl_hist_add(sl_hist_t *h, uint64_t us)
{
    if (us >= SL_HIST_MAX_US) {
        us = SL_HIST_MAX_US - 1;
    }
    h->counts[sl_hist_index(us)]++;
    h->total++;
    h->sum += us;
    if (us > h->max) {
        h->max = us;
    }
}

uint64_t
sl_hist_percentile(const sl_hist_t *h, double p)
{
    uint64_t  rank, seen = 0;
    unsigned  i;

    if (h->total == 0) {
        return 0;
    }
    rank = (uint64_t) (p / 100.0 * (double) h->total + 0.5);
    if (rank < 1) {
        rank = 1;
    }
    for (i = 0; i < SL_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = sl_hist_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

static void
sl_stats_fail_n(sl_stats_t *st, const char *text, uint64_t n)
{
    unsigned  i;

    st->failed += n;
    for (i = 0; i < st->nfails; i++) {
        if (strcmp(st->fails[i].text, text) == 0) {
            st->fails[i].count += n;
            return;
        }
    }
    if (st->nfails == SL_FAIL_KINDS) {
        st->fail_other += n;
        return;
    }
    snprintf(st->fails[i].text, sizeof(st->fails[i].text), "%s", text);
    st->fails[i].count = n;
    st->nfails++;
}

void
sl_stats_fail(sl_stats_t *st, const char *text)
{
    sl_stats_fail_n(st, text, 1);
}

void
sl_stats_merge(sl_stats_t *dst, const sl_stats_t *src)
{
    unsigned  i;

    dst->ok += src->ok;
    dst->aborted += src->aborted;
    dst->messages += src->messages;
    dst->message_bytes += src->message_bytes;
    dst->tls_handshakes += src->tls_handshakes;
    dst->tls_resumed += src->tls_resumed;
    dst->tls13 += src->tls13;
    for (i = 0; i < SL_HIST_BUCKETS; i++) {
        dst->latency.counts[i] += src->latency.counts[i];
    }
    dst->latency.total += src->latency.total;
    dst->latency.sum += src->latency.sum;
    if (src->latency.max > dst->latency.max) {
        dst->latency.max = src->latency.max;
    }
    for (i = 0; i < src->nfails; i++) {
        sl_stats_fail_n(dst, src->fails[i].text, src->fails[i].count);
    }
    dst->failed += src->fail_other;
    dst->fail_other += src->fail_other;
}

static const char *sl_tls_names[] = { "none", "starttls", "implicit" };
static const char *sl_auth_names[] = { "none", "plain", "login" };
static const char *sl_idle_names[] = {
    "off", "greeting", "ehlo", "starttls", "auth"
};

static double
sl_ms(uint64_t us)
{
    return (double) us / 1000.0;
}

void
sl_report_text(const sl_conf_t *conf, const sl_stats_t *st, double elapsed,
               double cpu_user, double cpu_sys)
{
    const sl_hist_t *h = &st->latency;
    unsigned         i;
    double           el = elapsed > 0 ? elapsed : 1e-9;

    printf("target     %s  tls=%s auth=%s size=%zu messages=%u rcpts=%u "
           "%s\n", conf->target, sl_tls_names[conf->tls],
           sl_auth_names[conf->auth], conf->size, conf->messages,
           conf->rcpts, conf->pipelining ? "pipelining" : "lockstep");
    if (conf->idle != SL_IDLE_OFF) {
        printf("idle       %s\n", sl_idle_names[conf->idle]);
    }
    printf("sessions   %llu ok, %llu failed, %llu aborted  "
           "(concurrency %u, threads %u)\n",
           (unsigned long long) st->ok, (unsigned long long) st->failed,
           (unsigned long long) st->aborted, conf->concurrency,
           conf->threads);
    printf("elapsed    %.3f s\n", elapsed);
    printf("rate       %.1f sessions/s  %.1f messages/s  %.2f MB/s\n",
           (double) st->ok / el, (double) st->messages / el,
           (double) st->message_bytes / el / 1e6);
    printf("latency    p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f ms"
           "  (connect to QUIT reply)\n",
           sl_ms(sl_hist_percentile(h, 50)), sl_ms(sl_hist_percentile(h, 90)),
           sl_ms(sl_hist_percentile(h, 99)), sl_ms(h->max),
           h->total ? sl_ms(h->sum / h->total) : 0.0);
    if (st->tls_handshakes) {
        printf("tls        %llu handshakes (%llu TLSv1.3), %llu resumed\n",
               (unsigned long long) st->tls_handshakes,
               (unsigned long long) st->tls13,
               (unsigned long long) st->tls_resumed);
    }
    printf("cpu        user %.3f s  sys %.3f s  (%.0f %% of one core)\n",
           cpu_user, cpu_sys, 100.0 * (cpu_user + cpu_sys) / el);
    if (st->failed) {
        printf("failures:\n");
        for (i = 0; i < st->nfails; i++) {
            printf("  %s: %llu\n", st->fails[i].text,
                   (unsigned long long) st->fails[i].count);
        }
        if (st->fail_other) {
            printf("  (other): %llu\n", (unsigned long long) st->fail_other);
        }
    }
}

static void
sl_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char) *s;
        if (ch == '"' || ch == '\\') {
            printf("\\%c", ch);
        } else if (ch < 0x20 || ch >= 0x7f) {
            printf("\\u%04x", ch);
        } else {
            putchar(ch);
        }
    }
    putchar('"');
}

void
sl_report_json(const sl_conf_t *conf, const sl_stats_t *st, double elapsed,
               double cpu_user, double cpu_sys)
{
    const sl_hist_t *h = &st->latency;
    unsigned         i;
    double           el = elapsed > 0 ? elapsed : 1e-9;

    printf("{\"target\": ");
    sl_json_string(conf->target);
    printf(", \"tls\": \"%s\", \"auth\": \"%s\", \"idle\": \"%s\", "
           "\"size\": %zu, \"messages_per_session\": %u, \"rcpts\": %u, "
           "\"pipelining\": %s, \"concurrency\": %u, \"threads\": %u, ",
           sl_tls_names[conf->tls], sl_auth_names[conf->auth],
           sl_idle_names[conf->idle], conf->size, conf->messages,
           conf->rcpts, conf->pipelining ? "true" : "false",
           conf->concurrency, conf->threads);
    printf("\"sessions\": %llu, \"failed\": %llu, \"aborted\": %llu, "
           "\"messages\": %llu, \"message_bytes\": %llu, ",
           (unsigned long long) st->ok, (unsigned long long) st->failed,
           (unsigned long long) st->aborted,
           (unsigned long long) st->messages,
           (unsigned long long) st->message_bytes);
    printf("\"elapsed_s\": %.6f, \"sessions_per_s\": %.3f, "
           "\"messages_per_s\": %.3f, \"mb_per_s\": %.4f, ",
           elapsed, (double) st->ok / el, (double) st->messages / el,
           (double) st->message_bytes / el / 1e6);
    printf("\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
           "\"max\": %.3f, \"mean\": %.3f}, ",
           sl_ms(sl_hist_percentile(h, 50)), sl_ms(sl_hist_percentile(h, 90)),
           sl_ms(sl_hist_percentile(h, 99)), sl_ms(h->max),
           h->total ? sl_ms(h->sum / h->total) : 0.0);
    printf("\"tls_handshakes\": %llu, \"tls13\": %llu, "
           "\"tls_resumed\": %llu, ",
           (unsigned long long) st->tls_handshakes,
           (unsigned long long) st->tls13,
           (unsigned long long) st->tls_resumed);
    printf("\"cpu_s\": {\"user\": %.3f, \"sys\": %.3f}, \"failures\": {",
           cpu_user, cpu_sys);
    for (i = 0; i < st->nfails; i++) {
        printf("%s", i ? ", " : "");
        sl_json_string(st->fails[i].text);
        printf(": %llu", (unsigned long long) st->fails[i].count);
    }
    if (st->fail_other) {
        printf("%s\"(other)\": %llu", st->nfails ? ", " : "",
               (unsigned long long) st->fail_other);
    }
    printf("}}\n");
}
