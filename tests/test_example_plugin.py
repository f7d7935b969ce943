"""The example third-party plugin, installed with pip, shows up everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.server import CLI, running_exporter

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "crusoe-exporter-uptime"


@pytest.fixture(scope="module")
def installed_example() -> Iterator[None]:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(EXAMPLE)], check=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "crusoe-exporter-uptime"], check=True)


def test_example_plugin_is_listed(installed_example: None) -> None:
    out = subprocess.run([CLI, "plugins", "--json"], check=True, capture_output=True, text=True).stdout
    plugins = {p["name"]: p for p in json.loads(out)}
    assert plugins["uptime"]["distribution"] == "crusoe-exporter-uptime"
    assert plugins["uptime"]["version"] == "1.0.0"
    assert plugins["uptime"]["state"] == "active"


def test_example_plugin_collects(installed_example: None) -> None:
    out = subprocess.run([CLI, "collect", "--plugin", "uptime"], check=True, capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("crusoe_vm_uptime_seconds "))
    assert float(line.split()[1]) > 0
    assert "crusoe_vm_uptime_collection_errors_total 0.0" in out


def test_example_plugin_served_on_metrics(installed_example: None) -> None:
    with running_exporter() as exporter:
        status, _, body = exporter.get("/metrics")
    assert status == 200
    assert "crusoe_vm_uptime_seconds " in body
    assert 'crusoe_vm_exporter_plugin_up{plugin="uptime"} 1.0' in body


def test_example_plugin_own_tests_pass(installed_example: None) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            capture_output=True, text=True, cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
