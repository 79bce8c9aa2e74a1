'use strict'
// fly-local at scale: 20 machines at once on a small host, with
// create->started and create->SSH-ready times measured and reported.
const test = require('node:test')
const assert = require('node:assert/strict')
const { localFixture, ssh, b64 } = require('../helpers/local')

const N = 20

function summary (ms) {
  const s = [...ms].sort((a, b) => a - b)
  const pick = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))]
  return `min ${s[0]} / p50 ${pick(0.5)} / max ${s[s.length - 1]} ms`
}

const app = `sc-${process.pid}`
// Destroyed machines stay readable long enough for the wait below to see
// them in that state, even when 20 destroys on a loaded machine take a while.
const fx = localFixture({ app, keys: ['key'], destroyedGraceMs: 60000 })
const { api } = fx

const launchTimed = async () => {
  const t0 = performance.now()
  const r = await api('POST', `/v1/apps/${app}/machines`, {
    config: {
      image: 'ubuntu:22.04',
      guest: { cpu_kind: 'shared', cpus: 1, memory_mb: 512 },
      files: [{ guest_path: '/etc/computesdk/authorized_keys', raw_value: b64(fx.key.pub), mode: 0o644 }]
    }
  })
  assert.equal(r.status, 200)
  const w = await api('GET', `/v1/apps/${app}/machines/${r.body.id}/wait?state=started&timeout=60`)
  assert.equal(w.status, 200)
  const started = performance.now() - t0
  await fx.srv.waitSsh(r.body.id, 60000)
  const sshReady = performance.now() - t0
  return { m: r.body, started: Math.round(started), sshReady: Math.round(sshReady) }
}

test('one machine: create -> started -> SSH ready', async (t) => {
  const runs = []
  for (let i = 0; i < 3; i++) {
    const r = await launchTimed()
    runs.push(r)
    assert.equal((await api('DELETE', `/v1/apps/${app}/machines/${r.m.id}?force=true`)).status, 200)
  }
  const line = `fly-local timings, 1 machine: create->started ${summary(runs.map((r) => r.started))}; create->ssh-ready ${summary(runs.map((r) => r.sshReady))}`
  t.diagnostic(line)
  console.log(line)
})

test(`${N} machines at once all start, accept SSH and stay isolated`, async (t) => {
  const t0 = performance.now()
  const all = await Promise.all(Array.from({ length: N }, () => launchTimed()))
  const wall = Math.round(performance.now() - t0)
  const line = `fly-local timings, ${N} at once: create->started ${summary(all.map((r) => r.started))}; create->ssh-ready ${summary(all.map((r) => r.sshReady))}; all ready after ${wall} ms`
  t.diagnostic(line)
  console.log(line)
  const ips = new Set(all.map((r) => r.m.private_ip))
  assert.equal(ips.size, N)
  const results = await Promise.all(all.map((r) => ssh(fx.key, r.m.private_ip, 'hostname; echo $FLY_MACHINE_ID; ps -e --no-headers | wc -l')))
  results.forEach((res, i) => {
    assert.equal(res.code, 0, res.stderr)
    const [host, id, procs] = res.stdout.trim().split('\n')
    assert.equal(host, all[i].m.id)
    assert.equal(id, all[i].m.id)
    assert.ok(Number(procs) < 15, `machine sees ${procs} processes`)
  })
  const del = await Promise.all(all.map((r) => api('DELETE', `/v1/apps/${app}/machines/${r.m.id}?force=true`)))
  for (const d of del) assert.equal(d.status, 200)
  const waits = await Promise.all(all.map((r) => api('GET', `/v1/apps/${app}/machines/${r.m.id}/wait?state=destroyed&timeout=30`)))
  for (const w of waits) assert.equal(w.status, 200)
  assert.equal(fx.srv.machines().filter((x) => x.state !== 'destroyed').length, 0)
})
