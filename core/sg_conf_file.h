/*
 * sg_conf_file.h: the configuration language.
 *
 * nginx syntax: "name args;" and "name args { ... }", single and double
 * quotes with backslash escapes, '#' comments, "include" with globs.
 * Modules declare command tables; each command names the contexts it is
 * allowed in, how many arguments it takes, and a setter.  Typed setters
 * cover the common cases and report "is duplicate" and bad values with
 * the file and line.  An error stops the parse with one message
 * "FILE:LINE: text" in cf->errstr; the caller decides where it goes.
 */
#ifndef SG_CONF_FILE_H
#define SG_CONF_FILE_H

/* Argument counts. */
#define SG_CONF_NOARGS   0x00000001
#define SG_CONF_TAKE1    0x00000002
#define SG_CONF_TAKE2    0x00000004
#define SG_CONF_TAKE3    0x00000008
#define SG_CONF_TAKE4    0x00000010
#define SG_CONF_TAKE5    0x00000020
#define SG_CONF_TAKE6    0x00000040
#define SG_CONF_TAKE7    0x00000080
#define SG_CONF_ARGS_NUMBER 0x000000ff
#define SG_CONF_BLOCK    0x00000100
#define SG_CONF_FLAG     0x00000200      /* exactly one: on|off */
#define SG_CONF_ANY      0x00000400
#define SG_CONF_1MORE    0x00000800
#define SG_CONF_2MORE    0x00001000

#define SG_CONF_TAKE12   (SG_CONF_TAKE1 | SG_CONF_TAKE2)
#define SG_CONF_TAKE13   (SG_CONF_TAKE1 | SG_CONF_TAKE3)
#define SG_CONF_TAKE23   (SG_CONF_TAKE2 | SG_CONF_TAKE3)
#define SG_CONF_TAKE123  (SG_CONF_TAKE1 | SG_CONF_TAKE2 | SG_CONF_TAKE3)

/* Contexts. */
#define SG_MAIN_CONF       0x01000000
#define SG_EVENTS_CONF     0x02000000
#define SG_MAIL_MAIN_CONF  0x04000000
#define SG_MAIL_SRV_CONF   0x08000000
#define SG_MAIL_UPS_CONF   0x10000000
#define SG_ANY_CONF        0x7f000000
#define SG_DIRECT_CONF     0x80000000    /* main conf, no per-block ctx */

#define SG_CONF_MAX_ARGS   8
#define SG_CONF_MAX_WORD   4096
#define SG_CONF_MAX_DEPTH  16             /* nested includes */

#define SG_CONF_UNSET       -1
#define SG_CONF_UNSET_SIZE  ((size_t) -1)
#define SG_CONF_UNSET_MSEC  ((sg_msec_t) -1)
#define SG_CONF_UNSET_PTR   ((void *) -1)

#define sg_conf_init_value(v, d)   if ((v) == SG_CONF_UNSET) { (v) = (d); }
#define sg_conf_merge_value(v, p, d)                                         \
    if ((v) == SG_CONF_UNSET) { (v) = ((p) == SG_CONF_UNSET) ? (d) : (p); }
#define sg_conf_merge_size(v, p, d)                                          \
    if ((v) == SG_CONF_UNSET_SIZE) {                                         \
        (v) = ((p) == SG_CONF_UNSET_SIZE) ? (d) : (p);                       \
    }
#define sg_conf_merge_msec(v, p, d)                                          \
    if ((v) == SG_CONF_UNSET_MSEC) {                                         \
        (v) = ((p) == SG_CONF_UNSET_MSEC) ? (d) : (p);                       \
    }
#define sg_conf_merge_ptr(v, p, d)                                           \
    if ((v) == SG_CONF_UNSET_PTR) {                                          \
        (v) = ((p) == SG_CONF_UNSET_PTR) ? (d) : (p);                        \
    }
#define sg_conf_merge_str(v, p, d)                                           \
    if ((v).data == NULL) {                                                  \
        if ((p).data) { (v) = (p); }                                         \
        else { (v).len = sizeof(d) - 1; (v).data = (u_char *) (d); }         \
    }

typedef char *(*sg_conf_set_pt)(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);

struct sg_command_s {
    const char       *name;
    unsigned          type;
    sg_conf_set_pt    set;
    size_t            conf;      /* offset of the conf array in the ctx */
    size_t            offset;    /* offset of the field in the conf */
    const void       *post;      /* setter-specific data */
};

#define sg_null_command  { NULL, 0, NULL, 0, 0, NULL }

typedef struct {
    int64_t  min;
    int64_t  max;
} sg_conf_bounds_t;

typedef struct {
    const char  *name;
    unsigned     value;
} sg_conf_enum_t;                   /* tables end with { NULL, 0 } */

typedef struct {
    sg_str_t     name;
    size_t       line;
    const u_char *pos;
    const u_char *end;
    u_char      *content;
    size_t       size;
} sg_conf_file_t;

struct sg_conf_s {
    sg_cycle_t      *cycle;
    sg_pool_t       *pool;
    sg_pool_t       *temp_pool;
    sg_log_t        *log;

    void            *ctx;           /* current context's conf arrays */
    unsigned         module_type;   /* modules allowed in this block */
    unsigned         cmd_type;      /* the current context */

    sg_array_t      *args;          /* sg_str_t: the directive, args */
    sg_conf_file_t  *file;
    size_t           depth;

    /* Block-level hook: modules with their own block syntax (map,
     * upstream) get each directive of the block here. */
    sg_conf_set_pt   handler;
    void            *handler_conf;

    char             errstr[1024];
    bool             failed;
};

/*
 * Parse a file (filename != NULL), or the rest of the current block
 * (filename == NULL, called from a block directive's setter).
 */
char *sg_conf_parse(sg_conf_t *cf, const sg_str_t *filename);
/* Parse a string of directives (the -g option) in the main context. */
char *sg_conf_param(sg_conf_t *cf, const sg_str_t *param);

/* Record an error "FILE:LINE: message" (with errno text when err != 0);
 * returns SG_CONF_ERROR for use as "return sg_conf_error(...)". */
char *sg_conf_error(sg_conf_t *cf, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same for a place other than the current directive. */
char *sg_conf_error_at(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Where the current directive starts (for errors found later). */
size_t sg_conf_line(sg_conf_t *cf);
/* A warning "FILE:LINE: message" logged at warn level. */
void sg_conf_warn(sg_conf_t *cf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The same for a place other than the current directive. */
void sg_conf_warn_at(sg_conf_t *cf, const sg_str_t *file, size_t line,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Resolve a path from the configuration: absolute paths stay, relative
 * ones are taken against the configuration file's directory (conf) or
 * the prefix (for files smtpgate writes). NUL-terminated result. */
int sg_conf_full_name(sg_conf_t *cf, sg_str_t *name, bool conf_prefix);

/* Read a whole regular file (at most max bytes) into the cycle pool. */
char *sg_conf_read_whole(sg_conf_t *cf, const sg_str_t *name, size_t max,
    u_char **data, size_t *size);

/* The contents of every file parsed, for -T. */
void sg_conf_dump(sg_cycle_t *cycle, FILE *out);

/* Typed setters. */
char *sg_conf_set_flag_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* int: 0/1 */
char *sg_conf_set_num_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* int64_t, post bounds */
char *sg_conf_set_size_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* size_t, post bounds */
char *sg_conf_set_msec_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* sg_msec_t, post bounds */
char *sg_conf_set_str_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* sg_str_t */
char *sg_conf_set_path_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* sg_str_t, conf-relative */
char *sg_conf_set_enum_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* unsigned, post table */
char *sg_conf_set_bitmask_slot(sg_conf_t *cf, const sg_command_t *cmd,
    void *conf);                              /* unsigned, post table */

/* Helpers for setters. */
char *sg_conf_invalid_value(sg_conf_t *cf, const sg_str_t *value,
    const char *why);
char *sg_conf_duplicate(sg_conf_t *cf);
/* The directive's one argument, an address or network, added to *list
 * (made on first use; NULL or SG_CONF_UNSET_PTR means none yet).  Bits
 * beyond the prefix are warned about and cleared. */
char *sg_conf_add_cidr(sg_conf_t *cf, sg_array_t **list);

#endif /* SG_CONF_FILE_H */
