'use strict'
// Process handles and terminals (lib/commands.js, docker/flyproc.c) against
// fly-local: processes live in the sandbox's daemon, not in a connection,
// so they are reached from another provider process, survive a cut
// connection, the provider's exit and a pause/resume with every byte of
// output; stdin, kill of a group, terminals (bash, python3, resize,
// reattach), typed errors at the limits, and work-aware idle.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('path')
const { spawn } = require('child_process')
const { startLocal, provider, call, rejects, sandboxIds, waitSuspended } = require('./helpers/fly')

let srv
let p
let sb
test.before(async () => {
  srv = await startLocal()
  p = provider(srv)
  sb = await p.sandbox.create()
})
test.after(async () => {
  if (sb) await sb.destroy().catch(() => {})
  if (srv) await srv.stop()
})

const ROOT = path.join(__dirname, '..')

// Runs `body` (an async function body with `p`, a provider on the same app,
// and `sb`, the sandbox) in a child Node process; resolves with what it
// printed on stdout, once it has exited 0.
async function inChild (sandboxId, body) {
  const script = `
    const { fly } = require(${JSON.stringify(ROOT)})
    const p = fly({ apiToken: process.env.T, apiHostname: process.env.U, appName: process.env.A })
    ;(async () => {
      const sb = await p.sandbox.getById(process.env.S)
      ${body}
    })().then(() => process.exit(0), (e) => { console.error(e); process.exit(1) })`
  const child = spawn(process.execPath, ['-e', script], {
    env: { ...process.env, T: srv.token, U: srv.url, A: sandboxId.split(':')[0], S: sandboxId },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  const code = await new Promise((resolve) => child.on('exit', resolve))
  assert.equal(code, 0, 'the child provider process failed')
  return out
}

// Resolves when `pred()` holds, checked on each call of the returned
// `poke`; rejects after `ms`.
function until (pred, ms, what) {
  let done
  const p = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)
    done = () => { if (pred()) { clearTimeout(timer); resolve() } }
  })
  return { promise: p, poke: () => done() }
}

const lines = (n) => Array.from({ length: n }, (_, i) => `${i + 1}\n`).join('')

test('a server started with start() is reached from another provider process through connect(), output from offset 0', async () => {
  const server = 'python3 -u -c "import http.server as h, sys; print(\'serving\', flush=True); ' +
    'h.HTTPServer((\'127.0.0.1\', 8765), h.SimpleHTTPRequestHandler).serve_forever()"'
  let seen = ''
  const ready = until(() => seen.includes('serving'), 30000, 'the server to start')
  const h = await sb.commands.start(server, { onStdout: (s) => { seen += s; ready.poke() } })
  assert.match(h.id, /^[A-Za-z0-9_-]+$/)
  assert.ok(h.pid > 1)
  await ready.promise
  // A request so the server logs to stderr.
  assert.equal((await sb.runCommand('curl -sf -o /dev/null http://127.0.0.1:8765/ && echo ok')).stdout, 'ok\n')
  const out = await inChild(sb.sandboxId, `
    const listed = await sb.commands.list()
    const me = listed.find((x) => x.id === ${JSON.stringify(h.id)})
    let stdout = '', stderr = ''
    const h = await sb.commands.connect(${JSON.stringify(h.id)}, { onStdout: (s) => { stdout += s }, onStderr: (s) => { stderr += s } })
    const deadline = Date.now() + 20000
    while (!stderr.includes('GET / ') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    await h.kill()
    const r = await h.wait()
    console.log(JSON.stringify({ me, pid: h.pid, stdout, stderr, r }))`)
  const got = JSON.parse(out)
  assert.equal(got.me.running, true)
  assert.equal(got.me.pid, h.pid)
  assert.equal(got.pid, h.pid)
  assert.equal(got.stdout, 'serving\n', 'the whole stdout from offset 0')
  assert.match(got.stderr, /"GET \/ HTTP\/1.1" 200/)
  assert.equal(got.r.exitCode, 137)
  // This handle sees the same end.
  const r = await h.wait()
  assert.equal(r.exitCode, 137)
  assert.equal(r.stdout, 'serving\n')
  const again = (await sb.commands.list()).find((x) => x.id === h.id)
  assert.equal(again.running, false)
  assert.equal(again.exitCode, 137)
})

test('stdin round trips: cat echoes what is sent, closeStdin ends it; bytes unchanged', async () => {
  let out = ''
  const echoed = until(() => out === 'one\n', 20000, 'the echo')
  const h = await sb.commands.start('cat', { onStdout: (s) => { out += s; echoed.poke() } })
  await h.sendStdin('one\n')
  await echoed.promise
  await h.sendStdin(Buffer.from('twö\n'))
  await h.sendStdin(new Uint8Array([0x33, 0x0a]))
  await h.closeStdin()
  const r = await h.wait()
  assert.deepEqual(r, { stdout: 'one\ntwö\n3\n', stderr: '', exitCode: 0, durationMs: r.durationMs })
  // start(program, args): no shell.
  const a = await sb.commands.start('printf', ['%s|', 'a b', '$HOME'])
  assert.equal((await a.wait()).stdout, 'a b|$HOME|')
})

test('disconnect() stops following; the process runs on and connect() finds it', async () => {
  const h = await sb.commands.start('echo first; read x; echo "got $x"')
  await h.disconnect()
  assert.equal((await rejects(h.wait())).code, 'PROCESS_DETACHED')
  const info = (await sb.commands.list()).find((x) => x.id === h.id)
  assert.equal(info.running, true)
  const again = await sb.commands.connect(h.id)
  await again.sendStdin('it\n')
  assert.equal((await again.wait()).stdout, 'first\ngot it\n')
})

test('kill() ends a process group that ignores SIGTERM, without blocking', async () => {
  let out = ''
  const started = until(() => /^\d+\n$/.test(out), 20000, 'the child pid')
  const h = await sb.commands.start("trap '' TERM; sh -c \"trap '' TERM; exec sleep 600\" & echo $!; wait",
    { onStdout: (s) => { out += s; started.poke() } })
  await started.promise
  const child = Number(out.trim())
  assert.equal(await h.kill('SIGTERM'), true)
  assert.equal((await sb.commands.list()).find((x) => x.id === h.id).running, true, 'SIGTERM is ignored')
  const t0 = Date.now()
  assert.equal(await h.kill(), true)
  const r = await h.wait()
  assert.equal(r.exitCode, 137)
  assert.equal(r.signal, 9)
  assert.ok(Date.now() - t0 < 20000)
  assert.equal((await sb.runCommand(`kill -0 ${child}`)).exitCode, 1, 'the group\'s other member is gone too')
  assert.equal(await h.kill(), false, 'an ended process is not signalled')
})

test('a handle survives its connection being cut, with no byte lost', async () => {
  const N = 400
  let out = ''
  const some = until(() => out.length > 20, 20000, 'some output')
  const h = await sb.commands.start(`for i in $(seq 1 ${N}); do echo $i; sleep 0.01; done`, { onStdout: (s) => { out += s; some.poke() } })
  await some.promise
  assert.ok(await srv.killSshd(sandboxIds(sb).machine) > 0)
  const r = await h.wait()
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, lines(N))
  assert.equal(out, lines(N), 'the callbacks got every byte once')
  assert.equal(h.lostBytes, 0)
})

test('a process outlives the provider process that started it; another one reattaches with its whole output', async () => {
  const N = 300
  const out = await inChild(sb.sandboxId, `
    const h = await sb.commands.start('for i in $(seq 1 ${N}); do echo $i; sleep 0.005; done; echo done >&2; exit 7')
    console.log(h.id)`)
  const id = out.trim()
  const h = await sb.commands.connect(id)
  const r = await h.wait()
  assert.equal(r.stdout, lines(N))
  assert.equal(r.stderr, 'done\n')
  assert.equal(r.exitCode, 7)
  // From an offset: the tail only.
  const tail = await (await sb.commands.connect(id, { from: { stdout: lines(N).length - 4, stderr: 5 } })).wait()
  assert.equal(tail.stdout, `${N}\n`)
  assert.equal(tail.stderr, '')
})

test('a handle survives pause() and resume(), with no byte lost', async () => {
  const N = 600
  let out = ''
  const some = until(() => out.length > 20, 20000, 'some output')
  const h = await sb.commands.start(`for i in $(seq 1 ${N}); do echo $i; sleep 0.005; done`, { onStdout: (s) => { out += s; some.poke() } })
  await some.promise
  await sb.pause()
  await sb.resume()
  const r = await h.wait()
  assert.equal(r.stdout, lines(N))
  assert.equal(out, lines(N))
  assert.equal(r.exitCode, 0)
})

test('a terminal runs bash -i and python3 interactively, sees resize, and reattaches', async () => {
  let screen = Buffer.alloc(0)
  const wants = []
  const onData = (b) => {
    assert.ok(Buffer.isBuffer(b))
    screen = Buffer.concat([screen, b])
    for (const w of wants) w.poke()
  }
  const expect = (re, what) => {
    const w = until(() => re.test(screen.toString('utf8')), 20000, what)
    wants.push(w)
    w.poke()
    return w.promise.catch((err) => {
      err.message += `; the terminal showed: ${JSON.stringify(screen.toString('utf8').slice(-600))}`
      throw err
    })
  }
  const t = await sb.pty.create({ cols: 100, rows: 30, env: { PS1: 'ps1> ' }, onData })
  assert.ok(t.pid > 1)
  await t.sendInput('echo "$TERM $(tput cols) $(tput lines)"; tty; [[ $- == *i* ]] && echo inter""active\n')
  await expect(/xterm-256color 100 30/, 'TERM and the size')
  await expect(/\/dev\/pts\/\d+/, 'a terminal')
  await expect(/\ninteractive/, 'an interactive shell')
  // The window size reaches the program (SIGWINCH from TIOCSWINSZ).
  await t.sendInput("trap 'echo WINCH $(tput cols)x$(tput lines)' WINCH; echo trap-$((2 + 3))\n")
  await expect(/trap-5/, 'the trap set')
  await t.resize({ cols: 132, rows: 43 })
  await t.sendInput('echo size $(tput cols)\n')
  await expect(/size 132/, 'the new width')
  await expect(/WINCH 132x43/, 'SIGWINCH')
  // Job control: a foreground job stopped by ^Z, listed by jobs.
  // (The job is in the foreground once it prints: bash gives it the
  // terminal before it runs.)
  await t.sendInput("sh -c 'echo fg-$((1 + 1)); exec sleep 600'\n")
  await expect(/fg-2/, 'the foreground job')
  await t.sendInput(Buffer.from([0x1a]))
  await expect(/Stopped\s+sh -c/, 'job control')
  await t.sendInput('kill %1\n')
  // python3's REPL.
  await t.sendInput('python3 -q\n')
  await expect(/>>> /, 'the python prompt')
  await t.sendInput('print(6 * 7)\n')
  await expect(/\r\n42\r\n/, 'python output')
  await t.sendInput(Buffer.from([0x04]))
  await t.sendInput('echo back-in-$((6 * 7))\n')
  await expect(/back-in-42/, 'bash again')
  // Reattached: the ring replayed from 0, then live.
  let again = Buffer.alloc(0)
  const replayed = until(() => again.includes('back-in-42') && again.includes('xterm-256color 100 30'), 20000, 'the replay')
  const t2 = await sb.pty.connect(t.id, { onData: (b) => { again = Buffer.concat([again, b]); replayed.poke() } })
  await replayed.promise
  assert.equal(t2.pid, t.pid)
  const live = until(() => again.includes('from-the-2nd'), 20000, 'live output on the second handle')
  const poke = setInterval(() => live.poke(), 20)
  await t2.sendInput('echo from-the-$((1 + 1))nd; exit 3\n')
  await live.promise.finally(() => clearInterval(poke))
  assert.equal((await t.wait()).exitCode, 3)
  assert.equal((await t2.wait()).exitCode, 3)
})

test('limits and misuse give typed errors', async () => {
  assert.equal((await rejects(sb.commands.connect('no-such-process'))).code, 'PROCESS_NOT_FOUND')
  assert.equal((await rejects(sb.commands.kill('no-such-process'))).code, 'PROCESS_NOT_FOUND')
  assert.equal((await rejects(sb.commands.start(''))).code, 'ERR_INVALID_ARG')
  assert.equal((await rejects(sb.commands.start('true', { env: { 'A=B': 'x' } }))).code, 'ERR_INVALID_ARG')
  assert.equal((await rejects(sb.commands.start('true', { user: 'root' }))).code, 'PROCESS_ROOT_UNSUPPORTED')
  assert.equal((await rejects(sb.pty.create({ cols: 0 }))).code, 'ERR_INVALID_ARG')
  assert.equal((await rejects(sb.commands.start('nonexistent-program-x', []))).code, 'PROCESS_START_FAILED')
  assert.equal((await rejects(sb.commands.start('true', { cwd: '/nonexistent-dir' }))).code, 'PROCESS_BAD_CWD')
  // stdin the process does not read: at most 1 MiB waits in the daemon.
  const h = await sb.commands.start('sleep 600')
  await h.sendStdin(Buffer.alloc(1 << 20, 0x61))
  assert.equal((await rejects(h.sendStdin(Buffer.alloc(1 << 20, 0x62)))).code, 'PROCESS_STDIN_FULL')
  assert.equal((await rejects(h.sendStdin(Buffer.alloc((1 << 20) + 1)))).code, 'ERR_INVALID_ARG')
  assert.equal((await rejects(sb.commands.start('true', { env: { BIG: 'x'.repeat(1 << 20) } }))).code, 'ERR_INVALID_ARG')
  await h.kill()
  await h.wait()
  assert.equal((await rejects(h.sendStdin('x'))).code, 'PROCESS_NOT_RUNNING')
  // Not a terminal.
  const c = await sb.commands.start('true')
  await c.wait()
  assert.equal((await rejects(sb.pty.resize(c.id, { cols: 10, rows: 10 }))).code, 'PROCESS_NOT_PTY')
  // The exec transport has no handles.
  const e = provider(srv, { transport: 'exec', appName: sb.sandboxId.split(':')[0] })
  const esb = await e.sandbox.getById(sb.sandboxId)
  assert.equal((await rejects(esb.commands.start('true'))).code, 'PROCESS_UNSUPPORTED_TRANSPORT')
  assert.equal((await rejects(esb.pty.create())).code, 'PROCESS_UNSUPPORTED_TRANSPORT')
})

test('the daemon holds at most 1,024 processes: PROCESS_LIMIT while all run, room again once they end', async () => {
  // 1,025 STARTs in one relay run, straight to the daemon (lib/procwire.js).
  const { T, Writer, Decoder } = require('../lib/procwire')
  const { RELAY } = require('../lib/commands')
  const machine = sb.getInstance()
  const send = async (frames) => {
    const replies = []
    const dec = new Decoder(({ type, tag, r }) => replies.push({ type, tag, code: type === T.ERROR ? r.str() : null }))
    const r = await machine._ctx.transport.exec(machine, { argv: [RELAY] }, { stdin: Buffer.concat(frames), bytes: true, onChunk: (s, b) => s === 1 && dec.push(b) })
    assert.equal(r.exitCode, 0)
    return replies
  }
  const running = (await sb.commands.list()).filter((x) => x.running).length
  const start = (i) => {
    const w = new Writer().str(`lim-${i}`).u8(0).u32(0).u32(0).u32(0).str('').u32(0).u32(2).str('sleep').str('600')
    return w.frame(T.START, i)
  }
  const fit = 1024 - running
  let kills
  try {
    const replies = await send(Array.from({ length: fit + 1 }, (_, i) => start(i)))
    const started = replies.filter((x) => x.type === T.STARTED).length
    const limited = replies.filter((x) => x.code === 'PROCESS_LIMIT').map((x) => x.tag)
    // Every ended process of the earlier tests was forgotten to make room;
    // the running ones and these fill the table.
    assert.equal(started, fit, `started ${started} (${running} running before)`)
    assert.deepEqual(limited, [fit])
  } finally {
    kills = await send(Array.from({ length: fit }, (_, i) => new Writer().str(`lim-${i}`).u32(9).frame(T.SIGNAL, i)))
  }
  assert.equal(kills.filter((x) => x.type === T.OK).length, fit)
  // Once they have ended, a new process takes the oldest ended one's place.
  const deadline = Date.now() + 30000
  let h
  for (;;) {
    try {
      h = await sb.commands.start('echo room')
      break
    } catch (err) {
      if (err.code !== 'PROCESS_LIMIT' || Date.now() > deadline) throw err
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  assert.equal((await h.wait()).stdout, 'room\n')
})

test('runCommand user: root runs as root through the exec endpoint; the sandbox user stays the default', async () => {
  const r = await sb.runCommand('id -u; pwd', { user: 'root' })
  assert.deepEqual([r.stdout, r.exitCode], ['0\n/root\n', 0])
  assert.equal((await sb.runCommand('id -u')).stdout, '1000\n')
  assert.equal((await rejects(sb.runCommand('id -u', { user: 'admin' }))).code, 'ERR_INVALID_ARG')
  // The sandbox user cannot reach root through the daemon's socket: the
  // daemon runs as the sandbox user and refuses to run as root.
  await (await sb.commands.start('true')).wait()
  const who = await sb.runCommand('ps -o user= -C flyproc | sort -u')
  assert.equal(who.stdout, 'sandbox\n')
})

test('idle: a sandbox does not suspend while a foreground handle runs, then does, after its onIdle hook', async () => {
  const app = sb.sandboxId.split(':')[0]
  const idle = await p.sandbox.create({ idleTimeout: 1500, onIdle: 'date +%s%3N > ~/idle-hook-ran' })
  try {
    const { machine } = sandboxIds(idle)
    // Started by a provider process that then exits: no connection is left,
    // only the work.  `sleep 6`: well past the idle timeout.
    const out = await inChild(idle.sandboxId, `
      const h = await sb.commands.start('sleep 6; date +%s%3N')
      console.log(h.id)`)
    const id = out.trim()
    await waitSuspended(srv, { app, machine })
    // Woken by the next calls: the process had ended (and printed when)
    // before the hook ran, and the suspend came after both.
    const ended = Number((await (await idle.commands.connect(id)).wait()).stdout)
    const hook = Number((await idle.runCommand('cat ~/idle-hook-ran')).stdout)
    const events = (await call(srv, 'machine.get', { app, machine })).body.events || []
    const suspend = events.filter((ev) => ev.status === 'suspended').map((ev) => ev.timestamp).sort().pop()
    // (Without the daemon's busy file the idle watch ran the hook and
    // suspended ~1.5 s after the child exited, with `sleep 6` still running.)
    assert.ok(ended > 0 && hook >= ended, `the hook ran at ${hook}, before the process ended at ${ended}`)
    assert.ok(suspend >= hook, `suspended at ${suspend}, before the hook ran at ${hook}`)
  } finally {
    await idle.destroy().catch(() => {})
  }
})
