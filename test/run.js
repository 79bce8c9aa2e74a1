#!/usr/bin/env node
'use strict'
// `npm test`: builds the addon if needed, runs the C unit tests, then every
// test/*.test.js and test/local/*.test.js with node's test runner (its
// summary is the last output).
const { spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const run = (cmd, args, opts) => spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts })

if (!fs.existsSync(path.join(root, 'build', 'Release', 'fly.node'))) {
  const r = run('npm', ['run', 'build'])
  if (r.status !== 0) process.exit(r.status || 1)
}

const c = run('make', ['-s', '-C', 'test/c', 'test'])
if (c.status !== 0) {
  console.error('C unit tests failed')
  process.exit(c.status || 1)
}

/* test/*.test.js and test/local/*.test.js (fly-local's own) */
const testFiles = (dir) => fs.readdirSync(path.join(root, dir))
  .filter((f) => f.endsWith('.test.js')).sort().map((f) => path.join(dir, f))

const only = process.argv.slice(2)
const files = only.length > 0 ? only : [...testFiles('test'), ...testFiles(path.join('test', 'local'))]
// A hung test fails at its own deadline (the slowest ones, 20 machines at
// once or 64 MiB round trips on a loaded machine, take well under this)
// instead of holding the run until CI's.  Node 18 has no --test-timeout
// (20.11 and 21.2 brought it); there the tests' own deadlines must do.
const [major, minor] = process.versions.node.split('.').map(Number)
const hasTimeout = major > 21 || (major === 21 && minor >= 2) || (major === 20 && minor >= 11)
// Two files at a time: at four, the suites' big transfers and boots on
// this 2-core machine stalled sandboxes for tens of seconds (see the
// closing note of this change); the suite takes a few minutes more.
// The tests make their own fly-local instances: a fly-local the user runs
// on this host (registered for providers with no token) is not theirs.
const env = { ...process.env, FLY_LOCAL_REGISTRY: process.env.FLY_LOCAL_REGISTRY || path.join(root, 'build', 'no-fly-local.json') }
const r = run(process.execPath, ['--test', '--test-concurrency=2', ...(hasTimeout ? ['--test-timeout=300000'] : []), ...files], { env })
process.exit(r.status === null ? 1 : r.status)
