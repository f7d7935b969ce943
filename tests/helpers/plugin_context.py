"""A real PluginContext for driving one plugin's collector directly (fast, no discovery)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter.contract import PluginContext, PluginSpec
from crusoe_metrics_exporter.errors import ErrorCounters
from crusoe_metrics_exporter.settings import Overrides, resolve


def plugin_context(spec: PluginSpec, host_proc: Path, options: Mapping[str, Any] | None = None,
                   environ: Mapping[str, str] | None = None) -> PluginContext:
    """The context the core would build for ``spec`` with HOST_PROC_PATH=``host_proc``.

    ``options`` are given as text, the way an environment variable or --set
    spells them, and go through the same parsing and checks.
    """
    overrides = {f"plugins.{spec.name}.{k}": str(v) for k, v in (options or {}).items()}
    settings, _ = resolve({spec.name: spec.options}, environ={"HOST_PROC_PATH": str(host_proc), **(environ or {})},
                          overrides=Overrides(overrides))
    return PluginContext(
        plugin=spec.name,
        options=settings.plugin(spec.name),
        settings=settings,
        errors=ErrorCounters(spec.name, tuple(m.name for m in spec.metrics if m.error_counter)),
        log=logging.getLogger(f"test.{spec.name}"),
    )
