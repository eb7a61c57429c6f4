# chat-cluster: `make up`, then open http://127.0.0.1:8080/chat/lobby/ in two tabs.
# Settings are environment variables (docs/configuration.md), e.g. `make up REPLICAS=5`.

.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PYTHON := $(VENV)/bin/python
# local: supervised processes on this machine; compose: docker-compose.yml. By
# default compose when a Docker engine answers, local otherwise.
RUNTIME ?= $(shell docker version >/dev/null 2>&1 && echo compose || echo local)
COMPOSE := deploy/docker/compose.sh
# checkov pins packages that clash with the dev tools, so it has a venv of its own.
SCAN_VENV ?= .venv-scan
RUN_DIR ?= .run/local
CLUSTER := $(PYTHON) deploy/local/cluster.py --run-dir $(RUN_DIR)
# make docs serves the documentation on 127.0.0.1 at this port.
DOCS_PORT ?= 8000

.PHONY: help up down restart status manage logs test test-compose loadtest capacity chaos soak loadtest-ui test-unit test-integration lint docs deps system-deps venv scan-venv lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

up: ## Start the cluster (RUNTIME=local|compose) and print its URLs
ifeq ($(RUNTIME),compose)
	@$(COMPOSE) up
else
	@$(MAKE) --no-print-directory deps
	@$(CLUSTER) up
endif

down: ## Stop every process or container that `make up` started
ifeq ($(RUNTIME),compose)
	@$(COMPOSE) down
else
	@if [ -x $(PYTHON) ]; then $(CLUSTER) down; else echo "chat-cluster is not running"; fi
endif

restart: ## Rolling restart: each replica drains its WebSockets (1012) and is ready before the next
ifeq ($(RUNTIME),compose)
	@$(COMPOSE) restart
else
	@$(CLUSTER) restart
endif

status: ## Show each process or container and whether each replica is ready
ifeq ($(RUNTIME),compose)
	@$(COMPOSE) status
else
	@$(CLUSTER) status
endif

manage: ## Run a Django management command on the local cluster, e.g. ARGS='send_to_room lobby "hello"'
	@$(CLUSTER) manage $(ARGS)

logs: ## Print the last lines of every log (FOLLOW=1 to keep reading)
ifeq ($(RUNTIME),compose)
	@FOLLOW=$(FOLLOW) $(COMPOSE) logs
else
	@$(CLUSTER) logs $(if $(FOLLOW),--follow)
endif

test: deps scan-venv lint ## Run every check: lint, unit tests, static tests, the docs' strict build, integration tests against a real cluster
	$(PYTHON) -m pytest

test-compose: deps ## Build the images and bring docker-compose.yml up for real (starts a private engine if none runs)
	$(PYTHON) -m pytest -m compose tests/compose

loadtest: deps ## Compare async/sync consumers, pubsub/core layers and the raw floor, then the steady-state sweep (STEADY_ARGS); writes loadtests/results/<date>/ and <date>-steady/
	$(PYTHON) loadtests/compare.py $(LOADTEST_ARGS)
	$(PYTHON) loadtests/steady.py $(STEADY_ARGS)

capacity: deps ## Benchmark idle connections through nginx against replica memory (KB per connection)
	$(PYTHON) loadtests/capacity.py $(CAPACITY_ARGS)

chaos: deps ## Fault drills under steady traffic: a replica SIGKILLed, Redis restarted, a rolling restart, a Redis shard restarted, a Sentinel failover, HTTP API posts through a kill and a failover, a replica cut off from Redis, a slow link to Redis (the last two need root)
	$(PYTHON) loadtests/faults.py --scenario all --clients 60 --rooms 6 --rate 5 --seconds 20 --quiesce 30 $(CHAOS_ARGS)

soak: deps ## 30 minutes of moderate load; every replica's memory over time (loadtests/results/<date>/soak.md)
	$(PYTHON) loadtests/soak.py $(SOAK_ARGS)

loadtest-ui: venv ## Open Locust's web UI (http://127.0.0.1:8089) against the running cluster's load balancer
	@echo "Locust: http://127.0.0.1:8089  (target http://127.0.0.1:$${LB_PORT:-8080})"
	$(VENV)/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:$${LB_PORT:-8080} --web-host 127.0.0.1 --web-port 8089

test-unit: venv ## Run the fast unit tests only
	$(PYTHON) -m pytest services

test-integration: deps ## Run the integration tests only (they start their own cluster)
	$(PYTHON) -m pytest tests/integration

docs: venv ## Serve the documentation on 127.0.0.1 (DOCS_PORT, default 8000), rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

lint: venv ## Check style with ruff, and the chat service's types with mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

deps: system-deps venv ## Install everything the cluster and the tests need

system-deps: ## Install nginx and redis-server from Debian if they are missing (needs root)
	@deploy/local/install-system-deps.sh

venv: $(VENV)/.installed ## Create the virtualenv with the pinned Python packages

$(VENV)/.installed: requirements-dev.txt services/chat/requirements.txt loadtests/requirements.txt pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
# This repository, editable (pyproject.toml): scripts import `harness` and `chat` without path edits.
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

scan-venv: $(SCAN_VENV)/.installed ## Create the virtualenv of the IaC scanner (checkov)

$(SCAN_VENV)/.installed: requirements-scan.txt
	@test -x $(SCAN_VENV)/bin/python || python3 -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-scan.txt
	@touch $@

lock: venv ## Recompile the pinned requirements from the .in files
	$(PYTHON) -m pip install --quiet pip-tools
	cd services/chat && ../../$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.txt requirements.in
	cd loadtests && ../$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.txt requirements.in
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev.txt requirements-dev.in
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-scan.txt requirements-scan.in

clean: down ## Stop the cluster and remove the virtualenv and run directory
	rm -rf $(VENV) $(SCAN_VENV) .run
