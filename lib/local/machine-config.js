'use strict'
// Fly's checks of a machine config that matter to a client (with Fly-like
// error texts), and the normalised copy Fly echoes back.
const { E, isObject } = require('./http')
const { parseDuration, signalName, STOP_SIGNALS } = require('./machines')

function validateEnv (env) {
  if (!isObject(env)) throw E.bad('config.env must be an object of strings')
  for (const [k, v] of Object.entries(env)) {
    if (typeof v !== 'string') throw E.bad(`config.env.${k} must be a string`)
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw E.bad(`invalid environment variable name ${JSON.stringify(k)}`)
  }
}

function validateMetadata (metadata) {
  if (!isObject(metadata)) throw E.bad('config.metadata must be an object of strings')
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw E.bad(`config.metadata.${k} must be a string`)
  }
}

/* Fly's CPU/memory grid: shared CPUs take 256 MB steps up to 2 GB each,
   performance CPUs 2 GB steps from 2 GB to 8 GB each. */
function validateGuest (g) {
  if (!isObject(g)) throw E.bad('config.guest must be an object')
  const kind = g.cpu_kind || 'shared'
  const cpus = g.cpus == null ? 1 : g.cpus
  if (kind !== 'shared' && kind !== 'performance') throw E.bad(`invalid cpu_kind ${JSON.stringify(kind)}`)
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 16) throw E.bad(`invalid number of cpus ${cpus}`)
  if (g.memory_mb != null) {
    const step = kind === 'shared' ? 256 : 2048
    const min = kind === 'shared' ? 256 * cpus : 2048 * cpus
    const max = kind === 'shared' ? 2048 * cpus : 8192 * cpus
    const mem = g.memory_mb
    if (!Number.isInteger(mem) || mem % step !== 0 || mem < min || mem > max) {
      throw E.bad(`invalid memory size ${mem}MB for ${cpus} ${kind} cpu(s): must be a multiple of ${step}MB between ${min}MB and ${max}MB`)
    }
  }
}

function validateFiles (files) {
  if (!Array.isArray(files)) throw E.bad('config.files must be an array')
  for (const f of files) {
    if (!isObject(f) || typeof f.guest_path !== 'string' || !f.guest_path.startsWith('/')) {
      throw E.bad('file guest_path must be an absolute path')
    }
    if (/[\0\n]/.test(f.guest_path) || f.guest_path.split('/').includes('..')) {
      throw E.bad(`invalid guest_path ${JSON.stringify(f.guest_path)}`)
    }
    const hasRaw = f.raw_value != null
    const hasSecret = f.secret_name != null
    if (hasRaw === hasSecret) throw E.bad(`file ${f.guest_path}: exactly one of raw_value and secret_name must be set`)
    /* fly-local has no app secrets */
    if (hasSecret) throw E.bad(`file ${f.guest_path}: secret ${JSON.stringify(f.secret_name)} not found`)
    if (typeof f.raw_value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(f.raw_value.replace(/\s/g, ''))) {
      throw E.bad(`file ${f.guest_path}: raw_value must be base64`)
    }
    if (f.mode != null && !(Number.isInteger(f.mode) && f.mode >= 0 && f.mode <= 0o7777)) {
      throw E.bad(`file ${f.guest_path}: invalid mode`)
    }
  }
}

function validateInit (init) {
  if (!isObject(init)) throw E.bad('config.init must be an object')
  for (const k of ['exec', 'entrypoint', 'cmd']) {
    const v = init[k]
    if (v != null && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) {
      throw E.bad(`config.init.${k} must be an array of strings`)
    }
  }
}

function validateRestart (r) {
  if (!isObject(r)) throw E.bad('config.restart must be an object')
  if (r.policy != null && r.policy !== '' && !['no', 'always', 'on-failure'].includes(r.policy)) {
    throw E.bad(`invalid restart policy ${JSON.stringify(r.policy)}`)
  }
}

function validateStopConfig (sc) {
  if (sc.signal != null && !signalName(sc.signal, STOP_SIGNALS)) throw E.bad(`invalid stop signal ${JSON.stringify(sc.signal)}`)
  if (sc.timeout != null && parseDuration(sc.timeout) == null) throw E.bad(`invalid stop timeout ${JSON.stringify(sc.timeout)}`)
}

/* config.mounts: [{ volume, path }], one volume per machine as on Fly;
   whether the volume can be mounted is the volumes' check (volumes.js). */
function validateMounts (mounts) {
  if (!Array.isArray(mounts)) throw E.bad('config.mounts must be an array')
  if (mounts.length > 1) throw E.bad('a machine can mount only one volume')
  for (const mt of mounts) {
    if (!isObject(mt) || typeof mt.volume !== 'string' || !mt.volume) throw E.bad('mount volume is required')
    if (typeof mt.path !== 'string' || !mt.path.startsWith('/') || mt.path === '/' ||
        /[\0\n]/.test(mt.path) || mt.path.split('/').includes('..')) {
      throw E.bad(`invalid mount path ${JSON.stringify(mt.path)}`)
    }
  }
}

/* Fly proxy services (proxy.js serves their public ports on 127.0.0.1):
   tcp only, one port each (no start_port/end_port ranges) in fly-local. */
const MAX_PUBLIC_PORTS = 64
const AUTOSTOP = [false, true, 'off', 'stop', 'suspend']

function validPort (p) {
  return Number.isInteger(p) && p >= 1 && p <= 65535
}

function validateServices (services) {
  if (!Array.isArray(services)) throw E.bad('config.services must be an array')
  let ports = 0
  for (const [i, svc] of services.entries()) {
    const at = `config.services[${i}]`
    if (!isObject(svc)) throw E.bad(`${at} must be an object`)
    if (svc.protocol !== 'tcp') {
      throw E.bad(`${at}.protocol ${JSON.stringify(svc.protocol)}: fly-local's proxy serves tcp services only`)
    }
    if (!validPort(svc.internal_port)) throw E.bad(`${at}.internal_port must be a port number`)
    if (svc.autostart != null && typeof svc.autostart !== 'boolean') throw E.bad(`${at}.autostart must be a boolean`)
    if (svc.autostop != null && !AUTOSTOP.includes(svc.autostop)) throw E.bad(`${at}.autostop must be off, stop or suspend`)
    if (svc.min_machines_running != null && !(Number.isInteger(svc.min_machines_running) && svc.min_machines_running >= 0)) {
      throw E.bad(`${at}.min_machines_running must be a non-negative integer`)
    }
    if (svc.ports == null) continue
    if (!Array.isArray(svc.ports)) throw E.bad(`${at}.ports must be an array`)
    for (const [j, p] of svc.ports.entries()) {
      if (!isObject(p)) throw E.bad(`${at}.ports[${j}] must be an object`)
      if (p.start_port != null || p.end_port != null) throw E.bad(`${at}.ports[${j}]: fly-local's proxy does not serve port ranges`)
      if (!validPort(p.port)) throw E.bad(`${at}.ports[${j}].port must be a port number`)
      if (p.handlers != null && !(Array.isArray(p.handlers) && p.handlers.every((h) => typeof h === 'string'))) {
        throw E.bad(`${at}.ports[${j}].handlers must be an array of strings`)
      }
      if (++ports > MAX_PUBLIC_PORTS) throw E.bad(`at most ${MAX_PUBLIC_PORTS} public ports per machine`)
    }
  }
}

/* Throws a 400 HttpError for the first problem found. */
function validateConfig (config) {
  if (!isObject(config)) throw E.bad('config is required')
  if (typeof config.image !== 'string' || !config.image.trim()) throw E.bad('image is required')
  if (config.env != null) validateEnv(config.env)
  if (config.metadata != null) validateMetadata(config.metadata)
  if (config.guest != null) validateGuest(config.guest)
  if (config.files != null) validateFiles(config.files)
  if (config.init != null) validateInit(config.init)
  if (config.restart != null) validateRestart(config.restart)
  if (config.stop_config != null) validateStopConfig(config.stop_config)
  if (config.mounts != null) validateMounts(config.mounts)
  if (config.services != null) validateServices(config.services)
}

/* A copy with the guest defaults filled in, as Fly echoes it back. */
function normaliseConfig (config) {
  const c = JSON.parse(JSON.stringify(config))
  c.guest = { cpu_kind: 'shared', cpus: 1, memory_mb: 256, ...(c.guest || {}) }
  if (!c.guest.memory_mb) c.guest.memory_mb = c.guest.cpu_kind === 'performance' ? 2048 * c.guest.cpus : 256
  /* Fly answers autostop off and stop as the old booleans */
  for (const svc of c.services || []) {
    if (svc.autostop === 'off') svc.autostop = false
    else if (svc.autostop === 'stop') svc.autostop = true
  }
  return c
}

module.exports = { validateConfig, normaliseConfig }
