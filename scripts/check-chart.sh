#!/usr/bin/env bash
# make check-chart: every offline check of helm/presence and k8s/. Fails on
# the first failing step. What each step verifies:
#
#  1. helm lint --strict, with the default values and each ci/*-values.yaml,
#     by helm 4 and by helm 3 (most clusters are still run with helm 3);
#  2. helm template of the defaults and each ci/*-values.yaml (helm 3 must
#     render the same objects as helm 4), validated by
#     scripts/chart-check.py validate: strict Kubernetes 1.33 schemas
#     (kubernetes-validate; an unknown kind/apiVersion fails unless its group
#     is monitoring.coreos.com or keda.sh, whose objects are checked against
#     our own schemas of the fields their controllers require), names, Pod
#     Security "restricted" (hostNetwork allowed for the DaemonSet edge only,
#     reported), and references (selectors select, targets exist, ports
#     exist, probes on the HTTP port, grace period > preStop + drain, each
#     presenced pod its own role's NATS user and no other role's password or
#     credentials, checksum/nats-auth = the passwords it reads);
#  3. every presenced container of those renders through
#     `$BIN --check-config` (its Secrets and ConfigMaps written at their mount
#     paths under a temporary root; env valueFrom resolved, status.hostIP as
#     127.0.0.1, metadata.name as the longest name the controller makes);
#     and the helm test pod's presence-loadtest flags through `$LOADTEST`
#     (it validates them and exits when only writing a users file); and the
#     bundled NATS's rendered config (nats.conf including
#     files/nats-auth.conf, TLS) through `$NATS_SERVER -t` with the
#     container's env and files (every password variable the users file
#     names must be set);
#  4. the monitoring symlink: the chart rendered from a copy of the repository
#     layout whose monitoring/ is helm/tests/monitoring: every rule file and
#     dashboard is in the render, unchanged, and a promtool test file is
#     skipped; with the repository's own monitoring/ (if this tree has one)
#     the same, and the chart also renders straight from helm/presence;
#  5. values.schema.json and the chart's own checks refuse each
#     helm/tests/bad-values/*.yaml, with the error its "# expect:" names
#     (helm 4; helm 3 must refuse it too, in its own words);
#  6. k8s/ is what `make k8s` renders now (fails when stale), and each
#     overlay builds with `kubectl kustomize` (secret files stood in) and
#     passes steps 2 and 3 (the bundled NATS's config too).
#
# Variables: BIN (presenced for step 3; default target/debug/presenced),
#   LOADTEST (presence-loadtest; default: next to BIN; skipped if absent),
#   NATS_SERVER (default: nats-server on PATH, as `make test-deps` installs
#   it; skipped if absent).
# Installs helm and kubernetes-validate into target/tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-target/debug/presenced}
KUBE=1.33.0

scripts/k8s-tools.sh
. target/tools/env.sh
HELM=$ROOT/target/tools/bin/helm
HELM3=$ROOT/target/tools/bin/helm3
PY=$ROOT/target/tools/venv/bin/python
CHECK="$PY $ROOT/scripts/chart-check.py"

[ -x "$BIN" ] || { echo "check-chart: no presenced at BIN=$BIN (cargo build -p presenced, or set BIN)" >&2; exit 1; }
BIN=$(realpath "$BIN")
LOADTEST=${LOADTEST:-$(dirname "$BIN")/presence-loadtest}
LOADTEST_ARGS=()
if [ -x "$LOADTEST" ]; then
  LOADTEST_ARGS=(--loadtest "$(realpath "$LOADTEST")")
else
  LOADTEST=""
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s.%N)
step_start=$T0
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
step() {
  local now; now=$(date +%s.%N)
  [ "$step_start" = "$T0" ] || printf '   (%s s)\n' "$(secs "$now" "$step_start")"
  step_start=$now
  printf '== %s\n' "$*"
}
quiet_helm() { # helm, without its note that it followed the monitoring symlink
  "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2)
}
quiet_helm3() {
  "$HELM3" "$@" 2> >(grep -v 'found symbolic link in path' >&2)
}
# A render without what differs from run to run or between helm versions:
# generated secrets (and the checksum of the NATS passwords), blank lines.
RANDOM_LINES='^  (nonce-secret|admin-token|password|edge|compositor|notifier|api|presence):|^ +checksum/nats-auth:'
comparable() { grep -v -E "$RANDOM_LINES|^[[:space:]]*\$" "$1"; }

scripts/stage-chart.sh "$WORK/repo"
CHART=$WORK/repo/helm/presence
if [ -d monitoring ]; then
  echo "monitoring/: the repository's ($(ls monitoring/alerts/*.yaml 2>/dev/null | wc -l) files in alerts/, $(ls monitoring/dashboards/*.json 2>/dev/null | wc -l) in dashboards/)"
else
  echo "monitoring/: not in this tree (written on another branch); the chart renders no rules or dashboards from it"
fi

CASES=(defaults)
for f in helm/presence/ci/*-values.yaml; do CASES+=("$f"); done
values_args() { [ "$1" = defaults ] || printf -- '-f\n%s\n' "$ROOT/$1"; }
case_name() { if [ "$1" = defaults ]; then echo defaults; else basename "$1" .yaml; fi; }

step "1. helm lint --strict (${#CASES[@]} value sets; helm $("$HELM" version --template '{{.Version}}') and $("$HELM3" version --template '{{.Version}}'))"
for c in "${CASES[@]}"; do
  mapfile -t va < <(values_args "$c")
  out=$(quiet_helm lint --strict --kube-version "$KUBE" "$CHART" "${va[@]}" 2>&1) || { echo "$out"; echo "FAIL: helm lint $c" >&2; exit 1; }
  out=$(quiet_helm3 lint --strict --kube-version "$KUBE" "$CHART" "${va[@]}" 2>&1) || { echo "$out"; echo "FAIL: helm 3 lint $c" >&2; exit 1; }
  echo "  ok   $(case_name "$c")"
done

step "2. helm template, strict Kubernetes $KUBE schemas, CRD fields, restricted pods, references"
RENDERS=()
for c in "${CASES[@]}"; do
  mapfile -t va < <(values_args "$c")
  out=$WORK/render-$(case_name "$c").yaml
  quiet_helm template presence "$CHART" --namespace presence --kube-version "$KUBE" "${va[@]}" >"$out"
  quiet_helm3 template presence "$CHART" --namespace presence --kube-version "$KUBE" "${va[@]}" >"$out.helm3"
  if ! diff <(comparable "$out") <(comparable "$out.helm3") >"$out.diff"; then
    head -20 "$out.diff"; echo "FAIL: helm 3 renders $(case_name "$c") differently" >&2; exit 1
  fi
  echo "  $(case_name "$c"): $(grep -c '^kind:' "$out") objects: $(grep '^kind:' "$out" | sort | uniq -c | awk '{printf "%s%s×%s", sep, $3, $1; sep=", "}')"
  RENDERS+=("$out")
done
AIO_RENDER=$WORK/render-all-in-one-values.yaml
$CHECK validate --allow-host-network edge "${RENDERS[@]}"

step "3. presenced --check-config on every presenced container ($BIN)"
[ -n "$LOADTEST" ] || echo "  (no presence-loadtest next to BIN and no LOADTEST: the test pods' flags are not checked)"
$CHECK check-config --bin "$BIN" "${LOADTEST_ARGS[@]}" "${RENDERS[@]}"
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || true)}
if [ -n "$NATS_SERVER" ]; then
  echo "  the bundled NATS's config through $("$NATS_SERVER" --version) -t:"
  $CHECK nats-config --nats-server "$NATS_SERVER" "${RENDERS[@]}"
else
  echo "  (no nats-server on PATH and no NATS_SERVER: the bundled NATS's config is not checked; make test-deps installs it)"
fi

step "4. monitoring/ through the chart's symlink"
scripts/stage-chart.sh "$WORK/fixture" helm/tests/monitoring
quiet_helm template presence "$WORK/fixture/helm/presence" --kube-version "$KUBE" \
  -f helm/presence/ci/all-in-one-values.yaml >"$WORK/fixture.yaml"
$CHECK monitoring "$WORK/fixture.yaml" helm/tests/monitoring
$CHECK validate "$WORK/fixture.yaml" >/dev/null
if [ -d monitoring ]; then
  $CHECK monitoring "$AIO_RENDER" monitoring
  "$HELM" template presence helm/presence --namespace presence --kube-version "$KUBE" \
    -f helm/presence/ci/all-in-one-values.yaml 2>/dev/null >"$WORK/direct.yaml"
  # Same objects as the staged render (secrets are random each time).
  grep -v -E "$RANDOM_LINES" "$WORK/direct.yaml" >"$WORK/direct.cmp"
  grep -v -E "$RANDOM_LINES" "$AIO_RENDER" >"$WORK/staged.cmp"
  diff -q "$WORK/direct.cmp" "$WORK/staged.cmp" >/dev/null \
    || { echo "FAIL: helm/presence renders differently from its staged copy" >&2; exit 1; }
  echo "  ok   helm/presence renders straight from the repository (the symlink resolves)"
fi

step "5. bad values are refused (values.schema.json and the chart's own checks)"
for f in helm/tests/bad-values/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$f")
  [ -n "$expect" ] || { echo "FAIL: $f has no '# expect:' line" >&2; exit 1; }
  if out=$("$HELM" template presence "$CHART" --kube-version "$KUBE" -f "$f" 2>&1); then
    echo "FAIL: $f was accepted" >&2; exit 1
  fi
  if ! grep -qF -- "$expect" <<<"$out"; then
    echo "$out" >&2; echo "FAIL: $f was refused, but not with '$expect'" >&2; exit 1
  fi
  if "$HELM3" template presence "$CHART" --kube-version "$KUBE" -f "$f" >/dev/null 2>&1; then
    echo "FAIL: helm 3 accepted $f" >&2; exit 1
  fi
  printf '  ok   %-40s %s\n' "$(basename "$f")" "$(grep -F -- "$expect" <<<"$out" | head -1 | sed 's/^[[:space:]-]*//' | cut -c1-110)"
done

step "6. k8s/ is the chart's render (make k8s), and each overlay builds and passes 2 and 3"
mkdir -p "$WORK/k8s"
cp -a k8s/render "$WORK/k8s/render"
scripts/render-k8s.sh "$WORK/k8s" >/dev/null
if ! diff -ru --exclude=secrets --exclude=render --exclude=README.md k8s "$WORK/k8s" >"$WORK/k8s.diff"; then
  head -40 "$WORK/k8s.diff"
  echo "FAIL: k8s/ is stale: run make k8s and commit the result" >&2
  exit 1
fi
echo "  ok   k8s/ is up to date"
cp -a k8s "$WORK/kustomize"
# Stand-ins for the files an operator creates (k8s/README.md).
mkdir -p "$WORK/kustomize/base/secrets" "$WORK/kustomize/overlays/cluster/secrets"
printf 'stand-in-nonce-secret-0123456789' >"$WORK/kustomize/base/secrets/nonce-secret"
printf 'stand-in-admin-token-0123456789' >"$WORK/kustomize/base/secrets/admin-token"
printf 'alice@example.com:alice-secret\n' >"$WORK/kustomize/base/secrets/users.txt"
printf 'standinredis0123' >"$WORK/kustomize/overlays/cluster/secrets/redis-password"
for role in edge compositor notifier api presence; do
  printf 'standin%snats0123' "$role" >"$WORK/kustomize/overlays/cluster/secrets/nats-$role-password"
done
KUSTOMIZED=()
for overlay in all-in-one cluster; do
  kubectl kustomize "$WORK/kustomize/overlays/$overlay" >"$WORK/k8s-$overlay.yaml"
  echo "  k8s/overlays/$overlay: $(grep -c '^kind:' "$WORK/k8s-$overlay.yaml") objects"
  KUSTOMIZED+=("$WORK/k8s-$overlay.yaml")
done
$CHECK validate "${KUSTOMIZED[@]}"
$CHECK check-config --bin "$BIN" "${KUSTOMIZED[@]}"
[ -z "$NATS_SERVER" ] || $CHECK nats-config --nats-server "$NATS_SERVER" "${KUSTOMIZED[@]}"

step_end=$(date +%s.%N)
printf '   (%s s)\n' "$(secs "$step_end" "$step_start")"
printf 'check-chart: passed in %s s\n' "$(secs "$step_end" "$T0")"
