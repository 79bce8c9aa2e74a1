'use strict'
// The in-machine Machines API socket, /.fly/api, as Fly's init serves it:
// a unix socket per machine, on the host, bind-mounted into the machine.
// Its requests are authenticated implicitly as the machine's own app. It is
// owned by the machine's root (host uid ID_BASE, see container.js) with mode
// 0600, so the sandbox user (uid 1000 inside) cannot connect, and it is
// reachable only through that bind mount (the host directory holding it is
// not in the machine's mount namespace).
//
// fly-local allows a narrower subset than Fly's socket: what a machine needs
// to manage itself (get, wait, stop, suspend, metadata of this machine);
// anything else is 403.
const fs = require('fs')
const http = require('http')
const { ID_BASE } = require('./image')
const { send } = require('./http')
const ids = require('./ids')

/* api.js skips the token check for requests carrying it */
const INTERNAL = Symbol('fly-local in-machine request')
const MAX_CONNECTIONS = 16

/* [method, path below /v1/apps/:app/machines/:id] allowed on the socket */
const ALLOWED = [
  ['GET', ''], ['GET', '/wait'], ['POST', '/stop'], ['POST', '/suspend'],
  ['GET', '/metadata'], ['PATCH', '/metadata'], ['PUT', '/metadata'],
  ['GET', '/metadata/*'], ['POST', '/metadata/*'], ['DELETE', '/metadata/*']
]

function segments (pathname) {
  try {
    return pathname.replace(/\/+$/, '').split('/').slice(1).map(decodeURIComponent)
  } catch (_) {
    return null
  }
}

/* Whether the request names this machine and one of the allowed verbs. */
function allowed (m, method, url) {
  let pathname
  try { pathname = new URL(url, 'http://flaps').pathname } catch (_) { return false }
  const s = segments(pathname)
  if (!s || s.length < 5) return false
  if (s[0] !== 'v1' || s[1] !== 'apps' || s[2] !== m.app.name || s[3] !== 'machines' || s[4] !== m.id) return false
  const rest = s.slice(5)
  if (rest.length > 2) return false
  const tail = rest.length === 2 ? `/${rest[0]}/*` : rest.length === 1 ? `/${rest[0]}` : ''
  return ALLOWED.some(([verb, p]) => verb === method && p === tail)
}

class ApiSockets {
  /* handle: the API's request handler (api.js) */
  constructor (handle) {
    this.handle = handle
    this.servers = new Map()
  }

  /* The machine's socket at sockPath, listening (made on first use);
     resolves to its path. */
  async open (m, sockPath) {
    const have = this.servers.get(m)
    if (have) return have.path
    const server = http.createServer((req, res) => {
      if (!allowed(m, req.method, req.url)) {
        res.flyRequestId = ids.requestId(m.region)
        res.setHeader('connection', 'close')
        send(res, 403, { error: 'forbidden: fly-local\'s in-machine API socket allows only this machine\'s get, wait, stop, suspend and metadata' })
        return
      }
      req[INTERNAL] = true
      this.handle(req, res)
    })
    server.maxConnections = MAX_CONNECTIONS
    server.headersTimeout = 10000
    server.requestTimeout = 30000
    server.keepAliveTimeout = 5000
    const entry = { path: sockPath, server }
    this.servers.set(m, entry)
    try {
      fs.rmSync(sockPath, { force: true })
      await new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(sockPath, () => { server.off('error', reject); resolve() })
      })
      /* root of the machine only; nothing could connect before (the
         machine does not run yet, and the host's other users lack write
         permission on the fresh socket) */
      fs.chownSync(sockPath, ID_BASE, ID_BASE)
      fs.chmodSync(sockPath, 0o600)
    } catch (e) {
      this.servers.delete(m)
      server.close()
      throw e
    }
    return sockPath
  }

  close (m) {
    const entry = this.servers.get(m)
    if (!entry) return
    this.servers.delete(m)
    entry.server.close()
    if (entry.server.closeAllConnections) entry.server.closeAllConnections()
    fs.rmSync(entry.path, { force: true })
  }

  closeAll () {
    for (const m of [...this.servers.keys()]) this.close(m)
  }
}

module.exports = { ApiSockets, INTERNAL, allowed }
