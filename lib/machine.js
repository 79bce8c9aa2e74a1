'use strict'
// A sandbox's data: FlyMachine (what getInstance() returns) and sandboxId
// parsing.  Its pause/resume/fork are installed by lib/index.js (they need
// pause.js and lifecycle.js, which need this module); getInfo and getUrl
// are in lib/info.js.
const api = require('./api')
const { invalidArg } = require('./errors')
const exec = require('./exec')
const interpreter = require('./interpreter')
const { makeFilesystem } = require('./fs')
const metrics = require('./metrics')
const egress = require('./egress')
const { makeCommands, makePty } = require('./commands')
const { HOST_FP, VOLUME, EDGE_TOKEN, URL_KEY } = require('./metadata')

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
    // The edge token is a credential: kept off the enumerable metadata, so
    // that logging a sandbox does not print it.
    const edgeToken = this.metadata[EDGE_TOKEN]
    delete this.metadata[EDGE_TOKEN]
    Object.defineProperty(this, '_edgeToken', { value: edgeToken || null, enumerable: false, configurable: true, writable: true })
    // So is the URL key (lib/urls.js).
    const urlKey = this.metadata[URL_KEY]
    delete this.metadata[URL_KEY]
    Object.defineProperty(this, '_urlKey', { value: urlKey || null, enumerable: false, configurable: true, writable: true })
    this.hostKeyFingerprint = this._pinnedHostKey || this.metadata[HOST_FP] || null
    this.volumeId = this.metadata[VOLUME] || null
    // When this state was read (lib/pause.js: may it have paused since?).
    Object.defineProperty(this, '_seenAt', { value: Date.now(), enumerable: false, configurable: true, writable: true })
  }

  get sandboxId () {
    return `${this.appName}:${this.machineId}`
  }

  // { app, machine }: the API's path parameters for this machine.
  get _params () {
    return { app: this.appName, machine: this.machineId }
  }

  // A Machines API call about this machine.
  _api (op, extra) {
    return api.call(this._ctx.config, op, this._params, extra)
  }

  runCommand (command, argsOrOptions, options) {
    const opts = Array.isArray(argsOrOptions) ? { ...(options || {}), args: argsOrOptions } : argsOrOptions
    const stream = opts && (opts.onStdout || opts.onStderr) ? opts : null
    return exec.run(this, command, opts, stream)
  }

  // With an options object: in a code interpreter context that keeps its
  // state (lib/interpreter.js); the seed's runCode(code) and runCode(code,
  // runtime) stay a fresh interpreter per call (lib/exec.js).
  runCode (code, runtimeOrOptions) {
    return runtimeOrOptions !== null && typeof runtimeOrOptions === 'object'
      ? interpreter.runCode(this, code, runtimeOrOptions)
      : exec.runCode(this, code, runtimeOrOptions)
  }

  // Replaces the egress policy of the running sandbox (lib/egress.js):
  // { internet, allowOut, denyOut }, as create's `network`.
  updateNetwork (network) {
    return egress.update(this, network)
  }

  get codeInterpreter () {
    return interpreter.codeInterpreter(this)
  }

  // CPU, memory and disk use, measured inside the sandbox (lib/metrics.js):
  // now, or the samples kept since options.since.
  getMetrics (options) {
    return metrics.getMetrics(this, options)
  }

  get filesystem () {
    const fs = makeFilesystem(this)
    Object.defineProperty(this, 'filesystem', { value: fs, enumerable: false })
    return fs
  }

  // Process handles (start, list, connect, kill, sendStdin): lib/commands.js.
  get commands () {
    const c = makeCommands(this)
    Object.defineProperty(this, 'commands', { value: c, enumerable: false })
    return c
  }

  // Terminals (create, connect, resize): lib/commands.js.
  get pty () {
    const p = makePty(this)
    Object.defineProperty(this, 'pty', { value: p, enumerable: false })
    return p
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

module.exports = { FlyMachine, parseSandboxId }
