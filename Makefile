# chat-cluster: `make up`, then open http://127.0.0.1:8080/chat/lobby/ in two tabs.
# Settings are environment variables (see README.md), e.g. `make up REPLICAS=5`.

.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PYTHON := $(VENV)/bin/python
# checkov pins packages that clash with the dev tools, so it has a venv of its own.
SCAN_VENV ?= .venv-scan
RUN_DIR ?= .run/local
CLUSTER := $(PYTHON) deploy/local/cluster.py --run-dir $(RUN_DIR)

.PHONY: help up down status logs test test-unit test-integration lint deps system-deps venv scan-venv lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

up: deps ## Start the local cluster (Redis, REPLICAS Daphne replicas, nginx) and print its URLs
	@$(CLUSTER) up

down: ## Stop every process that `make up` started
	@if [ -x $(PYTHON) ]; then $(CLUSTER) down; else echo "chat-cluster is not running"; fi

status: venv ## Show each process of the local cluster and whether each replica is ready
	@$(CLUSTER) status

logs: venv ## Print the last lines of every log (FOLLOW=1 to keep reading)
	@$(CLUSTER) logs $(if $(FOLLOW),--follow)

test: deps scan-venv lint ## Run every check: lint, unit tests, integration tests against a real cluster
	$(PYTHON) -m pytest

test-unit: venv ## Run the fast unit tests only
	$(PYTHON) -m pytest services

test-integration: deps ## Run the integration tests only (they start their own cluster)
	$(PYTHON) -m pytest tests/integration

lint: venv ## Check style with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

deps: system-deps venv ## Install everything the cluster and the tests need

system-deps: ## Install nginx and redis-server from Debian if they are missing (needs root)
	@deploy/local/install-system-deps.sh

venv: $(VENV)/.installed ## Create the virtualenv with the pinned Python packages

$(VENV)/.installed: requirements-dev.txt services/chat/requirements.txt
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

scan-venv: $(SCAN_VENV)/.installed ## Create the virtualenv of the IaC scanner (checkov)

$(SCAN_VENV)/.installed: requirements-scan.txt
	@test -x $(SCAN_VENV)/bin/python || python3 -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-scan.txt
	@touch $@

lock: venv ## Recompile the pinned requirements from the .in files
	$(PYTHON) -m pip install --quiet pip-tools
	cd services/chat && ../../$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.txt requirements.in
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev.txt requirements-dev.in
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-scan.txt requirements-scan.in

clean: down ## Stop the cluster and remove the virtualenv and run directory
	rm -rf $(VENV) $(SCAN_VENV) .run
