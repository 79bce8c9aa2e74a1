#!/usr/bin/env node
'use strict'
// Pausing benchmarks against fly-local (root needed):
//   - pause() -> resume() -> first command, over BENCH_PAUSE cycles (20):
//     median and p99 of resume-to-first-command and of the pause itself;
//   - a 100 MiB workspace (BENCH_SNAP_MIB): snapshot.create, and
//     create({ snapshotId }) to a sandbox that answers.
// Writes Markdown to stdout.
const local = require('../lib/local')
const { fly } = require('..')

const N = Number(process.env.BENCH_PAUSE || 20)
const MIB = Number(process.env.BENCH_SNAP_MIB || 100)

const now = () => Number(process.hrtime.bigint()) / 1e6
function stats (ms) {
  const s = [...ms].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  return { n: s.length, median: q(0.5), p99: q(0.99) }
}
const f = (x) => x.toFixed(1)

async function main () {
  const srv = await local.start({ quiet: true })
  const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: `bench-pause-${process.pid}` })
  const out = []
  try {
    const sb = await p.sandbox.create({ volume: { sizeGb: 1 } })
    const pauseMs = []
    const resumeMs = []
    const wakeMs = []
    for (let i = 0; i < N; i++) {
      let t = now()
      await sb.pause()
      pauseMs.push(now() - t)
      t = now()
      await sb.resume()
      const r = await sb.runCommand('true')
      if (r.exitCode !== 0) throw new Error('first command failed')
      resumeMs.push(now() - t)
      // wake on use: pause, then the command alone
      await sb.pause()
      t = now()
      await sb.runCommand('true')
      wakeMs.push(now() - t)
    }
    out.push(`| pause(), resume() -> first command (${N} cycles) | median ms | p99 ms |`, '|---|---|---|')
    for (const [name, ms] of [['pause() (suspend)', pauseMs], ['resume() + first command', resumeMs], ['first command on a paused sandbox (wake on use)', wakeMs]]) {
      const s = stats(ms)
      out.push(`| ${name} | ${f(s.median)} | ${f(s.p99)} |`)
    }
    const w = await sb.runCommand(`head -c ${MIB * 1048576} /dev/urandom > /home/sandbox/blob && sync`)
    if (w.exitCode !== 0) throw new Error(w.stderr)
    let t = now()
    const snap = await p.snapshot.create(sb.sandboxId)
    const snapMs = now() - t
    t = now()
    const restored = await p.sandbox.create({ snapshotId: snap.id })
    const r = await restored.runCommand('stat -c %s /home/sandbox/blob')
    const restoreMs = now() - t
    if (Number(r.stdout) !== MIB * 1048576) throw new Error('restored workspace differs')
    out.push('', `| ${MIB} MiB workspace | ms |`, '|---|---|',
      `| snapshot.create | ${f(snapMs)} |`, `| create({ snapshotId }) -> first command | ${f(restoreMs)} |`)
    await restored.destroy()
    await sb.destroy()
  } finally {
    await srv.stop()
  }
  console.log(out.join('\n'))
}

main().catch((e) => { console.error(e); process.exit(1) })
