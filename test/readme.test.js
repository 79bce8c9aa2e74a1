'use strict'
// Every ```js block of README.md is a whole program that runs as written:
// each is saved as a file (an ES module when it imports, else CommonJS) in
// a project that has this package as a dependency, and run with no Fly
// token, so the provider finds the fly-local this test registers.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { spawn } = require('child_process')
const { startLocal, call } = require('./helpers/fly')
const registry = require('../lib/local/registry')

const ROOT = path.join(__dirname, '..')

function blocks () {
  const md = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')
  return [...md.matchAll(/^```js\n([\s\S]*?)^```$/gm)].map((m) => m[1])
}

// Resolves { code, stdout, stderr } (a run past ms is killed and fails).
function run (file, env, ms) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file], { cwd: path.dirname(file), env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => { stdout += d })
    child.stderr.on('data', (d) => { stderr += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), ms)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code: signal ? signal : code, stdout, stderr })
    })
  })
}

let srv, dir, env, unregister
test.before(async () => {
  srv = await startLocal()
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-readme-'))
  // A user's project with this package (and computesdk) installed.
  fs.mkdirSync(path.join(dir, 'node_modules', '@computesdk'), { recursive: true })
  fs.symlinkSync(ROOT, path.join(dir, 'node_modules', '@computesdk', 'fly'))
  fs.symlinkSync(path.join(ROOT, 'node_modules', 'computesdk'), path.join(dir, 'node_modules', 'computesdk'))
  env = { ...process.env, FLY_LOCAL_REGISTRY: path.join(dir, 'run', 'instance.json') }
  for (const k of ['FLY_API_TOKEN', 'FLY_API_HOSTNAME', 'FLY_APP_NAME', 'FLY_SSH_PRIVATE_KEY']) delete env[k]
  const saved = process.env.FLY_LOCAL_REGISTRY
  process.env.FLY_LOCAL_REGISTRY = env.FLY_LOCAL_REGISTRY
  unregister = registry.register({ url: srv.url, token: srv.token })
  if (saved === undefined) delete process.env.FLY_LOCAL_REGISTRY
  else process.env.FLY_LOCAL_REGISTRY = saved
})
test.after(async () => {
  if (unregister) {
    process.env.FLY_LOCAL_REGISTRY = env.FLY_LOCAL_REGISTRY
    unregister()
  }
  if (srv) await srv.stop()
  if (dir) fs.rmSync(dir, { recursive: true, force: true })
})

test('README.md has its runnable examples', () => {
  assert.ok(blocks().length >= 5, `${blocks().length} js blocks`)
})

blocks().forEach((code, i) => {
  const first = code.split('\n').find((l) => l.trim() && !l.startsWith('//'))
  test(`README js block ${i + 1} runs as written: ${first}`, async () => {
    const file = path.join(dir, `block${i + 1}.${/^import /m.test(code) ? 'mjs' : 'js'}`)
    fs.writeFileSync(file, code)
    const r = await run(file, env, 240000)
    assert.equal(r.code, 0, `exit ${r.code}\n${r.stdout}\n${r.stderr}`)
    assert.ok(r.stdout.trim().length > 0, 'it printed what it ran')
    // Whatever it made on the registered fly-local, it removed.
    const apps = (await call(srv, 'app.list', {}, { query: [['org_slug', 'personal']] })).body.apps || []
    for (const a of apps) {
      const left = ((await call(srv, 'machine.list', { app: a.name })).body || [])
        .filter((m) => !['destroyed', 'destroying'].includes(m.state))
      assert.deepEqual(left.map((m) => m.id), [], `machines left in ${a.name}`)
    }
  })
})
