'use strict'
// Files as users move them: writeFiles/readFiles (src/sftp_batch.c),
// atomic writeFile, streams, watch, against a fly-local machine.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const { startLocal, provider, rejects } = require('./helpers/fly')

const base = '/home/sandbox/files-test'
let srv, sb, fs
test.before(async () => {
  srv = await startLocal()
  sb = await provider(srv).sandbox.create()
  fs = sb.filesystem
  await fs.mkdir(base)
})
test.after(async () => {
  if (sb) await sb.destroy()
  if (srv) await srv.stop()
})

const sha = (b) => crypto.createHash('sha256').update(b).digest('hex')

test('writeFiles: 2,000 files with their parents, all match; readFiles reads them back', async () => {
  const list = Array.from({ length: 2000 }, (_, i) => ({
    path: `${base}/many/d${i % 40}/sub/f${i}.txt`,
    data: i % 7 === 0 ? crypto.randomBytes(i * 13) : `file ${i}\n`.repeat(i % 50)
  }))
  const res = await fs.writeFiles(list)
  assert.equal(res.length, 2000)
  assert.deepEqual(res.filter((r) => !r.ok), [])
  assert.deepEqual(res.map((r) => r.path), list.map((f) => f.path))
  // What the sandbox has, checked by the sandbox.
  const want = list.map((f) => `${sha(Buffer.from(f.data))}  ${f.path}`).sort().join('\n')
  const got = await sb.runCommand(`cd ${base}/many && find . -type f | sort | sed 's|^\\./|${base}/many/|' | xargs sha256sum | sort`)
  assert.equal(got.stdout.trim().split('\n').sort().join('\n'), want)
  // No temporary is left behind.
  assert.equal((await sb.runCommand(`find ${base}/many -name '*.fly-*' | wc -l`)).stdout.trim(), '0')
  const back = await fs.readFiles(list.map((f) => f.path))
  assert.equal(back.length, 2000)
  for (const [i, r] of back.entries()) assert.ok(Buffer.from(list[i].data).equals(r.data), `file ${i}`)
  const text = await fs.readFiles([list[1].path], { encoding: 'utf8' })
  assert.equal(text[0].data, list[1].data)
})

test('writeFiles: a file that cannot be written is reported, the others are written', async () => {
  await fs.writeFile(`${base}/plain`, 'p')
  const res = await fs.writeFiles([
    { path: `${base}/ok1`, data: 'one' },
    { path: '/etc/computesdk-denied', data: 'x' },   // root's directory
    { path: `${base}/plain/child`, data: 'x' },       // under a file
    { path: `${base}`, data: 'x' },                   // a directory
    { path: `${base}/ok2`, data: Buffer.from('two') }
  ])
  assert.deepEqual(res.map((r) => r.ok), [true, false, false, false, true])
  assert.equal(res[1].error.code, 'SFTP_PERMISSION_DENIED')
  assert.equal(res[1].error.path, '/etc/computesdk-denied')
  assert.match(res[2].error.code, /^SFTP_/)
  assert.equal(res[3].error.code, 'SFTP_IS_A_DIRECTORY')
  assert.equal(await fs.readFile(`${base}/ok1`), 'one')
  assert.equal(await fs.readFile(`${base}/ok2`), 'two')
  assert.equal(await fs.readFile(`${base}/plain`), 'p')
  const reads = await fs.readFiles([`${base}/ok1`, `${base}/missing`, `${base}/ok2`])
  assert.equal(reads[0].data.toString(), 'one')
  assert.equal(reads[1].error.code, 'SFTP_NO_SUCH_FILE')
  assert.equal(reads[1].error.path, `${base}/missing`)
  assert.equal(reads[2].data.toString(), 'two')
  await assert.rejects(fs.writeFiles([{ path: '', data: 'x' }]), (e) => e.code === 'ERR_INVALID_ARG')
  await assert.rejects(fs.writeFiles([{ path: `${base}/x`, data: 42 }]), (e) => e.code === 'ERR_INVALID_ARG')
  await assert.rejects(fs.readFiles('nope'), (e) => e.code === 'ERR_INVALID_ARG')
  assert.deepEqual(await fs.writeFiles([]), [])
})

test('writeFile replaces atomically: a reader never sees a torn file; the mode is kept; offset/append stay in place', async () => {
  const p = `${base}/atomic`
  const A = Buffer.alloc(3 << 20, 'a')
  const B = Buffer.alloc(3 << 20, 'b')
  await fs.writeFile(p, A)
  await sb.runCommand('chmod', ['600', p])
  // The reader runs in the sandbox, reading the file whole in a loop, and
  // counts contents that are neither all a's nor all b's (or not 3 MiB).
  const reader = sb.runCommand('python3', ['-c', `
import time, sys
p = sys.argv[1]; torn = 0; seen = set(); n = 0
end = time.time() + 60
while time.time() < end:
    with open(p, 'rb') as f: d = f.read()
    n += 1
    if len(d) != 3 << 20 or d.count(d[:1]) != len(d): torn += 1
    else: seen.add(d[:1])
    try:
        open(p + '.stop').close(); break
    except FileNotFoundError: pass
print(torn, n, sorted(x.decode() for x in seen))
`, p])
  for (let i = 0; i < 30; i++) await Promise.all([fs.writeFile(p, i % 2 ? A : B), fs.writeFile(p, i % 2 ? B : A)])
  await fs.writeFile(`${p}.stop`, '')
  const r = await reader
  const [torn, n, seen] = r.stdout.trim().split(' ', 3)
  assert.equal(torn, '0', `torn reads: ${r.stdout} ${r.stderr}`)
  assert.ok(Number(n) > 10, `the reader read ${n} times`)
  assert.match(seen, /a/)
  assert.equal((await sb.runCommand('stat', ['-c', '%a %U', p])).stdout.trim(), '600 sandbox')
  assert.equal((await sb.runCommand(`ls -a ${base} | grep -c fly- || true`)).stdout.trim(), '0')
  // In place: an offset write and an append.
  await fs.writeFile(`${base}/inplace`, 'hello world')
  await fs.writeFile(`${base}/inplace`, 'W', { offset: 6 })
  await fs.writeFile(`${base}/inplace`, '!', { append: true })
  assert.equal(await fs.readFile(`${base}/inplace`), 'hello World!')
  await assert.rejects(fs.writeFile(p, 'x', { offset: -1 }), (e) => e.code === 'ERR_INVALID_ARG')
})

test('writeFile that fails leaves the old file and no temporary', async () => {
  const dir = `${base}/full`
  await fs.mkdir(dir)
  await fs.writeFile(`${dir}/keep`, 'old')
  // A directory the user may read but not write: the temporary cannot be
  // made, so nothing changes.
  await sb.runCommand('chmod', ['555', dir])
  const err = await rejects(fs.writeFile(`${dir}/keep`, 'new'))
  assert.equal(err.code, 'SFTP_PERMISSION_DENIED')
  assert.equal(err.path, `${dir}/keep`)
  await sb.runCommand('chmod', ['755', dir])
  assert.equal(await fs.readFile(`${dir}/keep`), 'old')
  assert.deepEqual((await fs.readdir(dir)).map((e) => e.name), ['keep'])
})

test('exec transport: writeFiles, readFiles and an atomic writeFile, one exec request per file', async () => {
  const ex = await provider(srv, { appName: sb.sandboxId.split(':')[0], transport: 'exec' }).sandbox.getById(sb.sandboxId)
  const res = await ex.filesystem.writeFiles([
    { path: `${base}/ex/a/one`, data: 'one' },
    { path: '/etc/computesdk-denied', data: 'x' },
    { path: `${base}/ex/two`, data: Buffer.from([0, 1, 2]) }
  ])
  assert.deepEqual(res.map((r) => r.ok), [true, false, true])
  assert.equal(res[1].error.code, 'SFTP_PERMISSION_DENIED')
  await sb.runCommand('chmod', ['640', `${base}/ex/two`])
  await ex.filesystem.writeFile(`${base}/ex/two`, 'replaced')
  assert.equal((await sb.runCommand('stat', ['-c', '%a', `${base}/ex/two`])).stdout.trim(), '640')
  await ex.filesystem.writeFile(`${base}/ex/two`, '!', { append: true })
  await ex.filesystem.writeFile(`${base}/ex/two`, 'R', { offset: 0 })
  const back = await ex.filesystem.readFiles([`${base}/ex/a/one`, `${base}/ex/two`, `${base}/ex/none`])
  assert.equal(back[0].data.toString(), 'one')
  assert.equal(back[1].data.toString(), 'Replaced!')
  assert.equal(back[2].error.code, 'SFTP_NO_SUCH_FILE')
  assert.equal((await sb.runCommand(`ls -a ${base}/ex | grep -c fly- || true`)).stdout.trim(), '0')
})

// The stream test's child: the provider in a process of its own, so its
// RSS is the provider's alone.  It streams the sandbox's file back into the
// sandbox, hashing on the way, and reports the hash and its peak RSS growth.
const STREAM_CHILD = `
const { fly } = require(process.argv[1])
const crypto = require('crypto')
const { pipeline, Transform } = require('stream')
;(async () => {
  const [url, token, id, src, dst] = process.argv.slice(2)
  const provider = fly({ apiHostname: url, apiToken: token, appName: id.split(':')[0] })
  const sb = await provider.sandbox.getById(id)
  await sb.filesystem.exists('/')          // connected: the baseline
  global.gc && global.gc()
  const base = process.memoryUsage().rss
  let peak = base
  const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 20)
  const h = crypto.createHash('sha256')
  let n = 0
  const tap = new Transform({ transform (c, _e, cb) { h.update(c); n += c.length; cb(null, c) } })
  const t0 = Date.now()
  await new Promise((resolve, reject) => pipeline(sb.filesystem.createReadStream(src), tap,
    sb.filesystem.createWriteStream(dst), (e) => e ? reject(e) : resolve()))
  clearInterval(timer)
  peak = Math.max(peak, process.memoryUsage().rss)
  process.stdout.write(JSON.stringify({ sha: h.digest('hex'), bytes: n, growth: peak - base, ms: Date.now() - t0 }))
  process.exit(0)
})().catch((e) => { console.error(e); process.exit(1) })
`

test('streams: a 1 GiB round trip matches its sha256 with the provider RSS growing < 64 MiB', { timeout: 600000 }, async (t) => {
  const { execFile } = require('child_process')
  const path = require('path')
  const src = `${base}/big.bin`
  const dst = `${base}/big.copy`
  const gen = await sb.runCommand(`head -c 1G /dev/urandom > ${src} && sha256sum ${src}`, { timeout: 300000 })
  assert.equal(gen.exitCode, 0, gen.stderr)
  const want = gen.stdout.split(' ')[0]
  const out = await new Promise((resolve, reject) => execFile(process.execPath,
    ['-e', STREAM_CHILD, path.join(__dirname, '..'), srv.url, srv.token, sb.sandboxId, src, dst],
    { maxBuffer: 1 << 20, timeout: 540000 }, (err, stdout, stderr) => err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)))
  const r = JSON.parse(out)
  assert.equal(r.bytes, 1 << 30)
  assert.equal(r.sha, want)
  // (Under ASan freed memory waits in its 256 MiB quarantine, so RSS says
  // nothing about what is held: the bound is checked without it.)
  if (!/asan/.test(process.env.LD_PRELOAD || '')) {
    assert.ok(r.growth < 64 << 20, `RSS grew by ${(r.growth / 1048576).toFixed(1)} MiB`)
  }
  const copy = await sb.runCommand(`sha256sum ${dst} | cut -d' ' -f1; rm -f ${src} ${dst}`, { timeout: 300000 })
  assert.equal(copy.stdout.trim(), want)
  t.diagnostic(`1 GiB through the streams in ${r.ms} ms (${(1024 / (r.ms / 1000)).toFixed(0)} MiB/s), RSS +${(r.growth / 1048576).toFixed(1)} MiB`)
})

test('streams: ranges, an empty file, append, errors', async () => {
  const p = `${base}/range`
  await fs.writeFile(p, '0123456789')
  const collect = async (s) => { const parts = []; for await (const c of s) parts.push(c); return Buffer.concat(parts).toString() }
  assert.equal(await collect(fs.createReadStream(p, { start: 2, end: 5 })), '2345')
  assert.equal(await collect(fs.createReadStream(p, { start: 8 })), '89')
  assert.equal(await collect(fs.createReadStream(p, { highWaterMark: 3 })), '0123456789')
  await fs.writeFile(`${base}/empty`, '')
  assert.equal(await collect(fs.createReadStream(`${base}/empty`)), '')
  const { pipeline } = require('stream/promises')
  const { Readable } = require('stream')
  await pipeline(Readable.from([Buffer.from('ab'), Buffer.from('cd')]), fs.createWriteStream(p, { flags: 'a', highWaterMark: 3 }))
  assert.equal(await fs.readFile(p), '0123456789abcd')
  await pipeline(Readable.from([Buffer.from('new')]), fs.createWriteStream(p))
  assert.equal(await fs.readFile(p), 'new')
  await pipeline(Readable.from([]), fs.createWriteStream(`${base}/made-empty`))
  assert.equal(await fs.readFile(`${base}/made-empty`), '')
  await assert.rejects(collect(fs.createReadStream(`${base}/nope`)), (e) => e.code === 'SFTP_NO_SUCH_FILE')
  assert.throws(() => fs.createReadStream(p, { start: -1 }), (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => fs.createWriteStream(p, { flags: 'r+' }), (e) => e.code === 'ERR_INVALID_ARG')
})

// Collects a watch's events; until(pred) waits for them (with a deadline).
function collector () {
  const events = []
  const waiters = []
  const on = (ev) => {
    events.push(ev)
    for (const w of [...waiters]) if (w.pred(events)) { waiters.splice(waiters.indexOf(w), 1); w.resolve() }
  }
  const until = (pred, ms = 30000) => new Promise((resolve, reject) => {
    if (pred(events)) return resolve()
    const w = { pred, resolve: () => { clearTimeout(w.t); resolve() } }
    w.t = setTimeout(() => reject(new Error(`timed out; events: ${JSON.stringify(events.slice(-20))}`)), ms)
    waiters.push(w)
  })
  return { events, on, until }
}

test('watch: a file created, written, renamed and removed by a command, in order', async () => {
  const dir = `${base}/w1`
  await fs.mkdir(dir)
  const c = collector()
  const w = await fs.watch(dir, c.on)
  try {
    await sb.runCommand(`cd ${dir} && echo a > f && echo b >> f && mv f g && rm g`)
    await c.until((evs) => evs.some((e) => e.type === 'remove'))
    const seq = c.events.filter((e, i, a) => i === 0 || e.type !== a[i - 1].type)
    assert.deepEqual(seq.map((e) => e.type), ['create', 'write', 'rename', 'remove'])
    assert.equal(seq[0].path, `${dir}/f`)
    assert.equal(seq[1].path, `${dir}/f`)
    assert.deepEqual([seq[2].oldPath, seq[2].path], [`${dir}/f`, `${dir}/g`])
    assert.equal(seq[3].path, `${dir}/g`)
  } finally {
    await w.stop()
  }
  // Stopped: the watcher is gone from the sandbox.
  assert.equal((await sb.runCommand('pgrep -c flywatch || true')).stdout.trim(), '0')
  await assert.rejects(fs.watch(`${base}/no-such-dir`, () => {}), (e) => e.code === 'SFTP_NO_SUCH_FILE')
  await assert.rejects(fs.watch(dir, 'nope'), (e) => e.code === 'ERR_INVALID_ARG')
})

test('watch: recursive sees a new subdirectory\'s files', async () => {
  const dir = `${base}/w2`
  await fs.mkdir(`${dir}/old`)
  const c = collector()
  const w = await fs.watch(dir, c.on, { recursive: true })
  try {
    await sb.runCommand(`mkdir -p ${dir}/new/deeper && echo x > ${dir}/new/deeper/file && echo y > ${dir}/old/file2`)
    await c.until((evs) => evs.some((e) => e.path === `${dir}/new/deeper/file`) && evs.some((e) => e.path === `${dir}/old/file2`))
    assert.ok(c.events.some((e) => e.type === 'create' && e.path === `${dir}/new/deeper/file`))
    assert.ok(c.events.some((e) => e.type === 'create' && e.path === `${dir}/new`))
  } finally {
    await w.stop()
  }
})

test('watch: a flood of 100,000 events gives overflow, with bounded memory on both sides', { timeout: 300000 }, async () => {
  const dir = `${base}/w3`
  await fs.mkdir(dir)
  // A consumer slower than the flood (1 ms an event): the queue fills to
  // its bound.
  let overflowed = null
  let seen = 0
  const w = await fs.watch(dir, async (ev) => {
    seen++
    if (ev.type === 'overflow' && !overflowed) overflowed = ev
    await new Promise((resolve) => setTimeout(resolve, 1))
  }, { maxQueued: 2000 })
  try {
    const r = await sb.runCommand('python3', ['-c', `
import os, sys
d = sys.argv[1]
for i in range(100000):
    os.close(os.open(os.path.join(d, 'f%d' % i), os.O_CREAT | os.O_WRONLY, 0o644))
pid = os.popen('pgrep flywatch').read().split()[0]
print([l for l in open('/proc/%s/status' % pid) if l.startswith('VmHWM')][0].split()[1])
`, dir], { timeout: 240000 })
    assert.equal(r.exitCode, 0, r.stderr)
    const end = Date.now() + 60000
    while (!overflowed && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 50))
    assert.ok(overflowed, `no overflow after ${seen} events`)
    const hwmKb = Number(r.stdout.trim())
    assert.ok(hwmKb < 16 * 1024, `the watcher's peak RSS: ${hwmKb} KiB`)
    assert.ok(w.stats.maxQueued <= 2001, `queued at most ${w.stats.maxQueued}`)
    assert.ok(w.stats.dropped > 0 || overflowed.reason === 'kernel')
  } finally {
    await w.stop()
  }
  await sb.runCommand(`rm -rf ${dir}`, { timeout: 120000 })
})

test('watch: survives a pause and resume (restarted, saying events may have been missed)', { timeout: 180000 }, async () => {
  const dir = `${base}/w4`
  await fs.mkdir(dir)
  const c = collector()
  const w = await fs.watch(dir, c.on)
  try {
    await sb.pause()
    await sb.resume()
    await c.until((evs) => evs.some((e) => e.type === 'overflow' && e.reason === 'restart'), 60000)
    await sb.runCommand(`echo z > ${dir}/after`)
    await c.until((evs) => evs.some((e) => e.type === 'create' && e.path === `${dir}/after`))
    assert.equal(w.stats.restarts, 1)
  } finally {
    await w.stop()
  }
})

test('watch: the exec transport says it cannot', async () => {
  const ex = await provider(srv, { appName: sb.sandboxId.split(':')[0], transport: 'exec' }).sandbox.getById(sb.sandboxId)
  await assert.rejects(ex.filesystem.watch(base, () => {}), (e) => e.code === 'FLY_UNSUPPORTED')
})

test('watch: a path the sandbox user cannot read is SFTP_PERMISSION_DENIED', async () => {
  await assert.rejects(fs.watch('/root', () => {}), (e) => e.code === 'SFTP_PERMISSION_DENIED' && e.path === '/root')
})
