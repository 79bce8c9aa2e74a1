'use strict'
// The provider by the ComputeSDK contract, against fly-local: create,
// getInfo, getById, list, destroy, getUrl, config and its errors.
const test = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const { startLocal, startProxy, closeSessions, provider, call, q, rejects, native } = require('./helpers/fly')
const { RECENT_LIMIT } = require('../lib/context')
const { fly } = require('..')

let srv
test.before(async () => { srv = await startLocal() })
test.after(() => srv && srv.stop())

test('create returns a started sandbox; getInfo, list, getById, destroy', async () => {
  const p = provider(srv)
  assert.equal(p.name, 'fly')
  const sb = await p.sandbox.create({ metadata: { owner: 'tests' }, envs: { GREETING: 'hi there' } })
  assert.equal(sb.provider, 'fly')
  const [app, machine] = sb.sandboxId.split(':')
  assert.match(machine, /^[0-9a-f]{14}$/)

  const m = (await call(srv, 'machine.get', { app, machine })).body
  assert.equal(m.state, 'started')
  assert.equal(m.config.guest.memory_mb, 512)

  const info = await sb.getInfo()
  assert.equal(info.id, sb.sandboxId)
  assert.equal(info.provider, 'fly')
  assert.equal(info.status, 'running')
  assert.ok(info.createdAt instanceof Date)
  assert.equal(info.createdAt.toISOString(), new Date(m.created_at).toISOString())
  assert.equal(info.metadata.owner, 'tests')
  assert.equal(info.metadata.appName, app)
  assert.equal(info.metadata.machineId, machine)
  assert.equal(info.metadata.privateIp, m.private_ip)
  assert.equal(info.metadata.region, m.region)
  assert.ok(info.metadata.image)

  const r = await sb.runCommand('echo "$GREETING"')
  assert.equal(r.stdout, 'hi there\n')

  const listed = await p.sandbox.list()
  assert.deepEqual(listed.map((s) => s.sandboxId), [sb.sandboxId])

  const again = await p.sandbox.getById(sb.sandboxId)
  assert.equal(again.sandboxId, sb.sandboxId)
  assert.equal((await again.runCommand('echo same')).stdout, 'same\n')

  await sb.destroy()
  assert.equal(await p.sandbox.getById(sb.sandboxId), null)
  assert.deepEqual(await p.sandbox.list(), [])
  // Every call on a destroyed sandbox says so, getInfo too (the API still
  // lists the machine, destroyed, for a while).
  for (const s of [sb, again]) {
    const gone = await rejects(s.getInfo())
    assert.equal(gone.code, 'FLY_NOT_FOUND')
  }
  // idempotent, never throws
  await sb.destroy()
  await p.sandbox.destroy(sb.sandboxId)
  await p.sandbox.destroy('nonsense')
})

test('list shows only the sandboxes this provider made', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create()
  const appName = sb.sandboxId.split(':')[0]
  // A machine in the same app made by someone else.
  await call(srv, 'machine.create', { app: appName }, { body: JSON.stringify({ config: { image: 'x' } }) })
  const listed = await p.sandbox.list()
  assert.deepEqual(listed.map((s) => s.sandboxId), [sb.sandboxId])
  await sb.destroy()
})

test('getById: unknown id is null, malformed id is ERR_INVALID_ARG', async () => {
  const p = provider(srv)
  assert.equal(await p.sandbox.getById('someapp:0123456789abcd'), null)
  for (const bad of ['', 'nocolon', ':abc', 'app:', 'app:../../x', 'App Name:123']) {
    const err = await rejects(p.sandbox.getById(bad))
    assert.equal(err.code, 'ERR_INVALID_ARG', bad)
  }
})

test('guest size and sandbox sizing options reach the machine', async () => {
  const p = provider(srv, { cpus: 2, memoryMb: 1024 })
  const sb = await p.sandbox.create({ memory: 768 })
  const [app, machine] = sb.sandboxId.split(':')
  const m = (await call(srv, 'machine.get', { app, machine })).body
  assert.equal(m.config.guest.cpus, 2)
  assert.equal(m.config.guest.memory_mb, 768)
  await sb.destroy()
})

test('getUrl gives a reachable URL on fly-local for an exposed port', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create({ ports: [8765] })
  const pub = Number((await sb.getInfo()).metadata.ports[8765])
  assert.equal(await sb.getUrl({ port: 8765 }), `http://127.0.0.1:${pub}`)
  assert.equal(await sb.getUrl({ port: 8765, protocol: 'ws' }), `ws://127.0.0.1:${pub}`)
  // another port: its URL through the edge (test/urls.test.js), private
  assert.ok(/^https:\/\/[^/]+\/\.computesdk\/u\/[0-9a-f]+\/3000\/\?computesdk_token=/.test(await sb.getUrl({ port: 3000 })), 'a private URL (not printed: it holds a token)')
  // A server started in the sandbox answers at that URL once it says so.
  let ready
  const serving = new Promise((resolve) => { ready = resolve })
  const onOut = (d) => { if (/Serving HTTP/.test(d)) ready() }
  const server = sb.runCommand('exec python3 -u -m http.server 8765 --bind 0.0.0.0',
    { onStdout: onOut, onStderr: onOut }).catch((e) => e)
  await serving
  const res = await fetch((await sb.getUrl({ port: 8765 })) + '/')
  assert.equal(res.status, 200)
  await res.arrayBuffer()
  await assert.rejects(sb.getUrl({ port: 0 }), (e) => e.code === 'ERR_INVALID_ARG')
  await sb.destroy()
  await server
})

test('missing token: a clear error when a method is called, not at construction', async () => {
  const saved = process.env.FLY_API_TOKEN
  delete process.env.FLY_API_TOKEN
  try {
    const p = fly({ apiHostname: srv.url })
    const err = await rejects(p.sandbox.create())
    assert.equal(err.code, 'FLY_UNAUTHORIZED')
    assert.match(err.message, /FLY_API_TOKEN/)
    const err2 = await rejects(p.sandbox.list())
    assert.equal(err2.code, 'FLY_UNAUTHORIZED')
  } finally {
    if (saved !== undefined) process.env.FLY_API_TOKEN = saved
  }
})

test('environment variables are the config fallbacks', async () => {
  const keys = ['FLY_API_TOKEN', 'FLY_APP_NAME', 'FLY_API_HOSTNAME', 'FLY_REGION', 'FLY_ORG']
  const saved = Object.fromEntries(keys.map((k) => [k, process.env[k]]))
  Object.assign(process.env, {
    FLY_API_TOKEN: srv.token, FLY_APP_NAME: 'envapp-' + process.pid, FLY_API_HOSTNAME: srv.url, FLY_REGION: 'ord', FLY_ORG: 'personal'
  })
  try {
    const p = fly()
    const sb = await p.sandbox.create()
    assert.equal(sb.sandboxId.split(':')[0], 'envapp-' + process.pid)
    assert.equal((await sb.getInfo()).metadata.region, 'ord')
    await sb.destroy()
  } finally {
    for (const k of keys) {
      if (saved[k] === undefined) delete process.env[k]
      else process.env[k] = saved[k]
    }
  }
})

test('invalid config and options are typed errors', async () => {
  for (const bad of [{ apiToken: 5 }, { apiHostname: 'ftp://x' }, { appName: 'Bad Name' }, { cpus: 0 },
    { memoryMb: 'lots' }, { transport: 'carrier-pigeon' }, { retry: { baseMs: -1 } }, { maxFileBytes: 0 },
    { maxEntries: 1.5 }, { opTimeoutMs: 'soon' }, { keepaliveSec: 0 }]) {
    assert.throws(() => fly(bad), (e) => e.code === 'ERR_INVALID_ARG', JSON.stringify(bad))
  }
  const p = provider(srv)
  // One rule per option, whether fly() or create gives it (lib/config.js RANGES).
  for (const opts of [{ envs: { 'BAD-NAME': 'x' } }, { cpus: -1 }, { timeout: 'soon' }, { image: '' }, { signal: 'soon' },
    { cpus: 17 }, { vcpus: 17 }, { memory: 128 }, { memoryMb: 131073 }, { timeout: 8 * 24 * 3600 * 1000 },
    { idleTimeout: -1 }, { autoResume: 'yes' }]) {
    const err = await rejects(p.sandbox.create(opts))
    assert.equal(err.code, 'ERR_INVALID_ARG', JSON.stringify(opts))
  }
  assert.deepEqual(await p.sandbox.list(), [])
})

test('unknown options are refused, naming the nearest known one; memory is one name for one thing', async () => {
  const typo = (() => { try { fly({ memroy: 1024 }) } catch (e) { return e } })()
  assert.equal(typo.code, 'ERR_INVALID_ARG')
  assert.match(typo.message, /unknown option "memroy"; did you mean "memory"\?/)
  const other = (() => { try { fly({ apiKey: 'x' }) } catch (e) { return e } })()
  assert.match(other.message, /unknown option "apiKey"; did you mean "apiToken"\?/)
  assert.throws(() => fly({ memory: 1024, memoryMb: 512 }), (e) => e.code === 'ERR_INVALID_ARG')

  // fly({ memory }) is the guest size, as create's memory is.
  const p = provider(srv, { memory: 1024 })
  const sb = await p.sandbox.create()
  try {
    const [app, machine] = sb.sandboxId.split(':')
    assert.equal((await call(srv, 'machine.get', { app, machine })).body.config.guest.memory_mb, 1024)
  } finally {
    await sb.destroy()
  }
  const err = await rejects(p.sandbox.create({ envs: {}, enviroment: { A: '1' } }))
  assert.equal(err.code, 'ERR_INVALID_ARG')
  assert.match(err.message, /unknown option "enviroment"/)
  // Another provider's CreateSandboxOptions names are taken (ComputeSDK's contract).
  const ok = await p.sandbox.create({ namespace: 'n', directory: '/d', provider: 'fly' })
  await ok.destroy()
  assert.deepEqual(await p.sandbox.list(), [])
})

test('create: an already aborted signal throws at once and sends nothing', async (t) => {
  const seen = []
  const proxy = await startProxy(t, srv, { onRequest: (method, path) => seen.push(`${method} ${path}`) })
  const ac = new AbortController()
  ac.abort(new Error('changed my mind'))
  const err = await rejects(provider(proxy).sandbox.create({ signal: ac.signal }))
  assert.equal(err.name, 'AbortError')
  assert.equal(err.code, 'ABORT_ERR')
  assert.equal(err.cause.message, 'changed my mind')
  assert.deepEqual(seen, [])
})

test('create: an abort while it waits for the machine removes it before create rejects; signal stays out of the config', async (t) => {
  const ac = new AbortController()
  let createBody = null
  const proxy = await startProxy(t, srv, {
    onRequest: (method, path, body) => {
      if (method === 'POST' && /\/machines$/.test(path)) createBody = JSON.parse(body)
      if (method === 'GET' && /\/wait\?.*state=started/.test(path)) ac.abort()
    }
  })
  const p = provider(proxy)
  const err = await rejects(p.sandbox.create({ signal: ac.signal }))
  assert.equal(err.name, 'AbortError')
  assert.equal(err.code, 'ABORT_ERR')
  assert.match(err.sandboxId, /^[a-z0-9-]+:[0-9a-f]+$/)
  assert.equal(await p.sandbox.getById(err.sandboxId), null, 'the machine is gone when create rejects')
  assert.deepEqual(await p.sandbox.list(), [])
  assert.ok(createBody, 'the create was sent')
  assert.ok(!JSON.stringify(createBody).includes('signal'), JSON.stringify(createBody).slice(0, 200))
})

test('create: an abort during the SSH check removes the machine before create rejects', async (t) => {
  const ac = new AbortController()
  // An sshd that accepts and never answers: the check is under way when
  // the connection arrives.
  const silent = net.createServer((sock) => {
    ac.abort()
    sock.on('error', () => {})
  })
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.after(() => silent.close())
  const p = provider(srv, { sshHost: '127.0.0.1', sshPort: silent.address().port })
  const err = await rejects(p.sandbox.create({ signal: ac.signal }))
  assert.equal(err.code, 'ABORT_ERR')
  assert.equal(await p.sandbox.getById(err.sandboxId), null)
  assert.deepEqual(await p.sandbox.list(), [])
})

test('create is all or nothing: a machine that never starts is removed and the error names it', async () => {
  const p = provider(srv)
  const fault = srv.faults.add({ method: 'GET', path: /\/wait$/, status: 503, times: Infinity })
  let err
  try {
    err = await rejects(p.sandbox.create())
  } finally {
    srv.faults.remove(fault)
  }
  assert.equal(err.code, 'FLY_UNAVAILABLE')
  assert.match(err.message, /^Failed to create Fly\.io sandbox/)
  assert.equal(err.sandboxId, `${err.sandboxId.split(':')[0]}:${err.machineId}`)
  assert.equal(await p.sandbox.getById(err.sandboxId), null)
})

test('destroy reports a machine it could not remove, and succeeds once it can', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create()
  const machine = sb.sandboxId.split(':')[1]
  const fault = srv.faults.add({ method: 'DELETE', machine, status: 503, times: Infinity })
  let err
  try {
    err = await rejects(sb.destroy())
  } finally {
    srv.faults.remove(fault)
  }
  assert.equal(err.code, 'FLY_DESTROY_FAILED')
  assert.equal(err.cause.code, 'FLY_UNAVAILABLE')
  assert.equal(err.sandboxId, sb.sandboxId)
  assert.notEqual(await p.sandbox.getById(sb.sandboxId), null, 'it is still there')
  await sb.destroy()
  assert.equal(await p.sandbox.getById(sb.sandboxId), null)
})

test('create pins the host key it generated, not the fingerprint the API echoes back', async (t) => {
  const forged = 'SHA256:' + Buffer.alloc(32, 7).toString('base64').replace(/=+$/, '')
  const proxy = await startProxy(t, srv, {
    onReply: (method, path, json) => {
      if (method !== 'GET' || !/\/machines\/[0-9a-f]+$/.test(path.split('?')[0]) || !json.config) return undefined
      json.config.metadata = { ...json.config.metadata, computesdk_host_key_fp: forged }
      return json
    }
  })
  const p = provider(proxy)
  const sb = await p.sandbox.create()
  assert.notEqual(sb.getInstance().hostKeyFingerprint, forged)
  await sb.getInfo() // re-reads the (forged) metadata
  await closeSessions(sb)
  assert.equal((await sb.runCommand('echo pinned')).stdout, 'pinned\n')
  await sb.destroy()
})

test('the destroyed-ids table keeps only the most recent ids', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create({ waitForSsh: false })
  const app = sb.sandboxId.split(':')[0]
  const ids = Array.from({ length: RECENT_LIMIT + 50 }, (_, i) => `${app}:${(0x100000 + i).toString(16)}`)
  for (let i = 0; i < ids.length; i += 100) await Promise.all(ids.slice(i, i + 100).map((id) => p.sandbox.destroy(id)))
  await sb.destroy()
  const destroyed = sb.getInstance()._ctx.state.destroyed
  assert.equal(destroyed.size, RECENT_LIMIT)
  assert.ok(destroyed.has(sb.sandboxId) && !destroyed.has(ids[0]))
  assert.equal((await rejects(sb.runCommand('true'))).code, 'FLY_NOT_FOUND')
})

test('works through computesdk-style createCompute', async () => {
  const { createCompute } = require('@computesdk/provider')
  const compute = createCompute({ provider: provider(srv) })
  const sb = await compute.sandbox.create()
  const r = await sb.runCommand('echo via-compute')
  assert.equal(r.stdout, 'via-compute\n')
  assert.equal(r.exitCode, 0)
  assert.equal(typeof r.durationMs, 'number')
  await sb.destroy()
})

test('a create timeout ends the sandbox: it stops and is destroyed', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create({ timeout: 1000 })
  assert.equal((await sb.getInfo()).timeout, 1000)
  const [app, machine] = sb.sandboxId.split(':')
  await call(srv, 'machine.wait', { app, machine }, { query: q({ state: 'destroyed', timeout: 30 }) })
    .catch((e) => assert.equal(e.code, 'FLY_NOT_FOUND'))
  assert.equal(await p.sandbox.getById(sb.sandboxId), null)
})

test('logging a provider or a sandbox does not show the token or keys', async () => {
  const util = require('util')
  const key = native.keygen()
  const p = provider(srv, { sshPrivateKey: key.privateKey, sshPassword: 'pw-SECRET-123' })
  const sb = await p.sandbox.create({ waitForSsh: false })
  for (const shown of [util.inspect(p, { depth: 10 }), util.inspect(sb, { depth: 10 }),
    util.inspect(sb.getInstance(), { depth: 10 }), JSON.stringify(sb.getInstance())]) {
    assert.ok(!shown.includes(srv.token), 'token shown')
    assert.ok(!shown.includes('PRIVATE KEY'), 'key shown')
    assert.ok(!shown.includes('pw-SECRET-123'), 'password shown')
  }
  await sb.destroy()
})

test('works as the provider of the computesdk singleton, streaming and files included', async () => {
  const { compute } = require('computesdk')
  compute.setConfig({ provider: provider(srv) })
  const sb = await compute.sandbox.create()
  try {
    assert.equal(sb.provider, 'fly')
    assert.equal((await sb.runCommand('python3 -c "print(42)"')).stdout, '42\n')
    const chunks = []
    const r = await sb.runCommand('echo a; echo b', { onStdout: (d) => chunks.push(d) })
    assert.equal(chunks.join(''), r.stdout)
    await sb.filesystem.writeFile('/tmp/x.txt', 'héllo')
    assert.equal(await sb.filesystem.readFile('/tmp/x.txt'), 'héllo')
    assert.equal((await sb.runCode('print(1 + 1)')).stdout, '2\n')
  } finally {
    await sb.destroy()
  }
})

test('a machine that fails to boot is FLY_MACHINE_FAILED with its cause, within seconds, and is removed', async (t) => {
  // fly-local's strict mode: an image name that is not built cannot boot.
  process.env.FLY_LOCAL_STRICT_IMAGES = '1'
  t.after(() => { delete process.env.FLY_LOCAL_STRICT_IMAGES })
  const p = provider(srv, { startTimeoutMs: 60000 }) // the old wait would time out here instead
  const err = await rejects(p.sandbox.create({ image: 'registry.example/not-built:1' }))
  assert.equal(err.code, 'FLY_MACHINE_FAILED')
  assert.equal(err.state, 'failed')
  assert.match(err.message, /not-built:1" is not built/)
  assert.ok(err.machineId)
  const left = srv.machines().filter((m) => m.id === err.machineId && m.state !== 'destroyed')
  assert.deepEqual(left, [], 'the failed machine was removed')
})
