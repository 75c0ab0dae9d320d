/*
 * sg_times.h: the cached clock.  The event loop refreshes it once per
 * iteration so that timers and log lines do not cost a syscall each.
 */
#ifndef SG_TIMES_H
#define SG_TIMES_H

extern volatile sg_msec_t  sg_current_msec;   /* CLOCK_MONOTONIC, ms */
extern volatile time_t     sg_current_time;   /* wall clock, seconds */
extern char                sg_log_time[sizeof("1970/01/01 00:00:00")];

void sg_time_update(void);

#endif /* SG_TIMES_H */
