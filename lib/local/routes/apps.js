'use strict'
// /v1/apps: create (idempotent with idempotency_key, optionally on a custom
// private `network`), get, list by org with cursor pagination, delete (which
// destroys the app's machines).
const { E, HttpError, isObject, findApp } = require('../http')

const APP_NAME = /^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$|^[a-z0-9]$/
/* Fly's custom private network name (`network` at create). The machine
   runtime reads it as machine.app.network to keep networks apart, so it is
   held to a DNS label like an app name. */
const NETWORK_NAME = APP_NAME

function routes (route, ctx) {
  const { store } = ctx

  route('GET', '/v1/apps', ({ query }) => {
    const org = query.get('org_slug')
    if (!org) throw E.bad('org_slug is required')
    const apps = [...store.apps.values()].filter((a) => a.org === org).sort((a, b) => a.createdAt - b.createdAt)
    let start = 0
    const cursor = query.get('cursor')
    if (cursor) {
      start = Number(Buffer.from(cursor, 'base64url').toString())
      if (!Number.isInteger(start) || start < 0) throw E.bad('invalid cursor')
    }
    const body = { total_apps: apps.length }
    const limitRaw = query.get('limit')
    if (limitRaw != null) {
      const limit = Number(limitRaw)
      if (!Number.isInteger(limit) || limit < 1 || limit > 5000) throw E.bad('limit must be between 1 and 5000')
      body.apps = apps.slice(start, start + limit).map((a) => store.appJSON(a))
      if (start + limit < apps.length) body.next_cursor = Buffer.from(String(start + limit)).toString('base64url')
    } else {
      body.apps = apps.slice(start).map((a) => store.appJSON(a))
    }
    return [200, body]
  })

  route('POST', '/v1/apps', ({ body }) => {
    if (!isObject(body)) throw E.bad('invalid request body')
    const name = body.name || body.app_name
    if (typeof name !== 'string' || !name) throw E.bad('app name is required')
    if (!APP_NAME.test(name)) {
      throw new HttpError(422, 'validation failed: Name can only contain lowercase letters, numbers and dashes')
    }
    if (body.network != null && (typeof body.network !== 'string' || (body.network !== '' && !NETWORK_NAME.test(body.network)))) {
      throw E.bad('network must be a name of lowercase letters, numbers and dashes')
    }
    const org = body.org_slug || 'personal'
    if (body.idempotency_key) {
      const prev = store.idempotency.get(body.idempotency_key)
      if (prev) {
        if (prev.name !== name) throw new HttpError(422, 'validation failed: idempotency key was used for another app name')
        if (store.apps.get(prev.name) === prev) return [201, { ...store.appJSON(prev), created_at: prev.createdAt }]
      }
    }
    if (store.apps.has(name)) {
      throw new HttpError(422, 'validation failed: Name has already been taken', { status: 'name_taken' })
    }
    const app = store.createApp({ name, org, network: body.network || undefined })
    if (body.idempotency_key) store.idempotency.set(body.idempotency_key, app)
    return [201, { ...store.appJSON(app), created_at: app.createdAt }]
  })

  route('GET', '/v1/apps/:app', ({ params }) => [200, store.appJSON(findApp(store, params.app))])

  route('DELETE', '/v1/apps/:app', ({ params }) => {
    ctx.track(store.destroyApp(findApp(store, params.app)))
    return [202, null]
  })
}

module.exports = { routes }
