# sluice — the two commands that matter are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
ENVCTL := python3 tests/env/envctl.py
VENV_PY := .cache/venv/bin/python
# What rdkafka's static librdkafka build (cmake, ssl, sasl, zstd) needs from Debian.
APT_PACKAGES := cmake pkg-config libcurl4-openssl-dev libssl-dev libsasl2-dev libzstd-dev zlib1g-dev
TOOLS := cargo go java mvn python3 openssl

.PHONY: demo test deps build lint crds bench-task env-build env-up env-down env-status

## demo: bring up the loopback cluster, run sluice on it, show it working (KEEP=1 leaves it running)
demo: deps build env-build
	@KEEP=$(KEEP) bash tests/env/demo.sh

## test: set up what is missing, run every test against the real loopback environment, tear it down
test: deps build env-build
	SLUICE_REQUIRE_ENV=1 $(ENVCTL) run -- cargo test --all-targets --locked
	$(VENV_PY) -m pytest -q tests/env

## deps: install the Debian packages rdkafka's build needs (only those missing) and check the toolchains
deps:
	@for t in $(TOOLS); do command -v $$t >/dev/null || { echo "missing tool: $$t (see README, Development)"; exit 1; }; done
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

## build: the sluice binary (the local node runs it for pods of the sluice image) and the test binaries
build:
	cargo build --all-targets --locked

## crds: regenerate the CRD YAML under crds/ and the chart's crds/ from src/crd/ (a test fails when they differ)
crds:
	cargo run --quiet --locked -- crdgen --out-dir crds
	cargo run --quiet --locked -- crdgen --out-dir charts/sluice/crds

## lint: formatting and clippy, warnings are errors
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

## bench-task: sink and source records/s of one task process on this machine (prints figures)
bench-task: deps env-build
	$(ENVCTL) run -- cargo bench --locked --bench task_throughput

env-build:
	$(ENVCTL) build

env-up: deps build env-build
	$(ENVCTL) up

env-down:
	$(ENVCTL) down

env-status:
	$(ENVCTL) status
