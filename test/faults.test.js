'use strict'
// The provider under faults, through its public API (fly() against
// fly-local): sshd frozen, killed or restarted with another host key; peers
// that accept TCP and say nothing; connections cut mid-command, mid-upload
// and mid-download; API 5xx storms, 429s and slow replies; machines stopped
// or destroyed under a running command; sandboxes that serve a huge sparse
// file, an endless file, an endless stream or a huge directory.  Every call
// must settle by its deadline with a stable code, and the next call must
// work.  test/native-faults.test.js covers the same faults one layer down.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const { promisify } = require('node:util')
const execFile = promisify(require('node:child_process').execFile)
const net = require('node:net')
const { startLocal, provider, call, q, closeSessions, FAST_RETRY } = require('./helpers/fly')

// The deadlines this suite's providers work to.  A command's deadline is its
// timeout plus the native exec's 3 s grace for the remote `timeout` wrapper;
// a call that has to (re)connect first gets CONNECT_MS on top; a dead peer
// under a command without a timeout is noticed when two keepalives (sent
// every 15 s, the native default) go unanswered; SFTP calls have the native
// 60 s bound; API calls retry for FAST_RETRY.totalMs.
const CONNECT_MS = 3000
const EXEC_GRACE_MS = 3000
const KEEPALIVE_MS = 45000
const FILE_MS = 60000
const RETRY_MS = FAST_RETRY.totalMs
// What the guard adds to a deadline before it calls a call hung: only a
// hang must fail, not a slow moment of a loaded machine.
const GRACE_MS = 10000
const MAX_OUTPUT = 1 << 20

// p's outcome; a rejection naming the hang if p has not settled ms after it
// was asked for.
function within (ms, p, what = 'the call') {
  let timer
  const late = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} had not settled ${ms} ms after it was asked for`)), ms)
  })
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}

// The error p rejects with by ms (a resolution fails the test).
async function failsWithin (ms, p, what) {
  const r = await within(ms, p.then((value) => ({ value }), (error) => ({ error })), what)
  if (!r.error) throw new Error(`${what || 'the call'} resolved; expected a rejection`)
  return r.error
}

const tag = () => crypto.randomBytes(4).toString('hex')

let srv, p, sb
test.before(async () => {
  srv = await startLocal()
  p = provider(srv, { connectTimeoutMs: CONNECT_MS, maxOutputBytes: MAX_OUTPUT })
  sb = await p.sandbox.create()
})
test.after(async () => {
  if (sb) await sb.destroy()
  if (srv) await srv.stop()
})

const ids = (s) => {
  const [app, machine] = s.sandboxId.split(':')
  return { app, machine }
}

// Starts `command` on s: `running` is its promise; `reached` resolves once
// its stdout has shown `marker` (and rejects if the command ends first), so
// that a fault lands while it is under way.
function start (s, command, marker, options = {}) {
  let out = ''
  let hit
  const at = new Promise((resolve) => { hit = resolve })
  const running = s.runCommand(command, {
    ...options,
    onStdout: (d) => {
      out += d
      if (out.includes(marker)) hit()
    }
  })
  running.catch(() => {})
  const ended = running.then(() => { throw new Error(`${command} ended before it printed ${marker}`) })
  return { running, reached: within(30000, Promise.race([at, ended]), `${marker} from ${command}`) }
}

test('sshd frozen while idle: a command settles by its timeout, the next calls by the connect timeout; thawed, all works', async () => {
  const { machine } = ids(sb)
  assert.equal((await sb.runCommand('echo up')).stdout, 'up\n')
  await srv.freezeSshd(machine)
  try {
    const e1 = await failsWithin(2000 + EXEC_GRACE_MS + GRACE_MS, sb.runCommand('echo hi', { timeout: 2000 }), 'a command on a frozen sshd')
    assert.equal(e1.code, 'SSH_TIMEOUT', e1.message)
    // The stalled connection was dropped: what follows reconnects, and a
    // frozen sshd never finishes the handshake.
    const [e2, e3, e4] = await Promise.all([
      failsWithin(CONNECT_MS + 2000 + EXEC_GRACE_MS + GRACE_MS, sb.runCommand('echo again', { timeout: 2000 }), 'the next command'),
      failsWithin(CONNECT_MS + FILE_MS + GRACE_MS, sb.filesystem.readFile('/etc/hostname'), 'a readFile'),
      failsWithin(CONNECT_MS + FILE_MS + GRACE_MS, sb.filesystem.writeFile('/tmp/frozen', 'x'), 'a writeFile')
    ])
    for (const e of [e2, e3, e4]) assert.equal(e.code, 'SSH_CONNECT_FAILED', e.message)
  } finally {
    await srv.thawSshd(machine)
  }
  assert.equal((await within(CONNECT_MS + GRACE_MS, sb.runCommand('echo back'))).stdout, 'back\n')
  await sb.filesystem.writeFile('/tmp/thawed', 'ok')
  assert.equal(await sb.filesystem.readFile('/tmp/thawed'), 'ok')
})

test('sshd frozen mid-command: the command ends at its timeout as timed out (124), the next by its own deadline; thawed, all works', async () => {
  const { machine } = ids(sb)
  const cmd = start(sb, 'echo started; sleep 30', 'started', { timeout: 2000 })
  await cmd.reached
  await srv.freezeSshd(machine)
  try {
    const r = await within(2000 + EXEC_GRACE_MS + GRACE_MS, cmd.running, 'the frozen command')
    assert.equal(r.exitCode, 124)
    assert.equal(r.stdout, 'started\n')
    const e = await failsWithin(2000 + EXEC_GRACE_MS + GRACE_MS, sb.runCommand('echo blocked?', { timeout: 2000 }), 'the next command')
    assert.equal(e.code, 'SSH_TIMEOUT', e.message)
  } finally {
    await srv.thawSshd(machine)
  }
  assert.equal((await within(CONNECT_MS + GRACE_MS, sb.runCommand('echo next'))).stdout, 'next\n')
})

test('sshd killed while idle: the dead session is noticed and the next call reconnects', async () => {
  const { machine } = ids(sb)
  assert.equal((await sb.runCommand('echo before')).stdout, 'before\n')
  assert.ok(await srv.killSshd(machine) > 0)
  await srv.waitSsh(machine)
  const r = await within(CONNECT_MS + GRACE_MS, sb.runCommand('echo after'))
  assert.equal(r.stdout, 'after\n')
})

test('connection cut mid-command: SSH_DISCONNECTED at once, and the next call reconnects', async () => {
  const { machine } = ids(sb)
  // No timeout: only noticing the cut can end this command.
  const cmd = start(sb, 'echo started; sleep 60', 'started')
  await cmd.reached
  await srv.killSshd(machine)
  const e = await failsWithin(GRACE_MS, cmd.running, 'the cut command')
  assert.equal(e.code, 'SSH_DISCONNECTED', e.message)
  await srv.waitSsh(machine)
  assert.equal((await within(CONNECT_MS + GRACE_MS, sb.runCommand('echo next'))).stdout, 'next\n')
})

// Bytes this process's TCP connections to the sandbox's sshd have carried,
// as the kernel counts them (ss, tcp_info): `bytes_acked` sent,
// `bytes_received` received.
async function tcpBytes (s, field) {
  const ip = s.getInstance().privateIp
  const { stdout } = await execFile('ss', ['-Htinp', 'state', 'established', 'dst', ip, 'dport', '=', ':2222'])
  let ours = false
  let sum = 0
  for (const line of stdout.split('\n')) {
    if (/users:/.test(line)) ours = line.includes(`pid=${process.pid},`)
    const m = new RegExp(`\\b${field}:(\\d+)`).exec(line)
    if (m && ours) sum += Number(m[1])
  }
  return sum
}

// Resolves once the sandbox's connections have carried `n` more bytes
// (field as tcpBytes), i.e. a transfer is under way; rejects if `p`
// settles first.  Polled: there is no event for it.
async function moved (s, field, n, p) {
  const from = await tcpBytes(s, field)
  let settled = false
  p.then(() => { settled = true }, () => { settled = true })
  while (await tcpBytes(s, field) - from < n) {
    if (settled) throw new Error(`the transfer settled before ${n} bytes moved`)
  }
}

test('connection cut mid-upload: writeFile of a large Buffer settles with SSH_DISCONNECTED; the next upload works', async () => {
  const { machine } = ids(sb)
  const upload = sb.filesystem.writeFile('/tmp/cut-upload', Buffer.alloc(128 << 20, 7))
  await within(FILE_MS, moved(sb, 'bytes_acked', 4 << 20, upload), 'the first 4 MiB of the upload')
  await srv.killSshd(machine)
  const e = await failsWithin(GRACE_MS, upload, 'the cut upload')
  assert.equal(e.code, 'SSH_DISCONNECTED', e.message)
  await srv.waitSsh(machine)
  const data = crypto.randomBytes(8 << 20)
  await within(CONNECT_MS + FILE_MS + GRACE_MS, sb.filesystem.writeFile('/tmp/after-upload', data))
  assert.ok(data.equals(await sb.filesystem.readFile('/tmp/after-upload', { encoding: null })))
  await sb.runCommand('rm -f /tmp/cut-upload /tmp/after-upload')
})

test('connection cut mid-download: readFile settles with SSH_DISCONNECTED; the next download works', async () => {
  const { machine } = ids(sb)
  await sb.runCommand('truncate -s 128M /tmp/cut-download')
  const download = sb.filesystem.readFile('/tmp/cut-download', { encoding: null })
  await within(FILE_MS, moved(sb, 'bytes_received', 4 << 20, download), 'the first 4 MiB of the download')
  await srv.killSshd(machine)
  const e = await failsWithin(GRACE_MS, download, 'the cut download')
  assert.equal(e.code, 'SSH_DISCONNECTED', e.message)
  await srv.waitSsh(machine)
  await sb.runCommand('head -c 8M /dev/urandom > /tmp/after-download')
  const got = await within(CONNECT_MS + FILE_MS + GRACE_MS, sb.filesystem.readFile('/tmp/after-download', { encoding: null }))
  const sum = (await sb.runCommand('sha256sum /tmp/after-download')).stdout.split(' ')[0]
  assert.equal(crypto.createHash('sha256').update(got).digest('hex'), sum)
  await sb.runCommand('rm -f /tmp/cut-download /tmp/after-download')
})
