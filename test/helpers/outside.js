'use strict'
// An "outside" network for tests: a network namespace joined to the host
// by one veth pair on a random /30 of 198.18.0.0/15 (the benchmarking
// range), with no other route. From it, fly-local started on the host side
// address (start({ host })) answers on its API and edge; the machines'
// private addresses (the emulated 6PN) have no route, as from a laptop.
// The namespace and the veth go when the test ends, however it ends.
const crypto = require('crypto')
const { execFile } = require('child_process')

const IP = '/usr/sbin/ip'

function run (cmd, args, opts = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 16 << 20, ...opts }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr, signal: err && err.signal })
    })
  })
}

async function must (args) {
  const r = await run(IP, args)
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`)
}

// { ns, hostAddr, nsAddr, hostIf, nsIf, exec(cmd, args, opts) } ; removed by t.after.
async function outsideNetwork (t) {
  const tag = crypto.randomBytes(3).toString('hex')
  const ns = `fl-out-${tag}`
  const hostIf = `flo${tag}h`
  const nsIf = `flo${tag}n`
  // a random /30 in 198.18.0.0/15: 2^15 of them
  const base = crypto.randomInt(0, 1 << 15) * 4
  const quad = (n) => `198.${18 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`
  const hostAddr = quad(base + 1)
  const nsAddr = quad(base + 2)
  const cleanup = async () => {
    await run(IP, ['netns', 'del', ns])
    await run(IP, ['link', 'del', hostIf])
  }
  t.after(cleanup)
  try {
    await must(['netns', 'add', ns])
    await must(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf, 'netns', ns])
    await must(['addr', 'add', `${hostAddr}/30`, 'dev', hostIf])
    await must(['link', 'set', hostIf, 'up'])
    await must(['-n', ns, 'addr', 'add', `${nsAddr}/30`, 'dev', nsIf])
    await must(['-n', ns, 'link', 'set', nsIf, 'up'])
    await must(['-n', ns, 'link', 'set', 'lo', 'up'])
  } catch (e) {
    await cleanup()
    throw e
  }
  return {
    ns,
    hostAddr,
    nsAddr,
    hostIf,
    nsIf,
    // cmd run inside the namespace
    exec: (cmd, args, opts) => run(IP, ['netns', 'exec', ns, cmd, ...args], opts),
    addRoute: (dst) => must(['-n', ns, 'route', 'add', dst, 'via', hostAddr]),
    // an IPv6 pair on the veth (a random ULA /64) and a route to dst by it
    async addRoute6 (dst) {
      const pfx = `fd${crypto.randomBytes(1).toString('hex')}:${crypto.randomBytes(2).toString('hex')}:${crypto.randomBytes(2).toString('hex')}`
      await must(['-6', 'addr', 'add', `${pfx}::1/64`, 'dev', hostIf, 'nodad'])
      await must(['-n', ns, '-6', 'addr', 'add', `${pfx}::2/64`, 'dev', nsIf, 'nodad'])
      await must(['-n', ns, '-6', 'route', 'add', dst, 'via', `${pfx}::1`])
    }
  }
}

module.exports = { outsideNetwork }
