'use strict'
// Idle auto-suspend and the lifetime's end, as create sets them up.  The
// mechanism is inside the machine, so that it works with no provider
// process alive: the image's idle watch (docker/) counts inbound TCP
// connections and, after COMPUTESDK_IDLE_TIMEOUT_MS without one, suspends
// (or stops, COMPUTESDK_IDLE_ACTION) its own machine through the Machines
// API socket Fly gives every machine (/.fly/api).  COMPUTESDK_ON_TIMEOUT=
// pause makes the lifetime `timeout` pause instead of ending the machine
// (and the machine is then not auto_destroy).  So that an idle provider
// does not hold the machine awake, its SSH connection to a sandbox with
// an idle timeout closes after min(5 s, idleTimeout / 2) unused (ssh.js).
const { idleAction, onTimeout, RANGES, optInt, optBool } = require('./config')
const { invalidArg } = require('./errors')
const { IDLE_MS, AUTO_RESUME, ON_TIMEOUT } = require('./metadata')

const MIN_IDLE_MS = 1000
// onIdle: the hook's deadline when none is given, and the longest allowed.
const HOOK_MS = 10000
const HOOK_MAX_MS = 300000

// create's onIdle: a shell command (or { command, timeoutMs }) the idle
// watch runs as the sandbox user before the idle action, killed at its
// deadline (docker/idle-watch).
function onIdleEnv (o, env) {
  if (o.onIdle === undefined || o.onIdle === null) return
  const h = typeof o.onIdle === 'string' ? { command: o.onIdle } : o.onIdle
  if (typeof h !== 'object' || typeof h.command !== 'string' || h.command === '' || h.command.includes('\0')) {
    throw invalidArg('create: onIdle must be a shell command or { command, timeoutMs }')
  }
  const ms = h.timeoutMs === undefined ? HOOK_MS : h.timeoutMs
  if (!Number.isInteger(ms) || ms < 1 || ms > HOOK_MAX_MS) {
    throw invalidArg(`create: onIdle.timeoutMs must be an integer from 1 to ${HOOK_MAX_MS}`)
  }
  env.COMPUTESDK_ON_IDLE = h.command
  env.COMPUTESDK_ON_IDLE_TIMEOUT_MS = String(ms)
}

// Adds the env, metadata and auto_destroy for create's options `o` to the
// machine config `mc` (its lifetime `timeout` already resolved).
function apply (config, o, mc, timeout) {
  let idle = optInt(o, 'idleTimeout', ...RANGES.idleTimeout, 'create')
  if (idle === undefined) idle = config.idleTimeout
  if (idle > 0 && idle < MIN_IDLE_MS) idle = MIN_IDLE_MS
  const action = idleAction(o, 'create') || config.idleAction || 'suspend'
  const onEnd = onTimeout(o, 'create') || config.onTimeout || 'destroy'
  const autoResume = optBool(o, 'autoResume', undefined, 'create')
  if (autoResume !== undefined) mc.metadata[AUTO_RESUME] = autoResume ? '1' : '0'
  if (idle > 0) {
    onIdleEnv(o, mc.env)
    mc.env.COMPUTESDK_IDLE_TIMEOUT_MS = String(idle)
    mc.metadata[IDLE_MS] = String(idle)
  }
  if (idle > 0 || (timeout && onEnd === 'pause')) mc.env.COMPUTESDK_IDLE_ACTION = action
  if (timeout && onEnd === 'pause') {
    mc.env.COMPUTESDK_ON_TIMEOUT = 'pause'
    mc.metadata[ON_TIMEOUT] = 'pause'
    mc.auto_destroy = false
  }
}

// How long the provider keeps an unused SSH connection to this sandbox.
function sessionIdleMs (sb) {
  const idle = Number(sb.metadata[IDLE_MS]) || 0
  return idle > 0 ? Math.max(200, Math.min(5000, Math.floor(idle / 2))) : undefined
}

module.exports = { apply, sessionIdleMs }
