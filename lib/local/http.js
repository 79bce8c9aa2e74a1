'use strict'
// What every fly-local route shares: Fly's error shape and texts, the JSON
// reply, the token check, capped body reading, query parsing, and the
// app/machine look-ups that answer 404 the way Fly does.
const crypto = require('crypto')

/* A JSON body is small (configs, lease and metadata requests): 1 MiB. The
   routes that carry payloads (exec's stdin, a machine config's files) take
   up to 64 MiB, the provider's output limit. */
const JSON_BODY_LIMIT = 1024 * 1024
const PAYLOAD_BODY_LIMIT = 64 * 1024 * 1024

class HttpError extends Error {
  /* body null: the reply has no body. close: end the connection after the
     reply, so an unread request body is never read. */
  constructor (status, error, extra, { close = false } = {}) {
    super(error)
    this.status = status
    this.body = error === null ? null : { error, ...(extra || {}) }
    this.close = close
  }
}

const E = {
  bad: (msg) => new HttpError(400, `invalid_argument: ${msg}`),
  notFound: (what) => new HttpError(404, `not_found: ${what} not found`),
  precondition: (msg) => new HttpError(412, `failed_precondition: ${msg}`),
  aborted: (msg) => new HttpError(409, `aborted: ${msg}`),
  unauthorised: () => new HttpError(401, 'Authenticate: token validation error', null, { close: true }),
  tooLarge: (limit) => new HttpError(413, `invalid_argument: request body too large (limit ${limit} bytes)`, null, { close: true })
}

function isObject (v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/* Fly's query booleans (Go's strconv.ParseBool, as far as clients use it). */
function truthy (v) {
  return v === 'true' || v === '1' || v === 't' || v === 'True'
}

function isoSeconds (ms) {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z')
}

/* `state=a,b&state=c` -> ['a', 'b', 'c'] */
function listParam (query, name) {
  return query.getAll(name).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean)
}

function send (res, status, body, headers = {}) {
  if (res.headersSent || res.destroyed) return
  const h = { 'fly-request-id': res.flyRequestId, ...headers }
  if (body === null || body === undefined) {
    res.writeHead(status, { ...h, 'content-length': 0 })
    res.end()
    return
  }
  const data = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body))
  res.writeHead(status, { ...h, 'content-type': 'application/json; charset=utf-8', 'content-length': data.length })
  res.end(data)
}

/* `Bearer T` or `FlyV1 T[,T2...]`, compared in constant time. */
function authorised (req, token) {
  const h = req.headers.authorization
  if (!h) return false
  const m = /^\s*(Bearer|FlyV1)\s+(.+?)\s*$/i.exec(h)
  if (!m) return false
  const want = Buffer.from(token)
  return m[2].split(',').some((t) => {
    const got = Buffer.from(t.trim())
    return got.length === want.length && crypto.timingSafeEqual(got, want)
  })
}

/* The request body, at most limit bytes: a declared length over the limit
   is refused before a byte is read, a longer stream as soon as it passes it. */
function readBody (req, res, limit) {
  const declared = Number(req.headers['content-length'])
  if (declared > limit) return Promise.reject(E.tooLarge(limit))
  /* the client waits for this before it sends the body (Expect: 100-continue) */
  if (/100-continue/i.test(req.headers.expect || '')) res.writeContinue()
  return new Promise((resolve, reject) => {
    const chunks = []
    let len = 0
    const onData = (c) => {
      len += c.length
      if (len > limit) {
        req.off('data', onData)
        req.pause()
        reject(E.tooLarge(limit))
        return
      }
      chunks.push(c)
    }
    req.on('data', onData)
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

function parseJson (raw) {
  if (!raw.length) return undefined
  try {
    return JSON.parse(raw.toString('utf8'))
  } catch (e) {
    throw new HttpError(400, `invalid_argument: invalid JSON body: ${e.message}`)
  }
}

function findApp (store, name) {
  const app = store.apps.get(name)
  if (!app) throw E.notFound('app')
  return app
}

/* A machine of the app, destroyed ones included (they read `destroyed` for
   a grace period). */
function findMachine (store, appName, id) {
  const m = findApp(store, appName).machines.get(id)
  if (!m) throw E.notFound('machine')
  return m
}

/* A machine that can still be acted on. */
function liveMachine (store, appName, id) {
  const m = findMachine(store, appName, id)
  if (m.state === 'destroyed') throw E.notFound('machine')
  return m
}

/* Writes to a leased machine need the lease's nonce. */
function checkLease (m, req) {
  const lease = m.leaseValid()
  if (lease && req.headers['fly-machine-lease-nonce'] !== lease.nonce) {
    throw E.aborted(`machine ID ${m.id} lease currently held by ${lease.owner}, expires at ${isoSeconds(lease.expires_at * 1000)}`)
  }
}

/* Fly's list paging: ?cursor= (the base64url id of the last item seen)
   and ?limit= (1..1000); a cut list carries fly-next-cursor. */
function paginate (items, query) {
  let list = items
  const headers = {}
  const cursor = query.get('cursor')
  if (cursor) {
    const after = Buffer.from(cursor, 'base64url').toString()
    const i = list.findIndex((x) => x.id === after)
    if (i < 0) throw E.bad('invalid cursor')
    list = list.slice(i + 1)
  }
  const limitRaw = query.get('limit')
  if (limitRaw != null) {
    const limit = Number(limitRaw)
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw E.bad('limit must be between 1 and 1000')
    if (list.length > limit) {
      list = list.slice(0, limit)
      headers['fly-next-cursor'] = Buffer.from(list[list.length - 1].id).toString('base64url')
    }
  }
  return { list, headers }
}

module.exports = {
  HttpError,
  E,
  JSON_BODY_LIMIT,
  PAYLOAD_BODY_LIMIT,
  isObject,
  truthy,
  paginate,
  isoSeconds,
  listParam,
  send,
  authorised,
  readBody,
  parseJson,
  findApp,
  findMachine,
  liveMachine,
  checkLease
}
