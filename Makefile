# The two commands of README.md. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint docs test-fast test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,experiments,verify]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments quickstart

lint: $(STAMP)
	$(VENV)/bin/ruff check .

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir $(VENV)/site

test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --durations=15 -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -n auto --durations=10 -m slow

# Stage 1: lint, docs, fast tests. Stage 2: slow tests (subprocess, multi-device, experiments).
test: lint docs test-fast test-slow

bench: $(STAMP)
	$(PY) experiments/bench_dora.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
