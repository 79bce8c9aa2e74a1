'use strict'
// Per-sandbox URLs, against fly-local: each exposed port gets a public port
// of its own in the app, served by fly-local's emulation of Fly's proxy on
// 127.0.0.1:<public port>; two sandboxes exposing the same port answer each
// on its own URL, and a request to a paused sandbox's URL wakes it.
const test = require('node:test')
const assert = require('node:assert/strict')
const { startLocal, provider, call, rejects, sandboxIds } = require('./helpers/fly')
const ports = require('../lib/ports')

let srv
test.before(async () => { srv = await startLocal() })
test.after(() => srv && srv.stop())

// Serves /home/sandbox on `port` (every address), detached.
async function serve (sb, port, marker) {
  await sb.filesystem.mkdir('/home/sandbox/www')
  await sb.filesystem.writeFile('/home/sandbox/www/index.html', marker)
  const r = await sb.runCommand(`cd /home/sandbox/www && python3 -m http.server ${port} --bind ::`, { background: true })
  assert.equal(r.exitCode, 0)
  // until it listens (inside the sandbox, bounded)
  const w = await sb.runCommand(`for i in $(seq 200); do ss -Hltn "sport = :${port}" | grep -q . && exit 0; sleep 0.05; done; exit 1`)
  assert.equal(w.exitCode, 0, 'the server listens')
}

async function get (url) {
  const res = await fetch(url + '/index.html', { signal: AbortSignal.timeout(60000) })
  return { status: res.status, body: await res.text() }
}

test('two sandboxes exposing the same port each answer on their own URL; a paused one wakes', async () => {
  const p = provider(srv)
  const a = await p.sandbox.create({ ports: [8000] })
  const b = await p.sandbox.create({ ports: [8000, 9000] })
  try {
    const ma = (await call(srv, 'machine.get', sandboxIds(a))).body
    const mb = (await call(srv, 'machine.get', sandboxIds(b))).body
    // the edge's service (lib/edge.js) comes after the exposed ports'
    const edgeSvc = (m) => m.config.services.filter((s) => s.ports[0].port === 443)
    assert.deepEqual(edgeSvc(ma).map((s) => [s.internal_port, s.ports[0].handlers, s.autostart]), [[444, ['tls', 'http'], true]])
    const pubA = ma.config.services[0].ports[0].port
    const pubB = mb.config.services.filter((s) => s.ports[0].port !== 443).map((s) => s.ports[0].port)
    assert.equal(ma.config.services[0].internal_port, 8000)
    assert.equal(ma.config.services[0].autostart, true)
    assert.equal(new Set([pubA, ...pubB]).size, 3, 'every public port is its own')
    for (const x of [pubA, ...pubB]) assert.ok(x >= ports.RANGE[0] && x <= ports.RANGE[1])
    assert.equal(ma.config.metadata.computesdk_ports, `8000:${pubA}`)

    const urlA = await a.getUrl({ port: 8000 })
    const urlB = await b.getUrl({ port: 8000 })
    assert.equal(urlA, `http://127.0.0.1:${pubA}`)
    assert.equal(urlB, `http://127.0.0.1:${pubB[0]}`)
    assert.deepEqual((await a.getInfo()).metadata.ports, { 8000: pubA })

    await serve(a, 8000, 'I am A')
    await serve(b, 8000, 'I am B')
    assert.deepEqual(await get(urlA), { status: 200, body: 'I am A' })
    assert.deepEqual(await get(urlB), { status: 200, body: 'I am B' })

    // an undeclared port gets its URL through the edge (test/urls.test.js)
    assert.ok(/\/\.computesdk\/u\/[0-9a-f]+\/9000\/\?computesdk_token=/.test(await a.getUrl({ port: 9000 })), 'a private URL (not printed: it holds a token)')

    // A request to a paused sandbox's URL starts it (Fly proxy's autostart).
    await a.pause()
    assert.equal((await a.getInfo()).status, 'paused')
    assert.deepEqual(await get(urlA), { status: 200, body: 'I am A' })
    assert.equal((await a.getInfo()).status, 'running')
    // getUrl wakes one too
    await b.pause({ keepMemory: false })
    await b.getUrl({ port: 8000 })
    assert.equal((await b.getInfo()).status, 'running')
  } finally {
    await a.destroy()
    await b.destroy()
  }
})

test('getUrl on Fly is https://<app>.fly.dev:<public port>; bad ports are refused at create', async () => {
  const sb = { sandboxId: 'myapp:123', appName: 'myapp', metadata: { computesdk_ports: '3000:23456' }, _ctx: { config: { apiHostname: 'https://api.machines.dev' } } }
  assert.equal(ports.url(sb, 3000, ''), 'https://myapp.fly.dev:23456')
  assert.equal(ports.url(sb, 3000, 'wss'), 'wss://myapp.fly.dev:23456')
  assert.throws(() => ports.url(sb, 80, ''), (e) => e.code === 'FLY_PORT_NOT_EXPOSED')
  const p = provider(srv)
  assert.equal((await rejects(p.sandbox.create({ ports: [0] }))).code, 'ERR_INVALID_ARG')
  assert.equal((await rejects(p.sandbox.create({ ports: 'x' }))).code, 'ERR_INVALID_ARG')
})

test('a public port the API refuses as taken is picked again (at most 5 tries)', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create() // makes the app
  try {
    const { app } = sandboxIds(sb)
    const config = sb.getInstance()._ctx.config
    const tried = []
    const body = { config: { metadata: {} } }
    const r = await ports.createWith(config, app, body, [8000], async () => {
      const pub = body.config.services[0].ports[0].port
      tried.push(pub)
      if (tried.length < 3) {
        throw Object.assign(new Error('409'), { code: 'FLY_CONFLICT', flyError: `aborted: public port ${pub} is taken` })
      }
      return 'made'
    })
    assert.equal(r, 'made')
    assert.equal(new Set(tried).size, 3, 'a new port each time')
    assert.equal(body.config.metadata.computesdk_ports, `8000:${tried[2]}`)
    let n = 0
    const err = await rejects(ports.createWith(config, app, body, [8000], async () => {
      n++
      throw Object.assign(new Error('409'), { code: 'FLY_CONFLICT', flyError: 'aborted: public port taken' })
    }))
    assert.equal(err.code, 'FLY_CONFLICT')
    assert.equal(n, 5)
    // another refusal is not retried
    n = 0
    await rejects(ports.createWith(config, app, body, [8000], async () => {
      n++
      throw Object.assign(new Error('422'), { code: 'FLY_UNPROCESSABLE', flyError: 'invalid image' })
    }))
    assert.equal(n, 1)
  } finally {
    await sb.destroy()
  }
})
