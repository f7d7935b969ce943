"""The hooks an extension distribution implements.

A plugin is a module named by an entry point in the ``crusoe_metrics_exporter``
group. It implements :meth:`ExporterHooks.crusoe_metrics_exporter_plugin` and
returns its :class:`~crusoe_metrics_exporter.contract.PluginSpec`::

    from crusoe_metrics_exporter.sdk import PluginSpec, hookimpl

    @hookimpl
    def crusoe_metrics_exporter_plugin():
        return PluginSpec(name="uptime", ...)

A shared service (target discovery, the eBPF runtime, or a third party's)
is a module named by an entry point in the ``crusoe_metrics_exporter.services``
group implementing :meth:`ExporterHooks.crusoe_metrics_exporter_service`.
"""

from __future__ import annotations

from typing import Any

import pluggy

from crusoe_metrics_exporter.contract import PluginSpec, ServiceSpec

PROJECT = "crusoe_metrics_exporter"
PLUGIN_GROUP = PROJECT
SERVICE_GROUP = f"{PROJECT}.services"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ExporterHooks:
    @hookspec
    def crusoe_metrics_exporter_plugin(self) -> PluginSpec[Any]:  # type: ignore[empty-body]
        """Declare the plugin: its name, metrics, options, support check and collector factory."""

    @hookspec
    def crusoe_metrics_exporter_service(self) -> ServiceSpec[Any]:  # type: ignore[empty-body]
        """Declare a shared service: its name, options, factory and metrics."""
