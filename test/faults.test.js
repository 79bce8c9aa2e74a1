'use strict'
// The provider under faults, through its public API (fly() against
// fly-local): sshd frozen, killed or restarted with another host key; peers
// that accept TCP and say nothing; connections cut mid-command, mid-upload
// and mid-download; API 5xx storms, 429s and slow replies; machines stopped
// or destroyed under a running command; sandboxes that serve a huge sparse
// file, an endless stream or a huge directory.  Every call must settle by
// its deadline with a stable code, and the next call must work.  The guard
// is a timer that rejects (within); no elapsed time is asserted.
// test/native-faults.test.js covers the same faults one layer down.
const { describe, test } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const { promisify } = require('node:util')
const execFile = promisify(require('node:child_process').execFile)
const net = require('node:net')
const { startLocal, provider, call, q, closeSessions, appName, FAST_RETRY } = require('./helpers/fly')

// The deadlines this suite's providers work to.  A command's deadline is its
// timeout plus the native exec's 3 s grace for the remote `timeout` wrapper;
// a call that has to (re)connect first fails by CONNECT_MS when that comes
// first, and by its own deadline when that does; a dead peer
// under a command without a timeout is noticed when four keepalives (sent
// every 15 s, the native default) go unanswered; SFTP calls have the native
// 60 s bound; API calls retry for FAST_RETRY.totalMs.
const CONNECT_MS = 3000
const EXEC_GRACE_MS = 3000
const KEEPALIVE_MS = 75000
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

let srv, p, sb, booter
// A sandbox of p's, booted by a provider with the default connect bound: a
// fresh boot's first login on a loaded 2-core host has taken over
// CONNECT_MS, which is a bound for the faults below, not for a boot.
async function create () {
  const made = await booter.sandbox.create()
  return p.sandbox.getById(made.sandboxId)
}
test.before(async () => {
  srv = await startLocal()
  const app = appName('faults')
  p = provider(srv, { appName: app, connectTimeoutMs: CONNECT_MS, maxOutputBytes: MAX_OUTPUT })
  booter = provider(srv, { appName: app })
  sb = await create()
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

// Bytes this process's TCP connections to the sandbox's sshd have carried,
// as the kernel counts them (ss, tcp_info): `bytes_acked` sent,
// `bytes_received` received.
async function tcpBytes (s, field) {
  const ip = s.getInstance().privateIp
  const dst = ip.includes(':') ? `[${ip}]` : ip
  const { stdout } = await execFile('ss', ['-Htinp', 'state', 'established', 'dst', dst, 'dport', '=', ':2222'])
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

// A server on 127.0.0.1 that accepts and then says `greeting` (if any) and
// nothing more.
async function silentServer (t, greeting) {
  const socks = new Set()
  const server = net.createServer((c) => {
    socks.add(c)
    c.on('error', () => {})
    if (greeting) c.write(greeting)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => {
    for (const c of socks) c.destroy()
    server.close(resolve)
  }))
  return server.address().port
}

describe('faults', { concurrency: true }, () => {
  // Waits for two unanswered keepalives (up to KEEPALIVE_MS): it runs beside
  // the other cases, on its own sandbox.
  test('sshd frozen under a command without a timeout: keepalives end it with SSH_DISCONNECTED; thawed, the next works', async () => {
    const s = await create()
    try {
      const { machine } = ids(s)
      const cmd = start(s, 'echo started; sleep 600', 'started')
      await cmd.reached
      await srv.freezeSshd(machine)
      try {
        const e = await failsWithin(KEEPALIVE_MS + GRACE_MS, cmd.running, 'the command under a frozen sshd')
        assert.equal(e.code, 'SSH_DISCONNECTED', e.message)
      } finally {
        await srv.thawSshd(machine)
      }
      assert.equal((await within(CONNECT_MS + GRACE_MS, s.runCommand('echo next'))).stdout, 'next\n')
    } finally {
      await s.destroy()
    }
  })

  // Everything else, one case at a time (most share the sandbox `sb`).
  describe('one at a time', { concurrency: 1 }, () => {
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

    test('opTimeoutMs bounds a call that must connect first: a frozen sshd fails it by opTimeoutMs, not connectTimeoutMs', async () => {
      const { app, machine } = ids(sb)
      const quick = await provider(srv, { appName: app, opTimeoutMs: 2000, connectTimeoutMs: 30000 }).sandbox.getById(sb.sandboxId)
      await srv.freezeSshd(machine)
      try {
        const [e1, e2] = await Promise.all([
          failsWithin(2000 + GRACE_MS, quick.runCommand('echo hi'), 'a command that must connect'),
          failsWithin(2000 + GRACE_MS, quick.filesystem.readFile('/etc/hostname'), 'a readFile that must connect')
        ])
        for (const e of [e1, e2]) assert.equal(e.code, 'SSH_TIMEOUT', e.message)
      } finally {
        await srv.thawSshd(machine)
      }
      assert.equal((await within(2000 + GRACE_MS, quick.runCommand('echo back'))).stdout, 'back\n')
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

    test('sshd restarted with another host key: SSH_HOSTKEY_MISMATCH, nothing runs or is written; other sandboxes work', async () => {
      const other = await create()
      try {
        const { app, machine } = ids(other)
        assert.equal((await other.runCommand('echo pinned')).stdout, 'pinned\n')
        await srv.swapHostKey(machine)
        // Open sessions survive a listener restart: connect anew, as a call
        // from another process would.
        await closeSessions(other)
        const marker = `/tmp/ran-${tag()}`
        const [e1, e2] = await Promise.all([
          failsWithin(CONNECT_MS + GRACE_MS, other.runCommand(`touch ${marker}`), 'a command to the swapped key'),
          failsWithin(CONNECT_MS + FILE_MS + GRACE_MS, other.filesystem.writeFile(`${marker}-file`, 'x'), 'a writeFile to the swapped key')
        ])
        for (const e of [e1, e2]) assert.equal(e.code, 'SSH_HOSTKEY_MISMATCH', e.message)
        // Pinning holds on the next call too: no fallback to trusting the key.
        const e3 = await failsWithin(CONNECT_MS + GRACE_MS, other.runCommand(`touch ${marker}`), 'the next command')
        assert.equal(e3.code, 'SSH_HOSTKEY_MISMATCH')
        const seen = await call(srv, 'machine.exec', { app, machine }, {
          body: JSON.stringify({ command: ['sh', '-c', `ls ${marker}* 2>/dev/null | wc -l`], timeout: 10 })
        })
        assert.equal(seen.body.stdout, '0\n', 'nothing was run or written')
        assert.equal((await sb.runCommand('echo unaffected')).stdout, 'unaffected\n')
      } finally {
        await other.destroy()
      }
    })

    for (const [what, greeting] of [['accepts and says nothing', null], ['sends a banner, then stalls', 'SSH-2.0-OpenSSH_9.2p1\r\n']]) {
      test(`a peer that ${what}: calls settle by the connect timeout with SSH_CONNECT_FAILED; the real sshd still works`, async (t) => {
        const port = await silentServer(t, greeting)
        const { app } = ids(sb)
        const q2 = provider(srv, { appName: app, sshHost: '127.0.0.1', sshPort: port, connectTimeoutMs: CONNECT_MS })
        const via = await q2.sandbox.getById(sb.sandboxId)
        const calls = [
          via.runCommand('true'),
          via.runCommand('true', { timeout: 1000 }),
          via.filesystem.readFile('/etc/hostname'),
          via.filesystem.writeFile('/tmp/never', 'x')
        ]
        const errs = await Promise.all(calls.map((c, i) => failsWithin(CONNECT_MS + GRACE_MS, c, `call ${i}`)))
        for (const e of errs) assert.equal(e.code, 'SSH_CONNECT_FAILED', e.message)
        // The next call settles the same way, not blocked behind the first.
        const again = await failsWithin(CONNECT_MS + GRACE_MS, via.runCommand('true'), 'the next call')
        assert.equal(again.code, 'SSH_CONNECT_FAILED')
        assert.equal((await sb.runCommand('echo real')).stdout, 'real\n')
      })
    }

    // getInfo while a fault rule on sb's machine holds: it fails with `code`
    // by the retry bound, and works again once the rule is gone.
    async function failsWhile (rule, code, what) {
      const id = srv.faults.add({ machine: ids(sb).machine, method: 'GET', times: Infinity, ...rule })
      try {
        const e = await failsWithin(RETRY_MS + GRACE_MS, sb.getInfo(), what)
        assert.equal(e.code, code, e.message)
        assert.equal(e.status, rule.status)
      } finally {
        srv.faults.remove(id)
      }
      assert.equal((await sb.getInfo()).status, 'running')
    }

    test('API 5xx storms: a short one is ridden out, a long one fails with FLY_UNAVAILABLE by the retry bound; then all works', async () => {
      const { machine } = ids(sb)
      srv.faults.add({ machine, method: 'GET', status: 503, times: 3 })
      assert.equal((await within(RETRY_MS + GRACE_MS, sb.getInfo())).status, 'running')
      await failsWhile({ status: 503 }, 'FLY_UNAVAILABLE', 'getInfo in a storm')
      // Replies lost on the way (dropped connections) are retried too.
      srv.faults.add({ machine, method: 'GET', drop: true, times: 2 })
      assert.equal((await within(RETRY_MS + GRACE_MS, sb.getInfo())).status, 'running')
    })

    test('429 with Retry-After: honoured within the bound, FLY_RATE_LIMITED at once when it asks for longer; then all works', async () => {
      const { machine } = ids(sb)
      srv.faults.add({ machine, method: 'GET', status: 429, retryAfter: 1, times: 2 })
      assert.equal((await within(2000 + RETRY_MS + GRACE_MS, sb.getInfo())).status, 'running')
      // An hour is beyond the bound: give up now rather than wait it out.
      await failsWhile({ status: 429, retryAfter: 3600 }, 'FLY_RATE_LIMITED', 'getInfo asked to wait an hour')
    })

    test('slow API replies: create, commands and destroy still work', async () => {
      const appName = `slow-${tag()}`
      // The API is what is slow here; SSH keeps the default connect bound
      // (a fresh boot's first login on a loaded 2-core host can pass 3 s).
      const slow = provider(srv, { appName })
      const rule = srv.faults.add({ path: `/v1/apps/${appName}`, latencyMs: 400, times: Infinity })
      try {
        const s = await within(120000, slow.sandbox.create(), 'a create on a slow API')
        assert.equal((await s.runCommand('echo slow')).stdout, 'slow\n')
        assert.equal((await within(400 + GRACE_MS, s.getInfo())).status, 'running')
        await within(60000, s.destroy(), 'a destroy on a slow API')
        assert.equal(await slow.sandbox.getById(s.sandboxId), null)
      } finally {
        srv.faults.remove(rule)
      }
    })

    test('machine stopped mid-command: the command ends, the next call is FLY_MACHINE_NOT_RUNNING; started again, all works', async () => {
      const s = await create()
      try {
        const { app, machine } = ids(s)
        const before = (await call(srv, 'machine.get', { app, machine })).body
        const cmd = start(s, 'echo started; sleep 60', 'started')
        await cmd.reached
        await call(srv, 'machine.stop', { app, machine }, { body: JSON.stringify({ signal: 'SIGKILL' }) })
        const ended = await within(GRACE_MS, cmd.running.then((r) => ({ r }), (e) => ({ e })), 'the command on a stopped machine')
        if (ended.e) assert.equal(ended.e.code, 'SSH_DISCONNECTED', ended.e.message)
        else assert.notEqual(ended.r.exitCode, 0, 'a killed command does not succeed')
        await call(srv, 'machine.wait', { app, machine }, { query: q({ state: 'stopped', version: before.instance_id || before.version, timeout: 30 }) })
        const e = await failsWithin(CONNECT_MS + GRACE_MS, s.runCommand('true'), 'a command on a stopped machine')
        assert.equal(e.code, 'FLY_MACHINE_NOT_RUNNING', e.message)
        assert.equal(e.state, 'stopped')
        await call(srv, 'machine.start', { app, machine })
        await call(srv, 'machine.wait', { app, machine }, { query: q({ state: 'started', timeout: 30 }) })
        await srv.waitSsh(machine)
        assert.equal((await within(CONNECT_MS + GRACE_MS, s.runCommand('echo again'))).stdout, 'again\n')
      } finally {
        await s.destroy()
      }
    })

    // Destroys s's machine behind the provider's back (the raw API) while a
    // command runs on it; resolves once that command has ended.
    async function destroyedUnder (s) {
      const { app, machine } = ids(s)
      const cmd = start(s, 'echo started; sleep 60', 'started')
      await cmd.reached
      await call(srv, 'machine.delete', { app, machine }, { query: q({ force: 'true' }) })
      const ended = await within(GRACE_MS, cmd.running.then((r) => ({ r }), (e) => ({ e })), 'the command on a destroyed machine')
      if (ended.e) assert.equal(ended.e.code, 'SSH_DISCONNECTED', ended.e.message)
      else assert.notEqual(ended.r.exitCode, 0, 'a killed command does not succeed')
    }

    test('machine destroyed mid-command: the command ends, the next call fails at once, destroy() still succeeds', async () => {
      const s = await create()
      await destroyedUnder(s)
      const e = await failsWithin(CONNECT_MS + GRACE_MS, s.runCommand('true'), 'a command on a destroyed machine')
      assert.ok(['FLY_NOT_FOUND', 'FLY_MACHINE_NOT_RUNNING'].includes(e.code), e.message)
      await within(RETRY_MS + GRACE_MS, s.destroy(), 'destroy of a destroyed machine')
      assert.equal(await p.sandbox.getById(s.sandboxId), null)
      assert.equal((await s.runCommand('true').catch((err) => err)).code, 'FLY_NOT_FOUND')
    })

    test('machine destroyed mid-command: the next call says FLY_NOT_FOUND, as getById (null) does', async () => {
      const s = await create()
      try {
        await destroyedUnder(s)
        const e = await failsWithin(CONNECT_MS + GRACE_MS, s.runCommand('true'), 'a command on a destroyed machine')
        assert.equal(e.code, 'FLY_NOT_FOUND', e.message)
      } finally {
        await s.destroy()
      }
    })

    test('a huge sparse file: readFile refuses it with ERR_FILE_TOO_LARGE without reading or allocating it', async () => {
      await sb.runCommand('truncate -s 5G /tmp/sparse')
      const rss = process.memoryUsage().rss
      const e = await failsWithin(FILE_MS + GRACE_MS, sb.filesystem.readFile('/tmp/sparse', { encoding: null }), 'readFile of 5 GiB')
      assert.equal(e.code, 'ERR_FILE_TOO_LARGE', e.message)
      assert.ok(process.memoryUsage().rss - rss < 64 << 20, 'no buffer for the file was filled')
      const listed = (await sb.filesystem.readdir('/tmp')).find((x) => x.name === 'sparse')
      assert.equal(listed.size, 5 * 2 ** 30)
      await sb.filesystem.remove('/tmp/sparse')
      assert.equal(await sb.filesystem.readFile('/etc/hostname'), (await sb.runCommand('cat /etc/hostname')).stdout)
    })

    test('an endless stream: output stops at maxOutputBytes with ERR_OUTPUT_LIMIT, streamed or buffered, and the command is ended', async () => {
      // No timeout: only the limit, enforced as the bytes arrive, ends these.
      let streamed = 0
      const e1 = await failsWithin(GRACE_MS, sb.runCommand('yes', { onStdout: (d) => { streamed += Buffer.byteLength(d) } }), 'a streamed yes')
      assert.equal(e1.code, 'ERR_OUTPUT_LIMIT', e1.message)
      assert.ok(streamed <= MAX_OUTPUT, `${streamed} bytes streamed`)
      const e2 = await failsWithin(GRACE_MS, sb.runCommand('yes'), 'a buffered yes')
      assert.equal(e2.code, 'ERR_OUTPUT_LIMIT', e2.message)
      // Closing the channel ends `yes` (SIGPIPE); give it a bounded while.
      const left = await sb.runCommand('for i in $(seq 100); do pgrep -x yes >/dev/null || exit 0; sleep 0.1; done; exit 1')
      assert.equal(left.exitCode, 0, 'no yes left running')
    })

    /* One directory of 120,000 entries for both huge-directory cases, made
       once, which remove() then deletes. In /dev/shm, a tmpfs as /tmp was:
       on the machine's root disk (an ext4 image on the host's disk) making
       and unlinking them is I/O the host's other work slows down, and these
       cases are about the size of a listing, not about the disk. */
    let huge = null
    const hugeDir = () => {
      if (!huge) {
        const dir = `/dev/shm/many-${tag()}`
        huge = sb.runCommand('python3', ['-c',
          'import os, sys\nd = sys.argv[1]\nos.mkdir(d)\nfor i in range(120000):\n    os.close(os.open(f"{d}/{i}", os.O_CREAT | os.O_WRONLY))\n', dir])
          .then((made) => { assert.equal(made.exitCode, 0, made.stderr); return dir })
      }
      return huge
    }

    test('a huge directory: readdir refuses more entries than the native bound with ERR_TOO_MANY_ENTRIES; the next call works', async () => {
      const dir = await hugeDir()
      const e = await failsWithin(FILE_MS + GRACE_MS, sb.filesystem.readdir(dir), 'readdir of 120,000 entries')
      assert.equal(e.code, 'ERR_TOO_MANY_ENTRIES', e.message)
      assert.equal((await sb.filesystem.readdir('/etc')).some((x) => x.name === 'hostname'), true)
    })

    test('a huge directory: remove() deletes it whatever its size', async () => {
      const dir = await hugeDir()
      // 120,000 unlinks are more than the default 60 s opTimeoutMs allows on
      // a loaded 2-core machine: this case is about bounded memory and
      // deleting everything, so it gives the call the time it needs.
      const patient = await provider(srv, { appName: sb.sandboxId.split(':')[0], opTimeoutMs: 300000 })
        .sandbox.getById(sb.sandboxId)
      try {
        await within(300000 + GRACE_MS, patient.filesystem.remove(dir), 'remove of 120,000 entries')
        assert.equal(await sb.filesystem.exists(dir), false)
      } finally {
        await sb.runCommand('rm', ['-rf', dir])
      }
    })
  })
})
