'use strict'
// The response schema the fly-local tests validate against
// (test/schema/machines-api.json) compiles strictly and rejects what
// fly-local must not serve, so its checks can fail.
const test = require('node:test')
const assert = require('node:assert/strict')
const SCHEMA = require('../schema/machines-api.json')
const { assertSchema } = require('../helpers/local')

const ULID = '01JNRQ9VVKJ7HZFMJWJB3M3RYN'
const machine = () => ({
  id: '1857156b526dd8',
  name: 'aged-thunder-7371',
  state: 'created',
  region: 'iad',
  instance_id: ULID,
  version: ULID,
  private_ip: '127.1.2.3',
  created_at: '2026-01-01T00:00:00Z',
  updated_at: '2026-01-01T00:00:00Z',
  config: { image: 'ubuntu' },
  image_ref: { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: 'latest', digest: `sha256:${'0'.repeat(64)}` }
})

test('every definition compiles in strict mode', () => {
  const Ajv2020 = require('ajv/dist/2020')
  const ajv = new Ajv2020({ allErrors: true, strict: true })
  ajv.addSchema(SCHEMA)
  for (const name of Object.keys(SCHEMA.$defs)) {
    assert.equal(typeof ajv.getSchema(`${SCHEMA.$id}#/$defs/${name}`), 'function', name)
  }
})

test('a valid machine passes, a broken one does not', () => {
  assertSchema('Machine', machine())
  const cases = [
    (m) => { delete m.id },
    (m) => { m.state = 'sleeping' },
    (m) => { m.version = 'v1' },
    (m) => { m.config = {} },
    (m) => { m.lease = { owner: 'x', expires_at: 1, nonce: 'abcdefabcdef' } },
    (m) => { m.created_at = 1700000000 }
  ]
  for (const broken of cases) {
    const m = machine()
    broken(m)
    assert.throws(() => assertSchema('Machine', m), /response does not match Machine/, broken.toString())
  }
})

test('errors are { error } with an optional known status', () => {
  assertSchema('Error', { error: 'validation failed: Name has already been taken', status: 'name_taken' })
  assert.throws(() => assertSchema('Error', { message: 'x' }))
  assert.throws(() => assertSchema('Error', { error: 'x', status: 'whatever' }))
  assert.throws(() => assertSchema('Error', { error: 'x', extra: 1 }))
})

test('an unknown definition name is an error, not a pass', () => {
  assert.throws(() => assertSchema('Nope', {}), /no definition Nope/)
})
