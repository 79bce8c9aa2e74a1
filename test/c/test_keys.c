/* test_keys.c: ed25519 keys against the real OpenSSH tools, a real sshd
 * (the key as HostKey) and real libssh2 (the key from memory). */
#include "fly.h"
#include "pem.h"
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libssh2.h>

static char tmpdir[] = "/tmp/fly-keys-XXXXXX";

static char *path_in(const char *name) {
  fly_buf_t b = {0};
  fly_buf_printf(&b, "%s/%s", tmpdir, name);
  return fly_buf_steal(&b, NULL);
}

static int write_file(const char *path, const char *text, mode_t mode) {
  size_t len = strlen(text);
  int fd, ok;

  unlink(path);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  if (fd < 0)
    return -1;
  ok = write(fd, text, len) == (ssize_t)len;
  close(fd);
  return ok ? 0 : -1;
}

static char *read_all(FILE *f) {
  fly_buf_t b = {0};
  char chunk[4096];
  size_t n;

  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    fly_buf_append(&b, chunk, n);
  return fly_buf_steal(&b, NULL);
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "r");
  char *s;

  if (f == NULL)
    return NULL;
  s = read_all(f);
  fclose(f);
  return s;
}

/* stdout of a shell command with the trailing newline cut; NULL when it
 * failed. */
static char *capture(const char *cmd) {
  FILE *f = popen(cmd, "r");
  char *s;
  size_t n;

  if (f == NULL)
    return NULL;
  s = read_all(f);
  if (pclose(f) != 0) {
    free(s);
    return NULL;
  }
  n = strlen(s);
  while (n > 0 && s[n - 1] == '\n')
    s[--n] = '\0';
  return s;
}

static char *capture_fmt(const char *fmt, const char *arg) {
  fly_buf_t b = {0};
  char *s;

  fly_buf_printf(&b, fmt, arg);
  s = capture(b.base);
  fly_buf_free(&b);
  return s;
}

/* Second field of `ssh-keygen -lf`: "256 SHA256:... comment (ED25519)". */
static char *keygen_fingerprint(const char *pubpath) {
  char *line = capture_fmt("ssh-keygen -lf '%s'", pubpath), *fp, *end;

  if (line == NULL)
    return NULL;
  fp = strchr(line, ' ');
  if (fp == NULL) {
    free(line);
    return NULL;
  }
  fp++;
  end = strchr(fp, ' ');
  if (end != NULL)
    *end = '\0';
  memmove(line, fp, strlen(fp) + 1);
  return line;
}

TEST(generate_shapes) {
  fly_keypair_t kp;
  fly_err_t e = {0};
  const char *p;
  size_t linelen = 0;

  REQUIRE(fly_keypair_generate(&kp, "fly test", &e) == 0);
  CHECK(strncmp(kp.private_openssh,
                "-----BEGIN OPENSSH PRIVATE KEY-----\n", 36) == 0);
  CHECK(strstr(kp.private_openssh, "-----END OPENSSH PRIVATE KEY-----\n") !=
        NULL);
  CHECK(kp.private_openssh[strlen(kp.private_openssh) - 1] == '\n');
  /* Base64 lines are at most 70 characters. */
  for (p = kp.private_openssh + 36; *p && *p != '-'; p++) {
    if (*p == '\n') {
      CHECK(linelen <= 70 && linelen > 0);
      linelen = 0;
    } else {
      linelen++;
    }
  }
  CHECK(strncmp(kp.public_openssh, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI",
                37) == 0);
  CHECK(strlen(kp.public_openssh) == 12 + 68 + 1 + 8);
  CHECK(strcmp(kp.public_openssh + 12 + 68, " fly test") == 0);
  CHECK(strncmp(kp.fingerprint, "SHA256:", 7) == 0);
  CHECK(strlen(kp.fingerprint) == 7 + 43);
  fly_keypair_free(&kp);
  CHECK(kp.private_openssh == NULL);

  /* No comment: no trailing space. */
  REQUIRE(fly_keypair_generate(&kp, NULL, &e) == 0);
  CHECK(strlen(kp.public_openssh) == 12 + 68);
  fly_keypair_free(&kp);

  /* The longest comment allowed, and one byte more. */
  {
    char longc[1026];
    fly_keypair_t back;
    memset(longc, 'c', 1024);
    longc[1024] = '\0';
    REQUIRE(fly_keypair_generate(&kp, longc, &e) == 0);
    CHECK(fly_keypair_from_private(&back, kp.private_openssh, &e) == 0);
    CHECK_STR(back.public_openssh, kp.public_openssh);
    fly_keypair_free(&back);
    fly_keypair_free(&kp);
    longc[1024] = 'c';
    longc[1025] = '\0';
    CHECK(fly_keypair_generate(&kp, longc, &e) == -1);
    fly_err_clear(&e);
  }

  CHECK(fly_keypair_generate(&kp, "two\nlines", &e) == -1);
  CHECK_STR(e.code, "ERR_INVALID_ARG");
  CHECK(kp.private_openssh == NULL);
  fly_err_clear(&e);
}

TEST(generated_key_matches_ssh_keygen) {
  fly_keypair_t kp, back;
  fly_err_t e = {0};
  char *priv = path_in("gen"), *pub = path_in("gen.pub");
  char *y = NULL, *fp = NULL;

  REQUIRE(fly_keypair_generate(&kp, "gen@fly", &e) == 0);
  CHECK(write_file(priv, kp.private_openssh, 0600) == 0);
  y = capture_fmt("ssh-keygen -y -f '%s' 2>/dev/null", priv);
  CHECK_STR(y, kp.public_openssh);

  CHECK(write_file(pub, kp.public_openssh, 0644) == 0);
  fp = keygen_fingerprint(pub);
  CHECK_STR(fp, kp.fingerprint);

  CHECK(fly_keypair_from_private(&back, kp.private_openssh, &e) == 0);
  CHECK_STR(back.public_openssh, kp.public_openssh);
  CHECK_STR(back.fingerprint, kp.fingerprint);
  CHECK_STR(back.private_openssh, kp.private_openssh);
  fly_keypair_free(&back);
  fly_keypair_free(&kp);
  unlink(priv);
  unlink(pub);
  free(priv);
  free(pub);
  free(y);
  free(fp);
}

TEST(reads_ssh_keygen_keys) {
  char *priv = path_in("sk"), *pubp = path_in("sk.pub");
  char *text = NULL, *pub = NULL, *fp = NULL;
  fly_keypair_t kp;
  fly_err_t e = {0};

  unlink(priv);
  unlink(pubp);
  {
    char *out = capture_fmt(
        "ssh-keygen -q -t ed25519 -N '' -C 'made by ssh-keygen' -f '%s'",
        priv);
    CHECK(out != NULL);
    free(out);
  }
  text = read_file(priv);
  pub = read_file(pubp);
  REQUIRE(text != NULL && pub != NULL);
  pub[strcspn(pub, "\n")] = '\0';
  fp = keygen_fingerprint(pubp);
  CHECK(fly_keypair_from_private(&kp, text, &e) == 0);
  CHECK_STR(kp.public_openssh, pub);
  CHECK_STR(kp.fingerprint, fp);
  fly_keypair_free(&kp);
  unlink(priv);
  unlink(pubp);
  free(priv);
  free(pubp);
  free(text);
  free(pub);
  free(fp);
}

TEST(rejects_garbage_and_truncations) {
  static const char *garbage[] = {
    "", "hello", "-----BEGIN OPENSSH PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----\n",
    "-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n"
    "-----END OPENSSH PRIVATE KEY-----\n",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n"
    "-----END OPENSSH PRIVATE KEY-----\n",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA////\n"
    "-----END OPENSSH PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
  };
  fly_keypair_t kp, tmp;
  fly_err_t e = {0};
  unsigned char *bin, *copy;
  size_t binlen, i, textlen, accepted = 0;
  char *text, *trunc;

  for (i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
    CHECK(fly_keypair_from_private(&tmp, garbage[i], &e) == -1);
    CHECK_STR(e.code, "ERR_INVALID_ARG");
    CHECK(tmp.public_openssh == NULL && tmp.private_openssh == NULL);
    fly_err_clear(&e);
  }
  CHECK(fly_keypair_from_private(&tmp, NULL, &e) == -1);
  fly_err_clear(&e);

  REQUIRE(fly_keypair_generate(&kp, "truncate me", &e) == 0);

  /* Every truncation of the text. */
  textlen = strlen(kp.private_openssh);
  trunc = malloc(textlen + 1);
  for (i = 0; i < textlen; i++) {
    memcpy(trunc, kp.private_openssh, i);
    trunc[i] = '\0';
    /* Only cutting the final newline leaves a valid key. */
    if (fly_keypair_from_private(&tmp, trunc, &e) == 0) {
      CHECK(i == textlen - 1);
      fly_keypair_free(&tmp);
    }
    fly_err_clear(&e);
  }
  free(trunc);

  /* Every truncation of the binary, re-armoured so the parser gets past
   * the base64 and meets short lengths. */
  bin = pem_unarmour(kp.private_openssh, &binlen);
  text = pem_armour(bin, binlen);
  CHECK(fly_keypair_from_private(&tmp, text, &e) == 0); /* sanity */
  CHECK_STR(tmp.public_openssh, kp.public_openssh);
  fly_keypair_free(&tmp);
  free(text);
  for (i = 0; i < binlen; i++) {
    text = pem_armour(bin, i);
    CHECK(fly_keypair_from_private(&tmp, text, &e) == -1);
    CHECK_STR(e.code, "ERR_INVALID_ARG");
    fly_err_clear(&e);
    free(text);
  }

  /* Every single-byte change: ASan watches the parser; only changes in
   * the check ints (in pairs they differ, so never) or the comment may
   * still parse. */
  copy = malloc(binlen);
  for (i = 0; i < binlen; i++) {
    memcpy(copy, bin, binlen);
    copy[i] ^= 0x41;
    text = pem_armour(copy, binlen);
    if (fly_keypair_from_private(&tmp, text, &e) == 0) {
      accepted++;
      fly_keypair_free(&tmp);
    }
    fly_err_clear(&e);
    free(text);
  }
  /* "truncate me" is 11 bytes of comment: a flip there stays printable. */
  CHECK(accepted <= 11);
  free(copy);
  free(bin);
  fly_keypair_free(&kp);
}

TEST(rejects_other_key_kinds) {
  char *path = path_in("other");
  char *text, *out, *pubp = path_in("other.pub");
  fly_keypair_t kp;
  fly_err_t e = {0};

  unlink(path);
  out = capture_fmt("ssh-keygen -q -t rsa -b 1024 -N '' -f '%s'", path);
  free(out);
  text = read_file(path);
  REQUIRE(text != NULL);
  CHECK(fly_keypair_from_private(&kp, text, &e) == -1);
  CHECK_STR(e.code, "ERR_INVALID_ARG");
  fly_err_clear(&e);
  free(text);

  unlink(path);
  unlink(pubp);
  out = capture_fmt("ssh-keygen -q -t ed25519 -a 1 -N 'pass phrase' -f '%s'",
                    path);
  free(out);
  text = read_file(path);
  REQUIRE(text != NULL);
  CHECK(fly_keypair_from_private(&kp, text, &e) == -1);
  CHECK_STR(e.code, "ERR_INVALID_ARG");
  CHECK_STR(e.message, "an encrypted private key is not supported");
  fly_err_clear(&e);
  free(text);
  unlink(path);
  unlink(pubp);
  free(path);
  free(pubp);
}

/* ---- a real sshd with the key as HostKey, a real libssh2 client ------- */

typedef struct sshd_s {
  pid_t pid;
  char addr[32];
} sshd_t;

/* Starts sshd -D -e and waits for its "Server listening" line. */
static int sshd_start(sshd_t *s, const char *config) {
  int pipefd[2];
  FILE *err;
  char line[512];
  int ready = 0;

  if (pipe(pipefd) != 0)
    return -1;
  s->pid = fork();
  if (s->pid == 0) {
    dup2(pipefd[1], 2);
    close(pipefd[0]);
    close(pipefd[1]);
    execl("/usr/sbin/sshd", "/usr/sbin/sshd", "-D", "-e", "-f", config,
          (char *)NULL);
    _exit(127);
  }
  close(pipefd[1]);
  err = fdopen(pipefd[0], "r");
  while (fgets(line, sizeof(line), err) != NULL) {
    if (strstr(line, "Server listening on") != NULL) {
      ready = 1;
      break;
    }
    fprintf(stderr, "sshd: %s", line);
  }
  /* Keep reading sshd's stderr would need a thread; it only logs per
   * connection, far below the pipe's capacity for this test. */
  fclose(err);
  return ready ? 0 : -1;
}

static void sshd_stop(sshd_t *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
  }
}

static int tcp_connect(const char *addr, int port) {
  struct sockaddr_in sa;
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, addr, &sa.sin_addr);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    fd = -1;
  }
  return fd;
}

/* Runs line on the channel and collects stdout; returns the exit status. */
static int ssh_run(LIBSSH2_SESSION *sess, const char *line, fly_buf_t *out) {
  LIBSSH2_CHANNEL *ch = libssh2_channel_open_session(sess);
  char chunk[4096];
  ssize_t n;
  int status;

  if (ch == NULL)
    return -1;
  if (libssh2_channel_exec(ch, line) != 0) {
    libssh2_channel_free(ch);
    return -1;
  }
  while ((n = libssh2_channel_read(ch, chunk, sizeof(chunk))) > 0)
    fly_buf_append(out, chunk, (size_t)n);
  libssh2_channel_close(ch);
  libssh2_channel_wait_closed(ch);
  status = libssh2_channel_get_exit_status(ch);
  libssh2_channel_free(ch);
  return status;
}

TEST(sshd_hostkey_and_libssh2_userauth) {
  static const char *words[] = {"", "it's", "$(id)", "`x`", "*", "a\nb",
                                "-n", "\\", "h\xc3\xa9"};
  const char *argv[2 + sizeof(words) / sizeof(words[0])];
  fly_keypair_t host, user;
  fly_err_t e = {0};
  fly_buf_t cfg = {0}, out = {0};
  char *hostpath = path_in("host"), *authpath = path_in("auth"),
       *cfgpath = path_in("sshd_config"), *line = NULL, *fp = NULL;
  sshd_t sshd = {0};
  LIBSSH2_SESSION *sess = NULL;
  struct passwd *pw = getpwuid(getuid());
  const char *hk;
  size_t hklen = 0, i;
  int type = 0, fd = -1;
  fly_cmd_t cmd = {0};
  pid_t me = getpid();

  REQUIRE(pw != NULL);
  REQUIRE(fly_keypair_generate(&host, "host", &e) == 0);
  REQUIRE(fly_keypair_generate(&user, "user", &e) == 0);
  CHECK(write_file(hostpath, host.private_openssh, 0600) == 0);
  CHECK(write_file(authpath, user.public_openssh, 0644) == 0);
  /* A loopback address of our own, so parallel runs do not collide. */
  snprintf(sshd.addr, sizeof(sshd.addr), "127.91.%d.%d",
           (int)(me / 250) % 250 + 1, (int)(me % 250) + 1);
  fly_buf_printf(&cfg,
                 "ListenAddress %s:2222\nHostKey %s\n"
                 "AuthorizedKeysFile %s\nStrictModes no\nUsePAM no\n"
                 "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                 "PermitRootLogin prohibit-password\nPidFile none\n"
                 "LogLevel INFO\n",
                 sshd.addr, hostpath, authpath);
  CHECK(write_file(cfgpath, cfg.base, 0644) == 0);
  /* sshd insists on its privilege separation directory. */
  mkdir("/run/sshd", 0755);
  if (sshd_start(&sshd, cfgpath) != 0) {
    CHECK(!"sshd did not start");
    goto cleanup;
  }

  fd = tcp_connect(sshd.addr, 2222);
  CHECK(fd >= 0);
  sess = libssh2_session_init();
  if (fd < 0 || sess == NULL || libssh2_session_handshake(sess, fd) != 0) {
    CHECK(!"ssh handshake failed");
    goto cleanup;
  }
  hk = libssh2_session_hostkey(sess, &hklen, &type);
  CHECK(hk != NULL && type == LIBSSH2_HOSTKEY_TYPE_ED25519);
  if (hk != NULL) {
    fp = fly_fingerprint_sha256((const unsigned char *)hk, hklen);
    CHECK_STR(fp, host.fingerprint);
  }
  CHECK(libssh2_userauth_publickey_frommemory(
            sess, pw->pw_name, strlen(pw->pw_name), NULL, 0,
            user.private_openssh, strlen(user.private_openssh), NULL) == 0);
  if (!libssh2_userauth_authenticated(sess))
    goto cleanup;

  /* The quoting through sshd and the login shell, end to end. */
  argv[0] = "printf";
  argv[1] = "%s\\0";
  for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
    argv[i + 2] = words[i];
  cmd.argv = argv;
  cmd.argc = 2 + sizeof(words) / sizeof(words[0]);
  cmd.cwd = "/";
  line = fly_cmd_build(&cmd, &e);
  CHECK(line != NULL);
  if (line == NULL)
    goto cleanup;
  CHECK(ssh_run(sess, line, &out) == 0);
  {
    size_t off = 0;
    for (i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
      size_t len = strlen(words[i]);
      CHECK(off + len < out.len && memcmp(out.base + off, words[i], len) == 0
            && out.base[off + len] == '\0');
      off += len + 1;
    }
    CHECK(off == out.len);
  }

cleanup:
  if (sess != NULL) {
    libssh2_session_disconnect(sess, "done");
    libssh2_session_free(sess);
  }
  if (fd >= 0)
    close(fd);
  sshd_stop(&sshd);
  unlink(hostpath);
  unlink(authpath);
  unlink(cfgpath);
  free(hostpath);
  free(authpath);
  free(cfgpath);
  free(line);
  free(fp);
  fly_buf_free(&cfg);
  fly_buf_free(&out);
  fly_keypair_free(&host);
  fly_keypair_free(&user);
}

TEST(fingerprint_of_known_blob) {
  /* The blob of an all-zero ed25519 public key, checked with ssh-keygen. */
  unsigned char blob[51] = {0, 0, 0, 11, 's', 's', 'h', '-', 'e', 'd', '2',
                            '5', '5', '1', '9', 0, 0, 0, 32};
  char *pub = path_in("zero.pub");
  char *b64 = malloc(4 * 18 + 1), *fp, *want;
  fly_buf_t line = {0};

  EVP_EncodeBlock((unsigned char *)b64, blob, sizeof(blob));
  fly_buf_printf(&line, "ssh-ed25519 %s\n", b64);
  CHECK(write_file(pub, line.base, 0644) == 0);
  want = keygen_fingerprint(pub);
  fp = fly_fingerprint_sha256(blob, sizeof(blob));
  CHECK(want != NULL);
  CHECK_STR(fp, want);
  unlink(pub);
  free(pub);
  free(b64);
  free(fp);
  free(want);
  fly_buf_free(&line);
}

int main(void) {
  int rc;

  if (mkdtemp(tmpdir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  libssh2_init(0);
  RUN(generate_shapes);
  RUN(generated_key_matches_ssh_keygen);
  RUN(reads_ssh_keygen_keys);
  RUN(rejects_garbage_and_truncations);
  RUN(rejects_other_key_kinds);
  RUN(fingerprint_of_known_blob);
  RUN(sshd_hostkey_and_libssh2_userauth);
  libssh2_exit();
  rmdir(tmpdir);
  rc = h_done();
  return rc;
}
