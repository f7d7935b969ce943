"""nfs_latency collector: kernel counters per NFS server address -> volume_id series."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path

from crusoe_metrics_exporter.plugins._tcptrace.accumulate import Vector
from crusoe_metrics_exporter.plugins._tcptrace.addresses import normalize
from crusoe_metrics_exporter.plugins._tcptrace.collector import TcpTargetCollector
from crusoe_metrics_exporter.plugins.nfs_latency import NfsLatencyOptions
from crusoe_metrics_exporter.plugins.nfs_latency.parser import (
    BUCKETS,
    SLOTS,
    UNKNOWN_VOLUME,
    VECTOR_WIDTH,
    parse_stats_entry,
    volume_label,
)
from crusoe_metrics_exporter.sdk import HistogramValue, PluginContext, Sample

PROTOCOL = "tcp"
#: The TCP layer cannot see the NFS operation; every series covers all of them.
OPERATION = "nfs"
ERRORS = "nfs_latency_collection_errors_total"
SOURCE = Path(__file__).with_name("nfs_latency.c")


class NfsLatencyCollector(TcpTargetCollector):
    bounds = BUCKETS
    width = VECTOR_WIDTH
    error_metric = ERRORS

    def __init__(self, ctx: PluginContext[NfsLatencyOptions]) -> None:
        super().__init__(ctx)
        self.body = SOURCE.read_text()

    def wanted(self) -> tuple[dict[str, Hashable], tuple[int, ...]]:
        enabled = self.targets.volume_pattern is not None
        mapping: dict[str, Hashable] = {}
        ports: set[int] = set()
        # Addresses also used by a mount without a volume id: their traffic
        # is not the named volumes' alone.
        unidentified: set[str] = set()
        for mount in self.targets.nfs_mounts():
            if mount.volume_id:
                continue
            for text in mount.addresses:
                try:
                    unidentified.add(normalize(text))
                except ValueError:
                    continue
        for server in self.targets.nfs_servers():
            try:
                address = normalize(server.address)
            except ValueError:
                self.ctx.errors.inc(ERRORS)
                continue
            mapping[address] = volume_label(server.volumes, enabled, address in unidentified)
            ports.update(server.ports)
        if not ports:
            ports.update(self.targets.nfs_ports)
        return mapping, tuple(sorted(ports))

    def defines(self, capacity: int) -> dict[str, int]:
        return {
            "NFS_MAX_INFLIGHT": self.ctx.options.inflight_capacity,
            "NFS_CLAMP_NS": int(self.ctx.options.latency_clamp * 1e9),
            "NFS_BUCKETS": SLOTS,
        }

    def parse(self, key: bytes, value: bytes) -> tuple[str, Vector]:
        reading = parse_stats_entry(key, value)
        return reading.address, reading.vector

    def fallback_key(self, address: str) -> Hashable:
        return UNKNOWN_VOLUME

    def samples(self, totals: dict[Hashable, Vector]) -> Iterable[Sample]:
        for key, vector in sorted(totals.items(), key=lambda kv: str(kv[0])):
            labels = (PROTOCOL, OPERATION, str(key))
            latency_ns, retransmits, counts = vector[0], vector[1], tuple(vector[2:])
            yield Sample("nfs_latency_seconds", labels, latency_ns / 1e9)
            yield Sample("nfs_requests_total", labels, float(sum(counts)))
            yield Sample("nfs_tcp_retransmits_total", labels, float(retransmits))
            yield Sample("nfs_latency_histogram_seconds", labels, HistogramValue(counts, latency_ns / 1e9))
