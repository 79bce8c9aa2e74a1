'use strict'
// The provider's SSH client key.
const native = require('./native')
const { invalidArg } = require('./errors')

// The client key: the configured one, or one generated per provider, which
// create injects into every sandbox as the sandbox user's key.
function clientKey (ctx) {
  const { config, state } = ctx
  if (state.clientKey === null) {
    if (config.sshPrivateKey) {
      let info
      try {
        info = native.keyInfo(config.sshPrivateKey)
      } catch {
        throw invalidArg('fly(): sshPrivateKey must be an unencrypted OpenSSH ed25519 private key')
      }
      state.clientKey = { privateKey: config.sshPrivateKey, publicKey: info.publicKey, fingerprint: info.fingerprint }
    } else {
      state.clientKey = native.keygen()
    }
  }
  return state.clientKey
}

module.exports = { clientKey }
