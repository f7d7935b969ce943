"""disk_latency: per-disk block I/O latency histograms, bytes and errors from eBPF.

Importing this module is cheap: bcc is never imported by the exporter, and
the collector (with the eBPF runtime) is only imported when the plugin starts.
"""

from __future__ import annotations

from crusoe_metrics_exporter.plugins.disk_latency.parser import BOUNDS_SECONDS
from crusoe_metrics_exporter.sdk import (
    Collector,
    DeviceOptions,
    MetricSpec,
    PluginContext,
    PluginSpec,
    Support,
    hookimpl,
)

_DEVICE = ("device",)

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("disk_read_bytes_total", "counter", "Total bytes read from disk", _DEVICE),
    MetricSpec("disk_write_bytes_total", "counter", "Total bytes written to disk", _DEVICE),
    MetricSpec(
        "disk_read_latency_seconds_total", "counter", "Total time spent reading from disk in seconds", _DEVICE
    ),
    MetricSpec(
        "disk_write_latency_seconds_total", "counter", "Total time spent writing to disk in seconds", _DEVICE
    ),
    MetricSpec(
        "disk_read_latency_seconds",
        "histogram",
        "Histogram of disk read latency in seconds",
        _DEVICE,
        buckets=BOUNDS_SECONDS,
    ),
    MetricSpec(
        "disk_write_latency_seconds",
        "histogram",
        "Histogram of disk write latency in seconds",
        _DEVICE,
        buckets=BOUNDS_SECONDS,
    ),
    MetricSpec("disk_read_errors_total", "counter", "Total number of disk read errors", _DEVICE),
    MetricSpec("disk_write_errors_total", "counter", "Total number of disk write errors", _DEVICE),
    MetricSpec(
        "disk_read_untimed_completions_total",
        "counter",
        "Reads the disk completed whose issue was not seen, so they have no latency; the read latency "
        "histogram's _count plus this equals /proc/diskstats reads completed",
        _DEVICE,
    ),
    MetricSpec(
        "disk_write_untimed_completions_total",
        "counter",
        "Writes completed without an issue to time them from (the empty pre-flush write of an fsync); the "
        "write latency histogram's _count plus this equals /proc/diskstats writes completed",
        _DEVICE,
    ),
    MetricSpec.errors("disk_collection_errors_total", "Total number of errors during disk stats collection"),
)


def _check_support(ctx: PluginContext[DeviceOptions]) -> Support:
    from crusoe_metrics_exporter.plugins.disk_latency.collector import bpf_spec

    return ctx.ebpf.support(bpf_spec())


def _factory(ctx: PluginContext[DeviceOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.disk_latency.collector import DiskLatencyCollector

    return DiskLatencyCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[DeviceOptions]:
    return PluginSpec(
        name="disk_latency",
        description="Per-disk block I/O latency (first issue to completion), bytes and errors, traced with eBPF",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=DeviceOptions,
    )
