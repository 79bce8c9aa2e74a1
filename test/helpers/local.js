'use strict'
// Helpers for the fly-local tests: an emulator per test file (localFixture,
// startLocal), a small API client on fetch, the repository's response schema, an SSH key pair and the
// OpenSSH client.
const fs = require('fs')
const os = require('os')
const path = require('path')
const crypto = require('crypto')
const { execFile, execFileSync, spawn } = require('child_process')
const test = require('node:test')
const { start } = require('../../lib/local')

const SCHEMA = require('../schema/machines-api.json')

let ajv = null

/* Asserts value matches the repository's schema definition name
   (test/schema/machines-api.json, $defs). */
function assertSchema (name, value) {
  if (!ajv) {
    const Ajv2020 = require('ajv/dist/2020')
    ajv = new Ajv2020({ allErrors: true, strict: true })
    ajv.addSchema(SCHEMA)
  }
  const validate = ajv.getSchema(`${SCHEMA.$id}#/$defs/${name}`)
  if (!validate) throw new Error(`test/schema/machines-api.json has no definition ${name}`)
  if (!validate(value)) {
    throw new Error(`response does not match ${name}: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(value).slice(0, 2000)}`)
  }
}

/* A minimal Machines API client on fetch: resolves { status, body, headers }. */
function client (srv, { token = srv.token, scheme = 'Bearer' } = {}) {
  return async function call (method, p, body, headers = {}) {
    const h = { ...headers }
    if (token !== null) h.authorization = `${scheme} ${token}`
    let payload
    if (body !== undefined) {
      h['content-type'] = 'application/json'
      payload = typeof body === 'string' ? body : JSON.stringify(body)
    }
    const res = await fetch(srv.url + p, { method, headers: h, body: payload })
    const text = await res.text()
    let json = null
    if (text) {
      try { json = JSON.parse(text) } catch (_) { json = text }
    }
    return { status: res.status, body: json, headers: res.headers, text }
  }
}

/* The fixture a test file shares: one emulator for all its tests (started
   before the first, stopped after the last), an API client on it, an app
   when one is named, the client key pairs named in keys (fx[name]), then
   setup(fx) for the file's own preparations (top-level before hooks run
   concurrently, so they go here). fx.api can be taken at load time; read
   fx.srv and the keys inside tests. */
function localFixture ({ app = null, keys = [], setup = null, ...opts } = {}) {
  const fx = { srv: null, app, api: (...args) => client(fx.srv)(...args) }
  test.before(async () => {
    fx.srv = await startLocal(null, opts)
    for (const name of keys) fx[name] = await makeKey(null)
    if (app) {
      const r = await fx.api('POST', '/v1/apps', { name: app, org_slug: 'personal' })
      if (r.status !== 201) throw new Error(`fixture: creating app ${app} gave ${r.status} ${r.text}`)
    }
    if (setup) await setup(fx)
  })
  test.after(async () => {
    if (fx.srv) await fx.srv.stop()
    for (const name of keys) if (fx[name]) fs.rmSync(fx[name].dir, { recursive: true, force: true })
  })
  return fx
}

async function startLocal (t, opts = {}) {
  const srv = await start({ quiet: true, ...opts })
  if (t) t.after(() => srv.stop())
  return srv
}

function run (cmd, args, opts = {}) {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { encoding: 'utf8', maxBuffer: 16 << 20, ...opts }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr, signal: err && err.signal })
    })
    if (opts.input != null) child.stdin.end(opts.input)
  })
}

/* A temp dir with an ed25519 client key; removed after the test. */
async function makeKey (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-test-key-'))
  if (t) t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const key = path.join(dir, 'id_ed25519')
  const r = await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'fly-local-test', '-f', key])
  if (r.code !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`)
  return { dir, key, pub: fs.readFileSync(`${key}.pub`, 'utf8') }
}

/* ssh -p 2222 sandbox@ip -- command, with the test key. */
function ssh (keyInfo, ip, command, { user = 'sandbox', knownHosts, extra = [] } = {}) {
  const args = [
    '-i', keyInfo.key, '-p', '2222',
    '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes',
    '-o', `UserKnownHostsFile=${knownHosts || '/dev/null'}`,
    '-o', `StrictHostKeyChecking=${knownHosts ? 'yes' : 'no'}`,
    '-o', 'LogLevel=ERROR', '-o', 'ConnectTimeout=10',
    ...extra, `${user}@${ip}`, command
  ]
  return run('ssh', args)
}

function b64 (s) {
  return Buffer.from(s).toString('base64')
}

/* "The internet" for egress tests: a network namespace of the test's own
   off a veth, 198.18.<x>.2/30 (RFC 2544's range: neither private nor the
   host's), with a TCP server on 8080 that closes what it accepts, or with
   hold, writes "hi" and keeps it. Resolves to its address; removed after
   the test. */
async function outsideServer (t, { hold = false } = {}) {
  const tag = crypto.randomBytes(3).toString('hex')
  const ns = `fl-out-${tag}`
  const veth = `flo${tag}`
  const x = 1 + (parseInt(tag.slice(0, 2), 16) % 250)
  const sh = (cmd) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' })
  sh(`ip netns add ${ns} && ip link add ${veth} type veth peer name eth0 netns ${ns} && ip addr add 198.18.${x}.1/30 dev ${veth} && ip link set ${veth} up && ` +
    `ip -n ${ns} addr add 198.18.${x}.2/30 dev eth0 && ip -n ${ns} link set eth0 up && ip -n ${ns} link set lo up`)
  t.after(() => sh(`ip netns del ${ns}; ip link del ${veth} 2>/dev/null; true`))
  const serve = hold ? 'c.append(s.accept()[0]); c[-1].sendall(b"hi")' : 's.accept()[0].close()'
  const server = spawn('ip', ['netns', 'exec', ns, 'python3', '-c',
    `import socket\ns = socket.create_server(("0.0.0.0", 8080)); print("ready", flush=True)\nc = []\nwhile True: ${serve}`],
  { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => server.kill('SIGKILL'))
  await new Promise((resolve) => server.stdout.once('data', resolve))
  return `198.18.${x}.2`
}

module.exports = { startLocal, localFixture, client, assertSchema, makeKey, ssh, run, b64, outsideServer }
