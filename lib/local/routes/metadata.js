'use strict'
// /v1/apps/:app/machines/:id/metadata: read all, merge (PATCH/PUT, guarded by
// machine_version), and per key get/set/delete. None of these makes a new
// machine version, and leases do not guard them (as on Fly). A change
// re-syncs the host's egress rules for the machine (machines.js).
const { E, isObject, liveMachine } = require('../http')

const ALL = '/v1/apps/:app/machines/:id/metadata'
const KEY = `${ALL}/:key`

function routes (route, { store }) {
  const machine = (params) => liveMachine(store, params.app, params.id)

  route('GET', ALL, ({ params }) => [200, { ...(machine(params).config.metadata || {}) }])

  /* null or '' deletes a key */
  const merge = async ({ params, body }) => {
    const m = machine(params)
    if (!isObject(body) || (body.metadata != null && !isObject(body.metadata))) throw E.bad('metadata must be an object')
    if (body.machine_version && body.machine_version !== m.version) {
      throw E.precondition(`machine version ${body.machine_version} does not match current version ${m.version}`)
    }
    const md = { ...(m.config.metadata || {}) }
    for (const [k, v] of Object.entries(body.metadata || {})) {
      if (v === null || v === '') delete md[k]
      else if (typeof v !== 'string') throw E.bad(`metadata value for ${k} must be a string`)
      else md[k] = v
    }
    m.config.metadata = md
    await m.syncEgress()
    return [204, null]
  }
  route('PATCH', ALL, merge)
  route('PUT', ALL, merge)

  route('GET', KEY, ({ params }) => {
    const md = machine(params).config.metadata || {}
    if (!Object.prototype.hasOwnProperty.call(md, params.key)) throw E.notFound('metadata key')
    return [200, { value: md[params.key] }]
  })

  route('POST', KEY, async ({ params, body }) => {
    const m = machine(params)
    if (!isObject(body) || typeof body.value !== 'string') throw E.bad('value must be a string')
    m.config.metadata = { ...(m.config.metadata || {}), [params.key]: body.value }
    await m.syncEgress()
    return [204, null]
  })

  route('DELETE', KEY, async ({ params }) => {
    const m = machine(params)
    const md = { ...(m.config.metadata || {}) }
    delete md[params.key]
    m.config.metadata = md
    await m.syncEgress()
    return [204, null]
  })
}

module.exports = { routes }
