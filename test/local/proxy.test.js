'use strict'
// fly-local's Fly proxy emulation: a listener on 127.0.0.1 per public port
// of machine services, routed to the machines of the app declaring that
// port only, waking a suspended or stopped one (autostart), stopping idle
// ones (autostop), refusing a port it cannot have with 409.
const test = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const { localFixture, startLocal, assertSchema } = require('../helpers/local')

const IMAGE = 'registry-1.docker.io/library/ubuntu:22.04'
const AUTOSTOP_MS = 3000
const app = `px-${process.pid}`
const other = `px2-${process.pid}`
const fx = localFixture({
  app,
  autostopMs: AUTOSTOP_MS,
  setup: async (f) => {
    const r = await f.api('POST', '/v1/apps', { name: other, org_slug: 'personal' })
    assert.equal(r.status, 201)
  }
})
const { api } = fx

/* A port nothing listens on right now. */
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer()
  s.once('error', reject)
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)) })
})
const service = (port, extra = {}) => ({ protocol: 'tcp', internal_port: 8000, ports: [{ port, handlers: ['tls', 'http'] }], ...extra })
/* A workload serving its machine id on 8000 as the sandbox user (so a fresh
   boot after a stop serves too). */
const SERVE = ['sh', '-c', 'mkdir -p /tmp/www && hostname > /tmp/www/index.html && chmod -R a+rX /tmp/www && ' +
  'exec runuser -u sandbox -- python3 -m http.server 8000 --directory /tmp/www 2>/tmp/www.log']

const create = async (appName, config) => {
  return api('POST', `/v1/apps/${appName}/machines`, { config: { image: IMAGE, restart: { policy: 'no' }, ...config } })
}
const launch = async (config, appName = app) => {
  const r = await create(appName, config)
  assert.equal(r.status, 200, JSON.stringify(r.body))
  assertSchema('Machine', r.body)
  await wait(r.body, 'started', appName)
  return r.body
}
const wait = async (m, state, appName = app) => {
  const version = state === 'stopped' ? `&version=${m.version}` : ''
  const w = await api('GET', `/v1/apps/${appName}/machines/${m.id}/wait?state=${state}&timeout=60${version}`)
  assert.equal(w.status, 200, JSON.stringify(w.body))
  assertSchema('WaitResult', w.body)
}
const destroy = async (m, appName = app) => {
  await api('DELETE', `/v1/apps/${appName}/machines/${m.id}?force=true`)
  await api('GET', `/v1/apps/${appName}/machines/${m.id}/wait?state=destroyed&timeout=30`)
}
const sh = async (m, script) => {
  const r = await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command: ['sh', '-c', script], timeout: 20 })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  return r.body
}
/* Starts the server over exec, as the sandbox user, and waits for it. */
const serveOverExec = async (m) => {
  const r = await sh(m, SERVE[2].replace('exec runuser', 'setsid runuser').replace('2>/tmp/www.log', '</dev/null >/dev/null 2>/tmp/www.log &') +
    ' for i in $(seq 100); do ss -Hltn "sport = :8000" | grep -q . && exit 0; sleep 0.1; done; exit 1')
  assert.equal(r.exit_code, 0, r.stderr)
}
const get = async (port) => {
  const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(60000) })
  return { status: res.status, text: (await res.text()).trim() }
}
const stateOf = async (m, appName = app) => (await api('GET', `/v1/apps/${appName}/machines/${m.id}`)).body.state
const connectRefused = (port) => new Promise((resolve) => {
  const s = net.connect({ host: '127.0.0.1', port })
  s.once('connect', () => { s.destroy(); resolve(false) })
  s.once('error', (e) => resolve(e.code === 'ECONNREFUSED'))
})

/* The machine m's state changes while a connection to public port p stays
   open for ms (a window in which nothing should happen: no event to wait
   for); the connection is closed after. */
async function statesWhileConnected (p, m, ms) {
  const sock = await new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: p }, () => resolve(s))
    s.once('error', reject)
  })
  const seen = []
  const on = (e) => { if (e.id === m.id) seen.push(e.state) }
  fx.srv.events.on('state', on)
  await new Promise((resolve) => setTimeout(resolve, ms))
  fx.srv.events.off('state', on)
  sock.destroy()
  return seen
}

test('two machines of one app exposing one internal port on two public ports each answer on their own', async () => {
  const [p1, p2] = [await freePort(), await freePort()]
  const m1 = await launch({ services: [service(p1, { autostart: true })] })
  const m2 = await launch({ services: [service(p2, { autostart: true })] })
  try {
    assert.equal((await api('GET', `/v1/apps/${app}/machines/${m1.id}`)).body.config.services[0].ports[0].port, p1)
    await serveOverExec(m1)
    await serveOverExec(m2)
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await get(p1), { status: 200, text: m1.id })
      assert.deepEqual(await get(p2), { status: 200, text: m2.id })
    }
    /* the machine sees the proxied connection come from outside it */
    const log = await sh(m1, 'cat /tmp/www.log')
    const peers = [...log.stdout.matchAll(/^(\S+) - - /gm)].map((x) => x[1])
    assert.ok(peers.length >= 3, log.stdout)
    for (const p of peers) {
      assert.ok(!/^(127\.|::1$|::ffff:127\.)/.test(p) && p !== m1.private_ip, `peer ${p}`)
    }
    assert.deepEqual(fx.srv.publicPorts().filter((x) => x.port === p1 || x.port === p2).map((x) => x.app), [app, app])

    /* a request to a suspended machine's port resumes it and is answered */
    assert.equal((await api('POST', `/v1/apps/${app}/machines/${m1.id}/suspend`)).status, 200)
    await wait(m1, 'suspended')
    assert.deepEqual(await get(p1), { status: 200, text: m1.id })
    assert.equal(await stateOf(m1), 'started')
    assert.equal(await stateOf(m2), 'started')
  } finally {
    await destroy(m1)
    await destroy(m2)
  }
  /* nothing declares the ports any more: their listeners are gone */
  assert.equal(await connectRefused(p1), true)
  assert.equal(await connectRefused(p2), true)
})

test('a request to a stopped machine\'s port boots it (autostart); without autostart it is closed', async () => {
  const [p1, p2] = [await freePort(), await freePort()]
  const m = await launch({ init: { cmd: SERVE }, services: [service(p1, { autostart: true })] })
  const n = await launch({ init: { cmd: SERVE }, services: [service(p2)] })
  try {
    assert.deepEqual(await get(p1), { status: 200, text: m.id })
    assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/stop`)).status, 200)
    await wait(m, 'stopped')
    assert.deepEqual(await get(p1), { status: 200, text: m.id })
    assert.equal(await stateOf(m), 'started')

    assert.deepEqual(await get(p2), { status: 200, text: n.id })
    assert.equal((await api('POST', `/v1/apps/${app}/machines/${n.id}/suspend`)).status, 200)
    await wait(n, 'suspended')
    await assert.rejects(get(p2))
    assert.equal(await stateOf(n), 'suspended')
  } finally {
    await destroy(m)
    await destroy(n)
  }
})

test('a public port of another app, or one bound on the host, fails create and update with 409', async () => {
  const p = await freePort()
  const m = await launch({ services: [service(p)] })
  const squatter = net.createServer()
  try {
    const r = await create(other, { services: [service(p)] })
    assert.equal(r.status, 409, JSON.stringify(r.body))
    assertSchema('Error', r.body)
    assert.match(r.body.error, new RegExp(`^aborted: public port ${p} is declared by a machine of another app`))

    const q = await freePort()
    await new Promise((resolve) => squatter.listen(q, '127.0.0.1', resolve))
    const r2 = await create(app, { services: [service(q)] })
    assert.equal(r2.status, 409, JSON.stringify(r2.body))
    assertSchema('Error', r2.body)
    assert.match(r2.body.error, new RegExp(`^aborted: public port ${q} is already bound on this host`))
    const u = await api('POST', `/v1/apps/${app}/machines/${m.id}`, { config: { image: IMAGE, services: [service(q)] } })
    assert.equal(u.status, 409, JSON.stringify(u.body))
    assertSchema('Error', u.body)
    /* the failed update changed nothing */
    const got = (await api('GET', `/v1/apps/${app}/machines/${m.id}`)).body
    assert.equal(got.config.services[0].ports[0].port, p)

    /* an update to a free port moves the listener */
    const f = await freePort()
    const u2 = await api('POST', `/v1/apps/${app}/machines/${m.id}`, { config: { image: IMAGE, services: [service(f)] } })
    assert.equal(u2.status, 200, JSON.stringify(u2.body))
    assertSchema('Machine', u2.body)
    assert.equal(await connectRefused(p), true)
    assert.deepEqual(fx.srv.publicPorts().filter((x) => x.port === f), [{ port: f, app }])
    const bad = await create(app, { services: [{ protocol: 'udp', internal_port: 53, ports: [{ port: 53 }] }] })
    assert.equal(bad.status, 400)
    assertSchema('Error', bad.body)
  } finally {
    squatter.close()
    await destroy(m)
  }
})

test('autostop suspends a machine with no proxied connection; an open one keeps it started', async () => {
  const p = await freePort()
  const m = await launch({ init: { cmd: SERVE }, services: [service(p, { autostart: true, autostop: 'suspend' })] })
  try {
    const got = (await api('GET', `/v1/apps/${app}/machines/${m.id}`)).body
    assertSchema('Machine', got)
    assert.equal(got.config.services[0].autostop, 'suspend')
    await wait(m, 'suspended')
    /* woken by a request; then held by an open connection */
    assert.deepEqual(await get(p), { status: 200, text: m.id })
    assert.deepEqual(await statesWhileConnected(p, m, 3 * AUTOSTOP_MS), [])
    await wait(m, 'suspended')
  } finally {
    await destroy(m)
  }
})

test('stop() closes the proxy\'s listeners', async (t) => {
  const srv = await startLocal(null, {})
  let stopped = false
  t.after(() => stopped ? null : srv.stop())
  const call = (method, path, body) => fetch(srv.url + path, {
    method, headers: { authorization: `Bearer ${srv.token}`, 'content-type': 'application/json' }, body: body && JSON.stringify(body)
  })
  assert.equal((await call('POST', '/v1/apps', { name: 'stopme', org_slug: 'personal' })).status, 201)
  const p = await freePort()
  const r = await call('POST', '/v1/apps/stopme/machines', { config: { image: IMAGE, services: [service(p)] } })
  assert.equal(r.status, 200)
  assert.equal(await connectRefused(p), false)
  await srv.stop()
  stopped = true
  assert.equal(await connectRefused(p), true)
})

test('a proxied connection is activity for the idle watch; once idle, a request wakes the machine', async () => {
  const p = await freePort()
  const m = await launch({ init: { cmd: SERVE }, env: { COMPUTESDK_IDLE_TIMEOUT_MS: '3000' }, services: [service(p, { autostart: true })] })
  try {
    assert.deepEqual(await get(p), { status: 200, text: m.id })
    assert.deepEqual(await statesWhileConnected(p, m, 9000), [])
    /* the idle watch inside suspends it, no client involved */
    await wait(m, 'suspended')
    assert.deepEqual(await get(p), { status: 200, text: m.id })
    assert.equal(await stateOf(m), 'started')
  } finally {
    await destroy(m)
  }
})
