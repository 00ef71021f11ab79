# mlops-assets: every target builds what it needs first, so each works on a fresh clone.
SHELL := /bin/bash
PY_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
AZURITE_VERSION := 3.37.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export MLOPS_HOME ?= $(CURDIR)/.mlops
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster

.DEFAULT_GOAL := help
.PHONY: help env tools apt-packages demo demo-azure dev check-defs test test-fast test-real test-e2e bench lint format lock clean check-azure

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Quiet: one line, so a first `make demo` still fits on one screen; errors still show.
# .venv holds the development set (requirements-dev.txt: the runtime pins of requirements.txt
# plus test and lint tools); images install requirements.txt only.
# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set
# nothing ever does: every process would compile great-expectations, Dagster... from source
# (~5 s for great-expectations alone). pip, which the images use, compiles at install.
$(VENV)/.stamp: requirements.txt requirements-dev.txt pyproject.toml
	@echo "building $(VENV) from requirements-dev.txt (first time only, a few minutes) ..."
	@$(PY_BOOT) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install -q --upgrade pip uv
	@$(VENV)/bin/uv pip sync -q --compile-bytecode --python $(PY) requirements-dev.txt
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

env: $(VENV)/.stamp ## Build the Python environment (.venv) from the pinned requirements

.tools/azurite/node_modules/.bin/azurite-blob:
	mkdir -p .tools/azurite
	cd .tools/azurite && npm install --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

# checkov (the static analysis of infra/*.bicep) in its own environment: its pins conflict with
# ours (requirements-tools/checkov.in says which). Exact pins, so no resolver: --no-deps.
.tools/checkov/bin/checkov: requirements-tools/checkov.txt
	rm -rf .tools/checkov
	$(PY_BOOT) -m venv .tools/checkov
	.tools/checkov/bin/python -m pip install -q --no-deps -r requirements-tools/checkov.txt
	@touch $@

# chromium: the browser test (Playwright drives /usr/bin/chromium; no browser download).
# postgresql: initdb/pg_ctl for the production-instance test (a private cluster per test run).
apt-packages:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

tools: .tools/azurite/node_modules/.bin/azurite-blob .tools/checkov/bin/checkov apt-packages ## Install Azurite (npm) and checkov into .tools/, Chromium and PostgreSQL (apt)
	@java -version >/dev/null 2>&1 || { echo "Java 17 is needed for the Spark tests: apt-get install -y openjdk-17-jre-headless"; exit 1; }

demo: env ## Generate sample data, run the daily retrain and promotion, print the result table
	@$(VENV)/bin/mlops demo

demo-azure: env .tools/azurite/node_modules/.bin/azurite-blob ## The sales chain on the local Azure ML emulation (Azurite, no Azure account)
	@$(VENV)/bin/mlops demo-azure

dev: env ## Open the Dagster UI (webserver + daemon) on http://127.0.0.1:3000, reports on :3001
	@$(VENV)/bin/mlops dev --port 3000 --reports-port 3001

check-defs: env ## Load and validate the code location (dg check defs)
	$(VENV)/bin/dg check defs

test: env tools ## Run the whole test suite (starts Azurite, Spark, servers as needed)
	$(VENV)/bin/pytest -q

test-fast: env ## Unit tests only (no outside components)
	$(VENV)/bin/pytest -q -m "not integration"

test-real: env ## The chain on a real panel (MLOPS_REAL_DATA: folder of dominicks_beer_dev.parquet)
	@test -n "$(MLOPS_REAL_DATA)" || { echo "set MLOPS_REAL_DATA (docs/example-beer.md)"; exit 2; }
	$(VENV)/bin/pytest -q -m real_data

test-e2e: env tools ## The browser test of the Dagster UI only (screenshot in test-artifacts/)
	$(VENV)/bin/pytest -q -m e2e

check-azure: env ## Check the configured AML workspace and compute exist (DRY_RUN=1: print only)
	$(VENV)/bin/mlops check-azure $(if $(DRY_RUN),--dry-run,)

bench: env ## Run the benchmarks; JSON results in benchmarks/results/
	$(PY) -m benchmarks.run_all

lint: env ## Ruff lint and format check, mypy type check, known-vulnerability audit of both pinned sets
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) scripts/audit_deps.py

format: env ## Format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Runtime first: the development set is constrained to its pins (-c requirements.txt).
lock: ## Re-compile requirements.txt, requirements-dev.txt and the tools' pins (exact, no index URLs)
	$(VENV)/bin/uv pip compile requirements.in --python-version 3.11 --no-header -o requirements.txt
	$(VENV)/bin/uv pip compile requirements-dev.in --python-version 3.11 --no-header -o requirements-dev.txt
	$(VENV)/bin/uv pip compile requirements-tools/checkov.in --python-version 3.11 --no-header -o requirements-tools/checkov.txt

clean: ## Remove the environment, tools and local state
	rm -rf $(VENV) .tools .mlops
