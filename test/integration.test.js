'use strict'
// The provider end to end, the same assertions on two targets: fly-local
// (always) and real Fly.io (when FLY_API_TOKEN is set; FLY_ORG, FLY_APP_NAME,
// FLY_IMAGE and FLY_REGION are read as fly() reads them; from outside Fly's
// private network the provider goes through Fly's edge by itself).
// fly-local's half runs twice: from the host, and from an "outside" network
// namespace that reaches only fly-local's API and edge (no route to the
// machines), with nothing but apiToken, appName, apiHostname, edgeUrl and
// edgeCa configured.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('path')
const crypto = require('crypto')
const { startLocal, provider, rejects } = require('./helpers/fly')
const { outsideNetwork } = require('./helpers/outside')
const { fly } = require('..')

const REAL = process.env.FLY_API_TOKEN
  ? null
  : 'real Fly.io: FLY_API_TOKEN is not set (set it, and FLY_ORG, to run this half)'

function suite (target, makeProvider, skip) {
  test(`${target}: create, runCode, runCommand, files, lifecycle, errors`, { skip }, async (t) => {
    const p = await makeProvider(t)
    const sb = await p.sandbox.create({ metadata: { suite: 'integration' }, envs: { SUITE_VAR: 'set at create' } })
    let destroyed = false
    t.after(() => destroyed || sb.destroy())
    assert.match(sb.sandboxId, /^[a-z0-9-]+:[0-9a-z]+$/)

    await t.test('runCode', async () => {
      const py = await sb.runCode('import sys\nprint("py", sys.version_info[0])')
      assert.deepEqual([py.exitCode, py.stdout, py.language], [0, 'py 3\n', 'python'])
      const js = await sb.runCode('console.log("js", 6 * 7)', 'node')
      assert.deepEqual([js.exitCode, js.stdout, js.language], [0, 'js 42\n', 'node'])
      const boom = await sb.runCode('raise SystemExit(3)', 'python')
      assert.equal(boom.exitCode, 3)
    })

    await t.test('runCommand', async () => {
      const args = await sb.runCommand('printf', ['%s|', "it's", '$(id)', 'two words'])
      assert.deepEqual([args.exitCode, args.stdout], [0, "it's|$(id)|two words|"])
      const sh = await sb.runCommand('echo out; echo err >&2; echo "$SUITE_VAR $X"; pwd; exit 5', { cwd: '/tmp', env: { X: 'x' } })
      assert.deepEqual([sh.exitCode, sh.stdout, sh.stderr], [5, 'out\nset at create x\n/tmp\n', 'err\n'])
      const chunks = []
      const st = await sb.runCommand('echo a; echo b', { onStdout: (d) => chunks.push(d) })
      assert.equal(chunks.join(''), st.stdout)
      assert.equal(st.stdout, 'a\nb\n')
    })

    await t.test('files', async () => {
      const fs = sb.filesystem
      const dir = '/home/sandbox/integration'
      await fs.mkdir(`${dir}/sub`)
      const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
      await fs.writeFile(`${dir}/bytes`, bytes)
      await fs.writeFile(`${dir}/text`, 'héllo ✓')
      assert.ok(bytes.equals(await fs.readFile(`${dir}/bytes`, { encoding: null })))
      assert.equal(await fs.readFile(`${dir}/text`), 'héllo ✓')
      assert.equal((await sb.runCommand('cat', [`${dir}/text`])).stdout, 'héllo ✓')
      const entries = (await fs.readdir(dir)).map((e) => [e.name, e.type, e.size]).sort()
      assert.deepEqual(entries, [['bytes', 'file', 256], ['sub', 'directory', entries[1][2]], ['text', 'file', Buffer.byteLength('héllo ✓')]])
      assert.equal(await fs.exists(`${dir}/text`), true)
      await fs.remove(dir)
      assert.equal(await fs.exists(dir), false)
    })

    await t.test('errors', async () => {
      const missing = await rejects(sb.filesystem.readFile('/home/sandbox/no-such-file'))
      assert.equal(missing.code, 'SFTP_NO_SUCH_FILE')
      assert.equal(missing.path, '/home/sandbox/no-such-file')
      assert.equal((await rejects(p.sandbox.getById('not an id'))).code, 'ERR_INVALID_ARG')
      assert.equal((await rejects(sb.runCommand('true', { env: { 'A-B': '1' } }))).code, 'ERR_INVALID_ARG')
      assert.equal((await rejects(p.sandbox.create({ envs: { 'BAD-NAME': 'x' } }))).code, 'ERR_INVALID_ARG')
    })

    await t.test('lifecycle', async () => {
      const info = await sb.getInfo()
      assert.deepEqual([info.id, info.provider, info.status, info.metadata.suite], [sb.sandboxId, 'fly', 'running', 'integration'])
      assert.ok((await p.sandbox.list()).some((s) => s.sandboxId === sb.sandboxId))
      const again = await p.sandbox.getById(sb.sandboxId)
      assert.equal((await again.runCommand('echo again')).stdout, 'again\n')
      await sb.destroy()
      destroyed = true
      assert.equal(await p.sandbox.getById(sb.sandboxId), null)
      assert.ok(!(await p.sandbox.list()).some((s) => s.sandboxId === sb.sandboxId))
      assert.equal((await rejects(sb.runCommand('true'))).code, 'FLY_NOT_FOUND')
      await sb.destroy() // idempotent
    })
  })
}

suite('fly-local', async (t) => provider(await startLocal(t)))

test('fly-local from outside the private network: the seed usage through the edge', async (t) => {
  const out = await outsideNetwork(t)
  const srv = await startLocal(t, { host: out.hostAddr })
  const config = {
    apiToken: srv.token,
    appName: `out-${crypto.randomBytes(4).toString('hex')}`,
    apiHostname: srv.url,
    edgeUrl: srv.edgeUrl,
    edgeCa: srv.edgeCa
  }
  const child = path.join(__dirname, 'fixtures', 'outside-child.js')
  const r = await out.exec(process.execPath, [child], {
    // Only what the child needs, and the sanitizer runtime when this suite
    // runs under it (an instrumented addon loads only with it preloaded).
    env: {
      PATH: process.env.PATH,
      FLY_OUTSIDE_CONFIG: JSON.stringify(config),
      ...Object.fromEntries(['LD_PRELOAD', 'ASAN_OPTIONS', 'UBSAN_OPTIONS'].filter((k) => process.env[k]).map((k) => [k, process.env[k]]))
    },
    timeout: 120000
  })
  const line = r.stdout.trim().split('\n').pop()
  assert.ok(line, `the child printed nothing: ${r.stderr}`)
  const got = JSON.parse(line)
  assert.equal(got.error, undefined, `${r.stdout}${r.stderr}`)
  assert.deepEqual(got.python, [0, 'py 3\n', 'python'])
  assert.deepEqual(got.node, [0, 'js 42\n', 'node'])
  assert.deepEqual(got.args, [0, "it's|$(id)|two words|"])
  assert.deepEqual(got.sh, [5, 'out\nset at create\n', 'err\n'])
  assert.equal(got.stream[1], '1\n2\n3\n')
  assert.equal(got.stream[2], '1\n2\n3\n')
  assert.ok(got.stream[0] >= 2, `streamed in ${got.stream[0]} chunk(s)`)
  assert.deepEqual(got.files, [true, 'héllo ✓', ['bytes', 'text'], true])
  assert.deepEqual(got.info, [got.sandboxId, 'running', 'outside'])
  assert.equal(got.tokenShown, false)
  assert.equal(got.afterDestroy, null)
  // the child made its machine through the edge: the 443 service, and the
  // app's shared IPv4 and IPv6
  const ips = await fetch(`${srv.url}/v1/apps/${config.appName}/ip_assignments`, { headers: { authorization: `Bearer ${srv.token}` } })
  const list = (await ips.json()).ips
  assert.deepEqual(list.map((x) => x.shared).sort(), [false, true])

  // The outside reaches the API and the edge (above), never a machine
  // directly, even given routes to them: fly-local's rules drop it.
  const p = provider(srv, { reach: 'private' })
  const sb = await p.sandbox.create() // removed by srv.stop()
  const addrs = (await sb.runCommand('hostname -I')).stdout.trim().split(/\s+/)
  assert.ok(addrs.length >= 1)
  await out.addRoute('100.0.0.0/8')
  await out.addRoute6('fdaa::/16')
  assert.ok(addrs.some((x) => x.includes(':')) && addrs.some((x) => !x.includes(':')), addrs.join(' '))
  for (const a of addrs) {
    const probe = await out.exec(process.execPath, ['-e', `
      const s = require('net').connect({ host: ${JSON.stringify(a)}, port: 2222 })
      const t = setTimeout(() => { console.log('timeout'); process.exit(0) }, 2000)
      s.on('connect', () => { console.log('connected'); process.exit(0) })
      s.on('error', (e) => { console.log(e.code); process.exit(0) })`])
    // routed (not ENETUNREACH), and dropped or refused by the host
    assert.ok(!['connected', 'ENETUNREACH', ''].includes(probe.stdout.trim()), `${a}:2222 from outside: ${probe.stdout}${probe.stderr}`)
  }
})
suite('real Fly.io', async () => fly({ apiToken: process.env.FLY_API_TOKEN }), REAL)
