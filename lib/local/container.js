'use strict'
// The OCI runtime spec of a fly-local machine, and the process specs of
// commands run in it (crun/runc run, exec --process).
//
// What holds the sandbox in:
// - a user namespace: container ids 0-65535 are host ids ID_BASE + n, so
//   root inside is an unprivileged host uid, and every host file (owned by
//   unmapped ids) is "nobody" to it, with no capability over it;
// - its own mount, PID, UTS, IPC, cgroup and network namespaces (network.js
//   wires the netns up from a createRuntime hook);
// - root inside keeps only what sshd and the entrypoint need (setuid to the
//   user, chroot for privilege separation, file ownership); once sshd or
//   runuser switches to the sandbox user the kernel clears them all, and
//   no_new_privs (for the whole container) stops setuid binaries and file
//   capabilities from giving any back;
// - a seccomp profile modelled on the container runtimes' default: the
//   syscalls that reach kernel surface no sandbox needs (namespaces, mounts,
//   keyrings, bpf, perf, modules, clock) fail with EPERM;
// - nosuid on every mount a user can write, a read-only sysfs of the
//   machine's own network namespace, masked /proc and /sys paths as runc's
//   default spec has them (and vmcoreinfo);
// - socket families other than unix, IPv4, IPv6 and netlink refused.
const { ID_BASE, ID_COUNT } = require('./image')

const ROOT_CAPS = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL',
  'CAP_SETGID', 'CAP_SETUID', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_AUDIT_WRITE']
/* The egress policy's nftables rules and resolver (docker/egress) are
   root's in the guest, as on Fly: CAP_NET_ADMIN, over the machine's own
   network namespace only (its user namespace owns it), for the exec API's
   egress applier (updateNetwork; no other exec command) and for the image's entrypoint, which also gets
   CAP_SETPCAP to drop both from the bounding set of everything it starts
   (sshd, the edge bridge, the samplers, the workload): nf_tables in a user
   namespace is kernel surface (CVE-2022-1015, CVE-2023-32233, CVE-2024-1086:
   ARCHITECTURE.md) that only the entrypoint,
   the resolver it starts and the exec API reach. A machine whose config
   replaces the entrypoint gets neither. */
const EGRESS_CAPS = ['CAP_NET_ADMIN']
/* the one exec API command that gets EGRESS_CAPS (docker/egress, root's) */
const EGRESS_APPLIER = '/opt/computesdk/egress'
const ENTRYPOINT_CAPS = ['CAP_NET_ADMIN', 'CAP_SETPCAP']

const DENIED = ['add_key', 'bpf', 'clock_adjtime', 'clock_settime', 'delete_module', 'finit_module',
  'fsconfig', 'fsmount', 'fsopen', 'fspick', 'init_module', 'ioperm', 'iopl', 'kexec_file_load',
  'kexec_load', 'keyctl', 'lookup_dcookie', 'mount', 'mount_setattr', 'move_mount', 'name_to_handle_at',
  'nfsservctl', 'open_by_handle_at', 'open_tree', 'perf_event_open', 'pivot_root', 'quotactl',
  'quotactl_fd', 'reboot', 'request_key', 'setns', 'settimeofday', 'adjtimex', 'swapoff', 'swapon',
  'syslog', 'umount', 'umount2', 'unshare', 'uselib', 'userfaultfd', 'vm86', 'vm86old', 'acct',
  'io_uring_setup', 'io_uring_enter', 'io_uring_register']

/* Address families a sandbox has no use for: everything but AF_UNIX (1),
   AF_INET (2), AF_INET6 (10) and AF_NETLINK (16, iproute2 and glibc's
   getaddrinfo), which are what Python, Node, pip, npm and apt use. AF_VSOCK
   (40) has no network namespace (on a VM host it reaches the hypervisor),
   AF_KEY (15) and AF_ALG (38) are kernel surface, AF_PACKET (17) also needs
   CAP_NET_RAW, which the machine never has. socket() and socketpair() for
   them fail with EAFNOSUPPORT, as for a family the kernel lacks, so
   programs that probe one fall back. (A 32-bit x86 program's socketcall(2)
   carries the family in memory, which seccomp cannot read.) */
const DENIED_FAMILIES = [3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15]
const FIRST_DENIED_HIGH_FAMILY = 17
const EAFNOSUPPORT = 97

/* CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME */
const NS_FLAGS = [0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80]

function seccomp () {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32', 'SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'],
    syscalls: [
      { names: DENIED, action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
      /* clone3's flags sit in memory seccomp cannot read: ENOSYS makes libc
         fall back to clone(2), whose namespace flags are checked */
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 },
      ...NS_FLAGS.map((f) => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: 1,
        args: [{ index: 0, value: f, valueTwo: f, op: 'SCMP_CMP_MASKED_EQ' }]
      })),
      ...DENIED_FAMILIES.map((af) => ({
        names: ['socket', 'socketpair'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EAFNOSUPPORT,
        args: [{ index: 0, value: af, op: 'SCMP_CMP_EQ' }]
      })),
      {
        names: ['socket', 'socketpair'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EAFNOSUPPORT,
        args: [{ index: 0, value: FIRST_DENIED_HIGH_FAMILY, op: 'SCMP_CMP_GE' }]
      }
    ]
  }
}

/* A tmpfs's size in KiB: 1/part of the machine's memory. */
function tmpfsKb (memoryBytes, part) {
  return Math.max(1024, Math.floor(memoryBytes / part / 1024))
}

function capSet (caps) {
  return { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] }
}

/* The process spec of a command run in a machine as root with env (and
   the capabilities extra besides root's). */
function processSpec (argv, env, cwd, extra = EGRESS_CAPS) {
  return {
    terminal: false,
    user: { uid: 0, gid: 0 },
    args: argv,
    env: Object.entries(env || {}).map(([k, v]) => `${k}=${v}`),
    cwd: cwd || '/',
    capabilities: capSet([...ROOT_CAPS, ...extra]),
    noNewPrivileges: true
  }
}

/* The machine's config.json: opts.argv runs under tini (PID 1, which reaps
   orphans and dies with runc: -p SIGKILL); limits from opts.limits. */
function runtimeSpec (opts) {
  const { limits } = opts
  const skip = limits.skip || []
  const resources = { devices: [{ allow: false, access: 'rwm' }] }
  /* socket buffers: cgroup v2 charges them to the machine's memory; v1
     counts them apart, and only under a tcp limit of their own
     (memory.kmem.tcp.limit_in_bytes, limits.tcpBytes) */
  if (!skip.includes('memory')) {
    resources.memory = {
      limit: limits.memoryBytes,
      ...(limits.swap ? { swap: limits.memoryBytes } : {}),
      ...(limits.tcpBytes ? { kernelTCP: limits.tcpBytes } : {})
    }
  }
  if (!skip.includes('cpu')) resources.cpu = { quota: Math.round(limits.cpus * 100000), period: 100000 }
  if (!skip.includes('pids')) resources.pids = { limit: limits.pids }
  const nosuid = ['nosuid', 'nodev']
  return {
    ociVersion: '1.0.2',
    process: processSpec(['/usr/bin/tini', '-p', 'SIGKILL', '--', ...opts.argv], opts.env, '/', opts.imageEntrypoint ? ENTRYPOINT_CAPS : []),
    root: { path: 'rootfs', readonly: false },
    hooks: { createRuntime: [{ path: '/bin/sh', args: ['sh', '-c', opts.netScript], timeout: 20 }] },
    hostname: opts.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: [...nosuid, 'noexec'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: [...nosuid, 'noexec', 'mode=1777', `size=${tmpfsKb(limits.memoryBytes, 2)}k`] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: [...nosuid, 'noexec'] },
      /* a sysfs of the machine's own network namespace (which its user
         namespace owns): its interfaces only, none of the host's nor of
         other machines' veths and counters */
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['ro', ...nosuid, 'noexec'] },
      /* its own cgroup, read-only (the runtime mounts the machine's
         hierarchies under the cgroup namespace), so sandbox.getMetrics
         reads the machine's use, not the host's */
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['ro', ...nosuid, 'noexec', 'nodev'] },
      /* /tmp is on the root, as on Fly; /run is a tmpfs whose pages count
         against the machine's memory, sized as a slice of it */
      { destination: '/run', type: 'tmpfs', source: 'tmpfs', options: [...nosuid, 'mode=755', `size=${tmpfsKb(limits.memoryBytes, 4)}k`] },
      /* volumes (config.mounts) */
      ...(opts.volumes || []).map((v) => ({ destination: v.destination, type: 'bind', source: v.source, options: ['bind', ...nosuid] })),
      /* Fly's in-machine API socket (api-socket.js): root's, mode 0600 */
      ...(opts.apiSocket ? [{ destination: '/.fly/api', type: 'bind', source: opts.apiSocket, options: ['bind', ...nosuid, 'noexec'] }] : [])
    ],
    linux: {
      /* the user namespace: made and mapped by userns.js (owned by an uid
         of the boot's own) and joined, or else made by the runtime */
      ...(opts.userns ? {} : { uidMappings: [{ containerID: 0, hostID: ID_BASE, size: ID_COUNT }], gidMappings: [{ containerID: 0, hostID: ID_BASE, size: ID_COUNT }] }),
      namespaces: [
        { type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, opts.userns ? { type: 'user', path: opts.userns } : { type: 'user' },
        { type: 'cgroup' }, { type: 'network' }
      ],
      cgroupsPath: opts.cgroupsPath,
      resources,
      seccomp: seccomp(),
      maskedPaths: ['/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats',
        '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware',
        '/sys/kernel/vmcoreinfo', '/sys/kernel/notes', '/sys/devices/virtual/powercap', '/sys/kernel/debug', '/sys/kernel/tracing'],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger']
    }
  }
}

module.exports = { runtimeSpec, processSpec, EGRESS_APPLIER }
