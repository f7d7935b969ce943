"""nfs_latency map parsing, volume labels and declarations (no kernel needed)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from crusoe_metrics_exporter.plugins import nfs_latency
from crusoe_metrics_exporter.plugins._tcptrace.addresses import address_key
from crusoe_metrics_exporter.plugins.nfs_latency.collector import NfsLatencyCollector
from crusoe_metrics_exporter.plugins.nfs_latency.parser import (
    BUCKETS,
    MAX_LISTED_VOLUMES,
    SLOTS,
    STATS_VALUE,
    parse_stats_entry,
    volume_label,
)
from crusoe_metrics_exporter.sdk import HistogramValue, NfsMount, NfsServer
from crusoe_metrics_exporter.testing import PluginHarness, StaticTargets, check_declaration


def test_buckets_are_the_seed_bounds_and_declared_once() -> None:
    assert tuple(round(500 * 100 ** (k / 19)) / 1e6 for k in range(20)) == BUCKETS
    spec = nfs_latency.crusoe_metrics_exporter_plugin()
    assert spec.metric("nfs_latency_histogram_seconds").buckets == BUCKETS
    check_declaration(spec)


def test_parse_stats_entry() -> None:
    counts = tuple(range(SLOTS))
    value = STATS_VALUE.pack(123_456_789, 7, *counts)
    reading = parse_stats_entry(address_key("192.0.2.9"), value)
    assert reading.address == "192.0.2.9"
    assert reading.latency_ns == 123_456_789 and reading.retransmits == 7 and reading.counts == counts
    assert parse_stats_entry(address_key("2001:db8::9"), value).address == "2001:db8::9"
    with pytest.raises(ValueError):
        parse_stats_entry(b"\x00" * 4, value)
    with pytest.raises(ValueError):
        parse_stats_entry(address_key("192.0.2.9"), value[:-8])


def test_volume_label() -> None:
    assert volume_label(["v1"]) == "v1"
    assert volume_label(["v2", "v1", "v2"]) == "v1+v2"
    assert volume_label([]) == "unknown"
    assert volume_label(["v1"], enabled=False) == "unknown"
    many = [f"v{i:02d}" for i in range(MAX_LISTED_VOLUMES + 1)]
    assert volume_label(many) == "shared"
    assert volume_label(many[:MAX_LISTED_VOLUMES]) == "+".join(many[:MAX_LISTED_VOLUMES])


class RecordedTracer:
    """Map contents as a malformed or foreign kernel could hand them over.

    The real kernel never returns entries of the wrong size, so this is the
    one place the collector is fed bytes by hand.
    """

    def __init__(self, entries: list[tuple[bytes, bytes]]) -> None:
        self.entries = entries

    def read_stats(self) -> list[tuple[bytes, bytes]]:
        return self.entries

    def new_clamped(self) -> int:
        return 2


def test_malformed_entries_are_counted_and_the_rest_reported() -> None:
    harness = PluginHarness(nfs_latency)
    collector = NfsLatencyCollector(harness.context)
    good = STATS_VALUE.pack(2_000_000, 1, *([0] * 7 + [1] + [0] * (SLOTS - 8)))
    tracer: Any = RecordedTracer([(address_key("192.0.2.1"), good), (b"\x01" * 3, good),
                                  (address_key("192.0.2.2"), b"short")])
    collector._tracer = tracer
    collector._key_of_address = {"192.0.2.1": ("tcp", "vol-1")}
    samples = {(s.metric, s.labels): s.value for s in collector.collect()}
    labels = ("tcp", "nfs", "vol-1")
    assert samples[("nfs_requests_total", labels)] == 1
    assert samples[("nfs_latency_seconds", labels)] == pytest.approx(0.002)
    assert samples[("nfs_tcp_retransmits_total", labels)] == 1
    hist = samples[("nfs_latency_histogram_seconds", labels)]
    assert isinstance(hist, HistogramValue) and hist.counts[7] == 1
    # two malformed entries; clamped samples are logged, not errors
    assert harness.error_total(nfs_latency.ERRORS) == 2


def test_a_mount_without_volume_id_is_not_credited_to_its_neighbour() -> None:
    """One server, a mount of /volumes/vol-a and a mount of /home: the shared traffic is not vol-a's alone."""
    servers = (
        NfsServer("192.0.2.1", 2, (2049,), volumes=("vol-a",)),
        NfsServer("192.0.2.2", 2, (2049,), volumes=("vol-b",)),
        NfsServer("192.0.2.3", 2, (2049,)),
    )
    mounts = (
        NfsMount("192.0.2.1:/volumes/vol-a", "/mnt/a", "192.0.2.1", ("192.0.2.1",), "vol-a"),
        NfsMount("192.0.2.1:/home", "/home", "192.0.2.1", ("192.0.2.1",), None),
        NfsMount("192.0.2.2:/volumes/vol-b", "/mnt/b", "192.0.2.2", ("192.0.2.2",), "vol-b"),
        NfsMount("192.0.2.3:/srv", "/srv", "192.0.2.3", ("192.0.2.3",), None),
    )
    targets = StaticTargets(nfs_server_list=servers, nfs_mount_list=mounts,
                            volume_pattern=re.compile(r"/volumes/(?P<volume_id>.+)$"))
    collector = NfsLatencyCollector(PluginHarness(nfs_latency, services={"targets": targets}).context)
    mapping, ports = collector.wanted()
    assert mapping == {
        "192.0.2.1": ("tcp", "vol-a+unknown"), "192.0.2.2": ("tcp", "vol-b"), "192.0.2.3": ("tcp", "unknown")
    }
    assert ports == (2049,)
    assert volume_label(["vol-a"], unidentified=True) == "vol-a+unknown"
    assert volume_label([], unidentified=True) == "unknown"
