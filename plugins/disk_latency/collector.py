"""disk_latency collector: loads the programs at start, turns the kernel's per-disk map into samples."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from crusoe_metrics_exporter.contract import PluginContext, Sample
from crusoe_metrics_exporter.devices import DeviceFilter, device_names
from crusoe_metrics_exporter.ebpf import (
    EBPF_SERVICE,
    BpfSpec,
    BpfUnavailable,
    Kprobe,
    LoadedBpf,
    ProgramSpec,
    Tracepoint,
)
from crusoe_metrics_exporter.plugins.disk_latency.parser import (
    NBUCKETS,
    VALUE_SIZE,
    DiskStats,
    SideStats,
    bucket_search_c,
    decode_key,
    decode_value,
    encode_key,
)

ERRORS = "disk_collection_errors_total"
STATS_MAP = "disk_stats"
#: Distinct disks tracked in the kernel; a VM with more block devices than this
#: loses only the extra ones.
MAX_DEVICES = 1024
#: In-flight requests remembered between issue and completion (LRU); well above
#: the sum of queue depths of a VM's disks.
MAX_INFLIGHT = 16384
#: How often the device table (/proc/diskstats names) is re-read during
#: scrapes, so hot-plugged disks get their names and removed ones vanish.
TABLE_REFRESH_SECONDS = 5.0

_EMPTY_SIDE = SideStats(0, 0, 0, (0,) * NBUCKETS)


def bpf_spec() -> BpfSpec:
    """The eBPF object: tracepoints first, kprobes where the tracepoints are missing."""
    source = resources.files(__package__).joinpath("disk_latency.c").read_text()
    source = source.replace("/*@BUCKET_FUNCTION@*/", bucket_search_c())
    return BpfSpec(
        name="disk_latency",
        source=source,
        cflags=(
            f"-DCME_NBUCKETS={NBUCKETS}",
            f"-DCME_MAX_DEVICES={MAX_DEVICES}",
            f"-DCME_MAX_INFLIGHT={MAX_INFLIGHT}",
        ),
        programs=(
            ProgramSpec(
                "issue",
                (
                    Tracepoint("block", "block_rq_issue", "tracepoint__block__block_rq_issue"),
                    Kprobe("blk_mq_start_request", "kprobe_blk_mq_start_request"),
                ),
            ),
            ProgramSpec(
                "complete",
                (
                    Tracepoint("block", "block_rq_complete", "tracepoint__block__block_rq_complete"),
                    Kprobe("blk_mq_end_request", "kprobe_blk_mq_end_request"),
                ),
            ),
        ),
    )


class DiskLatencyCollector:
    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.filter = DeviceFilter.from_options(ctx.options)
        self.loaded: LoadedBpf | None = None
        self._names: dict[tuple[int, int], str] = {}
        self._names_at = 0.0
        self.table_refresh_seconds = TABLE_REFRESH_SECONDS
        self._lock = threading.Lock()

    def start(self) -> None:
        service = self.ctx.services.get(EBPF_SERVICE)
        state_dir = self.ctx.options.get("ebpf_state_dir")
        try:
            self.loaded = service.load(
                self.ctx.plugin,
                bpf_spec(),
                mount_tracefs=bool(self.ctx.options.get("ebpf_mount_tracefs", True)),
                state_dir=Path(str(state_dir)) if state_dir else None,
            )
        except BpfUnavailable as exc:
            # One line for the plugin's state; the host turns this into "failed".
            raise RuntimeError(str(exc)) from None
        stats_map = self.loaded.map(STATS_MAP)
        if stats_map.value_size != VALUE_SIZE:
            raise RuntimeError(f"map {STATS_MAP} holds {stats_map.value_size}-byte values, expected {VALUE_SIZE}")
        self.ctx.details.update(self.loaded.details())
        self._refresh_names()

    def _refresh_names(self) -> None:
        self._names = device_names(self.ctx.host_proc)
        self._names_at = time.monotonic()

    def collect(self) -> Iterable[Sample]:
        if self.loaded is None:
            return []
        stats_map = self.loaded.map(STATS_MAP)
        try:
            entries = stats_map.items()
        except OSError:
            self.ctx.errors.inc(ERRORS)
            self.ctx.log.warning("reading the %s map failed", STATS_MAP, exc_info=True)
            return []
        with self._lock:
            decoded: dict[tuple[int, int], DiskStats] = {}
            for key, value in entries:
                try:
                    decoded[decode_key(key)] = decode_value(value)
                except ValueError:
                    self.ctx.errors.inc(ERRORS)
            if time.monotonic() - self._names_at >= self.table_refresh_seconds:
                self._refresh_names()
                self._forget_vanished([dev for dev in decoded if dev not in self._names])
            samples: list[Sample] = []
            # Every selected disk gets series from the first scrape on, so
            # rate() works from its first I/O rather than its second.
            for dev, name in sorted(self._names.items(), key=lambda item: item[1]):
                if not self.filter.matches(name):
                    continue
                stats = decoded.get(dev)
                samples += _samples(name, stats.read if stats else _EMPTY_SIDE, stats.write if stats else _EMPTY_SIDE)
        return samples

    def _forget_vanished(self, devices: list[tuple[int, int]]) -> None:
        """Drop kernel entries of disks missing from a freshly read device table (hot-unplug).

        A later disk reusing the major:minor must start from zero rather than
        inherit a removed disk's counters under a new name. Only called right
        after a refresh, so a disk that just appeared is never mistaken for one
        that left; I/O still completing on a removed disk may recreate its
        entry, which the next refresh drops again.
        """
        if not self._names or self.loaded is None:
            return
        stats_map = self.loaded.map(STATS_MAP)
        for dev in devices:
            try:
                stats_map.delete(encode_key(*dev))
            except OSError:
                self.ctx.errors.inc(ERRORS)

    def stop(self) -> None:
        if self.loaded is None:
            return
        service = self.ctx.services.get(EBPF_SERVICE)
        service.release(self.ctx.plugin, self.loaded)
        self.loaded = None


def _samples(device: str, read: SideStats, write: SideStats) -> list[Sample]:
    labels = (device,)
    return [
        Sample("disk_read_bytes_total", labels, float(read.bytes)),
        Sample("disk_write_bytes_total", labels, float(write.bytes)),
        Sample("disk_read_latency_seconds_total", labels, read.latency_ns / 1e9),
        Sample("disk_write_latency_seconds_total", labels, write.latency_ns / 1e9),
        Sample("disk_read_latency_seconds", labels, read.histogram()),
        Sample("disk_write_latency_seconds", labels, write.histogram()),
        Sample("disk_read_errors_total", labels, float(read.errors)),
        Sample("disk_write_errors_total", labels, float(write.errors)),
    ]
