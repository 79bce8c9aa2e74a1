/* js.c: reading arguments from JS and building results, JS thread only.
 *
 * Every reader copies what it reads into C memory, because requests cross
 * to the I/O thread and JS values must never be touched there.  Each returns
 * 0, or -1 with an ERR_INVALID_ARG exception pending. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_DEFAULT */
#endif
#include "fly.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int get_prop(napi_env env, napi_value obj, const char *name,
                    napi_value *out, napi_valuetype *type) {
  bool has = false;

  if (napi_has_named_property(env, obj, name, &has) != napi_ok) {
    fly_napi_throw_last(env);
    return -1;
  }
  if (!has) {
    *type = napi_undefined;
    return 0;
  }
  if (napi_get_named_property(env, obj, name, out) != napi_ok ||
      napi_typeof(env, *out, type) != napi_ok) {
    fly_napi_throw_last(env);
    return -1;
  }
  return 0;
}

/* A JS string's UTF-8 bytes in a malloc'd, NUL-terminated copy (*len
 * excludes the NUL).  On failure an exception is pending. */
static int copy_utf8(napi_env env, napi_value v, char **out, size_t *len) {
  char *s;

  if (napi_get_value_string_utf8(env, v, NULL, 0, len) != napi_ok) {
    fly_napi_throw_last(env);
    return -1;
  }
  s = malloc(*len + 1);
  if (s == NULL) {
    fly_throw_nomem(env);
    return -1;
  }
  if (napi_get_value_string_utf8(env, v, s, *len + 1, len) != napi_ok) {
    free(s);
    fly_napi_throw_last(env);
    return -1;
  }
  *out = s;
  return 0;
}

int fly_js_str(napi_env env, napi_value v, const char *what, char **out) {
  size_t len = 0;
  char *s;
  napi_valuetype t;

  *out = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
    fly_throw_invalid(env, "%s must be a string", what);
    return -1;
  }
  if (copy_utf8(env, v, &s, &len) != 0)
    return -1;
  if (strlen(s) != len) {
    free(s);
    fly_throw_invalid(env, "%s must not contain NUL bytes", what);
    return -1;
  }
  *out = s;
  return 0;
}

int fly_js_prop_str(napi_env env, napi_value obj, const char *name,
                    int required, char **out) {
  napi_value v;
  napi_valuetype t;

  *out = NULL;
  if (get_prop(env, obj, name, &v, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null) {
    if (!required)
      return 0;
    fly_throw_invalid(env, "%s is required", name);
    return -1;
  }
  return fly_js_str(env, v, name, out);
}

int fly_js_prop_u64(napi_env env, napi_value obj, const char *name,
                    uint64_t dflt, uint64_t *out) {
  napi_value v;
  napi_valuetype t;
  double d;

  *out = dflt;
  if (get_prop(env, obj, name, &v, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null)
    return 0;
  if (t != napi_number || napi_get_value_double(env, v, &d) != napi_ok ||
      !(d >= 0) || d > 9007199254740991.0) {
    fly_throw_invalid(env, "%s must be a non-negative number", name);
    return -1;
  }
  *out = (uint64_t)d;
  return 0;
}

int fly_js_prop_bool(napi_env env, napi_value obj, const char *name,
                     int dflt, int *out) {
  napi_value v;
  napi_valuetype t;
  bool b;

  *out = dflt;
  if (get_prop(env, obj, name, &v, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null)
    return 0;
  if (t != napi_boolean || napi_get_value_bool(env, v, &b) != napi_ok) {
    fly_throw_invalid(env, "%s must be a boolean", name);
    return -1;
  }
  *out = b;
  return 0;
}

int fly_js_prop_bytes(napi_env env, napi_value obj, const char *name,
                      fly_buf_t *out) {
  napi_value v;
  napi_valuetype t;
  bool is_typed = false;
  char *s;

  if (get_prop(env, obj, name, &v, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null)
    return 0;
  if (t == napi_string) {
    size_t len = 0;
    if (copy_utf8(env, v, &s, &len) != 0)
      return -1;
    if (out->len > 0) {
      /* Appended to what out holds (a command's script prefix). */
      int rc = fly_buf_append(out, s, len);
      free(s);
      if (rc != 0)
        fly_throw_nomem(env);
      return rc;
    }
    fly_buf_free(out);
    out->base = s;
    out->len = len;
    out->cap = len + 1;
    return 0;
  }
  if (napi_is_typedarray(env, v, &is_typed) == napi_ok && is_typed) {
    napi_typedarray_type tt;
    size_t n, off;
    void *data;
    napi_value ab;
    size_t esz;
    if (napi_get_typedarray_info(env, v, &tt, &n, &data, &ab, &off) !=
        napi_ok) {
      fly_napi_throw_last(env);
      return -1;
    }
    switch (tt) {
      case napi_int8_array: case napi_uint8_array:
      case napi_uint8_clamped_array: esz = 1; break;
      case napi_int16_array: case napi_uint16_array: esz = 2; break;
      case napi_int32_array: case napi_uint32_array:
      case napi_float32_array: esz = 4; break;
      default: esz = 8; break;
    }
    if (fly_buf_append(out, data, n * esz) != 0) {
      fly_throw_nomem(env);
      return -1;
    }
    return 0;
  }
  fly_throw_invalid(env, "%s must be a string or a Buffer", name);
  return -1;
}

int fly_js_prop_pin(napi_env env, napi_value obj, const char *name,
                    napi_ref *ref, fly_buf_t *copy, const char **data,
                    size_t *len) {
  napi_value v;
  napi_valuetype t;
  bool is_buf = false;
  void *p = NULL;

  *ref = NULL;
  *data = NULL;
  *len = 0;
  if (get_prop(env, obj, name, &v, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null)
    return 0;
  if (napi_is_buffer(env, v, &is_buf) == napi_ok && is_buf) {
    FLY_NAPI_CALL(env, napi_get_buffer_info(env, v, &p, len), -1);
    FLY_NAPI_CALL(env, napi_create_reference(env, v, 1, ref), -1);
    *data = p;
    return 0;
  }
  /* Anything else (a string) is converted, so it has to be copied. */
  if (fly_js_prop_bytes(env, obj, name, copy) != 0)
    return -1;
  *data = copy->base;
  *len = copy->len;
  return 0;
}

int fly_js_prop_func(napi_env env, napi_value obj, const char *name,
                     napi_ref *out) {
  napi_value v;
  napi_valuetype t;

  *out = NULL;
  if (get_prop(env, obj, name, &v, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null)
    return 0;
  if (t != napi_function) {
    fly_throw_invalid(env, "%s must be a function", name);
    return -1;
  }
  FLY_NAPI_CALL(env, napi_create_reference(env, v, 1, out), -1);
  return 0;
}

int fly_js_prop_strv(napi_env env, napi_value obj, const char *name,
                     char ***out, size_t *count) {
  napi_value arr, el;
  napi_valuetype t;
  bool is_arr = false;
  uint32_t n = 0, i;
  char **v;

  *out = NULL;
  *count = 0;
  if (get_prop(env, obj, name, &arr, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null)
    return 0;
  if (napi_is_array(env, arr, &is_arr) != napi_ok || !is_arr) {
    fly_throw_invalid(env, "%s must be an array of strings", name);
    return -1;
  }
  FLY_NAPI_CALL(env, napi_get_array_length(env, arr, &n), -1);
  v = calloc(n + 1, sizeof(*v));
  if (v == NULL) {
    fly_throw_nomem(env);
    return -1;
  }
  for (i = 0; i < n; i++) {
    if (napi_get_element(env, arr, i, &el) != napi_ok) {
      fly_napi_throw_last(env);
      fly_strv_free(v, i);
      return -1;
    }
    if (fly_js_str(env, el, "each element", &v[i]) != 0) {
      fly_strv_free(v, i);
      return -1;
    }
  }
  *out = v;
  *count = n;
  return 0;
}

void fly_strv_free(char **v, size_t n) {
  size_t i;
  if (v == NULL)
    return;
  for (i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

int fly_js_prop_strmap(napi_env env, napi_value obj, const char *name,
                       char ***names, char ***values, size_t *count) {
  napi_value v, keys, k, val;
  napi_valuetype t;
  uint32_t n = 0, i;
  char **ns = NULL, **vs = NULL;

  *names = NULL;
  *values = NULL;
  *count = 0;
  if (get_prop(env, obj, name, &v, &t) != 0)
    return -1;
  if (t == napi_undefined || t == napi_null)
    return 0;
  if (t != napi_object) {
    fly_throw_invalid(env, "%s must be an object of strings", name);
    return -1;
  }
  FLY_NAPI_CALL(env, napi_get_property_names(env, v, &keys), -1);
  FLY_NAPI_CALL(env, napi_get_array_length(env, keys, &n), -1);
  ns = calloc(n + 1, sizeof(*ns));
  vs = calloc(n + 1, sizeof(*vs));
  if (ns == NULL || vs == NULL) {
    free(ns);
    free(vs);
    fly_throw_nomem(env);
    return -1;
  }
  for (i = 0; i < n; i++) {
    if (napi_get_element(env, keys, i, &k) != napi_ok ||
        napi_get_property(env, v, k, &val) != napi_ok) {
      fly_napi_throw_last(env);
      goto fail;
    }
    if (fly_js_str(env, k, name, &ns[i]) != 0 ||
        fly_js_str(env, val, "each value", &vs[i]) != 0)
      goto fail;
  }
  *names = ns;
  *values = vs;
  *count = n;
  return 0;

fail:
  fly_strv_free(ns, n);
  fly_strv_free(vs, n);
  return -1;
}

int fly_js_arg_obj(napi_env env, napi_callback_info info, size_t idx,
                   napi_value *out) {
  napi_value argv[4];
  size_t argc = 4;
  napi_valuetype t = napi_undefined;

  FLY_NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL),
                -1);
  if (idx < argc)
    FLY_NAPI_CALL(env, napi_typeof(env, argv[idx], &t), -1);
  if (t != napi_object) {
    fly_throw_invalid(env, "argument %u must be an object", (unsigned)idx);
    return -1;
  }
  *out = argv[idx];
  return 0;
}

/* The setters leave an exception pending when they fail, so that settle()
 * rejects the promise instead of resolving with a half-built object. */
static void set_value(napi_env env, napi_value obj, const char *name,
                      napi_status created, const napi_value *v) {
  if (created != napi_ok ||
      napi_set_named_property(env, obj, name, *v) != napi_ok)
    fly_napi_throw_last(env);
}

void fly_js_set_str(napi_env env, napi_value obj, const char *name,
                    const char *s) {
  napi_value v = NULL;
  napi_status st = s == NULL ? napi_get_null(env, &v)
                             : napi_create_string_utf8(env, s,
                                                       NAPI_AUTO_LENGTH, &v);
  set_value(env, obj, name, st, &v);
}

void fly_js_set_int(napi_env env, napi_value obj, const char *name,
                    int64_t n) {
  napi_value v = NULL;
  napi_status st = napi_create_int64(env, n, &v);
  set_value(env, obj, name, st, &v);
}

void fly_js_set_double(napi_env env, napi_value obj, const char *name,
                       double d) {
  napi_value v = NULL;
  napi_status st = napi_create_double(env, d, &v);
  set_value(env, obj, name, st, &v);
}

void fly_js_set_bool(napi_env env, napi_value obj, const char *name, int b) {
  napi_value v = NULL;
  napi_status st = napi_get_boolean(env, b != 0, &v);
  set_value(env, obj, name, st, &v);
}

void fly_js_set_value(napi_env env, napi_value obj, const char *name,
                      napi_value v) {
  set_value(env, obj, name, v != NULL ? napi_ok : napi_generic_failure, &v);
}

/* free_external records the last pointer it freed: when
 * napi_create_external_buffer fails, Node may already have called it (a
 * length over buffer.constants.MAX_LENGTH) or not (a runtime without
 * external buffers), and only this tells the two apart.  JS thread only.
 * The hint is the size of a mapped block (fly_buf_take), or NULL for
 * malloc'ed bytes. */
static void *ext_freed;

static void free_external(napi_env env, void *data, void *hint) {
  (void)env;
  ext_freed = data;
  fly_buf_release(data, (size_t)(uintptr_t)hint, hint != NULL);
}

napi_value fly_js_buffer_from(napi_env env, fly_buf_t *buf) {
  napi_value v;
  size_t len = 0, cap = 0;
  int mapped = 0;
  char *data;
  void *p;

  /* An empty buffer is copied: external buffers of length 0 are awkward. */
  if (buf->len == 0) {
    fly_buf_free(buf);
    FLY_NAPI_CALL(env, napi_create_buffer(env, 0, &p, &v), NULL);
    return v;
  }
  /* Handed over as it is, mapped or not: no copy on the JS thread. */
  data = fly_buf_take(buf, &len, &cap, &mapped);
  ext_freed = NULL;
  if (napi_create_external_buffer(env, len, data, free_external,
                                  mapped ? (void *)(uintptr_t)cap : NULL,
                                  &v) == napi_ok)
    return v;
  if (ext_freed == data) {
    /* Node freed it (and threw ERR_BUFFER_TOO_LARGE): never touch it. */
    fly_napi_throw_last(env);
    return NULL;
  }
  /* Some runtimes forbid external buffers; fall back to a copy. */
  if (napi_create_buffer_copy(env, len, data, &p, &v) != napi_ok) {
    fly_buf_release(data, cap, mapped);
    fly_napi_throw_last(env);
    return NULL;
  }
  fly_buf_release(data, cap, mapped);
  return v;
}

/* V8 collects garbage Buffers once external memory has grown 64 MiB since
 * its last collection.  A stream of ranged reads makes garbage at the
 * network's speed, and RSS rose ~70 MiB before the first collection
 * (a 1 GiB stream round trip); counting such a result once more makes V8
 * collect at about half that.  The count goes when the Buffer does. */
static void unweigh(napi_env env, void *data, void *hint) {
  (void)data;
  int64_t dummy;
  if (env != NULL)
    (void)napi_adjust_external_memory(env, -(int64_t)(uintptr_t)hint,
                                      &dummy); /* in a finalizer: nowhere to
                                                  report */
}

napi_value fly_js_weigh(napi_env env, napi_value v, size_t len) {
  int64_t dummy;
  if (v == NULL || len == 0)
    return v;
  if (napi_add_finalizer(env, v, NULL, unweigh, (void *)(uintptr_t)len,
                         NULL) != napi_ok)
    return v; /* not counted twice, which is only an earlier GC lost */
  (void)napi_adjust_external_memory(env, (int64_t)len, &dummy); /* same */
  return v;
}

/* node_api_create_external_string_latin1/_utf16 (Node-API 10;
 * experimental in Node 20) are looked up at run time, so one build loads on
 * every Node the package supports and uses them where they exist. */
typedef napi_status (*ext_string_fn)(napi_env env, void *str, size_t length,
                                     void (*fin)(napi_env, void *, void *),
                                     void *hint, napi_value *result,
                                     bool *copied);
static ext_string_fn ext_latin1, ext_utf16;
static pthread_once_t ext_once = PTHREAD_ONCE_INIT;

static void ext_lookup(void) {
  void *f = dlsym(RTLD_DEFAULT, "node_api_create_external_string_latin1");
  memcpy(&ext_latin1, &f, sizeof(f));
  f = dlsym(RTLD_DEFAULT, "node_api_create_external_string_utf16");
  memcpy(&ext_utf16, &f, sizeof(f));
}

/* Below this a copy is as cheap as the bookkeeping of an external string;
 * above FLY_TEXT_MAX characters V8 cannot make a string (its
 * String::kMaxLength is 2^29 - 24). */
#define FLY_TEXT_EXTERNAL_MIN 4096
#define FLY_TEXT_MAX (((size_t)1 << 29) - 24)

static void buf_forget(fly_buf_t *buf) {
  buf->base = NULL;
  buf->len = buf->cap = 0;
  buf->mapped = 0;
}

napi_value fly_js_text_from(napi_env env, fly_buf_t *buf, int form) {
  napi_value v;
  bool copied = false;
  char *base = buf->base;
  size_t chars = form == FLY_TEXT_UTF16 ? buf->len / 2 : buf->len;
  ext_string_fn make;
  napi_status st;

  if (form == FLY_TEXT_BYTES || chars > FLY_TEXT_MAX)
    return fly_js_buffer_from(env, buf); /* JS decodes, or reports */
  make = NULL;
  if (chars >= FLY_TEXT_EXTERNAL_MIN) {
    pthread_once(&ext_once, ext_lookup);
    make = form == FLY_TEXT_UTF16 ? ext_utf16 : ext_latin1;
  }
  if (make == NULL) {
    /* Small, or no external strings (older Node): one copy, still
     * nothing decoded here. */
    st = chars == 0 ? napi_create_string_latin1(env, "", 0, &v)
         : form == FLY_TEXT_UTF16
             ? napi_create_string_utf16(env, (const char16_t *)(void *)base,
                                        chars, &v)
             : napi_create_string_latin1(env, base, chars, &v);
    FLY_NAPI_CALL(env, st, NULL);
    fly_buf_free(buf);
    return v;
  }
  ext_freed = NULL;
  /* The string owns the bytes from here (or Node copied them and has
   * already called free_external). */
  if (make(env, base, chars, free_external,
           buf->mapped ? (void *)(uintptr_t)buf->cap : NULL, &v,
           &copied) == napi_ok) {
    buf_forget(buf);
    return v;
  }
  if (ext_freed == base) {
    buf_forget(buf);
    fly_napi_throw_last(env);
    return NULL;
  }
  /* Not made and not freed: the bytes are still ours. */
  fly_napi_throw_last(env);
  fly_buf_free(buf);
  return NULL;
}
