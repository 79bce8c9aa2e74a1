'use strict'
// What one provider instance holds, made once by fly(): `config`, the
// frozen settings; `state`, everything that changes while it runs; and
// `transport`, the way commands and files reach a machine.  defineProvider
// keeps this object as its `config` and hands it to every method.
const { resolveConfig } = require('./config')
const ssh = require('./transport/ssh')
const execApi = require('./transport/exec-api')
const { wakeful } = require('./pause')
const { Pool } = require('./pool')

// Ids a provider has seen can come and go for as long as the process runs:
// the tables about them keep the most recent ones only.
const RECENT_LIMIT = 1024

// A Map that forgets its oldest entry beyond `limit`; add() makes it a set.
class Recent extends Map {
  constructor (limit) {
    super()
    this.limit = limit
  }

  set (key, value) {
    this.delete(key)
    super.set(key, value)
    if (this.size > this.limit) this.delete(this.keys().next().value)
    return this
  }

  add (key) {
    return this.set(key, true)
  }
}

function makeContext (options) {
  const config = resolveConfig(options)
  const state = {
    // The app-exists check, made once (reset when it fails, and when a
    // tenant's app is removed with its last sandbox).
    appReady: null,
    // creates under way: a tenant's app is not removed while one is.
    creates: 0,
    // sandboxIds destroyed through this provider: later calls fail fast
    // (an id forgotten here fails the slower way, at the API or sshd).
    destroyed: new Recent(RECENT_LIMIT),
    // The client key, configured or generated on first use.
    clientKey: null,
    // sandboxId -> { sig, handle }: this provider's native SSH session to
    // it (lib/transport/ssh.js), which destroy closes; a handle forgotten
    // here closes its session when it is garbage-collected.
    sessions: new Recent(RECENT_LIMIT),
    // create's options object -> that create's promise, which settles only
    // once a failed or aborted create has removed its machine (compat.js).
    creating: new WeakMap(),
    // Pausing (lib/pause.js): sandboxIds this provider paused, the resume
    // in flight per sandbox (shared by concurrent calls), when each was
    // last used and how many calls it has in flight (for its idle timeout).
    paused: new Recent(RECENT_LIMIT),
    resuming: new Map(),
    lastUse: new Recent(RECENT_LIMIT),
    inFlight: new Map(),
    // sandboxId -> { id, name } of the volume its destroy could not remove yet.
    orphanVolumes: new Recent(RECENT_LIMIT),
    // sandboxIds where this provider's key was authorized through exec
    // (lib/transport/ssh.js); a resume after a stop forgets it.
    reauthorized: new Recent(RECENT_LIMIT),
    // The edge path (lib/edge.js): 'private' or 'edge', learned once (a
    // promise), and per app the making of its public addresses.
    reach: null,
    edgeIps: new Map()
  }
  const ctx = {}
  // Not enumerable: logging a provider or a sandbox (which show this object)
  // must not print the token, keys or password.
  Object.defineProperties(ctx, {
    config: { value: config },
    state: { value: state },
    // Every command and file call wakes a paused sandbox first.
    transport: { value: wakeful(config.transport === 'exec' ? execApi : ssh) }
  })
  // The warm pool (lib/pool.js): create() claims from it when config.pool is set.
  Object.defineProperty(ctx, 'pool', { value: new Pool(ctx) })
  return Object.freeze(ctx)
}

module.exports = { makeContext, RECENT_LIMIT }
