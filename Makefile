# koala: the two set-up commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo test bench deps lint fmt clean

all: build

## build: target/release/libkoala.so and target/release/koala
build:
	$(CARGO) build --release -p koala-preload -p koala-cli

## demo: record the bundled example service and show what was recorded
demo: build
	./scripts/install-deps.sh demo
	./examples/demo/demo.sh

## test: unit tests and integration tests with real programs
test: deps build
	$(CARGO) test --release --workspace

## bench: recording overhead, replay throughput and matching cost
## (docs/benchmarks.md): prints a table, writes target/bench/results.json.
## BENCH_ROUNDS (5), BENCH_DURATION (3 s), BENCH_ONLY=redis,replay,... tune it.
bench: build
	./scripts/install-deps.sh bench
	$(CARGO) run --release -p koala-bench

## deps: install the system packages the tests need (if missing)
deps:
	./scripts/install-deps.sh

## lint: formatting and clippy, as CI expects them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
