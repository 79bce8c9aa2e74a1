#!/bin/bash
# Sandbox entrypoint: the main process of every sandbox machine, on real Fly
# (the image's ENTRYPOINT) and in fly-local. It configures sshd from what the
# provider injects under /etc/computesdk, keeps sshd running (restarting it
# if it dies) and, when given a command, runs it as the machine's workload and
# exits with its status.
#
# Injected files (all optional):
#   /etc/computesdk/authorized_keys        keys for the sandbox user (root's file;
#                                          sshd reads it in place)
#   /etc/computesdk/ssh_host_ed25519_key   sshd's only host key
#   /etc/computesdk/ssh_password           enables password login
#   /etc/computesdk/edge_token_sha256      the edge token's hash: the edge
#                                          bridge (flyedge, root, port 444)
#                                          lets a WebSocket holding it reach
#                                          sshd (no file: it refuses all)
#
# Network (environment): the in-guest firewall guest-firewall.nft (next to
# this script) keeps other machines of the org's private network out and
# this one's code from reaching them; it is loaded before anything else
# runs and a machine where it cannot be loaded does not start. Not loaded:
#   COMPUTESDK_TENANT    the machine is in a tenant's app with its own network
#   FLY_LOCAL_FIREWALL=host  fly-local, which enforces the same on its host
# The egress policy (create's `network`, or updateNetwork's: the machine's
# metadata, read through /.fly/api, else /etc/computesdk/egress.json):
# applied by egress (next to this script: nftables rules for every user but
# root and a resolver the policy controls) before sshd starts, on Fly and in
# fly-local alike; a machine where it cannot be applied does not start.
#
# Idle and lifetime (environment, all optional):
#   COMPUTESDK_SANDBOX_TIMEOUT_S  the sandbox lifetime in seconds
#   COMPUTESDK_ON_TIMEOUT         destroy (default: the machine stops at the
#                                 lifetime's end) | pause (it suspends itself)
#   COMPUTESDK_IDLE_TIMEOUT_MS    suspend after this long with no inbound
#                                 connection from outside the machine to
#                                 its SSH server (root's listeners)
#   COMPUTESDK_IDLE_ACTION        suspend (default) | stop
# Pausing and the idle timeout run in idle-watch (next to this script), a
# root process asking Fly's in-machine API socket /.fly/api to suspend or
# stop this machine, so they need no client alive; fly-local serves the
# same socket.
set -u
[ -n "${SANDBOX_TRACE:-}" ] && { PS4='+ $EPOCHREALTIME '; set -x; }

USER_NAME=sandbox
HOME_DIR=/home/$USER_NAME
INJECT=/etc/computesdk
RUNDIR=/run/computesdk
PROC_DIR=/run/flyproc
KEYDIR=/etc/ssh/computesdk
HOSTKEY=$KEYDIR/ssh_host_ed25519_key
BASE_CONFIG=${SANDBOX_SSHD_BASE_CONFIG:-${BASH_SOURCE[0]%/*}/sshd_config}
PORT=${SANDBOX_SSH_PORT:-2222}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
SESSION_PATH="$HOME_DIR/.local/bin:$HOME_DIR/.npm-global/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Boot time matters (fly-local boots machines in a few hundred ms), and every
# fork costs several ms: this script uses builtins wherever it can.

log() { echo "entrypoint: $*" >&2; }

# Reads a whole (small, text) file into the named variable without a fork.
slurp() { IFS= read -r -d '' "$1" < "$2" || true; }

# Loading takes ~15 ms (nft's own start): it runs beside the user and key
# set-up, and sshd starts only once it is in.
GUARD=${BASH_SOURCE[0]%/*}/guest-firewall.nft
guard_pid=
guard_start() {
  [ -n "${COMPUTESDK_TENANT:-}" ] && return 0
  [ "${FLY_LOCAL_FIREWALL:-}" = host ] && return 0
  /usr/sbin/nft -f "$GUARD" &
  guard_pid=$!
}
guard_wait() {
  [ -z "$guard_pid" ] || wait "$guard_pid"
}

# What this script starts (sshd, the edge bridge, the samplers, the
# workload) runs with CAP_NET_ADMIN and CAP_SETPCAP out of its bounding set,
# so none of it, nor anything it runs as root, reaches nftables (kernel
# surface: in fly-local, nf_tables in a user namespace): only this script,
# egress and its resolver do, and the exec API's commands. Where this
# process cannot drop them (no CAP_SETPCAP) nothing is changed. The check
# reads CapEff with builtins (bit 8: CAP_SETPCAP), no fork.
CONFINE=()
confine_init() {
  local k v eff=0
  while read -r k v; do
    [ "$k" = CapEff: ] && eff=$((16#$v))
  done < /proc/self/status
  if (( (eff >> 8) & 1 )) && [ -x /usr/bin/setpriv ]; then
    CONFINE=(/usr/bin/setpriv --bounding-set "-net_admin,-setpcap" --)
  fi
}

EGRESS=${BASH_SOURCE[0]%/*}/egress
egress_pid=
egress_start() {
  # the metadata may hold one (updateNetwork) when create injected none
  [ -e "$INJECT/egress.json" ] || [ -S /.fly/api ] || return 0
  "$EGRESS" boot &
  egress_pid=$!
}
egress_wait() {
  [ -z "$egress_pid" ] || wait "$egress_pid"
}

# The URL key and public ports as the metadata has them (docker/url-sync):
# a rotation after create must outlive a stop. Beside the set-up below; the
# bridge starts once it is done.
URLSYNC=${BASH_SOURCE[0]%/*}/url-sync
urlsync_pid=
urlsync_start() {
  [ -S /.fly/api ] && [ -x "$URLSYNC" ] || return 0
  "$URLSYNC" &
  urlsync_pid=$!
}
urlsync_wait() {
  [ -z "$urlsync_pid" ] || wait "$urlsync_pid"
}

ensure_user() {
  local passwd
  slurp passwd /etc/passwd
  if [[ $'\n'$passwd != *$'\n'"$USER_NAME":* ]]; then
    # '*' rather than the default locked '!': with UsePAM no, sshd refuses
    # key logins to locked accounts.
    useradd -m -s /bin/bash -p '*' "$USER_NAME" || return 1
  fi
  mkdir -p "$KEYDIR" "$RUNDIR" /run/sshd || return 1
  chmod 700 "$KEYDIR" "$RUNDIR" || return 1
  # The process daemon's directory (docker/flyproc.c): the sandbox user's
  # alone; its socket and the busy file idle-watch reads live there. A busy
  # file left from before a restart (no daemon runs yet) is removed: /run is
  # root's, so the user cannot swap the directory for a link.
  if [ ! -d "$PROC_DIR" ] || [ -L "$PROC_DIR" ]; then
    rm -f -- "$PROC_DIR" && mkdir -m 700 "$PROC_DIR" || return 1
  fi
  chown -h "$USER_NAME:$USER_NAME" "$PROC_DIR" && chmod 700 "$PROC_DIR" || return 1
  rm -f -- "$PROC_DIR/busy"
  # sshd reads the provider's keys from $INJECT/authorized_keys in place:
  # it and its directory stay root's and writable by no one else.
  if [ -e "$INJECT/authorized_keys" ]; then
    [ -f "$INJECT/authorized_keys" ] && [ ! -L "$INJECT/authorized_keys" ] || return 1
    chown root:root "$INJECT" "$INJECT/authorized_keys" &&
      chmod go-w "$INJECT" "$INJECT/authorized_keys" || return 1
  fi
  # A fresh volume mounted at the home has a root-owned root directory on
  # Fly: give that one directory to the user. Only it: chown -h never
  # follows a link and there is no -R, so nothing the user's code left in
  # the home is touched. The path itself cannot be bent: /home is root's,
  # so the user cannot rename or replace $HOME_DIR, and a mount root cannot
  # be swapped for a link. ([ -O ]: owned by us, root; no fork.)
  if [ -d "$HOME_DIR" ] && [ ! -L "$HOME_DIR" ] && [ -O "$HOME_DIR" ]; then
    chown -h "$USER_NAME:$USER_NAME" "$HOME_DIR" || log "cannot give $HOME_DIR to $USER_NAME"
  fi
  # The home belongs to the sandbox user (and may hold whatever its code
  # left there, on a volume): root never writes into it. Convenience
  # directories that are missing are made as the user.
  if [ ! -d "$HOME_DIR/workspace" ] || [ ! -d "$HOME_DIR/.local/bin" ] || [ ! -d "$HOME_DIR/.npm-global" ]; then
    runuser -u "$USER_NAME" -- mkdir -p "$HOME_DIR/workspace" "$HOME_DIR/.local/bin" "$HOME_DIR/.npm-global" ||
      log "cannot create the directories in $HOME_DIR"
  fi
}

ensure_hostkey() {
  if [ -s "$INJECT/ssh_host_ed25519_key" ]; then
    local key
    slurp key "$INJECT/ssh_host_ed25519_key"
    (umask 077; printf '%s' "$key" > "$HOSTKEY") || return 1
  elif [ ! -s "$HOSTKEY" ]; then
    ssh-keygen -q -t ed25519 -N '' -f "$HOSTKEY" >/dev/null || return 1
  fi
}

# One quoted NAME=VALUE word for sshd's SetEnv (sshd honours only the first
# SetEnv line, so all of them go on one). Inside double quotes only \ and "
# need escaping; values with line breaks cannot be expressed and are left out.
setenv_word() {
  local name=$1 value=$2
  case "$value" in *$'\n'*|*$'\r'*) log "not exporting $name to SSH sessions (line break)"; return;; esac
  value=${value//\\/\\\\}
  value=${value//\"/\\\"}
  printf ' "%s=%s"' "$name" "$value"
}

# Variables that belong to this process, not to the machine's environment.
skip_var() {
  case "$1" in
    HOME|PWD|OLDPWD|SHLVL|_|USER|LOGNAME|SHELL|TERM|HOSTNAME|PATH|MAIL|LS_COLORS) return 0;;
    SANDBOX_SSHD_BASE_CONFIG|SANDBOX_TRACE|BASH_*|COLUMNS|LINES) return 0;;
  esac
  return 1
}

write_sshd_config() {
  local name base
  slurp base "$BASE_CONFIG"
  [ -n "$base" ] || { log "missing $BASE_CONFIG"; return 1; }
  {
    echo "# generated by $0"
    echo "Port $PORT"
    echo "HostKey $HOSTKEY"
    if [ -s "$INJECT/ssh_password" ]; then
      echo "PasswordAuthentication yes"
    else
      echo "PasswordAuthentication no"
    fi
    printf 'SetEnv'
    for name in $(compgen -e); do
      skip_var "$name" && continue
      setenv_word "$name" "${!name}"
    done
    setenv_word HOME "$HOME_DIR"
    setenv_word PATH "$SESSION_PATH"
    setenv_word NPM_CONFIG_PREFIX "$HOME_DIR/.npm-global"
    setenv_word PIP_BREAK_SYSTEM_PACKAGES 1
    # npm and Node use the system CA store (which trusts the host's CAs in
    # fly-local): the official Node binary knows only its bundled roots, and
    # with the user's prefix npm would look for its global npmrc there.
    setenv_word NPM_CONFIG_GLOBALCONFIG /etc/npmrc
    setenv_word NODE_EXTRA_CA_CERTS "$CA_BUNDLE"
    printf '\n%s' "$base"
  } > "$RUNDIR/sshd_config"
}

set_password() {
  if [ -s "$INJECT/ssh_password" ]; then
    local pw
    slurp pw "$INJECT/ssh_password"
    pw=${pw%$'\n'}
    printf '%s:%s\n' "$USER_NAME" "$pw" | chpasswd || return 1
  fi
}

# Login shells read /etc/profile, which resets PATH; keep the session's.
write_profile() {
  [ -d /etc/profile.d ] || return 0
  printf 'export PATH="%s"\nexport NPM_CONFIG_PREFIX="%s"\nexport PIP_BREAK_SYSTEM_PACKAGES=1\nexport NPM_CONFIG_GLOBALCONFIG=/etc/npmrc\nexport NODE_EXTRA_CA_CERTS="%s"\n' \
    "$SESSION_PATH" "$HOME_DIR/.npm-global" "$CA_BUNDLE" > /etc/profile.d/computesdk.sh
}

# Signals may arrive while we are still setting up: trap them first.
sshd_pid=
main_pid=
stopping=

watch_pid=
WATCH=${BASH_SOURCE[0]%/*}/idle-watch
start_watch() {
  "${CONFINE[@]}" "$WATCH" &
  watch_pid=$!
}

# The edge bridge: Fly's proxy -> WebSocket -> sshd (docker/flyedge.c). Root
# runs it from a root-owned path on a port below 1024, so the sandbox user
# cannot stop, replace or stand in for it.
EDGE=/usr/local/libexec/computesdk/flyedge
edge_pid=
start_edge() {
  [ -x "$EDGE" ] || return 0
  "${CONFINE[@]}" "$EDGE" -p "${SANDBOX_EDGE_PORT:-444}" -s "$PORT" -t "$INJECT/edge_token_sha256" &
  edge_pid=$!
}

# The metrics sampler (sandbox.getMetrics({ since })): a root process
# keeping a sample every 5 s for the last hour in a bounded ring, written to
# /run/computesdk-metrics (root's). Not restarted: getMetrics() works
# without it, only the history is then empty.
METRICS=/usr/local/libexec/computesdk/flymetrics
start_metrics() {
  [ -x "$METRICS" ] && "${CONFINE[@]}" "$METRICS" daemon &
}

start_sshd() {
  "${CONFINE[@]}" /usr/sbin/sshd -D -e -f "$RUNDIR/sshd_config" &
  sshd_pid=$!
}

# Forwards a stop signal; the main loop below then reaps the main process
# and exits with its status. The handler must not wait itself: it runs while
# the loop's `wait -n` is interrupted, and the main process may already be
# reaped by then (a nested `wait "$main_pid"` then returned -1, i.e. exit
# status 255, instead of the process's status).
on_signal() {
  stopping=1
  local sig=$1
  [ -n "$main_pid" ] && kill -s "$sig" "$main_pid" 2>/dev/null
  [ -n "$sshd_pid" ] && kill -TERM "$sshd_pid" 2>/dev/null
  [ -n "$main_pid" ] && return
  exit $((128 + $(kill -l "$sig")))
}
for sig in TERM INT HUP QUIT USR1 USR2; do
  # shellcheck disable=SC2064 # the signal name is meant to expand now
  trap "on_signal $sig" "$sig"
done

confine_init
guard_start
egress_start
urlsync_start
ensure_user || { log "cannot set up user $USER_NAME"; exit 1; }
ensure_hostkey || { log "cannot set up the host key"; exit 1; }
set_password || { log "cannot set the password"; exit 1; }
write_profile
write_sshd_config || exit 1
guard_wait || { log "cannot load the network guard $GUARD"; exit 1; }
egress_wait || { log "cannot apply the egress policy $INJECT/egress.json"; exit 1; }
urlsync_wait || log "cannot read the URL key from the metadata: create's stays"

start_sshd
start_edge
start_metrics
if [ $# -gt 0 ]; then
  # Background jobs of a script start with SIGINT/SIGQUIT ignored; the
  # workload must see the stop signal, so restore them.
  ( trap - INT QUIT; exec "${CONFINE[@]}" "$@" ) &
  main_pid=$!
fi

# A sandbox lifetime (the provider's create timeout): when it runs out the
# main process ends, so the machine stops (and, with auto_destroy, goes).
# With COMPUTESDK_ON_TIMEOUT=pause the idle watch suspends instead.
lifetime_pid=
case "${COMPUTESDK_SANDBOX_TIMEOUT_S:-}" in
  ''|*[!0-9]*) ;;
  *) [ "${COMPUTESDK_ON_TIMEOUT:-}" = pause ] || { sleep "$COMPUTESDK_SANDBOX_TIMEOUT_S" & lifetime_pid=$!; } ;;
esac
if [ -n "${COMPUTESDK_IDLE_TIMEOUT_MS:-}" ] || [ "${COMPUTESDK_ON_TIMEOUT:-}" = pause ]; then
  start_watch
fi

while :; do
  # done_pid stays unset when a trapped signal interrupts the wait (status
  # > 128) or when no child is left (127: cannot happen while main runs).
  wait -n -p done_pid
  status=$?
  if [ -z "${done_pid:-}" ]; then
    [ "$status" -eq 127 ] && exit 127
    continue
  fi
  if [ -n "$main_pid" ] && [ "$done_pid" = "$main_pid" ]; then
    kill -TERM "$sshd_pid" 2>/dev/null
    exit "$status"
  fi
  [ -n "$stopping" ] && continue
  if [ -n "$lifetime_pid" ] && [ "${done_pid:-}" = "$lifetime_pid" ]; then
    log "sandbox lifetime of ${COMPUTESDK_SANDBOX_TIMEOUT_S}s reached, stopping"
    stopping=1
    [ -n "$main_pid" ] && kill -TERM "$main_pid" 2>/dev/null
    kill -TERM "$sshd_pid" 2>/dev/null
    exit 0
  fi
  if [ "${done_pid:-}" = "$sshd_pid" ]; then
    log "sshd exited ($status), restarting"
    start_sshd
  fi
  if [ -n "$edge_pid" ] && [ "${done_pid:-}" = "$edge_pid" ]; then
    log "flyedge exited ($status), restarting"
    sleep 0.2
    start_edge
  fi
  # exit 0 is "nothing to watch", 3 a lifetime it could not pause (end it
  # as without pause); anything else is restarted, paced
  if [ -n "$watch_pid" ] && [ "${done_pid:-}" = "$watch_pid" ]; then
    watch_pid=
    if [ "$status" -eq 3 ]; then
      log "sandbox lifetime of ${COMPUTESDK_SANDBOX_TIMEOUT_S}s reached and it could not pause, stopping"
      stopping=1
      [ -n "$main_pid" ] && kill -TERM "$main_pid" 2>/dev/null
      kill -TERM "$sshd_pid" 2>/dev/null
      exit 0
    fi
    if [ "$status" -ne 0 ]; then
      log "idle-watch exited ($status), restarting"
      sleep 1
      start_watch
    fi
  fi
done
