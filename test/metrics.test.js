'use strict'
// sandbox.getMetrics (lib/metrics.js, docker/flymetrics.c) against a
// fly-local machine: its own cgroup's numbers, not the host's.
const test = require('node:test')
const assert = require('node:assert/strict')
const { startLocal, provider } = require('./helpers/fly')

let srv, sb
test.before(async () => {
  srv = await startLocal()
  sb = await provider(srv).sandbox.create({ cpus: 1, memory: 512 })
})
test.after(async () => {
  if (sb) await sb.destroy()
  if (srv) await srv.stop()
})

const MiB = 1 << 20

// Polls getMetrics until pred holds, within a deadline; the last sample.
async function until (pred, ms = 30000) {
  const end = Date.now() + ms
  let m
  do {
    m = await sb.getMetrics()
    if (pred(m)) return m
  } while (Date.now() < end)
  return m
}

test('getMetrics: the machine\'s own limits, its memory and disk', async () => {
  const m = await sb.getMetrics()
  assert.ok(m.at instanceof Date && Math.abs(m.at - Date.now()) < 60000)
  assert.equal(m.cpus, 1, 'its CPU quota, not the host\'s cores')
  assert.equal(m.memoryTotalBytes, 512 * MiB, 'its memory limit, not the host\'s memory')
  assert.ok(m.memoryUsedBytes > 0 && m.memoryUsedBytes < 256 * MiB, `used ${m.memoryUsedBytes}`)
  assert.ok(m.diskTotalBytes > 0 && m.diskUsedBytes > 0 && m.diskUsedBytes <= m.diskTotalBytes)
  assert.ok(m.cpuPercent >= 0 && m.cpuPercent <= 100)
})

test('getMetrics: a CPU-bound loop shows as the share of its cpus it gets', async () => {
  const idle = await until((m) => m.cpuPercent < 30)
  // The loop measures what it gets itself (CPU time over wall time, for 6
  // s): on a loaded host that is less than a whole CPU, and getMetrics must
  // say what it really got, not what it asked for.
  let done = false
  const busy = sb.runCommand('python3', ['-c', `
import time
t0 = time.time(); c0 = time.process_time()
while time.time() - t0 < 6: pass
print((time.process_time() - c0) / (time.time() - t0))
`]).finally(() => { done = true })
  const readings = []
  await new Promise((resolve) => setTimeout(resolve, 500))
  while (!done) {
    const m = await sb.getMetrics()
    if (!done) readings.push(m.cpuPercent)
  }
  const r = await busy
  const got = Number(r.stdout) * 100
  readings.sort((x, y) => x - y)
  const median = readings[Math.floor(readings.length / 2)]
  assert.ok(readings.length >= 3, `${readings.length} readings`)
  assert.ok(Math.abs(median - got) < 25, `getMetrics said ${median}% (of ${readings.join(', ')}); the loop got ${got.toFixed(1)}% of its one cpu`)
  assert.ok(median > idle.cpuPercent, `busy ${median}% vs idle ${idle.cpuPercent}%`)
})

test('getMetrics: a 200 MiB allocation shows in memory', async () => {
  const before = await sb.getMetrics()
  // 200 MiB, touched, held for up to 60 s (killed below).
  await sb.runCommand('timeout 60 python3 -c "import time; b = bytearray(200 << 20); time.sleep(60)" >/dev/null 2>&1 &', { background: true })
  const held = await until((m) => m.memoryUsedBytes - before.memoryUsedBytes > 190 * MiB)
  await sb.runCommand('pkill -f "bytearray" || true')
  assert.ok(held.memoryUsedBytes - before.memoryUsedBytes > 190 * MiB,
    `memory went from ${before.memoryUsedBytes} to ${held.memoryUsedBytes}`)
  const after = await until((m) => m.memoryUsedBytes - before.memoryUsedBytes < 100 * MiB)
  assert.ok(after.memoryUsedBytes - before.memoryUsedBytes < 100 * MiB, 'and goes when it is freed')
})

test('getMetrics({ since }): the samples the sampler keeps, every 5 s', async () => {
  const t0 = Date.now()
  // The sampler started with the machine; wait for two samples after t0.
  let samples = []
  const end = Date.now() + 30000
  while (Date.now() < end) {
    samples = await sb.getMetrics({ since: new Date(t0) })
    if (samples.length >= 2) break
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
  assert.ok(samples.length >= 2, `${samples.length} samples`)
  for (const s of samples) {
    assert.ok(s.at.getTime() >= t0)
    assert.equal(s.cpus, 1)
    assert.equal(s.memoryTotalBytes, 512 * MiB)
  }
  const gap = samples[1].at - samples[0].at
  assert.ok(gap >= 4000 && gap <= 7000, `sampled ${gap} ms apart`)
  assert.deepEqual(await sb.getMetrics({ since: Date.now() + 3600000 }), [])
  await assert.rejects(sb.getMetrics({ since: 'yesterday' }), (e) => e.code === 'ERR_INVALID_ARG')
})

test('getMetrics: the sandbox user cannot touch the kept samples', async () => {
  const r = await sb.runCommand('ls -ld /run/computesdk-metrics; echo x > /run/computesdk-metrics/samples && echo WROTE; ' +
    'echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null && echo CGROUP')
  assert.match(r.stdout, /^drwxr-xr-x \d+ root root/)
  assert.doesNotMatch(r.stdout, /WROTE|CGROUP/)
})
