/* pem.h: OpenSSH key armour for the key tests and the fuzzer: binary key
 * containers in and out of "-----BEGIN OPENSSH PRIVATE KEY-----" text.
 * Test helpers: they trust their input. */
#ifndef FLY_TEST_PEM_H
#define FLY_TEST_PEM_H

#include "fly.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

/* Binary bytes as OpenSSH private key text; caller frees. */
static inline char *pem_armour(const unsigned char *bin, size_t len) {
  fly_buf_t b = {0};
  char *b64 = malloc(4 * ((len + 2) / 3) + 1);
  size_t i, n;

  if (b64 == NULL)
    return NULL;
  EVP_EncodeBlock((unsigned char *)b64, bin, (int)len);
  n = strlen(b64);
  fly_buf_printf(&b, "-----BEGIN OPENSSH PRIVATE KEY-----\n");
  for (i = 0; i < n; i += 70) {
    fly_buf_append(&b, b64 + i, n - i < 70 ? n - i : 70);
    fly_buf_append(&b, "\n", 1);
  }
  fly_buf_printf(&b, "-----END OPENSSH PRIVATE KEY-----\n");
  free(b64);
  return fly_buf_steal(&b, NULL);
}

/* The binary container inside a key text; caller frees. */
static inline unsigned char *pem_unarmour(const char *pem, size_t *len) {
  fly_buf_t b64 = {0};
  const char *p = strchr(pem, '\n') + 1, *end = strstr(pem, "-----END");
  unsigned char *bin;
  int n;

  for (; p < end; p++)
    if (*p != '\n')
      fly_buf_append(&b64, p, 1);
  bin = malloc(b64.len + 1);
  n = EVP_DecodeBlock(bin, (unsigned char *)b64.base, (int)b64.len);
  *len = n < 0 ? 0 : (size_t)n;
  while (b64.len > 0 && b64.base[--b64.len] == '=')
    (*len)--;
  fly_buf_free(&b64);
  return bin;
}

#endif /* FLY_TEST_PEM_H */
