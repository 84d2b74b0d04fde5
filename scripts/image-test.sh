#!/usr/bin/env bash
# make image-test: run the image with podman the way the chart runs it
# (read-only root, no capabilities, no-new-privileges, user 65534) and check:
#   - the image config: user 65534:65534, entrypoint presenced, no shell;
#   - OPTIONS over UDP and TCP answered 200 (helm/presence/files/sip-options.py);
#   - presence-loadtest from the same image, smoke profile against it, naming
#     the server as localhost (name resolution of the static binary in scratch);
#   - SIGTERM: /readyz and OPTIONS 503 at once, then a clean exit after
#     --drain-seconds (what the chart's preStop and grace period rely on);
#   - the chart's own all-in-one pod (helm/presence/ci/all-in-one-values.yaml
#     rendered; its args, env, and Secret/ConfigMap files bind-mounted at their
#     mount paths, mode 0440 group 65534 as defaultMode and fsGroup make
#     them) behind published ports: OPTIONS over UDP and TCP, the admin API
#     with and without the token, and the helm test's own presence-loadtest
#     round trip with its Digest password.
# Variables: IMAGE (localhost/presence:dev). Installs podman and runc with
# apt-get if missing; podman's configuration lives in target/tools/podman;
# helm comes from scripts/k8s-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/presence:dev}
DRAIN=3

die() { printf 'image-test: FAIL %s\n' "$*" >&2; exit 1; }
say() { printf 'image-test: %s\n' "$*"; }

if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  say "installing podman and runc (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends podman runc iptables >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends podman runc iptables >/dev/null; }
fi
# crun fails on this machine's cgroup layout; no systemd, no journald.
mkdir -p target/tools/podman
cat >target/tools/podman/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
export CONTAINERS_CONF=$PWD/target/tools/podman/containers.conf

podman image exists "$IMAGE" || die "no image $IMAGE (make image first)"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
entry=$(podman image inspect --format '{{join .Config.Entrypoint " "}}' "$IMAGE")
[ "$user" = "65534:65534" ] || die "image user is '$user', not 65534:65534"
[ "$entry" = "/usr/local/bin/presenced" ] || die "entrypoint is '$entry'"
if podman run --rm --network none --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
  die "the image has a shell"
fi
say "image config: user $user, entrypoint $entry, no shell"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SIP=$(free_port)
HTTP=$(free_port)
RUN=(--network host --read-only --cap-drop ALL --security-opt no-new-privileges)
cid=$(podman run -d "${RUN[@]}" "$IMAGE" --sip-listen "127.0.0.1:$SIP" --http-listen "127.0.0.1:$HTTP" \
  --drain-seconds "$DRAIN" --domain example.com)
cleanup() { podman rm -f -t 0 "$cid" >/dev/null 2>&1 || true; }
trap cleanup EXIT

http() { python3 -c 'import sys, urllib.request, urllib.error
try: print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e: print(e.code)
except Exception: print(0)' "http://127.0.0.1:$HTTP$1"; }
for _ in $(seq 1 50); do [ "$(http /readyz)" = 200 ] && break; sleep 0.1; done
[ "$(http /readyz)" = 200 ] || { podman logs "$cid" | tail -5; die "/readyz never answered 200"; }
say "presenced up in the container: sip 127.0.0.1:$SIP, http 127.0.0.1:$HTTP"

python3 helm/presence/files/sip-options.py 127.0.0.1 "$SIP" udp || die "OPTIONS over UDP"
python3 helm/presence/files/sip-options.py 127.0.0.1 "$SIP" tcp || die "OPTIONS over TCP"

say "presence-loadtest (smoke profile, 10 users) from the image against localhost:$SIP"
podman run --rm "${RUN[@]}" --entrypoint /usr/local/bin/presence-loadtest "$IMAGE" \
  --profile smoke --target "localhost:$SIP" --users 10 --duration 2 --no-progress >target/tools/podman/loadtest.out 2>&1 \
  || { tail -20 target/tools/podman/loadtest.out; die "presence-loadtest failed"; }
grep -E '^(canary|PASSED)' target/tools/podman/loadtest.out | sed 's/^/  /'

say "SIGTERM: lame duck for ${DRAIN}s"
start=$(date +%s.%N)
podman kill --signal TERM "$cid" >/dev/null
sleep 0.3
ready=$(http /readyz)
[ "$ready" = 503 ] || die "/readyz answered $ready during the drain, not 503"
line=$(python3 helm/presence/files/sip-options.py 127.0.0.1 "$SIP" udp || true)
echo "  $line"
case "$line" in *"SIP/2.0 503"*) ;; *) die "OPTIONS during the drain was not answered 503" ;; esac
code=$(podman wait "$cid")
took=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
[ "$code" = 0 ] || { podman logs "$cid" | tail -5; die "exit status $code after SIGTERM"; }
podman rm "$cid" >/dev/null
say "/readyz 503 and OPTIONS 503 while draining, exit 0 after ${took}s (--drain-seconds $DRAIN)"

say "the chart's all-in-one pod (ci/all-in-one-values.yaml) in podman"
scripts/k8s-tools.sh
. target/tools/env.sh
POD=$(mktemp -d)
cleanup() { podman rm -f -t 0 "$cid" >/dev/null 2>&1 || true; rm -rf "$POD"; }
scripts/stage-chart.sh "$POD/repo"
target/tools/bin/helm template presence "$POD/repo/helm/presence" --kube-version 1.33.0 \
  -f helm/presence/ci/all-in-one-values.yaml 2>/dev/null >"$POD/render.yaml"
target/tools/venv/bin/python scripts/chart-check.py pod-spec "$POD/render.yaml" "$POD/files"
# What the kubelet makes of defaultMode 0440 and fsGroup 65534.
chown -R root:65534 "$POD/files/server"
find "$POD/files/server" -type f -exec chmod 0440 {} +
SIP=$(free_port)
HTTP=$(free_port)
mapfile -d '' server < <(python3 - "$POD/files/spec.json" "$SIP" "$HTTP" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))["server"]
arg = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in spec["args"] if "=" in a}
sip, http = arg["--sip-listen"].rsplit(":", 1)[1], arg["--http-listen"].rsplit(":", 1)[1]
out = ["-p", "127.0.0.1:%s:%s/udp" % (sys.argv[2], sip), "-p", "127.0.0.1:%s:%s/tcp" % (sys.argv[2], sip),
       "-p", "127.0.0.1:%s:%s/tcp" % (sys.argv[3], http)]
for host, path in spec["mounts"]:
    out += ["-v", "%s:%s:ro" % (host, path)]
for k, v in spec["env"].items():
    out += ["-e", "%s=%s" % (k, v)]
sys.stdout.write("\0".join(out + ["--"] + spec["args"]) + "\0")
PY
)
opts=(); args=(); seen=0
for a in "${server[@]}"; do
  if [ "$seen" = 0 ]; then [ "$a" = -- ] && seen=1 || opts+=("$a"); else args+=("$a"); fi
done
cid=$(podman run -d --read-only --cap-drop ALL --security-opt no-new-privileges --user 65534:65534 \
  "${opts[@]}" "$IMAGE" "${args[@]}")
for _ in $(seq 1 50); do [ "$(http /readyz)" = 200 ] && break; sleep 0.1; done
[ "$(http /readyz)" = 200 ] || { podman logs "$cid" | tail -5; die "the chart's pod: /readyz never answered 200"; }
python3 helm/presence/files/sip-options.py 127.0.0.1 "$SIP" udp || die "the chart's pod: OPTIONS over UDP"
python3 helm/presence/files/sip-options.py 127.0.0.1 "$SIP" tcp || die "the chart's pod: OPTIONS over TCP"
token=$(cat "$POD/files/server/etc/presence/secrets/admin-token")
admin() { python3 -c 'import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]} if sys.argv[2] else {})
try: print(urllib.request.urlopen(req, timeout=2).status)
except urllib.error.HTTPError as e: print(e.code)' "http://127.0.0.1:$HTTP/admin/state?aor=sip:alice@example.com" "$1"; }
with=$(admin "$token"); without=$(admin "")
# With the token the request is let in (404: alice has no state yet).
case "$with:$without" in 200:401|404:401) ;; *) die "the chart's pod: admin API answered $with with the token and $without without" ;; esac
say "admin API: $with with the mounted token (let in), $without without"
mapfile -d '' test < <(python3 - "$POD/files/spec.json" "$SIP" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))["test"]
args = ["--target=127.0.0.1:%s" % sys.argv[2] if a.startswith("--target") else a for a in spec["args"]]
sys.stdout.write("\0".join(args) + "\0")
PY
)
say "the helm test's round trip: presence-loadtest ${test[*]/--password=*/--password=…}"
podman run --rm "${RUN[@]}" --entrypoint /usr/local/bin/presence-loadtest "$IMAGE" "${test[@]}" \
  >target/tools/podman/chart-test.out 2>&1 \
  || { tail -20 target/tools/podman/chart-test.out; podman logs "$cid" | tail -5; die "the chart's helm test round trip failed"; }
grep -E '^(canary|PASSED)' target/tools/podman/chart-test.out | sed 's/^/  /'
say "passed"
