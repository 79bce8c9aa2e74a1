'use strict'
// Network probes run inside sandboxes (as the sandbox user, as hostile code
// would): servers to find, probes that say what answered.
const assert = require('node:assert/strict')
const crypto = require('crypto')

/* TCP (answers "hi") and UDP (echoes) on [::] (and 0.0.0.0) or the address
   in argv[3], as the sandbox user; says it is ready through a fifo the
   starter reads. */
const SERVE = `import socket, sys, threading
port, fifo = int(sys.argv[1]), sys.argv[2]
host = sys.argv[3] if len(sys.argv) > 3 else '::'
def sock(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    return s
t, u = sock(socket.SOCK_STREAM), sock(socket.SOCK_DGRAM)
t.listen(1024)
held = []
def tcp():
    while True:
        c = t.accept()[0]
        c.sendall(b'hi')
        held.append(c)
threading.Thread(target=tcp, daemon=True).start()
open(fifo, 'w').close()
while True:
    d, a = u.recvfrom(512)
    u.sendto(b'echo:' + d, a)
`

/* Probes [[host, port]] on TCP and UDP at once, each bounded by 2 s:
   { 'tcp host port': 'ok' (our server) | 'connected' (another one, sshd
   say) | error name, 'udp host port': 'ok' | 'answered' | error name }. */
const PROBE = `import json, socket, sys, threading
out = {}
def tcp(h, p):
    k = 'tcp %s %s' % (h, p)
    try:
        s = socket.create_connection((h, p), timeout=2)
        out[k] = 'ok' if s.recv(2) == b'hi' else 'connected'
        s.close()
    except OSError as e:
        out[k] = type(e).__name__
def udp(h, p):
    k = 'udp %s %s' % (h, p)
    try:
        fam, _, _, _, addr = socket.getaddrinfo(h, p, type=socket.SOCK_DGRAM)[0]
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(2)
        for _ in range(3):
            s.sendto(b'probe', addr)
        out[k] = 'ok' if s.recvfrom(512)[0].startswith(b'echo:') else 'answered'
    except OSError as e:
        out[k] = type(e).__name__
ts = [threading.Thread(target=f, args=(h, p)) for h, p in json.loads(sys.argv[1]) for f in (tcp, udp)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
`

/* Starts SERVE on port in the sandbox; resolves once it listens. */
async function serve (sb, port) {
  const fifo = `/tmp/serve-${crypto.randomBytes(4).toString('hex')}`
  const r = await sb.runCommand('sh', ['-c', 'mkfifo "$3" && { setsid python3 -c "$1" "$2" "$3" </dev/null >/dev/null 2>&1 & } && timeout 20 cat "$3"',
    'sh', SERVE, String(port), fifo])
  assert.equal(r.exitCode, 0, r.stderr)
}

async function probe (sb, targets) {
  const r = await sb.runCommand('python3', ['-c', PROBE, JSON.stringify(targets)])
  assert.equal(r.exitCode, 0, r.stderr)
  return JSON.parse(r.stdout)
}

/* Asserts every probe result is a failure (an error name, nothing that
   connected or answered). */
function assertUnreached (results, what) {
  for (const [k, v] of Object.entries(results)) {
    assert.ok(!['ok', 'connected', 'answered'].includes(v), `${k} reached (${v}) ${what || ''}`)
  }
}

module.exports = { serve, probe, assertUnreached, SERVE, PROBE }
