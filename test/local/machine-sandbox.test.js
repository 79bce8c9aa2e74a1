'use strict'
// fly-local machines are real sandboxes: files/env injection, SSH with the
// injected keys, isolation, persistence while running, reset on restart,
// exec inside the machine.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { localFixture, assertSchema, ssh, run, b64 } = require('../helpers/local')

const IMAGE = 'registry-1.docker.io/library/ubuntu:22.04'

const app = `rt-${process.pid}`
const fx = localFixture({ app, keys: ['key', 'hostKey'] })
const { api } = fx

const sandboxFiles = (extra = []) => [
  { guest_path: '/etc/computesdk/authorized_keys', raw_value: b64(fx.key.pub), mode: 0o644 },
  { guest_path: '/etc/computesdk/ssh_host_ed25519_key', raw_value: b64(fs.readFileSync(fx.hostKey.key, 'utf8')), mode: 0o600 },
  ...extra
]
const launch = async (config = {}, extra = {}) => {
  const r = await api('POST', `/v1/apps/${app}/machines`, {
    config: { image: IMAGE, files: sandboxFiles(), guest: { cpu_kind: 'shared', cpus: 1, memory_mb: 512 }, ...config },
    ...extra
  })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  const w = await api('GET', `/v1/apps/${app}/machines/${r.body.id}/wait?state=started&timeout=30`)
  assert.equal(w.status, 200, JSON.stringify(w.body))
  return r.body
}
const exec = async (m, command, extra = {}) => {
  const r = await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command, ...extra })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  assertSchema('ExecResult', r.body)
  return r.body
}
const sh = (m, script, extra) => exec(m, ['sh', '-c', script], extra)
const destroy = (m) => api('DELETE', `/v1/apps/${app}/machines/${m.id}?force=true`)

test('writes config.files with their modes and sets config.env and Fly variables', async () => {
  const m = await launch({
    env: { GREETING: 'hello world', QUOTED: 'a "b" $c \\d' },
    files: sandboxFiles([
      { guest_path: '/etc/app/config.json', raw_value: b64('{"x":1}\n'), mode: 0o640 },
      { guest_path: '/opt/deep/dir/run.sh', raw_value: b64('#!/bin/sh\necho ran\n'), mode: 0o755 },
      { guest_path: '/etc/app/binary', raw_value: Buffer.from([0, 1, 2, 255]).toString('base64') }
    ])
  })
  try {
    const r = await sh(m, 'stat -c "%a %n" /etc/app/config.json /opt/deep/dir/run.sh /etc/app/binary; cat /etc/app/config.json; /opt/deep/dir/run.sh; od -An -tx1 /etc/app/binary')
    assert.equal(r.exit_code, 0, r.stderr)
    assert.match(r.stdout, /^640 \/etc\/app\/config\.json\n755 \/opt\/deep\/dir\/run\.sh\n644 \/etc\/app\/binary\n\{"x":1\}\nran\n 00 01 02 ff\n$/)
    const env = await exec(m, ['env'])
    const vars = Object.fromEntries(env.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
    assert.equal(vars.GREETING, 'hello world')
    assert.equal(vars.QUOTED, 'a "b" $c \\d')
    assert.equal(vars.FLY_MACHINE_ID, m.id)
    assert.equal(vars.FLY_APP_NAME, app)
    assert.equal(vars.FLY_REGION, m.region)
    assert.equal(vars.FLY_PRIVATE_IP, m.private_ip)
    /* files never land on the host */
    assert.equal(fs.existsSync('/etc/app/config.json'), false)
    assert.equal(fs.existsSync('/opt/deep/dir/run.sh'), false)
    /* and the same environment reaches SSH sessions */
    await fx.srv.waitSsh(m.id)
    const s = await ssh(fx.key, m.private_ip, 'echo "$GREETING|$QUOTED|$FLY_MACHINE_ID|$FLY_APP_NAME|$FLY_REGION|$FLY_PRIVATE_IP|$HOME|$PATH|$NPM_CONFIG_PREFIX|$PIP_BREAK_SYSTEM_PACKAGES"')
    assert.equal(s.code, 0, s.stderr)
    const [greet, quoted, id, appName, region, ip, home, pathVar, npmPrefix, pip] = s.stdout.trim().split('|')
    assert.equal(greet, 'hello world')
    assert.equal(quoted, 'a "b" $c \\d')
    assert.equal(id, m.id)
    assert.equal(appName, app)
    assert.equal(region, m.region)
    assert.equal(ip, m.private_ip)
    assert.equal(home, '/home/sandbox')
    assert.match(pathVar, /^\/home\/sandbox\/\.local\/bin:\/home\/sandbox\/\.npm-global\/bin:(.*:)?\/usr\/local\/bin:(.*:)?\/usr\/bin:(.*:)?\/bin$/)
    assert.equal(npmPrefix, '/home/sandbox/.npm-global')
    assert.equal(pip, '1')
  } finally {
    await destroy(m)
  }
})

test('gives an SSH shell as sandbox with python3, node, pip and npm, pinned to the injected host key', async () => {
  const m = await launch()
  try {
    await fx.srv.waitSsh(m.id)
    const known = path.join(fx.key.dir, 'known_hosts')
    const hostPub = fs.readFileSync(`${fx.hostKey.key}.pub`, 'utf8').trim().split(' ').slice(0, 2).join(' ')
    fs.writeFileSync(known, `[${m.private_ip}]:2222 ${hostPub}\n`)
    const s = await ssh(fx.key, m.private_ip, 'id -un; id -u; pwd; test -d ~/workspace && echo ws; command -v python3; python3 -c "print(6*7)"; node -e "console.log(process.version)"; python3 -m pip --version >/dev/null && echo pip; npm --version >/dev/null && echo npm; hostname',
      { knownHosts: known })
    assert.equal(s.code, 0, s.stderr)
    const lines = s.stdout.trim().split('\n')
    assert.equal(lines[0], 'sandbox')
    assert.ok(Number(lines[1]) >= 1000)
    assert.equal(lines[2], '/home/sandbox')
    assert.equal(lines[3], 'ws')
    assert.equal(lines[4], '/usr/bin/python3')
    assert.equal(lines[5], '42')
    assert.match(lines[6], /^v20\./)
    assert.equal(lines[7], 'pip')
    assert.equal(lines[8], 'npm')
    assert.equal(lines[9], m.id)
    /* root login is refused; a wrong host key is refused */
    const root = await ssh(fx.key, m.private_ip, 'true', { user: 'root' })
    assert.notEqual(root.code, 0)
    fs.writeFileSync(known, `[${m.private_ip}]:2222 ${fs.readFileSync(`${fx.key.key}.pub`, 'utf8').trim().split(' ').slice(0, 2).join(' ')}\n`)
    const wrong = await ssh(fx.key, m.private_ip, 'true', { knownHosts: known })
    assert.notEqual(wrong.code, 0)
    /* sftp works */
    const sftp = await run('sftp', ['-i', fx.key.key, '-P', '2222', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
      '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-b', '-', `sandbox@[${m.private_ip}]`],
    { input: 'put /etc/hostname workspace/from-host\nls workspace\n' })
    assert.equal(sftp.code, 0, sftp.stderr)
    assert.match(sftp.stdout, /from-host/)
    /* pip --user style installs go to the sandbox user's home */
    const pip = await ssh(fx.key, m.private_ip, 'python3 -c "import site,sys; print(site.getusersitepackages())"')
    assert.match(pip.stdout, /^\/home\/sandbox\/\.local\/lib\/python3/)
  } finally {
    await destroy(m)
  }
})

test('enables password login only when ssh_password is injected', async () => {
  const withPw = await launch({ files: sandboxFiles([{ guest_path: '/etc/computesdk/ssh_password', raw_value: b64('sandbox\n'), mode: 0o600 }]) })
  const without = await launch()
  try {
    await fx.srv.waitSsh(withPw.id)
    await fx.srv.waitSsh(without.id)
    const askpass = path.join(fx.key.dir, 'askpass.sh')
    fs.writeFileSync(askpass, '#!/bin/sh\necho sandbox\n', { mode: 0o700 })
    const pwSsh = (ip) => run('ssh', ['-p', '2222', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
      '-o', 'LogLevel=ERROR', '-o', 'PubkeyAuthentication=no', '-o', 'PreferredAuthentications=password',
      '-o', 'NumberOfPasswordPrompts=1', `sandbox@${ip}`, 'echo pw-ok'],
    { env: { ...process.env, SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: 'force', DISPLAY: ':0' } })
    const ok = await pwSsh(withPw.private_ip)
    assert.equal(ok.code, 0, ok.stderr)
    assert.equal(ok.stdout.trim(), 'pw-ok')
    const refused = await pwSsh(without.private_ip)
    assert.notEqual(refused.code, 0)
  } finally {
    await destroy(withPw)
    await destroy(without)
  }
})

test('isolates machines: files, /tmp, processes, hostnames', async () => {
  const [a, b] = await Promise.all([launch(), launch()])
  try {
    const w = await sh(a, 'echo secret-a > /root/only-a; echo tmp-a > /tmp/only-a; echo shm > /dev/shm/only-a; sleep 1000 >/dev/null 2>&1 & echo started')
    assert.equal(w.exit_code, 0, w.stderr)
    const r = await sh(b, 'ls /root/only-a /tmp/only-a /dev/shm/only-a 2>&1; hostname; ps -eo comm= | sort | uniq -c')
    assert.match(r.stdout, /No such file or directory[\s\S]*No such file or directory[\s\S]*No such file or directory/)
    assert.match(r.stdout, new RegExp(b.id))
    assert.doesNotMatch(r.stdout, /sleep/)
    assert.doesNotMatch(r.stdout, /node/)
    const pid1 = await sh(b, 'cat /proc/1/cmdline | tr "\\0" " "')
    assert.match(pid1.stdout, /^\/usr\/bin\/tini /)
    const aSees = await sh(a, 'cat /root/only-a /tmp/only-a; ps -eo stat=,comm= | grep -v "^Z" | grep -c " sleep$"')
    assert.equal(aSees.stdout, 'secret-a\ntmp-a\n1\n')
    /* nothing reached the host */
    assert.equal(fs.existsSync('/root/only-a'), false)
    assert.equal(fs.existsSync('/tmp/only-a'), false)
    /* and a machine cannot see the host's other processes' cwd nor mounts */
    const mounts = await sh(a, 'cat /proc/mounts')
    assert.doesNotMatch(mounts.stdout, new RegExp(b.id))
    assert.match(mounts.stdout, /^overlay \/ overlay/m)
  } finally {
    await destroy(a)
    await destroy(b)
  }
})

test('keeps state across commands while running and resets the root on restart', async () => {
  const m = await launch()
  try {
    await sh(m, 'echo persisted > /etc/marker; echo t > /tmp/marker; mkdir -p /home/sandbox/workspace/p && echo 1 > /home/sandbox/workspace/p/f')
    await fx.srv.waitSsh(m.id)
    const s = await ssh(fx.key, m.private_ip, 'cat /etc/marker /tmp/marker workspace/p/f')
    assert.equal(s.stdout, 'persisted\nt\n1\n')
    const again = await sh(m, 'cat /etc/marker')
    assert.equal(again.stdout, 'persisted\n')
    const pidBefore = fx.srv.machines().find((x) => x.id === m.id).pid
    const rs = await api('POST', `/v1/apps/${app}/machines/${m.id}/restart?signal=SIGTERM&timeout=5`)
    assert.equal(rs.status, 200)
    /* restarting -> started */
    const w = await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=started&timeout=30`)
    assert.equal(w.status, 200)
    const pidAfter = fx.srv.machines().find((x) => x.id === m.id).pid
    assert.notEqual(pidAfter, pidBefore)
    const gone = await sh(m, 'ls /etc/marker /tmp/marker /home/sandbox/workspace/p 2>&1; cat /etc/computesdk/authorized_keys')
    assert.match(gone.stdout, /\/etc\/marker'?: No such file[\s\S]*\/tmp\/marker'?: No such file[\s\S]*workspace\/p'?: No such file/)
    /* injected files are written again on every start */
    assert.equal(gone.stdout.trim().split('\n').pop(), fx.key.pub.trim())
    /* stop + start resets too */
    await sh(m, 'echo 2 > /etc/marker2')
    assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/stop`)).status, 200)
    assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=stopped&version=${m.version}&timeout=30`)).status, 200)
    assert.equal((await api('POST', `/v1/apps/${app}/machines/${m.id}/start`)).body.previous_state, 'stopped')
    assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=started&timeout=30`)).status, 200)
    const r2 = await sh(m, 'test -e /etc/marker2; echo $?')
    assert.equal(r2.stdout, '1\n')
  } finally {
    await destroy(m)
  }
})

test('exec returns the real exit code, signal, stdout, stderr; takes stdin and cmd strings; times out with 408', async () => {
  const m = await launch({ env: { EXEC_VAR: 'from-config' } })
  try {
    const r = await sh(m, 'echo out; echo err >&2; echo "$EXEC_VAR $FLY_MACHINE_ID"; id -u; exit 7')
    assert.deepEqual(r, { exit_code: 7, exit_signal: 0, stdout: `out\nfrom-config ${m.id}\n0\n`, stderr: 'err\n' })
    const k = await sh(m, 'kill -KILL $$')
    assert.equal(k.exit_signal, 9)
    assert.equal(k.exit_code, 137)
    const stdin = await exec(m, ['cat'], { stdin: 'piped input' })
    assert.equal(stdin.stdout, 'piped input')
    const cmd = await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { cmd: "sh -c 'echo \"a b\"; exit 2'" })
    assert.equal(cmd.status, 200)
    assert.equal(cmd.body.stdout, 'a b\n')
    assert.equal(cmd.body.exit_code, 2)
    const missing = await exec(m, ['/no/such/binary'])
    assert.notEqual(missing.exit_code, 0)
    const t0 = Date.now()
    const slow = await api('POST', `/v1/apps/${app}/machines/${m.id}/exec`, { command: ['sleep', '30'], timeout: 1 })
    assert.equal(slow.status, 408)
    assert.match(slow.body.error, /^deadline_exceeded: /)
    assert.ok(Date.now() - t0 < 10000)
    const left = await sh(m, 'ps -eo stat=,comm= | grep -v "^Z" | grep -c " sleep$" || true')
    assert.equal(left.stdout.trim(), '0')
    const ps = await api('GET', `/v1/apps/${app}/machines/${m.id}/ps`)
    assert.equal(ps.status, 200)
    assertSchema('ProcessList', ps.body)
    assert.ok(ps.body.some((p) => p.pid === 1))
    assert.ok(ps.body.some((p) => /sshd/.test(p.command)))
  } finally {
    await destroy(m)
  }
})

test('destroy leaves no process, mount, directory or listener behind', async () => {
  const m = await launch()
  await fx.srv.waitSsh(m.id)
  const { pid } = fx.srv.machines().find((x) => x.id === m.id)
  const procs = (await sh(m, 'ls /proc | grep -c "^[0-9]"')).stdout.trim()
  assert.ok(Number(procs) >= 3)
  assert.equal((await destroy(m)).status, 200)
  assert.equal((await api('GET', `/v1/apps/${app}/machines/${m.id}/wait?state=destroyed&timeout=10`)).status, 200)
  assert.equal(fs.existsSync(`/proc/${pid}`), false)
  const mounts = fs.readFileSync('/proc/mounts', 'utf8')
  assert.doesNotMatch(mounts, new RegExp(m.id))
  const dirs = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith(`fly-local-${process.pid}-`))
  for (const d of dirs) assert.equal(fs.existsSync(path.join(os.tmpdir(), d, m.id)), false)
  const r = await run('ssh-keyscan', ['-p', '2222', '-T', '2', m.private_ip])
  assert.equal(r.stdout.trim(), '')
})
