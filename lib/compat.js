'use strict'
// The seed's extras on the sandboxes ComputeSDK's generated manager hands
// out: it gives them runCommand(command, options) only, while the seed's
// usage also calls runCommand(command, args) and runCode(code, runtime),
// and reads files back as Buffers.

function augment (psb) {
  if (psb === null || psb === undefined) return psb
  const machine = psb.getInstance()
  const generatedRun = psb.runCommand.bind(psb)
  psb.runCommand = (command, argsOrOptions, options) => Array.isArray(argsOrOptions)
    ? generatedRun(command, { ...(options || {}), args: argsOrOptions })
    : generatedRun(command, argsOrOptions)
  psb.runCode = (code, runtime) => machine.runCode(code, runtime)
  psb.filesystem = machine.filesystem
  return psb
}

// Every sandbox the provider's manager returns gets the extras.
function withSeedExtras (provider) {
  const mgr = provider.sandbox
  const create = mgr.create.bind(mgr)
  const getById = mgr.getById.bind(mgr)
  const list = mgr.list.bind(mgr)
  mgr.create = async (options) => augment(await create(options))
  mgr.getById = async (sandboxId) => augment(await getById(sandboxId))
  mgr.list = async () => (await list()).map(augment)
  return provider
}

module.exports = { withSeedExtras }
