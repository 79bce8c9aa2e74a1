'use strict'
// Sandbox lifecycle: create (its validation and the machine config),
// getById, list and destroy, on the Machines API.
const crypto = require('crypto')
const native = require('./native')
const api = require('./api')
const { requireToken, RANGES, optInt } = require('./config')
const { flyError, invalidArg, abortError } = require('./errors')
const { clientKey } = require('./keys')
const { validEnvName } = require('./exec')
const { checkKeys } = require('./options')
const { FlyMachine, parseSandboxId } = require('./machine')
const {
  RESERVED_PREFIX, TAG, CREATE_ID, HOST_FP, SSH_USER, RUNTIME, TIMEOUT_MS, FILES_DIR, VOLUME, metadataOf, isGone
} = require('./metadata')
const volumes = require('./volumes')
const idle = require('./idle')
const { checkPorts, createWith: createWithPorts } = require('./ports')
const edge = require('./edge')
const egress = require('./egress')
const urls = require('./urls')

function b64 (s) {
  return Buffer.from(s, 'utf8').toString('base64')
}

// Ensure the app exists (once per provider): GET, then create on 404.
function ensureApp (ctx) {
  const { config, state } = ctx
  if (!state.appReady) {
    state.appReady = (async () => {
      try {
        await api.call(config, 'app.get', { app: config.appName })
        return
      } catch (err) {
        if (err.code !== 'FLY_NOT_FOUND') throw err
      }
      try {
        const body = { app_name: config.appName, name: config.appName, org_slug: config.org }
        // a tenant's app is on its own network (named as the app)
        if (config.tenant) body.network = config.appName
        await api.call(config, 'app.create', null, { body })
      } catch (err) {
        if (err.code !== 'FLY_UNPROCESSABLE') throw err // 422: taken, i.e. it exists now
      }
    })()
    state.appReady.catch(() => { state.appReady = null })
  }
  return state.appReady
}

const GUARD_ENVS = new Set(['COMPUTESDK_TENANT', 'FLY_LOCAL_FIREWALL'])

// The first of keys (an option and its aliases) given, checked as fly()
// checks the option (RANGES[keys[0]]).
function pickInt (options, keys) {
  for (const k of keys) {
    const v = optInt(options, k, ...RANGES[keys[0]], 'create')
    if (v !== undefined) return v
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

// Every key create() takes.  Besides this provider's, ComputeSDK's
// CreateSandboxOptions names (its resource aliases, namespace, directory,
// ...) are taken so that code written for another provider runs; those
// with no meaning on Fly are ignored, as README says.
const CREATE_KEYS = new Set(['templateId', 'image', 'cpus', 'vcpus', 'cpu', 'memory', 'memoryMb', 'memoryMiB',
  'memMiB', 'envs', 'timeout', 'ports', 'metadata', 'runtime', 'name', 'region', 'signal', 'waitForSsh', 'volume',
  'snapshotId', 'fromSandbox', 'idleTimeout', 'idleAction', 'onIdle', 'keepMemory', 'autoResume', 'onTimeout',
  'provider', 'namespace', 'directory', 'cpuLimit', 'diskMiB', 'resources', 'launch_parameters',
  'deploymentPlan', 'size', 'vmTier', 'network', 'public'])

// Validates create's options and builds the POST /machines body, with the
// keys the machine gets.  Throws ERR_INVALID_ARG before anything is sent.
function machineRequest (ctx, o) {
  const { config } = ctx
  checkKeys(o, CREATE_KEYS, 'create')
  for (const k of ['templateId', 'image']) {
    if (o[k] !== undefined && o[k] !== null && (typeof o[k] !== 'string' || o[k] === '')) {
      throw invalidArg(`create: ${k} must be a non-empty string`)
    }
  }
  const image = o.templateId || o.image || config.image
  const cpus = pickInt(o, ['cpus', 'vcpus', 'cpu']) || config.cpus
  const memoryMb = pickInt(o, ['memoryMb', 'memory', 'memoryMiB', 'memMiB']) || config.memoryMb
  const envs = stringMap(o.envs, 'envs')
  for (const k of Object.keys(envs)) {
    if (!validEnvName(k)) throw invalidArg(`create: invalid environment variable name ${JSON.stringify(k)}`)
    // they turn the image's in-guest firewall off (docker/entrypoint.sh)
    if (GUARD_ENVS.has(k)) throw invalidArg(`create: environment variable ${k} is reserved`)
  }
  const timeout = o.timeout !== undefined ? optInt(o, 'timeout', ...RANGES.timeout, 'create') : config.timeout
  const ports = checkPorts(o.ports)
  const network = egress.check(o.network, 'create')
  urls.checkCreate(o)
  const userMetadata = stringMap(o.metadata, 'metadata')
  // The provider's own keys say which volume destroy removes, which ports
  // are the sandbox's, whether it is paused: never the caller's to set.
  for (const k of Object.keys(userMetadata)) {
    if (k.startsWith(RESERVED_PREFIX)) throw invalidArg(`create: metadata key ${JSON.stringify(k)} is reserved (computesdk_*)`)
  }

  const client = clientKey(ctx)
  const host = native.keygen()
  const createId = crypto.randomBytes(12).toString('hex')
  const metadata = {
    ...userMetadata,
    [TAG]: 'fly',
    [CREATE_ID]: createId,
    [HOST_FP]: host.fingerprint,
    [SSH_USER]: config.sshUser
  }
  if (o.runtime) metadata[RUNTIME] = String(o.runtime)
  if (timeout) metadata[TIMEOUT_MS] = String(timeout)

  const files = [
    { guest_path: `${FILES_DIR}/authorized_keys`, raw_value: b64(client.publicKey + '\n'), mode: 0o644 },
    { guest_path: `${FILES_DIR}/ssh_host_ed25519_key`, raw_value: b64(host.privateKey), mode: 0o600 }
  ]
  if (config.sshPassword) {
    files.push({ guest_path: `${FILES_DIR}/ssh_password`, raw_value: b64(config.sshPassword), mode: 0o600 })
  }
  const machineConfig = {
    image,
    guest: { cpu_kind: config.cpuKind, cpus, memory_mb: memoryMb },
    env: envs,
    files,
    metadata,
    restart: { policy: 'no' },
    auto_destroy: !!timeout
  }
  if (timeout) machineConfig.env.COMPUTESDK_SANDBOX_TIMEOUT_S = String(Math.ceil(timeout / 1000))
  // on its own network the org's 6PN is out of reach already
  if (config.tenant) machineConfig.env.COMPUTESDK_TENANT = config.tenant
  idle.apply(config, o, machineConfig, timeout)
  edge.apply(config, machineConfig)
  egress.apply(network, machineConfig)
  urls.apply(config, machineConfig, o)
  const body = { region: o.region || config.region, config: machineConfig }
  if (o.name !== undefined) body.name = String(o.name)
  return { body, createId, hostFingerprint: host.fingerprint, ports, network }
}

function checkSignal (signal) {
  if (signal === undefined || signal === null) return null
  if (typeof signal !== 'object' || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function') {
    throw invalidArg('create: signal must be an AbortSignal')
  }
  return signal
}

// p, or an AbortError as soon as the signal aborts (p then settles unheard).
function untilAborted (signal, p) {
  if (!signal) return p
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortError(signal, 'create'))
    if (signal.aborted) return onAbort()
    signal.addEventListener('abort', onAbort, { once: true })
    p.then((v) => {
      signal.removeEventListener('abort', onAbort)
      resolve(v)
    }, (err) => {
      signal.removeEventListener('abort', onAbort)
      reject(err)
    })
  })
}

// A machine boots in the background: long-poll until it is started (no
// fixed sleeps), in slices, so that one that fails to boot or stops at once
// is an error with its cause within a slice, not a time-out at
// startTimeoutMs.  (One state per wait: what Fly's API is known to take.)
const NOT_STARTING = new Set(['failed', 'stopped', 'suspended', 'destroying', 'destroyed'])

async function waitStarted (config, app, machine, step) {
  await api.waitState(config, { app, machine }, 'started', {
    timeoutMs: config.startTimeoutMs,
    step,
    seen: (m) => {
      if (!NOT_STARTING.has(m.state)) return false
      const ev = (m.events || []).find((e) => e.request && (e.request.error || e.request.exit_event))
      const why = ev ? (ev.request.error || `exit code ${ev.request.exit_event.exit_code}`) : 'no cause reported'
      throw flyError('FLY_MACHINE_FAILED', `machine ${machine} did not start: it is ${m.state} (${why})`, { state: m.state })
    },
    timeout: (m) => flyError('FLY_TIMEOUT', `machine ${machine} did not start within ${config.startTimeoutMs} ms (it is ${m.state})`,
      { state: m.state })
  })
}

// All or nothing: once the machine exists, any failure (and an abort at any
// stage) destroys it before create rejects, and the error names it.
async function create (ctx, options) {
  const { config, state, transport } = ctx
  const o = options || {}
  const signal = checkSignal(o.signal)
  if (signal && signal.aborted) throw abortError(signal, 'create')
  requireToken(config)
  const { body, createId, hostFingerprint, ports, network } = machineRequest(ctx, o)
  const step = (p) => untilAborted(signal, p)
  const app = config.appName
  let machineId = null
  let volumeId = null
  const run = async () => {
    await step(ensureApp(ctx))
    // The app's public addresses, for the edge path (once per provider).
    await step(edge.ensureIps(ctx, app))
    // The workspace volume (lib/volumes.js) is made before the machine that
    // mounts it; like the machine, not raced with the signal.
    const want = await step(volumes.plan(ctx, o))
    // A suspended machine from the warm pool when the request fits one
    // (lib/pool.js: the same machine request); a volume or public ports
    // are added after the request is built, so they never claim, nor does
    // an egress policy (a pooled machine booted without one) or public:
    // true (a file the pool machine lacks).
    if (!want && !(ports && ports.length) && !egress.restricts(network) && o.public !== true) {
      const pooled = await ctx.pool.claim(body, o, step)
      if (pooled) return pooled
    }
    if (want) volumeId = await volumes.make(ctx, want, body, createId)
    if (signal && signal.aborted) throw abortError(signal, 'create')
    // Not raced with the signal: the machine it makes must be known to be
    // removed, so an abort here takes effect when the reply is in.
    const make = () => createWithPorts(config, app, body, ports,
      () => api.call(config, 'machine.create', { app }, { body, createId, createIdKey: CREATE_ID }))
    // A tenant's app removed (with its last sandbox, by another process)
    // since ensureApp: made again, once.
    const created = await make().catch(async (err) => {
      if (!config.tenant || err.code !== 'FLY_NOT_FOUND' || want) throw err
      state.appReady = null
      await ensureApp(ctx)
      return make()
    })
    machineId = created.body.id
    if (signal && signal.aborted) throw abortError(signal, 'create')
    await waitStarted(config, app, machineId, step)
    const got = await api.getMachine(config, { app, machine: machineId }, { step, required: true })
    // The host key is the one generated above, whatever the reply says.
    const sb = new FlyMachine(ctx, { ...got, app }, hostFingerprint)
    // Connect now (retrying while sshd starts) so that the sandbox is known
    // to answer, with its host key checked, before create returns.
    if (o.waitForSsh !== false) await step(transport.check(sb))
    return { sandbox: sb, sandboxId: sb.sandboxId }
  }
  state.creates++
  const done = run().finally(() => { state.creates-- }).catch(async (err) => {
    if (machineId !== null) {
      err.machineId = machineId
      err.sandboxId = `${app}:${machineId}`
      try {
        await destroy(ctx, err.sandboxId) // and its volume
      } catch (e) {
        err.destroyError = e
      }
    } else if (volumeId !== null) {
      err.volumeId = volumeId
      await volumes.remove(config, app, volumeId, volumes.volumeName(createId)).catch((e) => { err.destroyError = e })
    }
    if (typeof err.message === 'string' && !err.message.startsWith('Failed to create')) {
      err.message = `Failed to create Fly.io sandbox: ${err.message}` +
        (err.destroyError ? `; machine ${err.sandboxId} could not be removed: ${err.destroyError.message}` : '')
    }
    throw err
  })
  if (options) state.creating.set(options, done)
  return done
}

async function getById (ctx, sandboxId) {
  const { app, machine } = parseSandboxId(sandboxId)
  const m = await api.getMachine(ctx.config, { app, machine })
  if (isGone(m)) return null
  const sb = new FlyMachine(ctx, { ...m, app })
  return { sandbox: sb, sandboxId: sb.sandboxId }
}

async function list (ctx) {
  const { config } = ctx
  let r
  try {
    r = await api.call(config, 'machine.list', { app: config.appName }, { query: { [`metadata.${TAG}`]: 'fly' } })
  } catch (err) {
    if (err.code === 'FLY_NOT_FOUND') return [] // no app yet: no sandboxes
    throw err
  }
  return (r.body || []).filter((m) => !isGone(m)).map((m) => {
    const sb = new FlyMachine(ctx, { ...m, app: config.appName })
    return { sandbox: sb, sandboxId: sb.sandboxId }
  })
}

// Stop, wait for the machine to be stopped, then delete (forced when it will
// not settle).  Idempotent: a sandbox that is already gone (404, destroyed)
// is destroyed; a machine that could not be removed is FLY_DESTROY_FAILED,
// with the API's error as `cause`.  The wait matters: stop returns while
// the machine is still stopping, and a delete then gets 412, so without it
// every destroy would end in a forced kill right after the stop signal.
async function destroy (ctx, sandboxId) {
  const { config, state, transport } = ctx
  let ids
  try {
    ids = parseSandboxId(sandboxId)
  } catch {
    return // names no machine: nothing to remove
  }
  const params = { app: ids.app, machine: ids.machine }
  state.destroyed.add(sandboxId)
  // { id, name }: the workspace volume, named after the machine's create id.
  let volume = state.orphanVolumes.get(sandboxId) || null
  try {
    await transport.close(ctx, sandboxId)
    const m = await api.getMachine(config, params, { required: true })
    const md = metadataOf(m)
    if (!volume && md[VOLUME] && md[CREATE_ID]) volume = { id: md[VOLUME], name: volumes.volumeName(md[CREATE_ID]) }
    if (isGone(m)) return await removeVolume(ctx, sandboxId, ids, volume)
    if (m.state === 'started' || m.state === 'starting') {
      await api.call(config, 'machine.stop', params, { body: { signal: 'SIGTERM', timeout: '5s' } })
      // Waiting for stopped needs the version; not stopped within the
      // bound is fine (the delete below is forced then).
      await api.waitState(config, params, 'stopped', { version: m.instance_id || m.version, timeoutMs: 10000 })
        .catch(() => {})
    }
    try {
      await api.call(config, 'machine.delete', params)
    } catch (err) {
      if (err.code !== 'FLY_PRECONDITION') throw err
      await api.call(config, 'machine.delete', params, { query: { force: 'true' } })
    }
    await removeVolume(ctx, sandboxId, ids, volume)
    await removeTenantApp(ctx, sandboxId, ids.app)
  } catch (err) {
    if (err.code === 'FLY_DESTROY_FAILED') throw err
    // Gone already (a volume whose removal failed before is finished now).
    if (err.code === 'FLY_NOT_FOUND') {
      await removeVolume(ctx, sandboxId, ids, volume)
      return removeTenantApp(ctx, sandboxId, ids.app)
    }
    // It still exists: calls on it are not refused as destroyed.
    state.destroyed.delete(sandboxId)
    throw flyError('FLY_DESTROY_FAILED', `could not destroy sandbox ${sandboxId}: ${err.message}`,
      { cause: err, sandboxId, machineId: ids.machine })
  }
}

// After the machine: its workspace volume, once released (bounded
// retries), and only a volume of the name create gave it; nothing else.
// A failure is FLY_DESTROY_FAILED naming the volume, which a later destroy
// in this process removes.
async function removeVolume (ctx, sandboxId, ids, volume) {
  if (!volume) return
  try {
    await volumes.remove(ctx.config, ids.app, volume.id, volume.name)
    ctx.state.orphanVolumes.delete(sandboxId)
  } catch (err) {
    ctx.state.orphanVolumes.set(sandboxId, volume)
    throw flyError('FLY_DESTROY_FAILED', `sandbox ${sandboxId} was removed but its volume ${volume.id} could not be: ${err.message}`,
      { cause: err, sandboxId, machineId: ids.machine, volumeId: volume.id })
  }
}

// a volume whose delete was answered may still be on its way out
const VOLUME_GONE = new Set(['destroying', 'destroyed', 'pending_destroy'])

// A tenant's app (config.tenant) goes with its last machine and volume, as
// create made it; not while a create of this provider is under way (one
// elsewhere that loses the race makes the app again); the warm pool's
// machines keep it, and its drain destroys them this way. A failure is
// FLY_DESTROY_FAILED naming the app; destroying the sandbox again retries.
async function removeTenantApp (ctx, sandboxId, app) {
  const { config, state } = ctx
  // a pool top-up is a create too (lib/pool.js)
  if (!config.tenant || app !== config.appName || state.creates > 0 || (ctx.pool && ctx.pool.run)) return
  try {
    const machines = (await api.call(config, 'machine.list', { app })).body || []
    if (machines.some((m) => !isGone(m))) return
    const vols = (await api.call(config, 'volume.list', { app })).body || []
    if (vols.some((v) => !VOLUME_GONE.has(v.state))) return
    state.appReady = null
    await api.call(config, 'app.delete', { app })
  } catch (err) {
    if (err.code === 'FLY_NOT_FOUND') return
    throw flyError('FLY_DESTROY_FAILED', `sandbox ${sandboxId} was removed but its tenant's app ${app} could not be: ${err.message}`,
      { cause: err, sandboxId, app })
  }
}

module.exports = { create, getById, list, destroy, machineRequest, waitStarted, ensureApp }
