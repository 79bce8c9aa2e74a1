'use strict'
// A sandbox's egress policy: create({ network }), sandbox.updateNetwork()
// and getInfo().network. The provider checks and normalises the policy,
// keeps it in the machine's metadata (so another provider instance sees
// it) and hands it to the guest, where docker/egress (root) enforces it
// below the sandbox user: nftables rules and a resolver the policy
// controls. At create the policy is a file injected at FILES_DIR; on a
// running sandbox it is applied through the exec API, as root.
const net = require('net')
const api = require('./api')
const { invalidArg, flyError } = require('./errors')
const { checkKeys } = require('./options')
const { NETWORK, FILES_DIR, metadataOf } = require('./metadata')
const { ensureAwake } = require('./pause')

// Entries per list: each CIDR is one set element and each name a few
// resolver lines; the metadata value stays a few KiB.
const MAX_ENTRIES = 64
const KEYS = new Set(['internet', 'allowOut', 'denyOut'])
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
const POLICY_PATH = `${FILES_DIR}/egress.json`
const APPLIER = '/opt/computesdk/egress'
// the applier loads one nft transaction and restarts the resolver
const APPLY_TIMEOUT_S = 30

// What stays closed whatever the policy says (docker/egress has the same):
// metadata services, link-local, private ranges (so Fly's 6PN too).
const CLOSED = ['169.254.0.0/16', '100.100.100.200/32', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16',
  '100.64.0.0/10', '0.0.0.0/8', 'fe80::/10', 'fc00::/7', 'fd00:ec2::254/128']

// [family, first address, prefix length] of a normalised CIDR
function parts (c) {
  const [a, len] = c.split('/')
  return [a.includes(':') ? 6 : 4, a.includes(':') ? v6Int(a) : v4Int(a), Number(len)]
}

// Whether the normalised CIDR c lies wholly inside a closed range.
function closed (c) {
  const [f, v, n] = parts(c)
  const bits = f === 4 ? 32 : 128
  return CLOSED.map(parts).some(([g, w, m]) => g === f && m <= n && (v >> BigInt(bits - m)) === (w >> BigInt(bits - m)))
}

function open () {
  return { internet: true, allowOut: [], denyOut: [] }
}

// "a.b/24", "a.b" (/32), "x::y/64", "x::y" (/128): the network, host bits
// cleared ("10.1.2.3/8" -> "10.0.0.0/8"); null when s is no CIDR.
function cidr (s) {
  const slash = s.indexOf('/')
  const addr = slash < 0 ? s : s.slice(0, slash)
  const family = net.isIPv4(addr) ? 4 : net.isIPv6(addr) ? 6 : 0
  if (!family) return null
  const bits = family === 4 ? 32 : 128
  let len = bits
  if (slash >= 0) {
    const p = s.slice(slash + 1)
    if (!/^\d{1,3}$/.test(p) || Number(p) > bits) return null
    len = Number(p)
  }
  let v = family === 4 ? v4Int(addr) : v6Int(addr)
  const mask = len === 0 ? 0n : ((1n << BigInt(len)) - 1n) << BigInt(bits - len)
  v &= mask
  return `${family === 4 ? v4Str(v) : v6Str(v)}/${len}`
}

function v4Int (a) {
  return a.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n)
}

function v4Str (v) {
  return [24n, 16n, 8n, 0n].map((s) => String((v >> s) & 255n)).join('.')
}

function v6Int (a) {
  // an embedded IPv4 tail (::ffff:1.2.3.4) as two groups
  const m = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(a)
  if (m) {
    const t = v4Int(m[2])
    a = `${m[1]}${(t >> 16n).toString(16)}:${(t & 0xffffn).toString(16)}`
  }
  const [head, tail] = a.includes('::') ? a.split('::') : [a, null]
  const hs = head ? head.split(':') : []
  const ts = tail ? tail.split(':') : []
  const groups = tail === null ? hs : [...hs, ...Array(8 - hs.length - ts.length).fill('0'), ...ts]
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n)
}

function v6Str (v) {
  const g = []
  for (let i = 7; i >= 0; i--) g.push(((v >> BigInt(i * 16)) & 0xffffn).toString(16))
  // the longest run of zero groups (two or more) becomes "::"
  let best = -1
  let bestLen = 1
  for (let i = 0; i < 8;) {
    if (g[i] !== '0') { i++; continue }
    let j = i
    while (j < 8 && g[j] === '0') j++
    if (j - i > bestLen) { best = i; bestLen = j - i }
    i = j
  }
  if (best < 0) return g.join(':')
  return `${g.slice(0, best).join(':')}::${g.slice(best + bestLen).join(':')}`
}

// "example.com" or "*.example.com", lower-cased; null when s is no domain.
function domain (s) {
  const d = s.toLowerCase().replace(/\.$/, '')
  if (d.length === 0 || d.length > 253) return null
  const labels = (d.startsWith('*.') ? d.slice(2) : d).split('.')
  if (!labels.every((l) => LABEL.test(l))) return null
  // all digits and dots: an address that is no valid CIDR, not a name
  if (/^[\d.]+$/.test(d)) return null
  return d
}

function entries (list, key, what) {
  if (list === undefined || list === null) return []
  if (!Array.isArray(list)) throw invalidArg(`${what}: network.${key} must be an array of domains and CIDRs`)
  if (list.length > MAX_ENTRIES) throw invalidArg(`${what}: network.${key} has ${list.length} entries; at most ${MAX_ENTRIES}`)
  const out = []
  for (const e of list) {
    if (typeof e !== 'string' || e === '') throw invalidArg(`${what}: network.${key} entries must be non-empty strings`)
    const c = /^[0-9a-fA-F:.]+(\/\d+)?$/.test(e) && (e.includes(':') || /^[\d./]+$/.test(e)) ? cidr(e) : null
    if (c && key === 'allowOut' && closed(c)) {
      throw invalidArg(`${what}: network.allowOut: ${JSON.stringify(e)} is in a range that stays closed whatever the policy ` +
        `says (metadata services, link-local and private ranges: ${CLOSED.join(', ')})`)
    }
    if (c) { out.push(c); continue }
    if (/^[\d./]+$/.test(e) || e.includes(':') || e.includes('/')) {
      throw invalidArg(`${what}: network.${key}: ${JSON.stringify(e)} is not a valid CIDR (an IPv4 or IPv6 address, with an optional /prefix length)`)
    }
    const d = domain(e)
    if (!d) throw invalidArg(`${what}: network.${key}: ${JSON.stringify(e)} is not a valid domain ("example.com" or "*.example.com") or CIDR`)
    out.push(d)
  }
  return [...new Set(out)]
}

// Whether name (an allow entry) is at or under a denied domain d.
function covered (name, d) {
  const base = d.startsWith('*.') ? d.slice(2) : d
  const n = name.startsWith('*.') ? name.slice(2) : name
  if (d.startsWith('*.')) return n.endsWith(`.${base}`) || (name.startsWith('*.') && n === base)
  return n === base || n.endsWith(`.${base}`)
}

// The normalised policy of `network` (create's or updateNetwork's), or null
// when none is given. Deny wins: allowed names at or under a denied one are
// dropped (CIDRs need nothing: the guest checks the deny sets first).
function check (network, what) {
  if (network === undefined || network === null) return null
  if (typeof network !== 'object' || Array.isArray(network)) throw invalidArg(`${what}: network must be an object`)
  checkKeys(network, KEYS, `${what}: network`)
  if (network.internet !== undefined && typeof network.internet !== 'boolean') {
    throw invalidArg(`${what}: network.internet must be a boolean`)
  }
  const denyOut = entries(network.denyOut, 'denyOut', what)
  const deniedNames = denyOut.filter((e) => !e.includes('/'))
  const allowOut = entries(network.allowOut, 'allowOut', what)
    .filter((e) => e.includes('/') || !deniedNames.some((d) => covered(e, d)))
  return { internet: network.internet !== false, allowOut, denyOut }
}

function restricts (p) {
  return !!p && (!p.internet || p.allowOut.length > 0 || p.denyOut.length > 0)
}

// Adds the policy to a machine create request (config: the machine config).
function apply (policy, machineConfig) {
  if (!restricts(policy)) return
  machineConfig.metadata[NETWORK] = JSON.stringify(policy)
  machineConfig.files.push({ guest_path: POLICY_PATH, raw_value: Buffer.from(JSON.stringify(policy)).toString('base64'), mode: 0o600 })
}

// getInfo().network: the policy in the machine's metadata (open for none).
function info (metadata) {
  const raw = metadata && metadata[NETWORK]
  if (!raw) return open()
  try {
    const p = JSON.parse(raw)
    return { internet: p.internet !== false, allowOut: [...(p.allowOut || [])], denyOut: [...(p.denyOut || [])] }
  } catch {
    return open()
  }
}

// sandbox.updateNetwork(network): the whole policy is replaced (omitted
// lists are empty, internet defaults to true). Applied in the guest first
// (new connections follow it when this resolves), then recorded; a paused
// sandbox is resumed first, as a command would resume it.
async function update (sb, network) {
  const policy = check(network === undefined ? {} : network, 'updateNetwork') || open()
  // a paused sandbox is woken (autoResume): its rules live in its memory
  await ensureAwake(sb)
  const r = await sb._api('machine.exec', {
    body: { command: [APPLIER, 'apply', JSON.stringify(policy)], timeout: APPLY_TIMEOUT_S },
    timeoutMs: (APPLY_TIMEOUT_S + 30) * 1000
  })
  const body = r.body || {}
  if (body.exit_code !== 0) {
    const said = String(body.stderr || '').trim().slice(0, 500)
    throw flyError('FLY_EGRESS_FAILED', `updateNetwork: applying the policy in sandbox ${sb.sandboxId} failed` +
      `${said ? `: ${said}` : ` (exit code ${body.exit_code})`}`)
  }
  const value = restricts(policy) ? JSON.stringify(policy) : null
  await api.call(sb._ctx.config, 'machine.metadata.update', sb._params, { body: { metadata: { [NETWORK]: value } } })
  const md = { ...metadataOf({ config: { metadata: sb.metadata } }) }
  if (value === null) delete md[NETWORK]
  else md[NETWORK] = value
  sb.metadata = md
  return info(md)
}

module.exports = { check, apply, info, update, restricts, MAX_ENTRIES }
