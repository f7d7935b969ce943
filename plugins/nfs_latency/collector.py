"""nfs_latency collector: TCP-level counters per NFS server address, per-RPC figures per mount.

Two kernel sources feed one plugin:

* the TCP program (``nfs_latency.c`` on the shared ``_tcptrace`` filter):
  retransmissions per server address always, and request latency per
  send/receive alternation until the RPC layer can be traced;
* the RPC-layer program (``rpc_latency.c``, :mod:`.rpc_source`): per RPC,
  per mount and per procedure, from sunrpc's tracepoints. Once it is
  attached, the Go exporter's latency families (``nfs_latency_seconds``,
  ``nfs_requests_total``, ``nfs_latency_histogram_seconds``) count one per
  RPC (its round trip) per mount, and the TCP program stops timing.

Both fold into one set of monotonic label totals, keyed ``(protocol,
volume_id)``, so a series that switches source keeps counting up.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path

from crusoe_metrics_exporter.plugins._tcptrace.accumulate import Vector
from crusoe_metrics_exporter.plugins._tcptrace.addresses import normalize
from crusoe_metrics_exporter.plugins._tcptrace.collector import TcpTargetCollector
from crusoe_metrics_exporter.plugins._tcptrace.tracer import socket_slots
from crusoe_metrics_exporter.plugins.nfs_latency import ALL_OPERATIONS, NfsLatencyOptions
from crusoe_metrics_exporter.plugins.nfs_latency.parser import (
    BUCKETS,
    SLOTS,
    UNKNOWN_VOLUME,
    VECTOR_WIDTH,
    parse_stats_entry,
    volume_label,
)
from crusoe_metrics_exporter.plugins.nfs_latency.rpc_source import RpcSource
from crusoe_metrics_exporter.sdk import HistogramValue, PluginContext, Sample

PROTOCOL = "tcp"
#: The Go exporter's families carry every operation of a volume in one series.
OPERATION = "nfs"
ERRORS = "nfs_latency_collection_errors_total"
SOURCE = Path(__file__).with_name("nfs_latency.c")


class NfsLatencyCollector(TcpTargetCollector):
    bounds = BUCKETS
    width = VECTOR_WIDTH
    error_metric = ERRORS

    def __init__(self, ctx: PluginContext[NfsLatencyOptions]) -> None:
        super().__init__(ctx)
        self.ctx: PluginContext[NfsLatencyOptions] = ctx
        self.body = SOURCE.read_text()
        #: Label keys the TCP program has fed (it feeds retransmits always).
        self._tcp_keys: set[Hashable] = set()
        self._rpc_active = False
        self._rpc: RpcSource | None = None
        if ctx.options.latency_source == "auto":
            ops = ctx.options.operations
            self._rpc = RpcSource(ctx, self._acc, None if ALL_OPERATIONS in ops else ops)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self._rpc is not None:
            self._rpc.start(self._rpc_activated)

    def stop(self) -> None:
        if self._rpc is not None:
            self._rpc.stop()
        super().stop()

    def _on_targets_changed(self) -> None:
        super()._on_targets_changed()
        if self._rpc is not None:
            # A mount appeared or went: the worker probes new superblocks
            # (and, on the first NFS mount, finds the sunrpc module loaded).
            self._rpc.poke()

    def _rpc_activated(self) -> None:
        """The RPC layer is traced: from now on it alone times NFS requests."""
        with self._lock:
            if self._tracer is not None:
                # What the TCP program timed so far stays in the totals.
                self._fold()
                self._tracer.loaded.map("tcp_latency_off").update(b"\0\0\0\0", b"\1\0\0\0")
            self._rpc_active = True
        self.ctx.details["latency_source"] = "rpc"

    def collect(self) -> list[Sample]:
        with self._lock:
            if self._tracer is None:
                return []
            self._fold()
            rpc = self._rpc if self._rpc_active else None
            current: set[Hashable] = set(self._key_of_address.values())
            if rpc is not None:
                rpc.fold()
                rpc_keys = rpc.current_go_keys()
                self._acc.ensure(rpc_keys)
                current |= rpc_keys
            totals = self._acc.totals(current, self.retention)
            out = list(self.samples(totals))
            if rpc is not None:
                out.extend(rpc.samples(self.retention))
        out.append(Sample("nfs_latency_source", ("rpc" if rpc is not None else "tcp",), 1.0))
        return out

    @property
    def rpc(self) -> RpcSource | None:
        return self._rpc

    # -- TCP program ----------------------------------------------------------------------------------
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
            mapping[address] = (PROTOCOL, volume_label(server.volumes, enabled, address in unidentified))
            ports.update(server.ports)
        if not ports:
            ports.update(self.targets.nfs_ports)
        self._tcp_keys.update(mapping.values())
        return mapping, tuple(sorted(ports))

    def defines(self, capacity: int) -> dict[str, int]:
        return {
            "TT_SOCKETS": socket_slots(self.ctx.options.inflight_capacity),
            "NFS_CLAMP_NS": int(self.ctx.options.latency_clamp * 1e9),
            "NFS_BUCKETS": SLOTS,
        }

    def parse(self, key: bytes, value: bytes) -> tuple[str, Vector]:
        reading = parse_stats_entry(key, value)
        return reading.address, reading.vector

    def fallback_key(self, address: str) -> Hashable:
        key = (PROTOCOL, UNKNOWN_VOLUME)
        self._tcp_keys.add(key)
        return key

    def samples(self, totals: dict[Hashable, Vector]) -> Iterable[Sample]:
        rpc_keys = self._rpc.go_keys_seen() if self._rpc is not None and self._rpc_active else set()
        for key, vector in sorted(totals.items(), key=lambda kv: str(kv[0])):
            protocol, volume = key if isinstance(key, tuple) else (PROTOCOL, key)
            labels = (str(protocol), OPERATION, str(volume))
            latency_ns, retransmits, counts = vector[0], vector[1], tuple(vector[2:])
            # Once the RPC layer times requests, a server-address series of
            # the TCP program carries retransmits only, and a per-mount
            # series of the RPC layer no retransmits (those stay TCP-level).
            if not self._rpc_active or key in rpc_keys:
                yield Sample("nfs_latency_seconds", labels, latency_ns / 1e9)
                yield Sample("nfs_requests_total", labels, float(sum(counts)))
                yield Sample("nfs_latency_histogram_seconds", labels, HistogramValue(counts, latency_ns / 1e9))
            if not self._rpc_active or key in self._tcp_keys:
                yield Sample("nfs_tcp_retransmits_total", labels, float(retransmits))
