/* quote.c: POSIX shell quoting and the remote command line.
 *
 * sshd hands the command string to the user's login shell as `$SHELL -c
 * <string>`, so everything we send is one shell script.  Every byte that
 * came from the caller either goes inside single quotes (where the shell
 * interprets nothing) or is the caller's own `command`, which is meant to be
 * shell syntax.  A NUL byte cannot travel through a C string or a shell, so
 * it is rejected rather than silently truncating an argument. */
#include "fly.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

int fly_quote_append(fly_buf_t *out, const char *s, size_t len) {
  size_t i, start;

  if (len > 0 && memchr(s, '\0', len) != NULL)
    return -1;
  if (fly_buf_append(out, "'", 1) != 0)
    return -1;
  /* Copy runs between quotes at once; a quote closes the word, adds an
   * escaped quote and reopens it: ' -> '\'' */
  start = 0;
  for (i = 0; i < len; i++) {
    if (s[i] != '\'')
      continue;
    if (fly_buf_append(out, s + start, i - start) != 0 ||
        fly_buf_append(out, "'\\''", 4) != 0)
      return -1;
    start = i + 1;
  }
  if (fly_buf_append(out, s + start, len - start) != 0 ||
      fly_buf_append(out, "'", 1) != 0)
    return -1;
  return 0;
}

int fly_env_name_valid(const char *name) {
  const char *p;

  if (name == NULL)
    return 0;
  /* Plain ASCII tests: isalpha() would follow the locale. */
  if (!((name[0] >= 'A' && name[0] <= 'Z') ||
        (name[0] >= 'a' && name[0] <= 'z') || name[0] == '_'))
    return 0;
  for (p = name + 1; *p != '\0'; p++) {
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
          (*p >= '0' && *p <= '9') || *p == '_'))
      return 0;
  }
  return 1;
}

static void quote_invalid(fly_err_t *e, const char *msg) {
  if (e != NULL)
    fly_err_set(e, "ERR_INVALID_ARG", "%s", msg);
}

static void quote_nomem(fly_err_t *e) {
  if (e != NULL)
    fly_err_set(e, "ERR_NO_MEMORY", "out of memory building the command");
}

/* The script that runs the command itself: exports, cd, command. */
static int quote_inner(fly_buf_t *b, const fly_cmd_t *cmd) {
  size_t i;
  int first = 1;

  for (i = 0; i < cmd->envc; i++) {
    const char *v = cmd->env_values[i];
    if (fly_buf_printf(b, "%sexport %s=", first ? "" : "\n",
                       cmd->env_names[i]) != 0 ||
        fly_quote_append(b, v, strlen(v)) != 0)
      return -1;
    first = 0;
  }
  if (cmd->cwd != NULL) {
    if (fly_buf_printf(b, "%scd -- ", first ? "" : "\n") != 0 ||
        fly_quote_append(b, cmd->cwd, strlen(cmd->cwd)) != 0 ||
        fly_buf_append(b, " || exit 1", 10) != 0)
      return -1;
    first = 0;
  }
  if (!first && fly_buf_append(b, "\n", 1) != 0)
    return -1;
  if (cmd->command != NULL)
    return fly_buf_append(b, cmd->command, strlen(cmd->command));
  for (i = 0; i < cmd->argc; i++) {
    if ((i > 0 && fly_buf_append(b, " ", 1) != 0) ||
        fly_quote_append(b, cmd->argv[i], strlen(cmd->argv[i])) != 0)
      return -1;
  }
  return 0;
}

/* `"${SHELL:-/bin/sh}" -c '<script>'`: run script in a fresh shell of the
 * same kind as the login shell, so the caller's command sees what it would
 * have seen without the wrapper. */
static int quote_shell_c(fly_buf_t *b, const fly_buf_t *script) {
  if (fly_buf_append(b, "\"${SHELL:-/bin/sh}\" -c ", 23) != 0)
    return -1;
  return fly_quote_append(b, script->base ? script->base : "", script->len);
}

/* Checks cmd; 0, or -1 with e set. */
static int cmd_check(const fly_cmd_t *cmd, fly_err_t *e) {
  size_t i;

  if ((cmd->command == NULL) == (cmd->argc == 0 || cmd->argv == NULL) ||
      (cmd->command != NULL && cmd->argc > 0)) {
    quote_invalid(e, "exactly one of command and argv is required");
    return -1;
  }
  for (i = 0; i < cmd->envc; i++) {
    if (!fly_env_name_valid(cmd->env_names[i])) {
      quote_invalid(e, "invalid environment variable name");
      return -1;
    }
    if (cmd->env_values[i] == NULL) {
      quote_invalid(e, "environment variable without a value");
      return -1;
    }
  }
  for (i = 0; i < cmd->argc; i++) {
    if (cmd->argv[i] == NULL) {
      quote_invalid(e, "argv entry is not a string");
      return -1;
    }
  }
  return 0;
}

/* inner wrapped for cmd's timeout and background; caller frees. */
static char *cmd_wrap(const fly_cmd_t *cmd, fly_buf_t *inner, fly_err_t *e) {
  fly_buf_t timed = {0}, out = {0};
  fly_buf_t *script = inner;
  char *res = NULL;

  if (cmd->timeout_ms > 0) {
    /* GNU timeout puts itself in a new process group, signals the whole
     * group on expiry (KILL 2 s after TERM) and exits 124; exec makes its
     * status the channel's. */
    if (fly_buf_printf(&timed, "exec timeout -k 2 %" PRIu64 ".%03us ",
                       cmd->timeout_ms / 1000,
                       (unsigned)(cmd->timeout_ms % 1000)) != 0 ||
        quote_shell_c(&timed, inner) != 0)
      goto nomem;
    script = &timed;
  }

  if (cmd->background) {
    /* setsid -f forks into a new session with no tie to the channel, and
     * the redirections drop the channel's pipes, so sshd sees EOF and exit
     * 0 at once while the program lives on. */
    if (fly_buf_append(&out, "setsid -f ", 10) != 0 ||
        quote_shell_c(&out, script) != 0 ||
        fly_buf_append(&out, " </dev/null >/dev/null 2>&1", 27) != 0)
      goto nomem;
  } else if (fly_buf_append(&out, script->base ? script->base : "",
                            script->len) != 0) {
    goto nomem;
  }
  res = fly_buf_steal(&out, NULL);
  if (res == NULL)
    goto nomem;
  goto cleanup;

nomem:
  quote_nomem(e);
cleanup:
  fly_buf_free(&timed);
  fly_buf_free(&out);
  return res;
}

char *fly_cmd_build(const fly_cmd_t *cmd, fly_err_t *e) {
  fly_buf_t inner = {0};
  char *res;

  if (cmd_check(cmd, e) != 0)
    return NULL;
  if (quote_inner(&inner, cmd) != 0) {
    quote_nomem(e);
    return NULL;
  }
  res = cmd_wrap(cmd, &inner, e);
  fly_buf_free(&inner);
  return res;
}

/* The script file's first line: it removes itself (the shell that sources
 * it keeps reading from the open file) and the variable that named it. */
#define FLY_SCRIPT_HEAD "rm -f \"$FLY_SCRIPT\"; unset FLY_SCRIPT\n"

char *fly_cmd_build_stdin(const fly_cmd_t *cmd, size_t max_line,
                          fly_buf_t *prefix, fly_err_t *e) {
  fly_buf_t inner = {0}, line = {0};
  char *res = NULL, *wrapped = NULL;

  if (cmd_check(cmd, e) != 0)
    return NULL;
  if (quote_inner(&inner, cmd) != 0)
    goto nomem;
  res = cmd_wrap(cmd, &inner, e);
  if (res == NULL || strlen(res) <= max_line)
    goto cleanup;
  free(res);
  res = NULL;
  /* Too long for one exec request: the script goes first on stdin, into a
   * private temporary file that the wrapped command sources.  head -c
   * reads exactly its bytes, so the command's own stdin follows intact. */
  fly_buf_free(prefix);
  if (fly_buf_append(prefix, FLY_SCRIPT_HEAD, strlen(FLY_SCRIPT_HEAD)) != 0 ||
      fly_buf_append(prefix, inner.base, inner.len) != 0)
    goto nomem;
  fly_buf_free(&inner);
  if (fly_buf_append(&inner, ". \"$FLY_SCRIPT\"", 15) != 0 ||
      (wrapped = cmd_wrap(cmd, &inner, e)) == NULL)
    goto fail;
  if (fly_buf_printf(&line,
                     "FLY_SCRIPT=$(mktemp) && export FLY_SCRIPT && "
                     "head -c %zu >\"$FLY_SCRIPT\" && %s",
                     prefix->len, wrapped) != 0)
    goto nomem;
  res = fly_buf_steal(&line, NULL);
  goto cleanup;

nomem:
  quote_nomem(e);
fail:
  fly_buf_free(prefix);
cleanup:
  free(wrapped);
  fly_buf_free(&inner);
  fly_buf_free(&line);
  return res;
}

#ifndef FLY_NO_NAPI

/* The longest line sent in one exec request: libssh2 1.10 refuses packets
 * over 40000 bytes (LIBSSH2_PACKET_MAXPAYLOAD), headers included. */
#define FLY_CMD_INLINE_MAX 32768

/* Linux's MAX_ARG_STRLEN: the longest single argv string, NUL included. */
#define FLY_MAX_ARG_STRLEN (32 * 4096)

char *fly_js_cmd_build(napi_env env, napi_value opts, uint64_t *timeout_ms,
                       fly_buf_t *prefix) {
  return fly_js_cmd_build_ex(env, opts, timeout_ms, prefix, NULL);
}

char *fly_js_cmd_build_ex(napi_env env, napi_value opts, uint64_t *timeout_ms,
                          fly_buf_t *prefix, fly_buf_t *start) {
  fly_cmd_t cmd;
  fly_err_t err;
  char *command = NULL, *cwd = NULL, *line = NULL;
  char **argv = NULL, **names = NULL, **values = NULL;
  size_t nargv = 0, nenv = 0;
  int background = 0;

  memset(&cmd, 0, sizeof(cmd));
  memset(&err, 0, sizeof(err));
  if (fly_js_prop_str(env, opts, "command", 0, &command) != 0 ||
      fly_js_prop_strv(env, opts, "argv", &argv, &nargv) != 0 ||
      fly_js_prop_str(env, opts, "cwd", 0, &cwd) != 0 ||
      fly_js_prop_strmap(env, opts, "env", &names, &values, &nenv) != 0 ||
      fly_js_prop_u64(env, opts, "timeoutMs", 0, &cmd.timeout_ms) != 0 ||
      fly_js_prop_bool(env, opts, "background", 0, &background) != 0)
    goto cleanup;
  if (argv != NULL && nargv == 0) {
    fly_throw_invalid(env, "argv must not be empty");
    goto cleanup;
  }
  if ((command == NULL) == (argv == NULL)) {
    fly_throw_invalid(env, "exactly one of command and argv is required");
    goto cleanup;
  }
  /* Each argument and each NAME=value reaches execve(2) as one string,
   * which Linux limits to MAX_ARG_STRLEN: refuse a longer one here, the
   * same on every transport, rather than let the program fail to start
   * with E2BIG (126) from a wrapper the user never wrote. */
  {
    size_t i;
    for (i = 0; i < nargv; i++)
      if (strlen(argv[i]) >= FLY_MAX_ARG_STRLEN) {
        fly_throw_invalid(env, "argument %zu is %zu bytes; Linux limits one "
                          "argument to %d: pass large data on stdin or in a "
                          "file", i, strlen(argv[i]), FLY_MAX_ARG_STRLEN - 1);
        goto cleanup;
      }
    for (i = 0; i < nenv; i++)
      if (strlen(names[i]) + 1 + strlen(values[i]) >= FLY_MAX_ARG_STRLEN) {
        fly_throw_invalid(env, "env %s is %zu bytes; Linux limits one "
                          "NAME=value to %d: pass large data on stdin or in "
                          "a file", names[i], strlen(values[i]),
                          FLY_MAX_ARG_STRLEN - 1);
        goto cleanup;
      }
  }
  cmd.command = command;
  cmd.argv = (const char *const *)argv;
  cmd.argc = nargv;
  cmd.cwd = cwd;
  cmd.env_names = (const char *const *)names;
  cmd.env_values = (const char *const *)values;
  cmd.envc = nenv;
  cmd.background = background;
  line = prefix != NULL
             ? fly_cmd_build_stdin(&cmd, FLY_CMD_INLINE_MAX, prefix, &err)
             : fly_cmd_build(&cmd, &err);
  if (line == NULL) {
    if (err.code != NULL && strcmp(err.code, "ERR_NO_MEMORY") == 0)
      fly_throw_nomem(env);
    else
      fly_throw_invalid(env, "%s",
                        err.message[0] ? err.message : "bad command");
  } else if (prefix == NULL && strlen(line) >= FLY_MAX_ARG_STRLEN) {
    /* The remote shell gets the line as one argument, and Linux refuses a
     * single argument this long (E2BIG): say so here rather than let the
     * command fail with an obscure exit code. */
    fly_throw_invalid(env, "the command line is %zu bytes; one argument is "
                      "limited to %d: pass large data on stdin or in a file",
                      strlen(line), FLY_MAX_ARG_STRLEN - 1);
    free(line);
    line = NULL;
  } else if (start != NULL && fly_frame_start_payload(start, &cmd) != 0) {
    fly_throw_nomem(env);
    free(line);
    line = NULL;
  } else if (timeout_ms != NULL) {
    *timeout_ms = cmd.timeout_ms;
  }

cleanup:
  fly_err_clear(&err);
  free(command);
  free(cwd);
  fly_strv_free(argv, nargv);
  fly_strv_free(names, nenv);
  fly_strv_free(values, nenv);
  return line;
}

/* buildCommand({command?, argv?, cwd?, env?, timeoutMs?, background?}) */
napi_value fly_napi_build_command(napi_env env, napi_callback_info info) {
  napi_value opts, result = NULL;
  char *line;

  if (fly_js_arg_obj(env, info, 0, &opts) != 0)
    return NULL;
  line = fly_js_cmd_build(env, opts, NULL, NULL);
  if (line == NULL)
    return NULL;
  if (napi_create_string_utf8(env, line, NAPI_AUTO_LENGTH, &result) !=
      napi_ok) {
    fly_napi_throw_last(env);
    result = NULL;
  }
  free(line);
  return result;
}

#endif /* FLY_NO_NAPI */
