'use strict'
// provider.snapshot and fork, against fly-local: a snapshot's workspace
// appears in a new sandbox; a fork starts as a copy of its source's
// workspace and then diverges; typed errors for what Fly cannot do.
const test = require('node:test')
const assert = require('node:assert/strict')
const { startLocal, provider, rejects } = require('./helpers/fly')

let srv
test.before(async () => { srv = await startLocal() })
test.after(() => srv && srv.stop())

test('snapshot.create / list, and create({ snapshotId }) restores the workspace', async () => {
  const p = provider(srv)
  const src = await p.sandbox.create({ volume: { sizeGb: 1 } })
  const made = []
  try {
    await src.filesystem.writeFile('/home/sandbox/state.txt', 'v1\n')
    await src.runCommand('sync')
    const snap = await p.snapshot.create(src.sandboxId, { name: 'first' })
    assert.equal(snap.sandboxId, src.sandboxId)
    assert.equal(snap.name, 'first')
    assert.ok(snap.createdAt instanceof Date && !isNaN(snap.createdAt))
    assert.equal(typeof snap.size, 'number')
    const [app, volumeId, snapId] = snap.id.split(':')
    assert.equal(app, src.sandboxId.split(':')[0])
    assert.equal(volumeId, (await src.getInfo()).metadata.volumeId)
    assert.match(snapId, /^vs_/)

    await src.filesystem.writeFile('/home/sandbox/state.txt', 'v2\n')
    const listed = await p.snapshot.list({ sandboxId: src.sandboxId })
    assert.deepEqual(listed.map((s) => s.id), [snap.id])
    assert.deepEqual((await p.snapshot.list()).map((s) => s.id), [snap.id])
    assert.equal((await p.snapshot.list({ limit: 1 })).length, 1)

    const restored = await p.sandbox.create({ snapshotId: snap.id })
    made.push(restored)
    assert.equal(await restored.filesystem.readFile('/home/sandbox/state.txt'), 'v1\n')
    assert.notEqual((await restored.getInfo()).metadata.volumeId, volumeId)
    assert.equal(await src.filesystem.readFile('/home/sandbox/state.txt'), 'v2\n')

    const del = await rejects(p.snapshot.delete(snap.id))
    assert.equal(del.code, 'FLY_SNAPSHOT_DELETE_UNSUPPORTED')
    assert.match(del.message, /snapshot_retention/)
    assert.equal((await rejects(p.snapshot.delete('not-an-id'))).code, 'ERR_INVALID_ARG')
    assert.equal((await rejects(p.sandbox.create({ snapshotId: 'a:b' }))).code, 'ERR_INVALID_ARG')
  } finally {
    for (const sb of made) await sb.destroy()
    await src.destroy()
  }
})

test('a destroyed sandbox\'s snapshots are still listed, and still restore', async () => {
  const p = provider(srv)
  const src = await p.sandbox.create({ volume: { sizeGb: 1 } })
  let restored = null
  try {
    await src.filesystem.writeFile('/home/sandbox/kept.txt', 'outlives its sandbox\n')
    await src.runCommand('sync')
    const snap = await p.snapshot.create(src.sandboxId)
    await src.destroy()
    // Listed through the org's volumes, deleted ones included: its sandbox
    // is gone, so it names none.
    const listed = (await p.snapshot.list()).filter((s) => s.id === snap.id)
    assert.equal(listed.length, 1, 'the snapshot is still listed')
    assert.equal(listed[0].sandboxId, null)
    restored = await p.sandbox.create({ snapshotId: listed[0].id })
    assert.equal(await restored.filesystem.readFile('/home/sandbox/kept.txt'), 'outlives its sandbox\n')
  } finally {
    if (restored) await restored.destroy()
    await src.destroy()
  }
})

test('fork() copies the workspace, then the two diverge', async () => {
  const p = provider(srv)
  const src = await p.sandbox.create({ volume: { sizeGb: 1 } })
  let fork = null
  let fork2 = null
  try {
    await src.filesystem.writeFile('/home/sandbox/shared.txt', 'base\n')
    await src.runCommand('sync')
    fork = await src.fork()
    assert.notEqual(fork.sandboxId, src.sandboxId)
    assert.equal(await fork.filesystem.readFile('/home/sandbox/shared.txt'), 'base\n')
    await fork.filesystem.writeFile('/home/sandbox/shared.txt', 'fork\n')
    await src.filesystem.writeFile('/home/sandbox/only-src.txt', 'x')
    assert.equal(await src.filesystem.readFile('/home/sandbox/shared.txt'), 'base\n')
    assert.equal(await fork.filesystem.exists('/home/sandbox/only-src.txt'), false)
    // create({ fromSandbox }) is the same
    fork2 = await p.sandbox.create({ fromSandbox: fork.sandboxId })
    assert.equal(await fork2.filesystem.readFile('/home/sandbox/shared.txt'), 'fork\n')
  } finally {
    if (fork2) await fork2.destroy()
    if (fork) await fork.destroy()
    await src.destroy()
  }
})

test('without a volume, snapshots and forks are FLY_VOLUME_REQUIRED', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create()
  try {
    assert.equal((await rejects(p.snapshot.create(sb.sandboxId))).code, 'FLY_VOLUME_REQUIRED')
    assert.equal((await rejects(sb.fork())).code, 'FLY_VOLUME_REQUIRED')
    assert.equal((await rejects(p.snapshot.list({ sandboxId: sb.sandboxId }))).code, 'FLY_VOLUME_REQUIRED')
  } finally {
    await sb.destroy()
  }
})
