// Type definitions for @computesdk/fly/local (hand-written): fly-local, the
// local emulator of the Fly Machines API (lib/local/index.js).
import type { EventEmitter } from 'events'

export interface FlyLocalOptions {
  /** The API's bearer token (default: a random one, in `srv.token`). */
  token?: string
  /** Listen address (default '127.0.0.1'). */
  host?: string
  /** Listen port (default 0: any free port, in `srv.port`). */
  port?: number
  /** The region machines report (default 'iad'). */
  region?: string
  /** No log lines (default false). */
  quiet?: boolean
  /** Where log lines go when not quiet (default: none). */
  log?: (line: string) => void
  /** How long a destroyed machine stays readable, in ms (default 5000). */
  destroyedGraceMs?: number
  /** The proxy's autostop delay for an idle machine with public ports, in ms. */
  autostopMs?: number
  /** How long the proxy waits for a woken machine, in ms. */
  proxyWakeMs?: number
}

export interface FlyLocalFaultSpec {
  /** Only requests of this method. */
  method?: string
  /** Only paths starting with this string, or matching this RegExp. */
  path?: string | RegExp
  /** Only requests about this machine id. */
  machine?: string
  /** Answer with this status instead. */
  status?: number
  /** Retry-After (seconds) with `status`. */
  retryAfter?: number
  /** The body answered with `status`. */
  body?: unknown
  /** Delay before handling, in ms. */
  latencyMs?: number
  /** Drop the connection. */
  drop?: boolean
  /** Handle the request first; replace only its reply. */
  afterHandling?: boolean
  /** How many requests it applies to (default 1; Infinity: until removed). */
  times?: number
}

export interface FlyLocalFaults {
  /** Adds a rule; returns its id. */
  add(spec?: FlyLocalFaultSpec): number
  remove(id: number): void
  clear(): void
  list(): Array<FlyLocalFaultSpec & { id: number; hits: number; remaining: number }>
}

export interface FlyLocalMachine {
  app: string
  network: string
  id: string
  state: string
  pid: number
  private_ip: string
}

export interface FlyLocalServer {
  /** The API's base URL: `fly({ apiHostname: srv.url, apiToken: srv.token })`. */
  url: string
  token: string
  host: string
  port: number
  faults: FlyLocalFaults
  /** Emits 'state' `{ app, id, state }` on every transition and 'purged' `{ app, id }`. */
  events: EventEmitter
  stats(): { connections: number; requests: number }
  /** 'ext4' (sized loop-mounted images) or 'directory' (no size limit). */
  volumeBackend: 'ext4' | 'directory'
  machines(): FlyLocalMachine[]
  /** Resolves once the machine's sshd answers. */
  waitSsh(id: string, timeoutMs?: number): Promise<void>
  killSshd(id: string): Promise<number>
  freezeSshd(id: string): Promise<number>
  thawSshd(id: string): Promise<number>
  /** A new host key for the machine's sshd (its public key), the listener restarted. */
  swapHostKey(id: string): Promise<{ publicKey: string }>
  /** The proxy's open public ports on 127.0.0.1. */
  publicPorts(): Array<{ port: number; app: string }>
  /** Destroys every machine it made and closes; idempotent. */
  stop(): Promise<void>
}

/**
 * Starts an emulator; resolves once it listens. Needs root: without it, rejects with
 * `code: 'FLY_LOCAL_NEEDS_ROOT'`.
 */
export declare function start(options?: FlyLocalOptions): Promise<FlyLocalServer>
