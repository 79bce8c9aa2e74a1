'use strict'
// Which Machines API a provider talks to, and with what token: the
// configured one (apiToken / FLY_API_TOKEN, apiHostname / FLY_API_HOSTNAME),
// or, with neither a token nor a hostname, the fly-local running on this
// host (lib/local/registry.js), which is said once per process.  Resolved
// when a method first needs it, as ComputeSDK providers report a missing
// token.
const { flyError } = require('./errors')
const registry = require('./local/registry')

let announced = null

function noToken (config, why) {
  return flyError('FLY_UNAUTHORIZED', 'No Fly.io API token. Either set FLY_API_TOKEN (or apiToken) to use ' +
    'Fly.io, or run fly-local on this machine (as root: `npx fly-local`; a program with no token then ' +
    `finds it${why ? `; ${why}` : ''}), or pass apiHostname and apiToken of a fly-local you started ` +
    "with require('@computesdk/fly/local').start().")
}

// { apiHostname, apiToken } for config (the names native.api takes);
// throws FLY_UNAUTHORIZED naming the ways forward when there is neither.
function apiTarget (config) {
  if (config.apiToken) return { apiHostname: config.apiHostname, apiToken: config.apiToken }
  if (!config.localDefault) throw noToken(config, `${config.apiHostname} was given without a token`)
  const r = registry.read()
  if (!r.instance) {
    const why = {
      missing: null,
      stale: `the one registered in ${r.file} is no longer running`,
      unreadable: `one is registered in ${r.file}, which only root can read`,
      garbled: `${r.file} is not a fly-local registration`
    }[r.error]
    throw noToken(config, why)
  }
  const { url, token } = r.instance
  if (announced !== url) {
    announced = url
    console.error(`@computesdk/fly: no FLY_API_TOKEN; using fly-local at ${url} (registered in ${r.file})`)
  }
  return { apiHostname: url.replace(/\/+$/, ''), apiToken: token }
}

// The API's URL, for what it tells (fly-local or Fly), never throwing: a
// URL can be formed without a token.
function apiBaseUrl (config) {
  if (config.apiToken || !config.localDefault) return config.apiHostname
  const r = registry.read()
  return r.instance ? r.instance.url.replace(/\/+$/, '') : config.apiHostname
}

module.exports = { apiTarget, apiBaseUrl }
