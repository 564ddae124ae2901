# The Makefile only names commands; it bootstraps its own virtualenv so a fresh clone needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration lint type bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: install
	$(BIN)/porch run examples/diamond/*.json --iterations 5

# Tests run on WORKERS processes (pytest-xdist): most integration tests wait on processes, not
# the CPU. Tests that share a module-scoped fixture stay on one worker (xdist_group, loadgroup).
WORKERS ?= 3
PYTEST_PARALLEL := $(BIN)/pytest -n $(WORKERS) --dist loadgroup

test: install
	$(PYTEST_PARALLEL) tests

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(PYTEST_PARALLEL) tests/integration

lint: install
	$(BIN)/ruff check porch workers tests scripts examples
	$(BIN)/ruff format --check porch workers tests

type: install
	$(BIN)/mypy porch workers

bench: install
	$(BIN)/python -c 'import numpy, matplotlib' 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache bench-results
