/* test_buf.c: the growable buffer. */
#include "fly.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>

TEST(append_keeps_nul_terminator) {
  fly_buf_t b = {0};

  CHECK(fly_buf_append(&b, "ab", 2) == 0);
  CHECK(b.len == 2 && b.base[2] == '\0');
  CHECK(fly_buf_append(&b, "", 0) == 0);
  CHECK_STR(b.base, "ab");
  CHECK(fly_buf_append(&b, "c\0d", 3) == 0);
  CHECK(b.len == 5 && memcmp(b.base, "abc\0d", 6) == 0);
  fly_buf_free(&b);
  CHECK(b.base == NULL && b.len == 0 && b.cap == 0);
}

TEST(printf_and_growth) {
  fly_buf_t b = {0};
  size_t i;
  int ok = 1;

  for (i = 0; i < 10000; i++)
    ok &= fly_buf_printf(&b, "%zu,", i % 10) == 0;
  CHECK(ok);
  CHECK(b.len == 20000);
  CHECK(b.base[b.len] == '\0');
  CHECK(strncmp(b.base, "0,1,2,", 6) == 0);
  CHECK(fly_buf_printf(&b, "%s", "") == 0 && b.len == 20000);
  fly_buf_free(&b);
}

TEST(steal_empties) {
  fly_buf_t b = {0};
  size_t len = 99;
  char *s;

  s = fly_buf_steal(&b, &len);
  CHECK(s != NULL && len == 0 && s[0] == '\0');
  free(s);
  CHECK(fly_buf_append(&b, "xyz", 3) == 0);
  s = fly_buf_steal(&b, &len);
  CHECK(len == 3);
  CHECK_STR(s, "xyz");
  CHECK(b.base == NULL && b.len == 0 && b.cap == 0);
  free(s);
  fly_buf_free(&b);
}

TEST(large_buffers_are_mapped_and_keep_their_bytes) {
  fly_buf_t b = {0};
  size_t i, len = 0, cap = 0;
  int ok = 1, mapped = 0;
  char *p;

  /* Grown past FLY_BUF_MAP_MIN by appends: a mapping, every byte kept,
   * through the move from malloc and through mremap growth. */
  for (i = 0; i < 5 * 1024 * 1024 / 1000; i++) {
    char piece[1000];
    memset(piece, (int)('a' + i % 26), sizeof(piece));
    ok &= fly_buf_append(&b, piece, sizeof(piece)) == 0;
  }
  CHECK(ok);
  CHECK(b.mapped == 1 && b.cap >= b.len + 1);
  CHECK(b.base[b.len] == '\0');
  for (i = 0; i < b.len; i++)
    ok &= b.base[i] == (char)('a' + (i / 1000) % 26);
  CHECK(ok);
  /* steal hands out malloc'ed bytes even from a mapping. */
  p = fly_buf_steal(&b, &len);
  CHECK(p != NULL && len == 5 * 1024 * 1024 / 1000 * 1000);
  CHECK(p[0] == 'a' && p[len - 1] == (char)('a' + (len / 1000 - 1) % 26));
  CHECK(b.base == NULL && b.mapped == 0);
  free(p);
  /* One exact reservation over the threshold, then take and release. */
  CHECK(fly_buf_reserve(&b, 3u << 20) == 0 && b.mapped == 1);
  memset(b.base, 'z', 3u << 20);
  b.len = 3u << 20;
  b.base[b.len] = '\0';
  p = fly_buf_take(&b, &len, &cap, &mapped);
  CHECK(mapped == 1 && len == (3u << 20) && cap > len && p[len - 1] == 'z');
  CHECK(b.base == NULL && b.len == 0 && b.cap == 0 && b.mapped == 0);
  fly_buf_release(p, cap, mapped);
  /* Small buffers stay malloc'ed. */
  CHECK(fly_buf_append(&b, "x", 1) == 0 && b.mapped == 0);
  p = fly_buf_take(&b, &len, &cap, &mapped);
  CHECK(mapped == 0 && len == 1 && p[0] == 'x');
  fly_buf_release(p, cap, mapped);
  /* An empty take is a valid empty string. */
  p = fly_buf_take(&b, &len, &cap, &mapped);
  CHECK(p != NULL && len == 0 && p[0] == '\0');
  fly_buf_release(p, cap, mapped);
  fly_buf_free(&b);
}

TEST(ascii_scan) {
  static char big[3 * 4096 + 13];
  size_t i;
  int ok = 1;

  CHECK(fly_bytes_ascii("", 0) == 1);
  CHECK(fly_bytes_ascii("hello\n\t\0x", 9) == 1);
  CHECK(fly_bytes_ascii("h\xc3\xa9", 3) == 0);
  CHECK(fly_bytes_ascii("\x7f", 1) == 1);
  CHECK(fly_bytes_ascii("\x80", 1) == 0);
  memset(big, 'a', sizeof(big));
  CHECK(fly_bytes_ascii(big, sizeof(big)) == 1);
  /* A high byte anywhere (word-scanned blocks, the word tail, the byte
   * tail) is found. */
  for (i = 0; i < sizeof(big); i++) {
    big[i] = (char)0xff;
    ok &= fly_bytes_ascii(big, sizeof(big)) == 0;
    ok &= fly_bytes_ascii(big, i) == 1;
    big[i] = 'a';
  }
  CHECK(ok);
}

int main(void) {
  RUN(append_keeps_nul_terminator);
  RUN(printf_and_growth);
  RUN(steal_empties);
  RUN(large_buffers_are_mapped_and_keep_their_bytes);
  RUN(ascii_scan);
  return h_done();
}
