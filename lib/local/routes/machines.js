'use strict'
// /v1/apps/:app/machines: list, create, get, update, destroy, the lifecycle
// verbs (start, stop, suspend, restart, signal, wait, cordon), versions, ps
// and memory. The state rules they enforce are Fly's; the transitions
// themselves are Machine's (../machines.js).
const fs = require('fs')
const ids = require('../ids')
const {
  E, HttpError, PAYLOAD_BODY_LIMIT, isObject, truthy, listParam,
  findApp, findMachine, liveMachine, checkLease, paginate
} = require('../http')
const { parseDuration, signalName, parseImage, SIGNALS, STOP_SIGNALS } = require('../machines')
const { validateConfig, normaliseConfig } = require('../machine-config')
const { newLease } = require('./leases')
const { REGION_CODES } = require('./platform')

const WAIT_STATES = new Set(['started', 'stopped', 'suspended', 'destroyed', 'failed', 'settled'])
const SETTLED = new Set(['started', 'stopped', 'suspended', 'failed', 'destroyed'])
const AT_REST = ['stopped', 'suspended', 'failed', 'created']
const BASE = '/v1/apps/:app/machines'
const ONE = `${BASE}/:id`

/* A restart's ?timeout= is a Go duration or plain seconds. */
function restartTimeout (to) {
  return to && /^\d+$/.test(to) ? `${to}s` : to
}

function listMachines (store, { params, query }) {
  const app = findApp(store, params.app)
  const includeDeleted = truthy(query.get('include_deleted'))
  const region = query.get('region')
  const states = listParam(query, 'state')
  const meta = []
  for (const [k, v] of query) if (k.startsWith('metadata.')) meta.push([k.slice(9), v])
  let list = [...app.machines.values()].filter((m) => {
    if (m.state === 'destroyed' && !includeDeleted) return false
    if (region && m.region !== region) return false
    if (states.length && !states.includes(m.state)) return false
    const md = m.config.metadata || {}
    return meta.every(([k, v]) => md[k] === v)
  })
  list.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
  const page = paginate(list, query)
  list = page.list
  const headers = page.headers
  const summary = truthy(query.get('summary'))
  const includeLease = truthy(query.get('include_leases'))
  return [200, list.map((m) => m.toJSON({ summary, includeLease })), headers]
}

async function createMachine (store, { params, body }) {
  const app = findApp(store, params.app)
  if (!isObject(body)) throw E.bad('invalid request body')
  validateConfig(body.config)
  if (body.region != null && body.region !== '' && !REGION_CODES.has(body.region)) {
    throw E.bad(`region ${JSON.stringify(body.region)} not found`)
  }
  if (body.name != null && typeof body.name !== 'string') throw E.bad('name must be a string')
  if (body.lease_ttl != null && !(Number.isInteger(body.lease_ttl) && body.lease_ttl > 0)) {
    throw E.bad('lease_ttl must be a positive number of seconds')
  }
  /* config.mounts: the volumes must be the app's, free, and in the
     machine's region (a machine with no region goes to its volume's) */
  const mounts = body.config.mounts || []
  const first = mounts.length && store.volumes.get(app.name, mounts[0].volume)
  const region = body.region || (first ? first.region : undefined)
  const claim = store.volumes.claim(app.name, mounts, region || store.region, null, (st, msg) => new HttpError(st, msg))
  const config = normaliseConfig(body.config)
  if (config.mounts) config.mounts = store.volumes.normaliseMounts(app.name, config.mounts)
  let m
  try {
    /* the public ports are bound before the machine exists (409 when taken) */
    const done = store.proxy ? await store.proxy.claim(app.name, body.config) : () => {}
    try {
      m = await store.createMachine(app, { ...body, config, region })
    } finally {
      done()
    }
  } catch (e) {
    claim.release()
    throw e
  }
  claim.commit(m.id)
  let nonce
  if (body.lease_ttl) {
    m.lease = newLease(body.lease_ttl)
    nonce = m.lease.nonce
  }
  const json = m.toJSON({ nonce })
  if (!body.skip_launch) {
    m.launching = true
    m.enqueue(() => m.boot())
  }
  return [200, json]
}

function getMachine (store, { params, query }) {
  const m = findMachine(store, params.app, params.id)
  const v = query.get('version')
  if (v && v !== m.version) {
    const old = m.versions.find((x) => x.version === v)
    if (!old) throw E.notFound('machine version')
    return [200, { ...m.toJSON({}), version: v, instance_id: v, state: 'replaced', config: old.user_config }]
  }
  return [200, m.toJSON({ includeLease: truthy(query.get('include_leases')) })]
}

/* The new config's public ports are bound first (409 when taken), then the
   update applies at once, with every check. */
async function updateMachine (store, rq) {
  const m = findMachine(store, rq.params.app, rq.params.id)
  if (m.state === 'destroyed' || m.state === 'destroying') throw E.notFound('machine')
  if (!isObject(rq.body)) throw E.bad('invalid request body')
  validateConfig(rq.body.config)
  const done = store.proxy ? await store.proxy.claim(m.app.name, rq.body.config) : () => {}
  try {
    return applyUpdate(store, rq)
  } finally {
    done()
  }
}

function applyUpdate (store, { req, params, body }) {
  const m = findMachine(store, params.app, params.id)
  if (m.state === 'destroyed' || m.state === 'destroying') throw E.notFound('machine')
  if (!isObject(body)) throw E.bad('invalid request body')
  checkLease(m, req)
  if (body.current_version && body.current_version !== m.version) {
    throw new HttpError(409, `aborted: machine ${m.id} version ${body.current_version} is not the current version ${m.version}`)
  }
  validateConfig(body.config)
  if (body.region && body.region !== m.region) throw E.bad('cannot change the region of a machine')
  const wasStarted = m.state === 'started' || m.state === 'starting' || m.launching
  const claim = store.volumes.claim(m.app.name, body.config.mounts || [], m.region, m.id, (st, msg) => new HttpError(st, msg))
  claim.commit(m.id)
  m.config = normaliseConfig(body.config)
  if (m.config.mounts) m.config.mounts = store.volumes.normaliseMounts(m.app.name, m.config.mounts)
  m.version = ids.ulid()
  m.versions.unshift({ version: m.version, user_config: m.config })
  m.imageRef = parseImage(m.config.image)
  if (body.name) m.name = body.name
  m.launching = false
  m.setState('updating')
  m.addEvent('update', 'updating', 'user')
  const json = m.toJSON({})
  m.enqueue(() => m.updateNow(wasStarted, !!body.skip_launch))
  /* a volume this config dropped is free once the old boot is gone */
  m.enqueue(() => store.volumes.detachUnused(m))
  return [200, json]
}

function destroyMachine (ctx, { req, params, query }) {
  const m = liveMachine(ctx.store, params.app, params.id)
  checkLease(m, req)
  const force = truthy(query.get('force')) || truthy(query.get('kill'))
  const atRest = AT_REST.includes(m.state) && !m.launching
  if (!force && !atRest) {
    throw E.precondition('unable to destroy machine, not currently stopped, suspended, failed or created')
  }
  if (m.state === 'destroying') return [200, { ok: true }]
  m.launching = false
  if (force && m.run) m.run.kill()
  m.setState('destroying')
  ctx.track(m.enqueue(() => m.destroyNow()))
  return [200, { ok: true }]
}

function startMachine (store, { req, params }) {
  const m = liveMachine(store, params.app, params.id)
  checkLease(m, req)
  const prev = m.state
  const started = [200, { previous_state: prev, migrated: false, new_host: '' }]
  if (m.launching) throw E.precondition("unable to start machine from current state: 'created'")
  if (prev === 'started' || prev === 'starting') return started
  if (prev === 'updating' || prev === 'replacing') throw E.precondition('machine getting replaced, refusing to start')
  if (!AT_REST.includes(prev)) throw E.precondition(`unable to start machine from current state: '${prev}'`)
  m.requestStart()
  return started
}

function stopMachine (store, { req, params, body }) {
  const m = liveMachine(store, params.app, params.id)
  /* Fly's Go decoder texts, which clients see */
  if (Array.isArray(body)) throw new HttpError(400, 'json: cannot unmarshal array into Go value of type main.stopRequest')
  if (body != null && !isObject(body)) throw new HttpError(400, 'json: cannot unmarshal into Go value of type main.stopRequest')
  checkLease(m, req)
  const b = body || {}
  if (b.signal != null && !signalName(b.signal, STOP_SIGNALS)) throw E.bad(`invalid signal ${JSON.stringify(b.signal)}`)
  if (b.timeout != null && parseDuration(b.timeout) == null) throw E.bad(`invalid timeout ${JSON.stringify(b.timeout)}`)
  if (m.state === 'created' || m.launching) throw E.precondition("unable to stop machine from current state: 'created'")
  if (m.state === 'stopped' || m.state === 'failed') return [200, { ok: true }]
  if (!['started', 'starting', 'suspended', 'stopping', 'updating'].includes(m.state)) {
    throw E.precondition(`unable to stop machine from current state: '${m.state}'`)
  }
  m.requestStop(b.signal, b.timeout)
  return [200, { ok: true }]
}

function suspendMachine (store, { req, params }) {
  const m = liveMachine(store, params.app, params.id)
  checkLease(m, req)
  if (m.state === 'suspended') return [200, { ok: true }]
  if (m.state !== 'started') throw E.precondition(`unable to suspend machine from current state: '${m.state}'`)
  m.requestSuspend()
  return [200, { ok: true }]
}

function restartMachine (store, { req, params, query }) {
  const m = liveMachine(store, params.app, params.id)
  checkLease(m, req)
  const sig = query.get('signal')
  if (sig && !signalName(sig, STOP_SIGNALS)) throw E.bad(`invalid signal ${JSON.stringify(sig)}`)
  const to = restartTimeout(query.get('timeout'))
  if (to && parseDuration(to) == null) throw E.bad(`invalid timeout ${JSON.stringify(query.get('timeout'))}`)
  if (m.state !== 'started') throw E.precondition(`unable to restart machine from current state: '${m.state}'`)
  const { signal, timeoutMs } = m.stopParams(sig, to)
  m.setState('restarting')
  m.addEvent('restart', 'restarting', 'user')
  m.enqueue(async () => {
    await m.stopNow(signal, timeoutMs)
    m.retries = 0
    await m.boot()
  })
  return [200, { ok: true }]
}

function signalMachine (store, { params, body }) {
  const m = liveMachine(store, params.app, params.id)
  if (!isObject(body)) throw E.bad('signal is required')
  const sig = signalName(body.signal, SIGNALS)
  if (!sig) throw E.bad(`invalid signal ${JSON.stringify(body.signal)}`)
  if (m.state !== 'started' || !m.run) throw E.precondition(`unable to signal machine in state '${m.state}'`)
  m.run.signalMain(sig)
  return [200, { ok: true }]
}

/* Answers when the machine reaches one of the states (event driven), 408 at
   the timeout; nothing when the client goes away first. */
async function waitMachine (store, { params, query, res }) {
  const m = findMachine(store, params.app, params.id)
  const states = listParam(query, 'state')
  if (!states.length) states.push('started')
  for (const s of states) if (!WAIT_STATES.has(s)) throw E.bad(`invalid state ${JSON.stringify(s)}`)
  let timeoutS = 60
  const t = query.get('timeout')
  if (t != null && t !== '') {
    const ms = /^-?\d+$/.test(t) ? Number(t) * 1000 : parseDuration(t)
    if (ms == null || ms < 1000 || ms > 60000) throw E.bad('timeout must be between 1 and 60 seconds')
    timeoutS = ms / 1000
  }
  const version = query.get('version') || query.get('instance_id')
  if (states.includes('stopped') && !version) throw E.bad('instance_id required when waiting for stopped machine')
  if (version && version !== m.version) {
    if (m.versions.some((v) => v.version === version)) {
      throw E.precondition(`machine ${m.id} version ${version} currently replaced`)
    }
    throw E.notFound('machine version')
  }
  if (m.state === 'destroyed' && !states.includes('destroyed') && !states.includes('settled')) throw E.notFound('machine')
  const matches = (s) => states.includes(s) || (states.includes('settled') && SETTLED.has(s))
  const { promise, cancel } = m.waitFor(timeoutS * 1000, matches)
  const onClose = () => cancel('closed')
  res.once('close', onClose)
  const r = await promise
  res.off('close', onClose)
  if (r === 'closed') return null
  if (r === 'timeout') {
    throw new HttpError(408, `deadline_exceeded: machine failed to reach desired state, ${states.join(', ')}, currently ${m.state}`)
  }
  if (r === 'gone') throw E.notFound('machine')
  return [200, { ok: true, state: r.state, version: m.version, event_id: m.lastEventId }]
}

function machineMemory (store, { params }) {
  const m = liveMachine(store, params.app, params.id)
  const limit = (m.config.guest && m.config.guest.memory_mb) || 256
  let used = 0
  const cg = m.run && m.run.cg && m.run.cg.memory
  if (cg) {
    try { used = Number(fs.readFileSync(`${cg}/memory.usage_in_bytes`, 'utf8')) / 1048576 } catch (_) { /* no reading */ }
  }
  return [200, { limit_mb: limit, available_mb: Math.max(0, Math.round(limit - used)) }]
}

function routes (route, ctx) {
  const { store } = ctx
  const payload = { maxBody: PAYLOAD_BODY_LIMIT }
  route('GET', BASE, (rq) => listMachines(store, rq))
  route('POST', BASE, (rq) => createMachine(store, rq), payload)
  route('GET', ONE, (rq) => getMachine(store, rq))
  route('POST', ONE, (rq) => updateMachine(store, rq), payload)
  route('DELETE', ONE, (rq) => destroyMachine(ctx, rq))
  route('POST', `${ONE}/start`, (rq) => startMachine(store, rq))
  route('POST', `${ONE}/stop`, (rq) => stopMachine(store, rq))
  route('POST', `${ONE}/suspend`, (rq) => suspendMachine(store, rq))
  route('POST', `${ONE}/restart`, (rq) => restartMachine(store, rq))
  route('POST', `${ONE}/signal`, (rq) => signalMachine(store, rq))
  route('GET', `${ONE}/wait`, (rq) => waitMachine(store, rq))
  route('GET', `${ONE}/memory`, (rq) => machineMemory(store, rq))

  route('GET', `${ONE}/versions`, ({ params }) => {
    const m = liveMachine(store, params.app, params.id)
    return [200, m.versions.map((v) => ({ version: v.version, user_config: v.user_config }))]
  })

  route('GET', `${ONE}/ps`, ({ params }) => {
    const m = liveMachine(store, params.app, params.id)
    if (m.state !== 'started' || !m.run) throw E.precondition(`machine ${m.id} is not started (currently ${m.state})`)
    return [200, m.run.ps()]
  })

  for (const [verb, value] of [['cordon', true], ['uncordon', false]]) {
    route('POST', `${ONE}/${verb}`, ({ req, params }) => {
      const m = liveMachine(store, params.app, params.id)
      checkLease(m, req)
      m.cordoned = value
      return [200, { ok: true }]
    })
  }
}

module.exports = { routes }
