'use strict'
// The isolation boundary of fly-local machines: hostile code in a sandbox
// (run through the provider, as a user's code would be) tries to get out
// (host files, privileges, the host's network and the fly-local API, other
// app networks, other sandboxes' sockets, unbounded processes and memory,
// address squatting) and fails each time, while the seed usage still works.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const fs = require('fs')
const net = require('net')
const os = require('os')
const path = require('path')
const { startLocal, provider, appName } = require('../helpers/fly')
const { outsideServer } = require('../helpers/local')

const PIDS_MAX = 300
let srv, sbA, sbB, sbC, pA, hostSrv
const secret = crypto.randomBytes(12).toString('hex')
const tag = crypto.randomBytes(4).toString('hex')
const canaries = [path.join(os.tmpdir(), `fly-canary-${tag}`), path.join(__dirname, '..', '..', `.fly-canary-${tag}`)]
const connections = []

/* The fly-local machine of a sandbox (its id is app:machine). */
function machineOf (sb) {
  const id = sb.sandboxId.split(':').pop()
  return srv.machines().find((m) => m.id === id)
}

async function api (method, p, body) {
  const r = await fetch(srv.url + p, {
    method,
    headers: { authorization: `Bearer ${srv.token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined
  })
  const text = await r.text()
  return { status: r.status, body: text ? JSON.parse(text) : null }
}

/* Runs a Python program as the sandbox user; its stdout parsed as JSON. */
async function py (sb, program) {
  const r = await sb.runCommand('python3', ['-c', program])
  assert.equal(r.exitCode, 0, r.stderr)
  return JSON.parse(r.stdout)
}

/* Tries TCP connections from inside; { target: 'ok' | error name }. */
const CONNECT = `
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.close()
        out['%s %s' % (host, port)] = 'ok'
    except OSError as e:
        out['%s %s' % (host, port)] = type(e).__name__
print(json.dumps(out))
`

async function connectFrom (sb, targets) {
  const r = await sb.runCommand('python3', ['-c', CONNECT, JSON.stringify(targets)])
  assert.equal(r.exitCode, 0, r.stderr)
  return JSON.parse(r.stdout)
}

test.before(async () => {
  process.env.FLY_LOCAL_PIDS_MAX = String(PIDS_MAX)
  srv = await startLocal()
  delete process.env.FLY_LOCAL_PIDS_MAX
  for (const c of canaries) fs.writeFileSync(c, secret)
  /* one listener on every host address, loopback included */
  hostSrv = net.createServer((s) => { connections.push(s.remoteAddress); s.destroy() })
  await new Promise((resolve) => hostSrv.listen({ host: '::', port: 0, ipv6Only: false }, resolve))
  pA = provider(srv)
  const custom = appName('tenant')
  assert.equal((await api('POST', '/v1/apps', { app_name: custom, org_slug: 'personal', network: `net-${custom}` })).status, 201)
  ;[sbA, sbB, sbC] = await Promise.all([pA.sandbox.create(), provider(srv).sandbox.create(), provider(srv, { appName: custom }).sandbox.create()])
})

test.after(async () => {
  for (const sb of [sbA, sbB, sbC]) if (sb) await sb.destroy().catch(() => {})
  if (hostSrv) hostSrv.close()
  for (const c of canaries) fs.rmSync(c, { force: true })
  if (srv) await srv.stop()
})

test('the machine\'s processes run as unprivileged host uids', async () => {
  const r = await sbA.runCommand('setsid sleep 30 </dev/null >/dev/null 2>&1 & echo started')
  assert.equal(r.stdout, 'started\n')
  const m = machineOf(sbA)
  const ns = fs.readlinkSync(`/proc/${m.pid}/ns/pid`)
  const procs = []
  for (const n of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      if (fs.readlinkSync(`/proc/${n}/ns/pid`) !== ns) continue
      const status = fs.readFileSync(`/proc/${n}/status`, 'utf8')
      procs.push([/Name:\s*(\S+)/.exec(status)[1], Number(/Uid:\s*(\d+)/.exec(status)[1])])
    } catch (_) { /* exited meanwhile */ }
  }
  const shown = JSON.stringify(procs)
  for (const [name, uid] of procs) assert.ok(uid >= 0x10000, `${name} runs as host uid ${uid}: ${shown}`)
  /* root inside (tini) is not root outside, and the user's own process
     (sleep, or setsid before its exec) is another uid again */
  const root = procs.find(([name]) => name === 'tini')[1]
  assert.ok(procs.some(([name, uid]) => /^(sleep|setsid)$/.test(name) && uid !== root), shown)
})

test('host files and the checkout are out of reach', async () => {
  const checkout = path.join(__dirname, '..', '..')
  const r = await sbA.runCommand('sh', ['-c', 'cat "$1" "$2"; ls "$3"; cat /proc/1/root"$1"; find / -xdev -name "*canary*" 2>/dev/null; true',
    'sh', canaries[0], canaries[1], checkout])
  assert.doesNotMatch(r.stdout + r.stderr, new RegExp(secret))
  assert.doesNotMatch(r.stdout, /package\.json/)
  const root = await sbA.runCommand('cat /etc/os-release')
  assert.match(root.stdout, /Debian GNU\/Linux 12/)
})

test('no privileges: capabilities, setuid, namespaces, /proc/sys', async () => {
  const caps = await sbA.runCommand('grep -E "^Cap(Eff|Prm|Amb)" /proc/self/status')
  assert.match(caps.stdout, /CapEff:\s*0000000000000000/)
  assert.match(caps.stdout, /CapPrm:\s*0000000000000000/)
  /* root inside (the exec API runs as root) leaves a setuid-root python:
     no_new_privs and nosuid keep it the user's */
  const m = machineOf(sbA)
  const planted = await api('POST', `/v1/apps/${m.app}/machines/${m.id}/exec`, {
    command: ['sh', '-c', 'cp /usr/bin/python3.11 /home/sandbox/rootpy && chmod 4755 /home/sandbox/rootpy && ls -ln /home/sandbox/rootpy']
  })
  assert.equal(planted.status, 200)
  assert.match(planted.body.stdout, /^-rwsr-xr-x \d+ 0 0/)
  const suid = await sbA.runCommand('/home/sandbox/rootpy -c "import os; print(os.geteuid(), os.getuid())"')
  assert.equal(suid.stdout, '1000 1000\n', suid.stderr)
  const un = await sbA.runCommand('unshare -r id')
  assert.notEqual(un.exitCode, 0)
  const sys = await api('POST', `/v1/apps/${m.app}/machines/${m.id}/exec`, {
    command: ['sh', '-c', 'echo evil > /proc/sys/kernel/domainname; echo 1 > /proc/sysrq-trigger; mount -t tmpfs x /mnt; hostname evil; nft list tables']
  })
  assert.equal(sys.status, 200)
  assert.match(sys.body.stderr, /domainname: Read-only file system/)
  assert.match(sys.body.stderr, /mount.*(permission denied|must be superuser)/i)
  assert.match(sys.body.stderr, /hostname: .*(Operation not permitted|you must be root)/i)
  assert.notEqual(fs.readFileSync('/proc/sys/kernel/domainname', 'utf8').trim(), 'evil')
  /* root's CAP_NET_ADMIN (the egress policy's rules, docker/egress) is over
     the machine's own network namespace: the host's tables are not there */
  assert.doesNotMatch(sys.body.stdout, /fly_local_/)
  /* and nothing the entrypoint starts holds it, nor can regain it: sshd
     (root), the user's session */
  const bnd = await api('POST', `/v1/apps/${m.app}/machines/${m.id}/exec`, {
    command: ['sh', '-c', 'grep CapBnd /proc/$(pgrep -xo sshd)/status /proc/1/status']
  })
  const mine = await sbA.runCommand('grep CapBnd /proc/self/status')
  const netAdmin = (line) => (BigInt(`0x${line.trim().split(/\s+/).pop()}`) >> 12n) & 1n
  const [sshd] = bnd.body.stdout.trim().split('\n')
  assert.equal(netAdmin(sshd), 0n, bnd.body.stdout)
  assert.equal(netAdmin(mine.stdout), 0n, mine.stdout)
  /* an exec API command other than the egress applier (a user's
     `user: 'root'`, say) holds none either */
  const root = await api('POST', `/v1/apps/${m.app}/machines/${m.id}/exec`, { command: ['grep', 'CapBnd', '/proc/self/status'] })
  assert.equal(netAdmin(root.body.stdout), 0n, root.body.stdout)
})

test('the host\'s loopback, addresses, listeners and the fly-local API are out of reach', async () => {
  const port = hostSrv.address().port
  const apiPort = Number(new URL(srv.url).port)
  const addrs = new Set(['127.0.0.1', '::1'])
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list) if (!a.internal && !a.address.startsWith('fe80')) addrs.add(a.address)
  }
  /* the machine's gateway is the host's side of its veth */
  const gw = await sbA.runCommand("ip -4 route show default | awk '{print $3}'")
  addrs.add(gw.stdout.trim()).add('fe80::1%eth0')
  const targets = [...addrs].flatMap((a) => [[a, port], [a, apiPort]])
  const res = await connectFrom(sbA, targets)
  assert.equal(Object.keys(res).length, targets.length)
  for (const [t, v] of Object.entries(res)) assert.notEqual(v, 'ok', `${t} reachable`)
  assert.deepEqual(connections, [])
  /* the host reaches the machine (SSH), so the listener test can fail */
  const c = net.connect({ host: machineOf(sbA).private_ip, port: 2222 })
  await new Promise((resolve, reject) => { c.once('data', resolve); c.once('error', reject) })
  c.destroy()
})

test('no machine of the org network reaches another (test/tenancy.test.js has every address and UDP); an app with its own network is cut off', async () => {
  const [a, b, c] = [sbA, sbB, sbC].map((sb) => machineOf(sb).private_ip)
  assert.match(a, /^fdaa:/)
  const fromA = await connectFrom(sbA, [[b, 2222], [c, 2222]])
  assert.deepEqual(fromA, { [`${b} 2222`]: 'TimeoutError', [`${c} 2222`]: 'TimeoutError' })
  const fromC = await connectFrom(sbC, [[a, 2222], [b, 2222]])
  for (const v of Object.values(fromC)) assert.notEqual(v, 'ok')
})

test('another sandbox\'s abstract unix socket is out of reach', async () => {
  const name = `fly-iso-${tag}`
  /* the server says it listens through a fifo the starter reads */
  const serve = `import socket
s = socket.socket(socket.AF_UNIX); s.bind('\\0${name}'); s.listen(); s.settimeout(60)
open('/tmp/${name}', 'w').close()
try:
    while True: s.accept()[0].close()
except OSError: pass`
  const started = await sbA.runCommand('sh', ['-c', 'mkfifo "/tmp/$2" && { setsid python3 -c "$1" </dev/null >/dev/null 2>&1 & } && cat "/tmp/$2"', 'sh', serve, name])
  assert.equal(started.exitCode, 0, started.stderr)
  const probe = `import socket, json
s = socket.socket(socket.AF_UNIX)
try:
    s.connect('\\0${name}'); print(json.dumps('ok'))
except OSError as e: print(json.dumps(type(e).__name__))`
  assert.equal(await py(sbA, probe), 'ok')
  assert.equal(await py(sbB, probe), 'ConnectionRefusedError')
})

test('the emulator never writes as host root through a path the machine controls', async (t) => {
  // The machine's root plants a symlink where fly-local's test hook writes
  // a new host key; followed from the host it would land in the host's /tmp.
  const sb = await pA.sandbox.create()
  t.after(() => sb.destroy())
  const target = path.join(os.tmpdir(), `fly-hostkey-canary-${tag}`)
  const [app, machine] = sb.sandboxId.split(':')
  const plant = await api('POST', `/v1/apps/${app}/machines/${machine}/exec`,
    { command: ['sh', '-c', `ln -sf ${target} /etc/ssh/computesdk/ssh_host_ed25519_key && echo planted`] })
  assert.equal(plant.body.stdout, 'planted\n')
  await srv.swapHostKey(machine)
  assert.equal(fs.existsSync(target), false, 'nothing written on the host')
  const inside = await api('POST', `/v1/apps/${app}/machines/${machine}/exec`,
    { command: ['sh', '-c', 'test -f /etc/ssh/computesdk/ssh_host_ed25519_key && ! test -L /etc/ssh/computesdk/ssh_host_ed25519_key && echo replaced'] })
  assert.equal(inside.body.stdout, 'replaced\n')
})

test('a fork bomb stops at the process limit and the machine survives', async () => {
  const bomb = `import os, json, time, signal
kids, err = [], None
try:
    while len(kids) < ${PIDS_MAX * 3}:
        pid = os.fork()
        if pid == 0:
            time.sleep(30); os._exit(0)
        kids.append(pid)
except OSError as e:
    err = e.errno
for k in kids: os.kill(k, signal.SIGKILL)
for k in kids: os.waitpid(k, 0)
print(json.dumps([len(kids), err]))`
  const [n, errno] = await py(sbA, bomb)
  assert.ok(n < PIDS_MAX, `${n} processes`)
  assert.equal(errno, os.constants.errno.EAGAIN)
  assert.equal((await sbA.runCommand('echo alive')).stdout, 'alive\n')
})

test('memory stops at the machine\'s limit', async () => {
  const m = machineOf(sbA)
  const mb = (await api('GET', `/v1/apps/${m.app}/machines/${m.id}`)).body.config.guest.memory_mb
  const hog = `import sys
chunks = []
for i in range(${mb * 3} // 16):
    chunks.append(bytearray(16 << 20))
    print(len(chunks) * 16, flush=True)`
  const r = await sbA.runCommand('python3', ['-c', hog])
  assert.notEqual(r.exitCode, 0)
  const reached = Number(r.stdout.trim().split('\n').pop() || 0)
  assert.ok(reached <= mb, `${reached} MiB held under a ${mb} MiB limit`)
})

test('addresses cannot be squatted: a hostile machine does not make later creates fail', async () => {
  /* listen on every port it can and try to take addresses */
  const hostile = await sbA.runCommand('sh', ['-c', 'for p in 2222 2223 2224; do python3 -c "import socket,time; s=socket.socket(socket.AF_INET6); s.bind((\'::\', $p)); s.listen(); time.sleep(30)" 2>/dev/null & done; ip addr add fdaa::2/128 dev eth0; true'])
  assert.match(hostile.stderr, /Operation not permitted/)
  const sb = await pA.sandbox.create()
  try {
    assert.equal((await sb.runCommand('echo fresh')).stdout, 'fresh\n')
  } finally {
    await sb.destroy()
  }
})

test('the seed usage still works inside: Python, pip, Node, npm -g, files', async () => {
  const v = await sbB.runCommand('python3 --version; node --version; npm --version')
  assert.equal(v.exitCode, 0, v.stderr)
  assert.match(v.stdout, /^Python 3\.\d+\.\d+\nv20\.\d+\.\d+\n\d+\.\d+\.\d+\n$/)
  const pkg = await sbB.runCommand(`set -e
mkdir -p ~/pkg/isodemo && cd ~/pkg
printf 'def hello():\\n    return "hi from pip"\\n' > isodemo/__init__.py
printf '[build-system]\\nrequires = ["setuptools"]\\nbuild-backend = "setuptools.build_meta"\\n[project]\\nname = "isodemo"\\nversion = "1.0"\\n' > pyproject.toml
python3 -m pip install --user --no-build-isolation --no-index -q . 2>&1 | tail -3
cd / && python3 -c "import isodemo; print(isodemo.hello())"`)
  assert.equal(pkg.exitCode, 0, pkg.stdout + pkg.stderr)
  assert.match(pkg.stdout, /hi from pip\n$/)
  const npm = await sbB.runCommand(`set -e
mkdir -p ~/npkg && cd ~/npkg
printf '{"name":"isodemo-cli","version":"1.0.0","bin":{"isodemo":"cli.js"}}' > package.json
printf '#!/usr/bin/env node\\nconsole.log("hi from npm")\\n' > cli.js
npm pack --silent >/dev/null && npm install -g --silent ./isodemo-cli-1.0.0.tgz
cd / && isodemo`)
  assert.equal(npm.exitCode, 0, npm.stdout + npm.stderr)
  assert.match(npm.stdout, /hi from npm\n$/)
  await sbB.runCommand('echo kept > ~/workspace/note')
  assert.equal((await sbB.runCommand('cat ~/workspace/note')).stdout, 'kept\n')
})

test('an image that is not built is a clear boot error (strict images)', async (t) => {
  process.env.FLY_LOCAL_STRICT_IMAGES = '1'
  t.after(() => { delete process.env.FLY_LOCAL_STRICT_IMAGES })
  const app = machineOf(sbA).app
  const m = (await api('POST', `/v1/apps/${app}/machines`, { config: { image: 'registry.example/not-built:1' } })).body
  assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=failed&timeout=30`)).status, 200)
  const events = (await api('GET', `/v1/apps/${app}/machines/${m.id}`)).body.events
  assert.ok(events.some((e) => /image "registry\.example\/not-built:1" is not built/.test(e.request && e.request.error)), JSON.stringify(events))
  const ok = (await api('POST', `/v1/apps/${app}/machines`, { config: { image: 'computesdk-fly-sandbox:latest' } })).body
  assert.equal((await api('GET', `/v1/apps/${app}/machines/${ok.id}/wait?state=started&timeout=30`)).status, 200)
  for (const id of [m.id, ok.id]) await api('DELETE', `/v1/apps/${app}/machines/${id}?force=true`)
})

test('egress goes out through NAT, and not for a machine with egress: false', async (t) => {
  /* "the internet" */
  const outside = await outsideServer(t)
  const m = machineOf(sbA)
  const closed = (await api('POST', `/v1/apps/${m.app}/machines`, { config: { image: 'computesdk-fly-sandbox', egress: false } })).body
  t.after(() => api('DELETE', `/v1/apps/${m.app}/machines/${closed.id}?force=true`))
  assert.equal((await api('GET', `/v1/apps/${m.app}/machines/${closed.id}/wait?state=started&timeout=30`)).status, 200)
  const target = [[outside, 8080]]
  assert.deepEqual(Object.values(await connectFrom(sbA, target)), ['ok'])
  const r = await api('POST', `/v1/apps/${m.app}/machines/${closed.id}/exec`, { command: ['python3', '-c', CONNECT, JSON.stringify(target)] })
  assert.equal(r.status, 200)
  assert.notEqual(Object.values(JSON.parse(r.body.stdout))[0], 'ok')
})
