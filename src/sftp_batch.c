/* sftp_batch.c: many files at once, and atomic replacement, over a second
 * SFTP channel spoken directly (SFTP v3 packets, draft-ietf-secsh-filexfer-02).
 *
 * libssh2's SFTP API runs one request of a kind at a time per SFTP session
 * (one open, one rename, one stat in flight), so a file costs several round
 * trips, and it has no posix-rename@openssh.com, the only SFTP rename that
 * replaces a file atomically.  This module keeps its own channel with the
 * "sftp" subsystem on the session (opened by the first batch op, kept until
 * the connection ends; one batch op at a time owns it) and pipelines: up to
 * FLY_BATCH_ACTIVE files are in flight together, each a chain of requests
 * sent as soon as the replies they depend on are in, with every request
 * tracked by id.  OpenSSH's sftp-server answers in order, but nothing here
 * depends on that.
 *
 * A write (writeFile, writeFiles) is atomic per file: STAT the target (its
 * mode) and OPEN a temporary in the same directory, created exclusively
 * (O_EXCL: never an existing file or a planted symlink), together; then
 * FSETSTAT to the target's mode, the WRITEs, CLOSE, and posix-rename over
 * the target.  A missing parent is made (MKDIR of each ancestor, then the
 * OPEN again).  Any failure closes and removes the temporary and leaves the
 * target as it was; the other files go on.  A write stream's pieces and
 * writeFile's offset/append go in place instead (OPEN of the file itself,
 * WRITEs, CLOSE).  A read (readFiles) is OPEN and READs until the end of the
 * file (a short DATA is the end: OpenSSH's server reads a regular file with
 * one read(2) per request), under maxFileBytes per file and for the
 * batch's total.
 *
 * What comes back is the sandbox's: a packet longer than FLY_BATCH_MAX_PKT,
 * a reply to no request of ours, or a malformed one ends the channel (the
 * op fails with SFTP_PROTOCOL; the next op opens a new one).  Memory is
 * bounded: at most FLY_BATCH_SLOTS requests and FLY_BATCH_WINDOW bytes of
 * WRITE data in flight, and one packet received at a time. */
#include "ssh.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SFTP v3 packet types, open flags, attribute flags, status codes. */
enum {
  FXP_INIT = 1, FXP_VERSION = 2, FXP_OPEN = 3, FXP_CLOSE = 4, FXP_READ = 5,
  FXP_WRITE = 6, FXP_FSETSTAT = 10, FXP_REMOVE = 13, FXP_MKDIR = 14,
  FXP_STAT = 17, FXP_STATUS = 101, FXP_HANDLE = 102, FXP_DATA = 103,
  FXP_ATTRS = 105, FXP_EXTENDED = 200
};
enum { PF_READ = 1, PF_WRITE = 2, PF_APPEND = 4, PF_CREAT = 8, PF_TRUNC = 0x10,
       PF_EXCL = 0x20 };
enum { A_SIZE = 1, A_UIDGID = 2, A_PERM = 4, A_TIME = 8, A_EXT = 0x80000000u };
enum { FX_OK = 0, FX_EOF = 1, FX_NO_SUCH_FILE = 2 };

/* Largest packet accepted (OpenSSH's sftp-server sends at most 256 KiB). */
#define FLY_BATCH_MAX_PKT ((256u << 10) + 1024u)
/* Requests in flight (a power of two: the low bits of an id are its slot). */
#define FLY_BATCH_SLOT_BITS 10
#define FLY_BATCH_SLOTS (1u << FLY_BATCH_SLOT_BITS)
/* Files in flight at once. */
#define FLY_BATCH_ACTIVE 64
/* WRITE data in flight, and READ data asked for, across the batch: about
 * OpenSSH's channel window, so the pipe stays full without queueing more
 * than the server can take. */
#define FLY_BATCH_WINDOW (2u << 20)
/* One WRITE or READ (what OpenSSH's sftp client uses). */
#define FLY_BATCH_CHUNK 32768u
/* Longest path a batch takes (the server's limit is PATH_MAX too). */
#define FLY_BATCH_PATH_MAX 4096
#define FLY_BATCH_READ_BUF 65536
/* Most ancestors a write makes (MKDIRs sent at once). */
#define FLY_BATCH_DEPTH 64

enum { C_NONE = 0, C_SUBSYS, C_INIT, C_READY };

/* How a write lands: replacing the file atomically (the default), or in
 * place at an offset, appended, or after truncating (a write stream's). */
enum { WH_ATOMIC = 0, WH_OFFSET, WH_APPEND, WH_TRUNC };
static const char *const where_names[] = {"atomic", "offset", "append",
                                          "truncate"};

struct fly_batch_chan_s {
  int state;
  LIBSSH2_CHANNEL *ch;
  fly_buf_t tx;                /* being sent, from tx_off (never moves) */
  size_t tx_off;
  fly_buf_t pend;              /* packets queued behind tx */
  fly_buf_t rx;                /* at most one packet, from rx_off */
  size_t rx_off;
  int posix_rename;            /* the server has posix-rename@openssh.com */
};

/* What a request was for. */
enum { RQ_STAT = 1, RQ_OPEN, RQ_MKDIR, RQ_SETSTAT, RQ_WRITE, RQ_CLOSE,
       RQ_RENAME, RQ_REMOVE, RQ_READ };

typedef struct fly_batch_slot_s {
  uint32_t id;                 /* 0: free */
  int kind;
  size_t file;
  uint64_t off;
  uint32_t len;
} fly_batch_slot_t;

typedef struct fly_batch_file_s {
  char *path;
  char *tmp;                   /* write: the temporary's path */
  const char *data;            /* write: the bytes (pinned or copied) */
  size_t len;
  napi_ref pin;
  fly_buf_t copy;
  int where;                   /* write: WH_* */
  uint64_t at;                 /* write: WH_OFFSET's offset */
  int started, done;
  int waiting;                 /* requests of this file in flight */
  int stat_wait, open_wait, mkdirs_sent;
  uint32_t mode;
  int has_mode;
  unsigned char handle[256];
  uint32_t handle_len;
  int have_handle, close_sent, closed, setstat_sent, rename_sent,
      renamed, remove_sent, created;
  uint64_t next_off;           /* write: bytes sent; read: next to ask */
  uint64_t eof_at;             /* read: where the file ended */
  uint32_t reads_out;          /* read: READs in flight */
  fly_buf_t out;               /* read: the bytes */
  const char *code;            /* set: this file failed */
  char msg[200];
} fly_batch_file_t;

typedef struct fly_batch_s {
  fly_ssh_op_t op;             /* first */
  int reading;
  int parents;                 /* write: make missing parent directories */
  fly_batch_file_t *files;
  size_t n;
  uint64_t max_bytes;          /* read: per file and for the batch */
  /* I/O thread. */
  size_t first, next;          /* files[first..next) may be active */
  size_t active;
  uint64_t inflight;           /* WRITE bytes unacked / READ bytes asked */
  uint64_t total;              /* read: bytes kept */
  fly_batch_slot_t slots[FLY_BATCH_SLOTS];
  uint32_t used, seq;
  int sent_any;
} fly_batch_t;

/* ---- the channel --------------------------------------------------------- */

#define AGAIN(s) (fly_ssh_blocked_out(s) ? FLY_SSH_OUT : FLY_SSH_WAIT)

static fly_batch_chan_t *chan_get(fly_ssh_sess_t *s) {
  if (s->batch == NULL)
    s->batch = calloc(1, sizeof(fly_batch_chan_t));
  return s->batch;
}

static void chan_clear(fly_batch_chan_t *c) {
  fly_buf_free(&c->tx);
  fly_buf_free(&c->pend);
  fly_buf_free(&c->rx);
  c->tx_off = c->rx_off = 0;
  c->ch = NULL;
  c->state = C_NONE;
  c->posix_rename = 0;
}

void fly_batch_chan_reset(fly_ssh_sess_t *s) {
  if (s->batch != NULL)
    chan_clear(s->batch);
}

void fly_batch_chan_free(fly_ssh_sess_t *s) {
  fly_batch_chan_reset(s);
  free(s->batch);
  s->batch = NULL;
}

/* The channel cannot be trusted any more (a hostile or broken reply): close
 * it in the background; the next op opens another. */
static void chan_abandon(fly_ssh_sess_t *s, fly_batch_chan_t *c) {
  if (c->ch != NULL)
    fly_ssh_zombie_add(s, c->ch);
  chan_clear(c);
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

static int add32(fly_buf_t *b, uint32_t v) {
  unsigned char p[4];
  put32(p, v);
  return fly_buf_append(b, p, 4);
}

static int add64(fly_buf_t *b, uint64_t v) {
  return add32(b, (uint32_t)(v >> 32)) || add32(b, (uint32_t)v);
}

static int addstr(fly_buf_t *b, const void *p, size_t n) {
  return add32(b, (uint32_t)n) || (n > 0 && fly_buf_append(b, p, n));
}

/* Start a packet of type in c->pend; *at: where its length goes. */
static int pkt_begin(fly_batch_chan_t *c, int type, size_t *at) {
  unsigned char t = (unsigned char)type;
  *at = c->pend.len;
  return add32(&c->pend, 0) || fly_buf_append(&c->pend, &t, 1);
}

static void pkt_end(fly_batch_chan_t *c, size_t at) {
  put32((unsigned char *)c->pend.base + at, (uint32_t)(c->pend.len - at - 4));
}

/* Send what is queued: tx first, then pend becomes tx.  libssh2 wants a
 * send that returned EAGAIN repeated with the same bytes, which is why tx
 * never changes until it is all out. */
static int chan_flush(fly_ssh_sess_t *s, fly_batch_chan_t *c) {
  for (;;) {
    ssize_t n;
    if (c->tx_off == c->tx.len) {
      fly_buf_t t;
      if (c->pend.len == 0)
        return FLY_SSH_DONE;
      t = c->tx;
      t.len = 0;
      c->tx = c->pend;
      c->pend = t;
      c->tx_off = 0;
    }
    n = libssh2_channel_write(c->ch, c->tx.base + c->tx_off,
                              c->tx.len - c->tx_off);
    if (n == LIBSSH2_ERROR_EAGAIN)
      return AGAIN(s);
    if (n < 0)
      return FLY_SSH_DEAD;
    c->tx_off += (size_t)n;
    s->progress = 1;
  }
}

/* ---- requests ------------------------------------------------------------ */

static int slot_take(fly_batch_t *x, int kind, size_t file, uint64_t off,
                     uint32_t len, uint32_t *id) {
  uint32_t i;
  for (i = 0; i < FLY_BATCH_SLOTS; i++) {
    uint32_t k = (x->seq + i) & (FLY_BATCH_SLOTS - 1);
    if (x->slots[k].id == 0) {
      uint32_t gen = (x->seq >> FLY_BATCH_SLOT_BITS) + 1;
      x->seq += i + 1;
      *id = (gen << FLY_BATCH_SLOT_BITS) | k;
      if (*id == 0)
        *id = 1u << FLY_BATCH_SLOT_BITS | k;
      x->slots[k].id = *id;
      x->slots[k].kind = kind;
      x->slots[k].file = file;
      x->slots[k].off = off;
      x->slots[k].len = len;
      x->used++;
      x->files[file].waiting++;
      x->sent_any = 1;
      return 0;
    }
  }
  return -1;
}

static int slots_free(const fly_batch_t *x, uint32_t want) {
  return FLY_BATCH_SLOTS - x->used >= want;
}

/* One request with path arguments (and a trailer) for file i: 0, or -1
 * out of memory. */
static int req_paths(fly_ssh_sess_t *s, fly_batch_t *x, int type, int kind,
                     size_t i, const char *p1, const char *p2,
                     uint32_t flags, int attrs_mode, uint32_t mode) {
  fly_batch_chan_t *c = s->batch;
  uint32_t id;
  size_t at;
  if (slot_take(x, kind, i, 0, 0, &id) != 0)
    return -1;
  if (pkt_begin(c, type, &at) || add32(&c->pend, id))
    return -1;
  if (type == FXP_EXTENDED) {
    static const char ext[] = "posix-rename@openssh.com";
    if (addstr(&c->pend, ext, sizeof(ext) - 1))
      return -1;
  }
  if (addstr(&c->pend, p1, strlen(p1)))
    return -1;
  if (p2 != NULL && addstr(&c->pend, p2, strlen(p2)))
    return -1;
  if (type == FXP_OPEN && add32(&c->pend, flags))
    return -1;
  if (type == FXP_OPEN || type == FXP_MKDIR) {
    if (attrs_mode ? (add32(&c->pend, A_PERM) || add32(&c->pend, mode))
                   : add32(&c->pend, 0))
      return -1;
  }
  pkt_end(c, at);
  return 0;
}

/* A request on file i's handle (CLOSE, FSETSTAT, WRITE, READ). */
static int req_handle(fly_ssh_sess_t *s, fly_batch_t *x, int type, int kind,
                      size_t i, uint64_t off, uint32_t len) {
  fly_batch_chan_t *c = s->batch;
  fly_batch_file_t *f = &x->files[i];
  uint32_t id;
  size_t at;
  if (slot_take(x, kind, i, off, len, &id) != 0)
    return -1;
  if (pkt_begin(c, type, &at) || add32(&c->pend, id) ||
      addstr(&c->pend, f->handle, f->handle_len))
    return -1;
  if (type == FXP_FSETSTAT &&
      (add32(&c->pend, A_PERM) || add32(&c->pend, f->mode)))
    return -1;
  if (type == FXP_WRITE &&
      (add64(&c->pend, f->at + off) || addstr(&c->pend, f->data + off, len)))
    return -1;
  if (type == FXP_READ && (add64(&c->pend, off) || add32(&c->pend, len)))
    return -1;
  pkt_end(c, at);
  return 0;
}

/* ---- one file ------------------------------------------------------------ */

static const char *status_code(uint32_t st, const char **text) {
  switch (st) {
  case 2:
    *text = "no such file or directory";
    return "SFTP_NO_SUCH_FILE";
  case 3:
    *text = "permission denied";
    return "SFTP_PERMISSION_DENIED";
  case 8:
    *text = "operation not supported";
    return "SFTP_UNSUPPORTED";
  default:
    *text = "failure";
    return "SFTP_FAILURE";
  }
}

static void file_fail(fly_batch_file_t *f, const char *code, const char *what,
                      const char *text) {
  if (f->code != NULL)
    return; /* the first failure is the one reported */
  f->code = code;
  if (what != NULL)
    snprintf(f->msg, sizeof(f->msg), "%s: %s", what, text);
  else
    snprintf(f->msg, sizeof(f->msg), "%s", text);
}

static void file_fail_status(fly_batch_file_t *f, const char *what,
                             uint32_t st) {
  const char *text, *code = status_code(st, &text);
  file_fail(f, code, what, text);
}

/* The temporary: ".<name>.fly-<16 hex>.tmp" beside the target (the name
 * shortened so the whole stays within NAME_MAX). */
static int tmp_name(fly_batch_file_t *f) {
  unsigned char r[8];
  const char *slash = strrchr(f->path, '/');
  size_t dlen = slash ? (size_t)(slash - f->path) + 1 : 0;
  const char *base = f->path + dlen;
  size_t blen = strlen(base);
  char hex[17];
  int i;
  if (blen > 200)
    blen = 200;
  if (RAND_bytes(r, sizeof(r)) != 1)
    return -1;
  for (i = 0; i < 8; i++)
    snprintf(hex + 2 * i, 3, "%02x", r[i]);
  f->tmp = malloc(dlen + blen + 32);
  if (f->tmp == NULL)
    return -1;
  snprintf(f->tmp, dlen + blen + 32, "%.*s.%.*s.fly-%s.tmp", (int)dlen,
           f->path, (int)blen, base, hex);
  return 0;
}

/* MKDIR of every ancestor of the temporary, outermost first; the replies
 * are not looked at (an existing one fails, which is fine): the OPEN that
 * follows says whether the directory is there now. */
static int send_mkdirs(fly_ssh_sess_t *s, fly_batch_t *x, size_t i) {
  fly_batch_file_t *f = &x->files[i];
  char *p = strdup(f->tmp ? f->tmp : f->path);
  size_t k, len;
  int rc = 0, made = 0;
  if (p == NULL)
    return -1;
  len = strlen(p);
  for (k = 1; k < len && rc == 0; k++) {
    if (p[k] != '/' || p[k - 1] == '/')
      continue;
    if (++made > FLY_BATCH_DEPTH)
      break; /* deeper than that: the open says it is missing */
    p[k] = '\0';
    rc = req_paths(s, x, FXP_MKDIR, RQ_MKDIR, i, p, NULL, 0, 1, 0755);
    p[k] = '/';
  }
  free(p);
  return rc;
}

/* The OPEN of a write: the temporary, created exclusively; or in place. */
static int send_open(fly_ssh_sess_t *s, fly_batch_t *x, size_t i) {
  fly_batch_file_t *f = &x->files[i];
  static const uint32_t flags[] = {
      PF_WRITE | PF_CREAT | PF_EXCL | PF_TRUNC, PF_WRITE | PF_CREAT,
      PF_WRITE | PF_CREAT | PF_APPEND, PF_WRITE | PF_CREAT | PF_TRUNC};
  return req_paths(s, x, FXP_OPEN, RQ_OPEN, i, f->tmp ? f->tmp : f->path,
                   NULL, flags[f->where], 1, 0644);
}

/* Send whatever file i can send now.  0; 1: no free request slot (the
 * caller stops for this turn); -1: out of memory (a packet may be half
 * queued: the channel must go). */
static int file_advance(fly_ssh_sess_t *s, fly_batch_t *x, size_t i) {
  fly_batch_file_t *f = &x->files[i];
  fly_batch_chan_t *c = s->batch;

  if (f->done)
    return 0;
  if (!f->started) {
    if (!slots_free(x, 2))
      return 1;
    f->started = 1;
    if (x->reading) {
      f->eof_at = UINT64_MAX;
      f->open_wait = 1;
      return req_paths(s, x, FXP_OPEN, RQ_OPEN, i, f->path, NULL, PF_READ, 0,
                       0);
    }
    f->open_wait = 1;
    if (f->where != WH_ATOMIC)
      return send_open(s, x, i) ? -1 : 0;
    if (tmp_name(f) != 0) {
      file_fail(f, "ERR_NO_MEMORY", NULL, "out of memory");
      f->done = 1;
      return 0;
    }
    f->stat_wait = 1;
    if (req_paths(s, x, FXP_STAT, RQ_STAT, i, f->path, NULL, 0, 0, 0) ||
        send_open(s, x, i))
      return -1;
    return 0;
  }
  if (f->stat_wait || f->open_wait)
    return 0;
  if (f->code != NULL || (x->reading && f->next_off >= f->eof_at)) {
    /* Finished or failed: wait for every reply, then close the handle and
     * (a failed write) remove the temporary. */
    if (f->waiting > 0)
      return 0;
    if (f->have_handle && !f->close_sent) {
      if (!slots_free(x, 1))
        return 1;
      f->close_sent = 1;
      return req_handle(s, x, FXP_CLOSE, RQ_CLOSE, i, 0, 0);
    }
    if (!x->reading && f->created && !f->renamed && !f->remove_sent) {
      if (!slots_free(x, 1))
        return 1;
      f->remove_sent = 1;
      return req_paths(s, x, FXP_REMOVE, RQ_REMOVE, i, f->tmp, NULL, 0, 0, 0);
    }
    f->done = 1;
    return 0;
  }
  if (x->reading) {
    /* One READ at a time until the file proves longer than one (most are
     * small: a READ past the end costs the server as much as one inside),
     * then one more per piece received, up to the window. */
    while (f->next_off < f->eof_at && f->next_off <= x->max_bytes &&
           x->inflight < FLY_BATCH_WINDOW &&
           f->reads_out < 1 + f->out.len / FLY_BATCH_CHUNK) {
      uint64_t want = x->max_bytes + 1 - f->next_off;
      uint32_t len = want > FLY_BATCH_CHUNK ? FLY_BATCH_CHUNK : (uint32_t)want;
      if (!slots_free(x, 1))
        return 1;
      if (req_handle(s, x, FXP_READ, RQ_READ, i, f->next_off, len) != 0)
        return -1;
      f->next_off += len;
      f->reads_out++;
      x->inflight += len;
    }
    return 0;
  }
  if (f->has_mode && !f->setstat_sent) {
    if (!slots_free(x, 1))
      return 1;
    f->setstat_sent = 1;
    if (req_handle(s, x, FXP_FSETSTAT, RQ_SETSTAT, i, 0, 0) != 0)
      return -1;
  }
  while (f->next_off < f->len && x->inflight < FLY_BATCH_WINDOW &&
         c->pend.len < FLY_BATCH_WINDOW) {
    uint64_t left = f->len - f->next_off;
    uint32_t len = left > FLY_BATCH_CHUNK ? FLY_BATCH_CHUNK : (uint32_t)left;
    if (!slots_free(x, 1))
      return 1;
    if (req_handle(s, x, FXP_WRITE, RQ_WRITE, i, f->next_off, len) != 0)
      return -1;
    f->next_off += len;
    x->inflight += len;
  }
  if (f->next_off < f->len)
    return 0;
  if (!f->close_sent) {
    if (!slots_free(x, 1))
      return 1;
    f->close_sent = 1;
    return req_handle(s, x, FXP_CLOSE, RQ_CLOSE, i, 0, 0);
  }
  if (f->closed && f->waiting == 0 && f->where != WH_ATOMIC) {
    f->done = 1; /* in place: written once closed */
    return 0;
  }
  if (f->closed && f->waiting == 0 && !f->rename_sent) {
    if (!c->posix_rename) {
      file_fail(f, "SFTP_UNSUPPORTED", "replacing the file",
                "the server has no posix-rename@openssh.com");
      return 0;
    }
    if (!slots_free(x, 1))
      return 1;
    f->rename_sent = 1;
    return req_paths(s, x, FXP_EXTENDED, RQ_RENAME, i, f->tmp, f->path, 0, 0,
                     0);
  }
  if (f->renamed)
    f->done = 1;
  return 0;
}

/* ---- replies ------------------------------------------------------------- */

typedef struct fly_batch_rd_s {
  const unsigned char *p;
  size_t n;
  int bad;
} fly_batch_rd_t;

static uint32_t rd32(fly_batch_rd_t *r) {
  uint32_t v;
  if (r->n < 4) {
    r->bad = 1;
    return 0;
  }
  v = fly_frame_get32(r->p);
  r->p += 4;
  r->n -= 4;
  return v;
}

static const unsigned char *rdstr(fly_batch_rd_t *r, uint32_t *len) {
  const unsigned char *p;
  *len = rd32(r);
  if (r->bad || *len > r->n) {
    r->bad = 1;
    return NULL;
  }
  p = r->p;
  r->p += *len;
  r->n -= *len;
  return p;
}

/* The permissions of an ATTRS body (0 when absent). */
static uint32_t attrs_perm(fly_batch_rd_t *r, int *has) {
  uint32_t flags = rd32(r), perm = 0;
  *has = 0;
  if (flags & A_SIZE) {
    rd32(r);
    rd32(r);
  }
  if (flags & A_UIDGID) {
    rd32(r);
    rd32(r);
  }
  if (flags & A_PERM) {
    perm = rd32(r);
    *has = !r->bad;
  }
  return perm;
}

/* One reply: -1 when it is not a reply to a request of ours. */
static int on_reply(fly_batch_t *x, int type, uint32_t id, fly_batch_rd_t *r) {
  fly_batch_slot_t *sl = &x->slots[id & (FLY_BATCH_SLOTS - 1)];
  fly_batch_slot_t q;
  fly_batch_file_t *f;
  uint32_t st = FX_OK, len;
  const unsigned char *p;

  if (id == 0 || sl->id != id)
    return -1;
  q = *sl;
  memset(sl, 0, sizeof(*sl));
  x->used--;
  f = &x->files[q.file];
  f->waiting--;
  if (type == FXP_STATUS)
    st = rd32(r);
  if (q.kind == RQ_WRITE || q.kind == RQ_READ)
    x->inflight -= q.len;

  switch (q.kind) {
  case RQ_STAT:
    f->stat_wait = 0;
    if (type == FXP_ATTRS) {
      int has;
      uint32_t perm = attrs_perm(r, &has);
      if (has && (perm & 0170000) == 0040000)
        file_fail(f, "SFTP_IS_A_DIRECTORY", NULL, "is a directory");
      else if (has && (perm & 0170000) == 0100000) {
        f->mode = perm & 07777;
        f->has_mode = 1;
      }
    } else if (type != FXP_STATUS) {
      return -1;
    } /* missing, or not stat-able: the rename says the rest */
    break;
  case RQ_OPEN:
    if (type == FXP_HANDLE) {
      p = rdstr(r, &len);
      if (p == NULL || len > sizeof(f->handle))
        return -1;
      memcpy(f->handle, p, len);
      f->handle_len = len;
      f->have_handle = 1;
      f->created = !x->reading && f->where == WH_ATOMIC;
      f->open_wait = 0;
    } else if (type != FXP_STATUS || st == FX_OK) {
      return -1;
    } else if (x->parents && st == FX_NO_SUCH_FILE && !f->mkdirs_sent) {
      f->mkdirs_sent = 1; /* parents then the open again: handled by the
                             step (open_wait stays set) */
      f->open_wait = 2;
    } else {
      f->open_wait = 0;
      file_fail_status(f, x->reading || f->tmp == NULL
                              ? NULL : "creating the temporary file", st);
    }
    break;
  case RQ_MKDIR:
  case RQ_REMOVE:
    if (type != FXP_STATUS)
      return -1;
    break;
  case RQ_SETSTAT:
  case RQ_WRITE:
    if (type != FXP_STATUS)
      return -1;
    if (st != FX_OK)
      file_fail_status(f, q.kind == RQ_WRITE ? "writing" : "setting the mode",
                       st);
    break;
  case RQ_CLOSE:
    if (type != FXP_STATUS)
      return -1;
    f->closed = 1;
    f->have_handle = 0;
    if (st != FX_OK)
      file_fail_status(f, "closing", st);
    break;
  case RQ_RENAME:
    if (type != FXP_STATUS)
      return -1;
    if (st == FX_OK)
      f->renamed = 1;
    else
      file_fail_status(f, "replacing the file", st);
    break;
  case RQ_READ:
    f->reads_out--;
    if (type == FXP_STATUS) {
      if (st == FX_EOF) {
        if (q.off < f->eof_at)
          f->eof_at = q.off;
      } else {
        file_fail_status(f, NULL, st);
      }
      break;
    }
    if (type != FXP_DATA)
      return -1;
    p = rdstr(r, &len);
    if (p == NULL || len > q.len)
      return -1;
    if (f->code != NULL)
      break;
    if (q.off + len > x->max_bytes ||
        x->total + (q.off + len > f->out.len ? q.off + len - f->out.len : 0) >
            x->max_bytes) {
      x->total -= f->out.len;
      fly_buf_free(&f->out);
      file_fail(f, "ERR_FILE_TOO_LARGE", NULL,
                "more than maxFileBytes (per file and per batch)");
      break;
    }
    if (q.off + len > f->out.len) {
      size_t grow = (size_t)(q.off + len - f->out.len);
      if (fly_buf_reserve(&f->out, grow) != 0) {
        file_fail(f, "ERR_NO_MEMORY", NULL, "out of memory");
        break;
      }
      memset(f->out.base + f->out.len, 0, grow);
      f->out.len += grow;
      x->total += grow;
    }
    memcpy(f->out.base + q.off, p, len);
    if (len < q.len && q.off + len < f->eof_at)
      f->eof_at = q.off + len;
    break;
  }
  return r->bad ? -1 : 0;
}

/* Read and dispatch what the server sent.  DONE when nothing more is
 * there; DEAD; or -1: a protocol violation (the channel is abandoned). */
static int chan_pump(fly_ssh_sess_t *s, fly_batch_t *x, int *got) {
  fly_batch_chan_t *c = s->batch;
  *got = 0;
  for (;;) {
    size_t have = c->rx.len - c->rx_off;
    ssize_t n;
    /* Whole packets first. */
    while (have >= 5) {
      const unsigned char *p = (const unsigned char *)c->rx.base + c->rx_off;
      uint32_t plen = fly_frame_get32(p);
      fly_batch_rd_t r;
      int type;
      if (plen < 1 || plen > FLY_BATCH_MAX_PKT)
        return -1;
      if (have < 4 + (size_t)plen)
        break;
      type = p[4];
      r.p = p + 5;
      r.n = plen - 1;
      r.bad = 0;
      if (type == FXP_VERSION) {
        if (c->state != C_INIT)
          return -1;
        (void)rd32(&r); /* version: 3 is what we speak */
        while (r.n > 0 && !r.bad) {
          uint32_t nl, dl;
          const unsigned char *name = rdstr(&r, &nl);
          (void)rdstr(&r, &dl);
          if (name != NULL && nl == 24 &&
              memcmp(name, "posix-rename@openssh.com", 24) == 0)
            c->posix_rename = 1;
        }
        if (r.bad)
          return -1;
        c->state = C_READY;
      } else {
        uint32_t id = rd32(&r);
        if (c->state != C_READY || x == NULL || r.bad ||
            on_reply(x, type, id, &r) != 0)
          return -1;
      }
      c->rx_off += 4 + (size_t)plen;
      have = c->rx.len - c->rx_off;
      (*got)++;
      s->progress = 1;
    }
    if (c->rx_off > 0) {
      memmove(c->rx.base, c->rx.base + c->rx_off, have);
      c->rx.len = have;
      c->rx_off = 0;
    }
    if (fly_buf_reserve(&c->rx, FLY_BATCH_READ_BUF) != 0)
      return -1;
    n = libssh2_channel_read(c->ch, c->rx.base + c->rx.len,
                             c->rx.cap - c->rx.len - 1 < FLY_BATCH_READ_BUF
                                 ? c->rx.cap - c->rx.len - 1
                                 : FLY_BATCH_READ_BUF);
    if (n == LIBSSH2_ERROR_EAGAIN)
      return FLY_SSH_DONE;
    if (n < 0)
      return fly_ssh_rc_dead(s, (int)n) ? FLY_SSH_DEAD : -1;
    if (n == 0) {
      if (libssh2_channel_eof(c->ch))
        return -1; /* the server ended the subsystem */
      return FLY_SSH_DONE;
    }
    c->rx.len += (size_t)n;
    s->progress = 1;
  }
}

/* ---- the op -------------------------------------------------------------- */

static int fail_op(fly_batch_t *x, const char *code, const char *msg) {
  fly_err_set(&x->op.req.err, code, "sftp batch: %s", msg);
  return FLY_SSH_DONE;
}

/* Open the channel and start the subsystem; DONE when ready for requests,
 * else the step's verdict. */
static int chan_ready(fly_ssh_sess_t *s, fly_batch_t *x, uint64_t now) {
  fly_batch_chan_t *c = chan_get(s);
  int rc, got;
  size_t at;
  if (c == NULL)
    return fail_op(x, "ERR_NO_MEMORY", "out of memory");
  switch (c->state) {
  case C_NONE:
    if (!fly_ssh_chan_begin(s, &x->op, now))
      return FLY_SSH_WAIT;
    c->ch = libssh2_channel_open_session(s->ls);
    if (c->ch == NULL)
      return fly_ssh_chan_failed(s, &x->op, now, "opening the sftp channel");
    fly_ssh_chan_opened(s, &x->op);
    c->state = C_SUBSYS;
    /* fall through */
  case C_SUBSYS:
    rc = libssh2_channel_subsystem(c->ch, "sftp");
    if (rc == LIBSSH2_ERROR_EAGAIN)
      return AGAIN(s);
    if (rc != 0) {
      if (fly_ssh_rc_dead(s, rc))
        return FLY_SSH_DEAD;
      chan_abandon(s, c);
      return fail_op(x, "SFTP_FAILURE", "starting the sftp subsystem failed");
    }
    if (pkt_begin(c, FXP_INIT, &at) || add32(&c->pend, 3)) {
      chan_abandon(s, c);
      return fail_op(x, "ERR_NO_MEMORY", "out of memory");
    }
    pkt_end(c, at);
    c->state = C_INIT;
    s->progress = 1;
    /* fall through */
  case C_INIT:
    rc = chan_flush(s, c);
    if (rc != FLY_SSH_DONE)
      return rc;
    rc = chan_pump(s, NULL, &got);
    if (rc == FLY_SSH_DEAD)
      return rc;
    if (rc < 0) {
      chan_abandon(s, c);
      return fail_op(x, "SFTP_PROTOCOL", "the sftp server's reply is malformed");
    }
    if (c->state != C_READY)
      return FLY_SSH_WAIT;
    /* fall through */
  default:
    return FLY_SSH_DONE;
  }
}

/* Out of memory while queueing: a packet may be half written, so the
 * channel goes with the op. */
static int fail_nomem(fly_ssh_sess_t *s, fly_batch_t *x) {
  chan_abandon(s, s->batch);
  s->batch_owner = NULL;
  return fail_op(x, "ERR_NO_MEMORY", "out of memory");
}

static int batch_step(fly_ssh_sess_t *s, fly_ssh_op_t *op, uint64_t now) {
  fly_batch_t *x = (fly_batch_t *)op;
  fly_batch_chan_t *c;
  int rc, got;
  size_t i;

  if (s->batch_owner != NULL && s->batch_owner != op)
    return FLY_SSH_WAIT;
  s->batch_owner = op;
  rc = chan_ready(s, x, now);
  if (x->op.req.err.code != NULL) {
    s->batch_owner = NULL;
    return FLY_SSH_DONE;
  }
  if (rc != FLY_SSH_DONE)
    return rc;
  op->started = 1;
  c = s->batch;
  for (;;) {
    size_t queued;
    /* What is half sent goes first (libssh2 wants it repeated). */
    rc = chan_flush(s, c);
    if (rc == FLY_SSH_DEAD || rc == FLY_SSH_OUT)
      return rc;
    rc = chan_pump(s, x, &got);
    if (rc == FLY_SSH_DEAD)
      return rc;
    if (rc < 0) {
      chan_abandon(s, c);
      s->batch_owner = NULL;
      return fail_op(x, "SFTP_PROTOCOL",
                     "the sftp server sent a reply to no request of ours, or "
                     "a malformed one");
    }
    queued = c->pend.len;
    /* Files whose parents are to be made first, then the open again. */
    for (i = x->first; i < x->next; i++) {
      fly_batch_file_t *f = &x->files[i];
      if (f->open_wait == 2 && slots_free(x, FLY_BATCH_DEPTH + 1)) {
        if (send_mkdirs(s, x, i) != 0 || send_open(s, x, i) != 0)
          return fail_nomem(s, x);
        f->open_wait = 1;
      }
    }
    for (i = x->first; i < x->next; i++) {
      int was = x->files[i].done;
      rc = file_advance(s, x, i);
      if (rc < 0)
        return fail_nomem(s, x);
      if (rc > 0)
        break;
      if (x->files[i].done && !was) {
        x->active--;
        got++;
      }
    }
    while (x->first < x->next && x->files[x->first].done)
      x->first++;
    /* New files while there is room. */
    while (x->next < x->n && x->active < FLY_BATCH_ACTIVE &&
           slots_free(x, FLY_BATCH_DEPTH + 2) &&
           x->inflight < FLY_BATCH_WINDOW && c->pend.len < FLY_BATCH_WINDOW) {
      x->active++;
      if (file_advance(s, x, x->next++) < 0)
        return fail_nomem(s, x);
    }
    if (x->first == x->n) {
      s->batch_owner = NULL;
      return FLY_SSH_DONE;
    }
    rc = chan_flush(s, c);
    if (rc == FLY_SSH_DEAD || rc == FLY_SSH_OUT)
      return rc;
    if (got == 0 && c->pend.len == queued)
      return FLY_SSH_WAIT;
  }
}

static int batch_drop(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  fly_batch_t *x = (fly_batch_t *)op;
  (void)s;
  /* Nothing sent: run it again on the next connection as it was. */
  return !x->sent_any;
}

/* Inside request/reply exchanges that cannot be abandoned half done. */
static int batch_expire(fly_ssh_sess_t *s, fly_ssh_op_t *op) {
  (void)s;
  (void)op;
  return FLY_SSH_DEAD;
}

static const fly_ssh_op_vt_t batch_ovt = {batch_step, batch_expire,
                                          batch_drop};

static void batch_start(fly_loop_t *loop, fly_req_t *req) {
  fly_ssh_op_start(loop, &((fly_batch_t *)req)->op);
}

static napi_value batch_result(napi_env env, fly_req_t *req) {
  fly_batch_t *x = (fly_batch_t *)req;
  napi_value arr, o, v;
  size_t i;

  FLY_NAPI_CALL(env, napi_create_array_with_length(env, x->n, &arr), NULL);
  for (i = 0; i < x->n; i++) {
    fly_batch_file_t *f = &x->files[i];
    FLY_NAPI_CALL(env, napi_create_object(env, &o), NULL);
    fly_js_set_str(env, o, "path", f->path);
    if (f->code != NULL) {
      fly_js_set_str(env, o, "code", f->code);
      fly_js_set_str(env, o, "message", f->msg);
    } else if (x->reading) {
      if (f->out.len > f->eof_at)
        f->out.len = (size_t)f->eof_at;
      v = fly_js_buffer_from(env, &f->out);
      if (v == NULL)
        return NULL;
      fly_js_set_value(env, o, "data", v);
    }
    FLY_NAPI_CALL(env, napi_set_element(env, arr, (uint32_t)i, o), NULL);
  }
  return arr;
}

static void batch_free(napi_env env, fly_req_t *req) {
  fly_batch_t *x = (fly_batch_t *)req;
  size_t i;
  fly_ssh_op_free(env, &x->op);
  for (i = 0; i < x->n; i++) {
    fly_batch_file_t *f = &x->files[i];
    if (env != NULL && f->pin != NULL)
      (void)napi_delete_reference(env, f->pin); /* freeing anyway */
    fly_buf_free(&f->copy);
    fly_buf_free(&f->out);
    free(f->path);
    free(f->tmp);
  }
  free(x->files);
}

static const fly_req_vt_t batch_vt = {batch_start, batch_result, batch_free,
                                      NULL};

/* sftpBatch({ session, op: 'write', files: [{ path, data }], parents }) or
 * ({ session, op: 'read', paths: [...], maxFileBytes }): per file, in
 * order, { path } (written), { path, data } (read), or { path, code,
 * message }. */
napi_value fly_napi_sftp_batch(napi_env env, napi_callback_info info) {
  napi_value opts, list, el;
  fly_batch_t *x;
  char *opname = NULL;
  uint32_t n, i;
  bool is_arr = false;

  if (fly_js_arg_obj(env, info, 0, &opts) != 0)
    return NULL;
  x = fly_req_new(env, sizeof(*x), &batch_vt);
  if (x == NULL)
    return NULL;
  x->op.ovt = &batch_ovt;
  if (fly_ssh_op_init(env, opts, &x->op) != 0 ||
      fly_js_prop_str(env, opts, "op", 1, &opname) != 0 ||
      fly_js_prop_u64(env, opts, "timeoutMs", 0, &x->op.timeout_ms) != 0 ||
      fly_js_prop_bool(env, opts, "parents", 0, &x->parents) != 0 ||
      fly_js_prop_u64(env, opts, "maxFileBytes", (uint64_t)256 << 20,
                      &x->max_bytes) != 0)
    goto fail;
  if (strcmp(opname, "read") != 0 && strcmp(opname, "write") != 0) {
    fly_throw_invalid(env, "op must be read or write");
    goto fail;
  }
  x->reading = opname[0] == 'r';
  if (x->reading)
    x->parents = 0;
  if (napi_get_named_property(env, opts, x->reading ? "paths" : "files",
                              &list) != napi_ok ||
      napi_is_array(env, list, &is_arr) != napi_ok || !is_arr) {
    fly_throw_invalid(env, "%s must be an array",
                      x->reading ? "paths" : "files");
    goto fail;
  }
  if (napi_get_array_length(env, list, &n) != napi_ok)
    goto fail_napi;
  x->files = calloc(n ? n : 1, sizeof(*x->files));
  if (x->files == NULL) {
    fly_throw_nomem(env);
    goto fail;
  }
  for (i = 0; i < n; i++) {
    fly_batch_file_t *f = &x->files[i];
    if (napi_get_element(env, list, i, &el) != napi_ok)
      goto fail_napi;
    x->n = i + 1;
    if (x->reading) {
      if (fly_js_str(env, el, "path", &f->path) != 0)
        goto fail;
    } else {
      char *wh = NULL;
      size_t k;
      if (fly_js_prop_str(env, el, "path", 1, &f->path) != 0 ||
          fly_js_prop_pin(env, el, "data", &f->pin, &f->copy, &f->data,
                          &f->len) != 0 ||
          fly_js_prop_str(env, el, "where", 0, &wh) != 0 ||
          fly_js_prop_u64(env, el, "offset", 0, &f->at) != 0) {
        free(wh);
        goto fail;
      }
      f->where = -1;
      for (k = 0; k < 4; k++)
        if (wh == NULL ? k == 0 : strcmp(wh, where_names[k]) == 0)
          f->where = (int)k;
      free(wh);
      if (f->where < 0) {
        fly_throw_invalid(env, "where must be atomic, offset, append or "
                               "truncate");
        goto fail;
      }
    }
    if (f->path[0] == '\0' || strlen(f->path) > FLY_BATCH_PATH_MAX ||
        (!x->reading && f->path[strlen(f->path) - 1] == '/')) {
      fly_throw_invalid(env, "path must be a file's path of 1 to %d bytes",
                        FLY_BATCH_PATH_MAX);
      goto fail;
    }
    if (f->data == NULL)
      f->data = "";
  }
  x->n = n;
  free(opname);
  return fly_req_submit(env, &x->op.req);

fail_napi:
  fly_napi_throw_last(env);
fail:
  free(opname);
  fly_req_free(env, &x->op.req);
  return NULL;
}
