/*
 * sg_process.h: the master and worker processes.
 *
 * The master owns the configuration and the listening sockets, starts
 * worker_processes workers, restarts one that dies, and turns signals
 * into actions: HUP reload, QUIT graceful stop, TERM/INT fast stop, USR1
 * reopen logs.  Workers run the event loop; on QUIT they stop accepting
 * and exit once their sessions have ended.
 */
#ifndef SG_PROCESS_H
#define SG_PROCESS_H

extern volatile sig_atomic_t  sg_quit;        /* graceful */
extern volatile sig_atomic_t  sg_terminate;   /* fast */
extern volatile sig_atomic_t  sg_reconfigure;
extern volatile sig_atomic_t  sg_reopen;
extern volatile sig_atomic_t  sg_reap;
extern volatile sig_atomic_t  sg_flush;       /* -s flush: helpers */
extern bool                   sg_exiting;     /* worker is draining */
extern int                    sg_worker;      /* -1 in the master */

/* "smtpgate -s flush": the master passes it on to its helper processes,
 * whose flush() runs (the spool forwarder tries its whole queue now).
 * A real-time signal, so that none of nginx's signals changes meaning. */
#define SG_SIGFLUSH  (SIGRTMIN + 2)

int sg_init_signals(sg_log_t *log);
void sg_master_process_cycle(sg_cycle_t *cycle);

/* A state for the service manager (systemd's Type=notify protocol),
 * "READY=1" and so on; nothing without NOTIFY_SOCKET. */
void sg_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
unsigned long long sg_notify_monotonic_usec(void);
int sg_daemon(sg_log_t *log);

/* What keeps a worker busy outside of connections: the thread pool's
 * tasks.  A draining worker exits when this and its connections reach 0
 * (or when worker_shutdown_timeout expires). */
size_t sg_worker_busy(void);

#endif /* SG_PROCESS_H */
