// Type definitions for @computesdk/fly (hand-written).
import type {
  Provider,
  ProviderSandbox,
  CommandResult,
  RunCommandOptions,
  SandboxInfo,
  FileEntry,
  CreateSandboxOptions
} from '@computesdk/provider'

export interface FlyConfig {
  /**
   * Fly API token (`fly tokens create ...`); falls back to FLY_API_TOKEN. Bearer and FlyV1 tokens both work.
   * With neither a token nor apiHostname, the fly-local running on this host (registered by `npx fly-local`) is used.
   */
  apiToken?: string
  /** The Fly app that holds the sandboxes; falls back to FLY_APP_NAME, then 'computesdk'. Created when missing. */
  appName?: string
  /**
   * A tenant whose sandboxes share a network: they go in an app of their
   * own, `<appName>-t-<tenant>`, created on its own private network (made on
   * first create, removed with its last sandbox). Without it no sandbox
   * reaches another (the image's in-guest firewall). Lowercase letters,
   * digits and dashes, at most 30.
   */
  tenant?: string
  /** Organization slug used when the app has to be created; FLY_ORG, then 'personal'. */
  org?: string
  /** Region for new machines; FLY_REGION, then 'iad'. */
  region?: string
  /** Default sandbox image (build it from docker/); FLY_IMAGE, then 'computesdk-fly-sandbox:latest'. */
  image?: string
  /** Machines API base URL; FLY_API_HOSTNAME, then https://api.machines.dev. Use fly-local's `url` here. */
  apiHostname?: string
  /** Guest vCPUs (default 1). */
  cpus?: number
  /** Guest memory in MB (default 512); the same name as create's. */
  memory?: number
  /** The older name of `memory` (give one of the two). */
  memoryMb?: number
  /** 'shared' (default) or 'performance'. */
  cpuKind?: string
  /** How commands reach the machine: 'ssh' (default; streaming, SFTP) or 'exec' (the Machines API exec endpoint: buffered, slower). */
  transport?: 'ssh' | 'exec'
  /** SSH user in the sandbox (default 'sandbox'). */
  sshUser?: string
  /** Use password authentication (e.g. the seed image's 'sandbox'); by default a key is used and no password is set. */
  sshPassword?: string
  /** Client key (unencrypted OpenSSH ed25519 PEM); FLY_SSH_PRIVATE_KEY; generated per provider when absent. */
  sshPrivateKey?: string
  /** Connect to this host instead of the machine's private address. */
  sshHost?: string
  /** The sandbox's sshd port (default 2222; Fly's own SSH server owns 22). */
  sshPort?: number
  /** Skip the pinned host-key check (only for machines this provider did not create). */
  insecureSkipHostKeyCheck?: boolean
  /** Default sandbox lifetime in ms (0 = until destroyed). */
  timeout?: number
  /** Cap on buffered command output in bytes (default 64 MiB). */
  maxOutputBytes?: number
  /** How long to keep retrying the SSH connection while sshd starts (default 15000 ms). */
  connectTimeoutMs?: number
  /** How long create waits for the machine to be started (default 120000 ms). */
  startTimeoutMs?: number
  /** Deadline of a file call, or of starting a command that has no timeout (default 60000 ms). */
  opTimeoutMs?: number
  /** SSH keepalive interval; a busy session whose keepalives go unanswered twice fails (default 15 s). */
  keepaliveSec?: number
  /** Largest file readFile returns; a larger one is ERR_FILE_TOO_LARGE (default 256 MiB). */
  maxFileBytes?: number
  /** Most entries readdir returns; more is ERR_TOO_MANY_ENTRIES (default 100000). */
  maxEntries?: number
  /** Most code interpreter contexts in one sandbox, default ones included; more is ERR_CONTEXT_LIMIT (default 16). */
  maxContexts?: number
  /** Retry policy of idempotent API calls (defaults: 500, 5000, 30000). */
  retry?: { baseMs?: number; maxMs?: number; totalMs?: number }
  /** A command, file call or getUrl on a paused sandbox resumes it first (default true); false: FLY_MACHINE_NOT_RUNNING with `paused: true`. */
  autoResume?: boolean
  /** Default idle timeout in ms (0 = off): a sandbox with no inbound connection that long suspends (or stops) itself, with no provider process needed. */
  idleTimeout?: number
  /** What an idle sandbox does: 'suspend' (default; memory kept) or 'stop' (only the volume kept). */
  idleAction?: 'suspend' | 'stop'
  /** false is idleAction 'stop'. */
  keepMemory?: boolean
  /** What the lifetime `timeout` does: 'destroy' (default) or 'pause' (the machine suspends itself and is not destroyed). */
  onTimeout?: 'pause' | 'destroy'
  /** Default workspace volume for every sandbox (false: none, the default). */
  volume?: FlyVolumeOptions | false
  /**
   * A warm pool of suspended machines that create() claims (README, "Warm pool"). Pool machines
   * always exist (and are billed for their storage) until `provider.pool.drain()`.
   * Needs key authentication (not with sshPassword).
   */
  pool?: FlyPoolConfig
  /**
   * How SSH reaches a machine: 'private' (its 6PN address; create then adds no edge token,
   * service or public addresses) or 'edge' (Fly's public edge at `edgeUrl`). Unset: learned once
   * per provider (README, "Configuration").
   */
  reach?: 'private' | 'edge'
  /** The edge's URL (env FLY_EDGE_URL; default `https://<appName>.fly.dev`); fly-local: `srv.edgeUrl`. */
  edgeUrl?: string
  /** PEM certificates to trust for the edge instead of the system's CAs; fly-local: `srv.edgeCa`. */
  edgeCa?: string
}

export interface FlyVolumeOptions {
  /** Size in GB (1 to 500; default 1, or the source's size for a snapshot or a fork). */
  sizeGb?: number
}

export interface FlyPoolConfig {
  /** How many ready (suspended) machines to keep, 0 to 100. 0: claim what is there, never top up. */
  size: number
  /** Machines prepared at once while filling (default 2). */
  concurrency?: number
  /** Receives the background top-up's and claims' errors (which are also counted in stats()). */
  onError?: (err: FlyError) => void
}

/** Where the last claim's time went, in ms. */
export interface FlyPoolClaimTimes {
  listMs: number
  leaseMs: number
  getMs: number
  metadataMs: number
  startMs: number
  waitMs: number
  sshMs: number
  totalMs: number
}

export interface FlyPoolStats {
  /** The configured size. */
  size: number
  /** The pool key in the machines' `computesdk_pool` metadata (null before first use). */
  key: string | null
  /** Ready machines at the last count (null: not counted yet). */
  ready: number | null
  /** A top-up is running in this process. */
  filling: boolean
  claims: number
  /** Compatible creates that found no machine to claim. */
  misses: number
  /** Creates whose options the pool's machines do not have. */
  incompatible: number
  /** Machines this process prepared. */
  created: number
  claimErrors: number
  fillErrors: number
  errors: number
  lastError: FlyError | null
  lastClaim: FlyPoolClaimTimes | null
}

export interface FlyPool {
  /** Fills the pool to its size; rejects with FLY_POOL_FILL_FAILED (`errors`, `cause`) when machines could not be made. */
  fill(): Promise<{ created: number; ready: number | null }>
  /** Same as fill(). */
  warm(): Promise<{ created: number; ready: number | null }>
  /**
   * Destroys the pool's machines (with `{ all: true }` every pool machine of the app, whatever its
   * options); one being claimed right now is skipped. Rejects with FLY_POOL_DRAIN_FAILED (`errors`).
   */
  drain(options?: { all?: boolean }): Promise<{ destroyed: number; skipped: number }>
  /** Ready machines in the pool now (listed from the API). */
  size(): Promise<number>
  /** Resolves when no top-up runs in this process. */
  settled(): Promise<void>
  stats(): FlyPoolStats
}

/**
 * A sandbox's egress policy (README: Egress), enforced in the guest below the sandbox user.
 * Entries: domains ("example.com": that name only; "*.example.com": its subdomains) and CIDRs
 * (IPv4 or IPv6; a bare address is /32 or /128); at most 64 per list. Deny wins over allow;
 * with an allow-list nothing else opens. Metadata services and private ranges stay closed.
 */
export interface FlyNetworkPolicy {
  /** false: nothing leaves the sandbox (the master switch; default true). */
  internet?: boolean
  allowOut?: string[]
  denyOut?: string[]
}

/** The policy as getInfo() and updateNetwork() give it (normalised: CIDRs with their prefix, names lower-cased). */
export interface FlyNetworkInfo {
  internet: boolean
  allowOut: string[]
  denyOut: string[]
}

export interface FlyCreateOptions extends CreateSandboxOptions {
  /** The egress policy; none: open (the sandbox reaches what the host reaches, less metadata services and, on fly-local, private ranges). */
  network?: FlyNetworkPolicy
  /** Ports to expose: each gets a public port of its own in the app (getUrl gives its URL; a request wakes a paused sandbox). Any other port has a URL through the edge (README: URLs). */
  ports?: number[]
  /** Every port's URL needs no token (default false: private, README: URLs). */
  public?: boolean
  /** A Fly Volume of the sandbox's own at /home/sandbox (survives stops, restarts, crashes; removed by destroy); false: none. */
  volume?: FlyVolumeOptions | false
  /** Workspace volume restored from this snapshot ("app:volumeId:snapshotId", from provider.snapshot). */
  snapshotId?: string
  /** Workspace volume forked from this sandbox's volume (sandbox.fork() is the same). */
  fromSandbox?: string
  /** Idle timeout in ms (0 = off); see FlyConfig.idleTimeout. */
  idleTimeout?: number
  idleAction?: 'suspend' | 'stop'
  /** false is idleAction 'stop'. */
  keepMemory?: boolean
  onTimeout?: 'pause' | 'destroy'
  /** Recorded with the sandbox: every provider honours it for this sandbox. */
  autoResume?: boolean
  /** With idleTimeout: a shell command run as the sandbox user before the idle action (deadline timeoutMs, default 10000). */
  onIdle?: string | { command: string; timeoutMs?: number }
  /** Skip the SSH connect that create does before returning (default: connect). */
  waitForSsh?: boolean
  /**
   * Aborts the create at any stage: an aborted signal throws at once (nothing is sent); later,
   * the machine made so far is destroyed before create rejects with an `AbortError`
   * (`code` 'ABORT_ERR', `cause` the signal's reason, `sandboxId`/`machineId` when a machine existed).
   */
  signal?: AbortSignal
}

/** Options of runCommand; `args` is set by the runCommand(command, args) form. */
export interface FlyRunCommandOptions extends RunCommandOptions {
  args?: string[]
  /** 'root': run as root through the Machines API exec endpoint (buffered); never the default. */
  user?: 'root'
}

/** Byte offsets of a process's stream: the oldest byte still kept and the number written. */
export interface FlyStreamRange {
  start: number
  end: number
}

/** A process the sandbox's daemon holds (commands.list()). */
export interface FlyProcessInfo {
  id: string
  pid: number
  command: string
  running: boolean
  exitCode: number | null
  signal: number | null
  timedOut: boolean
  startedAt: Date
  endedAt: Date | null
  pty: boolean
  background: boolean
  stdout: FlyStreamRange
  stderr: FlyStreamRange
}

/** A byte offset for both streams, or one per stream. */
export type FlyFrom = number | { stdout?: number; stderr?: number }

export interface FlyStartOptions {
  cwd?: string
  env?: Record<string, string>
  /** ms: SIGTERM to the group, SIGKILL 2 s later, exit code 124. */
  timeout?: number
  onStdout?: (text: string) => void
  onStderr?: (text: string) => void
  /** false: stdin is /dev/null (default: a pipe sendStdin writes to). */
  stdin?: boolean
  /** Not counted as work for idleTimeout. */
  background?: boolean
}

export interface FlyCommandResult extends CommandResult {
  /** The signal that ended it (exitCode is then 128 + signal). */
  signal?: number
  timedOut?: boolean
}

export interface FlyProcessBase {
  /** Stable across provider instances and processes. */
  readonly id: string
  readonly pid: number
  /** Bytes the sandbox's ring dropped before this handle read them. */
  readonly lostBytes: number
  /** Signals the process group; true if it was signalled, false if it had ended. */
  kill(signal?: NodeJS.Signals | number): Promise<boolean>
  /** Stops following (the process runs on); wait() then rejects with PROCESS_DETACHED. */
  disconnect(): Promise<void>
}

export interface FlyCommandHandle extends FlyProcessBase {
  readonly exitCode: number | null
  /** True when the kept output passed maxOutputBytes (the callbacks got all of it). */
  readonly truncated: boolean
  readonly stdout: string
  readonly stderr: string
  sendStdin(data: string | Uint8Array): Promise<void>
  closeStdin(): Promise<void>
  /** The same result runCommand gives. */
  wait(): Promise<FlyCommandResult>
}

export interface FlyPtyHandle extends FlyProcessBase {
  sendInput(data: string | Uint8Array): Promise<void>
  resize(size: { cols: number; rows: number }): Promise<void>
  wait(): Promise<{ exitCode: number; durationMs: number; signal?: number; timedOut?: boolean }>
}

export interface FlyCommands {
  start(command: string, options?: FlyStartOptions): Promise<FlyCommandHandle>
  start(program: string, args: string[], options?: FlyStartOptions): Promise<FlyCommandHandle>
  list(): Promise<FlyProcessInfo[]>
  connect(id: string, options?: { onStdout?: (text: string) => void; onStderr?: (text: string) => void; from?: FlyFrom }): Promise<FlyCommandHandle>
  kill(id: string, signal?: NodeJS.Signals | number): Promise<boolean>
  sendStdin(id: string, data: string | Uint8Array): Promise<void>
  closeStdin(id: string): Promise<void>
}

export interface FlyPtyOptions {
  cols?: number
  rows?: number
  cwd?: string
  env?: Record<string, string>
  /** A shell command to run on the terminal (default: the user's login shell, interactive). */
  command?: string
  timeout?: number
  /** The terminal's output, bytes unchanged. */
  onData?: (data: Buffer) => void
}

export interface FlyPty {
  create(options?: FlyPtyOptions): Promise<FlyPtyHandle>
  connect(id: string, options?: { onData?: (data: Buffer) => void; from?: number }): Promise<FlyPtyHandle>
  resize(id: string, size: { cols: number; rows: number }): Promise<void>
  kill(id: string, signal?: NodeJS.Signals | number): Promise<boolean>
  sendInput(id: string, data: string | Uint8Array): Promise<void>
}

export interface FlyCodeResult extends CommandResult {
  /** stdout, plus stderr when the exit code is not 0 (the seed-era field). */
  output: string
  language: 'python' | 'node'
  /** Same as durationMs. */
  executionTime: number
  sandboxId: string
  provider: 'fly'
}

export type FlyRuntime = 'python' | 'node'

/** A code interpreter context: a kernel in the sandbox whose state lasts across runCode calls. */
export interface FlyCodeContext {
  id: string
  language: FlyRuntime
  cwd: string
}

export interface FlyCreateContextOptions {
  /** 'python' (default) or 'node'. */
  language?: FlyRuntime | 'python3' | 'javascript' | 'js'
  cwd?: string
  env?: Record<string, string>
}

/** One result of a cell (E2B's shape): the last expression's value or something displayed. */
export interface FlyCodeOutput {
  isMainResult: boolean
  text?: string
  html?: string
  markdown?: string
  /** SVG source. */
  svg?: string
  /** Base64 PNG (a matplotlib figure arrives as one). */
  png?: string
  /** Base64 JPEG. */
  jpeg?: string
  /** Base64 PDF. */
  pdf?: string
  latex?: string
  json?: unknown
  javascript?: string
  /** Other mime types, by mime type. */
  extra?: Record<string, unknown>
}

export interface FlyRunCodeOptions {
  /** The default context of this language (guessed from the code when absent and no context is given). */
  language?: FlyRuntime | 'python3' | 'javascript' | 'js'
  /** A context from createContext, or its id; its language wins. */
  context?: FlyCodeContext | string
  onStdout?: (text: string) => void
  onStderr?: (text: string) => void
  onResult?: (result: FlyCodeOutput) => void
  /** ms; the cell is interrupted and the context keeps its state (timedOut: true, error.name 'TimeoutError'). */
  timeout?: number
}

export interface FlyExecution extends FlyCodeResult {
  results: FlyCodeOutput[]
  logs: { stdout: string[]; stderr: string[] }
  /** The code raised (a result, not a thrown error); ContextCrashed when the kernel died; TimeoutError when interrupted. */
  error: { name: string; value: string; traceback: string } | null
  /** The main result's text. */
  text?: string
  /** 0, or 1 with an error. */
  exitCode: number
  timedOut: boolean
  /** The context's kernel had died and was started afresh for this call (its state lost). */
  restarted: boolean
  /** The context's id. */
  context: string
}

export interface FlyCodeInterpreter {
  /** At most maxContexts per sandbox (ERR_CONTEXT_LIMIT). */
  createContext(options?: FlyCreateContextOptions): Promise<FlyCodeContext>
  listContexts(): Promise<FlyCodeContext[]>
  /** A new kernel: the context's state is gone. */
  restartContext(context: FlyCodeContext | string): Promise<FlyCodeContext>
  removeContext(context: FlyCodeContext | string): Promise<void>
  runCode(code: string, options?: FlyRunCodeOptions): Promise<FlyExecution>
}

export interface FlyReadOptions {
  /** 'utf8' (default) returns a string; null or 'buffer' returns the exact bytes as a Buffer. */
  encoding?: BufferEncoding | 'buffer' | null
  /** Read from this byte offset (default 0). */
  offset?: number
  /** Read at most this many bytes (at most maxFileBytes); with it a larger file is no error. */
  length?: number
}

export interface FlyWriteOptions {
  /** Write in place at this byte offset (not atomic). */
  offset?: number
  /** Write in place at the end of the file (not atomic). */
  append?: boolean
}

/** One file of writeFiles. */
export interface FlyFileWrite {
  path: string
  data: string | Uint8Array
}

/** writeFiles' result for one file, in the order given. */
export type FlyFileWriteResult =
  | { path: string, ok: true }
  | { path: string, ok: false, error: FlyError }

/** readFiles' result for one file, in the order given. */
export type FlyFileReadResult<T = Buffer> =
  | { path: string, data: T, error?: undefined }
  | { path: string, data?: undefined, error: FlyError }

export interface FlyReadStreamOptions {
  /** First byte (default 0). */
  start?: number
  /** Last byte, inclusive (as fs.createReadStream); default: the end of the file. */
  end?: number
  /** Bytes per piece (default 2 MiB, at most 64 MiB). */
  highWaterMark?: number
}

export interface FlyWriteStreamOptions {
  /** 'w' (default): create or empty, then write in place; 'a': append. */
  flags?: 'w' | 'a'
  /** Bytes per piece (default 2 MiB, at most 64 MiB). */
  highWaterMark?: number
}

export type FlyWatchEvent =
  | { type: 'create' | 'write' | 'remove', path: string }
  | { type: 'rename', path: string, oldPath?: string }
  /** Events may have been missed: inotify's queue overflowed ('kernel'), too many directories ('watches'), more than maxQueued waiting for onEvent ('queue'), or the watch was restarted after the watcher or connection went ('restart'). */
  | { type: 'overflow', reason: 'kernel' | 'watches' | 'queue' | 'restart' | string }

export interface FlyWatchOptions {
  /** Watch every directory below path too, and new ones as they appear. */
  recursive?: boolean
  /** Stops the watch when aborted. */
  signal?: AbortSignal
  /** Most events waiting for onEvent before an overflow (default 10,000). */
  maxQueued?: number
}

export interface FlyWatchHandle {
  /** Ends the watcher in the sandbox; resolves once it is gone (or after 5 s). */
  stop(): Promise<void>
  readonly stats: { events: number, dropped: number, restarts: number, maxQueued: number, queued: number }
}

export interface FlyFileSystem {
  readFile(path: string): Promise<string>
  readFile(path: string, options: { encoding: null | 'buffer' }): Promise<Buffer>
  readFile(path: string, options: FlyReadOptions): Promise<string | Buffer>
  /** Replaces the file atomically (a temporary beside it renamed over it; the old mode kept), or with offset/append writes in place. Strings are written as UTF-8 exactly; Buffers byte for byte (not copied: do not modify the Buffer until the promise settles). */
  writeFile(path: string, content: string | Uint8Array, options?: FlyWriteOptions): Promise<void>
  /** Many files in one pipelined call, each atomic, parents made; one result per file. */
  writeFiles(files: FlyFileWrite[]): Promise<FlyFileWriteResult[]>
  readFiles(paths: string[]): Promise<FlyFileReadResult<Buffer>[]>
  readFiles(paths: string[], options: { encoding: BufferEncoding }): Promise<FlyFileReadResult<string>[]>
  /** A Readable of the file's bytes, with back-pressure and bounded memory. */
  createReadStream(path: string, options?: FlyReadStreamOptions): import('stream').Readable
  /** A Writable into the file (in place), with back-pressure and bounded memory. */
  createWriteStream(path: string, options?: FlyWriteStreamOptions): import('stream').Writable
  /** inotify events of path; resolves once the watch is in place. SSH transport only (FLY_UNSUPPORTED on exec). */
  watch(path: string, onEvent: (event: FlyWatchEvent) => void | Promise<void>, options?: FlyWatchOptions): Promise<FlyWatchHandle>
  readdir(path: string): Promise<FileEntry[]>
  /** mkdir -p. */
  mkdir(path: string): Promise<void>
  exists(path: string): Promise<boolean>
  /** Removes a file or a whole tree. */
  remove(path: string): Promise<void>
}

/** What getMetrics() gives: measured inside the sandbox. */
export interface FlyMetrics {
  /** Share of the sandbox's CPU allowance in use, 0-100 (over 500 ms, or since the previous kept sample). */
  cpuPercent: number
  /** Its CPU allowance (the cgroup quota, or its cores). */
  cpus: number
  /** Used minus inactive page cache. */
  memoryUsedBytes: number
  /** Its memory limit. */
  memoryTotalBytes: number
  /** /home/sandbox (the workspace volume when there is one). */
  diskUsedBytes: number
  diskTotalBytes: number
  /** / */
  rootUsedBytes?: number
  rootTotalBytes?: number
  at: Date
}

export interface FlyMetricsOptions {
  /** The samples kept since then (one per 5 s, the last hour), oldest first. */
  since: Date | number
}

export interface FlyPauseOptions {
  /** true (default): suspend, keeping memory, processes and files; false: stop, keeping only the volume. */
  keepMemory?: boolean
}

/** getUrl's options (README: URLs). */
export interface FlyGetUrlOptions {
  port: number
  /** 'http' and 'https' give https://, 'ws' and 'wss' give wss:// (the edge is TLS only). */
  protocol?: 'http' | 'https' | 'ws' | 'wss'
  /** Seconds (1 to 365 days): the link is refused after that (403 token_expired). Default: as long as the URL key. */
  expiresIn?: number
  /** This port's URL needs no token from now on (not with expiresIn). */
  public?: boolean
}

/** What getInfo() gives: SandboxInfo with 'paused' (suspended, or stopped by pause() or the idle watch). */
export interface FlySandboxInfo extends Omit<SandboxInfo, 'status'> {
  status: SandboxInfo['status'] | 'paused'
  /** The egress policy (open when none was set). */
  network: FlyNetworkInfo
}

export interface FlySnapshot {
  /** "appName:volumeId:snapshotId". */
  id: string
  provider: 'fly'
  sandboxId: string | null
  volumeId: string
  createdAt: Date
  /** Bytes. */
  size: number
  volumeSizeGb?: number
  status?: string
  retentionDays?: number
  digest?: string
  /** As given to create (Fly stores neither; list does not return them). */
  name?: string
  metadata?: Record<string, string>
}

/** The provider's own sandbox object (what getInstance() returns). */
export declare class FlyMachine {
  readonly sandboxId: string
  appName: string
  machineId: string
  name?: string
  region: string
  state: string
  privateIp: string | null
  image: string | null
  createdAt: Date
  metadata: Record<string, string>
  hostKeyFingerprint: string | null
  /** The workspace volume's id, or null. */
  volumeId: string | null
  readonly filesystem: FlyFileSystem
  /** Process handles (README: Processes and terminals). */
  readonly commands: FlyCommands
  /** Terminals. */
  readonly pty: FlyPty
  /** Idempotent; resolves once the machine is suspended (or stopped). */
  pause(options?: FlyPauseOptions): Promise<void>
  /** Idempotent; resolves once the machine is started and answers over SSH. */
  resume(): Promise<void>
  /** A new sandbox whose workspace volume is forked from this one's. */
  fork(options?: FlyCreateOptions): Promise<FlyMachine>
  /** A new URL key: every private URL given out before is refused (403 token_invalid). */
  rotateUrlKey(): Promise<void>
  runCommand(command: string, args: string[], options?: RunCommandOptions): Promise<CommandResult>
  runCommand(command: string, options?: FlyRunCommandOptions): Promise<CommandResult>
  runCode(code: string, runtime?: FlyRuntime): Promise<FlyCodeResult>
  /** CPU, memory and disk use now, measured inside the sandbox. */
  getMetrics(): Promise<FlyMetrics>
  /** The samples the sandbox kept since options.since. */
  getMetrics(options: FlyMetricsOptions): Promise<FlyMetrics[]>
  /** In a code interpreter context that keeps its state (the options form). */
  runCode(code: string, options: FlyRunCodeOptions): Promise<FlyExecution>
  readonly codeInterpreter: FlyCodeInterpreter
  /** Replaces the egress policy of the running sandbox (omitted lists are empty); in force for new connections when it resolves. */
  updateNetwork(network: FlyNetworkPolicy): Promise<FlyNetworkInfo>
}

/** A ComputeSDK sandbox with the seed's extras. */
export interface FlySandbox extends Omit<ProviderSandbox<FlyMachine>, 'runCommand' | 'filesystem' | 'getUrl'> {
  /** The URL of any port the sandbox listens on, private (a token in it) unless public (README: URLs). */
  getUrl(options: FlyGetUrlOptions): Promise<string>
  /** A new URL key: every private URL given out before is refused (403 token_invalid). */
  rotateUrlKey(): Promise<void>
  runCommand(command: string, args: string[], options?: RunCommandOptions): Promise<CommandResult>
  runCommand(command: string, options?: FlyRunCommandOptions): Promise<CommandResult>
  /** Runs code as a file on the interpreter's stdin; without a runtime, a heuristic picks python or node. */
  runCode(code: string, runtime?: FlyRuntime): Promise<FlyCodeResult>
  /** In a code interpreter context that keeps its state (the options form). */
  runCode(code: string, options: FlyRunCodeOptions): Promise<FlyExecution>
  readonly codeInterpreter: FlyCodeInterpreter
  readonly filesystem: FlyFileSystem
  readonly commands: FlyCommands
  readonly pty: FlyPty
  /** status is also 'paused' (typed as SandboxInfo until ComputeSDK's own has it: read it as FlySandboxInfo). */
  getInfo(): Promise<SandboxInfo>
  pause(options?: FlyPauseOptions): Promise<void>
  resume(): Promise<void>
  fork(options?: FlyCreateOptions): Promise<FlySandbox>
  getMetrics(): Promise<FlyMetrics>
  getMetrics(options: FlyMetricsOptions): Promise<FlyMetrics[]>
  /** Replaces the egress policy of the running sandbox (omitted lists are empty); in force for new connections when it resolves. */
  updateNetwork(network: FlyNetworkPolicy): Promise<FlyNetworkInfo>
}

export interface FlyProvider extends Omit<Provider<FlyMachine>, 'sandbox'> {
  readonly name: 'fly' | string
  /** The warm pool's controls (present without a pool too: size 0). */
  readonly pool: FlyPool
  readonly sandbox: {
    create(options?: FlyCreateOptions): Promise<FlySandbox>
    getById(sandboxId: string): Promise<FlySandbox | null>
    list(): Promise<FlySandbox[]>
    /** Idempotent (a gone machine is success); rejects with FLY_DESTROY_FAILED (`cause`) when the machine could not be removed. */
    destroy(sandboxId: string): Promise<void>
  }
  readonly snapshot: {
    /** A snapshot of the sandbox's workspace volume (FLY_VOLUME_REQUIRED without one). */
    create(sandboxId: string, options?: { name?: string; metadata?: Record<string, string> }): Promise<FlySnapshot>
    /** Newest first: one sandbox's, or those of every sandbox of the provider's app. */
    list(options?: { sandboxId?: string; limit?: number }): Promise<FlySnapshot[]>
    /** Always FLY_SNAPSHOT_DELETE_UNSUPPORTED: Fly's API has no snapshot delete (they expire after snapshot_retention). */
    delete(snapshotId: string): Promise<never>
  }
}

/** Creates the Fly provider. Errors carry a stable `code` (FLY_*, SSH_*, SFTP_*, ERR_*). */
export declare function fly(config?: FlyConfig): FlyProvider
/** The guess runCode makes when no runtime is given. */
export declare function detectRuntime(code: string): FlyRuntime

export interface FlyError extends Error {
  code: string
  status?: number
  flyError?: string
  requestId?: string
  path?: string
  /** FLY_MACHINE_NOT_RUNNING, FLY_MACHINE_FAILED: the machine's state. */
  state?: string
  /** FLY_MACHINE_NOT_RUNNING: the machine is paused (suspended, or stopped by pause() or the idle watch); resume() wakes it. */
  paused?: boolean
  /** FLY_PORT_NOT_EXPOSED: the port asked for and the ones the sandbox exposes. */
  port?: number
  exposed?: number[]
  /** FLY_DESTROY_FAILED after the machine went, or a failed create: the volume concerned. */
  volumeId?: string
  snapshotId?: string
  /** A failed or aborted create (whose machine was then destroyed), FLY_DESTROY_FAILED: the sandbox concerned. */
  sandboxId?: string
  machineId?: string
  /** FLY_DESTROY_FAILED: the API error that stopped the removal; ABORT_ERR: the signal's reason. */
  cause?: unknown
  /** A failed create whose machine could not be removed either: that error (the machine may be left). */
  destroyError?: FlyError
  /** FLY_POOL_FILL_FAILED, FLY_POOL_DRAIN_FAILED: every error. */
  errors?: FlyError[]
}

export default fly
