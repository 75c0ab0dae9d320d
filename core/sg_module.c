/*
 * sg_module.c: numbering of the compiled-in modules (see sg_module.h).
 */
#include "sg_core.h"

size_t  sg_modules_n;

void
sg_modules_init(void)
{
    size_t  i, j;

    for (i = 0; sg_modules[i]; i++) {
        sg_modules[i]->index = i;
        sg_modules[i]->ctx_index = 0;
        for (j = 0; j < i; j++) {
            if (sg_modules[j]->type == sg_modules[i]->type) {
                sg_modules[i]->ctx_index++;
            }
        }
    }
    sg_modules_n = i;
}

size_t
sg_count_modules(unsigned type)
{
    size_t  i, n = 0;

    for (i = 0; sg_modules[i]; i++) {
        if (sg_modules[i]->type == type) {
            n++;
        }
    }
    return n;
}
