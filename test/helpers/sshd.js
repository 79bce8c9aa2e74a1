'use strict'
// A throwaway OpenSSH server for the native SSH tests: 127.0.0.1 on a free
// port, a fresh ed25519 host key and client key, login as root by key only.
// Needs root (sshd re-execs itself and switches users).

const { spawn, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

// Children run without the sanitizer runtime that an ASan run of the suite
// preloads into node (README, Development): sshd and friends are not built
// for it.
const childEnv = () => {
  const env = { ...process.env }
  delete env.LD_PRELOAD
  return env
}

function freePort () {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function keygen (file, comment) {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file], { env: childEnv() })
  return {
    privateKey: fs.readFileSync(file, 'utf8'),
    publicKey: fs.readFileSync(file + '.pub', 'utf8').trim()
  }
}

function fingerprint (pubFile) {
  const out = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', pubFile], { encoding: 'utf8', env: childEnv() })
  return out.split(/\s+/)[1]
}

// Every descendant pid of pid (from /proc).
function descendants (pid) {
  const children = new Map()
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    let stat
    try { stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8') } catch { continue }
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    if (!children.has(ppid)) children.set(ppid, [])
    children.get(ppid).push(Number(d))
  }
  const out = []
  const walk = (p) => {
    for (const c of children.get(p) || []) { out.push(c); walk(c) }
  }
  walk(pid)
  return out
}

async function startSshd (opts = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fly-sshd-'))
  const host = keygen(path.join(dir, 'host_ed25519'), 'host')
  const client = keygen(path.join(dir, 'client_ed25519'), 'client')
  fs.writeFileSync(path.join(dir, 'authorized_keys'), client.publicKey + '\n')
  const port = await freePort()
  const config = path.join(dir, 'sshd_config')
  fs.writeFileSync(config, [
    `Port ${port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${path.join(dir, 'host_ed25519')}`,
    'PidFile none',
    `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
    'PermitRootLogin prohibit-password',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM no',
    'StrictModes no',
    `MaxSessions ${opts.maxSessions || 128}`,
    'MaxStartups 100:30:200',
    // opts.sftp: a command to run as the sftp subsystem instead (a fake
    // server for the hostile-reply tests).
    `Subsystem sftp ${opts.sftp || 'internal-sftp'}`,
    // root's ~/.bashrc on this host is slow (pyenv, cargo); bash skips it
    // for ssh commands when SHLVL is already set.
    'SetEnv SHLVL=1',
    'LogLevel INFO',
    ''
  ].join('\n'))

  // sshd refuses to start without its privilege separation directory, which
  // only the host's ssh service would create (a fresh machine has none).
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 })
  const proc = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', config], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: childEnv()
  })
  let stderr = ''
  await new Promise((resolve, reject) => {
    // sshd -e logs "Server listening on ..." once the socket is bound.
    const onData = (d) => {
      stderr += d
      if (/Server listening on/.test(stderr)) {
        proc.stderr.off('data', onData)
        proc.stderr.resume()
        resolve()
      }
    }
    proc.stderr.on('data', onData)
    proc.once('exit', (code) => reject(new Error(`sshd exited ${code}: ${stderr}`)))
  })
  proc.removeAllListeners('exit')

  const fp = fingerprint(path.join(dir, 'host_ed25519.pub'))
  return {
    dir,
    port,
    host: '127.0.0.1',
    hostKeyFingerprint: fp,
    clientKey: client.privateKey,
    // A target for native.sshOpen, with extra fields on top.
    target (extra = {}) {
      return {
        host: '127.0.0.1',
        port,
        user: 'root',
        privateKey: client.privateKey,
        hostKeyFingerprint: fp,
        ...extra
      }
    },
    // Kill the per-connection sshd processes (the connection drops), not
    // the listener.
    killConnections () {
      for (const pid of descendants(proc.pid)) {
        try { process.kill(pid, 'SIGKILL') } catch {}
      }
    },
    // The listener's pid and its connections'.
    pids () {
      return [proc.pid, ...descendants(proc.pid)]
    },
    // How many connection processes the listener has now.
    connections () {
      return descendants(proc.pid).length
    },
    // SIGSTOP the listener and every connection: the kernel still accepts
    // and acknowledges, nothing answers (a stalled server).
    freeze () {
      for (const pid of [proc.pid, ...descendants(proc.pid)]) {
        try { process.kill(pid, 'SIGSTOP') } catch {}
      }
    },
    thaw () {
      for (const pid of [proc.pid, ...descendants(proc.pid)]) {
        try { process.kill(pid, 'SIGCONT') } catch {}
      }
    },
    async stop () {
      this.thaw()
      this.killConnections()
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((resolve) => proc.once('exit', resolve))
        proc.kill('SIGTERM')
        await exited
      }
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

module.exports = { startSshd, freePort, descendants, childEnv }
