#!/usr/bin/env bash
# mypy cannot follow the package-dir mapping (core/ -> crusoe_metrics_exporter,
# plugins/ -> crusoe_metrics_exporter.plugins), so check a symlink tree that has
# the installed layout.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .typecheck && mkdir -p .typecheck/crusoe_metrics_exporter
cp -rs "$PWD/core/." .typecheck/crusoe_metrics_exporter/
cp -rs "$PWD/plugins/." .typecheck/crusoe_metrics_exporter/plugins/
find .typecheck -type d -name tests -prune -exec rm -rf {} +
MYPYPATH=.typecheck .venv/bin/python -m mypy --config-file pyproject.toml -p crusoe_metrics_exporter
