'use strict'
// The project against ssh2 and OpenSSH's client (ControlMaster) on one
// fly-local sandbox, side by side in one run: ROUNDS rounds, each client in
// a fresh process (bench/peer-round.js), the order rotating so that none
// always runs first.  The table is the median of each figure over the
// rounds and the ratios project / peer.
const { spawn } = require('child_process')
const fs = require('fs')
const path = require('path')

const ROUNDS = Number(process.env.BENCH_ROUNDS || 6)
// The clients: this project, ssh2 (npm), OpenSSH's ssh over a ControlMaster
// connection; BENCH_CLIENTS=fly,ssh2 for fewer.  'base' is another build of
// the project (BENCH_BASE_ROOT: a tree with its addon built, e.g. main's),
// for a before/after in the same interleaved run.
const CLIENTS = (process.env.BENCH_CLIENTS || 'fly,ssh2,openssh').split(',')
// A subset of the round's phases (peer-round.js), e.g. BENCH_PHASES=sftp100MiB.
const PHASES = process.env.BENCH_PHASES ? process.env.BENCH_PHASES.split(',') : undefined

// [key, label, unit, better: 'lower' | 'higher', goal ratio text]
const ROWS = [
  ['connectMs', 'connect + auth + first command', 'ms', 'lower', ''],
  ['seqP50', "sequential runCommand('true') p50", 'ms', 'lower', '≤ 0.5'],
  ['seqP99', "sequential runCommand('true') p99", 'ms', 'lower', ''],
  ['cmdsPerSec1', 'cmds/s, 1 in flight', '/s', 'higher', ''],
  ['cmdsPerSec10', 'cmds/s, 10 in flight', '/s', 'higher', ''],
  ['cmdsPerSec50', 'cmds/s, 50 in flight', '/s', 'higher', '≥ 1.5'],
  ['clientCpuPerCmd', 'client CPU per command', 'ms', 'lower', '≤ 0.3'],
  ['sandboxCpuPerCmd', 'sandbox CPU per command', 'ms', 'lower', ''],
  ['stdoutStringMiBs', '32 MiB stdout as a string', 'MiB/s', 'higher', '≥ 2'],
  ['stdoutStreamMiBs', '32 MiB stdout streamed', 'MiB/s', 'higher', ''],
  ['up1KiBMiBs', 'SFTP upload 1 KiB (×50)', 'MiB/s', 'higher', ''],
  ['down1KiBMiBs', 'SFTP download 1 KiB (×50)', 'MiB/s', 'higher', ''],
  ['up1MiBMiBs', 'SFTP upload 1 MiB (×10)', 'MiB/s', 'higher', '≥ 1.5'],
  ['down1MiBMiBs', 'SFTP download 1 MiB (×10)', 'MiB/s', 'higher', '≥ 1.5'],
  ['up20MiBMiBs', 'SFTP upload 20 MiB (×3)', 'MiB/s', 'higher', ''],
  ['down20MiBMiBs', 'SFTP download 20 MiB (×3)', 'MiB/s', 'higher', '≥ 1.5'],
  ['up100MiBMiBs', 'SFTP upload 100 MiB', 'MiB/s', 'higher', '≥ 1.5'],
  ['down100MiBMiBs', 'SFTP download 100 MiB', 'MiB/s', 'higher', '≥ 1.5'],
  ['seqEldP99', 'event-loop delay p99, sequential commands', 'ms', 'lower', 'project ≤ 2 ms'],
  ['eldP99At1', 'event-loop delay p99, 1 in flight', 'ms', 'lower', 'project ≤ 2 ms'],
  ['eldP99At10', 'event-loop delay p99, 10 in flight', 'ms', 'lower', 'project ≤ 2 ms'],
  ['eldP99At50', 'event-loop delay p99, 50 in flight', 'ms', 'lower', 'project ≤ 2 ms'],
  ['stdoutStringEldP99', 'event-loop delay p99, 32 MiB stdout as a string', 'ms', 'lower', 'project ≤ 2 ms'],
  ['stdoutStreamEldP99', 'event-loop delay p99, 32 MiB stdout streamed', 'ms', 'lower', 'project ≤ 2 ms'],
  ['up1KiBEldP99', 'event-loop delay p99, SFTP upload 1 KiB', 'ms', 'lower', 'project ≤ 2 ms'],
  ['down1KiBEldP99', 'event-loop delay p99, SFTP download 1 KiB', 'ms', 'lower', 'project ≤ 2 ms'],
  ['up1MiBEldP99', 'event-loop delay p99, SFTP upload 1 MiB', 'ms', 'lower', 'project ≤ 2 ms'],
  ['down1MiBEldP99', 'event-loop delay p99, SFTP download 1 MiB', 'ms', 'lower', 'project ≤ 2 ms'],
  ['up100MiBEldP99', 'event-loop delay p99, SFTP upload 100 MiB', 'ms', 'lower', 'project ≤ 2 ms'],
  ['down100MiBEldP99', 'event-loop delay p99, SFTP download 100 MiB', 'ms', 'lower', 'project ≤ 2 ms'],
  ['up100MiBCpuMs', 'client CPU, SFTP upload 100 MiB', 'ms', 'lower', ''],
  ['down100MiBCpuMs', 'client CPU, SFTP download 100 MiB', 'ms', 'lower', ''],
  ['up100MiBSandboxCpuMs', 'sandbox CPU, SFTP upload 100 MiB', 'ms', 'lower', ''],
  ['down100MiBSandboxCpuMs', 'sandbox CPU, SFTP download 100 MiB', 'ms', 'lower', ''],
  ['maxRssMiB', 'peak RSS of the round', 'MiB', 'lower', '']
]

function median (xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

function round (cfg) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, 'peer-round.js')], {
      env: { ...process.env, BENCH_ROUND: JSON.stringify(cfg) },
      stdio: ['ignore', 'pipe', 'inherit']
    })
    let out = ''
    child.stdout.on('data', (d) => { out += d })
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`${cfg.client} round exited ${code}`))
      resolve(JSON.parse(out.trim().split('\n').pop()))
    })
  })
}

// Runs the rounds against sandbox `sb` (made by `p` with the key in
// keyFile) and returns the Markdown lines of the table.
async function runPeers ({ srv, sb, keyFile, hostFingerprint, log }) {
  if (!fs.existsSync(path.join(__dirname, 'node_modules', 'ssh2'))) {
    throw new Error('bench: ssh2 is missing; run `npm install --prefix bench` (npm run bench does)')
  }
  const [appName, machine] = sb.sandboxId.split(':')
  const info = srv.machines().find((m) => m.id === machine)
  const base = {
    apiUrl: srv.url,
    token: srv.token,
    appName,
    sandboxId: sb.sandboxId,
    host: sb.getInstance ? sb.getInstance().privateIp : sb.privateIp,
    port: 2222,
    user: 'sandbox',
    keyFile,
    hostFingerprint,
    initPid: info ? info.pid : 0,
    phases: PHASES
  }
  const results = Object.fromEntries(CLIENTS.map((c) => [c, []]))
  for (let r = 0; r < ROUNDS; r++) {
    // Each round in another order (a rotation), so that none always runs
    // first or right after the same one.
    const order = CLIENTS.map((_, i) => CLIENTS[(i + r) % CLIENTS.length])
    for (const client of order) {
      results[client].push(await round({ ...base, client }))
      if (log) log(`  round ${r + 1}/${ROUNDS}: ${client} done`)
    }
  }
  const f = (x) => (Number.isFinite(x) ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(2)) : 'n/a')
  const peers = CLIENTS.filter((c) => c !== 'fly')
  const names = { fly: '@computesdk/fly', base: 'before (base)', ssh2: 'ssh2', openssh: 'OpenSSH (mux)' }
  const lines = [
    `${ROUNDS} rounds, each client in a fresh process per round, the order rotating; medians.`,
    `Negotiated ciphers: ${CLIENTS.map((c) => `${names[c]} ${results[c][0].cipher}`).join('; ')}.`,
    '',
    `| figure | unit | ${CLIENTS.map((c) => names[c]).join(' | ')} | ${peers.map((c) => `ratio fly/${c}`).join(' | ')} | goal (fly/ssh2) |`,
    `|---|---|${CLIENTS.map(() => '---|').join('')}${peers.map(() => '---|').join('')}---|`
  ]
  const table = {}
  for (const [key, label, unit, , goal] of ROWS) {
    const m = Object.fromEntries(CLIENTS.map((c) => [c, median(results[c].map((x) => x[key]))]))
    if (CLIENTS.every((c) => !Number.isFinite(m[c]))) continue // a phase not run
    table[key] = { ...m, ...Object.fromEntries(peers.map((c) => [`ratio_${c}`, m.fly / m[c]])) }
    lines.push(`| ${label} | ${unit} | ${CLIENTS.map((c) => f(m[c])).join(' | ')} | ${peers.map((c) => f(m.fly / m[c])).join(' | ')} | ${goal} |`)
  }
  return { lines, table, raw: results }
}

module.exports = { runPeers }

// `node bench/peers.js` (root): only this table, on a fresh fly-local and
// sandbox; BENCH_ROUNDS and BENCH_PHASES choose how much.  npm run bench
// runs it as part of the whole bench.
if (require.main === module) {
  (async () => {
    const os = require('os')
    const local = require('../lib/local')
    const native = require('../lib/native')
    const { fly } = require('..')
    const srv = await local.start({ quiet: true })
    const key = native.keygen()
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-peers-'))
    const keyFile = path.join(tmp, 'id')
    fs.writeFileSync(keyFile, key.privateKey, { mode: 0o600 })
    let sb
    try {
      const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: 'peers-' + process.pid, sshPrivateKey: key.privateKey })
      sb = await p.sandbox.create()
      const load0 = os.loadavg()[0]
      const r = await runPeers({ srv, sb, keyFile, hostFingerprint: sb.getInstance().hostKeyFingerprint, log: console.error })
      console.log(`load average (1 min) ${load0.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after\n`)
      for (const l of r.lines) console.log(l)
      if (process.env.BENCH_RAW) fs.writeFileSync(process.env.BENCH_RAW, JSON.stringify(r.raw, null, 1))
    } finally {
      if (sb) await sb.destroy()
      await srv.stop()
      fs.rmSync(tmp, { recursive: true, force: true })
    }
  })().catch((err) => { console.error(err); process.exit(1) })
}
