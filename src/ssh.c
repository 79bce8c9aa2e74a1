/* ssh.c: the libssh2 session manager of the I/O thread.
 *
 * A session belongs to one handle of sshOpen (found by the handle's target
 * itself, so no two handles share one).  Each session is a non-blocking
 * state machine: TCP connect (refusals retried, 10 ms apart doubling to
 * 100 ms, until the connect timeout), SSH handshake, host key pin check
 * (before anything is sent under the user's name), authentication, then
 * READY, where its operations (exec.c, sftp.c) are stepped every loop
 * turn.  A lost connection fails the operations that had touched it with
 * SSH_DISCONNECTED and the next operation reconnects.  Every operation has
 * a deadline (sess_expire_ops); keepalives want a reply (sess_keepalive).
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
  S_EDGE,        /* connecting through the edge (edge.c) */
  S_CONNECTING,  /* TCP connect in progress */
  S_HANDSHAKE,
  S_AUTH,
  S_READY
};

/* A starting sshd is usually up within tens of ms: retry soon, then back
 * off so a machine that never answers is not hammered. */
#define FLY_SSH_RETRY_MIN_MS 10
#define FLY_SSH_RETRY_MAX_MS 100
/* A channel refused while none of ours is open: the server has not yet
 * released one we closed.  Retried this often, within the op's deadline. */
#define FLY_SSH_CHAN_RETRY_MIN_MS 20
#define FLY_SSH_CHAN_RETRY_MAX_MS 500
/* Defaults of the target's opTimeoutMs and idleTimeoutMs. */
#define FLY_SSH_OP_TIMEOUT_MS 60000
#define FLY_SSH_IDLE_TIMEOUT_MS 300000
/* Where the sandbox image installs docker/flyexec.c. */
#define FLY_SSH_EXECUTOR_PATH "/usr/local/libexec/computesdk/flyexec"
/* Keepalives unanswered for this many intervals: the peer is gone. */
#define FLY_SSH_KEEPALIVE_MISSES 4

typedef struct fly_ssh_state_s {
  fly_ssh_sess_t *sessions;
} fly_ssh_state_t;

/* sshStats: connections made by this process (all instances), and
 * sessions that exist now. */
static uint64_t fly_ssh_connects;
static uint64_t fly_ssh_sessions;

/* The cipher the last handshake negotiated (client to server): a name in
 * libssh2's static method table, or NULL before the first one. */
static const char *fly_ssh_last_cipher;

static fly_ssh_state_t *state_get(fly_loop_t *loop, int create) {
  void **slot = fly_loop_ssh_slot(loop);
  if (*slot == NULL && create)
    *slot = calloc(1, sizeof(fly_ssh_state_t));
  return *slot;
}

/* ---- targets ------------------------------------------------------------- */

void fly_ssh_target_unref(fly_ssh_target_t *t) {
  if (t == NULL || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0)
    return;
  free(t->host);
  free(t->user);
  fly_secret_free(t->private_key); /* no key material left in freed heap */
  fly_secret_free(t->password);
  free(t->fingerprint);
  free(t->executor);
  free(t->edge_host);
  free(t->edge_authority);
  free(t->edge_instance);
  fly_secret_free(t->edge_token);
  free(t->edge_ca);
  free(t->edge_path);
  free(t);
}

static fly_ssh_target_t *target_ref(fly_ssh_target_t *t) {
  __atomic_add_fetch(&t->refs, 1, __ATOMIC_ACQ_REL);
  return t;
}

/* JS thread: target.edge ({ host, port, authority, instance, token, ca?,
 * path? }), when present: the connection goes through Fly's edge
 * (edge.c).  0, or -1 with an exception pending. */
static int target_parse_edge(napi_env env, napi_value tv,
                             fly_ssh_target_t *t) {
  napi_value ev;
  napi_valuetype vt = napi_undefined;
  bool has = false;
  uint64_t port;

  FLY_NAPI_CALL(env, napi_has_named_property(env, tv, "edge", &has), -1);
  if (!has)
    return 0;
  FLY_NAPI_CALL(env, napi_get_named_property(env, tv, "edge", &ev), -1);
  FLY_NAPI_CALL(env, napi_typeof(env, ev, &vt), -1);
  if (vt == napi_undefined || vt == napi_null)
    return 0;
  if (vt != napi_object) {
    fly_throw_invalid(env, "target.edge must be an object");
    return -1;
  }
  if (fly_js_prop_str(env, ev, "host", 1, &t->edge_host) != 0 ||
      fly_js_prop_u64(env, ev, "port", 443, &port) != 0 ||
      fly_js_prop_str(env, ev, "authority", 1, &t->edge_authority) != 0 ||
      fly_js_prop_str(env, ev, "instance", 1, &t->edge_instance) != 0 ||
      fly_js_prop_str(env, ev, "token", 1, &t->edge_token) != 0 ||
      fly_js_prop_str(env, ev, "ca", 0, &t->edge_ca) != 0 ||
      fly_js_prop_str(env, ev, "path", 0, &t->edge_path) != 0)
    return -1;
  if (port == 0 || port > 65535) {
    fly_throw_invalid(env, "target.edge.port must be 1..65535");
    return -1;
  }
  t->edge_port = (int)port;
  if (t->edge_path == NULL && (t->edge_path = strdup("/.computesdk/ssh")) == NULL) {
    fly_throw_nomem(env);
    return -1;
  }
  /* they go into a request line and headers: no control characters */
  {
    const char *fields[] = {t->edge_host, t->edge_authority, t->edge_instance,
                            t->edge_token, t->edge_path};
    size_t i;
    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
      const unsigned char *c = (const unsigned char *)fields[i];
      if (*c == '\0') {
        fly_throw_invalid(env, "target.edge fields must not be empty");
        return -1;
      }
      for (; *c; c++) {
        if (*c <= ' ' || *c == 0x7f) {
          fly_throw_invalid(env, "target.edge fields must not hold spaces or "
                                 "control characters");
          return -1;
        }
      }
    }
    if (t->edge_path[0] != '/') {
      fly_throw_invalid(env, "target.edge.path must start with /");
      return -1;
    }
  }
  return 0;
}

/* JS thread: a target object -> a new target (refs 1), or NULL with an
 * exception pending. */
static fly_ssh_target_t *target_parse(napi_env env, napi_value tv) {
  fly_ssh_target_t *t = calloc(1, sizeof(*t));
  uint64_t port, keepalive;

  if (t == NULL) {
    fly_throw_nomem(env);
    return NULL;
  }
  t->refs = 1;
  if (fly_js_prop_str(env, tv, "host", 1, &t->host) != 0 ||
      fly_js_prop_u64(env, tv, "port", 22, &port) != 0 ||
      fly_js_prop_str(env, tv, "user", 1, &t->user) != 0 ||
      fly_js_prop_str(env, tv, "privateKey", 0, &t->private_key) != 0 ||
      fly_js_prop_str(env, tv, "password", 0, &t->password) != 0 ||
      fly_js_prop_str(env, tv, "hostKeyFingerprint", 0, &t->fingerprint) !=
          0 ||
      fly_js_prop_bool(env, tv, "insecureSkipHostKeyCheck", 0, &t->insecure) != 0 ||
      fly_js_prop_u64(env, tv, "connectTimeoutMs", 15000,
                      &t->connect_timeout_ms) != 0 ||
      fly_js_prop_u64(env, tv, "opTimeoutMs", FLY_SSH_OP_TIMEOUT_MS,
                      &t->op_timeout_ms) != 0 ||
      fly_js_prop_u64(env, tv, "idleTimeoutMs", FLY_SSH_IDLE_TIMEOUT_MS,
                      &t->idle_timeout_ms) != 0 ||
      fly_js_prop_u64(env, tv, "keepaliveSec", 15, &keepalive) != 0)
    goto fail;
  if (port == 0 || port > 65535) {
    fly_throw_invalid(env, "target.port must be 1..65535");
    goto fail;
  }
  /* executor: the sandbox's command executor's path (docker/flyexec.c),
   * false for none (a channel per command). */
  {
    napi_value v;
    napi_valuetype vt = napi_undefined;
    bool has = false;
    FLY_NAPI_CALL(env, napi_has_named_property(env, tv, "executor", &has),
                  (fly_ssh_target_unref(t), NULL));
    if (has) {
      FLY_NAPI_CALL(env, napi_get_named_property(env, tv, "executor", &v),
                    (fly_ssh_target_unref(t), NULL));
      FLY_NAPI_CALL(env, napi_typeof(env, v, &vt),
                    (fly_ssh_target_unref(t), NULL));
    }
    if (vt == napi_boolean) {
      bool on = true;
      FLY_NAPI_CALL(env, napi_get_value_bool(env, v, &on),
                    (fly_ssh_target_unref(t), NULL));
      if (on) {
        fly_throw_invalid(env, "target.executor must be a path or false");
        goto fail;
      }
    } else if (fly_js_prop_str(env, tv, "executor", 0, &t->executor) != 0) {
      goto fail;
    } else if (t->executor == NULL &&
               (t->executor = strdup(FLY_SSH_EXECUTOR_PATH)) == NULL) {
      fly_throw_nomem(env);
      goto fail;
    }
    if (t->executor != NULL && t->executor[0] != '/') {
      fly_throw_invalid(env, "target.executor must be an absolute path");
      goto fail;
    }
  }
  if (target_parse_edge(env, tv, t) != 0)
    goto fail;
  t->port = (int)port;
  t->keepalive_sec = keepalive > 86400 ? 86400 : (unsigned)keepalive;
  if (t->op_timeout_ms == 0)
    t->op_timeout_ms = FLY_SSH_OP_TIMEOUT_MS;
  if ((t->private_key == NULL) == (t->password == NULL)) {
    fly_throw_invalid(env,
                      "exactly one of target.privateKey and target.password "
                      "is required");
    goto fail;
  }
  if (t->fingerprint == NULL && !t->insecure) {
    fly_throw_invalid(env, "target.hostKeyFingerprint is required unless "
                           "target.insecureSkipHostKeyCheck is true");
    goto fail;
  }
  if (t->host[0] == '\0' || t->user[0] == '\0') {
    fly_throw_invalid(env, "target.host and target.user must not be empty");
    goto fail;
  }
  return t;

fail:
  fly_ssh_target_unref(t);
  return NULL;
}

/* ---- handles (sshOpen) ----------------------------------------------------- */

/* The external the JS side holds.  JS thread only. */
typedef struct fly_ssh_handle_s {
  fly_ssh_target_t *target;    /* our reference */
  int closed;                  /* sshClose was called */
} fly_ssh_handle_t;

static const napi_type_tag handle_tag = {0x666c795f73736831ULL,
                                         0x68616e646c650001ULL};

static int close_submit(napi_env env, fly_ssh_target_t *t,
                        napi_value *promise);

/* GC: the handle is unreachable, so no op of it is in flight (each holds a
 * reference to it); close its session on the I/O thread, which also frees
 * libssh2 there. */
static void handle_finalize(napi_env env, void *data, void *hint) {
  fly_ssh_handle_t *h = data;
  (void)hint;
  if (!h->closed)
    close_submit(env, target_ref(h->target), NULL);
  fly_ssh_target_unref(h->target);
  free(h);
}

/* sshOpen(target) -> handle (sync; no connection yet) */
napi_value fly_napi_ssh_open(napi_env env, napi_callback_info info) {
  napi_value tv, ext;
  fly_ssh_handle_t *h;

  if (fly_js_arg_obj(env, info, 0, &tv) != 0)
    return NULL;
  h = calloc(1, sizeof(*h));
  if (h == NULL) {
    fly_throw_nomem(env);
    return NULL;
  }
  h->target = target_parse(env, tv);
  if (h->target == NULL) {
    free(h);
    return NULL;
  }
  if (napi_create_external(env, h, handle_finalize, NULL, &ext) != napi_ok) {
    fly_ssh_target_unref(h->target);
    free(h);
    fly_napi_throw_last(env);
    return NULL;
  }
  /* From here the finalizer owns h. */
  FLY_NAPI_CALL(env, napi_type_tag_object(env, ext, &handle_tag), NULL);
  return ext;
}

/* v -> the handle, or NULL with ERR_INVALID_ARG pending (naming what v
 * was). */
static fly_ssh_handle_t *handle_get(napi_env env, napi_value v,
                                    const char *what) {
  napi_valuetype t;
  bool ok = false;
  void *h = NULL;

  FLY_NAPI_CALL(env, napi_typeof(env, v, &t), NULL);
  if (t == napi_external)
    FLY_NAPI_CALL(env, napi_check_object_type_tag(env, v, &handle_tag, &ok),
                  NULL);
  if (!ok) {
    fly_throw_invalid(env, "%s must be a handle from sshOpen", what);
    return NULL;
  }
  FLY_NAPI_CALL(env, napi_get_value_external(env, v, &h), NULL);
  return h;
}

static void throw_closed(napi_env env) {
  /* Nothing else to do if even the throw fails. */
  (void)napi_throw_error(env, "SSH_SESSION_CLOSED",
                         "the ssh session handle was closed");
}

int fly_ssh_op_init(napi_env env, napi_value opts, fly_ssh_op_t *op) {
  napi_value v;
  bool has = false;
  fly_ssh_handle_t *h;

  op->asked_at = fly_now_ms();
  /* A target per call was the old form; say what replaced it. */
  FLY_NAPI_CALL(env, napi_has_named_property(env, opts, "target", &has), -1);
  if (has) {
    fly_throw_invalid(env, "target is not accepted here: use sshOpen(target) "
                           "and pass its handle as session");
    return -1;
  }
  FLY_NAPI_CALL(env, napi_has_named_property(env, opts, "session", &has), -1);
  if (!has) {
    fly_throw_invalid(env, "session (a handle of sshOpen) is required");
    return -1;
  }
  FLY_NAPI_CALL(env, napi_get_named_property(env, opts, "session", &v), -1);
  if ((h = handle_get(env, v, "session")) == NULL)
    return -1;
  if (h->closed) {
    throw_closed(env);
    return -1;
  }
  FLY_NAPI_CALL(env, napi_create_reference(env, v, 1, &op->handle), -1);
  op->target = target_ref(h->target);
  return 0;
}

void fly_ssh_op_free(napi_env env, fly_ssh_op_t *op) {
  /* Without env the environment is going away and frees references. */
  if (env != NULL && op->handle != NULL)
    (void)napi_delete_reference(env, op->handle); /* freeing anyway */
  op->handle = NULL;
  fly_ssh_target_unref(op->target);
  op->target = NULL;
}

uint64_t fly_ssh_op_budget(const fly_ssh_op_t *op) {
  return op->timeout_ms > 0 ? op->timeout_ms : op->target->op_timeout_ms;
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
  if (s->opener == op)
    return 1;
  if (s->opener != NULL || s->nchan >= s->chan_limit ||
      now < s->chan_retry_at)
    return 0;
  s->opener = op;
  op->started = 1;
  return 1;
}

int fly_ssh_chan_failed(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now,
                        const char *what) {
  int rc = libssh2_session_last_errno(s->ls);

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
  if (rc == LIBSSH2_ERROR_CHANNEL_FAILURE) {
    /* None of ours is open, yet refused: the server has not released a
     * channel we closed a moment ago.  Again after a backoff; the op's
     * deadline bounds the retries. */
    s->chan_retry_delay = s->chan_retry_delay == 0
                              ? FLY_SSH_CHAN_RETRY_MIN_MS
                              : s->chan_retry_delay * 2;
    if (s->chan_retry_delay > FLY_SSH_CHAN_RETRY_MAX_MS)
      s->chan_retry_delay = FLY_SSH_CHAN_RETRY_MAX_MS;
    s->chan_retry_at = now + s->chan_retry_delay;
    return FLY_SSH_WAIT;
  }
  fly_ssh_err_last(s, &op->req.err, "SSH_CHANNEL_FAILED", what);
  return FLY_SSH_DONE;
}

void fly_ssh_chan_opened(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  if (s->opener == op)
    s->opener = NULL;
  s->chan_retry_at = 0;
  s->chan_retry_delay = 0;
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
  if (s->batch_owner == op)
    s->batch_owner = NULL;
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
    if (op->req.err.code == NULL) {
      fly_err_set(&op->req.err, code, "%s", msg);
      op->req.err.status = s->fail_status;
    }
    op_finish(s, op);
  }
  s->fail_status = 0;
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
  fly_edge_free(s->edge);
  s->edge = NULL;
  s->zombies = NULL;
  fly_exr_reset(s);
  fly_batch_chan_reset(s);
  s->ls = NULL;
  s->sftp = NULL;
  s->fd = -1;
  s->nchan = 0;
  s->chan_limit = INT_MAX;
  s->chan_retry_at = 0;
  s->chan_retry_delay = 0;
  s->opener = NULL;
  s->blocked.kind = FLY_SSH_BLOCKED_NONE;
  s->sftp_owner = NULL;
  s->batch_owner = NULL;
  s->state = S_IDLE;
}

static void sess_disconnected(fly_ssh_sess_t *s, const char *why) {
  sess_fail_ops(s, 1, "SSH_DISCONNECTED", "ssh connection to %s:%d lost: %s",
                s->target->host, s->target->port, why);
  sess_close_conn(s, 0);
  s->progress = 1;
}

static void sess_free(fly_ssh_sess_t *s) {
  __atomic_sub_fetch(&fly_ssh_sessions, 1, __ATOMIC_RELAXED);
  sess_close_conn(s, 1);
  fly_exr_free(s);
  fly_batch_chan_free(s);
  fly_ssh_target_unref(s->target);
  free(s);
}

/* A handle's session is its own: found by the handle's target itself (the
 * pointer, not its fields), so that no other handle, even one opened with
 * the same fields, ever shares it.  The session's reference keeps the
 * pointer from being reused while the session exists. */
static fly_ssh_sess_t *sess_find(fly_ssh_state_t *st,
                                 const fly_ssh_target_t *t) {
  fly_ssh_sess_t *s;
  for (s = st->sessions; s != NULL; s = s->next) {
    if (s->target == t)
      return s;
  }
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
  s = sess_find(st, op->target);
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL)
      goto nomem;
    __atomic_add_fetch(&fly_ssh_sessions, 1, __ATOMIC_RELAXED);
    s->target = target_ref(op->target);
    s->loop = loop;
    s->fd = -1;
    s->chan_limit = INT_MAX;
    s->next = st->sessions;
    st->sessions = s;
  }
  /* The deadline counts from when JS asked and bounds everything the call
   * does, (re)connecting included: an op that has to wait for a connection
   * fails at its own deadline even while connect attempts go on (they stop
   * at the connect timeout). */
  op->deadline = op->asked_at + fly_ssh_op_budget(op);
  for (pp = &s->ops; *pp != NULL; pp = &(*pp)->next)
    ;
  op->next = NULL;
  *pp = op;
  s->progress = 1;
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
                  s->target->host, s->target->port,
                  (unsigned long long)s->target->connect_timeout_ms,
                  s->last_connect_error);
  else
    sess_fail_ops(s, 0, code, "ssh connect to %s:%d: %s", s->target->host,
                  s->target->port, s->last_connect_error);
}

static void sess_tcp_start(fly_ssh_sess_t *s, uint64_t now) {
  struct addrinfo hints, *ai = NULL;
  char port[16];
  int rc, fd, one = 1;

  s->fail_status = 0;
  if (s->target->edge_host != NULL) {
    /* libssh2 gets one end of a socketpair; edge.c carries the rest */
    s->edge = fly_edge_new(s->target, &fd);
    if (s->edge == NULL) {
      sess_connect_failed(s, now, 0, "ERR_NO_MEMORY", "out of memory");
      return;
    }
    s->fd = fd;
    s->state = S_EDGE;
    s->progress = 1;
    return;
  }

  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  snprintf(port, sizeof(port), "%d", s->target->port);
  rc = getaddrinfo(s->target->host, port, &hints, &ai);
  if (rc == EAI_NONAME) {
    /* A name, not a literal: this lookup blocks the I/O thread briefly. */
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(s->target->host, port, &hints, &ai);
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
  if (s->target->keepalive_sec > 0) {
    unsigned ms = s->target->keepalive_sec * 3000;
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

/* libssh2's own recv, plus the time of the last byte from the server: the
 * keepalive check below needs to know whether the peer still answers.
 *
 * While the connection is new (authenticating, and its first second after
 * that) every byte is acknowledged at once: TCP_QUICKACK, which the kernel
 * clears again by itself, hence before each recv.  OpenSSH's sshd leaves
 * Nagle on until a session asks for it, and right after authentication it
 * writes two messages in a row (hostkeys-00 and the like), then the reply
 * to the first channel open: that reply waits for the ACK of the message
 * before it, which a client with nothing to send delays by up to 40 ms
 * (seen on fly-local with strace on both ends: a 40 ms gap between the
 * server's write of the channel-open confirmation and its arrival).  Later
 * the client usually has a reply to carry its ACKs, and quick ACKs for bulk
 * data would only add packets. */
#define FLY_SSH_QUICKACK_MS 1000
static ssize_t sess_recv(libssh2_socket_t fd, void *buf, size_t len,
                         int flags, void **abstract) {
  fly_ssh_sess_t *s = *abstract;
  ssize_t n;

#ifdef TCP_QUICKACK
  if (s->edge == NULL &&
      (s->state < S_READY || fly_now_ms() - s->ready_at < FLY_SSH_QUICKACK_MS)) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
  }
#endif
  n = recv(fd, buf, len, flags);

  if (n < 0)
    return -errno;
  if (n > 0) {
    s->last_rx = fly_now_ms();
    s->ka_unanswered_at = 0;
  }
  return n;
}

/* Prefer ed25519: that is the key the fingerprint is pinned to.  Only
 * methods this libssh2 supports are named: 1.10 drops an unsupported one
 * with an overlapping memcpy (undefined behaviour). */
static void sess_hostkey_pref(LIBSSH2_SESSION *ls) {
  static const char *const want[] = {
      "ssh-ed25519",        "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
      "ecdsa-sha2-nistp521", "rsa-sha2-512",       "rsa-sha2-256",
      "ssh-rsa"};
  const char **algs = NULL;
  char pref[256];
  size_t len = 0, i;
  int n = libssh2_session_supported_algs(ls, LIBSSH2_METHOD_HOSTKEY, &algs);
  int j;

  pref[0] = '\0';
  for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
    for (j = 0; j < n; j++) {
      if (strcmp(algs[j], want[i]) == 0 &&
          len + strlen(want[i]) + 2 < sizeof(pref)) {
        len += (size_t)snprintf(pref + len, sizeof(pref) - len, "%s%s",
                                len > 0 ? "," : "", want[i]);
        break;
      }
    }
  }
  if (n > 0)
    libssh2_free(ls, algs);
  /* Without a list libssh2 keeps its own order (still pinned). */
  if (len > 0)
    libssh2_session_method_pref(ls, LIBSSH2_METHOD_HOSTKEY, pref);
}

/* libssh2 >= 1.11 has AEAD ciphers (AES-GCM; chacha20-poly1305 from
 * 1.11.1) but keeps offering the CTR ones first: put the AEAD ones that this
 * build supports first, the rest after them in libssh2's order, so a server
 * without them still connects.  AES-GCM runs on AES-NI and needs no separate
 * MAC pass, which is what bounds SFTP throughput (bench/RESULTS.md).  Older
 * libssh2: its own order. */
static void sess_cipher_pref(LIBSSH2_SESSION *ls) {
#if LIBSSH2_VERSION_NUM >= 0x010b00
  static const char *const aead[] = {"aes128-gcm@openssh.com",
                                     "aes256-gcm@openssh.com",
                                     "chacha20-poly1305@openssh.com"};
  static const int dirs[] = {LIBSSH2_METHOD_CRYPT_CS, LIBSSH2_METHOD_CRYPT_SC};
  const char **algs = NULL;
  char pref[512];
  size_t len, i, d;
  int n, j, found;

  n = libssh2_session_supported_algs(ls, LIBSSH2_METHOD_CRYPT_CS, &algs);
  if (n <= 0)
    return;
  pref[0] = '\0';
  len = 0;
  found = 0;
  /* the AEAD ones in aead[]'s order (pass 0: AES-GCM before
   * chacha20-poly1305, which 1.11.1 lists first and which has no AES-NI),
   * then every other one in libssh2's (pass 1) */
  for (d = 0; d < 2; d++) {
    for (i = 0; i < (d == 0 ? sizeof(aead) / sizeof(aead[0]) : 1); i++) {
      for (j = 0; j < n; j++) {
        size_t k;
        int is_aead = 0;
        for (k = 0; k < sizeof(aead) / sizeof(aead[0]); k++)
          is_aead |= strcmp(algs[j], aead[k]) == 0;
        if (d == 0 ? strcmp(algs[j], aead[i]) != 0 : is_aead)
          continue;
        if (len + strlen(algs[j]) + 2 >= sizeof(pref))
          continue;
        len += (size_t)snprintf(pref + len, sizeof(pref) - len, "%s%s",
                                len > 0 ? "," : "", algs[j]);
        found += is_aead;
      }
    }
  }
  libssh2_free(ls, algs);
  if (found > 0)
    for (d = 0; d < sizeof(dirs) / sizeof(dirs[0]); d++)
      libssh2_session_method_pref(ls, dirs[d], pref);
#else
  (void)ls;
#endif
}

static int sess_session_init(fly_ssh_sess_t *s) {
  s->ls = libssh2_session_init_ex(NULL, NULL, NULL, s);
  if (s->ls == NULL)
    return -1;
  libssh2_session_callback_set(s->ls, LIBSSH2_CALLBACK_RECV,
                               (void *)sess_recv);
  libssh2_session_set_blocking(s->ls, 0);
  sess_hostkey_pref(s->ls);
  sess_cipher_pref(s->ls);
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

  if (s->target->insecure)
    return 0;
  if (blob == NULL) {
    sess_connect_failed(s, now, 0, "SSH_HOSTKEY_MISMATCH",
                        "server sent no host key");
    return -1;
  }
  fp = fly_fingerprint_sha256((const unsigned char *)blob, len);
  if (fp == NULL || !fp_equal(fp, s->target->fingerprint)) {
    sess_connect_failed(s, now, 0, "SSH_HOSTKEY_MISMATCH",
                        "host key %s does not match the pinned fingerprint",
                        fp ? fp : "(unknown)");
    free(fp);
    return -1;
  }
  free(fp);
  return 0;
}

/* Start a connection for the ops waiting on the session.  The target never
 * changes: new credentials are a new handle, so a new session. */
static void sess_connect_begin(fly_ssh_sess_t *s, uint64_t now) {
  s->connect_deadline = now + s->target->connect_timeout_ms;
  s->retry_delay = FLY_SSH_RETRY_MIN_MS;
  s->last_connect_error[0] = '\0';
  s->refused_status = 0;
  sess_tcp_start(s, now);
}

/* The socket is connected (TCP, or the edge's WebSocket is open): a
 * libssh2 session on it.  0, or -1 when that failed (handled). */
static int sess_to_handshake(fly_ssh_sess_t *s, uint64_t now) {
  if (sess_session_init(s) != 0) {
    sess_connect_failed(s, now, 0, "ERR_NO_MEMORY", "out of memory");
    return -1;
  }
  s->state = S_HANDSHAKE;
  s->progress = 1;
  return 0;
}

/* Advance a connection that is not READY yet. */
static void sess_connect_step(fly_ssh_sess_t *s, uint64_t now) {
  int rc;

  if (s->state == S_RETRY) {
    if (now < s->retry_at)
      return;
    sess_tcp_start(s, now);
  }
  if (s->state == S_EDGE) {
    const char *code, *msg;
    int status, retry;
    fly_edge_step(s->edge);
    if (fly_edge_failed(s->edge, &code, &msg, &status, &retry)) {
      s->fail_status = status;
      if (retry && strcmp(code, "FLY_EDGE_REFUSED") == 0)
        s->refused_status = status;
      sess_connect_failed(s, now, retry, code, "%s", msg);
      return;
    }
    if (!fly_edge_open(s->edge)) {
      if (now < s->connect_deadline)
        return;
      /* out of time during an attempt after the edge had refused for want
       * of a ready machine: that is the reason to give */
      if (s->refused_status != 0) {
        s->fail_status = s->refused_status;
        sess_connect_failed(s, now, 0, "FLY_EDGE_REFUSED",
                            "edge refused the upgrade: HTTP %d until the "
                            "connect deadline",
                            s->refused_status);
      } else {
        sess_connect_failed(s, now, 1, "SSH_CONNECT_FAILED",
                            "edge: timed out");
      }
      return;
    }
    if (sess_to_handshake(s, now) != 0)
      return;
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
    if (sess_to_handshake(s, now) != 0)
      return;
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
    __atomic_store_n(&fly_ssh_last_cipher,
                     libssh2_session_methods(s->ls, LIBSSH2_METHOD_CRYPT_CS),
                     __ATOMIC_RELAXED);
    if (sess_check_hostkey(s, now) != 0)
      return;
    s->state = S_AUTH;
    s->progress = 1;
  }
  if (s->state == S_AUTH) {
    const fly_ssh_target_t *t = s->target;
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
    /* want_reply: the server answers each keepalive, so silence means the
     * peer is gone (sess_keepalive). */
    if (s->target->keepalive_sec > 0)
      libssh2_keepalive_config(s->ls, 1, s->target->keepalive_sec);
    s->keepalive_at = now + (uint64_t)s->target->keepalive_sec * 1000;
    s->last_rx = now;
    s->ka_unanswered_at = 0;
    s->idle_since = 0;
    s->state = S_READY;
    s->ready_at = now;
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

  if (s->target->keepalive_sec == 0)
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
  /* libssh2 sent one when a whole interval is left until the next. */
  if (secs <= 0 || (unsigned)secs >= s->target->keepalive_sec) {
    secs = (int)s->target->keepalive_sec;
    if (s->ka_unanswered_at == 0)
      s->ka_unanswered_at = now;
  }
  s->keepalive_at = now + (uint64_t)secs * 1000;
  /* Only a busy session reads what arrives (an idle one leaves replies in
   * the socket), so only a busy one can tell silence from an idle peer.  A
   * stopped or vanished server answers nothing. */
  if (s->ka_unanswered_at != 0 && sess_busy(s) &&
      now - s->ka_unanswered_at >=
          (uint64_t)FLY_SSH_KEEPALIVE_MISSES * s->target->keepalive_sec * 1000) {
    sess_disconnected(s, "the server stopped answering keepalives");
    return -1;
  }
  return 0;
}

/* Ops whose deadline passed settle now, in any state of the session.
 * Returns -1 when the connection was torn down for one of them. */
static int sess_expire_ops(fly_ssh_sess_t *s, uint64_t now) {
  fly_ssh_op_t *op, *next;

  for (op = s->ops; op != NULL; op = next) {
    next = op->next;
    if (now < op->deadline)
      continue;
    /* The opener, or the owner of a half-sent packet, cannot step aside:
     * libssh2 wants that same call repeated. */
    if (op->started && s->opener != op &&
        !(s->blocked.kind == FLY_SSH_BLOCKED_OP && s->blocked.u.op == op) &&
        op->ovt->expire(s, op) == FLY_SSH_DONE) {
      op_finish(s, op);
      continue;
    }
    fly_err_set(&op->req.err, "SSH_TIMEOUT",
                "ssh %s to %s:%d: no answer within %llu ms",
                op->started ? "operation" : "connection", s->target->host,
                s->target->port,
                (unsigned long long)(now - op->asked_at));
    if (!op->started) {
      op_finish(s, op);
      continue;
    }
    /* Stuck inside a libssh2 exchange: nothing else can use the session
     * until it ends, and it will not. */
    op->ovt->drop(s, op);
    op_finish(s, op);
    sess_disconnected(s, "an operation timed out");
    return -1;
  }
  return 0;
}

/* A connection nobody used for idleTimeoutMs is closed; the next op opens
 * a new one. */
static void sess_idle_check(fly_ssh_sess_t *s, uint64_t now) {
  if (s->ops != NULL || s->zombies != NULL ||
      s->blocked.kind != FLY_SSH_BLOCKED_NONE) {
    s->idle_since = 0;
    return;
  }
  if (s->idle_since == 0)
    s->idle_since = now;
  if (s->target->idle_timeout_ms > 0 &&
      now - s->idle_since >= s->target->idle_timeout_ms) {
    sess_close_conn(s, 1);
    s->idle_since = 0;
  }
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

/* Step the executor channel.  Returns 0 to go on, 1 when it blocked on
 * output, -1 when the session died. */
static int sess_step_exr(fly_ssh_sess_t *s, uint64_t now) {
  int r = fly_exr_step(s, now);
  if (r == FLY_SSH_OUT) {
    s->blocked.kind = FLY_SSH_BLOCKED_EXECUTOR;
    return 1;
  }
  if (s->blocked.kind == FLY_SSH_BLOCKED_EXECUTOR)
    s->blocked.kind = FLY_SSH_BLOCKED_NONE;
  if (r == FLY_SSH_DEAD) {
    char *msg = NULL;
    libssh2_session_last_error(s->ls, &msg, NULL, 0);
    sess_disconnected(s, msg ? msg : "connection lost");
    return -1;
  }
  return 0;
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
  case FLY_SSH_BLOCKED_EXECUTOR:
    if (sess_step_exr(s, now) != 0)
      return;
    break;
  case FLY_SSH_BLOCKED_NONE:
    break;
  }
  /* The executor first: frames it reads settle its commands' ops below. */
  if (sess_step_exr(s, now) != 0)
    return;
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
  if (sess_keepalive(s, now) != 0)
    return;
  sess_idle_check(s, now);
}

/* The edge's bytes, once libssh2 runs on it: 0, or -1 when the edge failed
 * (the session's ops failed with its error, the connection closed). */
static int sess_edge_pump(fly_ssh_sess_t *s, uint64_t now) {
  const char *code, *msg;
  int status, retry;

  if (s->edge == NULL || s->state < S_HANDSHAKE)
    return 0;
  if (fly_edge_step(s->edge))
    s->progress = 1;
  if (!fly_edge_failed(s->edge, &code, &msg, &status, &retry))
    return 0;
  s->fail_status = status;
  if (s->state != S_READY) {
    sess_connect_failed(s, now, 0, code, "%s", msg);
  } else {
    sess_fail_ops(s, 1, code, "ssh connection to %s:%d lost: %s",
                  s->target->host, s->target->port, msg);
    sess_close_conn(s, 0);
    s->progress = 1;
  }
  return -1;
}

static void sess_step(fly_ssh_sess_t *s, uint64_t now) {
  sess_expire_ops(s, now);
  if (s->state == S_IDLE) {
    if (s->ops == NULL)
      return;
    sess_connect_begin(s, now);
  }
  if (sess_edge_pump(s, now) != 0)
    return;
  if (s->state != S_READY)
    sess_connect_step(s, now);
  if (s->state == S_READY)
    sess_ready_step(s, now);
  /* what libssh2 wrote goes out now */
  sess_edge_pump(s, now);
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
  for (s = st->sessions; s != NULL; s = s->next) {
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
    if (s->edge != NULL)
      n += fly_edge_fds(s->edge, n < max ? fds + n : NULL,
                        n < max ? max - n : 0);
    if (ev == 0 || s->state == S_EDGE)
      continue;
    if (n < max) {
      fds[n].fd = s->fd;
      fds[n].events = ev;
      fds[n].revents = 0;
    }
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
    case S_EDGE:
    case S_CONNECTING:
    case S_HANDSHAKE:
    case S_AUTH:
      d = s->connect_deadline;
      if (s->edge != NULL && fly_edge_deadline(s->edge, fly_now_ms()) < d)
        d = fly_edge_deadline(s->edge, fly_now_ms());
      break;
    case S_READY:
      d = s->target->keepalive_sec > 0 ? s->keepalive_at : UINT64_MAX;
      if (s->idle_since != 0 && s->target->idle_timeout_ms > 0 &&
          s->idle_since + s->target->idle_timeout_ms < d)
        d = s->idle_since + s->target->idle_timeout_ms;
      if (s->chan_retry_at != 0 && s->chan_retry_at < d)
        d = s->chan_retry_at;
      if (fly_exr_deadline(s) < d)
        d = fly_exr_deadline(s);
      break;
    default:
      d = UINT64_MAX;
    }
    if (d < next)
      next = d;
    for (op = s->ops; op != NULL; op = op->next) {
      if (op->deadline < next)
        next = op->deadline;
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
  fly_ssh_target_t *target;    /* the handle's: names its session (a ref) */
} fly_ssh_close_t;

static void close_start(fly_loop_t *loop, fly_req_t *req) {
  fly_ssh_close_t *c = (fly_ssh_close_t *)req;
  fly_ssh_state_t *st = state_get(loop, 0);
  fly_ssh_sess_t *s = NULL;

  /* No session when the handle never ran anything. */
  if (st != NULL)
    s = sess_find(st, c->target);
  if (s != NULL) {
    sess_unlink(st, s);
    sess_fail_ops(s, 0, "SSH_DISCONNECTED", "ssh session to %s:%d was closed",
                  s->target->host, s->target->port);
    sess_free(s);
  }
  fly_loop_done(loop, req);
}

static void close_free(napi_env env, fly_req_t *req) {
  fly_ssh_close_t *c = (fly_ssh_close_t *)req;
  (void)env;
  fly_ssh_target_unref(c->target);
}

static const fly_req_vt_t close_vt = {close_start, NULL, close_free, NULL};

/* Takes t (a reference).  promise NULL: detached (a finalizer). */
static int close_submit(napi_env env, fly_ssh_target_t *t,
                        napi_value *promise) {
  fly_ssh_close_t *c = calloc(1, sizeof(*c));

  if (c == NULL) {
    fly_ssh_target_unref(t);
    if (promise != NULL)
      fly_throw_nomem(env);
    return -1;
  }
  fly_req_init(&c->req, &close_vt);
  c->target = t;
  if (promise == NULL)
    return fly_req_submit_detached(env, &c->req);
  *promise = fly_req_submit(env, &c->req);
  return *promise != NULL ? 0 : -1;
}

/* sshClose(handle) -> Promise: idempotent; what runs on the handle's
 * session fails with SSH_DISCONNECTED, and later calls naming the handle
 * throw SSH_SESSION_CLOSED. */
napi_value fly_napi_ssh_close(napi_env env, napi_callback_info info) {
  napi_value argv[1], promise = NULL;
  size_t argc = 1;
  fly_ssh_handle_t *h;

  /* A missing argument arrives as undefined. */
  FLY_NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL),
                NULL);
  if ((h = handle_get(env, argv[0], "sshClose's argument")) == NULL)
    return NULL;
  h->closed = 1;
  close_submit(env, target_ref(h->target), &promise);
  return promise;
}

napi_value fly_napi_ssh_stats(napi_env env, napi_callback_info info) {
  napi_value obj;
  (void)info;
  FLY_NAPI_CALL(env, napi_create_object(env, &obj), NULL);
  fly_js_set_double(env, obj, "connects",
                    (double)__atomic_load_n(&fly_ssh_connects,
                                            __ATOMIC_RELAXED));
  fly_js_set_double(env, obj, "sessions",
                    (double)__atomic_load_n(&fly_ssh_sessions,
                                            __ATOMIC_RELAXED));
  /* the libssh2 the addon was built against, the one it runs with, and the
   * cipher of the last handshake (null before one) */
  fly_js_set_str(env, obj, "libssh2", LIBSSH2_VERSION);
  fly_js_set_str(env, obj, "libssh2Runtime", libssh2_version(0));
  fly_js_set_str(env, obj, "cipher",
                 __atomic_load_n(&fly_ssh_last_cipher, __ATOMIC_RELAXED));
  return obj;
}
