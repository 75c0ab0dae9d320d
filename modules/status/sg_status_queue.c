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
#include <stdio.h>
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
#define SG_STATUS_QUEUE_SHOW   65536     /* bytes read of one shown */
#define SG_STATUS_QUEUE_FIELDS 500       /* header fields shown */
#define SG_STATUS_ATTR_MAX     1024      /* an attribute decoded */

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

/* A JSON string of bytes from a file: as they are when UTF-8, else each
 * byte that is not ASCII as '?' (a header or address a client sent). */
static json_t *
sg_status_qtext(const u_char *p, size_t len)
{
    json_t  *j;
    char    *copy;
    size_t   i;

    j = json_stringn((const char *) p, len);
    if (j != NULL) {
        return j;
    }
    copy = malloc(len + 1);
    if (copy == NULL) {
        return json_string("");
    }
    for (i = 0; i < len; i++) {
        copy[i] = (char) (p[i] < 0x80 && p[i] != 0 ? p[i] : '?');
    }
    j = json_stringn(copy, len);
    free(copy);
    return j;
}

static json_t *
sg_status_qstr(const sg_str_t *v)
{
    return sg_status_qtext(v->data, v->len);
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

/* The files of DIR/sub, the next due first, appended to arr (at most
 * *room of them): how many there are, or -1 when the directory could
 * not be read. */
static long
sg_status_queue_dir(const char *spool, const char *sub, bool held,
    sg_status_qfile_t *files, json_t *arr, size_t *room)
{
    struct dirent      *de;
    struct stat         st;
    json_t             *m;
    char                path[PATH_MAX + 8];
    size_t              n = 0, i;
    DIR                *dir;
    int                 dfd;

    (void) snprintf(path, sizeof(path), "%s/%s", spool, sub);
    dir = opendir(path);
    if (dir == NULL) {
        return held && errno == ENOENT ? 0 : -1;
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
    for (i = 0; i < n && *room; i++, (*room)--) {
        m = sg_status_queue_file(dfd, &files[i]);
        json_object_set_new(m, "held", json_boolean(held));
        if (held) {
            /* no try is due while it is held */
            json_object_set_new(m, "next_try", json_null());
        }
        json_array_append_new(arr, m);
    }
    closedir(dir);
    return (long) n;
}

static json_t *
sg_status_queue_spool(const sg_status_queue_spool_t *sq, size_t max)
{
    sg_status_qfile_t  *files;
    json_t             *obj, *arr;
    size_t              room = max;
    long                queued = 0, held = 0;

    obj = json_object();
    json_object_set_new(obj, "directory", json_string(sq->dir));
    json_object_set_new(obj, "upstream", json_string(sq->upstream));
    arr = json_array();
    files = malloc(SG_STATUS_QUEUE_SCAN * sizeof(sg_status_qfile_t));
    if (files == NULL) {
        json_object_set_new(obj, "error", json_string("out of memory"));
        goto done;
    }
    queued = sg_status_queue_dir(sq->dir, "new", false, files, arr, &room);
    held = sg_status_queue_dir(sq->dir, "hold", true, files, arr, &room);
    if (queued < 0 || held < 0) {
        json_object_set_new(obj, "error", json_string(queued < 0
                            ? "its new/ directory could not be read"
                            : "its hold/ directory could not be read"));
        queued = sg_max(queued, 0);
        held = sg_max(held, 0);
    }
done:
    json_object_set_new(obj, "queued", json_integer((json_int_t) queued));
    json_object_set_new(obj, "held", json_integer((json_int_t) held));
    json_object_set_new(obj, "listed", json_integer((json_int_t)
                                                    (max - room)));
    json_object_set_new(obj, "messages", arr);
    free(files);
    return obj;
}

/* The file of queue id id in DIR/sub of one spool: its name in
 * name[256] and its directory open (the caller closes it), or NULL
 * (errno ENOENT when it is not there). */
static DIR *
sg_status_queue_find(const char *spool, const char *sub, const char *id,
    char *name)
{
    struct dirent  *de;
    char            path[PATH_MAX + 8], fid[128];
    DIR            *dir;

    (void) snprintf(path, sizeof(path), "%s/%s", spool, sub);
    dir = opendir(path);
    if (dir == NULL) {
        return NULL;
    }
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.' || strlen(de->d_name) >= 256) {
            continue;
        }
        (void) sg_spool_name_id(de->d_name, fid, sizeof(fid));
        if (strcmp(fid, id) == 0) {
            strcpy(name, de->d_name);
            return dir;
        }
    }
    closedir(dir);
    errno = ENOENT;
    return NULL;
}

/* Move name from DIR/from to DIR/to, never over a file there, and make
 * the move durable.  With now, the file is due at once (its time is the
 * next try's). */
static int
sg_status_queue_move(const char *spool, DIR *from, const char *to,
    const char *name, int fd, bool now)
{
    char  path[PATH_MAX + 8];
    int   tofd, rc = SG_ERROR, err;

    (void) snprintf(path, sizeof(path), "%s/%s", spool, to);
    if (mkdir(path, 0700) == -1 && errno != EEXIST) {
        return SG_ERROR;
    }
    tofd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (tofd == -1) {
        return SG_ERROR;
    }
    if (now && futimens(fd, NULL) == -1) {
        goto out;
    }
    if (renameat2(dirfd(from), name, tofd, name, RENAME_NOREPLACE) == -1
        || fsync(tofd) == -1 || fsync(dirfd(from)) == -1)
    {
        goto out;
    }
    rc = SG_OK;
out:
    err = errno;
    (void) close(tofd);
    errno = err;
    return rc;
}

int
sg_status_queue_act(const sg_status_queue_spool_t *spools, size_t n,
    const char *id, sg_status_queue_action_e action, size_t *which)
{
    static const char  *subs[] = { "new", "hold" };
    char                name[256];
    size_t              i, k;
    DIR                *dir;
    int                 fd, rc, err;

    for (i = 0; i < n; i++) {
        for (k = 0; k < sg_nelems(subs); k++) {
            dir = sg_status_queue_find(spools[i].dir, subs[k], id, name);
            if (dir != NULL) {
                goto found;
            }
        }
    }
    return SG_DECLINED;

found:
    *which = i;
    if ((action == SG_QUEUE_HOLD && k == 1)
        || (action == SG_QUEUE_RELEASE && k == 0))
    {
        closedir(dir);
        return SG_DONE;             /* held, or waiting, already */
    }
    fd = openat(dirfd(dir), name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1) {
        err = errno;
        closedir(dir);
        errno = err;
        return SG_ERROR;
    }
    /* The forwarder holds the lock while it delivers; one that opened
     * the file before it moved finds it gone from new/ once it has the
     * lock, and lets it be. */
    if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
        err = errno;
        close(fd);
        closedir(dir);
        errno = err;
        return err == EWOULDBLOCK ? SG_BUSY : SG_ERROR;
    }
    switch (action) {
    case SG_QUEUE_HOLD:
        rc = sg_status_queue_move(spools[i].dir, dir, "hold", name, fd,
                                  false);
        break;
    case SG_QUEUE_RELEASE:
        rc = sg_status_queue_move(spools[i].dir, dir, "new", name, fd,
                                  true);
        break;
    default:
        rc = unlinkat(dirfd(dir), name, 0) == 0 ? SG_OK : SG_ERROR;
    }
    err = errno;
    close(fd);
    closedir(dir);
    errno = err;
    return rc;
}

/* The message's header section: [[name, value]...], unfolded, from
 * text (which starts at the Received: line) up to its empty line or the
 * end of what was read (*cut then). */
static json_t *
sg_status_queue_headers(const u_char *p, size_t len, bool *cut)
{
    sg_str_t   name, value;
    json_t    *arr, *pair;
    u_char    *val;
    size_t     used, n, fields = 0;

    arr = json_array();
    for ( ;; ) {
        used = fields < SG_STATUS_QUEUE_FIELDS
               ? sg_status_header_field(p, len, &name, &value) : 0;
        if (used == 0) {
            /* the empty line, or not whole in what was read */
            *cut = !(len >= 1 && (p[0] == '\n'
                                  || (len >= 2 && p[0] == '\r'
                                      && p[1] == '\n')));
            return arr;
        }
        p += used;
        len -= used;
        if (name.data == NULL) {
            continue;                   /* not a field: no colon */
        }
        val = malloc(value.len + 1);
        if (val == NULL) {
            *cut = true;
            return arr;
        }
        n = sg_status_header_unfold(&value, val);
        pair = json_array();
        json_array_append_new(pair, sg_status_qstr(&name));
        json_array_append_new(pair, sg_status_qtext(val, n));
        json_array_append_new(arr, pair);
        free(val);
        fields++;
    }
}

char *
sg_status_queue_show(const sg_status_queue_spool_t *spools, size_t n,
    const char *id, int *rc, size_t *which)
{
    static const char    *subs[] = { "new", "hold" };
    sg_status_qfile_t     qf;
    sg_spool_envelope_t   env;
    sg_str_t              name, value, *rcpts = NULL;
    struct stat           st;
    json_t               *obj, *attrs, *arr;
    const char           *err = NULL;
    u_char               *head = NULL;
    char                  file[256], *text = NULL;
    size_t                i, k, len = 0, pos;
    ssize_t               got;
    bool                  cut;
    DIR                  *dir = NULL;
    int                   fd = -1, r;

    *rc = SG_DECLINED;
    for (i = 0; i < n; i++) {
        for (k = 0; k < sg_nelems(subs); k++) {
            dir = sg_status_queue_find(spools[i].dir, subs[k], id, file);
            if (dir != NULL) {
                goto found;
            }
        }
    }
    return NULL;

found:
    *which = i;
    *rc = SG_ERROR;
    fd = openat(dirfd(dir), file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1 || fstat(fd, &st) == -1) {
        goto done;
    }
    strcpy(qf.name, file);
    qf.mtime = st.st_mtime;
    qf.size = st.st_size;
    obj = sg_status_queue_file(dirfd(dir), &qf);
    json_object_set_new(obj, "held", json_boolean(k == 1));
    if (k == 1) {
        json_object_set_new(obj, "next_try", json_null());
    }
    json_object_set_new(obj, "upstream", json_string(spools[i].upstream));
    head = malloc(SG_STATUS_QUEUE_SHOW);
    rcpts = malloc(SG_STATUS_QUEUE_RCPTS * sizeof(sg_str_t));
    while (head && len < SG_STATUS_QUEUE_SHOW) {
        got = read(fd, head + len, SG_STATUS_QUEUE_SHOW - len);
        if (got <= 0) {
            break;
        }
        len += (size_t) got;
    }
    memset(&env, 0, sizeof(env));
    env.rcpts = rcpts;
    r = head && rcpts
        ? sg_spool_envelope_parse(head, len, (off_t) len == st.st_size,
                                  &env, SG_STATUS_QUEUE_RCPTS, &err)
        : SG_ERROR;
    if (r == SG_OK) {
        attrs = json_object();
        for (pos = 0; sg_spool_attr_next(&env.attrs, &pos, &name, &value); ) {
            char    key[64];
            u_char  plain[SG_STATUS_ATTR_MAX];

            if (name.len == 0 || name.len >= sizeof(key)) {
                continue;
            }
            memcpy(key, name.data, name.len);
            key[name.len] = '\0';
            /* Shown as the session gave it, the xtext undone (as it
             * is, should it not be xtext) */
            if (value.len && value.len <= sizeof(plain)
                && sg_smtp_xtext_decode(plain, &value, &value.len) == SG_OK)
            {
                value.data = plain;
            }
            json_object_set_new(attrs, key, value.len
                                ? sg_status_qstr(&value)
                                : json_true());
        }
        json_object_set_new(obj, "attributes", attrs);
        json_object_set_new(obj, "message_size", json_integer((json_int_t)
                            (st.st_size - (off_t) env.body)));
        arr = sg_status_queue_headers(head + env.body, len - env.body,
                                      &cut);
        json_object_set_new(obj, "headers", arr);
        json_object_set_new(obj, "headers_cut", json_boolean(cut));
    }
    text = json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(obj);
    *rc = text ? SG_OK : SG_ERROR;
done:
    if (fd != -1) {
        close(fd);
    }
    closedir(dir);
    free(rcpts);
    free(head);
    return text;
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
