'use strict'
// Tenancy: no sandbox reaches another. Sandbox B runs a TCP and a UDP echo
// server as the sandbox user; sandbox A probes every address B has (its
// private IPv6, its IPv4, its link-local), on TCP and UDP, with B in A's app
// and in another provider's app: every probe fails, while the provider (and
// the host, which stands in for it and for the edge) still reaches both.
// Sandboxes of one tenant (`tenant` config: an app with its own network)
// reach each other and no one else.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const dgram = require('dgram')
const net = require('net')
const { startLocal, provider, sandboxIds } = require('./helpers/fly')
const { serve, probe } = require('./helpers/net')

const PORT = 20000 + crypto.randomInt(10000)
let srv, pA, sbA, sbB, sbC

/* Every address the sandbox has but loopback (link-local ones scoped to
   the prober's eth0, its only link). */
async function addressesOf (sb) {
  const r = await sb.runCommand('ip', ['-j', 'addr', 'show'])
  assert.equal(r.exitCode, 0, r.stderr)
  const out = []
  for (const link of JSON.parse(r.stdout)) {
    if (link.ifname === 'lo') continue
    for (const a of link.addr_info) out.push(a.local.startsWith('fe80') ? `${a.local}%eth0` : a.local)
  }
  return out
}

function privateIp (sb) {
  const { machine } = sandboxIds(sb)
  return srv.machines().find((m) => m.id === machine).private_ip
}

/* The host reaches a sandbox's servers (what the provider and the edge do):
   proves the servers answer, so a failed probe means the network. */
async function hostReaches (ip) {
  const tcp = await new Promise((resolve, reject) => {
    const c = net.connect({ host: ip, port: PORT })
    c.setTimeout(5000, () => { c.destroy(); reject(new Error('tcp timeout')) })
    c.once('data', (d) => { c.destroy(); resolve(d.toString()) })
    c.once('error', reject)
  })
  const udp = await new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp6')
    const timer = setTimeout(() => { s.close(); reject(new Error('udp timeout')) }, 5000)
    s.once('message', (m) => { clearTimeout(timer); s.close(); resolve(m.toString()) })
    s.send('host', PORT, ip)
  })
  return [tcp, udp]
}

test.before(async () => {
  srv = await startLocal()
  pA = provider(srv)
  ;[sbA, sbB, sbC] = await Promise.all([pA.sandbox.create(), pA.sandbox.create(), provider(srv).sandbox.create()])
  await Promise.all([serve(sbB, PORT), serve(sbC, PORT)])
})

test.after(async () => {
  await Promise.allSettled([sbA, sbB, sbC].filter(Boolean).map((sb) => sb.destroy()))
  if (srv) await srv.stop()
})

test('a sandbox reaches no other sandbox, in its app or another, on any address, TCP or UDP', async () => {
  const bAddrs = await addressesOf(sbB)
  const cAddrs = await addressesOf(sbC)
  assert.ok(bAddrs.includes(privateIp(sbB)), `${bAddrs}`)
  assert.ok(bAddrs.some((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a)), `${bAddrs}`)
  /* the servers answer on every address from inside */
  const own = await probe(sbB, bAddrs.filter((a) => !a.includes('%')).map((a) => [a, PORT]))
  for (const [k, v] of Object.entries(own)) assert.equal(v, 'ok', k)
  /* and from the host */
  assert.deepEqual(await hostReaches(privateIp(sbB)), ['hi', 'echo:host'])
  assert.deepEqual(await hostReaches(privateIp(sbC)), ['hi', 'echo:host'])

  const targets = [...bAddrs, ...cAddrs].flatMap((a) => [[a, PORT], [a, 2222]])
  const res = await probe(sbA, targets)
  assert.equal(Object.keys(res).length, targets.length * 2)
  for (const [k, v] of Object.entries(res)) assert.notEqual(v, 'ok', `${k} reachable from another sandbox`)
  /* the provider still runs commands in both */
  for (const sb of [sbB, sbC]) assert.equal((await sb.runCommand('echo', ['alive'])).stdout.trim(), 'alive')
})
