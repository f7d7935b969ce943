"""Cumulative error accounting owned by the core.

Plugins report problems (a malformed line, a failed statfs) through
``ctx.errors.inc(...)``. The core keeps the totals, so an error counter keeps
counting when the plugin's collect fails outright and never resets between
scrapes (the seed reset most of its "counters" every scrape).
"""

from __future__ import annotations

import threading
from collections import Counter

#: Phases the core itself counts errors in, per plugin.
PHASES = ("load", "validate", "start", "collect", "timeout", "invalid_sample", "plugin_reported")


class ErrorCounters:
    """Thread-safe cumulative counters for one plugin."""

    def __init__(self, plugin: str, declared: tuple[str, ...]) -> None:
        self.plugin = plugin
        self._lock = threading.Lock()
        self._by_metric: Counter[str] = Counter({name: 0 for name in declared})
        self._by_phase: Counter[str] = Counter({phase: 0 for phase in PHASES})
        self._invalid: Counter[str] = Counter()
        self._primary = declared[0] if declared else None

    def inc(self, metric: str | None = None, amount: int = 1) -> None:
        """Count ``amount`` plugin-reported errors against ``metric``.

        ``metric`` names one of the plugin's declared error counters; it may be
        omitted when the plugin declares exactly one (or none).
        """
        target = metric or self._primary
        with self._lock:
            if target is not None:
                if target not in self._by_metric:
                    raise KeyError(f"{self.plugin}: {target!r} is not a declared error counter")
                self._by_metric[target] += amount
            self._by_phase["plugin_reported"] += amount

    def core_failure(self, phase: str, amount: int = 1) -> None:
        """Count a failure the core observed (exception, timeout, bad sample)."""
        with self._lock:
            self._by_phase[phase] += amount
            # A failed collect is a collection error from the user's point of
            # view too: show it on the plugin's own (seed-named) counter.
            if phase in ("collect", "timeout") and self._primary is not None:
                self._by_metric[self._primary] += amount

    def invalid_sample(self, reason: str, amount: int = 1) -> None:
        """Count samples the core dropped, per reason (and in the ``invalid_sample`` phase)."""
        with self._lock:
            self._invalid[reason] += amount
            self._by_phase["invalid_sample"] += amount

    def invalid_totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._invalid)

    def metric_totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_metric)

    def phase_totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_phase)
