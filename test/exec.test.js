'use strict'
// runCommand, streamCommand and runCode over SSH (src/ssh.c, src/exec.c),
// against fly-local machines with a real sshd.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const { startLocal, provider, rejects, native, call, q, closeSessions } = require('./helpers/fly')

let srv, p, sb
test.before(async () => {
  srv = await startLocal()
  p = provider(srv)
  sb = await p.sandbox.create()
})
test.after(async () => {
  if (sb) await sb.destroy()
  if (srv) await srv.stop()
})

const NASTY = ['', ' ', 'two words', "it's", '"dq"', '$(id)', '`id`', '*', '?', '[a-z]', '~', '-n', '--', '-e',
  'a\nb', 'tab\there', 'back\\slash', '$HOME', '${PATH}', ';', '|', '&&', '>out', '<in', '#c', '!',
  'ünïcödé ✓ 😀', '\u00a0nbsp', '\\', "'", '"', '%s%d', 'x'.repeat(5000)]

test('exit codes, stdout and stderr', async () => {
  const r = await sb.runCommand('echo out; echo err >&2; exit 3')
  assert.equal(r.stdout, 'out\n')
  assert.equal(r.stderr, 'err\n')
  assert.equal(r.exitCode, 3)
  assert.equal(typeof r.durationMs, 'number')
  const missing = await sb.runCommand('nonexistent-command-12345')
  assert.equal(missing.exitCode, 127)
  assert.match(missing.stderr, /not found/)
  const killed = await sb.runCommand('kill -9 $$')
  assert.equal(killed.exitCode, 137)
  const ok = await sb.runCommand('true')
  assert.deepEqual([ok.exitCode, ok.stdout, ok.stderr], [0, '', ''])
})

test('HOME, user and PATH are sane', async () => {
  const r = await sb.runCommand('echo "$HOME"; id -un; command -v python3 node npm; test -w /tmp && echo tmp-ok')
  const lines = r.stdout.trim().split('\n')
  assert.equal(lines[0], '/home/sandbox')
  assert.equal(lines[1], 'sandbox')
  assert.equal(lines.length, 6, r.stdout)
  assert.equal(lines[5], 'tmp-ok')
})

test('runCommand(cmd, args) delivers every argument exactly', async () => {
  const r = await sb.runCommand('python3', ['-c', 'import sys, json; print(json.dumps(sys.argv[1:]))', ...NASTY])
  assert.equal(r.exitCode, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout), NASTY)
})

test('cwd and env values with metacharacters', async () => {
  const dir = "/tmp/dir with 'quotes' $(x) `y` *"
  await sb.runCommand('mkdir', ['-p', dir])
  const env = {}
  NASTY.forEach((v, i) => { env[`V_${i}`] = v })
  const r = await sb.runCommand('python3', ['-c',
    'import os, json; print(json.dumps([os.getcwd(), [os.environ["V_%d" % i] for i in range(' + NASTY.length + ')]]))'],
  { cwd: dir, env })
  assert.equal(r.exitCode, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout), [dir, NASTY])
  const bad = await rejects(sb.runCommand('true', { env: { 'A-B': '1' } }))
  assert.equal(bad.code, 'ERR_INVALID_ARG')
  const nul = await rejects(sb.runCommand('echo', ['a\0b']))
  assert.equal(nul.code, 'ERR_INVALID_ARG')
  const gone = await sb.runCommand('pwd', { cwd: '/no/such/dir' })
  assert.notEqual(gone.exitCode, 0)
})

test('runCode: python and node, exceptions are results, detection', async () => {
  const py = await sb.runCode('import sys\nprint(f"py {sys.version_info[0]}")')
  assert.equal(py.stdout, 'py 3\n')
  assert.equal(py.language, 'python')
  assert.equal(py.output, 'py 3\n')
  assert.equal(py.exitCode, 0)
  assert.equal(py.provider, 'fly')
  assert.equal(py.sandboxId, sb.sandboxId)
  assert.equal(typeof py.executionTime, 'number')
  const js = await sb.runCode('console.log("node", typeof process.version)', 'node')
  assert.equal(js.stdout, 'node string\n')
  assert.equal(js.language, 'node')
  const boom = await sb.runCode('raise ValueError("boom")', 'python')
  assert.notEqual(boom.exitCode, 0)
  assert.match(boom.stderr, /ValueError: boom/)
  assert.match(boom.output, /ValueError/)
  const jsErr = await sb.runCode('throw new Error("kaput")', 'node')
  assert.notEqual(jsErr.exitCode, 0)
  assert.match(jsErr.stderr, /kaput/)
  await assert.rejects(sb.runCode('1', 'cobol'), (e) => e.code === 'ERR_INVALID_ARG')
})

test('runCode: 1 MiB of code travels as data', async () => {
  const filler = '#' + 'x'.repeat(1023) + '\n'
  const code = filler.repeat(1024) + 'print("big ok", "\'quotes\' $(nope) `nope`")\n'
  assert.ok(code.length > 1024 * 1024)
  const r = await sb.runCode(code, 'python')
  assert.equal(r.exitCode, 0, r.stderr)
  assert.equal(r.stdout, "big ok 'quotes' $(nope) `nope`\n")
})

test('50 commands at once on one sandbox, each result matched', async () => {
  const before = native.sshStats().connects
  const tokens = Array.from({ length: 50 }, () => crypto.randomBytes(6).toString('hex'))
  const results = await Promise.all(tokens.map((t, i) =>
    sb.runCommand(`echo ${t}; echo ${i} >&2; exit ${i % 7}`)))
  results.forEach((r, i) => {
    assert.equal(r.stdout, tokens[i] + '\n')
    assert.equal(r.stderr, `${i}\n`)
    assert.equal(r.exitCode, i % 7)
  })
  assert.equal(native.sshStats().connects, before, 'no new connection: the session was reused')
})

test('a command that closes its output before it exits gets its own exit status', async () => {
  // The server's EOF comes when the output closes; the exit status only when
  // the command ends.  Reading the status at EOF read 0 for every one here.
  const results = await Promise.all([5, 0, 3, 137].map((code) =>
    sb.runCommand(code === 137 ? 'exec >&- 2>&-; sleep 0.3; kill -9 $$' : `exec >&- 2>&-; sleep 0.3; exit ${code}`)))
  assert.deepEqual(results.map((r) => r.exitCode), [5, 0, 3, 137])
  const streamed = await sb.runCommand('echo out; exec >&- 2>&-; sleep 0.3; exit 4', { onStdout: () => {} })
  assert.deepEqual([streamed.stdout, streamed.exitCode], ['out\n', 4])
})

test('streaming: chunks arrive while the command runs and add up to stdout', async () => {
  const fifo = `/tmp/fifo-${crypto.randomBytes(4).toString('hex')}`
  await sb.runCommand('mkfifo', [fifo])
  const seen = []
  let released = null
  // The command blocks on the fifo after its first line; only a chunk that
  // arrives before the command ends can release it.
  const r = await sb.runCommand(`echo first; read x < ${fifo}; echo "second $x"; echo e1 >&2`, {
    onStdout: (d) => {
      seen.push(d)
      if (d.includes('first') && !released) released = sb.runCommand(`echo go > ${fifo}`)
    },
    onStderr: (d) => seen.push('ERR:' + d)
  })
  await released
  assert.equal(r.stdout, 'first\nsecond go\n')
  assert.equal(r.stderr, 'e1\n')
  assert.equal(seen.filter((s) => !s.startsWith('ERR:')).join(''), r.stdout)
  assert.equal(seen.filter((s) => s.startsWith('ERR:')).map((s) => s.slice(4)).join(''), r.stderr)
})

test('streaming: multi-byte characters split across writes decode intact', async () => {
  const prog = 'import sys\nfor b in "€✓😀".encode():\n  sys.stdout.buffer.write(bytes([b])); sys.stdout.flush()\n' +
    'sys.stdout.buffer.write(b"\\xff\\n")'
  const parts = []
  const r = await sb.runCommand('python3', ['-c', prog], { onStdout: (d) => parts.push(d) })
  assert.equal(parts.join(''), r.stdout)
  assert.equal(r.stdout, '€✓😀\ufffd\n')
})

test('timeout kills the remote process group and returns 124', async () => {
  const marker = `sleep ${3000 + Math.floor(Math.random() * 1000)}`
  const r = await sb.runCommand(`${marker} & ${marker}`, { timeout: 500 })
  assert.equal(r.exitCode, 124)
  assert.ok(r.durationMs < 5000, `returned after ${r.durationMs} ms`)
  const left = await sb.runCommand('ps -eo args')
  assert.ok(!left.stdout.split('\n').includes(marker), 'no process left:\n' + left.stdout)
})

test('background survives the call', async () => {
  const fifo = `/tmp/bg-${crypto.randomBytes(4).toString('hex')}`
  await sb.runCommand('mkfifo', [fifo])
  const r = await sb.runCommand(`echo alive > ${fifo}; exec sleep 4242`, { background: true })
  assert.equal(r.exitCode, 0)
  // Reading the fifo waits for the detached command to run.
  const alive = await sb.runCommand('cat', [fifo])
  assert.equal(alive.stdout, 'alive\n')
  const ps = await sb.runCommand('ps -eo args')
  assert.ok(ps.stdout.split('\n').includes('sleep 4242'))
  await assert.rejects(sb.runCommand('true', { background: true, onStdout: () => {} }))
})

test('output above maxOutputBytes is a clear error', async () => {
  const small = provider(srv, { maxOutputBytes: 1000 })
  const other = await small.sandbox.getById(sb.sandboxId)
  const err = await rejects(other.runCommand('head -c 5000 /dev/zero'))
  assert.equal(err.code, 'ERR_OUTPUT_LIMIT')
  const ok = await other.runCommand('head -c 999 /dev/zero | wc -c')
  assert.equal(ok.stdout.trim(), '999')
})

test('reconnects after sshd is killed; in-flight commands fail with SSH_DISCONNECTED', async () => {
  const machine = sb.sandboxId.split(':')[1]
  const fifo = `/tmp/k-${crypto.randomBytes(4).toString('hex')}`
  await sb.runCommand('mkfifo', [fifo])
  let started
  const isStarted = new Promise((resolve) => { started = resolve })
  const inflight = sb.runCommand(`echo up; cat ${fifo}`, { onStdout: () => started() }).catch((e) => e)
  await isStarted
  await srv.killSshd(machine)
  const err = await inflight
  assert.equal(err.code, 'SSH_DISCONNECTED')
  const r = await sb.runCommand('echo back')
  assert.equal(r.stdout, 'back\n')
})

test('a swapped host key is refused and nothing is sent', async () => {
  const other = await p.sandbox.create()
  const machine = other.sandboxId.split(':')[1]
  await srv.swapHostKey(machine)
  await closeSessions(other)
  const err = await rejects(other.runCommand('touch /tmp/should-not-exist'))
  assert.equal(err.code, 'SSH_HOSTKEY_MISMATCH')
  const ex = await call(srv, 'machine.exec', { app: other.sandboxId.split(':')[0], machine },
    { body: JSON.stringify({ command: ['sh', '-c', 'test -e /tmp/should-not-exist; echo $?'] }) })
  assert.equal(ex.body.stdout, '1\n')
  await other.destroy()
})

test('password authentication when configured', async () => {
  const pw = provider(srv, { sshPassword: 'sandbox' })
  const s = await pw.sandbox.create()
  const r = await s.runCommand('id -un')
  assert.equal(r.stdout, 'sandbox\n')
  await s.destroy()
})

// Runs as the machine's root through the Machines API (what re-authorisation
// and the exec transport use), to look at what the sandbox user cannot.
async function asRoot (s, script) {
  const [app, machine] = s.sandboxId.split(':')
  const r = await call(srv, 'machine.exec', { app, machine }, { body: JSON.stringify({ command: ['sh', '-c', script] }) })
  return r.body
}

test('getById in another provider instance authorizes its own key', async () => {
  const appName = sb.sandboxId.split(':')[0]
  const p2 = provider(srv, { appName })
  const again = await p2.sandbox.getById(sb.sandboxId)
  // p2's own key: its own session (a new connection, as another process
  // would make), never the one p opened.
  const before = await sb.runCommand('wc -l < /etc/computesdk/authorized_keys')
  const r = await again.runCommand('echo second-client; wc -l < /etc/computesdk/authorized_keys')
  assert.equal(r.stdout, `second-client\n${Number(before.stdout) + 1}\n`, "p2's key was authorized")
  const keys = await asRoot(sb, 'cat /etc/computesdk/authorized_keys')
  assert.ok(keys.stdout.split('\n').includes(again.getInstance()._ctx.state.clientKey.publicKey))
})

test('a key authorized by another provider instance is authorized again after the machine restarts (a boot drops it)', async () => {
  const s = await p.sandbox.create()
  try {
    const [app, machine] = s.sandboxId.split(':')
    const again = await provider(srv, { appName: app }).sandbox.getById(s.sandboxId)
    assert.equal((await again.runCommand('echo before')).stdout, 'before\n')
    const m = (await call(srv, 'machine.get', { app, machine })).body
    await call(srv, 'machine.stop', { app, machine })
    await call(srv, 'machine.wait', { app, machine }, { query: q({ state: 'stopped', instance_id: m.instance_id, timeout: 60 }) })
    await call(srv, 'machine.start', { app, machine })
    await call(srv, 'machine.wait', { app, machine }, { query: q({ state: 'started', timeout: 60 }) })
    await srv.waitSsh(machine)
    const keys = await asRoot(s, 'wc -l < /etc/computesdk/authorized_keys')
    assert.equal(keys.stdout, '1\n', "the boot made the key file anew: only the creator's key")
    assert.equal((await again.runCommand('echo after')).stdout, 'after\n')
  } finally {
    await s.destroy()
  }
})

test('re-authorisation never writes as root where the sandbox user can reach', async () => {
  const s = await p.sandbox.create()
  const before = await asRoot(s, 'sha256sum /etc/shadow /etc/passwd; stat -c "%U %a" /etc/shadow')
  // The attack: the user's own key files point at root's files.
  const plant = await s.runCommand('mkdir -p ~/.ssh && ln -sf /etc/shadow ~/.ssh/authorized_keys && ' +
    'ln -sfn /etc ~/.ssh/dir && ls -l ~/.ssh/authorized_keys')
  assert.equal(plant.exitCode, 0, plant.stderr)
  const p2 = provider(srv, { appName: s.sandboxId.split(':')[0] })
  const again = await p2.sandbox.getById(s.sandboxId)
  const r = await again.runCommand('id -un; cat /etc/shadow >/dev/null 2>&1 && echo READABLE || echo denied')
  assert.equal(r.stdout, 'sandbox\ndenied\n', 'the second provider gets in as the sandbox user, not root')
  const after = await asRoot(s, 'sha256sum /etc/shadow /etc/passwd; stat -c "%U %a" /etc/shadow')
  assert.equal(after.stdout, before.stdout, '/etc/shadow and /etc/passwd unchanged, same owner and mode')
  const keys = await asRoot(s, 'stat -c "%U %a" /etc/computesdk /etc/computesdk/authorized_keys; wc -l < /etc/computesdk/authorized_keys')
  assert.equal(keys.stdout, 'root 755\nroot 644\n2\n')
  const link = await s.runCommand('readlink ~/.ssh/authorized_keys')
  assert.equal(link.stdout, '/etc/shadow\n', "the user's own files are left as the user made them")
  await s.destroy()
})

test('exec transport: fails with FLY_EXEC_NO_USER instead of running as root', async () => {
  const s = await p.sandbox.create()
  const appName = s.sandboxId.split(':')[0]
  const ghost = await provider(srv, { appName, transport: 'exec', sshUser: 'ghost' }).sandbox.getById(s.sandboxId)
  const noUser = await rejects(ghost.runCommand('id -u'))
  assert.equal(noUser.code, 'FLY_EXEC_NO_USER')
  assert.match(noUser.message, /no user ghost/)
  const ex = await provider(srv, { appName, transport: 'exec' }).sandbox.getById(s.sandboxId)
  assert.equal((await ex.runCommand('id -un')).stdout, 'sandbox\n')
  // An image without runuser: no way to drop privileges, so no command.
  const rm = await asRoot(s, 'rm -f "$(command -v runuser)" && ! command -v runuser')
  assert.equal(rm.exit_code, 0, rm.stderr)
  const noRunuser = await rejects(ex.runCommand('touch /tmp/made-by; id -u'))
  assert.equal(noRunuser.code, 'FLY_EXEC_NO_USER')
  assert.match(noRunuser.message, /runuser is missing/)
  const fsErr = await rejects(ex.filesystem.writeFile('/tmp/made-by-fs', 'x'))
  assert.equal(fsErr.code, 'FLY_EXEC_NO_USER')
  const none = await asRoot(s, 'ls /tmp/made-by /tmp/made-by-fs 2>&1 | grep -c "No such"')
  assert.equal(none.stdout, '2\n', 'nothing ran')
  await s.destroy()
})

test('exec transport: same result shape through the Machines API', async () => {
  const appName = sb.sandboxId.split(':')[0]
  const ex = provider(srv, { appName, transport: 'exec' })
  const s = await ex.sandbox.getById(sb.sandboxId)
  const r = await s.runCommand('python3', ['-c', 'import sys; print(sys.argv[1]); sys.exit(4)', "it's $(x)"])
  assert.equal(r.stdout, "it's $(x)\n")
  assert.equal(r.exitCode, 4)
  const c = await s.runCode('console.log(6 * 7)', 'node')
  assert.equal(c.stdout, '42\n')
  // as the sandbox user, like SSH
  const who = await s.runCommand('id -un; echo "$HOME"; pwd')
  assert.equal(who.stdout, 'sandbox\n/home/sandbox\n/home/sandbox\n')
  assert.equal((await sb.runCommand('pwd')).stdout, '/home/sandbox\n', 'SSH starts there too')
  const killed = await s.runCommand('kill -9 $$')
  assert.equal(killed.exitCode, 137)
  const chunks = []
  const st = await s.runCommand('echo streamed', { onStdout: (d) => chunks.push(d) })
  assert.equal(chunks.join(''), st.stdout)
})

test('a stopped machine and a destroyed sandbox give clear errors', async () => {
  // Created with the default connect bound (a loaded host can take more
  // than a second); only the calls after the stop use the short one.
  const made = await p.sandbox.create()
  const s = await provider(srv, { appName: made.sandboxId.split(':')[0], connectTimeoutMs: 1000 }).sandbox.getById(made.sandboxId)
  const [app, machine] = s.sandboxId.split(':')
  const m = (await call(srv, 'machine.get', { app, machine })).body
  await call(srv, 'machine.stop', { app, machine }, { body: '{}' })
  await call(srv, 'machine.wait', { app, machine }, { query: q({ state: 'stopped', version: m.instance_id || m.version, timeout: 30 }) })
  const stopped = await rejects(s.runCommand('true'))
  assert.equal(stopped.code, 'FLY_MACHINE_NOT_RUNNING')
  assert.equal(stopped.state, 'stopped')
  assert.equal((await s.getInfo()).status, 'stopped')
  await s.destroy()
  const gone = await rejects(s.runCommand('true'))
  assert.equal(gone.code, 'FLY_NOT_FOUND')
  const gone2 = await rejects(s.filesystem.readFile('/etc/hostname'))
  assert.equal(gone2.code, 'FLY_NOT_FOUND')
})

test('a command line of any length runs, with env and cwd; the same data through runCode works', async () => {
  const big = 'x'.repeat(200 * 1024)
  const r = await sb.runCommand(`echo ${big} | wc -c; echo "$V"; pwd`, { env: { V: 'v1' }, cwd: '/tmp' })
  assert.equal(r.stdout, `${big.length + 1}\nv1\n/tmp\n`)
  assert.equal(r.exitCode, 0)
  // One argument just under Linux's MAX_ARG_STRLEN reaches a program.
  const most = 'y'.repeat(128 * 1024 - 1)
  const args = await sb.runCommand('/usr/bin/printf', ['%s', most])
  assert.deepEqual([args.exitCode, args.stdout.length], [0, most.length])
  const c = await sb.runCode(`print(len("${big}"))`, 'python')
  assert.equal(c.stdout, `${big.length}\n`)
})

test('an argument or env value longer than one execve string is ERR_INVALID_ARG up front, the same on both transports', async () => {
  const appName = sb.sandboxId.split(':')[0]
  const ex = await provider(srv, { appName, transport: 'exec' }).sandbox.getById(sb.sandboxId)
  const big = 'z'.repeat(128 * 1024)
  for (const s of [sb, ex]) {
    const arg = await rejects(s.runCommand('/usr/bin/printf', ['%s', big]))
    assert.equal(arg.code, 'ERR_INVALID_ARG')
    assert.match(arg.message, /argument 2 is 131072 bytes; Linux limits one argument to 131071/)
    const env = await rejects(s.runCommand('true', { env: { BIG: big } }))
    assert.equal(env.code, 'ERR_INVALID_ARG')
    assert.match(env.message, /env BIG is 131072 bytes/)
  }
})

test('sessions are never shared across credentials: a wrong password fails, not rides on another session', async () => {
  assert.equal((await sb.runCommand('echo a')).stdout, 'a\n') // p's session is open
  const appName = sb.sandboxId.split(':')[0]
  const wrong = await provider(srv, { appName, sshPassword: 'wrong' }).sandbox.getById(sb.sandboxId)
  const err = await rejects(wrong.runCommand('touch /tmp/made-with-a-wrong-password'))
  assert.equal(err.code, 'SSH_AUTH_FAILED')
  assert.ok(!err.message.includes('wrong'), 'the password is not in the message')
  const left = await sb.runCommand('test -e /tmp/made-with-a-wrong-password; echo $?')
  assert.equal(left.stdout, '1\n', 'nothing ran')
})

test('an open session is not reused once the pinned host key differs (the per-call target check)', async () => {
  assert.equal((await sb.runCommand('echo a')).stdout, 'a\n') // the session is open
  const m = sb.getInstance() // the provider's machine object, which the transport reads
  const pinned = m.hostKeyFingerprint
  const other = 'SHA256:' + crypto.createHash('sha256').update('not this host').digest('base64').replace(/=+$/, '')
  try {
    m.hostKeyFingerprint = other
    const err = await rejects(sb.runCommand('touch /tmp/made-under-a-wrong-pin'))
    assert.equal(err.code, 'SSH_HOSTKEY_MISMATCH')
  } finally {
    m.hostKeyFingerprint = pinned
  }
  // Back to the right pin: a new session, and nothing ran under the wrong one.
  const left = await sb.runCommand('test -e /tmp/made-under-a-wrong-pin; echo $?')
  assert.equal(left.stdout, '1\n')
})

test('exec transport: a reply without an exit status is an error, not exit 0', async () => {
  const [appName, machine] = sb.sandboxId.split(':')
  const ex = await provider(srv, { appName, transport: 'exec' }).sandbox.getById(sb.sandboxId)
  srv.faults.add({ method: 'POST', machine, path: /\/exec$/, status: 200, body: { stdout: 'looks fine\n', stderr: '' } })
  const err = await rejects(ex.runCommand('exit 3'))
  assert.equal(err.code, 'FLY_EXEC_NO_STATUS')
  assert.equal((await ex.runCommand('exit 3')).exitCode, 3)
})
