'use strict'
// Fault injection for tests: per route or machine, add latency, answer with
// a status (and Retry-After) for the next N requests, or drop the connection;
// with afterHandling the request takes effect first and only its reply is
// replaced (a lost reply, for testing that clients do not repeat it blindly).

class Faults {
  constructor () {
    this.rules = []
    this.seq = 0
  }

  add (spec = {}) {
    if (spec.path != null && typeof spec.path !== 'string' && !(spec.path instanceof RegExp)) {
      throw new TypeError('faults.add: path must be a string prefix or a RegExp')
    }
    if (spec.status != null && !(Number.isInteger(spec.status) && spec.status >= 100 && spec.status <= 599)) {
      throw new RangeError('faults.add: status must be an HTTP status code')
    }
    const times = spec.times == null ? 1 : spec.times
    if (!(times === Infinity || (Number.isInteger(times) && times > 0))) {
      throw new RangeError('faults.add: times must be a positive integer or Infinity')
    }
    const id = ++this.seq
    this.rules.push({
      id,
      method: spec.method ? String(spec.method).toUpperCase() : null,
      path: spec.path == null ? null : spec.path,
      machine: spec.machine || null,
      status: spec.status || null,
      retryAfter: spec.retryAfter == null ? null : spec.retryAfter,
      body: spec.body,
      latencyMs: spec.latencyMs || 0,
      drop: !!spec.drop,
      afterHandling: !!spec.afterHandling,
      remaining: times,
      hits: 0
    })
    return id
  }

  remove (id) {
    this.rules = this.rules.filter((r) => r.id !== id)
  }

  clear () {
    this.rules = []
  }

  list () {
    return this.rules.map((r) => ({ ...r }))
  }

  /* The first rule matching the request, consumed once; or null. */
  take (method, pathname) {
    for (const r of this.rules) {
      if (r.method && r.method !== method) continue
      if (r.path != null) {
        if (typeof r.path === 'string' ? !pathname.startsWith(r.path) : !r.path.test(pathname)) continue
      }
      if (r.machine && !new RegExp(`/machines/${r.machine}(/|$)`).test(pathname)) continue
      r.hits++
      if (r.remaining !== Infinity && --r.remaining <= 0) this.remove(r.id)
      return r
    }
    return null
  }
}

module.exports = { Faults }
