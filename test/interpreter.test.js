'use strict'
// The code interpreter (lib/interpreter.js, docker/interp): contexts that
// keep their state, rich results, interrupts that keep state, crashes,
// limits and pause/resume, against fly-local machines with real IPython
// and node kernels.
const test = require('node:test')
const assert = require('node:assert/strict')
const { startLocal, provider, rejects } = require('./helpers/fly')

let srv, p, sb
test.before(async () => {
  srv = await startLocal()
  p = provider(srv, { maxContexts: 6 })
  sb = await p.sandbox.create()
})
test.after(async () => {
  if (sb) await sb.destroy()
  if (srv) await srv.stop()
})

test('python: state lasts across calls; the last expression is a result; output streams', async () => {
  const first = await sb.runCode('x = 41\nprint("set")', { language: 'python' })
  assert.equal(first.error, null)
  assert.equal(first.stdout, 'set\n')
  assert.deepEqual(first.results, [])
  const streamed = []
  const results = []
  const r = await sb.runCode('x + 1', { language: 'python', onStdout: (s) => streamed.push(s), onResult: (x) => results.push(x) })
  assert.equal(r.error, null)
  assert.equal(r.exitCode, 0)
  assert.equal(r.results.length, 1)
  assert.equal(r.results[0].text, '42')
  assert.equal(r.results[0].isMainResult, true)
  assert.equal(r.text, '42')
  assert.deepEqual(results, r.results)
  assert.equal(r.language, 'python')
  assert.equal(r.context, 'default-python')
  assert.equal(r.provider, 'fly')
  assert.equal(r.sandboxId, sb.sandboxId)
  // A function defined in one call, used in the next.
  await sb.runCode('def double(n):\n    return 2 * n', { language: 'python' })
  const d = await sb.runCode('print(double(21)); import sys; print("e", file=sys.stderr)', { language: 'python', onStdout: (s) => streamed.push(s) })
  assert.equal(d.stdout, '42\n')
  assert.equal(d.stderr, 'e\n')
  assert.deepEqual(d.logs, { stdout: ['42\n'], stderr: ['e\n'] })
  assert.deepEqual(streamed, ['42\n'])
})

test('python: a matplotlib figure is a PNG of the figure\'s size, a DataFrame is HTML and text', async () => {
  const ctx = await sb.codeInterpreter.createContext({ language: 'python' })
  const r = await sb.runCode([
    '%config InlineBackend.print_figure_kwargs = {"bbox_inches": None}',
    'import matplotlib.pyplot as plt',
    'fig = plt.figure(figsize=(4, 3), dpi=50)',
    'plt.plot([1, 2, 3], [3, 1, 2])',
    'plt.show()'
  ].join('\n'), { context: ctx })
  assert.equal(r.error, null, r.error && r.error.traceback)
  const pngs = r.results.filter((x) => x.png)
  assert.equal(pngs.length, 1)
  const png = Buffer.from(pngs[0].png, 'base64')
  assert.deepEqual(png.subarray(0, 8), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))
  assert.equal(png.subarray(12, 16).toString('latin1'), 'IHDR')
  assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20)], [200, 150])
  assert.match(pngs[0].text, /Figure/)

  const df = await sb.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": ["x", "y"]})', { context: ctx })
  assert.equal(df.error, null, df.error && df.error.traceback)
  assert.equal(df.results.length, 1)
  assert.match(df.results[0].html, /<table[\s\S]*<th>a<\/th>[\s\S]*<td>x<\/td>/)
  assert.match(df.results[0].text, /a\s+b\n0\s+1\s+x\n1\s+2\s+y/)

  // display() of several formats: each arrives, in order, streamed.
  const seen = []
  const many = await sb.runCode([
    'from IPython.display import display, Markdown, HTML, Latex, JSON',
    'display(Markdown("**hi**")); display(HTML("<b>hi</b>")); display(Latex(r"$x^2$")); display(JSON({"k": 1}))'
  ].join('\n'), { context: ctx, onResult: (x) => seen.push(x) })
  assert.equal(many.error, null, many.error && many.error.traceback)
  assert.deepEqual(many.results.map((x) => x.markdown || x.html || x.latex || x.json), ['**hi**', '<b>hi</b>', '$x^2$', { k: 1 }])
  assert.equal(seen.length, 4)
  assert.ok(many.results.every((x) => x.isMainResult === false))
  await sb.codeInterpreter.removeContext(ctx)
})

test('python: an exception is a result with name, value and traceback; the context lives on', async () => {
  const ctx = await sb.codeInterpreter.createContext({ language: 'python' })
  await sb.runCode('kept = "still here"', { context: ctx })
  const r = await sb.runCode('def f():\n    raise ValueError("boom")\nf()', { context: ctx })
  assert.equal(r.exitCode, 1)
  assert.equal(r.error.name, 'ValueError')
  assert.equal(r.error.value, 'boom')
  assert.match(r.error.traceback, /ValueError/)
  assert.match(r.error.traceback, /in f\b/)
  assert.doesNotMatch(r.error.traceback, /\x1b\[/) // no terminal colours
  const after = await sb.runCode('kept', { context: ctx })
  assert.equal(after.error, null)
  assert.equal(after.text, "'still here'")
  await sb.codeInterpreter.removeContext(ctx.id)
})

test('python: a timeout interrupts the cell (KeyboardInterrupt) and the variables survive', async () => {
  const ctx = await sb.codeInterpreter.createContext({ language: 'python' })
  await sb.runCode('before = 7\nprogress = 0', { context: ctx })
  const t0 = Date.now()
  const r = await sb.runCode('while True:\n    progress += 1', { context: ctx, timeout: 1000 })
  const took = Date.now() - t0
  assert.equal(r.timedOut, true)
  assert.equal(r.error.name, 'TimeoutError')
  assert.match(r.error.traceback, /KeyboardInterrupt/)
  assert.ok(took >= 1000, `returned after ${took} ms`)
  const next = await sb.runCode('(before, progress > 0)', { context: ctx })
  assert.equal(next.error, null)
  assert.equal(next.text, '(7, True)')
  assert.equal(next.restarted, false)
  await sb.codeInterpreter.removeContext(ctx)
})

test('a call queued behind another cell of its context: its timeout counts from its own start', async () => {
  const ctx = await sb.codeInterpreter.createContext({ language: 'python' })
  let started
  const running = new Promise((resolve) => { started = resolve })
  const first = sb.runCode('import time\nprint("started", flush=True)\ntime.sleep(3)\na = 1', { context: ctx, onStdout: started })
  await running
  const second = await sb.runCode('b = 2\nb', { context: ctx, timeout: 1000 })
  const one = await first
  assert.equal(one.error, null, one.error && one.error.traceback)
  assert.equal(second.error, null, second.error && second.error.traceback)
  assert.equal(second.text, '2')
  assert.equal((await sb.runCode('a + b', { context: ctx })).text, '3')
  await sb.codeInterpreter.removeContext(ctx)
})

test('contexts: separate state, listed, restarted (state lost), removed; cwd and env', async () => {
  const ci = sb.codeInterpreter
  await sb.runCommand('mkdir -p /tmp/ctx-a')
  const a = await ci.createContext({ language: 'python', cwd: '/tmp/ctx-a', env: { CTX_NAME: 'alpha' } })
  const b = await ci.createContext({ language: 'python' })
  assert.deepEqual(Object.keys(a).sort(), ['cwd', 'id', 'language'])
  assert.equal(a.cwd, '/tmp/ctx-a')
  assert.notEqual(a.id, b.id)
  await sb.runCode('v = "in a"', { context: a })
  const inB = await sb.runCode('v', { context: b })
  assert.equal(inB.error.name, 'NameError')
  const where = await sb.runCode('import os\n(os.getcwd(), os.environ["CTX_NAME"])', { context: a })
  assert.equal(where.text, "('/tmp/ctx-a', 'alpha')")
  const ids = (await ci.listContexts()).map((c) => c.id)
  assert.ok(ids.includes(a.id) && ids.includes(b.id))
  const again = await ci.restartContext(a)
  assert.equal(again.id, a.id)
  const lost = await sb.runCode('v', { context: a })
  assert.equal(lost.error.name, 'NameError')
  await ci.removeContext(a)
  await ci.removeContext(b)
  const left = (await ci.listContexts()).map((c) => c.id)
  assert.ok(!left.includes(a.id) && !left.includes(b.id))
  const gone = await rejects(sb.runCode('1', { context: a }))
  assert.equal(gone.code, 'ERR_CONTEXT_NOT_FOUND')
  assert.equal((await rejects(ci.removeContext(a))).code, 'ERR_CONTEXT_NOT_FOUND')
  assert.equal((await rejects(ci.createContext({ language: 'cobol' }))).code, 'ERR_INVALID_ARG')
  assert.equal((await rejects(sb.runCode('1', { context: '../x' }))).code, 'ERR_INVALID_ARG')
})

test('contexts: at most maxContexts, a typed error beyond', async () => {
  const ci = sb.codeInterpreter
  const have = (await ci.listContexts()).length
  const made = []
  for (let i = have; i < 6; i++) made.push(await ci.createContext({ language: 'node' }))
  const err = await rejects(ci.createContext({ language: 'node' }))
  assert.equal(err.code, 'ERR_CONTEXT_LIMIT')
  for (const c of made) await ci.removeContext(c)
})

test('node: a const lasts across calls, top-level await, errors and timeouts as python', async () => {
  const ctx = await sb.codeInterpreter.createContext({ language: 'node' })
  assert.equal(ctx.language, 'node')
  const a = await sb.runCode('const base = await new Promise((resolve) => setTimeout(() => resolve(41), 10))\nconsole.log("awaited", base)', { context: ctx })
  assert.equal(a.error, null, a.error && a.error.traceback)
  assert.equal(a.stdout, 'awaited 41\n')
  const b = await sb.runCode('base + 1', { context: ctx })
  assert.equal(b.text, '42')
  assert.equal(b.results[0].isMainResult, true)
  assert.equal(b.language, 'node')
  await sb.runCode('const fixed = 1', { context: ctx })
  const re = await sb.runCode('fixed = 0', { context: ctx })
  assert.equal(re.error.name, 'TypeError') // assignment to a constant
  assert.equal((await sb.runCode('fixed', { context: ctx })).text, '1')
  const e = await sb.runCode('function boom () { throw new RangeError("nope") }\nboom()', { context: ctx })
  assert.deepEqual([e.error.name, e.error.value], ['RangeError', 'nope'])
  assert.match(e.error.traceback, /at boom/)
  const spin = await sb.runCode('let spins = 0\nwhile (true) spins++', { context: ctx, timeout: 1000 })
  assert.equal(spin.timedOut, true)
  assert.equal(spin.error.name, 'TimeoutError')
  const after = await sb.runCode('[base, spins > 0, typeof boom]', { context: ctx })
  assert.equal(after.text, "[ 41, true, 'function' ]")
  const shown = await sb.runCode('display("plain"); display({ "text/html": "<b>b</b>", "text/plain": "b" })', { context: ctx })
  assert.deepEqual(shown.results.map((x) => [x.text, x.html, x.isMainResult]), [['plain', undefined, false], ['b', '<b>b</b>', false]])
  // The default node context is another one.
  const dflt = await sb.runCode('typeof base', { language: 'node' })
  assert.equal(dflt.text, "'undefined'")
  await sb.codeInterpreter.removeContext(ctx)
})

test('a context that crashes reports it and restarts (state lost) on the next call', async () => {
  const ctx = await sb.codeInterpreter.createContext({ language: 'python' })
  await sb.runCode('gone = 1', { context: ctx })
  const crash = await sb.runCode('import os\nos._exit(3)', { context: ctx })
  assert.equal(crash.error.name, 'ContextCrashed')
  assert.equal(crash.exitCode, 1)
  const next = await sb.runCode('1 + 1', { context: ctx })
  assert.equal(next.restarted, true)
  assert.equal(next.text, '2')
  assert.equal((await sb.runCode('gone', { context: ctx })).error.name, 'NameError')
  const seg = await sb.runCode('import ctypes\nctypes.string_at(0)', { context: ctx })
  assert.equal(seg.error.name, 'ContextCrashed')
  assert.equal((await sb.runCode('"ok"', { context: ctx })).text, "'ok'")
  await sb.codeInterpreter.removeContext(ctx)
})

test('output beyond maxOutputBytes is ERR_OUTPUT_LIMIT; the context keeps its state', async () => {
  const small = provider(srv, { maxOutputBytes: 256 * 1024 })
  const same = await small.sandbox.getById(sb.sandboxId)
  const ctx = await same.codeInterpreter.createContext({ language: 'python' })
  await same.runCode('n = 5', { context: ctx })
  // 4 MB in 4000 lines: a bounded cell (an unbounded tight print loop can
  // exhaust the machine's memory inside ipykernel, which buffers it).
  const err = await rejects(same.runCode('for i in range(4000):\n    print("x" * 1000)', { context: ctx }))
  assert.equal(err.code, 'ERR_OUTPUT_LIMIT')
  assert.equal((await same.runCode('n', { context: ctx })).text, '5')
  await same.codeInterpreter.removeContext(ctx)
})

test('the seed\'s runCode(code, runtime) stays fresh per call, apart from the contexts', async () => {
  await sb.runCode('seed_var = 1', { language: 'python' })
  const fresh = await sb.runCode('print(seed_var)', 'python')
  assert.equal(fresh.exitCode, 1)
  assert.match(fresh.stderr, /NameError/)
  assert.equal((await sb.runCode('seed_var', { language: 'python' })).text, '1')
})

test('the exec transport refuses contexts with a typed error', async () => {
  const viaExec = provider(srv, { transport: 'exec' })
  const same = await viaExec.sandbox.getById(sb.sandboxId)
  assert.equal((await rejects(same.runCode('1', { language: 'python' }))).code, 'ERR_INTERPRETER_TRANSPORT')
  assert.equal((await rejects(same.codeInterpreter.listContexts())).code, 'ERR_INTERPRETER_TRANSPORT')
  // The seed's form still works there.
  assert.equal((await same.runCode('print(6 * 7)', 'python')).stdout, '42\n')
})

test('contexts and their state survive pause() and resume()', async () => {
  const py = await sb.codeInterpreter.createContext({ language: 'python' })
  const js = await sb.codeInterpreter.createContext({ language: 'node' })
  await sb.runCode('import numpy as np\narr = np.arange(10)', { context: py })
  await sb.runCode('const kept = { n: 3 }', { context: js })
  await sb.pause()
  assert.equal((await sb.getInfo()).status, 'paused')
  await sb.resume()
  const a = await sb.runCode('int(arr.sum())', { context: py })
  assert.equal(a.text, '45')
  assert.equal(a.restarted, false)
  const b = await sb.runCode('kept.n', { context: js })
  assert.equal(b.text, '3')
  assert.equal(b.restarted, false)
  await sb.codeInterpreter.removeContext(py)
  await sb.codeInterpreter.removeContext(js)
})
