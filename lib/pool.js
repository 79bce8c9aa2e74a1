'use strict'
// The warm pool (config.pool): machines made ahead of time with the
// provider's default create options, booted until SSH answers (so sshd is
// up, the image warm and the host key pinned), then suspended and tagged in
// their metadata.  create() claims one and resumes it instead of booting a
// new machine.  A claim holds the machine's lease while it re-reads and
// rewrites the tag, so two processes never claim the same machine; claimed
// machines are replaced in the background.  The pool lives in the Fly app,
// not in this process: another process with the same options finds its
// machines by their tag (`computesdk_pool=<pool key>`).
const crypto = require('crypto')
const api = require('./api')
const { flyError, abortError } = require('./errors')
const { FlyMachine } = require('./machine')
const { TAG, CREATE_ID, HOST_FP, SSH_USER, EDGE_TOKEN, URL_KEY, POOL, FILLING, DRAINING, metadataOf, isGone } = require('./metadata')
const lifecycle = require('./lifecycle')

const POOL_TAGS = [POOL, FILLING, DRAINING]
// A claim writes the tag within half of this after taking the lease, or
// gives the machine up: the lease must not lapse before the tag is gone.
const LEASE_TTL_S = 15
// What a claim does not take from the create request: the pool machine
// keeps its own create id, host key pin, SSH user and its edge token and
// URL key (in its files).
const OWN = new Set([CREATE_ID, HOST_FP, EDGE_TOKEN, URL_KEY, SSH_USER])
// Host-key pins of machines this process prepared, at most this many.
const PINS_LIMIT = 1024
// The SSH connection a machine was checked on is kept across its suspend
// (unused for at most this long), with its SFTP channel open, so that a
// claim in this process runs its first command without a new handshake.
// After the resume it is probed with a stat on that channel (a round trip,
// no process started in the machine), bounded by CLAIM_PROBE_MS; one that
// did not survive is replaced by a fresh connection.
const KEEP_MS = 30 * 60 * 1000
const CLAIM_PROBE_MS = 3000

const now = () => Number(process.hrtime.bigint()) / 1e6

// What makes two creates the same machine: everything in the request but
// its metadata and files (which carry per-sandbox keys and tags).
function shape (body) {
  const { metadata, files, ...rest } = body.config
  return JSON.stringify({ region: body.region, name: body.name, config: rest })
}

function isPoolMachine (m, key) {
  const md = metadataOf(m)
  return !isGone(m) && md[POOL] === key && md[TAG] === undefined
}

function shuffle (a) {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    const x = a[i]
    a[i] = a[j]
    a[j] = x
  }
  return a
}

// At most `limit` of fns running at once; resolves to their outcomes.
async function limited (limit, fns) {
  const out = new Array(fns.length)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, fns.length) }, async () => {
    while (next < fns.length) {
      const i = next++
      try {
        out[i] = { value: await fns[i]() }
      } catch (error) {
        out[i] = { error }
      }
    }
  }))
  return out
}

class Pool {
  constructor (ctx) {
    this.ctx = ctx
    this.opts = ctx.config.pool
    this._key = null
    this._shape = null
    this.claiming = new Set() // machine ids a claim of this process is trying
    this.pins = new Map() // machine id -> the host-key fingerprint generated here
    this.run = null // the top-up in progress: { promise, errors, created }
    this.again = false // claims happened while it ran: one more pass
    this.draining = 0
    this.counts = { claims: 0, misses: 0, incompatible: 0, created: 0, claimErrors: 0, fillErrors: 0, errors: 0 }
    this.lastError = null
    this.lastClaim = null
    this.ready = null // machines counted ready by the last pass or size()
  }

  get enabled () {
    return this.opts !== null
  }

  get size () {
    return this.opts ? this.opts.size : 0
  }

  // The pool key: a hash of the default request's shape, the app and the
  // SSH user (made on first use: it needs the client key).
  key () {
    if (this._key === null) {
      const { config } = this.ctx
      this._shape = shape(lifecycle.machineRequest(this.ctx, { timeout: 0 }).body)
      this._key = crypto.createHash('sha256').update(JSON.stringify(['v1', config.appName, config.sshUser, this._shape]))
        .digest('hex').slice(0, 16)
    }
    return this._key
  }

  // A claim fits when the request would make exactly the pool's machine
  // (same image, guest, region; no env, ports, name or lifetime) and its
  // metadata can be written as it is ('' would remove a key).
  compatible (body) {
    this.key()
    if (shape(body) !== this._shape) return false
    return Object.values(body.config.metadata).every((v) => v !== '')
  }

  report (err, kind) {
    this.counts[kind]++
    this.counts.errors++
    this.lastError = err
    const cb = this.opts && this.opts.onError
    if (cb) {
      try {
        cb(err)
      } catch {
        // a throwing callback must not become an unhandled error
      }
    }
  }

  params (id) {
    return { app: this.ctx.config.appName, machine: id }
  }

  async list (query) {
    try {
      return (await api.call(this.ctx.config, 'machine.list', { app: this.ctx.config.appName }, { query })).body || []
    } catch (err) {
      if (err.code === 'FLY_NOT_FOUND') return [] // no app yet
      throw err
    }
  }

  async listReady () {
    const key = this.key()
    const ms = await this.list({ [`metadata.${POOL}`]: key, state: 'suspended' })
    return ms.filter((m) => isPoolMachine(m, key) && m.state === 'suspended')
  }

  // ---- claims

  // create()'s hook: a started sandbox from the pool, or null (then create
  // makes a new machine).  body is the request create built.  Rejects only
  // with create's AbortError.
  async claim (body, o, step) {
    if (!this.enabled) return null
    if (!this.compatible(body)) {
      this.counts.incompatible++
      return null
    }
    const t0 = now()
    let ready
    try {
      ready = await step(this.listReady())
    } catch (err) {
      if (err.name === 'AbortError') throw err
      this.report(err, 'claimErrors')
      return null
    }
    const listMs = now() - t0
    for (const m of shuffle(ready)) {
      if (this.claiming.has(m.id)) continue // another create of this process has it
      const got = await this.claimOne(m.id, body, o, step)
      if (got) {
        this.counts.claims++
        this.lastClaim = { listMs, ...got.times, totalMs: now() - t0 }
        this.topUp()
        return got.result
      }
    }
    this.counts.misses++
    this.topUp()
    return null
  }

  // Claims machine id: lease, re-read under it, untag, start, release,
  // wait until started, SSH.  null when it is not to be had (leased by
  // someone else, gone, claimed already) or failed (then it is destroyed).
  async claimOne (id, body, o, step) {
    const { ctx } = this
    const { config, transport } = ctx
    const signal = o.signal
    const params = this.params(id)
    const key = this.key()
    const times = {}
    let t = now()
    const lap = (name) => { const n = now(); times[name] = n - t; t = n }
    let nonce = null
    let releasing = null
    let claimed = false
    this.claiming.add(id)
    try {
      // The lease and the metadata write are not raced with the signal:
      // each is short, and one that lands after an abort must be known.
      try {
        const r = await api.call(config, 'machine.lease.acquire', params, {
          body: { ttl: LEASE_TTL_S, description: 'computesdk pool claim' }
        })
        nonce = r.body && r.body.data && r.body.data.nonce
        if (!nonce) throw flyError('FLY_BAD_RESPONSE', `lease on ${id} came without a nonce`)
      } catch (err) {
        if (err.code === 'FLY_CONFLICT' || err.code === 'FLY_NOT_FOUND') return null
        throw err
      }
      const leasedAt = Date.now()
      lap('leaseMs')
      if (signal && signal.aborted) throw abortError(signal, 'create')
      const m = await api.getMachine(config, params, { required: true })
      lap('getMs')
      if (!isPoolMachine(m, key) || m.state !== 'suspended') return null
      if (Date.now() - leasedAt > LEASE_TTL_S * 500) return null
      if (signal && signal.aborted) throw abortError(signal, 'create')
      const patch = {}
      for (const [k, v] of Object.entries(body.config.metadata)) if (!OWN.has(k)) patch[k] = v
      patch[POOL] = null
      claimed = true
      try {
        await api.call(config, 'machine.metadata.update', params, { body: { metadata: patch } })
      } catch (err) {
        // A 4xx was not applied (bad user metadata, say): it is still a
        // pool machine.  Anything else may have been: it is ours.
        if (err.status >= 400 && err.status < 500) claimed = false
        throw err
      }
      lap('metadataMs')
      const metadata = { ...m.config.metadata }
      for (const [k, v] of Object.entries(patch)) {
        if (v === null) delete metadata[k]
        else metadata[k] = v
      }
      if (signal && signal.aborted) throw abortError(signal, 'create')
      const started = (await api.call(config, 'machine.start', params, { leaseNonce: nonce })).body || {}
      lap('startMs')
      // The tag is gone: nobody else claims it now.  Release while it
      // resumes (destroy, if it must, needs the lease gone too).
      releasing = this.release(id, nonce)
      nonce = null
      await lifecycle.waitStarted(config, params.app, id, step)
      await releasing
      lap('waitMs')
      let info = { ...m, state: 'started', config: { ...m.config, metadata } }
      if (started.migrated) info = await api.getMachine(config, params, { step, required: true })
      const sb = new FlyMachine(ctx, { ...info, app: params.app }, this.pins.get(id) || metadata[HOST_FP])
      if (o.waitForSsh !== false) {
        const kept = transport.kept(ctx, sb.sandboxId)
        try {
          await step(kept ? transport.probe(sb, { timeoutMs: CLAIM_PROBE_MS }) : transport.check(sb))
        } catch (err) {
          if (!kept || err.name === 'AbortError') throw err
          await transport.close(ctx, sb.sandboxId)
          await step(transport.check(sb))
        }
      }
      lap('sshMs')
      this.pins.delete(id)
      return { result: { sandbox: sb, sandboxId: sb.sandboxId }, times }
    } catch (err) {
      if (nonce) {
        await this.release(id, nonce)
        nonce = null
      }
      if (releasing) await releasing // destroy's calls would meet the lease
      if (claimed) {
        // Claimed but not usable: it is nobody's sandbox, remove it.
        await lifecycle.destroy(ctx, `${params.app}:${id}`).catch((e) => this.report(e, 'claimErrors'))
      }
      if (err.name === 'AbortError') throw err
      this.report(err, 'claimErrors')
      return null
    } finally {
      if (nonce) await this.release(id, nonce)
      this.claiming.delete(id)
    }
  }

  // Never rejects: a lease that cannot be released lapses at its TTL.
  release (id, nonce) {
    return api.call(this.ctx.config, 'machine.lease.release', this.params(id), { leaseNonce: nonce })
      .then(() => {}, (err) => { if (err.code !== 'FLY_NOT_FOUND') this.report(err, 'claimErrors') })
  }

  // ---- filling

  // Starts a top-up in the background unless one runs (then it makes one
  // more pass when done).  Its errors go to onError and the counts, never
  // to an unhandled rejection; it holds no timer, only its API calls.
  topUp () {
    if (!this.enabled || this.size === 0 || this.draining) return null
    if (this.run) {
      this.again = true
      return this.run
    }
    const run = { errors: [], created: 0, promise: null }
    run.promise = (async () => {
      do {
        this.again = false
        try {
          await this.fillPass(run)
        } catch (err) {
          run.errors.push(err)
          this.report(err, 'fillErrors')
        }
      } while (this.again && !this.draining && run.errors.length === 0)
    })().finally(() => { if (this.run === run) this.run = null })
    this.run = run
    return run
  }

  // One pass: count what is ready or being prepared, make what is missing.
  async fillPass (run) {
    const { config } = this.ctx
    const key = this.key()
    await lifecycle.ensureApp(this.ctx)
    const [ready, filling] = await Promise.all([
      this.listReady(),
      this.list({ [`metadata.${FILLING}`]: key })
    ])
    // A machine still tagged FILLING long after any preparation would have
    // ended belongs to a process that died mid-way: remove it.
    const staleMs = 2 * config.startTimeoutMs + 2 * config.connectTimeoutMs + 120000
    const live = []
    const stale = []
    for (const m of filling) {
      if (isGone(m)) continue
      const age = Date.now() - Date.parse(m.created_at)
      if (age > staleMs) stale.push(m)
      else live.push(m)
    }
    this.ready = ready.length
    // Connections kept to machines that are no longer in the pool (claimed
    // by another process) are closed.
    const ids = new Set([...ready, ...filling].map((m) => m.id))
    for (const id of [...this.pins.keys()]) {
      if (!ids.has(id) && !this.claiming.has(id)) {
        this.pins.delete(id)
        await this.ctx.transport.close(this.ctx, `${config.appName}:${id}`)
      }
    }
    const need = Math.max(0, this.size - ready.length - live.length)
    const fns = [
      ...stale.map((m) => () => lifecycle.destroy(this.ctx, `${config.appName}:${m.id}`)),
      ...Array.from({ length: need }, () => async () => {
        await this.fillOne()
        run.created++
        this.ready++
      })
    ]
    for (const r of await limited(this.opts.concurrency, fns)) {
      if (r.error) {
        run.errors.push(r.error)
        this.report(r.error, 'fillErrors')
      }
    }
  }

  // One pool machine: created with the default request, booted until SSH
  // answers, suspended, then tagged ready.  A failure destroys it.
  async fillOne () {
    const { ctx } = this
    const { config, transport } = ctx
    const app = config.appName
    const { body, createId, hostFingerprint } = lifecycle.machineRequest(ctx, { timeout: 0 })
    const md = body.config.metadata
    delete md[TAG]
    md[FILLING] = this.key()
    let id = null
    try {
      const created = await api.call(config, 'machine.create', { app }, { body, createId, createIdKey: CREATE_ID })
      id = created.body.id
      const params = this.params(id)
      await lifecycle.waitStarted(config, app, id, (p) => p)
      const m = await api.getMachine(config, params, { required: true })
      const sb = new FlyMachine(ctx, { ...m, app }, hostFingerprint)
      await transport.check(sb, { keepMs: KEEP_MS })
      await transport.probe(sb) // opens the SFTP channel the claim's probe uses
      await api.call(config, 'machine.suspend', params)
      await api.waitState(config, params, 'suspended', { version: m.instance_id || m.version, timeoutMs: 60000 })
      this.pins.set(id, hostFingerprint)
      if (this.pins.size > PINS_LIMIT) this.pins.delete(this.pins.keys().next().value)
      await api.call(config, 'machine.metadata.update', params, { body: { metadata: { [FILLING]: null, [POOL]: this.key() } } })
      this.counts.created++
      return id
    } catch (err) {
      if (id !== null) {
        this.pins.delete(id)
        await lifecycle.destroy(ctx, `${app}:${id}`).catch((e) => { err.destroyError = e })
      }
      err.message = `pool: preparing a machine failed: ${err.message}`
      throw err
    }
  }

  // ---- the public surface (provider.pool)

  // Fills the pool to its size and resolves when done; rejects with
  // FLY_POOL_FILL_FAILED (errors, cause) when a machine could not be made.
  async fill () {
    if (!this.enabled || this.size === 0) return { created: 0, ready: this.size === 0 ? 0 : this.ready }
    if (this.draining) throw flyError('FLY_POOL_DRAINING', 'pool: fill() while drain() runs')
    let run = this.run
    if (run) {
      // The pass under way may have counted before machines were claimed.
      this.again = true
      await run.promise
    }
    run = this.topUp()
    await run.promise
    if (run.errors.length > 0) {
      throw flyError('FLY_POOL_FILL_FAILED', `pool: ${run.errors.length} machine(s) could not be prepared: ${run.errors[0].message}`,
        { errors: run.errors, cause: run.errors[0], created: run.created })
    }
    return { created: run.created, ready: this.ready }
  }

  // Destroys the pool's machines (ready and being prepared; with
  // { all: true } every pool machine of the app, whatever its key), after
  // this process's top-up has finished.  A machine leased by a claim right
  // now is left to it.  Rejects with FLY_POOL_DRAIN_FAILED (errors) when
  // some could not be destroyed.
  async drain (options) {
    const all = !!(options && options.all)
    const { config } = this.ctx
    this.draining++
    try {
      if (this.run) await this.run.promise
      const key = all ? null : this.key()
      // The pool key a machine of this drain carries (ready, being
      // prepared, or left by an earlier drain), or undefined.
      const keyOf = (m) => {
        const md = metadataOf(m)
        if (isGone(m) || md[TAG] !== undefined) return undefined
        const k = POOL_TAGS.map((t) => md[t]).find((v) => v !== undefined)
        return key === null || k === key ? k : undefined
      }
      const seen = new Set()
      const ms = (key === null
        ? await this.list({})
        : (await Promise.all(POOL_TAGS.map((t) => this.list({ [`metadata.${t}`]: key })))).flat()
      ).filter((m) => keyOf(m) !== undefined && !seen.has(m.id) && seen.add(m.id))
      let skipped = 0
      const outcomes = await limited(4, ms.map((m) => async () => {
        const params = this.params(m.id)
        let nonce
        // A machine an earlier drain took out of the pool is nobody's to
        // claim: a lease on it is that drain's, left when its release
        // failed, and lapses within LEASE_TTL_S, so wait that out.
        const until = keyOf(m) !== undefined && m.config.metadata[DRAINING] !== undefined
          ? Date.now() + (LEASE_TTL_S + 2) * 1000
          : 0
        for (let delay = 500; nonce === undefined; delay = Math.min(delay * 2, 4000)) {
          try {
            nonce = (await api.call(config, 'machine.lease.acquire', params, { body: { ttl: LEASE_TTL_S, description: 'computesdk pool drain' } })).body.data.nonce
          } catch (err) {
            if (err.code === 'FLY_NOT_FOUND') return false
            if (err.code !== 'FLY_CONFLICT') throw err
            if (Date.now() + delay > until) { skipped++; return false }
            await new Promise((resolve) => setTimeout(resolve, delay))
          }
        }
        let ours
        try {
          const cur = await api.getMachine(config, params, { required: true })
          ours = keyOf(cur)
          if (ours !== undefined) {
            await api.call(config, 'machine.metadata.update', params, { body: { metadata: { [POOL]: null, [FILLING]: null, [DRAINING]: ours } } })
          }
        } finally {
          await this.release(m.id, nonce)
        }
        if (ours === undefined) return false
        this.pins.delete(m.id)
        await lifecycle.destroy(this.ctx, `${config.appName}:${m.id}`)
        return true
      }))
      const errors = outcomes.filter((r) => r.error).map((r) => r.error)
      const destroyed = outcomes.filter((r) => r.value === true).length
      this.ready = null
      if (errors.length > 0) {
        throw flyError('FLY_POOL_DRAIN_FAILED', `pool: ${errors.length} machine(s) could not be destroyed: ${errors[0].message}`,
          { errors, cause: errors[0], destroyed, skipped })
      }
      return { destroyed, skipped }
    } finally {
      this.draining--
    }
  }

  // Resolves once no top-up runs in this process (never rejects: its
  // errors went to onError).
  async settled () {
    while (this.run) await this.run.promise
  }

  // How many ready machines the pool has now (listed from the API).
  async count () {
    const n = (await this.listReady()).length
    this.ready = n
    return n
  }

  stats () {
    return {
      size: this.size,
      key: this._key,
      ready: this.ready,
      filling: this.run !== null,
      ...this.counts,
      lastError: this.lastError,
      lastClaim: this.lastClaim
    }
  }

  // provider.pool: what users call.
  api () {
    return Object.freeze({
      fill: () => this.fill(),
      warm: () => this.fill(),
      drain: (options) => this.drain(options),
      size: () => this.count(),
      settled: () => this.settled(),
      stats: () => this.stats()
    })
  }
}

module.exports = { Pool, LEASE_TTL_S }
