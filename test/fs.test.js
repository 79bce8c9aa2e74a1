'use strict'
// sandbox.filesystem over SFTP (src/sftp.c), against fly-local machines.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const { startLocal, provider, rejects, call } = require('./helpers/fly')

let srv, sb, fs
test.before(async () => {
  srv = await startLocal()
  sb = await provider(srv).sandbox.create()
  fs = sb.filesystem
})
test.after(async () => {
  if (sb) await sb.destroy()
  if (srv) await srv.stop()
})

const sha = (b) => crypto.createHash('sha256').update(b).digest('hex')
const base = '/home/sandbox/fs-test'

test('round trips: empty, one byte, every byte value, invalid UTF-8', async () => {
  await fs.mkdir(base)
  await fs.writeFile(`${base}/empty`, '')
  assert.equal(await fs.readFile(`${base}/empty`), '')
  await fs.writeFile(`${base}/one`, 'x')
  assert.equal(await fs.readFile(`${base}/one`), 'x')
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
  await fs.writeFile(`${base}/all`, all)
  assert.ok(all.equals(await fs.readFile(`${base}/all`, { encoding: null })))
  const bad = Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0x00, 0xe2, 0x82])
  await fs.writeFile(`${base}/bad`, bad)
  assert.ok(bad.equals(await fs.readFile(`${base}/bad`, { encoding: 'buffer' })))
  // strings are UTF-8 exactly, no added newline
  await fs.writeFile(`${base}/text`, 'héllo ✓\n😀')
  const wc = await sb.runCommand('wc', ['-c', `${base}/text`])
  assert.equal(wc.stdout.split(' ')[0], String(Buffer.byteLength('héllo ✓\n😀')))
})

test('64 MiB round trip, sha256 equal', async () => {
  const big = crypto.randomBytes(64 * 1024 * 1024)
  await fs.writeFile(`${base}/big.bin`, big)
  const remote = await sb.runCommand('sha256sum', [`${base}/big.bin`])
  assert.equal(remote.stdout.split(' ')[0], sha(big))
  const back = await fs.readFile(`${base}/big.bin`, { encoding: null })
  assert.equal(back.length, big.length)
  assert.equal(sha(back), sha(big))
  await fs.remove(`${base}/big.bin`)
})

test('paths with spaces, quotes, newlines, unicode and leading dashes', async () => {
  const names = ['with space', "qu'ote", 'dq"uote', 'new\nline', 'ünï ✓', '-leading-dash', '--', '$(id)', '`x`', '*']
  await fs.mkdir(`${base}/names`)
  for (const n of names) {
    await fs.writeFile(`${base}/names/${n}`, `content of ${n}`)
    assert.equal(await fs.readFile(`${base}/names/${n}`), `content of ${n}`)
    assert.equal(await fs.exists(`${base}/names/${n}`), true)
  }
  const listed = (await fs.readdir(`${base}/names`)).map((e) => e.name).sort()
  assert.deepEqual(listed, [...names].sort())
  // the shell sees exactly the same names
  const r = await sb.runCommand('python3', ['-c', 'import os,sys,json; print(json.dumps(sorted(os.listdir(sys.argv[1]))))', `${base}/names`])
  assert.deepEqual(JSON.parse(r.stdout), [...names].sort())
})

test('mkdir nested, readdir of empty and 1000 entries, FileEntry shape', async () => {
  await fs.mkdir(`${base}/a/b/c/d`)
  await fs.mkdir(`${base}/a/b/c/d`) // again: no error
  assert.deepEqual(await fs.readdir(`${base}/a/b/c/d`), [])
  await sb.runCommand(`mkdir -p ${base}/many && cd ${base}/many && for i in $(seq 1 1000); do printf x > f$i; done && mkdir sub`)
  const entries = await fs.readdir(`${base}/many`)
  assert.equal(entries.length, 1001)
  const f1 = entries.find((e) => e.name === 'f1')
  assert.equal(f1.type, 'file')
  assert.equal(f1.size, 1)
  assert.ok(f1.modified instanceof Date && !isNaN(f1.modified))
  assert.equal(entries.find((e) => e.name === 'sub').type, 'directory')
})

test('remove a file and a whole tree; exists never throws', async () => {
  await fs.mkdir(`${base}/tree/x/y`)
  await fs.writeFile(`${base}/tree/x/y/z`, 'z')
  await fs.writeFile(`${base}/tree/top`, 't')
  await fs.remove(`${base}/tree`)
  assert.equal(await fs.exists(`${base}/tree`), false)
  assert.equal(await fs.exists('/no/such/path'), false)
  assert.equal(await fs.exists(''), false)
  await fs.writeFile(`${base}/single`, '1')
  await fs.remove(`${base}/single`)
  assert.equal(await fs.exists(`${base}/single`), false)
})

test('errors name the code and the path', async () => {
  const missing = await rejects(fs.readFile(`${base}/missing.txt`))
  assert.equal(missing.code, 'SFTP_NO_SUCH_FILE')
  assert.equal(missing.path, `${base}/missing.txt`)
  assert.match(missing.message, /missing\.txt/)
  const rm = await rejects(fs.remove(`${base}/missing-dir`))
  assert.equal(rm.code, 'SFTP_NO_SUCH_FILE')
  const denied = await rejects(fs.writeFile('/etc/computesdk-denied', 'x'))
  assert.equal(denied.code, 'SFTP_PERMISSION_DENIED')
  assert.equal(denied.path, '/etc/computesdk-denied')
  await fs.writeFile(`${base}/afile`, 'f')
  const notDir = await rejects(fs.writeFile(`${base}/afile/child`, 'x'))
  assert.match(notDir.code, /^SFTP_/)
  const notDir2 = await rejects(fs.readdir(`${base}/afile`))
  assert.match(notDir2.code, /^SFTP_/)
  await assert.rejects(fs.readFile(''), (e) => e.code === 'ERR_INVALID_ARG')
  await assert.rejects(fs.writeFile(`${base}/x`, 42), (e) => e.code === 'ERR_INVALID_ARG')
})

test('concurrent reads and writes on one sandbox', async () => {
  await fs.mkdir(`${base}/conc`)
  const bufs = Array.from({ length: 20 }, (_, i) => crypto.randomBytes(1024 * (i + 1) * 7))
  await Promise.all(bufs.map((b, i) => fs.writeFile(`${base}/conc/f${i}`, b)))
  const back = await Promise.all(bufs.map((_, i) => fs.readFile(`${base}/conc/f${i}`, { encoding: null })))
  back.forEach((b, i) => assert.ok(b.equals(bufs[i]), `file ${i}`))
})

test('files cross between the filesystem API and runCommand both ways', async () => {
  await fs.writeFile(`${base}/from-api.txt`, 'api says hi')
  const r = await sb.runCommand('cat', [`${base}/from-api.txt`])
  assert.equal(r.stdout, 'api says hi')
  await sb.runCommand(`printf 'shell says hi' > ${base}/from-shell.txt`)
  assert.equal(await fs.readFile(`${base}/from-shell.txt`), 'shell says hi')
})

test('through the ComputeSDK wrapper and on the exec transport', async () => {
  const appName = sb.sandboxId.split(':')[0]
  const viaExec = await provider(srv, { appName, transport: 'exec' }).sandbox.getById(sb.sandboxId)
  const efs = viaExec.filesystem
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
  await efs.mkdir(`${base}/exec dir`)
  await efs.writeFile(`${base}/exec dir/all`, all)
  assert.ok(all.equals(await fs.readFile(`${base}/exec dir/all`, { encoding: null })))
  assert.ok(all.equals(await efs.readFile(`${base}/exec dir/all`, { encoding: null })))
  assert.equal(await efs.exists(`${base}/exec dir/all`), true)
  assert.deepEqual((await efs.readdir(`${base}/exec dir`)).map((e) => [e.name, e.type, e.size]), [['all', 'file', 256]])
  const err = await rejects(efs.readFile(`${base}/exec dir/none`))
  assert.equal(err.code, 'SFTP_NO_SUCH_FILE')
  await efs.remove(`${base}/exec dir`)
  assert.equal(await efs.exists(`${base}/exec dir`), false)
})

test('exec transport: readdir takes any path as a path, even "-delete"', async () => {
  const [appName, machine] = sb.sandboxId.split(':')
  const efs = (await provider(srv, { appName, transport: 'exec' }).sandbox.getById(sb.sandboxId)).filesystem
  // Relative to the sandbox user's home, where commands start on both
  // transports.
  const made = await call(srv, 'machine.exec', { app: appName, machine }, {
    body: JSON.stringify({ command: ['runuser', '-u', 'sandbox', '--', 'sh', '-c', 'cd && mkdir -p ./-delete ./"(" && touch ./-delete/keep ./"("/kept'] })
  })
  assert.equal(made.body.exit_code, 0, made.body.stderr)
  assert.deepEqual((await efs.readdir('-delete')).map((e) => e.name), ['keep'])
  assert.deepEqual((await efs.readdir('(')).map((e) => e.name), ['kept'])
  assert.equal(await efs.exists('/home/sandbox/-delete/keep'), true, 'nothing was deleted')
  assert.deepEqual((await sb.filesystem.readdir('-delete')).map((e) => e.name), ['keep'], 'SFTP resolves it the same')
})

test('maxFileBytes and maxEntries bound what a sandbox can make readFile and readdir return', async () => {
  const appName = sb.sandboxId.split(':')[0]
  const small = await provider(srv, { appName, maxFileBytes: 10, maxEntries: 3 }).sandbox.getById(sb.sandboxId)
  await sb.runCommand('mkdir -p /tmp/lim && printf 0123456789 > /tmp/lim/ten && printf 01234567890 > /tmp/lim/eleven && touch /tmp/lim/a')
  assert.equal(await small.filesystem.readFile('/tmp/lim/ten'), '0123456789')
  const big = await rejects(small.filesystem.readFile('/tmp/lim/eleven'))
  assert.equal(big.code, 'ERR_FILE_TOO_LARGE')
  // The error's advice works: the file in ranges of at most maxFileBytes,
  // on both transports.
  assert.match(big.message, /readFile\(path, \{ offset, length \}\)/)
  const ex = await provider(srv, { appName, maxFileBytes: 10, transport: 'exec' }).sandbox.getById(sb.sandboxId)
  for (const s of [small, ex]) {
    const parts = [await s.filesystem.readFile('/tmp/lim/eleven', { length: 10 }), await s.filesystem.readFile('/tmp/lim/eleven', { offset: 10, length: 10 })]
    assert.deepEqual(parts, ['0123456789', '0'])
    assert.equal((await s.filesystem.readFile('/tmp/lim/eleven', { offset: 3, length: 2, encoding: null })).toString(), '34')
    assert.equal((await rejects(s.filesystem.readFile('/tmp/lim/eleven'))).code, 'ERR_FILE_TOO_LARGE')
    assert.equal((await rejects(s.filesystem.readFile('/tmp/lim/eleven', { length: 11 }))).code, 'ERR_INVALID_ARG')
    assert.equal((await rejects(s.filesystem.readFile('/tmp/lim/eleven', { offset: -1 }))).code, 'ERR_INVALID_ARG')
    assert.equal((await rejects(s.filesystem.readFile('/tmp/lim/missing', { length: 2 }))).code, 'SFTP_NO_SUCH_FILE')
  }
  assert.equal((await small.filesystem.readdir('/tmp/lim')).length, 3)
  await sb.runCommand('touch /tmp/lim/b')
  const many = await rejects(small.filesystem.readdir('/tmp/lim'))
  assert.equal(many.code, 'ERR_TOO_MANY_ENTRIES')
  await small.filesystem.remove('/tmp/lim/b')
  assert.equal((await small.filesystem.readdir('/tmp/lim')).length, 3)
})

test('the sandbox user can write /app, where ComputeSDK\'s examples write (README: Files)', async () => {
  const dir = `/app/t-${crypto.randomBytes(4).toString('hex')}`
  await fs.mkdir(`${dir}/src`)
  await fs.writeFile(`${dir}/src/index.js`, 'console.log("from /app")')
  assert.equal(await fs.readFile(`${dir}/src/index.js`), 'console.log("from /app")')
  await fs.remove(dir)
  assert.equal(await fs.exists(dir), false)
})
