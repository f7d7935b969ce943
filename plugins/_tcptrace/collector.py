"""Collector skeleton shared by nfs_latency and objstore.

Start: load the program sized from the discovered targets and program the
filter. A discovery change (on the discovery thread, never in a scrape)
first folds the kernel counters under the old address->label mapping, then
reprograms the filter in place. A scrape folds and reports; it only reads
maps.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol

from crusoe_metrics_exporter.plugins._tcptrace.accumulate import Accumulator, Vector
from crusoe_metrics_exporter.plugins._tcptrace.tracer import TcpTracer, make_spec, plan_spec, target_capacity
from crusoe_metrics_exporter.sdk import PluginContext, Sample, Support, TargetsService


class TcpTraceOptions(Protocol):
    """The options both TCP-tracing plugins declare (each with its own defaults)."""

    @property
    def series_retention(self) -> float: ...

    @property
    def latency_clamp(self) -> float: ...

    @property
    def inflight_capacity(self) -> int: ...

    @property
    def idle_series(self) -> bool: ...


def ebpf_support(ctx: PluginContext[object], name: str) -> Support:
    """Whether this host can run the plugin's programs, with the attach plan as details."""
    return ctx.ebpf.support(plan_spec(name))


class TcpTargetCollector(ABC):
    #: The plugin's C body (file next to the plugin).
    body: str
    bounds: tuple[float, ...]
    width: int
    error_metric: str

    def __init__(self, ctx: PluginContext[TcpTraceOptions]) -> None:
        self.ctx = ctx
        self.log: logging.Logger = ctx.log
        self._lock = threading.Lock()
        self._acc = Accumulator(self.width)
        self._tracer: TcpTracer | None = None
        self._targets: TargetsService | None = None
        self._key_of_address: dict[str, Hashable] = {}
        self._subscribed = False
        self._dropped: set[str] = set()

    # -- what subclasses decide -------------------------------------------
    @abstractmethod
    def wanted(self) -> tuple[dict[str, Hashable], tuple[int, ...]]:
        """{address: label key} to watch now, and the ports."""

    @abstractmethod
    def defines(self, capacity: int) -> dict[str, int]:
        """Map sizes and constants for the C."""

    @abstractmethod
    def parse(self, key: bytes, value: bytes) -> tuple[str, Vector]:
        """One stats entry -> (address, vector); ValueError when malformed."""

    @abstractmethod
    def fallback_key(self, address: str) -> Hashable:
        """Label key for an address with no current mapping."""

    @abstractmethod
    def samples(self, totals: dict[Hashable, Vector]) -> Iterable[Sample]: ...

    # -- lifecycle ----------------------------------------------------------
    @property
    def targets(self) -> TargetsService:
        if self._targets is None:
            self._targets = self.ctx.targets
        return self._targets

    def start(self) -> None:
        from crusoe_metrics_exporter.sdk import BpfUnavailable

        mapping, ports = self.wanted()
        capacity = target_capacity(len(mapping))
        spec = make_spec(self.ctx.plugin, self.body, self.bounds, defines=self.defines(capacity), max_targets=capacity)
        try:
            self._tracer = TcpTracer.load(self.ctx.ebpf, self.ctx.plugin, spec, capacity)
        except BpfUnavailable as exc:
            # One line for the plugin's state; the host turns this into "failed".
            raise RuntimeError(str(exc)) from None
        with self._lock:
            self._apply(mapping, ports)
        self.ctx.details.update(self._tracer.loaded.details())
        self.ctx.details["target_capacity"] = str(capacity)
        self.targets.subscribe(self._on_targets_changed)
        self._subscribed = True

    def stop(self) -> None:
        if self._subscribed and self._targets is not None:
            self._targets.unsubscribe(self._on_targets_changed)
            self._subscribed = False
        with self._lock:
            tracer, self._tracer = self._tracer, None
        if tracer is not None:
            self.ctx.ebpf.release(self.ctx.plugin, tracer.loaded)

    def collect(self) -> list[Sample]:
        with self._lock:
            if self._tracer is None:
                return []
            self._fold()
            totals = self._acc.totals(set(self._key_of_address.values()), self.retention)
        return list(self.samples(totals))

    @property
    def retention(self) -> float:
        return self.ctx.options.series_retention

    # -- internals ------------------------------------------------------------
    def _on_targets_changed(self) -> None:
        try:
            mapping, ports = self.wanted()
            with self._lock:
                if self._tracer is None:
                    return
                self._fold()
                self._apply(mapping, ports)
        except Exception:  # runs on the discovery thread, which must survive anything
            self.log.warning("updating the kernel filter failed; keeping the previous one", exc_info=True)
            self.ctx.errors.inc(self.error_metric)

    def _apply(self, mapping: dict[str, Hashable], ports: Sequence[int]) -> None:
        assert self._tracer is not None
        result = self._tracer.set_targets(mapping, ports)
        # Reported once per address, not again at every refresh it stays out.
        newly_dropped = sorted(set(result.dropped) - self._dropped)
        self._dropped = set(result.dropped)
        if newly_dropped:
            self.log.warning(
                "%d target addresses do not fit into the kernel filter (capacity %d) and are not watched: %s",
                len(newly_dropped), self._tracer.max_targets, ", ".join(newly_dropped[:8]),
            )
            self.ctx.errors.inc(self.error_metric, len(newly_dropped))
        if result.removed:
            # Folded just before the kernel dropped them; their counts live
            # on in the label totals.
            self._acc.forget(result.removed)
        self._key_of_address = {a: mapping[a] for a in result.watched}
        if self.ctx.options.idle_series:
            # Off by default: a histogram and three counters per target before it sends a byte (26 series per
            # idle volume) cost 260k series on a host with 10,000 NFS servers.
            self._acc.ensure(self._key_of_address.values())

    def _fold(self) -> None:
        assert self._tracer is not None
        readings: dict[str, Vector] = {}
        bad = 0
        for key, value in self._tracer.read_stats():
            try:
                address, vector = self.parse(key, value)
            except ValueError:
                bad += 1
                continue
            readings[address] = vector
        mapping = self._key_of_address
        bad += self._acc.fold(readings, lambda a: mapping.get(a) or self.fallback_key(a))
        clamped = self._tracer.new_clamped()
        if clamped:
            self.log.info("%d latency samples exceeded the clamp and were recorded at the clamp", clamped)
        if bad:
            self.ctx.errors.inc(self.error_metric, bad)
