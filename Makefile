# maillab: `make lab-up` for the hands-on lab, `make test` for the test suite.
# Each target creates the virtual environment first if it is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOPOLOGY ?= topologies/home-dialup.yaml
# auto: Docker when an engine answers, in-process otherwise (maillab up says which).
BACKEND ?= auto
# pytest-xdist workers: one per core by default.
WORKERS ?= auto
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup lab-up lab-down test unit fidelity fuzz lint format schema bench images bench-images clean

# The help text of each target is its `## ` comment, with $(TOPOLOGY) and $(BACKEND) shown
# as their values (`make help TOPOLOGY=...` shows that file).
help: ## Show this help.
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  sed -e 's|$$(TOPOLOGY)|$(TOPOLOGY)|g' -e 's|$$(BACKEND)|$(BACKEND)|g' | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,web]'
	@touch $(STAMP)

setup: $(STAMP) ## Create the virtual environment, install maillab and the tools the tests use.
	@./scripts/install-tools.sh

lab-up: $(STAMP) ## Bring up $(TOPOLOGY) (TOPOLOGY=FILE, BACKEND=auto|docker|inprocess), print its web page URL, hold it until Ctrl-C.
	$(BIN)/maillab validate $(TOPOLOGY)
	$(BIN)/maillab up $(TOPOLOGY) --backend $(BACKEND) --ui

lab-down: $(STAMP) ## Stop a lab that `maillab up -d` left running (make lab-up stops with Ctrl-C).
	$(BIN)/maillab down

# The fidelity matrix (docs/fidelity.md) runs whole in make test: the built-in cells with
# the first run (--lab-software=builtin, in process and on Docker), then every matrix
# topology's checks with its device under test on Postfix, Exim and sendmail (Docker).
# `make fidelity` runs the same cells through `maillab check` and writes docs/fidelity.md.
MATRIX ?= --lab-software=postfix,exim,sendmail -m fidelity topologies

# make test leaves JUnit reports in $(REPORTS) (the bench reads its time and slowest tests).
REPORTS ?= build/test-reports

test: setup lint ## Run the linters and the whole suite on both backends (what CI runs).
	@rm -f $(REPORTS)/*.xml
	$(BIN)/python -m pytest -n $(WORKERS) --lab-backend=inprocess,docker --lab-software=builtin --junitxml=$(REPORTS)/suite.xml
	$(BIN)/python -m pytest -n $(WORKERS) $(MATRIX) --junitxml=$(REPORTS)/matrix.xml

fidelity: $(STAMP) ## Run the fidelity matrix (built-in, Postfix, Exim, sendmail; Docker) and write docs/fidelity.md.
	$(BIN)/maillab check --software builtin,postfix,exim,sendmail topologies/*.yaml --write docs/fidelity.md

unit: $(STAMP) ## Run the tests in process only (no Docker, no linters): the quick loop.
	$(BIN)/python -m pytest -n $(WORKERS)

# The fuzz tests run in every suite on a small fixed budget (Hypothesis profile "ci", see
# tests/conftest.py); here they search long (profile "fuzz"). The failures found are kept
# in .hypothesis/ and replayed first the next time.
fuzz: $(STAMP) ## Run the fuzz tests (marker fuzz) with a long Hypothesis budget: minutes.
	MAILLAB_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -n $(WORKERS) -m fuzz

lint: $(STAMP) ## ruff check, ruff format --check, mypy on lab/, lint-imports (the layers).
	$(BIN)/ruff check lab tests bench
	$(BIN)/ruff format --check lab tests bench
	$(BIN)/mypy lab
	$(BIN)/lint-imports

format: $(STAMP) ## Format the code with ruff.
	$(BIN)/ruff format lab tests
	$(BIN)/ruff check --fix lab tests

schema: $(STAMP) ## Write topologies/schema.json from the model.
	$(BIN)/maillab schema -o topologies/schema.json

bench: $(STAMP) ## Run the benchmarks and write docs/benchmarks.md.
	$(BIN)/python -m bench --write docs/benchmarks.md

images: $(STAMP) ## Build the Docker images, the real-MTA families too (needs a Docker engine).
	$(BIN)/maillab images build --all $(addprefix --topology ,$(wildcard topologies/*.yaml))

bench-images: $(STAMP) ## Time node image builds: no-op, after a code change (COLD=1: from nothing).
	$(BIN)/python -m bench.images $(if $(COLD),--cold)

clean: ## Remove the virtual environment, caches and lab state.
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info .lab
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
