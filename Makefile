# Forewarn: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration lint bench schemas clean

# Creates .venv and installs the project with its pinned dependencies; a no-op when done.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/forewarn demo

test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest forewarn tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

lint: install
	$(BIN)/ruff check forewarn tests bench
	$(BIN)/ruff format --check forewarn tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run.py

# Regenerates the JSON Schemas from the pydantic contracts (a test fails when they drift).
schemas: install
	$(BIN)/forewarn schemas --out schemas

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
