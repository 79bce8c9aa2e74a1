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

// ---- the README's programs under tsc --strict (issue 22) ----
//
// Every ```js block of README.md, as a TypeScript user would have it (a
// require() becomes an import), compiled with `tsc --strict` in projects
// set up as a user's: ES module projects ("type": "module") under
// moduleResolution node16, nodenext and bundler get every block (top-level
// await included); CommonJS projects under node16, nodenext and node10 get
// the blocks written in CommonJS form (a CommonJS module cannot have
// top-level await: TS1378; the README shows the CommonJS form for that).
// Each project also default-imports the provider and hands it to
// ComputeSDK's front door (compute.setConfig).
const fs = require('fs')
const os = require('os')

const ROOT = path.join(__dirname, '..')

function readmeBlocks () {
  const md = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')
  return [...md.matchAll(/^```js\n([\s\S]*?)^```$/gm)].map((m) => m[1])
}

/* `const { a, b } = require('m')` → `import { a, b } from 'm'` */
function toTs (code) {
  return code.replace(/^const (\{[^}]*\}|\w+) = require\(('[^']+')\)$/gm, (_, names, mod) =>
    names.startsWith('{') ? `import ${names} from ${mod}` : `import ${names} = require(${mod})`)
}

const DEFAULT_IMPORT = `import fly from '@computesdk/fly'
import { compute } from 'computesdk'
import type { FlySnapshot } from '@computesdk/fly'
import type { FlyLocalServer } from '@computesdk/fly/local'

export async function main (srv: FlyLocalServer): Promise<void> {
  compute.setConfig({ provider: fly({ apiHostname: srv.url, apiToken: srv.token }) })
  const snaps: FlySnapshot[] = await fly().snapshot.list()
  const when: Date = snaps[0].createdAt
  void when
}
`

const PROJECTS = [
  { name: 'esm-node16', type: 'module', module: 'node16', resolution: 'node16' },
  { name: 'esm-nodenext', type: 'module', module: 'nodenext', resolution: 'nodenext' },
  { name: 'esm-bundler', type: 'module', module: 'esnext', resolution: 'bundler' },
  { name: 'cjs-node16', type: 'commonjs', module: 'node16', resolution: 'node16' },
  { name: 'cjs-nodenext', type: 'commonjs', module: 'nodenext', resolution: 'nodenext' },
  { name: 'cjs-node10', type: 'commonjs', module: 'commonjs', resolution: 'node10' }
]

let projects
test.before(() => {
  projects = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-types-'))
})
test.after(() => {
  if (projects) fs.rmSync(projects, { recursive: true, force: true })
})

for (const p of PROJECTS) {
  test(`README's programs type-check with tsc --strict: ${p.name}`, () => {
    const dir = path.join(projects, p.name)
    fs.mkdirSync(path.join(dir, 'node_modules', '@computesdk'), { recursive: true })
    fs.symlinkSync(ROOT, path.join(dir, 'node_modules', '@computesdk', 'fly'))
    fs.symlinkSync(path.join(ROOT, 'node_modules', 'computesdk'), path.join(dir, 'node_modules', 'computesdk'))
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: p.name, private: true, type: p.type }))
    const files = []
    readmeBlocks().forEach((code, i) => {
      const cjsForm = /\brequire\(/.test(code)
      if (p.type === 'commonjs' && !cjsForm) return // top-level await: ES modules only
      files.push(`block${i + 1}.ts`)
      fs.writeFileSync(path.join(dir, files[files.length - 1]), toTs(code))
    })
    files.push('default-import.ts')
    fs.writeFileSync(path.join(dir, 'default-import.ts'), DEFAULT_IMPORT)
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        target: 'es2022',
        module: p.module,
        moduleResolution: p.resolution,
        esModuleInterop: true,
        types: ['node'],
        typeRoots: [path.join(ROOT, 'node_modules', '@types')]
      },
      files
    }, null, 2))
    assert.ok(files.length >= 2, files.join(' '))
    const tsc = require.resolve('typescript/bin/tsc')
    const r = spawnSync(process.execPath, [tsc, '-p', dir], { cwd: dir, encoding: 'utf8' })
    assert.equal(r.status, 0, `${files.join(' ')}:\n${r.stdout}${r.stderr}`)
  })
}

test('@arethetypeswrong/cli finds no problem in the packed package', (t) => {
  const major = Number(process.versions.node.split('.')[0])
  if (major < 20) {
    t.skip(`@arethetypeswrong/cli needs Node >= 20 (this is ${process.version}); the tsc projects above resolve the same entries`)
    return
  }
  const attw = path.join(ROOT, 'node_modules', '@arethetypeswrong', 'cli', 'dist', 'index.js')
  const r = spawnSync(process.execPath, [attw, '--pack', '.', '--format', 'ascii'], {
    cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' }, timeout: 180000
  })
  assert.equal(r.status, 0, r.stdout + r.stderr)
  assert.match(r.stdout, /No problems found/)
})
