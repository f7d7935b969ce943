"""disk_stats: per-disk I/O counters from /proc/diskstats.

The owner of ``disk_reads_completed_total`` and ``disk_writes_completed_total``:
the kernel's own completion counters are exact and cost nothing to read, so
the eBPF disk_latency plugin does not export them (one series per device).
"""

from __future__ import annotations

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
GO_NAME_IN_MS = "the Go exporter's name in milliseconds, used as is by its dashboards"

METRICS: tuple[MetricSpec, ...] = (
    # The first four names and help texts are the seed's, kept for existing dashboards.
    MetricSpec("disk_reads_completed_total", "counter", "Total number of reads completed successfully", _DEVICE),
    MetricSpec("disk_read_time_ms_total", "counter", "Total time spent reading in milliseconds", _DEVICE,
               legacy_name=GO_NAME_IN_MS),
    MetricSpec("disk_writes_completed_total", "counter", "Total number of writes completed successfully", _DEVICE),
    MetricSpec("disk_write_time_ms_total", "counter", "Total time spent writing in milliseconds", _DEVICE,
               legacy_name=GO_NAME_IN_MS),
    MetricSpec("disk_reads_merged_total", "counter",
               "Total number of adjacent reads the block layer merged before issuing them", _DEVICE),
    MetricSpec("disk_writes_merged_total", "counter",
               "Total number of adjacent writes the block layer merged before issuing them", _DEVICE),
    MetricSpec("disk_stats_read_bytes_total", "counter",
               "Total bytes read, from /proc/diskstats (sectors x 512) at completion", _DEVICE),
    MetricSpec("disk_stats_written_bytes_total", "counter",
               "Total bytes written, from /proc/diskstats (sectors x 512) at completion", _DEVICE),
    MetricSpec("disk_io_now", "gauge", "Number of I/Os currently in flight on the device", _DEVICE),
    MetricSpec("disk_io_time_seconds_total", "counter",
               "Total time the device had at least one I/O in flight, in seconds (rate() = utilisation)", _DEVICE),
    MetricSpec("disk_io_time_weighted_seconds_total", "counter",
               "Total I/O time weighted by the number of I/Os in flight, in seconds (rate() = average queue size)",
               _DEVICE),
    MetricSpec("disk_discards_completed_total", "counter",
               "Total number of discards completed successfully (Linux 4.18 and later)", _DEVICE),
    MetricSpec("disk_discards_merged_total", "counter",
               "Total number of adjacent discards merged (Linux 4.18 and later)", _DEVICE),
    MetricSpec("disk_discarded_bytes_total", "counter",
               "Total bytes discarded (sectors x 512; Linux 4.18 and later)", _DEVICE),
    MetricSpec("disk_discard_time_seconds_total", "counter",
               "Total time spent discarding, in seconds (Linux 4.18 and later)", _DEVICE),
    MetricSpec("disk_flush_requests_total", "counter",
               "Total number of flush requests completed successfully (Linux 5.5 and later)", _DEVICE),
    MetricSpec("disk_flush_time_seconds_total", "counter",
               "Total time spent flushing, in seconds (Linux 5.5 and later)", _DEVICE),
    MetricSpec.errors("disk_stats_collection_errors_total", "Total number of errors during disk stats collection"),
)


def _check_support(ctx: PluginContext[DeviceOptions]) -> Support:
    path = ctx.host_proc / "diskstats"
    if not path.is_file():
        return Support.unsupported(
            f"{path} does not exist: no block-layer statistics here, or HOST_PROC_PATH points elsewhere"
        )
    return Support.ok(path=str(path))


def _factory(ctx: PluginContext[DeviceOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.disk_stats.collector import DiskStatsCollector

    return DiskStatsCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[DeviceOptions]:
    return PluginSpec(
        name="disk_stats",
        description="Per-disk I/O counters from /proc/diskstats (completions, time, merges, bytes, utilisation).",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=DeviceOptions,
    )
