# Two commands do everything on a fresh Debian/Ubuntu machine:
#   make run   - install what is missing, then serve on :9500
#   make test  - install what is missing (test tools too), then run every test
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench setup clean

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) || (scripts/setup-system.sh && $(PYTHON) -m venv $(VENV))

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

setup: $(STAMP)
	@scripts/setup-system.sh

setup-test: $(STAMP)
	@scripts/setup-system.sh --test

run: setup
	$(VENV)/bin/crusoe-metrics-exporter serve

test: setup-test
	$(PY) -m ruff check core plugins tests benchmarks examples
	scripts/typecheck.sh
	$(PY) -m pytest

lint:
	$(PY) -m ruff check core plugins tests benchmarks examples

typecheck:
	scripts/typecheck.sh

bench: setup-test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist .typecheck *.egg-info
