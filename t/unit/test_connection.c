/*
 * test_connection.c: unit tests for the worker's connection slots.
 *
 * An epoll event carries its connection's "instance" bit, and an event
 * fetched for an earlier use of a slot is dropped when the bit no longer
 * matches.  That works only if every new use of a slot flips the bit,
 * whether the slot was freed by a close or returned as it was.
 */
#include "sg_core.h"
#include "sg_test.h"
#include <fcntl.h>

static sg_cycle_t  test_cycle;

static int
test_fd(void)
{
    int  fd = dup(STDIN_FILENO);

    return fd == -1 ? open("/dev/null", O_RDONLY) : fd;
}

static void
test_instance_flips_on_reuse(void)
{
    sg_connection_t  *c;
    unsigned          first;
    int               fd;

    test_cycle.connection_n = 4;
    test_cycle.log = sg_log_init();
    sg_cycle = &test_cycle;
    if (CHECK(sg_connections_init(&test_cycle) == SG_OK)) {
        return;
    }

    /* A slot closed and taken again (the free list hands back the last
     * slot freed): an event fetched for the old use must look stale. */
    fd = test_fd();
    c = sg_get_connection(fd, test_cycle.log);
    if (CHECK(c != NULL)) {
        return;
    }
    first = c->instance;
    sg_close_connection(c);
    c = sg_get_connection(test_fd(), test_cycle.log);
    if (CHECK(c != NULL)) {
        return;
    }
    CHECK(c->instance != first);

    /* Freed without a close (a listener given back), then taken. */
    first = c->instance;
    fd = c->fd;
    sg_free_connection(c);
    c = sg_get_connection(fd, test_cycle.log);
    if (CHECK(c != NULL)) {
        return;
    }
    CHECK(c->instance != first);
    sg_close_connection(c);
}

int
main(void)
{
    sg_test_start();

    RUN(test_instance_flips_on_reuse);

    return sg_test_finish();
}
