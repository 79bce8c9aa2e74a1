'use strict'
// The Machines API calls the provider makes, on the native client.
const native = require('./native')

function call (ctx, op, params, extra) {
  const req = {
    baseUrl: ctx.baseUrl,
    token: ctx.requireToken(),
    op,
    params: params || {}
  }
  if (ctx.retry) req.retry = ctx.retry
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
