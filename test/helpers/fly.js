'use strict'
// Test helpers: a fly-local server per test file (test/helpers/local.js's
// startLocal) and providers/clients pointed at it.  Everything is on loopback.
const crypto = require('crypto')
const native = require('../../lib/native')
const { fly } = require('../..')
const { startLocal } = require('./local')

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

// The error a promise rejects with (fails the test when it resolves).
async function rejects (promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected a rejection')
}

module.exports = { startLocal, provider, call, q, appName, rejects, FAST_RETRY, native }
