'use strict'
// A sandbox's data: FlyMachine (what getInstance() returns), the metadata
// keys the provider sets, sandboxId parsing, getInfo and getUrl.
const api = require('./api')
const { flyError, invalidArg } = require('./errors')
const exec = require('./exec')
const { makeFilesystem } = require('./fs')

// Metadata keys, and where injected files go in the machine.
const TAG = 'computesdk_provider'
const CREATE_ID = 'computesdk_create_id'
const HOST_FP = 'computesdk_host_key_fp'
const FILES_DIR = '/etc/computesdk'
// Set while paused by a stop ('1' from pause(), 'idle' from the idle watch
// in the image); the idle timeout; autoResume chosen at create ('0'/'1');
// the workspace volume's id; the exposed ports ("internal:public,...").
const PAUSED = 'computesdk_paused'
const IDLE_MS = 'computesdk_idle_timeout_ms'
const AUTO_RESUME = 'computesdk_auto_resume'
const VOLUME = 'computesdk_volume'
const PORTS = 'computesdk_ports'

// Machine states -> SandboxInfo.status.
const RUNNING = new Set(['created', 'starting', 'started', 'restarting', 'updating', 'replacing'])
const STOPPED = new Set(['stopping', 'stopped', 'suspending', 'suspended', 'destroying', 'destroyed'])

// A machine that no longer counts as a sandbox (getById gives null for it).
function isGone (m) {
  return !m || m.state === 'destroyed' || m.state === 'destroying'
}

// Suspended, or stopped (or stopping) by a pause: status 'paused'.
function isPausedMachine (m) {
  if (!m) return false
  if (m.state === 'suspended' || m.state === 'suspending') return true
  const md = (m.config && m.config.metadata) || {}
  return (m.state === 'stopped' || m.state === 'stopping') && md[PAUSED] !== undefined
}

function parseSandboxId (sandboxId) {
  if (typeof sandboxId !== 'string') throw invalidArg('sandboxId must be a string')
  const i = sandboxId.indexOf(':')
  const app = sandboxId.slice(0, i)
  const machine = sandboxId.slice(i + 1)
  if (i <= 0 || !/^[a-z0-9][a-z0-9-]*$/.test(app) || !/^[0-9a-z]{1,32}$/.test(machine)) {
    throw invalidArg(`Invalid sandboxId ${JSON.stringify(sandboxId)}: expected "appName:machineId"`)
  }
  return { app, machine }
}

class FlyMachine {
  // m: a Machines API machine, with `app` added.  hostKeyFingerprint: the
  // fingerprint of the host key create generated, pinned for good; without
  // it (getById, list) the one in the machine's metadata is used.
  constructor (ctx, m, hostKeyFingerprint) {
    Object.defineProperty(this, '_ctx', { value: ctx, enumerable: false })
    Object.defineProperty(this, '_pinnedHostKey', { value: hostKeyFingerprint || null, enumerable: false })
    this._update(m)
  }

  _update (m) {
    const cfg = m.config || {}
    this.appName = m.app || this.appName
    this.machineId = m.id
    this.name = m.name
    this.region = m.region
    this.state = m.state
    this.privateIp = m.private_ip || null
    this.image = cfg.image || null
    this.createdAt = m.created_at ? new Date(m.created_at) : new Date()
    this.metadata = { ...(cfg.metadata || {}) }
    this.hostKeyFingerprint = this._pinnedHostKey || this.metadata[HOST_FP] || null
    this.volumeId = this.metadata[VOLUME] || null
    // When this state was read (lib/pause.js: may it have paused since?).
    Object.defineProperty(this, '_seenAt', { value: Date.now(), enumerable: false, configurable: true, writable: true })
  }

  get sandboxId () {
    return `${this.appName}:${this.machineId}`
  }

  // A Machines API call about this machine.
  _api (op, extra) {
    return api.call(this._ctx.config, op, { app: this.appName, machine: this.machineId }, extra)
  }

  runCommand (command, argsOrOptions, options) {
    const opts = Array.isArray(argsOrOptions) ? { ...(options || {}), args: argsOrOptions } : argsOrOptions
    const stream = opts && (opts.onStdout || opts.onStderr) ? opts : null
    return exec.run(this, command, opts, stream)
  }

  runCode (code, runtime) {
    return exec.runCode(this, code, runtime)
  }

  // Suspend (keepMemory, the default) or stop; see lib/pause.js.
  pause (options) {
    return require('./pause').pause(this, options)
  }

  // Start it again and return once it answers over SSH.
  resume () {
    return require('./pause').resume(this)
  }

  // A new sandbox whose workspace is a copy of this one's volume.
  async fork (options) {
    const r = await require('./lifecycle').create(this._ctx, { ...(options || {}), fromSandbox: this.sandboxId })
    return r.sandbox
  }

  get filesystem () {
    const fs = makeFilesystem(this)
    Object.defineProperty(this, 'filesystem', { value: fs, enumerable: false })
    return fs
  }

  toJSON () {
    return {
      sandboxId: this.sandboxId,
      appName: this.appName,
      machineId: this.machineId,
      region: this.region,
      state: this.state,
      privateIp: this.privateIp,
      image: this.image,
      volumeId: this.volumeId
    }
  }
}

async function getInfo (sb) {
  const r = await sb._api('machine.get')
  // Fly lists a destroyed machine for a while: it is no sandbox any more,
  // as every other call after destroy() says.
  if (isGone(r.body)) throw flyError('FLY_NOT_FOUND', `sandbox ${sb.sandboxId} does not exist (it was destroyed)`, { status: 404 })
  sb._update({ ...r.body, app: sb.appName })
  const st = sb.state
  const status = isPausedMachine(r.body) ? 'paused' : RUNNING.has(st) ? 'running' : STOPPED.has(st) ? 'stopped' : 'error'
  const volume = await require('./volumes').info(sb)
  const userMeta = {}
  for (const [k, v] of Object.entries(sb.metadata)) if (!k.startsWith('computesdk_')) userMeta[k] = v
  return {
    id: sb.sandboxId,
    provider: 'fly',
    status,
    createdAt: sb.createdAt,
    timeout: Number(sb.metadata.computesdk_timeout_ms) || 0,
    metadata: {
      ...userMeta,
      appName: sb.appName,
      machineId: sb.machineId,
      region: sb.region,
      privateIp: sb.privateIp,
      image: sb.image,
      state: st,
      name: sb.name,
      volumeId: sb.volumeId,
      volume,
      ports: require('./ports').exposed(sb)
    }
  }
}

// Each exposed port has a public port of its own (lib/ports.js); a paused
// sandbox is woken first (autoResume), as a request to the URL would.
async function getUrl (sb, options) {
  const port = options && options.port
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArg('getUrl: port must be an integer from 1 to 65535')
  const protocol = (options.protocol || '').replace(/:$/, '')
  if (protocol && !/^(https?|wss?)$/.test(protocol)) throw invalidArg('getUrl: protocol must be http, https, ws or wss')
  const url = require('./ports').url(sb, port, protocol)
  // A URL is an answer whatever the state (a request to it starts the
  // machine anyway): with autoResume off, or a machine that is not paused
  // but stopped, it is given as it is.
  await require('./pause').ensureAwake(sb).catch((err) => {
    if (err.code !== 'FLY_MACHINE_NOT_RUNNING') throw err
  })
  return url
}

module.exports = {
  FlyMachine,
  isGone,
  isPausedMachine,
  parseSandboxId,
  getInfo,
  getUrl,
  TAG,
  CREATE_ID,
  HOST_FP,
  FILES_DIR,
  PAUSED,
  IDLE_MS,
  AUTO_RESUME,
  VOLUME,
  PORTS
}
