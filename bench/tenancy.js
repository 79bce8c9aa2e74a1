#!/usr/bin/env node
'use strict'
// What isolating sandboxes from each other costs, on fly-local (root):
//   - one app, isolated by the in-guest firewall (the default): create ->
//     first command, destroy;
//   - an app with its own network per sandbox (a tenant per sandbox): the
//     same, with the app's create and delete in it;
//   - the warm pool, which claims from one app: create -> first command;
//   - the guest firewall's load (`nft -f docker/guest-firewall.nft` in a
//     fresh network namespace: what the entrypoint adds to a boot on Fly).
// Sequential, N each (BENCH_TENANCY, default 10). Markdown on stdout.
const { execFileSync } = require('child_process')
const crypto = require('crypto')
const path = require('path')
const local = require('../lib/local')
const { fly } = require('..')

const N = Number(process.env.BENCH_TENANCY || 10)
const now = () => Number(process.hrtime.bigint()) / 1e6
function p50 (ms) {
  const s = [...ms].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}
const f = (x) => x.toFixed(1)

async function main () {
  const srv = await local.start({ quiet: true })
  const base = { apiToken: srv.token, apiHostname: srv.url, appName: `bt-${crypto.randomBytes(3).toString('hex')}` }
  const rows = []
  try {
    const run = async (label, mk, settle) => {
      const create = []
      const destroy = []
      for (let i = 0; i < N; i++) {
        const p = mk(i)
        const t0 = now()
        const sb = await p.sandbox.create()
        await sb.runCommand('true')
        const t1 = now()
        await sb.destroy()
        create.push(t1 - t0)
        destroy.push(now() - t1)
        if (settle) await settle()
      }
      rows.push([label, f(p50(create)), f(p50(destroy))])
    }
    const one = fly(base)
    await run('one app (guest firewall)', () => one)
    await run('an app with its own network per sandbox', (i) => fly({ ...base, tenant: `s${i}-${crypto.randomBytes(2).toString('hex')}` }))
    const pooled = fly({ ...base, pool: { size: 2 } })
    await pooled.pool.fill()
    /* refilled between creates: each claims a ready machine */
    await run('one app, warm pool (size 2)', () => pooled, async () => { await pooled.pool.settled(); await pooled.pool.fill() })
    await pooled.pool.drain({ all: true })
  } finally {
    await srv.stop()
  }
  /* timed inside the namespace: the entrypoint's own cost */
  const fw = path.join(__dirname, '..', 'docker', 'guest-firewall.nft')
  const ns = `fl-bt-${crypto.randomBytes(3).toString('hex')}`
  execFileSync('ip', ['netns', 'add', ns])
  let load
  try {
    load = execFileSync('ip', ['netns', 'exec', ns, 'bash', '-c',
      `for i in $(seq ${N}); do t=$EPOCHREALTIME; nft -f "$1"; echo "$t $EPOCHREALTIME"; done`, 'bash', fw], { encoding: 'utf8' })
      .trim().split('\n').map((l) => { const [a, b] = l.split(' ').map(Number); return (b - a) * 1000 })
  } finally {
    execFileSync('ip', ['netns', 'del', ns])
  }
  console.log(`| fly-local, ${N} sequential | create → first command p50 (ms) | destroy p50 (ms) |`)
  console.log('|---|---:|---:|')
  for (const r of rows) console.log(`| ${r.join(' | ')} |`)
  console.log(`\nGuest firewall load (nft -f, in a network namespace), p50 of ${N}: ${f(p50(load))} ms`)
}

main().catch((e) => { console.error(e); process.exit(1) })
