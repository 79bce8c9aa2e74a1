#!/usr/bin/env node
'use strict'
// The edge path against the private path, side by side in one run on one
// fly-local (root needed): two providers on the same app, one with
// reach: 'private' (TCP to the machine's sshd), one with reach: 'edge'
// (TLS to fly-local's edge, a WebSocket upgrade routed by Host and
// fly-force-instance-id, the image's bridge, sshd); and ssh2 (npm) over the
// same edge (a node TLS socket + a `ws` client as its sock) and over TCP.
//   - create -> first command (5 each, one at a time)
//   - sequential runCommand('true') p50 / p99
//   (these two interleaved: one private call, one edge call, and so on)
//   - cmds/s with 50 in flight
//   - 20 MiB upload and download (SFTP)
// Run: node bench/edge.js (or as part of npm run bench). Prints Markdown.
const crypto = require('crypto')
const net = require('net')
const { spawn } = require('child_process')
const local = require('../lib/local')
const native = require('../lib/native')
const { fly } = require('..')
const { stats, f, now, timeEach, throughput } = require('./measure')

const N_CMD = Number(process.env.BENCH_CMD || 200)
const N_CREATE = Number(process.env.BENCH_CREATE || 5)

// The project's figures for the providers, interleaved (one private call,
// one edge call, ...) so that a change of load on the machine falls on both
// paths alike.
async function measure (providers) {
  const out = providers.map(() => ({ creates: [], seq: [] }))
  const time = async (fn) => { const t = now(); await fn(); return now() - t }
  for (let i = 0; i < N_CREATE; i++) {
    for (const [k, p] of providers.entries()) {
      let sb
      out[k].creates.push(await time(async () => { sb = await p.sandbox.create(); await sb.runCommand('true') }))
      await sb.destroy()
    }
  }
  const sbs = await Promise.all(providers.map((p) => p.sandbox.create()))
  for (let i = 0; i < 20; i++) for (const sb of sbs) await sb.runCommand('true')
  for (let i = 0; i < N_CMD; i++) {
    for (const [k, sb] of sbs.entries()) out[k].seq.push(await time(() => sb.runCommand('true')))
  }
  for (const [k, sb] of sbs.entries()) out[k].at50 = await throughput(N_CMD * 2, 50, () => sb.runCommand('true'))
  const data = crypto.randomBytes(20 << 20)
  for (const sb of sbs) await sb.filesystem.writeFile('/tmp/warm', 'x')
  for (const [k, sb] of sbs.entries()) out[k].up = 20 / (await time(() => sb.filesystem.writeFile('/tmp/up.bin', data)) / 1000)
  for (const [k, sb] of sbs.entries()) {
    let back
    out[k].down = 20 / (await time(async () => { back = await sb.filesystem.readFile('/tmp/up.bin', { encoding: null }) }) / 1000)
    if (!back.equals(data)) throw new Error('20 MiB round trip mismatch')
  }
  return out.map((o, k) => ({ sb: sbs[k], create: stats(o.creates), seq: stats(o.seq), at50: o.at50, up: o.up, down: o.down }))
}

// ssh2 on one sock factory: sequential p50/p99 and 50 in flight.
async function ssh2Figures ({ sock, privateKey, fingerprint }) {
  const { Client } = require('./node_modules/ssh2')
  const c = new Client()
  const s = await sock()
  await new Promise((resolve, reject) => {
    c.once('ready', resolve)
    c.once('error', reject)
    c.connect({
      sock: s,
      username: 'sandbox',
      privateKey,
      hostVerifier: (key) => `SHA256:${crypto.createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}` === fingerprint.replace(/=+$/, ''),
      readyTimeout: 15000
    })
  })
  const run = () => new Promise((resolve, reject) => {
    c.exec('true', (err, ch) => {
      if (err) return reject(err)
      ch.on('close', resolve)
      ch.resume()
      ch.stderr.resume()
    })
  })
  for (let i = 0; i < 20; i++) await run()
  const seq = await timeEach(N_CMD, run)
  // ssh2 opens channels one by one; sshd's MaxSessions bounds what runs at once
  const at50 = await throughput(N_CMD * 2, 50, run).catch(() => undefined)
  c.end()
  return { seq, at50 }
}

// A duplex to the sandbox's sshd through the edge: TLS, the upgrade, then
// the WebSocket's binary messages as a stream.
function edgeSock (srv, sb) {
  const WebSocket = require('./node_modules/ws')
  const m = sb.getInstance()
  const ws = new WebSocket(`${srv.edgeUrl}/.computesdk/ssh`, {
    ca: srv.edgeCa,
    headers: { host: `${m.appName}.fly.dev`, 'fly-force-instance-id': m.machineId, authorization: `Bearer ${m._edgeToken}` },
    perMessageDeflate: false
  })
  return new Promise((resolve, reject) => {
    ws.once('open', () => {
      ws._socket.setNoDelay(true)
      resolve(WebSocket.createWebSocketStream(ws))
    })
    ws.once('error', reject)
  })
}

function tcpSock (ip) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: ip, port: 2222, noDelay: true }, () => resolve(s))
    s.once('error', reject)
  })
}

async function runEdge ({ srv, say }) {
  const key = native.keygen()
  const appName = `bench-edge-${process.pid}`
  const base = { apiToken: srv.token, apiHostname: srv.url, appName, sshPrivateKey: key.privateKey }
  const priv = fly({ ...base, reach: 'private' })
  const edge = fly({ ...base, reach: 'edge', edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
  const [a, b] = await measure([priv, edge])
  const m = b.sb.getInstance()
  const fp = m.hostKeyFingerprint
  const s2edge = await ssh2Figures({ sock: () => edgeSock(srv, b.sb), privateKey: key.privateKey, fingerprint: fp })
  const s2tcp = await ssh2Figures({ sock: () => tcpSock(m.privateIp), privateKey: key.privateKey, fingerprint: fp })
  await a.sb.destroy()
  await b.sb.destroy()
  say('## The edge path against the private path (fly-local)')
  say('')
  say('| path | create → first command p50 ms | sequential `true` p50 ms | p99 ms | cmds/s, 50 in flight | 20 MiB up MiB/s | 20 MiB down MiB/s |')
  say('|---|---|---|---|---|---|---|')
  say(`| private (TCP to sshd) | ${f(a.create.median)} | ${f(a.seq.median)} | ${f(a.seq.p99)} | ${f(a.at50)} | ${f(a.up)} | ${f(a.down)} |`)
  say(`| edge (TLS + WebSocket, bridge) | ${f(b.create.median)} | ${f(b.seq.median)} | ${f(b.seq.p99)} | ${f(b.at50)} | ${f(b.up)} | ${f(b.down)} |`)
  say(`| ratio edge / private | ${f(b.create.median / a.create.median)} | ${f(b.seq.median / a.seq.median)} | ${f(b.seq.p99 / a.seq.p99)} | ${f(b.at50 / a.at50)} | ${f(b.up / a.up)} | ${f(b.down / a.down)} |`)
  say(`| ssh2 over TCP | | ${f(s2tcp.seq.median)} | ${f(s2tcp.seq.p99)} | ${f(s2tcp.at50)} | | |`)
  say(`| ssh2 over the same edge (tls + ws) | | ${f(s2edge.seq.median)} | ${f(s2edge.seq.p99)} | ${f(s2edge.at50)} | | |`)
  say(`| ratio project / ssh2, edge | | ${f(b.seq.median / s2edge.seq.median)} | ${f(b.seq.p99 / s2edge.seq.p99)} | ${s2edge.at50 ? f(b.at50 / s2edge.at50) : ''} | | |`)
  say('')
}

module.exports = { runEdge, startApart }

// fly-local in a process of its own, as Fly's proxy is no part of the
// client's: its edge's TLS and piping then do not run on the measured
// process's JS thread. { url, token, edgeUrl, edgeCa, stop() }.
function startApart () {
  const script = `
    const { start } = require(${JSON.stringify(require.resolve('../lib/local'))})
    start({ quiet: true }).then((srv) => {
      process.stdout.write(JSON.stringify({ url: srv.url, token: srv.token, edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa }) + '\\n')
      const bye = () => srv.stop().then(() => process.exit(0))
      process.on('SIGTERM', bye)
      process.stdin.on('end', bye)
      process.stdin.resume()
    }, (e) => { console.error(e); process.exit(1) })`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      const srv = JSON.parse(buf.slice(0, nl))
      srv.stop = () => new Promise((done) => { child.once('exit', done); child.stdin.end() })
      resolve(srv)
    })
    child.once('exit', (code) => reject(new Error(`fly-local exited ${code}`)))
  })
}

if (require.main === module) {
  (async () => {
    const srv = process.env.BENCH_SAME_PROCESS ? await local.start({ quiet: true }) : await startApart()
    try {
      await runEdge({ srv, say: console.log })
    } finally {
      await srv.stop()
    }
  })().catch((err) => { console.error(err); process.exit(1) })
}
