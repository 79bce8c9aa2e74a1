#!/usr/bin/env node
'use strict'
// Benchmarks against fly-local (root needed), side by side in one run:
//   - Machines API call latency: the native client vs Node's fetch (undici),
//     both with keep-alive, same server, same call.
//   - create -> started and create -> SSH-ready, one at a time and 20 at once.
//   - the warm pool (bench/pool.js): create -> first command with and without
//     it, one at a time and 20 at once.
//   - runCommand latency and throughput at 1 and 50 in flight: the native
//     SSH session vs the OpenSSH client (a new connection per command, and
//     a ControlMaster-multiplexed one).
//   - SFTP: 20 MiB up and down vs OpenSSH's sftp client; peak RSS growth
//     while moving 64 MiB.
//   - The project against ssh2 (bench/peers.js): latency, throughput, CPU
//     on both sides, stdout, SFTP, event-loop delay, RSS; a ratio table.
//   - The edge path against the private path, and ssh2 over the same edge
//     (bench/edge.js).
// Writes the numbers to stdout as Markdown; bench/RESULTS.md records a run.
const { spawn } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')
const crypto = require('crypto')
const local = require('../lib/local')
const native = require('../lib/native')
const { fly } = require('..')
const { runPeers } = require('./peers')
const { runPool } = require('./pool')
const { runEdge } = require('./edge')
const { stats, f, now, timeEach, throughput } = require('./measure')

const N_API = Number(process.env.BENCH_API || 300)
const N_CMD = Number(process.env.BENCH_CMD || 200)

function sh (cmd, args, input) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    p.stdout.on('data', (d) => { out += d })
    p.stderr.on('data', (d) => { err += d })
    p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}: ${err}`))))
    if (input) p.stdin.end(input)
  })
}

async function main () {
  const lines = []
  const say = (s) => { lines.push(s); console.log(s) }
  const srv = await local.start({ quiet: true })
  const key = native.keygen()
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-bench-'))
  const keyFile = path.join(tmp, 'id')
  fs.writeFileSync(keyFile, key.privateKey, { mode: 0o600 })
  const p = fly({ apiToken: srv.token, apiHostname: srv.url, appName: 'bench-' + process.pid, sshPrivateKey: key.privateKey })
  try {
    say(`# Benchmark run ${new Date().toISOString()}`)
    say('')
    say(`Machine: ${os.cpus().length} × ${os.cpus()[0].model}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, fly-local on loopback.`)
    say('')

    // ---- API latency
    const sb0 = await p.sandbox.create()
    const [app, machine] = sb0.sandboxId.split(':')
    const req = { apiHostname: srv.url, apiToken: srv.token, op: 'machine.get', params: { app, machine } }
    const url = `${srv.url}/v1/apps/${app}/machines/${machine}`
    const headers = { authorization: `Bearer ${srv.token}` }
    for (let i = 0; i < 20; i++) { await native.api(req); await (await fetch(url, { headers })).json() }
    const nat = await timeEach(N_API, () => native.api(req))
    const und = await timeEach(N_API, async () => (await fetch(url, { headers })).json())
    say('## Machines API: GET machine, sequential, keep-alive')
    say('')
    say('| client | n | median ms | p99 ms |')
    say('|---|---|---|---|')
    say(`| native (libcurl, I/O thread) | ${nat.n} | ${f(nat.median)} | ${f(nat.p99)} |`)
    say(`| Node fetch (undici) | ${und.n} | ${f(und.median)} | ${f(und.p99)} |`)
    say(`| ratio native/fetch | | ${f(nat.median / und.median)} | ${f(nat.p99 / und.p99)} |`)
    say('')

    // ---- create times
    const one = []
    for (let i = 0; i < 5; i++) {
      const t = now()
      const sb = await p.sandbox.create({ waitForSsh: false })
      const started = now() - t
      await sb.runCommand('true')
      one.push([started, now() - t])
      await sb.destroy()
    }
    const t20 = now()
    const many = await Promise.all(Array.from({ length: 20 }, async () => {
      const t = now()
      const sb = await p.sandbox.create({ waitForSsh: false })
      const started = now() - t
      await sb.runCommand('true')
      return { sb, started, ready: now() - t }
    }))
    const all20 = now() - t20
    const running = srv.machines().filter((m) => m.state === 'started').length
    await Promise.all(many.map((m) => m.sb.destroy()))
    const s1 = stats(one.map((x) => x[0]))
    const r1 = stats(one.map((x) => x[1]))
    const s20 = stats(many.map((x) => x.started))
    const r20 = stats(many.map((x) => x.ready))
    say('## Sandbox creation on fly-local')
    say('')
    say('| case | create→started median ms | create→SSH-ready median ms | max ms |')
    say('|---|---|---|---|')
    say(`| one at a time (5) | ${f(s1.median)} | ${f(r1.median)} | ${f(Math.max(...one.map((x) => x[1])))} |`)
    say(`| 20 at once | ${f(s20.median)} | ${f(r20.median)} | ${f(Math.max(...many.map((x) => x.ready)))} (all 20 ready in ${f(all20)} ms; ${running} running at once) |`)
    say('')

    // ---- the warm pool
    await runPool({ srv, say })

    // ---- the edge path
    await runEdge({ srv, say })

    // ---- runCommand
    const ip = (await sb0.getInfo()).metadata.privateIp
    const sshBase = ['-i', keyFile, '-p', '2222', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
      '-o', 'LogLevel=ERROR', '-o', 'BatchMode=yes']
    const ctl = path.join(tmp, 'ctl')
    const master = spawn('ssh', [...sshBase, '-o', 'ControlMaster=yes', '-o', `ControlPath=${ctl}`, '-N', `sandbox@${ip}`], { stdio: 'ignore' })
    const mux = [...sshBase, '-o', `ControlPath=${ctl}`, ip.includes(":") ? `sandbox@[${ip}]` : `sandbox@${ip}`]
    for (let i = 0; i < 200 && !fs.existsSync(ctl); i++) await sb0.runCommand('true')
    for (let i = 0; i < 10; i++) await sb0.runCommand('true')
    const cmdNat = await timeEach(N_CMD, () => sb0.runCommand('true'))
    const cmdMux = await timeEach(N_CMD, () => sh('ssh', [...mux, 'true']))
    const cmdCold = await timeEach(Math.min(50, N_CMD), () => sh('ssh', [...sshBase, `sandbox@${ip}`, 'true']))
    const tpNat1 = await throughput(N_CMD, 1, () => sb0.runCommand('true'))
    const tpNat50 = await throughput(N_CMD * 2, 50, () => sb0.runCommand('true'))
    const tpMux1 = await throughput(N_CMD, 1, () => sh('ssh', [...mux, 'true']))
    const tpMux50 = await throughput(N_CMD * 2, 10, () => sh('ssh', [...mux, 'true']))
    say('## runCommand(\'true\') over SSH')
    say('')
    say('| client | median ms | p99 ms | cmds/s at 1 in flight | cmds/s at 50 in flight |')
    say('|---|---|---|---|---|')
    say(`| native session (libssh2, one connection) | ${f(cmdNat.median)} | ${f(cmdNat.p99)} | ${f(tpNat1)} | ${f(tpNat50)} |`)
    say(`| OpenSSH ssh, ControlMaster mux | ${f(cmdMux.median)} | ${f(cmdMux.p99)} | ${f(tpMux1)} | ${f(tpMux50)} (10 in flight: sshd's mux limit) |`)
    say(`| OpenSSH ssh, new connection each | ${f(cmdCold.median)} | ${f(cmdCold.p99)} | | |`)
    say(`| ratio native/mux | ${f(cmdNat.median / cmdMux.median)} | ${f(cmdNat.p99 / cmdMux.p99)} | ${f(tpNat1 / tpMux1)} | |`)
    say('')

    // ---- SFTP
    const data = crypto.randomBytes(20 * 1024 * 1024)
    const local20 = path.join(tmp, 'up.bin')
    fs.writeFileSync(local20, data)
    await sb0.filesystem.writeFile('/tmp/warm', 'x')
    let t = now()
    await sb0.filesystem.writeFile('/tmp/up.bin', data)
    const up = 20 / ((now() - t) / 1000)
    t = now()
    const back = await sb0.filesystem.readFile('/tmp/up.bin', { encoding: null })
    const down = 20 / ((now() - t) / 1000)
    if (!back.equals(data)) throw new Error('SFTP round trip mismatch')
    const opts = ['-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-o', 'BatchMode=yes']
    // Through the ControlMaster connection: no connect cost in the timing.
    const sftpArgs = ['-q', '-b', '-', '-i', keyFile, '-P', '2222', ...opts, '-o', `ControlPath=${ctl}`, ip.includes(':') ? `sandbox@[${ip}]` : `sandbox@${ip}`]
    t = now()
    await sh('sftp', sftpArgs, `put ${local20} /tmp/up2.bin\n`)
    const cliUp = 20 / ((now() - t) / 1000)
    t = now()
    await sh('sftp', sftpArgs, `get /tmp/up2.bin ${path.join(tmp, 'down.bin')}\n`)
    const cliDown = 20 / ((now() - t) / 1000)
    say('## Files: 20 MiB')
    say('')
    say('| client | upload MiB/s | download MiB/s |')
    say('|---|---|---|')
    say(`| native SFTP (libssh2) | ${f(up)} | ${f(down)} |`)
    say(`| OpenSSH sftp over the ControlMaster connection | ${f(cliUp)} | ${f(cliDown)} |`)
    say(`| ratio native/OpenSSH | ${f(up / cliUp)} | ${f(down / cliDown)} |`)
    say('')
    master.kill()

    const big = crypto.randomBytes(64 * 1024 * 1024)
    global.gc && global.gc()
    const rss0 = process.memoryUsage().rss
    let peak = rss0
    const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 5)
    await sb0.filesystem.writeFile('/tmp/big.bin', big)
    const big2 = await sb0.filesystem.readFile('/tmp/big.bin', { encoding: null })
    clearInterval(timer)
    peak = Math.max(peak, process.memoryUsage().rss)
    if (!big2.equals(big)) throw new Error('64 MiB mismatch')
    say('## Memory while moving 64 MiB (write then read back)')
    say('')
    say(`Peak RSS growth over the 64 MiB source buffer: ${f((peak - rss0) / 2 ** 20)} MiB (the read result itself is 64 MiB).`)
    say('')
    say('## Against ssh2 on the same sandbox')
    say('')
    const peers = await runPeers({ srv, sb: sb0, keyFile, hostFingerprint: sb0.getInstance().hostKeyFingerprint, log: console.error })
    for (const l of peers.lines) say(l)
    say('')
    await sb0.destroy()
  } finally {
    await srv.stop()
    fs.rmSync(tmp, { recursive: true, force: true })
  }
  if (process.env.BENCH_OUT) fs.writeFileSync(process.env.BENCH_OUT, lines.join('\n') + '\n')
}

main().catch((err) => { console.error(err); process.exit(1) })
