'use strict'
// Test helpers: a fly-local server per test file and providers/clients
// pointed at it.  Everything is on loopback.
const crypto = require('crypto')
const local = require('../../lib/local')
const native = require('../../lib/native')
const { fly } = require('../..')

async function startLocal (t, opts) {
  const srv = await local.start({ quiet: true, ...opts })
  if (t) t.after(() => srv.stop())
  return srv
}

function appName (prefix) {
  return `${prefix || 't'}-${crypto.randomBytes(4).toString('hex')}`
}

// Retries tuned for tests: fast backoff, short total bound.
const FAST_RETRY = { baseMs: 20, maxMs: 200, totalMs: 4000 }

function provider (srv, extra) {
  return fly({
    apiToken: srv.token,
    apiHostname: srv.url,
    appName: appName(),
    retry: FAST_RETRY,
    ...extra
  })
}

// A raw Machines API call through the native client.
function call (srv, op, params, extra) {
  return native.api({ baseUrl: srv.url, token: srv.token, op, params: params || {}, retry: FAST_RETRY, ...extra })
}

function q (obj) {
  return Object.entries(obj).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => [k, String(x)]))
}

async function rejects (promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected a rejection')
}

module.exports = { startLocal, provider, call, q, appName, rejects, FAST_RETRY, native }
