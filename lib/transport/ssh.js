'use strict'
// The SSH transport (the default): commands on channels and files over SFTP
// of one native libssh2 session per sandbox.  Every native SSH call of the
// provider is in this file.  Also here: what SSH needs around a call, i.e.
// the target (host, credential, pinned host key), authorising this
// provider's key in a sandbox another provider made, and turning a failed
// connect into the reason the machine cannot be reached.
const crypto = require('crypto')
const native = require('../native')
const { flyError } = require('../errors')
const { clientKey } = require('../keys')
const api = require('../api')
const { HOST_FP, FILES_DIR, isGone, isPausedMachine } = require('../metadata')
const { sessionIdleMs } = require('../idle')
const edge = require('../edge')

// Runs as the machine's root through the exec endpoint: $1 is FILES_DIR
// (under /etc, which only root can change), $2 the public key.  A key file
// that is not a plain file is refused rather than followed.
const REAUTHORIZE = 'umask 022; f="$1/authorized_keys"; mkdir -p "$1" && ' +
  '{ [ ! -e "$f" ] || { [ -f "$f" ] && [ ! -L "$f" ]; }; } && ' +
  '{ grep -qxF -- "$2" "$f" 2>/dev/null || printf "%s\\n" "$2" >> "$f"; }'

// One native session handle per sandbox and provider: the target and its
// credential cross into C once, when the handle opens (native.sshOpen), and
// every command and file call names the handle.  A handle is never shared
// with another provider, so a session is never reused across credentials.
// The handle is kept with a signature of everything that authenticates
// (user, host, port, credential, host-key policy); when that changes (a new
// host key after a restart, say) the old handle is closed and a new one
// opened.  The signature is an HMAC under a per-process secret: nothing in
// it recovers a key or password.
const KEY_SECRET = crypto.randomBytes(32)

function signature (t) {
  const h = crypto.createHmac('sha256', KEY_SECRET)
  h.update(JSON.stringify([t.user, t.host, t.port, t.password !== undefined ? 'password' : 'key',
    t.password !== undefined ? t.password : t.privateKey, t.insecureSkipHostKeyCheck ? 'insecure' : t.hostKeyFingerprint,
    t.edge || null]))
  return h.digest('hex')
}

// Whether two targets name the same user, host, credential and host-key
// policy: the fields signature() covers, compared as they are, so that a
// call on an open handle costs a few comparisons instead of a JSON encoding
// and an HMAC of the credential (~15-20 us, on every command; issue 24).
// The strings compared are the ones the provider already holds (its
// config, its client key): nothing new is kept.
function sameTarget (a, b) {
  return a.user === b.user && a.host === b.host && a.port === b.port &&
    a.password === b.password && a.privateKey === b.privateKey &&
    a.insecureSkipHostKeyCheck === b.insecureSkipHostKeyCheck &&
    a.hostKeyFingerprint === b.hostKeyFingerprint &&
    (a.edge === b.edge || (a.edge !== undefined && b.edge !== undefined && JSON.stringify(a.edge) === JSON.stringify(b.edge)))
}

// via: 'private' (the machine's address) or 'edge' (Fly's proxy, lib/edge.js).
function target (sb, via) {
  const { config } = sb._ctx
  const host = config.sshHost || sb.privateIp || `${sb.machineId}.vm.${sb.appName}.internal`
  const e = via === 'edge' ? edge.target(sb) : null
  const t = {
    host: e ? e.host : host,
    port: e ? e.port : config.sshPort,
    user: config.sshUser,
    connectTimeoutMs: config.connectTimeoutMs,
    opTimeoutMs: config.opTimeoutMs,
    keepaliveSec: config.keepaliveSec
  }
  if (e) t.edge = e
  // A sandbox with an idle timeout: an unused connection closes soon, so
  // that this provider does not keep it awake (reopened on the next call).
  const idleMs = sessionIdleMs(sb)
  if (idleMs !== undefined) t.idleTimeoutMs = idleMs
  if (config.sshPassword) t.password = config.sshPassword
  else t.privateKey = clientKey(sb._ctx).privateKey
  if (config.insecureSkipHostKeyCheck) {
    t.insecureSkipHostKeyCheck = true
  } else if (sb.hostKeyFingerprint) {
    t.hostKeyFingerprint = sb.hostKeyFingerprint
  } else {
    throw flyError('SSH_HOSTKEY_UNKNOWN', `sandbox ${sb.sandboxId} has no pinned host key (metadata ${HOST_FP}); ` +
      'it was not created by this provider. Set insecureSkipHostKeyCheck to connect anyway.')
  }
  return t
}

// The provider's handle for this sandbox, opened (or reopened) as needed.
// keep: how long an unused connection stays open (ms) when this call opens
// the handle (the warm pool's: lib/pool.js); not part of the signature, so
// later calls reuse that connection.
function session (sb, keep, via) {
  const { sessions } = sb._ctx.state
  const t = target(sb, via)
  const open = sessions.get(sb.sandboxId)
  if (open && sameTarget(open.t, t)) return open.handle
  const sig = signature(t)
  if (open && open.sig === sig) {
    open.t = t
    return open.handle
  }
  if (open) native.sshClose(open.handle).catch(() => {})
  const handle = native.sshOpen(keep ? { ...t, idleTimeoutMs: keep } : t)
  sessions.set(sb.sandboxId, { sig, t, handle })
  return handle
}

// Runs a native SSH call.  A sandbox made by another provider instance
// (getById in another process, without the same sshPrivateKey) does not
// know this instance's key yet: authorize it through the Machines API exec
// endpoint, which the API token already grants, and try again (once: a key
// still refused after that fails the call).
async function withSession (sb, fn, keep) {
  const { config, state } = sb._ctx
  if (state.destroyed.has(sb.sandboxId)) {
    throw flyError('FLY_NOT_FOUND', `sandbox ${sb.sandboxId} was destroyed`)
  }
  const via = await edge.reach(sb)
  try {
    return await fn(session(sb, keep, via))
  } catch (err) {
    if (err.code === 'SSH_CONNECT_FAILED' || err.code === 'SSH_TIMEOUT' || edgeGone(err)) throw await whyUnreachable(sb, err)
    if (err.code !== 'SSH_AUTH_FAILED' || config.sshPassword || state.reauthorized.has(sb.sandboxId)) throw err
    state.reauthorized.add(sb.sandboxId)
    const pub = clientKey(sb._ctx).publicKey
    // Appends to the root-owned key file sshd reads first (docker/
    // sshd_config); it is never a path the sandbox user controls, so
    // nothing of the user's home is touched by this root process.
    const r = await sb._api('machine.exec', {
      body: { command: ['sh', '-c', REAUTHORIZE, 'sh', FILES_DIR, pub], timeout: 30 },
      timeoutMs: 60000
    })
    if (!r.body || r.body.exit_code !== 0) {
      err.message += `; authorizing this provider's key in ${FILES_DIR}/authorized_keys failed`
      throw err
    }
    // Only a key still refused after this keeps the sandbox marked: a boot
    // drops the key again (the file is made anew from the machine's
    // config), so a later refusal may authorize it once more.
    let out
    try {
      out = await fn(session(sb, keep, via))
    } catch (e) {
      if (e.code !== 'SSH_AUTH_FAILED') state.reauthorized.delete(sb.sandboxId)
      throw e
    }
    state.reauthorized.delete(sb.sandboxId)
    return out
  }
}

// The edge's answers when it has no machine to give the upgrade to (404:
// no such instance; 502-504: none it could reach): the machine's state says
// why, as for a failed direct connect.
function edgeGone (err) {
  return err.code === 'FLY_EDGE_REFUSED' && [404, 502, 503, 504].includes(err.status)
}

// An SSH connect that failed for good: a machine that is not running (or
// no longer exists) is the likely reason, and a clearer error.
async function whyUnreachable (sb, err) {
  let m
  try {
    m = await api.getMachine(sb._ctx.config, sb._params)
  } catch {
    return err
  }
  if (isGone(m)) return flyError('FLY_NOT_FOUND', `sandbox ${sb.sandboxId} no longer exists${m ? ` (${m.state})` : ''}`)
  if (m.state !== 'started') {
    // paused: suspended or stopped by a pause, which lib/pause.js wakes.
    const paused = isPausedMachine(m)
    return flyError('FLY_MACHINE_NOT_RUNNING', `sandbox ${sb.sandboxId} is ${isPausedMachine(m) ? 'paused' : m.state} ` +
      `(${m.state}), not running: ${err.message}`, { state: m.state, paused })
  }
  return err
}

// spec: what native.buildCommand takes.  onChunk(stream, string), when
// given, receives the output as it arrives (stream 1 stdout, 2 stderr;
// a character cut between chunks is held back until it is whole).  The
// result's stdout/stderr are the whole output, streamed or not: strings
// (ASCII handed to V8 as it is, other large output decoded on the I/O
// thread), or Buffers for small non-ASCII output.
// keep: false (with onChunk) when the caller has what it needs from the
// chunks: the output is then not kept for the result (a long-running
// command, such as filesystem.watch's watcher, holds no memory for it),
// and the chunks are Buffers.  bytes (the process handles' relay,
// lib/commands.js): onChunk gets Buffers as they come and nothing is kept
// or counted against maxOutputBytes (the relay's output is a stream of
// frames the caller bounds).
function exec (sb, spec, { stdin, onChunk, keep = true, bytes } = {}) {
  const req = bytes
    ? { ...spec, maxOutputBytes: Number.MAX_SAFE_INTEGER, text: false }
    : { ...spec, maxOutputBytes: sb._ctx.config.maxOutputBytes, text: keep || !onChunk }
  if (stdin !== undefined) req.stdin = stdin
  if (onChunk) req.onChunk = onChunk
  return withSession(sb, (session) => native.sshExec({ ...req, session }))
}

// Create's check that the sandbox answers, with its host key verified.
// keepMs (the warm pool's): the idle timeout of a connection it opens.
function check (sb, { keepMs } = {}) {
  return withSession(sb, (session) => native.sshExec({ session, command: 'true' }), keepMs)
}

// The warm pool's liveness probe of a kept connection: a stat on its SFTP
// channel (opened by the first call, then kept with the connection), a
// round trip with no process started in the machine.  timeoutMs bounds it.
function probe (sb, { timeoutMs, keepMs } = {}) {
  return withSession(sb, (session) => native.sftp({ session, op: 'stat', path: '/', ...(timeoutMs ? { timeoutMs } : {}) }), keepMs)
    .then(() => {})
}

function sftp (sb, op, path, extra) {
  return withSession(sb, (session) => native.sftp({ session, op, path, ...extra }))
}

// A batch's deadline: opTimeoutMs, and as much again per 1,000 files.
const batchMs = (sb, n) => sb._ctx.config.opTimeoutMs * (1 + Math.floor(n / 1000))

// The limits on what a sandbox can make the provider hold (enforced in C).
const limits = (sb) => ({ maxEntries: sb._ctx.config.maxEntries })

// Many files over the batch SFTP channel (src/sftp_batch.c), pipelined;
// per file { path } or { path, data } or { path, code, message }.
function batch (sb, op, list, extra) {
  return withSession(sb, (session) => native.sftpBatch({ session, op, ...list, ...extra }))
}

function fileError (op, r) {
  return flyError(r.code, `sftp ${op} '${r.path}': ${r.message}`, { path: r.path })
}

const files = {
  read: (sb, path, range) => sftp(sb, 'read', path, { maxFileBytes: sb._ctx.config.maxFileBytes, ...range }),
  // A whole file is replaced atomically (a temporary beside it, renamed
  // over it with posix-rename); at an offset, appended, or truncated first
  // (where: { offset } | { append } | { truncate }), in place.  Both on
  // the batch channel, so a write stream's pieces go on while a read
  // stream's use the other SFTP channel.  A server without
  // posix-rename@openssh.com gets the in-place write.
  async write (sb, path, data, where) {
    const file = { path, data }
    if (where) {
      file.where = where.append ? 'append' : where.truncate ? 'truncate' : 'offset'
      if (file.where === 'offset') file.offset = where.offset
    }
    const [r] = await batch(sb, 'write', { files: [file] })
    if (r.code === 'SFTP_UNSUPPORTED' && !where) return sftp(sb, 'write', path, { data }).then(() => {})
    if (r.code) throw fileError('write', r)
  },
  writeMany: async (sb, list) => (await batch(sb, 'write', { files: list }, { parents: true, timeoutMs: batchMs(sb, list.length) }))
    .map((r) => r.code ? { ...r, message: fileError('write', r).message } : r),
  readMany: async (sb, paths) => (await batch(sb, 'read', { paths }, { maxFileBytes: sb._ctx.config.maxFileBytes, timeoutMs: batchMs(sb, paths.length) }))
    .map((r) => r.code ? { ...r, message: fileError('read', r).message } : r),
  mkdir: (sb, path) => sftp(sb, 'mkdir', path, { recursive: true }).then(() => {}),
  async readdir (sb, path) {
    const entries = await sftp(sb, 'readdir', path, limits(sb))
    return entries.map((e) => ({
      name: e.name,
      type: e.type === 'directory' ? 'directory' : 'file',
      size: e.size,
      modified: new Date(e.mtimeMs)
    }))
  },
  exists: async (sb, path) => (await sftp(sb, 'stat', path)) !== null,
  remove: (sb, path) => sftp(sb, 'remove', path, { recursive: true, ...limits(sb) }).then(() => {})
}

// Closes this provider's session to a sandbox (destroy).
async function close (ctx, sandboxId) {
  const open = ctx.state.sessions.get(sandboxId)
  ctx.state.sessions.delete(sandboxId)
  ctx.state.reauthorized.delete(sandboxId)
  if (open) await native.sshClose(open.handle).catch(() => {})
}

// Whether this provider keeps a connection to the sandbox open (the warm
// pool probes a kept one rather than connecting anew).
function kept (ctx, sandboxId) {
  return ctx.state.sessions.has(sandboxId)
}

module.exports = { name: 'ssh', exec, check, probe, files, close, kept }
