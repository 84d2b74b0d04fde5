#!/usr/bin/env bash
# Cluster figures on this machine: presence-loadtest against a local cluster
# (scripts/cluster-up.sh: redis-server, nats-server, EDGES edges, C
# compositors, NOTIFIERS notifiers) for each C in COMPOSITORS, and against the
# all-in-one `presenced` on the same loads for the ratio. Besides the
# loadtest's figures it measures the CPU time of every process over the
# steady state, split by role, so the cost of the Redis and NATS hops per
# PUBLISH is visible. The table goes into docs/benchmarks.md between the
# "cluster-bench:begin/end" markers. Run it as `make cluster-bench`.
#
# Knobs (environment):
#   COMPOSITORS="1 2 3"   compositor counts, one cluster each
#   EDGES=2 NOTIFIERS=2   the rest of the cluster
#   USERS=2000 BUDDIES=10 DURATION=12   shape of every step (seconds of steady state)
#   FANOUT_RATE=1000      PUBLISH/s of the fan-out load (NOTIFY/s = rate x BUDDIES)
#   PUBLISH_RATE=4000     PUBLISH/s offered to the publish-only load (no
#                         watchers); above the cluster's capacity, so the
#                         delivered rate is what it can do
#   ALL_IN_ONE=1          also run the all-in-one server (0: cluster only)
#   SECURE=1              the cluster as cluster-up makes it by default (TLS and
#                         passwords on Redis and NATS, one NATS user per role);
#                         0: plain text, as the figures before issue 11
#   BIN=target/release    presenced and presence-loadtest; when unset they
#                         are built first (give a copy to measure a fixed build)
#   OUT=target/cluster-bench/<time>  reports, CPU samples, cluster logs
#   DOC=docs/benchmarks.md           where the table goes ("-" for stdout only)
#
# Every step starts its cluster (or server) on empty state and stops it
# afterwards, also on failure; cluster logs stay in $OUT/<step>/state/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

COMPOSITORS=${COMPOSITORS:-1 2 3}
EDGES=${EDGES:-2}
NOTIFIERS=${NOTIFIERS:-2}
USERS=${USERS:-2000}
BUDDIES=${BUDDIES:-10}
DURATION=${DURATION:-12}
FANOUT_RATE=${FANOUT_RATE:-1000}
PUBLISH_RATE=${PUBLISH_RATE:-4000}
ALL_IN_ONE=${ALL_IN_ONE:-1}
SHARDS=256
OUT=${OUT:-$ROOT/target/cluster-bench/$(date +%Y%m%d-%H%M%S)}
DOC=${DOC:-$ROOT/docs/benchmarks.md}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -z "${BIN:-}" ]]; then
  ${CARGO:-cargo} build --release --locked -p presenced -p presence-loadtest
  BIN=$ROOT/target/release
fi
BIN=$(realpath "$BIN")
[[ -x $BIN/presenced && -x $BIN/presence-loadtest ]] || { echo "no binaries in $BIN" >&2; exit 2; }

# What is running now and is ours to stop (a finished step's pids are forgotten).
STATE="" AIO_PID="" LT_PID="" SAMPLER_PID="" OWN_LOCK=""
LOCK=/tmp/presence-bench.lock
cleanup() {
  if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  if [[ -n $LT_PID ]]; then kill "$LT_PID" 2>/dev/null || true; fi
  if [[ -n $STATE ]]; then STATE=$STATE scripts/cluster-down.sh >/dev/null || true; fi
  if [[ -n $AIO_PID ]]; then kill "$AIO_PID" 2>/dev/null || true; wait "$AIO_PID" 2>/dev/null || true; fi
  if [[ -n $OWN_LOCK ]]; then rm -f "$LOCK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# As loadtest/bench.sh: tell the other engineers' tools on this shared
# machine that a benchmark runs (they wait before starting cargo).
[[ -e $LOCK ]] || OWN_LOCK=1
touch "$LOCK"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Until killed: every 0.2 s, "wall-clock-seconds name utime+stime-ticks" for
# each name=pid argument (/proc/<pid>/stat counts all threads).
# Usage: python3 -c "$SAMPLER" FILE name=pid...
SAMPLER='
import sys, time
procs = [a.split("=", 1) for a in sys.argv[2:]]
with open(sys.argv[1], "w") as out:
    while True:
        now = time.time()
        for name, pid in procs:
            try:
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out.write(f"{now:.3f} {name} {int(f[11]) + int(f[12])}\n")
        out.flush()
        time.sleep(0.2)
'

# Until every process of the cluster answers /readyz and the compositors
# share all shards evenly (each at most its fair share plus the slack).
wait_ready() {
  python3 - "$STATE/endpoints.txt" "$1" "$SHARDS" <<'PY'
import re, sys, time, urllib.request
endpoints, comps, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
procs = [l.split()[:3] for l in open(endpoints) if "/metrics" in l]
target = -(-shards // comps)
slack = max(target // 16, 1)
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except Exception:
        return None, ""
def gauge(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1
deadline, good = time.time() + 60, 0
while time.time() < deadline:
    ready = all(get(u.replace("/metrics", "/readyz"))[0] == 200 for _, _, u in procs)
    owned = []
    for _, role, u in procs:
        if role == "compositor":
            text = get(u)[1]
            if gauge(text, "presence_compositor_cluster_members") != comps:
                owned.append(-1)
            owned.append(gauge(text, "presence_compositor_shards_owned"))
    ok = ready and min(owned) >= 0 and sum(owned) == shards and max(owned) <= target + slack
    good = good + 1 if ok else 0
    if good == 3:  # stable for a second
        sys.exit(0)
    time.sleep(0.5)
sys.exit(f"cluster not ready within 60 s (shards owned: {owned})")
PY
}

# One load against the running server(s): run_load DIR TARGETS BUDDIES RATE name=pid...
run_load() {
  local dir=$1 targets=$2 buddies=$3 rate=$4 rc=0
  shift 4
  date +%s.%N >"$dir/t0"
  "$BIN/presence-loadtest" --target "$targets" --users "$USERS" --buddies "$buddies" \
    --publish-rate "$rate" --duration "$DURATION" --no-teardown --no-progress \
    --report "$dir/report.json" >"$dir/loadtest.txt" 2>&1 &
  LT_PID=$!
  python3 -c "$SAMPLER" "$dir/cpu.txt" "$@" "loadtest=$LT_PID" &
  SAMPLER_PID=$!
  wait "$LT_PID" || rc=$?
  LT_PID=""
  sleep 0.3
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=""
  echo "$rc" >"$dir/rc"
  grep -E 'canary|passed|FAILED|failed' "$dir/loadtest.txt" | tail -3 >&2 || true
}

# name=pid for every process of the cluster in $STATE.
cluster_pids() {
  local f
  for f in "$STATE"/*.pid; do printf '%s=%s\n' "$(basename "$f" .pid)" "$(cat "$f")"; done
}

step_cluster() { # compositors load buddies rate
  local c=$1 load=$2 buddies=$3 rate=$4
  local dir=$OUT/c$c-$load
  mkdir -p "$dir"
  log "cluster, $c compositor(s): $load, $USERS users x $buddies buddies, $rate PUBLISH/s for ${DURATION}s"
  STATE=$dir/state
  # USERS etc. mean other things to cluster-up: set them explicitly.
  STATE=$STATE SECURE=${SECURE:-1} PRESENCED=$BIN/presenced EDGES=$EDGES COMPOSITORS=$c NOTIFIERS=$NOTIFIERS \
    SHARDS=$SHARDS USERS="" POLICY="" SIP_BASE="" LOG=info DOMAIN=example.com \
    scripts/cluster-up.sh >"$dir/cluster-up.txt"
  wait_ready "$c"
  local targets
  targets=$(grep -o 'sip:127.0.0.1:[0-9]*' "$STATE/endpoints.txt" | sed 's/^sip://' | paste -sd,)
  # shellcheck disable=SC2046
  run_load "$dir" "$targets" "$buddies" "$rate" $(cluster_pids)
  # Warnings and errors of the cluster's processes (presenced, NATS [WRN]/[ERR];
  # not Redis's start-up advice about vm.overcommit_memory, a host setting).
  grep -HE 'WARN|ERROR|\[WRN\]|\[ERR\]' "$STATE"/*.log | grep -v 'Memory overcommit' \
    >"$dir/log-problems.txt" || true
  STATE=$STATE scripts/cluster-down.sh >/dev/null
  STATE=""
}

step_all_in_one() { # load buddies rate
  local load=$1 buddies=$2 rate=$3
  local dir=$OUT/aio-$load sip http
  mkdir -p "$dir"
  log "all-in-one: $load, $USERS users x $buddies buddies, $rate PUBLISH/s for ${DURATION}s"
  sip=$(free_port) http=$(free_port)
  "$BIN/presenced" --sip-listen "127.0.0.1:$sip" --http-listen "127.0.0.1:$http" \
    --domain example.com --rate-per-source 1000000 --burst-per-source 1000000 \
    >"$dir/server.log" 2>&1 &
  AIO_PID=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$http/readyz" >/dev/null && break
    kill -0 "$AIO_PID" || { echo "presenced exited; see $dir/server.log" >&2; exit 1; }
    sleep 0.1
  done
  run_load "$dir" "127.0.0.1:$sip" "$buddies" "$rate" "all-in-one=$AIO_PID"
  grep -HE 'WARN|ERROR' "$dir/server.log" >"$dir/log-problems.txt" || true
  kill "$AIO_PID"
  wait "$AIO_PID" 2>/dev/null || true
  AIO_PID=""
}

START=$(date +%s)
log "binaries: $BIN; output: $OUT"
for c in $COMPOSITORS; do
  step_cluster "$c" fanout "$BUDDIES" "$FANOUT_RATE"
  step_cluster "$c" publish 0 "$PUBLISH_RATE"
done
if [[ $ALL_IN_ONE == 1 ]]; then
  step_all_in_one fanout "$BUDDIES" "$FANOUT_RATE"
  step_all_in_one publish 0 "$PUBLISH_RATE"
fi
log "measured in $(($(date +%s) - START)) s"


export COMPOSITORS EDGES NOTIFIERS USERS BUDDIES DURATION FANOUT_RATE PUBLISH_RATE ALL_IN_ONE
python3 - "$OUT" "$DOC" "$(getconf CLK_TCK)" <<'PY'
import glob, json, os, re, sys
out, doc, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
E = os.environ
cmd = " ".join(f'{k}="{E[k]}"' if " " in E[k] else f"{k}={E[k]}" for k in (
    "COMPOSITORS", "EDGES", "NOTIFIERS", "USERS", "BUDDIES", "FANOUT_RATE", "PUBLISH_RATE",
    "DURATION", "ALL_IN_ONE")) + " make cluster-bench"
LOADS = {"fanout": f"fan-out, {E['FANOUT_RATE']} PUBLISH/s × {E['BUDDIES']} watchers",
         "publish": f"PUBLISH only, {E['PUBLISH_RATE']}/s offered"}

def cpu_at(samples, t):
    """Ticks at wall time t, linear between the samples around it (or the
    last sample, when the process exited less than half a second before t)."""
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] >= t]
    if before and not after and t - before[-1][0] < 0.5:
        return before[-1][1]
    if not before or not after:
        return None
    (t0, v0), (t1, v1) = before[-1], after[0]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)

def step(name):
    d = os.path.join(out, name)
    try:
        rep = json.load(open(os.path.join(d, "report.json")))
    except (OSError, ValueError):
        return None
    t0 = float(open(os.path.join(d, "t0")).read())
    samples = {}
    for line in open(os.path.join(d, "cpu.txt")):
        t, who, ticks = line.split()
        samples.setdefault(who, []).append((float(t), int(ticks)))
    # The window: the whole timeline seconds inside the steady phase.
    steady = [s for s in rep["timeline"] if s["phase"] == "steady"]
    a, b = steady[0]["t"], steady[-1]["t"]
    cpu = {}
    for who, ss in samples.items():
        x, y = cpu_at(ss, t0 + a), cpu_at(ss, t0 + b)
        if x is not None and y is not None:
            role = re.sub(r"-[0-9]+$", "", who)
            cpu[role] = cpu.get(role, 0.0) + (y - x) / hz
    pubs = max(sum(s["publishes"] for s in steady[1:]), 1)
    pub = rep["requests"]["PUBLISH"]
    problems = os.path.join(d, "log-problems.txt")
    return dict(
        passed=rep["passed"], failures="; ".join(rep.get("failures", [])),
        faults={k: v for k, v in rep["canary"].items() if v}, moves=rep["failover"]["moves"],
        pub=pub["steady_rate_per_s"], pub_p50=pub["latency"]["p50_ms"], pub_p99=pub["latency"]["p99_ms"],
        retrans=pub["retransmissions"], notify=rep["notify"]["steady_per_s"],
        n_p50=rep["notify"]["latency"]["p50_ms"], n_p99=rep["notify"]["latency"]["p99_ms"],
        window=b - a, pubs=pubs, cpu=cpu,
        us={k: v * 1e6 / pubs for k, v in cpu.items()},
        server_us=sum(v for k, v in cpu.items() if k != "loadtest") * 1e6 / pubs,
        server_cores=sum(v for k, v in cpu.items() if k != "loadtest") / (b - a),
        log_problems=sum(1 for _ in open(problems)) if os.path.exists(problems) else 0,
        logs=os.path.join(d, "state/") if name[0] == "c" else os.path.join(d, "server.log"),
    )

names = []
for load in LOADS:
    cs = sorted(int(p.split("/c")[-1].split("-")[0]) for p in glob.glob(f"{out}/c*-{load}"))
    names += [f"c{c}-{load}" for c in cs]
    if os.path.isdir(f"{out}/aio-{load}"):
        names.append(f"aio-{load}")
rows = [(n, step(n)) for n in names]

def who(n):
    return "all-in-one" if n.startswith("aio") else n[1:].split("-")[0]

def load_of(n):
    return LOADS[n.split("-")[-1]]

def verdict(x):
    if x["passed"]:
        v = "clean"
    else:
        v = "**NOT CLEAN: " + (x["failures"] or ", ".join(f"{k} {v}" for k, v in x["faults"].items())) + "**"
    if x["moves"]:
        v += f"; {x['moves']} UAs moved to the other edge"
    return v

lines = [f"Command: `{cmd}` (raw reports, CPU samples and cluster logs: `{out}`, not committed).", ""]
lines.append(
    f"Each row starts on empty state: a cluster of separate processes (redis-server, nats-server "
    f"with JetStream, {E['EDGES']} edges, C compositors, {E['NOTIFIERS']} notifiers; "
    f"`scripts/cluster-up.sh`) or the all-in-one `presenced`. presence-loadtest sets up "
    f"{E['USERS']} UAs over UDP (REGISTER, PUBLISH, and in the fan-out load SUBSCRIBE to "
    f"{E['BUDDIES']} buddies), spread over the edges (`--target e1,e2`), then sends "
    f"{E['DURATION']} s of open-loop PUBLISH modifies. PUBLISH/s counts new PUBLISHes in the "
    f"steady state; a UA sends its next one only once the previous is answered, so above capacity "
    f"this is the rate the server delivers, and answers slower than 500 ms bring UDP "
    f"retransmissions (Timer E). `clean` = the loadtest's canary found every watcher at the "
    f"latest change within 5 s, in order, without duplicates. CPU is utime + stime of each process "
    f"(all threads, /proc/<pid>/stat) over the whole seconds of the steady state, divided by the "
    f"PUBLISHes sent in them; a fan-out PUBLISH includes its NOTIFYs. Cores busy = CPU seconds "
    f"per second (the machine has 2, shared by all processes and the load generator).")
lines += ["", "| compositors | load | canary | PUBLISH/s | PUBLISH p50 / p99 ms | PUBLISH retransmissions | NOTIFY/s | change→NOTIFY p50 / p99 ms |",
          "|---|---|---|---|---|---|---|---|"]
for n, x in rows:
    if x is None:
        lines.append(f"| {who(n)} | {load_of(n)} | no report | | | | | |")
        continue
    fan = n.endswith("fanout")
    lines.append(
        f"| {who(n)} | {load_of(n)} | {verdict(x)} | {x['pub']:.0f} | {x['pub_p50']:.1f} / {x['pub_p99']:.0f} | "
        f"{x['retrans']} | " +
        (f"{x['notify']:.0f} | {x['n_p50']:.1f} / {x['n_p99']:.0f} |" if fan else "– | – |"))
lines += ["", "CPU per PUBLISH in the steady state, µs, by role (all processes of a role together):", "",
          "| compositors | load | redis | nats | edges | compositors | notifiers | **server total** | × all-in-one | server cores busy | load generator |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
base = {n.split("-")[-1]: x["server_us"] for n, x in rows if x and n.startswith("aio")}
for n, x in rows:
    if x is None:
        continue
    if n.startswith("aio"):
        split = "(one process) | | | | | "
    else:
        split = " | ".join(f"{x['us'][r]:.0f}" if r in x["us"] else "–"
                           for r in ("redis", "nats", "edge", "compositor", "notifier")) + " | "
    ratio = base.get(n.split("-")[-1])
    lines.append(
        f"| {who(n)} | {load_of(n)} | {split}**{x['server_us']:.0f}** | "
        f"{x['server_us'] / ratio:.1f}× | {x['server_cores']:.2f} | {x['us'].get('loadtest', 0):.0f} |"
        if ratio else
        f"| {who(n)} | {load_of(n)} | {split}**{x['server_us']:.0f}** | – | {x['server_cores']:.2f} | {x['us'].get('loadtest', 0):.0f} |")
notes = []
for n, x in rows:
    if x and not x["passed"]:
        notes.append(f"- **{n}: the canary is NOT clean** ({x['failures']}); logs: `{x['logs']}`.")
    if x and x["log_problems"]:
        notes.append(f"- {n}: {x['log_problems']} WARN/ERROR lines in the logs (`{x['logs']}`).")
if notes:
    lines += [""] + notes
table = "\n".join(lines) + "\n"
print(table)
for n, x in rows:
    if x:
        print(f"{n}: window {x['window']:.0f} s, {x['pubs']} PUBLISH; CPU s " +
              ", ".join(f"{k} {v:.2f}" for k, v in sorted(x["cpu"].items())) +
              f"; {x['log_problems']} WARN/ERROR log lines", file=sys.stderr)
if doc != "-":
    text = open(doc).read()
    begin, end = "<!-- cluster-bench:begin -->", "<!-- cluster-bench:end -->"
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
    else:
        text += f"\n## Cluster mode on the same 2 cores\n\n{begin}\n{table}{end}\n"
    open(doc, "w").write(text)
PY
