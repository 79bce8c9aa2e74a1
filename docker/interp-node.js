'use strict'
// A Node context of the code interpreter: one long-lived process, started
// by the driver (/opt/computesdk/interp) as the sandbox user, serving one
// cell at a time on a unix socket in the context's 0700 directory.
//
// Cells run as scripts in this process's global context, so a top-level
// const, let, function or class stays for the next cell, as in node's REPL;
// a cell with top-level await is rewritten by the REPL's own transform
// (internal/repl/await, hence --expose-internals) into an async function
// whose declarations are hoisted to the script.  The reply is the driver's
// NDJSON: stdout/stderr as written, the last expression's value as a
// result (util.inspect), an error, then {"type":"end"}.  SIGINT (the
// driver's interrupt) stops a running script (breakOnSigint) or abandons an
// awaited promise; either way the globals stay.
const net = require('net')
const vm = require('vm')
const util = require('util')
const path = require('path')
const { createRequire } = require('module')

const sock = process.argv[2]
let processTopLevelAwait = null
try {
  processTopLevelAwait = require('internal/repl/await').processTopLevelAwait
} catch (_) { /* without it, a cell with top-level await is a SyntaxError */ }

// What cells see besides the builtins: require and module as in the REPL,
// relative to the context's working directory.
globalThis.require = createRequire(path.join(process.cwd(), '<cell>'))
globalThis.module = { exports: {}, id: '<cell>', filename: '<cell>', loaded: false }
globalThis.exports = globalThis.module.exports

let current = null // the connection whose cell runs now
const send = (obj) => { if (current && !current.destroyed) current.write(JSON.stringify(obj) + '\n') }
for (const [stream, name] of [[process.stdout, 'stdout'], [process.stderr, 'stderr']]) {
  const write = stream.write.bind(stream)
  stream.write = (chunk, enc, cb) => {
    if (!current) return write(chunk, enc, cb)
    send({ type: name, text: Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk) })
    if (typeof enc === 'function') enc()
    else if (typeof cb === 'function') cb()
    return true
  }
}
// display(value): a result that is not the cell's value (E2B's display).
// A string is shown as it is, a mime bundle ({ 'text/html': ... }) as its
// formats, anything else inspected.
globalThis.display = (value) => {
  const isBundle = value && typeof value === 'object' && Object.keys(value).length > 0 &&
    Object.keys(value).every((k) => /^[a-z]+\/[\w.+-]+$/.test(k))
  const data = isBundle ? value : { 'text/plain': typeof value === 'string' ? value : util.inspect(value) }
  send({ type: 'result', data, isMain: false })
}

let interrupt = null
process.on('SIGINT', () => { if (interrupt) interrupt() })
// Errors of callbacks after their cell: reported on stderr, never fatal.
process.on('uncaughtException', (e) => process.stderr.write(`${e && e.stack ? e.stack : e}\n`))
process.on('unhandledRejection', (e) => process.stderr.write(`Unhandled rejection: ${e && e.stack ? e.stack : e}\n`))

// A stack without this kernel's frames (those from the vm call on).
const trim = (stack) => {
  const lines = stack.split('\n')
  const i = lines.findIndex((l) => /\(node:vm:|sigintHandlersWrap/.test(l))
  return (i > 0 ? lines.slice(0, i) : lines).join('\n')
}

async function runCell (code) {
  let wrapped = null
  if (processTopLevelAwait && /\bawait\b/.test(code)) {
    try { wrapped = processTopLevelAwait(code) } catch (_) { wrapped = null }
  }
  const opts = { filename: 'cell', breakOnSigint: true, displayErrors: false }
  if (!wrapped) return { value: vm.runInThisContext(code, opts) }
  const pending = vm.runInThisContext(wrapped, opts)
  const r = await new Promise((resolve, reject) => {
    interrupt = () => reject(Object.assign(new Error('interrupted'), { name: 'Interrupted' }))
    pending.then(resolve, reject)
  }).finally(() => { interrupt = null })
  return { value: r ? r.value : undefined }
}

const queue = []
let busy = false
async function next () {
  if (busy || queue.length === 0) return
  busy = true
  const { conn, code } = queue.shift()
  current = conn
  send({ type: 'start' }) // the driver's timeout counts from here
  let status = 'ok'
  try {
    const { value } = await runCell(code)
    // The cell's value as the REPL shows it.
    if (value !== undefined) send({ type: 'result', data: { 'text/plain': util.inspect(value) }, isMain: true })
  } catch (e) {
    status = 'error'
    const isErr = e instanceof Error || (e && typeof e === 'object' && 'stack' in e)
    send({
      type: 'error',
      name: isErr ? e.name : 'Error',
      value: isErr ? e.message : util.inspect(e),
      traceback: isErr && e.stack ? trim(String(e.stack)) : ''
    })
  }
  send({ type: 'end', status })
  current = null
  conn.end()
  busy = false
  next()
}

net.createServer((conn) => {
  let buf = ''
  conn.setEncoding('utf8')
  conn.on('error', () => {})
  conn.on('data', (d) => {
    buf += d
    const i = buf.indexOf('\n')
    if (i < 0) return
    conn.removeAllListeners('data')
    let code = ''
    try { code = JSON.parse(buf.slice(0, i)).code } catch (_) { conn.destroy(); return }
    queue.push({ conn, code: String(code) })
    next()
  })
}).listen(sock)
