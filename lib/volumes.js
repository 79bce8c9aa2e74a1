'use strict'
// The workspace volume: a Fly Volume of the sandbox's own, mounted at
// /home/sandbox, made before the machine (in its region) from create's
// `volume`, `snapshotId` or `fromSandbox`, recorded in the machine's
// metadata (VOLUME) and removed after the machine by destroy.  A Fly
// machine's root filesystem is reset from the image on every start after
// a stop; the volume is what survives.
const api = require('./api')
const { flyError, invalidArg } = require('./errors')
const { volumeOption } = require('./config')
const { parseSandboxId } = require('./machine')
const { VOLUME, VOLUME_PREFIX, metadataOf, isGone } = require('./metadata')
const snapshotIds = require('./snapshots')

const WORKSPACE = '/home/sandbox'

function volumeName (createId) {
  return VOLUME_PREFIX + createId.slice(0, 24)
}

// What create asks for: null (no volume) or { sizeGb, snapshot_id?,
// source_volume_id? }.  Throws before anything is made.
async function plan (ctx, o) {
  const { config } = ctx
  const given = volumeOption(o.volume, 'create')
  const hasSnap = o.snapshotId !== undefined && o.snapshotId !== null
  const hasFork = o.fromSandbox !== undefined && o.fromSandbox !== null
  if (hasSnap && hasFork) throw invalidArg('create: snapshotId and fromSandbox cannot be used together')
  const vol = given !== undefined ? given : config.volume
  // From a snapshot or a fork, the size is the source's unless one is asked.
  const size = given && given.sizeGb ? { size_gb: given.sizeGb } : {}
  if (hasSnap) {
    // A snapshot outlives its volume, and restores anywhere in the org.
    const s = snapshotIds.parse(o.snapshotId)
    return { ...size, snapshot_id: s.snapshot }
  }
  if (hasFork) {
    const { app, machine } = parseSandboxId(o.fromSandbox)
    if (app !== config.appName) throw invalidArg(`create: fromSandbox ${o.fromSandbox} is not in app ${config.appName}`)
    const m = await api.getMachine(config, { app, machine })
    if (isGone(m)) throw flyError('FLY_NOT_FOUND', `fromSandbox ${o.fromSandbox} does not exist`)
    const src = metadataOf(m)[VOLUME]
    if (!src) {
      throw flyError('FLY_VOLUME_REQUIRED', `sandbox ${o.fromSandbox} has no workspace volume to fork; ` +
        'create it with volume: { sizeGb }')
    }
    return { ...size, source_volume_id: src }
  }
  if (!vol) return null
  return { size_gb: vol.sizeGb }
}

// Makes the planned volume and mounts it in body (the machine create
// request).  Returns the volume's id.  After an ambiguous failure (the
// request may have been processed), volumes with this create's name are
// looked up and removed, so that a failed create leaves none.
async function make (ctx, want, body, createId) {
  const { config } = ctx
  const app = config.appName
  const name = volumeName(createId)
  const req = { name, region: body.region, ...want }
  let vol
  try {
    vol = (await api.call(config, 'volume.create', { app }, { body: req })).body
  } catch (err) {
    if (!(err.status >= 400 && err.status < 500)) await removeNamed(config, app, name).catch(() => {})
    throw err
  }
  if (!vol || typeof vol.id !== 'string') throw flyError('FLY_BAD_RESPONSE', 'volume create: the reply has no volume id')
  body.config.mounts = [{ volume: vol.id, path: WORKSPACE }]
  body.config.metadata[VOLUME] = vol.id
  return vol.id
}

async function removeNamed (config, app, name) {
  const list = (await api.call(config, 'volume.list', { app })).body || []
  for (const v of list) if (v.name === name) await remove(config, app, v.id, name)
}

// Deletes a volume once no machine holds it: a destroyed machine releases
// its volume shortly after the delete answers, so a refusal while it is
// still attached is retried (bounded); a 404 is done.  With `name`, a
// volume of another name is left alone (it is not the one create made).
async function remove (config, app, volumeId, name, deadlineMs = 60000) {
  if (name !== undefined) {
    let v
    try {
      v = (await api.call(config, 'volume.get', { app, volume: volumeId })).body
    } catch (err) {
      if (err.code === 'FLY_NOT_FOUND') return
      throw err
    }
    if (!v || v.name !== name || v.state === 'destroyed' || v.state === 'destroying') return
  }
  const until = Date.now() + deadlineMs
  let delay = 100
  for (;;) {
    try {
      await api.call(config, 'volume.delete', { app, volume: volumeId })
      return
    } catch (err) {
      if (err.code === 'FLY_NOT_FOUND') return
      const attached = err.code === 'FLY_CONFLICT' || err.code === 'FLY_PRECONDITION' ||
        err.code === 'FLY_UNPROCESSABLE' || err.code === 'FLY_BAD_REQUEST'
      if (!attached || Date.now() + delay > until) throw err
    }
    await new Promise((resolve) => setTimeout(resolve, delay))
    delay = Math.min(delay * 2, 2000)
  }
}

// getInfo's view of the volume (null without one).
async function info (sb) {
  if (!sb.volumeId) return null
  try {
    const v = (await api.call(sb._ctx.config, 'volume.get', { app: sb.appName, volume: sb.volumeId })).body || {}
    return { id: sb.volumeId, sizeGb: v.size_gb, state: v.state, region: v.region, path: WORKSPACE, snapshotRetentionDays: v.snapshot_retention }
  } catch (err) {
    if (err.code === 'FLY_NOT_FOUND') return { id: sb.volumeId, state: 'gone', path: WORKSPACE }
    throw err
  }
}

module.exports = { plan, make, remove, info, volumeName, WORKSPACE }
