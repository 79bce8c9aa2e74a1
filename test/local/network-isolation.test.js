'use strict'
// fly-local's network boundary, as the attacker (the sandbox user) tries it:
// forged source addresses (IPV6_FREEBIND needs no capability) to get two-way
// UDP with the host, with an app on its own network and with another
// fly-local instance's machine; egress to cloud metadata services and the
// host's private ranges; more tracked flows than a machine may hold. A
// network namespace of this test's own stands in for the metadata services
// and the private networks; everything it adds to the host it removes.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const dgram = require('dgram')
const net = require('net')
const { execFileSync, spawn } = require('child_process')
const { startLocal, provider, sandboxIds, appName } = require('../helpers/fly')
const { serve, assertUnreached } = require('../helpers/net')

const FLOWS_MAX = 64
const PORT = 20000 + crypto.randomInt(10000)
const tag = crypto.randomBytes(2).toString('hex')
const x = 1 + (parseInt(tag.slice(0, 2), 16) % 250)
const y = 1 + (parseInt(tag.slice(2), 16) % 250)
const ns = `fl-ni-${tag}`
const veth = `flni${tag}`
/* the test link: the host's end holds HOST6 (the host listener's address) */
const HOST6 = `fd5e:${tag}::1`
const METADATA = ['100.100.100.200', `169.254.${x}.${y}`, 'fd00:ec2::254']
const PRIVATE = [`10.${x}.${y}.1`, `172.31.${x}.1`, `192.168.${x}.1`, `fd5e:${tag}:1::1`]
/* a LAN peer that routes through the host and forges sources */
const lanNs = `fl-nl-${tag}`
const lanVeth = `flnl${tag}`
const sh = (cmd) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' })

let srv, srv2, t1, t2, c, d, hostUdp, outside
const hostHeard = []

function ipOf (s, sb) {
  const { machine } = sandboxIds(sb)
  return s.machines().find((m) => m.id === machine).private_ip
}

/* "The internet" beside the host: a namespace holding the stand-ins, each
   routed to from the host, with a TCP listener on port 80 that says "hi". */
function makeOutside () {
  const adds = [...METADATA, ...PRIVATE]
  sh([`ip netns add ${ns}`,
    `ip link add ${veth} type veth peer name eth0 netns ${ns}`,
    `ip addr add 198.18.${x}.1/30 dev ${veth}`, `ip addr add ${HOST6}/64 dev ${veth} nodad`, `ip link set ${veth} up`,
    `ip -n ${ns} link set lo up`, `ip -n ${ns} link set eth0 up`,
    `ip -n ${ns} addr add 198.18.${x}.2/30 dev eth0`, `ip -n ${ns} addr add fd5e:${tag}::2/64 dev eth0 nodad`,
    `ip -n ${ns} route add default via 198.18.${x}.1`, `ip -n ${ns} -6 route add default via ${HOST6}`,
    ...adds.map((a) => `ip -n ${ns} addr add ${a}/${a.includes(':') ? 128 : 32} dev lo`),
    ...adds.map((a) => a.includes(':') ? `ip -6 route add ${a}/128 via fd5e:${tag}::2` : `ip route add ${a}/32 via 198.18.${x}.2`),
    `ip netns add ${lanNs}`, `ip link add ${lanVeth} type veth peer name eth0 netns ${lanNs}`,
    `ip addr add fd5e:${tag}:2::1/64 dev ${lanVeth} nodad`, `ip link set ${lanVeth} up`,
    `ip -n ${lanNs} link set lo up`, `ip -n ${lanNs} addr add fd5e:${tag}:2::2/64 dev eth0 nodad`, `ip -n ${lanNs} link set eth0 up`,
    `ip -n ${lanNs} -6 route add default via fd5e:${tag}:2::1`
  ].join(' && '))
  outside = spawn('ip', ['netns', 'exec', ns, 'python3', '-c',
    'import socket\ns = socket.create_server(("::", 80), family=socket.AF_INET6, dualstack_ipv6=True)\nprint("ready", flush=True)\n' +
    'while True:\n    c = s.accept()[0]\n    c.sendall(b"hi")\n    c.close()'],
  { stdio: ['ignore', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    outside.stdout.once('data', resolve)
    outside.once('exit', () => reject(new Error('the outside listener exited')))
  })
}

function removeOutside () {
  if (outside) outside.kill('SIGKILL')
  /* the routes go with the veth */
  sh(`ip netns del ${ns} 2>/dev/null; ip link del ${veth} 2>/dev/null; ip netns del ${lanNs} 2>/dev/null; ip link del ${lanVeth} 2>/dev/null; true`)
}

test.before(async () => {
  await makeOutside()
  srv = await startLocal(null, { flowsMax: FLOWS_MAX })
  srv2 = await startLocal(null, { allowPrivateEgress: true })
  /* the attackers: two machines of one app on its own network (they reach
     each other, so only the source check stands between them and a
     forged flow) */
  const pair = appName('pair')
  const other = appName('other')
  const call = (body) => fetch(`${srv.url}/v1/apps`, {
    method: 'POST', headers: { authorization: `Bearer ${srv.token}`, 'content-type': 'application/json' }, body: JSON.stringify(body)
  })
  assert.equal((await call({ app_name: pair, org_slug: 'personal', network: `net-${pair}` })).status, 201)
  assert.equal((await call({ app_name: other, org_slug: 'personal', network: `net-${other}` })).status, 201)
  const pp = provider(srv, { appName: pair })
  ;[t1, t2, c, d] = await Promise.all([pp.sandbox.create(), pp.sandbox.create(),
    provider(srv, { appName: other }).sandbox.create(), provider(srv2).sandbox.create()])
  await Promise.all([serve(t2, PORT), serve(c, PORT), serve(d, PORT)])
  hostUdp = dgram.createSocket({ type: 'udp6', ipv6Only: false })
  hostUdp.on('message', (m, rinfo) => {
    hostHeard.push(rinfo.address)
    hostUdp.send('pong', rinfo.port, rinfo.address)
  })
  await new Promise((resolve) => hostUdp.bind(0, '::', resolve))
})

test.after(async () => {
  if (hostUdp) hostUdp.close()
  await Promise.allSettled([t1, t2, c, d].filter(Boolean).map((sb) => sb.destroy()))
  await Promise.allSettled([srv, srv2].filter(Boolean).map((s) => s.stop()))
  removeOutside()
})

/* t1 sends from src:sport (not its address) to t2's dport, as a reply
   would come; then t2 sends from dport to src:sport and waits (3 s at
   most) for an answer: 'answer' or 'none'. */
const FORGE = `import socket, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND: any source, no capability
s.bind((src, sport))
for _ in range(3):
    s.sendto(b'forged', (dst, dport))
`
const ASK = `import json, socket, sys
peer, pport, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[4] if len(sys.argv) > 4 else '::', port))
s.settimeout(3)
for _ in range(3):
    s.sendto(b'ping', (peer, pport))
try:
    s.recvfrom(512)
    print(json.dumps('answer'))
except TimeoutError:
    print(json.dumps('none'))
`

async function forgedFlow (peer, pport, port) {
  const f = await t1.runCommand('python3', ['-c', FORGE, peer, String(pport), ipOf(srv, t2), String(port)])
  assert.equal(f.exitCode, 0, `forging itself (a socket option) works: ${f.stderr}`)
  const a = await t2.runCommand('python3', ['-c', ASK, peer, String(pport), String(port)])
  assert.equal(a.exitCode, 0, a.stderr)
  return JSON.parse(a.stdout)
}

test('forged sources get no two-way UDP: with the host, an app on its own network, another instance', async () => {
  /* the pair reaches each other: the attack is not stopped by isolation */
  const { stdout } = await t1.runCommand('python3', ['-c',
    `import socket; s = socket.create_connection(('${ipOf(srv, t2)}', ${PORT}), timeout=5); print(s.recv(2).decode())`])
  assert.equal(stdout.trim(), 'hi')
  const hostPort = hostUdp.address().port
  const results = await Promise.all([
    forgedFlow(HOST6, hostPort, PORT + 1),
    forgedFlow(ipOf(srv, c), PORT, PORT + 2),
    forgedFlow(ipOf(srv2, d), PORT, PORT + 3)
  ])
  assert.deepEqual(results, ['none', 'none', 'none'])
  assert.deepEqual(hostHeard, [])
})

test('a flow opened in a machine\'s name elsewhere (a LAN peer forging its source) gets nothing into it', async () => {
  /* the LAN peer opens M:PORT -> S:q as if M had; S then "replies" to M,
     whose echo server would answer */
  const m = ipOf(srv, c)
  const s = PRIVATE[3]
  const q = PORT + 4
  execFileSync('ip', ['netns', 'exec', lanNs, '/usr/bin/python3', '-c', FORGE, m, String(PORT), s, String(q)])
  const out = execFileSync('ip', ['netns', 'exec', ns, '/usr/bin/python3', '-c', ASK, m, String(PORT), String(q), s], { encoding: 'utf8' })
  assert.equal(JSON.parse(out), 'none')
  /* the echo server answers (the host reaches it): 'none' is the network */
  const r = await new Promise((resolve, reject) => {
    const u = dgram.createSocket('udp6')
    const timer = setTimeout(() => { u.close(); reject(new Error('no echo')) }, 5000)
    u.once('message', (msg) => { clearTimeout(timer); u.close(); resolve(msg.toString()) })
    u.send('host', PORT, m)
  })
  assert.equal(r, 'echo:host')
})

/* TCP to [[host, port]] from a sandbox: { host: 'ok' | error name }. */
async function connectFrom (sb, hosts) {
  const r = await sb.runCommand('python3', ['-c', `import json, socket, sys, threading
out = {}
def go(h):
    try:
        s = socket.create_connection((h, 80), timeout=2)
        out[h] = 'ok' if s.recv(2) == b'hi' else 'connected'
    except OSError as e:
        out[h] = type(e).__name__
ts = [threading.Thread(target=go, args=(h,)) for h in json.loads(sys.argv[1])]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))`, JSON.stringify(hosts)])
  assert.equal(r.exitCode, 0, r.stderr)
  return JSON.parse(r.stdout)
}

test('egress reaches no metadata service, and the host\'s private ranges only when allowed', async () => {
  /* the stand-ins answer the host */
  for (const a of [...METADATA, ...PRIVATE]) {
    const s = net.connect({ host: a, port: 80 })
    const got = await new Promise((resolve, reject) => { s.once('data', resolve); s.once('error', reject) })
    s.destroy()
    assert.equal(got.toString(), 'hi', a)
  }
  const closed = await connectFrom(t1, [...METADATA, ...PRIVATE])
  assertUnreached(closed, 'by default')
  /* allowPrivateEgress (FLY_LOCAL_ALLOW_PRIVATE_EGRESS=1) opens the private
     ranges, never the metadata services */
  const open = await connectFrom(d, [...METADATA, ...PRIVATE])
  for (const a of PRIVATE) assert.equal(open[a], 'ok', a)
  assertUnreached(Object.fromEntries(METADATA.map((a) => [a, open[a]])), 'with private egress allowed')
})

test('a machine holds at most flowsMax tracked flows; the excess is refused and SSH still works', async () => {
  const N = FLOWS_MAX + 40
  const r = await t1.runCommand('python3', ['-c', `import json, socket
held, out = [], {'ok': 0}
for _ in range(${N}):
    try:
        held.append(socket.create_connection(('${ipOf(srv, t2)}', ${PORT}), timeout=3))
        out['ok'] += 1
    except OSError as e:
        out[type(e).__name__] = out.get(type(e).__name__, 0) + 1
for s in held: s.close()
print(json.dumps(out))`])
  assert.equal(r.exitCode, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  assert.ok(out.ok <= FLOWS_MAX && out.ok >= FLOWS_MAX - 8, JSON.stringify(out))
  assert.equal(out.ConnectionRefusedError, N - out.ok, JSON.stringify(out))
  /* the provider's SSH is the host's flow, not the machine's */
  assert.equal((await t1.runCommand('echo', ['alive'])).stdout.trim(), 'alive')
  /* closed flows stop counting */
  const again = await t1.runCommand('python3', ['-c',
    `import socket; s = socket.create_connection(('${ipOf(srv, t2)}', ${PORT}), timeout=3); print(s.recv(2).decode())`])
  assert.equal(again.stdout.trim(), 'hi', again.stderr)
})

test('start() checks the network options', async () => {
  const { start } = require('../../lib/local')
  await assert.rejects(start({ quiet: true, flowsMax: 0 }), /flowsMax/)
  await assert.rejects(start({ quiet: true, flowsMax: 1.5 }), /flowsMax/)
  await assert.rejects(start({ quiet: true, allowPrivateEgress: 'yes' }), /allowPrivateEgress/)
})

// Two instances on one 100.64/10 block would route each other's machines:
// blocks are reserved while their instance lives, and a dead one's is
// taken over.
test('each instance has a 100.64.0.0/10 block of its own; a dead instance\'s reservation is taken over', () => {
  const { reserveBlock, releaseBlock } = require('../../lib/local/network')
  const start = crypto.randomInt(256)
  const a = reserveBlock(start)
  const b = reserveBlock(start)
  try {
    assert.notEqual(a, b, 'a live reservation is not given out again')
  } finally {
    releaseBlock(b)
  }
  // a's owner is "dead": its file names a pid that has exited.
  const dead = require('child_process').spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' })
  require('fs').writeFileSync(`/run/fly-local/forwarding/v4-${a}`, dead.stdout.trim())
  const c = reserveBlock(a)
  try {
    assert.equal(c, a, 'a dead instance\'s block is free again')
  } finally {
    releaseBlock(c)
  }
})
