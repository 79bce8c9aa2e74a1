'use strict'
// The Machines API calls the provider makes, on the native client.
const native = require('./native')
const { apiTarget } = require('./target')
const { flyError } = require('./errors')

function call (config, op, params, extra) {
  const { apiHostname, apiToken } = apiTarget(config)
  const req = {
    apiHostname,
    apiToken,
    op,
    params: params || {}
  }
  if (config.retry) req.retry = config.retry
  if (extra) {
    if (extra.query) req.query = toQuery(extra.query)
    if (extra.body !== undefined) req.body = typeof extra.body === 'string' ? extra.body : JSON.stringify(extra.body)
    for (const k of ['timeoutMs', 'waitTotalMs', 'createId', 'createIdKey', 'leaseNonce']) {
      if (extra[k] !== undefined) req[k] = extra[k]
    }
  }
  return native.api(req)
}

// { k: v | [v, ...] } -> [[k, v], ...] with string values.
function toQuery (q) {
  const out = []
  for (const [k, v] of Object.entries(q)) {
    if (v === undefined || v === null) continue
    for (const item of Array.isArray(v) ? v : [v]) out.push([k, String(item)])
  }
  return out
}

// GET one machine: its body, or null when the API has no such machine
// (404).  required: the 404 is thrown as it came (FLY_NOT_FOUND) instead.
// step: create's abort race (lib/lifecycle.js), when given.
async function getMachine (config, params, { step = same, required = false } = {}) {
  try {
    return (await step(call(config, 'machine.get', params))).body
  } catch (err) {
    if (required || err.code !== 'FLY_NOT_FOUND') throw err
    return null
  }
}

// One long-poll of the API's /wait for query.state, at most WAIT_SLICE_S
// and never much past `deadline`: the reply's body when the machine got
// there, null when the slice ran out.
const WAIT_SLICE_S = 5

async function waitSlice (config, params, query, deadline, step) {
  const sliceS = Math.max(1, Math.min(WAIT_SLICE_S, Math.ceil((deadline - Date.now()) / 1000)))
  try {
    const r = await step(call(config, 'machine.wait', params, {
      query: { ...query, timeout: sliceS },
      waitTotalMs: sliceS * 1000,
      timeoutMs: sliceS * 1000 + 15000
    }))
    return r.body || {}
  } catch (err) {
    if (err.code !== 'FLY_TIMEOUT') throw err
    return null
  }
}

// Waits until the machine is in `state` (with `version`: that instance's),
// long-polling the API's /wait in slices and reading the machine between
// them, so that one that went elsewhere (failed to boot, a suspend that
// fell back to a stop, a crash) answers within a slice, not at the
// deadline.  Each read is given to seen(m), which may throw to end the
// wait or return true to end it with m.  Resolves with { state } (the wait
// reached it) or the machine read; rejects at timeoutMs with timeout(m).
// read: how the machine is read (default: GET, a 404 thrown).
async function waitState (config, params, state, opts) {
  const { version, timeoutMs, step = same, seen = () => false } = opts
  const read = opts.read || (() => getMachine(config, params, { step, required: true }).then((m) => m || {}))
  const timeout = opts.timeout || ((m) => flyError('FLY_TIMEOUT',
    `machine ${params.machine} did not become ${state} within ${timeoutMs} ms (it is ${m.state})`, { state: m.state }))
  const deadline = Date.now() + timeoutMs
  const query = version ? { state, version } : { state }
  for (;;) {
    const got = await waitSlice(config, params, query, deadline, step)
    // The reply says which state it reached (no second read needed).
    if (got) return { state: got.state || state }
    const m = await read()
    if (m.state === state || seen(m)) return m
    if (Date.now() >= deadline) throw timeout(m)
  }
}

function same (p) {
  return p
}

module.exports = { call, getMachine, waitState }
