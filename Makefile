# Every target uses the project's own virtualenv in .venv/ (created by `make install`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export REDIS_URL ?= redis://127.0.0.1:6379/0
export DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/logs

.DEFAULT_GOAL := help
.PHONY: help install migrate demo-keys run test lint bench up down logs ps clean deadletters keys locust

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/activate: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(BIN)/activate

install: $(BIN)/activate ## Create .venv/ with the project (editable) and its test and dev tools; check for redis-server, PostgreSQL and nginx
	@$(BIN)/python -m collector.devtools.syscheck

migrate: install ## Create the database if needed and apply migrations/ (idempotent)
	$(BIN)/python -m collector.migrate

demo-keys: migrate ## Create (once) the demo fleet, reader and admin keys in var/demo-keys.env
	$(BIN)/python -m collector.devtools.demo_keys

run: install ## Run the whole stack in the foreground (api1 :8001, api2 :8002, worker, beat, flower :5555, nginx :18723), starting a Redis and a PostgreSQL of its own where none answer
	@$(BIN)/python -m collector.devtools.run

test: install ## Run the whole test suite against the local Redis and PostgreSQL (isolated namespaces)
	$(BIN)/pytest

lint: install ## Static checks
	$(BIN)/ruff check collector tasks tests locustfiles bench nginx

bench: install ## Load the local stack with Locust and report accepted/persisted rates and latency
	$(BIN)/python -m bench

deadletters: install ## Dead letters: make deadletters ARGS=list (or ARGS="replay --all", ARGS="replay --id N")
	@$(BIN)/python -m collector.deadletters $(ARGS)

keys: install ## Keys: make keys ARGS="create --prefix device_" (or ARGS=list, ARGS="revoke KEY_ID")
	@$(BIN)/python -m collector.keys $(ARGS)

locust: install ## Locust's web UI on http://127.0.0.1:8089 for the fleet against :18723 (more options: ARGS="...")
	$(BIN)/locust -f locustfiles/devices.py --web-host 127.0.0.1 $(ARGS)

.env:
	@$(PYTHON) -c 'import secrets; t = secrets.token_urlsafe; print(f"POSTGRES_PASSWORD={t(24)}\nFLOWER_BASIC_AUTH=admin:{t(18)}\nMETRICS_TOKEN={t(32)}")' > .env
	@chmod 600 .env
	@echo "wrote .env with random secrets (git ignores it; keep it: the database uses its password)"

up: .env ## Run the whole stack in Docker (needs a Docker engine; writes .env with random secrets once)
	docker compose up -d --build

down: ## Stop the Docker stack
	docker compose down

logs: ## Follow the Docker stack's logs
	docker compose logs -f

ps: ## Show the Docker stack's services
	docker compose ps

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
