/* flyio.h: what the sandbox's two static programs share, docker/flyexec.c
 * (the per-session command executor) and docker/flyproc.c (the per-machine
 * process daemon): big-endian integers, a growable byte queue, the reader
 * of a frame's payload (bounded by the frame), and a few process helpers.
 * Header-only (static inline) because each program is built from its one
 * .c file (cc -static; fly-local's image builder and the Dockerfile). */
#ifndef FLYIO_H
#define FLYIO_H

#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/signalfd.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static inline uint64_t fly_io_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline void fly_io_put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

static inline uint32_t fly_io_get32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
         ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Bytes queued at [off, len) of base (cap allocated). */
typedef struct {
  unsigned char *base;
  size_t off, len, cap;
} fly_io_buf_t;

static inline size_t fly_io_used(const fly_io_buf_t *b) {
  return b->len - b->off;
}

/* Room for `extra` more bytes at len (what was consumed is reclaimed
 * first); -1 when out of memory. */
static inline int fly_io_room(fly_io_buf_t *b, size_t extra) {
  size_t cap;
  unsigned char *p;
  if (b->off > 0 && (b->off == b->len || b->off > b->cap / 2)) {
    memmove(b->base, b->base + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
  }
  if (b->len + extra <= b->cap)
    return 0;
  cap = b->cap ? b->cap : 4096;
  while (cap < b->len + extra)
    cap *= 2;
  p = realloc(b->base, cap);
  if (p == NULL)
    return -1;
  b->base = p;
  b->cap = cap;
  return 0;
}

static inline int fly_io_add(fly_io_buf_t *b, const void *p, size_t n) {
  if (n == 0)
    return 0;
  if (fly_io_room(b, n) != 0)
    return -1;
  memcpy(b->base + b->len, p, n);
  b->len += n;
  return 0;
}

static inline void fly_io_free(fly_io_buf_t *b) {
  free(b->base);
  memset(b, 0, sizeof(*b));
}

/* A payload being read: any read past its end sets bad. */
typedef struct {
  const unsigned char *p;
  size_t left;
  int bad;
} fly_io_rd_t;

static inline uint32_t fly_io_rd32(fly_io_rd_t *r) {
  uint32_t v;
  if (r->left < 4) {
    r->bad = 1;
    return 0;
  }
  v = fly_io_get32(r->p);
  r->p += 4;
  r->left -= 4;
  return v;
}

/* A string of the payload (u32 length + bytes) as a new C string; NUL
 * bytes refused. */
static inline char *fly_io_rdstr(fly_io_rd_t *r) {
  uint32_t n = fly_io_rd32(r);
  char *s;
  if (r->bad || n > r->left || memchr(r->p, 0, n) != NULL) {
    r->bad = 1;
    return NULL;
  }
  s = malloc((size_t)n + 1);
  if (s == NULL) {
    r->bad = 1;
    return NULL;
  }
  memcpy(s, r->p, n);
  s[n] = '\0';
  r->p += n;
  r->left -= n;
  return s;
}

static inline void fly_io_close(int *fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

/* Frees a NULL-terminated vector of strings and the strings. */
static inline void fly_io_strv_free(char **v) {
  size_t i;
  if (v == NULL)
    return;
  for (i = 0; v[i] != NULL; i++)
    free(v[i]);
  free(v);
}

/* The sandbox user's shell, as sshd would run it. */
static inline const char *fly_io_shell(void) {
  const char *sh = getenv("SHELL");
  return sh != NULL && sh[0] == '/' ? sh : "/bin/sh";
}

/* A command's leader (its group id too) and its timeout, GNU `timeout -k`'s:
 * SIGTERM (and SIGCONT) to the group at term_at, SIGKILL kill_after later,
 * exit code 124 unless that SIGKILL ended it. */
typedef struct {
  pid_t pid;
  int reaped, status; /* status: the leader's wait status once reaped */
  int timed_out;
  uint64_t term_at, kill_at; /* monotonic ms, 0 = none */
} fly_io_job_t;

static inline void fly_io_job_signal(const fly_io_job_t *j, int sig) {
  /* The group outlives a reaped leader while members hold the pipes. */
  if (j->pid > 0)
    kill(-j->pid, sig);
}

static inline void fly_io_job_tick(fly_io_job_t *j, uint64_t now,
                                   uint64_t kill_after_ms) {
  if (j->term_at != 0 && now >= j->term_at) {
    j->term_at = 0;
    j->timed_out = 1;
    fly_io_job_signal(j, SIGTERM);
    fly_io_job_signal(j, SIGCONT);
    j->kill_at = now + kill_after_ms;
  }
  if (j->kill_at != 0 && now >= j->kill_at) {
    j->kill_at = 0;
    fly_io_job_signal(j, SIGKILL);
  }
}

/* The earlier of next and this job's next deadline. */
static inline uint64_t fly_io_job_next(const fly_io_job_t *j, uint64_t next) {
  if (j->term_at != 0 && j->term_at < next)
    next = j->term_at;
  if (j->kill_at != 0 && j->kill_at < next)
    next = j->kill_at;
  return next;
}

/* Drains the SIGCHLD signalfd and reaps every child that ended, recording
 * each in the job find() gives for its pid (NULL: not one of ours, e.g. a
 * detached background command, reaped all the same). */
static inline void fly_io_reap(int sig_fd, fly_io_job_t *(*find)(pid_t)) {
  struct signalfd_siginfo si;
  int status;
  pid_t pid;
  while (read(sig_fd, &si, sizeof(si)) > 0)
    ;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    fly_io_job_t *j = find(pid);
    if (j != NULL) {
      j->reaped = 1;
      j->status = status;
    }
  }
}

/* A reaped leader's exit code and signal (code 128 + signal, as a shell
 * reports it; 124 for a timeout, unless the -k SIGKILL ended it). */
static inline void fly_io_job_result(const fly_io_job_t *j, int *code,
                                     int *sig) {
  *sig = 0;
  if (WIFEXITED(j->status)) {
    *code = WEXITSTATUS(j->status);
  } else {
    *sig = WTERMSIG(j->status);
    *code = 128 + *sig;
  }
  if (j->timed_out && *sig != SIGKILL) {
    *code = 124;
    *sig = 0;
  }
}

#endif
