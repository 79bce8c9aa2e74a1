'use strict'
// Each boot's writable root on a disk of its own: an ext4 image file of a
// fixed size (sparse, so it takes on the host only what the machine wrote)
// that the boot's private mount namespace mounts over a loop device and
// that holds the overlay's upper and work directories (runtime.js). Writing
// past it is ENOSPC inside the machine, past its inode count too, and the
// host's disk and inodes move by no more than that; the machine's `df /`
// shows its own size.
//
// A boot's image is a sparse copy of a template formatted once per instance
// and root owner (mkfs.ext4 -d lays out upper/ and work/ with the owner and
// mode of the image's root), so a create pays a copy of a few MiB of
// metadata, not a mkfs; a few copies are kept ready ahead of the creates
// that take them. `mount -o loop` sets the loop device to clear itself, so
// it goes when the boot's mount namespace does (with the machine, or with
// fly-local killed); the image file goes with the boot's directory.
const crypto = require('crypto')
const fs = require('fs')
const fsp = fs.promises
const path = require('path')
const { tool, copyImage } = require('./volume-host')
const { Ready } = require('./ready')

const MIB = 1024 * 1024
const DEFAULT_SIZE_MB = 4096
/* mkfs.ext4's own count for 4 GiB (one inode per 16 KiB) */
const DEFAULT_INODES = 262144
/* copies made ahead of the creates that take one (each a few MiB on disk) */
const READY = 2

/* A positive integer from an option, else the environment, else dflt;
   bad input is ERR_INVALID_ARG. */
function positive (value, envName, dflt, min) {
  const raw = value != null ? value : (process.env[envName] || null)
  if (raw == null || raw === '') return dflt
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min) {
    throw Object.assign(new TypeError(`${value != null ? 'start' : envName}: the root disk's ${envName === 'FLY_LOCAL_ROOT_DISK_MB' ? 'size in MiB' : 'inode count'} must be an integer >= ${min} (got ${JSON.stringify(raw)})`), { code: 'ERR_INVALID_ARG' })
  }
  return n
}

/* { sizeMb, inodes } from start()'s rootDiskMb/rootInodes, else
   FLY_LOCAL_ROOT_DISK_MB / FLY_LOCAL_ROOT_INODES, else the defaults. */
function config (opts = {}) {
  return {
    sizeMb: positive(opts.rootDiskMb, 'FLY_LOCAL_ROOT_DISK_MB', DEFAULT_SIZE_MB, 64),
    inodes: positive(opts.rootInodes, 'FLY_LOCAL_ROOT_INODES', DEFAULT_INODES, 1024)
  }
}

class RootDisks {
  /* dir: the instance's state directory (root's, 0711) */
  constructor (dir, { sizeMb, inodes }) {
    this.dir = path.join(dir, 'rootdisk')
    this.sizeMb = sizeMb
    this.inodes = inodes
    /* owner key -> the Ready copies of its template */
    this.kinds = new Map()
    fs.mkdirSync(this.dir, { mode: 0o700 })
  }

  /* The template for a root owned uid:gid with mode: an ext4 image whose
     root holds upper/ (that owner and mode) and work/ (root's, 0700, as
     overlayfs wants it). */
  async makeTemplate (key, { uid, gid, mode }) {
    const seed = path.join(this.dir, `seed-${key}`)
    const image = path.join(this.dir, `template-${key}.img`)
    await fsp.rm(seed, { recursive: true, force: true })
    await fsp.mkdir(path.join(seed, 'upper'), { recursive: true, mode: 0o700 })
    await fsp.mkdir(path.join(seed, 'work'), { mode: 0o700 })
    await fsp.chown(path.join(seed, 'upper'), uid, gid)
    await fsp.chmod(path.join(seed, 'upper'), mode)
    await fsp.chmod(seed, 0o700)
    const fh = await fsp.open(image, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600)
    try { await fh.truncate(this.sizeMb * MIB) } finally { await fh.close() }
    /* no journal: a boot's root is thrown away with the boot, it never needs
       recovery; inode tables left unwritten (lazy_itable_init here and
       noinit_itable where runtime.js mounts it: the sparse file reads as
       zeroes there anyway), so the image stays a few MiB on the host and a
       boot writes no 64 MiB of zeroes behind the machine's back */
    await tool('mkfs.ext4', ['-q', '-F', '-m', '0', '-N', String(this.inodes), '-O', '^has_journal',
      '-E', 'lazy_itable_init=1,lazy_journal_init=1', '-d', seed, image])
    await fsp.rm(seed, { recursive: true, force: true })
    return image
  }

  kind (owner) {
    const key = `${owner.uid}-${owner.gid}-${(owner.mode & 0o7777).toString(8)}`
    let k = this.kinds.get(key)
    if (!k) {
      const template = this.makeTemplate(key, owner)
      template.catch(() => this.kinds.delete(key))
      k = new Ready(async () => {
        const dst = path.join(this.dir, `ready-${crypto.randomBytes(6).toString('hex')}.img`)
        await copyImage(await template, dst)
        return dst
      }, (p) => fs.rmSync(p, { force: true }), READY)
      this.kinds.set(key, k)
    }
    return k
  }

  /* Puts a fresh root image for a root owned like owner ({ uid, gid, mode })
     at dst (a path of the boot's directory). */
  async take (owner, dst) {
    await fsp.rename(await this.kind(owner).take(), dst)
  }

  refill () {
    for (const k of this.kinds.values()) k.refill()
  }

  close () {
    for (const k of this.kinds.values()) k.close()
  }
}

module.exports = { RootDisks, config, DEFAULT_SIZE_MB, DEFAULT_INODES }
