"""The wheel installs into a fresh virtualenv with the documented layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from helpers.builtins import builtin_plugins

REPO = Path(__file__).resolve().parent.parent
BUILTINS = builtin_plugins()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # setuptools reuses build/lib, which would smuggle deleted modules into the wheel.
    shutil.rmtree(REPO / "build", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, cwd=out)
    # The build leaves an egg-info in the checkout; importlib.metadata would
    # find it before the editable install's metadata (cwd is on sys.path).
    shutil.rmtree(REPO / "crusoe_metrics_exporter.egg-info", ignore_errors=True)
    [whl] = out.glob("crusoe_metrics_exporter-*.whl")
    return whl


def test_wheel_has_one_namespace_and_bundles_c_sources(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"crusoe_metrics_exporter"}
    assert not any("/tests/" in n for n in names), "plugin tests must not ship in the wheel"
    # Every C source and header of a plugin folder ships next to its Python code.
    for path in sorted((REPO / "plugins").rglob("*.[ch]")):
        assert f"crusoe_metrics_exporter/{path.relative_to(REPO)}" in names, path
    assert "crusoe_metrics_exporter/py.typed" in names


@pytest.mark.slow
def test_wheel_works_in_a_fresh_virtualenv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True)
    out = subprocess.run([str(env_dir / "bin" / "crusoe-metrics-exporter"), "plugins", "--json"], check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout
    plugins = {p["name"]: p for p in json.loads(out)}
    assert set(plugins) == BUILTINS
    for p in plugins.values():
        assert p["failed_phase"] not in ("load", "validate"), p
    for bare in ("core", "plugins"):
        probe = subprocess.run([str(py), "-c", f"import {bare}"], capture_output=True, cwd=tmp_path)
        assert probe.returncode != 0, f"a bare '{bare}' package is importable"
