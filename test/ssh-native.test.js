'use strict'
// The native SSH verbs (sshOpen, sshExec, sshClose, sshStats) against a
// throwaway OpenSSH server on 127.0.0.1.  Needs root.

const test = require('node:test')
const assert = require('node:assert')
const { execFileSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const native = require('../build/Release/fly.node')
const { startSshd, freePort, childEnv } = require('./helpers/sshd')

let sshd
let session

test.before(async () => {
  sshd = await startSshd()
  session = native.sshOpen(sshd.target())
})

test.after(async () => {
  await native.sshClose(session)
  await sshd.stop()
})

const exec = (opts) => native.sshExec({ session, ...opts })

test('echo, stdout and stderr apart, exit codes', async () => {
  let r = await exec({ command: 'echo hello; echo oops >&2' })
  assert.strictEqual(r.exitCode, 0)
  assert.strictEqual(r.signal, null)
  assert.strictEqual(r.timedOut, false)
  assert.strictEqual(r.stdout.toString(), 'hello\n')
  assert.strictEqual(r.stderr.toString(), 'oops\n')

  r = await exec({ command: 'exit 3' })
  assert.strictEqual(r.exitCode, 3)

  r = await exec({ command: 'no-such-command-here' })
  assert.strictEqual(r.exitCode, 127)
  assert.match(r.stderr.toString(), /not found/)

  r = await exec({ command: 'kill -9 $$' })
  assert.strictEqual(r.exitCode, 128 + 9)
  assert.strictEqual(r.signal, 'SIGKILL')
})

test('argv with nasty strings arrives exact', async () => {
  const args = ["it's", '"dq"', '$(touch /tmp/pwned)', '`id`', '*', '?',
    'a\nb', 'üñí €', '', ' lead', 'tail ', '-n', '\\', '$HOME', ';', '|', '&&']
  const r = await exec({ argv: ['printf', '%s\\0', ...args] })
  assert.strictEqual(r.exitCode, 0)
  assert.deepStrictEqual(r.stdout.toString().split('\0').slice(0, -1), args)
})

test('cwd and env', async () => {
  const r = await exec({
    argv: ['sh', '-c', 'pwd; printf "%s|%s" "$FOO" "$BAR"'],
    cwd: '/tmp',
    env: { FOO: "x y 'z'", BAR: '$(nope)' }
  })
  assert.strictEqual(r.stdout.toString(), "/tmp\nx y 'z'|$(nope)")
  assert.throws(() => native.sshExec({ session, command: 'true', env: { 'A-B': '1' } }),
    (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sshExec({ session, command: 'x', argv: ['y'] }),
    (e) => e.code === 'ERR_INVALID_ARG')
})

test('stdin of 1 MiB', async () => {
  const data = crypto.randomBytes(1 << 20)
  const r = await exec({ command: 'sha256sum', stdin: data })
  const want = crypto.createHash('sha256').update(data).digest('hex')
  assert.strictEqual(r.stdout.toString().split(' ')[0], want)
  // A command that ignores its stdin still finishes.
  const r2 = await exec({ command: 'echo done', stdin: data })
  assert.strictEqual(r2.stdout.toString(), 'done\n')
})

test('50 concurrent execs on one session, matched to their commands', async () => {
  const before = native.sshStats().connects
  const tokens = Array.from({ length: 50 }, (_, i) => `tok-${i}-${crypto.randomBytes(4).toString('hex')}`)
  const rs = await Promise.all(tokens.map((t) => exec({ argv: ['echo', t] })))
  rs.forEach((r, i) => {
    assert.strictEqual(r.exitCode, 0)
    assert.strictEqual(r.stdout.toString(), tokens[i] + '\n')
  })
  assert.strictEqual(native.sshStats().connects, before)
})

test('more channels than MaxSessions queue instead of failing', async () => {
  const small = await startSshd({ maxSessions: 4 })
  const h = native.sshOpen(small.target())
  try {
    const rs = await Promise.all(Array.from({ length: 12 }, (_, i) =>
      native.sshExec({ session: h, command: `sleep 0.2; echo ${i}` })))
    rs.forEach((r, i) => assert.strictEqual(r.stdout.toString(), `${i}\n`))
  } finally {
    await native.sshClose(h)
    await small.stop()
  }
})

test('streaming chunks add up and arrive before completion', async () => {
  const chunks = { 1: [], 2: [] }
  let settled = false
  let beforeEnd = 0
  const p = exec({
    command: 'for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done; head -c 300000 /dev/zero',
    onChunk: (stream, chunk) => {
      if (!settled) beforeEnd++
      chunks[stream].push(Buffer.from(chunk))
    }
  })
  const r = await p
  settled = true
  assert.strictEqual(r.exitCode, 0)
  const out = Buffer.concat(chunks[1])
  assert.strictEqual(out.subarray(0, 15).toString(), 'out1\nout2\nout3\n')
  assert.strictEqual(out.length, 15 + 300000)
  assert.strictEqual(Buffer.concat(chunks[2]).toString(), 'err1\nerr2\nerr3\n')
  assert.ok(beforeEnd >= 4, 'chunks came before the promise settled')
})

test('streamed output: 24 MiB in order, in chunks of at most 64 KiB, both streams whole', async () => {
  const chunks = { 1: [], 2: [] }
  let biggest = 0
  const r = await exec({
    // stdout and stderr interleaved, then a large stdout that arrives in
    // many packets per loop turn (coalesced into bounded messages).
    command: 'for i in $(seq 1 50); do echo out$i; echo err$i >&2; done; ' +
      'head -c 25165824 /dev/urandom | base64 -w 0; echo; seq 1 1000 >&2',
    maxOutputBytes: 64 << 20,
    onChunk: (stream, chunk) => {
      biggest = Math.max(biggest, chunk.length)
      chunks[stream].push(Buffer.from(chunk))
    }
  })
  assert.strictEqual(r.exitCode, 0)
  assert.ok(biggest <= 65536, `a chunk of ${biggest} bytes`)
  const out = Buffer.concat(chunks[1]).toString()
  const lines = out.split('\n')
  assert.deepStrictEqual(lines.slice(0, 50), Array.from({ length: 50 }, (_, i) => `out${i + 1}`))
  assert.strictEqual(lines[50].length, 33554432, 'the base64 line whole')
  assert.match(lines[50], /^[A-Za-z0-9+/]+$/)
  const err = Buffer.concat(chunks[2]).toString()
  assert.strictEqual(err, Array.from({ length: 50 }, (_, i) => `err${i + 1}\n`).join('') +
    Array.from({ length: 1000 }, (_, i) => `${i + 1}\n`).join(''))
})

test('text: ASCII output comes as strings, taken whole; small non-ASCII as Buffers', async () => {
  // Large ASCII (an external string), small ASCII (copied), on both streams.
  let r = await exec({ command: 'head -c 3000000 /dev/zero | tr "\\0" x; echo -n tail; echo small >&2', text: true, maxOutputBytes: 8 << 20 })
  assert.strictEqual(typeof r.stdout, 'string')
  assert.strictEqual(r.stdout.length, 3000004)
  assert.strictEqual(r.stdout, 'x'.repeat(3000000) + 'tail')
  assert.strictEqual(r.stderr, 'small\n')
  // Non-ASCII: from 64 KiB decoded natively into a string (é, and U+FFFD
  // for the stray byte); smaller, a Buffer with the exact bytes.
  r = await exec({ command: 'head -c 100000 /dev/zero | tr "\\0" a; printf "\\303\\251\\377"; printf "\\377" >&2', text: true })
  assert.strictEqual(r.stdout, 'a'.repeat(100000) + 'é\ufffd')
  assert.ok(Buffer.isBuffer(r.stderr) && r.stderr.equals(Buffer.from([0xff])))
  // Empty output is an empty string; without text, Buffers as before.
  r = await exec({ command: 'true', text: true })
  assert.strictEqual(r.stdout, '')
  assert.strictEqual(r.stderr, '')
  r = await exec({ command: 'echo hi' })
  assert.ok(Buffer.isBuffer(r.stdout) && r.stdout.toString() === 'hi\n')
  assert.throws(() => native.sshExec({ session, command: 'true', text: 'yes' }), { code: 'ERR_INVALID_ARG' })
})

test('text: non-ASCII output decodes exactly as Buffer#toString does, ill-formed bytes included', async () => {
  // Random bytes biased to the ranges that matter (continuations, lead
  // bytes, overlongs, surrogates, beyond U+10FFFF) and real characters,
  // 64 KiB and up so that the native side decodes them.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-text-'))
  try {
    const pieces = [0x80, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff, 0x41, 0x0a]
    for (let seed = 0; seed < 4; seed++) {
      const n = (64 << 10) + seed * 40000
      const r = crypto.randomBytes(n)
      for (let i = 0; i < n; i++) if (r[i] & 1) r[i] = pieces[r[i] % pieces.length]
      const chars = Buffer.from('é€😀 text\n'.repeat(1000))
      const data = Buffer.concat([chars, r, chars, Buffer.from([0xe2, 0x82])])
      const f = path.join(dir, `t${seed}`)
      fs.writeFileSync(f, data)
      const out = await exec({ argv: ['cat', f], text: true })
      assert.strictEqual(typeof out.stdout, 'string')
      assert.ok(out.stdout === data.toString('utf8'), `seed ${seed}: the decoding differs`)
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('text with onChunk: chunks are strings, characters cut between writes arrive whole, as Buffer#toString decodes the whole', async () => {
  const pieces = ['\\303', '\\251\\342\\202', '\\254 \\377\\360\\237', '\\230\\200 \\355\\240\\200 end\\342\\202']
  const bytes = Buffer.from([0xc3, 0xa9, 0xe2, 0x82, 0xac, 0x20, 0xff, 0xf0, 0x9f, 0x98, 0x80, 0x20,
    0xed, 0xa0, 0x80, 0x20, 0x65, 0x6e, 0x64, 0xe2, 0x82])
  const got = { 1: [], 2: [] }
  const r = await exec({
    command: pieces.map((p) => `printf '${p}'; printf '${p}' >&2; sleep 0.2`).join('; '),
    text: true,
    onChunk: (stream, chunk) => got[stream].push(chunk)
  })
  assert.strictEqual(r.exitCode, 0)
  for (const s of [1, 2]) {
    assert.ok(got[s].length >= 2, `stream ${s} came in ${got[s].length} chunk(s)`)
    assert.ok(got[s].every((c) => typeof c === 'string'))
    assert.strictEqual(got[s].join(''), bytes.toString('utf8'), `stream ${s}`)
  }
  // The result holds the whole output too (small non-ASCII: bytes), equal
  // to what the chunks added up to.
  assert.ok(Buffer.isBuffer(r.stdout) && r.stdout.equals(bytes))
  assert.ok(Buffer.isBuffer(r.stderr) && r.stderr.equals(bytes))
  // The é cut after its first byte came whole in one chunk.
  assert.ok(got[1].some((c) => c.includes('é')))
})

test('timeout kills the remote command', async () => {
  const marker = `sleep 30${Math.floor(Math.random() * 1000)}`
  const t0 = Date.now()
  const r = await exec({ argv: ['sh', '-c', `exec sleep ${marker.slice(5)}`], timeoutMs: 500 })
  const took = Date.now() - t0
  assert.strictEqual(r.exitCode, 124)
  // by the timeout and the 3 s grace (slack for a loaded host), not the 30 s sleep
  assert.ok(took < 500 + 3000 + 10000, `took ${took} ms`)
  let left = ''
  try { left = execFileSync('pgrep', ['-f', marker], { encoding: 'utf8', env: childEnv() }) } catch {}
  assert.strictEqual(left, '')
})

test('background command survives and returns at once', async () => {
  const file = `/tmp/fly-bg-${process.pid}-${Date.now()}`
  // It waits for a go the test gives only once exec has returned: a call
  // that waited for it would never return.
  const r = await exec({ command: `timeout 120 sh -c 'while [ ! -e ${file}.go ]; do sleep 0.05; done' && echo alive > ${file}`, background: true })
  assert.strictEqual(r.exitCode, 0)
  await exec({ command: `touch ${file}.go` })
  // Wait for the file through the remote side itself.
  const r2 = await exec({ command: `while [ ! -s ${file} ]; do sleep 0.05; done; cat ${file}; rm -f ${file} ${file}.go`, timeoutMs: 30000 })
  assert.strictEqual(r2.stdout.toString(), 'alive\n')
})

test('output limit', async () => {
  await assert.rejects(exec({ command: 'head -c 2000000 /dev/zero', maxOutputBytes: 100000 }),
    (e) => e.code === 'ERR_OUTPUT_LIMIT')
  // The session is still fine afterwards.
  const r = await exec({ command: 'echo ok' })
  assert.strictEqual(r.stdout.toString(), 'ok\n')
})

test('host key mismatch is refused', async () => {
  const h = native.sshOpen(sshd.target({ hostKeyFingerprint: 'SHA256:' + Buffer.alloc(32).toString('base64').replace(/=+$/, '') }))
  await assert.rejects(native.sshExec({ session: h, command: 'true' }),
    (e) => e.code === 'SSH_HOSTKEY_MISMATCH' && !e.message.includes('PRIVATE'))
  await native.sshClose(h)
})

test('insecureSkipHostKeyCheck skips the pin', async () => {
  const h = native.sshOpen(sshd.target({ hostKeyFingerprint: undefined, insecureSkipHostKeyCheck: true }))
  const r = await native.sshExec({ session: h, command: 'echo x' })
  assert.strictEqual(r.stdout.toString(), 'x\n')
  await native.sshClose(h)
})

test('a key the server does not know -> SSH_AUTH_FAILED', async () => {
  const other = await startSshd()
  const h = native.sshOpen(sshd.target({ privateKey: other.clientKey }))
  try {
    await assert.rejects(native.sshExec({ session: h, command: 'true' }),
      (e) => e.code === 'SSH_AUTH_FAILED' && !e.message.includes('BEGIN'))
  } finally {
    await native.sshClose(h)
    await other.stop()
  }
})

test('a refused password -> SSH_AUTH_FAILED without the password in the error', async () => {
  const h = native.sshOpen(sshd.target({ privateKey: undefined, password: 'hunter2-secret' }))
  await assert.rejects(native.sshExec({ session: h, command: 'true' }),
    (e) => e.code === 'SSH_AUTH_FAILED' && !e.message.includes('hunter2'))
  await native.sshClose(h)
})

test('connect refused -> SSH_CONNECT_FAILED after the timeout', async () => {
  const port = await freePort()
  const h = native.sshOpen(sshd.target({ port, connectTimeoutMs: 600 }))
  const t0 = Date.now()
  await assert.rejects(native.sshExec({ session: h, command: 'true' }),
    (e) => e.code === 'SSH_CONNECT_FAILED')
  const took = Date.now() - t0
  assert.ok(took >= 500 && took < 600 + 10000, `took ${took} ms`)
  await native.sshClose(h)
})

test('connect retries until the server starts listening', async () => {
  const port = await freePort()
  const h = native.sshOpen(sshd.target({ port, connectTimeoutMs: 5000 }))
  const p = native.sshExec({ session: h, command: 'echo late' })
  // A plain TCP proxy to the real sshd, started after the first refusals.
  let proxy
  const started = new Promise((resolve) => {
    proxy = net.createServer((c) => {
      const u = net.connect(sshd.port, '127.0.0.1')
      c.pipe(u).pipe(c)
      c.on('error', () => u.destroy())
      u.on('error', () => c.destroy())
    })
    setTimeout(() => proxy.listen(port, '127.0.0.1', resolve), 300)
  })
  await started
  const r = await p
  assert.strictEqual(r.stdout.toString(), 'late\n')
  await native.sshClose(h)
  await new Promise((resolve) => proxy.close(resolve))
})

test('a dropped connection fails its ops and the next call reconnects', async () => {
  const h = native.sshOpen(sshd.target())
  const r0 = await native.sshExec({ session: h, command: 'echo one' })
  assert.strictEqual(r0.stdout.toString(), 'one\n')
  const connects = native.sshStats().connects
  const running = native.sshExec({
    session: h,
    command: 'echo started; sleep 30',
    onChunk: () => sshd.killConnections()
  })
  await assert.rejects(running, (e) => e.code === 'SSH_DISCONNECTED')
  const r1 = await native.sshExec({ session: h, command: 'echo two' })
  assert.strictEqual(r1.stdout.toString(), 'two\n')
  assert.strictEqual(native.sshStats().connects, connects + 1)

  // Dropped while idle: the next call reconnects without an error.
  sshd.killConnections()
  const r2 = await native.sshExec({ session: h, command: 'echo three' })
  assert.strictEqual(r2.stdout.toString(), 'three\n')
  await native.sshClose(h)
})

// ---- session handles (sshOpen) ----

test('a handle runs commands and file calls on one connection, and closes', async () => {
  const h = native.sshOpen(sshd.target())
  const before = native.sshStats().connects
  const r = await native.sshExec({ session: h, command: 'echo via-handle' })
  assert.strictEqual(r.stdout.toString(), 'via-handle\n')
  const st = await native.sftp({ session: h, op: 'stat', path: '/' })
  assert.strictEqual(st.type, 'directory')
  assert.strictEqual(native.sshStats().connects, before + 1)

  const running = native.sshExec({ session: h, command: 'sleep 30' })
  const closed = native.sshClose(h)
  await assert.rejects(running, (e) => e.code === 'SSH_DISCONNECTED')
  await closed
  await native.sshClose(h) // idempotent
  assert.throws(() => native.sshExec({ session: h, command: 'true' }),
    (e) => e.code === 'SSH_SESSION_CLOSED')
  assert.throws(() => native.sftp({ session: h, op: 'stat', path: '/' }),
    (e) => e.code === 'SSH_SESSION_CLOSED')
})

test('sshOpen validates the target before anything is sent', () => {
  const before = native.sshStats()
  assert.throws(() => native.sshOpen({ ...sshd.target(), port: 0 }),
    (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sshOpen({ ...sshd.target(), privateKey: undefined }),
    (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sshOpen({ ...sshd.target(), host: '' }),
    (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sshExec({ session: {}, command: 'true' }),
    (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sshExec({ command: 'true' }),
    (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sshClose('nope'), (e) => e.code === 'ERR_INVALID_ARG')
  assert.throws(() => native.sshClose(), (e) => e.code === 'ERR_INVALID_ARG')
  assert.deepStrictEqual(native.sshStats(), before)
})

test('a target per call (the old keyed form) is refused with a pointer to sshOpen', () => {
  const before = native.sshStats()
  const target = { key: 'old-form', ...sshd.target() }
  const useOpen = (e) => e.code === 'ERR_INVALID_ARG' && /sshOpen/.test(e.message) &&
    !e.message.includes('BEGIN')
  assert.throws(() => native.sshExec({ target, command: 'true' }), useOpen)
  // Even beside a valid session: the target is not silently ignored.
  assert.throws(() => native.sshExec({ target, session, command: 'true' }), useOpen)
  assert.throws(() => native.sftp({ target, op: 'stat', path: '/' }), useOpen)
  assert.throws(() => native.sshClose({ key: 'old-form' }),
    (e) => e.code === 'ERR_INVALID_ARG' && /sshOpen/.test(e.message))
  assert.deepStrictEqual(native.sshStats(), before)
})

test('closing a handle that never ran anything resolves and makes no session', async () => {
  const before = native.sshStats()
  const h = native.sshOpen(sshd.target())
  await native.sshClose(h)
  assert.deepStrictEqual(native.sshStats(), before)
  assert.throws(() => native.sshExec({ session: h, command: 'true' }),
    (e) => e.code === 'SSH_SESSION_CLOSED')
})

test('two handles never share a session: a wrong password fails even beside a live one', async () => {
  const sessions = native.sshStats().sessions
  const good = native.sshOpen(sshd.target())
  const bad = native.sshOpen(sshd.target({ privateKey: undefined, password: 'wrong-secret-pw' }))
  try {
    const r = await native.sshExec({ session: good, command: 'echo good' })
    assert.strictEqual(r.stdout.toString(), 'good\n')
    await assert.rejects(native.sshExec({ session: bad, command: 'echo bad' }),
      (e) => e.code === 'SSH_AUTH_FAILED' && !e.message.includes('wrong-secret-pw'))
    // The live one is untouched by its neighbour's failure.
    assert.strictEqual((await native.sshExec({ session: good, command: 'echo still' })).stdout.toString(), 'still\n')
    // The same target opened twice is two connections.
    const twin = native.sshOpen(sshd.target())
    const before = native.sshStats().connects
    await native.sshExec({ session: twin, command: 'true' })
    await native.sshExec({ session: good, command: 'true' })
    assert.strictEqual(native.sshStats().connects, before + 1)
    assert.strictEqual(native.sshStats().sessions, sessions + 3)
    await native.sshClose(twin)
    assert.strictEqual(native.sshStats().sessions, sessions + 2)
  } finally {
    await native.sshClose(good)
    await native.sshClose(bad)
  }
})

test('a handle that is garbage-collected releases its session', async () => {
  const v8 = require('node:v8')
  const vm = require('node:vm')
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc')
  const base = native.sshStats().sessions
  await (async () => {
    const h = native.sshOpen(sshd.target())
    await native.sshExec({ session: h, command: 'true' })
  })()
  assert.strictEqual(native.sshStats().sessions, base + 1)
  // The finalizer queues the close; wait for the I/O thread to run it.
  for (let i = 0; i < 2000 && native.sshStats().sessions > base; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
  assert.strictEqual(native.sshStats().sessions, base)
})

test('command lines of any length run, with env, cwd, timeout, background and stdin kept', async () => {
  const h = native.sshOpen(sshd.target())
  try {
    for (const size of [40000, 200000, 3 << 20]) {
      const word = 'x'.repeat(size)
      const r = await native.sshExec({
        session: h,
        command: `printf '%s' "$FOO" | wc -c; pwd; v=${word}; echo \${#v}; wc -c`,
        env: { FOO: 'bar' },
        cwd: '/tmp',
        timeoutMs: 20000,
        stdin: 'four'
      })
      assert.strictEqual(r.exitCode, 0, r.stderr.toString())
      assert.strictEqual(r.stdout.toString(), `3\n/tmp\n${size}\n4\n`)
    }
    const argv = ['printf', '%s|', ...Array.from({ length: 5000 }, (_, i) => `arg-${i}-'"$`)]
    const r = await native.sshExec({ session: h, argv })
    assert.strictEqual(r.stdout.toString(), argv.slice(2).join('|') + '|')

    const file = `/tmp/fly-long-bg-${process.pid}`
    await native.sshExec({ session: h, command: `: ${'y'.repeat(100000)}; echo bg > ${file}`, background: true })
    const r2 = await native.sshExec({ session: h, command: `while [ ! -s ${file} ]; do sleep 0.05; done; cat ${file}; rm -f ${file}`, timeoutMs: 5000 })
    assert.strictEqual(r2.stdout.toString(), 'bg\n')
    const r3 = await native.sshExec({ session: h, command: `exit ${'0'.repeat(50000)}7` })
    assert.strictEqual(r3.exitCode, 7)
    // No script file is left behind.
    const left = fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith('tmp.')).filter((f) => {
      try { return fs.readFileSync(path.join(os.tmpdir(), f), 'utf8').startsWith('rm -f "$FLY_SCRIPT"') } catch { return false }
    })
    assert.deepStrictEqual(left, [])
  } finally {
    await native.sshClose(h)
  }
})

// ---- ciphers (issue 22) ----

const AEAD = ['aes128-gcm@openssh.com', 'aes256-gcm@openssh.com', 'chacha20-poly1305@openssh.com']
const libssh2At = (v) => v.split('.').map(Number).reduce((a, n) => a * 256 + n, 0)

async function handshakeCipher (target) {
  const h = native.sshOpen(target)
  try {
    await native.sshExec({ session: h, command: 'true' })
    return native.sshStats().cipher
  } finally {
    await native.sshClose(h)
  }
}

test('sshStats says which libssh2 and the cipher the last handshake negotiated', async () => {
  const cipher = await handshakeCipher(sshd.target())
  const st = native.sshStats()
  assert.match(st.libssh2, /^\d+\.\d+\.\d+/)
  assert.match(st.libssh2Runtime, /^\d+\.\d+\.\d+/)
  assert.strictEqual(typeof cipher, 'string')
  assert.match(cipher, /^(aes|chacha)/)
})

test('built against libssh2 >= 1.11, the session negotiates an AEAD cipher', async (t) => {
  const built = native.sshStats().libssh2
  if (libssh2At(built) < libssh2At('1.11.0')) {
    t.skip(`the addon is built against libssh2 ${built}, which has no AEAD ciphers (1.11 brought AES-GCM)`)
    return
  }
  assert.ok(AEAD.includes(await handshakeCipher(sshd.target())), native.sshStats().cipher)
})

test('a server without AEAD ciphers still connects, on one it offers', async () => {
  const only = await startSshd({ ciphers: 'aes128-ctr' })
  try {
    assert.strictEqual(await handshakeCipher(only.target()), 'aes128-ctr')
  } finally {
    await only.stop()
  }
})
