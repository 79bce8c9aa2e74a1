/* fly.h: the shared declarations of the native core.
 *
 * Threads.  Every addon instance (one per napi_env) has one I/O thread,
 * started lazily.  It owns the CURLM, every curl easy handle and every libssh2
 * session.  The JS thread validates arguments, copies them into a request,
 * queues it and returns a promise; the I/O thread runs the request and hands
 * it back through one threadsafe function, whose call_js settles the promise
 * on the JS thread.  No napi_* call happens off the JS thread and no curl or
 * libssh2 handle is touched off the I/O thread.
 *
 * Ownership of a request: JS thread (fly_req_submit) -> I/O thread (vt->start
 * and whatever module runs it) -> fly_loop_done() -> JS thread (call_js, which
 * frees it).  Chunk messages hold a reference so that the request outlives
 * every message that names it.
 */
#ifndef FLY_H
#define FLY_H

/* FLY_NO_NAPI: the pure modules (buf.c, quote.c, keys.c, error.c) compile
 * without Node headers for the C tests and fuzzers. */
#ifndef FLY_NO_NAPI
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>
#endif

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

/* ------------------------------------------------------------------------ */
/* Growable byte buffer (buf.c).  base is always NUL-terminated when cap > 0,
 * so a buffer of text can be used as a C string.  From FLY_BUF_MAP_MIN bytes
 * on, base is a private mapping of cap bytes with transparent huge pages
 * asked for (mapped = 1): a large result (a file read, command output) is
 * then written into 2 MiB pages, one page fault per 2 MiB instead of one
 * per 4 KiB, which on a virtual machine is most of the cost of touching
 * fresh memory (measured here: 100 MiB written into fresh 4 KiB pages
 * ~450 ms, into huge pages ~20 ms). */

typedef struct fly_buf_s {
  char *base;
  size_t len;
  size_t cap;
  int mapped;          /* base is a mapping of cap bytes (munmap) */
} fly_buf_t;

#define FLY_BUF_MAP_MIN ((size_t)2 << 20)

int fly_buf_reserve(fly_buf_t *b, size_t extra);              /* 0 or -1 */
int fly_buf_append(fly_buf_t *b, const void *data, size_t len); /* 0 or -1 */
int fly_buf_printf(fly_buf_t *b, const char *fmt, ...);         /* 0 or -1 */
void fly_buf_free(fly_buf_t *b);
/* Hands the bytes to the caller (who frees them with free()) and empties
 * the buffer; a mapped buffer is copied into malloc'ed memory first (NULL
 * when that fails).  For small text: large results go by fly_buf_take. */
char *fly_buf_steal(fly_buf_t *b, size_t *len);
/* Hands base (len bytes, in a block of *cap bytes, *mapped set when it is a
 * mapping) to the caller, who frees it with fly_buf_release, and empties
 * the buffer. */
char *fly_buf_take(fly_buf_t *b, size_t *len, size_t *cap, int *mapped);
void fly_buf_release(void *base, size_t cap, int mapped);

/* Secrets (API token, private key, password) are wiped before their memory
 * goes back, with OPENSSL_cleanse: a plain memset right before free() is a
 * dead store the compiler may drop.  The one way to do it (buf.c). */
void fly_wipe(void *p, size_t n);
/* Wipes a NUL-terminated secret and frees it; NULL is fine. */
void fly_secret_free(char *s);
/* Wipes a buffer's whole block (it may have held a secret) and frees it. */
void fly_buf_wipe_free(fly_buf_t *b);

/* ------------------------------------------------------------------------ */
/* Text for JS (text.c). */

/* 1 when every byte is below 0x80: the UTF-8 text is then its own Latin-1
 * form, which V8 can use as a string in place. */
int fly_bytes_ascii(const void *data, size_t len);
/* UTF-8 bytes -> UTF-16 units (host order) in out (len counts bytes), as
 * the WHATWG decoder does it (ill-formed subsequences -> U+FFFD).  0, or
 * -1 when out of memory. */
int fly_utf8_to_utf16(const void *data, size_t len, fly_buf_t *out);
/* How many bytes at the end of data are the start of a character that the
 * next bytes may complete (0-3): a stream decoded in pieces holds those
 * back so that each piece decodes as the whole would. */
size_t fly_utf8_tail(const void *data, size_t len);
/* The form in which b's UTF-8 goes to JS: FLY_TEXT_LATIN1 (all ASCII, b
 * unchanged), FLY_TEXT_UTF16 (b now holds the UTF-16 decoding) or
 * FLY_TEXT_BYTES (small, or out of memory: b unchanged, JS decodes). */
enum { FLY_TEXT_BYTES = 0, FLY_TEXT_LATIN1, FLY_TEXT_UTF16 };
#define FLY_TEXT_DECODE_MIN ((size_t)64 << 10)
int fly_text_prepare(fly_buf_t *b);

/* ------------------------------------------------------------------------ */
/* Errors (error.c).  code is a static string such as "FLY_NOT_FOUND"; NULL
 * means no error.  The message never contains a token, key or password. */

typedef struct fly_err_s {
  const char *code;
  int status;          /* HTTP status, or 0 */
  long lib_code;       /* curl, libssh2 or SFTP code, or 0 */
  char message[512];
  char *fly_error;     /* the Fly "error" text of an HTTP error, heap or NULL */
  char *request_id;    /* fly-request-id of an HTTP error, heap or NULL */
  char *path;          /* the remote path of an SFTP error, heap or NULL */
} fly_err_t;

void fly_err_set(fly_err_t *e, const char *code, const char *fmt, ...);
void fly_err_set_path(fly_err_t *e, const char *path);
void fly_err_clear(fly_err_t *e);
#ifndef FLY_NO_NAPI
/* JS thread: a JS Error with .code, and .status/.flyError/.requestId/.path
 * where set. */
napi_value fly_err_to_js(napi_env env, const fly_err_t *e);
/* JS thread: throw a TypeError/RangeError with code ERR_INVALID_ARG. */
void fly_throw_invalid(napi_env env, const char *fmt, ...);
/* JS thread: throw the one out-of-memory error (code ERR_NO_MEMORY). */
void fly_throw_nomem(napi_env env);
#endif

/* ------------------------------------------------------------------------ */
/* Requests. */

typedef struct fly_loop_s fly_loop_t;
typedef struct fly_req_s fly_req_t;

#ifndef FLY_NO_NAPI
typedef struct fly_req_vt_s {
  /* I/O thread: the request came off the queue; run it.  When it ends
   * (success or error in req->err) the module calls fly_loop_done(). */
  void (*start)(fly_loop_t *loop, fly_req_t *req);
  /* JS thread: the value the promise resolves with (req->err.code is NULL).
   * Return NULL to resolve with undefined. */
  napi_value (*result)(napi_env env, fly_req_t *req);
  /* JS thread with env, or any thread with env == NULL during teardown:
   * free the type's own fields (not req itself).  With env == NULL, skip
   * napi_delete_reference (the environment frees references). */
  void (*free)(napi_env env, fly_req_t *req);
  /* I/O thread, optional: the request is finished and about to go to the
   * JS thread (fly_loop_done); work on the result that is better done off
   * the JS thread goes here. */
  void (*finish)(fly_req_t *req);
} fly_req_vt_t;

/* What the I/O thread sends to the JS thread: a finished request, or a chunk
 * of a request's output (loop.c). */
typedef struct fly_msg_s {
  int kind;
  fly_req_t *req;
} fly_msg_t;

struct fly_req_s {
  const fly_req_vt_t *vt;
  fly_req_t *next;          /* queue link; owned by whoever holds the req */
  fly_err_t err;            /* written by the I/O thread, read in call_js */
  /* JS thread only: */
  napi_deferred deferred;
  napi_ref on_chunk;        /* optional function(stream:int, chunk:Buffer) */
  int refs;                 /* atomic: the loop's, plus one per chunk */
  fly_msg_t done;           /* the completion message, never allocated */
  /* I/O thread only (loop.c): the chunk message being filled, and the
   * loop's list of requests that have one. */
  void *pending;
  fly_req_t *pend_prev, *pend_next;
  /* Set before submit: chunks go to on_chunk as strings.  I/O thread: the
   * unfinished character held back from each stream's last chunk. */
  int chunk_text;
  unsigned char carry[3][4];
  size_t carry_len[3];
};

/* JS thread: init a request of type vt (zeroed first). */
void fly_req_init(fly_req_t *req, const fly_req_vt_t *vt);
/* JS thread: calloc a request of size bytes (whose first member is a
 * fly_req_t) and init it; NULL with an exception pending when out of memory. */
void *fly_req_new(napi_env env, size_t size, const fly_req_vt_t *vt);
/* JS thread: queue req to the instance's I/O thread (starting it if needed)
 * and create the promise.  On failure req is freed and an exception is
 * pending; returns NULL. */
napi_value fly_req_submit(napi_env env, fly_req_t *req);
/* JS thread: queue req with no promise (its result is dropped), e.g. from
 * a finalizer.  Does nothing but free req when the I/O thread is not
 * running.  0, or -1 when req was freed unsent. */
int fly_req_submit_detached(napi_env env, fly_req_t *req);
/* JS thread: free a request that was never submitted (vt->free, the
 * on_chunk reference, the error, the request). */
void fly_req_free(napi_env env, fly_req_t *req);
#endif

/* ------------------------------------------------------------------------ */
/* The I/O thread (loop.c). */

/* JS thread, module init: create this instance's loop state (no thread yet)
 * and store it with napi_set_instance_data.  0 or -1 (exception pending). */
#ifndef FLY_NO_NAPI
int fly_loop_instance_init(napi_env env);
/* shutdown(): join the I/O thread now (before process exit). */
napi_value fly_napi_shutdown(napi_env env, napi_callback_info info);
#endif

/* I/O thread: the request is finished; queue it for call_js.  After this the
 * caller must not touch req. */
void fly_loop_done(fly_loop_t *loop, fly_req_t *req);
/* I/O thread: deliver a chunk of output (stream 1 stdout, 2 stderr) to the
 * request's on_chunk callback.  Copies data.  Chunks of one stream that
 * arrive in one loop turn are coalesced into one message of at most
 * FLY_CHUNK_MAX bytes, sent at the end of the turn (or before the request's
 * completion, or a chunk of the other stream): fewer calls into JS, in
 * order.  0, or -1 when out of memory. */
int fly_loop_chunk(fly_loop_t *loop, fly_req_t *req, int stream,
                   const void *data, size_t len);
/* I/O thread: the loop's multi handle (for api.c). */
CURLM *fly_loop_multi(fly_loop_t *loop);
/* I/O thread: ask the loop to wake no later than at (fly_now_ms clock). */
void fly_loop_wake_at(fly_loop_t *loop, uint64_t at);
/* Monotonic milliseconds. */
uint64_t fly_now_ms(void);

/* Per-module state hung off the loop, owned by the I/O thread. */
void **fly_loop_api_slot(fly_loop_t *loop);   /* api.c stores its state here */
void **fly_loop_ssh_slot(fly_loop_t *loop);   /* ssh.c stores its state here */

/* ------------------------------------------------------------------------ */
/* Machines API over libcurl (api.c).  I/O thread hooks: */

/* A curl easy handle finished (from curl_multi_info_read). */
void fly_api_on_done(fly_loop_t *loop, CURL *easy, CURLcode rc);
/* Timers (retry backoff): run what is due; return the next deadline or
 * UINT64_MAX. */
uint64_t fly_api_run_timers(fly_loop_t *loop, uint64_t now);
void fly_api_shutdown(fly_loop_t *loop);
#ifndef FLY_NO_NAPI
napi_value fly_napi_api(napi_env env, napi_callback_info info);
#endif

/* ------------------------------------------------------------------------ */
/* SSH (ssh.c, exec.c, sftp.c).  I/O thread hooks called by loop.c: */

/* Advance every session and operation; called every loop turn. */
void fly_ssh_step(fly_loop_t *loop, uint64_t now);
/* Fill up to max wait fds with the sessions' sockets (events from
 * libssh2_session_block_directions, or CURL_WAIT_POLLIN when idle).  Returns
 * how many are needed, which may be more than max (then only max were
 * filled: call again with room for all). */
int fly_ssh_fds(fly_loop_t *loop, struct curl_waitfd *fds, int max);
/* Nearest timer (connect retry, keepalive, timeouts) or UINT64_MAX. */
uint64_t fly_ssh_deadline(fly_loop_t *loop);
/* Exit: fail every operation (FLY_ABORTED via fly_loop_done), close and
 * free every session. */
void fly_ssh_shutdown(fly_loop_t *loop);

#ifndef FLY_NO_NAPI
napi_value fly_napi_ssh_exec(napi_env env, napi_callback_info info);
napi_value fly_napi_sftp(napi_env env, napi_callback_info info);
napi_value fly_napi_sftp_batch(napi_env env, napi_callback_info info);
napi_value fly_napi_ssh_close(napi_env env, napi_callback_info info);
/* sshOpen(target) -> handle (sync), the session of sshExec/sftp/sshClose. */
napi_value fly_napi_ssh_open(napi_env env, napi_callback_info info);
/* sshStats() -> { connects, sessions } (sync), for tests of session reuse
 * and release. */
napi_value fly_napi_ssh_stats(napi_env env, napi_callback_info info);
#endif

/* ------------------------------------------------------------------------ */
/* Keys (keys.c): OpenSSL ed25519. */

typedef struct fly_keypair_s {
  char *private_openssh; /* "-----BEGIN OPENSSH PRIVATE KEY-----\n..." */
  char *public_openssh;  /* "ssh-ed25519 AAAA... comment" */
  char *fingerprint;     /* "SHA256:<base64 without padding>" */
} fly_keypair_t;

int fly_keypair_generate(fly_keypair_t *kp, const char *comment, fly_err_t *e);
void fly_keypair_free(fly_keypair_t *kp);
/* Public key line and fingerprint of an OpenSSH-format ed25519 private key
 * (unencrypted).  Fills public_openssh and fingerprint; private_openssh is
 * a copy of the input. */
int fly_keypair_from_private(fly_keypair_t *kp, const char *private_openssh,
                             fly_err_t *e);
/* "SHA256:..." from a raw SSH public key blob (as libssh2_session_hostkey
 * returns it). Caller frees. */
char *fly_fingerprint_sha256(const unsigned char *blob, size_t len);
#ifndef FLY_NO_NAPI
napi_value fly_napi_keygen(napi_env env, napi_callback_info info);
napi_value fly_napi_key_info(napi_env env, napi_callback_info info);
#endif

/* ------------------------------------------------------------------------ */
/* Shell quoting and the remote command line (quote.c). */

/* Appends s as one POSIX shell word ('...' with '\'' for quotes). */
int fly_quote_append(fly_buf_t *out, const char *s, size_t len);
/* 1 if name is a valid environment variable name ^[A-Za-z_][A-Za-z0-9_]*$ */
int fly_env_name_valid(const char *name);

typedef struct fly_cmd_s {
  const char *command;      /* a shell command line, or NULL when argv */
  const char *const *argv;  /* program and arguments, each quoted */
  size_t argc;
  const char *cwd;          /* NULL for the login directory */
  const char *const *env_names;
  const char *const *env_values;
  size_t envc;
  uint64_t timeout_ms;      /* 0 = none: remote kill of the process group */
  int background;           /* detach, return at once */
} fly_cmd_t;

/* The remote command line for sh -c semantics; caller frees.  NULL with e
 * set (ERR_INVALID_ARG) on a bad env name or NUL byte. */
char *fly_cmd_build(const fly_cmd_t *cmd, fly_err_t *e);
/* The same for a channel whose stdin we write: when the line would be
 * longer than max_line, the script goes into *prefix (to be written on
 * stdin before the command's own) and the line that reads and runs it is
 * short.  Otherwise *prefix stays empty. */
char *fly_cmd_build_stdin(const fly_cmd_t *cmd, size_t max_line,
                          fly_buf_t *prefix, fly_err_t *e);
/* ------------------------------------------------------------------------ */
/* Frames of the executor protocol (frame.c): the frame types, flags and
 * limits are docker/flyexec_proto.h's, shared with the executor itself
 * (docker/flyexec.c, which documents the payloads). */
#include "../docker/flyexec_proto.h"

typedef struct fly_frame_s {
  int type;
  uint32_t id;
  const unsigned char *data;  /* points into the parsed buffer */
  size_t len;
} fly_frame_t;

/* One frame at the front of buf: its size (> 0) with *f set, 0 when more
 * bytes are needed, -1 when its length is impossible (under 5, or a payload
 * over max_payload), which is known from the first 4 bytes. */
int fly_frame_parse(const void *buf, size_t len, size_t max_payload,
                    fly_frame_t *f);
/* Appends one frame (len <= FLY_FRAME_MAX); 0 or -1. */
int fly_frame_put(fly_buf_t *b, int type, uint32_t id, const void *data,
                  size_t len);
/* Appends cmd as a START payload (flags without FLY_START_STDIN). */
int fly_frame_start_payload(fly_buf_t *b, const fly_cmd_t *cmd);
uint32_t fly_frame_get32(const void *p);

#ifndef FLY_NO_NAPI
/* JS thread: the command line from an options object's command/argv/cwd/
 * env/timeoutMs/background (ERR_INVALID_ARG thrown on bad input); caller
 * frees.  *timeout_ms gets timeoutMs when not NULL.  prefix NULL: one
 * argument's limit applies (buildCommand); else fly_cmd_build_stdin. */
char *fly_js_cmd_build(napi_env env, napi_value opts, uint64_t *timeout_ms,
                       fly_buf_t *prefix);
/* The same, and *start gets the command as an executor START payload. */
char *fly_js_cmd_build_ex(napi_env env, napi_value opts, uint64_t *timeout_ms,
                          fly_buf_t *prefix, fly_buf_t *start);
napi_value fly_napi_build_command(napi_env env, napi_callback_info info);
#endif

/* ------------------------------------------------------------------------ */
#ifndef FLY_NO_NAPI
/* JS helpers (js.c), JS thread only.  Each returns 0, or -1 with an
 * ERR_INVALID_ARG exception pending.  Strings are malloc'ed copies. */

int fly_js_str(napi_env env, napi_value v, const char *what, char **out);
/* Property name of obj: absent/undefined/null -> *out = NULL (0) unless
 * required. */
int fly_js_prop_str(napi_env env, napi_value obj, const char *name,
                    int required, char **out);
int fly_js_prop_u64(napi_env env, napi_value obj, const char *name,
                    uint64_t dflt, uint64_t *out);
int fly_js_prop_bool(napi_env env, napi_value obj, const char *name,
                     int dflt, int *out);
/* A Buffer/TypedArray/string property appended to out (absent -> nothing). */
int fly_js_prop_bytes(napi_env env, napi_value obj, const char *name,
                      fly_buf_t *out);
/* A Buffer property pinned with a reference instead of copied: its bytes
 * stay where they are (V8 never moves a backing store) and may be read on
 * the I/O thread until the reference is deleted on the JS thread.  A string
 * is copied into *copy instead.  Absent -> NULL, 0. */
int fly_js_prop_pin(napi_env env, napi_value obj, const char *name,
                    napi_ref *ref, fly_buf_t *copy, const char **data,
                    size_t *len);
/* A function property, kept with a reference (absent -> NULL). */
int fly_js_prop_func(napi_env env, napi_value obj, const char *name,
                     napi_ref *out);
/* An object of string values -> parallel arrays (caller frees each). */
int fly_js_prop_strmap(napi_env env, napi_value obj, const char *name,
                       char ***names, char ***values, size_t *count);
/* An array of strings -> a vector (absent -> NULL, 0). */
int fly_js_prop_strv(napi_env env, napi_value obj, const char *name,
                     char ***out, size_t *count);
void fly_strv_free(char **v, size_t n);
/* argv[idx] must be an object. */
int fly_js_arg_obj(napi_env env, napi_callback_info info, size_t idx,
                   napi_value *out);

/* Set obj[name] = value helpers; on failure an exception is left pending
 * (settle() then rejects with it). */
void fly_js_set_str(napi_env env, napi_value obj, const char *name,
                    const char *s);
void fly_js_set_int(napi_env env, napi_value obj, const char *name,
                    int64_t v);
void fly_js_set_double(napi_env env, napi_value obj, const char *name,
                       double v);
void fly_js_set_bool(napi_env env, napi_value obj, const char *name, int v);
/* v == NULL (a failed build of v) leaves an exception pending too. */
void fly_js_set_value(napi_env env, napi_value obj, const char *name,
                      napi_value v);
/* A Buffer that takes ownership of buf's bytes (no copy); NULL with an
 * exception pending (buf emptied) when it cannot be made. */
napi_value fly_js_buffer_from(napi_env env, fly_buf_t *buf);
/* Counts v's len bytes once more against V8's external memory while v
 * lives, so garbage pieces of a stream are collected sooner (js.c). */
napi_value fly_js_weigh(napi_env env, napi_value v, size_t len);
/* The text of buf for JS in the form fly_text_prepare chose on the I/O
 * thread: FLY_TEXT_LATIN1/UTF16, a string that uses buf's bytes in place
 * (an external string: nothing copied or decoded on the JS thread; a copy
 * where the runtime has no external strings); FLY_TEXT_BYTES, a Buffer
 * (fly_js_buffer_from) for JS to decode.  Empties buf; NULL with an
 * exception pending on failure. */
napi_value fly_js_text_from(napi_env env, fly_buf_t *buf, int form);

/* Every napi_* call is checked with FLY_NAPI_CALL (or an explicit status
 * test), or cast to (void) where its status is ignored on purpose, with the
 * reason beside it: a failed throw has nowhere left to report, and call_js,
 * finalizers and teardown have no caller to report to. */
#define FLY_NAPI_CALL(env, call, ret)                                        \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      fly_napi_throw_last((env));                                           \
      return (ret);                                                         \
    }                                                                       \
  } while (0)

/* Throws the last napi error unless an exception is already pending. */
void fly_napi_throw_last(napi_env env);
#endif /* FLY_NO_NAPI */

#endif /* FLY_H */
