# The two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test test-deps build release lint fmt check-config bench cluster-bench cluster-scale smoke cluster-up cluster-down cluster-test

run:
	$(CARGO) run --release -p presenced --

# Everything CI checks: the Rust tests, then the dashboards and alert rules
# and the Helm chart / k8s manifests against the presenced the tests built.
test: test-deps
	$(CARGO) test --workspace --locked
	$(MAKE) check-monitoring BIN=target/debug/presenced
	$(MAKE) check-chart BIN=target/debug/presenced

# redis-server and nats-server for the cluster backends' tests (installed if missing).
test-deps:
	scripts/test-deps.sh

build:
	$(CARGO) build --workspace --locked

release:
	$(CARGO) build --release -p presenced --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

check-config:
	$(CARGO) run -q -p presenced -- --check-config

# Side by side: presence-loadtest against our all-in-one server and against
# Kamailio (../shared/bench/peer-kamailio's configuration); the table goes
# into docs/benchmarks.md. Knobs: RATES, USERS, BUDDIES, DURATION, SERVERS.
bench:
	loadtest/bench.sh

# Cluster figures on this machine (docs/benchmarks.md §3): 1, 2 and 3
# compositors and the all-in-one server on the same loads, CPU split by role.
# Knobs: COMPOSITORS, NOTIFIERS, USERS, DURATION, FANOUT_RATE, PUBLISH_RATE, BIN.
cluster-bench:
	loadtest/cluster-bench.sh

# The scaling curve (docs/benchmarks.md §6): each cluster process on a
# simulated host (network namespace + cgroup CPU quota), 1, 2 and 4
# instances of each tier. Needs root. Knobs: SCALE_ARGS (see
# `loadtest/cluster-scale.py --help`), e.g. SCALE_ARGS=--redis-cluster.
cluster-scale:
	$(CARGO) build --release --locked -p presenced -p presence-loadtest
	python3 loadtest/cluster-scale.py $(SCALE_ARGS)

# The load generator's smoke profile against a freshly started server.
smoke:
	$(CARGO) test --release -p presence-loadtest --test smoke

# A local cluster on 127.0.0.1 (redis-server, nats-server, 2 edges, 3
# compositors, 2 notifiers; see scripts/cluster-up.sh for the variables,
# e.g. `make cluster-up USERS=users.txt DOMAIN=example.com`).
cluster-up:
	USERS="$(USERS)" DOMAIN="$(or $(DOMAIN),example.com)" scripts/cluster-up.sh

cluster-down:
	scripts/cluster-down.sh

cluster-test:
	$(CARGO) test -p presenced --test cluster -- --nocapture

# Dashboards and alert rules (monitoring/): promtool check/test rules, the
# Grafana schema, and every metric they use exported by a real presenced
# (BIN, default target/debug/presenced). Installs its tools if missing.
.PHONY: check-monitoring
check-monitoring:
	scripts/check-monitoring.sh

# --- Kubernetes: chart, plain manifests, image (docs/kubernetes.md) --------
# Offline checks of helm/presence and k8s/ (helm lint, strict 1.33 schemas,
# presenced --check-config on the rendered args, schema negatives, k8s/
# freshness). Installs helm and kubernetes-validate into target/tools.
# BIN=path/to/presenced (default target/debug/presenced).
.PHONY: check-chart k8s image image-test

check-chart:
	scripts/check-chart.sh

# Regenerate k8s/ from the chart (commit the result; check-chart fails when stale).
k8s:
	scripts/render-k8s.sh

# localhost/presence:<version> and :dev with buildah, no daemon: a static
# release build (its own target dir, target/static) on scratch. Slow: a full
# release build. BIN_DIR=dir reuses static binaries already built.
image:
	scripts/image.sh

# Runs the image with podman: OPTIONS, the load generator's smoke run from the
# image, the SIGTERM drain. Needs `make image` first.
image-test:
	scripts/image-test.sh
