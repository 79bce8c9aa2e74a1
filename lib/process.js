'use strict'
// One command run in a sandbox: what exec.js starts for runCommand,
// streamCommand and runCode.  It holds the command's id, its spec (what
// native.buildCommand takes) and stdin, its output (decoded at the edge and
// kept as a rope), the onStdout/onStderr callbacks it feeds, and its result
// { stdout, stderr, exitCode, durationMs }.
//
// The SSH transport hands over output as text already (decoded natively,
// a character split across chunks held back until it is whole); bytes (the
// exec transport, small non-ASCII results) are decoded as UTF-8 here, with
// a StringDecoder per stream.
const { StringDecoder } = require('string_decoder')
const execApi = require('./transport/exec-api')
const { awake } = require('./pause')

// user: 'root' commands: the Machines API exec endpoint as root (buffered),
// on either transport, waking a paused sandbox first as every call does.
const asRoot = {
  exec: (sb, spec, opts) => awake(sb, () => execApi.exec(sb, spec, { ...opts, root: true }))
}

// A transport's output as text: a string already (ASCII output the native
// side handed over as it is), or bytes to decode.
const text = (x) => (typeof x === 'string' ? x : x.toString('utf8'))

// Ids of the commands this provider process started (unique within it).
let lastId = 0

class Process {
  // spec: a validated command spec; stdin: a string or Buffer, or
  // undefined.  stream: { onStdout, onStderr } to have the output streamed
  // (callbacks may be absent), or null for the whole output at the end.
  constructor (sb, spec, { stdin, stream = null, root = false } = {}) {
    this.id = String(++lastId)
    this.spec = spec
    Object.defineProperty(this, 'sandbox', { value: sb, enumerable: false })
    Object.defineProperty(this, '_stdin', { value: stdin, enumerable: false })
    Object.defineProperty(this, '_stream', { value: stream, enumerable: false })
    Object.defineProperty(this, '_root', { value: root, enumerable: false })
    this.startedAt = null
    this.result = null
    Object.defineProperty(this, '_done', { value: null, enumerable: false, writable: true })
  }

  // Starts the command on the provider's transport (once).
  start () {
    if (this._done === null) {
      this.startedAt = Date.now()
      this._done = this._execute().then((r) => {
        this.result = { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, durationMs: Date.now() - this.startedAt }
        return this.result
      })
    }
    return this
  }

  // { stdout, stderr, exitCode, durationMs } once it has ended.
  wait () {
    return this.start()._done
  }

  // Streamed output is decoded chunk by chunk and the result's stdout/stderr
  // are exactly what the callbacks were given.  maxOutputBytes is the
  // transport's to enforce (in C for SSH), as the bytes arrive.
  async _execute () {
    const sb = this.sandbox
    const stream = this._stream
    const stdin = this._stdin
    const transport = this._root ? asRoot : sb._ctx.transport
    if (!stream) {
      const r = await transport.exec(sb, this.spec, { stdin })
      return { stdout: text(r.stdout), stderr: text(r.stderr), exitCode: r.exitCode }
    }
    // A transport streams strings and returns the whole output as well (SSH:
    // decoded natively, characters whole, the whole kept outside the JS
    // heap), or streams Buffers and returns nothing (the exec transport):
    // those are decoded here and kept, appended with + (a rope: nothing
    // copied).
    const dec = [null, new StringDecoder('utf8'), new StringDecoder('utf8')]
    const kept = [null, '', '']
    let bytes = false
    const cbs = [null, stream.onStdout, stream.onStderr]
    const emit = (i, s) => {
      if (s !== '' && typeof cbs[i] === 'function') cbs[i](s)
    }
    const keep = (i, s) => {
      kept[i] += s
      emit(i, s)
    }
    const onChunk = (i, chunk) => {
      if (typeof chunk === 'string') return emit(i, chunk)
      bytes = true
      keep(i, dec[i].write(chunk))
    }
    const r = await transport.exec(sb, this.spec, { stdin, onChunk })
    if (!bytes) return { stdout: text(r.stdout), stderr: text(r.stderr), exitCode: r.exitCode }
    keep(1, dec[1].end())
    keep(2, dec[2].end())
    return { stdout: kept[1], stderr: kept[2], exitCode: r.exitCode }
  }
}

module.exports = { Process }
