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

module.exports = { flyError, invalidArg }
