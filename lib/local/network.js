'use strict'
// fly-local's private network: Fly's 6PN, emulated with one network
// namespace per machine.
//
// Each machine gets fdaa:0:<r>:<net>::<n> (a ULA in the 6PN range; <r> is
// random per fly-local instance, <net> numbers the app networks) and, for
// IPv4 egress only, 100.<x>.<y>.<4n+2>/30. The host side of its veth is
// fe80::1 and 100.<x>.<y>.<4n+1>. One nftables table per instance:
//   raw      (prerouting, before connection tracking) a packet from a
//            machine whose source is not that machine's own address is
//            dropped (IP_FREEBIND/IPV6_FREEBIND need no capability), but
//            for neighbour discovery from link-local or unspecified ones;
//   input    nothing from a machine reaches the host itself (its loopback,
//            its addresses, the fly-local API) except replies to flows the
//            host opened;
//   forward  traffic into a machine belongs to a flow the host or a
//            machine that passed the source check opened (a conntrack
//            mark bit); machines of the org's default network reach no
//            other machine (what the sandbox image's in-guest firewall
//            does on Fly); the machines of an app created with its own
//            `network` reach each other and no one else; egress (NAT)
//            only for machines that have it, never to metadata services
//            (169.254.0.0/16, 100.100.100.200, fd00:ec2::254, fe80::/10)
//            and, unless allowPrivateEgress, not to private ranges (RFC
//            1918, CGNAT, ULA) but for the host's DNS resolvers on port
//            53; each machine holds at most flowsMax tracked flows at once;
//            a machine whose metadata holds an egress policy (the
//            provider's computesdk_network, which the guest enforces
//            itself, docker/egress) gets its address part here too, in a
//            chain of its own (egress map): internet false refuses all its
//            egress, denied CIDRs are refused, and an allow-list of CIDRs
//            only (no names: their addresses are the guest resolver's to
//            know) refuses everything else; so it holds even in an image
//            that does not apply it;
//   nat      masquerade of egress.
// Addresses come from a counter, never from probing: nothing a sandbox does
// can make a later allocation fail.
const { execFile, spawnSync } = require('child_process')
const crypto = require('crypto')
const net = require('net')
const fs = require('fs')
const path = require('path')

const IP = fs.existsSync('/usr/sbin/ip') ? '/usr/sbin/ip' : 'ip'
const NFT = fs.existsSync('/usr/sbin/nft') ? '/usr/sbin/nft' : 'nft'
/* one /30 each in the instance's /18 */
const MAX_MACHINES = 4000
const SYSCTLS = ['/proc/sys/net/ipv4/ip_forward', '/proc/sys/net/ipv6/conf/all/forwarding']
/* Forwarding instances register here; the last one out restores the values
   found by the first one in. */
const SHARED_DIR = '/run/fly-local/forwarding'

function runTool (cmd, args, input) {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 20000 }, (e, stdout, stderr) => {
      if (e) reject(new Error(`${path.basename(cmd)} ${args.join(' ')}: ${toolFailure(e, stderr)}`))
      else resolve(stdout)
    })
    /* a tool that dies before reading its input (nft segfaulting) is
       reported by its exit, not by an EPIPE thrown from here */
    child.stdin.on('error', () => {})
    if (input != null) child.stdin.end(input)
  })
}

/* What a failed tool said, or, when it said nothing (Debian 12's nft 1.0.6
   segfaults on tables Debian 13's nft wrote in the same namespace), how it
   ended. */
function toolFailure (e, stderr) {
  const said = String(stderr || '').trim()
  const how = e.killed ? 'timed out' : e.signal ? `killed by ${e.signal}` : typeof e.code === 'number' ? `exit status ${e.code}` : e.message
  return said ? `${said} (${how})` : `${how}, nothing on stderr`
}

function pidAlive (pid) {
  try { process.kill(pid, 0); return true } catch (e) { return e.code === 'EPERM' }
}

function readQuiet (p) {
  try { return fs.readFileSync(p, 'utf8').trim() } catch (_) { return null }
}

/* Turn forwarding on while any fly-local instance needs it. */
function forwardingOn (tag) {
  fs.mkdirSync(SHARED_DIR, { recursive: true, mode: 0o700 })
  const orig = path.join(SHARED_DIR, 'orig.json')
  const live = fs.readdirSync(SHARED_DIR).filter((n) => /^\d+-/.test(n) && pidAlive(Number(n.split('-')[0])))
  if (!live.length || !fs.existsSync(orig)) {
    const saved = {}
    for (const s of SYSCTLS) saved[s] = readQuiet(s)
    /* with forwarding on, the kernel ignores router advertisements on
       interfaces with accept_ra=1: keep them accepted (2) */
    for (const n of fs.readdirSync('/proc/sys/net/ipv6/conf')) {
      const p = `/proc/sys/net/ipv6/conf/${n}/accept_ra`
      if (n !== 'all' && n !== 'default' && readQuiet(p) === '1') saved[p] = '1'
    }
    fs.writeFileSync(orig, JSON.stringify(saved))
  }
  fs.writeFileSync(path.join(SHARED_DIR, `${process.pid}-${tag}`), '')
  const saved = JSON.parse(fs.readFileSync(orig, 'utf8'))
  for (const p of Object.keys(saved)) {
    try { fs.writeFileSync(p, p.endsWith('accept_ra') ? '2' : '1') } catch (_) { /* gone interface */ }
  }
}

function forwardingOff (tag, pid) {
  try { fs.rmSync(path.join(SHARED_DIR, `${pid}-${tag}`), { force: true }) } catch (_) { /* none */ }
  let names = []
  try { names = fs.readdirSync(SHARED_DIR) } catch (_) { return }
  if (names.some((n) => /^\d+-/.test(n) && pidAlive(Number(n.split('-')[0])))) return
  const orig = path.join(SHARED_DIR, 'orig.json')
  const saved = readQuiet(orig)
  if (!saved) return
  for (const [p, v] of Object.entries(JSON.parse(saved))) {
    try { if (v != null) fs.writeFileSync(p, v) } catch (_) { /* gone interface */ }
  }
  fs.rmSync(orig, { force: true })
  /* dead instances' registrations stay: sweepStale removes their tables */
}

/* Ranges no machine's egress reaches: cloud metadata services (AWS's,
   GCP's and Azure's 169.254.169.254, AWS's IPv6 fd00:ec2::254, Alibaba's
   100.100.100.200) and link-local addresses. */
const METADATA4 = ['169.254.0.0/16', '100.100.100.200']
const METADATA6 = ['fe80::/10', 'fd00:ec2::254']
/* The host's private ranges (its LAN, a VPC, a carrier's CGNAT), closed to
   egress unless allowPrivateEgress: RFC 1918, RFC 6598, RFC 4193. */
const PRIVATE4 = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10']
const PRIVATE6 = ['fc00::/7']
/* A bit of the conntrack mark: the flow was opened by a fly-local machine
   whose source was checked. Traffic into a machine in an established flow
   must carry it: a flow that a spoofing source elsewhere (a LAN peer that
   routes through this host, an older fly-local) opened in a machine's name
   gets no replies into it. */
const CHECKED = '0x00100000'
/* tracked flows a machine may hold at once (FLY_LOCAL_FLOWS_MAX) */
const DEFAULT_FLOWS_MAX = 1024

/* The host's DNS resolvers (the machines get the same resolv.conf): port 53
   on them stays open when private egress is closed. */
function resolvers () {
  const out = { v4: [], v6: [] }
  for (const l of (readQuiet('/etc/resolv.conf') || '').split('\n')) {
    const m = /^\s*nameserver\s+([0-9a-fA-F:.]+)\s*$/.exec(l)
    if (!m || /^(127\.|::1$|fe80:)/i.test(m[1])) continue
    out[m[1].includes(':') ? 'v6' : 'v4'].push(m[1])
  }
  return out
}

function elements (list) {
  return list.length ? ` elements = { ${list.join(', ')} };` : ''
}

class Network {
  /* Sets up the instance's table and forwarding; tag: 4 hex digits.
     opts: egress (the default of machines without config.egress),
     allowPrivateEgress, flowsMax. */
  static async create ({ egress = true, allowPrivateEgress = false, flowsMax = DEFAULT_FLOWS_MAX } = {}) {
    if (!Number.isInteger(flowsMax) || flowsMax <= 0) throw new TypeError('flowsMax must be a positive integer')
    const n = new Network()
    n.tag = crypto.randomBytes(2).toString('hex')
    const r = crypto.randomBytes(4)
    n.v6prefix = `fdaa:0:${r.readUInt16BE(0).toString(16)}`
    /* 100.64.0.0/10, one /18 per instance (4096 /30s), reserved */
    const block = reserveBlock(r.readUInt16BE(2) % 256)
    n.block = block
    n.v4 = [100, 64 + (block >> 2), (block & 3) << 6]
    n.egressDefault = egress
    n.allowPrivateEgress = !!allowPrivateEgress
    n.flowsMax = flowsMax
    n.next = 1
    n.networks = new Map()
    n.byIp = new Map()
    n.table = `fly_local_${n.tag}`
    await runTool(NFT, ['-f', '-'], n.tableRules())
    forwardingOn(n.tag)
    return n
  }

  ifPrefix () { return `fl${this.tag}` }

  tableRules () {
    const ifs = `"${this.ifPrefix()}*"`
    const dns = resolvers()
    const nd = 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }'
    const closed = this.allowPrivateEgress ? '' : '\n    ip daddr @private4 drop\n    ip6 daddr @private6 drop'
    return `table inet ${this.table} {
  set noegress { type ifname; }
  set src6 { type ifname . ipv6_addr; }
  set src4 { type ifname . ipv4_addr; }
  set flows { type ifname; size 65535; flags dynamic; }
  set metadata4 { type ipv4_addr; flags interval;${elements(METADATA4)} }
  set metadata6 { type ipv6_addr; flags interval;${elements(METADATA6)} }
  set private4 { type ipv4_addr; flags interval;${elements(PRIVATE4)} }
  set private6 { type ipv6_addr; flags interval;${elements(PRIVATE6)} }
  set dns4 { type ipv4_addr;${elements(dns.v4)} }
  set dns6 { type ipv6_addr;${elements(dns.v6)} }
  map egress { type ifname : verdict; }
  chain raw {
    type filter hook prerouting priority raw; policy accept;
    iifname != ${ifs} accept
    iifname . ip6 saddr @src6 accept
    iifname . ip saddr @src4 accept
    ip6 saddr { ::, fe80::/10 } ${nd} accept
    drop
  }
  chain input {
    type filter hook input priority -5; policy accept;
    iifname ${ifs} ct direction reply ct state established,related accept
    iifname ${ifs} ${nd} accept
    iifname ${ifs} drop
  }
  chain forward {
    type filter hook forward priority -5; policy accept;
    iifname ${ifs} jump from_machine
    oifname ${ifs} ct state established,related ct mark and ${CHECKED} != 0 accept
    oifname ${ifs} drop
  }
  chain from_machine {
    ct state established,related accept
    ct state != new drop
    add @flows { iifname ct count over ${this.flowsMax} } jump over_limit
    ct mark set ct mark or ${CHECKED}
    oifname ${ifs} jump peers
    oifname ${ifs} drop
    iifname @noegress drop
    ip daddr @metadata4 drop
    ip6 daddr @metadata6 drop
    iifname vmap @egress
    meta l4proto { tcp, udp } th dport 53 ip daddr @dns4 accept
    meta l4proto { tcp, udp } th dport 53 ip6 daddr @dns6 accept${closed}
    accept
  }
  chain over_limit {
    meta l4proto tcp reject with tcp reset
    reject
  }
  chain peers {
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    iifname ${ifs} oifname != ${ifs} masquerade
  }
}
`
  }

  /* The number of an app network (0 is the org's shared one, '' or
     'default'); each gets its interface set, and a custom network the rule
     that lets its members (and only them) reach each other. The org's
     network has no such rule: there no machine reaches another, as on Fly
     with the sandbox image's in-guest firewall (docker/guest-firewall.nft). */
  async networkId (name) {
    const key = name && name !== 'default' ? name : ''
    if (this.networks.has(key)) return this.networks.get(key)
    const id = this.networks.size
    this.networks.set(key, id)
    await runTool(NFT, ['-f', '-'], `add set inet ${this.table} net${id} { type ifname; }\n` +
      (key ? `add rule inet ${this.table} peers iifname @net${id} oifname @net${id} accept\n` : ''))
    return id
  }

  async alloc ({ network, egress } = {}) {
    if (this.next > MAX_MACHINES) {
      throw Object.assign(new Error('no free machine address'), { code: 'FLY_LOCAL_NO_ADDRESS' })
    }
    const netId = await this.networkId(network)
    const n = this.next++
    const ip = `${this.v6prefix}:${(netId + 1).toString(16)}::${n.toString(16)}`
    const b = (this.v4[2] << 8) + n * 4
    const v4 = (k) => `${this.v4[0]}.${this.v4[1] + (b >> 16)}.${(b >> 8) & 255}.${(b & 255) + k}`
    const m = {
      ip,
      netId,
      ifname: `${this.ifPrefix()}${n}`,
      v4host: v4(1),
      v4guest: v4(2),
      egress: egress == null ? this.egressDefault : !!egress
    }
    this.byIp.set(ip, m)
    return m
  }

  /* The hook runc runs once the machine's namespaces exist (its netns is
     owned by its user namespace, so `runc exec` can join it; it goes with
     the machine's processes, and its veth with it). Puts the interface in
     its sets (before it exists: until then it is cut off, never open),
     makes the veth pair into the container's netns and configures both
     ends. Reads runc's state (with the container's pid) on stdin; four
     processes in all, start time matters. */
  upScript (ip) {
    const m = this.byIp.get(ip)
    const sets = `add element inet ${this.table} net${m.netId} { "${m.ifname}" }; ` +
      `add element inet ${this.table} src6 { "${m.ifname}" . ${ip} }; ` +
      `add element inet ${this.table} src4 { "${m.ifname}" . ${m.v4guest} }; ` +
      (m.egress ? '' : `add element inet ${this.table} noegress { "${m.ifname}" }; `)
    const host = [
      `link add ${m.ifname} type veth peer name eth0 netns $pid`,
      `addr add fe80::1/64 dev ${m.ifname} nodad`,
      `addr add ${m.v4host}/30 dev ${m.ifname}`,
      `link set ${m.ifname} up`,
      `route add ${ip}/128 dev ${m.ifname}`
    ]
    const inside = [
      'link set lo up',
      `addr add ${ip}/128 dev eth0 nodad`,
      `addr add ${m.v4guest}/30 dev eth0`,
      'link set eth0 up',
      'route add default via fe80::1 dev eth0',
      `route add default via ${m.v4host} dev eth0`
    ]
    return [
      'set -e',
      'read -r state || true',
      'pid=${state#*\\"pid\\":}; pid=${pid%%[!0-9]*}', // eslint-disable-line no-template-curly-in-string -- shell, not JS
      '[ -n "$pid" ]',
      `${NFT} '${sets}'`,
      /* a veth of the previous boot may not be gone yet */
      `if [ -e /sys/class/net/${m.ifname} ]; then ${IP} link del ${m.ifname} || true; fi`,
      `printf '%s\\n' ${host.map((l) => `"${l}"`).join(' ')} | ${IP} -batch -`,
      `printf '%s\\n' ${inside.map((l) => `"${l}"`).join(' ')} | nsenter -t "$pid" -n ${IP} -batch -`
    ].join('\n')
  }

  /* The address part of a machine's egress policy ({ internet, allowOut,
     denyOut } as the provider keeps it; null: none), in its own chain,
     replaced in one transaction. */
  async setEgress (ip, policy) {
    const m = this.byIp.get(ip)
    if (!m) return
    const chain = `egress_${m.ifname}`
    let script = m.egressChain ? '' : `add chain inet ${this.table} ${chain}\n`
    script += `flush chain inet ${this.table} ${chain}\n` + egressRules(policy).map((r) => `add rule inet ${this.table} ${chain} ${r}\n`).join('')
    if (!m.egressChain) script += `add element inet ${this.table} egress { "${m.ifname}" : jump ${chain} }\n`
    await runTool(NFT, ['-f', '-'], script)
    m.egressChain = chain
  }

  /* Drops a machine's address: its set entries (and a veth left behind). */
  release (ip) {
    const m = this.byIp.get(ip)
    if (!m) return Promise.resolve()
    this.byIp.delete(ip)
    const link = fs.existsSync(`/sys/class/net/${m.ifname}`) ? runTool(IP, ['link', 'del', m.ifname]).catch(() => {}) : Promise.resolve()
    return link.then(() => runTool(NFT, ['-f', '-'], `delete element inet ${this.table} net${m.netId} { "${m.ifname}" }\n` +
        `delete element inet ${this.table} src6 { "${m.ifname}" . ${ip} }\n` +
        `delete element inet ${this.table} src4 { "${m.ifname}" . ${m.v4guest} }\n` +
        (m.egress ? '' : `delete element inet ${this.table} noegress { "${m.ifname}" }\n`) +
        (m.egressChain ? `delete element inet ${this.table} egress { "${m.ifname}" }\ndelete chain inet ${this.table} ${m.egressChain}\n` : ''))
      .catch(() => {}))
  }

  /* Synchronous: runs from Host.destroy, also at process exit. */
  destroySync () {
    destroyTag(this.tag, process.pid)
    releaseBlock(this.block)
  }
}

/* A CIDR as [family, first address, prefix length], or null. */
function parseCidr (s) {
  const [addr, len] = String(s).split('/')
  const family = net.isIPv4(addr) ? 4 : net.isIPv6(addr) ? 6 : 0
  const bits = family === 4 ? 32 : 128
  const n = len === undefined ? bits : Number(len)
  if (!family || !Number.isInteger(n) || n < 0 || n > bits) return null
  const hex = family === 4 ? addr.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).join('') : expand6(addr)
  /* an IPv6 address with an IPv4 tail (the provider writes none) */
  if (!/^[0-9a-f]+$/i.test(hex)) return null
  const v = BigInt(`0x${hex}`) & (n === 0 ? 0n : ((1n << BigInt(n)) - 1n) << BigInt(bits - n))
  return [family, v, n, bits]
}

function expand6 (a) {
  const [head, tail] = a.includes('::') ? a.split('::') : [a, null]
  const hs = head ? head.split(':') : []
  const ts = tail ? tail.split(':') : []
  const groups = tail === null ? hs : [...hs, ...Array(8 - hs.length - ts.length).fill('0'), ...ts]
  return groups.map((g) => g.padStart(4, '0')).join('')
}

/* The CIDRs of list in family, none inside another (nft refuses
   overlapping intervals in one set). */
function cidrs (list, family) {
  const parsed = list.map((s) => [s, parseCidr(s)]).filter(([, p]) => p && p[0] === family)
  const inside = (a, b) => b[2] <= a[2] && (a[1] >> BigInt(a[3] - b[2])) === (b[1] >> BigInt(b[3] - b[2]))
  /* written from the parsed value: nothing of the metadata's text reaches nft */
  return parsed.filter(([, p], i) => !parsed.some(([, q], j) => j !== i && inside(p, q) && (q[2] < p[2] || j < i)))
    .map(([, [fam, v, n]]) => `${fam === 4
      ? [24n, 16n, 8n, 0n].map((k) => String((v >> k) & 255n)).join('.')
      : v.toString(16).padStart(32, '0').match(/.{4}/g).join(':')}/${n}`)
}

/* A machine's egress chain (see the header); policy as the provider keeps
   it, or null. */
function egressRules (policy) {
  if (!policy) return []
  /* refused rather than dropped: the sandbox's code learns at once */
  const refuse = 'reject with icmpx admin-prohibited'
  if (policy.internet === false) return [refuse]
  const deny = Array.isArray(policy.denyOut) ? policy.denyOut : []
  const allow = Array.isArray(policy.allowOut) ? policy.allowOut : []
  const out = []
  const d4 = cidrs(deny, 4)
  const d6 = cidrs(deny, 6)
  if (d4.length) out.push(`ip daddr { ${d4.join(', ')} } ${refuse}`)
  if (d6.length) out.push(`ip6 daddr { ${d6.join(', ')} } ${refuse}`)
  /* names in the list: their addresses are known only in the guest */
  if (allow.length && allow.every((e) => parseCidr(e))) {
    const a4 = cidrs(allow, 4)
    const a6 = cidrs(allow, 6)
    out.push(a4.length ? `meta nfproto ipv4 ip daddr != { ${a4.join(', ')} } ${refuse}` : `meta nfproto ipv4 ${refuse}`)
    out.push(a6.length ? `meta nfproto ipv6 ip6 daddr != { ${a6.join(', ')} } ${refuse}` : `meta nfproto ipv6 ${refuse}`)
  }
  return out
}

/* An instance's /18 of 100.64.0.0/10 is its own while it lives: two
   instances on one block would route each other's machines (a request for
   one machine reaching another's bridge, say). Reserved by creating
   SHARED_DIR/v4-<block> exclusively; a dead instance's file is taken over.
   100.100.64.0/18 (block 145) holds Alibaba's metadata address,
   100.100.100.200, and is never used. */
function reserveBlock (start) {
  fs.mkdirSync(SHARED_DIR, { recursive: true, mode: 0o700 })
  for (let i = 0; i < 256; i++) {
    const block = (start + i) % 256
    if (block === 145) continue
    const f = path.join(SHARED_DIR, `v4-${block}`)
    for (let tries = 0; tries < 2; tries++) {
      try {
        fs.writeFileSync(f, String(process.pid), { flag: 'wx', mode: 0o600 })
        return block
      } catch (e) {
        if (e.code !== 'EEXIST') throw e
        const pid = Number(readQuiet(f))
        if (pid && pidAlive(pid)) break
        fs.rmSync(f, { force: true })
      }
    }
  }
  throw new Error('fly-local: every 100.64.0.0/10 block is taken by a running instance')
}

function releaseBlock (block) {
  if (block === undefined) return
  const f = path.join(SHARED_DIR, `v4-${block}`)
  if (Number(readQuiet(f)) === process.pid) fs.rmSync(f, { force: true })
}

/* Removes everything of an instance's network, live or stale. */
function destroyTag (tag, pid) {
  /* the machines' netns and veths went with their processes */
  spawnSync(NFT, ['delete', 'table', 'inet', `fly_local_${tag}`], { stdio: 'ignore' })
  forwardingOff(tag, pid)
}

/* Tables and forwarding registrations of dead instances. */
function sweepStale () {
  let names = []
  try { names = fs.readdirSync(SHARED_DIR) } catch (_) { return }
  for (const n of names) {
    const m = /^(\d+)-([0-9a-f]{4})$/.exec(n)
    if (m && !pidAlive(Number(m[1]))) destroyTag(m[2], Number(m[1]))
  }
}

module.exports = { Network, sweepStale, runTool, DEFAULT_FLOWS_MAX, reserveBlock, releaseBlock, egressRules }
