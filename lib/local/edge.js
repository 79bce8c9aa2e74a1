'use strict'
// Fly's public edge (Fly Proxy's HTTPS side), emulated: one TLS listener
// beside the API, on the same host address, with a CA of its own per
// fly-local instance (srv.edgeCa, PEM) and a leaf certificate for
// *.fly.dev and the listen address. A request is routed like Fly routes
// https://<app>.fly.dev:
//   Host: <app>.fly.dev        the app (any other host: 404)
//   fly-force-instance-id: id  that machine of the app, and no other
//   the service                a machine's service with a port 443 whose
//                              handlers include 'http'; the request goes to
//                              its internal_port at the machine's IPv4
//                              address, as Fly's proxy reaches machines
//   autostart                  a suspended or stopped machine whose service
//                              has autostart is woken (proxy.js's reach)
//   fly-replay                 a machine's reply carrying `fly-replay:
//                              instance=<id>` is not passed on: the request
//                              goes again to that machine (woken as above;
//                              at most 3 hops; a body over 1 MiB cannot be
//                              replayed: 502)
//   Host: the listen address   only for a sandbox port's URL path
//                              (/.computesdk/u/<machine>/...): the app of
//                              that machine (fly-local serves every app on
//                              one address; Fly has a host name per app)
// WebSocket upgrades (and any other request) are passed through as HTTP/1.1
// to the machine, then piped both ways. When nothing can take a request the
// edge answers as Fly's does, with a status and a short text body: 404 for
// an unknown app or instance, 503 when no machine has such a service, 502
// when the machine could not be reached (woken) in time.
//
// Fault hooks for tests (srv.edge.fault(spec), srv.edge.closeAll()): see
// EdgeFaults below.
const crypto = require('crypto')
const fs = require('fs')
const http = require('http')
const https = require('https')
const os = require('os')
const path = require('path')
const { execFileSync } = require('child_process')
const { publicPorts } = require('./proxy')

const HOST_RE = /^([a-z0-9][a-z0-9-]*)\.fly\.dev$/
const DEFAULT_WAKE_MS = 30000
const MAX_CONNECTIONS = 1024
const HEADERS_TIMEOUT_MS = 10000
/* A sandbox port's URL path (lib/urls.js): /.computesdk/u/<machine>/... */
const URL_PATH_RE = /^\/\.computesdk\/u\/([a-z0-9]+)\//
/* fly-replay: hops per request, the request body kept for one, and the
   reply head looked at for one (an upgrade's) */
const MAX_REPLAYS = 3
const REPLAY_BODY_MAX = 1024 * 1024
const PEEK_MAX = 16384

/* A CA and a leaf for *.fly.dev and the listen address, made with the
   openssl CLI (node's crypto cannot sign certificates). */
function makeCerts (host) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-local-edge-'))
  const f = (n) => path.join(dir, n)
  const ossl = (args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] })
  try {
    const tag = crypto.randomBytes(4).toString('hex')
    ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '30',
      '-subj', `/CN=fly-local edge CA ${tag}`, '-keyout', f('ca.key'), '-out', f('ca.pem'),
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
    ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-subj', '/CN=*.fly.dev', '-keyout', f('leaf.key'), '-out', f('leaf.csr')])
    const ip = host.includes(':') ? `IP:${host}` : /^[0-9.]+$/.test(host) ? `IP:${host}` : `DNS:${host}`
    fs.writeFileSync(f('ext'), `subjectAltName=DNS:*.fly.dev,DNS:fly.dev,${ip}\n` +
      'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n')
    ossl(['x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
      '-days', '30', '-extfile', f('ext'), '-out', f('leaf.pem')])
    return { ca: fs.readFileSync(f('ca.pem'), 'utf8'), cert: fs.readFileSync(f('leaf.pem'), 'utf8'), key: fs.readFileSync(f('leaf.key'), 'utf8') }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/* What the edge does wrong, for tests. One spec at a time, for the next
   `times` requests (default: until cleared):
     { status: 401 }        answer with this status, the machine untouched
     { stall: 'request' }   never answer (the TLS handshake completes)
     { after: 'garbage' }   after the machine's 101, send bytes that are no
                            WebSocket frame and stop forwarding
     { after: 'oversized' } after the 101, a frame claiming 2^40 bytes (and
                            the first 64 KiB of it)
     { after: 'stall' }     after the 101, forward nothing more either way
     { after: 'close', bytes } close once `bytes` went to the client after
                            the 101 (default 0)
   closeAll() drops every connection the edge holds (a restart of Fly's
   proxy, say); stallAll() stops forwarding on every open one (both ways),
   leaving it open (a proxy that hangs). */
class EdgeFaults {
  constructor () { this.spec = null }
  set (spec) {
    if (spec !== null && (typeof spec !== 'object')) throw new TypeError('edge.fault: spec must be an object or null')
    this.spec = spec ? { ...spec, remaining: spec.times == null ? Infinity : spec.times } : null
  }

  take () {
    const s = this.spec
    if (!s) return null
    if (--s.remaining <= 0) this.spec = null
    return s
  }
}

function reply (socket, status, text, res) {
  const body = `${text}\n`
  if (res) {
    res.writeHead(status, { 'content-type': 'text/plain', server: 'Fly/fly-local', connection: 'close' })
    return res.end(body)
  }
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] || ''}\r\ncontent-type: text/plain\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\nserver: Fly/fly-local\r\n\r\n${body}`)
}

/* The instance a `fly-replay` header names (instance=<id>), or null. */
function replayTarget (v) {
  const m = /(?:^|;)\s*instance=([a-z0-9]+)/i.exec(String(v || ''))
  return m ? m[1] : null
}

function replayBody (req, res, replay, target) {
  if (req._flyKept && req._flyKept.over) return reply(null, 502, 'request body too large to replay', res)
  replay(target)
}

/* The first bytes of up up to and including its reply head (bounded by
   PEEK_MAX), then cb(buffer), or cb(null) when it ends or overflows first;
   up is paused again when cb runs, its later bytes still in it. */
function peekHead (up, cb) {
  let seen = Buffer.alloc(0)
  let done = false
  const finish = (v) => {
    if (done) return
    done = true
    up.off('data', onData)
    up.off('end', onEnd)
    up.off('close', onEnd)
    up.pause()
    cb(v)
  }
  const onData = (d) => {
    seen = Buffer.concat([seen, d])
    if (seen.indexOf('\r\n\r\n') >= 0) finish(seen)
    else if (seen.length > PEEK_MAX) finish(null)
  }
  const onEnd = () => finish(seen.length ? seen : null)
  up.on('data', onData)
  up.once('end', onEnd)
  up.once('close', onEnd)
}

/* A header's value in a raw reply head, or undefined. */
function headerOf (buf, name) {
  const headEnd = buf.indexOf('\r\n\r\n')
  const text = buf.subarray(0, headEnd < 0 ? buf.length : headEnd).toString('latin1')
  for (const line of text.split('\r\n').slice(1)) {
    const i = line.indexOf(':')
    if (i > 0 && line.slice(0, i).trim().toLowerCase() === name) return line.slice(i + 1).trim()
  }
  return undefined
}

class Edge {
  constructor (store, proxy, { wakeMs, quiet } = {}) {
    this.store = store
    this.proxy = proxy
    this.quiet = quiet
    this.wakeMs = wakeMs || DEFAULT_WAKE_MS
    this.faults = new EdgeFaults()
    this.sockets = new Set()
    /* upgraded connections being piped: [client, machine] */
    this.pairs = new Set()
    this.server = null
    this.ca = null
  }

  async listen (host) {
    const { ca, cert, key } = makeCerts(host)
    this.ca = ca
    const server = https.createServer({ cert, key, allowHalfOpen: true })
    server.maxConnections = MAX_CONNECTIONS
    server.headersTimeout = HEADERS_TIMEOUT_MS
    server.requestTimeout = HEADERS_TIMEOUT_MS
    server.on('connection', (s) => {
      /* the TCP socket under the TLS one: small writes go at once */
      s.setNoDelay(true)
      this.sockets.add(s)
      s.on('close', () => this.sockets.delete(s))
      s.on('error', () => {})
    })
    server.on('upgrade', (req, socket, head) => this.route(req, socket, head))
    server.on('request', (req, res) => this.route(req, req.socket, null, res))
    server.on('tlsClientError', (e, s) => s.destroy())
    await new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, host, () => { server.off('error', reject); resolve() })
    })
    this.server = server
    return server.address()
  }

  /* [{ m, internal, svc }]: the machines of the app (only `instance` when
     given) with a 443 service that has the http handler. */
  candidates (app, instance) {
    const out = []
    for (const m of app.machines.values()) {
      if (m.state === 'destroyed' || m.state === 'destroying' || m.cordoned) continue
      if (instance && m.id !== instance) continue
      const p = publicPorts(m.config).find((x) => x.port === 443 && x.http)
      if (p) out.push({ m, internal: p.internal, svc: p.svc })
    }
    return out
  }

  async route (req, socket, head, res) {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    socket.on('error', () => {})
    socket.setNoDelay(true)
    const answer = (status, text) => reply(socket, status, text, res)
    try {
      const f = this.faults.take()
      if (f && f.status) return answer(f.status, `fly-local edge fault: ${f.status}`)
      if (f && f.stall === 'request') return
      const hostName = String(req.headers.host || '').replace(/:\d+$/, '').toLowerCase()
      const hm = HOST_RE.exec(hostName)
      const app = hm ? this.store.apps.get(hm[1]) : this.appOfUrl(req.url)
      if (!app) return answer(404, `no app is configured for host ${hostName || '(none)'}`)
      const instance = req.headers['fly-force-instance-id'] ? String(req.headers['fly-force-instance-id']) : null
      await this.dispatch(req, socket, head, res, app, instance, f, 0)
    } catch (e) {
      if (!this.quiet) process.stderr.write(`fly-local edge: ${e && e.stack}\n`)
      socket.destroy()
    }
  }

  /* fly-local serves every app on one address: a request for a sandbox
     port's URL (/.computesdk/u/<machine>/..., lib/urls.js) whose Host is
     not <app>.fly.dev (the listen address, as the URL fly-local's provider
     config gives) goes to the app of that machine. */
  appOfUrl (url) {
    const m = URL_PATH_RE.exec(String(url || ''))
    if (!m) return null
    for (const app of this.store.apps.values()) if (app.machines.has(m[1])) return app
    return null
  }

  /* To a machine of app (instance's when given), woken if need be; `replays`
     counts the fly-replay hops so far. */
  async dispatch (req, socket, head, res, app, instance, f, replays) {
    const answer = (status, text) => reply(socket, status, text, res)
    if (instance && !app.machines.has(instance)) return answer(404, `instance ${instance} not found`)
    if (!this.candidates(app, instance).length) return answer(503, 'no known healthy instances found for route tcp/443')
    const got = await this.proxy.reach(() => this.candidates(app, instance), Date.now() + this.wakeMs, () => socket.destroyed)
    if (!got) return socket.destroyed ? undefined : answer(502, 'could not reach the instance')
    const replay = (target) => {
      if (replays >= MAX_REPLAYS) return answer(502, 'too many fly-replay hops')
      this.dispatch(req, socket, head, res, app, target, null, replays + 1).catch(() => socket.destroy())
    }
    if (res) return this.request(req, res, got, replay)
    this.forward(req, socket, head, got, f, replay)
  }

  /* A plain request: through node's client on the machine connection. Its
     body is kept (up to REPLAY_BODY_MAX) for a replay: a reply with
     `fly-replay: instance=<id>` is not passed on; the request is sent again
     to that machine, as Fly's proxy does. */
  request (req, res, { m, up }, replay) {
    /* the machine's connection counts as traffic; it ends with the
       response (not the client's connection, which a replay keeps) */
    this.proxy.track(m, up, up)
    res.once('close', () => up.destroy())
    const headers = { ...req.headers, 'fly-client-ip': req.socket.remoteAddress, 'fly-forwarded-proto': 'https' }
    let replaying = false
    const preq = http.request({ method: req.method, path: req.url, headers: { ...headers, connection: 'close' }, createConnection: () => up }, (pres) => {
      const target = replayTarget(pres.headers['fly-replay'])
      if (target) {
        /* this connection is done with (its error, if any, is not the
           request's) */
        replaying = true
        pres.resume()
        /* the rest of the body is still read (kept): unpiping would pause
           the request, and its end would never come */
        req.unpipe(preq)
        req.resume()
        up.destroy()
        if (req.complete || req.readableEnded) return replayBody(req, res, replay, target)
        return req.once('end', () => replayBody(req, res, replay, target))
      }
      res.writeHead(pres.statusCode, pres.headers)
      pres.pipe(res)
    })
    preq.on('error', () => {
      if (replaying) return
      if (!res.headersSent) reply(null, 502, 'the instance closed the connection', res)
      else res.destroy()
    })
    if (req._flyKept) {
      preq.end(Buffer.concat(req._flyKept.chunks))
      return
    }
    const kept = { chunks: [], bytes: 0, over: false }
    req._flyKept = kept
    req.on('data', (d) => {
      if (kept.over) return
      kept.bytes += d.length
      if (kept.bytes > REPLAY_BODY_MAX) { kept.over = true; kept.chunks = [] } else kept.chunks.push(d)
    })
    req.pipe(preq)
  }

  /* An upgrade: the request as HTTP/1.1 to the machine, then bytes both
     ways. */
  forward (req, socket, head, { m, up }, f, replay) {
    const lines = [`${req.method} ${req.url} HTTP/1.1`]
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`)
    lines.push(`Fly-Client-IP: ${socket.remoteAddress}`, 'Fly-Forwarded-Proto: https', 'Fly-Forwarded-Port: 443')
    up.write(`${lines.join('\r\n')}\r\n\r\n`)
    if (head && head.length) up.write(head)
    this.sockets.add(up)
    up.on('close', () => this.sockets.delete(up))
    if (!f || !f.after) {
      /* the machine's reply head first: a fly-replay is replayed */
      const gone = () => up.destroy()
      socket.once('close', gone)
      peekHead(up, (first) => {
        socket.off('close', gone)
        const target = first && replayTarget(headerOf(first, 'fly-replay'))
        if (!first) return socket.destroy()
        if (target) {
          up.destroy()
          return replay(target)
        }
        this.proxy.track(m, socket, up)
        const pair = [socket, up]
        this.pairs.add(pair)
        up.on('close', () => this.pairs.delete(pair))
        socket.write(first)
        socket.pipe(up)
        up.pipe(socket)
      })
      return
    }
    /* faults after the upgrade: the head of the machine's reply passes,
       then the fault */
    this.proxy.track(m, socket, up)
    socket.pipe(up)
    let seen = Buffer.alloc(0)
    let sent = 0
    let switched = false
    const onData = (d) => {
      if (!switched) {
        seen = Buffer.concat([seen, d])
        const end = seen.indexOf('\r\n\r\n')
        if (end < 0) return
        switched = true
        socket.write(seen.subarray(0, end + 4))
        d = seen.subarray(end + 4)
        if (f.after === 'garbage') {
          up.off('data', onData)
          socket.write(Buffer.from([0xff, 0x13, 0x37, 0x00, 0xde, 0xad, 0xbe, 0xef]))
          return
        }
        if (f.after === 'oversized') {
          up.off('data', onData)
          socket.write(Buffer.concat([Buffer.from([0x82, 0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00]), Buffer.alloc(65536, 0x41)]))
          return
        }
        if (f.after === 'stall') {
          up.off('data', onData)
          socket.unpipe(up)
          return
        }
      }
      if (f.after === 'close' && sent + d.length >= (f.bytes || 0)) {
        socket.write(d.subarray(0, Math.max(0, (f.bytes || 0) - sent)))
        socket.destroy()
        up.destroy()
        return
      }
      sent += d.length
      if (d.length) socket.write(d)
    }
    up.on('data', onData)
  }

  stallAll () {
    for (const [client, up] of this.pairs) {
      client.unpipe(up)
      up.unpipe(client)
      client.pause()
      up.pause()
    }
    this.pairs.clear()
  }

  closeAll () {
    for (const s of [...this.sockets]) s.destroy()
  }

  close () {
    if (this.server) this.server.close()
    this.closeAll()
  }
}

module.exports = { Edge }
