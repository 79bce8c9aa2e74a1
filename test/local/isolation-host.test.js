'use strict'
// The host's shared resources against hostile code in a sandbox (issue 17,
// beside isolation.test.js): each attack as the unprivileged sandbox user
// would run it, bounded in count and time. The host's disk and inodes (the
// root is a size-bounded disk of the boot's own, here 256 MiB and 16,384
// inodes), the console log, host root's inotify budget, socket buffers
// against the memory limit, address families a sandbox has no use for,
// the host's /sys and host paths in mountinfo.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { execFileSync } = require('child_process')
const { startLocal, provider } = require('../helpers/fly')

const ROOT_MB = 256
const ROOT_INODES = 16384
let srv, sb

/* The sandbox's machine as fly-local lists it. */
function machineOf (s) {
  const id = s.sandboxId.split(':').pop()
  return srv.machines().find((m) => m.id === id)
}

/* The machine's current boot directory on the host (this instance's state
   directory is fly-local-<our pid>-<hex> in the tmpdir). */
function bootDir (m) {
  const tmp = os.tmpdir()
  const state = fs.readdirSync(tmp).find((n) => n.startsWith(`fly-local-${process.pid}-`))
  const dir = path.join(tmp, state, m.id)
  const seqs = fs.readdirSync(dir).filter((n) => /^\d+$/.test(n)).map(Number).sort((a, b) => b - a)
  return path.join(dir, String(seqs[0]))
}

/* Runs a Python program as the sandbox user; its stdout parsed as JSON. */
async function py (program, ...args) {
  const r = await sb.runCommand('python3', ['-c', program, ...args])
  assert.equal(r.exitCode, 0, r.stderr)
  return JSON.parse(r.stdout)
}

async function api (method, p) {
  const r = await fetch(srv.url + p, { method, headers: { authorization: `Bearer ${srv.token}` } })
  return r.json()
}

test.before(async () => {
  srv = await startLocal(null, { rootDiskMb: ROOT_MB, rootInodes: ROOT_INODES })
  sb = await provider(srv).sandbox.create()
})

test.after(async () => {
  if (sb) await sb.destroy().catch(() => {})
  if (srv) await srv.stop()
})

test('the root is a disk of its own: df shows its size, writing past it is ENOSPC, the host holds no more than it', async () => {
  const df = await sb.runCommand('df -B1M --output=size,itotal / /tmp | tail -n +2')
  const rows = df.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number))
  assert.equal(rows.length, 2, df.stdout)
  for (const [mb, inodes] of rows) {
    assert.ok(mb <= ROOT_MB && mb > ROOT_MB * 0.8, df.stdout)
    assert.equal(inodes, ROOT_INODES, df.stdout)
  }
  /* 1.5 times the disk, 8 MiB at a time, into /tmp (on the root, as on Fly) */
  const fill = await py(`import json, os
chunk = b'x' * (8 << 20)
n, err = 0, None
try:
    with open('/tmp/fill', 'wb') as f:
        for _ in range(${Math.ceil(ROOT_MB * 1.5 / 8)}):
            f.write(chunk); f.flush(); os.fsync(f.fileno()); n += 8
except OSError as e:
    err = e.errno
print(json.dumps([n, err]))`)
  assert.equal(fill[1], os.constants.errno.ENOSPC, JSON.stringify(fill))
  assert.ok(fill[0] < ROOT_MB, JSON.stringify(fill))
  /* what the host's disk holds for it: the image's allocated blocks */
  const dir = bootDir(machineOf(sb))
  const st = fs.statSync(path.join(dir, 'root.img'))
  assert.ok(st.blocks * 512 <= ROOT_MB * 1024 * 1024, `${st.blocks * 512} bytes on the host`)
  assert.ok(st.blocks * 512 >= fill[0] * 1024 * 1024 * 0.9, 'the writes went to the image')
  assert.equal((await sb.runCommand('rm /tmp/fill && echo ok')).stdout, 'ok\n')
})

test('creating files stops at the root\'s inode count; the host\'s inodes hold none of them', async () => {
  const made = await py(`import json, os, time
os.makedirs('/tmp/many', exist_ok=True)
n, err, end = 0, None, time.time() + 60
try:
    while n < ${ROOT_INODES * 2} and time.time() < end:
        open('/tmp/many/%d' % n, 'w').close(); n += 1
except OSError as e:
    err = e.errno
print(json.dumps([n, err]))`)
  assert.equal(made[1], os.constants.errno.ENOSPC, JSON.stringify(made))
  assert.ok(made[0] > ROOT_INODES * 0.9 && made[0] < ROOT_INODES, JSON.stringify(made))
  /* on the host, the boot's directory is a handful of entries: the files
     are inside the image */
  const entries = execFileSync('find', [bootDir(machineOf(sb)), '-xdev'], { encoding: 'utf8' }).trim().split('\n')
  assert.ok(entries.length < 100, `${entries.length} host inodes`)
  assert.equal((await sb.runCommand('rm -rf /tmp/many && echo ok')).stdout, 'ok\n')
})

test('failed SSH connections from inside do not grow the host\'s console log', async () => {
  const log = path.join(path.dirname(bootDir(machineOf(sb))), 'console.log')
  const before = fs.statSync(log).size
  const r = await py(`import json, socket
done = 0
for i in range(150):
    s = socket.create_connection(('127.0.0.1', 2222), timeout=5)
    if i % 2:
        s.recv(64); s.sendall(b'garbage\\r\\n')
    s.close(); done += 1
print(json.dumps(done))`)
  assert.equal(r, 150)
  /* sshd has seen them all once a fresh connection gets its banner */
  assert.match((await py(`import json, socket
s = socket.create_connection(('127.0.0.1', 2222), timeout=5)
print(json.dumps(s.recv(64).decode()))`)), /^SSH-2\.0-/)
  const grown = fs.statSync(log).size - before
  assert.ok(grown < 1024, `console.log grew by ${grown} bytes`)
})

test('the sandbox\'s inotify instances are not host root\'s: root can still make one while it holds all it can', async () => {
  const hold = `import ctypes, json, time
libc = ctypes.CDLL(None, use_errno=True)
fds, err = [], 0
for i in range(1000):
    fd = libc.inotify_init1(0)
    if fd < 0:
        err = ctypes.get_errno(); break
    fds.append(fd)
print(json.dumps([len(fds), err]), flush=True)
time.sleep(60)`
  /* held in the background (at most a minute) until the test kills it */
  const res = sb.runCommand('sh', ['-c', 'setsid python3 -c "$1" </dev/null >/tmp/held 2>&1 & echo $! > /tmp/held.pid; ' +
    'for i in $(seq 100); do [ -s /tmp/held ] && break; sleep 0.1; done; cat /tmp/held', 'sh', hold])
  const [held, err] = JSON.parse((await res).stdout)
  try {
    assert.ok(held >= 100, `the sandbox held only ${held} (errno ${err})`)
    const probe = execFileSync('python3', ['-c', 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); fd = libc.inotify_init1(0); print(fd >= 0, ctypes.get_errno())'], { encoding: 'utf8' })
    assert.equal(probe.trim().split(' ')[0], 'True', `host root's inotify_init1 failed: ${probe}`)
  } finally {
    await sb.runCommand('kill $(cat /tmp/held.pid); rm -f /tmp/held /tmp/held.pid')
  }
})

test('socket buffers count against the machine\'s memory: it cannot hold much more than its limit in them', async () => {
  const m = machineOf(sb)
  const mb = (await api('GET', `/v1/apps/${m.app}/machines/${m.id}`)).config.guest.memory_mb
  /* loopback connections, each filled until the kernel stops taking more:
     up to three times the limit, 400 connections, 20 s */
  const [heldMiB, conns] = await py(`import json, socket, time
goal = ${mb * 3} << 20
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(512)
port = srv.getsockname()[1]
held, conns, chunk, end = 0, [], b'x' * (1 << 20), time.time() + 20
while held < goal and time.time() < end and len(conns) < 400:
    try:
        c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
        c.connect(('127.0.0.1', port)); a, _ = srv.accept()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    except OSError:
        break
    conns.append((c, a)); c.setblocking(False)
    while held < goal and time.time() < end:
        try:
            held += c.send(chunk)
        except OSError:
            break
print(json.dumps([held >> 20, len(conns)]))`)
  assert.ok(conns > 1)
  assert.ok(heldMiB <= mb, `${heldMiB} MiB of socket buffers in ${conns} connections under a ${mb} MiB limit`)
})

test('address families a sandbox has no use for are refused; unix, IPv4, IPv6 and netlink work', async () => {
  const got = await py(`import json, socket
out = {}
for name, fam, typ in [('vsock', 40, 1), ('key', 15, 3), ('alg', 38, 5), ('packet', 17, 3), ('bluetooth', 31, 1),
                       ('tipc', 30, 2), ('rds', 21, 5), ('appletalk', 5, 2), ('socketpair-vsock', 40, 1),
                       ('unix', 1, 1), ('inet', 2, 1), ('inet6', 10, 1), ('netlink', 16, 3)]:
    try:
        if name.startswith('socketpair'):
            socket.socketpair(fam, typ)
        else:
            socket.socket(fam, typ, 0).close()
        out[name] = 'ok'
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))`)
  const { EAFNOSUPPORT } = os.constants.errno
  assert.deepEqual(got, {
    vsock: EAFNOSUPPORT,
    key: EAFNOSUPPORT,
    alg: EAFNOSUPPORT,
    packet: EAFNOSUPPORT,
    bluetooth: EAFNOSUPPORT,
    tipc: EAFNOSUPPORT,
    rds: EAFNOSUPPORT,
    appletalk: EAFNOSUPPORT,
    'socketpair-vsock': EAFNOSUPPORT,
    unix: 'ok',
    inet: 'ok',
    inet6: 'ok',
    netlink: 'ok'
  })
})

test('/sys is the machine\'s own: no host interface, no other machine\'s veth, no vmcoreinfo', async () => {
  const other = await provider(srv).sandbox.create()
  try {
    const hostIfs = fs.readdirSync('/sys/class/net')
    /* the other machine's veth is on the host, with counters */
    assert.ok(hostIfs.length > 2, hostIfs.join(' '))
    const r = await sb.runCommand('ls /sys/class/net /sys/devices/virtual/net; find /sys -maxdepth 6 -name "address" -path "*/net/*" 2>/dev/null | wc -l; ' +
      'cat /sys/kernel/vmcoreinfo | wc -c')
    assert.equal(r.exitCode, 0, r.stderr)
    const inside = r.stdout.split('\n').filter((l) => l && !l.endsWith(':'))
    const names = new Set(inside.slice(0, -2))
    assert.deepEqual([...names].sort(), ['eth0', 'lo'], r.stdout)
    for (const n of hostIfs) if (n !== 'lo' && n !== 'eth0') assert.ok(!r.stdout.includes(n), `host interface ${n} seen inside`)
    /* two interfaces' addresses (eth0, lo), and an empty vmcoreinfo */
    assert.deepEqual(inside.slice(-2), ['2', '0'], r.stdout)
  } finally {
    await other.destroy()
  }
})

test('mountinfo names no host path: not the state directory, not fly-local\'s pid, not the image store', async () => {
  const r = await sb.runCommand('cat /proc/self/mountinfo')
  assert.equal(r.exitCode, 0, r.stderr)
  assert.match(r.stdout, / \/ rw,[^ ]* - overlay overlay /)
  for (const bad of [os.tmpdir() + '/', `fly-local-${process.pid}`, '/var/lib/fly-local']) {
    assert.ok(!r.stdout.includes(bad), `mountinfo shows ${bad}:\n${r.stdout}`)
  }
})
