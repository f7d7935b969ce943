"""crusoe-metrics-exporter: a plugin-based Prometheus exporter for cloud VMs."""

from crusoe_metrics_exporter.contract import (
    Collector,
    ConfigOption,
    HistogramValue,
    MetricSpec,
    PluginContext,
    PluginSpec,
    Sample,
    Support,
)
from crusoe_metrics_exporter.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Collector",
    "ConfigOption",
    "HistogramValue",
    "MetricSpec",
    "PluginContext",
    "PluginSpec",
    "Sample",
    "Support",
    "__version__",
    "hookimpl",
]
