# reco: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools demo up down status test lint bench clean compose-test images packaging-check live-test

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (reco needs Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System tools the tests use: Debian's docker-compose 1.29 validates docker-compose.yml without an engine;
# Debian's chromium renders the A/B report headless (tests/test_ab_report_browser.py).
tools:
	@command -v docker-compose >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q docker-compose >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null; }; \
	  else echo "error: install docker-compose (sudo apt-get install docker-compose)"; exit 1; fi; }
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "error: install chromium (sudo apt-get install chromium)"; exit 1; fi; }

# The compose stack, built offline (Debian base image via debootstrap + a host wheelhouse) and booted for real:
# up -> healthy -> bootstrap -> recommendation + events -> reco_training on the celery worker -> swap -> down -v.
# Needs dockerd (started if not running) and root for debootstrap; about 10-20 min on 2 cores (docs/operations.md).
compose-test: $(STAMP) tools
	@command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
	python3 deploy/compose_test.py

images: $(STAMP)
	deploy/build-images.sh

# Python 3.12: the pinned tree resolves for reco[serving,pipeline] (pip --dry-run in a throwaway venv).
PY312 ?= $(shell for p in /root/.pyenv/versions/3.12.*/bin/python3.12 $$(command -v python3.12); do \
  "$$p" -V >/dev/null 2>&1 && { echo "$$p"; break; }; done)
packaging-check:
	@test -n "$(PY312)" || { echo "error: python3.12 not found"; exit 1; }
	rm -rf .cache/py312 && $(PY312) -m venv .cache/py312
	.cache/py312/bin/pip install -q --dry-run --report .cache/py312/report.json -c constraints.txt '.[serving,pipeline]' \
	  >.cache/py312/pip.log 2>&1 || { grep -E 'ERROR' .cache/py312/pip.log; exit 1; }
	.cache/py312/bin/python -c "import json; r = json.load(open('.cache/py312/report.json')); \
	  n = {i['metadata']['name'].lower(): i['metadata']['version'] for i in r['install']}; \
	  assert n['torch'] == '2.13.0' and n['apache-airflow'] == '3.3.2' and n['mlflow'] == '3.17.2', n; \
	  print(f'python3.12: reco[serving,pipeline] resolves ({len(n)} packages)')"

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

# The live loop on the production profile (Celery, PostgreSQL, MLflow server, API x2, learner, sink): 3 simulated
# days of HTTP traffic, each trained by the scheduler on a celery worker, promoted, hot-swapped and reported.
# Needs PostgreSQL and Redis at their standard ports; RECO_LIVE_SCALE=0.5 shortens it (docs/operations.md).
live-test: $(STAMP)
	$(BIN)/python -m pytest -q -s -p no:cacheprovider tests_live

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -q -c pyproject.toml -r reco serving dags
	$(BIN)/pip-audit --progress-spinner off --skip-editable || echo "pip-audit: see docs/reliability.md (triage; needs PyPI's JSON API)"

bench: $(STAMP)
	$(BIN)/python benchmarks/quality_ml100k.py

clean:
	rm -rf .reco .pytest_cache
