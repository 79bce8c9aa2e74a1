'use strict'
// provider.snapshot: snapshots of a sandbox's workspace volume (Fly Volume
// snapshots).  A snapshot's id carries what later calls need:
// "<app>:<volumeId>:<snapshotId>".  Fly's Machines API has no way to
// delete a snapshot (they expire after the volume's snapshot_retention
// days), so delete() is a typed refusal.  Fly stores no name or metadata
// with a snapshot: create returns the ones given, and list cannot.
const api = require('./api')
const { flyError, invalidArg } = require('./errors')
const { requireToken } = require('./config')
const { parseSandboxId } = require('./machine')
const { TAG, VOLUME, VOLUME_PREFIX, metadataOf, isGone } = require('./metadata')

const PART = /^[A-Za-z0-9_]{1,64}$/
const APP = /^[a-z0-9][a-z0-9-]{0,62}$/

function parse (id) {
  if (typeof id !== 'string') throw invalidArg('snapshotId must be a string')
  const parts = id.split(':')
  if (parts.length !== 3 || !APP.test(parts[0]) || !PART.test(parts[1]) || !PART.test(parts[2])) {
    throw invalidArg(`Invalid snapshotId ${JSON.stringify(id)}: expected "appName:volumeId:snapshotId"`)
  }
  return { id, app: parts[0], volume: parts[1], snapshot: parts[2] }
}

function shape (app, volumeId, s, sandboxId, extra) {
  return {
    id: `${app}:${volumeId}:${s.id}`,
    provider: 'fly',
    sandboxId,
    volumeId,
    /* always a Date (ComputeSDK's type); Fly always sends created_at */
    createdAt: new Date(s.created_at || 0),
    size: Number(s.size) || 0,
    volumeSizeGb: s.volume_size,
    status: s.status,
    retentionDays: s.retention_days,
    digest: s.digest,
    ...extra
  }
}

async function volumeOf (config, sandboxId) {
  const { app, machine } = parseSandboxId(sandboxId)
  const m = await api.getMachine(config, { app, machine })
  if (isGone(m)) throw flyError('FLY_NOT_FOUND', `sandbox ${sandboxId} does not exist`)
  const vol = metadataOf(m)[VOLUME]
  if (!vol) {
    throw flyError('FLY_VOLUME_REQUIRED', `sandbox ${sandboxId} has no workspace volume; snapshots need one ` +
      '(create the sandbox with volume: { sizeGb })', { sandboxId })
  }
  return { app, volume: vol }
}

async function listOf (config, app, volume) {
  return (await api.call(config, 'volume.snapshots', { app, volume })).body || []
}

// POST .../snapshots answers with no body on Fly: the new snapshot is the
// one the listing has now and did not have before.
async function create (ctx, sandboxId, options) {
  const { config } = ctx
  requireToken(config)
  const o = options || {}
  if (typeof o !== 'object') throw invalidArg('snapshot.create: options must be an object')
  if (o.name !== undefined && typeof o.name !== 'string') throw invalidArg('snapshot.create: name must be a string')
  const { app, volume } = await volumeOf(config, sandboxId)
  const before = new Set((await listOf(config, app, volume)).map((s) => s.id))
  const r = await api.call(config, 'volume.snapshot_create', { app, volume })
  let snap = r.body && typeof r.body === 'object' && typeof r.body.id === 'string' ? r.body : null
  if (!snap) {
    const fresh = (await listOf(config, app, volume)).filter((s) => !before.has(s.id))
    fresh.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)))
    snap = fresh[0]
  }
  if (!snap) throw flyError('FLY_BAD_RESPONSE', `snapshot of volume ${volume}: the API did not list the new snapshot`)
  const extra = {}
  if (o.name !== undefined) extra.name = o.name
  if (o.metadata !== undefined) extra.metadata = { ...o.metadata }
  return shape(app, volume, snap, sandboxId, extra)
}

// { sandboxId?, limit? }: that sandbox's snapshots, or those of every
// sandbox this provider lists; newest first.
async function list (ctx, options) {
  const { config } = ctx
  requireToken(config)
  const o = options || {}
  if (o.limit !== undefined && !(Number.isInteger(o.limit) && o.limit > 0)) {
    throw invalidArg('snapshot.list: limit must be a positive integer')
  }
  const sources = []
  if (o.sandboxId !== undefined && o.sandboxId !== null) {
    const v = await volumeOf(config, o.sandboxId)
    sources.push({ ...v, sandboxId: o.sandboxId })
  } else {
    let machines = []
    try {
      machines = (await api.call(config, 'machine.list', { app: config.appName },
        { query: { [`metadata.${TAG}`]: 'fly' } })).body || []
    } catch (err) {
      if (err.code !== 'FLY_NOT_FOUND') throw err
    }
    for (const m of machines) {
      const vol = !isGone(m) && metadataOf(m)[VOLUME]
      if (vol) sources.push({ app: config.appName, volume: vol, sandboxId: `${config.appName}:${m.id}` })
    }
    // The workspaces of destroyed sandboxes: their volumes are deleted, but
    // their snapshots live on (and restore) until they expire.
    const seen = new Set(sources.map((s) => s.volume))
    for (const v of await orgVolumes(config)) {
      if (v.app_name === config.appName && typeof v.name === 'string' && v.name.startsWith(VOLUME_PREFIX) && !seen.has(v.id)) {
        seen.add(v.id)
        sources.push({ app: config.appName, volume: v.id, sandboxId: null })
      }
    }
  }
  const out = []
  for (const s of sources) {
    for (const snap of await listOf(config, s.app, s.volume)) out.push(shape(s.app, s.volume, snap, s.sandboxId))
  }
  out.sort((a, b) => b.createdAt - a.createdAt)
  return o.limit ? out.slice(0, o.limit) : out
}

// Every volume of the org, deleted ones too, page by page (at most
// ORG_PAGES pages of 1,000).
const ORG_PAGES = 50
async function orgVolumes (config) {
  const out = []
  let cursor
  for (let i = 0; i < ORG_PAGES; i++) {
    let page
    try {
      page = (await api.call(config, 'volume.org_list', { org: config.org },
        { query: { include_deleted: 'true', summary: 'true', limit: '1000', cursor } })).body || {}
    } catch (err) {
      if (err.code === 'FLY_NOT_FOUND') return out
      throw err
    }
    if (Array.isArray(page.volumes)) out.push(...page.volumes)
    if (typeof page.next_cursor !== 'string' || page.next_cursor === '' || page.next_cursor === cursor) return out
    cursor = page.next_cursor
  }
  return out
}

async function remove (ctx, snapshotId) {
  parse(snapshotId)
  throw flyError('FLY_SNAPSHOT_DELETE_UNSUPPORTED', `snapshot ${snapshotId} cannot be deleted: Fly's Machines API ` +
    "has no snapshot delete; snapshots expire after the volume's snapshot_retention (days)", { snapshotId })
}

module.exports = { parse, create, list, delete: remove }
