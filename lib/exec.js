'use strict'
// Running commands and code in a sandbox: their options checked and made
// into a command spec, each run as a Process (lib/process.js) on the
// provider's transport (lib/transport/).
const { invalidArg } = require('./errors')
const { Process } = require('./process')

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

// The rule for environment variable names (runCommand's env, create's envs).
function validEnvName (name) {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(name)
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
      if (!validEnvName(k)) throw invalidArg(`runCommand: invalid environment variable name ${JSON.stringify(k)}`)
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

// user: 'root' for the developer's own setup steps (apt-get), through the
// Machines API exec endpoint; the sandbox user (or no user) otherwise.
function asRoot (sb, o) {
  if (!o || o.user === undefined || o.user === sb._ctx.config.sshUser) return false
  if (o.user !== 'root') throw invalidArg(`runCommand: user must be 'root' or ${JSON.stringify(sb._ctx.config.sshUser)}`)
  if (o.background === true) throw invalidArg('runCommand: user \'root\' cannot be used with background')
  return true
}

// runCommand and streamCommand share this; stream carries the
// onStdout/onStderr callbacks (null: the whole output at the end).
async function run (sb, command, options, stream) {
  const spec = commandSpec(command, options)
  if (stream && spec.background) throw invalidArg('runCommand: streaming callbacks cannot be used with background')
  return new Process(sb, spec, { stream, root: asRoot(sb, options) }).wait()
}

async function runCode (sb, code, runtime) {
  if (typeof code !== 'string' && !Buffer.isBuffer(code)) throw invalidArg('runCode: code must be a string')
  const text = Buffer.isBuffer(code) ? code.toString('utf8') : code
  const language = runtime === undefined || runtime === null ? detectRuntime(text) : String(runtime).toLowerCase()
  const argv = INTERPRETERS[language]
  if (!argv) throw invalidArg(`runCode: unsupported runtime ${JSON.stringify(runtime)} (use 'python' or 'node')`)
  // The code is the interpreter's stdin: data, never part of a command line.
  const r = await new Process(sb, { argv }, { stdin: code }).wait()
  const durationMs = r.durationMs
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

module.exports = { run, runCode, detectRuntime, validEnvName, commandSpec }
