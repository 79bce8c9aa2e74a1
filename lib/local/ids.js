'use strict'
// Identifiers in Fly's formats: 14-hex machine ids, ULID versions, 12-hex
// lease nonces, request ids like "01JNRQ9VVKJ7HZFMJWJB3M3RYN-iad".
const crypto = require('crypto')

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

let lastTime = 0
let lastRandom = null

/* Monotonic within a millisecond, so versions sort in creation order. */
function ulid (now = Date.now()) {
  let rand
  if (now === lastTime && lastRandom) {
    rand = Buffer.from(lastRandom)
    for (let i = rand.length - 1; i >= 0; i--) {
      rand[i] = (rand[i] + 1) & 0xff
      if (rand[i] !== 0) break
    }
  } else {
    rand = crypto.randomBytes(10)
  }
  lastTime = now
  lastRandom = rand
  let out = ''
  let t = now
  for (let i = 0; i < 10; i++) {
    out = CROCKFORD[t % 32] + out
    t = Math.floor(t / 32)
  }
  /* 80 random bits -> 16 base32 characters */
  let bits = 0n
  for (const b of rand) bits = (bits << 8n) | BigInt(b)
  let r = ''
  for (let i = 0; i < 16; i++) {
    r = CROCKFORD[Number(bits & 31n)] + r
    bits >>= 5n
  }
  return out + r
}

function machineId () {
  return crypto.randomBytes(7).toString('hex')
}

function nonce () {
  return crypto.randomBytes(6).toString('hex')
}

function appId () {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789'
  const bytes = crypto.randomBytes(16)
  let s = ''
  for (const b of bytes) s += alphabet[b % alphabet.length]
  return s
}

const ADJECTIVES = ['aged', 'ancient', 'autumn', 'billowing', 'bitter', 'black', 'blue', 'bold',
  'broken', 'cold', 'cool', 'crimson', 'damp', 'dark', 'dawn', 'delicate', 'divine', 'dry',
  'empty', 'falling', 'floral', 'fragrant', 'frosty', 'green', 'hidden', 'holy', 'icy', 'late',
  'lingering', 'little', 'lively', 'long', 'misty', 'morning', 'muddy', 'nameless', 'old',
  'patient', 'polished', 'proud', 'purple', 'quiet', 'red', 'restless', 'rough', 'shy', 'silent',
  'small', 'snowy', 'solitary', 'sparkling', 'spring', 'still', 'summer', 'throbbing', 'twilight',
  'wandering', 'weathered', 'white', 'wild', 'winter', 'wispy', 'withered', 'young']
const NOUNS = ['bird', 'breeze', 'brook', 'bush', 'butterfly', 'cherry', 'cloud', 'darkness',
  'dawn', 'dew', 'dream', 'dust', 'feather', 'field', 'fire', 'firefly', 'flower', 'fog', 'forest',
  'frog', 'frost', 'glade', 'glitter', 'grass', 'haze', 'hill', 'lake', 'leaf', 'meadow', 'moon',
  'morning', 'mountain', 'night', 'paper', 'pine', 'pond', 'rain', 'resonance', 'river', 'sea',
  'shadow', 'shape', 'silence', 'sky', 'smoke', 'snow', 'snowflake', 'sound', 'star', 'sun',
  'sunset', 'surf', 'thunder', 'tree', 'violet', 'voice', 'water', 'waterfall', 'wave', 'wildflower',
  'wind', 'wood']

function machineName () {
  const b = crypto.randomBytes(4)
  return `${ADJECTIVES[b[0] % ADJECTIVES.length]}-${NOUNS[b[1] % NOUNS.length]}-${1000 + (b.readUInt16BE(2) % 9000)}`
}

function requestId (region) {
  return `${ulid()}-${region}`
}

module.exports = { ulid, machineId, nonce, appId, machineName, requestId }
