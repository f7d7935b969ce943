"""The exporter's own metrics, in the spirit of node_exporter's node_scrape_collector_*.

Declared as MetricSpecs and validated and rendered like every plugin's.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping

from crusoe_metrics_exporter import __version__
from crusoe_metrics_exporter.contract import MetricSpec, Sample
from crusoe_metrics_exporter.host import PluginRecord
from crusoe_metrics_exporter.runner import CollectResult

STATES = ("starting", "active", "degraded", "unsupported", "disabled", "failed")

BUILD_INFO = MetricSpec("exporter_build_info", "gauge",
                        "Build information of crusoe-metrics-exporter; the value is always 1.",
                        ("version", "python_version"))
PLUGIN_UP = MetricSpec("exporter_plugin_up", "gauge",
                       "1 if the plugin's last collect succeeded; 0 if it failed, timed out or the plugin is not "
                       "active.", ("plugin",))
PLUGIN_STATE = MetricSpec("exporter_plugin_state", "gauge",
                          "1 for the plugin's current state (starting, active, degraded, unsupported, disabled, "
                          "failed), 0 for the others; degraded: its last collect had samples the exporter dropped.",
                          ("plugin", "state"))
PLUGIN_COLLECT_DURATION = MetricSpec("exporter_plugin_collect_duration_seconds", "gauge",
                                     "Duration of the plugin's last collect.", ("plugin",))
PLUGIN_ERRORS = MetricSpec("exporter_plugin_errors_total", "counter",
                           "Errors per plugin and phase (load, validate, start, collect, timeout, invalid_sample, "
                           "plugin_reported).", ("plugin", "phase"))
PLUGIN_INVALID_SAMPLES = MetricSpec("exporter_plugin_invalid_samples_total", "counter",
                                    "Samples the exporter dropped because they do not match the plugin's "
                                    "declarations, per plugin and reason (the rule they broke; the log names the "
                                    "first of each kind).", ("plugin", "reason"))

META_METRICS: tuple[MetricSpec, ...] = (BUILD_INFO, PLUGIN_UP, PLUGIN_STATE, PLUGIN_COLLECT_DURATION, PLUGIN_ERRORS,
                                        PLUGIN_INVALID_SAMPLES)


def meta_samples(
    records: Iterable[PluginRecord], results: Mapping[str, CollectResult], wanted: set[str] | None
) -> Iterator[Sample]:
    """The exporter's own samples for one scrape (validated by the caller against META_METRICS)."""
    yield Sample(BUILD_INFO.name, (__version__, platform.python_version()), 1.0)
    for rec in records:
        if wanted is not None and rec.name not in wanted:
            continue
        plugin = (rec.name,)
        result = results.get(rec.name)
        ok = rec.state in ("active", "degraded") and result is not None and result.ok
        yield Sample(PLUGIN_UP.name, plugin, 1.0 if ok else 0.0)
        for state in STATES:
            yield Sample(PLUGIN_STATE.name, (rec.name, state), 1.0 if rec.state == state else 0.0)
        if result is not None:
            yield Sample(PLUGIN_COLLECT_DURATION.name, plugin, result.duration)
        phases = rec.errors.phase_totals() if rec.errors is not None else {}
        if rec.state == "failed" and rec.errors is None:
            phases = {rec.failed_phase or "load": 1}
        for phase, n in sorted(phases.items()):
            yield Sample(PLUGIN_ERRORS.name, (rec.name, phase), float(n))
        if rec.errors is not None:
            for reason, n in sorted(rec.errors.invalid_totals().items()):
                yield Sample(PLUGIN_INVALID_SAMPLES.name, (rec.name, reason), float(n))
