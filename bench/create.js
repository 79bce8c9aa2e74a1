#!/usr/bin/env node
'use strict'
// create -> first command on fly-local, one at a time (no warm pool):
// what each boot's bounded root (an ext4 image per boot), its userns owner
// and its own /sys cost. BENCH_CREATE=N runs (default 20), after 2 warm-ups.
//   node bench/create.js
const local = require('../lib/local')
const { fly } = require('..')

const N = Number(process.env.BENCH_CREATE || 20)
const now = () => Number(process.hrtime.bigint()) / 1e6

async function main () {
  const srv = await local.start({ port: 0, quiet: true })
  try {
    const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: `bench-${process.pid}` })
    const times = []
    for (let i = 0; i < N + 2; i++) {
      const t = now()
      const sb = await p.sandbox.create()
      const r = await sb.runCommand('true')
      if (r.exitCode !== 0) throw new Error(`first command exited ${r.exitCode}`)
      if (i >= 2) times.push(now() - t)
      await sb.destroy()
    }
    times.sort((a, b) => a - b)
    const q = (x) => times[Math.min(times.length - 1, Math.floor(x * times.length))].toFixed(1)
    console.log(`create -> first command, ${times.length} runs: p50 ${q(0.5)} ms, p90 ${q(0.9)} ms, min ${times[0].toFixed(1)} ms`)
  } finally {
    await srv.stop()
  }
}
main().catch((e) => { console.error(e); process.exit(1) })
