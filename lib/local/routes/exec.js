'use strict'
// POST /v1/apps/:app/machines/:id/exec: run a command inside a started
// machine and answer with its exit code, signal, stdout and stderr
// (buffered; default timeout 30 s, then 408).
const { E, HttpError, PAYLOAD_BODY_LIMIT, isObject, liveMachine, checkLease } = require('../http')

const DEFAULT_TIMEOUT_S = 30

/* Split the deprecated `cmd` string as a shell would, without expansion. */
function splitCommand (s) {
  const out = []
  let cur = ''
  let inWord = false
  let quote = null
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]
    if (quote) {
      if (ch === quote) quote = null
      else if (ch === '\\' && quote === '"' && i + 1 < s.length && '"\\$`'.includes(s[i + 1])) cur += s[++i]
      else cur += ch
    } else if (ch === '"' || ch === "'") {
      quote = ch
      inWord = true
    } else if (ch === '\\' && i + 1 < s.length) {
      cur += s[++i]
      inWord = true
    } else if (/\s/.test(ch)) {
      if (inWord) out.push(cur)
      cur = ''
      inWord = false
    } else {
      cur += ch
      inWord = true
    }
  }
  if (quote) throw E.bad('unterminated quote in cmd')
  if (inWord) out.push(cur)
  return out
}

function commandOf (body) {
  if (Array.isArray(body.command) && body.command.length) {
    if (!body.command.every((x) => typeof x === 'string')) throw E.bad('command must be an array of strings')
    return body.command
  }
  if (typeof body.cmd === 'string' && body.cmd.trim()) return splitCommand(body.cmd)
  throw E.bad('command is required')
}

function routes (route, { store }) {
  route('POST', '/v1/apps/:app/machines/:id/exec', async ({ req, params, body }) => {
    const m = liveMachine(store, params.app, params.id)
    if (!isObject(body)) throw E.bad('invalid request body')
    checkLease(m, req)
    const argv = commandOf(body)
    if (body.stdin != null && typeof body.stdin !== 'string') throw E.bad('stdin must be a string')
    let timeoutS = DEFAULT_TIMEOUT_S
    if (body.timeout != null) {
      if (!(Number.isInteger(body.timeout) && body.timeout > 0)) throw E.bad('timeout must be a positive number of seconds')
      timeoutS = body.timeout
    }
    if (m.state !== 'started' || !m.run || !m.run.started) {
      throw E.precondition(`machine ${m.id} is not started (currently ${m.state})`)
    }
    const r = await m.run.exec(argv, { env: m.env(), stdin: body.stdin, timeoutMs: timeoutS * 1000 })
    if (r.timedOut) throw new HttpError(408, 'deadline_exceeded: command timed out')
    return [200, { exit_code: r.exit_code, exit_signal: r.exit_signal, stdout: r.stdout, stderr: r.stderr }]
  }, { maxBody: PAYLOAD_BODY_LIMIT })
}

module.exports = { routes, splitCommand }
