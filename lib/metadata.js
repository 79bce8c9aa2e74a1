'use strict'
// What the provider writes on a machine and reads back from it: every
// computesdk_* metadata key, where injected files go, and the predicates on
// a machine's state.  A leaf module: it requires nothing of lib/.

// Every key of the provider's own starts with this (a caller's metadata
// may not: create refuses it).
const RESERVED_PREFIX = 'computesdk_'

// The tag list() filters on ('fly'); the create id (the machine create
// request's idempotency key, and the workspace volume's name); the pinned
// host-key fingerprint; the SSH user.
const TAG = 'computesdk_provider'
const CREATE_ID = 'computesdk_create_id'
const HOST_FP = 'computesdk_host_key_fp'
const SSH_USER = 'computesdk_ssh_user'
// create's runtime, its lifetime timeout (ms), and onTimeout: 'pause'.
const RUNTIME = 'computesdk_runtime'
const TIMEOUT_MS = 'computesdk_timeout_ms'
const ON_TIMEOUT = 'computesdk_on_timeout'
// Set while paused by a stop ('1' from pause(), 'idle' from the idle watch
// in the image); the idle timeout; autoResume chosen at create ('0'/'1');
// the workspace volume's id; the exposed ports ("internal:public,...").
const PAUSED = 'computesdk_paused'
const IDLE_MS = 'computesdk_idle_timeout_ms'
const AUTO_RESUME = 'computesdk_auto_resume'
const VOLUME = 'computesdk_volume'
const PORTS = 'computesdk_ports'
// The sandbox's edge token (lib/edge.js): the bridge in the image lets a
// WebSocket that holds it through to sshd.
const EDGE_TOKEN = 'computesdk_edge_token'
// The egress policy (lib/egress.js), JSON; absent: no restriction.
const NETWORK = 'computesdk_network'
// The sandbox's URL key (hex; lib/urls.js signs its ports' URLs with it)
// and the ports whose URLs need no token ("3000,8080", or "*").
const URL_KEY = 'computesdk_url_key'
const URL_PUBLIC = 'computesdk_url_public'
// '1' once either was changed after create (written into the running
// machine, which a stop resets): resume() writes them again.
const URL_LIVE = 'computesdk_url_live'
// The warm pool (lib/pool.js): a ready (suspended, claimable) machine
// carries POOL, one still being prepared FILLING; both hold the pool key.
// Neither carries TAG, so list() does not show pool machines as sandboxes.
// DRAINING: one drain() has taken out of the pool but not yet destroyed:
// no claim takes it, and a drain that failed half-way leaves it findable
// by the next drain (which on Fly would otherwise be storage billed forever).
const POOL = 'computesdk_pool'
const FILLING = 'computesdk_pool_filling'
const DRAINING = 'computesdk_pool_draining'

// Where injected files go in the machine (root-owned; docker/sshd_config).
const FILES_DIR = '/etc/computesdk'

// The names of the volumes the provider makes (Fly: letters, digits and
// underscores, at most 30): found by it again after their sandbox is gone.
const VOLUME_PREFIX = 'cs_'

// A machine's metadata ({} for none, or no machine).
function metadataOf (m) {
  return (m && m.config && m.config.metadata) || {}
}

// Machine states -> SandboxInfo.status.
const RUNNING = new Set(['created', 'starting', 'started', 'restarting', 'updating', 'replacing'])
const STOPPED = new Set(['stopping', 'stopped', 'suspending', 'suspended', 'destroying', 'destroyed'])

// A machine that no longer counts as a sandbox (getById gives null for it).
function isGone (m) {
  return !m || m.state === 'destroyed' || m.state === 'destroying'
}

// Suspended, or stopped (or stopping) by a pause: status 'paused'.
function isPausedMachine (m) {
  if (!m) return false
  if (m.state === 'suspended' || m.state === 'suspending') return true
  return (m.state === 'stopped' || m.state === 'stopping') && metadataOf(m)[PAUSED] !== undefined
}

// SandboxInfo.status of machine m.
function statusOf (m) {
  if (isPausedMachine(m)) return 'paused'
  return RUNNING.has(m.state) ? 'running' : STOPPED.has(m.state) ? 'stopped' : 'error'
}

module.exports = {
  RESERVED_PREFIX,
  VOLUME_PREFIX,
  TAG,
  CREATE_ID,
  HOST_FP,
  SSH_USER,
  RUNTIME,
  TIMEOUT_MS,
  ON_TIMEOUT,
  PAUSED,
  IDLE_MS,
  AUTO_RESUME,
  VOLUME,
  PORTS,
  EDGE_TOKEN,
  NETWORK,
  URL_KEY,
  URL_PUBLIC,
  URL_LIVE,
  POOL,
  FILLING,
  DRAINING,
  FILES_DIR,
  metadataOf,
  isGone,
  isPausedMachine,
  statusOf
}
