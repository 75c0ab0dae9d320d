/*
 * sg_core.h: the one header every smtpgate source includes first.
 *
 * It pulls in the system headers the core needs, the configure results
 * (objs/sg_auto_config.h) and the core APIs, and defines the return codes
 * shared by every function that can fail or suspend.  It knows nothing of
 * SMTP.
 */
#ifndef SG_CORE_H
#define SG_CORE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "sg_auto_config.h"

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Return codes.  Functions return one of these, or a count (>= 0). */
#define SG_OK          0
#define SG_ERROR      -1
#define SG_AGAIN      -2
#define SG_BUSY       -3
#define SG_DONE       -4
#define SG_DECLINED   -5
#define SG_ABORT      -6

#define SG_CONF_OK     NULL
#define SG_CONF_ERROR  ((char *) -1)

/* Kept in production builds: a broken invariant stops the process with a
 * message naming the place, rather than corrupting memory silently. */
#define SG_BUG_ON(cond)                                                      \
    do {                                                                     \
        if (cond) {                                                          \
            sg_bug(__FILE__, __LINE__, #cond);                               \
        }                                                                    \
    } while (0)

void sg_bug(const char *file, int line, const char *cond)
    __attribute__((noreturn));

#define sg_nelems(a)   (sizeof(a) / sizeof((a)[0]))
#define sg_min(a, b)   ((a) < (b) ? (a) : (b))
#define sg_max(a, b)   ((a) > (b) ? (a) : (b))

typedef struct sg_pool_s        sg_pool_t;
typedef struct sg_log_s         sg_log_t;
typedef struct sg_event_s       sg_event_t;
typedef struct sg_connection_s  sg_connection_t;
typedef struct sg_cycle_s       sg_cycle_t;
typedef struct sg_module_s      sg_module_t;
typedef struct sg_conf_s        sg_conf_t;
typedef struct sg_command_s     sg_command_t;
typedef struct sg_listening_s   sg_listening_t;
typedef struct sg_syslog_s      sg_syslog_t;

typedef int64_t  sg_msec_t;         /* milliseconds */

#include "sg_string.h"
#include "sg_palloc.h"
#include "sg_array.h"
#include "sg_buf.h"
#include "sg_times.h"
#include "sg_log.h"
#include "sg_inet.h"
#include "sg_syslog.h"
#include "sg_proxy_protocol.h"
#include "sg_base64.h"
#include "sg_regex.h"
#include "sg_event.h"
#include "sg_thread_pool.h"
#include "sg_shm.h"
#include "sg_connection.h"
#include "sg_resolver.h"
#include "sg_conf_file.h"
#include "sg_module.h"
#include "sg_cycle.h"
#include "sg_process.h"

#endif /* SG_CORE_H */
