'use strict'
// fly-local fault injection: HTTP faults per route/machine (status with
// Retry-After for N requests, latency, dropped connections) and sshd faults
// (kill, freeze/thaw, host key swap).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const path = require('path')
const { spawn } = require('child_process')
const { localFixture, ssh, run, b64 } = require('../helpers/local')

const app = `ft-${process.pid}`
let m
const fx = localFixture({
  app,
  keys: ['key'],
  /* one started machine that accepts SSH with fx.key */
  async setup (fx) {
    const r = await fx.api('POST', `/v1/apps/${app}/machines`, {
      config: { image: 'ubuntu', files: [{ guest_path: '/etc/computesdk/authorized_keys', raw_value: b64(fx.key.pub), mode: 0o644 }] }
    })
    m = r.body
    assert.equal((await fx.api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=started&timeout=30`)).status, 200)
    await fx.srv.waitSsh(m.id)
  }
})
const { api } = fx

test('answers with a status and Retry-After for the next N requests', async () => {
  const id = fx.srv.faults.add({ path: '/v1/apps', method: 'GET', status: 429, retryAfter: 2, times: 2 })
  assert.equal(typeof id, 'number')
  for (let i = 0; i < 2; i++) {
    const r = await api('GET', `/v1/apps/${app}`)
    assert.equal(r.status, 429)
    assert.equal(r.headers.get('retry-after'), '2')
    assert.ok(r.headers.get('fly-request-id'))
    assert.match(r.body.error, /429/)
  }
  assert.equal((await api('GET', `/v1/apps/${app}`)).status, 200)
})

test('matches by method, RegExp path and machine; custom bodies; clear()', async () => {
  fx.srv.faults.add({ machine: m.id, method: 'GET', status: 503, times: Infinity, body: { error: 'unavailable: injected' } })
  const r = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
  assert.equal(r.status, 503)
  assert.deepEqual(r.body, { error: 'unavailable: injected' })
  assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=started&timeout=5`)).status, 503)
  assert.equal((await api('GET', `/v1/apps/${app}/machines`)).status, 200)
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/metadata/x`, { value: 'y' })).status, 204)
  fx.srv.faults.clear()
  assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}`)).status, 200)
  fx.srv.faults.add({ path: /\/machines\/[0-9a-f]{14}\/exec$/, status: 500 })
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command: ['true'] })).status, 500)
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command: ['true'] })).status, 200)
})

test('adds latency', async () => {
  // (3 s: a loaded host's request takes far less; the rule is used once)
  fx.srv.faults.add({ path: '/v1/platform/regions', latencyMs: 3000 })
  const t0 = Date.now()
  const r = await api('GET', '/v1/platform/regions')
  assert.equal(r.status, 200)
  assert.ok(Date.now() - t0 >= 2990)
  const t1 = Date.now()
  await api('GET', '/v1/platform/regions')
  assert.ok(Date.now() - t1 < 2990)
})

test('drops the connection without answering', async () => {
  fx.srv.faults.add({ path: '/v1/apps/', method: 'POST', drop: true })
  await assert.rejects(api('POST', `/v1/apps/${app}/machines/${m.id}/metadata/y`, { value: 'z' }))
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/metadata/y`, { value: 'z' })).status, 204)
})

test('validates fault specs', () => {
  assert.throws(() => fx.srv.faults.add({ status: 42 }), RangeError)
  assert.throws(() => fx.srv.faults.add({ times: 0 }), RangeError)
  assert.throws(() => fx.srv.faults.add({ path: 5 }), TypeError)
})

test('killSshd kills sshd and its sessions; the entrypoint restarts it', async () => {
  const session = spawn('ssh', ['-i', fx.key.key, '-p', '2222', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', `sandbox@${m.private_ip}`, 'echo in; sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'] })
  await new Promise((resolve) => session.stdout.once('data', resolve))
  const closed = new Promise((resolve) => session.on('exit', (code) => resolve(code)))
  const killed = await fx.srv.killSshd(m.id)
  assert.ok(killed >= 2)
  assert.notEqual(await closed, 0)
  await fx.srv.waitSsh(m.id)
  const s = await ssh(fx.key, m.private_ip, 'echo back')
  assert.equal(s.stdout, 'back\n')
})

test('freezeSshd stalls sshd until thawSshd', async () => {
  await fx.srv.freezeSshd(m.id)
  const stalled = await run('ssh-keyscan', ['-p', '2222', '-T', '1', m.private_ip])
  assert.equal(stalled.stdout.trim(), '')
  await fx.srv.thawSshd(m.id)
  const s = await ssh(fx.key, m.private_ip, 'echo thawed')
  assert.equal(s.stdout, 'thawed\n')
})

test('swapHostKey installs a new host key and leaves metadata alone', async () => {
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/metadata/hostkey`, { value: 'pinned' })).status, 204)
  const before = (await run('ssh-keyscan', ['-p', '2222', '-t', 'ed25519', m.private_ip])).stdout.trim()
  assert.ok(before)
  const known = path.join(fx.key.dir, 'known_hosts')
  fs.writeFileSync(known, `${before}\n`)
  assert.equal((await ssh(fx.key, m.private_ip, 'true', { knownHosts: known })).code, 0)
  const { publicKey } = await fx.srv.swapHostKey(m.id)
  assert.match(publicKey, /^ssh-ed25519 /)
  const mismatch = await ssh(fx.key, m.private_ip, 'true', { knownHosts: known })
  assert.notEqual(mismatch.code, 0)
  assert.match(mismatch.stderr, /HOST IDENTIFICATION HAS CHANGED|Host key verification failed/)
  fs.writeFileSync(known, `[${m.private_ip}]:2222 ${publicKey.split(' ').slice(0, 2).join(' ')}\n`)
  assert.equal((await ssh(fx.key, m.private_ip, 'true', { knownHosts: known })).code, 0)
  const md = await api('GET', `/v1/apps/${app}/machines/${m.id}/metadata`)
  assert.equal(md.body.hostkey, 'pinned')
})

test('machines() lists what the instance runs', () => {
  const list = fx.srv.machines()
  const mine = list.find((x) => x.id === m.id)
  assert.deepEqual(Object.keys(mine).sort(), ['app', 'id', 'network', 'pid', 'private_ip', 'state'])
  assert.equal(mine.network, 'default')
  assert.equal(mine.app, app)
  assert.equal(mine.state, 'started')
  assert.ok(mine.pid > 1)
  assert.equal(mine.private_ip, m.private_ip)
})
