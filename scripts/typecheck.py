#!/usr/bin/env python3
"""mypy (strict, pyproject's settings) over the package, the plugins, their tests and the scripts.

The repository keeps the package's code in core/ and plugins/ and installs
it as crusoe_metrics_exporter (pyproject's package-dir). mypy finds modules
by directory name, so it cannot map core/ to crusoe_metrics_exporter on its
own, and an editable install is an import hook mypy does not follow. Instead
of a tree of symlinks with the installed layout, this gives mypy every file
with its module name (mypy's BuildSource), taken from the same package-dir
table setuptools uses; imports between them resolve by name, and errors are
reported at the files' real paths.

Test modules get the names pytest gives them: tests/helpers/x.py is
``helpers.x`` and tests/test_x.py is ``test_x`` (pytest's ``pythonpath =
["tests"]``), test files in deeper folders live under ``tests.``; a plugin's
tests under its package.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from mypy import build
from mypy.errors import CompileError
from mypy.main import process_options
from mypy.modulefinder import BuildSource

REPO = Path(__file__).resolve().parent.parent
#: Trees checked besides the packages, with the module prefix each gets.
#: The benchmarks run as scripts with their own folder on sys.path, so their modules are top-level.
EXTRA_TREES = {"tests": "tests", "scripts": "scripts", "benchmarks": ""}


def _module(prefix: str, rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([prefix, *parts]) if prefix else ".".join(parts)


def sources() -> Iterator[BuildSource]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs: dict[str, str] = project["tool"]["setuptools"]["package-dir"]
    roots = {REPO / path: package for package, path in package_dirs.items()}
    for root, package in sorted(roots.items()):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            # A nested package root (plugins/ inside the package) is walked on its own.
            if any(other != root and other.is_relative_to(root) and path.is_relative_to(other) for other in roots):
                continue
            yield BuildSource(str(path), _module(package, rel), None)
    for tree, prefix in EXTRA_TREES.items():
        for path in sorted((REPO / tree).rglob("*.py")):
            rel = path.relative_to(REPO / tree)
            # tests/ is on pytest's path (pythonpath = ["tests"]): its helpers and the test files directly in it
            # are imported by bare name (helpers.x, test_x); deeper folders keep the tests. prefix.
            if rel.parts[0] == "helpers" or len(rel.parts) == 1 or not prefix:
                yield BuildSource(str(path), _module("", rel), None)
            else:
                yield BuildSource(str(path), _module(prefix, rel), None)
    yield BuildSource(str(REPO / "conftest.py"), "conftest", None)


def main() -> int:
    _, options = process_options(["--config-file", str(REPO / "pyproject.toml"), *sys.argv[1:], "-c", "pass"])
    found = list(sources())
    try:
        result = build.build(found, options)
    except CompileError as exc:  # a syntax error, for instance
        for line in exc.messages:
            print(line)
        return 2
    for line in result.errors:
        print(line)
    files = len(found)
    if result.errors:
        print(f"Found {len(result.errors)} errors ({files} files checked)")
        return 1
    print(f"Success: no issues found in {files} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
