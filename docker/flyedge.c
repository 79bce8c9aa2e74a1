/* flyedge: the sandbox's edge bridge.  (Requests for a sandbox port's URL,
 * /.computesdk/u/..., are flyurl.c's.)  Fly's proxy (or fly-local's edge)
 * hands it a WebSocket upgrade that arrived at https://<app>.fly.dev with
 * `fly-force-instance-id: <this machine>`; it checks the sandbox's edge
 * token and joins the WebSocket's binary messages to a TCP connection to
 * sshd on 127.0.0.1.  The SSH session inside is the provider's own
 * (host-key pinned, key authenticated): this only carries its bytes.
 *
 *   flyedge [-p port] [-t token-hash-file] [-s ssh-port]
 *
 * It runs as root, from a root-owned binary, on a port below 1024 (the
 * entrypoint starts it): the sandbox user can neither stop it, replace it,
 * nor listen on its port in its place.  Without a valid token nothing
 * reaches sshd (401), so sshd is never exposed to scanners on the edge.
 *
 * The token file holds the hex SHA-256 of the token (the provider writes it
 * through the machine's `files`, root's, mode 0600); it is read on every
 * connection, so a new one takes effect at once.  The comparison is of the
 * hashes, in constant time.
 *
 * One process per connection (forked; at most MAX_CONNS at once), two
 * threads per connection once upgraded, one per direction, so that a full
 * socket in one direction never stalls the other.  Every read has a bound:
 * the request head (16 KiB, 10 s), a frame header (14 bytes), a frame's
 * payload (at most 1 MiB, streamed through a 64 KiB buffer).
 *
 * Built static (-lcrypto from libssl-dev's libcrypto.a, for SHA-1 and
 * SHA-256) like flyexec, so it needs nothing from the image. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "flyurl.h"

#define EDGE_PATH "/.computesdk/ssh"
#define URL_PREFIX "/.computesdk/u/"
#define HEAD_MAX 16384
#define HEAD_TIMEOUT_S 10
#define FRAME_MAX ((uint64_t)1 << 20)
#define IO_BUF (64 * 1024)
#define MAX_CONNS 256
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static const char *token_file = "/etc/computesdk/edge_token_sha256";
static int ssh_port = 2222;
static int listen_port = 444; /* ours: flyurl.c never forwards to it */

static int write_more(int fd, const void *p, size_t n, int more) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

int fly_write_all(int fd, const void *p, size_t n) {
  return write_more(fd, p, n, 0);
}

static void reply(int fd, const char *status) {
  char buf[256];
  int n = snprintf(buf, sizeof(buf),
                   "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n"
                   "\r\n",
                   status);
  fly_write_all(fd, buf, (size_t)n);
}

/* The value of header `name` in head (a NUL-terminated request head), copied
 * into out (trimmed); 0, or -1 when absent or too long. */
static int header(const char *head, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  const char *p = strstr(head, "\r\n");
  while (p != NULL && p[2] != '\0' && !(p[2] == '\r' && p[3] == '\n')) {
    const char *line = p + 2, *end = strstr(line, "\r\n"), *v;
    size_t len;
    if (end == NULL)
      return -1;
    if ((size_t)(end - line) > nl && strncasecmp(line, name, nl) == 0 &&
        line[nl] == ':') {
      v = line + nl + 1;
      while (v < end && (*v == ' ' || *v == '\t'))
        v++;
      len = (size_t)(end - v);
      while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
      if (len >= cap)
        return -1;
      memcpy(out, v, len);
      out[len] = '\0';
      return 0;
    }
    p = end;
  }
  return -1;
}

/* 1 when the comma-separated list has token (case-insensitive). */
static int list_has(const char *list, const char *token) {
  size_t tl = strlen(token);
  const char *p = list;
  while (*p) {
    while (*p == ' ' || *p == ',')
      p++;
    if (strncasecmp(p, token, tl) == 0 &&
        (p[tl] == '\0' || p[tl] == ',' || p[tl] == ' '))
      return 1;
    while (*p && *p != ',')
      p++;
  }
  return 0;
}

/* 1 when token's SHA-256 equals the hex hash in the token file. */
static int token_ok(const char *token) {
  unsigned char want[32], got[32];
  int ok;

  if (fly_read_hex32(token_file, want) != 0)
    return 0;
  SHA256((const unsigned char *)token, strlen(token), got);
  ok = CRYPTO_memcmp(want, got, sizeof(want)) == 0;
  OPENSSL_cleanse(got, sizeof(got));
  return ok;
}

static int ssh_connect(void) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0)
    return -1;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)ssh_port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

/* ---- after the upgrade ------------------------------------------------- */

typedef struct {
  int client, ssh;
  pthread_mutex_t wmu; /* writes to the client: both threads send frames */
} conn_t;

static int send_frame(conn_t *c, int op, const void *p, size_t n) {
  unsigned char h[10];
  size_t hl;
  int rc;
  h[0] = (unsigned char)(0x80 | op);
  if (n < 126) {
    h[1] = (unsigned char)n;
    hl = 2;
  } else if (n < 65536) {
    h[1] = 126;
    h[2] = (unsigned char)(n >> 8);
    h[3] = (unsigned char)n;
    hl = 4;
  } else {
    int i;
    h[1] = 127;
    for (i = 0; i < 8; i++)
      h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    hl = 10;
  }
  pthread_mutex_lock(&c->wmu);
  /* the header waits for its payload: one segment, not two */
  rc = write_more(c->client, h, hl, n > 0);
  if (rc == 0 && n > 0)
    rc = fly_write_all(c->client, p, n);
  pthread_mutex_unlock(&c->wmu);
  return rc;
}

static void conn_end(conn_t *c) {
  shutdown(c->client, SHUT_RDWR);
  shutdown(c->ssh, SHUT_RDWR);
}

/* sshd -> client: each read becomes one binary message.
 *
 * While the connection is new (QUICKACK_S: the handshake and the first
 * calls, over a slow client's round trips too) every byte from sshd is
 * acknowledged at once: TCP_QUICKACK, which the kernel clears by itself,
 * hence before each recv.  sshd leaves Nagle on until a session asks for
 * it and writes two messages in a row right after authentication; the
 * second (the first channel's confirmation) waits for the ACK of the
 * first, which this end, with nothing to send back, would delay by up to
 * 40 ms (the provider's side does the same on the private path, src/ssh.c
 * sess_recv).  Later, quick ACKs for bulk output would only add packets. */
#define QUICKACK_S 5
static void *ssh_to_client(void *arg) {
  conn_t *c = arg;
  static __thread unsigned char buf[IO_BUF];
  struct timespec t0, t;
  int quick = 1; /* until QUICKACK_S have passed; then never looked at again */
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    ssize_t n;
#ifdef TCP_QUICKACK
    if (quick) {
      int one = 1;
      clock_gettime(CLOCK_MONOTONIC, &t);
      quick = t.tv_sec - t0.tv_sec < QUICKACK_S;
      if (quick)
        (void)setsockopt(c->ssh, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
    }
#endif
    n = recv(c->ssh, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      unsigned char code[2] = {0x03, 0xe8}; /* 1000: normal closure */
      send_frame(c, 0x8, code, 2);
      break;
    }
    if (send_frame(c, 0x2, buf, (size_t)n) != 0)
      break;
  }
  conn_end(c);
  return NULL;
}

/* Exactly n bytes from fd into p; 0, or -1 at EOF or an error. */
static int read_n(int fd, unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* client -> sshd: frames parsed under FRAME_MAX, unmasked, payloads of
 * binary (and continuation) frames passed on as they stream in. */
static void client_to_ssh(conn_t *c, const unsigned char *pre, size_t npre) {
  static unsigned char buf[IO_BUF];
  size_t have = npre;
  memcpy(buf, pre, npre);
  for (;;) {
    unsigned char h[14];
    size_t hl = 2, i, off;
    uint64_t len;
    int op, masked;
    unsigned char mask[4];

    /* the header: 2 bytes, then its extended length and mask (bytes of
     * it may have come with the previous frame) */
    for (;;) {
      ssize_t r;
      if (have >= 2) {
        size_t ext = (buf[1] & 0x7f) == 126 ? 2 : (buf[1] & 0x7f) == 127 ? 8 : 0;
        hl = 2 + ext + ((buf[1] & 0x80) ? 4 : 0);
      }
      if (have >= hl)
        break;
      r = recv(c->client, buf + have, sizeof(buf) - have, 0);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        return;
      have += (size_t)r;
    }
    memcpy(h, buf, hl);
    op = h[0] & 0x0f;
    masked = (h[1] & 0x80) != 0;
    len = h[1] & 0x7f;
    off = 2;
    if (len == 126) {
      len = ((uint64_t)h[2] << 8) | h[3];
      off = 4;
    } else if (len == 127) {
      len = 0;
      for (i = 0; i < 8; i++)
        len = (len << 8) | h[2 + i];
      off = 10;
    }
    /* a client's frames are masked (RFC 6455 5.1); reserved bits unset */
    if (!masked || (h[0] & 0x70) != 0 || len > FRAME_MAX ||
        (op >= 0x8 && (len > 125 || !(h[0] & 0x80)))) {
      unsigned char code[2] = {0x03, len > FRAME_MAX ? 0xf1 : 0xea};
      send_frame(c, 0x8, code, 2); /* 1009 too big, 1002 protocol error */
      return;
    }
    memcpy(mask, h + off, 4);
    memmove(buf, buf + hl, have - hl);
    have -= hl;
    if (op == 0x0 || op == 0x2) {
      uint64_t left = len, k = 0;
      while (left > 0) {
        size_t take;
        if (have == 0) {
          ssize_t r = recv(c->client, buf, sizeof(buf), 0);
          if (r < 0 && errno == EINTR)
            continue;
          if (r <= 0)
            return;
          have = (size_t)r;
        }
        take = have < left ? have : (size_t)left;
        for (i = 0; i < take; i++, k++)
          buf[i] ^= mask[k & 3];
        if (fly_write_all(c->ssh, buf, take) != 0)
          return;
        memmove(buf, buf + take, have - take);
        have -= take;
        left -= take;
      }
      continue;
    }
    /* control frames (<= 125 bytes) are read whole */
    {
      unsigned char p[125];
      size_t got = have < len ? have : (size_t)len;
      memcpy(p, buf, got);
      memmove(buf, buf + got, have - got);
      have -= got;
      if (got < len && read_n(c->client, p + got, (size_t)len - got) != 0)
        return;
      for (i = 0; i < len; i++)
        p[i] ^= mask[i & 3];
      if (op == 0x8) {
        send_frame(c, 0x8, p, len >= 2 ? 2 : 0);
        return;
      }
      if (op == 0x9 && send_frame(c, 0xA, p, (size_t)len) != 0)
        return;
      if (op != 0x9 && op != 0xA) {
        unsigned char code[2] = {0x03, 0xea};
        send_frame(c, 0x8, code, 2);
        return;
      }
    }
  }
}

/* ---- one connection (a forked child) ------------------------------------ */

static void serve(int fd) {
  static char head[HEAD_MAX + 1];
  size_t have = 0;
  char *end = NULL, key[128], hv[256], token[512], accept_in[256];
  unsigned char sha[SHA_DIGEST_LENGTH];
  char accept_b64[64];
  char resp[256];
  conn_t c;
  pthread_t th;
  int one = 1, n;

  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  /* The head within HEAD_TIMEOUT_S, or SIGALRM ends this process. */
  alarm(HEAD_TIMEOUT_S);
  while (end == NULL) {
    ssize_t r;
    if (have == HEAD_MAX) {
      reply(fd, "431 Request Header Fields Too Large");
      return;
    }
    r = recv(fd, head + have, HEAD_MAX - have, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return;
    have += (size_t)r;
    head[have] = '\0';
    end = strstr(head, "\r\n\r\n");
  }
  /* A sandbox port's URL (flyurl.c): its own token, its own rules. */
  {
    const char *sp = memchr(head, ' ', (size_t)(end - head));
    if (sp != NULL && strncmp(sp + 1, FLY_URL_PREFIX, strlen(FLY_URL_PREFIX)) == 0) {
      fly_url_serve(fd, head, have, end, getenv("FLY_MACHINE_ID"), (unsigned)listen_port);
      return;
    }
  }
  end[2] = '\0'; /* the head ends with its last header's CRLF */
  if (strncmp(head, "GET " EDGE_PATH " HTTP/1.1\r\n", strlen("GET " EDGE_PATH " HTTP/1.1\r\n")) != 0 &&
      strncmp(head, "GET " EDGE_PATH "?", strlen("GET " EDGE_PATH "?")) != 0) {
    reply(fd, "404 Not Found");
    return;
  }
  /* The token first: without it nothing else is looked at. */
  if (header(head, "Authorization", token, sizeof(token)) != 0 ||
      strncasecmp(token, "Bearer ", 7) != 0 || !token_ok(token + 7)) {
    OPENSSL_cleanse(token, sizeof(token));
    reply(fd, "401 Unauthorized");
    return;
  }
  OPENSSL_cleanse(token, sizeof(token));
  if (header(head, "Upgrade", hv, sizeof(hv)) != 0 || !list_has(hv, "websocket") ||
      header(head, "Connection", hv, sizeof(hv)) != 0 || !list_has(hv, "upgrade") ||
      header(head, "Sec-WebSocket-Key", key, sizeof(key)) != 0 ||
      strlen(key) != 24) {
    reply(fd, "400 Bad Request");
    return;
  }
  c.client = fd;
  c.ssh = ssh_connect();
  if (c.ssh < 0) {
    reply(fd, "503 Service Unavailable");
    return;
  }
  snprintf(accept_in, sizeof(accept_in), "%s%s", key, WS_GUID);
  SHA1((const unsigned char *)accept_in, strlen(accept_in), sha);
  EVP_EncodeBlock((unsigned char *)accept_b64, sha, sizeof(sha));
  n = snprintf(resp, sizeof(resp),
               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
               accept_b64);
  if (fly_write_all(fd, resp, (size_t)n) != 0)
    return;
  alarm(0);
  pthread_mutex_init(&c.wmu, NULL);
  if (pthread_create(&th, NULL, ssh_to_client, &c) != 0)
    return;
  /* bytes that came with the head are the first frames */
  client_to_ssh(&c, (unsigned char *)end + 4, have - (size_t)(end + 4 - head));
  conn_end(&c);
  pthread_join(th, NULL);
}

int main(int argc, char **argv) {
  int port = 444, opt, lfd, one = 1, zero = 0, live = 0;
  struct sockaddr_in6 a;

  while ((opt = getopt(argc, argv, "p:t:s:")) != -1) {
    if (opt == 'p')
      port = listen_port = atoi(optarg);
    else if (opt == 't')
      token_file = optarg;
    else if (opt == 's')
      ssh_port = atoi(optarg);
    else {
      fprintf(stderr, "usage: flyedge [-p port] [-t token-hash-file] [-s ssh-port]\n");
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  lfd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    perror("flyedge: socket");
    return 1;
  }
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  /* dual-stack: Fly's proxy reaches a machine over IPv4 or IPv6 */
  setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  memset(&a, 0, sizeof(a));
  a.sin6_family = AF_INET6;
  a.sin6_port = htons((uint16_t)port);
  a.sin6_addr = in6addr_any;
  if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 128) != 0) {
    perror("flyedge: bind");
    return 1;
  }
  for (;;) {
    int fd;
    pid_t pid;
    /* reap, and hold off accepting while MAX_CONNS children run */
    while (waitpid(-1, NULL, live >= MAX_CONNS ? 0 : WNOHANG) > 0)
      live--;
    fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR && errno != ECONNABORTED)
        usleep(10000);
      continue;
    }
    pid = fork();
    if (pid == 0) {
      close(lfd);
      serve(fd);
      _exit(0);
    }
    if (pid > 0)
      live++;
    close(fd);
  }
}
