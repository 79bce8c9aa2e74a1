'use strict'
// fly-local's HTTP side: a small router over the resource modules in
// routes/, and the dispatch every request goes through: fault injection,
// the token check (before any body is read), the capped body, the handler,
// Fly's error shape.
const fs = require('fs')
const path = require('path')
const ids = require('./ids')
const { HttpError, E, JSON_BODY_LIMIT, send, authorised, readBody, parseJson } = require('./http')
const { INTERNAL } = require('./api-socket')

const ROUTES_DIR = path.join(__dirname, 'routes')

/* Routes are path templates ('/v1/apps/:app/machines/:id'); a :name matches
   one path segment and arrives decoded in params.name. */
class Router {
  constructor () {
    this.routes = []
  }

  add (method, template, handler, opts = {}) {
    const names = []
    const source = template.split('/').map((seg) => {
      if (!seg.startsWith(':')) return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
      names.push(seg.slice(1))
      return '([^/]+)'
    }).join('/')
    this.routes.push({ method, pattern: new RegExp(`^${source}$`), names, handler, opts })
  }

  /* { route, params } for a match, else { methodSeen } (405 rather than 404). */
  match (method, pathname) {
    let methodSeen = false
    for (const r of this.routes) {
      const m = r.pattern.exec(pathname)
      if (!m) continue
      methodSeen = true
      if (r.method !== method) continue
      const params = {}
      r.names.forEach((n, i) => { params[n] = decodeURIComponent(m[i + 1]) })
      return { route: r, params }
    }
    return { methodSeen }
  }
}

/* Every module in routes/ registers its resource's routes: adding one (say
   volumes) is adding its file there. */
function loadRoutes (router, ctx) {
  const add = router.add.bind(router)
  for (const f of fs.readdirSync(ROUTES_DIR).filter((n) => n.endsWith('.js')).sort()) {
    require(path.join(ROUTES_DIR, f)).routes(add, ctx)
  }
}

/* Answers for an injected fault; false when the fault only adds latency. */
async function applyFault (fault, res) {
  if (fault.latencyMs) await new Promise((resolve) => setTimeout(resolve, fault.latencyMs))
  if (fault.drop) {
    res.socket.destroy()
    return true
  }
  if (!fault.status) return false
  const headers = {}
  if (fault.retryAfter != null) headers['retry-after'] = String(fault.retryAfter)
  send(res, fault.status, fault.body !== undefined ? fault.body : { error: `injected fault: status ${fault.status}` }, headers)
  return true
}

function createApi (ctx) {
  const { store, faults, token, stats } = ctx
  const router = new Router()
  loadRoutes(router, ctx)

  return async function handle (req, res) {
    stats.requests++
    res.flyRequestId = ids.requestId(store.region)
    try {
      const url = new URL(req.url, 'http://fly-local')
      const pathname = url.pathname.replace(/\/+$/, '') || '/'
      const fault = faults.take(req.method, pathname)
      if (fault && !fault.afterHandling && await applyFault(fault, res)) return
      const { route, params, methodSeen } = router.match(req.method, pathname)
      /* the token is checked before a byte of the body is read; a machine's
         own API socket (api-socket.js) is authenticated by who can reach it */
      if (!(route && route.opts.noAuth) && !req[INTERNAL] && !authorised(req, token)) throw E.unauthorised()
      if (!route) throw methodSeen ? new HttpError(405, 'method not allowed') : new HttpError(404, 'not_found: no route for this path')
      const body = parseJson(await readBody(req, res, route.opts.maxBody || JSON_BODY_LIMIT))
      const out = await route.handler({ req, res, url, query: url.searchParams, params, body })
      if (out === null) return /* the client went away */
      /* afterHandling: the request took effect, then its reply is lost */
      if (fault && fault.afterHandling && await applyFault(fault, res)) return
      send(res, out[0], out[1], out[2])
    } catch (e) {
      if (e instanceof HttpError) {
        /* a refused body is not read: close the connection instead */
        if (e.close && !res.headersSent) res.setHeader('connection', 'close')
        send(res, e.status, e.body)
      } else {
        if (!ctx.quiet) process.stderr.write(`fly-local: ${e && e.stack}\n`)
        send(res, 500, { error: `unknown: ${e && e.message}`, status: 'unknown' })
      }
    }
  }
}

module.exports = { createApi, Router }
