"""The hooks a plugin distribution implements.

A plugin is a module named by an entry point in the ``crusoe_metrics_exporter``
group. It implements :meth:`ExporterHooks.crusoe_metrics_exporter_plugin` and
returns its :class:`~crusoe_metrics_exporter.contract.PluginSpec`::

    from crusoe_metrics_exporter.sdk import PluginSpec, hookimpl

    @hookimpl
    def crusoe_metrics_exporter_plugin():
        return PluginSpec(name="uptime", ...)
"""

from __future__ import annotations

import pluggy

from crusoe_metrics_exporter.contract import PluginSpec

PROJECT = "crusoe_metrics_exporter"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ExporterHooks:
    @hookspec
    def crusoe_metrics_exporter_plugin(self) -> PluginSpec:  # type: ignore[empty-body]
        """Declare the plugin: its name, metrics, options, support check and collector factory."""
