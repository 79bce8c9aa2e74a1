'use strict'
// The Machines API calls the provider makes, on the native client.
const native = require('./native')
const { apiTarget } = require('./target')

function call (config, op, params, extra) {
  const { baseUrl, token } = apiTarget(config)
  const req = {
    baseUrl,
    token,
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

// One long-poll of the API's /wait for query.state, at most WAIT_SLICE_S
// and never much past `deadline`: the reply's body when the machine got
// there, null when the slice ran out (callers read the machine between
// slices, so that one that went elsewhere answers within a slice).
const WAIT_SLICE_S = 5

async function waitSlice (config, params, query, deadline, step = (p) => p) {
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

module.exports = { call, waitSlice }
