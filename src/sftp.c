/* sftp.c: file operations over the session's SFTP subsystem (sftp).
 *
 * One SFTP channel per session, opened by the first SFTP op.  libssh2 keeps
 * per-SFTP state for open/mkdir/stat and friends, so the session runs its
 * SFTP ops one at a time (sftp_owner), in arrival order.  Each op is a small
 * state machine of single libssh2 calls, resumed where EAGAIN left it.
 * Reads and writes go in big slices so libssh2 pipelines the requests. */
#include "ssh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { K_READ, K_WRITE, K_MKDIR, K_READDIR, K_STAT, K_REMOVE };
static const char *const kind_names[] = {"read",    "write", "mkdir",
                                         "readdir", "stat",  "remove"};

enum { T_FILE, T_DIR, T_LINK, T_OTHER };
static const char *const type_names[] = {"file", "directory", "symlink",
                                         "other"};

/* Phases; each kind uses the ones it needs. */
enum {
  P_START = 0,
  P_OPEN,
  P_IO,
  P_CLOSE,
  P_MK_NEXT,
  P_MK_MKDIR,
  P_MK_STAT,
  P_RM_LSTAT,
  P_RM_OPENDIR,
  P_RM_READDIR,
  P_RM_CLOSEDIR,
  P_RM_NEXT,
  P_RM_UNLINK,
  P_RM_RMDIR
};

/* Bytes handed to one libssh2 read/write call, which is how libssh2 1.10
 * pipelines: a read keeps 4x its buffer (at most 8 MiB) of FXP_READ
 * requests of 30,000 bytes outstanding, a write keeps its whole buffer in
 * flight as FXP_WRITEs of 30,000 bytes.  A write over OpenSSH's 2 MiB
 * channel window stalls: libssh2 1.10 tries to send before it reads acks,
 * so a full window keeps it from seeing them (measured: 4 MiB slices ~18
 * MiB/s on loopback); 1 MiB keeps ~35 writes in flight, about what
 * OpenSSH's sftp keeps (64 x 32 KiB). */
#define FLY_SFTP_READ_SLICE (4u << 20)
#define FLY_SFTP_WRITE_SLICE (1u << 20)
/* The smallest read request libssh2 makes (its MAX_SFTP_READ_SIZE). */
#define FLY_SFTP_READ_REQ 30000u
/* Room for the read that finds the end of a file of known size. */
#define FLY_SFTP_EOF_PROBE 4096u
/* Defaults of maxFileBytes (read) and maxEntries (readdir, remove). */
#define FLY_SFTP_MAX_FILE_BYTES ((uint64_t)256 << 20)
#define FLY_SFTP_MAX_ENTRIES 100000

typedef struct fly_sftp_ent_s {
  char *name;
  int type;
  uint64_t size;
  double mtime_ms;
} fly_sftp_ent_t;

typedef struct fly_sftp_frame_s {
  char *path;
  char **names;
  unsigned char *isdir;
  size_t n, cap, idx;
  int more;                    /* the listing stopped at maxEntries */
} fly_sftp_frame_t;

typedef struct fly_sftp_s {
  fly_ssh_op_t op;             /* first */
  /* Set on the JS thread. */
  int kind;
  char *path;
  int recursive;
  fly_buf_t data;              /* read: the result; write: a copied string */
  napi_ref pin;                /* write: the caller's Buffer, pinned */
  const char *wdata;           /* write: the bytes and their size */
  size_t wlen;
  int ranged;                  /* read/write: offset given (no truncate) */
  uint64_t offset;             /* read/write: where to start */
  uint64_t length;             /* read: at most this many bytes */
  int has_length;              /* read: length given (no size error) */
  int append;                  /* write: at the end of the file */
  uint64_t max_bytes;          /* read: maxFileBytes */
  uint64_t max_entries;        /* readdir: maxEntries; remove: per listing */
  /* I/O thread. */
  uint64_t expect;             /* read: bytes the stat promised, capped */
  int phase;
  LIBSSH2_SFTP_HANDLE *h;
  size_t off;
  char *cur;                   /* mkdir/remove: the path being worked on */
  size_t pos;                  /* mkdir: end of the current prefix */
  int cur_last;                /* mkdir: cur is the whole path */
  unsigned long saved_fx;
  int retried;                 /* remove: cur's unlink failed once */
  fly_sftp_frame_t *stack;
  size_t depth, stack_cap;
  /* Results. */
  int found;
  int type;
  uint64_t size;
  double mtime_ms;
  fly_sftp_ent_t *ents;
  size_t nents, ents_cap;
} fly_sftp_t;

static int attrs_type(const LIBSSH2_SFTP_ATTRIBUTES *a) {
  if (!(a->flags & LIBSSH2_SFTP_ATTR_PERMISSIONS))
    return T_OTHER;
  switch (a->permissions & LIBSSH2_SFTP_S_IFMT) {
  case LIBSSH2_SFTP_S_IFREG:
    return T_FILE;
  case LIBSSH2_SFTP_S_IFDIR:
    return T_DIR;
  case LIBSSH2_SFTP_S_IFLNK:
    return T_LINK;
  default:
    return T_OTHER;
  }
}

static void attrs_take(fly_sftp_t *x, const LIBSSH2_SFTP_ATTRIBUTES *a) {
  x->found = 1;
  x->type = attrs_type(a);
  x->size = (a->flags & LIBSSH2_SFTP_ATTR_SIZE) ? a->filesize : 0;
  x->mtime_ms =
      (a->flags & LIBSSH2_SFTP_ATTR_ACMODTIME) ? (double)a->mtime * 1000 : 0;
}

static const char *fx_code(unsigned long fx, const char **text) {
  switch (fx) {
  case LIBSSH2_FX_NO_SUCH_FILE:
  case LIBSSH2_FX_NO_SUCH_PATH:
    *text = "no such file or directory";
    return "SFTP_NO_SUCH_FILE";
  case LIBSSH2_FX_PERMISSION_DENIED:
  case LIBSSH2_FX_WRITE_PROTECT:
    *text = "permission denied";
    return "SFTP_PERMISSION_DENIED";
  case LIBSSH2_FX_FILE_ALREADY_EXISTS:
    *text = "file exists";
    return "SFTP_FILE_EXISTS";
  case LIBSSH2_FX_NOT_A_DIRECTORY:
    *text = "not a directory";
    return "SFTP_NOT_A_DIRECTORY";
  case LIBSSH2_FX_DIR_NOT_EMPTY:
    *text = "directory not empty";
    return "SFTP_DIR_NOT_EMPTY";
  case 24: /* SSH_FX_FILE_IS_A_DIRECTORY */
    *text = "is a directory";
    return "SFTP_IS_A_DIRECTORY";
  case LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM:
  case LIBSSH2_FX_QUOTA_EXCEEDED:
    *text = "no space left";
    return "SFTP_NO_SPACE";
  case LIBSSH2_FX_OP_UNSUPPORTED:
    *text = "operation not supported";
    return "SFTP_UNSUPPORTED";
  default:
    *text = "failure";
    return "SFTP_FAILURE";
  }
}

static int fail_code(fly_sftp_t *x, const char *code, const char *path,
                     const char *text) {
  fly_err_set(&x->op.req.err, code, "sftp %s '%s': %s", kind_names[x->kind],
              path, text);
  fly_err_set_path(&x->op.req.err, path);
  return FLY_SSH_DONE;
}

/* rc from a libssh2 call that failed (not EAGAIN). */
static int fail_rc(fly_ssh_sess_t *s, fly_sftp_t *x, int rc,
                   const char *path) {
  const char *text;
  const char *code;

  if (fly_ssh_rc_dead(s, rc))
    return FLY_SSH_DEAD;
  if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL) {
    unsigned long fx = libssh2_sftp_last_error(s->sftp);
    code = fx_code(fx, &text);
    x->op.req.err.lib_code = (long)fx;
    return fail_code(x, code, path, text);
  }
  fly_ssh_err_last(s, &x->op.req.err, "SFTP_FAILURE", "sftp");
  fly_err_set_path(&x->op.req.err, path);
  return FLY_SSH_DONE;
}

static unsigned long last_fx(fly_ssh_sess_t *s, int rc) {
  return rc == LIBSSH2_ERROR_SFTP_PROTOCOL ? libssh2_sftp_last_error(s->sftp)
                                           : 0;
}

static int is_missing(fly_ssh_sess_t *s, int rc) {
  unsigned long fx = last_fx(s, rc);
  return fx == LIBSSH2_FX_NO_SUCH_FILE || fx == LIBSSH2_FX_NO_SUCH_PATH;
}

#define AGAIN(s) (fly_ssh_blocked_out(s) ? FLY_SSH_OUT : FLY_SSH_WAIT)

static int sftp_stat(fly_ssh_sess_t *s, const char *path, int lstat,
                     LIBSSH2_SFTP_ATTRIBUTES *a) {
  memset(a, 0, sizeof(*a));
  return libssh2_sftp_stat_ex(s->sftp, path, (unsigned)strlen(path),
                              lstat ? LIBSSH2_SFTP_LSTAT : LIBSSH2_SFTP_STAT,
                              a);
}

/* Open x->path into x->h; while x->h is NULL the result is the verdict. */
static int sftp_open(fly_ssh_sess_t *s, fly_sftp_t *x, unsigned long flags,
                     long mode, int type) {
  int rc;
  x->h = libssh2_sftp_open_ex(s->sftp, x->path, (unsigned)strlen(x->path),
                              flags, mode, type);
  if (x->h != NULL)
    return 0;
  rc = libssh2_session_last_errno(s->ls);
  if (rc == LIBSSH2_ERROR_EAGAIN)
    return AGAIN(s);
  return fail_rc(s, x, rc, x->path);
}

/* Close x->h (errors of the op already set stay); DONE when closed. */
static int sftp_close(fly_ssh_sess_t *s, fly_sftp_t *x) {
  int rc;
  if (x->h == NULL)
    return FLY_SSH_DONE;
  rc = libssh2_sftp_close_handle(x->h);
  if (rc == LIBSSH2_ERROR_EAGAIN)
    return AGAIN(s);
  x->h = NULL;
  if (rc != 0 && fly_ssh_rc_dead(s, rc))
    return FLY_SSH_DEAD;
  if (rc != 0 && x->op.req.err.code == NULL)
    return fail_rc(s, x, rc, x->path);
  return FLY_SSH_DONE;
}

/* An error while a handle is open: keep it and close the handle first. */
static int fail_open(fly_ssh_sess_t *s, fly_sftp_t *x, int verdict) {
  if (verdict != FLY_SSH_DONE)
    return verdict;
  x->phase = P_CLOSE;
  return sftp_close(s, x);
}

/* ---- read / write / stat / readdir --------------------------------------- */

static int too_many(fly_sftp_t *x, const char *path) {
  fly_err_set(&x->op.req.err, "ERR_TOO_MANY_ENTRIES",
              "sftp %s '%s': more than maxEntries (%llu) entries",
              kind_names[x->kind], path,
              (unsigned long long)x->max_entries);
  fly_err_set_path(&x->op.req.err, path);
  return FLY_SSH_DONE;
}

static int too_large(fly_sftp_t *x) {
  fly_err_set(&x->op.req.err, "ERR_FILE_TOO_LARGE",
              "sftp read '%s': more than maxFileBytes (%llu bytes); read it "
              "in ranges with readFile(path, { offset, length }) or raise "
              "maxFileBytes",
              x->path, (unsigned long long)x->max_bytes);
  fly_err_set_path(&x->op.req.err, x->path);
  return FLY_SSH_DONE;
}

/* The whole file, or length bytes from offset; never more than max_bytes
 * kept, whatever size the file claims or grows to. */
static int run_read(fly_ssh_sess_t *s, fly_sftp_t *x) {
  LIBSSH2_SFTP_ATTRIBUTES a;
  int rc;
  ssize_t n;
  uint64_t want = x->length, sized;

  switch (x->phase) {
  case P_START:
    rc = sftp_stat(s, x->path, 0, &a);
    if (rc == LIBSSH2_ERROR_EAGAIN)
      return AGAIN(s);
    if (rc != 0)
      return fail_rc(s, x, rc, x->path);
    if (attrs_type(&a) == T_DIR)
      return fail_code(x, "SFTP_IS_A_DIRECTORY", x->path, "is a directory");
    sized = (a.flags & LIBSSH2_SFTP_ATTR_SIZE) ? a.filesize : 0;
    sized = sized > x->offset ? sized - x->offset : 0;
    if (!x->has_length && sized > x->max_bytes)
      return too_large(x);
    /* Size the buffer once from the file's size (it may still grow), never
     * beyond what may be kept. */
    if (sized > want)
      sized = want;
    x->expect = sized;
    /* The file and the read that finds its end, without a regrowth. */
    if (sized > 0 && fly_buf_reserve(&x->data, (size_t)sized +
                                                   FLY_SFTP_EOF_PROBE) != 0)
      return fail_code(x, "ERR_NO_MEMORY", x->path, "out of memory");
    x->phase = P_OPEN;
    s->progress = 1;
    /* fall through */
  case P_OPEN:
    rc = sftp_open(s, x, LIBSSH2_FXF_READ, 0, LIBSSH2_SFTP_OPENFILE);
    if (x->h == NULL)
      return rc;
    if (x->offset > 0)
      libssh2_sftp_seek64(x->h, x->offset);
    x->phase = P_IO;
    s->progress = 1;
    /* fall through */
  case P_IO:
    for (;;) {
      size_t room;
      uint64_t left = want - x->data.len;
      if (left == 0)
        break;
      if (fly_buf_reserve(&x->data, 4096) != 0)
        return fail_open(s, x, fail_code(x, "ERR_NO_MEMORY", x->path,
                                         "out of memory"));
      room = x->data.cap - x->data.len - 1;
      if (room > FLY_SFTP_READ_SLICE)
        room = FLY_SFTP_READ_SLICE;
      if (x->data.len < x->expect) {
        /* libssh2 asks for 4x the buffer: a quarter of what the stat says
         * is left keeps the requests within the file (each one past its
         * end is a wasted round of the server's), and all of it in
         * flight until the last 120 KB. */
        uint64_t quarter = (x->expect - x->data.len) / 4;
        if (quarter < FLY_SFTP_READ_REQ)
          quarter = FLY_SFTP_READ_REQ;
        if (room > quarter)
          room = (size_t)quarter;
      } else if (x->expect > 0 && room > FLY_SFTP_EOF_PROBE) {
        room = FLY_SFTP_EOF_PROBE; /* one request to see the end */
      }
      if (room > left)
        room = (size_t)left;
      n = libssh2_sftp_read(x->h, x->data.base + x->data.len, room);
      if (n == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      if (n < 0)
        return fail_open(s, x, fail_rc(s, x, (int)n, x->path));
      if (n == 0)
        break;
      x->data.len += (size_t)n;
      x->data.base[x->data.len] = '\0';
      s->progress = 1;
      /* Longer than its stat said (it grew): big slices again. */
      if (x->data.len > x->expect)
        x->expect = 0;
      if (!x->has_length && x->data.len > x->max_bytes) {
        fly_buf_free(&x->data);
        return fail_open(s, x, too_large(x));
      }
    }
    x->phase = P_CLOSE;
    /* fall through */
  case P_CLOSE:
    return sftp_close(s, x);
  }
  return FLY_SSH_WAIT;
}

static int run_write(fly_ssh_sess_t *s, fly_sftp_t *x) {
  int rc;
  ssize_t n;

  switch (x->phase) {
  case P_START:
  case P_OPEN:
    x->phase = P_OPEN;
    /* Whole file: truncate.  At an offset or appended: keep what is
     * there, so a large file can be sent in pieces. */
    rc = sftp_open(s, x,
                   LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT |
                       (x->append   ? LIBSSH2_FXF_APPEND
                        : x->ranged ? 0
                                    : LIBSSH2_FXF_TRUNC),
                   0644, LIBSSH2_SFTP_OPENFILE);
    if (x->h == NULL)
      return rc;
    if (x->ranged && !x->append)
      libssh2_sftp_seek64(x->h, x->offset);
    x->phase = P_IO;
    s->progress = 1;
    /* fall through */
  case P_IO:
    while (x->off < x->wlen) {
      size_t len = x->wlen - x->off;
      if (len > FLY_SFTP_WRITE_SLICE)
        len = FLY_SFTP_WRITE_SLICE;
      n = libssh2_sftp_write(x->h, x->wdata + x->off, len);
      if (n == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      if (n < 0)
        return fail_open(s, x, fail_rc(s, x, (int)n, x->path));
      x->off += (size_t)n;
      s->progress = 1;
    }
    x->phase = P_CLOSE;
    /* fall through */
  case P_CLOSE:
    return sftp_close(s, x);
  }
  return FLY_SSH_WAIT;
}

static int run_stat(fly_ssh_sess_t *s, fly_sftp_t *x) {
  LIBSSH2_SFTP_ATTRIBUTES a;
  int rc = sftp_stat(s, x->path, 0, &a);

  if (rc == LIBSSH2_ERROR_EAGAIN)
    return AGAIN(s);
  if (rc != 0) {
    if (is_missing(s, rc))
      return FLY_SSH_DONE; /* found = 0: null */
    return fail_rc(s, x, rc, x->path);
  }
  attrs_take(x, &a);
  return FLY_SSH_DONE;
}

static int run_readdir(fly_ssh_sess_t *s, fly_sftp_t *x) {
  LIBSSH2_SFTP_ATTRIBUTES a;
  char name[4096];
  int rc;

  switch (x->phase) {
  case P_START:
    rc = sftp_stat(s, x->path, 0, &a);
    if (rc == LIBSSH2_ERROR_EAGAIN)
      return AGAIN(s);
    if (rc != 0)
      return fail_rc(s, x, rc, x->path);
    if (attrs_type(&a) != T_DIR)
      return fail_code(x, "SFTP_NOT_A_DIRECTORY", x->path, "not a directory");
    x->phase = P_OPEN;
    s->progress = 1;
    /* fall through */
  case P_OPEN:
    rc = sftp_open(s, x, 0, 0, LIBSSH2_SFTP_OPENDIR);
    if (x->h == NULL)
      return rc;
    x->phase = P_IO;
    s->progress = 1;
    /* fall through */
  case P_IO:
    for (;;) {
      fly_sftp_ent_t *e;
      memset(&a, 0, sizeof(a));
      rc = libssh2_sftp_readdir_ex(x->h, name, sizeof(name) - 1, NULL, 0, &a);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      if (rc < 0)
        return fail_open(s, x, fail_rc(s, x, rc, x->path));
      if (rc == 0)
        break;
      s->progress = 1;
      name[rc] = '\0';
      if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        continue;
      if (x->nents >= x->max_entries)
        return fail_open(s, x, too_many(x, x->path));
      if (x->nents == x->ents_cap) {
        size_t cap = x->ents_cap ? x->ents_cap * 2 : 64;
        fly_sftp_ent_t *p = realloc(x->ents, cap * sizeof(*p));
        if (p == NULL)
          return fail_open(s, x, fail_code(x, "ERR_NO_MEMORY", x->path,
                                           "out of memory"));
        x->ents = p;
        x->ents_cap = cap;
      }
      e = &x->ents[x->nents];
      e->name = strdup(name);
      if (e->name == NULL)
        return fail_open(s, x, fail_code(x, "ERR_NO_MEMORY", x->path,
                                         "out of memory"));
      e->type = attrs_type(&a);
      e->size = (a.flags & LIBSSH2_SFTP_ATTR_SIZE) ? a.filesize : 0;
      e->mtime_ms = (a.flags & LIBSSH2_SFTP_ATTR_ACMODTIME)
                        ? (double)a.mtime * 1000
                        : 0;
      x->nents++;
    }
    x->phase = P_CLOSE;
    /* fall through */
  case P_CLOSE:
    return sftp_close(s, x);
  }
  return FLY_SSH_WAIT;
}

/* ---- mkdir --------------------------------------------------------------- */

/* The next prefix of x->path into x->cur; 0, 1 when there is none left, or
 * -1 when out of memory. */
static int mk_next_prefix(fly_sftp_t *x) {
  const char *p = x->path;
  size_t i = x->pos, n = strlen(p);

  while (i < n && p[i] == '/')
    i++;
  if (i >= n)
    return 1;
  while (i < n && p[i] != '/')
    i++;
  x->pos = i;
  free(x->cur);
  x->cur = strndup(p, i);
  if (x->cur == NULL)
    return -1;
  while (i < n && p[i] == '/')
    i++;
  x->cur_last = i >= n;
  return 0;
}

static int run_mkdir(fly_ssh_sess_t *s, fly_sftp_t *x) {
  LIBSSH2_SFTP_ATTRIBUTES a;
  int rc;

  for (;;) {
    switch (x->phase) {
    case P_START:
      rc = sftp_stat(s, x->path, 0, &a);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      if (rc == 0) {
        if (attrs_type(&a) == T_DIR && x->recursive)
          return FLY_SSH_DONE;
        return fail_code(x, "SFTP_FILE_EXISTS", x->path, "file exists");
      }
      if (!is_missing(s, rc))
        return fail_rc(s, x, rc, x->path);
      s->progress = 1;
      if (x->recursive) {
        x->phase = P_MK_NEXT;
      } else {
        x->cur = strdup(x->path);
        if (x->cur == NULL)
          return fail_code(x, "ERR_NO_MEMORY", x->path, "out of memory");
        x->cur_last = 1;
        x->phase = P_MK_MKDIR;
      }
      break;
    case P_MK_NEXT:
      rc = mk_next_prefix(x);
      if (rc < 0)
        return fail_code(x, "ERR_NO_MEMORY", x->path, "out of memory");
      if (rc > 0)
        return FLY_SSH_DONE;
      x->phase = P_MK_MKDIR;
      break;
    case P_MK_MKDIR:
      rc = libssh2_sftp_mkdir_ex(s->sftp, x->cur, (unsigned)strlen(x->cur),
                                 0755);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      s->progress = 1;
      if (rc == 0) {
        if (x->cur_last)
          return FLY_SSH_DONE;
        x->phase = P_MK_NEXT;
        break;
      }
      x->saved_fx = last_fx(s, rc);
      if (x->saved_fx != LIBSSH2_FX_FAILURE &&
          x->saved_fx != LIBSSH2_FX_FILE_ALREADY_EXISTS)
        return fail_rc(s, x, rc, x->cur);
      /* OpenSSH says FAILURE for EEXIST: look at what is there. */
      x->phase = P_MK_STAT;
      break;
    case P_MK_STAT:
      rc = sftp_stat(s, x->cur, 0, &a);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      s->progress = 1;
      if (rc != 0) {
        const char *text, *code = fx_code(x->saved_fx, &text);
        if (!is_missing(s, rc))
          return fail_rc(s, x, rc, x->cur);
        return fail_code(x, code, x->cur, text);
      }
      if (!x->recursive)
        return fail_code(x, "SFTP_FILE_EXISTS", x->cur, "file exists");
      if (attrs_type(&a) != T_DIR)
        return fail_code(x, x->cur_last ? "SFTP_FILE_EXISTS"
                                        : "SFTP_NOT_A_DIRECTORY",
                         x->cur, x->cur_last ? "file exists"
                                             : "not a directory");
      if (x->cur_last)
        return FLY_SSH_DONE;
      x->phase = P_MK_NEXT;
      break;
    default:
      return FLY_SSH_WAIT;
    }
  }
}

/* ---- remove -------------------------------------------------------------- */

static void frame_free(fly_sftp_frame_t *f) {
  size_t i;
  for (i = 0; i < f->n; i++)
    free(f->names[i]);
  free(f->names);
  free(f->isdir);
  free(f->path);
  memset(f, 0, sizeof(*f));
}

static int frame_push(fly_sftp_t *x, const char *path) {
  fly_sftp_frame_t *f;
  if (x->depth == x->stack_cap) {
    size_t cap = x->stack_cap ? x->stack_cap * 2 : 8;
    fly_sftp_frame_t *p = realloc(x->stack, cap * sizeof(*p));
    if (p == NULL)
      return -1;
    x->stack = p;
    x->stack_cap = cap;
  }
  f = &x->stack[x->depth];
  memset(f, 0, sizeof(*f));
  f->path = strdup(path);
  if (f->path == NULL)
    return -1;
  x->depth++;
  return 0;
}

static int frame_add(fly_sftp_frame_t *f, const char *name, int isdir) {
  if (f->n == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 32;
    char **names = realloc(f->names, cap * sizeof(char *));
    unsigned char *d;
    if (names == NULL)
      return -1;
    f->names = names;
    d = realloc(f->isdir, cap);
    if (d == NULL)
      return -1;
    f->isdir = d;
    f->cap = cap;
  }
  f->names[f->n] = strdup(name);
  if (f->names[f->n] == NULL)
    return -1;
  f->isdir[f->n] = (unsigned char)isdir;
  f->n++;
  return 0;
}

static char *path_join(const char *dir, const char *name) {
  size_t ld = strlen(dir), ln = strlen(name);
  char *p = malloc(ld + ln + 2);
  if (p == NULL)
    return NULL;
  memcpy(p, dir, ld);
  if (ld == 0 || dir[ld - 1] != '/')
    p[ld++] = '/';
  memcpy(p + ld, name, ln + 1);
  return p;
}

/* The top frame's listing is done but its directory may hold more: drop
 * the frame and look at the path again (P_RM_LSTAT) for the next pass, so a
 * directory swapped for a symlink meanwhile is unlinked, never followed. */
static void rm_again(fly_sftp_t *x, fly_sftp_frame_t *top) {
  free(x->cur);
  x->cur = top->path;
  top->path = NULL;
  frame_free(top);
  x->depth--;
  x->phase = P_RM_LSTAT;
}

/* Recursive remove walks a stack of directories.  Each listing holds at
 * most maxEntries names: when a directory has more, what was listed is
 * deleted and the directory is listed again, until a pass lists it whole
 * and rmdir succeeds.  A directory that grows as fast as we delete keeps
 * the walk going until the op's deadline.  Every directory is lstat'ed
 * just before it is opened (SFTP opendir follows symlinks), and an entry
 * that changed type since its listing is looked at again, not trusted. */
static int run_remove(fly_ssh_sess_t *s, fly_sftp_t *x) {
  LIBSSH2_SFTP_ATTRIBUTES a;
  fly_sftp_frame_t *top;
  char name[4096];
  unsigned long fx;
  int rc;

  for (;;) {
    top = x->depth > 0 ? &x->stack[x->depth - 1] : NULL;
    switch (x->phase) {
    case P_START:
      rc = sftp_stat(s, x->path, 1, &a);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      if (rc != 0)
        return fail_rc(s, x, rc, x->path);
      s->progress = 1;
      x->cur = strdup(x->path);
      if (x->cur == NULL)
        return fail_code(x, "ERR_NO_MEMORY", x->path, "out of memory");
      if (attrs_type(&a) != T_DIR) {
        x->phase = P_RM_UNLINK;
      } else if (!x->recursive) {
        x->phase = P_RM_RMDIR;
      } else {
        if (frame_push(x, x->path) != 0)
          return fail_code(x, "ERR_NO_MEMORY", x->path, "out of memory");
        x->phase = P_RM_OPENDIR;
      }
      break;
    case P_RM_LSTAT:
      /* x->cur: listed as a directory, its unlink failed, or it is a
       * directory to list again. */
      rc = sftp_stat(s, x->cur, 1, &a);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      if (rc != 0 && !is_missing(s, rc))
        return fail_rc(s, x, rc, x->cur);
      s->progress = 1;
      if (rc != 0) {
        x->phase = P_RM_NEXT; /* gone already */
      } else if (attrs_type(&a) == T_DIR) {
        if (frame_push(x, x->cur) != 0)
          return fail_code(x, "ERR_NO_MEMORY", x->cur, "out of memory");
        x->phase = P_RM_OPENDIR;
      } else if (x->retried) {
        const char *text, *code = fx_code(x->saved_fx, &text);
        x->op.req.err.lib_code = (long)x->saved_fx;
        return fail_code(x, code, x->cur, text);
      } else {
        x->phase = P_RM_UNLINK;
      }
      break;
    case P_RM_OPENDIR:
      x->h = libssh2_sftp_open_ex(s->sftp, top->path,
                                  (unsigned)strlen(top->path), 0, 0,
                                  LIBSSH2_SFTP_OPENDIR);
      if (x->h == NULL) {
        rc = libssh2_session_last_errno(s->ls);
        if (rc == LIBSSH2_ERROR_EAGAIN)
          return AGAIN(s);
        if (!is_missing(s, rc))
          return fail_rc(s, x, rc, top->path);
        /* Gone or swapped for a dangling link since its lstat. */
        s->progress = 1;
        rm_again(x, top);
        break;
      }
      s->progress = 1;
      x->phase = P_RM_READDIR;
      break;
    case P_RM_READDIR:
      memset(&a, 0, sizeof(a));
      rc = libssh2_sftp_readdir_ex(x->h, name, sizeof(name) - 1, NULL, 0, &a);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      if (rc < 0) {
        rc = fail_rc(s, x, rc, top->path);
        x->phase = P_CLOSE;
        return fail_open(s, x, rc);
      }
      s->progress = 1;
      if (rc == 0) {
        x->phase = P_RM_CLOSEDIR;
        break;
      }
      name[rc] = '\0';
      if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        break;
      if (top->n >= x->max_entries) {
        /* maxEntries 0 could never make progress. */
        if (top->n == 0) {
          x->phase = P_CLOSE;
          return fail_open(s, x, too_many(x, top->path));
        }
        top->more = 1;
        x->phase = P_RM_CLOSEDIR;
        break;
      }
      if (frame_add(top, name, attrs_type(&a) == T_DIR) != 0) {
        x->phase = P_CLOSE;
        return fail_open(s, x, fail_code(x, "ERR_NO_MEMORY", top->path,
                                         "out of memory"));
      }
      break;
    case P_RM_CLOSEDIR:
      rc = libssh2_sftp_close_handle(x->h);
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      x->h = NULL;
      if (rc != 0 && fly_ssh_rc_dead(s, rc))
        return FLY_SSH_DEAD;
      x->phase = P_RM_NEXT;
      break;
    case P_RM_NEXT:
      if (top == NULL)
        return FLY_SSH_DONE;
      x->retried = 0;
      if (top->idx < top->n) {
        size_t i = top->idx++;
        free(x->cur);
        x->cur = path_join(top->path, top->names[i]);
        if (x->cur == NULL)
          return fail_code(x, "ERR_NO_MEMORY", top->path, "out of memory");
        x->phase = top->isdir[i] ? P_RM_LSTAT : P_RM_UNLINK;
      } else if (top->more) {
        rm_again(x, top);
      } else {
        free(x->cur);
        x->cur = strdup(top->path);
        if (x->cur == NULL)
          return fail_code(x, "ERR_NO_MEMORY", top->path, "out of memory");
        x->phase = P_RM_RMDIR;
      }
      break;
    case P_RM_UNLINK:
      rc = libssh2_sftp_unlink_ex(s->sftp, x->cur, (unsigned)strlen(x->cur));
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      fx = last_fx(s, rc);
      if (rc != 0 && x->recursive && !x->retried &&
          (fx == LIBSSH2_FX_FAILURE || fx == 24 /* IS_A_DIRECTORY */)) {
        /* Perhaps a directory now: look again, once. */
        x->retried = 1;
        x->saved_fx = fx;
        x->phase = P_RM_LSTAT;
        break;
      }
      if (rc != 0 && !(x->recursive && is_missing(s, rc)))
        return fail_rc(s, x, rc, x->cur);
      s->progress = 1;
      if (top == NULL)
        return FLY_SSH_DONE;
      x->phase = P_RM_NEXT;
      break;
    case P_RM_RMDIR:
      rc = libssh2_sftp_rmdir_ex(s->sftp, x->cur, (unsigned)strlen(x->cur));
      if (rc == LIBSSH2_ERROR_EAGAIN)
        return AGAIN(s);
      fx = last_fx(s, rc);
      if (rc != 0 && top != NULL &&
          (is_missing(s, rc) || (fx == LIBSSH2_FX_FAILURE && top->n > 0))) {
        /* Not empty after we deleted what we listed: it grew, list it
         * again.  Missing (OpenSSH says so for ENOTDIR too): see what is
         * there now. */
        s->progress = 1;
        rm_again(x, top);
        break;
      }
      if (rc != 0) {
        /* OpenSSH reports ENOTEMPTY as a plain FAILURE. */
        if (!x->recursive && fx == LIBSSH2_FX_FAILURE)
          return fail_code(x, "SFTP_DIR_NOT_EMPTY", x->cur,
                           "directory not empty");
        return fail_rc(s, x, rc, x->cur);
      }
      s->progress = 1;
      if (top == NULL)
        return FLY_SSH_DONE;
      frame_free(top);
      x->depth--;
      x->phase = P_RM_NEXT;
      break;
    case P_CLOSE:
      return sftp_close(s, x);
    default:
      return FLY_SSH_WAIT;
    }
  }
}

/* ---- the op -------------------------------------------------------------- */

static int sftp_step(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now) {
  fly_sftp_t *x = (fly_sftp_t *)op;
  int rc;

  if (s->sftp_owner != NULL && s->sftp_owner != op)
    return FLY_SSH_WAIT;
  if (s->sftp == NULL) {
    if (!fly_ssh_chan_begin(s, op, now))
      return FLY_SSH_WAIT;
    s->sftp_owner = op;
    s->sftp = libssh2_sftp_init(s->ls);
    if (s->sftp == NULL) {
      rc = fly_ssh_chan_failed(s, op, now, "starting the sftp subsystem");
      if (s->opener != op)
        s->sftp_owner = NULL;
      return rc;
    }
    fly_ssh_chan_opened(s, op);
  }
  s->sftp_owner = op;
  op->started = 1;
  switch (x->kind) {
  case K_READ:
    return run_read(s, x);
  case K_WRITE:
    return run_write(s, x);
  case K_MKDIR:
    return run_mkdir(s, x);
  case K_READDIR:
    return run_readdir(s, x);
  case K_STAT:
    return run_stat(s, x);
  default:
    return run_remove(s, x);
  }
}

static int sftp_drop(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  fly_sftp_t *x = (fly_sftp_t *)op;
  (void)s;
  /* The handle dies with the session. */
  x->h = NULL;
  /* Every op starts with a request that changes nothing (stat) or that a
   * rerun repeats exactly (open with truncate). */
  return x->phase == P_START || (x->kind == K_WRITE && x->phase == P_OPEN);
}

/* A started SFTP op is inside a request/reply exchange that libssh2 cannot
 * abandon: the connection goes (SSH_TIMEOUT for this op). */
static int sftp_expire(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  (void)s;
  (void)op;
  return FLY_SSH_DEAD;
}

static const fly_ssh_op_vt_t sftp_ovt = {sftp_step, sftp_expire, sftp_drop};

static void sftp_start(fly_loop_t *loop, fly_req_t *req) {
  fly_ssh_op_start(loop, &((fly_sftp_t *)req)->op);
}

static napi_value sftp_result(napi_env env, fly_req_t *req) {
  fly_sftp_t *x = (fly_sftp_t *)req;
  napi_value v, arr, o;
  size_t i;

  switch (x->kind) {
  case K_READ: {
    /* A ranged read is a stream's piece: weighed (js.c). */
    size_t len = x->data.len;
    v = fly_js_buffer_from(env, &x->data);
    return x->ranged || x->has_length ? fly_js_weigh(env, v, len) : v;
  }
  case K_STAT:
    if (!x->found) {
      FLY_NAPI_CALL(env, napi_get_null(env, &v), NULL);
      return v;
    }
    FLY_NAPI_CALL(env, napi_create_object(env, &o), NULL);
    fly_js_set_str(env, o, "type", type_names[x->type]);
    fly_js_set_double(env, o, "size", (double)x->size);
    fly_js_set_double(env, o, "mtimeMs", x->mtime_ms);
    return o;
  case K_READDIR:
    FLY_NAPI_CALL(env, napi_create_array_with_length(env, x->nents, &arr),
                  NULL);
    for (i = 0; i < x->nents; i++) {
      FLY_NAPI_CALL(env, napi_create_object(env, &o), NULL);
      fly_js_set_str(env, o, "name", x->ents[i].name);
      fly_js_set_str(env, o, "type", type_names[x->ents[i].type]);
      fly_js_set_double(env, o, "size", (double)x->ents[i].size);
      fly_js_set_double(env, o, "mtimeMs", x->ents[i].mtime_ms);
      FLY_NAPI_CALL(env, napi_set_element(env, arr, (uint32_t)i, o), NULL);
    }
    return arr;
  default:
    return NULL;
  }
}

static void sftp_free(napi_env env, fly_req_t *req) {
  fly_sftp_t *x = (fly_sftp_t *)req;
  size_t i;
  /* Without env the environment is going away and frees references. */
  if (env != NULL && x->pin != NULL)
    (void)napi_delete_reference(env, x->pin); /* freeing anyway */
  fly_ssh_op_free(env, &x->op);
  free(x->path);
  free(x->cur);
  fly_buf_free(&x->data);
  for (i = 0; i < x->nents; i++)
    free(x->ents[i].name);
  free(x->ents);
  for (i = 0; i < x->depth; i++)
    frame_free(&x->stack[i]);
  free(x->stack);
}

static const fly_req_vt_t sftp_vt = {sftp_start, sftp_result, sftp_free, NULL};

/* offset: a number (ranged read or write); absent -> 0, not ranged. */
static int opt_offset(napi_env env, napi_value opts, fly_sftp_t *x) {
  bool has = false;
  napi_value v;
  napi_valuetype t;

  FLY_NAPI_CALL(env, napi_has_named_property(env, opts, "offset", &has), -1);
  if (!has)
    return 0;
  FLY_NAPI_CALL(env, napi_get_named_property(env, opts, "offset", &v), -1);
  FLY_NAPI_CALL(env, napi_typeof(env, v, &t), -1);
  if (t == napi_undefined || t == napi_null)
    return 0;
  x->ranged = 1;
  return fly_js_prop_u64(env, opts, "offset", 0, &x->offset);
}

napi_value fly_napi_sftp(napi_env env, napi_callback_info info) {
  napi_value opts;
  fly_sftp_t *x;
  char *opname = NULL;
  size_t i;

  if (fly_js_arg_obj(env, info, 0, &opts) != 0)
    return NULL;
  x = fly_req_new(env, sizeof(*x), &sftp_vt);
  if (x == NULL)
    return NULL;
  x->op.ovt = &sftp_ovt;
  if (fly_ssh_op_init(env, opts, &x->op) != 0 ||
      fly_js_prop_str(env, opts, "op", 1, &opname) != 0 ||
      fly_js_prop_str(env, opts, "path", 1, &x->path) != 0 ||
      fly_js_prop_bool(env, opts, "recursive", 0, &x->recursive) != 0 ||
      fly_js_prop_u64(env, opts, "timeoutMs", 0, &x->op.timeout_ms) != 0 ||
      fly_js_prop_u64(env, opts, "maxFileBytes", FLY_SFTP_MAX_FILE_BYTES,
                      &x->max_bytes) != 0 ||
      fly_js_prop_u64(env, opts, "maxEntries", FLY_SFTP_MAX_ENTRIES,
                      &x->max_entries) != 0 ||
      fly_js_prop_bool(env, opts, "append", 0, &x->append) != 0 ||
      opt_offset(env, opts, x) != 0 ||
      fly_js_prop_u64(env, opts, "length", UINT64_MAX, &x->length) != 0)
    goto fail;
  x->has_length = x->length != UINT64_MAX;
  if (x->has_length && x->length > x->max_bytes) {
    fly_throw_invalid(env, "length must be at most maxFileBytes (%llu)",
                      (unsigned long long)x->max_bytes);
    goto fail;
  }
  /* Without a length, one byte past the limit tells "larger" from
   * "exactly the limit". */
  if (!x->has_length)
    x->length = x->max_bytes + 1;
  x->kind = -1;
  for (i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++)
    if (strcmp(opname, kind_names[i]) == 0)
      x->kind = (int)i;
  if (x->kind < 0) {
    fly_throw_invalid(env, "op must be one of read, write, mkdir, readdir, "
                           "stat, remove");
    goto fail;
  }
  if (x->path[0] == '\0') {
    fly_throw_invalid(env, "path must not be empty");
    goto fail;
  }
  if (x->kind == K_WRITE &&
      fly_js_prop_pin(env, opts, "data", &x->pin, &x->data, &x->wdata,
                      &x->wlen) != 0)
    goto fail;
  free(opname);
  return fly_req_submit(env, &x->op.req);

fail:
  free(opname);
  fly_req_free(env, &x->op.req);
  return NULL;
}
