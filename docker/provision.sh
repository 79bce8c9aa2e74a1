#!/bin/sh
# The sandbox image's one provisioning script, shared by the Fly image
# (docker/Dockerfile, Ubuntu 22.04) and fly-local's image builder
# (lib/local/image.js, a Debian 12 root made with debootstrap). It runs as
# root inside the image root with this directory's files in $SRC, and prints
# one line per step; the noisy output of apt goes to $LOG.
#
# Node.js: if the builder staged the official Node 20 binary and npm in
# /opt/node (fly-local: from the npm registry, the only Node source its
# network reaches), the script links them; otherwise (the Fly image) it
# installs Node 20 with npm from NodeSource's signed apt repository.
set -eu
SRC=${SRC:-$(dirname "$0")}
LOG=${LOG:-/dev/null}
NODE_MAJOR=${NODE_MAJOR:-20}
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

step() { echo "provision: $*"; }
apt_quiet() { apt-get -qq -o Dpkg::Use-Pty=0 "$@" >>"$LOG" 2>&1; }

step "apt packages"
# Services must not start inside an image root.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
apt_quiet update
apt_quiet install -y --no-install-recommends \
  ca-certificates curl gnupg git openssh-server openssh-sftp-server passwd \
  python3 python3-pip python3-venv python3-dev build-essential \
  iproute2 nftables procps less nano tini util-linux dnsmasq-base

step "code interpreter"
# The code interpreter's kernels (IPython's, with its display machinery)
# and what its charts and tables need; Debian's packages, as the image
# build cannot reach PyPI (in Debian 12 and in Ubuntu 22.04's universe).
apt_quiet install -y --no-install-recommends \
  python3-ipykernel python3-jupyter-client python3-matplotlib python3-pandas python3-numpy
python3 -c 'import ipykernel, jupyter_client, matplotlib, pandas, numpy' >>"$LOG" 2>&1

step "CA certificates"
# The host's extra CAs (a TLS-intercepting network, a company CA) are
# trusted inside too; npm and pip use the system store (below).
if [ -d "$SRC/ca-certificates" ]; then
  cp "$SRC"/ca-certificates/*.crt /usr/local/share/ca-certificates/ 2>/dev/null || true
fi
update-ca-certificates >>"$LOG" 2>&1

step "Node.js $NODE_MAJOR"
if [ -x /opt/node/bin/node ]; then
  ln -sf /opt/node/bin/node /usr/local/bin/node
  ln -sf /opt/node/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
  ln -sf /opt/node/lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx
else
  mkdir -p /etc/apt/keyrings
  curl -fsSL https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key \
    | gpg --dearmor -o /etc/apt/keyrings/nodesource.gpg
  echo "deb [signed-by=/etc/apt/keyrings/nodesource.gpg] https://deb.nodesource.com/node_${NODE_MAJOR}.x nodistro main" \
    > /etc/apt/sources.list.d/nodesource.list
  apt_quiet update
  apt_quiet install -y --no-install-recommends nodejs
fi
node --version >/dev/null && npm --version >/dev/null
# npm and pip trust the system CA store (the official Node binary has only
# its bundled roots otherwise).
printf 'cafile=/etc/ssl/certs/ca-certificates.crt\nupdate-notifier=false\nfund=false\naudit=false\n' > /etc/npmrc
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nbreak-system-packages = true\n' > /etc/pip.conf

step "sandbox user"
# Password '*' (no password, not locked): sshd without PAM refuses key
# logins to locked users.
id -u sandbox >/dev/null 2>&1 || useradd -m -u 1000 -s /bin/bash -p '*' sandbox
mkdir -p /home/sandbox/workspace /home/sandbox/.local/bin /home/sandbox/.npm-global
chown -R sandbox:sandbox /home/sandbox
# /app: the sandbox user's too, for programs written for other providers
# (ComputeSDK's examples write under /app); on the root filesystem, not on
# a workspace volume (/home/sandbox).
mkdir -p /app
chown sandbox:sandbox /app
rm -f /etc/ssh/ssh_host_*

# fly-local adds /opt/computesdk as a layer of its own (lib/local/image.js),
# so an entrypoint change does not rebuild the whole root there.
if [ -f "$SRC/entrypoint.sh" ]; then
  step "entrypoint"
  mkdir -p /opt/computesdk
  cp "$SRC/entrypoint.sh" "$SRC/sshd_config" "$SRC/guest-firewall.nft" /opt/computesdk/
  chmod 0755 /opt/computesdk/entrypoint.sh
  chmod 0644 /opt/computesdk/sshd_config /opt/computesdk/guest-firewall.nft
fi

step "clean up"
rm -f /usr/sbin/policy-rc.d
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/* /root/.npm
