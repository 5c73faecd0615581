# reco: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools demo up down status test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (reco needs Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System tools the tests use: Debian's docker-compose 1.29 validates docker-compose.yml without an engine.
tools:
	@command -v docker-compose >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q docker-compose >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null; }; \
	  else echo "error: install docker-compose (sudo apt-get install docker-compose)"; exit 1; fi; }

demo: $(STAMP)
	$(BIN)/reco demo

# Long-running local stack for the UIs (MLflow :5000, Airflow :8080, API :8000); logs in $${RECO_HOME:-.reco}/logs.
up: $(STAMP)
	$(BIN)/reco up

down: $(STAMP)
	$(BIN)/reco down

status: $(STAMP)
	$(BIN)/reco status

test: $(STAMP) tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -q -c pyproject.toml -r reco serving dags
	$(BIN)/pip-audit --progress-spinner off --skip-editable || echo "pip-audit: see docs/reliability.md (triage; needs PyPI's JSON API)"

bench: $(STAMP)
	$(BIN)/python benchmarks/quality_ml100k.py

clean:
	rm -rf .reco .pytest_cache
