'use strict'
// pause / resume, and waking a paused sandbox when it is used.
//
// pause({ keepMemory = true }) suspends the machine (memory, processes and
// files kept) or, with keepMemory: false, stops it (only the volume is
// kept; the metadata flag PAUSED set first makes its status 'paused', not
// 'stopped').  resume() starts it, waits for `started`, then for sshd to
// answer on a new connection (a suspend cuts TCP connections, on Fly and in
// fly-local), and clears the flag.  Both are idempotent.
//
// Wake on use: every command and file call goes through awake() (the
// transport is wrapped in context.js), and getUrl calls ensureAwake().  Only
// a paused machine is woken (suspended, or stopped with the flag, which the
// idle watch sets too); one that crashed or that someone else stopped stays
// FLY_MACHINE_NOT_RUNNING.  A sandbox known or likely to be paused (its last known state, or no call
// for as long as its idleTimeout) is checked first; a connect that fails
// because the machine is paused resumes it and the call is made again (a
// failed connect never ran anything).  Concurrent calls share one resume.
const api = require('./api')
const { flyError, invalidArg } = require('./errors')
const { PAUSED, IDLE_MS, AUTO_RESUME, isGone, isPausedMachine } = require('./metadata')
const urls = require('./urls')

const AT_REST = new Set(['stopped', 'suspended', 'failed', 'created'])

function machineApi (sb, op, extra, params) {
  return api.call(sb._ctx.config, op, { ...sb._params, ...params }, extra)
}

async function current (sb) {
  const m = await api.getMachine(sb._ctx.config, sb._params)
  if (isGone(m)) throw flyError('FLY_NOT_FOUND', `sandbox ${sb.sandboxId} no longer exists${m ? ` (${m.state})` : ''}`)
  sb._update({ ...m, app: sb.appName })
  return m
}

// Waits (lib/api.js waitState) until the machine is in `state` or one of
// `also`, read through current() between slices.  Resolves with the
// machine (or { state }); rejects at `timeoutMs` with `code`, and at once
// when the machine failed.
async function waitState (sb, state, { version, timeoutMs, code, also = [] }) {
  const m = await api.waitState(sb._ctx.config, sb._params, state, {
    version,
    timeoutMs,
    read: () => current(sb),
    seen: (m) => {
      if (also.includes(m.state)) return true
      if (m.state === 'failed') {
        throw flyError('FLY_MACHINE_FAILED', `sandbox ${sb.sandboxId} failed while waiting for ${state}`, { state: m.state })
      }
      return false
    },
    timeout: (m) => flyError(code, `sandbox ${sb.sandboxId} did not become ${state} within ${timeoutMs} ms (it is ${m.state})`,
      { state: m.state })
  })
  sb.state = m.state
  return m
}

function setPausedFlag (sb, value) {
  return machineApi(sb, 'machine.metadata.set', { body: { value } }, { key: PAUSED })
}

async function clearPausedFlag (sb) {
  try {
    await machineApi(sb, 'machine.metadata.delete', undefined, { key: PAUSED })
  } catch (err) {
    if (err.code !== 'FLY_NOT_FOUND') throw err
  }
  delete sb.metadata[PAUSED]
}

function pauseOptions (options) {
  if (options === undefined || options === null) return { keepMemory: true }
  if (typeof options !== 'object') throw invalidArg('pause: options must be an object')
  const k = options.keepMemory
  if (k !== undefined && typeof k !== 'boolean') throw invalidArg('pause: keepMemory must be a boolean')
  return { keepMemory: k !== false }
}

async function pause (sb, options) {
  const { keepMemory } = pauseOptions(options)
  const ctx = sb._ctx
  const { config, state } = ctx
  if (state.destroyed.has(sb.sandboxId)) throw flyError('FLY_NOT_FOUND', `sandbox ${sb.sandboxId} was destroyed`)
  // A resume in flight finishes first: pausing under it would race it.
  const inFlight = state.resuming.get(sb.sandboxId)
  if (inFlight) await inFlight.catch(() => {})
  let m = await current(sb)
  if (isPausedMachine(m)) return markPaused(sb)
  if (m.state === 'suspending') {
    await waitState(sb, 'suspended', { timeoutMs: config.startTimeoutMs, code: 'FLY_PAUSE_TIMEOUT', also: ['stopped'] })
    return markPaused(sb)
  }
  if (m.state === 'created' || m.state === 'starting' || m.state === 'restarting') {
    await waitState(sb, 'started', { timeoutMs: config.startTimeoutMs, code: 'FLY_PAUSE_TIMEOUT' })
    m = await current(sb)
  }
  if (m.state === 'stopped' || m.state === 'stopping') {
    // At rest already (it exited, or is stopping): it is paused from now on.
    await setPausedFlag(sb, '1')
    sb.metadata[PAUSED] = '1'
    return markPaused(sb)
  }
  if (m.state !== 'started') {
    throw flyError('FLY_MACHINE_NOT_RUNNING', `sandbox ${sb.sandboxId} is ${m.state}; it cannot be paused`, { state: m.state })
  }
  // Our session would only be cut by the suspend: close it first.
  await ctx.transport.close(ctx, sb.sandboxId)
  if (keepMemory) {
    await machineApi(sb, 'machine.suspend')
    // Fly may fall back to a stop when a machine cannot be suspended.
    m = await waitState(sb, 'suspended', { timeoutMs: config.startTimeoutMs, code: 'FLY_PAUSE_TIMEOUT', also: ['stopped'] })
    if (m.state === 'stopped') {
      await setPausedFlag(sb, '1')
      sb.metadata[PAUSED] = '1'
    }
  } else {
    // The flag first, so that no one sees a 'stopped' sandbox on the way.
    await setPausedFlag(sb, '1')
    sb.metadata[PAUSED] = '1'
    try {
      await machineApi(sb, 'machine.stop', { body: { signal: 'SIGTERM', timeout: '10s' } })
      await waitState(sb, 'stopped', {
        version: m.instance_id || m.version, timeoutMs: config.startTimeoutMs, code: 'FLY_PAUSE_TIMEOUT'
      })
    } catch (err) {
      // Still running: it is not paused.
      const now = await current(sb).catch(() => null)
      if (now && now.state === 'started') await clearPausedFlag(sb).catch(() => {})
      throw err
    }
  }
  return markPaused(sb)
}

function markPaused (sb) {
  sb._ctx.state.paused.add(sb.sandboxId)
}

// Shared by every caller for one sandbox at a time.
function resume (sb) {
  const { state } = sb._ctx
  let p = state.resuming.get(sb.sandboxId)
  if (!p) {
    p = doResume(sb).finally(() => state.resuming.delete(sb.sandboxId))
    state.resuming.set(sb.sandboxId, p)
  }
  return p
}

async function doResume (sb) {
  const ctx = sb._ctx
  const { config, state } = ctx
  if (state.destroyed.has(sb.sandboxId)) throw flyError('FLY_NOT_FOUND', `sandbox ${sb.sandboxId} was destroyed`)
  let m = await current(sb)
  const flagged = sb.metadata[PAUSED] !== undefined
  if (m.state === 'started' && !flagged && !state.paused.has(sb.sandboxId)) return
  if (m.state === 'suspending') {
    m = await waitState(sb, 'suspended', { timeoutMs: config.startTimeoutMs, code: 'FLY_RESUME_TIMEOUT', also: ['stopped'] })
  } else if (m.state === 'stopping') {
    m = await waitState(sb, 'stopped', { version: m.instance_id || m.version, timeoutMs: config.startTimeoutMs, code: 'FLY_RESUME_TIMEOUT' })
  }
  const fromStop = m.state === 'stopped'
  if (AT_REST.has(m.state)) await machineApi(sb, 'machine.start')
  if (m.state !== 'started') {
    await waitState(sb, 'started', { timeoutMs: config.startTimeoutMs, code: 'FLY_RESUME_TIMEOUT' })
  }
  // The old connection did not survive the pause, and after a stop the
  // root (with any key authorized through exec) was reset.
  await ctx.transport.close(ctx, sb.sandboxId)
  await ctx.transport.raw.check(sb)
  // a stop reset the root filesystem: the URL key and public list again
  // (also after a wake by a request, which resume() finds started)
  if (fromStop || flagged) await urls.syncAfterStart(sb)
  if (flagged) await clearPausedFlag(sb)
  state.paused.delete(sb.sandboxId)
  state.lastUse.set(sb.sandboxId, Date.now())
}

function autoResume (sb) {
  const v = sb.metadata[AUTO_RESUME]
  if (v === '0') return false
  if (v === '1') return true
  return sb._ctx.config.autoResume
}

// Might the machine have paused since this provider last used it?  Its
// last known state says so, or it has an idle timeout and has had no call
// from us for that long (the idle watch counts from when the last
// connection closed, which is later still).
function mayBePaused (sb) {
  const { state } = sb._ctx
  if (state.paused.has(sb.sandboxId)) return true
  if (sb.state !== 'started') return true
  const idle = Number(sb.metadata[IDLE_MS]) || 0
  if (idle <= 0 || state.inFlight.get(sb.sandboxId) > 0) return false
  const last = Math.max(state.lastUse.get(sb.sandboxId) || 0, sb._seenAt || 0)
  return Date.now() - last >= idle
}

function notRunning (sb, m) {
  const paused = isPausedMachine(m)
  return flyError('FLY_MACHINE_NOT_RUNNING',
    `sandbox ${sb.sandboxId} is ${paused ? 'paused' : m.state} (${m.state}), not running` +
    (paused ? '; resume() it, or leave autoResume on' : ''), { state: m.state, paused })
}

// Before a call: a sandbox that may be paused is read, and resumed (or
// refused, with autoResume off).
async function ensureAwake (sb) {
  if (!mayBePaused(sb)) return
  const { state } = sb._ctx
  const m = await current(sb)
  if (m.state === 'started') {
    // Woken by someone else (another process, Fly proxy's autostart).
    state.paused.delete(sb.sandboxId)
    if (sb.metadata[PAUSED] !== undefined) await clearPausedFlag(sb).catch(() => {})
    return
  }
  if (m.state === 'starting' || m.state === 'restarting') return resume(sb)
  // Only a paused machine is woken: one that crashed or was stopped by
  // someone else stays an error, as before.
  if (!isPausedMachine(m) || !autoResume(sb)) throw notRunning(sb, m)
  await resume(sb)
}

// Runs fn (one transport call) with the sandbox awake.
async function awake (sb, fn) {
  const { state } = sb._ctx
  await ensureAwake(sb)
  const id = sb.sandboxId
  state.inFlight.set(id, (state.inFlight.get(id) || 0) + 1)
  try {
    try {
      return await fn()
    } catch (err) {
      // A connect refused because it paused under us (the SSH transport
      // says FLY_MACHINE_NOT_RUNNING; the exec endpoint 412).
      if (!(err.code === 'FLY_MACHINE_NOT_RUNNING' || err.code === 'FLY_PRECONDITION') || !autoResume(sb)) throw err
      if (err.code === 'FLY_MACHINE_NOT_RUNNING' && !err.paused) throw err
      const m = await current(sb)
      if (!isPausedMachine(m)) throw err
      await resume(sb)
      return await fn()
    }
  } finally {
    const n = state.inFlight.get(id) - 1
    if (n > 0) state.inFlight.set(id, n)
    else state.inFlight.delete(id)
    state.lastUse.set(id, Date.now())
  }
}

// The transport's calls that manage the connection rather than use the
// sandbox: they never wake it (create's check comes before any use, close
// is pause's own, kept asks about this process only).
const CONTROL = new Set(['check', 'probe', 'close', 'kept'])

// The transport with every other call (each function of its interface,
// nested ones such as files.read too) made through awake(); `raw` is the
// transport itself (resume's own check uses it).
function wakeful (t) {
  const wrap = (obj, top) => {
    const out = {}
    for (const [k, v] of Object.entries(obj)) {
      if (typeof v === 'function') out[k] = top && CONTROL.has(k) ? v : (sb, ...args) => awake(sb, () => v(sb, ...args))
      else if (v !== null && typeof v === 'object') out[k] = wrap(v, false)
      else out[k] = v
    }
    return Object.freeze(out)
  }
  return Object.freeze({ ...wrap(t, true), raw: t })
}

module.exports = { pause, resume, ensureAwake, awake, wakeful, waitState, autoResume }
