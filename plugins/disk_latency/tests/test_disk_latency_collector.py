"""The collector's map handling against damaged map contents.

The kernel enforces the map's value size, so a value of the wrong length
cannot come from a real map; the collector still has to survive one (a
future layout mismatch). These tests use a small in-memory stand-in for the
two maps, the only place in the plugin's tests where the real kernel is not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.bpf_standins import MapStandIn

from crusoe_metrics_exporter.plugins import disk_latency
from crusoe_metrics_exporter.plugins.disk_latency.collector import OTHER_MAP, SLOTS_MAP, DiskLatencyCollector
from crusoe_metrics_exporter.plugins.disk_latency.parser import (
    DEVICE_SLOTS,
    NBUCKETS,
    DiskStats,
    SideStats,
    decode_value,
    dev_t,
    empty_stats,
    encode_key,
    encode_slot_index,
    encode_value,
)
from crusoe_metrics_exporter.sdk import HistogramValue
from crusoe_metrics_exporter.testing import ErrorCounters, PluginHarness

DATA = Path(__file__).parent / "data"


class LoadedStandIn:
    def __init__(self) -> None:
        slots = {encode_slot_index(i): encode_value(empty_stats()) for i in range(DEVICE_SLOTS)}
        self.maps = {SLOTS_MAP: MapStandIn(slots), OTHER_MAP: MapStandIn()}

    def map(self, name: str) -> MapStandIn:
        return self.maps[name]


def _collector(tmp_path: Path) -> tuple[DiskLatencyCollector, ErrorCounters, LoadedStandIn]:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "diskstats").write_text((DATA / "diskstats_two_virtio_disks.txt").read_text())
    harness = PluginHarness(disk_latency, host_proc=proc)
    errors = harness.errors
    collector = DiskLatencyCollector(harness.context)
    loaded = LoadedStandIn()
    collector.loaded = loaded  # type: ignore[assignment]
    collector.refresh()  # what start() and the refresh thread do; collect() never reads the table
    return collector, errors, loaded


def _side(count_bucket: int, n: int) -> SideStats:
    buckets = [0] * NBUCKETS
    buckets[count_bucket] = n
    return SideStats(n * 4096, n * 50_000, 0, n // 4, tuple(buckets))


def test_reported_disks_get_slots_and_other_disks_go_through_the_hash(tmp_path: Path) -> None:
    collector, errors, loaded = _collector(tmp_path)
    owners = {decode_value(v).owner for v in loaded.maps[SLOTS_MAP].entries.values()}
    assert owners == {0, dev_t(252, 0), dev_t(252, 16)}  # not loop0, not the partition

    vda = dev_t(252, 0)
    slot = next(k for k, v in loaded.maps[SLOTS_MAP].entries.items() if decode_value(v).owner == vda)
    loaded.maps[SLOTS_MAP].update(slot, encode_value(DiskStats(vda, _side(5, 10), _side(20, 2))))
    # The same disk also has counts in the hash (from before it owned a slot): they add up.
    loaded.maps[OTHER_MAP].update(encode_key(252, 0), encode_value(DiskStats(vda, _side(5, 1), _side(0, 0))))
    samples = {(s.metric, s.labels[0]): s.value for s in collector.collect()}
    read = samples[("disk_read_latency_seconds", "vda")]
    assert isinstance(read, HistogramValue) and sum(read.counts) == 11 and read.counts[5] == 11
    write = samples[("disk_write_latency_seconds", "vda")]
    assert isinstance(write, HistogramValue) and write.counts[-1] == 2  # overflow: +Inf only
    assert samples[("disk_read_bytes_total", "vda")] == 11 * 4096
    # vdb had no I/O yet and is still reported, with zeros.
    assert samples[("disk_write_bytes_total", "vdb")] == 0.0
    assert {dev for _, dev in samples} == {"vda", "vdb"}
    assert errors.metric_totals()["disk_collection_errors_total"] == 0


def test_damaged_entries_are_counted_and_skipped(tmp_path: Path) -> None:
    collector, errors, loaded = _collector(tmp_path)
    loaded.maps[OTHER_MAP].update(encode_key(252, 16), b"\x01" * 17)  # wrong size
    loaded.maps[OTHER_MAP].update(b"\x00" * 3, encode_value(empty_stats()))  # wrong key size
    vda = dev_t(252, 0)
    slot = next(k for k, v in loaded.maps[SLOTS_MAP].entries.items() if decode_value(v).owner == vda)
    loaded.maps[SLOTS_MAP].update(slot, encode_value(DiskStats(vda, _side(3, 4), _side(3, 0))))
    samples: dict[Any, Any] = {(s.metric, s.labels[0]): s.value for s in collector.collect()}
    assert errors.metric_totals()["disk_collection_errors_total"] == 2
    assert sum(samples[("disk_read_latency_seconds", "vda")].counts) == 4
    assert ("disk_read_bytes_total", "vdb") in samples


def test_unreadable_map_counts_an_error_and_reports_nothing(tmp_path: Path) -> None:
    collector, errors, loaded = _collector(tmp_path)

    def broken() -> list[tuple[bytes, bytes]]:
        raise OSError(9, "Bad file descriptor")

    loaded.maps[OTHER_MAP].items = broken  # type: ignore[method-assign]
    assert list(collector.collect()) == []
    assert errors.metric_totals()["disk_collection_errors_total"] == 1
