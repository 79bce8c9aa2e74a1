'use strict'
// bin/fly-local: prints the URL and token, serves the API with the token it
// was given, registers itself where a provider with no token finds it, and
// exits 0 on SIGINT, unregistered.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { spawn, spawnSync } = require('child_process')

const ROOT = path.join(__dirname, '..', '..')

function tmpRegistry (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-local-reg-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'run', 'instance.json')
}

// Starts the CLI; resolves { child, url, out, exited } once it has printed
// its token (and its registration line, when it registers).
async function startCli (t, args, env) {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'fly-local'), ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)))
  t.after(() => child.kill('SIGINT'))
  const out = await new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      if (/^registered in .*\n/m.test(buf) || /not registered/.test(buf)) resolve(buf)
    })
    child.on('exit', (code) => reject(new Error(`fly-local exited ${code}: ${buf}`)))
  })
  const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)[1]
  return { child, url, out, exited }
}

// A program run as a user would, with no Fly token and no hostname.
function userProgram (registry, code) {
  const env = { ...process.env, FLY_LOCAL_REGISTRY: registry }
  delete env.FLY_API_TOKEN
  delete env.FLY_API_HOSTNAME
  return spawnSync(process.execPath, ['-e', code], { cwd: ROOT, env, encoding: 'utf8', timeout: 120000 })
}

test('prints the URL and token, serves the API, and stops on SIGINT', async (t) => {
  const registry = tmpRegistry(t)
  const { child, url, out, exited } = await startCli(t, ['--listen', '127.0.0.1:0', '--token', 'cli-token-abc'], { FLY_LOCAL_REGISTRY: registry })
  assert.match(out, /FLY_API_TOKEN=cli-token-abc/)
  const r = await fetch(`${url}/v1/apps?org_slug=personal`, { headers: { authorization: 'Bearer cli-token-abc' } })
  assert.equal(r.status, 200)
  await r.text()
  child.kill('SIGINT')
  assert.equal(await exited, 0)
})

test('a program with no token finds the running fly-local (saying so once); once it stops, the error names both ways forward', async (t) => {
  const registry = tmpRegistry(t)
  const { child, url, exited } = await startCli(t, ['--listen', '127.0.0.1:0'], { FLY_LOCAL_REGISTRY: registry })
  // The token is a credential: root's alone.
  assert.equal(fs.statSync(registry).mode & 0o777, 0o600)
  assert.equal(fs.statSync(path.dirname(registry)).mode & 0o777, 0o700)

  const run = userProgram(registry, `
    const { fly } = require('.')
    ;(async () => {
      const provider = fly()
      const sb = await provider.sandbox.create()
      const r = await sb.runCommand('echo', ['from', 'fly-local'])
      const again = await provider.sandbox.list()
      console.log(JSON.stringify({ out: r.stdout, listed: again.some((s) => s.sandboxId === sb.sandboxId) }))
      await sb.destroy()
    })().catch((e) => { console.error(e.code, e.message); process.exit(1) })`)
  assert.equal(run.status, 0, run.stderr)
  assert.deepEqual(JSON.parse(run.stdout), { out: 'from fly-local\n', listed: true })
  const said = run.stderr.split('\n').filter((l) => l.includes('using fly-local'))
  assert.deepEqual(said, [`@computesdk/fly: no FLY_API_TOKEN; using fly-local at ${url} (registered in ${registry})`])

  child.kill('SIGINT')
  assert.equal(await exited, 0)
  assert.equal(fs.existsSync(registry), false, 'unregistered on exit')
  const none = userProgram(registry, `
    require('.').fly().sandbox.create().catch((e) => { console.log(e.code); console.log(e.message) })`)
  const [code, message] = none.stdout.split('\n')
  assert.equal(code, 'FLY_UNAUTHORIZED')
  assert.match(message, /set FLY_API_TOKEN/)
  assert.match(message, /run fly-local on this machine/)
})

test('a registration left by a fly-local that is gone is not used', (t) => {
  const registry = tmpRegistry(t)
  fs.mkdirSync(path.dirname(registry), { recursive: true })
  const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' })
  fs.writeFileSync(registry, JSON.stringify({ url: 'http://127.0.0.1:1', token: 't', pid: Number(dead.stdout) }), { mode: 0o600 })
  const r = userProgram(registry, `
    require('.').fly().sandbox.list().catch((e) => console.log(e.code, e.message))`)
  assert.match(r.stdout, /^FLY_UNAUTHORIZED .*no longer running/)
})

test('the first create on a host without the built image fails naming the command that builds it', (t) => {
  const images = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-local-noimg-'))
  t.after(() => fs.rmSync(images, { recursive: true, force: true }))
  const r = spawnSync(process.execPath, ['-e', `
    const { start } = require('./lib/local')
    const { fly } = require('.')
    ;(async () => {
      const srv = await start({ quiet: true })
      try {
        await fly({ apiToken: srv.token, apiHostname: srv.url }).sandbox.create()
      } catch (e) { console.log(e.code); console.log(e.message) }
      await srv.stop()
    })()`], { cwd: ROOT, env: { ...process.env, FLY_LOCAL_IMAGES_DIR: images }, encoding: 'utf8', timeout: 120000 })
  const [code, message] = r.stdout.split('\n')
  assert.equal(code, 'FLY_MACHINE_FAILED', r.stderr)
  assert.ok(message.includes(path.join(ROOT, 'docker', 'setup-host.sh')), message)
})
