'use strict'
// fly-local's model: apps and machines, and the machine state machine of
// fly-machines-api.md section 5, driving real sandboxes through runtime.js.
const EventEmitter = require('events')
const fs = require('fs')
const path = require('path')
const os = require('os')
const crypto = require('crypto')
const ids = require('./ids')
const { Run, mainArgv, newHostKey, waitSshBanner, SYS_PATH, readStat } = require('./runtime')
/* the provider's egress policy (lib/egress.js); unreadable: no egress */
const EGRESS_KEY = 'computesdk_network'

const PERSISTENT = new Set(['created', 'started', 'stopped', 'suspended', 'failed', 'destroyed'])
const DEFAULT_STOP_TIMEOUT_MS = 5000
const DEFAULT_MAX_RETRIES = 3

/* Go duration strings ("10s", "1m30s", "250ms") or nanoseconds -> ms. */
function parseDuration (v) {
  if (v == null || v === '') return null
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? v / 1e6 : null
  if (typeof v === 'object' && v.Duration != null) return parseDuration(v.Duration)
  const s = String(v).trim()
  if (/^\d+$/.test(s)) return Number(s) / 1e6
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g
  const unit = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60000, h: 3600000 }
  let total = 0
  let consumed = 0
  let m
  while ((m = re.exec(s))) {
    total += Number(m[1]) * unit[m[2]]
    consumed += m[0].length
  }
  return consumed === s.length && consumed > 0 ? total : null
}

const SIGNALS = ['SIGABRT', 'SIGALRM', 'SIGFPE', 'SIGHUP', 'SIGILL', 'SIGINT', 'SIGKILL', 'SIGPIPE',
  'SIGQUIT', 'SIGSEGV', 'SIGTERM', 'SIGTRAP', 'SIGUSR1', 'SIGUSR2']
const STOP_SIGNALS = ['SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGKILL', 'SIGUSR1', 'SIGUSR2', 'SIGTERM']

/* "SIGTERM", "TERM", 15 or "15" -> "SIGTERM"; null when unknown. */
function signalName (v, allowed = SIGNALS) {
  if (v == null) return null
  if (typeof v === 'number' || /^\d+$/.test(String(v))) {
    const n = Number(v)
    const name = Object.keys(os.constants.signals).find((k) => os.constants.signals[k] === n)
    return name && allowed.includes(name) ? name : null
  }
  let s = String(v).toUpperCase()
  if (!s.startsWith('SIG')) s = `SIG${s}`
  return allowed.includes(s) ? s : null
}

class Machine extends EventEmitter {
  constructor (store, app, fields) {
    super()
    this.setMaxListeners(0)
    this.store = store
    this.app = app
    Object.assign(this, fields)
    this.events = []
    this.versions = []
    this.run = null
    this.seq = 0
    this.queue = Promise.resolve()
    this.lease = null
    this.cordoned = false
    this.retries = 0
    this.launching = false
    this.stopRequested = false
    this.waiters = new Set()
  }

  get host () { return this.store.host }

  setState (state) {
    this.state = state
    this.updatedAt = new Date()
    this.emit('state', state)
    this.store.events.emit('state', { app: this.app.name, id: this.id, state })
  }

  addEvent (type, status, source, request) {
    const ev = { id: ids.ulid(), type, status, source: source || 'user', timestamp: Date.now() }
    if (request) ev.request = request
    this.events.unshift(ev)
    if (this.events.length > 100) this.events.length = 100
    this.lastEventId = ev.id
    return ev
  }

  /* Serialise lifecycle work: one operation at a time per machine. */
  enqueue (fn) {
    const p = this.queue.then(fn)
    this.queue = p.catch((e) => {
      if (!this.store.quiet) process.stderr.write(`fly-local: machine ${this.id}: ${e && e.stack}\n`)
    })
    return p
  }

  env () {
    const env = { PATH: SYS_PATH, HOME: '/root' }
    Object.assign(env, this.config.env || {})
    Object.assign(env, {
      FLY_MACHINE_ID: this.id,
      FLY_APP_NAME: this.app.name,
      FLY_REGION: this.region,
      FLY_PRIVATE_IP: this.privateIp,
      FLY_MACHINE_VERSION: this.version,
      FLY_IMAGE_REF: this.config.image || '',
      FLY_PROCESS_GROUP: 'app',
      /* the image's in-guest firewall: network.js enforces it on the host
         (the egress policy's rules, docker/egress, run in the guest as on
         Fly: root there holds CAP_NET_ADMIN over its own netns) */
      FLY_LOCAL_FIREWALL: 'host',
      PRIMARY_REGION: this.region
    })
    return env
  }

  files () {
    return (this.config.files || []).filter((f) => f.raw_value != null).map((f) => ({
      path: f.guest_path,
      mode: Number.isInteger(f.mode) ? f.mode : 0o644,
      hex: Buffer.from(f.raw_value, 'base64').toString('hex')
    }))
  }

  /* The egress policy the provider keeps in the machine's metadata
     (computesdk_network, lib/egress.js), put into the host's rules for it
     (network.js): at each boot and when the metadata changes. One sync at
     a time, each reading the metadata when it runs, so the last one in
     writes the latest; unchanged, nothing is written. */
  syncEgress () {
    const run = async () => {
      const raw = (this.config.metadata || {})[EGRESS_KEY] || null
      if (raw === (this.egressSynced || null)) return
      let policy = null
      if (raw) {
        try { policy = JSON.parse(raw) } catch (_) { policy = { internet: false } }
      }
      await this.host.setEgress(this.privateIp, policy)
      this.egressSynced = raw
    }
    const p = (this.egressQueue || Promise.resolve()).then(run)
    this.egressQueue = p.catch(() => {})
    return p
  }

  /* Boot a fresh root (called inside the queue). */
  async boot () {
    if (this.state === 'destroyed' || this.state === 'destroying') return
    this.launching = false
    this.setState('starting')
    const guest = this.config.guest || {}
    /* config.mounts: the volumes this boot mounts (volumes.js) */
    let mounts = []
    let mountError = null
    try { mounts = this.store.volumes ? this.store.volumes.mountsFor(this) : [] } catch (e) { mountError = e.message }
    let apiSocket = null
    if (this.store.apiSockets) {
      try {
        fs.mkdirSync(path.join(this.host.dir, this.id), { recursive: true, mode: 0o711 })
        apiSocket = await this.store.apiSockets.open(this, path.join(this.host.sockDir, `${this.id}.sock`))
      } catch (e) {
        this.setState('failed')
        this.addEvent('exit', 'failed', 'flyd', { error: `cannot serve /.fly/api: ${e.message}` })
        return
      }
    }
    /* the address part of its egress policy, on the host (network.js) */
    try {
      await this.syncEgress()
    } catch (e) {
      this.setState('failed')
      this.addEvent('exit', 'failed', 'flyd', { error: `cannot set its egress rules: ${e.message}` })
      return
    }
    const run = new Run(this.host, {
      mounts,
      mountError,
      id: this.id,
      seq: ++this.seq,
      ip: this.privateIp,
      argv: mainArgv(this.config.init),
      env: this.env(),
      files: this.files(),
      memoryMb: guest.memory_mb || 256,
      cpus: guest.cpus || 1,
      image: this.config.image,
      apiSocket,
      cgroups: this.host.machineCgroups(this.id)
    })
    this.run = run
    this.bootStartedAt = Date.now()
    run.on('exit', (info) => this.onExit(run, info))
    const ok = await run.start()
    if (this.run !== run) return
    if (ok) {
      this.setState('started')
      this.addEvent('start', 'started', 'flyd')
    }
  }

  onExit (run, info) {
    if (this.run !== run) return
    this.run = null
    const exitEvent = {
      exit_code: info.code,
      guest_exit_code: info.code,
      guest_signal: info.signal || -1,
      oom_killed: !!info.oomKilled,
      requested_stop: this.stopRequested,
      exited_at: new Date().toISOString()
    }
    this.lastExit = exitEvent
    if (this.stopRequested || this.state === 'destroying') return /* the requester finishes */
    if (info.bootError) {
      this.setState('failed')
      this.addEvent('exit', 'failed', 'flyd', { exit_event: exitEvent, error: info.bootError })
      return
    }
    const restart = this.config.restart || {}
    const policy = restart.policy || 'on-failure'
    const max = Number.isInteger(restart.max_retries) ? restart.max_retries : DEFAULT_MAX_RETRIES
    const again = policy === 'always' || (policy === 'on-failure' && info.code !== 0 && this.retries < max)
    this.addEvent('exit', again ? 'restarting' : 'stopped', 'flyd', { exit_event: exitEvent })
    if (again) {
      this.retries++
      this.setState('starting')
      /* a main process that dies at once would spin the CPU; pace it */
      const ranMs = info.startedAt ? Date.now() - info.startedAt : 0
      const delay = ranMs < 1000 ? Math.min(1000, 100 * this.retries) : 0
      setTimeout(() => this.enqueue(() => this.boot()), delay).unref()
      this.addEvent('restart', 'starting', 'flyd')
      return
    }
    this.setState('stopped')
    if (this.config.auto_destroy) this.enqueue(() => this.destroyNow())
  }

  async stopNow (signal, timeoutMs) {
    const run = this.run
    if (!run) {
      if (this.state !== 'destroyed' && this.state !== 'created' && this.state !== 'failed') this.setState('stopped')
      return
    }
    this.stopRequested = true
    this.setState('stopping')
    this.addEvent('stop', 'stopping', 'user')
    if (run.frozen) run.thaw()
    /* As Fly's init does: the stop signal goes to the main process, which
       passes it on (the entrypoint forwards it to its workload and stops
       sshd); whatever is left dies with the machine. Signalling every
       process at once would make the entrypoint's trap fire at the moment
       its workload exits, and bash can lose a child's status then. */
    run.signalMain(signal)
    const timer = setTimeout(() => run.kill(), timeoutMs)
    await run.exitPromise
    clearTimeout(timer)
    this.stopRequested = false
    this.setState('stopped')
    this.addEvent('exit', 'stopped', 'flyd', { exit_event: this.lastExit })
  }

  stopParams (signal, timeout) {
    const sc = this.config.stop_config || {}
    return {
      signal: signalName(signal || sc.signal, STOP_SIGNALS) || 'SIGINT',
      timeoutMs: parseDuration(timeout) ?? parseDuration(sc.timeout) ?? DEFAULT_STOP_TIMEOUT_MS
    }
  }

  async destroyNow () {
    if (this.state === 'destroyed') return
    this.setState('destroying')
    const run = this.run
    if (run) {
      run.kill()
      await run.exitPromise
      this.run = null
    }
    if (this.store.apiSockets) this.store.apiSockets.close(this)
    this.host.releaseIp(this.privateIp)
    this.host.removeMachineCgroups(this.id)
    fs.rmSync(path.join(this.host.dir, this.id), { recursive: true, force: true })
    this.lease = null
    this.destroyedAt = Date.now()
    this.setState('destroyed')
    this.addEvent('destroy', 'destroyed', 'user')
    const t = setTimeout(() => this.store.purge(this), this.store.destroyedGraceMs)
    t.unref()
  }

  /* The transitions that POST start, stop and suspend (and Fly's proxy,
     proxy.js) begin once their checks passed: the state moves now, the
     work is queued. */
  requestStart () {
    const prev = this.state
    this.retries = 0
    this.setState('starting')
    if (prev === 'suspended') this.enqueue(() => this.resumeNow())
    else this.enqueue(() => this.boot())
  }

  requestStop (signal, timeout) {
    const p = this.stopParams(signal, timeout)
    this.setState('stopping')
    this.enqueue(() => this.stopNow(p.signal, p.timeoutMs))
  }

  requestSuspend () {
    this.setState('suspending')
    this.enqueue(() => this.suspendNow())
  }

  async suspendNow () {
    const run = this.run
    if (!run) return
    this.setState('suspending')
    run.freeze()
    /* frozen first, so no process reacts before the machine is still;
       then its TCP connections go, as on Fly */
    if (!await run.cutTcp() && !this.store.quiet) process.stderr.write(`fly-local: machine ${this.id}: could not reset its TCP connections on suspend\n`)
    if (this.run !== run) return
    this.setState('suspended')
    this.addEvent('suspend', 'suspended', 'user')
  }

  async resumeNow () {
    if (!this.run) return this.boot()
    this.setState('starting')
    this.run.thaw()
    this.setState('started')
    this.addEvent('start', 'started', 'flyd')
  }

  async updateNow (wasStarted, skipLaunch) {
    if (this.run) {
      const { signal, timeoutMs } = this.stopParams()
      await this.stopNow(signal, timeoutMs)
    }
    if (this.state === 'destroyed' || this.state === 'destroying') return
    if (wasStarted && !skipLaunch) await this.boot()
    else this.setState('stopped')
  }

  /* Resolves { ok, state } when the machine is in one of states, 'timeout',
     'gone' when it is destroyed (and that was not awaited), or whatever
     cancel(value) is given. Returns { promise, cancel }. */
  waitFor (timeoutMs, matches) {
    let cancel
    const promise = new Promise((resolve) => {
      const check = () => {
        const s = this.state
        if (matches(s)) return { ok: true, state: s }
        if (s === 'destroyed') return 'gone'
        return null
      }
      const first = check()
      if (first) {
        cancel = () => {}
        resolve(first)
        return
      }
      const onState = () => {
        const r = check()
        if (r) finish(r)
      }
      const timer = setTimeout(() => finish('timeout'), timeoutMs)
      const finish = (r) => {
        clearTimeout(timer)
        this.off('state', onState)
        this.waiters.delete(finish)
        resolve(r)
      }
      this.on('state', onState)
      this.waiters.add(finish)
      cancel = finish
    })
    return { promise, cancel }
  }

  cancelWaits (value) {
    for (const finish of [...this.waiters]) finish(value)
  }

  leaseValid () {
    if (this.lease && this.lease.expires_at * 1000 <= Date.now()) this.lease = null
    return this.lease
  }

  toJSON (opts = {}) {
    const o = {
      id: this.id,
      name: this.name,
      state: this.state,
      region: this.region,
      instance_id: this.version,
      version: this.version,
      private_ip: this.privateIp,
      created_at: this.createdAt.toISOString().replace(/\.\d+Z$/, 'Z'),
      updated_at: this.updatedAt.toISOString().replace(/\.\d+Z$/, 'Z'),
      image_ref: this.imageRef,
      host_status: 'ok',
      cordoned: this.cordoned
    }
    if (!opts.summary) {
      o.config = this.config
      o.incomplete_config = null
      o.events = this.events.slice(0, 20)
      o.checks = []
    } else {
      o.config = { image: this.config.image, metadata: this.config.metadata || {} }
    }
    if (o.incomplete_config === null) delete o.incomplete_config
    if (opts.nonce) o.nonce = opts.nonce
    if (opts.includeLease && this.leaseValid()) {
      /* StrippedLease: no nonce for readers */
      o.lease = { description: this.lease.description, expires_at: this.lease.expires_at, owner: this.lease.owner }
    }
    return o
  }
}

function parseImage (image) {
  let rest = String(image)
  let digest = ''
  const at = rest.indexOf('@')
  if (at >= 0) { digest = rest.slice(at + 1); rest = rest.slice(0, at) }
  let registry = 'registry-1.docker.io'
  const slash = rest.indexOf('/')
  if (slash >= 0 && /[.:]|^localhost$/.test(rest.slice(0, slash))) {
    registry = rest.slice(0, slash)
    rest = rest.slice(slash + 1)
  }
  let tag = 'latest'
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) { tag = rest.slice(colon + 1); rest = rest.slice(0, colon) }
  if (registry === 'registry-1.docker.io' && !rest.includes('/')) rest = `library/${rest}`
  if (!digest) digest = `sha256:${crypto.createHash('sha256').update(String(image)).digest('hex')}`
  /* fly-local runs the sandbox image built from docker/ for every name */
  return { registry, repository: rest, tag, digest, labels: { 'dev.computesdk.fly-local': 'sandbox-image' } }
}

class Store {
  constructor ({ host, quiet, destroyedGraceMs, region }) {
    this.host = host
    this.quiet = quiet
    this.destroyedGraceMs = destroyedGraceMs
    this.region = region
    this.apps = new Map()
    this.idempotency = new Map()
    /* 'state' {app, id, state} and 'purged' {app, id}, for tests */
    this.events = new EventEmitter()
    this.events.setMaxListeners(0)
  }

  /* network: the app's private network ('default' unless a custom one is
     named); its machines read it as this.app.network. */
  createApp ({ name, org, network }) {
    const app = {
      id: ids.appId(),
      name,
      org,
      network: network || 'default',
      createdAt: Date.now(),
      machines: new Map()
    }
    this.apps.set(name, app)
    return app
  }

  appJSON (app) {
    let count = 0
    for (const m of app.machines.values()) if (m.state !== 'destroyed') count++
    return {
      id: app.id,
      name: app.name,
      status: count ? 'deployed' : 'pending',
      machine_count: count,
      volume_count: this.volumes ? this.volumes.count(app.name) : 0,
      network: app.network,
      organization: { name: app.org === 'personal' ? 'Personal' : app.org, slug: app.org }
    }
  }

  async createMachine (app, body) {
    const config = body.config
    const m = new Machine(this, app, {
      id: ids.machineId(),
      name: body.name || ids.machineName(),
      region: body.region || this.region,
      config,
      version: ids.ulid(),
      privateIp: await this.host.allocIp({ network: app.network, egress: config.egress }),
      createdAt: new Date(),
      updatedAt: new Date(),
      imageRef: parseImage(config.image),
      state: 'created'
    })
    m.versions.unshift({ version: m.version, user_config: config })
    app.machines.set(m.id, m)
    m.addEvent('launch', 'created', 'user')
    return m
  }

  purge (m) {
    if (m.app.machines.get(m.id) === m) m.app.machines.delete(m.id)
    this.events.emit('purged', { app: m.app.name, id: m.id })
  }

  allMachines () {
    const out = []
    for (const app of this.apps.values()) for (const m of app.machines.values()) out.push(m)
    for (const m of this.orphans || []) out.push(m)
    return out
  }

  async destroyApp (app) {
    this.apps.delete(app.name)
    this.orphans = this.orphans || new Set()
    const work = []
    for (const m of app.machines.values()) {
      if (m.state === 'destroyed') continue
      this.orphans.add(m)
      work.push(m.enqueue(() => m.destroyNow()).finally(() => this.orphans.delete(m)))
    }
    await Promise.allSettled(work)
    /* as on Fly, the app's volumes go with it */
    if (this.volumes) await this.volumes.destroyApp(app.name)
  }

  async destroyAll () {
    const work = []
    for (const m of this.allMachines()) {
      m.cancelWaits('gone')
      /* do not wait behind a slow stop: kill now, then destroy in order */
      if (m.run) m.run.kill()
      work.push(m.enqueue(() => m.destroyNow()))
    }
    await Promise.allSettled(work)
  }
}

function waitGone (pids, timeoutMs) {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve) => {
    const check = () => {
      const alive = pids.some((p) => {
        const st = readStat(p)
        return st && st.state !== 'Z'
      })
      if (!alive || Date.now() > deadline) return resolve()
      setTimeout(check, 2)
    }
    check()
  })
}

async function swapHostKey (m) {
  const run = m.run
  if (!run || !run.started) throw new Error(`machine ${m.id} is not running`)
  const { priv, pub } = await newHostKey(m.host.dir)
  /* Written by the machine's own root (an unprivileged host uid), never by
     the host's root through /proc/<pid>/root: a path in there is the
     sandbox's to bend with symlinks. */
  const w = await run.exec(['sh', '-c', 'umask 077 && cat > "$1.new" && mv -f "$1.new" "$1"', 'sh',
    '/etc/ssh/computesdk/ssh_host_ed25519_key'], { env: m.env(), stdin: priv.toString('utf8'), timeoutMs: 10000 })
  if (w.exit_code !== 0) throw new Error(`machine ${m.id}: cannot write the new host key: ${w.stderr}`)
  /* Restart the listener (the entrypoint starts a new sshd, which reads the
     new key; open sessions stay). A SIGHUP re-exec would leave a window in
     which the old process still accepts with the old key. */
  const { listeners } = run.sshdTree()
  for (const p of listeners) {
    try { process.kill(p, 'SIGTERM') } catch (_) { /* gone */ }
  }
  await waitGone(listeners, 10000)
  await waitSshBanner(m.privateIp, 2222, 10000)
  return { publicKey: pub }
}

module.exports = { Store, Machine, parseImage, parseDuration, signalName, SIGNALS, STOP_SIGNALS, PERSISTENT, swapHostKey }
