#!/usr/bin/env node
'use strict'
// Files as users move them, against one fly-local sandbox (root needed):
//   - 2,000 small files (1 KiB): filesystem.writeFiles (pipelined on the
//     batch SFTP channel) against 2,000 sequential writeFile calls and
//     ssh2's SFTP (2,000 writeFile calls, 64 in flight on one SFTP
//     channel: its best for many files); readFiles against sequential
//     readFile.
//   - streams: 256 MiB through createReadStream / createWriteStream
//     against readFile / writeFile of the same bytes (in 64 MiB ranges, as
//     maxFileBytes asks), MiB/s.
//   - watch latency: a file written by a command in the sandbox ->
//     the event in the provider (the command's own round trip subtracted:
//     the write's timestamp is taken in the sandbox), p50/p99 of 200.
// BENCH_FILES (2000), BENCH_STREAM_MIB (256), BENCH_WATCH (200).
const fs = require('fs')
const os = require('os')
const path = require('path')
const crypto = require('crypto')
const net = require('net')
const { pipeline } = require('stream/promises')
const local = require('../lib/local')
const native = require('../lib/native')
const { fly } = require('..')

const N_FILES = Number(process.env.BENCH_FILES || 2000)
const STREAM_MIB = Number(process.env.BENCH_STREAM_MIB || 256)
const N_WATCH = Number(process.env.BENCH_WATCH || 200)
const now = () => Number(process.hrtime.bigint()) / 1e6
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))] }

async function ssh2Sftp (sb, privateKey) {
  const { Client } = require(path.join(__dirname, 'node_modules', 'ssh2'))
  const conn = new Client()
  const sock = net.connect(2222, sb.getInstance ? sb.getInstance().privateIp : sb.privateIp)
  sock.setNoDelay(true)
  await new Promise((resolve, reject) => {
    conn.once('ready', resolve).once('error', reject)
    const fp = sb.getInstance ? sb.getInstance().hostKeyFingerprint : sb.hostKeyFingerprint
    conn.connect({
      sock,
      username: 'sandbox',
      privateKey,
      hostVerifier: (key) => 'SHA256:' + crypto.createHash('sha256').update(key).digest('base64').replace(/=+$/, '') === fp
    })
  })
  const sftp = await new Promise((resolve, reject) => conn.sftp((err, s) => (err ? reject(err) : resolve(s))))
  return { sftp, close: () => conn.end() }
}

async function inFlight (items, width, fn) {
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++])
  }))
}

async function main () {
  if (!fs.existsSync(path.join(__dirname, 'node_modules', 'ssh2'))) {
    throw new Error('bench: ssh2 is missing; run `npm install --prefix bench`')
  }
  const srv = await local.start({ quiet: true })
  const key = native.keygen()
  let sb
  const lines = []
  const say = (l) => { lines.push(l); console.error(l) }
  try {
    const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: 'files-' + process.pid, sshPrivateKey: key.privateKey })
    sb = await p.sandbox.create({ memory: 1024 })
    const fsx = sb.filesystem
    const load0 = os.loadavg()[0]
    await fsx.writeFile('/home/sandbox/warm', 'x') // connected, both SFTP channels open
    await fsx.writeFiles([{ path: '/home/sandbox/warm', data: 'x' }])

    // ---- many small files
    const files = (dir) => Array.from({ length: N_FILES }, (_, i) => ({ path: `/home/sandbox/${dir}/d${i % 20}/f${i}`, data: crypto.randomBytes(1024) }))
    const a = files('batch')
    let t = now()
    const res = await fsx.writeFiles(a)
    const tBatch = now() - t
    if (res.some((r) => !r.ok)) throw new Error('writeFiles failed')
    const b = files('seq')
    await sb.runCommand(`mkdir -p ${Array.from({ length: 20 }, (_, i) => `/home/sandbox/seq/d${i}`).join(' ')}`)
    t = now()
    for (const f of b) await fsx.writeFile(f.path, f.data)
    const tSeq = now() - t
    const c = files('ssh2')
    await sb.runCommand(`mkdir -p ${Array.from({ length: 20 }, (_, i) => `/home/sandbox/ssh2/d${i}`).join(' ')}`)
    const s2 = await ssh2Sftp(sb, key.privateKey)
    t = now()
    await inFlight(c, 64, (f) => new Promise((resolve, reject) => s2.sftp.writeFile(f.path, f.data, (err) => err ? reject(err) : resolve())))
    const tSsh2 = now() - t
    s2.close()
    t = now()
    const back = await fsx.readFiles(a.map((f) => f.path))
    const tReadBatch = now() - t
    if (!back.every((r, i) => r.data && r.data.equals(a[i].data))) throw new Error('readFiles mismatch')
    t = now()
    for (const f of a) await fsx.readFile(f.path, { encoding: null })
    const tReadSeq = now() - t
    say(`${N_FILES} files of 1 KiB in 20 directories; load average ${load0.toFixed(2)} at the start.`)
    say('')
    say('| how | ms | files/s |')
    say('|---|---|---|')
    const row = (how, ms) => say(`| ${how} | ${ms.toFixed(0)} | ${(N_FILES / (ms / 1000)).toFixed(0)} |`)
    row('`writeFiles` (one call, pipelined, atomic per file, parents made)', tBatch)
    row('`writeFile` × N, sequential (atomic each)', tSeq)
    row('ssh2 `sftp.writeFile` × N, 64 in flight (in place, not atomic)', tSsh2)
    row('`readFiles` (one call, pipelined)', tReadBatch)
    row('`readFile` × N, sequential', tReadSeq)
    say('')

    // ---- streams
    const big = '/home/sandbox/big'
    const gen = await sb.runCommand(`head -c ${STREAM_MIB}M /dev/urandom > ${big}`, { timeout: 300000 })
    if (gen.exitCode !== 0) throw new Error(gen.stderr)
    const bytes = STREAM_MIB << 20
    t = now()
    let n = 0
    for await (const chunk of fsx.createReadStream(big)) n += chunk.length
    const tRs = now() - t
    if (n !== bytes) throw new Error('short stream')
    async function * gen64 () { for (let i = 0; i < STREAM_MIB; i++) yield crypto.randomBytes(1 << 20) }
    t = now()
    await pipeline(gen64(), fsx.createWriteStream('/home/sandbox/big.w'))
    const tWs = now() - t
    const range = 64 << 20
    t = now()
    for (let off = 0; off < bytes; off += range) await fsx.readFile(big, { encoding: null, offset: off, length: range })
    const tRf = now() - t
    const whole = Buffer.alloc(Math.min(bytes, 256 << 20), 7)
    t = now()
    await fsx.writeFile('/home/sandbox/big.f', whole)
    const tWf = now() - t
    const mibs = (ms, b = bytes) => ((b / 1048576) / (ms / 1000)).toFixed(0)
    say(`${STREAM_MIB} MiB, MiB/s (the write stream's source is crypto.randomBytes, 1 MiB at a time, counted in its figure).`)
    say('')
    say('| how | MiB/s |')
    say('|---|---|')
    say(`| \`createReadStream\` (2 MiB pieces) | ${mibs(tRs)} |`)
    say(`| \`readFile\` in 64 MiB ranges | ${mibs(tRf)} |`)
    say(`| \`createWriteStream\` (2 MiB pieces) | ${mibs(tWs)} |`)
    say(`| \`writeFile\` of one ${whole.length >> 20} MiB Buffer (atomic) | ${mibs(tWf, whole.length)} |`)
    say('')
    await sb.runCommand(`rm -f ${big} ${big}.w ${big}.f`)

    // ---- watch latency: the sandbox stamps each write (ms since the epoch)
    // in the file's name; the event's arrival minus that stamp.  Same host,
    // same clock.
    const dir = '/home/sandbox/watched'
    await fsx.mkdir(dir)
    const lat = []
    let wanted = null
    const w = await fsx.watch(dir, (ev) => {
      if (ev.type !== 'create') return
      const m = /\/(\d+\.\d+)$/.exec(ev.path)
      if (m) lat.push(Date.now() - Number(m[1]))
      if (wanted && lat.length >= wanted.n) wanted.resolve()
    })
    let writer
    await new Promise((resolve) => {
      wanted = { n: N_WATCH, resolve }
      writer = sb.runCommand('python3', ['-c', `
import time, os, sys
for i in range(int(sys.argv[2])):
    open(os.path.join(sys.argv[1], '%.3f' % (time.time() * 1000)), 'w').close()
    time.sleep(0.02)
`, dir, String(N_WATCH)])
      writer.catch(resolve)
    })
    await writer
    await w.stop()
    say(`watch: a file created in the sandbox -> its event in the provider, ${lat.length} files 20 ms apart: p50 ${q(lat, 0.5).toFixed(1)} ms, p99 ${q(lat, 0.99).toFixed(1)} ms.`)
    say('')
    say(`load average (1 min) ${load0.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after.`)
  } finally {
    if (sb) await sb.destroy()
    await srv.stop()
  }
  console.log(lines.join('\n'))
}

if (require.main === module) main().catch((err) => { console.error(err); process.exit(1) })
module.exports = { main }
