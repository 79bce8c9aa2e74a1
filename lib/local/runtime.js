'use strict'
// fly-local machine runtime: the host side of real sandboxes.
//
// A Host owns what one fly-local instance holds on this machine: a state
// directory under os.tmpdir(), its cgroup tree, its private network
// (network.js) and the OCI runtime's state. A Run is one boot of one
// machine: a container that crun (or runc) runs from a generated spec
// (container.js) over a copy-on-write root (overlayfs: a fresh upper layer,
// on a size-bounded ext4 disk of the boot's own (rootdisk.js), over the
// injected files and the image's read-only layers, image.js), in a private
// mount namespace of its own so the overlay and its disk vanish with the
// machine even when fly-local is killed, and in a user namespace owned by
// an uid of the boot's own (userns.js). The Run watches it, signals it, freezes it and execs commands
// in it with `<runtime> exec`.
const { spawn, execFile, spawnSync } = require('child_process')
const EventEmitter = require('events')
const fs = require('fs')
const fsp = fs.promises
const net = require('net')
const os = require('os')
const path = require('path')
const crypto = require('crypto')
const image = require('./image')
const cgroups = require('./cgroups')
const { Network, sweepStale: sweepNetworks } = require('./network')
const { runtimeSpec, processSpec, EGRESS_APPLIER } = require('./container')
const rootdisk = require('./rootdisk')
const userns = require('./userns')
const { loopWorks } = require('./volume-host')
const { ConsoleLog } = require('./console-log')

/* The OCI runtime: crun where installed (a machine starts in about half
   of runc's time here), else runc; FLY_LOCAL_OCI_RUNTIME=runc|crun|<path>
   chooses. Both speak the same command line. */
function findRuntime (want) {
  const names = want ? [want] : ['crun', 'runc']
  for (const n of names) {
    if (n.includes('/')) return n
    for (const d of ['/usr/bin', '/usr/sbin', '/usr/local/bin']) {
      if (fs.existsSync(path.join(d, n))) return path.join(d, n)
    }
  }
  return names[names.length - 1]
}
const RUNC = findRuntime(process.env.FLY_LOCAL_OCI_RUNTIME)
/* crun refuses hybrid cgroup layouts: the machine's private mount
   namespace hides the cgroup2 "unified" mount from it */
const HIDE_UNIFIED = !cgroups.V2 && fs.existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? 'umount -l /sys/fs/cgroup/unified; ' : ''
const SYS_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
const EXEC_OUTPUT_CAP = 16 * 1024 * 1024
const SS = fs.existsSync('/usr/bin/ss') ? '/usr/bin/ss' : '/usr/sbin/ss'
const NSENTER = fs.existsSync('/usr/bin/nsenter') ? '/usr/bin/nsenter' : 'nsenter'
const DEFAULT_PIDS = 2048

function pidAlive (pid) {
  try { process.kill(pid, 0); return true } catch (e) { return e.code === 'EPERM' }
}

/* Leftovers of fly-local instances that died without stop(): their
   containers (tini dies with the runtime, delete removes what is left), state
   directories, cgroups and networks. */
function sweepStale () {
  const tmp = os.tmpdir()
  let names = []
  try { names = fs.readdirSync(tmp) } catch (_) { /* ignore */ }
  for (const n of names) {
    const m = /^fly-local-(\d+)-[0-9a-f]+$/.exec(n)
    if (!m || pidAlive(Number(m[1]))) continue
    const root = path.join(tmp, n, 'runc')
    if (fs.existsSync(root)) {
      const list = spawnSync(RUNC, ['--root', root, 'list', '-q'], { encoding: 'utf8' })
      for (const id of String(list.stdout || '').split('\n').filter(Boolean)) {
        spawnSync(RUNC, ['--root', root, 'delete', '--force', id], { stdio: 'ignore' })
      }
    }
    /* whatever the runtime could not list (its state gone, another
       runtime's) still sits in the instance's cgroups: kill it there before
       the directory that names the instance goes */
    cgroups.killAll(n)
    spawnSync('umount', ['--lazy', path.join(tmp, n, 'api')], { stdio: 'ignore' })
    try { fs.rmSync(path.join(tmp, n), { recursive: true, force: true }) } catch (_) { /* busy */ }
  }
  /* Only rmdir here: a cgroup without a state directory in our tmp may be a
     live instance in another PID namespace (whose pid means nothing here). */
  for (const n of cgroups.topNames(/^fly-local-\d+-[0-9a-f]+$/)) {
    if (!pidAlive(Number(n.split('-')[2]))) cgroups.removeAll(n)
  }
  sweepNetworks()
}

function limitsError (missing) {
  return Object.assign(new Error(`fly-local cannot enforce machine limits here: no ${missing.join(', ')} cgroup controller ` +
    `(${cgroups.V2 ? 'cgroup v2: enable it in the parent\'s cgroup.subtree_control' : 'cgroup v1: mount it'}); ` +
    'set FLY_LOCAL_ALLOW_NO_LIMITS=1 to run machines without them'), { code: 'FLY_LOCAL_NO_LIMITS' })
}

/* The directory of the machines' /.fly/api sockets: a tmpfs of its own, so
   a socket bound into a machine shows in its mountinfo as /<id>.sock on
   "fly-api", not as a path naming this instance's pid and state directory
   (a bind mount shows its path from its filesystem's root). A plain
   directory where mounting fails. */
function mountSocketDir (dir) {
  fs.mkdirSync(dir, { mode: 0o711 })
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'nosuid,nodev,noexec,mode=0711,size=1m,nr_inodes=65536', 'fly-api', dir],
    { stdio: 'ignore', env: { PATH: SYS_PATH } })
  return r.status === 0
}

class Host {
  /* options: start()'s rootDiskMb, rootInodes (rootdisk.js), and
     network.js's allowPrivateEgress, flowsMax */
  static async create (options = {}) {
    const { rootDiskMb, rootInodes, ...net } = options
    const disk = rootdisk.config({ rootDiskMb, rootInodes })
    sweepStale()
    const missing = cgroups.missingControllers()
    if (missing.length && process.env.FLY_LOCAL_ALLOW_NO_LIMITS !== '1') throw limitsError(missing)
    const tag = `fly-local-${process.pid}-${crypto.randomBytes(4).toString('hex')}`
    const dir = path.join(os.tmpdir(), tag)
    /* 0711: the runtime, inside the machine's user namespace, must reach the
       bundle; nothing under it is listable or readable for others */
    await fsp.mkdir(dir, { mode: 0o711 })
    await fsp.chmod(dir, 0o711)
    const h = new Host()
    h.tag = tag
    h.dir = dir
    h.runcRoot = path.join(dir, 'runc')
    h.unlimited = missing
    const pids = Number(process.env.FLY_LOCAL_PIDS_MAX)
    h.pidsMax = Number.isInteger(pids) && pids > 0 ? pids : DEFAULT_PIDS
    h.namespaces = userns.pool()
    try {
      h.sockDir = path.join(dir, 'api')
      h.sockMounted = mountSocketDir(h.sockDir)
      /* each boot's root on a size-bounded disk of its own; a host without
         loop devices runs machines without that bound only when told to */
      if (loopWorks(dir)) h.rootDisks = new rootdisk.RootDisks(dir, disk)
      else if (process.env.FLY_LOCAL_ALLOW_NO_LIMITS === '1') h.unlimited = [...missing, 'root disk']
      else {
        throw Object.assign(new Error('fly-local cannot bound machines\' root disks here: no loop device (losetup) or mkfs.ext4; ' +
          'set FLY_LOCAL_ALLOW_NO_LIMITS=1 to run machines without that bound'), { code: 'FLY_LOCAL_NO_LIMITS' })
      }
      h.net = await Network.create({ egress: process.env.FLY_LOCAL_EGRESS !== '0', ...net })
      h.warm()
    } catch (e) {
      h.destroy()
      throw e
    }
    return h
  }

  /* A machine's private address, from a counter (nothing a sandbox holds
     can make it fail); opts: { network, egress }. */
  async allocIp (opts) {
    return (await this.net.alloc(opts)).ip
  }

  /* The first boot's root disk and user namespace, made ahead (for the
     built image's root owner) when the image is there. */
  warm () {
    try {
      const layers = image.resolve(image.DEFAULT_IMAGE)
      const st = fs.statSync(layers[layers.length - 1])
      if (this.rootDisks) this.rootDisks.kind({ uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 })
    } catch (_) { /* not built yet: the first boot makes them */ }
    this.refill()
  }

  /* Makes the next boots' root disks and user namespaces. */
  refill () {
    if (this.rootDisks) this.rootDisks.refill()
    this.namespaces.refill()
  }

  /* The machine's IPv4 address (egress, and Fly proxy's way in: proxy.js). */
  guestV4 (ip) {
    const m = this.net.byIp.get(ip)
    return m ? m.v4guest : null
  }

  releaseIp (ip) {
    this.net.release(ip)
  }

  /* A machine's egress policy's address part (network.js). */
  setEgress (ip, policy) {
    return this.net.setEgress(ip, policy)
  }

  /* The machine's level in the cgroup tree (the runtime makes each boot's
     below it). */
  machineCgroups (id) {
    return { path: `/${this.tag}/${id}` }
  }

  removeMachineCgroups (id) {
    cgroups.removeAll(path.join(this.tag, id))
  }

  destroy () {
    cgroups.removeAll(this.tag)
    if (this.rootDisks) this.rootDisks.close()
    if (this.namespaces) this.namespaces.close()
    if (this.sockMounted) spawnSync('umount', ['--lazy', this.sockDir], { stdio: 'ignore', env: { PATH: SYS_PATH } })
    if (this.net) this.net.destroySync()
    try { fs.rmSync(this.dir, { recursive: true, force: true }) } catch (_) { /* ignore */ }
  }
}

function readFileQuiet (p) {
  try { return fs.readFileSync(p, 'utf8') } catch (_) { return null }
}

function readStat (pid) {
  const s = readFileQuiet(`/proc/${pid}/stat`)
  if (!s) return null
  const close = s.lastIndexOf(')')
  const comm = s.slice(s.indexOf('(') + 1, close)
  const rest = s.slice(close + 2).split(' ')
  return {
    pid,
    comm,
    state: rest[0],
    ppid: Number(rest[1]),
    utime: Number(rest[11]),
    stime: Number(rest[12]),
    rss: Number(rest[21])
  }
}

const ENTRYPOINT = ['/opt/computesdk/entrypoint.sh']

/* The image's ENTRYPOINT/CMD as overridden by config.init. */
function mainArgv (init) {
  init = init || {}
  if (Array.isArray(init.exec) && init.exec.length) return init.exec.slice()
  const entry = Array.isArray(init.entrypoint) && init.entrypoint.length ? init.entrypoint : ENTRYPOINT
  const cmd = Array.isArray(init.cmd) ? init.cmd : []
  return [...entry, ...cmd]
}

/* The host's resolvers, unless they live on its loopback (unreachable from
   a machine's network namespace). */
function resolvConf () {
  const s = readFileQuiet('/etc/resolv.conf') || ''
  return s.split('\n').filter((l) => /^\s*(nameserver|search|options)\b/.test(l) &&
    !/^\s*nameserver\s+(127\.|::1)/.test(l)).join('\n') + '\n'
}

/* A path or option as one fstab(5) field: blanks and backslashes octal. */
function fstabField (s) {
  return String(s).replace(/[\\ \t\n]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)
}

/* An exit status from the runtime (128 + n for a signal) as { code, signal }. */
function statusOf (code, signal) {
  if (code == null) {
    const n = os.constants.signals[signal] || 9
    return { code: 128 + n, signal: n }
  }
  return { code, signal: code > 128 && code <= 128 + 64 ? code - 128 : 0 }
}

/* Writes a file into a boot's layer of injected files (the overlay's top
   lower layer), making its parent directories as the image's layers have
   them, so the merged view keeps their owners and modes. */
function writeIntoLayer (layers, upper, guestPath, data, mode) {
  const parts = guestPath.split('/').filter(Boolean)
  let rel = ''
  for (const part of parts.slice(0, -1)) {
    rel = path.join(rel, part)
    const dst = path.join(upper, rel)
    let st = null
    try { st = fs.lstatSync(dst) } catch (_) { /* to make */ }
    if (st && st.isDirectory()) continue
    if (st) throw new Error(`cannot write ${guestPath}: ${rel} is not a directory`)
    let like = null
    for (const l of layers) {
      try { like = fs.lstatSync(path.join(l, rel)); break } catch (_) { /* next layer */ }
    }
    if (like && !like.isDirectory()) throw new Error(`cannot write ${guestPath}: /${rel} is not a directory in the image`)
    fs.mkdirSync(dst, { mode: like ? like.mode & 0o7777 : 0o755 })
    fs.chmodSync(dst, like ? like.mode & 0o7777 : 0o755)
    fs.chownSync(dst, like ? like.uid : image.ID_BASE, like ? like.gid : image.ID_BASE)
  }
  const file = path.join(upper, ...parts)
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW, 0o600)
  try {
    fs.writeSync(fd, data)
    fs.fchownSync(fd, image.ID_BASE, image.ID_BASE)
    fs.fchmodSync(fd, mode)
  } finally {
    fs.closeSync(fd)
  }
}

function readLayers (layers, rel) {
  for (const l of layers) {
    const s = readFileQuiet(path.join(l, rel))
    if (s != null) return s
  }
  return ''
}

/* One boot of a machine. Emits 'started' and then 'exit' once; 'exit'
   (and exitPromise) mean every process of the boot is gone and reaped:
   `<runtime> run` waits for the container's PID 1 (tini), which as the
   namespace's init only exits once every other process in it is reaped,
   and the `exec` processes are awaited too. */
class Run extends EventEmitter {
  constructor (host, opts) {
    super()
    this.host = host
    this.opts = opts
    this.dir = path.join(host.dir, opts.id, String(opts.seq))
    this.cid = `${opts.id}-${opts.seq}`
    this.cgPath = `${opts.cgroups.path}/${opts.seq}`
    this.pid = 0
    this.pidns = null
    this.started = false
    this.exited = false
    this.frozen = false
    this.exitInfo = null
    this.startedAt = 0
    this.killRequested = false
    /* exec children not yet reaped, and the callback that finishes the
       exit once they are */
    this.execs = new Set()
    this.onExecsDone = null
    this.exitPromise = new Promise((resolve) => this.once('exit', resolve))
  }

  /* The bundle, in the boot's directory: config.json; the root disk
     (root.img, rootdisk.js) whose upper/ and work/ the overlay writes to,
     mounted at fs/ by start's script; the injected files in a layer of their
     own (inject/, read-only under the overlay: a machine that changes one
     changes its copy on the root disk); the image's layers as links l0...
     Returns the overlay's options, with paths relative to the boot's
     directory so the machine's mountinfo names no host path. Throws (a boot
     error) when the image is not built. */
  async prepare () {
    const { opts, host } = this
    const layers = image.resolve(opts.image)
    const inject = path.join(this.dir, 'inject')
    await fsp.mkdir(inject)
    await fsp.mkdir(path.join(this.dir, 'fs'), { mode: 0o700 })
    await fsp.mkdir(path.join(this.dir, 'rootfs'))
    const rootSt = fs.statSync(layers[layers.length - 1])
    const owner = { uid: rootSt.uid, gid: rootSt.gid, mode: rootSt.mode & 0o7777 }
    const disk = host.rootDisks
      ? host.rootDisks.take(owner, path.join(this.dir, 'root.img'))
      : this.plainUpper(owner)
    /* the user namespace, made while the rest is prepared */
    const ns = host.namespaces.take()
    ns.then((h) => {
      this.userns = h
      if (this.exited) this.releaseUserns()
    }, () => {})
    fs.chownSync(inject, owner.uid, owner.gid)
    fs.chmodSync(inject, owner.mode)
    layers.forEach((l, i) => fs.symlinkSync(l, path.join(this.dir, `l${i}`)))
    const hosts = readLayers(layers, 'etc/hosts')
    const files = [
      ...opts.files.map((f) => ({ path: f.path, mode: f.mode, data: Buffer.from(f.hex, 'hex') })),
      { path: '/etc/hostname', mode: 0o644, data: `${opts.id}\n` },
      { path: '/etc/hosts', mode: 0o644, data: `${hosts}${hosts && !hosts.endsWith('\n') ? '\n' : ''}${opts.ip}\t${opts.id}\n` },
      { path: '/etc/resolv.conf', mode: 0o644, data: resolvConf() }
    ]
    for (const f of files) writeIntoLayer(layers, inject, f.path, f.data, f.mode)
    const [, held] = await Promise.all([disk, ns])
    const memoryBytes = (opts.memoryMb || 256) * 1024 * 1024
    const spec = runtimeSpec({
      userns: held.path,
      volumes: await this.prepareVolumes(),
      argv: opts.argv,
      /* the image's own entrypoint (which confines what it starts) */
      imageEntrypoint: opts.argv.length > 0 && opts.argv[0] === ENTRYPOINT[0],
      env: opts.env,
      hostname: opts.id,
      netScript: host.net.upScript(opts.ip),
      cgroupsPath: this.cgPath,
      apiSocket: opts.apiSocket,
      limits: {
        memoryBytes,
        cpus: opts.cpus || 1,
        pids: host.pidsMax,
        swap: cgroups.swapLimitable(),
        /* cgroup v1: socket buffers up to a quarter of the memory limit,
           on top of it (v2 counts them in it) */
        tcpBytes: cgroups.tcpLimitable() ? Math.floor(memoryBytes / 4) : 0,
        skip: host.unlimited
      }
    })
    /* the spec holds the machine's env (secrets): only root reads it */
    await fsp.writeFile(path.join(this.dir, 'config.json'), JSON.stringify(spec), { mode: 0o600 })
    return `nosuid,nodev,lowerdir=${['inject', ...layers.map((_, i) => `l${i}`)].join(':')},upperdir=fs/upper,workdir=fs/work`
  }

  /* Without a root disk (FLY_LOCAL_ALLOW_NO_LIMITS on a host with no loop
     devices): upper/ and work/ in the boot's directory on the host's disk. */
  async plainUpper (owner) {
    const upper = path.join(this.dir, 'fs', 'upper')
    await fsp.mkdir(upper)
    await fsp.mkdir(path.join(this.dir, 'fs', 'work'))
    await fsp.chown(upper, owner.uid, owner.gid)
    await fsp.chmod(upper, owner.mode)
  }

  /* The holder of the boot's user namespace can go once the container's
     processes hold it (or the boot failed). */
  releaseUserns () {
    if (this.userns) this.userns.release()
    this.userns = null
  }

  /* Volume mounts (volumes.js): a loop device (or a directory volume, bound)
     is mounted nosuid,nodev below the boot's directory in its private mount
     namespace (start's script); the container binds that at its path, and
     a bind keeps the flags (the runtime's own remount with them does not
     take inside the user namespace). */
  async prepareVolumes () {
    if (this.opts.mountError) throw new Error(this.opts.mountError)
    const out = []
    for (const [i, v] of (this.opts.mounts || []).entries()) {
      const source = path.join(this.dir, 'vol', String(i))
      await fsp.mkdir(source, { recursive: true, mode: 0o711 })
      out.push({ source, destination: v.path })
    }
    return out
  }

  /* Where the host reaches a mounted volume of this boot: through the
     runtime's process, whose root is the host's and whose mount namespace
     is the boot's (never through the machine's own root, which the sandbox
     can rearrange). */
  volumeMountPath (i) {
    const v = (this.opts.mounts || [])[i]
    if (!v || !v.device || !this.child || !this.child.pid || this.exited) return null
    return `/proc/${this.child.pid}/root${path.join(this.dir, 'vol', String(i))}`
  }

  async start () {
    const { opts } = this
    let overlay
    try {
      await fsp.mkdir(path.dirname(this.dir), { recursive: true, mode: 0o711 })
      await fsp.mkdir(this.dir, { mode: 0o711 })
      overlay = await this.prepare()
    } catch (e) {
      this.bootError = e.message
      setImmediate(() => this.onClose(1, null))
      return new Promise((resolve) => this.once('exit', () => resolve(false)))
    }
    this.oomBefore = cgroups.oomKills(opts.cgroups.path)
    const log = new ConsoleLog(path.join(this.host.dir, opts.id, 'console.log'))
    /* setpriv: the runtime dies with fly-local, and tini (-p) with it; unshare:
       the overlay is mounted in a mount namespace of the machine's own */
    const q = (a) => `'${String(a).replace(/'/g, "'\\''")}'`
    /* One mount(8) for the boot's mounts (a process costs ms a boot): the
       root disk (a loop device that clears itself once unmounted, so it
       goes with this mount namespace), the overlay over it with its layers
       named from the boot's directory, the ext4 volumes. A volume extended
       while mounted where online resizing is refused grows first (e2fsck's
       1 is "fixed"); a directory volume is bound after. */
    const at = (i) => path.join(this.dir, 'vol', String(i))
    const fstab = [
      ...(fs.existsSync(path.join(this.dir, 'root.img'))
        ? [[path.join(this.dir, 'root.img'), path.join(this.dir, 'fs'), 'ext4', 'loop,nosuid,nodev,noatime,noinit_itable']]
        : []),
      ['overlay', path.join(this.dir, 'rootfs'), 'overlay', overlay],
      ...(opts.mounts || []).flatMap((v, i) => v.device ? [[v.device, at(i), 'ext4', 'nosuid,nodev']] : [])
    ].map((f) => `${f.map(fstabField).join(' ')} 0 0\n`).join('')
    fs.writeFileSync(path.join(this.dir, 'fstab'), fstab, { mode: 0o600 })
    const grows = (opts.mounts || []).map((v) => v.device && v.grow
      ? `{ e2fsck -f -p ${q(v.device)}; [ $? -le 1 ]; } && resize2fs ${q(v.device)} && `
      : '').join('')
    const binds = (opts.mounts || []).map((v, i) => v.device
      ? ''
      : `mount --bind ${q(v.source)} ${q(at(i))} && mount -o remount,bind,nosuid,nodev ${q(at(i))} && `).join('')
    const script = `${HIDE_UNIFIED}cd "$2" && ${grows}mount -a -T fstab && ${binds}` +
      'exec "$5" --root "$3" --log "$2/runc.log" run --bundle "$2" --pid-file "$2/pid" "$4"'
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'unshare', '--mount', '--propagation', 'private', '--',
      '/bin/sh', '-c', script, 'sh', overlay, this.dir, this.host.runcRoot, this.cid, RUNC], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: SYS_PATH, LANG: 'C.UTF-8' }
    })
    log.attach(child.stdout)
    log.attach(child.stderr)
    this.child = child
    /* the runtime writes the pid file once the container exists */
    this.watcher = fs.watch(this.dir, (ev, name) => { if (name === 'pid') this.readPid() })
    this.readPid()
    let spawnError = null
    child.on('error', (e) => { spawnError = e })
    child.on('close', (code, signal) => this.onClose(code, signal, spawnError))
    return new Promise((resolve) => {
      this.once('started', () => resolve(true))
      this.once('exit', () => resolve(false))
    })
  }

  readPid () {
    if (this.pid || this.exited) return
    const s = readFileQuiet(path.join(this.dir, 'pid'))
    if (!s || !/^\d+\s*$/.test(s)) return
    this.pid = Number(s)
    this.closeWatcher()
    /* the container holds its user namespace now */
    this.releaseUserns()
    try { this.pidns = fs.readlinkSync(`/proc/${this.pid}/ns/pid`) } catch (_) { /* gone */ }
    /* kill() came before we knew PID 1 */
    if (this.killRequested) this.kill()
    this.started = true
    this.startedAt = Date.now()
    this.emit('started')
    /* the next boots' disks and namespaces, once this boot's news is out
       (each spawn blocks the event loop for a few ms) */
    setImmediate(() => this.host.refill())
  }

  closeWatcher () {
    if (this.watcher) this.watcher.close()
    this.watcher = null
  }

  bootErrorText () {
    if (this.bootError) return this.bootError
    const log = readFileQuiet(path.join(this.dir, 'runc.log')) || ''
    const msgs = [...log.matchAll(/level=error msg="((?:[^"\\]|\\.)*)"/g)].map((m) => m[1])
    const last = msgs.length ? msgs[msgs.length - 1] : log.trim().split('\n').pop()
    return last ? `${path.basename(RUNC)}: ${last}` : 'machine exited during boot'
  }

  onClose (code, signal, spawnError) {
    if (this.exited) return
    this.closeWatcher()
    this.releaseUserns()
    this.exited = true
    const info = statusOf(code, signal)
    info.oomKilled = cgroups.oomKills(this.opts.cgroups.path) > (this.oomBefore || 0)
    info.bootError = this.started ? null : (spawnError ? spawnError.message : this.bootErrorText())
    info.startedAt = this.startedAt
    this.exitInfo = info
    const finish = () => {
      this.onExecsDone = null
      this.emit('exit', info)
      /* The overlay died with the mount namespace; drop its directory. */
      fsp.rm(this.dir, { recursive: true, force: true }).catch(() => {})
    }
    if (this.execs.size) this.onExecsDone = finish
    else finish()
  }

  execDone (child) {
    this.execs.delete(child)
    if (!this.execs.size && this.onExecsDone) this.onExecsDone()
  }

  /* Host pids of every process in the machine, PID 1 first. */
  procs () {
    if (this.exited || !this.pid) return []
    const out = [this.pid]
    for (const p of cgroups.pids(this.cgPath)) {
      if (p === this.pid) continue
      let ns
      try { ns = fs.readlinkSync(`/proc/${p}/ns/pid`) } catch (_) { continue }
      if (ns === this.pidns) out.push(p)
    }
    return out
  }

  /* The main process: tini's child, PID 2 inside the machine. */
  mainPid () {
    const kids = this.procs().map(readStat).filter((s) => s && s.ppid === this.pid)
    for (const k of kids) {
      const m = /NSpid:\s*([\d\s]+)/.exec(readFileQuiet(`/proc/${k.pid}/status`) || '')
      if (m && Number(m[1].trim().split(/\s+/).pop()) === 2) return k.pid
    }
    kids.sort((a, b) => a.pid - b.pid)
    return kids.length ? kids[0].pid : 0
  }

  signalMain (sig) {
    const p = this.mainPid()
    if (p) {
      try { process.kill(p, sig) } catch (_) { /* raced with exit */ }
    }
    return p
  }

  kill () {
    if (this.exited) return
    if (!this.pid) {
      /* not created far enough to know PID 1: readPid kills it */
      this.killRequested = true
      return
    }
    if (this.frozen) this.thaw()
    /* SIGKILL to a PID namespace's init kills the whole namespace */
    try { process.kill(this.pid, 'SIGKILL') } catch (_) { /* gone */ }
  }

  freeze () {
    if (this.exited) return
    if (cgroups.hasFreezer()) {
      try {
        cgroups.freeze(this.cgPath, true)
        this.frozen = true
        return
      } catch (_) { /* fall back to signals */ }
    }
    for (const p of this.procs()) {
      try { process.kill(p, 'SIGSTOP') } catch (_) { /* gone */ }
    }
    this.frozen = 'signals'
  }

  /* Resets every TCP connection of the machine, leaving its listeners, as a
     Fly suspend drops them: clients see the reset and reconnect after the
     resume. SOCK_DESTROY (`ss -K`, needs CONFIG_INET_DIAG_DESTROY) in the
     machine's network namespace; resolves false when that failed. */
  cutTcp () {
    if (this.exited || !this.pid) return Promise.resolve(false)
    return new Promise((resolve) => {
      execFile(NSENTER, ['-t', String(this.pid), '-n', '--', SS, '-K', '-t', '-n', 'state', 'connected'],
        { timeout: 10000, env: { PATH: SYS_PATH } }, (e) => resolve(!e))
    })
  }

  thaw () {
    if (!this.frozen) return
    if (this.frozen === true) {
      try { cgroups.freeze(this.cgPath, false) } catch (_) { /* gone */ }
    } else {
      for (const p of this.procs()) {
        try { process.kill(p, 'SIGCONT') } catch (_) { /* gone */ }
      }
    }
    this.frozen = false
  }

  /* sshd listener(s) and every process below them (the sessions). */
  sshdTree () {
    const stats = this.procs().map(readStat).filter(Boolean)
    const byPid = new Map(stats.map((s) => [s.pid, s]))
    const roots = stats.filter((s) => s.comm === 'sshd' && !(byPid.get(s.ppid) && byPid.get(s.ppid).comm === 'sshd'))
    const out = []
    const kids = new Map()
    for (const s of stats) {
      if (!kids.has(s.ppid)) kids.set(s.ppid, [])
      kids.get(s.ppid).push(s.pid)
    }
    const stack = roots.map((r) => r.pid)
    while (stack.length) {
      const p = stack.pop()
      out.push(p)
      for (const k of kids.get(p) || []) stack.push(k)
    }
    return { listeners: roots.map((r) => r.pid), all: out }
  }

  ps () {
    const tick = 100
    const out = []
    for (const p of this.procs()) {
      const s = readStat(p)
      if (!s) continue
      const status = readFileQuiet(`/proc/${p}/status`) || ''
      const m = /NSpid:\s*([\d\s]+)/.exec(status)
      const nspid = m ? Number(m[1].trim().split(/\s+/).pop()) : p
      let cmd = (readFileQuiet(`/proc/${p}/cmdline`) || '').split('\0').filter(Boolean).join(' ')
      if (!cmd) cmd = s.comm
      let cwd = ''
      try { cwd = fs.readlinkSync(`/proc/${p}/cwd`) } catch (_) { /* gone */ }
      out.push({
        pid: nspid,
        command: cmd,
        cpu: 0,
        directory: cwd,
        rss: s.rss * 4096,
        rtime: Math.round(((s.utime + s.stime) * 1e9) / tick),
        stime: Math.round((s.stime * 1e9) / tick),
        listen_sockets: []
      })
    }
    return out
  }

  /* Run argv inside the machine as root with env (`<runtime> exec`, so the
     command gets the machine's namespaces, cgroup, capabilities and
     seccomp filter); buffered output. */
  exec (argv, { env, stdin, timeoutMs }) {
    return new Promise((resolve) => {
      if (this.exited || !this.pid) {
        resolve({ exit_code: 127, exit_signal: 0, stdout: '', stderr: 'machine is not running', timedOut: false })
        return
      }
      const name = `exec-${crypto.randomBytes(6).toString('hex')}`
      const spec = path.join(this.dir, `${name}.json`)
      const pidFile = path.join(this.dir, `${name}.pid`)
      /* the env may hold secrets: a root-only file, not the runtime's argv */
      /* CAP_NET_ADMIN for the egress applier alone (updateNetwork): any other
         root command, a user's `user: 'root'` included, runs without it */
      const caps = argv[0] === EGRESS_APPLIER ? undefined : []
      fs.writeFileSync(spec, JSON.stringify(processSpec(argv, env, '/', caps)), { mode: 0o600 })
      const child = spawn(RUNC, ['--root', this.host.runcRoot, 'exec', '--process', spec, '--pid-file', pidFile, this.cid],
        { env: { PATH: SYS_PATH }, detached: true, stdio: ['pipe', 'pipe', 'pipe'] })
      /* a process of the machine until Node has reaped it */
      this.execs.add(child)
      let reaped = false
      const onReaped = () => {
        if (reaped) return
        reaped = true
        fs.rm(spec, { force: true }, () => {})
        fs.rm(pidFile, { force: true }, () => {})
        this.execDone(child)
      }
      child.once('exit', onReaped)
      const out = []
      const err = []
      let outLen = 0
      let errLen = 0
      child.stdout.on('data', (d) => { if (outLen < EXEC_OUTPUT_CAP) { out.push(d); outLen += d.length } })
      child.stderr.on('data', (d) => { if (errLen < EXEC_OUTPUT_CAP) { err.push(d); errLen += d.length } })
      child.stdin.on('error', () => {})
      child.stdin.end(stdin || '')
      let timedOut = false
      const timer = setTimeout(() => {
        timedOut = true
        /* exec cannot pass SIGKILL on: kill the command itself */
        const p = Number(readFileQuiet(pidFile))
        if (p) { try { process.kill(p, 'SIGKILL') } catch (_) { /* gone */ } }
        try { process.kill(-child.pid, 'SIGKILL') } catch (_) { /* gone */ }
      }, timeoutMs)
      child.on('error', (e) => {
        /* never spawned: there is nothing to reap */
        if (!child.pid) onReaped()
        clearTimeout(timer)
        resolve({ exit_code: 127, exit_signal: 0, stdout: '', stderr: String(e.message), timedOut: false })
      })
      /* Resolve when the command exits; a background process it left
         behind may hold the pipes open, so give them only a moment to drain. */
      child.on('exit', (code, signal) => {
        clearTimeout(timer)
        let pending = 2
        const finish = () => {
          clearTimeout(drain)
          child.stdout.destroy()
          child.stderr.destroy()
          const st = statusOf(code, signal)
          resolve({
            exit_code: st.code,
            exit_signal: st.signal,
            stdout: Buffer.concat(out).toString('utf8'),
            stderr: Buffer.concat(err).toString('utf8'),
            timedOut
          })
        }
        const drain = setTimeout(finish, 100)
        const ended = () => { if (--pending === 0) finish() }
        if (child.stdout.readableEnded) ended(); else child.stdout.once('end', ended)
        if (child.stderr.readableEnded) ended(); else child.stderr.once('end', ended)
      })
    })
  }
}

/* Write a host key into a machine and make its sshd reload it. */
async function newHostKey (dir) {
  const keyPath = path.join(dir, `hostkey-${crypto.randomBytes(4).toString('hex')}`)
  await new Promise((resolve, reject) => {
    execFile('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'fly-local', '-f', keyPath],
      (e) => (e ? reject(e) : resolve()))
  })
  const priv = await fsp.readFile(keyPath)
  const pub = (await fsp.readFile(`${keyPath}.pub`, 'utf8')).trim()
  await fsp.rm(keyPath, { force: true })
  await fsp.rm(`${keyPath}.pub`, { force: true })
  return { priv, pub }
}

/* Resolves once something on ip:port answers with an SSH banner. */
function waitSshBanner (ip, port, timeoutMs) {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const sock = net.connect({ host: ip, port })
      let done = false
      const retry = (why) => {
        if (done) return
        done = true
        sock.destroy()
        if (Date.now() > deadline) return reject(new Error(`sshd on ${ip}:${port} not ready: ${why}`))
        /* refused while sshd starts: try again shortly */
        setTimeout(attempt, 5)
      }
      sock.setTimeout(Math.max(50, deadline - Date.now()), () => retry('timeout'))
      sock.once('error', (e) => retry(e.code))
      sock.once('data', (d) => {
        if (done) return
        done = true
        sock.destroy()
        if (d.toString('latin1').startsWith('SSH-')) resolve()
        else reject(new Error('not an SSH server'))
      })
      sock.once('end', () => retry('closed'))
    }
    attempt()
  })
}

module.exports = { Host, Run, mainArgv, newHostKey, waitSshBanner, SYS_PATH, readStat }
