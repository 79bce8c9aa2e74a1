/* test_quote.c: shell quoting and fly_cmd_build, checked by running the
 * built command lines with the real /bin/sh. */
#include "fly.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *nasty[] = {
  "", " ", "a b", "'", "\"", "''", "'''", "a'b'c", "$(id)", "`id`",
  "${HOME}", "$HOME", "*", "?", "[a]", "~", "!", "\n", "a\nb\n", "\\",
  "\\'", "\t", "\r", "-n", "-e", "--", "-", "h\xc3\xa9llo \xe2\x9c\x93 "
  "\xf0\x9f\x9a\x80", "\xff\xfe\x80", ";", "&&", "|", ">x", "#c", "%s",
  "\\0", "a\\", "'\\''"
};
#define NNASTY (sizeof(nasty) / sizeof(nasty[0]))

/* Runs script with sh -c (popen) and collects stdout; returns the wait
 * status. */
static int run_sh(const char *script, fly_buf_t *out) {
  char chunk[4096];
  size_t n;
  FILE *f;

  f = popen(script, "r");
  if (f == NULL)
    return -1;
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    fly_buf_append(out, chunk, n);
  return pclose(f);
}

/* As run_sh, but the script is read from a file: one argv string to
 * execve is limited to 128 KiB, so a 200 KB script cannot go in -c. */
static int run_sh_file(const char *script, fly_buf_t *out) {
  char path[] = "/tmp/fly-quote-XXXXXX";
  char cmd[64];
  int fd, st;
  size_t len = strlen(script);

  fd = mkstemp(path);
  if (fd < 0)
    return -1;
  if (write(fd, script, len) != (ssize_t)len) {
    close(fd);
    unlink(path);
    return -1;
  }
  close(fd);
  snprintf(cmd, sizeof(cmd), "sh %s", path);
  st = run_sh(cmd, out);
  unlink(path);
  return st;
}

/* Checks that out holds exactly the words, each followed by a NUL. */
static int same_words(const fly_buf_t *out, const char *const *words,
                      size_t n) {
  size_t i, off = 0;

  for (i = 0; i < n; i++) {
    size_t len = strlen(words[i]);
    if (off + len + 1 > out->len || memcmp(out->base + off, words[i], len) ||
        out->base[off + len] != '\0') {
      fprintf(stderr, "word %zu differs\n", i);
      return 0;
    }
    off += len + 1;
  }
  return off == out->len;
}

TEST(quote_append_forms) {
  fly_buf_t b = {0};

  CHECK(fly_quote_append(&b, "", 0) == 0);
  CHECK_STR(b.base, "''");
  b.len = 0;
  CHECK(fly_quote_append(&b, "it's", 4) == 0);
  CHECK_STR(b.base, "'it'\\''s'");
  b.len = 0;
  CHECK(fly_quote_append(&b, "a\0b", 3) == -1);
  fly_buf_free(&b);
}

TEST(argv_round_trip_nasty_strings) {
  const char *argv[NNASTY + 2];
  fly_cmd_t cmd = {0};
  fly_err_t e = {0};
  fly_buf_t out = {0};
  char *line;
  size_t i;

  argv[0] = "printf";
  argv[1] = "%s\\0";
  for (i = 0; i < NNASTY; i++)
    argv[i + 2] = nasty[i];
  cmd.argv = argv;
  cmd.argc = NNASTY + 2;
  line = fly_cmd_build(&cmd, &e);
  REQUIRE(line != NULL);
  CHECK(run_sh(line, &out) == 0);
  CHECK(same_words(&out, nasty, NNASTY));
  free(line);
  fly_buf_free(&out);
  fly_err_clear(&e);
}

TEST(argv_round_trip_each_alone) {
  size_t i;

  /* One word per run too, so a quoting slip cannot hide behind a
   * neighbour that happens to re-balance it. */
  for (i = 0; i < NNASTY; i++) {
    const char *argv[3] = {"printf", "%s\\0", nasty[i]};
    fly_cmd_t cmd = {0};
    fly_err_t e = {0};
    fly_buf_t out = {0};
    char *line;

    cmd.argv = argv;
    cmd.argc = 3;
    line = fly_cmd_build(&cmd, &e);
    CHECK(line != NULL);
    if (line != NULL) {
      CHECK(run_sh(line, &out) == 0);
      CHECK(same_words(&out, &nasty[i], 1));
    }
    free(line);
    fly_buf_free(&out);
  }
}

TEST(argv_round_trip_200k_random) {
  size_t n = 200 * 1024, i;
  char *big = malloc(n + 1);
  const char *argv[4];
  const char *words[2];
  fly_cmd_t cmd = {0};
  fly_err_t e = {0};
  fly_buf_t out = {0};
  char *line;
  unsigned seed = 12345;

  REQUIRE(big != NULL);
  /* Deterministic bytes 1..255, with quotes made common. */
  for (i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    big[i] = (char)(1 + (seed >> 16) % 255);
    if ((seed >> 8) % 17 == 0)
      big[i] = '\'';
  }
  big[n] = '\0';
  argv[0] = "printf";
  argv[1] = "%s\\0";
  argv[2] = big;
  argv[3] = "-tail";
  words[0] = big;
  words[1] = "-tail";
  cmd.argv = argv;
  cmd.argc = 4;
  line = fly_cmd_build(&cmd, &e);
  CHECK(line != NULL);
  if (line != NULL) {
    CHECK(run_sh_file(line, &out) == 0);
    CHECK(same_words(&out, words, 2));
  }
  free(line);
  free(big);
  fly_buf_free(&out);
}

TEST(env_values_round_trip) {
  size_t i;

  for (i = 0; i < NNASTY; i++) {
    const char *names[2] = {"V", "_w2"};
    const char *values[2] = {nasty[i], "x"};
    const char *want[2] = {nasty[i], "x"};
    fly_cmd_t cmd = {0};
    fly_err_t e = {0};
    fly_buf_t out = {0};
    char *line;

    cmd.command = "printf '%s\\0' \"$V\" \"$_w2\"";
    cmd.env_names = names;
    cmd.env_values = values;
    cmd.envc = 2;
    line = fly_cmd_build(&cmd, &e);
    CHECK(line != NULL);
    if (line != NULL) {
      CHECK(run_sh(line, &out) == 0);
      CHECK(same_words(&out, want, 2));
    }
    free(line);
    fly_buf_free(&out);
  }
}

TEST(env_name_table) {
  static const char *good[] = {"A", "_", "a1", "_X_9", "PATH", "z",
                               "ABC_def_123"};
  static const char *bad[] = {"", "1A", "A-B", "A B", "A=B", "\xc3\xa9",
                              "$A", "A\n", "-", "A.B", "9"};
  size_t i;

  for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    CHECK(fly_env_name_valid(good[i]) == 1);
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    CHECK(fly_env_name_valid(bad[i]) == 0);
  CHECK(fly_env_name_valid(NULL) == 0);
}

TEST(build_rejects_bad_input) {
  const char *argv[1] = {"ls"};
  const char *names[1] = {"BAD-NAME"};
  const char *values[1] = {"v"};
  const char *nullargv[2] = {"ls", NULL};
  fly_cmd_t cmd;
  fly_err_t e = {0};

  memset(&cmd, 0, sizeof(cmd));
  CHECK(fly_cmd_build(&cmd, &e) == NULL); /* neither */
  CHECK_STR(e.code, "ERR_INVALID_ARG");
  fly_err_clear(&e);

  cmd.command = "ls";
  cmd.argv = argv;
  cmd.argc = 1;
  CHECK(fly_cmd_build(&cmd, &e) == NULL); /* both */
  CHECK_STR(e.code, "ERR_INVALID_ARG");
  fly_err_clear(&e);

  cmd.argv = NULL;
  cmd.argc = 0;
  cmd.env_names = names;
  cmd.env_values = values;
  cmd.envc = 1;
  CHECK(fly_cmd_build(&cmd, &e) == NULL); /* bad env name */
  CHECK_STR(e.code, "ERR_INVALID_ARG");
  fly_err_clear(&e);

  memset(&cmd, 0, sizeof(cmd));
  cmd.argv = nullargv;
  cmd.argc = 2;
  CHECK(fly_cmd_build(&cmd, &e) == NULL);
  CHECK_STR(e.code, "ERR_INVALID_ARG");
  fly_err_clear(&e);

  /* e may be NULL. */
  memset(&cmd, 0, sizeof(cmd));
  CHECK(fly_cmd_build(&cmd, NULL) == NULL);
}

TEST(build_exact_forms) {
  const char *argv[2] = {"ls", "-l"};
  const char *names[1] = {"A"};
  const char *values[1] = {"x'y"};
  fly_cmd_t cmd = {0};
  fly_err_t e = {0};
  char *line;

  cmd.argv = argv;
  cmd.argc = 2;
  line = fly_cmd_build(&cmd, &e);
  CHECK_STR(line, "'ls' '-l'");
  free(line);

  cmd.env_names = names;
  cmd.env_values = values;
  cmd.envc = 1;
  cmd.cwd = "/tmp";
  line = fly_cmd_build(&cmd, &e);
  CHECK_STR(line, "export A='x'\\''y'\ncd -- '/tmp' || exit 1\n'ls' '-l'");
  free(line);

  memset(&cmd, 0, sizeof(cmd));
  cmd.command = "echo hi";
  cmd.timeout_ms = 1500;
  line = fly_cmd_build(&cmd, &e);
  CHECK_STR(line,
            "exec timeout -k 2 1.500s \"${SHELL:-/bin/sh}\" -c 'echo hi'");
  free(line);

  cmd.timeout_ms = 7;
  cmd.background = 1;
  line = fly_cmd_build(&cmd, &e);
  CHECK_STR(line, "setsid -f \"${SHELL:-/bin/sh}\" -c 'exec timeout -k 2 "
                  "0.007s \"${SHELL:-/bin/sh}\" -c '\\''echo hi'\\''' "
                  "</dev/null >/dev/null 2>&1");
  free(line);

  cmd.timeout_ms = 0;
  line = fly_cmd_build(&cmd, &e);
  CHECK_STR(line, "setsid -f \"${SHELL:-/bin/sh}\" -c 'echo hi' "
                  "</dev/null >/dev/null 2>&1");
  free(line);
  CHECK(e.code == NULL);
}

TEST(cwd_with_quotes_and_spaces) {
  char dir[] = "/tmp/fly-cwd-XXXXXX";
  fly_buf_t sub = {0}, out = {0}, want = {0};
  const char *names[1] = {"FOO"};
  const char *values[1] = {"it's $HOME"};
  const char *argv[3] = {"printf", "%s|", NULL};
  fly_cmd_t cmd = {0};
  fly_err_t e = {0};
  char *line;

  REQUIRE(mkdtemp(dir) != NULL);
  fly_buf_printf(&sub, "%s/a 'b' \"c\" $(x) `y` -d", dir);
  REQUIRE(mkdir(sub.base, 0700) == 0);

  /* Shell form: $PWD and the exported variable as the command sees them. */
  cmd.command = "printf '%s|%s' \"$PWD\" \"$FOO\"";
  cmd.cwd = sub.base;
  cmd.env_names = names;
  cmd.env_values = values;
  cmd.envc = 1;
  line = fly_cmd_build(&cmd, &e);
  CHECK(line != NULL);
  if (line != NULL) {
    CHECK(run_sh(line, &out) == 0);
    fly_buf_printf(&want, "%s|it's $HOME", sub.base);
    CHECK_STR(out.base, want.base);
  }
  free(line);

  /* argv form: a relative file created in the cwd. */
  out.len = 0;
  argv[0] = "touch";
  argv[1] = "made here";
  cmd.command = NULL;
  cmd.argv = argv;
  cmd.argc = 2;
  line = fly_cmd_build(&cmd, &e);
  CHECK(line != NULL);
  if (line != NULL) {
    fly_buf_t f = {0};
    CHECK(run_sh(line, &out) == 0);
    fly_buf_printf(&f, "%s/made here", sub.base);
    CHECK(access(f.base, F_OK) == 0);
    unlink(f.base);
    fly_buf_free(&f);
  }
  free(line);

  /* A missing cwd stops before the command runs. */
  cmd.cwd = "/nonexistent/fly dir";
  line = fly_cmd_build(&cmd, &e);
  CHECK(line != NULL);
  if (line != NULL) {
    int st = run_sh(line, &out);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  }
  free(line);

  rmdir(sub.base);
  rmdir(dir);
  fly_buf_free(&sub);
  fly_buf_free(&out);
  fly_buf_free(&want);
}

static double now_s(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

TEST(timeout_kills_and_exits_124) {
  fly_cmd_t cmd = {0};
  fly_err_t e = {0};
  fly_buf_t out = {0};
  double t0;
  char *line;
  int st;

  /* A child in the background as well: the whole group must go, or the
   * pipe would stay open and pclose would wait for it. */
  cmd.command = "sleep 30 & echo started; sleep 30";
  cmd.timeout_ms = 300;
  line = fly_cmd_build(&cmd, &e);
  REQUIRE(line != NULL);
  t0 = now_s();
  st = run_sh(line, &out);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 124);
  CHECK(now_s() - t0 < 10);
  CHECK_STR(out.base, "started\n");
  free(line);
  fly_buf_free(&out);

  /* A command that ends in time keeps its own status. */
  cmd.command = "exit 3";
  line = fly_cmd_build(&cmd, &e);
  REQUIRE(line != NULL);
  st = run_sh(line, &out);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3);
  free(line);
  fly_buf_free(&out);
}

TEST(background_returns_at_once) {
  char dir[] = "/tmp/fly-bg-XXXXXX";
  fly_buf_t fifo = {0}, cmdline = {0}, out = {0};
  fly_cmd_t cmd = {0};
  fly_err_t e = {0};
  char got[32] = {0};
  char *line;
  int st, fd;
  ssize_t n;

  REQUIRE(mkdtemp(dir) != NULL);
  fly_buf_printf(&fifo, "%s/fifo", dir);
  REQUIRE(mkfifo(fifo.base, 0600) == 0);
  /* The detached writer blocks opening the FIFO until we read it, so sh
   * can only have returned first if the command really detached. */
  fly_buf_append(&cmdline, "echo started > ", 15);
  fly_quote_append(&cmdline, fifo.base, fifo.len);
  cmd.command = cmdline.base;
  cmd.background = 1;
  line = fly_cmd_build(&cmd, &e);
  REQUIRE(line != NULL);
  alarm(20); /* a hang here is a failure, not a stuck test run */
  st = run_sh(line, &out);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  CHECK(out.len == 0);
  fd = open(fifo.base, O_RDONLY);
  CHECK(fd >= 0);
  if (fd >= 0) {
    n = read(fd, got, sizeof(got) - 1);
    CHECK(n == 8);
    CHECK_STR(got, "started\n");
    close(fd);
  }
  alarm(0);
  free(line);
  unlink(fifo.base);
  rmdir(dir);
  fly_buf_free(&fifo);
  fly_buf_free(&cmdline);
  fly_buf_free(&out);
}

/* A line too long for one exec request: the script goes on stdin, the
 * line stays short, and the command's own stdin follows intact. */
TEST(long_script_travels_on_stdin) {
  fly_cmd_t cmd;
  fly_err_t e;
  fly_buf_t prefix = {0}, script = {0}, out = {0}, run = {0};
  const char *names[] = {"FOO"}, *values[] = {"b a r"};
  char *line;
  size_t i;

  memset(&e, 0, sizeof(e));
  /* Short: unchanged, no prefix. */
  memset(&cmd, 0, sizeof(cmd));
  cmd.command = "echo short";
  line = fly_cmd_build_stdin(&cmd, 1000, &prefix, &e);
  CHECK_STR(line, "echo short");
  CHECK(prefix.len == 0);
  free(line);

  fly_buf_append(&script, "v=", 2);
  for (i = 0; i < 300000; i++)
    fly_buf_append(&script, "x", 1);
  fly_buf_append(&script, "; echo \"${#v} $FOO\"; cat", 25);
  cmd.command = script.base;
  cmd.env_names = names;
  cmd.env_values = values;
  cmd.envc = 1;
  cmd.timeout_ms = 5000;
  line = fly_cmd_build_stdin(&cmd, 1000, &prefix, &e);
  CHECK(line != NULL && strlen(line) < 1000);
  CHECK(prefix.len > 300000);
  /* Run it as sshd would: the line under sh -c, stdin = prefix + own. */
  {
    char path[] = "/tmp/fly-quote-in-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, prefix.base, prefix.len) == (ssize_t)prefix.len);
    CHECK(write(fd, "own stdin", 9) == 9);
    close(fd);
    fly_buf_printf(&run, "sh -c ");
    fly_quote_append(&run, line, strlen(line));
    fly_buf_printf(&run, " < %s", path);
    CHECK(run_sh(run.base, &out) == 0);
    CHECK_STR(out.base, "300000 b a r\nown stdin");
    unlink(path);
  }
  free(line);
  fly_buf_free(&prefix);
  fly_buf_free(&script);
  fly_buf_free(&out);
  fly_buf_free(&run);
}

int main(void) {
  /* Hermetic: the wrapper runs "${SHELL:-/bin/sh}". */
  setenv("SHELL", "/bin/sh", 1);
  RUN(quote_append_forms);
  RUN(argv_round_trip_nasty_strings);
  RUN(argv_round_trip_each_alone);
  RUN(argv_round_trip_200k_random);
  RUN(env_values_round_trip);
  RUN(env_name_table);
  RUN(build_rejects_bad_input);
  RUN(build_exact_forms);
  RUN(cwd_with_quotes_and_spaces);
  RUN(timeout_kills_and_exits_124);
  RUN(background_returns_at_once);
  RUN(long_script_travels_on_stdin);
  return h_done();
}
