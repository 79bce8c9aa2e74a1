/* executor.c: the session's command executor (docker/flyexec.c).
 *
 * The first command of a connection opens one channel that runs the
 * executor (`exec <path>`), and waits for its HELLO; every command after
 * that is a START frame on that channel and its output, status or failure
 * come back as frames with its id (frame.c).  So a command costs the
 * sandbox one posix_spawn instead of an sshd session and a shell.
 *
 * What the sandbox sends is hostile: a frame longer than FLY_FRAME_MAX, a
 * frame of a kind the executor never sends, or a malformed one tears the
 * executor channel down (its commands fail with SSH_EXECUTOR_PROTOCOL) and
 * the next command starts a new one; a frame naming no command of ours is
 * dropped (it may be the tail of one we killed).  The receive buffer never
 * holds more than one frame.  An executor that ends without a command's
 * EXIT fails that command with SSH_NO_EXIT_STATUS.
 *
 * No executor (its exec fails: the image has none, so the shell exits
 * 127; or no HELLO within FLY_EXR_HELLO_MS; or the first bytes are not a
 * HELLO, as when a shell startup file prints): the connection is marked
 * and its commands use a channel each (exec.c). */
#include "ssh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLY_EXR_HELLO_MS 10000
#define FLY_EXR_READ 65536
#define FLY_EXR_STDIN_CHUNK 65536
/* Pull more stdin into the send buffer only below this. */
#define FLY_EXR_TX_LOW (256u << 10)

enum {
  E_NONE = 0,    /* no executor: the next command starts one */
  E_OPEN,        /* starter is opening its channel */
  E_EXEC,        /* starter is sending the exec request */
  E_HELLO,       /* waiting for its HELLO */
  E_READY,
  E_UNAVAILABLE  /* none on this connection: a channel per command */
};

enum { B_NONE = 0, B_WRITE, B_READ_OUT, B_READ_ERR };

struct fly_exr_s {
  int state;
  LIBSSH2_CHANNEL *ch;
  fly_ssh_op_t *starter;       /* the op opening the channel */
  uint64_t hello_deadline;
  int blocked;                 /* B_*: that call must be repeated first */
  fly_buf_t tx;                /* frames to send, from tx_off */
  size_t tx_off;
  fly_buf_t rx;                /* at most one frame, from rx_off */
  size_t rx_off;
  fly_exr_cmd_t *cmds;         /* running on it */
  uint32_t next_id;
  char err_tail[128];          /* the end of its stderr, for messages */
  size_t err_len;
};

static fly_exr_t *exr_get(fly_ssh_sess_t *s) {
  if (s->exr == NULL)
    s->exr = calloc(1, sizeof(fly_exr_t));
  return s->exr;
}

static void exr_unlink(fly_exr_t *e, fly_exr_cmd_t *c) {
  fly_exr_cmd_t **pp;
  for (pp = &e->cmds; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  }
  c->next = NULL;
  c->linked = 0;
}

static fly_exr_cmd_t *exr_find(fly_exr_t *e, uint32_t id) {
  fly_exr_cmd_t *c;
  for (c = e->cmds; c != NULL; c = c->next)
    if (c->id == id)
      return c;
  return NULL;
}

static void exr_clear_bufs(fly_exr_t *e) {
  fly_buf_free(&e->tx);
  fly_buf_free(&e->rx);
  e->tx_off = e->rx_off = 0;
  e->blocked = B_NONE;
  e->err_len = 0;
}

/* The channel is finished with (not the connection): its commands fail
 * with code, the session closes the channel (so the executor sees EOF and
 * kills what it runs), and the next command starts a new executor. */
static void exr_fail(fly_ssh_sess_t *s, fly_exr_t *e, const char *code,
                     const char *fmt, ...) {
  char msg[256];
  va_list ap;
  fly_exr_cmd_t *c;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (e->ch != NULL) {
    fly_ssh_zombie_add(s, e->ch);
    e->ch = NULL;
  }
  exr_clear_bufs(e);
  e->state = E_NONE;
  while ((c = e->cmds) != NULL) {
    exr_unlink(e, c);
    c->vt->fail(s, c, code, msg);
  }
  s->progress = 1;
}

/* No executor here: waiting commands take a channel each. */
static void exr_unavailable(fly_ssh_sess_t *s, fly_exr_t *e) {
  if (e->ch != NULL) {
    fly_ssh_zombie_add(s, e->ch);
    e->ch = NULL;
  }
  exr_clear_bufs(e);
  e->state = E_UNAVAILABLE;
  s->progress = 1;
}

int fly_exr_acquire(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now,
                    int *verdict) {
  fly_exr_t *e;
  fly_buf_t line = {0};
  int rc;

  *verdict = FLY_SSH_WAIT;
  if (s->target->executor == NULL || (e = exr_get(s)) == NULL)
    return -1;
  switch (e->state) {
  case E_UNAVAILABLE:
    return -1;
  case E_READY:
    return 1;
  case E_HELLO:
    return 0;
  case E_NONE:
    e->state = E_OPEN;
    e->starter = op;
    break;
  default:
    if (e->starter != op)
      return 0;
  }

  if (e->state == E_OPEN) {
    if (!fly_ssh_chan_begin(s, op, now))
      return 0;
    e->ch = libssh2_channel_open_session(s->ls);
    if (e->ch == NULL) {
      rc = fly_ssh_chan_failed(s, op, now, "opening the executor's channel");
      if (rc == FLY_SSH_DONE || rc == FLY_SSH_DEAD) {
        e->state = E_NONE;
        e->starter = NULL;
      }
      *verdict = rc;
      return 0;
    }
    fly_ssh_chan_opened(s, op);
    e->state = E_EXEC;
  }
  /* E_EXEC */
  if (fly_buf_append(&line, "exec ", 5) != 0 ||
      fly_quote_append(&line, s->target->executor,
                       strlen(s->target->executor)) != 0) {
    fly_buf_free(&line);
    e->starter = NULL;
    exr_unavailable(s, e);
    return -1;
  }
  rc = libssh2_channel_exec(e->ch, line.base);
  fly_buf_free(&line);
  if (rc == LIBSSH2_ERROR_EAGAIN) {
    *verdict = fly_ssh_blocked_out(s) ? FLY_SSH_OUT : FLY_SSH_WAIT;
    return 0;
  }
  e->starter = NULL;
  if (rc != 0) {
    if (fly_ssh_rc_dead(s, rc)) {
      e->state = E_NONE;
      *verdict = FLY_SSH_DEAD;
      return 0;
    }
    /* The server refused the exec request (a ForceCommand, say). */
    exr_unavailable(s, e);
    return -1;
  }
  e->state = E_HELLO;
  e->hello_deadline = now + FLY_EXR_HELLO_MS;
  s->progress = 1;
  return 0;
}

int fly_exr_submit(fly_ssh_sess_t *s, fly_exr_cmd_t *c,
                   const fly_buf_t *start) {
  fly_exr_t *e = s->exr;
  size_t at;

  /* Ids are never reused on a channel while one is running, so a late
   * frame of a killed command cannot reach a new one. */
  do
    c->id = ++e->next_id;
  while (c->id == 0 || exr_find(e, c->id) != NULL);
  at = e->tx.len;
  if (fly_frame_put(&e->tx, FLY_FRAME_START, c->id, start->base,
                    start->len) != 0)
    return -1;
  if (c->in != NULL)
    e->tx.base[at + FLY_FRAME_HDR] |= FLY_START_STDIN;
  c->in_unacked = 0;
  c->eof_sent = c->in == NULL;
  c->heard = 0;
  c->next = e->cmds;
  e->cmds = c;
  c->linked = 1;
  s->progress = 1;
  return 0;
}

void fly_exr_release(fly_ssh_sess_t *s, fly_exr_cmd_t *c, int kill) {
  fly_exr_t *e = s->exr;
  if (e == NULL || !c->linked)
    return;
  exr_unlink(e, c);
  /* Out of memory here only leaves the command running until it ends. */
  if (kill && e->ch != NULL &&
      fly_frame_put(&e->tx, FLY_FRAME_KILL, c->id, NULL, 0) == 0)
    s->progress = 1;
}

int fly_exr_op_gone(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  fly_exr_t *e = s->exr;
  if (e == NULL || e->starter != op)
    return 0;
  e->starter = NULL;
  if (e->state == E_OPEN && s->opener != op) {
    /* It was only waiting for the opener's turn. */
    e->state = E_NONE;
    return 0;
  }
  return 1;
}

/* ---- frames from the executor -------------------------------------------- */

/* Returns 0, or -1 when the channel was failed. */
static int exr_frame(fly_ssh_sess_t *s, fly_exr_t *e, const fly_frame_t *f) {
  fly_exr_cmd_t *c;

  if (e->state == E_HELLO) {
    /* The first frame must be a HELLO of a version we speak; anything
     * else (a shell startup file's output, another program) means no
     * executor. */
    if (f->type != FLY_FRAME_HELLO || f->id != 0 ||
        f->len < FLY_EXEC_HELLO_LEN ||
        memcmp(f->data, FLY_EXEC_MAGIC, FLY_EXEC_MAGIC_LEN) != 0 ||
        fly_frame_get32(f->data + FLY_EXEC_MAGIC_LEN) != FLY_EXEC_VERSION) {
      exr_unavailable(s, e);
      return -1;
    }
    e->state = E_READY;
    s->progress = 1;
    return 0;
  }
  if ((c = exr_find(e, f->id)) != NULL)
    c->heard = 1;
  switch (f->type) {
  case FLY_FRAME_STDOUT:
  case FLY_FRAME_STDERR:
    if ((c = exr_find(e, f->id)) != NULL && f->len > 0)
      c->vt->data(s, c, f->type == FLY_FRAME_STDOUT ? 1 : 2, f->data, f->len);
    return 0;
  case FLY_FRAME_EXIT:
    if (f->len != 8)
      break;
    if ((c = exr_find(e, f->id)) != NULL) {
      uint32_t code = fly_frame_get32(f->data);
      uint32_t sig = fly_frame_get32(f->data + 4);
      if (code > 255 || sig > 64)
        break;
      exr_unlink(e, c);
      c->vt->exit(s, c, (int)code, (int)sig);
    }
    return 0;
  case FLY_FRAME_FAILED:
    if (f->len < 4)
      break;
    if ((c = exr_find(e, f->id)) != NULL) {
      char msg[200];
      size_t n = f->len - 4, i;
      if (n > sizeof(msg) - 1)
        n = sizeof(msg) - 1;
      /* Printable ASCII only: the text came from the sandbox. */
      for (i = 0; i < n; i++) {
        unsigned char ch = f->data[4 + i];
        msg[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
      }
      msg[n] = '\0';
      exr_unlink(e, c);
      c->vt->fail(s, c, "SSH_EXEC_FAILED", msg);
    }
    return 0;
  case FLY_FRAME_RUNNING:
    /* c->heard is all it says. */
    if (f->len != 0)
      break;
    return 0;
  case FLY_FRAME_ACK:
    if (f->len != 4)
      break;
    if ((c = exr_find(e, f->id)) != NULL) {
      uint32_t n = fly_frame_get32(f->data);
      if (n > c->in_unacked)
        break;
      c->in_unacked -= n;
      s->progress = 1;
    }
    return 0;
  default:
    break;
  }
  exr_fail(s, e, "SSH_EXECUTOR_PROTOCOL",
           "the sandbox's command executor sent a malformed frame "
           "(type %d, %zu bytes)", f->type, f->len);
  return -1;
}

/* Parse what rx holds.  0, or -1 when the channel was failed. */
static int exr_parse(fly_ssh_sess_t *s, fly_exr_t *e) {
  for (;;) {
    fly_frame_t f;
    int n = fly_frame_parse(e->rx.base + e->rx_off, e->rx.len - e->rx_off,
                            FLY_FRAME_MAX, &f);
    if (n == 0)
      break;
    if (n < 0) {
      if (e->state == E_HELLO) {
        exr_unavailable(s, e);
        return -1;
      }
      exr_fail(s, e, "SSH_EXECUTOR_PROTOCOL",
               "the sandbox's command executor sent a frame of %lu bytes "
               "(at most %u)",
               (unsigned long)fly_frame_get32(e->rx.base + e->rx_off),
               (unsigned)(FLY_FRAME_MAX + 5));
      return -1;
    }
    e->rx_off += (size_t)n;
    if (exr_frame(s, e, &f) != 0)
      return -1;
  }
  /* Keep only the partial frame, at the front. */
  if (e->rx_off > 0) {
    memmove(e->rx.base, e->rx.base + e->rx_off, e->rx.len - e->rx_off);
    e->rx.len -= e->rx_off;
    e->rx_off = 0;
  }
  return 0;
}

/* ---- stepping ------------------------------------------------------------ */

/* Frames of stdin (and EOFs) while the send buffer is short and each
 * command's window has room. */
static void exr_pull_stdin(fly_ssh_sess_t *s, fly_exr_t *e) {
  fly_exr_cmd_t *c;
  for (c = e->cmds; c != NULL; c = c->next) {
    while (!c->eof_sent && e->tx.len - e->tx_off < FLY_EXR_TX_LOW) {
      size_t left = c->in->len - c->in_off, n = left;
      if (left == 0) {
        if (fly_frame_put(&e->tx, FLY_FRAME_EOF, c->id, NULL, 0) != 0)
          return;
        c->eof_sent = 1;
        break;
      }
      if (c->in_unacked >= FLY_EXEC_STDIN_WINDOW)
        break;
      if (n > FLY_EXR_STDIN_CHUNK)
        n = FLY_EXR_STDIN_CHUNK;
      if (n > FLY_EXEC_STDIN_WINDOW - c->in_unacked)
        n = FLY_EXEC_STDIN_WINDOW - c->in_unacked;
      if (fly_frame_put(&e->tx, FLY_FRAME_STDIN, c->id,
                        c->in->base + c->in_off, n) != 0)
        return;
      c->in_off += n;
      c->in_unacked += n;
      s->progress = 1;
    }
  }
}

/* Returns FLY_SSH_WAIT to go on, another verdict to end the step, or -1
 * when the channel was failed (no verdict: the session goes on). */
/* A channel call that would block: it must be repeated first (kind) when
 * libssh2 is waiting to send, else the session just waits for input. */
static int exr_again(fly_ssh_sess_t *s, fly_exr_t *e, int kind) {
  if (fly_ssh_blocked_out(s)) {
    e->blocked = kind;
    return FLY_SSH_OUT;
  }
  e->blocked = B_NONE;
  return FLY_SSH_WAIT;
}

static int exr_write(fly_ssh_sess_t *s, fly_exr_t *e) {
  while (e->tx_off < e->tx.len) {
    ssize_t n = libssh2_channel_write(e->ch, e->tx.base + e->tx_off,
                                      e->tx.len - e->tx_off);
    if (n == LIBSSH2_ERROR_EAGAIN)
      return exr_again(s, e, B_WRITE);
    e->blocked = B_NONE;
    if (n < 0) {
      if (fly_ssh_rc_dead(s, (int)n))
        return FLY_SSH_DEAD;
      exr_fail(s, e, "SSH_NO_EXIT_STATUS",
               "the sandbox's command executor exited before the command "
               "ended");
      return -1;
    }
    e->tx_off += (size_t)n;
    s->progress = 1;
  }
  e->tx.len = e->tx_off = 0;
  return FLY_SSH_WAIT;
}

static int exr_read(fly_ssh_sess_t *s, fly_exr_t *e, int stream) {
  for (;;) {
    char junk[1024];
    char *dst;
    size_t room;
    ssize_t n;

    if (stream == 1) {
      /* Room for the rest of one frame at most (never more than a frame
       * is buffered: FLY_FRAME_HDR + FLY_FRAME_MAX). */
      size_t cap = FLY_FRAME_HDR + FLY_FRAME_MAX;
      room = cap - e->rx.len;
      if (room > FLY_EXR_READ)
        room = FLY_EXR_READ;
      if (fly_buf_reserve(&e->rx, room) != 0) {
        exr_fail(s, e, "ERR_NO_MEMORY", "out of memory");
        return -1;
      }
      dst = e->rx.base + e->rx.len;
    } else {
      dst = junk;
      room = sizeof(junk);
    }
    n = libssh2_channel_read_ex(e->ch,
                                stream == 1 ? 0 : SSH_EXTENDED_DATA_STDERR,
                                dst, room);
    if (n == LIBSSH2_ERROR_EAGAIN)
      return exr_again(s, e, stream == 1 ? B_READ_OUT : B_READ_ERR);
    e->blocked = B_NONE;
    if (n < 0) {
      if (fly_ssh_rc_dead(s, (int)n))
        return FLY_SSH_DEAD;
      exr_fail(s, e, "SSH_NO_EXIT_STATUS",
               "reading from the sandbox's command executor failed");
      return -1;
    }
    if (n == 0)
      return FLY_SSH_WAIT;
    s->progress = 1;
    if (stream == 2) {
      /* Its stderr is only kept for messages: the last bytes. */
      size_t k = (size_t)n;
      if (k >= sizeof(e->err_tail)) {
        memcpy(e->err_tail, junk + k - sizeof(e->err_tail),
               sizeof(e->err_tail));
        e->err_len = sizeof(e->err_tail);
      } else {
        if (e->err_len + k > sizeof(e->err_tail)) {
          size_t drop = e->err_len + k - sizeof(e->err_tail);
          memmove(e->err_tail, e->err_tail + drop, e->err_len - drop);
          e->err_len -= drop;
        }
        memcpy(e->err_tail + e->err_len, junk, k);
        e->err_len += k;
      }
      continue;
    }
    e->rx.len += (size_t)n;
    e->rx.base[e->rx.len] = '\0';
    if (exr_parse(s, e) != 0)
      return -1;
  }
}

int fly_exr_step(fly_ssh_sess_t *s, uint64_t now) {
  fly_exr_t *e = s->exr;
  int r;

  if (e == NULL || e->ch == NULL ||
      (e->state != E_HELLO && e->state != E_READY))
    return FLY_SSH_WAIT;
  /* A half-done send inside a read or write: that call first. */
  if (e->blocked == B_READ_OUT || e->blocked == B_READ_ERR) {
    r = exr_read(s, e, e->blocked == B_READ_OUT ? 1 : 2);
    if (r < 0)
      return FLY_SSH_WAIT;
    if (r != FLY_SSH_WAIT)
      return r;
  }
  if (e->state == E_READY) {
    exr_pull_stdin(s, e);
    r = exr_write(s, e);
    if (r < 0)
      return FLY_SSH_WAIT;
    if (r != FLY_SSH_WAIT)
      return r;
  }
  if ((r = exr_read(s, e, 1)) < 0)
    return FLY_SSH_WAIT;
  if (r != FLY_SSH_WAIT)
    return r;
  if ((r = exr_read(s, e, 2)) < 0)
    return FLY_SSH_WAIT;
  if (r != FLY_SSH_WAIT)
    return r;
  if (libssh2_channel_eof(e->ch)) {
    if (e->state == E_HELLO) {
      /* The exec failed (no executor in this image: exit 127). */
      exr_unavailable(s, e);
    } else {
      size_t i;
      for (i = 0; i < e->err_len; i++)
        if ((unsigned char)e->err_tail[i] < 0x20 ||
            (unsigned char)e->err_tail[i] >= 0x7f)
          e->err_tail[i] = ' ';
      exr_fail(s, e, "SSH_NO_EXIT_STATUS",
               "the sandbox's command executor ended before the command's "
               "exit status%s%.*s",
               e->err_len ? ": " : "", (int)e->err_len, e->err_tail);
    }
    return FLY_SSH_WAIT;
  }
  if (e->state == E_HELLO && now >= e->hello_deadline)
    exr_unavailable(s, e);
  return FLY_SSH_WAIT;
}

uint64_t fly_exr_deadline(fly_ssh_sess_t *s) {
  fly_exr_t *e = s->exr;
  return e != NULL && e->state == E_HELLO ? e->hello_deadline : UINT64_MAX;
}

void fly_exr_reset(fly_ssh_sess_t *s) {
  fly_exr_t *e = s->exr;
  fly_exr_cmd_t *c;
  if (e == NULL)
    return;
  /* libssh2_session_free frees the channel. */
  e->ch = NULL;
  e->starter = NULL;
  exr_clear_bufs(e);
  /* Ops on it were failed and dropped first; detach any left. */
  while ((c = e->cmds) != NULL)
    exr_unlink(e, c);
  /* A new connection may find one (and is asked again). */
  e->state = E_NONE;
}

void fly_exr_free(fly_ssh_sess_t *s) {
  fly_exr_reset(s);
  free(s->exr);
  s->exr = NULL;
}
