/* edge.c: an SSH session's bytes through Fly's public edge.
 *
 * When a target has an edge (a process outside Fly's private network),
 * libssh2 keeps an ordinary socket: one end of a socketpair.  The other
 * end belongs to this module, which carries its bytes as binary WebSocket
 * messages (wslay) over TLS (OpenSSL) to https://<edge>/.computesdk/ssh,
 * where Fly's proxy (or fly-local's edge) routes the upgrade to the
 * machine named by fly-force-instance-id and its bridge (docker/flyedge.c)
 * joins them to sshd.  Everything here runs on the I/O thread, without
 * blocking: ssh.c steps it with the session (fly_edge_step) and polls the
 * fds it names (fly_edge_fds), inside the session's connect deadline.
 *
 * Name resolution: a numeric address is used as it is; a name is resolved
 * with glibc's getaddrinfo_a (its own thread), polled every few ms, so the
 * I/O thread never blocks on DNS.  A request still running when the edge
 * is freed is cancelled, or handed to a list reaped later.
 *
 * Bounds: the upgrade reply's head is at most 8 KiB; a WebSocket message at
 * most 1 MiB (wslay closes with 1009 above that); bytes waiting for libssh2
 * at most ~1.25 MiB (reading from TLS stops at 256 KiB); towards the edge,
 * at most 256 KiB queued in wslay plus one 64 KiB read, and 256 KiB of
 * frames waiting for TLS.  The token lives in the target and, until sent,
 * in the request buffer, which is wiped. */
#define _GNU_SOURCE
#include "ssh.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <wslay/wslay.h>

#define EDGE_HEAD_MAX 8192
#define EDGE_MSG_MAX ((size_t)1 << 20)
#define EDGE_RX_HIGH ((size_t)256 << 10)
#define EDGE_TX_HIGH ((size_t)256 << 10)
#define EDGE_READ 65536
#define EDGE_DNS_POLL_MS 5
#define EDGE_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum {
  E_RESOLVE = 0,
  E_CONNECT,
  E_TLS,
  E_REQUEST,
  E_RESPONSE,
  E_OPEN,
  E_CLOSED, /* the edge closed cleanly; libssh2 sees EOF */
  E_FAILED
};

struct fly_edge_s {
  const fly_ssh_target_t *t; /* the session's (it outlives the edge) */
  int state;
  int sp;                    /* our end of the socketpair */
  int fd;                    /* TCP to the edge */
  struct gaicb *gai;         /* a name being resolved */
  struct addrinfo *ai;       /* numeric: ours to free */
  const struct addrinfo *next_ai; /* the addresses not tried yet */
  SSL_CTX *ctx;
  SSL *ssl;
  int want_write;            /* the last TLS call wanted the socket writable */
  fly_buf_t req;             /* the upgrade request (holds the token) */
  size_t req_off;
  char key[32];              /* Sec-WebSocket-Key */
  char head[EDGE_HEAD_MAX + 1];
  size_t head_len;
  unsigned char *pre;        /* bytes read past the reply's head */
  size_t pre_len, pre_off;
  wslay_event_context_ptr ws;
  fly_buf_t rx;              /* from the edge, for libssh2 */
  size_t rx_off;
  /* Frames wslay made, waiting for SSL_write.  A TLS write that wanted the
   * socket must be repeated with at least as many bytes (OpenSSL's rule),
   * which wslay's own retries do not promise: its frames land here and are
   * written from here. */
  fly_buf_t tx;
  size_t tx_off;
  int eof;                   /* TLS said the peer closed */
  int sp_eof;                /* libssh2's end was shut for writing */
  /* failure */
  const char *code;
  int status;
  int retry;
  char msg[200];
};

/* ---- resolver requests outliving their edge ----------------------------- */

static pthread_mutex_t orphans_mu = PTHREAD_MUTEX_INITIALIZER;
static struct orphan_s {
  struct gaicb *g;
  struct orphan_s *next;
} *orphans;

static void gai_release(struct gaicb *g) {
  if (g->ar_result != NULL)
    freeaddrinfo(g->ar_result);
  free((void *)g->ar_name);
  free((void *)g->ar_service);
  free((void *)g->ar_request);
  free(g);
}

/* Free the finished ones, and g (NULL: none) now or once it finishes. */
static void orphans_reap(struct gaicb *g) {
  struct orphan_s **pp, *o;
  if (g != NULL && gai_cancel(g) != EAI_NOTCANCELED &&
      gai_error(g) != EAI_INPROGRESS) {
    gai_release(g);
    g = NULL;
  }
  pthread_mutex_lock(&orphans_mu);
  if (g != NULL && (o = calloc(1, sizeof(*o))) != NULL) {
    o->g = g;
    o->next = orphans;
    orphans = o;
  }
  for (pp = &orphans; *pp != NULL;) {
    o = *pp;
    if (gai_error(o->g) == EAI_INPROGRESS) {
      pp = &o->next;
      continue;
    }
    *pp = o->next;
    gai_release(o->g);
    free(o);
  }
  pthread_mutex_unlock(&orphans_mu);
}

/* ---- failing ------------------------------------------------------------ */

static void edge_fail(fly_edge_t *e, const char *code, int retry,
                      const char *fmt, ...) {
  va_list ap;
  if (e->state == E_FAILED)
    return;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
  va_end(ap);
  e->code = code;
  e->retry = retry;
  e->state = E_FAILED;
  /* libssh2 sees the end at once */
  if (e->sp >= 0)
    shutdown(e->sp, SHUT_RDWR);
}

/* OpenSSL's reason for the last failure. */
static const char *ssl_reason(fly_edge_t *e) {
  static __thread char buf[160];
  long v = e->ssl ? SSL_get_verify_result(e->ssl) : X509_V_OK;
  unsigned long err = ERR_peek_last_error();
  if (v != X509_V_OK)
    return X509_verify_cert_error_string(v);
  if (err != 0) {
    ERR_error_string_n(err, buf, sizeof(buf));
    return buf;
  }
  return "the connection closed";
}

/* ---- life ---------------------------------------------------------------- */

fly_edge_t *fly_edge_new(const fly_ssh_target_t *t, int *ssh_fd) {
  fly_edge_t *e = calloc(1, sizeof(*e));
  int sv[2];
  if (e == NULL)
    return NULL;
  e->t = t;
  e->fd = -1;
  e->sp = -1;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                 sv) != 0) {
    free(e);
    return NULL;
  }
  e->sp = sv[1];
  *ssh_fd = sv[0];
  orphans_reap(NULL);
  return e;
}

void fly_edge_free(fly_edge_t *e) {
  if (e == NULL)
    return;
  if (e->gai != NULL)
    orphans_reap(e->gai);
  if (e->ai != NULL)
    freeaddrinfo(e->ai);
  if (e->ws != NULL)
    wslay_event_context_free(e->ws);
  if (e->ssl != NULL)
    SSL_free(e->ssl);
  if (e->ctx != NULL)
    SSL_CTX_free(e->ctx);
  if (e->fd >= 0)
    close(e->fd);
  if (e->sp >= 0)
    close(e->sp);
  fly_buf_wipe_free(&e->req); /* it may still hold the token */
  fly_buf_free(&e->rx);
  fly_buf_free(&e->tx);
  free(e->pre);
  free(e);
}

int fly_edge_failed(const fly_edge_t *e, const char **code, const char **msg,
                    int *status, int *retry) {
  if (e->state != E_FAILED)
    return 0;
  *code = e->code;
  *msg = e->msg;
  *status = e->status;
  *retry = e->retry;
  return 1;
}

int fly_edge_open(const fly_edge_t *e) { return e->state >= E_OPEN; }

/* ---- connecting ---------------------------------------------------------- */

static int is_ip(const char *h) {
  unsigned char b[16];
  return inet_pton(AF_INET, h, b) == 1 || inet_pton(AF_INET6, h, b) == 1;
}

static void tcp_start(fly_edge_t *e, const struct addrinfo *ai) {
  int one = 1;
  unsigned ms;
  e->next_ai = ai->ai_next;
  e->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (e->fd < 0) {
    edge_fail(e, "SSH_CONNECT_FAILED", 1, "edge socket: %s", strerror(errno));
    return;
  }
  setsockopt(e->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  /* as ssh.c does for a direct connection: a peer gone without a FIN */
  ms = e->t->keepalive_sec * 3000;
  if (ms < 30000)
    ms = 30000;
  setsockopt(e->fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
  if (connect(e->fd, ai->ai_addr, ai->ai_addrlen) != 0 &&
      errno != EINPROGRESS) {
    int err = errno;
    close(e->fd);
    e->fd = -1;
    if (e->next_ai != NULL) {
      tcp_start(e, e->next_ai);
      return;
    }
    edge_fail(e, "SSH_CONNECT_FAILED", 1, "edge connect: %s", strerror(err));
    return;
  }
  e->state = E_CONNECT;
}

static void resolve_step(fly_edge_t *e) {
  char port[16];
  struct addrinfo hints;
  int rc;

  snprintf(port, sizeof(port), "%d", e->t->edge_port);
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  if (e->gai == NULL && e->ai == NULL) {
    if (is_ip(e->t->edge_host)) {
      hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
      rc = getaddrinfo(e->t->edge_host, port, &hints, &e->ai);
      if (rc != 0 || e->ai == NULL) {
        edge_fail(e, "SSH_CONNECT_FAILED", 0, "edge address: %s",
                  gai_strerror(rc));
        return;
      }
      tcp_start(e, e->ai);
      return;
    }
    /* A name: resolved on glibc's resolver thread, polled from here. */
    e->gai = calloc(1, sizeof(*e->gai));
    if (e->gai == NULL) {
      edge_fail(e, "ERR_NO_MEMORY", 0, "out of memory");
      return;
    }
    e->gai->ar_name = strdup(e->t->edge_host);
    e->gai->ar_service = strdup(port);
    {
      struct addrinfo *h = calloc(1, sizeof(*h));
      if (h != NULL) {
        h->ai_socktype = SOCK_STREAM;
        h->ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
      }
      e->gai->ar_request = h;
    }
    if (e->gai->ar_name == NULL || e->gai->ar_service == NULL ||
        e->gai->ar_request == NULL) {
      gai_release(e->gai);
      e->gai = NULL;
      edge_fail(e, "ERR_NO_MEMORY", 0, "out of memory");
      return;
    }
    {
      struct gaicb *list[1] = {e->gai};
      rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
    }
    if (rc != 0) {
      gai_release(e->gai);
      e->gai = NULL;
      edge_fail(e, "SSH_CONNECT_FAILED", 1, "resolve %s: %s", e->t->edge_host,
                gai_strerror(rc));
    }
    return;
  }
  if (e->gai == NULL)
    return;
  rc = gai_error(e->gai);
  if (rc == EAI_INPROGRESS)
    return;
  if (rc != 0 || e->gai->ar_result == NULL) {
    edge_fail(e, "SSH_CONNECT_FAILED", 1, "resolve %s: %s", e->t->edge_host,
              gai_strerror(rc));
    return;
  }
  tcp_start(e, e->gai->ar_result);
}

static int tls_setup(fly_edge_t *e) {
  const fly_ssh_target_t *t = e->t;
  e->ctx = SSL_CTX_new(TLS_client_method());
  if (e->ctx == NULL)
    return -1;
  SSL_CTX_set_min_proto_version(e->ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(e->ctx, SSL_VERIFY_PEER, NULL);
  if (t->edge_ca != NULL) {
    /* every certificate of the PEM is trusted (a CA, or a chain) */
    BIO *b = BIO_new_mem_buf(t->edge_ca, -1);
    X509_STORE *st = SSL_CTX_get_cert_store(e->ctx);
    X509 *x;
    int n = 0;
    while (b != NULL && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
      X509_STORE_add_cert(st, x);
      X509_free(x);
      n++;
    }
    BIO_free(b);
    ERR_clear_error();
    if (n == 0) {
      edge_fail(e, "FLY_EDGE_TLS", 0, "edgeCa holds no PEM certificate");
      return -1;
    }
  } else if (SSL_CTX_load_verify_locations(e->ctx, EDGE_CA_BUNDLE, NULL) != 1) {
    ERR_clear_error();
    SSL_CTX_set_default_verify_paths(e->ctx);
  }
  e->ssl = SSL_new(e->ctx);
  if (e->ssl == NULL)
    return -1;
  SSL_set_mode(e->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                           SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_fd(e->ssl, e->fd);
  /* the certificate must name the host of edgeUrl: a name (with SNI) or an
   * address */
  if (is_ip(t->edge_host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(e->ssl), t->edge_host);
  } else {
    SSL_set_tlsext_host_name(e->ssl, t->edge_host);
    SSL_set1_host(e->ssl, t->edge_host);
  }
  {
    static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.',
                                         '1'};
    SSL_set_alpn_protos(e->ssl, alpn, sizeof(alpn));
  }
  return 0;
}

/* The upgrade request; the token goes only here (wiped when freed). */
static int request_build(fly_edge_t *e) {
  unsigned char nonce[16];
  const fly_ssh_target_t *t = e->t;
  if (RAND_bytes(nonce, sizeof(nonce)) != 1)
    return -1;
  EVP_EncodeBlock((unsigned char *)e->key, nonce, sizeof(nonce));
  if (fly_buf_reserve(&e->req, 512 + strlen(t->edge_authority) +
                                   strlen(t->edge_token) +
                                   strlen(t->edge_instance)) != 0)
    return -1;
  return fly_buf_printf(&e->req,
                        "GET %s HTTP/1.1\r\nHost: %s\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                        "Authorization: Bearer %s\r\n"
                        "fly-force-instance-id: %s\r\n"
                        "User-Agent: computesdk-fly\r\n\r\n",
                        t->edge_path, t->edge_authority, e->key, t->edge_token,
                        t->edge_instance);
}

/* 1: done, 0: wait, -1: failed (set). */
static int tls_io_wait(fly_edge_t *e, int rc, const char *what) {
  int err = SSL_get_error(e->ssl, rc);
  if (err == SSL_ERROR_WANT_READ) {
    e->want_write = 0;
    return 0;
  }
  if (err == SSL_ERROR_WANT_WRITE) {
    e->want_write = 1;
    return 0;
  }
  if (err == SSL_ERROR_ZERO_RETURN ||
      (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
    edge_fail(e, "SSH_CONNECT_FAILED", 1, "edge %s: the edge closed the connection",
              what);
    return -1;
  }
  edge_fail(e, "FLY_EDGE_TLS", 0, "edge %s: %s", what, ssl_reason(e));
  return -1;
}

/* The value of header name in the reply head (NUL-terminated), or NULL. */
static const char *head_value(const char *head, const char *name, size_t *len) {
  size_t nl = strlen(name);
  const char *p = strstr(head, "\r\n");
  while (p != NULL && p[2] != '\0') {
    const char *line = p + 2, *end = strstr(line, "\r\n"), *v;
    if (end == NULL || end == line)
      return NULL;
    if ((size_t)(end - line) > nl && strncasecmp(line, name, nl) == 0 &&
        line[nl] == ':') {
      v = line + nl + 1;
      while (*v == ' ' || *v == '\t')
        v++;
      *len = (size_t)(end - v);
      while (*len > 0 && (v[*len - 1] == ' ' || v[*len - 1] == '\t'))
        (*len)--;
      return v;
    }
    p = end;
  }
  return NULL;
}

static int ws_start(fly_edge_t *e);

/* The reply to the upgrade: 101 with the right accept key, else why not. */
static void response_parse(fly_edge_t *e, size_t head_end) {
  int status = 0;
  char want[64], in[128];
  unsigned char sha[SHA_DIGEST_LENGTH];
  const char *v;
  size_t vl = 0;

  e->head[head_end + 2] = '\0'; /* the last header keeps its CRLF */
  if (sscanf(e->head, "HTTP/1.%*1[01] %3d", &status) != 1 || status < 100) {
    edge_fail(e, "FLY_EDGE_PROTOCOL", 0,
              "edge: the upgrade reply is not HTTP/1.1");
    return;
  }
  e->status = status;
  if (status != 101) {
    /* the proxy could not reach the machine (yet): it may be starting */
    edge_fail(e, "FLY_EDGE_REFUSED", status == 502 || status == 503 ||
                                         status == 504,
              "edge refused the upgrade: HTTP %d", status);
    return;
  }
  snprintf(in, sizeof(in), "%s%s", e->key, WS_GUID);
  SHA1((const unsigned char *)in, strlen(in), sha);
  EVP_EncodeBlock((unsigned char *)want, sha, sizeof(sha));
  v = head_value(e->head, "Sec-WebSocket-Accept", &vl);
  if (v == NULL || vl != strlen(want) || memcmp(v, want, vl) != 0) {
    edge_fail(e, "FLY_EDGE_PROTOCOL", 0,
              "edge: 101 without the WebSocket accept key");
    return;
  }
  /* what came after the head is the first frames */
  e->pre_len = e->head_len - (head_end + 4);
  if (e->pre_len > 0) {
    e->pre = malloc(e->pre_len);
    if (e->pre == NULL) {
      edge_fail(e, "ERR_NO_MEMORY", 0, "out of memory");
      return;
    }
    memcpy(e->pre, e->head + head_end + 4, e->pre_len);
  }
  if (ws_start(e) != 0) {
    edge_fail(e, "ERR_NO_MEMORY", 0, "out of memory");
    return;
  }
  e->state = E_OPEN;
}

static void connect_step(fly_edge_t *e) {
  int rc;
  if (e->state == E_RESOLVE)
    resolve_step(e);
  if (e->state == E_CONNECT) {
    struct pollfd p = {e->fd, POLLOUT, 0};
    int err = 0;
    socklen_t elen = sizeof(err);
    if (poll(&p, 1, 0) <= 0)
      return;
    if (getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
      err = errno;
    if (err != 0 && e->next_ai != NULL) {
      /* a name's next address (IPv6 then IPv4, say) */
      close(e->fd);
      e->fd = -1;
      tcp_start(e, e->next_ai);
      return;
    }
    if (err != 0) {
      edge_fail(e, "SSH_CONNECT_FAILED", 1, "edge connect: %s",
                strerror(err));
      return;
    }
    if (tls_setup(e) != 0) {
      if (e->state != E_FAILED)
        edge_fail(e, "ERR_NO_MEMORY", 0, "out of memory");
      return;
    }
    e->state = E_TLS;
  }
  if (e->state == E_TLS) {
    ERR_clear_error();
    rc = SSL_connect(e->ssl);
    if (rc != 1) {
      tls_io_wait(e, rc, "TLS handshake");
      return;
    }
    if (request_build(e) != 0) {
      edge_fail(e, "ERR_NO_MEMORY", 0, "out of memory");
      return;
    }
    e->state = E_REQUEST;
  }
  if (e->state == E_REQUEST) {
    while (e->req_off < e->req.len) {
      ERR_clear_error();
      rc = SSL_write(e->ssl, e->req.base + e->req_off,
                     (int)(e->req.len - e->req_off));
      if (rc <= 0) {
        tls_io_wait(e, rc, "upgrade request");
        return;
      }
      e->req_off += (size_t)rc;
    }
    fly_buf_wipe_free(&e->req); /* the token is sent: gone */
    e->state = E_RESPONSE;
  }
  if (e->state == E_RESPONSE) {
    for (;;) {
      char *end;
      if (e->head_len == EDGE_HEAD_MAX) {
        edge_fail(e, "FLY_EDGE_PROTOCOL", 0,
                  "edge: the upgrade reply's head is over %d bytes",
                  EDGE_HEAD_MAX);
        return;
      }
      ERR_clear_error();
      rc = SSL_read(e->ssl, e->head + e->head_len,
                    (int)(EDGE_HEAD_MAX - e->head_len));
      if (rc <= 0) {
        tls_io_wait(e, rc, "upgrade reply");
        return;
      }
      e->head_len += (size_t)rc;
      e->head[e->head_len] = '\0';
      end = strstr(e->head, "\r\n\r\n");
      if (end != NULL) {
        response_parse(e, (size_t)(end - e->head));
        return;
      }
    }
  }
}

/* ---- WebSocket (wslay) ----------------------------------------------------- */

static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *user) {
  fly_edge_t *e = user;
  int rc;
  (void)flags;
  /* libssh2 is behind: stop reading until it catches up */
  if (e->rx.len - e->rx_off >= EDGE_RX_HIGH) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (e->pre_off < e->pre_len) {
    size_t n = e->pre_len - e->pre_off;
    if (n > len)
      n = len;
    memcpy(buf, e->pre + e->pre_off, n);
    e->pre_off += n;
    return (ssize_t)n;
  }
  if (len > INT32_MAX)
    len = INT32_MAX;
  ERR_clear_error();
  rc = SSL_read(e->ssl, buf, (int)len);
  if (rc > 0)
    return rc;
  switch (SSL_get_error(e->ssl, rc)) {
  case SSL_ERROR_WANT_READ:
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  case SSL_ERROR_WANT_WRITE:
    e->want_write = 1;
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  default:
    e->eof = 1;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
}

/* wslay's frames go to tx (at most EDGE_TX_HIGH waiting). */
static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *user) {
  fly_edge_t *e = user;
  size_t room;
  (void)flags;
  room = e->tx.len - e->tx_off >= EDGE_TX_HIGH
             ? 0
             : EDGE_TX_HIGH - (e->tx.len - e->tx_off);
  if (room == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (len > room)
    len = room;
  if (fly_buf_append(&e->tx, data, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

/* tx -> TLS.  1 when bytes went, 0 when none could, -1 when TLS failed. */
static int tx_flush(fly_edge_t *e) {
  int moved = 0;
  while (e->tx_off < e->tx.len) {
    size_t n = e->tx.len - e->tx_off;
    int rc;
    if (n > INT32_MAX)
      n = INT32_MAX;
    ERR_clear_error();
    rc = SSL_write(e->ssl, e->tx.base + e->tx_off, (int)n);
    if (rc > 0) {
      e->tx_off += (size_t)rc;
      e->want_write = 0;
      moved = 1;
      continue;
    }
    switch (SSL_get_error(e->ssl, rc)) {
    case SSL_ERROR_WANT_WRITE:
      e->want_write = 1;
      return moved;
    case SSL_ERROR_WANT_READ:
      return moved;
    default:
      return -1;
    }
  }
  /* all written: start the buffer over (big bursts give their memory back) */
  e->tx.len = 0;
  e->tx_off = 0;
  if (e->tx.cap > 2 * EDGE_TX_HIGH)
    fly_buf_free(&e->tx);
  return moved;
}

static int ws_mask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                   void *user) {
  (void)ctx;
  (void)user;
  return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
}

static void ws_msg(wslay_event_context_ptr ctx,
                   const struct wslay_event_on_msg_recv_arg *arg, void *user) {
  fly_edge_t *e = user;
  (void)ctx;
  if (arg->opcode == WSLAY_BINARY_FRAME) {
    /* the bound: EDGE_RX_HIGH before reading stops, plus one message */
    if (fly_buf_append(&e->rx, arg->msg, arg->msg_length) != 0)
      edge_fail(e, "ERR_NO_MEMORY", 0, "out of memory");
  } else if (arg->opcode == WSLAY_TEXT_FRAME) {
    edge_fail(e, "FLY_EDGE_PROTOCOL", 0,
              "edge: a text message where SSH bytes were expected");
  }
}

/* wslay stopped reading without a close from the peer or an end of TLS:
 * it refused what came (a frame over EDGE_MSG_MAX: 1009; anything else
 * that is no frame: 1002) and queued its own close, which goes out now so
 * that its code says which.  1 when so (failed). */
static int ws_refused(fly_edge_t *e) {
  if (e->eof || wslay_event_get_read_enabled(e->ws) ||
      wslay_event_get_close_received(e->ws))
    return 0;
  (void)wslay_event_send(e->ws); /* into tx: it cannot block */
  if (wslay_event_get_status_code_sent(e->ws) == WSLAY_CODE_MESSAGE_TOO_BIG)
    edge_fail(e, "FLY_EDGE_PROTOCOL", 0,
              "edge: a WebSocket message over %zu bytes", EDGE_MSG_MAX);
  else
    edge_fail(e, "FLY_EDGE_PROTOCOL", 0,
              "edge: bytes that are not a WebSocket frame");
  return 1;
}

static int ws_start(fly_edge_t *e) {
  static const struct wslay_event_callbacks cb = {
      ws_recv, ws_send, ws_mask, NULL, NULL, NULL, ws_msg};
  if (wslay_event_context_client_init(&e->ws, &cb, e) != 0)
    return -1;
  wslay_event_config_set_max_recv_msg_length(e->ws, EDGE_MSG_MAX);
  return 0;
}

/* Move bytes both ways until nothing moves.  1 when anything moved. */
static int pump(fly_edge_t *e) {
  unsigned char buf[EDGE_READ];
  int moved = 0, round;

  for (round = 0; round < 16 && e->state == E_OPEN; round++) {
    int progress = 0;
    /* libssh2 -> the edge */
    while (!e->sp_eof && wslay_event_get_queued_msg_length(e->ws) < EDGE_TX_HIGH) {
      ssize_t n = recv(e->sp, buf, sizeof(buf), 0);
      struct wslay_event_msg m;
      if (n <= 0)
        break;
      m.opcode = WSLAY_BINARY_FRAME;
      m.msg = buf;
      m.msg_length = (size_t)n;
      if (wslay_event_queue_msg(e->ws, &m) != 0) {
        /* a close is queued (ours or the peer's): no more messages */
        if (!ws_refused(e))
          edge_fail(e, "SSH_DISCONNECTED", 0, "the edge closed the WebSocket");
        return 1;
      }
      progress = 1;
    }
    if (wslay_event_want_write(e->ws)) {
      size_t before = wslay_event_get_queued_msg_length(e->ws);
      int rc = wslay_event_send(e->ws);
      if (rc != 0 && rc != WSLAY_ERR_NO_MORE_MSG) {
        edge_fail(e, rc == WSLAY_ERR_NOMEM ? "ERR_NO_MEMORY" : "SSH_DISCONNECTED",
                  0, "the edge connection was lost (WebSocket send %d)", rc);
        return 1;
      }
      if (wslay_event_get_queued_msg_length(e->ws) != before)
        progress = 1;
    }
    switch (tx_flush(e)) {
    case -1:
      edge_fail(e, "SSH_DISCONNECTED", 0,
                "the edge connection was lost (%s)", ssl_reason(e));
      return 1;
    case 1:
      progress = 1;
      break;
    }
    /* the edge -> libssh2 */
    if (wslay_event_get_read_enabled(e->ws)) {
      size_t before = e->rx.len;
      int rc = wslay_event_recv(e->ws);
      if (e->state != E_OPEN || ws_refused(e))
        return 1;
      if (rc != 0 && !e->eof) {
        edge_fail(e, "FLY_EDGE_PROTOCOL", 0, "edge: WebSocket error %d", rc);
        return 1;
      }
      if (e->rx.len != before)
        progress = 1;
    }
    /* to libssh2's end */
    while (e->rx_off < e->rx.len) {
      ssize_t n = send(e->sp, e->rx.base + e->rx_off, e->rx.len - e->rx_off,
                       MSG_NOSIGNAL);
      if (n <= 0)
        break;
      e->rx_off += (size_t)n;
      progress = 1;
    }
    if (e->rx_off == e->rx.len && e->rx.len > 0) {
      e->rx.len = 0;
      e->rx_off = 0;
      /* a large burst's memory is not kept for the session's life */
      if (e->rx.cap > 2 * EDGE_RX_HIGH)
        fly_buf_free(&e->rx);
    }
    /* the edge is gone (a close, or TLS ended): libssh2 reads EOF once it
     * has everything that came before */
    if ((e->eof || wslay_event_get_close_received(e->ws)) &&
        e->rx_off == e->rx.len) {
      shutdown(e->sp, SHUT_WR);
      e->sp_eof = 1;
      e->state = E_CLOSED;
      return 1;
    }
    moved |= progress;
    if (!progress)
      break;
  }
  return moved;
}

int fly_edge_step(fly_edge_t *e) {
  if (e->state < E_OPEN) {
    int before = e->state;
    connect_step(e);
    if (e->state == E_OPEN)
      pump(e);
    return e->state != before;
  }
  if (e->state == E_OPEN)
    return pump(e);
  return 0;
}

int fly_edge_fds(fly_edge_t *e, struct curl_waitfd *fds, int max) {
  int n = 0;
  short ev = 0;
  if (e->fd >= 0 && e->state < E_CLOSED) {
    if (e->state == E_CONNECT || e->want_write)
      ev |= CURL_WAIT_POLLOUT;
    if (e->state != E_CONNECT &&
        (e->state != E_OPEN || e->rx.len - e->rx_off < EDGE_RX_HIGH))
      ev |= CURL_WAIT_POLLIN;
    if (ev != 0) {
      if (n < max) {
        fds[n].fd = e->fd;
        fds[n].events = ev;
        fds[n].revents = 0;
      }
      n++;
    }
  }
  /* bytes for libssh2 wait for room in the socketpair */
  if (e->sp >= 0 && e->state == E_OPEN && e->rx_off < e->rx.len) {
    if (n < max) {
      fds[n].fd = e->sp;
      fds[n].events = CURL_WAIT_POLLOUT;
      fds[n].revents = 0;
    }
    n++;
  }
  return n;
}

uint64_t fly_edge_deadline(const fly_edge_t *e, uint64_t now) {
  /* the resolver is polled */
  return e->state == E_RESOLVE && e->gai != NULL ? now + EDGE_DNS_POLL_MS
                                                 : UINT64_MAX;
}
