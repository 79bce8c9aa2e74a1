'use strict'
// The sandbox's command executor (docker/flyexec.c, src/executor.c) on
// fly-local machines, whose image has it, and the channel-per-command
// fallback on a machine whose executor was removed (as with a user's own
// image on Fly).
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const { startLocal, provider, call, rejects, closeSessions, sandboxIds } = require('./helpers/fly')

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

async function asRoot (s, script) {
  const r = await call(srv, 'machine.exec', sandboxIds(s), { body: JSON.stringify({ command: ['sh', '-c', script] }) })
  return r.body
}

// Polls until check(stdout of script, run as root) holds, within 30 s.
async function eventually (s, script, check, what) {
  const until = Date.now() + 30000
  let last
  for (;;) {
    last = (await asRoot(s, script)).stdout
    if (check(last)) return
    if (Date.now() > until) assert.fail(`${what}:\n${last}`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

const visible = (env) => env.split('\n').filter((l) => !/^SSH_(CLIENT|CONNECTION)=/.test(l)).join('\n')

test('commands run under the executor, one per session, installed root-owned', async () => {
  const rs = await Promise.all(Array.from({ length: 20 }, () => sb.runCommand('echo $PPID; cat /proc/$PPID/comm')))
  const parents = new Set(rs.map((r) => r.stdout))
  assert.equal(parents.size, 1, 'every command of the session has the same parent')
  assert.match([...parents][0], /^\d+\nflyexec\n$/)
  const who = await sb.runCommand('stat -c "%U %a" /usr/local/libexec/computesdk/flyexec; ps -o user= -p $PPID')
  assert.equal(who.stdout, 'root 755\nsandbox\n', 'a root-owned binary, run as the sandbox user')
})

test('a killed executor fails its command with SSH_NO_EXIT_STATUS; the next command starts another', async () => {
  const first = (await sb.runCommand('echo $PPID')).stdout
  const err = await rejects(sb.runCommand('kill -9 $PPID; sleep 30'))
  assert.equal(err.code, 'SSH_NO_EXIT_STATUS')
  const again = await sb.runCommand('echo $PPID; cat /proc/$PPID/comm')
  assert.notEqual(again.stdout.split('\n')[0] + '\n', first)
  assert.match(again.stdout, /flyexec\n$/)
})

test("a session's end kills its running commands but not its background ones", async () => {
  const tag = crypto.randomBytes(4).toString('hex')
  const fg = `sleep ${4000 + Math.floor(Math.random() * 1000)}`
  const bg = `sleep ${5000 + Math.floor(Math.random() * 1000)}`
  const r = await sb.runCommand(`exec ${bg}`, { background: true })
  assert.equal(r.exitCode, 0)
  const running = sb.runCommand(`echo ${tag}; ${fg}`, { onStdout: () => {} }).catch((e) => e)
  await eventually(sb, 'ps -eo args', (ps) => ps.split('\n').includes(fg), 'the command started')
  await closeSessions(sb)
  assert.equal((await running).code, 'SSH_DISCONNECTED')
  await eventually(sb, 'ps -eo args', (ps) => !ps.split('\n').includes(fg), 'the running command is gone')
  const ps = (await asRoot(sb, 'ps -eo args')).stdout.split('\n')
  assert.ok(ps.includes(bg), 'the background command lives on')
})

test('without the executor (removed from the image) the same commands give the same results', async () => {
  const s = await p.sandbox.create()
  try {
    const probe = [
      ['env | LC_ALL=C sort', {}],
      ['python3', { args: ['-c', 'import os, sys, json; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ.get("V"), os.environ.get("PWD")]))', "it's", '$(x)', ''], cwd: '/tmp', env: { V: 'a b' } }],
      ['echo out; echo err >&2; exit 3', {}],
      ['nonexistent-command-12345', {}],
      ['kill -9 $$', {}],
      ['pwd', { cwd: '/no/such/dir' }],
      ['sleep 30 & sleep 30', { timeout: 500 }],
      ['echo "$SHLVL $0 $-"', {}]
    ]
    const results = async () => {
      const out = []
      for (const [cmd, opts] of probe) {
        const r = opts.args ? await s.runCommand(cmd, opts.args, opts) : await s.runCommand(cmd, opts)
        out.push({ stdout: visible(r.stdout), exitCode: r.exitCode, err: r.stderr !== '' })
      }
      const code = await s.runCode('import sys; print(sys.stdin.read() == "", 6 * 7)', 'python')
      out.push(code.stdout)
      return out
    }
    const viaExecutor = await results()
    assert.match((await s.runCommand('cat /proc/$PPID/comm')).stdout, /^flyexec\n$/)
    const rm = await asRoot(s, 'rm /usr/local/libexec/computesdk/flyexec && echo gone')
    assert.equal(rm.stdout, 'gone\n')
    await closeSessions(s)
    const viaChannels = await results()
    assert.doesNotMatch((await s.runCommand('cat /proc/$PPID/comm')).stdout, /flyexec/)
    assert.deepEqual(viaChannels, viaExecutor)
    assert.equal(viaExecutor[6].exitCode, 124)
    assert.equal(viaExecutor[4].exitCode, 137)
    const bg = await s.runCommand('sleep 4141', { background: true })
    assert.equal(bg.exitCode, 0)
  } finally {
    await s.destroy()
  }
})
