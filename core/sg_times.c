/*
 * sg_times.c: the cached clock (see sg_times.h).
 */
#include "sg_core.h"

volatile sg_msec_t  sg_current_msec;
volatile time_t     sg_current_time;
char                sg_log_time[sizeof("1970/01/01 00:00:00")];

static time_t  sg_cached_log_sec = -1;

void
sg_time_update(void)
{
    struct timespec  ts;
    struct tm        tm;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    sg_current_msec = (sg_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;

    clock_gettime(CLOCK_REALTIME, &ts);
    sg_current_time = ts.tv_sec;
    if (ts.tv_sec != sg_cached_log_sec) {
        sg_cached_log_sec = ts.tv_sec;
        localtime_r(&ts.tv_sec, &tm);
        snprintf(sg_log_time, sizeof(sg_log_time),
                 "%04u/%02u/%02u %02u:%02u:%02u",
                 (unsigned) (tm.tm_year + 1900) % 10000u,
                 (unsigned) (tm.tm_mon + 1) % 100u,
                 (unsigned) tm.tm_mday % 100u, (unsigned) tm.tm_hour % 100u,
                 (unsigned) tm.tm_min % 100u, (unsigned) tm.tm_sec % 100u);
    }
}
