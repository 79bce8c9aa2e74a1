#!/usr/bin/env node
'use strict'
// The sandbox's cost per command with and without the executor
// (docker/flyexec.c): the machine's cgroup CPU time (cpuacct.usage, or
// cpu.stat's usage_usec on cgroup v2) across N sequential `true`
// commands (shell form and argv form), and their latency p50, on one fly-local machine: first with
// the executor, then with it removed (a new session takes a channel per
// command).  Not a test; run as root: node bench/executor.js [N]
const fs = require('fs')
const local = require('../lib/local')
const { fly } = require('..')
const native = require('../lib/native')

const N = Number(process.argv[2] || 500)

function cgroupCpuNs (pid) {
  const lines = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')
  const v1 = lines.find((l) => /^\d+:([^:]*,)?cpuacct(,[^:]*)?:/.test(l))
  if (v1) return Number(fs.readFileSync(`/sys/fs/cgroup/cpuacct${v1.split(':')[2]}/cpuacct.usage`, 'utf8'))
  const v2 = lines.find((l) => l.startsWith('0::'))
  const stat = fs.readFileSync(`/sys/fs/cgroup${v2.slice(3)}/cpu.stat`, 'utf8')
  return Number(/usage_usec (\d+)/.exec(stat)[1]) * 1000
}

async function measure (sb, pid, args) {
  const run = () => args ? sb.runCommand('true', args) : sb.runCommand('true')
  for (let i = 0; i < 20; i++) await run() // warm: session, executor
  const ms = []
  const cpu0 = cgroupCpuNs(pid)
  for (let i = 0; i < N; i++) {
    const t = process.hrtime.bigint()
    const r = await run()
    ms.push(Number(process.hrtime.bigint() - t) / 1e6)
    if (r.exitCode !== 0) throw new Error('true failed')
  }
  const cpuMs = (cgroupCpuNs(pid) - cpu0) / 1e6
  ms.sort((a, b) => a - b)
  return { cpuPerCmd: cpuMs / N, p50: ms[Math.floor(N / 2)], p99: ms[Math.floor(N * 0.99)] }
}

;(async () => {
  const srv = await local.start({ quiet: true })
  const provider = fly({ apiToken: srv.token, apiHostname: srv.url, appName: `bench-exr-${process.pid}` })
  const sb = await provider.sandbox.create()
  try {
    const machine = sb.sandboxId.split(':')[1]
    const pid = srv.machines().find((m) => m.id === machine).pid
    const comm = (await sb.runCommand('cat /proc/$PPID/comm')).stdout.trim()
    const withExr = await measure(sb, pid)
    const withExrArgv = await measure(sb, pid, [])
    const [app] = sb.sandboxId.split(':')
    await native.api({ apiHostname: srv.url, apiToken: srv.token, op: 'machine.exec', params: { app, machine },
      body: JSON.stringify({ command: ['rm', '/usr/local/libexec/computesdk/flyexec'] }) })
    await require('../lib/transport/ssh').close(sb.getInstance()._ctx, sb.sandboxId)
    const comm2 = (await sb.runCommand('cat /proc/$PPID/comm')).stdout.trim()
    const without = await measure(sb, pid)
    const withoutArgv = await measure(sb, pid, [])
    const row = (name, r) => `| ${name} | ${r.cpuPerCmd.toFixed(2)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} |`
    console.log(`${N} sequential runCommand('true') on one fly-local machine (parent: ${comm} / ${comm2})\n`)
    console.log('| path | sandbox CPU ms/cmd | p50 ms | p99 ms |\n|---|---|---|---|')
    console.log(row("executor, 'true' (through $SHELL -c)", withExr))
    console.log(row("channel per command, 'true'", without))
    console.log(row("executor, argv ['true']", withExrArgv))
    console.log(row("channel per command, argv ['true']", withoutArgv))
  } finally {
    await sb.destroy()
    await srv.stop()
  }
})().catch((e) => { console.error(e); process.exit(1) })
