/* test_buf.c: the growable buffer. */
#include "fly.h"
#include "harness.h"

#include <stdlib.h>

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

int main(void) {
  RUN(append_keeps_nul_terminator);
  RUN(printf_and_growth);
  RUN(steal_empties);
  return h_done();
}
