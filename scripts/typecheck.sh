#!/usr/bin/env bash
# mypy (strict) over the package, the plugins, every test, the scripts and the
# benchmarks; see scripts/typecheck.py for how module names are given to mypy
# without a symlink tree.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/typecheck.py "$@"
