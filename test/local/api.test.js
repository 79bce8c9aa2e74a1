'use strict'
// fly-local: the Machines API surface (shapes against the repository's schema,
// status codes, error texts, state rules, filters, leases, wait semantics).
const test = require('node:test')
const assert = require('node:assert/strict')
const http = require('http')
const { startLocal, localFixture, client, assertSchema } = require('../helpers/local')

const IMAGE = 'registry-1.docker.io/library/ubuntu:latest'

// Destroyed machines stay readable this long: long enough for the tests that
// read them in that state even on a loaded machine.
const fx = localFixture({ destroyedGraceMs: 3000 })
const { api } = fx

let appSeq = 0
const newApp = async () => {
  const name = `api-app-${process.pid}-${++appSeq}`
  const r = await api('POST', '/v1/apps', { app_name: name, org_slug: 'personal' })
  assert.equal(r.status, 201)
  return name
}
const create = async (app, body = {}) => {
  const r = await api('POST', `/v1/apps/${app}/machines`, { config: { image: IMAGE, ...(body.config || {}) }, ...body, ...(body.config ? { config: { image: IMAGE, ...body.config } } : {}) })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  assertSchema('Machine', r.body)
  return r.body
}
const wait = (app, m, q) => api('GET', `/v1/apps/${app}/machines/${m.id}/wait?${q}`)

test('start() returns url without trailing slash and a generated token', () => {
  assert.match(fx.srv.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  assert.ok(fx.srv.token.length >= 20)
})

test('rejects missing and wrong tokens with 401 and accepts Bearer and FlyV1', async () => {
  const none = await client(fx.srv, { token: null })('GET', '/v1/apps?org_slug=personal')
  assert.equal(none.status, 401)
  assert.deepEqual(none.body, { error: 'Authenticate: token validation error' })
  const wrong = await client(fx.srv, { token: 'nope' })('GET', '/v1/apps?org_slug=personal')
  assert.equal(wrong.status, 401)
  assertSchema('Error', wrong.body)
  const flyv1 = await client(fx.srv, { scheme: 'FlyV1' })('GET', '/v1/apps?org_slug=personal')
  assert.equal(flyv1.status, 200)
  const bearer = await api('GET', '/v1/apps?org_slug=personal')
  assert.equal(bearer.status, 200)
})

test('enforces a configured token', async (t) => {
  const s2 = await startLocal(t, { token: 'configured-token-123' })
  assert.equal(s2.token, 'configured-token-123')
  const ok = await client(s2)('GET', '/v1/apps?org_slug=personal')
  assert.equal(ok.status, 200)
  const bad = await client(s2, { token: fx.srv.token })('GET', '/v1/apps?org_slug=personal')
  assert.equal(bad.status, 401)
})

test('sets fly-request-id and the JSON content type on every response', async () => {
  for (const r of [await api('GET', '/v1/apps?org_slug=personal'), await api('GET', '/v1/apps/nope'),
    await client(fx.srv, { token: null })('GET', '/v1/apps/x')]) {
    assert.match(r.headers.get('fly-request-id'), /^[0-9A-HJKMNP-TV-Z]{26}-[a-z]{3}$/)
    assert.equal(r.headers.get('content-type'), 'application/json; charset=utf-8')
  }
})

test('serves regions without auth', async () => {
  const r = await client(fx.srv, { token: null })('GET', '/v1/platform/regions')
  assert.equal(r.status, 200)
  assertSchema('Regions', r.body)
  assert.ok(r.body.regions.some((x) => x.code === 'iad'))
  assert.equal(typeof r.body.nearest, 'string')
})

test('creates, gets, lists and deletes apps', async () => {
  const name = `api-apps-${process.pid}`
  const missing = await api('GET', `/v1/apps/${name}`)
  assert.equal(missing.status, 404)
  assertSchema('Error', missing.body)
  const c = await api('POST', '/v1/apps', { name, org_slug: 'personal' })
  assert.equal(c.status, 201)
  assertSchema('CreatedApp', c.body)
  assert.match(c.body.id, /^[a-z0-9]{16}$/)
  assert.equal(typeof c.body.created_at, 'number')
  const dup = await api('POST', '/v1/apps', { app_name: name, org_slug: 'personal' })
  assert.equal(dup.status, 422)
  assert.equal(dup.body.status, 'name_taken')
  assert.match(dup.body.error, /Name has already been taken/)
  const g = await api('GET', `/v1/apps/${name}`)
  assert.equal(g.status, 200)
  assertSchema('App', g.body)
  assert.equal(g.body.name, name)
  assert.equal(g.body.organization.slug, 'personal')
  const l = await api('GET', '/v1/apps?org_slug=personal')
  assert.equal(l.status, 200)
  assertSchema('AppList', l.body)
  assert.ok(l.body.apps.some((a) => a.name === name))
  assert.equal(l.body.total_apps, l.body.apps.length)
  const noOrg = await api('GET', '/v1/apps')
  assert.equal(noOrg.status, 400)
  const d = await api('DELETE', `/v1/apps/${name}`)
  assert.equal(d.status, 202)
  assert.equal(d.text, '')
  assert.equal((await api('GET', `/v1/apps/${name}`)).status, 404)
})

test('an app keeps the custom private network it was created on, and its machines carry it', async () => {
  const name = `net-${process.pid}`
  const c = await api('POST', '/v1/apps', { name, org_slug: 'personal', network: 'team-a' })
  assert.equal(c.status, 201)
  assertSchema('CreatedApp', c.body)
  assert.equal(c.body.network, 'team-a')
  const g = await api('GET', `/v1/apps/${name}`)
  assertSchema('App', g.body)
  assert.equal(g.body.network, 'team-a')
  const l = await api('GET', '/v1/apps?org_slug=personal')
  assert.equal(l.body.apps.find((a) => a.name === name).network, 'team-a')
  const plain = await newApp()
  assert.equal((await api('GET', `/v1/apps/${plain}`)).body.network, 'default')
  const m = await create(name, { skip_launch: true })
  assert.equal(fx.srv.machines().find((x) => x.id === m.id).network, 'team-a')
  for (const network of [42, 'Has Caps', 'a'.repeat(64), '-dash']) {
    const bad = await api('POST', '/v1/apps', { name: `${name}-bad`, network })
    assert.equal(bad.status, 400, JSON.stringify(network))
    assertSchema('Error', bad.body)
  }
})

test('paginates apps with limit and next_cursor', async () => {
  const org = `pg-${process.pid}`
  for (let i = 0; i < 3; i++) {
    assert.equal((await api('POST', '/v1/apps', { name: `${org}-${i}`, org_slug: org })).status, 201)
  }
  const p1 = await api('GET', `/v1/apps?org_slug=${org}&limit=2`)
  assertSchema('AppList', p1.body)
  assert.equal(p1.body.apps.length, 2)
  assert.equal(p1.body.total_apps, 3)
  assert.ok(p1.body.next_cursor)
  const p2 = await api('GET', `/v1/apps?org_slug=${org}&limit=2&cursor=${p1.body.next_cursor}`)
  assert.equal(p2.body.apps.length, 1)
  assert.equal(p2.body.next_cursor, undefined)
})

test('rejects bad machine configs with 400', async () => {
  const app = await newApp()
  const cases = [
    {},
    { config: {} },
    { config: { image: IMAGE, guest: { cpu_kind: 'shared', cpus: 1, memory_mb: 300 } } },
    { config: { image: IMAGE, files: [{ guest_path: 'relative', raw_value: 'eA==' }] } },
    { config: { image: IMAGE, files: [{ guest_path: '/x', raw_value: 'eA==', secret_name: 'S' }] } },
    { config: { image: IMAGE, restart: { policy: 'sometimes' } } },
    { config: { image: IMAGE }, region: 'zzz' }
  ]
  for (const body of cases) {
    const r = await api('POST', `/v1/apps/${app}/machines`, body)
    assert.equal(r.status, 400, JSON.stringify(body))
    assertSchema('Error', r.body)
    assert.match(r.body.error, /^invalid_argument: /)
  }
  const badJson = await api('POST', `/v1/apps/${app}/machines`, '{not json')
  assert.equal(badJson.status, 400)
  const noApp = await api('POST', '/v1/apps/does-not-exist/machines', { config: { image: IMAGE } })
  assert.equal(noApp.status, 404)
})

test('creates a machine in created state with Fly ids, then boots it in the background', async () => {
  const app = await newApp()
  const m = await create(app, { config: { metadata: { k: 'v' } }, region: 'ord' })
  assert.equal(m.state, 'created')
  assert.match(m.id, /^[0-9a-f]{14}$/)
  assert.match(m.version, /^[0-9A-HJKMNP-TV-Z]{26}$/)
  assert.equal(m.instance_id, m.version)
  assert.equal(m.region, 'ord')
  assert.match(m.private_ip, /^fdaa:[0-9a-f:]+$/)
  assert.equal(m.nonce, undefined)
  assert.equal(m.events[0].type, 'launch')
  assert.equal(m.config.guest.memory_mb, 256)
  const w = await wait(app, m, 'state=started&timeout=30')
  assert.equal(w.status, 200)
  assertSchema('WaitResult', w.body)
  assert.equal(w.body.ok, true)
  assert.equal(w.body.state, 'started')
  const g = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
  assert.equal(g.body.state, 'started')
  assertSchema('Machine', g.body)
  const ev = await api('GET', `/v1/apps/${app}/machines/${m.id}/events`)
  assert.equal(ev.status, 200)
  assertSchema('MachineEvents', ev.body)
  assert.deepEqual(ev.body.map((e) => e.type).slice(0, 2), ['start', 'launch'])
  assert.ok(ev.body[0].timestamp >= ev.body[1].timestamp)
  const app2 = await api('GET', `/v1/apps/${app}`)
  assert.equal(app2.body.machine_count, 1)
  const d = await api('DELETE', `/v1/apps/${app}/machines/${m.id}?force=true`)
  assert.equal(d.status, 200)
})

test('skip_launch stays created; stop on created is 412; start from created works', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true })
  const stop = await api('POST', `/v1/apps/${app}/machines/${m.id}/stop`)
  assert.equal(stop.status, 412)
  assert.equal(stop.body.error, "failed_precondition: unable to stop machine from current state: 'created'")
  const s = await api('POST', `/v1/apps/${app}/machines/${m.id}/start`)
  assert.equal(s.status, 200)
  assert.equal(s.body.previous_state, 'created')
  assertSchema('StartResult', s.body)
  assert.equal((await wait(app, m, 'state=started&timeout=30')).status, 200)
  const del = await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)
  assert.equal(del.status, 412)
  assert.equal(del.body.error, 'failed_precondition: unable to destroy machine, not currently stopped, suspended, failed or created')
  const arr = await api('POST', `/v1/apps/${app}/machines/${m.id}/stop`, '[]')
  assert.equal(arr.status, 400)
  assert.equal(arr.body.error, 'json: cannot unmarshal array into Go value of type main.stopRequest')
  const st = await api('POST', `/v1/apps/${app}/machines/${m.id}/stop`, { signal: 'SIGTERM', timeout: '5s' })
  assert.equal(st.status, 200)
  assertSchema('Ok', st.body)
  const w = await wait(app, m, `state=stopped&version=${m.version}&timeout=30`)
  assert.equal(w.status, 200)
  assert.equal(w.body.state, 'stopped')
  const ev = await api('GET', `/v1/apps/${app}/machines/${m.id}/events?limit=1`)
  assert.equal(ev.body.length, 1)
  assert.equal(ev.body[0].type, 'exit')
  assert.equal(ev.body[0].request.exit_event.requested_stop, true)
  const d = await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)
  assert.equal(d.status, 200)
  assert.deepEqual(d.body, { ok: true })
  assert.equal((await wait(app, m, 'state=destroyed&timeout=10')).status, 200)
  const g = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
  assert.equal(g.status, 200)
  assert.equal(g.body.state, 'destroyed')
  const again = await api('POST', `/v1/apps/${app}/machines/${m.id}/start`)
  assert.equal(again.status, 404)
})

test('a destroyed machine reads destroyed, then 404', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true })
  // Listen before the delete: the purge must not happen unobserved.
  const purged = new Promise((resolve) => {
    const on = (e) => { if (e.id === m.id) { fx.srv.events.off('purged', on); resolve() } }
    fx.srv.events.on('purged', on)
  })
  assert.equal((await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)).status, 200)
  assert.equal((await wait(app, m, 'state=destroyed&timeout=10')).status, 200)
  const listed = await api('GET', `/v1/apps/${app}/machines?include_deleted=true`)
  assert.ok(listed.body.some((x) => x.id === m.id && x.state === 'destroyed'))
  const hidden = await api('GET', `/v1/apps/${app}/machines`)
  assert.ok(!hidden.body.some((x) => x.id === m.id))
  await purged
  const g = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
  assert.equal(g.status, 404)
  assert.equal(g.body.error, 'not_found: machine not found')
})

test('wait: 400 for bad timeout, stopped without version, bad state; 408 at the timeout', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true })
  for (const q of ['timeout=0', 'timeout=61', 'timeout=abc', 'state=bogus', 'state=stopped']) {
    const r = await wait(app, m, q)
    assert.equal(r.status, 400, q)
    assertSchema('Error', r.body)
  }
  const nov = await wait(app, m, 'state=stopped')
  assert.match(nov.body.error, /instance_id required when waiting for stopped machine/)
  const t0 = Date.now()
  const r = await wait(app, m, 'state=started&timeout=1')
  assert.equal(r.status, 408)
  assert.equal(r.body.error, 'deadline_exceeded: machine failed to reach desired state, started, currently created')
  assert.ok(Date.now() - t0 >= 900)
  const multi = await wait(app, m, 'state=started,settled&timeout=1')
  assert.equal(multi.status, 408)
})

test('wait answers as soon as the state is reached (event driven)', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true })
  const pending = wait(app, m, 'state=started&timeout=60')
  const t0 = Date.now()
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/start`)).status, 200)
  const r = await pending
  assert.equal(r.status, 200)
  assert.ok(Date.now() - t0 < 5000)
  /* a machine destroyed mid-wait gives 404 */
  const p2 = wait(app, m, 'state=suspended&timeout=60')
  assert.equal((await api('DELETE', `/v1/apps/${app}/machines/${m.id}?kill=true`)).status, 200)
  assert.equal((await p2).status, 404)
})

test('wait on an old version reports it as replaced; update replaces config and version', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true, config: { env: { A: '1' } } })
  const stale = await api('POST', `/v1/apps/${app}/machines/${m.id}`, { config: { image: IMAGE }, current_version: '01AAAAAAAAAAAAAAAAAAAAAAAA' })
  assert.equal(stale.status, 409)
  const u = await api('POST', `/v1/apps/${app}/machines/${m.id}`, { config: { image: IMAGE, env: { A: '2' } }, current_version: m.version })
  assert.equal(u.status, 200)
  assertSchema('Machine', u.body)
  assert.notEqual(u.body.version, m.version)
  assert.equal(u.body.config.env.A, '2')
  /* not started before the update: it stays stopped */
  const w = await wait(app, u.body, `state=stopped&version=${u.body.version}&timeout=30`)
  assert.equal(w.status, 200)
  const old = await wait(app, m, `state=stopped&version=${m.version}&timeout=5`)
  assert.match(old.body.error, /currently replaced/)
  const versions = await api('GET', `/v1/apps/${app}/machines/${m.id}/versions`)
  assert.equal(versions.status, 200)
  assertSchema('MachineVersions', versions.body)
  assert.equal(versions.body.length, 2)
})

test('lists with metadata, state, summary and pagination filters', async () => {
  const app = await newApp()
  const a = await create(app, { skip_launch: true, config: { metadata: { role: 'web', tier: 'a' } } })
  const b = await create(app, { skip_launch: true, config: { metadata: { role: 'web', tier: 'b' } } })
  const c = await create(app, { skip_launch: true, config: { metadata: { role: 'db' } } })
  const ids = (r) => r.body.map((x) => x.id).sort()
  const web = await api('GET', `/v1/apps/${app}/machines?metadata.role=web`)
  assert.equal(web.status, 200)
  assertSchema('MachineList', web.body)
  assert.deepEqual(ids(web), [a.id, b.id].sort())
  const both = await api('GET', `/v1/apps/${app}/machines?metadata.role=web&metadata.tier=b`)
  assert.deepEqual(ids(both), [b.id])
  const none = await api('GET', `/v1/apps/${app}/machines?metadata.role=cache`)
  assert.deepEqual(none.body, [])
  const created = await api('GET', `/v1/apps/${app}/machines?state=created`)
  assert.equal(created.body.length, 3)
  const started = await api('GET', `/v1/apps/${app}/machines?state=started,stopped`)
  assert.equal(started.body.length, 0)
  const summary = await api('GET', `/v1/apps/${app}/machines?summary=true`)
  assert.equal(summary.body[0].events, undefined)
  assert.equal(summary.body[0].checks, undefined)
  const page1 = await api('GET', `/v1/apps/${app}/machines?limit=2`)
  assert.equal(page1.body.length, 2)
  const cursor = page1.headers.get('fly-next-cursor')
  assert.ok(cursor)
  const page2 = await api('GET', `/v1/apps/${app}/machines?limit=2&cursor=${cursor}`)
  assert.equal(page2.body.length, 1)
  assert.equal(page2.headers.get('fly-next-cursor'), null)
  assert.deepEqual([...page1.body, ...page2.body].map((x) => x.id).sort(), [a.id, b.id, c.id].sort())
  await api('DELETE', `/v1/apps/${app}/machines/${c.id}`)
  assert.equal((await api('GET', `/v1/apps/${app}/machines`)).body.length, 2)
  assert.equal((await api('GET', `/v1/apps/${app}/machines?include_deleted=true`)).body.length, 3)
})

test('metadata endpoints do not create a version', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true, config: { metadata: { a: '1' } } })
  const base = `/v1/apps/${app}/machines/${m.id}/metadata`
  const all = await api('GET', base)
  assertSchema('Metadata', all.body)
  assert.deepEqual(all.body, { a: '1' })
  assert.equal((await api('POST', `${base}/b`, { value: '2' })).status, 204)
  const v = await api('GET', `${base}/b`)
  assert.equal(v.status, 200)
  assertSchema('MetadataValue', v.body)
  assert.deepEqual(v.body, { value: '2' })
  assert.equal((await api('GET', `${base}/zz`)).status, 404)
  assert.equal((await api('PATCH', base, { metadata: { a: null, c: '3', b: '' } })).status, 204)
  assert.deepEqual((await api('GET', base)).body, { c: '3' })
  const stale = await api('PATCH', base, { metadata: { d: '4' }, machine_version: '01AAAAAAAAAAAAAAAAAAAAAAAA' })
  assert.equal(stale.status, 412)
  assert.equal((await api('PUT', base, { metadata: { d: '4' }, machine_version: m.version })).status, 204)
  assert.equal((await api('DELETE', `${base}/c`)).status, 204)
  assert.deepEqual((await api('GET', base)).body, { d: '4' })
  const g = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
  assert.equal(g.body.version, m.version)
  assert.deepEqual(g.body.config.metadata, { d: '4' })
  const filtered = await api('GET', `/v1/apps/${app}/machines?metadata.d=4`)
  assert.equal(filtered.body.length, 1)
})

test('leases: acquire, 409 for others, nonce guards writes, refresh, release', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true })
  const base = `/v1/apps/${app}/machines/${m.id}`
  assert.equal((await api('GET', `${base}/lease`)).status, 404)
  const l = await api('POST', `${base}/lease`, { ttl: 30, description: 'test' })
  assert.equal(l.status, 201)
  assert.equal(l.body.status, 'success')
  assertSchema('LeaseEnvelope', l.body)
  const { nonce } = l.body.data
  assert.match(nonce, /^[0-9a-f]{12}$/)
  assert.ok(l.body.data.expires_at > Date.now() / 1000)
  assert.equal((await api('POST', `${base}/lease`, { ttl: 30 })).status, 409)
  const g = await api('GET', `${base}/lease`)
  assertSchema('LeaseEnvelope', g.body)
  assert.equal(g.body.data.nonce, nonce)
  const withLease = await api('GET', `${base}?include_leases=true`)
  assertSchema('Machine', withLease.body)
  assert.equal(withLease.body.lease.owner, l.body.data.owner)
  assert.equal(withLease.body.lease.nonce, undefined)
  const guarded = await api('POST', `${base}/start`)
  assert.equal(guarded.status, 409)
  assert.match(guarded.body.error, /^aborted: machine ID [0-9a-f]{14} lease currently held by .*, expires at /)
  assert.equal((await api('DELETE', base)).status, 409)
  assert.equal((await api('POST', base, { config: { image: IMAGE } })).status, 409)
  /* metadata is not guarded */
  assert.equal((await api('POST', `${base}/metadata/x`, { value: 'y' })).status, 204)
  const refresh = await api('POST', `${base}/lease?ttl=60`, undefined, { 'fly-machine-lease-nonce': nonce })
  assert.equal(refresh.status, 201)
  assert.equal(refresh.body.data.nonce, nonce)
  assert.ok(refresh.body.data.expires_at >= l.body.data.expires_at)
  assert.equal((await api('DELETE', `${base}/lease`)).status, 400)
  assert.equal((await api('DELETE', `${base}/lease`, undefined, { 'fly-machine-lease-nonce': 'ffffffffffff' })).status, 404)
  const rel = await api('DELETE', `${base}/lease`, undefined, { 'fly-machine-lease-nonce': nonce })
  assert.equal(rel.status, 200)
  assertSchema('LeaseReleased', rel.body)
  assert.deepEqual(rel.body, { status: 'success', data: { ok: true } })
  assert.equal((await api('DELETE', base)).status, 200)
})

test('create with lease_ttl returns the nonce, and writes need it', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true, lease_ttl: 30 })
  assert.match(m.nonce, /^[0-9a-f]{12}$/)
  const base = `/v1/apps/${app}/machines/${m.id}`
  assert.equal((await api('DELETE', base)).status, 409)
  assert.equal((await api('DELETE', base, undefined, { 'fly-machine-lease-nonce': m.nonce })).status, 200)
})

test('start/stop/suspend/restart/signal/exec status codes by state', async () => {
  const app = await newApp()
  const m = await create(app, { skip_launch: true })
  const base = `/v1/apps/${app}/machines/${m.id}`
  assert.equal((await api('POST', `${base}/suspend`)).status, 412)
  assert.equal((await api('POST', `${base}/restart`)).status, 412)
  assert.equal((await api('POST', `${base}/signal`, { signal: 'SIGTERM' })).status, 412)
  assert.equal((await api('POST', `${base}/exec`, { command: ['true'] })).status, 412)
  assert.equal((await api('POST', `${base}/signal`, { signal: 'SIGNOPE' })).status, 400)
  assert.equal((await api('POST', `${base}/stop`, { signal: 'SIGNOPE' })).status, 400)
  assert.equal((await api('POST', `${base}/exec`, {})).status, 400)
  assert.equal((await api('GET', `/v1/apps/${app}/machines/00000000000000`)).status, 404)
  assert.equal((await api('POST', `/v1/apps/${app}/machines/00000000000000/start`)).status, 404)
  const cordon = await api('POST', `${base}/cordon`)
  assert.equal(cordon.status, 200)
  assertSchema('Ok', cordon.body)
  const mem = await api('GET', `${base}/memory`)
  assert.equal(mem.status, 200)
  assertSchema('Memory', mem.body)
  assert.equal(mem.body.limit_mb, 256)
  assert.equal((await api('GET', base)).body.cordoned, true)
  assert.equal((await api('POST', `${base}/uncordon`)).status, 200)
  assert.equal((await api('DELETE', base)).status, 200)
  const gone = await api('POST', `${base}/stop`)
  assert.equal(gone.status, 404)
})

test('deleting an app destroys its machines', async () => {
  const app = await newApp()
  const m = await create(app, {})
  assert.equal((await wait(app, m, 'state=started&timeout=30')).status, 200)
  assert.equal((await api('DELETE', `/v1/apps/${app}`)).status, 202)
  assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}`)).status, 404)
  /* its sandbox goes away too */
  if (fx.srv.machines().some((x) => x.id === m.id && x.state !== 'destroyed')) {
    await new Promise((resolve) => {
      const on = (e) => { if (e.id === m.id && e.state === 'destroyed') { fx.srv.events.off('state', on); resolve() } }
      fx.srv.events.on('state', on)
    })
  }
  assert.ok(!fx.srv.machines().some((x) => x.id === m.id && x.state !== 'destroyed'))
})

test('keeps connections alive and counts them', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  const before = fx.srv.stats()
  const get = () => new Promise((resolve, reject) => {
    const req = http.get(`${fx.srv.url}/v1/platform/regions`, { agent }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    })
    req.on('error', reject)
  })
  for (let i = 0; i < 5; i++) assert.equal(await get(), 200)
  agent.destroy()
  const afterStats = fx.srv.stats()
  assert.equal(afterStats.requests - before.requests, 5)
  assert.equal(afterStats.connections - before.connections, 1)
})

test('unknown routes give 404 with JSON', async () => {
  const r = await api('GET', '/v1/nothing/here')
  assert.equal(r.status, 404)
  assertSchema('Error', r.body)
})
