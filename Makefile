# Two commands do all the set-up on a fresh machine: `make devnet` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Re-install whenever the declared or the locked dependencies change.
STAMP   = $(VENV)/.installed

.PHONY: devnet test lint typecheck check install clean
# Debian's Chromium drives the dashboard's browser test, and Debian's docker-compose parses
# deploy/compose.yaml (no container engine needed); root installs them, others via sudo.
CHROMIUM = /usr/bin/chromium
COMPOSE  = /usr/bin/docker-compose
# iproute2's `ip` makes the testnet's hosts (network namespaces; the tests run them as root).
IPROUTE  = /usr/bin/ip
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml constraints.txt package.json package-lock.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@# solc-js (contracts) and foundry's cast and anvil (test and benchmark peers).
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP)

devnet: $(STAMP)
	$(BIN)/lattice devnet $(ARGS)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends chromium

$(COMPOSE):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends docker-compose

$(IPROUTE):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends iproute2

test: $(STAMP) $(CHROMIUM) $(COMPOSE) $(IPROUTE)
	$(BIN)/ruff check .
	$(BIN)/mypy
	@# Two runs: the tests without a devnet two at a time (they mostly wait on a broker or
	@# a child process: 230 s instead of 400 on two cores), then the devnet tests one at a
	@# time (each keeps both cores busy). Exit status 5 is "none of these selected". The
	@# slowest of each are listed: CI must stay under 30 minutes.
	$(BIN)/python -m pytest -m "not e2e" -n 2 --durations=10 $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m e2e --durations=20 $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
