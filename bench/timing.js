'use strict'
// Timing helpers of the benchmarks: a monotonic clock in ms, median/p99 of
// a set of samples, and n sequential runs of an async function, timed.
const now = () => Number(process.hrtime.bigint()) / 1e6

function stats (ms) {
  const s = [...ms].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  return { n: s.length, median: q(0.5), p99: q(0.99) }
}

async function timeEach (n, fn) {
  const ms = []
  for (let i = 0; i < n; i++) {
    const t = now()
    await fn(i)
    ms.push(now() - t)
  }
  return stats(ms)
}

const f = (x) => x.toFixed(1)

module.exports = { now, stats, timeEach, f }
