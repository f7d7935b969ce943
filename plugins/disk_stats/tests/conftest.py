"""Fixtures for the disk_stats tests: the plugin's context over a chosen /proc root, from the testing kit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from crusoe_metrics_exporter.plugins import disk_stats
from crusoe_metrics_exporter.sdk import DeviceOptions, PluginContext
from crusoe_metrics_exporter.testing import PluginHarness

DATA = Path(__file__).parent / "data"

ContextFactory = Callable[..., PluginContext[DeviceOptions]]


@pytest.fixture
def make_ctx(plugin_harness: Callable[..., PluginHarness]) -> ContextFactory:
    """``make_ctx(host_proc, options)``: the context the exporter would hand disk_stats."""

    def build(host_proc: Path, options: Mapping[str, Any] | None = None) -> PluginContext[DeviceOptions]:
        return plugin_harness(disk_stats, host_proc=host_proc, options=options).context

    return build


@pytest.fixture
def data_dir() -> Path:
    return DATA
