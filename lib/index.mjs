// ESM entry: the same provider as the CommonJS build.
import cjs from './index.js'

export const fly = cjs.fly
export const FlyMachine = cjs.FlyMachine
export const detectRuntime = cjs.detectRuntime
export default cjs.fly
