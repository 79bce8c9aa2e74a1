/* flymetrics: what this sandbox uses (CPU, memory, disk), read inside it.
 *
 *   flymetrics now            one sample as a JSON line; cpuPercent over
 *                             the next FLY_NOW_MS
 *   flymetrics history SINCE  the kept samples taken at or after SINCE (ms
 *                             since the epoch), one JSON line each
 *   flymetrics daemon         (root, from the entrypoint) a sample every
 *                             FLY_PERIOD_S seconds, the last FLY_RING kept in
 *                             memory and written to FLY_RING_FILE
 *
 * The numbers are the sandbox's own: its cgroup when it has one of its own
 * (cgroup v2: cpu.stat, memory.current, memory.max, cpu.max; v1: cpuacct,
 * memory, cpu controllers; fly-local machines see theirs read-only under
 * /sys/fs/cgroup), else the machine's /proc (a Fly machine is a VM: its
 * /proc/stat and /proc/meminfo are its own).  Disk: statvfs of / and of
 * /home/sandbox (the workspace, a volume when one is mounted).
 *
 * Every file read here is the kernel's (cgroupfs, procfs) or the daemon's
 * own, written by root in a root-owned directory; each is still read into a
 * fixed buffer and parsed with bounds.  The daemon never opens anything
 * the sandbox user can write.  Static, no allocation after start. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define FLY_NOW_MS 500
#define FLY_PERIOD_S 5
#define FLY_RING 720 /* an hour at FLY_PERIOD_S */
#define FLY_RING_DIR "/run/computesdk-metrics"
#define FLY_RING_FILE FLY_RING_DIR "/samples"
#define FLY_HOME "/home/sandbox"

typedef struct {
  uint64_t at_ms;
  uint64_t cpu_usec;  /* cumulative CPU time of the sandbox */
  double cpus;
  double cpu_percent; /* since the previous sample, of all its cpus */
  uint64_t mem_used, mem_total;
  uint64_t disk_used, disk_total;  /* /home/sandbox */
  uint64_t root_used, root_total;  /* / */
} fly_sample_t;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t mono_usec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The first n-1 bytes of a file, NUL-terminated; -1 when unreadable. */
static int slurp(const char *path, char *buf, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  size_t got = 0;
  if (fd < 0)
    return -1;
  while (got + 1 < n) {
    ssize_t r = read(fd, buf + got, n - 1 - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  return 0;
}

/* A file holding one number; "max" (no limit) and errors give -1. */
static int read_u64(const char *path, uint64_t *v) {
  char b[64], *end;
  if (slurp(path, b, sizeof(b)) != 0 || b[0] < '0' || b[0] > '9')
    return -1;
  errno = 0;
  *v = strtoull(b, &end, 10);
  return errno == 0 && end != b ? 0 : -1;
}

/* "key value" lines (cpu.stat, memory.stat, /proc/meminfo): key's value. */
static int read_key(const char *path, const char *key, uint64_t *v) {
  char b[8192];
  size_t kl = strlen(key);
  const char *p;
  if (slurp(path, b, sizeof(b)) != 0)
    return -1;
  for (p = b; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, key, kl) == 0 && (p[kl] == ' ' || p[kl] == ':')) {
      const char *q = p + kl + 1;
      while (*q == ' ')
        q++;
      if (*q < '0' || *q > '9')
        return -1;
      *v = strtoull(q, NULL, 10);
      return 0;
    }
  }
  return -1;
}

static double online_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
  return (double)sysconf(_SC_NPROCESSORS_ONLN);
}

static uint64_t meminfo_total(void) {
  uint64_t kb = 0;
  return read_key("/proc/meminfo", "MemTotal", &kb) == 0 ? kb * 1024 : 0;
}

/* /proc/stat's first line: busy time of the whole machine, in usec. */
static uint64_t proc_cpu_usec(void) {
  char b[512];
  unsigned long long f[8] = {0};
  long hz = sysconf(_SC_CLK_TCK);
  if (slurp("/proc/stat", b, sizeof(b)) != 0 ||
      sscanf(b, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &f[0], &f[1],
             &f[2], &f[3], &f[4], &f[5], &f[6], &f[7]) < 4 || hz <= 0)
    return 0;
  /* user nice system (idle) (iowait) irq softirq steal */
  return (uint64_t)(f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) * 1000000 /
         (uint64_t)hz;
}

#define V2 "/sys/fs/cgroup/"
#define V1 "/sys/fs/cgroup/"

/* CPU time and memory: cgroup v2, v1, or the machine's /proc. */
static void sample_cgroup(fly_sample_t *s) {
  uint64_t v, q, p, inactive = 0;
  char b[128];
  double host = online_cpus();

  s->cpus = host;
  s->mem_total = meminfo_total();
  if (read_u64(V2 "memory.current", &v) == 0) {
    if (read_key(V2 "memory.stat", "inactive_file", &inactive) != 0 ||
        inactive > v)
      inactive = 0;
    s->mem_used = v - inactive;
    if (read_u64(V2 "memory.max", &v) == 0 && v < s->mem_total)
      s->mem_total = v;
    if (read_key(V2 "cpu.stat", "usage_usec", &v) == 0)
      s->cpu_usec = v;
    if (slurp(V2 "cpu.max", b, sizeof(b)) == 0 &&
        sscanf(b, "%llu %llu", (unsigned long long *)&q,
               (unsigned long long *)&p) == 2 && p > 0)
      s->cpus = (double)q / (double)p;
  } else if (read_u64(V1 "memory/memory.usage_in_bytes", &v) == 0) {
    if (read_key(V1 "memory/memory.stat", "total_inactive_file",
                 &inactive) != 0 || inactive > v)
      inactive = 0;
    s->mem_used = v - inactive;
    if (read_u64(V1 "memory/memory.limit_in_bytes", &v) == 0 &&
        v < s->mem_total)
      s->mem_total = v;
    if (read_u64(V1 "cpuacct/cpuacct.usage", &v) == 0)
      s->cpu_usec = v / 1000;
    if (read_u64(V1 "cpu/cpu.cfs_quota_us", &q) == 0 &&
        read_u64(V1 "cpu/cpu.cfs_period_us", &p) == 0 && p > 0)
      s->cpus = (double)q / (double)p; /* -1 (none) fails read_u64 */
  } else {
    uint64_t avail = 0;
    s->cpu_usec = proc_cpu_usec();
    if (read_key("/proc/meminfo", "MemAvailable", &avail) == 0 &&
        avail * 1024 <= s->mem_total)
      s->mem_used = s->mem_total - avail * 1024;
  }
  if (s->cpus > host || s->cpus <= 0)
    s->cpus = host;
}

static void disk(const char *path, uint64_t *used, uint64_t *total) {
  struct statvfs v;
  *used = *total = 0;
  if (statvfs(path, &v) != 0)
    return;
  *total = (uint64_t)v.f_blocks * v.f_frsize;
  *used = (uint64_t)(v.f_blocks - v.f_bfree) * v.f_frsize;
}

static void sample(fly_sample_t *s) {
  memset(s, 0, sizeof(*s));
  s->at_ms = now_ms();
  sample_cgroup(s);
  disk("/", &s->root_used, &s->root_total);
  disk(FLY_HOME, &s->disk_used, &s->disk_total);
  if (s->disk_total == 0) {
    s->disk_used = s->root_used;
    s->disk_total = s->root_total;
  }
}

/* prev -> s over wall usec: the share of the sandbox's cpus in use. */
static void percent(fly_sample_t *s, const fly_sample_t *prev,
                    uint64_t wall_usec) {
  double pct;
  if (wall_usec == 0 || s->cpu_usec < prev->cpu_usec || s->cpus <= 0)
    return;
  pct = (double)(s->cpu_usec - prev->cpu_usec) * 100.0 /
        ((double)wall_usec * s->cpus);
  s->cpu_percent = pct > 100.0 ? 100.0 : pct;
}

static int format(const fly_sample_t *s, char *out, size_t n) {
  return snprintf(out, n,
                  "{\"at\":%llu,\"cpuPercent\":%.1f,\"cpus\":%.2f,"
                  "\"memoryUsedBytes\":%llu,\"memoryTotalBytes\":%llu,"
                  "\"diskUsedBytes\":%llu,\"diskTotalBytes\":%llu,"
                  "\"rootUsedBytes\":%llu,\"rootTotalBytes\":%llu}\n",
                  (unsigned long long)s->at_ms, s->cpu_percent, s->cpus,
                  (unsigned long long)s->mem_used,
                  (unsigned long long)s->mem_total,
                  (unsigned long long)s->disk_used,
                  (unsigned long long)s->disk_total,
                  (unsigned long long)s->root_used,
                  (unsigned long long)s->root_total);
}

static int cmd_now(void) {
  fly_sample_t a, b;
  char line[512];
  uint64_t t0, t1;
  struct timespec d = {FLY_NOW_MS / 1000, (FLY_NOW_MS % 1000) * 1000000L};
  sample(&a);
  t0 = mono_usec();
  while (nanosleep(&d, &d) != 0 && errno == EINTR)
    ;
  sample(&b);
  t1 = mono_usec();
  percent(&b, &a, t1 - t0);
  format(&b, line, sizeof(line));
  return fputs(line, stdout) < 0 || fflush(stdout) != 0 ? 1 : 0;
}

/* The ring file is the daemon's (root's, in a root-owned directory): lines
 * of format(); still read under a bound, and only lines that look whole
 * are passed on. */
static int cmd_history(const char *since_s) {
  static char buf[FLY_RING * 512 + 1];
  uint64_t since = strtoull(since_s, NULL, 10);
  char *p, *nl;
  if (slurp(FLY_RING_FILE, buf, sizeof(buf)) != 0)
    return 0; /* no daemon yet: no samples */
  for (p = buf; (nl = strchr(p, '\n')) != NULL; p = nl + 1) {
    unsigned long long at;
    if (sscanf(p, "{\"at\":%llu,", &at) == 1 && at >= since &&
        nl[-1] == '}')
      fwrite(p, 1, (size_t)(nl - p + 1), stdout);
  }
  return fflush(stdout) != 0 ? 1 : 0;
}

static int write_ring(const fly_sample_t *ring, size_t n, size_t head) {
  static char buf[FLY_RING * 512];
  size_t len = 0, i;
  int fd;
  for (i = 0; i < n; i++) {
    const fly_sample_t *s = &ring[(head + FLY_RING - n + i) % FLY_RING];
    int w = format(s, buf + len, sizeof(buf) - len);
    if (w < 0 || (size_t)w >= sizeof(buf) - len)
      break;
    len += (size_t)w;
  }
  fd = open(FLY_RING_FILE ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
                                      O_NOFOLLOW, 0644);
  if (fd < 0)
    return -1;
  if (write(fd, buf, len) != (ssize_t)len) {
    close(fd);
    return -1;
  }
  close(fd);
  return rename(FLY_RING_FILE ".tmp", FLY_RING_FILE);
}

static int cmd_daemon(void) {
  static fly_sample_t ring[FLY_RING];
  size_t n = 0, head = 0;
  fly_sample_t prev;
  uint64_t prev_t;
  struct stat st;

  if (geteuid() != 0) {
    fprintf(stderr, "flymetrics daemon: needs root\n");
    return 2;
  }
  /* Root's directory, readable by all, writable by root only. */
  if (mkdir(FLY_RING_DIR, 0755) != 0 && errno != EEXIST)
    return 1;
  if (lstat(FLY_RING_DIR, &st) != 0 || !S_ISDIR(st.st_mode) ||
      st.st_uid != 0 || (st.st_mode & 022) != 0)
    return 1;
  signal(SIGPIPE, SIG_IGN);
  sample(&prev);
  prev_t = mono_usec();
  for (;;) {
    fly_sample_t s;
    uint64_t t;
    struct timespec d = {FLY_PERIOD_S, 0};
    while (nanosleep(&d, &d) != 0 && errno == EINTR)
      ;
    sample(&s);
    t = mono_usec();
    percent(&s, &prev, t - prev_t);
    prev = s;
    prev_t = t;
    ring[head] = s;
    head = (head + 1) % FLY_RING;
    if (n < FLY_RING)
      n++;
    (void)write_ring(ring, n, head); /* the next period tries again */
  }
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "now") == 0)
    return cmd_now();
  if (argc >= 3 && strcmp(argv[1], "history") == 0)
    return cmd_history(argv[2]);
  if (argc >= 2 && strcmp(argv[1], "daemon") == 0)
    return cmd_daemon();
  fprintf(stderr, "usage: flymetrics now | history SINCE_MS | daemon\n");
  return 2;
}
