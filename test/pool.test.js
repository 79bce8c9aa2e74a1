'use strict'
// The warm pool (lib/pool.js) against fly-local: suspended machines tagged
// with the pool key, claimed by create() under a lease, topped up in the
// background, found again by other processes, drained; and what happens
// when the pool's machines or the API misbehave.  No timing is asserted.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { fork } = require('node:child_process')
const { fly } = require('..')
const { startLocal, startProxy, provider, call, q, appName, rejects, native } = require('./helpers/fly')

const POOL = 'computesdk_pool'
const FILLING = 'computesdk_pool_filling'
const CHILD = path.join(__dirname, 'fixtures', 'pool-child.js')

let srv
const key = native.keygen()
test.before(async () => { srv = await startLocal() })
test.after(async () => { if (srv) await srv.stop() })

// A provider with a pool, in this process; its errors are collected.
function poolProvider (app, size, extra = {}) {
  const errors = []
  const p = provider(srv, {
    appName: app,
    sshPrivateKey: key.privateKey,
    pool: { size, onError: (e) => errors.push(e) },
    ...extra
  })
  p.errors = errors
  return p
}

// The app's machines (not destroyed) carrying metadata k = v.
async function tagged (app, k, v) {
  try {
    return (await call(srv, 'machine.list', { app }, { query: q({ [`metadata.${k}`]: v }) })).body
  } catch (err) {
    if (err.code === 'FLY_NOT_FOUND') return []
    throw err
  }
}

const getMachine = async (app, id) => (await call(srv, 'machine.get', { app, machine: id })).body
const machineOf = (sb) => sb.sandboxId.split(':')[1]

// Destroyed, being destroyed, or gone.
async function assertGone (app, id) {
  const g = await call(srv, 'machine.get', { app, machine: id }).catch((e) => ({ body: { state: e.code } }))
  assert.ok(['destroying', 'destroyed', 'FLY_NOT_FOUND'].includes(g.body.state), `${id} is ${g.body.state}`)
}

async function destroyAll (p, sbs) {
  for (const sb of sbs) await p.sandbox.destroy(sb.sandboxId)
}

test('pool config is validated with typed errors', () => {
  const base = { apiToken: 't', apiHostname: 'http://127.0.0.1:1' }
  for (const pool of ['3', 3, [], { size: -1 }, { size: 1.5 }, { size: 101 }, {}, { size: 1, sise: 2 },
    { size: 1, concurrency: 0 }, { size: 1, onError: 'log' }]) {
    assert.throws(() => fly({ ...base, pool }), { code: 'ERR_INVALID_ARG' }, JSON.stringify(pool))
  }
  assert.throws(() => fly({ ...base, sshPassword: 'pw', pool: { size: 1 } }), { code: 'ERR_INVALID_ARG', message: /key authentication/ })
  const p = fly({ ...base, pool: { size: 2, concurrency: 3 } })
  assert.equal(p.pool.stats().size, 2)
  assert.equal(fly(base).pool.stats().size, 0)
})

test('fill, claim, top-up, drain', async (t) => {
  const app = appName('pool')
  const p = poolProvider(app, 2)
  const sbs = []
  t.after(() => destroyAll(p, sbs))
  const filled = await p.pool.fill()
  assert.equal(filled.created, 2)
  const { key: poolKey } = p.pool.stats()
  assert.match(poolKey, /^[0-9a-f]{16}$/)

  // Two suspended machines tagged with the pool key, which are nobody's sandboxes.
  let ready = await tagged(app, POOL, poolKey)
  assert.deepEqual(ready.map((m) => m.state), ['suspended', 'suspended'])
  assert.equal(await p.pool.size(), 2)
  assert.deepEqual(await p.sandbox.list(), [])
  const pooled = new Set(ready.map((m) => m.id))

  // create claims one: started, with the user's metadata, no longer in the pool.
  const sb = await p.sandbox.create({ metadata: { owner: 'alice' }, runtime: 'python' })
  sbs.push(sb)
  assert.ok(pooled.has(machineOf(sb)), 'the sandbox is a pool machine')
  const m = await getMachine(app, machineOf(sb))
  assert.equal(m.state, 'started')
  assert.equal(m.config.metadata[POOL], undefined)
  assert.equal(m.config.metadata.owner, 'alice')
  assert.equal(m.config.metadata.computesdk_runtime, 'python')
  ready = await tagged(app, POOL, poolKey)
  assert.deepEqual(ready.map((x) => x.id), [...pooled].filter((id) => id !== machineOf(sb)), 'one left until the top-up')

  // It works like any sandbox.
  const r = await sb.runCommand('echo "$(whoami) $((6*7))"')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'sandbox 42\n')
  assert.equal((await sb.runCode('print(6*7)', 'python')).stdout, '42\n')
  await sb.filesystem.writeFile('/tmp/f.txt', 'pooled')
  assert.equal(await sb.filesystem.readFile('/tmp/f.txt'), 'pooled')
  const info = await sb.getInfo()
  assert.equal(info.metadata.owner, 'alice')
  assert.equal(info.status, 'running')
  assert.deepEqual((await p.sandbox.list()).map((s) => s.sandboxId), [sb.sandboxId])

  // The background top-up brings the pool back to 2.
  await p.pool.settled()
  ready = await tagged(app, POOL, poolKey)
  assert.equal(ready.length, 2)
  assert.ok(ready.every((x) => x.state === 'suspended' && x.id !== machineOf(sb)))
  const st = p.pool.stats()
  assert.equal(st.claims, 1)
  assert.equal(st.created, 3)
  assert.equal(st.errors, 0, p.errors.map((e) => e.message).join('; '))
  for (const k of ['listMs', 'leaseMs', 'getMs', 'metadataMs', 'startMs', 'waitMs', 'sshMs', 'totalMs']) {
    assert.equal(typeof st.lastClaim[k], 'number', k)
  }

  // Options the pool's machines do not have: a normal create, the pool untouched.
  const own = await p.sandbox.create({ envs: { GREETING: 'hi' } })
  sbs.push(own)
  assert.ok(!ready.some((x) => x.id === machineOf(own)))
  assert.equal((await own.runCommand('echo $GREETING')).stdout, 'hi\n')
  const big = await p.sandbox.create({ memoryMb: 1024, waitForSsh: false })
  sbs.push(big)
  assert.equal(p.pool.stats().incompatible, 2)
  assert.equal(p.pool.stats().claims, 1)
  assert.deepEqual((await tagged(app, POOL, poolKey)).map((x) => x.id).sort(), ready.map((x) => x.id).sort())

  // A provider in this process without the pool option never claims.
  const plain = provider(srv, { appName: app, sshPrivateKey: key.privateKey })
  const nb = await plain.sandbox.create({ waitForSsh: false })
  sbs.push(nb)
  assert.ok(!ready.some((x) => x.id === machineOf(nb)))

  // drain destroys the pool's machines, and only them.
  const drained = await p.pool.drain()
  assert.equal(drained.destroyed, 2)
  assert.deepEqual(await tagged(app, POOL, poolKey), [])
  assert.deepEqual(await tagged(app, FILLING, poolKey), [])
  for (const x of ready) await assertGone(app, x.id)
  assert.equal((await sb.runCommand('echo still')).stdout, 'still\n', 'claimed sandboxes are not drained')
  assert.equal(await p.pool.size(), 0)
})

test('a drain that fails half-way leaves every machine findable, and a later drain({ all: true }) removes them', async (t) => {
  const app = appName('pool')
  const p = poolProvider(app, 2)
  await p.pool.fill()
  const ids = (await tagged(app, POOL, p.pool.stats().key)).map((m) => m.id).sort()
  assert.equal(ids.length, 2)
  // Every DELETE of the app's machines fails for the first drain (after its
  // retries): the machines' and the drain's own lease releases.
  const fault = srv.faults.add({ method: 'DELETE', path: new RegExp(`^/v1/apps/${app}/machines/`), status: 500, times: Infinity })
  let removed = false
  t.after(() => { if (!removed) srv.faults.remove(fault) })
  const err = await rejects(p.pool.drain())
  assert.equal(err.code, 'FLY_POOL_DRAIN_FAILED')
  srv.faults.remove(fault)
  removed = true
  // Still there, neither claimable nor lost: another process's drain of
  // every pool finds both and removes them.
  const left = (await call(srv, 'machine.list', { app })).body.filter((m) => m.state !== 'destroyed' && m.state !== 'destroying')
  assert.deepEqual(left.map((m) => m.id).sort(), ids)
  for (const m of left) assert.equal(m.config.metadata[POOL], undefined, 'no claim can take it')
  const other = poolProvider(app, 0)
  const again = await other.pool.drain({ all: true })
  assert.equal(again.destroyed, 2)
  for (const id of ids) await assertGone(app, id)
})

test('two processes racing for a pool of one: exactly one claims it', async (t) => {
  const app = appName('race')
  const filler = poolProvider(app, 1)
  const made = []
  t.after(() => destroyAll(filler, made))
  const env = { ...process.env, POOL_URL: srv.url, POOL_TOKEN: srv.token, POOL_APP: app, POOL_KEY: key.privateKey }
  for (let round = 0; round < 3; round++) {
    await filler.pool.fill()
    const [poolMachine] = await tagged(app, POOL, filler.pool.stats().key)
    assert.ok(poolMachine, 'a pool machine to race for')
    const kids = [0, 1].map(() => fork(CHILD, ['race'], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
    const results = kids.map((kid) => new Promise((resolve, reject) => {
      let out = null
      kid.on('message', (msg) => { if (msg !== 'ready') out = msg })
      kid.on('error', reject)
      kid.on('exit', (code) => (out ? resolve(out) : reject(new Error(`child exited ${code} without a result`))))
    }))
    await Promise.all(kids.map((kid) => new Promise((resolve) => kid.once('message', resolve))))
    for (const kid of kids) kid.send('go')
    const got = await Promise.all(results)
    for (const r of got) {
      assert.equal(r.error, undefined, r.error)
      made.push({ sandboxId: r.sandboxId })
      assert.equal(r.out, 'ok')
    }
    const winners = got.filter((r) => r.claims === 1)
    assert.equal(winners.length, 1, JSON.stringify(got))
    assert.equal(winners[0].sandboxId, `${app}:${poolMachine.id}`)
    const loser = got.find((r) => r.claims === 0)
    assert.equal(loser.misses, 1)
    assert.notEqual(loser.sandboxId, winners[0].sandboxId)
    assert.equal((await getMachine(app, poolMachine.id)).config.metadata[POOL], undefined)
  }
})

test('a pool outlives its process; the process ends once its top-up is done', async (t) => {
  const app = appName('exit')
  const p = poolProvider(app, 1)
  t.after(() => p.pool.drain())
  await p.pool.fill()
  const poolKey = p.pool.stats().key
  const [first] = await tagged(app, POOL, poolKey)
  const env = { ...process.env, POOL_URL: srv.url, POOL_TOKEN: srv.token, POOL_APP: app, POOL_KEY: key.privateKey }
  const kid = fork(CHILD, ['exit'], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  let result = null
  kid.on('message', (m) => { result = m })
  const code = await new Promise((resolve) => kid.on('exit', resolve))
  assert.equal(code, 0)
  assert.equal(result.error, undefined, result && result.error)
  // The child claimed the machine this process filled ...
  assert.equal(result.claims, 1)
  assert.equal(result.sandboxId, `${app}:${first.id}`)
  // ... and, before it ended by itself, refilled the pool with one another
  // process (this one) can claim.
  const ready = await tagged(app, POOL, poolKey)
  assert.equal(ready.length, 1)
  assert.notEqual(ready[0].id, first.id)
  assert.equal(ready[0].state, 'suspended')
  const sb = await p.sandbox.create()
  t.after(() => sb.destroy())
  assert.equal(machineOf(sb), ready[0].id)
  assert.equal((await sb.runCommand('hostname')).stdout.trim(), ready[0].id)
})

test('pool machines destroyed behind the pool\'s back are skipped', async (t) => {
  const app = appName('gone')
  const p = poolProvider(app, 2)
  const sbs = []
  t.after(async () => { await destroyAll(p, sbs); await p.pool.drain() })
  await p.pool.fill()
  const poolKey = p.pool.stats().key
  const [a, b] = await tagged(app, POOL, poolKey)
  // One is removed directly through the API; a stale list (as an eventually
  // consistent API may give) still shows it, so the claim finds it gone
  // when it takes the lease.
  await call(srv, 'machine.delete', { app, machine: a.id }, { query: q({ force: 'true' }) })
  let stale = (json) => [a]
  const via = await startProxy(t, srv, {
    onReply: (method, url, json) => {
      if (method === 'GET' && url.includes(`metadata.${POOL}=`) && Array.isArray(json)) return stale(json)
    }
  })
  const q2 = fly({ apiToken: via.token, apiHostname: via.url, appName: app, sshPrivateKey: key.privateKey, pool: { size: 0 } })
  // Only the gone one listed: the claim skips it (a miss), then a normal create.
  const sb = await q2.sandbox.create()
  sbs.push(sb)
  assert.ok(![a.id, b.id].includes(machineOf(sb)))
  assert.equal(q2.pool.stats().misses, 1)
  // Both listed: the live one is claimed, whichever is tried first.
  stale = (json) => [a, ...json.filter((m) => m.id !== a.id)]
  const sb2 = await q2.sandbox.create()
  sbs.push(sb2)
  assert.equal(machineOf(sb2), b.id)
  assert.equal((await sb2.runCommand('echo ok')).stdout, 'ok\n')
  assert.equal(q2.pool.stats().claims, 1)
  assert.equal(q2.pool.stats().claimErrors, 0)
  // The filler's top-up counts what is really there and makes up the loss.
  await p.pool.fill()
  assert.equal((await tagged(app, POOL, poolKey)).length, 2)
  assert.equal(p.errors.length, 0)
})

test('a claimed machine that fails to resume is destroyed and the next one tried', async (t) => {
  const app = appName('resume')
  const p = poolProvider(app, 2)
  const sbs = []
  t.after(async () => { await destroyAll(p, sbs); await p.pool.drain() })
  await p.pool.fill()
  const poolKey = p.pool.stats().key
  const ready = await tagged(app, POOL, poolKey)
  // Every start of both fails: both claims fail, then a normal create.
  const ids = ready.map((m) => srv.faults.add({ method: 'POST', path: /\/start$/, machine: m.id, status: 500, times: Infinity }))
  t.after(() => ids.forEach((id) => srv.faults.remove(id)))
  const q2 = poolProvider(app, 0)
  const sb = await q2.sandbox.create()
  sbs.push(sb)
  assert.ok(!ready.some((m) => m.id === machineOf(sb)))
  assert.equal((await sb.runCommand('echo ok')).stdout, 'ok\n')
  assert.equal(q2.pool.stats().claimErrors, 2)
  assert.equal(q2.errors.length, 2)
  assert.ok(q2.errors.every((e) => e.code === 'FLY_UNAVAILABLE'), q2.errors.map((e) => e.code).join())
  for (const m of ready) await assertGone(app, m.id)
})

test('top-up errors are reported and counted, never unhandled', async (t) => {
  const app = appName('err')
  const unhandled = []
  const onUnhandled = (e) => unhandled.push(e)
  process.on('unhandledRejection', onUnhandled)
  t.after(() => process.off('unhandledRejection', onUnhandled))
  const p = poolProvider(app, 1)
  const sbs = []
  t.after(async () => { await destroyAll(p, sbs); await p.pool.drain() })
  await p.pool.fill()
  // Machine creation now fails: the claim still works, its top-up fails.
  const fault = srv.faults.add({ method: 'POST', path: new RegExp(`^/v1/apps/${app}/machines$`), status: 500, times: Infinity })
  let removed = false
  t.after(() => { if (!removed) srv.faults.remove(fault) })
  const sb = await p.sandbox.create()
  sbs.push(sb)
  assert.equal(p.pool.stats().claims, 1)
  assert.equal((await sb.runCommand('echo ok')).stdout, 'ok\n')
  await p.pool.settled()
  assert.equal(p.pool.stats().fillErrors, 1)
  assert.equal(p.errors.length, 1)
  assert.equal(p.errors[0].code, 'FLY_UNAVAILABLE')
  assert.equal(p.pool.stats().lastError, p.errors[0])
  // An explicit fill() rejects with what went wrong.
  const err = await rejects(p.pool.fill())
  assert.equal(err.code, 'FLY_POOL_FILL_FAILED')
  assert.equal(err.cause.code, 'FLY_UNAVAILABLE')
  // A pool that is empty (and cannot be refilled) means normal creates,
  // which fail as they would without a pool.
  const noPool = await rejects(p.sandbox.create({ waitForSsh: false }))
  assert.equal(noPool.code, 'FLY_UNAVAILABLE')
  await p.pool.settled()
  // A throwing onError is contained too.
  const thrower = provider(srv, { appName: app, sshPrivateKey: key.privateKey, pool: { size: 1, onError: () => { throw new Error('boom') } } })
  await rejects(thrower.pool.fill())
  srv.faults.remove(fault)
  removed = true
  assert.deepEqual(await p.pool.fill(), { created: 1, ready: 1 })
  assert.equal(unhandled.length, 0, unhandled.map(String).join('; '))
})

test('an abort during a claim destroys the claimed machine and rejects with AbortError', async (t) => {
  const app = appName('abort')
  const p = poolProvider(app, 0)
  const filler = poolProvider(app, 1)
  t.after(() => filler.pool.drain())
  await filler.pool.fill()
  const [m] = await tagged(app, POOL, filler.pool.stats().key)
  // The signal fires as the claimed machine starts resuming.
  const ac = new AbortController()
  const starting = new Promise((resolve) => {
    srv.events.on('state', function onState (e) {
      if (e.id === m.id && e.state === 'starting') {
        srv.events.off('state', onState)
        ac.abort(new Error('stop'))
        resolve('starting')
      }
    })
  })
  const creating = p.sandbox.create({ signal: ac.signal })
  assert.equal(await Promise.race([starting, creating.then(() => 'resolved', () => 'rejected')]), 'starting')
  const err = await rejects(creating)
  assert.equal(err.name, 'AbortError')
  assert.equal(err.code, 'ABORT_ERR')
  await assertGone(app, m.id)
  assert.deepEqual(await p.sandbox.list(), [])
  assert.equal(p.pool.stats().claims, 0)
})
