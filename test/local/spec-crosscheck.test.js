'use strict'
// The repository's response schema (test/schema/machines-api.json) against
// Fly's published OpenAPI spec, when a copy is beside the checkout at
// ../shared/fly-machines/openapi.yaml (CI has one): for each shared
// component, every field both name has the same type, every field ours
// names exists in Fly's (or is a listed fly-local extra), and our enums use
// only Fly's values. Without the spec the test is skipped, saying why.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const path = require('path')
const SCHEMA = require('../schema/machines-api.json')

const SPEC_PATH = path.resolve(__dirname, '..', '..', '..', 'shared', 'fly-machines', 'openapi.yaml')
const skip = fs.existsSync(SPEC_PATH) ? false : `Fly's spec is not at ${SPEC_PATH}`

/* our definition -> Fly's component */
const SHARED = {
  Error: 'ErrorResponse',
  Organization: 'AppOrganizationInfo',
  App: 'App',
  CreatedApp: 'CreateAppResponse',
  AppList: 'ListAppsResponse',
  Region: 'main.regionRow',
  Regions: 'main.regionResponse',
  Guest: 'fly.MachineGuest',
  File: 'fly.File',
  Init: 'fly.MachineInit',
  Restart: 'fly.MachineRestart',
  StopConfig: 'fly.StopConfig',
  MachinePort: 'fly.MachinePort',
  MachineConfig: 'fly.MachineConfig',
  ImageRef: 'ImageRef',
  CheckStatus: 'CheckStatus',
  MachineEvent: 'MachineEvent',
  StrippedLease: 'StrippedLease',
  Machine: 'Machine',
  MachineVersion: 'MachineVersion',
  WaitResult: 'WaitMachineResponse',
  ExecResult: 'flydv1.ExecResponse',
  ListenSocket: 'ListenSocket',
  ProcessStat: 'ProcessStat',
  Memory: 'main.memoryResponse',
  MetadataValue: 'metadataValueResponse',
  Lease: 'Lease',
  MachineMount: 'fly.MachineMount',
  Volume: 'Volume',
  ExtendVolume: 'ExtendVolumeResponse',
  VolumeSnapshot: 'VolumeSnapshot',
  OrgVolume: 'OrgVolume',
  OrgVolumes: 'OrgVolumesResponse',
  IPAssignment: 'IPAssignment',
  IPAssignmentList: 'listIPAssignmentsResponse',
  AssignedIP: 'AssignIPResponse'
}

/* Fields fly-local serves that Fly's component does not list, and why. */
const EXTRAS = {
  /* fly-local answers a create with the whole app, plus created_at */
  CreatedApp: ['name', 'status', 'machine_count', 'volume_count', 'network', 'organization'],
  /* a StrippedLease never carries a nonce: ours says so with `nonce: false` */
  StrippedLease: ['nonce']
}

/* A definition's own properties, with allOf branches merged. */
function propertiesOf (def, resolve) {
  const out = { ...(def.properties || {}) }
  for (const part of def.allOf || []) Object.assign(out, propertiesOf(part.$ref ? resolve(part) : part, resolve))
  return out
}

/* 'object', 'array', 'string', ... of a property; null when it does not say. */
function typeOf (prop, resolve) {
  if (prop === false) return null
  if (prop.$ref) return typeOf(resolve(prop), resolve)
  if (prop.type) return prop.type
  if (prop.const !== undefined) return typeof prop.const === 'number' ? 'number' : typeof prop.const
  if (prop.allOf) return 'object'
  return null
}

test('the response schema agrees with Fly\'s published spec', { skip }, () => {
  const YAML = require('yaml')
  const spec = YAML.parse(fs.readFileSync(SPEC_PATH, 'utf8'))
  const components = spec.components.schemas
  const ours = (node) => SCHEMA.$defs[node.$ref.replace('#/$defs/', '')]
  const theirs = (node) => components[node.$ref.replace('#/components/schemas/', '')]
  const problems = []
  for (const [mine, fly] of Object.entries(SHARED)) {
    const flyDef = components[fly]
    if (!flyDef) {
      problems.push(`${mine}: Fly's spec has no component ${fly}`)
      continue
    }
    const myProps = propertiesOf(SCHEMA.$defs[mine], ours)
    const flyProps = propertiesOf(flyDef, theirs)
    const extras = EXTRAS[mine] || []
    for (const [name, prop] of Object.entries(myProps)) {
      const flyProp = flyProps[name]
      if (!flyProp) {
        if (!extras.includes(name)) problems.push(`${mine}.${name}: not in Fly's ${fly}`)
        continue
      }
      const a = typeOf(prop, ours)
      const b = typeOf(flyProp, theirs)
      /* Fly's integers are numbers too; our integer may narrow Fly's number */
      if (a && b && a !== b && !(a === 'integer' && b === 'number')) {
        problems.push(`${mine}.${name}: ours is ${a}, Fly's ${fly}.${name} is ${b}`)
      }
      const myEnum = prop.enum || (prop.$ref && ours(prop).enum)
      const flyEnum = flyProp.enum || (flyProp.$ref && theirs(flyProp).enum)
      if (myEnum && flyEnum) {
        for (const v of myEnum) if (!flyEnum.includes(v)) problems.push(`${mine}.${name}: ${JSON.stringify(v)} is not one of Fly's values`)
      }
      const myItems = prop.items && typeOf(prop.items, ours)
      const flyItems = flyProp.items && typeOf(flyProp.items, theirs)
      if (myItems && flyItems && myItems !== flyItems) {
        problems.push(`${mine}.${name}[]: ours is ${myItems}, Fly's is ${flyItems}`)
      }
    }
  }
  assert.deepEqual(problems, [])
})

test('every shared definition names fields Fly\'s component has at all', { skip }, () => {
  /* catches a mapping entry that points at the wrong component: at least
     half of our fields (the listed extras aside) must be Fly's */
  const YAML = require('yaml')
  const components = YAML.parse(fs.readFileSync(SPEC_PATH, 'utf8')).components.schemas
  for (const [mine, fly] of Object.entries(SHARED)) {
    const extras = EXTRAS[mine] || []
    const names = Object.keys(propertiesOf(SCHEMA.$defs[mine], (n) => SCHEMA.$defs[n.$ref.replace('#/$defs/', '')]))
      .filter((n) => !extras.includes(n))
    const flyNames = Object.keys(components[fly].properties || {})
    const shared = names.filter((n) => flyNames.includes(n))
    assert.ok(shared.length * 2 >= names.length, `${mine} -> ${fly}: only ${shared.join(', ')} in common`)
  }
})
