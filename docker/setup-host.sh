#!/bin/sh
# Prepares a Debian 12 host for fly-local: fly-local machines run on this
# host's userland (every image name maps to it), so it needs what the sandbox
# image has. Idempotent and quiet; run as root.
#
# It never starts or enables the host's own sshd: the sandbox's sshd runs only
# inside fly-local machines, on their own 127.x.y.z:2222 addresses.
set -eu

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: must run as root" >&2
  exit 1
fi

PACKAGES="openssh-server openssh-sftp-server python3 python3-pip python3-venv build-essential iproute2 util-linux procps"

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done

if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep apt from starting services it installs (the host's sshd).
  policy=/usr/sbin/policy-rc.d
  created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    created_policy=1
  fi
  apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  if [ -n "$created_policy" ]; then rm -f "$policy"; fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now ssh.service >/dev/null 2>&1 || true
  fi
fi

status=0
if ! command -v node >/dev/null 2>&1; then
  echo "setup-host.sh: node is missing; install Node.js 20 as /usr/bin/node" >&2
  status=1
else
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "setup-host.sh: node $(node --version) found; fly-local machines expect Node.js 20+" >&2
    status=1
  fi
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup-host.sh: npm is missing (it ships with Node.js)" >&2
  status=1
fi
for tool in /usr/sbin/sshd /usr/bin/python3 /usr/bin/nsenter; do
  [ -x "$tool" ] || { echo "setup-host.sh: $tool is missing" >&2; status=1; }
done
if ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then
  echo "setup-host.sh: the kernel has no overlayfs" >&2
  status=1
fi
exit "$status"
