'use strict'
// detectRuntime: runCode's guess when no runtime is given (documented in the README).
const test = require('node:test')
const assert = require('node:assert/strict')
const { detectRuntime } = require('..')

test('detectRuntime picks python or node by telltale constructs', () => {
  const cases = [
    ['\nprint("Hello from Python!")\nimport sys\nprint(f"Python version: {sys.version}")\n', 'python'],
    ['\nconsole.log("Hello from Node.js!");\nconsole.log("Node version:", process.version);\n', 'node'],
    ['print("let me => in")', 'python'],
    ['import json\nprint(json.dumps({}))', 'python'],
    ['def f(x):\n    return x\n', 'python'],
    ['for i in range(3):\n    print(i)', 'python'],
    ['#!/usr/bin/env python3\nx = 1', 'python'],
    ['#!/usr/bin/env node\nx = 1', 'node'],
    ['const fs = require("fs")\nconsole.log(fs.readdirSync(__dirname))', 'node'],
    ['[1, 2].map((x) => x * 2)', 'node'],
    ['1 + 1', 'node'],
    ['', 'node']
  ]
  for (const [code, want] of cases) assert.equal(detectRuntime(code), want, JSON.stringify(code))
})
