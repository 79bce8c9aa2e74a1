'use strict'
// The machine's console log on the host keeps the last few MiB: however
// much a machine writes, it holds at most two files of the cap.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { PassThrough } = require('stream')
const { ConsoleLog } = require('../../lib/local/console-log')

test('console.log rotates at its cap and keeps the newest output', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-console-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'console.log')
  const cap = 64 * 1024
  const log = new ConsoleLog(file, cap)
  const out = new PassThrough()
  const err = new PassThrough()
  log.attach(out)
  log.attach(err)
  /* 100 times the cap, in lines and one write larger than the cap */
  err.write('from stderr\n')
  for (let i = 0; i < 6400; i++) out.write(`line ${i} ${'x'.repeat(1000)}\n`)
  out.write(Buffer.alloc(cap * 3, 'y'))
  out.write('the last line\n')
  out.end()
  err.end()
  await Promise.all([out, err].map((s) => new Promise((resolve) => s.on('close', resolve))))
  const now = fs.readFileSync(file, 'utf8')
  const before = fs.readFileSync(`${file}.1`, 'utf8')
  assert.ok(now.length <= cap && before.length <= cap, `${now.length} + ${before.length}`)
  assert.ok(now.endsWith('the last line\n'))
  assert.deepEqual(fs.readdirSync(dir).sort(), ['console.log', 'console.log.1'])
  /* closed once both streams ended */
  assert.equal(log.fd, null)
})
