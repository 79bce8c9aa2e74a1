'use strict'
// Idle auto-suspend without a client: the image's idle watch suspends (or
// stops) its own machine through the in-machine API socket /.fly/api, which
// fly-local serves to root inside the machine only. No provider runs here:
// the test talks to the API with fetch and watches states with /wait.
const test = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const { localFixture, assertSchema, outsideServer } = require('../helpers/local')
const { waitSshBanner } = require('../../lib/local/runtime')

const IMAGE = 'registry-1.docker.io/library/ubuntu:22.04'
const app = `idle-${process.pid}`
const fx = localFixture({ app })
const { api } = fx

const launch = async (env = {}) => {
  const r = await api('POST', `/v1/apps/${app}/machines`, { config: { image: IMAGE, env, restart: { policy: 'no' } } })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  const w = await api('GET', `/v1/apps/${app}/machines/${r.body.id}/wait?state=started&timeout=60`)
  assert.equal(w.status, 200, JSON.stringify(w.body))
  return r.body
}
const sh = async (m, script) => {
  const r = await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command: ['sh', '-c', script], timeout: 20 })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  return r.body
}
const destroy = (m) => api('DELETE', `/v1/apps/${app}/machines/${m.id}?force=true`)
/* Waits (long polls, bounded) for one of the states. */
const waitFor = async (m, state, timeoutMs = 60000) => {
  const deadline = Date.now() + timeoutMs
  const version = state === 'stopped' ? `&version=${m.version}` : ''
  for (;;) {
    const w = await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=${state}&timeout=20${version}`)
    if (w.status === 200) {
      assertSchema('WaitResult', w.body)
      return w.body
    }
    assert.equal(w.status, 408, JSON.stringify(w.body))
    if (Date.now() > deadline) assert.fail(`machine ${m.id} did not reach ${state} in ${timeoutMs} ms`)
  }
}
/* Records every state the machine passes through from now on. */
const recordStates = (m) => {
  const seen = []
  const on = (e) => { if (e.id === m.id) seen.push(e.state) }
  fx.srv.events.on('state', on)
  return { seen, stop: () => fx.srv.events.off('state', on) }
}
/* A TCP server of the sandbox user's on port 8000 (python3, detached). */
const startServer = async (m) => {
  const r = await sh(m, 'runuser -u sandbox -- setsid python3 -c "' +
    'import socket,time\n' +
    's=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind((\'::\',8000));s.listen(8)\n' +
    'c=[]\n' +
    'while True: c.append(s.accept()[0]); c[-1].sendall(b\'hi\\n\')' +
    '" </dev/null >/dev/null 2>&1 & ' +
    'for i in $(seq 100); do ss -Hltn "sport = :8000" | grep -q . && exit 0; sleep 0.1; done; exit 1')
  assert.equal(r.exit_code, 0, r.stderr)
}
const connect = (ip, port) => new Promise((resolve, reject) => {
  const s = net.connect({ host: ip, port })
  s.setTimeout(20000, () => s.destroy(new Error('connect timed out')))
  s.once('data', () => { s.setTimeout(0); resolve(s) })
  s.once('error', reject)
})

/* A TCP connection to the machine's sshd that has read its banner, once
   sshd is up (bounded); sshd holds it until LoginGraceTime (30 s). */
const connectSsh = async (ip) => {
  await waitSshBanner(ip, 2222, 20000)
  return connect(ip, 2222)
}

const PY_API = (method, path, body) => 'import json,socket,sys\n' +
  's=socket.socket(socket.AF_UNIX)\n' +
  's.settimeout(10)\n' +
  'try:\n s.connect("/.fly/api")\n' +
  'except OSError as e:\n print("errno"); print(e.errno); sys.exit(0)\n' +
  `b=${JSON.stringify(body == null ? '' : JSON.stringify(body))}.encode()\n` +
  `s.sendall(("${method} ${path} HTTP/1.1\\r\\nhost: flaps\\r\\nconnection: close\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n" % len(b)).encode()+b)\n` +
  'd=b""\n' +
  'while True:\n x=s.recv(65536)\n if not x: break\n d+=x\n' +
  'h,_,body=d.partition(b"\\r\\n\\r\\n")\n' +
  'print(h.split(b" ")[1].decode()); print(body.decode())\n'
const viaSocket = async (m, method, path, body, user) => {
  const py = PY_API(method, path, body)
  const cmd = `${user ? `runuser -u ${user} -- ` : ''}python3 -c '${py.replace(/'/g, "'\\''")}'`
  const r = await sh(m, cmd)
  assert.equal(r.exit_code, 0, r.stderr)
  const [first, ...rest] = r.stdout.split('\n')
  return { status: first, body: rest.join('\n').trim() }
}

test('/.fly/api: root inside reaches its own machine, the sandbox user gets EACCES, the rest is 403', async () => {
  const m = await launch()
  try {
    const base = `/v1/apps/${app}/machines/${m.id}`
    const own = await viaSocket(m, 'GET', base)
    assert.equal(own.status, '200', own.body)
    const got = JSON.parse(own.body)
    assertSchema('Machine', got)
    assert.equal(got.id, m.id)
    assert.equal(got.state, 'started')

    const meta = await viaSocket(m, 'POST', `${base}/metadata/probe`, { value: 'set-inside' })
    assert.equal(meta.status, '204', meta.body)
    const back = await api('GET', `${base}/metadata/probe`)
    assert.equal(back.status, 200)
    assert.deepEqual(back.body, { value: 'set-inside' })

    const denied = await viaSocket(m, 'GET', `/v1/apps/${app}/machines/${m.id}/metadata/probe`, null, 'sandbox')
    assert.equal(denied.status, 'errno')
    assert.equal(denied.body, '13') /* EACCES */

    for (const [method, path] of [['GET', `/v1/apps/${app}/machines`], ['POST', `${base}/exec`], ['DELETE', base],
      ['POST', `${base}/start`], ['GET', `/v1/apps/${app}/machines/0000000000000000`], ['GET', '/v1/apps']]) {
      const r = await viaSocket(m, method, path, method === 'POST' ? {} : null)
      assert.equal(r.status, '403', `${method} ${path}: ${r.body}`)
      assertSchema('Error', JSON.parse(r.body))
    }
    /* the socket's mount names no host path: it sits on a filesystem of
       its own, and neither the host directory nor anything named after
       fly-local's pid is in the machine */
    const where = await sh(m, 'awk \'$5 == "/.fly/api" { print $4, $(NF-1) }\' /proc/self/mountinfo')
    assert.equal(where.stdout.trim(), `/${m.id}.sock fly-api`)
    const named = await sh(m, `grep -c -e "fly-local-${process.pid}" -e /tmp/ /proc/self/mountinfo; ls -d /tmp/fly-local-${process.pid}-* 2>/dev/null || echo absent`)
    assert.equal(named.stdout, '0\nabsent\n')
    /* root-owned, 0600 */
    const st = await sh(m, 'stat -c "%U %a %F" /.fly/api')
    assert.equal(st.stdout.trim(), 'root 600 socket')
  } finally {
    await destroy(m)
  }
})

test('idle machine suspends itself with no client; after a resume the watch goes on', async () => {
  const m = await launch({ COMPUTESDK_IDLE_TIMEOUT_MS: '3000' })
  /* an SSH connection keeps it awake while the test sets up (an exec of a
     suspended machine would time out) */
  let ssh = await connectSsh(m.private_ip)
  try {
    /* connections the sandbox makes to itself (to sshd, which counts from
       elsewhere) are not activity */
    const self = await sh(m, 'runuser -u sandbox -- setsid python3 -c "' +
      'import socket,time,os\n' +
      `a=socket.create_connection(('${m.private_ip}',2222));b=socket.create_connection(('127.0.0.1',2222))\n` +
      'time.sleep(3600)" </dev/null >/dev/null 2>&1 & ' +
      `own() { ss -Htn state established "sport = :2222" | awk '{print $4}' | grep -c -F -e 127.0.0.1 -e "[${m.private_ip}]"; }; ` +
      'for i in $(seq 100); do [ "$(own)" = 2 ] && break; sleep 0.1; done; own')
    assert.equal(self.stdout.trim(), '2', self.stderr)
    /* the watch is root's: the sandbox user can neither kill nor stop it
       (both fail, and the suspend below shows the watch still works) */
    const kill = await sh(m, 'p=$(pgrep -xf "/usr/bin/python3 -IS /opt/computesdk/idle-watch"); [ -n "$p" ] || exit 9; ' +
      'runuser -u sandbox -- kill -KILL $p; a=$?; runuser -u sandbox -- kill -STOP $p; b=$?; ' +
      'echo "$a $b $(stat -c "%U %a" /opt/computesdk/idle-watch)"')
    assert.equal(kill.stdout.trim(), '1 1 root 755', kill.stderr)
    ssh.destroy()
    ssh = null
    const w = await waitFor(m, 'suspended')
    assert.equal(w.state, 'suspended')
    const got = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
    assert.equal(got.body.state, 'suspended')

    const s = await api('POST', `/v1/apps/${app}/machines/${m.id}/start`)
    assert.equal(s.status, 200)
    assert.equal(s.body.previous_state, 'suspended')
    await waitFor(m, 'started')
    /* the watch survived the freeze and suspends it again */
    await waitFor(m, 'suspended')
  } finally {
    if (ssh) ssh.destroy()
    await destroy(m)
  }
})

/* Resolves once the control machine (launched after the one under test,
   with the same idle timeout) has suspended itself twice: by then the
   machine under test has been idle for two timeouts as well. */
const twoIdlePeriods = async (control) => {
  await waitFor(control, 'suspended')
  const s = await api('POST', `/v1/apps/${app}/machines/${control.id}/start`)
  assert.equal(s.status, 200)
  await waitFor(control, 'started')
  await waitFor(control, 'suspended')
}

test('an open inbound SSH connection keeps the machine awake; closing it lets it suspend', async () => {
  const m = await launch({ COMPUTESDK_IDLE_TIMEOUT_MS: '3000' })
  let sock = null
  let control = null
  try {
    sock = await connectSsh(m.private_ip)
    const rec = recordStates(m)
    control = await launch({ COMPUTESDK_IDLE_TIMEOUT_MS: '3000' })
    await twoIdlePeriods(control)
    rec.stop()
    assert.deepEqual(rec.seen, [])
    assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}`)).body.state, 'started')
    sock.destroy()
    sock = null
    await waitFor(m, 'suspended')
  } finally {
    if (sock) sock.destroy()
    await destroy(m)
    if (control) await destroy(control)
  }
})

test('a connection the sandbox opens from its own listening port is not inbound activity', async (t) => {
  /* "the internet": a server that holds what it accepts */
  const outside = await outsideServer(t, { hold: true })
  const m = await launch({ COMPUTESDK_IDLE_TIMEOUT_MS: '3000' })
  /* an SSH connection keeps it awake while the attack is set up */
  let ssh = await connectSsh(m.private_ip)
  try {
    /* the attacker: a listener on 8000 (SO_REUSEPORT) and, from that same
       port, a connection out to the internet, held open */
    const r = await sh(m, 'runuser -u sandbox -- setsid python3 -c "' +
      'import socket,time\n' +
      'def s4():\n x=socket.socket(); x.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEPORT,1); x.bind((\'0.0.0.0\',8000)); return x\n' +
      'l=s4(); l.listen(8)\n' +
      `c=s4(); c.connect(('${outside}',8080)); c.recv(2)\n` +
      'time.sleep(3600)" </dev/null >/dev/null 2>&1 & ' +
      'for i in $(seq 100); do ss -Htn state established "sport = :8000" | grep -q . && break; sleep 0.1; done; ' +
      'ss -Htn state established "sport = :8000"; ss -Hltn "sport = :8000" | wc -l')
    assert.equal(r.exit_code, 0, r.stderr)
    /* held: established from local port 8000 to the server, beside the listener */
    const [est, listeners] = r.stdout.trim().split('\n')
    assert.match(est, /:8000\s/, r.stdout)
    assert.ok(est.includes(`${outside}:8080`), r.stdout)
    assert.equal(listeners, '1', r.stdout)
    ssh.destroy()
    ssh = null
    await waitFor(m, 'suspended')
  } finally {
    if (ssh) ssh.destroy()
    await destroy(m)
  }
})

test('COMPUTESDK_IDLE_ACTION=stop stops the machine and marks it paused by idleness', async () => {
  const m = await launch({ COMPUTESDK_IDLE_TIMEOUT_MS: '3000', COMPUTESDK_IDLE_ACTION: 'stop' })
  try {
    await waitFor(m, 'stopped')
    const md = await api('GET', `/v1/apps/${app}/machines/${m.id}/metadata`)
    assert.equal(md.status, 200)
    assertSchema('Metadata', md.body)
    assert.equal(md.body.computesdk_paused, 'idle')
    const got = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
    assertSchema('Machine', got.body)
    assert.equal(got.body.state, 'stopped')
    assert.equal(got.body.config.metadata.computesdk_paused, 'idle')
  } finally {
    await destroy(m)
  }
})

test('COMPUTESDK_ON_TIMEOUT=pause suspends at the lifetime\'s end, even while connected', async () => {
  const m = await launch({ COMPUTESDK_SANDBOX_TIMEOUT_S: '3', COMPUTESDK_ON_TIMEOUT: 'pause' })
  let sock = null
  try {
    await startServer(m)
    sock = await connect(m.private_ip, 8000)
    await waitFor(m, 'suspended')
    const got = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
    assert.equal(got.body.state, 'suspended')
  } finally {
    if (sock) sock.destroy()
    await destroy(m)
  }
})

test('a lifetime that cannot be paused ends as without pause: the machine stops', async () => {
  const m = await launch({ COMPUTESDK_SANDBOX_TIMEOUT_S: '2', COMPUTESDK_ON_TIMEOUT: 'pause' })
  const id = fx.srv.faults.add({ method: 'POST', path: `/v1/apps/${app}/machines/${m.id}/suspend`, status: 503, times: 1000 })
  try {
    /* about 30 s of refused suspends, then the entrypoint stops it */
    await waitFor(m, 'stopped', 120000)
    const got = await api('GET', `/v1/apps/${app}/machines/${m.id}`)
    assert.equal(got.body.state, 'stopped')
  } finally {
    fx.srv.faults.remove(id)
    await destroy(m)
  }
})
