'use strict'
// sandbox.getMetrics(): what the sandbox uses, measured inside it by the
// image's sampler (docker/flymetrics.c) run as the sandbox user:
// `flymetrics now` (CPU over the next 500 ms, memory, disk) or
// `flymetrics history <since>` (the samples the root sampler the
// entrypoint starts keeps: one per 5 s, the last hour).  What comes back is
// the sandbox's output, so it is read under a bound and every field is
// checked: a sandbox cannot make the provider hold more than MAX_BYTES or
// return anything but finite non-negative numbers.
const { flyError, invalidArg } = require('./errors')
const { commandSpec } = require('./exec')

const SAMPLER = '/usr/local/libexec/computesdk/flymetrics'
// 720 samples of ~260 bytes, with room to spare.
const MAX_BYTES = 512 << 10
const MAX_SAMPLES = 720
const FIELDS = ['cpuPercent', 'cpus', 'memoryUsedBytes', 'memoryTotalBytes', 'diskUsedBytes', 'diskTotalBytes']

function sampleOf (line) {
  let o
  try {
    o = JSON.parse(line)
  } catch {
    return null
  }
  if (!o || typeof o !== 'object' || !Number.isFinite(o.at) || o.at < 0) return null
  const s = { at: new Date(o.at) }
  for (const k of FIELDS) {
    if (!Number.isFinite(o[k]) || o[k] < 0) return null
    s[k] = o[k]
  }
  s.cpuPercent = Math.min(s.cpuPercent, 100)
  // / as well as the workspace (the same filesystem unless a volume is
  // mounted at /home/sandbox).
  if (Number.isFinite(o.rootUsedBytes) && Number.isFinite(o.rootTotalBytes) && o.rootUsedBytes >= 0 && o.rootTotalBytes >= 0) {
    s.rootUsedBytes = o.rootUsedBytes
    s.rootTotalBytes = o.rootTotalBytes
  }
  return s
}

async function sampler (sb, args) {
  let size = 0
  let out = ''
  let over = false
  const spec = commandSpec(SAMPLER, { args, timeout: 30000 })
  const r = await sb._ctx.transport.exec(sb, spec, {
    onChunk (_stream, chunk) {
      if (_stream !== 1 || over) return
      size += chunk.length
      if (size > MAX_BYTES) over = true
      else out += typeof chunk === 'string' ? chunk : chunk.toString('utf8')
    },
    keep: false
  })
  if (over) throw flyError('FLY_METRICS_FAILED', `getMetrics: the sampler's output passed ${MAX_BYTES} bytes`)
  if (r.exitCode === 127) {
    throw flyError('FLY_METRICS_UNSUPPORTED', `getMetrics: the image has no sampler (${SAMPLER}); rebuild it from docker/`)
  }
  if (r.exitCode !== 0) throw flyError('FLY_METRICS_FAILED', `getMetrics: the sampler exited with ${r.exitCode}`)
  return out
}

// options.since (a Date or ms since the epoch): the kept samples from then,
// oldest first; without it, one sample now.
async function getMetrics (sb, options) {
  const since = options && options.since
  if (since === undefined) {
    const s = sampleOf((await sampler(sb, ['now'])).split('\n')[0])
    if (!s) throw flyError('FLY_METRICS_FAILED', 'getMetrics: the sampler\'s reply is malformed')
    return s
  }
  const ms = since instanceof Date ? since.getTime() : since
  if (!Number.isSafeInteger(ms) || ms < 0) throw invalidArg('getMetrics: since must be a Date or ms since the epoch')
  const lines = (await sampler(sb, ['history', String(ms)])).split('\n')
  const out = []
  for (const line of lines) {
    const s = line && sampleOf(line)
    if (s && out.length < MAX_SAMPLES) out.push(s)
  }
  return out
}

module.exports = { getMetrics }
