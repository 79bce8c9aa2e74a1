'use strict'
// pause / resume and wake on use, against fly-local: a suspend keeps a
// process's memory and every file; a command on a paused sandbox resumes
// it, from this provider or another one; autoResume: false refuses with a
// typed error; idle auto-suspend with no provider process alive.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('path')
const { spawn } = require('child_process')
const { startLocal, startProxy, provider, call, rejects, sandboxIds, waitSuspended } = require('./helpers/fly')

let srv
test.before(async () => { srv = await startLocal() })
test.after(() => srv && srv.stop())

const machineOf = async (sb) => (await call(srv, 'machine.get', sandboxIds(sb))).body

// A python3 process holding a random value in memory, answering
// "<pid> <value>" to every connection on 127.0.0.1:7000 inside the sandbox.
const SERVER = [
  'import os, random, socket',
  'v = random.randrange(10**12)',
  's = socket.socket()',
  's.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
  's.bind(("127.0.0.1", 7000))',
  's.listen(8)',
  'while True:',
  '    c, _ = s.accept()',
  '    c.sendall(("%d %d" % (os.getpid(), v)).encode())',
  '    c.close()'
].join('\n')
// Asks it (retrying, bounded, while it starts).
const ASK = 'import socket, time\n' +
  'for i in range(200):\n' +
  '    try:\n' +
  '        c = socket.create_connection(("127.0.0.1", 7000), timeout=5)\n' +
  '        print(c.recv(100).decode()); break\n' +
  '    except OSError:\n' +
  '        time.sleep(0.05)\n'

async function startHolder (sb) {
  await sb.filesystem.writeFile('/tmp/holder.py', SERVER)
  await sb.filesystem.writeFile('/tmp/ask.py', ASK)
  const r = await sb.runCommand('python3 /tmp/holder.py', { background: true })
  assert.equal(r.exitCode, 0)
  return ask(sb)
}
async function ask (sb) {
  const r = await sb.runCommand('python3 /tmp/ask.py')
  assert.equal(r.exitCode, 0, r.stderr)
  assert.match(r.stdout, /^\d+ \d+\n$/)
  return r.stdout
}

test('pause() suspends: memory, processes and files survive resume()', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create()
  try {
    const before = await startHolder(sb)
    await sb.filesystem.writeFile('/home/sandbox/kept.txt', 'home\n')
    await sb.filesystem.writeFile('/tmp/kept.txt', 'tmp\n')

    await sb.pause()
    assert.equal((await machineOf(sb)).state, 'suspended')
    assert.equal((await sb.getInfo()).status, 'paused')
    await sb.pause() // idempotent

    await sb.resume()
    assert.equal((await machineOf(sb)).state, 'started')
    assert.equal((await sb.getInfo()).status, 'running')
    await sb.resume() // idempotent on a running sandbox
    assert.equal(await ask(sb), before, 'the same process with the same value in memory')
    assert.equal(await sb.filesystem.readFile('/home/sandbox/kept.txt'), 'home\n')
    assert.equal(await sb.filesystem.readFile('/tmp/kept.txt'), 'tmp\n')
  } finally {
    await sb.destroy()
  }
})

test('a command on a paused sandbox resumes it first; concurrent calls share one start', async (t) => {
  const starts = []
  const via = await startProxy(t, srv, {
    onRequest: (method, url) => { if (method === 'POST' && /\/start$/.test(url)) starts.push(url) }
  })
  const p = provider(via)
  const sb = await p.sandbox.create()
  try {
    const before = await startHolder(sb)
    await sb.pause()
    const [a, b, c] = await Promise.all([ask(sb), sb.runCommand('echo one'), sb.filesystem.readFile('/tmp/ask.py')])
    assert.equal(a, before)
    assert.equal(b.stdout, 'one\n')
    assert.equal(c, ASK)
    assert.equal(starts.length, 1)
    assert.equal((await sb.getInfo()).status, 'running')
  } finally {
    await sb.destroy()
  }
})

test('a paused sandbox resumes on a command from a second provider (getById)', async () => {
  const p1 = provider(srv)
  const sb = await p1.sandbox.create()
  try {
    const before = await startHolder(sb)
    await sb.pause()
    const p2 = provider(srv, { appName: sandboxIds(sb).app })
    const other = await p2.sandbox.getById(sb.sandboxId)
    assert.equal((await other.getInfo()).status, 'paused')
    assert.equal(await ask(other), before)
    assert.equal((await machineOf(sb)).state, 'started')
    // and the first provider's next call reconnects
    assert.equal((await sb.runCommand('echo back')).stdout, 'back\n')
  } finally {
    await sb.destroy()
  }
})

test('autoResume: false gives FLY_MACHINE_NOT_RUNNING (paused) until resume()', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create({ autoResume: false })
  try {
    await sb.pause()
    const err = await rejects(sb.runCommand('echo hi'))
    assert.equal(err.code, 'FLY_MACHINE_NOT_RUNNING')
    assert.equal(err.paused, true)
    assert.equal(err.state, 'suspended')
    assert.equal((await rejects(sb.filesystem.readFile('/etc/hostname'))).code, 'FLY_MACHINE_NOT_RUNNING')
    assert.equal((await machineOf(sb)).state, 'suspended', 'nothing woke it')
    // A provider with autoResume off refuses too, for a sandbox made with the default.
    const sb2 = await provider(srv).sandbox.create()
    try {
      await sb2.pause()
      const p2 = provider(srv, { appName: sandboxIds(sb2).app, autoResume: false })
      const other = await p2.sandbox.getById(sb2.sandboxId)
      assert.equal((await rejects(other.runCommand('true'))).code, 'FLY_MACHINE_NOT_RUNNING')
    } finally {
      await sb2.destroy()
    }
    await sb.resume()
    assert.equal((await sb.runCommand('echo hi')).stdout, 'hi\n')
  } finally {
    await sb.destroy()
  }
})

test('pause({ keepMemory: false }) stops: status paused, processes and the root reset, resume works', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create()
  try {
    await startHolder(sb)
    await sb.filesystem.writeFile('/tmp/gone.txt', 'x')
    await sb.pause({ keepMemory: false })
    const m = await machineOf(sb)
    assert.equal(m.state, 'stopped')
    assert.equal(m.config.metadata.computesdk_paused, '1')
    assert.equal((await sb.getInfo()).status, 'paused')
    await sb.resume()
    assert.equal((await machineOf(sb)).config.metadata.computesdk_paused, undefined)
    assert.equal((await sb.getInfo()).status, 'running')
    assert.equal(await sb.filesystem.exists('/tmp/gone.txt'), false, 'a stop resets the root filesystem')
    const r = await sb.runCommand("pgrep -f '[h]older.py' || echo none")
    assert.equal(r.stdout, 'none\n')
  } finally {
    await sb.destroy()
  }
})

test('pause and resume are ComputeSDK sandbox methods too; bad options are ERR_INVALID_ARG', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create()
  try {
    assert.equal((await rejects(sb.pause({ keepMemory: 'no' }))).code, 'ERR_INVALID_ARG')
    const machine = sb.getInstance()
    await machine.pause()
    assert.equal((await sb.getInfo()).status, 'paused')
    await machine.resume()
    assert.equal((await sb.runCommand('echo ok')).stdout, 'ok\n')
  } finally {
    await sb.destroy()
  }
  assert.throws(() => provider(srv, { autoResume: 'yes' }), (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => provider(srv, { idleAction: 'sleep' }), (e) => e.code === 'ERR_INVALID_ARG')
})

test('idleTimeout: with no provider process alive the sandbox suspends itself, and the next command wakes it', async () => {
  // The create runs in a child process that exits at once after it.
  const app = `idle-${process.pid}`
  const script = `
    const { fly } = require(${JSON.stringify(path.join(__dirname, '..'))})
    const p = fly({ apiToken: process.env.T, apiHostname: process.env.U, appName: ${JSON.stringify(app)} })
    p.sandbox.create({ idleTimeout: 3000 }).then(async (sb) => {
      await sb.filesystem.writeFile('/tmp/mark', 'idle')
      console.log(sb.sandboxId)
      process.exit(0)
    }, (e) => { console.error(e); process.exit(1) })`
  const child = spawn(process.execPath, ['-e', script], { env: { ...process.env, T: srv.token, U: srv.url }, stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  const code = await new Promise((resolve) => child.on('exit', resolve))
  assert.equal(code, 0)
  const sandboxId = out.trim()
  const [, machine] = sandboxId.split(':')
  // Wait (the API's long poll, bounded) until it has suspended itself.
  await waitSuspended(srv, { app, machine })
  const p = provider(srv, { appName: app })
  const sb = await p.sandbox.getById(sandboxId)
  try {
    assert.equal((await sb.getInfo()).status, 'paused')
    assert.equal(await sb.filesystem.readFile('/tmp/mark'), 'idle', 'woken with its files')
    assert.equal((await call(srv, 'machine.get', { app, machine })).body.state, 'started')
  } finally {
    await sb.destroy()
  }
})

test('create options: idleTimeout, onTimeout and autoResume reach the machine', async () => {
  const p = provider(srv)
  const bad = await rejects(p.sandbox.create({ idleTimeout: -1 }))
  assert.equal(bad.code, 'ERR_INVALID_ARG')
  assert.equal((await rejects(p.sandbox.create({ onTimeout: 'sleep' }))).code, 'ERR_INVALID_ARG')
  const sb = await p.sandbox.create({ idleTimeout: 60000, keepMemory: false, timeout: 600000, onTimeout: 'pause', autoResume: false })
  try {
    const m = await machineOf(sb)
    assert.equal(m.config.env.COMPUTESDK_IDLE_TIMEOUT_MS, '60000')
    assert.equal(m.config.env.COMPUTESDK_IDLE_ACTION, 'stop')
    assert.equal(m.config.env.COMPUTESDK_ON_TIMEOUT, 'pause')
    assert.equal(m.config.auto_destroy, false)
    assert.equal(m.config.metadata.computesdk_auto_resume, '0')
  } finally {
    await sb.destroy()
  }
})

test('idleTimeout: this provider\'s own idle SSH connection does not keep the sandbox awake', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create({ idleTimeout: 3000 })
  try {
    assert.equal((await sb.runCommand('echo before')).stdout, 'before\n')
    const { app, machine } = sandboxIds(sb)
    await waitSuspended(srv, { app, machine })
    assert.equal((await sb.getInfo()).status, 'paused')
    assert.equal((await sb.runCommand('echo after')).stdout, 'after\n')
    assert.equal((await machineOf(sb)).state, 'started')
  } finally {
    await sb.destroy()
  }
})
