/* test_frame.c: the executor protocol's frame codec (frame.c).  What the
 * parser reads came from the sandbox: bounds, truncation and garbage. */
#include "fly.h"
#include "harness.h"

#include <stdlib.h>

static uint32_t rd32(const unsigned char *p) { return fly_frame_get32(p); }

TEST(put_then_parse_round_trip) {
  fly_buf_t b = {0};
  fly_frame_t f;
  int n;

  CHECK(fly_frame_put(&b, FLY_FRAME_STDOUT, 0xdeadbeef, "hello", 5) == 0);
  CHECK(fly_frame_put(&b, FLY_FRAME_EOF, 7, NULL, 0) == 0);
  CHECK(b.len == 2 * FLY_FRAME_HDR + 5);
  n = fly_frame_parse(b.base, b.len, FLY_FRAME_MAX, &f);
  CHECK(n == FLY_FRAME_HDR + 5);
  CHECK(f.type == FLY_FRAME_STDOUT && f.id == 0xdeadbeef && f.len == 5);
  CHECK(memcmp(f.data, "hello", 5) == 0);
  n = fly_frame_parse(b.base + n, b.len - (size_t)n, FLY_FRAME_MAX, &f);
  CHECK(n == FLY_FRAME_HDR && f.type == FLY_FRAME_EOF && f.id == 7 &&
        f.len == 0);
  fly_buf_free(&b);
}

TEST(every_truncation_asks_for_more) {
  fly_buf_t b = {0};
  fly_frame_t f;
  size_t cut;
  int ok = 1;

  CHECK(fly_frame_put(&b, FLY_FRAME_STDERR, 3, "0123456789", 10) == 0);
  for (cut = 0; cut < b.len; cut++) {
    /* A copy of exactly cut bytes, so ASan sees any read past it. */
    char *p = malloc(cut ? cut : 1);
    memcpy(p, b.base, cut);
    ok &= fly_frame_parse(p, cut, FLY_FRAME_MAX, &f) == 0;
    free(p);
  }
  CHECK(ok);
  fly_buf_free(&b);
}

TEST(impossible_lengths_are_refused_from_the_header) {
  unsigned char h[4];
  fly_frame_t f;
  /* Over the bound: refused with only the length in, never waited for. */
  uint32_t big = 5 + FLY_FRAME_MAX + 1;
  h[0] = (unsigned char)(big >> 24);
  h[1] = (unsigned char)(big >> 16);
  h[2] = (unsigned char)(big >> 8);
  h[3] = (unsigned char)big;
  CHECK(fly_frame_parse(h, 4, FLY_FRAME_MAX, &f) == -1);
  memset(h, 0xff, 4);
  CHECK(fly_frame_parse(h, 4, FLY_FRAME_MAX, &f) == -1);
  /* Under 5: no room for type and id. */
  memset(h, 0, 4);
  CHECK(fly_frame_parse(h, 4, FLY_FRAME_MAX, &f) == -1);
  h[3] = 4;
  CHECK(fly_frame_parse(h, 4, FLY_FRAME_MAX, &f) == -1);
  /* The bound is the caller's. */
  h[3] = 5 + 10;
  CHECK(fly_frame_parse(h, 4, 9, &f) == -1);
  CHECK(fly_frame_parse(h, 4, 10, &f) == 0);
}

TEST(exactly_the_largest_payload) {
  fly_buf_t b = {0};
  fly_frame_t f;
  char *big = calloc(1, FLY_FRAME_MAX + 1);

  REQUIRE(big != NULL);
  CHECK(fly_frame_put(&b, FLY_FRAME_STDIN, 1, big, FLY_FRAME_MAX) == 0);
  CHECK(fly_frame_parse(b.base, b.len, FLY_FRAME_MAX, &f) ==
        (int)(FLY_FRAME_HDR + FLY_FRAME_MAX));
  CHECK(f.len == FLY_FRAME_MAX);
  /* One more is refused when building too. */
  CHECK(fly_frame_put(&b, FLY_FRAME_STDIN, 1, big, FLY_FRAME_MAX + 1) == -1);
  free(big);
  fly_buf_free(&b);
}

/* A START payload, read back field by field. */
static const unsigned char *str_at(const unsigned char *p, const char *want,
                                   int *ok) {
  uint32_t n = rd32(p);
  *ok &= n == strlen(want) && memcmp(p + 4, want, n) == 0;
  return p + 4 + n;
}

TEST(start_payload_layout) {
  const char *argv[] = {"printf", "%s", "it's \"x\" $(y)"};
  const char *names[] = {"A", "B_2"};
  const char *values[] = {"1", ""};
  fly_cmd_t cmd;
  fly_buf_t b = {0};
  const unsigned char *p;
  int ok = 1;

  memset(&cmd, 0, sizeof(cmd));
  cmd.argv = argv;
  cmd.argc = 3;
  cmd.cwd = "/tmp/a b";
  cmd.env_names = names;
  cmd.env_values = values;
  cmd.envc = 2;
  cmd.timeout_ms = 1500;
  CHECK(fly_frame_start_payload(&b, &cmd) == 0);
  p = (const unsigned char *)b.base;
  CHECK(p[0] == 0);
  CHECK(rd32(p + 1) == 1500);
  p = str_at(p + 5, "/tmp/a b", &ok);
  CHECK(rd32(p) == 2);
  p = str_at(p + 4, "A", &ok);
  p = str_at(p, "1", &ok);
  p = str_at(p, "B_2", &ok);
  p = str_at(p, "", &ok);
  CHECK(rd32(p) == 3);
  p = str_at(p + 4, "printf", &ok);
  p = str_at(p, "%s", &ok);
  p = str_at(p, "it's \"x\" $(y)", &ok);
  CHECK(ok);
  CHECK(p == (const unsigned char *)b.base + b.len);
  fly_buf_free(&b);

  memset(&cmd, 0, sizeof(cmd));
  cmd.command = "echo hi | wc -c";
  cmd.background = 1;
  cmd.timeout_ms = (uint64_t)1 << 40; /* clamped to 32 bits */
  CHECK(fly_frame_start_payload(&b, &cmd) == 0);
  p = (const unsigned char *)b.base;
  CHECK(p[0] == (FLY_START_SHELL | FLY_START_BACKGROUND));
  CHECK(rd32(p + 1) == UINT32_MAX);
  CHECK(rd32(p + 5) == 0); /* no cwd */
  CHECK(rd32(p + 9) == 0); /* no env */
  CHECK(rd32(p + 13) == 1);
  ok = 1;
  p = str_at(p + 17, "echo hi | wc -c", &ok);
  CHECK(ok && p == (const unsigned char *)b.base + b.len);
  fly_buf_free(&b);
}

/* Fuzz-ish replay: random streams, cut at random points, fed as a reader
 * would (append, parse what is whole, keep the rest).  Every parse either
 * consumes a frame that lies inside the bytes given, asks for more, or
 * refuses; nothing reads outside (ASan) and nothing is ever buffered past
 * one frame's bound. */
TEST(random_streams_stay_in_bounds) {
  unsigned seed;
  int ok = 1;

  for (seed = 1; seed <= 2000; seed++) {
    unsigned char stream[4096];
    size_t len = (size_t)(seed * 7919u % sizeof(stream)), i, off = 0;
    unsigned x = seed;
    for (i = 0; i < len; i++) {
      x = x * 1103515245u + 12345u;
      stream[i] = (unsigned char)(x >> 16);
      /* Mostly small lengths, so whole frames do occur. */
      if (i % 23 == 0)
        stream[i] = 0;
    }
    while (off < len) {
      fly_frame_t f;
      size_t avail = len - off;
      unsigned char *copy = malloc(avail);
      int n;
      memcpy(copy, stream + off, avail);
      n = fly_frame_parse(copy, avail, 512, &f);
      if (n > 0) {
        ok &= (size_t)n <= avail && f.len <= 512 &&
              f.data + f.len == copy + n;
        off += (size_t)n;
      }
      free(copy);
      if (n <= 0)
        break;
    }
  }
  CHECK(ok);
}

int main(void) {
  RUN(put_then_parse_round_trip);
  RUN(every_truncation_asks_for_more);
  RUN(impossible_lengths_are_refused_from_the_header);
  RUN(exactly_the_largest_payload);
  RUN(start_payload_layout);
  RUN(random_streams_stay_in_bounds);
  return h_done();
}
