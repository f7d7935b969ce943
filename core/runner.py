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
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.problems import LogBudget

if TYPE_CHECKING:
    from crusoe_metrics_exporter.host import PluginRecord

log = logging.getLogger(__name__)


#: How the reason of a plugin degraded by its own invalid samples starts (its next clean collect clears it).
DROPPED_REASON = "the last collect dropped"

#: Why a sample is dropped: reason -> the rule it broke, as the log line says it.
RULES: dict[str, str] = {
    "not_a_sample": "a collect must yield Sample(metric, labels, value) tuples",
    "unknown_metric": "the metric is not declared in the plugin's PluginSpec.metrics",
    "error_counter": "error counters are owned by the core; count into them with ctx.errors.inc(name)",
    "label_count": "labels must be a tuple with one value per declared label name",
    "label_type": "label values must be str",
    "label_encoding": "label values must be encodable as UTF-8 (no lone surrogates)",
    "value_type": "counters and gauges take an int or float, histograms a HistogramValue",
    "nan": "the value must not be NaN",
    "overflow": "the value must fit a float",
    "negative_counter": "counter values must not be negative",
    "infinite_counter": "counter values must be finite",
    "histogram_buckets": "a HistogramValue needs one count per declared bucket bound plus the overflow count",
    "histogram_counts": "histogram counts must be non-negative ints whose total fits a float",
    "histogram_sum": "the histogram sum must be a finite number",
    "duplicate_series": "one collect must not yield two samples with the same metric and labels",
    "series_limit": "a plugin exports at most [exporter] max_series_per_plugin series per collect",
    "exposition_limit": "all plugins together fit in [exporter] max_exposition_bytes per scrape",
}


@dataclass
class Rejection:
    """Samples of one metric dropped for one reason in one collect, with the first of them."""

    metric: str
    reason: str
    count: int
    labels: object
    value: object
    #: The declared label names, to show the example as name=value pairs.
    label_names: tuple[str, ...] = ()

    def describe(self) -> str:
        """``metric{labels} = value: rule (reason)``, bounded in length for the log."""
        labels: object = self.labels
        if isinstance(labels, tuple) and len(labels) == len(self.label_names) and labels:
            labels = "{" + ",".join(f"{n}={v!r}" for n, v in zip(self.label_names, labels, strict=True)) + "}"
        elif labels == ():
            labels = ""
        else:
            labels = f" labels={_short(labels)}"
        return f"{self.metric}{_short(labels)} = {_short(self.value)}: {RULES[self.reason]} ({self.reason})"


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class CollectResult:
    """Validated samples of one collect, grouped by metric name, and what was dropped."""

    by_metric: dict[str, list[Sample]] = field(default_factory=dict)
    ok: bool = True
    duration: float = 0.0
    rejections: dict[tuple[str, str], Rejection] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(r.count for r in self.rejections.values())

    @property
    def problems(self) -> list[str]:
        """One line per (metric, reason) dropped in this collect."""
        return [f"{r.count} x {r.describe()}" for r in self.rejections.values()]


def validate(
    samples: Iterable[Sample], metrics: dict[str, MetricSpec], limit: int | None = None,
) -> tuple[dict[str, list[Sample]], dict[tuple[str, str], Rejection]]:
    """Keep samples that match their declaration; return them and what was dropped, by (metric, reason).

    This runs for every sample of every scrape (tens of thousands with
    nconnect mountstats), so the common case is kept to a few type checks;
    only a sample that fails them is examined for the reason. Past ``limit``
    kept series, the rest are counted (reason series_limit), not kept: a
    plugin that yields a million series from a generator costs time, not
    memory.
    """
    #: Per declared name seen: its spec, the label tuples already taken, the kept samples, the number of labels
    #: and the least value the inline check below lets through (one lookup a sample).
    known: dict[str, tuple[MetricSpec, set[tuple[str, ...]], list[Sample], int, float]] = {}
    taken = 0
    room = limit if limit is not None else -1
    rejected: dict[tuple[str, str], Rejection] = {}
    #: The last labels tuple the inline check passed.
    checked: object = None

    def reject(metric: str, reason: str, labels: object, value: object, names: tuple[str, ...] = ()) -> None:
        entry = rejected.get((metric, reason))
        if entry is None:
            rejected[(metric, reason)] = Rejection(metric, reason, 1, labels, value, names)
        else:
            entry.count += 1

    for s in samples:
        try:
            name, labels, value = s
        except (TypeError, ValueError):
            reject("?", "not_a_sample", (), _short(s))
            continue
        state = known.get(name) if type(name) is str else None
        if state is None:
            spec = metrics.get(name) if isinstance(name, str) else None
            if spec is None:
                # Keyed by reason only: undeclared names are unbounded.
                reject("?" if not isinstance(name, str) else _short(name, 100), "unknown_metric", labels, value)
                continue
            if spec.error_counter:
                reject(name, "error_counter", labels, value)
                continue
            state = known[name] = (spec, set(), [], len(spec.labels), _LEAST[spec.type])
        spec, series, kept, width, least = state
        # The common case inline, a strict subset of _matches: a tuple of as many ASCII str labels as declared,
        # an int or float that is finite as a float (not NaN, not negative for a counter, no histogram).
        # A bulk emitter yields the samples of one series' metrics in a row, sharing one labels tuple: its
        # labels are checked once.
        value_type = type(value)
        try:
            plain = (type(labels) is tuple and len(labels) == width and (value_type is int or value_type is float)
                     and least <= value < _FLOAT_MAX  # type: ignore[operator]
                     and (labels is checked or "".join(labels).isascii()))
        except TypeError:  # a label that is not a str
            plain = False
        checked = labels if plain else None
        if not plain and not _matches(spec, labels, value):
            reject(name, _why(spec, labels, value), labels, value, spec.labels)
            continue
        size = len(series)
        series.add(labels)
        if len(series) == size:
            # Two samples for one series would make the exposition invalid.
            reject(name, "duplicate_series", labels, value, spec.labels)
            continue
        if taken == room:
            series.discard(labels)
            reject(name, "series_limit", labels, value, spec.labels)
            continue
        taken += 1
        kept.append(s)
    grouped = {name: state[2] for name, state in known.items() if state[2]}
    if any(r.reason == "unknown_metric" for r in rejected.values()):
        # One entry for all undeclared names (the first one is the example).
        merged: Rejection | None = None
        for key in [k for k, r in rejected.items() if r.reason == "unknown_metric"]:
            r = rejected.pop(key)
            if merged is None:
                merged = r
            else:
                merged.count += r.count
        assert merged is not None
        rejected[("?", "unknown_metric")] = merged
    return grouped, rejected


#: The largest finite float: an int below it converts to a float without overflow.
_FLOAT_MAX = sys.float_info.max
#: The least value validate's inline check passes per metric type (a histogram's go to _matches).
_LEAST = {"counter": 0.0, "gauge": -_FLOAT_MAX, "histogram": math.inf}


class SampleGate:
    """Validation for samples of a fixed set of declarations: the exporter's own metrics, a shared service's.

    A dropped sample is a bug of the exporter or the service, not of a
    plugin: each new kind (metric, reason) is logged once, at error level.
    """

    def __init__(self, owner: str, metrics: Iterable[MetricSpec]) -> None:
        self.owner = owner
        self._order = tuple(metrics)
        self._metrics = {m.name: m for m in self._order}
        self._reported: set[tuple[str, str]] = set()

    def groups(self, samples: Iterable[Sample]) -> list[tuple[MetricSpec, Sequence[Sample]]]:
        """The valid samples by declaration, in declaration order (empty declarations left out)."""
        grouped, rejections = validate(samples, self._metrics)
        for key, rejection in rejections.items():
            if key not in self._reported:
                self._reported.add(key)
                log.error("%s: dropped invalid sample %s", self.owner, rejection.describe())
        return [(m, grouped[m.name]) for m in self._order if grouped.get(m.name)]


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


def _why(spec: MetricSpec, labels: object, value: object) -> str:
    """The reason :func:`_matches` refused a sample (the slow path, only for dropped samples)."""
    if type(labels) is not tuple or len(labels) != len(spec.labels):
        return "label_count"
    if not all(isinstance(v, str) for v in labels):
        return "label_type"
    try:
        "".join(labels).encode()
    except UnicodeEncodeError:
        return "label_encoding"
    if spec.type == "histogram":
        if not isinstance(value, HistogramValue):
            return "value_type"
        counts = value.counts
        if type(counts) is not tuple or len(counts) != len(spec.buckets) + 1:
            return "histogram_buckets"
        if any(type(c) is not int or c < 0 for c in counts):
            return "histogram_counts"
        try:
            float(sum(counts))
        except OverflowError:
            return "histogram_counts"
        return "histogram_sum"
    if type(value) not in (int, float):
        return "value_type"
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return "overflow"
    if number != number:  # noqa: PLR0124 - NaN is the value unequal to itself
        return "nan"
    if spec.type == "counter":
        return "negative_counter" if number < 0 else "infinite_counter"
    return "value_type"


class PluginRunner:
    """Drives collect() of one active plugin."""

    #: Repeated drops are summarised in the log at most this often (they are counted always).
    SUMMARY_INTERVAL = 300.0
    #: Distinct (metric, reason) pairs whose first drop is logged in full.
    MAX_REPORTED_KINDS = 256

    def __init__(self, record: PluginRecord, series_limit: int | None = None) -> None:
        assert record.spec is not None and record.collector is not None and record.errors is not None
        self.record = record
        #: Series kept per collect at most (None: no limit).
        self.series_limit = series_limit
        #: A plugin that fails or overruns on every scrape is logged a few times, then counted (the error
        #: counters and plugin_up say it on every scrape anyway).
        self._trouble = LogBudget(log, f"plugin {record.name}: failed or overrunning collects", burst=3,
                                  interval=300.0)
        self._reported: set[tuple[str, str]] = set()
        self._unreported: Counter[str] = Counter()
        self._summary_due = 0.0
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
            self._trouble.warning(
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
            # Validated as the plugin yields them: a generator is never held whole.
            grouped, rejections = validate(self._collector.collect(), self._metrics, self.series_limit)
            # A worker plugin's collector drops what is past the limits before the samples get here.
            taken = getattr(self._collector, "take_rejections", None)
            if taken is not None:
                for key, dropped in taken().items():
                    if key in rejections:
                        rejections[key].count += dropped.count
                    else:
                        rejections[key] = dropped
        except BaseException as exc:  # SystemExit too; a worker thread never receives Ctrl-C
            self._errors.core_failure("collect")
            self._trouble.warning("plugin %s: collect failed: %s: %s", self.record.name, type(exc).__name__, exc)
            log.debug("plugin %s: collect traceback", self.record.name, exc_info=True)
            return CollectResult(ok=False, duration=time.monotonic() - started)
        result = CollectResult(grouped, True, time.monotonic() - started, rejections)
        self._account(result)
        return result

    def _account(self, result: CollectResult) -> None:
        """Count dropped samples per reason, log each new kind once and the rest in rate-limited summaries.

        A plugin whose last collect dropped samples is *degraded*; its next
        clean collect makes it active again.
        """
        rec = self.record
        if not result.rejections:
            if rec.state == "degraded" and rec.reason.startswith(DROPPED_REASON):
                rec.state, rec.reason = "active", ""
                log.info("plugin %s: collect is clean again", rec.name)
            return
        now = time.monotonic()
        for key, r in result.rejections.items():
            self._errors.invalid_sample(r.reason, r.count)
            if key in self._reported or len(self._reported) >= self.MAX_REPORTED_KINDS:
                self._unreported[r.reason] += r.count
                continue
            self._reported.add(key)
            more = f" (and {r.count - 1} more like it)" if r.count > 1 else ""
            log.warning("plugin %s: dropped invalid sample %s%s; further drops of this kind are counted in "
                        "crusoe_vm_exporter_plugin_invalid_samples_total{plugin=%r,reason=%r} and summarised here at "
                        "most every %gs", rec.name, r.describe(), more, rec.name, r.reason, self.SUMMARY_INTERVAL)
            self._summary_due = max(self._summary_due, now + self.SUMMARY_INTERVAL)
        if self._unreported and now >= self._summary_due:
            total = sum(self._unreported.values())
            by_reason = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._unreported.items()))
            log.warning("plugin %s: dropped %d more invalid samples since the last report (%s)", rec.name, total,
                        by_reason)
            self._unreported.clear()
            self._summary_due = now + self.SUMMARY_INTERVAL
        if rec.state in ("active", "degraded"):
            first = next(iter(result.rejections.values()))
            rec.state = "degraded"
            rec.reason = f"{DROPPED_REASON} {result.dropped} invalid samples, e.g. {first.describe()}"

    def close(self) -> None:
        """Nothing to release: a collect still running ends with its thread (never waited for)."""
