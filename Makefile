# fastrelay: `make run` starts the demo, `make test` installs everything and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint unit e2e system-deps bench bench-quick ci clean loadtest loadtest-smoke fuzz \
	hotpath

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fastrelay needs Python 3.11 or newer (3.11-3.13 are tested): make test PYTHON=python3.13")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[test,bench]'  # no setuptools editable-install notice
	@rm -f $(VENV)/.installed-*
	@touch $@

## make hotpath: (re)build the compiled hot path in place (setup.py, fastrelay/hotpath.py); a
## no-op when every build is newer than its source. A module whose build is missing or stale
## runs from its source, so this is never needed for correctness, only for speed.
hotpath: $(STAMP)
	@PYTHONWARNINGS=ignore $(BIN)/python setup.py --quiet build_ext --inplace >$(VENV)/hotpath.log 2>&1 \
		|| { cat $(VENV)/hotpath.log; echo "hot path not compiled: every module runs from source"; }

## make run: relay, agent and client_a together on loopback (the embedded demo)
##   ports: make run PORT=8090 (client_a's proxy) RELAY_PORT=8765 ADMIN_PORT=9101 (relay;
##   agent +1, client_a +2) PAGE_PORT=8081 (the demo page on 127.0.0.2), or EPHEMERAL=1
PORT       ?= 8080
RELAY_PORT ?= 8765
ADMIN_PORT ?= 9101
PAGE_PORT  ?= 8081
run: $(STAMP) hotpath
	$(BIN)/python -m fastrelay demo --port $(PORT) --relay-port $(RELAY_PORT) \
		--admin-port $(ADMIN_PORT) --page-port $(PAGE_PORT) $(if $(EPHEMERAL),--ephemeral)

## make test: install what the tests need (pip and apt), then lint and run every test on the
## compiled hot path, then the chain, half-close and failure tests once more with every program
## on the stdlib loop, and the protocol, unit and those chain tests on the pure-Python hot path
## (EXPECT_COMPILED=0 where no C compiler is at hand)
ASYNCIO_TESTS := tests/e2e/test_event_loop.py tests/e2e/test_routing.py \
	tests/e2e/test_half_close.py tests/e2e/test_failure_table.py tests/e2e/test_open_failures.py \
	tests/e2e/test_socks.py tests/e2e/test_connection_limits.py tests/e2e/test_abort_resets.py
EXPECT_COMPILED ?= 1
test: $(STAMP) hotpath system-deps lint
	FASTRELAY_EXPECT_COMPILED=$(EXPECT_COMPILED) $(BIN)/pytest -q --durations=15
	FASTRELAY_LOOP=asyncio $(BIN)/pytest -q $(ASYNCIO_TESTS)
	FASTRELAY_PURE_PYTHON=1 $(BIN)/pytest -q tests/protocol tests/unit $(ASYNCIO_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP) hotpath
	$(BIN)/pytest -q tests/protocol tests/unit

e2e: $(STAMP) hotpath system-deps
	$(BIN)/pytest -q tests/e2e

system-deps:
	@scripts/system-deps.sh

## make bench: micro-benchmarks, then every end-to-end scenario at full size (results in bench/results/)
bench: $(STAMP) hotpath
	$(BIN)/pytest -q bench/micro --benchmark-only --benchmark-columns=median,iqr,ops
	$(BIN)/python -m bench

## make bench-quick: the same instruments at small sizes, so CI knows they keep working
bench-quick: $(STAMP) hotpath
	$(BIN)/pytest -q bench/micro --benchmark-disable
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench.dns_probe --stalled 2 --names 2000 --rotate-after 500
	$(BIN)/python -m bench.hol_probe --probes 3 --settle 1
	$(BIN)/python -m bench.pair_links

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
loadtest: $(STAMP) hotpath
	$(BIN)/python -m loadtest.run --users 50 --spawn-rate 50 --run-time 60s \
		--out loadtest/results/$$(date +%Y%m%d-%H%M%S)

## make loadtest-smoke: the same, 20 users for 15 s
loadtest-smoke: $(STAMP) hotpath
	$(BIN)/python -m loadtest.run --users 20 --spawn-rate 20 --run-time 15s \
		--out loadtest/results/$$(date +%Y%m%d-%H%M%S)-smoke

clean:
	rm -rf .venv .venv-* .pytest_cache .ruff_cache .hypothesis .benchmarks build
	find fastrelay \( -name '*.so' -o -name '*.c' \) -delete; rm -f fastrelay/_hotpath_build.py
