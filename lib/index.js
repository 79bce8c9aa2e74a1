'use strict'
// @computesdk/fly: the Fly.io Machines provider for ComputeSDK.
//
// fly(config) is a provider built with defineProvider (ComputeSDK provider
// 2.1.x).  Every network call is made by the native core: the Machines API
// over libcurl and commands/files over libssh2, on its own I/O thread.
const crypto = require('crypto')
const { defineProvider } = require('@computesdk/provider')
const native = require('./native')
const api = require('./api')
const { resolveConfig } = require('./config')
const { flyError, invalidArg } = require('./errors')
const execMod = require('./exec')
const { makeFilesystem } = require('./fs')

const TAG = 'computesdk_provider'
const CREATE_ID = 'computesdk_create_id'
const HOST_FP = 'computesdk_host_key_fp'
const FILES_DIR = '/etc/computesdk'
// Runs as the machine's root through the exec endpoint: $1 is FILES_DIR
// (under /etc, which only root can change), $2 the public key.  A key file
// that is not a plain file is refused rather than followed.
const REAUTHORIZE = 'umask 022; f="$1/authorized_keys"; mkdir -p "$1" && ' +
  '{ [ ! -e "$f" ] || { [ -f "$f" ] && [ ! -L "$f" ]; }; } && ' +
  '{ grep -qxF -- "$2" "$f" 2>/dev/null || printf "%s\\n" "$2" >> "$f"; }'

// Machine states -> SandboxInfo.status.
const RUNNING = new Set(['created', 'starting', 'started', 'restarting', 'updating', 'replacing'])
const STOPPED = new Set(['stopping', 'stopped', 'suspending', 'suspended', 'destroying', 'destroyed'])

function ctxOf (config) {
  return config.ctx
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

function b64 (s) {
  return Buffer.from(s, 'utf8').toString('base64')
}

// The sandbox object the provider methods work on (getInstance() returns it).
class FlyMachine {
  constructor (ctx, m) {
    Object.defineProperty(this, '_ctx', { value: ctx, enumerable: false })
    Object.defineProperty(this, '_reauthorized', { value: false, writable: true, enumerable: false })
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
    this.hostKeyFingerprint = this.metadata[HOST_FP] || null
  }

  get sandboxId () {
    return `${this.appName}:${this.machineId}`
  }

  _target () {
    const ctx = this._ctx
    const host = ctx.sshHost || this.privateIp || `${this.machineId}.vm.${this.appName}.internal`
    const t = {
      // One SSH session per sandbox, whatever the route to it.
      key: this.sandboxId,
      host,
      port: ctx.sshPort,
      user: ctx.sshUser,
      connectTimeoutMs: ctx.connectTimeoutMs
    }
    if (ctx.sshPassword) t.password = ctx.sshPassword
    else t.privateKey = ctx.clientKey().privateKey
    if (ctx.insecureSkipHostKeyCheck) {
      t.insecureHostKey = true
    } else if (this.hostKeyFingerprint) {
      t.hostKeyFingerprint = this.hostKeyFingerprint
    } else {
      throw flyError('SSH_HOSTKEY_UNKNOWN', `sandbox ${this.sandboxId} has no pinned host key (metadata ${HOST_FP}); ` +
        'it was not created by this provider. Set insecureSkipHostKeyCheck to connect anyway.')
    }
    return t
  }

  // Runs an SSH operation.  A sandbox made by another provider instance
  // (getById in another process, without the same sshPrivateKey) does not
  // know this instance's key yet: authorize it once through the Machines
  // API exec endpoint, which the API token already grants, and try again.
  async _ssh (fn) {
    if (this._ctx.destroyed.has(this.sandboxId)) {
      throw flyError('FLY_NOT_FOUND', `sandbox ${this.sandboxId} was destroyed`)
    }
    try {
      return await fn()
    } catch (err) {
      if (err.code === 'SSH_CONNECT_FAILED') throw await this._whyUnreachable(err)
      if (err.code !== 'SSH_AUTH_FAILED' || this._ctx.sshPassword || this._reauthorized) throw err
      this._reauthorized = true
      const pub = this._ctx.clientKey().publicKey
      // Appends to the root-owned key file sshd reads first (docker/
      // sshd_config); it is never a path the sandbox user controls, so
      // nothing of the user's home is touched by this root process.
      const r = await this._api('machine.exec', {
        body: { command: ['sh', '-c', REAUTHORIZE, 'sh', FILES_DIR, pub], timeout: 30 },
        timeoutMs: 60000
      })
      if (!r.body || r.body.exit_code !== 0) {
        err.message += `; authorizing this provider's key in ${FILES_DIR}/authorized_keys failed`
        throw err
      }
      return fn()
    }
  }

  // A Machines API call about this machine.
  _api (op, extra) {
    return api.call(this._ctx, op, { app: this.appName, machine: this.machineId }, extra)
  }

  // An SSH connect that failed for good: a machine that is not running (or
  // no longer exists) is the likely reason, and a clearer error.
  async _whyUnreachable (err) {
    let m
    try {
      m = (await this._api('machine.get')).body
    } catch (e) {
      if (e.code === 'FLY_NOT_FOUND') return flyError('FLY_NOT_FOUND', `sandbox ${this.sandboxId} no longer exists`)
      return err
    }
    if (m && m.state !== 'started') {
      return flyError('FLY_MACHINE_NOT_RUNNING', `sandbox ${this.sandboxId} is ${m.state}, not running: ${err.message}`,
        { state: m.state })
    }
    return err
  }

  runCommand (command, argsOrOptions, options) {
    const opts = Array.isArray(argsOrOptions) ? { ...(options || {}), args: argsOrOptions } : argsOrOptions
    const stream = opts && (opts.onStdout || opts.onStderr) ? opts : null
    return execMod.run(this, command, opts, stream)
  }

  runCode (code, runtime) {
    return execMod.runCode(this, code, runtime)
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
      image: this.image
    }
  }
}

function withApp (m, app) {
  return { ...m, app }
}

// Ensure the app exists (cached per provider): GET, then create on 404.
function ensureApp (ctx) {
  if (!ctx.appReady) {
    ctx.appReady = (async () => {
      try {
        await api.call(ctx, 'app.get', { app: ctx.appName })
        return
      } catch (err) {
        if (err.code !== 'FLY_NOT_FOUND') throw err
      }
      try {
        await api.call(ctx, 'app.create', null, {
          body: { app_name: ctx.appName, name: ctx.appName, org_slug: ctx.org }
        })
      } catch (err) {
        if (err.code !== 'FLY_UNPROCESSABLE') throw err // 422: taken, i.e. it exists now
      }
    })()
    ctx.appReady.catch(() => { ctx.appReady = null })
  }
  return ctx.appReady
}

function pickInt (options, keys) {
  for (const k of keys) {
    const v = options[k]
    if (v !== undefined && v !== null) {
      const n = Number(v)
      if (!Number.isInteger(n) || n <= 0) throw invalidArg(`create: ${k} must be a positive integer`)
      return n
    }
  }
  return undefined
}

function stringMap (obj, what) {
  const out = {}
  if (obj === undefined || obj === null) return out
  if (typeof obj !== 'object') throw invalidArg(`create: ${what} must be an object`)
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined || v === null) continue
    out[k] = typeof v === 'string' ? v : JSON.stringify(v)
  }
  return out
}

async function createSandbox (config, options) {
  const ctx = ctxOf(config)
  const o = options || {}
  ctx.requireToken()
  for (const k of ['templateId', 'image']) {
    if (o[k] !== undefined && o[k] !== null && (typeof o[k] !== 'string' || o[k] === '')) {
      throw invalidArg(`create: ${k} must be a non-empty string`)
    }
  }
  const image = o.templateId || o.image || ctx.image
  const cpus = pickInt(o, ['cpus', 'vcpus', 'cpu']) || ctx.cpus
  const memoryMb = pickInt(o, ['memoryMb', 'memory', 'memoryMiB', 'memMiB']) || ctx.memoryMb
  const envs = stringMap(o.envs, 'envs')
  for (const k of Object.keys(envs)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw invalidArg(`create: invalid environment variable name ${JSON.stringify(k)}`)
  }
  const timeout = o.timeout !== undefined ? o.timeout : ctx.timeout
  if (timeout !== undefined && timeout !== null && !(Number.isInteger(timeout) && timeout >= 0)) {
    throw invalidArg('create: timeout must be a non-negative integer of milliseconds')
  }

  const client = ctx.clientKey()
  const host = native.keygen()
  const createId = crypto.randomBytes(12).toString('hex')
  const metadata = {
    ...stringMap(o.metadata, 'metadata'),
    [TAG]: 'fly',
    [CREATE_ID]: createId,
    [HOST_FP]: host.fingerprint,
    computesdk_ssh_user: ctx.sshUser
  }
  if (o.runtime) metadata.computesdk_runtime = String(o.runtime)
  if (timeout) metadata.computesdk_timeout_ms = String(timeout)

  const files = [
    { guest_path: `${FILES_DIR}/authorized_keys`, raw_value: b64(client.publicKey + '\n'), mode: 0o644 },
    { guest_path: `${FILES_DIR}/ssh_host_ed25519_key`, raw_value: b64(host.privateKey), mode: 0o600 }
  ]
  if (ctx.sshPassword) {
    files.push({ guest_path: `${FILES_DIR}/ssh_password`, raw_value: b64(ctx.sshPassword), mode: 0o600 })
  }
  const machineConfig = {
    image,
    guest: { cpu_kind: ctx.cpuKind, cpus, memory_mb: memoryMb },
    env: envs,
    files,
    metadata,
    restart: { policy: 'no' },
    auto_destroy: !!timeout
  }
  if (timeout) machineConfig.env.COMPUTESDK_SANDBOX_TIMEOUT_S = String(Math.ceil(timeout / 1000))
  if (Array.isArray(o.ports) && o.ports.length > 0) {
    machineConfig.services = o.ports.map((p) => {
      if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidArg('create: ports must be integers from 1 to 65535')
      return { protocol: 'tcp', internal_port: p, ports: [{ port: p, handlers: ['tls', 'http'] }], autostart: true, autostop: 'off' }
    })
  }
  const body = { region: o.region || ctx.region, config: machineConfig }
  if (o.name !== undefined) body.name = String(o.name)

  try {
    await ensureApp(ctx)
    const created = await api.call(ctx, 'machine.create', { app: ctx.appName }, {
      body, createId, createIdKey: CREATE_ID
    })
    const m = created.body
    // Boots in the background: long-poll until started (no fixed sleeps).
    await api.call(ctx, 'machine.wait', { app: ctx.appName, machine: m.id }, {
      query: { state: 'started', timeout: 60 },
      waitTotalMs: ctx.startTimeoutMs,
      timeoutMs: 75000
    })
    const got = await api.call(ctx, 'machine.get', { app: ctx.appName, machine: m.id })
    const sb = new FlyMachine(ctx, withApp(got.body, ctx.appName))
    if (ctx.transport === 'ssh' && o.waitForSsh !== false) {
      // Connect now (retrying while sshd starts) so that the sandbox is known
      // to answer, with its host key checked, before create returns.
      try {
        await sb._ssh(() => native.sshExec({ target: sb._target(), command: 'true' }))
      } catch (err) {
        await destroySandbox(config, sb.sandboxId)
        throw err
      }
    }
    return { sandbox: sb, sandboxId: sb.sandboxId }
  } catch (err) {
    if (typeof err.message === 'string' && !err.message.startsWith('Failed to create')) {
      err.message = `Failed to create Fly.io sandbox: ${err.message}`
    }
    throw err
  }
}

async function getById (config, sandboxId) {
  const ctx = ctxOf(config)
  const { app, machine } = parseSandboxId(sandboxId)
  let r
  try {
    r = await api.call(ctx, 'machine.get', { app, machine })
  } catch (err) {
    if (err.code === 'FLY_NOT_FOUND') return null
    throw err
  }
  if (!r.body || r.body.state === 'destroyed' || r.body.state === 'destroying') return null
  const sb = new FlyMachine(ctx, withApp(r.body, app))
  return { sandbox: sb, sandboxId: sb.sandboxId }
}

async function list (config) {
  const ctx = ctxOf(config)
  let r
  try {
    r = await api.call(ctx, 'machine.list', { app: ctx.appName }, { query: { [`metadata.${TAG}`]: 'fly' } })
  } catch (err) {
    if (err.code === 'FLY_NOT_FOUND') return [] // no app yet: no sandboxes
    throw err
  }
  const out = []
  for (const m of r.body || []) {
    if (m.state === 'destroyed' || m.state === 'destroying') continue
    const sb = new FlyMachine(ctx, withApp(m, ctx.appName))
    out.push({ sandbox: sb, sandboxId: sb.sandboxId })
  }
  return out
}

// Stop, wait for the machine to be stopped, then delete (forced when it will
// not settle).  Never throws: a sandbox that is already gone is destroyed.
// The wait matters: stop returns while the machine is still stopping, and a
// delete then gets 412, so without it every destroy would end in a forced
// kill right after the stop signal.
async function destroySandbox (config, sandboxId) {
  const ctx = ctxOf(config)
  let ids
  try {
    ids = parseSandboxId(sandboxId)
  } catch {
    return
  }
  const params = { app: ids.app, machine: ids.machine }
  ctx.destroyed.add(sandboxId)
  try {
    await native.sshClose({ key: sandboxId }).catch(() => {})
    const m = (await api.call(ctx, 'machine.get', params)).body
    if (m.state === 'destroyed' || m.state === 'destroying') return
    if (m.state === 'started' || m.state === 'starting') {
      await api.call(ctx, 'machine.stop', params, { body: { signal: 'SIGTERM', timeout: '5s' } })
      // Waiting for stopped needs the version; 408 after the bound is fine.
      await api.call(ctx, 'machine.wait', params, {
        query: { state: 'stopped', version: m.instance_id || m.version, timeout: 10 },
        waitTotalMs: 10000,
        timeoutMs: 25000
      }).catch(() => {})
    }
    try {
      await api.call(ctx, 'machine.delete', params)
    } catch (err) {
      if (err.code !== 'FLY_PRECONDITION') throw err
      await api.call(ctx, 'machine.delete', params, { query: { force: 'true' } })
    }
  } catch (err) {
    if (err.code !== 'FLY_NOT_FOUND' && process.env.COMPUTESDK_FLY_DEBUG) {
      console.warn(`@computesdk/fly: destroy ${sandboxId}: ${err.message}`)
    }
  }
}

async function getInfo (sb) {
  const r = await sb._api('machine.get')
  sb._update(withApp(r.body, sb.appName))
  const st = sb.state
  const status = RUNNING.has(st) ? 'running' : STOPPED.has(st) ? 'stopped' : 'error'
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
      name: sb.name
    }
  }
}

async function getUrl (sb, options) {
  const port = options && options.port
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArg('getUrl: port must be an integer from 1 to 65535')
  const protocol = (options.protocol || '').replace(/:$/, '')
  if (protocol && !/^(https?|wss?)$/.test(protocol)) throw invalidArg('getUrl: protocol must be http, https, ws or wss')
  // fly-local: machines listen on their own loopback address.
  if (sb.privateIp && /^127\./.test(sb.privateIp)) {
    return `${protocol || 'http'}://${sb.privateIp}:${port}`
  }
  const scheme = protocol || 'https'
  const dflt = (scheme === 'https' || scheme === 'wss') ? 443 : 80
  return `${scheme}://${sb.appName}.fly.dev${port === dflt ? '' : ':' + port}`
}

const flyProvider = defineProvider({
  name: 'fly',
  methods: {
    sandbox: {
      create: createSandbox,
      getById,
      list,
      destroy: destroySandbox,
      runCommand: (sb, command, options) => sb.runCommand(command, options),
      streamCommand: (sb, command, options) => execMod.run(sb, command, options, options || {}),
      getInfo,
      getUrl,
      getInstance: (sb) => sb,
      filesystem: {
        readFile: (sb, path) => sb.filesystem.readFile(path),
        writeFile: (sb, path, content) => sb.filesystem.writeFile(path, content),
        mkdir: (sb, path) => sb.filesystem.mkdir(path),
        readdir: (sb, path) => sb.filesystem.readdir(path),
        exists: (sb, path) => sb.filesystem.exists(path),
        remove: (sb, path) => sb.filesystem.remove(path)
      }
    }
  }
})

// The generated sandbox has runCommand(command, options) only; the seed's
// usage also calls runCommand(command, args) and runCode(code, runtime),
// and reads files back as Buffers.  Add those to every sandbox handed out.
function augment (psb) {
  if (psb === null || psb === undefined) return psb
  const inner = psb.getInstance()
  const generatedRun = psb.runCommand.bind(psb)
  psb.runCommand = (command, argsOrOptions, options) => Array.isArray(argsOrOptions)
    ? generatedRun(command, { ...(options || {}), args: argsOrOptions })
    : generatedRun(command, argsOrOptions)
  psb.runCode = (code, runtime) => inner.runCode(code, runtime)
  psb.filesystem = inner.filesystem
  return psb
}

function fly (config) {
  const ctx = resolveConfig(config)
  // What defineProvider keeps as `config` (and shows when a sandbox or the
  // provider is logged): the resolved settings, not enumerable, so the token
  // does not appear in console.log/util.inspect output.
  const internal = {}
  Object.defineProperty(internal, 'ctx', { value: ctx, enumerable: false })
  const provider = flyProvider(internal)
  const mgr = provider.sandbox
  const create = mgr.create.bind(mgr)
  const byId = mgr.getById.bind(mgr)
  const all = mgr.list.bind(mgr)
  mgr.create = async (options) => augment(await create(options))
  mgr.getById = async (sandboxId) => augment(await byId(sandboxId))
  mgr.list = async () => (await all()).map(augment)
  return provider
}

module.exports = { fly, FlyMachine, detectRuntime: execMod.detectRuntime }
module.exports.default = fly
