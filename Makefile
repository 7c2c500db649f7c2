# One virtual environment per checkout; every target creates it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

## The main job: evaluate the shipped Ubuntu baseline against the example catalog, pin the patch set,
## and report the example fleet's compliance against it.
demo: $(VENV)/.installed
	$(BIN)/patchflow baseline evaluate baselines/ubuntu-staged.yaml \
		--catalog baselines/examples/ubuntu-catalog.json --at 2026-11-10T00:00:00Z --format table
	$(BIN)/patchflow baseline compliance baselines/ubuntu-staged.yaml \
		--catalog baselines/examples/ubuntu-catalog.json --inventory baselines/examples/ubuntu-inventory.json \
		--at 2026-11-10T00:00:00Z --format table

## The whole test suite (lint first: it is cheap and catches the most).
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/versions_bench.py
	$(BIN)/python bench/compliance_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
