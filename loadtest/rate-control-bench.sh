#!/usr/bin/env bash
# Hot presentities with and without RFC 6446 rate control
# (`--notify-min-interval-ms`), docs/benchmarks.md §7: the enterprise-blf
# profile (400 phones, each watching the 4 receptionists and 10 colleagues)
# pushed to PUBLISH_RATE changes/s, against one all-in-one presenced per
# run, the same load twice: rate control off, then on. Prints one table row
# per run: delivered NOTIFY/s, change→NOTIFY latency, the server's CPU
# seconds over the whole run (setup included), and how often a NOTIFY was
# held back. PROFILE=blf plays the same over Event: dialog (BLF lamps:
# 600 phones × 20 lines, 2 receptionists; 3 changes per call).
#
#   BIN=target/release  PROFILE=enterprise-blf  PUBLISH_RATE=1500  DURATION=20  INTERVAL_MS=1000
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
PROFILE=${PROFILE:-enterprise-blf}
PUBLISH_RATE=${PUBLISH_RATE:-1500}
DURATION=${DURATION:-20}
INTERVAL_MS=${INTERVAL_MS:-1000}
OUT=${OUT:-$(mktemp -d /tmp/rate-control-bench.XXXXXX)}
[[ -x $BIN/presenced && -x $BIN/presence-loadtest ]] || { echo "no binaries in $BIN" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "profile $PROFILE"
echo "| rate control | PUBLISH/s | NOTIFY/s | change→NOTIFY p50 / p99 / max ms | server CPU s | NOTIFYs held back | canary |"
echo "|---|---|---|---|---|---|---|"
for interval in 0 "$INTERVAL_MS"; do
  sip=$(free_port); http=$(free_port)
  # The load comes from one address: lift the per-source limits.
  "$BIN/presenced" --sip-listen "127.0.0.1:$sip" --http-listen "127.0.0.1:$http" \
    --domain example.com --rate-per-source 1000000 --burst-per-source 1000000 \
    --notify-min-interval-ms "$interval" >"$OUT/server-$interval.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  sleep 1
  t0=$(ticks "$pid")
  "$BIN/presence-loadtest" --profile "$PROFILE" --target "127.0.0.1:$sip" \
    --publish-rate "$PUBLISH_RATE" --message-rate 0 --duration "$DURATION" --no-progress \
    --report "$OUT/report-$interval.json" >"$OUT/loadtest-$interval.txt" 2>&1 || true
  t1=$(ticks "$pid")
  held=$(curl -s "http://127.0.0.1:$http/metrics" | awk '/^presence_notifier_rate_limited_total/ {print $2}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$OUT/report-$interval.json" "$interval" "$t0" "$t1" "${held:-0}" <<'PY'
import json, os, sys
path, interval, t0, t1, held = sys.argv[1:]
r = json.load(open(path))
n, p = r["notify"], r["requests"]["PUBLISH"]
lat = n["latency"]
faults = {k: v for k, v in r["canary"].items() if v}
canary = "clean" if r["passed"] else "NOT CLEAN: " + "; ".join(r.get("failures", [])) + str(faults)
cpu = (float(t1) - float(t0)) / os.sysconf("SC_CLK_TCK")
label = "off" if interval == "0" else f"{interval} ms"
print(f"| {label} | {p['steady_rate_per_s']:.0f} | {n['steady_per_s']:.0f} | "
      f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.0f} / {lat['max_ms']:.0f} | {cpu:.1f} | {int(float(held))} | {canary} |")
PY
done
echo "(raw reports and logs: $OUT)"
