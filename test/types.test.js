'use strict'
// lib/index.d.ts compiles against a usage file under --strict.
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('child_process')
const path = require('path')

test('index.d.ts: the usage file type-checks with tsc --strict', () => {
  const tsc = require.resolve('typescript/bin/tsc')
  const r = spawnSync(process.execPath, [tsc, '--strict', '--noEmit', '--esModuleInterop', '--skipLibCheck',
    '--module', 'commonjs', '--target', 'es2020', '--moduleResolution', 'node', '--types', 'node',
    path.join(__dirname, 'fixtures', 'usage.ts')], { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stdout + r.stderr)
})

test('the ESM entry exports the same fly()', async () => {
  const esm = await import(path.join(__dirname, '..', 'lib', 'index.mjs'))
  const cjs = require('..')
  assert.equal(esm.fly, cjs.fly)
  assert.equal(esm.default, cjs.fly)
})
