'use strict'
// fly-local's Fly Volumes: persistent storage with a real size limit, and
// snapshots of it.
//
// A volume is an ext4 filesystem in a sparse image file under the
// instance's state directory, attached to a loop device for its whole life.
// It is mounted (nosuid, nodev) in the private mount namespace of each boot
// of the machine it is attached to, just before the container starts, and
// bind-mounted at config.mounts[].path; the mount dies with that namespace,
// so nothing of it is left on the host when a machine stops, crashes or
// fly-local is killed. Writes past size_gb fail with ENOSPC inside the
// machine. The filesystem's root belongs to the image's sandbox user as the
// machine's user namespace maps it.
//
// Everything fly-local does to a volume from the host works on the image
// file or the block device, never on the tree the sandbox writes: a
// snapshot or a fork is a sparse copy of the image (taken under fsfreeze
// while the machine runs), a delete detaches the loop device and unlinks
// the image, an extend grows the file and then the filesystem. So no link
// a sandbox plants in its volume is ever followed by the host's root.
//
// Without loop devices (some container hosts) a volume is a plain directory
// with no size limit: one warning line at start, `backend: 'directory'`.
// Its copies (cp -a: links copied as links) and removals (rm's
// fd-relative walk, which never follows a link) walk the tree as the
// host's root, but only while no process of the sandbox can change it: the
// volume is not attached, or its machine is stopped, or its machine's
// cgroup is frozen for the copy (exec'd commands join that cgroup too).
const crypto = require('crypto')
const fsp = require('fs').promises
const path = require('path')
const { ID_BASE } = require('./image')
const cgroups = require('./cgroups')
const host = require('./volume-host')

const GiB = 1024 * 1024 * 1024
/* Fly's bounds for a volume's size */
const MAX_SIZE_GB = 500
/* the image's sandbox user (docker/provision.sh: useradd -u 1000) */
const SANDBOX_UID = 1000
const DEFAULT_RETENTION_DAYS = 5
function randomId (prefix, n, alphabet) {
  const bytes = crypto.randomBytes(n)
  let s = prefix
  for (const b of bytes) s += alphabet[b % alphabet.length]
  return s
}
const volumeId = () => randomId('vol_', 16, 'abcdefghijklmnopqrstuvwxyz0123456789')
const snapshotId = () => randomId('vs_', 24, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789')
const zoneId = () => crypto.randomBytes(2).toString('hex')

class Volumes {
  /* opts: { host, store, quiet, log } */
  static async create ({ host: flyHost, store, quiet = false, log }) {
    host.sweepStaleLoops()
    const v = new Volumes()
    v.host = flyHost
    v.store = store
    v.dir = path.join(flyHost.dir, 'volumes')
    v.snapDir = path.join(flyHost.dir, 'snapshots')
    /* 0711 like the state directory: the machine's user namespace must
       reach a directory volume's bind source, and nothing is listable */
    for (const d of [v.dir, v.snapDir]) {
      await fsp.mkdir(d, { mode: 0o711 })
      await fsp.chmod(d, 0o711)
    }
    v.volumes = new Map()
    v.snapshots = new Map()
    const forced = process.env.FLY_LOCAL_VOLUMES === 'directory'
    v.backend = !forced && host.loopWorks(v.dir) ? 'ext4' : 'directory'
    if (v.backend === 'directory') {
      const why = forced ? 'FLY_LOCAL_VOLUMES=directory' : 'this host cannot attach loop devices or lacks mkfs.ext4'
      const line = `fly-local: warning: volumes are plain directories without a size limit (${why})`
      if (log) log(line)
      else if (!quiet) process.stderr.write(`${line}\n`)
    }
    /* a destroyed machine lets go of its volume (which stays, `created`) */
    store.events.on('state', ({ app, id, state }) => {
      if (state !== 'destroyed') return
      for (const vol of v.volumes.values()) {
        if (vol.app === app && vol.attachedMachineId === id) vol.attachedMachineId = null
      }
    })
    return v
  }

  /* ---- the model ---- */

  get (appName, id) {
    const vol = this.volumes.get(id)
    return vol && vol.app === appName ? vol : null
  }

  list (appName) {
    return [...this.volumes.values()].filter((v) => v.app === appName && v.state !== 'destroyed')
      .sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
  }

  /* GET /v1/orgs/:org/volumes: the org's apps' volumes, deleted ones too
     when asked. */
  listOrg (org, { includeDeleted = false } = {}) {
    return [...this.volumes.values()].filter((v) => {
      const app = this.store.apps.get(v.app)
      return app && app.org === org && (includeDeleted || (v.state !== 'destroyed' && v.state !== 'destroying'))
    }).sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
  }

  count (appName) {
    return this.list(appName).length
  }

  /* Creates a volume: empty, from snapshot `fromSnapshot`, or a fork of
     volume `fromVolume` (its content now). */
  async create (appName, { name, sizeGb, region, encrypted, fstype, snapshotRetention, autoBackup, fromSnapshot, fromVolume }) {
    const vol = {
      id: volumeId(),
      app: appName,
      name,
      region,
      zone: zoneId(),
      sizeGb,
      encrypted,
      fstype,
      snapshotRetention,
      autoBackup,
      createdAt: new Date(),
      state: 'creating',
      attachedMachineId: null,
      image: null,
      device: null,
      dir: null,
      lock: Promise.resolve()
    }
    this.volumes.set(vol.id, vol)
    try {
      if (this.backend === 'ext4') await this.makeImage(vol, fromSnapshot, fromVolume)
      else await this.makeDir(vol, fromSnapshot, fromVolume)
    } catch (e) {
      this.volumes.delete(vol.id)
      await this.release(vol).catch(() => {})
      throw e
    }
    vol.state = 'created'
    return vol
  }

  async makeImage (vol, fromSnapshot, fromVolume) {
    vol.image = path.join(this.dir, `${vol.id}.img`)
    const bytes = vol.sizeGb * GiB
    if (fromSnapshot) await host.copyImage(fromSnapshot.image, vol.image)
    else if (fromVolume) await this.consistentCopy(fromVolume, vol.image)
    else await host.mkfsImage(vol.image, bytes, ID_BASE + SANDBOX_UID)
    await fsp.chmod(vol.image, 0o600)
    const grow = (await fsp.stat(vol.image)).size < bytes
    if (grow) await fsp.truncate(vol.image, bytes)
    vol.device = await host.attach(vol.image)
    if (grow) await host.growOffline(vol.device)
  }

  async makeDir (vol, fromSnapshot, fromVolume) {
    vol.dir = path.join(this.dir, `${vol.id}.d`)
    await fsp.mkdir(vol.dir, { mode: 0o755 })
    await fsp.chown(vol.dir, ID_BASE + SANDBOX_UID, ID_BASE + SANDBOX_UID)
    await fsp.chmod(vol.dir, 0o755)
    if (fromSnapshot) await host.copyTree(fromSnapshot.dir, vol.dir)
    else if (fromVolume) await this.withQuiesced(fromVolume, () => host.copyTree(fromVolume.dir, vol.dir))
  }

  /* Runs fn while nothing writes to the volume: when the machine it is
     attached to runs, inside that machine's queue (no boot or stop in
     between) with its filesystem frozen (or, for a directory, its
     processes frozen). */
  async withQuiesced (vol, fn) {
    const m = this.machineOf(vol)
    if (!m) return fn(null)
    return m.enqueue(async () => {
      const run = m.run
      if (!run || !run.started || run.exited) return fn(null)
      if (this.backend === 'directory') {
        const wasFrozen = run.frozen
        if (!wasFrozen) run.freeze()
        try { return await fn(null) } finally { if (!wasFrozen) run.thaw() }
      }
      const mnt = run.volumeMountPath(0)
      if (!mnt) return fn(null)
      await host.freeze(mnt, true)
      try {
        return await fn(mnt)
      } finally {
        await host.freeze(mnt, false).catch(() => {})
      }
    })
  }

  /* A point-in-time copy of vol's image at dst (sparse; a reflink where the
     host's filesystem has them). */
  consistentCopy (vol, dst) {
    /* the filesystem stays frozen at most this long */
    const timeoutMs = host.TOOL_TIMEOUT_MS + vol.sizeGb * 2000
    return this.withQuiesced(vol, () => host.copyImage(vol.image, dst, timeoutMs))
  }

  machineOf (vol) {
    if (!vol.attachedMachineId) return null
    const app = this.store.apps.get(vol.app)
    const m = app && app.machines.get(vol.attachedMachineId)
    return m && m.state !== 'destroyed' ? m : null
  }

  /* Serialise the operations on one volume. */
  locked (vol, fn) {
    const p = vol.lock.then(fn)
    vol.lock = p.catch(() => {})
    return p
  }

  /* Extend to sizeGb (larger only); { needsRestart }. */
  extend (vol, sizeGb) {
    return this.locked(vol, async () => {
      if (this.backend === 'directory') {
        vol.sizeGb = sizeGb
        return { needsRestart: false }
      }
      const online = (run) => run && run.started && !run.exited && run.volumeMountPath(0)
      const grow = async (run) => {
        await fsp.truncate(vol.image, sizeGb * GiB)
        await host.setCapacity(vol.device)
        vol.sizeGb = sizeGb
        if (!online(run)) {
          await host.growOffline(vol.device)
          return false
        }
        try {
          await host.growOnline(run.child.pid, vol.device)
          return false
        } catch (e) {
          /* it needs CAP_SYS_RESOURCE, which some hosts withhold from
             root: the next boot grows it before mounting, as Fly's
             needs_restart says */
          vol.growAtBoot = true
          return true
        }
      }
      const m = this.machineOf(vol)
      const needsRestart = m ? await m.enqueue(() => grow(m.run)) : await grow(null)
      return { needsRestart }
    })
  }

  /* A snapshot: a point-in-time copy of the volume, kept after the volume
     is deleted (until fly-local stops). */
  snapshot (vol) {
    return this.locked(vol, async () => {
      const snap = {
        id: snapshotId(),
        volumeId: vol.id,
        app: vol.app,
        createdAt: new Date(),
        volumeSize: vol.sizeGb,
        retentionDays: vol.snapshotRetention,
        status: 'created',
        image: null,
        dir: null,
        size: 0,
        digest: ''
      }
      if (this.backend === 'ext4') {
        snap.image = path.join(this.snapDir, `${snap.id}.img`)
        await this.consistentCopy(vol, snap.image)
        await fsp.chmod(snap.image, 0o600)
        const st = await fsp.stat(snap.image)
        snap.size = st.blocks * 512
        snap.digest = await host.sha256Image(snap.image)
      } else {
        snap.dir = path.join(this.snapDir, `${snap.id}.d`)
        await fsp.mkdir(snap.dir, { mode: 0o755 })
        await fsp.chown(snap.dir, ID_BASE + SANDBOX_UID, ID_BASE + SANDBOX_UID)
        await this.withQuiesced(vol, () => host.copyTree(vol.dir, snap.dir))
        snap.size = await host.treeBytes(snap.dir)
        snap.digest = await host.treeDigest(snap.dir)
      }
      this.snapshots.set(snap.id, snap)
      return snap
    })
  }

  snapshotsOf (vol) {
    return [...this.snapshots.values()].filter((s) => s.volumeId === vol.id)
      .sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
  }

  /* Deletes an unattached volume: the loop device goes, then the image. */
  destroy (vol) {
    /* at once: no machine may claim it while earlier operations finish */
    vol.state = 'destroying'
    return this.locked(vol, async () => {
      await this.release(vol)
      vol.state = 'destroyed'
      vol.destroyedAt = Date.now()
      /* A deleted volume with snapshots stays listed (include_deleted) and
         its snapshots readable, as on Fly, while they last: they outlive it. */
      if (this.snapshotsOf(vol).length > 0) return
      const t = setTimeout(() => { if (this.volumes.get(vol.id) === vol) this.volumes.delete(vol.id) }, this.store.destroyedGraceMs)
      t.unref()
    })
  }

  /* Frees what a volume holds on the host. */
  async release (vol) {
    if (vol.device) {
      await host.detach(vol.device).catch(() => {})
      vol.device = null
    }
    if (vol.image) {
      await fsp.rm(vol.image, { force: true })
      vol.image = null
    }
    if (vol.dir) {
      await host.removeTree(vol.dir)
      vol.dir = null
    }
  }

  async destroyApp (appName) {
    const work = []
    for (const vol of this.volumes.values()) {
      if (vol.app !== appName || vol.state === 'destroyed') continue
      vol.attachedMachineId = null
      work.push(this.destroy(vol))
    }
    for (const snap of this.snapshots.values()) if (snap.app === appName) work.push(this.dropSnapshot(snap))
    await Promise.allSettled(work)
  }

  async dropSnapshot (snap) {
    this.snapshots.delete(snap.id)
    if (snap.image) await fsp.rm(snap.image, { force: true })
    if (snap.dir) await host.removeTree(snap.dir)
  }

  /* stop(): every volume and snapshot fly-local made (machines are gone). */
  async destroyAll () {
    const work = []
    for (const vol of this.volumes.values()) work.push(vol.lock.then(() => this.release(vol)))
    for (const snap of this.snapshots.values()) work.push(this.dropSnapshot(snap))
    await Promise.allSettled(work)
    this.volumes.clear()
  }

  /* The process is exiting: detach the loop devices now (the state
     directory with the images goes with the host). */
  destroySync () {
    for (const vol of this.volumes.values()) {
      if (vol.device) host.detachSync(vol.device)
      vol.device = null
    }
    if (this.backend === 'directory') {
      /* the machines may still run: kill them before anything walks the
         trees they wrote, and walk with rm's no-follow traversal rather
         than the host's recursive removal */
      cgroups.killAll(this.host.tag)
      for (const d of [this.dir, this.snapDir]) host.removeTreeSync(d)
    }
  }

  /* ---- mounts ---- */

  /* Checks a machine's config.mounts against the app's volumes and holds
     the volumes for it: { commit(machineId), release() }. Throws an
     HttpError-like { status, message } through makeError. */
  claim (appName, mounts, region, machineId, makeError) {
    const held = []
    for (const mt of mounts || []) {
      const vol = this.get(appName, mt.volume)
      if (!vol || vol.state !== 'created') throw makeError(400, `invalid_argument: volume ${mt.volume} not found`)
      if (vol.region !== region) throw makeError(400, `invalid_argument: volume ${vol.id} is in region ${vol.region}, the machine in ${region}`)
      if (vol.attachedMachineId && vol.attachedMachineId !== machineId) {
        const who = vol.attachedMachineId.startsWith('claim-') ? 'a machine being created' : vol.attachedMachineId
        throw makeError(412, `failed_precondition: volume ${vol.id} is currently bound to machine: ${who}`)
      }
      held.push(vol)
    }
    const token = `claim-${crypto.randomBytes(6).toString('hex')}`
    for (const vol of held) if (!vol.attachedMachineId) vol.attachedMachineId = token
    return {
      volumes: held,
      commit: (id) => {
        for (const vol of held) if (vol.attachedMachineId === token) vol.attachedMachineId = id
      },
      release: () => {
        for (const vol of held) if (vol.attachedMachineId === token) vol.attachedMachineId = null
      }
    }
  }

  /* Lets go of the volumes machine m holds and its config no longer mounts
     (after an update, once the boot that mounted them is gone). */
  detachUnused (m) {
    const keep = new Set((m.config.mounts || []).map((mt) => mt.volume))
    for (const vol of this.volumes.values()) {
      if (vol.app === m.app.name && vol.attachedMachineId === m.id && !keep.has(vol.id)) vol.attachedMachineId = null
    }
  }

  /* config.mounts as the machine echoes them: with the volume's name. */
  normaliseMounts (appName, mounts) {
    return mounts.map((mt) => {
      const vol = this.get(appName, mt.volume)
      return { ...mt, ...(vol && vol.name && !mt.name ? { name: vol.name } : {}) }
    })
  }

  /* What a boot of machine m mounts: [{ device | source, path }]. */
  mountsFor (m) {
    const out = []
    for (const mt of m.config.mounts || []) {
      const vol = this.get(m.app.name, mt.volume)
      if (!vol || vol.attachedMachineId !== m.id || !(vol.device || vol.dir)) {
        throw new Error(`volume ${mt.volume} is not available to machine ${m.id}`)
      }
      out.push(vol.device ? { device: vol.device, path: mt.path, grow: !!vol.growAtBoot } : { source: vol.dir, path: mt.path })
      vol.growAtBoot = false
    }
    return out
  }

  /* ---- JSON ---- */

  /* mounted: the live filesystem's figures; else the superblock's */
  async stats (vol) {
    const bytesTotal = vol.sizeGb * GiB
    if (this.backend !== 'ext4' || !vol.device) {
      const blocks = bytesTotal / 4096
      return { block_size: 4096, blocks, blocks_free: blocks, blocks_avail: blocks, bytes_total: bytesTotal, bytes_used: 0 }
    }
    const m = this.machineOf(vol)
    const mnt = m && m.run && m.run.started && !m.run.exited && m.run.volumeMountPath(0)
    return (await host.figures(mnt, vol.device)) ||
      { block_size: 4096, blocks: bytesTotal / 4096, blocks_free: 0, blocks_avail: 0, bytes_total: bytesTotal, bytes_used: 0 }
  }

  async toJSON (vol, { summary = false } = {}) {
    const o = {
      id: vol.id,
      name: vol.name,
      state: vol.state,
      size_gb: vol.sizeGb,
      region: vol.region,
      zone: vol.zone,
      encrypted: vol.encrypted,
      fstype: vol.fstype,
      created_at: vol.createdAt.toISOString(),
      attached_machine_id: vol.attachedMachineId && !vol.attachedMachineId.startsWith('claim-') ? vol.attachedMachineId : null,
      attached_alloc_id: null,
      snapshot_retention: vol.snapshotRetention,
      auto_backup_enabled: vol.autoBackup,
      host_status: 'ok'
    }
    if (!summary && vol.state !== 'destroyed') Object.assign(o, await this.stats(vol))
    return o
  }

  snapshotJSON (snap) {
    return {
      id: snap.id,
      created_at: snap.createdAt.toISOString(),
      digest: snap.digest,
      retention_days: snap.retentionDays,
      size: snap.size,
      status: snap.status,
      volume_size: snap.volumeSize * GiB
    }
  }
}

module.exports = { Volumes, MAX_SIZE_GB, DEFAULT_RETENTION_DAYS, SANDBOX_UID, GiB }
