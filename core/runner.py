"""Running one plugin's collect inside an error boundary with a deadline.

Each collect runs on a thread of its own, started for that call and gone when
it returns, so an idle exporter holds no collect threads. A scrape asks every
plugin at once and waits for each until the shared deadline. A plugin that
hangs keeps its one thread: later scrapes see it is still running and do not
start a second call, so a stuck plugin costs one thread, never one per scrape.
Concurrent scrapes that arrive while a collect is running share its result.
The threads are daemons: a collect stuck in the kernel cannot keep the
process from exiting.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.host import PluginRecord

log = logging.getLogger(__name__)


@dataclass
class CollectResult:
    """Validated samples of one collect, grouped by metric name."""

    by_metric: dict[str, list[Sample]] = field(default_factory=dict)
    ok: bool = True
    duration: float = 0.0
    dropped: int = 0


def validate(samples: Iterable[Sample], metrics: dict[str, MetricSpec]) -> tuple[dict[str, list[Sample]], int]:
    """Keep samples that match their declaration; return them and the count dropped.

    This runs for every sample of every scrape (tens of thousands with
    nconnect mountstats), so the common case is kept to a few type checks.
    """
    grouped: dict[str, list[Sample]] = {}
    seen: dict[str, set[tuple[str, ...]]] = {}
    dropped = 0
    for s in samples:
        try:
            name, labels, value = s
            spec = metrics[name]
        except (TypeError, ValueError, KeyError):
            dropped += 1
            continue
        if spec.error_counter or not _matches(spec, labels, value):
            dropped += 1
            continue
        series = seen.get(name)
        if series is None:
            series = seen[name] = set()
            grouped[name] = []
        if labels in series:
            # Two samples for one series would make the exposition invalid.
            dropped += 1
            continue
        series.add(labels)
        grouped[name].append(s)
    return grouped, dropped


def _matches(spec: MetricSpec, labels: object, value: object) -> bool:
    if type(labels) is not tuple or len(labels) != len(spec.labels):
        return False
    if labels:
        try:
            # join() accepts only str items: one C-level check for all labels.
            joined = "".join(labels)
            # A lone surrogate (os.fsdecode of a non-UTF-8 name) cannot be
            # written out; it would fail the whole scrape, not this sample.
            if not joined.isascii():
                joined.encode()
        except (TypeError, UnicodeEncodeError):
            return False
    kind = type(value)
    if kind is int:
        try:
            value = float(value)  # type: ignore[arg-type]
        except OverflowError:
            return False  # beyond float range: the exposition could not write it
        kind = float
    if kind is float:
        if spec.type == "histogram" or value != value:  # noqa: PLR0124 - NaN is the value unequal to itself
            return False
        return spec.type != "counter" or 0 <= value < math.inf  # type: ignore[operator]
    if spec.type != "histogram" or not isinstance(value, HistogramValue):
        return False
    counts = value.counts
    if type(counts) is not tuple or len(counts) != len(spec.buckets) + 1:
        return False
    if any(type(c) is not int or c < 0 for c in counts):
        return False
    try:
        float(sum(counts))  # the +Inf bucket and _count
    except OverflowError:
        return False
    return isinstance(value.sum, (int, float)) and math.isfinite(value.sum)


class PluginRunner:
    """Drives collect() of one active plugin."""

    def __init__(self, record: PluginRecord) -> None:
        assert record.spec is not None and record.collector is not None and record.errors is not None
        self.record = record
        self._collector = record.collector
        self._metrics = {m.name: m for m in record.spec.metrics}
        self._errors = record.errors
        self._lock = threading.Lock()
        self._inflight: Future[CollectResult] | None = None
        self._inflight_started = 0.0
        self.last: CollectResult | None = None

    def submit(self) -> Future[CollectResult]:
        with self._lock:
            if self._inflight is None or self._inflight.done():
                future: Future[CollectResult] = Future()
                self._inflight = future
                self._inflight_started = time.monotonic()
                try:
                    threading.Thread(target=self._run, args=(future,), name=f"collect-{self.record.name}",
                                     daemon=True).start()
                except RuntimeError as exc:  # "can't start new thread": out of threads or memory
                    log.warning("plugin %s: cannot start a collect: %s", self.record.name, exc)
                    self._errors.core_failure("collect")
                    future.set_result(CollectResult(ok=False))
            return self._inflight

    def wait(self, future: Future[CollectResult], deadline: float) -> CollectResult:
        """Wait for ``future`` until the monotonic ``deadline``."""
        timeout = max(0.0, deadline - time.monotonic())
        try:
            result = future.result(timeout=timeout)
        except TimeoutError:
            self._errors.core_failure("timeout")
            log.warning(
                "plugin %s: collect still running after %.1fs; scrape continues without it",
                self.record.name,
                time.monotonic() - self._inflight_started,
            )
            result = CollectResult(ok=False, duration=time.monotonic() - self._inflight_started)
        self.last = result
        return result

    def _run(self, future: Future[CollectResult]) -> None:
        try:
            result = self._collect_once()
        except BaseException as exc:  # a fault of ours must not leave every later scrape waiting on this future
            log.error("plugin %s: collect could not be completed: %s: %s", self.record.name, type(exc).__name__, exc)
            log.debug("plugin %s: traceback", self.record.name, exc_info=True)
            result = CollectResult(ok=False)
        future.set_result(result)

    def _collect_once(self) -> CollectResult:
        started = time.monotonic()
        try:
            samples = list(self._collector.collect())
        except BaseException as exc:  # SystemExit too; a worker thread never receives Ctrl-C
            self._errors.core_failure("collect")
            log.warning("plugin %s: collect failed: %s: %s", self.record.name, type(exc).__name__, exc)
            log.debug("plugin %s: collect traceback", self.record.name, exc_info=True)
            return CollectResult(ok=False, duration=time.monotonic() - started)
        grouped, dropped = validate(samples, self._metrics)
        if dropped:
            self._errors.core_failure("invalid_sample", dropped)
            log.warning("plugin %s: dropped %d samples that do not match its declarations", self.record.name, dropped)
        return CollectResult(grouped, True, time.monotonic() - started, dropped)

    def close(self) -> None:
        """Nothing to release: a collect still running ends with its thread (never waited for)."""
