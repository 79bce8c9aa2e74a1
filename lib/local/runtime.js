'use strict';
// fly-local machine runtime: the host side of real sandboxes.
//
// A Host owns what one fly-local instance holds on this machine: a state
// directory under os.tmpdir(), its cgroups (memory limits, freezer) and a
// private 127.a.b.0/24 range of machine addresses. A Run is one boot of one
// machine: box.py builds the namespaces and the copy-on-write root and runs
// the main process; the Run watches it, signals it, freezes it and execs
// commands inside it with nsenter.
const { spawn, execFile } = require('child_process');
const EventEmitter = require('events');
const fs = require('fs');
const fsp = fs.promises;
const net = require('net');
const os = require('os');
const path = require('path');
const crypto = require('crypto');

const BOX = path.join(__dirname, 'box.py');
const DOCKER_DIR = path.resolve(__dirname, '../../docker');
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const NSENTER = fs.existsSync('/usr/bin/nsenter') ? '/usr/bin/nsenter' : 'nsenter';
const SYS_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const CG_ROOT = '/sys/fs/cgroup';
const EXEC_OUTPUT_CAP = 16 * 1024 * 1024;

/* Where this process sits in a cgroup v1 hierarchy, e.g. memory -> /a/b. */
function ownCgroup(controller) {
  try {
    for (const line of fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
      const [, ctrls, p] = line.split(':');
      if (ctrls && ctrls.split(',').includes(controller)) return p;
    }
  } catch (_) { /* no cgroups: degrade */ }
  return null;
}

/* A writable cgroup v1 directory for this instance, or null. */
function makeCgroupBase(controller, name) {
  const own = ownCgroup(controller);
  if (own === null) return null;
  const mountDir = path.join(CG_ROOT, controller);
  const dir = path.join(mountDir, own, name);
  try {
    fs.mkdirSync(dir);
    return dir;
  } catch (_) {
    return null;
  }
}

function rmdirQuiet(dir) {
  try { fs.rmdirSync(dir); return true; } catch (_) { return false; }
}

/* Remove the cgroup tree of an instance, children first. */
function removeCgroupTree(dir) {
  let entries = [];
  try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch (_) { return; }
  for (const e of entries) if (e.isDirectory()) removeCgroupTree(path.join(dir, e.name));
  rmdirQuiet(dir);
}

function pidAlive(pid) {
  try { process.kill(pid, 0); return true; } catch (e) { return e.code === 'EPERM'; }
}

/* Leftovers of fly-local instances that died without stop(). */
function sweepStale() {
  const tmp = os.tmpdir();
  let names = [];
  try { names = fs.readdirSync(tmp); } catch (_) { /* ignore */ }
  for (const n of names) {
    const m = /^fly-local-(\d+)-[0-9a-f]+$/.exec(n);
    if (m && !pidAlive(Number(m[1]))) {
      try { fs.rmSync(path.join(tmp, n), { recursive: true, force: true }); } catch (_) { /* busy */ }
    }
  }
  for (const ctrl of ['memory', 'freezer']) {
    const own = ownCgroup(ctrl);
    if (own === null) continue;
    const dir = path.join(CG_ROOT, ctrl, own);
    let entries = [];
    try { entries = fs.readdirSync(dir); } catch (_) { continue; }
    for (const n of entries) {
      const m = /^fly-local-(\d+)-[0-9a-f]+$/.exec(n);
      if (m && !pidAlive(Number(m[1]))) removeCgroupTree(path.join(dir, n));
    }
  }
}

function portFree(ip, port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ host: ip, port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

class Host {
  static async create() {
    sweepStale();
    const tag = `fly-local-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `fly-local-${process.pid}-`)).then(async (d) => {
      /* mkdtemp's suffix is not hex; rename to the pattern the sweeper knows */
      const target = path.join(os.tmpdir(), tag);
      await fsp.rename(d, target);
      return target;
    });
    await fsp.chmod(dir, 0o700);
    const h = new Host();
    h.tag = tag;
    h.dir = dir;
    h.memoryBase = makeCgroupBase('memory', tag);
    h.freezerBase = makeCgroupBase('freezer', tag);
    /* A random 127.a.b.0/24 per instance so parallel instances do not
       collide; 127.0.0.x is left alone. */
    const b = crypto.randomBytes(2);
    h.prefix = `127.${1 + (b[0] % 254)}.${b[1]}`;
    h.used = new Set();
    h.next = 2;
    return h;
  }

  async allocIp() {
    for (let tries = 0; tries < 253; tries++) {
      const n = this.next;
      this.next = this.next >= 254 ? 2 : this.next + 1;
      const ip = `${this.prefix}.${n}`;
      if (this.used.has(ip)) continue;
      this.used.add(ip);
      if (await portFree(ip, 2222)) return ip;
      this.used.delete(ip);
    }
    throw Object.assign(new Error('no free machine address'), { code: 'FLY_LOCAL_NO_ADDRESS' });
  }

  releaseIp(ip) {
    this.used.delete(ip);
  }

  /* Per-machine cgroups; null members where the host does not allow them. */
  machineCgroups(id) {
    const cg = { memory: null, freezer: null };
    for (const kind of ['memory', 'freezer']) {
      const base = kind === 'memory' ? this.memoryBase : this.freezerBase;
      if (!base) continue;
      const dir = path.join(base, id);
      try {
        fs.mkdirSync(dir);
      } catch (e) {
        if (e.code !== 'EEXIST') continue;
      }
      cg[kind] = dir;
    }
    return cg;
  }

  removeMachineCgroups(id) {
    for (const base of [this.memoryBase, this.freezerBase]) {
      if (base) rmdirQuiet(path.join(base, id));
    }
  }

  destroy() {
    if (this.memoryBase) removeCgroupTree(this.memoryBase);
    if (this.freezerBase) removeCgroupTree(this.freezerBase);
    try { fs.rmSync(this.dir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
  }
}

function readFileQuiet(p) {
  try { return fs.readFileSync(p, 'utf8'); } catch (_) { return null; }
}

function readStat(pid) {
  const s = readFileQuiet(`/proc/${pid}/stat`);
  if (!s) return null;
  const close = s.lastIndexOf(')');
  const comm = s.slice(s.indexOf('(') + 1, close);
  const rest = s.slice(close + 2).split(' ');
  return { pid, comm, state: rest[0], ppid: Number(rest[1]), utime: Number(rest[11]),
    stime: Number(rest[12]), rss: Number(rest[21]) };
}

let supportFiles = null;
function dockerFiles() {
  if (!supportFiles) {
    supportFiles = [
      { path: '/opt/computesdk/entrypoint.sh', mode: 0o755,
        hex: fs.readFileSync(path.join(DOCKER_DIR, 'entrypoint.sh')).toString('hex') },
      { path: '/opt/computesdk/sshd_config', mode: 0o644,
        hex: fs.readFileSync(path.join(DOCKER_DIR, 'sshd_config')).toString('hex') },
    ];
  }
  return supportFiles;
}

const ENTRYPOINT = ['/opt/computesdk/entrypoint.sh'];

/* The image's ENTRYPOINT/CMD as overridden by config.init. */
function mainArgv(init) {
  init = init || {};
  if (Array.isArray(init.exec) && init.exec.length) return init.exec.slice();
  const entry = Array.isArray(init.entrypoint) && init.entrypoint.length ? init.entrypoint : ENTRYPOINT;
  const cmd = Array.isArray(init.cmd) ? init.cmd : [];
  return [...entry, ...cmd];
}

/* One boot of a machine. Emits 'started' and then 'exit' once; 'exit'
   (and exitPromise) mean every process of the boot is gone and reaped:
   the launcher waits for the machine's PID 1, which as the namespace's init
   only exits once every other process in the namespace is reaped, and the
   exec processes (nsenter, outside the namespace but in the machine's
   cgroups) are awaited too. */
class Run extends EventEmitter {
  constructor(host, opts) {
    super();
    this.host = host;
    this.opts = opts;
    this.dir = path.join(host.dir, opts.id, String(opts.seq));
    this.pid = 0;
    this.pidns = null;
    this.started = false;
    this.exited = false;
    this.frozen = false;
    this.exitInfo = null;
    this.bootError = null;
    this.startedAt = 0;
    this.statusStarted = false;
    this.killRequested = false;
    /* exec children not yet reaped, and the callback that finishes the
       exit once they are */
    this.execs = new Set();
    this.onExecsDone = null;
    this.exitPromise = new Promise((resolve) => this.once('exit', resolve));
  }

  async start() {
    const { opts } = this;
    await fsp.mkdir(path.join(this.dir, 'upper'), { recursive: true });
    await fsp.mkdir(path.join(this.dir, 'work'));
    await fsp.mkdir(path.join(this.dir, 'root'));
    const cg = opts.cgroups;
    this.cg = cg;
    if (cg.memory) {
      this.oomBefore = this.oomKills();
      const bytes = String(opts.memoryMb * 1024 * 1024);
      try {
        /* memsw must stay >= the limit: lower order matters */
        fs.writeFileSync(path.join(cg.memory, 'memory.limit_in_bytes'), bytes);
        if (fs.existsSync(path.join(cg.memory, 'memory.memsw.limit_in_bytes'))) {
          fs.writeFileSync(path.join(cg.memory, 'memory.memsw.limit_in_bytes'), bytes);
        }
      } catch (_) { /* enforce where the host allows it */ }
    }
    const logFd = fs.openSync(path.join(this.host.dir, opts.id, 'console.log'), 'a');
    const child = spawn(PYTHON, ['-I', '-S', BOX], {
      stdio: ['pipe', logFd, logFd, 'pipe'],
      env: { PATH: SYS_PATH, LANG: 'C.UTF-8' },
    });
    fs.closeSync(logFd);
    this.child = child;
    const cfg = {
      run: this.dir,
      hostname: opts.id,
      ip: opts.ip,
      cgroups: [cg.memory, cg.freezer].filter(Boolean).map((d) => path.join(d, 'cgroup.procs')),
      files: [...dockerFiles(), ...opts.files],
      user: 'sandbox',
      argv: opts.argv,
      env: opts.env,
    };
    child.stdin.on('error', () => {});
    child.stdin.end(JSON.stringify(cfg));

    let buf = '';
    child.stdio[3].setEncoding('utf8');
    child.stdio[3].on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.onStatus(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    let spawnError = null;
    child.on('error', (e) => { spawnError = e; });
    child.on('close', (code, signal) => this.onClose(code, signal, spawnError));
    return new Promise((resolve) => {
      this.once('started', () => resolve(true));
      this.once('exit', () => resolve(false));
    });
  }

  onStatus(line) {
    const sp = line.indexOf(' ');
    const word = sp < 0 ? line : line.slice(0, sp);
    const rest = sp < 0 ? '' : line.slice(sp + 1);
    if (word === 'pid') {
      this.pid = Number(rest);
      try { this.pidns = fs.readlinkSync(`/proc/${this.pid}/ns/pid`); } catch (_) { /* gone */ }
      /* kill() came before we knew PID 1: kill it now, so the launcher
         (which waits for it) reports the machine's end */
      if (this.killRequested) this.kill();
      this.maybeStarted();
    } else if (word === 'started') {
      /* PID 1 writes this, the launcher writes "pid": they can arrive in
         either order; a machine is started once both are known */
      this.statusStarted = true;
      this.maybeStarted();
    } else if (word === 'exit') {
      const [code, sig] = rest.split(' ').map(Number);
      this.exitInfo = { code, signal: sig };
    } else if (word === 'error') {
      this.bootError = rest;
    }
  }

  maybeStarted() {
    if (this.started || !this.statusStarted || !this.pid || this.exited) return;
    this.started = true;
    this.startedAt = Date.now();
    this.emit('started');
  }

  onClose(code, signal, spawnError) {
    if (this.exited) return;
    this.exited = true;
    let info = this.exitInfo;
    if (!info) {
      /* PID 1 itself died (killed): report what the launcher saw */
      const sigNum = signal ? os.constants.signals[signal] || 9 : 0;
      info = { code: signal ? 128 + sigNum : (code == null ? 1 : code), signal: sigNum };
    }
    info.oomKilled = this.cg && this.cg.memory ? this.oomKills() > (this.oomBefore || 0) : false;
    info.bootError = this.started ? null : (this.bootError || (spawnError && spawnError.message) || 'machine exited during boot');
    info.startedAt = this.startedAt;
    this.exitInfo = info;
    const finish = () => {
      this.onExecsDone = null;
      this.emit('exit', info);
      /* The overlay died with the mount namespace; drop its directory. */
      fsp.rm(this.dir, { recursive: true, force: true }).catch(() => {});
    };
    /* An exec's nsenter lives outside the namespace: it exits once the
       kernel killed its child in there; wait for its reaping too. */
    if (this.execs.size) this.onExecsDone = finish;
    else finish();
  }

  execDone(child) {
    this.execs.delete(child);
    if (!this.execs.size && this.onExecsDone) this.onExecsDone();
  }

  oomKills() {
    const s = this.cg && this.cg.memory && readFileQuiet(path.join(this.cg.memory, 'memory.oom_control'));
    const m = s && /oom_kill (\d+)/.exec(s);
    return m ? Number(m[1]) : 0;
  }

  /* Host pids of every process in the machine, PID 1 first. */
  procs() {
    if (this.exited || !this.pid) return [];
    let candidates;
    const procsFile = this.cg && (this.cg.freezer || this.cg.memory);
    if (procsFile) {
      const s = readFileQuiet(path.join(procsFile, 'cgroup.procs')) || '';
      candidates = s.split('\n').filter(Boolean).map(Number);
    } else {
      candidates = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number);
    }
    const out = [this.pid];
    for (const p of candidates) {
      if (p === this.pid) continue;
      let ns;
      try { ns = fs.readlinkSync(`/proc/${p}/ns/pid`); } catch (_) { continue; }
      if (ns === this.pidns) out.push(p);
    }
    return out;
  }

  /* The main process: PID 1's first fork, so PID 2 inside the machine (host
     pids can wrap, and orphans adopted by PID 1 are its children too). */
  mainPid() {
    const kids = this.procs().map(readStat).filter((s) => s && s.ppid === this.pid);
    for (const k of kids) {
      const m = /NSpid:\s*([\d\s]+)/.exec(readFileQuiet(`/proc/${k.pid}/status`) || '');
      if (m && Number(m[1].trim().split(/\s+/).pop()) === 2) return k.pid;
    }
    kids.sort((a, b) => a.pid - b.pid);
    return kids.length ? kids[0].pid : 0;
  }

  signalMain(sig) {
    const p = this.mainPid();
    if (p) {
      try { process.kill(p, sig); } catch (_) { /* raced with exit */ }
    }
    return p;
  }

  kill() {
    if (this.exited) return;
    if (!this.pid) {
      /* Not booted far enough to know PID 1 (the "pid" status line kills
         it). Killing the launcher instead would let PID 1 die on its own
         (parent-death signal), after the launcher's exit was reported. */
      this.killRequested = true;
      return;
    }
    if (this.frozen) this.thaw();
    /* SIGKILL to a PID namespace's init kills the whole namespace */
    try { process.kill(this.pid, 'SIGKILL'); } catch (_) { /* gone */ }
  }

  freeze() {
    if (this.exited) return;
    if (this.cg && this.cg.freezer) {
      try {
        fs.writeFileSync(path.join(this.cg.freezer, 'freezer.state'), 'FROZEN');
        this.frozen = true;
        return;
      } catch (_) { /* fall back to signals */ }
    }
    for (const p of this.procs()) {
      try { process.kill(p, 'SIGSTOP'); } catch (_) { /* gone */ }
    }
    this.frozen = 'signals';
  }

  thaw() {
    if (!this.frozen) return;
    if (this.frozen === true) {
      try { fs.writeFileSync(path.join(this.cg.freezer, 'freezer.state'), 'THAWED'); } catch (_) { /* gone */ }
    } else {
      for (const p of this.procs()) {
        try { process.kill(p, 'SIGCONT'); } catch (_) { /* gone */ }
      }
    }
    this.frozen = false;
  }

  /* sshd listener(s) and every process below them (the sessions). */
  sshdTree() {
    const stats = this.procs().map(readStat).filter(Boolean);
    const byPid = new Map(stats.map((s) => [s.pid, s]));
    const roots = stats.filter((s) => s.comm === 'sshd' && !(byPid.get(s.ppid) && byPid.get(s.ppid).comm === 'sshd'));
    const out = [];
    const kids = new Map();
    for (const s of stats) {
      if (!kids.has(s.ppid)) kids.set(s.ppid, []);
      kids.get(s.ppid).push(s.pid);
    }
    const stack = roots.map((r) => r.pid);
    while (stack.length) {
      const p = stack.pop();
      out.push(p);
      for (const k of kids.get(p) || []) stack.push(k);
    }
    return { listeners: roots.map((r) => r.pid), all: out };
  }

  /* A path inside the machine's root, reachable from the host. */
  rootPath(p) {
    return `/proc/${this.pid}/root${p}`;
  }

  ps() {
    const tick = 100;
    const out = [];
    for (const p of this.procs()) {
      const s = readStat(p);
      if (!s) continue;
      const status = readFileQuiet(`/proc/${p}/status`) || '';
      const m = /NSpid:\s*([\d\s]+)/.exec(status);
      const nspid = m ? Number(m[1].trim().split(/\s+/).pop()) : p;
      let cmd = (readFileQuiet(`/proc/${p}/cmdline`) || '').split('\0').filter(Boolean).join(' ');
      if (!cmd) cmd = s.comm;
      let cwd = '';
      try { cwd = fs.readlinkSync(`/proc/${p}/cwd`); } catch (_) { /* gone */ }
      out.push({ pid: nspid, command: cmd, cpu: 0, directory: cwd, rss: s.rss * 4096,
        rtime: Math.round(((s.utime + s.stime) * 1e9) / tick), stime: Math.round((s.stime * 1e9) / tick),
        listen_sockets: [] });
    }
    return out;
  }

  /* Run argv inside the machine as root with env; buffered output. */
  exec(argv, { env, stdin, timeoutMs }) {
    return new Promise((resolve) => {
      if (this.exited || !this.pid) {
        resolve({ exit_code: 127, exit_signal: 0, stdout: '', stderr: 'machine is not running', timedOut: false });
        return;
      }
      const cgFiles = [this.cg && this.cg.memory, this.cg && this.cg.freezer].filter(Boolean)
        .map((d) => `'${path.join(d, 'cgroup.procs')}'`);
      /* Join the machine's cgroups first, so memory limits and freezing
         cover the command too. */
      const script = `for f in ${cgFiles.join(' ')}; do echo 0 > "$f" 2>/dev/null; done; exec ${NSENTER} "$@"`;
      const args = ['-c', script, 'sh', '-t', String(this.pid), '-m', '-u', '-i', '-p', '-r', '-w', '--', ...argv];
      const child = spawn('/bin/sh', args, { env: { ...env }, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
      /* a process of the machine until Node has reaped it */
      this.execs.add(child);
      let reaped = false;
      const onReaped = () => {
        if (reaped) return;
        reaped = true;
        this.execDone(child);
      };
      child.once('exit', onReaped);
      const out = [];
      const err = [];
      let outLen = 0;
      let errLen = 0;
      child.stdout.on('data', (d) => { if (outLen < EXEC_OUTPUT_CAP) { out.push(d); outLen += d.length; } });
      child.stderr.on('data', (d) => { if (errLen < EXEC_OUTPUT_CAP) { err.push(d); errLen += d.length; } });
      child.stdin.on('error', () => {});
      child.stdin.end(stdin || '');
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        try { process.kill(-child.pid, 'SIGKILL'); } catch (_) { /* gone */ }
      }, timeoutMs);
      child.on('error', (e) => {
        /* never spawned: there is nothing to reap */
        if (!child.pid) onReaped();
        clearTimeout(timer);
        resolve({ exit_code: 127, exit_signal: 0, stdout: '', stderr: String(e.message), timedOut: false });
      });
      /* Resolve when the command exits; a background process it left
         behind may hold the pipes open, so give them only a moment to drain. */
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        let pending = 2;
        const finish = () => {
          clearTimeout(drain);
          child.stdout.destroy();
          child.stderr.destroy();
          resolve({
            exit_code: code == null ? 128 + (os.constants.signals[signal] || 9) : code,
            exit_signal: signal ? os.constants.signals[signal] || 0 : 0,
            stdout: Buffer.concat(out).toString('utf8'),
            stderr: Buffer.concat(err).toString('utf8'),
            timedOut,
          });
        };
        const drain = setTimeout(finish, 100);
        const ended = () => { if (--pending === 0) finish(); };
        if (child.stdout.readableEnded) ended(); else child.stdout.once('end', ended);
        if (child.stderr.readableEnded) ended(); else child.stderr.once('end', ended);
      });
    });
  }
}

/* Write a host key into a machine and make its sshd reload it. */
async function newHostKey(dir) {
  const keyPath = path.join(dir, `hostkey-${crypto.randomBytes(4).toString('hex')}`);
  await new Promise((resolve, reject) => {
    execFile('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'fly-local', '-f', keyPath],
      (e) => (e ? reject(e) : resolve()));
  });
  const priv = await fsp.readFile(keyPath);
  const pub = (await fsp.readFile(`${keyPath}.pub`, 'utf8')).trim();
  await fsp.rm(keyPath, { force: true });
  await fsp.rm(`${keyPath}.pub`, { force: true });
  return { priv, pub };
}

/* Resolves once something on ip:port answers with an SSH banner. */
function waitSshBanner(ip, port, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const sock = net.connect({ host: ip, port });
      let done = false;
      const retry = (why) => {
        if (done) return;
        done = true;
        sock.destroy();
        if (Date.now() > deadline) return reject(new Error(`sshd on ${ip}:${port} not ready: ${why}`));
        /* refused while sshd starts: try again shortly */
        setTimeout(attempt, 5);
      };
      sock.setTimeout(Math.max(50, deadline - Date.now()), () => retry('timeout'));
      sock.once('error', (e) => retry(e.code));
      sock.once('data', (d) => {
        if (done) return;
        done = true;
        sock.destroy();
        if (d.toString('latin1').startsWith('SSH-')) resolve();
        else reject(new Error('not an SSH server'));
      });
      sock.once('end', () => retry('closed'));
    };
    attempt();
  });
}

module.exports = { Host, Run, mainArgv, newHostKey, waitSshBanner, SYS_PATH, readStat };
