/*
 * sg_status_queue.c: GET /queue, the messages waiting in the forwarding
 * spools, read on a thread of the pool: listing a directory and reading
 * the head of each file are blocking calls no worker makes on its
 * event loop.  The task carries copies of the directories; the JSON is
 * made on the thread and handed back as text.
 */
#include "sg_smtp.h"
#if (SG_HAVE_UPSTREAM_MODULE && SG_HAVE_SPOOL_MODULE)
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/xattr.h>
#include <sys/stat.h>
#include <jansson.h>
#include "sg_spool_queue.h"
#include "sg_status_queue.h"

#define SG_STATUS_QUEUE_SCAN   10000     /* files looked at per spool */
#define SG_STATUS_QUEUE_HEAD   16384     /* bytes read of each */
#define SG_STATUS_QUEUE_RCPTS  1000

typedef struct {
    char     name[256];
    time_t   mtime;
    off_t    size;
} sg_status_qfile_t;

static int
sg_status_qfile_cmp(const void *a, const void *b)
{
    const sg_status_qfile_t  *x = a, *y = b;

    if (x->mtime != y->mtime) {
        return x->mtime < y->mtime ? -1 : 1;
    }
    return strcmp(x->name, y->name);
}

static json_t *
sg_status_qstr(const sg_str_t *v)
{
    return json_stringn((const char *) v->data, v->len);
}

/* The forwarder's note of its last try (SG_SPOOL_DEFERRED_XATTR). */
static void
sg_status_queue_note(int fd, json_t *obj)
{
    char                v[SG_SPOOL_DEFERRED_MAX + 1], *p, *q;
    unsigned long       tries;
    long long           when;
    ssize_t             n;

    n = fgetxattr(fd, SG_SPOOL_DEFERRED_XATTR, v, sizeof(v) - 1);
    if (n <= 0) {
        json_object_set_new(obj, "tries", json_integer(0));
        return;
    }
    v[n] = '\0';
    tries = strtoul(v, &p, 10);
    when = strtoll(p, &q, 10);
    if (p == v || q == p) {
        return;                     /* not one of ours */
    }
    while (*q == ' ') {
        q++;
    }
    json_object_set_new(obj, "tries", json_integer((json_int_t) tries));
    json_object_set_new(obj, "last_try", json_integer((json_int_t) when));
    json_object_set_new(obj, "last_reason", json_string(q));
}

/* One file: its envelope, or why it cannot be read as a message. */
static json_t *
sg_status_queue_file(int dirfd, const sg_status_qfile_t *qf)
{
    sg_spool_envelope_t  env;
    sg_str_t            *rcpts;
    json_t              *obj, *arr;
    const char          *err = NULL, *colon;
    u_char              *head;
    ssize_t              n;
    size_t               i, len = 0;
    int                  fd, rc;
    char                 id[128];

    obj = json_object();
    colon = strchr(qf->name, ':');
    json_object_set_new(obj, "id", json_stringn(id, sg_spool_name_id(
                        qf->name, id, sizeof(id))));
    json_object_set_new(obj, "arrival", json_integer((json_int_t)
                        sg_spool_name_arrival(qf->name, qf->mtime)));
    json_object_set_new(obj, "next_try", json_integer((json_int_t)
                                                      qf->mtime));
    json_object_set_new(obj, "size", json_integer((json_int_t) qf->size));
    json_object_set_new(obj, "warned", json_boolean(
                        colon && strchr(colon, 'W') != NULL));
    head = malloc(SG_STATUS_QUEUE_HEAD);
    rcpts = malloc(SG_STATUS_QUEUE_RCPTS * sizeof(sg_str_t));
    fd = openat(dirfd, qf->name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (head == NULL || rcpts == NULL || fd == -1) {
        err = fd == -1 ? "it could not be opened" : "out of memory";
        goto done;
    }
    sg_status_queue_note(fd, obj);
    memset(&env, 0, sizeof(env));
    env.rcpts = rcpts;
    while (len < SG_STATUS_QUEUE_HEAD) {
        n = read(fd, head + len, SG_STATUS_QUEUE_HEAD - len);
        if (n <= 0) {
            break;
        }
        len += (size_t) n;
    }
    rc = sg_spool_envelope_parse(head, len, (off_t) len == qf->size, &env,
                                 SG_STATUS_QUEUE_RCPTS, &err);
    if (rc == SG_AGAIN) {
        err = "its envelope is longer than what is shown";
    }
    if (rc != SG_OK) {
        err = err ? err : "it is not a queued message";
        goto done;
    }
    json_object_set_new(obj, "sender", sg_status_qstr(&env.sender));
    arr = json_array();
    for (i = 0; i < env.nrcpts; i++) {
        json_array_append_new(arr, sg_status_qstr(&env.rcpts[i]));
    }
    json_object_set_new(obj, "recipients", arr);
done:
    if (err) {
        json_object_set_new(obj, "error", json_string(err));
    }
    if (fd != -1) {
        close(fd);
    }
    free(rcpts);
    free(head);
    return obj;
}

static json_t *
sg_status_queue_spool(const sg_status_queue_spool_t *sq, size_t max)
{
    sg_status_qfile_t  *files;
    struct dirent      *de;
    struct stat         st;
    json_t             *obj, *arr;
    char                path[PATH_MAX + 8];
    size_t              n = 0, i;
    DIR                *dir;
    int                 dfd;

    obj = json_object();
    json_object_set_new(obj, "directory", json_string(sq->dir));
    json_object_set_new(obj, "upstream", json_string(sq->upstream));
    arr = json_array();
    (void) snprintf(path, sizeof(path), "%s/new", sq->dir);
    files = malloc(SG_STATUS_QUEUE_SCAN * sizeof(sg_status_qfile_t));
    dir = files ? opendir(path) : NULL;
    if (dir == NULL) {
        json_object_set_new(obj, "error", json_string(files
                            ? "its new/ directory could not be read"
                            : "out of memory"));
        goto done;
    }
    dfd = dirfd(dir);
    while (n < SG_STATUS_QUEUE_SCAN && (de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.' || strlen(de->d_name) >= 256
            || fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1
            || !S_ISREG(st.st_mode))
        {
            continue;
        }
        strcpy(files[n].name, de->d_name);
        files[n].mtime = st.st_mtime;
        files[n].size = st.st_size;
        n++;
    }
    qsort(files, n, sizeof(sg_status_qfile_t), sg_status_qfile_cmp);
    for (i = 0; i < n && i < max; i++) {
        json_array_append_new(arr, sg_status_queue_file(dfd, &files[i]));
    }
    closedir(dir);
done:
    json_object_set_new(obj, "queued", json_integer((json_int_t) n));
    json_object_set_new(obj, "listed", json_integer((json_int_t)
                                                    sg_min(n, max)));
    json_object_set_new(obj, "messages", arr);
    free(files);
    return obj;
}

int
sg_status_queue_remove(const sg_status_queue_spool_t *spools, size_t n,
    const char *id, size_t *which)
{
    struct dirent  *de;
    char            path[PATH_MAX + 8], fid[128];
    size_t          i;
    DIR            *dir;
    int             fd, rc, err;

    for (i = 0; i < n; i++) {
        (void) snprintf(path, sizeof(path), "%s/new", spools[i].dir);
        dir = opendir(path);
        if (dir == NULL) {
            continue;
        }
        while ((de = readdir(dir)) != NULL) {
            if (de->d_name[0] == '.') {
                continue;
            }
            (void) sg_spool_name_id(de->d_name, fid, sizeof(fid));
            if (strcmp(fid, id) != 0) {
                continue;
            }
            *which = i;
            fd = openat(dirfd(dir), de->d_name,
                        O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fd == -1) {
                err = errno;
                closedir(dir);
                errno = err;
                return SG_ERROR;
            }
            /* the forwarder holds the lock while it delivers */
            if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
                err = errno;
                close(fd);
                closedir(dir);
                errno = err;
                return err == EWOULDBLOCK ? SG_BUSY : SG_ERROR;
            }
            rc = unlinkat(dirfd(dir), de->d_name, 0) == 0 ? SG_OK
                                                           : SG_ERROR;
            err = errno;
            close(fd);
            closedir(dir);
            errno = err;
            return rc;
        }
        closedir(dir);
    }
    return SG_DECLINED;
}

char *
sg_status_queue_json(const sg_status_queue_spool_t *spools, size_t n,
    size_t max)
{
    json_t  *root, *arr;
    char    *text;
    size_t   i;

    root = json_object();
    arr = json_array();
    for (i = 0; i < n; i++) {
        json_array_append_new(arr, sg_status_queue_spool(&spools[i], max));
    }
    json_object_set_new(root, "spools", arr);
    text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return text;
}

#endif
