'use strict'
// filesystem.createReadStream / createWriteStream: Node streams over the
// transport's ranged reads and offset/append writes (SFTP on the SSH
// transport: each piece is one pipelined native call).  Memory is bounded
// whatever the file's size: a read stream holds at most one piece being
// fetched plus the stream's buffer (highWaterMark, one piece by default),
// and asks for the next piece only when the consumer has read the last
// (back-pressure from the consumer to the sandbox); a write stream gathers
// at most one piece and takes no more until that piece is written
// (back-pressure from the sandbox to the producer).
const { Readable, Writable } = require('stream')
const { invalidArg } = require('./errors')

// One piece: what a native call moves at once.  2 MiB keeps the SFTP
// pipeline full (sftp.c reads 4 MiB slices, writes with 1 MiB in flight)
// while bounding memory.
const PIECE = 2 << 20

function rangeOf (options) {
  const o = options || {}
  for (const k of ['start', 'end']) {
    if (o[k] !== undefined && (!Number.isSafeInteger(o[k]) || o[k] < 0)) throw invalidArg(`createReadStream: ${k} must be a non-negative integer`)
  }
  const start = o.start || 0
  // Node's end is inclusive.
  const end = o.end === undefined ? Infinity : o.end + 1
  if (end < start) throw invalidArg('createReadStream: end must not be before start')
  return { start, end }
}

function pieceOf (options) {
  const n = options && options.highWaterMark
  if (n === undefined) return PIECE
  if (!Number.isSafeInteger(n) || n < 1 || n > 64 << 20) throw invalidArg('highWaterMark must be an integer from 1 to 64 MiB')
  return n
}

// read(offset, length) -> Buffer (shorter at the end of the file).
function readStream (read, path, options) {
  const { start, end } = rangeOf(options)
  const piece = pieceOf(options)
  let pos = start
  return new Readable({
    highWaterMark: piece,
    read () {
      const length = Math.min(piece, end - pos)
      if (length <= 0) return this.push(null)
      read(pos, length).then((buf) => {
        pos += buf.length
        if (buf.length > 0) this.push(buf)
        if (buf.length < length || pos >= end) this.push(null)
      }, (err) => this.destroy(err))
    }
  })
}

// write(data, where) writes in place: { truncate: true } (the first piece
// of flags 'w', creating or emptying the file), { offset }, { append }.
function writeStream (write, path, options) {
  const flags = (options && options.flags) || 'w'
  if (flags !== 'w' && flags !== 'a') throw invalidArg("createWriteStream: flags must be 'w' or 'a'")
  const piece = pieceOf(options)
  let parts = []
  let held = 0
  let pos = 0
  let first = true
  const flush = async () => {
    const data = parts.length === 1 ? parts[0] : Buffer.concat(parts, held)
    parts = []
    held = 0
    let where
    if (flags === 'a') where = { append: true }
    else if (first) where = { truncate: true }
    else where = { offset: pos }
    first = false
    await write(data, where)
    pos += data.length
  }
  return new Writable({
    highWaterMark: piece,
    write (chunk, _enc, cb) {
      parts.push(chunk)
      held += chunk.length
      if (held < piece) return cb()
      flush().then(() => cb(), cb)
    },
    final (cb) {
      // An empty stream with 'w' still creates (empties) the file.
      if (held === 0 && !first) return cb()
      flush().then(() => cb(), cb)
    }
  })
}

module.exports = { readStream, writeStream }
