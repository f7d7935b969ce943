"""The monitoring mixin's rules: promtool accepts them and every alert has a promtool unit test.

The live half (a real Prometheus scraping a real exporter; every recording
rule and dashboard query returns data) is test_mixin_live.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.deploy

MIXIN = Path(__file__).resolve().parents[2] / "deploy" / "mixin"
RULE_FILES = [MIXIN / "alerts.yaml", MIXIN / "recording.yaml"]
UNIT_TESTS = MIXIN / "tests" / "alerts_test.yaml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("!!! DEPLOY TEST SKIPPED: promtool (Debian's prometheus) is not installed !!!")
    return path


def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    proc = subprocess.run([promtool(), "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True,
                          cwd=UNIT_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    alerts = {r["alert"] for g in yaml.safe_load((MIXIN / "alerts.yaml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - tested == set(), f"alerts without a firing unit test: {sorted(alerts - tested)}"
    assert len(alerts) >= 14


def test_unsupported_alert_does_not_use_plugin_up() -> None:
    """plugin_up is 0 for unsupported and disabled plugins too (deploy-trial pitfall)."""
    for group in yaml.safe_load((MIXIN / "alerts.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            assert "plugin_up" not in rule["expr"], rule["alert"]


def test_generated_files_are_current() -> None:
    proc = subprocess.run([sys.executable, str(MIXIN / "build.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    dashboard = json.loads((MIXIN / "dashboards" / "crusoe-metrics-exporter.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"instance", "device", "volume", "endpoint"} <= variables
