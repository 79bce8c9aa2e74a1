'use strict'
// Per-sandbox URLs.  Fly's proxy balances a public port across every
// machine of the app that declares it, so each port a sandbox exposes
// (create's `ports`) gets a public port of its own in the app: a service
// { internal_port: p, ports: [{ port: publicPort }] } with autostart, so
// that a request to it starts a paused (suspended or stopped) sandbox.
// The public port is picked at random among those no machine of the app
// declares, and picked again when the API refuses it as taken (fly-local
// does; on Fly the listing is what keeps them apart).  The mapping is kept
// in the machine's metadata (PORTS, "internal:public,...").
const crypto = require('crypto')
const api = require('./api')
const { apiBaseUrl } = require('./target')
const { flyError, invalidArg } = require('./errors')
const { PORTS } = require('./metadata')

const RANGE = [20000, 59999]
const ATTEMPTS = 5

function checkPorts (ports) {
  if (ports === undefined || ports === null) return []
  if (!Array.isArray(ports)) throw invalidArg('create: ports must be an array of port numbers')
  const seen = new Set()
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidArg('create: ports must be integers from 1 to 65535')
    seen.add(p)
  }
  if (seen.size > 32) throw invalidArg('create: at most 32 ports can be exposed')
  return [...seen]
}

// Every public port a machine of the app declares.
async function taken (config, app) {
  const used = new Set()
  let list = []
  try {
    list = (await api.call(config, 'machine.list', { app })).body || []
  } catch (err) {
    if (err.code !== 'FLY_NOT_FOUND') throw err
  }
  for (const m of list) {
    for (const s of (m.config && m.config.services) || []) {
      for (const p of s.ports || []) {
        if (Number.isInteger(p.port)) used.add(p.port)
        if (Number.isInteger(p.start_port) && Number.isInteger(p.end_port)) {
          for (let x = p.start_port; x <= p.end_port && x - p.start_port < 65536; x++) used.add(x)
        }
      }
    }
  }
  return used
}

function pick (used, n) {
  const out = []
  while (out.length < n) {
    const p = crypto.randomInt(RANGE[0], RANGE[1] + 1)
    if (!used.has(p) && !out.includes(p)) out.push(p)
  }
  return out
}

// Fills body.config.services and the PORTS metadata for `ports`.
async function assign (config, app, body, ports, extraUsed, base) {
  const used = await taken(config, app)
  for (const p of extraUsed || []) used.add(p)
  const pub = pick(used, ports.length)
  body.config.services = [...ports.map((p, i) => ({
    protocol: 'tcp',
    internal_port: p,
    ports: [{ port: pub[i], handlers: ['tls', 'http'] }],
    autostart: true,
    autostop: 'off'
  })), ...base]
  body.config.metadata[PORTS] = ports.map((p, i) => `${p}:${pub[i]}`).join(',')
  return pub
}

// A refusal that names a public port as taken.
function portConflict (err) {
  return (err.code === 'FLY_CONFLICT' || err.code === 'FLY_UNPROCESSABLE' || err.code === 'FLY_BAD_REQUEST') &&
    /port/i.test(String(err.flyError || err.message))
}

// create(body) with public ports for `ports`, picked again on a conflict.
async function createWith (config, app, body, ports, create) {
  if (ports.length === 0) return create()
  const tried = []
  // the services the request has already (the edge's, lib/edge.js)
  const base = body.config.services || []
  for (let i = 1; ; i++) {
    tried.push(...await assign(config, app, body, ports, tried, base))
    try {
      return await create()
    } catch (err) {
      if (!portConflict(err) || i >= ATTEMPTS) throw err
    }
  }
}

// internal -> public, from the machine's metadata.
function mapping (sb) {
  const out = new Map()
  for (const part of String(sb.metadata[PORTS] || '').split(',')) {
    const m = /^(\d+):(\d+)$/.exec(part)
    if (m) out.set(Number(m[1]), Number(m[2]))
  }
  return out
}

function isExposed (sb, port) {
  return mapping(sb).has(port)
}

function exposed (sb) {
  return Object.fromEntries(mapping(sb))
}

// fly-local (an API on this host) serves each public port on loopback, as
// Fly's proxy serves it at <app>.fly.dev.
function isLoopbackApi (config) {
  const host = new URL(apiBaseUrl(config)).hostname
  return host === 'localhost' || /^127\./.test(host) || host === '[::1]'
}

function url (sb, port, protocol) {
  const pub = mapping(sb).get(port)
  if (pub === undefined) {
    const list = [...mapping(sb).keys()]
    throw flyError('FLY_PORT_NOT_EXPOSED', `port ${port} of sandbox ${sb.sandboxId} is not exposed; ` +
      (list.length ? `exposed: ${list.join(', ')}` : 'it exposes none') + ' (create it with ports: [...])',
    { port, exposed: list })
  }
  if (isLoopbackApi(sb._ctx.config)) {
    const scheme = protocol === 'https' ? 'http' : protocol === 'wss' ? 'ws' : (protocol || 'http')
    return `${scheme}://127.0.0.1:${pub}`
  }
  return `${protocol || 'https'}://${sb.appName}.fly.dev:${pub}`
}

module.exports = { checkPorts, createWith, exposed, isExposed, url, RANGE }
