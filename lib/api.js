'use strict'
// The Machines API calls the provider makes, on the native client.
const native = require('./native')
const { requireToken } = require('./config')

function call (config, op, params, extra) {
  const req = {
    baseUrl: config.baseUrl,
    token: requireToken(config),
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

module.exports = { call }
