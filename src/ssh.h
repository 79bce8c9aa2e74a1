/* ssh.h: private declarations shared by ssh.c, exec.c and sftp.c.
 *
 * A session (fly_ssh_sess_t) is the libssh2 connection of one handle of
 * sshOpen, and no other handle's.  Operations (fly_ssh_op_t: an exec or an
 * SFTP call) queue on their session and are stepped by ssh.c from the I/O
 * thread.  Everything here is I/O thread only, except fly_ssh_op_init and
 * fly_ssh_op_free (JS thread) and fly_ssh_target_unref (any thread). */
#ifndef FLY_SSH_H
#define FLY_SSH_H

#include "fly.h"

#include <libssh2.h>
#include <libssh2_sftp.h>

/* Where and how to connect: copies of the JS target, immutable once parsed
 * and shared by reference (refs is atomic), so the JS thread, ops and
 * sessions can hold it at once.  The last unref wipes the secrets. */
typedef struct fly_ssh_target_s {
  int refs;
  char *host;
  int port;
  char *user;
  char *private_key;
  char *password;
  char *fingerprint;
  int insecure;
  char *executor;              /* the sandbox's executor, NULL: none */
  uint64_t connect_timeout_ms; /* TCP connect + handshake + auth */
  uint64_t op_timeout_ms;      /* channel opens and SFTP calls */
  uint64_t idle_timeout_ms;    /* close a connection unused this long */
  unsigned keepalive_sec;
  /* Through Fly's edge (edge.c) when edge_host is set: TLS to
   * edge_host:edge_port, a WebSocket upgrade of edge_path with Host
   * edge_authority, fly-force-instance-id edge_instance and the edge
   * token; edge_ca: PEM to trust instead of the system's CAs. */
  char *edge_host;
  int edge_port;
  char *edge_authority;
  char *edge_instance;
  char *edge_token;
  char *edge_ca;
  char *edge_path;
} fly_ssh_target_t;

/* ---- the edge (edge.c): I/O thread only ----------------------------------
 * One per connection of a session whose target has an edge.  libssh2 gets
 * *ssh_fd, one end of a socketpair; the edge pumps the other end through
 * TLS and WebSocket framing. */
typedef struct fly_edge_s fly_edge_t;
fly_edge_t *fly_edge_new(const fly_ssh_target_t *t, int *ssh_fd);
void fly_edge_free(fly_edge_t *e);
/* Connect further, or move bytes.  1 when something changed. */
int fly_edge_step(fly_edge_t *e);
/* 1 once the WebSocket is open (libssh2 may start). */
int fly_edge_open(const fly_edge_t *e);
/* 1 when it failed: a code (FLY_EDGE_TLS, FLY_EDGE_REFUSED,
 * FLY_EDGE_PROTOCOL, SSH_CONNECT_FAILED, SSH_DISCONNECTED), a message with
 * no secret in it, the HTTP status of a refusal, and whether a new attempt
 * may succeed (a refused TCP connect, a 502/503/504 while a machine
 * starts). */
int fly_edge_failed(const fly_edge_t *e, const char **code, const char **msg,
                    int *status, int *retry);
int fly_edge_fds(fly_edge_t *e, struct curl_waitfd *fds, int max);
/* When it needs a step without a socket event (the resolver's poll). */
uint64_t fly_edge_deadline(const fly_edge_t *e, uint64_t now);

typedef struct fly_ssh_sess_s fly_ssh_sess_t;
typedef struct fly_exr_s fly_exr_t;
typedef struct fly_batch_chan_s fly_batch_chan_t;
typedef struct fly_ssh_op_s fly_ssh_op_t;

/* What an op's step returns to the session. */
enum {
  FLY_SSH_WAIT = 0,  /* nothing more to do until the socket or a timer */
  FLY_SSH_OUT,       /* a send is half done: step only this op until it ends */
  FLY_SSH_DONE,      /* finished (req.err set on failure): unlink and done */
  FLY_SSH_DEAD       /* the connection is gone */
};

typedef struct fly_ssh_op_vt_s {
  int (*step)(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now);
  /* op->deadline passed.  Return FLY_SSH_DONE when the op settled (its
   * result or error set, its libssh2 objects handed to the session), or
   * FLY_SSH_DEAD when it is inside a libssh2 exchange that cannot be left
   * half done: the op then fails with SSH_TIMEOUT and the connection is
   * torn down (the next op reconnects). */
  int (*expire)(fly_ssh_sess_t *s, fly_ssh_op_t *op);
  /* The session is going away: forget libssh2 handles without I/O.
   * Return 1 when the op sent nothing the server acted on, so it may run
   * again on a new connection (its state is then reset). */
  int (*drop)(fly_ssh_sess_t *s, fly_ssh_op_t *op);
} fly_ssh_op_vt_t;

struct fly_ssh_op_s {
  fly_req_t req;               /* first: the loop frees the op as a req */
  const fly_ssh_op_vt_t *ovt;
  fly_ssh_target_t *target;    /* its handle's (a reference) */
  napi_ref handle;             /* JS thread: keeps the handle alive */
  uint64_t asked_at;           /* fly_now_ms() when JS asked */
  uint64_t timeout_ms;         /* the op's own budget, 0 = the default */
  /* I/O thread only. */
  uint64_t deadline;           /* settle by then, UINT64_MAX = none */
  fly_ssh_op_t *next;          /* the session's op list, in arrival order */
  int started;                 /* touched the connection: fails on drop */
  int retried;                 /* already moved once to a new connection */
};

typedef struct fly_ssh_zombie_s {
  LIBSSH2_CHANNEL *ch;
  struct fly_ssh_zombie_s *next;
} fly_ssh_zombie_t;

/* Who owns a send that returned EAGAIN half done (ssh.c only). */
typedef enum {
  FLY_SSH_BLOCKED_NONE = 0,
  FLY_SSH_BLOCKED_OP,          /* u.op's step */
  FLY_SSH_BLOCKED_ZOMBIE,      /* u.zombie's channel free */
  FLY_SSH_BLOCKED_KEEPALIVE,   /* the session's keepalive */
  FLY_SSH_BLOCKED_EXECUTOR     /* the executor channel's read or write */
} fly_ssh_blocked_kind_t;

typedef struct fly_ssh_blocked_s {
  fly_ssh_blocked_kind_t kind;
  union {
    fly_ssh_op_t *op;
    fly_ssh_zombie_t *zombie;
  } u;
} fly_ssh_blocked_t;

struct fly_ssh_sess_s {
  fly_loop_t *loop;
  fly_ssh_sess_t *next;
  fly_ssh_target_t *target;    /* its handle's, which identifies it */
  int state;
  int fd;
  fly_edge_t *edge;            /* the edge path, while connected through it */
  int fail_status;             /* an edge refusal's HTTP status, for errors */
  int refused_status;          /* an earlier attempt's 502-504, or 0 */
  LIBSSH2_SESSION *ls;
  uint64_t connect_deadline;
  uint64_t retry_at;
  uint64_t retry_delay;       /* the next connect retry's delay */
  uint64_t keepalive_at;
  uint64_t last_rx;            /* the last time the server sent a byte */
  uint64_t ready_at;           /* when the connection was authenticated */
  uint64_t ka_unanswered_at;   /* first keepalive sent since last_rx, or 0 */
  uint64_t idle_since;         /* READY with nothing to do since, or 0 */
  uint64_t chan_retry_at;      /* a refused open is retried from then */
  uint64_t chan_retry_delay;
  char last_connect_error[160];

  fly_ssh_op_t *ops;
  /* Channel slots: changed only by the fly_ssh_chan_* functions (ssh.c).
   * libssh2 keeps one open state per session (channel opens and SFTP init
   * share it), so one op at a time may be opening. */
  fly_ssh_op_t *opener;
  int nchan;                   /* channels open, zombies included */
  int chan_limit;              /* learned from the server's refusals */
  fly_ssh_blocked_t blocked;   /* ssh.c only */

  LIBSSH2_SFTP *sftp;
  fly_ssh_op_t *sftp_owner;    /* SFTP runs one op at a time */
  fly_batch_chan_t *batch;     /* the batch SFTP channel (sftp_batch.c) */
  fly_ssh_op_t *batch_owner;   /* one batch op at a time uses it */

  fly_exr_t *exr;              /* the sandbox's executor (executor.c) */
  fly_ssh_zombie_t *zombies;   /* channels being closed after their op */
  int progress;                /* set by steps that may allow more work */
};

/* JS thread: the op's target from opts.session (a handle of sshOpen), and
 * asked_at.  0, or -1 with an exception pending. */
int fly_ssh_op_init(napi_env env, napi_value opts, fly_ssh_op_t *op);
/* The op's own fields (from vt->free): the target and handle references. */
void fly_ssh_op_free(napi_env env, fly_ssh_op_t *op);
void fly_ssh_target_unref(fly_ssh_target_t *t);   /* any thread */

/* I/O thread: hand an op to its handle's session (made on first use). */
void fly_ssh_op_start(fly_loop_t *loop, fly_ssh_op_t *op);
/* The op's default budget: its timeout_ms, or the target's op timeout. */
uint64_t fly_ssh_op_budget(const fly_ssh_op_t *op);

/* I/O thread: channel slots, for exec.c and sftp.c.  An op that wants a
 * channel calls fly_ssh_chan_begin until it returns 1 (the op is then the
 * session's one opener, and stays so until its open ends), then calls the
 * libssh2 open; a NULL open goes to fly_ssh_chan_failed, a channel to
 * fly_ssh_chan_opened; the end of a channel to fly_ssh_chan_freed. */
int fly_ssh_chan_begin(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now);
/* The open returned NULL.  Returns FLY_SSH_WAIT or FLY_SSH_OUT (EAGAIN,
 * still the opener; or refused by the server's MaxSessions: no longer the
 * opener, fly_ssh_chan_begin again later), FLY_SSH_DEAD, or FLY_SSH_DONE
 * with op's error set (SSH_CHANNEL_FAILED, "what failed"). */
int fly_ssh_chan_failed(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now,
                        const char *what);
void fly_ssh_chan_opened(fly_ssh_sess_t *s, fly_ssh_op_t *op);
void fly_ssh_chan_freed(fly_ssh_sess_t *s);

/* I/O thread helpers for the op modules. */
int fly_ssh_blocked_out(fly_ssh_sess_t *s);
/* 1 when rc means the connection is unusable. */
int fly_ssh_rc_dead(fly_ssh_sess_t *s, int rc);
/* Close and free ch in the background (the op is finished with it). */
void fly_ssh_zombie_add(fly_ssh_sess_t *s, LIBSSH2_CHANNEL *ch);
/* Fill err from the session's last libssh2 error. */
void fly_ssh_err_last(fly_ssh_sess_t *s, fly_err_t *e, const char *code,
                      const char *what);

/* ---- the executor (executor.c) -------------------------------------------
 * One channel per session runs docker/flyexec.c, which starts every command
 * of the session; commands are multiplexed over it in frames (frame.c).
 * exec.c's commands embed a fly_exr_cmd_t and get their output, status or
 * failure through its callbacks, always from fly_exr_step. */
typedef struct fly_exr_cmd_s fly_exr_cmd_t;
typedef struct fly_exr_cmd_vt_s {
  void (*data)(fly_ssh_sess_t *s, fly_exr_cmd_t *c, int stream,
               const void *p, size_t n);
  /* The command is off the executor's list when these run. */
  void (*exit)(fly_ssh_sess_t *s, fly_exr_cmd_t *c, int code, int sig);
  void (*fail)(fly_ssh_sess_t *s, fly_exr_cmd_t *c, const char *code,
               const char *msg);
} fly_exr_cmd_vt_t;

struct fly_exr_cmd_s {
  const fly_exr_cmd_vt_t *vt;
  fly_exr_cmd_t *next;
  uint32_t id;
  int linked;                  /* on the executor's list */
  const fly_buf_t *in;         /* stdin to send from in_off; NULL: none */
  size_t in_off;
  size_t in_unacked;           /* sent and not yet consumed */
  int eof_sent;
  int heard;                   /* a frame for it came back (RUNNING) */
};

/* Whether op may run its command on the executor.  1: ready, go on with
 * fly_exr_submit; 0: not yet, return *verdict from the step (op may be the
 * one starting the executor); -1: no executor on this connection, use a
 * channel of its own. */
int fly_exr_acquire(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now,
                    int *verdict);
/* Queue START (payload from fly_frame_start_payload; stdin: the flag is
 * set here when c->in is not NULL).  0, or -1 out of memory. */
int fly_exr_submit(fly_ssh_sess_t *s, fly_exr_cmd_t *c, const fly_buf_t *start);
/* The command's op is done with it: off the list; kill: SIGKILL its group
 * (the op ended before the command did). */
void fly_exr_release(fly_ssh_sess_t *s, fly_exr_cmd_t *c, int kill);
/* op goes away: 1 when it was inside the executor channel's open or exec
 * (the connection must then go too). */
int fly_exr_op_gone(fly_ssh_sess_t *s, fly_ssh_op_t *op);
/* ssh.c: step the executor channel (writes, reads, frames).  Returns
 * FLY_SSH_WAIT, FLY_SSH_OUT (a half-done send: step only this) or
 * FLY_SSH_DEAD. */
int fly_exr_step(fly_ssh_sess_t *s, uint64_t now);
/* ssh.c: the connection is going (its ops already failed): forget the
 * channel without I/O. */
void fly_exr_reset(fly_ssh_sess_t *s);
void fly_exr_free(fly_ssh_sess_t *s);
/* The earliest time the executor needs a step (its hello deadline). */
uint64_t fly_exr_deadline(fly_ssh_sess_t *s);

/* ---- the batch SFTP channel (sftp_batch.c) ------------------------------
 * ssh.c: the connection is going: forget the channel without I/O; and
 * free what is left with the session. */
void fly_batch_chan_reset(fly_ssh_sess_t *s);
void fly_batch_chan_free(fly_ssh_sess_t *s);

#endif /* FLY_SSH_H */
