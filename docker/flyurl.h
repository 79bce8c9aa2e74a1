/* flyurl: the sandbox's URL proxy, inside the edge bridge (flyedge.c).  A
 * request for /.computesdk/u/<machine>/<port>/<path> that Fly's proxy (or
 * fly-local's edge) hands to port 444 goes, once its token is checked, to
 * <port> on this machine's own addresses; see flyurl.c. */
#ifndef FLYURL_H
#define FLYURL_H
#include <stddef.h>

#define FLY_URL_PREFIX "/.computesdk/u/"

/* Serves one connection whose request head (NUL-terminated at head[have],
 * the blank line at end) names FLY_URL_PREFIX; self is this machine's id,
 * own_port the bridge's (never a URL's port: a request to it would come
 * back to the bridge, and a chain of them would take every connection it
 * allows).  Returns when the connection is done; the caller's process then
 * exits. */
void fly_url_serve(int fd, char *head, size_t have, char *end, const char *self, unsigned own_port);

/* Shared by the two halves: every byte of p to fd (flyedge.c); 32 bytes
 * from a file of 64 hex digits, 0 or -1 (flyurl.c). */
int fly_write_all(int fd, const void *p, size_t n);
int fly_read_hex32(const char *path, unsigned char out[32]);

#endif
