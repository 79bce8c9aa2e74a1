#!/usr/bin/env bash
# Fresh-machine check (issues 9, 22): the README's Quick start commands,
# exactly as written there, in a fresh clone inside a freshly debootstrapped
# Debian userland of the release given (trixie = Debian 13, the default, or
# bookworm = Debian 12) that has nothing else installed, entered as a
# privileged root on this kernel.  Both commands must succeed.
#
# How the root is entered: `nsenter` into the root's network namespace, then
# `unshare` makes a private mount namespace and a PID namespace; the root is
# bound onto itself and gets a new /proc, a sysfs of its network namespace
# with the host's writable cgroup trees on it (v1 hierarchies and/or the v2
# one; `ip netns exec` would give a sysfs without them), the host's /dev,
# then `pivot_root` into it (not `chroot`: the kernel refuses a user
# namespace to a chrooted process, and fly-local's containers need one; the
# host's tree is detached at once).  No user namespace: root inside has every
# capability, so what bin/setup does inside (apt, a nested debootstrap,
# mounts, runc containers, network namespaces, nftables) works as on a real
# machine.
#
# Its own network namespace: the root's fly-local writes nftables tables and
# forwarding sysctls, and those must not land in the host's namespace (where
# other fly-locals run: Debian 12's nft 1.0.6 segfaults listing tables that
# Debian 13's nft 1.1.3 wrote, issue 22).  The namespace has one veth to the
# host, 10.213.x.y/30, NATed by a table of this script's own
# (ip computesdk_fly_ci_<pid>), which is how it reaches Debian's mirror and
# the npm registry.  Every mount lives and dies with the private mount
# namespace, and every process with the PID namespace; the cleanup deletes
# the network namespace (its veth goes with it) and the table, and restores
# ip_forward if it had to turn it on, so a failure or an interrupt leaves
# nothing behind.
#
# Its TMPDIR is /var/tmp: loop devices are the kernel's, seen from every
# namespace, and a fly-local sweeps those named <its TMPDIR>/fly-local-<pid>-…
# whose pid is dead; a host fly-local from before that sweep checked the
# image's inode would take the root's live volumes (named by the root's
# paths, pids of the root's PID namespace) for stale ones and detach them.
#
# What the root is handed besides the clone: the host's DNS config, apt
# sources naming the host's Debian mirror (what a Debian install has: main,
# -updates, -security), and, because this network intercepts TLS, the host's
# CA certificates and NODE_EXTRA_CA_CERTS.  A user's machine needs none of
# that.  Download caches (apt's .debs, npm's tarballs) are kept between runs
# under $cache unless FLY_FRESH_COLD=1; they hold downloads, not installs.
#
# Usage (as root): .ci/fresh-machine.sh [trixie|bookworm]      env: FLY_FRESH_COLD=1 (empty
# download caches), FLY_CI_CACHE (default /var/cache/computesdk-fly-ci),
# FLY_FRESH_DEADLINE (seconds inside the root, default 1200),
# FLY_FRESH_KEEP=1 (keep the root), FLY_CI_NODE (the LTS major, default 24).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FLY_CI_CACHE:-/var/cache/computesdk-fly-ci}
deadline=${FLY_FRESH_DEADLINE:-1200}
say() { echo "fresh-machine: $*"; }
die() { echo "fresh-machine: $*" >&2; exit 1; }
release=${1:-trixie}
case "$release" in
  trixie | 13) release=trixie version=13 ;;
  bookworm | 12) release=bookworm version=12 ;;
  *) die "usage: $0 [trixie|bookworm] (Debian 13 or 12)" ;;
esac
base=$cache/$release-minbase.tar.gz

[ "$(id -u)" = 0 ] || die "run me as root"
for tool in debootstrap unshare nsenter pivot_root git timeout ip nft; do
  command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$tool" >/dev/null 2>&1 ||
    die "$tool is missing (apt-get install debootstrap util-linux coreutils git iproute2 nftables)"
done
export PATH=$PATH:/usr/sbin:/sbin

# The host's Debian mirror and security mirror, from its apt sources (deb822
# "URIs:" or one-line "deb URL suite" entries).
mirror_for() { # $1: a suite pattern (bookworm or bookworm-security)
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk -v want="$1" '
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) { print uri; exit } }
      /^deb / { u = $2; if ($2 ~ /^\[/) { for (i = 2; i <= NF && $i !~ /\]$/; i++); u = $(i + 1); s = $(i + 2) } else s = $3
                if (s == want) { print u; exit } }' || true  # awk's early exit may SIGPIPE cat
}
# (a Debian 12 host lists only bookworm: its mirror serves trixie too)
mirror=$(mirror_for "$release"); mirror=${mirror:-$(mirror_for bookworm)}; mirror=${mirror:-http://deb.debian.org/debian}
security=$(mirror_for "$release-security"); security=${security:-$(mirror_for bookworm-security)}
security=${security:-http://deb.debian.org/debian-security}

# The network namespace's names and addresses, from this script's pid.
netns=computesdk-fly-fresh-$$
veth=cfresh$$
table=computesdk_fly_ci_$$
b=$(($$ % 16384))
subnet=10.213.$((b >> 6)).$(((b & 63) * 4))
host_ip=10.213.$((b >> 6)).$(((b & 63) * 4 + 1))
root_ip=10.213.$((b >> 6)).$(((b & 63) * 4 + 2))
forward_was=""

work=$(mktemp -d /var/tmp/computesdk-fly-fresh.XXXXXX)
root=$work/root
runner=""
# shellcheck disable=SC2317  # (a trap handler)
cleanup() {
  local rc=$?
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
    kill -TERM "$runner" 2>/dev/null || true  # unshare --kill-child: its PID 1 dies, then every process inside
    wait "$runner" 2>/dev/null || true
  fi
  # The network: the namespace (its veth goes with it), the NAT table, and
  # ip_forward as it was.
  # (each step on its own: one that fails must not skip the rest; the veth
  # goes with the namespace, asynchronously)
  [ ! -e "/run/netns/$netns" ] || ip netns delete "$netns" || true
  [ ! -e "/sys/class/net/$veth" ] || ip link delete "$veth" 2>/dev/null || true
  nft delete table ip "$table" 2>/dev/null || true
  [ -z "$forward_was" ] || echo "$forward_was" >/proc/sys/net/ipv4/ip_forward || true
  # The root's mounts were made in the private namespace and died with it;
  # only a debootstrap that failed half-way can leave its own (its /proc).
  awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" || true; done
  # Refuse to delete anything if a mount is still there (it could be the
  # host's /dev or /sys).
  if grep -q " $work/" /proc/self/mountinfo; then
    echo "fresh-machine: mounts remain under $work; not removing it" >&2
  elif [ -z "${FLY_FRESH_KEEP:-}" ]; then
    rm -rf --one-file-system "$work"
  else
    echo "fresh-machine: kept $root"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# thaw_after_exit RUNNER: once the root's PID 1 (RUNNER's grandchild) is
# exiting, the freezer cgroups (v1 freezer.state, v2 cgroup.freeze) of every
# process still under it are thawed.
thaw_after_exit() {
  local u p1 p next cg
  u=$(pgrep -P "$1" | head -n 1) && p1=$(pgrep -P "$u" | head -n 1) || return 0
  # (an exiting task has released its memory: no command line any more)
  [ -e "/proc/$p1" ] && [ -z "$(tr -d '\0' <"/proc/$p1/cmdline" 2>/dev/null)" ] || return 0
  next=$p1
  while [ -n "$next" ]; do
    next=$(ps -eo pid=,ppid= | awk -v want="$next" 'BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) in_[w[i]] = 1 } in_[$2] { print $1 }' | tr '\n' ' ')
    for p in $next; do
      cg=$(awk -F: '$2 == "freezer" { print $3 }' "/proc/$p/cgroup" 2>/dev/null)
      if [ -n "$cg" ] && [ "$(cat "/sys/fs/cgroup/freezer$cg/freezer.state" 2>/dev/null)" = FROZEN ]; then
        echo THAWED >"/sys/fs/cgroup/freezer$cg/freezer.state" 2>/dev/null || true
      fi
      cg=$(awk -F: '$1 == "0" { print $3 }' "/proc/$p/cgroup" 2>/dev/null)
      if [ -n "$cg" ] && [ -e /sys/fs/cgroup/cgroup.controllers ] && [ "$(cat "/sys/fs/cgroup$cg/cgroup.freeze" 2>/dev/null)" = 1 ]; then
        echo 0 >"/sys/fs/cgroup$cg/cgroup.freeze" 2>/dev/null || true
      fi
    done
  done
}

log=$work/steps.log
quiet() { # runs "$@" with its output in $log, shown only when it fails
  "$@" >>"$log" 2>&1 || { echo "fresh-machine: failed: $*" >&2; tail -n 40 "$log" >&2; return 1; }
}

mkdir -p "$cache"
if [ ! -s "$base" ]; then
  t0=$SECONDS
  say "debootstrap --variant=minbase $release from $mirror (cached as $base)"
  # in a private mount namespace: debootstrap's /proc and /sys mounts in the
  # new root go with it, even if it fails half way
  quiet unshare --mount --propagation private -- debootstrap --variant=minbase "$release" "$work/base" "$mirror"
  quiet tar -C "$work/base" --numeric-owner -czf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf --one-file-system "$work/base"
  say "base ready in $((SECONDS - t0))s"
fi

mkdir -p "$root"
quiet tar -C "$root" --numeric-owner -xpzf "$base"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# What Debian's installer writes and debootstrap does not: localhost by name.
if ! grep -qs '^127\.0\.0\.1[[:space:]].*localhost' "$root/etc/hosts"; then
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >>"$root/etc/hosts"
fi
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $release main
deb $mirror $release-updates main
deb $security $release-security main
EOF
# The intercepting proxy's CA: in the bundle Node reads through
# NODE_EXTRA_CA_CERTS and where update-ca-certificates keeps local CAs, so the
# bundle that Debian's ca-certificates builds later has it too.
mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true

clone=/root/computesdk-fly
quiet git clone -q "$repo" "$root$clone"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  say "note: $repo has uncommitted changes; the clone has HEAD ($(git -C "$repo" rev-parse --short HEAD))"
fi

binds=()
if [ -z "${FLY_FRESH_COLD:-}" ]; then
  mkdir -p "$cache/apt-archives/partial" "$cache/npm"
  binds=("$cache/apt-archives:/var/cache/apt/archives" "$cache/npm:/root/.npm")
fi
# The LTS Node that .ci/lts-node.sh cached, read-only and only for the check
# that follows the README's commands.
other_node=$cache/node${FLY_CI_NODE:-24}
[ -x "$other_node/bin/node" ] && binds+=("$other_node:/opt/other-node:ro")

# The README's Quick start block, one command a line, run verbatim.
mapfile -t commands < <(awk '/^## Quick start/ { q = 1 } q && /^```sh/ { b = 1; next } b && /^```/ { exit } b && NF' "$repo/README.md")
[ "${#commands[@]}" -eq 2 ] || die "README's Quick start should hold two commands, found ${#commands[@]}"

# Runs inside the root as its PID 1's child: each command in a login-like
# environment with nothing of the host's but what is listed here.
inside=$(cat <<'EOF'
cd "$1"; shift
n=0
for cmd in "$@"; do
  n=$((n + 1))
  echo "fresh-machine: \$ $cmd"
  t0=$(date +%s)
  bash -c "$cmd"
  rc=$?
  echo "fresh-machine: command $n exited $rc after $(( $(date +%s) - t0 ))s: $cmd"
  [ "$rc" = 0 ] || exit "$rc"
done
# Issue 9's segfault, for real: the addon Debian's node-gyp just built (linked
# against Debian's libnode) under an official Node, and Debian's npm run by
# that Node.  Both must refuse with the fix, not crash.
other=/opt/other-node/bin/node
[ -x "$other" ] || exit 0
echo "fresh-machine: mixing Nodes: Debian's build loaded by, and Debian's npm run by, Node $("$other" --version)"
out=$("$other" -e "require('./lib/native.js')" 2>&1)
case "$out" in
  *"npm rebuild"*FLY_NATIVE_MISMATCH*) ;;
  *) echo "fresh-machine: expected FLY_NATIVE_MISMATCH, got: $out" >&2; exit 1 ;;
esac
if out=$(PATH=/opt/other-node/bin:$PATH /usr/bin/npm run build 2>&1); then
  echo "fresh-machine: Debian's npm on Node $("$other" --version) built the addon; it should have refused" >&2
  exit 1
fi
case "$out" in
  *"links addons against libnode"*) ;;
  *) echo "fresh-machine: expected a refusal naming libnode, got: $out" >&2; exit 1 ;;
esac
"$other" -e "process.dlopen({ exports: {} }, 'build/Release/fly.node')" >/dev/null 2>&1
rc=$?
echo "fresh-machine: mixing Nodes: both refused with the fix (loading the addon without the check: exit $rc$([ "$rc" = 139 ] && echo ', SIGSEGV'))"
EOF
)

# PID 1 of the new PID namespace: mounts, then runs the commands in the
# background and waits; bash reaps every orphan reparented to it while it
# waits, and when it exits the kernel kills whatever is left inside.
pid1=$(cat <<'EOF'
set -e
root=$1; shift
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
# A sysfs of the root's network namespace (its /sys/class/net), with the
# host's cgroup hierarchies (v1 and/or v2) on it.
mount -t sysfs sysfs "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
for b in $BINDS; do # src:dst[:ro]
  src=${b%%:*} dst=${b#*:} ro=""
  case "$dst" in *:ro) dst=${dst%:ro} ro=1 ;; esac
  mkdir -p "$root$dst"
  mount --bind "$src" "$root$dst"
  [ -z "$ro" ] || mount -o remount,bind,ro "$root$dst"
done
# The new root becomes the mount namespace's root; the host's is then
# detached with the host's own umount (a minbase root may have none).
cd "$root"
mkdir -p .fresh-oldroot
pivot_root . .fresh-oldroot
cd /
/.fresh-oldroot/usr/bin/umount -l /.fresh-oldroot
rmdir /.fresh-oldroot
set +e
/usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 TERM=dumb CI=true \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TMPDIR=/var/tmp \
  NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
  /bin/bash -c "$INSIDE" inside "$@" &
wait $!
EOF
)

# The root's network namespace: a veth to the host and NAT out of it.
ip netns add "$netns"
ip link add "$veth" type veth peer name eth0 netns "$netns"
ip addr add "$host_ip/30" dev "$veth"
ip link set "$veth" up
ip -n "$netns" link set lo up
ip -n "$netns" addr add "$root_ip/30" dev eth0
ip -n "$netns" link set eth0 up
ip -n "$netns" route add default via "$host_ip"
nft -f - <<EOF
table ip $table {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "$veth" accept
    oifname "$veth" ct state established,related accept
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $subnet/30 oifname != "$veth" masquerade
  }
}
EOF
if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
  forward_was=$(cat /proc/sys/net/ipv4/ip_forward)
  echo 1 >/proc/sys/net/ipv4/ip_forward
fi

say "entering $root (Debian $version minbase, nothing installed; network namespace $netns) to run the README's commands in $clone"
t0=$SECONDS
set +e
BINDS="${binds[*]}" INSIDE="$inside" timeout -k 30 "$deadline" \
  nsenter --net="/run/netns/$netns" unshare --mount --pid --fork --kill-child -- /bin/bash -c "$pid1" pid1 "$root" "$clone" "${commands[@]}" &
runner=$!
# When the root's PID 1 has exited the kernel kills everything inside, but a
# process in a frozen cgroup (a machine a failed test left suspended) cannot
# die until it is thawed, and the namespace, this wait and the root's mounts
# would stay until the deadline and after.  Then thaw what is left under it.
while kill -0 "$runner" 2>/dev/null; do
  sleep 2
  thaw_after_exit "$runner"
done
wait "$runner"
rc=$?
runner=""
set -e
[ "$rc" = 124 ] && echo "fresh-machine: stopped at the ${deadline}s deadline" >&2
say "$([ "$rc" = 0 ] && echo passed || echo "failed ($rc)") in $((SECONDS - t0))s$([ -n "${FLY_FRESH_COLD:-}" ] && echo ' (cold download caches)')"
exit "$rc"
