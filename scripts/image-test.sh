#!/usr/bin/env bash
# make image-test: run the image with podman the way the chart runs it
# (read-only root, no capabilities, no-new-privileges, user 65534) and check:
#   - the image config: user 65534:65534, entrypoint presenced, no shell;
#   - OPTIONS over UDP and TCP answered 200 (helm/presence/files/sip-options.py);
#   - presence-loadtest from the same image, smoke profile against it, naming
#     the server as localhost (name resolution of the static binary in scratch);
#   - SIGTERM: /readyz and OPTIONS 503 at once, then a clean exit after
#     --drain-seconds (what the chart's preStop and grace period rely on).
# Variables: IMAGE (localhost/presence:dev). Installs podman and runc with
# apt-get if missing; podman's configuration lives in target/tools/podman.
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
cleanup() { podman rm -f "$cid" >/dev/null 2>&1 || true; }
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
say "/readyz 503 and OPTIONS 503 while draining, exit 0 after ${took}s (--drain-seconds $DRAIN)"
say "passed"
