#!/usr/bin/env bash
# BLF side by side (docs/benchmarks.md §7): the presence-loadtest `blf`
# profile (Event: dialog; 600 phones × 20 lines, 2 receptionists) against
# our all-in-one presenced and against Kamailio 5.6 with presence_dialoginfo
# (the peer benchmark's kamailio.cfg, ../shared/bench/peer-kamailio, with
# presence_dialoginfo loaded on top; subscriptions in Redis, documents in
# shared memory, as in §1-2), one after the other, the same load at each
# call rate. The PBX publishes one publication per call
# (`--dialog-publications call`), as Kamailio's pua_dialoginfo does:
# Kamailio's presence module refuses to modify a publication whose dialog
# has terminated. A call's publication is left to expire (publish_expires,
# 120 s), so a busy line has dozens live: ours runs with
# --max-publications 1000 (Kamailio has no such bound). Prints one row per
# server and rate.
#
#   BIN=target/release  CALL_RATES="20 100 300"  DURATION=20  PEER=../shared/bench/peer-kamailio
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
CALL_RATES=${CALL_RATES:-20 100 300}
DURATION=${DURATION:-20}
PEER=${PEER:-$ROOT/../shared/bench/peer-kamailio}
SERVERS=${SERVERS:-ours kamailio}
OUT=${OUT:-$(mktemp -d /tmp/blf-peer-bench.XXXXXX)}
[[ -x $BIN/presenced && -x $BIN/presence-loadtest ]] || { echo "no binaries in $BIN" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tree_ticks() { # pid -> utime+stime of it and its children
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    [[ -r /proc/$p/stat ]] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

PID="" REDIS_PID=""
stop() {
  local kids
  kids=$(pgrep -P "$PID" 2>/dev/null || true)
  kill -TERM "$PID" 2>/dev/null || true
  sleep 1
  for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
  kill -KILL "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  if [[ -n "$REDIS_PID" ]]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=""; fi
}
trap '[[ -n "$PID" ]] && stop' EXIT

start_ours() { # dir port
  "$BIN/presenced" --sip-listen "127.0.0.1:$2" --http-listen 127.0.0.1:0 --domain example.com \
    --rate-per-source 1000000 --burst-per-source 1000000 \
    --max-publications 1000 >"$1/server.log" 2>&1 &
  PID=$!
}

start_kamailio() { # dir port
  command -v kamailio >/dev/null && [[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/db_redis.so ]] || {
    echo "kamailio is not installed (apt-get install kamailio kamailio-presence-modules kamailio-redis-modules)" >&2; exit 2; }
  local redis_port
  redis_port=$(free_port)
  mkdir -p "$1/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$1/redis" \
    --logfile "$1/redis/redis.log" --daemonize no &
  REDIS_PID=$!
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  printf '#!KAMAILIO\ninclude_file "%s/kamailio.cfg"\nloadmodule "presence_dialoginfo.so"\n' "$(cd "$PEER" && pwd)" >"$1/kamailio-blf.cfg"
  kamailio -f "$1/kamailio-blf.cfg" -DD -E -m 4096 -M 32 -Y "$1" -w "$1" \
    -A "LISTEN_UDP=udp:127.0.0.1:$2" -A "LISTEN_TCP=tcp:127.0.0.1:$2" \
    -A "SERVER_ADDRESS=\"sip:127.0.0.1:$2\"" -A "CTLSOCK=\"unix:$1/kamailio_ctl\"" \
    -A "UDP_WORKERS=8" -A "TCP_WORKERS=4" -A "SUBS_DB_MODE=2" \
    -A WITH_REDIS -A "DBURL=\"redis://127.0.0.1:$redis_port/0\"" >"$1/server.log" 2>&1 &
  PID=$!
}

echo "| server | calls/s | PUBLISH/s | NOTIFY/s | change→NOTIFY p50 / p99 ms | server CPU s (whole run) | CPU µs per NOTIFY | failed requests | canary |"
echo "|---|---|---|---|---|---|---|---|---|"
for calls in $CALL_RATES; do
  for server in $SERVERS; do
    dir="$OUT/$server-$calls"; mkdir -p "$dir"
    port=$(free_port)
    "start_$server" "$dir" "$port"
    for _ in $(seq 1 50); do ss -Hlnu "sport = :$port" | grep -q . && break; sleep 0.1; done
    sleep 1
    kill -0 "$PID" 2>/dev/null || { echo "$server did not start: $dir/server.log" >&2; tail -5 "$dir/server.log" >&2; exit 1; }
    t0=$(tree_ticks "$PID")
    "$BIN/presence-loadtest" --profile blf --dialog-publications call --target "127.0.0.1:$port" \
      --publish-rate "$((calls * 3))" --duration "$DURATION" --no-teardown --no-progress \
      --max-errors 1000000 --report "$dir/report.json" >"$dir/loadtest.txt" 2>&1 || true
    t1=$(tree_ticks "$PID")
    stop; PID=""
    python3 - "$dir/report.json" "$server" "$calls" "$t0" "$t1" <<'PY'
import json, os, sys
path, server, calls, t0, t1 = sys.argv[1:]
r = json.load(open(path))
n, p = r["notify"], r["requests"]["PUBLISH"]
lat = n["latency"]
faults = {k: v for k, v in r["canary"].items() if v}
canary = "clean" if not faults else ", ".join(f"{k} {v}" for k, v in faults.items())
cpu = (float(t1) - float(t0)) / os.sysconf("SC_CLK_TCK")
per = cpu * 1e6 / max(n["received"], 1)
print(f"| {server} | {calls} | {p['steady_rate_per_s']:.0f} | {n['steady_per_s']:.0f} | "
      f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.0f} | {cpu:.1f} | {per:.0f} | {r['errors']} | {canary} |")
PY
  done
done
echo "(raw reports and logs: $OUT)"
