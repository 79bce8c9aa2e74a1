'use strict'
// Loads the compiled addon.  The raw binding is internal: lib/index.js is the
// public surface.
const fs = require('fs')
const path = require('path')

const candidates = [
  path.join(__dirname, '..', 'build', 'Release', 'fly.node'),
  path.join(__dirname, '..', 'build', 'Debug', 'fly.node')
]

// The shared libraries an ELF64 little-endian file names as DT_NEEDED, or
// null when the file is not one (another platform: nothing to check).
function elfNeeded (file) {
  const b = fs.readFileSync(file)
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) return null
  const phoff = Number(b.readBigUInt64LE(32))
  const phentsize = b.readUInt16LE(54)
  const phnum = b.readUInt16LE(56)
  const loads = []
  let dyn = null
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize
    if (at + 56 > b.length) return null
    const seg = {
      type: b.readUInt32LE(at),
      offset: Number(b.readBigUInt64LE(at + 8)),
      vaddr: Number(b.readBigUInt64LE(at + 16)),
      filesz: Number(b.readBigUInt64LE(at + 32))
    }
    if (seg.type === 1) loads.push(seg) // PT_LOAD
    if (seg.type === 2) dyn = seg // PT_DYNAMIC
  }
  if (dyn === null) return []
  const toOffset = (vaddr) => {
    const seg = loads.find((s) => vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
    return seg ? vaddr - seg.vaddr + seg.offset : -1
  }
  const names = []
  let strtab = -1
  const end = Math.min(dyn.offset + dyn.filesz, b.length)
  for (let at = dyn.offset; at + 16 <= end; at += 16) {
    const tag = Number(b.readBigInt64LE(at))
    if (tag === 0) break // DT_NULL
    if (tag === 1) names.push(Number(b.readBigUInt64LE(at + 8))) // DT_NEEDED
    if (tag === 5) strtab = toOffset(Number(b.readBigUInt64LE(at + 8))) // DT_STRTAB
  }
  if (strtab < 0) return null
  return names.map((off) => {
    const from = strtab + off
    const nul = b.indexOf(0, from)
    return b.toString('latin1', from, nul < 0 ? b.length : nul)
  })
}

// Debian's node-gyp links every addon against Debian's shared libnode (the
// whole of Node 18 as a library).  Loaded into any other Node, that is a second
// V8 in the process and it segfaults, so refuse before dlopen when this
// process has not already mapped the very libnode the addon names.
function checkLibnode (file) {
  let needed
  try {
    needed = elfNeeded(file)
  } catch {
    return // unreadable: require() reports it
  }
  const libnode = (needed || []).find((n) => /^libnode\.so(\.|$)/.test(n))
  if (libnode === undefined) return
  let maps
  try {
    maps = fs.readFileSync('/proc/self/maps', 'latin1')
  } catch {
    return
  }
  const mapped = maps.split('\n').some((line) => path.basename(line.trim().split(/\s+/)[5] || '').startsWith(libnode))
  if (mapped) return
  const nodeDir = path.dirname(process.execPath)
  const err = new Error('@computesdk/fly: ' + file + ' is linked against ' + libnode +
    ' (the shared library of another Node.js, e.g. Debian\'s nodejs package, built with Debian\'s node-gyp), ' +
    'but this is Node ' + process.version + ' at ' + process.execPath + ', which does not use it: loading the ' +
    'addon would crash the process. Rebuild it with this Node and the npm that comes with it: ' +
    'PATH=' + nodeDir + ':$PATH npm rebuild @computesdk/fly (or `bin/setup` / `npm run build` in the package).')
  err.code = 'FLY_NATIVE_MISMATCH'
  throw err
}

let binding = null
let firstError = null
for (const file of candidates) {
  if (!fs.existsSync(file)) continue
  checkLibnode(file)
  try {
    binding = require(file)
    break
  } catch (err) {
    if (firstError === null) firstError = err
  }
}

if (binding === null) {
  // As a dependency (under node_modules) the fix is a rebuild from the
  // user's project, after approving the install script where npm blocks
  // it; in a clone of this repository it is the install there.
  const asDependency = __dirname.split(path.sep).includes('node_modules')
  const how = asDependency
    ? 'From your project run `npm rebuild @computesdk/fly` (if npm blocks dependencies\' install scripts, ' +
      'first `npm install-scripts approve @computesdk/fly`, or add it to `allowScripts` in package.json)'
    : 'Run `npm install` (or `npm run build`) in this checkout'
  const err = new Error('@computesdk/fly: the native addon is not built (' +
    (firstError ? firstError.message : 'build/Release/fly.node is missing') + '). ' + how +
    '; the build needs the Debian packages libcurl4-openssl-dev libssh2-1-dev libcjson-dev libssl-dev ' +
    'pkg-config and a C compiler.')
  err.code = 'FLY_NATIVE_MISSING'
  throw err
}

// Join the native I/O thread before the process's atexit handlers run (see
// fly_napi_shutdown in src/loop.c).
process.once('exit', () => binding.shutdown())

module.exports = binding
