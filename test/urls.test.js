'use strict'
// A URL for any port (lib/urls.js, docker/flyurl.c), against fly-local's
// edge (lib/local/edge.js: real TLS with its CA, fly-replay, autostart) and
// the image's bridge, real parts end to end. A server started after create
// (test/fixtures/url-server.js) logs every request it gets, so a refusal
// is checked to have reached nothing.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const fs = require('fs')
const path = require('path')
const https = require('https')
const tls = require('tls')
const { startLocal, provider, rejects, sandboxIds } = require('./helpers/fly')

const SERVER = fs.readFileSync(path.join(__dirname, 'fixtures', 'url-server.js'), 'utf8')
const LOG = '/tmp/url-server.log'
// A server that answers nothing ("stall") or a head over 16 KiB ("big").
const EVIL = `import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(64)
held = []
while True:
    c, _ = s.accept()
    if sys.argv[2] == 'big':
        c.recv(65536)
        c.sendall(b'HTTP/1.1 200 OK\\r\\nX-Big: ' + b'a' * 20000 + b'\\r\\n\\r\\n')
        c.close()
    else:
        held.append(c)
`

// One request: { status, headers, body }.
function request (srv, url, { headers = {}, method = 'GET', body } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, ca: srv.edgeCa, headers, agent: false, timeout: 60000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }))
    })
    req.on('timeout', () => req.destroy(new Error(`no answer from ${String(url).split('?')[0]} (token left out)`)))
    req.on('error', reject)
    req.end(body)
  })
}

// promise, or a failure once ms have passed without it.
function within (promise, ms, what) {
  let timer
  const late = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms) })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

// The URL without its token, and the token.
function split (url) {
  const u = new URL(url)
  const token = u.searchParams.get('computesdk_token')
  u.search = ''
  return [u.toString(), token]
}

// Starts the logging server on port inside sb (bound to host) and waits,
// inside the sandbox and bounded, until it listens.
async function serve (sb, port, host = '127.0.0.1') {
  await sb.filesystem.writeFile('/home/sandbox/url-server.js', SERVER)
  const r = await sb.runCommand(`node /home/sandbox/url-server.js ${port} ${LOG} ${host}`, { background: true })
  assert.equal(r.exitCode, 0)
  const w = await sb.runCommand(`for i in $(seq 400); do ss -Hltn "sport = :${port}" | grep -q . && exit 0; sleep 0.05; done; exit 1`)
  assert.equal(w.exitCode, 0, 'the server listens')
}

// The requests the server has logged.
async function seen (sb) {
  const r = await sb.runCommand(`cat ${LOG} 2>/dev/null || true`)
  // whole lines only: one being appended right now is not a request yet
  const whole = r.stdout.slice(0, r.stdout.lastIndexOf('\n') + 1)
  return whole.split('\n').filter(Boolean).map((l) => JSON.parse(l))
}

// The refusal's documented shape.
function refused (r, status, code) {
  assert.equal(r.status, status, r.body)
  assert.equal(r.headers['content-type'], 'application/json')
  let b
  try {
    b = JSON.parse(r.body)
  } catch {
    assert.fail(`a ${r.status} whose body is not JSON: ${JSON.stringify(r.body.slice(0, 200))}`)
  }
  assert.equal(b.error, code)
  assert.equal(typeof b.message, 'string')
}

test('urls: any port, private by default', async (t) => {
  const srv = await startLocal(t)
  const p = provider(srv, { edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
  const [a, b] = await Promise.all([p.sandbox.create(), p.sandbox.create()])
  await serve(a, 8000)
  await serve(b, 8000, '0.0.0.0')

  await t.test('bad input is ERR_INVALID_ARG', async () => {
    for (const o of [{ port: 0 }, { port: 70000 }, { port: 8000, expiresIn: 0 }, { port: 8000, expiresIn: 1.5 },
      { port: 8000, expiresIn: '60' }, { port: 8000, public: 'yes' }, { port: 8000, public: true, expiresIn: 60 },
      { port: 444 }]) { // the bridge's own
      assert.equal((await rejects(a.getUrl(o))).code, 'ERR_INVALID_ARG', JSON.stringify(o))
    }
    // a declared port's options are checked too
    const d = await p.sandbox.create({ ports: [8080] })
    assert.equal((await rejects(d.getUrl({ port: 8080, expiresIn: -1 }))).code, 'ERR_INVALID_ARG')
  })

  let firstUrl = null
  await t.test('a server started after create, through its URL with the token; the server never sees the token', async () => {
    const url = firstUrl = await a.getUrl({ port: 8000 })
    // (assert.ok: a failure must not print the token)
    assert.ok(new RegExp(`^https://[^/]+/\\.computesdk/u/${sandboxIds(a).machine}/8000/\\?computesdk_token=\\d+\\.[A-Za-z0-9_-]{43}$`).test(url), 'the URL has its documented shape')
    const r = await request(srv, url)
    assert.equal(r.status, 200)
    assert.equal(r.body, 'hello /')
    const [base, token] = split(url)
    const h = await request(srv, base + 'x?y=1', { headers: { 'computesdk-token': token } })
    assert.equal(h.status, 200)
    assert.equal(h.body, 'hello /x?y=1')
    const log = await seen(a)
    assert.deepEqual(log.map((x) => x.url), ['/', '/x?y=1'])
    for (const x of log) {
      assert.equal(x.token, null)
      assert.ok(!String(x.cookie).includes(token))
      assert.equal(x.prefix, `/.computesdk/u/${sandboxIds(a).machine}/8000`)
    }
  })

  await t.test('a request body goes through (also after 100 Continue)', async () => {
    const [base, token] = split(await a.getUrl({ port: 8000 }))
    const body = crypto.randomBytes(300 * 1024).toString('base64')
    for (const extra of [{}, { expect: '100-continue' }]) {
      const r = await request(srv, base + 'echo', { method: 'POST', body, headers: { 'computesdk-token': token, ...extra } })
      assert.equal(r.status, 200, r.body)
      assert.equal(r.body.length, body.length)
      assert.ok(r.body === body)
    }
  })

  await t.test('a request body still coming when the request is replayed to the right machine', async () => {
    const [base, token] = split(await a.getUrl({ port: 8000 }))
    const parts = Array.from({ length: 8 }, () => crypto.randomBytes(32 * 1024).toString('hex'))
    const r = await within(new Promise((resolve, reject) => {
      const req = https.request(base + 'echo', {
        method: 'POST',
        ca: srv.edgeCa,
        agent: false,
        headers: { 'computesdk-token': token, host: `${sandboxIds(a).app}.fly.dev`, 'fly-force-instance-id': sandboxIds(b).machine }
      }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d) => { body += d })
        res.on('end', () => resolve({ status: res.statusCode, body }))
      })
      req.on('error', reject)
      // each part once the last one is written: the bridge of b answers
      // (fly-replay) while the body is still coming
      const next = (i) => (i < parts.length ? req.write(parts[i], () => next(i + 1)) : req.end())
      next(0)
    }), 60000, 'the replayed POST')
    assert.equal(r.status, 200, r.body)
    assert.ok(r.body === parts.join(''))
  })

  await t.test('a browser: query token -> cookie for this URL\'s path -> the cookie alone works', async () => {
    const url = await a.getUrl({ port: 8000 })
    const [base] = split(url)
    const r = await request(srv, url.replace('/?', '/page?'))
    assert.equal(r.status, 200)
    const setCookie = r.headers['set-cookie']
    assert.equal(setCookie.length, 1)
    const m = /^computesdk_token=([^;]+); Path=([^;]+); HttpOnly; Secure; SameSite=None$/.exec(setCookie[0])
    assert.ok(m, setCookie[0])
    assert.equal(m[2], new URL(base).pathname)
    const next = await request(srv, base + 'next', { headers: { cookie: `theme=dark; computesdk_token=${m[1]}` } })
    assert.equal(next.status, 200)
    assert.equal(next.body, 'hello /next')
    const last = (await seen(a)).pop()
    assert.equal(last.cookie, 'theme=dark') // its own cookies pass, the token does not
  })

  await t.test('refused, and the server saw nothing: no token, another sandbox\'s, another port\'s, a forged one', async () => {
    const before = (await seen(a)).length
    const [base] = split(await a.getUrl({ port: 8000 }))
    const [, other] = split(await b.getUrl({ port: 8000 }))
    const [, port9] = split(await a.getUrl({ port: 9000 }))
    refused(await request(srv, base), 401, 'token_missing')
    refused(await request(srv, base, { headers: { 'computesdk-token': other } }), 403, 'token_invalid')
    refused(await request(srv, base + '?computesdk_token=' + other), 403, 'token_invalid')
    refused(await request(srv, base, { headers: { cookie: `computesdk_token=${port9}` } }), 403, 'token_invalid')
    refused(await request(srv, base, { headers: { 'computesdk-token': `0.${crypto.randomBytes(32).toString('base64url').slice(0, 43)}` } }), 403, 'token_invalid')
    refused(await request(srv, base, { headers: { 'computesdk-token': 'x'.repeat(5000) } }), 400, 'bad_request')
    // the bridge's own port: a chain of requests to it would come back to
    // the bridge and take its connections
    const own = base.replace(/\/8000\/$/, '/444/.computesdk/u/' + sandboxIds(a).machine + '/444/')
    refused(await request(srv, own), 403, 'port_reserved')
    assert.equal((await seen(a)).length, before)
  })

  await t.test('an expired link: 403 token_expired, the server saw nothing', async () => {
    // a link within its time works (an hour: a loaded machine cannot
    // make it late)
    assert.equal((await request(srv, await a.getUrl({ port: 8000, expiresIn: 3600 }))).status, 200)
    const url = await a.getUrl({ port: 8000, expiresIn: 1 })
    const before = (await seen(a)).length
    // a link signed to have expired already (the same key, as getUrl signs)
    const [base] = split(url)
    const exp = Math.floor(Date.now() / 1000) - 1
    const sig = crypto.createHmac('sha256', Buffer.from(a.getInstance()._urlKey, 'hex'))
      .update(`computesdk-url-v1\n${sandboxIds(a).machine}\n8000\n${exp}`).digest('base64url')
    refused(await request(srv, base, { headers: { 'computesdk-token': `${exp}.${sig}` } }), 403, 'token_expired')
    // and the 1 s link, once its second is past (waiting for the clock,
    // bounded)
    const until = (Number(new URL(url).searchParams.get('computesdk_token').split('.')[0]) + 1) * 1000
    while (Date.now() < until) await new Promise((resolve) => setTimeout(resolve, Math.min(200, until - Date.now())))
    refused(await request(srv, url), 403, 'token_expired')
    assert.equal((await seen(a)).length, before)
  })

  await t.test('a request that lands on another machine of the app is replayed to the right one (fly-replay)', async () => {
    const url = await a.getUrl({ port: 8000 })
    const u = new URL(url)
    const r = await request(srv, url, { headers: { host: `${sandboxIds(a).app}.fly.dev`, 'fly-force-instance-id': sandboxIds(b).machine } })
    assert.equal(r.status, 200)
    assert.equal(r.body, 'hello /')
    assert.equal(u.pathname.split('/')[3], sandboxIds(a).machine)
  })

  await t.test('a server bound to one non-loopback address only is reached', async () => {
    const ip = (await b.runCommand("hostname -I | awk '{print $1}'")).stdout.trim()
    await serve(b, 8100, ip)
    const r = await request(srv, await b.getUrl({ port: 8100 }))
    assert.equal(r.status, 200)
  })

  await t.test('a hostile server: a stalled one holds only its own request; a head over 16 KiB is 502', async () => {
    await a.filesystem.writeFile('/home/sandbox/evil.py', EVIL)
    for (const [port, mode] of [[8300, 'stall'], [8301, 'big']]) {
      assert.equal((await a.runCommand(`python3 /home/sandbox/evil.py ${port} ${mode}`, { background: true })).exitCode, 0)
      const w = await a.runCommand(`for i in $(seq 400); do ss -Hltn "sport = :${port}" | grep -q . && exit 0; sleep 0.05; done; exit 1`)
      assert.equal(w.exitCode, 0)
    }
    const stalled = []
    const aborts = []
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController()
      aborts.push(ac)
      const [base, token] = split(await a.getUrl({ port: 8300 }))
      stalled.push(new Promise((resolve) => {
        const req = https.request(base, { ca: srv.edgeCa, agent: false, headers: { 'computesdk-token': token }, signal: ac.signal }, () => resolve('answered'))
        req.on('error', () => resolve('aborted'))
        req.end()
      }))
    }
    // meanwhile, another port of the same sandbox answers at once
    for (let i = 0; i < 5; i++) assert.equal((await request(srv, await a.getUrl({ port: 8000 }))).status, 200)
    refused(await request(srv, await a.getUrl({ port: 8301 })), 502, 'bad_upstream')
    for (const ac of aborts) ac.abort()
    assert.deepEqual(await Promise.all(stalled), Array(5).fill('aborted'))
  })

  await t.test('nothing listening: 502 port_closed', async () => {
    refused(await request(srv, await a.getUrl({ port: 8999 })), 502, 'port_closed')
  })

  await t.test('a WebSocket echo through a private URL', async () => {
    const url = await a.getUrl({ port: 8000, protocol: 'wss' })
    assert.ok(url.startsWith('wss:'), 'a wss: URL')
    const echoed = await wsEcho(srv, url, 'hello over the edge')
    assert.equal(echoed, 'hello over the edge')
  })

  await t.test('server-sent events stream as they are sent', async () => {
    const url = await a.getUrl({ port: 8000 })
    const [base, token] = split(url)
    const events = []
    let gotOne
    const one = new Promise((resolve) => { gotOne = resolve })
    const done = new Promise((resolve, reject) => {
      const req = https.request(base + 'sse', { ca: srv.edgeCa, headers: { 'computesdk-token': token }, agent: false }, (res) => {
        assert.equal(res.headers['content-type'], 'text/event-stream')
        res.setEncoding('utf8')
        res.on('data', (d) => {
          for (const m of d.matchAll(/data: (\w+)/g)) events.push(m[1])
          if (events.includes('one')) gotOne()
        })
        res.on('end', resolve)
      })
      req.on('error', reject)
      req.end()
    })
    // "one" arrives while the stream is still open: "two" is only sent
    // once /release comes, after it
    await within(one, 60000, 'the first event')
    assert.deepEqual(events, ['one'])
    assert.equal((await request(srv, base + 'release', { headers: { 'computesdk-token': token } })).status, 200)
    await within(done, 60000, 'the end of the stream')
    assert.deepEqual(events, ['one', 'two'])
  })

  await t.test('public: reachable without a token', async () => {
    await serve(a, 8001, '0.0.0.0')
    const url = await a.getUrl({ port: 8001, public: true })
    assert.ok(!url.includes('computesdk_token'), 'a public URL carries no token')
    const r = await request(srv, url)
    assert.equal(r.status, 200)
    // only that port: 8000 is still private
    refused(await request(srv, split(await a.getUrl({ port: 8000 }))[0]), 401, 'token_missing')
  })

  await t.test('rotateUrlKey revokes every link given before', async () => {
    const old = await a.getUrl({ port: 8000 })
    assert.equal((await request(srv, old)).status, 200)
    const before = (await seen(a)).length
    await a.rotateUrlKey()
    refused(await request(srv, old), 403, 'token_invalid')
    assert.equal((await seen(a)).length, before)
    const fresh = await a.getUrl({ port: 8000 })
    assert.equal((await request(srv, fresh)).status, 200)
    // another provider process signs with the new key too (the metadata)
    const again = await provider(srv, { edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa, appName: sandboxIds(a).app }).sandbox.getById(a.sandboxId)
    assert.equal((await request(srv, await again.getUrl({ port: 8000 }))).status, 200)
  })

  await t.test('after a stop, resume() writes the rotated key and the public list again', async () => {
    await a.pause({ keepMemory: false })
    await a.resume()
    await serve(a, 8000)
    await serve(a, 8001, '0.0.0.0')
    refused(await request(srv, firstUrl), 403, 'token_invalid') // signed with create's key
    assert.equal((await request(srv, await a.getUrl({ port: 8000 }))).status, 200)
    assert.equal((await request(srv, split(await a.getUrl({ port: 8001 }))[0])).status, 200)
  })

  await t.test('a paused sandbox is woken by a request to its URL', async () => {
    const url = await b.getUrl({ port: 8000 })
    await b.pause()
    assert.equal((await b.getInfo()).status, 'paused')
    const r = await request(srv, url)
    assert.equal(r.status, 200)
    assert.equal(r.body, 'hello /')
  })

  await t.test('a link revoked by a rotation stays revoked when a stopped sandbox is woken by a request alone', async () => {
    const old = await b.getUrl({ port: 8000 })
    await b.rotateUrlKey()
    await b.pause({ keepMemory: false }) // a stop: the root filesystem goes back to create's files
    // The request itself wakes it (nothing of the provider in between);
    // its boot takes the key from the metadata, so the old link is refused
    // (with create's key it would pass, to no server: 502 port_closed).
    refused(await request(srv, old), 403, 'token_invalid')
    assert.equal((await b.getInfo()).status, 'running')
  })
})

test('urls: create({ public: true }) makes every port public', async (t) => {
  const srv = await startLocal(t)
  const p = provider(srv, { edgeUrl: srv.edgeUrl, edgeCa: srv.edgeCa })
  const sb = await p.sandbox.create({ public: true })
  await serve(sb, 8000)
  const url = await sb.getUrl({ port: 8000 })
  assert.ok(!url.includes('computesdk_token'), 'a public URL carries no token')
  assert.equal((await request(srv, url)).status, 200)
  assert.equal((await rejects(p.sandbox.create({ public: 1 }))).code, 'ERR_INVALID_ARG')
  // reach: 'private' adds no 443 service, so no URL key either
  const priv = await provider(srv, { reach: 'private' }).sandbox.create()
  assert.equal((await rejects(priv.getUrl({ port: 8000 }))).code, 'FLY_URL_UNAVAILABLE')
  assert.equal((await rejects(priv.rotateUrlKey())).code, 'FLY_URL_UNAVAILABLE')
})

// Sends text over a WebSocket at url (the token in its query) and returns
// the first message back.
function wsEcho (srv, url, text) {
  const u = new URL(url)
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: u.hostname, port: Number(u.port) || 443, ca: srv.edgeCa, servername: undefined }, () => {
      s.write(`GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
    })
    const timer = setTimeout(() => { s.destroy(); reject(new Error('no echo within 60 s')) }, 60000)
    let buf = Buffer.alloc(0)
    let upgraded = false
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.subarray(0, end).toString()
        if (!/^HTTP\/1\.1 101/.test(head)) { clearTimeout(timer); s.destroy(); return reject(new Error(head)) }
        upgraded = true
        buf = buf.subarray(end + 4)
        const payload = Buffer.from(text)
        const mask = crypto.randomBytes(4)
        s.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, payload.map((b, i) => b ^ mask[i & 3])]))
      }
      if (buf.length >= 2 && buf.length >= 2 + (buf[1] & 0x7f)) {
        clearTimeout(timer)
        s.destroy()
        resolve(buf.subarray(2, 2 + (buf[1] & 0x7f)).toString())
      }
    })
    s.on('error', (e) => { clearTimeout(timer); reject(e) })
  })
}
