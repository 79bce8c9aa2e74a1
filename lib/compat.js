'use strict'
// The seed's extras on the sandboxes ComputeSDK's generated manager hands
// out: it gives them runCommand(command, options) only, while the seed's
// usage also calls runCommand(command, args) and runCode(code, runtime),
// and reads files back as Buffers.
const { destroy } = require('./lifecycle')
const { abortError } = require('./errors')

function augment (psb, mgr) {
  if (psb === null || psb === undefined) return psb
  const machine = psb.getInstance()
  const generatedRun = psb.runCommand.bind(psb)
  psb.runCommand = (command, argsOrOptions, options) => Array.isArray(argsOrOptions)
    ? generatedRun(command, { ...(options || {}), args: argsOrOptions })
    : generatedRun(command, argsOrOptions)
  psb.runCode = (code, runtimeOrOptions) => machine.runCode(code, runtimeOrOptions)
  psb.codeInterpreter = machine.codeInterpreter
  psb.filesystem = machine.filesystem
  psb.getMetrics = (options) => machine.getMetrics(options)
  // the egress policy, as E2B names it (lib/egress.js)
  psb.updateNetwork = (network) => machine.updateNetwork(network)
  psb.rotateUrlKey = () => machine.rotateUrlKey()
  // Process handles and terminals (lib/commands.js), as E2B names them.
  psb.commands = machine.commands
  psb.pty = machine.pty
  // pause/resume as the coming ComputeSDK sandbox has them (kept when the
  // generated sandbox has its own), and fork as a sandbox of this manager.
  if (typeof psb.pause !== 'function') psb.pause = (options) => machine.pause(options)
  if (typeof psb.resume !== 'function') psb.resume = () => machine.resume()
  if (mgr) psb.fork = (options) => mgr.create({ ...(options || {}), fromSandbox: psb.sandboxId })
  return psb
}

// Every sandbox the provider's manager returns gets the extras.  Also: the
// generated create answers an abort at once, while our create is still
// removing its machine; hold that answer until the removal is done, and
// give our error (code ABORT_ERR, machineId, sandboxId) instead.
function withSeedExtras (provider, ctx) {
  const mgr = provider.sandbox
  const create = mgr.create.bind(mgr)
  const getById = mgr.getById.bind(mgr)
  const list = mgr.list.bind(mgr)
  mgr.create = async (options) => {
    const signal = options && options.signal
    if (signal && signal.aborted === true) throw abortError(signal, 'create')
    try {
      return augment(await create(options), mgr)
    } catch (err) {
      const ours = options && ctx.state.creating.get(options)
      if (err.name !== 'AbortError' || !ours) throw err
      // Our create's answer, once it has removed what it made.  One that
      // finished just as the signal fired returned a sandbox, which the
      // generated manager destroys in the background: do it here first.
      throw await ours.then(
        async (r) => { await destroy(ctx, r.sandboxId); return abortError(signal, 'create') },
        (e) => e.name === 'AbortError' ? e : abortError(signal, 'create'))
    }
  }
  mgr.getById = async (sandboxId) => augment(await getById(sandboxId), mgr)
  mgr.list = async () => (await list()).map((psb) => augment(psb, mgr))
  return provider
}

module.exports = { withSeedExtras }
