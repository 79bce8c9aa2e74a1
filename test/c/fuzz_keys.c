/* fuzz_keys.c: fuzz target for fly_keypair_from_private.
 *
 * The first input byte picks the form: even -> the rest is the key text
 * as given; odd -> the rest is the binary container, which gets the PEM
 * armour so the fuzzer spends its time in the length-prefixed parser rather
 * than in base64.
 *
 * Built with clang -fsanitize=fuzzer this is a libFuzzer target; built
 * with -DFLY_FUZZ_REPLAY it has fuzz_replay.h's main(). */
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
static const int fuzz_seed_count = 2;
static const char *const fuzz_seed_name[] = {"seed-text", "seed-bin"};

static int fuzz_seed(int i, fly_buf_t *b) {
  fly_keypair_t kp;
  fly_err_t e = {0};
  unsigned char *raw;
  size_t rawlen;

  if (fly_keypair_generate(&kp, "seed", &e) != 0)
    return -1;
  if (i == 0) {
    fly_buf_append(b, "\0", 1);
    fly_buf_append(b, kp.private_openssh, strlen(kp.private_openssh));
  } else {
    raw = pem_unarmour(kp.private_openssh, &rawlen);
    fly_buf_append(b, "\1", 1);
    fly_buf_append(b, raw, rawlen);
    free(raw);
  }
  fly_keypair_free(&kp);
  return 0;
}

#include "fuzz_replay.h"

#endif /* FLY_FUZZ_REPLAY */
