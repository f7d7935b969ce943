"""The plugin through the exporter's testing kit (a pytest plugin that comes with the exporter)."""

from collections.abc import Callable, Mapping
from pathlib import Path

import crusoe_exporter_uptime as uptime

from crusoe_metrics_exporter.testing import PluginHarness, check_declaration


def test_declaration() -> None:
    check_declaration(uptime)


def test_collects_and_counts_a_damaged_file(proc_tree: Callable[[Mapping[str, str]], Path]) -> None:
    proc = proc_tree({"uptime": "350735.47 234388.90\n"})
    with PluginHarness(uptime, host_proc=proc) as harness:
        assert harness.value("uptime_seconds") == 350735.47
        (proc / "uptime").write_text("garbage\n")
        assert harness.value("uptime_seconds") is None
        assert harness.error_total() == 1
