'use strict'
// Without root, start() rejects with FLY_LOCAL_NEEDS_ROOT and the CLI exits
// 1 saying why. The children run as nobody (65534) from the start (spawned
// with uid/gid: Node refuses process.setuid/setgid when its libuv may use
// io_uring, CVE-2024-22017, as Debian 13's Node 20 does), so they run from a
// world-readable copy of what they load (a clone under /root is not).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { run } = require('../helpers/local')

const ROOT = path.join(__dirname, '..', '..')
const NOBODY = { uid: 65534, gid: 65534 }

/* What bin/fly-local needs at run time, copied where nobody can read it. */
function readableCopy (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-noroot-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  for (const p of ['package.json', 'bin', 'lib', 'docker', path.join('build', 'Release', 'fly.node')]) {
    if (fs.existsSync(path.join(ROOT, p))) fs.cpSync(path.join(ROOT, p), path.join(dir, p), { recursive: true })
  }
  const open = (p) => {
    const st = fs.statSync(p)
    fs.chmodSync(p, st.isDirectory() ? 0o755 : (st.mode & 0o111 ? 0o755 : 0o644))
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) open(path.join(p, n))
  }
  open(dir)
  return dir
}

test('start() without root rejects with FLY_LOCAL_NEEDS_ROOT', async (t) => {
  const copy = readableCopy(t)
  const r = await run(process.execPath, ['-e', `
    const local = require(${JSON.stringify(path.join(copy, 'lib', 'local'))});
    local.start().then(
      () => { console.log('started'); process.exit(0) },
      (e) => { console.log(e.code + ' ' + e.message); process.exit(1) })
  `], { cwd: copy, ...NOBODY })
  assert.equal(r.code, 1, r.stderr)
  assert.match(r.stdout, /^FLY_LOCAL_NEEDS_ROOT .*must run as root/)
})

test('the CLI without root exits 1 and says it must run as root', async (t) => {
  const copy = readableCopy(t)
  const cli = await run(process.execPath, [path.join(copy, 'bin', 'fly-local')], { cwd: copy, ...NOBODY })
  assert.equal(cli.code, 1, cli.stderr)
  assert.match(cli.stderr, /must run as root/)
})
