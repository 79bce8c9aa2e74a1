'use strict'
// A machine's console log on the host (<state>/<machine>/console.log): what
// its main process, tini and sshd write to stdout and stderr, kept to the
// last CAP bytes or so: when the file would grow past CAP it becomes
// console.log.1 (the one before is dropped) and a fresh one starts, so a
// machine holds at most two CAP-sized files of the host's disk however
// much it writes.
const fs = require('fs')

const CAP = 8 * 1024 * 1024

class ConsoleLog {
  constructor (file, cap = CAP) {
    this.file = file
    this.cap = cap
    this.fd = fs.openSync(file, 'a', 0o600)
    this.size = fs.fstatSync(this.fd).size
    this.open = 0
  }

  /* Copies a stream (the runtime's stdout or stderr) in; the log closes
     once every stream attached has ended. */
  attach (stream) {
    this.open++
    stream.on('data', (d) => this.write(d))
    stream.on('close', () => { if (--this.open === 0) this.close() })
  }

  write (d) {
    if (this.fd == null) return
    if (this.size + d.length > this.cap) this.rotate()
    /* a single write larger than the whole cap keeps its tail */
    if (d.length > this.cap) d = d.subarray(d.length - this.cap)
    try {
      fs.writeSync(this.fd, d)
      this.size += d.length
    } catch (_) { /* disk full: dropped */ }
  }

  rotate () {
    try {
      fs.closeSync(this.fd)
      fs.renameSync(this.file, `${this.file}.1`)
    } catch (_) { /* gone: start afresh */ }
    this.fd = fs.openSync(this.file, 'w', 0o600)
    this.size = 0
  }

  close () {
    if (this.fd == null) return
    try { fs.closeSync(this.fd) } catch (_) { /* ignore */ }
    this.fd = null
  }
}

module.exports = { ConsoleLog, CAP }
