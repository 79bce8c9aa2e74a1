'use strict'
// Cgroups of fly-local machines, on cgroup v1 (and hybrid) and v2 hosts.
//
// runc creates and enforces each boot's cgroup (memory with socket
// buffers, CPU quota, process count) at /<instance tag>/<machine id>/<boot seq>; this module checks
// before the first boot that the host can enforce those limits, finds the
// files fly-local reads itself (member pids, freezer, OOM kills counted on
// the machine's level, which outlives each boot) and removes the
// instance's tree.
const fs = require('fs')
const path = require('path')

const ROOT = '/sys/fs/cgroup'
const V2 = fs.existsSync(path.join(ROOT, 'cgroup.controllers'))
const NEEDED = ['memory', 'cpu', 'pids']

function readQuiet (p) {
  try { return fs.readFileSync(p, 'utf8') } catch (_) { return null }
}

/* The controllers that cannot be enforced here (empty when all can). */
function missingControllers () {
  if (V2) {
    const have = (readQuiet(path.join(ROOT, 'cgroup.controllers')) || '').trim().split(/\s+/)
    return NEEDED.filter((c) => !have.includes(c))
  }
  return NEEDED.filter((c) => !fs.existsSync(path.join(ROOT, c, 'cgroup.procs')))
}

/* The directory of a cgroup path for a v1 controller (or v2's one tree). */
function dirOf (controller, cgPath) {
  return V2 ? path.join(ROOT, cgPath) : path.join(ROOT, controller, cgPath)
}

function hasFreezer () {
  return V2 || fs.existsSync(path.join(ROOT, 'freezer', 'cgroup.procs'))
}

/* Can swap be limited too (memsw or memory.swap.max exists)? */
function swapLimitable () {
  if (V2) return ['init.scope', 'system.slice', 'user.slice'].some((d) => fs.existsSync(path.join(ROOT, d, 'memory.swap.max')))
  return fs.existsSync(path.join(ROOT, 'memory', 'memory.memsw.limit_in_bytes'))
}

/* Do socket buffers need a limit of their own? cgroup v2 charges them to
   memory.current with everything else; v1 counts them apart
   (memory.kmem.tcp.*) and only once that limit is set, where the kernel
   has it. */
function tcpLimitable () {
  return !V2 && fs.existsSync(path.join(ROOT, 'memory', 'memory.kmem.tcp.limit_in_bytes'))
}

function pids (cgPath) {
  const s = readQuiet(path.join(dirOf(V2 ? '' : 'pids', cgPath), 'cgroup.procs')) || ''
  return s.split('\n').filter(Boolean).map(Number)
}

function freeze (cgPath, on) {
  if (V2) fs.writeFileSync(path.join(ROOT, cgPath, 'cgroup.freeze'), on ? '1' : '0')
  else fs.writeFileSync(path.join(ROOT, 'freezer', cgPath, 'freezer.state'), on ? 'FROZEN' : 'THAWED')
}

/* OOM kills counted at and below cgPath (both versions count
   hierarchically). */
function oomKills (cgPath) {
  const s = V2
    ? readQuiet(path.join(ROOT, cgPath, 'memory.events'))
    : readQuiet(path.join(ROOT, 'memory', cgPath, 'memory.oom_control'))
  const m = s && /oom_kill (\d+)/.exec(s)
  return m ? Number(m[1]) : 0
}

function removeTree (dir) {
  let entries = []
  try { entries = fs.readdirSync(dir, { withFileTypes: true }) } catch (_) { return }
  for (const e of entries) if (e.isDirectory()) removeTree(path.join(dir, e.name))
  try { fs.rmdirSync(dir) } catch (_) { /* busy or gone */ }
}

/* Every hierarchy that may hold a directory named name at its top. */
function hierarchies () {
  if (V2) return [ROOT]
  let names = []
  try { names = fs.readdirSync(ROOT) } catch (_) { return [] }
  return names.map((n) => path.join(ROOT, n)).filter((d) => fs.existsSync(path.join(d, 'cgroup.procs')))
}

/* Kills every process left in an instance's cgroups (thawed first: a frozen
   task does not die).  For a dead instance's leftovers, whatever made them:
   a runtime whose state directory is gone cannot list them any more. */
function killAll (name) {
  for (const h of hierarchies()) killTree(path.join(h, name))
}

function killTree (dir) {
  let entries = []
  try { entries = fs.readdirSync(dir, { withFileTypes: true }) } catch (_) { return }
  for (const e of entries) if (e.isDirectory()) killTree(path.join(dir, e.name))
  for (const [file, thawed] of [['freezer.state', 'THAWED'], ['cgroup.freeze', '0']]) {
    try { fs.writeFileSync(path.join(dir, file), thawed) } catch (_) { /* not this version */ }
  }
  for (const pid of (readQuiet(path.join(dir, 'cgroup.procs')) || '').split('\n').filter(Boolean)) {
    try { process.kill(Number(pid), 'SIGKILL') } catch (_) { /* gone */ }
  }
}

function removeAll (name) {
  for (const h of hierarchies()) removeTree(path.join(h, name))
}

/* Top-level names in any hierarchy matching re (stale instances). */
function topNames (re) {
  const out = new Set()
  for (const h of hierarchies()) {
    let names = []
    try { names = fs.readdirSync(h) } catch (_) { continue }
    for (const n of names) if (re.test(n)) out.add(n)
  }
  return [...out]
}

module.exports = { V2, missingControllers, hasFreezer, swapLimitable, tcpLimitable, pids, freeze, oomKills, killAll, removeAll, topNames }
