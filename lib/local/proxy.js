'use strict'
// Fly proxy, emulated for the public ports of machine services:
//   config.services [{ protocol: 'tcp', internal_port, ports: [{ port, handlers }],
//                      autostart, autostop, min_machines_running }]
// One TCP listener on 127.0.0.1:<port> per public port that some machine
// declares, owned by that machine's app. A connection goes to a started
// machine of the app declaring the port (round robin over them), at its
// IPv4 address and internal_port, as Fly's proxy reaches a machine over
// IPv4 (a service must listen on 0.0.0.0 or a dual-stack ::), so the
// machine sees it as inbound TCP from the host (not from loopback). With only stopped or suspended
// machines left, one whose service has autostart: true is started (resumed)
// and the connection forwarded once it runs (bounded by wakeMs, then
// closed). Handlers are not applied: fly-local's proxy passes plain TCP (no
// TLS termination, no HTTP headers), so such a service's URL is http://.
//
// Fly gives each app its own addresses; fly-local has one, 127.0.0.1, for
// all: a public port another app on this server declares, or that something
// else already holds on the host, makes the machine create/update fail with
// 409 (error text "aborted: public port <n> ..."), and the caller picks
// another port.
//
// autostop ('stop' | true | 'suspend'): a started machine with no proxied
// connection for autostopMs (FLY_LOCAL_AUTOSTOP_MS, default 5 min: Fly's
// proxy checks every few minutes) is stopped or suspended, keeping
// min_machines_running of the app's machines started.
const net = require('net')
const { HttpError } = require('./http')

const HOST = '127.0.0.1'
const DEFAULT_AUTOSTOP_MS = 5 * 60 * 1000
const DEFAULT_WAKE_MS = 30000
const CONNECT_TIMEOUT_MS = 5000
const MAX_CONNECTIONS = 1024

function envMs (name, dflt) {
  const n = Number(process.env[name])
  return Number.isInteger(n) && n > 0 ? n : dflt
}

/* [{ port, internal, svc, http }] of a machine config's public ports. */
function publicPorts (config) {
  const out = []
  for (const svc of (config && config.services) || []) {
    if (svc.protocol !== 'tcp') continue
    for (const p of svc.ports || []) {
      if (Number.isInteger(p.port)) {
        out.push({ port: p.port, internal: svc.internal_port, svc, http: (p.handlers || []).includes('http') })
      }
    }
  }
  return out
}

/* The ports this TCP proxy serves: 443 with the http handler is the edge's
   (edge.js), which every app shares as Fly's shared IPv4 is shared. */
function tcpPorts (config) {
  return publicPorts(config).filter((p) => !(p.port === 443 && p.http))
}

function autostopMode (config) {
  for (const svc of (config && config.services) || []) {
    if (svc.autostop === 'suspend') return 'suspend'
    if (svc.autostop === true || svc.autostop === 'stop') return 'stop'
  }
  return null
}

function portInUse (port, why) {
  return new HttpError(409, `aborted: public port ${port} ${why}; fly-local serves every app's public ports on ${HOST} ` +
    '(Fly gives each app its own addresses): choose another port')
}

const MOVING = ['starting', 'updating', 'restarting', 'replacing', 'suspending', 'stopping']
const running = (m) => m.state === 'started' && m.run && m.run.started && !m.run.frozen

class Proxy {
  constructor (store, { autostopMs, wakeMs, quiet } = {}) {
    this.store = store
    this.quiet = quiet
    this.autostopMs = autostopMs || envMs('FLY_LOCAL_AUTOSTOP_MS', DEFAULT_AUTOSTOP_MS)
    this.wakeMs = wakeMs || envMs('FLY_LOCAL_PROXY_WAKE_MS', DEFAULT_WAKE_MS)
    /* port -> { port, app, server, ready, pending, conns, next } */
    this.listeners = new Map()
    /* machine -> open proxied connections; machine -> last traffic (ms) */
    this.active = new Map()
    this.lastSeen = new Map()
    this.closed = false
    this.onState = ({ app, id, state }) => {
      const a = store.apps.get(app)
      const m = a && a.machines.get(id)
      if (state === 'started' && m) this.lastSeen.set(m, Date.now())
      if (state === 'destroyed') {
        if (m) { this.active.delete(m); this.lastSeen.delete(m) }
        this.refresh()
      }
    }
    store.events.on('state', this.onState)
    const every = Math.max(100, Math.min(5000, Math.floor(this.autostopMs / 4)))
    this.sweeper = setInterval(() => this.sweep(), every)
    this.sweeper.unref()
  }

  /* Reserves the public ports of config for app, listening on the new
     ones; throws a 409 HttpError for a port it cannot have. Returns done(),
     to call once the machine holds (or failed to take) the config. */
  async claim (appName, config) {
    const ports = [...new Set(tcpPorts(config).map((p) => p.port))]
    const held = []
    const done = () => {
      for (const l of held) l.pending--
      this.refresh()
    }
    try {
      for (const port of ports) {
        let l = this.listeners.get(port)
        if (l && l.app !== appName) throw portInUse(port, 'is declared by a machine of another app on this fly-local server')
        if (!l) l = this.listen(appName, port)
        l.pending++
        held.push(l)
      }
      for (const l of held) {
        if (!await l.ready) throw portInUse(l.port, `is already bound on this host (${l.error})`)
      }
    } catch (e) {
      done()
      throw e
    }
    return done
  }

  listen (appName, port) {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.onConnection(l, c))
    server.maxConnections = MAX_CONNECTIONS
    const l = { port, app: appName, server, pending: 0, conns: new Set(), next: 0, error: null }
    l.ready = new Promise((resolve) => {
      server.once('error', (e) => {
        l.error = e.code || e.message
        if (this.listeners.get(port) === l) this.listeners.delete(port)
        resolve(false)
      })
      server.listen({ port, host: HOST }, () => {
        server.on('error', () => {})
        resolve(true)
      })
    })
    this.listeners.set(port, l)
    return l
  }

  /* Machines of the listener's app that declare its port. */
  candidates (l) {
    const app = this.store.apps.get(l.app)
    if (!app) return []
    const out = []
    for (const m of app.machines.values()) {
      if (m.state === 'destroyed' || m.state === 'destroying' || m.cordoned) continue
      const p = tcpPorts(m.config).find((x) => x.port === l.port)
      if (p) out.push({ m, internal: p.internal, svc: p.svc })
    }
    return out
  }

  /* Closes the listeners no live machine declares (nor a claim holds). */
  refresh () {
    for (const l of [...this.listeners.values()]) {
      if (l.pending > 0 || this.candidates(l).length) continue
      this.closeListener(l)
    }
  }

  closeListener (l) {
    if (this.listeners.get(l.port) === l) this.listeners.delete(l.port)
    l.server.close()
    for (const c of l.conns) c.destroy()
  }

  onConnection (l, client) {
    if (this.closed) return client.destroy()
    l.conns.add(client)
    client.on('close', () => l.conns.delete(client))
    client.on('error', () => {})
    this.route(l, client, Date.now() + this.wakeMs).catch((e) => {
      if (!this.quiet) process.stderr.write(`fly-local proxy: port ${l.port}: ${e && e.stack}\n`)
      client.destroy()
    })
  }

  /* Picks (or wakes) a machine and forwards; closes the client when none
     runs by the deadline. */
  async route (l, client, deadline) {
    const got = await this.reach(() => this.candidates(l), deadline, () => client.destroyed, l)
    if (!got) return client.destroy()
    this.track(got.m, client, got.up)
    client.pipe(got.up)
    got.up.pipe(client)
    client.resume()
  }

  /* A connection to a running machine among cands() (round robin through
     rr.next), waking one whose service has autostart when none runs:
     { m, up }, or null when none is reachable by the deadline (or gone()).
     Shared with the edge (edge.js). */
  async reach (cands, deadline, gone, rr = {}) {
    while (!gone() && !this.closed && Date.now() < deadline) {
      const all = cands()
      const up = all.filter((c) => running(c.m))
      if (up.length) {
        const i = rr.next || 0
        rr.next = i + 1
        const c = up[i % up.length]
        const sock = await this.connect(c, deadline)
        if (sock) return { m: c.m, up: sock }
        /* refused (the service is not listening yet) or unreachable */
        await new Promise((resolve) => setTimeout(resolve, 100))
        continue
      }
      const asleep = all.filter((c) => c.svc.autostart === true && (c.m.state === 'suspended' || c.m.state === 'stopped'))
      /* moving: wait for where it lands (a machine being suspended or
         stopped is woken once it is) */
      const waking = all.some((c) => MOVING.includes(c.m.state) || c.m.launching)
      if (!asleep.length && !waking) break
      if (!waking) {
        /* a suspended one resumes at once */
        asleep.sort((a, b) => (a.m.state === 'suspended' ? 0 : 1) - (b.m.state === 'suspended' ? 0 : 1))
        asleep[0].m.requestStart()
      }
      /* a transition that happened between the look above and the
         listeners below is seen at the next look, 250 ms on at most */
      await this.untilStateChange(all.map((c) => c.m), Math.min(deadline, Date.now() + 250))
    }
    return null
  }

  untilStateChange (machines, deadline) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t)
        for (const m of machines) m.off('state', done)
        resolve()
      }
      const t = setTimeout(done, Math.max(0, deadline - Date.now()))
      for (const m of machines) m.once('state', done)
    })
  }

  /* A TCP connection to the machine's service, or null when it could not
     be made. */
  connect ({ m, internal }, deadline) {
    return new Promise((resolve) => {
      const host = m.host.guestV4(m.privateIp)
      if (!host) return resolve(null)
      const up = net.connect({ host, port: internal, allowHalfOpen: true })
      const timer = setTimeout(() => up.destroy(new Error('connect timeout')),
        Math.max(1, Math.min(CONNECT_TIMEOUT_MS, deadline - Date.now())))
      up.once('error', () => { clearTimeout(timer); up.destroy(); resolve(null) })
      up.once('connect', () => {
        clearTimeout(timer)
        up.removeAllListeners('error')
        /* small writes (an SSH packet) go at once, as the client's do */
        up.setNoDelay(true)
        resolve(up)
      })
    })
  }

  track (m, client, up) {
    this.active.set(m, (this.active.get(m) || 0) + 1)
    this.lastSeen.set(m, Date.now())
    let open = true
    const end = () => {
      if (!open) return
      open = false
      this.active.set(m, (this.active.get(m) || 1) - 1)
      this.lastSeen.set(m, Date.now())
      client.destroy()
      up.destroy()
    }
    for (const s of [client, up]) {
      s.on('error', end)
      s.on('close', end)
    }
  }

  /* Fly proxy's autostop: stop or suspend what had no proxied traffic. */
  sweep () {
    const now = Date.now()
    for (const app of this.store.apps.values()) {
      let up = 0
      for (const m of app.machines.values()) if (running(m) && m.config.services) up++
      for (const m of app.machines.values()) {
        const mode = autostopMode(m.config)
        if (!mode || !running(m) || (this.active.get(m) || 0) > 0) continue
        if (!this.lastSeen.has(m)) this.lastSeen.set(m, now)
        if (now - this.lastSeen.get(m) < this.autostopMs) continue
        const keep = Math.max(0, ...m.config.services.map((s) => s.min_machines_running || 0))
        if (up <= keep) continue
        up--
        if (mode === 'suspend') m.requestSuspend()
        else m.requestStop()
      }
    }
  }

  /* Open public ports, for tests: [{ port, app }]. */
  ports () {
    return [...this.listeners.values()].map((l) => ({ port: l.port, app: l.app }))
  }

  close () {
    this.closed = true
    clearInterval(this.sweeper)
    this.store.events.off('state', this.onState)
    for (const l of [...this.listeners.values()]) this.closeListener(l)
  }
}

module.exports = { Proxy, publicPorts }
