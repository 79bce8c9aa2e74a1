/* test_text.c: the ASCII scan and the UTF-8 -> UTF-16 decoder (text.c). */
#include "fly.h"
#include "harness.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Decodes in (len bytes) and compares with want (n units). */
static int decodes_to(const char *in, size_t len, const uint16_t *want,
                      size_t n) {
  fly_buf_t b = {0};
  int ok = fly_utf8_to_utf16(in, len, &b) == 0 && b.len == n * 2 &&
           (n == 0 || memcmp(b.base, want, n * 2) == 0);
  fly_buf_free(&b);
  return ok;
}

#define U(...) ((const uint16_t[]){__VA_ARGS__})
#define N(...) (sizeof((const uint16_t[]){__VA_ARGS__}) / sizeof(uint16_t))
#define DEC(s, ...) decodes_to(s, sizeof(s) - 1, U(__VA_ARGS__), N(__VA_ARGS__))

TEST(well_formed) {
  CHECK(decodes_to("", 0, NULL, 0));
  CHECK(DEC("a\n", 'a', '\n'));
  CHECK(DEC("\xc3\xa9", 0xe9));
  CHECK(DEC("\xe2\x82\xac", 0x20ac));
  CHECK(DEC("\xf0\x9f\x98\x80", 0xd83d, 0xde00));
  CHECK(DEC("\xf4\x8f\xbf\xbf", 0xdbff, 0xdfff));
  CHECK(DEC("\xef\xbb\xbf", 0xfeff)); /* a BOM is kept, as toString does */
}

/* Each maximal ill-formed subsequence is one U+FFFD (WHATWG). */
TEST(ill_formed) {
  CHECK(DEC("a\xff" "b", 'a', 0xfffd, 'b'));
  CHECK(DEC("\x80", 0xfffd));
  CHECK(DEC("\xc0\xaf", 0xfffd, 0xfffd));              /* overlong */
  CHECK(DEC("\xe0\x80\x80", 0xfffd, 0xfffd, 0xfffd));  /* overlong */
  CHECK(DEC("\xed\xa0\x80", 0xfffd, 0xfffd, 0xfffd));  /* surrogate */
  CHECK(DEC("\xf4\x90\x80\x80", 0xfffd, 0xfffd, 0xfffd, 0xfffd));
  CHECK(DEC("\xe2\x82", 0xfffd));                      /* cut at the end */
  CHECK(DEC("\xe2\x82" "a", 0xfffd, 'a'));             /* cut mid-text */
  CHECK(DEC("\xf0\x9f\x98" "\xc3\xa9", 0xfffd, 0xe9));
  CHECK(DEC("\xf5\x80", 0xfffd, 0xfffd));
}

TEST(prepare_picks_the_form) {
  fly_buf_t b = {0};
  size_t i;

  CHECK(fly_buf_append(&b, "plain text", 10) == 0);
  CHECK(fly_text_prepare(&b) == FLY_TEXT_LATIN1 && b.len == 10);
  /* Small non-ASCII stays bytes (JS decodes it). */
  CHECK(fly_buf_append(&b, "\xc3\xa9", 2) == 0);
  CHECK(fly_text_prepare(&b) == FLY_TEXT_BYTES && b.len == 12);
  fly_buf_free(&b);
  /* Large non-ASCII becomes UTF-16. */
  for (i = 0; i < FLY_TEXT_DECODE_MIN; i += 2)
    CHECK(fly_buf_append(&b, "\xc3\xa9", 2) == 0);
  CHECK(fly_text_prepare(&b) == FLY_TEXT_UTF16);
  CHECK(b.len == FLY_TEXT_DECODE_MIN); /* half as many units, 2 bytes each */
  CHECK(((uint16_t *)(void *)b.base)[0] == 0xe9);
  fly_buf_free(&b);
}

TEST(utf8_tail) {
  CHECK(fly_utf8_tail("", 0) == 0);
  CHECK(fly_utf8_tail("abc", 3) == 0);
  CHECK(fly_utf8_tail("a\xc3", 2) == 1);
  CHECK(fly_utf8_tail("a\xc3\xa9", 3) == 0);           /* complete */
  CHECK(fly_utf8_tail("\xe2\x82", 2) == 2);
  CHECK(fly_utf8_tail("\xf0\x9f\x98", 3) == 3);
  CHECK(fly_utf8_tail("\xf0\x9f\x98\x80", 4) == 0);   /* complete */
  CHECK(fly_utf8_tail("\xe0\x80", 2) == 0);            /* ill-formed already */
  CHECK(fly_utf8_tail("\xed\xa0", 2) == 0);            /* a surrogate */
  CHECK(fly_utf8_tail("\xf4\x90", 2) == 0);            /* past U+10FFFF */
  CHECK(fly_utf8_tail("\x80\x80\x80", 3) == 0);        /* no lead */
  CHECK(fly_utf8_tail("\xff", 1) == 0);
  CHECK(fly_utf8_tail("\xc3\xa9\xe2", 3) == 1);
}

int main(void) {
  RUN(well_formed);
  RUN(ill_formed);
  RUN(prepare_picks_the_form);
  RUN(utf8_tail);
  return h_done();
}
