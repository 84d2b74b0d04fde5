#!/usr/bin/env bash
# stage-chart.sh DEST [MONITORING_DIR]: a copy of the repository layout helm
# needs, DEST/helm/presence (the chart, its monitoring symlink kept as a
# symlink) and DEST/monitoring (MONITORING_DIR, default the repository's
# monitoring/; an empty directory when there is none).
#
# Why: helm refuses a chart whose symlink dangles ("error evaluating
# symlink"), and monitoring/ (dashboards and alerts) is written on another
# branch. Rendering through the staged copy still makes helm follow
# helm/presence/monitoring -> ../../monitoring, exactly as from the
# repository once monitoring/ exists.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:?usage: stage-chart.sh DEST [MONITORING_DIR]}
MON=${2:-monitoring}
rm -rf "$DEST"
mkdir -p "$DEST/helm"
cp -a helm/presence "$DEST/helm/presence"
[ -L "$DEST/helm/presence/monitoring" ] || { echo "stage-chart: helm/presence/monitoring is not a symlink" >&2; exit 1; }
if [ -d "$MON" ]; then
  cp -a "$MON" "$DEST/monitoring"
else
  mkdir -p "$DEST/monitoring"
fi
