'use strict'
// fly-local's ip_assignments (an app's public addresses) in Fly's shapes,
// as the provider's edge path makes them: list, create (shared_v4, v6), a
// second shared IPv4 refused, delete, 404s; every reply against the schema.
const test = require('node:test')
const assert = require('node:assert/strict')
const { localFixture, assertSchema } = require('../helpers/local')

const app = `ips-${process.pid}`
const fx = localFixture({ app })
const P = `/v1/apps/${app}/ip_assignments`

test('ip_assignments: list, create, delete', async () => {
  let r = await fx.api('GET', P)
  assert.equal(r.status, 200, r.text)
  assertSchema('IPAssignmentList', r.body)
  assert.deepEqual(r.body.ips, [])

  r = await fx.api('POST', P, { type: 'shared_v4' })
  assert.equal(r.status, 200, r.text)
  assertSchema('AssignedIP', r.body)
  assert.equal(r.body.shared, true)
  assert.match(r.body.ip, /^\d+\.\d+\.\d+\.\d+$/)
  const v4 = r.body.ip

  r = await fx.api('POST', P, { type: 'v6', region: 'iad' })
  assert.equal(r.status, 200, r.text)
  assertSchema('AssignedIP', r.body)
  assert.equal(r.body.shared, false)
  assert.match(r.body.ip, /:/)
  const v6 = r.body.ip

  assert.equal((await fx.api('POST', P, { type: 'shared_v4' })).status, 422)
  assert.equal((await fx.api('POST', P, { type: 'nope' })).status, 400)
  assert.equal((await fx.api('POST', P, { type: 'egress_pair' })).status, 422)

  r = await fx.api('GET', P)
  assertSchema('IPAssignmentList', r.body)
  assert.deepEqual(r.body.ips.map((x) => x.ip).sort(), [v4, v6].sort())

  assert.equal((await fx.api('DELETE', `${P}/${encodeURIComponent(v6)}`)).status, 204)
  assert.equal((await fx.api('DELETE', `${P}/${encodeURIComponent(v6)}`)).status, 404)
  assert.deepEqual((await fx.api('GET', P)).body.ips.map((x) => x.ip), [v4])
  assert.equal((await fx.api('GET', '/v1/apps/no-such-app/ip_assignments')).status, 404)
})
