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

const PORT = 20000 + crypto.randomInt(10000)
let srv, pA, sbA, sbB, sbC

/* TCP (answers "hi") and UDP (echoes) on [::] (and 0.0.0.0), as the
   sandbox user; says it is ready through a fifo the starter reads. */
const SERVE = `import socket, sys, threading
port, fifo = int(sys.argv[1]), sys.argv[2]
def sock(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('::', port))
    return s
t, u = sock(socket.SOCK_STREAM), sock(socket.SOCK_DGRAM)
t.listen(64)
def tcp():
    while True:
        c = t.accept()[0]
        c.sendall(b'hi')
        c.close()
threading.Thread(target=tcp, daemon=True).start()
open(fifo, 'w').close()
while True:
    d, a = u.recvfrom(512)
    u.sendto(b'echo:' + d, a)
`

/* Probes [[host, port]] on TCP and UDP at once, each bounded by 2 s:
   { 'tcp host port': 'ok' | error name, 'udp host port': ... }. */
const PROBE = `import json, socket, sys, threading
out = {}
def tcp(h, p):
    k = 'tcp %s %s' % (h, p)
    try:
        s = socket.create_connection((h, p), timeout=2)
        out[k] = 'ok' if s.recv(2) == b'hi' else 'silent'
        s.close()
    except OSError as e:
        out[k] = type(e).__name__
def udp(h, p):
    k = 'udp %s %s' % (h, p)
    try:
        fam, _, _, _, addr = socket.getaddrinfo(h, p, type=socket.SOCK_DGRAM)[0]
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(2)
        for _ in range(3):
            s.sendto(b'probe', addr)
        out[k] = 'ok' if s.recvfrom(512)[0].startswith(b'echo:') else 'silent'
    except OSError as e:
        out[k] = type(e).__name__
ts = [threading.Thread(target=f, args=(h, p)) for h, p in json.loads(sys.argv[1]) for f in (tcp, udp)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
`

async function serve (sb) {
  const fifo = `/tmp/serve-${crypto.randomBytes(4).toString('hex')}`
  const r = await sb.runCommand('sh', ['-c', 'mkfifo "$3" && { setsid python3 -c "$1" "$2" "$3" </dev/null >/dev/null 2>&1 & } && timeout 20 cat "$3"',
    'sh', SERVE, String(PORT), fifo])
  assert.equal(r.exitCode, 0, r.stderr)
}

async function probe (sb, targets) {
  const r = await sb.runCommand('python3', ['-c', PROBE, JSON.stringify(targets)])
  assert.equal(r.exitCode, 0, r.stderr)
  return JSON.parse(r.stdout)
}

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
  await Promise.all([serve(sbB), serve(sbC)])
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
