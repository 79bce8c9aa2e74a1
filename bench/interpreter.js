#!/usr/bin/env node
'use strict'
// Code interpreter benchmarks against fly-local (root needed), per language:
//   - the first call in a fresh context: createContext (the kernel starts)
//     plus the first runCode;
//   - a warm call in that context (a trivial cell), BENCH_INTERP times (30);
//   - runCode(code, runtime) as the seed has it (a fresh interpreter per
//     call), the same number of times;
//   - a matplotlib figure and a pandas import in a warm Python context.
// Writes Markdown to stdout.
const local = require('../lib/local')
const { fly } = require('..')
const { timeEach: timed, f } = require('./measure')

const N = Number(process.env.BENCH_INTERP || 30)
const FRESH = Number(process.env.BENCH_INTERP_FRESH || 5)

function check (r) {
  if (r.error || r.exitCode !== 0) throw new Error(`cell failed: ${JSON.stringify(r.error || r.stderr)}`)
  return r
}

async function main () {
  const srv = await local.start({ quiet: true })
  const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: `bench-interp-${process.pid}` })
  const rows = []
  try {
    const sb = await p.sandbox.create()
    const ci = sb.codeInterpreter
    for (const [language, cell, seed] of [['python', '1 + 1', 'print(1 + 1)'], ['node', '1 + 1', 'console.log(1 + 1)']]) {
      const first = await timed(FRESH, async () => {
        const ctx = await ci.createContext({ language })
        check(await sb.runCode(cell, { context: ctx }))
        await ci.removeContext(ctx)
      })
      const ctx = await ci.createContext({ language })
      check(await sb.runCode(cell, { context: ctx }))
      const warm = await timed(N, async () => check(await sb.runCode(cell, { context: ctx })))
      const fresh = await timed(N, async () => check(await sb.runCode(seed, language)))
      rows.push([`${language}: createContext + first call (${first.n})`, first])
      rows.push([`${language}: warm call in a context (${warm.n})`, warm])
      rows.push([`${language}: runCode(code, '${language}') today, fresh per call (${fresh.n})`, fresh])
      if (language === 'python') {
        const imp = await timed(1, async () => check(await sb.runCode('import pandas, matplotlib.pyplot as plt', { context: ctx })))
        const fig = await timed(5, async () => check(await sb.runCode('plt.plot([1, 2, 3]); plt.show()', { context: ctx })))
        rows.push(['python: first `import pandas, matplotlib.pyplot` in a context', imp])
        rows.push([`python: a matplotlib figure (PNG) in a warm context (${fig.n})`, fig])
      }
      await ci.removeContext(ctx)
    }
    await sb.destroy()
  } finally {
    await srv.stop()
  }
  console.log('| code interpreter | median ms | p99 ms |')
  console.log('|---|---|---|')
  for (const [name, s] of rows) console.log(`| ${name} | ${f(s.median)} | ${f(s.p99)} |`)
}

main().catch((err) => { console.error(err); process.exit(1) })
