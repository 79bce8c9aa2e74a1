'use strict'
// Resolves a FlyConfig (plus environment fallbacks) once, into the frozen
// settings every method reads.  Type errors are thrown at once; a missing
// token is reported when a method needs it, as ComputeSDK providers do.
const { invalidArg } = require('./errors')
const { apiTarget } = require('./target')
const { checkKeys } = require('./options')

const DEFAULTS = {
  apiHostname: 'https://api.machines.dev',
  appName: 'computesdk',
  org: 'personal',
  region: 'iad',
  image: 'computesdk-fly-sandbox:latest',
  cpus: 1,
  memoryMb: 512,
  cpuKind: 'shared',
  sshUser: 'sandbox',
  sshPort: 2222,
  maxOutputBytes: 64 * 1024 * 1024,
  connectTimeoutMs: 15000,
  startTimeoutMs: 120000,
  opTimeoutMs: 60000,
  keepaliveSec: 15,
  maxFileBytes: 256 * 1024 * 1024,
  maxEntries: 100000,
  maxContexts: 16
}

const APP_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/
const WEEK_MS = 7 * 24 * 3600 * 1000

// The ranges of the options fly() and create both take (create's value
// wins): one rule for each, whichever gives it.
const RANGES = Object.freeze({
  cpus: [1, 16],
  memoryMb: [256, 131072],
  timeout: [0, WEEK_MS],
  idleTimeout: [0, WEEK_MS]
})

function optString (config, key, envName) {
  const v = config[key] !== undefined ? config[key] : (envName ? process.env[envName] : undefined)
  if (v === undefined || v === null || v === '') return undefined
  if (typeof v !== 'string') throw invalidArg(`fly(): ${key} must be a string`)
  return v
}

// config[key] (fly()'s config, or create's options with what: 'create'),
// checked; undefined when not given.
function optInt (config, key, min, max, what = 'fly()') {
  const v = config[key]
  if (v === undefined || v === null) return undefined
  if (!Number.isInteger(v) || v < min || v > max) {
    throw invalidArg(`${what}: ${key} must be an integer from ${min} to ${max}`)
  }
  return v
}

function optBool (config, key, dflt, what = 'fly()') {
  const v = config[key]
  if (v === undefined || v === null) return dflt
  if (typeof v !== 'boolean') throw invalidArg(`${what}: ${key} must be a boolean`)
  return v
}

// What an idle sandbox does: 'suspend' (memory kept) or 'stop' (only the
// volume kept).  keepMemory: false is the same as idleAction: 'stop'.
// Shared by fly() and create (where `o` is create's options).
function idleAction (o, what) {
  const v = o.idleAction
  if (v !== undefined && v !== null) {
    if (v !== 'suspend' && v !== 'stop') throw invalidArg(`${what}: idleAction must be 'suspend' or 'stop'`)
    return v
  }
  if (o.keepMemory !== undefined && o.keepMemory !== null) {
    if (typeof o.keepMemory !== 'boolean') throw invalidArg(`${what}: keepMemory must be a boolean`)
    return o.keepMemory ? 'suspend' : 'stop'
  }
  return undefined
}

function onTimeout (o, what) {
  const v = o.onTimeout
  if (v === undefined || v === null) return undefined
  if (v !== 'pause' && v !== 'destroy') throw invalidArg(`${what}: onTimeout must be 'pause' or 'destroy'`)
  return v
}

// { sizeGb } -> a frozen copy; false/null -> none; undefined -> not given.
function volumeOption (v, what) {
  if (v === undefined) return undefined
  if (v === null || v === false) return null
  if (v === true) return Object.freeze({ sizeGb: 1 })
  if (typeof v !== 'object') throw invalidArg(`${what}: volume must be { sizeGb } or false`)
  const sizeGb = v.sizeGb === undefined ? 1 : v.sizeGb
  if (!Number.isInteger(sizeGb) || sizeGb < 1 || sizeGb > 500) {
    throw invalidArg(`${what}: volume.sizeGb must be an integer from 1 to 500`)
  }
  return Object.freeze({ sizeGb })
}

// Every key fly() takes; anything else is ERR_INVALID_ARG (lib/options.js).
// memory is create's name for the guest's MB, and fly()'s too; memoryMb is
// the older name, still taken.
const FLY_KEYS = new Set(['apiToken', 'appName', 'org', 'region', 'image', 'apiHostname', 'cpus',
  'memory', 'memoryMb', 'cpuKind', 'transport', 'sshUser', 'sshPassword', 'sshPrivateKey', 'sshHost', 'sshPort',
  'insecureSkipHostKeyCheck', 'timeout', 'maxOutputBytes', 'connectTimeoutMs', 'opTimeoutMs', 'keepaliveSec',
  'maxFileBytes', 'maxEntries', 'startTimeoutMs', 'retry', 'autoResume', 'idleTimeout', 'idleAction',
  'keepMemory', 'onTimeout', 'volume', 'pool', 'tenant', 'reach', 'edgeUrl', 'edgeCa', 'maxContexts'])

// memory, or its older name memoryMb (not both, unless equal).
function memoryOption (config) {
  const a = optInt(config, 'memory', ...RANGES.memoryMb)
  const b = optInt(config, 'memoryMb', ...RANGES.memoryMb)
  if (a !== undefined && b !== undefined && a !== b) {
    throw invalidArg('fly(): memory and memoryMb are one setting (MB); give one')
  }
  return a !== undefined ? a : b
}

function resolveConfig (config) {
  if (config === undefined || config === null) config = {}
  if (typeof config !== 'object') throw invalidArg('fly(): config must be an object')
  checkKeys(config, FLY_KEYS, 'fly()')

  const r = {
    apiToken: optString(config, 'apiToken', 'FLY_API_TOKEN'),
    appName: optString(config, 'appName', 'FLY_APP_NAME') || DEFAULTS.appName,
    org: optString(config, 'org', 'FLY_ORG') || DEFAULTS.org,
    region: optString(config, 'region', 'FLY_REGION') || DEFAULTS.region,
    image: optString(config, 'image', 'FLY_IMAGE') || DEFAULTS.image,
    apiHostname: (optString(config, 'apiHostname', 'FLY_API_HOSTNAME') || DEFAULTS.apiHostname).replace(/\/+$/, ''),
    // Neither a token nor a hostname: the fly-local running on this host
    // (lib/target.js).
    localDefault: optString(config, 'apiToken', 'FLY_API_TOKEN') === undefined &&
      optString(config, 'apiHostname', 'FLY_API_HOSTNAME') === undefined,
    cpus: optInt(config, 'cpus', ...RANGES.cpus) || DEFAULTS.cpus,
    memoryMb: memoryOption(config) || DEFAULTS.memoryMb,
    cpuKind: optString(config, 'cpuKind') || DEFAULTS.cpuKind,
    transport: optString(config, 'transport') || 'ssh',
    sshUser: optString(config, 'sshUser') || DEFAULTS.sshUser,
    sshPassword: optString(config, 'sshPassword'),
    sshPrivateKey: optString(config, 'sshPrivateKey', 'FLY_SSH_PRIVATE_KEY'),
    sshHost: optString(config, 'sshHost'),
    sshPort: optInt(config, 'sshPort', 1, 65535) || DEFAULTS.sshPort,
    insecureSkipHostKeyCheck: config.insecureSkipHostKeyCheck === true,
    timeout: optInt(config, 'timeout', ...RANGES.timeout),
    maxOutputBytes: optInt(config, 'maxOutputBytes', 1, 2 ** 31) || DEFAULTS.maxOutputBytes,
    connectTimeoutMs: optInt(config, 'connectTimeoutMs', 100, 600000) || DEFAULTS.connectTimeoutMs,
    opTimeoutMs: optInt(config, 'opTimeoutMs', 100, 3600000) || DEFAULTS.opTimeoutMs,
    keepaliveSec: optInt(config, 'keepaliveSec', 1, 3600) || DEFAULTS.keepaliveSec,
    maxFileBytes: optInt(config, 'maxFileBytes', 1, 2 ** 40) || DEFAULTS.maxFileBytes,
    maxEntries: optInt(config, 'maxEntries', 1, 10000000) || DEFAULTS.maxEntries,
    // Most code interpreter contexts in one sandbox (lib/interpreter.js).
    maxContexts: optInt(config, 'maxContexts', 1, 256) || DEFAULTS.maxContexts,
    startTimeoutMs: optInt(config, 'startTimeoutMs', 1000, 3600000) || DEFAULTS.startTimeoutMs,
    retry: undefined,
    // Pausing (lib/pause.js, lib/idle.js) and volumes (lib/volumes.js).
    autoResume: optBool(config, 'autoResume', true),
    idleTimeout: optInt(config, 'idleTimeout', ...RANGES.idleTimeout) || 0,
    idleAction: idleAction(config, 'fly()'),
    onTimeout: onTimeout(config, 'fly()'),
    volume: volumeOption(config.volume, 'fly()'),
    // How SSH reaches a machine (lib/edge.js): 'private' (its 6PN address),
    // 'edge' (Fly's proxy at edgeUrl), or learned once when not set.
    reach: optString(config, 'reach'),
    edgeUrl: optString(config, 'edgeUrl', 'FLY_EDGE_URL'),
    edgeCa: optString(config, 'edgeCa')
  }
  if (!/^https?:\/\/[^\s/]+/.test(r.apiHostname)) {
    throw invalidArg('fly(): apiHostname must be an http:// or https:// URL')
  }
  if (!APP_NAME.test(r.appName)) {
    throw invalidArg('fly(): appName must be lowercase letters, digits and dashes (at most 63)')
  }
  if (r.reach !== undefined && r.reach !== 'private' && r.reach !== 'edge') {
    throw invalidArg("fly(): reach must be 'private' or 'edge'")
  }
  if (r.edgeUrl !== undefined) {
    let u = null
    try { u = new URL(r.edgeUrl) } catch (_) { /* below */ }
    if (!u || u.protocol !== 'https:' || (u.pathname !== '/' && u.pathname !== '') || u.search || u.username || u.password) {
      throw invalidArg('fly(): edgeUrl must be an https:// URL with no path (https://<app>.fly.dev by default)')
    }
    r.edgeUrl = u.origin
  }
  if (r.edgeCa !== undefined && !/-----BEGIN CERTIFICATE-----/.test(r.edgeCa)) {
    throw invalidArg('fly(): edgeCa must be PEM certificates')
  }
  // A tenant's sandboxes share an app of their own on its own private
  // network, <appName>-t-<tenant>: they reach each other and no one else.
  r.tenant = optString(config, 'tenant')
  if (r.tenant !== undefined) {
    if (!TENANT.test(r.tenant)) throw invalidArg('fly(): tenant must be lowercase letters, digits and dashes (at most 30)')
    r.appName = `${r.appName}-t-${r.tenant}`
    if (!APP_NAME.test(r.appName)) throw invalidArg(`fly(): appName and tenant make ${r.appName}, longer than an app name may be (63)`)
  }
  if (r.transport !== 'ssh' && r.transport !== 'exec') {
    throw invalidArg("fly(): transport must be 'ssh' or 'exec'")
  }
  if (config.retry !== undefined) {
    const rt = config.retry
    if (rt === null || typeof rt !== 'object') throw invalidArg('fly(): retry must be an object')
    for (const k of ['baseMs', 'maxMs', 'totalMs']) {
      if (rt[k] !== undefined && !(Number.isInteger(rt[k]) && rt[k] >= 0)) {
        throw invalidArg(`fly(): retry.${k} must be a non-negative integer`)
      }
    }
    r.retry = Object.freeze({ baseMs: rt.baseMs, maxMs: rt.maxMs, totalMs: rt.totalMs })
  }
  r.pool = poolConfig(config.pool, r)
  return Object.freeze(r)
}

const TENANT = /^[a-z0-9](?:[a-z0-9-]{0,28}[a-z0-9])?$/

const POOL_KEYS = new Set(['size', 'concurrency', 'onError'])

// pool: { size, concurrency?, onError? } (lib/pool.js), or null: no pool.
function poolConfig (p, r) {
  if (p === undefined || p === null) return null
  if (typeof p !== 'object' || Array.isArray(p)) throw invalidArg('fly(): pool must be an object')
  for (const k of Object.keys(p)) {
    if (!POOL_KEYS.has(k)) throw invalidArg(`fly(): pool.${k} is not an option (size, concurrency, onError)`)
  }
  if (!Number.isInteger(p.size) || p.size < 0 || p.size > 100) {
    throw invalidArg('fly(): pool.size must be an integer from 0 to 100')
  }
  const concurrency = p.concurrency === undefined ? 2 : p.concurrency
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 20) {
    throw invalidArg('fly(): pool.concurrency must be an integer from 1 to 20')
  }
  if (p.onError !== undefined && typeof p.onError !== 'function') {
    throw invalidArg('fly(): pool.onError must be a function')
  }
  // A pool machine holds the password it was made with; a claimer with
  // another could not log in, and the pool key must not reveal it.
  if (r.sshPassword && p.size > 0) {
    throw invalidArg('fly(): pool needs key authentication (sshPassword is set); use sshPrivateKey')
  }
  return Object.freeze({ size: p.size, concurrency, onError: p.onError || null })
}

// A missing token is reported when a method needs it, not at fly(); the
// token is the configured one or the local fly-local's (lib/target.js).
function requireToken (config) {
  return apiTarget(config).apiToken
}

module.exports = { resolveConfig, requireToken, DEFAULTS, RANGES, optInt, optBool, idleAction, onTimeout, volumeOption }
