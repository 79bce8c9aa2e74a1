#!/usr/bin/env bash
# The whole node test suite once more, with the addon built under ASan and
# UBSan (make -C test/c addon-asan) and the sanitizer runtime preloaded into
# node.  Any sanitizer report fails the run: UBSan halts on its first error,
# ASan always does.  Leak checking is off: Node itself does not free
# everything at exit.  Runs in a copy of this tree, so this tree's plain
# build is left alone; the host stage has already run bin/setup.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /var/tmp/computesdk-fly-asan.XXXXXX)
chmod 755 "$work"  # as a clone's parent usually is: the tests' unprivileged user passes through
trap 'rm -rf --one-file-system "$work"' EXIT
copy=$work/computesdk-fly
mkdir -p "$copy"
git -C "$repo" ls-files -z --cached --others --exclude-standard |
  (cd "$repo" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$copy" -xf -
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
cd "$copy"
echo "asan: npm install, then the addon with -fsanitize=address,undefined"
npm install --no-audit --no-fund --ignore-scripts --silent
make -s -C test/c addon-asan >/dev/null
# nm's output is read whole: `nm | grep -q` under pipefail fails whenever
# grep exits on its match before nm has written the rest (SIGPIPE).
case $(nm -D build/Release/fly.node) in
  *__asan_init*) ;;
  *) echo "asan: the addon is not instrumented" >&2; exit 1 ;;
esac
echo "asan: node --test with $(gcc -print-file-name=libasan.so) preloaded"
LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  node --test --test-concurrency=2 test/*.test.js test/local/*.test.js
