/* Stands in for libgupnp-igd-1.0.so.4 (UPnP port mapping, unused on loopback) so that libnice does
   not pull libsoup 3 into simple-whip-client, which links libsoup 2. */
#include <stddef.h>
unsigned long gupnp_simple_igd_get_type(void) { return 80; /* G_TYPE_OBJECT */ }
void *gupnp_simple_igd_thread_new(void) { return NULL; }
void gupnp_simple_igd_add_port(void *self, const char *protocol, unsigned int external_port,
                               const char *local_ip, unsigned int local_port, unsigned int lease_duration,
                               const char *description) {}
void gupnp_simple_igd_remove_port_local(void *self, const char *protocol, const char *local_ip,
                                        unsigned int local_port) {}
