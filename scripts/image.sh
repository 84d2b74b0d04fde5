#!/usr/bin/env bash
# make image: the presence image (Containerfile) without a Docker daemon.
#
#   1. a static release build of presenced and presence-loadtest
#      (RUSTFLAGS="-C target-feature=+crt-static", target x86_64-unknown-linux-gnu;
#      static glibc resolves /etc/hosts and DNS names without NSS modules);
#   2. their copies, debug info stripped, in target/image/context;
#   3. buildah bud --network none: FROM scratch, user 65534.
#
# Variables: IMAGE (localhost/presence), VERSION (the workspace version),
#   IMAGE_CARGO_TARGET_DIR (target/static: the static build's own target dir),
#   BIN_DIR (use the binaries there instead of building), NICE (nice -n 19).
# Installs buildah with apt-get if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/presence}
VERSION=${VERSION:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)}
TRIPLE=x86_64-unknown-linux-gnu
IMAGE_CARGO_TARGET_DIR=${IMAGE_CARGO_TARGET_DIR:-$PWD/target/static}
NICE=${NICE-nice -n 19}

die() { printf 'image: %s\n' "$*" >&2; exit 1; }

if ! command -v buildah >/dev/null; then
  echo "image: installing buildah (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends buildah >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends buildah >/dev/null; }
fi

if [ -z "${BIN_DIR:-}" ]; then
  echo "image: static release build into $IMAGE_CARGO_TARGET_DIR" >&2
  CARGO_TARGET_DIR=$IMAGE_CARGO_TARGET_DIR RUSTFLAGS="-C target-feature=+crt-static" \
    $NICE cargo build --release --locked -p presenced -p presence-loadtest --target "$TRIPLE"
  BIN_DIR=$IMAGE_CARGO_TARGET_DIR/$TRIPLE/release
fi

CONTEXT=target/image/context
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
for bin in presenced presence-loadtest; do
  [ -x "$BIN_DIR/$bin" ] || die "no $BIN_DIR/$bin"
  # scratch has no dynamic loader: refuse anything but a static binary.
  if readelf -l "$BIN_DIR/$bin" | grep -q 'program interpreter'; then
    die "$BIN_DIR/$bin is dynamically linked (build with RUSTFLAGS=\"-C target-feature=+crt-static\")"
  fi
  objcopy --strip-debug "$BIN_DIR/$bin" "$CONTEXT/$bin"
done

buildah bud --quiet --network none --build-arg "VERSION=$VERSION" -f Containerfile \
  -t "$IMAGE:$VERSION" -t "$IMAGE:dev" "$CONTEXT" >/dev/null
echo "image: built $IMAGE:$VERSION (and :dev), $(du -ch "$CONTEXT"/* | tail -1 | cut -f1) of binaries"
