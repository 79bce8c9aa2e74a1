'use strict'
// /v1/apps/:app/machines/:id/lease: acquire (ttl in the body or ?ttl=),
// refresh with the nonce, get, release. Writes to a leased machine need the
// nonce (checkLease in ../http.js).
const ids = require('../ids')
const { E, isObject, isoSeconds, liveMachine } = require('../http')

const LEASE_OWNER = 'fly-local@tokens.fly.io'
const PATH = '/v1/apps/:app/machines/:id/lease'

function newLease (ttlS, description = '') {
  return {
    nonce: ids.nonce(),
    expires_at: Math.floor(Date.now() / 1000) + ttlS,
    owner: LEASE_OWNER,
    description,
    version: ids.ulid()
  }
}

const envelope = (l) => ({
  status: 'success',
  data: { nonce: l.nonce, expires_at: l.expires_at, owner: l.owner, description: l.description, version: l.version }
})

function routes (route, { store }) {
  route('GET', PATH, ({ params }) => {
    const l = liveMachine(store, params.app, params.id).leaseValid()
    if (!l) throw E.notFound('lease')
    return [200, envelope(l)]
  })

  route('POST', PATH, ({ req, params, query, body }) => {
    const m = liveMachine(store, params.app, params.id)
    if (body != null && !isObject(body)) throw E.bad('invalid request body')
    const b = body || {}
    let ttl = b.ttl != null ? b.ttl : query.get('ttl')
    ttl = ttl == null || ttl === '' ? 30 : Number(ttl)
    if (!Number.isInteger(ttl) || ttl < 1) throw E.bad('ttl must be a positive number of seconds')
    const held = m.leaseValid()
    const given = req.headers['fly-machine-lease-nonce']
    if (held && given !== held.nonce) {
      throw E.aborted(`lease currently held by ${held.owner}, expires at ${isoSeconds(held.expires_at * 1000)}`)
    }
    if (!held && given) throw E.notFound('lease')
    if (held) {
      held.expires_at = Math.floor(Date.now() / 1000) + ttl
      if (b.description != null) held.description = String(b.description)
      return [201, envelope(held)]
    }
    m.lease = newLease(ttl, b.description != null ? String(b.description) : '')
    return [201, envelope(m.lease)]
  })

  route('DELETE', PATH, ({ req, params }) => {
    const m = liveMachine(store, params.app, params.id)
    const given = req.headers['fly-machine-lease-nonce']
    if (!given) throw E.bad('fly-machine-lease-nonce header is required')
    const held = m.leaseValid()
    if (!held || held.nonce !== given) throw E.notFound('lease')
    m.lease = null
    return [200, { status: 'success', data: { ok: true } }]
  })
}

module.exports = { routes, newLease }
