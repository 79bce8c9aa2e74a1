'use strict'
// Test helpers: a fly-local server per test file (test/helpers/local.js's
// startLocal) and providers/clients pointed at it.  Everything is on loopback.
const crypto = require('crypto')
const http = require('http')
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
// A sandbox's { app, machine }, from its id (appName:machineId).
function sandboxIds (sb) {
  const [app, machine] = sb.sandboxId.split(':')
  return { app, machine }
}

function call (srv, op, params, extra) {
  return native.api({ apiHostname: srv.url, apiToken: srv.token, op, params: params || {}, retry: FAST_RETRY, ...extra })
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

// A loopback HTTP proxy in front of fly-local, for tests that must see a
// request as it happens (onRequest(method, path, body)) or change what the
// API answers (onReply(method, path, json) returns the JSON to send, or
// undefined to leave it).  Returns what provider() takes: { url, token }.
async function startProxy (t, srv, { onRequest, onReply } = {}) {
  const up = new URL(srv.url)
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      if (onRequest) onRequest(req.method, req.url, body.toString('utf8'))
      const fwd = http.request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
        const parts = []
        ur.on('data', (c) => parts.push(c))
        ur.on('end', () => {
          let out = Buffer.concat(parts)
          const headers = { ...ur.headers }
          if (onReply && /json/.test(headers['content-type'] || '') && out.length > 0) {
            const json = onReply(req.method, req.url, JSON.parse(out))
            if (json !== undefined) out = Buffer.from(JSON.stringify(json))
          }
          delete headers['transfer-encoding']
          headers['content-length'] = out.length
          res.writeHead(ur.statusCode, headers)
          res.end(out)
        })
      })
      fwd.on('error', () => res.destroy())
      fwd.end(body)
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => {
    server.closeAllConnections()
    server.close(resolve)
  }))
  return { url: `http://127.0.0.1:${server.address().port}`, token: srv.token }
}

// Closes the SSH sessions a sandbox's provider holds, so that its next call
// connects anew (as another process would).
function closeSessions (sandbox) {
  const m = typeof sandbox.getInstance === 'function' ? sandbox.getInstance() : sandbox
  return require('../../lib/transport/ssh').close(m._ctx, m.sandboxId)
}

// Waits (the API's long poll in 20 s slices, at most `totalMs`) until the
// machine suspends itself (the idle watch).
async function waitSuspended (srv, { app, machine }, totalMs = 90000) {
  const deadline = Date.now() + totalMs
  for (;;) {
    try {
      await call(srv, 'machine.wait', { app, machine }, { query: q({ state: 'suspended', timeout: 20 }), waitTotalMs: 20000, timeoutMs: 40000 })
      return
    } catch (err) {
      if (err.code !== 'FLY_TIMEOUT' || Date.now() > deadline) throw err
    }
  }
}

module.exports = { startLocal, startProxy, closeSessions, provider, call, sandboxIds, q, appName, rejects, waitSuspended, FAST_RETRY, native }
