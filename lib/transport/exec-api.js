'use strict'
// The exec transport: commands and files through the Machines API exec
// endpoint (POST /machines/{id}/exec), for a process that cannot reach the
// machine's sshd.  Buffered (no streaming), slower; file contents travel
// base64-encoded in the JSON body.  The endpoint runs as the machine's
// root, so every command first drops to the sandbox user.
const os = require('os')
const native = require('../native')
const { flyError, invalidArg } = require('../errors')

// Drop to the sandbox user (as SSH would log in), so files and processes
// belong to the same user whichever transport made them.  Without runuser
// or the user there is no safe way to do that: fail (exit 125 with a
// marker) rather than run as root.
const NO_USER = 'computesdk-exec:'
const AS_USER = `command -v runuser >/dev/null 2>&1 || { echo "${NO_USER} runuser is missing in the image" >&2; exit 125; }; ` +
  `id -u "$1" >/dev/null 2>&1 || { echo "${NO_USER} no user $1 in the image" >&2; exit 125; }; ` +
  // In the user's home, as an SSH login starts (runuser sets HOME, not the
  // directory), so a relative path means the same on both transports.
  'exec runuser -u "$1" -- sh -c \'cd "$HOME" 2>/dev/null; exec sh -c "$1"\' sh "$2"'

// A signal name or number from the reply -> its number (Node's table).
function signalNumber (s) {
  const name = String(s).replace(/^SIG/, '')
  return Number(s) || os.constants.signals['SIG' + name] || 0
}

// runCommand's user: 'root' (lib/process.js, whatever the transport): the
// endpoint's own root, in root's home.  Only a holder of the API token can
// ask for it; nothing in the sandbox can reach it.
const AS_ROOT = 'cd /root 2>/dev/null || cd /; exec sh -c "$1"'

// Same interface and result shape as the SSH transport's exec; onChunk gets
// the whole output once the command has finished.  root: run as root (the
// developer's own setup steps) instead of dropping to the sandbox user.
async function exec (sb, spec, { stdin, onChunk, root } = {}) {
  const { config } = sb._ctx
  const cmd = native.buildCommand(spec)
  const secs = spec.timeoutMs ? Math.ceil(spec.timeoutMs / 1000) + 5 : 60
  const command = root ? ['sh', '-c', AS_ROOT, 'sh', cmd] : ['sh', '-c', AS_USER, 'sh', config.sshUser, cmd]
  const body = { command, timeout: secs }
  if (stdin !== undefined) body.stdin = Buffer.isBuffer(stdin) ? stdin.toString('utf8') : stdin
  const r = await sb._api('machine.exec', { body, timeoutMs: (secs + 15) * 1000 })
  const b = r.body || {}
  // No exit status in the reply is not success: the command's outcome is
  // unknown, and an error says so.
  let exitCode = Number.isInteger(b.exit_code) ? b.exit_code : null
  if (b.exit_signal) exitCode = 128 + signalNumber(b.exit_signal)
  if (exitCode === null) {
    throw flyError('FLY_EXEC_NO_STATUS', `exec transport: the Machines API reply for sandbox ${sb.sandboxId} ` +
      'has no exit status; the command\'s outcome is unknown', { status: r.status })
  }
  if (exitCode === 125 && typeof b.stderr === 'string' && b.stderr.startsWith(NO_USER)) {
    throw flyError('FLY_EXEC_NO_USER', `exec transport: ${b.stderr.slice(NO_USER.length).trim()}; ` +
      `commands are never run as root (sandbox ${sb.sandboxId}, user ${config.sshUser})`)
  }
  const stdout = Buffer.from(b.stdout || '', 'utf8')
  const stderr = Buffer.from(b.stderr || '', 'utf8')
  // The API's reply is already bounded (in C); the output limit is ours.
  if (stdout.length + stderr.length > config.maxOutputBytes) {
    throw flyError('ERR_OUTPUT_LIMIT', `command output exceeded maxOutputBytes (${config.maxOutputBytes} bytes)`)
  }
  if (onChunk) {
    if (stdout.length) onChunk(1, stdout)
    if (stderr.length) onChunk(2, stderr)
    return { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), exitCode }
  }
  return { stdout, stderr, exitCode }
}

// Runs argv as the sandbox user; fails like SFTP would.
async function run (sb, argv, stdin, path) {
  const r = await exec(sb, { argv }, { stdin })
  if (r.exitCode !== 0) {
    const msg = r.stderr.toString('utf8').trim()
    const code = /No such file/i.test(msg) ? 'SFTP_NO_SUCH_FILE'
      : /Permission denied/i.test(msg) ? 'SFTP_PERMISSION_DENIED'
        : /Not a directory/i.test(msg) ? 'SFTP_NOT_A_DIRECTORY' : 'SFTP_FAILURE'
    throw flyError(code, `${argv[0]} ${path}: ${msg || 'failed'}`, { path })
  }
  return r.stdout.toString('utf8')
}

const files = {
  read: async (sb, path, range) => {
    const max = sb._ctx.config.maxFileBytes
    if (range && range.length > max) throw invalidArg(`readFile: length must be at most maxFileBytes (${max})`)
    // dd reads the range (or the whole file) and at most one byte past
    // maxFileBytes, so an oversized file is told apart without reading it.
    const count = range && range.length !== undefined ? range.length : max + 1
    const argv = ['bash', '-o', 'pipefail', '-c', 'dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none | base64 -w0',
      'bash', path, String((range && range.offset) || 0), String(count)]
    const buf = Buffer.from(await run(sb, argv, undefined, path), 'base64')
    if (!(range && range.length !== undefined) && buf.length > max) {
      throw flyError('ERR_FILE_TOO_LARGE', `read '${path}': more than maxFileBytes (${max} bytes); ` +
        'read it in ranges with readFile(path, { offset, length }) or raise maxFileBytes', { path })
    }
    return buf
  },
  // A whole file: a temporary beside it (mktemp: created exclusively), the
  // target's mode, then mv (rename(2)) over it, so a reader sees the old or
  // the new file; a failed write removes the temporary.  At an offset or
  // appended or truncated first (a write stream's): in place (dd
  // conv=notrunc, >>, >).  parents: mkdir -p first.
  write: async (sb, path, data, where, parents) => {
    let script
    if (where && where.append) script = 'base64 -d >> "$1"'
    else if (where && where.truncate) script = 'base64 -d > "$1"'
    else if (where) script = 'base64 -d | dd of="$1" oflag=seek_bytes seek="$2" conv=notrunc bs=1M status=none'
    else {
      script = (parents ? 'mkdir -p -- "$(dirname -- "$1")" || exit 1; ' : '') +
        't=$(mktemp -p "$(dirname -- "$1")" ".$(basename -- "$1" | cut -c1-200).fly-XXXXXXXXXXXXXXXX.tmp") || exit 1; ' +
        '{ if [ -f "$1" ]; then chmod --reference="$1" -- "$t"; else chmod 644 -- "$t"; fi && ' +
        'base64 -d > "$t" && mv -fT -- "$t" "$1"; } || { rm -f -- "$t"; exit 1; }'
    }
    await run(sb, ['sh', '-c', script, 'sh', path, String((where && where.offset) || 0)], data.toString('base64'), path)
  },
  // One call per file: correct, not pipelined (each is an exec request).
  async writeMany (sb, list) {
    const out = []
    for (const { path, data } of list) {
      try {
        await files.write(sb, path, Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8'), undefined, true)
        out.push({ path })
      } catch (err) {
        if (!err.path) throw err
        out.push({ path, code: err.code, message: err.message })
      }
    }
    return out
  },
  async readMany (sb, paths) {
    const out = []
    for (const path of paths) {
      try {
        out.push({ path, data: await files.read(sb, path) })
      } catch (err) {
        if (!err.path) throw err
        out.push({ path, code: err.code, message: err.message })
      }
    }
    return out
  },
  mkdir: async (sb, path) => { await run(sb, ['mkdir', '-p', '--', path], undefined, path) },
  async readdir (sb, path) {
    // find reads an operand that starts with '-', or is '(' or '!', as an
    // expression ('-delete' would delete): a relative path gets './'.
    const operand = path.startsWith('/') ? path : `./${path}`
    const out = await run(sb, ['find', operand, '-mindepth', '1', '-maxdepth', '1', '-printf', '%y\\t%s\\t%T@\\t%f\\0'], undefined, path)
    return out.split('\0').filter(Boolean).map((line) => {
      const [y, size, t, ...name] = line.split('\t')
      return { name: name.join('\t'), type: y === 'd' ? 'directory' : 'file', size: Number(size), modified: new Date(Number(t) * 1000) }
    })
  },
  exists: async (sb, path) => (await exec(sb, { argv: ['test', '-e', path] })).exitCode === 0,
  remove: async (sb, path) => { await run(sb, ['rm', '-r', '--', path], undefined, path) }
}

// Nothing is kept open.
const check = async () => {}
const probe = async () => {}
const close = async () => {}
const kept = () => false

module.exports = { name: 'exec', exec, check, probe, files, close, kept }
