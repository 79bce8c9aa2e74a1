'use strict'
// Process lifetime with the native I/O thread: an idle client does not keep
// the process alive, a process that exits with requests in flight neither
// crashes nor hangs, and an exception thrown by a user's callback surfaces
// as 'uncaughtException'.  Each runs in a forked child (fixtures/child.js).
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('child_process')
const path = require('path')
const { startLocal, call, appName, provider, native } = require('./helpers/fly')

const child = path.join(__dirname, 'fixtures', 'child.js')

function runChild (args, env) {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [child, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
    let out = ''
    let err = ''
    p.stdout.on('data', (d) => { out += d })
    p.stderr.on('data', (d) => { err += d })
    p.on('exit', (code, signal) => resolve({ code, signal, out, err }))
  })
}

test('an idle client lets the process exit by itself, long before any idle or keepalive timer', async (t) => {
  const srv = await startLocal(t)
  const app = appName('idle')
  await call(srv, 'app.create', {}, { body: JSON.stringify({ name: app, org_slug: 'personal' }) })
  const r = await runChild(['idle', srv.url, srv.token, app])
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /status 200/)
  const lingered = Number(/lingered (\d+)/.exec(r.out)[1])
  // (5 s: far below the 15 s keepalive and the idle timeouts, which are
  // what would hold it; a loaded host's slow second is not)
  assert.ok(lingered < 5000, `lingered ${lingered} ms after the last call`)
})

test('exit with requests in flight neither crashes nor hangs', async (t) => {
  const srv = await startLocal(t)
  const app = appName('exit')
  await call(srv, 'app.create', {}, { body: JSON.stringify({ name: app, org_slug: 'personal' }) })
  const m = (await call(srv, 'machine.create', { app }, {
    body: JSON.stringify({ skip_launch: true, config: { image: 'x' } })
  })).body
  const r = await runChild(['inflight', srv.url, srv.token, app, m.id])
  assert.equal(r.signal, null, r.err)
  assert.equal(r.code, 7, r.err)
})

// A fly-local sandbox whose client key the child also gets (in
// FLY_SSH_PRIVATE_KEY); runs the child on it, then destroys the sandbox.
async function runChildOnSandbox (t, mode, prepare) {
  const srv = await startLocal(t)
  const key = native.keygen()
  const sb = await provider(srv, { sshPrivateKey: key.privateKey }).sandbox.create()
  try {
    if (prepare) await prepare(sb)
    return await runChild([mode, srv.url, srv.token, sb.sandboxId], { FLY_SSH_PRIVATE_KEY: key.privateKey })
  } finally {
    await sb.destroy()
  }
}

test('exit with SSH commands and a file transfer in flight neither crashes nor hangs', async (t) => {
  const r = await runChildOnSandbox(t, 'inflight-ssh', (sb) => sb.runCommand('head -c 20000000 /dev/urandom > /tmp/big'))
  assert.equal(r.signal, null, r.err)
  assert.equal(r.code, 7, r.err)
})

test('an open SSH session does not keep the process alive either', async (t) => {
  const r = await runChildOnSandbox(t, 'idle-ssh')
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /^over-ssh\n/)
  const lingered = Number(/lingered (\d+)/.exec(r.out)[1])
  assert.ok(lingered < 5000, `lingered ${lingered} ms with an idle SSH session`)
})

test('an exception thrown in onStdout surfaces as uncaughtException and the command still settles', async (t) => {
  const r = await runChildOnSandbox(t, 'throw-in-callback')
  assert.equal(r.signal, null, r.err)
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /^uncaught thrown in onStdout$/m)
  assert.match(r.out, /^settled /m, 'the promise settled')
})
