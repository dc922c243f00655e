# The two commands of README.md. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# The newest jax of the supported range needs Python >= 3.12: the first of pyenv's 3.12 / 3.13
# or a python3.12 / python3.13 on PATH. JAXBOUNDS_SKIP_NEWEST=1 skips that stage.
PYTHON_NEWEST ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3 \
  $(HOME)/.pyenv/versions/3.13*/bin/python3) $(shell command -v python3.12 python3.13 2>/dev/null))
NEWEST_VENV := .venv-newest
NEWEST_STAMP := $(NEWEST_VENV)/.installed-stamp

.PHONY: demo test lint docs test-fast test-slow test-newest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,experiments,verify]"
	touch $(STAMP)

$(NEWEST_STAMP): pyproject.toml
	@test -n "$(PYTHON_NEWEST)" || { echo "make test: no Python >= 3.12 found (pyenv 3.12/3.13 or \
python3.12/python3.13 on PATH) for the newest-jax stage; install one, or set \
JAXBOUNDS_SKIP_NEWEST=1 to skip it."; exit 1; }
	$(PYTHON_NEWEST) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev,verify]"
	touch $(NEWEST_STAMP)

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

# Stage 1 on the newest jax: the jaxpr walkers, kernels (interpret mode) and modules.
test-newest:
ifeq ($(JAXBOUNDS_SKIP_NEWEST),1)
	@echo "test-newest: skipped (JAXBOUNDS_SKIP_NEWEST=1)"
else
	$(MAKE) $(NEWEST_STAMP)
	$(NEWEST_VENV)/bin/python -c "import jax, sys; print('newest-jax stage: jax', jax.__version__, 'python', sys.version.split()[0])"
	$(NEWEST_VENV)/bin/python -m pytest -q -n auto --durations=5 -m "newest_jax and not slow"
endif

# Stage 1: lint, docs, fast tests (supported jax range: oldest, then newest).
# Stage 2: slow tests (subprocess, multi-device, experiments).
test: lint docs test-fast test-newest test-slow

bench: $(STAMP)
	$(PY) -m experiments bench dora

clean:
	rm -rf $(VENV) $(NEWEST_VENV) runs site .pytest_cache .ruff_cache
