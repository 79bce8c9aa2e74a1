'use strict'
// A URL for any port a sandbox listens on, private unless made public.
//
//   https://<app>.fly.dev/.computesdk/u/<machine>/<port>/?computesdk_token=<exp>.<sig>
//
// Fly's proxy serves https://<app>.fly.dev through every machine's 443
// service (lib/edge.js) to the image's bridge (docker/flyedge.c), whose
// URL half (docker/flyurl.c) answers a request for another machine with
// `fly-replay: instance=<machine>` and forwards one for its own machine to
// <port> once the token is checked. Nothing is declared per port.
//
// The token: <exp>.<sig>, exp in Unix seconds (0: never), sig the
// base64url HMAC-SHA256 under the sandbox's URL key of
// "computesdk-url-v1\n<machine>\n<port>\n<exp>". The key is made at create:
// in the machine's metadata (URL_KEY: another provider process with the
// API token signs with it) and, hex, in the root-only
// /etc/computesdk/url_key the bridge reads on every request.
// rotateUrlKey() writes a new one to both (the file first: the old links
// stop working at once).
//
// Public ports need no token: create({ public: true }) lists '*', getUrl({
// port, public: true }) adds the port; /etc/computesdk/url_public and the
// metadata (URL_PUBLIC) hold the list.
//
// What is written after create (a rotated key, a port made public) goes
// through the Machines API's exec endpoint as root, so it lives in the
// running machine's root filesystem: a stop (not a suspend) resets that to
// the image and create's files. Every boot writes the metadata's over them
// (docker/url-sync, before the bridge starts); resume() after a pause
// writes them again too (syncAfterStart) when URL_LIVE says they changed.
const crypto = require('crypto')
const execApi = require('./transport/exec-api')
const { flyError, invalidArg } = require('./errors')
const { FILES_DIR, URL_KEY, URL_PUBLIC, URL_LIVE } = require('./metadata')
const { EDGE_PORT } = require('./edge')

const PREFIX = '/.computesdk/u/'
const TOKEN_PARAM = 'computesdk_token'
const TOKEN_HEADER = 'computesdk-token'
const KEY_FILE = `${FILES_DIR}/url_key`
const PUBLIC_FILE = `${FILES_DIR}/url_public`
const MAX_EXPIRES_S = 365 * 24 * 3600

const b64 = (s) => Buffer.from(s).toString('base64')

// Adds the URL key (and a public list) to a machine request (lifecycle.js).
function apply (config, machineConfig, o) {
  if (config.reach === 'private') return
  const key = crypto.randomBytes(32).toString('hex')
  machineConfig.metadata[URL_KEY] = key
  machineConfig.files.push({ guest_path: KEY_FILE, raw_value: b64(`${key}\n`), mode: 0o600 })
  if (o.public === true) {
    machineConfig.metadata[URL_PUBLIC] = '*'
    machineConfig.files.push({ guest_path: PUBLIC_FILE, raw_value: b64('*\n'), mode: 0o600 })
  }
}

function checkCreate (o) {
  if (o.public !== undefined && typeof o.public !== 'boolean') throw invalidArg('create: public must be a boolean')
}

function publicList (sb) {
  return String(sb.metadata[URL_PUBLIC] || '').split(',').filter(Boolean)
}

function isPublic (sb, port) {
  const l = publicList(sb)
  return l.includes('*') || l.includes(String(port))
}

// The token for one port of sb, expiring expiresIn seconds from now (0:
// never).
function sign (sb, port, expiresIn) {
  const exp = expiresIn ? Math.floor(Date.now() / 1000) + expiresIn : 0
  const mac = crypto.createHmac('sha256', Buffer.from(sb._urlKey, 'hex'))
    .update(`computesdk-url-v1\n${sb.machineId}\n${port}\n${exp}`).digest('base64url')
  return `${exp}.${mac}`
}

function checkOptions (o) {
  const { expiresIn } = o
  if (expiresIn !== undefined && (!Number.isInteger(expiresIn) || expiresIn < 1 || expiresIn > MAX_EXPIRES_S)) {
    throw invalidArg(`getUrl: expiresIn must be an integer number of seconds from 1 to ${MAX_EXPIRES_S}`)
  }
  if (o.public !== undefined && typeof o.public !== 'boolean') throw invalidArg('getUrl: public must be a boolean')
  if (o.public === true && expiresIn !== undefined) throw invalidArg('getUrl: a public URL has no token to expire (public with expiresIn)')
}

function unavailable (sb) {
  return flyError('FLY_URL_UNAVAILABLE', `sandbox ${sb.sandboxId} has no URL key (metadata ${URL_KEY}): it was made ` +
    "with reach: 'private' (no 443 service) or by an older provider; expose ports with create's ports instead")
}

// Runs script as root in the machine with stdin (a secret never goes on a
// command line).
async function asRoot (sb, script, stdin) {
  const r = await execApi.exec(sb, { argv: ['sh', '-c', script] }, { stdin, root: true })
  if (r.exitCode !== 0) {
    throw flyError('FLY_URL_UPDATE_FAILED', `sandbox ${sb.sandboxId}: writing its URL settings failed (exit ${r.exitCode})`)
  }
}

// An atomic root-only write of stdin to path (in the root-owned FILES_DIR).
const writeScript = (path) => `umask 077 && cat > ${path}.new && mv -f ${path}.new ${path}`

async function setMetadata (sb, patch) {
  await sb._api('machine.metadata.update', { body: { metadata: patch } })
  for (const [k, v] of Object.entries(patch)) {
    if (k === URL_KEY) continue
    if (v === null) delete sb.metadata[k]
    else sb.metadata[k] = v
  }
}

async function makePublic (sb, port) {
  if (isPublic(sb, port)) return
  const list = [...publicList(sb), String(port)]
  await asRoot(sb, writeScript(PUBLIC_FILE), `${list.join(',')}\n`)
  await setMetadata(sb, { [URL_PUBLIC]: list.join(','), [URL_LIVE]: '1' })
}

// A new URL key: every link signed before stops working.
async function rotate (sb) {
  if (!sb._urlKey) throw unavailable(sb)
  const key = crypto.randomBytes(32).toString('hex')
  await asRoot(sb, writeScript(KEY_FILE), `${key}\n`)
  await setMetadata(sb, { [URL_KEY]: key, [URL_LIVE]: '1' })
  sb._urlKey = key
}

// After a start from stopped, the root filesystem holds create's files:
// the key and public list are written again from the metadata, when they
// changed after create.
async function syncAfterStart (sb) {
  if (!sb._urlKey || sb.metadata[URL_LIVE] !== '1') return
  await asRoot(sb, writeScript(KEY_FILE), `${sb._urlKey}\n`)
  if (sb.metadata[URL_PUBLIC]) await asRoot(sb, writeScript(PUBLIC_FILE), `${sb.metadata[URL_PUBLIC]}\n`)
}

// The URL of port (not declared at create) of sb.
async function url (sb, port, protocol, o) {
  if (!sb._urlKey) throw unavailable(sb)
  // the bridge's own port, which it never forwards to (port_reserved)
  if (port === EDGE_PORT) throw invalidArg(`getUrl: port ${EDGE_PORT} is the sandbox's edge bridge, not one a server can use`)
  if (o.public === true) await makePublic(sb, port)
  const { config } = sb._ctx
  const base = new URL(config.edgeUrl || `https://${sb.appName}.fly.dev`)
  base.protocol = protocol === 'ws' || protocol === 'wss' ? 'wss:' : 'https:'
  base.pathname = `${PREFIX}${sb.machineId}/${port}/`
  if (!isPublic(sb, port)) base.searchParams.set(TOKEN_PARAM, sign(sb, port, o.expiresIn))
  return base.toString()
}

module.exports = { apply, checkCreate, checkOptions, url, rotate, syncAfterStart, sign, PREFIX, TOKEN_PARAM, TOKEN_HEADER }
