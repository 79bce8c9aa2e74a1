'use strict'
// sandbox.filesystem: SFTP on the sandbox's SSH session.  File contents are
// bytes end to end; strings are written as UTF-8 exactly.  On the exec
// transport the same calls run small shell programs through the Machines API
// (slower; contents travel base64-encoded in the JSON body).
const native = require('./native')
const { invalidArg, flyError } = require('./errors')
const { execApi } = require('./exec')

function checkPath (path, what) {
  if (typeof path !== 'string' || path === '') throw invalidArg(`${what}: path must be a non-empty string`)
  if (path.includes('\0')) throw invalidArg(`${what}: path must not contain NUL bytes`)
  return path
}

function sftp (sb, op, path, extra) {
  return sb._ssh(() => native.sftp({ target: sb._target(), op, path, ...extra }))
}

// exec transport: run argv through the API (as the sandbox user); fail like
// SFTP would.
async function viaExec (sb, argv, stdin, path) {
  const r = await execApi(sb, { argv }, stdin)
  if (r.exitCode !== 0) {
    const msg = r.stderr.trim()
    const code = /No such file/i.test(msg) ? 'SFTP_NO_SUCH_FILE'
      : /Permission denied/i.test(msg) ? 'SFTP_PERMISSION_DENIED'
        : /Not a directory/i.test(msg) ? 'SFTP_NOT_A_DIRECTORY' : 'SFTP_FAILURE'
    throw flyError(code, `${argv[0]} ${path}: ${msg || 'failed'}`, { path })
  }
  return r.stdout
}

const T = { d: 'directory', f: 'file', l: 'symlink' }

function makeFilesystem (sb) {
  const exec = () => sb._ctx.transport === 'exec'
  return {
    async readFile (path, options) {
      checkPath(path, 'readFile')
      const enc = options && Object.prototype.hasOwnProperty.call(options, 'encoding') ? options.encoding : 'utf8'
      const buf = exec()
        ? Buffer.from(await viaExec(sb, ['base64', '-w0', '--', path], undefined, path), 'base64')
        : await sftp(sb, 'read', path)
      return enc === null || enc === 'buffer' ? buf : buf.toString(enc)
    },
    async writeFile (path, content) {
      checkPath(path, 'writeFile')
      let data
      if (typeof content === 'string') data = Buffer.from(content, 'utf8')
      else if (Buffer.isBuffer(content)) data = content
      else if (content instanceof Uint8Array) data = Buffer.from(content.buffer, content.byteOffset, content.byteLength)
      else throw invalidArg('writeFile: content must be a string or a Buffer')
      if (exec()) {
        await viaExec(sb, ['sh', '-c', 'base64 -d > "$1"', 'sh', path], data.toString('base64'), path)
        return
      }
      await sftp(sb, 'write', path, { data })
    },
    async mkdir (path) {
      checkPath(path, 'mkdir')
      if (exec()) return void await viaExec(sb, ['mkdir', '-p', '--', path], undefined, path)
      await sftp(sb, 'mkdir', path, { recursive: true })
    },
    async readdir (path) {
      checkPath(path, 'readdir')
      if (exec()) {
        const out = await viaExec(sb, ['find', path, '-mindepth', '1', '-maxdepth', '1', '-printf', '%y\\t%s\\t%T@\\t%f\\0'], undefined, path)
        return out.split('\0').filter(Boolean).map((line) => {
          const [y, size, t, ...name] = line.split('\t')
          return { name: name.join('\t'), type: T[y] === 'directory' ? 'directory' : 'file', size: Number(size), modified: new Date(Number(t) * 1000) }
        })
      }
      const entries = await sftp(sb, 'readdir', path)
      return entries.map((e) => ({
        name: e.name,
        type: e.type === 'directory' ? 'directory' : 'file',
        size: e.size,
        modified: new Date(e.mtimeMs)
      }))
    },
    async exists (path) {
      if (typeof path !== 'string' || path === '' || path.includes('\0')) return false
      if (exec()) return (await execApi(sb, { argv: ['test', '-e', path] })).exitCode === 0
      return (await sftp(sb, 'stat', path)) !== null
    },
    async remove (path) {
      checkPath(path, 'remove')
      if (exec()) return void await viaExec(sb, ['rm', '-r', '--', path], undefined, path)
      await sftp(sb, 'remove', path, { recursive: true })
    }
  }
}

module.exports = { makeFilesystem }
