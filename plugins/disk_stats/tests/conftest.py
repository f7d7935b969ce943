"""Helpers for the disk_stats tests: a real PluginContext over a chosen /proc root."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from crusoe_metrics_exporter.contract import PluginContext
from crusoe_metrics_exporter.errors import ErrorCounters
from crusoe_metrics_exporter.settings import Settings

DATA = Path(__file__).parent / "data"

ContextFactory = Callable[..., PluginContext]


@pytest.fixture
def make_ctx() -> ContextFactory:
    def build(host_proc: Path, options: Mapping[str, Any] | None = None) -> PluginContext:
        settings = Settings(core={"host_proc_path": str(host_proc), "collect_timeout": 5.0}, targets={}, plugins={})
        return PluginContext(
            plugin="disk_stats",
            options=dict(options or {}),
            settings=settings,
            errors=ErrorCounters("disk_stats", ("disk_stats_collection_errors_total",)),
            log=logging.getLogger("test.disk_stats"),
        )

    return build


@pytest.fixture
def data_dir() -> Path:
    return DATA
