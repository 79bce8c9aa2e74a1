/* flyurl: the sandbox's URL proxy, inside the edge bridge (flyedge.c).  A
 * request for /.computesdk/u/<machine>/<port>/<path> that Fly's proxy (or
 * fly-local's edge) hands to port 444 goes, once its token is checked, to
 * <port> on this machine's own addresses; see flyurl.c. */
#ifndef FLYURL_H
#define FLYURL_H
#include <stddef.h>

#define FLY_URL_PREFIX "/.computesdk/u/"

/* Serves one connection whose request head (NUL-terminated at head[have],
 * the blank line at end) names FLY_URL_PREFIX; self is this machine's id.
 * Returns when the connection is done; the caller's process then exits. */
void fly_url_serve(int fd, char *head, size_t have, char *end, const char *self);

#endif
