'use strict'
// fly-local: a local emulator of the Fly Machines API whose machines are real
// sandboxes on this host (see README.md in this directory).
//
//   const srv = await require('@computesdk/fly/local').start({ token, host, port })
//   srv.url, srv.token, srv.edgeUrl, srv.edgeCa, await srv.stop()
const http = require('http')
const crypto = require('crypto')
const { Host, waitSshBanner } = require('./runtime')
const { Store, swapHostKey } = require('./machines')
const { Faults } = require('./faults')
const { createApi } = require('./api')
const { Volumes } = require('./volumes')
const { ApiSockets } = require('./api-socket')
const { Proxy } = require('./proxy')
const { Edge } = require('./edge')
const { DEFAULT_FLOWS_MAX } = require('./network')

function needsRoot () {
  const e = new Error('fly-local must run as root: its machines use Linux namespaces, overlayfs mounts and cgroups')
  e.code = 'FLY_LOCAL_NEEDS_ROOT'
  return e
}

/* The machines' network policy from start's options, else the environment:
   allowPrivateEgress (FLY_LOCAL_ALLOW_PRIVATE_EGRESS=1) opens the host's
   private ranges to egress; flowsMax (FLY_LOCAL_FLOWS_MAX) caps each
   machine's tracked flows. */
function networkOptions (opts) {
  const allow = opts.allowPrivateEgress != null ? opts.allowPrivateEgress : process.env.FLY_LOCAL_ALLOW_PRIVATE_EGRESS === '1'
  if (typeof allow !== 'boolean') throw new TypeError('start: allowPrivateEgress must be a boolean')
  const flows = opts.flowsMax != null ? opts.flowsMax : process.env.FLY_LOCAL_FLOWS_MAX ? Number(process.env.FLY_LOCAL_FLOWS_MAX) : DEFAULT_FLOWS_MAX
  if (!Number.isInteger(flows) || flows <= 0) throw new TypeError('start: flowsMax (FLY_LOCAL_FLOWS_MAX) must be a positive integer')
  return { allowPrivateEgress: allow, flowsMax: flows }
}

/* Starts an emulator; resolves once it listens. */
async function start (options = {}) {
  const opts = { host: '127.0.0.1', port: 0, quiet: false, region: 'iad', destroyedGraceMs: 5000, ...options }
  if (process.platform !== 'linux') {
    const e = new Error('fly-local runs on Linux only (namespaces, overlayfs)')
    e.code = 'FLY_LOCAL_UNSUPPORTED'
    throw e
  }
  if (typeof process.getuid === 'function' && process.getuid() !== 0) throw needsRoot()
  if (opts.token != null && (typeof opts.token !== 'string' || !opts.token)) {
    throw new TypeError('start: token must be a non-empty string')
  }
  const token = opts.token || `fl_${crypto.randomBytes(24).toString('base64url')}`

  const host = await Host.create({ ...networkOptions(opts), rootDiskMb: opts.rootDiskMb, rootInodes: opts.rootInodes })
  const store = new Store({ host, quiet: opts.quiet, destroyedGraceMs: opts.destroyedGraceMs, region: opts.region })
  try {
    store.volumes = await Volumes.create({ host, store, quiet: opts.quiet, log: options.log })
  } catch (e) {
    host.destroy()
    throw e
  }
  const faults = new Faults()
  const stats = { connections: 0, requests: 0 }
  const pending = new Set()
  const ctx = {
    store,
    faults,
    token,
    stats,
    quiet: opts.quiet,
    track (p) {
      pending.add(p)
      p.finally(() => pending.delete(p)).catch(() => {})
    }
  }
  const handle = createApi(ctx)
  /* every machine's /.fly/api */
  store.apiSockets = new ApiSockets(handle)
  /* Fly proxy: the public ports of machine services */
  const proxy = new Proxy(store, { autostopMs: opts.autostopMs, wakeMs: opts.proxyWakeMs, quiet: opts.quiet })
  store.proxy = proxy
  const server = http.createServer(handle)
  /* Expect: 100-continue: the API answers 100 only once the token passed */
  server.on('checkContinue', handle)
  server.keepAliveTimeout = 60000
  server.headersTimeout = 65000
  server.requestTimeout = 0
  server.on('connection', () => { stats.connections++ })

  /* Abrupt exits: machines die with us (PDEATHSIG); remove our files. */
  const onExit = () => {
    store.volumes.destroySync()
    host.destroy()
  }
  process.on('exit', onExit)

  try {
    await new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(opts.port, opts.host, () => { server.off('error', reject); resolve() })
    })
  } catch (e) {
    process.off('exit', onExit)
    onExit()
    proxy.close()
    throw e
  }
  const addr = server.address()
  const hostPart = addr.family === 'IPv6' || addr.family === 6 ? `[${addr.address}]` : addr.address
  const url = `http://${hostPart}:${addr.port}`
  /* Fly's edge (https://<app>.fly.dev), on the same address */
  const edge = new Edge(store, proxy, { wakeMs: opts.proxyWakeMs, quiet: opts.quiet })
  let edgeAddr
  try {
    edgeAddr = await edge.listen(addr.address)
  } catch (e) {
    server.close()
    process.off('exit', onExit)
    onExit()
    proxy.close()
    throw e
  }

  const findMachine = (id) => {
    const m = store.allMachines().find((x) => x.id === id)
    if (!m) throw new Error(`fly-local: no machine ${id}`)
    return m
  }
  const runningMachine = (id) => {
    const m = findMachine(id)
    if (!m.run || !m.run.started) throw new Error(`fly-local: machine ${id} is not running`)
    return m
  }

  let stopping = null
  const srv = {
    url,
    token,
    faults,
    /* emits 'state' {app, id, state} on every transition, 'purged' {app, id}
       when a destroyed machine stops being readable */
    events: store.events,
    host: addr.address,
    port: addr.port,
    /* the edge: https://<host>:<port>, its CA (PEM), its fault hooks
       ({ fault(spec), closeAll(), stallAll() }, edge.js) */
    edgeUrl: `https://${hostPart}:${edgeAddr.port}`,
    edgeCa: edge.ca,
    edge: { fault: (spec) => edge.faults.set(spec), closeAll: () => edge.closeAll(), stallAll: () => edge.stallAll() },
    stats: () => ({ ...stats }),
    /* 'ext4' (sized loop-mounted images) or 'directory' (no size limit) */
    volumeBackend: store.volumes.backend,
    machines: () => store.allMachines().map((m) => ({
      app: m.app.name, network: m.app.network, id: m.id, state: m.state, pid: m.run ? m.run.pid : 0, private_ip: m.privateIp
    })),
    /* Resolves once the machine's sshd answers (after boot or a restart). */
    waitSsh: (id, timeoutMs = 10000) => waitSshBanner(findMachine(id).privateIp, 2222, timeoutMs),
    async killSshd (id) {
      const m = runningMachine(id)
      if (m.run.frozen) m.run.thaw()
      const { all } = m.run.sshdTree()
      for (const p of all) {
        try { process.kill(p, 'SIGKILL') } catch (_) { /* gone */ }
      }
      return all.length
    },
    async freezeSshd (id) {
      const m = runningMachine(id)
      const { all } = m.run.sshdTree()
      for (const p of all) {
        try { process.kill(p, 'SIGSTOP') } catch (_) { /* gone */ }
      }
      m.frozenSshd = all
      return all.length
    },
    async thawSshd (id) {
      const m = runningMachine(id)
      const pids = new Set([...(m.frozenSshd || []), ...m.run.sshdTree().all])
      for (const p of pids) {
        try { process.kill(p, 'SIGCONT') } catch (_) { /* gone */ }
      }
      m.frozenSshd = null
      return pids.size
    },
    swapHostKey: (id) => swapHostKey(runningMachine(id)),
    /* the proxy's open public ports on 127.0.0.1: [{ port, app }] */
    publicPorts: () => proxy.ports(),
    stop () {
      if (!stopping) {
        stopping = (async () => {
          server.close()
          if (server.closeAllConnections) server.closeAllConnections()
          edge.close()
          proxy.close()
          await Promise.allSettled([...pending])
          await store.destroyAll()
          await store.volumes.destroyAll()
          store.apiSockets.closeAll()
          host.destroy()
          process.off('exit', onExit)
        })()
      }
      return stopping
    }
  }
  if (!opts.quiet && options.log) options.log(`fly-local listening on ${url}`)
  return srv
}

module.exports = { start }
