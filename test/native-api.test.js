'use strict'
// The Machines API client in C (src/api.c), against fly-local over real
// HTTP: every operation, the error mapping, retries, and the token's
// secrecy.
const test = require('node:test')
const assert = require('node:assert/strict')
const { startLocal, call, q, appName, rejects } = require('./helpers/fly')

let srv
test.before(async () => { srv = await startLocal() })
test.after(() => srv && srv.stop())

async function newApp () {
  const app = appName('api')
  await call(srv, 'app.create', {}, { body: JSON.stringify({ name: app, org_slug: 'personal' }) })
  return app
}

async function newMachine (app, extra) {
  const r = await call(srv, 'machine.create', { app }, {
    body: JSON.stringify({ region: 'iad', config: { image: 'ubuntu:22.04', metadata: { suite: 'api' }, ...extra } })
  })
  return r.body
}

function waitState (app, machine, state, version) {
  const query = { state, timeout: 30 }
  if (version) query.version = version
  return call(srv, 'machine.wait', { app, machine }, { query: q(query) })
}

test('apps: create (name and app_name), get, list by org, delete', async () => {
  const a = appName('apps')
  const b = appName('apps')
  const ca = await call(srv, 'app.create', {}, { body: JSON.stringify({ name: a, org_slug: 'personal' }) })
  assert.equal(ca.status, 201)
  assert.equal(typeof ca.body.id, 'string')
  await call(srv, 'app.create', {}, { body: JSON.stringify({ app_name: b, org_slug: 'personal' }) })
  const got = await call(srv, 'app.get', { app: a })
  assert.equal(got.status, 200)
  assert.equal(got.body.name, a)
  assert.match(got.requestId, /.+/)
  const list = await call(srv, 'app.list', {}, { query: q({ org_slug: 'personal' }) })
  const names = list.body.apps.map((x) => x.name)
  assert.ok(names.includes(a) && names.includes(b))
  const del = await call(srv, 'app.delete', { app: b })
  assert.equal(del.status, 202)
  const err = await rejects(call(srv, 'app.get', { app: b }))
  assert.equal(err.code, 'FLY_NOT_FOUND')
  assert.equal(err.status, 404)
})

test('machines: the whole lifecycle through every call', async () => {
  const app = await newApp()
  const m = await newMachine(app)
  assert.match(m.id, /^[0-9a-f]{14}$/)
  assert.equal(m.state, 'created')

  await waitState(app, m.id, 'started')
  const got = await call(srv, 'machine.get', { app, machine: m.id })
  assert.equal(got.body.state, 'started')

  const listed = await call(srv, 'machine.list', { app }, { query: q({ 'metadata.suite': 'api' }) })
  assert.deepEqual(listed.body.map((x) => x.id), [m.id])
  const none = await call(srv, 'machine.list', { app }, { query: q({ 'metadata.suite': 'other' }) })
  assert.deepEqual(none.body, [])

  // metadata: set, get, delete (no new version)
  assert.equal((await call(srv, 'machine.metadata.set', { app, machine: m.id, key: 'k 1' },
    { body: JSON.stringify({ value: 'v/1' }) })).status, 204)
  const md = await call(srv, 'machine.metadata.get', { app, machine: m.id })
  assert.equal(md.body['k 1'], 'v/1')
  await call(srv, 'machine.metadata.delete', { app, machine: m.id, key: 'k 1' })
  assert.equal((await call(srv, 'machine.metadata.get', { app, machine: m.id })).body['k 1'], undefined)

  // exec runs inside the machine
  const ex = await call(srv, 'machine.exec', { app, machine: m.id },
    { body: JSON.stringify({ command: ['sh', '-c', 'echo out; echo err >&2; exit 3'], timeout: 10 }) })
  assert.equal(ex.body.exit_code, 3)
  assert.equal(ex.body.stdout, 'out\n')
  assert.equal(ex.body.stderr, 'err\n')

  // stop with signal and timeout, wait for stopped with the version
  const cur = (await call(srv, 'machine.get', { app, machine: m.id })).body
  await call(srv, 'machine.stop', { app, machine: m.id }, { body: JSON.stringify({ signal: 'SIGTERM', timeout: '5s' }) })
  await waitState(app, m.id, 'stopped', cur.instance_id || cur.version)
  assert.equal((await call(srv, 'machine.get', { app, machine: m.id })).body.state, 'stopped')

  // update replaces the config and issues a new version; stopped stays stopped
  const upd = await call(srv, 'machine.update', { app, machine: m.id },
    { body: JSON.stringify({ config: { ...cur.config, metadata: { suite: 'api', updated: 'yes' } } }) })
  assert.notEqual(upd.body.instance_id || upd.body.version, cur.instance_id || cur.version)

  await call(srv, 'machine.start', { app, machine: m.id })
  await waitState(app, m.id, 'started')
  await call(srv, 'machine.suspend', { app, machine: m.id })
  await waitState(app, m.id, 'suspended')
  await call(srv, 'machine.start', { app, machine: m.id })
  await waitState(app, m.id, 'started')

  const ev = await call(srv, 'machine.events', { app, machine: m.id })
  assert.ok(Array.isArray(ev.body) && ev.body.length > 0)

  // leases: acquire, a write without the nonce conflicts, release with it
  const lease = await call(srv, 'machine.lease.acquire', { app, machine: m.id }, { body: JSON.stringify({ ttl: 30 }) })
  const nonce = lease.body.data.nonce
  assert.match(nonce, /^[0-9a-f]+$/)
  const held = await rejects(call(srv, 'machine.stop', { app, machine: m.id }, { body: '{}' }))
  assert.equal(held.code, 'FLY_CONFLICT')
  assert.equal(held.status, 409)
  await call(srv, 'machine.lease.release', { app, machine: m.id }, { leaseNonce: nonce })

  // delete while running: 412, then forced
  const pre = await rejects(call(srv, 'machine.delete', { app, machine: m.id }))
  assert.equal(pre.code, 'FLY_PRECONDITION')
  assert.equal(pre.status, 412)
  await call(srv, 'machine.delete', { app, machine: m.id }, { query: q({ force: 'true' }) })
  await waitState(app, m.id, 'destroyed').catch((e) => assert.equal(e.code, 'FLY_NOT_FOUND'))
  const gone = await call(srv, 'machine.get', { app, machine: m.id }).catch((e) => e)
  assert.ok(gone.code === 'FLY_NOT_FOUND' || gone.body.state === 'destroyed')
  const listed2 = await call(srv, 'machine.list', { app })
  assert.deepEqual(listed2.body, [], 'destroyed machines leave the list')
})

test('signal and restart reach the machine', async () => {
  const app = await newApp()
  /* the main process notes every SIGHUP it gets */
  const m = await newMachine(app, { init: { exec: ['/bin/bash', '-c', 'trap "echo hup >> /run/signals" HUP; while :; do sleep 0.1 & wait $!; done'] } })
  await waitState(app, m.id, 'started')
  const exec = async (cmd) => {
    const r = await call(srv, 'machine.exec', { app, machine: m.id }, { body: JSON.stringify({ command: ['sh', '-c', cmd], timeout: 10 }) })
    assert.equal(r.status, 200)
    return r.body.stdout
  }
  /* a mark on this boot's root */
  assert.equal(await exec('echo first > /root/boot && cat /root/boot'), 'first\n')
  const r = await call(srv, 'machine.signal', { app, machine: m.id }, { body: JSON.stringify({ signal: 'SIGHUP' }) })
  assert.equal(r.status, 200)
  /* the main process got it (waited for, bounded) */
  const deadline = Date.now() + 20000
  let got = ''
  while ((got = await exec('cat /run/signals 2>/dev/null; true')) !== 'hup\n' && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  assert.equal(got, 'hup\n')
  await call(srv, 'machine.restart', { app, machine: m.id })
  await waitState(app, m.id, 'started')
  /* a new boot: a fresh root, and a main process that has had no signal */
  assert.equal(await exec('cat /root/boot 2>/dev/null || echo fresh; cat /run/signals 2>/dev/null; true'), 'fresh\n')
  const events = (await call(srv, 'machine.get', { app, machine: m.id })).body.events
  assert.ok(events.some((e) => e.type === 'restart'), JSON.stringify(events))
  await call(srv, 'machine.delete', { app, machine: m.id }, { query: q({ force: 'true' }) })
})

test('regions need no auth and list codes', async () => {
  const r = await call(srv, 'regions')
  assert.ok(r.body.regions.some((x) => x.code === 'iad'))
})

test('status codes map to stable error codes', async () => {
  const app = await newApp()
  // 401: wrong token
  const e401 = await rejects(require('./helpers/fly').native.api({ apiHostname: srv.url, apiToken: 'not-the-token', op: 'app.get', params: { app } }))
  assert.equal(e401.code, 'FLY_UNAUTHORIZED')
  assert.equal(e401.status, 401)
  // 403, injected
  srv.faults.add({ path: `/v1/apps/${app}`, status: 403, body: { error: 'forbidden' } })
  const e403 = await rejects(call(srv, 'app.get', { app }))
  assert.equal(e403.code, 'FLY_FORBIDDEN')
  // 404
  const e404 = await rejects(call(srv, 'machine.get', { app, machine: '0123456789abcd' }))
  assert.equal(e404.code, 'FLY_NOT_FOUND')
  assert.match(e404.flyError, /not found/)
  assert.match(e404.message, /404/)
  // 412: stop on a created machine (skip_launch keeps it created)
  const m = (await call(srv, 'machine.create', { app }, {
    body: JSON.stringify({ skip_launch: true, config: { image: 'x' } })
  })).body
  const e412 = await rejects(call(srv, 'machine.stop', { app, machine: m.id }, { body: '{}' }))
  assert.equal(e412.code, 'FLY_PRECONDITION')
  // 422: app name taken
  const e422 = await rejects(call(srv, 'app.create', {}, { body: JSON.stringify({ name: app, org_slug: 'personal' }) }))
  assert.equal(e422.code, 'FLY_UNPROCESSABLE')
  assert.equal(e422.status, 422)
  // 400: wait timeout out of range
  const e400 = await rejects(call(srv, 'machine.wait', { app, machine: m.id }, { query: q({ state: 'started', timeout: 61 }) }))
  assert.equal(e400.code, 'FLY_BAD_REQUEST')
  // connection refused: FLY_NETWORK after the bounded retries
  const dead = await rejects(require('./helpers/fly').native.api({
    apiHostname: 'http://127.0.0.1:1', apiToken: 't', op: 'app.get', params: { app }, retry: { baseMs: 5, maxMs: 10, totalMs: 100 }
  }))
  assert.equal(dead.code, 'FLY_NETWORK')
})

test('429 then success, 503 then success, 408 on wait then success', async () => {
  const app = await newApp()
  srv.faults.add({ path: `/v1/apps/${app}`, status: 429, times: 2 })
  assert.equal((await call(srv, 'app.get', { app })).status, 200)
  srv.faults.add({ path: `/v1/apps/${app}`, status: 503, times: 2 })
  assert.equal((await call(srv, 'app.get', { app })).status, 200)
  const m = await newMachine(app)
  srv.faults.add({ path: new RegExp(`/machines/${m.id}/wait$`), status: 408, body: { error: 'deadline_exceeded: machine failed to reach desired state' }, times: 2 })
  const w = await waitState(app, m.id, 'started')
  assert.equal(w.status, 200)
})

test('Retry-After is honoured', async () => {
  const app = await newApp()
  srv.faults.add({ path: `/v1/apps/${app}`, status: 429, retryAfter: 1, times: 1 })
  const t0 = Date.now()
  await call(srv, 'app.get', { app })
  // Backoff alone would retry after ~20 ms; the server asked for 1 s.
  assert.ok(Date.now() - t0 >= 950, `retried after ${Date.now() - t0} ms`)
})

// Fly rate-limits per action per machine (about 1/s, burst 3): a server
// that answers at once with Retry-After: 0 must not get a request storm.
// With the default policy (500 ms doubling, jitter in [d/2, d]) the
// attempts start at 0 and at least 0.25, 0.75, 1.75 and 3.75 s later, and
// the next would be past 5 s: five requests at most.
test('a 429 storm with Retry-After: 0 is met with the backoff floor, within the total bound', async () => {
  const app = await newApp()
  const id = srv.faults.add({ path: `/v1/apps/${app}`, method: 'GET', status: 429, retryAfter: 0, times: Infinity })
  const t0 = Date.now()
  const err = await rejects(call(srv, 'app.get', { app }, { retry: { totalMs: 5000 } }))
  const elapsed = Date.now() - t0
  const hits = srv.faults.list().find((r) => r.id === id).hits
  srv.faults.remove(id)
  assert.equal(err.code, 'FLY_RATE_LIMITED')
  assert.match(err.message, /gave up after \d+ attempts/)
  assert.ok(hits >= 2 && hits <= 5, `${hits} requests in ${elapsed} ms`)
  assert.ok(elapsed < 5000 + 2000, `gave up after ${elapsed} ms`)
})

// The floor holds against the caller's own settings too: with baseMs 0 no
// attempt follows another sooner than 100 ms.
test('no retry policy, nor an instant 408 long poll, retries sooner than 100 ms', async () => {
  const app = await newApp()
  const id = srv.faults.add({ path: `/v1/apps/${app}`, method: 'GET', status: 503, retryAfter: 0, times: Infinity })
  let t0 = Date.now()
  await rejects(call(srv, 'app.get', { app }, { retry: { baseMs: 0, maxMs: 0, totalMs: 2000 } }))
  let hits = srv.faults.list().find((r) => r.id === id).hits
  srv.faults.remove(id)
  assert.ok(hits >= 2 && hits <= 1 + 2000 / 100, `${hits} requests in ${Date.now() - t0} ms`)

  const m = await newMachine(app)
  const w = srv.faults.add({ path: new RegExp(`/machines/${m.id}/wait$`), status: 408, times: Infinity })
  t0 = Date.now()
  await rejects(call(srv, 'machine.wait', { app, machine: m.id }, { query: q({ state: 'destroyed', timeout: 1 }), waitTotalMs: 2000 }))
  hits = srv.faults.list().find((r) => r.id === w).hits
  srv.faults.remove(w)
  assert.ok(hits >= 2 && hits <= 1 + 2000 / 100, `${hits} long polls in ${Date.now() - t0} ms`)
})

test('retries stop at the total bound', async () => {
  const app = await newApp()
  const id = srv.faults.add({ path: `/v1/apps/${app}`, status: 503, times: 1000 })
  const err = await rejects(call(srv, 'app.get', { app }, { retry: { baseMs: 10, maxMs: 40, totalMs: 300 } }))
  srv.faults.remove(id)
  assert.equal(err.code, 'FLY_UNAVAILABLE')
  assert.equal(err.status, 503)
  assert.match(err.message, /gave up after \d+ attempts/)
})

test('a non-idempotent call is not retried after an ambiguous failure', async () => {
  const app = await newApp()
  const m = await newMachine(app)
  await waitState(app, m.id, 'started')
  srv.faults.add({ path: new RegExp(`/machines/${m.id}/exec$`), status: 503, times: 1 })
  const err = await rejects(call(srv, 'machine.exec', { app, machine: m.id }, {
    body: JSON.stringify({ command: ['true'] })
  }))
  assert.equal(err.code, 'FLY_UNAVAILABLE')
})

test('create after an ambiguous failure looks up its create id instead of duplicating', async () => {
  const app = await newApp()
  // The server creates the machine, then the reply is lost (503).
  srv.faults.add({ method: 'POST', path: `/v1/apps/${app}/machines`, status: 503, afterHandling: true, times: 1 })
  const createId = 'cid-' + Date.now()
  const r = await call(srv, 'machine.create', { app }, {
    body: JSON.stringify({ config: { image: 'x', metadata: { computesdk_create_id: createId } } }),
    createId,
    createIdKey: 'computesdk_create_id'
  })
  assert.equal(r.status, 200)
  const all = await call(srv, 'machine.list', { app })
  assert.equal(all.body.length, 1, 'exactly one machine')
  assert.equal(all.body[0].id, r.body.id)

  // Created, then the connection drops with no reply: the same.
  srv.faults.add({ method: 'POST', path: `/v1/apps/${app}/machines`, drop: true, afterHandling: true, times: 1 })
  const createId3 = 'cid3-' + Date.now()
  const r3 = await call(srv, 'machine.create', { app }, {
    body: JSON.stringify({ config: { image: 'x', metadata: { computesdk_create_id: createId3 } } }),
    createId: createId3,
    createIdKey: 'computesdk_create_id'
  })
  const mine3 = await call(srv, 'machine.list', { app }, { query: q({ 'metadata.computesdk_create_id': createId3 }) })
  assert.deepEqual(mine3.body.map((x) => x.id), [r3.body.id], 'exactly one machine after a dropped reply')

  // Not processed (503 before handling): the look-up finds nothing and the
  // create is sent again, once.
  srv.faults.add({ method: 'POST', path: `/v1/apps/${app}/machines`, status: 503, times: 1 })
  const createId2 = 'cid2-' + Date.now()
  await call(srv, 'machine.create', { app }, {
    body: JSON.stringify({ config: { image: 'x', metadata: { computesdk_create_id: createId2 } } }),
    createId: createId2,
    createIdKey: 'computesdk_create_id'
  })
  const mine = await call(srv, 'machine.list', { app }, { query: q({ 'metadata.computesdk_create_id': createId2 }) })
  assert.equal(mine.body.length, 1)
})

test('the token never appears in errors', async () => {
  const { native } = require('./helpers/fly')
  const secret = 'fm2_SECRETtoken' + 'x'.repeat(20)
  const errs = []
  for (const token of [secret, 'FlyV1 ' + secret, 'Bearer ' + secret]) {
    errs.push(await rejects(native.api({ apiHostname: srv.url, apiToken: token, op: 'app.get', params: { app: 'x' } })))
    errs.push(await rejects(native.api({ apiHostname: 'http://127.0.0.1:1', apiToken: token, op: 'app.get', params: { app: 'x' }, retry: { totalMs: 0 } })))
  }
  for (const e of errs) {
    const all = [e.message, e.stack, JSON.stringify(e), String(e.flyError), require('util').inspect(e)].join('\n')
    assert.ok(!all.includes('SECRETtoken'), 'token leaked: ' + e.code)
  }
})

test('Bearer and FlyV1 prefixes are normalised', async () => {
  const { native } = require('./helpers/fly')
  for (const token of [srv.token, 'Bearer ' + srv.token, 'FlyV1 ' + srv.token, '  bearer ' + srv.token]) {
    const r = await native.api({ apiHostname: srv.url, apiToken: token, op: 'app.list', query: q({ org_slug: 'personal' }) })
    assert.equal(r.status, 200)
  }
})

test('bad arguments throw synchronously with ERR_INVALID_ARG', () => {
  const { native } = require('./helpers/fly')
  const base = { apiHostname: srv.url, apiToken: 't' }
  const cases = [
    [undefined],
    [{ ...base, op: 'nope' }],
    [{ ...base, op: 'app.get' }],
    [{ ...base, op: 'app.get', params: { app: '' } }],
    [{ apiHostname: 'ftp://x', apiToken: 't', op: 'regions' }],
    [{ ...base, apiToken: 'a\r\nX-Evil: 1', op: 'regions' }],
    [{ ...base, op: 'regions', query: { a: 1 } }]
  ]
  for (const args of cases) {
    assert.throws(() => native.api(...args), (e) => e.code === 'ERR_INVALID_ARG', JSON.stringify(args))
  }
})

test('one keep-alive connection serves a sequence of calls', async () => {
  const app = await newApp()
  await call(srv, 'app.get', { app })
  const before = srv.stats().connections
  for (let i = 0; i < 20; i++) await call(srv, 'app.get', { app })
  assert.equal(srv.stats().connections - before, 0, 'no new connection for 20 sequential calls')
})

test('a dropped connection: retried when idempotent, reported when not', async () => {
  const app = await newApp()
  srv.faults.add({ path: `/v1/apps/${app}`, drop: true, times: 2 })
  assert.equal((await call(srv, 'app.get', { app })).status, 200)
  const m = await newMachine(app)
  await waitState(app, m.id, 'started')
  srv.faults.add({ path: new RegExp(`/machines/${m.id}/exec$`), drop: true, times: 1 })
  const err = await rejects(call(srv, 'machine.exec', { app, machine: m.id }, { body: JSON.stringify({ command: ['true'] }) }))
  assert.equal(err.code, 'FLY_NETWORK')
  assert.match(err.message, /exec/)
})

// ---- replies a server should not send: a plain HTTP server on 127.0.0.1 ----

const http = require('node:http')
const native = require('../build/Release/fly.node')

// handler(req, body, n) answers the nth request; resolves with the server
// and the requests it saw.
async function rawServer (handler) {
  const seen = []
  const s = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      seen.push({ method: req.method, url: req.url })
      handler(req, res, seen.length)
    })
  })
  await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${s.address().port}`, seen, close: () => new Promise((resolve) => s.close(resolve)) }
}

const raw = (s, op, extra) => native.api({ apiHostname: s.url, apiToken: 't', op, retry: { baseMs: 10, maxMs: 50, totalMs: 3000 }, ...extra })

test('a Retry-After too large for any integer gives up at once instead of overflowing', async (t) => {
  const s = await rawServer((req, res) => {
    res.writeHead(429, { 'retry-after': '99999999999999999999999' })
    res.end('{"error":"slow down"}')
  })
  t.after(() => s.close())
  const err = await rejects(raw(s, 'regions'))
  assert.equal(err.code, 'FLY_RATE_LIMITED')
  assert.equal(s.seen.length, 1)
})

test('the create look-up answers only with a machine that carries our create id', async (t) => {
  const s = await rawServer((req, res, n) => {
    res.setHeader('content-type', 'application/json')
    if (req.method === 'POST' && n === 1) {
      res.writeHead(503)
      return res.end('{"error":"try later"}')
    }
    if (req.method === 'GET') {
      // A server that ignores the metadata filter: someone else's machine.
      return res.end(JSON.stringify([{ id: 'other', config: { metadata: { computesdk_create_id: 'not-ours' } } }]))
    }
    res.end(JSON.stringify({ id: 'ours', config: { metadata: { computesdk_create_id: 'cid-1' } } }))
  })
  t.after(() => s.close())
  const r = await raw(s, 'machine.create', { params: { app: 'a' }, body: '{}', createId: 'cid-1' })
  assert.equal(r.body.id, 'ours')
  assert.deepEqual(s.seen.map((x) => x.method), ['POST', 'GET', 'POST'])
})

test('an API reply over 64 MiB is refused with FLY_RESPONSE_TOO_LARGE', async (t) => {
  const chunk = Buffer.alloc(1 << 20, 0x20)
  const s = await rawServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    let i = 0
    const more = () => {
      while (i++ < 80) if (!res.write(chunk)) return res.once('drain', more)
      res.end('[]')
    }
    res.on('error', () => {})
    more()
  })
  t.after(() => s.close())
  const err = await rejects(raw(s, 'regions'))
  assert.equal(err.code, 'FLY_RESPONSE_TOO_LARGE')
})

test('volumes: create, get, list, update, extend, snapshots, delete (replies match the schema)', async () => {
  const { assertSchema } = require('./helpers/local')
  const app = await newApp()
  const v = (await call(srv, 'volume.create', { app }, { body: JSON.stringify({ name: 'api_vol', size_gb: 1, region: 'iad' }) })).body
  assertSchema('Volume', v)
  assert.match(v.id, /^vol_/)
  assertSchema('Volume', (await call(srv, 'volume.get', { app, volume: v.id })).body)
  const list = (await call(srv, 'volume.list', { app })).body
  assertSchema('VolumeList', list)
  assert.deepEqual(list.map((x) => x.id), [v.id])
  const upd = (await call(srv, 'volume.update', { app, volume: v.id }, { body: JSON.stringify({ snapshot_retention: 7 }) })).body
  assert.equal(upd.snapshot_retention, 7)
  const ext = (await call(srv, 'volume.extend', { app, volume: v.id }, { body: JSON.stringify({ size_gb: 2 }) })).body
  assertSchema('ExtendVolume', ext)
  assert.equal(ext.volume.size_gb, 2)
  assert.equal((await call(srv, 'volume.snapshot_create', { app, volume: v.id })).status, 200)
  const snaps = (await call(srv, 'volume.snapshots', { app, volume: v.id })).body
  assertSchema('VolumeSnapshotList', snaps)
  assert.equal(snaps.length, 1)
  assertSchema('Volume', (await call(srv, 'volume.delete', { app, volume: v.id })).body)
  // Snapshots outlive their volume: still listed, and the deleted volume
  // is in the org's listing with include_deleted only.
  assert.deepEqual((await call(srv, 'volume.snapshots', { app, volume: v.id })).body.map((x) => x.id), snaps.map((x) => x.id))
  const org = (await call(srv, 'volume.org_list', { org: 'personal' }, { query: q({ include_deleted: 'true' }) })).body
  assertSchema('OrgVolumes', org)
  assert.equal(org.volumes.find((x) => x.id === v.id).state, 'destroyed')
  const live = (await call(srv, 'volume.org_list', { org: 'personal' })).body
  assert.equal(live.volumes.some((x) => x.id === v.id), false)
  const gone = await rejects(call(srv, 'volume.snapshots', { app, volume: 'vol_nosuchvolume0' }))
  assert.equal(gone.code, 'FLY_NOT_FOUND')
})
