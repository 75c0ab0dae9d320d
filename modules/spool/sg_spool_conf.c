/*
 * sg_spool_conf.c: the spool module: its directives, and the spool
 * directories that "proxy_pass spool:DIR" names.
 *
 * Owns the list of spools of the configuration being loaded, each a
 * Maildir (DIR with tmp/, new/, cur/) created when missing.  Refuses a
 * directory smtpgate could not write when the configuration loads, -t
 * included, rather than at the first message: as root, where every
 * access() succeeds, the check is made for the user the workers will
 * run as, once the "user" directive is known, and directories this load
 * created are handed to that user.
 */
#include "sg_spool_int.h"
#include <grp.h>
#include <pwd.h>

/* DIR itself, then its three subdirectories, and for a forwarding spool
 * hold/, where held messages wait (made by sg_spool_set_forward); bit i
 * of sp->created. */
static const char  *sg_spool_subdirs[] = {
    "", "/tmp", "/new", "/cur", "/hold"
};
#define SG_SPOOL_MAILDIR  4             /* the first four */
#define SG_SPOOL_HOLD     4

static void *sg_spool_create_conf(sg_conf_t *cf);
static char *sg_spool_merge_conf(sg_conf_t *cf, void *parent, void *child);
static int sg_spool_init_module(sg_cycle_t *cycle);

static const sg_conf_bounds_t  sg_spool_rcpt_bounds = { 1, 1000 };
static const sg_conf_bounds_t  sg_spool_size_bounds = { 1024, 1LL << 40 };
static const sg_conf_bounds_t  sg_spool_free_bounds = { 0, 1LL << 50 };

#define SG_SRV  (SG_MAIL_MAIN_CONF | SG_MAIL_SRV_CONF)

static const sg_command_t  sg_spool_commands[] = {
    { "spool_max_recipients", SG_SRV | SG_CONF_TAKE1, sg_conf_set_num_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_spool_conf_t, max_recipients),
      &sg_spool_rcpt_bounds },
    { "spool_max_message_size", SG_SRV | SG_CONF_TAKE1,
      sg_conf_set_size_slot, SG_MAIL_SRV_CONF_OFFSET,
      offsetof(sg_spool_conf_t, max_message_size), &sg_spool_size_bounds },
    { "spool_min_free", SG_SRV | SG_CONF_TAKE1, sg_conf_set_size_slot,
      SG_MAIL_SRV_CONF_OFFSET, offsetof(sg_spool_conf_t, min_free),
      &sg_spool_free_bounds },
    sg_null_command
};

static const sg_mail_module_ctx_t  sg_spool_module_ctx = {
    NULL, NULL, sg_spool_create_conf, sg_spool_merge_conf, NULL
};

sg_module_t  sg_spool_module = {
    .name = "spool",
    .type = SG_MAIL_MODULE,
    .ctx = &sg_spool_module_ctx,
    .commands = sg_spool_commands,
    .init_module = sg_spool_init_module,
};

static void *
sg_spool_create_conf(sg_conf_t *cf)
{
    sg_spool_conf_t  *scf;

    scf = sg_pcalloc(cf->pool, sizeof(sg_spool_conf_t));
    if (scf == NULL) {
        return NULL;
    }
    scf->max_recipients = SG_CONF_UNSET;
    scf->max_message_size = SG_CONF_UNSET_SIZE;
    scf->min_free = SG_CONF_UNSET_SIZE;
    return scf;
}

static char *
sg_spool_merge_conf(sg_conf_t *cf, void *parent, void *child)
{
    sg_spool_conf_t  *prev = parent, *conf = child;

    (void) cf;
    sg_conf_merge_value(conf->max_recipients, prev->max_recipients, 100);
    sg_conf_merge_size(conf->max_message_size, prev->max_message_size,
                       50 * 1024 * 1024);
    sg_conf_merge_size(conf->min_free, prev->min_free, 100 * 1024 * 1024);
    return SG_CONF_OK;
}

/*
 * The spools of the configuration being loaded.  Configurations load in
 * the master one at a time, so one list is enough; it belongs to that
 * cycle and is forgotten with the cycle's pool.
 */
static sg_cycle_t  *sg_spool_cycle;
static sg_spool_t  *sg_spool_list;
static bool         sg_spool_checked;   /* init_module ran for it */

/* The cycle goes.  One that failed before sg_spool_init_module() (a
 * later error, -t included) takes away the directories it made: as root
 * they were never handed to the workers' user, and left behind they
 * would make the next start fail on them. */
static void
sg_spool_forget(void *data)
{
    sg_spool_t  *sp;
    char         path[PATH_MAX];
    int          i;

    if (sg_spool_cycle != data) {
        return;
    }
    for (sp = sg_spool_checked ? NULL : sg_spool_list; sp; sp = sp->next) {
        for (i = (int) sg_nelems(sg_spool_subdirs) - 1; i >= 0; i--) {
            if (sp->created & (1u << i)) {
                (void) snprintf(path, sizeof(path), "%s%s",
                                (char *) sp->dir.data, sg_spool_subdirs[i]);
                (void) rmdir(path);      /* only if still empty */
            }
        }
    }
    sg_spool_cycle = NULL;
    sg_spool_list = NULL;
}

/* Create DIR's subdirectory i (sg_spool_subdirs) where missing, mark
 * it in *created when made, and check it; its stat in *out. */
static int
sg_spool_make_dir(sg_conf_t *cf, const sg_str_t *dir, size_t i,
    unsigned *created, struct stat *out)
{
    char  path[PATH_MAX];

    (void) snprintf(path, sizeof(path), "%s%s", (char *) dir->data,
                    sg_spool_subdirs[i]);
    if (mkdir(path, 0700) == 0) {
        *created |= 1u << i;
    } else if (errno != EEXIST) {
        sg_conf_error(cf, errno, "cannot create the spool directory "
                      "\"%s\"%s", path, i == 0 && errno == ENOENT
                      ? ": its parent directory must exist" : "");
        return SG_ERROR;
    }
    if (stat(path, out) == -1) {
        sg_conf_error(cf, errno, "stat() \"%s\" failed", path);
        return SG_ERROR;
    }
    if (!S_ISDIR(out->st_mode)) {
        sg_conf_error(cf, 0, "the spool \"%.*s\" needs \"%s\" to be a "
                      "directory", SG_STR_ARG(dir), path);
        return SG_ERROR;
    }
    /* As root this only catches a read-only file system; the workers'
     * user is checked by sg_spool_init_module().  cur/ is written only
     * by a forwarding spool (sg_spool_set_forward checks it then). */
    if (i != 3 && access(path, W_OK | X_OK) == -1) {
        sg_conf_error(cf, errno, "the spool directory \"%s\" is not "
                      "writable", path);
        return SG_ERROR;
    }
    return SG_OK;
}

/* Create DIR and its Maildir subdirectories where missing and check
 * them. */
static int
sg_spool_make_dirs(sg_conf_t *cf, const sg_str_t *dir, unsigned *created,
    struct stat *top)
{
    struct stat  st;
    size_t       i;

    *created = 0;
    for (i = 0; i < SG_SPOOL_MAILDIR; i++) {
        if (sg_spool_make_dir(cf, dir, i, created, &st) != SG_OK) {
            return SG_ERROR;
        }
        if (i == 0) {
            *top = st;
        }
    }
    return SG_OK;
}

sg_spool_t *
sg_spool_create(sg_conf_t *cf, const sg_str_t *dir)
{
    sg_spool_t   *sp;
    sg_str_t      name;
    struct stat   st;
    unsigned      created;

    if (dir->len == 0 || memchr(dir->data, '\0', dir->len)) {
        sg_conf_error(cf, 0, "\"spool:\" needs a directory name");
        return NULL;
    }
    name.len = dir->len;
    while (name.len > 1 && dir->data[name.len - 1] == '/') {
        name.len--;
    }
    name.data = sg_pnalloc(cf->pool, name.len + 1);
    if (name.data == NULL) {
        return NULL;
    }
    memcpy(name.data, dir->data, name.len);
    name.data[name.len] = '\0';
    if (sg_conf_full_name(cf, &name, false) != SG_OK) {
        return NULL;
    }
    /* Room in PATH_MAX for "/tmp/" and the longest unique name. */
    if (name.len > PATH_MAX - 1400) {
        sg_conf_error(cf, 0, "the spool directory name \"%.*s\" is too "
                      "long", SG_STR_ARG(&name));
        return NULL;
    }

    if (sg_spool_cycle != cf->cycle) {
        if (sg_pool_cleanup_add(cf->cycle->pool, sg_spool_forget, cf->cycle)
            != SG_OK)
        {
            return NULL;
        }
        sg_spool_cycle = cf->cycle;
        sg_spool_list = NULL;
        sg_spool_checked = false;
    }
    for (sp = sg_spool_list; sp; sp = sp->next) {
        if (sp->dir.len == name.len
            && memcmp(sp->dir.data, name.data, name.len) == 0)
        {
            return sp;
        }
    }
    if (sg_spool_make_dirs(cf, &name, &created, &st) != SG_OK) {
        return NULL;
    }
    for (sp = sg_spool_list; sp; sp = sp->next) {
        if (sp->dev == st.st_dev && sp->ino == st.st_ino) {
            return sp;                  /* the same directory, named
                                           another way */
        }
    }
    sp = sg_pcalloc(cf->pool, sizeof(sg_spool_t));
    if (sp == NULL) {
        return NULL;
    }
    sp->dir = name;
    sp->file = cf->file->name;
    sp->line = sg_conf_line(cf);
    sp->dev = st.st_dev;
    sp->ino = st.st_ino;
    sp->created = created;
    sp->next = sg_spool_list;
    sg_spool_list = sp;
    return sp;
}

static int
sg_spool_stats_init(sg_shm_zone_t *zone, void *old_data)
{
    zone->data = zone->addr;
    if (old_data == NULL) {
        memset(zone->addr, 0, sizeof(sg_spool_stats_t));
    }
    return SG_OK;
}

int
sg_spool_set_forward(sg_conf_t *cf, sg_spool_t *sp, const sg_str_t *group)
{
    char         path[PATH_MAX];
    sg_str_t     name;
    struct stat  st;

    if (sp->forward) {
        if (sp->forward_group.len == group->len
            && memcmp(sp->forward_group.data, group->data, group->len) == 0)
        {
            return SG_OK;
        }
        sg_conf_error(cf, 0, "upstream \"%.*s\" cannot forward the spool "
                      "\"%.*s\": upstream \"%.*s\" forwards it already "
                      "(%.*s:%zu), and one spool directory can be "
                      "forwarded to one group only", SG_STR_ARG(group),
                      SG_STR_ARG(&sp->dir), SG_STR_ARG(&sp->forward_group),
                      SG_STR_ARG(&sp->forward_file), sp->forward_line);
        return SG_ERROR;
    }
    /* The forwarder moves what it gives up on into cur/. */
    (void) snprintf(path, sizeof(path), "%s/cur", (char *) sp->dir.data);
    if (access(path, W_OK | X_OK) == -1) {
        sg_conf_error(cf, errno, "the spool directory \"%s\" is not "
                      "writable", path);
        return SG_ERROR;
    }
    /* Held messages wait in hold/ (the status API moves them). */
    if (sg_spool_make_dir(cf, &sp->dir, SG_SPOOL_HOLD, &sp->created, &st)
        != SG_OK)
    {
        return SG_ERROR;
    }
    /* Its counters, kept across reloads by the zone's name. */
    name.len = sizeof("spool_forward ") - 1 + sp->dir.len;
    name.data = sg_pnalloc(cf->pool, name.len);
    if (name.data == NULL) {
        return SG_ERROR;
    }
    memcpy(name.data, "spool_forward ", sizeof("spool_forward ") - 1);
    memcpy(name.data + sizeof("spool_forward ") - 1, sp->dir.data,
           sp->dir.len);
    sp->stats = sg_shm_zone_add(cf, &name, 4096, &sg_spool_module);
    if (sp->stats == NULL) {
        return SG_ERROR;
    }
    sp->stats->init = sg_spool_stats_init;
    sp->forward = 1;
    sp->forward_group = *group;
    sp->forward_file = cf->file->name;
    sp->forward_line = sg_conf_line(cf);
    return SG_OK;
}

sg_spool_stats_t *
sg_spool_stats(sg_spool_t *sp)
{
    return sp->stats ? sp->stats->data : NULL;
}

const sg_str_t *
sg_spool_dir(sg_spool_t *sp)
{
    return &sp->dir;
}

bool
sg_spool_forwarding(sg_spool_t *sp)
{
    return sp->forward;
}

const sg_str_t *
sg_spool_forward_file(sg_spool_t *sp, size_t *line)
{
    *line = sp->forward_line;
    return &sp->forward_file;
}

/* Checks for the workers' user, made by the master as root. */

typedef struct {
    uid_t        uid;
    gid_t        gid;
    gid_t        groups[256];
    int          ngroups;
    const char  *name;
} sg_spool_user_t;

/* Whether u may do what want asks (S_IROTH, S_IWOTH, S_IXOTH bits) on a
 * file with st's owner and mode.  ACLs are not looked at. */
static bool
sg_spool_user_may(const sg_spool_user_t *u, const struct stat *st,
    mode_t want)
{
    mode_t  m = st->st_mode & 07;
    int     i;

    if (st->st_uid == u->uid) {
        m = (st->st_mode >> 6) & 07;
    } else {
        for (i = 0; i < u->ngroups; i++) {
            if (st->st_gid == u->groups[i]) {
                m = (st->st_mode >> 3) & 07;
                break;
            }
        }
    }
    return (m & want) == want;
}

static int
sg_spool_user_error(sg_cycle_t *cycle, sg_spool_t *sp,
    const sg_spool_user_t *u, const char *path, const char *what)
{
    sg_log_error(SG_LOG_EMERG, cycle->log, 0, "%.*s:%zu: the spool "
                 "directory \"%s\" is not %s by the user \"%s\" the "
                 "workers run as; fix its owner or mode, or the \"user\" "
                 "directive", SG_STR_ARG(&sp->file), sp->line, path, what,
                 u->name);
    return SG_ERROR;
}

static int
sg_spool_check_user(sg_cycle_t *cycle, sg_spool_t *sp,
    const sg_spool_user_t *u)
{
    struct stat  st;
    char         path[PATH_MAX];
    size_t       i;
    char        *slash;

    /* Every directory above DIR must let the user through. */
    (void) snprintf(path, sizeof(path), "%s", (char *) sp->dir.data);
    for (slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/'))
    {
        *slash = '\0';
        if (stat(path, &st) == 0
            && !sg_spool_user_may(u, &st, S_IXOTH))
        {
            return sg_spool_user_error(cycle, sp, u, path, "searchable");
        }
        *slash = '/';
    }
    for (i = 0; i < (sp->forward ? sg_nelems(sg_spool_subdirs)
                                 : SG_SPOOL_MAILDIR); i++)
    {
        (void) snprintf(path, sizeof(path), "%s%s", (char *) sp->dir.data,
                        sg_spool_subdirs[i]);
        if ((sp->created & (1u << i)) && chown(path, u->uid, u->gid) == -1)
        {
            sg_log_error(SG_LOG_EMERG, cycle->log, errno, "%.*s:%zu: "
                         "chown() \"%s\" failed", SG_STR_ARG(&sp->file),
                         sp->line, path);
            return SG_ERROR;
        }
        if (stat(path, &st) == -1) {
            sg_log_error(SG_LOG_EMERG, cycle->log, errno, "%.*s:%zu: "
                         "stat() \"%s\" failed", SG_STR_ARG(&sp->file),
                         sp->line, path);
            return SG_ERROR;
        }
        if (i == 0 && !sg_spool_user_may(u, &st, S_IXOTH)) {
            return sg_spool_user_error(cycle, sp, u, path, "searchable");
        }
        if ((i == 1 || i == 2 || (i >= 3 && sp->forward))
            && !sg_spool_user_may(u, &st, S_IWOTH | S_IXOTH))
        {
            return sg_spool_user_error(cycle, sp, u, path, "writable");
        }
    }
    return SG_OK;
}

static int
sg_spool_init_module(sg_cycle_t *cycle)
{
    sg_core_conf_t   *ccf = sg_core_conf(cycle);
    sg_spool_user_t   u;
    sg_spool_t       *sp;

    if (sg_spool_cycle == cycle) {
        sg_spool_checked = true;
    }
    if (sg_spool_cycle != cycle || sg_spool_list == NULL || geteuid() != 0
        || ccf->user == (uid_t) -1 || ccf->user == 0)
    {
        return SG_OK;
    }
    u.uid = ccf->user;
    u.gid = ccf->group;
    u.name = (const char *) ccf->user_name.data;
    u.ngroups = (int) sg_nelems(u.groups);
    if (getgrouplist(u.name, u.gid, u.groups, &u.ngroups) == -1) {
        u.groups[0] = u.gid;            /* too many: the primary only */
        u.ngroups = 1;
    }
    for (sp = sg_spool_list; sp; sp = sp->next) {
        if (sg_spool_check_user(cycle, sp, &u) != SG_OK) {
            return SG_ERROR;
        }
    }
    return SG_OK;
}
