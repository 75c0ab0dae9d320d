/*
 * test_spool_move.c: unit tests for the spool's move of a committed
 * message from DIR/tmp into DIR/new.
 *
 * Each case runs in a fresh Maildir under /tmp.  The point is the file
 * that is already in DIR/new under the name the spool chose (a clock set
 * back, a pid used again): it must come out untouched, and the new
 * message must land beside it under another name.  The last cases run in
 * a child whose renameat2() system call fails with ENOSYS, as on
 * kernels and sandboxes without it (glibc turns that into EINVAL, as a
 * filesystem without RENAME_NOREPLACE answers), so the link() fallback
 * is the one tried.
 */
#include "sg_core.h"
#include "sg_spool_int.h"
#include "sg_test.h"
#include <dirent.h>
#include <fcntl.h>
#include <stddef.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define NAME  "1700000000.M123456P4242Q1.host.example"

static char  dir[64];

static void
put(const char *path, const char *text)
{
    FILE  *fp = fopen(path, "w");

    if (fp == NULL || fputs(text, fp) == EOF || fclose(fp) != 0) {
        printf("Bail out: cannot write %s\n", path);
        exit(2);
    }
}

/* The file's contents, or "" when it cannot be read. */
static const char *
get(const char *path)
{
    static char  buf[256];
    FILE        *fp = fopen(path, "r");
    size_t       n = 0;

    if (fp != NULL) {
        n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
    }
    buf[n] = '\0';
    return buf;
}

/* Names in DIR/sub, sorted into names[] ("" past the last); the count. */
static size_t
list(const char *sub, char names[4][PATH_MAX])
{
    char            path[PATH_MAX];
    DIR            *d;
    struct dirent  *e;
    size_t          n = 0;

    memset(names, 0, 4 * PATH_MAX);
    snprintf(path, sizeof(path), "%s/%s", dir, sub);
    d = opendir(path);
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.' && n < 4) {
            snprintf(names[n++], PATH_MAX, "%s", e->d_name);
        }
    }
    if (d != NULL) {
        closedir(d);
    }
    if (n == 2 && strcmp(names[0], names[1]) > 0) {
        char  t[PATH_MAX];

        memcpy(t, names[0], PATH_MAX);
        memcpy(names[0], names[1], PATH_MAX);
        memcpy(names[1], t, PATH_MAX);
    }
    return n;
}

static void
maildir(void)
{
    char  path[PATH_MAX];

    snprintf(dir, sizeof(dir), "/tmp/sg-test-spool-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        printf("Bail out: mkdtemp: %s\n", strerror(errno));
        exit(2);
    }
    snprintf(path, sizeof(path), "%s/tmp", dir);
    (void) mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/new", dir);
    (void) mkdir(path, 0700);
}

static void
cleanup(void)
{
    char  names[4][PATH_MAX], path[PATH_MAX * 2];
    const char  *subs[] = { "tmp", "new" };
    size_t       i, j, n;

    for (i = 0; i < 2; i++) {
        n = list(subs[i], names);
        for (j = 0; j < n; j++) {
            snprintf(path, sizeof(path), "%s/%s/%s", dir, subs[i], names[j]);
            (void) unlink(path);
        }
        snprintf(path, sizeof(path), "%s/%s", dir, subs[i]);
        (void) rmdir(path);
    }
    (void) rmdir(dir);
}

static void
test_free_name_is_kept(void)
{
    char         tmp[PATH_MAX], new[PATH_MAX], names[4][PATH_MAX];
    const char  *call = NULL;

    maildir();
    snprintf(tmp, sizeof(tmp), "%s/tmp/" NAME, dir);
    snprintf(new, sizeof(new), "%s/new/" NAME ",S=8", dir);
    put(tmp, "message\n");
    CHECK_INT(sg_spool_move(tmp, new, sizeof(new), &call), 0);
    CHECK(strstr(new, "/new/" NAME ",S=8") != NULL);
    CHECK_INT(list("new", names), 1);
    CHECK_MEM(names[0], strlen(names[0]), NAME ",S=8",
              strlen(NAME ",S=8"));
    CHECK_INT(list("tmp", names), 0);
    CHECK_MEM(get(new), strlen(get(new)), "message\n", 8);
    cleanup();
}

/* A message already in DIR/new under the same name stays as it is; the
 * new one gets an "R" part before the host name. */
static void
test_taken_name_is_not_replaced(void)
{
    char         tmp[PATH_MAX], new[PATH_MAX], old[PATH_MAX];
    char         names[4][PATH_MAX];
    const char  *call = NULL, *p;
    size_t       n, head = strlen("1700000000.M123456P4242Q1");

    maildir();
    snprintf(tmp, sizeof(tmp), "%s/tmp/" NAME, dir);
    snprintf(new, sizeof(new), "%s/new/" NAME ",S=8", dir);
    snprintf(old, sizeof(old), "%s", new);
    put(old, "accepted before\n");
    put(tmp, "message\n");
    CHECK_INT(sg_spool_move(tmp, new, sizeof(new), &call), 0);
    CHECK_MEM(get(old), strlen(get(old)), "accepted before\n", 16);
    CHECK(strcmp(new, old) != 0);
    CHECK_MEM(get(new), strlen(get(new)), "message\n", 8);
    CHECK_INT(list("tmp", names), 0);
    n = list("new", names);
    CHECK_INT(n, 2);
    /* names[0] is the first one ("...Q1.host"), names[1] the new one
     * ("...Q1R<16 hex>.host"): '.' sorts before 'R'. */
    CHECK_MEM(names[0], strlen(names[0]), NAME ",S=8", strlen(NAME ",S=8"));
    p = names[1];
    CHECK(strncmp(p, NAME, head) == 0 && p[head] == 'R');
    if (!CHECK(strlen(p) > head + 17)) {
        CHECK_MEM(p + head + 17, strlen(p + head + 17), ".host.example,S=8",
                  strlen(".host.example,S=8"));
    }
    CHECK(strstr(new, p) != NULL);
    cleanup();
}

/* The random part is drawn afresh for each try: several messages meeting
 * one name each find their own. */
static void
test_many_on_one_name(void)
{
    char         tmp[PATH_MAX], new[PATH_MAX], names[4][PATH_MAX];
    const char  *call = NULL;
    int          i;

    maildir();
    for (i = 0; i < 4; i++) {
        snprintf(tmp, sizeof(tmp), "%s/tmp/" NAME, dir);
        snprintf(new, sizeof(new), "%s/new/" NAME ",S=2", dir);
        put(tmp, i == 0 ? "0\n" : i == 1 ? "1\n" : i == 2 ? "2\n" : "3\n");
        CHECK_INT(sg_spool_move(tmp, new, sizeof(new), &call), 0);
    }
    CHECK_INT(list("new", names), 4);
    CHECK_INT(list("tmp", names), 0);
    cleanup();
}

/* No room for the random part: the move fails, and nothing is lost. */
static void
test_no_room_fails(void)
{
    char         tmp[PATH_MAX], new[PATH_MAX], old[PATH_MAX];
    char         names[4][PATH_MAX];
    const char  *call = NULL;
    size_t       len;

    maildir();
    snprintf(tmp, sizeof(tmp), "%s/tmp/" NAME, dir);
    len = (size_t) snprintf(new, sizeof(new), "%s/new/" NAME ",S=8", dir);
    snprintf(old, sizeof(old), "%s", new);
    put(old, "accepted before\n");
    put(tmp, "message\n");
    CHECK_INT(sg_spool_move(tmp, new, len + 1, &call), ENAMETOOLONG);
    CHECK_MEM(new, strlen(new), old, strlen(old));
    CHECK_MEM(get(old), strlen(get(old)), "accepted before\n", 16);
    CHECK_MEM(get(tmp), strlen(get(tmp)), "message\n", 8);
    CHECK_INT(list("new", names), 1);
    cleanup();
}

/* renameat2() answers ENOSYS from now on in this process. */
static int
no_renameat2(void)
{
    struct sock_filter  f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data,
                                                    nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_renameat2, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog   prog = { sg_nelems(f), f };

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1
        || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == -1)
    {
        return -1;
    }
    return 0;
}

static void
test_link_fallback(void)
{
    pid_t  pid;
    int    status = 0;

    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        if (no_renameat2() == -1) {
            printf("    seccomp unavailable (%s): fallback not tried\n",
                   strerror(errno));
            _exit(0);
        }
        CHECK(renameat2(AT_FDCWD, "/nonexistent-a", AT_FDCWD,
                        "/nonexistent-b", RENAME_NOREPLACE) == -1
              && (errno == ENOSYS || errno == EINVAL));
        test_free_name_is_kept();
        test_taken_name_is_not_replaced();
        test_many_on_one_name();
        fflush(stdout);
        _exit(sg_test_failed ? 1 : 0);
    }
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int
main(void)
{
    sg_test_start();

    RUN(test_free_name_is_kept);
    RUN(test_taken_name_is_not_replaced);
    RUN(test_many_on_one_name);
    RUN(test_no_room_fails);
    RUN(test_link_fallback);

    return sg_test_finish();
}
