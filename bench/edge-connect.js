#!/usr/bin/env node
'use strict'
// Connect + auth + first command, the edge path against the private path,
// interleaved on one fly-local sandbox: each round a new provider instance
// (so a new SSH connection; one client key for all, so no authorisation
// step) runs runCommand('true'). Root given as argv[2] (default: this
// checkout), so two builds can be compared in one sitting.
//   node bench/edge-connect.js [root]    (N=30 rounds)
const root = process.argv[2] || require('path').join(__dirname, '..')
const local = require(root + '/lib/local')
const { fly } = require(root)
const N = Number(process.env.N || 30)

// A throwaway ed25519 key for the run.
function key () {
  const { execFileSync } = require('child_process')
  const dir = require('fs').mkdtempSync(require('path').join(require('os').tmpdir(), 'edge-connect-'))
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', `${dir}/k`])
  const k = require('fs').readFileSync(`${dir}/k`, 'utf8')
  require('fs').rmSync(dir, { recursive: true, force: true })
  return k
}
;(async () => {
  const srv = await local.start({ quiet: true })
  const app = 'ec-' + process.pid
  const base = { apiToken: srv.token, apiHostname: srv.url, appName: app, sshPrivateKey: key() }
  const sb = await fly(base).sandbox.create()
  const res = { edge: [], private: [] }
  for (let i = 0; i < N; i++) {
    for (const reach of ['edge', 'private']) {
      const p = fly({ ...base, reach, edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
      const s = await p.sandbox.getById(sb.sandboxId)
      const t = process.hrtime.bigint()
      await s.runCommand('true')
      res[reach].push(Number(process.hrtime.bigint() - t) / 1e6)
      await p.sandbox.getById(sb.sandboxId) // keep
    }
  }
  const med = (a) => { const b = [...a].sort((x, y) => x - y); return b[Math.floor(b.length / 2)].toFixed(1) }
  const p90 = (a) => { const b = [...a].sort((x, y) => x - y); return b[Math.floor(b.length * 0.9)].toFixed(1) }
  console.log(JSON.stringify({ root, edgeP50: med(res.edge), edgeP90: p90(res.edge), privP50: med(res.private), privP90: p90(res.private) }))
  await sb.destroy(); await srv.stop()
  process.exit(0)
})().catch((e) => { console.error(e); process.exit(1) })
