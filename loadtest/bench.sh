#!/usr/bin/env bash
# Side-by-side benchmark: the same presence-loadtest load against our
# all-in-one server and against the peer (Kamailio 5.6 presence on Redis, as
# configured in ../shared/bench/peer-kamailio), one after the other in one run,
# then the table and the ratios go into docs/benchmarks.md (between the
# "bench:begin/end" markers). Run it as `make bench`.
#
# Knobs (environment):
#   RATES="1000 2000 3000"  PUBLISH/s steps of the fan-out load (each change
#                           goes to BUDDIES watchers, so NOTIFY/s = rate x BUDDIES)
#   USERS=2000 BUDDIES=10 DURATION=10   shape of each step
#   SERVERS="ours kamailio" which servers to run (kamailio needs the peer folder)
#   PEER=../shared/bench/peer-kamailio  where kamailio.cfg is
#   OUT=target/bench/<time>             raw JSON reports and logs
#   DOC=docs/benchmarks.md              where the table goes ("-" for stdout only)
#
# Every step starts the server on empty state. A step passes when the
# load generator's canary is clean and no request failed; the table shows
# what was achieved either way. Only processes started here are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

RATES=${RATES:-1000 2000 3000}
USERS=${USERS:-2000}
BUDDIES=${BUDDIES:-10}
DURATION=${DURATION:-10}
SERVERS=${SERVERS:-ours kamailio}
PEER=${PEER:-$ROOT/../shared/bench/peer-kamailio}
OUT=${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
DOC=${DOC:-$ROOT/docs/benchmarks.md}
PORT=${PORT:-5070}
REDIS_PORT=${REDIS_PORT:-6390}
mkdir -p "$OUT"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cargo build --release --locked -p presenced -p presence-loadtest
BIN=$ROOT/target/release

SERVER_PIDS=()
cleanup() {
  local p
  for p in "${SERVER_PIDS[@]:-}"; do
    [[ -n "$p" ]] || continue
    pkill -TERM -P "$p" 2>/dev/null || true
    kill -TERM "$p" 2>/dev/null || true
  done
  sleep 1
  for p in "${SERVER_PIDS[@]:-}"; do
    [[ -n "$p" ]] || continue
    pkill -KILL -P "$p" 2>/dev/null || true
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

tree_cpu_ticks() { # pid -> utime+stime of it and its children, in clock ticks
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    [[ -r /proc/$p/stat ]] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

tree_pss_kb() { # pid -> summed PSS of it and its children (KB); PSS, not RSS,
  # so that Kamailio's shared-memory pool is counted once, not once per worker
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    [[ -r /proc/$p/smaps_rollup ]] || continue
    total=$((total + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup")))
  done
  echo "$total"
}

wait_port() { # wait until something listens on udp PORT
  local i
  for i in $(seq 1 100); do
    ss -Hlnu "sport = :$PORT" | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on udp $PORT" >&2
  return 1
}

start_ours() {
  "$BIN/presenced" --sip-listen "127.0.0.1:$PORT" --http-listen 127.0.0.1:0 \
    --domain example.com >"$1/server.log" 2>&1 &
  SERVER_PID=$!
}

start_kamailio() {
  command -v kamailio >/dev/null && command -v redis-server >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y kamailio kamailio-presence-modules kamailio-redis-modules redis-server >/dev/null
  }
  local run=$1
  mkdir -p "$run/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$run/redis" --logfile "$run/redis/redis.log" --daemonize no &
  REDIS_PID=$!
  SERVER_PIDS+=("$REDIS_PID")
  local i
  for i in $(seq 1 50); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  # The peer benchmark's configuration and defaults (run.sh): 8 UDP workers,
  # subscriptions write-back to Redis, documents in shared memory.
  kamailio -f "$PEER/kamailio.cfg" -DD -E -m 4096 -M 32 -Y "$run" -w "$run" \
    -A "LISTEN_UDP=udp:127.0.0.1:$PORT" -A "LISTEN_TCP=tcp:127.0.0.1:$PORT" \
    -A "SERVER_ADDRESS=\"sip:127.0.0.1:$PORT\"" -A "CTLSOCK=\"unix:$run/kamailio_ctl\"" \
    -A "UDP_WORKERS=8" -A "TCP_WORKERS=4" -A "SUBS_DB_MODE=2" \
    -A WITH_REDIS -A "DBURL=\"redis://127.0.0.1:$REDIS_PORT/0\"" >"$run/server.log" 2>&1 &
  SERVER_PID=$!
}

stop_step() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  pkill -KILL -P "$SERVER_PID" 2>/dev/null || true
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  if [[ -n "${REDIS_PID:-}" ]]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
  fi
  # let the port go
  for i in $(seq 1 100); do
    ss -Hlnu "sport = :$PORT" | grep -q . || break
    sleep 0.1
  done
}

# Step by step, the servers back to back, so that both see the same
# background load of this shared machine.
for rate in $RATES; do
  for server in $SERVERS; do
    step="$OUT/$server-$rate"
    mkdir -p "$step"
    log "$server: $USERS users x $BUDDIES buddies, $rate PUBLISH/s for ${DURATION}s"
    REDIS_PID=""
    "start_$server" "$step"
    SERVER_PIDS+=("$SERVER_PID")
    wait_port
    sleep 0.5
    before=$(tree_cpu_ticks "$SERVER_PID")
    set +e
    "$BIN/presence-loadtest" --target "127.0.0.1:$PORT" --users "$USERS" --buddies "$BUDDIES" \
      --publish-rate "$rate" --duration "$DURATION" --no-teardown --no-progress \
      --report "$step/report.json" >"$step/loadtest.txt" 2>&1
    rc=$?
    set -e
    after=$(tree_cpu_ticks "$SERVER_PID")
    pss=$(tree_pss_kb "$SERVER_PID")
    cpu_s=$(awk -v a="$after" -v b="$before" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.3f", (a - b) / hz}')
    echo "{\"rc\": $rc, \"server_cpu_s\": $cpu_s, \"server_pss_kb\": $pss}" >"$step/server.json"
    tail -3 "$step/loadtest.txt" >&2
    stop_step
  done
done

python3 - "$OUT" "$DOC" "$RATES" "$USERS" "$BUDDIES" "$DURATION" "$SERVERS" <<'PY'
import json, os, sys, re
out, doc, rates, users, buddies, duration, servers = sys.argv[1:]
rates = rates.split(); servers = servers.split()
rows = {}
for s in servers:
    for r in rates:
        d = os.path.join(out, f"{s}-{r}")
        try:
            rep = json.load(open(os.path.join(d, "report.json")))
            srv = json.load(open(os.path.join(d, "server.json")))
        except (OSError, ValueError):
            rows[(s, r)] = None
            continue
        canary = sum(rep["canary"].values())
        pub = rep["requests"]["PUBLISH"]
        n = rep["notify"]
        msgs = rep["cpu"]["messages"] or 1
        rows[(s, r)] = dict(
            passed=rep["passed"], canary=canary,
            pub=pub["steady_rate_per_s"], pub_p99=pub["latency"]["p99_ms"],
            notify=n["steady_per_s"], n_p50=n["latency"]["p50_ms"], n_p99=n["latency"]["p99_ms"],
            cpu_us=srv["server_cpu_s"] * 1e6 / msgs, pss_mb=srv["server_pss_kb"] / 1024,
        )
def cell(v, fmt):
    return "–" if v is None else fmt.format(v)
lines = []
cmd = f"RATES=\"{' '.join(rates)}\" USERS={users} BUDDIES={buddies} DURATION={duration} make bench"
lines.append(f"Command: `{cmd}` (raw reports: `{out}`, not committed).")
lines.append("")
lines.append(f"Load: {users} UAs, each subscribed to {buddies} others (presence), then "
             f"{duration} s of open-loop PUBLISH modifies at the rate shown; every change owes "
             f"{buddies} NOTIFYs. Each step starts the server on empty state. `pass` = the load "
             "generator's canary is clean (every watcher reached the latest change within 5 s, "
             "in order, no duplicates) and no request failed.")
lines.append("")
hdr = "| PUBLISH/s offered | server | pass | PUBLISH/s | PUBLISH p99 ms | NOTIFY/s | change→NOTIFY p50 / p99 ms | server CPU µs per SIP message | server PSS MB |"
lines.append(hdr)
lines.append("|---|---|---|---|---|---|---|---|---|")
for r in rates:
    for s in servers:
        x = rows.get((s, r))
        if x is None:
            lines.append(f"| {r} | {s} | no data | | | | | | |")
            continue
        lines.append(
            f"| {r} | {s} | {'yes' if x['passed'] else 'NO (' + str(x['canary']) + ' canary)'} | "
            f"{x['pub']:.0f} | {x['pub_p99']:.1f} | {x['notify']:.0f} | "
            f"{x['n_p50']:.2f} / {x['n_p99']:.1f} | {x['cpu_us']:.1f} | {x['pss_mb']:.0f} |")
if "ours" in servers and "kamailio" in servers:
    def best(s):
        ok = [rows[(s, r)] for r in rates if rows.get((s, r)) and rows[(s, r)]["passed"]]
        return max(ok, key=lambda x: x["notify"]) if ok else None
    a, b = best("ours"), best("kamailio")
    lines.append("")
    if a and b:
        lines.append(f"Highest passing step: ours {a['notify']:.0f} NOTIFY/s, Kamailio {b['notify']:.0f} NOTIFY/s "
                     f"→ **{a['notify'] / b['notify']:.2f}×**.")
    cpu = [(rows[('ours', r)]['cpu_us'], rows[('kamailio', r)]['cpu_us']) for r in rates
           if rows.get(('ours', r)) and rows.get(('kamailio', r))]
    if cpu:
        lines.append("Server CPU per SIP message, ours / Kamailio, per step: " +
                     ", ".join(f"{o / k:.2f}" for o, k in cpu) + " (below 1 = ours is cheaper).")
table = "\n".join(lines) + "\n"
print(table)
if doc != "-":
    text = open(doc).read()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
    else:
        text += f"\n## 2. `make bench`: presence-loadtest against both servers\n\n{begin}\n{table}{end}\n"
    open(doc, "w").write(text)
PY
