#!/usr/bin/env bash
# make k8s: the plain manifests in k8s/ rendered from helm/presence (the one
# source of truth): `helm template` with k8s/render/common.yaml and
# k8s/render/<mode>.yaml for each mode, then split by
# scripts/chart-check.py split-k8s: objects both modes render alike into
# k8s/base, the others into k8s/overlays/<mode>, each with a
# kustomization.yaml made from k8s/render/kustomization-*.yaml.
#
#   scripts/render-k8s.sh [OUTDIR]   (default k8s; check-chart renders into a
#                                     temporary OUTDIR and compares)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-k8s}
scripts/k8s-tools.sh
. target/tools/env.sh
HELM=target/tools/bin/helm
PY=target/tools/venv/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
scripts/stage-chart.sh "$WORK/repo"
for mode in all-in-one cluster; do
  "$HELM" template presence "$WORK/repo/helm/presence" --kube-version 1.33.0 --skip-tests \
    -f k8s/render/common.yaml -f "k8s/render/$mode.yaml" >"$WORK/$mode.yaml" 2>"$WORK/stderr" \
    || { cat "$WORK/stderr" >&2; exit 1; }
  grep -v 'found symbolic link in path' "$WORK/stderr" >&2 || true
done
"$PY" scripts/chart-check.py split-k8s "$WORK/all-in-one.yaml" "$WORK/cluster.yaml" "$OUT" \
  --kustomizations k8s/render
