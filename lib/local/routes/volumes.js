'use strict'
// /v1/apps/:app/volumes: list, create (empty, from a snapshot with
// snapshot_id, or a fork of another volume with source_volume_id), get,
// update, destroy, extend, and a volume's snapshots (list, create). The
// storage itself is ../volumes.js.
const { E, isObject, truthy, findApp, paginate } = require('../http')
const { MAX_SIZE_GB, DEFAULT_RETENTION_DAYS } = require('../volumes')
const { REGION_CODES } = require('./platform')

const BASE = '/v1/apps/:app/volumes'
const ONE = `${BASE}/:id`
/* Fly's volume names: lowercase letters, digits and underscores, at most 30 */
const VOLUME_NAME = /^[a-z0-9_]{1,30}$/

function findVolume (store, appName, id, { destroyedToo = false } = {}) {
  findApp(store, appName)
  const vol = store.volumes.get(appName, id)
  if (!vol || (!destroyedToo && (vol.state === 'destroyed' || vol.state === 'destroying'))) throw E.notFound('volume')
  return vol
}

function sizeArg (v, what = 'size_gb') {
  if (!Number.isInteger(v) || v < 1 || v > MAX_SIZE_GB) throw E.bad(`${what} must be an integer between 1 and ${MAX_SIZE_GB}`)
  return v
}

function boolArg (body, name, dflt) {
  if (body[name] == null) return dflt
  if (typeof body[name] !== 'boolean') throw E.bad(`${name} must be a boolean`)
  return body[name]
}

function retentionArg (v, dflt) {
  if (v == null) return dflt
  if (!Number.isInteger(v) || v < 1 || v > 60) throw E.bad('snapshot_retention must be an integer between 1 and 60')
  return v
}

async function listVolumes (store, { params, query }) {
  const app = findApp(store, params.app)
  let list = store.volumes.list(app.name)
  const page = paginate(list, query)
  list = page.list
  const headers = page.headers
  const summary = truthy(query.get('summary'))
  return [200, await Promise.all(list.map((v) => store.volumes.toJSON(v, { summary }))), headers]
}

async function createVolume (store, { params, body }) {
  const app = findApp(store, params.app)
  if (!isObject(body)) throw E.bad('invalid request body')
  if (typeof body.name !== 'string' || !body.name) throw E.bad('name is required')
  if (!VOLUME_NAME.test(body.name)) throw E.bad('name must be at most 30 lowercase letters, digits or underscores')
  if (body.snapshot_id && body.source_volume_id) throw E.bad('only one of snapshot_id and source_volume_id can be set')
  let fromSnapshot = null
  let fromVolume = null
  let sourceSize = null
  if (body.snapshot_id != null) {
    if (typeof body.snapshot_id !== 'string') throw E.bad('snapshot_id must be a string')
    fromSnapshot = store.volumes.snapshots.get(body.snapshot_id)
    const owner = fromSnapshot && store.apps.get(fromSnapshot.app)
    /* a snapshot outlives its volume, and restores within its organisation */
    if (!fromSnapshot || (owner && owner.org !== app.org)) throw E.notFound('snapshot')
    sourceSize = fromSnapshot.volumeSize
  }
  if (body.source_volume_id != null) {
    if (typeof body.source_volume_id !== 'string') throw E.bad('source_volume_id must be a string')
    fromVolume = findVolume(store, app.name, body.source_volume_id)
    sourceSize = fromVolume.sizeGb
  }
  const sizeGb = body.size_gb == null && sourceSize ? sourceSize : sizeArg(body.size_gb)
  if (sourceSize && sizeGb < sourceSize) throw E.bad(`size_gb must be at least the source's ${sourceSize}`)
  let region = body.region
  if (region == null || region === '') region = fromVolume ? fromVolume.region : store.region
  if (!REGION_CODES.has(region)) throw E.bad(`region ${JSON.stringify(region)} not found`)
  const fstype = body.fstype == null || body.fstype === '' ? 'ext4' : body.fstype
  if (fstype !== 'ext4') throw E.bad(`unsupported fstype ${JSON.stringify(fstype)}`)
  for (const k of ['require_unique_zone', 'unique_zone_app_wide']) boolArg(body, k, false)
  const vol = await store.volumes.create(app.name, {
    name: body.name,
    sizeGb,
    region,
    fstype,
    encrypted: boolArg(body, 'encrypted', true),
    autoBackup: boolArg(body, 'auto_backup_enabled', true),
    snapshotRetention: retentionArg(body.snapshot_retention, DEFAULT_RETENTION_DAYS),
    fromSnapshot,
    fromVolume
  })
  return [200, await store.volumes.toJSON(vol)]
}

async function updateVolume (store, { params, body }) {
  const vol = findVolume(store, params.app, params.id)
  if (!isObject(body)) throw E.bad('invalid request body')
  const retention = retentionArg(body.snapshot_retention, vol.snapshotRetention)
  const autoBackup = boolArg(body, 'auto_backup_enabled', vol.autoBackup)
  vol.snapshotRetention = retention
  vol.autoBackup = autoBackup
  return [200, await store.volumes.toJSON(vol)]
}

async function destroyVolume (store, { params }) {
  const vol = findVolume(store, params.app, params.id)
  const m = store.volumes.machineOf(vol)
  if (m || vol.attachedMachineId) {
    const who = m ? m.id : vol.attachedMachineId.startsWith('claim-') ? 'a machine being created' : vol.attachedMachineId
    throw E.precondition(`volume is currently bound to machine: ${who}`)
  }
  await store.volumes.destroy(vol)
  return [200, await store.volumes.toJSON(vol)]
}

async function extendVolume (store, { params, body }) {
  const vol = findVolume(store, params.app, params.id)
  if (!isObject(body)) throw E.bad('invalid request body')
  const size = sizeArg(body.size_gb)
  if (size <= vol.sizeGb) throw E.bad(`size_gb must be greater than the volume's current ${vol.sizeGb}`)
  const { needsRestart } = await store.volumes.extend(vol, size)
  return [200, { needs_restart: needsRestart, volume: await store.volumes.toJSON(vol) }]
}

/* Fly's org-wide listing: { volumes, next_cursor } with each volume's
   app_name; include_deleted shows deleted volumes (whose snapshots live on). */
async function listOrgVolumes (store, { params, query }) {
  const page = paginate(store.volumes.listOrg(params.org, { includeDeleted: truthy(query.get('include_deleted')) }), query)
  const summary = truthy(query.get('summary'))
  const volumes = await Promise.all(page.list.map(async (v) => ({ ...await store.volumes.toJSON(v, { summary }), app_name: v.app })))
  const out = { volumes }
  if (page.headers['fly-next-cursor']) out.next_cursor = page.headers['fly-next-cursor']
  return [200, out]
}

function routes (route, { store }) {
  route('GET', '/v1/orgs/:org/volumes', (rq) => listOrgVolumes(store, rq))
  route('GET', BASE, (rq) => listVolumes(store, rq))
  route('POST', BASE, (rq) => createVolume(store, rq))
  route('GET', ONE, async ({ params }) => {
    const vol = findVolume(store, params.app, params.id, { destroyedToo: true })
    return [200, await store.volumes.toJSON(vol)]
  })
  route('PUT', ONE, (rq) => updateVolume(store, rq))
  route('DELETE', ONE, (rq) => destroyVolume(store, rq))
  route('PUT', `${ONE}/extend`, (rq) => extendVolume(store, rq))
  /* a deleted volume's snapshots can still be listed (and restored) */
  route('GET', `${ONE}/snapshots`, ({ params }) => {
    const vol = findVolume(store, params.app, params.id, { destroyedToo: true })
    return [200, store.volumes.snapshotsOf(vol).map((s) => store.volumes.snapshotJSON(s))]
  })
  /* Fly's reply has no documented body: clients list the snapshots */
  route('POST', `${ONE}/snapshots`, async ({ params }) => {
    const vol = findVolume(store, params.app, params.id)
    await store.volumes.snapshot(vol)
    return [200, null]
  })
}

module.exports = { routes }
