/* loop.c: the I/O thread of an addon instance.
 *
 * One thread per napi_env owns the CURLM, every curl easy handle and every
 * libssh2 session.  The JS thread hands it requests through a queue under
 * one mutex and wakes it with curl_multi_wakeup (safe from any thread; wakes
 * coalesce).  It blocks in curl_multi_poll, with the SSH sockets as extra
 * fds, until a socket, a timer or a wakeup needs it.  Results go back through
 * one threadsafe function whose call_js settles promises on the JS thread.
 *
 * Lock order: only `mu` exists; nothing else is locked while it is held. */
#include "fly.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libssh2.h>

enum { FLY_MSG_DONE = 1, FLY_MSG_CHUNK = 2 };


/* A chunk message: up to FLY_CHUNK_MAX bytes of one stream.  64 KiB: V8
 * makes strings of up to ~128 KiB in its young generation, whose memory is
 * reused and warm, and larger ones in fresh mappings, page fault by page
 * fault (measured decoding 32 MiB here: 64 KiB pieces ~1,100 MiB/s, 128 KiB
 * and up ~25-40 MiB/s), so larger messages would cost the JS thread more. */
#define FLY_CHUNK_MAX ((size_t)64 << 10)

typedef struct fly_chunk_msg_s {
  fly_msg_t hdr;
  int stream;
  int ascii;           /* chunk_text: set when it is sent */
  size_t len;
  unsigned char data[FLY_CHUNK_MAX];
} fly_chunk_msg_t;

struct fly_loop_s {
  /* Set on the JS thread before the I/O thread starts; read-only after. */
  napi_threadsafe_function tsfn;
  pthread_t thread;

  /* Shared between threads, under mu. */
  pthread_mutex_t mu;
  fly_req_t *queue_head;
  fly_req_t *queue_tail;
  int exiting;

  /* I/O thread only (multi is created before the thread starts). */
  CURLM *multi;
  uint64_t wake_at;
  fly_req_t *pend_head;  /* requests with a chunk message being filled */
  void *api_state;
  void *ssh_state;

  /* JS thread only. */
  napi_env env;
  int started;
  int inflight;        /* submitted and not yet settled */
  int cleanup_added;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_ok;

/* curl_global_init and libssh2_init are not thread-safe: once per process,
 * before any I/O thread exists, and never undone (other instances may still
 * use them). */
static void global_init(void) {
  global_ok = curl_global_init(CURL_GLOBAL_ALL) == CURLE_OK &&
              libssh2_init(0) == 0;
}

uint64_t fly_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

CURLM *fly_loop_multi(fly_loop_t *loop) { return loop->multi; }
void **fly_loop_api_slot(fly_loop_t *loop) { return &loop->api_state; }
void **fly_loop_ssh_slot(fly_loop_t *loop) { return &loop->ssh_state; }

void fly_loop_wake_at(fly_loop_t *loop, uint64_t at) {
  if (at < loop->wake_at)
    loop->wake_at = at;
}

/* ---- requests: lifetime -------------------------------------------------- */

void fly_req_init(fly_req_t *req, const fly_req_vt_t *vt) {
  memset(req, 0, sizeof(*req));
  req->vt = vt;
  req->refs = 1;
  req->done.kind = FLY_MSG_DONE;
  req->done.req = req;
}

void *fly_req_new(napi_env env, size_t size, const fly_req_vt_t *vt) {
  fly_req_t *req = calloc(1, size);
  if (req == NULL) {
    fly_throw_nomem(env);
    return NULL;
  }
  fly_req_init(req, vt);
  return req;
}

void fly_req_free(napi_env env, fly_req_t *req) {
  if (req->vt->free != NULL)
    req->vt->free(env, req);
  if (env != NULL && req->on_chunk != NULL)
    (void)napi_delete_reference(env, req->on_chunk); /* freeing anyway */
  fly_err_clear(&req->err);
  free(req);
}

static void req_unref(napi_env env, fly_req_t *req) {
  if (__atomic_sub_fetch(&req->refs, 1, __ATOMIC_ACQ_REL) == 0)
    fly_req_free(env, req);
}

/* ---- I/O thread -> JS thread --------------------------------------------- */

/* call_js has nowhere to report a failed napi call: each status below is
 * ignored on purpose, and the promise is settled by whichever call works. */
static void settle(napi_env env, fly_loop_t *loop, fly_req_t *req) {
  napi_value v = NULL;
  napi_value exc;
  bool pending = false;

  if (req->deferred == NULL) {
    /* Detached (fly_req_submit_detached): nobody waits for the result. */
  } else {
    if (req->err.code == NULL && req->vt->result != NULL)
      v = req->vt->result(env, req);
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      (void)napi_get_and_clear_last_exception(env, &exc);
      (void)napi_reject_deferred(env, req->deferred, exc);
    } else if (req->err.code != NULL) {
      v = fly_err_to_js(env, &req->err);
      if (v == NULL)
        (void)napi_get_undefined(env, &v);
      (void)napi_reject_deferred(env, req->deferred, v);
    } else {
      if (v == NULL)
        (void)napi_get_undefined(env, &v);
      (void)napi_resolve_deferred(env, req->deferred, v);
    }
  }
  /* Nothing in flight: an idle client must not hold the process open. */
  if (--loop->inflight == 0)
    (void)napi_unref_threadsafe_function(env, loop->tsfn);
}

/* Like settle: a chunk whose delivery fails is dropped (statuses ignored on
 * purpose), but an exception thrown by the callback is not. */
static void deliver_chunk(napi_env env, fly_chunk_msg_t *c) {
  napi_value fn, recv, argv[2], exc;
  void *p;
  bool pending = false;
  fly_req_t *req = c->hdr.req;
  napi_status st;

  /* Text: a string made straight from the bytes, in V8's young generation
   * (warm memory), no Buffer and no decoder in JS; the I/O thread held
   * back any character cut at the end. */
  if (!req->chunk_text)
    st = napi_create_buffer_copy(env, c->len, c->data, &p, &argv[1]);
  else if (c->ascii)
    st = napi_create_string_latin1(env, (const char *)c->data, c->len,
                                   &argv[1]);
  else
    st = napi_create_string_utf8(env, (const char *)c->data, c->len,
                                 &argv[1]);
  if (st != napi_ok || req->on_chunk == NULL ||
      napi_get_reference_value(env, req->on_chunk, &fn) != napi_ok ||
      fn == NULL || napi_get_undefined(env, &recv) != napi_ok ||
      napi_create_int32(env, c->stream, &argv[0]) != napi_ok)
    return;
  (void)napi_call_function(env, recv, fn, 2, argv, NULL);
  /* A throwing callback is the user's bug: surface it as an uncaught
   * exception rather than swallowing it. */
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
      napi_get_and_clear_last_exception(env, &exc) == napi_ok)
    (void)napi_fatal_exception(env, exc);
}

static void call_js(napi_env env, napi_value js_cb, void *context,
                    void *data) {
  fly_loop_t *loop = context;
  fly_msg_t *m = data;
  fly_req_t *req = m->req;

  (void)js_cb;
  if (m->kind == FLY_MSG_CHUNK) {
    if (env != NULL)
      deliver_chunk(env, (fly_chunk_msg_t *)m);
    free(m);
  } else if (env != NULL) {
    settle(env, loop, req);
  }
  /* With env == NULL the environment is being torn down: only free. */
  req_unref(env, req);
}

static void chunk_send(fly_loop_t *loop, fly_req_t *req, fly_chunk_msg_t *c) {
  if (req->chunk_text)
    c->ascii = fly_bytes_ascii(c->data, c->len);
  /* The message took its reference on req when it was made. */
  if (c->len == 0 ||
      napi_call_threadsafe_function(loop->tsfn, c, napi_tsfn_nonblocking) !=
          napi_ok) {
    free(c);
    req_unref(NULL, req);
  }
}

/* Sends req's pending chunk message, if any. */
static void chunk_flush(fly_loop_t *loop, fly_req_t *req) {
  fly_chunk_msg_t *c = req->pending;

  if (c == NULL)
    return;
  req->pending = NULL;
  if (req->pend_prev != NULL)
    req->pend_prev->pend_next = req->pend_next;
  else
    loop->pend_head = req->pend_next;
  if (req->pend_next != NULL)
    req->pend_next->pend_prev = req->pend_prev;
  req->pend_prev = req->pend_next = NULL;
  if (req->chunk_text) {
    /* A character cut at the end waits for the rest (the next chunk of
     * this stream starts with it). */
    size_t t = fly_utf8_tail(c->data, c->len);
    memcpy(req->carry[c->stream], c->data + c->len - t, t);
    req->carry_len[c->stream] = t;
    c->len -= t;
  }
  chunk_send(loop, req, c);
}

/* The end of req: characters still held back go as they are (decoded as
 * the whole output would be, to U+FFFD). */
static void chunk_carry_out(fly_loop_t *loop, fly_req_t *req) {
  int s;
  for (s = 1; s <= 2; s++) {
    fly_chunk_msg_t *c;
    if (req->carry_len[s] == 0)
      continue;
    c = malloc(sizeof(*c));
    if (c == NULL)
      return;
    c->hdr.kind = FLY_MSG_CHUNK;
    c->hdr.req = req;
    c->stream = s;
    c->len = req->carry_len[s];
    memcpy(c->data, req->carry[s], c->len);
    req->carry_len[s] = 0;
    __atomic_add_fetch(&req->refs, 1, __ATOMIC_ACQ_REL);
    chunk_send(loop, req, c);
  }
}

/* End of a loop turn: what arrived during it goes to JS. */
static void chunks_flush_all(fly_loop_t *loop) {
  while (loop->pend_head != NULL)
    chunk_flush(loop, loop->pend_head);
}

void fly_loop_done(fly_loop_t *loop, fly_req_t *req) {
  if (req->vt->finish != NULL)
    req->vt->finish(req);
  /* Its output first: the queue to JS is in order. */
  chunk_flush(loop, req);
  chunk_carry_out(loop, req);
  if (napi_call_threadsafe_function(loop->tsfn, &req->done,
                                    napi_tsfn_nonblocking) != napi_ok)
    req_unref(NULL, req); /* closing: the environment is going away */
}

int fly_loop_chunk(fly_loop_t *loop, fly_req_t *req, int stream,
                   const void *data, size_t len) {
  const unsigned char *p = data;

  if (stream != 1 && stream != 2)
    return -1;
  while (len > 0) {
    fly_chunk_msg_t *c = req->pending;
    size_t n;
    if (c != NULL && (c->stream != stream || c->len == FLY_CHUNK_MAX)) {
      chunk_flush(loop, req);
      c = NULL;
    }
    if (c == NULL) {
      c = malloc(sizeof(*c));
      if (c == NULL)
        return -1;
      c->hdr.kind = FLY_MSG_CHUNK;
      c->hdr.req = req;
      c->stream = stream;
      c->len = 0;
      /* What was held back of this stream comes first (at most 3 bytes,
       * so it always fits). */
      if (req->carry_len[stream] > 0) {
        memcpy(c->data, req->carry[stream], req->carry_len[stream]);
        c->len = req->carry_len[stream];
        req->carry_len[stream] = 0;
      }
      __atomic_add_fetch(&req->refs, 1, __ATOMIC_ACQ_REL);
      req->pending = c;
      req->pend_prev = NULL;
      req->pend_next = loop->pend_head;
      if (loop->pend_head != NULL)
        loop->pend_head->pend_prev = req;
      loop->pend_head = req;
    }
    n = FLY_CHUNK_MAX - c->len;
    if (n > len)
      n = len;
    memcpy(c->data + c->len, p, n);
    c->len += n;
    p += n;
    len -= n;
  }
  return 0;
}

/* ---- the I/O thread ------------------------------------------------------ */

/* Takes the whole queue under the lock; the caller runs it unlocked. */
static fly_req_t *take_queue(fly_loop_t *loop, int *exiting) {
  fly_req_t *q;
  pthread_mutex_lock(&loop->mu);
  q = loop->queue_head;
  loop->queue_head = loop->queue_tail = NULL;
  *exiting = loop->exiting;
  pthread_mutex_unlock(&loop->mu);
  return q;
}

static void abort_queue(fly_loop_t *loop, fly_req_t *q) {
  while (q != NULL) {
    fly_req_t *next = q->next;
    fly_err_set(&q->err, "FLY_ABORTED", "the client is shutting down");
    fly_loop_done(loop, q);
    q = next;
  }
}

static void *loop_main(void *arg) {
  fly_loop_t *loop = arg;
  struct curl_waitfd *fds = NULL;
  int nfds_cap = 0;
  int exiting = 0;

  for (;;) {
    fly_req_t *q = take_queue(loop, &exiting);
    uint64_t now, next;
    CURLMsg *msg;
    int running, left, n;
    long timeout;

    if (exiting) {
      abort_queue(loop, q);
      break;
    }
    while (q != NULL) {
      fly_req_t *next_req = q->next;
      q->next = NULL;
      q->vt->start(loop, q);
      q = next_req;
    }

    curl_multi_perform(loop->multi, &running);
    while ((msg = curl_multi_info_read(loop->multi, &left)) != NULL) {
      if (msg->msg == CURLMSG_DONE)
        fly_api_on_done(loop, msg->easy_handle, msg->data.result);
    }

    now = fly_now_ms();
    loop->wake_at = UINT64_MAX;
    next = fly_api_run_timers(loop, now);
    fly_ssh_step(loop, now);
    chunks_flush_all(loop);
    if (fly_ssh_deadline(loop) < next)
      next = fly_ssh_deadline(loop);
    if (loop->wake_at < next)
      next = loop->wake_at;

    /* One wait fd per SSH socket, as many as there are sessions. */
    n = fly_ssh_fds(loop, fds, nfds_cap);
    if (n > nfds_cap) {
      struct curl_waitfd *p = realloc(fds, (size_t)n * sizeof(*fds));
      if (p != NULL) {
        fds = p;
        nfds_cap = n;
      }
      n = fly_ssh_fds(loop, fds, nfds_cap);
    }
    now = fly_now_ms();
    if (next == UINT64_MAX)
      timeout = 10000;
    else if (next <= now)
      timeout = 0;
    else
      timeout = (long)(next - now > 10000 ? 10000 : next - now);
    curl_multi_poll(loop->multi, n > 0 ? fds : NULL, (unsigned)n,
                    (int)timeout, NULL);
  }

  /* Fail everything still running; call_js frees it (or frees it with
   * env == NULL when the environment is already going). */
  free(fds);
  fly_api_shutdown(loop);
  fly_ssh_shutdown(loop);
  chunks_flush_all(loop);
  /* The last thing this thread does; nothing to report a failure to. */
  (void)napi_release_threadsafe_function(loop->tsfn, napi_tsfn_release);
  return NULL;
}

/* ---- JS thread ----------------------------------------------------------- */

/* Env teardown (process exit, worker end): stop the thread and wait for it.
 * It never waits on the JS thread (tsfn calls are non-blocking), so the join
 * is bounded by one loop turn. */
static void cleanup_hook(void *arg) {
  fly_loop_t *loop = arg;

  if (!loop->started)
    return;
  pthread_mutex_lock(&loop->mu);
  loop->exiting = 1;
  pthread_mutex_unlock(&loop->mu);
  curl_multi_wakeup(loop->multi);
  pthread_join(loop->thread, NULL);
  curl_multi_cleanup(loop->multi);
  loop->multi = NULL;
  loop->started = 0;
  loop->exiting = 0;
  loop->inflight = 0;
}

/* shutdown(): stop the I/O thread now.  process.exit() ends the process
 * without running env cleanup hooks, while the thread may be inside libssh2
 * or OpenSSL; lib/native.js calls this from the process 'exit' event so that
 * the thread is joined before atexit handlers tear those libraries down.
 * Requests still running are abandoned (their promises never settle: the
 * process is ending).  A later request starts a new thread. */
napi_value fly_napi_shutdown(napi_env env, napi_callback_info info) {
  fly_loop_t *loop = NULL;
  (void)info;
  FLY_NAPI_CALL(env, napi_get_instance_data(env, (void **)&loop), NULL);
  if (loop != NULL)
    cleanup_hook(loop);
  return NULL;
}

static void instance_finalize(napi_env env, void *data, void *hint) {
  fly_loop_t *loop = data;
  (void)hint;
  /* The environment is going away: a failure to remove the hook changes
   * nothing (it ran already or never will). */
  if (loop->cleanup_added)
    (void)napi_remove_env_cleanup_hook(env, cleanup_hook, loop);
  if (loop->started)
    cleanup_hook(loop);
  pthread_mutex_destroy(&loop->mu);
  free(loop);
}

int fly_loop_instance_init(napi_env env) {
  fly_loop_t *loop;

  pthread_once(&global_once, global_init);
  if (!global_ok) {
    (void)napi_throw_error(env, "FLY_INTERNAL",
                     "libcurl or libssh2 failed to initialise");
    return -1;
  }
  loop = calloc(1, sizeof(*loop));
  if (loop == NULL) {
    fly_throw_nomem(env);
    return -1;
  }
  pthread_mutex_init(&loop->mu, NULL);
  loop->env = env;
  loop->wake_at = UINT64_MAX;
  if (napi_set_instance_data(env, loop, instance_finalize, NULL) != napi_ok) {
    pthread_mutex_destroy(&loop->mu);
    free(loop);
    fly_napi_throw_last(env);
    return -1;
  }
  return 0;
}

static int loop_start(napi_env env, fly_loop_t *loop) {
  napi_value name;

  loop->multi = curl_multi_init();
  if (loop->multi == NULL) {
    (void)napi_throw_error(env, "FLY_INTERNAL", "curl_multi_init failed");
    return -1;
  }
  /* Keep-alive: a few connections per host stay cached for reuse. */
  curl_multi_setopt(loop->multi, CURLMOPT_MAXCONNECTS, 16L);
  if (napi_create_string_utf8(env, "fly:io", NAPI_AUTO_LENGTH, &name) !=
          napi_ok ||
      napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL,
                                      loop, call_js, &loop->tsfn) != napi_ok)
    goto fail;
  if (napi_unref_threadsafe_function(env, loop->tsfn) != napi_ok ||
      pthread_create(&loop->thread, NULL, loop_main, loop) != 0) {
    (void)napi_release_threadsafe_function(loop->tsfn, napi_tsfn_abort);
    goto fail;
  }
  loop->started = 1;
  if (!loop->cleanup_added) {
    /* Without the hook the thread is still joined by instance_finalize. */
    if (napi_add_env_cleanup_hook(env, cleanup_hook, loop) == napi_ok)
      loop->cleanup_added = 1;
  }
  return 0;

fail:
  curl_multi_cleanup(loop->multi);
  loop->multi = NULL;
  fly_napi_throw_last(env);
  return -1;
}

static void queue_push(fly_loop_t *loop, fly_req_t *req) {
  pthread_mutex_lock(&loop->mu);
  if (loop->queue_tail != NULL)
    loop->queue_tail->next = req;
  else
    loop->queue_head = req;
  loop->queue_tail = req;
  pthread_mutex_unlock(&loop->mu);
  curl_multi_wakeup(loop->multi);
}

napi_value fly_req_submit(napi_env env, fly_req_t *req) {
  fly_loop_t *loop = NULL;
  napi_value promise;

  if (napi_get_instance_data(env, (void **)&loop) != napi_ok || loop == NULL ||
      (!loop->started && loop_start(env, loop) != 0) ||
      napi_create_promise(env, &req->deferred, &promise) != napi_ok) {
    fly_napi_throw_last(env);
    fly_req_free(env, req);
    return NULL;
  }
  /* A failed ref only lets the process exit early; the request still
   * runs. */
  if (loop->inflight++ == 0)
    (void)napi_ref_threadsafe_function(env, loop->tsfn);
  queue_push(loop, req);
  return promise;
}

int fly_req_submit_detached(napi_env env, fly_req_t *req) {
  fly_loop_t *loop = NULL;

  /* Not running: nothing of the request's exists on the I/O thread. */
  if (napi_get_instance_data(env, (void **)&loop) != napi_ok || loop == NULL ||
      !loop->started) {
    fly_req_free(env, req);
    return -1;
  }
  if (loop->inflight++ == 0)
    (void)napi_ref_threadsafe_function(env, loop->tsfn);
  queue_push(loop, req);
  return 0;
}
