'use strict'
// A fly-local suspend is a Fly suspend: the machine's processes are frozen
// with their memory, and its open TCP connections are cut (a client sees the
// reset and must reconnect after the resume), while its listeners stay.
const test = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const { localFixture, assertSchema } = require('../helpers/local')

const IMAGE = 'registry-1.docker.io/library/ubuntu:22.04'
const app = `susp-${process.pid}`
const fx = localFixture({ app })
const { api } = fx

const wait = async (m, state) => {
  const w = await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=${state}&timeout=60`)
  assert.equal(w.status, 200, JSON.stringify(w.body))
  assertSchema('WaitResult', w.body)
}

/* Connects and resolves with the socket and the first line it reads. */
const firstLine = (ip, port) => new Promise((resolve, reject) => {
  const s = net.connect({ host: ip, port })
  let buf = ''
  s.setTimeout(20000, () => s.destroy(new Error('timed out')))
  s.on('data', (d) => {
    buf += d.toString('latin1')
    const i = buf.indexOf('\n')
    if (i >= 0) {
      s.removeAllListeners('data')
      s.setTimeout(0)
      resolve({ sock: s, line: buf.slice(0, i).trim() })
    }
  })
  s.once('error', reject)
})

/* Resolves with how the socket ended ('error <code>' or 'end'), or
   'still open' after ms. */
const ending = (s, ms) => new Promise((resolve) => {
  const t = setTimeout(() => resolve('still open'), ms)
  s.once('error', (e) => { clearTimeout(t); resolve(`error ${e.code}`) })
  s.once('end', () => { clearTimeout(t); resolve('end') })
  s.resume()
})

test('suspend resets open TCP connections; after the resume a new one works and the processes kept their memory', async () => {
  const r = await api('POST', `/v1/apps/${app}/machines`, { config: { image: IMAGE, restart: { policy: 'no' } } })
  assert.equal(r.status, 200)
  const m = r.body
  try {
    await wait(m, 'started')
    /* a process of the sandbox user's holding a random secret in memory,
       telling it with its pid to every connection */
    const ex = await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, {
      command: ['sh', '-c', 'runuser -u sandbox -- setsid python3 -c "' +
        'import os,socket\n' +
        'secret=os.urandom(8).hex()\n' +
        's=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind((\'::\',8000));s.listen(8)\n' +
        'c=[]\n' +
        'while True: c.append(s.accept()[0]); c[-1].sendall((\'%d %s\\n\' % (os.getpid(), secret)).encode())' +
        '" </dev/null >/dev/null 2>&1 & ' +
        'for i in $(seq 100); do ss -Hltn "sport = :8000" | grep -q . && exit 0; sleep 0.1; done; exit 1'],
      timeout: 20
    })
    assert.equal(ex.body.exit_code, 0, ex.body.stderr)
    await fx.srv.waitSsh(m.id)
    const before = await firstLine(m.private_ip, 8000)
    assert.match(before.line, /^\d+ [0-9a-f]{16}$/)
    const ssh = await firstLine(m.private_ip, 2222)
    assert.match(ssh.line, /^SSH-2\.0-/)

    const endedApp = ending(before.sock, 20000)
    const endedSsh = ending(ssh.sock, 20000)
    const s = await api('POST', `/v1/apps/${app}/machines/${m.id}/suspend`)
    assert.equal(s.status, 200)
    await wait(m, 'suspended')
    assert.equal(await endedApp, 'error ECONNRESET')
    assert.equal(await endedSsh, 'error ECONNRESET')

    const st = await api('POST', `/v1/apps/${app}/machines/${m.id}/start`)
    assert.equal(st.status, 200)
    assert.equal(st.body.previous_state, 'suspended')
    await wait(m, 'started')
    const after = await firstLine(m.private_ip, 8000)
    /* the same process (pid) with the same memory (secret) */
    assert.equal(after.line, before.line)
    after.sock.destroy()
    const ssh2 = await firstLine(m.private_ip, 2222)
    assert.match(ssh2.line, /^SSH-2\.0-/)
    ssh2.sock.destroy()
  } finally {
    await api('DELETE', `/v1/apps/${app}/machines/${m.id}?force=true`)
  }
})
