'use strict'
// fly-local checks the token before it reads a request body, and caps
// bodies: 1 MiB for JSON requests, 64 MiB where exec stdin or a machine
// config's files travel. Raw sockets, so the test controls exactly how much
// of a body has been sent when the answer comes.
const test = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const { once } = require('events')
const { startLocal, client, b64 } = require('../helpers/local')

const MiB = 1024 * 1024

/* Opens a connection, sends head (and an optional start of the body), and
   resolves with everything the server sent until it closed the connection. */
async function exchange (srv, head, bodyStart = '') {
  const sock = net.connect(srv.port, srv.host)
  await once(sock, 'connect')
  let reply = ''
  sock.setEncoding('utf8')
  sock.on('data', (d) => { reply += d })
  sock.on('error', () => {}) /* a reset after the answer is fine */
  sock.write(head + bodyStart)
  await once(sock, 'close')
  return reply
}

const head = (srv, { method = 'POST', path, token = srv.token, length, extra = '' }) =>
  `${method} ${path} HTTP/1.1\r\nhost: ${srv.host}\r\nauthorization: Bearer ${token}\r\n` +
  `content-type: application/json\r\ncontent-length: ${length}\r\n${extra}\r\n`

test('a wrong token is answered 401 before the body is sent, and the connection closed', { timeout: 60000 }, async (t) => {
  const srv = await startLocal(t)
  /* 32 MiB announced, 10 bytes sent: an API that read the body first would
     still be waiting for the rest */
  const reply = await exchange(srv, head(srv, { path: '/v1/apps', token: 'wrong', length: 32 * MiB }), '{"name":"x')
  assert.match(reply, /^HTTP\/1\.1 401 /)
  assert.match(reply, /\r\nconnection: close\r\n/i)
  assert.ok(reply.endsWith('{"error":"Authenticate: token validation error"}'), reply)
})

test('a wrong token with Expect: 100-continue gets 401 and no 100 Continue', { timeout: 60000 }, async (t) => {
  const srv = await startLocal(t)
  const reply = await exchange(srv, head(srv, { path: '/v1/apps', token: 'wrong', length: 100, extra: 'expect: 100-continue\r\n' }))
  assert.match(reply, /^HTTP\/1\.1 401 /)
  assert.doesNotMatch(reply, /100 Continue/)
})

test('a good token with Expect: 100-continue gets 100 Continue, then the answer', { timeout: 60000 }, async (t) => {
  const srv = await startLocal(t)
  const body = JSON.stringify({ name: `continue-${process.pid}` })
  const sock = net.connect(srv.port, srv.host)
  await once(sock, 'connect')
  sock.setEncoding('utf8')
  let reply = ''
  const until = (re) => new Promise((resolve) => {
    const check = () => { if (re.test(reply)) { sock.off('data', on); resolve() } }
    const on = (d) => { reply += d; check() }
    sock.on('data', on)
    check()
  })
  sock.write(head(srv, { path: '/v1/apps', length: Buffer.byteLength(body), extra: 'expect: 100-continue\r\nconnection: close\r\n' }))
  await until(/^HTTP\/1\.1 100 Continue\r\n\r\n/)
  sock.write(body)
  await until(/\r\n\r\n\{.*\}$/s)
  sock.destroy()
  assert.match(reply, /HTTP\/1\.1 201 /)
})

test('an oversized JSON body with a good token gets 413 in Fly\'s error shape before it is sent', { timeout: 60000 }, async (t) => {
  const srv = await startLocal(t)
  const reply = await exchange(srv, head(srv, { path: '/v1/apps', length: 2 * MiB }), '{"name":')
  assert.match(reply, /^HTTP\/1\.1 413 /)
  const json = JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4))
  assert.deepEqual(Object.keys(json), ['error'])
  assert.match(json.error, /^invalid_argument: request body too large \(limit 1048576 bytes\)$/)
})

test('a chunked body that grows past the cap gets 413', { timeout: 60000 }, async (t) => {
  const srv = await startLocal(t)
  const sock = net.connect(srv.port, srv.host)
  await once(sock, 'connect')
  let reply = ''
  sock.setEncoding('utf8')
  sock.on('data', (d) => { reply += d })
  sock.on('error', () => {})
  const closed = once(sock, 'close')
  sock.write(`POST /v1/apps HTTP/1.1\r\nhost: ${srv.host}\r\nauthorization: Bearer ${srv.token}\r\n` +
    'content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n')
  /* 2 MiB in 64 KiB chunks, never terminated: the answer must come first */
  const chunk = 'x'.repeat(64 * 1024)
  for (let i = 0; i < 32 && !sock.destroyed; i++) {
    sock.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`)
  }
  await closed
  assert.match(reply, /^HTTP\/1\.1 413 /)
})

test('exec and machine create take payloads over 1 MiB', { timeout: 120000 }, async (t) => {
  const srv = await startLocal(t)
  const api = client(srv)
  const app = `limits-${process.pid}`
  assert.equal((await api('POST', '/v1/apps', { name: app })).status, 201)
  const big = 'y'.repeat(2 * MiB)
  const files = [{ guest_path: '/etc/big.txt', raw_value: b64(big) }]
  const m = await api('POST', `/v1/apps/${app}/machines`, { config: { image: 'ubuntu', files } })
  assert.equal(m.status, 200, JSON.stringify(m.body))
  const w = await api('GET', `/v1/apps/${app}/machines/${m.body.id}/wait?state=started&timeout=60`)
  assert.equal(w.status, 200, JSON.stringify(w.body))
  const r = await api('POST', `/v1/apps/${app}/machines/${m.body.id}/exec`, { command: ['sh', '-c', 'wc -c; wc -c < /etc/big.txt'], stdin: big })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  assert.deepEqual(r.body.stdout.trim().split(/\s+/), [String(2 * MiB), String(2 * MiB)])
})
