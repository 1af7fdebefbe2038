# Forewarn: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: model install demo shell test test-unit test-integration drill lint bench readme-numbers schemas clean

# Creates .venv and installs the project with its pinned dependencies; a no-op when done.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,eval]'
	touch $(STAMP)

demo: install
	$(BIN)/forewarn demo

# A shell with .venv first on the PATH, so `forewarn` works as the README writes it.
shell: install
	@echo "forewarn is on the PATH here (.venv/bin); exit to leave"
	@VIRTUAL_ENV="$(CURDIR)/$(VENV)" PATH="$(CURDIR)/$(BIN):$$PATH" $${SHELL:-/bin/sh} -i

# Two test processes, whole files each: a file's module fixtures (a reference run, a broker of
# its own) stay in one process, and the drills, which mostly wait on a frozen or restarted
# broker, run beside the rest.
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-unit: install
	$(BIN)/python -m pytest forewarn tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

# Fault drills on running workers: oversized records, a bad time zone, a poison record in every
# batch, a malicious model, fencing, no broker, idle HTTP clients, a broker restarted empty, a
# 90 s broker stall. Bounded in time, on 127.0.0.1; `make test` runs them too.
drill: install
	$(BIN)/python -m pytest tests/drills

lint: install
	$(BIN)/ruff check forewarn tests bench deploy
	$(BIN)/ruff format --check forewarn tests bench deploy
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/delivery.py

# Copies the last bench run's numbers (bench/results/latest.json, delivery.json) into
# docs/measured.json and rewrites the README's marked numbers; it lists what changed and the
# numbers of earlier runs it kept. An evaluate report:
#   .venv/bin/python bench/readme_numbers.py evaluate=report.json
readme-numbers: install
	$(BIN)/python bench/readme_numbers.py bench $$(test -f bench/results/delivery.json && echo delivery)

# Trains the shipped churn model on 30 days of simulated history (seed 2026) and writes it
# with its card to forewarn/models/default_model/ (committed). Evaluate it on another seed:
#   forewarn simulate --out /tmp/h.jsonl --days 14 --customers 2000 --seed 99
#   forewarn evaluate --events /tmp/h.jsonl --report /tmp/report.json --plot /tmp/plot.png
model: install
	@d=$$(mktemp -d) && \
	$(BIN)/forewarn simulate --out $$d/history.jsonl --days 30 --customers 3000 --seed 2026 \
		--start 2026-01-01T00:00:00+00:00 && \
	$(BIN)/forewarn train --events $$d/history.jsonl --out forewarn/models/default_model \
		--version churn-sim-2026.11 && rm -r $$d

# Regenerates the JSON Schemas from the pydantic contracts and docs/asyncapi.yaml from them and
# the topic settings (a test fails when either drifts).
schemas: install
	$(BIN)/forewarn schemas --out schemas
	$(BIN)/python -m forewarn.streams.asyncapi docs/asyncapi.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
