'use strict'
// bin/fly-local: prints the URL and token, serves the API with the token it
// was given, and exits 0 on SIGINT.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('path')
const { spawn } = require('child_process')

test('prints the URL and token, serves the API, and stops on SIGINT', async () => {
  const child = spawn(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fly-local'), '--listen', '127.0.0.1:0', '--token', 'cli-token-abc'],
    { stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)))
  const out = await new Promise((resolve) => {
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      if (/FLY_API_TOKEN=.*\n/.test(buf)) resolve(buf)
    })
  })
  const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)[1]
  assert.match(out, /FLY_API_TOKEN=cli-token-abc/)
  const r = await fetch(`${url}/v1/apps?org_slug=personal`, { headers: { authorization: 'Bearer cli-token-abc' } })
  assert.equal(r.status, 200)
  await r.text()
  child.kill('SIGINT')
  assert.equal(await exited, 0)
})
