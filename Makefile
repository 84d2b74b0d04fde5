# The two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test test-deps build release lint fmt check-config bench cluster-bench smoke cluster-up cluster-down cluster-test

run:
	$(CARGO) run --release -p presenced --

test: test-deps
	$(CARGO) test --workspace --locked

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
