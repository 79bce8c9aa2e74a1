#!/usr/bin/env node
'use strict'
// Create -> first command with and without the warm pool (lib/pool.js), on
// fly-local, in one run: run.js calls runPool(); `node bench/pool.js` (root)
// runs just this section on its own fly-local.  BENCH_POOL_N (default 10)
// creates per case, BENCH_POOL_MANY (default 20) at once.
//
// Cases, each timed from create() to the first runCommand('true') settled:
//   - no pool: today's create (boot, SSH connect, check), then the command;
//   - pool, claimed by the provider that filled it: its SSH connection was
//     kept across the suspend, so the claim probes it and the command runs;
//   - pool, claimed by another provider (as another process would): a new
//     SSH connection after the resume;
//   - pool, claims back to back while the top-up refills in the background
//     (on fly-local the top-up's boots share the 2 cores with the claims);
//   - pool of BENCH_POOL_MANY, that many creates at once.
// The rounds alternate between the cases so that load drifts hit them alike.
const native = require('../lib/native')
const { fly } = require('..')

const N = Number(process.env.BENCH_POOL_N || 10)
const MANY = Number(process.env.BENCH_POOL_MANY || 20)

const now = () => Number(process.hrtime.bigint()) / 1e6
const f = (x) => x.toFixed(1)

function stats (ms) {
  const s = [...ms].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]
  return { n: s.length, p50: q(0.5), p99: q(0.99), max: s[s.length - 1] }
}

async function firstCommand (p) {
  const t = now()
  const sb = await p.sandbox.create()
  const created = now() - t
  const r = await sb.runCommand('true')
  if (r.exitCode !== 0) throw new Error(`first command exited ${r.exitCode}`)
  return { sb, created, total: now() - t }
}

async function runPool ({ srv, say }) {
  const key = native.keygen()
  const app = 'bench-pool-' + process.pid
  const base = { apiToken: srv.token, apiHostname: srv.url, appName: app, sshPrivateKey: key.privateKey }
  const errors = []
  const plain = fly(base)
  const pooled = fly({ ...base, pool: { size: 2, onError: (e) => errors.push(e) } })
  // Another provider instance: its own sessions, like another process.
  const other = fly({ ...base, pool: { size: 0 } })
  const cases = { plain: [], kept: [], fresh: [], burst: [] }
  const phases = []
  const otherPhases = []
  const keep = async (c, r) => { cases[c].push(r.total); await r.sb.destroy() }
  const claimed = async (p, n, fn) => {
    const before = p.pool.stats().claims
    const out = await fn()
    if (p.pool.stats().claims - before !== n) throw new Error(`pool: expected ${n} claim(s)`)
    return out
  }

  await keep('plain', await firstCommand(plain)) // warm-up: app, image cache
  for (let i = 0; i < N; i++) {
    await keep('plain', await firstCommand(plain))
    await pooled.pool.fill()
    await keep('kept', await claimed(pooled, 1, () => firstCommand(pooled)))
    phases.push(pooled.pool.stats().lastClaim)
    await pooled.pool.fill()
    await keep('fresh', await claimed(other, 1, () => firstCommand(other)))
    otherPhases.push(other.pool.stats().lastClaim)
    await pooled.pool.fill()
    const [a, b] = await claimed(pooled, 2, async () => [await firstCommand(pooled), await firstCommand(pooled)])
    await keep('burst', a)
    await keep('burst', b)
  }
  cases.plain.shift() // the warm-up
  await pooled.pool.drain()

  const many = fly({ ...base, pool: { size: MANY, concurrency: 4, onError: (e) => errors.push(e) } })
  let t = now()
  await many.pool.fill()
  const fillMs = now() - t
  t = now()
  const burst = await Promise.all(Array.from({ length: MANY }, () => firstCommand(many)))
  const allMs = now() - t
  const manyClaims = many.pool.stats().claims
  await Promise.all(burst.map((r) => r.sb.destroy()))
  await many.pool.settled()
  await many.pool.drain()
  t = now()
  const burstPlain = await Promise.all(Array.from({ length: MANY }, () => firstCommand(plain)))
  const allPlainMs = now() - t
  await Promise.all(burstPlain.map((r) => r.sb.destroy()))

  const row = (name, ms, extra = '') => {
    const s = stats(ms)
    say(`| ${name} | ${s.n} | ${f(s.p50)} | ${f(s.p99)} | ${f(s.max)} | ${extra} |`)
  }
  say('## Warm pool: create → first command on fly-local')
  say('')
  say('| case | n | p50 ms | p99 ms | max ms | |')
  say('|---|---|---|---|---|---|')
  row('no pool (today\'s create)', cases.plain)
  row('pool, same provider (kept SSH connection)', cases.kept)
  row('pool, another provider (new SSH connection)', cases.fresh)
  row('pool, two back to back while the top-up runs', cases.burst)
  row(`no pool, ${MANY} at once`, burstPlain.map((r) => r.total), `all in ${f(allPlainMs)} ms`)
  row(`pool of ${MANY}, ${MANY} at once`, burst.map((r) => r.total), `${manyClaims} claimed; all in ${f(allMs)} ms; filling it took ${f(fillMs)} ms`)
  say('')
  const keys = ['listMs', 'leaseMs', 'getMs', 'metadataMs', 'startMs', 'waitMs', 'sshMs', 'totalMs']
  const where = (ps, totals) => keys.map((k) => `${k.replace(/Ms$/, '')} ${f(stats(ps.map((p) => p[k])).p50)}`).join(', ') +
    `; then the first command: ${f(stats(totals.map((x, i) => x - ps[i].totalMs)).p50)} ms`
  say(`Where a claim's time goes (p50 ms). Same provider (probe of the kept connection): ${where(phases, cases.kept)}. ` +
    `Another provider (ssh = connect, authenticate, check): ${where(otherPhases, cases.fresh)}.`)
  say('')
  if (errors.length) say(`Pool errors during the run: ${errors.map((e) => e.code).join(', ')}`)
  return { cases, phases, otherPhases }
}

module.exports = { runPool }

if (require.main === module) require('./measure').standalone(runPool)
