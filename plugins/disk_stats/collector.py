"""disk_stats collector: /proc/diskstats counters of the selected disks."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from crusoe_metrics_exporter.plugins.disk_stats import parser
from crusoe_metrics_exporter.sdk import DEFAULT_READ_LIMIT, DeviceOptions, PluginContext, Sample, read_limited

ERRORS_METRIC = "disk_stats_collection_errors_total"


class CounterMetric(NamedTuple):
    metric: str
    position: int
    #: Multiplier from the kernel's unit to the metric's (ms -> s, sectors -> bytes).
    scale: float


_MS = 0.001
#: The kernel counts diskstats sectors in 512-byte units whatever the device's block size.
_SECTOR = 512.0

#: Emission order; metrics whose position a record lacks (older kernels) are skipped.
COUNTER_METRICS: tuple[CounterMetric, ...] = (
    CounterMetric("disk_reads_completed_total", parser.READS_COMPLETED, 1.0),
    CounterMetric("disk_reads_merged_total", parser.READS_MERGED, 1.0),
    CounterMetric("disk_stats_read_bytes_total", parser.SECTORS_READ, _SECTOR),
    CounterMetric("disk_read_time_ms_total", parser.READ_TIME_MS, 1.0),
    CounterMetric("disk_writes_completed_total", parser.WRITES_COMPLETED, 1.0),
    CounterMetric("disk_writes_merged_total", parser.WRITES_MERGED, 1.0),
    CounterMetric("disk_stats_written_bytes_total", parser.SECTORS_WRITTEN, _SECTOR),
    CounterMetric("disk_write_time_ms_total", parser.WRITE_TIME_MS, 1.0),
    CounterMetric("disk_io_now", parser.IOS_IN_PROGRESS, 1.0),
    CounterMetric("disk_io_time_seconds_total", parser.IO_TIME_MS, _MS),
    CounterMetric("disk_io_time_weighted_seconds_total", parser.WEIGHTED_IO_TIME_MS, _MS),
    CounterMetric("disk_discards_completed_total", parser.DISCARDS_COMPLETED, 1.0),
    CounterMetric("disk_discards_merged_total", parser.DISCARDS_MERGED, 1.0),
    CounterMetric("disk_discarded_bytes_total", parser.SECTORS_DISCARDED, _SECTOR),
    CounterMetric("disk_discard_time_seconds_total", parser.DISCARD_TIME_MS, _MS),
    CounterMetric("disk_flush_requests_total", parser.FLUSHES_COMPLETED, 1.0),
    CounterMetric("disk_flush_time_seconds_total", parser.FLUSH_TIME_MS, _MS),
)


def diskstats_path(ctx: PluginContext[DeviceOptions]) -> Path:
    return ctx.host_proc / "diskstats"


class DiskStatsCollector:
    def __init__(self, ctx: PluginContext[DeviceOptions], read_limit: int = DEFAULT_READ_LIMIT) -> None:
        self._ctx = ctx
        self._path = diskstats_path(ctx)
        self._filter = ctx.options.device_filter()
        self._read_limit = read_limit
        # A persistent problem is logged as a warning once, not on every scrape.
        self._reported_problem = ""

    def start(self) -> None:
        self._ctx.details["path"] = str(self._path)
        self._ctx.details["devices"] = repr(self._filter)

    def collect(self) -> list[Sample]:
        try:
            content = read_limited(self._path, self._read_limit)
        except OSError as exc:
            self._ctx.errors.inc(ERRORS_METRIC)
            self._report(f"cannot read {self._path}: {exc.strerror or exc}")
            return []
        if content.truncated:
            self._ctx.errors.inc(ERRORS_METRIC)
            self._report(f"{self._path} is larger than {self._read_limit} bytes; only its beginning was read")
        else:
            self._report("")
        result = parser.parse_diskstats(content.data, self._filter.matches)
        if result.errors:
            self._ctx.errors.inc(ERRORS_METRIC, result.errors)
            self._ctx.log.debug("%s: %d malformed lines skipped (%s)", self._path, result.errors,
                                "; ".join(result.problems))
        samples: list[Sample] = []
        append = samples.append
        for record in result.records:
            labels = (record.name,)
            counters = record.counters
            available = len(counters)
            for metric, position, scale in COUNTER_METRICS:
                if position < available:
                    append(Sample(metric, labels, counters[position] * scale))
        return samples

    def _report(self, problem: str) -> None:
        if problem and problem != self._reported_problem:
            self._ctx.log.warning("%s", problem)
        elif not problem and self._reported_problem:
            self._ctx.log.info("%s is readable again", self._path)
        self._reported_problem = problem

    def stop(self) -> None:
        pass
