#!/usr/bin/env bash
# The tests on a current LTS Node (24 unless FLY_CI_NODE says otherwise), an
# official build taken from the npm registry: the package `node` only runs a
# preinstall that fetches `node-linux-<arch>`, which is the nodejs.org tarball
# (bin/node, include/node with the headers, share) without npm; npm comes
# from the registry's `npm` package.  Laid out as the official tarball is
# (<prefix>/bin, <prefix>/include/node, <prefix>/lib/node_modules/npm) and
# cached under $cache.  It runs bin/setup && npm test in a copy of this tree
# with that prefix first in PATH, so node, npm and node-gyp are all its own;
# the addon is built there for it, leaving this tree's build alone.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FLY_CI_CACHE:-/var/cache/computesdk-fly-ci}
major=${FLY_CI_NODE:-24}
npm_major=$([ "$major" -ge 24 ] && echo 11 || echo 10)  # the npm each line ships with
prefix=$cache/node$major
arch=$(uname -m | sed 's/x86_64/x64/; s/aarch64/arm64/')
say() { echo "lts-node: $*"; }

work=$(mktemp -d /var/tmp/computesdk-fly-node.XXXXXX)
chmod 755 "$work"  # as a clone's parent usually is: the tests' unprivileged user passes through
trap 'rm -rf --one-file-system "$work"' EXIT

if [ ! -x "$prefix/bin/node" ] || [ ! -f "$prefix/lib/node_modules/npm/bin/npm-cli.js" ]; then
  say "fetching node-linux-$arch@$major and npm@$npm_major from the npm registry into $prefix"
  (cd "$work" && npm pack --silent "node-linux-$arch@$major" "npm@$npm_major" >/dev/null)
  rm -rf "$prefix.tmp" && mkdir -p "$prefix.tmp/lib/node_modules/npm"
  tar -C "$prefix.tmp" --strip-components=1 -xzf "$work"/node-linux-"$arch"-*.tgz
  tar -C "$prefix.tmp/lib/node_modules/npm" --strip-components=1 -xzf "$work"/npm-*.tgz
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$prefix.tmp/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$prefix.tmp/bin/npx"
  [ -f "$prefix.tmp/include/node/node_api.h" ] || { echo "lts-node: the package has no include/node" >&2; exit 1; }
  rm -rf "$prefix" && mv "$prefix.tmp" "$prefix"
fi
export PATH=$prefix/bin:$PATH
say "Node $(node --version), npm $(npm --version), headers in $prefix/include/node"

# A copy of the tree as git sees it (committed or not, without build/ and
# node_modules/), with ../shared beside it when this tree has one (CI does).
copy=$work/computesdk-fly
mkdir -p "$copy"
git -C "$repo" ls-files -z --cached --others --exclude-standard |
  (cd "$repo" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$copy" -xf -
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"

downloaded() { ls -d "$HOME/.cache/node-gyp/$(node -p process.versions.node)" 2>/dev/null || true; }
before=$(downloaded)
cd "$copy"
bin/setup
if [ -z "$before" ] && [ -n "$(downloaded)" ]; then
  echo "lts-node: node-gyp downloaded headers into $(downloaded)" >&2
  exit 1
fi
npm test
