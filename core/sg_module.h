/*
 * sg_module.h: the module interface.
 *
 * A module is a name, a type (core or mail), a type-specific context
 * (how to create and merge its per-context configuration), a command
 * table and lifecycle hooks.  configure writes the list of compiled-in
 * modules (objs/sg_modules.c); nothing else registers modules.
 */
#ifndef SG_MODULE_H
#define SG_MODULE_H

#define SG_CORE_MODULE  0x45524f43      /* "CORE" */
#define SG_MAIL_MODULE  0x4c49414d      /* "MAIL" */

typedef struct {
    void   *(*create_conf)(sg_cycle_t *cycle);
    char   *(*init_conf)(sg_cycle_t *cycle, void *conf);
} sg_core_module_ctx_t;

struct sg_module_s {
    const char         *name;
    size_t              index;          /* in sg_modules[] */
    size_t              ctx_index;      /* among modules of its type */
    unsigned            type;
    const void         *ctx;
    const sg_command_t *commands;

    /* In the master, after a configuration has loaded (also for -t). */
    int               (*init_module)(sg_cycle_t *cycle);
    /* In each worker, after fork, before the event loop. */
    int               (*init_process)(sg_cycle_t *cycle);
    void              (*exit_process)(sg_cycle_t *cycle);
};

extern sg_module_t  *sg_modules[];
extern const char   *sg_module_names[];
extern size_t        sg_modules_n;

/* Number modules and count those of each type; called once at start. */
void sg_modules_init(void);
size_t sg_count_modules(unsigned type);

#endif /* SG_MODULE_H */
