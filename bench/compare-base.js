#!/usr/bin/env node
'use strict'
// runCommand('true') and runCommand('echo x') p50: another checkout's lib/ (BASE_LIB, e.g.
// `mkdir /tmp/base && git archive main lib package.json | tar -x -C /tmp/base` with build/ and
// node_modules linked in) against this one's: same addon, same
// fly-local machine (one sandbox each, one provider each), interleaved rounds.
const local = require('../lib/local')
const branch = require('..')
const main = require(require('path').resolve(process.env.BASE_LIB || '/tmp/base', 'lib', 'index.js'))
const now = () => Number(process.hrtime.bigint()) / 1e6
const p50 = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] }
;(async () => {
  const srv = await local.start({ quiet: true })
  const mk = (f, n) => f.fly({ apiToken: srv.token, apiHostname: srv.url, appName: `rcb-${n}-${process.pid}` })
  const pb = mk(branch, 'b'); const pm = mk(main, 'm')
  const sbb = await pb.sandbox.create(); const sbm = await pm.sandbox.create()
  const res = { branch: { t: [], e: [] }, main: { t: [], e: [] } }
  try {
    for (const sb of [sbb, sbm]) for (let i = 0; i < 30; i++) await sb.runCommand('true')
    for (let round = 0; round < 10; round++) {
      for (const [name, sb] of round % 2 ? [['branch', sbb], ['main', sbm]] : [['main', sbm], ['branch', sbb]]) {
        for (let i = 0; i < 40; i++) { const t = now(); await sb.runCommand('true'); res[name].t.push(now() - t) }
        for (let i = 0; i < 40; i++) { const t = now(); await sb.runCommand('echo x'); res[name].e.push(now() - t) }
      }
    }
    for (const n of ['main', 'branch']) console.log(`| ${n} | ${res[n].t.length} | ${p50(res[n].t).toFixed(2)} | ${p50(res[n].e).toFixed(2)} |`)
  } finally {
    await sbb.destroy().catch(() => {}); await sbm.destroy().catch(() => {}); await srv.stop()
  }
})().catch((e) => { console.error(e); process.exit(1) })
