'use strict'
// The native sftp verb against a throwaway OpenSSH server on 127.0.0.1
// (internal-sftp).  Needs root.

const test = require('node:test')
const assert = require('node:assert')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const native = require('../build/Release/fly.node')
const { startSshd } = require('./helpers/sshd')

let sshd
let session
let root

test.before(async () => {
  sshd = await startSshd()
  session = native.sshOpen(sshd.target())
  root = fs.mkdtempSync('/tmp/fly-sftp-test-')
})

test.after(async () => {
  await native.sshClose(session)
  fs.rmSync(root, { recursive: true, force: true })
  await sshd.stop()
})

const sftp = (op, p, extra = {}) => native.sftp({ session, op, path: p, ...extra })
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex')

test('round trips: 0 B, 1 B, all byte values, 1 MiB', async () => {
  const cases = [Buffer.alloc(0), Buffer.from('x'),
    Buffer.from(Array.from({ length: 256 }, (_, i) => i)), crypto.randomBytes(1 << 20)]
  for (const [i, data] of cases.entries()) {
    const p = path.join(root, `rt-${i}`)
    assert.strictEqual(await sftp('write', p, { data }), undefined)
    assert.ok(fs.readFileSync(p).equals(data), `on disk, case ${i}`)
    const back = await sftp('read', p)
    assert.ok(Buffer.isBuffer(back))
    assert.ok(back.equals(data), `read back, case ${i}`)
    assert.strictEqual(fs.statSync(p).mode & 0o777, 0o644)
  }
  // Strings are written as UTF-8.
  await sftp('write', path.join(root, 'str'), { data: 'héllo' })
  assert.strictEqual((await sftp('read', path.join(root, 'str'))).toString(), 'héllo')
  // Overwrite truncates.
  await sftp('write', path.join(root, 'str'), { data: 'a' })
  assert.strictEqual(fs.readFileSync(path.join(root, 'str'), 'utf8'), 'a')
})

test('64 MiB up and down', async () => {
  const data = crypto.randomBytes(64 << 20)
  const p = path.join(root, 'big')
  await sftp('write', p, { data })
  assert.strictEqual(sha(fs.readFileSync(p)), sha(data))
  const back = await sftp('read', p)
  assert.strictEqual(back.length, data.length)
  assert.strictEqual(sha(back), sha(data))
  fs.unlinkSync(p)
})

test('100 MiB up and down intact; ranged reads of it across the read-ahead', async () => {
  const data = crypto.randomBytes(100 << 20)
  const p = path.join(root, 'big100')
  await sftp('write', p, { data })
  assert.strictEqual(sha(fs.readFileSync(p)), sha(data))
  const back = await sftp('read', p)
  assert.strictEqual(back.length, data.length)
  assert.strictEqual(sha(back), sha(data))
  // Ranges that start and end inside read requests, one that runs past
  // the end, one of nothing.
  for (const [offset, length] of [[7, 30000], [(1 << 20) + 7, (30 << 20) + 3],
    [(100 << 20) - 5, 1 << 20], [50 << 20, 0]]) {
    const part = await sftp('read', p, { offset, length })
    assert.ok(part.equals(data.subarray(offset, offset + length)), `offset ${offset} length ${length}`)
  }
  fs.unlinkSync(p)
})

test('a file longer than its stat says: ranged reads get what was asked, whole reads stop at maxFileBytes mid-stream', async () => {
  // /dev/zero stats as empty and never ends.
  const part = await sftp('read', '/dev/zero', { offset: 12345, length: (3 << 20) + 1 })
  assert.strictEqual(part.length, (3 << 20) + 1)
  assert.ok(part.equals(Buffer.alloc((3 << 20) + 1)))
  await assert.rejects(sftp('read', '/dev/zero', { maxFileBytes: 5 << 20 }),
    (e) => e.code === 'ERR_FILE_TOO_LARGE' && e.path === '/dev/zero')
  // The session is fine after.
  assert.strictEqual((await sftp('read', path.join(root, 'str'))).toString(), 'a')
})

test('a server that freezes mid-download: the read fails by its deadline with SSH_TIMEOUT; thawed, the next works', async (t) => {
  const own = await startSshd()
  const h = native.sshOpen(own.target())
  t.after(async () => {
    own.thaw()
    await native.sshClose(h)
    await own.stop()
  })
  // The bytes the server's processes have read: progress of the download.
  const readBytes = () => {
    let n = 0
    for (const pid of own.pids()) {
      try {
        n += Number(/rchar: (\d+)/.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))[1])
      } catch {}
    }
    return n
  }
  await native.sftp({ session: h, op: 'stat', path: '/' })
  const from = readBytes()
  let settled = false
  const download = native.sftp({ session: h, op: 'read', path: '/dev/zero', length: 255 << 20, timeoutMs: 3000 })
  download.then(() => { settled = true }, () => { settled = true })
  // Wait for the pipeline to be under way (8 MiB read by the server), then
  // stop the server: requests are in flight and nothing answers.
  while (readBytes() - from < 8 << 20) {
    assert.ok(!settled, 'the download ended before the server was frozen')
    await new Promise((resolve) => setImmediate(resolve))
  }
  own.freeze()
  // A hang is a failure: the guard rejects long after the 3 s deadline.
  let guard
  const late = new Promise((resolve, reject) => {
    guard = setTimeout(() => reject(new Error('the frozen download had not settled after 60 s')), 60000)
  })
  const e = await Promise.race([download.then(() => null, (err) => err), late]).finally(() => clearTimeout(guard))
  assert.ok(e, 'the download resolved under a frozen server')
  assert.strictEqual(e.code, 'SSH_TIMEOUT', e.message)
  own.thaw()
  const st = await native.sftp({ session: h, op: 'stat', path: '/' })
  assert.strictEqual(st.type, 'directory')
})

test('awkward names', async () => {
  const names = ['with space', "quo'te", 'dq"uote', 'new\nline', 'ünï €', '-leading-dash', '$(x)`y`']
  for (const n of names) {
    const p = path.join(root, n)
    await sftp('write', p, { data: n })
    assert.strictEqual(fs.readFileSync(p, 'utf8'), n)
    assert.strictEqual((await sftp('read', p)).toString(), n)
  }
  const list = await sftp('readdir', root)
  for (const n of names) assert.ok(list.some((e) => e.name === n && e.type === 'file'), n)
})

test('mkdir -p, exists, stat, readdir of empty and of 1000 entries', async () => {
  const deep = path.join(root, 'a/b/c/d')
  await sftp('mkdir', deep, { recursive: true })
  assert.ok(fs.statSync(deep).isDirectory())
  await sftp('mkdir', deep, { recursive: true }) // no error when it exists
  await assert.rejects(sftp('mkdir', deep), (e) => e.code === 'SFTP_FILE_EXISTS' && e.path === deep)
  await sftp('mkdir', path.join(deep, 'e'))
  assert.ok(fs.statSync(path.join(deep, 'e')).isDirectory())
  await assert.rejects(sftp('mkdir', path.join(root, 'nope/x')), (e) => e.code === 'SFTP_NO_SUCH_FILE')

  const st = await sftp('stat', deep)
  assert.strictEqual(st.type, 'directory')
  assert.ok(Math.abs(st.mtimeMs - fs.statSync(deep).mtimeMs) < 1000)
  assert.strictEqual(await sftp('stat', path.join(root, 'missing')), null)
  fs.writeFileSync(path.join(root, 'f5'), '12345')
  assert.deepStrictEqual(
    { type: (await sftp('stat', path.join(root, 'f5'))).type, size: (await sftp('stat', path.join(root, 'f5'))).size },
    { type: 'file', size: 5 })

  assert.deepStrictEqual(await sftp('readdir', path.join(deep, 'e')), [])

  const many = path.join(root, 'many')
  fs.mkdirSync(many)
  for (let i = 0; i < 1000; i++) fs.writeFileSync(path.join(many, `f${i}`), String(i))
  fs.mkdirSync(path.join(many, 'sub'))
  fs.symlinkSync('f1', path.join(many, 'link'))
  const list = await sftp('readdir', many)
  assert.strictEqual(list.length, 1002)
  const byName = new Map(list.map((e) => [e.name, e]))
  assert.strictEqual(byName.get('f999').size, 3)
  assert.strictEqual(byName.get('f999').type, 'file')
  assert.strictEqual(byName.get('sub').type, 'directory')
  assert.strictEqual(byName.get('link').type, 'symlink')
  assert.ok(!byName.has('.') && !byName.has('..'))
})

test('remove: files, trees, errors', async () => {
  const tree = path.join(root, 'tree')
  fs.mkdirSync(path.join(tree, 'x/y/z'), { recursive: true })
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(tree, 'x', `f${i}`), 'x')
  fs.writeFileSync(path.join(tree, 'x/y/z/deep'), 'd')
  fs.symlinkSync('/etc', path.join(tree, 'x/etc-link'))
  await assert.rejects(sftp('remove', tree), (e) => e.code === 'SFTP_DIR_NOT_EMPTY')
  await sftp('remove', tree, { recursive: true })
  assert.ok(!fs.existsSync(tree))
  assert.ok(fs.existsSync('/etc/passwd'), 'the symlink was removed, not followed')

  fs.writeFileSync(path.join(root, 'one'), '1')
  await sftp('remove', path.join(root, 'one'))
  assert.ok(!fs.existsSync(path.join(root, 'one')))
  fs.mkdirSync(path.join(root, 'emptydir'))
  await sftp('remove', path.join(root, 'emptydir'))
  assert.ok(!fs.existsSync(path.join(root, 'emptydir')))

  await assert.rejects(sftp('remove', path.join(root, 'missing')),
    (e) => e.code === 'SFTP_NO_SUCH_FILE' && e.path === path.join(root, 'missing') &&
      /remove/.test(e.message))
})

test('remove: a tree wider than maxEntries is removed whole, symlinks unlinked, not followed', async () => {
  const tree = path.join(root, 'wide')
  const outside = path.join(root, 'outside')
  fs.mkdirSync(path.join(outside, 'keep'), { recursive: true })
  fs.writeFileSync(path.join(outside, 'keep/file'), 'k')
  fs.mkdirSync(tree)
  for (let i = 0; i < 500; i++) fs.writeFileSync(path.join(tree, `f${i}`), 'x')
  for (let d = 0; d < 3; d++) {
    const sub = path.join(tree, `d${d}`, 'inner')
    fs.mkdirSync(sub, { recursive: true })
    for (let i = 0; i < 120; i++) fs.writeFileSync(path.join(sub, `g${i}`), 'y')
  }
  fs.symlinkSync(outside, path.join(tree, 'to-outside'))
  fs.symlinkSync(outside, path.join(tree, 'd1', 'inner', 'to-outside'))

  // The bound still holds for a listing...
  await assert.rejects(sftp('readdir', tree, { maxEntries: 50 }),
    (e) => e.code === 'ERR_TOO_MANY_ENTRIES' && e.path === tree)
  // ...and remove deletes in listings of at most that many.
  await sftp('remove', tree, { recursive: true, maxEntries: 50 })
  assert.ok(!fs.existsSync(tree))
  assert.strictEqual(fs.readFileSync(path.join(outside, 'keep/file'), 'utf8'), 'k',
    'the symlinks were unlinked, not followed')

  // maxEntries 0 can list nothing: an error, not an endless loop.
  fs.mkdirSync(path.join(tree, 'sub'), { recursive: true })
  await assert.rejects(sftp('remove', tree, { recursive: true, maxEntries: 0 }),
    (e) => e.code === 'ERR_TOO_MANY_ENTRIES' && e.path === tree)
  assert.ok(fs.existsSync(path.join(tree, 'sub')))
  await sftp('remove', tree, { recursive: true })
  assert.ok(!fs.existsSync(tree))
})

test('missing paths and a file where a directory is expected', async () => {
  const missing = path.join(root, 'no/such/file')
  await assert.rejects(sftp('read', missing), (e) => e.code === 'SFTP_NO_SUCH_FILE' && e.path === missing)
  await assert.rejects(sftp('readdir', missing), (e) => e.code === 'SFTP_NO_SUCH_FILE')
  await assert.rejects(sftp('write', missing, { data: 'x' }), (e) => e.code === 'SFTP_NO_SUCH_FILE')

  const file = path.join(root, 'plain')
  fs.writeFileSync(file, 'p')
  await assert.rejects(sftp('readdir', file), (e) => e.code === 'SFTP_NOT_A_DIRECTORY')
  await assert.rejects(sftp('mkdir', path.join(file, 'sub'), { recursive: true }),
    (e) => e.code === 'SFTP_NOT_A_DIRECTORY')
  await assert.rejects(sftp('mkdir', file, { recursive: true }), (e) => e.code === 'SFTP_FILE_EXISTS')
  await assert.rejects(sftp('read', root), (e) => e.code === 'SFTP_IS_A_DIRECTORY')

  assert.throws(() => native.sftp({ session, op: 'chmod', path: '/tmp' }), (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sftp({ session, op: 'read', path: '' }), (e) => e.code === 'ERR_INVALID_ARG')
})

test('concurrent ops on one session, alongside execs', async () => {
  const files = Array.from({ length: 40 }, (_, i) => [path.join(root, `c${i}`), crypto.randomBytes(1000 + i * 997)])
  await Promise.all([
    ...files.map(([p, d]) => sftp('write', p, { data: d })),
    ...Array.from({ length: 10 }, (_, i) => native.sshExec({ session, argv: ['echo', String(i)] }))
  ])
  const back = await Promise.all(files.map(([p]) => sftp('read', p)))
  back.forEach((b, i) => assert.ok(b.equals(files[i][1])))
  const stats = await Promise.all(files.map(([p]) => sftp('stat', p)))
  stats.forEach((s, i) => assert.strictEqual(s.size, files[i][1].length))
})
