#!/usr/bin/env node
'use strict'
// Process handles (lib/commands.js, docker/flyproc.c) against runCommand on
// one fly-local machine: start -> first output byte of `echo x` (the handle's
// onStdout) vs runCommand('echo x') to its result, sequential, interleaved
// in rounds so that both see the same load; runCommand('true') alone for
// its p50 (it does not use the daemon, so it should not move); then 1,000
// handles started (50 in flight) and listed: commands.list() latency.
// Not a test; run as root: node bench/processes.js [N]
const local = require('../lib/local')
const { fly } = require('..')

const N = Number(process.argv[2] || 200)
const HANDLES = Number(process.env.BENCH_HANDLES || 1000)

function stats (ms) {
  const s = [...ms].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  return { n: s.length, p50: q(0.5), p99: q(0.99) }
}
const now = () => Number(process.hrtime.bigint()) / 1e6
const row = (name, r) => `| ${name} | ${r.n} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} |`

async function firstByte (sb) {
  const t = now()
  let first = null
  let resolveFirst
  const got = new Promise((resolve) => { resolveFirst = resolve })
  const h = await sb.commands.start('echo x', { onStdout: () => { if (first === null) { first = now() - t; resolveFirst() } } })
  await got
  await h.wait()
  return first
}

async function runFirst (sb) {
  const t = now()
  const r = await sb.runCommand('echo x')
  if (r.stdout !== 'x\n') throw new Error('echo failed')
  return now() - t
}

;(async () => {
  const srv = await local.start({ quiet: true })
  const provider = fly({ apiToken: srv.token, apiHostname: srv.url, appName: `bench-proc-${process.pid}` })
  const sb = await provider.sandbox.create()
  try {
    for (let i = 0; i < 20; i++) { await firstByte(sb); await runFirst(sb) } // warm: session, executor, daemon
    const hs = []
    const rc = []
    const rt = []
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < N / 4; i++) hs.push(await firstByte(sb))
      for (let i = 0; i < N / 4; i++) rc.push(await runFirst(sb))
      for (let i = 0; i < N / 4; i++) {
        const t = now()
        await sb.runCommand('true')
        rt.push(now() - t)
      }
    }
    console.log(`start -> first output byte, sequential, on one fly-local machine (${N} each, 4 interleaved rounds)\n`)
    console.log('| what | n | p50 ms | p99 ms |\n|---|---|---|---|')
    console.log(row("commands.start('echo x') -> first onStdout", stats(hs)))
    console.log(row("runCommand('echo x') -> result", stats(rc)))
    console.log(row("runCommand('true')", stats(rt)))

    // 1,000 handles: started 50 at a time (each ends at once: `true`), kept
    // by the daemon as recently ended; then list() of all of them.
    const t0 = now()
    let next = 0
    const worker = async () => {
      while (next < HANDLES) {
        next++
        const h = await sb.commands.start('true')
        await h.wait()
      }
    }
    await Promise.all(Array.from({ length: 50 }, worker))
    const startMs = now() - t0
    const lists = []
    let count = 0
    for (let i = 0; i < 20; i++) {
      const t = now()
      count = (await sb.commands.list()).length
      lists.push(now() - t)
    }
    console.log(`\n${HANDLES} handles started and waited for, 50 in flight: ${startMs.toFixed(0)} ms ` +
      `(${(HANDLES / (startMs / 1000)).toFixed(0)} handles/s); list() returns ${count}\n`)
    console.log('| what | n | p50 ms | p99 ms |\n|---|---|---|---|')
    console.log(row(`commands.list() of ${count} processes`, stats(lists)))
  } finally {
    await sb.destroy().catch(() => {})
    await srv.stop()
  }
})().catch((e) => { console.error(e); process.exit(1) })
