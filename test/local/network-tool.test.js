'use strict'
// fly-local's nft/ip calls say how a tool failed when it says nothing
// (Debian 12's nft 1.0.6 segfaulted silently on tables Debian 13's nft had
// written, issue 22, and all fly-local said was "Command failed").
const test = require('node:test')
const assert = require('node:assert/strict')
const { runTool } = require('../../lib/local/network')

test('a tool killed by a signal before reading its input: the command and the signal', async () => {
  /* more input than a pipe holds: the write meets the dead reader (EPIPE) */
  const input = 'table inet x {}\n'.repeat(65536)
  // SIGKILL stands in for nft's segfault: the suite also runs with the
  // sanitizer runtime preloaded, which would catch a SIGSEGV in the shell.
  await assert.rejects(runTool('/bin/sh', ['-c', 'kill -KILL $$'], input),
    (e) => /^sh -c kill -KILL \$\$: killed by SIGKILL, nothing on stderr$/.test(e.message) || assert.fail(e.message))
})

test('a tool that exits non-zero silently: the command and its exit status', async () => {
  await assert.rejects(runTool('/bin/sh', ['-c', 'exit 3']),
    (e) => /^sh -c exit 3: exit status 3, nothing on stderr$/.test(e.message) || assert.fail(e.message))
})

test('a tool that says why: what it said, and its exit status', async () => {
  await assert.rejects(runTool('/bin/sh', ['-c', 'echo "Error: No such file" >&2; exit 1']),
    (e) => /: Error: No such file \(exit status 1\)$/.test(e.message) || assert.fail(e.message))
})
