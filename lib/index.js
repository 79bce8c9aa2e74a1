'use strict'
// @computesdk/fly: the Fly.io Machines provider for ComputeSDK.
//
// fly(config) is a provider built with defineProvider (ComputeSDK provider
// 2.1.x).  Every network call is made by the native core: the Machines API
// over libcurl and commands/files over libssh2, on its own I/O thread.
// The methods receive `ctx` (lib/context.js): the frozen config, the
// provider's state and its transport.
const { defineProvider } = require('@computesdk/provider')
const { makeContext } = require('./context')
const lifecycle = require('./lifecycle')
const { FlyMachine } = require('./machine')
const { getInfo, getUrl } = require('./info')
const exec = require('./exec')
const { withSeedExtras } = require('./compat')
const pause = require('./pause')
const snapshots = require('./snapshots')
const urls = require('./urls')

// The sandbox's own pause/resume/fork (getInstance()), installed here at
// the top: machine.js is below pause.js and lifecycle.js, which use it.
for (const [name, value] of Object.entries({
  // Suspend (keepMemory, the default) or stop; see lib/pause.js.
  pause (options) {
    return pause.pause(this, options)
  },
  // Start it again and return once it answers over SSH.
  resume () {
    return pause.resume(this)
  },
  // A new URL key: every private URL given out before stops working
  // (lib/urls.js).
  rotateUrlKey () {
    return urls.rotate(this)
  },
  // A new sandbox whose workspace is a copy of this one's volume.
  async fork (options) {
    const r = await lifecycle.create(this._ctx, { ...(options || {}), fromSandbox: this.sandboxId })
    return r.sandbox
  }
})) Object.defineProperty(FlyMachine.prototype, name, { value, writable: true, configurable: true })

const flyProvider = defineProvider({
  name: 'fly',
  methods: {
    sandbox: {
      create: lifecycle.create,
      getById: lifecycle.getById,
      list: lifecycle.list,
      destroy: lifecycle.destroy,
      runCommand: (sb, command, options) => sb.runCommand(command, options),
      streamCommand: (sb, command, options) => exec.run(sb, command, options, options || {}),
      getInfo,
      getUrl,
      getInstance: (sb) => sb,
      // The coming ComputeSDK contract (pause/resume, status 'paused').
      pause: (sb, options) => pause.pause(sb, options),
      resume: (sb) => pause.resume(sb),
      filesystem: {
        readFile: (sb, path) => sb.filesystem.readFile(path),
        writeFile: (sb, path, content) => sb.filesystem.writeFile(path, content),
        mkdir: (sb, path) => sb.filesystem.mkdir(path),
        readdir: (sb, path) => sb.filesystem.readdir(path),
        exists: (sb, path) => sb.filesystem.exists(path),
        remove: (sb, path) => sb.filesystem.remove(path)
      }
    },
    snapshot: {
      create: snapshots.create,
      list: snapshots.list,
      delete: snapshots.delete
    }
  }
})

function fly (config) {
  const ctx = makeContext(config)
  const provider = withSeedExtras(flyProvider(ctx), ctx)
  // The warm pool's controls: fill/warm, drain, size, stats (lib/pool.js).
  provider.pool = ctx.pool.api()
  return provider
}

module.exports = { fly, FlyMachine, detectRuntime: exec.detectRuntime }
module.exports.default = fly
