/* flyurl: a sandbox port's URL, served by the edge bridge (flyedge.c).
 *
 *   https://<app>.fly.dev/.computesdk/u/<machine>/<port>/<path>
 *
 * Fly's proxy balances https://<app>.fly.dev over every machine of the app
 * (their port-443 service, internal port 444).  The path names the machine
 * and the port, so whichever bridge gets a request knows where it goes:
 *   - another machine's: answered 421 with `fly-replay: instance=<id>`,
 *     which Fly's proxy (and fly-local's edge) replays to that machine,
 *     starting it when it is paused (the service has autostart);
 *   - this machine's: the token is checked, then the request goes to
 *     <port> on this machine's own addresses (127.0.0.1, ::1, then every
 *     other local address, for a server bound to one of them only), with
 *     the prefix taken off the path.
 *
 * The token.  `<exp>.<sig>`: exp the expiry in Unix seconds (0: none), sig
 * the base64url HMAC-SHA256, under the sandbox's URL key (hex, in the
 * root-only /etc/computesdk/url_key), of "computesdk-url-v1\n<machine>\n
 * <port>\n<exp>": one machine, one port.  It is taken from the header
 * `computesdk-token`, a query parameter `computesdk_token` (a browser's
 * first request: the server's response gets the token as a cookie,
 * HttpOnly, scoped to the URL's path, so several sandboxes' URLs in one
 * browser never share one), or that cookie.  Whichever it came
 * in, it is taken out before the request goes on: the sandbox's server
 * never sees it.  Ports listed in /etc/computesdk/url_public (comma
 * separated, or `*`) need none.  The key and the list are read on every
 * request: a rotation takes effect at once.
 *
 * Refusals are JSON, {"error":"<code>","message":"..."}, with
 * `www-authenticate: Bearer`: 401 token_missing, 403 token_invalid, 403
 * token_expired; 403 port_reserved for the bridge's own port; 502
 * port_closed when nothing listens on the port; 400
 * bad_request; 431 for a head over 16 KiB.
 *
 * The upstream is the sandbox's server, so hostile: its response head is
 * read within 16 KiB and RESP_TIMEOUT_S, then bytes are copied both ways
 * (a thread per direction, 64 KiB buffers) and never held.  Every response
 * but a 101 gets `Connection: close`, so no proxy puts a second request
 * (someone else's) on a connection this token let through.  One process
 * per connection (flyedge.c forks), so a stalled server stalls only its
 * own connections. */
#define _GNU_SOURCE
#include "flyurl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KEY_FILE "/etc/computesdk/url_key"
#define PUBLIC_FILE "/etc/computesdk/url_public"
#define TOKEN_HEADER "computesdk-token"
#define TOKEN_NAME "computesdk_token"
#define OUT_MAX (HEAD_MAX_URL + 1024)
#define HEAD_MAX_URL 16384
#define RESP_TIMEOUT_S 60
#define DRAIN_S 10
#define HANDOFF_S 30
#define LINGER_S 5
#define LINGER_MAX ((size_t)4 << 20)
#define CONNECT_TIMEOUT_MS 3000
#define IO_BUF (64 * 1024)
#define MACHINE_MAX 64
#define TOKEN_MAX 128

/* After a refusal sent before the request's body was read: the client's
 * remaining bytes are read and dropped (at most LINGER_MAX, LINGER_S), so
 * that closing with them unread does not reset the connection and lose
 * the reply (a proxy still sending a body to replay, say). */
static void linger_close(int fd) {
  static char sink[IO_BUF];
  size_t total = 0;
  shutdown(fd, SHUT_WR);
  alarm(LINGER_S);
  while (total < LINGER_MAX) {
    ssize_t n = recv(fd, sink, sizeof(sink), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    total += (size_t)n;
  }
  alarm(0);
}

static void reply_json(int fd, const char *status, const char *code, const char *msg, const char *extra) {
  char body[512], buf[1024];
  int bn = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\"}\n", code, msg);
  int n = snprintf(buf, sizeof(buf),
                   "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                   "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n%s",
                   status, bn, extra ? extra : "", body);
  if (n > 0 && (size_t)n < sizeof(buf))
    fly_write_all(fd, buf, (size_t)n);
  linger_close(fd);
}

/* ---- the request ------------------------------------------------------- */

typedef struct {
  char machine[MACHINE_MAX + 1];
  unsigned port;
  const char *rest;  /* the path after the port (starts with '/', '?' or is "") */
  size_t rest_len;
  char token[TOKEN_MAX + 1];
  int from_query;
  int https;
} req_t;

/* Parses /.computesdk/u/<machine>/<port> at target; 0 or -1. */
static int parse_target(const char *target, size_t tlen, req_t *r) {
  const char *p = target + strlen(FLY_URL_PREFIX), *end = target + tlen, *c;
  size_t n = 0;
  unsigned long port = 0;
  /* no control byte (a lone LF) in the target: it goes into a request line
   * and a Location header */
  for (c = target; c < end; c++)
    if ((unsigned char)*c <= 0x20 || *c == 0x7f)
      return -1;
  while (p < end && *p != '/' && n < MACHINE_MAX) {
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
      return -1;
    r->machine[n++] = *p++;
  }
  r->machine[n] = '\0';
  if (n == 0 || p >= end || *p != '/')
    return -1;
  p++;
  n = 0;
  while (p < end && *p >= '0' && *p <= '9' && n < 5) {
    port = port * 10 + (unsigned long)(*p++ - '0');
    n++;
  }
  if (n == 0 || port < 1 || port > 65535 || (p < end && *p != '/' && *p != '?'))
    return -1;
  r->port = (unsigned)port;
  r->rest = p;
  r->rest_len = (size_t)(end - p);
  return 0;
}

/* Copies value (up to TOKEN_MAX) into r->token; -1 when too long. */
static int take_token(req_t *r, const char *v, size_t n) {
  if (n > TOKEN_MAX)
    return -1;
  memcpy(r->token, v, n);
  r->token[n] = '\0';
  return 0;
}

/* The path part of the rewritten request line: rest without the prefix and
 * without the computesdk_token query parameter (whose value goes to r). */
static int build_path(req_t *r, char *out, size_t cap) {
  const char *q = memchr(r->rest, '?', r->rest_len), *end = r->rest + r->rest_len, *p;
  size_t o = 0, plen = q ? (size_t)(q - r->rest) : r->rest_len;
  int first = 1;
  if (plen == 0) {
    if (cap < 2)
      return -1;
    out[o++] = '/';
  } else {
    if (plen >= cap)
      return -1;
    memcpy(out, r->rest, plen);
    o = plen;
  }
  if (q) {
    p = q + 1;
    while (p <= end) {
      const char *amp = memchr(p, '&', (size_t)(end - p));
      const char *e = amp ? amp : end;
      size_t tl = strlen(TOKEN_NAME);
      if ((size_t)(e - p) > tl && strncmp(p, TOKEN_NAME "=", tl + 1) == 0) {
        if (take_token(r, p + tl + 1, (size_t)(e - p) - tl - 1) != 0)
          return -1;
        r->from_query = 1;
      } else if (e > p) {
        if (o + 1 + (size_t)(e - p) >= cap)
          return -1;
        out[o++] = first ? '?' : '&';
        memcpy(out + o, p, (size_t)(e - p));
        o += (size_t)(e - p);
        first = 0;
      }
      if (!amp)
        break;
      p = amp + 1;
    }
  }
  out[o] = '\0';
  return (int)o;
}

/* A Cookie header's value without the token cookie (its value to r when no
 * token was found yet); the length written, 0 when nothing is left. */
static size_t filter_cookie(req_t *r, const char *v, size_t n, char *out, size_t cap) {
  const char *p = v, *end = v + n;
  size_t o = 0, tl = strlen(TOKEN_NAME);
  while (p < end) {
    const char *semi = memchr(p, ';', (size_t)(end - p)), *e = semi ? semi : end;
    while (p < e && *p == ' ')
      p++;
    if ((size_t)(e - p) > tl && strncmp(p, TOKEN_NAME "=", tl + 1) == 0) {
      if (r->token[0] == '\0')
        take_token(r, p + tl + 1, (size_t)(e - p) - tl - 1);
    } else if (e > p && o + (size_t)(e - p) + 2 < cap) {
      if (o) {
        out[o++] = ';';
        out[o++] = ' ';
      }
      memcpy(out + o, p, (size_t)(e - p));
      o += (size_t)(e - p);
    }
    p = semi ? semi + 1 : end;
  }
  return o;
}

static int name_is(const char *line, size_t nlen, const char *name) {
  return strlen(name) == nlen && strncasecmp(line, name, nlen) == 0;
}

/* The head for the sandbox's server: request line with the new path, every
 * header but the hop-by-hop ones and the token's, then Connection and
 * X-Forwarded-Prefix.  Length, or -1. */
static int rewrite_head(const char *head, const char *method, size_t mlen, const char *path,
                        const char *version, size_t vlen, req_t *r, char *out, size_t cap) {
  const char *p = strstr(head, "\r\n") + 2;
  size_t o = 0;
  int upgrade = 0, n;
  char cookie[HEAD_MAX_URL];
  n = snprintf(out, cap, "%.*s %s %.*s\r\n", (int)mlen, method, path, (int)vlen, version);
  if (n < 0 || (size_t)n >= cap)
    return -1;
  o = (size_t)n;
  for (;;) {
    const char *e = strstr(p, "\r\n"), *colon, *v;
    size_t nlen, vl;
    if (e == NULL || e == p)
      break;
    colon = memchr(p, ':', (size_t)(e - p));
    if (colon == NULL)
      return -1;
    nlen = (size_t)(colon - p);
    v = colon + 1;
    while (v < e && (*v == ' ' || *v == '\t'))
      v++;
    vl = (size_t)(e - v);
    if (name_is(p, nlen, TOKEN_HEADER)) {
      if (take_token(r, v, vl) != 0)
        return -1;
    } else if (name_is(p, nlen, "Cookie")) {
      size_t cl = filter_cookie(r, v, vl, cookie, sizeof(cookie));
      if (cl > 0) {
        if (o + cl + 12 >= cap)
          return -1;
        o += (size_t)snprintf(out + o, cap - o, "Cookie: %.*s\r\n", (int)cl, cookie);
      }
    } else if (name_is(p, nlen, "Connection")) {
      if (memmem(v, vl, "pgrade", 6) != NULL)
        upgrade = 1;
    } else if (name_is(p, nlen, "Keep-Alive") || name_is(p, nlen, "Proxy-Connection") ||
               name_is(p, nlen, "X-Forwarded-Prefix")) {
      /* hop-by-hop, or ours */
    } else {
      if ((name_is(p, nlen, "Fly-Forwarded-Proto") || name_is(p, nlen, "X-Forwarded-Proto")) && vl == 5 &&
          strncasecmp(v, "https", 5) == 0)
        r->https = 1;
      if (o + (size_t)(e - p) + 2 >= cap)
        return -1;
      memcpy(out + o, p, (size_t)(e - p) + 2);
      o += (size_t)(e - p) + 2;
    }
    p = e + 2;
  }
  n = snprintf(out + o, cap - o, "Connection: %s\r\nX-Forwarded-Prefix: %s%s/%u\r\n\r\n",
               upgrade ? "Upgrade" : "close", FLY_URL_PREFIX, r->machine, r->port);
  if (n < 0 || (size_t)n >= cap - o)
    return -1;
  return (int)(o + (size_t)n);
}

/* ---- the key, the public list, the token -------------------------------- */

/* 32 bytes from a file of 64 hex digits (a newline may follow); 0, or -1.
 * The hex read is wiped: the file may hold a key. */
int fly_read_hex32(const char *path, unsigned char out[32]) {
  char hex[80];
  FILE *f = fopen(path, "re");
  size_t n, i;
  int rc = 0;
  if (f == NULL)
    return -1;
  n = fread(hex, 1, sizeof(hex) - 1, f);
  fclose(f);
  while (n > 0 && (hex[n - 1] == '\n' || hex[n - 1] == ' '))
    n--;
  if (n != 64)
    rc = -1;
  for (i = 0; rc == 0 && i < 32; i++) {
    unsigned v;
    char b[3] = {hex[2 * i], hex[2 * i + 1], 0};
    if (sscanf(b, "%2x", &v) != 1)
      rc = -1;
    out[i] = (unsigned char)v;
  }
  OPENSSL_cleanse(hex, sizeof(hex));
  return rc;
}

static int is_public(unsigned port) {
  char buf[512], *p, *save = NULL;
  FILE *f = fopen(PUBLIC_FILE, "re");
  size_t n;
  if (f == NULL)
    return 0;
  n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  for (p = strtok_r(buf, ", \n", &save); p != NULL; p = strtok_r(NULL, ", \n", &save)) {
    if (strcmp(p, "*") == 0 || (unsigned)strtoul(p, NULL, 10) == port)
      return 1;
  }
  return 0;
}

/* 0 valid, 1 invalid, 2 expired. */
static int check_token(const req_t *r) {
  unsigned char key[32], mac[32];
  unsigned maclen = 0;
  char msg[160], b64[64];
  const char *dot = strchr(r->token, '.'), *sig;
  unsigned long long exp = 0;
  size_t i, elen, slen;
  int n, ok;

  if (dot == NULL)
    return 1;
  elen = (size_t)(dot - r->token);
  if (elen == 0 || elen > 12)
    return 1;
  for (i = 0; i < elen; i++) {
    if (r->token[i] < '0' || r->token[i] > '9')
      return 1;
    exp = exp * 10 + (unsigned)(r->token[i] - '0');
  }
  sig = dot + 1;
  slen = strlen(sig);
  if (slen != 43 || fly_read_hex32(KEY_FILE, key) != 0)
    return 1;
  n = snprintf(msg, sizeof(msg), "computesdk-url-v1\n%s\n%u\n%llu", r->machine, r->port, exp);
  HMAC(EVP_sha256(), key, sizeof(key), (unsigned char *)msg, (size_t)n, mac, &maclen);
  OPENSSL_cleanse(key, sizeof(key));
  EVP_EncodeBlock((unsigned char *)b64, mac, 32); /* 44 chars, one '=' */
  OPENSSL_cleanse(mac, sizeof(mac));
  for (i = 0; i < 43; i++) {
    if (b64[i] == '+')
      b64[i] = '-';
    else if (b64[i] == '/')
      b64[i] = '_';
  }
  ok = CRYPTO_memcmp(b64, sig, 43) == 0;
  OPENSSL_cleanse(b64, sizeof(b64));
  if (!ok)
    return 1;
  if (exp != 0 && exp < (unsigned long long)time(NULL))
    return 2;
  return 0;
}

/* ---- the upstream -------------------------------------------------------- */

static int connect_to(const struct sockaddr *a, socklen_t alen) {
  int fd = socket(a->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1, err = 0;
  socklen_t el = sizeof(err);
  struct pollfd pf;
  if (fd < 0)
    return -1;
  if (connect(fd, a, alen) != 0) {
    if (errno != EINPROGRESS)
      goto fail;
    pf.fd = fd;
    pf.events = POLLOUT;
    if (poll(&pf, 1, CONNECT_TIMEOUT_MS) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0)
      goto fail;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
fail:
  close(fd);
  return -1;
}

/* The port on 127.0.0.1, ::1, then every other address of this machine
 * (a server may listen on one address only). */
static int upstream_connect(unsigned port) {
  struct sockaddr_in a4;
  struct sockaddr_in6 a6;
  struct ifaddrs *ifs = NULL, *i;
  int fd;
  memset(&a4, 0, sizeof(a4));
  a4.sin_family = AF_INET;
  a4.sin_port = htons((uint16_t)port);
  a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if ((fd = connect_to((struct sockaddr *)&a4, sizeof(a4))) >= 0)
    return fd;
  memset(&a6, 0, sizeof(a6));
  a6.sin6_family = AF_INET6;
  a6.sin6_port = htons((uint16_t)port);
  a6.sin6_addr = in6addr_loopback;
  if ((fd = connect_to((struct sockaddr *)&a6, sizeof(a6))) >= 0)
    return fd;
  if (getifaddrs(&ifs) != 0)
    return -1;
  for (i = ifs; i != NULL && fd < 0; i = i->ifa_next) {
    if (i->ifa_addr == NULL)
      continue;
    if (i->ifa_addr->sa_family == AF_INET) {
      memcpy(&a4, i->ifa_addr, sizeof(a4));
      if (a4.sin_addr.s_addr == htonl(INADDR_LOOPBACK))
        continue;
      a4.sin_port = htons((uint16_t)port);
      fd = connect_to((struct sockaddr *)&a4, sizeof(a4));
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      memcpy(&a6, i->ifa_addr, sizeof(a6));
      if (IN6_IS_ADDR_LOOPBACK(&a6.sin6_addr))
        continue;
      a6.sin6_port = htons((uint16_t)port);
      fd = connect_to((struct sockaddr *)&a6, sizeof(a6));
    }
  }
  freeifaddrs(ifs);
  return fd;
}

/* The server's response head, passed on with Connection: close unless it
 * is a 101; 0, or -1 (the client has had a 502 when nothing was sent). */
static int relay_response_head(int client, int up, char *cookie) {
  static char in[HEAD_MAX_URL + 1], out[OUT_MAX];
  size_t have = 0, o = 0;
  char *end = NULL, *p;
  int status, rc;
  for (;;) {
    size_t hl;
    alarm(RESP_TIMEOUT_S);
    while (end == NULL) {
      ssize_t n;
      if (have == HEAD_MAX_URL)
        goto bad;
      n = recv(up, in + have, HEAD_MAX_URL - have, 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        goto bad;
      have += (size_t)n;
      in[have] = '\0';
      end = strstr(in, "\r\n\r\n");
    }
    alarm(0);
    if (sscanf(in, "HTTP/1.%*1d %3d", &status) != 1)
      goto bad;
    if (status < 100 || status >= 200 || status == 101)
      break;
    /* an interim response (100 Continue): passed on as it is; the final
     * one follows */
    hl = (size_t)(end + 4 - in);
    if (fly_write_all(client, in, hl) != 0)
      return -1;
    memmove(in, in + hl, have - hl);
    have -= hl;
    in[have] = '\0';
    end = strstr(in, "\r\n\r\n");
  }
  if (status == 101)
    return fly_write_all(client, in, have);
  p = in;
  for (;;) {
    char *e = strstr(p, "\r\n"), *colon;
    size_t len;
    if (e == NULL || e == end + 2)
      break;
    len = (size_t)(e - p) + 2;
    colon = memchr(p, ':', (size_t)(e - p));
    if (p == in || colon == NULL ||
        !(name_is(p, (size_t)(colon - p), "Connection") || name_is(p, (size_t)(colon - p), "Keep-Alive"))) {
      memcpy(out + o, p, len);
      o += len;
    }
    p = e + 2;
  }
  if (o + strlen(cookie) + 21 > sizeof(out))
    goto bad;
  memcpy(out + o, cookie, strlen(cookie));
  o += strlen(cookie);
  OPENSSL_cleanse(cookie, strlen(cookie));
  memcpy(out + o, "Connection: close\r\n\r\n", 21);
  o += 21;
  rc = fly_write_all(client, out, o);
  OPENSSL_cleanse(out, o);
  if (rc != 0)
    return -1;
  /* what came after the head: the body's first bytes */
  return fly_write_all(client, end + 4, have - (size_t)(end + 4 - in));
bad:
  alarm(0);
  reply_json(client, "502 Bad Gateway", "bad_upstream", "the sandbox's server sent no valid response head", NULL);
  return -1;
}

typedef struct {
  int from, to;
  char *cookie; /* a Set-Cookie line for the response, or "" */
} pipe_t;

/* upstream -> client: the response head (rewritten), then bytes until the
 * server ends its side; the client then has DRAIN_S to close its own. */
static void *down(void *arg) {
  pipe_t *pp = arg;
  static char buf[IO_BUF];
  int ok = relay_response_head(pp->to, pp->from, pp->cookie) == 0;
  while (ok) {
    ssize_t n = recv(pp->from, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0 || fly_write_all(pp->to, buf, (size_t)n) != 0)
      ok = 0;
  }
  shutdown(pp->to, SHUT_WR);
  shutdown(pp->from, SHUT_RD);
  alarm(DRAIN_S);
  return NULL;
}

/* client -> upstream, then the end of it. */
static void up_pump(int client, int up) {
  static char buf[IO_BUF];
  int ok = 1;
  for (;;) {
    ssize_t n = recv(client, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    if (ok && fly_write_all(up, buf, (size_t)n) != 0)
      ok = 0; /* the server went: drain the client, so no reset cuts its response */
  }
  shutdown(up, SHUT_WR);
}

/* ---- one request ------------------------------------------------------- */

void fly_url_serve(int fd, char *head, size_t have, char *end, const char *self, unsigned own_port) {
  static char out[OUT_MAX], path[HEAD_MAX_URL], extra[768], cookie[512];
  const char *sp1, *sp2, *line_end;
  req_t r;
  int olen, plen, up, rc;
  pipe_t pp;
  pthread_t th;
  size_t after;

  alarm(HANDOFF_S); /* the connect and the request's sending, bounded */
  memset(&r, 0, sizeof(r));
  cookie[0] = '\0';
  line_end = strstr(head, "\r\n");
  sp1 = memchr(head, ' ', (size_t)(line_end - head));
  sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
  if (sp1 == NULL || sp2 == NULL || parse_target(sp1 + 1, (size_t)(sp2 - sp1 - 1), &r) != 0) {
    reply_json(fd, "400 Bad Request", "bad_request", "expected /.computesdk/u/<machine>/<port>/<path>", NULL);
    return;
  }
  if (r.port == own_port) {
    reply_json(fd, "403 Forbidden", "port_reserved", "this port is the sandbox's edge bridge", NULL);
    return;
  }
  if (self == NULL || strcmp(self, r.machine) != 0) {
    /* Fly's proxy replays the request on that machine (waking it) */
    snprintf(extra, sizeof(extra), "fly-replay: instance=%s\r\n", r.machine);
    reply_json(fd, "421 Misdirected Request", "wrong_machine", "replayed to the machine the URL names", extra);
    return;
  }
  if (r.rest_len == 0 || r.rest[0] == '?') {
    /* /.../<port> -> /.../<port>/: the token cookie's path ends with '/' */
    snprintf(extra, sizeof(extra), "Location: %s%s/%u/%.*s\r\n", FLY_URL_PREFIX, r.machine, r.port,
             (int)(r.rest_len < 512 ? r.rest_len : 0), r.rest);
    reply_json(fd, "308 Permanent Redirect", "redirect", "the URL ends with a slash", extra);
    return;
  }
  plen = build_path(&r, path, sizeof(path));
  olen = plen < 0 ? -1 : rewrite_head(head, head, (size_t)(sp1 - head), path, sp2 + 1,
                                      (size_t)(line_end - sp2 - 1), &r, out, sizeof(out));
  if (olen < 0) {
    OPENSSL_cleanse(&r, sizeof(r));
    reply_json(fd, "400 Bad Request", "bad_request", "the request head could not be read", NULL);
    return;
  }
  if (!is_public(r.port)) {
    const char *auth = "WWW-Authenticate: Bearer realm=\"computesdk\"\r\n";
    if (r.token[0] == '\0') {
      reply_json(fd, "401 Unauthorized", "token_missing",
                 "this URL is private: pass its token (computesdk_token query parameter, cookie or computesdk-token header)", auth);
      return;
    }
    rc = check_token(&r);
    if (rc != 0) {
      OPENSSL_cleanse(&r, sizeof(r));
      reply_json(fd, "403 Forbidden", rc == 2 ? "token_expired" : "token_invalid",
                 rc == 2 ? "the link has expired" : "the token is not valid for this sandbox and port", auth);
      return;
    }
    if (r.from_query) {
      /* a browser's first request: the token is kept as a cookie of this
       * URL's path, set on the server's response */
      long long exp = atoll(r.token), left = exp ? exp - (long long)time(NULL) : 0;
      char maxage[48] = "";
      if (exp)
        snprintf(maxage, sizeof(maxage), "; Max-Age=%lld", left > 0 ? left : 0);
      snprintf(cookie, sizeof(cookie), "Set-Cookie: " TOKEN_NAME "=%s; Path=%s%s/%u/; HttpOnly%s%s\r\n",
               r.token, FLY_URL_PREFIX, r.machine, r.port,
               r.https ? "; Secure; SameSite=None" : "; SameSite=Lax", maxage);
    }
  }
  OPENSSL_cleanse(r.token, sizeof(r.token));
  up = upstream_connect(r.port);
  if (up < 0) {
    reply_json(fd, "502 Bad Gateway", "port_closed", "nothing listens on this port in the sandbox", NULL);
    return;
  }
  if (fly_write_all(up, out, (size_t)olen) != 0)
    return;
  after = have - (size_t)(end + 4 - head);
  if (after > 0 && fly_write_all(up, end + 4, after) != 0)
    return;
  pp.from = up;
  pp.to = fd;
  pp.cookie = cookie;
  if (pthread_create(&th, NULL, down, &pp) != 0)
    return;
  up_pump(fd, up);
  pthread_join(th, NULL);
}
