'use strict'
// The edge path against fly-local's edge (lib/local/edge.js) and the
// image's bridge (docker/flyedge.c), real parts end to end: TLS with
// fly-local's CA, the WebSocket upgrade, the bridge, sshd.
//   - the bridge: no token or a wrong one is 401 and opens no connection to
//     sshd; the sandbox user cannot stop it or listen on its port;
//   - faults of the edge (its hooks: srv.edge.fault/closeAll/stallAll):
//     typed errors, every deadline held, the next call reconnects;
//   - reach: learned (private from the host), and 'edge' forced.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const https = require('https')
const net = require('net')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { execFileSync } = require('child_process')
const { startLocal, provider, rejects, sandboxIds, appName } = require('./helpers/fly')

// A raw upgrade request to the edge: [status, body].
function upgrade (srv, app, instance, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request(`${srv.edgeUrl}/.computesdk/ssh`, {
      ca: srv.edgeCa,
      headers: {
        host: `${app}.fly.dev`,
        'fly-force-instance-id': instance,
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-key': crypto.randomBytes(16).toString('base64'),
        'sec-websocket-version': '13',
        ...headers
      }
    })
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve([101, '']) })
    req.on('response', (res) => {
      let b = ''
      res.on('data', (d) => { b += d })
      res.on('end', () => resolve([res.statusCode, b]))
    })
    req.on('error', reject)
    req.end()
  })
}

// Connections to sshd's port seen inside the machine (/proc/net/tcp{,6}).
async function sshdConns (sb) {
  const r = await sb.runCommand("cat /proc/net/tcp /proc/net/tcp6 | awk '$3 ~ /:08AE$/' | wc -l")
  return Number(r.stdout.trim())
}

// fn's error and how long it took.
async function timed (fn) {
  const t0 = Date.now()
  const err = await rejects(fn())
  return { err, ms: Date.now() - t0 }
}

test('edge: the bridge', async (t) => {
  const srv = await startLocal(t)
  const p = provider(srv, { reach: 'edge', edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
  const sb = await p.sandbox.create()
  const { app, machine } = sandboxIds(sb)

  await t.test('a command over the edge', async () => {
    const r = await sb.runCommand('id -un; echo $((6 * 7))')
    assert.equal(r.stdout, 'sandbox\n42\n')
  })

  await t.test('no token, a wrong token: 401, and sshd never sees a connection', async () => {
    const before = await sshdConns(sb)
    for (let i = 0; i < 10; i++) {
      assert.equal((await upgrade(srv, app, machine))[0], 401)
      assert.equal((await upgrade(srv, app, machine, { authorization: `Bearer ${crypto.randomBytes(32).toString('base64url')}` }))[0], 401)
      assert.equal((await upgrade(srv, app, machine, { authorization: 'Basic x' }))[0], 401)
    }
    const after = await sshdConns(sb)
    // 30 refusals; a bridge that connected first would leave ~30 closed
    // connections to :2222 behind (TIME_WAIT)
    assert.ok(after <= before + 2, `sshd connections ${before} -> ${after}`)
  })

  await t.test('routing: unknown app 404, unknown instance 404', async () => {
    assert.equal((await upgrade(srv, 'no-such-app', machine))[0], 404)
    assert.equal((await upgrade(srv, app, 'ffffffffffffff'))[0], 404)
  })

  await t.test('the sandbox user cannot stop, replace or stand in for the bridge', async () => {
    const who = await sb.runCommand('stat -c "%U %a" /usr/local/libexec/computesdk/flyedge /usr/local/libexec/computesdk; ps -o user= -C flyedge | sort -u')
    assert.equal(who.stdout, 'root 755\nroot 755\nroot\n')
    const kill = await sb.runCommand('pkill -KILL flyedge; echo $?; kill -9 $(pidof flyedge) 2>&1; echo $?')
    assert.match(kill.stdout, /not permitted/i)
    const bind = await sb.runCommand('python3 -c "import socket\nfor fam, a in ((socket.AF_INET6, \'::\'), (socket.AF_INET, \'0.0.0.0\'), (socket.AF_INET, \'127.0.0.1\')):\n  s = socket.socket(fam)\n  try:\n    s.bind((a, 444)); print(\'bound\')\n  except OSError as e: print(e.errno)"')
    assert.equal(bind.stdout, '13\n13\n13\n') // EACCES, three times
    const w = await sb.runCommand('cp /bin/true /usr/local/libexec/computesdk/flyedge 2>&1; echo $?')
    assert.match(w.stdout, /denied|not permitted|busy/i)
    // still the bridge, still answering
    await p.sandbox.getById(sb.sandboxId) // (a new handle is not needed: same session)
    assert.equal((await sb.runCommand('echo alive')).stdout, 'alive\n')
    assert.equal((await upgrade(srv, app, machine))[0], 401)
  })
})

test('edge: faults are typed errors, deadlines hold, the next call reconnects', async (t) => {
  const srv = await startLocal(t)
  // The bounds the faults are checked against. A deadline must hold: a call
  // fails no sooner than its bound and not long after it (SLACK: only a hang
  // fails, not a slow moment of a loaded machine); "at once" is "before the
  // connect deadline", that is, not retried until it.
  const connectTimeoutMs = 4000
  const SLACK = 10000
  const edgeOpts = { reach: 'edge', edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa }
  const app = appName('edge')
  const p = provider(srv, { ...edgeOpts, appName: app, connectTimeoutMs, opTimeoutMs: 6000, keepaliveSec: 1 })
  // Booted with the default connect bound: a fresh boot's first login on a
  // loaded host is not one of the faults.
  const made = await provider(srv, { ...edgeOpts, appName: app }).sandbox.create()
  const sb = await p.sandbox.getById(made.sandboxId)
  // a subtest that failed half way leaves no fault to the next
  t.beforeEach(() => srv.edge.fault(null))
  // whatever the fault did, the next call works
  const healthy = async () => {
    srv.edge.fault(null)
    assert.equal((await sb.runCommand('echo ok')).stdout, 'ok\n')
  }
  // the current connection goes, so that the next call connects again
  const reconnectWith = async (spec) => {
    srv.edge.closeAll()
    srv.edge.fault(spec)
  }

  await t.test('the edge closes mid-command: SSH_DISCONNECTED', async () => {
    let started
    const began = new Promise((resolve) => { started = resolve })
    const run = sb.runCommand('echo started; sleep 30; echo never', { onStdout: started })
    await began
    srv.edge.closeAll()
    const { err } = await timed(() => run)
    assert.equal(err.code, 'SSH_DISCONNECTED')
    await healthy()
  })

  await t.test('garbage after the upgrade: FLY_EDGE_PROTOCOL', async () => {
    await reconnectWith({ after: 'garbage', times: 1 })
    const { err, ms } = await timed(() => sb.runCommand('true'))
    assert.equal(err.code, 'FLY_EDGE_PROTOCOL')
    assert.ok(ms < connectTimeoutMs + SLACK, `${ms} ms`)
    await healthy()
  })

  await t.test('an oversized frame: FLY_EDGE_PROTOCOL, nothing allocated for it', async () => {
    await reconnectWith({ after: 'oversized', times: 1 })
    const { err } = await timed(() => sb.runCommand('true'))
    assert.equal(err.code, 'FLY_EDGE_PROTOCOL')
    assert.match(err.message, /message over 1048576 bytes/)
    await healthy()
  })

  await t.test('the edge never answers the upgrade: SSH_CONNECT_FAILED by the connect deadline', async () => {
    await reconnectWith({ stall: 'request', times: 1 })
    const { err, ms } = await timed(() => sb.runCommand('true'))
    assert.equal(err.code, 'SSH_CONNECT_FAILED')
    assert.ok(ms >= connectTimeoutMs - 100 && ms < connectTimeoutMs + SLACK, `${ms} ms`)
    await healthy()
  })

  await t.test('the edge stalls after the upgrade: SSH_CONNECT_FAILED by the connect deadline', async () => {
    await reconnectWith({ after: 'stall', times: 1 })
    const { err, ms } = await timed(() => sb.runCommand('true'))
    assert.equal(err.code, 'SSH_CONNECT_FAILED')
    assert.ok(ms < connectTimeoutMs + SLACK, `${ms} ms`)
    await healthy()
  })

  await t.test('the edge stalls mid-command: SSH_DISCONNECTED once keepalives go unanswered', async () => {
    let started
    const began = new Promise((resolve) => { started = resolve })
    const run = sb.runCommand('echo started; sleep 60', { onStdout: started })
    await began
    srv.edge.stallAll()
    const { err, ms } = await timed(() => run)
    assert.equal(err.code, 'SSH_DISCONNECTED')
    // four keepalive intervals of 1 s, and at most one more to notice
    // (long before the command's own 60 s)
    assert.ok(ms < 5000 + SLACK, `${ms} ms`)
    await healthy()
  })

  await t.test('the upgrade answered 401: FLY_EDGE_REFUSED with the status, at once', async () => {
    await reconnectWith({ status: 401, times: 1 })
    const { err, ms } = await timed(() => sb.runCommand('true'))
    assert.equal(err.code, 'FLY_EDGE_REFUSED')
    assert.equal(err.status, 401)
    assert.match(err.message, /HTTP 401/)
    assert.ok(ms < connectTimeoutMs - 100, `${ms} ms: retried`)
    await healthy()
  })

  await t.test('the upgrade answered 502 (machine not ready): retried, then FLY_EDGE_REFUSED by the deadline', async () => {
    await reconnectWith({ status: 502 })
    const { err, ms } = await timed(() => sb.runCommand('true'))
    assert.equal(err.code, 'FLY_EDGE_REFUSED')
    assert.equal(err.status, 502)
    assert.ok(ms >= connectTimeoutMs - 100 && ms < connectTimeoutMs + SLACK, `${ms} ms`)
    await healthy()
  })

  await t.test('the edge\'s certificate from another CA: FLY_EDGE_TLS, not retried', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edge-ca-'))
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-days', '1', '-subj', '/CN=another CA', '-keyout', path.join(dir, 'k'), '-out', path.join(dir, 'c')], { stdio: 'ignore' })
    const other = provider(srv, { appName: sb.sandboxId.split(':')[0], reach: 'edge', edgeUrl: srv.edgeUrl, edgeCa: fs.readFileSync(path.join(dir, 'c'), 'utf8'), connectTimeoutMs })
    const again = await other.sandbox.getById(sb.sandboxId)
    const { err, ms } = await timed(() => again.runCommand('true'))
    assert.equal(err.code, 'FLY_EDGE_TLS')
    assert.match(err.message, /certificate/)
    assert.ok(ms < connectTimeoutMs - 100, `${ms} ms: retried`)
    assert.ok(!err.message.includes(again.getInstance()._edgeToken))
  })

  await t.test('a host name (resolved off the I/O thread) whose certificate does not name it: FLY_EDGE_TLS', async () => {
    const port = new URL(srv.edgeUrl).port
    const other = provider(srv, { appName: sb.sandboxId.split(':')[0], reach: 'edge', edgeUrl: `https://localhost:${port}`, edgeCa: srv.edgeCa, connectTimeoutMs })
    const again = await other.sandbox.getById(sb.sandboxId)
    const { err, ms } = await timed(() => again.runCommand('true'))
    assert.equal(err.code, 'FLY_EDGE_TLS')
    assert.match(err.message, /hostname mismatch/)
    assert.ok(ms < connectTimeoutMs, `${ms} ms`)
  })

  await t.test('a TCP peer that never speaks TLS: SSH_CONNECT_FAILED by the connect deadline', async () => {
    const server = net.createServer(() => {})
    const held = new Set()
    server.on('connection', (c) => held.add(c))
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.after(() => { for (const c of held) c.destroy(); server.close() })
    const other = provider(srv, { appName: sb.sandboxId.split(':')[0], reach: 'edge', edgeUrl: `https://127.0.0.1:${server.address().port}`, edgeCa: srv.edgeCa, connectTimeoutMs })
    const again = await other.sandbox.getById(sb.sandboxId)
    const { err, ms } = await timed(() => again.runCommand('true'))
    assert.equal(err.code, 'SSH_CONNECT_FAILED')
    assert.ok(ms >= connectTimeoutMs - 100 && ms < connectTimeoutMs + SLACK, `${ms} ms`)
  })

  await t.test('a destroyed sandbox through the edge: FLY_NOT_FOUND, as on the private path', async () => {
    const other = await p.sandbox.create()
    await other.runCommand('true')
    const { app, machine } = sandboxIds(other)
    // removed behind the provider's back (another process, say)
    await fetch(`${srv.url}/v1/apps/${app}/machines/${machine}?force=true`, { method: 'DELETE', headers: { authorization: `Bearer ${srv.token}` } })
    srv.edge.closeAll()
    const { err } = await timed(() => other.runCommand('true'))
    assert.equal(err.code, 'FLY_NOT_FOUND')
  })

  await t.test('streaming and files still work after all that', async () => {
    const chunks = []
    const r = await sb.runCommand('for i in 1 2 3; do echo $i; sleep 0.05; done', { onStdout: (d) => chunks.push(d) })
    assert.equal(r.stdout, '1\n2\n3\n')
    const data = crypto.randomBytes(3 << 20)
    await sb.filesystem.writeFile('/tmp/blob', data)
    assert.ok(data.equals(await sb.filesystem.readFile('/tmp/blob', { encoding: null })))
  })
})

test('edge: reach is learned once (private from the host), autostart wakes a paused sandbox', async (t) => {
  const srv = await startLocal(t)
  const p = provider(srv, { edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
  const sb = await p.sandbox.create()
  assert.equal(await sb.getInstance()._ctx.state.reach, 'private')

  // the app's addresses: made once, whoever creates next finds them
  const appName = sb.sandboxId.split(':')[0]
  await provider(srv, { appName }).sandbox.create()
  await p.sandbox.create()
  const ips = await (await fetch(`${srv.url}/v1/apps/${appName}/ip_assignments`, { headers: { authorization: `Bearer ${srv.token}` } })).json()
  assert.deepEqual(ips.ips.map((x) => x.shared).sort(), [false, true])
  // reach: 'private' makes none of it: no token, no 443 service
  const priv = await provider(srv, { appName, reach: 'private' }).sandbox.create()
  const m = await (await fetch(`${srv.url}/v1/apps/${appName}/machines/${sandboxIds(priv).machine}`, { headers: { authorization: `Bearer ${srv.token}` } })).json()
  assert.equal(m.config.metadata.computesdk_edge_token, undefined)
  assert.ok(!(m.config.services || []).some((x) => x.ports.some((q) => q.port === 443)))
  assert.ok(!(m.config.files || []).some((f) => f.guest_path.includes('edge_token')))

  // paused, then woken by the edge's autostart when an upgrade arrives
  const { app, machine } = sandboxIds(sb)
  await sb.pause()
  assert.ok(['suspended', 'stopped'].includes(srv.machines().find((m) => m.id === machine).state))
  const [status] = await upgrade(srv, app, machine, { authorization: `Bearer ${sb.getInstance()._edgeToken}` })
  assert.equal(status, 101)
  assert.equal(srv.machines().find((m) => m.id === machine).state, 'started')
  assert.equal((await sb.runCommand('echo awake')).stdout, 'awake\n')
})

test('edge: a command through the edge keeps an idle-timeout sandbox awake; unused, it suspends itself', async (t) => {
  const srv = await startLocal(t)
  const p = provider(srv, { reach: 'edge', edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
  const sb = await p.sandbox.create({ idleTimeout: 1500 })
  const { machine } = sandboxIds(sb)
  const state = () => srv.machines().find((m) => m.id === machine).state
  // the bridge's inbound connection is what the idle watch counts
  const r = await sb.runCommand('sleep 4; echo still here')
  assert.equal(r.stdout, 'still here\n')
  assert.equal(state(), 'started')
  // then nothing: the provider closes its unused connection, the machine
  // suspends itself (the first transition is the answer, within a bound)
  const got = await new Promise((resolve) => {
    const done = (s) => { clearTimeout(timer); srv.events.off('state', on); resolve(s) }
    const on = (e) => { if (e.id === machine && e.state !== 'started') done(e.state) }
    const timer = setTimeout(() => done(state()), 30000)
    srv.events.on('state', on)
  })
  assert.ok(['suspending', 'suspended'].includes(got), got)
})
