/* ssh.c: the libssh2 session manager of the I/O thread.
 *
 * Sessions are keyed by the caller's string key and reused by every later
 * operation with that key.  Each session is a non-blocking state machine:
 * TCP connect (refusals retried, 10 ms apart doubling to 100 ms, until the
 * connect timeout),
 * SSH handshake, host key pin check (before anything is sent under the
 * user's name), authentication, then READY, where its operations (exec.c,
 * sftp.c) are stepped every loop turn.  A lost connection fails the
 * operations that had touched it with SSH_DISCONNECTED and the next
 * operation reconnects.
 *
 * Two libssh2 rules shape the stepping.  A send that returned EAGAIN half
 * done must be repeated by the same call before any other send on the
 * session, so such an op becomes `blocked` and alone is stepped until it gets
 * past it.  Channel opens and SFTP init share one per-session state inside
 * libssh2, so only one op at a time may be `opener`. */
/* POLLRDHUP */
#define _GNU_SOURCE
#include "ssh.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
  S_IDLE = 0,    /* no connection */
  S_RETRY,       /* a connect attempt failed; next one at retry_at */
  S_CONNECTING,  /* TCP connect in progress */
  S_HANDSHAKE,
  S_AUTH,
  S_READY
};

/* A starting sshd is usually up within tens of ms: retry soon, then back
 * off so a machine that never answers is not hammered. */
#define FLY_SSH_RETRY_MIN_MS 10
#define FLY_SSH_RETRY_MAX_MS 100

typedef struct fly_ssh_state_s {
  fly_ssh_sess_t *sessions;
} fly_ssh_state_t;

/* sshStats: connections made by this process (all instances). */
static uint64_t fly_ssh_connects;

static fly_ssh_state_t *state_get(fly_loop_t *loop, int create) {
  void **slot = fly_loop_ssh_slot(loop);
  if (*slot == NULL && create)
    *slot = calloc(1, sizeof(fly_ssh_state_t));
  return *slot;
}

/* ---- targets ------------------------------------------------------------- */

void fly_ssh_target_free(fly_ssh_target_t *t) {
  free(t->key);
  free(t->host);
  free(t->user);
  if (t->private_key != NULL) {
    /* Do not leave key material in freed heap. */
    memset(t->private_key, 0, strlen(t->private_key));
    free(t->private_key);
  }
  if (t->password != NULL) {
    memset(t->password, 0, strlen(t->password));
    free(t->password);
  }
  free(t->fingerprint);
  memset(t, 0, sizeof(*t));
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static int target_copy(fly_ssh_target_t *dst, const fly_ssh_target_t *src) {
  memset(dst, 0, sizeof(*dst));
  dst->port = src->port;
  dst->insecure = src->insecure;
  dst->connect_timeout_ms = src->connect_timeout_ms;
  dst->keepalive_sec = src->keepalive_sec;
  dst->key = dup_or_null(src->key);
  dst->host = dup_or_null(src->host);
  dst->user = dup_or_null(src->user);
  dst->private_key = dup_or_null(src->private_key);
  dst->password = dup_or_null(src->password);
  dst->fingerprint = dup_or_null(src->fingerprint);
  if (dst->key == NULL || dst->host == NULL || dst->user == NULL ||
      (src->private_key && !dst->private_key) ||
      (src->password && !dst->password) ||
      (src->fingerprint && !dst->fingerprint)) {
    fly_ssh_target_free(dst);
    return -1;
  }
  return 0;
}

int fly_ssh_target_parse(napi_env env, napi_value opts, fly_ssh_target_t *t) {
  napi_value tv;
  napi_valuetype type;
  bool has = false;
  uint64_t port, keepalive;

  memset(t, 0, sizeof(*t));
  FLY_NAPI_CALL(env, napi_has_named_property(env, opts, "target", &has), -1);
  if (has) {
    FLY_NAPI_CALL(env, napi_get_named_property(env, opts, "target", &tv), -1);
    FLY_NAPI_CALL(env, napi_typeof(env, tv, &type), -1);
  }
  if (!has || type != napi_object) {
    fly_throw_invalid(env, "target must be an object");
    return -1;
  }
  if (fly_js_prop_str(env, tv, "key", 1, &t->key) != 0 ||
      fly_js_prop_str(env, tv, "host", 1, &t->host) != 0 ||
      fly_js_prop_u64(env, tv, "port", 22, &port) != 0 ||
      fly_js_prop_str(env, tv, "user", 1, &t->user) != 0 ||
      fly_js_prop_str(env, tv, "privateKey", 0, &t->private_key) != 0 ||
      fly_js_prop_str(env, tv, "password", 0, &t->password) != 0 ||
      fly_js_prop_str(env, tv, "hostKeyFingerprint", 0, &t->fingerprint) !=
          0 ||
      fly_js_prop_bool(env, tv, "insecureHostKey", 0, &t->insecure) != 0 ||
      fly_js_prop_u64(env, tv, "connectTimeoutMs", 15000,
                      &t->connect_timeout_ms) != 0 ||
      fly_js_prop_u64(env, tv, "keepaliveSec", 15, &keepalive) != 0)
    goto fail;
  if (port == 0 || port > 65535) {
    fly_throw_invalid(env, "target.port must be 1..65535");
    goto fail;
  }
  t->port = (int)port;
  t->keepalive_sec = keepalive > 86400 ? 86400 : (unsigned)keepalive;
  if ((t->private_key == NULL) == (t->password == NULL)) {
    fly_throw_invalid(env,
                      "exactly one of target.privateKey and target.password "
                      "is required");
    goto fail;
  }
  if (t->fingerprint == NULL && !t->insecure) {
    fly_throw_invalid(env, "target.hostKeyFingerprint is required unless "
                           "target.insecureHostKey is true");
    goto fail;
  }
  if (t->key[0] == '\0' || t->host[0] == '\0' || t->user[0] == '\0') {
    fly_throw_invalid(env, "target.key, host and user must not be empty");
    goto fail;
  }
  return 0;

fail:
  fly_ssh_target_free(t);
  return -1;
}

/* ---- helpers for the op modules ------------------------------------------ */

int fly_ssh_blocked_out(fly_ssh_sess_t *s) {
  return (libssh2_session_block_directions(s->ls) &
          LIBSSH2_SESSION_BLOCK_OUTBOUND) != 0;
}

int fly_ssh_rc_dead(fly_ssh_sess_t *s, int rc) {
  (void)s;
  switch (rc) {
  case LIBSSH2_ERROR_SOCKET_NONE:
  case LIBSSH2_ERROR_BANNER_RECV:
  case LIBSSH2_ERROR_BANNER_SEND:
  case LIBSSH2_ERROR_INVALID_MAC:
  case LIBSSH2_ERROR_KEX_FAILURE:
  case LIBSSH2_ERROR_SOCKET_SEND:
  case LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE:
  case LIBSSH2_ERROR_TIMEOUT:
  case LIBSSH2_ERROR_DECRYPT:
  case LIBSSH2_ERROR_SOCKET_DISCONNECT:
  case LIBSSH2_ERROR_PROTO:
  case LIBSSH2_ERROR_SOCKET_TIMEOUT:
  case LIBSSH2_ERROR_BAD_USE:
  case LIBSSH2_ERROR_SOCKET_RECV:
  case LIBSSH2_ERROR_ENCRYPT:
  case LIBSSH2_ERROR_BAD_SOCKET:
    return 1;
  default:
    return 0;
  }
}

void fly_ssh_err_last(fly_ssh_sess_t *s, fly_err_t *e, const char *code,
                      const char *what) {
  char *msg = NULL;
  int len = 0;
  int rc = s->ls ? libssh2_session_last_error(s->ls, &msg, &len, 0) : 0;

  fly_err_set(e, code, "%s: %s", what, msg && len > 0 ? msg : "ssh error");
  e->lib_code = rc;
}

/* ---- channel slots ------------------------------------------------------- */

int fly_ssh_chan_begin(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now) {
  (void)now;
  if (s->opener == op)
    return 1;
  if (s->opener != NULL || s->nchan >= s->chan_limit)
    return 0;
  s->opener = op;
  op->started = 1;
  return 1;
}

int fly_ssh_chan_failed(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now,
                        const char *what) {
  int rc = libssh2_session_last_errno(s->ls);
  (void)now;

  if (rc == LIBSSH2_ERROR_EAGAIN)
    return fly_ssh_blocked_out(s) ? FLY_SSH_OUT : FLY_SSH_WAIT;
  s->opener = NULL;
  if (fly_ssh_rc_dead(s, rc))
    return FLY_SSH_DEAD;
  if (rc == LIBSSH2_ERROR_CHANNEL_FAILURE && s->nchan > 0) {
    /* The server's MaxSessions: wait for a channel to close. */
    s->chan_limit = s->nchan;
    return FLY_SSH_WAIT;
  }
  fly_ssh_err_last(s, &op->req.err, "SSH_CHANNEL_FAILED", what);
  return FLY_SSH_DONE;
}

void fly_ssh_chan_opened(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  if (s->opener == op)
    s->opener = NULL;
  s->nchan++;
  s->progress = 1;
}

void fly_ssh_chan_freed(fly_ssh_sess_t *s) {
  s->nchan--;
  s->progress = 1;
}

void fly_ssh_zombie_add(fly_ssh_sess_t *s, LIBSSH2_CHANNEL *ch) {
  fly_ssh_zombie_t *z = calloc(1, sizeof(*z));
  if (z == NULL) {
    /* Out of memory: the channel stays allocated until the session ends
     * (libssh2_session_free frees it). */
    return;
  }
  z->ch = ch;
  z->next = s->zombies;
  s->zombies = z;
  s->progress = 1;
}

/* ---- session lifetime ---------------------------------------------------- */

static void op_unlink(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  fly_ssh_op_t **pp;
  for (pp = &s->ops; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == op) {
      *pp = op->next;
      break;
    }
  }
  op->next = NULL;
  if (s->opener == op)
    s->opener = NULL;
  if (s->sftp_owner == op)
    s->sftp_owner = NULL;
  if (s->blocked.kind == FLY_SSH_BLOCKED_OP && s->blocked.u.op == op)
    s->blocked.kind = FLY_SSH_BLOCKED_NONE;
}

static void op_finish(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  op_unlink(s, op);
  s->progress = 1;
  fly_loop_done(s->loop, &op->req);
}

/* Fail the ops of s (only those that touched the connection when
 * only_started) with code. */
static void sess_fail_ops(fly_ssh_sess_t *s, int only_started,
                          const char *code, const char *fmt, ...) {
  fly_ssh_op_t *op = s->ops, *next;
  char msg[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  for (; op != NULL; op = next) {
    next = op->next;
    if (only_started && !op->started)
      continue;
    if (op->started && op->ovt->drop(s, op) && only_started &&
        !op->retried) {
      /* It died before the server did anything for it (a drop noticed
       * late): run it on the next connection instead of failing. */
      op->started = 0;
      op->retried = 1;
      continue;
    }
    if (op->req.err.code == NULL)
      fly_err_set(&op->req.err, code, "%s", msg);
    op_finish(s, op);
  }
}

/* Tear the connection down.  Ops holding libssh2 handles must have been
 * failed (and dropped) first.  graceful: try to say goodbye. */
static void sess_close_conn(fly_ssh_sess_t *s, int graceful) {
  fly_ssh_zombie_t *z, *zn;

  if (s->ls != NULL) {
    if (graceful && s->state == S_READY &&
        s->blocked.kind == FLY_SSH_BLOCKED_NONE)
      libssh2_session_disconnect(s->ls, "closed by client");
    /* With the socket shut down every send and receive fails at once, so
     * the frees below cannot return EAGAIN. */
    if (s->fd >= 0)
      shutdown(s->fd, SHUT_RDWR);
    if (s->sftp != NULL)
      libssh2_sftp_shutdown(s->sftp);
    libssh2_session_free(s->ls);
  }
  for (z = s->zombies; z != NULL; z = zn) {
    zn = z->next;
    free(z);
  }
  if (s->fd >= 0)
    close(s->fd);
  s->zombies = NULL;
  s->ls = NULL;
  s->sftp = NULL;
  s->fd = -1;
  s->nchan = 0;
  s->chan_limit = INT_MAX;
  s->opener = NULL;
  s->blocked.kind = FLY_SSH_BLOCKED_NONE;
  s->sftp_owner = NULL;
  s->state = S_IDLE;
}

static void sess_disconnected(fly_ssh_sess_t *s, const char *why) {
  sess_fail_ops(s, 1, "SSH_DISCONNECTED", "ssh connection to %s:%d lost: %s",
                s->target.host, s->target.port, why);
  sess_close_conn(s, 0);
  s->progress = 1;
}

static void sess_free(fly_ssh_sess_t *s) {
  sess_close_conn(s, 1);
  fly_ssh_target_free(&s->target);
  free(s);
}

static fly_ssh_sess_t *sess_find(fly_ssh_state_t *st, const char *key) {
  fly_ssh_sess_t *s;
  for (s = st->sessions; s != NULL; s = s->next)
    if (strcmp(s->target.key, key) == 0)
      return s;
  return NULL;
}

static void sess_unlink(fly_ssh_state_t *st, fly_ssh_sess_t *s) {
  fly_ssh_sess_t **pp;
  for (pp = &st->sessions; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == s) {
      *pp = s->next;
      return;
    }
  }
}

void fly_ssh_op_start(fly_loop_t *loop, fly_ssh_op_t *op) {
  fly_ssh_state_t *st = state_get(loop, 1);
  fly_ssh_sess_t *s;
  fly_ssh_op_t **pp;

  if (st == NULL)
    goto nomem;
  s = sess_find(st, op->target.key);
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL)
      goto nomem;
    if (target_copy(&s->target, &op->target) != 0) {
      free(s);
      goto nomem;
    }
    s->loop = loop;
    s->fd = -1;
    s->chan_limit = INT_MAX;
    s->next = st->sessions;
    st->sessions = s;
  }
  for (pp = &s->ops; *pp != NULL; pp = &(*pp)->next)
    ;
  op->next = NULL;
  *pp = op;
  return;

nomem:
  fly_err_set(&op->req.err, "ERR_NO_MEMORY", "out of memory");
  fly_loop_done(loop, &op->req);
}

/* ---- connecting ---------------------------------------------------------- */

/* A connect attempt failed: retry until the deadline, then fail every op. */
static void sess_connect_failed(fly_ssh_sess_t *s, uint64_t now, int retry,
                                const char *code, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(s->last_connect_error, sizeof(s->last_connect_error), fmt, ap);
  va_end(ap);
  sess_close_conn(s, 0);
  if (retry && now + s->retry_delay < s->connect_deadline) {
    s->state = S_RETRY;
    s->retry_at = now + s->retry_delay;
    s->retry_delay *= 2;
    if (s->retry_delay > FLY_SSH_RETRY_MAX_MS)
      s->retry_delay = FLY_SSH_RETRY_MAX_MS;
    return;
  }
  if (retry)
    sess_fail_ops(s, 0, code, "ssh connect to %s:%d failed after %llu ms: %s",
                  s->target.host, s->target.port,
                  (unsigned long long)s->target.connect_timeout_ms,
                  s->last_connect_error);
  else
    sess_fail_ops(s, 0, code, "ssh connect to %s:%d: %s", s->target.host,
                  s->target.port, s->last_connect_error);
}

static void sess_tcp_start(fly_ssh_sess_t *s, uint64_t now) {
  struct addrinfo hints, *ai = NULL;
  char port[16];
  int rc, fd, one = 1;

  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  snprintf(port, sizeof(port), "%d", s->target.port);
  rc = getaddrinfo(s->target.host, port, &hints, &ai);
  if (rc == EAI_NONAME) {
    /* A name, not a literal: this lookup blocks the I/O thread briefly. */
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(s->target.host, port, &hints, &ai);
  }
  if (rc != 0 || ai == NULL) {
    sess_connect_failed(s, now, 1, "SSH_CONNECT_FAILED", "resolve: %s",
                        gai_strerror(rc));
    return;
  }
  fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(ai);
    sess_connect_failed(s, now, 1, "SSH_CONNECT_FAILED", "socket: %s",
                        strerror(errno));
    return;
  }
  /* Without TCP_NODELAY every small SSH exchange waits on Nagle. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  /* A peer that vanished without a FIN (a paused or lost machine) fails
   * the socket once our keepalives stay unacknowledged this long, instead
   * of after the kernel's ~15 minutes of retransmissions. */
  if (s->target.keepalive_sec > 0) {
    unsigned ms = s->target.keepalive_sec * 3000;
    if (ms < 30000)
      ms = 30000;
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
  }
  s->fd = fd;
  rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (rc != 0 && errno != EINPROGRESS) {
    sess_connect_failed(s, now, 1, "SSH_CONNECT_FAILED", "connect: %s",
                        strerror(errno));
    return;
  }
  s->state = S_CONNECTING;
}

static int sess_session_init(fly_ssh_sess_t *s) {
  s->ls = libssh2_session_init_ex(NULL, NULL, NULL, s);
  if (s->ls == NULL)
    return -1;
  libssh2_session_set_blocking(s->ls, 0);
  /* Prefer ed25519: that is the key the fingerprint is pinned to. */
  libssh2_session_method_pref(s->ls, LIBSSH2_METHOD_HOSTKEY,
                              "ssh-ed25519,ecdsa-sha2-nistp256,"
                              "ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,"
                              "rsa-sha2-512,rsa-sha2-256,ssh-rsa");
  return 0;
}

/* Fingerprints compare without the "SHA256:" prefix and base64 padding. */
static int fp_equal(const char *a, const char *b) {
  size_t la, lb;
  if (strncmp(a, "SHA256:", 7) == 0)
    a += 7;
  if (strncmp(b, "SHA256:", 7) == 0)
    b += 7;
  la = strlen(a);
  lb = strlen(b);
  while (la > 0 && a[la - 1] == '=')
    la--;
  while (lb > 0 && b[lb - 1] == '=')
    lb--;
  return la == lb && memcmp(a, b, la) == 0;
}

static int sess_check_hostkey(fly_ssh_sess_t *s, uint64_t now) {
  size_t len = 0;
  int type = 0;
  const char *blob = libssh2_session_hostkey(s->ls, &len, &type);
  char *fp;

  if (s->target.insecure)
    return 0;
  if (blob == NULL) {
    sess_connect_failed(s, now, 0, "SSH_HOSTKEY_MISMATCH",
                        "server sent no host key");
    return -1;
  }
  fp = fly_fingerprint_sha256((const unsigned char *)blob, len);
  if (fp == NULL || !fp_equal(fp, s->target.fingerprint)) {
    sess_connect_failed(s, now, 0, "SSH_HOSTKEY_MISMATCH",
                        "host key %s does not match the pinned fingerprint",
                        fp ? fp : "(unknown)");
    free(fp);
    return -1;
  }
  free(fp);
  return 0;
}

/* Start a connection for the first waiting op's target. */
static void sess_connect_begin(fly_ssh_sess_t *s, uint64_t now) {
  fly_ssh_target_t t;

  /* The newest caller's target (e.g. a new key after a restart) wins. */
  if (s->ops != NULL && target_copy(&t, &s->ops->target) == 0) {
    fly_ssh_target_free(&s->target);
    s->target = t;
  }
  s->connect_deadline = now + s->target.connect_timeout_ms;
  s->retry_delay = FLY_SSH_RETRY_MIN_MS;
  s->last_connect_error[0] = '\0';
  sess_tcp_start(s, now);
}

/* Advance a connection that is not READY yet. */
static void sess_connect_step(fly_ssh_sess_t *s, uint64_t now) {
  int rc;

  if (s->state == S_RETRY) {
    if (now < s->retry_at)
      return;
    sess_tcp_start(s, now);
  }
  if (s->state == S_CONNECTING) {
    struct pollfd p = {s->fd, POLLOUT, 0};
    int err = 0;
    socklen_t elen = sizeof(err);

    if (poll(&p, 1, 0) <= 0) {
      if (now >= s->connect_deadline)
        sess_connect_failed(s, now, 1, "SSH_CONNECT_FAILED",
                            "connect: timed out");
      return;
    }
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
      err = errno;
    if (err != 0) {
      sess_connect_failed(s, now, 1, "SSH_CONNECT_FAILED", "connect: %s",
                          strerror(err));
      return;
    }
    if (sess_session_init(s) != 0) {
      sess_connect_failed(s, now, 0, "ERR_NO_MEMORY", "out of memory");
      return;
    }
    s->state = S_HANDSHAKE;
    s->progress = 1;
  }
  if (s->state == S_HANDSHAKE) {
    rc = libssh2_session_handshake(s->ls, s->fd);
    if (rc == LIBSSH2_ERROR_EAGAIN) {
      if (now >= s->connect_deadline)
        sess_connect_failed(s, now, 1, "SSH_CONNECT_FAILED",
                            "handshake: timed out");
      return;
    }
    if (rc != 0) {
      char *msg = NULL;
      libssh2_session_last_error(s->ls, &msg, NULL, 0);
      /* An sshd that is starting may drop the connection: retry those. */
      sess_connect_failed(s, now, fly_ssh_rc_dead(s, rc),
                          "SSH_CONNECT_FAILED", "handshake: %s",
                          msg ? msg : "failed");
      return;
    }
    if (sess_check_hostkey(s, now) != 0)
      return;
    s->state = S_AUTH;
    s->progress = 1;
  }
  if (s->state == S_AUTH) {
    const fly_ssh_target_t *t = &s->target;
    if (t->private_key != NULL)
      rc = libssh2_userauth_publickey_frommemory(
          s->ls, t->user, strlen(t->user), NULL, 0, t->private_key,
          strlen(t->private_key), NULL);
    else
      rc = libssh2_userauth_password_ex(s->ls, t->user,
                                        (unsigned)strlen(t->user),
                                        t->password,
                                        (unsigned)strlen(t->password), NULL);
    if (rc == LIBSSH2_ERROR_EAGAIN) {
      if (now >= s->connect_deadline)
        sess_connect_failed(s, now, 0, "SSH_CONNECT_FAILED",
                            "authentication: timed out");
      return;
    }
    if (rc != 0) {
      char *msg = NULL;
      libssh2_session_last_error(s->ls, &msg, NULL, 0);
      if (fly_ssh_rc_dead(s, rc))
        sess_connect_failed(s, now, 0, "SSH_CONNECT_FAILED",
                            "authentication: %s", msg ? msg : "failed");
      else
        sess_connect_failed(s, now, 0, "SSH_AUTH_FAILED",
                            "authentication as %s failed (%s)", t->user,
                            rc == LIBSSH2_ERROR_FILE
                                ? "unusable private key"
                                : t->private_key ? "key refused"
                                                 : "password refused");
      return;
    }
    if (s->target.keepalive_sec > 0)
      libssh2_keepalive_config(s->ls, 0, s->target.keepalive_sec);
    s->keepalive_at = now + (uint64_t)s->target.keepalive_sec * 1000;
    s->state = S_READY;
    s->progress = 1;
    __atomic_add_fetch(&fly_ssh_connects, 1, __ATOMIC_RELAXED);
  }
}

/* ---- the READY state ----------------------------------------------------- */

/* An idle connection may have been closed by the server; POLLRDHUP shows a
 * FIN even while unread bytes sit in front of it. */
static int sess_hung_up(fly_ssh_sess_t *s) {
  struct pollfd p = {s->fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0)
    return 0;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

static int sess_busy(fly_ssh_sess_t *s) {
  fly_ssh_op_t *op;
  if (s->zombies != NULL)
    return 1;
  for (op = s->ops; op != NULL; op = op->next)
    if (op->started)
      return 1;
  return 0;
}

/* Step one zombie channel: 1 when it is gone, 0 when waiting, -1 when
 * blocked on output. */
static int zombie_step(fly_ssh_sess_t *s, fly_ssh_zombie_t *z) {
  int rc = libssh2_channel_free(z->ch);
  if (rc == LIBSSH2_ERROR_EAGAIN)
    return fly_ssh_blocked_out(s) ? -1 : 0;
  return 1;
}

static void zombie_remove(fly_ssh_sess_t *s, fly_ssh_zombie_t *z) {
  fly_ssh_zombie_t **pp;
  for (pp = &s->zombies; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == z) {
      *pp = z->next;
      break;
    }
  }
  if (s->blocked.kind == FLY_SSH_BLOCKED_ZOMBIE && s->blocked.u.zombie == z)
    s->blocked.kind = FLY_SSH_BLOCKED_NONE;
  free(z);
  fly_ssh_chan_freed(s);
}

/* Returns 0, or -1 when the session died (already handled). */
static int sess_keepalive(fly_ssh_sess_t *s, uint64_t now) {
  int secs = 0, rc;

  if (s->target.keepalive_sec == 0)
    return 0;
  if (s->blocked.kind != FLY_SSH_BLOCKED_KEEPALIVE && now < s->keepalive_at)
    return 0;
  rc = libssh2_keepalive_send(s->ls, &secs);
  if (rc == LIBSSH2_ERROR_EAGAIN) {
    if (fly_ssh_blocked_out(s))
      s->blocked.kind = FLY_SSH_BLOCKED_KEEPALIVE;
    return 0;
  }
  if (s->blocked.kind == FLY_SSH_BLOCKED_KEEPALIVE)
    s->blocked.kind = FLY_SSH_BLOCKED_NONE;
  if (rc != 0) {
    sess_disconnected(s, "keepalive failed");
    return -1;
  }
  if (secs <= 0)
    secs = (int)s->target.keepalive_sec;
  s->keepalive_at = now + (uint64_t)secs * 1000;
  return 0;
}

/* Step one op and act on its verdict.  Returns 0 to go on, 1 when the op
 * blocked on output (stop stepping others), -1 when the session died. */
static int sess_step_op(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now) {
  int r = op->ovt->step(s, op, now);
  switch (r) {
  case FLY_SSH_OUT:
    s->blocked.kind = FLY_SSH_BLOCKED_OP;
    s->blocked.u.op = op;
    return 1;
  case FLY_SSH_DONE:
    op_finish(s, op);
    return 0;
  case FLY_SSH_DEAD: {
    char *msg = NULL;
    libssh2_session_last_error(s->ls, &msg, NULL, 0);
    sess_disconnected(s, msg ? msg : "connection lost");
    return -1;
  }
  default:
    if (s->blocked.kind == FLY_SSH_BLOCKED_OP && s->blocked.u.op == op)
      s->blocked.kind = FLY_SSH_BLOCKED_NONE;
    return 0;
  }
}

static void sess_ready_step(fly_ssh_sess_t *s, uint64_t now) {
  fly_ssh_op_t *op, *next;
  fly_ssh_zombie_t *z, *zn;
  int r;

  if (!sess_busy(s) && sess_hung_up(s)) {
    sess_disconnected(s, "closed by the server");
    return;
  }
  /* A half-sent packet: only its owner may send until it is through. */
  switch (s->blocked.kind) {
  case FLY_SSH_BLOCKED_KEEPALIVE:
    if (sess_keepalive(s, now) != 0 ||
        s->blocked.kind != FLY_SSH_BLOCKED_NONE)
      return;
    break;
  case FLY_SSH_BLOCKED_ZOMBIE:
    z = s->blocked.u.zombie;
    r = zombie_step(s, z);
    if (r < 0)
      return;
    s->blocked.kind = FLY_SSH_BLOCKED_NONE;
    if (r > 0)
      zombie_remove(s, z);
    break;
  case FLY_SSH_BLOCKED_OP:
    if (sess_step_op(s, s->blocked.u.op, now) != 0)
      return;
    break;
  case FLY_SSH_BLOCKED_NONE:
    break;
  }
  for (op = s->ops; op != NULL; op = next) {
    next = op->next;
    r = sess_step_op(s, op, now);
    if (r != 0)
      return;
  }
  for (z = s->zombies; z != NULL; z = zn) {
    zn = z->next;
    r = zombie_step(s, z);
    if (r < 0) {
      s->blocked.kind = FLY_SSH_BLOCKED_ZOMBIE;
      s->blocked.u.zombie = z;
      return;
    }
    if (r > 0)
      zombie_remove(s, z);
  }
  sess_keepalive(s, now);
}

static void sess_step(fly_ssh_sess_t *s, uint64_t now) {
  if (s->state == S_IDLE) {
    if (s->ops == NULL)
      return;
    sess_connect_begin(s, now);
  }
  if (s->state != S_READY)
    sess_connect_step(s, now);
  if (s->state == S_READY)
    sess_ready_step(s, now);
  /* A failed connection with ops that never touched it: connect again. */
  if (s->state == S_IDLE && s->ops != NULL)
    s->progress = 1;
}

/* ---- loop hooks ---------------------------------------------------------- */

void fly_ssh_step(fly_loop_t *loop, uint64_t now) {
  fly_ssh_state_t *st = state_get(loop, 0);
  fly_ssh_sess_t *s;
  int again = 0;

  if (st == NULL)
    return;
  for (s = st->sessions; s != NULL; s = s->next) {
    s->progress = 0;
    sess_step(s, now);
    if (s->progress)
      again = 1;
  }
  /* Progress may have left data buffered inside libssh2, or freed a
   * channel slot: step again without waiting on a socket. */
  if (again)
    fly_loop_wake_at(loop, now);
}

int fly_ssh_fds(fly_loop_t *loop, struct curl_waitfd *fds, int max) {
  fly_ssh_state_t *st = state_get(loop, 0);
  fly_ssh_sess_t *s;
  int n = 0;

  if (st == NULL)
    return 0;
  for (s = st->sessions; s != NULL && n < max; s = s->next) {
    short ev = 0;
    if (s->fd < 0)
      continue;
    if (s->state == S_CONNECTING) {
      ev = CURL_WAIT_POLLOUT;
    } else if (s->ls != NULL) {
      int dirs = libssh2_session_block_directions(s->ls);
      if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND)
        ev |= CURL_WAIT_POLLOUT;
      ev |= CURL_WAIT_POLLIN;
      if (s->state == S_READY && s->ops == NULL && s->zombies == NULL) {
        /* Idle: bytes nobody reads (a server notice) would keep POLLIN
         * ready forever; a hang-up is then seen at the next keepalive or
         * op. */
        char c;
        if (recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0)
          ev &= ~CURL_WAIT_POLLIN;
      }
    }
    if (ev == 0)
      continue;
    fds[n].fd = s->fd;
    fds[n].events = ev;
    fds[n].revents = 0;
    n++;
  }
  return n;
}

uint64_t fly_ssh_deadline(fly_loop_t *loop) {
  fly_ssh_state_t *st = state_get(loop, 0);
  fly_ssh_sess_t *s;
  fly_ssh_op_t *op;
  uint64_t next = UINT64_MAX, d;

  if (st == NULL)
    return next;
  for (s = st->sessions; s != NULL; s = s->next) {
    switch (s->state) {
    case S_RETRY:
      d = s->retry_at;
      break;
    case S_CONNECTING:
    case S_HANDSHAKE:
    case S_AUTH:
      d = s->connect_deadline;
      break;
    case S_READY:
      d = s->target.keepalive_sec > 0 ? s->keepalive_at : UINT64_MAX;
      break;
    default:
      d = UINT64_MAX;
    }
    if (d < next)
      next = d;
    for (op = s->ops; op != NULL; op = op->next) {
      if (op->ovt->deadline != NULL && (d = op->ovt->deadline(op)) < next)
        next = d;
    }
  }
  return next;
}

void fly_ssh_shutdown(fly_loop_t *loop) {
  fly_ssh_state_t *st = state_get(loop, 0);
  fly_ssh_sess_t *s;

  if (st == NULL)
    return;
  while ((s = st->sessions) != NULL) {
    st->sessions = s->next;
    sess_fail_ops(s, 0, "FLY_ABORTED", "the client is shutting down");
    sess_free(s);
  }
  free(st);
  *fly_loop_ssh_slot(loop) = NULL;
}

/* ---- sshClose ------------------------------------------------------------ */

typedef struct fly_ssh_close_s {
  fly_req_t req;
  char *key;
} fly_ssh_close_t;

static void close_start(fly_loop_t *loop, fly_req_t *req) {
  fly_ssh_close_t *c = (fly_ssh_close_t *)req;
  fly_ssh_state_t *st = state_get(loop, 0);
  fly_ssh_sess_t *s = st ? sess_find(st, c->key) : NULL;

  if (s != NULL) {
    sess_unlink(st, s);
    sess_fail_ops(s, 0, "SSH_DISCONNECTED", "ssh session %s was closed",
                  s->target.key);
    sess_free(s);
  }
  fly_loop_done(loop, req);
}

static void close_free(napi_env env, fly_req_t *req) {
  (void)env;
  free(((fly_ssh_close_t *)req)->key);
}

static const fly_req_vt_t close_vt = {close_start, NULL, close_free};

napi_value fly_napi_ssh_close(napi_env env, napi_callback_info info) {
  napi_value opts;
  fly_ssh_close_t *c;

  if (fly_js_arg_obj(env, info, 0, &opts) != 0)
    return NULL;
  c = fly_req_new(env, sizeof(*c), &close_vt);
  if (c == NULL)
    return NULL;
  if (fly_js_prop_str(env, opts, "key", 1, &c->key) != 0) {
    fly_req_free(env, &c->req);
    return NULL;
  }
  return fly_req_submit(env, &c->req);
}

napi_value fly_napi_ssh_stats(napi_env env, napi_callback_info info) {
  napi_value obj;
  (void)info;
  FLY_NAPI_CALL(env, napi_create_object(env, &obj), NULL);
  fly_js_set_double(env, obj, "connects",
                    (double)__atomic_load_n(&fly_ssh_connects,
                                            __ATOMIC_RELAXED));
  return obj;
}
