'use strict'
// Unknown option keys are refused, naming the nearest known one: a typo
// (`memroy`) or another provider's name for a setting must not be silently
// ignored and give a default the user did not ask for.
const { invalidArg } = require('./errors')

// Levenshtein distance, case-insensitive (option names are short).
function distance (a, b) {
  a = a.toLowerCase()
  b = b.toLowerCase()
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = cur
  }
  return prev[b.length]
}

// Other providers' (and SDKs') names for settings that have another name
// here: suggested even when the spelling is far off.
const ALIASES = {
  apiKey: 'apiToken',
  token: 'apiToken',
  accessToken: 'apiToken',
  app: 'appName',
  organization: 'org',
  orgSlug: 'org',
  memoryMB: 'memory',
  ram: 'memory',
  env: 'envs',
  environment: 'envs',
  template: 'templateId',
  timeoutMs: 'timeout'
}

function nearest (key, known) {
  if (ALIASES[key] && known.has(ALIASES[key])) return ALIASES[key]
  let best = null
  let bestD = Infinity
  for (const k of known) {
    const d = distance(key, k)
    if (d < bestD) {
      best = k
      bestD = d
    }
  }
  return bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : null
}

// Throws ERR_INVALID_ARG for the first own key of obj not in known.
function checkKeys (obj, known, what) {
  for (const k of Object.keys(obj)) {
    if (known.has(k)) continue
    const near = nearest(k, known)
    throw invalidArg(`${what}: unknown option ${JSON.stringify(k)}` +
      (near ? `; did you mean ${JSON.stringify(near)}?` : '') +
      ` (known: ${[...known].sort().join(', ')})`)
  }
}

module.exports = { checkKeys }
