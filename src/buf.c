/* buf.c: the growable byte buffer used for command lines, keys and bodies,
 * and for large results (file reads, command output).
 *
 * base stays NUL-terminated whenever cap > 0 so text can be handed to C
 * string APIs without another copy; the terminator is not counted in len.
 * Past FLY_BUF_MAP_MIN the bytes live in a private mapping aligned to 2 MiB
 * with MADV_HUGEPAGE (see fly.h for why), grown with mremap, which moves
 * page tables rather than bytes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mremap */
#endif
#include "fly.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#define FLY_BUF_CAN_MAP 1
#define FLY_BUF_HUGE ((size_t)2 << 20)

static size_t page_round(size_t n) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  if (n > SIZE_MAX - pg)
    return 0;
  return (n + pg - 1) / pg * pg;
}

/* cap bytes (a page multiple) starting on a 2 MiB boundary, so that every
 * whole 2 MiB range of it can be one huge page.  NULL when out of memory. */
static char *map_aligned(size_t cap) {
  char *raw, *p;
  size_t head, tail;

  if (cap > SIZE_MAX - FLY_BUF_HUGE)
    return NULL;
  raw = mmap(NULL, cap + FLY_BUF_HUGE, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED)
    return NULL;
  p = (char *)(((uintptr_t)raw + FLY_BUF_HUGE - 1) & ~(uintptr_t)(FLY_BUF_HUGE - 1));
  head = (size_t)(p - raw);
  tail = FLY_BUF_HUGE - head;
  /* Trimming the spare head and tail cannot fail for a range we own. */
  if (head > 0)
    (void)munmap(raw, head);
  if (tail > 0)
    (void)munmap(p + cap, tail);
#ifdef MADV_HUGEPAGE
  /* Without THP (disabled, or another kernel) it works with small pages. */
  (void)madvise(p, cap, MADV_HUGEPAGE);
#endif
  return p;
}

/* Grow b into a mapping of at least cap bytes. */
static int grow_mapped(fly_buf_t *b, size_t cap) {
  char *p;

  cap = page_round(cap);
  if (cap == 0)
    return -1;
  if (b->mapped) {
    p = mremap(b->base, b->cap, cap, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
      return -1;
  } else {
    p = map_aligned(cap);
    if (p == NULL)
      return -1;
    if (b->base != NULL)
      memcpy(p, b->base, b->len + 1);
    free(b->base);
  }
  b->base = p;
  b->cap = cap;
  b->mapped = 1;
  return 0;
}
#endif

/* Room for extra more bytes plus the terminator.  The first reservation is
 * exact (a file sized from its stat gets no slack); growth after that
 * doubles, so appending stays amortised O(1). */
int fly_buf_reserve(fly_buf_t *b, size_t extra) {
  size_t need, cap;
  char *p;

  if (extra > SIZE_MAX - b->len - 1)
    return -1;
  need = b->len + extra + 1;
  if (need <= b->cap)
    return 0;
  cap = b->cap > SIZE_MAX / 2 ? SIZE_MAX : b->cap * 2;
  if (cap < need)
    cap = need;
  if (cap < 64)
    cap = 64;
#ifdef FLY_BUF_CAN_MAP
  if (cap >= FLY_BUF_MAP_MIN)
    return grow_mapped(b, cap);
#endif
  p = realloc(b->base, cap);
  if (p == NULL)
    return -1;
  b->base = p;
  b->cap = cap;
  return 0;
}

int fly_buf_append(fly_buf_t *b, const void *data, size_t len) {
  if (fly_buf_reserve(b, len) != 0)
    return -1;
  if (len > 0)
    memcpy(b->base + b->len, data, len);
  b->len += len;
  b->base[b->len] = '\0';
  return 0;
}

int fly_buf_printf(fly_buf_t *b, const char *fmt, ...) {
  va_list ap;
  int n;

  /* Measure first so the formatted text lands in one piece. */
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || fly_buf_reserve(b, (size_t)n) != 0)
    return -1;
  va_start(ap, fmt);
  vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void fly_buf_release(void *base, size_t cap, int mapped) {
#ifdef FLY_BUF_CAN_MAP
  if (mapped) {
    /* Unmapping a mapping we made cannot fail. */
    (void)munmap(base, cap);
    return;
  }
#endif
  (void)cap;
  (void)mapped;
  free(base);
}

void fly_buf_free(fly_buf_t *b) {
  if (b->base != NULL)
    fly_buf_release(b->base, b->cap, b->mapped);
  b->base = NULL;
  b->len = 0;
  b->cap = 0;
  b->mapped = 0;
}

void fly_wipe(void *p, size_t n) {
  if (p != NULL && n > 0)
    OPENSSL_cleanse(p, n);
}

void fly_secret_free(char *s) {
  if (s != NULL) {
    fly_wipe(s, strlen(s));
    free(s);
  }
}

void fly_buf_wipe_free(fly_buf_t *b) {
  fly_wipe(b->base, b->cap);
  fly_buf_free(b);
}

char *fly_buf_steal(fly_buf_t *b, size_t *len) {
  char *p = b->base;

  if (b->mapped) {
    /* The caller frees with free(): hand over a malloc'ed copy. */
    p = malloc(b->len + 1);
    if (p != NULL)
      memcpy(p, b->base, b->len + 1);
    if (len != NULL)
      *len = p ? b->len : 0;
    fly_buf_free(b);
    return p;
  }
  /* An empty buffer still hands out a valid empty string. */
  if (p == NULL)
    p = calloc(1, 1);
  if (len != NULL)
    *len = p ? b->len : 0;
  b->base = NULL;
  b->len = 0;
  b->cap = 0;
  return p;
}

char *fly_buf_take(fly_buf_t *b, size_t *len, size_t *cap, int *mapped) {
  char *p = b->base;

  *len = b->len;
  *cap = b->cap;
  *mapped = b->mapped;
  if (p == NULL) {
    p = calloc(1, 1);
    *len = 0;
    *cap = 1;
  }
  b->base = NULL;
  b->len = 0;
  b->cap = 0;
  b->mapped = 0;
  return p;
}
