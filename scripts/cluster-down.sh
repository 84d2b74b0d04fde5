#!/usr/bin/env bash
# Stop the local cluster started by scripts/cluster-up.sh: exactly the
# processes named by the pid files in $STATE (default .cluster/), roles first
# (SIGTERM: compositors hand their shard leases back), then NATS and Redis.
# Logs stay in $STATE.
set -uo pipefail

cd "$(dirname "$0")/.."
STATE=${STATE:-.cluster}

ours() { # pid: is it presenced, nats-server or redis-server?
  local cmd
  cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  case "$cmd" in
    *presenced*|*nats-server*|*redis-server*) return 0 ;;
    *) echo "cluster-down: pid $1 is no longer ours ($cmd); left alone" >&2; return 1 ;;
  esac
}

# SIGTERM to every process of a group at once, then wait (at most 15 s)
# for them, and SIGKILL what is left.
stop_group() {
  local f pid names=() pids=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    # Only a process that is still what we started (a pid file that outlived
    # its process, e.g. across a reboot, may name somebody else's by now).
    if kill -0 "$pid" 2>/dev/null && ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null
      pids+=("$pid")
      names+=("$(basename "$f" .pid)")
    fi
    rm -f "$f"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for _ in $(seq 1 150); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  local i
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "cluster-down: ${names[$i]} (pid ${pids[$i]}) ignored SIGTERM; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null
    fi
    echo "stopped ${names[$i]} (pid ${pids[$i]})"
  done
}

shopt -s nullglob
pidfiles=("$STATE"/*.pid)
if [ ${#pidfiles[@]} -eq 0 ]; then
  echo "cluster-down: nothing to stop in $STATE"
  exit 0
fi
# Roles first (compositors hand their leases back), then the bus and the store.
stop_group "$STATE"/edge-*.pid "$STATE"/notifier-*.pid "$STATE"/compositor-*.pid
stop_group "$STATE"/nats.pid
stop_group "$STATE"/redis.pid
rm -f "$STATE/endpoints.txt"
