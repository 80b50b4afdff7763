# fastrelay: `make run` starts the demo, `make test` installs everything and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint unit e2e system-deps bench bench-quick ci clean loadtest loadtest-smoke fuzz

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fastrelay needs Python 3.11 or newer (3.11-3.13 are tested): make test PYTHON=python3.13")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[test,bench]'  # no setuptools editable-install notice
	@rm -f $(VENV)/.installed-*
	@touch $@

## make run: relay, agent and client_a together on loopback (the embedded demo)
##   ports: make run PORT=8090 (client_a's proxy) RELAY_PORT=8765 ADMIN_PORT=9101 (relay;
##   agent +1, client_a +2) PAGE_PORT=8081 (the demo page on 127.0.0.2), or EPHEMERAL=1
PORT       ?= 8080
RELAY_PORT ?= 8765
ADMIN_PORT ?= 9101
PAGE_PORT  ?= 8081
run: $(STAMP)
	$(BIN)/python -m fastrelay demo --port $(PORT) --relay-port $(RELAY_PORT) \
		--admin-port $(ADMIN_PORT) --page-port $(PAGE_PORT) $(if $(EPHEMERAL),--ephemeral)

## make test: install what the tests need (pip and apt), then lint and run every test, then
## the chain, half-close and failure tests once more with every program on the stdlib loop
ASYNCIO_TESTS := tests/e2e/test_event_loop.py tests/e2e/test_routing.py \
	tests/e2e/test_half_close.py tests/e2e/test_failure_table.py tests/e2e/test_open_failures.py \
	tests/e2e/test_socks.py tests/e2e/test_connection_limits.py
test: $(STAMP) system-deps lint
	$(BIN)/pytest -q --durations=15
	FASTRELAY_LOOP=asyncio $(BIN)/pytest -q $(ASYNCIO_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/protocol tests/unit

e2e: $(STAMP) system-deps
	$(BIN)/pytest -q tests/e2e

system-deps:
	@scripts/system-deps.sh

## make bench: micro-benchmarks, then every end-to-end scenario at full size (results in bench/results/)
bench: $(STAMP)
	$(BIN)/pytest -q bench/micro --benchmark-only --benchmark-columns=median,iqr,ops
	$(BIN)/python -m bench

## make bench-quick: the same instruments at small sizes, so CI knows they keep working
bench-quick: $(STAMP)
	$(BIN)/pytest -q bench/micro --benchmark-disable
	$(BIN)/python -m bench --quick

## make fuzz: atheris over every parser, one harness after another (one core), each for at
## most RUNS inputs and FUZZ_SECONDS of wall clock; grows fuzz/corpus/<harness>/ (fuzz/README.md)
RUNS ?= 200000
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[fuzz]'
	$(BIN)/python -m fuzz.campaign --runs $(RUNS) --seconds $(FUZZ_SECONDS) $(HARNESS)

## make ci: what .ci/run runs
ci: bench-quick loadtest-smoke test

## make loadtest: Locust against a fresh loopback chain (50 users, 60 s); reports in loadtest/results/
loadtest: $(STAMP)
	$(BIN)/python -m loadtest.run --users 50 --spawn-rate 50 --run-time 60s \
		--out loadtest/results/$$(date +%Y%m%d-%H%M%S)

## make loadtest-smoke: the same, 20 users for 15 s
loadtest-smoke: $(STAMP)
	$(BIN)/python -m loadtest.run --users 20 --spawn-rate 20 --run-time 15s \
		--out loadtest/results/$$(date +%Y%m%d-%H%M%S)-smoke

clean:
	rm -rf .venv .venv-* .pytest_cache .ruff_cache .hypothesis .benchmarks
