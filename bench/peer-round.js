#!/usr/bin/env node
'use strict'
// One round of the peer benchmark, in a fresh process: one client (this
// project, ssh2, or OpenSSH's ssh over a ControlMaster connection) against the sandbox named in BENCH_ROUND (JSON), every
// phase measured in this process.  Prints one JSON line of results.
// Run by bench/peers.js, never by itself.
const crypto = require('crypto')
const fs = require('fs')
const net = require('net')
const path = require('path')
const { StringDecoder } = require('string_decoder')
const { monitorEventLoopDelay } = require('perf_hooks')

const cfg = JSON.parse(process.env.BENCH_ROUND)
const N_SEQ = cfg.nSeq || 200
const now = () => Number(process.hrtime.bigint()) / 1e6
const MiB = 1024 * 1024

function quantile (xs, p) {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]
}

// CPU the sandbox spent, in ms: its cgroup's cpuacct.usage (v1) or
// cpu.stat usage_usec (v2), which counts every process of the machine,
// sshd's forks included, whatever its runtime.  Without a cgroup, the CPU
// ticks of every process in its PID namespace (reaped children included).
const CG_ROOT = '/sys/fs/cgroup'
function cgroupCpuFile () {
  if (!cfg.initPid) return null
  let lines
  try { lines = fs.readFileSync(`/proc/${cfg.initPid}/cgroup`, 'utf8').split('\n') } catch { return null }
  for (const l of lines) {
    const [, ctrls, p] = l.split(':')
    if (ctrls === undefined) continue
    if (ctrls.split(',').includes('cpuacct')) {
      const dir = fs.existsSync(path.join(CG_ROOT, 'cpuacct')) ? 'cpuacct' : ctrls
      const f = path.join(CG_ROOT, dir, p, 'cpuacct.usage')
      if (fs.existsSync(f)) return { f, v2: false }
    }
    if (ctrls === '') {
      const f = path.join(CG_ROOT, p, 'cpu.stat')
      if (fs.existsSync(f)) return { f, v2: true }
    }
  }
  return null
}
const CG_CPU = cgroupCpuFile()
const TICK_MS = 10 // USER_HZ = 100 on Linux

function sandboxCpuMs () {
  if (CG_CPU) {
    try {
      const s = fs.readFileSync(CG_CPU.f, 'utf8')
      if (!CG_CPU.v2) return Number(s.trim()) / 1e6
      const m = /usage_usec (\d+)/.exec(s)
      if (m) return Number(m[1]) / 1e3
    } catch { /* the machine went away */ }
  }
  if (!cfg.initPid) return NaN
  let ns
  try { ns = fs.readlinkSync(`/proc/${cfg.initPid}/ns/pid`) } catch { return NaN }
  let total = 0
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (fs.readlinkSync(`/proc/${name}/ns/pid`) !== ns) continue
      const s = fs.readFileSync(`/proc/${name}/stat`, 'utf8')
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
      total += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])
    } catch { /* exited meanwhile */ }
  }
  return total * TICK_MS
}

// BENCH_PHASES (comma-separated: seq, inflight, stdout, sftp1KiB, sftp1MiB,
// sftp20MiB, sftp100MiB) runs a subset; all by default.
const PHASES = cfg.phases ? new Set(cfg.phases) : null
const want = (name) => !PHASES || PHASES.has(name)

// CPU the client spends outside this process (OpenSSH's ssh processes), ms.
let extraCpu = () => 0

// Runs fn while measuring wall time, event-loop delay, client and sandbox CPU.
async function phase (fn) {
  const eld = monitorEventLoopDelay({ resolution: 1 })
  const cpu0 = process.cpuUsage()
  const x0 = extraCpu()
  const sb0 = sandboxCpuMs()
  eld.enable()
  const t = now()
  const value = await fn()
  const ms = now() - t
  eld.disable()
  const cpu = process.cpuUsage(cpu0)
  return {
    ms,
    value,
    eldP99: eld.percentile(99) / 1e6,
    clientCpuMs: (cpu.user + cpu.system) / 1000 + extraCpu() - x0,
    sandboxCpuMs: sandboxCpuMs() - sb0
  }
}

async function inFlight (total, width, fn) {
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < total) { next++; await fn() }
  }))
  return total
}

// ---- the two clients, behind one small shape

// root: this tree, or (client 'base') the tree named by BENCH_BASE_ROOT,
// another build of the project measured in the same run (before/after).
async function flyClient (root = '..') {
  const { fly } = require(root)
  const p = fly({ apiToken: cfg.token, apiHostname: cfg.apiUrl, appName: cfg.appName, sshPrivateKey: fs.readFileSync(cfg.keyFile, 'utf8') })
  const sb = await p.sandbox.getById(cfg.sandboxId)
  return {
    run: (cmd) => sb.runCommand(cmd).then((r) => r.stdout),
    stream: (cmd) => new Promise((resolve, reject) => {
      let n = 0
      sb.runCommand(cmd, { onStdout: (s) => { n += s.length } }).then(() => resolve(n), reject)
    }),
    put: (remote, buf) => sb.filesystem.writeFile(remote, buf),
    get: (remote) => sb.filesystem.readFile(remote, { encoding: null }),
    /* the cipher its session negotiated, and its libssh2 */
    cipher: () => {
      const st = require(path.join(root, 'lib', 'native')).sshStats()
      return `${st.cipher} (libssh2 ${st.libssh2Runtime})`
    },
    close: () => {}
  }
}

async function ssh2Client () {
  const { Client } = require(path.join(__dirname, 'node_modules', 'ssh2'))
  const conn = new Client()
  let negotiated = null
  conn.once('handshake', (n) => { negotiated = n.cs && n.cs.cipher })
  const sock = net.connect(cfg.port, cfg.host)
  sock.setNoDelay(true)
  await new Promise((resolve, reject) => {
    conn.once('ready', resolve).once('error', reject)
    conn.connect({
      sock,
      username: cfg.user,
      privateKey: fs.readFileSync(cfg.keyFile),
      // The same check the project makes: the pinned SHA256 fingerprint.
      hostVerifier: (key) => 'SHA256:' + crypto.createHash('sha256').update(key).digest('base64').replace(/=+$/, '') === cfg.hostFingerprint
    })
  })
  const exec = (cmd, onData) => new Promise((resolve, reject) => {
    conn.exec(cmd, (err, stream) => {
      if (err) return reject(err)
      stream.on('data', onData)
      stream.stderr.resume()
      stream.once('close', resolve)
    })
  })
  const sftp = await new Promise((resolve, reject) => conn.sftp((err, s) => (err ? reject(err) : resolve(s))))
  // ssh2's fastest transfer API (pipelined, 64 requests in flight) works on
  // local paths: stage through /dev/shm so the local side costs ~nothing.
  const shm = fs.mkdtempSync('/dev/shm/bench-ssh2-')
  process.on('exit', () => fs.rmSync(shm, { recursive: true, force: true }))
  return {
    run: async (cmd) => {
      const parts = []
      await exec(cmd, (d) => parts.push(d))
      return Buffer.concat(parts).toString('utf8')
    },
    stream: async (cmd) => {
      const dec = new StringDecoder('utf8')
      let n = 0
      await exec(cmd, (d) => { n += dec.write(d).length })
      return n + dec.end().length
    },
    put: async (remote, buf) => {
      const f = path.join(shm, 'up')
      fs.writeFileSync(f, buf)
      await new Promise((resolve, reject) => sftp.fastPut(f, remote, (err) => (err ? reject(err) : resolve())))
    },
    get: async (remote) => {
      const f = path.join(shm, 'down')
      await new Promise((resolve, reject) => sftp.fastGet(remote, f, (err) => (err ? reject(err) : resolve())))
      return fs.readFileSync(f)
    },
    cipher: () => negotiated,
    close: () => conn.end()
  }
}

// OpenSSH's client (ssh), every command a new `ssh` process multiplexed over
// one ControlMaster connection (-S), as a user of the OpenSSH CLI would run
// many commands; downloads are `cat` over a channel into a Buffer, uploads
// `cat >` from stdin.  The host key is pinned as the others do: the
// keyscan's key must have the sandbox's fingerprint.  Its client CPU is
// this process's plus every `ssh` process's (reaped children, from
// /proc/self/stat) plus the master's.
async function opensshClient () {
  const { spawn, execFileSync } = require('child_process')
  const os = require('os')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-openssh-'))
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
  const kh = path.join(dir, 'known_hosts')
  const scan = execFileSync('ssh-keyscan', ['-p', String(cfg.port), '-t', 'ed25519', cfg.host], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()
  const khLine = scan.split('\n').find((l) => l && !l.startsWith('#'))
  fs.writeFileSync(kh, khLine + '\n')
  const fp = execFileSync('ssh-keygen', ['-lf', kh]).toString().split(' ')[1]
  if (fp !== cfg.hostFingerprint) throw new Error(`openssh: host key ${fp} is not the sandbox's ${cfg.hostFingerprint}`)
  const sock = path.join(dir, 'mux')
  const common = ['-p', String(cfg.port), '-i', cfg.keyFile, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${kh}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-S', sock]
  const master = spawn('ssh', [...common, '-M', '-N', '-v', '-o', 'ControlPersist=no', `${cfg.user}@${cfg.host}`], { stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  master.stderr.on('data', (d) => { log += d })
  process.on('exit', () => { try { master.kill() } catch {} })
  const deadline = Date.now() + 15000
  while (!fs.existsSync(sock)) {
    if (Date.now() > deadline || master.exitCode !== null) throw new Error('openssh: the master did not start: ' + log.slice(-500))
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  const proc = (cmd, input, onData) => new Promise((resolve, reject) => {
    const child = spawn('ssh', [...common, '-o', 'ControlMaster=no', 'x', cmd], { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] })
    child.stdout.on('data', onData)
    child.stderr.resume()
    child.once('error', reject)
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`openssh: '${cmd}' exited ${code}`))))
    if (input) child.stdin.end(input)
  })
  const ticks = (pid) => {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ')
    return pid === 'self' ? Number(f[13]) + Number(f[14]) : Number(f[11]) + Number(f[12])
  }
  const q = (p) => `'${p.replace(/'/g, "'\\''")}'`
  return {
    run: async (cmd) => {
      const parts = []
      await proc(cmd, null, (d) => parts.push(d))
      return Buffer.concat(parts).toString('utf8')
    },
    stream: async (cmd) => {
      const dec = new StringDecoder('utf8')
      let n = 0
      await proc(cmd, null, (d) => { n += dec.write(d).length })
      return n + dec.end().length
    },
    put: (remote, buf) => proc(`cat > ${q(remote)}`, buf, () => {}),
    get: async (remote) => {
      const parts = []
      await proc(`cat ${q(remote)}`, null, (d) => parts.push(d))
      return Buffer.concat(parts)
    },
    cipher: () => {
      const m = /server->client cipher: (\S+) MAC: (\S+)/.exec(log)
      return m ? `${m[1]} (MAC ${m[2]}; ${require('child_process').spawnSync('ssh', ['-V']).stderr.toString().trim()})` : null
    },
    // the ssh processes' CPU (reaped children) and the master's, in ms
    extraCpuMs: () => (ticks('self') + (master.exitCode === null ? ticks(master.pid) : 0)) * TICK_MS,
    close: () => master.kill()
  }
}

async function main () {
  const out = { client: cfg.client }
  const t = now()
  const c = cfg.client === 'ssh2' ? await ssh2Client() : cfg.client === 'openssh' ? await opensshClient() : cfg.client === 'base' ? await flyClient(path.resolve(process.env.BENCH_BASE_ROOT)) : await flyClient()
  extraCpu = c.extraCpuMs || (() => 0)
  // connect + auth + the first command: what a user waits for first.
  await c.run('true')
  out.connectMs = now() - t
  out.cipher = c.cipher()

  for (let i = 0; i < 20; i++) await c.run('true')
  if (want('seq')) {
    const lat = []
    const seq = await phase(async () => {
      for (let i = 0; i < N_SEQ; i++) {
        const t0 = now()
        await c.run('true')
        lat.push(now() - t0)
      }
    })
    out.seqP50 = quantile(lat, 0.5)
    out.seqP99 = quantile(lat, 0.99)
    out.seqEldP99 = seq.eldP99
    out.clientCpuPerCmd = seq.clientCpuMs / N_SEQ
    out.sandboxCpuPerCmd = seq.sandboxCpuMs / N_SEQ
  }

  if (want('inflight')) {
    for (const width of [1, 10, 50]) {
      const total = width === 1 ? 200 : width * 10
      const r = await phase(() => inFlight(total, width, () => c.run('true')))
      out[`cmdsPerSec${width}`] = total / (r.ms / 1000)
      out[`eldP99At${width}`] = r.eldP99
    }
  }

  if (want('stdout')) {
    const bytes = 32 * MiB
    const cmd = `head -c ${bytes} /dev/zero`
    const asString = await phase(() => c.run(cmd))
    if (asString.value.length !== bytes) throw new Error(`stdout: ${asString.value.length} of ${bytes}`)
    out.stdoutStringMiBs = 32 / (asString.ms / 1000)
    out.stdoutStringEldP99 = asString.eldP99
    const streamed = await phase(() => c.stream(cmd))
    if (streamed.value !== bytes) throw new Error(`streamed: ${streamed.value} of ${bytes}`)
    out.stdoutStreamMiBs = 32 / (streamed.ms / 1000)
    out.stdoutStreamEldP99 = streamed.eldP99
  }

  for (const [label, size, reps] of [['1KiB', 1024, 50], ['1MiB', MiB, 10], ['20MiB', 20 * MiB, 3], ['100MiB', 100 * MiB, 1]]) {
    if (!want(`sftp${label}`)) continue
    const data = crypto.randomBytes(size)
    const remote = `/tmp/bench-${cfg.client}-${label}`
    await c.put(remote, data)
    const up = await phase(async () => { for (let i = 0; i < reps; i++) await c.put(remote, data) })
    let back
    const down = await phase(async () => { for (let i = 0; i < reps; i++) back = await c.get(remote) })
    if (!back.equals(data)) throw new Error(`${label} round trip differs`)
    out[`up${label}MiBs`] = (size * reps / MiB) / (up.ms / 1000)
    out[`down${label}MiBs`] = (size * reps / MiB) / (down.ms / 1000)
    out[`up${label}EldP99`] = up.eldP99
    out[`down${label}EldP99`] = down.eldP99
    out[`up${label}CpuMs`] = up.clientCpuMs / reps
    out[`down${label}CpuMs`] = down.clientCpuMs / reps
    out[`up${label}SandboxCpuMs`] = up.sandboxCpuMs / reps
    out[`down${label}SandboxCpuMs`] = down.sandboxCpuMs / reps
  }
  out.maxRssMiB = process.resourceUsage().maxRSS / 1024
  c.close()
  process.stdout.write(JSON.stringify(out) + '\n')
  process.exit(0)
}

main().catch((err) => { console.error(err); process.exit(1) })
