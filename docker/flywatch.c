/* flywatch: filesystem events of a path, as newline-delimited JSON on
 * stdout, for filesystem.watch (lib/watch.js).  Runs as the sandbox user.
 *
 *   flywatch [-r] PATH
 *
 * Lines: {"type":"ready","pid":N} once the watches are in place, then
 * {"type":"create"|"write"|"remove"|"rename","path":P[,"oldPath":O]} and
 * {"type":"overflow","reason":"kernel"} when inotify's queue overflowed
 * (IN_Q_OVERFLOW: events were lost).  With -r every directory below PATH is
 * watched, and a directory that appears is watched and scanned at once, so
 * the files made in it before its watch existed are reported as created.
 *
 * Bounded: at most FLY_WATCH_MAX directories watched (more: one overflow
 * line with reason "watches", the rest unwatched), names of at most
 * PATH_MAX, output through one fixed buffer.  When stdout cannot take more,
 * the kernel's queue is the bound (IN_Q_OVERFLOW).  Exits when stdout goes
 * (EPIPE), on SIGTERM, or when PATH itself goes. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define FLY_WATCH_MAX 65536
#define FLY_WATCH_OUT 65536

static const uint32_t MASK = IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM |
                             IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF |
                             IN_DONT_FOLLOW | IN_EXCL_UNLINK;

static int ifd = -1;
static int recursive;
static char *paths[FLY_WATCH_MAX]; /* wd -> directory (wds are small ints) */
static int nwatches, warned;
static char out[FLY_WATCH_OUT];
static size_t outlen;

static void flush_out(void) {
  size_t off = 0;
  while (off < outlen) {
    ssize_t n = write(1, out + off, outlen - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      _exit(0); /* nobody listens any more */
    off += (size_t)n;
  }
  outlen = 0;
}

static void put(const char *s, size_t n) {
  if (outlen + n > sizeof(out))
    flush_out();
  if (n > sizeof(out))
    n = sizeof(out);
  memcpy(out + outlen, s, n);
  outlen += n;
}

static void put_str(const char *s) { put(s, strlen(s)); }

/* A JSON string of the bytes of s (UTF-8 passed through; the reader
 * decodes it, replacing what is not UTF-8). */
static void put_json(const char *s) {
  char e[8];
  put("\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      e[0] = '\\';
      e[1] = (char)c;
      put(e, 2);
    } else if (c < 0x20) {
      snprintf(e, sizeof(e), "\\u%04x", c);
      put(e, 6);
    } else {
      put((const char *)&c, 1);
    }
  }
  put("\"", 1);
}

static void event(const char *type, const char *path, const char *old) {
  put_str("{\"type\":\"");
  put_str(type);
  put_str("\",\"path\":");
  put_json(path);
  if (old != NULL) {
    put_str(",\"oldPath\":");
    put_json(old);
  }
  put_str("}\n");
}

static void overflow(const char *reason) {
  put_str("{\"type\":\"overflow\",\"reason\":\"");
  put_str(reason);
  put_str("\"}\n");
}

static int join(char *dst, const char *dir, const char *name) {
  int n = snprintf(dst, PATH_MAX, "%s%s%s", dir,
                   dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", name);
  return n > 0 && n < PATH_MAX ? 0 : -1;
}

static void scan(const char *dir, int report);

/* Watch directory path (and, recursive, below it); report: say every entry
 * found in it was created (a directory that appeared after its parent's
 * watch: what was made in it meanwhile). */
static void add_dir(const char *path, int report) {
  int wd;
  if (nwatches >= FLY_WATCH_MAX) {
    if (!warned)
      overflow("watches");
    warned = 1;
    return;
  }
  wd = inotify_add_watch(ifd, path, MASK | IN_ONLYDIR);
  if (wd < 0 && nwatches == 0)
    fprintf(stderr, "flywatch: %s: %s\n", path, strerror(errno)); /* the root */
  if (wd < 0 || wd >= FLY_WATCH_MAX) {
    if (wd >= 0)
      inotify_rm_watch(ifd, wd);
    if (wd >= 0 || errno == ENOSPC) {
      if (!warned)
        overflow("watches");
      warned = 1;
    }
    return;
  }
  if (paths[wd] == NULL) {
    paths[wd] = strdup(path);
    if (paths[wd] == NULL)
      _exit(3);
    nwatches++;
  }
  if (recursive || report)
    scan(path, report);
}

static void scan(const char *dir, int report) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[PATH_MAX];
  if (d == NULL)
    return;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if (join(p, dir, e->d_name) != 0)
      continue;
    if (report)
      event("create", p, NULL);
    if (recursive && e->d_type == DT_DIR)
      add_dir(p, report);
  }
  closedir(d);
}

static void on_term(int sig) {
  (void)sig;
  _exit(0);
}

int main(int argc, char **argv) {
  static char buf[64 * 1024] __attribute__((aligned(8)));
  char pending_from[PATH_MAX], p[PATH_MAX], line[64];
  uint32_t pending_cookie = 0;
  int have_pending = 0, root_wd;
  const char *root;
  struct stat st;

  if (argc == 3 && strcmp(argv[1], "-r") == 0)
    recursive = 1;
  else if (argc != 2) {
    fprintf(stderr, "usage: flywatch [-r] PATH\n");
    return 2;
  }
  root = argv[argc - 1];
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_term);
  signal(SIGHUP, on_term);
  ifd = inotify_init1(IN_CLOEXEC);
  if (ifd < 0) {
    perror("flywatch: inotify");
    return 1;
  }
  if (stat(root, &st) != 0) {
    fprintf(stderr, "flywatch: %s: %s\n", root, strerror(errno));
    return 1;
  }
  if (S_ISDIR(st.st_mode)) {
    add_dir(root, 0);
    if (nwatches == 0)
      return 1; /* add_dir said why */
  } else {
    root_wd = inotify_add_watch(ifd, root, MASK);
    if (root_wd < 0 || root_wd >= FLY_WATCH_MAX) {
      perror("flywatch: watch");
      return 1;
    }
    /* A file: its events carry no name; paths[] holds the file itself. */
    paths[root_wd] = strdup(root);
  }
  snprintf(line, sizeof(line), "{\"type\":\"ready\",\"pid\":%d}\n",
           (int)getpid());
  put_str(line);
  flush_out();

  for (;;) {
    ssize_t n = read(ifd, buf, sizeof(buf));
    char *q;
    const char *last_type = NULL;
    char last_path[PATH_MAX];
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return 1;
    last_path[0] = '\0';
    for (q = buf; q < buf + n;) {
      struct inotify_event *ev = (struct inotify_event *)q;
      const char *dir;
      q += sizeof(*ev) + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) {
        overflow("kernel");
        continue;
      }
      if (ev->wd < 0 || ev->wd >= FLY_WATCH_MAX || paths[ev->wd] == NULL)
        continue;
      dir = paths[ev->wd];
      if (ev->mask & IN_IGNORED) {
        free(paths[ev->wd]);
        paths[ev->wd] = NULL;
        nwatches--;
        continue;
      }
      if (ev->len > 0) {
        if (join(p, dir, ev->name) != 0)
          continue;
      } else {
        snprintf(p, sizeof(p), "%s", dir);
      }
      /* A move out that is not followed by its move in left the tree. */
      if (have_pending && !((ev->mask & IN_MOVED_TO) &&
                            ev->cookie == pending_cookie)) {
        event("remove", pending_from, NULL);
        have_pending = 0;
      }
      if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
        if (strcmp(dir, root) == 0) {
          event("remove", root, NULL);
          flush_out();
          return 0;
        }
        continue; /* a subdirectory: its parent reports it */
      }
      if (ev->mask & IN_MOVED_FROM) {
        snprintf(pending_from, sizeof(pending_from), "%s", p);
        pending_cookie = ev->cookie;
        have_pending = 1;
        continue;
      }
      if (ev->mask & IN_MOVED_TO) {
        if (have_pending) {
          event("rename", p, pending_from);
          have_pending = 0;
        } else {
          event("create", p, NULL);
        }
        if (recursive && (ev->mask & IN_ISDIR))
          add_dir(p, 1);
        last_type = NULL;
        continue;
      }
      if (ev->mask & IN_CREATE) {
        event("create", p, NULL);
        if (recursive && (ev->mask & IN_ISDIR))
          add_dir(p, 1);
        last_type = NULL;
      } else if (ev->mask & IN_MODIFY) {
        /* Writes in a row to one file in one read: one event. */
        if (last_type != NULL && strcmp(last_path, p) == 0)
          continue;
        event("write", p, NULL);
        last_type = "write";
        snprintf(last_path, sizeof(last_path), "%s", p);
        continue;
      } else if (ev->mask & IN_DELETE) {
        event("remove", p, NULL);
      }
      last_type = NULL;
    }
    if (have_pending) {
      event("remove", pending_from, NULL);
      have_pending = 0;
    }
    flush_out();
  }
}
