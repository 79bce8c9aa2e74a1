/* fuzz_replay.h: the main() side the fuzz targets share when built with
 * -DFLY_FUZZ_REPLAY (gcc, or clang without libFuzzer): each target defines
 * its seeds and includes this after LLVMFuzzerTestOneInput.
 *
 *   <target>_replay FILE...           run each file once
 *   <target>_replay --write-seeds DIR write the seed corpus
 *   <target>_replay --seed-check      run the seeds and every truncation
 *
 * The target provides fuzz_seed_count, fuzz_seed(i, buf) (fills buf with
 * seed i; 0 or -1) and fuzz_seed_name[i]. */
#ifndef FLY_FUZZ_REPLAY_H
#define FLY_FUZZ_REPLAY_H

#include "fly.h"

#include <stdio.h>
#include <string.h>

static int fuzz_write(const char *dir, const char *name, const fly_buf_t *b) {
  fly_buf_t path = {0};
  FILE *f;
  int rc = -1;

  fly_buf_printf(&path, "%s/%s", dir, name);
  f = fopen(path.base, "wb");
  if (f != NULL) {
    rc = fwrite(b->base, 1, b->len, f) == b->len ? 0 : -1;
    fclose(f);
  }
  fly_buf_free(&path);
  return rc;
}

static int fuzz_replay_file(const char *name) {
  FILE *f = fopen(name, "rb");
  fly_buf_t in = {0};
  char chunk[4096];
  size_t k;

  if (f == NULL) {
    perror(name);
    return 1;
  }
  while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0)
    fly_buf_append(&in, chunk, k);
  fclose(f);
  LLVMFuzzerTestOneInput((unsigned char *)in.base, in.len);
  fly_buf_free(&in);
  return 0;
}

int main(int argc, char **argv) {
  int i, rc = 0;

  if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) {
    for (i = 0; i < fuzz_seed_count && rc == 0; i++) {
      fly_buf_t b = {0};
      rc = fuzz_seed(i, &b) != 0 || fuzz_write(argv[2], fuzz_seed_name[i], &b) != 0;
      fly_buf_free(&b);
    }
  } else if (argc == 2 && strcmp(argv[1], "--seed-check") == 0) {
    size_t total = 0, n;
    for (i = 0; i < fuzz_seed_count && rc == 0; i++) {
      fly_buf_t b = {0};
      if (fuzz_seed(i, &b) != 0) {
        rc = 1;
      } else {
        for (n = 1; n <= b.len; n++)
          LLVMFuzzerTestOneInput((unsigned char *)b.base, n);
        total += b.len;
      }
      fly_buf_free(&b);
    }
    printf("%s seed check: %zu inputs\n", argv[0], total);
  } else {
    for (i = 1; i < argc; i++)
      rc |= fuzz_replay_file(argv[i]);
  }
  return rc;
}

#endif
