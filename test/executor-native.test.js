'use strict'
// The executor protocol against a throwaway OpenSSH server on 127.0.0.1:
// the real docker/flyexec.c (built here with the host's cc), and hostile
// programs at the executor's path that send what no executor would.  Needs
// root and a C compiler with a static libc.

const test = require('node:test')
const assert = require('node:assert')
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const native = require('../build/Release/fly.node')
const { startSshd, childEnv } = require('./helpers/sshd')

let sshd
const opened = []
test.before(async () => {
  sshd = await startSshd()
  execFileSync('cc', ['-static', '-O2', '-o', path.join(sshd.dir, 'flyexec'),
    path.join(__dirname, '..', 'docker', 'flyexec.c')], { env: childEnv() })
})
test.after(async () => {
  for (const s of opened) await native.sshClose(s)
  await sshd.stop()
})

function session (executor) {
  const s = native.sshOpen(sshd.target({ executor }))
  opened.push(s)
  return s
}
const run = (s, o) => native.sshExec({ session: s, ...o })

// A fake executor: python3 with a frame reader and writer; body is the
// rest of the program (fd 0 is the channel's data in, fd 1 out).
function fake (name, body) {
  const file = path.join(sshd.dir, name)
  fs.writeFileSync(file, `#!/usr/bin/env python3
import os, struct, sys, time
def send(t, i, p=b''):
    os.write(1, struct.pack('>IBI', 5 + len(p), t, i) + p)
def hello():
    send(0x81, 0, b'flyexec\\n' + struct.pack('>II', 1, 1 << 20))
def frame():
    h = b''
    while len(h) < 9:
        d = os.read(0, 9 - len(h))
        if not d: sys.exit(0)
        h += d
    n, t, i = struct.unpack('>IBI', h)
    p = b''
    while len(p) < n - 5:
        p += os.read(0, n - 5 - len(p))
    return t, i, p
def start():
    while True:
        t, i, p = frame()
        if t == 1: return i
${body}
`, { mode: 0o755 })
  return file
}

test('the real executor: results, exit codes, signals, argv, cwd, env, stdin', async () => {
  const s = session(path.join(sshd.dir, 'flyexec'))
  let r = await run(s, { command: 'echo out; echo err >&2; exit 3' })
  assert.deepStrictEqual([r.stdout.toString(), r.stderr.toString(), r.exitCode, r.signal], ['out\n', 'err\n', 3, null])
  r = await run(s, { command: 'cat /proc/$PPID/comm' })
  assert.strictEqual(r.stdout.toString(), 'flyexec\n', 'the command ran under the executor')
  r = await run(s, { command: 'kill -9 $$' })
  assert.deepStrictEqual([r.exitCode, r.signal], [137, 'SIGKILL'])
  const args = ["it's", '"dq"', '$(id)', '', ' x ', 'a\nb', 'üñí']
  r = await run(s, { argv: ['printf', '%s\\0', ...args] })
  assert.deepStrictEqual(r.stdout.toString().split('\0').slice(0, -1), args)
  r = await run(s, { argv: ['sh', '-c', 'pwd; echo "$V"'], cwd: '/tmp', env: { V: 'it\'s $x' } })
  assert.strictEqual(r.stdout.toString(), "/tmp\nit's $x\n")
  r = await run(s, { command: 'pwd', cwd: '/no/such/dir' })
  assert.strictEqual(r.exitCode, 1)
  assert.match(r.stderr.toString(), /no\/such\/dir/)
  r = await run(s, { argv: ['no-such-program-here'] })
  assert.strictEqual(r.exitCode, 127)
  assert.match(r.stderr.toString(), /not found/)
  const big = Buffer.alloc(5 << 20, 'y')
  r = await run(s, { command: 'sha256sum', stdin: big })
  assert.strictEqual(r.stdout.toString().split(' ')[0], require('node:crypto').createHash('sha256').update(big).digest('hex'))
  r = await run(s, { command: 'sleep 30 & sleep 30', timeoutMs: 300 })
  assert.strictEqual(r.exitCode, 124)
  const err = await run(s, { command: 'head -c 100000 /dev/zero', maxOutputBytes: 1000 }).catch((e) => e)
  assert.strictEqual(err.code, 'ERR_OUTPUT_LIMIT')
  assert.strictEqual((await run(s, { command: 'echo still' })).stdout.toString(), 'still\n')
})

test('50 concurrent commands on one executor, each matched, one connection', async () => {
  const s = session(path.join(sshd.dir, 'flyexec'))
  await run(s, { command: 'true' })
  const before = native.sshStats().connects
  const rs = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    run(s, { command: `echo $PPID ${i}; echo e${i} >&2; exit ${i % 7}` })))
  const parents = new Set()
  rs.forEach((r, i) => {
    const [ppid, n] = r.stdout.toString().trim().split(' ')
    parents.add(ppid)
    assert.strictEqual(n, String(i))
    assert.strictEqual(r.stderr.toString(), `e${i}\n`)
    assert.strictEqual(r.exitCode, i % 7)
  })
  assert.strictEqual(parents.size, 1, 'one executor ran them all')
  assert.strictEqual(native.sshStats().connects, before)
})

test('no executor at the path: commands take a channel each, and work', async () => {
  const s = session('/nonexistent/flyexec')
  const r = await run(s, { command: 'echo fallback; exit 4' })
  assert.deepStrictEqual([r.stdout.toString(), r.exitCode], ['fallback\n', 4])
  const k = await run(s, { command: 'kill -9 $$' })
  assert.deepStrictEqual([k.exitCode, k.signal], [137, 'SIGKILL'])
})

test('output before the hello (not an executor): the channel path is used', async () => {
  const s = session(fake('chatty', "os.write(1, b'Welcome to my shell!\\n' * 10)\ntime.sleep(30)"))
  const r = await run(s, { command: 'echo ok' })
  assert.strictEqual(r.stdout.toString(), 'ok\n')
})

test('an executor that never says hello: after its deadline the commands take channels', async () => {
  const s = session(fake('silent', 'time.sleep(60)'))
  const t = Date.now()
  const rs = await Promise.all([run(s, { command: 'echo a' }), run(s, { command: 'echo b' })])
  assert.deepStrictEqual(rs.map((r) => r.stdout.toString()), ['a\n', 'b\n'])
  assert.ok(Date.now() - t >= 10000, 'they waited for the hello deadline')
})

test('a frame over the bound fails the command with SSH_EXECUTOR_PROTOCOL; the next command starts a new executor', async () => {
  const s = session(fake('oversized', "hello()\ni = start()\nos.write(1, struct.pack('>IBI', 0x7fffffff, 0x82, i))\ntime.sleep(30)"))
  const rss = process.memoryUsage().rss
  const err = await run(s, { command: 'true' }).catch((e) => e)
  assert.strictEqual(err.code, 'SSH_EXECUTOR_PROTOCOL')
  assert.match(err.message, /2147483647 bytes/)
  const again = await run(s, { command: 'true' }).catch((e) => e)
  assert.strictEqual(again.code, 'SSH_EXECUTOR_PROTOCOL', 'restarted, and refused again')
  assert.ok(process.memoryUsage().rss - rss < 64 << 20, 'nothing sized from the claimed length')
})

test('garbage frames: unknown kinds and malformed EXIT are refused, frames for other ids are dropped', async () => {
  const unknown = session(fake('unknown', 'hello()\ni = start()\nsend(0x99, i, b"x")\ntime.sleep(30)'))
  assert.strictEqual((await run(unknown, { command: 'true' }).catch((e) => e)).code, 'SSH_EXECUTOR_PROTOCOL')
  const badExit = session(fake('badexit', 'hello()\ni = start()\nsend(0x84, i, b"123")\ntime.sleep(30)'))
  assert.strictEqual((await run(badExit, { command: 'true' }).catch((e) => e)).code, 'SSH_EXECUTOR_PROTOCOL')
  // 200 MiB of output for ids that are not the command's, then its exit:
  // dropped as it arrives, never buffered.
  const flood = session(fake('flood', [
    'hello()', 'i = start()', 'chunk = struct.pack(">IBI", 5 + 65536, 0x82, i + 1000) + b"z" * 65536',
    'for _ in range(3200): os.write(1, chunk)',
    'send(0x82, i, b"mine\\n")', 'send(0x84, i, struct.pack(">II", 7, 0))', 'time.sleep(30)'].join('\n')))
  const rss = process.memoryUsage().rss
  const r = await run(flood, { command: 'true' })
  assert.deepStrictEqual([r.stdout.toString(), r.exitCode], ['mine\n', 7])
  // (Under ASan freed memory waits in its 256 MiB quarantine, so RSS says
  // nothing there about what is held; the plain build's run checks it.)
  if (!/asan/.test(process.env.LD_PRELOAD || '')) {
    assert.ok(process.memoryUsage().rss - rss < 64 << 20, `rss grew ${(process.memoryUsage().rss - rss) >> 20} MiB`)
  }
  // Its own output past maxOutputBytes: the client's limit holds.
  const loud = session(fake('loud', [
    'hello()', 'i = start()', 'chunk = struct.pack(">IBI", 5 + 65536, 0x82, i) + b"z" * 65536',
    'for _ in range(100): os.write(1, chunk)', 'time.sleep(30)'].join('\n')))
  assert.strictEqual((await run(loud, { command: 'true', maxOutputBytes: 1 << 20 }).catch((e) => e)).code, 'ERR_OUTPUT_LIMIT')
})

test('an executor that ends without the exit status fails the command (SSH_NO_EXIT_STATUS), never exit 0', async () => {
  const s = session(fake('quitter', 'hello()\ni = start()\nsend(0x82, i, b"partial\\n")\nsys.exit(0)'))
  const err = await run(s, { command: 'true' }).catch((e) => e)
  assert.strictEqual(err.code, 'SSH_NO_EXIT_STATUS')
})
