'use strict'
// /v1/apps/:app/ip_assignments: the app's public addresses, in Fly's shapes
// (list { ips: [IPAssignment] }, create -> AssignIPResponse, delete 204).
// fly-local's edge serves every app on its one listen address (edge.js), so
// these are records, not routes: each assignment gets a documentation
// address (192.0.2.0/24, 2001:db8::/32), a shared_v4 the same one for every
// app, as Fly's shared IPv4 is.
const crypto = require('crypto')
const { E, HttpError, isObject, findApp } = require('../http')

const TYPES = new Set(['v4', 'v6', 'shared_v4', 'private_v6', 'egress_v4', 'egress_v6', 'egress_pair'])
const SHARED_V4 = '192.0.2.1'

function address (type) {
  if (type === 'shared_v4') return SHARED_V4
  if (type === 'v4' || type === 'egress_v4') return `192.0.2.${crypto.randomInt(2, 255)}`
  const hex = () => crypto.randomBytes(2).toString('hex').replace(/^0+(?=.)/, '')
  return `2001:db8:${hex()}:${hex()}::${hex()}`
}

function routes (route, ctx) {
  const { store } = ctx
  const ipsOf = (app) => {
    if (!app.ips) app.ips = []
    return app.ips
  }

  route('GET', '/v1/apps/:app/ip_assignments', ({ params }) => {
    const app = findApp(store, params.app)
    return [200, { ips: ipsOf(app).map((ip) => ({ ...ip })) }]
  })

  route('POST', '/v1/apps/:app/ip_assignments', ({ params, body }) => {
    const app = findApp(store, params.app)
    if (!isObject(body)) throw E.bad('invalid request body')
    if (!TYPES.has(body.type)) throw E.bad(`type must be one of ${[...TYPES].join(', ')}`)
    if (body.type === 'egress_pair' || body.type === 'egress_v4' || body.type === 'egress_v6') {
      throw new HttpError(422, 'egress addresses are not emulated by fly-local')
    }
    const ips = ipsOf(app)
    if (body.type === 'shared_v4' && ips.some((x) => x.shared)) {
      throw new HttpError(422, 'app already has a shared IPv4 address')
    }
    const rec = {
      ip: address(body.type),
      region: typeof body.region === 'string' && body.region ? body.region : 'global',
      created_at: new Date().toISOString(),
      shared: body.type === 'shared_v4',
      egress: false,
      service_name: typeof body.service_name === 'string' ? body.service_name : '',
      network: body.type === 'private_v6'
        ? { name: typeof body.network === 'string' ? body.network : '', org_slug: app.org }
        : null
    }
    ips.push(rec)
    return [200, { ...rec }]
  })

  route('DELETE', '/v1/apps/:app/ip_assignments/:ip', ({ params }) => {
    const app = findApp(store, params.app)
    const ips = ipsOf(app)
    const i = ips.findIndex((x) => x.ip === params.ip)
    if (i < 0) throw E.notFound(`ip ${params.ip}`)
    ips.splice(i, 1)
    return [204, null]
  })
}

module.exports = { routes }
