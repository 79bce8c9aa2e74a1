#!/bin/sh
# Prepares a Debian 13 or 12 / Ubuntu 24.04 host for fly-local and builds its
# sandbox image (Debian 12 on every host: debian-archive-keyring lets
# debootstrap check it on Ubuntu too): the
# container runtimes (crun, and runc as the alternative), the tools that make machines' networks
# (iproute2, nftables) and images (debootstrap), then the image root itself
# (lib/local/image.js, from docker/provision.sh; a no-op when it is built
# for this definition already). One line of progress per step; run as root.
#
# It never starts or enables the host's own sshd: the sandbox's sshd runs
# only inside fly-local machines.
set -eu

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: must run as root" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)

# openssh-client: ssh-keygen and the tests' ssh; python3: the test helpers;
# e2fsprogs and util-linux: fly-local's volumes and each boot's root disk
# (mkfs.ext4, resize2fs, losetup, mount -o loop, fsfreeze, nsenter, setpriv and
# unshare for the boot's user namespace); libssl-dev: libcrypto.a, which the
# image's edge bridge (docker/flyedge.c, built static like flyexec) links for
# SHA-1/SHA-256, with libzstd-dev and zlib1g-dev for the static archives a
# newer OpenSSL's libcrypto.a needs (Debian 13's 3.5 is built with zstd);
# dnsmasq-base: the egress tests' stand-in internet resolver (the binary
# only: the package starts no service).
PACKAGES="crun runc debootstrap debian-archive-keyring nftables iproute2 util-linux e2fsprogs openssh-client python3 ca-certificates libssl-dev libzstd-dev zlib1g-dev dnsmasq-base"

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done

if [ -n "$missing" ]; then
  echo "setup-host.sh: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends $missing >/dev/null 2>&1
fi

status=0
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup-host.sh: node and npm are missing; install Node.js 18 or later first (bin/setup does)" >&2
  exit 1
fi
for tool in /usr/bin/crun /usr/sbin/runc /usr/sbin/nft /usr/sbin/debootstrap /usr/bin/setpriv /usr/bin/unshare; do
  [ -x "$tool" ] || { echo "setup-host.sh: $tool is missing" >&2; status=1; }
done
if ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then
  echo "setup-host.sh: the kernel has no overlayfs" >&2
  status=1
fi
[ "$status" -eq 0 ] || exit "$status"

echo "setup-host.sh: fly-local sandbox image"
exec node "$here/../lib/local/image.js" build
