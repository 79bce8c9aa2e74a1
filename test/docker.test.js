'use strict'
// docker/: the Dockerfile passes a linter from the npm registry, and the
// shell scripts pass shellcheck (from Debian, installed by bin/setup).
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const lint = path.join(root, 'node_modules', '.bin', 'dockerfilelint')

test('the Dockerfile lints clean (and the linter does catch problems)', () => {
  const ok = spawnSync(lint, ['-j', path.join(root, 'docker', 'Dockerfile')], { encoding: 'utf8' })
  assert.equal(ok.status, 0, ok.stdout + ok.stderr)
  const report = JSON.parse(ok.stdout)
  assert.equal(report.totalIssues, 0, JSON.stringify(report.files, null, 2))
  const bad = spawnSync(lint, ['-j', 'FROM ubuntu:latest\nRUN apt-get install python3\n'], { encoding: 'utf8' })
  assert.ok(JSON.parse(bad.stdout).totalIssues > 0)
})

test('entrypoint.sh, provision.sh and setup-host.sh pass shellcheck', () => {
  const files = ['entrypoint.sh', 'provision.sh', 'setup-host.sh'].map((f) => path.join(root, 'docker', f))
  const r = spawnSync('shellcheck', ['-x', ...files], { encoding: 'utf8' })
  assert.notEqual(r.error && r.error.code, 'ENOENT', 'shellcheck is not installed (bin/setup installs it)')
  assert.equal(r.status, 0, r.stdout + r.stderr)
})

test('the Fly image and fly-local\'s image run the same provisioning script', () => {
  const dockerfile = fs.readFileSync(path.join(root, 'docker', 'Dockerfile'), 'utf8')
  assert.match(dockerfile, /^RUN sh \/tmp\/computesdk-src\/provision\.sh/m)
  const builder = fs.readFileSync(path.join(root, 'lib', 'local', 'image.js'), 'utf8')
  assert.match(builder, /'provision\.sh'/)
})
