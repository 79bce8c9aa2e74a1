'use strict'
// The process daemon's frames (docker/flyproc.c documents them): requests
// encoded, replies decoded as they stream in.  Header as the executor's:
// u32 length (type + tag + payload), u8 type, u32 tag; big-endian; str =
// u32 length + bytes; u64 = two u32, high first.

const T = {
  START: 0x10, STDIN: 0x11, EOF: 0x12, SIGNAL: 0x13, RESIZE: 0x14, LIST: 0x15, ATTACH: 0x16, DETACH: 0x17,
  OK: 0x90, ERROR: 0x91, STARTED: 0x92, INFO: 0x93, DATA: 0x94, EXIT: 0x95
}
const F = { SHELL: 1, PTY: 2, BACKGROUND: 4, STDIN: 8 }
// The largest reply frame the daemon sends is a DATA of 64 KiB or an INFO
// with a 1 KiB command; anything far larger is a broken stream.
const MAX_REPLY = 1 << 20

class Writer {
  constructor () {
    this.parts = []
  }

  u8 (v) { this.parts.push(Buffer.from([v])); return this }
  u32 (v) { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); this.parts.push(b); return this }
  u64 (v) { return this.u32(Math.floor(v / 2 ** 32)).u32(v % 2 ** 32) }
  bytes (b) { this.parts.push(Buffer.isBuffer(b) ? b : Buffer.from(b)); return this }
  str (s) { const b = Buffer.from(s, 'utf8'); return this.u32(b.length).bytes(b) }

  frame (type, tag) {
    const body = Buffer.concat(this.parts)
    const h = Buffer.alloc(9)
    h.writeUInt32BE(5 + body.length)
    h[4] = type
    h.writeUInt32BE(tag >>> 0, 5)
    return Buffer.concat([h, body])
  }
}

class Reader {
  constructor (b) {
    this.b = b
    this.at = 0
  }

  need (n) {
    if (this.at + n > this.b.length) throw new Error('short frame')
  }

  u8 () { this.need(1); return this.b[this.at++] }
  u32 () { this.need(4); const v = this.b.readUInt32BE(this.at); this.at += 4; return v }
  i32 () { this.need(4); const v = this.b.readInt32BE(this.at); this.at += 4; return v }
  u64 () { return this.u32() * 2 ** 32 + this.u32() }
  str () { const n = this.u32(); this.need(n); const s = this.b.toString('utf8', this.at, this.at + n); this.at += n; return s }
  rest () { const r = this.b.subarray(this.at); this.at = this.b.length; return r }
}

// One process's state as INFO carries it.
function readInfo (r) {
  const key = r.str()
  const pid = r.u32()
  const flags = r.u8()
  const running = r.u8() === 1
  const exitCode = r.i32()
  const signal = r.u32()
  const timedOut = r.u8() === 1
  const started = r.u64()
  const ended = r.u64()
  const out = { start: r.u64(), end: r.u64() }
  const err = { start: r.u64(), end: r.u64() }
  const command = r.str()
  return {
    id: key,
    pid,
    command,
    pty: (flags & F.PTY) !== 0,
    background: (flags & F.BACKGROUND) !== 0,
    running,
    exitCode: running ? null : exitCode,
    signal: running || signal === 0 ? null : signal,
    timedOut,
    startedAt: new Date(started),
    endedAt: running ? null : new Date(ended),
    stdout: out,
    stderr: err
  }
}

// Decodes the reply stream: onFrame({ type, tag, r }) per whole frame.
class Decoder {
  constructor (onFrame) {
    this.onFrame = onFrame
    this.buf = Buffer.alloc(0)
  }

  push (chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk
    while (this.buf.length >= 9) {
      const len = this.buf.readUInt32BE(0)
      if (len < 5 || len > MAX_REPLY) throw new Error(`bad frame length ${len}`)
      if (this.buf.length < 4 + len) break
      const type = this.buf[4]
      const tag = this.buf.readUInt32BE(5)
      const body = this.buf.subarray(9, 4 + len)
      this.buf = this.buf.subarray(4 + len)
      this.onFrame({ type, tag, r: new Reader(body) })
    }
  }

  get pending () {
    return this.buf.length
  }
}

module.exports = { T, F, Writer, Reader, Decoder, readInfo }
