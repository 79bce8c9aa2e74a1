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

module.exports = { stats, f, now, timeEach, throughput }
