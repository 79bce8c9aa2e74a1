/* addon.c: module init and the exported verbs.
 *
 * The binding is a handful of verbs taking one options object and returning
 * a promise (or a value, for the synchronous helpers).  lib/ wraps them; the
 * raw binding is not public API. */
#include "fly.h"

static int export_fn(napi_env env, napi_value exports, const char *name,
                     napi_callback cb) {
  napi_value fn;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) !=
          napi_ok ||
      napi_set_named_property(env, exports, name, fn) != napi_ok) {
    fly_napi_throw_last(env);
    return -1;
  }
  return 0;
}

static napi_value init(napi_env env, napi_value exports) {
  static const struct {
    const char *name;
    napi_callback cb;
  } verbs[] = {
    {"api", fly_napi_api},
    {"sshExec", fly_napi_ssh_exec},
    {"sftp", fly_napi_sftp},
    {"sftpBatch", fly_napi_sftp_batch},
    {"sshOpen", fly_napi_ssh_open},
    {"sshClose", fly_napi_ssh_close},
    {"sshStats", fly_napi_ssh_stats},
    {"keygen", fly_napi_keygen},
    {"keyInfo", fly_napi_key_info},
    {"buildCommand", fly_napi_build_command},
    {"shutdown", fly_napi_shutdown},
  };
  size_t i;

  if (fly_loop_instance_init(env) != 0)
    return NULL;
  for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
    if (export_fn(env, exports, verbs[i].name, verbs[i].cb) != 0)
      return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
