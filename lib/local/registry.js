'use strict'
// Where a running fly-local tells the provider about itself, so that a
// program with no Fly token finds it: the CLI writes { url, token, pid }
// (mode 0600, in a 0700 root directory: the token is a credential) while it
// runs and removes it on exit.  Read by lib/target.js; tiny on purpose, so
// the provider does not load the emulator to read it.
const fs = require('fs')
const path = require('path')

function registryPath () {
  return process.env.FLY_LOCAL_REGISTRY || '/run/fly-local/instance.json'
}

function alive (pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM'
  }
}

// The registered instance, or { error } saying why there is none usable.
function read () {
  const file = registryPath()
  let text
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    return { file, error: err.code === 'EACCES' ? 'unreadable' : 'missing' }
  }
  let r
  try {
    r = JSON.parse(text)
  } catch {
    return { file, error: 'garbled' }
  }
  if (!r || typeof r.url !== 'string' || typeof r.token !== 'string' || !Number.isInteger(r.pid)) {
    return { file, error: 'garbled' }
  }
  if (!alive(r.pid)) return { file, error: 'stale' }
  return { file, instance: r }
}

// Registers this process's instance; returns the function that removes
// it (only if it is still ours).  Another live instance keeps its entry.
function register (instance) {
  const file = registryPath()
  const cur = read()
  if (cur.instance && cur.instance.pid !== process.pid) return () => {}
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
  const tmp = `${file}.${process.pid}.tmp`
  fs.writeFileSync(tmp, JSON.stringify({ ...instance, pid: process.pid }), { mode: 0o600 })
  fs.renameSync(tmp, file)
  return () => {
    const now = read()
    if (now.instance && now.instance.pid === process.pid) fs.rmSync(file, { force: true })
  }
}

module.exports = { registryPath, read, register }
