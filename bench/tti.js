#!/usr/bin/env node
'use strict'
// Time to interactive as ComputeSDK's own benchmark measures it
// (github.com/computesdk/benchmarks, src/sandbox/benchmark.ts and
// concurrent.ts; nothing of it is copied here, its method is reproduced):
// the provider object is the `compute` (their "direct mode"), and one
// iteration is
//
//   start = performance.now()
//   sandbox = await compute.sandbox.create()
//   await sandbox.runCommand(<their identity probe: namespaces, cgroup,
//     boot id, marker files written>)   (exit code 0 required)
//   await sandbox.runCommand('node -v')  (exit code 0 required)
//   tti = performance.now() - start
//   await sandbox.destroy()              (not timed)
//
// Sequential: one after another; concurrent: all fired at once, the wall
// clock until the last.  Their statistics: 5% trimmed from both ends, the
// median of the rest, p95 and p99 by rank.  Here on fly-local (in this
// process, as bench/pool.js), without and with the warm pool (lib/pool.js,
// filled before each pooled iteration, so every pooled create is a claim),
// the sequential iterations interleaved (one unpooled, one pooled).
// BENCH_TTI_N (default 10) iterations per case, BENCH_TTI_MANY (default 20)
// at once.  `node bench/tti.js` (root).
const native = require('../lib/native')
const { fly } = require('..')

const N = Number(process.env.BENCH_TTI_N || 10)
const MANY = Number(process.env.BENCH_TTI_MANY || 20)

// Their computeStats: trim 5% at each end, median, p95/p99 by rank.
function computeStats (values) {
  const sorted = [...values].sort((a, b) => a - b)
  const trim = Math.floor(sorted.length * 0.05)
  const t = trim > 0 && sorted.length - 2 * trim > 0 ? sorted.slice(trim, sorted.length - trim) : sorted
  const mid = Math.floor(t.length / 2)
  const pct = (p) => t[Math.min(Math.max(0, Math.ceil((p / 100) * t.length) - 1), t.length - 1)]
  return { median: t.length % 2 === 0 ? (t[mid - 1] + t[mid]) / 2 : t[mid], p95: pct(95), p99: pct(99) }
}

// Their identity probe (reuse detection), the same shell commands.
function identityProbe () {
  const token = `${Date.now().toString(36)}:${Math.random().toString(36).slice(2, 10)}`
  const a = '/tmp/.bench_ephemeral_check'
  const b = '/var/tmp/.bench_ephemeral_check'
  return [
    `marker_a='${a}'`, `marker_b='${b}'`, "marker_path=''",
    'for p in "$marker_a" "$marker_b"; do if [ -f "$p" ]; then marker_path=$p; break; fi; done',
    "marker_value='unknown'",
    'if [ -n "$marker_path" ]; then marker_value=$(tr -d \'\\n\' < "$marker_path" 2>/dev/null || true); fi',
    'ns_mnt=$(readlink /proc/self/ns/mnt 2>/dev/null || printf unknown)',
    'ns_pid=$(readlink /proc/self/ns/pid 2>/dev/null || printf unknown)',
    'ns_uts=$(readlink /proc/self/ns/uts 2>/dev/null || printf unknown)',
    'cgroup_hash=$(cat /proc/self/cgroup 2>/dev/null | sha256sum 2>/dev/null | cut -d" " -f1)',
    'if [ -z "$cgroup_hash" ]; then cgroup_hash=unknown; fi',
    'boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || printf unknown)',
    "pid1=$(tr -d '\\0' < /proc/1/cmdline 2>/dev/null || printf unknown)",
    "uptime=$(cut -d' ' -f1 /proc/uptime 2>/dev/null || printf unknown)",
    "printf 'marker_path=%s\\n' \"$marker_path\"", "printf 'ns_mnt=%s\\n' \"$ns_mnt\"",
    "printf 'boot_id=%s\\n' \"$boot_id\"", "printf 'pid1=%s\\n' \"$pid1\"",
    `printf '%s' '${token}' > ${a}`, `printf '%s' '${token}' > ${b}`
  ].join('; ')
}

async function iteration (compute) {
  let sandbox = null
  try {
    const start = performance.now()
    sandbox = await compute.sandbox.create()
    const id = await sandbox.runCommand(identityProbe())
    if (id.exitCode !== 0) throw new Error(`identity check exited ${id.exitCode}: ${id.stderr}`)
    if (/^marker_path=\S/m.test(id.stdout)) throw new Error('sandbox reuse detected: a marker file was there')
    const r = await sandbox.runCommand('node -v')
    if (r.exitCode !== 0) throw new Error(`node -v exited ${r.exitCode}: ${r.stderr}`)
    return performance.now() - start
  } finally {
    if (sandbox) await sandbox.destroy()
  }
}

async function concurrent (compute, n) {
  const t = performance.now()
  const ttis = await Promise.all(Array.from({ length: n }, () => iteration(compute)))
  return { ttis, wallMs: performance.now() - t }
}

async function runTti ({ srv, say }) {
  const key = native.keygen()
  const base = { apiToken: srv.token, apiHostname: srv.url, appName: 'bench-tti-' + process.pid, sshPrivateKey: key.privateKey }
  const errors = []
  const plain = fly(base)
  const pooled = fly({ ...base, pool: { size: 1, onError: (e) => errors.push(e) } })
  const seq = { plain: [], pooled: [] }
  await iteration(plain) // warm-up: the app, the image
  for (let i = 0; i < N; i++) {
    seq.plain.push(await iteration(plain))
    await pooled.pool.fill()
    const before = pooled.pool.stats().claims
    seq.pooled.push(await iteration(pooled))
    if (pooled.pool.stats().claims !== before + 1) throw new Error('tti: a pooled create did not claim')
  }
  await pooled.pool.settled()
  await pooled.pool.drain()
  const burstPlain = await concurrent(plain, MANY)
  const many = fly({ ...base, pool: { size: MANY, concurrency: 4, onError: (e) => errors.push(e) } })
  await many.pool.fill()
  const burstPooled = await concurrent(many, MANY)
  const manyClaims = many.pool.stats().claims
  await many.pool.settled()
  await many.pool.drain()

  const f = (x) => x.toFixed(1)
  const row = (name, ms, extra = '') => {
    const s = computeStats(ms)
    say(`| ${name} | ${ms.length} | ${f(s.median)} | ${f(s.p95)} | ${f(s.p99)} | ${extra} |`)
  }
  say("## ComputeSDK's TTI method on fly-local: create → identity probe → `node -v`")
  say('')
  say('| case | n | median ms | p95 ms | p99 ms | |')
  say('|---|---|---|---|---|---|')
  row('sequential, no pool', seq.plain)
  row('sequential, pool', seq.pooled)
  row(`${MANY} at once, no pool`, burstPlain.ttis, `wall clock ${f(burstPlain.wallMs)} ms`)
  row(`${MANY} at once, pool of ${MANY}`, burstPooled.ttis, `wall clock ${f(burstPooled.wallMs)} ms; ${manyClaims} claimed`)
  say('')
  if (errors.length) say(`Pool errors during the run: ${errors.map((e) => e.code).join(', ')}`)
  return { seq, burstPlain, burstPooled }
}

module.exports = { runTti }

if (require.main === module) require('./measure').standalone(runTti)
