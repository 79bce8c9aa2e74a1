// ES module declarations of lib/index.mjs (its own, so TypeScript under
// node16/nodenext does not read the CommonJS ones for the ES entry): the same
// types as lib/index.d.ts, and fly() as the default export, as index.mjs has.
import { fly } from './index.js'

export * from './index.js'
export default fly
