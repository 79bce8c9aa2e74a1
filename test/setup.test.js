'use strict'
// Installing on a machine as it comes: the addon is built against the headers
// of the Node that runs it (never downloaded), never linked against another
// Node's shared libnode, and an addon that was gets a clear error instead of
// a segfault.  Also: the setup and CI scripts pass shellcheck.
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync, execFileSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

const root = path.join(__dirname, '..')
const checkDeps = path.join(root, 'bin', 'check-deps')

function tmpdir (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-setup-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

// The environment npm gives scripts, less what would point elsewhere.
function env (extra) {
  const e = { ...process.env, ...extra }
  for (const k of Object.keys(e)) if (/^npm_config_(nodedir|node_gyp)$/i.test(k) && !(k in (extra || {}))) delete e[k]
  return e
}

test('an addon linked against another Node\'s libnode fails to load with FLY_NATIVE_MISMATCH, not a crash', (t) => {
  const dir = tmpdir(t)
  // A stand-in for Debian's libnode: loading it into this process crashes it,
  // as a second V8 does.
  fs.writeFileSync(path.join(dir, 'libnode.c'),
    '#include <signal.h>\n__attribute__((constructor)) static void second_v8(void) { raise(SIGSEGV); }\n' +
    'int fly_libnode_marker(void) { return 1; }\n')
  fs.writeFileSync(path.join(dir, 'addon.c'),
    'int fly_libnode_marker(void);\nint fly_addon_marker(void) { return fly_libnode_marker(); }\n')
  execFileSync('cc', ['-shared', '-fPIC', '-o', path.join(dir, 'libnode.so.999'), '-Wl,-soname,libnode.so.999',
    path.join(dir, 'libnode.c')])
  fs.mkdirSync(path.join(dir, 'pkg', 'lib'), { recursive: true })
  fs.mkdirSync(path.join(dir, 'pkg', 'build', 'Release'), { recursive: true })
  const addon = path.join(dir, 'pkg', 'build', 'Release', 'fly.node')
  execFileSync('cc', ['-shared', '-fPIC', '-o', addon, path.join(dir, 'addon.c'), '-Wl,--no-as-needed',
    path.join(dir, 'libnode.so.999')])
  fs.copyFileSync(path.join(root, 'lib', 'native.js'), path.join(dir, 'pkg', 'lib', 'native.js'))

  const load = ['-e', `try { require(${JSON.stringify(path.join(dir, 'pkg', 'lib', 'native.js'))}) }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); process.exit(3) }`]
  const r = spawnSync(process.execPath, load, { encoding: 'utf8', env: env({ LD_LIBRARY_PATH: dir }) })
  assert.equal(r.signal, null, 'the process crashed: ' + r.stderr)
  assert.equal(r.status, 3, r.stdout + r.stderr)
  const err = JSON.parse(r.stdout)
  assert.equal(err.code, 'FLY_NATIVE_MISMATCH')
  assert.match(err.message, /libnode\.so\.999/)
  assert.match(err.message, /npm rebuild/)
  assert.ok(err.message.includes('PATH=' + path.dirname(process.execPath)), err.message)

  // The stand-in does crash a process that loads it: the check is what saved us.
  const crash = spawnSync(process.execPath, ['-e', `process.dlopen({ exports: {} }, ${JSON.stringify(addon)})`],
    { encoding: 'utf8', env: env({ LD_LIBRARY_PATH: dir }) })
  assert.equal(crash.signal, 'SIGSEGV')
})

test('the addon this package built loads in the Node that built it', () => {
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(path.join(root, 'lib', 'native.js'))})`],
    { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
})

test('an unbuilt addon is FLY_NATIVE_MISSING naming the fix for where the package is: a rebuild from the project as a dependency, npm install in a clone', (t) => {
  const dir = tmpdir(t)
  for (const where of [path.join(dir, 'app', 'node_modules', '@computesdk', 'fly'), path.join(dir, 'clone')]) {
    fs.mkdirSync(path.join(where, 'lib'), { recursive: true })
    fs.copyFileSync(path.join(root, 'lib', 'native.js'), path.join(where, 'lib', 'native.js'))
    const r = spawnSync(process.execPath, ['-e', `try { require(${JSON.stringify(path.join(where, 'lib', 'native.js'))}) } catch (e) { console.log(e.code + ' ' + e.message) }`], { encoding: 'utf8' })
    assert.match(r.stdout, /^FLY_NATIVE_MISSING /)
    if (where.includes('node_modules')) {
      assert.match(r.stdout, /npm rebuild @computesdk\/fly/)
      assert.match(r.stdout, /npm install-scripts approve @computesdk\/fly/)
    } else {
      assert.match(r.stdout, /Run `npm install`/)
      assert.doesNotMatch(r.stdout, /npm rebuild/)
    }
  }
})

test('bin/check-deps names the fix, and downloads nothing, when this Node\'s headers are missing', (t) => {
  // A Node whose prefix has no include/node, as a bare binary would be.
  const dir = tmpdir(t)
  fs.mkdirSync(path.join(dir, 'bin'))
  const node = path.join(dir, 'bin', 'node')
  fs.copyFileSync(fs.realpathSync(process.execPath), node)
  fs.chmodSync(node, 0o755)
  const r = spawnSync(node, [checkDeps, '--build'], { encoding: 'utf8', cwd: root, env: env() })
  assert.equal(r.status, 1, r.stdout + r.stderr)
  assert.match(r.stderr, new RegExp('the headers of Node ' + process.version + ' .* are missing'))
  assert.ok(r.stderr.includes(path.join(dir, 'include', 'node')), r.stderr)
  assert.match(r.stderr, /npm_config_nodedir|libnode-dev/)
  assert.match(r.stderr, /not downloaded/)
  assert.doesNotMatch(r.stdout + r.stderr, /gyp (info|http)|downloading|nodejs\.org\/dist/i)
})

test('bin/check-deps refuses a node-gyp that links addons against libnode unless this Node uses that libnode', (t) => {
  // What Debian's node-gyp (brought by Debian's npm) looks like to us.
  const dir = tmpdir(t)
  fs.mkdirSync(path.join(dir, 'node-gyp', 'bin'), { recursive: true })
  const gyp = path.join(dir, 'node-gyp', 'bin', 'node-gyp.js')
  fs.writeFileSync(gyp, 'process.exit(0)\n')
  fs.writeFileSync(path.join(dir, 'node-gyp', 'addon.gypi'), "{ 'libraries': [ '-lnode' ] }\n")
  const r = spawnSync(process.execPath, [checkDeps], { encoding: 'utf8', cwd: root, env: env({ npm_config_node_gyp: gyp }) })
  const libnode = /\/libnode\.so[^/\s]*$/m.test(fs.readFileSync('/proc/self/maps', 'latin1'))
  if (libnode) {
    // This is Debian's Node itself: its own node-gyp is the right one.
    assert.equal(r.status, 0, r.stderr)
    return
  }
  assert.equal(r.status, 1, r.stdout + r.stderr)
  assert.match(r.stderr, /links addons against libnode/)
  assert.ok(r.stderr.includes('PATH=' + path.dirname(fs.realpathSync(process.execPath)) + ':$PATH'), r.stderr)
})

test('bin/setup and the CI scripts pass shellcheck', () => {
  const files = ['bin/setup', '.ci/run', ...fs.readdirSync(path.join(root, '.ci'))
    .filter((f) => f.endsWith('.sh')).map((f) => '.ci/' + f)]
  const r = spawnSync('shellcheck', files, { encoding: 'utf8', cwd: root })
  assert.notEqual(r.error && r.error.code, 'ENOENT', 'shellcheck is not installed (bin/setup installs it)')
  assert.equal(r.status, 0, r.stdout + r.stderr)
})
