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
const path = require('path')
const { execFileSync, spawn } = require('child_process')
const { startLocal, provider, sandboxIds } = require('./helpers/fly')
const { serve, probe, assertUnreached, SERVE, PROBE } = require('./helpers/net')

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
  assertUnreached(res, 'from another sandbox')
  /* the provider still runs commands in both */
  for (const sb of [sbB, sbC]) assert.equal((await sb.runCommand('echo', ['alive'])).stdout.trim(), 'alive')
})

test('a tenant\'s sandboxes reach each other and no one else; its app goes with its last sandbox', async () => {
  const tenant = `acme${crypto.randomBytes(2).toString('hex')}`
  const pT = provider(srv, { tenant })
  const [t1, t2] = await Promise.all([pT.sandbox.create(), pT.sandbox.create()])
  const app = sandboxIds(t1).app
  assert.match(app, new RegExp(`-t-${tenant}$`))
  await serve(t2, PORT)
  const fromT1 = await probe(t1, [[privateIp(t2), PORT], [privateIp(sbB), PORT]])
  assert.equal(fromT1[`tcp ${privateIp(t2)} ${PORT}`], 'ok')
  assert.equal(fromT1[`udp ${privateIp(t2)} ${PORT}`], 'ok')
  assertUnreached({ tcp: fromT1[`tcp ${privateIp(sbB)} ${PORT}`], udp: fromT1[`udp ${privateIp(sbB)} ${PORT}`] }, 'from a tenant')
  assertUnreached(await probe(sbA, [[privateIp(t2), PORT], [privateIp(t2), 2222]]), 'into a tenant')
  /* list and getById see the tenant's sandboxes */
  assert.deepEqual((await pT.sandbox.list()).map((x) => x.sandboxId).sort(), [t1.sandboxId, t2.sandboxId].sort())
  assert.equal((await pT.sandbox.getById(t2.sandboxId)).sandboxId, t2.sandboxId)
  const appStatus = async () => (await fetch(`${srv.url}/v1/apps/${app}`, { headers: { authorization: `Bearer ${srv.token}` } })).status
  await t1.destroy()
  assert.equal(await appStatus(), 200)
  await t2.destroy()
  assert.equal(await appStatus(), 404)
  /* and comes back with the next one */
  const t3 = await pT.sandbox.create()
  assert.equal(await appStatus(), 200)
  await t3.destroy()
  assert.equal(await appStatus(), 404)
})

test('a tenant\'s volumes, forks and snapshots stay in its app, and go with it', async () => {
  const pT = provider(srv, { tenant: `fork${crypto.randomBytes(2).toString('hex')}` })
  const src = await pT.sandbox.create({ volume: { sizeGb: 1 } })
  const app = sandboxIds(src).app
  await src.filesystem.writeFile('/home/sandbox/state.txt', 'base\n')
  await src.runCommand('sync')
  const snap = await pT.snapshot.create(src.sandboxId)
  assert.equal(snap.id.split(':')[0], app)
  const fork = await src.fork()
  assert.equal(sandboxIds(fork).app, app)
  assert.equal(await fork.filesystem.readFile('/home/sandbox/state.txt'), 'base\n')
  await serve(fork, PORT)
  assert.equal((await probe(src, [[privateIp(fork), PORT]]))[`tcp ${privateIp(fork)} ${PORT}`], 'ok')
  await fork.destroy()
  await src.destroy()
  const r = await fetch(`${srv.url}/v1/apps/${app}`, { headers: { authorization: `Bearer ${srv.token}` } })
  assert.equal(r.status, 404)
})

test('a tenant\'s warm pool fills and serves its app; the drain takes the app with the last machine', async () => {
  const pT = provider(srv, { tenant: `pool${crypto.randomBytes(2).toString('hex')}`, pool: { size: 1 } })
  await pT.pool.fill()
  const sb = await pT.sandbox.create()
  assert.notEqual(pT.pool.stats().lastClaim, null, 'claimed from the pool')
  const app = sandboxIds(sb).app
  assert.match(app, /-t-pool/)
  assert.match((await sb.runCommand('printenv', ['COMPUTESDK_TENANT'])).stdout, /^pool[0-9a-f]{4}\n$/)
  await pT.pool.settled()
  await sb.destroy()
  const status = async () => (await fetch(`${srv.url}/v1/apps/${app}`, { headers: { authorization: `Bearer ${srv.token}` } })).status
  assert.equal(await status(), 200, 'the pool\'s machine keeps the app')
  await pT.pool.drain()
  assert.equal(await status(), 404)
})

/* On Fly the same policy is the image's in-guest firewall, loaded by the
   entrypoint as root (docker/guest-firewall.nft). Here it is loaded into a
   network namespace standing in for a machine (G) on a 6PN link to a peer
   (P, which also holds Fly's resolver address fdaa::3). */
test('the image\'s guest firewall: no 6PN peer either way but DNS, sshd and root\'s ports; the user cannot undo it', async (t) => {
  const tag = crypto.randomBytes(2).toString('hex')
  const [g, p] = [`fl-gw-g-${tag}`, `fl-gw-p-${tag}`]
  const [gIp, pIp] = [`fdaa:0:${tag}::2`, `fdaa:0:${tag}::1`]
  const sh = (cmd) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' })
  const procs = []
  t.after(() => {
    for (const c of procs) c.kill('SIGKILL')
    sh(`ip netns del ${g} 2>/dev/null; ip netns del ${p} 2>/dev/null; true`)
  })
  sh([`ip netns add ${g}`, `ip netns add ${p}`,
    `ip -n ${g} link add eth0 type veth peer name eth0 netns ${p}`,
    `ip -n ${g} link set lo up`, `ip -n ${p} link set lo up`,
    `ip -n ${g} addr add ${gIp}/64 dev eth0 nodad`, `ip -n ${p} addr add ${pIp}/64 dev eth0 nodad`,
    `ip -n ${p} addr add fdaa::3/128 dev lo`,
    `ip -n ${g} link set eth0 up`, `ip -n ${p} link set eth0 up`,
    `ip -n ${g} -6 route add fdaa::3/128 via ${pIp}`].join(' && '))
  const serveIn = (ns, port, host = '::') => {
    const fifo = `/tmp/fl-gw-${tag}-${ns}-${port}`
    execFileSync('mkfifo', [fifo])
    procs.push(spawn('ip', ['netns', 'exec', ns, '/usr/bin/python3', '-c', SERVE, String(port), fifo, host], { stdio: 'ignore' }))
    execFileSync('timeout', ['10', 'cat', fifo])
    require('fs').rmSync(fifo)
  }
  for (const port of [2222, 80, 8080]) serveIn(g, port)
  serveIn(p, 8080)
  /* a resolver answers from its own address */
  serveIn(p, 53, 'fdaa::3')
  /* the guest's code runs as an unprivileged user (nobody here) */
  const probeFrom = (ns, targets, asUser) => JSON.parse(execFileSync('ip', ['netns', 'exec', ns,
    ...(asUser ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : []),
    '/usr/bin/python3', '-c', PROBE, JSON.stringify(targets)], { encoding: 'utf8' }))
  const out = [[pIp, 8080], ['fdaa::3', 53]]
  const inbound = [[gIp, 2222], [gIp, 80], [gIp, 8080]]
  const all = (o) => Object.values(o).every((v) => v === 'ok')
  assert.ok(all(probeFrom(g, out, true)), 'open before the firewall')
  assert.ok(all(probeFrom(p, inbound)), 'open before the firewall')

  sh(`ip netns exec ${g} nft -f ${path.join(__dirname, '..', 'docker', 'guest-firewall.nft')}`)
  /* loading it again (a restart of the entrypoint) replaces it */
  sh(`ip netns exec ${g} nft -f ${path.join(__dirname, '..', 'docker', 'guest-firewall.nft')}`)
  const res0 = probeFrom(g, out, true)
  assert.equal(res0['tcp fdaa::3 53'], 'ok')
  assert.equal(res0['udp fdaa::3 53'], 'ok')
  /* rejected at once (EACCES), not left to time out */
  assert.equal(res0[`tcp ${pIp} 8080`], 'PermissionError')
  assert.equal(res0[`udp ${pIp} 8080`], 'PermissionError')
  const res = probeFrom(p, inbound)
  assert.equal(res[`tcp ${gIp} 2222`], 'ok')
  assert.equal(res[`tcp ${gIp} 80`], 'ok')
  for (const k of [`tcp ${gIp} 8080`, `udp ${gIp} 8080`, `udp ${gIp} 2222`, `udp ${gIp} 80`]) assertUnreached({ [k]: res[k] })
  /* the user has no CAP_NET_ADMIN: the table stays */
  assert.throws(() => execFileSync('ip', ['netns', 'exec', g, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
    'nft', 'delete', 'table', 'inet', 'computesdk_guard'], { stdio: 'pipe' }), /Operation not permitted/)
  assert.match(sh(`ip netns exec ${g} nft list tables`), /computesdk_guard/)
})
