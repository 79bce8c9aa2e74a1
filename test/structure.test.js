'use strict'
// The structure the code keeps (ARCHITECTURE.md): no import circle in lib/,
// the transport wrapped generically for wake on use, the executor protocol
// written once, one way to wipe a secret in src/.
const test = require('node:test')
const assert = require('node:assert')
const fs = require('fs')
const path = require('path')
const { wakeful } = require('../lib/pause')

const root = path.join(__dirname, '..')
const read = (...p) => fs.readFileSync(path.join(root, ...p), 'utf8')

function jsFiles (dir) {
  const out = []
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) out.push(...jsFiles(p))
    else if (e.name.endsWith('.js')) out.push(p)
  }
  return out
}

function resolveLocal (from, spec) {
  const base = path.resolve(path.dirname(from), spec)
  for (const p of [base, `${base}.js`, path.join(base, 'index.js')]) {
    if (fs.existsSync(p) && fs.statSync(p).isFile()) return p
  }
  return null
}

test('lib/ has no import circle, lazy require() inside functions included', () => {
  const graph = new Map()
  for (const f of jsFiles(path.join(root, 'lib'))) {
    const deps = []
    for (const m of fs.readFileSync(f, 'utf8').matchAll(/require\(\s*['"](\.{1,2}\/[^'"]*)['"]\s*\)/g)) {
      const to = resolveLocal(f, m[1])
      if (to) deps.push(to)
    }
    graph.set(f, deps)
  }
  assert.ok(graph.size > 20, 'the modules were found')
  const state = new Map() // 1: on the path, 2: done
  const circles = []
  const visit = (f, trail) => {
    state.set(f, 1)
    for (const d of graph.get(f) || []) {
      if (state.get(d) === 1) circles.push([...trail, f, d].slice([...trail, f].indexOf(d)).map((p) => path.relative(root, p)))
      else if (!state.has(d)) visit(d, [...trail, f])
    }
    state.set(f, 2)
  }
  for (const f of graph.keys()) if (!state.has(f)) visit(f, [])
  assert.deepStrictEqual(circles, [])
})

test('wakeful wraps every call of a transport (nested ones and ones added later), not its connection controls', async () => {
  const calls = []
  const sb = {
    sandboxId: 'app:m1',
    state: 'started',
    metadata: {},
    _ctx: { config: {}, state: { paused: new Map(), inFlight: new Map(), lastUse: new Map() } }
  }
  const t = {
    name: 'fake',
    exec: async (s, x) => { calls.push(['exec', s._ctx.state.inFlight.get(s.sandboxId), x]); return x },
    start: async (s, x) => { calls.push(['start', s._ctx.state.inFlight.get(s.sandboxId), x]); return x },
    files: { read: async (s, p) => { calls.push(['read', s._ctx.state.inFlight.get(s.sandboxId), p]); return p } },
    check: async () => 'check',
    probe: async () => 'probe',
    close: async () => 'close',
    kept: () => false
  }
  const w = wakeful(t)
  assert.strictEqual(w.name, 'fake')
  assert.strictEqual(w.raw, t)
  assert.ok(Object.isFrozen(w) && Object.isFrozen(w.files))
  for (const k of ['check', 'probe', 'close', 'kept']) assert.strictEqual(w[k], t[k], k)
  assert.strictEqual(await w.exec(sb, 1), 1)
  assert.strictEqual(await w.start(sb, 2), 2)
  assert.strictEqual(await w.files.read(sb, '/x'), '/x')
  // Each ran inside awake(): counted in flight while it ran, and last use noted.
  assert.deepStrictEqual(calls, [['exec', 1, 1], ['start', 1, 2], ['read', 1, '/x']])
  assert.strictEqual(sb._ctx.state.inFlight.size, 0)
  assert.ok(sb._ctx.state.lastUse.get('app:m1') > 0)
})

test('the executor protocol is written once: docker/flyexec_proto.h, included by both ends', () => {
  const proto = read('docker', 'flyexec_proto.h')
  for (const name of ['FLY_FRAME_HDR', 'FLY_FRAME_MAX', 'FLY_EXEC_VERSION', 'FLY_EXEC_MAGIC', 'FLY_EXEC_STDIN_WINDOW']) {
    assert.match(proto, new RegExp(`#define ${name}\\b`), name)
  }
  assert.match(proto, /FLY_FRAME_HELLO = 0x81/)
  assert.match(read('docker', 'flyexec.c'), /#include "flyexec_proto.h"/)
  assert.match(read('docker', 'flyproc.c'), /#include "flyexec_proto.h"/)
  assert.match(read('src', 'fly.h'), /#include "\.\.\/docker\/flyexec_proto.h"/)
  assert.match(read('docker', 'Dockerfile'), /^COPY flyexec\.c flyproc\.c flyexec_proto\.h flyio\.h \/src\//m)
  // No second definition of a frame type, limit or version anywhere else.
  const others = [path.join('docker', 'flyexec.c'), path.join('docker', 'flyproc.c'),
    ...fs.readdirSync(path.join(root, 'src')).map((f) => path.join('src', f))]
  for (const f of others) {
    const code = read(f).replace(/\/\*[\s\S]*?\*\//g, '')
    assert.doesNotMatch(code, /=\s*0x8[1-7]\b/, `${f} defines a frame type`)
    assert.doesNotMatch(code, /#define\s+(FLY_|FX_)\w*(VERSION|MAX_PAYLOAD|FRAME_HDR|FRAME_MAX|HDR|STDIN_WINDOW|MAGIC)\b/,
      `${f} defines a protocol constant`)
  }
})

test('src/ wipes secrets one way (OPENSSL_cleanse in buf.c), never with a memset the compiler may drop', () => {
  for (const f of fs.readdirSync(path.join(root, 'src'))) {
    const code = read('src', f)
    if (f !== 'buf.c') assert.doesNotMatch(code, /OPENSSL_cleanse\(/, `${f} wipes on its own`)
    assert.doesNotMatch(code, /memset\([^;]*strlen/, `${f} wipes a string with memset`)
    assert.doesNotMatch(code, /\bwipe_free\b/, `${f} has a wipe of its own`)
  }
  assert.match(read('src', 'buf.c'), /OPENSSL_cleanse\(p, n\)/)
})
