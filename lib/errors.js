'use strict'
// Errors made on the JS side carry the same stable `code` convention as the
// ones the native core makes.

function flyError (code, message, extra) {
  const err = new Error(message)
  err.code = code
  if (extra) Object.assign(err, extra)
  return err
}

function invalidArg (message) {
  const err = new TypeError(message)
  err.code = 'ERR_INVALID_ARG'
  return err
}

// An aborted operation, as Node's own AbortError: name 'AbortError', code
// 'ABORT_ERR', the signal's reason as `cause`.
function abortError (signal, what) {
  const err = new Error(`${what} was aborted`, { cause: signal.reason })
  err.name = 'AbortError'
  err.code = 'ABORT_ERR'
  return err
}

module.exports = { flyError, invalidArg, abortError }
