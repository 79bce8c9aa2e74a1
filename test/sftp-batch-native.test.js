'use strict'
// The native sftpBatch verb (src/sftp_batch.c) against a throwaway OpenSSH
// server on 127.0.0.1 (internal-sftp).  Needs root.
const test = require('node:test')
const assert = require('node:assert')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const native = require('../build/Release/fly.node')
const { startSshd } = require('./helpers/sshd')

let sshd, session, root
test.before(async () => {
  sshd = await startSshd()
  session = native.sshOpen(sshd.target())
  root = fs.mkdtempSync('/tmp/fly-batch-test-')
})
test.after(async () => {
  await native.sshClose(session)
  fs.rmSync(root, { recursive: true, force: true })
  await sshd.stop()
})

const batch = (opts) => native.sftpBatch({ session, ...opts })
const leftovers = (dir) => fs.readdirSync(dir).filter((n) => n.includes('.fly-'))

test('writes: 500 files with parents, in order, each whole; reads them back', async () => {
  const files = Array.from({ length: 500 }, (_, i) => ({ path: path.join(root, `p${i % 7}`, 'q', `f${i}`), data: crypto.randomBytes(i * 97) }))
  const res = await batch({ op: 'write', files, parents: true })
  assert.deepStrictEqual(res, files.map((f) => ({ path: f.path })))
  for (const f of files) assert.ok(fs.readFileSync(f.path).equals(f.data), f.path)
  assert.deepStrictEqual(leftovers(path.join(root, 'p0', 'q')), [])
  const back = await batch({ op: 'read', paths: files.map((f) => f.path) })
  for (const [i, r] of back.entries()) assert.ok(r.data.equals(files[i].data), files[i].path)
  // Without parents a missing directory is that file's error.
  const [miss] = await batch({ op: 'write', files: [{ path: path.join(root, 'nodir', 'x'), data: 'x' }] })
  assert.strictEqual(miss.code, 'SFTP_NO_SUCH_FILE')
})

test('an atomic write keeps the mode, and leaves the old file and no temporary when it fails', async () => {
  const p = path.join(root, 'mode')
  fs.writeFileSync(p, 'old')
  fs.chmodSync(p, 0o640)
  assert.deepStrictEqual(await batch({ op: 'write', files: [{ path: p, data: 'new' }] }), [{ path: p }])
  assert.strictEqual(fs.readFileSync(p, 'utf8'), 'new')
  assert.strictEqual(fs.statSync(p).mode & 0o777, 0o640)
  // The target is a directory: the temporary is made, written, then removed.
  const d = path.join(root, 'adir')
  fs.mkdirSync(d)
  const [r] = await batch({ op: 'write', files: [{ path: d, data: 'x' }] })
  assert.strictEqual(r.code, 'SFTP_IS_A_DIRECTORY')
  assert.deepStrictEqual(leftovers(root), [])
  assert.ok(fs.statSync(d).isDirectory())
})

test('in place: offset, append, truncate', async () => {
  const p = path.join(root, 'inplace')
  fs.writeFileSync(p, 'hello world')
  await batch({ op: 'write', files: [{ path: p, data: 'W', where: 'offset', offset: 6 }] })
  await batch({ op: 'write', files: [{ path: p, data: '!', where: 'append' }] })
  assert.strictEqual(fs.readFileSync(p, 'utf8'), 'hello World!')
  await batch({ op: 'write', files: [{ path: p, data: 'x', where: 'truncate' }] })
  assert.strictEqual(fs.readFileSync(p, 'utf8'), 'x')
  assert.throws(() => native.sftpBatch({ session, op: 'write', files: [{ path: p, data: 'x', where: 'sideways' }] }), (e) => e.code === 'ERR_INVALID_ARG')
})

test('reads: maxFileBytes per file and for the batch; a large file in one piece', async () => {
  const big = crypto.randomBytes((3 << 20) + 17)
  fs.writeFileSync(path.join(root, 'big'), big)
  fs.writeFileSync(path.join(root, 'small'), 'abc')
  const [r] = await batch({ op: 'read', paths: [path.join(root, 'big')] })
  assert.ok(r.data.equals(big))
  const [tooBig, ok] = await batch({ op: 'read', paths: [path.join(root, 'big'), path.join(root, 'small')], maxFileBytes: 1 << 20 })
  assert.strictEqual(tooBig.code, 'ERR_FILE_TOO_LARGE')
  assert.strictEqual(ok.data.toString(), 'abc')
  const [missing] = await batch({ op: 'read', paths: [path.join(root, 'nope')] })
  assert.strictEqual(missing.code, 'SFTP_NO_SUCH_FILE')
  assert.throws(() => native.sftpBatch({ session, op: 'read', paths: [''] }), (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sftpBatch({ session, op: 'read', paths: 'x' }), (e) => e.code === 'ERR_INVALID_ARG')
})

test('the batch channel and the libssh2 SFTP channel run at once', async () => {
  const a = path.join(root, 'conc-a')
  const data = crypto.randomBytes(8 << 20)
  fs.writeFileSync(a, data)
  const [read, written] = await Promise.all([
    native.sftp({ session, op: 'read', path: a }),
    batch({ op: 'write', files: Array.from({ length: 50 }, (_, i) => ({ path: path.join(root, `conc-${i}`), data: String(i) })) })
  ])
  assert.ok(read.equals(data))
  assert.strictEqual(written.filter((r) => r.code).length, 0)
})

// A hostile SFTP server: it answers INIT, then replies to the first
// request with a reply to no request of ours ('stray') or a packet longer
// than any server sends ('huge').  The batch fails with SFTP_PROTOCOL, the
// connection survives, and the next batch (which opens a new channel, and
// meets the same server) fails the same way rather than hanging or
// allocating what the server claims.
test('a hostile sftp server: a stray reply or an oversized packet is SFTP_PROTOCOL', async () => {
  const fake = path.join(root, 'fake-sftp.py')
  fs.writeFileSync(fake, `
import sys, struct
r, w = sys.stdin.buffer, sys.stdout.buffer
def take():
    h = r.read(5)
    if len(h) < 5: sys.exit(0)
    n, t = struct.unpack('>IB', h)
    return t, r.read(n - 1)
def send(t, body):
    w.write(struct.pack('>IB', len(body) + 1, t) + body); w.flush()
take()
send(2, struct.pack('>I', 3))
take()
if sys.argv[1] == 'stray':
    send(101, struct.pack('>II', 0x7abcdef, 0) + struct.pack('>I', 0) * 2)
else:
    w.write(struct.pack('>I', 0x7fffffff) + b'x' * 64); w.flush()
while r.read(65536): pass
`)
  for (const mode of ['stray', 'huge']) {
    const bad = await startSshd({ sftp: `/usr/bin/python3 ${fake} ${mode}` })
    const s = native.sshOpen(bad.target())
    try {
      for (let i = 0; i < 2; i++) {
        await assert.rejects(native.sftpBatch({ session: s, op: 'read', paths: ['/etc/hostname'] }), (e) => e.code === 'SFTP_PROTOCOL', mode)
      }
      const r = await native.sshExec({ session: s, command: 'echo alive' })
      assert.strictEqual(r.stdout.toString(), 'alive\n')
    } finally {
      await native.sshClose(s)
      await bad.stop()
    }
  }
})
