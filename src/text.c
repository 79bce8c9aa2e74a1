/* text.c: command output as text for JS, prepared on the I/O thread.
 *
 * V8 can take a string's characters in place (an external string) when
 * they are Latin-1 or UTF-16, never UTF-8.  So output that is all ASCII is
 * its own Latin-1 form and goes over untouched; other output of some size
 * is decoded here, off the JS thread, into UTF-16 exactly as
 * Buffer.prototype.toString('utf8') would (the WHATWG UTF-8 decoder: each
 * maximal ill-formed subsequence becomes one U+FFFD). */
#include "fly.h"

#include <stdint.h>
#include <string.h>

int fly_bytes_ascii(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t acc = 0, w;
  size_t i = 0;

  /* Eight bytes at a time; OR-ing first and testing once per 4 KiB keeps
   * the loop at memory speed. */
  while (i + 4096 <= len) {
    size_t j;
    for (j = 0; j < 4096; j += 8) {
      memcpy(&w, p + i + j, 8);
      acc |= w;
    }
    if (acc & UINT64_C(0x8080808080808080))
      return 0;
    i += 4096;
  }
  for (; i + 8 <= len; i += 8) {
    memcpy(&w, p + i, 8);
    acc |= w;
  }
  if (acc & UINT64_C(0x8080808080808080))
    return 0;
  for (; i < len; i++)
    if (p[i] & 0x80)
      return 0;
  return 1;
}

int fly_utf8_to_utf16(const void *data, size_t len, fly_buf_t *out) {
  const unsigned char *p = data;
  uint16_t *u;
  size_t i = 0, n = 0;
  uint32_t cp = 0;
  unsigned need = 0, seen = 0;
  unsigned char lo = 0x80, hi = 0xBF;

  /* At most one UTF-16 unit per input byte (a 4-byte sequence makes a
   * surrogate pair), plus the U+FFFD of a truncated end. */
  out->len = 0;
  if (len > (SIZE_MAX - 4) / 2 || fly_buf_reserve(out, len * 2 + 2) != 0)
    return -1;
  u = (uint16_t *)(void *)out->base;
  while (i < len) {
    unsigned char c = p[i];
    if (need == 0) {
      i++;
      if (c < 0x80) {
        u[n++] = c;
      } else if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        cp = c & 0x1F;
      } else if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0)
          lo = 0xA0;
        if (c == 0xED)
          hi = 0x9F;
        need = 2;
        cp = c & 0x0F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0)
          lo = 0x90;
        if (c == 0xF4)
          hi = 0x8F;
        need = 3;
        cp = c & 0x07;
      } else {
        u[n++] = 0xFFFD;
      }
      continue;
    }
    if (c < lo || c > hi) {
      /* The sequence so far is one U+FFFD; c starts afresh (not
       * consumed). */
      need = seen = 0;
      cp = 0;
      lo = 0x80;
      hi = 0xBF;
      u[n++] = 0xFFFD;
      continue;
    }
    i++;
    lo = 0x80;
    hi = 0xBF;
    cp = (cp << 6) | (c & 0x3F);
    if (++seen < need)
      continue;
    if (cp > 0xFFFF) {
      cp -= 0x10000;
      u[n++] = (uint16_t)(0xD800 + (cp >> 10));
      u[n++] = (uint16_t)(0xDC00 + (cp & 0x3FF));
    } else {
      u[n++] = (uint16_t)cp;
    }
    need = seen = 0;
    cp = 0;
  }
  if (need != 0)
    u[n++] = 0xFFFD;
  out->len = n * 2;
  return 0;
}

size_t fly_utf8_tail(const void *data, size_t len) {
  const unsigned char *p = data;
  size_t k;

  for (k = 1; k <= 3 && k <= len; k++) {
    unsigned char c = p[len - k], lo = 0x80, hi = 0xBF;
    size_t need, i;
    if (c >= 0x80 && c <= 0xBF)
      continue; /* a continuation: look further back for its lead */
    if (c >= 0xC2 && c <= 0xDF)
      need = 2;
    else if (c >= 0xE0 && c <= 0xEF)
      need = 3;
    else if (c >= 0xF0 && c <= 0xF4)
      need = 4;
    else
      return 0; /* ASCII or never a lead: nothing is waiting */
    if (need <= k)
      return 0; /* complete (or already ill-formed) */
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
    else if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
    /* Held back only if what follows can still become a character. */
    for (i = 1; i < k; i++) {
      unsigned char d = p[len - k + i];
      if (d < lo || d > hi)
        return 0;
      lo = 0x80;
      hi = 0xBF;
    }
    return k;
  }
  return 0;
}

int fly_text_prepare(fly_buf_t *b) {
  fly_buf_t u = {0};

  if (fly_bytes_ascii(b->base, b->len))
    return FLY_TEXT_LATIN1;
  /* Small text costs JS little to decode (V8 makes it in its young
   * generation); a copy here would cost as much. */
  if (b->len < FLY_TEXT_DECODE_MIN || fly_utf8_to_utf16(b->base, b->len, &u) != 0) {
    fly_buf_free(&u);
    return FLY_TEXT_BYTES;
  }
  fly_buf_free(b);
  *b = u;
  return FLY_TEXT_UTF16;
}
