/* error.c: the one error type of the native core and its JS form.
 *
 * The I/O thread fills a fly_err_t; the JS thread turns it into an Error
 * whose `code` is stable.  Messages are built by the modules from fixed text
 * and server replies only: a token, key or password is never formatted into
 * one, so nothing here has to scrub. */
#include "fly.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fly_err_set(fly_err_t *e, const char *code, const char *fmt, ...) {
  va_list ap;
  e->code = code;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof(e->message), fmt, ap);
  va_end(ap);
}

void fly_err_set_path(fly_err_t *e, const char *path) {
  free(e->path);
  e->path = path ? strdup(path) : NULL;
}

void fly_err_clear(fly_err_t *e) {
  free(e->fly_error);
  free(e->request_id);
  free(e->path);
  memset(e, 0, sizeof(*e));
}

#ifndef FLY_NO_NAPI

/* Statuses below are ignored on purpose: an error without one of its extra
 * fields is still the right error to reject with. */
static void set_str(napi_env env, napi_value obj, const char *name,
                    const char *s) {
  napi_value v;
  if (s != NULL && napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v) ==
      napi_ok)
    (void)napi_set_named_property(env, obj, name, v);
}

napi_value fly_err_to_js(napi_env env, const fly_err_t *e) {
  napi_value code, msg, err, v;
  const char *c = e->code ? e->code : "FLY_INTERNAL";

  if (napi_create_string_utf8(env, c, NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, e->message, NAPI_AUTO_LENGTH, &msg) !=
          napi_ok ||
      napi_create_error(env, code, msg, &err) != napi_ok)
    return NULL;
  if (e->status != 0 && napi_create_int32(env, e->status, &v) == napi_ok)
    (void)napi_set_named_property(env, err, "status", v);
  set_str(env, err, "flyError", e->fly_error);
  set_str(env, err, "requestId", e->request_id);
  set_str(env, err, "path", e->path);
  return err;
}

void fly_throw_invalid(napi_env env, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  bool pending = false;

  if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
    return;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  /* Nothing else to do if even the throw fails. */
  (void)napi_throw_type_error(env, "ERR_INVALID_ARG", buf);
}

void fly_throw_nomem(napi_env env) {
  bool pending = false;

  if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
    return;
  /* Nothing else to do if even the throw fails. */
  (void)napi_throw_error(env, "ERR_NO_MEMORY", "out of memory");
}

void fly_napi_throw_last(napi_env env) {
  const napi_extended_error_info *info = NULL;
  bool pending = false;

  if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
    return;
  if (napi_get_last_error_info(env, &info) != napi_ok)
    info = NULL;
  /* Nothing else to do if even the throw fails. */
  (void)napi_throw_error(env, "FLY_INTERNAL",
                   info && info->error_message ? info->error_message
                                               : "Node-API call failed");
}

#endif /* FLY_NO_NAPI */
