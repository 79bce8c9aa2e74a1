'use strict'
// sandbox.filesystem on the provider's transport (SFTP on the sandbox's SSH
// session, or small shell programs through the Machines API).  File
// contents are bytes end to end; strings are written as UTF-8 exactly.
const { invalidArg } = require('./errors')

function checkPath (path, what) {
  if (typeof path !== 'string' || path === '') throw invalidArg(`${what}: path must be a non-empty string`)
  if (path.includes('\0')) throw invalidArg(`${what}: path must not contain NUL bytes`)
  return path
}

function toBytes (content) {
  if (typeof content === 'string') return Buffer.from(content, 'utf8')
  if (Buffer.isBuffer(content)) return content
  if (content instanceof Uint8Array) return Buffer.from(content.buffer, content.byteOffset, content.byteLength)
  throw invalidArg('writeFile: content must be a string or a Buffer')
}

// readFile's { offset, length }: a range of the file (length at most
// maxFileBytes), or undefined for the whole file.
function readRange (options) {
  if (!options || (options.offset === undefined && options.length === undefined)) return undefined
  const range = {}
  for (const k of ['offset', 'length']) {
    if (options[k] === undefined) continue
    if (!Number.isSafeInteger(options[k]) || options[k] < 0) throw invalidArg(`readFile: ${k} must be a non-negative integer`)
    range[k] = options[k]
  }
  return range
}

function makeFilesystem (sb) {
  const files = () => sb._ctx.transport.files
  return {
    async readFile (path, options) {
      checkPath(path, 'readFile')
      const enc = options && Object.prototype.hasOwnProperty.call(options, 'encoding') ? options.encoding : 'utf8'
      const buf = await files().read(sb, path, readRange(options))
      return enc === null || enc === 'buffer' ? buf : buf.toString(enc)
    },
    async writeFile (path, content) {
      checkPath(path, 'writeFile')
      await files().write(sb, path, toBytes(content))
    },
    async mkdir (path) {
      checkPath(path, 'mkdir')
      await files().mkdir(sb, path)
    },
    async readdir (path) {
      checkPath(path, 'readdir')
      return files().readdir(sb, path)
    },
    async exists (path) {
      if (typeof path !== 'string' || path === '' || path.includes('\0')) return false
      return files().exists(sb, path)
    },
    async remove (path) {
      checkPath(path, 'remove')
      await files().remove(sb, path)
    }
  }
}

module.exports = { makeFilesystem }
