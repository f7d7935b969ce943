# Two commands do everything on a fresh Debian/Ubuntu machine:
#   make run   - install what is missing, then serve on :9500
#   make test  - install what is missing (test tools too), then run every test:
#                the host suite, then the guest suite in a QEMU guest (Debian's 6.1 kernel)
#   make test-host / make test-vm - either half alone
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: run test test-host test-vm lint typecheck bench setup setup-test clean image install dist editor-links

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

test: test-host
	$(PY) -m tests.vm test

# Lint, types and the pytest suite on this machine's kernel; kernel_vm tests
# are deselected here (pyproject addopts) and run by test-vm.
test-host: setup-test
	$(PY) -m ruff check core plugins tests benchmarks examples deploy
	scripts/typecheck.sh
	$(PY) -m pytest

# The kernel_vm tests in one boot of the QEMU guest (image built and cached
# under ~/.cache/crusoe-metrics-exporter/vm on first use).
test-vm: setup-test
	$(PY) -m tests.vm test

# For editors and other static tools: an editable install they can follow
# (a tree of symlinks with the installed layout under build/; re-run it after
# adding a module). The default editable install is an import hook they cannot.
editor-links: setup-test
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict

lint:
	$(PY) -m ruff check core plugins tests benchmarks examples deploy

typecheck:
	scripts/typecheck.sh

bench: setup-test
	$(PY) benchmarks/run_all.py

# The container image (podman; a Debian 12 base is built locally when no registry is reachable).
image: setup-test
	$(PY) deploy/image/build.py

# Release artefacts: wheel, sdist and their SHA-256 sums in dist/.
dist: setup-test
	rm -rf dist build/lib
	$(PY) -m build --no-isolation --outdir dist . >/dev/null
	cd dist && sha256sum *.whl *.tar.gz > SHA256SUMS
	@cat dist/SHA256SUMS

# systemd service: venv in /opt/crusoe-metrics-exporter, unit, config, user crusoe-exporter (root).
install:
	scripts/install.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
