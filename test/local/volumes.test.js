'use strict'
// fly-local's Fly Volumes on real machines: the endpoints' shapes and
// status codes, mounts that outlive stops and restarts while the root
// resets, the size limit (ENOSPC), snapshots and forks with their own
// content, a sandbox that plants links for the host to follow, and a
// stop() that leaves no loop device or mount behind.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { spawn } = require('child_process')
const { localFixture, startLocal, client, assertSchema, run } = require('../helpers/local')

const IMAGE = 'registry-1.docker.io/library/ubuntu:22.04'
const app = `vol-${process.pid}`
const fx = localFixture({ app })
const { api } = fx
const V = `/v1/apps/${app}/volumes`
const M = `/v1/apps/${app}/machines`
const noLimit = () => fx.srv.volumeBackend !== 'ext4' && 'volumes are plain directories here (no loop devices, or FLY_LOCAL_VOLUMES=directory): no size limit'

async function createVolume (body) {
  const r = await api('POST', V, { name: 'data', size_gb: 1, ...body })
  assert.equal(r.status, 200, r.text)
  assertSchema('Volume', r.body)
  return r.body
}

async function deleteVolume (id) {
  const r = await api('DELETE', `${V}/${id}`)
  assert.equal(r.status, 200, r.text)
  return r.body
}

async function waitState (m, state) {
  const version = state === 'stopped' ? `&version=${m.version || m.instance_id}` : ''
  const w = await api('GET', `${M}/${m.id}/wait?state=${state}&timeout=60${version}`)
  if (w.status !== 200) {
    // Why it did not get there (a boot error is in the machine's events).
    const got = await api('GET', `${M}/${m.id}`)
    assert.fail(`${w.text}; events: ${JSON.stringify((got.body && got.body.events) || []).slice(0, 2000)}`)
  }
}

async function launch (volumeId, path = '/home/sandbox', extra = {}) {
  const r = await api('POST', M, {
    config: { image: IMAGE, guest: { cpu_kind: 'shared', cpus: 1, memory_mb: 512 }, restart: { policy: 'no' }, mounts: [{ volume: volumeId, path }] },
    ...extra
  })
  assert.equal(r.status, 200, r.text)
  assertSchema('Machine', r.body)
  await waitState(r.body, 'started')
  /* the entrypoint has set the home up once sshd answers */
  await fx.srv.waitSsh(r.body.id, 60000)
  return r.body
}

async function destroyMachine (m) {
  const r = await api('DELETE', `${M}/${m.id}?force=true`)
  assert.equal(r.status, 200, r.text)
  await waitState(m, 'destroyed')
}

/* a command in the machine as the sandbox user (exec runs as its root) */
async function asUser (m, script) {
  const r = await api('POST', `${M}/${m.id}/exec`, { command: ['runuser', '-u', 'sandbox', '--', 'sh', '-c', script], timeout: 60 })
  assert.equal(r.status, 200, r.text)
  return r.body
}

async function asRoot (m, script) {
  const r = await api('POST', `${M}/${m.id}/exec`, { command: ['sh', '-c', script], timeout: 60 })
  assert.equal(r.status, 200, r.text)
  return r.body
}

async function restartVia (m, verb) {
  const before = (await api('GET', `${M}/${m.id}`)).body
  if (verb === 'crash') {
    /* the main process dies (SIGKILL); restart policy no: the machine stops */
    await api('POST', `${M}/${m.id}/exec`, { command: ['kill', '-9', '2'], timeout: 10 })
    await waitState(before, 'stopped')
    assert.equal((await api('POST', `${M}/${m.id}/start`)).status, 200)
  } else if (verb === 'stop-start') {
    assert.equal((await api('POST', `${M}/${m.id}/stop`)).status, 200)
    await waitState(before, 'stopped')
    assert.equal((await api('POST', `${M}/${m.id}/start`)).status, 200)
  } else {
    assert.equal((await api('POST', `${M}/${m.id}/restart`)).status, 200)
    /* a restart is over when the next boot's start event is there */
    const deadline = Date.now() + 60000
    for (;;) {
      const ev = await api('GET', `${M}/${m.id}/events`)
      const starts = ev.body.filter((e) => e.type === 'start' && e.status === 'started')
      const first = before.events.filter((e) => e.type === 'start' && e.status === 'started').length
      if (starts.length > first) break
      assert.ok(Date.now() < deadline, 'restart did not finish')
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  await waitState(m, 'started')
  await fx.srv.waitSsh(m.id, 60000)
}

test('create, list, get, update, extend and delete have Fly\'s shapes', async () => {
  const vol = await createVolume({ name: 'shapes', snapshot_retention: 7 })
  assert.match(vol.id, /^vol_[0-9a-z]{16}$/)
  assert.equal(vol.state, 'created')
  assert.equal(vol.size_gb, 1)
  assert.equal(vol.region, 'iad')
  assert.equal(vol.fstype, 'ext4')
  assert.equal(vol.attached_machine_id, null)
  assert.equal(vol.snapshot_retention, 7)
  assert.equal(vol.auto_backup_enabled, true)
  if (!noLimit()) assert.ok(vol.bytes_total > 0.9 * 2 ** 30 && vol.bytes_total <= 2 ** 30, String(vol.bytes_total))

  const list = await api('GET', V)
  assert.equal(list.status, 200)
  assertSchema('VolumeList', list.body)
  assert.ok(list.body.some((v) => v.id === vol.id))
  const summary = await api('GET', `${V}?summary=true`)
  assertSchema('VolumeList', summary.body)
  const s = summary.body.find((v) => v.id === vol.id)
  assert.equal(s.blocks, undefined)
  assert.equal(s.bytes_used, undefined)

  const got = await api('GET', `${V}/${vol.id}`)
  assert.equal(got.status, 200)
  assertSchema('Volume', got.body)
  assert.equal(got.body.name, 'shapes')

  const up = await api('PUT', `${V}/${vol.id}`, { snapshot_retention: 10, auto_backup_enabled: false })
  assert.equal(up.status, 200, up.text)
  assertSchema('Volume', up.body)
  assert.equal(up.body.snapshot_retention, 10)
  assert.equal(up.body.auto_backup_enabled, false)

  const ext = await api('PUT', `${V}/${vol.id}/extend`, { size_gb: 2 })
  assert.equal(ext.status, 200, ext.text)
  assertSchema('ExtendVolume', ext.body)
  assert.equal(ext.body.volume.size_gb, 2)
  assert.equal(ext.body.needs_restart, false)
  if (!noLimit()) assert.ok(ext.body.volume.bytes_total > 1.9 * 2 ** 30, String(ext.body.volume.bytes_total))
  const smaller = await api('PUT', `${V}/${vol.id}/extend`, { size_gb: 2 })
  assert.equal(smaller.status, 400)
  assertSchema('Error', smaller.body)

  const del = await deleteVolume(vol.id)
  assertSchema('Volume', del)
  assert.equal(del.state, 'destroyed')
  const after = await api('GET', V)
  assert.ok(!after.body.some((v) => v.id === vol.id))
  assert.equal((await api('PUT', `${V}/${vol.id}/extend`, { size_gb: 3 })).status, 404)
})

test('bad requests are refused with Fly\'s errors', async () => {
  for (const body of [{ name: 'x', size_gb: 0 }, { name: 'x', size_gb: 1.5 }, { name: 'x' }, { size_gb: 1 },
    { name: 'Bad-Name', size_gb: 1 }, { name: 'x', size_gb: 1, region: 'zzz' }, { name: 'x', size_gb: 1, fstype: 'xfs' }]) {
    const r = await api('POST', V, body)
    assert.equal(r.status, 400, JSON.stringify(body))
    assertSchema('Error', r.body)
  }
  assert.equal((await api('POST', V, { name: 'x', snapshot_id: 'vs_nope' })).status, 404)
  assert.equal((await api('POST', V, { name: 'x', source_volume_id: 'vol_nope' })).status, 404)
  assert.equal((await api('GET', `${V}/vol_nope`)).status, 404)
  assert.equal((await api('GET', '/v1/apps/no-such-app/volumes')).status, 404)
  const m = await api('POST', M, { config: { image: IMAGE, mounts: [{ volume: 'vol_nope', path: '/data' }] }, skip_launch: true })
  assert.equal(m.status, 400, m.text)
  assertSchema('Error', m.body)
})

test('an attached volume: mounted at its path, deleting it is refused, a second machine cannot take it, destroy releases it', async () => {
  const vol = await createVolume({ name: 'attach' })
  const m = await launch(vol.id)
  const ms = await api('GET', `${M}/${m.id}`)
  assertSchema('Machine', ms.body)
  assert.deepEqual(ms.body.config.mounts.map((x) => [x.volume, x.path]), [[vol.id, '/home/sandbox']])
  const got = await api('GET', `${V}/${vol.id}`)
  assertSchema('Volume', got.body)
  assert.equal(got.body.attached_machine_id, m.id)

  const df = await asUser(m, 'stat -c "%U %a" /home/sandbox && touch /home/sandbox/mine && grep " /home/sandbox " /proc/mounts')
  assert.equal(df.exit_code, 0, df.stderr)
  assert.match(df.stdout, /^sandbox 755\n/)
  assert.match(df.stdout, /\/home\/sandbox \S+ \S*nosuid\S*nodev/)

  const del = await api('DELETE', `${V}/${vol.id}`)
  assert.equal(del.status, 412, del.text)
  assertSchema('Error', del.body)
  assert.match(del.body.error, new RegExp(`^failed_precondition: volume is currently bound to machine: ${m.id}$`))

  const other = await api('POST', M, { config: { image: IMAGE, mounts: [{ volume: vol.id, path: '/data' }] }, skip_launch: true })
  assert.equal(other.status, 412, other.text)
  const elsewhere = await createVolume({ name: 'elsewhere', region: 'ams' })
  const wrongRegion = await api('POST', M, { config: { image: IMAGE, mounts: [{ volume: elsewhere.id, path: '/data' }] }, region: 'iad', skip_launch: true })
  assert.equal(wrongRegion.status, 400, wrongRegion.text)
  /* no region: the machine goes where its volume is */
  const placed = await api('POST', M, { config: { image: IMAGE, mounts: [{ volume: elsewhere.id, path: '/data' }] }, skip_launch: true })
  assert.equal(placed.status, 200, placed.text)
  assert.equal(placed.body.region, 'ams')

  await destroyMachine(m)
  await destroyMachine(placed.body)
  const freed = await api('GET', `${V}/${vol.id}`)
  assert.equal(freed.body.attached_machine_id, null)
  assert.equal(freed.body.state, 'created')
  await deleteVolume(vol.id)
  await deleteVolume(elsewhere.id)
})

test('an update that mounts another volume takes it and lets the old one go', async () => {
  const a = await createVolume({ name: 'first' })
  const b = await createVolume({ name: 'second' })
  const m = await launch(a.id, '/data')
  try {
    assert.equal((await asRoot(m, 'echo in-a > /data/which')).exit_code, 0)
    const cur = (await api('GET', `${M}/${m.id}`)).body
    const up = await api('POST', `${M}/${m.id}`, { config: { ...cur.config, mounts: [{ volume: b.id, path: '/data' }] } })
    assert.equal(up.status, 200, up.text)
    await waitState(up.body, 'started')
    await fx.srv.waitSsh(m.id, 60000)
    const r = await asRoot(m, 'cat /data/which 2>&1; echo in-b > /data/which')
    assert.match(r.stdout, /No such file/)
    /* the old volume is free once the old boot is gone */
    const deadline = Date.now() + 30000
    while ((await api('GET', `${V}/${a.id}`)).body.attached_machine_id !== null && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    assert.equal((await api('GET', `${V}/${a.id}`)).body.attached_machine_id, null)
    assert.equal((await api('GET', `${V}/${b.id}`)).body.attached_machine_id, m.id)
    await deleteVolume(a.id)
  } finally {
    await destroyMachine(m)
    await deleteVolume(b.id)
  }
})

test('files on the volume survive stop/start, restart and a crash; the root and /tmp reset', async () => {
  const vol = await createVolume({ name: 'persist' })
  const m = await launch(vol.id)
  try {
    const w = await asUser(m, 'echo kept > /home/sandbox/workspace/notes.txt && echo gone > /tmp/scratch')
    assert.equal(w.exit_code, 0, w.stderr)
    assert.equal((await asRoot(m, 'echo gone > /root-file')).exit_code, 0)
    for (const verb of ['stop-start', 'restart', 'crash']) {
      await restartVia(m, verb)
      const r = await asUser(m, 'cat /home/sandbox/workspace/notes.txt; ls /tmp/scratch /root-file 2>&1 | wc -l; ls -d /home/sandbox/.local/bin')
      assert.equal(r.exit_code, 0, r.stderr)
      const [kept, missing, skel] = r.stdout.trim().split('\n')
      assert.equal(kept, 'kept', verb)
      assert.equal(missing.trim(), '2', `${verb}: /tmp/scratch and /root-file should be gone`)
      assert.equal(skel, '/home/sandbox/.local/bin')
      await asRoot(m, 'echo gone > /root-file && echo gone > /tmp/scratch')
    }
  } finally {
    await destroyMachine(m)
    await deleteVolume(vol.id)
  }
})

test('a root-owned volume root (a fresh volume on Fly) is given to the user at boot, and only it', async () => {
  const vol = await createVolume({ name: 'rootowned' })
  const m = await launch(vol.id)
  try {
    const prep = await asRoot(m, 'cd /home/sandbox && touch rootfile && ln -s /etc/shadow shadow-link && chown 0:0 /home/sandbox && stat -c %U /home/sandbox')
    assert.equal(prep.stdout, 'root\n', prep.stderr)
    await restartVia(m, 'restart')
    const r = await asUser(m, 'stat -c "%U %n" /home/sandbox /home/sandbox/rootfile /etc/shadow && stat -c "%U %n" -L /home/sandbox/shadow-link 2>&1; touch /home/sandbox/mine && echo wrote')
    assert.match(r.stdout, /^sandbox \/home\/sandbox\nroot \/home\/sandbox\/rootfile\nroot \/etc\/shadow\n[\s\S]*wrote\n$/)
  } finally {
    await destroyMachine(m)
    await deleteVolume(vol.id)
  }
})

test('writes past size_gb fail with ENOSPC inside the machine', async (t) => {
  if (noLimit()) return t.skip(noLimit())
  const vol = await createVolume({ name: 'full' })
  const m = await launch(vol.id)
  try {
    /* fill all but 8 MiB without writing the bytes, then write 32 MiB */
    const r = await asUser(m, 'cd /home/sandbox && free=$(df --output=avail -B1 . | tail -1) && ' +
      'fallocate -l $((free - 8388608)) filler && dd if=/dev/zero of=more bs=1M count=32 2>&1; echo "rc=$?"; du -sm more')
    assert.match(r.stdout, /No space left on device/, r.stdout + r.stderr)
    assert.match(r.stdout, /rc=1\n/)
    const big = await asUser(m, 'fallocate -l 2G /home/sandbox/huge 2>&1; echo "rc=$?"')
    assert.match(big.stdout, /No space left on device[\s\S]*rc=1/)
    /* the root filesystem is not the volume: it still takes writes */
    assert.equal((await asUser(m, 'dd if=/dev/zero of=/tmp/ok bs=1M count=16 2>/dev/null')).exit_code, 0)
  } finally {
    await destroyMachine(m)
    await deleteVolume(vol.id)
  }
})

test('a snapshot of a running machine\'s volume restores into a new volume, after the source is gone', async () => {
  const vol = await createVolume({ name: 'src' })
  const m = await launch(vol.id)
  let restored = null
  let m2 = null
  try {
    assert.equal((await asUser(m, 'echo "state 1" > /home/sandbox/workspace/s.txt && sync')).exit_code, 0)
    const s = await api('POST', `${V}/${vol.id}/snapshots`)
    assert.equal(s.status, 200, s.text)
    /* written after the snapshot: not in it */
    assert.equal((await asUser(m, 'echo "state 2" > /home/sandbox/workspace/s.txt && head -c 4194304 /dev/urandom > /home/sandbox/r && sync')).exit_code, 0)
    assert.equal((await api('POST', `${V}/${vol.id}/snapshots`)).status, 200)
    const list = await api('GET', `${V}/${vol.id}/snapshots`)
    assert.equal(list.status, 200)
    assertSchema('VolumeSnapshotList', list.body)
    assert.equal(list.body.length, 2)
    const [snap, later] = list.body
    assert.notEqual(snap.digest, later.digest)
    assert.ok(later.size >= snap.size + 4194304, `${snap.size} -> ${later.size}`)
    assert.equal(snap.status, 'created')
    assert.equal(snap.volume_size, 2 ** 30)
    assert.equal(snap.retention_days, 5)
    assert.ok(snap.size > 0)

    await destroyMachine(m)
    await deleteVolume(vol.id)
    restored = await createVolume({ name: 'restored', snapshot_id: snap.id, size_gb: 2 })
    assert.equal(restored.size_gb, 2)
    m2 = await launch(restored.id)
    const r = await asUser(m2, 'cat /home/sandbox/workspace/s.txt && df --output=size -B1G /home/sandbox | tail -1')
    assert.equal(r.exit_code, 0, r.stderr)
    const [content, size] = r.stdout.trim().split('\n')
    assert.equal(content, 'state 1')
    if (!noLimit()) assert.equal(size.trim(), '2')
  } finally {
    if (m2) await destroyMachine(m2)
    if (restored) await deleteVolume(restored.id)
  }
})

test('a fork through source_volume_id starts as its running source and then diverges', async () => {
  const vol = await createVolume({ name: 'origin' })
  const m = await launch(vol.id)
  let fork = null
  let m2 = null
  try {
    assert.equal((await asUser(m, 'echo shared > /home/sandbox/f && echo before > /home/sandbox/g')).exit_code, 0)
    fork = await createVolume({ name: 'forked', source_volume_id: vol.id })
    assert.equal(fork.size_gb, 1)
    assert.equal((await asUser(m, 'echo source-only > /home/sandbox/g')).exit_code, 0)
    m2 = await launch(fork.id)
    const r = await asUser(m2, 'cat /home/sandbox/f /home/sandbox/g && echo fork-only > /home/sandbox/h')
    assert.equal(r.exit_code, 0, r.stderr)
    assert.equal(r.stdout, 'shared\nbefore\n')
    const src = await asUser(m, 'cat /home/sandbox/g; ls /home/sandbox/h 2>/dev/null | wc -l')
    assert.equal(src.stdout, 'source-only\n0\n')
  } finally {
    if (m2) await destroyMachine(m2)
    await destroyMachine(m)
    if (fork) await deleteVolume(fork.id)
    await deleteVolume(vol.id)
  }
})

test('links a sandbox plants in its volume reach nothing on the host, in the machine or through snapshots, forks and deletes', async () => {
  const canaryDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-vol-canary-'))
  const canary = path.join(canaryDir, 'canary')
  fs.writeFileSync(canary, 'host secret\n')
  const vol = await createVolume({ name: 'hostile' })
  const m = await launch(vol.id)
  let fork = null
  let restored = null
  try {
    const plant = await asUser(m, `cd /home/sandbox && ln -s ${canary} file-link && ln -s ${canaryDir} dir-link && ` +
      'ln -s / root-link && ln -s /proc/1/root/etc proc-link; cat file-link 2>&1; ls dir-link/ 2>&1; echo x > dir-link/planted 2>&1; echo done')
    assert.match(plant.stdout, /No such file or directory[\s\S]*done/)
    assert.equal(fs.existsSync(path.join(canaryDir, 'planted')), false)
    /* root inside follows them inside too: the machine's own tree */
    const asRootInside = await asRoot(m, 'cat /home/sandbox/file-link 2>&1; ls /home/sandbox/root-link/ | head -3')
    assert.match(asRootInside.stdout, /No such file or directory/)

    assert.equal((await api('POST', `${V}/${vol.id}/snapshots`)).status, 200)
    const snap = (await api('GET', `${V}/${vol.id}/snapshots`)).body[0]
    fork = await createVolume({ name: 'hostile_fork', source_volume_id: vol.id })
    restored = await createVolume({ name: 'hostile_snap', snapshot_id: snap.id })
    await destroyMachine(m)
    await deleteVolume(vol.id)
    await deleteVolume(fork.id)
    fork = null
    assert.equal(fs.readFileSync(canary, 'utf8'), 'host secret\n')
    assert.deepEqual(fs.readdirSync(canaryDir), ['canary'])
    /* and the links arrive as links in the copy */
    const m2 = await launch(restored.id)
    try {
      const r = await asUser(m2, 'readlink /home/sandbox/file-link /home/sandbox/dir-link')
      assert.equal(r.stdout, `${canary}\n${canaryDir}\n`)
    } finally {
      await destroyMachine(m2)
    }
  } finally {
    if (fork) await deleteVolume(fork.id)
    if (restored) await deleteVolume(restored.id)
    fs.rmSync(canaryDir, { recursive: true, force: true })
  }
})

test('an app counts its volumes, and deleting the app deletes them', async () => {
  const other = `${app}-gone`
  assert.equal((await api('POST', '/v1/apps', { name: other, org_slug: 'personal' })).status, 201)
  const vol = await api('POST', `/v1/apps/${other}/volumes`, { name: 'data', size_gb: 1 })
  assert.equal(vol.status, 200, vol.text)
  assert.equal((await api('GET', `/v1/apps/${other}`)).body.volume_count, 1)
  const held = async () => (await run('losetup', ['--list', '--noheadings', '--raw', '--output', 'BACK-FILE'])).stdout.includes(`/${vol.body.id}.img`)
  if (fx.srv.volumeBackend === 'ext4') assert.equal(await held(), true)
  assert.equal((await api('DELETE', `/v1/apps/${other}`)).status, 202)
  const deadline = Date.now() + 30000
  while (fx.srv.volumeBackend === 'ext4' && await held() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  assert.equal(await held(), false)
  assert.equal((await api('GET', `/v1/apps/${other}/volumes/${vol.body.id}`)).status, 404)
})

/* loop devices backed by an image of fly-local instance dir */
async function loopsUnder (dir) {
  const r = await run('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE'])
  return r.stdout.split('\n').filter((l) => l.includes(`${dir}/`))
}

test('stop() removes every volume, snapshot, loop device and mount it made', async () => {
  const srv = await startLocal(null)
  const call = client(srv)
  let dir = null
  try {
    assert.equal((await call('POST', '/v1/apps', { name: `${app}-stop`, org_slug: 'personal' })).status, 201)
    const vol = await call('POST', `/v1/apps/${app}-stop/volumes`, { name: 'data', size_gb: 1 })
    assert.equal(vol.status, 200, vol.text)
    const m = await call('POST', `/v1/apps/${app}-stop/machines`, { config: { image: IMAGE, mounts: [{ volume: vol.body.id, path: '/data' }] } })
    assert.equal(m.status, 200, m.text)
    assert.equal((await call('GET', `/v1/apps/${app}-stop/machines/${m.body.id}/wait?state=started&timeout=60`)).status, 200)
    assert.equal((await call('POST', `/v1/apps/${app}-stop/volumes/${vol.body.id}/snapshots`)).status, 200)
    if (srv.volumeBackend === 'ext4') {
      const all = await run('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE'])
      const mine = all.stdout.split('\n').find((l) => l.includes(`/volumes/${vol.body.id}.img`))
      assert.ok(mine, all.stdout)
      dir = mine.split(' ')[1].replace(/\/volumes\/[^/]+$/, '')
    }
  } finally {
    await srv.stop()
  }
  if (dir) {
    /* a detach the kernel finishes once the last boot's namespace is gone */
    const deadline = Date.now() + 30000
    while ((await loopsUnder(dir)).length && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
    assert.deepEqual(await loopsUnder(dir), [])
    assert.equal(fs.existsSync(dir), false)
  }
  const mounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => /fly-local-\d+-[0-9a-f]+\/(volumes|snapshots)/.test(l))
  assert.deepEqual(mounts, [])
})

test('the loop devices of a fly-local that was killed are detached by the next start', async (t) => {
  if (fx.srv.volumeBackend !== 'ext4') return t.skip('volumes are plain directories here: no loop devices')
  const child = spawn(process.execPath, ['-e', `
    const { start } = require(${JSON.stringify(require.resolve('../../lib/local'))});
    (async () => {
      const srv = await start({ quiet: true });
      const h = { authorization: 'Bearer ' + srv.token, 'content-type': 'application/json' };
      await fetch(srv.url + '/v1/apps', { method: 'POST', headers: h, body: JSON.stringify({ name: 'crash' }) });
      const v = await (await fetch(srv.url + '/v1/apps/crash/volumes', { method: 'POST', headers: h, body: JSON.stringify({ name: 'data', size_gb: 1 }) })).json();
      console.log(JSON.stringify(v));
    })();
  `], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  t.after(() => { child.kill('SIGKILL'); return exited })
  const line = await new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      if (buf.includes('\n')) resolve(buf.split('\n')[0])
    })
    child.on('exit', () => reject(new Error('the emulator child exited early')))
  })
  const vol = JSON.parse(line)
  assert.match(vol.id, /^vol_/, line)
  const held = async () => (await run('losetup', ['--list', '--noheadings', '--raw', '--output', 'BACK-FILE'])).stdout.includes(`/${vol.id}.img`)
  assert.equal(await held(), true)
  child.kill('SIGKILL')
  await exited
  /* nothing detaches it but the next start's sweep */
  assert.equal(await held(), true)
  const next = await startLocal()
  await next.stop()
  assert.equal(await held(), false)
})

test('a loop device of an instance in another mount namespace is not swept as stale', async (t) => {
  if (fx.srv.volumeBackend !== 'ext4') return t.skip('volumes are plain directories here: no loop devices')
  /* a pid that is not alive here, as another PID namespace's would be */
  const gone = spawn('true')
  await new Promise((resolve) => gone.on('exit', resolve))
  /* the sweeping fly-local runs with a TMPDIR of its own, so that no other
     fly-local on this host takes the image below for one of its own */
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-sweep-'))
  const other = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-otherns-'))
  t.after(() => {
    fs.rmSync(tmp, { recursive: true, force: true })
    fs.rmSync(other, { recursive: true, force: true })
  })
  const img = `${tmp}/fly-local-${gone.pid}-0badf00d/volumes/vol_elsewhere.img`
  /* its image on a filesystem mounted in a mount namespace of its own (as
     a fresh root's / is), at that path under the filesystem's root: once
     the namespace is gone the kernel names the image by that path, which
     in our namespace is no file */
  const made = await run('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c',
    'mount -t tmpfs tmpfs "$1" && mkdir -p "$(dirname "$1$2")" && truncate -s 1M "$1$2" && losetup --find --show "$1$2"',
    'sh', other, img])
  assert.equal(made.code, 0, made.stderr)
  const dev = made.stdout.trim()
  t.after(() => run('losetup', ['--detach', dev]))
  const held = async () => (await run('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE'])).stdout
    .split('\n').includes(`${dev} ${img}`)
  assert.equal(await held(), true)
  const sweep = await run(process.execPath, ['-e', `
    require(${JSON.stringify(require.resolve('../../lib/local'))}).start({ quiet: true })
      .then((srv) => srv.stop()).then(() => console.log('swept'))
  `], { env: { ...process.env, TMPDIR: tmp } })
  assert.equal(sweep.stdout, 'swept\n', sweep.stderr)
  assert.equal(await held(), true, 'the sweep detached a loop device that is not ours')
})
