'use strict'
// sandbox.filesystem on the provider's transport (SFTP on the sandbox's SSH
// session, or small shell programs through the Machines API).  File
// contents are bytes end to end; strings are written as UTF-8 exactly.
const { invalidArg, flyError } = require('./errors')
const { readStream, writeStream } = require('./streams')
const { watch } = require('./watch')

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

// writeFile's { offset } or { append: true }: in place; undefined: the
// whole file, replaced atomically.
function writeWhere (options) {
  if (!options || (options.offset === undefined && !options.append)) return undefined
  if (options.append) {
    if (options.offset !== undefined) throw invalidArg('writeFile: offset and append exclude each other')
    return { append: true }
  }
  if (!Number.isSafeInteger(options.offset) || options.offset < 0) throw invalidArg('writeFile: offset must be a non-negative integer')
  return { offset: options.offset }
}

// A per-file result of writeFiles/readFiles: the failure as an Error with
// its code and path.
function withError (r) {
  if (!r.code) return r
  const { code, message, ...rest } = r
  return { ...rest, error: flyError(code, message, { path: r.path }) }
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
    async writeFile (path, content, options) {
      checkPath(path, 'writeFile')
      await files().write(sb, path, toBytes(content), writeWhere(options))
    },
    // [{ path, data }] -> [{ path, ok, error? }], in order; parents made.
    async writeFiles (list) {
      if (!Array.isArray(list)) throw invalidArg('writeFiles: expected an array of { path, data }')
      const items = list.map((f, i) => {
        if (!f || typeof f !== 'object') throw invalidArg(`writeFiles: entry ${i} must be { path, data }`)
        checkPath(f.path, 'writeFiles')
        if (f.path.endsWith('/')) throw invalidArg(`writeFiles: '${f.path}' names a directory`)
        return { path: f.path, data: toBytes(f.data) }
      })
      if (items.length === 0) return []
      const out = await files().writeMany(sb, items)
      return out.map((r) => {
        const w = withError(r)
        return w.error ? { path: r.path, ok: false, error: w.error } : { path: r.path, ok: true }
      })
    },
    // paths -> [{ path, data } | { path, error }], in order.  data is a
    // Buffer, or a string with { encoding }.
    async readFiles (paths, options) {
      if (!Array.isArray(paths)) throw invalidArg('readFiles: expected an array of paths')
      paths.forEach((p) => checkPath(p, 'readFiles'))
      if (paths.length === 0) return []
      const enc = options && options.encoding
      const out = await files().readMany(sb, paths)
      return out.map((r) => {
        const w = withError(r)
        if (w.error) return { path: r.path, error: w.error }
        return { path: r.path, data: enc && enc !== 'buffer' ? r.data.toString(enc) : r.data }
      })
    },
    // Node streams with back-pressure both ways and bounded memory
    // (lib/streams.js); end is inclusive, as in fs.createReadStream.
    createReadStream (path, options) {
      checkPath(path, 'createReadStream')
      return readStream((offset, length) => files().read(sb, path, { offset, length }), path, options)
    },
    // flags 'w' (create or empty, then write in place) or 'a' (append).
    createWriteStream (path, options) {
      checkPath(path, 'createWriteStream')
      return writeStream((data, where) => files().write(sb, path, data, where), path, options)
    },
    // inotify events of path (lib/watch.js): resolves with { stop(), stats }
    // once the watch is in place.
    watch (path, onEvent, options) {
      return watch(sb, path, onEvent, options)
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
