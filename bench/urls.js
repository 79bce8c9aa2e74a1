#!/usr/bin/env node
'use strict'
// A port's URL through the edge bridge (getUrl for a port not declared at
// create: TLS to fly-local's edge, the bridge's token check, the port)
// against today's declared-port path (create's ports: a public port of its
// own, fly-local's TCP proxy), on one server in one sandbox, interleaved
// (one request on each path in turn, so a change of load falls on both):
//   - keep-alive clients (the TLS handshake paid once): p50 / p99
//   - a new connection per request: p50 / p99
//   - the URL path landing on another machine of the app first (one
//     fly-replay hop, as a browser's request does when Fly's proxy picks
//     another machine)
// fly-local runs in a process of its own (bench/edge.js startApart), as
// Fly's proxy is no part of the client's. Run: node bench/urls.js.
const fs = require('fs')
const http = require('http')
const https = require('https')
const path = require('path')
const { fly } = require('..')
const { startApart } = require('./edge')
const { stats, f, now } = require('./measure')

const N = Number(process.env.BENCH_URLS || 300)
const SERVER = fs.readFileSync(path.join(__dirname, '..', 'test', 'fixtures', 'url-server.js'), 'utf8')

function get (mod, url, opts) {
  return new Promise((resolve, reject) => {
    const req = mod.request(url, opts, (res) => {
      res.resume()
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`${url}: ${res.statusCode}`))))
    })
    req.on('error', reject)
    req.end()
  })
}

async function main () {
  const srv = await startApart()
  try {
    const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: `bench-urls-${process.pid}`, edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
    const sb = await p.sandbox.create({ ports: [8000] })
    const other = await p.sandbox.create()
    await sb.filesystem.writeFile('/home/sandbox/url-server.js', SERVER)
    await sb.runCommand('node /home/sandbox/url-server.js 8000 /dev/null 0.0.0.0', { background: true })
    await sb.runCommand('for i in $(seq 400); do ss -Hltn "sport = :8000" | grep -q . && exit 0; sleep 0.05; done; exit 1')
    const declared = await sb.getUrl({ port: 8000 })
    const inst = sb.getInstance()
    // the URL path for the same port (declared ports keep their own path
    // in getUrl): signed as getUrl signs any other port
    const url = `${srv.edgeUrl}/.computesdk/u/${inst.machineId}/8000/`
    const token = require('../lib/urls').sign(inst, 8000, 0)
    const keep = { http: new http.Agent({ keepAlive: true, maxSockets: 1 }), https: new https.Agent({ keepAlive: true, maxSockets: 1, ca: srv.edgeCa }) }
    const paths = {
      'declared port, keep-alive': () => get(http, declared + '/', { agent: keep.http }),
      'URL path, keep-alive': () => get(https, url, { agent: keep.https, headers: { 'computesdk-token': token } }),
      'declared port, new connection': () => get(http, declared + '/', { agent: false }),
      'URL path, new connection': () => get(https, url, { agent: false, ca: srv.edgeCa, headers: { 'computesdk-token': token } }),
      'URL path, keep-alive, via another machine (fly-replay)': () => get(https, url, {
        agent: keep.https, headers: { 'computesdk-token': token, host: `${inst.appName}.fly.dev`, 'fly-force-instance-id': other.getInstance().machineId }
      })
    }
    const times = Object.fromEntries(Object.keys(paths).map((k) => [k, []]))
    for (let i = 0; i < 20; i++) for (const fn of Object.values(paths)) await fn()
    for (let i = 0; i < N; i++) {
      for (const [k, fn] of Object.entries(paths)) {
        const t = now()
        await fn()
        times[k].push(now() - t)
      }
    }
    console.log(`| path (${N} GETs each, interleaved) | p50 ms | p99 ms |`)
    console.log('|---|---|---|')
    for (const [k, ms] of Object.entries(times)) {
      const s = stats(ms)
      console.log(`| ${k} | ${f(s.median)} | ${f(s.p99)} |`)
    }
    await Promise.all([sb.destroy(), other.destroy()])
  } finally {
    await srv.stop()
  }
}

main().catch((err) => { console.error(err); process.exit(1) })
