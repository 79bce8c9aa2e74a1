/* fuzz_keys.c: fuzz target for fly_keypair_from_private.
 *
 * The first input byte picks the form: even -> the rest is the key text
 * as given; odd -> the rest is the binary container, which gets the PEM
 * armour so the fuzzer spends its time in the length-prefixed parser rather
 * than in base64.
 *
 * Built with clang -fsanitize=fuzzer this is a libFuzzer target.  Built
 * with -DFLY_FUZZ_REPLAY it has a main():
 *   fuzz_keys_replay FILE...           run each file once
 *   fuzz_keys_replay --write-seeds DIR write a seed corpus
 *   fuzz_keys_replay --seed-check      run the seeds and every truncation */
#include "fly.h"
#include "pem.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  fly_keypair_t kp;
  fly_err_t e;
  char *text;

  if (size == 0 || size > 65536)
    return 0;
  if (data[0] & 1) {
    text = pem_armour(data + 1, size - 1);
  } else {
    text = malloc(size);
    if (text != NULL) {
      memcpy(text, data + 1, size - 1);
      text[size - 1] = '\0';
    }
  }
  if (text == NULL)
    return 0;
  memset(&e, 0, sizeof(e));
  if (fly_keypair_from_private(&kp, text, &e) == 0) {
    /* Whatever parses must give well-formed outputs. */
    if (strncmp(kp.public_openssh, "ssh-ed25519 ", 12) != 0 ||
        strncmp(kp.fingerprint, "SHA256:", 7) != 0)
      abort();
    fly_keypair_free(&kp);
  } else if (e.code == NULL) {
    abort();
  }
  fly_err_clear(&e);
  free(text);
  return 0;
}

#ifdef FLY_FUZZ_REPLAY

/* Seeds: a fresh key as text (tag 0) and as binary (tag 1). */
static int fuzz_seeds(fly_buf_t *text, fly_buf_t *bin) {
  fly_keypair_t kp;
  fly_err_t e = {0};
  unsigned char *raw;
  size_t rawlen;

  if (fly_keypair_generate(&kp, "seed", &e) != 0)
    return -1;
  fly_buf_append(text, "\0", 1);
  fly_buf_append(text, kp.private_openssh, strlen(kp.private_openssh));
  raw = pem_unarmour(kp.private_openssh, &rawlen);
  fly_buf_append(bin, "\1", 1);
  fly_buf_append(bin, raw, rawlen);
  free(raw);
  fly_keypair_free(&kp);
  return 0;
}

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

int main(int argc, char **argv) {
  fly_buf_t text = {0}, bin = {0};
  int i, rc = 0;

  if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) {
    if (fuzz_seeds(&text, &bin) != 0 ||
        fuzz_write(argv[2], "seed-text", &text) != 0 ||
        fuzz_write(argv[2], "seed-bin", &bin) != 0)
      rc = 1;
  } else if (argc == 2 && strcmp(argv[1], "--seed-check") == 0) {
    size_t n;
    if (fuzz_seeds(&text, &bin) != 0)
      return 1;
    for (n = 1; n <= text.len; n++)
      LLVMFuzzerTestOneInput((unsigned char *)text.base, n);
    for (n = 1; n <= bin.len; n++)
      LLVMFuzzerTestOneInput((unsigned char *)bin.base, n);
    printf("fuzz_keys seed check: %zu inputs\n", text.len + bin.len);
  } else {
    for (i = 1; i < argc; i++) {
      FILE *f = fopen(argv[i], "rb");
      fly_buf_t in = {0};
      char chunk[4096];
      size_t k;
      if (f == NULL) {
        perror(argv[i]);
        rc = 1;
        continue;
      }
      while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0)
        fly_buf_append(&in, chunk, k);
      fclose(f);
      LLVMFuzzerTestOneInput((unsigned char *)in.base, in.len);
      fly_buf_free(&in);
    }
  }
  fly_buf_free(&text);
  fly_buf_free(&bin);
  return rc;
}

#endif /* FLY_FUZZ_REPLAY */
