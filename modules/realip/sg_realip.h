/*
 * sg_realip.h: the PROXY protocol on "listen ... proxy_protocol", as
 * the SMTP session sees it.
 */
#ifndef SG_REALIP_H
#define SG_REALIP_H

#include "sg_smtp.h"

extern sg_module_t  sg_realip_module;

/*
 * The first step of a session on a proxy_protocol address: read the
 * PROXY header, apply it (set_real_ip_from), then hand the session on
 * with sg_smtp_start_session(); on any failure close it without a reply.
 */
void sg_realip_read_header(sg_smtp_session_t *s);

#endif /* SG_REALIP_H */
