'use strict'
// The native SSH layer under faults: a stalled sshd (SIGSTOP), a peer that
// accepts and says nothing, a banner then silence, endless output, huge and
// sparse files, huge directories.  Each call must settle by its deadline
// with a stable code, and the next call must work.  Needs root.

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const native = require('../build/Release/fly.node')
const { startSshd, freePort } = require('./helpers/sshd')

let sshd
let root

test.before(async () => {
  sshd = await startSshd()
  root = fs.mkdtempSync('/tmp/fly-faults-test-')
})

test.after(async () => {
  fs.rmSync(root, { recursive: true, force: true })
  await sshd.stop()
})

const open = (extra = {}) => native.sshOpen(sshd.target({ connectTimeoutMs: 1000, ...extra }))

// Resolves with the settled outcome, or with 'pending' if the call is still
// running after ms: a hang fails the test instead of hanging it.
function settleWithin (p, ms) {
  let timer
  const late = new Promise((resolve) => { timer = setTimeout(() => resolve({ pending: true }), ms) })
  const done = p.then((value) => ({ value }), (error) => ({ error }))
  return Promise.race([done, late]).finally(() => clearTimeout(timer))
}

test('a stalled sshd: commands and file calls settle by their deadline, and the next call works once it is back', async (t) => {
  const h = open()
  t.after(() => native.sshClose(h))
  assert.equal((await native.sshExec({ session: h, command: 'echo up' })).stdout.toString(), 'up\n')
  sshd.freeze()
  try {
    // Grace for the remote timeout is 3 s on top of timeoutMs.
    const r1 = await settleWithin(native.sshExec({ session: h, command: 'echo hi', timeoutMs: 1000 }), 15000)
    assert.ok(!r1.pending, 'the command settled')
    assert.equal(r1.error?.code, 'SSH_TIMEOUT')
    // The dead connection was dropped; reconnecting to the frozen server
    // fails within connectTimeoutMs.
    const r2 = await settleWithin(native.sshExec({ session: h, command: 'echo again', timeoutMs: 1000 }), 15000)
    assert.ok(!r2.pending, 'the next command settled')
    assert.equal(r2.error?.code, 'SSH_CONNECT_FAILED')
    const r3 = await settleWithin(native.sftp({ session: h, op: 'stat', path: '/', timeoutMs: 1000 }), 15000)
    assert.ok(!r3.pending, 'the file call settled')
    assert.ok(['SSH_CONNECT_FAILED', 'SSH_TIMEOUT'].includes(r3.error?.code), r3.error?.code)
  } finally {
    sshd.thaw()
  }
  const r = await native.sshExec({ session: h, command: 'echo back' })
  assert.equal(r.stdout.toString(), 'back\n')
})

test('an SFTP call on a stalled connection settles with SSH_TIMEOUT', async (t) => {
  const h = open()
  t.after(() => native.sshClose(h))
  await native.sftp({ session: h, op: 'stat', path: '/' })
  sshd.freeze()
  try {
    const r = await settleWithin(native.sftp({ session: h, op: 'stat', path: '/', timeoutMs: 1000 }), 10000)
    assert.ok(!r.pending, 'settled')
    assert.equal(r.error?.code, 'SSH_TIMEOUT')
  } finally {
    sshd.thaw()
  }
  assert.equal((await native.sftp({ session: h, op: 'stat', path: '/' })).type, 'directory')
})

test('keepalives detect a server that stopped answering under a running command', async (t) => {
  const h = open({ keepaliveSec: 1 })
  t.after(() => native.sshClose(h))
  let frozen
  const started = new Promise((resolve) => { frozen = resolve })
  const p = native.sshExec({
    session: h,
    command: 'echo started; sleep 60',
    onChunk: () => { sshd.freeze(); frozen() }
  })
  await started
  try {
    const r = await settleWithin(p, 15000)
    assert.ok(!r.pending, 'settled')
    assert.equal(r.error?.code, 'SSH_DISCONNECTED')
  } finally {
    sshd.thaw()
  }
  assert.equal((await native.sshExec({ session: h, command: 'echo next' })).stdout.toString(), 'next\n')
})

// A server on 127.0.0.1 that accepts, optionally says something, then
// nothing more.
async function silentServer (greeting) {
  const port = await freePort()
  const socks = new Set()
  const srv = net.createServer((c) => {
    socks.add(c)
    c.on('error', () => {})
    if (greeting) c.write(greeting)
  })
  await new Promise((resolve) => srv.listen(port, '127.0.0.1', resolve))
  return {
    port,
    close: () => new Promise((resolve) => {
      for (const c of socks) c.destroy()
      srv.close(resolve)
    })
  }
}

for (const [name, greeting] of [['accepts and says nothing', null], ['sends a banner then stalls', 'SSH-2.0-OpenSSH_9.2\r\n']]) {
  test(`a peer that ${name}: SSH_CONNECT_FAILED within connectTimeoutMs`, async (t) => {
    const srv = await silentServer(greeting)
    t.after(() => srv.close())
    const h = open({ port: srv.port, connectTimeoutMs: 800 })
    t.after(() => native.sshClose(h))
    const r = await settleWithin(native.sshExec({ session: h, command: 'true' }), 10000)
    assert.ok(!r.pending, 'settled')
    assert.equal(r.error?.code, 'SSH_CONNECT_FAILED')
    const r2 = await settleWithin(native.sftp({ session: h, op: 'stat', path: '/' }), 10000)
    assert.equal(r2.error?.code, 'SSH_CONNECT_FAILED')
  })
}

test('streamed output stops at maxOutputBytes: the remote command is stopped', async (t) => {
  const h = open()
  t.after(() => native.sshClose(h))
  let got = 0
  const r = await settleWithin(native.sshExec({
    session: h,
    command: 'yes',
    maxOutputBytes: 100000,
    onChunk: (stream, chunk) => { got += chunk.length }
  }), 15000)
  assert.ok(!r.pending, 'an endless stream settled')
  assert.equal(r.error?.code, 'ERR_OUTPUT_LIMIT')
  assert.ok(got <= 100000, `delivered ${got} bytes`)
  assert.equal((await native.sshExec({ session: h, command: 'echo ok' })).stdout.toString(), 'ok\n')
})

test('file reads are bounded by maxFileBytes; ranges read and write any size', async (t) => {
  const h = open()
  t.after(() => native.sshClose(h))
  const sparse = path.join(root, 'sparse')
  fs.closeSync(fs.openSync(sparse, 'w'))
  fs.truncateSync(sparse, 1 << 30) // 1 GiB of nothing
  await assert.rejects(native.sftp({ session: h, op: 'read', path: sparse }),
    (e) => e.code === 'ERR_FILE_TOO_LARGE' && e.path === sparse)
  const small = path.join(root, 'small')
  fs.writeFileSync(small, 'abcdefghij')
  await assert.rejects(native.sftp({ session: h, op: 'read', path: small, maxFileBytes: 9 }),
    (e) => e.code === 'ERR_FILE_TOO_LARGE')
  assert.equal((await native.sftp({ session: h, op: 'read', path: small, maxFileBytes: 10 })).toString(), 'abcdefghij')
  assert.equal((await native.sftp({ session: h, op: 'read', path: small, offset: 3, length: 4 })).toString(), 'defg')
  assert.equal((await native.sftp({ session: h, op: 'read', path: small, offset: 8, length: 100 })).toString(), 'ij')
  assert.equal((await native.sftp({ session: h, op: 'read', path: sparse, offset: 5 << 20, length: 4 })).toString('hex'), '00000000')
  assert.throws(() => native.sftp({ session: h, op: 'read', path: small, length: 11, maxFileBytes: 10 }),
    (e) => e.code === 'ERR_INVALID_ARG')

  // Writes: at an offset (nothing truncated), then appended.
  const w = path.join(root, 'pieces')
  await native.sftp({ session: h, op: 'write', path: w, data: Buffer.from('hello world') })
  await native.sftp({ session: h, op: 'write', path: w, data: Buffer.from('W'), offset: 6 })
  assert.equal(fs.readFileSync(w, 'utf8'), 'hello World')
  await native.sftp({ session: h, op: 'write', path: w, data: Buffer.from('!'), append: true })
  assert.equal(fs.readFileSync(w, 'utf8'), 'hello World!')
})

test('directory listings are bounded by maxEntries', async (t) => {
  const h = open()
  t.after(() => native.sshClose(h))
  const dir = path.join(root, 'many')
  fs.mkdirSync(dir)
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(dir, `f${i}`), '')
  await assert.rejects(native.sftp({ session: h, op: 'readdir', path: dir, maxEntries: 10 }),
    (e) => e.code === 'ERR_TOO_MANY_ENTRIES')
  assert.equal((await native.sftp({ session: h, op: 'readdir', path: dir })).length, 50)
})

// Reads 4 GiB through SFTP (tens of seconds, 4 GiB of memory): run with
// FLY_TEST_HUGE=1.
test('a result over the largest Buffer rejects instead of crashing', { skip: process.env.FLY_TEST_HUGE ? false : 'moves a 4 GiB sparse file (over a minute): set FLY_TEST_HUGE=1 to run it' }, async (t) => {
  const h = open()
  t.after(() => native.sshClose(h))
  const huge = path.join(root, 'huge')
  fs.closeSync(fs.openSync(huge, 'w'))
  fs.truncateSync(huge, 2 ** 32 + 1)
  await assert.rejects(native.sftp({ session: h, op: 'read', path: huge, maxFileBytes: 2 ** 33, timeoutMs: 600000 }),
    (e) => e.code === 'ERR_BUFFER_TOO_LARGE')
})

test('an idle connection is closed after idleTimeoutMs and reopened on next use', async (t) => {
  const h = open({ idleTimeoutMs: 200 })
  t.after(() => native.sshClose(h))
  const before = native.sshStats().connects
  await native.sshExec({ session: h, command: 'true' })
  assert.equal(native.sshStats().connects, before + 1)
  assert.ok(sshd.connections() > 0)
  // The server's per-connection processes exit once the client closes;
  // wait for that, bounded.
  for (let i = 0; i < 1000 && sshd.connections() > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  assert.equal(sshd.connections(), 0, 'the idle connection was closed')
  await native.sshExec({ session: h, command: 'true' })
  assert.equal(native.sshStats().connects, before + 2)
})
