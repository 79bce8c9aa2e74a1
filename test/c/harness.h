/* harness.h: a tiny assert harness for the C tests.
 *
 * Each test_*.c is one program: TEST(name) functions run with RUN(name);
 * CHECK() records a failure and carries on so one run shows every broken
 * assertion.  h_done() prints "N passed, M failed" (the Makefile adds these
 * lines up) and gives the exit status. */
#ifndef FLY_TEST_HARNESS_H
#define FLY_TEST_HARNESS_H

#include <stdio.h>
#include <string.h>

static int h_checks_failed;
static int h_passed;
static int h_failed;

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,     \
              #cond);                                                       \
      h_checks_failed++;                                                    \
    }                                                                       \
  } while (0)

/* A check that the rest of the test depends on. */
#define REQUIRE(cond)                                                       \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__,   \
              #cond);                                                       \
      h_checks_failed++;                                                    \
      return;                                                               \
    }                                                                       \
  } while (0)

#define CHECK_STR(a, b)                                                     \
  do {                                                                      \
    const char *h_a = (a), *h_b = (b);                                      \
    if (h_a == NULL || h_b == NULL || strcmp(h_a, h_b) != 0) {              \
      fprintf(stderr, "%s:%d: CHECK_STR failed: %s\n  got:  %s\n  want: %s\n",\
              __FILE__, __LINE__, #a, h_a ? h_a : "(null)",                 \
              h_b ? h_b : "(null)");                                        \
      h_checks_failed++;                                                    \
    }                                                                       \
  } while (0)

#define TEST(name) static void name(void)
#define RUN(name) h_run(#name, name)

static void h_run(const char *name, void (*fn)(void)) {
  int before = h_checks_failed;

  fn();
  if (h_checks_failed == before) {
    h_passed++;
    printf("ok - %s\n", name);
  } else {
    h_failed++;
    printf("not ok - %s\n", name);
  }
  fflush(stdout);
}

static int h_done(void) {
  printf("%d passed, %d failed\n", h_passed, h_failed);
  return h_failed == 0 ? 0 : 1;
}

#endif /* FLY_TEST_HARNESS_H */
