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
//   - cmds/s with 50 in flight
//   - 20 MiB upload and download (SFTP)
// Run: node bench/edge.js (or as part of npm run bench). Prints Markdown.
const crypto = require('crypto')
const net = require('net')
const local = require('../lib/local')
const native = require('../lib/native')
const { fly } = require('..')
const { stats, f, now, timeEach, throughput } = require('./measure')

const N_CMD = Number(process.env.BENCH_CMD || 200)
const N_CREATE = Number(process.env.BENCH_CREATE || 5)

// The project's figures for one provider.
async function measure (p, label) {
  const creates = []
  for (let i = 0; i < N_CREATE; i++) {
    const t = now()
    const sb = await p.sandbox.create()
    await sb.runCommand('true')
    creates.push(now() - t)
    await sb.destroy()
  }
  const sb = await p.sandbox.create()
  for (let i = 0; i < 20; i++) await sb.runCommand('true')
  const seq = await timeEach(N_CMD, () => sb.runCommand('true'))
  const at50 = await throughput(N_CMD * 2, 50, () => sb.runCommand('true'))
  const data = crypto.randomBytes(20 << 20)
  await sb.filesystem.writeFile('/tmp/warm', 'x')
  let t = now()
  await sb.filesystem.writeFile('/tmp/up.bin', data)
  const up = 20 / ((now() - t) / 1000)
  t = now()
  const back = await sb.filesystem.readFile('/tmp/up.bin', { encoding: null })
  const down = 20 / ((now() - t) / 1000)
  if (!back.equals(data)) throw new Error(`${label}: 20 MiB round trip mismatch`)
  return { sb, create: stats(creates), seq, at50, up, down }
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
  const a = await measure(priv, 'private')
  const b = await measure(edge, 'edge')
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

module.exports = { runEdge }

if (require.main === module) {
  (async () => {
    const srv = await local.start({ quiet: true })
    try {
      await runEdge({ srv, say: console.log })
    } finally {
      await srv.stop()
    }
  })().catch((err) => { console.error(err); process.exit(1) })
}
