'use strict'
// The egress policy (create({ network }), updateNetwork, getInfo().network)
// against fly-local, tried from inside the sandbox as its user, as an
// attacker would. The targets are a stand-in internet this test starts: a
// network namespace (test/helpers/outside.js) with servers on addresses
// the machines route to (test/fixtures/egress-internet.py: TCP, UDP echo,
// DNS), each reporting what reached it. The sandbox's resolver is pointed
// at the stand-in's DNS (COMPUTESDK_DNS_UPSTREAM). Every host change goes
// with the namespace's veth when the test ends.
const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('crypto')
const fs = require('fs')
const path = require('path')
const { spawn, execFile, execFileSync } = require('child_process')
const { startLocal, provider, rejects, call, sandboxIds } = require('./helpers/fly')
const { outsideNetwork } = require('./helpers/outside')

const IP = '/usr/sbin/ip'
const PROBE = fs.readFileSync(path.join(__dirname, 'fixtures', 'egress-probe.py'), 'utf8')
const FLOW = fs.readFileSync(path.join(__dirname, 'fixtures', 'egress-flow.py'), 'utf8')

function ip (args) {
  return new Promise((resolve, reject) => {
    execFile(IP, args, (err, _out, stderr) => err ? reject(new Error(`ip ${args.join(' ')}: ${stderr}`)) : resolve())
  })
}

// The stand-in internet: A (the namespace's end of the veth, also the DNS
// server the sandbox's resolver forwards to), D (a second address, for the
// names that are denied), and A6, D6 on a documentation /64 (not a private
// range, so machines' egress reaches it).
async function standIn (t) {
  const out = await outsideNetwork(t)
  const A = out.nsAddr
  // TEST-NET-2; a /32 another test holds already is skipped
  let D
  for (let i = 0; !D; i++) {
    const cand = `198.51.100.${crypto.randomInt(1, 255)}`
    try {
      await ip(['route', 'add', `${cand}/32`, 'via', A])
      D = cand
    } catch (e) {
      if (i >= 20) throw e
    }
  }
  await ip(['-n', out.ns, 'addr', 'add', `${D}/32`, 'dev', 'lo'])
  // groups without leading zeros: written as the resolver and Python write them
  const group = () => crypto.randomInt(0x1000, 0x10000).toString(16)
  const pfx = `2001:db8:${group()}:${group()}`
  const A6 = `${pfx}::2`
  const D6 = `${pfx}::d`
  await ip(['-6', 'addr', 'add', `${pfx}::1/64`, 'dev', out.hostIf, 'nodad'])
  await ip(['-n', out.ns, '-6', 'addr', 'add', `${A6}/64`, 'dev', out.nsIf, 'nodad'])
  await ip(['-n', out.ns, '-6', 'addr', 'add', `${D6}/64`, 'dev', out.nsIf, 'nodad'])
  const names = {
    'allowed.test': [A, A6],
    'x.allowed.test': [A],
    'denied.test': [D, D6],
    'other.test': [D]
  }
  const server = spawn(IP, ['netns', 'exec', out.ns, 'python3', path.join(__dirname, 'fixtures', 'egress-internet.py'),
    JSON.stringify(names), JSON.stringify([A, D, A6, D6])], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => server.kill('SIGKILL'))
  const seen = []
  let err = ''
  server.stderr.on('data', (d) => { err += d })
  await new Promise((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => reject(new Error(`the stand-in did not start: ${err}`)), 30000)
    server.on('exit', (code) => reject(new Error(`the stand-in exited (${code}): ${err}`)))
    server.stdout.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        if (line === 'ready') { clearTimeout(timer); resolve() } else if (line.startsWith('seen ')) seen.push(line.slice(5))
      }
    })
  })
  return { A, D, A6, D6, seen }
}

async function probe (sb, probes) {
  const r = await sb.runCommand('python3', ['/tmp/probe.py', JSON.stringify(probes)])
  assert.equal(r.exitCode, 0, r.stderr)
  return JSON.parse(r.stdout)
}

const failed = (v) => v !== 'ok' && !Array.isArray(v)

// Removes the guest's egress rules (from the host, in the machine's network
// namespace: the exec API's root has no CAP_NET_ADMIN), as an image that
// does not apply them would leave it: fly-local's host rules must hold.
async function dropGuestRules (srv, sb) {
  const { pid } = srv.machines().find((x) => x.id === sandboxIds(sb).machine)
  execFileSync('nsenter', ['-t', String(pid), '-n', 'nft', 'delete', 'table', 'inet', 'computesdk_egress'])
}

test('egress: a policy is normalised, and deny wins', () => {
  const { check } = require('../lib/egress')
  assert.deepEqual(check({
    allowOut: ['Example.COM.', '11.1.2.3/8', '2001:DB8:0:0::1', '::ffff:1.2.3.4/120', '198.51.100.7', 'a.bad.test', '*.bad.test', 'ok.test', 'ok.test'],
    denyOut: ['bad.test', '2001:db8::/32']
  }, 'create'), {
    internet: true,
    allowOut: ['example.com', '11.0.0.0/8', '2001:db8::1/128', '::ffff:102:300/120', '198.51.100.7/32', 'ok.test'],
    denyOut: ['bad.test', '2001:db8::/32']
  })
  // a wildcard deny leaves the name itself
  assert.deepEqual(check({ allowOut: ['x.test', 'a.x.test', '*.x.test'], denyOut: ['*.x.test'] }, 'create').allowOut, ['x.test'])
  assert.deepEqual(check({ internet: false }, 'create'), { internet: false, allowOut: [], denyOut: [] })
  assert.equal(check(undefined, 'create'), null)
})

test('egress: options are checked before anything is made', async (t) => {
  const srv = await startLocal(t)
  const p = provider(srv)
  for (const [network, says] of [
    [{ allowOut: ['10.0.0.1/33'] }, /not a valid CIDR/],
    [{ allowOut: ['10.1.0.0/16'] }, /stays closed/],
    [{ allowOut: ['169.254.169.254'] }, /stays closed/],
    [{ allowOut: ['fdaa::3'] }, /stays closed/],
    [{ denyOut: ['2001:db8::zz'] }, /not a valid CIDR/],
    [{ allowOut: ['bad..name'] }, /not a valid domain/],
    [{ allowOut: ['*'] }, /not a valid domain/],
    [{ allowOut: Array.from({ length: 65 }, (_, i) => `h${i}.example.com`) }, /at most 64/],
    [{ internet: 'no' }, /internet must be a boolean/],
    [{ allowout: [] }, /did you mean "allowOut"/],
    ['none', /network must be an object/]
  ]) {
    const err = await rejects(p.sandbox.create({ network }))
    assert.equal(err.code, 'ERR_INVALID_ARG', err.message)
    assert.match(err.message, says)
  }
  const list = await p.sandbox.list()
  assert.equal(list.length, 0, 'no machine was made')
})

test('egress: internet false, allow and deny lists, a live update, from inside the sandbox', async (t) => {
  const net = await standIn(t)
  const { A, D, A6, D6, seen } = net
  const srv = await startLocal(t)
  const p = provider(srv)
  const envs = { COMPUTESDK_DNS_UPSTREAM: A }
  const [closed, listed] = await Promise.all([
    p.sandbox.create({ envs, network: { internet: false } }),
    p.sandbox.create({ envs, network: { allowOut: ['allowed.test', '*.allowed.test', 'x.denied.test'], denyOut: ['denied.test', `${D6}`] } })
  ])
  // the machines go with fly-local (srv.stop)
  await Promise.all([closed, listed].map((sb) => sb.filesystem.writeFile('/tmp/probe.py', PROBE)))

  await t.test('internet: false lets nothing out', async () => {
    const before = seen.length
    const r = await probe(closed, [
      ['tcp', A, 8080], ['tcp', D, 443], ['udp', A, 9090], ['udp', A, 443],
      ['dns', 'allowed.test', A], ['resolve', 'allowed.test'],
      ['tcp', A6, 8080], ['udp', A6, 9090], ['tcp', '169.254.169.254', 80]
    ])
    assert.ok(r.every(failed), JSON.stringify(r))
    // refused by the guest's own rules (a reset, or EPERM from its output
    // chain), before the host's would answer (admin-prohibited: no route)
    assert.ok([0, 1, 2, 3, 6, 7].every((i) => /Connection refused|Operation not permitted/.test(r[i])), JSON.stringify(r))
    assert.deepEqual(seen.slice(before), [], 'nothing reached the stand-in')
    assert.deepEqual((await closed.getInfo()).network, { internet: false, allowOut: [], denyOut: [] })
    // fly-local's host side holds it without the guest's rules
    await dropGuestRules(srv, closed)
    const host = await probe(closed, [['tcp', A, 8080], ['udp', A, 9090], ['tcp', A6, 8080]])
    assert.ok(host.every((v) => /No route to host|Permission denied|unreachable/i.test(v)), JSON.stringify(host))
    assert.deepEqual(seen.slice(before), [], 'nothing reached the stand-in')
  })

  await t.test('the same probes get through once the policy is lifted (they can fail)', async () => {
    const t0 = process.hrtime.bigint()
    assert.deepEqual(await closed.updateNetwork({}), { internet: true, allowOut: [], denyOut: [] })
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    t.diagnostic(`updateNetwork (open) took ${ms.toFixed(0)} ms`)
    // (the machine's own resolver is back: it knows no test names)
    const r = await probe(closed, [
      ['tcp', A, 8080], ['tcp', D, 443], ['udp', A, 9090], ['udp', A, 443],
      ['dns', 'allowed.test', A], ['tcp', A6, 8080], ['udp', A6, 9090], ['tcp', A, 853]
    ])
    assert.deepEqual(r, ['ok', 'ok', 'ok', 'ok', [A], 'ok', 'ok', 'ok'])
    assert.deepEqual((await closed.getInfo()).network, { internet: true, allowOut: [], denyOut: [] })
  })

  await t.test('an open flow to a newly denied address is cut', async () => {
    await closed.filesystem.writeFile('/tmp/flow.py', FLOW)
    await closed.runCommand(`setsid nohup python3 /tmp/flow.py ${D} 9090 /tmp/go > /tmp/flow.out 2>&1 < /dev/null &`)
    const said = async (what) => {
      const deadline = Date.now() + 60000
      for (;;) {
        const out = await closed.runCommand('cat /tmp/flow.out 2>/dev/null; true')
        const line = out.stdout.split('\n').find((l) => l.startsWith(`${what} `))
        if (line) return line.slice(what.length + 1)
        assert.ok(Date.now() < deadline, `the flow never said ${what}: ${out.stdout}`)
        await new Promise((resolve) => setImmediate(resolve))
      }
    }
    assert.equal(await said('first'), 'ok')
    await closed.updateNetwork({ denyOut: [D] })
    await closed.runCommand('touch /tmp/go')
    assert.notEqual(await said('second'), 'ok')
  })

  await t.test('an allow-list of CIDRs holds on fly-local\'s host side too', async () => {
    await closed.updateNetwork({ allowOut: [A] })
    const guest = await probe(closed, [['tcp', A, 8080], ['tcp', D, 8080], ['tcp', A6, 8080]])
    await dropGuestRules(srv, closed)
    const host = await probe(closed, [['tcp', A, 8080], ['tcp', D, 8080], ['tcp', A6, 8080], ['udp', D, 443]])
    assert.equal(guest[0], 'ok')
    assert.ok(failed(guest[1]) && failed(guest[2]), JSON.stringify(guest))
    assert.equal(host[0], 'ok')
    assert.ok(host.slice(1).every(failed), JSON.stringify(host))
  })

  await t.test('an allow-list: the allowed name works, the denied one fails every way', async () => {
    const before = seen.length
    const r = await probe(listed, [
      ['resolve', 'allowed.test'], ['tcp', A, 8080], ['tcp', A6, 8080], ['udp', A, 443],
      ['resolve', 'x.allowed.test'],
      ['resolve', 'denied.test'], ['resolve', 'x.denied.test'], ['resolve', 'other.test'],
      ['dns', 'denied.test', A], ['dns', 'denied.test', D], ['tcp', A, 853],
      ['tcp', D, 8080], ['udp', D, 443], ['udp', D, 9090], ['tcp', D6, 8080], ['udp', D6, 9090]
    ])
    assert.deepEqual(r.slice(0, 5), [[A, A6].sort(), 'ok', 'ok', 'ok', [A]], JSON.stringify(r))
    assert.ok(r.slice(5).every(failed), JSON.stringify(r))
    // DNS over HTTPS to the denied address: no connection at all (curl 7)
    const doh = await listed.runCommand(`curl -sk --connect-timeout 5 -o /dev/null 'https://${D}/dns-query?dns=AAABAAABAAAAAAAABmRlbmllZAR0ZXN0AAABAAE'`)
    assert.equal(doh.exitCode, 7, doh.stderr)
    const got = seen.slice(before)
    assert.ok(!got.some((l) => l.endsWith(` ${D}`) || l.endsWith(` ${D6}`)), `the denied addresses were reached: ${got}`)
    const info = await listed.getInfo()
    assert.deepEqual(info.network, { internet: true, allowOut: ['allowed.test', '*.allowed.test'], denyOut: ['denied.test', `${D6}/128`] })
  })

  await t.test('a live updateNetwork holds for the next connection', async () => {
    const t0 = process.hrtime.bigint()
    await listed.updateNetwork({ allowOut: ['denied.test'] })
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    t.diagnostic(`updateNetwork (allow-list swap) took ${ms.toFixed(0)} ms`)
    // no waiting: the rules are in when updateNetwork resolves
    const r = await probe(listed, [['resolve', 'denied.test'], ['tcp', D, 8080], ['tcp', A, 8080], ['resolve', 'allowed.test']])
    assert.deepEqual(r[0], [D, D6].sort())
    assert.equal(r[1], 'ok')
    assert.ok(failed(r[2]) && failed(r[3]), JSON.stringify(r))
    // another provider instance sees the policy
    const other = await provider(srv, { appName: listed.sandboxId.split(':')[0] }).sandbox.getById(listed.sandboxId)
    assert.deepEqual((await other.getInfo()).network, { internet: true, allowOut: ['denied.test'], denyOut: [] })
  })

  await t.test('updateNetwork on a paused sandbox resumes it first', async () => {
    await listed.pause()
    await listed.updateNetwork({ allowOut: ['denied.test'], denyOut: [`${D6}`] })
    // the allowed name's addresses are known once resolved under the new policy
    const r = await probe(listed, [['resolve', 'denied.test'], ['tcp', D, 8080], ['tcp', D6, 8080]])
    assert.deepEqual(r[0], [D, D6].sort())
    assert.equal(r[1], 'ok')
    assert.ok(failed(r[2]), JSON.stringify(r))
  })

  await t.test('a restart keeps the updated policy, not create\'s', async () => {
    await listed.pause({ keepMemory: false })
    await listed.resume()
    await listed.filesystem.writeFile('/tmp/probe.py', PROBE)
    const r = await probe(listed, [['resolve', 'denied.test'], ['tcp', D, 8080], ['tcp', A, 8080], ['resolve', 'allowed.test']])
    assert.deepEqual(r[0], [D, D6].sort())
    assert.equal(r[1], 'ok')
    assert.ok(failed(r[2]) && failed(r[3]), JSON.stringify(r))
  })
})
