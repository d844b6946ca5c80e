# Driftline — every chore is a target here. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest
CLI     := .venv/bin/driftline
PYTEST_ARGS ?=

.PHONY: help venv install up down status clean init lint fmt typecheck lock services-up services-down services-status services-logs \
        test test-unit test-integration test-e2e test-up test-down demo bench bench-projects bench-loop chaos

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

venv: ## create/refresh .venv from requirements.lock (cached uv)
	@infra/venv.sh

install: venv ## fetch/build what the stack needs (Kafka and registry jars, MinIO, PostgreSQL)
	@infra/stack.sh install

up: venv ## start Kafka, the schema registry, PostgreSQL and MinIO; create topics, schemas, bucket
	@infra/stack.sh up
	@$(CLI) stack init

down: ## stop the services (if running) and the local stack: no process left behind
	@infra/services.sh stop
	@infra/stack.sh down

status: ## show the local stack's components
	@infra/stack.sh status

clean: ## stop everything and delete the local stack's data
	@infra/services.sh stop
	@infra/stack.sh clean

lint: venv ## ruff
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .

fmt: venv ## format the code with ruff
	@.venv/bin/ruff check --fix-only . >/dev/null || true
	@.venv/bin/ruff format .

typecheck: venv ## mypy on the libraries, and --strict on the services (and what they import)
	@.venv/bin/mypy libs/*/src
	@.venv/bin/mypy --strict services/*/src

# The image targets of infra/docker/Dockerfile: one per service, and the CLI.
IMAGE_TARGETS := $(patsubst services/%/pyproject.toml,%,$(sort $(wildcard services/*/pyproject.toml))) cli
IMAGE_LOCKS   := infra/docker/locks

lock: ## re-resolve dependencies; rewrite requirements.lock (.venv) and infra/docker/locks/<target>.txt (one per image)
	@set -euo pipefail; UV=$$(infra/venv.sh --uv); \
	  export UV_CACHE_DIR=$${DRIFTLINE_CACHE_DIR:-$$HOME/.cache/driftline}/uv-cache; \
	  $$UV lock --python python3.11; \
	  { printf '%s\n' "# Driftline lock file: every package pinned with hashes, exported from uv's resolution by \`make lock\`." \
	      "# Do not edit by hand; infra/venv.sh installs exactly this set into .venv."; \
	    $$UV export --frozen --all-packages --no-emit-workspace --format requirements.txt --no-header; } > requirements.lock; \
	  tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	  for target in $(IMAGE_TARGETS); do \
	    { printf '%s\n' "# Driftline image lock of the $$target image (driftline-$$target and the workspace libraries it" \
	        "# depends on; no dev tools, no workspace package): exported by \`make lock\` from the same uv.lock as" \
	        "# requirements.lock. Do not edit by hand; infra/docker/Dockerfile syncs exactly this set into the image."; \
	      $$UV export --frozen --package driftline-$$target --no-dev --no-emit-workspace --format requirements.txt \
	        --no-header; } > "$$tmp/$$target.txt"; \
	  done; \
	  mkdir -p $(IMAGE_LOCKS) && rm -f $(IMAGE_LOCKS)/*.txt && mv "$$tmp"/*.txt $(IMAGE_LOCKS)/

test: venv install ## unit, integration and end-to-end tests (starts and stops its own stack)
	@$(MAKE) --no-print-directory test-unit
	@infra/with-test-stack.sh $(MAKE) --no-print-directory test-integration test-e2e

test-unit: venv ## unit tests (no stack needed)
	@$(PYTEST) tests/unit -q $(PYTEST_ARGS)

test-integration: venv ## integration tests against the real stack (test stack when run via make test)
	@infra/with-test-stack.sh $(PYTEST) tests/integration -q $(PYTEST_ARGS)

test-e2e: venv ## the closed loop against the real stack
	@infra/with-test-stack.sh $(PYTEST) tests/e2e -q $(PYTEST_ARGS)

test-up: venv ## keep a test stack running between test runs (faster iteration)
	@DRIFTLINE_STATE_DIR=.state/test DRIFTLINE_PORT_BASE=39190 DRIFTLINE_KAFKA_SASL_SSL=1 infra/stack.sh up
	@DRIFTLINE_STATE_DIR=.state/test $(CLI) stack init >/dev/null

test-down: ## stop and wipe the kept test stack
	@DRIFTLINE_STATE_DIR=.state/test infra/stack.sh clean

demo: up ## set up what is missing, start the stack and the services, run the closed loop and print its timeline
	@$(CLI) demo

bench: venv install ## the benchmarks in bench/, each next to a raw baseline (on the test stack)
	@infra/with-test-stack.sh bash -c 'set -e; for b in ingest features training predict; do \
	  echo "== bench/$$b.py"; $(PY) bench/$$b.py; done'

bench-projects: venv install ## many projects on one install: per-event cost and memory at 1, 10 and 50 projects (about 10 min, test stack)
	@infra/with-test-stack.sh $(PY) bench/projects.py $(BENCH_PROJECTS_ARGS)

chaos: venv install ## chaos run: HTTP load, 20 service SIGKILLs and a broker kill; lost/doubled per sink, recovery seconds (about 6 min, test stack)
	@infra/with-test-stack.sh $(PY) bench/chaos.py $(CHAOS_ARGS)

bench-loop: venv ## the closed-loop benchmark (in-process, no stack): retraining policies on drifting streams
	@$(PY) bench/loop.py $(BENCH_LOOP_ARGS)

services-up: venv ## run the six services with honcho against the local stack (waits until ready)
	@infra/services.sh start

services-down: ## stop the six services
	@infra/services.sh stop

services-status: ## each service's readiness
	@infra/services.sh status

services-logs: ## follow the services' collected logs
	@infra/services.sh logs
