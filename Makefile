# salvador's developer commands. Every target creates the virtualenv .venv if it is missing
# (and reuses it if present), installs what it needs, then runs.
#   make demo    process-order on SQLite, then a worker SIGKILLed mid-step and resumed
#   make test    the whole suite against real Redis, PostgreSQL and NATS (started if missing)
#   make lint    ruff and mypy --strict
#   make bench   the benchmark table (bench/README.md says what it measures)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Stamps remember which extras were installed, and go stale when pyproject.toml changes.
STAMP := $(VENV)/.salvador-installed

.PHONY: demo test lint bench venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP)-core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP)-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	touch $@

$(STAMP)-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(STAMP)-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[redis,postgres]'
	touch $@

venv: $(STAMP)-test

demo: $(STAMP)-core
	$(BIN)/python examples/process_order.py

test: $(STAMP)-test
	bash scripts/ensure-services.sh
	bash scripts/ensure-browser.sh
	SALVADOR_REQUIRE_BACKENDS=1 $(BIN)/pytest

lint: $(STAMP)-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)-bench
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
