/* flyproc: the sandbox's process daemon for @computesdk/fly (process
 * handles and terminals: sandbox.commands.start/list/connect, sandbox.pty).
 *
 * One binary, two roles:
 *
 *   flyproc          the relay: connects to the daemon's unix socket
 *                    (starting the daemon first when none answers), copies
 *                    its stdin to the socket and the socket to its stdout,
 *                    and exits when the daemon closes the connection.  The
 *                    client runs it as an ordinary executor command
 *                    (flyexec), so its requests and the daemon's replies
 *                    ride the SSH session the client already has.
 *   flyproc daemon   the daemon (started by a relay, detached with setsid,
 *                    one per machine and sandbox user: an flock on its
 *                    directory's lock file).  It owns the processes, their
 *                    output rings and their terminals, so they live in the
 *                    sandbox, not in a connection: a relay killed with its
 *                    SSH session, or a provider process that exits, takes
 *                    nothing of them with it, and a suspended machine
 *                    freezes the daemon with them.
 *
 * The daemon runs as the sandbox user (whoever runs the relay; never root:
 * it refuses to start as root).  Its directory is /run/flyproc (made by the
 * entrypoint, the sandbox user's, mode 0700) or else ~/.flyproc: only the
 * sandbox user reaches the socket, and the daemon checks SO_PEERCRED too.
 *
 * Frames, both ways: flyexec's header (u32 len, u8 type, u32 tag, payload;
 * big-endian; flyexec_proto.h), with the tag a request's number that its
 * replies echo.  str = u32 length + bytes, u64 = two u32 (high first).
 *
 * client -> daemon
 *   START  0x10  str key, u8 flags (1 shell, 2 pty, 4 background, 8 stdin),
 *                u32 timeout_ms, u32 cols, u32 rows, str cwd, u32 envc,
 *                envc x (str name, str value), u32 argc, argc x str
 *                -> STARTED u32 pid | ERROR
 *   STDIN  0x11  str key, bytes                  -> OK | ERROR
 *   EOF    0x12  str key                         -> OK | ERROR
 *   SIGNAL 0x13  str key, u32 signal             -> OK u8 delivered | ERROR
 *   RESIZE 0x14  str key, u32 cols, u32 rows     -> OK | ERROR
 *   LIST   0x15  str key (empty: all)            -> INFO..., OK | ERROR
 *   ATTACH 0x16  str key, u64 from_out, u64 from_err, [str token]
 *                -> INFO, DATA..., EXIT (then the daemon closes) | ERROR
 *   DETACH 0x17  str token: close the connections attached with it (their
 *                relays end without EXIT)          -> OK u32 closed
 * daemon -> client
 *   OK      0x90  (payload per request)
 *   ERROR   0x91  str code, str message
 *   STARTED 0x92  u32 pid
 *   INFO    0x93  str key, u32 pid, u8 flags, u8 running, i32 exit code,
 *                 u32 signal, u8 timed_out, u64 started (ms since the
 *                 epoch), u64 ended, u64 out_start, u64 out_end,
 *                 u64 err_start, u64 err_end, str command
 *   DATA    0x94  u8 stream (1 stdout, 2 stderr), u64 offset, bytes
 *   EXIT    0x95  i32 code, u32 signal, u8 timed_out
 *
 * Offsets count a stream's bytes from the process's start.  Each stream
 * keeps its last FP_RING_MAX bytes (a ring that grows as output comes, while
 * all rings together stay under FP_RING_TOTAL; past that a ring wraps at the
 * size it has); INFO's *_start is the oldest byte kept.  A client reading
 * slower than the process writes is never a reason to hold the process back:
 * what the ring drops before a client reads it shows as a jump in DATA's
 * offset.  A terminal's output is stream 1 only; its input is STDIN.
 *
 * Bounds: FP_MAX_PROCS processes (running and ended; the oldest ended one
 * not attached is forgotten to make room), FP_MAX_CLIENTS connections, a
 * request's payload at most FLY_FRAME_MAX, stdin waiting per process at
 * most FLY_EXEC_STDIN_WINDOW, output queued per client at most FP_TX_HIGH
 * (DATA is cut from the ring only as the client drains).
 *
 * Idle: while a process not started as background runs, or a terminal has
 * a client attached, the daemon keeps the file <dir>/busy; the root idle
 * watch (docker/idle-watch) treats the machine as busy while it exists.
 *
 * Built static (cc -static -O2) so it runs in any Linux image. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "flyexec_proto.h"
#include "flyio.h"

extern char **environ;

#define FP_DIR_RUN "/run/flyproc"
#define FP_MAX_PROCS 1024
#define FP_MAX_CLIENTS 1024
#define FP_RING_MIN 4096u
#define FP_RING_MAX (1u << 20)
#define FP_RING_TOTAL ((size_t)256 << 20)
#define FP_TX_HIGH (1u << 20)
#define FP_CHUNK 65536
#define FP_KEY_MAX 64
#define FP_DESC_MAX 1024
#define FP_KILL_AFTER_MS 2000
#define FP_CONNECT_WAIT_MS 5000

enum {
  FP_START = 0x10, FP_STDIN = 0x11, FP_EOF = 0x12, FP_SIGNAL = 0x13,
  FP_RESIZE = 0x14, FP_LIST = 0x15, FP_ATTACH = 0x16, FP_DETACH = 0x17,
  FP_OK = 0x90, FP_ERROR = 0x91, FP_STARTED = 0x92, FP_INFO = 0x93,
  FP_DATA = 0x94, FP_EXIT = 0x95
};
enum { FP_F_SHELL = 1, FP_F_PTY = 2, FP_F_BACKGROUND = 4, FP_F_STDIN = 8 };

/* A stream's last bytes: linear (and growing) until it first fills at its
 * final size, circular after. */
typedef struct {
  unsigned char *buf;
  size_t cap;
  uint64_t end; /* bytes ever written */
} fp_ring_t;

typedef struct fp_proc_s {
  struct fp_proc_s *next;
  char key[FP_KEY_MAX + 1];
  char *desc;
  fly_io_job_t job; /* the leader (group and session id), the timeout */
  unsigned flags;
  int out, err, in; /* a terminal: out is the master, in and err -1 */
  fly_io_buf_t inbuf;
  int in_eof;
  fp_ring_t ring[2];
  int ended, code, sig;
  uint64_t started, ended_at; /* ms since the epoch */
  int attached;
} fp_proc_t;

typedef struct fp_client_s {
  struct fp_client_s *next;
  int fd;
  fly_io_buf_t rx, tx;
  int rd_eof, dead;
  fp_proc_t *att;
  uint32_t att_tag;
  uint64_t cur[2];
  int exit_sent;
  char token[FP_KEY_MAX + 1]; /* the ATTACH's, for DETACH */
} fp_client_t;

static fp_proc_t *procs;
static fp_client_t *clients;
static int nprocs, nclients;
static size_t ring_total;
static int sig_fd = -1, lsn_fd = -1;
static char dir[PATH_MAX], busy_path[PATH_MAX + 8];
static int busy_now = -1;

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- rings ---------------------------------------------------------------- */

static uint64_t ring_start(const fp_ring_t *r) {
  return r->end > r->cap ? r->end - r->cap : 0;
}

static void ring_write(fp_ring_t *r, const unsigned char *p, size_t n) {
  /* Grow while still linear, within the ring's and the daemon's bounds. */
  if (r->end + n > r->cap && r->end <= r->cap && r->cap < FP_RING_MAX) {
    size_t want = r->cap ? r->cap : FP_RING_MIN;
    while (want < r->end + n && want < FP_RING_MAX)
      want *= 2;
    if (want > FP_RING_MAX)
      want = FP_RING_MAX;
    if (ring_total - r->cap + want <= FP_RING_TOTAL) {
      unsigned char *nb = realloc(r->buf, want);
      if (nb != NULL) {
        ring_total += want - r->cap;
        r->buf = nb;
        r->cap = want;
      }
    }
  }
  if (r->cap == 0) {
    r->end += n; /* nothing can be kept */
    return;
  }
  if (n > r->cap) {
    p += n - r->cap;
    r->end += n - r->cap;
    n = r->cap;
  }
  while (n > 0) {
    size_t pos = (size_t)(r->end % r->cap), k = r->cap - pos;
    if (k > n)
      k = n;
    memcpy(r->buf + pos, p, k);
    r->end += k;
    p += k;
    n -= k;
  }
}

static void ring_free(fp_ring_t *r) {
  ring_total -= r->cap;
  free(r->buf);
  memset(r, 0, sizeof(*r));
}

/* ---- frames ----------------------------------------------------------------- */

static uint64_t rd64(fly_io_rd_t *r) {
  uint64_t hi = fly_io_rd32(r);
  return (hi << 32) | fly_io_rd32(r);
}

/* A string of the payload as a new C string (NUL bytes refused). */
/* Frame writer: the header, then parts appended, then the length fixed. */
typedef struct {
  fp_client_t *c;
  size_t at;
  int bad;
} fp_wr_t;

static void wr_begin(fp_wr_t *w, fp_client_t *c, int type, uint32_t tag) {
  unsigned char h[FLY_FRAME_HDR] = {0};
  w->c = c;
  w->bad = fly_io_room(&c->tx, FLY_FRAME_HDR) != 0;
  w->at = c->tx.len - c->tx.off; /* relative: tx may move */
  h[4] = (unsigned char)type;
  fly_io_put32(h + 5, tag);
  if (!w->bad)
    w->bad = fly_io_add(&c->tx, h, FLY_FRAME_HDR) != 0;
}

static void wr_bytes(fp_wr_t *w, const void *p, size_t n) {
  if (!w->bad && fly_io_add(&w->c->tx, p, n) != 0)
    w->bad = 1;
}

static void wr32(fp_wr_t *w, uint32_t v) {
  unsigned char b[4];
  fly_io_put32(b, v);
  wr_bytes(w, b, 4);
}

static void wr64(fp_wr_t *w, uint64_t v) {
  wr32(w, (uint32_t)(v >> 32));
  wr32(w, (uint32_t)v);
}

static void wr8(fp_wr_t *w, unsigned v) {
  unsigned char b = (unsigned char)v;
  wr_bytes(w, &b, 1);
}

static void wrstr(fp_wr_t *w, const char *s) {
  size_t n = s ? strlen(s) : 0;
  wr32(w, (uint32_t)n);
  wr_bytes(w, s, n);
}

static void wr_end(fp_wr_t *w) {
  fly_io_buf_t *b = &w->c->tx;
  if (w->bad) {
    w->c->dead = 1; /* out of memory: this client is dropped */
    return;
  }
  fly_io_put32(b->base + b->off + w->at, (uint32_t)(fly_io_used(b) - w->at - 4));
}

static void send_error(fp_client_t *c, uint32_t tag, const char *code,
                       const char *msg) {
  fp_wr_t w;
  wr_begin(&w, c, FP_ERROR, tag);
  wrstr(&w, code);
  wrstr(&w, msg);
  wr_end(&w);
}

static void send_ok(fp_client_t *c, uint32_t tag, int with_byte, unsigned v) {
  fp_wr_t w;
  wr_begin(&w, c, FP_OK, tag);
  if (with_byte)
    wr8(&w, v);
  wr_end(&w);
}

static void send_info(fp_client_t *c, uint32_t tag, const fp_proc_t *p) {
  fp_wr_t w;
  wr_begin(&w, c, FP_INFO, tag);
  wrstr(&w, p->key);
  wr32(&w, (uint32_t)p->job.pid);
  wr8(&w, p->flags);
  wr8(&w, !p->ended);
  wr32(&w, (uint32_t)p->code);
  wr32(&w, (uint32_t)p->sig);
  wr8(&w, (unsigned)p->job.timed_out);
  wr64(&w, p->started);
  wr64(&w, p->ended_at);
  wr64(&w, ring_start(&p->ring[0]));
  wr64(&w, p->ring[0].end);
  wr64(&w, ring_start(&p->ring[1]));
  wr64(&w, p->ring[1].end);
  wrstr(&w, p->desc);
  wr_end(&w);
}

/* ---- processes ---------------------------------------------------------------- */

static fp_proc_t *proc_find(const char *key) {
  fp_proc_t *p;
  for (p = procs; p != NULL; p = p->next)
    if (strcmp(p->key, key) == 0)
      return p;
  return NULL;
}

static void proc_free(fp_proc_t *p) {
  fp_proc_t **pp;
  for (pp = &procs; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  fly_io_close(&p->out);
  fly_io_close(&p->err);
  fly_io_close(&p->in);
  fly_io_free(&p->inbuf);
  ring_free(&p->ring[0]);
  ring_free(&p->ring[1]);
  free(p->desc);
  free(p);
  nprocs--;
}

/* Room for one more: forget the oldest ended process no client reads. */
static int proc_make_room(void) {
  fp_proc_t *p, *old = NULL;
  if (nprocs < FP_MAX_PROCS)
    return 0;
  for (p = procs; p != NULL; p = p->next)
    if (p->ended && p->attached == 0 &&
        (old == NULL || p->ended_at <= old->ended_at))
      old = p;
  if (old == NULL)
    return -1;
  proc_free(old);
  return 0;
}


/* The busy file the idle watch reads: present while work runs. */
static void busy_update(void) {
  fp_proc_t *p;
  int busy = 0;
  for (p = procs; p != NULL && !busy; p = p->next) {
    if (p->ended)
      continue;
    if (p->flags & FP_F_PTY)
      busy = p->attached > 0;
    else
      busy = !(p->flags & FP_F_BACKGROUND);
  }
  if (busy == busy_now)
    return;
  busy_now = busy;
  if (busy) {
    int fd = open(busy_path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0)
      close(fd);
  } else {
    unlink(busy_path);
  }
}

static void proc_check_done(fp_proc_t *p) {
  if (p->ended || !p->job.reaped)
    return;
  /* A terminal ends with its leader (what it still has to read is read
   * first; jobs left on it get the hangup); pipes end when both close. */
  if (p->flags & FP_F_PTY) {
    unsigned char b[FP_CHUNK];
    ssize_t n;
    while (p->out >= 0 && (n = read(p->out, b, sizeof(b))) > 0)
      ring_write(&p->ring[0], b, (size_t)n);
    fly_io_close(&p->out);
  } else if (p->out >= 0 || p->err >= 0) {
    return;
  }
  fly_io_close(&p->in);
  fly_io_job_result(&p->job, &p->code, &p->sig);
  p->ended = 1;
  p->ended_at = wall_ms();
  p->job.term_at = p->job.kill_at = 0;
  busy_update();
}

/* The child's side of a spawn: never returns.  An error before exec is
 * written to errfd (errno, then a word saying which step). */
static void child(int errfd, unsigned flags, int in, int out, int err,
                  int slave, const char *cwd, char **argv, char **env) {
  sigset_t none;
  int e;
  const char *step = "setsid";
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  if (setsid() < 0)
    goto fail;
  if (flags & FP_F_PTY) {
    step = "the terminal";
    if (ioctl(slave, TIOCSCTTY, 0) < 0)
      goto fail;
    in = out = err = slave;
  }
  step = "its stdio";
  if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
    goto fail;
  if (cwd[0] != '\0') {
    step = "cwd";
    if (chdir(cwd) != 0)
      goto fail;
  }
  environ = env;
  step = "exec";
  if (flags & FP_F_SHELL) {
    const char *sh = fly_io_shell(), *b = strrchr(sh, '/');
    char *sv[4] = {(char *)(b ? b + 1 : sh), "-c", argv[0], NULL};
    execv(sh, sv);
  } else {
    execvp(argv[0], argv);
  }
fail:
  e = errno;
  if (write(errfd, &e, sizeof(e)) < 0 || write(errfd, step, strlen(step)) < 0)
    _exit(127);
  _exit(127);
}

/* environ with the request's NAME=value strings set (replacing any of the
 * same name); the strings stay the caller's. */
static char **env_build(char **own, size_t n) {
  size_t base = 0, i, j, k = 0;
  char **env;
  while (environ[base] != NULL)
    base++;
  env = calloc(base + n + 1, sizeof(char *));
  if (env == NULL)
    return NULL;
  for (i = 0; i < base; i++) {
    int over = 0;
    for (j = 0; j < n && !over; j++) {
      size_t l = strcspn(own[j], "=");
      over = strncmp(environ[i], own[j], l) == 0 && environ[i][l] == '=';
    }
    if (!over)
      env[k++] = environ[i];
  }
  for (j = 0; j < n; j++)
    env[k++] = own[j];
  env[k] = NULL;
  return env;
}

static char *desc_build(unsigned flags, char **argv, uint32_t argc) {
  fly_io_buf_t b = {0};
  uint32_t i;
  char nul = 0;
  for (i = 0; i < argc && fly_io_used(&b) < FP_DESC_MAX; i++) {
    if (i > 0)
      fly_io_add(&b, " ", 1);
    fly_io_add(&b, argv[i], strlen(argv[i]));
  }
  (void)flags;
  if (b.len > FP_DESC_MAX)
    b.len = FP_DESC_MAX;
  fly_io_add(&b, &nul, 1);
  return (char *)b.base;
}

static int nb_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

static void do_start(fp_client_t *c, uint32_t tag, fly_io_rd_t *r) {
  char *key = fly_io_rdstr(r), *cwd = NULL, **own = NULL, **argv = NULL, **env = NULL;
  unsigned flags = 0;
  uint32_t timeout_ms, cols, rows, envc, argc = 0, i;
  int po[2] = {-1, -1}, pe[2] = {-1, -1}, pi[2] = {-1, -1}, ep[2] = {-1, -1};
  int master = -1, slave = -1, devnull = -1;
  fp_proc_t *p = NULL;
  pid_t pid;
  char msg[512];

  if (!r->bad && r->left >= 1) {
    flags = r->p[0];
    r->p++;
    r->left--;
  } else {
    r->bad = 1;
  }
  timeout_ms = fly_io_rd32(r);
  cols = fly_io_rd32(r);
  rows = fly_io_rd32(r);
  cwd = fly_io_rdstr(r);
  envc = fly_io_rd32(r);
  if (!r->bad && envc <= r->left / 8) {
    own = calloc((size_t)envc + 2, sizeof(char *));
    if (own == NULL)
      r->bad = 1;
    for (i = 0; i < envc && !r->bad; i++) {
      char *n = fly_io_rdstr(r), *v = fly_io_rdstr(r);
      if (!r->bad && (n[0] == '\0' || strchr(n, '=') != NULL ||
                      asprintf(&own[i], "%s=%s", n, v) < 0))
        r->bad = 1;
      free(n);
      free(v);
    }
  } else {
    r->bad = 1;
  }
  argc = fly_io_rd32(r);
  if (!r->bad && argc >= 1 && argc <= r->left / 4) {
    argv = calloc((size_t)argc + 1, sizeof(char *));
    if (argv == NULL)
      r->bad = 1;
    for (i = 0; i < argc && !r->bad; i++)
      argv[i] = fly_io_rdstr(r);
  } else {
    r->bad = 1;
  }
  if (r->bad || key == NULL || key[0] == '\0' || strlen(key) > FP_KEY_MAX ||
      ((flags & FP_F_SHELL) && argc != 1) || cols > 0xffff || rows > 0xffff) {
    send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: bad START");
    goto out;
  }
  if (proc_find(key) != NULL) {
    send_error(c, tag, "PROCESS_EXISTS", "flyproc: a process with this id exists");
    goto out;
  }
  if (proc_make_room() != 0) {
    snprintf(msg, sizeof(msg),
             "flyproc: too many processes (at most %d, running or ended and "
             "attached)", FP_MAX_PROCS);
    send_error(c, tag, "PROCESS_LIMIT", msg);
    goto out;
  }
  if (flags & FP_F_PTY) {
    /* A terminal: TERM unless the request set one. */
    int has_term = 0;
    for (i = 0; i < envc; i++)
      has_term |= strncmp(own[i], "TERM=", 5) == 0;
    if (!has_term && (own[envc++] = strdup("TERM=xterm-256color")) == NULL)
      goto nomem;
  }
  env = env_build(own, envc);
  if (env == NULL)
    goto nomem;
  if (nb_pipe(ep) != 0)
    goto sys_failed;
  if (flags & FP_F_PTY) {
    struct winsize ws = {(unsigned short)(rows ? rows : 24),
                         (unsigned short)(cols ? cols : 80), 0, 0};
    char *sn;
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 ||
        (sn = ptsname(master)) == NULL ||
        (slave = open(sn, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0)
      goto sys_failed;
    ioctl(master, TIOCSWINSZ, &ws);
  } else {
    if (nb_pipe(po) != 0 || nb_pipe(pe) != 0)
      goto sys_failed;
    if (flags & FP_F_STDIN) {
      if (nb_pipe(pi) != 0)
        goto sys_failed;
    } else if ((devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
      goto sys_failed;
    }
  }
  pid = fork();
  if (pid < 0)
    goto sys_failed;
  if (pid == 0)
    child(ep[1], flags, pi[0] >= 0 ? pi[0] : devnull, po[1], pe[1], slave,
          cwd, argv, env);
  fly_io_close(&ep[1]);
  {
    /* The exec closes ep[0]'s other end: EOF means it ran. */
    int e = 0;
    char step[32] = {0};
    ssize_t n;
    do
      n = read(ep[0], &e, sizeof(e));
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(e)) {
      ssize_t k = read(ep[0], step, sizeof(step) - 1);
      (void)k;
      waitpid(pid, NULL, 0);
      snprintf(msg, sizeof(msg), "flyproc: cannot start %s (%s): %s",
               argv[0], step, strerror(e));
      send_error(c, tag, strcmp(step, "cwd") == 0 ? "PROCESS_BAD_CWD"
                                                  : "PROCESS_START_FAILED", msg);
      goto out;
    }
  }
  p = calloc(1, sizeof(*p));
  if (p == NULL) {
    kill(-pid, SIGKILL);
    goto nomem;
  }
  snprintf(p->key, sizeof(p->key), "%s", key);
  p->desc = desc_build(flags, argv, argc);
  p->job.pid = pid;
  p->flags = flags;
  p->in = p->err = -1;
  if (flags & FP_F_PTY) {
    p->out = master;
    master = -1;
  } else {
    p->out = po[0];
    p->err = pe[0];
    p->in = pi[1];
    po[0] = pe[0] = pi[1] = -1;
  }
  fcntl(p->out, F_SETFL, O_NONBLOCK);
  if (p->err >= 0)
    fcntl(p->err, F_SETFL, O_NONBLOCK);
  if (p->in >= 0)
    fcntl(p->in, F_SETFL, O_NONBLOCK);
  p->started = wall_ms();
  if (timeout_ms > 0)
    p->job.term_at = fly_io_mono_ms() + timeout_ms;
  p->next = procs;
  procs = p;
  nprocs++;
  busy_update();
  {
    fp_wr_t w;
    wr_begin(&w, c, FP_STARTED, tag);
    wr32(&w, (uint32_t)pid);
    wr_end(&w);
  }
  goto out;

nomem:
  send_error(c, tag, "PROCESS_START_FAILED", "flyproc: out of memory");
  goto out;
sys_failed:
  snprintf(msg, sizeof(msg), "flyproc: cannot start %s: %s",
           argv ? argv[0] : "the process", strerror(errno));
  send_error(c, tag, "PROCESS_START_FAILED", msg);
out:
  fly_io_close(&ep[0]);
  fly_io_close(&ep[1]);
  fly_io_close(&po[0]);
  fly_io_close(&po[1]);
  fly_io_close(&pe[0]);
  fly_io_close(&pe[1]);
  fly_io_close(&pi[0]);
  fly_io_close(&pi[1]);
  fly_io_close(&master);
  fly_io_close(&slave);
  fly_io_close(&devnull);
  free(key);
  free(cwd);
  fly_io_strv_free(own);
  fly_io_strv_free(argv);
  free(env);
}

/* ---- requests ----------------------------------------------------------------- */

static fp_proc_t *want_proc(fp_client_t *c, uint32_t tag, fly_io_rd_t *r,
                            char **keyp) {
  char *key = fly_io_rdstr(r);
  fp_proc_t *p;
  *keyp = key;
  if (r->bad) {
    send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: bad request");
    return NULL;
  }
  p = proc_find(key);
  if (p == NULL)
    send_error(c, tag, "PROCESS_NOT_FOUND",
               "flyproc: no such process (it never ran here, or ended long "
               "enough ago to be forgotten, or its daemon was restarted)");
  return p;
}

static void on_request(fp_client_t *c, int type, uint32_t tag,
                       const unsigned char *pl, size_t n) {
  fly_io_rd_t r = {pl, n, 0};
  fp_proc_t *p;
  char *key = NULL;

  switch (type) {
  case FP_START:
    do_start(c, tag, &r);
    return;
  case FP_STDIN:
    if ((p = want_proc(c, tag, &r, &key)) == NULL)
      break;
    if (p->ended) {
      send_error(c, tag, "PROCESS_NOT_RUNNING", "flyproc: the process has ended");
    } else if (p->in < 0 && !(p->flags & FP_F_PTY)) {
      send_error(c, tag, "PROCESS_STDIN_CLOSED", "flyproc: the process's stdin is closed");
    } else if (fly_io_used(&p->inbuf) + r.left > FLY_EXEC_STDIN_WINDOW) {
      send_error(c, tag, "PROCESS_STDIN_FULL",
                 "flyproc: the process is not reading its input (1 MiB waiting)");
    } else if (fly_io_add(&p->inbuf, r.p, r.left) != 0) {
      send_error(c, tag, "PROCESS_STDIN_FULL", "flyproc: out of memory");
    } else {
      send_ok(c, tag, 0, 0);
    }
    break;
  case FP_EOF:
    if ((p = want_proc(c, tag, &r, &key)) == NULL)
      break;
    p->in_eof = 1;
    if (fly_io_used(&p->inbuf) == 0 && !(p->flags & FP_F_PTY))
      fly_io_close(&p->in);
    send_ok(c, tag, 0, 0);
    break;
  case FP_SIGNAL: {
    uint32_t sig;
    if ((p = want_proc(c, tag, &r, &key)) == NULL)
      break;
    sig = fly_io_rd32(&r);
    if (r.bad || sig == 0 || sig >= 65) {
      send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: bad signal");
      break;
    }
    send_ok(c, tag, 1, !p->ended && kill(-p->job.pid, (int)sig) == 0);
    break;
  }
  case FP_RESIZE: {
    struct winsize ws = {0, 0, 0, 0};
    uint32_t cols, rows;
    if ((p = want_proc(c, tag, &r, &key)) == NULL)
      break;
    cols = fly_io_rd32(&r);
    rows = fly_io_rd32(&r);
    if (r.bad || cols == 0 || rows == 0 || cols > 0xffff || rows > 0xffff) {
      send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: bad size");
    } else if (!(p->flags & FP_F_PTY)) {
      send_error(c, tag, "PROCESS_NOT_PTY", "flyproc: not a terminal");
    } else {
      /* The kernel sends SIGWINCH to the terminal's foreground group. */
      ws.ws_col = (unsigned short)cols;
      ws.ws_row = (unsigned short)rows;
      if (!p->ended)
        ioctl(p->out, TIOCSWINSZ, &ws);
      send_ok(c, tag, 0, 0);
    }
    break;
  }
  case FP_LIST:
    key = fly_io_rdstr(&r);
    if (r.bad) {
      send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: bad LIST");
      break;
    }
    if (key[0] != '\0') {
      if ((p = proc_find(key)) == NULL) {
        send_error(c, tag, "PROCESS_NOT_FOUND", "flyproc: no such process");
        break;
      }
      send_info(c, tag, p);
    } else {
      for (p = procs; p != NULL; p = p->next)
        send_info(c, tag, p);
    }
    send_ok(c, tag, 0, 0);
    break;
  case FP_ATTACH: {
    uint64_t a, b;
    if (c->att != NULL) {
      send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: one ATTACH per connection");
      break;
    }
    if ((p = want_proc(c, tag, &r, &key)) == NULL)
      break;
    a = rd64(&r);
    b = rd64(&r);
    if (!r.bad && r.left > 0) {
      char *tok = fly_io_rdstr(&r);
      if (!r.bad && strlen(tok) <= FP_KEY_MAX)
        snprintf(c->token, sizeof(c->token), "%s", tok);
      else
        r.bad = 1;
      free(tok);
    }
    if (r.bad) {
      send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: bad ATTACH");
      break;
    }
    send_info(c, tag, p);
    c->att = p;
    c->att_tag = tag;
    c->cur[0] = a;
    c->cur[1] = b;
    p->attached++;
    busy_update();
    break;
  }
  case FP_DETACH: {
    fp_client_t *o;
    uint32_t closed = 0;
    fp_wr_t w;
    key = fly_io_rdstr(&r);
    if (r.bad || key[0] == '\0') {
      send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: bad DETACH");
      break;
    }
    for (o = clients; o != NULL; o = o->next) {
      if (o != c && o->att != NULL && strcmp(o->token, key) == 0) {
        o->dead = 1;
        closed++;
      }
    }
    wr_begin(&w, c, FP_OK, tag);
    wr32(&w, closed);
    wr_end(&w);
    break;
  }
  default:
    send_error(c, tag, "PROCESS_BAD_REQUEST", "flyproc: unknown request");
  }
  free(key);
}

/* ---- clients ---------------------------------------------------------------------- */

static void client_free(fp_client_t *c) {
  fp_client_t **pp;
  for (pp = &clients; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  }
  if (c->att != NULL) {
    c->att->attached--;
    busy_update();
  }
  fly_io_close(&c->fd);
  fly_io_free(&c->rx);
  fly_io_free(&c->tx);
  free(c);
  nclients--;
}

static void client_read(fp_client_t *c) {
  for (;;) {
    ssize_t n;
    if (fly_io_room(&c->rx, FP_CHUNK) != 0) {
      c->dead = 1;
      return;
    }
    n = read(c->fd, c->rx.base + c->rx.len, c->rx.cap - c->rx.len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      break;
    if (n <= 0) {
      c->rd_eof = 1;
      break;
    }
    c->rx.len += (size_t)n;
    while (fly_io_used(&c->rx) >= FLY_FRAME_HDR && !c->dead) {
      const unsigned char *h = c->rx.base + c->rx.off;
      uint32_t len = fly_io_get32(h);
      if (len < 5 || len - 5 > FLY_FRAME_MAX + 4096) {
        c->dead = 1;
        return;
      }
      if (fly_io_used(&c->rx) < 4 + (size_t)len)
        break;
      c->rx.off += 4 + (size_t)len;
      on_request(c, h[4], fly_io_get32(h + 5), h + FLY_FRAME_HDR, len - 5);
    }
    if (fly_io_used(&c->tx) > FP_TX_HIGH)
      break; /* replies first: the client reads them before sending more */
  }
}

/* DATA from the ring for an attached client, as far as its queue allows;
 * EXIT once the process has ended and everything was sent. */
static void client_feed(fp_client_t *c) {
  fp_proc_t *p = c->att;
  int s;
  if (p == NULL || c->exit_sent)
    return;
  for (s = 0; s < 2; s++) {
    fp_ring_t *r = &p->ring[s];
    while (fly_io_used(&c->tx) < FP_TX_HIGH && c->cur[s] < r->end && r->cap) {
      uint64_t st = ring_start(r);
      size_t pos, k;
      fp_wr_t w;
      if (c->cur[s] < st)
        c->cur[s] = st;
      pos = (size_t)(c->cur[s] % r->cap);
      k = r->cap - pos;
      if (k > r->end - c->cur[s])
        k = (size_t)(r->end - c->cur[s]);
      if (k > FP_CHUNK)
        k = FP_CHUNK;
      wr_begin(&w, c, FP_DATA, c->att_tag);
      wr8(&w, (unsigned)s + 1);
      wr64(&w, c->cur[s]);
      wr_bytes(&w, r->buf + pos, k);
      wr_end(&w);
      c->cur[s] += k;
    }
  }
  if (p->ended && c->cur[0] >= p->ring[0].end && c->cur[1] >= p->ring[1].end) {
    fp_wr_t w;
    wr_begin(&w, c, FP_EXIT, c->att_tag);
    wr32(&w, (uint32_t)p->code);
    wr32(&w, (uint32_t)p->sig);
    wr8(&w, (unsigned)p->job.timed_out);
    wr_end(&w);
    c->exit_sent = 1;
  }
}

static void client_flush(fp_client_t *c) {
  while (fly_io_used(&c->tx) > 0) {
    ssize_t n = send(c->fd, c->tx.base + c->tx.off, fly_io_used(&c->tx),
                     MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    if (n < 0) {
      c->dead = 1;
      return;
    }
    c->tx.off += (size_t)n;
  }
  c->tx.off = c->tx.len = 0;
}

/* Done: the client sent all its requests (EOF) and has no attach running,
 * or its attach sent EXIT; once its replies are out, close. */
static int client_finished(const fp_client_t *c) {
  if (fly_io_used(&c->tx) > 0)
    return 0;
  if (c->att != NULL)
    return c->exit_sent;
  return c->rd_eof;
}

static void accept_clients(void) {
  for (;;) {
    int fd = accept4(lsn_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct ucred cr;
    socklen_t cl = sizeof(cr);
    fp_client_t *c;
    if (fd < 0)
      return;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 ||
        cr.uid != getuid()) {
      close(fd);
      continue;
    }
    if (nclients >= FP_MAX_CLIENTS) {
      /* Said, not just closed: the client's error is PROCESS_LIMIT. */
      static const char code[] = "PROCESS_LIMIT";
      static const char msg[] = "flyproc: too many connections to the daemon";
      unsigned char f[FLY_FRAME_HDR + 8 + sizeof(code) + sizeof(msg)];
      size_t k = FLY_FRAME_HDR;
      fly_io_put32(f + k, sizeof(code) - 1);
      memcpy(f + k + 4, code, sizeof(code) - 1);
      k += 4 + sizeof(code) - 1;
      fly_io_put32(f + k, sizeof(msg) - 1);
      memcpy(f + k + 4, msg, sizeof(msg) - 1);
      k += 4 + sizeof(msg) - 1;
      fly_io_put32(f, (uint32_t)(k - 4));
      f[4] = FP_ERROR;
      fly_io_put32(f + 5, 0);
      if (send(fd, f, k, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        (void)0;
      close(fd);
      continue;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL) {
      close(fd);
      continue;
    }
    c->fd = fd;
    c->next = clients;
    clients = c;
    nclients++;
  }
}

/* ---- process I/O ------------------------------------------------------------------ */

static void proc_read(fp_proc_t *p, int *fd, int s) {
  unsigned char b[FP_CHUNK];
  int i;
  for (i = 0; i < 16; i++) {
    ssize_t n = read(*fd, b, sizeof(b));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    if (n <= 0) {
      /* A terminal's master reads EIO once no one holds the slave: the
       * leader's exit decides its end (proc_check_done). */
      if (p->flags & FP_F_PTY) {
        if (p->job.reaped)
          fly_io_close(fd);
        return;
      }
      fly_io_close(fd);
      return;
    }
    ring_write(&p->ring[s], b, (size_t)n);
  }
}

static void proc_write_in(fp_proc_t *p) {
  int fd = (p->flags & FP_F_PTY) ? p->out : p->in;
  while (fly_io_used(&p->inbuf) > 0) {
    ssize_t n = write(fd, p->inbuf.base + p->inbuf.off, fly_io_used(&p->inbuf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    if (n < 0) {
      p->inbuf.off = p->inbuf.len = 0;
      if (!(p->flags & FP_F_PTY))
        fly_io_close(&p->in);
      return;
    }
    p->inbuf.off += (size_t)n;
  }
  p->inbuf.off = p->inbuf.len = 0;
  if (p->in_eof && !(p->flags & FP_F_PTY))
    fly_io_close(&p->in);
}

/* The running job with this leader. */
static fly_io_job_t *job_of(pid_t pid) {
  fp_proc_t *p;
  for (p = procs; p != NULL; p = p->next)
    if (p->job.pid == pid && !p->job.reaped)
      return &p->job;
  return NULL;
}

static void reap(void) { fly_io_reap(sig_fd, job_of); }

static void timers(uint64_t now) {
  fp_proc_t *p;
  for (p = procs; p != NULL; p = p->next)
    if (!p->ended)
      fly_io_job_tick(&p->job, now, FP_KILL_AFTER_MS);
}

/* ---- the daemon --------------------------------------------------------------------- */

static int pick_dir(void) {
  struct stat st;
  const char *home = getenv("HOME");
  if (lstat(FP_DIR_RUN, &st) == 0 && S_ISDIR(st.st_mode) &&
      st.st_uid == getuid() && (st.st_mode & 077) == 0) {
    snprintf(dir, sizeof(dir), "%s", FP_DIR_RUN);
  } else {
    if (home == NULL || home[0] != '/')
      return -1;
    snprintf(dir, sizeof(dir), "%s/.flyproc", home);
    mkdir(dir, 0700);
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid())
      return -1;
    chmod(dir, 0700);
  }
  snprintf(busy_path, sizeof(busy_path), "%s/busy", dir);
  return 0;
}

static int sock_addr(struct sockaddr_un *a) {
  memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  return (size_t)snprintf(a->sun_path, sizeof(a->sun_path), "%s/sock", dir) <
                 sizeof(a->sun_path)
             ? 0
             : -1;
}

static int daemon_main(void) {
  struct sockaddr_un a;
  char lock[PATH_MAX + 8];
  sigset_t mask;
  struct pollfd *pfd = NULL;
  size_t pcap = 0;
  int lfd;
  const char *home = getenv("HOME");

  if (getuid() == 0 || pick_dir() != 0 || sock_addr(&a) != 0)
    return 1;
  snprintf(lock, sizeof(lock), "%s/lock", dir);
  lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) != 0)
    return 0; /* another daemon has it */
  unlink(busy_path);
  unlink(a.sun_path);
  lsn_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  umask(077);
  if (lsn_fd < 0 || bind(lsn_fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      listen(lsn_fd, 64) != 0)
    return 1;
  umask(022);
  if (home != NULL && chdir(home) != 0 && chdir("/") != 0)
    return 1;
  {
    /* Processes' pipes and clients: as many descriptors as allowed. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sig_fd < 0)
    return 1;
  unsetenv("_");

  for (;;) {
    fp_proc_t *p;
    fp_client_t *c, *cn;
    size_t n = 0, need = 2 + 3 * (size_t)nprocs + (size_t)nclients;
    int timeout = -1;
    uint64_t now = fly_io_mono_ms(), next = UINT64_MAX;

    if (need > pcap) {
      struct pollfd *np = realloc(pfd, need * sizeof(*pfd));
      if (np == NULL)
        return 1;
      pfd = np;
      pcap = need;
    }
    pfd[n++] = (struct pollfd){lsn_fd, POLLIN, 0};
    pfd[n++] = (struct pollfd){sig_fd, POLLIN, 0};
    for (p = procs; p != NULL; p = p->next) {
      int in = (p->flags & FP_F_PTY) ? -1 : p->in;
      short pev = POLLIN;
      if ((p->flags & FP_F_PTY) && fly_io_used(&p->inbuf) > 0)
        pev |= POLLOUT;
      pfd[n++] = (struct pollfd){p->out, pev, 0};
      pfd[n++] = (struct pollfd){p->err, POLLIN, 0};
      pfd[n++] = (struct pollfd){in, fly_io_used(&p->inbuf) ? POLLOUT : 0, 0};
      next = fly_io_job_next(&p->job, next);
    }
    for (c = clients; c != NULL; c = c->next) {
      short ev = 0;
      if (!c->rd_eof && fly_io_used(&c->tx) <= FP_TX_HIGH)
        ev |= POLLIN;
      if (fly_io_used(&c->tx) > 0)
        ev |= POLLOUT;
      pfd[n++] = (struct pollfd){c->fd, ev, 0};
    }
    if (next != UINT64_MAX)
      timeout = next <= now ? 0 : (int)(next - now > 60000 ? 60000 : next - now);
    if (poll(pfd, n, timeout) < 0 && errno != EINTR)
      return 1;
    if (pfd[1].revents & POLLIN)
      reap();
    n = 2;
    for (p = procs; p != NULL; p = p->next) {
      if (p->out >= 0 && (pfd[n].revents & (POLLIN | POLLHUP | POLLERR)))
        proc_read(p, &p->out, 0);
      if (p->err >= 0 && (pfd[n + 1].revents & (POLLIN | POLLHUP | POLLERR)))
        proc_read(p, &p->err, 1);
      if (fly_io_used(&p->inbuf) > 0 &&
          ((pfd[n].revents & POLLOUT) ||
           (pfd[n + 2].revents & (POLLOUT | POLLERR | POLLHUP))))
        proc_write_in(p);
      n += 3;
    }
    for (c = clients; c != NULL; c = c->next) {
      /* After its EOF, a hangup is the relay gone (its session cut). */
      if (c->rd_eof && (pfd[n].revents & (POLLHUP | POLLERR)))
        c->dead = 1;
      else if (pfd[n].revents & (POLLIN | POLLHUP | POLLERR))
        client_read(c);
      if (pfd[n].revents & POLLOUT)
        client_flush(c);
      n++;
    }
    timers(fly_io_mono_ms());
    for (p = procs; p != NULL; p = p->next)
      proc_check_done(p);
    /* New clients after the polled list was walked: polled next turn. */
    if (pfd[0].revents & POLLIN)
      accept_clients();
    for (c = clients; c != NULL; c = cn) {
      cn = c->next;
      client_feed(c);
      client_flush(c);
      if (c->dead || client_finished(c))
        client_free(c);
    }
    /* The process writing into a terminal the client asked to close. */
    for (p = procs; p != NULL; p = p->next)
      if ((p->flags & FP_F_PTY) && fly_io_used(&p->inbuf) > 0)
        proc_write_in(p);
  }
}

/* ---- the relay ------------------------------------------------------------------------- */

static int relay_connect(void) {
  struct sockaddr_un a;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || sock_addr(&a) != 0)
    return -1;
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* The daemon, detached from this session (setsid, its own group: the
 * executor's kill of this relay's group does not reach it). */
static void spawn_daemon(void) {
  char self[PATH_MAX];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
  pid_t pid;
  /* By its own path, so that it is "flyproc" in ps, not "exe". */
  if (sl <= 0)
    snprintf(self, sizeof(self), "/proc/self/exe");
  else
    self[sl] = '\0';
  pid = fork();
  if (pid == 0) {
    int nul = open("/dev/null", O_RDWR);
    pid_t gc;
    setsid();
    if (nul >= 0) {
      dup2(nul, 0);
      dup2(nul, 1);
      dup2(nul, 2);
    }
    gc = fork();
    if (gc == 0) {
      char *av[] = {"flyproc", "daemon", NULL};
      execv(self, av);
      _exit(127);
    }
    _exit(0);
  }
  if (pid > 0)
    waitpid(pid, NULL, 0);
}

static int relay_main(void) {
  int fd, in_open = 1;
  uint64_t deadline;
  unsigned char b[FP_CHUNK];
  struct timespec ts = {0, 5 * 1000 * 1000};

  if (getuid() == 0) {
    fprintf(stderr, "flyproc: not as root\n");
    return 2;
  }
  if (pick_dir() != 0) {
    fprintf(stderr, "flyproc: no directory for the daemon\n");
    return 2;
  }
  fd = relay_connect();
  if (fd < 0) {
    spawn_daemon();
    deadline = fly_io_mono_ms() + FP_CONNECT_WAIT_MS;
    while ((fd = relay_connect()) < 0 && fly_io_mono_ms() < deadline)
      nanosleep(&ts, NULL);
    if (fd < 0) {
      fprintf(stderr, "flyproc: the daemon does not answer\n");
      return 3;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  /* Blocking copies both ways; poll decides which. */
  for (;;) {
    /* Once stdin has ended it is not polled (a closed pipe would report
     * POLLHUP on every call: a spinning relay while it waits). */
    struct pollfd pfd[2] = {{in_open ? 0 : -1, POLLIN, 0}, {fd, POLLIN, 0}};
    if (poll(pfd, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      return 3;
    }
    if (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(fd, b, sizeof(b)), off = 0;
      if (n <= 0)
        return 0;
      while (off < n) {
        ssize_t w = write(1, b + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
          continue;
        if (w <= 0)
          return 3;
        off += w;
      }
    }
    if (in_open && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = read(0, b, sizeof(b)), off = 0;
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        shutdown(fd, SHUT_WR);
        in_open = 0;
        continue;
      }
      while (off < n) {
        ssize_t w = send(fd, b + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
          continue;
        if (w <= 0)
          return 3;
        off += w;
      }
    }
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "daemon") == 0)
    return daemon_main();
  return relay_main();
}
