'use strict'
// The workspace volume, against fly-local: create({ volume }) mounts a Fly
// Volume of the sandbox's own at /home/sandbox; it survives a stop (which
// resets the root); destroy removes the machine and that volume, nothing
// else; a failed create leaves no volume.
const test = require('node:test')
const assert = require('node:assert/strict')
const { startLocal, startProxy, provider, call, rejects, sandboxIds } = require('./helpers/fly')

let srv
test.before(async () => { srv = await startLocal() })
test.after(() => srv && srv.stop())

const volumesOf = async (app) => (await call(srv, 'volume.list', { app })).body.filter((v) => v.state !== 'destroyed')

test('a volume at /home/sandbox survives pause({ keepMemory: false }) while /tmp is reset', async () => {
  const p = provider(srv)
  const sb = await p.sandbox.create({ volume: { sizeGb: 1 } })
  try {
    const { app, machine } = sandboxIds(sb)
    const m = (await call(srv, 'machine.get', { app, machine })).body
    const volId = m.config.metadata.computesdk_volume
    assert.match(volId, /^vol_/)
    assert.deepEqual(m.config.mounts.map((x) => [x.volume, x.path]), [[volId, '/home/sandbox']])
    const vol = (await call(srv, 'volume.get', { app, volume: volId })).body
    assert.equal(vol.region, m.region)
    assert.equal(vol.size_gb, 1)
    assert.equal(vol.attached_machine_id, machine)
    const info = await sb.getInfo()
    assert.equal(info.metadata.volumeId, volId)
    assert.equal(info.metadata.volume.sizeGb, 1)

    // The sandbox user owns its workspace on the volume.
    const w = await sb.runCommand('echo kept > /home/sandbox/work.txt && echo lost > /tmp/work.txt && stat -c %U /home/sandbox')
    assert.equal(w.exitCode, 0, w.stderr)
    assert.equal(w.stdout, 'sandbox\n')
    await sb.pause({ keepMemory: false })
    assert.equal((await sb.getInfo()).status, 'paused')
    // wake on use
    assert.equal(await sb.filesystem.readFile('/home/sandbox/work.txt'), 'kept\n')
    assert.equal(await sb.filesystem.exists('/tmp/work.txt'), false)
  } finally {
    await sb.destroy()
  }
})

test('destroy removes the machine and its volume, and nothing else', async () => {
  const p = provider(srv)
  const a = await p.sandbox.create({ volume: { sizeGb: 1 } })
  const b = await p.sandbox.create({ volume: { sizeGb: 1 } })
  const { app } = sandboxIds(a)
  // a volume of someone else's in the same app
  const other = (await call(srv, 'volume.create', { app }, { body: JSON.stringify({ name: 'someone_else', size_gb: 1, region: 'iad' }) })).body
  try {
    const volA = (await a.getInfo()).metadata.volumeId
    const volB = (await b.getInfo()).metadata.volumeId
    assert.deepEqual((await volumesOf(app)).map((v) => v.id).sort(), [volA, volB, other.id].sort())
    // Metadata that names another volume (set through the API) does not
    // make destroy remove it: only the volume named after the create is.
    assert.equal((await rejects(p.sandbox.create({ metadata: { computesdk_volume: other.id } }))).code, 'ERR_INVALID_ARG')
    const [, machineB] = b.sandboxId.split(':')
    await call(srv, 'machine.metadata.set', { app, machine: machineB, key: 'computesdk_volume' },
      { body: JSON.stringify({ value: other.id }) })
    await a.destroy()
    assert.equal(await p.sandbox.getById(a.sandboxId), null)
    assert.deepEqual((await volumesOf(app)).map((v) => v.id).sort(), [volB, other.id].sort())
    assert.equal((await b.runCommand('echo alive')).stdout, 'alive\n')
    await a.destroy() // idempotent
  } finally {
    await b.destroy()
  }
  // b's own volume is left behind (its metadata no longer names it), other is untouched
  const left = (await volumesOf(app)).map((v) => v.id)
  assert.ok(left.includes(other.id))
  assert.equal(left.length, 2)
})

test('a create that fails after its volume was made removes the volume too', async (t) => {
  // Aborted as soon as the volume create is sent: the machine is never made.
  const ac = new AbortController()
  let app = null
  const via = await startProxy(t, srv, {
    onRequest: (method, url) => {
      const m = /^\/v1\/apps\/([^/]+)\/volumes$/.exec(url)
      if (method === 'POST' && m) {
        app = m[1]
        ac.abort(new Error('stop here'))
      }
    }
  })
  const p = provider(via)
  const err = await rejects(p.sandbox.create({ volume: { sizeGb: 1 }, signal: ac.signal }))
  assert.equal(err.name, 'AbortError')
  assert.ok(app, 'the volume create was sent')
  assert.deepEqual(await volumesOf(app), [])
  assert.deepEqual((await call(srv, 'machine.list', { app })).body, [])
})

test('a provider default volume, and volume: false to opt out', async () => {
  const p = provider(srv, { volume: { sizeGb: 2 } })
  const sb = await p.sandbox.create()
  const none = await p.sandbox.create({ volume: false })
  try {
    assert.equal((await sb.getInfo()).metadata.volume.sizeGb, 2)
    assert.equal((await none.getInfo()).metadata.volumeId, null)
    assert.equal((await rejects(p.sandbox.create({ volume: { sizeGb: 0 } }))).code, 'ERR_INVALID_ARG')
  } finally {
    await sb.destroy()
    await none.destroy()
  }
})
