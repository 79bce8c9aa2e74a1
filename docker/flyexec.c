/* flyexec: the sandbox's command executor for @computesdk/fly.
 *
 * The client starts it once per SSH session over one exec channel
 * (`exec /usr/local/libexec/computesdk/flyexec`, as the sandbox user) and
 * then runs every command of that session through it, so a command costs
 * one posix_spawn instead of an sshd session and a shell.  It inherits
 * sshd's session environment (PATH, HOME, ...) and working directory.
 *
 * Protocol (both directions; integers big-endian; the numbers and limits
 * are flyexec_proto.h's, which the client includes too):
 *
 *   u32 len     bytes after this field (type + id + payload), 5..5+1 MiB
 *   u8  type
 *   u32 id      the command, chosen by the client; 0 for HELLO
 *   payload     len - 5 bytes
 *
 * client -> flyexec
 *   START  1  u8 flags (1 shell, 2 background, 4 stdin), u32 timeout_ms,
 *             str cwd (empty: none), u32 envc, envc x (str name, str value),
 *             u32 argc, argc x str arg (shell: one arg, the command line);
 *             str = u32 length + bytes
 *   STDIN  2  bytes for the command's stdin (at most FLY_EXEC_STDIN_WINDOW
 *             unacknowledged per command)
 *   EOF    3  close the command's stdin
 *   KILL   4  SIGKILL the command's process group
 * flyexec -> client
 *   HELLO  0x81  "flyexec\n", u32 version (1), u32 max payload
 *   STDOUT 0x82  bytes        STDERR 0x83  bytes
 *   EXIT   0x84  i32 code, u32 signal (0: none; code is then 128 + signal)
 *   FAILED 0x85  i32 errno, message (the command did not start)
 *   ACK    0x86  u32 stdin bytes consumed
 *   RUNNING 0x87 (no payload) the command was spawned (not for background
 *                ones: their EXIT 0 comes at once)
 *
 * Each command runs in its own process group (background ones in their own
 * session, detached: they outlive flyexec, as `setsid -f` does).  A timeout
 * is GNU `timeout -k 2`'s: SIGTERM (and SIGCONT) to the group, SIGKILL 2 s
 * later, exit 124.  A command ends when its leader is reaped and both its
 * output pipes are closed.  flyexec never blocks: every fd is non-blocking
 * and poll()ed; output waiting for the channel is bounded (above
 * FX_OUT_HIGH it stops reading the commands' pipes, so a client that does
 * not read holds the commands back instead of growing memory).  When the
 * channel closes (EOF on stdin, or a write error) it SIGKILLs the groups
 * of its running commands and exits.
 *
 * Built static (cc -static -O2) so it runs in any Linux image. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "flyexec_proto.h"
#include "flyio.h"

extern char **environ;

#define FX_READ 65536
#define FX_OUT_HIGH (1u << 20)
#define FX_MAX_CMDS 4096
#define FX_KILL_AFTER_MS 2000

typedef struct fx_cmd_s {
  struct fx_cmd_s *next;
  uint32_t id;
  fly_io_job_t job;       /* the leader (the group id) and the timeout */
  int out, err, in;       /* our pipe ends, -1 when closed */
  fly_io_buf_t inbuf;     /* stdin waiting for the child */
  int in_eof;             /* EOF asked: close in once inbuf is written */
} fx_cmd_t;

static fly_io_buf_t rx, tx;
static fx_cmd_t *cmds;
static int ncmds;
static int home_fd = -1;
static int sig_fd = -1;

static void die_closed(void);

/* Queue a frame for the client.  Out of memory is fatal: the client sees
 * the channel close and fails the commands. */
static void send_frame(int type, uint32_t id, const void *a, size_t alen,
                       const void *b, size_t blen) {
  unsigned char *p;
  if (fly_io_room(&tx, FLY_FRAME_HDR + alen + blen) != 0)
    die_closed();
  p = (unsigned char *)tx.base + tx.len;
  fly_io_put32(p, (uint32_t)(5 + alen + blen));
  p[4] = (unsigned char)type;
  fly_io_put32(p + 5, id);
  if (alen > 0)
    memcpy(p + FLY_FRAME_HDR, a, alen);
  if (blen > 0)
    memcpy(p + FLY_FRAME_HDR + alen, b, blen);
  tx.len += FLY_FRAME_HDR + alen + blen;
}

static void send_exit(uint32_t id, int code, int sig) {
  unsigned char p[8];
  fly_io_put32(p, (uint32_t)code);
  fly_io_put32(p + 4, (uint32_t)sig);
  send_frame(FLY_FRAME_EXIT, id, p, 8, NULL, 0);
}

static void send_failed(uint32_t id, int err, const char *msg) {
  unsigned char p[4];
  fly_io_put32(p, (uint32_t)err);
  send_frame(FLY_FRAME_FAILED, id, p, 4, msg, strlen(msg));
}

static void send_ack(uint32_t id, size_t n) {
  unsigned char p[4];
  fly_io_put32(p, (uint32_t)n);
  send_frame(FLY_FRAME_ACK, id, p, 4, NULL, 0);
}

/* Flush what the channel takes now.  A write error: the client is gone. */
static void flush_tx(void) {
  while (fly_io_used(&tx) > 0) {
    ssize_t n = write(1, tx.base + tx.off, fly_io_used(&tx));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return;
      die_closed();
    }
    tx.off += (size_t)n;
  }
  tx.off = tx.len = 0;
}

static fx_cmd_t *cmd_find(uint32_t id) {
  fx_cmd_t *c;
  for (c = cmds; c != NULL; c = c->next)
    if (c->id == id)
      return c;
  return NULL;
}

static void cmd_free(fx_cmd_t *c) {
  fx_cmd_t **pp;
  for (pp = &cmds; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  }
  fly_io_close(&c->out);
  fly_io_close(&c->err);
  fly_io_close(&c->in);
  fly_io_free(&c->inbuf);
  free(c);
  ncmds--;
}

static void cmd_signal(fx_cmd_t *c, int sig) { fly_io_job_signal(&c->job, sig); }

/* The channel is gone: stop every command of ours (not the background
 * ones: they are not in the list) and leave. */
static void die_closed(void) {
  fx_cmd_t *c;
  for (c = cmds; c != NULL; c = c->next)
    cmd_signal(c, SIGKILL);
  _exit(0);
}

/* Finished when the leader is reaped and its output pipes are closed. */
static void cmd_check_done(fx_cmd_t *c) {
  int code, sig = 0;
  if (!c->job.reaped || c->out >= 0 || c->err >= 0)
    return;
  fly_io_job_result(&c->job, &code, &sig);
  send_exit(c->id, code, sig);
  cmd_free(c);
}

/* ---- starting a command -------------------------------------------------- */

/* A string of the payload as a new C string (NUL bytes refused). */
/* environ with the command's variables set (replacing ones of the same
 * name); the strings are the callers', who frees the vector. */
static char **env_build(char **names, char **values, size_t n, char **own) {
  size_t base = 0, i, j, k = 0;
  char **env;
  while (environ[base] != NULL)
    base++;
  env = calloc(base + n + 1, sizeof(char *));
  if (env == NULL)
    return NULL;
  for (i = 0; i < base; i++) {
    int overridden = 0;
    for (j = 0; j < n && !overridden; j++) {
      size_t l = strlen(names[j]);
      overridden = strncmp(environ[i], names[j], l) == 0 &&
                   environ[i][l] == '=';
    }
    if (!overridden)
      env[k++] = environ[i];
  }
  for (j = 0; j < n; j++)
    env[k++] = own[j];
  env[k] = NULL;
  (void)values;
  return env;
}

static const char *env_get(char **env, const char *name) {
  size_t l = strlen(name), i;
  for (i = 0; env[i] != NULL; i++)
    if (strncmp(env[i], name, l) == 0 && env[i][l] == '=')
      return env[i] + l + 1;
  return NULL;
}

/* PATH search as the shell does it, with the command's own PATH. */
static char *path_find(const char *name, char **env) {
  const char *path = env_get(env, "PATH"), *p, *e;
  char full[PATH_MAX];
  struct stat st;
  if (path == NULL)
    path = "/usr/local/bin:/usr/bin:/bin";
  for (p = path;; p = e + 1) {
    size_t dl;
    e = strchr(p, ':');
    if (e == NULL)
      e = p + strlen(p);
    dl = (size_t)(e - p);
    if ((size_t)snprintf(full, sizeof(full), "%.*s%s%s", (int)dl, p,
                         dl > 0 ? "/" : "", name) < sizeof(full) &&
        stat(full, &st) == 0 && S_ISREG(st.st_mode) &&
        access(full, X_OK) == 0)
      return strdup(full);
    if (*e == '\0')
      return NULL;
  }
}

static const char *shell_name(void) {
  const char *sh = fly_io_shell(), *b = strrchr(sh, '/');
  return b ? b + 1 : sh;
}

/* The message the shell prints for a command or directory it cannot use,
 * in bash's words when the shell is bash, else dash's. */
static void shell_error(uint32_t id, const char *what, const char *why) {
  char msg[512];
  if (strcmp(shell_name(), "bash") == 0)
    snprintf(msg, sizeof(msg), "bash: line 1: %s: %s\n", what, why);
  else
    snprintf(msg, sizeof(msg), "%s: 1: %s: %s\n", shell_name(), what, why);
  send_frame(FLY_FRAME_STDERR, id, msg, strlen(msg), NULL, 0);
}

static int nb_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

static void start_cmd(uint32_t id, const unsigned char *payload, size_t n) {
  fly_io_rd_t r = {payload, n, 0};
  unsigned flags;
  uint32_t timeout_ms, envc, argc, i;
  char *cwd = NULL, **names = NULL, **values = NULL, **own = NULL;
  char **argv = NULL, **env = NULL, *prog = NULL, tbuf[32];
  char **spawn_argv = NULL, *wrapped = NULL;
  int po[2] = {-1, -1}, pe[2] = {-1, -1}, pi[2] = {-1, -1}, devnull = -1;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  sigset_t none, dflt;
  pid_t pid;
  int rc, in_dir = 0;
  fx_cmd_t *c = NULL;

  if (cmd_find(id) != NULL) {
    send_failed(id, EEXIST, "flyexec: command id in use");
    return;
  }
  if (ncmds >= FX_MAX_CMDS) {
    send_failed(id, EAGAIN, "flyexec: too many commands");
    return;
  }
  if (r.left < 1) {
    send_failed(id, EINVAL, "flyexec: bad START");
    return;
  }
  flags = r.p[0];
  r.p++;
  r.left--;
  timeout_ms = fly_io_rd32(&r);
  cwd = fly_io_rdstr(&r);
  envc = fly_io_rd32(&r);
  if (!r.bad && envc <= r.left / 8) {
    names = calloc((size_t)envc + 4, sizeof(char *));
    values = calloc((size_t)envc + 4, sizeof(char *));
    own = calloc((size_t)envc + 4, sizeof(char *));
    if (names == NULL || values == NULL || own == NULL)
      r.bad = 1;
    for (i = 0; i < envc && !r.bad; i++) {
      names[i] = fly_io_rdstr(&r);
      values[i] = fly_io_rdstr(&r);
      if (!r.bad) {
        size_t l = strlen(names[i]) + strlen(values[i]) + 2;
        own[i] = malloc(l);
        if (own[i] == NULL || names[i][0] == '\0' ||
            strchr(names[i], '=') != NULL)
          r.bad = 1;
        else
          snprintf(own[i], l, "%s=%s", names[i], values[i]);
      }
    }
  } else {
    r.bad = 1;
  }
  argc = fly_io_rd32(&r);
  if (!r.bad && argc >= 1 && argc <= r.left / 4) {
    argv = calloc((size_t)argc + 1, sizeof(char *));
    if (argv == NULL)
      r.bad = 1;
    for (i = 0; i < argc && !r.bad; i++)
      argv[i] = fly_io_rdstr(&r);
  } else {
    r.bad = 1;
  }
  if (r.bad || ((flags & FLY_START_SHELL) && argc != 1)) {
    send_failed(id, EINVAL, "flyexec: bad START");
    goto cleanup;
  }
  env = env_build(names, values, envc, own);
  if (env == NULL) {
    send_failed(id, ENOMEM, "flyexec: out of memory");
    goto cleanup;
  }

  /* cwd: as `cd -- cwd || exit 1` did, relative to the session's home. */
  if (cwd[0] != '\0') {
    if (chdir(cwd) != 0) {
      int e = errno;
      if (!(flags & FLY_START_BACKGROUND)) {
        char what[PATH_MAX + 8];
        snprintf(what, sizeof(what), "cd: %s", cwd);
        shell_error(id, what, strerror(e));
        send_exit(id, 1, 0);
      } else {
        send_exit(id, 0, 0);
      }
      goto cleanup;
    }
    in_dir = 1;
  }

  /* What to run: the shell with the command line, or argv itself; under
   * timeout(1) for a background command (flyexec does not watch it). */
  {
    size_t na = 0, k = 0;
    const char *sh = fly_io_shell();
    if (flags & FLY_START_SHELL) {
      prog = strdup(sh);
    } else if (strchr(argv[0], '/') != NULL) {
      prog = strdup(argv[0]);
    } else if ((prog = path_find(argv[0], env)) == NULL) {
      if (flags & FLY_START_BACKGROUND) {
        send_exit(id, 0, 0);
      } else {
        shell_error(id, argv[0],
                    strcmp(shell_name(), "bash") == 0 ? "command not found"
                                                      : "not found");
        send_exit(id, 127, 0);
      }
      goto cleanup;
    }
    if (prog == NULL)
      goto nomem;
    na = argc + 8;
    spawn_argv = calloc(na, sizeof(char *));
    if (spawn_argv == NULL)
      goto nomem;
    if ((flags & FLY_START_BACKGROUND) && timeout_ms > 0) {
      char *tp = path_find("timeout", env);
      if (tp == NULL) {
        send_exit(id, 0, 0);
        goto cleanup;
      }
      snprintf(tbuf, sizeof(tbuf), "%u.%03us", timeout_ms / 1000,
               timeout_ms % 1000);
      spawn_argv[k++] = "timeout";
      spawn_argv[k++] = "-k";
      spawn_argv[k++] = "2";
      spawn_argv[k++] = tbuf;
      /* timeout runs the command by the path we found */
      spawn_argv[k++] = prog;
      prog = tp;
      wrapped = spawn_argv[k - 1];
      if (flags & FLY_START_SHELL) {
        spawn_argv[k++] = "-c";
        spawn_argv[k++] = argv[0];
      } else {
        for (i = 1; i < argc; i++)
          spawn_argv[k++] = argv[i];
      }
    } else if (flags & FLY_START_SHELL) {
      spawn_argv[k++] = (char *)shell_name();
      spawn_argv[k++] = "-c";
      spawn_argv[k++] = argv[0];
    } else {
      for (i = 0; i < argc; i++)
        spawn_argv[k++] = argv[i];
    }
    spawn_argv[k] = NULL;
  }

  /* argv: what bash exports to a program it runs, as the shell that ran
   * argv did (the shell of a shell command sets these itself). */
  if (!(flags & (FLY_START_SHELL | FLY_START_BACKGROUND)) && strcmp(shell_name(), "bash") == 0) {
    char cwdbuf[PATH_MAX], **nenv;
    const char *pwd = NULL;
    uint32_t k = envc;
    if (cwd[0] == '/')
      pwd = cwd;
    else if (cwd[0] != '\0' && getcwd(cwdbuf, sizeof(cwdbuf)) != NULL)
      pwd = cwdbuf;
    if (asprintf(&own[k], "_=%s", prog) < 0 || (names[k] = strdup("_")) == NULL)
      goto nomem;
    k++;
    if (pwd != NULL) {
      if (asprintf(&own[k], "PWD=%s", pwd) < 0 ||
          (names[k] = strdup("PWD")) == NULL)
        goto nomem;
      k++;
    }
    nenv = env_build(names, values, k, own);
    if (nenv == NULL)
      goto nomem;
    free(env);
    env = nenv;
  }

  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  sigemptyset(&none);
  sigemptyset(&dflt);
  sigaddset(&dflt, SIGPIPE);
  sigaddset(&dflt, SIGCHLD);
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setsigdefault(&at, &dflt);
  if (flags & FLY_START_BACKGROUND) {
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
      goto spawn_failed_errno;
    posix_spawn_file_actions_adddup2(&fa, devnull, 0);
    posix_spawn_file_actions_adddup2(&fa, devnull, 1);
    posix_spawn_file_actions_adddup2(&fa, devnull, 2);
  } else {
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP |
                                      POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    if (nb_pipe(po) != 0 || nb_pipe(pe) != 0)
      goto spawn_failed_errno;
    if (flags & FLY_START_STDIN) {
      if (nb_pipe(pi) != 0)
        goto spawn_failed_errno;
      posix_spawn_file_actions_adddup2(&fa, pi[0], 0);
    } else {
      devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (devnull < 0)
        goto spawn_failed_errno;
      posix_spawn_file_actions_adddup2(&fa, devnull, 0);
    }
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
  }
  rc = posix_spawn(&pid, prog, &fa, &at, spawn_argv, env);
  if (rc == ENOEXEC && !(flags & FLY_START_SHELL)) {
    /* A script without #!: the shell runs it, as it would have. */
    char **sv = calloc((size_t)argc + 2, sizeof(char *));
    if (sv != NULL) {
      sv[0] = (char *)shell_name();
      sv[1] = prog;
      for (i = 1; i < argc; i++)
        sv[i + 1] = argv[i];
      rc = posix_spawn(&pid, fly_io_shell(), &fa, &at, sv, env);
      free(sv);
    }
  }
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  if (rc != 0) {
    errno = rc;
    if (!(flags & FLY_START_SHELL) && !(flags & FLY_START_BACKGROUND) &&
        (rc == ENOENT || rc == EACCES || rc == ENOTDIR || rc == EISDIR)) {
      /* What the shell says (and exits with) for a path it cannot run. */
      shell_error(id, argv[0], strerror(rc));
      send_exit(id, rc == ENOENT || rc == ENOTDIR ? 127 : 126, 0);
      goto cleanup;
    }
    goto spawn_failed_errno;
  }
  if (flags & FLY_START_BACKGROUND) {
    /* Detached: reaped by the SIGCHLD loop if it ends while we live, by
     * init after. */
    send_exit(id, 0, 0);
    goto cleanup;
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL) {
    kill(-pid, SIGKILL);
    goto nomem;
  }
  c->id = id;
  c->job.pid = pid;
  c->out = po[0];
  c->err = pe[0];
  c->in = pi[1];
  po[0] = pe[0] = pi[1] = -1;
  fcntl(c->out, F_SETFL, O_NONBLOCK);
  fcntl(c->err, F_SETFL, O_NONBLOCK);
  if (c->in >= 0)
    fcntl(c->in, F_SETFL, O_NONBLOCK);
  if (timeout_ms > 0)
    c->job.term_at = fly_io_mono_ms() + timeout_ms;
  c->next = cmds;
  cmds = c;
  ncmds++;
  send_frame(FLY_FRAME_RUNNING, id, NULL, 0, NULL, 0);
  goto cleanup;

nomem:
  send_failed(id, ENOMEM, "flyexec: out of memory");
  goto cleanup;
spawn_failed_errno : {
  char msg[256];
  int e = errno;
  snprintf(msg, sizeof(msg), "flyexec: starting %s: %s",
           prog ? prog : "the command", strerror(e));
  send_failed(id, e, msg);
}
cleanup:
  if (in_dir && fchdir(home_fd) != 0)
    die_closed();
  if (devnull >= 0)
    close(devnull);
  fly_io_close(&po[0]);
  fly_io_close(&po[1]);
  fly_io_close(&pe[0]);
  fly_io_close(&pe[1]);
  fly_io_close(&pi[0]);
  fly_io_close(&pi[1]);
  free(cwd);
  if (names)
    fly_io_strv_free(names);
  if (values)
    fly_io_strv_free(values);
  if (own)
    fly_io_strv_free(own);
  fly_io_strv_free(argv);
  free(env);
  free(prog);
  free(wrapped);
  free(spawn_argv);
}

/* ---- frames from the client ---------------------------------------------- */

static void on_frame(int type, uint32_t id, const unsigned char *p,
                     size_t n) {
  fx_cmd_t *c = type == FLY_FRAME_START ? NULL : cmd_find(id);

  switch (type) {
  case FLY_FRAME_START:
    start_cmd(id, p, n);
    return;
  case FLY_FRAME_STDIN:
    if (c == NULL) {
      /* Ended already: the bytes are consumed all the same. */
      send_ack(id, n);
      return;
    }
    if (c->in < 0) {
      send_ack(id, n);
      return;
    }
    if (fly_io_used(&c->inbuf) + n > FLY_EXEC_STDIN_WINDOW)
      die_closed(); /* the client broke the window: protocol error */
    if (fly_io_room(&c->inbuf, n) != 0)
      die_closed();
    memcpy(c->inbuf.base + c->inbuf.len, p, n);
    c->inbuf.len += n;
    return;
  case FLY_FRAME_EOF:
    if (c != NULL) {
      c->in_eof = 1;
      if (fly_io_used(&c->inbuf) == 0)
        fly_io_close(&c->in);
    }
    return;
  case FLY_FRAME_KILL:
    if (c != NULL)
      cmd_signal(c, SIGKILL);
    return;
  default:
    die_closed();
  }
}

static void read_rx(void) {
  for (;;) {
    ssize_t n;
    if (fly_io_room(&rx, FX_READ) != 0)
      die_closed();
    n = read(0, rx.base + rx.len, rx.cap - rx.len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        break;
      die_closed();
    }
    if (n == 0)
      die_closed();
    rx.len += (size_t)n;
    /* Whole frames out; a partial one waits (bounded by the size check). */
    while (fly_io_used(&rx) >= FLY_FRAME_HDR) {
      const unsigned char *h = (const unsigned char *)rx.base + rx.off;
      uint32_t len = fly_io_get32(h);
      if (len < 5 || len - 5 > FLY_FRAME_MAX + 64)
        die_closed();
      if (fly_io_used(&rx) < 4 + (size_t)len)
        break;
      rx.off += 4 + (size_t)len;
      on_frame(h[4], fly_io_get32(h + 5), h + FLY_FRAME_HDR, len - 5);
    }
    /* Stop reading input while output waits: the channel is backed up. */
    if (fly_io_used(&tx) > FX_OUT_HIGH)
      break;
  }
}

/* ---- commands' pipes and exits ------------------------------------------- */

static void read_pipe(fx_cmd_t *c, int *fd, int type) {
  unsigned char *h;
  ssize_t n;
  if (fly_io_room(&tx, FLY_FRAME_HDR + FX_READ) != 0)
    die_closed();
  h = (unsigned char *)tx.base + tx.len;
  do
    n = read(*fd, h + FLY_FRAME_HDR, FX_READ);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN)
    return;
  if (n <= 0) {
    fly_io_close(fd);
    return;
  }
  fly_io_put32(h, (uint32_t)(5 + n));
  h[4] = (unsigned char)type;
  fly_io_put32(h + 5, c->id);
  tx.len += FLY_FRAME_HDR + (size_t)n;
}

static void write_stdin(fx_cmd_t *c) {
  while (fly_io_used(&c->inbuf) > 0) {
    ssize_t n = write(c->in, c->inbuf.base + c->inbuf.off,
                      fly_io_used(&c->inbuf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    if (n < 0) {
      /* The command closed its stdin: what is left is dropped. */
      send_ack(c->id, fly_io_used(&c->inbuf));
      c->inbuf.off = c->inbuf.len = 0;
      fly_io_close(&c->in);
      return;
    }
    c->inbuf.off += (size_t)n;
    send_ack(c->id, (size_t)n);
  }
  c->inbuf.off = c->inbuf.len = 0;
  if (c->in_eof)
    fly_io_close(&c->in);
}

/* The running job with this leader. */
static fly_io_job_t *job_of(pid_t pid) {
  fx_cmd_t *c;
  for (c = cmds; c != NULL; c = c->next)
    if (c->job.pid == pid && !c->job.reaped)
      return &c->job;
  return NULL;
}

static void reap(void) { fly_io_reap(sig_fd, job_of); }

static void timers(uint64_t now) {
  fx_cmd_t *c;
  for (c = cmds; c != NULL; c = c->next)
    fly_io_job_tick(&c->job, now, FX_KILL_AFTER_MS);
}

int main(void) {
  sigset_t mask;
  unsigned char hello[FLY_EXEC_HELLO_LEN];
  struct pollfd *pfd = NULL;
  size_t pcap = 0;

  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  home_fd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (sig_fd < 0 || home_fd < 0)
    return 1;
  /* bash's exec set $_ to our path (and undid its own SHLVL count, so
   * SHLVL is sshd's): the commands' shells set $_ themselves. */
  unsetenv("_");
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);

  memcpy(hello, FLY_EXEC_MAGIC, FLY_EXEC_MAGIC_LEN);
  fly_io_put32(hello + FLY_EXEC_MAGIC_LEN, FLY_EXEC_VERSION);
  fly_io_put32(hello + FLY_EXEC_MAGIC_LEN + 4, FLY_FRAME_MAX);
  send_frame(FLY_FRAME_HELLO, 0, hello, FLY_EXEC_HELLO_LEN, NULL, 0);

  for (;;) {
    fx_cmd_t *c, *cn;
    size_t n = 0, need = 3 + 3 * (size_t)ncmds;
    int timeout = -1, backed_up = fly_io_used(&tx) > FX_OUT_HIGH;
    uint64_t now = fly_io_mono_ms(), next = UINT64_MAX;

    if (need > pcap) {
      struct pollfd *np = realloc(pfd, need * sizeof(*pfd));
      if (np == NULL)
        die_closed();
      pfd = np;
      pcap = need;
    }
    pfd[n++] = (struct pollfd){0, backed_up ? 0 : POLLIN, 0};
    pfd[n++] = (struct pollfd){1, fly_io_used(&tx) > 0 ? POLLOUT : 0, 0};
    pfd[n++] = (struct pollfd){sig_fd, POLLIN, 0};
    for (c = cmds; c != NULL; c = c->next) {
      pfd[n++] = (struct pollfd){c->out, backed_up ? 0 : POLLIN, 0};
      pfd[n++] = (struct pollfd){c->err, backed_up ? 0 : POLLIN, 0};
      pfd[n++] = (struct pollfd){c->in, fly_io_used(&c->inbuf) ? POLLOUT : 0, 0};
      next = fly_io_job_next(&c->job, next);
    }
    if (next != UINT64_MAX)
      timeout = next <= now ? 0 : (int)(next - now > 60000 ? 60000 : next - now);
    if (poll(pfd, n, timeout) < 0 && errno != EINTR)
      die_closed();
    if (pfd[1].revents & (POLLOUT | POLLERR | POLLHUP))
      flush_tx();
    if (pfd[2].revents & POLLIN)
      reap();
    /* The command list below is the one polled: new commands from the
     * frames read after it are polled next turn. */
    n = 3;
    for (c = cmds; c != NULL; c = cn) {
      cn = c->next;
      if (c->out >= 0 && (pfd[n].revents & (POLLIN | POLLHUP | POLLERR)))
        read_pipe(c, &c->out, FLY_FRAME_STDOUT);
      if (c->err >= 0 && (pfd[n + 1].revents & (POLLIN | POLLHUP | POLLERR)))
        read_pipe(c, &c->err, FLY_FRAME_STDERR);
      if (c->in >= 0 && (pfd[n + 2].revents & (POLLOUT | POLLERR | POLLHUP)))
        write_stdin(c);
      n += 3;
    }
    timers(fly_io_mono_ms());
    for (c = cmds; c != NULL; c = cn) {
      cn = c->next;
      cmd_check_done(c);
    }
    if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))
      read_rx();
    flush_tx();
  }
}
