/* exec.c: a command (sshExec), on the session's executor or on a channel
 * of its own.
 *
 * The JS thread builds the remote command line (quote.c) and the
 * executor's START payload (frame.c), and copies stdin.  On the I/O thread
 * a command runs on the session's executor (executor.c) when the sandbox
 * has one: its output, status or failure arrive through the callbacks
 * below.  Otherwise (no executor in the image, or a command too long for
 * one argument) it opens a channel on its handle's session, runs the
 * command line, writes stdin then EOF, reads stdout and stderr until EOF,
 * waits for the server's close and takes the exit status or signal.  A
 * command that ends early (output limit, client-side timeout) resolves at
 * once: its executor command is killed, or its channel left to the session
 * to close in the background. */
#include "ssh.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  X_WAIT = 0,  /* waiting for a channel slot / the opener turn */
  X_OPEN,
  X_EXEC,
  X_IO,
  X_CLOSED,    /* the server's EOF is in: waiting for its close (and the
                  exit status it sends first) */
  X_CLOSE,
  X_FREE,
  X_EXR        /* running on the executor */
};

/* A START payload above this takes a channel: each of its strings then
 * may be longer than one argument can be (Linux's 128 KiB), which the
 * channel path's script-on-stdin handles. */
#define FLY_EXEC_START_MAX (100u << 10)

/* Grace after timeoutMs for the remote `timeout` wrapper to act. */
#define FLY_EXEC_GRACE_MS 3000
#define FLY_EXEC_READ 65536

typedef struct fly_exec_s {
  fly_ssh_op_t op;             /* first */
  /* Set on the JS thread, read-only after. */
  char *cmdline;
  fly_buf_t in;                /* the channel path's script, then stdin */
  size_t prefix_len;           /* bytes of in that are that script */
  fly_buf_t start;             /* START payload; empty: channel only */
  uint64_t timeout_ms;
  uint64_t max_output;
  int streaming;
  int text;                    /* output as text (chunks and result) */
  /* I/O thread. */
  int state;
  LIBSSH2_CHANNEL *ch;
  size_t in_off;
  int eof_sent;
  int read_blocked;            /* a read's window adjust is half sent */
  uint64_t total;
  fly_buf_t out;
  fly_buf_t err;
  fly_exr_cmd_t ec;            /* on the executor */
  int on_exr;
  int exr_done;                /* a frame settled it (result or error) */
  int no_exr;                  /* this command takes a channel */
  /* The result. */
  int out_form, err_form;      /* text: FLY_TEXT_*, set at the end */
  int exit_code;
  char *signal;
  int timed_out;
} fly_exec_t;

static const struct {
  const char *name;
  int num;
} signals[] = {
  {"HUP", 1},   {"INT", 2},   {"QUIT", 3},  {"ILL", 4},   {"TRAP", 5},
  {"ABRT", 6},  {"BUS", 7},   {"FPE", 8},   {"KILL", 9},  {"USR1", 10},
  {"SEGV", 11}, {"USR2", 12}, {"PIPE", 13}, {"ALRM", 14}, {"TERM", 15},
  {"STKFLT", 16}, {"CHLD", 17}, {"CONT", 18}, {"STOP", 19}, {"TSTP", 20},
  {"TTIN", 21}, {"TTOU", 22}, {"URG", 23},  {"XCPU", 24}, {"XFSZ", 25},
  {"VTALRM", 26}, {"PROF", 27}, {"WINCH", 28}, {"IO", 29}, {"PWR", 30},
  {"SYS", 31},
};

static int signal_number(const char *name) {
  size_t i;
  if (strncmp(name, "SIG", 3) == 0)
    name += 3;
  for (i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
    if (strcmp(signals[i].name, name) == 0)
      return signals[i].num;
  return 0;
}

static void exec_set_signal(fly_exec_t *x, int sig) {
  size_t i;
  for (i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
    if (signals[i].num == sig) {
      size_t n = strlen(signals[i].name) + 4;
      x->signal = malloc(n);
      if (x->signal != NULL)
        snprintf(x->signal, n, "SIG%s", signals[i].name);
      break;
    }
  }
  x->exit_code = 128 + sig;
}

/* Output as it arrives, on either path: over maxOutputBytes what fits is
 * still delivered to a streamed command and the command must end; a
 * streamed command gets its chunk; the bytes are kept for the result
 * unless streamed without text.  With text the whole output is the result
 * of a streamed command too, kept here rather than in the JS heap, where a
 * string of every chunk would survive into the old generation (measured:
 * 32 MiB kept as a rope in JS ~400-650 ms of GC, stalls of 130-210 ms).
 * -1 (the error set): the command must end. */
static int exec_take(fly_ssh_sess_t *s, fly_exec_t *x, int stream,
                     const void *p, size_t n) {
  if ((uint64_t)n > x->max_output - x->total) {
    if (x->streaming && x->max_output > x->total)
      fly_loop_chunk(s->loop, &x->op.req, stream, p,
                     (size_t)(x->max_output - x->total));
    x->total = x->max_output;
    fly_err_set(&x->op.req.err, "ERR_OUTPUT_LIMIT",
                "command output exceeded maxOutputBytes (%llu bytes)",
                (unsigned long long)x->max_output);
    return -1;
  }
  x->total += (uint64_t)n;
  if ((x->streaming &&
       fly_loop_chunk(s->loop, &x->op.req, stream, p, n) != 0) ||
      ((!x->streaming || x->text) &&
       fly_buf_append(stream == 1 ? &x->out : &x->err, p, n) != 0)) {
    fly_err_set(&x->op.req.err, "ERR_NO_MEMORY", "out of memory");
    return -1;
  }
  return 0;
}

/* ---- on the executor ----------------------------------------------------- */

#define EXEC_OF(c) ((fly_exec_t *)((char *)(c)-offsetof(fly_exec_t, ec)))

static void exr_settle(fly_ssh_sess_t *s, fly_exec_t *x) {
  x->exr_done = 1;
  s->progress = 1;
}

static void exr_on_data(fly_ssh_sess_t *s, fly_exr_cmd_t *c, int stream,
                        const void *p, size_t n) {
  fly_exec_t *x = EXEC_OF(c);

  if (exec_take(s, x, stream, p, n) != 0) {
    /* The command is killed. */
    fly_exr_release(s, c, 1);
    exr_settle(s, x);
  }
}

static void exr_on_exit(fly_ssh_sess_t *s, fly_exr_cmd_t *c, int code,
                        int sig) {
  fly_exec_t *x = EXEC_OF(c);
  x->exit_code = code;
  if (sig > 0)
    exec_set_signal(x, sig);
  exr_settle(s, x);
}

static void exr_on_fail(fly_ssh_sess_t *s, fly_exr_cmd_t *c,
                        const char *code, const char *msg) {
  fly_exec_t *x = EXEC_OF(c);
  if (x->op.req.err.code == NULL)
    fly_err_set(&x->op.req.err, code, "%s", msg);
  exr_settle(s, x);
}

static const fly_exr_cmd_vt_t exec_exr_vt = {exr_on_data, exr_on_exit,
                                             exr_on_fail};

/* The command on the executor: 1 when it went there (or failed: *verdict
 * DONE), 0 when waiting (*verdict), -1 to take a channel. */
static int exec_on_exr(fly_ssh_sess_t *s, fly_exec_t *x, uint64_t now,
                       int *verdict) {
  int r = fly_exr_acquire(s, &x->op, now, verdict);
  if (r <= 0)
    return r;
  x->ec.vt = &exec_exr_vt;
  x->ec.in = x->in.len > x->prefix_len ? &x->in : NULL;
  x->ec.in_off = x->prefix_len;
  if (fly_exr_submit(s, &x->ec, &x->start) != 0) {
    fly_err_set(&x->op.req.err, "ERR_NO_MEMORY", "out of memory");
    *verdict = FLY_SSH_DONE;
    return 1;
  }
  /* Sent (or about to be): a dropped connection fails it, never reruns
   * it.  Without a timeout a running command may run for ever. */
  x->op.started = 1;
  x->on_exr = 1;
  if (x->timeout_ms == 0)
    x->op.deadline = UINT64_MAX;
  x->state = X_EXR;
  *verdict = FLY_SSH_WAIT;
  return 1;
}

/* ---- on a channel of its own --------------------------------------------- */

/* The channel is no longer this op's to finish: the session closes it. */
static void exec_release_channel(fly_ssh_sess_t *s, fly_exec_t *x) {
  if (x->ch != NULL) {
    fly_ssh_zombie_add(s, x->ch);
    x->ch = NULL;
  }
}

static int exec_fail(fly_ssh_sess_t *s, fly_exec_t *x, const char *code,
                     const char *what) {
  fly_ssh_err_last(s, &x->op.req.err, code, what);
  exec_release_channel(s, x);
  return FLY_SSH_DONE;
}

/* Read what a stream has now.  Returns 1 on EOF of that stream, 0 when it
 * would block, or an FLY_SSH_* verdict + 10 to end the step. */
static int exec_read(fly_ssh_sess_t *s, fly_exec_t *x, int stream) {
  char buf[FLY_EXEC_READ];
  ssize_t n;

  for (;;) {
    n = libssh2_channel_read_ex(x->ch,
                                stream == 1 ? 0 : SSH_EXTENDED_DATA_STDERR,
                                buf, sizeof(buf));
    if (n == LIBSSH2_ERROR_EAGAIN) {
      x->read_blocked = fly_ssh_blocked_out(s);
      return x->read_blocked ? 10 + FLY_SSH_OUT : 0;
    }
    x->read_blocked = 0;
    if (n < 0) {
      if (fly_ssh_rc_dead(s, (int)n))
        return 10 + FLY_SSH_DEAD;
      exec_fail(s, x, "SSH_CHANNEL_FAILED", "reading command output");
      return 10 + FLY_SSH_DONE;
    }
    if (n == 0)
      return 1;
    s->progress = 1;
    if (exec_take(s, x, stream, buf, (size_t)n) != 0) {
      /* Closing the channel stops the remote command. */
      exec_release_channel(s, x);
      return 10 + FLY_SSH_DONE;
    }
  }
}

/* The outcome of one closing call (wait_closed, close): a step result to
 * return, or -1 to go on to the next state. */
static int close_step(fly_ssh_sess_t *s, int rc) {
  if (rc == LIBSSH2_ERROR_EAGAIN)
    return fly_ssh_blocked_out(s) ? FLY_SSH_OUT : FLY_SSH_WAIT;
  if (rc != 0 && fly_ssh_rc_dead(s, rc))
    return FLY_SSH_DEAD;
  return -1;
}

static int exec_step(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now) {
  fly_exec_t *x = (fly_exec_t *)op;
  int rc;

  switch (x->state) {
  case X_EXR:
    return x->exr_done ? FLY_SSH_DONE : FLY_SSH_WAIT;
  case X_WAIT:
    if (!x->no_exr) {
      int verdict;
      rc = exec_on_exr(s, x, now, &verdict);
      if (rc >= 0)
        return verdict;
      x->no_exr = 1;
    }
    if (!fly_ssh_chan_begin(s, op, now))
      return FLY_SSH_WAIT;
    x->state = X_OPEN;
    /* fall through */
  case X_OPEN:
    x->ch = libssh2_channel_open_session(s->ls);
    if (x->ch == NULL) {
      rc = fly_ssh_chan_failed(s, op, now, "opening a channel");
      if (s->opener != op)
        x->state = X_WAIT;
      return rc;
    }
    fly_ssh_chan_opened(s, op);
    x->state = X_EXEC;
    /* fall through */
  case X_EXEC:
    rc = libssh2_channel_exec(x->ch, x->cmdline);
    if (rc == LIBSSH2_ERROR_EAGAIN)
      return fly_ssh_blocked_out(s) ? FLY_SSH_OUT : FLY_SSH_WAIT;
    if (rc != 0) {
      if (fly_ssh_rc_dead(s, rc))
        return FLY_SSH_DEAD;
      return exec_fail(s, x, "SSH_EXEC_FAILED", "starting the command");
    }
    s->progress = 1;
    /* Without a timeout a running command may run for ever (keepalives
     * still notice a dead server); only starting it had a deadline. */
    if (x->timeout_ms == 0)
      op->deadline = UINT64_MAX;
    x->state = X_IO;
    /* fall through */
  case X_IO: {
    int r1, r2;
    /* A read left a send half done: libssh2 wants that same read repeated
     * before anything else sends, so stdin waits for it. */
    while (!x->eof_sent && !x->read_blocked) {
      if (x->in_off < x->in.len) {
        ssize_t n = libssh2_channel_write(x->ch, x->in.base + x->in_off,
                                          x->in.len - x->in_off);
        if (n == LIBSSH2_ERROR_EAGAIN) {
          if (fly_ssh_blocked_out(s))
            return FLY_SSH_OUT;
          break;
        }
        if (n < 0) {
          if (fly_ssh_rc_dead(s, (int)n))
            return FLY_SSH_DEAD;
          /* The command closed its side without reading all of stdin. */
          x->eof_sent = 1;
          break;
        }
        x->in_off += (size_t)n;
        s->progress = 1;
        continue;
      }
      rc = libssh2_channel_send_eof(x->ch);
      if (rc == LIBSSH2_ERROR_EAGAIN) {
        if (fly_ssh_blocked_out(s))
          return FLY_SSH_OUT;
        break;
      }
      if (rc != 0 && fly_ssh_rc_dead(s, rc))
        return FLY_SSH_DEAD;
      x->eof_sent = 1;
      s->progress = 1;
    }
    r1 = exec_read(s, x, 1);
    if (r1 >= 10)
      return r1 - 10;
    r2 = exec_read(s, x, 2);
    if (r2 >= 10)
      return r2 - 10;
    if (!(r1 == 1 && r2 == 1 && libssh2_channel_eof(x->ch)))
      return FLY_SSH_WAIT;
    x->state = X_CLOSED;
    s->progress = 1;
  }
    /* fall through */
  case X_CLOSED:
    /* The server's EOF ended the reading above, but its exit-status (or
     * exit-signal) comes later, when the command is reaped, and just before
     * its close: wait for that close before closing our side or reading the
     * status.  Read any earlier and libssh2 answers 0 for a status that has
     * not arrived (seen under load: `exit 1` reported as 0). */
    if ((rc = close_step(s, libssh2_channel_wait_closed(x->ch))) >= 0)
      return rc;
    x->state = X_CLOSE;
    s->progress = 1;
    /* fall through */
  case X_CLOSE:
    if ((rc = close_step(s, libssh2_channel_close(x->ch))) >= 0)
      return rc;
    {
      char *sig = NULL;
      size_t siglen = 0;
      x->exit_code = libssh2_channel_get_exit_status(x->ch);
      if (libssh2_channel_get_exit_signal(x->ch, &sig, &siglen, NULL, NULL,
                                          NULL, NULL) == 0 &&
          sig != NULL && siglen > 0)
        exec_set_signal(x, signal_number(sig));
      /* libssh2 allocated sig with the session's allocator (malloc). */
      free(sig);
    }
    x->state = X_FREE;
    s->progress = 1;
    /* fall through */
  case X_FREE:
    rc = libssh2_channel_free(x->ch);
    if (rc == LIBSSH2_ERROR_EAGAIN)
      return fly_ssh_blocked_out(s) ? FLY_SSH_OUT : FLY_SSH_WAIT;
    x->ch = NULL;
    fly_ssh_chan_freed(s);
    return FLY_SSH_DONE;
  }
  return FLY_SSH_WAIT;
}

static int exec_expire(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  fly_exec_t *x = (fly_exec_t *)op;

  switch (x->state) {
  case X_EXR:
    /* Not even RUNNING came back: the sandbox stopped answering before
     * the command started, as a channel open that never completes.
     * SSH_TIMEOUT, and the connection goes. */
    if (!x->ec.heard) {
      fly_exr_release(s, &x->ec, 0);
      return FLY_SSH_DEAD;
    }
    /* The executor's timeout did not end it: kill it and give up. */
    x->timed_out = 1;
    x->exit_code = 124;
    fly_exr_release(s, &x->ec, 1);
    return FLY_SSH_DONE;
  case X_WAIT:
    /* Starting the executor's channel cannot be left half done. */
    if (fly_exr_op_gone(s, op))
      return FLY_SSH_DEAD;
    fly_err_set(&op->req.err, "SSH_TIMEOUT",
                "ssh: no channel for the command within %llu ms",
                (unsigned long long)fly_ssh_op_budget(op));
    return FLY_SSH_DONE;
  case X_FREE:
    /* Finished: only the channel's free is left, for the session. */
    exec_release_channel(s, x);
    return FLY_SSH_DONE;
  case X_IO:
  case X_CLOSE:
  case X_CLOSED:
    /* The remote timeout did not end it: give up on our side. */
    x->timed_out = 1;
    x->exit_code = 124;
    exec_release_channel(s, x);
    return FLY_SSH_DONE;
  default:
    /* Opening the channel or starting the command. */
    return FLY_SSH_DEAD;
  }
}

static int exec_drop(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  fly_exec_t *x = (fly_exec_t *)op;
  if (x->on_exr) {
    /* START may have reached the executor: never run it twice. */
    fly_exr_release(s, &x->ec, 0);
    return 0;
  }
  fly_exr_op_gone(s, op);
  /* libssh2_session_free frees the channel. */
  x->ch = NULL;
  if (x->state > X_OPEN)
    return 0;
  x->state = X_WAIT;
  return 1;
}

static const fly_ssh_op_vt_t exec_ovt = {exec_step, exec_expire, exec_drop};

static void exec_start(fly_loop_t *loop, fly_req_t *req) {
  fly_ssh_op_start(loop, &((fly_exec_t *)req)->op);
}

static napi_value exec_result(napi_env env, fly_req_t *req) {
  fly_exec_t *x = (fly_exec_t *)req;
  napi_value obj;

  FLY_NAPI_CALL(env, napi_create_object(env, &obj), NULL);
  fly_js_set_int(env, obj, "exitCode", x->exit_code);
  fly_js_set_str(env, obj, "signal", x->signal); /* NULL -> null */
  fly_js_set_value(env, obj, "stdout",
                   x->text ? fly_js_text_from(env, &x->out, x->out_form)
                           : fly_js_buffer_from(env, &x->out));
  fly_js_set_value(env, obj, "stderr",
                   x->text ? fly_js_text_from(env, &x->err, x->err_form)
                           : fly_js_buffer_from(env, &x->err));
  fly_js_set_bool(env, obj, "timedOut", x->timed_out);
  return obj;
}

static void exec_free(napi_env env, fly_req_t *req) {
  fly_exec_t *x = (fly_exec_t *)req;
  fly_ssh_op_free(env, &x->op);
  free(x->cmdline);
  fly_buf_free(&x->in);
  fly_buf_free(&x->start);
  fly_buf_free(&x->out);
  fly_buf_free(&x->err);
  free(x->signal);
}

/* I/O thread: the output as text JS can take without decoding it. */
static void exec_finish(fly_req_t *req) {
  fly_exec_t *x = (fly_exec_t *)req;
  if (x->text) {
    x->out_form = fly_text_prepare(&x->out);
    x->err_form = fly_text_prepare(&x->err);
  }
}

static const fly_req_vt_t exec_vt = {exec_start, exec_result, exec_free,
                                     exec_finish};

/* sshExec({ session, command | argv, cwd?, env?, timeoutMs?,
 *           background?, stdin?, maxOutputBytes?, onChunk?, text? })
 *   -> Promise<{ exitCode, signal, stdout, stderr, timedOut }>
 * stdout/stderr are Buffers; with text: true, strings (ASCII taken in
 * place, other UTF-8 from 64 KiB decoded on the I/O thread), or Buffers for
 * smaller non-ASCII output, which JS decodes.  onChunk gets Buffers, or
 * with text strings, and then stdout/stderr are the whole output too
 * (without text they are empty when streamed). */
napi_value fly_napi_ssh_exec(napi_env env, napi_callback_info info) {
  napi_value opts;
  fly_exec_t *x;

  if (fly_js_arg_obj(env, info, 0, &opts) != 0)
    return NULL;
  x = fly_req_new(env, sizeof(*x), &exec_vt);
  if (x == NULL)
    return NULL;
  x->op.ovt = &exec_ovt;
  if (fly_ssh_op_init(env, opts, &x->op) != 0 ||
      (x->cmdline = fly_js_cmd_build_ex(env, opts, &x->timeout_ms, &x->in,
                                        &x->start)) == NULL ||
      (x->prefix_len = x->in.len, 0) != 0 ||
      fly_js_prop_bytes(env, opts, "stdin", &x->in) != 0 ||
      fly_js_prop_u64(env, opts, "maxOutputBytes", (uint64_t)64 << 20,
                      &x->max_output) != 0 ||
      fly_js_prop_func(env, opts, "onChunk", &x->op.req.on_chunk) != 0 ||
      fly_js_prop_bool(env, opts, "text", 0, &x->text) != 0)
    goto fail;
  x->streaming = x->op.req.on_chunk != NULL;
  if (x->start.len > FLY_EXEC_START_MAX)
    x->no_exr = 1;
  x->op.req.chunk_text = x->text;
  /* The whole command settles by its timeout plus the grace (counted from
   * now); without one, starting it is bounded by the op timeout. */
  if (x->timeout_ms > 0)
    x->op.timeout_ms = x->timeout_ms + FLY_EXEC_GRACE_MS;
  return fly_req_submit(env, &x->op.req);

fail:
  fly_req_free(env, &x->op.req);
  return NULL;
}
