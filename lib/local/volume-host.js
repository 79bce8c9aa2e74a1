'use strict'
// What fly-local does on the host for its volumes (volumes.js), each with a
// deadline: ext4 images (mkfs.ext4, e2fsck, resize2fs, dumpe2fs), loop
// devices (losetup), freezes (fsfreeze), sparse copies, digests, and the
// directory backend's copies and removals. Every one of them works on an
// image file, a block device or a mount root fly-local made, never on a
// path inside a tree a sandbox wrote, except copyTree/removeTree, which
// volumes.js runs only while nothing of the sandbox runs.
const { execFile, spawnSync } = require('child_process')
const crypto = require('crypto')
const fs = require('fs')
const fsp = fs.promises
const os = require('os')
const path = require('path')

/* every host-side tool run on a volume has a deadline */
const TOOL_TIMEOUT_MS = 120000
const SYS_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' }

function tool (cmd, args, { timeoutMs = TOOL_TIMEOUT_MS, okCodes = [0] } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: SYS_ENV, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0
      if (okCodes.includes(code)) return resolve(stdout)
      const why = (stderr || (err && err.message) || '').trim().split('\n').pop()
      reject(new Error(`${path.basename(cmd)} failed: ${why}${err && err.killed ? ' (timed out)' : ''}`))
    })
  })
}

function pidAlive (pid) {
  try { process.kill(pid, 0); return true } catch (e) { return e.code === 'EPERM' }
}

/* Loop devices whose image sits in the state directory of a fly-local
   instance that died without stop(): detach them (their directories are
   already gone, runtime.js sweeps those). Loop devices are the kernel's,
   seen from every PID and mount namespace: a live instance in another
   namespace (a container, CI's fresh root) has the same kind of path and a
   pid that means nothing here. Only a loop whose image is this namespace's
   file (the same inode at that path) or is deleted is one of ours. */
function sweepStaleLoops () {
  const r = spawnSync('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-INO,BACK-FILE'], { encoding: 'utf8', env: SYS_ENV })
  const tmp = os.tmpdir().replace(/\/+$/, '')
  for (const line of String(r.stdout || '').split('\n')) {
    const [dev, ino, ...rest] = line.split(' ')
    /* --raw writes a space (of " (deleted)") and the like as \xHH */
    const back = rest.join(' ').replace(/\\x([0-9a-fA-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)))
    if (!back.startsWith(`${tmp}/fly-local-`)) continue
    const m = /^fly-local-(\d+)-[0-9a-f]+\/volumes\//.exec(back.slice(tmp.length + 1))
    if (!m || pidAlive(Number(m[1]))) continue
    if (!back.endsWith(' (deleted)') && !sameFile(back, ino)) continue
    spawnSync('losetup', ['--detach', dev], { stdio: 'ignore', env: SYS_ENV })
  }
}

function sameFile (p, ino) {
  try { return String(fs.statSync(p).ino) === ino } catch (_) { return false }
}

/* Can this host attach a loop device? (a throwaway 1 MiB image) */
function loopWorks (dir) {
  const probe = path.join(dir, 'probe.img')
  try {
    fs.writeFileSync(probe, '')
    fs.truncateSync(probe, 1024 * 1024)
    const r = spawnSync('losetup', ['--find', '--show', probe], { encoding: 'utf8', env: SYS_ENV })
    const dev = String(r.stdout || '').trim()
    if (r.status !== 0 || !dev) return false
    spawnSync('losetup', ['--detach', dev], { stdio: 'ignore', env: SYS_ENV })
    const mkfs = spawnSync('mkfs.ext4', ['-V'], { stdio: 'ignore', env: SYS_ENV })
    return mkfs.status === 0
  } catch (_) {
    return false
  } finally {
    fs.rmSync(probe, { force: true })
  }
}

/* A fresh ext4 image of bytes at image (O_EXCL: a file of ours, never one
   already there), no reserved blocks, its root owned by uid:uid. */
async function mkfsImage (image, bytes, uid) {
  const fh = await fsp.open(image, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600)
  try { await fh.truncate(bytes) } finally { await fh.close() }
  await tool('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', `root_owner=${uid}:${uid},lazy_itable_init=0,lazy_journal_init=0`, image])
}

/* A sparse copy (a reflink where the host's filesystem has them). */
function copyImage (src, dst, timeoutMs = TOOL_TIMEOUT_MS) {
  return tool('cp', ['--sparse=always', '--reflink=auto', '--', src, dst], { timeoutMs })
}

async function attach (image) {
  return (await tool('losetup', ['--find', '--show', '--', image])).trim()
}

function detach (device) {
  return tool('losetup', ['--detach', device])
}

function detachSync (device) {
  spawnSync('losetup', ['--detach', device], { stdio: 'ignore', env: SYS_ENV })
}

function setCapacity (device) {
  return tool('losetup', ['--set-capacity', device])
}

/* Grows an unmounted filesystem to its device (e2fsck first: resize2fs
   insists on a freshly checked one; its 1 is "fixed"). */
async function growOffline (device) {
  await tool('e2fsck', ['-f', '-p', device], { okCodes: [0, 1] })
  await tool('resize2fs', [device])
}

/* Online: resize2fs finds the mount in the namespace of process pid (it
   needs CAP_SYS_RESOURCE, which some hosts withhold from root). */
function growOnline (pid, device) {
  return tool('nsenter', [`--mount=/proc/${pid}/ns/mnt`, '--', 'resize2fs', device])
}

function freeze (mnt, on) {
  return tool('fsfreeze', [on ? '--freeze' : '--unfreeze', mnt])
}

/* The Volume's block figures: from the live filesystem at mount root mnt,
   else from the superblock on device; null when neither answers. */
async function figures (mnt, device) {
  if (mnt) {
    try {
      const s = await fsp.statfs(mnt)
      return { block_size: s.bsize, blocks: s.blocks, blocks_free: s.bfree, blocks_avail: s.bavail, bytes_total: s.blocks * s.bsize, bytes_used: (s.blocks - s.bfree) * s.bsize }
    } catch (_) { /* unmounted meanwhile */ }
  }
  try {
    const out = await tool('dumpe2fs', ['-h', device], { timeoutMs: 10000 })
    const field = (name) => Number((new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out) || [])[1] || 0)
    const bs = field('Block size')
    const blocks = field('Block count')
    const free = field('Free blocks')
    /* statfs counts the metadata's blocks as used too: the figure a
       machine's df shows */
    return { block_size: bs, blocks, blocks_free: free, blocks_avail: free, bytes_total: blocks * bs, bytes_used: (blocks - free) * bs }
  } catch (_) {
    return null
  }
}

/* The directory backend: cp -a copies links as links; GNU rm walks with
   fd-relative, no-follow calls; both stay on one filesystem. */
function copyTree (src, dst) {
  return tool('cp', ['-a', '--no-dereference', '--one-file-system', '--', `${src}/.`, `${dst}/`])
}

function removeTree (dir) {
  return tool('rm', ['-rf', '--one-file-system', '--', dir]).catch(() => {})
}

function removeTreeSync (dir) {
  spawnSync('rm', ['-rf', '--one-file-system', '--', dir], { stdio: 'ignore', env: SYS_ENV, timeout: TOOL_TIMEOUT_MS })
}

/* A directory snapshot's digest: sha256 of a tar of it (links archived as
   links; the copy is fly-local's own, no machine reaches it). */
async function treeDigest (dir) {
  const out = await tool('sh', ['-c', 'cd -- "$1" && tar --sort=name --numeric-owner --one-file-system -cf - . | sha256sum', 'sh', dir])
  return out.split(/\s/)[0]
}

async function treeBytes (dir) {
  const du = await tool('du', ['-s', '-P', '-B1', '--', dir]).catch(() => '0')
  return Number(du.split(/\s/)[0]) || 0
}

/* sha256 over an image's data extents (offset, length, bytes), found with
   SEEK_DATA/SEEK_HOLE so a mostly empty 1 GB image costs its data, not its
   size; Node has no SEEK_DATA, Python's os.lseek has. Without python3, the
   whole file. */
const SPARSE_SHA256 = `
import hashlib, os, sys
h = hashlib.sha256()
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NOFOLLOW)
end = os.fstat(fd).st_size
h.update(b'size %d' % end)
pos = 0
while pos < end:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    stop = os.lseek(fd, start, os.SEEK_HOLE)
    h.update(b'extent %d %d' % (start, stop - start))
    os.lseek(fd, start, os.SEEK_SET)
    left = stop - start
    while left > 0:
        b = os.read(fd, min(left, 1 << 20))
        if not b:
            break
        h.update(b)
        left -= len(b)
    pos = stop
print(h.hexdigest())
`

async function sha256Image (file) {
  try {
    const out = (await tool('python3', ['-c', SPARSE_SHA256, file])).trim()
    if (/^[0-9a-f]{64}$/.test(out)) return out
  } catch (_) { /* no python3: the whole file */ }
  return sha256File(file)
}

function sha256File (file) {
  return new Promise((resolve, reject) => {
    const h = crypto.createHash('sha256')
    fs.createReadStream(file, { highWaterMark: 1 << 20 })
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')))
  })
}

module.exports = {
  TOOL_TIMEOUT_MS,
  tool,
  sweepStaleLoops,
  loopWorks,
  mkfsImage,
  copyImage,
  attach,
  detach,
  detachSync,
  setCapacity,
  growOffline,
  growOnline,
  freeze,
  figures,
  copyTree,
  removeTree,
  removeTreeSync,
  treeBytes,
  treeDigest,
  sha256Image
}
