'use strict'
// Loads the compiled addon.  The raw binding is internal: lib/index.js is the
// public surface.
const path = require('path')

const candidates = [
  path.join(__dirname, '..', 'build', 'Release', 'fly.node'),
  path.join(__dirname, '..', 'build', 'Debug', 'fly.node')
]

let binding = null
let firstError = null
for (const file of candidates) {
  try {
    binding = require(file)
    break
  } catch (err) {
    if (err.code !== 'MODULE_NOT_FOUND' && firstError === null) firstError = err
  }
}

if (binding === null) {
  const err = new Error('@computesdk/fly: the native addon is not built (' +
    (firstError ? firstError.message : 'build/Release/fly.node is missing') +
    '). Run `npm install` (or `npm run build`) in the package; it needs the Debian packages ' +
    'libcurl4-openssl-dev libssh2-1-dev libcjson-dev libssl-dev pkg-config and a C compiler.')
  err.code = 'FLY_NATIVE_MISSING'
  throw err
}

// Join the native I/O thread before the process's atexit handlers run (see
// fly_napi_shutdown in src/loop.c).
process.once('exit', () => binding.shutdown())

module.exports = binding
