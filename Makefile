# The two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test build release lint fmt check-config

run:
	$(CARGO) run --release -p presenced --

test:
	$(CARGO) test --workspace --locked

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
