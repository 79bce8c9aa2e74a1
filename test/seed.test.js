'use strict'
// The seed README's usage, as written there (with local packages in place
// of downloads: nothing leaves this machine), against fly-local.
const test = require('node:test')
const assert = require('node:assert/strict')
const { startLocal, appName } = require('./helpers/fly')
const { fly } = require('..')

test('the seed usage runs unchanged', async (t) => {
  const srv = await startLocal(t)
  const saved = { token: process.env.FLY_API_TOKEN, app: process.env.FLY_APP_NAME }
  process.env.FLY_API_TOKEN = srv.token
  process.env.FLY_APP_NAME = appName('seed')
  t.after(() => {
    for (const [k, v] of [['FLY_API_TOKEN', saved.token], ['FLY_APP_NAME', saved.app]]) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  })

  const provider = fly({
    apiToken: process.env.FLY_API_TOKEN,
    appName: process.env.FLY_APP_NAME,
    region: 'ord',
    image: 'registry.fly.io/your-app/sandbox:latest',
    apiHostname: srv.url
  })

  const sandbox = await provider.sandbox.create({
    templateId: 'registry.fly.io/your-app/sandbox:latest'
  })

  const pythonResult = await sandbox.runCode(`
print("Hello from Python!")
import sys
print(f"Python version: {sys.version}")
`)
  assert.equal(pythonResult.exitCode, 0, pythonResult.stderr)
  assert.match(pythonResult.output, /^Hello from Python!\nPython version: 3\./)

  const nodeResult = await sandbox.runCode(`
console.log("Hello from Node.js!");
console.log("Node version:", process.version);
`, 'node')
  assert.equal(nodeResult.exitCode, 0, nodeResult.stderr)
  assert.match(nodeResult.output, /^Hello from Node\.js!\nNode version: v\d+/)

  const commandResult = await sandbox.runCommand('ls', ['-la'])
  assert.equal(commandResult.exitCode, 0)
  assert.match(commandResult.stdout, /^total \d+/)

  // "Install packages and persist": local packages instead of the registry.
  await sandbox.filesystem.mkdir('/home/sandbox/pkgs/seedpy/seedpy')
  await sandbox.filesystem.writeFile('/home/sandbox/pkgs/seedpy/seedpy/__init__.py', 'VALUE = 42\n')
  await sandbox.filesystem.writeFile('/home/sandbox/pkgs/seedpy/pyproject.toml',
    '[project]\nname = "seedpy"\nversion = "1.0"\n[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
  const pip = await sandbox.runCommand('pip', ['install', '--no-index', '--no-build-isolation', '/home/sandbox/pkgs/seedpy'])
  assert.equal(pip.exitCode, 0, pip.stderr)
  await sandbox.filesystem.mkdir('/home/sandbox/pkgs/seedjs')
  await sandbox.filesystem.writeFile('/home/sandbox/pkgs/seedjs/package.json',
    JSON.stringify({ name: 'seedjs', version: '1.0.0', main: 'index.js' }))
  await sandbox.filesystem.writeFile('/home/sandbox/pkgs/seedjs/index.js', 'module.exports = 7\n')
  const npm = await sandbox.runCommand('npm', ['install', '-g', '--offline', '--no-audit', '--no-fund', '/home/sandbox/pkgs/seedjs'])
  assert.equal(npm.exitCode, 0, npm.stderr)

  // Both persist to the next commands.
  const py = await sandbox.runCommand('python3', ['-c', 'import seedpy; print(seedpy.VALUE)'])
  assert.equal(py.stdout, '42\n', py.stderr)
  const js = await sandbox.runCommand('node', ['-e', 'console.log(require(require("path").join(process.env.NPM_CONFIG_PREFIX, "lib/node_modules/seedjs")))'])
  assert.equal(js.stdout, '7\n', js.stderr)

  const info = await sandbox.getInfo()
  assert.equal(info.id, sandbox.sandboxId)
  assert.equal(info.status, 'running')

  await sandbox.destroy()
  assert.equal(await provider.sandbox.getById(sandbox.sandboxId), null)
})
