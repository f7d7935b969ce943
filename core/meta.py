"""The exporter's own metrics, in the spirit of node_exporter's node_scrape_collector_*."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample as PromSample

from crusoe_metrics_exporter import __version__
from crusoe_metrics_exporter.host import PluginRecord
from crusoe_metrics_exporter.naming import PREFIX
from crusoe_metrics_exporter.runner import CollectResult

P = PREFIX + "exporter_"
STATES = ("starting", "active", "degraded", "unsupported", "disabled", "failed")

HELP = {
    "build_info": "Build information of crusoe-metrics-exporter; the value is always 1.",
    "plugin_up": "1 if the plugin's last collect succeeded; 0 if it failed, timed out or the plugin is not active.",
    "plugin_state": "1 for the plugin's current state (starting, active, degraded, unsupported, disabled, failed), "
    "0 for the others; degraded: its last collect had samples the exporter dropped.",
    "plugin_collect_duration_seconds": "Duration of the plugin's last collect.",
    "plugin_errors": "Errors per plugin and phase (load, validate, start, collect, timeout, invalid_sample, "
    "plugin_reported).",
    "plugin_invalid_samples": "Samples the exporter dropped because they do not match the plugin's declarations, "
    "per plugin and reason (the rule they broke; the log names the first of each kind).",
}


def _sample(name: str, labels: dict[str, str], value: float) -> PromSample:
    return PromSample(P + name, labels, value, None, None)


def meta_families(
    records: Iterable[PluginRecord], results: Mapping[str, CollectResult], wanted: set[str] | None
) -> list[Metric]:
    build = Metric(P + "build_info", HELP["build_info"], "gauge")
    build.samples.append(_sample("build_info", {"version": __version__,
                                                "python_version": platform.python_version()}, 1.0))
    up = Metric(P + "plugin_up", HELP["plugin_up"], "gauge")
    state = Metric(P + "plugin_state", HELP["plugin_state"], "gauge")
    duration = Metric(P + "plugin_collect_duration_seconds", HELP["plugin_collect_duration_seconds"], "gauge")
    errors = Metric(P + "plugin_errors", HELP["plugin_errors"], "counter")
    invalid = Metric(P + "plugin_invalid_samples", HELP["plugin_invalid_samples"], "counter")
    for rec in records:
        if wanted is not None and rec.name not in wanted:
            continue
        labels = {"plugin": rec.name}
        result = results.get(rec.name)
        ok = rec.state in ("active", "degraded") and result is not None and result.ok
        up.samples.append(_sample("plugin_up", labels, 1.0 if ok else 0.0))
        for s in STATES:
            state.samples.append(_sample("plugin_state", {**labels, "state": s}, 1.0 if rec.state == s else 0.0))
        if result is not None:
            duration.samples.append(_sample("plugin_collect_duration_seconds", labels, result.duration))
        phases = rec.errors.phase_totals() if rec.errors is not None else {}
        if rec.state == "failed" and rec.errors is None:
            phases = {rec.failed_phase or "load": 1}
        for phase, n in sorted(phases.items()):
            errors.samples.append(_sample("plugin_errors_total", {**labels, "phase": phase}, float(n)))
        if rec.errors is not None:
            for reason, n in sorted(rec.errors.invalid_totals().items()):
                invalid.samples.append(_sample("plugin_invalid_samples_total", {**labels, "reason": reason}, float(n)))
    families = [build, up, state, duration, errors]
    return [*families, invalid] if invalid.samples else families
