"""docs/plugin-guide.md: every code block runs, so the guide cannot drift from the SDK.

A block whose first line is a comment naming a file (``# pkg/module.py``,
``# pyproject.toml``) is written to that file of a fresh project directory;
the guide's tests (written there too) then run with pytest against the
package the guide built, with the testing kit loaded from the installed
exporter as any author would have it. Other Python blocks are executed as
they are; ``sh`` blocks run with bash in an empty directory, with the
exporter's environment first on PATH. A block in any other language fails
the test: nothing in the guide goes unexecuted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugin-guide.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
_FILE_COMMENT = re.compile(r"^# ([\w./-]+\.(?:py|toml))\n")


def blocks() -> list[tuple[int, str, str]]:
    """(line, language, code) of every fenced block."""
    text = GUIDE.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guide")
    for line, language, code in blocks():
        named = _FILE_COMMENT.match(code)
        if named:
            target = root / named.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
        elif language == "python":
            # A free-standing example: it must run on its own.
            exec(compile(code, f"{GUIDE}:{line}", "exec"), {"__name__": f"guide_block_{line}", "__package__": None})
        elif language == "sh":
            run_shell(code, line, tmp_path_factory.mktemp(f"guide-sh-{line}"))
        else:
            pytest.fail(f"{GUIDE.name}:{line}: a ```{language} block the test cannot run")
    return root


def run_shell(code: str, line: int, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{GUIDE.name}:{line}: {result.stdout}{result.stderr}"


def test_every_block_is_python_or_a_project_file() -> None:
    found = blocks()
    assert len(found) >= 5
    for line, language, code in found:
        assert language in ("python", "toml", "sh"), f"line {line}: ```{language}"
        if language == "toml":
            assert _FILE_COMMENT.match(code), f"line {line}: a TOML block must name its file"


def test_the_guide_builds_a_package_whose_tests_pass(project: Path) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    [(name, module)] = pyproject["project"]["entry-points"]["crusoe_metrics_exporter"].items()
    assert (project / module / "__init__.py").is_file()
    tests = sorted((project / "tests").glob("test_*.py"))
    assert tests
    defined = sum(len(re.findall(r"^def test_", t.read_text(), re.M)) for t in tests)
    env = {**os.environ, "PYTHONPATH": str(project)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{defined} passed" in result.stdout, result.stdout
    # The plugin it declares is the one the entry point names.
    check = subprocess.run([sys.executable, "-c", f"import {module} as m; assert m.crusoe_metrics_exporter_plugin()"
                            f".name == {name!r}"], cwd=project, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
