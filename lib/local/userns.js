'use strict'
// Each boot's user namespace, owned by a host uid of its own rather than by
// host root.
//
// The kernel charges what a user namespace's processes hold per user
// (inotify instances and watches, user namespaces, ...) to their uid in
// that namespace and again, in every ancestor, to the uid that owns each
// namespace on the way up, against that ancestor's limits. A user namespace
// the OCI runtime creates (as root) is owned by host root, so a sandbox's
// inotify instances counted against root's fs.inotify.max_user_instances
// (128 by default): one sandbox could exhaust it, and host root's next
// inotify_init1 failed.
//
// So the namespace is made by a holder process running as an owner uid
// (OWNER_BASE + n, one per boot, outside the machines' id range and held
// by nothing else: a process of the owner uid in the host's namespace would
// have every capability inside), host root writes its id maps (the same
// ID_BASE range as before), the runtime joins it by path (container.js),
// and the holder exits once the container holds the namespace (a couple
// are made ahead of the boots that take them). Each boot
// then has the host's per-user budgets of its own, charged to an uid that
// is nobody's.
const { spawn } = require('child_process')
const fs = require('fs')
const { ID_BASE, ID_COUNT } = require('./image')
const { Ready } = require('./ready')

const OWNER_BASE = ID_BASE + ID_COUNT
const OWNER_COUNT = 65536
const HOLD_TIMEOUT_MS = 10000
const SYS_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' }

/* Owner uids, one per boot, from a random start per instance (two
   instances sharing one only share its budgets). */
class Owners {
  constructor () {
    this.next = Math.floor(Math.random() * OWNER_COUNT)
  }

  take () {
    const uid = OWNER_BASE + this.next
    this.next = (this.next + 1) % OWNER_COUNT
    return uid
  }
}

/* A user namespace owned by uid with the machines' id maps; resolves to
   { path, release } (release ends the holder: call it once the runtime has
   joined, or on failure). The holder dies with fly-local (pdeathsig). */
function hold (uid) {
  return new Promise((resolve, reject) => {
    /* unshare prints nothing: the holder's echo says it is inside */
    const child = spawn('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--pdeathsig', 'KILL', '--',
      'unshare', '--user', '--', '/bin/sh', '-c', 'echo; read x'], { stdio: ['pipe', 'pipe', 'ignore'], env: SYS_ENV })
    let settled = false
    const release = () => {
      child.stdin.destroy()
      try { child.kill('SIGKILL') } catch (_) { /* gone */ }
    }
    const fail = (e) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      release()
      reject(e)
    }
    const timer = setTimeout(() => fail(new Error('the user namespace holder did not start in time')), HOLD_TIMEOUT_MS)
    child.on('error', fail)
    child.on('exit', (code) => fail(new Error(`the user namespace holder exited (${code})`)))
    child.stdin.on('error', () => {})
    child.stdout.once('data', () => {
      if (settled) return
      try {
        const map = `0 ${ID_BASE} ${ID_COUNT}\n`
        fs.writeFileSync(`/proc/${child.pid}/uid_map`, map)
        fs.writeFileSync(`/proc/${child.pid}/gid_map`, map)
      } catch (e) {
        fail(new Error(`cannot map the user namespace: ${e.message}`))
        return
      }
      settled = true
      clearTimeout(timer)
      child.stdout.destroy()
      resolve({ path: `/proc/${child.pid}/ns/user`, release })
    })
  })
}

/* User namespaces made ahead of the boots (a holder takes ~8 ms to start),
   each with an owner of its own. */
function pool () {
  const owners = new Owners()
  return new Ready(() => hold(owners.take()), (h) => h.release())
}

module.exports = { pool, hold, OWNER_BASE, OWNER_COUNT }
