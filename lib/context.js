'use strict'
// What one provider instance holds, made once by fly(): `config`, the
// frozen settings; `state`, everything that changes while it runs; and
// `transport`, the way commands and files reach a machine.  defineProvider
// keeps this object as its `config` and hands it to every method.
const { resolveConfig } = require('./config')
const ssh = require('./transport/ssh')
const execApi = require('./transport/exec-api')

function makeContext (options) {
  const config = resolveConfig(options)
  const state = {
    // The app-exists check, made once (reset when it fails).
    appReady: null,
    // sandboxIds destroyed through this provider: later calls fail fast.
    destroyed: new Set(),
    // The client key, configured or generated on first use.
    clientKey: null,
    // sandboxId -> the native SSH session keys this provider opened to it.
    sessions: new Map()
  }
  const ctx = {}
  // Not enumerable: logging a provider or a sandbox (which show this object)
  // must not print the token, keys or password.
  Object.defineProperties(ctx, {
    config: { value: config },
    state: { value: state },
    transport: { value: config.transport === 'exec' ? execApi : ssh }
  })
  return Object.freeze(ctx)
}

module.exports = { makeContext }
