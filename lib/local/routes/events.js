'use strict'
// GET /v1/apps/:app/machines/:id/events: the machine's events, newest first
// (?limit=, at most 50).
const { E, findMachine } = require('../http')

function routes (route, { store }) {
  route('GET', '/v1/apps/:app/machines/:id/events', ({ params, query }) => {
    const m = findMachine(store, params.app, params.id)
    let limit = 20
    const l = query.get('limit')
    if (l != null) {
      limit = Number(l)
      if (!Number.isInteger(limit) || limit < 1) throw E.bad('invalid limit')
      limit = Math.min(limit, 50)
    }
    return [200, m.events.slice(0, limit)]
  })
}

module.exports = { routes }
