/* keys.c: ed25519 key pairs with OpenSSL 3 and their OpenSSH encodings.
 *
 * The private key is written in the "openssh-key-v1" container that
 * ssh-keygen, sshd (HostKey) and libssh2 (publickey_frommemory) all read;
 * unencrypted, because the key lives only in memory and in the sandbox.
 *
 *   "openssh-key-v1\0"  string cipher "none"  string kdf "none"
 *   string kdfoptions ""  uint32 1  string pubblob  string private-section
 *   private-section = uint32 check, uint32 check, string "ssh-ed25519",
 *     string pub[32], string seed[32]||pub[32], string comment,
 *     padding 1,2,3,... up to a multiple of 8
 *
 * fly_keypair_from_private reads caller-supplied text, so every length is
 * checked against what is left before it is used, and every temporary that
 * held private bytes is cleansed before it is freed. */
#include "fly.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define KEYS_MAGIC "openssh-key-v1"
#define KEYS_TYPE "ssh-ed25519"
#define KEYS_BEGIN "-----BEGIN OPENSSH PRIVATE KEY-----"
#define KEYS_END "-----END OPENSSH PRIVATE KEY-----"
#define KEYS_LINE 70
/* A real ed25519 key file is about 400 bytes; this bounds the work done on
 * hostile input. */
#define KEYS_MAX_INPUT 16384
#define KEYS_MAX_COMMENT 1024

/* ---- writing ------------------------------------------------------------ */

static int keys_put_u32(fly_buf_t *b, uint32_t v) {
  unsigned char p[4];

  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
  return fly_buf_append(b, p, 4);
}

static int keys_put_str(fly_buf_t *b, const void *data, size_t len) {
  if (len > UINT32_MAX)
    return -1;
  if (keys_put_u32(b, (uint32_t)len) != 0)
    return -1;
  return fly_buf_append(b, data, len);
}

/* Sizes a buffer before private bytes go in: growing it later would leave
 * copies of them in memory that realloc freed without wiping. */
static int keys_buf_presize(fly_buf_t *b, size_t n) {
  char *zero = calloc(1, n ? n : 1);
  int rc;

  if (zero == NULL)
    return -1;
  rc = fly_buf_append(b, zero, n);
  free(zero);
  b->len = 0;
  return rc;
}

/* Standard base64 with padding; caller frees. */
static char *keys_b64(const unsigned char *data, size_t len) {
  char *out;

  if (len > (size_t)INT32_MAX / 2)
    return NULL;
  out = malloc(4 * ((len + 2) / 3) + 1);
  if (out == NULL)
    return NULL;
  EVP_EncodeBlock((unsigned char *)out, data, (int)len);
  return out;
}

/* The public key blob: string "ssh-ed25519", string pub. */
static int keys_pub_blob(fly_buf_t *b, const unsigned char pub[32]) {
  return keys_put_str(b, KEYS_TYPE, strlen(KEYS_TYPE)) ||
         keys_put_str(b, pub, 32);
}

char *fly_fingerprint_sha256(const unsigned char *blob, size_t len) {
  unsigned char md[32];
  unsigned int mdlen = 0;
  char *b64, *out;
  size_t n;

  if (!EVP_Digest(blob, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
    return NULL;
  b64 = keys_b64(md, mdlen);
  if (b64 == NULL)
    return NULL;
  /* ssh-keygen prints the base64 without its '=' padding. */
  n = strlen(b64);
  while (n > 0 && b64[n - 1] == '=')
    n--;
  out = malloc(7 + n + 1);
  if (out != NULL) {
    memcpy(out, "SHA256:", 7);
    memcpy(out + 7, b64, n);
    out[7 + n] = '\0';
  }
  free(b64);
  return out;
}

/* A comment is printable text: it goes on the public key line, where a
 * newline would start a new authorized_keys entry. */
static int keys_comment_ok(const unsigned char *c, size_t len) {
  size_t i;

  if (len > KEYS_MAX_COMMENT)
    return 0;
  for (i = 0; i < len; i++) {
    if (c[i] < 0x20 || c[i] == 0x7f)
      return 0;
  }
  return 1;
}

/* Fills public_openssh and fingerprint from the raw public key. */
static int keys_fill_public(fly_keypair_t *kp, const unsigned char pub[32],
                            const char *comment, size_t clen) {
  fly_buf_t blob = {0}, line = {0};
  char *b64 = NULL;
  int rc = -1;

  if (keys_pub_blob(&blob, pub) != 0)
    goto cleanup;
  b64 = keys_b64((const unsigned char *)blob.base, blob.len);
  if (b64 == NULL)
    goto cleanup;
  if (fly_buf_printf(&line, "%s %s", KEYS_TYPE, b64) != 0)
    goto cleanup;
  if (clen > 0 && (fly_buf_append(&line, " ", 1) != 0 ||
                   fly_buf_append(&line, comment, clen) != 0))
    goto cleanup;
  kp->fingerprint = fly_fingerprint_sha256((unsigned char *)blob.base,
                                           blob.len);
  if (kp->fingerprint == NULL)
    goto cleanup;
  kp->public_openssh = fly_buf_steal(&line, NULL);
  if (kp->public_openssh == NULL)
    goto cleanup;
  rc = 0;

cleanup:
  free(b64);
  fly_buf_free(&blob);
  fly_buf_free(&line);
  return rc;
}

/* PEM armour: the binary key as base64 lines of KEYS_LINE characters. */
static char *keys_armour(const fly_buf_t *bin) {
  fly_buf_t pem = {0};
  char *b64, *out = NULL;
  size_t n, i;

  b64 = keys_b64((const unsigned char *)bin->base, bin->len);
  if (b64 == NULL)
    return NULL;
  n = strlen(b64);
  if (keys_buf_presize(&pem, strlen(KEYS_BEGIN) + strlen(KEYS_END) + n +
                                 n / KEYS_LINE + 4) != 0 ||
      fly_buf_append(&pem, KEYS_BEGIN "\n", strlen(KEYS_BEGIN) + 1) != 0)
    goto cleanup;
  for (i = 0; i < n; i += KEYS_LINE) {
    size_t k = n - i < KEYS_LINE ? n - i : KEYS_LINE;
    if (fly_buf_append(&pem, b64 + i, k) != 0 ||
        fly_buf_append(&pem, "\n", 1) != 0)
      goto cleanup;
  }
  if (fly_buf_append(&pem, KEYS_END "\n", strlen(KEYS_END) + 1) != 0)
    goto cleanup;
  out = fly_buf_steal(&pem, NULL);

cleanup:
  fly_wipe(b64, n);
  free(b64);
  fly_buf_wipe_free(&pem);
  return out;
}

int fly_keypair_generate(fly_keypair_t *kp, const char *comment,
                         fly_err_t *e) {
  EVP_PKEY *pkey = NULL;
  unsigned char seed[32], pub[32], check[4];
  size_t slen = sizeof(seed), plen = sizeof(pub), clen, pad;
  fly_buf_t priv = {0}, bin = {0}, pubblob = {0};
  uint32_t ci;
  int rc = -1;

  memset(kp, 0, sizeof(*kp));
  if (comment == NULL)
    comment = "";
  clen = strlen(comment);
  if (!keys_comment_ok((const unsigned char *)comment, clen)) {
    fly_err_set(e, "ERR_INVALID_ARG", "key comment must be printable text");
    return -1;
  }

  pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  if (pkey == NULL ||
      !EVP_PKEY_get_raw_private_key(pkey, seed, &slen) || slen != 32 ||
      !EVP_PKEY_get_raw_public_key(pkey, pub, &plen) || plen != 32 ||
      RAND_bytes(check, sizeof(check)) != 1) {
    fly_err_set(e, "FLY_INTERNAL", "ed25519 key generation failed");
    goto cleanup;
  }
  ci = (uint32_t)check[0] << 24 | (uint32_t)check[1] << 16 |
       (uint32_t)check[2] << 8 | check[3];

  /* Private section; the 64-byte private key is seed || public. */
  if (keys_buf_presize(&priv, 160 + clen) != 0 ||
      keys_buf_presize(&bin, 288 + clen) != 0)
    goto nomem;
  if (keys_put_u32(&priv, ci) || keys_put_u32(&priv, ci) ||
      keys_put_str(&priv, KEYS_TYPE, strlen(KEYS_TYPE)) ||
      keys_put_str(&priv, pub, 32) || keys_put_u32(&priv, 64) ||
      fly_buf_append(&priv, seed, 32) || fly_buf_append(&priv, pub, 32) ||
      keys_put_str(&priv, comment, clen))
    goto nomem;
  for (pad = 1; priv.len % 8 != 0; pad++) {
    unsigned char p = (unsigned char)pad;
    if (fly_buf_append(&priv, &p, 1) != 0)
      goto nomem;
  }

  if (keys_pub_blob(&pubblob, pub) ||
      fly_buf_append(&bin, KEYS_MAGIC, sizeof(KEYS_MAGIC)) || /* with NUL */
      keys_put_str(&bin, "none", 4) || keys_put_str(&bin, "none", 4) ||
      keys_put_str(&bin, "", 0) || keys_put_u32(&bin, 1) ||
      keys_put_str(&bin, pubblob.base, pubblob.len) ||
      keys_put_str(&bin, priv.base, priv.len))
    goto nomem;

  kp->private_openssh = keys_armour(&bin);
  if (kp->private_openssh == NULL ||
      keys_fill_public(kp, pub, comment, clen) != 0)
    goto nomem;
  rc = 0;
  goto cleanup;

nomem:
  fly_err_set(e, "ERR_NO_MEMORY", "out of memory encoding the key");
cleanup:
  if (rc != 0)
    fly_keypair_free(kp);
  fly_wipe(seed, sizeof(seed));
  fly_buf_wipe_free(&priv);
  fly_buf_wipe_free(&bin);
  fly_buf_free(&pubblob);
  EVP_PKEY_free(pkey);
  return rc;
}

void fly_keypair_free(fly_keypair_t *kp) {
  if (kp == NULL)
    return;
  fly_secret_free(kp->private_openssh);
  free(kp->public_openssh);
  free(kp->fingerprint);
  memset(kp, 0, sizeof(*kp));
}

/* ---- reading ------------------------------------------------------------ */

typedef struct keys_rd_s {
  const unsigned char *p;
  size_t left;
} keys_rd_t;

static int keys_get_u32(keys_rd_t *r, uint32_t *v) {
  if (r->left < 4)
    return -1;
  *v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 |
       (uint32_t)r->p[2] << 8 | r->p[3];
  r->p += 4;
  r->left -= 4;
  return 0;
}

/* A length-prefixed string: points into the reader, no copy. */
static int keys_get_str(keys_rd_t *r, const unsigned char **s, size_t *len) {
  uint32_t n;

  if (keys_get_u32(r, &n) != 0 || n > r->left)
    return -1;
  *s = r->p;
  *len = n;
  r->p += n;
  r->left -= n;
  return 0;
}

static int keys_str_is(const unsigned char *s, size_t len, const char *want) {
  return len == strlen(want) && memcmp(s, want, len) == 0;
}

static int keys_b64_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

/* Decodes base64 from in[0..len), skipping whitespace; '=' only at the end.
 * out must hold len * 3 / 4 bytes. */
static int keys_unb64(const char *in, size_t len, unsigned char *out,
                      size_t *outlen) {
  uint32_t acc = 0;
  size_t i, n = 0, pads = 0;
  int bits = 0, v;

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)in[i];
    if (c == '\n' || c == '\r' || c == ' ' || c == '\t')
      continue;
    if (c == '=') {
      pads++;
      continue;
    }
    if (pads > 0 || (v = keys_b64_val(c)) < 0)
      return -1;
    acc = (acc << 6 | (uint32_t)v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (unsigned char)(acc >> bits);
    }
  }
  /* Leftover bits must be the zero fill of a short final group. */
  if (pads > 2 || bits >= 6 || (acc & ((1u << bits) - 1)) != 0)
    return -1;
  *outlen = n;
  return 0;
}

int fly_keypair_from_private(fly_keypair_t *kp, const char *private_openssh,
                             fly_err_t *e) {
  const char *begin, *body, *end, *tail;
  unsigned char *bin = NULL;
  size_t inlen, binlen = 0, len, clen = 0, i;
  const unsigned char *s, *pubblob, *priv, *comment = NULL, *kpub, *kpriv;
  size_t pubbloblen, privlen;
  keys_rd_t r, pr;
  uint32_t n, c1, c2;
  EVP_PKEY *pkey = NULL;
  unsigned char derived[32];
  size_t dlen = sizeof(derived);
  const char *why = "not an OpenSSH private key";
  int rc = -1;

  memset(kp, 0, sizeof(*kp));
  if (private_openssh == NULL)
    goto invalid;
  inlen = strlen(private_openssh);
  if (inlen > KEYS_MAX_INPUT)
    goto invalid;

  /* Armour: optional leading whitespace, BEGIN line, base64, END line,
   * optional trailing whitespace. */
  begin = private_openssh;
  while (*begin == ' ' || *begin == '\t' || *begin == '\r' || *begin == '\n')
    begin++;
  if (strncmp(begin, KEYS_BEGIN, strlen(KEYS_BEGIN)) != 0)
    goto invalid;
  body = begin + strlen(KEYS_BEGIN);
  end = strstr(body, KEYS_END);
  if (end == NULL)
    goto invalid;
  for (tail = end + strlen(KEYS_END); *tail != '\0'; tail++) {
    if (*tail != ' ' && *tail != '\t' && *tail != '\r' && *tail != '\n')
      goto invalid;
  }
  bin = malloc((size_t)(end - body) * 3 / 4 + 1);
  if (bin == NULL) {
    fly_err_set(e, "ERR_NO_MEMORY", "out of memory reading the key");
    return -1;
  }
  if (keys_unb64(body, (size_t)(end - body), bin, &binlen) != 0)
    goto invalid;

  r.p = bin;
  r.left = binlen;
  if (r.left < sizeof(KEYS_MAGIC) ||
      memcmp(r.p, KEYS_MAGIC, sizeof(KEYS_MAGIC)) != 0)
    goto invalid;
  r.p += sizeof(KEYS_MAGIC);
  r.left -= sizeof(KEYS_MAGIC);

  why = "an encrypted private key is not supported";
  if (keys_get_str(&r, &s, &len) != 0 || !keys_str_is(s, len, "none") ||
      keys_get_str(&r, &s, &len) != 0 || !keys_str_is(s, len, "none") ||
      keys_get_str(&r, &s, &len) != 0 || len != 0)
    goto invalid;
  why = "the key file must hold exactly one key";
  if (keys_get_u32(&r, &n) != 0 || n != 1)
    goto invalid;
  why = "not an ed25519 private key";
  if (keys_get_str(&r, &pubblob, &pubbloblen) != 0 ||
      keys_get_str(&r, &priv, &privlen) != 0 || r.left != 0)
    goto invalid;

  /* The public blob alone. */
  pr.p = pubblob;
  pr.left = pubbloblen;
  if (keys_get_str(&pr, &s, &len) != 0 || !keys_str_is(s, len, KEYS_TYPE) ||
      keys_get_str(&pr, &kpub, &len) != 0 || len != 32 || pr.left != 0)
    goto invalid;

  /* The private section (cipher "none": block size 8). */
  why = "malformed private key";
  if (privlen % 8 != 0)
    goto invalid;
  pr.p = priv;
  pr.left = privlen;
  if (keys_get_u32(&pr, &c1) != 0 || keys_get_u32(&pr, &c2) != 0 ||
      c1 != c2)
    goto invalid;
  if (keys_get_str(&pr, &s, &len) != 0 || !keys_str_is(s, len, KEYS_TYPE))
    goto invalid;
  if (keys_get_str(&pr, &s, &len) != 0 || len != 32 ||
      memcmp(s, kpub, 32) != 0)
    goto invalid;
  if (keys_get_str(&pr, &kpriv, &len) != 0 || len != 64 ||
      memcmp(kpriv + 32, kpub, 32) != 0)
    goto invalid;
  if (keys_get_str(&pr, &comment, &clen) != 0)
    goto invalid;
  for (i = 0; i < pr.left; i++) {
    if (pr.p[i] != (unsigned char)(i + 1))
      goto invalid;
  }
  if (pr.left >= 8)
    goto invalid;

  /* The seed must really produce the stated public key; otherwise sshd or
   * libssh2 would fail later with a much less useful error. */
  pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, kpriv, 32);
  if (pkey == NULL || !EVP_PKEY_get_raw_public_key(pkey, derived, &dlen) ||
      dlen != 32 || memcmp(derived, kpub, 32) != 0)
    goto invalid;

  /* A comment that is not printable is left off the public line. */
  if (!keys_comment_ok(comment, clen))
    clen = 0;
  kp->private_openssh = strdup(private_openssh);
  if (kp->private_openssh == NULL ||
      keys_fill_public(kp, kpub, (const char *)comment, clen) != 0) {
    fly_err_set(e, "ERR_NO_MEMORY", "out of memory reading the key");
    goto cleanup;
  }
  rc = 0;
  goto cleanup;

invalid:
  /* Fixed text only: never any byte of the key. */
  fly_err_set(e, "ERR_INVALID_ARG", "%s", why);
cleanup:
  if (rc != 0)
    fly_keypair_free(kp);
  if (bin != NULL) {
    fly_wipe(bin, (size_t)(end - body) * 3 / 4 + 1);
    free(bin);
  }
  EVP_PKEY_free(pkey);
  return rc;
}

#ifndef FLY_NO_NAPI

static napi_value keys_to_js(napi_env env, const fly_keypair_t *kp,
                             int with_private) {
  napi_value obj, v;

  FLY_NAPI_CALL(env, napi_create_object(env, &obj), NULL);
  if (with_private) {
    FLY_NAPI_CALL(env, napi_create_string_utf8(env, kp->private_openssh,
                                               NAPI_AUTO_LENGTH, &v),
                  NULL);
    FLY_NAPI_CALL(env, napi_set_named_property(env, obj, "privateKey", v),
                  NULL);
  }
  FLY_NAPI_CALL(env, napi_create_string_utf8(env, kp->public_openssh,
                                             NAPI_AUTO_LENGTH, &v),
                NULL);
  FLY_NAPI_CALL(env, napi_set_named_property(env, obj, "publicKey", v), NULL);
  FLY_NAPI_CALL(env, napi_create_string_utf8(env, kp->fingerprint,
                                             NAPI_AUTO_LENGTH, &v),
                NULL);
  FLY_NAPI_CALL(env, napi_set_named_property(env, obj, "fingerprint", v),
                NULL);
  return obj;
}

static void keys_throw(napi_env env, const fly_err_t *err) {
  napi_value v;

  if (err->code != NULL && strcmp(err->code, "ERR_INVALID_ARG") == 0)
    fly_throw_invalid(env, "%s", err->message);
  else if ((v = fly_err_to_js(env, err)) != NULL)
    (void)napi_throw(env, v); /* nothing else to do if the throw fails */
  else
    fly_napi_throw_last(env);
}

/* keygen([comment]) -> { privateKey, publicKey, fingerprint } */
napi_value fly_napi_keygen(napi_env env, napi_callback_info info) {
  size_t argc = 1, len = 0;
  napi_value args[1], result = NULL;
  napi_valuetype t = napi_undefined;
  char comment[KEYS_MAX_COMMENT + 1] = "computesdk-fly";
  fly_keypair_t kp;
  fly_err_t err;

  memset(&err, 0, sizeof(err));
  FLY_NAPI_CALL(env, napi_get_cb_info(env, info, &argc, args, NULL, NULL),
                NULL);
  if (argc >= 1)
    FLY_NAPI_CALL(env, napi_typeof(env, args[0], &t), NULL);
  if (t != napi_undefined) {
    if (t != napi_string ||
        napi_get_value_string_utf8(env, args[0], NULL, 0, &len) != napi_ok ||
        len > KEYS_MAX_COMMENT) {
      fly_throw_invalid(env, "comment must be a string of at most %d bytes",
                        KEYS_MAX_COMMENT);
      return NULL;
    }
    FLY_NAPI_CALL(env, napi_get_value_string_utf8(env, args[0], comment,
                                                  sizeof(comment), &len),
                  NULL);
    if (strlen(comment) != len) {
      fly_throw_invalid(env, "key comment must be printable text");
      return NULL;
    }
  }
  if (fly_keypair_generate(&kp, comment, &err) != 0) {
    keys_throw(env, &err);
    fly_err_clear(&err);
    return NULL;
  }
  result = keys_to_js(env, &kp, 1);
  fly_keypair_free(&kp);
  return result;
}

/* keyInfo(privateKey) -> { publicKey, fingerprint } */
napi_value fly_napi_key_info(napi_env env, napi_callback_info info) {
  size_t argc = 1, len = 0;
  napi_value args[1], result = NULL;
  napi_valuetype t = napi_undefined;
  fly_keypair_t kp;
  fly_err_t err;
  char *text = NULL;

  memset(&err, 0, sizeof(err));
  FLY_NAPI_CALL(env, napi_get_cb_info(env, info, &argc, args, NULL, NULL),
                NULL);
  if (argc >= 1)
    FLY_NAPI_CALL(env, napi_typeof(env, args[0], &t), NULL);
  if (t != napi_string ||
      napi_get_value_string_utf8(env, args[0], NULL, 0, &len) != napi_ok ||
      len > KEYS_MAX_INPUT) {
    fly_throw_invalid(env, "privateKey must be an OpenSSH private key string");
    return NULL;
  }
  text = malloc(len + 1);
  if (text == NULL) {
    fly_throw_nomem(env);
    return NULL;
  }
  if (napi_get_value_string_utf8(env, args[0], text, len + 1, &len) !=
      napi_ok) {
    fly_napi_throw_last(env);
    goto cleanup;
  }
  if (strlen(text) != len) {
    fly_throw_invalid(env, "not an OpenSSH private key");
    goto cleanup;
  }
  if (fly_keypair_from_private(&kp, text, &err) != 0) {
    keys_throw(env, &err);
    goto cleanup;
  }
  result = keys_to_js(env, &kp, 0);
  fly_keypair_free(&kp);

cleanup:
  fly_wipe(text, len + 1);
  free(text);
  fly_err_clear(&err);
  return result;
}

#endif /* FLY_NO_NAPI */
