/* fuzz_frame.c: fuzz target for fly_frame_parse, fed as executor.c feeds
 * it: bytes from the sandbox arrive in pieces, each parse looks at what is
 * buffered, a partial frame is kept at the front for the next piece.
 *
 * Input: byte 0 picks the payload bound (low bit set: FLY_FRAME_MAX, else
 * byte 0 itself, so small bounds are hit too); byte 1 seeds the sizes of
 * the pieces (1..64 bytes); the rest is the stream.  Every parse sees an
 * exactly sized heap copy of what is buffered, so a read past it is an
 * ASan error.  Checked for every frame: its size and payload lie within
 * what was buffered and within the bound, and re-encoding the frames with
 * fly_frame_put gives back the bytes consumed.  A refused length (-1) ends
 * the stream, as it fails the channel; it must be one the first 4 bytes
 * show to be impossible.
 *
 * Built with clang -fsanitize=fuzzer this is a libFuzzer target; built
 * with -DFLY_FUZZ_REPLAY it has fuzz_replay.h's main(). */
#include "fly.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* What executor.c reads of a frame's payload, read here so that a payload
 * reaching past the buffer is touched. */
static unsigned frame_touch(const fly_frame_t *f) {
  unsigned sum = 0;
  size_t i;
  for (i = 0; i < f->len; i++)
    sum += f->data[i];
  if (f->type == FLY_FRAME_EXIT && f->len == 8)
    sum += fly_frame_get32(f->data) + fly_frame_get32(f->data + 4);
  if (f->type == FLY_FRAME_ACK && f->len == 4)
    sum += fly_frame_get32(f->data);
  return sum;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  fly_buf_t rx = {0}, out = {0};
  size_t max_payload, off = 0, consumed = 0;
  unsigned piece_seed;
  volatile unsigned sink = 0;

  if (size < 2 || size > (1u << 20))
    return 0;
  max_payload = (data[0] & 1) ? FLY_FRAME_MAX : data[0];
  piece_seed = data[1];
  data += 2;
  size -= 2;
  while (off < size) {
    size_t piece = 1 + ((piece_seed = piece_seed * 1103515245u + 12345u) >> 16) % 64;
    int failed = 0;
    if (piece > size - off)
      piece = size - off;
    if (fly_buf_append(&rx, data + off, piece) != 0)
      abort();
    off += piece;
    for (;;) {
      fly_frame_t f;
      unsigned char *exact = malloc(rx.len > 0 ? rx.len : 1);
      int n;
      if (exact == NULL)
        abort();
      memcpy(exact, rx.base, rx.len);
      memset(&f, 0, sizeof(f));
      n = fly_frame_parse(exact, rx.len, max_payload, &f);
      if (n < 0) {
        uint32_t len;
        if (rx.len < 4)
          abort();
        len = fly_frame_get32(exact);
        if (len >= 5 && (size_t)(len - 5) <= max_payload)
          abort();
        free(exact);
        failed = 1;
        break;
      }
      if (n == 0) {
        /* more needed: the frame must really be incomplete */
        if (rx.len >= 4 && rx.len >= 4 + (size_t)fly_frame_get32(exact))
          abort();
        free(exact);
        break;
      }
      if ((size_t)n > rx.len || n < FLY_FRAME_HDR ||
          f.len != (size_t)n - FLY_FRAME_HDR || f.len > max_payload ||
          f.data != exact + FLY_FRAME_HDR || f.type != exact[4] ||
          f.id != fly_frame_get32(exact + 5))
        abort();
      sink += frame_touch(&f);
      if (fly_frame_put(&out, f.type, f.id, f.data, f.len) != 0)
        abort();
      free(exact);
      /* keep the rest at the front, as exr_parse does */
      memmove(rx.base, rx.base + n, rx.len - (size_t)n);
      rx.len -= (size_t)n;
      consumed += (size_t)n;
    }
    if (failed)
      break;
  }
  /* the frames, put back together, are the bytes they came from */
  if (out.len != consumed || (consumed > 0 && memcmp(out.base, data, consumed) != 0))
    abort();
  (void)sink;
  fly_buf_free(&rx);
  fly_buf_free(&out);
  return 0;
}

#ifdef FLY_FUZZ_REPLAY

/* Seeds: a session as the executor speaks it (HELLO, RUNNING, STDOUT,
 * STDERR, ACK, EXIT, FAILED) under the full bound, then the same under a
 * bound of 16 that refuses the STDOUT frame. */
static const int fuzz_seed_count = 2;
static const char *const fuzz_seed_name[] = {"seed-session", "seed-bound"};

static int fuzz_seed(int i, fly_buf_t *b) {
  static const unsigned char hello[16] = "FLYEXEC1\0\0\0\1\0\0\0\0";
  static const unsigned char exitp[8] = {0, 0, 0, 3, 0, 0, 0, 0};
  static const unsigned char ack[4] = {0, 0, 0, 5};
  static const char failed[] = "\0\0\0\2no such file";
  unsigned char bound = i == 0 ? 1 : 16;
  char big[300];

  memset(big, 'o', sizeof(big));
  if (fly_buf_append(b, &bound, 1) != 0 || fly_buf_append(b, "\x2a", 1) != 0 ||
      fly_frame_put(b, FLY_FRAME_HELLO, 0, hello, sizeof(hello)) != 0 ||
      fly_frame_put(b, FLY_FRAME_RUNNING, 1, NULL, 0) != 0 ||
      fly_frame_put(b, FLY_FRAME_STDERR, 1, "err\n", 4) != 0 ||
      fly_frame_put(b, FLY_FRAME_ACK, 1, ack, sizeof(ack)) != 0 ||
      fly_frame_put(b, FLY_FRAME_STDOUT, 1, big, sizeof(big)) != 0 ||
      fly_frame_put(b, FLY_FRAME_EXIT, 1, exitp, sizeof(exitp)) != 0 ||
      fly_frame_put(b, FLY_FRAME_FAILED, 2, failed, sizeof(failed) - 1) != 0)
    return -1;
  return 0;
}

#include "fuzz_replay.h"

#endif /* FLY_FUZZ_REPLAY */
