/* buf.c: the growable byte buffer used for command lines, keys and bodies.
 *
 * base stays NUL-terminated whenever cap > 0 so text can be handed to C
 * string APIs without another copy; the terminator is not counted in len. */
#include "fly.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void fly_buf_free(fly_buf_t *b) {
  free(b->base);
  b->base = NULL;
  b->len = 0;
  b->cap = 0;
}

char *fly_buf_steal(fly_buf_t *b, size_t *len) {
  char *p = b->base;

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
