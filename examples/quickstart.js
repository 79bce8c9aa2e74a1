#!/usr/bin/env node
'use strict'
// The main job: create a sandbox, run Python and Node code and commands in
// it, install a package that persists, show its info, list it, destroy it.
//
// With FLY_API_TOKEN set it runs on Fly.io (set FLY_APP_NAME, FLY_IMAGE to
// the image built from docker/, and optionally FLY_ORG / FLY_REGION).
// Without a token it starts fly-local, the embedded Machines API emulator,
// and runs there (root needed: its machines are real namespaced sandboxes).
const { fly } = require('..')

async function main () {
  let local = null
  let config = {}
  if (!process.env.FLY_API_TOKEN) {
    local = await require('../lib/local').start({ quiet: true })
    config = { apiToken: local.token, apiHostname: local.url }
    console.log(`No FLY_API_TOKEN: using fly-local at ${local.url}`)
  }
  const provider = fly(config)
  let sandbox = null
  try {
    let t = Date.now()
    sandbox = await provider.sandbox.create({ metadata: { purpose: 'quickstart' } })
    console.log(`created ${sandbox.sandboxId} in ${Date.now() - t} ms`)

    const py = await sandbox.runCode(`
print("Hello from Python!")
import sys
print(f"Python version: {sys.version.split()[0]}")
`)
    process.stdout.write(`[python, exit ${py.exitCode}]\n${py.stdout}`)

    const js = await sandbox.runCode(`
console.log("Hello from Node.js!");
console.log("Node version:", process.version);
`, 'node')
    process.stdout.write(`[node, exit ${js.exitCode}]\n${js.stdout}`)

    const ls = await sandbox.runCommand('ls', ['-la', '/home/sandbox'])
    process.stdout.write(`[ls -la, exit ${ls.exitCode}]\n${ls.stdout}`)

    // A local Python package, installed with pip, still there for the next
    // command: the sandbox persists between commands.
    await sandbox.filesystem.mkdir('/home/sandbox/hello_pkg/hello_quickstart')
    await sandbox.filesystem.writeFile('/home/sandbox/hello_pkg/hello_quickstart/__init__.py',
      'def greet(name):\n    return f"hello, {name}"\n')
    await sandbox.filesystem.writeFile('/home/sandbox/hello_pkg/pyproject.toml',
      '[project]\nname = "hello-quickstart"\nversion = "0.1.0"\n\n' +
      '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    t = Date.now()
    const pip = await sandbox.runCommand('python3',
      ['-m', 'pip', 'install', '--user', '--no-index', '--no-build-isolation', '--quiet', '/home/sandbox/hello_pkg'])
    console.log(`[pip install, exit ${pip.exitCode}, ${Date.now() - t} ms]${pip.exitCode ? '\n' + pip.stderr : ''}`)
    const use = await sandbox.runCommand('python3', ['-c', 'import hello_quickstart as h; print(h.greet("quickstart"))'])
    process.stdout.write(`[import after install, exit ${use.exitCode}]\n${use.stdout}${use.stderr}`)

    const info = await sandbox.getInfo()
    console.log('info:', JSON.stringify({ ...info, createdAt: info.createdAt.toISOString() }))
    const all = await provider.sandbox.list()
    console.log(`list: ${all.map((s) => s.sandboxId).join(', ')}`)
    if (py.exitCode || js.exitCode || ls.exitCode || pip.exitCode || use.exitCode) {
      throw new Error('a step of the quickstart failed')
    }
  } finally {
    if (sandbox) {
      await sandbox.destroy()
      console.log(`destroyed ${sandbox.sandboxId}`)
    }
    if (local) await local.stop()
  }
}

main().catch((err) => {
  console.error(`quickstart failed: ${err.code ? err.code + ': ' : ''}${err.message}`)
  process.exit(1)
})
