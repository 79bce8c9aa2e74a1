'use strict'
// The edge path: how a process outside Fly's private network (a laptop, CI)
// reaches a sandbox's sshd. Fly's proxy serves https://<app>.fly.dev; a
// WebSocket upgrade of /.computesdk/ssh with `fly-force-instance-id:
// <machine>` goes to that machine's service on internal port EDGE_PORT,
// where the image's bridge (docker/flyedge.c, root) checks the sandbox's
// edge token and joins the WebSocket to sshd. The SSH session inside is the
// usual one (host key pinned, key auth); src/edge.c carries its bytes.
//
// What create adds to every machine (unless reach is 'private'): a random
// edge token, in the machine's metadata (EDGE_TOKEN: another provider
// process with the API token can read it) and, as its SHA-256 only, in a
// root-only file under /etc/computesdk; and a service: internal_port
// EDGE_PORT, public port 443 with the tls and http handlers, autostart (a
// paused machine is woken by a connect). Once per app and provider, the
// app's public addresses: a shared IPv4 and an IPv6, made when missing
// (both free on Fly; a dedicated IPv4, which is billed, is never made).
//
// Which path a provider takes: config.reach ('private' | 'edge'), else
// learned once per provider (reach()): the first machine's private
// address is tried, quickly; the edge is used when it cannot be reached.
const crypto = require('crypto')
const dgram = require('dgram')
const net = require('net')
const api = require('./api')
const { flyError } = require('./errors')
const { EDGE_TOKEN, FILES_DIR } = require('./metadata')

const EDGE_PORT = 444
const EDGE_PATH = '/.computesdk/ssh'
const TOKEN_FILE = `${FILES_DIR}/edge_token_sha256`
// How long the one-time private reachability check may take.
const PROBE_MS = 1500

// The service Fly's proxy routes https://<app>.fly.dev to.
function service () {
  return {
    protocol: 'tcp',
    internal_port: EDGE_PORT,
    ports: [{ port: 443, handlers: ['tls', 'http'] }],
    autostart: true,
    autostop: 'off'
  }
}

// Adds the edge token and service to a machine request (lifecycle.js).
function apply (config, machineConfig) {
  if (config.reach === 'private') return
  const token = crypto.randomBytes(32).toString('base64url')
  const hash = crypto.createHash('sha256').update(token).digest('hex')
  machineConfig.metadata[EDGE_TOKEN] = token
  machineConfig.files.push({ guest_path: TOKEN_FILE, raw_value: Buffer.from(`${hash}\n`).toString('base64'), mode: 0o600 })
  machineConfig.services = [...(machineConfig.services || []), service()]
}

// The app's shared IPv4 and IPv6, made when missing; once per provider and
// app (a failure is retried by the next create). Not fatal unless the edge
// is the configured path: a sandbox still answers on the private network.
function ensureIps (ctx, app) {
  const { config, state } = ctx
  if (config.reach === 'private') return Promise.resolve()
  let p = state.edgeIps.get(app)
  if (!p) {
    p = (async () => {
      const list = ((await api.call(config, 'app.ips.list', { app })).body || {}).ips || []
      const has4 = list.some((x) => x.shared || (net.isIPv4(x.ip) && !x.egress))
      const has6 = list.some((x) => net.isIPv6(x.ip) && !x.egress && !x.network)
      if (!has4) await api.call(config, 'app.ips.create', { app }, { body: { type: 'shared_v4' } })
      if (!has6) await api.call(config, 'app.ips.create', { app }, { body: { type: 'v6' } })
    })()
    state.edgeIps.set(app, p)
    p.catch(() => state.edgeIps.delete(app))
  }
  return config.reach === 'edge' ? p : p.catch(() => {})
}

// The edge part of an SSH target for sb.
function target (sb) {
  const { config } = sb._ctx
  const token = sb._edgeToken
  if (!token) {
    throw flyError('FLY_EDGE_UNAVAILABLE', `sandbox ${sb.sandboxId} has no edge token (metadata ${EDGE_TOKEN}): ` +
      "it was made with reach: 'private' or by an older provider, so it can be reached only on Fly's private network")
  }
  const u = new URL(config.edgeUrl || `https://${sb.appName}.fly.dev`)
  const edge = {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: Number(u.port) || 443,
    authority: `${sb.appName}.fly.dev`,
    instance: sb.machineId,
    token,
    path: EDGE_PATH
  }
  if (config.edgeCa) edge.ca = config.edgeCa
  return edge
}

// 'private' or 'edge' for this provider: configured, or learned once from
// the first sandbox it talks to.
function reach (sb) {
  const { config, state } = sb._ctx
  if (config.reach) return Promise.resolve(config.reach)
  if (config.sshHost) return Promise.resolve('private')
  if (!state.reach) {
    state.reach = routable(sb.privateIp, config.sshPort).then((ok) => ok ? 'private' : 'edge')
  }
  return state.reach
}

// Whether this process can reach addr on the private network, within
// PROBE_MS: the kernel's route lookup first (a UDP connect() sends nothing
// and fails at once with ENETUNREACH when there is no route), then a TCP
// connect to sshd's port (a refusal also proves the route; silence, as from
// a laptop whose default route sends fdaa:: to the internet, does not).
async function routable (addr, port) {
  if (!addr || !net.isIP(addr)) {
    // no address (a machine without one): Fly's .internal names resolve
    // only inside the private network
    return false
  }
  const routeOk = await new Promise((resolve) => {
    const s = dgram.createSocket(net.isIPv6(addr) ? 'udp6' : 'udp4')
    const done = (ok) => { try { s.close() } catch (_) { /* closed */ } resolve(ok) }
    s.once('error', () => done(false))
    s.connect(port, addr, (err) => done(!err))
  })
  if (!routeOk) return false
  return new Promise((resolve) => {
    const c = net.connect({ host: addr, port })
    const done = (ok) => { clearTimeout(t); c.destroy(); resolve(ok) }
    const t = setTimeout(() => done(false), PROBE_MS)
    c.once('connect', () => done(true))
    c.once('error', (e) => done(e.code === 'ECONNREFUSED'))
  })
}

module.exports = { apply, ensureIps, target, reach, routable, service, EDGE_PORT, EDGE_PATH, TOKEN_FILE }
