'use strict'
// Process handles and terminals: sandbox.commands (start, list, connect,
// kill, sendStdin) and sandbox.pty (create, connect), in E2B's shape.
//
// The processes live in the sandbox, held by its process daemon
// (docker/flyproc.c, the sandbox user's, one per machine), not in a
// connection.  Every request here is one run of the daemon's relay
// (`flyproc`) as an ordinary command on the provider's SSH session: the
// request frames are its stdin, the replies its stdout (lib/procwire.js).
// A handle follows its process with one long-running relay (ATTACH from its
// byte offsets); when that relay's connection is cut (the session dropped,
// the sandbox suspended) the handle attaches again from where it was, so
// nothing the daemon still keeps is missed, until the process ends or
// reconnecting has failed for RECONNECT_MS.
const crypto = require('crypto')
const os = require('os')
const { StringDecoder } = require('string_decoder')
const { flyError, invalidArg } = require('./errors')
const { T, F, Writer, Decoder, readInfo } = require('./procwire')
const { validEnvName } = require('./exec')

const RELAY = '/usr/local/libexec/computesdk/flyproc'
// How long a handle keeps trying to reattach after its connection was cut.
const RECONNECT_MS = 5 * 60 * 1000
const BACKOFF_MS = [100, 250, 500, 1000, 2000]
const TAG_START = 1
const TAG_ATTACH = 2
const TAG_REQ = 3
const MAX_INFOS = 4096
// A request's payload at most (docker/flyexec_proto.h FLY_FRAME_MAX), and
// the stdin one request carries (the daemon queues at most 1 MiB too).
const MAX_REQUEST = 1 << 20

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function transportOf (sb) {
  const t = sb._ctx.transport
  if (t.name !== 'ssh') {
    throw flyError('PROCESS_UNSUPPORTED_TRANSPORT', `process handles and terminals need the SSH transport (this provider uses transport '${t.name}')`)
  }
  return t
}

// A reply ERROR as a JS error with the daemon's code.
function replyError (r) {
  const code = r.str()
  return flyError(code, r.str())
}

// One relay run: `frames` in, onFrame per reply frame.  Resolves with the
// relay's exit code; the relay's own complaints (it cannot reach the
// daemon) become errors.  wake: whether a paused sandbox is woken for it.
async function relay (sb, frames, onFrame, { wake = true } = {}) {
  const t = transportOf(sb)
  const dec = new Decoder(onFrame)
  let errText = ''
  let broken = null
  const onChunk = (stream, chunk) => {
    if (stream === 2) {
      if (errText.length < 4096) errText += chunk.toString('utf8')
      return
    }
    if (broken) return
    try {
      dec.push(chunk)
    } catch (err) {
      broken = err
    }
  }
  const r = await (wake ? t : t.raw).exec(sb, { argv: [RELAY] }, { stdin: frames, onChunk, bytes: true })
  if (broken) throw flyError('PROCESS_PROTOCOL', `sandbox ${sb.sandboxId}: the process daemon's reply is malformed: ${broken.message}`)
  if (r.exitCode === 127 || r.exitCode === 126) {
    throw flyError('PROCESS_UNSUPPORTED', `sandbox ${sb.sandboxId} has no process daemon (${RELAY}); its image predates process handles`)
  }
  if (r.exitCode === 2 || r.exitCode === 3) {
    throw flyError('PROCESS_DAEMON_UNAVAILABLE', `sandbox ${sb.sandboxId}: ${errText.trim() || 'the process daemon does not answer'}`)
  }
  return r.exitCode
}

// One request and its replies: INFO frames collected, OK's payload read by
// `ok`, ERROR thrown.
async function request (sb, frame, ok) {
  const infos = []
  let result
  let error = null
  let done = false
  await relay(sb, frame, ({ type, r }) => {
    // The daemon holds at most 1,024 processes: more is not its answer
    // (code in the sandbox can replace the daemon; nothing it sends grows
    // without a bound here).
    if (type === T.INFO && infos.length >= MAX_INFOS) throw new Error(`more than ${MAX_INFOS} processes listed`)
    if (type === T.INFO) infos.push(readInfo(r))
    else if (type === T.ERROR) { error = replyError(r); done = true } else if (type === T.OK) { result = ok ? ok(r) : undefined; done = true }
  })
  if (error) throw error
  if (!done) throw flyError('PROCESS_DAEMON_LOST', `sandbox ${sb.sandboxId}: the process daemon closed the connection without a reply`)
  return { infos, result }
}

function keyFrame (id) {
  return new Writer().str(id)
}

function signalNumber (signal) {
  if (Number.isInteger(signal) && signal > 0 && signal < 65) return signal
  const n = typeof signal === 'string' ? os.constants.signals[signal.startsWith('SIG') ? signal : 'SIG' + signal] : undefined
  if (!n) throw invalidArg(`kill: unknown signal ${JSON.stringify(signal)}`)
  return n
}

function checkId (id, what) {
  if (typeof id !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) throw invalidArg(`${what}: id must be a process id string`)
  return id
}

function toBytes (data, what) {
  let b
  if (typeof data === 'string') b = Buffer.from(data, 'utf8')
  else if (data instanceof Uint8Array) b = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  else throw invalidArg(`${what}: data must be a string, Buffer or Uint8Array`)
  if (b.length > MAX_REQUEST) throw invalidArg(`${what}: at most ${MAX_REQUEST} bytes at a time`)
  return b
}

// Sends a signal to the process's group: true when it was delivered (false:
// it had ended).  One request, bounded by the transport's deadlines.
async function kill (sb, id, signal = 'SIGKILL') {
  const w = keyFrame(checkId(id, 'kill')).u32(signalNumber(signal))
  const { result } = await request(sb, w.frame(T.SIGNAL, TAG_REQ), (r) => r.u8() === 1)
  return result
}

// Stdin for the process (a terminal's input): queued in the daemon, at most
// 1 MiB not yet read by the process (PROCESS_STDIN_FULL beyond).
async function sendStdin (sb, id, data) {
  const w = keyFrame(checkId(id, 'sendStdin')).bytes(toBytes(data, 'sendStdin'))
  await request(sb, w.frame(T.STDIN, TAG_REQ))
}

async function closeStdin (sb, id) {
  await request(sb, keyFrame(checkId(id, 'closeStdin')).frame(T.EOF, TAG_REQ))
}

async function list (sb) {
  const { infos } = await request(sb, new Writer().str('').frame(T.LIST, TAG_REQ))
  return infos.sort((a, b) => a.startedAt - b.startedAt)
}

// A running or ended process, followed from its byte offsets.  kind:
// 'command' (onStdout/onStderr get strings) or 'pty' (onData gets the
// terminal's bytes, unchanged, as Buffers).
class ProcessHandle {
  constructor (sb, id, { kind, onStdout, onStderr, onData, from = 0 }) {
    Object.defineProperty(this, '_sb', { value: sb })
    this.id = id
    this.pid = null
    Object.defineProperty(this, '_kind', { value: kind })
    Object.defineProperty(this, '_cb', { value: kind === 'pty' ? [null, onData, null] : [null, onStdout, onStderr] })
    const fromOut = typeof from === 'object' ? from.stdout || 0 : from
    const fromErr = typeof from === 'object' ? from.stderr || 0 : from
    // The next byte offset wanted per stream, and bytes the ring dropped
    // before this handle read them.
    Object.defineProperty(this, '_cur', { value: [null, fromOut, fromErr] })
    this.lostBytes = 0
    Object.defineProperty(this, '_dec', { value: [null, new StringDecoder('utf8'), new StringDecoder('utf8')] })
    Object.defineProperty(this, '_kept', { value: [null, [], []], writable: true })
    Object.defineProperty(this, '_keptBytes', { value: 0, writable: true })
    Object.defineProperty(this, '_startedAt', { value: null, writable: true })
    Object.defineProperty(this, '_endedAt', { value: null, writable: true })
    Object.defineProperty(this, '_queue', { value: Promise.resolve(), writable: true })
    this.exitCode = null
    this.truncated = false
    // Names this handle's attached connections, for disconnect().
    Object.defineProperty(this, '_token', { value: newId() })
    Object.defineProperty(this, '_detached', { value: false, writable: true })
  }

  get stdout () { return this._kept[1].join('') }
  get stderr () { return this._kept[2].join('') }

  // Output from the daemon: bytes before the wanted offset skipped (a
  // reattach overlaps), bytes past it counted as lost (the ring wrapped).
  _data (s, offset, bytes) {
    const cur = this._cur[s]
    if (offset + bytes.length <= cur) return
    if (offset > cur) this.lostBytes += offset - cur
    const b = offset < cur ? bytes.subarray(cur - offset) : bytes
    this._cur[s] = offset + bytes.length
    const cb = this._cb[s]
    if (this._kind === 'pty') {
      call(cb, Buffer.from(b))
      return
    }
    const text = this._dec[s].write(b)
    this._keep(s, text)
  }

  _keep (s, text) {
    if (text === '') return
    const max = this._sb._ctx.config.maxOutputBytes
    if (this._keptBytes + text.length <= max) {
      this._kept[s].push(text)
      this._keptBytes += text.length
    } else {
      this.truncated = true
    }
    call(this._cb[s], text)
  }

  // Follows the process until it ends: the first relay carries `first`
  // (START + ATTACH for a new process), later ones ATTACH from the offsets
  // reached.  Settles `started` (the pid known) on the way.
  async _follow (first, started) {
    const sb = this._sb
    let frames = first
    let failingSince = null
    let attempt = 0
    let startSent = first.length > 0 && first.readUInt8(4) === T.START
    for (;;) {
      let exit = null
      let error = null
      try {
        if (this._detached) throw detachedError(this)
        const code = await relay(sb, frames, ({ type, tag, r }) => {
          if (type === T.STARTED && tag === TAG_START) {
            this.pid = r.u32()
            started.resolve()
          } else if (type === T.ERROR) {
            const err = replyError(r)
            // A START sent again after a cut connection: it had run.
            if (tag === TAG_START && err.code === 'PROCESS_EXISTS' && attempt > 0) return
            if (error === null) error = err
            if (tag === TAG_START) started.reject(err)
          } else if (type === T.INFO) {
            const info = readInfo(r)
            this.pid = info.pid
            this._startedAt = info.startedAt
            this._endedAt = info.endedAt
            // Attached again: a later cut gets the whole reconnect time.
            failingSince = null
            started.resolve()
          } else if (type === T.DATA) {
            const s = r.u8()
            const offset = r.u64()
            this._data(s === 2 ? 2 : 1, offset, r.rest())
          } else if (type === T.EXIT) {
            exit = { exitCode: r.i32(), signal: r.u32(), timedOut: r.u8() === 1 }
          }
        }, { wake: attempt === 0 })
        if (exit) return this._finish(exit)
        if (this._detached) throw detachedError(this)
        if (code !== 0 && !error) {
          throw flyError('PROCESS_RELAY_KILLED', `sandbox ${sb.sandboxId}: the relay following process ${this.id} ended (${code})`)
        }
        if (error) {
          if (error.code === 'PROCESS_NOT_FOUND' && attempt > 0) {
            throw flyError('PROCESS_LOST', `sandbox ${sb.sandboxId}: process ${this.id} is gone (its process daemon was restarted, e.g. by a stop or restart of the sandbox); its exit status is unknown`)
          }
          throw error
        }
        // The daemon closed an attached connection without EXIT: it died,
        // and its processes with it.  Never a made-up exit code.
        throw flyError('PROCESS_LOST', `sandbox ${sb.sandboxId}: the process daemon ended while process ${this.id} ran; its exit status is unknown`)
      } catch (err) {
        if (!reconnectable(err) || this._detached) {
          if (this._detached) err = detachedError(this)
          started.reject(err)
          throw err
        }
        const now = Date.now()
        if (failingSince === null) failingSince = now
        if (now - failingSince > RECONNECT_MS) {
          started.reject(err)
          throw err
        }
        await sleep(BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)])
      }
      attempt++
      // START again only when it may not have reached the daemon.
      frames = startSent && this.pid === null ? first : attachFrame(this.id, this._cur[1], this._cur[2], this._token)
      if (frames !== first) startSent = false
    }
  }

  _finish (exit) {
    if (this._kind !== 'pty') {
      this._keep(1, this._dec[1].end())
      this._keep(2, this._dec[2].end())
    }
    this.exitCode = exit.exitCode
    const end = this._endedAt ? this._endedAt.getTime() : Date.now()
    const durationMs = this._startedAt ? Math.max(0, end - this._startedAt.getTime()) : 0
    const result = this._kind === 'pty'
      ? { exitCode: exit.exitCode, durationMs }
      : { stdout: this.stdout, stderr: this.stderr, exitCode: exit.exitCode, durationMs }
    if (exit.signal) result.signal = exit.signal
    if (exit.timedOut) result.timedOut = true
    return result
  }

  // Requests about this process, in the order they were made.
  _serial (fn) {
    const p = this._queue.then(fn, fn)
    this._queue = p.catch(() => {})
    return p
  }

  wait () {
    return this._done
  }

  // Stops following the process (it runs on; commands.connect(id) finds
  // it again): the output stops coming and wait() rejects with
  // PROCESS_DETACHED.  A provider process with nothing else to do can then
  // exit.
  async disconnect () {
    if (this._detached) return
    this._detached = true
    await request(this._sb, new Writer().str(this._token).frame(T.DETACH, TAG_REQ))
  }

  kill (signal = 'SIGKILL') {
    return kill(this._sb, this.id, signal)
  }

  async sendStdin (data) {
    const b = toBytes(data, 'sendStdin')
    return this._serial(() => sendStdin(this._sb, this.id, b))
  }

  closeStdin () {
    return this._serial(() => closeStdin(this._sb, this.id))
  }
}

// Connection trouble (a cut session, a frozen or suspended sandbox, a
// relay killed with its channel) is retried; answers are not.
function reconnectable (err) {
  const c = String(err && err.code)
  return c.startsWith('SSH_') || c === 'FLY_MACHINE_NOT_RUNNING' || c === 'PROCESS_RELAY_KILLED'
}

function attachFrame (id, out, err, token) {
  return new Writer().str(id).u64(out).u64(err).str(token).frame(T.ATTACH, TAG_ATTACH)
}

function detachedError (h) {
  return flyError('PROCESS_DETACHED', `process ${h.id}: disconnect() was called; it runs on (commands.connect finds it)`)
}

function deferred () {
  let resolve, reject
  const p = new Promise((res, rej) => { resolve = res; reject = rej })
  let settled = false
  return {
    promise: p,
    resolve: (v) => { if (!settled) { settled = true; resolve(v) } },
    reject: (e) => { if (!settled) { settled = true; reject(e) } }
  }
}

// Starts following; resolves with the handle once the pid is known.
async function follow (h, first) {
  const started = deferred()
  started.promise.catch(() => {})
  const done = h._follow(first, started)
  done.catch(() => {})
  Object.defineProperty(h, '_done', { value: done })
  await started.promise
  return h
}

// A user's callback: what it throws is its own (an uncaught exception, as
// from an event listener), never taken for a broken reply stream.
function call (cb, value) {
  if (typeof cb !== 'function') return
  try {
    cb(value)
  } catch (err) {
    process.nextTick(() => { throw err })
  }
}

function newId () {
  return crypto.randomBytes(9).toString('base64url')
}

// START's payload from checked options.
function startFrame (id, { flags, timeoutMs = 0, cols = 0, rows = 0, cwd = '', env = {}, argv }) {
  const w = new Writer().str(id).u8(flags).u32(timeoutMs).u32(cols).u32(rows).str(cwd)
  const names = Object.keys(env)
  w.u32(names.length)
  for (const n of names) w.str(n).str(env[n])
  w.u32(argv.length)
  for (const a of argv) w.str(a)
  const f = w.frame(T.START, TAG_START)
  if (f.length - 9 > MAX_REQUEST) throw invalidArg(`start: the command, arguments and environment take more than ${MAX_REQUEST} bytes`)
  return f
}

function checkCommon (o, what, sandboxUser) {
  const out = {}
  if (o.cwd !== undefined) {
    if (typeof o.cwd !== 'string' || o.cwd === '' || o.cwd.includes('\0')) throw invalidArg(`${what}: cwd must be a non-empty string`)
    out.cwd = o.cwd
  }
  out.env = {}
  if (o.env !== undefined) {
    if (o.env === null || typeof o.env !== 'object') throw invalidArg(`${what}: env must be an object of strings`)
    for (const [k, v] of Object.entries(o.env)) {
      if (!validEnvName(k)) throw invalidArg(`${what}: invalid environment variable name ${JSON.stringify(k)}`)
      if (v === undefined || v === null) continue
      if (String(v).includes('\0')) throw invalidArg(`${what}: env values cannot hold NUL`)
      out.env[k] = String(v)
    }
  }
  if (o.timeout !== undefined && o.timeout !== null && o.timeout !== 0) {
    if (typeof o.timeout !== 'number' || !(o.timeout > 0) || !(o.timeout < 2 ** 32)) {
      throw invalidArg(`${what}: timeout must be a positive number of milliseconds`)
    }
    out.timeoutMs = Math.ceil(o.timeout)
  }
  if (o.user !== undefined && o.user !== sandboxUser) {
    if (o.user === 'root') {
      throw flyError('PROCESS_ROOT_UNSUPPORTED', `${what}: handles run as the sandbox user; run root setup steps with runCommand(command, { user: 'root' })`)
    }
    throw invalidArg(`${what}: user must be 'root' or left out`)
  }
  return out
}

function checkSize (v, what, name) {
  if (v === undefined) return 0
  if (!Number.isInteger(v) || v < 1 || v > 65535) throw invalidArg(`${what}: ${name} must be an integer from 1 to 65535`)
  return v
}

function makeCommands (sb) {
  return Object.freeze({
    // start(command, options) or start(program, args, options).
    async start (command, argsOrOptions, maybeOptions) {
      const args = Array.isArray(argsOrOptions) ? argsOrOptions : null
      const o = (args ? maybeOptions : argsOrOptions) || {}
      if (typeof command !== 'string' || command === '' || command.includes('\0')) throw invalidArg('commands.start: command must be a non-empty string')
      if (typeof o !== 'object') throw invalidArg('commands.start: options must be an object')
      if (args && !args.every((a) => typeof a === 'string' && !a.includes('\0'))) throw invalidArg('commands.start: every argument must be a string')
      const c = checkCommon(o, 'commands.start', sb._ctx.config.sshUser)
      transportOf(sb)
      let flags = args ? 0 : F.SHELL
      if (o.background === true) flags |= F.BACKGROUND
      if (o.stdin !== false) flags |= F.STDIN
      const id = newId()
      const h = new ProcessHandle(sb, id, { kind: 'command', onStdout: o.onStdout, onStderr: o.onStderr })
      const first = Buffer.concat([startFrame(id, { ...c, flags, argv: args ? [command, ...args] : [command] }), attachFrame(id, 0, 0, h._token)])
      return follow(h, first)
    },
    list: () => list(sb),
    // Reattaches to a process by id: its kept output from `from` (a byte
    // offset, or { stdout, stderr }), then live, then wait().
    async connect (id, options) {
      const o = options || {}
      checkId(id, 'commands.connect')
      const h = new ProcessHandle(sb, id, { kind: 'command', onStdout: o.onStdout, onStderr: o.onStderr, from: checkFrom(o.from) })
      return follow(h, attachFrame(id, h._cur[1], h._cur[2], h._token))
    },
    kill: (id, signal) => kill(sb, id, signal),
    sendStdin: (id, data) => sendStdin(sb, id, data),
    closeStdin: (id) => closeStdin(sb, id)
  })
}

function checkFrom (from) {
  if (from === undefined) return 0
  const ok = (n) => n === undefined || (Number.isSafeInteger(n) && n >= 0)
  if (typeof from === 'object' && from !== null && ok(from.stdout) && ok(from.stderr)) return from
  if (ok(from)) return from
  throw invalidArg('connect: from must be a byte offset (a non-negative integer) or { stdout, stderr }')
}

function makePty (sb) {
  return Object.freeze({
    async create (options) {
      const o = options || {}
      if (typeof o !== 'object') throw invalidArg('pty.create: options must be an object')
      const c = checkCommon(o, 'pty.create', sb._ctx.config.sshUser)
      const cols = checkSize(o.cols, 'pty.create', 'cols') || 80
      const rows = checkSize(o.rows, 'pty.create', 'rows') || 24
      if (o.command !== undefined && (typeof o.command !== 'string' || o.command === '' || o.command.includes('\0'))) {
        throw invalidArg('pty.create: command must be a non-empty string')
      }
      transportOf(sb)
      const id = newId()
      const h = new PtyHandle(sb, id, { kind: 'pty', onData: o.onData })
      // The user's login shell, interactive, unless a command is given.
      const argv = [o.command || 'exec "${SHELL:-/bin/sh}" -l -i']
      const first = Buffer.concat([startFrame(id, { ...c, flags: F.SHELL | F.PTY | F.STDIN, cols, rows, argv }), attachFrame(id, 0, 0, h._token)])
      return follow(h, first)
    },
    async connect (id, options) {
      const o = options || {}
      checkId(id, 'pty.connect')
      const h = new PtyHandle(sb, id, { kind: 'pty', onData: o.onData, from: checkFrom(o.from) })
      return follow(h, attachFrame(id, h._cur[1], 0, h._token))
    },
    resize: (id, size) => resize(sb, id, size),
    kill: (id, signal) => kill(sb, id, signal),
    sendInput: (id, data) => sendStdin(sb, id, data)
  })
}

async function resize (sb, id, size) {
  const s = size || {}
  const cols = checkSize(s.cols, 'resize', 'cols')
  const rows = checkSize(s.rows, 'resize', 'rows')
  if (!cols || !rows) throw invalidArg('resize: cols and rows are required')
  await request(sb, keyFrame(checkId(id, 'resize')).u32(cols).u32(rows).frame(T.RESIZE, TAG_REQ))
}

class PtyHandle extends ProcessHandle {
  sendInput (data) {
    return this.sendStdin(data)
  }

  resize (size) {
    return this._serial(() => resize(this._sb, this.id, size))
  }
}

module.exports = { makeCommands, makePty, RELAY, RECONNECT_MS }
