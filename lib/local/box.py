# fly-local machine launcher (run by runtime.js as `python3 -I -S box.py`).
#
# One process does what a shell script would need thirty forks for, so a
# machine boots in tens of milliseconds: it unshares the mount, PID, UTS and
# IPC namespaces, forks the machine's PID 1, builds the copy-on-write root
# (overlayfs over the host root, fresh /proc, /tmp, /run and a private /dev),
# writes config.files into it, pivots into it and runs the main process.
# PID 1 then reaps orphans until the main process exits; its exit tears the
# whole PID namespace down.
#
# Input: one JSON object on stdin (never on disk: files may hold secrets).
# Output on fd 3, one line each: "pid <host pid of the machine's PID 1>",
# "started", "exit <code> <signal>", or "error <message>".
import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
SYS_PIVOT_ROOT = {'x86_64': 155, 'aarch64': 41}.get(os.uname().machine, 155)

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def mount(src, target, fstype, flags=0, data=None):
    _check(libc.mount(src.encode() if src else None, target.encode(),
                      fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                      data.encode() if data else None), 'mount ' + target)


def _names_and_ids(path):
    names, ids = set(), set()
    with open(path) as f:
        for line in f:
            parts = line.split(':')
            if len(parts) > 2:
                names.add(parts[0])
                try:
                    ids.add(int(parts[2]))
                except ValueError:
                    pass
    return names, ids


def add_user(root, name):
    """The image's sandbox user, created in the machine's overlay (never on
    the host): what `useradd -m` would do, without its 60 ms."""
    etc = root + '/etc'
    users, uids = _names_and_ids(etc + '/passwd')
    if name in users:
        return
    groups, gids = _names_and_ids(etc + '/group')
    uid = 1000
    while uid in uids or uid in gids:
        uid += 1
    home = '/home/' + name
    days = int(__import__('time').time() // 86400)
    with open(etc + '/passwd', 'a') as f:
        f.write('%s:x:%d:%d::%s:/bin/bash\n' % (name, uid, uid, home))
    with open(etc + '/group', 'a') as f:
        f.write('%s:x:%d:\n' % (name, uid))
    # '*' (no password) rather than a locked '!': sshd without PAM refuses
    # key logins to locked accounts.
    with open(etc + '/shadow', 'a') as f:
        f.write('%s:*:%d:0:99999:7:::\n' % (name, days))
    if os.path.exists(etc + '/gshadow'):
        with open(etc + '/gshadow', 'a') as f:
            f.write('%s:!::\n' % name)
    dst = root + home
    os.makedirs(dst, mode=0o750, exist_ok=True)
    os.chown(dst, uid, uid)
    skel = etc + '/skel'
    for dirpath, dirnames, filenames in os.walk(skel):
        rel = os.path.relpath(dirpath, skel)
        target = dst if rel == '.' else os.path.join(dst, rel)
        if rel != '.':
            os.mkdir(target, 0o755)
            os.chown(target, uid, uid)
        for fn in filenames:
            with open(os.path.join(dirpath, fn), 'rb') as src:
                data = src.read()
            out = os.path.join(target, fn)
            with open(out, 'wb') as f:
                f.write(data)
            os.chown(out, uid, uid)


def build_root(cfg):
    run = cfg['run']
    root = run + '/root'
    # Nothing mounted below may propagate back to the host.
    mount(None, '/', None, MS_REC | MS_PRIVATE)
    mount('overlay', root, 'overlay', 0,
          'lowerdir=/,upperdir=%s/upper,workdir=%s/work' % (run, run))
    mount('proc', root + '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount('tmpfs', root + '/tmp', 'tmpfs', MS_NOSUID | MS_NODEV, 'mode=1777')
    mount('tmpfs', root + '/run', 'tmpfs', MS_NOSUID | MS_NODEV, 'mode=0755')
    try:
        mount('sysfs', root + '/sys', 'sysfs', MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass
    # A private /dev: the harmless nodes, our own ptys and shm, so a machine
    # sees neither the host's devices nor another machine's /dev/shm.
    dev = root + '/dev'
    mount('tmpfs', dev, 'tmpfs', MS_NOSUID, 'mode=0755')
    for name in ('null', 'zero', 'full', 'random', 'urandom', 'tty'):
        open(dev + '/' + name, 'w').close()
        mount('/dev/' + name, dev + '/' + name, None, MS_BIND)
    os.mkdir(dev + '/pts')
    os.mkdir(dev + '/shm')
    mount('devpts', dev + '/pts', 'devpts', MS_NOSUID | MS_NOEXEC,
          'newinstance,ptmxmode=0666,mode=0620,gid=5')
    mount('tmpfs', dev + '/shm', 'tmpfs', MS_NOSUID | MS_NODEV, 'mode=1777')
    for name, target in (('ptmx', 'pts/ptmx'), ('fd', '/proc/self/fd'),
                         ('stdin', '/proc/self/fd/0'), ('stdout', '/proc/self/fd/1'),
                         ('stderr', '/proc/self/fd/2')):
        os.symlink(target, dev + '/' + name)

    for f in cfg['files']:
        path = root + f['path']
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, bytes.fromhex(f['hex']))
            os.fchmod(fd, f['mode'])
        finally:
            os.close(fd)

    if cfg.get('user'):
        add_user(root, cfg['user'])

    with open(root + '/etc/hosts', 'a') as hosts:
        hosts.write('%s\t%s\n' % (cfg['ip'], cfg['hostname']))
    with open(root + '/etc/hostname', 'w') as hn:
        hn.write(cfg['hostname'] + '\n')

    os.chdir(root)
    os.mkdir('.fl-oldroot')
    _check(libc.syscall(SYS_PIVOT_ROOT, b'.', b'.fl-oldroot'), 'pivot_root')
    os.chdir('/')
    _check(libc.umount2(b'/.fl-oldroot', MNT_DETACH), 'umount old root')
    os.rmdir('/.fl-oldroot')


def init(cfg, status):
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    for procs in cfg['cgroups']:
        try:
            with open(procs, 'w') as f:
                f.write('0')
        except OSError:
            pass
    name = cfg['hostname'].encode()
    _check(libc.sethostname(name, len(name)), 'sethostname')
    build_root(cfg)

    # As PID 1 we only get signals we handle; ignore the ones Python handles.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    argv = cfg['argv']
    env = cfg['env']
    main = os.fork()
    if main == 0:
        try:
            os.close(3)
            os.setsid()
            for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            os.write(2, ('fly-local: cannot run %s: %s\n' % (argv[0], e.strerror)).encode())
        os._exit(127)
    status.write('started\n')
    status.flush()
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == main:
            break
    if os.WIFSIGNALED(st):
        code, sig = 128 + os.WTERMSIG(st), os.WTERMSIG(st)
    else:
        code, sig = os.WEXITSTATUS(st), 0
    status.write('exit %d %d\n' % (code, sig))
    status.flush()
    os._exit(code)


def main():
    status = os.fdopen(3, 'w')
    cfg = json.loads(sys.stdin.buffer.read())
    devnull = os.open('/dev/null', os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # If fly-local dies, so does the machine.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC), 'unshare')
    except OSError as e:
        status.write('error %s\n' % e.strerror)
        sys.exit(1)
    child = os.fork()
    if child == 0:
        try:
            init(cfg, status)
        except Exception as e:  # report, then die: the machine failed to boot
            status.write('error %s\n' % str(e).replace('\n', ' '))
            status.flush()
            os._exit(1)
    status.write('pid %d\n' % child)
    status.close()
    cfg = None
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _, st = os.waitpid(child, 0)
    if os.WIFSIGNALED(st):
        signal.signal(os.WTERMSIG(st), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(st))
    sys.exit(os.WEXITSTATUS(st))


main()
