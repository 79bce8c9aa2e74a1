'use strict'
// fly-local's image store: the sandbox image's root filesystem, built from
// docker/ and cached under /var/lib/fly-local/images.
//
// An image is two read-only layers, stacked by each machine's overlayfs:
//   base-<hash>  a Debian 12 root (debootstrap --variant=minbase) provisioned
//                by docker/provision.sh, the script the Fly Dockerfile runs;
//                <hash> covers that script, the host CAs it copies in and
//                this builder, so a rebuild with no change is a no-op;
//   top-<hash>   /opt/computesdk (entrypoint.sh, sshd_config, idle-watch, the
//                code interpreter's interp and interp-node.js) and the
//                command executor, the process daemon and the edge bridge
//                (docker/flyexec.c, docker/flyproc.c, docker/flyedge.c),
//                built static with the host's cc, cheap to make, so editing
//                them does not rebuild the base.
// Both are owned by the shifted ids (see ID_BASE): root inside a machine is
// host uid ID_BASE, so the image's root-owned files are root's inside.
//
// Run as `node lib/local/image.js build` (docker/setup-host.sh does).
const { spawnSync, spawn } = require('child_process')
const crypto = require('crypto')
const fs = require('fs')
const path = require('path')

const DOCKER_DIR = path.resolve(__dirname, '../../docker')
const IMAGES_DIR = process.env.FLY_LOCAL_IMAGES_DIR || '/var/lib/fly-local/images'
const CA_DIR = '/usr/local/share/ca-certificates'
/* One id range for every machine's user namespace: container id N is host
   id ID_BASE + N (ARCHITECTURE.md says why one range, not one per machine). */
const ID_BASE = 0x70000000
const ID_COUNT = 65536
const DEFAULT_IMAGE = 'computesdk-fly-sandbox'
const BUILDER_VERSION = '1'
const NODE_SPEC = ['node@20', 'npm@10']

function hashFiles (files, extra) {
  const h = crypto.createHash('sha256').update(extra)
  for (const f of files) {
    h.update(`\0${path.basename(f)}\0`)
    h.update(fs.readFileSync(f))
  }
  return h.digest('hex').slice(0, 16)
}

function hostCAs () {
  try {
    return fs.readdirSync(CA_DIR).filter((n) => n.endsWith('.crt')).sort().map((n) => path.join(CA_DIR, n))
  } catch (_) {
    return []
  }
}

/* Hashed once per process: a running fly-local keeps the image it found. */
let baseHashCache = null
function baseHash () {
  if (!baseHashCache) baseHashCache = computeBaseHash()
  return baseHashCache
}

function computeBaseHash () {
  return hashFiles([path.join(DOCKER_DIR, 'provision.sh'), ...hostCAs()],
    `base ${BUILDER_VERSION} ${NODE_SPEC.join(' ')} ${process.arch}`)
}

const TOP_FILES = [['entrypoint.sh', 0o755], ['sshd_config', 0o644], ['idle-watch', 0o755], ['guest-firewall.nft', 0o644],
  /* the egress policy's applier (root's: the entrypoint and the exec API run it) */
  ['egress', 0o755],
  /* the URL key's sync at boot (lib/urls.js); both read the metadata with flymeta.py */
  ['url-sync', 0o755], ['flymeta.py', 0o644],
  /* the code interpreter's driver and node kernel (lib/interpreter.js) */
  ['interp', 0o755], ['interp-node.js', 0o644]]
/* docker/flyexec.c and docker/flyproc.c (the process daemon), at the paths
   the client starts them from (src/ssh.c, lib/commands.js); both include
   docker/flyexec_proto.h and docker/flyio.h (found beside them), which the
   hash covers.  docker/flyedge.c beside them (the entrypoint starts it, as
   root), static with libcrypto.a (libssl-dev) for SHA-1/SHA-256, with
   docker/flyurl.c (the sandbox ports' URLs).  Each: [source, program,
   extra link arguments, more sources]. */
const EXECUTABLES = [['flyexec.c', 'flyexec', []], ['flyproc.c', 'flyproc', []],
  ['flyedge.c', 'flyedge', () => staticCryptoLibs(), ['flyurl.c']],
  /* the metrics sampler (sandbox.getMetrics) and the inotify watcher
     (filesystem.watch) */
  ['flymetrics.c', 'flymetrics', []], ['flywatch.c', 'flywatch', []]]
const EXECUTOR_HDRS = ['flyexec_proto.h', 'flyio.h', 'flyurl.h']
const EXECUTOR_DIR = 'usr/local/libexec/computesdk'

let topHashCache = null
function topHash () {
  if (!topHashCache) {
    topHashCache = hashFiles([...TOP_FILES.map(([n]) => n), ...EXECUTABLES.flatMap(([src, , , more]) => [src, ...(more || [])]), ...EXECUTOR_HDRS].map((n) => path.join(DOCKER_DIR, n)),
      `top ${BUILDER_VERSION} ${process.arch}`)
  }
  return topHashCache
}

/* What a static link of libcrypto needs on this host: pkg-config's
   --static list, and the compression libraries a newer OpenSSL is built
   with (Debian 13's 3.5 pulls in zstd; Debian 12's 3.0 does not) when their
   static archives are there, since not every libcrypto.pc names them. */
function staticCryptoLibs () {
  const r = spawnSync('pkg-config', ['--static', '--libs', 'libcrypto'], { encoding: 'utf8' })
  const libs = r.status === 0 ? r.stdout.trim().split(/\s+/).filter(Boolean) : ['-lcrypto', '-ldl']
  for (const lib of ['zstd', 'z']) {
    if (libs.includes(`-l${lib}`)) continue
    const a = spawnSync(process.env.CC || 'cc', [`-print-file-name=lib${lib}.a`], { encoding: 'utf8' }).stdout.trim()
    if (path.isAbsolute(a) && fs.existsSync(a)) libs.push(`-l${lib}`)
  }
  if (!libs.includes('-pthread') && !libs.includes('-lpthread')) libs.push('-lpthread')
  return libs
}

/* The executor and the process daemon, static so they need nothing from
   the image's libc. */
function buildExecutor (root) {
  const dir = path.join(root, EXECUTOR_DIR)
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 })
  for (let d = dir; d !== root; d = path.dirname(d)) fs.chmodSync(d, 0o755)
  for (const [src, name, extra, more] of EXECUTABLES) {
    const libs = typeof extra === 'function' ? extra() : extra
    const out = path.join(dir, name)
    run(process.env.CC || 'cc', ['-static', '-O2', '-o', out, path.join(DOCKER_DIR, src), ...(more || []).map((m) => path.join(DOCKER_DIR, m)), ...libs])
    fs.chmodSync(out, 0o755)
  }
}

function baseDir () { return path.join(IMAGES_DIR, `base-${baseHash()}`) }
function topDir () { return path.join(IMAGES_DIR, `top-${topHash()}`) }

/* Image references name built images; the default image is also what any
   app's own image reference runs (fly-local cannot pull registries). With
   FLY_LOCAL_STRICT_IMAGES=1 only the built names resolve. */
function imageNameOf (ref) {
  let s = String(ref || '')
  const at = s.indexOf('@')
  if (at >= 0) s = s.slice(0, at)
  const slash = s.lastIndexOf('/')
  const colon = s.lastIndexOf(':')
  if (colon > slash) s = s.slice(0, colon)
  return s.slice(slash + 1)
}

class ImageError extends Error {
  constructor (msg) {
    super(msg)
    this.code = 'FLY_LOCAL_IMAGE'
  }
}

/* The read-only layers of an image, upper first, for overlayfs' lowerdir;
   throws ImageError when the image is not built. */
function resolve (ref) {
  const name = imageNameOf(ref)
  if (name !== DEFAULT_IMAGE && process.env.FLY_LOCAL_STRICT_IMAGES === '1') {
    throw new ImageError(`image ${JSON.stringify(String(ref))} is not built in fly-local (built: ${DEFAULT_IMAGE})`)
  }
  const base = path.join(baseDir(), 'rootfs')
  if (!fs.existsSync(path.join(baseDir(), 'ready'))) {
    // The command by its full path: from a dependency, bin/setup means
    // nothing in the user's own project.
    throw new ImageError(`image ${DEFAULT_IMAGE} is not built on this host for this version of the package; ` +
      `build it once, as root, with: ${path.join(DOCKER_DIR, 'setup-host.sh')} (a few minutes)`)
  }
  markUsed(baseDir())
  return [ensureTop(), base]
}

/* Layers another definition of docker/ uses (another version of this
   package on the host, another checkout) are kept while they are in use:
   each boot stamps its base (at most hourly), and a build removes only
   other definitions' layers unused for PRUNE_AFTER_MS. */
const PRUNE_AFTER_MS = 7 * 24 * 3600 * 1000
const stamped = new Map()
function markUsed (dir) {
  const now = Date.now()
  if (now - (stamped.get(dir) || 0) < 3600 * 1000) return
  stamped.set(dir, now)
  try {
    fs.writeFileSync(path.join(dir, 'used'), `${new Date(now).toISOString()}\n`)
  } catch {} // a read-only store: pruning then goes by the build's time
}

function lastUsed (dir) {
  for (const f of ['used', 'ready', '.']) {
    try {
      return fs.statSync(path.join(dir, f)).mtimeMs
    } catch {}
  }
  return 0
}

/* Shift a tree's ownership into the machines' id range (lchown clears
   setuid bits: put them back). */
function shiftTree (root) {
  const stack = [root]
  while (stack.length) {
    const p = stack.pop()
    const st = fs.lstatSync(p)
    if (st.uid >= ID_BASE) continue
    fs.lchownSync(p, st.uid + ID_BASE, st.gid + ID_BASE)
    if (!st.isSymbolicLink() && (st.mode & 0o6000)) fs.chmodSync(p, st.mode & 0o7777)
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) stack.push(path.join(p, n))
  }
}

function ensureTop () {
  const dir = topDir()
  const root = path.join(dir, 'rootfs')
  if (fs.existsSync(path.join(dir, 'ready'))) return root
  const tmp = `${dir}.tmp-${process.pid}-${crypto.randomBytes(3).toString('hex')}`
  fs.mkdirSync(path.join(tmp, 'rootfs', 'opt', 'computesdk'), { recursive: true, mode: 0o755 })
  for (const [n, mode] of TOP_FILES) {
    const dst = path.join(tmp, 'rootfs', 'opt', 'computesdk', n)
    fs.copyFileSync(path.join(DOCKER_DIR, n), dst)
    fs.chmodSync(dst, mode)
  }
  for (const d of ['rootfs', 'rootfs/opt', 'rootfs/opt/computesdk']) fs.chmodSync(path.join(tmp, d), 0o755)
  buildExecutor(path.join(tmp, 'rootfs'))
  shiftTree(path.join(tmp, 'rootfs'))
  fs.writeFileSync(path.join(tmp, 'ready'), `${topHash()}\n`)
  try {
    fs.renameSync(tmp, dir)
  } catch (e) {
    /* another instance made it first */
    fs.rmSync(tmp, { recursive: true, force: true })
    if (!fs.existsSync(path.join(dir, 'ready'))) throw e
  }
  return root
}

/* The Debian mirror apt uses here (deb822 or one-line sources). */
function debianMirror () {
  const files = ['/etc/apt/sources.list']
  try {
    for (const n of fs.readdirSync('/etc/apt/sources.list.d')) files.push(path.join('/etc/apt/sources.list.d', n))
  } catch (_) { /* none */ }
  for (const f of files) {
    let s = ''
    try { s = fs.readFileSync(f, 'utf8') } catch (_) { continue }
    for (const line of s.split('\n')) {
      const m = /^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+\/debian)\/?\s*/.exec(line)
      if (m && !/security/.test(m[1])) return m[1]
    }
  }
  return 'http://deb.debian.org/debian'
}

function run (cmd, args, opts) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024, ...opts })
  if (r.status !== 0) {
    const out = `${r.stdout || ''}${r.stderr || ''}`.split('\n').slice(-15).join('\n')
    throw new Error(`${cmd} ${args.slice(0, 3).join(' ')} failed (${r.error ? r.error.message : `exit ${r.status}`}):\n${out}`)
  }
  return r
}

/* Runs provision.sh in the new root, in a private mount namespace so the
   /proc and /dev mounts it needs vanish with it; its step lines pass on. */
function provision (root, say) {
  const script = [
    'set -e',
    'mount -t proc proc "$R/proc"',
    'mount --rbind /dev "$R/dev"',
    'cp /etc/resolv.conf "$R/etc/resolv.conf"',
    'exec chroot "$R" /bin/sh /tmp/computesdk-src/provision.sh'
  ].join('\n')
  return new Promise((done, reject) => {
    const child = spawn('unshare', ['--mount', '--propagation', 'private', '--', '/bin/sh', '-c', script], {
      env: {
        PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
        R: root,
        SRC: '/tmp/computesdk-src',
        LOG: '/var/log/computesdk-provision.log',
        LANG: 'C.UTF-8'
      },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let err = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (d) => { for (const l of d.split('\n')) if (l) say(`  ${l}`) })
    child.stderr.on('data', (d) => { err = (err + d).slice(-4000) })
    child.on('close', (code) => {
      if (code === 0) return done()
      let log = ''
      try { log = fs.readFileSync(path.join(root, 'var/log/computesdk-provision.log'), 'utf8').slice(-3000) } catch (_) { /* none */ }
      reject(new Error(`provision.sh failed (exit ${code}):\n${err}\n${log}`))
    })
  })
}

/* rm -rf, unless something is still mounted below dir (a bind of the
   host's /dev must never be emptied). */
function removeUnmounted (dir) {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4])
  if (mounts.some((m) => m && (m === dir || m.startsWith(`${dir}/`)))) return
  fs.rmSync(dir, { recursive: true, force: true })
}

/* Build the base layer unless this definition is built already. */
async function build ({ say = console.log } = {}) {
  const dir = baseDir()
  const t0 = Date.now()
  if (fs.existsSync(path.join(dir, 'ready'))) {
    ensureTop()
    say(`fly-local image: ${DEFAULT_IMAGE} is up to date (${path.basename(dir)})`)
    return { built: false, dir, ms: Date.now() - t0 }
  }
  fs.mkdirSync(IMAGES_DIR, { recursive: true, mode: 0o755 })
  const tmp = `${dir}.tmp-${process.pid}`
  removeUnmounted(tmp)
  const root = path.join(tmp, 'rootfs')
  fs.mkdirSync(root, { recursive: true, mode: 0o755 })
  try {
    const mirror = debianMirror()
    say(`fly-local image: debootstrap bookworm from ${mirror}`)
    /* in a private mount namespace: the /proc and /sys debootstrap mounts
       in the new root go with it, even if it fails half way */
    run('unshare', ['--mount', '--propagation', 'private', '--', 'debootstrap', '--variant=minbase', 'bookworm', root, mirror])
    say('fly-local image: Node.js 20 and npm from the npm registry')
    const stage = path.join(tmp, 'node-stage')
    run('npm', ['install', '--prefix', stage, '--no-audit', '--no-fund', '--loglevel=error', 'node@20'],
      { env: { ...process.env, npm_config_update_notifier: 'false' } })
    const nodeBin = fs.realpathSync(path.join(stage, 'node_modules', 'node', 'bin', 'node'))
    fs.mkdirSync(path.join(root, 'opt/node/bin'), { recursive: true })
    fs.copyFileSync(nodeBin, path.join(root, 'opt/node/bin/node'))
    fs.chmodSync(path.join(root, 'opt/node/bin/node'), 0o755)
    run('npm', ['install', '-g', '--prefix', path.join(root, 'opt/node'), '--no-audit', '--no-fund', '--loglevel=error', NODE_SPEC[1]])
    fs.rmSync(stage, { recursive: true, force: true })
    const src = path.join(root, 'tmp/computesdk-src')
    fs.mkdirSync(path.join(src, 'ca-certificates'), { recursive: true })
    fs.copyFileSync(path.join(DOCKER_DIR, 'provision.sh'), path.join(src, 'provision.sh'))
    for (const ca of hostCAs()) fs.copyFileSync(ca, path.join(src, 'ca-certificates', path.basename(ca)))
    say('fly-local image: docker/provision.sh')
    await provision(root, say)
    fs.rmSync(src, { recursive: true, force: true })
    fs.writeFileSync(path.join(root, 'etc/resolv.conf'), '')
    say('fly-local image: shifting ownership to the machines\' id range')
    shiftTree(root)
    fs.writeFileSync(path.join(tmp, 'ready'), `${baseHash()}\n`)
    fs.renameSync(tmp, dir)
  } catch (e) {
    removeUnmounted(tmp)
    throw e
  }
  ensureTop()
  /* other definitions' layers go once unused for a while (a running
     instance keeps its mounts; see markUsed) */
  const keep = new Set([dir, topDir()])
  for (const n of fs.readdirSync(IMAGES_DIR)) {
    const p = path.join(IMAGES_DIR, n)
    if (/^(base|top)-[0-9a-f]+$/.test(n) && !keep.has(p) && Date.now() - lastUsed(p) > PRUNE_AFTER_MS) {
      fs.rmSync(p, { recursive: true, force: true })
    }
  }
  const size = run('du', ['-sm', dir]).stdout.toString().split('\t')[0]
  say(`fly-local image: built ${DEFAULT_IMAGE} in ${Math.round((Date.now() - t0) / 1000)} s, ${size} MB`)
  return { built: true, dir, ms: Date.now() - t0 }
}

module.exports = { resolve, build, imageNameOf, ImageError, ID_BASE, ID_COUNT, DEFAULT_IMAGE, IMAGES_DIR }

if (require.main === module) {
  if (process.argv[2] !== 'build') {
    console.error('usage: node lib/local/image.js build')
    process.exit(2)
  }
  build().catch((e) => {
    console.error(`fly-local image: ${e.message}`)
    process.exit(1)
  })
}
