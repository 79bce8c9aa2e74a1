'use strict'
// getInfo and getUrl: what a sandbox is now (its machine read again, its
// volume, its ports) and the URL of one of its ports.
const api = require('./api')
const { flyError, invalidArg } = require('./errors')
const { RESERVED_PREFIX, TIMEOUT_MS, isGone, statusOf } = require('./metadata')
const volumes = require('./volumes')
const ports = require('./ports')
const urls = require('./urls')
const { ensureAwake } = require('./pause')
const egress = require('./egress')

async function getInfo (sb) {
  const m = await api.getMachine(sb._ctx.config, sb._params, { required: true })
  // Fly lists a destroyed machine for a while: it is no sandbox any more,
  // as every other call after destroy() says.
  if (isGone(m)) throw flyError('FLY_NOT_FOUND', `sandbox ${sb.sandboxId} does not exist (it was destroyed)`, { status: 404 })
  sb._update({ ...m, app: sb.appName })
  const st = sb.state
  const status = statusOf(m)
  const volume = await volumes.info(sb)
  const userMeta = {}
  for (const [k, v] of Object.entries(sb.metadata)) if (!k.startsWith(RESERVED_PREFIX)) userMeta[k] = v
  return {
    id: sb.sandboxId,
    provider: 'fly',
    status,
    createdAt: sb.createdAt,
    timeout: Number(sb.metadata[TIMEOUT_MS]) || 0,
    // the egress policy (lib/egress.js)
    network: egress.info(sb.metadata),
    metadata: {
      ...userMeta,
      appName: sb.appName,
      machineId: sb.machineId,
      region: sb.region,
      privateIp: sb.privateIp,
      image: sb.image,
      state: st,
      name: sb.name,
      volumeId: sb.volumeId,
      volume,
      ports: ports.exposed(sb)
    }
  }
}

// Each exposed port has a public port of its own (lib/ports.js); a paused
// sandbox is woken first (autoResume), as a request to the URL would.
// A port declared with create's ports: its public port (lib/ports.js);
// any other: its URL through the edge bridge, private unless public
// (lib/urls.js).
async function getUrl (sb, options) {
  const port = options && options.port
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArg('getUrl: port must be an integer from 1 to 65535')
  const protocol = (options.protocol || '').replace(/:$/, '')
  if (protocol && !/^(https?|wss?)$/.test(protocol)) throw invalidArg('getUrl: protocol must be http, https, ws or wss')
  urls.checkOptions(options)
  const url = ports.isExposed(sb, port) ? ports.url(sb, port, protocol) : await urls.url(sb, port, protocol, options)
  // A URL is an answer whatever the state (a request to it starts the
  // machine anyway): with autoResume off, or a machine that is not paused
  // but stopped, it is given as it is.
  await ensureAwake(sb).catch((err) => {
    if (err.code !== 'FLY_MACHINE_NOT_RUNNING') throw err
  })
  return url
}

module.exports = { getInfo, getUrl }
