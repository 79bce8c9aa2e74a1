'use strict'
// Running commands and code in a sandbox: over SSH (the default) or through
// the Machines API exec endpoint.  Output stays bytes until here; it is
// decoded as UTF-8 at this edge, with a StringDecoder per stream so that a
// character split across chunks is never mangled.
const { StringDecoder } = require('string_decoder')
const native = require('./native')
const { flyError, invalidArg } = require('./errors')

// The documented guess when runCode gets no runtime: a shebang decides;
// otherwise the runtime with more telltale constructs wins (ties go to
// Python, as in ComputeSDK's old heuristic, and no hint at all to Node).
const PY_HINTS = [/\bprint\(/, /^\s*(import|from)\s+[\w.]+/m, /^\s*def\s+\w+\(/m, /\bsys\./, /\bf["']/,
  /^\s*raise\s/m, /\belif\b/, /\blambda\b/, /:\s*$/m, /\bNone\b/, /\bself\./, /__\w+__/]
const NODE_HINTS = [/\bconsole\.\w+\(/, /\brequire\(/, /^\s*(const|let|var)\s/m, /=>/, /\bfunction\b/,
  /\bprocess\./, /;\s*$/m, /\bawait\s/, /\bundefined\b/, /===/, /\bmodule\.exports\b/]

function detectRuntime (code) {
  if (/^#!.*python/.test(code)) return 'python'
  if (/^#!.*node/.test(code)) return 'node'
  const score = (hints) => hints.reduce((n, re) => n + (re.test(code) ? 1 : 0), 0)
  const py = score(PY_HINTS)
  const js = score(NODE_HINTS)
  return py > 0 && py >= js ? 'python' : 'node'
}

const INTERPRETERS = {
  python: ['python3', '-'],
  python3: ['python3', '-'],
  node: ['node', '-'],
  javascript: ['node', '-'],
  js: ['node', '-']
}

function commandSpec (command, options) {
  if (typeof command !== 'string') throw invalidArg('runCommand: command must be a string')
  const o = options || {}
  const spec = {}
  if (Array.isArray(o.args)) {
    if (command === '') throw invalidArg('runCommand: command must not be empty')
    spec.argv = [command, ...o.args.map((a) => {
      if (typeof a !== 'string') throw invalidArg('runCommand: every argument must be a string')
      return a
    })]
  } else {
    spec.command = command
  }
  if (o.cwd !== undefined) {
    if (typeof o.cwd !== 'string' || o.cwd === '') throw invalidArg('runCommand: cwd must be a non-empty string')
    spec.cwd = o.cwd
  }
  if (o.env !== undefined) {
    if (o.env === null || typeof o.env !== 'object') throw invalidArg('runCommand: env must be an object of strings')
    spec.env = {}
    for (const [k, v] of Object.entries(o.env)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw invalidArg(`runCommand: invalid environment variable name ${JSON.stringify(k)}`)
      if (v === undefined || v === null) continue
      spec.env[k] = String(v)
    }
  }
  if (o.timeout !== undefined && o.timeout !== null && o.timeout !== 0) {
    if (typeof o.timeout !== 'number' || !(o.timeout > 0) || !Number.isFinite(o.timeout)) {
      throw invalidArg('runCommand: timeout must be a positive number of milliseconds')
    }
    spec.timeoutMs = Math.ceil(o.timeout)
  }
  if (o.background !== undefined) spec.background = o.background === true
  return spec
}

async function execSsh (sb, spec, stdin, stream) {
  const ctx = sb._ctx
  const req = { ...spec, target: sb._target(), maxOutputBytes: ctx.maxOutputBytes }
  if (stdin !== undefined) req.stdin = stdin
  if (!stream) {
    const r = await sb._ssh(() => native.sshExec(req))
    return { stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8'), exitCode: r.exitCode }
  }
  const dec = [null, new StringDecoder('utf8'), new StringDecoder('utf8')]
  const parts = [null, [], []]
  const cbs = [null, stream.onStdout, stream.onStderr]
  let total = 0
  const emit = (i, text) => {
    if (text === '') return
    parts[i].push(text)
    if (typeof cbs[i] === 'function') cbs[i](text)
  }
  req.onChunk = (i, chunk) => {
    total += chunk.length
    if (total <= ctx.maxOutputBytes) emit(i, dec[i].write(chunk))
  }
  const r = await sb._ssh(() => native.sshExec(req))
  emit(1, dec[1].end())
  emit(2, dec[2].end())
  if (total > ctx.maxOutputBytes) {
    throw flyError('ERR_OUTPUT_LIMIT', `command output exceeded maxOutputBytes (${ctx.maxOutputBytes} bytes)`)
  }
  return { stdout: parts[1].join(''), stderr: parts[2].join(''), exitCode: r.exitCode }
}

// The exec endpoint runs as the machine's root; drop to the sandbox user
// (as SSH would log in), so files and processes belong to the same user
// whichever transport made them.  Without runuser or the user there is no
// safe way to do that: fail (exit 125 with a marker) rather than run as root.
const NO_USER = 'computesdk-exec:'
const AS_USER = `command -v runuser >/dev/null 2>&1 || { echo "${NO_USER} runuser is missing in the image" >&2; exit 125; }; ` +
  `id -u "$1" >/dev/null 2>&1 || { echo "${NO_USER} no user $1 in the image" >&2; exit 125; }; ` +
  'exec runuser -u "$1" -- sh -c "$2"'

const SIGNALS = { HUP: 1, INT: 2, QUIT: 3, ILL: 4, TRAP: 5, ABRT: 6, BUS: 7, FPE: 8, KILL: 9, USR1: 10, SEGV: 11, USR2: 12, PIPE: 13, ALRM: 14, TERM: 15 }

// Runs a command spec through POST /machines/{id}/exec; the same result
// shape as over SSH.  Used by the exec transport for commands and files.
async function execApi (sb, spec, stdin) {
  const cmd = native.buildCommand(spec)
  const secs = spec.timeoutMs ? Math.ceil(spec.timeoutMs / 1000) + 5 : 60
  const body = { command: ['sh', '-c', AS_USER, 'sh', sb._ctx.sshUser, cmd], timeout: secs }
  if (stdin !== undefined) body.stdin = Buffer.isBuffer(stdin) ? stdin.toString('utf8') : stdin
  const r = await sb._api('machine.exec', { body, timeoutMs: (secs + 15) * 1000 })
  const b = r.body || {}
  let exitCode = typeof b.exit_code === 'number' ? b.exit_code : 0
  if (b.exit_signal) {
    const n = Number(b.exit_signal) || SIGNALS[String(b.exit_signal).replace(/^SIG/, '')] || 0
    exitCode = 128 + n
  }
  if (exitCode === 125 && typeof b.stderr === 'string' && b.stderr.startsWith(NO_USER)) {
    throw flyError('FLY_EXEC_NO_USER', `exec transport: ${b.stderr.slice(NO_USER.length).trim()}; ` +
      `commands are never run as root (sandbox ${sb.sandboxId}, user ${sb._ctx.sshUser})`)
  }
  return { stdout: b.stdout || '', stderr: b.stderr || '', exitCode }
}

// runCommand and streamCommand share this; stream carries the callbacks.
async function run (sb, command, options, stream) {
  const spec = commandSpec(command, options)
  if (stream && spec.background) throw invalidArg('runCommand: streaming callbacks cannot be used with background')
  const started = Date.now()
  let r
  if (sb._ctx.transport === 'exec') {
    r = await execApi(sb, spec)
    if (stream) {
      if (r.stdout && typeof stream.onStdout === 'function') stream.onStdout(r.stdout)
      if (r.stderr && typeof stream.onStderr === 'function') stream.onStderr(r.stderr)
    }
  } else {
    r = await execSsh(sb, spec, undefined, stream)
  }
  return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, durationMs: Date.now() - started }
}

async function runCode (sb, code, runtime) {
  if (typeof code !== 'string' && !Buffer.isBuffer(code)) throw invalidArg('runCode: code must be a string')
  const text = Buffer.isBuffer(code) ? code.toString('utf8') : code
  const language = runtime === undefined || runtime === null ? detectRuntime(text) : String(runtime).toLowerCase()
  const argv = INTERPRETERS[language]
  if (!argv) throw invalidArg(`runCode: unsupported runtime ${JSON.stringify(runtime)} (use 'python' or 'node')`)
  const spec = { argv }
  const started = Date.now()
  // The code is the interpreter's stdin: data, never part of a command line.
  const r = sb._ctx.transport === 'exec'
    ? await execApi(sb, spec, code)
    : await execSsh(sb, spec, code)
  const durationMs = Date.now() - started
  const lang = argv[0] === 'node' ? 'node' : 'python'
  return {
    stdout: r.stdout,
    stderr: r.stderr,
    exitCode: r.exitCode,
    durationMs,
    output: r.exitCode === 0 ? r.stdout : r.stdout + r.stderr,
    language: lang,
    executionTime: durationMs,
    sandboxId: sb.sandboxId,
    provider: 'fly'
  }
}

module.exports = { run, runCode, detectRuntime, execApi }
