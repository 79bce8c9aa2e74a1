'use strict'
// The code interpreter: contexts whose state lasts from one runCode call to
// the next, and E2B-shaped rich results.
//
// A context is a kernel process in the sandbox, run as the sandbox user (an
// IPython kernel for Python, a node process for Node), started and reached
// by the driver /opt/computesdk/interp (docker/interp) over unix sockets in
// a 0700 directory of that user: no port, no token.  Every call here is one
// run of the driver on the ordinary command channel (a Process, streamed):
// the code goes in on stdin, and newline-delimited JSON comes back (stream
// text, results with their mime bundles, an error, the end), which this
// module turns into onStdout/onStderr/onResult callbacks and the result.
const { flyError, invalidArg } = require('./errors')
const { Process } = require('./process')
const { detectRuntime, validEnvName } = require('./exec')

const DRIVER = '/opt/computesdk/interp'
// The driver's own lines (the end, an error it adds) past the output bound.
const DRIVER_MARGIN = 8192
// How long a kernel may take to start, and a cell to stop once interrupted
// (the driver's START_S and GRACE_S), and slack: the channel's backstop.
const BACKSTOP_MS = 30000 + 5000 + 15000
// The deadline of the context calls (create, list, restart, remove): a
// kernel's start and stop, and slack.
const MANAGE_MS = 30000 + 30000

const LANGUAGES = { python: 'python', python3: 'python', node: 'node', javascript: 'node', js: 'node' }

// The mime types of a result and the fields they become (E2B's names).
const FORMATS = {
  'text/plain': 'text',
  'text/html': 'html',
  'text/markdown': 'markdown',
  'image/svg+xml': 'svg',
  'image/png': 'png',
  'image/jpeg': 'jpeg',
  'application/pdf': 'pdf',
  'text/latex': 'latex',
  'application/json': 'json',
  'application/javascript': 'javascript'
}

function language (value, what) {
  const l = LANGUAGES[String(value).toLowerCase()]
  if (!l) throw invalidArg(`${what}: unsupported language ${JSON.stringify(value)} (use 'python' or 'node')`)
  return l
}

function contextId (context) {
  const id = context && typeof context === 'object' ? context.id : context
  if (typeof id !== 'string' || !/^[A-Za-z0-9-]{1,64}$/.test(id)) {
    throw invalidArg('codeInterpreter: context must be a context (or its id) from createContext')
  }
  return id
}

function refuseExec (sb) {
  if (sb._ctx.config.transport === 'exec') {
    throw flyError('ERR_INTERPRETER_TRANSPORT', 'code interpreter contexts need the SSH transport (their kernels ' +
      'outlive a call and stream their output); the exec transport runs runCode(code, language) fresh per call only')
  }
}

// One run of the driver: argv after its path, stdin, and onLine for each
// JSON message; resolves with the messages' end, or throws the driver's
// typed failure.
async function drive (sb, args, { stdin, onLine, timeoutMs = MANAGE_MS } = {}) {
  refuseExec(sb)
  let buf = ''
  let fatal = null
  let end = null
  const lines = []
  const onStdout = (s) => {
    buf += s
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      if (line === '') continue
      let msg
      try { msg = JSON.parse(line) } catch (_) { continue }
      if (msg.type === 'fatal') fatal = msg
      else if (msg.type === 'end') end = msg
      else if (onLine) onLine(msg)
      else lines.push(msg)
    }
  }
  const spec = { argv: [DRIVER, ...args] }
  if (timeoutMs) spec.timeoutMs = timeoutMs
  const r = await new Process(sb, spec, { stdin, stream: { onStdout } }).wait()
  if (r.exitCode === 124 && !fatal && !end) {
    throw flyError('ERR_INTERPRETER_TIMEOUT', `code interpreter: ${args[0]} did not finish in ${timeoutMs} ms`, { sandboxId: sb.sandboxId })
  }
  if (fatal) throw flyError(fatal.code, `code interpreter: ${fatal.message}`, { sandboxId: sb.sandboxId })
  if (r.exitCode !== 0 || (args[0] === 'run' && !end)) {
    const why = r.exitCode === 126 || r.exitCode === 127
      ? `${DRIVER} is missing from the sandbox image (an image older than the code interpreter)`
      : `the driver failed (exit ${r.exitCode}): ${String(r.stderr).trim().split('\n').slice(-3).join(' ')}`
    throw flyError('ERR_INTERPRETER', `code interpreter: ${why}`, { sandboxId: sb.sandboxId, exitCode: r.exitCode })
  }
  return { end, lines }
}

// A result as E2B's: one field per known format, the rest in `extra`.
function toResult (msg) {
  const out = { isMainResult: msg.isMain === true }
  for (const [mime, value] of Object.entries(msg.data || {})) {
    const field = FORMATS[mime]
    if (field) out[field] = value
    else (out.extra || (out.extra = {}))[mime] = value
  }
  return out
}

async function createContext (sb, options) {
  const o = options || {}
  const lang = language(o.language === undefined ? 'python' : o.language, 'createContext')
  if (o.cwd !== undefined && (typeof o.cwd !== 'string' || o.cwd === '')) throw invalidArg('createContext: cwd must be a non-empty string')
  const env = {}
  for (const [k, v] of Object.entries(o.env || {})) {
    if (!validEnvName(k)) throw invalidArg(`createContext: invalid environment variable name ${JSON.stringify(k)}`)
    if (v !== undefined && v !== null) env[k] = String(v)
  }
  const { lines } = await drive(sb, ['create', lang, o.cwd || '-', String(sb._ctx.config.maxContexts)], { stdin: JSON.stringify(env) })
  const c = lines.find((m) => m.type === 'context')
  return { id: c.id, language: c.language, cwd: c.cwd }
}

async function listContexts (sb) {
  const { lines } = await drive(sb, ['list'])
  return lines.find((m) => m.type === 'contexts').contexts
}

async function restartContext (sb, context) {
  const { lines } = await drive(sb, ['restart', contextId(context)])
  const c = lines.find((m) => m.type === 'context')
  return { id: c.id, language: c.language, cwd: c.cwd }
}

async function removeContext (sb, context) {
  await drive(sb, ['remove', contextId(context)])
}

// runCode(code, { language, context, onStdout, onStderr, onResult, timeout }).
async function runCode (sb, code, options) {
  if (typeof code !== 'string' && !Buffer.isBuffer(code)) throw invalidArg('runCode: code must be a string')
  const o = options || {}
  const text = Buffer.isBuffer(code) ? code.toString('utf8') : code
  for (const k of ['onStdout', 'onStderr', 'onResult']) {
    if (o[k] !== undefined && typeof o[k] !== 'function') throw invalidArg(`runCode: ${k} must be a function`)
  }
  let timeout = 0
  if (o.timeout !== undefined && o.timeout !== null && o.timeout !== 0) {
    if (typeof o.timeout !== 'number' || !(o.timeout > 0) || !Number.isFinite(o.timeout)) {
      throw invalidArg('runCode: timeout must be a positive number of milliseconds')
    }
    timeout = Math.ceil(o.timeout)
  }
  let id, lang
  if (o.context !== undefined && o.context !== null) {
    id = contextId(o.context)
    lang = o.context.language ? language(o.context.language, 'runCode') : null
  } else {
    lang = o.language === undefined || o.language === null ? detectRuntime(text) : language(o.language, 'runCode')
    id = `default-${lang}`
  }
  const res = { results: [], logs: { stdout: [], stderr: [] }, error: null, restarted: false }
  const onLine = (m) => {
    if (m.type === 'stdout' || m.type === 'stderr') {
      res.logs[m.type].push(m.text)
      const cb = m.type === 'stdout' ? o.onStdout : o.onStderr
      if (cb) cb(m.text)
    } else if (m.type === 'result') {
      const r = toResult(m)
      res.results.push(r)
      if (o.onResult) o.onResult(r)
    } else if (m.type === 'error') {
      res.error = { name: m.name, value: m.value, traceback: m.traceback }
    } else if (m.type === 'restarted') {
      res.restarted = true
    }
  }
  const max = Math.max(DRIVER_MARGIN, sb._ctx.config.maxOutputBytes - DRIVER_MARGIN)
  const t0 = Date.now()
  const { end } = await drive(sb, ['run', id, lang || 'python', String(timeout), String(max), String(sb._ctx.config.maxContexts)], {
    stdin: code, onLine, timeoutMs: timeout ? timeout + BACKSTOP_MS : 0
  })
  if (end.status === 'output_limit') {
    throw flyError('ERR_OUTPUT_LIMIT', `runCode output exceeded maxOutputBytes (${sb._ctx.config.maxOutputBytes} bytes); ` +
      'the cell was interrupted and the context keeps its state', { sandboxId: sb.sandboxId, context: id })
  }
  const durationMs = Date.now() - t0
  const stdout = res.logs.stdout.join('')
  const stderr = res.logs.stderr.join('')
  const exitCode = res.error ? 1 : 0
  const main = res.results.find((r) => r.isMainResult)
  return {
    results: res.results,
    logs: res.logs,
    error: res.error,
    text: main && main.text !== undefined ? main.text : undefined,
    stdout,
    stderr,
    exitCode,
    // interrupted by its timeout, or its kernel crashed (restarted: this
    // call's context had died since the last one and was started afresh).
    timedOut: end.status === 'interrupted',
    restarted: res.restarted,
    context: id,
    durationMs,
    output: exitCode === 0 ? stdout : stdout + stderr + (res.error.traceback || `${res.error.name}: ${res.error.value}`),
    language: end.language,
    executionTime: durationMs,
    sandboxId: sb.sandboxId,
    provider: 'fly'
  }
}

// sandbox.codeInterpreter
function codeInterpreter (sb) {
  return {
    createContext: (options) => createContext(sb, options),
    listContexts: () => listContexts(sb),
    restartContext: (context) => restartContext(sb, context),
    removeContext: (context) => removeContext(sb, context),
    runCode: (code, options) => runCode(sb, code, options)
  }
}

module.exports = { codeInterpreter, runCode }
