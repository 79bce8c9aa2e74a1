'use strict'
// fly-local: the machine state machine on real sandboxes: main process exit
// and restart policies, auto_destroy, stop signals and kill timeouts, signal,
// suspend/resume, memory limits, and clean-up after stop() or a crash.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { spawn } = require('child_process')
const { startLocal, localFixture, client, run } = require('../helpers/local')
const { waitSshBanner } = require('../../lib/local/runtime')

const IMAGE = 'ubuntu:22.04'

/* Resolves once pid has exited (tail --pid waits on it for us). */
function pidGone (pid) {
  return new Promise((resolve) => {
    const t = spawn('tail', [`--pid=${pid}`, '-s', '0.05', '-f', '/dev/null'], { stdio: 'ignore' })
    t.on('exit', resolve)
  })
}

/* An open handle on the PID namespace of pid. It keeps the namespace's
   identity (its inode number, what nsMembers compares) from being reused:
   once a namespace is freed the kernel hands its number to the next one
   created on the host, e.g. by a machine of a test file running alongside.
   It does not keep any process alive. */
function pinNs (pid) {
  return fs.openSync(`/proc/${pid}/ns/pid`, 'r')
}

/* Every host pid in the PID namespace of pid (machine processes). */
function nsMembers (ns) {
  const out = []
  for (const n of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue
    try {
      if (fs.readlinkSync(`/proc/${n}/ns/pid`) === ns) out.push(Number(n))
    } catch (_) { /* exited */ }
  }
  return out
}

const app = `lc-${process.pid}`
const fx = localFixture({ app })
const { api } = fx

const create = async (config = {}, extra = {}) => {
  const r = await api('POST', `/v1/apps/${app}/machines`, { config: { image: IMAGE, ...config }, ...extra })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  return r.body
}
const waitState = (m, q) => api('GET', `/v1/apps/${app}/machines/${m.id}/wait?${q}`)
const get = async (m) => (await api('GET', `/v1/apps/${app}/machines/${m.id}`)).body
const exec = async (m, script) => (await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command: ['sh', '-c', script] })).body

test('main process exit with restart "no" moves the machine to stopped with its exit code', async () => {
  const m = await create({ init: { cmd: ['sh', '-c', 'exit 3'] }, restart: { policy: 'no' } })
  const w = await waitState(m, `state=stopped&version=${m.version}&timeout=30`)
  assert.equal(w.status, 200)
  const g = await get(m)
  assert.equal(g.state, 'stopped')
  const exit = g.events.find((e) => e.type === 'exit')
  assert.equal(exit.request.exit_event.exit_code, 3)
  assert.equal(exit.request.exit_event.requested_stop, false)
  assert.ok(g.events.some((e) => e.type === 'start'))
  assert.equal((await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)).status, 200)
})

test('auto_destroy destroys the machine when its main process exits', async () => {
  const m = await create({ init: { exec: ['/bin/sh', '-c', 'exit 0'] }, auto_destroy: true, restart: { policy: 'no' } })
  const w = await waitState(m, 'state=destroyed&timeout=30')
  assert.equal(w.status, 200)
  assert.equal((await get(m)).state, 'destroyed')
})

test('restart policy "always" restarts in place; "on-failure" stops after max_retries', async () => {
  let starts = 0
  const always = await create({ init: { exec: ['/bin/sh', '-c', 'exit 0'] }, restart: { policy: 'always' } })
  await new Promise((resolve) => {
    const on = (e) => {
      if (e.id === always.id && e.state === 'started' && ++starts === 3) {
        fx.srv.events.off('state', on)
        resolve()
      }
    }
    fx.srv.events.on('state', on)
  })
  assert.ok((await get(always)).events.filter((e) => e.type === 'restart').length >= 2)
  assert.equal((await api('DELETE', `/v1/apps/${app}/machines/${always.id}?force=true`)).status, 200)

  const onFail = await create({ init: { exec: ['/bin/sh', '-c', 'exit 1'] }, restart: { policy: 'on-failure', max_retries: 1 } })
  assert.equal((await waitState(onFail, `state=stopped&version=${onFail.version}&timeout=30`)).status, 200)
  const ev = (await get(onFail)).events
  assert.equal(ev.filter((e) => e.type === 'start').length, 2)
  assert.equal(ev.filter((e) => e.type === 'exit').length, 2)
  assert.equal((await api('DELETE', `/v1/apps/${app}/machines/${onFail.id}`)).status, 200)
})

test('stop sends the requested signal to the process tree', async () => {
  const m = await create({ init: { cmd: ['sh', '-c', 'trap "exit 42" USR1; touch /run/ready; while :; do sleep 0.05; done'] }, restart: { policy: 'no' } })
  assert.equal((await waitState(m, 'state=started&timeout=30')).status, 200)
  await exec(m, 'while [ ! -e /run/ready ]; do sleep 0.01; done')
  const t0 = Date.now()
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/stop`, { signal: 'SIGUSR1', timeout: '20s' })).status, 200)
  assert.equal((await waitState(m, `state=stopped&version=${m.version}&timeout=30`)).status, 200)
  assert.ok(Date.now() - t0 < 20000, `stop took ${Date.now() - t0} ms: the 20 s timeout, not the signal, ended it`)
  const events = (await get(m)).events
  const exit = events.find((e) => e.type === 'exit')
  assert.equal(exit.request.exit_event.exit_code, 42, JSON.stringify(events))
  assert.equal(exit.request.exit_event.requested_stop, true)
  await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)
})

test('stop kills the machine after the timeout when the signal is ignored', async () => {
  const m = await create({
    init: { exec: ['/bin/sh', '-c', 'trap "" TERM INT; touch /run/ready; while :; do sleep 0.05; done'] },
    stop_config: { signal: 'SIGTERM', timeout: '1s' }
  })
  assert.equal((await waitState(m, 'state=started&timeout=30')).status, 200)
  await exec(m, 'while [ ! -e /run/ready ]; do sleep 0.01; done')
  const { pid } = fx.srv.machines().find((x) => x.id === m.id)
  const t0 = Date.now()
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/stop`)).status, 200)
  assert.equal((await waitState(m, `state=stopped&version=${m.version}&timeout=30`)).status, 200)
  const took = Date.now() - t0
  // by the 1 s timeout (slack for a loaded host), not the default 5 min
  assert.ok(took >= 900 && took < 11000, `stop took ${took} ms`)
  assert.equal(fs.existsSync(`/proc/${pid}`), false)
  await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)
})

test('signal reaches the main process', async () => {
  const m = await create({ restart: { policy: 'no' } })
  assert.equal((await waitState(m, 'state=started&timeout=30')).status, 200)
  const r = await api('POST', `/v1/apps/${app}/machines/${m.id}/signal`, { signal: 'SIGTERM' })
  assert.equal(r.status, 200)
  assert.equal((await waitState(m, `state=stopped&version=${m.version}&timeout=30`)).status, 200)
  const exit = (await get(m)).events.find((e) => e.type === 'exit')
  assert.equal(exit.request.exit_event.requested_stop, false)
  await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)
})

test('suspend freezes the machine and start resumes it where it was', async () => {
  const m = await create()
  assert.equal((await waitState(m, 'state=started&timeout=30')).status, 200)
  await fx.srv.waitSsh(m.id)
  assert.equal((await exec(m, 'echo kept > /etc/suspended-marker')).exit_code, 0)
  const { pid } = fx.srv.machines().find((x) => x.id === m.id)
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/suspend`)).status, 200)
  assert.equal((await waitState(m, 'state=suspended&timeout=30')).status, 200)
  const ex = await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command: ['true'] })
  assert.equal(ex.status, 412)
  /* sshd is frozen: TCP is accepted by the kernel but no banner comes */
  const scan = await run('ssh-keyscan', ['-p', '2222', '-T', '1', m.private_ip])
  assert.equal(scan.stdout.trim(), '')
  const s = await api('POST', `/v1/apps/${app}/machines/${m.id}/start`)
  assert.equal(s.status, 200)
  assert.equal(s.body.previous_state, 'suspended')
  assert.equal((await waitState(m, 'state=started&timeout=30')).status, 200)
  assert.equal(fx.srv.machines().find((x) => x.id === m.id).pid, pid)
  assert.equal((await exec(m, 'cat /etc/suspended-marker')).stdout, 'kept\n')
  await fx.srv.waitSsh(m.id)
  /* a suspended machine can be destroyed without force */
  assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/suspend`)).status, 200)
  assert.equal((await waitState(m, 'state=suspended&timeout=30')).status, 200)
  assert.equal((await api('DELETE', `/v1/apps/${app}/machines/${m.id}`)).status, 200)
  assert.equal((await waitState(m, 'state=destroyed&timeout=30')).status, 200)
  await pidGone(pid)
})

test('enforces guest.memory_mb with a cgroup', async () => {
  const m = await create({ guest: { cpu_kind: 'shared', cpus: 1, memory_mb: 256 } })
  assert.equal((await waitState(m, 'state=started&timeout=30')).status, 200)
  const small = await exec(m, 'python3 -c "b = bytearray(64 << 20); print(len(b))"')
  assert.equal(small.exit_code, 0, small.stderr)
  const big = await exec(m, 'python3 -c "b = bytearray(1024 << 20); print(len(b))"')
  assert.notEqual(big.exit_code, 0)
  assert.equal(big.stdout, '')
  const mem = await api('GET', `/v1/apps/${app}/machines/${m.id}/memory`)
  assert.equal(mem.status, 200)
  assert.equal(mem.body.limit_mb, 256)
  /* the machine itself survives */
  assert.equal((await get(m)).state, 'started')
  await api('DELETE', `/v1/apps/${app}/machines/${m.id}?force=true`)
})

test('update of a started machine restarts it on the new config', async () => {
  const m = await create({ env: { V: '1' } })
  assert.equal((await waitState(m, 'state=started&timeout=30')).status, 200)
  assert.equal((await exec(m, 'echo $V')).stdout, '1\n')
  const u = await api('POST', `/v1/apps/${app}/machines/${m.id}`, { config: { image: IMAGE, env: { V: '2' } } })
  assert.equal(u.status, 200)
  assert.equal((await waitState(u.body, `state=started&version=${u.body.version}&timeout=30`)).status, 200)
  assert.equal((await exec(m, 'echo $V')).stdout, '2\n')
  await api('DELETE', `/v1/apps/${app}/machines/${m.id}?force=true`)
})

test('after stop() no process, mount, directory, cgroup or listener remains', async () => {
  /* this file's shared emulator runs too: tell its state directory apart */
  const stateDirsOf = () => fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith(`fly-local-${process.pid}-`))
  const others = new Set(stateDirsOf())
  const srv = await startLocal()
  const api = client(srv)
  const app = `cu-${process.pid}`
  assert.equal((await api('POST', '/v1/apps', { name: app, org_slug: 'personal' })).status, 201)
  const ms = []
  for (let i = 0; i < 3; i++) {
    const r = await api('POST', `/v1/apps/${app}/machines`, { config: { image: IMAGE } })
    ms.push(r.body)
  }
  for (const m of ms) assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=started&timeout=30`)).status, 200)
  // every machine's sshd is up (started means its main process runs)
  for (const m of ms) await waitSshBanner(m.private_ip, 2222, 10000)
  await api('POST', `/v1/apps/${app}/machines/${ms[1].id}/suspend`)
  assert.equal((await api('GET', `/v1/apps/${app}/machines/${ms[1].id}/wait?state=suspended&timeout=30`)).status, 200)
  await api('POST', `/v1/apps/${app}/machines/${ms[2].id}/exec`, { command: ['sh', '-c', 'sleep 1000 >/dev/null 2>&1 &'] })
  const info = srv.machines()
  const stateDirs = stateDirsOf().filter((n) => !others.has(n))
  assert.equal(stateDirs.length, 1)
  const pins = info.map((x) => pinNs(x.pid))
  try {
    const namespaces = info.map((x) => fs.readlinkSync(`/proc/${x.pid}/ns/pid`))
    const members = namespaces.flatMap(nsMembers)
    assert.ok(members.length >= 9, `expected the machines' processes, got ${members.length}`)
    await srv.stop()
    await srv.stop() /* idempotent */
    for (const p of members) assert.equal(fs.existsSync(`/proc/${p}`), false, `process ${p} survived`)
    for (const ns of namespaces) assert.deepEqual(nsMembers(ns), [])
    for (const d of stateDirs) assert.equal(fs.existsSync(path.join(os.tmpdir(), d)), false)
  } finally {
    for (const fd of pins) fs.closeSync(fd)
  }
  /* none of its mounts (other instances of this suite run meanwhile) nor
     its root disks' loop devices */
  const mounts = fs.readFileSync('/proc/mounts', 'utf8')
  assert.ok(!mounts.includes(stateDirs[0]), mounts)
  const loops = await run('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE'])
  assert.ok(!loops.stdout.includes(stateDirs[0]), loops.stdout)
  for (const ctrl of ['memory', 'freezer']) {
    const found = await run('find', [`/sys/fs/cgroup/${ctrl}`, '-maxdepth', '4', '-name', stateDirs[0]])
    assert.equal(found.stdout.trim(), '', `${ctrl} cgroup left behind`)
  }
  for (const m of info) {
    const r = await run('ssh-keyscan', ['-p', '2222', '-T', '2', m.private_ip])
    assert.equal(r.stdout.trim(), '')
  }
})

test('machines die with a fly-local process that is killed', async (t) => {
  const child = spawn(process.execPath, ['-e', `
    const { start } = require(${JSON.stringify(require.resolve('../../lib/local'))});
    (async () => {
      const srv = await start({ quiet: true });
      const h = { authorization: 'Bearer ' + srv.token, 'content-type': 'application/json' };
      await fetch(srv.url + '/v1/apps', { method: 'POST', headers: h, body: JSON.stringify({ name: 'crash' }) });
      const m = await (await fetch(srv.url + '/v1/apps/crash/machines', { method: 'POST', headers: h, body: JSON.stringify({ config: { image: 'x' } }) })).json();
      await fetch(srv.url + '/v1/apps/crash/machines/' + m.id + '/wait?state=started&timeout=30', { headers: h });
      console.log(JSON.stringify(srv.machines()[0]));
    })();
  `], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  // Whatever fails below, the emulator child must not outlive the test.
  t.after(() => { child.kill('SIGKILL'); return exited })
  const line = await new Promise((resolve) => {
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      if (buf.includes('\n')) resolve(buf.split('\n')[0])
    })
  })
  const m = JSON.parse(line)
  const pin = pinNs(m.pid)
  try {
    const ns = fs.readlinkSync(`/proc/${m.pid}/ns/pid`)
    // started means the main process runs; once sshd answers, the init,
    // the entrypoint and sshd are all in the namespace
    await waitSshBanner(m.private_ip, 2222, 30000)
    assert.ok(nsMembers(ns).length >= 2)
    child.kill('SIGKILL')
    await exited
    await pidGone(m.pid)
    assert.deepEqual(nsMembers(ns), [])
  } finally {
    fs.closeSync(pin)
  }
  assert.doesNotMatch(fs.readFileSync('/proc/mounts', 'utf8'), new RegExp(m.id))
  /* its state directory and cgroups are swept by the next start */
  const tag = `fly-local-${child.pid}-`
  const next = await startLocal()
  await next.stop()
  assert.deepEqual(fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith(tag)), [])
  for (const ctrl of ['memory', 'freezer']) {
    const found = await run('find', [`/sys/fs/cgroup/${ctrl}`, '-maxdepth', '4', '-name', `${tag}*`])
    assert.equal(found.stdout.trim(), '', `${ctrl} cgroup left behind`)
  }
})
