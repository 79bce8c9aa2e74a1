'use strict'
// What the benches share: timing one call after another, and throughput
// with a number of calls in flight.
function stats (ms) {
  const s = [...ms].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  return { n: s.length, median: q(0.5), p99: q(0.99), mean: s.reduce((a, b) => a + b, 0) / s.length }
}
const f = (x) => (x === undefined ? '' : x.toFixed(2))
const now = () => Number(process.hrtime.bigint()) / 1e6

async function timeEach (n, fn) {
  const out = []
  for (let i = 0; i < n; i++) {
    const t = now()
    await fn(i)
    out.push(now() - t)
  }
  return stats(out)
}

async function throughput (total, inflight, fn) {
  let next = 0
  const t = now()
  await Promise.all(Array.from({ length: inflight }, async () => {
    while (next < total) { next++; await fn() }
  }))
  return total / ((now() - t) / 1000)
}

// `node bench/<section>.js` on its own: a fly-local of its own, the machine
// and its load first, then section({ srv, say }) printing Markdown lines
// (also written to BENCH_OUT when set).
function standalone (section) {
  const fs = require('fs')
  const os = require('os')
  const local = require('../lib/local')
  ;(async () => {
    const srv = await local.start({ quiet: true })
    try {
      const load = () => os.loadavg().map((x) => x.toFixed(2)).join(' ')
      console.log(`Machine: ${os.cpus().length} × ${os.cpus()[0].model}, load ${load()}, Node ${process.version}`)
      console.log('')
      const lines = []
      await section({ srv, say: (s) => { lines.push(s); console.log(s) } })
      console.log(`load after: ${load()}`)
      if (process.env.BENCH_OUT) fs.writeFileSync(process.env.BENCH_OUT, lines.join('\n') + '\n')
    } finally {
      await srv.stop()
    }
  })().catch((err) => { console.error(err); process.exit(1) })
}

module.exports = { stats, f, now, timeEach, throughput, standalone }
