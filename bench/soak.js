#!/usr/bin/env node
'use strict'
// Soak (root: it starts fly-local itself):  node bench/soak.js
//   1. SOAK_COMMANDS (10,000) commands on one sandbox, SOAK_PARALLEL (4) in
//      flight: mostly `true`, every third one with a little output checked,
//      and every 100th a file written and read back.
//   2. SOAK_CYCLES (200) create -> runCommand -> destroy cycles,
//      SOAK_PARALLEL at a time.
// It records this process's RSS (after a GC), open fds (/proc/self/fd) and
// threads (/proc/self/status) every 1,000 commands and every 20 cycles,
// with what fly-local still holds: machines not destroyed, mounts and
// cgroups naming this instance, and processes descended from this one.
// Prints a Markdown table and a verdict line: RSS and fds within 10% from
// the first 1,000 commands to the last, and nothing left over at the end.
const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const v8 = require('v8')
const vm = require('vm')
const local = require('../lib/local')
const { fly } = require('..')
// Every descendant pid of a pid, from /proc (shared with the tests).
const { descendants } = require('../test/helpers/sshd')

const N_CMD = Number(process.env.SOAK_COMMANDS || 10000)
const N_CYCLES = Number(process.env.SOAK_CYCLES || 200)
const PARALLEL = Number(process.env.SOAK_PARALLEL || 4)
const CMD_EVERY = 1000
const CYCLE_EVERY = 20

// A GC before each sample, so that RSS shows what is held, not garbage.
v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc')

// cgroup directories (v1 hierarchies or v2) below the ones whose name holds
// `mark`: the instance keeps its own for as long as it runs, and one per
// machine (or more) inside it.
function cgroups (mark) {
  let n = 0
  const walk = (dir, depth, inside) => {
    let ents
    try { ents = fs.readdirSync(dir, { withFileTypes: true }) } catch { return }
    for (const e of ents) {
      if (!e.isDirectory()) continue
      if (inside) n++
      const mine = inside || e.name.includes(mark)
      if (mine || depth < 3) walk(path.join(dir, e.name), depth + 1, mine)
    }
  }
  walk('/sys/fs/cgroup', 0, false)
  return n
}

function sample (srv, label) {
  gc()
  const status = fs.readFileSync('/proc/self/status', 'utf8')
  // This instance's names carry fly-local-<pid>- (its state directory).
  const mark = `fly-local-${process.pid}-`
  return {
    label,
    rssMiB: process.memoryUsage().rss / 2 ** 20,
    fds: fs.readdirSync('/proc/self/fd').length,
    threads: Number(/^Threads:\s+(\d+)/m.exec(status)[1]),
    machines: srv.machines().filter((m) => m.state !== 'destroyed').length,
    mounts: fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes(mark)).length,
    cgroups: cgroups(mark),
    procs: descendants(process.pid).length
  }
}

// Runs fn(i) for i in [from, to), `PARALLEL` at a time.
async function pool (from, to, fn) {
  let next = from
  const worker = async () => {
    while (next < to) await fn(next++)
  }
  await Promise.all(Array.from({ length: PARALLEL }, worker))
}

async function oneCommand (sb, i) {
  if (i % 100 === 0) {
    const data = crypto.randomBytes(4096)
    const p = `/tmp/soak-${i % 400}`
    await sb.filesystem.writeFile(p, data)
    const back = await sb.filesystem.readFile(p, { encoding: null })
    if (!data.equals(back)) throw new Error(`file ${p} came back different`)
  } else if (i % 3 === 0) {
    const r = await sb.runCommand(`echo soak ${i}`)
    if (r.stdout !== `soak ${i}\n`) throw new Error(`command ${i} printed ${JSON.stringify(r.stdout)}`)
  } else {
    const r = await sb.runCommand('true')
    if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`)
  }
}

async function oneCycle (p) {
  const s = await p.sandbox.create()
  const r = await s.runCommand('echo cycle')
  if (r.stdout !== 'cycle\n') throw new Error(`a new sandbox printed ${JSON.stringify(r.stdout)}`)
  await s.destroy()
}

function table (rows) {
  const cols = ['label', 'rssMiB', 'fds', 'threads', 'machines', 'mounts', 'cgroups', 'procs', 'elapsedS']
  const cell = (v) => (typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(1) : String(v))
  return [
    `| ${cols.join(' | ')} |`,
    `|${cols.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${cols.map((c) => cell(r[c])).join(' | ')} |`)
  ].join('\n')
}

async function main () {
  const srv = await local.start({ quiet: true })
  const t0 = Date.now()
  const rows = []
  const record = (label) => {
    const s = { ...sample(srv, label), elapsedS: (Date.now() - t0) / 1000 }
    rows.push(s)
    return s
  }
  try {
    const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: `soak-${crypto.randomBytes(3).toString('hex')}` })
    record('start')
    const sb = await p.sandbox.create()
    const cmdRows = []
    for (let done = 0; done < N_CMD; done += CMD_EVERY) {
      await pool(done, Math.min(N_CMD, done + CMD_EVERY), (i) => oneCommand(sb, i))
      cmdRows.push(record(`${Math.min(N_CMD, done + CMD_EVERY)} commands`))
    }
    await sb.destroy()
    for (let done = 0; done < N_CYCLES; done += CYCLE_EVERY) {
      await pool(done, Math.min(N_CYCLES, done + CYCLE_EVERY), () => oneCycle(p))
      record(`${Math.min(N_CYCLES, done + CYCLE_EVERY)} cycles`)
    }
    const end = record('end')
    console.log(`Soak: ${N_CMD} commands on one sandbox, then ${N_CYCLES} create/destroy cycles, ${PARALLEL} in flight; ` +
      `node ${process.version}, ${require('os').cpus().length} CPUs\n`)
    console.log(table(rows))
    const first = cmdRows[0]
    const last = cmdRows[cmdRows.length - 1]
    const within = (a, b) => Math.abs(b - a) <= 0.1 * a
    const checks = [
      [`RSS ${first.rssMiB.toFixed(1)} -> ${last.rssMiB.toFixed(1)} MiB`, within(first.rssMiB, last.rssMiB)],
      [`fds ${first.fds} -> ${last.fds}`, within(first.fds, last.fds)],
      [`leftovers: ${end.machines} machines, ${end.mounts} mounts, ${end.cgroups} cgroups, ${end.procs} processes`,
        end.machines + end.mounts + end.cgroups + end.procs === 0]
    ]
    const ok = checks.every(([, pass]) => pass)
    console.log(`\nverdict: ${ok ? 'PASS' : 'FAIL'} (${checks.map(([what, pass]) => `${what} ${pass ? 'ok' : 'NOT ok'}`).join('; ')}) ` +
      `in ${((Date.now() - t0) / 1000).toFixed(0)} s`)
    process.exitCode = ok ? 0 : 1
  } finally {
    await srv.stop()
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
