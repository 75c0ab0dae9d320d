/*
 * sg_limit.h: what the limit directory's two modules (limit_conn in
 * sg_limit.c, the message and recipient rates in sg_limit_rate.c) share:
 * their zones' configuration and tables.
 */
#ifndef SG_LIMIT_H
#define SG_LIMIT_H

#include "sg_smtp.h"

/* Each module's main configuration: its zones, in the order defined
 * (pointers to the module's own zone type). */
typedef struct {
    sg_array_t   zones;
} sg_limit_zones_t;

void *sg_limit_create_zones(sg_conf_t *cf);

/* What every zone of the directory starts with. */
typedef struct {
    sg_str_t     name;
    sg_str_t     file;               /* where it is defined */
    size_t       line;
} sg_limit_zone_head_t;

/* A new zone of size bytes (its head filled in from name and the line
 * being read) on lz's list; NULL after the error when the list has a
 * zone of that name already (another module's zone of the name is
 * refused by sg_shm_zone_add()). */
void *sg_limit_add_zone(sg_conf_t *cf, sg_limit_zones_t *lz,
    const char *directive, const sg_str_t *name, size_t size);
/* The zone called name on lz's list; NULL: none. */
void *sg_limit_find_zone(sg_limit_zones_t *lz, const sg_str_t *name);

/* A key's place in a zone's table: keyed (sg_keyed_hash), so that a
 * client cannot choose a key that lands on another's entry; never 0,
 * which marks a free entry. */
uint64_t sg_limit_hash(const sg_str_t *key);

/* "zone=NAME:SIZE", SIZE from 16k to 1g. */
char *sg_limit_parse_zone(sg_conf_t *cf, const sg_str_t *value,
    sg_str_t *name, int64_t *size);

/* The key of a zone directive: a string with variables, one without any
 * being an error (every session would share one count; use: what to
 * suggest).  NULL after the error. */
sg_smtp_complex_value_t *sg_limit_compile_key(sg_conf_t *cf,
    const char *directive, const sg_str_t *zone, const sg_str_t *key,
    const char *use);

/* A zone's table, as the zone is mapped: a header of head bytes whose
 * first member is the uint32_t count of the entries of entry bytes that
 * fill the rest; kept as it is across a reload. */
void sg_limit_table_init(sg_shm_zone_t *zone, void *old_data, size_t head,
    size_t entry);

#endif /* SG_LIMIT_H */
