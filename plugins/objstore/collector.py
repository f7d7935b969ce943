"""objstore collector: kernel counters per endpoint address -> endpoint series."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path

from crusoe_metrics_exporter.plugins._tcptrace.accumulate import Vector
from crusoe_metrics_exporter.plugins._tcptrace.addresses import normalize
from crusoe_metrics_exporter.plugins._tcptrace.collector import TcpTargetCollector
from crusoe_metrics_exporter.plugins._tcptrace.tracer import socket_slots
from crusoe_metrics_exporter.plugins.objstore import ObjstoreOptions
from crusoe_metrics_exporter.plugins.objstore.parser import BUCKETS, SLOTS, VECTOR_WIDTH, parse_stats_entry
from crusoe_metrics_exporter.sdk import HistogramValue, PluginContext, Sample

ERRORS = "objstore_collection_errors_total"
SOURCE = Path(__file__).with_name("objstore.c")


class ObjstoreCollector(TcpTargetCollector):
    bounds = BUCKETS
    width = VECTOR_WIDTH
    error_metric = ERRORS

    def __init__(self, ctx: PluginContext[ObjstoreOptions]) -> None:
        super().__init__(ctx)
        self.body = SOURCE.read_text()

    def wanted(self) -> tuple[dict[str, Hashable], tuple[int, ...]]:
        mapping: dict[str, Hashable] = {}
        ports: set[int] = set()
        for endpoint in self.targets.objstore_endpoints():
            try:
                address = normalize(endpoint.address)
            except ValueError:
                self.ctx.errors.inc(ERRORS)
                continue
            mapping[address] = address
            ports.update(endpoint.ports)
        if not ports:
            ports.update(self.targets.objstore_ports)
        return mapping, tuple(sorted(ports))

    def defines(self, capacity: int) -> dict[str, int]:
        return {
            "TT_SOCKETS": socket_slots(self.ctx.options.inflight_capacity),
            "OBJ_CLAMP_NS": int(self.ctx.options.latency_clamp * 1e9),
            "OBJ_BUCKETS": SLOTS,
        }

    def parse(self, key: bytes, value: bytes) -> tuple[str, Vector]:
        reading = parse_stats_entry(key, value)
        return reading.address, reading.vector

    def fallback_key(self, address: str) -> Hashable:
        return address

    def samples(self, totals: dict[Hashable, Vector]) -> Iterable[Sample]:
        for key, vector in sorted(totals.items(), key=lambda kv: str(kv[0])):
            labels = (str(key),)
            latency_ns, retransmits, sent, received = vector[:4]
            counts = tuple(vector[4:])
            yield Sample("objectstore_connection_latency_seconds", labels, latency_ns / 1e9)
            yield Sample("objectstore_connections_total", labels, float(sum(counts)))
            yield Sample("objectstore_tcp_retransmits_total", labels, float(retransmits))
            yield Sample("objectstore_bytes_sent_total", labels, float(sent))
            yield Sample("objectstore_bytes_recv_total", labels, float(received))
            yield Sample(
                "objectstore_connection_latency_histogram_seconds", labels, HistogramValue(counts, latency_ns / 1e9)
            )
