'use strict'
// filesystem.watch(path, onEvent, { recursive, signal, maxQueued }): the
// image's inotify watcher (docker/flywatch.c) run as the sandbox user, its
// stdout (one JSON event a line) streamed back over the SSH session.
//
// Events: { type: 'create' | 'write' | 'remove' | 'rename', path,
// oldPath? } and { type: 'overflow', reason } when events may have been
// missed: 'kernel' (inotify's queue overflowed in the sandbox), 'watches'
// (more directories than the watcher may watch), 'queue' (more events
// waiting for onEvent than maxQueued, the rest dropped until it catches up)
// or 'restart' (the watcher or the connection went, e.g. a pause, and the
// watch was started again).
//
// What the sandbox sends is untrusted: a line longer than MAX_LINE, one
// that is not JSON or not an event is dropped; the queue never holds more
// than maxQueued events; the watcher's output is not kept (keep: false).
const { flyError, invalidArg } = require('./errors')
const { commandSpec } = require('./exec')

const WATCHER = '/usr/local/libexec/computesdk/flywatch'
const MAX_LINE = 16 << 10
const TYPES = new Set(['create', 'write', 'remove', 'rename', 'overflow'])
const RETRY_MIN_MS = 250
const RETRY_MAX_MS = 5000
// How long stop() waits for the watcher to end.
const STOP_WAIT_MS = 5000

function eventOf (line) {
  let o
  try {
    o = JSON.parse(line)
  } catch {
    return null
  }
  if (!o || typeof o !== 'object' || typeof o.type !== 'string') return null
  if (o.type === 'ready') return Number.isSafeInteger(o.pid) && o.pid > 0 ? { type: 'ready', pid: o.pid } : null
  if (!TYPES.has(o.type)) return null
  if (o.type === 'overflow') return { type: 'overflow', reason: typeof o.reason === 'string' ? o.reason.slice(0, 32) : 'kernel' }
  if (typeof o.path !== 'string' || o.path.length > 4096) return null
  const ev = { type: o.type, path: o.path }
  if (o.type === 'rename' && typeof o.oldPath === 'string' && o.oldPath.length <= 4096) ev.oldPath = o.oldPath
  return ev
}

async function watch (sb, path, onEvent, options = {}) {
  if (typeof path !== 'string' || path === '' || path.includes('\0')) throw invalidArg('watch: path must be a non-empty string')
  if (typeof onEvent !== 'function') throw invalidArg('watch: onEvent must be a function')
  const { recursive = false, signal, maxQueued = 10000 } = options || {}
  if (!Number.isSafeInteger(maxQueued) || maxQueued < 1) throw invalidArg('watch: maxQueued must be a positive integer')
  const transport = sb._ctx.transport
  if (transport.name !== 'ssh') {
    throw flyError('FLY_UNSUPPORTED', 'watch: needs the SSH transport (the exec transport returns output only once a command ends)')
  }
  if (signal && signal.aborted) throw flyError('ABORT_ERR', 'watch: aborted')
  const spec = commandSpec(WATCHER, { args: recursive ? ['-r', path] : [path] })

  const queue = []
  let dropping = false
  let delivering = false
  let stopped = false
  let pid = 0
  let running = null   // the watcher command's promise
  const stats = { events: 0, dropped: 0, restarts: 0, maxQueued: 0 }
  const raw = transport.raw || transport

  const push = (ev) => {
    if (queue.length >= maxQueued) {
      stats.dropped++
      if (!dropping) {
        dropping = true
        queue.push({ type: 'overflow', reason: 'queue' })
      }
      return
    }
    dropping = false
    queue.push(ev)
    if (queue.length > stats.maxQueued) stats.maxQueued = queue.length
    if (!delivering) deliver()
  }
  // Events reach onEvent one at a time, in order; a promise it returns is
  // waited for (that is the back-pressure the queue bounds).
  const deliver = async () => {
    delivering = true
    try {
      while (queue.length > 0 && !stopped) {
        const ev = queue.shift()
        stats.events++
        try {
          const r = onEvent(ev)
          if (r && typeof r.then === 'function') await r
        } catch {
          // The caller's callback; its errors are its own.
        }
      }
    } finally {
      delivering = false
    }
  }

  // One run of the watcher: resolves ready() at its ready line, and when
  // it ends.  First run through the wakeful transport (a paused sandbox is
  // woken); restarts through the raw one (a paused sandbox is not).
  let stderr = ''
  const run = (t, onReady) => {
    let partial = []
    let size = 0
    const onChunk = (stream, chunk) => {
      // Its stderr says why it could not start (kept to 1 KiB).
      if (stream === 2 && stderr.length < 1024) stderr += chunk.toString('utf8').slice(0, 1024 - stderr.length)
      if (stream !== 1 || stopped) return
      let start = 0
      for (;;) {
        const nl = chunk.indexOf(10, start)
        if (nl < 0) break
        const piece = chunk.subarray(start, nl)
        start = nl + 1
        if (size + piece.length <= MAX_LINE) {
          partial.push(piece)
          const ev = eventOf(Buffer.concat(partial).toString('utf8'))
          if (ev && ev.type === 'ready') {
            pid = ev.pid
            onReady()
          } else if (ev) push(ev)
        }
        partial = []
        size = 0
      }
      if (start < chunk.length && size <= MAX_LINE) {
        const rest = chunk.subarray(start)
        size += rest.length
        if (size <= MAX_LINE) partial.push(Buffer.from(rest))
        else partial = []
      }
    }
    return t.exec(sb, spec, { onChunk, keep: false })
  }

  // Starts the watcher on transport t: ready is true at its ready line,
  // false if it ended first; done settles when it ends.
  const start = (t) => {
    let markReady
    const ready = new Promise((resolve) => { markReady = resolve })
    const done = run(t, () => markReady(true))
    running = done
    return { ready: Promise.race([ready, done.then(() => false, () => false)]), done }
  }

  const handle = {
    get stats () { return { ...stats, queued: queue.length } },
    async stop () {
      if (stopped) return
      stopped = true
      if (signal) signal.removeEventListener('abort', onAbort)
      const p = pid
      if (p && running) {
        // Its own process, as the sandbox user, through the raw transport:
        // a paused sandbox is not woken (its connection is gone, and the
        // executor ends what it started over it).
        await raw.exec(sb, commandSpec('kill', { args: ['-TERM', String(p)] })).catch(() => {})
        let timer
        await Promise.race([running.catch(() => {}), new Promise((resolve) => { timer = setTimeout(resolve, STOP_WAIT_MS) })])
        clearTimeout(timer)
      }
    }
  }
  const onAbort = () => { handle.stop() }

  // The first run must come up (through the wakeful transport: a paused
  // sandbox is woken); its failure is watch()'s.
  const first = start(transport)
  if (!(await first.ready)) {
    const r = await first.done
    if (r.exitCode === 127) throw flyError('FLY_WATCH_UNSUPPORTED', `watch: the image has no watcher (${WATCHER}); rebuild it from docker/`)
    const why = stderr.trim()
    const code = /No such file/i.test(why) ? 'SFTP_NO_SUCH_FILE' : /Permission denied/i.test(why) ? 'SFTP_PERMISSION_DENIED' : 'FLY_WATCH_FAILED'
    throw flyError(code, `watch '${path}': ${why || `the watcher exited with ${r.exitCode}`}`, { path })
  }
  // Later ends: start again through the raw transport (a paused sandbox is
  // not woken: the attempts fail until it runs again), backing off, and
  // say that events may have been missed.
  const supervise = async () => {
    let delay = RETRY_MIN_MS
    for (;;) {
      await running.catch(() => {})
      if (stopped) return
      pid = 0
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, delay))
        if (stopped) return
        const next = start(raw)
        if (await next.ready) {
          stats.restarts++
          delay = RETRY_MIN_MS
          push({ type: 'overflow', reason: 'restart' })
          break
        }
        delay = Math.min(delay * 2, RETRY_MAX_MS)
      }
    }
  }
  supervise()
  if (signal) signal.addEventListener('abort', onAbort, { once: true })
  return handle
}

module.exports = { watch }
